//! One backend's run: a lab, the manifest directory, the agent as a process, its first sync
//! and memory, then the probe service's EndpointSlice edited again and again, each edit timed
//! until a new connection to the ClusterIP is answered by the new pod.

use std::io::{BufRead, BufReader, Write as _};
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::time::{Duration, Instant, SystemTime};

use dataplane_testkit::{Lab, LabSpec, NetNs};
use serde::{Deserialize, Serialize};

use crate::manifests::{self, rfc3339, ProbeFile, PROBE_PORT, PROBE_VIP};
use crate::process::{tail, Agent, HelperSampler, LogLine, Metrics};
use crate::Settings;

/// How a change reaches the file.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Write {
    /// A temporary file renamed over the old one (kubectl edit, editors, config management).
    Rename,
    /// The file truncated and written in place (`>` in a shell).
    InPlace,
}

impl Write {
    pub fn label(self) -> &'static str {
        match self {
            Write::Rename => "rename",
            Write::InPlace => "in-place",
        }
    }
}

/// One timed change.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Change {
    pub write: Write,
    /// From just before the write until the new pod answered a new connection.
    pub total_ms: f64,
    /// From the write until the reconcile loop queued the change
    /// (`kubeproxy_sync_proxy_rules_last_queued_timestamp_seconds`): inotify, the source's
    /// debounce, reading and parsing the file, the per-object diff, the channel.
    pub watch_ms: Option<f64>,
    /// From queued until the sync started (the runner's wait; the end of the `synced` line's
    /// timestamp minus its duration).
    pub wait_ms: Option<f64>,
    /// The sync: translate, program, health ports, metrics (`duration_ms` of the log line,
    /// the `kubeproxy_sync_proxy_rules_duration_seconds` observation).
    pub sync_ms: Option<f64>,
    /// From the sync's end (its log line) until the probe was answered by the new pod
    /// (negative: the datapath was updated before the sync's bookkeeping ended).
    pub after_ms: Option<f64>,
    /// Syncs between the write and the answer (1 normally).
    pub syncs: usize,
    /// One of them was full (a periodic resync): the change waited for it.
    pub full: bool,
    /// Probes sent, and how many failed (refused, timed out) rather than being answered by
    /// the old pod.
    pub probes: u32,
    pub failed_probes: u32,
}

/// One backend's results.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct BackendRun {
    pub backend: String,
    /// What the agent logged it opened (`dataplane opened`).
    pub opened: String,
    /// Manifest files and bytes.
    pub files: usize,
    pub bytes: u64,
    /// Spawn to the first `synced` line.
    pub first_sync_ms: f64,
    /// Spawn to `every kind listed` (the directory read and parsed, the objects stored).
    pub listed_ms: f64,
    /// The first sync's own duration (translate + program).
    pub first_sync_duration_ms: f64,
    /// The agent's `VmHWM` / `VmRSS` right after the first sync, and `VmRSS` after the
    /// changes.
    pub vmhwm_kib: u64,
    pub vmrss_kib: u64,
    /// The agent's `VmRSS` when every kind was listed, before the first sync (its log line).
    #[serde(default)]
    pub listed_rss_kib: Option<u64>,
    /// Of `vmrss_kib`, the pages of mapped files (`RssFile`: the agent's binary and
    /// libraries, a floor that no heap work lowers).
    #[serde(default)]
    pub rss_file_kib: Option<u64>,
    pub vmrss_end_kib: u64,
    pub vmhwm_end_kib: u64,
    /// The peak `VmHWM` of the agent's helper processes, and their names.
    pub helpers_kib: u64,
    pub helpers: Vec<String>,
    pub changes: Vec<Change>,
    /// The CPU the agent used over 5 s with nothing changing, in % of one core.
    #[serde(default)]
    pub idle_cpu_percent: f64,
    /// The agent's manifest source, timed in this process on the same directory.
    #[serde(default)]
    pub in_process: InProcess,
}

/// The agent's manifest source (`dataplane_agent::manifests::ManifestDir`) in this
/// process, on the same directory: what reading and parsing costs without the agent's other
/// work, the watch and the probe around it.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct InProcess {
    /// Reading and parsing the whole directory (the agent's start).
    pub list_ms: f64,
    /// What this process's RSS grew by while listing as the agent does
    /// (`ManifestDir::list_with`, each file's objects handed on and dropped here: what the
    /// source keeps, digests and document hashes, plus one file's objects at a time).
    #[serde(default)]
    pub list_rss_kib: u64,
    /// Re-reading the probe's file after a change (median of 5): read, split, hash, parse
    /// the changed documents, diff.
    pub update_ms: f64,
    /// Documents parsed per re-read (median of 5): 1 when only the changed one is.
    #[serde(default)]
    pub update_documents: f64,
    /// `dataplane_kube::parse_manifests` of that file alone (median of 5).
    pub parse_ms: f64,
    /// The file's size.
    pub probe_file_bytes: u64,
}

/// Times the agent's manifest source on `dir` (restoring the probe's file afterwards).
fn in_process(
    dir: &Path,
    path: &Path,
    probe_file: &ProbeFile,
    lab: &Lab,
) -> Result<InProcess, String> {
    use std::collections::BTreeSet;

    let original = std::fs::read_to_string(path).map_err(|e| e.to_string())?;
    let mut source = dataplane_agent::manifests::ManifestDir::new(dir);
    let rss =
        || crate::process::status_kib(std::process::id().cast_signed(), "VmRSS:").unwrap_or(0);
    let before = rss();
    let t = Instant::now();
    // As the agent lists: each file's objects handed on (and dropped here, as the agent's
    // store drops them once trimmed).
    source
        .list_with(&mut |event| {
            drop(event);
            true
        })
        .map_err(|e| format!("{e:#}"))?;
    let list_ms = ms(t.elapsed());
    let list_rss_kib = rss().saturating_sub(before);
    let mut updates = Vec::new();
    let mut documents = Vec::new();
    let mut parses = Vec::new();
    for n in 0..5 {
        let pod = lab.pod(1 + n % (PODS - 1));
        let text = probe_file.text(
            &pod.addresses[0].to_string(),
            "node-0",
            &pod.name,
            100 + n as u64,
            &rfc3339(SystemTime::now()),
        );
        std::fs::write(path, &text).map_err(|e| e.to_string())?;
        let parsed_before = source.documents_parsed();
        let t = Instant::now();
        let events = source.update(&BTreeSet::from([path.to_owned()]), false);
        updates.push(ms(t.elapsed()));
        #[allow(clippy::cast_precision_loss)] // a handful of documents
        documents.push((source.documents_parsed() - parsed_before) as f64);
        if events.is_empty() {
            return Err("the manifest source saw no change".to_owned());
        }
        let t = Instant::now();
        dataplane_kube::parse_manifests(&text, "probe").map_err(|e| e.to_string())?;
        parses.push(ms(t.elapsed()));
    }
    std::fs::write(path, &original).map_err(|e| e.to_string())?;
    Ok(InProcess {
        list_ms,
        list_rss_kib,
        update_ms: crate::report::quantile(&updates, 0.5).unwrap_or(0.0),
        update_documents: crate::report::quantile(&documents, 0.5).unwrap_or(0.0),
        parse_ms: crate::report::quantile(&parses, 0.5).unwrap_or(0.0),
        probe_file_bytes: original.len() as u64,
    })
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

/// Signed milliseconds from `a` to `b`.
fn ms_between(a: SystemTime, b: SystemTime) -> f64 {
    match b.duration_since(a) {
        Ok(d) => ms(d),
        Err(e) => -ms(e.duration()),
    }
}

/// The agent's command line for node-0 of this run.
fn agent_args(dir: &Path, backend: &str, settings: &Settings) -> Vec<String> {
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
        &format!("{}ms", settings.min_sync.as_millis()),
        "--bpf-pin-dir",
        &format!("/sys/fs/bpf/dp-agent-bench-{id}-{backend}"),
        "--nft-table",
        &format!("dpagentbench{id}"),
        "--iptables-prefix",
        "DPAB",
        "--healthz-bind-address",
        "127.0.0.1:10256",
        "--metrics-bind-address",
        &format!("127.0.0.1:{}", crate::process::METRICS_PORT),
    ]
    .iter()
    .map(ToString::to_string)
    .collect()
}

/// Pods of the lab's node: 0 is the client, 1.. the backends the probe service moves
/// between.
const PODS: usize = 4;

#[allow(clippy::too_many_lines)] // one run, step by step
pub fn run(backend: &str, settings: &Settings) -> Result<BackendRun, String> {
    let lab = Lab::new(LabSpec {
        nodes: 1,
        pods_per_node: PODS,
        external_clients: 0,
        ipv6: false,
    })
    .map_err(|e| format!("lab: {e}"))?;
    let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
    let t = Instant::now();
    let (layout, probe_file) =
        manifests::write(dir.path(), &lab, settings.services, settings.endpoints, 1)
            .map_err(|e| format!("manifests: {e}"))?;
    eprintln!(
        "[{backend}] {} files, {:.1} MiB written in {:.0} ms",
        layout.files,
        f64::from(u32::try_from(layout.bytes / 1024).unwrap_or(u32::MAX)) / 1024.0,
        ms(t.elapsed())
    );
    let in_process = in_process(dir.path(), &layout.probe_file, &probe_file, &lab)?;
    eprintln!("[{backend}] in this process: {in_process:?}");
    let node = lab.node(0);
    let args = agent_args(dir.path(), backend, settings);
    let log = std::env::temp_dir().join(format!("dp-agent-bench-{backend}.log"));
    let mut agent = Agent::start(node.netns.path(), args, log)?;
    let sampler = HelperSampler::start(agent.pid);
    let first = agent.wait_for_syncs(1, Duration::from_mins(10))?;
    let vmhwm_kib = agent.status_kib("VmHWM:").unwrap_or(0);
    let vmrss_kib = agent.status_kib("VmRSS:").unwrap_or(0);
    let rss_file_kib = agent.status_kib("RssFile:");
    let first = first[0].clone();
    let lines: Vec<LogLine> = agent.log().lines().filter_map(LogLine::parse).collect();
    let listed_line = lines.iter().find(|l| l.text.contains("every kind listed"));
    let listed = listed_line.map_or(first.at, |l| l.at);
    let listed_rss_kib = listed_line
        .and_then(|l| l.field("rss_kib"))
        .and_then(|v| v.parse().ok());
    let opened = lines
        .iter()
        .find(|l| l.text.contains("dataplane opened"))
        .and_then(|l| l.field("dataplane"))
        .unwrap_or(backend)
        .to_owned();
    let run_first_sync_ms = ms_between(agent.spawned, first.at);
    let listed_ms = ms_between(agent.spawned, listed);
    eprintln!(
        "[{backend}] first sync {run_first_sync_ms:.0} ms after the start; VmHWM {vmhwm_kib} KiB, VmRSS {vmrss_kib} KiB\n  {}",
        first.text
    );

    let client = &lab.pod(0).netns;
    let dst = SocketAddr::from((PROBE_VIP, PROBE_PORT));
    let mut current = 1;
    wait_for_backend(client, dst, &lab.pod(current).name, Duration::from_secs(30))
        .map_err(|e| format!("{e}\n{}", tail(&agent.log())))?;

    // The agent with nothing to do: the CPU it uses over a quiet period (no file changes;
    // a periodic resync may fall into it).
    let quiet = Duration::from_secs(5);
    let cpu0 = agent.cpu_time();
    std::thread::sleep(quiet);
    let idle_cpu_percent = cpu0.zip(agent.cpu_time()).map_or(0.0, |(a, b)| {
        100.0 * (b.saturating_sub(a)).as_secs_f64() / quiet.as_secs_f64()
    });
    eprintln!("[{backend}] idle: {idle_cpu_percent:.0}% of a core over {quiet:?}");

    let mut changes = Vec::new();
    let mut version = 1;
    for &write in &settings.writes {
        for n in 0..settings.changes {
            // Past `--min-sync-period` since the last sync: this is the first change after a
            // quiet period, which the runner syncs at once.
            std::thread::sleep(settings.gap);
            let next = 1 + current % (PODS - 1);
            version += 1;
            let change = one_change(
                &mut agent,
                &node.netns,
                client,
                &probe_file,
                &layout.probe_file,
                write,
                (&lab, next),
                version,
            )?;
            eprintln!(
                "[{backend}] {} #{n}: {:.1} ms (watch {:?}, wait {:?}, sync {:?}, after {:?}; {} probes, {} failed{})",
                write.label(),
                change.total_ms,
                change.watch_ms.map(|v| (v * 10.0).round() / 10.0),
                change.wait_ms.map(|v| (v * 10.0).round() / 10.0),
                change.sync_ms.map(|v| (v * 10.0).round() / 10.0),
                change.after_ms.map(|v| (v * 10.0).round() / 10.0),
                change.probes,
                change.failed_probes,
                if change.full { "; a full resync" } else { "" }
            );
            changes.push(change);
            current = next;
        }
    }
    let vmrss_end_kib = agent.status_kib("VmRSS:").unwrap_or(0);
    let vmhwm_end_kib = agent.status_kib("VmHWM:").unwrap_or(0);
    let (helpers_kib, helpers) = sampler.finish();
    let log_copy = agent.log_path().to_owned();
    agent.stop()?;
    eprintln!("[{backend}] agent log: {}", log_copy.display());
    Ok(BackendRun {
        backend: backend.to_owned(),
        opened,
        files: layout.files,
        bytes: layout.bytes,
        first_sync_ms: run_first_sync_ms,
        listed_ms,
        first_sync_duration_ms: first.duration().map_or(0.0, ms),
        vmhwm_kib,
        vmrss_kib,
        listed_rss_kib,
        rss_file_kib,
        vmrss_end_kib,
        vmhwm_end_kib,
        helpers_kib,
        helpers,
        changes,
        idle_cpu_percent,
        in_process,
    })
}

/// Probes until `want` answers a new connection to `dst` from `client`.
fn wait_for_backend(
    client: &NetNs,
    dst: SocketAddr,
    want: &str,
    deadline: Duration,
) -> Result<(), String> {
    let start = Instant::now();
    let mut last = String::new();
    while start.elapsed() < deadline {
        match client.run(|| probe(dst)).map_err(|e| e.to_string())? {
            Ok(name) if name == want => return Ok(()),
            Ok(name) => last = format!("answered by {name}"),
            Err(e) => last = e,
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    Err(format!("{want} never answered on {dst} (last: {last})"))
}

/// How long a probe waits for the connection; a SYN lost while the datapath changes is sent
/// again by the next probe, not by TCP's 1 s retransmission.
const CONNECT_TIMEOUT: Duration = Duration::from_millis(10);
/// How long a probe waits for the answer.
const ANSWER_TIMEOUT: Duration = Duration::from_millis(100);
/// The pause between two probes: the probe loop leaves the agent most of the second core
/// (this machine has two), at the price of up to this much resolution.
const PROBE_PAUSE: Duration = Duration::from_micros(500);

/// After this long without the new pod, the probes pause longer.
const SLOW_AFTER: Duration = Duration::from_millis(250);
/// The pause between probes after `SLOW_AFTER`.
const SLOW_PAUSE: Duration = Duration::from_millis(2);

/// One connection to `dst`: the answering pod's name (the lab's servers answer
/// `"<pod> <peer>"` to a line).
fn probe(dst: SocketAddr) -> Result<String, String> {
    let mut s =
        TcpStream::connect_timeout(&dst, CONNECT_TIMEOUT).map_err(|e| format!("connect: {e}"))?;
    // Closed with RST: thousands of probes per change leave no TIME_WAIT behind to run the
    // client out of ports.
    let linger = libc::linger {
        l_onoff: 1,
        l_linger: 0,
    };
    nix::sys::socket::setsockopt(&s, nix::sys::socket::sockopt::Linger, &linger)
        .map_err(|e| format!("SO_LINGER: {e}"))?;
    s.set_read_timeout(Some(ANSWER_TIMEOUT))
        .map_err(|e| e.to_string())?;
    s.write_all(b"probe\n").map_err(|e| format!("send: {e}"))?;
    let mut line = String::new();
    BufReader::new(&s)
        .read_line(&mut line)
        .map_err(|e| format!("receive: {e}"))?;
    line.split_whitespace()
        .next()
        .map(ToOwned::to_owned)
        .ok_or_else(|| format!("empty answer {line:?}"))
}

/// Writes the probe's file `path` (with the slice to lab pod `target.1`) the `write` way.
fn write_file(path: &Path, text: &str, write: Write) -> std::io::Result<()> {
    match write {
        Write::Rename => {
            // As kubectl, editors and config management tools save: a temporary (hidden)
            // file in the same directory, renamed over the old one.
            let name = path
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default();
            let tmp = path.with_file_name(format!(".{name}.tmp"));
            std::fs::write(&tmp, text)?;
            std::fs::rename(&tmp, path)
        }
        Write::InPlace => {
            let mut f = std::fs::OpenOptions::new()
                .write(true)
                .truncate(true)
                .open(path)?;
            f.write_all(text.as_bytes())
        }
    }
}

/// One change: the probe's slice moved to lab pod `target.1`, timed until it answers.
#[allow(clippy::too_many_arguments)]
fn one_change(
    agent: &mut Agent,
    node: &NetNs,
    client: &NetNs,
    probe_file: &ProbeFile,
    path: &Path,
    write: Write,
    target: (&Lab, usize),
    version: u64,
) -> Result<Change, String> {
    let (lab, next) = target;
    let pod = lab.pod(next);
    let want = pod.name.clone();
    let ip = pod.addresses[0].to_string();
    let node_name = lab.node(pod.node).name.clone();
    let syncs_before = agent.syncs().len();
    let dst = SocketAddr::from((PROBE_VIP, PROBE_PORT));
    // The file's text is made before the clock starts, with the trigger time a few
    // microseconds early (it is written into the text).
    let trigger = rfc3339(SystemTime::now());
    let text = probe_file.text(&ip, &node_name, &want, version, &trigger);
    // Everything from the write to the answer on one thread in the client's namespace: no
    // thread start between the write and the first probe.
    let pause = std::env::var("DP_AGENT_BENCH_PROBE_PAUSE_US")
        .ok()
        .and_then(|v| v.parse().ok())
        .map_or(PROBE_PAUSE, Duration::from_micros);
    let (t0, took, probes, failed) = client
        .run(|| -> Result<(SystemTime, Duration, u32, u32), String> {
            let (mut probes, mut failed) = (0, 0);
            let t0 = SystemTime::now();
            let start = Instant::now();
            write_file(path, &text, write).map_err(|e| format!("{}: {e}", path.display()))?;
            loop {
                probes += 1;
                match probe(dst) {
                    Ok(name) if name == want => return Ok((t0, start.elapsed(), probes, failed)),
                    Ok(_) => {}
                    Err(_) => failed += 1,
                }
                if start.elapsed() > Duration::from_mins(2) {
                    return Err(format!(
                        "{want} never answered after the {} write",
                        write.label()
                    ));
                }
                // Finer while the answer is expected, coarser when the agent is slow.
                std::thread::sleep(if start.elapsed() < SLOW_AFTER {
                    pause
                } else {
                    SLOW_PAUSE
                });
            }
        })
        .map_err(|e| e.to_string())?
        .map_err(|e| format!("{e}\n{}", tail(&agent.log())))?;
    let answered = t0 + took;
    // The sync's line and metrics come after the datapath changed: wait for them.
    let syncs = agent.wait_for_syncs(syncs_before + 1, Duration::from_mins(2))?;
    let new: Vec<&LogLine> = syncs[syncs_before..]
        .iter()
        .filter(|l| l.at >= t0)
        .collect();
    let after = Metrics::scrape(node)?;
    // The sync that carried the change: the first one that ended after the change was
    // queued.
    // Labelled by family like kube-proxy's; the lab is IPv4 (every family gets the same time).
    let queued = after
        .time("kubeproxy_sync_proxy_rules_last_queued_timestamp_seconds{ip_family=\"IPv4\"}")
        .filter(|q| *q >= t0);
    let carrier = new
        .iter()
        .find(|l| queued.is_none_or(|q| l.at >= q))
        .or(new.first());
    let sync = carrier.and_then(|l| l.duration());
    let sync_start = carrier.zip(sync).map(|(l, d)| l.at - d);
    Ok(Change {
        write,
        total_ms: ms(took),
        watch_ms: queued.map(|q| ms_between(t0, q)),
        wait_ms: queued.zip(sync_start).map(|(q, s)| ms_between(q, s)),
        sync_ms: sync.map(ms),
        after_ms: carrier.map(|l| ms_between(l.at, answered)),
        syncs: new.len(),
        full: new.iter().any(|l| l.full()),
        probes,
        failed_probes: failed,
    })
}
