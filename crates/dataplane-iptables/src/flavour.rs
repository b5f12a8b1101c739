//! The two netfilter flavours: what each can do, written down once for the trait's
//! `capabilities()` and for the support check that acts on it.

use std::collections::BTreeSet;

use dataplane_core::{Capabilities, Protocol};

/// A netfilter flavour.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Flavour {
    /// One `inet` table programmed with `nft`.
    Nftables,
    /// `DP-` chains programmed with `iptables-restore`.
    Iptables,
}

impl Flavour {
    /// The backend's name in errors, reports and logs.
    pub(crate) const fn name(self) -> &'static str {
        match self {
            Flavour::Nftables => "nftables",
            Flavour::Iptables => "iptables",
        }
    }

    /// What the flavour programs. Maglev needs a hash over the 5-tuple into a fixed table,
    /// which only nftables (`jhash`) has; neither has DSR or XDP. Both enforce network policy
    /// (`nft/policy.rs`: sets and verdict maps; `iptables/policy.rs`: chains over ipsets).
    pub(crate) fn capabilities(self) -> Capabilities {
        Capabilities {
            dataplane: self.name().to_owned(),
            protocols: BTreeSet::from(Protocol::ALL),
            ipv6: true,
            maglev: self == Flavour::Nftables,
            session_affinity: true,
            dsr: false,
            xdp: false,
            masquerade: true,
            network_policy: true,
            weights: true,
            max_services: 0,
            max_backends: 0,
            // `nft/tiers.rs` and `nft/host.rs`; `iptables/tiers.rs` and `iptables/host.rs`.
            cluster_policy: true,
            host_policy: true,
            // `crate::l2`: a local route (IPv4) or a proxy entry (IPv6) on the uplink.
            l2_announcements: true,
        }
    }
}
