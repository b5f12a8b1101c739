//! Looking at a live node: [`inspect`] opens a read-only view ([`Inspect`]) of what a running
//! dataplane (the node agent, another embedder) left in the kernel, for `dpctl status` beside
//! it.
//!
//! `auto` picks the kind whose state exists, in [`DataplaneKind::ALL`]'s order: pinned maps in
//! the eBPF pin directory (bpffs is global: the directory is found whatever the network
//! namespace), else the nftables table, else the iptables chains (both per network namespace,
//! so looked for in [`Options::netns`]). Looking costs one `nft list table` and one `iptables
//! -S` per family at most; nothing is written.

use std::path::Path;
use std::process::{Command, Stdio};

#[cfg(doc)]
use dataplane_core::Dataplane;
use dataplane_core::{Error, Inspect};

use crate::open::{DataplaneKind, OpenError, Options, Selection};

/// Opens a read-only view of the dataplane `selection` names, as `options` name its state
/// (the eBPF pin directory, the nftables table, the iptables chain prefix, the network
/// namespace). Unlike [`open`](crate::open) it loads, attaches and writes nothing: it is safe
/// beside the process that programmed the node.
///
/// `auto` opens the first kind whose state exists (see the module notes); a kind named
/// explicitly must have its state there too. When none has, the error is
/// [`OpenError::NothingProgrammed`], naming every place looked at.
pub fn inspect(selection: Selection, options: &Options) -> Result<Box<dyn Inspect>, OpenError> {
    let kinds: Vec<DataplaneKind> = match selection {
        Selection::Only(kind) => {
            if !kind.compiled() {
                let reason = kind.usable().err().unwrap_or_default();
                return Err(OpenError::Unusable { kind, reason });
            }
            vec![kind]
        }
        Selection::Auto => DataplaneKind::ALL
            .into_iter()
            .filter(|k| k.compiled())
            .collect(),
    };
    let mut looked = Vec::new();
    for kind in kinds {
        let place = place(kind, options);
        match programmed(kind, options) {
            Ok(true) => {
                return open_live(kind, options)
                    .map_err(|source| OpenError::Failed { kind, source })
            }
            Ok(false) => looked.push((kind, format!("no {place}"))),
            Err(why) => looked.push((
                kind,
                format!("cannot tell whether there is {place} ({why})"),
            )),
        }
    }
    Err(OpenError::NothingProgrammed { looked })
}

/// Where `kind` keeps its state, in words (`pinned maps in /sys/fs/bpf/dataplane`).
fn place(kind: DataplaneKind, options: &Options) -> String {
    let netns = options
        .netns
        .as_deref()
        .map(|n| format!(" in network namespace {}", n.display()))
        .unwrap_or_default();
    match kind {
        #[cfg(feature = "ebpf")]
        DataplaneKind::Ebpf => format!("pinned maps in {}", options.ebpf.pin_dir.display()),
        #[cfg(feature = "nft")]
        DataplaneKind::Nftables => format!("nftables table inet {}{netns}", options.nftables.name),
        #[cfg(feature = "nft")]
        DataplaneKind::Iptables => format!("iptables chains {}-*{netns}", options.iptables.name),
        #[allow(unreachable_patterns)]
        _ => format!("{kind} state{netns}"),
    }
}

/// Whether `kind`'s state exists; `Err` says why that cannot be told.
#[allow(unused_variables, clippy::unnecessary_wraps)] // depends on the features
fn programmed(kind: DataplaneKind, options: &Options) -> Result<bool, String> {
    match kind {
        #[cfg(feature = "ebpf")]
        DataplaneKind::Ebpf => pinned_maps(&options.ebpf.pin_dir),
        #[cfg(feature = "nft")]
        DataplaneKind::Nftables => {
            let nft = &options.nftables;
            let netns = options.netns.as_deref().or(nft.netns.as_deref());
            exists(
                netns,
                &nft.nft,
                &["list", "table", "inet", &nft.name],
                "No such file or directory",
            )
        }
        #[cfg(feature = "nft")]
        DataplaneKind::Iptables => {
            let ipt = &options.iptables;
            let netns = options.netns.as_deref().or(ipt.netns.as_deref());
            // Every state has the nat table's service dispatch chain, in the family of each
            // of its addresses: either family's is enough. Read with `iptables-save` (the
            // backend's own reader; iptables-restore and -save are one binary): `iptables -S
            // CHAIN` of iptables-nft 1.8 answers a missing chain with "incompatible".
            let declared = format!(":{}-SERVICES ", ipt.name);
            let mut reasons = Vec::new();
            // The flavour the backend writes (legacy or nft), resolved in that namespace.
            let mut config = ipt.clone();
            config.netns = netns.map(Path::to_path_buf);
            for save in dataplane_iptables::IptablesDataplane::save_tools(&config) {
                match output(netns, &save, &["-t", "nat"]) {
                    Ok(text) if text.lines().any(|l| l.starts_with(&declared)) => return Ok(true),
                    Ok(_) => {}
                    Err(why) => reasons.push(why),
                }
            }
            // One family's tool may be missing (an IPv4-only node): only when neither could
            // answer is there no telling.
            if reasons.len() == 2 {
                Err(reasons.join("; "))
            } else {
                Ok(false)
            }
        }
        #[allow(unreachable_patterns)]
        _ => Ok(false),
    }
}

/// Whether `dir` holds a pinned map of ours (`dp_*`, the maps of `bpf/lib/maps.h`).
#[allow(dead_code)] // without the `ebpf` feature
fn pinned_maps(dir: &Path) -> Result<bool, String> {
    let entries = match std::fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(false),
        Err(e) => return Err(format!("cannot read {}: {e}", dir.display())),
    };
    for entry in entries {
        let entry = entry.map_err(|e| format!("cannot read {}: {e}", dir.display()))?;
        let is_file = entry.file_type().is_ok_and(|t| !t.is_dir());
        if is_file && entry.file_name().to_string_lossy().starts_with("dp_") {
            return Ok(true);
        }
    }
    Ok(false)
}

/// Runs `program args` (in `netns`): exit 0 is "exists"; a failure whose message contains
/// `absent` is "does not exist"; anything else cannot tell (the tool is missing, no
/// permission).
#[allow(dead_code)] // without the `nft` feature
fn exists(
    netns: Option<&Path>,
    program: &Path,
    args: &[&str],
    absent: &str,
) -> Result<bool, String> {
    match run(netns, program, args)? {
        Ok(_) => Ok(true),
        Err(stderr) if stderr.contains(absent) => Ok(false),
        Err(stderr) => Err(stderr),
    }
}

/// Runs `program args` (in `netns`) and returns its output; `Err` when it fails.
#[allow(dead_code)] // without the `nft` feature
fn output(netns: Option<&Path>, program: &Path, args: &[&str]) -> Result<String, String> {
    run(netns, program, args)?
}

/// Runs `program args` (in `netns`): `Ok(Ok(stdout))` when it succeeds, `Ok(Err(message))`
/// when it fails (the message names the command and has its first error line), `Err` when it
/// cannot run.
#[allow(dead_code)] // without the `nft` feature
fn run(
    netns: Option<&Path>,
    program: &Path,
    args: &[&str],
) -> Result<Result<String, String>, String> {
    let mut cmd = match netns {
        // nsenter, not `ip netns exec`: the latter remounts /sys (the eBPF side's bpffs).
        Some(ns) => {
            let mut c = Command::new("nsenter");
            c.arg(format!("--net={}", ns.display()))
                .arg("--")
                .arg(program);
            c
        }
        None => Command::new(program),
    };
    let shown = || {
        let mut s = program.display().to_string();
        for a in args {
            s.push(' ');
            s.push_str(a);
        }
        s
    };
    let out = cmd
        .args(args)
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("`{}` cannot run: {e}", shown()))?;
    if out.status.success() {
        return Ok(Ok(String::from_utf8_lossy(&out.stdout).into_owned()));
    }
    let stderr = String::from_utf8_lossy(&out.stderr);
    // 126/127: nsenter could not execute the tool (its "No such file or directory" must not
    // read as the tool's "no such table").
    if matches!(out.status.code(), Some(126 | 127)) {
        return Err(format!("`{}` cannot run: {}", shown(), stderr.trim()));
    }
    let first = stderr.lines().find(|l| !l.trim().is_empty()).unwrap_or("");
    Ok(Err(format!(
        "`{}` failed ({}): {}",
        shown(),
        out.status,
        first.trim()
    )))
}

/// Opens `kind`'s inspector over the state [`programmed`] found.
#[allow(unused_variables, clippy::unnecessary_wraps)] // depends on the features
fn open_live(kind: DataplaneKind, options: &Options) -> Result<Box<dyn Inspect>, Error> {
    match kind {
        #[cfg(feature = "ebpf")]
        DataplaneKind::Ebpf => {
            // The maps are found by their bpffs path, whatever the namespace; the namespace
            // is where the inspector resolves the attachments' interfaces.
            let netns = options.netns.as_deref().or(options.ebpf.netns.as_deref());
            Ok(Box::new(dataplane_ebpf::LiveEbpf::open(
                &options.ebpf.pin_dir,
                netns,
            )?))
        }
        #[cfg(feature = "nft")]
        DataplaneKind::Nftables | DataplaneKind::Iptables => {
            let mut config = if kind == DataplaneKind::Nftables {
                options.nftables.clone()
            } else {
                options.iptables.clone()
            };
            if options.netns.is_some() {
                config.netns.clone_from(&options.netns);
            }
            // One inspector for both flavours: it takes the table of that name, else the
            // chains of that prefix. A name that is the other flavour's here is not this kind.
            let live = dataplane_iptables::LiveNetfilter::open(&config)?;
            if live.dataplane() != kind.name() {
                return Err(Error::Kernel {
                    dataplane: kind.name().to_owned(),
                    operation: format!("inspecting {}", config.name),
                    source: format!(
                        "{} is programmed by the {} dataplane, not {kind}",
                        config.name,
                        live.dataplane()
                    )
                    .into(),
                });
            }
            Ok(Box::new(live))
        }
        #[allow(unreachable_patterns)]
        _ => unreachable!("inspect() refuses kinds that are not compiled in"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_empty_or_missing_pin_dir_has_no_pinned_maps() {
        let dir = std::env::temp_dir().join(format!("dataplane-inspect-{}", std::process::id()));
        assert_eq!(pinned_maps(&dir), Ok(false), "missing");
        std::fs::create_dir_all(dir.join("links")).unwrap();
        std::fs::write(dir.join("README"), "").unwrap();
        assert_eq!(pinned_maps(&dir), Ok(false), "no dp_* file");
        std::fs::write(dir.join("dp_svc"), "").unwrap();
        assert_eq!(pinned_maps(&dir), Ok(true));
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[cfg(feature = "ebpf")]
    #[test]
    fn naming_a_kind_without_its_state_says_where_it_looked() {
        let mut options = Options::default();
        options.ebpf.pin_dir = std::path::PathBuf::from("/nonexistent/dataplane-inspect-test");
        let Err(err) = inspect(Selection::Only(DataplaneKind::Ebpf), &options) else {
            panic!("nothing is pinned there");
        };
        assert_eq!(
            err.to_string(),
            "nothing is programmed here: no pinned maps in /nonexistent/dataplane-inspect-test"
        );
        assert!(matches!(err, OpenError::NothingProgrammed { looked } if looked.len() == 1));
    }

    #[test]
    fn a_tool_that_cannot_run_is_no_answer() {
        let missing = Path::new("/nonexistent/nft");
        let err = exists(None, missing, &["list"], "No such file or directory").unwrap_err();
        assert!(err.contains("cannot run"), "{err}");
        // `false` fails without the "absent" words: no telling either.
        let err = exists(None, Path::new("false"), &[], "No such").unwrap_err();
        assert!(err.contains("failed"), "{err}");
        assert_eq!(exists(None, Path::new("true"), &[], "No such"), Ok(true));
        assert_eq!(
            exists(
                None,
                Path::new("sh"),
                &["-c", "echo 'No such table' >&2; exit 1"],
                "No such"
            ),
            Ok(false)
        );
    }
}
