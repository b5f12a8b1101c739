//! Configuration shared by both flavours.

use std::path::PathBuf;

use crate::error::NetfilterError;

/// The highest [`NetfilterConfig::nflog_rate`]: iptables' `limit` match refuses a rate above
/// 10000 a second (`XT_LIMIT_SCALE`: "Rate too fast") and a burst above 10000.
pub const MAX_NFLOG_RATE: u32 = 10_000;

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
    /// iptables flavour: which kernel API the iptables tools program, `x_tables`
    /// (`iptables-legacy`) or `nf_tables` (`iptables-nft`). [`IptablesMode::Auto`] (the default)
    /// finds out which one the network namespace already uses, as kube-proxy's images do; see
    /// [`IptablesMode`]. It picks the tools named `iptables-legacy-restore` /
    /// `iptables-nft-restore` (and their `ip6tables`, `-save` and plain siblings) for the
    /// fields above left at their defaults; a path set explicitly is used as it is.
    pub iptables_mode: IptablesMode,
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
    /// nftables flavour: the most NetworkPolicy elements one endpoint direction may have
    /// (ipBlock prefixes x protocols x port ranges after the excepts are cut out, plus the
    /// port elements of pod and namespace peers; default 4096). Each is written into the
    /// endpoint's own chain, and the ipBlock expansion's work grows faster than its size: a
    /// state that needs more is refused with `Error::CapacityExceeded`, naming the endpoint,
    /// the direction and the field, before anything is written.
    pub max_policy_elements: usize,
    /// The NFLOG group the drop and reject rules log to (see `eventlog`): by default
    /// 2000 for nftables, 2001 for iptables, so both flavours can share a network namespace.
    /// One process at a time can read a group (the kernel binds it to one socket).
    pub nflog_group: u16,
    /// Packets a second each drop or reject rule logs at most (the burst too; default 20);
    /// 0 logs nothing (the drop counters stay). At most [`MAX_NFLOG_RATE`] (iptables'
    /// `--limit` and `--limit-burst` limits; both flavours share it): more is refused with
    /// [`NetfilterError::InvalidConfig`] before anything is written.
    pub nflog_rate: u32,
    /// nftables flavour: the services whose port needs nothing but a random pick among at
    /// most 32 backend slots (no affinity, no Maglev, no traffic-policy branches) get no
    /// chain of their own: their frontends lead to a chain shared by every port with as many
    /// slots (`pick-v4-<slots>`, `pick-clusterip-v4-<slots>`), which translates through the
    /// `service-marks-v4` and `group-backends-v4` maps. Changing it takes a full sync. Off
    /// by default (a chain per service port, whose counter and rules `nft list` shows per
    /// service). Turn it on for large clusters: the kernel walks every chain of the network
    /// namespace on every commit (`nf_tables_commit`), so with a chain per service one
    /// endpoint change costs ~40 ms at 100k services on a 2-core machine; with it the
    /// number of chains no longer grows with the services (`benches/scaling` measures
    /// both).
    pub shared_pick_chains: bool,
    /// iptables flavour: a pod that reaches itself through a service (hairpin) is
    /// masqueraded by one rule in `POSTROUTING` that matches an ipset of this node's
    /// backends (`<name>-hairpin-v4` / `-v6`, `hash:ip,port,ip`, kube-proxy's IPVS mode's
    /// `KUBE-LOOP-BACK`), so that a backend needs no chain of its own: the DNAT is written
    /// inline in the service's selection chain. On by default: every sync then needs the
    /// `ipset` tool. Off: the backends on this node keep a chain each that marks the hairpin
    /// (as before issue 24), and a state without policy needs no `ipset`. Both hairpin
    /// this node's backends only (`plan::hairpin_candidates`, as the nftables flavour).
    /// Changing it takes a full sync.
    pub hairpin_ipset: bool,
}

impl NetfilterConfig {
    /// Defaults for an nftables backend: table `dataplane`.
    pub fn nftables(netns: Option<PathBuf>) -> Self {
        Self {
            netns,
            name: "dataplane".to_owned(),
            nflog_group: crate::eventlog::NFLOG_GROUP_NFTABLES,
            ..Self::base()
        }
    }

    /// Defaults for an iptables backend: chains prefixed `DP`.
    pub fn iptables(netns: Option<PathBuf>) -> Self {
        Self {
            netns,
            name: "DP".to_owned(),
            nflog_group: crate::eventlog::NFLOG_GROUP_IPTABLES,
            ..Self::base()
        }
    }

    /// The same configuration with the table or chain prefix `name`.
    #[must_use]
    pub fn with_name(mut self, name: &str) -> Self {
        name.clone_into(&mut self.name);
        self
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
            iptables_mode: IptablesMode::Auto,
            max_ipsets: 256,
            ipset_max_elements: 65536,
            max_policy_elements: 4096,
            nflog_group: crate::eventlog::NFLOG_GROUP_NFTABLES,
            nflog_rate: crate::eventlog::DEFAULT_LOG_RATE,
            shared_pick_chains: false,
            hairpin_ipset: true,
        }
    }

    /// Checks the fields a backend cannot program as given (`nflog_rate`), before anything
    /// touches the kernel.
    ///
    /// # Errors
    /// [`NetfilterError::InvalidConfig`] naming the field.
    pub fn validate(&self, backend: &'static str) -> Result<(), NetfilterError> {
        if self.nflog_rate > MAX_NFLOG_RATE {
            return Err(NetfilterError::InvalidConfig {
                backend,
                field: "nflog_rate",
                detail: format!(
                    "is {}: at most {MAX_NFLOG_RATE} packets a second (iptables' limit match; \
                     0 turns logging off)",
                    self.nflog_rate
                ),
            });
        }
        Ok(())
    }

    /// How the drop rules log (group and rate).
    pub fn log_plan(&self) -> crate::eventlog::LogPlan {
        crate::eventlog::LogPlan {
            group: self.nflog_group,
            rate: self.nflog_rate,
        }
    }
}

/// Which kernel API the iptables flavour's tools program
/// ([`NetfilterConfig::iptables_mode`]).
///
/// Rules of the two must not be mixed on one host: both sets of hooks run, in an order
/// neither tool shows, and a rule inserted "first" with one runs after every rule of the
/// other (kubernetes-sigs/iptables-wrappers explains the hazard). So the default finds out
/// what the namespace already uses. Measured at 10k services x 10 endpoints through the
/// backend (the scaling bench's control section, 2026-12-07 19:34-19:42 UTC, load 2.4-8.6
/// on 2 cores; `benches/notes.md`, "iptables: EXT on to the ClusterIP chain"): `x_tables`
/// programs them from empty in 1.2-1.4 s and applies one endpoint change in ~0.6 s (every
/// commit replaces the whole table); `nf_tables` applies the change in ~0.22 s (a restore in
/// proportion to the change) and from empty takes 3.5-3.9 s in a fresh namespace and
/// 4.3-4.4 s over the backend's own node-only rules (20:00 UTC, load 1.7-3.0;
/// `iptables-nft-restore` 1.8.9 keeps the chains one commit names in a sorted list it walks
/// per rule, so a full sync commits the nat table in sections, and `DP-SERVICES`, when it
/// exists already, in one, its rules in descending order of their jump targets).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum IptablesMode {
    /// Detected in the backend's network namespace at its first use, in the order of
    /// kube-proxy's `iptables-wrapper` (kubernetes-sigs/iptables-wrappers): the flavour that
    /// holds our own chains (`<name>-SERVICES`, a restarted agent keeps its rules), else the
    /// one holding kubelet's `KUBE-IPTABLES-HINT` or `KUBE-KUBELET-CANARY` chain (`nf_tables`
    /// checked first), else the one with more rules, `nf_tables` on a tie (an empty host): it
    /// follows changes in proportion to them.
    #[default]
    Auto,
    /// `x_tables` (`iptables-legacy-restore`).
    Legacy,
    /// `nf_tables` (`iptables-nft-restore`).
    Nft,
}

impl IptablesMode {
    /// The tools' infix (`iptables-<infix>-restore`); `None` for `Auto`.
    pub fn infix(self) -> Option<&'static str> {
        match self {
            IptablesMode::Auto => None,
            IptablesMode::Legacy => Some("legacy"),
            IptablesMode::Nft => Some("nft"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_log_rate_past_the_limit_match_is_refused_by_name() {
        let mut c = NetfilterConfig::iptables(None);
        for ok in [0, 20, MAX_NFLOG_RATE] {
            c.nflog_rate = ok;
            assert!(c.validate("iptables").is_ok(), "{ok}");
        }
        c.nflog_rate = MAX_NFLOG_RATE + 1;
        let e = c.validate("iptables").unwrap_err();
        assert!(
            matches!(
                e,
                NetfilterError::InvalidConfig {
                    field: "nflog_rate",
                    ..
                }
            ),
            "{e}"
        );
        assert!(e.to_string().contains("nflog_rate"), "{e}");
    }
}
