//! Choosing and opening a dataplane: by name, or `auto` with the reason for the choice.

use std::fmt;
use std::path::PathBuf;
use std::str::FromStr;

use dataplane_core::{error_chain, BoxDataplane, Error};

/// A dataplane implementation this crate can open.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
#[non_exhaustive]
pub enum DataplaneKind {
    /// TC and XDP programs (feature `ebpf`): the kube-proxy replacement.
    Ebpf,
    /// One nftables table with verdict maps, like kube-proxy's nftables mode (feature `nft`).
    Nftables,
    /// iptables chains, like kube-proxy's iptables mode (feature `nft`).
    Iptables,
}

impl DataplaneKind {
    /// Every kind, in the order `auto` tries them.
    pub const ALL: [DataplaneKind; 3] = [
        DataplaneKind::Ebpf,
        DataplaneKind::Nftables,
        DataplaneKind::Iptables,
    ];

    /// The name [`Capabilities::dataplane`](dataplane_core::Capabilities::dataplane) reports.
    pub fn name(self) -> &'static str {
        match self {
            DataplaneKind::Ebpf => "ebpf",
            DataplaneKind::Nftables => "nftables",
            DataplaneKind::Iptables => "iptables",
        }
    }

    /// Whether this build has the kind (its cargo feature is on).
    pub fn compiled(self) -> bool {
        match self {
            DataplaneKind::Ebpf => cfg!(feature = "ebpf"),
            DataplaneKind::Nftables | DataplaneKind::Iptables => cfg!(feature = "nft"),
        }
    }

    /// Whether this machine can run the kind: `Err` says why not.
    pub fn usable(self) -> Result<(), String> {
        if !self.compiled() {
            let feature = if self == DataplaneKind::Ebpf {
                "ebpf"
            } else {
                "nft"
            };
            return Err(format!("not compiled in (enable the `{feature}` feature)"));
        }
        match self {
            #[cfg(feature = "ebpf")]
            DataplaneKind::Ebpf => dataplane_ebpf::is_supported().map_err(|e| e.to_string()),
            DataplaneKind::Nftables => runs("nft", "apt-get install nftables"),
            DataplaneKind::Iptables => runs("iptables-restore", "apt-get install iptables"),
            #[allow(unreachable_patterns)]
            _ => Err("not compiled in".to_owned()),
        }
    }
}

impl fmt::Display for DataplaneKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for DataplaneKind {
    type Err = UnknownKind;
    fn from_str(s: &str) -> Result<Self, UnknownKind> {
        match s {
            "ebpf" | "bpf" => Ok(DataplaneKind::Ebpf),
            "nftables" | "nft" => Ok(DataplaneKind::Nftables),
            "iptables" => Ok(DataplaneKind::Iptables),
            other => Err(UnknownKind(other.to_owned())),
        }
    }
}

/// A name that is no [`DataplaneKind`] (nor `auto`).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown dataplane {0:?}: expected auto, ebpf, nftables or iptables")]
pub struct UnknownKind(pub String);

/// What [`open`] opens: one kind, or the best this machine can run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Selection {
    /// eBPF when it can run here and opens, else nftables, else iptables.
    #[default]
    Auto,
    /// Exactly this kind, or an error saying why it cannot run here.
    Only(DataplaneKind),
}

impl FromStr for Selection {
    type Err = UnknownKind;
    fn from_str(s: &str) -> Result<Self, UnknownKind> {
        if s == "auto" {
            Ok(Selection::Auto)
        } else {
            s.parse().map(Selection::Only)
        }
    }
}

impl fmt::Display for Selection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Selection::Auto => f.write_str("auto"),
            Selection::Only(kind) => kind.fmt(f),
        }
    }
}

/// Where and how to open a dataplane. `Options::default()` programs the current network
/// namespace with the default names (bpffs directory `/sys/fs/bpf/dataplane`, nftables
/// table `dataplane`, iptables chains prefixed `DP`).
#[derive(Debug, Clone)]
pub struct Options {
    /// The network namespace to program (`/run/netns/NAME`); `None`: the caller's. Overrides
    /// the namespace in the per-kind configurations below.
    pub netns: Option<PathBuf>,
    /// The eBPF configuration (its `pin_dir` names the bpffs directory of this dataplane).
    #[cfg(feature = "ebpf")]
    pub ebpf: dataplane_ebpf::EbpfConfig,
    /// The nftables configuration.
    #[cfg(feature = "nft")]
    pub nftables: dataplane_iptables::NetfilterConfig,
    /// The iptables configuration.
    #[cfg(feature = "nft")]
    pub iptables: dataplane_iptables::NetfilterConfig,
}

#[allow(clippy::derivable_impls)] // not derivable with the `ebpf` feature (a pin directory)
impl Default for Options {
    fn default() -> Self {
        Self {
            netns: None,
            #[cfg(feature = "ebpf")]
            ebpf: dataplane_ebpf::EbpfConfig::new("/sys/fs/bpf/dataplane"),
            #[cfg(feature = "nft")]
            nftables: dataplane_iptables::NetfilterConfig::nftables(None),
            #[cfg(feature = "nft")]
            iptables: dataplane_iptables::NetfilterConfig::iptables(None),
        }
    }
}

impl Options {
    /// Defaults, programming the network namespace at `netns`.
    #[allow(clippy::needless_update)] // fields differ by feature
    pub fn in_netns(netns: impl Into<PathBuf>) -> Self {
        Self {
            netns: Some(netns.into()),
            ..Self::default()
        }
    }
}

/// An opened dataplane and why it was chosen.
pub struct Opened {
    /// The dataplane, ready for [`Dataplane::sync`](dataplane_core::Dataplane::sync).
    pub dataplane: BoxDataplane,
    /// Which kind it is.
    pub kind: DataplaneKind,
    /// Why this kind: asked for by name, or what `auto` found unusable before it.
    pub reason: String,
}

impl fmt::Debug for Opened {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Opened")
            .field("kind", &self.kind)
            .field("reason", &self.reason)
            .finish_non_exhaustive()
    }
}

/// Why [`open`] (or [`inspect`](crate::inspect)) opened nothing.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum OpenError {
    /// The kind asked for cannot run here.
    #[error("the {kind} dataplane cannot run here: {reason}")]
    Unusable {
        /// The kind asked for.
        kind: DataplaneKind,
        /// Why.
        reason: String,
    },
    /// `auto` found no kind that can run here (or that opened: each reason says which).
    #[error("no dataplane can run here: {}", .reasons.iter().map(|(k, r)| format!("{k}: {r}")).collect::<Vec<_>>().join("; "))]
    NoneUsable {
        /// Each kind tried and why it cannot run.
        reasons: Vec<(DataplaneKind, String)>,
    },
    /// [`inspect`](crate::inspect) found no dataplane's state: nothing is programmed where
    /// the options point (or the kind named has nothing there).
    #[error("nothing is programmed here: {}", .looked.iter().map(|(_, place)| place.as_str()).collect::<Vec<_>>().join(", "))]
    NothingProgrammed {
        /// Each kind looked for, and where, in words (`no pinned maps in
        /// /sys/fs/bpf/dataplane`, `no nftables table inet dataplane`, ...).
        looked: Vec<(DataplaneKind, String)>,
    },
    /// The kind asked for can run here, but creating it failed.
    #[error("opening the {kind} dataplane failed")]
    Failed {
        /// The kind.
        kind: DataplaneKind,
        /// The cause.
        #[source]
        source: Error,
    },
}

/// Opens the dataplane `selection` names, configured by `options`. Nothing is programmed
/// until the first [`sync`](dataplane_core::Dataplane::sync) or
/// [`apply`](dataplane_core::Dataplane::apply); an eBPF dataplane whose `pin_dir` holds
/// maps of an earlier process adopts them (connections keep flowing across a restart).
pub fn open(selection: Selection, options: &Options) -> Result<Opened, OpenError> {
    match selection {
        Selection::Only(kind) => {
            kind.usable()
                .map_err(|reason| OpenError::Unusable { kind, reason })?;
            let dataplane =
                create(kind, options).map_err(|source| OpenError::Failed { kind, source })?;
            Ok(Opened {
                dataplane,
                kind,
                reason: format!("{kind} was asked for"),
            })
        }
        Selection::Auto => {
            // The first kind that can run here *and* opens: a kernel that passes the cheap
            // checks may still refuse to load or attach the eBPF programs.
            let mut reasons = Vec::new();
            for kind in DataplaneKind::ALL {
                let opened = kind
                    .usable()
                    .and_then(|()| create(kind, options).map_err(|e| error_chain(&e)));
                match opened {
                    Ok(dataplane) => {
                        let reason = if reasons.is_empty() {
                            format!("auto: {kind} is the first choice and can run here")
                        } else {
                            let skipped: Vec<String> =
                                reasons.iter().map(|(k, r)| format!("{k}: {r}")).collect();
                            format!("auto: {kind}, because {}", skipped.join("; "))
                        };
                        return Ok(Opened {
                            dataplane,
                            kind,
                            reason,
                        });
                    }
                    Err(reason) => reasons.push((kind, reason)),
                }
            }
            Err(OpenError::NoneUsable { reasons })
        }
    }
}

#[allow(unused_variables, clippy::unnecessary_wraps)] // depends on the features
fn create(kind: DataplaneKind, options: &Options) -> Result<BoxDataplane, Error> {
    match kind {
        #[cfg(feature = "ebpf")]
        DataplaneKind::Ebpf => {
            let mut config = options.ebpf.clone();
            if options.netns.is_some() {
                config.netns.clone_from(&options.netns);
            }
            Ok(Box::new(dataplane_ebpf::EbpfDataplane::new(config)?))
        }
        #[cfg(feature = "nft")]
        DataplaneKind::Nftables => {
            let mut config = options.nftables.clone();
            if options.netns.is_some() {
                config.netns.clone_from(&options.netns);
            }
            Ok(Box::new(dataplane_iptables::NftablesDataplane::new(config)))
        }
        #[cfg(feature = "nft")]
        DataplaneKind::Iptables => {
            let mut config = options.iptables.clone();
            if options.netns.is_some() {
                config.netns.clone_from(&options.netns);
            }
            Ok(Box::new(dataplane_iptables::IptablesDataplane::new(config)))
        }
        #[allow(unreachable_patterns)]
        _ => unreachable!("usable() refuses kinds that are not compiled in"),
    }
}

/// Whether `program --version` runs.
#[allow(dead_code)]
fn runs(program: &str, install: &str) -> Result<(), String> {
    match std::process::Command::new(program)
        .arg("--version")
        .output()
    {
        Ok(o) if o.status.success() => Ok(()),
        Ok(o) => Err(format!("`{program} --version` failed: {}", o.status)),
        Err(e) => Err(format!("`{program}` cannot run ({e}): {install}")),
    }
}

/// The current `CLOCK_MONOTONIC` time: the `now` of
/// [`Dataplane::maintain`](dataplane_core::Dataplane::maintain).
pub fn monotonic_now() -> std::time::Duration {
    let ts = nix::time::clock_gettime(nix::time::ClockId::CLOCK_MONOTONIC)
        .expect("CLOCK_MONOTONIC always exists on Linux");
    std::time::Duration::new(
        u64::try_from(ts.tv_sec()).unwrap_or(0),
        u32::try_from(ts.tv_nsec()).unwrap_or(0),
    )
}
