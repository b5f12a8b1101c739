//! The demo's node agents: one `dataplane-agent` process per lab node, started in the node's
//! network namespace over the shared manifest directory, watched through its `/metrics`, and
//! stopped and cleaned up at the end.
//!
//! The agents are started with `nsenter --net=/run/netns/NAME`, not `ip netns exec`: the
//! latter remounts `/sys` for the command, which hides the bpffs the eBPF dataplane pins its
//! maps in. `nsenter` execs the agent, so the child's pid is the agent's.
//!
//! "Synced" is read from kube-proxy's gauges `kubeproxy_sync_proxy_rules_last_timestamp_seconds`
//! (set after each successful sync) and `..._last_queued_timestamp_seconds` (set when a change
//! is queued): an edit is programmed once a change was queued after it and a sync ended after
//! that. The demo asks through a socket opened in the node's namespace (the metrics listen on
//! the node's loopback only).

use std::fmt::Write as _;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant, SystemTime};

use anyhow::{bail, Context};
use dataplane::DataplaneKind;
use dataplane_testkit::netns::NetNs;
use dataplane_testkit::Lab;

/// The agent's binary name, as `cargo build -p dataplane-agent` writes it.
pub const AGENT_BINARY: &str = "dataplane-agent";
/// Where the agents serve `/metrics`, inside each node's namespace.
pub const METRICS_ADDRESS: &str = "127.0.0.1:10249";
/// Where the agents serve `/healthz` and `/livez`, inside each node's namespace.
pub const HEALTHZ_ADDRESS: &str = "0.0.0.0:10256";
/// kube-proxy's gauge of the last successful sync (Unix seconds).
const LAST_SYNC_METRIC: &str = "kubeproxy_sync_proxy_rules_last_timestamp_seconds";
/// kube-proxy's gauge of the last change queued for a sync (Unix seconds).
const LAST_QUEUED_METRIC: &str = "kubeproxy_sync_proxy_rules_last_queued_timestamp_seconds";
/// How long an agent may take for a sync the demo waits for.
const SYNC_DEADLINE: Duration = Duration::from_mins(1);
/// How long an agent may take to exit after SIGTERM before it is killed.
const STOP_DEADLINE: Duration = Duration::from_secs(10);

/// Finds the agent binary: `explicit` if given, else `dataplane-agent` next to this
/// executable (cargo writes both into `target/<profile>/`).
pub fn find_binary(explicit: Option<&Path>) -> anyhow::Result<PathBuf> {
    if let Some(path) = explicit {
        if path.is_file() {
            return Ok(path.to_owned());
        }
        bail!("--agent {}: no such file", path.display());
    }
    let exe = std::env::current_exe().context("finding dpctl's own executable")?;
    let beside = exe
        .parent()
        .map(|dir| dir.join(AGENT_BINARY))
        .filter(|p| p.is_file());
    // Test binaries live one level deeper (`target/<profile>/deps/`).
    let above = exe
        .parent()
        .and_then(Path::parent)
        .map(|dir| dir.join(AGENT_BINARY))
        .filter(|p| p.is_file());
    beside.or(above).with_context(|| {
        format!(
            "the demo runs the node agent, and there is no {AGENT_BINARY} beside {}: build it \
             with `cargo build -p dataplane-agent` (the same profile as dpctl) or pass \
             `--agent PATH`",
            exe.display()
        )
    })
}

/// What every agent of one demo run shares.
#[derive(Debug, Clone)]
pub struct Fleet {
    /// The agent binary.
    pub binary: PathBuf,
    /// The backend every agent runs.
    pub kind: DataplaneKind,
    /// The manifest directory.
    pub manifests: PathBuf,
    /// Where each agent's log goes (`<node>.log`).
    pub logs: PathBuf,
}

/// A running agent.
#[derive(Debug)]
pub struct Agent {
    /// The node it serves.
    pub node: String,
    netns: NetNs,
    /// The flags it runs with (without `--cleanup`).
    args: Vec<String>,
    binary: PathBuf,
    log: PathBuf,
    child: Option<Child>,
}

impl Fleet {
    /// The agent's flags for node `index` of `lab`: the node's name, the lab's CIDRs, and
    /// names of its own for everything it installs (bpffs pins are global, not per network
    /// namespace, so they carry the demo's pid).
    fn args(&self, lab: &Lab, index: usize) -> Vec<String> {
        let node = lab.node(index);
        let spec = lab.spec();
        let join = |v: Vec<dataplane::ipnetwork::IpNetwork>| {
            v.iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join(",")
        };
        let pid = std::process::id();
        vec![
            "--manifests".to_owned(),
            self.manifests.display().to_string(),
            "--hostname-override".to_owned(),
            node.name.clone(),
            "--backend".to_owned(),
            self.kind.name().to_owned(),
            "--cluster-cidr".to_owned(),
            join(dataplane_testkit::lab::cluster_cidrs(spec.ipv6)),
            "--service-cidr".to_owned(),
            join(dataplane_testkit::lab::service_cidrs(spec.ipv6)),
            "--uplink".to_owned(),
            node.uplink.clone(),
            // No periodic full resync during the demo: the only syncs after the first are the
            // demo's edits, so "the last sync moved" means "the edit is programmed".
            "--sync-period".to_owned(),
            "10m".to_owned(),
            "--healthz-bind-address".to_owned(),
            HEALTHZ_ADDRESS.to_owned(),
            "--metrics-bind-address".to_owned(),
            METRICS_ADDRESS.to_owned(),
            "--bpf-pin-dir".to_owned(),
            pin_dir(pid, index).display().to_string(),
            "--nft-table".to_owned(),
            nft_table(index),
            "--iptables-prefix".to_owned(),
            iptables_prefix(index),
        ]
    }

    /// Starts the agent of node `index`.
    pub fn start(&self, lab: &Lab, index: usize) -> anyhow::Result<Agent> {
        let node = lab.node(index);
        let args = self.args(lab, index);
        let log = self.logs.join(format!("{}.log", node.name));
        let mut agent = Agent {
            node: node.name.clone(),
            netns: node.netns.clone(),
            args,
            binary: self.binary.clone(),
            log,
            child: None,
        };
        let out = std::fs::File::create(&agent.log)
            .with_context(|| format!("creating {}", agent.log.display()))?;
        let child = agent
            .command(false)
            .stdin(Stdio::null())
            .stdout(out.try_clone()?)
            .stderr(out)
            .spawn()
            .with_context(|| format!("starting the agent of {}", agent.node))?;
        agent.child = Some(child);
        Ok(agent)
    }
}

/// The nftables table of node `index`'s agent.
pub fn nft_table(index: usize) -> String {
    format!("dpctl_demo_{index}")
}

/// The iptables chain prefix of node `index`'s agent.
pub fn iptables_prefix(index: usize) -> String {
    format!("DPD{index}")
}

/// Where node `index`'s agent keeps its state, for an inspector beside it.
pub fn node_state(lab: &Lab, index: usize) -> crate::flowlog::NodeState {
    let node = lab.node(index);
    crate::flowlog::NodeState {
        node: node.name.clone(),
        netns: node.netns.path().to_owned(),
        pin_dir: pin_dir(std::process::id(), index),
        nft_table: nft_table(index),
        iptables_prefix: iptables_prefix(index),
    }
}

/// The bpffs directory of node `index`'s agent in the demo run `pid`.
pub fn pin_dir(pid: u32, index: usize) -> PathBuf {
    PathBuf::from(format!("/sys/fs/bpf/dpctl-demo-{pid}-{index}"))
}

impl Agent {
    fn command(&self, cleanup: bool) -> Command {
        let mut cmd = Command::new("nsenter");
        cmd.arg(format!("--net={}", self.netns.path().display()))
            .arg("--")
            .arg(&self.binary)
            .args(&self.args);
        if cleanup {
            cmd.arg("--cleanup");
        }
        cmd
    }

    /// The agent's process id.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// The command line, for messages.
    pub fn command_line(&self) -> String {
        let mut s = format!(
            "nsenter --net={} -- {}",
            self.netns.path().display(),
            self.binary.display()
        );
        for a in &self.args {
            let _ = write!(s, " {a}");
        }
        s
    }

    /// The last lines of the agent's log.
    pub fn log_tail(&self, lines: usize) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let all: Vec<&str> = text.lines().collect();
        all[all.len().saturating_sub(lines)..].join("\n")
    }

    /// Fails, with the log's tail, if the agent has exited.
    fn check_running(&mut self) -> anyhow::Result<()> {
        let Some(child) = self.child.as_mut() else {
            bail!("the agent of {} is not running", self.node);
        };
        if let Some(status) = child.try_wait()? {
            bail!(
                "the agent of {} exited ({status}); its log ({}) ends:\n{}",
                self.node,
                self.log.display(),
                self.log_tail(20)
            );
        }
        Ok(())
    }

    /// The agent's last successful sync and the last change it queued, from its metrics
    /// (Unix seconds): `None` before the first sync (or while the metrics server is not up).
    fn syncs(&self) -> Option<(f64, Option<f64>)> {
        let address: SocketAddr = METRICS_ADDRESS.parse().ok()?;
        let (status, body) = http_get(&self.netns, address, "/metrics").ok()?;
        if status != 200 {
            return None;
        }
        let synced = metric(&body, LAST_SYNC_METRIC).filter(|t| *t > 0.0)?;
        Some((synced, metric(&body, LAST_QUEUED_METRIC)))
    }

    /// Waits for the agent's first sync; returns its timestamp.
    pub fn wait_first_sync(&mut self) -> anyhow::Result<f64> {
        self.wait_for("its first sync", |synced, _| Some(synced))
    }

    /// Waits until the agent has synced a change made at `written` (Unix seconds), its sync
    /// before that being `previous`: a sync after `previous` that ended after the last change
    /// it queued, that change queued after `written` (when the agent reports queue times).
    /// Returns the sync's timestamp.
    pub fn wait_synced_since(&mut self, previous: f64, written: f64) -> anyhow::Result<f64> {
        self.wait_for("the edit", |synced, queued| match queued {
            Some(queued) if queued > written && synced >= queued && synced > previous => {
                Some(synced)
            }
            None if synced > previous => Some(synced),
            _ => None,
        })
    }

    fn wait_for(
        &mut self,
        what: &str,
        done: impl Fn(f64, Option<f64>) -> Option<f64>,
    ) -> anyhow::Result<f64> {
        let deadline = Instant::now() + SYNC_DEADLINE;
        loop {
            self.check_running()?;
            if let Some(t) = self.syncs().and_then(|(s, q)| done(s, q)) {
                return Ok(t);
            }
            if Instant::now() > deadline {
                bail!(
                    "the agent of {} did not sync {what} within {}s; its log ({}) ends:\n{}",
                    self.node,
                    SYNC_DEADLINE.as_secs(),
                    self.log.display(),
                    self.log_tail(20)
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// SIGTERM, then waits for the exit (SIGKILL after a deadline). Returns how it ended.
    pub fn stop(&mut self) -> anyhow::Result<String> {
        let Some(mut child) = self.child.take() else {
            return Ok("not running".to_owned());
        };
        if let Some(status) = child.try_wait()? {
            return Ok(format!("had exited ({status})"));
        }
        let pid = nix::unistd::Pid::from_raw(i32::try_from(child.id())?);
        nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM)
            .with_context(|| format!("signalling the agent of {}", self.node))?;
        let deadline = Instant::now() + STOP_DEADLINE;
        loop {
            if let Some(status) = child.try_wait()? {
                return Ok(if status.success() {
                    "stopped".to_owned()
                } else {
                    format!("stopped ({status})")
                });
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                bail!(
                    "the agent of {} ignored SIGTERM for {}s and was killed",
                    self.node,
                    STOP_DEADLINE.as_secs()
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// `dataplane-agent --cleanup` with the agent's flags, in its namespace: removes what it
    /// installed (the eBPF datapath stays pinned across a SIGTERM, by design).
    pub fn cleanup(&self) -> anyhow::Result<()> {
        let out = self
            .command(true)
            .stdin(Stdio::null())
            .output()
            .with_context(|| format!("running the cleanup of {}", self.node))?;
        if !out.status.success() {
            bail!(
                "`{} --cleanup` failed ({}): {}",
                self.command_line(),
                out.status,
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        Ok(())
    }
}

impl Drop for Agent {
    /// An agent left running on an error path is killed: the lab it programs is about to go.
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// The value of the first sample `name` in a Prometheus text exposition, whatever its labels
/// (the agent's sync timestamps carry `ip_family`, and every family gets the same time).
fn metric(body: &str, name: &str) -> Option<f64> {
    body.lines().find_map(|line| {
        let rest = line.strip_prefix(name)?;
        // `name value` or `name{labels} value`; not a longer name with this prefix. Label
        // values here never hold `}`.
        let rest = match rest.strip_prefix('{') {
            Some(labels) => &labels[labels.find('}')? + 1..],
            None => rest,
        };
        if !rest.starts_with(' ') {
            return None;
        }
        rest.split_whitespace().next()?.parse().ok()
    })
}

/// A plain HTTP/1.1 GET from inside `netns` (the servers listen in the lab's namespaces, where
/// the root namespace must not send traffic). Returns the status and the body.
pub fn http_get(netns: &NetNs, address: SocketAddr, path: &str) -> anyhow::Result<(u16, String)> {
    let request = format!("GET {path} HTTP/1.1\r\nHost: {address}\r\nConnection: close\r\n\r\n");
    let response = netns
        .run(move || -> std::io::Result<Vec<u8>> {
            let mut stream = TcpStream::connect_timeout(&address, Duration::from_secs(2))?;
            stream.set_read_timeout(Some(Duration::from_secs(5)))?;
            stream.write_all(request.as_bytes())?;
            let mut buf = Vec::new();
            stream.read_to_end(&mut buf)?;
            Ok(buf)
        })
        .with_context(|| format!("entering {}", netns.name()))?
        .with_context(|| format!("GET http://{address}{path} in {}", netns.name()))?;
    let text = String::from_utf8_lossy(&response);
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .with_context(|| format!("GET http://{address}{path}: no HTTP status in {head:?}"))?;
    let body = if head
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked")
    {
        dechunk(body)
    } else {
        body.to_owned()
    };
    Ok((status, body))
}

/// The body of a chunked HTTP/1.1 response.
fn dechunk(mut body: &str) -> String {
    let mut out = String::new();
    while let Some((size, rest)) = body.split_once("\r\n") {
        let Ok(size) = usize::from_str_radix(size.trim(), 16) else {
            break;
        };
        if size == 0 || rest.len() < size {
            break;
        }
        out.push_str(&rest[..size]);
        body = rest[size..].strip_prefix("\r\n").unwrap_or(&rest[size..]);
    }
    out
}

/// The current time as Unix seconds, as the sync gauge reports it.
pub fn unix_now() -> f64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metric_reads_samples_only_by_exact_name() {
        let body = "# HELP x\n\
                    kubeproxy_sync_proxy_rules_last_timestamp_seconds_total 9\n\
                    kubeproxy_sync_proxy_rules_last_timestamp_seconds 1.7e9\n";
        assert_eq!(metric(body, LAST_SYNC_METRIC), Some(1.7e9));
        assert_eq!(metric("other 1\n", LAST_SYNC_METRIC), None);
        let labelled = "kubeproxy_sync_proxy_rules_last_timestamp_seconds_total{ip_family=\"IPv4\"} 9\n\
                        kubeproxy_sync_proxy_rules_last_timestamp_seconds{ip_family=\"IPv4\"} 1.8e9\n";
        assert_eq!(metric(labelled, LAST_SYNC_METRIC), Some(1.8e9));
    }

    #[test]
    fn dechunk_joins_chunks() {
        assert_eq!(dechunk("3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n"), "abcde");
    }
}
