//! The agent as a real process on a lab node (`nsenter --net=<node netns> -- dataplane-agent
//! ...`, as the e2e tests and `dpctl demo` start it), what it logs and what its `/metrics`
//! says.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant, SystemTime};

use dataplane_testkit::NetNs;

use crate::manifests::days_from_civil;

/// Where the agent serves `/metrics` inside the node's namespace.
pub const METRICS_PORT: u16 = 10249;

/// A running agent, killed (and its datapath removed with `--cleanup`) when dropped.
pub struct Agent {
    child: Option<Child>,
    /// The agent's pid (nsenter execs it: the child's pid is the agent's).
    pub pid: i32,
    /// When it was spawned.
    pub spawned: SystemTime,
    log: PathBuf,
    args: Vec<String>,
    netns: PathBuf,
}

/// `env`: `NAME=value` pairs for the agent alone, set by `env(1)` after `nsenter` (which
/// would otherwise be the one a preloaded library profiles); `env` execs the agent, so the
/// pid stays the agent's.
fn command(netns: &Path, args: &[String], env: &[&str]) -> Command {
    let mut cmd = Command::new("nsenter");
    // Not `ip netns exec`: it remounts /sys, which hides the bpffs.
    cmd.arg(format!("--net={}", netns.display())).arg("--");
    if !env.is_empty() {
        cmd.arg("env").args(env);
    }
    cmd.arg(env!("CARGO_BIN_EXE_dataplane-agent"))
        .args(args)
        .env(
            "RUST_LOG",
            std::env::var("DP_AGENT_BENCH_RUST_LOG").unwrap_or_else(|_| "info".to_owned()),
        );
    cmd
}

impl Agent {
    /// Starts the agent with `args` in `netns`, logging to `log`.
    pub fn start(netns: &Path, args: Vec<String>, log: PathBuf) -> Result<Agent, String> {
        let file = std::fs::File::create(&log).map_err(|e| format!("{}: {e}", log.display()))?;
        let spawned = SystemTime::now();
        // A heap profile of the agent (not of its `--cleanup` run, which would find no
        // reader on heaptrack's pipe): `DP_AGENT_BENCH_AGENT_ENV="LD_PRELOAD=... DUMP_...=..."`.
        let vars = std::env::var("DP_AGENT_BENCH_AGENT_ENV").unwrap_or_default();
        let env: Vec<&str> = vars
            .split_whitespace()
            .filter(|v| v.contains('='))
            .collect();
        let child = command(netns, &args, &env)
            .stdout(Stdio::null())
            .stderr(file)
            .spawn()
            .map_err(|e| format!("nsenter: {e}"))?;
        let pid = i32::try_from(child.id()).map_err(|e| e.to_string())?;
        Ok(Agent {
            child: Some(child),
            pid,
            spawned,
            log,
            args,
            netns: netns.to_owned(),
        })
    }

    /// The log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// The log's path.
    pub fn log_path(&self) -> &Path {
        &self.log
    }

    /// The `synced` lines so far.
    pub fn syncs(&self) -> Vec<LogLine> {
        self.log()
            .lines()
            .filter(|l| l.contains(" synced"))
            .filter_map(LogLine::parse)
            .collect()
    }

    /// Waits until `count` syncs are logged; `Err` with the log when the agent exits or
    /// `deadline` passes.
    pub fn wait_for_syncs(
        &mut self,
        count: usize,
        deadline: Duration,
    ) -> Result<Vec<LogLine>, String> {
        let start = Instant::now();
        loop {
            let syncs = self.syncs();
            if syncs.len() >= count {
                return Ok(syncs);
            }
            if let Some(status) = self
                .child
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten())
            {
                return Err(format!(
                    "the agent exited ({status}):\n{}",
                    tail(&self.log())
                ));
            }
            if start.elapsed() > deadline {
                return Err(format!(
                    "no sync #{count} in {deadline:?}:\n{}",
                    tail(&self.log())
                ));
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    /// A `kB` field of the agent's `/proc/<pid>/status`.
    pub fn status_kib(&self, field: &str) -> Option<u64> {
        status_kib(self.pid, field)
    }

    /// The CPU time the agent used so far (user + system, all threads), from
    /// `/proc/<pid>/stat` (`USER_HZ` ticks).
    pub fn cpu_time(&self) -> Option<Duration> {
        let stat = std::fs::read_to_string(format!("/proc/{}/stat", self.pid)).ok()?;
        // The fields after the command name, which is in parentheses and may hold spaces.
        let rest = &stat[stat.rfind(')')? + 2..];
        let fields: Vec<&str> = rest.split_whitespace().collect();
        // utime and stime are fields 14 and 15 of the whole line: 11 and 12 here.
        let ticks: u64 =
            fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?;
        // In USER_HZ, which the kernel's ABI fixes at 100 for /proc.
        Some(Duration::from_millis(ticks * 10))
    }

    /// SIGTERM and wait; then `--cleanup`.
    pub fn stop(mut self) -> Result<(), String> {
        self.terminate()
    }

    fn terminate(&mut self) -> Result<(), String> {
        let Some(mut child) = self.child.take() else {
            return Ok(());
        };
        let pid = nix::unistd::Pid::from_raw(self.pid);
        let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
        let start = Instant::now();
        while child.try_wait().map_err(|e| e.to_string())?.is_none() {
            if start.elapsed() > Duration::from_secs(30) {
                let _ = child.kill();
                let _ = child.wait();
                break;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let mut args = self.args.clone();
        args.push("--cleanup".to_owned());
        let status = command(&self.netns, &args, &[])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .map_err(|e| format!("--cleanup: {e}"))?;
        if status.success() {
            Ok(())
        } else {
            Err(format!("--cleanup failed: {status}"))
        }
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        let _ = self.terminate();
    }
}

/// The last lines of a log, for errors.
pub fn tail(log: &str) -> String {
    let lines: Vec<&str> = log.lines().collect();
    lines[lines.len().saturating_sub(30)..].join("\n")
}

/// A `kB` field of `/proc/<pid>/status`.
pub fn status_kib(pid: i32, field: &str) -> Option<u64> {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()?
        .lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
}

/// One line of the agent's log (tracing's default format: an RFC 3339 UTC timestamp first,
/// then `key=value` fields).
#[derive(Debug, Clone)]
pub struct LogLine {
    /// When it was logged.
    pub at: SystemTime,
    /// The whole line.
    pub text: String,
}

impl LogLine {
    /// Parses the timestamp; `None` when the line has none.
    pub fn parse(line: &str) -> Option<LogLine> {
        let stamp = line.split_whitespace().next()?;
        Some(LogLine {
            at: parse_rfc3339(stamp)?,
            text: line.to_owned(),
        })
    }

    /// A `key=value` field.
    pub fn field(&self, key: &str) -> Option<&str> {
        let prefix = format!("{key}=");
        self.text
            .split_whitespace()
            .find_map(|w| w.strip_prefix(prefix.as_str()))
    }

    /// The `duration_ms` field of a `synced` line.
    pub fn duration(&self) -> Option<Duration> {
        let ms: f64 = self.field("duration_ms")?.parse().ok()?;
        Some(Duration::from_secs_f64(ms / 1000.0))
    }

    /// Whether the sync was a full one.
    pub fn full(&self) -> bool {
        self.field("full") == Some("true")
    }
}

/// `2026-12-06T11:39:09.123456Z` (tracing-subscriber's timestamps).
#[allow(clippy::many_single_char_names)] // the fields of a date
pub fn parse_rfc3339(s: &str) -> Option<SystemTime> {
    let s = s.strip_suffix('Z')?;
    let (date, time) = s.split_once('T')?;
    let mut d = date.split('-');
    let y: i64 = d.next()?.parse().ok()?;
    let m: u32 = d.next()?.parse().ok()?;
    let day: u32 = d.next()?.parse().ok()?;
    let (hms, frac) = time.split_once('.').unwrap_or((time, "0"));
    let mut t = hms.split(':');
    let h: u64 = t.next()?.parse().ok()?;
    let mi: u64 = t.next()?.parse().ok()?;
    let sec: u64 = t.next()?.parse().ok()?;
    let nanos: u32 = format!("{frac:0<9}").get(..9)?.parse().ok()?;
    let days = u64::try_from(days_from_civil(y, m, day)).ok()?;
    let secs = days * 86_400 + h * 3600 + mi * 60 + sec;
    Some(SystemTime::UNIX_EPOCH + Duration::new(secs, nanos))
}

/// The agent's `/metrics`, scraped inside the node's namespace.
#[derive(Debug, Clone, Default)]
pub struct Metrics {
    text: String,
}

impl Metrics {
    /// `GET /metrics` on 127.0.0.1 in `netns`.
    pub fn scrape(netns: &NetNs) -> Result<Metrics, String> {
        let body = netns
            .run(|| -> std::io::Result<String> {
                let mut s = TcpStream::connect(("127.0.0.1", METRICS_PORT))?;
                s.set_read_timeout(Some(Duration::from_secs(5)))?;
                s.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")?;
                let mut response = String::new();
                s.read_to_string(&mut response)?;
                Ok(response)
            })
            .map_err(|e| e.to_string())?
            .map_err(|e| format!("/metrics: {e}"))?;
        let text = body
            .split_once("\r\n\r\n")
            .map_or(body.as_str(), |(_, b)| b)
            .to_owned();
        Ok(Metrics { text })
    }

    /// A sample's value by its full name with labels (`name` or `name{labels}`).
    pub fn get(&self, name: &str) -> Option<f64> {
        self.text.lines().find_map(|l| {
            let (key, value) = l.rsplit_once(' ')?;
            (key == name).then(|| value.parse().ok()).flatten()
        })
    }

    /// A timestamp gauge (seconds since the epoch).
    pub fn time(&self, name: &str) -> Option<SystemTime> {
        let secs = self.get(name)?;
        (secs > 0.0).then(|| SystemTime::UNIX_EPOCH + Duration::from_secs_f64(secs))
    }
}

/// The peak RSS of the agent's helper processes (`nft`, `iptables-restore`, `nsenter`):
/// their `VmHWM`, sampled every 2 ms while they live (they live for tens of milliseconds or
/// more with 10k services), and their names.
pub struct HelperSampler {
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    handle: Option<std::thread::JoinHandle<(u64, Vec<String>)>>,
}

impl HelperSampler {
    /// Starts sampling the children of `pid`.
    pub fn start(pid: i32) -> HelperSampler {
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let flag = stop.clone();
        let handle = std::thread::spawn(move || {
            let mut peak = 0;
            let mut names = Vec::new();
            let exe = |p: i32| std::fs::read_link(format!("/proc/{p}/exe")).ok();
            // The agent's binary (not `exe(pid)`: the sampler may start before nsenter
            // has exec'd it).
            let agent = std::fs::canonicalize(env!("CARGO_BIN_EXE_dataplane-agent")).ok();
            while !flag.load(std::sync::atomic::Ordering::Relaxed) {
                // A child that has not exec'd yet is a copy of the agent (its VmHWM is the
                // agent's): not a helper.
                for child in children(pid)
                    .into_iter()
                    .filter(|c| exe(*c).is_some_and(|e| Some(&e) != agent.as_ref()))
                {
                    if let Some(hwm) = status_kib(child, "VmHWM:") {
                        peak = u64::max(peak, hwm);
                        let comm = std::fs::read_to_string(format!("/proc/{child}/comm"))
                            .unwrap_or_default()
                            .trim()
                            .to_owned();
                        if !comm.is_empty() && !names.contains(&comm) {
                            names.push(comm);
                        }
                    }
                }
                std::thread::sleep(Duration::from_millis(2));
            }
            (peak, names)
        });
        HelperSampler {
            stop,
            handle: Some(handle),
        }
    }

    /// Stops; the peak `VmHWM` in KiB and the helpers' names.
    pub fn finish(mut self) -> (u64, Vec<String>) {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        self.handle
            .take()
            .and_then(|h| h.join().ok())
            .unwrap_or_default()
    }
}

/// The children of every thread of `pid` (`/proc/<pid>/task/*/children`).
fn children(pid: i32) -> Vec<i32> {
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return Vec::new();
    };
    tasks
        .flatten()
        .filter_map(|t| std::fs::read_to_string(t.path().join("children")).ok())
        .flat_map(|s| {
            s.split_whitespace()
                .filter_map(|p| p.parse().ok())
                .collect::<Vec<i32>>()
        })
        .collect()
}
