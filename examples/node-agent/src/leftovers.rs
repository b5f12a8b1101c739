//! `--backend auto` and the state an earlier agent left: eBPF objects pinned under
//! `--bpf-pin-dir`, our nftables table, our iptables chains. `auto` takes the first kind that
//! opens here; if an earlier agent ran another kind (this kernel then refused its eBPF
//! programs, say) and its datapath is still in place, a second kind would run beside stale
//! programs or rules that keep translating packets. So with `auto`, the kind whose state is
//! left must be the one that opens, or the agent refuses to start and says how to clean up.

use std::path::Path;
use std::process::Command;

use anyhow::bail;
use dataplane::{DataplaneKind, OpenError, Opened, Options, Selection};

use crate::cli::Args;

/// State of one kind of dataplane found in place.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Leftover {
    /// The kind that installed it.
    pub kind: DataplaneKind,
    /// What it is, for the error message.
    pub what: String,
}

/// Pinned objects under `pin_dir` (the eBPF dataplane pins its maps and links there).
pub fn ebpf_leftover(pin_dir: &Path) -> Option<Leftover> {
    let mut entries = std::fs::read_dir(pin_dir).ok()?;
    entries.next()?.ok()?;
    Some(Leftover {
        kind: DataplaneKind::Ebpf,
        what: format!("pinned eBPF objects under {}", pin_dir.display()),
    })
}

/// The nftables table `inet <table>` (read with `nft list table`; no `nft`: none).
pub fn nftables_leftover(table: &str) -> Option<Leftover> {
    let output = Command::new("nft")
        .args(["list", "table", "inet", table])
        .output()
        .ok()?;
    output.status.success().then(|| Leftover {
        kind: DataplaneKind::Nftables,
        what: format!("the nftables table inet {table}"),
    })
}

/// iptables chains named `<prefix>-…` in the nat or filter table (read with
/// `iptables-save`; no `iptables-save`: none).
pub fn iptables_leftover(prefix: &str) -> Option<Leftover> {
    let declaration = format!(":{prefix}-");
    let found = ["nat", "filter"].into_iter().any(|table| {
        Command::new("iptables-save")
            .args(["-t", table])
            .output()
            .ok()
            .filter(|o| o.status.success())
            .is_some_and(|o| {
                String::from_utf8_lossy(&o.stdout)
                    .lines()
                    .any(|l| l.starts_with(&declaration))
            })
    });
    found.then(|| Leftover {
        kind: DataplaneKind::Iptables,
        what: format!("iptables chains {prefix}-*"),
    })
}

/// Everything the agent's names find in place (`--bpf-pin-dir`, `--nft-table`,
/// `--iptables-prefix`), of the kinds this build has.
pub fn leftovers(args: &Args) -> Vec<Leftover> {
    let mut found = Vec::new();
    if DataplaneKind::Ebpf.compiled() {
        found.extend(ebpf_leftover(&args.bpf_pin_dir));
    }
    if DataplaneKind::Nftables.compiled() {
        found.extend(nftables_leftover(&args.nft_table));
        found.extend(iptables_leftover(&args.iptables_prefix));
    }
    found
}

/// Opens `selection`. With `auto` and `leftovers` of one kind, that kind must open (it adopts
/// its state); with leftovers of several kinds, or of a kind that does not open, the error
/// names them and says to run `--cleanup`. `open` is `dataplane::open` (tests pass another).
pub fn open_checked(
    selection: Selection,
    leftovers: &[Leftover],
    options: &Options,
    open: impl Fn(Selection, &Options) -> Result<Opened, OpenError>,
) -> anyhow::Result<Opened> {
    const CLEANUP: &str = "remove it with `dataplane-agent --cleanup` (with the same \
         --bpf-pin-dir, --nft-table and --iptables-prefix), or choose --backend";
    if selection != Selection::Auto || leftovers.is_empty() {
        return Ok(open(selection, options)?);
    }
    let mut kinds: Vec<DataplaneKind> = leftovers.iter().map(|l| l.kind).collect();
    kinds.sort();
    kinds.dedup();
    let what = || {
        leftovers
            .iter()
            .map(|l| format!("{} (left by the {} dataplane)", l.what, l.kind))
            .collect::<Vec<_>>()
            .join(", ")
    };
    if let [kind] = kinds[..] {
        match open(Selection::Only(kind), options) {
            Ok(mut opened) => {
                opened.reason = format!("auto: {kind}, whose state is in place: {}", what());
                Ok(opened)
            }
            Err(e) => bail!(
                "--backend auto: {} is in place, but the {kind} dataplane does not open here \
                 ({}); another kind would run beside it: {CLEANUP}",
                what(),
                crate::error_chain(&e)
            ),
        }
    } else {
        bail!(
            "--backend auto: the state of several dataplanes is in place: {}; {CLEANUP}",
            what()
        )
    }
}
