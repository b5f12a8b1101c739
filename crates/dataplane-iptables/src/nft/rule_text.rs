//! The pieces of rule text that NetworkPolicy ([`super::policy`]), the cluster tiers
//! ([`super::tiers`]) and host endpoint policy ([`super::host`]) share: directions and chain
//! names, port matches, and address ranges as the fewest prefixes. Below all three, so that
//! none of them imports another's helpers (`tests/module_graph.rs`).

use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use dataplane_core::policy_tables::PortSpec;
use dataplane_core::{IpFamily, ObjectName, Protocol};
use ipnetwork::IpNetwork;

use crate::plan::proto_name;

/// Longest chain name `nf_tables` takes (`NFT_CHAIN_MAXNAMELEN`, 256, less the NUL).
pub(super) const MAX_CHAIN_NAME: usize = 255;

/// A direction of an endpoint, as the dispatch maps and chains name it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Direction {
    /// Traffic to the endpoint: dispatched on the destination address.
    Ingress,
    /// Traffic from the endpoint: dispatched on the source address.
    Egress,
}

impl Direction {
    /// The dispatch map of this direction and `family`.
    pub fn map(self, family: IpFamily) -> &'static str {
        match (self, family) {
            (Direction::Ingress, IpFamily::V4) => "pol-ingress-v4",
            (Direction::Ingress, IpFamily::V6) => "pol-ingress-v6",
            (Direction::Egress, IpFamily::V4) => "pol-egress-v4",
            (Direction::Egress, IpFamily::V6) => "pol-egress-v6",
        }
    }

    /// The packet field that holds the peer: the client (source) on ingress, the server
    /// (destination) on egress.
    pub(super) fn peer_field(self) -> &'static str {
        match self {
            Direction::Ingress => "saddr",
            Direction::Egress => "daddr",
        }
    }

    pub(super) fn chain_prefix(self) -> &'static str {
        match self {
            Direction::Ingress => "pol-in-",
            Direction::Egress => "pol-out-",
        }
    }
}

/// The chain the ingress endpoint chains end in: it logs (`dp deny policy in`: the reader
/// reports the denial at the server's interface), counts and drops (written with the
/// services' base chains, which carry the log settings).
pub const DENY_POLICY_IN_CHAIN: &str = "deny-policy-in";

/// The chain the egress endpoint chains end in (`dp deny policy out`: at the client's).
pub const DENY_POLICY_OUT_CHAIN: &str = "deny-policy-out";

/// How names are hashed: [`sha256_name`] in production; tests swap in a weak hash to force
/// collisions (the seam of [`compile_with`]).
pub(crate) type Hasher = fn(&str) -> String;

/// 128 bits of SHA-256 over `text`, in hex: stable across runs and versions, and
/// tenant-controlled text (selectors, pod names) cannot be chosen to collide, as it could
/// with a short non-cryptographic hash (two peer sets sharing one name would merge their
/// members). kube-proxy names its per-service chains the same way: SHA-256 of the
/// service-port name, truncated (`servicePortChainName`, 16 base32 characters).
pub fn sha256_name(text: &str) -> String {
    use sha2::Digest as _;
    use std::fmt::Write as _;
    let digest = sha2::Sha256::digest(text.as_bytes());
    let mut out = String::with_capacity(32);
    for b in &digest[..16] {
        let _ = write!(out, "{b:02x}");
    }
    out
}

/// The chain of `endpoint`'s `direction`: `pol-in-<ns>/<pod>`; a name too long for
/// `nf_tables` (pod names may have 253 characters) keeps its start and ends in `_` and a
/// hash of the whole.
pub fn chain_name(direction: Direction, endpoint: &ObjectName) -> String {
    chain_name_with(direction, endpoint, sha256_name)
}

pub(super) fn chain_name_with(direction: Direction, endpoint: &ObjectName, hash: Hasher) -> String {
    let full = format!(
        "{}{}/{}",
        direction.chain_prefix(),
        endpoint.namespace,
        endpoint.name
    );
    if full.len() <= MAX_CHAIN_NAME {
        return full;
    }
    let hash = hash(&full);
    // Names are ASCII (namespaces and pod names are DNS labels/subdomains), which never hold
    // `_`: a cut name cannot be another pod's whole name, only another cut one (which
    // [`Names`] refuses). nft's unquoted names start with a letter and go on with letters,
    // digits, `/`, `\`, `_`, `.` and `-` only: `~` or `:` would be a syntax error that fails
    // every sync.
    let keep = MAX_CHAIN_NAME - hash.len() - 1;
    format!("{}_{hash}", &full[..keep])
}

/// The port ranges of each protocol in `specs`, merged (touching or overlapping ranges
/// joined): `nf_tables` interval sets refuse overlapping elements.
pub(super) fn merged_ports(specs: &BTreeSet<PortSpec>) -> BTreeMap<Protocol, Vec<(u16, u16)>> {
    let mut by_proto: BTreeMap<Protocol, Vec<(u16, u16)>> = BTreeMap::new();
    for (p, ports) in specs {
        if let Some(p) = p {
            by_proto.entry(*p).or_default().push(*ports);
        }
    }
    for ranges in by_proto.values_mut() {
        ranges.sort_unstable();
        let mut merged: Vec<(u16, u16)> = Vec::new();
        for (lo, hi) in ranges.drain(..) {
            match merged.last_mut() {
                Some(last) if u32::from(lo) <= u32::from(last.1) + 1 => last.1 = last.1.max(hi),
                _ => merged.push((lo, hi)),
            }
        }
        *ranges = merged;
    }
    by_proto
}

pub(super) fn port_text((lo, hi): (u16, u16)) -> String {
    if lo == hi {
        lo.to_string()
    } else {
        format!("{lo}-{hi}")
    }
}

/// The match of a set of port specs with a trailing space; empty when one of them allows
/// every protocol (a rule without ports).
pub(super) fn port_match(specs: &BTreeSet<PortSpec>) -> String {
    if specs.iter().any(|(p, _)| p.is_none()) {
        return String::new();
    }
    let merged = merged_ports(specs);
    let elements: Vec<(Protocol, (u16, u16))> = merged
        .iter()
        .flat_map(|(p, ranges)| ranges.iter().map(move |r| (*p, *r)))
        .collect();
    match elements.as_slice() {
        [(p, (0, 65535))] => format!("meta l4proto {} ", proto_name(*p)),
        [(p, r)] => format!(
            "meta l4proto {} th dport {} ",
            proto_name(*p),
            port_text(*r)
        ),
        _ => format!(
            "meta l4proto . th dport {{ {} }} ",
            elements
                .iter()
                .map(|(p, r)| format!("{} . {}", proto_name(*p), port_text(*r)))
                .collect::<Vec<_>>()
                .join(", ")
        ),
    }
}

pub(super) fn addr_value(a: IpAddr) -> u128 {
    match a {
        IpAddr::V4(a) => u128::from(u32::from(a)),
        IpAddr::V6(a) => u128::from(a),
    }
}

pub(super) fn max_value(bits: u32) -> u128 {
    host_mask(bits, 0)
}

/// The host bits of a `/prefix` in a `bits`-bit address.
pub(super) fn host_mask(bits: u32, prefix: u8) -> u128 {
    let host = bits - u32::from(prefix).min(bits);
    if host >= 128 {
        u128::MAX
    } else {
        (1u128 << host) - 1
    }
}

/// The fewest prefixes that cover `lo..=hi` exactly.
pub(super) fn range_prefixes(mut lo: u128, hi: u128, family: IpFamily) -> Vec<IpNetwork> {
    let bits: u32 = match family {
        IpFamily::V4 => 32,
        IpFamily::V6 => 128,
    };
    let mut out = Vec::new();
    loop {
        // The largest block aligned at `lo` that ends at or before `hi`.
        let mut host = if lo == 0 {
            bits
        } else {
            lo.trailing_zeros().min(bits)
        };
        while host > 0 && (lo | host_mask(bits, (bits - host) as u8)) > hi {
            host -= 1;
        }
        let prefix = (bits - host) as u8;
        let ip = match family {
            // `lo` is below 2^32 for IPv4.
            IpFamily::V4 => IpAddr::V4(Ipv4Addr::from(lo as u32)),
            IpFamily::V6 => IpAddr::V6(Ipv6Addr::from(lo)),
        };
        if let Ok(n) = IpNetwork::new(ip, prefix) {
            out.push(n);
        }
        let end = lo | host_mask(bits, prefix);
        match end.checked_add(1) {
            Some(next) if end < hi => lo = next,
            _ => break,
        }
    }
    out
}

/// `nets` of family `f` as disjoint, merged elements (`a/len` prefixes).
pub(super) fn disjoint(nets: &[IpNetwork], f: IpFamily) -> Vec<String> {
    let mut ranges: Vec<(u128, u128)> = nets
        .iter()
        .filter(|n| IpFamily::of(&n.ip()) == f)
        .map(|n| (addr_value(n.network()), addr_value(n.broadcast())))
        .collect();
    ranges.sort_unstable();
    let mut merged: Vec<(u128, u128)> = Vec::new();
    for (lo, hi) in ranges {
        match merged.last_mut() {
            Some(last) if last.1 == u128::MAX || lo <= last.1 + 1 => last.1 = last.1.max(hi),
            _ => merged.push((lo, hi)),
        }
    }
    merged
        .into_iter()
        .flat_map(|(lo, hi)| range_prefixes(lo, hi, f))
        .map(|n| {
            if u32::from(n.prefix()) == bits(f) {
                n.ip().to_string()
            } else {
                n.to_string()
            }
        })
        .collect()
}

fn bits(f: IpFamily) -> u32 {
    match f {
        IpFamily::V4 => 32,
        IpFamily::V6 => 128,
    }
}
