//! `dpctl demo` and `dpctl lab` as a user runs them (root: they build network namespaces).

use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

fn dpctl(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_dpctl"))
        .args(args)
        .output()
        .expect("dpctl runs")
}

fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

#[test]
fn demo_runs_on_every_backend_and_agrees_with_the_model() {
    if !dataplane_testkit::require_root("demo_runs_on_every_backend_and_agrees_with_the_model") {
        return;
    }
    for (backend, kind) in [
        ("ebpf", "ebpf"),
        ("nft", "nftables"),
        ("iptables", "iptables"),
    ] {
        let child = Command::new(env!("CARGO_BIN_EXE_dpctl"))
            .args(["demo", "--dataplane", backend])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("dpctl runs");
        // The lab's namespaces are named after the process that builds it: other tests on
        // this machine may build labs meanwhile, so only this demo's count as leaks.
        let own = format!("dptk{}-", child.id());
        let out = child.wait_with_output().expect("dpctl runs");
        let all = text(&out);
        assert!(
            out.status.success(),
            "demo --dataplane {backend} failed:\n{all}"
        );
        assert!(
            all.lines()
                .next()
                .is_some_and(|l| l.starts_with(&format!("dataplane: {kind} ("))),
            "the first line names the dataplane and why:\n{all}"
        );
        assert!(
            all.contains("all rows agree with the reference model"),
            "{all}"
        );
        // Every frontend kind was exercised and answered by a pod.
        for kind in ["ClusterIP", "NodePort", "LoadBalancer", "ExternalIP"] {
            assert!(
                all.lines().any(|l| l.contains(kind) && l.contains(" pod-")),
                "{backend}: no {kind} row answered by a pod:\n{all}"
            );
        }
        assert!(!all.contains(" NO"), "{all}");
        // The policy section: an allowed probe answered by the selected pod and a denied one
        // dropped, each with the decision that explains it.
        assert!(
            all.lines().any(
                |l| l.contains("ingress allowed by default/api-from-pod-0-0")
                    && l.contains(" pod-1-0 ")
            ),
            "{backend}: no allowed policy row answered by pod-1-0:\n{all}"
        );
        assert!(
            all.lines().any(|l| l
                .contains("ingress denied (isolated by default/api-from-pod-0-0)")
                && l.contains("(dropped)")),
            "{backend}: no denied policy row:\n{all}"
        );
        let leaked: Vec<_> = dataplane_testkit::netns::list_netns()
            .into_iter()
            .filter(|n| n.starts_with(&own))
            .collect();
        assert!(leaked.is_empty(), "demo left namespaces behind: {leaked:?}");
    }
}

#[test]
fn lab_up_status_down() {
    if !dataplane_testkit::require_root("lab_up_status_down") {
        return;
    }
    let mut child = Command::new(env!("CARGO_BIN_EXE_dpctl"))
        .args([
            "lab",
            "up",
            "--nodes",
            "2",
            "--pods",
            "1",
            "--externals",
            "1",
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("dpctl lab up starts");
    let deadline = Instant::now() + Duration::from_mins(1);
    let status = loop {
        let s = text(&dpctl(&["lab", "status"]));
        if s.starts_with("lab up") {
            break s;
        }
        assert!(Instant::now() < deadline, "lab never came up: {s}");
        assert!(child.try_wait().unwrap().is_none(), "lab up exited early");
        std::thread::sleep(Duration::from_millis(200));
    };
    assert!(status.contains("node node-1"), "{status}");
    assert!(status.contains("pod pod-1-0"), "{status}");
    let namespaces: Vec<String> = status
        .lines()
        .skip(1)
        .filter_map(|l| l.split_whitespace().nth(2).map(str::to_owned))
        .collect();
    assert!(!namespaces.is_empty(), "{status}");
    let listed = dataplane_testkit::netns::list_netns();
    for ns in &namespaces {
        assert!(listed.contains(ns), "{ns} not in ip netns list");
    }
    let down = dpctl(&["lab", "down"]);
    assert!(down.status.success(), "{}", text(&down));
    let exit = child.wait().expect("lab up exits");
    assert!(exit.success(), "lab up exited with {exit}");
    let listed = dataplane_testkit::netns::list_netns();
    for ns in &namespaces {
        assert!(!listed.contains(ns), "{ns} still exists after lab down");
    }
    assert!(text(&dpctl(&["lab", "status"])).contains("no lab is up"));
}
