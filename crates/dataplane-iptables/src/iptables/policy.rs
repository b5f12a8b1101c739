//! NetworkPolicy in the iptables flavour: core's compiled tables
//! ([`dataplane_core::policy_tables`]) → filter-table chains over ipsets. Pure functions.
//!
//! ```text
//! filter INPUT/FORWARD/OUTPUT ─▶ DP-FILTER (service drops/rejects) ─▶ DP-POLICY
//!   DP-POLICY: ct state ESTABLISHED,RELATED     ─▶ RETURN        (checked on the first packet only)
//!              IPv6 neighbour discovery        ─▶ RETURN        (ICMPv6 types 133-136)
//!              -s|-d <node address>            ─▶ RETURN        (node ↔ its pods: kubelet probes)
//!              -s <pod ip> -d <same ip>        ─▶ RETURN        (a pod reaching itself)
//!              -s <egress-isolated pod ip>     ─▶ DP-PE-<hash>  (the client's egress)
//!              -d <ingress-isolated pod ip>    ─▶ DP-PI-<hash>  (the server's ingress)
//!   DP-PE/PI-<hash>: one rule per allow entry ─▶ RETURN
//!              -m set --match-set dp-v4-<hash of the peer set> dst|src [-p tcp -m tcp --dport 80:81]
//!              (ipBlocks, longest prefix first) -d|-s <prefix> [ports] ─▶ RETURN, excepts ─▶ DROP
//!              last: counted DROP
//! ```
//!
//! The filter table sees a packet after the nat table's DNAT and before its SNAT: a service
//! connection is checked against the backend chosen (its target port) and the client's own
//! address, as the reference model says. Egress is checked on the client's node, ingress on
//! the server's; a connection between two pods of this node passes both (the egress chain
//! returns, the ingress dispatch follows).
//!
//! Followed: kube-router's network policy controller (`pkg/controllers/netpol/pod.go`: a
//! firewall chain per pod jumped to by `-d <pod ip>` for ingress and by `-s <pod ip>` for
//! egress — from INPUT too, so that a pod's egress to the node's own addresses is checked —,
//! `RELATED,ESTABLISHED` first, traffic from the node itself let through; ipsets of the
//! selected peers) and Calico's iptables dataplane (ipsets named by a hash of the selector,
//! so that every policy with the same peer shares one set, `cali40s:`/`cali60s:` per
//! family; here `dp-v4-`/`dp-v6-` under the configured prefix). Departures, and why:
//!
//! - Denied traffic is dropped and counted (kube-router logs and rejects it): the project's
//!   decision for every backend.
//! - Allowed traffic `RETURN`s instead of being `ACCEPT`ed (kube-router marks and accepts
//!   it, Calico accepts it): our chains only ever drop, so the host's own filter rules after
//!   ours keep their say, as with the rest of this backend (which never accepts a packet on
//!   the host's behalf). For the same reason established connections `RETURN` at the top of
//!   `DP-POLICY`.
//! - One chain per *table content* rather than per pod: chains are named by a hash of their
//!   rules, so the pods a policy selects alike share one chain (core merges every selecting
//!   policy's rules into one table per endpoint and direction).
//! - ipBlocks are rules, not `hash:net` sets: core gives the direction's blocks as one
//!   longest-prefix table ([`DirectionTable::block_table`]); its prefixes, longest first,
//!   become `RETURN`s for the ports they allow and a `DROP` for an `except` (which shadows
//!   the shorter `cidr` after it). That costs no ipset (they are limited, see
//!   [`NetfilterConfig::max_ipsets`](crate::NetfilterConfig::max_ipsets)) and an except
//!   needs no mark.
//! - Everything before the block rules `RETURN`s when it allows, so reaching a prefix's rules
//!   means no set or port rule allowed the packet: an `except` can drop at once.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;

use dataplane_core::policy_tables::{DirectionTable, Peer, PortSpec, SetId};
use dataplane_core::{CompiledPolicy, IpFamily, Node, ObjectName, PolicyType, Protocol};
use ipnetwork::IpNetwork;

use super::render::{hash_name, host, Chains};
use crate::plan::{proto_name, FamilySuffix as _};

/// The ipsets the policy chains of both families name: set name → what it holds.
pub type IpSets = BTreeMap<String, IpSetSpec>;

/// One ipset (`hash:ip`): the members of one peer set in one address family (read from the
/// compiled policy when written: see [`super::ipset::members`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IpSetSpec {
    /// The peer set it holds.
    pub id: SetId,
    /// `inet` or `inet6`.
    pub family: IpFamily,
}

/// The name of the top-level policy chain.
pub fn policy_chain(prefix: &str) -> String {
    format!("{prefix}-POLICY")
}

/// The prefix of our ipset names (`dp-` for the chain prefix `DP`): ipset names are global in
/// the network namespace, so they carry the configured prefix too.
pub fn set_prefix(prefix: &str) -> String {
    format!("{}-", prefix.to_ascii_lowercase())
}

/// Whether `name` is one of our ipsets (either family).
pub fn is_our_set(prefix: &str, name: &str) -> bool {
    let ours = set_prefix(prefix);
    name.strip_prefix(&ours)
        .is_some_and(|rest| rest.starts_with("v4-") || rest.starts_with("v6-"))
}

/// The ipset of peer set `id` in `family`: `dp-v4-<13 characters of hash>`, at most 22
/// characters (ipset names are limited to 31).
pub fn set_name(prefix: &str, family: IpFamily, id: &SetId) -> String {
    format!(
        "{}{}-{}",
        set_prefix(prefix),
        family.suffix(),
        hash_name(&id.0)
    )
}

/// The addresses of `ips` in `family`.
fn of_family(ips: &[IpAddr], family: IpFamily) -> impl Iterator<Item = &IpAddr> {
    ips.iter().filter(move |ip| IpFamily::of(ip) == family)
}

/// The ipsets the chains of both families name. A peer set gets a set in a family when an
/// isolated endpoint with an address of that family names it (its chain of that family
/// does), even while no member is of that family: a member change is then an element
/// change, never a rule change.
pub fn ipsets(compiled: &CompiledPolicy, prefix: &str) -> IpSets {
    let mut out = IpSets::new();
    for tables in compiled.endpoints.values() {
        for family in [IpFamily::V4, IpFamily::V6] {
            if of_family(&tables.ips, family).next().is_none() {
                continue;
            }
            for direction in [&tables.ingress, &tables.egress] {
                for id in set_ids(direction) {
                    out.entry(set_name(prefix, family, id))
                        .or_insert_with(|| IpSetSpec {
                            id: id.clone(),
                            family,
                        });
                }
            }
        }
    }
    out
}

/// The sets an isolated direction names.
fn set_ids(table: &DirectionTable) -> impl Iterator<Item = &SetId> {
    table
        .entries
        .iter()
        .filter(|_| table.isolated)
        .filter_map(|e| match &e.peer {
            Peer::Set(id) => Some(id),
            Peer::Any | Peer::Block(_) => None,
        })
}

/// The endpoint whose sets, counted in endpoint order, first take the number of our sets
/// past `room`: the object a capacity error names (`None`: they fit).
pub fn first_over(compiled: &CompiledPolicy, prefix: &str, room: usize) -> Option<ObjectName> {
    let mut seen = BTreeSet::new();
    for (name, tables) in &compiled.endpoints {
        for family in [IpFamily::V4, IpFamily::V6] {
            if of_family(&tables.ips, family).next().is_none() {
                continue;
            }
            for direction in [&tables.ingress, &tables.egress] {
                seen.extend(set_ids(direction).map(|id| set_name(prefix, family, id)));
            }
        }
        if seen.len() > room {
            return Some(name.clone());
        }
    }
    None
}

/// The policy chains of `family` (empty when no endpoint with an address of `family` is
/// isolated): `DP-POLICY` and the direction chains it dispatches to.
pub fn chains(compiled: &CompiledPolicy, node: &Node, prefix: &str, family: IpFamily) -> Chains {
    let mut chains = Chains::new();
    let mut top = vec![
        // Policy is checked on a connection's first packet: replies, later packets and
        // related ICMP of a connection it let through are not checked again (a change
        // applies to new connections).
        "-m conntrack --ctstate RELATED,ESTABLISHED -j RETURN".to_owned(),
    ];
    let mut own = Vec::new();
    let mut egress = Vec::new();
    let mut ingress = Vec::new();
    for tables in compiled.endpoints.values() {
        let ips: Vec<&IpAddr> = of_family(&tables.ips, family).collect();
        if ips.is_empty() || !(tables.ingress.isolated || tables.egress.isolated) {
            continue;
        }
        for (direction, table, dispatch) in [
            (PolicyType::Egress, &tables.egress, &mut egress),
            (PolicyType::Ingress, &tables.ingress, &mut ingress),
        ] {
            if !table.isolated {
                continue;
            }
            let rules = direction_rules(table, direction, prefix, family);
            let tag = match direction {
                PolicyType::Ingress => "PI",
                PolicyType::Egress => "PE",
            };
            let chain = format!("{prefix}-{tag}-{}", hash_name(&rules.join("\n")));
            let flag = match direction {
                PolicyType::Ingress => "-d",
                PolicyType::Egress => "-s",
            };
            for ip in &ips {
                dispatch.push(format!("{flag} {} -j {chain}", host(ip)));
            }
            chains.insert(chain, rules);
        }
        for ip in &ips {
            let h = host(ip);
            own.push(format!(
                "-s {h} -d {h} -m comment --comment \"a pod reaching itself\" -j RETURN"
            ));
        }
    }
    if chains.is_empty() {
        return chains;
    }
    if family == IpFamily::V6 {
        // IPv6 neighbour discovery between pods and the node is not policy's to decide (no
        // conntrack entry carries it, and IPv4's ARP never meets iptables): router
        // solicitation/advertisement, neighbour solicitation/advertisement pass, as in
        // Calico's workload chains.
        for icmp6 in 133..=136 {
            top.push(format!(
                "-p ipv6-icmp -m icmp6 --icmpv6-type {icmp6} -m comment --comment \"neighbour discovery\" -j RETURN"
            ));
        }
    }
    for a in of_family(&node.addresses, family) {
        let h = host(a);
        top.push(format!(
            "-s {h} -m comment --comment \"the node to its pods\" -j RETURN"
        ));
        top.push(format!(
            "-d {h} -m comment --comment \"pods to the node\" -j RETURN"
        ));
    }
    top.extend(own);
    top.extend(egress);
    top.extend(ingress);
    chains.insert(policy_chain(prefix), top);
    chains
}

/// The rules of one isolated direction: a `RETURN` per allow entry, the ipBlocks' prefixes
/// longest first, a counted `DROP` last.
fn direction_rules(
    table: &DirectionTable,
    direction: PolicyType,
    prefix: &str,
    family: IpFamily,
) -> Vec<String> {
    // The peer is the client on ingress (source), the server on egress (destination).
    let (addr_flag, set_flag) = match direction {
        PolicyType::Ingress => ("-s", "src"),
        PolicyType::Egress => ("-d", "dst"),
    };
    let mut rules = Vec::new();
    for e in &table.entries {
        let ports = port_match(e.protocol, e.ports);
        let peer = match &e.peer {
            Peer::Any => String::new(),
            Peer::Set(id) => format!(
                "-m set --match-set {} {set_flag} ",
                set_name(prefix, family, id)
            ),
            // Below, merged into one longest-prefix table.
            Peer::Block(_) => continue,
        };
        rules.push(format!("{peer}{ports}-j RETURN"));
    }
    let blocks: Vec<(IpNetwork, BTreeSet<PortSpec>)> = table
        .block_table()
        .into_iter()
        .filter(|(p, _)| IpFamily::of(&p.ip()) == family)
        .collect();
    let mut ordered: Vec<&(IpNetwork, BTreeSet<PortSpec>)> = blocks.iter().collect();
    ordered.sort_by(|a, b| b.0.prefix().cmp(&a.0.prefix()).then(a.0.cmp(&b.0)));
    for (net, specs) in &ordered {
        for (protocol, ports) in specs {
            rules.push(format!(
                "{addr_flag} {net} {}-j RETURN",
                port_match(*protocol, *ports)
            ));
        }
        // What this prefix does not allow must not reach a shorter prefix containing it
        // (an `except` inside its `cidr`): nothing before allowed the packet, so it is a
        // denial.
        let shadows = ordered
            .iter()
            .any(|(o, _)| o.prefix() < net.prefix() && o.contains(net.network()));
        if shadows {
            rules.push(format!(
                "{addr_flag} {net} -m comment --comment \"network policy: ipBlock except\" -j DROP"
            ));
        }
    }
    let what = match direction {
        PolicyType::Ingress => "ingress",
        PolicyType::Egress => "egress",
    };
    rules.push(format!(
        "-m comment --comment \"network policy: {what} denied\" -j DROP"
    ));
    rules
}

/// `-p tcp -m tcp --dport 80:81 ` (with a trailing space), or nothing for every protocol.
fn port_match(protocol: Option<Protocol>, (lo, hi): (u16, u16)) -> String {
    let Some(protocol) = protocol else {
        return String::new();
    };
    let p = proto_name(protocol);
    if (lo, hi) == (0, u16::MAX) {
        format!("-p {p} ")
    } else if lo == hi {
        format!("-p {p} -m {p} --dport {lo} ")
    } else {
        format!("-p {p} -m {p} --dport {lo}:{hi} ")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn set_names_fit_ipset_limits_and_are_recognised() {
        let id = SetId("x".repeat(500));
        for family in [IpFamily::V4, IpFamily::V6] {
            let n = set_name("DPXYZ", family, &id);
            assert!(n.len() <= 31, "{n}");
            assert!(is_our_set("DPXYZ", &n), "{n}");
            assert!(!is_our_set("DP", &n), "{n}");
        }
        assert!(!is_our_set("DP", "dp-other"));
        assert!(!is_our_set("DP", "cali40s:abc"));
    }

    #[test]
    fn ports_are_matched_as_iptables_spells_them() {
        assert_eq!(port_match(None, (0, u16::MAX)), "");
        assert_eq!(port_match(Some(Protocol::Tcp), (0, u16::MAX)), "-p tcp ");
        assert_eq!(
            port_match(Some(Protocol::Udp), (53, 53)),
            "-p udp -m udp --dport 53 "
        );
        assert_eq!(
            port_match(Some(Protocol::Sctp), (80, 81)),
            "-p sctp -m sctp --dport 80:81 "
        );
    }
}
