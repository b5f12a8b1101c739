//! `dpctl`: validate and diff desired-state files, run a demo lab, show the node agent at work.

mod agents;
mod demo;
mod files;
mod lab;
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
    about = "Kubernetes node dataplane: validate, diff, lab, demo"
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
