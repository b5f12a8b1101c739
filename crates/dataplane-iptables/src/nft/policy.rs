//! NetworkPolicy in the nftables flavour: core's compiled tables
//! ([`dataplane_core::policy_tables`]) as named sets, verdict maps and per-endpoint chains
//! in our own table, in the same transaction as the services. Pure functions.
//!
//! Layout (present once the state has a policy; the sets, maps and chains below are added to
//! the `inet` table next to the services'):
//!
//! ```text
//! pol-forward (filter forward, priority filter)
//!   iifname @pol-pod-ifaces jump pol-spoof          (anti-spoofing, before anything accepts)
//!   ct state established,related accept             (stateful: replies, old flows)
//!   iifname @pol-pod-ifaces ip saddr . ip daddr @hairpin-v4 accept   (a pod reaching itself)
//!   jump pol-dispatch
//! pol-input (filter input, priority filter)
//!   iifname @pol-pod-ifaces jump pol-spoof; ct state established,related accept
//!   icmpv6 type { nd-router-solicit … nd-redirect } ip6 hoplimit 255 accept
//!   icmpv6 type { mld-listener-query … mld2-listener-report } ip6 hoplimit 1 accept
//!   ip daddr @pol-node-v4 accept                     (a pod → the node)
//!   jump pol-dispatch
//! (no output hook: what the node sends is the node's own traffic, kubelet probes included)
//!   pol-spoof:  iifname . ip saddr @pol-pod-src-v4 return
//!               ip6 saddr { fe80::/10, ::/128 } return
//!               iifname . ip6 saddr @pol-pod-src-v6 return
//!               goto drop-spoofed        (services' base chain: NFLOG, counted, drop)
//!   pol-dispatch: ip saddr vmap @pol-egress-v4  ─jump─▶ pol-out-<ns>/<pod>   (client's egress)
//!                 ip daddr vmap @pol-ingress-v4 ─jump─▶ pol-in-<ns>/<pod>    (server's ingress)
//!                 (and the same for ip6)
//!   pol-in-<ns>/<pod>, pol-out-<ns>/<pod>: one rule per peer set, ending in `return`
//!     ip saddr @pset-v4-<hash> meta l4proto . th dport { tcp . 80-81, udp . 53 } return
//!     ip saddr { 10.0.0.0/9, … } return                            (ipBlock, every port)
//!     ip saddr . meta l4proto . th dport { 10.0.0.0/9 . tcp . 80, … } return
//!     goto deny-policy-in|out          (services' base chains: NFLOG, counted, drop)
//! ```
//!
//! Why this shape:
//! - The filter hooks at priority `filter` run after the nat hooks' DNAT (prerouting for
//!   forwarded traffic, `nat-output` at -100 for the node's own) and before any SNAT
//!   (postrouting): service traffic is checked against the chosen backend and its target
//!   port, from the client's own address, as the lead's decision and core's reference model
//!   ask. A connection between two pods of this node passes both the client's egress chain and
//!   the server's ingress chain in one walk: the endpoint chains `return` when they allow
//!   (an `accept` in the egress chain would end the walk before the ingress check).
//! - Only a connection's first packet is checked (`ct state established,related accept`
//!   first): replies and related ICMP pass, and so do connections established before a change
//!   that now denies them, until they end or conntrack expires them (the project-wide rule,
//!   the same on the eBPF backend). Calico's workload chains `cali-tw-`/`cali-fw-` start the
//!   same way (felix/rules/endpoints.go, `appendConntrackRules`), and kube-proxy's nftables
//!   filter chains likewise act on `ct state new` packets only.
//! - Peer sets are named sets per selector (`pset-v4-<hash>`, 128 bits of SHA-256 of core's
//!   stable [`SetId`], as Calico names its ipsets `cali40s:<hash>` by the selector and
//!   kube-proxy its chains by a truncated SHA-256; tenant text cannot be made to collide, and
//!   a collision is refused anyway, [`Names`]): a pod or label
//!   change is element adds and deletes in the sets it is in, not a rule change, and a
//!   thousand policies with the same peer share one set. An endpoint chain has one rule per
//!   distinct peer set (its ports in one anonymous `l4proto . dport` set), not one per policy.
//! - Dispatch by verdict map on the endpoint address (kube-proxy's way of reaching per-service
//!   chains): an endpoint that no policy isolates in a direction has no element and costs one
//!   failed hash lookup. Calico's nftables dataplane dispatches on the interface instead
//!   (`filter-cali-to-wl-dispatch`, `ifname : verdict`); the address is what the model's
//!   policy is about, it is the same in the forward and input hooks, and it keeps a pod's
//!   checks independent of how it is wired. Dispatch by source is sound because anti-spoofing
//!   ran first: a packet from a pod interface carries that pod's address.
//! - ipBlocks: core's merged longest-prefix table ([`DirectionTable::block_table`]) made
//!   disjoint (`nf_tables` interval sets refuse overlapping elements), each range written as
//!   the prefixes that cover it exactly, in anonymous interval sets: one for ranges that allow
//!   every protocol, one concatenation `addr . l4proto . dport` for the rest. The excepts are
//!   holes in those ranges, so one lookup decides.
//! - Anti-spoofing (core's `is_spoofed`): a packet arriving on a local endpoint's interface
//!   must come from one of that endpoint's addresses (one `interface . address` set per
//!   family; IPv6 link-local and unspecified sources exempt: neighbour discovery and DAD use
//!   them, and the kernel never forwards them). Without it a pod (`CAP_NET_RAW` is a
//!   container default) forging the node's or an allowed pod's address passed the target's
//!   ingress, and any forged source skipped its own egress. Calico drops these with strict
//!   reverse-path filtering on workload interfaces (felix `cali-from-wl-dispatch` /
//!   `rp_filter`), Cilium checks an endpoint's source address. It runs before conntrack's
//!   accept: a forged packet matching another pod's connection would be `established`.
//! - Node rules only where the address can be genuine: the node as destination in the input
//!   hook; the node as source nowhere, as there is no output hook (what the node sends is its
//!   own, whatever its source address: kubelet probes from docker0 or a secondary address
//!   reach isolated pods, and their replies are established), and a forwarded packet is never
//!   the node's. A pod reaching its own address through a service is told by the services'
//!   `hairpin` set (every local endpoint address), only for packets from a pod interface,
//!   whose source anti-spoofing vouched for.
//! - Neighbour and router discovery (`ICMPv6` types 133-137) with hop limit 255 (RFC 4861:
//!   receivers ignore any other, so it cannot have been forwarded) and multicast listener
//!   messages (130-132, 143) with hop limit 1 are accepted in the input hook only: without
//!   them an isolated IPv6 pod could not resolve its gateway (its global source would meet
//!   its egress chain). Calico accepts types 130-133, 135 and 136 from workloads for the same
//!   reason (felix/rules/static.go, `ICMPv6Filter`). Forwarded ones are policed like any
//!   packet: pods cannot send them to isolated pods.
//! - Sizes: an endpoint direction of more than
//!   [`NetfilterConfig::max_policy_elements`](crate::NetfilterConfig::max_policy_elements)
//!   elements is refused (ipBlock excepts multiply into prefixes x protocols x port ranges,
//!   copied into the endpoint's chain), before the expansion.
//!
//! Cost of a packet from a local pod: two set lookups (anti-spoofing). Cost of a new
//! connection: the hairpin lookup, one hash lookup per direction
//! (dispatch), then one rule per distinct peer set of the endpoint plus at most two interval
//! lookups (ipBlocks): linear in the distinct peers of the pod's policies, not in the
//! policies or the pods. Established packets cost one conntrack-state match.

use std::borrow::Cow;
use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use dataplane_core::policy_tables::{DirectionTable, EndpointTables, Peer, PortSpec, SetId};
use dataplane_core::{
    compile as compile_tables, ChangeSet, CompiledPolicy, DesiredState, Endpoint, Error, IpFamily,
    Node, ObjectName, PolicyDelta,
};
use ipnetwork::IpNetwork;

use super::family::{addr_type, ip_kw};
use super::host::NftHost;
use super::netlink;
use super::rule_text::{
    addr_value, chain_name_with, host_mask, max_value, merged_ports, port_match, port_text,
    range_prefixes, Hasher,
};
pub use super::rule_text::{
    chain_name, sha256_name, Direction, DENY_POLICY_IN_CHAIN, DENY_POLICY_OUT_CHAIN,
};
use super::tiers::{tier_map, NftTiers, DISPATCH_IN_CHAIN};
use crate::error::NetfilterError;
use crate::plan::{proto_name, FamilySuffix as _};

/// The address families, in the order everything is written.
const FAMILIES: [IpFamily; 2] = [IpFamily::V4, IpFamily::V6];

/// Elements per `add element` / `delete element` line.
const ELEMENTS_PER_LINE: usize = 2000;

/// One element of a dispatch map: an endpoint address → `jump` its chain.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Dispatch {
    /// The direction (which map).
    pub direction: Direction,
    /// The endpoint address.
    pub ip: IpAddr,
    /// The endpoint's chain of that direction.
    pub chain: String,
}

impl Dispatch {
    /// The map the element belongs to.
    pub fn map(&self) -> &'static str {
        self.direction.map(IpFamily::of(&self.ip))
    }
}

/// The nft objects of one local endpoint that a policy isolates (in at least one
/// direction).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct EndpointRules {
    /// Its chains (one per isolated direction) and their rules, by name.
    pub chains: Vec<(String, Vec<String>)>,
    /// Its dispatch elements, sorted.
    pub dispatch: Vec<Dispatch>,
}

impl EndpointRules {
    fn chain(&self, name: &str) -> Option<&[String]> {
        self.chains
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, r)| r.as_slice())
    }
}

/// The policy part of a ruleset.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct NftPolicy {
    /// Node-wide statements of the policy layer, relative to the table (`set …`, `chain …`,
    /// `rule <chain> …`); empty while the state has had no policy (no layer at all).
    pub base: Vec<String>,
    /// Core's compiled tables, kept for incremental updates.
    pub compiled: CompiledPolicy,
    /// The name stem of each peer set (`pset-v4-<stem>`, `pset-v6-<stem>`).
    pub set_names: BTreeMap<SetId, String>,
    /// The objects of each isolated local endpoint.
    pub endpoints: BTreeMap<ObjectName, EndpointRules>,
    /// Anti-spoofing: the `interface . address` pairs of the local endpoints (empty without
    /// the layer).
    pub spoof: BTreeSet<(String, IpAddr)>,
    /// The hashed names in use.
    pub names: Names,
    /// Cluster policies and the baseline ([`super::tiers`]).
    pub tiers: NftTiers,
    /// Host endpoint policy ([`super::host`]).
    pub host: NftHost,
}

/// The chain the anti-spoofing chain ends in: it logs, counts and drops.
pub const DROP_SPOOFED_CHAIN: &str = "drop-spoofed";

/// The name of the peer set `stem` of `family`.
pub fn set_name(family: IpFamily, stem: &str) -> String {
    format!("pset-{}-{stem}", family.suffix())
}

/// The name stem of a peer set: [`sha256_name`] of core's canonical text of the selector
/// (its [`SetId`]).
pub fn set_stem(id: &SetId) -> String {
    sha256_name(&id.0)
}

/// The hashed names in use and what each names, to refuse a collision (two objects, one
/// name) before anything is written: a chain or set shared by two objects would silently
/// give one the other's rules or members.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Names {
    /// Peer-set stem → the set it names.
    sets: BTreeMap<String, SetId>,
    /// Cut chain name (only those carry a hash; whole names are distinct by construction) →
    /// its endpoint.
    chains: BTreeMap<String, ObjectName>,
}

impl Names {
    fn claim_set(&mut self, stem: &str, id: &SetId) -> Result<(), Error> {
        claim(
            &mut self.sets,
            stem,
            id,
            &set_name(IpFamily::V4, stem),
            "peer set",
        )
    }

    fn claim_chain(&mut self, chain: &str, endpoint: &ObjectName) -> Result<(), Error> {
        if !chain.contains('_') {
            return Ok(());
        }
        claim(&mut self.chains, chain, endpoint, chain, "endpoint")
    }
}

/// Records that `key` is `owner`'s, refusing it when another object has it.
fn claim<T: Clone + PartialEq + std::fmt::Display>(
    owners: &mut BTreeMap<String, T>,
    key: &str,
    owner: &T,
    name: &str,
    kind: &str,
) -> Result<(), Error> {
    match owners.get(key) {
        Some(other) if other != owner => Err(NetfilterError::NameCollision {
            backend: "nftables",
            name: name.to_owned(),
            first: format!("{kind} {other}"),
            second: format!("{kind} {owner}"),
        }
        .into()),
        _ => {
            owners.insert(key.to_owned(), owner.clone());
            Ok(())
        }
    }
}

/// The layer's node-wide statements.
pub fn base(node: &Node) -> Vec<String> {
    let mut out = Vec::new();
    for f in FAMILIES {
        let (fs, at) = (f.suffix(), addr_type(f));
        let nodes: Vec<String> = node
            .addresses
            .iter()
            .filter(|a| IpFamily::of(a) == f)
            .map(ToString::to_string)
            .collect();
        let elements = if nodes.is_empty() {
            String::new()
        } else {
            format!(" elements = {{ {} }};", nodes.join(", "))
        };
        out.push(format!("set pol-node-{fs} {{ type {at};{elements} }}"));
        out.push(format!("set {} {{ type ifname . {at}; }}", spoof_set(f)));
        for d in [Direction::Ingress, Direction::Egress] {
            out.push(format!("map {} {{ type {at} : verdict; }}", d.map(f)));
            out.push(format!("map {} {{ type {at} : verdict; }}", tier_map(d, f)));
        }
    }
    out.push(format!("set {IFACES} {{ type ifname; }}"));
    for (chain, hook) in [("pol-forward", "forward"), ("pol-input", "input")] {
        out.push(format!(
            "chain {chain} {{ type filter hook {hook} priority filter; policy accept; }}"
        ));
    }
    out.push("chain pol-spoof".to_owned());
    out.push("chain pol-dispatch".to_owned());
    out.push(format!("chain {DISPATCH_IN_CHAIN}"));
    let rule = |chain: &str, r: &str| format!("rule {chain} {r}");
    // Anti-spoofing first, before anything accepts (conntrack included: a forged packet
    // matching another pod's connection would be `established`).
    out.push(rule(
        "pol-spoof",
        &format!("iifname . ip saddr @{} return", spoof_set(IpFamily::V4)),
    ));
    out.push(rule("pol-spoof", "ip6 saddr { fe80::/10, ::/128 } return"));
    out.push(rule(
        "pol-spoof",
        &format!("iifname . ip6 saddr @{} return", spoof_set(IpFamily::V6)),
    ));
    out.push(rule("pol-spoof", &format!("goto {DROP_SPOOFED_CHAIN}")));
    for chain in ["pol-forward", "pol-input"] {
        out.push(rule(chain, &format!("iifname @{IFACES} jump pol-spoof")));
        out.push(rule(chain, "ct state established,related accept"));
    }
    // Forward: no node rule (a forwarded packet is never the node's own, whatever its
    // source says), no ICMPv6 exception (neighbour discovery and MLD are link-local: a
    // forwarded one is not genuine and its receiver ignores it). A pod reaching itself
    // through a service: its source is genuine, as it passed anti-spoofing on its own
    // interface.
    for f in FAMILIES {
        let (fs, ip) = (f.suffix(), ip_kw(f));
        out.push(rule(
            "pol-forward",
            &format!("iifname @{IFACES} {ip} saddr . {ip} daddr @hairpin-{fs} accept"),
        ));
    }
    out.push(rule("pol-forward", "jump pol-dispatch"));
    // Input: what reaches the node itself. Neighbour and router discovery (hop limit 255,
    // which RFC 4861 receivers require: it cannot have been forwarded) and multicast
    // listener messages (hop limit 1) between a pod and its gateway; then the node as
    // destination.
    out.push(rule(
        "pol-input",
        "icmpv6 type { nd-router-solicit, nd-router-advert, nd-neighbor-solicit, nd-neighbor-advert, nd-redirect } ip6 hoplimit 255 accept",
    ));
    out.push(rule(
        "pol-input",
        "icmpv6 type { mld-listener-query, mld-listener-report, mld-listener-done, mld2-listener-report } ip6 hoplimit 1 accept",
    ));
    for f in FAMILIES {
        out.push(rule(
            "pol-input",
            &format!("{} daddr @pol-node-{} accept", ip_kw(f), f.suffix()),
        ));
    }
    out.push(rule("pol-input", "jump pol-dispatch"));
    // Egress first: its chains `return` when they allow, so that the server's ingress is
    // checked next in the same walk. The cluster tiers' maps come first in each half: an
    // endpoint direction they cover is dispatched there by `goto` and never comes back to
    // NetworkPolicy's map (see `super::tiers`).
    for (d, chain) in [
        (Direction::Egress, "pol-dispatch"),
        (Direction::Ingress, DISPATCH_IN_CHAIN),
    ] {
        let field = match d {
            Direction::Ingress => "daddr",
            Direction::Egress => "saddr",
        };
        for map in [tier_map, Direction::map] {
            for f in FAMILIES {
                out.push(rule(
                    chain,
                    &format!("{} {field} vmap @{}", ip_kw(f), map(d, f)),
                ));
            }
        }
    }
    out.push(rule("pol-dispatch", &format!("goto {DISPATCH_IN_CHAIN}")));
    out
}

/// The set of the local endpoints' interfaces (anti-spoofing).
const IFACES: &str = "pol-pod-ifaces";

/// The set of `interface . address` pairs of the local endpoints of `family`: the sources a
/// packet arriving on an endpoint's interface may have.
fn spoof_set(family: IpFamily) -> &'static str {
    match family {
        IpFamily::V4 => "pol-pod-src-v4",
        IpFamily::V6 => "pol-pod-src-v6",
    }
}

/// An endpoint's anti-spoofing pairs: its interface with each of its addresses.
fn spoof_pairs(e: &Endpoint) -> impl Iterator<Item = (String, IpAddr)> + '_ {
    e.ips.iter().map(|ip| (e.interface.clone(), *ip))
}

/// Refuses an interface name that nft cannot take as a quoted string (`"` ends it, `\` and
/// a trailing `*` change it, control characters break the line); the kernel's own rules
/// (at most 15 bytes, no `/`, no whitespace) are core's validation.
fn check_interface(e: &Endpoint) -> Result<(), Error> {
    if e.interface
        .chars()
        .any(|c| c == '"' || c == '\\' || c == '*' || !c.is_ascii_graphic())
    {
        return Err(Error::Unsupported {
            dataplane: "nftables".to_owned(),
            feature: format!(
                "NetworkPolicy anti-spoofing on interface {:?} (nft takes interface names of printable ASCII without `\"`, `\\` or `*`)",
                e.interface
            ),
            object: format!("endpoint {} field interface", e.name),
        });
    }
    Ok(())
}

/// Compiles the policy of `state` (valid, see [`dataplane_core::validate()`]); an isolated
/// direction of more than `max_elements` elements is refused
/// ([`NetfilterConfig::max_policy_elements`](crate::NetfilterConfig::max_policy_elements)).
pub fn compile(state: &DesiredState, max_elements: usize) -> Result<NftPolicy, Error> {
    compile_with(state, max_elements, sha256_name)
}

/// [`compile`] with names hashed by `hash`.
pub(crate) fn compile_with(
    state: &DesiredState,
    max_elements: usize,
    hash: Hasher,
) -> Result<NftPolicy, Error> {
    let layer = state.has_pod_policy();
    let mut spoof = BTreeSet::new();
    if layer {
        for e in &state.endpoints {
            check_interface(e)?;
            spoof.extend(spoof_pairs(e));
        }
    }
    let compiled = compile_tables(state);
    let mut names = Names::default();
    let mut set_names = BTreeMap::new();
    for id in compiled.sets.keys() {
        let stem = hash(&id.0);
        names.claim_set(&stem, id)?;
        set_names.insert(id.clone(), stem);
    }
    let mut endpoints = BTreeMap::new();
    for (name, tables) in &compiled.endpoints {
        let rules = endpoint_rules(name, tables, &set_names, max_elements, hash)?;
        if let Some(rules) = rules {
            for (chain, _) in &rules.chains {
                names.claim_chain(chain, name)?;
            }
            endpoints.insert(name.clone(), rules);
        }
    }
    Ok(NftPolicy {
        base: if layer { base(&state.node) } else { Vec::new() },
        compiled,
        set_names,
        endpoints,
        spoof,
        names,
        tiers: super::tiers::compile(state),
        host: super::host::compile(state),
    })
}

/// The objects of one endpoint, `None` when no policy isolates it.
fn endpoint_rules(
    name: &ObjectName,
    tables: &EndpointTables,
    names: &BTreeMap<SetId, String>,
    max_elements: usize,
    hash: Hasher,
) -> Result<Option<EndpointRules>, Error> {
    let families: BTreeSet<IpFamily> = tables.ips.iter().map(IpFamily::of).collect();
    let mut out = EndpointRules::default();
    for (direction, table) in [
        (Direction::Ingress, &tables.ingress),
        (Direction::Egress, &tables.egress),
    ] {
        if !table.isolated {
            continue;
        }
        let chain = chain_name_with(direction, name, hash);
        let limit = Limit {
            endpoint: name,
            direction,
            max: max_elements,
        };
        let rules = direction_rules(direction, table, &families, names, &limit)?;
        for ip in &tables.ips {
            out.dispatch.push(Dispatch {
                direction,
                ip: *ip,
                chain: chain.clone(),
            });
        }
        out.chains.push((chain, rules));
    }
    if out.chains.is_empty() {
        return Ok(None);
    }
    out.chains.sort();
    out.dispatch.sort();
    Ok(Some(out))
}

/// The element limit of one endpoint direction, and whom to name when it is exceeded.
struct Limit<'a> {
    endpoint: &'a ObjectName,
    direction: Direction,
    max: usize,
}

impl Limit<'_> {
    /// Refuses `needed` elements of `field` over the limit.
    fn check(&self, field: &str, needed: usize) -> Result<(), Error> {
        if needed <= self.max {
            return Ok(());
        }
        let direction = match self.direction {
            Direction::Ingress => "ingress",
            Direction::Egress => "egress",
        };
        Err(Error::CapacityExceeded {
            what: format!(
                "nftables policy elements of endpoint {} {direction} ({field}; NetfilterConfig::max_policy_elements)",
                self.endpoint
            ),
            needed,
            capacity: self.max,
        })
    }
}

/// The rules of an isolated direction: allow entries grouped by peer, then a counted drop.
/// More than `limit` elements in the direction's sets is refused before the ipBlock
/// expansion's work grows with it.
fn direction_rules(
    direction: Direction,
    table: &DirectionTable,
    families: &BTreeSet<IpFamily>,
    names: &BTreeMap<SetId, String>,
    limit: &Limit<'_>,
) -> Result<Vec<String>, Error> {
    let mut any: BTreeSet<PortSpec> = BTreeSet::new();
    let mut by_set: BTreeMap<&SetId, BTreeSet<PortSpec>> = BTreeMap::new();
    // ipBlock prefixes (cidrs and excepts), once per protocol and port range.
    let mut block_specs = 0usize;
    for e in &table.entries {
        match &e.peer {
            Peer::Any => {
                any.insert((e.protocol, e.ports));
            }
            Peer::Set(id) => {
                by_set.entry(id).or_default().insert((e.protocol, e.ports));
            }
            // Answered by the merged longest-prefix table below.
            Peer::Block(prefixes) => block_specs += prefixes.len(),
        }
    }
    let port_elements = any.len() + by_set.values().map(BTreeSet::len).sum::<usize>();
    limit.check("ports of pod and namespace peers", port_elements)?;
    // The ipBlock entries (cidrs and excepts, with their ports) bound the table below: refuse
    // an oversized one before building it.
    limit.check("ipBlock cidrs, excepts and their ports", block_specs)?;
    let mut rules = Vec::new();
    if !any.is_empty() {
        rules.push(format!("{}return", port_match(&any)));
    }
    let blocks = table.block_table();
    limit.check("ipBlock prefixes", blocks.len())?;
    let field = direction.peer_field();
    let mut written = port_elements;
    for f in families {
        let ip = ip_kw(*f);
        for (id, specs) in &by_set {
            let stem = names.get(*id).ok_or_else(|| NetfilterError::Internal {
                backend: "nftables",
                detail: format!("peer set {id} has no name"),
            })?;
            rules.push(format!(
                "{ip} {field} @{} {}return",
                set_name(*f, stem),
                port_match(specs)
            ));
        }
        let (every_port, by_port) = block_elements(&blocks, *f);
        written += every_port.len() + by_port.len();
        limit.check("ipBlock prefixes x protocols x port ranges", written)?;
        if !every_port.is_empty() {
            rules.push(format!(
                "{ip} {field} {{ {} }} return",
                every_port.join(", ")
            ));
        }
        if !by_port.is_empty() {
            rules.push(format!(
                "{ip} {field} . meta l4proto . th dport {{ {} }} return",
                by_port.join(", ")
            ));
        }
    }
    // Logged, counted and dropped in the services' base chain (see `crate::eventlog`).
    let deny = match direction {
        Direction::Ingress => DENY_POLICY_IN_CHAIN,
        Direction::Egress => DENY_POLICY_OUT_CHAIN,
    };
    rules.push(format!("goto {deny}"));
    Ok(rules)
}

/// The elements of a direction's ipBlock rules for `family`: prefixes allowed on every
/// protocol, and `prefix . protocol . ports` elements. The merged longest-prefix table is
/// cut into disjoint ranges (each with the value of its longest matching prefix), and each
/// range written as the prefixes that cover it exactly: no two elements overlap.
fn block_elements(
    blocks: &BTreeMap<IpNetwork, BTreeSet<PortSpec>>,
    family: IpFamily,
) -> (Vec<String>, Vec<String>) {
    let bits: u32 = match family {
        IpFamily::V4 => 32,
        IpFamily::V6 => 128,
    };
    let prefixes: Vec<(u128, u128, u8, &BTreeSet<PortSpec>)> = blocks
        .iter()
        .filter(|(n, _)| IpFamily::of(&n.ip()) == family)
        .map(|(n, specs)| {
            let start = addr_value(n.network());
            (
                start,
                start | host_mask(bits, n.prefix()),
                n.prefix(),
                specs,
            )
        })
        .collect();
    let mut bounds: BTreeSet<u128> = BTreeSet::new();
    for (start, end, _, _) in &prefixes {
        bounds.insert(*start);
        if let Some(next) = end.checked_add(1).filter(|n| *n <= max_value(bits)) {
            bounds.insert(next);
        }
    }
    let bounds: Vec<u128> = bounds.into_iter().collect();
    let mut ranges: Vec<(u128, u128, &BTreeSet<PortSpec>)> = Vec::new();
    for (i, lo) in bounds.iter().enumerate() {
        let hi = bounds.get(i + 1).map_or(max_value(bits), |next| next - 1);
        let Some((_, _, _, specs)) = prefixes
            .iter()
            .filter(|(s, e, _, _)| s <= lo && lo <= e)
            .max_by_key(|(_, _, len, _)| *len)
        else {
            continue;
        };
        match ranges.last_mut() {
            Some(last) if last.1.checked_add(1) == Some(*lo) && last.2 == *specs => last.1 = hi,
            _ => ranges.push((*lo, hi, specs)),
        }
    }
    let mut every_port = Vec::new();
    let mut by_port = Vec::new();
    for (lo, hi, specs) in ranges {
        if specs.is_empty() {
            continue;
        }
        let nets = range_prefixes(lo, hi, family);
        if specs.iter().any(|(p, _)| p.is_none()) {
            every_port.extend(nets.iter().map(ToString::to_string));
            continue;
        }
        for (p, port_ranges) in merged_ports(specs) {
            for r in port_ranges {
                for n in &nets {
                    by_port.push(format!("{n} . {} . {}", proto_name(p), port_text(r)));
                }
            }
        }
    }
    (every_port, by_port)
}

/// What a partial sync changes in the policy part ([`compile_patch`]).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct PolicyPatch {
    /// The layer's node-wide statements, when it is created by this patch.
    pub base: Vec<String>,
    /// The layer's node-wide statements, when it is removed by this patch (the last policy
    /// went): its chains, sets and maps are deleted at the end of the transaction.
    pub base_removed: Vec<String>,
    /// What changed, as core computed it.
    pub delta: PolicyDelta,
    /// Name stems of the new sets.
    pub sets_added: BTreeMap<SetId, String>,
    /// Name stems of the sets gone.
    pub sets_removed: BTreeMap<SetId, String>,
    /// The endpoints whose objects changed: their new objects (`None`: none any more).
    pub endpoints: BTreeMap<ObjectName, Option<EndpointRules>>,
    /// Anti-spoofing pairs added (all of them when the layer is created).
    pub spoof_added: BTreeSet<(String, IpAddr)>,
    /// Anti-spoofing pairs removed (none when the layer goes: its sets go whole).
    pub spoof_removed: BTreeSet<(String, IpAddr)>,
    /// The hashed names after the patch.
    pub names: Names,
    /// The cluster tiers' objects, when they change.
    pub tiers: Option<NftTiers>,
    /// The host policy objects, when they change.
    pub host: Option<NftHost>,
}

impl PolicyPatch {
    /// Whether the patch changes nothing but members of existing peer sets and
    /// anti-spoofing elements (the element path: no chain, set or map element of another
    /// kind is touched).
    pub fn members_only(&self) -> bool {
        self.base.is_empty()
            && self.base_removed.is_empty()
            && self.sets_added.is_empty()
            && self.sets_removed.is_empty()
            && self.endpoints.is_empty()
            && self.tiers.is_none()
            && self.host.is_none()
    }
}

/// Compiles what `changes` (which led to `state`) change in `old`: core's incremental
/// [`CompiledPolicy::update`], then the objects of the endpoints whose tables changed only;
/// `max_elements` as in [`compile`].
///
/// Core's tables (`old.compiled`) are updated in place: a copy would cost as much as the
/// whole policy (every member of every set) on each change. The rest of `old` (set names,
/// endpoint objects) stays as the kernel has it until [`NftPolicy::apply_patch`], which
/// [`write_patch`] needs. So after an error here, or a patch the kernel refuses, `old` no
/// longer matches the kernel: the backend's next sync is a full one.
pub fn compile_patch(
    old: &mut NftPolicy,
    state: &DesiredState,
    changes: &ChangeSet,
    max_elements: usize,
) -> Result<PolicyPatch, Error> {
    let delta = old.compiled.update(state, changes);
    let old: &NftPolicy = old;
    let compiled = &old.compiled;
    let had_layer = !old.base.is_empty();
    let layer = state.has_pod_policy();
    let mut names = old.names.clone();
    let mut set_names = old.set_names.clone();
    for id in &delta.sets_removed {
        if let Some(stem) = set_names.remove(id) {
            names.sets.remove(&stem);
        }
    }
    let mut sets_added = BTreeMap::new();
    for id in delta.sets_added.keys() {
        let stem = set_stem(id);
        names.claim_set(&stem, id)?;
        set_names.insert(id.clone(), stem.clone());
        sets_added.insert(id.clone(), stem);
    }
    let sets_removed: BTreeMap<SetId, String> = delta
        .sets_removed
        .iter()
        .filter_map(|id| old.set_names.get(id).map(|s| (id.clone(), s.clone())))
        .collect();
    let mut endpoints = BTreeMap::new();
    for name in delta
        .endpoints_changed
        .iter()
        .chain(&delta.endpoints_removed)
    {
        let new = match compiled.endpoints.get(name) {
            Some(tables) => endpoint_rules(name, tables, &set_names, max_elements, sha256_name)?,
            None => None,
        };
        if old.endpoints.get(name) != new.as_ref() {
            if let Some(o) = old.endpoints.get(name) {
                for (chain, _) in &o.chains {
                    names.chains.remove(chain);
                }
            }
            endpoints.insert(name.clone(), new);
        }
    }
    for (name, new) in &endpoints {
        for (chain, _) in new.iter().flat_map(|r| &r.chains) {
            names.claim_chain(chain, name)?;
        }
    }
    let (mut spoof_added, mut spoof_removed) = (BTreeSet::new(), BTreeSet::new());
    if layer && !had_layer {
        for e in &state.endpoints {
            check_interface(e)?;
            spoof_added.extend(spoof_pairs(e));
        }
    } else if layer {
        for change in changes.endpoints.values() {
            let before: BTreeSet<_> = change.previous.iter().flat_map(spoof_pairs).collect();
            let after: BTreeSet<_> = change.current.iter().flat_map(spoof_pairs).collect();
            if let Some(e) = &change.current {
                check_interface(e)?;
            }
            spoof_removed.extend(before.difference(&after).cloned());
            spoof_added.extend(after.difference(&before).cloned());
        }
    }
    Ok(PolicyPatch {
        base: if layer && !had_layer {
            base(&state.node)
        } else {
            Vec::new()
        },
        base_removed: if had_layer && !layer {
            old.base.clone()
        } else {
            Vec::new()
        },
        delta,
        sets_added,
        sets_removed,
        endpoints,
        spoof_added,
        spoof_removed,
        names,
        tiers: Some(super::tiers::compile(state)).filter(|t| *t != old.tiers),
        host: Some(super::host::compile(state)).filter(|h| *h != old.host),
    })
}

impl NftPolicy {
    /// Records a patch the kernel accepted (its tables are in `compiled` already, see
    /// [`compile_patch`]).
    pub fn apply_patch(&mut self, patch: PolicyPatch) {
        if !patch.base.is_empty() {
            self.base = patch.base;
        }
        if !patch.base_removed.is_empty() {
            self.base.clear();
            self.spoof.clear();
        }
        for id in patch.sets_removed.keys() {
            self.set_names.remove(id);
        }
        self.set_names.extend(patch.sets_added);
        for pair in &patch.spoof_removed {
            self.spoof.remove(pair);
        }
        self.spoof.extend(patch.spoof_added);
        self.names = patch.names;
        if let Some(t) = patch.tiers {
            self.tiers = t;
        }
        if let Some(h) = patch.host {
            self.host = h;
        }
        for (name, rules) in patch.endpoints {
            match rules {
                Some(r) => self.endpoints.insert(name, r),
                None => self.endpoints.remove(&name),
            };
        }
    }

    /// The members of each peer set by set name (both families).
    fn members(&self) -> impl Iterator<Item = (String, IpAddr)> + '_ {
        self.compiled.sets.iter().flat_map(move |(id, set)| {
            let stem = self.set_names.get(id);
            set.members
                .iter()
                .filter_map(move |ip| stem.map(|s| (set_name(IpFamily::of(ip), s), *ip)))
        })
    }
}

/// Writes `verb element` lines for `items` (set name, element text), grouped by set (in the
/// order met), at most [`ELEMENTS_PER_LINE`] to a line.
fn element_lines<W: std::fmt::Write + ?Sized>(
    table: &str,
    verb: &str,
    items: impl IntoIterator<Item = (String, String)>,
    out: &mut W,
) -> std::fmt::Result {
    let mut by_set: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for (set, e) in items {
        by_set.entry(set).or_default().push(e);
    }
    for (set, elements) in by_set {
        for chunk in elements.chunks(ELEMENTS_PER_LINE) {
            writeln!(
                out,
                "{verb} element inet {table} {set} {{ {} }}",
                chunk.join(", ")
            )?;
        }
    }
    Ok(())
}

fn dispatch_element(d: &Dispatch, with_value: bool) -> (String, String) {
    let value = if with_value {
        format!("{} : jump {}", d.ip, d.chain)
    } else {
        d.ip.to_string()
    };
    (d.map().to_owned(), value)
}

fn set_lines<W: std::fmt::Write + ?Sized>(
    table: &str,
    verb: &str,
    stem: &str,
    out: &mut W,
) -> std::fmt::Result {
    for f in FAMILIES {
        if verb == "add" {
            writeln!(
                out,
                "add set inet {table} {} {{ type {}; }}",
                set_name(f, stem),
                addr_type(f)
            )?;
        } else {
            writeln!(out, "{verb} set inet {table} {}", set_name(f, stem))?;
        }
    }
    Ok(())
}

/// Writes the policy part of a full-sync transaction (after the services', whose `hairpin`
/// sets it uses).
pub fn write_full<W: std::fmt::Write + ?Sized>(
    p: &NftPolicy,
    table: &str,
    out: &mut W,
) -> std::fmt::Result {
    for stmt in &p.base {
        let (kind, rest) = stmt.split_once(' ').unwrap_or((stmt, ""));
        writeln!(out, "add {kind} inet {table} {rest}")?;
    }
    for stem in p.set_names.values() {
        set_lines(table, "add", stem, out)?;
    }
    let ifaces: BTreeSet<&String> = p.spoof.iter().map(|(i, _)| i).collect();
    element_lines(
        table,
        "add",
        spoof_items(&p.spoof, ifaces.into_iter().cloned()),
        out,
    )?;
    element_lines(
        table,
        "add",
        p.members().map(|(s, ip)| (s, ip.to_string())),
        out,
    )?;
    for rules in p.endpoints.values() {
        for (chain, _) in &rules.chains {
            writeln!(out, "add chain inet {table} {chain}")?;
        }
    }
    for rules in p.endpoints.values() {
        for (chain, rules) in &rules.chains {
            for r in rules {
                writeln!(out, "add rule inet {table} {chain} {r}")?;
            }
        }
    }
    element_lines(
        table,
        "add",
        p.endpoints
            .values()
            .flat_map(|r| r.dispatch.iter().map(|d| dispatch_element(d, true))),
        out,
    )?;
    super::tiers::write_add(&p.tiers, &BTreeSet::new(), table, out)?;
    super::host::write_add(&p.host, &BTreeSet::new(), table, out)
}

/// The policy part of a partial-sync transaction: `old` → `patch`, touching only the
/// changed endpoints' chains and dispatch elements and the changed sets' elements; chains
/// whose rules change are flushed and refilled in the same transaction (no moment without
/// rules).
pub fn write_patch<W: std::fmt::Write + ?Sized>(
    old: &NftPolicy,
    patch: &PolicyPatch,
    table: &str,
    out: &mut W,
) -> std::fmt::Result {
    let t = table;
    for stmt in &patch.base {
        let (kind, rest) = stmt.split_once(' ').unwrap_or((stmt, ""));
        writeln!(out, "add {kind} inet {t} {rest}")?;
    }
    // The tiers' chains reference NetworkPolicy's endpoint chains: out first, in last.
    let kept = write_extras_remove(old, patch, t, out)?;
    let empty = EndpointRules::default();
    // Dispatch elements first out (they reference the chains deleted below), last in.
    let mut del_dispatch = Vec::new();
    let mut add_dispatch = Vec::new();
    for (name, new) in &patch.endpoints {
        let o = old.endpoints.get(name).unwrap_or(&empty);
        let n = new.as_ref().unwrap_or(&empty);
        del_dispatch.extend(o.dispatch.iter().filter(|d| !n.dispatch.contains(d)));
        add_dispatch.extend(n.dispatch.iter().filter(|d| !o.dispatch.contains(d)));
    }
    element_lines(
        t,
        "delete",
        del_dispatch.iter().map(|d| dispatch_element(d, false)),
        out,
    )?;
    element_lines(t, "delete", member_items(old, patch, true), out)?;
    let (ifaces_added, ifaces_removed) = iface_changes(&old.spoof, patch);
    for (verb, pairs, ifaces) in [
        ("delete", &patch.spoof_removed, ifaces_removed),
        ("add", &patch.spoof_added, ifaces_added),
    ] {
        element_lines(t, verb, spoof_items(pairs, ifaces), out)?;
    }
    for stem in patch.sets_added.values() {
        set_lines(t, "add", stem, out)?;
    }
    element_lines(
        t,
        "add",
        patch.delta.sets_added.iter().flat_map(|(id, members)| {
            let stem = patch.sets_added.get(id);
            members
                .iter()
                .filter_map(move |ip| stem.map(|s| (set_name(IpFamily::of(ip), s), ip.to_string())))
        }),
        out,
    )?;
    let mut deleted = Vec::new();
    for (name, new) in &patch.endpoints {
        let o = old.endpoints.get(name).unwrap_or(&empty);
        let n = new.as_ref().unwrap_or(&empty);
        for (chain, rules) in &n.chains {
            match o.chain(chain) {
                Some(r) if r == rules.as_slice() => continue,
                Some(_) => writeln!(out, "flush chain inet {t} {chain}")?,
                None => writeln!(out, "add chain inet {t} {chain}")?,
            }
            for r in rules {
                writeln!(out, "add rule inet {t} {chain} {r}")?;
            }
        }
        for (chain, _) in &o.chains {
            if n.chain(chain).is_none() {
                writeln!(out, "flush chain inet {t} {chain}")?;
                deleted.push(chain);
            }
        }
    }
    for chain in deleted {
        writeln!(out, "delete chain inet {t} {chain}")?;
    }
    for stem in patch.sets_removed.values() {
        set_lines(t, "delete", stem, out)?;
    }
    element_lines(t, "add", member_items(old, patch, false), out)?;
    element_lines(
        t,
        "add",
        add_dispatch.iter().map(|d| dispatch_element(d, true)),
        out,
    )?;
    write_extras_add(patch, &kept, t, out)?;
    // The last policy went: the layer goes (its endpoint chains and peer sets went above),
    // so that a node without policies has no policy hook at all.
    let objects = || {
        patch
            .base_removed
            .iter()
            .filter_map(|stmt| stmt.split_once(' '))
            .map(|(kind, rest)| (kind, rest.split(' ').next().unwrap_or(rest)))
    };
    for (_, chain) in objects().filter(|(k, _)| *k == "chain") {
        writeln!(out, "flush chain inet {t} {chain}")?;
    }
    for (_, chain) in objects().filter(|(k, _)| *k == "chain") {
        writeln!(out, "delete chain inet {t} {chain}")?;
    }
    for (kind, name) in objects().filter(|(k, _)| *k == "set" || *k == "map") {
        writeln!(out, "delete {kind} inet {t} {name}")?;
    }
    Ok(())
}

/// What [`write_extras_remove`] kept (flushed, to be refilled): tier chains, host objects.
type Kept<'a> = (BTreeSet<&'a str>, BTreeSet<String>);

/// The removal half of replacing the tier and host parts that `patch` changes.
fn write_extras_remove<'a, W: std::fmt::Write + ?Sized>(
    old: &'a NftPolicy,
    patch: &PolicyPatch,
    t: &str,
    out: &mut W,
) -> Result<Kept<'a>, std::fmt::Error> {
    let tiers = match &patch.tiers {
        Some(new) => super::tiers::write_remove(&old.tiers, new, t, out)?,
        None => BTreeSet::new(),
    };
    let host = match &patch.host {
        Some(new) => super::host::write_remove(&old.host, new, t, out)?,
        None => BTreeSet::new(),
    };
    Ok((tiers, host))
}

/// The adding half of replacing the tier and host parts that `patch` changes.
fn write_extras_add<W: std::fmt::Write + ?Sized>(
    patch: &PolicyPatch,
    (tiers, host): &Kept<'_>,
    t: &str,
    out: &mut W,
) -> std::fmt::Result {
    if let Some(new) = &patch.tiers {
        super::tiers::write_add(new, tiers, t, out)?;
    }
    if let Some(new) = &patch.host {
        super::host::write_add(new, host, t, out)?;
    }
    Ok(())
}

/// The anti-spoofing elements of `pairs` and `ifaces`: (set, element text).
fn spoof_items<'a>(
    pairs: &'a BTreeSet<(String, IpAddr)>,
    ifaces: impl IntoIterator<Item = String> + 'a,
) -> impl Iterator<Item = (String, String)> + 'a {
    pairs.iter().map(spoof_element).chain(
        ifaces
            .into_iter()
            .map(|i| (IFACES.to_owned(), format!("\"{i}\""))),
    )
}

/// An anti-spoofing element: (set, `"interface" . address`).
fn spoof_element((iface, ip): &(String, IpAddr)) -> (String, String) {
    (
        spoof_set(IpFamily::of(ip)).to_owned(),
        format!("\"{iface}\" . {ip}"),
    )
}

/// The interfaces `patch` adds to and removes from the interface set: those that gain their
/// first anti-spoofing pair or lose their last.
fn iface_changes(
    old: &BTreeSet<(String, IpAddr)>,
    patch: &PolicyPatch,
) -> (Vec<String>, Vec<String>) {
    let touched: BTreeSet<&String> = patch
        .spoof_added
        .iter()
        .chain(&patch.spoof_removed)
        .map(|(i, _)| i)
        .collect();
    let (mut added, mut removed) = (Vec::new(), Vec::new());
    let lo = IpAddr::V4(Ipv4Addr::UNSPECIFIED);
    let hi = IpAddr::V6(Ipv6Addr::from(u128::MAX));
    for iface in touched {
        let count = |set: &BTreeSet<(String, IpAddr)>| {
            set.range((iface.clone(), lo)..=(iface.clone(), hi)).count()
        };
        let before = count(old) > 0;
        let after =
            count(old).saturating_sub(count(&patch.spoof_removed)) + count(&patch.spoof_added) > 0;
        match (before, after) {
            (false, true) => added.push(iface.clone()),
            (true, false) => removed.push(iface.clone()),
            _ => {}
        }
    }
    (added, removed)
}

/// The member elements of the kept sets that `patch` removes (`removed`) or adds.
fn member_items<'a>(
    old: &'a NftPolicy,
    patch: &'a PolicyPatch,
    removed: bool,
) -> impl Iterator<Item = (String, String)> + 'a {
    member_changes(old, patch)
        .filter(move |(_, _, delete)| *delete == removed)
        .map(|(set, ip, _)| (set, ip.to_string()))
}

/// `(set name, address, delete)` for every member change of a kept set.
fn member_changes<'a>(
    old: &'a NftPolicy,
    patch: &'a PolicyPatch,
) -> impl Iterator<Item = (String, IpAddr, bool)> + 'a {
    patch
        .delta
        .members_changed
        .iter()
        .filter_map(move |(id, change)| old.set_names.get(id).map(|stem| (stem, change)))
        .flat_map(|(stem, change)| {
            let removed = change
                .removed
                .iter()
                .map(move |ip| (set_name(IpFamily::of(ip), stem), *ip, true));
            let added = change
                .added
                .iter()
                .map(move |ip| (set_name(IpFamily::of(ip), stem), *ip, false));
            removed.chain(added)
        })
}

/// The netlink element operations of a members-only patch ([`PolicyPatch::members_only`]):
/// deletes first, as in a transaction.
pub(super) fn member_ops(old: &NftPolicy, patch: &PolicyPatch) -> Vec<netlink::ElementOp> {
    let mut ops: Vec<netlink::ElementOp> = member_changes(old, patch)
        .map(|(set, ip, delete)| netlink::ElementOp {
            set: Cow::Owned(set),
            key: netlink::addr_bytes(&ip),
            data: None,
            delete,
        })
        .collect();
    // Anti-spoofing pairs and interfaces (an endpoint added or removed): `ifname` keys are
    // the name NUL-padded to `IFNAMSIZ`, concatenated with the address.
    let (ifaces_added, ifaces_removed) = iface_changes(&old.spoof, patch);
    for (delete, pairs, ifaces) in [
        (true, &patch.spoof_removed, ifaces_removed),
        (false, &patch.spoof_added, ifaces_added),
    ] {
        for (iface, ip) in pairs {
            ops.push(netlink::ElementOp {
                set: Cow::Borrowed(spoof_set(IpFamily::of(ip))),
                key: netlink::ifname_bytes(iface).with(&netlink::addr_bytes(ip)),
                data: None,
                delete,
            });
        }
        for iface in ifaces {
            ops.push(netlink::ElementOp {
                set: Cow::Borrowed(IFACES),
                key: netlink::ifname_bytes(&iface),
                data: None,
                delete,
            });
        }
    }
    // Stable: deletes before adds, each group in set order (consecutive operations on one
    // set share a netlink message).
    ops.sort_by(|a, b| (!a.delete, &a.set).cmp(&(!b.delete, &b.set)));
    ops
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::nft::rule_text::MAX_CHAIN_NAME;
    use dataplane_core::Protocol;

    fn net(s: &str) -> IpNetwork {
        s.parse().unwrap()
    }

    #[test]
    fn ranges_are_covered_by_the_fewest_prefixes() {
        let v = |s: &str| addr_value(s.parse().unwrap());
        let got = range_prefixes(v("10.0.0.0"), v("10.0.0.255"), IpFamily::V4);
        assert_eq!(got, vec![net("10.0.0.0/24")]);
        let got = range_prefixes(v("10.0.0.1"), v("10.0.0.6"), IpFamily::V4);
        assert_eq!(
            got,
            vec![
                net("10.0.0.1/32"),
                net("10.0.0.2/31"),
                net("10.0.0.4/31"),
                net("10.0.0.6/32")
            ]
        );
        assert_eq!(
            range_prefixes(0, max_value(32), IpFamily::V4),
            vec![net("0.0.0.0/0")]
        );
        assert_eq!(
            range_prefixes(0, u128::MAX, IpFamily::V6),
            vec![net("::/0")]
        );
    }

    #[test]
    fn block_table_becomes_disjoint_prefixes_with_holes_for_excepts() {
        let all: BTreeSet<PortSpec> = [(None, (0, 65535))].into();
        let tcp80: BTreeSet<PortSpec> = [(Some(Protocol::Tcp), (80, 80))].into();
        let blocks: BTreeMap<IpNetwork, BTreeSet<PortSpec>> = [
            (net("10.0.0.0/8"), all.clone()),
            (net("10.1.0.0/16"), BTreeSet::new()),
            (net("10.1.2.0/24"), tcp80.clone()),
        ]
        .into();
        let (every, by_port) = block_elements(&blocks, IpFamily::V4);
        assert_eq!(
            every,
            vec![
                "10.0.0.0/16",
                "10.2.0.0/15",
                "10.4.0.0/14",
                "10.8.0.0/13",
                "10.16.0.0/12",
                "10.32.0.0/11",
                "10.64.0.0/10",
                "10.128.0.0/9"
            ]
        );
        assert_eq!(by_port, vec!["10.1.2.0/24 . tcp . 80"]);
        assert_eq!(block_elements(&blocks, IpFamily::V6), (vec![], vec![]));
    }

    /// One parsed element: a prefix and its protocol and ports (`None`: every protocol and
    /// port).
    type Parsed = (IpNetwork, Option<(Protocol, (u16, u16))>);

    /// Parses the elements `block_elements` writes back.
    fn parse_elements((every, by_port): &(Vec<String>, Vec<String>)) -> Vec<Parsed> {
        let mut out: Vec<Parsed> = every.iter().map(|n| (net(n), None)).collect();
        for e in by_port {
            let parts: Vec<&str> = e.split(" . ").collect();
            let proto = match parts[1] {
                "tcp" => Protocol::Tcp,
                "udp" => Protocol::Udp,
                _ => Protocol::Sctp,
            };
            let (lo, hi) = parts[2].split_once('-').unwrap_or((parts[2], parts[2]));
            out.push((
                net(parts[0]),
                Some((proto, (lo.parse().unwrap(), hi.parse().unwrap()))),
            ));
        }
        out
    }

    proptest::proptest! {
        /// The written elements answer as the longest-prefix table does, for every address
        /// and port, and no two elements a lookup could both hit overlap (which nf_tables
        /// interval sets refuse).
        #[test]
        fn block_elements_answer_as_the_longest_prefix_table(
            prefixes in proptest::collection::vec((0u32..1 << 16, 8u8..=32, 0usize..5), 1..7),
            probes in proptest::collection::vec((0u32..1 << 16, 0usize..4), 1..40),
        ) {
            let choices: [BTreeSet<PortSpec>; 5] = [
                BTreeSet::new(),
                [(None, (0, 65535))].into(),
                [(Some(Protocol::Tcp), (80, 81))].into(),
                [(Some(Protocol::Tcp), (81, 90)), (Some(Protocol::Udp), (53, 53))].into(),
                [(Some(Protocol::Sctp), (0, 65535))].into(),
            ];
            // Addresses in 10.0.0.0/8 whose low 16 bits vary, so that prefixes nest and meet.
            let addr = |low: u32| IpAddr::V4(Ipv4Addr::from(0x0a00_0000 | (low << 8) | (low & 0xff)));
            let mut table: BTreeMap<IpNetwork, BTreeSet<PortSpec>> = BTreeMap::new();
            for (low, len, choice) in &prefixes {
                let n = IpNetwork::new(addr(*low), *len).unwrap();
                let n = IpNetwork::new(n.network(), *len).unwrap();
                table.insert(n, choices[*choice].clone());
            }
            let elements = parse_elements(&block_elements(&table, IpFamily::V4));
            for (i, (a, pa)) in elements.iter().enumerate() {
                for (b, pb) in &elements[i + 1..] {
                    let nets_overlap = a.contains(b.network()) || b.contains(a.network());
                    let ports_overlap = match (pa, pb) {
                        (None, None) => true,
                        (Some((p, (l1, h1))), Some((q, (l2, h2)))) => p == q && l1 <= h2 && l2 <= h1,
                        _ => false,
                    };
                    proptest::prop_assert!(!(nets_overlap && ports_overlap), "{a} {pa:?} / {b} {pb:?}");
                }
            }
            let packets = [(Protocol::Tcp, 80), (Protocol::Tcp, 85), (Protocol::Udp, 53), (Protocol::Sctp, 9)];
            for (low, k) in probes {
                let ip = addr(low);
                let (proto, port) = packets[k];
                let expected = table
                    .iter()
                    .filter(|(n, _)| n.contains(ip))
                    .max_by_key(|(n, _)| n.prefix())
                    .is_some_and(|(_, specs)| specs.iter().any(|(p, (lo, hi))| {
                        p.is_none_or(|p| p == proto) && (*lo..=*hi).contains(&port)
                    }));
                let got = elements.iter().any(|(n, spec)| n.contains(ip) && spec.is_none_or(|(p, (lo, hi))| {
                    p == proto && (lo..=hi).contains(&port)
                }));
                proptest::prop_assert_eq!(got, expected, "{} {:?} {}", ip, proto, port);
            }
        }
    }

    #[test]
    fn ports_of_a_protocol_are_merged() {
        let specs: BTreeSet<PortSpec> = [
            (Some(Protocol::Tcp), (80, 81)),
            (Some(Protocol::Tcp), (82, 90)),
            (Some(Protocol::Udp), (53, 53)),
        ]
        .into();
        assert_eq!(
            port_match(&specs),
            "meta l4proto . th dport { tcp . 80-90, udp . 53 } "
        );
        let one: BTreeSet<PortSpec> = [(Some(Protocol::Sctp), (0, 65535))].into();
        assert_eq!(port_match(&one), "meta l4proto sctp ");
    }

    use dataplane_core::{
        Endpoint as Ep, IpBlock, LabelSelector, Policy, PolicyPeer, PolicyPort, PolicyRule,
        PolicyType, PortRef,
    };

    fn selector(app: &str) -> LabelSelector {
        LabelSelector {
            match_labels: [("app".to_owned(), app.to_owned())].into(),
            match_expressions: Vec::new(),
        }
    }

    /// Local endpoints `names` (label `app=<name>`, one address each) and, for each, an
    /// ingress policy selecting it that allows `peers` on TCP 80.
    fn state(names: &[&str], peers: &[PolicyPeer]) -> DesiredState {
        let mut s = DesiredState::new(Node::new("n", ["172.18.0.10".parse().unwrap()]));
        for (i, name) in names.iter().enumerate() {
            let ip: IpAddr = format!("10.244.0.{}", i + 2).parse().unwrap();
            s.endpoints.push(
                Ep::new(ObjectName::new("x", *name), format!("veth{i}"), [ip])
                    .with_label("app", *name),
            );
            s.policies.push(Policy {
                name: ObjectName::new("x", format!("p{i}")),
                pod_selector: selector(name),
                policy_types: vec![PolicyType::Ingress],
                ingress: vec![PolicyRule {
                    peers: peers.to_vec(),
                    ports: vec![PolicyPort {
                        protocol: Protocol::Tcp,
                        port: Some(PortRef::Number(80)),
                        end_port: None,
                    }],
                }],
                egress: Vec::new(),
            });
        }
        s
    }

    fn pod_peer(app: &str) -> PolicyPeer {
        PolicyPeer {
            pod_selector: Some(selector(app)),
            namespace_selector: None,
            ip_block: None,
        }
    }

    /// The collision an error reports: (name, first, second).
    fn collision(e: &Error) -> (String, String, String) {
        let Error::Kernel { source, .. } = e else {
            panic!("{e:?}");
        };
        match source.downcast_ref::<NetfilterError>() {
            Some(NetfilterError::NameCollision {
                name,
                first,
                second,
                ..
            }) => (name.clone(), first.clone(), second.clone()),
            _ => panic!("{e:?}"),
        }
    }

    /// A hash that always collides: the seam that shows collisions are refused.
    fn constant(_: &str) -> String {
        "0".repeat(32)
    }

    #[test]
    fn two_peer_sets_with_one_name_are_refused() {
        let s = state(&["a", "b"], &[pod_peer("b"), pod_peer("c")]);
        assert!(compile_with(&s, 4096, sha256_name).is_ok());
        let s = state(&["a"], &[pod_peer("b"), pod_peer("c")]);
        let e = compile_with(&s, 4096, constant).unwrap_err();
        let (name, first, second) = collision(&e);
        assert_eq!(name, format!("pset-v4-{}", constant("")));
        let named: BTreeSet<String> = [first, second].into();
        let sets: BTreeSet<String> = compile_tables(&s)
            .sets
            .keys()
            .map(|id| format!("peer set {id}"))
            .collect();
        assert_eq!(named, sets);
        assert!(e.to_string().contains("rendering"), "{e}");
    }

    #[test]
    fn two_cut_chains_with_one_name_are_refused() {
        let long = |last: char| {
            format!(
                "{}.{}.{}.{}{last}",
                "a".repeat(62),
                "b".repeat(62),
                "c".repeat(62),
                "d".repeat(62)
            )
        };
        let (one, two) = (long('e'), long('f'));
        let s = state(&[&one, &two], &[pod_peer("z")]);
        let ok = compile_with(&s, 4096, sha256_name).unwrap();
        assert_eq!(ok.endpoints.len(), 2);
        let e = compile_with(&s, 4096, constant).unwrap_err();
        let (name, first, second) = collision(&e);
        assert!(
            name.starts_with("pol-in-x/aaa") && name.ends_with(&constant("")),
            "{name}"
        );
        assert!(
            first.contains(&one) && second.contains(&two),
            "{first} / {second}"
        );
    }

    #[test]
    fn an_oversized_ip_block_is_refused_naming_endpoint_and_field() {
        let block = PolicyPeer {
            pod_selector: None,
            namespace_selector: None,
            ip_block: Some(IpBlock {
                cidr: net("10.0.0.0/8"),
                except: (0..40)
                    .map(|i| net(&format!("10.{}.1.0/24", i * 5)))
                    .collect(),
            }),
        };
        let s = state(&["a"], &[block]);
        let written = compile(&s, 4096).unwrap();
        let rules = &written.endpoints[&ObjectName::new("x", "a")].chains[0].1;
        let elements = rules
            .iter()
            .map(|r| r.matches(" . tcp . ").count())
            .sum::<usize>();
        assert!(elements > 100, "{elements}");
        match compile(&s, 100) {
            Err(Error::CapacityExceeded {
                what,
                needed,
                capacity,
            }) => {
                assert!(
                    what.contains("x/a") && what.contains("ingress") && what.contains("ipBlock"),
                    "{what}"
                );
                assert!(needed > 100 && capacity == 100);
            }
            other => panic!("{other:?}"),
        }
        // The cidrs and excepts alone over the limit: refused before the expansion.
        match compile(&s, 10) {
            Err(Error::CapacityExceeded { what, needed, .. }) => {
                assert!(what.contains("excepts"), "{what}");
                assert_eq!(needed, 41);
            }
            other => panic!("{other:?}"),
        }
    }

    /// An interface name nft cannot quote (core's validation takes it: the kernel does) is
    /// refused with the endpoint and field named, not written into a broken transaction.
    #[test]
    fn an_unquotable_interface_is_refused() {
        let mut s = state(&["a"], &[pod_peer("b")]);
        s.endpoints[0].interface = "veth\"x".to_owned();
        match compile(&s, 4096) {
            Err(Error::Unsupported { object, .. }) => {
                assert_eq!(object, "endpoint x/a field interface");
            }
            other => panic!("{other:?}"),
        }
        s.policies.clear();
        assert!(compile(&s, 4096).is_ok(), "no policy, no anti-spoofing set");
    }

    /// Every chain name is a valid unquoted nft identifier, and within `nf_tables`' length,
    /// for the longest namespace and pod names (63 and 253 characters).
    #[test]
    fn longest_names_are_valid_identifiers() {
        let pod = format!(
            "{}.{}.{}.{}",
            "a".repeat(63),
            "b".repeat(63),
            "c".repeat(63),
            "d".repeat(61)
        );
        assert_eq!(pod.len(), 253);
        let e = ObjectName::new("n".repeat(63), pod);
        for d in [Direction::Ingress, Direction::Egress] {
            let name = chain_name(d, &e);
            assert!(name.len() <= MAX_CHAIN_NAME, "{}", name.len());
            let mut chars = name.chars();
            assert!(chars.next().is_some_and(|c| c.is_ascii_alphabetic()));
            assert!(
                chars.all(|c| c.is_ascii_alphanumeric() || "/\\_.-".contains(c)),
                "{name}"
            );
        }
    }

    #[test]
    fn long_chain_names_are_cut_and_hashed() {
        let long = ObjectName::new("ns", "p".repeat(253));
        let name = chain_name(Direction::Egress, &long);
        assert_eq!(name.len(), MAX_CHAIN_NAME);
        assert!(name.starts_with("pol-out-ns/ppp"), "{name}");
        let other = ObjectName::new("ns", format!("{}q", "p".repeat(252)));
        assert_ne!(chain_name(Direction::Egress, &other), name);
        assert_eq!(
            chain_name(Direction::Ingress, &ObjectName::new("x", "a")),
            "pol-in-x/a"
        );
    }
}
