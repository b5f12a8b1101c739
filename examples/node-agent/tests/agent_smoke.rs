//! The real binary on a lab node (root): over a manifest directory it makes a ClusterIP
//! answer from another pod, follows an edit of the EndpointSlice, answers `/healthz`, leaves
//! the datapath in place when stopped with SIGTERM (an open connection keeps working, also
//! after a new agent adopted the datapath), and `--cleanup` removes it.
//!
//! ```text
//!   node-0 (agent: nsenter --net=<node-0> dataplane-agent --manifests DIR)
//!     ├── pod-0-0  client ──▶ 10.96.0.10:80 (Service web)
//!     ├── pod-0-1  backend before the edit
//!     └── pod-0-2  backend after the edit
//! ```

mod agent_common;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use agent_common::{documents, namespace, node, pod, service, slice};
use dataplane::Protocol;
use dataplane_testkit::{probe, Lab, LabSpec, NetNs, ProbeOutcome, TcpSession};

/// Generous: the agent loads eBPF programs, a loaded CI machine is slow.
const DEADLINE: Duration = Duration::from_mins(1);

/// The agent process, killed however the test ends.
struct Agent {
    child: Option<Child>,
    log: PathBuf,
}

/// Runs `--cleanup` however the test ends (a killed agent leaves its datapath, on purpose).
struct Cleanup {
    args: Vec<String>,
    netns: PathBuf,
}

impl Cleanup {
    fn run(&self) -> ExitStatus {
        let mut args = self.args.clone();
        args.push("--cleanup".to_owned());
        Agent::command(&self.netns, &args)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .unwrap()
    }
}

impl Drop for Cleanup {
    fn drop(&mut self) {
        let _ = self.run();
    }
}

impl Agent {
    fn command(netns: &Path, args: &[String]) -> Command {
        let mut cmd = Command::new("nsenter");
        // Not `ip netns exec`: it remounts /sys, which hides the bpffs.
        cmd.arg(format!("--net={}", netns.display()))
            .arg("--")
            .arg(env!("CARGO_BIN_EXE_dataplane-agent"))
            .args(args)
            .env("RUST_LOG", "info");
        cmd
    }

    fn start(netns: &Path, args: &[String], log: PathBuf) -> Agent {
        let file = std::fs::File::create(&log).unwrap();
        let child = Self::command(netns, args)
            .stdout(Stdio::null())
            .stderr(file)
            .spawn()
            .expect("nsenter runs");
        Agent {
            child: Some(child),
            log,
        }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// SIGTERM, then the exit status.
    fn terminate(&mut self) -> ExitStatus {
        let mut child = self.child.take().expect("running");
        // nsenter execs the agent: the child's pid is the agent's.
        let pid = nix::unistd::Pid::from_raw(i32::try_from(child.id()).unwrap());
        nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM).unwrap();
        let start = Instant::now();
        loop {
            if let Some(status) = child.try_wait().unwrap() {
                return status;
            }
            assert!(start.elapsed() < DEADLINE, "the agent ignores SIGTERM");
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Waits until the log has `count` sync lines.
    fn wait_for_syncs(&self, count: usize) {
        let start = Instant::now();
        while self.log().matches(" synced").count() < count {
            assert!(start.elapsed() < DEADLINE, "no sync:\n{}", self.log());
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// Probes the ClusterIP from `client` until `want(outcome)` or the deadline.
fn wait_for(client: &NetNs, what: &str, agent: &Agent, want: impl Fn(&ProbeOutcome) -> bool) {
    let frontend: SocketAddr = "10.96.0.10:80".parse().unwrap();
    let start = Instant::now();
    let mut last = None;
    while start.elapsed() < DEADLINE {
        let outcome = probe(client, frontend, Protocol::Tcp, Duration::from_secs(1)).unwrap();
        if want(&outcome) {
            return;
        }
        last = Some(outcome);
        std::thread::sleep(Duration::from_millis(100));
    }
    panic!("{what}: last probe {last:?}\nagent log:\n{}", agent.log());
}

/// `GET path` on the node's 127.0.0.1:port: the status code.
fn http_status(netns: &NetNs, port: u16, path: &str) -> Option<u16> {
    let path = path.to_owned();
    netns
        .run(move || {
            let mut s = TcpStream::connect(("127.0.0.1", port)).ok()?;
            s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
            write!(
                s,
                "GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
            )
            .ok()?;
            let mut response = String::new();
            s.read_to_string(&mut response).ok()?;
            response.split(' ').nth(1)?.parse().ok()
        })
        .unwrap()
}

fn write_slice(dir: &Path, pod_name: &str, ip: &str) {
    // As an editor saves: a temporary file renamed over the original.
    let tmp = dir.join(".web-slice.yaml.tmp");
    std::fs::write(&tmp, slice("web-1", "web", &[(ip, "node-0", pod_name)])).unwrap();
    std::fs::rename(&tmp, dir.join("web-slice.yaml")).unwrap();
}

#[test]
fn the_agent_programs_a_lab_node_from_a_manifest_directory_ebpf() {
    if dataplane_testkit::require_root(
        "the_agent_programs_a_lab_node_from_a_manifest_directory_ebpf",
    ) {
        smoke("ebpf");
    }
}

#[test]
fn the_agent_programs_a_lab_node_from_a_manifest_directory_nftables() {
    if dataplane_testkit::require_root(
        "the_agent_programs_a_lab_node_from_a_manifest_directory_nftables",
    ) {
        smoke("nft");
    }
}

#[test]
fn the_agent_programs_a_lab_node_from_a_manifest_directory_iptables() {
    if dataplane_testkit::require_root(
        "the_agent_programs_a_lab_node_from_a_manifest_directory_iptables",
    ) {
        smoke("iptables");
    }
}

/// The Node, the Namespace, the lab's pods, Service `web` and its slice to pod-0-1.
fn write_cluster(lab: &Lab, dir: &Path) {
    let node0 = lab.node(0);
    let pods: Vec<String> = (0..3)
        .map(|p| {
            let lp = lab.pod(p);
            pod(&lp.name, "node-0", &lp.addresses[0].to_string())
        })
        .collect();
    let mut cluster = vec![
        node(
            "node-0",
            &node0.addresses[0].to_string(),
            &node0.pod_cidrs[0].to_string(),
            None,
        ),
        namespace("default"),
    ];
    cluster.extend(pods);
    std::fs::write(dir.join("cluster.yaml"), documents(&cluster)).unwrap();
    std::fs::write(dir.join("web.yaml"), service("web", "10.96.0.10", 80, None)).unwrap();
    write_slice(dir, &lab.pod(1).name, &lab.pod(1).addresses[0].to_string());
}

/// The agent's command line for node-0 over `dir` with `backend` (names of its own).
fn agent_args(dir: &Path, backend: &str) -> Vec<String> {
    let id = std::process::id();
    [
        "--manifests",
        &dir.display().to_string(),
        "--hostname-override",
        "node-0",
        "--cluster-cidr",
        "10.244.0.0/16",
        "--service-cidr",
        "10.96.0.0/12",
        "--backend",
        backend,
        "--min-sync-period",
        "100ms",
        "--bpf-pin-dir",
        &format!("/sys/fs/bpf/dp-agent-smoke-{id}-{backend}"),
        "--nft-table",
        &format!("dpagent{id}{backend}"),
        "--iptables-prefix",
        "DPAS",
        "--healthz-bind-address",
        "127.0.0.1:10256",
        "--metrics-bind-address",
        "127.0.0.1:10249",
    ]
    .iter()
    .map(ToString::to_string)
    .collect()
}

fn smoke(backend: &str) {
    let lab = Lab::new(LabSpec {
        nodes: 1,
        pods_per_node: 3,
        external_clients: 0,
        ipv6: false,
    })
    .unwrap();
    let node0 = lab.node(0);
    let dir = tempfile::tempdir().unwrap();
    write_cluster(&lab, dir.path());
    let args = agent_args(dir.path(), backend);
    let cleanup = Cleanup {
        args: args.clone(),
        netns: node0.netns.path().to_owned(),
    };
    let mut agent = Agent::start(
        node0.netns.path(),
        &args,
        dir.path().join("agent-1.log.txt"),
    );
    let client = &lab.pod(0).netns;
    wait_for(client, "the ClusterIP answers from pod-0-1", &agent, |o| {
        o.backend() == Some(lab.pod(1).name.as_str())
    });
    assert_eq!(http_status(&node0.netns, 10256, "/healthz"), Some(200));
    assert_eq!(http_status(&node0.netns, 10249, "/metrics"), Some(200));

    // The EndpointSlice is edited: traffic moves to pod-0-2.
    write_slice(
        dir.path(),
        &lab.pod(2).name,
        &lab.pod(2).addresses[0].to_string(),
    );
    wait_for(client, "traffic moves to pod-0-2", &agent, |o| {
        o.backend() == Some(lab.pod(2).name.as_str())
    });
    let log = agent.log();
    assert!(log.contains("synced"), "one line per sync:\n{log}");
    eprintln!("{backend} agent log:\n{log}");

    // A connection open across the stop and the restart.
    let frontend: SocketAddr = "10.96.0.10:80".parse().unwrap();
    let mut session = TcpSession::open(client, frontend).unwrap();
    assert_eq!(session.request().unwrap().0, lab.pod(2).name);

    // SIGTERM: a clean exit, and the datapath stays.
    let status = agent.terminate();
    assert!(status.success(), "{status}\n{}", agent.log());
    wait_for(
        client,
        "traffic flows with the agent stopped",
        &agent,
        |o| o.backend() == Some(lab.pod(2).name.as_str()),
    );
    assert_eq!(session.request().unwrap().0, lab.pod(2).name);

    // A new agent adopts the datapath: its first (full) sync breaks nothing.
    let restarted = Agent::start(
        node0.netns.path(),
        &args,
        dir.path().join("agent-2.log.txt"),
    );
    restarted.wait_for_syncs(1);
    assert!(restarted.log().contains("full=true"), "{}", restarted.log());
    assert_eq!(
        session
            .request()
            .expect("the connection survives the restart")
            .0,
        lab.pod(2).name
    );
    wait_for(
        client,
        "traffic flows under the new agent",
        &restarted,
        |o| o.backend() == Some(lab.pod(2).name.as_str()),
    );
    drop(restarted);

    // --cleanup removes it.
    assert!(cleanup.run().success());
    wait_for(
        client,
        "the ClusterIP is gone after --cleanup",
        &agent,
        |o| o.backend().is_none(),
    );
}
