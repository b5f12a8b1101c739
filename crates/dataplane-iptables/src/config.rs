//! Configuration shared by both flavours.

use std::path::PathBuf;

/// Where and how a netfilter backend programs the kernel.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NetfilterConfig {
    /// Network namespace to program (a `/run/netns/NAME` path); `None` = the current one.
    pub netns: Option<PathBuf>,
    /// nftables: the name of our `inet` table. iptables: the prefix of our chains (keep it
    /// short: iptables chain names are limited to 28 characters).
    pub name: String,
    /// The `nft` binary.
    pub nft: PathBuf,
    /// The `iptables-restore` binary (iptables flavour, IPv4).
    pub iptables_restore: PathBuf,
    /// The `ip6tables-restore` binary (iptables flavour, IPv6).
    pub ip6tables_restore: PathBuf,
    /// The `iptables` binary (hook rules, reset).
    pub iptables: PathBuf,
    /// The `ip6tables` binary.
    pub ip6tables: PathBuf,
    /// The `ipset` binary (iptables flavour, network policy).
    pub ipset: PathBuf,
    /// iptables flavour: the most ipsets the network namespace may hold, ours and others'
    /// together (default 256: the kernel's `CONFIG_IP_SET_MAX`, the module parameter
    /// `ip_set max_sets`, which recent kernels grow past as sets are created and older ones
    /// may not). A state whose policy needs more is refused with `Error::CapacityExceeded`
    /// before anything is written.
    pub max_ipsets: usize,
    /// iptables flavour: the most members one ipset may hold (its `maxelem`).
    pub ipset_max_elements: u32,
}

impl NetfilterConfig {
    /// Defaults for an nftables backend: table `dataplane`.
    pub fn nftables(netns: Option<PathBuf>) -> Self {
        Self {
            netns,
            name: "dataplane".to_owned(),
            ..Self::base()
        }
    }

    /// Defaults for an iptables backend: chains prefixed `DP`.
    pub fn iptables(netns: Option<PathBuf>) -> Self {
        Self {
            netns,
            name: "DP".to_owned(),
            ..Self::base()
        }
    }

    fn base() -> Self {
        Self {
            netns: None,
            name: String::new(),
            nft: PathBuf::from("nft"),
            iptables_restore: PathBuf::from("iptables-restore"),
            ip6tables_restore: PathBuf::from("ip6tables-restore"),
            iptables: PathBuf::from("iptables"),
            ip6tables: PathBuf::from("ip6tables"),
            ipset: PathBuf::from("ipset"),
            max_ipsets: 256,
            ipset_max_elements: 65536,
        }
    }
}
