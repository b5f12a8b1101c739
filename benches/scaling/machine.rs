//! The machine a run measured on, recorded in the results and shown in the report.

use std::process::Command;

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Machine {
    pub cpu: String,
    pub cores: usize,
    pub memory: String,
    pub kernel: String,
    pub os: String,
    pub rustc: String,
    pub date: String,
}

impl Machine {
    /// This machine, now; what cannot be read is "unknown".
    pub fn this() -> Machine {
        let cpuinfo = read_to_string("/proc/cpuinfo");
        let cpu = cpuinfo
            .lines()
            .find(|l| l.starts_with("model name"))
            .and_then(|l| l.split(':').nth(1))
            .map_or_else(|| "unknown".to_owned(), |s| s.trim().to_owned());
        let meminfo = read_to_string("/proc/meminfo");
        let memory = meminfo
            .lines()
            .find(|l| l.starts_with("MemTotal"))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|kib| kib.parse::<f64>().ok())
            .map_or_else(
                || "unknown".to_owned(),
                |kib| format!("{:.1} GiB", kib / 1024.0 / 1024.0),
            );
        let os = read_to_string("/etc/os-release")
            .lines()
            .find_map(|l| l.strip_prefix("PRETTY_NAME="))
            .map_or_else(|| "unknown".to_owned(), |s| s.trim_matches('"').to_owned());
        Machine {
            cpu,
            cores: std::thread::available_parallelism().map_or(1, std::num::NonZero::get),
            memory,
            kernel: read_to_string("/proc/sys/kernel/osrelease")
                .trim()
                .to_owned(),
            os,
            rustc: command_line("rustc", &["-V"]),
            date: command_line("date", &["-u", "+%Y-%m-%d %H:%M UTC"]),
        }
    }
}

/// The file's text; empty when it cannot be read.
fn read_to_string(path: &str) -> String {
    std::fs::read_to_string(path).unwrap_or_default()
}

/// The trimmed output of `program args`; "unknown" when it fails.
fn command_line(program: &str, args: &[&str]) -> String {
    Command::new(program)
        .args(args)
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map_or_else(
            || "unknown".to_owned(),
            |o| String::from_utf8_lossy(&o.stdout).trim().to_owned(),
        )
}
