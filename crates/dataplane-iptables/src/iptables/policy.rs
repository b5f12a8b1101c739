//! NetworkPolicy in the iptables flavour: core's compiled tables
//! ([`dataplane_core::policy_tables`]) → filter-table chains over ipsets. Pure functions.
//!
//! ```text
//! filter INPUT/FORWARD ─▶ DP-FILTER (service drops/rejects) ─▶ DP-POLICY
//! filter OUTPUT ─▶ DP-FILTER-OUT (the same drops/rejects; the node's own traffic: no policy)
//!   DP-POLICY: -i <pod interface>              ─▶ DP-AS-<hash>  (anti-spoofing: its addresses
//!                                                                RETURN, IPv6 fe80::/10 and ::
//!                                                                to fe80::/10 and ff00::/8 too,
//!                                                                the rest ─▶ DP-SPOOFED)
//!              ct state ESTABLISHED,RELATED     ─▶ RETURN        (checked on the first packet only)
//!              IPv6 neighbour discovery        ─▶ RETURN        (ICMPv6 types 133-136)
//!              -d <node address>               ─▶ RETURN        (pods to the node: INPUT only)
//!              -i <its interface> -s <pod ip> -d <same ip> ─▶ RETURN (a pod reaching itself)
//!              -s <egress-isolated pod ip>     ─▶ DP-PE-<hash>  (the client's egress)
//!              -d <ingress-isolated pod ip>    ─▶ DP-PI-<hash>  (the server's ingress)
//!   DP-PE/PI-<hash>: one rule per allow entry ─▶ RETURN
//!              -m set --match-set DP-v4-<hash of the peer set> dst|src [-p tcp -m tcp --dport 80:81]
//!              (ipBlocks, longest prefix first) -d|-s <prefix> [ports] ─▶ RETURN, excepts ─▶ DP-DENY
//!              last: ─▶ DP-DENY   (node-wide: NFLOG rate-limited, then DROP, counted)
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
//! family; here `DP-v4-`/`DP-v6-` under the configured prefix). Departures, and why:
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
use dataplane_core::{
    CompiledPolicy, DesiredState, Endpoint, IpFamily, ObjectName, PolicyType, Protocol,
};
use ipnetwork::IpNetwork;

use super::naming::{hash_name, host, Chains};
use super::tiers::TierContext;
use crate::plan::{proto_name, FamilySuffix as _};

/// The ipsets the policy chains of both families name: set name → what it holds.
pub type IpSets = BTreeMap<String, IpSetSpec>;

/// One ipset: a `hash:ip` of the members of one peer set in one address family (read from
/// the compiled policy when written: see [`super::ipset::members`]), or a `hash:net` of the
/// CIDRs of a host policy rule (`nets`, see `iptables/host.rs`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IpSetSpec {
    /// The peer set it holds (for a host policy set, its name).
    pub id: SetId,
    /// `inet` or `inet6`.
    pub family: IpFamily,
    /// A host policy set's CIDRs (`hash:net`); empty for a peer set (`hash:ip`).
    pub nets: Vec<IpNetwork>,
}

/// Whether `name` is one of our host policy (`hash:net`) sets.
pub fn is_net_set(prefix: &str, name: &str) -> bool {
    name.strip_prefix(&set_prefix(prefix))
        .is_some_and(|rest| rest.starts_with("n4-") || rest.starts_with("n6-"))
}

/// The filter chain that logs, counts and drops what NetworkPolicy denies in `direction`
/// (written with the node-wide chains, so that its log settings need not reach the policy
/// chains). One per direction for the log prefix (`dp deny policy in|out`): both run in
/// forward, and an ingress denial is reported at the server's interface.
pub fn deny_chain(prefix: &str, direction: PolicyType) -> String {
    match direction {
        PolicyType::Ingress => format!("{prefix}-DENY-IN"),
        PolicyType::Egress => format!("{prefix}-DENY-OUT"),
    }
}

/// The filter chain that logs, counts and drops a forged source.
pub fn spoofed_chain(prefix: &str) -> String {
    format!("{prefix}-SPOOFED")
}

/// The name of the top-level policy chain.
pub fn policy_chain(prefix: &str) -> String {
    format!("{prefix}-POLICY")
}

/// The prefix of our ipset names (`DP-` for the chain prefix `DP`): ipset names are global in
/// the network namespace, so they carry the configured prefix too, case kept (instances
/// `DP` and `dp` must not share sets; the configuration refuses a `-` in the prefix, which
/// would let one prefix's names start with another's).
pub fn set_prefix(prefix: &str) -> String {
    format!("{prefix}-")
}

/// Whether `name` is one of our ipsets (either family).
pub fn is_our_set(prefix: &str, name: &str) -> bool {
    let ours = set_prefix(prefix);
    name.strip_prefix(&ours).is_some_and(|rest| {
        ["v4-", "v6-", "n4-", "n6-"]
            .iter()
            .any(|tag| rest.starts_with(tag))
    })
}

/// The ipset of peer set `id` in `family`: `DP-v4-<16 characters of hash>`, at most 25
/// characters (ipset names are limited to 31).
pub fn set_name(prefix: &str, family: IpFamily, id: &SetId) -> String {
    set_name_with(prefix, family, id, &hash_name)
}

/// [`set_name`] with the hash `name`.
fn set_name_with(
    prefix: &str,
    family: IpFamily,
    id: &SetId,
    name: &dyn Fn(&str) -> String,
) -> String {
    format!("{}{}-{}", set_prefix(prefix), family.suffix(), name(&id.0))
}

/// The addresses of `ips` in `family`.
fn of_family(ips: &[IpAddr], family: IpFamily) -> impl Iterator<Item = &IpAddr> {
    ips.iter().filter(move |ip| IpFamily::of(ip) == family)
}

/// The ipsets the chains of both families name. A peer set gets a set in a family when an
/// isolated endpoint with an address of that family names it (its chain of that family
/// does), even while no member is of that family: a member change is then an element
/// change, never a rule change. Two peer sets under one name are a [`NameCollision`].
pub fn ipsets(compiled: &CompiledPolicy, prefix: &str) -> Result<IpSets, NameCollision> {
    ipsets_named(compiled, prefix, &hash_name)
}

/// The `hash:net` ipsets of host policy (both families; see `iptables/host.rs`).
pub fn host_ipsets(state: &DesiredState, prefix: &str) -> IpSets {
    let mut out = IpSets::new();
    for family in [IpFamily::V4, IpFamily::V6] {
        for (name, (family, nets)) in super::host::plan(state, prefix, family).1 {
            out.insert(
                name.clone(),
                IpSetSpec {
                    id: SetId(name),
                    family,
                    nets,
                },
            );
        }
    }
    out
}

/// [`ipsets`] with the hash `name` (a seam: the tests collide names on purpose).
pub fn ipsets_named(
    compiled: &CompiledPolicy,
    prefix: &str,
    name: &dyn Fn(&str) -> String,
) -> Result<IpSets, NameCollision> {
    let mut out = IpSets::new();
    for tables in compiled.endpoints.values() {
        for family in [IpFamily::V4, IpFamily::V6] {
            if of_family(&tables.ips, family).next().is_none() {
                continue;
            }
            for direction in [&tables.ingress, &tables.egress] {
                for id in set_ids(direction) {
                    let set = set_name_with(prefix, family, id, name);
                    match out.get(&set) {
                        Some(spec) if spec.id != *id => {
                            return Err(NameCollision {
                                name: set,
                                first: format!("peer set {}", spec.id),
                                second: format!("peer set {id}"),
                            });
                        }
                        Some(_) => {}
                        None => {
                            out.insert(
                                set,
                                IpSetSpec {
                                    id: id.clone(),
                                    family,
                                    nets: Vec::new(),
                                },
                            );
                        }
                    }
                }
            }
        }
    }
    Ok(out)
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

/// Two different contents hashed to one chain or ipset name: refused (writing either would
/// make the other's rules or members wrong).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NameCollision {
    /// The name.
    pub name: String,
    /// What the name stood for first.
    pub first: String,
    /// What it was to stand for too.
    pub second: String,
}

impl NameCollision {
    /// The typed error of the backend called `backend`.
    pub fn into_error(self, backend: &str) -> dataplane_core::Error {
        dataplane_core::Error::Unsupported {
            dataplane: backend.to_owned(),
            feature: format!("two different contents under one name {}", self.name),
            object: format!("{} and {}", self.first, self.second),
        }
    }
}

/// Records `name` for `content`; a name already standing for another content is a
/// collision.
fn claim(
    names: &mut BTreeMap<String, String>,
    name: &str,
    content: &str,
) -> Result<(), NameCollision> {
    match names.get(name) {
        Some(first) if first != content => Err(NameCollision {
            name: name.to_owned(),
            first: first.clone(),
            second: content.to_owned(),
        }),
        Some(_) => Ok(()),
        None => {
            names.insert(name.to_owned(), content.to_owned());
            Ok(())
        }
    }
}

/// The policy chains of `family` of `state` (whose compiled policy is `compiled`): when the
/// state has pod policy (NetworkPolicy, cluster tiers) and endpoints, `DP-POLICY` with the
/// anti-spoofing chains and the direction chains it dispatches to; with host endpoint
/// policy, its chains (see `iptables/host.rs`).
pub fn chains(
    compiled: &CompiledPolicy,
    state: &DesiredState,
    prefix: &str,
    family: IpFamily,
) -> Result<Chains, NameCollision> {
    chains_named(compiled, state, prefix, family, &hash_name)
}

/// [`chains`] with the chain names' hash `name` (a seam: the tests collide names on purpose).
pub fn chains_named(
    compiled: &CompiledPolicy,
    state: &DesiredState,
    prefix: &str,
    family: IpFamily,
    name: &dyn Fn(&str) -> String,
) -> Result<Chains, NameCollision> {
    let mut chains = pod_chains(compiled, state, prefix, family, name)?;
    // Host endpoint policy: filter chains, and raw and mangle ones named for their table
    // (see [`super::host::table_of`]).
    chains.extend(super::host::plan(state, prefix, family).0);
    Ok(chains)
}

/// The pod policy chains (NetworkPolicy and the cluster tiers) of [`chains_named`].
fn pod_chains(
    compiled: &CompiledPolicy,
    state: &DesiredState,
    prefix: &str,
    family: IpFamily,
    name: &dyn Fn(&str) -> String,
) -> Result<Chains, NameCollision> {
    let mut chains = Chains::new();
    if !state.has_pod_policy() || state.endpoints.is_empty() {
        return Ok(chains);
    }
    let tiers = TierContext::new(state);
    let mut names = BTreeMap::new();
    // Anti-spoofing, before anything else (established connections included: a forged
    // packet must not ride on another's conntrack entry): a packet in on a local endpoint's
    // interface must come from one of its addresses, as the reference model says
    // (`dataplane_core::is_spoofed`). Policy knows a client by its source address: a pod
    // sending from the node's or another pod's address would borrow their rights. Calico
    // does this with strict reverse-path filtering on workload interfaces, Cilium by checking
    // the source of an endpoint's packets. Only packets that came in on an interface (INPUT,
    // FORWARD) can match `-i`. IPv6 link-local and unspecified sources are exempt towards
    // link-local and multicast destinations: neighbour discovery, duplicate address
    // detection and MLD use them.
    let mut by_interface: BTreeMap<&str, BTreeSet<IpAddr>> = BTreeMap::new();
    for e in &state.endpoints {
        by_interface
            .entry(e.interface.as_str())
            .or_default()
            .extend(of_family(&e.ips, family).copied());
    }
    let mut top = Vec::new();
    for (interface, ips) in &by_interface {
        let rules = anti_spoofing_rules(ips, family, prefix);
        let content = format!("{interface}\n{}", rules.join("\n"));
        let chain = format!("{prefix}-AS-{}", name(&content));
        claim(&mut names, &chain, &content)?;
        top.push(format!("-i {interface} -j {chain}"));
        chains.insert(chain, rules);
    }
    // Policy is checked on a connection's first packet: replies, later packets and related
    // ICMP of a connection it let through are not checked again (a change applies to new
    // connections).
    top.push("-m conntrack --ctstate RELATED,ESTABLISHED -j RETURN".to_owned());
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
    // Pods to the node: only INPUT sees a destination that is the node's (a forwarded
    // packet is not addressed to it), and its source was checked above. The node to its
    // pods needs no rule: locally generated traffic never jumps here (see
    // [`super::render::hooks`]), whatever its source address (kubelet may use one that is not
    // in `node.addresses`).
    for a in of_family(&state.node.addresses, family) {
        top.push(format!(
            "-d {} -m comment --comment \"pods to the node\" -j RETURN",
            host(a)
        ));
    }
    let endpoints: BTreeMap<&ObjectName, &Endpoint> =
        state.endpoints.iter().map(|e| (&e.name, e)).collect();
    let mut egress = Vec::new();
    let mut ingress = Vec::new();
    for (endpoint, tables) in &compiled.endpoints {
        let ips: Vec<&IpAddr> = of_family(&tables.ips, family).collect();
        let Some(e) = endpoints.get(endpoint).copied() else {
            continue;
        };
        if ips.is_empty() {
            continue;
        }
        let mut checked = false;
        for (direction, table, dispatch) in [
            (PolicyType::Egress, &tables.egress, &mut egress),
            (PolicyType::Ingress, &tables.ingress, &mut ingress),
        ] {
            let Some(chain) = direction_chain(
                &tiers,
                e,
                table,
                direction,
                prefix,
                family,
                name,
                &mut names,
                &mut chains,
            )?
            else {
                continue;
            };
            checked = true;
            // The source of an egress dispatch was checked above when it came from a pod.
            let flag = match direction {
                PolicyType::Ingress => "-d",
                PolicyType::Egress => "-s",
            };
            for ip in &ips {
                dispatch.push(format!("{flag} {} -j {chain}", host(ip)));
            }
        }
        // A pod reaching itself (hairpin through a service included): from its own
        // interface only.
        if checked {
            for ip in &ips {
                let h = host(ip);
                top.push(format!(
                    "-i {} -s {h} -d {h} -m comment --comment \"a pod reaching itself\" -j RETURN",
                    e.interface
                ));
            }
        }
    }
    top.extend(egress);
    top.extend(ingress);
    chains.insert(policy_chain(prefix), top);
    Ok(chains)
}

/// The rules of an interface's anti-spoofing chain: its endpoints' addresses `ips` return,
/// the rest goes to the spoofed chain.
fn anti_spoofing_rules(ips: &BTreeSet<IpAddr>, family: IpFamily, prefix: &str) -> Vec<String> {
    let mut rules: Vec<String> = ips
        .iter()
        .map(|ip| format!("-s {} -j RETURN", host(ip)))
        .collect();
    if family == IpFamily::V6 {
        // Only towards link-local and multicast destinations (neighbour discovery, DAD,
        // MLD: traffic that stays on the link); elsewhere such a source is borrowed too.
        for src in ["fe80::/10", "::/128"] {
            for dst in ["fe80::/10", "ff00::/8"] {
                rules.push(format!("-s {src} -d {dst} -j RETURN"));
            }
        }
    }
    rules.push(format!(
        "-m comment --comment \"network policy: spoofed source\" -j {}",
        spoofed_chain(prefix)
    ));
    rules
}

/// The chain `DP-POLICY` sends endpoint `e`'s packets of `direction` to (`None`: nothing
/// to check, the direction is allowed), with the chains it goes on to, added to `chains`:
/// the cluster tier's chain when a cluster policy selects the pod, going on to the
/// NetworkPolicy chain when one isolates it, else to the baseline's when the baseline
/// selects it (see [`super::tiers`]).
#[allow(clippy::too_many_arguments)] // one call site; the pieces of one render
fn direction_chain(
    tiers: &TierContext<'_>,
    e: &Endpoint,
    table: &DirectionTable,
    direction: PolicyType,
    prefix: &str,
    family: IpFamily,
    name: &dyn Fn(&str) -> String,
    names: &mut BTreeMap<String, String>,
    chains: &mut Chains,
) -> Result<Option<String>, NameCollision> {
    let (np_tag, baseline_tag, cluster_tag) = match direction {
        PolicyType::Ingress => ("PI", "BI", "CI"),
        PolicyType::Egress => ("PE", "BE", "CE"),
    };
    let mut add = |tag: &str, rules: Vec<String>| -> Result<String, NameCollision> {
        let content = rules.join("\n");
        let chain = format!("{prefix}-{tag}-{}", name(&content));
        claim(names, &chain, &content)?;
        chains.insert(chain.clone(), rules);
        Ok(chain)
    };
    let deny = deny_chain(prefix, direction);
    // NetworkPolicy, when it isolates the pod: its implicit deny is final (no baseline).
    let next = if table.isolated {
        Some(add(
            np_tag,
            direction_rules(table, direction, prefix, family, name),
        )?)
    } else {
        match tiers.baseline_lines(e, direction, family, &deny) {
            Some(rules) => Some(add(baseline_tag, rules)?),
            None => None,
        }
    };
    match tiers.cluster_lines(e, direction, family, &deny, next.as_deref()) {
        Some(rules) if !rules.is_empty() => Ok(Some(add(cluster_tag, rules)?)),
        _ => Ok(next),
    }
}

/// The rules of one isolated direction: a `RETURN` per allow entry, the ipBlocks' prefixes
/// longest first, a counted `DROP` last.
fn direction_rules(
    table: &DirectionTable,
    direction: PolicyType,
    prefix: &str,
    family: IpFamily,
    name: &dyn Fn(&str) -> String,
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
                set_name_with(prefix, family, id, name)
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
                "{addr_flag} {net} -m comment --comment \"network policy: ipBlock except\" -j {}",
                deny_chain(prefix, direction)
            ));
        }
    }
    let what = match direction {
        PolicyType::Ingress => "ingress",
        PolicyType::Egress => "egress",
    };
    rules.push(format!(
        "-m comment --comment \"network policy: {what} denied\" -j {}",
        deny_chain(prefix, direction)
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
        assert!(!is_our_set("DP", "DP-other"));
        assert!(!is_our_set("DP", &set_name("dp", IpFamily::V4, &id)));
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
