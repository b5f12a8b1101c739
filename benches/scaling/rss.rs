//! Peak RSS of a process that holds the control plane's N services: a child process of the
//! bench (`--rss-child`) opens a fresh dataplane, programs the state into a lab node and
//! prints its `VmHWM`, so that nothing the parent allocated for its other measurements counts.

use std::net::Ipv4Addr;
use std::path::Path;
use std::process::Command;
use std::time::Instant;

use crate::clock::ms;
use crate::nodes::open_dataplane;
use crate::results::Rss;
use crate::states::control_state;

/// A `kB` field of `/proc/self/status`; 0 when it cannot be read.
fn status_kib(field: &str) -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

/// Runs the child for dataplane `kind` with `n` services in `netns`, on the node state in
/// `base_file`.
pub fn rss_of_child(kind: &str, n: usize, netns: &Path, base_file: &Path) -> Result<Rss, String> {
    let exe = std::env::current_exe().map_err(|e| e.to_string())?;
    let out = Command::new(exe)
        .arg("--rss-child")
        .arg(kind)
        .arg(n.to_string())
        .arg(netns)
        .arg(base_file)
        .output()
        .map_err(|e| format!("spawn RSS child: {e}"))?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    let line = stdout
        .lines()
        .find_map(|l| l.strip_prefix("RSS "))
        .ok_or_else(|| {
            format!(
                "RSS child failed: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            )
        })?;
    let v: serde_json::Value = serde_json::from_str(line).map_err(|e| e.to_string())?;
    let get = |k: &str| v.get(k).and_then(serde_json::Value::as_u64).unwrap_or(0);
    Ok(Rss {
        vmhwm_kib: get("vmhwm_kib"),
        vmrss_before_kib: get("vmrss_before_kib"),
        vmrss_state_kib: get("vmrss_state_kib"),
        vmrss_after_kib: get("vmrss_after_kib"),
        children_maxrss_kib: get("children_maxrss_kib"),
        apply_ms: v
            .get("apply_ms")
            .and_then(serde_json::Value::as_f64)
            .unwrap_or(0.0),
    })
}

/// `--rss-child KIND SERVICES NETNS BASE_JSON`: build the control-plane state of SERVICES
/// services, program it into NETNS with a fresh backend, print peak RSS, remove everything.
pub fn rss_child(args: &[String]) -> i32 {
    let usage = || {
        eprintln!("usage: --rss-child KIND SERVICES NETNS BASE_JSON");
        2
    };
    let [kind, services, netns, base_file, ..] = args else {
        return usage();
    };
    let Ok(n) = services.parse::<usize>() else {
        return usage();
    };
    let before = status_kib("VmRSS:");
    let run = || -> Result<serde_json::Value, String> {
        // As an agent does: the backend first (at start-up; the eBPF one loads its programs,
        // which peaks while aya parses the kernel's BTF), then the state it is handed.
        let mut dp = open_dataplane(kind, Path::new(netns), "rss", None, n)?;
        let text = std::fs::read_to_string(base_file).map_err(|e| e.to_string())?;
        let base = dataplane::from_json(&text).map_err(|e| e.to_string())?;
        drop(text);
        let state = control_state(&base, n, Ipv4Addr::new(10, 244, 255, 1));
        drop(base);
        // Where the memory goes: the backend loaded and the state built, then what the sync
        // adds at its peak and keeps after it.
        let with_state = status_kib("VmRSS:");
        let t = Instant::now();
        let applied = dp.sync(None, &state);
        let took = t.elapsed();
        let hwm = status_kib("VmHWM:");
        let after = status_kib("VmRSS:");
        let children = nix::sys::resource::getrusage(nix::sys::resource::UsageWho::RUSAGE_CHILDREN)
            .map_or(0, |u| u.max_rss());
        let _ = dp.reset();
        applied.map_err(|e| format!("apply: {e}"))?;
        Ok(serde_json::json!({
            "vmhwm_kib": hwm,
            "vmrss_before_kib": before,
            "vmrss_state_kib": with_state,
            "vmrss_after_kib": after,
            "children_maxrss_kib": children,
            "apply_ms": ms(took),
        }))
    };
    match run() {
        Ok(v) => {
            println!("RSS {v}");
            0
        }
        Err(e) => {
            eprintln!("{e}");
            1
        }
    }
}
