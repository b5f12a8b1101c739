//! Host endpoint policy in the maps (`dp_host_lpm`, `dp_host_rules`, `dp_host_cfg`,
//! `dp_host_drops`; the datapath is `bpf/lib/host_policy.h` and `host_xdp()` in
//! `bpf/lib/xdp.h`), with the semantics of [`dataplane_core::host_policy`].
//!
//! - **Sets.** The policies selecting the uplink's host endpoint
//!   ([`uplink_host_endpoint`], [`host_policies_for`]: order, then name) are compiled per
//!   stage and direction into a *set* of at most [`HS_RULES`] rules, numbered in evaluation
//!   order: untracked ingress and egress, pre-DNAT ingress, normal ingress and egress. For
//!   the normal sets `dp_host_cfg` also holds which rules are of `applyOnForward` policies
//!   (forwarded traffic sees only those) and whether a policy applies to each direction, for
//!   the node's own and for forwarded traffic (the default deny).
//! - **Masks.** A rule is one bit. For each part of a rule — source nets, destination nets,
//!   source ports, destination ports (with the protocol) — every prefix it names holds the
//!   rule's bit in `dp_host_lpm`, a part not given holds it in the set's catch-all prefix
//!   (24 bits: every family or protocol), and every prefix then holds the bits of the
//!   prefixes that contain it ([`close`]), so that one longest-prefix lookup per part gives
//!   the mask of the rules that part allows, and the lowest bit of the four masks' AND is the
//!   first matching rule. No per-rule loop in the datapath: Calico's BPF dataplane generates
//!   a program per policy instead (felix/bpf/polprog, run from felix/bpf-gpl/tc.c); an LPM
//!   of prefixes to rule sets is what Cilium's ipcache + policy map lookup amounts to.
//! - **The XDP fast path.** When every untracked ingress rule matches on source nets alone
//!   (no protocol, ports or destination: a blocklist; [`matches_on_source_alone`]), its
//!   other three parts are all the catch-all, whose masks hold every rule of the set, so the
//!   source lookup's mask is the whole answer: `HC_F_SRC_ONLY_IN` in `dp_host_cfg` tells
//!   `host_xdp()` to make that one lookup and to read the ports only for a packet it matched
//!   (for the failsafe check and the drop's event). Cilium's XDP prefilter
//!   (`bpf/bpf_xdp.c`, `check_v4()`) drops by source with one LPM lookup the same way.
//! - **Failsafe ports** ([`dataplane_core::FailsafePorts`]) are exact entries of the same
//!   trie (kind `HK_FAILSAFE`), checked before any set, as felix/bpf-gpl/failsafe.h does
//!   with its own hash.
//! - **Generations.** Everything is written under the generation the datapath does not use,
//!   then `dp_host_cfg[0].gen` flips to it, then the old generation's entries go: a change is
//!   make-before-break, and the datapath never sees half a policy. An unchanged compile
//!   writes nothing.
//! - **Connections.** The normal stage judges a connection's first packet (after
//!   translation); what it lets through goes into `dp_host_ct` (the datapath writes it), so
//!   that later packets and replies pass, as conntrack lets them in Calico's chains.
//! - **Refused**: more than [`HS_RULES`] rules in a set ([`Error::CapacityExceeded`]). Ports
//!   match TCP, UDP and SCTP alike (the programs parse all three).

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;

use aya::maps::lpm_trie::Key;
use dataplane_core::host_policy::{host_policies_for, uplink_host_endpoint, HostStage};
use dataplane_core::{
    DesiredState, Error, HostAction, HostPort, HostRule, HostRuleMatch, PolicyType, Protocol,
};

use crate::error::EbpfError;
use crate::loader::HostMaps;
use crate::map_table;
use crate::maps::{
    family_of, HostCfg, HostData, HA_ALLOW, HA_DENY, HA_NONE, HC_F_DEF_IN, HC_F_DEF_IN_FWD,
    HC_F_DEF_OUT, HC_F_DEF_OUT_FWD, HC_F_NORMAL, HC_F_ON, HC_F_SRC_ONLY_IN, HK_DST_NET,
    HK_DST_PORT, HK_FAILSAFE, HK_SRC_NET, HK_SRC_PORT, HS_GEN_RULES, HS_NORMAL_IN, HS_NORMAL_OUT,
    HS_PREDNAT_IN, HS_RULES, HS_UNTRACKED_IN, HS_UNTRACKED_OUT,
};
use crate::policy::port_prefixes;

/// A `dp_host_lpm` key without its generation: data (gen 0) and prefix length.
type EntryKey = (HostData, u32);

/// Which rule a slot holds: the policy, the direction and the rule's index there.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostRuleRef {
    /// The host policy's name.
    pub policy: String,
    /// Its ingress or egress rules.
    pub direction: PolicyType,
    /// The rule's index among them.
    pub rule: usize,
}

/// Packets one host policy rule dropped ([`EbpfDataplane::host_rule_drops`]).
///
/// [`EbpfDataplane::host_rule_drops`]: crate::EbpfDataplane::host_rule_drops
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostRuleDrops {
    /// The rule.
    pub rule: HostRuleRef,
    /// Packets it dropped (at XDP and in TC) since it was first programmed by this process.
    pub packets: u64,
}

/// A [`HostRuleRef`] as an ordered key.
type RuleId = (String, bool, usize);

impl HostRuleRef {
    fn id(&self) -> RuleId {
        (
            self.policy.clone(),
            self.direction == PolicyType::Ingress,
            self.rule,
        )
    }
}

/// What the host maps hold for one state (generation aside).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct HostTables {
    /// `HC_F_*` and the sets with rules.
    flags: u32,
    /// The normal sets' rules of `applyOnForward` policies (ingress, egress).
    fwd: [u64; 2],
    /// `dp_host_lpm`'s entries.
    entries: BTreeMap<EntryKey, u64>,
    /// Slot within a generation (`set * HS_RULES + bit`) -> action and rule.
    rules: BTreeMap<u32, (u32, HostRuleRef)>,
}

impl HostTables {
    /// Rule `rule` (`at`) as bit `bit` of `set`, slot `slot`.
    fn add_rule(&mut self, set: u8, slot: u32, bit: u64, rule: &HostRule, at: HostRuleRef) {
        self.flags |= 1 << set;
        part_entries(
            HK_SRC_NET,
            HK_SRC_PORT,
            set,
            rule.protocol,
            &rule.source,
            bit,
            &mut self.entries,
        );
        part_entries(
            HK_DST_NET,
            HK_DST_PORT,
            set,
            rule.protocol,
            &rule.destination,
            bit,
            &mut self.entries,
        );
        let action = match rule.action {
            HostAction::Allow => HA_ALLOW,
            HostAction::Deny => HA_DENY,
        };
        self.rules.insert(slot, (action, at));
    }

    /// Entries of `dp_host_lpm` it needs.
    pub(crate) fn len(&self) -> usize {
        self.entries.len()
    }
}

/// The set of a policy's rules of `direction`, or `None` for a stage and direction this
/// backend leaves alone (pre-DNAT egress: Calico's pre-DNAT policies have ingress rules
/// only).
fn set_of(stage: HostStage, direction: PolicyType) -> Option<u8> {
    match (stage, direction) {
        (HostStage::Untracked, PolicyType::Ingress) => Some(HS_UNTRACKED_IN),
        (HostStage::Untracked, PolicyType::Egress) => Some(HS_UNTRACKED_OUT),
        (HostStage::PreDnat, PolicyType::Ingress) => Some(HS_PREDNAT_IN),
        (HostStage::PreDnat, PolicyType::Egress) => None,
        (HostStage::Normal, PolicyType::Ingress) => Some(HS_NORMAL_IN),
        (HostStage::Normal, PolicyType::Egress) => Some(HS_NORMAL_OUT),
    }
}

fn data(kind: u8, set: u8, sub: u8, bytes: &[u8]) -> HostData {
    let mut d = [0u8; 16];
    d[..bytes.len()].copy_from_slice(bytes);
    HostData {
        gen: 0,
        kind,
        set,
        sub,
        data: d,
    }
}

/// The entries of one part of a rule: nets (`kind` a `*_NET`) or ports (a `*_PORT`).
fn part_entries(
    kind_net: u8,
    kind_port: u8,
    set: u8,
    protocol: Option<Protocol>,
    m: &HostRuleMatch,
    bit: u64,
    out: &mut BTreeMap<EntryKey, u64>,
) {
    let mut add = |key: EntryKey| *out.entry(key).or_default() |= bit;
    if m.nets.is_empty() {
        add((data(kind_net, set, 0, &[]), 24));
    }
    for net in &m.nets {
        let (sub, bytes) = match net.network() {
            IpAddr::V4(a) => (family_of(&net.ip()), a.octets().to_vec()),
            IpAddr::V6(a) => (family_of(&net.ip()), a.octets().to_vec()),
        };
        add((
            data(kind_net, set, sub, &bytes),
            32 + u32::from(net.prefix()),
        ));
    }
    match protocol {
        None => add((data(kind_port, set, 0, &[]), 24)),
        Some(p) if m.ports.is_empty() => add((data(kind_port, set, p.number(), &[]), 32)),
        Some(p) => {
            for port in &m.ports {
                let (lo, hi) = match port {
                    HostPort::Number(n) => (*n, *n),
                    HostPort::Range(r) => (r.start, r.end),
                };
                for (value, len) in port_prefixes(lo, hi) {
                    add((
                        data(kind_port, set, p.number(), &value.to_be_bytes()),
                        32 + len,
                    ));
                }
            }
        }
    }
}

/// Whether prefix `outer` contains prefix `inner` (same kind and set).
fn contains(outer: &EntryKey, inner: &EntryKey) -> bool {
    let ((o, olen), (i, ilen)) = (outer, inner);
    if o.kind != i.kind || o.set != i.set || olen > ilen {
        return false;
    }
    if *olen <= 24 {
        return true;
    }
    if o.sub != i.sub {
        return false;
    }
    let bits = (olen - 32) as usize;
    let (full, rest) = (bits / 8, bits % 8);
    if o.data[..full] != i.data[..full] {
        return false;
    }
    rest == 0 || {
        let mask = 0xffu8 << (8 - rest);
        o.data[full] & mask == i.data[full] & mask
    }
}

/// ORs into each entry the masks of the entries containing it (an LPM lookup finds only the
/// longest). The containing prefixes of an entry are looked up by the lengths that occur, so
/// this is linear in the entries times the distinct lengths of their kind and set.
fn close(entries: &mut BTreeMap<EntryKey, u64>) {
    let lengths: BTreeMap<(u8, u8), BTreeSet<u32>> =
        entries.keys().fold(BTreeMap::new(), |mut acc, (d, len)| {
            acc.entry((d.kind, d.set)).or_default().insert(*len);
            acc
        });
    let original = entries.clone();
    for (key, mask) in entries.iter_mut() {
        let Some(lens) = lengths.get(&(key.0.kind, key.0.set)) else {
            continue;
        };
        for &len in lens.iter().filter(|l| **l < key.1) {
            let outer = truncate(key, len);
            if let Some(m) = original.get(&outer) {
                debug_assert!(contains(&outer, key));
                *mask |= m;
            }
        }
    }
}

/// `key` cut to `len` bits (its canonical form as a prefix of that length).
fn truncate(key: &EntryKey, len: u32) -> EntryKey {
    let mut d = key.0;
    if len <= 24 {
        d.sub = 0;
        d.data = [0; 16];
        return (d, len);
    }
    let bits = (len - 32) as usize;
    for (i, b) in d.data.iter_mut().enumerate() {
        let keep = bits.saturating_sub(i * 8).min(8);
        *b &= if keep == 0 { 0 } else { 0xffu8 << (8 - keep) };
    }
    (d, len)
}

/// What a refusal names.
/// Whether `rule` matches on its source nets alone (any protocol, port and destination): in
/// a set of only such rules the source lookup decides (`HC_F_SRC_ONLY_IN`).
fn matches_on_source_alone(rule: &HostRule) -> bool {
    rule.protocol.is_none() && rule.source.ports.is_empty() && rule.destination.is_any()
}

/// Compiles the host policy of `state` (its uplink's host endpoint, the policies selecting
/// it, the failsafe ports) into the maps' contents.
///
/// # Errors
/// [`Error::CapacityExceeded`] for a set of more than [`HS_RULES`] rules.
pub(crate) fn compile(state: &DesiredState) -> Result<HostTables, Error> {
    let mut out = HostTables::default();
    let Some(endpoint) = uplink_host_endpoint(state) else {
        return Ok(out);
    };
    out.flags = HC_F_ON;
    let mut next_bit: BTreeMap<u8, u32> = BTreeMap::new();
    let mut src_only_in = true;
    for policy in host_policies_for(state, endpoint) {
        let kind = policy.stage();
        if kind == HostStage::Normal {
            out.flags |= HC_F_NORMAL;
        }
        for direction in [PolicyType::Ingress, PolicyType::Egress] {
            if !policy.applies_to(direction) {
                continue;
            }
            let Some(set) = set_of(kind, direction) else {
                continue;
            };
            if kind == HostStage::Normal {
                // Default deny for the node's own traffic, and forwarded traffic's with
                // applyOnForward.
                let (own, fwd) = if direction == PolicyType::Ingress {
                    (HC_F_DEF_IN, HC_F_DEF_IN_FWD)
                } else {
                    (HC_F_DEF_OUT, HC_F_DEF_OUT_FWD)
                };
                out.flags |= own;
                if policy.apply_on_forward {
                    out.flags |= fwd;
                }
            }
            for (index, rule) in policy.rules(direction).iter().enumerate() {
                if set == HS_UNTRACKED_IN && !matches_on_source_alone(rule) {
                    src_only_in = false;
                }
                let n = next_bit.entry(set).or_default();
                if *n >= HS_RULES {
                    return Err(Error::CapacityExceeded {
                        what: format!(
                            "host policy rules of one stage and direction (at {})",
                            policy.name
                        ),
                        needed: *n as usize + 1,
                        capacity: HS_RULES as usize,
                    });
                }
                let bit = 1u64 << *n;
                let slot = u32::from(set) * HS_RULES + *n;
                *n += 1;
                if kind == HostStage::Normal && policy.apply_on_forward {
                    out.fwd[usize::from(set == HS_NORMAL_OUT)] |= bit;
                }
                let at = HostRuleRef {
                    policy: policy.name.clone(),
                    direction,
                    rule: index,
                };
                out.add_rule(set, slot, bit, rule, at);
            }
        }
    }
    if src_only_in && out.flags & (1 << HS_UNTRACKED_IN) != 0 {
        out.flags |= HC_F_SRC_ONLY_IN;
    }
    close(&mut out.entries);
    let failsafe = &state.failsafe_ports;
    for (dir, ports) in [(0u8, &failsafe.inbound), (1u8, &failsafe.outbound)] {
        for f in ports {
            out.entries.insert(
                (
                    data(HK_FAILSAFE, dir, f.protocol.number(), &f.port.to_be_bytes()),
                    48,
                ),
                1,
            );
        }
    }
    Ok(out)
}

/// What the host maps hold, as this process wrote them.
#[derive(Debug, Default)]
pub(crate) struct HostState {
    /// The generation the datapath uses.
    gen: u8,
    /// What that generation holds; `None` when unknown (a new process, a failed write).
    written: Option<HostTables>,
    /// Drops counted under earlier generations, by rule (carried over a flip).
    carried: BTreeMap<RuleId, u64>,
    /// What each slot of the active generation counted before it was written (the counters
    /// are not reset: a slot's count is its growth since).
    base: BTreeMap<u32, u64>,
}

fn map_err(what: &'static str) -> impl Fn(aya::maps::MapError) -> EbpfError {
    move |e| EbpfError::map(what, "writing", e)
}

impl HostState {
    /// The state of the maps as found: the active generation, contents unknown.
    pub(crate) fn read(maps: &HostMaps) -> Result<Self, EbpfError> {
        let cfg = maps
            .cfg
            .get(&0, 0)
            .map_err(|e| EbpfError::map(map_table::HOST_CFG.name, "reading", e))?;
        Ok(Self {
            gen: (cfg.gen & 1) as u8,
            written: None,
            carried: BTreeMap::new(),
            base: BTreeMap::new(),
        })
    }

    /// The tables of `state` ([`compile`]), checked against `capacity` (`dp_host_lpm`'s
    /// size) at the write's peak. Writes nothing.
    ///
    /// # Errors
    /// [`compile`]'s, and [`Error::CapacityExceeded`].
    pub(crate) fn plan(
        &self,
        state: &DesiredState,
        maps: &HostMaps,
        capacity: u32,
    ) -> Result<HostTables, Error> {
        let tables = compile(state)?;
        let peak = self.peak(&tables, maps);
        if peak > capacity as usize {
            return Err(Error::CapacityExceeded {
                what: format!("{} (host policy prefixes)", map_table::HOST_LPM.name),
                needed: peak,
                capacity: capacity as usize,
            });
        }
        Ok(tables)
    }

    /// The `dp_host_lpm` entries a write of `tables` needs at its peak (the new generation
    /// next to what the maps hold), for the capacity check.
    fn peak(&self, tables: &HostTables, maps: &HostMaps) -> usize {
        if self.written.as_ref() == Some(tables) {
            return tables.len();
        }
        let held = match &self.written {
            Some(t) => t.len(),
            None => maps.lpm.keys().count(),
        };
        held + tables.len()
    }

    /// Writes `tables` (make-before-break: a new generation, the flip, the old one removed);
    /// nothing when the maps hold them already. Returns the entries written.
    pub(crate) fn write(
        &mut self,
        maps: &mut HostMaps,
        tables: HostTables,
    ) -> Result<usize, EbpfError> {
        if self.written.as_ref() == Some(&tables) {
            return Ok(0);
        }
        let old = self.gen;
        let new = old ^ 1;
        // From here on a failure leaves the maps unknown: the next sync rewrites them all.
        let previous = self.written.take();
        let lpm_err = map_err(map_table::HOST_LPM.name);
        // Leftovers of the generation about to be written (a failed write, another process).
        remove_generation(maps, new)?;
        for ((d, len), mask) in &tables.entries {
            let mut d = *d;
            d.gen = new;
            maps.lpm
                .insert(&Key::new(*len, d), *mask, 0)
                .map_err(&lpm_err)?;
        }
        let base = u32::from(new) * HS_GEN_RULES;
        let rules_err = map_err(map_table::HOST_RULES.name);
        for slot in 0..HS_GEN_RULES {
            let action = tables.rules.get(&slot).map_or(HA_NONE, |(a, _)| *a);
            maps.rules.set(base + slot, action, 0).map_err(&rules_err)?;
        }
        // The new generation's counters as they are (nothing counts there before the flip).
        let mut new_base = BTreeMap::new();
        for slot in tables.rules.keys() {
            new_base.insert(base + slot, slot_drops(maps, base + slot)?);
        }
        let cfg_err = map_err(map_table::HOST_CFG.name);
        let cfg = HostCfg {
            gen: 0,
            flags: tables.flags,
            fwd_in: tables.fwd[0],
            fwd_out: tables.fwd[1],
        };
        maps.cfg.set(1 + u32::from(new), cfg, 0).map_err(&cfg_err)?;
        // Counts of the old generation, kept for the rules that stay.
        if let Some(prev) = &previous {
            for d in self.read_drops(maps, old, prev)? {
                self.carried.insert(d.rule.id(), d.packets);
            }
        }
        let keep: BTreeSet<RuleId> = tables.rules.values().map(|(_, r)| r.id()).collect();
        self.carried.retain(|r, _| keep.contains(r));
        // The flip.
        maps.cfg
            .set(
                0,
                HostCfg {
                    gen: u32::from(new),
                    ..HostCfg::default()
                },
                0,
            )
            .map_err(&cfg_err)?;
        self.gen = new;
        self.base = new_base;
        // The old generation's entries.
        remove_generation(maps, old)?;
        let written = tables.entries.len();
        self.written = Some(tables);
        Ok(written)
    }

    /// Drops per rule of the active generation, with what earlier generations counted.
    pub(crate) fn drops(&self, maps: &HostMaps) -> Result<Vec<HostRuleDrops>, EbpfError> {
        let Some(tables) = &self.written else {
            return Ok(Vec::new());
        };
        self.read_drops(maps, self.gen, tables)
    }

    /// The drops of generation `gen`'s rules (`tables`) since it was written, with what
    /// earlier generations counted for the same rules.
    fn read_drops(
        &self,
        maps: &HostMaps,
        gen: u8,
        tables: &HostTables,
    ) -> Result<Vec<HostRuleDrops>, EbpfError> {
        let base = u32::from(gen) * HS_GEN_RULES;
        tables
            .rules
            .iter()
            .map(|(slot, (_, rule))| {
                let idx = base + slot;
                let now = slot_drops(maps, idx)?;
                let since = now.saturating_sub(self.base.get(&idx).copied().unwrap_or(0));
                Ok(HostRuleDrops {
                    rule: rule.clone(),
                    packets: since + self.carried.get(&rule.id()).copied().unwrap_or(0),
                })
            })
            .collect()
    }
}

/// Removes generation `gen`'s entries from `dp_host_lpm`.
fn remove_generation(maps: &mut HostMaps, gen: u8) -> Result<(), EbpfError> {
    let stale: Vec<Key<HostData>> = maps
        .lpm
        .keys()
        .filter_map(Result::ok)
        .filter(|k| k.data().gen == gen)
        .collect();
    for k in &stale {
        crate::error::removed(maps.lpm.remove(k)).map_err(map_err(map_table::HOST_LPM.name))?;
    }
    Ok(())
}

/// The drops counted in slot `idx` of `dp_host_drops`, summed over the CPUs.
fn slot_drops(maps: &HostMaps, idx: u32) -> Result<u64, EbpfError> {
    let per_cpu = maps
        .drops
        .get(&idx, 0)
        .map_err(|e| EbpfError::map(map_table::HOST_DROPS.name, "reading", e))?;
    Ok(per_cpu.iter().sum())
}

#[cfg(test)]
mod tests {
    use super::*;
    use dataplane_core::{HostEndpoint, HostPolicy, LabelSelector, Node};

    fn state(policies: Vec<HostPolicy>) -> DesiredState {
        let mut st = DesiredState::new(Node::new("node-a", ["172.18.0.2".parse().unwrap()]));
        st.node.interfaces.uplink = "eth0".into();
        st.host_endpoints =
            vec![HostEndpoint::new("uplink", "node-a", "eth0").with_label("role", "uplink")];
        st.host_policies = policies;
        st
    }

    fn sel() -> LabelSelector {
        LabelSelector::default().with_label("role", "uplink")
    }

    #[test]
    fn closure_puts_shorter_prefixes_masks_into_longer_ones() {
        let deny = HostPolicy::new("a-deny", sel())
            .untracked()
            .with_order(1)
            .with_ingress(
                HostRule::new(HostAction::Deny).from_nets(["198.51.100.0/24".parse().unwrap()]),
            );
        let allow = HostPolicy::new("b-allow", sel())
            .untracked()
            .with_order(2)
            .with_ingress(
                HostRule::new(HostAction::Allow).from_nets(["198.51.0.0/16".parse().unwrap()]),
            )
            .with_ingress(HostRule::new(HostAction::Deny));
        let t = compile(&state(vec![deny, allow])).unwrap();
        let src = |net: &str, len: u32| {
            let n: ipnetwork::IpNetwork = net.parse().unwrap();
            let IpAddr::V4(a) = n.ip() else { panic!() };
            t.entries[&(data(HK_SRC_NET, HS_UNTRACKED_IN, 4, &a.octets()), 32 + len)]
        };
        // rule 0: /24 deny, rule 1: /16 allow, rule 2: deny all.
        assert_eq!(src("198.51.100.0/24", 24), 0b111);
        assert_eq!(src("198.51.0.0/16", 16), 0b110);
        assert_eq!(
            t.entries[&(data(HK_SRC_NET, HS_UNTRACKED_IN, 0, &[]), 24)],
            0b100
        );
        assert_eq!(t.rules.len(), 3);
        assert_eq!(
            t.flags,
            HC_F_ON | (1 << HS_UNTRACKED_IN) | HC_F_SRC_ONLY_IN,
            "source nets only (and a match-all deny): the source lookup decides"
        );
    }

    #[test]
    fn source_only_mode_needs_every_untracked_ingress_rule_on_source_alone() {
        let blocklist = || {
            HostPolicy::new("a-block", sel())
                .untracked()
                .with_order(1)
                .with_ingress(
                    HostRule::new(HostAction::Deny).from_nets(["198.51.100.0/24".parse().unwrap()]),
                )
        };
        let src_only = |policies: Vec<HostPolicy>| {
            compile(&state(policies)).unwrap().flags & HC_F_SRC_ONLY_IN != 0
        };
        assert!(src_only(vec![blocklist()]));
        // Egress, pre-DNAT and normal rules are not XDP's: they leave the mode alone.
        let egress = HostPolicy::new("b-egress", sel())
            .untracked()
            .with_order(2)
            .with_types([PolicyType::Egress])
            .with_egress(
                HostRule::new(HostAction::Allow)
                    .protocol(Protocol::Tcp)
                    .from_ports([HostPort::Number(30080)]),
            );
        let normal = HostPolicy::new("c-normal", sel())
            .with_order(3)
            .with_ingress(HostRule::new(HostAction::Allow).protocol(Protocol::Tcp));
        assert!(src_only(vec![blocklist(), egress, normal]));
        // Any untracked ingress rule naming more than source nets takes the general path.
        let more = [
            HostRule::new(HostAction::Allow).protocol(Protocol::Udp),
            HostRule::new(HostAction::Allow)
                .protocol(Protocol::Tcp)
                .to_ports([HostPort::Number(22)]),
            HostRule::new(HostAction::Allow)
                .protocol(Protocol::Tcp)
                .from_ports([HostPort::Number(53)]),
            HostRule::new(HostAction::Allow).to_nets(["172.18.0.2/32".parse().unwrap()]),
        ];
        for rule in more {
            let other = HostPolicy::new("b-other", sel())
                .untracked()
                .with_order(2)
                .with_ingress(rule.clone());
            assert!(!src_only(vec![blocklist(), other]), "{rule:?}");
        }
        // No untracked ingress rule: no mode.
        assert!(!src_only(vec![]));
    }

    #[test]
    fn normal_policies_set_default_deny_and_forward_masks() {
        let own = HostPolicy::new("a-own", sel())
            .with_order(1)
            .with_ingress(HostRule::new(HostAction::Allow).protocol(Protocol::Tcp));
        let fwd = HostPolicy::new("b-fwd", sel())
            .with_order(2)
            .on_forward()
            .with_types([PolicyType::Ingress, PolicyType::Egress])
            .with_ingress(HostRule::new(HostAction::Deny));
        let t = compile(&state(vec![own, fwd])).unwrap();
        assert_eq!(
            t.flags,
            HC_F_ON
                | HC_F_NORMAL
                | HC_F_DEF_IN
                | HC_F_DEF_IN_FWD
                | HC_F_DEF_OUT
                | HC_F_DEF_OUT_FWD
                | (1 << HS_NORMAL_IN)
        );
        assert_eq!(t.fwd, [0b10, 0]);
    }

    #[test]
    fn truncate_and_contains_agree() {
        let k = (data(HK_SRC_NET, 0, 4, &[10, 1, 2, 3]), 32 + 32);
        for len in [24, 32, 33, 40, 47, 56, 64] {
            assert!(contains(&truncate(&k, len), &k), "{len}");
        }
        let other = (data(HK_SRC_NET, 0, 4, &[11, 0, 0, 0]), 32 + 8);
        assert!(!contains(&other, &k));
    }
}
