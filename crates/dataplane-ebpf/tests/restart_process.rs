//! Restart across real processes: a TCP connection through a ClusterIP is opened while child
//! processes own the nodes' dataplanes; the children exit (keeping pins); the connection keeps
//! working and new ones are accepted while no dataplane process exists; new children adopt the
//! pinned state; the connection still works and keeps its backend.
//!
//! ```text
//!   pod-0-0 (node-0) ──TCP──▶ 10.96.0.10:80 ──▶ pod-1-0 (node-1)
//!   child per node: EbpfDataplane::new + apply, "ready", wait for the parent, exit (keep pins)
//! ```
//!
//! One binary plays both parts (`harness = false`): with `DPE_CHILD_STATE` set it is the
//! child.

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};

use dataplane_core::{Backend, Dataplane, ObjectName, Protocol, Service, ServicePort};
use dataplane_ebpf::{EbpfConfig, EbpfDataplane};
use dataplane_testkit::{probe, require_root, Family, Lab, LabSpec, ProbeOutcome, TcpSession};

fn main() {
    if let Ok(state) = std::env::var("DPE_CHILD_STATE") {
        child(&state);
        return;
    }
    if !require_root("restart_process") {
        return;
    }
    parent();
    println!("test restart_process ... ok");
}

/// Programs one node from a JSON state, says "ready", waits until its stdin closes and exits,
/// leaving everything pinned.
fn child(state_path: &str) {
    let text = std::fs::read_to_string(state_path).expect("state file");
    let state = dataplane_core::from_json(&text).expect("state parses");
    let mut config = EbpfConfig::new(std::env::var("DPE_CHILD_PIN").expect("DPE_CHILD_PIN"));
    config.netns = Some(
        std::env::var("DPE_CHILD_NETNS")
            .expect("DPE_CHILD_NETNS")
            .into(),
    );
    config.keep_attachments_on_drop = true;
    let mut dp = EbpfDataplane::new(config).expect("load or adopt");
    dp.apply(&state).expect("apply");
    println!("ready");
    let mut rest = String::new();
    let _ = std::io::Read::read_to_string(&mut std::io::stdin(), &mut rest);
    drop(dp);
}

struct Cleanup(Vec<(PathBuf, PathBuf)>);

impl Drop for Cleanup {
    fn drop(&mut self) {
        for (pin, netns) in &self.0 {
            let mut config = EbpfConfig::new(pin);
            config.netns = Some(netns.clone());
            if let Ok(mut dp) = EbpfDataplane::new(config) {
                let _ = dp.reset();
            }
            let _ = std::fs::remove_dir_all(pin);
        }
    }
}

/// Starts one child per node and returns once all of them have programmed their node.
fn start_children(lab: &Lab, dir: &std::path::Path, pins: &[PathBuf]) -> Vec<Child> {
    let mut children = Vec::new();
    let exe = std::env::current_exe().expect("own executable");
    for (i, pin) in pins.iter().enumerate() {
        let mut state = lab.desired_state(i);
        let mut web = Service::new(ObjectName::new("default", "web"));
        web.cluster_ips = vec!["10.96.0.10".parse().unwrap()];
        web.ports = vec![ServicePort {
            name: "http".to_owned(),
            protocol: Protocol::Tcp,
            port: 80,
            target_port: dataplane_testkit::SERVER_PORT,
            node_port: None,
        }];
        web.backends = lab
            .pods_on(1)
            .map(|p| {
                let mut b = Backend::new(p.address(Family::V4).unwrap());
                b.node_name = Some(lab.node(1).name.as_str().into());
                b
            })
            .collect();
        state.services = vec![web];
        let file = dir.join(format!("state-{i}.json"));
        std::fs::write(&file, dataplane_core::to_json(&state).expect("json")).expect("write");
        let mut child = Command::new(&exe)
            .env("DPE_CHILD_STATE", &file)
            .env("DPE_CHILD_PIN", pin)
            .env("DPE_CHILD_NETNS", lab.node(i).netns.path())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .expect("child runs");
        let mut line = String::new();
        BufReader::new(child.stdout.as_mut().expect("piped"))
            .read_line(&mut line)
            .expect("child output");
        assert_eq!(
            line.trim(),
            "ready",
            "child for node {i} did not program its node"
        );
        children.push(child);
    }
    children
}

/// Lets the children exit and checks they did so cleanly.
fn stop_children(children: Vec<Child>) {
    for mut child in children {
        drop(child.stdin.take());
        let status = child.wait().expect("child exits");
        assert!(status.success(), "child failed: {status}");
    }
}

fn parent() {
    let lab = Lab::new(LabSpec {
        nodes: 2,
        pods_per_node: 1,
        external_clients: 0,
        ipv6: false,
    })
    .expect("lab");
    let pid = std::process::id();
    let pins: Vec<PathBuf> = (0..2)
        .map(|i| PathBuf::from(format!("/sys/fs/bpf/dpe-proc-{pid}-n{i}")))
        .collect();
    let _cleanup = Cleanup(
        pins.iter()
            .enumerate()
            .map(|(i, p)| (p.clone(), lab.node(i).netns.path().to_owned()))
            .collect(),
    );
    let dir = std::env::temp_dir().join(format!("dpe-proc-{pid}"));
    std::fs::create_dir_all(&dir).expect("temp dir");

    let children = start_children(&lab, &dir, &pins);
    let client = lab.pod(0);
    let vip: SocketAddr = "10.96.0.10:80".parse().unwrap();
    let mut session = TcpSession::open(&client.netns, vip).expect("connect");
    let (first, _) = session
        .request()
        .expect("request while the first processes run");
    stop_children(children);

    // No dataplane process exists now.
    let (during, _) = session.request().expect("request with no process");
    assert_eq!(
        during, first,
        "the connection keeps its backend with no process"
    );
    let fresh = probe(
        &client.netns,
        vip,
        Protocol::Tcp,
        std::time::Duration::from_secs(2),
    )
    .expect("probe");
    assert!(
        matches!(fresh, ProbeOutcome::Answered { .. }),
        "new connections work with no process: {fresh:?}"
    );

    let children = start_children(&lab, &dir, &pins);
    let (after, _) = session
        .request()
        .expect("request after new processes adopted the state");
    assert_eq!(
        after, first,
        "the connection keeps its backend across processes"
    );
    stop_children(children);
    let (last, _) = session.request().expect("request after the second exit");
    assert_eq!(last, first);
    let _ = std::fs::remove_dir_all(&dir);
}
