//! `dpctl lab up|down|status`: the demo lab (network namespaces only, no dataplane).
//!
//! The lab's pod servers are threads of the process that built it, so `lab up` holds the lab in
//! the foreground until it is interrupted (Ctrl-C, SIGTERM or `dpctl lab down` from another
//! terminal) and then removes it. While it runs, `/run/dpctl/lab.json` describes it.

use std::path::Path;
use std::sync::mpsc;

use anyhow::{bail, Context};
use clap::Subcommand;
use dataplane_testkit::{Lab, LabSpec};
use serde::{Deserialize, Serialize};

const STATE_DIR: &str = "/run/dpctl";
const STATE_FILE: &str = "/run/dpctl/lab.json";

/// What `dpctl lab` does.
#[derive(Debug, Subcommand)]
pub enum LabAction {
    /// Build the lab and hold it until interrupted.
    Up {
        /// Number of nodes.
        #[arg(long, default_value_t = 2)]
        nodes: usize,
        /// Pods per node.
        #[arg(long, default_value_t = 2)]
        pods: usize,
        /// External clients on the underlay.
        #[arg(long, default_value_t = 1)]
        externals: usize,
        /// Also IPv6.
        #[arg(long)]
        ipv6: bool,
    },
    /// Stop the process holding the lab; it removes the namespaces.
    Down,
    /// Show the lab, if one is up.
    Status,
}

/// The description `lab up` leaves for `status` and `down`.
#[derive(Debug, Serialize, Deserialize)]
struct LabFile {
    pid: u32,
    prefix: String,
    namespaces: Vec<String>,
    rows: Vec<(String, String, String)>,
}

/// Runs one lab action.
pub fn run(action: &LabAction) -> anyhow::Result<()> {
    match *action {
        LabAction::Up {
            nodes,
            pods,
            externals,
            ipv6,
        } => up(LabSpec {
            nodes,
            pods_per_node: pods,
            external_clients: externals,
            ipv6,
        }),
        LabAction::Down => down(),
        LabAction::Status => status(),
    }
}

fn read_state() -> anyhow::Result<Option<LabFile>> {
    match std::fs::read_to_string(STATE_FILE) {
        Ok(text) => Ok(Some(
            serde_json::from_str(&text).context("reading /run/dpctl/lab.json")?,
        )),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e).context("reading /run/dpctl/lab.json"),
    }
}

fn alive(pid: u32) -> bool {
    Path::new(&format!("/proc/{pid}")).exists()
}

fn up(spec: LabSpec) -> anyhow::Result<()> {
    if let Some(existing) = read_state()? {
        if alive(existing.pid) {
            bail!(
                "a lab is already up (pid {}); run `dpctl lab down` first",
                existing.pid
            );
        }
    }
    let lab = Lab::new(spec).context("building the lab")?;
    let mut rows = Vec::new();
    for n in lab.nodes() {
        rows.push((
            format!("node {}", n.name),
            n.netns.name().to_owned(),
            join(&n.addresses),
        ));
    }
    for p in lab.pods() {
        rows.push((
            format!("pod {}", p.name),
            p.netns.name().to_owned(),
            join(&p.addresses),
        ));
    }
    for e in lab.externals() {
        rows.push((
            format!("external {}", e.name),
            e.netns.name().to_owned(),
            join(&e.addresses),
        ));
    }
    let file = LabFile {
        pid: std::process::id(),
        prefix: lab.prefix().to_owned(),
        namespaces: lab
            .namespaces()
            .iter()
            .map(|n| n.name().to_owned())
            .collect(),
        rows,
    };
    std::fs::create_dir_all(STATE_DIR)?;
    std::fs::write(STATE_FILE, serde_json::to_string_pretty(&file)?)?;
    print_rows(&file);
    println!(
        "lab is up; servers answer on port {} in every pod. Ctrl-C or `dpctl lab down` removes it.",
        dataplane_testkit::SERVER_PORT
    );
    let (tx, rx) = mpsc::channel();
    ctrlc::set_handler(move || {
        let _ = tx.send(());
    })
    .context("installing the signal handler")?;
    let _ = rx.recv();
    drop(lab);
    let _ = std::fs::remove_file(STATE_FILE);
    println!("lab removed");
    Ok(())
}

fn down() -> anyhow::Result<()> {
    let Some(file) = read_state()? else {
        println!("no lab is up");
        return Ok(());
    };
    if alive(file.pid) {
        nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(i32::try_from(file.pid)?),
            nix::sys::signal::Signal::SIGTERM,
        )
        .context("signalling the lab process")?;
        for _ in 0..100 {
            if !alive(file.pid) {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(100));
        }
    }
    // The holder removes its namespaces; if it died without doing so, remove them here.
    let listed = dataplane_testkit::netns::list_netns();
    for ns in file.namespaces.iter().filter(|n| listed.contains(n)) {
        let status = std::process::Command::new("ip")
            .args(["netns", "del", ns])
            .status()?;
        if !status.success() {
            bail!("cannot delete namespace {ns}");
        }
    }
    let _ = std::fs::remove_file(STATE_FILE);
    println!("lab removed");
    Ok(())
}

fn status() -> anyhow::Result<()> {
    match read_state()? {
        Some(file) if alive(file.pid) => {
            println!("lab up (pid {}, prefix {})", file.pid, file.prefix);
            print_rows(&file);
        }
        Some(file) => println!(
            "stale lab file (pid {} is gone); `dpctl lab down` cleans up",
            file.pid
        ),
        None => println!("no lab is up"),
    }
    Ok(())
}

fn join(a: &[std::net::IpAddr]) -> String {
    a.iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join(", ")
}

fn print_rows(file: &LabFile) {
    let w = file.rows.iter().map(|r| r.0.len()).max().unwrap_or(0);
    let w2 = file.rows.iter().map(|r| r.1.len()).max().unwrap_or(0);
    for (what, ns, addrs) in &file.rows {
        println!("  {what:<w$}  {ns:<w2$}  {addrs}");
    }
}
