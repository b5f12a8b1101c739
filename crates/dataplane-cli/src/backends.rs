//! Choosing and creating a backend for a lab node.

use std::path::PathBuf;

use anyhow::{bail, Context};
use dataplane_core::Dataplane;
use dataplane_ebpf::{EbpfConfig, EbpfDataplane};
use dataplane_iptables::{IptablesDataplane, NetfilterConfig, NftablesDataplane};
use dataplane_testkit::NetNs;

use crate::BackendChoice;

/// A concrete backend.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    /// eBPF.
    Ebpf,
    /// nftables.
    Nft,
    /// iptables.
    Iptables,
}

impl Backend {
    /// Display name.
    pub fn name(self) -> &'static str {
        match self {
            Backend::Ebpf => "ebpf",
            Backend::Nft => "nftables",
            Backend::Iptables => "iptables",
        }
    }
}

fn have(program: &str) -> bool {
    std::process::Command::new(program)
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success())
}

/// Resolves `auto` to the best backend this machine supports; checks an explicit choice.
pub fn pick(choice: BackendChoice) -> anyhow::Result<Backend> {
    let ebpf = || dataplane_ebpf::is_supported().map_err(anyhow::Error::from);
    match choice {
        BackendChoice::Ebpf => {
            ebpf().context("the eBPF backend is not usable here")?;
            Ok(Backend::Ebpf)
        }
        BackendChoice::Nft => {
            if !have("nft") {
                bail!("the nftables backend needs the `nft` binary (apt-get install nftables)");
            }
            Ok(Backend::Nft)
        }
        BackendChoice::Iptables => {
            if !have("iptables-restore") {
                bail!("the iptables backend needs `iptables-restore` (apt-get install iptables)");
            }
            Ok(Backend::Iptables)
        }
        BackendChoice::Auto => match ebpf() {
            Ok(()) => Ok(Backend::Ebpf),
            Err(e) => {
                eprintln!("eBPF backend not usable ({e:#}); trying nftables");
                if have("nft") {
                    Ok(Backend::Nft)
                } else {
                    pick(BackendChoice::Iptables)
                }
            }
        },
    }
}

/// Creates `backend` for the node in `netns` (the `index`-th node of a lab).
pub fn create(backend: Backend, netns: &NetNs, index: usize) -> anyhow::Result<Box<dyn Dataplane>> {
    let ns = Some(netns.path().to_path_buf());
    Ok(match backend {
        Backend::Ebpf => {
            let mut config = EbpfConfig::new(PathBuf::from(format!(
                "/sys/fs/bpf/dpctl-demo-{}-{index}",
                std::process::id()
            )));
            config.netns = ns;
            Box::new(EbpfDataplane::new(config)?)
        }
        Backend::Nft => Box::new(NftablesDataplane::new(NetfilterConfig::nftables(ns))),
        Backend::Iptables => Box::new(IptablesDataplane::new(NetfilterConfig::iptables(ns))),
    })
}
