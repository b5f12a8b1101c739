//! `dpctl`: validate and diff desired-state files, look at a live node's dataplane (status,
//! services, conntrack, flow events), run a demo lab, show the node agent at work.

mod agents;
mod demo;
#[cfg(test)]
mod fake;
mod files;
mod flowlog;
mod flows;
mod lab;
mod live;
mod manifests;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand, ValueEnum};

/// Exit code for bad input (unreadable, unparsable or invalid files).
const EXIT_BAD_INPUT: u8 = 2;

#[derive(Debug, Parser)]
#[command(
    name = "dpctl",
    version,
    about = "Kubernetes node dataplane: validate, diff, status, services, conntrack, flows, lab, demo"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Check a desired-state file (YAML or JSON); exit code 2 and a one-line error if invalid.
    Validate {
        /// The file.
        #[arg(short = 'f', long = "file")]
        file: PathBuf,
    },
    /// Show what changes between two desired-state files.
    Diff {
        /// The old file, then the new one: `-f OLD -f NEW`.
        #[arg(short = 'f', long = "file", num_args = 1, required = true)]
        files: Vec<PathBuf>,
        /// Print the change set as JSON.
        #[arg(long)]
        json: bool,
    },
    /// What the running dataplane programmed on this node: backend, attachments, counts, table
    /// fill levels, conntrack entries, drops by reason (read-only).
    #[command(after_help = live::READ_PRIVILEGES)]
    Status {
        #[command(flatten)]
        target: live::Target,
        /// Output format.
        #[arg(short = 'o', long, value_enum, default_value_t = live::Output::Table)]
        output: live::Output,
    },
    /// The programmed frontends and their backends, like `kubectl get` (read-only).
    #[command(after_help = live::READ_PRIVILEGES)]
    Services {
        #[command(flatten)]
        target: live::Target,
        /// Output format (`wide`: every backend).
        #[arg(short = 'o', long, value_enum, default_value_t = live::ServicesOutput::Table)]
        output: live::ServicesOutput,
    },
    /// The tracked service connections (read-only).
    #[command(after_help = live::READ_PRIVILEGES)]
    Conntrack {
        #[command(flatten)]
        target: live::Target,
        /// Only the connections of this service (namespace/name).
        #[arg(long, value_name = "NAMESPACE/NAME", value_parser = live::parse_object_name)]
        service: Option<dataplane::ObjectName>,
        /// Output format.
        #[arg(short = 'o', long, value_enum, default_value_t = live::Output::Table)]
        output: live::Output,
    },
    /// Flow events (drops with their reason, new connections, policy verdicts) as `hubble
    /// observe` shows them. Events exist only while a reader is open: without --follow, what
    /// is waiting now (eBPF: the ring buffer's unread events; netfilter: usually nothing).
    /// Each event goes to one reader: on eBPF, readers at the same time (the agent's
    /// --flow-log, another dpctl) split the ring buffer's events between them; on nftables
    /// and iptables the NFLOG group has one reader per node, and a second is refused.
    #[command(after_help = live::FLOWS_PRIVILEGES)]
    Flows {
        #[command(flatten)]
        target: live::Target,
        #[command(flatten)]
        args: flows::FlowsArgs,
    },
    /// Build, inspect or remove the demo lab (network namespaces only).
    Lab {
        #[command(subcommand)]
        action: lab::LabAction,
    },
    /// Build a lab, run a node agent per lab node over a directory of Kubernetes manifests,
    /// send traffic through each service type, edit the manifests (scale a backend away, add a
    /// NetworkPolicy), print what happened each time, tear down.
    Demo {
        /// Dataplane every agent runs; `auto` picks the best available and says why.
        #[arg(long = "dataplane", visible_alias = "backend", value_enum, default_value_t = Choice::Auto)]
        dataplane: Choice,
        /// The `dataplane-agent` binary (default: the one beside dpctl, as cargo builds both).
        #[arg(long)]
        agent: Option<PathBuf>,
    },
}

/// Which dataplane `demo` programs: the names `dataplane::Selection` parses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Choice {
    /// eBPF if this machine can run it, else nftables, else iptables.
    Auto,
    /// TC/XDP programs.
    Ebpf,
    /// nftables.
    #[value(name = "nftables", alias = "nft")]
    Nft,
    /// iptables-restore.
    Iptables,
}

impl Choice {
    /// The library's selection.
    pub fn selection(self) -> dataplane::Selection {
        use dataplane::{DataplaneKind, Selection};
        match self {
            Choice::Auto => Selection::Auto,
            Choice::Ebpf => Selection::Only(DataplaneKind::Ebpf),
            Choice::Nft => Selection::Only(DataplaneKind::Nftables),
            Choice::Iptables => Selection::Only(DataplaneKind::Iptables),
        }
    }
}

/// Opens the node's dataplane read-only and runs `f` on it, printing to stdout; a failure
/// for want of privileges says what `dpctl COMMAND` needs.
fn live_command(
    command: &str,
    target: &live::Target,
    f: impl FnOnce(&dyn dataplane::Inspect, &mut dyn std::io::Write) -> anyhow::Result<()>,
) -> Result<(), files::Failure> {
    let run = || {
        let inspect = target.open()?;
        let stdout = std::io::stdout();
        let mut out = stdout.lock();
        f(inspect.as_ref(), &mut out)
    };
    run().map_err(|e| files::Failure::Other(live::explain_privileges(command, target, e)))
}

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Validate { file } => files::validate(&file),
        Command::Diff { files, json } => files::diff(&files, json),
        Command::Lab { action } => lab::run(&action).map_err(files::Failure::Other),
        Command::Status { target, output } => {
            live_command("status", &target, |i, out| live::status(i, output, out))
        }
        Command::Services { target, output } => {
            live_command("services", &target, |i, out| live::services(i, output, out))
        }
        Command::Conntrack {
            target,
            service,
            output,
        } => live_command("conntrack", &target, |i, out| {
            live::conntrack(i, service.as_ref(), output, out)
        }),
        Command::Flows { target, args } => {
            live_command("flows", &target, |i, out| flows::run(i, &args, out))
        }
        Command::Demo { dataplane, agent } => {
            demo::run(dataplane.selection(), agent.as_deref()).map_err(files::Failure::Other)
        }
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(files::Failure::BadInput(msg)) => {
            eprintln!("error: {msg}");
            ExitCode::from(EXIT_BAD_INPUT)
        }
        Err(files::Failure::Other(e)) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
