//! The NetworkPolicy compiler: what every backend programs, derived once from a
//! [`DesiredState`] so that the backends agree with each other and with [`crate::policy`].
//!
//! [`compile`] gives, for each local endpoint ([`DesiredState::endpoints`]) and each direction,
//! whether it is isolated and its allow entries, plus the peer sets those entries name:
//!
//! - A [`PeerSet`] is the addresses (local endpoints and peer pods) selected by one
//!   canonical [`SetKey`]: `(namespaceSelector, podSelector, the policy's namespace when there
//!   is no namespaceSelector)`, so a thousand policies with the same peer share one set. Its
//!   [`SetId`] is the canonical key's text: the same selector has the same id in every compile,
//!   so a backend updates a set in place (it maps ids to its own numbers, as Calico names
//!   ipsets by a hash of the selector).
//! - A named port is resolved on the destination pod: on ingress on the local endpoint itself
//!   (the entry gets its number, or no entry when the endpoint has no such port); on egress on
//!   every destination, so the peer becomes the set of the selected pods that have that named
//!   port with one number (a [`SetKey`] with [`SetKey::named_port`]): one peer set can split in
//!   several by port.
//! - An `ipBlock` is an [`Peer::Block`]: the `cidr` as an allow prefix and each `except` as a
//!   deny prefix, looked up with **longest-prefix** semantics (deny wins at equal length).
//!   Chosen over an explicit disjoint list because it is what an LPM trie (BPF
//!   `LPM_TRIE`, nftables interval sets with a verdict map) programs directly, it stays as
//!   small as the policy (a disjoint list of `cidr - except` can take up to 32 (128) prefixes
//!   per except) and an element change is one prefix.
//!
//! The shape a backend programs so that a new connection costs the same whatever the number
//! of policies: an address → set-ids map (Cilium's ipcache/identities, Calico's ipsets;
//! [`CompiledPolicy::membership`]); per endpoint and direction a map keyed by
//! `(set id, protocol, port)` (port ranges as interval elements) and one LPM of all its
//! ipBlock prefixes ([`DirectionTable::block_table`], the per-entry tables merged). A lookup
//! is one membership lookup, one probe per set the peer is in, and one LPM lookup.
//! [`CompiledPolicy::allows`] is the reference answer those tables must give.
//!
//! Not in the tables, fixed rules every backend adds itself (as [`crate::policy`] says): traffic
//! between the node and its own pods, and a pod reaching its own address, are always allowed;
//! replies of allowed connections are allowed (connection tracking).

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::net::IpAddr;

use ipnetwork::IpNetwork;
use serde::{Deserialize, Serialize};

use crate::diff::{Change, ChangeSet};
use crate::model::{
    DesiredState, Endpoint, IpBlock, LabelSelector, NamedPort, ObjectName, Policy, PolicyPeer,
    PolicyRule, PolicyType, PortRef, Protocol,
};

/// The stable id of a [`PeerSet`]: the canonical text of its [`SetKey`].
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct SetId(pub String);

impl fmt::Display for SetId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// What selects a peer set's members, in canonical form (selector requirements and values
/// sorted).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SetKey {
    /// The peer's `namespaceSelector`.
    pub namespace_selector: Option<LabelSelector>,
    /// The peer's `podSelector`.
    pub pod_selector: Option<LabelSelector>,
    /// The policy's namespace, when there is no `namespaceSelector`.
    pub namespace: Option<String>,
    /// The pods in an `ipBlock` instead of selectors (for an egress named port only).
    pub ip_block: Option<IpBlock>,
    /// Only pods with this named container port (name, protocol and number): an egress rule's
    /// named port resolved on the destination.
    pub named_port: Option<NamedPort>,
}

impl SetKey {
    fn id(&self) -> SetId {
        // Serializing strings, maps of strings, numbers and enums cannot fail.
        SetId(serde_json::to_string(self).unwrap_or_default())
    }

    fn of_peer(policy: &Policy, peer: &PolicyPeer, named_port: Option<NamedPort>) -> Self {
        let namespace_selector = peer.namespace_selector.as_ref().map(canonical);
        Self {
            namespace: namespace_selector
                .is_none()
                .then(|| policy.name.namespace.to_string())
                .filter(|_| peer.ip_block.is_none()),
            namespace_selector,
            pod_selector: peer.pod_selector.as_ref().map(canonical),
            ip_block: peer.ip_block.clone(),
            named_port,
        }
    }

    /// Every pod of the cluster (a rule without peers), with `named_port`.
    fn every_pod(named_port: NamedPort) -> Self {
        Self {
            namespace_selector: Some(LabelSelector::default()),
            pod_selector: None,
            namespace: None,
            ip_block: None,
            named_port: Some(named_port),
        }
    }

    fn selects(
        &self,
        state: &DesiredState,
        name: &ObjectName,
        ip: IpAddr,
        labels: &BTreeMap<String, String>,
        named_ports: &[NamedPort],
    ) -> bool {
        self.selects_with(name, ip, labels, named_ports, |ns| {
            self.namespace_matches(state, ns)
        })
    }

    /// Whether the key's namespace part selects the pods of namespace `ns`.
    fn namespace_matches(&self, state: &DesiredState, ns: &str) -> bool {
        match (&self.namespace_selector, &self.namespace) {
            (Some(sel), _) => sel.matches(&state.namespace_labels(ns)),
            (None, Some(own)) => ns == own,
            (None, None) => false,
        }
    }

    /// [`SetKey::selects`] with the namespace part answered by `namespace_ok`.
    fn selects_with(
        &self,
        name: &ObjectName,
        ip: IpAddr,
        labels: &BTreeMap<String, String>,
        named_ports: &[NamedPort],
        namespace_ok: impl FnOnce(&str) -> bool,
    ) -> bool {
        let peer_ok = if let Some(block) = &self.ip_block {
            block.contains(ip)
        } else {
            self.pod_selector.as_ref().is_none_or(|s| s.matches(labels))
                && namespace_ok(&name.namespace)
        };
        peer_ok
            && self
                .named_port
                .as_ref()
                .is_none_or(|np| named_ports.contains(np))
    }

    fn members(&self, state: &DesiredState) -> BTreeSet<IpAddr> {
        // The namespace part once per namespace, not once per pod: `namespace_labels` looks
        // the namespace up and copies its labels (1k sets over 10k pods: 10M copies).
        let mut namespaces: BTreeMap<&str, bool> = BTreeMap::new();
        let endpoints = state
            .endpoints
            .iter()
            .map(|e| (&e.name, &e.ips, &e.labels, &e.named_ports));
        let pods = state
            .pods
            .iter()
            .map(|p| (&p.name, &p.ips, &p.labels, &p.named_ports));
        let mut out = BTreeSet::new();
        for (name, ips, labels, ports) in endpoints.chain(pods) {
            for ip in ips {
                let selected = self.selects_with(name, *ip, labels, ports, |ns| {
                    *namespaces
                        .entry(&name.namespace)
                        .or_insert_with(|| self.namespace_matches(state, ns))
                });
                if selected {
                    out.insert(*ip);
                }
            }
        }
        out
    }
}

/// The selector with its requirements and their values sorted, so that equal selectors
/// written in another order share a set.
fn canonical(sel: &LabelSelector) -> LabelSelector {
    let mut sel = sel.clone();
    for req in &mut sel.match_expressions {
        req.values.sort();
        req.values.dedup();
    }
    sel.match_expressions
        .sort_by_cached_key(|r| serde_json::to_string(r).unwrap_or_default());
    sel.match_expressions.dedup();
    sel
}

/// A set of peer addresses named by allow entries.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PeerSet {
    /// What selects the members.
    pub key: SetKey,
    /// The members' addresses.
    pub members: BTreeSet<IpAddr>,
}

/// One prefix of an ipBlock's longest-prefix table.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct LpmEntry {
    /// The prefix.
    pub prefix: IpNetwork,
    /// Whether an address whose longest matching prefix is this one is allowed (the `cidr`)
    /// or not (an `except`).
    pub allow: bool,
}

/// Whom an allow entry lets through.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum Peer {
    /// Every address (a rule without peers).
    Any,
    /// The members of a [`PeerSet`].
    Set(SetId),
    /// An ipBlock: addresses whose longest matching prefix is an allowing one.
    Block(Vec<LpmEntry>),
}

/// One allow entry of an endpoint's direction.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct AllowEntry {
    /// The peer (the client on ingress, the server on egress).
    pub peer: Peer,
    /// The protocol; `None` for every protocol and port (a rule without ports).
    pub protocol: Option<Protocol>,
    /// The destination ports, inclusive (`0..=65535` for every port of `protocol`).
    pub ports: (u16, u16),
}

/// One direction of a local endpoint.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct DirectionTable {
    /// Whether a policy isolates the endpoint in this direction (if not, all is allowed).
    pub isolated: bool,
    /// What is allowed when isolated (the union of the selecting policies' rules).
    pub entries: BTreeSet<AllowEntry>,
}

/// The `(protocol, ports)` of an [`AllowEntry`]: what a [`DirectionTable::block_table`] prefix
/// allows.
pub type PortSpec = (Option<Protocol>, (u16, u16));

impl DirectionTable {
    /// Every ipBlock entry of the direction merged in one longest-prefix table: for each
    /// prefix of any block, what an address whose longest matching prefix it is may use (an
    /// empty set: nothing, an `except` shadowing shorter prefixes). A backend programs this
    /// as one LPM map per endpoint and direction, so that an ipBlock lookup is one LPM
    /// lookup however many blocks the policies have.
    ///
    /// Exact because every prefix of every block is in the table: for an address whose
    /// longest match in the table is `P`, its longest match within one block is that block's
    /// longest prefix containing `P`.
    pub fn block_table(&self) -> BTreeMap<IpNetwork, BTreeSet<PortSpec>> {
        let blocks: Vec<(&[LpmEntry], PortSpec)> = self
            .entries
            .iter()
            .filter_map(|e| match &e.peer {
                Peer::Block(table) => Some((table.as_slice(), (e.protocol, e.ports))),
                Peer::Any | Peer::Set(_) => None,
            })
            .collect();
        let prefixes: BTreeSet<IpNetwork> = blocks
            .iter()
            .flat_map(|(table, _)| table.iter().map(|e| e.prefix))
            .collect();
        prefixes
            .into_iter()
            .map(|prefix| {
                let allowed = blocks
                    .iter()
                    .filter(|(table, _)| prefix_allowed(table, prefix))
                    .map(|(_, spec)| *spec)
                    .collect();
                (prefix, allowed)
            })
            .collect()
    }
}

/// Whether an address whose longest match is `prefix` is allowed by `table`: by the longest
/// prefix of `table` that contains `prefix` (deny wins at equal length).
fn prefix_allowed(table: &[LpmEntry], prefix: IpNetwork) -> bool {
    table
        .iter()
        .filter(|e| e.prefix.prefix() <= prefix.prefix() && e.prefix.contains(prefix.network()))
        .max_by_key(|e| (e.prefix.prefix(), !e.allow))
        .is_some_and(|e| e.allow)
}

/// The tables of one local endpoint.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct EndpointTables {
    /// The endpoint's addresses.
    pub ips: Vec<IpAddr>,
    /// Traffic to the endpoint.
    pub ingress: DirectionTable,
    /// Traffic from the endpoint.
    pub egress: DirectionTable,
}

impl EndpointTables {
    /// The table of `direction`.
    pub fn direction(&self, direction: PolicyType) -> &DirectionTable {
        match direction {
            PolicyType::Ingress => &self.ingress,
            PolicyType::Egress => &self.egress,
        }
    }
}

/// The compiled NetworkPolicy of a node: see the module documentation.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CompiledPolicy {
    /// The peer sets that entries name (and only those).
    pub sets: BTreeMap<SetId, PeerSet>,
    /// The tables of every local endpoint.
    pub endpoints: BTreeMap<ObjectName, EndpointTables>,
    /// How many endpoints name each set: a set goes when its count drops to zero.
    refs: BTreeMap<SetId, usize>,
}

/// Compiles the NetworkPolicy of `state` (assumed valid, see [`crate::validate()`]).
pub fn compile(state: &DesiredState) -> CompiledPolicy {
    let mut compiled = CompiledPolicy::default();
    let mut keys: BTreeMap<SetId, SetKey> = BTreeMap::new();
    for endpoint in &state.endpoints {
        let tables = endpoint_tables(state, endpoint, &mut keys);
        for id in set_ids(&tables) {
            *compiled.refs.entry(id.clone()).or_default() += 1;
        }
        compiled.endpoints.insert(endpoint.name.clone(), tables);
    }
    compiled.sets = keys
        .into_iter()
        .map(|(id, key)| {
            let members = key.members(state);
            (id, PeerSet { key, members })
        })
        .collect();
    compiled
}

/// The tables of one local endpoint; the keys of the sets they name are added to `keys`.
fn endpoint_tables(
    state: &DesiredState,
    endpoint: &Endpoint,
    keys: &mut BTreeMap<SetId, SetKey>,
) -> EndpointTables {
    let mut tables = EndpointTables {
        ips: endpoint.ips.clone(),
        ..EndpointTables::default()
    };
    for direction in [PolicyType::Ingress, PolicyType::Egress] {
        let table = match direction {
            PolicyType::Ingress => &mut tables.ingress,
            PolicyType::Egress => &mut tables.egress,
        };
        for policy in selecting(state, endpoint, direction) {
            table.isolated = true;
            let ctx = RuleContext {
                state,
                policy,
                direction,
                destination_ports: &endpoint.named_ports,
            };
            for rule in policy.rules(direction) {
                ctx.entries(rule, &mut table.entries, keys);
            }
        }
    }
    tables
}

/// The policies isolating `endpoint` in `direction`.
fn selecting<'a>(
    state: &'a DesiredState,
    endpoint: &'a Endpoint,
    direction: PolicyType,
) -> impl Iterator<Item = &'a Policy> {
    state.policies.iter().filter(move |p| {
        p.name.namespace == endpoint.name.namespace
            && p.pod_selector.matches(&endpoint.labels)
            && p.isolates(direction)
    })
}

/// The ids of the sets `tables` name.
fn set_ids(tables: &EndpointTables) -> BTreeSet<&SetId> {
    tables
        .ingress
        .entries
        .iter()
        .chain(&tables.egress.entries)
        .filter_map(|e| match &e.peer {
            Peer::Set(id) => Some(id),
            Peer::Any | Peer::Block(_) => None,
        })
        .collect()
}

/// What one rule's entries are compiled against.
struct RuleContext<'a> {
    state: &'a DesiredState,
    policy: &'a Policy,
    direction: PolicyType,
    /// The local endpoint's named ports (ingress named ports resolve on it).
    destination_ports: &'a [NamedPort],
}

impl RuleContext<'_> {
    fn entries(
        &self,
        rule: &PolicyRule,
        entries: &mut BTreeSet<AllowEntry>,
        keys: &mut BTreeMap<SetId, SetKey>,
    ) {
        // Numeric ports (or all), and named ports: resolved now on ingress, left by name
        // (protocol, name) for egress, where each destination resolves them.
        let mut numeric: Vec<(Option<Protocol>, (u16, u16))> = Vec::new();
        let mut named: Vec<(Protocol, &str)> = Vec::new();
        if rule.ports.is_empty() {
            numeric.push((None, (0, u16::MAX)));
        }
        for entry in &rule.ports {
            match &entry.port {
                None => numeric.push((Some(entry.protocol), (0, u16::MAX))),
                Some(PortRef::Number(p)) => {
                    numeric.push((Some(entry.protocol), (*p, entry.end_port.unwrap_or(*p))));
                }
                Some(PortRef::Name(n)) if self.direction == PolicyType::Ingress => {
                    numeric.extend(
                        self.destination_ports
                            .iter()
                            .filter(|np| np.name == *n && np.protocol == entry.protocol)
                            .map(|np| (Some(np.protocol), (np.port, np.port))),
                    );
                }
                Some(PortRef::Name(n)) => named.push((entry.protocol, n)),
            }
        }
        let peers: Vec<Option<&PolicyPeer>> = if rule.peers.is_empty() {
            vec![None]
        } else {
            rule.peers.iter().map(Some).collect()
        };
        for peer in peers {
            // Only sets that an entry names: a rule whose ports are all named (and
            // unresolved here) names none.
            let matched = match peer {
                _ if numeric.is_empty() => None,
                None => Some(Peer::Any),
                Some(p) => Some(match &p.ip_block {
                    Some(block) => Peer::Block(lpm(block)),
                    None => Peer::Set(insert(keys, SetKey::of_peer(self.policy, p, None))),
                }),
            };
            if let Some(matched) = matched {
                for (protocol, ports) in &numeric {
                    entries.insert(AllowEntry {
                        peer: matched.clone(),
                        protocol: *protocol,
                        ports: *ports,
                    });
                }
            }
            for (protocol, name) in &named {
                for np in self.named_ports(*protocol, name) {
                    let key = match peer {
                        None => SetKey::every_pod(np.clone()),
                        Some(p) => SetKey::of_peer(self.policy, p, Some(np.clone())),
                    };
                    entries.insert(AllowEntry {
                        peer: Peer::Set(insert(keys, key)),
                        protocol: Some(*protocol),
                        ports: (np.port, np.port),
                    });
                }
            }
        }
    }

    /// The named port `name` of `protocol` with each distinct number it has on the
    /// cluster's pods.
    fn named_ports(&self, protocol: Protocol, name: &str) -> Vec<NamedPort> {
        let endpoints = self.state.endpoints.iter().map(|e| &e.named_ports);
        let pods = self.state.pods.iter().map(|p| &p.named_ports);
        let numbers: BTreeSet<u16> = endpoints
            .chain(pods)
            .flatten()
            .filter(|np| np.name == name && np.protocol == protocol)
            .map(|np| np.port)
            .collect();
        numbers
            .into_iter()
            .map(|port| NamedPort::new(name, protocol, port))
            .collect()
    }
}

fn insert(keys: &mut BTreeMap<SetId, SetKey>, key: SetKey) -> SetId {
    let id = key.id();
    keys.entry(id.clone()).or_insert(key);
    id
}

/// The LPM table of an ipBlock: its cidr allowing, its excepts denying.
fn lpm(block: &IpBlock) -> Vec<LpmEntry> {
    let mut table: Vec<LpmEntry> = std::iter::once(LpmEntry {
        prefix: block.cidr,
        allow: true,
    })
    .chain(block.except.iter().map(|e| LpmEntry {
        prefix: *e,
        allow: false,
    }))
    .collect();
    table.sort();
    table.dedup();
    table
}

impl CompiledPolicy {
    /// Address → ids of the sets it is a member of: what a backend programs as its
    /// identity/ipset map.
    pub fn membership(&self) -> BTreeMap<IpAddr, BTreeSet<&SetId>> {
        membership(self.sets.iter().map(|(id, set)| (id, &set.members)))
    }

    /// The answer of the tables for one half of a new connection: whether `endpoint`'s
    /// `direction` lets through traffic with `peer` (the client on ingress, the server on
    /// egress) on `protocol` to destination `port`. `None` when `endpoint` is not local.
    /// The fixed rules (node traffic, same pod) are not applied here: see the module
    /// documentation.
    pub fn allows(
        &self,
        endpoint: &ObjectName,
        direction: PolicyType,
        peer: IpAddr,
        protocol: Protocol,
        port: u16,
    ) -> Option<bool> {
        let table = self.endpoints.get(endpoint)?.direction(direction);
        if !table.isolated {
            return Some(true);
        }
        let port_ok = |(p, ports): &PortSpec| {
            p.is_none_or(|p| p == protocol) && (ports.0..=ports.1).contains(&port)
        };
        let selected = table.entries.iter().any(|e| {
            port_ok(&(e.protocol, e.ports))
                && match &e.peer {
                    Peer::Any => true,
                    Peer::Set(id) => self.sets.get(id).is_some_and(|s| s.members.contains(&peer)),
                    // Answered by the merged table below, as a backend does.
                    Peer::Block(_) => false,
                }
        });
        let blocks = table.block_table();
        let in_block = blocks
            .iter()
            .filter(|(prefix, _)| prefix.contains(peer))
            .max_by_key(|(prefix, _)| prefix.prefix())
            .is_some_and(|(_, specs)| specs.iter().any(port_ok));
        Some(selected || in_block)
    }

    /// Brings the tables from the state before `changes` to `state` (the state after them),
    /// touching only what the changes affect, and reports the element changes: when `self`
    /// is the compile of the state before and `changes` its [`crate::diff()`] to `state`, the
    /// result equals [`compile`]`(state)` and the delta is `self.delta(&compile(state))`.
    ///
    /// - Tables are recompiled for the endpoints that changed, the endpoints a changed
    ///   policy selects (before or after), and, when a pod's named ports change, the endpoints
    ///   with egress named ports (those resolve on every destination).
    /// - Sets: a set no endpoint names any more goes; a newly named one is computed; the
    ///   others are updated only for the changed pods (entering or leaving) and the pods of
    ///   relabelled namespaces. Cost: one selector evaluation per (kept set, address looked
    ///   at); an index from label to sets (Calico's label index) would cut the sets looked
    ///   at when there are many.
    pub fn update(&mut self, state: &DesiredState, changes: &ChangeSet) -> PolicyDelta {
        let mut delta = PolicyDelta::default();
        let mut keys: BTreeMap<SetId, SetKey> = BTreeMap::new();
        for name in affected_endpoints(state, changes) {
            let old = self.endpoints.remove(&name);
            if let Some(old) = &old {
                for id in set_ids(old) {
                    if let Some(n) = self.refs.get_mut(id) {
                        *n -= 1;
                    }
                }
            }
            let Some(endpoint) = state.endpoints.iter().find(|e| e.name == name) else {
                if old.is_some() {
                    delta.endpoints_removed.insert(name);
                }
                continue;
            };
            let tables = endpoint_tables(state, endpoint, &mut keys);
            for id in set_ids(&tables) {
                *self.refs.entry(id.clone()).or_default() += 1;
            }
            if old.as_ref() != Some(&tables) {
                delta.endpoints_changed.insert(name.clone());
            }
            self.endpoints.insert(name, tables);
        }
        self.refs.retain(|id, n| {
            if *n == 0 {
                if self.sets.remove(id).is_some() {
                    delta.sets_removed.insert(id.clone());
                }
                false
            } else {
                true
            }
        });
        // Members of the sets kept: only the changed pods and the relabelled namespaces.
        for (id, set) in &mut self.sets {
            let change = update_members(set, state, changes);
            if !change.added.is_empty() || !change.removed.is_empty() {
                delta.members_changed.insert(id.clone(), change);
            }
        }
        for (id, key) in keys {
            if !self.sets.contains_key(&id) && self.refs.contains_key(&id) {
                let members = key.members(state);
                delta.sets_added.insert(id.clone(), members.clone());
                self.sets.insert(id, PeerSet { key, members });
            }
        }
        delta
    }

    /// What changed from `self` to `after`, element by element, for backends to program.
    pub fn delta(&self, after: &CompiledPolicy) -> PolicyDelta {
        delta(
            (&self.sets, &after.sets),
            |set: &PeerSet| &set.members,
            &self.endpoints,
            &after.endpoints,
        )
    }
}

/// Address → ids of the sets it is a member of, from `(id, members)` pairs.
fn membership<'a>(
    sets: impl Iterator<Item = (&'a SetId, &'a BTreeSet<IpAddr>)>,
) -> BTreeMap<IpAddr, BTreeSet<&'a SetId>> {
    let mut map: BTreeMap<IpAddr, BTreeSet<&SetId>> = BTreeMap::new();
    for (id, members) in sets {
        for ip in members {
            map.entry(*ip).or_default().insert(id);
        }
    }
    map
}

/// What changed between two compiles' sets (`members` reads a set's addresses) and
/// per-endpoint tables, element by element: [`CompiledPolicy::delta`] and
/// [`CompiledTiers::delta`].
fn delta<S, T: PartialEq>(
    (sets_before, sets_after): (&BTreeMap<SetId, S>, &BTreeMap<SetId, S>),
    members: impl Fn(&S) -> &BTreeSet<IpAddr>,
    before: &BTreeMap<ObjectName, T>,
    after: &BTreeMap<ObjectName, T>,
) -> PolicyDelta {
    let mut delta = PolicyDelta::default();
    for (id, set) in sets_after {
        let new = members(set);
        match sets_before.get(id).map(&members) {
            None => {
                delta.sets_added.insert(id.clone(), new.clone());
            }
            Some(old) if old != new => {
                delta.members_changed.insert(
                    id.clone(),
                    MemberChange {
                        added: new.difference(old).copied().collect(),
                        removed: old.difference(new).copied().collect(),
                    },
                );
            }
            Some(_) => {}
        }
    }
    delta.sets_removed = sets_before
        .keys()
        .filter(|id| !sets_after.contains_key(*id))
        .cloned()
        .collect();
    for (name, tables) in after {
        if before.get(name) != Some(tables) {
            delta.endpoints_changed.insert(name.clone());
        }
    }
    delta.endpoints_removed = before
        .keys()
        .filter(|n| !after.contains_key(*n))
        .cloned()
        .collect();
    delta
}

/// Members added to and removed from one set.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct MemberChange {
    /// New members.
    pub added: BTreeSet<IpAddr>,
    /// Former members.
    pub removed: BTreeSet<IpAddr>,
}

/// The element changes between two compiles ([`CompiledPolicy::delta`]).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PolicyDelta {
    /// New sets with their members.
    pub sets_added: BTreeMap<SetId, BTreeSet<IpAddr>>,
    /// Sets no entry names any more.
    pub sets_removed: BTreeSet<SetId>,
    /// Sets kept whose members changed.
    pub members_changed: BTreeMap<SetId, MemberChange>,
    /// Local endpoints that are new or whose tables changed (reprogram their entries).
    pub endpoints_changed: BTreeSet<ObjectName>,
    /// Local endpoints gone.
    pub endpoints_removed: BTreeSet<ObjectName>,
}

impl PolicyDelta {
    /// Whether nothing changed.
    pub fn is_empty(&self) -> bool {
        *self == PolicyDelta::default()
    }
}

/// The local endpoints whose tables `changes` may change (see [`CompiledPolicy::update`]).
fn affected_endpoints(state: &DesiredState, changes: &ChangeSet) -> BTreeSet<ObjectName> {
    let mut affected: BTreeSet<ObjectName> = changes.endpoints.keys().cloned().collect();
    for (name, change) in &changes.policies {
        let selectors: Vec<&LabelSelector> = [&change.previous, &change.current]
            .into_iter()
            .flatten()
            .map(|p| &p.pod_selector)
            .collect();
        affected.extend(
            state
                .endpoints
                .iter()
                .filter(|e| {
                    e.name.namespace == name.namespace
                        && selectors.iter().any(|s| s.matches(&e.labels))
                })
                .map(|e| e.name.clone()),
        );
    }
    let ports_changed = changes
        .endpoints
        .values()
        .any(|c| named_ports_changed(c, |e| &e.named_ports))
        || changes
            .pods
            .values()
            .any(|c| named_ports_changed(c, |p| &p.named_ports));
    if ports_changed {
        affected.extend(
            state
                .endpoints
                .iter()
                .filter(|e| {
                    selecting(state, e, PolicyType::Egress).any(|p| {
                        p.egress
                            .iter()
                            .flat_map(|r| &r.ports)
                            .any(|port| matches!(port.port, Some(PortRef::Name(_))))
                    })
                })
                .map(|e| e.name.clone()),
        );
    }
    affected
}

fn named_ports_changed<T>(change: &Change<T>, ports: impl Fn(&T) -> &Vec<NamedPort>) -> bool {
    change.previous.as_ref().map(&ports) != change.current.as_ref().map(&ports)
}

/// Updates `set`'s members for the changed pods and endpoints (entering or leaving) and the
/// pods of the namespaces whose labels changed, looking at those addresses only; returns
/// what entered and left.
fn update_members(set: &mut PeerSet, state: &DesiredState, changes: &ChangeSet) -> MemberChange {
    // Whether each address looked at is a member now. Addresses are unique across pods and
    // endpoints in a valid state: the previous addresses of changed pods are members no
    // more, unless a current pod has the address and matches.
    let mut now: BTreeMap<IpAddr, bool> = BTreeMap::new();
    let previous_ips = changes
        .endpoints
        .values()
        .filter_map(|c| c.previous.as_ref().map(|e| &e.ips))
        .chain(
            changes
                .pods
                .values()
                .filter_map(|c| c.previous.as_ref().map(|p| &p.ips)),
        );
    for ips in previous_ips {
        for ip in ips {
            now.insert(*ip, false);
        }
    }
    let mut relabelled: BTreeSet<&str> = changes.namespaces.keys().map(String::as_str).collect();
    // A namespace without a Namespace object takes its labels from its endpoints.
    relabelled.extend(
        changes
            .endpoints
            .values()
            .filter(|c| named_labels_changed(c))
            .filter_map(|c| c.current.as_ref().or(c.previous.as_ref()))
            .map(|e| e.name.namespace.as_str()),
    );
    if set.key.namespace_selector.is_none() {
        relabelled.clear();
    }
    // Every pod of the state is looked at only when a namespace was relabelled: otherwise
    // the scan (once per set) would make a pod change cost sets x pods.
    let relabelled_any = !relabelled.is_empty();
    let current_endpoints = changes
        .endpoints
        .values()
        .filter_map(|c| c.current.as_ref())
        .chain(
            relabelled_any
                .then_some(&state.endpoints)
                .into_iter()
                .flatten()
                .filter(|e| relabelled.contains(e.name.namespace.as_str())),
        )
        .map(|e| (&e.name, &e.ips, &e.labels, &e.named_ports));
    let current_pods = changes
        .pods
        .values()
        .filter_map(|c| c.current.as_ref())
        .chain(
            relabelled_any
                .then_some(&state.pods)
                .into_iter()
                .flatten()
                .filter(|p| relabelled.contains(p.name.namespace.as_str())),
        )
        .map(|p| (&p.name, &p.ips, &p.labels, &p.named_ports));
    for (name, ips, labels, ports) in current_endpoints.chain(current_pods) {
        for ip in ips {
            now.insert(*ip, set.key.selects(state, name, *ip, labels, ports));
        }
    }
    let mut change = MemberChange::default();
    for (ip, member) in now {
        if member {
            if set.members.insert(ip) {
                change.added.insert(ip);
            }
        } else if set.members.remove(&ip) {
            change.removed.insert(ip);
        }
    }
    change
}

fn named_labels_changed(change: &Change<Endpoint>) -> bool {
    change.previous.as_ref().map(|e| &e.namespace_labels)
        != change.current.as_ref().map(|e| &e.namespace_labels)
}

// ---------------------------------------------------------------------------------------
// The tiers around NetworkPolicy: cluster policies and the baseline.
// ---------------------------------------------------------------------------------------

/// Which ordered tier a [`TierEntry`] belongs to ([`crate::policy`]'s module documentation:
/// cluster policies before NetworkPolicy, the baseline after it).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum Tier {
    /// [`crate::ClusterPolicy`]: `Allow`, `Deny` or `Pass`, before NetworkPolicy.
    Cluster,
    /// [`crate::BaselinePolicy`]: `Allow` or `Deny`, for a pod no NetworkPolicy isolates.
    Baseline,
}

/// What the first matching entry of a tier does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum TierAction {
    /// Allowed, final for the direction.
    Allow,
    /// Denied, final for the direction.
    Deny,
    /// The remaining cluster policies are skipped: NetworkPolicy (then the baseline) decides.
    Pass,
}

/// One entry of a tier's table: a rule's peer and one of its `(protocol, ports)`, with the
/// rule's place in the evaluation order.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct TierEntry {
    /// Evaluation order, lower first: of all entries matching a connection, the lowest
    /// order decides. Cluster tier: `priority << 8 | rule index` (priorities are unique,
    /// at most 1000, rules at most 100 per direction); baseline: the rule index. Stable when
    /// other policies come and go, so a change rewrites only its own policy's entries.
    pub order: u32,
    /// What a match does.
    pub action: TierAction,
    /// The peer (the client on ingress, the server on egress): [`Peer::Any`] is never
    /// produced (a tier rule has at least one peer); a `networks` peer is a
    /// [`Peer::Block`] of allowing prefixes only.
    pub peer: Peer,
    /// The protocol; `None` for every protocol and port (a rule without ports).
    pub protocol: Option<Protocol>,
    /// The destination ports, inclusive.
    pub ports: (u16, u16),
}

impl TierEntry {
    /// Whether the entry's `(protocol, ports)` covers `protocol` and `port`.
    fn port_matches(&self, protocol: Protocol, port: u16) -> bool {
        self.protocol.is_none_or(|p| p == protocol) && (self.ports.0..=self.ports.1).contains(&port)
    }
}

/// The tier tables of one local endpoint (entries of the cluster policies and of the
/// baseline that select it; empty tables when none does).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TierTables {
    /// The endpoint's addresses.
    pub ips: Vec<IpAddr>,
    /// Cluster tier, traffic to the endpoint.
    pub cluster_ingress: BTreeSet<TierEntry>,
    /// Cluster tier, traffic from the endpoint.
    pub cluster_egress: BTreeSet<TierEntry>,
    /// Baseline, traffic to the endpoint.
    pub baseline_ingress: BTreeSet<TierEntry>,
    /// Baseline, traffic from the endpoint.
    pub baseline_egress: BTreeSet<TierEntry>,
}

impl TierTables {
    /// The entries of `tier` and `direction`.
    pub fn entries(&self, tier: Tier, direction: PolicyType) -> &BTreeSet<TierEntry> {
        match (tier, direction) {
            (Tier::Cluster, PolicyType::Ingress) => &self.cluster_ingress,
            (Tier::Cluster, PolicyType::Egress) => &self.cluster_egress,
            (Tier::Baseline, PolicyType::Ingress) => &self.baseline_ingress,
            (Tier::Baseline, PolicyType::Egress) => &self.baseline_egress,
        }
    }

    fn entries_mut(&mut self, tier: Tier, direction: PolicyType) -> &mut BTreeSet<TierEntry> {
        match (tier, direction) {
            (Tier::Cluster, PolicyType::Ingress) => &mut self.cluster_ingress,
            (Tier::Cluster, PolicyType::Egress) => &mut self.cluster_egress,
            (Tier::Baseline, PolicyType::Ingress) => &mut self.baseline_ingress,
            (Tier::Baseline, PolicyType::Egress) => &mut self.baseline_egress,
        }
    }

    /// Whether `direction` has entries in either tier.
    pub fn has(&self, direction: PolicyType) -> bool {
        !self.entries(Tier::Cluster, direction).is_empty()
            || !self.entries(Tier::Baseline, direction).is_empty()
    }

    /// Whether no tier has an entry.
    pub fn is_empty(&self) -> bool {
        !self.has(PolicyType::Ingress) && !self.has(PolicyType::Egress)
    }
}

/// What selects the members of a tier's peer set: pods (a [`SetKey`], the same ids as
/// NetworkPolicy's sets, so a selector both name is one set) or nodes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum TierSetKey {
    /// Pods: the `namespaces` and `pods` peers (cluster-wide: no own-namespace default), and
    /// an egress named port's destinations.
    Pods(SetKey),
    /// The addresses of the nodes the selector selects ([`crate::PeerNode`]; this node by
    /// the entry of its name, or without labels), pods' addresses excepted.
    Nodes(LabelSelector),
}

impl TierSetKey {
    fn id(&self) -> SetId {
        match self {
            TierSetKey::Pods(key) => key.id(),
            TierSetKey::Nodes(sel) => SetId(format!(
                "{{\"nodes\":{}}}",
                serde_json::to_string(sel).unwrap_or_default()
            )),
        }
    }

    fn members(&self, state: &DesiredState) -> BTreeSet<IpAddr> {
        match self {
            TierSetKey::Pods(key) => key.members(state),
            TierSetKey::Nodes(sel) => {
                let pods: BTreeSet<IpAddr> = state
                    .endpoints
                    .iter()
                    .flat_map(|e| &e.ips)
                    .chain(state.pods.iter().flat_map(|p| &p.ips))
                    .copied()
                    .collect();
                let own_labels = state
                    .nodes
                    .iter()
                    .find(|n| n.name == state.node.name)
                    .map(|n| n.labels.clone())
                    .unwrap_or_default();
                let own = sel
                    .matches(&own_labels)
                    .then_some(&state.node.addresses)
                    .into_iter()
                    .flatten();
                // Any other address is labelled by the first entry that lists it (the
                // reference's lookup); this node's addresses only by the entry of its name.
                let others = state
                    .nodes
                    .iter()
                    .flat_map(|n| &n.addresses)
                    .filter(|ip| !state.node.addresses.contains(ip))
                    .filter(|ip| {
                        state
                            .nodes
                            .iter()
                            .find(|n| n.addresses.contains(ip))
                            .is_some_and(|n| sel.matches(&n.labels))
                    });
                own.chain(others)
                    .filter(|ip| !pods.contains(ip))
                    .copied()
                    .collect()
            }
        }
    }
}

/// A peer set of the tiers.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TierSet {
    /// What selects the members.
    pub key: TierSetKey,
    /// The members' addresses.
    pub members: BTreeSet<IpAddr>,
}

/// The compiled cluster policies and baseline of a node: per local endpoint and direction,
/// the entries of each tier over peer sets (see [`compile_tiers`]).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CompiledTiers {
    /// The peer sets the entries name.
    pub sets: BTreeMap<SetId, TierSet>,
    /// The local endpoints with at least one entry.
    pub endpoints: BTreeMap<ObjectName, TierTables>,
}

/// Compiles the cluster policies and the baseline of `state` (assumed valid) into
/// per-endpoint tables, as [`compile`] does for NetworkPolicy:
///
/// - Only the policies whose subject selects the endpoint contribute; each rule's peers
///   times its ports become [`TierEntry`]s with the rule's order and action.
/// - `namespaces` and `pods` peers are pod sets ([`TierSetKey::Pods`]), `nodes` peers node
///   sets, `networks` peers [`Peer::Block`]s (allowing prefixes).
/// - A named port resolves on the destination: on ingress on the endpoint itself (every
///   protocol it has the name on), on egress into per-number sets of the peer's pods that
///   have it (a `nodes` peer has no pods: nothing).
///
/// What a backend programs from it: for one connection and tier, the matching entry of
/// lowest order decides ([`CompiledTiers::decide`]); [`tiered_allows`] is how the tiers and
/// NetworkPolicy's tables combine, the answer [`crate::policy_verdict`] gives (the fixed
/// rules aside).
pub fn compile_tiers(state: &DesiredState) -> CompiledTiers {
    let mut compiled = CompiledTiers::default();
    if state.cluster_policies.is_empty() && state.baseline_policy.is_none() {
        return compiled;
    }
    let mut keys: BTreeMap<SetId, TierSetKey> = BTreeMap::new();
    for endpoint in &state.endpoints {
        let tables = tier_tables(state, endpoint, &mut keys);
        if !tables.is_empty() {
            compiled.endpoints.insert(endpoint.name.clone(), tables);
        }
    }
    let named: BTreeSet<&SetId> = compiled
        .endpoints
        .values()
        .flat_map(|t| {
            [Tier::Cluster, Tier::Baseline]
                .into_iter()
                .flat_map(move |tier| {
                    [PolicyType::Ingress, PolicyType::Egress]
                        .into_iter()
                        .flat_map(move |d| t.entries(tier, d))
                })
        })
        .filter_map(|e| match &e.peer {
            Peer::Set(id) => Some(id),
            Peer::Any | Peer::Block(_) => None,
        })
        .collect();
    compiled.sets = keys
        .into_iter()
        .filter(|(id, _)| named.contains(id))
        .map(|(id, key)| {
            let members = key.members(state);
            (id, TierSet { key, members })
        })
        .collect();
    compiled
}

/// Whether a cluster policy or baseline subject selects `endpoint`.
fn subject_selects(
    state: &DesiredState,
    subject: &crate::model::ClusterPolicySubject,
    endpoint: &Endpoint,
) -> bool {
    use crate::model::ClusterPolicySubject;
    let namespace = state.namespace_labels(&endpoint.name.namespace);
    match subject {
        ClusterPolicySubject::Namespaces(sel) => sel.matches(&namespace),
        ClusterPolicySubject::Pods(pods) => {
            pods.pod_selector.matches(&endpoint.labels)
                && pods.namespace_selector.matches(&namespace)
        }
    }
}

fn tier_tables(
    state: &DesiredState,
    endpoint: &Endpoint,
    keys: &mut BTreeMap<SetId, TierSetKey>,
) -> TierTables {
    use crate::model::{BaselineAction, ClusterAction};
    let mut tables = TierTables {
        ips: endpoint.ips.clone(),
        ..TierTables::default()
    };
    for direction in [PolicyType::Ingress, PolicyType::Egress] {
        for policy in &state.cluster_policies {
            if !subject_selects(state, &policy.subject, endpoint) {
                continue;
            }
            for (i, rule) in policy.rules(direction).iter().enumerate() {
                let action = match rule.action {
                    ClusterAction::Allow => TierAction::Allow,
                    ClusterAction::Deny => TierAction::Deny,
                    ClusterAction::Pass => TierAction::Pass,
                };
                let ctx = TierRule {
                    state,
                    endpoint,
                    direction,
                    order: (policy.priority << 8) | (i as u32 & 0xff),
                    action,
                };
                ctx.entries(rule, tables.entries_mut(Tier::Cluster, direction), keys);
            }
        }
        if let Some(baseline) = &state.baseline_policy {
            if subject_selects(state, &baseline.subject, endpoint) {
                for (i, rule) in baseline.rules(direction).iter().enumerate() {
                    let action = match rule.action {
                        BaselineAction::Allow => TierAction::Allow,
                        BaselineAction::Deny => TierAction::Deny,
                    };
                    let ctx = TierRule {
                        state,
                        endpoint,
                        direction,
                        order: i as u32,
                        action,
                    };
                    ctx.entries(rule, tables.entries_mut(Tier::Baseline, direction), keys);
                }
            }
        }
    }
    tables
}

/// What one tier rule's entries are compiled against.
struct TierRule<'a> {
    state: &'a DesiredState,
    /// The subject: ingress named ports resolve on it.
    endpoint: &'a Endpoint,
    direction: PolicyType,
    order: u32,
    action: TierAction,
}

impl TierRule<'_> {
    /// The rule's numeric `(protocol, ports)` (ingress named ports resolved on the endpoint)
    /// and, on egress, its named ports with every `(protocol, number)` they have on the
    /// cluster's pods.
    fn ports(&self, ports: &[crate::model::ClusterPort]) -> (Vec<PortSpec>, Vec<NamedPort>) {
        use crate::model::ClusterPort;
        let mut numeric: Vec<PortSpec> = Vec::new();
        let mut named: Vec<NamedPort> = Vec::new();
        if ports.is_empty() {
            numeric.push((None, (0, u16::MAX)));
        }
        for port in ports {
            match port {
                ClusterPort::PortNumber { protocol, port } => {
                    numeric.push((Some(*protocol), (*port, *port)));
                }
                ClusterPort::PortRange {
                    protocol,
                    start,
                    end,
                } => numeric.push((Some(*protocol), (*start, *end))),
                ClusterPort::NamedPort(name) if self.direction == PolicyType::Ingress => numeric
                    .extend(
                        self.endpoint
                            .named_ports
                            .iter()
                            .filter(|np| np.name == *name)
                            .map(|np| (Some(np.protocol), (np.port, np.port))),
                    ),
                ClusterPort::NamedPort(name) => {
                    let state = self.state;
                    let all: BTreeSet<(Protocol, u16)> = state
                        .endpoints
                        .iter()
                        .flat_map(|e| &e.named_ports)
                        .chain(state.pods.iter().flat_map(|p| &p.named_ports))
                        .filter(|np| np.name == *name)
                        .map(|np| (np.protocol, np.port))
                        .collect();
                    named.extend(
                        all.into_iter()
                            .map(|(protocol, port)| NamedPort::new(name.as_str(), protocol, port)),
                    );
                }
            }
        }
        (numeric, named)
    }

    /// The entries of `rule` (peers x ports) into `out`.
    fn entries<A>(
        &self,
        rule: &crate::model::ClusterRule<A>,
        out: &mut BTreeSet<TierEntry>,
        keys: &mut BTreeMap<SetId, TierSetKey>,
    ) {
        use crate::model::ClusterPeer;
        let (numeric, named) = self.ports(&rule.ports);
        let mut push = |peer: Peer, spec: PortSpec| {
            out.insert(TierEntry {
                order: self.order,
                action: self.action,
                peer,
                protocol: spec.0,
                ports: spec.1,
            });
        };
        let mut add_set = |key: TierSetKey| {
            let id = key.id();
            keys.entry(id.clone()).or_insert(key);
            id
        };
        for peer in &rule.peers {
            if !numeric.is_empty() {
                let matched = match peer {
                    ClusterPeer::Networks(nets) => {
                        let mut table: Vec<LpmEntry> = nets
                            .iter()
                            .map(|n| LpmEntry {
                                prefix: *n,
                                allow: true,
                            })
                            .collect();
                        table.sort();
                        table.dedup();
                        Some(Peer::Block(table))
                    }
                    ClusterPeer::Nodes(sel) => {
                        Some(Peer::Set(add_set(TierSetKey::Nodes(canonical(sel)))))
                    }
                    ClusterPeer::Namespaces(_) | ClusterPeer::Pods(_) => {
                        pod_peer_key(peer, None).map(|k| Peer::Set(add_set(TierSetKey::Pods(k))))
                    }
                };
                for spec in matched
                    .iter()
                    .flat_map(|m| numeric.iter().map(move |s| (m, s)))
                {
                    push(spec.0.clone(), *spec.1);
                }
            }
            for np in &named {
                for key in named_port_keys(peer, np) {
                    let id = add_set(TierSetKey::Pods(key));
                    push(Peer::Set(id), (Some(np.protocol), (np.port, np.port)));
                }
            }
        }
    }
}

/// The pod set of a `namespaces` or `pods` peer, restricted to the pods with `named_port`
/// when given (cluster-wide: no own-namespace default); `None` for other peers.
fn pod_peer_key(peer: &crate::model::ClusterPeer, named_port: Option<NamedPort>) -> Option<SetKey> {
    use crate::model::ClusterPeer;
    let (namespace_selector, pod_selector) = match peer {
        ClusterPeer::Namespaces(sel) => (Some(canonical(sel)), None),
        ClusterPeer::Pods(p) => (
            Some(canonical(&p.namespace_selector)),
            Some(canonical(&p.pod_selector)),
        ),
        ClusterPeer::Networks(_) | ClusterPeer::Nodes(_) => return None,
    };
    Some(SetKey {
        namespace_selector,
        pod_selector,
        namespace: None,
        ip_block: None,
        named_port,
    })
}

/// The sets of the pods of `peer` with named port `np` (an egress named port: a `networks`
/// peer's pods in each network; a `nodes` peer has no pods, so none).
fn named_port_keys(peer: &crate::model::ClusterPeer, np: &NamedPort) -> Vec<SetKey> {
    use crate::model::ClusterPeer;
    match peer {
        ClusterPeer::Networks(nets) => nets
            .iter()
            .map(|n| SetKey {
                namespace_selector: None,
                pod_selector: None,
                namespace: None,
                ip_block: Some(IpBlock {
                    cidr: *n,
                    except: Vec::new(),
                }),
                named_port: Some(np.clone()),
            })
            .collect(),
        ClusterPeer::Nodes(_) => Vec::new(),
        ClusterPeer::Namespaces(_) | ClusterPeer::Pods(_) => {
            pod_peer_key(peer, Some(np.clone())).into_iter().collect()
        }
    }
}

impl CompiledTiers {
    /// Address → ids of the tier sets it is a member of.
    pub fn membership(&self) -> BTreeMap<IpAddr, BTreeSet<&SetId>> {
        membership(self.sets.iter().map(|(id, set)| (id, &set.members)))
    }

    /// The tables' answer for one tier and half of a new connection: the order and action
    /// of the matching entry of lowest order, `None` when no entry matches (or `endpoint` has
    /// no tier entries).
    pub fn decide(
        &self,
        endpoint: &ObjectName,
        tier: Tier,
        direction: PolicyType,
        peer: IpAddr,
        protocol: Protocol,
        port: u16,
    ) -> Option<(u32, TierAction)> {
        let tables = self.endpoints.get(endpoint)?;
        tables
            .entries(tier, direction)
            .iter()
            .filter(|e| e.port_matches(protocol, port))
            .filter(|e| match &e.peer {
                Peer::Any => true,
                Peer::Set(id) => self.sets.get(id).is_some_and(|s| s.members.contains(&peer)),
                // Networks: allowing prefixes only.
                Peer::Block(table) => table.iter().any(|l| l.allow && l.prefix.contains(peer)),
            })
            .map(|e| (e.order, e.action))
            .min()
    }

    /// What changed from `self` to `after`, in [`CompiledPolicy::delta`]'s terms (an
    /// endpoint whose tier entries all went is in `endpoints_removed`).
    pub fn delta(&self, after: &CompiledTiers) -> PolicyDelta {
        delta(
            (&self.sets, &after.sets),
            |set: &TierSet| &set.members,
            &self.endpoints,
            &after.endpoints,
        )
    }
}

/// How the tiers and NetworkPolicy's tables combine for one half of a new connection (the
/// answer every backend's tables must give; [`crate::policy`]'s order): the cluster tier's
/// decision if it is `Allow` or `Deny`; else (no match or `Pass`) NetworkPolicy's if a
/// policy isolates the endpoint; else the baseline's; else allowed. `None` when `endpoint`
/// is not local. The fixed rules (node traffic, same pod) are not applied here.
pub fn tiered_allows(
    policy: &CompiledPolicy,
    tiers: &CompiledTiers,
    endpoint: &ObjectName,
    direction: PolicyType,
    peer: IpAddr,
    protocol: Protocol,
    port: u16,
) -> Option<bool> {
    let np = policy.allows(endpoint, direction, peer, protocol, port)?;
    let decide = |tier| tiers.decide(endpoint, tier, direction, peer, protocol, port);
    match decide(Tier::Cluster) {
        Some((_, TierAction::Allow)) => return Some(true),
        Some((_, TierAction::Deny)) => return Some(false),
        Some((_, TierAction::Pass)) | None => {}
    }
    let isolated = policy
        .endpoints
        .get(endpoint)
        .is_some_and(|t| t.direction(direction).isolated);
    if isolated {
        return Some(np);
    }
    Some(!matches!(
        decide(Tier::Baseline),
        Some((_, TierAction::Deny))
    ))
}
