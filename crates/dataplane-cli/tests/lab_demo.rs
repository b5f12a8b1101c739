//! `dpctl demo` and `dpctl lab` as a user runs them (root: they build network namespaces).
//! The demo runs `dataplane-agent`: build it first (`cargo build -p dataplane-agent`).

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

/// The lines of `all` from the first line starting with `from` (or the start) up to the first
/// line after it starting with `to` (or the end).
fn section<'a>(all: &'a str, from: Option<&str>, to: Option<&str>) -> Vec<&'a str> {
    let mut lines = all.lines();
    if let Some(from) = from {
        lines.by_ref().find(|l| l.starts_with(from));
    }
    lines
        .take_while(|l| to.is_none_or(|to| !l.starts_with(to)))
        .collect()
}

/// The rows of `web` (every frontend but the ETP Local NodePort, which is `local`'s).
fn web_rows<'a>(lines: &[&'a str]) -> Vec<&'a str> {
    lines
        .iter()
        .copied()
        .filter(|l| {
            ["ClusterIP", "NodePort", "LoadBalancer", "ExternalIP"]
                .iter()
                .any(|k| l.contains(&format!(" {k} ")))
                && !l.contains("ETP Local")
        })
        .collect()
}

/// The demo's sections: before the edits, after scaling `web` down, after the NetworkPolicy.
fn check_sections(backend: &str, all: &str) {
    // Before the edits: every frontend kind answered by a pod; web has three backends.
    let before = section(all, None, Some("edit 1:"));
    for kind in ["ClusterIP", "NodePort", "LoadBalancer", "ExternalIP"] {
        assert!(
            before
                .iter()
                .any(|l| l.contains(&format!(" {kind} ")) && l.contains(" pod-")),
            "{backend}: no {kind} row answered by a pod:\n{all}"
        );
    }
    assert!(
        web_rows(&before)
            .iter()
            .all(|l| l.contains("pod-{0-0|1-0|1-1}")),
        "{backend}: web's rows before the edit expect its three backends:\n{all}"
    );
    // The Local service's health port: 200 where its endpoint runs, 503 elsewhere.
    assert!(
        before
            .iter()
            .any(|l| l.contains(" node-0 (") && l.contains(" 200 ") && l.contains(" 1 ")),
        "{backend}: node-0's health port did not answer 200 with one local endpoint:\n{all}"
    );
    assert!(
        before
            .iter()
            .any(|l| l.contains(" node-1 (") && l.contains(" 503 ") && l.contains(" 0 ")),
        "{backend}: node-1's health port did not answer 503 with no local endpoint:\n{all}"
    );
    // No policy yet: the probes the policy will deny are answered.
    assert!(before.contains(&"NetworkPolicy: none yet"), "{all}");
    assert!(
        before.iter().any(|l| l.contains("no policy applies")
            && l.contains(" pod-1-0 ")
            && l.contains(" UDP ")),
        "{backend}: before the policy, UDP to pod-1-0 was not answered:\n{all}"
    );

    // Edit 1, web scaled down: the scaled-away backend no longer answers nor is expected.
    let scaled = section(all, Some("edit 1:"), Some("edit 2:"));
    let web = web_rows(&scaled);
    assert!(
        web.len() >= 8,
        "{backend}: web's rows after the edit:\n{all}"
    );
    for row in &web {
        assert!(
            row.contains("pod-{0-0|1-0} ") && !row.contains(" pod-1-1 "),
            "{backend}: after scaling web down: {row}\n{all}"
        );
    }

    // Edit 2, the NetworkPolicy: an allowed probe answered by the selected pod and a
    // denied one dropped, each with the decision that explains it.
    let policy = section(all, Some("edit 2:"), Some("edit 3:"));
    assert!(
        policy.iter().any(
            |l| l.contains("ingress allowed by default/api-from-pod-0-0")
                && l.contains(" pod-1-0 ")
        ),
        "{backend}: no allowed policy row answered by pod-1-0:\n{all}"
    );
    assert!(
        policy.iter().any(
            |l| l.contains("ingress denied (isolated by default/api-from-pod-0-0)")
                && l.contains("(dropped)")
        ),
        "{backend}: no denied policy row:\n{all}"
    );

    // Edit 3, the AdminNetworkPolicy: its Deny beats the NetworkPolicy's Allow, or the row
    // says that the backend cannot program it.
    let admin = section(all, Some("edit 3:"), Some("edit 4:"));
    assert!(
        admin
            .iter()
            .any(|l| l.contains("skipped: backend lacks cluster policy"))
            || admin.iter().any(|l| l
                .contains("ingress denied by cluster policy api-deny-pod-0-0 rule deny-pod-0-0")
                && l.contains("(dropped)")),
        "{backend}: no cluster policy row:\n{all}"
    );
    // Edit 4, host endpoint policy: the blocked source dropped and the client served, or
    // every row says that the backend cannot program it.
    let host = section(all, Some("edit 4:"), Some("flow log:"));
    let skipped = host
        .iter()
        .filter(|l| l.contains("skipped: backend lacks host policy"))
        .count();
    assert!(
        skipped == 3
            || (host
                .iter()
                .any(|l| l.contains("(172.18.250.7)") && l.contains("(dropped)"))
                && host
                    .iter()
                    .any(|l| l.contains("(172.18.255.1)") && l.contains(" pod-0-1 "))),
        "{backend}: no host policy rows:\n{all}"
    );
}

#[test]
fn demo_runs_agents_on_every_backend_and_agrees_with_the_model() {
    if !dataplane_testkit::require_root(
        "demo_runs_agents_on_every_backend_and_agrees_with_the_model",
    ) {
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
        // The lab's namespaces and the agents' bpffs directories are named after the process
        // that builds them: other tests on this machine may build labs meanwhile, so only this
        // demo's count as leaks.
        let own = format!("dptk{}-", child.id());
        let pin_prefix = format!("dpctl-demo-{}-", child.id());
        let out = child.wait_with_output().expect("dpctl runs");
        let all = text(&out);
        assert!(
            out.status.success(),
            "demo --dataplane {backend} failed (build the agent first: `cargo build -p \
             dataplane-agent`):\n{all}"
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
        // The "ok" column is each row's last ("NODE" is a header of the flow log).
        assert!(!all.lines().any(|l| l.trim_end().ends_with(" NO")), "{all}");
        // The flow log comes last, after every section, whatever events it has.
        assert!(
            section(&all, Some("edit 2:"), None)
                .iter()
                .any(|l| l.starts_with("flow log: ")),
            "{backend}: no flow log after the last section:
{all}"
        );

        // One agent process per node, and none left once the demo is over.
        let agents = all
            .lines()
            .find(|l| l.starts_with("agents: "))
            .unwrap_or_else(|| panic!("{backend}: no agents line:\n{all}"));
        let pids: Vec<u32> = agents
            .split("(pid ")
            .skip(1)
            .filter_map(|s| s.split(')').next()?.parse().ok())
            .collect();
        assert_eq!(pids.len(), 2, "{backend}: one agent per node: {agents}");
        for pid in pids {
            assert!(
                !std::path::Path::new(&format!("/proc/{pid}")).exists(),
                "{backend}: agent {pid} still runs after the demo"
            );
        }

        check_sections(backend, &all);

        let leaked: Vec<_> = dataplane_testkit::netns::list_netns()
            .into_iter()
            .filter(|n| n.starts_with(&own))
            .collect();
        assert!(leaked.is_empty(), "demo left namespaces behind: {leaked:?}");
        let pinned: Vec<_> = std::fs::read_dir("/sys/fs/bpf")
            .into_iter()
            .flatten()
            .filter_map(Result::ok)
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .filter(|n| n.starts_with(&pin_prefix))
            .collect();
        assert!(
            pinned.is_empty(),
            "{backend}: the agents' --cleanup left bpffs directories: {pinned:?}"
        );
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
