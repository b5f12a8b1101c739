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
        }
    }
}
