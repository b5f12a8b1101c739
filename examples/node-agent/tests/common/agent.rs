//! `dataplane-agent` as a real process per lab node: started with
//! `nsenter --net=/run/netns/<node> -- dataplane-agent --manifests <dir> ...` (or
//! `--kubeconfig <file>` of a fake API server the nodes reach, [`Source`]) (nsenter, not
//! `ip netns exec`, which remounts /sys and would hide bpffs; nsenter execs the agent, so the
//! child's PID is the agent's), its stderr in a log file, and a guard that stops every agent,
//! runs `--cleanup` and removes the pin directories on drop, also when a test panics.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use dataplane_testkit::{Lab, NetNs};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

use super::manifests::ManifestDirs;
use super::prom::{self, Metrics};
use super::{http, wait_until};

/// `--healthz-bind-address` port (kube-proxy's), on every address of the node's namespace.
pub const HEALTHZ_PORT: u16 = 10256;
/// `--metrics-bind-address` port (kube-proxy's), on 127.0.0.1 of the node's namespace.
pub const METRICS_PORT: u16 = 10249;
/// Gauge: unix time of the last successful sync (kube-proxy's name).
pub const LAST_SYNC: &str = "kubeproxy_sync_proxy_rules_last_timestamp_seconds";
/// Prefix of the per-test bpffs pin directories.
const PIN_PREFIX: &str = "dpe2e-";

/// The dataplane a test asks the agents for (`--backend`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    /// eBPF.
    Ebpf,
    /// nftables.
    Nft,
    /// iptables.
    Iptables,
}

impl Backend {
    /// The `--backend` value.
    pub fn flag(self) -> &'static str {
        match self {
            Backend::Ebpf => "ebpf",
            Backend::Nft => "nft",
            Backend::Iptables => "iptables",
        }
    }
}

#[derive(Debug)]
struct NodeAgent {
    name: String,
    netns: NetNs,
    args: Vec<String>,
    pin_dir: PathBuf,
    child: Option<Child>,
    /// Starts so far (log file names).
    starts: usize,
    log: PathBuf,
}

/// Where the agents read the cluster from.
#[derive(Debug, Clone, Copy)]
pub enum Source<'a> {
    /// `--manifests`: each node's directory.
    Manifests(&'a ManifestDirs),
    /// `--kubeconfig`: this file (an API server the nodes' namespaces reach).
    Kubeconfig(&'a Path),
}

/// One agent per lab node; dropping it stops them and removes what they installed.
#[derive(Debug)]
pub struct Agents {
    nodes: Vec<NodeAgent>,
    logs: PathBuf,
}

fn binary() -> &'static str {
    env!("CARGO_BIN_EXE_dataplane-agent")
}

/// The test process that owns a pin directory called `name` (`dpe2e-<pid>-...`).
fn pin_owner(name: &str) -> Option<u32> {
    name.strip_prefix(PIN_PREFIX)?
        .split('-')
        .next()?
        .parse()
        .ok()
}

fn alive(pid: u32) -> bool {
    Path::new(&format!("/proc/{pid}")).exists()
}

/// Cleans up after test processes that no longer exist (a run killed with SIGKILL cannot
/// run its drops), as the testkit's `Lab` sweeps its namespaces: their agents, orphaned and
/// still running, are killed (they are recognised by their pin directory, which names the
/// dead test process), then their pin directories removed.
fn sweep_stale() {
    if let Ok(procs) = std::fs::read_dir("/proc") {
        for entry in procs.filter_map(Result::ok) {
            let Ok(pid) = entry.file_name().to_string_lossy().parse::<i32>() else {
                continue;
            };
            let Ok(cmdline) = std::fs::read(entry.path().join("cmdline")) else {
                continue;
            };
            let args: Vec<&[u8]> = cmdline.split(|&b| b == 0).collect();
            let is_agent = args
                .first()
                .is_some_and(|a| a.ends_with(b"/dataplane-agent"));
            let orphan = args
                .windows(2)
                .filter(|w| w[0] == b"--bpf-pin-dir")
                .filter_map(|w| std::str::from_utf8(w[1]).ok())
                .filter_map(|dir| dir.strip_prefix("/sys/fs/bpf/"))
                .filter_map(pin_owner)
                .any(|owner| !alive(owner));
            if is_agent && orphan {
                let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
            }
        }
    }
    let Ok(dir) = std::fs::read_dir("/sys/fs/bpf") else {
        return;
    };
    for entry in dir.filter_map(Result::ok) {
        let name = entry.file_name().to_string_lossy().into_owned();
        if pin_owner(&name).is_some_and(|owner| !alive(owner)) {
            let _ = std::fs::remove_dir_all(entry.path());
        }
    }
}

impl Agents {
    /// Starts an agent for every node of `lab` over its directory of `dirs`, with
    /// `backend`, names unique to this test (pin directory, nft table, iptables prefix), the
    /// lab's CIDRs, and `extra` flags. Returns at once: see [`Agents::wait_synced`].
    pub fn start(lab: &Lab, backend: Backend, dirs: &ManifestDirs, extra: &[&str]) -> Self {
        Self::start_from(lab, backend, &Source::Manifests(dirs), dirs.root(), extra)
    }

    /// [`Agents::start`] over `source`, the agents' logs in `logs`.
    pub fn start_from(
        lab: &Lab,
        backend: Backend,
        source: &Source<'_>,
        logs: &Path,
        extra: &[&str],
    ) -> Self {
        static COUNTER: AtomicUsize = AtomicUsize::new(0);
        sweep_stale();
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        let pid = std::process::id();
        let spec = lab.spec();
        let cluster = dataplane_testkit::lab::cluster_cidrs(spec.ipv6);
        let services = dataplane_testkit::lab::service_cidrs(spec.ipv6);
        let mut agents = Agents {
            nodes: Vec::new(),
            logs: logs.to_owned(),
        };
        for node in lab.nodes() {
            let pin_dir = PathBuf::from(format!("/sys/fs/bpf/{PIN_PREFIX}{pid}-{n}-{}", node.name));
            let (source_flag, source_path) = match source {
                Source::Manifests(dirs) => ("--manifests", dirs.dir(node.index)),
                Source::Kubeconfig(path) => ("--kubeconfig", path.to_path_buf()),
            };
            let mut args: Vec<String> = [
                source_flag,
                &source_path.to_string_lossy(),
                "--hostname-override",
                &node.name,
                "--backend",
                backend.flag(),
                "--bpf-pin-dir",
                &pin_dir.to_string_lossy(),
                "--nft-table",
                &format!("dpe2e_{n}"),
                "--iptables-prefix",
                &format!("E2E{n}"),
                "--cluster-cidr",
                &join(&cluster),
                "--service-cidr",
                &join(&services),
                "--uplink",
                &node.uplink,
                "--healthz-bind-address",
                &format!("0.0.0.0:{HEALTHZ_PORT}"),
                "--metrics-bind-address",
                &format!("127.0.0.1:{METRICS_PORT}"),
            ]
            .iter()
            .map(ToString::to_string)
            .collect();
            args.extend(extra.iter().map(ToString::to_string));
            agents.nodes.push(NodeAgent {
                name: node.name.clone(),
                netns: node.netns.clone(),
                args,
                pin_dir,
                child: None,
                starts: 0,
                log: PathBuf::new(),
            });
        }
        for i in 0..agents.nodes.len() {
            agents.start_node(i);
        }
        agents
    }

    /// Starts node `i`'s agent (again, after [`Agents::kill`]).
    pub fn start_node(&mut self, i: usize) {
        let logs = self.logs.clone();
        let a = &mut self.nodes[i];
        assert!(a.child.is_none(), "{}: agent already running", a.name);
        a.starts += 1;
        a.log = logs.join(format!("agent-{}-{}.log", a.name, a.starts));
        let log = std::fs::File::create(&a.log).expect("agent log file");
        let child = Command::new("nsenter")
            .arg(format!("--net={}", a.netns.path().display()))
            .arg("--")
            .arg(binary())
            .args(&a.args)
            .env("RUST_LOG", "info")
            .env("RUST_BACKTRACE", "1")
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log file"))
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start nsenter for {}: {e}", a.name));
        a.child = Some(child);
    }

    /// The PID of node `i`'s running agent.
    pub fn pid(&self, i: usize) -> u32 {
        self.nodes[i].child.as_ref().expect("agent running").id()
    }

    /// Kills node `i`'s agent with SIGKILL (no chance to clean up or detach anything) and
    /// waits for it to be gone.
    pub fn kill(&mut self, i: usize) {
        let a = &mut self.nodes[i];
        let mut child = a.child.take().expect("agent running");
        let pid = Pid::from_raw(i32::try_from(child.id()).expect("pid"));
        kill(pid, Signal::SIGKILL).expect("SIGKILL the agent");
        let status = child.wait().expect("wait for the killed agent");
        assert!(
            !status.success(),
            "{}: killed agent exited with {status}",
            a.name
        );
    }

    /// Stops node `i`'s agent as its DaemonSet would (SIGTERM, SIGKILL after 10 s) and
    /// returns how it exited.
    pub fn terminate(&mut self, i: usize) -> std::process::ExitStatus {
        let a = &mut self.nodes[i];
        let mut child = a.child.take().expect("agent running");
        stop(&mut child);
        child.wait().expect("the stopped agent's status")
    }

    /// Panics, with its log, if node `i`'s agent has exited.
    pub fn assert_running(&mut self, i: usize) {
        let a = &mut self.nodes[i];
        let child = a.child.as_mut().expect("agent started");
        if let Some(status) = child.try_wait().expect("poll the agent") {
            panic!(
                "agent on {} exited with {status}; its log:\n{}",
                a.name,
                tail(&a.log)
            );
        }
    }

    /// Node `i`'s agent's log so far.
    pub fn log(&self, i: usize) -> String {
        tail(&self.nodes[i].log)
    }

    /// Node `i`'s agent's `--bpf-pin-dir`.
    pub fn pin_dir(&self, i: usize) -> &Path {
        &self.nodes[i].pin_dir
    }

    /// Node `i`'s namespace.
    pub fn netns(&self, i: usize) -> &NetNs {
        &self.nodes[i].netns
    }

    /// Scrapes node `i`'s `/metrics` from inside its namespace.
    pub fn metrics(&self, i: usize) -> Result<Metrics, String> {
        let addr = SocketAddr::from(([127, 0, 0, 1], METRICS_PORT));
        let response = http::get(&self.nodes[i].netns, addr, "/metrics")?;
        if response.status != 200 {
            return Err(format!("/metrics answered {}", response.status));
        }
        prom::parse(&response.body)
    }

    /// Waits until node `i`'s agent has synced at least once (its last-sync gauge is set),
    /// and returns that scrape.
    pub fn wait_synced(&mut self, i: usize) -> Metrics {
        let name = self.nodes[i].name.clone();
        wait_until(&format!("first sync of the agent on {name}"), || {
            self.assert_running(i);
            let m = self.metrics(i)?;
            match m.get(LAST_SYNC, &[("ip_family", "IPv4")]) {
                Some(t) if t > 0.0 => Ok(m),
                other => Err(format!("{LAST_SYNC} = {other:?}")),
            }
        })
    }

    /// [`Agents::wait_synced`] for every node.
    pub fn wait_all_synced(&mut self) {
        for i in 0..self.nodes.len() {
            self.wait_synced(i);
        }
    }

    /// Waits until node `i`'s metrics satisfy `check` (which says what it saw otherwise).
    pub fn wait_metrics<T>(
        &mut self,
        i: usize,
        what: &str,
        mut check: impl FnMut(&Metrics) -> Result<T, String>,
    ) -> T {
        let name = self.nodes[i].name.clone();
        wait_until(&format!("{what} on {name}"), || {
            self.assert_running(i);
            check(&self.metrics(i)?)
        })
    }
}

/// `a,b,c`.
fn join<T: ToString>(items: &[T]) -> String {
    items
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<String>>()
        .join(",")
}

/// The last 60 lines of a log file.
fn tail(path: &Path) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(60)..].join("\n")
}

/// Stops `child`: SIGTERM, then SIGKILL if it has not exited within 10 s.
fn stop(child: &mut Child) {
    if let Ok(pid) = i32::try_from(child.id()) {
        let _ = kill(Pid::from_raw(pid), Signal::SIGTERM);
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline {
        if let Ok(Some(_)) = child.try_wait() {
            return;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let _ = child.kill();
    let _ = child.wait();
}

impl Drop for Agents {
    fn drop(&mut self) {
        let panicking = std::thread::panicking();
        for a in &mut self.nodes {
            if let Some(mut child) = a.child.take() {
                stop(&mut child);
            }
            if panicking {
                eprintln!(
                    "--- agent on {} ({}), last lines ---\n{}",
                    a.name,
                    a.log.display(),
                    tail(&a.log)
                );
            }
            // `--cleanup` with the same names removes the rules, attachments and pins
            // (kube-proxy's flag); the pin directory is removed in any case.
            let cleanup = Command::new("nsenter")
                .arg(format!("--net={}", a.netns.path().display()))
                .arg("--")
                .arg(binary())
                .args(&a.args)
                .arg("--cleanup")
                .stdin(Stdio::null())
                .output();
            match cleanup {
                Ok(out) if out.status.success() => {}
                Ok(out) => eprintln!(
                    "dataplane-agent --cleanup on {} failed ({}): {}",
                    a.name,
                    out.status,
                    String::from_utf8_lossy(&out.stderr)
                ),
                Err(e) => eprintln!("cannot run dataplane-agent --cleanup on {}: {e}", a.name),
            }
            if a.pin_dir.exists() {
                if let Err(e) = std::fs::remove_dir_all(&a.pin_dir) {
                    eprintln!("cannot remove {}: {e}", a.pin_dir.display());
                }
            }
        }
    }
}
