//! What the host-policy benches (`host_workload`, `untracked_deny`) share: the backends
//! they measure in turn, a TCP server in node-0's own namespace, the Linux conntrack table
//! of a namespace, per-CPU time from `/proc/stat`, and a grouped bar plot.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener};
use std::path::Path;
use std::time::Duration;

use dataplane::{open, BoxDataplane, DataplaneKind, Options, Selection};
use dataplane_testkit::NetNs;

/// The backends, each an arm of both benches.
pub const BACKENDS: [&str; 3] = ["ebpf", "nftables", "iptables"];

/// What an arm prints instead of a number for a backend without host policy.
pub const NOT_MEASURED: &str = "not measured: backend lacks host policy";

/// Backend `kind` for the namespace at `netns`, with XDP in driver mode for eBPF (`xdp`).
pub fn open_backend(
    kind: &str,
    netns: &Path,
    tag: &str,
    xdp: bool,
) -> Result<BoxDataplane, String> {
    let mut options = Options::in_netns(netns);
    let selected = match kind {
        "ebpf" => {
            options.ebpf.pin_dir =
                format!("/sys/fs/bpf/dp-hostbench-{}-{tag}", std::process::id()).into();
            if xdp {
                options.ebpf.xdp = dataplane_ebpf::XdpMode::Native;
            }
            DataplaneKind::Ebpf
        }
        "nftables" => DataplaneKind::Nftables,
        "iptables" => {
            // 100k prefixes in one rule's ipset: above the default capacity (65536).
            options.iptables.ipset_max_elements = 1 << 18;
            DataplaneKind::Iptables
        }
        other => return Err(format!("unknown backend {other}")),
    };
    open(Selection::Only(selected), &options)
        .map(|o| o.dataplane)
        .map_err(|e| {
            let mut text = format!("open {kind}: {e}");
            let mut source = std::error::Error::source(&e);
            while let Some(cause) = source {
                text = format!("{text}: {cause}");
                source = cause.source();
            }
            text
        })
}

/// Starts a key-value server of `threads` threads on `addr` in namespace `ns` (the node's
/// own namespace: a host workload, not a pod): each connection sends a request line, gets
/// `ok <n>\n` (a counter kept per key, the request line) back, and is read until the client
/// closes it (the CRR client resets it: no `TIME_WAIT` on either side). The threads live as
/// long as the process.
pub fn start_server(ns: &NetNs, addr: SocketAddr, threads: usize) {
    let listener = ns
        .run(|| TcpListener::bind(addr))
        .expect("enter node-0")
        .expect("bind the host server");
    let store = std::sync::Arc::new(std::sync::Mutex::new(std::collections::HashMap::<
        Vec<u8>,
        u64,
    >::new()));
    for _ in 0..threads {
        let listener = listener.try_clone().expect("clone the listener");
        let store = store.clone();
        std::thread::spawn(move || loop {
            let Ok((mut s, _)) = listener.accept() else {
                continue;
            };
            let _ = s.set_read_timeout(Some(Duration::from_secs(2)));
            let mut buf = [0u8; 128];
            let mut n = 0;
            while !buf[..n].ends_with(b"\n") && n < buf.len() {
                match s.read(&mut buf[n..]) {
                    Ok(0) | Err(_) => break,
                    Ok(m) => n += m,
                }
            }
            let count = {
                let mut store = store
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner);
                let v = store.entry(buf[..n].to_vec()).or_default();
                *v += 1;
                *v
            };
            if s.write_all(format!("ok {count}\n").as_bytes()).is_err() {
                continue;
            }
            // Until the client's reset (or close).
            while matches!(s.read(&mut buf), Ok(m) if m > 0) {}
        });
    }
}

/// Entries in the Linux conntrack table of namespace `ns` (`nf_conntrack_count`; 0 when
/// conntrack is not loaded there).
pub fn conntrack_count(ns: &NetNs) -> u64 {
    ns.run(|| std::fs::read_to_string("/proc/sys/net/netfilter/nf_conntrack_count"))
        .ok()
        .and_then(Result::ok)
        .and_then(|t| t.trim().parse().ok())
        .unwrap_or(0)
}

/// Empties the Linux conntrack table of namespace `ns` (`conntrack -F`; nothing to do when
/// the tool or the table is missing).
pub fn conntrack_flush(ns: &NetNs) {
    let _ = std::process::Command::new("ip")
        .args(["netns", "exec", ns.name(), "conntrack", "-F"])
        .output();
}

/// CPU `cpu`'s time from `/proc/stat`, in seconds: (softirq, busy = all but idle and
/// iowait).
pub fn cpu_times(cpu: usize) -> (f64, f64) {
    let stat = std::fs::read_to_string("/proc/stat").expect("/proc/stat");
    let name = format!("cpu{cpu}");
    let line = stat
        .lines()
        .find(|l| l.split_whitespace().next() == Some(name.as_str()))
        .expect("the CPU's line");
    let v: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .filter_map(|f| f.parse().ok())
        .collect();
    let hz = nix::unistd::sysconf(nix::unistd::SysconfVar::CLK_TCK)
        .ok()
        .flatten()
        .unwrap_or(100);
    #[allow(clippy::cast_precision_loss)] // jiffies far below 2^52
    let secs = |j: u64| j as f64 / hz as f64;
    // user nice system idle iowait irq softirq steal ...
    let total: u64 = v.iter().take(8).sum();
    (secs(v[6]), secs(total - v[3] - v[4]))
}

/// A grouped bar plot at `path`: one group per label of `groups`, one bar per series
/// (name, value per group; `None`: not measured), values on the y axis named `y`.
pub fn bar_plot(
    path: &Path,
    title: &str,
    y: &str,
    groups: &[String],
    series: &[(String, Vec<Option<f64>>)],
) -> Result<(), Box<dyn std::error::Error>> {
    use plotters::prelude::*;
    let max = series
        .iter()
        .flat_map(|(_, v)| v.iter().flatten())
        .copied()
        .fold(0.0_f64, f64::max)
        .max(1.0)
        * 1.15;
    let root = BitMapBackend::new(path, (900, 480)).into_drawing_area();
    root.fill(&WHITE)?;
    #[allow(clippy::cast_precision_loss)] // a few groups
    let width = groups.len() as f64;
    let mut chart = ChartBuilder::on(&root)
        .caption(title, ("sans-serif", 20))
        .margin(12)
        .x_label_area_size(40)
        .y_label_area_size(70)
        .build_cartesian_2d(0.0..width, 0.0..max)?;
    let labels = groups.to_vec();
    chart
        .configure_mesh()
        .disable_x_mesh()
        .x_labels(groups.len() * 2 + 1)
        .x_label_formatter(&move |x| {
            let i = x.floor();
            if (x - i - 0.5).abs() < 0.05 {
                #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
                labels.get(i as usize).cloned().unwrap_or_default()
            } else {
                String::new()
            }
        })
        .y_desc(y)
        .draw()?;
    #[allow(clippy::cast_precision_loss)] // a few series
    let bar = 0.8 / series.len() as f64;
    for (k, (name, values)) in series.iter().enumerate() {
        let color = Palette99::pick(k).to_rgba();
        #[allow(clippy::cast_precision_loss)]
        let offset = 0.1 + bar * k as f64;
        chart
            .draw_series(values.iter().enumerate().filter_map(|(g, v)| {
                #[allow(clippy::cast_precision_loss)]
                let x = g as f64 + offset;
                v.map(|v| Rectangle::new([(x, 0.0), (x + bar * 0.9, v)], color.filled()))
            }))?
            .label(name.clone())
            .legend(move |(x, y)| Rectangle::new([(x, y - 5), (x + 10, y + 5)], color.filled()));
    }
    chart
        .configure_series_labels()
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .position(SeriesLabelPosition::UpperRight)
        .draw()?;
    root.present()?;
    Ok(())
}

/// Today's date and time (UTC), for the report.
pub fn now_utc() -> String {
    std::process::Command::new("date")
        .args(["-u", "+%Y-%m-%d %H:%M UTC"])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
        .unwrap_or_default()
}

/// The machine's load when the run started (1-minute load average, CPUs).
pub fn machine_state() -> String {
    let load = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    let cpus = std::thread::available_parallelism().map_or(1, usize::from);
    format!(
        "{cpus} CPUs, load average {} at the start",
        load.split_whitespace().next().unwrap_or("?")
    )
}
