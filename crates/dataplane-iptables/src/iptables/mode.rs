//! Which iptables tools the backend runs: `x_tables` (`iptables-legacy`) or `nf_tables`
//! (`iptables-nft`), configured or found out in the network namespace
//! ([`IptablesMode::Auto`]).
//!
//! The detection follows kube-proxy's image wrapper (kubernetes-sigs/iptables-wrappers,
//! `iptables-wrapper-installer.sh`), with our own chains first: rules of the two flavours
//! must not be mixed on one host (both sets of hooks run, and "first" in one is after all of
//! the other). Every probe is cheap on a host with many rules, and none creates a table:
//! `nf_tables` is asked for one chain by name (`-S CHAIN`, which lists that chain alone and
//! fails without creating anything); `x_tables` only through `iptables-legacy-save` of the
//! tables `/proc/net/ip_tables_names` lists (naming a table to `iptables-legacy` would load
//! it, as the wrapper notes).

use std::path::{Path, PathBuf};

use crate::config::{IptablesMode, NetfilterConfig};
use crate::exec;

/// Chains kubelet creates in the mangle table of the flavour it uses (`KUBE-IPTABLES-HINT`
/// since Kubernetes 1.24, `KUBE-KUBELET-CANARY` since 1.17).
const KUBELET_HINTS: [&str; 2] = ["KUBE-IPTABLES-HINT", "KUBE-KUBELET-CANARY"];

/// The tools of one resolved configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Tools {
    /// Legacy or Nft; `Auto` only when the configuration names every tool itself.
    pub mode: IptablesMode,
    /// `iptables-restore`, `ip6tables-restore`.
    pub restore: [PathBuf; 2],
    /// `iptables`, `ip6tables`.
    pub plain: [PathBuf; 2],
    /// `iptables-save`, `ip6tables-save`.
    pub save: [PathBuf; 2],
}

/// The tools of `config` in `mode` (`Legacy` or `Nft`): the fields left at their defaults
/// get the flavour's names, explicit paths stay.
pub(crate) fn tools(config: &NetfilterConfig, mode: IptablesMode) -> Tools {
    let pick = |field: &Path, default: &str, family: &str, suffix: &str| -> PathBuf {
        match mode.infix() {
            Some(infix) if field == Path::new(default) => {
                PathBuf::from(format!("{family}-{infix}{suffix}"))
            }
            _ => field.to_owned(),
        }
    };
    let restore = [
        pick(
            &config.iptables_restore,
            "iptables-restore",
            "iptables",
            "-restore",
        ),
        pick(
            &config.ip6tables_restore,
            "ip6tables-restore",
            "ip6tables",
            "-restore",
        ),
    ];
    // iptables-save is the restore tool's sibling (one multi-call binary).
    let save = restore
        .clone()
        .map(|r| PathBuf::from(r.to_string_lossy().replace("-restore", "-save")));
    Tools {
        mode,
        plain: [
            pick(&config.iptables, "iptables", "iptables", ""),
            pick(&config.ip6tables, "ip6tables", "ip6tables", ""),
        ],
        restore,
        save,
    }
}

/// The configured mode, or for `Auto` the one the namespace uses (see the module docs).
pub(crate) fn resolve(backend: &'static str, config: &NetfilterConfig) -> Tools {
    let mode = match config.iptables_mode {
        IptablesMode::Auto => detect(backend, config),
        m => m,
    };
    tools(config, mode)
}

/// `Legacy` or `Nft`, whichever the namespace uses; `nf_tables` when it cannot tell.
fn detect(backend: &'static str, config: &NetfilterConfig) -> IptablesMode {
    let netns = config.netns.as_deref();
    let nft_has = |table: &str, chain: &str| {
        exec::run(
            backend,
            netns,
            Path::new("iptables-nft"),
            &["-t", table, "-S", chain],
            None,
            "detect the iptables mode",
        )
        .is_ok()
    };
    let ours = format!("{}-SERVICES", config.name);
    if nft_has("nat", &ours) {
        return IptablesMode::Nft;
    }
    let legacy = legacy_rules(backend, netns, &config.name);
    if legacy.ours {
        return IptablesMode::Legacy;
    }
    if KUBELET_HINTS.iter().any(|c| nft_has("mangle", c)) {
        return IptablesMode::Nft;
    }
    if legacy.hint {
        return IptablesMode::Legacy;
    }
    if legacy.rules == 0 {
        return IptablesMode::Nft;
    }
    // Only where `x_tables` holds rules, none of them ours or kubelet's: the flavour with
    // more rules (the `nf_tables` count reads its whole ruleset, which only a host with rules
    // in both pays for).
    let mut nft_rules = 0usize;
    for tool in ["iptables-nft-save", "ip6tables-nft-save"] {
        let _ = exec::run_lines(
            backend,
            netns,
            Path::new(tool),
            &[],
            &mut |line| nft_rules += usize::from(line.starts_with("-A ")),
            "detect the iptables mode",
        );
    }
    if legacy.rules > nft_rules {
        IptablesMode::Legacy
    } else {
        IptablesMode::Nft
    }
}

/// What `x_tables` holds in the namespace.
#[derive(Debug, Default)]
struct LegacyRules {
    /// Our `<prefix>-SERVICES` chain.
    ours: bool,
    /// One of kubelet's hint chains.
    hint: bool,
    /// Rules, every table and family.
    rules: usize,
}

/// Reads `x_tables`' rules without loading a table: only when `/proc/net/ip_tables_names`
/// (or the IPv6 one) lists one.
fn legacy_rules(backend: &'static str, netns: Option<&Path>, prefix: &str) -> LegacyRules {
    let mut found = LegacyRules::default();
    let ours = format!(":{prefix}-SERVICES ");
    for (names, tool) in [
        ("/proc/net/ip_tables_names", "iptables-legacy-save"),
        ("/proc/net/ip6_tables_names", "ip6tables-legacy-save"),
    ] {
        let loaded = exec::read_proc(backend, netns, names).unwrap_or_default();
        if loaded.trim().is_empty() {
            continue;
        }
        let _ = exec::run_lines(
            backend,
            netns,
            Path::new(tool),
            &[],
            &mut |line| {
                if line.starts_with("-A ") {
                    found.rules += 1;
                } else if line.starts_with(&ours) {
                    found.ours = true;
                } else if line
                    .strip_prefix(':')
                    .and_then(|l| l.split_whitespace().next())
                    .is_some_and(|c| KUBELET_HINTS.contains(&c))
                {
                    found.hint = true;
                }
            },
            "detect the iptables mode",
        );
    }
    found
}
