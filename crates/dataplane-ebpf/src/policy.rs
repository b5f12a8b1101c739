//! NetworkPolicy in the maps: what `dp_pol_addr`, `dp_pol_rules` and `dp_pol_blocks` hold,
//! derived from `dataplane_core`'s compiler ([`compile`], and [`CompiledPolicy::update`] for
//! change sets), and the ordered write that gets them there.
//!
//! - **Numbers.** Peer sets ([`SetId`], a canonical selector text) and local endpoints get
//!   `u32` numbers here, kept across syncs while the set or endpoint exists and freed when it
//!   goes (Calico names its ipsets by selector, Cilium allocates identities; numbers are what
//!   a BPF key can hold). A number is never reused while the maps still hold it, so a write
//!   is make-before-break: new rules first, then the addresses' set lists, then what is
//!   stale. A new process does not know the earlier one's numbers: its first apply numbers
//!   everything afresh (avoiding the numbers in the maps), writes the new entries next to the
//!   old ones and removes the old ones last, so verdicts stay right throughout.
//! - **Rules.** Per endpoint, direction and peer (`POL_PEER_ANY`, a set number, or an ipBlock
//!   ports group) one LPM entry per protocol and port prefix ([`port_prefixes`]): a rule
//!   without ports is the peer's prefix (every protocol, ICMP included), a protocol without
//!   ports the protocol's; TCP, UDP and SCTP alike (the programs parse all three).
//! - **Blocks.** [`DirectionTable::block_table`] as it is: each distinct set of allowed
//!   `(protocol, ports)` gets a group number (`POL_PEER_BLOCK | n`, per endpoint and
//!   direction) whose rules are written like a peer's; an `except` prefix allowing nothing
//!   holds 0.
//! - **Tiers.** Cluster policies and the baseline from [`compile_tiers`]: per endpoint,
//!   direction and peer number (a set, or a group of `networks` prefixes in `dp_pol_blocks`
//!   under `dir | POL_DIR_TIERS`) one `dp_pol_tiers` entry per port prefix of the peer's
//!   rules, holding per tier the order and action of the first rule that covers the whole
//!   prefix ([`tier_values`]): the programs keep the lowest order over the peer's lookups,
//!   which is the reference's first match (`dataplane_core::policy`'s `cluster_tier` and
//!   `baseline_tier`). Tier sets share NetworkPolicy's numbering (one `SetId`, one number).
//!   Change sets recompile the tiers whole while there are any and write the difference
//!   ([`CompiledTiers::delta`]).

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;

use dataplane_core::policy_tables::{
    compile, compile_tiers, CompiledPolicy, CompiledTiers, DirectionTable, Peer, PolicyDelta,
    PortSpec, SetId, Tier, TierAction, TierTables,
};
use dataplane_core::{ChangeSet, DesiredState, Error, ObjectName, PolicyType};

use crate::error::EbpfError;
use crate::loader::Maps;
use crate::map_table;
use crate::maps::{
    family_of, Addr, Be16, LocalKey, PolAddr, PolBlockData, PolRuleData, PolTier, POL_DIR_EGRESS,
    POL_DIR_INGRESS, POL_DIR_TIERS, POL_F_ISO_EGRESS, POL_F_ISO_INGRESS, POL_F_NODE,
    POL_F_TIERS_EGRESS, POL_F_TIERS_INGRESS, POL_PEER_ANY, POL_PEER_BLOCK, POL_SETS_MAX,
    POL_TIER_ALLOW, POL_TIER_DENY, POL_TIER_PASS,
};
use aya::maps::lpm_trie::Key;

/// A `dp_pol_rules` key: data and prefix length.
pub(crate) type RuleKey = (PolRuleData, u32);
/// A `dp_pol_blocks` key: data and prefix length.
pub(crate) type BlockKey = (PolBlockData, u32);

/// What the policy maps hold (read when the objects are loaded, kept in step with every
/// write), and the numbering and compile of the last successful sync.
#[derive(Debug, Default)]
pub(crate) struct PolicyState {
    addrs: BTreeMap<LocalKey, PolAddr>,
    rules: BTreeSet<RuleKey>,
    blocks: BTreeMap<BlockKey, u32>,
    tiers: BTreeMap<RuleKey, PolTier>,
    /// The numbering the maps hold for `compiled`; empty when it is not known (a new
    /// process, a failed sync).
    numbers: Numbers,
    compiled: Option<(CompiledPolicy, CompiledTiers)>,
}

/// Set and endpoint numbers.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub(crate) struct Numbers {
    pub(crate) sets: BTreeMap<SetId, u32>,
    pub(crate) endpoints: BTreeMap<ObjectName, u32>,
}

impl Numbers {
    /// Numbers `ids` (the sets or endpoints of the compile) keeping those they have, new
    /// ones avoiding `used` (every number the maps still hold) and each other; numbers of
    /// ids that are gone are dropped.
    fn renumber<K: Ord + Clone>(
        current: &BTreeMap<K, u32>,
        ids: impl Iterator<Item = K>,
        used: &BTreeSet<u32>,
    ) -> BTreeMap<K, u32> {
        let ids: BTreeSet<K> = ids.collect();
        let mut out: BTreeMap<K, u32> = current
            .iter()
            .filter(|(k, _)| ids.contains(*k))
            .map(|(k, n)| (k.clone(), *n))
            .collect();
        let mut taken: BTreeSet<u32> = used.iter().copied().chain(out.values().copied()).collect();
        let mut next = 1u32;
        for id in ids {
            if out.contains_key(&id) {
                continue;
            }
            while taken.contains(&next) {
                next += 1;
            }
            taken.insert(next);
            out.insert(id, next);
        }
        out
    }
}

/// The entries one sync writes and removes, and what the state holds once they are written.
#[derive(Debug, Default)]
pub(crate) struct PolicyPlan {
    put_rules: BTreeSet<RuleKey>,
    put_blocks: BTreeMap<BlockKey, u32>,
    put_addrs: BTreeMap<LocalKey, PolAddr>,
    put_tiers: BTreeMap<RuleKey, PolTier>,
    del_rules: BTreeSet<RuleKey>,
    del_blocks: BTreeSet<BlockKey>,
    del_addrs: BTreeSet<LocalKey>,
    del_tiers: BTreeSet<RuleKey>,
    numbers: Numbers,
    compiled: CompiledPolicy,
    tiers: CompiledTiers,
}

impl PolicyPlan {
    /// Entries written plus entries removed.
    pub(crate) fn writes(&self) -> usize {
        self.put_rules.len()
            + self.put_blocks.len()
            + self.put_addrs.len()
            + self.del_rules.len()
            + self.del_blocks.len()
            + self.del_addrs.len()
            + self.put_tiers.len()
            + self.del_tiers.len()
    }
}

/// Whether `changes` changes services and nothing else (no object that policy or the
/// endpoints' attachments depend on).
pub(crate) fn services_only(changes: &ChangeSet) -> bool {
    let ChangeSet {
        node,
        services: _,
        endpoints,
        policies,
        namespaces,
        pods,
        host_endpoints,
        host_policies,
        failsafe_ports,
        cluster_policies,
        baseline_policy,
        nodes,
    } = changes;
    node.is_none()
        && endpoints.is_empty()
        && policies.is_empty()
        && namespaces.is_empty()
        && pods.is_empty()
        && host_endpoints.is_empty()
        && host_policies.is_empty()
        && failsafe_ports.is_none()
        && cluster_policies.is_empty()
        && baseline_policy.is_none()
        && nodes.is_empty()
}

/// The limits a plan is checked against.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Limits {
    pub(crate) addresses: u32,
    pub(crate) rules: u32,
    pub(crate) blocks: u32,
    pub(crate) sets_per_address: u32,
}

fn local_key(ip: IpAddr) -> LocalKey {
    LocalKey {
        addr: Addr::new(ip),
        family: family_of(&ip),
        pad: [0; 3],
    }
}

/// The IPv4-mapped form's prefix length of `net` (the LPM tries store IPv4 as
/// `::ffff:a.b.c.d`).
fn mapped_len(net: &ipnetwork::IpNetwork) -> u32 {
    match net {
        ipnetwork::IpNetwork::V4(n) => 96 + u32::from(n.prefix()),
        ipnetwork::IpNetwork::V6(n) => u32::from(n.prefix()),
    }
}

/// The aligned prefixes `(value, length in bits)` that cover `lo..=hi` of a 16-bit port
/// exactly (the range-to-CIDR split, at most 30 prefixes).
pub(crate) fn port_prefixes(lo: u16, hi: u16) -> Vec<(u16, u32)> {
    let mut out = Vec::new();
    let (mut lo, hi) = (u32::from(lo), u32::from(hi));
    while lo <= hi {
        // The largest aligned block starting at lo that stays within hi.
        let mut size = if lo == 0 {
            1 << 16
        } else {
            1 << lo.trailing_zeros()
        };
        while lo + size - 1 > hi {
            size >>= 1;
        }
        // size is a power of two <= 2^16: 16 - log2(size) prefix bits.
        out.push((lo as u16, 16 - size.trailing_zeros()));
        lo += size;
    }
    out
}

/// The rule keys of one `(protocol, ports)` for `peer`.
fn rule_keys(ep_id: u32, dir: u8, peer: u32, spec: PortSpec, out: &mut BTreeSet<RuleKey>) {
    let base = PolRuleData {
        ep_id,
        peer,
        dir,
        proto: 0,
        port: Be16::new(0),
    };
    match spec {
        (None, _) => {
            out.insert((base, 72));
        }
        (Some(p), (0, u16::MAX)) => {
            out.insert((
                PolRuleData {
                    proto: p.number(),
                    ..base
                },
                80,
            ));
        }
        (Some(p), (lo, hi)) => {
            for (value, bits) in port_prefixes(lo, hi) {
                out.insert((
                    PolRuleData {
                        proto: p.number(),
                        port: Be16::new(value),
                        ..base
                    },
                    80 + bits,
                ));
            }
        }
    }
}

/// The map entries of some endpoints: NetworkPolicy's rules, the blocks of both, the tiers'
/// entries.
#[derive(Debug, Default)]
struct Entries {
    rules: BTreeSet<RuleKey>,
    blocks: BTreeMap<BlockKey, u32>,
    tiers: BTreeMap<RuleKey, PolTier>,
}

/// One tier entry's `(protocol, ports)`, tier, order and action.
type TierSpec = (PortSpec, Tier, u32, TierAction);

/// Whether `spec` covers every port of the rule key `key` (a prefix of `rule_keys`).
fn covers(spec: PortSpec, (data, len): &RuleKey) -> bool {
    match spec {
        (None, _) => true,
        (Some(p), (lo, hi)) => {
            if *len < 80 || data.proto != p.number() {
                return false;
            }
            let first = u32::from(data.port.get());
            let last = first + (1u32 << (96 - *len)) - 1;
            u32::from(lo) <= first && last <= u32::from(hi)
        }
    }
}

/// The `dp_pol_tiers` entries of one peer number: every prefix of `specs`' ports, each with
/// the lowest order per tier among the specs that cover all of it. Exact under longest-prefix
/// lookup: a spec matching a port has one of its prefixes on that port, which the longest
/// matching prefix lies within, so the spec covers that one too (the argument of
/// `DirectionTable::block_table`).
fn tier_values(
    ep_id: u32,
    dir: u8,
    peer: u32,
    specs: &BTreeSet<TierSpec>,
    out: &mut BTreeMap<RuleKey, PolTier>,
) {
    let mut keys = BTreeSet::new();
    for (spec, ..) in specs {
        rule_keys(ep_id, dir, peer, *spec, &mut keys);
    }
    for key in keys {
        let mut value = PolTier::default();
        for (spec, tier, order, action) in specs {
            if !covers(*spec, &key) {
                continue;
            }
            let code = match action {
                TierAction::Allow => POL_TIER_ALLOW,
                TierAction::Deny => POL_TIER_DENY,
                TierAction::Pass => POL_TIER_PASS,
            };
            let (best, what) = match tier {
                Tier::Cluster => (&mut value.cluster_order, &mut value.cluster),
                Tier::Baseline => (&mut value.baseline_order, &mut value.baseline),
            };
            if *order < *best {
                *best = *order;
                *what = code;
            }
        }
        out.insert(key, value);
    }
}

/// The tier entries of one endpoint direction: per peer number (a set) its prefixes, and the
/// `networks` prefixes merged in one longest-prefix table (`dp_pol_blocks`, direction
/// `| POL_DIR_TIERS`) whose groups are peers like sets.
fn tier_direction_entries(
    ep_id: u32,
    direction: PolicyType,
    tables: &TierTables,
    sets: &BTreeMap<SetId, u32>,
    out: &mut Entries,
) {
    let dir = match direction {
        PolicyType::Ingress => POL_DIR_INGRESS,
        PolicyType::Egress => POL_DIR_EGRESS,
    };
    let mut by_peer: BTreeMap<u32, BTreeSet<TierSpec>> = BTreeMap::new();
    let mut blocks: Vec<(&[dataplane_core::policy_tables::LpmEntry], TierSpec)> = Vec::new();
    for tier in [Tier::Cluster, Tier::Baseline] {
        for e in tables.entries(tier, direction) {
            let spec = ((e.protocol, e.ports), tier, e.order, e.action);
            match &e.peer {
                Peer::Any => {
                    by_peer.entry(POL_PEER_ANY).or_default().insert(spec);
                }
                Peer::Set(id) => {
                    if let Some(n) = sets.get(id) {
                        by_peer.entry(*n).or_default().insert(spec);
                    }
                }
                Peer::Block(table) => blocks.push((table, spec)),
            }
        }
    }
    for (peer, specs) in &by_peer {
        tier_values(ep_id, dir, *peer, specs, &mut out.tiers);
    }
    let prefixes: BTreeSet<ipnetwork::IpNetwork> = blocks
        .iter()
        .flat_map(|(table, _)| table.iter().map(|e| e.prefix))
        .collect();
    let mut groups: BTreeMap<BTreeSet<TierSpec>, u32> = BTreeMap::new();
    for prefix in prefixes {
        // `networks` are allowing prefixes only: a spec covers the prefix when one of its
        // networks contains it.
        let specs: BTreeSet<TierSpec> = blocks
            .iter()
            .filter(|(table, _)| {
                table.iter().any(|l| {
                    l.allow
                        && l.prefix.prefix() <= prefix.prefix()
                        && l.prefix.contains(prefix.network())
                })
            })
            .map(|(_, spec)| *spec)
            .collect();
        let group = if let Some(g) = groups.get(&specs) {
            *g
        } else {
            let g = POL_PEER_BLOCK | (groups.len() as u32 + 1);
            tier_values(ep_id, dir, g, &specs, &mut out.tiers);
            groups.insert(specs, g);
            g
        };
        let data = PolBlockData {
            ep_id,
            dir: dir | POL_DIR_TIERS,
            family: family_of(&prefix.network()),
            pad: [0; 2],
            addr: Addr::mapped(prefix.network()),
        };
        out.blocks.insert((data, 64 + mapped_len(&prefix)), group);
    }
}

/// The rules and blocks of one endpoint direction.
fn direction_entries(
    ep_id: u32,
    dir: u8,
    table: &DirectionTable,
    sets: &BTreeMap<SetId, u32>,
    rules: &mut BTreeSet<RuleKey>,
    blocks: &mut BTreeMap<BlockKey, u32>,
) {
    if !table.isolated {
        return;
    }
    for entry in &table.entries {
        let peer = match &entry.peer {
            dataplane_core::policy_tables::Peer::Any => POL_PEER_ANY,
            dataplane_core::policy_tables::Peer::Set(id) => match sets.get(id) {
                Some(n) => *n,
                None => continue,
            },
            dataplane_core::policy_tables::Peer::Block(_) => continue,
        };
        rule_keys(ep_id, dir, peer, (entry.protocol, entry.ports), rules);
    }
    let mut groups: BTreeMap<BTreeSet<PortSpec>, u32> = BTreeMap::new();
    for (prefix, specs) in table.block_table() {
        let specs: BTreeSet<PortSpec> = specs.into_iter().collect();
        let group = if specs.is_empty() {
            0
        } else {
            let n = groups.len() as u32 + 1;
            let group = *groups.entry(specs.clone()).or_insert(POL_PEER_BLOCK | n);
            for spec in &specs {
                rule_keys(ep_id, dir, group, *spec, rules);
            }
            group
        };
        let data = PolBlockData {
            ep_id,
            dir,
            family: family_of(&prefix.network()),
            pad: [0; 2],
            addr: Addr::mapped(prefix.network()),
        };
        blocks.insert((data, 64 + mapped_len(&prefix)), group);
    }
}

/// The entries of one endpoint (both directions): NetworkPolicy's `tables`, the tiers'
/// `tiers` (none when no cluster policy or baseline selects it).
fn endpoint_entries(
    ep_id: u32,
    tables: &dataplane_core::policy_tables::EndpointTables,
    tiers: Option<&TierTables>,
    sets: &BTreeMap<SetId, u32>,
    out: &mut Entries,
) {
    let (rules, blocks) = (&mut out.rules, &mut out.blocks);
    direction_entries(ep_id, POL_DIR_INGRESS, &tables.ingress, sets, rules, blocks);
    direction_entries(ep_id, POL_DIR_EGRESS, &tables.egress, sets, rules, blocks);
    if let Some(tiers) = tiers {
        for direction in [PolicyType::Ingress, PolicyType::Egress] {
            tier_direction_entries(ep_id, direction, tiers, sets, out);
        }
    }
}

/// Who has `ip`, for errors: `pod NS/NAME` or `endpoint NS/NAME`.
fn owner(state: &DesiredState, ip: IpAddr) -> String {
    state
        .endpoints
        .iter()
        .find(|e| e.ips.contains(&ip))
        .map(|e| format!("endpoint {}", e.name))
        .or_else(|| {
            state
                .pods
                .iter()
                .find(|p| p.ips.contains(&ip))
                .map(|p| format!("pod {}", p.name))
        })
        .unwrap_or_else(|| format!("address {ip}"))
}

/// What to write to turn a map holding `old` into one holding `new`: the entries new or
/// changed, and the keys to remove.
fn map_diff<K: Ord + Copy, V: PartialEq + Copy>(
    old: &BTreeMap<K, V>,
    new: &BTreeMap<K, V>,
) -> (BTreeMap<K, V>, BTreeSet<K>) {
    let put = new
        .iter()
        .filter(|(k, v)| old.get(k) != Some(v))
        .map(|(k, v)| (*k, *v))
        .collect();
    let del = old
        .keys()
        .filter(|k| !new.contains_key(k))
        .copied()
        .collect();
    (put, del)
}

/// Adds the tiers' delta to NetworkPolicy's: an endpoint whose tier entries changed or went
/// is reprogrammed (it is removed only when NetworkPolicy's compile, which has every local
/// endpoint, no longer has it); sets as they are.
fn merge_delta(delta: &mut PolicyDelta, tiers: PolicyDelta, compiled: &CompiledPolicy) {
    for name in tiers
        .endpoints_changed
        .into_iter()
        .chain(tiers.endpoints_removed)
    {
        if compiled.endpoints.contains_key(&name) {
            delta.endpoints_changed.insert(name);
        }
    }
    for (id, members) in tiers.sets_added {
        delta.sets_added.entry(id).or_default().extend(members);
    }
    for (id, change) in tiers.members_changed {
        let merged = delta.members_changed.entry(id).or_default();
        merged.added.extend(change.added);
        merged.removed.extend(change.removed);
    }
    delta.sets_removed.extend(tiers.sets_removed);
}

impl PolicyState {
    /// Reads what the maps hold (an earlier process's entries are kept until a sync replaces
    /// them).
    pub(crate) fn read(maps: &Maps) -> Result<Self, EbpfError> {
        let mut st = Self::default();
        for item in &maps.pol_addr {
            let (k, v) =
                item.map_err(|e| EbpfError::map(map_table::POL_ADDR.name, "reading", e))?;
            st.addrs.insert(k, v);
        }
        for key in maps.pol_rules.keys() {
            let key = key.map_err(|e| EbpfError::map(map_table::POL_RULES.name, "reading", e))?;
            st.rules.insert((key.data(), key.prefix_len()));
        }
        for item in &maps.pol_blocks {
            let (k, v) =
                item.map_err(|e| EbpfError::map(map_table::POL_BLOCKS.name, "reading", e))?;
            st.blocks.insert((k.data(), k.prefix_len()), v);
        }
        for item in &maps.pol_tiers {
            let (k, v) =
                item.map_err(|e| EbpfError::map(map_table::POL_TIERS.name, "reading", e))?;
            st.tiers.insert((k.data(), k.prefix_len()), v);
        }
        Ok(st)
    }

    /// Every number the maps hold: (sets and block groups' peers, endpoints).
    fn used(&self) -> (BTreeSet<u32>, BTreeSet<u32>) {
        let mut sets = BTreeSet::new();
        let mut eps = BTreeSet::new();
        for v in self.addrs.values() {
            sets.extend(v.sets.iter().take(usize::from(v.nsets)).copied());
            eps.insert(v.ep_id);
        }
        for (r, _) in self.rules.iter().chain(self.tiers.keys()) {
            if r.peer & POL_PEER_BLOCK == 0 {
                sets.insert(r.peer);
            }
            eps.insert(r.ep_id);
        }
        for (b, _) in self.blocks.keys() {
            eps.insert(b.ep_id);
        }
        (sets, eps)
    }

    /// The numbering of `compiled`: `numbers`' where they apply, new ones around every
    /// number the maps hold.
    fn renumbered(
        &self,
        numbers: &Numbers,
        compiled: &CompiledPolicy,
        tiers: &CompiledTiers,
    ) -> Numbers {
        let (used_sets, used_eps) = self.used();
        let set_ids = compiled.sets.keys().chain(tiers.sets.keys()).cloned();
        Numbers {
            sets: Numbers::renumber(&numbers.sets, set_ids, &used_sets),
            endpoints: Numbers::renumber(
                &numbers.endpoints,
                compiled.endpoints.keys().cloned(),
                &used_eps,
            ),
        }
    }

    /// Plans the whole of `state`'s policy. The numbering stays until a plan is written: a
    /// refused or failed sync leaves it (still true of the maps: whatever a failed write
    /// left under new numbers is stale to the next plan, which removes it), so that the next
    /// full sync rewrites only what differs instead of everything under new numbers (which
    /// would need room for both in `policy_rules`). The compile goes: only a successful
    /// write makes the next incremental sync possible.
    pub(crate) fn plan_full(
        &mut self,
        state: &DesiredState,
        limits: Limits,
    ) -> Result<PolicyPlan, Error> {
        self.compiled = None;
        let compiled = compile(state);
        let tiers = compile_tiers(state);
        let numbers = self.renumbered(&self.numbers, &compiled, &tiers);
        let mut entries = Entries::default();
        for (name, tables) in &compiled.endpoints {
            let ep = numbers.endpoints[name];
            let tier_tables = tiers.endpoints.get(name);
            endpoint_entries(ep, tables, tier_tables, &numbers.sets, &mut entries);
        }
        let Entries {
            rules,
            blocks,
            tiers: tier_entries,
        } = entries;
        let ctx = AddrContext::new(state, &compiled, &tiers, &numbers, true, limits);
        let mut addrs = BTreeMap::new();
        let ips: BTreeSet<IpAddr> = ctx
            .membership
            .iter()
            .flat_map(BTreeMap::keys)
            .chain(ctx.local.keys())
            .chain(&ctx.node)
            .copied()
            .collect();
        for ip in ips {
            if let Some(v) = ctx.value(ip)? {
                addrs.insert(local_key(ip), v);
            }
        }
        drop(ctx);
        let (put_blocks, del_blocks) = map_diff(&self.blocks, &blocks);
        let (put_addrs, del_addrs) = map_diff(&self.addrs, &addrs);
        let (put_tiers, del_tiers) = map_diff(&self.tiers, &tier_entries);
        let plan = PolicyPlan {
            put_rules: rules.difference(&self.rules).copied().collect(),
            del_rules: self.rules.difference(&rules).copied().collect(),
            put_blocks,
            del_blocks,
            put_addrs,
            del_addrs,
            put_tiers,
            del_tiers,
            numbers,
            compiled,
            tiers,
        };
        self.check(&plan, limits)?;
        Ok(plan)
    }

    /// Plans `changes`, `state` being the state after them: only the endpoints whose tables
    /// changed and the addresses whose sets changed ([`CompiledPolicy::update`]'s delta).
    /// [`Error::FullSyncRequired`] when the last sync's compile is not known.
    pub(crate) fn plan_changes(
        &mut self,
        state: &DesiredState,
        changes: &ChangeSet,
        limits: Limits,
    ) -> Result<PolicyPlan, Error> {
        // Updated in place (a copy would cost every member of every set): taken, it comes
        // back only with a written plan.
        let Some((mut compiled, old_tiers)) = self.compiled.take() else {
            return Err(Error::FullSyncRequired);
        };
        if services_only(changes) {
            // Policy selects pods, namespaces and nodes, never services: the delta is empty
            // and the plan writes nothing (planning it anyway was ~12 µs of an endpoint
            // change on the scaling bench's node).
            return Ok(PolicyPlan {
                numbers: self.numbers.clone(),
                compiled,
                tiers: old_tiers,
                ..PolicyPlan::default()
            });
        }
        let mut delta = compiled.update(state, changes);
        // The tiers are compiled whole while there are any (a node has few cluster
        // policies; their sets are the cost) and diffed: only what changed is written.
        let tiers = if old_tiers.endpoints.is_empty()
            && state.cluster_policies.is_empty()
            && state.baseline_policy.is_none()
        {
            old_tiers.clone()
        } else {
            compile_tiers(state)
        };
        merge_delta(&mut delta, old_tiers.delta(&tiers), &compiled);
        let numbers = self.renumbered(&self.numbers, &compiled, &tiers);
        let mut plan = PolicyPlan::default();
        let mut addresses = self.plan_endpoints(&delta, &compiled, &tiers, &numbers, &mut plan);
        // Addresses whose sets changed.
        for members in delta.sets_added.values() {
            addresses.extend(members.iter().copied());
        }
        for change in delta.members_changed.values() {
            addresses.extend(change.added.iter().chain(&change.removed).copied());
        }
        if !delta.sets_removed.is_empty() {
            // Their former members: the addresses that carry a number no set has now.
            let live: BTreeSet<u32> = numbers.sets.values().copied().collect();
            for (k, v) in &self.addrs {
                if v.sets[..usize::from(v.nsets).min(POL_SETS_MAX)]
                    .iter()
                    .any(|n| !live.contains(n))
                {
                    addresses.insert(k.addr.ip(k.family));
                }
            }
        }
        let ctx = AddrContext::new(state, &compiled, &tiers, &numbers, false, limits);
        for ip in addresses {
            let key = local_key(ip);
            match ctx.value(ip)? {
                Some(v) if self.addrs.get(&key) != Some(&v) => {
                    plan.put_addrs.insert(key, v);
                }
                None if self.addrs.contains_key(&key) => {
                    plan.del_addrs.insert(key);
                }
                Some(_) | None => {}
            }
        }
        drop(ctx);
        plan.numbers = numbers;
        plan.compiled = compiled;
        plan.tiers = tiers;
        self.check(&plan, limits)?;
        Ok(plan)
    }

    /// The rule and block changes of the endpoints `delta` names (their entries recomputed
    /// and compared with what the maps hold for their number; a removed endpoint's all go),
    /// into `plan`. Returns the addresses whose entries may change with them (the endpoints'
    /// old and new addresses).
    fn plan_endpoints(
        &self,
        delta: &PolicyDelta,
        compiled: &CompiledPolicy,
        tiers: &CompiledTiers,
        numbers: &Numbers,
        plan: &mut PolicyPlan,
    ) -> BTreeSet<IpAddr> {
        // Endpoints: their entries are recomputed and compared with what the maps hold for
        // their number (removed ones: all of theirs go).
        let mut ep_ids: BTreeSet<u32> = BTreeSet::new();
        let mut addresses: BTreeSet<IpAddr> = BTreeSet::new();
        for name in delta
            .endpoints_changed
            .iter()
            .chain(&delta.endpoints_removed)
        {
            if let Some(n) = numbers.endpoints.get(name) {
                ep_ids.insert(*n);
            }
        }
        if delta.endpoints_changed.is_empty() && delta.endpoints_removed.is_empty() {
            return addresses;
        }
        // Removed endpoints had numbers the renumbering dropped: find them in the maps by
        // their addresses (an endpoint's addresses carry its number).
        let old_ep_of: BTreeMap<u32, Vec<LocalKey>> = self
            .addrs
            .iter()
            .filter(|(_, v)| v.ep_id != 0)
            .fold(BTreeMap::new(), |mut m, (k, v)| {
                m.entry(v.ep_id).or_default().push(*k);
                m
            });
        let live: BTreeSet<u32> = numbers.endpoints.values().copied().collect();
        for (id, keys) in &old_ep_of {
            if !live.contains(id) || ep_ids.contains(id) {
                ep_ids.insert(*id);
                addresses.extend(keys.iter().map(|k| k.addr.ip(k.family)));
            }
        }
        let mut entries = Entries::default();
        for name in &delta.endpoints_changed {
            let (Some(tables), Some(ep)) =
                (compiled.endpoints.get(name), numbers.endpoints.get(name))
            else {
                continue;
            };
            addresses.extend(tables.ips.iter().copied());
            let tier_tables = tiers.endpoints.get(name);
            endpoint_entries(*ep, tables, tier_tables, &numbers.sets, &mut entries);
        }
        let Entries {
            rules,
            blocks,
            tiers: tier_entries,
        } = entries;
        for id in &ep_ids {
            let lo = PolRuleData {
                ep_id: *id,
                ..PolRuleData::default()
            };
            for key in self
                .rules
                .range((lo, 0)..)
                .take_while(|(d, _)| d.ep_id == *id)
            {
                if !rules.contains(key) {
                    plan.del_rules.insert(*key);
                }
            }
            for key in self
                .tiers
                .range((lo, 0)..)
                .map(|(k, _)| k)
                .take_while(|(d, _)| d.ep_id == *id)
            {
                if !tier_entries.contains_key(key) {
                    plan.del_tiers.insert(*key);
                }
            }
            let lo = PolBlockData {
                ep_id: *id,
                ..PolBlockData::default()
            };
            for (key, _) in self
                .blocks
                .range((lo, 0)..)
                .take_while(|((d, _), _)| d.ep_id == *id)
            {
                if !blocks.contains_key(key) {
                    plan.del_blocks.insert(*key);
                }
            }
        }
        plan.put_rules = rules.difference(&self.rules).copied().collect();
        plan.put_tiers = tier_entries
            .into_iter()
            .filter(|(k, v)| self.tiers.get(k) != Some(v))
            .collect();
        plan.put_blocks = blocks
            .into_iter()
            .filter(|(k, v)| self.blocks.get(k) != Some(v))
            .collect();
        addresses
    }

    /// The maps' sizes hold the plan at its peak (new entries are written before stale ones
    /// go).
    fn check(&self, plan: &PolicyPlan, limits: Limits) -> Result<(), Error> {
        let over = |what: &str, current: usize, added: usize, capacity: u32| {
            let needed = current + added;
            (needed > capacity as usize).then(|| Error::CapacityExceeded {
                what: what.to_owned(),
                needed,
                capacity: capacity as usize,
            })
        };
        let new_addrs = plan
            .put_addrs
            .keys()
            .filter(|k| !self.addrs.contains_key(k))
            .count();
        let new_blocks = plan
            .put_blocks
            .keys()
            .filter(|k| !self.blocks.contains_key(k))
            .count();
        if let Some(e) = over(
            "policy addresses (Capacities::policy_addresses)",
            self.addrs.len(),
            new_addrs,
            limits.addresses,
        )
        .or_else(|| {
            over(
                "policy rules (Capacities::policy_rules)",
                self.rules.len(),
                plan.put_rules.len(),
                limits.rules,
            )
        })
        .or_else(|| {
            over(
                "cluster and baseline policy entries (dp_pol_tiers: Capacities::policy_rules)",
                self.tiers.len(),
                plan.put_tiers
                    .keys()
                    .filter(|k| !self.tiers.contains_key(k))
                    .count(),
                limits.rules,
            )
        })
        .or_else(|| {
            over(
                "policy ipBlock and networks prefixes (Capacities::policy_blocks)",
                self.blocks.len(),
                new_blocks,
                limits.blocks,
            )
        }) {
            return Err(e);
        }
        Ok(())
    }

    /// Writes `plan` (new rules and blocks, then addresses, then what is stale) and keeps
    /// its numbering and compile for the next sync. After a failure the mirror still says
    /// what the maps hold and the next sync is full (no compile).
    pub(crate) fn write(&mut self, maps: &mut Maps, plan: PolicyPlan) -> Result<(), EbpfError> {
        self.write_new(maps, &plan)?;
        self.write_stale(maps, plan)
    }

    /// The first half of [`Self::write`]: new and changed rules, blocks and addresses (a new
    /// pod's isolation among them), written before its programs are attached.
    pub(crate) fn write_new(
        &mut self,
        maps: &mut Maps,
        plan: &PolicyPlan,
    ) -> Result<(), EbpfError> {
        let err = |name: &'static str, op: &'static str| {
            move |e: aya::maps::MapError| EbpfError::map(name, op, e)
        };
        for key in &plan.put_rules {
            maps.pol_rules
                .insert(&Key::new(key.1, key.0), 1, 0)
                .map_err(err(map_table::POL_RULES.name, "writing"))?;
            self.rules.insert(*key);
        }
        for (key, value) in &plan.put_tiers {
            maps.pol_tiers
                .insert(&Key::new(key.1, key.0), value, 0)
                .map_err(err(map_table::POL_TIERS.name, "writing"))?;
            self.tiers.insert(*key, *value);
        }
        for (key, group) in &plan.put_blocks {
            maps.pol_blocks
                .insert(&Key::new(key.1, key.0), *group, 0)
                .map_err(err(map_table::POL_BLOCKS.name, "writing"))?;
            self.blocks.insert(*key, *group);
        }
        for (key, value) in &plan.put_addrs {
            maps.pol_addr
                .insert(key, value, 0)
                .map_err(err(map_table::POL_ADDR.name, "writing"))?;
            self.addrs.insert(*key, *value);
        }
        Ok(())
    }

    /// The second half of [`Self::write`]: what is stale goes (a removed pod's entries after
    /// its programs were detached); keeps the plan's numbering and compile.
    pub(crate) fn write_stale(
        &mut self,
        maps: &mut Maps,
        plan: PolicyPlan,
    ) -> Result<(), EbpfError> {
        for key in &plan.del_addrs {
            match maps.pol_addr.remove(key) {
                Ok(()) | Err(aya::maps::MapError::KeyNotFound) => {}
                Err(e) => return Err(EbpfError::map(map_table::POL_ADDR.name, "removing", e)),
            }
            self.addrs.remove(key);
        }
        for key in &plan.del_blocks {
            match maps.pol_blocks.remove(&Key::new(key.1, key.0)) {
                Ok(()) | Err(aya::maps::MapError::KeyNotFound) => {}
                Err(e) => return Err(EbpfError::map(map_table::POL_BLOCKS.name, "removing", e)),
            }
            self.blocks.remove(key);
        }
        for key in &plan.del_tiers {
            match maps.pol_tiers.remove(&Key::new(key.1, key.0)) {
                Ok(()) | Err(aya::maps::MapError::KeyNotFound) => {}
                Err(e) => return Err(EbpfError::map(map_table::POL_TIERS.name, "removing", e)),
            }
            self.tiers.remove(key);
        }
        for key in &plan.del_rules {
            match maps.pol_rules.remove(&Key::new(key.1, key.0)) {
                Ok(()) | Err(aya::maps::MapError::KeyNotFound) => {}
                Err(e) => return Err(EbpfError::map(map_table::POL_RULES.name, "removing", e)),
            }
            self.rules.remove(key);
        }
        self.numbers = plan.numbers;
        self.compiled = Some((plan.compiled, plan.tiers));
        Ok(())
    }

    /// What [`Self::write`] does to the mirror, without maps (the unit tests' kernel).
    #[cfg(test)]
    fn apply_to_mirror(&mut self, plan: PolicyPlan) {
        self.rules.extend(plan.put_rules.iter().copied());
        self.blocks
            .extend(plan.put_blocks.iter().map(|(k, v)| (*k, *v)));
        self.addrs
            .extend(plan.put_addrs.iter().map(|(k, v)| (*k, *v)));
        for k in &plan.del_addrs {
            self.addrs.remove(k);
        }
        for k in &plan.del_blocks {
            self.blocks.remove(k);
        }
        self.tiers
            .extend(plan.put_tiers.iter().map(|(k, v)| (*k, *v)));
        for k in &plan.del_tiers {
            self.tiers.remove(k);
        }
        for k in &plan.del_rules {
            self.rules.remove(k);
        }
        self.numbers = plan.numbers;
        self.compiled = Some((plan.compiled, plan.tiers));
    }
}

/// What the `dp_pol_addr` values are computed from.
struct AddrContext<'a> {
    state: &'a DesiredState,
    compiled: &'a CompiledPolicy,
    tiers: &'a CompiledTiers,
    numbers: &'a Numbers,
    /// Local endpoint address -> its name.
    local: BTreeMap<IpAddr, &'a ObjectName>,
    node: BTreeSet<IpAddr>,
    /// Address -> its sets, for a full plan (one pass over the sets); `None`: each address
    /// scans the sets (an incremental plan looks at few addresses).
    membership: Option<BTreeMap<IpAddr, BTreeSet<&'a SetId>>>,
    limits: Limits,
}

/// Address → its sets of NetworkPolicy and of the tiers (a set both name once).
fn full_membership<'a>(
    compiled: &'a CompiledPolicy,
    tiers: &'a CompiledTiers,
) -> BTreeMap<IpAddr, BTreeSet<&'a SetId>> {
    let mut m = compiled.membership();
    for (ip, ids) in tiers.membership() {
        m.entry(ip).or_default().extend(ids);
    }
    m
}

impl<'a> AddrContext<'a> {
    fn new(
        state: &'a DesiredState,
        compiled: &'a CompiledPolicy,
        tiers: &'a CompiledTiers,
        numbers: &'a Numbers,
        full: bool,
        limits: Limits,
    ) -> Self {
        Self {
            state,
            compiled,
            tiers,
            numbers,
            local: compiled
                .endpoints
                .iter()
                .flat_map(|(name, t)| t.ips.iter().map(move |ip| (*ip, name)))
                .collect(),
            node: state.node.addresses.iter().copied().collect(),
            membership: full.then(|| full_membership(compiled, tiers)),
            limits,
        }
    }

    /// The set numbers of `ip`.
    fn sets_of(&self, ip: IpAddr) -> Vec<u32> {
        let number = |id: &SetId| self.numbers.sets.get(id).copied();
        if let Some(m) = &self.membership {
            return m
                .get(&ip)
                .map(|ids| ids.iter().filter_map(|id| number(id)).collect())
                .unwrap_or_default();
        }
        let policy = self
            .compiled
            .sets
            .iter()
            .filter(|(_, s)| s.members.contains(&ip))
            .map(|(id, _)| id);
        let tiers = self
            .tiers
            .sets
            .iter()
            .filter(|(_, s)| s.members.contains(&ip))
            .map(|(id, _)| id);
        let ids: BTreeSet<&SetId> = policy.chain(tiers).collect();
        ids.into_iter().filter_map(number).collect()
    }

    /// The `dp_pol_addr` value of `ip`, `None` for no entry; too many sets is
    /// [`Error::CapacityExceeded`] naming who has the address.
    fn value(&self, ip: IpAddr) -> Result<Option<PolAddr>, Error> {
        let mut value = PolAddr::default();
        if let Some(name) = self.local.get(&ip) {
            value.ep_id = self.numbers.endpoints.get(*name).copied().unwrap_or(0);
            if let Some(t) = self.compiled.endpoints.get(*name) {
                if t.ingress.isolated {
                    value.flags |= POL_F_ISO_INGRESS;
                }
                if t.egress.isolated {
                    value.flags |= POL_F_ISO_EGRESS;
                }
            }
            if let Some(t) = self.tiers.endpoints.get(*name) {
                if t.has(PolicyType::Ingress) {
                    value.flags |= POL_F_TIERS_INGRESS;
                }
                if t.has(PolicyType::Egress) {
                    value.flags |= POL_F_TIERS_EGRESS;
                }
            }
        }
        if self.node.contains(&ip) {
            value.flags |= POL_F_NODE;
        }
        let sets = self.sets_of(ip);
        if value.ep_id == 0 && value.flags == 0 && sets.is_empty() {
            return Ok(None);
        }
        let limit = (self.limits.sets_per_address as usize).min(POL_SETS_MAX);
        if sets.len() > limit {
            return Err(Error::CapacityExceeded {
                what: format!(
                    "peer sets of {} (address {ip}, its labels select it into that many policy \
                     peers; Capacities::policy_sets_per_address)",
                    owner(self.state, ip)
                ),
                needed: sets.len(),
                capacity: limit,
            });
        }
        value.nsets = sets.len() as u8;
        value.sets[..sets.len()].copy_from_slice(&sets);
        Ok(Some(value))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use dataplane_core::{ClusterPort, Protocol};

    #[test]
    fn port_prefixes_cover_ranges_exactly() {
        for (lo, hi) in [
            (0u16, 65535u16),
            (80, 80),
            (80, 81),
            (1, 65535),
            (1000, 2000),
            (32768, 60999),
            (0, 0),
            (65535, 65535),
        ] {
            let prefixes = port_prefixes(lo, hi);
            let mut covered = Vec::new();
            for (value, bits) in &prefixes {
                let size = 1u32 << (16 - bits);
                assert_eq!(u32::from(*value) % size, 0, "{value}/{bits} aligned");
                covered.extend((u32::from(*value)..u32::from(*value) + size).map(|p| p as u16));
            }
            covered.sort_unstable();
            let want: Vec<u16> = (lo..=hi).collect();
            assert_eq!(covered, want, "{lo}-{hi}");
            assert!(prefixes.len() <= 30);
        }
        assert_eq!(port_prefixes(0, 65535), vec![(0, 0)]);
        assert_eq!(port_prefixes(80, 80), vec![(80, 16)]);
    }

    #[test]
    fn renumber_keeps_numbers_and_avoids_used_ones() {
        let current: BTreeMap<&str, u32> = [("a", 1), ("b", 2), ("gone", 3)].into();
        let used: BTreeSet<u32> = [1, 2, 3, 4].into();
        let out = Numbers::renumber(&current, ["a", "b", "new", "new2"].into_iter(), &used);
        assert_eq!(out["a"], 1);
        assert_eq!(out["b"], 2);
        // 3 (freed by "gone") and 4 are still in the maps: not reused in this sync.
        assert_eq!(out["new"], 5);
        assert_eq!(out["new2"], 6);
        assert!(!out.contains_key("gone"));
        // Once the maps no longer hold 3, it is free again.
        let out2 = Numbers::renumber(
            &out,
            ["a", "b", "new", "new2", "x"].into_iter(),
            &[1, 2, 5, 6].into(),
        );
        assert_eq!(out2["x"], 3);
    }

    fn limits() -> Limits {
        Limits {
            addresses: 1000,
            rules: 1000,
            blocks: 1000,
            sets_per_address: 32,
        }
    }

    fn policy(json: &str) -> dataplane_core::Policy {
        serde_json::from_str(json).expect("policy")
    }

    /// x/a and x/b local, y/c remote; `a-from-b` isolates a.
    fn state(with_policy: bool, c_label: &str) -> DesiredState {
        use dataplane_core::{Endpoint, Namespace, PeerPod};
        let mut st = DesiredState::new(dataplane_core::Node::new(
            "node-a",
            ["172.18.0.2".parse().unwrap()],
        ));
        st.namespaces = vec![Namespace::new("x"), Namespace::new("y")];
        st.endpoints = vec![
            Endpoint::new(
                ObjectName::new("x", "a"),
                "lxc0",
                ["10.244.0.5".parse().unwrap()],
            )
            .with_label("pod", "a"),
            Endpoint::new(
                ObjectName::new("x", "b"),
                "lxc1",
                ["10.244.0.6".parse().unwrap()],
            )
            .with_label("pod", "b"),
        ];
        st.pods = vec![
            PeerPod::new(ObjectName::new("y", "c"), ["10.244.1.7".parse().unwrap()])
                .with_label("pod", c_label),
        ];
        if with_policy {
            st.policies = vec![policy(
                r#"{"namespace": "x", "name": "a-in", "podSelector": {"matchLabels": {"pod": "a"}},
                    "ingress": [
                      {"peers": [{"namespaceSelector": {}, "podSelector": {"matchLabels": {"pod": "c"}}}],
                       "ports": [{"port": 80}, {"protocol": "UDP", "port": 1000, "endPort": 1003}]},
                      {"peers": [{"ipBlock": {"cidr": "192.0.2.0/24", "except": ["192.0.2.128/25"]}}]}
                    ]}"#,
            )];
        }
        st
    }

    fn full(st: &mut PolicyState, state: &DesiredState) {
        let plan = st.plan_full(state, limits()).expect("plan");
        st.apply_to_mirror(plan);
    }

    #[test]
    fn full_plan_programs_rules_blocks_and_addresses() {
        let mut st = PolicyState::default();
        full(&mut st, &state(true, "c"));
        let a = st.numbers.endpoints[&ObjectName::new("x", "a")];
        let set = *st.numbers.sets.values().next().expect("one set");
        // c is in the set; a and b are local; the node is known.
        let c = &st.addrs[&local_key("10.244.1.7".parse().unwrap())];
        assert_eq!((c.ep_id, c.nsets, c.sets[0]), (0, 1, set));
        let a_entry = &st.addrs[&local_key("10.244.0.5".parse().unwrap())];
        assert_eq!((a_entry.ep_id, a_entry.flags), (a, POL_F_ISO_INGRESS));
        assert_eq!(
            st.addrs[&local_key("172.18.0.2".parse().unwrap())].flags,
            POL_F_NODE
        );
        // TCP 80 and UDP 1000-1003 (one /14 prefix) for the set; the block's group: every
        // protocol; its except allows nothing.
        let rules: Vec<(u32, u8, u16, u32)> = st
            .rules
            .iter()
            .map(|(d, l)| (d.peer, d.proto, d.port.get(), *l))
            .collect();
        assert_eq!(
            rules,
            vec![
                (set, 6, 80, 96),
                (set, 17, 1000, 94),
                (POL_PEER_BLOCK | 1, 0, 0, 72),
            ]
        );
        let blocks: Vec<u32> = st.blocks.values().copied().collect();
        assert_eq!(blocks, vec![POL_PEER_BLOCK | 1, 0]);
        // The same state again: nothing to write.
        let again = st.plan_full(&state(true, "c"), limits()).expect("plan");
        assert_eq!(again.writes(), 0, "{again:?}");
    }

    #[test]
    fn changes_write_only_the_delta_and_end_where_a_full_plan_would() {
        let before = state(true, "c");
        let mut st = PolicyState::default();
        full(&mut st, &before);
        let set = *st.numbers.sets.values().next().expect("one set");
        // c leaves the set: one address entry changes, nothing else.
        let relabelled = state(true, "other");
        let plan = st
            .plan_changes(
                &relabelled,
                &dataplane_core::diff(&before, &relabelled),
                limits(),
            )
            .expect("plan");
        assert_eq!(plan.writes(), 1, "{plan:?}");
        assert!(plan
            .del_addrs
            .contains(&local_key("10.244.1.7".parse().unwrap())));
        st.apply_to_mirror(plan);
        assert_eq!(
            st.numbers.sets.values().next(),
            Some(&set),
            "the set keeps its number"
        );
        let mut fresh = PolicyState::default();
        full(&mut fresh, &relabelled);
        assert_eq!(st.addrs, fresh.addrs);
        assert_eq!(st.rules, fresh.rules);
        assert_eq!(st.blocks, fresh.blocks);
        // The policy goes: a's rules, blocks and isolation go, the set's number is freed.
        let open = state(false, "other");
        let plan = st
            .plan_changes(&open, &dataplane_core::diff(&relabelled, &open), limits())
            .expect("plan");
        st.apply_to_mirror(plan);
        assert!(
            st.rules.is_empty() && st.blocks.is_empty(),
            "{:?}",
            st.rules
        );
        assert!(st.numbers.sets.is_empty());
        let a = &st.addrs[&local_key("10.244.0.5".parse().unwrap())];
        assert_eq!(a.flags, 0);
    }

    /// A change of services alone plans nothing, and leaves the compile for the next change.
    #[test]
    fn a_service_change_plans_nothing() {
        let before = state(true, "c");
        let mut st = PolicyState::default();
        full(&mut st, &before);
        let numbers = st.numbers.clone();
        let mut after = before.clone();
        let mut web = dataplane_core::Service::new(ObjectName::new("x", "web"));
        web.cluster_ips = vec!["10.96.0.10".parse().unwrap()];
        after.services.push(web);
        let changes = dataplane_core::diff(&before, &after);
        assert!(services_only(&changes));
        let plan = st.plan_changes(&after, &changes, limits()).expect("plan");
        assert_eq!(plan.writes(), 0, "{plan:?}");
        assert_eq!(plan.numbers, numbers);
        st.apply_to_mirror(plan);
        // The compile came back: the next change is planned incrementally, as before.
        let relabelled = {
            let mut s = state(true, "other");
            s.services = after.services.clone();
            s
        };
        let changes = dataplane_core::diff(&after, &relabelled);
        assert!(!services_only(&changes));
        let plan = st
            .plan_changes(&relabelled, &changes, limits())
            .expect("plan");
        assert_eq!(plan.writes(), 1, "{plan:?}");
    }

    /// What the maps say, with the numbers translated back to names: comparable across
    /// numberings.
    #[allow(clippy::type_complexity)]
    fn semantic(
        st: &PolicyState,
    ) -> (
        BTreeSet<(IpAddr, Option<ObjectName>, u8, BTreeSet<SetId>)>,
        BTreeSet<(ObjectName, u8, String, u8, u16, u32)>,
        BTreeSet<(ObjectName, u8, Addr, u32, u32)>,
    ) {
        let set_of: BTreeMap<u32, &SetId> = st.numbers.sets.iter().map(|(k, v)| (*v, k)).collect();
        let ep_of: BTreeMap<u32, &ObjectName> =
            st.numbers.endpoints.iter().map(|(k, v)| (*v, k)).collect();
        let addrs = st
            .addrs
            .iter()
            .map(|(k, v)| {
                (
                    k.addr.ip(k.family),
                    ep_of.get(&v.ep_id).map(|n| (*n).clone()),
                    v.flags,
                    v.sets[..usize::from(v.nsets)]
                        .iter()
                        .map(|n| set_of[n].clone())
                        .collect(),
                )
            })
            .collect();
        let peer = |n: u32| match n {
            POL_PEER_ANY => "any".to_owned(),
            n if n & POL_PEER_BLOCK != 0 => format!("block {}", n & !POL_PEER_BLOCK),
            n => set_of[&n].0.clone(),
        };
        let rules = st
            .rules
            .iter()
            .map(|(d, l)| {
                (
                    ep_of[&d.ep_id].clone(),
                    d.dir,
                    peer(d.peer),
                    d.proto,
                    d.port.get(),
                    *l,
                )
            })
            .collect();
        let blocks = st
            .blocks
            .iter()
            .map(|((d, l), g)| (ep_of[&d.ep_id].clone(), d.dir, d.addr, *l, *g))
            .collect();
        (addrs, rules, blocks)
    }

    /// A sequence of change sets written as deltas ends where a full plan of the last state
    /// would, entry for entry (names for numbers).
    #[test]
    fn change_sets_end_where_a_full_plan_would() {
        use dataplane_core::{Endpoint, PeerPod};
        let s0 = state(false, "c");
        let s1 = state(true, "c");
        let mut s2 = s1.clone();
        s2.endpoints.push(
            Endpoint::new(
                ObjectName::new("x", "d"),
                "lxc2",
                ["10.244.0.8".parse().unwrap()],
            )
            .with_label("pod", "a"),
        );
        s2.pods.push(
            PeerPod::new(ObjectName::new("y", "e"), ["10.244.1.9".parse().unwrap()])
                .with_label("pod", "c"),
        );
        let mut s3 = s2.clone();
        s3.endpoints.remove(0);
        s3.policies.push(policy(
            r#"{"namespace": "x", "name": "b-out", "podSelector": {"matchLabels": {"pod": "b"}},
                "policyTypes": ["Egress"],
                "egress": [{"peers": [{"podSelector": {"matchLabels": {"pod": "a"}}}]}]}"#,
        ));
        let mut s4 = s3.clone();
        s4.policies.remove(0);
        s4.pods.clear();
        let mut st = PolicyState::default();
        full(&mut st, &s0);
        let steps = [&s0, &s1, &s2, &s3, &s4, &s0];
        for pair in steps.windows(2) {
            let plan = st
                .plan_changes(pair[1], &dataplane_core::diff(pair[0], pair[1]), limits())
                .expect("plan");
            st.apply_to_mirror(plan);
            let mut fresh = PolicyState::default();
            full(&mut fresh, pair[1]);
            assert_eq!(semantic(&st), semantic(&fresh));
        }
        assert!(st.rules.is_empty() && st.blocks.is_empty());
    }

    #[test]
    fn a_new_process_renumbers_around_what_the_maps_hold() {
        let st0 = state(true, "c");
        let mut old = PolicyState::default();
        full(&mut old, &st0);
        // A new process: the maps as the old one left them, no numbering.
        let mut new = PolicyState {
            addrs: old.addrs.clone(),
            rules: old.rules.clone(),
            blocks: old.blocks.clone(),
            ..PolicyState::default()
        };
        let plan = new.plan_full(&st0, limits()).expect("plan");
        let old_sets: BTreeSet<u32> = old.numbers.sets.values().copied().collect();
        assert!(
            plan.numbers.sets.values().all(|n| !old_sets.contains(n)),
            "fresh numbers"
        );
        // Every old rule goes, after the new ones are written.
        assert_eq!(plan.del_rules, old.rules);
        new.apply_to_mirror(plan);
        assert_eq!(new.rules.len(), old.rules.len());
    }

    #[test]
    fn capacities_are_checked_at_the_peak() {
        let mut st = PolicyState::default();
        let small = Limits {
            rules: 2,
            ..limits()
        };
        let err = st
            .plan_full(&state(true, "c"), small)
            .expect_err("3 rules > 2");
        assert!(
            matches!(
                err,
                Error::CapacityExceeded {
                    needed: 3,
                    capacity: 2,
                    ..
                }
            ),
            "{err}"
        );
        let one_set = Limits {
            sets_per_address: 0,
            ..limits()
        };
        let err = st
            .plan_full(&state(true, "c"), one_set)
            .expect_err("c in one set > 0");
        assert!(err.to_string().contains("pod y/c"), "{err}");
        // A refused plan leaves the numbering: the next one rewrites nothing.
        full(&mut st, &state(true, "c"));
        let tiny = Limits {
            addresses: 1,
            ..limits()
        };
        st.plan_full(&state(true, "c"), tiny)
            .expect_err("more addresses than 1");
        let plan = st.plan_full(&state(true, "c"), limits()).expect("plan");
        assert_eq!(plan.writes(), 0, "{plan:?}");
    }

    /// What the programs answer for one half-connection (`pol_decide` over the mirror of the
    /// maps): longest-prefix lookups emulated on the entries.
    mod emulate {
        use super::*;

        fn rule_lpm<'a, V: Copy + 'a>(
            entries: impl Iterator<Item = (&'a RuleKey, V)>,
            key: (u32, u32, u8, u8, u16),
        ) -> Option<V> {
            let (ep, peer, dir, proto, port) = key;
            entries
                .filter(|((d, len), _)| {
                    d.ep_id == ep
                        && d.peer == peer
                        && d.dir == dir
                        && (*len <= 72
                            || (d.proto == proto
                                && (*len <= 80 || (d.port.get() ^ port) >> (96 - *len) == 0)))
                })
                .max_by_key(|((_, len), _)| *len)
                .map(|(_, v)| v)
        }

        fn block_lpm(st: &PolicyState, ep: u32, dir: u8, ip: IpAddr) -> Option<u32> {
            let want = Addr::mapped(ip).0;
            st.blocks
                .iter()
                .filter(|((d, len), _)| {
                    let bits = (*len - 64) as usize;
                    let ok = (0..bits).all(|i| {
                        let (byte, bit) = (i / 8, 7 - i % 8);
                        (d.addr.0[byte] >> bit) & 1 == (want[byte] >> bit) & 1
                    });
                    d.ep_id == ep && d.dir == dir && d.family == family_of(&ip) && ok
                })
                .max_by_key(|((_, len), _)| *len)
                .map(|(_, g)| *g)
        }

        /// Whether the maps let `peer` through `ip`'s endpoint in `direction`.
        pub(super) fn allows(
            st: &PolicyState,
            ip: IpAddr,
            direction: PolicyType,
            peer: IpAddr,
            protocol: Protocol,
            port: u16,
        ) -> bool {
            let me = st.addrs[&local_key(ip)];
            let (dir, iso, tiers) = match direction {
                PolicyType::Ingress => (POL_DIR_INGRESS, POL_F_ISO_INGRESS, POL_F_TIERS_INGRESS),
                PolicyType::Egress => (POL_DIR_EGRESS, POL_F_ISO_EGRESS, POL_F_TIERS_EGRESS),
            };
            let sets: Vec<u32> = st
                .addrs
                .get(&local_key(peer))
                .map(|v| v.sets[..usize::from(v.nsets)].to_vec())
                .unwrap_or_default();
            let (proto, ep) = (protocol.number(), me.ep_id);
            let mut best = PolTier::default();
            if me.flags & tiers != 0 {
                let mut hit = |peer_number: u32| {
                    let key = (ep, peer_number, dir, proto, port);
                    if let Some(t) = rule_lpm(st.tiers.iter().map(|(k, v)| (k, *v)), key) {
                        if t.cluster != 0 && t.cluster_order < best.cluster_order {
                            (best.cluster_order, best.cluster) = (t.cluster_order, t.cluster);
                        }
                        if t.baseline != 0 && t.baseline_order < best.baseline_order {
                            (best.baseline_order, best.baseline) = (t.baseline_order, t.baseline);
                        }
                    }
                };
                for n in &sets {
                    hit(*n);
                }
                if let Some(g) = block_lpm(st, ep, dir | POL_DIR_TIERS, peer).filter(|g| *g != 0) {
                    hit(g);
                }
                match best.cluster {
                    POL_TIER_ALLOW => return true,
                    POL_TIER_DENY => return false,
                    _ => {}
                }
            }
            if me.flags & iso != 0 {
                let rule = |n: u32| {
                    rule_lpm(st.rules.iter().map(|k| (k, ())), (ep, n, dir, proto, port)).is_some()
                };
                return rule(POL_PEER_ANY)
                    || sets.iter().any(|n| rule(*n))
                    || block_lpm(st, ep, dir, peer).is_some_and(|g| g != 0 && rule(g));
            }
            best.baseline != POL_TIER_DENY
        }
    }

    /// x/a (`pod: a`, named port http TCP 8080) and x/b local, y/c and y/d remote, node-b a
    /// peer node; overlapping cluster rules (ranges inside ranges, Pass inside Deny, networks
    /// inside networks) and a baseline.
    fn tier_state(c_label: &str, with_np: bool) -> DesiredState {
        use dataplane_core::{
            BaselineAction, BaselinePolicy, BaselineRule, ClusterAction, ClusterPeer,
            ClusterPolicy, ClusterPolicyRule, ClusterPolicySubject, LabelSelector, NamedPort,
            Namespace, PeerNode, PeerPod,
        };
        let mut st = state(false, c_label);
        st.namespaces = vec![
            Namespace::new("x").with_label("team", "x"),
            Namespace::new("y").with_label("team", "y"),
        ];
        st.endpoints[0].named_ports = vec![NamedPort::new("http", Protocol::Tcp, 8080)];
        st.pods.push(
            PeerPod::new(ObjectName::new("y", "d"), ["10.244.1.8".parse().unwrap()])
                .with_label("pod", "d")
                .with_named_port(NamedPort::new("http", Protocol::Tcp, 9090)),
        );
        st.nodes =
            vec![PeerNode::new("node-b", ["172.18.0.3".parse().unwrap()]).with_label("zone", "b")];
        let sel = |k: &str, v: &str| LabelSelector::default().with_label(k, v);
        let y = || ClusterPeer::Namespaces(sel("team", "y"));
        let net = |s: &str| ClusterPeer::Networks(vec![s.parse().unwrap()]);
        let tcp = |lo: u16, hi: u16| ClusterPort::PortRange {
            protocol: Protocol::Tcp,
            start: lo,
            end: hi,
        };
        st.cluster_policies = vec![
            ClusterPolicy::for_namespaces("first", 1, sel("team", "x"))
                .with_ingress(
                    ClusterPolicyRule::new("pass-mid", ClusterAction::Pass, [y()])
                        .with_port(tcp(1500, 1600)),
                )
                .with_egress(
                    ClusterPolicyRule::new("http", ClusterAction::Allow, [y()])
                        .with_port(ClusterPort::NamedPort("http".into())),
                )
                .with_egress(
                    ClusterPolicyRule::new("dns", ClusterAction::Allow, [net("192.0.2.53/32")])
                        .with_port(ClusterPort::PortNumber {
                            protocol: Protocol::Udp,
                            port: 53,
                        }),
                ),
            ClusterPolicy::for_namespaces("second", 2, sel("team", "x"))
                .with_ingress(
                    ClusterPolicyRule::new("deny-range", ClusterAction::Deny, [y()])
                        .with_port(tcp(1000, 2000)),
                )
                .with_ingress(ClusterPolicyRule::new(
                    "allow-c",
                    ClusterAction::Allow,
                    [ClusterPeer::Pods(dataplane_core::NamespacedPods {
                        namespace_selector: LabelSelector::default(),
                        pod_selector: sel("pod", "c"),
                    })],
                ))
                .with_egress(ClusterPolicyRule::new(
                    "deny-net",
                    ClusterAction::Deny,
                    [net("192.0.2.0/24")],
                ))
                .with_egress(ClusterPolicyRule::new(
                    "deny-pods",
                    ClusterAction::Deny,
                    [net("10.244.0.0/16")],
                )),
        ];
        st.baseline_policy = Some(
            BaselinePolicy::new(ClusterPolicySubject::Namespaces(LabelSelector::default()))
                .with_ingress(BaselineRule::new("deny-y", BaselineAction::Deny, [y()]))
                .with_egress(BaselineRule::new(
                    "deny-zone-b",
                    BaselineAction::Deny,
                    [ClusterPeer::Nodes(sel("zone", "b"))],
                )),
        );
        if with_np {
            st.policies = state(true, c_label).policies;
        }
        st
    }

    /// The maps answer every half-connection as core's tables (`tiered_allows`, checked
    /// against the reference model in core) do.
    fn assert_maps_agree(st: &PolicyState, state: &DesiredState) {
        let np = compile(state);
        let tiers = compile_tiers(state);
        let peers: Vec<IpAddr> = [
            "10.244.0.5",
            "10.244.0.6",
            "10.244.1.7",
            "10.244.1.8",
            "172.18.0.3",
            "192.0.2.53",
            "192.0.2.54",
            "192.0.2.200",
            "198.51.100.1",
        ]
        .iter()
        .map(|s| s.parse().unwrap())
        .collect();
        let ports = [
            1, 53, 80, 999, 1000, 1001, 1499, 1500, 1600, 1601, 2000, 2001, 8080, 9090,
        ];
        let mut checked = 0;
        for e in &state.endpoints {
            let ip = e.ips[0];
            for peer in peers.iter().filter(|p| **p != ip) {
                for protocol in [Protocol::Tcp, Protocol::Udp] {
                    for port in ports {
                        for direction in [PolicyType::Ingress, PolicyType::Egress] {
                            let want = dataplane_core::policy_tables::tiered_allows(
                                &np, &tiers, &e.name, direction, *peer, protocol, port,
                            );
                            let got = emulate::allows(st, ip, direction, *peer, protocol, port);
                            assert_eq!(
                                Some(got),
                                want,
                                "{} {direction:?} {peer} {protocol:?}/{port}",
                                e.name
                            );
                            checked += 1;
                        }
                    }
                }
            }
        }
        assert!(checked > 800);
    }

    #[test]
    fn tier_tables_answer_as_core_full_and_incremental() {
        let s0 = state(true, "c");
        let s1 = tier_state("c", true);
        let s2 = tier_state("other", true);
        let s3 = tier_state("other", false);
        let mut st = PolicyState::default();
        full(&mut st, &s1);
        assert_maps_agree(&st, &s1);
        // Incremental steps (pod relabel, policy removal) end where full plans would.
        for pair in [[&s1, &s2], [&s2, &s3]] {
            let plan = st
                .plan_changes(pair[1], &dataplane_core::diff(pair[0], pair[1]), limits())
                .expect("plan");
            st.apply_to_mirror(plan);
            assert_maps_agree(&st, pair[1]);
            let mut fresh = PolicyState::default();
            full(&mut fresh, pair[1]);
            assert_eq!(semantic(&st), semantic(&fresh));
            assert_eq!(st.tiers.len(), fresh.tiers.len());
        }
        // The tiers go (a full plan): their entries, blocks and flags go with them.
        let plan = st.plan_full(&s0, limits()).expect("plan");
        st.apply_to_mirror(plan);
        assert!(st.tiers.is_empty());
        assert!(st
            .addrs
            .values()
            .all(|v| v.flags & (POL_F_TIERS_INGRESS | POL_F_TIERS_EGRESS) == 0));
        assert!(st.blocks.keys().all(|(d, _)| d.dir & POL_DIR_TIERS == 0));
        let mut fresh = PolicyState::default();
        full(&mut fresh, &s0);
        assert_eq!(semantic(&st), semantic(&fresh));
    }

    #[test]
    fn tier_values_keep_the_first_rule_of_each_prefix() {
        let specs: BTreeSet<TierSpec> = [
            (
                (Some(Protocol::Tcp), (1000, 2000)),
                Tier::Cluster,
                10,
                TierAction::Deny,
            ),
            (
                (Some(Protocol::Tcp), (1500, 1500)),
                Tier::Cluster,
                5,
                TierAction::Pass,
            ),
            ((None, (0, u16::MAX)), Tier::Baseline, 0, TierAction::Allow),
        ]
        .into();
        let mut out = BTreeMap::new();
        tier_values(1, POL_DIR_INGRESS, 7, &specs, &mut out);
        let at = |port: u16| {
            out.iter()
                .filter(|((d, len), _)| {
                    *len <= 72
                        || (d.proto == 6
                            && (*len <= 80 || (d.port.get() ^ port) >> (96 - *len) == 0))
                })
                .max_by_key(|((_, len), _)| *len)
                .map(|(_, v)| (v.cluster, v.cluster_order, v.baseline))
        };
        assert_eq!(at(1500), Some((POL_TIER_PASS, 5, POL_TIER_ALLOW)));
        assert_eq!(at(1501), Some((POL_TIER_DENY, 10, POL_TIER_ALLOW)));
        assert_eq!(at(2000), Some((POL_TIER_DENY, 10, POL_TIER_ALLOW)));
        assert_eq!(at(2001), Some((0, u32::MAX, POL_TIER_ALLOW)));
    }

    #[test]
    fn rule_keys_of_port_specs() {
        let mut out = BTreeSet::new();
        rule_keys(7, POL_DIR_INGRESS, 9, (None, (0, u16::MAX)), &mut out);
        rule_keys(
            7,
            POL_DIR_INGRESS,
            9,
            (Some(Protocol::Tcp), (0, u16::MAX)),
            &mut out,
        );
        rule_keys(
            7,
            POL_DIR_INGRESS,
            9,
            (Some(Protocol::Udp), (80, 81)),
            &mut out,
        );
        rule_keys(
            7,
            POL_DIR_INGRESS,
            9,
            (Some(Protocol::Sctp), (80, 80)),
            &mut out,
        );
        let lens: Vec<(u8, u16, u32)> = out
            .iter()
            .map(|(d, l)| (d.proto, d.port.get(), *l))
            .collect();
        assert_eq!(
            lens,
            vec![(0, 0, 72), (6, 0, 80), (17, 80, 95), (132, 80, 96)]
        );
    }
}
