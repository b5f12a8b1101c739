//! The nftables renderer: the desired state, planned a service at a time
//! ([`PortPlan`]s) → [`NftRuleset`] → `nft -f` text. Pure functions.
//!
//! Layout (one `inet` table of our own), after kube-proxy's nftables proxier
//! (pkg/proxy/nftables/proxier.go: `services`, `cluster-ips-check`, the per-service
//! `external-`/`firewall-` chains, `mark-for-masquerade`):
//!
//! ```text
//! nat-prerouting / nat-output ──jump──▶ services
//!   services:  ip daddr . meta l4proto . th dport vmap @service-ips-v4   (O(1) per packet)
//!   svc-v4-<ns>/<name>/<proto>/<port>   ClusterIP: internalTrafficPolicy, every client
//!   ext-v4-…   NodePort / ExternalIP / LoadBalancer: Cluster: masquerade, cluster-wide;
//!              Local: `fib saddr type local` (the node) cluster-wide + masquerade,
//!              `saddr @pod-cidrs` (this node's pods) cluster-wide, the rest by the policy
//!   fw-v4-…    LoadBalancer IPs with loadBalancerSourceRanges of this family:
//!              saddr != { ranges, LB IPs if a range holds a node address } drop; goto ext-v4-…
//!       └─ meta mark set numgen random mod N offset K goto dnat-v4
//!          (ClusterIP: goto dnat-clusterip-v4)
//!   dnat-clusterip-v4: saddr outside the cluster CIDRs: mark bit 31; goto dnat-v4
//!   dnat-v4:   dnat ip to meta mark & 0x7fffffff map @backends-v4          (one global map)
//! filter-forward / filter-output-post-dnat ──ct state new──▶ cluster-ips-check
//!   cluster-ips-check: daddr @cluster-ips-v4 reject; daddr @service-cidrs-v4 drop
//! nat-postrouting: mark bit 31 / hairpin / pod → outside  ──▶ masquerade-node (snat to node)
//! ```
//!
//! NetworkPolicy adds its own sets, maps and chains to the same table and transaction
//! ([`super::policy`], whose header has its layout).
//!
//! Departures from kube-proxy, and why:
//! - One global backend map reached through the packet mark, rather than a chain per
//!   endpoint: the kernel walks every binding of a map on each element insert, and looks sets
//!   up by name linearly, so a map per service (or a rule per service bound to one map) makes
//!   loading quadratic in the services. Here the global map has exactly two bindings (the
//!   `dnat-v4`/`dnat-v6` rules), so loading grows linearly (`benches/scaling` measures it).
//! - With `NetfilterConfig::shared_pick_chains`, a port that only picks at random has no
//!   chain at all ([`Pick`]): the kernel walks every chain of the namespace on each commit,
//!   so chains per service (kube-proxy: per service and per endpoint) make every change cost
//!   in proportion to the services.
//! - The masquerade decision of a ClusterIP (kube-proxy: `IfNotLocal jump
//!   mark-for-masquerade` in each service chain) is one shared rule in `dnat-clusterip`: a
//!   rule fewer per service. With `masquerade.allServices` the service rule sets
//!   the bit itself.
//! - The firewall chain is reached from the frontend's own `service-ips` element (in the nat
//!   chains, which see pods, the node and outside clients alike), not from a second
//!   `firewall-ips` vmap in a filter chain: one lookup per new connection, not two.
//! - Pods short-circuiting an externalTrafficPolicy Local frontend are told by this node's pod
//!   CIDRs (kube-proxy's `NodeCIDR` local detection), not by its default `IfLocal` on the
//!   cluster CIDRs: the reference model treats a pod of another node that reaches this node's
//!   NodePort as an outside client. With `masquerade.allServices` those pods are masqueraded too (the
//!   reference model's rule; kube-proxy's `--masquerade-all` marks only ClusterIP traffic).
//! - Services without endpoints reject (or drop) from their own chain in the nat hooks rather
//!   than from kube-proxy's `no-endpoint-services` vmap in the filter hooks.
//! - Every drop and reject is preceded by a rate-limited NFLOG rule with the same matches
//!   (prefix: verdict, reason, service) and counted in a named counter per verdict and
//!   reason (`crate::eventlog`); kube-proxy logs nothing and counts no reasons. The policy
//!   layer's drops go through the base chains `deny-policy-in`, `deny-policy-out` and
//!   `drop-spoofed` for it.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use dataplane_core::{
    maglev_table, DesiredState, DropReason, Error, EventVerdict, IpFamily, MaglevBackend,
    ObjectName, PolicyType, Protocol, Service,
};
use ipnetwork::IpNetwork;

use super::family::{addr_type, ip_kw};
use super::policy::{NftPolicy, DENY_POLICY_IN_CHAIN, DENY_POLICY_OUT_CHAIN, DROP_SPOOFED_CHAIN};
use crate::config::NetfilterConfig;
use crate::error::NetfilterError;
use crate::eventlog::{self, LogPlan, LogPrefix};
use crate::plan::{
    local_pod_ips, node_plan_with, proto_name, service_ports, slots, Choice, FamilySuffix as _,
    NodePlan, PortPlan,
};

/// Mark bit that asks `nat-postrouting` to masquerade a service connection's first packet.
pub const MASQUERADE_BIT: u32 = 0x8000_0000;
/// Bits of a backend slot key inside the mark: `group id << SLOT_BITS | slot`.
pub const SLOT_BITS: u32 = 12;
/// Largest number of backend slots of one group.
pub const MAX_SLOTS: usize = 1 << SLOT_BITS;
/// Largest group id (the very last slot key is kept free for fault injection).
pub const MAX_GROUP_ID: u32 = (MASQUERADE_BIT >> SLOT_BITS) - 2;

/// Maglev table size in the nftables flavour: a prime that fits the slot bits.
pub const MAGLEV_SLOTS: u32 = 4093;
/// Seed of the packet hash for Maglev; fixed so that every node hashes a flow alike.
pub const MAGLEV_SEED: u32 = 0x6470_6c62;

/// Slot-group ids of one service by group key, kept stable across partial syncs (sorted by
/// key).
pub type SlotIds = Vec<(String, u32)>;

/// The value for `key` in a list sorted by key.
fn lookup<'a, K: std::borrow::Borrow<Q>, Q: Ord + ?Sized, V>(
    sorted: &'a [(K, V)],
    key: &Q,
) -> Option<&'a V> {
    sorted
        .binary_search_by(|(k, _)| k.borrow().cmp(key))
        .ok()
        .map(|i| &sorted[i].1)
}

/// One element of a named set or map, in binary form: a ruleset holds one per frontend,
/// backend slot and hairpin address, so an element has no allocations of its own (its nft
/// text is written when a transaction is rendered).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Element {
    /// `backends-v4` / `backends-v6`: slot key (`group id << SLOT_BITS | slot`) → backend
    /// `addr . port`.
    Backend {
        /// The slot key.
        slot: u32,
        /// The backend.
        to: SocketAddr,
    },
    /// `service-ips-v4` / `service-ips-v6`: `addr . protocol . port` → `goto chain`.
    Frontend {
        /// Frontend address.
        addr: IpAddr,
        /// Protocol.
        protocol: Protocol,
        /// Frontend port (the node port for NodePorts).
        port: u16,
        /// The service chain it leads to.
        chain: Arc<str>,
    },
    /// `cluster-ips-v4` / `cluster-ips-v6`: a ClusterIP (unknown ports are rejected).
    ClusterIp(IpAddr),
    /// `hairpin-v4` / `hairpin-v6`: `ip . ip`, a local endpoint reaching itself.
    Hairpin(IpAddr),
    /// `service-ips-v4` / `service-ips-v6`: a frontend of a port that picks through a shared
    /// chain ([`Pick`], [`NetfilterConfig::shared_pick_chains`]): `addr . protocol . port` →
    /// `goto pick-…`, with the name its own chain would have had as the element's comment
    /// (what `dpctl` and the inspector name the service by).
    SharedFrontend {
        /// Frontend address.
        addr: IpAddr,
        /// Protocol.
        protocol: Protocol,
        /// Frontend port (the node port for NodePorts).
        port: u16,
        /// The shared chain and the label (behind one pointer: an element of every kind
        /// stays 40 bytes, and a ruleset holds one per backend slot).
        target: Arc<SharedTarget>,
    },
    /// `service-marks-v4` / `service-marks-v6`: `addr . protocol . port` → the mark of the
    /// frontend's slot group (`group id << SLOT_BITS`, with the masquerade bit where the
    /// port's own rule would have set it), for the frontends of [`Element::SharedFrontend`].
    Mark {
        /// Frontend address.
        addr: IpAddr,
        /// Protocol.
        protocol: Protocol,
        /// Frontend port.
        port: u16,
        /// The mark.
        mark: u32,
    },
    /// `group-backends-v4` / `group-backends-v6`: `group mark . slot` → backend `addr .
    /// port`, the backends of the slot groups the shared pick chains pick from.
    GroupBackend {
        /// `group id << SLOT_BITS | slot`: the group's mark is the bits above
        /// [`SLOT_BITS`], the slot (`0 .. slots`) the bits below.
        slot: u32,
        /// The backend.
        to: SocketAddr,
    },
}

/// A slot key split into the group's mark and the slot: the key of `group-backends-v4`.
pub fn split_slot(key: u32) -> (u32, u32) {
    let low = (1 << SLOT_BITS) - 1;
    (key & !low, key & low)
}

/// Where an [`Element::SharedFrontend`] leads, and what it is labelled with.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct SharedTarget {
    /// The shared pick chain.
    pub pick: Arc<str>,
    /// The port's chain name, `svc-v4-<ns>/<name>/<proto>/<port>` or `ext-…`.
    pub label: Arc<str>,
}

impl Element {
    /// The set or map the element belongs to.
    pub fn set(&self) -> &'static str {
        let (family, v4, v6) = match self {
            Element::Backend { to, .. } => (to.ip(), "backends-v4", "backends-v6"),
            Element::Frontend { addr, .. } | Element::SharedFrontend { addr, .. } => {
                (*addr, "service-ips-v4", "service-ips-v6")
            }
            Element::ClusterIp(ip) => (*ip, "cluster-ips-v4", "cluster-ips-v6"),
            Element::Hairpin(ip) => (*ip, "hairpin-v4", "hairpin-v6"),
            Element::Mark { addr, .. } => (*addr, "service-marks-v4", "service-marks-v6"),
            Element::GroupBackend { to, .. } => (to.ip(), "group-backends-v4", "group-backends-v6"),
        };
        by_family(IpFamily::of(&family), v4, v6)
    }

    /// Writes the key in nft syntax.
    pub fn write_key<W: std::fmt::Write + ?Sized>(&self, out: &mut W) -> std::fmt::Result {
        match self {
            Element::Backend { slot, .. } => write!(out, "{slot:#010x}"),
            Element::Frontend {
                addr,
                protocol,
                port,
                ..
            }
            | Element::SharedFrontend {
                addr,
                protocol,
                port,
                ..
            }
            | Element::Mark {
                addr,
                protocol,
                port,
                ..
            } => write!(out, "{addr} . {} . {port}", proto_name(*protocol)),
            Element::ClusterIp(ip) => write!(out, "{ip}"),
            Element::Hairpin(ip) => write!(out, "{ip} . {ip}"),
            Element::GroupBackend { slot, .. } => {
                let (group, slot) = split_slot(*slot);
                write!(out, "{group:#010x} . {slot}")
            }
        }
    }

    /// Writes ` : value` in nft syntax (maps only; nothing for set elements).
    pub fn write_value<W: std::fmt::Write + ?Sized>(&self, out: &mut W) -> std::fmt::Result {
        match self {
            Element::Backend { to, .. } | Element::GroupBackend { to, .. } => {
                write!(out, " : {} . {}", to.ip(), to.port())
            }
            Element::Frontend { chain, .. } => write!(out, " : goto {chain}"),
            Element::SharedFrontend { target, .. } => {
                write!(out, " comment \"{}\" : goto {}", target.label, target.pick)
            }
            Element::Mark { mark, .. } => write!(out, " : {mark:#010x}"),
            Element::ClusterIp(_) | Element::Hairpin(_) => Ok(()),
        }
    }

    /// The key in nft syntax.
    pub fn key(&self) -> String {
        let mut s = String::new();
        let _ = self.write_key(&mut s);
        s
    }
}

/// The largest slot count with a shared pick chain: a port with more backend slots keeps a
/// chain of its own. The shared chains are written by every full sync (4 per slot count:
/// both families, ClusterIP or not), never by a partial one: `nft` 1.0.6 refuses a new rule
/// that names an existing `group-backends` map ("conflicting protocols specified: tcp vs.
/// th", reading back its `th dport` type), while it accepts elements for it.
pub const PICK_SLOTS: u32 = 32;

/// A chain shared by the service ports that pick at random among `slots` backend slots and
/// need nothing else ([`NetfilterConfig::shared_pick_chains`]): the port's frontends lead
/// here, which looks the frontend's slot group up in `service-marks-v4` and translates to
/// the backend of `group . random slot` in `group-backends-v4` (kube-proxy has a chain per
/// service and per endpoint; the kernel walks every chain of the namespace on every commit,
/// so with 100k chains one element change costs ~40 ms).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Pick {
    /// The address family.
    pub family: IpFamily,
    /// Backend slots: the `numgen random mod` of the rule.
    pub slots: u32,
    /// Goes on to `dnat-clusterip-v4` (ClusterIP clients outside the cluster CIDRs are
    /// masqueraded there), else to `dnat-v4`.
    pub clusterip: bool,
}

impl Pick {
    /// The chain's name: `pick-v4-10`, `pick-clusterip-v4-10`.
    pub fn name(&self) -> String {
        let fs = self.family.suffix();
        let kind = if self.clusterip {
            "pick-clusterip"
        } else {
            "pick"
        };
        format!("{kind}-{fs}-{}", self.slots)
    }

    /// The chain's rules: the group's mark by frontend, the masquerade bit for ClusterIP
    /// clients outside the cluster CIDRs (as `dnat-clusterip-v4` sets it), the translation.
    pub fn rules(&self) -> Vec<String> {
        let fs = self.family.suffix();
        let ip = ip_kw(self.family);
        let mut rules = vec![format!(
            "meta mark set {ip} daddr . meta l4proto . th dport map @service-marks-{fs}"
        )];
        if self.clusterip {
            rules.push(format!(
                "{ip} saddr != @cluster-cidrs-{fs} meta mark set meta mark | {MASQUERADE_BIT:#010x}"
            ));
        }
        rules.push(format!(
            "counter name \"{TRANSLATED_COUNTER}\" meta l4proto {{ tcp, udp, sctp }} dnat {ip} to meta mark & {:#010x} . numgen random mod {} map @group-backends-{fs}",
            !MASQUERADE_BIT, self.slots
        ));
        rules
    }
}

/// The nft objects of one service. Each list is sorted by name (elements by value) and sized
/// exactly: a map or set per list would cost more than its content.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct NftService {
    /// Chains and their rules.
    pub chains: Vec<(Arc<str>, Vec<String>)>,
    /// Named sets (affinity) and their definition body.
    pub sets: Vec<(String, String)>,
    /// Elements in the shared maps and sets.
    pub elements: Box<[Element]>,
    /// Slot-group ids this service uses.
    pub ids: SlotIds,
}

impl NftService {
    /// The rules of chain `name`.
    pub fn chain(&self, name: &str) -> Option<&[String]> {
        lookup(&self.chains, name).map(Vec::as_slice)
    }

    /// The slot-group id of group `key`.
    pub fn id(&self, key: &str) -> Option<u32> {
        lookup(&self.ids, key).copied()
    }
}

/// An [`NftService`] being compiled, in maps; [`ServiceBuilder::finish`] makes it compact.
#[derive(Default)]
struct ServiceBuilder {
    chains: BTreeMap<Arc<str>, Vec<String>>,
    sets: BTreeMap<String, String>,
    elements: BTreeSet<Element>,
    ids: BTreeMap<String, u32>,
    /// The shared chains its ports lead to.
    picks: BTreeSet<Pick>,
}

impl ServiceBuilder {
    fn finish(self) -> NftService {
        let mut chains: Vec<_> = self.chains.into_iter().collect();
        chains.shrink_to_fit();
        let mut sets: Vec<_> = self.sets.into_iter().collect();
        sets.shrink_to_fit();
        let mut ids: Vec<_> = self.ids.into_iter().collect();
        ids.shrink_to_fit();
        NftService {
            chains,
            sets,
            elements: self.elements.into_iter().collect(),
            ids,
        }
    }
}

/// The elements of sorted `a` that are not in sorted `b`.
pub fn sorted_difference<'a, T: Ord>(a: &'a [T], b: &'a [T]) -> impl Iterator<Item = &'a T> {
    let mut j = 0;
    a.iter().filter(move |x| {
        while j < b.len() && b[j] < **x {
            j += 1;
        }
        !(j < b.len() && b[j] == **x)
    })
}

/// A compiled ruleset: node-wide part plus one [`NftService`] per service.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NftRuleset {
    /// Table name (family `inet`).
    pub table: String,
    /// Node-wide statements (sets, maps, base chains and their rules), in order.
    pub base: Vec<String>,
    /// Node-wide elements that change with local endpoints (hairpin pairs).
    pub node_elements: BTreeSet<Element>,
    /// Per-service objects.
    pub services: BTreeMap<ObjectName, NftService>,
    /// Every slot-group id in use.
    pub taken: BTreeSet<u32>,
    /// NetworkPolicy ([`super::policy`]): empty while the state has no policy.
    pub policy: NftPolicy,
    /// The shared pick chains in the table: with `shared_pick_chains`, every one up to
    /// [`PICK_SLOTS`] (a full sync writes them all), else none.
    pub picks: BTreeSet<Pick>,
}

/// What a partial sync changes: new versions of some services (`None`: removed) and hairpin
/// elements to add. Hairpin elements are only added between full syncs (an extra one is
/// harmless, see [`crate::plan::hairpin_candidates`]).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Patch {
    /// Changed services.
    pub services: BTreeMap<ObjectName, Option<NftService>>,
    /// Node-wide elements to add.
    pub node_elements: BTreeSet<Element>,
    /// Shared pick chains to add (the changed services lead to them; the table lacks them).
    pub picks: BTreeSet<Pick>,
}

impl NftRuleset {
    /// An empty ruleset (the node-wide part only).
    pub fn empty(node: &NodePlan, table: &str) -> Self {
        Self {
            table: table.to_owned(),
            base: base(node),
            node_elements: BTreeSet::new(),
            services: BTreeMap::new(),
            taken: BTreeSet::new(),
            policy: NftPolicy::default(),
            picks: if node.shared_pick_chains {
                all_picks()
            } else {
                BTreeSet::new()
            },
        }
    }

    /// Records a patch that the kernel accepted.
    pub fn apply_patch(&mut self, patch: Patch) {
        for (name, svc) in patch.services {
            if let Some(old) = self.services.remove(&name) {
                for (_, id) in &old.ids {
                    self.taken.remove(id);
                }
            }
            if let Some(svc) = svc {
                self.taken.extend(svc.ids.iter().map(|(_, id)| *id));
                self.services.insert(name, svc);
            }
        }
        self.node_elements.extend(patch.node_elements);
        self.picks.extend(patch.picks);
    }
}

/// Every shared pick chain: both families, ClusterIP or not, 1 to [`PICK_SLOTS`] slots.
fn all_picks() -> BTreeSet<Pick> {
    let mut out = BTreeSet::new();
    for family in [IpFamily::V4, IpFamily::V6] {
        for clusterip in [false, true] {
            for slots in 1..=PICK_SLOTS {
                out.insert(Pick {
                    family,
                    slots,
                    clusterip,
                });
            }
        }
    }
    out
}

/// `v4` or `v6` by family.
fn by_family(f: IpFamily, v4: &'static str, v6: &'static str) -> &'static str {
    match f {
        IpFamily::V4 => v4,
        IpFamily::V6 => v6,
    }
}

/// A name-safe spelling of an address (`:` is not allowed in unquoted nft names).
fn name_addr(a: &SocketAddr) -> String {
    format!("{}/{}", a.ip().to_string().replace(':', "_"), a.port())
}

fn nft_dnat_target(a: &SocketAddr) -> String {
    match a {
        SocketAddr::V4(v4) => format!("{}:{}", v4.ip(), v4.port()),
        SocketAddr::V6(v6) => format!("[{}]:{}", v6.ip(), v6.port()),
    }
}

fn join_set(items: &[IpNetwork]) -> String {
    items
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join(", ")
}

/// The full-sync ruleset of `state`, with fresh slot-group ids, planning one service at a
/// time: each service's plan is dropped once it is compiled (a whole
/// [`Plan`](crate::plan::Plan) would be held
/// next to the ruleset being built).
///
/// NetworkPolicy limits are the defaults ([`NetfilterConfig::nftables`]); see
/// [`compile_state_with`].
pub fn compile_state(state: &DesiredState, table: &str) -> Result<NftRuleset, Error> {
    compile_state_with(state, &NetfilterConfig::nftables(None).with_name(table))
}

/// [`compile_state`] into table `config.name` with the NetworkPolicy limits of `config`.
pub fn compile_state_with(
    state: &DesiredState,
    config: &NetfilterConfig,
) -> Result<NftRuleset, Error> {
    let table = config.name.as_str();
    let node = node_plan_with(&state.node, config);
    let mut rs = NftRuleset::empty(&node, table);
    // Name order, as the plan's map has it: slot-group ids are handed out in that order.
    // Of services with one name the last counts, as in the plan's map: reversed, a stable
    // sort puts it first of its name, and `dedup_by` keeps the first.
    let mut services: Vec<&Service> = state.services.iter().rev().collect();
    services.sort_by(|a, b| a.name.cmp(&b.name));
    services.dedup_by(|a, b| a.name == b.name);
    let changed = services
        .into_iter()
        .map(|s| (&s.name, Some(service_ports(state, s))));
    let patch = compile_patch(&rs, &node, changed, &local_pod_ips(state))?;
    rs.apply_patch(patch);
    rs.policy = super::policy::compile(state, config.max_policy_elements)?;
    Ok(rs)
}

/// Compiles the services in `changed` (`None`: removed) against `old`: unchanged groups keep
/// their ids, new ones take free ids. Work is proportional to the change, not to the number of
/// services.
pub fn compile_patch<'a, P: AsRef<[PortPlan]>>(
    old: &NftRuleset,
    node: &NodePlan,
    changed: impl IntoIterator<Item = (&'a ObjectName, Option<P>)>,
    hairpin: &BTreeSet<IpAddr>,
) -> Result<Patch, Error> {
    // The ids this patch hands out, beside the ruleset's (not a copy of those: at 100k
    // services the copy alone was a large part of one endpoint change).
    let mut added: BTreeSet<u32> = BTreeSet::new();
    let mut next = 1u32;
    let mut patch = Patch::default();
    for (name, ports) in changed {
        let Some(ports) = ports else {
            patch.services.insert(name.clone(), None);
            continue;
        };
        let ports = ports.as_ref();
        let previous = old.services.get(name);
        let mut ids = BTreeMap::new();
        for p in ports {
            if p.affinity_timeout.is_some() {
                continue;
            }
            for (kind, s) in groups(p)? {
                if s.len() > MAX_SLOTS {
                    return Err(Error::CapacityExceeded {
                        what: format!("backend slots of service port {}", p.key()),
                        needed: s.len(),
                        capacity: MAX_SLOTS,
                    });
                }
                let key = group_key(p, kind);
                if let Some(id) = previous.and_then(|prev| prev.id(&key)) {
                    ids.insert(key, id);
                    continue;
                }
                while old.taken.contains(&next) || added.contains(&next) {
                    next += 1;
                }
                if next > MAX_GROUP_ID {
                    return Err(Error::CapacityExceeded {
                        what: "backend slot groups".to_owned(),
                        needed: old.taken.len() + added.len() + 1,
                        capacity: MAX_GROUP_ID as usize,
                    });
                }
                added.insert(next);
                ids.insert(key, next);
            }
        }
        let mut svc = ServiceBuilder {
            ids,
            ..ServiceBuilder::default()
        };
        for p in ports {
            compile_port(node, p, &mut svc)?;
        }
        patch.picks.extend(
            std::mem::take(&mut svc.picks)
                .into_iter()
                .filter(|p| !old.picks.contains(p)),
        );
        patch.services.insert(name.clone(), Some(svc.finish()));
    }
    for ip in hairpin {
        let e = Element::Hairpin(*ip);
        if !old.node_elements.contains(&e) {
            patch.node_elements.insert(e);
        }
    }
    Ok(patch)
}

/// The backend of each slot: weighted repetition for random choice, the Maglev lookup table
/// (core's, so every node and backend builds the same) for Maglev.
fn slot_list(p: &PortPlan, backends: &[(SocketAddr, u16)]) -> Result<Vec<SocketAddr>, Error> {
    if !p.maglev {
        return Ok(slots(backends, MAX_SLOTS));
    }
    let keyed: Vec<MaglevBackend> = backends
        .iter()
        .map(|(a, w)| MaglevBackend {
            key: a.to_string(),
            weight: *w,
        })
        .collect();
    let table = maglev_table(&keyed, MAGLEV_SLOTS).map_err(|e| Error::CapacityExceeded {
        what: format!("Maglev table of service port {} ({e})", p.key()),
        needed: backends.len(),
        capacity: MAGLEV_SLOTS as usize,
    })?;
    // Entries index `keyed`, which is in `backends` order.
    Ok(table.into_iter().map(|i| backends[i as usize].0).collect())
}

/// The distinct slot lists of a port, each with the kind that names it.
fn groups(p: &PortPlan) -> Result<Vec<(&'static str, Vec<SocketAddr>)>, Error> {
    // ClusterIPs pick by internalTrafficPolicy whoever the client is; the cluster-wide
    // choice serves the external frontends' local clients.
    let mut used: Vec<(&'static str, &Choice)> = Vec::new();
    if p.has_external() {
        used.push(("cluster", &p.cluster));
    }
    if !p.cluster_ips.is_empty() {
        used.push(("internal", &p.internal));
    }
    if p.has_external() {
        used.push(("external", &p.external));
    }
    let mut out: Vec<(&'static str, Vec<SocketAddr>)> = Vec::new();
    for (kind, choice) in used {
        if let Choice::Backends(b) = choice {
            let s = slot_list(p, b)?;
            if !out.iter().any(|(_, o)| *o == s) {
                out.push((kind, s));
            }
        }
    }
    Ok(out)
}

fn group_key(p: &PortPlan, kind: &str) -> String {
    format!("{}-{}#{}", p.family.suffix(), p.key(), kind)
}

fn compile_port(node: &NodePlan, p: &PortPlan, svc: &mut ServiceBuilder) -> Result<(), Error> {
    let ids = std::mem::take(&mut svc.ids);
    let ctx = ChoiceCtx {
        p,
        log: node.log,
        ids: &ids,
        written: std::cell::RefCell::new(Vec::new()),
    };
    let mut result = Ok(());
    if !p.cluster_ips.is_empty() {
        result = compile_cluster_ip(node, &ctx, svc);
    }
    if result.is_ok() && p.has_external() {
        result = compile_external(node, &ctx, svc);
    }
    svc.ids = ids;
    result
}

/// The ClusterIP chain: every client by internalTrafficPolicy (kube-proxy's
/// `internalTrafficChain`); clients outside the cluster CIDRs (the node itself, outside
/// clients) are masqueraded, every client with `masquerade.allServices`.
fn compile_cluster_ip(
    node: &NodePlan,
    ctx: &ChoiceCtx<'_>,
    svc: &mut ServiceBuilder,
) -> Result<(), Error> {
    let p = ctx.p;
    let fs = p.family.suffix();
    let key = p.key();
    let chain: Arc<str> = format!("svc-{fs}-{key}").into();
    let mut rules = Vec::new();
    // kube-proxy: `jump mark-for-masquerade` for every client with --masquerade-all, else
    // for `IfNotLocal` (source outside the cluster CIDR). Here the source test sits in the
    // shared `dnat-clusterip` chain: one rule per ClusterIP port (10k rules fewer to load at
    // 10k services than a masquerade rule each).
    // A family without cluster CIDRs has no such test (kube-proxy has no local detector for
    // it then): its clients keep their address, except hairpin.
    let masq = if node.masquerade_services {
        Masq::Yes
    } else if node
        .cluster_cidrs
        .iter()
        .any(|c| IpFamily::of(&c.ip()) == p.family)
    {
        Masq::Outside
    } else {
        Masq::No
    };
    if let Some((pick, offset)) = ctx.shared_pick(node, "internal", &p.internal, masq, svc)? {
        for cip in &p.cluster_ips {
            shared_frontend(svc, pick, offset, (*cip, p.protocol, p.port), &chain);
            svc.elements.insert(Element::ClusterIp(*cip));
        }
        return Ok(());
    }
    ctx.render("", "internal", &p.internal, masq, &mut rules, svc)?;
    svc.chains.insert(Arc::clone(&chain), with_counter(rules));
    for cip in &p.cluster_ips {
        svc.elements.insert(Element::Frontend {
            addr: *cip,
            protocol: p.protocol,
            port: p.port,
            chain: Arc::clone(&chain),
        });
        svc.elements.insert(Element::ClusterIp(*cip));
    }
    Ok(())
}

/// The external chain (NodePort, ExternalIPs, LoadBalancer IPs), kube-proxy's
/// `externalTrafficChain`: externalTrafficPolicy Cluster masquerades everyone and picks
/// cluster-wide; Local short-circuits the node (`fib saddr type local`: cluster-wide,
/// masqueraded) and this node's pods (cluster-wide, keeping their address unless
/// `masquerade.allServices`), and serves outside clients by the policy, keeping their address.
/// LoadBalancer IPs with loadBalancerSourceRanges go through a firewall chain first.
fn compile_external(
    node: &NodePlan,
    ctx: &ChoiceCtx<'_>,
    svc: &mut ServiceBuilder,
) -> Result<(), Error> {
    let p = ctx.p;
    let fs = p.family.suffix();
    let key = p.key();
    let ip = ip_kw(p.family);
    let chain: Arc<str> = format!("ext-{fs}-{key}").into();
    let mut rules = Vec::new();
    // A firewall chain goes on to the external chain: with source ranges on LoadBalancer
    // IPs the port keeps its chain.
    let firewalled = !p.source_ranges.is_empty() && !p.load_balancer_ips.is_empty();
    let shared = if p.external_masquerade && !firewalled {
        ctx.shared_pick(node, "external", &p.external, Masq::Yes, svc)?
    } else {
        None
    };
    if let Some((pick, offset)) = shared {
        let mut frontends: Vec<(IpAddr, u16)> =
            p.external_ips.iter().map(|a| (*a, p.port)).collect();
        if let Some((addrs, np)) = &p.node_port {
            frontends.extend(addrs.iter().map(|a| (*a, *np)));
        }
        frontends.extend(p.load_balancer_ips.iter().map(|a| (*a, p.port)));
        for (addr, port) in frontends {
            shared_frontend(svc, pick, offset, (addr, p.protocol, port), &chain);
        }
        return Ok(());
    }
    if p.external_masquerade {
        // externalTrafficPolicy Cluster: pods, the host and outside clients pick alike and
        // are masqueraded alike (`jump mark-for-masquerade`), so one rule serves them all.
        ctx.render("", "external", &p.external, Masq::Yes, &mut rules, svc)?;
    } else {
        // kube-proxy's "masquerade local traffic" + "short-circuit local traffic": the node
        // itself, cluster-wide, masqueraded.
        ctx.render(
            "fib saddr type local",
            "cluster",
            &p.cluster,
            Masq::Yes,
            &mut rules,
            svc,
        )?;
        // kube-proxy's "short-circuit pod traffic": this node's pods, cluster-wide, keeping
        // their address (masqueraded too with allServices). kube-proxy tells pods by
        // `IfLocal`; here by this node's pod CIDRs (its NodeCIDR local detection), as the
        // reference model does: a pod of another node reaching this node's NodePort is an
        // outside client under the policy, and so is a client on another interface.
        let pods = if node.masquerade_services {
            Masq::Yes
        } else {
            Masq::No
        };
        ctx.render(
            &format!("{ip} saddr @pod-cidrs-{fs}"),
            "cluster",
            &p.cluster,
            pods,
            &mut rules,
            svc,
        )?;
        ctx.render("", "external", &p.external, Masq::No, &mut rules, svc)?;
    }
    svc.chains.insert(Arc::clone(&chain), with_counter(rules));
    let mut frontends: Vec<(IpAddr, u16, Arc<str>)> = Vec::new();
    for a in &p.external_ips {
        frontends.push((*a, p.port, chain.clone()));
    }
    if let Some((addrs, np)) = &p.node_port {
        for a in addrs {
            frontends.push((*a, *np, Arc::clone(&chain)));
        }
    }
    if !p.load_balancer_ips.is_empty() {
        let target = if p.source_ranges.is_empty() {
            Arc::clone(&chain)
        } else {
            // kube-proxy's firewall chain: `saddr != { ranges, LB IPs if allowFromNode }
            // drop`, for every client (pods, the node, outside). Reached through the
            // frontend's own `service-ips` element rather than a second `firewall-ips` vmap
            // in a filter chain: one lookup per new connection, not two.
            let fw: Arc<str> = format!("fw-{fs}-{key}").into();
            let mut fw_rules = eventlog::nft_rules(
                &format!("{ip} saddr != {{ {} }}", join_set(&p.source_ranges)),
                "goto drop-service",
                &LogPrefix::new(EventVerdict::Dropped, DropReason::SourceRange).of(&p.service),
                &node.log,
            );
            fw_rules.push(format!("goto {chain}"));
            svc.chains.insert(Arc::clone(&fw), fw_rules);
            fw
        };
        for a in &p.load_balancer_ips {
            frontends.push((*a, p.port, Arc::clone(&target)));
        }
    }
    for (addr, port, chain) in frontends {
        svc.elements.insert(Element::Frontend {
            addr,
            protocol: p.protocol,
            port,
            chain,
        });
    }
    Ok(())
}

/// A frontend of a port that picks through the shared chain `pick`: its `service-ips`
/// element (labelled with the port's own chain name `label`) and its `service-marks`
/// element, the group's mark `mark`.
fn shared_frontend(
    svc: &mut ServiceBuilder,
    pick: Pick,
    mark: u32,
    (addr, protocol, port): (IpAddr, Protocol, u16),
    label: &Arc<str>,
) {
    svc.elements.insert(Element::SharedFrontend {
        addr,
        protocol,
        port,
        target: Arc::new(SharedTarget {
            pick: pick.name().into(),
            label: Arc::clone(label),
        }),
    });
    svc.elements.insert(Element::Mark {
        addr,
        protocol,
        port,
        mark,
    });
    svc.picks.insert(pick);
}

/// Puts a counter in front of the first rule: it counts every packet that enters the chain
/// (statements run in order, so the counter runs before the rule's matches) without a rule of
/// its own: a rule fewer to load per chain.
fn with_counter(mut rules: Vec<String>) -> Vec<String> {
    match rules.first_mut() {
        Some(first) => first.insert_str(0, "counter "),
        None => rules.push("counter".to_owned()),
    }
    rules
}

/// Whether the connections a rule translates are masqueraded.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Masq {
    No,
    Yes,
    /// The rule serves every client of a ClusterIP: it leads to `dnat-clusterip`, which
    /// masquerades the connections from sources outside the cluster CIDRs (the node
    /// itself, outside clients), as a ClusterIP always does.
    Outside,
}

struct ChoiceCtx<'a> {
    p: &'a PortPlan,
    /// How the drop and reject rules log.
    log: LogPlan,
    ids: &'a BTreeMap<String, u32>,
    /// Slot groups whose backend elements are in the service already: the rules of a port
    /// that pick from the same group add its elements once.
    written: std::cell::RefCell<Vec<(u32, bool)>>,
}

impl ChoiceCtx<'_> {
    /// Appends the rules that carry out `choice`, guarded by `cond` (empty: unconditional).
    fn render(
        &self,
        cond: &str,
        kind: &'static str,
        choice: &Choice,
        masq: Masq,
        rules: &mut Vec<String>,
        svc: &mut ServiceBuilder,
    ) -> Result<(), Error> {
        let p = self.p;
        let fs = p.family.suffix();
        let prefix = if cond.is_empty() {
            String::new()
        } else {
            format!("{cond} ")
        };
        match choice {
            // A service (or, eTP Local, a node) without a backend for this client: logged
            // with the service's name, counted by reason (see `crate::eventlog`).
            Choice::Drop => rules.extend(eventlog::nft_rules(
                cond,
                "goto drop-service",
                &LogPrefix::new(EventVerdict::Dropped, DropReason::NoBackend).of(&p.service),
                &self.log,
            )),
            Choice::Reject => rules.extend(eventlog::nft_rules(
                cond,
                "goto reject-service",
                &LogPrefix::new(EventVerdict::Rejected, DropReason::NoBackend).of(&p.service),
                &self.log,
            )),
            Choice::Backends(b) => {
                let s = if p.affinity_timeout.is_some() {
                    slots(b, MAX_SLOTS)
                } else {
                    slot_list(p, b)?
                };
                if let Some(timeout) = p.affinity_timeout {
                    let sel = self.affinity_chains(kind, &s, b, timeout, svc);
                    let set_bit = format!("meta mark set meta mark | {MASQUERADE_BIT:#010x}");
                    match masq {
                        Masq::No => rules.push(format!("{prefix}goto {sel}")),
                        Masq::Yes => rules.push(format!("{prefix}{set_bit} goto {sel}")),
                        Masq::Outside => {
                            // The endpoint chains translate, not `dnat-clusterip`: the
                            // source test is written here.
                            let ip = ip_kw(p.family);
                            rules.push(format!(
                                "{prefix}{ip} saddr != @cluster-cidrs-{fs} {set_bit} goto {sel}"
                            ));
                            rules.push(format!("{prefix}goto {sel}"));
                        }
                    }
                } else {
                    let id = self.group_id(kind, &s)?;
                    let mut offset = id << SLOT_BITS;
                    if masq == Masq::Yes {
                        offset |= MASQUERADE_BIT;
                    }
                    let dnat = if masq == Masq::Outside {
                        "dnat-clusterip"
                    } else {
                        "dnat"
                    };
                    let pick = if p.maglev {
                        let ip = ip_kw(p.family);
                        format!(
                            "jhash {ip} saddr . {ip} daddr . meta l4proto . th sport . th dport mod {} seed {MAGLEV_SEED:#010x}",
                            s.len()
                        )
                    } else {
                        format!("numgen random mod {}", s.len())
                    };
                    rules.push(format!(
                        "{prefix}meta mark set {pick} offset {offset:#010x} goto {dnat}-{fs}"
                    ));
                    self.backend_elements(id, &s, false, svc);
                }
            }
        }
        Ok(())
    }

    /// The backend elements of slot group `id` (once per group, map and service): in
    /// `group-backends` for the shared pick chains (`grouped`), else in `backends`.
    fn backend_elements(&self, id: u32, s: &[SocketAddr], grouped: bool, svc: &mut ServiceBuilder) {
        let mut written = self.written.borrow_mut();
        if !written.contains(&(id, grouped)) {
            written.push((id, grouped));
            for (i, a) in s.iter().enumerate() {
                svc.elements.insert(if grouped {
                    Element::GroupBackend {
                        slot: (id << SLOT_BITS) | i as u32,
                        to: *a,
                    }
                } else {
                    Element::Backend {
                        slot: (id << SLOT_BITS) | i as u32,
                        to: *a,
                    }
                });
            }
        }
    }

    /// With [`NodePlan::shared_pick_chains`], the shared chain and the mark offset of a
    /// `choice` that is a plain random pick (no affinity, no Maglev) for every client of
    /// the chain; its backend elements are added. `None`: the port needs its own chain.
    fn shared_pick(
        &self,
        node: &NodePlan,
        kind: &str,
        choice: &Choice,
        masq: Masq,
        svc: &mut ServiceBuilder,
    ) -> Result<Option<(Pick, u32)>, Error> {
        let p = self.p;
        let Choice::Backends(b) = choice else {
            return Ok(None);
        };
        if !node.shared_pick_chains || p.affinity_timeout.is_some() || p.maglev {
            return Ok(None);
        }
        let s = slot_list(p, b)?;
        if s.len() > PICK_SLOTS as usize {
            return Ok(None);
        }
        let id = self.group_id(kind, &s)?;
        let mut offset = id << SLOT_BITS;
        if masq == Masq::Yes {
            offset |= MASQUERADE_BIT;
        }
        self.backend_elements(id, &s, true, svc);
        let pick = Pick {
            family: p.family,
            slots: s.len() as u32,
            clusterip: masq == Masq::Outside,
        };
        Ok(Some((pick, offset)))
    }

    fn group_id(&self, kind: &str, s: &[SocketAddr]) -> Result<u32, Error> {
        // A kind whose slot list equals an earlier kind's shares that kind's group.
        for (k, other) in groups(self.p)? {
            if other == s {
                if let Some(id) = self.ids.get(&group_key(self.p, k)) {
                    return Ok(*id);
                }
            }
        }
        Err(NetfilterError::Internal {
            backend: "nftables",
            detail: format!("no slot group for {} {kind}", self.p.key()),
        }
        .into())
    }

    /// kube-proxy-style affinity: a per-endpoint chain that records the client in a
    /// per-endpoint timeout set, and a selection chain that checks those sets first.
    fn affinity_chains(
        &self,
        kind: &str,
        s: &[SocketAddr],
        backends: &[(SocketAddr, u16)],
        timeout: u32,
        svc: &mut ServiceBuilder,
    ) -> String {
        let p = self.p;
        let f = p.family;
        let fs = f.suffix();
        let ip = ip_kw(f);
        let key = p.key();
        let proto = proto_name(p.protocol);
        let ep_name = |a: &SocketAddr| format!("ep-{fs}-{key}__{}", name_addr(a));
        let aff_name = |a: &SocketAddr| format!("aff-{fs}-{key}__{}-{timeout}s", name_addr(a));
        let sel = format!("sel-{fs}-{key}-{kind}");
        let mut rules = Vec::new();
        for (a, _) in backends {
            svc.sets.insert(
                aff_name(a),
                format!(
                    "type {}; flags dynamic,timeout; timeout {timeout}s;",
                    addr_type(f)
                ),
            );
            svc.chains.insert(
                ep_name(a).into(),
                vec![
                    format!("update @{} {{ {ip} saddr }}", aff_name(a)),
                    format!(
                        "counter name \"{TRANSLATED_COUNTER}\" meta l4proto {proto} dnat {ip} to {}",
                        nft_dnat_target(a)
                    ),
                ],
            );
            rules.push(format!("{ip} saddr @{} goto {}", aff_name(a), ep_name(a)));
        }
        let vmap = s
            .iter()
            .enumerate()
            .map(|(i, a)| format!("{i} : goto {}", ep_name(a)))
            .collect::<Vec<_>>()
            .join(", ");
        rules.push(format!("numgen random mod {} vmap {{ {vmap} }}", s.len()));
        svc.chains.insert(sel.as_str().into(), rules);
        sel
    }
}

/// Node-wide statements, relative to the table (rendered with `add ... inet <table> `).
fn base(node: &NodePlan) -> Vec<String> {
    let mut out = Vec::new();
    for f in [IpFamily::V4, IpFamily::V6] {
        let fs = f.suffix();
        let at = addr_type(f);
        out.push(format!(
            "map service-ips-{fs} {{ type {at} . inet_proto . inet_service : verdict; }}"
        ));
        out.push(format!("set cluster-ips-{fs} {{ type {at}; }}"));
        out.push(format!(
            "map backends-{fs} {{ type mark : {at} . inet_service; }}"
        ));
        out.push(format!("set hairpin-{fs} {{ type {at} . {at}; }}"));
        if node.shared_pick_chains {
            let ip = ip_kw(f);
            out.push(format!(
                "map service-marks-{fs} {{ type {at} . inet_proto . inet_service : mark; }}"
            ));
            out.push(format!(
                "map group-backends-{fs} {{ typeof meta mark . numgen random mod 1 : {ip} daddr . th dport; }}"
            ));
        }
        let of = |v: &[IpNetwork]| -> Vec<IpNetwork> {
            v.iter()
                .copied()
                .filter(|n| IpFamily::of(&n.ip()) == f)
                .collect()
        };
        for (name, nets) in [
            ("cluster-cidrs", of(&node.cluster_cidrs)),
            ("pod-cidrs", of(&node.pod_cidrs)),
            ("no-masquerade", of(&node.no_masquerade)),
            ("service-cidrs", of(&node.service_cidrs)),
        ] {
            let elements = if nets.is_empty() {
                String::new()
            } else {
                format!(" elements = {{ {} }};", join_set(&nets))
            };
            out.push(format!(
                "set {name}-{fs} {{ type {at}; flags interval; auto-merge;{elements} }}"
            ));
        }
    }
    // Named counters: drops and rejects by verdict and reason (on the rules that drop, so
    // they count whether or not anything is logged), packets translated, packets logged
    // (only when logging is on: its presence tells `stats` that drops not logged were held
    // back). `Dataplane::stats` reads these few objects (`nft list counters table`), not
    // the whole table.
    for (v, r) in eventlog::COUNTED {
        out.push(format!("counter {}", eventlog::counter_name(v, r)));
    }
    out.push(format!("counter {TRANSLATED_COUNTER}"));
    if node.log.rate > 0 {
        out.push(format!("counter {}", eventlog::LOGGED_COUNTER));
    }
    out.extend(base_chains(node));
    out
}

/// The named counter of the packets translated to a backend (the DNAT rules).
pub const TRANSLATED_COUNTER: &str = "translated";

/// Node-wide chains and their rules.
fn base_chains(node: &NodePlan) -> Vec<String> {
    let mut out = Vec::new();
    for (chain, spec) in [
        (
            "nat-prerouting",
            "type nat hook prerouting priority dstnat; policy accept;",
        ),
        (
            "nat-output",
            "type nat hook output priority -100; policy accept;",
        ),
        (
            "nat-postrouting",
            "type nat hook postrouting priority srcnat; policy accept;",
        ),
        // kube-proxy's filter-forward and filter-output-post-dnat: they see a packet after
        // its DNAT, so a destination still in the service CIDRs is no service frontend.
        (
            "filter-forward",
            "type filter hook forward priority -110; policy accept;",
        ),
        (
            "filter-output-post-dnat",
            "type filter hook output priority -90; policy accept;",
        ),
    ] {
        out.push(format!("chain {chain} {{ {spec} }}"));
    }
    for chain in [
        "services",
        "dnat-v4",
        "dnat-v6",
        "dnat-clusterip-v4",
        "dnat-clusterip-v6",
        "cluster-ips-check",
        "reject-service",
        "drop-service",
        DENY_POLICY_IN_CHAIN,
        DENY_POLICY_OUT_CHAIN,
        DROP_SPOOFED_CHAIN,
        "masquerade-node",
    ] {
        out.push(format!("chain {chain}"));
    }
    let rule = |chain: &str, r: &str| format!("rule {chain} {r}");
    out.push(rule("nat-prerouting", "jump services"));
    out.push(rule("nat-output", "jump services"));
    out.push(rule(
        "filter-forward",
        "ct state new jump cluster-ips-check",
    ));
    out.push(rule(
        "filter-output-post-dnat",
        "ct state new jump cluster-ips-check",
    ));
    for f in [IpFamily::V4, IpFamily::V6] {
        let (fs, ip) = (f.suffix(), ip_kw(f));
        out.push(rule(
            "services",
            &format!("{ip} daddr . meta l4proto . th dport vmap @service-ips-{fs}"),
        ));
    }
    for f in [IpFamily::V4, IpFamily::V6] {
        let (fs, ip) = (f.suffix(), ip_kw(f));
        // kube-proxy's cluster-ips-check: an allocated ClusterIP on a port it does not
        // serve is rejected, the rest of the service CIDRs dropped (a served port was
        // translated before this chain sees the packet).
        for r in eventlog::nft_rules(
            &format!("{ip} daddr @cluster-ips-{fs}"),
            "goto reject-service",
            &LogPrefix::new(EventVerdict::Rejected, DropReason::Unallocated),
            &node.log,
        ) {
            out.push(rule("cluster-ips-check", &r));
        }
        for r in eventlog::nft_rules(
            &format!("{ip} daddr @service-cidrs-{fs}"),
            "goto drop-service",
            &LogPrefix::new(EventVerdict::Dropped, DropReason::Unallocated),
            &node.log,
        ) {
            out.push(rule("cluster-ips-check", &r));
        }
        out.push(rule(
            &format!("dnat-{fs}"),
            &format!(
                "counter name \"{TRANSLATED_COUNTER}\" meta l4proto {{ tcp, udp, sctp }} dnat {ip} to meta mark & {:#010x} map @backends-{fs}",
                !MASQUERADE_BIT
            ),
        ));
        // A ClusterIP client outside the cluster CIDRs (the node itself, an outside client)
        // is masqueraded: kube-proxy's `IfNotLocal ... jump mark-for-masquerade`, here once
        // for every ClusterIP rule that leads here instead of a rule per service.
        out.push(rule(
            &format!("dnat-clusterip-{fs}"),
            &format!(
                "{ip} saddr != @cluster-cidrs-{fs} meta mark set meta mark | {MASQUERADE_BIT:#010x}"
            ),
        ));
        out.push(rule(
            &format!("dnat-clusterip-{fs}"),
            &format!("goto dnat-{fs}"),
        ));
    }
    out.extend(drop_rules(node));
    out.extend(masquerade_rules(node));
    out
}

/// The rules of the chains that drop or reject: `reject-service` and `drop-service`
/// (counted by reason and logged where they are reached from), NetworkPolicy's
/// `deny-policy-in`, `deny-policy-out` and `drop-spoofed`.
fn drop_rules(node: &NodePlan) -> Vec<String> {
    let mut out = Vec::new();
    let rule = |chain: &str, r: &str| format!("rule {chain} {r}");
    out.push(rule(
        "reject-service",
        "meta l4proto tcp reject with tcp reset",
    ));
    out.push(rule("reject-service", "reject with icmpx port-unreachable"));
    out.push(rule("drop-service", "drop"));
    // NetworkPolicy's drops, here so that the policy layer (created with the first policy)
    // needs no configuration of its own: its endpoint chains end in `goto deny-policy-in`
    // or `goto deny-policy-out`, its anti-spoofing chain in `goto drop-spoofed`.
    // One chain per direction, for the prefix: both run in forward, and an ingress denial
    // is reported at the server's interface (see `crate::events`). One counter for both.
    for (chain, direction) in [
        (DENY_POLICY_IN_CHAIN, PolicyType::Ingress),
        (DENY_POLICY_OUT_CHAIN, PolicyType::Egress),
    ] {
        for r in eventlog::nft_rules("", "drop", &LogPrefix::policy_denial(direction), &node.log) {
            out.push(rule(chain, &r));
        }
    }
    for r in eventlog::nft_rules(
        "",
        "drop",
        &LogPrefix::new(EventVerdict::Dropped, DropReason::Spoofed),
        &node.log,
    ) {
        out.push(rule(DROP_SPOOFED_CHAIN, &r));
    }
    out
}

/// The `masquerade-node` chain and the `nat-postrouting` rules that lead to it.
fn masquerade_rules(node: &NodePlan) -> Vec<String> {
    let rule = |chain: &str, r: &str| format!("rule {chain} {r}");
    let mut out = Vec::new();
    for f in [IpFamily::V4, IpFamily::V6] {
        let ip = ip_kw(f);
        let nfproto = match f {
            IpFamily::V4 => "ipv4",
            IpFamily::V6 => "ipv6",
        };
        match node.masquerade_source(f) {
            Some(a) => out.push(rule(
                "masquerade-node",
                &format!("meta nfproto {nfproto} snat {ip} to {a}"),
            )),
            None => out.push(rule(
                "masquerade-node",
                &format!("meta nfproto {nfproto} masquerade"),
            )),
        }
    }
    out.push(rule(
        "nat-postrouting",
        &format!(
            "ct status dnat meta mark & {MASQUERADE_BIT:#010x} == {MASQUERADE_BIT:#010x} goto masquerade-node"
        ),
    ));
    for f in [IpFamily::V4, IpFamily::V6] {
        let (fs, ip) = (f.suffix(), ip_kw(f));
        out.push(rule(
            "nat-postrouting",
            &format!("ct status dnat {ip} saddr . {ip} daddr @hairpin-{fs} goto masquerade-node"),
        ));
    }
    if node.masquerade {
        for f in [IpFamily::V4, IpFamily::V6] {
            let (fs, ip) = (f.suffix(), ip_kw(f));
            // Service connections were decided above (mark bit, hairpin); this is plain pod
            // traffic leaving the cluster (or, with `all`, leaving the node's pods).
            let exempt = if node.masquerade_all {
                "pod-cidrs"
            } else {
                "no-masquerade"
            };
            out.push(rule(
                "nat-postrouting",
                &format!(
                    "ct status & dnat == 0 {ip} saddr @pod-cidrs-{fs} {ip} daddr != @{exempt}-{fs} goto masquerade-node"
                ),
            ));
        }
    }
    out
}

fn add(table: &str, stmt: &str) -> String {
    // `rule <chain> <rule>` → `add rule inet T <chain> <rule>`; same shape for the others.
    let (kind, rest) = stmt.split_once(' ').unwrap_or((stmt, ""));
    format!("add {kind} inet {table} {rest}\n")
}

/// The sets and maps elements go in, in the order transactions list them.
const ELEMENT_SETS: [&str; 12] = [
    "backends-v4",
    "backends-v6",
    "group-backends-v4",
    "group-backends-v6",
    "service-marks-v4",
    "service-marks-v6",
    "cluster-ips-v4",
    "cluster-ips-v6",
    "hairpin-v4",
    "hairpin-v6",
    "service-ips-v4",
    "service-ips-v6",
];

/// Elements per `add element` / `delete element` line.
const ELEMENTS_PER_LINE: usize = 2000;

/// Writes `verb element` lines for the elements `elements()` yields for which `keep` says
/// `true`, set by set, at most [`ELEMENTS_PER_LINE`] to a line (values only with `add`).
/// `elements` is called once per set.
fn element_lines<'a, I: Iterator<Item = &'a Element>, W: std::fmt::Write + ?Sized>(
    table: &str,
    verb: &str,
    elements: impl Fn() -> I,
    mut keep: impl FnMut(&Element) -> bool,
    out: &mut W,
) -> std::fmt::Result {
    for set in ELEMENT_SETS {
        let mut n = 0usize;
        for e in elements().filter(|e| e.set() == set) {
            if !keep(e) {
                continue;
            }
            if n.is_multiple_of(ELEMENTS_PER_LINE) {
                if n > 0 {
                    out.write_str(" }\n")?;
                }
                write!(out, "{verb} element inet {table} {set} {{ ")?;
            } else {
                out.write_str(", ")?;
            }
            e.write_key(out)?;
            if verb == "add" {
                e.write_value(out)?;
            }
            n += 1;
        }
        if n > 0 {
            out.write_str(" }\n")?;
        }
    }
    Ok(())
}

fn service_chain_lines<W: std::fmt::Write + ?Sized>(
    table: &str,
    svc: &NftService,
    out: &mut W,
) -> std::fmt::Result {
    for (name, def) in &svc.sets {
        writeln!(out, "add set inet {table} {name} {{ {def} }}")?;
    }
    for (name, _) in &svc.chains {
        writeln!(out, "add chain inet {table} {name}")?;
    }
    Ok(())
}

fn rule_lines<W: std::fmt::Write + ?Sized>(
    table: &str,
    chain: &str,
    rules: &[String],
    out: &mut W,
) -> std::fmt::Result {
    for r in rules {
        writeln!(out, "add rule inet {table} {chain} {r}")?;
    }
    Ok(())
}

/// Adds the shared pick chains `picks` and their rules.
fn pick_lines<W: std::fmt::Write + ?Sized>(
    table: &str,
    picks: &BTreeSet<Pick>,
    out: &mut W,
) -> std::fmt::Result {
    for p in picks {
        let name = p.name();
        writeln!(out, "add chain inet {table} {name}")?;
        for r in p.rules() {
            writeln!(out, "add rule inet {table} {name} {r}")?;
        }
    }
    Ok(())
}

/// The full-sync transaction: replaces our table, and nothing else, atomically.
pub fn render_full(rs: &NftRuleset) -> String {
    let mut out = String::new();
    let _ = write_full_except(rs, |_| false, &mut out);
    out
}

/// Writes [`render_full`]'s transaction into `out` without the elements for which
/// `leave_out` says `true` (the caller sends them to the kernel another way). The text of 10k
/// services is megabytes: the backend streams it to `nft` rather than building it.
pub fn write_full_except<W: std::fmt::Write + ?Sized>(
    rs: &NftRuleset,
    mut leave_out: impl FnMut(&Element) -> bool,
    out: &mut W,
) -> std::fmt::Result {
    let t = &rs.table;
    writeln!(out, "add table inet {t}")?;
    writeln!(out, "delete table inet {t}")?;
    writeln!(out, "add table inet {t}")?;
    for stmt in &rs.base {
        out.write_str(&add(t, stmt))?;
    }
    pick_lines(t, &rs.picks, out)?;
    for svc in rs.services.values() {
        service_chain_lines(t, svc, out)?;
    }
    for svc in rs.services.values() {
        for (chain, rules) in &svc.chains {
            rule_lines(t, chain, rules, out)?;
        }
    }
    let elements = || {
        rs.node_elements
            .iter()
            .chain(rs.services.values().flat_map(|s| s.elements.iter()))
    };
    element_lines(t, "add", elements, |e| !leave_out(e), out)?;
    super::policy::write_full(&rs.policy, t, out)
}

/// The removal transaction: deletes our table (and only it). `add` first so that deleting a
/// table that is not there is not an error.
pub fn render_reset(table: &str) -> String {
    format!("add table inet {table}\ndelete table inet {table}\n")
}

/// The partial-sync transaction that applies `patch` to `old`, touching only the chains, sets
/// and elements that differ: unchanged chains keep their rules and counters.
pub fn render_patch(old: &NftRuleset, patch: &Patch) -> String {
    let t = &old.table;
    let empty = NftService::default();
    let mut del_elements: Vec<&Element> = Vec::new();
    let mut add_elements: Vec<&Element> = patch.node_elements.iter().collect();
    let mut flush = Vec::new();
    let mut add_sets = Vec::new();
    let mut add_chains = Vec::new();
    let mut rules: Vec<(&str, &[String])> = Vec::new();
    let mut del_chains = Vec::new();
    let mut del_sets = Vec::new();
    for (name, new) in &patch.services {
        let o = old.services.get(name).unwrap_or(&empty);
        let n = new.as_ref().unwrap_or(&empty);
        if o == n {
            continue;
        }
        // An element whose value changes is deleted and added again.
        del_elements.extend(sorted_difference(&o.elements, &n.elements));
        add_elements.extend(sorted_difference(&n.elements, &o.elements));
        for (chain, r) in &o.chains {
            match n.chain(chain) {
                Some(nr) if nr == r.as_slice() => {}
                Some(nr) => {
                    flush.push(&**chain);
                    rules.push((&**chain, nr));
                }
                None => {
                    flush.push(&**chain);
                    del_chains.push(&**chain);
                }
            }
        }
        for (chain, r) in &n.chains {
            if o.chain(chain).is_none() {
                add_chains.push(&**chain);
                rules.push((&**chain, r.as_slice()));
            }
        }
        for (set, def) in &n.sets {
            if lookup(&o.sets, set.as_str()).is_none() {
                add_sets.push((set.as_str(), def.as_str()));
            }
        }
        for (set, _) in &o.sets {
            if lookup(&n.sets, set.as_str()).is_none() {
                del_sets.push(set.as_str());
            }
        }
    }
    // Deleting an element by key removes whatever value it had; an element both deleted and
    // added (value changed) is handled by doing all deletes first.
    let mut out = String::new();
    let _ = element_lines(
        t,
        "delete",
        || del_elements.iter().copied(),
        |_| true,
        &mut out,
    );
    for c in &flush {
        let _ = writeln!(out, "flush chain inet {t} {c}");
    }
    for (s, def) in &add_sets {
        let _ = writeln!(out, "add set inet {t} {s} {{ {def} }}");
    }
    for c in &add_chains {
        let _ = writeln!(out, "add chain inet {t} {c}");
    }
    for (c, r) in &rules {
        let _ = rule_lines(t, c, r, &mut out);
    }
    let _ = pick_lines(t, &patch.picks, &mut out);
    for c in &del_chains {
        let _ = writeln!(out, "delete chain inet {t} {c}");
    }
    for s in &del_sets {
        let _ = writeln!(out, "delete set inet {t} {s}");
    }
    let _ = element_lines(
        t,
        "add",
        || add_elements.iter().copied(),
        |_| true,
        &mut out,
    );
    out
}

#[cfg(test)]
mod tests {
    use super::Element;

    /// A ruleset holds one element per backend slot: the shared frontends' two names sit
    /// behind one pointer so that no variant makes every element bigger.
    #[test]
    fn an_element_stays_40_bytes() {
        assert_eq!(std::mem::size_of::<Element>(), 40);
    }
}
