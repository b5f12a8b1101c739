//! The iptables renderer: the desired state, planned a service at a time ([`PortPlan`]s) →
//! the chains and rules of one address family ([`IptRuleset`], or a group at a time for the
//! backend's [`digest`](super::digest)) → `iptables-restore --noflush` text. Pure functions.
//!
//! kube-proxy's iptables layout (pkg/proxy/iptables/proxier.go), under our own prefix (`DP`
//! by default):
//!
//! ```text
//! nat PREROUTING/OUTPUT ─▶ DP-SERVICES ─(-d frontend -p proto --dport)─▶ DP-SVC-* (ClusterIP)
//!                                                                    ├─▶ DP-EXT-* (NodePort, ExternalIP, LB)
//!                                                                    └─▶ DP-FW-*  (LB + sourceRanges)
//!     DP-SVC: internalTrafficPolicy for every client; ! -s clusterCIDR (all: --masquerade-all)
//!             ─▶ DP-MARK-MASQ
//!     DP-EXT: Cluster: DP-MARK-MASQ; Local: addrtype LOCAL ─▶ masq + cluster-wide,
//!             -s <pod CIDR> (this node's pods) ─▶ cluster-wide, the rest by the policy
//!     DP-FW:  -s <allowed> ─▶ DP-EXT (ranges, LB IPs when a range holds the node), else drop
//!     DP-SVC/EXT ─▶ DP-SEL-* (statistic random ─▶ DNAT; recent for ClientIP affinity
//!                              ─▶ DP-SEP-* (recent --set, DNAT))
//!     DP-SVC with at most one cluster CIDR (or --masquerade-all): the DP-SEL rules folded
//!             in after `! -s clusterCIDR -j DP-MARK-MASQ`, as kube-proxy's KUBE-SVC
//!     no backend: mark 0x10000 (reject), no local backend / not in ranges: mark 0x8000 (drop)
//! nat POSTROUTING ─▶ DP-POSTROUTING: mark 0x4000 ─▶ SNAT to the node address; hairpin
//!                    (ipset DP-hairpin-v4 dst,dst,src) ─▶ SNAT; pod → outside
//! filter INPUT/FORWARD/OUTPUT ─▶ DP-FILTER: drop / reject the marked packets; new connections
//!                                still to the service CIDRs (no service took them): drop;
//!                                with NetworkPolicy, last: ─▶ DP-POLICY (see [`super::policy`])
//! ```
//!
//! Beyond kube-proxy's iptables mode: the drop of unallocated service addresses (its nftables
//! mode's `cluster-ips-check`), and pods short-circuiting an externalTrafficPolicy Local
//! frontend told by this node's pod CIDRs (`NodeCIDR` local detection) rather than by the
//! cluster CIDRs (the reference model treats a pod of another node as an outside client);
//! and before every rule that drops, rejects or marks for either, a rate-limited NFLOG rule
//! with the same matches (`crate::eventlog`; in nat for the services, where the service is
//! known).
//!
//! Departing from it (issue 24): no chain per backend. The restore tools pay per chain
//! (`x_tables`' table translation, `nf_tables`' per-commit walk of every chain), and at 10k
//! services x 10 kube-proxy's `KUBE-SEP-*` chains are ~120k of ~130k. A backend is the DNAT
//! rule of its selection chain; the hairpin mark the SEP chain carried is one rule of
//! `DP-POSTROUTING` over the hairpin ipset (`super::hairpin`, as kube-proxy's IPVS mode's
//! `KUBE-LOOP-BACK`). A `DP-SEP-*` chain stays for ClientIP affinity (`recent --set` and the
//! DNAT), and, with [`NodePlan::hairpin_set`] off, for this node's backends (the mark). And
//! a ClusterIP's selection is no chain of its own where one rule tests the client (one
//! cluster CIDR per family): ~10k chains fewer at 10k services. An external chain of
//! externalTrafficPolicy Cluster with the ClusterIP's backends goes on to `DP-SVC-*`, as
//! kube-proxy's `KUBE-EXT-*` to `KUBE-SVC-*`; a ClusterIP's unserved ports are one rule per
//! address to `DP-CIP-UNSERVED`, which logs and marks for reject once for all.
//!
//! Everything after the first packet of a connection is conntrack's job. Per-packet cost grows
//! with the number of service frontends (`DP-SERVICES` is linear), as in kube-proxy.

use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, SocketAddr};

use dataplane_core::{
    DesiredState, DropReason, EventVerdict, IpFamily, ObjectName, ObservedFrontend, PolicyType,
    Protocol, Service,
};

use crate::eventlog::{self, LogPrefix};
use ipnetwork::IpNetwork;

use super::policy;
use crate::plan::{
    hairpin_candidates, proto_name, service_ports, Choice, FamilySuffix as _, NodePlan, PortPlan,
};

/// Mark bit: masquerade this connection (SNAT to the node address) in POSTROUTING.
pub const MARK_MASQUERADE: u32 = 0x4000;
/// Mark bit: drop in the filter table.
pub const MARK_DROP: u32 = 0x8000;
/// Mark bit: reject in the filter table.
pub const MARK_REJECT: u32 = 0x10000;
/// Longest prefix: iptables chain names are at most 28 characters.
pub const MAX_PREFIX_LEN: usize = 5;

/// A netfilter table our chains live in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Table {
    /// `nat`: the service chains, the marks and the masquerade.
    Nat,
    /// `filter`: drops and rejects of marked packets.
    Filter,
    /// `raw`: untracked (`doNotTrack`) host endpoint policy, before conntrack (only while
    /// the state has host endpoint policy: see `iptables/host.rs`).
    Raw,
    /// `mangle`: pre-DNAT host endpoint policy, before the nat table's DNAT (as `raw`).
    Mangle,
}

impl Table {
    /// The tables every sync writes, in the order an input lists them (nat first: if the
    /// tool refuses it, it stops before touching the filter table).
    pub const ALL: [Table; 2] = [Table::Nat, Table::Filter];

    /// Every table of ours, in the order an input lists them: [`Table::ALL`], then the host
    /// policy tables (each section after nat is tried with `--test` before nat is written).
    pub const EVERY: [Table; 4] = [Table::Nat, Table::Filter, Table::Raw, Table::Mangle];

    /// The name iptables knows it by.
    pub fn name(self) -> &'static str {
        match self {
            Table::Nat => "nat",
            Table::Filter => "filter",
            Table::Raw => "raw",
            Table::Mangle => "mangle",
        }
    }

    /// The table called `name`, if it is one of ours.
    pub fn from_name(name: &str) -> Option<Table> {
        Table::EVERY.into_iter().find(|t| t.name() == name)
    }

    /// Its place in per-table arrays (in [`Table::EVERY`] order).
    pub(crate) fn index(self) -> usize {
        match self {
            Table::Nat => 0,
            Table::Filter => 1,
            Table::Raw => 2,
            Table::Mangle => 3,
        }
    }
}

impl std::fmt::Display for Table {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// The table a policy chain of ours lives in, by its name: `DP-RAW-*` raw, `DP-MGL-*`
/// mangle (host endpoint policy, see `iptables/host.rs`), every other filter.
pub fn table_of(prefix: &str, name: &str) -> Table {
    match name
        .strip_prefix(prefix)
        .and_then(|rest| rest.strip_prefix('-'))
    {
        Some(rest) if rest.starts_with("RAW-") => Table::Raw,
        Some(rest) if rest.starts_with("MGL-") => Table::Mangle,
        _ => Table::Filter,
    }
}

/// The chains of `policy` (pod and host policy) that live in `table` ([`table_of`]).
pub(crate) fn policy_in(policy: &Chains, prefix: &str, table: Table) -> Chains {
    policy
        .iter()
        .filter(|(name, _)| table_of(prefix, name) == table)
        .map(|(n, r)| (n.clone(), r.clone()))
        .collect()
}

pub(crate) use super::naming::{hash_name, host};
pub use super::naming::{Chains, HASH_CHARS};

/// A visitor of one group of chains of a table.
pub(crate) type Visit<'a, E> = dyn FnMut(Table, &Chains) -> Result<(), E> + 'a;

/// The chains of one family.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IptRuleset {
    /// Address family.
    pub family: IpFamily,
    /// Chain prefix.
    pub prefix: String,
    /// nat-table chains and their rules (`-A` lines without the `-A CHAIN`).
    pub nat: BTreeMap<String, Vec<String>>,
    /// filter-table chains.
    pub filter: BTreeMap<String, Vec<String>>,
    /// raw-table chains (host endpoint policy only).
    pub raw: BTreeMap<String, Vec<String>>,
    /// mangle-table chains (host endpoint policy only).
    pub mangle: BTreeMap<String, Vec<String>>,
}

impl IptRuleset {
    fn empty(family: IpFamily, prefix: &str) -> Self {
        IptRuleset {
            family,
            prefix: prefix.to_owned(),
            nat: BTreeMap::new(),
            filter: BTreeMap::new(),
            raw: BTreeMap::new(),
            mangle: BTreeMap::new(),
        }
    }

    /// The chains of `table`.
    pub fn chains(&self, table: Table) -> &Chains {
        match table {
            Table::Nat => &self.nat,
            Table::Filter => &self.filter,
            Table::Raw => &self.raw,
            Table::Mangle => &self.mangle,
        }
    }

    fn chains_mut(&mut self, table: Table) -> &mut Chains {
        match table {
            Table::Nat => &mut self.nat,
            Table::Filter => &mut self.filter,
            Table::Raw => &mut self.raw,
            Table::Mangle => &mut self.mangle,
        }
    }
}

/// Built-in chains and the jump rule into ours, per table.
pub fn hooks(prefix: &str) -> Vec<(Table, &'static str, String)> {
    vec![
        (Table::Nat, "PREROUTING", format!("{prefix}-SERVICES")),
        (Table::Nat, "OUTPUT", format!("{prefix}-SERVICES")),
        (Table::Nat, "POSTROUTING", format!("{prefix}-POSTROUTING")),
        (Table::Filter, "INPUT", format!("{prefix}-FILTER")),
        (Table::Filter, "FORWARD", format!("{prefix}-FILTER")),
        // Locally generated traffic has its own entry, without the policy jump: the node's
        // own traffic is not a pod's (pods' packets come in on an interface: INPUT, FORWARD),
        // and a source address cannot tell the node from a pod forging it.
        (Table::Filter, "OUTPUT", format!("{prefix}-FILTER-OUT")),
        // Host endpoint policy (see `iptables/host.rs`), hooked only while the state has some:
        // untracked rules before conntrack, pre-DNAT ones before the nat table's DNAT.
        (Table::Raw, "PREROUTING", super::host::raw_pre(prefix)),
        (Table::Raw, "OUTPUT", super::host::raw_out(prefix)),
        (Table::Mangle, "PREROUTING", super::host::mangle_pre(prefix)),
        (Table::Mangle, "OUTPUT", super::host::mangle_out(prefix)),
        (
            Table::Mangle,
            "POSTROUTING",
            super::host::mangle_post(prefix),
        ),
    ]
}

fn dnat_target(a: &SocketAddr) -> String {
    match a {
        SocketAddr::V4(v4) => format!("{}:{}", v4.ip(), v4.port()),
        SocketAddr::V6(v6) => format!("[{}]:{}", v6.ip(), v6.port()),
    }
}

fn of_family(nets: &[IpNetwork], f: IpFamily) -> Vec<IpNetwork> {
    nets.iter()
        .copied()
        .filter(|n| IpFamily::of(&n.ip()) == f)
        .collect()
}

/// The chains the backend writes for `state`, for both families (IPv4, IPv6), held whole (the
/// backend itself visits them a group at a time, through [`super::digest`], to write a sync
/// without holding the rules).
pub fn compile_state(state: &DesiredState, prefix: &str) -> [IptRuleset; 2] {
    // The iptables flavour's default log settings.
    let node = crate::plan::node_plan_with(&state.node, &crate::NetfilterConfig::iptables(None));
    let compiled = dataplane_core::compile(state);
    [IpFamily::V4, IpFamily::V6].map(|family| {
        let mut rs = IptRuleset::empty(family, prefix);
        // Two contents under one name: the backend refuses the state; here (for tests and
        // debugging) the policy chains are left out.
        let policy = policy::chains(&compiled, state, prefix, family).unwrap_or_default();
        let _ = each_chain::<()>(
            state,
            &node,
            &policy,
            prefix,
            family,
            &mut |table, chains| {
                rs.chains_mut(table)
                    .extend(chains.iter().map(|(c, r)| (c.clone(), r.clone())));
                Ok(())
            },
        );
        rs
    })
}

/// Calls `f(table, chains)` for the chains of `family` in the rulesets of `state`, a group at
/// a time: each service's (in name order; they jump only to each other and to node-wide
/// chains), the policy chains of `family` (`policy`, see [`policy::chains`]), then the
/// node-wide ones of each table.
pub(crate) fn each_chain<E>(
    state: &DesiredState,
    node: &NodePlan,
    policy: &Chains,
    prefix: &str,
    family: IpFamily,
    f: &mut Visit<'_, E>,
) -> Result<(), E> {
    // Of services with one name the last counts, as in the plan's map: reversed, a stable
    // sort puts it first of its name, and `dedup_by` keeps the first.
    let mut services: Vec<&Service> = state.services.iter().rev().collect();
    services.sort_by(|a, b| a.name.cmp(&b.name));
    services.dedup_by(|a, b| a.name == b.name);
    let mut frontends = Vec::new();
    let mut reject_ips = BTreeSet::new();
    for s in services {
        let chains = service_chains(
            state,
            node,
            s,
            prefix,
            family,
            &mut frontends,
            &mut reject_ips,
        );
        f(Table::Nat, &chains)?;
    }
    let rs = node_wide(node, family, prefix, &mut frontends, &reject_ips, policy);
    f(Table::Nat, &rs.nat)?;
    for table in [Table::Filter, Table::Raw, Table::Mangle] {
        let mine = policy_in(policy, prefix, table);
        if !mine.is_empty() {
            f(table, &mine)?;
        }
    }
    f(Table::Filter, &rs.filter)
}

/// The nat chains of service `s` in `family` (they jump only to each other and to node-wide
/// chains); its frontend rules (its part of the `SERVICES` chain, in order) are appended to
/// `frontends` and the cluster IPs whose unserved ports are rejected to `reject_ips`.
pub(crate) fn service_chains(
    state: &DesiredState,
    node: &NodePlan,
    s: &Service,
    prefix: &str,
    family: IpFamily,
    frontends: &mut Vec<String>,
    reject_ips: &mut BTreeSet<IpAddr>,
) -> Chains {
    let mut chains = BTreeMap::new();
    let kept = frontends.len();
    // Without the hairpin set, this node's backends keep a chain that marks the hairpin.
    let hairpin: BTreeSet<IpAddr> = if node.hairpin_set {
        BTreeSet::new()
    } else {
        hairpin_candidates(s, &state.node).collect()
    };
    for port in service_ports(state, s)
        .iter()
        .filter(|p| p.family == family)
    {
        compile_port(node, port, prefix, &hairpin, &mut chains, frontends);
        reject_ips.extend(port.cluster_ips.iter().copied());
    }
    // The frontend rules stay until the `SERVICES` chain is made: exactly sized.
    for r in &mut frontends[kept..] {
        r.shrink_to_fit();
    }
    chains
}

/// The node-wide chains of `family`, with the `SERVICES` chain of `frontends` (the frontend
/// rules of every service port) and the rejects of `reject_ips`; `policy`: the policy
/// chains (pod policy and host endpoint policy), which the filter chains end by jumping to.
pub(crate) fn node_wide(
    node: &NodePlan,
    family: IpFamily,
    prefix: &str,
    frontends: &mut Vec<String>,
    reject_ips: &BTreeSet<IpAddr>,
    policy: &Chains,
) -> IptRuleset {
    let mut rs = IptRuleset::empty(family, prefix);
    finish_ruleset(node, family, prefix, &mut rs, frontends, reject_ips);
    if let Some(filter) = rs.filter.get_mut(&format!("{prefix}-FILTER")) {
        // After the service drops and rejects (a connection to a service without backends
        // is rejected whatever the policy), from INPUT and FORWARD (not OUTPUT: see
        // [`hooks`]): INPUT checks a pod's egress to this node's other addresses as the
        // reference model does.
        if policy.contains_key(&policy::policy_chain(prefix)) {
            filter.push(format!("-j {}", policy::policy_chain(prefix)));
        }
        // Normal host endpoint policy after pod policy (on the translated packet).
        if policy.contains_key(&super::host::filter_in(prefix)) {
            filter.push(format!("-j {}", super::host::filter_in(prefix)));
        }
    }
    if let Some(filter) = rs.filter.get_mut(&format!("{prefix}-FILTER-OUT")) {
        if policy.contains_key(&super::host::filter_out(prefix)) {
            filter.push(format!("-j {}", super::host::filter_out(prefix)));
        }
    }
    rs
}

/// The node-wide nat chain a ClusterIP on a port it does not serve goes to (logged, marked
/// for reject). Named to sort before every service chain: `iptables-nft-restore` 1.8.9
/// inserts each rule's chain and jump target into a list sorted by name that it walks from
/// the start (`cache_chain_list_insert`), so a target sorting after the ~13k `DP-SVC-*` /
/// `DP-EXT-*` chains of a `DP-SERVICES` written in one commit cost a walk of all of them per
/// address (measured: a full sync over an existing `DP-SERVICES` 9 s -> 11.7 s with
/// `DP-UNSERVED`, issue 24).
pub(crate) fn unserved_chain(prefix: &str) -> String {
    format!("{prefix}-CIP-UNSERVED")
}

/// The chain a frontend rule of `SERVICES` goes to (its last word, after `-g`).
fn jump_target(rule: &str) -> &str {
    rule.rsplit_once(' ').map_or(rule, |(_, target)| target)
}

/// A ClusterIP on a port it does not serve: one rule per address of `reject_ips` appended to
/// `services`, to one chain that logs (see `crate::eventlog`) and marks for reject, returned
/// (issue 24: the log rule and the counted mark once, not per address; the restore tools
/// pay per rule and per comment). `None` without addresses.
fn unserved(
    p: &str,
    reject_ips: &BTreeSet<IpAddr>,
    node: &NodePlan,
    services: &mut Vec<String>,
) -> Option<(String, Vec<String>)> {
    if reject_ips.is_empty() {
        return None;
    }
    let chain = unserved_chain(p);
    services.extend(
        reject_ips
            .iter()
            .map(|ip| format!("-d {} -g {chain}", host(ip))),
    );
    let rules = eventlog::ipt_rules(
        &format!("-g {p}-MARK-REJ"),
        &LogPrefix::new(EventVerdict::Rejected, DropReason::Unallocated),
        &node.log,
    );
    Some((chain, rules))
}

/// The node-wide chains, after every service port is compiled.
fn finish_ruleset(
    plan_node: &NodePlan,
    family: IpFamily,
    p: &str,
    rs: &mut IptRuleset,
    services: &mut Vec<String>,
    reject_ips: &BTreeSet<IpAddr>,
) {
    // The frontend rules by jump target, descending (stable). They are disjoint (validation
    // refuses a frontend claimed twice), so their order decides nothing; but
    // `iptables-nft-restore` 1.8.9 inserts each rule's jump target into a name-sorted list it
    // walks from the head (`cache_chain_list_insert`): in descending order each target goes
    // in at the head. A 13k-rule `SERVICES` over existing chains took 1.43 s in hash order,
    // 0.42 s descending (issue 24, benches/notes.md).
    services.sort_by(|a, b| jump_target(b).cmp(jump_target(a)));
    if let Some((name, rules)) = unserved(p, reject_ips, plan_node, services) {
        rs.nat.insert(name, rules);
    }
    rs.nat
        .insert(format!("{p}-SERVICES"), std::mem::take(services));
    rs.nat.insert(
        format!("{p}-MARK-MASQ"),
        vec![format!(
            "-j MARK --set-xmark {MARK_MASQUERADE:#x}/{MARK_MASQUERADE:#x}"
        )],
    );
    rs.nat.insert(
        format!("{p}-MARK-DROP"),
        vec![format!("-j MARK --set-xmark {MARK_DROP:#x}/{MARK_DROP:#x}")],
    );
    rs.nat.insert(
        format!("{p}-MARK-REJ"),
        vec![format!(
            "-j MARK --set-xmark {MARK_REJECT:#x}/{MARK_REJECT:#x}"
        )],
    );
    let masq = match plan_node.masquerade_source(family) {
        Some(a) => format!("-j SNAT --to-source {a}"),
        None => "-j MASQUERADE".to_owned(),
    };
    rs.nat.insert(format!("{p}-MASQ"), vec![masq]);
    let mut post = vec![format!(
        "-m mark --mark {MARK_MASQUERADE:#x}/{MARK_MASQUERADE:#x} -m conntrack --ctstate DNAT -g {p}-MASQ"
    )];
    if plan_node.hairpin_set {
        // A backend of this node reaching itself through a service: after the DNAT its
        // source is its destination (kube-proxy's IPVS mode: `KUBE-LOOP-BACK`, matched
        // `dst,dst,src` in `KUBE-POSTROUTING`, pkg/proxy/ipvs/proxier.go and ipset.go).
        post.push(format!(
            "-m conntrack --ctstate DNAT -m set --match-set {} dst,dst,src -g {p}-MASQ",
            super::hairpin::set_name(p, family)
        ));
    }
    if plan_node.masquerade {
        let exempt = if plan_node.masquerade_all {
            of_family(&plan_node.pod_cidrs, family)
        } else {
            of_family(&plan_node.no_masquerade, family)
        };
        let mut pod_masq: Vec<String> =
            exempt.iter().map(|n| format!("-d {n} -j RETURN")).collect();
        pod_masq.push(format!("-j {p}-MASQ"));
        rs.nat.insert(format!("{p}-POD-MASQ"), pod_masq);
        for cidr in of_family(&plan_node.pod_cidrs, family) {
            post.push(format!(
                "-s {cidr} -m conntrack ! --ctstate DNAT -g {p}-POD-MASQ"
            ));
        }
    }
    rs.nat.insert(format!("{p}-POSTROUTING"), post);
    let reject = match family {
        IpFamily::V4 => "icmp-port-unreachable",
        IpFamily::V6 => "icmp6-port-unreachable",
    };
    let mut filter = vec![
        format!("-m mark --mark {MARK_DROP:#x}/{MARK_DROP:#x} -j DROP"),
        format!("-p tcp -m mark --mark {MARK_REJECT:#x}/{MARK_REJECT:#x} -j REJECT --reject-with tcp-reset"),
        format!("-m mark --mark {MARK_REJECT:#x}/{MARK_REJECT:#x} -j REJECT --reject-with {reject}"),
    ];
    // Not in kube-proxy's iptables mode; its nftables mode's "drop traffic to unallocated
    // ClusterIPs". The filter chains see a packet after its DNAT (a ClusterIP on a port it
    // does not serve was marked for reject above), so a new connection still addressed to
    // the service CIDRs went to no service.
    for cidr in of_family(&plan_node.service_cidrs, family) {
        filter.extend(eventlog::ipt_rules(
            &format!(
                "-d {cidr} -m conntrack --ctstate NEW -m comment --comment \"unallocated service address\" -j DROP"
            ),
            &LogPrefix::new(EventVerdict::Dropped, DropReason::Unallocated),
            &plan_node.log,
        ));
    }
    // NetworkPolicy's denials and forged sources end in these (see [`policy::deny_chain`]).
    for direction in [PolicyType::Ingress, PolicyType::Egress] {
        rs.filter.insert(
            policy::deny_chain(p, direction),
            eventlog::ipt_rules(
                "-j DROP",
                &LogPrefix::policy_denial(direction),
                &plan_node.log,
            ),
        );
    }
    rs.filter.insert(
        policy::spoofed_chain(p),
        eventlog::ipt_rules(
            "-j DROP",
            &LogPrefix::new(EventVerdict::Dropped, DropReason::Spoofed),
            &plan_node.log,
        ),
    );
    // The same drops and rejects for locally generated traffic, which has its own entry
    // chain (see [`hooks`]).
    rs.filter.insert(format!("{p}-FILTER-OUT"), filter.clone());
    rs.filter.insert(format!("{p}-FILTER"), filter);
}

fn compile_port(
    node: &NodePlan,
    pp: &PortPlan,
    p: &str,
    hairpin: &BTreeSet<IpAddr>,
    nat: &mut BTreeMap<String, Vec<String>>,
    services: &mut Vec<String>,
) {
    let key = format!("{}-{}", pp.family.suffix(), pp.key());
    let proto = proto_name(pp.protocol);
    let m = |dport: u16| format!("-p {proto} -m {proto} --dport {dport}");
    let comment = |what: &str| format!("-m comment --comment \"{} {what}\"", pp.key());

    let choose = |kind: &str, choice: &Choice, nat: &mut BTreeMap<String, Vec<String>>| -> String {
        match choice {
            Choice::Drop => format!("{p}-MARK-DROP"),
            Choice::Reject => format!("{p}-MARK-REJ"),
            Choice::Backends(b) => selection(pp, &key, kind, b, p, hairpin, nat),
        }
    };

    let mut svc_chain = None;
    if !pp.cluster_ips.is_empty() {
        // kube-proxy's internal traffic chain: internalTrafficPolicy for every client; with
        // --masquerade-all every client is marked, else those outside the cluster CIDRs
        // (`! -s clusterCIDR -j KUBE-MARK-MASQ`; a family may have several cluster CIDRs,
        // so the pods return to the choice first).
        let svc = service_chain(p, pp.family, &pp.service, proto, pp.port);
        let rules = cluster_ip_rules(node, pp, &key, p, hairpin, nat, &choose);
        nat.insert(
            svc.clone(),
            logged(rules, p, pp, node, DropReason::NoBackend),
        );
        for ip in &pp.cluster_ips {
            services.push(format!(
                "-d {} {} {} -g {svc}",
                host(ip),
                m(pp.port),
                comment("cluster IP")
            ));
        }
        svc_chain = Some(svc);
    }
    if pp.has_external() {
        let ext = format!("{p}-EXT-{}", hash_name(&key));
        let external = match svc_chain.as_ref().filter(|_| external_is_clusterip(pp)) {
            Some(svc) => svc.clone(),
            None => choose("external", &pp.external, nat),
        };
        let mut rules = Vec::new();
        if pp.external_masquerade {
            // externalTrafficPolicy Cluster: everyone masqueraded, cluster-wide.
            rules.push(format!("-j {p}-MARK-MASQ"));
        } else {
            let cluster = choose("cluster", &pp.cluster, nat);
            // kube-proxy: "masquerade LOCAL traffic", "route LOCAL traffic".
            rules.push(format!("-m addrtype --src-type LOCAL -j {p}-MARK-MASQ"));
            rules.push(format!("-m addrtype --src-type LOCAL -g {cluster}"));
            // kube-proxy's "pod traffic for ... external destinations" (`IfLocal`): this
            // node's pods, told by its pod CIDRs (`NodeCIDR` local detection), as the reference
            // model does (a pod of another node, a client on another interface: outside
            // clients under the policy); masqueraded too with allServices.
            for cidr in of_family(&node.pod_cidrs, pp.family) {
                if node.masquerade_services {
                    rules.push(format!("-s {cidr} -j {p}-MARK-MASQ"));
                }
                rules.push(format!("-s {cidr} -g {cluster}"));
            }
        }
        rules.push(format!("-g {external}"));
        nat.insert(
            ext.clone(),
            logged(rules, p, pp, node, DropReason::NoBackend),
        );
        let node_ports = pp
            .node_port
            .iter()
            .flat_map(|(addrs, np)| addrs.iter().map(|a| (a, *np)));
        for (ip, port, what) in pp
            .external_ips
            .iter()
            .map(|ip| (ip, pp.port, "external IP"))
            .chain(node_ports.map(|(a, np)| (a, np, "node port")))
        {
            services.push(format!(
                "-d {} {} {} -g {ext}",
                host(ip),
                m(port),
                comment(what)
            ));
        }
        if !pp.load_balancer_ips.is_empty() {
            let target = if pp.source_ranges.is_empty() {
                ext.clone()
            } else {
                // kube-proxy's KUBE-FW chain: each allowed source (the ranges, and the LB
                // IPs when a range holds the node: allowFromNode) to the service, everyone
                // else (pods, the node, outside) dropped.
                let fw = format!("{p}-FW-{}", hash_name(&key));
                nat.insert(fw.clone(), firewall_rules(pp, p, &ext, node));
                fw
            };
            for ip in &pp.load_balancer_ips {
                services.push(format!(
                    "-d {} {} {} -g {target}",
                    host(ip),
                    m(pp.port),
                    comment("load balancer IP")
                ));
            }
        }
    }
}

/// Whether `pp`'s external frontends go on to its ClusterIP chain: everyone marked already
/// (externalTrafficPolicy Cluster) and the same backends, as kube-proxy's `KUBE-EXT-*` jumps
/// to `KUBE-SVC-*` (issue 24: a selection chain and its rules fewer per NodePort; the
/// chain's `! -s clusterCIDR` mark is one these packets carry anyway).
fn external_is_clusterip(pp: &PortPlan) -> bool {
    pp.external_masquerade
        && pp.external == pp.internal
        && matches!(&pp.internal, Choice::Backends(b) if !b.is_empty())
}

/// What makes the chain of a choice (`kind`, the choice) in the nat chains.
type Choose<'a> = dyn Fn(&str, &Choice, &mut Chains) -> String + 'a;

/// The rules of `pp`'s ClusterIP chain (kube-proxy's internal traffic chain; `choose`
/// makes the chain of a choice, see [`compile_port`]).
fn cluster_ip_rules(
    node: &NodePlan,
    pp: &PortPlan,
    key: &str,
    p: &str,
    hairpin: &BTreeSet<IpAddr>,
    nat: &mut BTreeMap<String, Vec<String>>,
    choose: &Choose<'_>,
) -> Vec<String> {
    let mut rules: Vec<String> = Vec::new();
    let cluster = of_family(&node.cluster_cidrs, pp.family);
    // A family without cluster CIDRs has no `! -s clusterCIDR` test (kube-proxy has no
    // local detector for it then): its clients keep their address, except hairpin.
    let mark = node.masquerade_services || !cluster.is_empty();
    match &pp.internal {
        // At most one test of the client: the selection is folded into this chain, as
        // kube-proxy's KUBE-SVC-* holds its probability rules (issue 24: a chain less
        // per service port; the restore tools pay per chain).
        Choice::Backends(b)
            if !b.is_empty() && (node.masquerade_services || cluster.len() <= 1) =>
        {
            if node.masquerade_services {
                rules.push(format!("-j {p}-MARK-MASQ"));
            } else if let [c] = cluster.as_slice() {
                rules.push(format!("! -s {c} -j {p}-MARK-MASQ"));
            }
            rules.extend(selection_rules(pp, key, b, p, hairpin, nat));
        }
        // Several cluster CIDRs: the pods return to the choice first, the rest are
        // marked; the choice has a chain of its own (or is a mark chain).
        _ => {
            let internal = choose("internal", &pp.internal, nat);
            if !node.masquerade_services {
                rules.extend(cluster.iter().map(|c| format!("-s {c} -g {internal}")));
            }
            if mark {
                rules.push(format!("-j {p}-MARK-MASQ"));
            }
            rules.push(format!("-g {internal}"));
        }
    }
    rules
}

/// The rules of `pp`'s firewall chain: each allowed source range to `ext`, the rest marked
/// for drop (and logged).
fn firewall_rules(pp: &PortPlan, p: &str, ext: &str, node: &NodePlan) -> Vec<String> {
    let mut rules: Vec<String> = pp
        .source_ranges
        .iter()
        .map(|r| format!("-s {r} -g {ext}"))
        .collect();
    rules.push(format!("-g {p}-MARK-DROP"));
    logged(rules, p, pp, node, DropReason::SourceRange)
}

/// `rules` of a chain of `pp`'s service with the NFLOG rule (see `crate::eventlog`) before
/// each that marks the packet for drop or reject (for `reason`, with the service's name).
fn logged(
    rules: Vec<String>,
    p: &str,
    pp: &PortPlan,
    node: &NodePlan,
    reason: DropReason,
) -> Vec<String> {
    let (drop, reject) = (format!("-g {p}-MARK-DROP"), format!("-g {p}-MARK-REJ"));
    let mut out = Vec::with_capacity(rules.len());
    for r in rules {
        let verdict = if r.ends_with(&drop) {
            EventVerdict::Dropped
        } else if r.ends_with(&reject) {
            EventVerdict::Rejected
        } else {
            out.push(r);
            continue;
        };
        out.extend(eventlog::ipt_rules(
            &r,
            &LogPrefix::new(verdict, reason).of(&pp.service),
            &node.log,
        ));
    }
    out
}

/// The selection chain of one choice, and the endpoint chains it leads to: only for the
/// backends that need one (ClientIP affinity's `recent --set`; without the hairpin set, this
/// node's backends, `hairpin`, for the hairpin mark). The others are DNAT-ed by the
/// selection rule itself, as in kube-proxy's IPVS mode a backend is one entry, not a chain:
/// a chain per backend is what the restore tools pay for (`benches/notes.md`, issue 24).
#[allow(clippy::too_many_arguments)]
fn selection(
    pp: &PortPlan,
    key: &str,
    kind: &str,
    backends: &[(SocketAddr, u16)],
    p: &str,
    hairpin: &BTreeSet<IpAddr>,
    nat: &mut BTreeMap<String, Vec<String>>,
) -> String {
    let sel = format!("{p}-SEL-{}", hash_name(&format!("{key}#{kind}")));
    let rules = selection_rules(pp, key, backends, p, hairpin, nat);
    nat.insert(sel.clone(), rules);
    sel
}

/// The rules that pick one of `backends` (the last one unconditional: nothing falls through
/// them), for a selection chain or the end of a chain that folds it in; the endpoint chains
/// they lead to are added to `nat` (see [`selection`]).
fn selection_rules(
    pp: &PortPlan,
    key: &str,
    backends: &[(SocketAddr, u16)],
    p: &str,
    hairpin: &BTreeSet<IpAddr>,
    nat: &mut BTreeMap<String, Vec<String>>,
) -> Vec<String> {
    let proto = proto_name(pp.protocol);
    let sep = |a: &SocketAddr| format!("{p}-SEP-{}", hash_name(&format!("{key}@{a}")));
    let mut rules = Vec::new();
    if let Some(timeout) = pp.affinity_timeout {
        for (a, _) in backends {
            rules.push(format!(
                "-m recent --name {} --rcheck --seconds {timeout} --reap -g {}",
                sep(a),
                sep(a)
            ));
        }
    }
    let total: u32 = backends.iter().map(|(_, w)| u32::from(*w)).sum();
    let mut remaining = total;
    // The protocol first, as `iptables-save` lists it (DNAT to a port needs it).
    let dnat = |matches: &str, a: &SocketAddr| {
        format!(
            "-p {proto} -m {proto} {matches}-j DNAT --to-destination {}",
            dnat_target(a)
        )
    };
    for (i, (a, w)) in backends.iter().enumerate() {
        let chained = pp.affinity_timeout.is_some() || hairpin.contains(&a.ip());
        let random = if i + 1 == backends.len() {
            String::new()
        } else {
            let prob = f64::from(*w) / f64::from(remaining);
            format!("-m statistic --mode random --probability {prob:.10} ")
        };
        rules.push(if chained {
            format!("{random}-g {}", sep(a))
        } else {
            dnat(&random, a)
        });
        remaining -= u32::from(*w);
        if !chained {
            continue;
        }
        let mut ep = vec![format!("-s {} -j {p}-MARK-MASQ", host(&a.ip()))];
        if pp.affinity_timeout.is_some() {
            ep.push(format!("-m recent --name {} --set", sep(a)));
        }
        ep.push(dnat("", a));
        nat.insert(sep(a), ep);
    }
    rules
}

/// What is in the kernel before a sync: our chains and which hook jumps exist.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Existing {
    /// Our chains in the nat table.
    pub nat_chains: BTreeSet<String>,
    /// Our chains in the filter table.
    pub filter_chains: BTreeSet<String>,
    /// Our chains in the raw table.
    pub raw_chains: BTreeSet<String>,
    /// Our chains in the mangle table.
    pub mangle_chains: BTreeSet<String>,
    /// (table, built-in chain) pairs whose first rule, and only jump to our chain, is our
    /// hook: nothing to do.
    pub hooks: BTreeSet<(Table, String)>,
    /// (table, built-in chain) pairs that hold our hook elsewhere than first (another
    /// component inserted rules above it, whose ACCEPT would bypass ours) or more than once:
    /// how many times. Each sync deletes them and inserts the hook at position 1 again.
    pub misplaced: BTreeMap<(Table, String), usize>,
    /// Other rules of the hooked built-in chains that jump to one of our chains (a hook of an
    /// earlier version, such as `OUTPUT -j DP-FILTER`): `(table, rule)` with the rule as
    /// `iptables-save` lists it, without `-A `. Deleted by the next sync.
    pub stale_jumps: Vec<(Table, String)>,
}

impl Existing {
    /// Our chains in `table`.
    pub fn chains(&self, table: Table) -> &BTreeSet<String> {
        match table {
            Table::Nat => &self.nat_chains,
            Table::Filter => &self.filter_chains,
            Table::Raw => &self.raw_chains,
            Table::Mangle => &self.mangle_chains,
        }
    }
}

/// What puts our hook jumps first in their built-in chains, as `-D`/`-I` lines: a missing
/// hook is inserted at position 1; a hook that is not first (or there twice) is deleted and
/// inserted at 1 again, as kube-router keeps its top-level jumps first on every sync
/// (`ensureRuleAtPosition` in `pkg/controllers/netpol/network_policy_controller.go`): a rule
/// that another component (a CNI firewall plugin, Docker, firewalld) inserted above ours
/// and that accepts would bypass the service drops and NetworkPolicy. Jumps into our chains
/// that are no hook any more are deleted. One restore input: atomic per table.
pub fn hook_lines(prefix: &str, existing: &Existing, table: Table) -> Vec<String> {
    let mut out: Vec<String> = existing
        .stale_jumps
        .iter()
        .filter(|(t, _)| *t == table)
        .map(|(_, rule)| format!("-D {rule}"))
        .collect();
    for (t, c, target) in hooks(prefix) {
        let key = (t, c.to_owned());
        if t != table || existing.hooks.contains(&key) {
            continue;
        }
        for _ in 0..existing.misplaced.get(&key).copied().unwrap_or(0) {
            out.push(format!("-D {c} -j {target}"));
        }
        out.push(format!("-I {c} 1 -j {target}"));
    }
    out
}

/// The input that removes everything of ours that `existing` lists.
pub fn render_reset(prefix: &str, existing: &Existing) -> String {
    let mut out = String::new();
    let _ = write_reset(prefix, existing, &mut out);
    out
}

/// Writes [`render_reset`]'s input into `out` (streamed by the backend: there are several
/// chains per service port to remove). Returns whether anything was written.
pub fn write_reset<W: std::fmt::Write + ?Sized>(
    prefix: &str,
    existing: &Existing,
    out: &mut W,
) -> Result<bool, std::fmt::Error> {
    let mut wrote = false;
    for table in [Table::Filter, Table::Nat, Table::Raw, Table::Mangle] {
        let chains = existing.chains(table);
        let jumps = reset_jumps(prefix, existing, table);
        if chains.is_empty() && jumps.is_empty() {
            continue;
        }
        wrote = true;
        writeln!(out, "*{table}")?;
        for c in chains {
            writeln!(out, ":{c} - [0:0]")?;
        }
        for rule in jumps {
            writeln!(out, "-D {rule}")?;
        }
        for c in chains {
            writeln!(out, "-X {c}")?;
        }
        writeln!(out, "COMMIT")?;
    }
    Ok(wrote)
}

/// The rules of `table`'s built-in chains that jump to ours (hooks, misplaced or stale), as
/// `CHAIN rule` for `-D`.
pub(crate) fn reset_jumps(prefix: &str, existing: &Existing, table: Table) -> Vec<String> {
    let mut jumps: Vec<String> = Vec::new();
    for (t, c, target) in hooks(prefix) {
        let key = (t, c.to_owned());
        let n = usize::from(existing.hooks.contains(&key))
            + existing.misplaced.get(&key).copied().unwrap_or(0);
        if t == table {
            jumps.extend((0..n).map(|_| format!("{c} -j {target}")));
        }
    }
    jumps.extend(
        existing
            .stale_jumps
            .iter()
            .filter(|(t, _)| *t == table)
            .map(|(_, r)| r.clone()),
    );
    jumps
}

/// [`write_reset`] in sections of at most `limit` chains per `COMMIT`, for iptables-nft,
/// whose restore is quadratic in the chains one commit names (see
/// `super::digest::SyncPlan::in_sections`): per table, the hook jumps are deleted and the
/// chains flushed a section at a time, then deleted a section at a time (once all are
/// flushed no rule refers to any of them). Not atomic: a failure leaves some of our chains,
/// which the next `reset()` or full sync finds.
pub fn write_reset_in_sections<W: std::fmt::Write + ?Sized>(
    prefix: &str,
    existing: &Existing,
    limit: usize,
    out: &mut W,
) -> Result<bool, std::fmt::Error> {
    let limit = limit.max(1);
    let mut wrote = false;
    for table in [Table::Filter, Table::Nat, Table::Raw, Table::Mangle] {
        let chains: Vec<&String> = existing.chains(table).iter().collect();
        let jumps = reset_jumps(prefix, existing, table);
        if chains.is_empty() && jumps.is_empty() {
            continue;
        }
        wrote = true;
        writeln!(out, "*{table}")?;
        for rule in &jumps {
            writeln!(out, "-D {rule}")?;
        }
        writeln!(out, "COMMIT")?;
        for part in chains.chunks(limit) {
            writeln!(out, "*{table}")?;
            for c in part {
                writeln!(out, ":{c} - [0:0]")?;
            }
            writeln!(out, "COMMIT")?;
        }
        for part in chains.chunks(limit) {
            writeln!(out, "*{table}")?;
            for c in part {
                writeln!(out, "-X {c}")?;
            }
            writeln!(out, "COMMIT")?;
        }
    }
    Ok(wrote)
}

/// Reads `iptables-save` output: our chains per table and the hook jumps present.
pub fn parse_existing(save: &str, prefix: &str) -> Existing {
    let mut parser = ExistingParser::new(prefix);
    for line in save.lines() {
        parser.line(line);
    }
    parser.finish()
}

/// Sees each of our chains (table, name) and says whether to list its name.
type Keep<'a> = Box<dyn FnMut(Table, &str) -> bool + 'a>;

/// [`parse_existing`] a line at a time, for output read as it comes (`iptables-save` lists
/// every rule, so it is never held whole).
pub struct ExistingParser<'a> {
    ours: String,
    /// The table being read (`None`: not one of ours).
    table: Option<Table>,
    hook_targets: Vec<((Table, String), String)>,
    /// Rules seen so far in each hooked built-in chain of the table being read.
    positions: BTreeMap<String, usize>,
    existing: Existing,
    keep: Option<Keep<'a>>,
}

impl std::fmt::Debug for ExistingParser<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ExistingParser")
            .field("ours", &self.ours)
            .field("existing", &self.existing)
            .finish_non_exhaustive()
    }
}

impl<'a> ExistingParser<'a> {
    /// A parser for the chains of `prefix`.
    pub fn new(prefix: &str) -> Self {
        ExistingParser {
            ours: format!("{prefix}-"),
            table: None,
            hook_targets: hooks(prefix)
                .into_iter()
                .map(|(t, c, target)| ((t, c.to_owned()), target))
                .collect(),
            positions: BTreeMap::new(),
            existing: Existing::default(),
            keep: None,
        }
    }

    /// A parser that hands each of our chains (table, name) to `keep` and lists only those
    /// it keeps: the kernel holds several per service port, of which a sync needs the names
    /// of the stale ones only.
    pub fn filtered(prefix: &str, keep: impl FnMut(Table, &str) -> bool + 'a) -> Self {
        ExistingParser {
            keep: Some(Box::new(keep)),
            ..ExistingParser::new(prefix)
        }
    }

    /// Reads one line (without its newline).
    pub fn line(&mut self, line: &str) {
        let e = &mut self.existing;
        if let Some(t) = line.strip_prefix('*') {
            self.table = Table::from_name(t);
            self.positions.clear();
        } else if let Some(decl) = line.strip_prefix(':') {
            let name = decl.split_whitespace().next().unwrap_or("");
            let Some(table) = self.table else {
                return;
            };
            if name.starts_with(&self.ours) {
                if let Some(keep) = self.keep.as_mut() {
                    if !keep(table, name) {
                        return;
                    }
                }
                match table {
                    Table::Nat => e.nat_chains.insert(name.to_owned()),
                    Table::Filter => e.filter_chains.insert(name.to_owned()),
                    Table::Raw => e.raw_chains.insert(name.to_owned()),
                    Table::Mangle => e.mangle_chains.insert(name.to_owned()),
                };
            }
        } else if let Some(rule) = line.strip_prefix("-A ") {
            let chain = rule.split_whitespace().next().unwrap_or("");
            // Only the built-in chains we hook matter: no allocation per rule of ours.
            let Some((key, target)) = self
                .hook_targets
                .iter()
                .find(|((t, c), _)| Some(*t) == self.table && c == chain)
            else {
                return;
            };
            let position = self.positions.entry(chain.to_owned()).or_insert(0);
            *position += 1;
            let rule = rule.trim_end();
            let body = rule[chain.len()..].trim();
            if body == format!("-j {target}") {
                if *position == 1 && !e.misplaced.contains_key(key) {
                    e.hooks.insert(key.clone());
                } else {
                    // Not first, or a second one: the first one found is misplaced too.
                    let n = usize::from(e.hooks.remove(key));
                    *e.misplaced.entry(key.clone()).or_insert(0) += n + 1;
                }
            } else if jumps_to(body, &self.ours) {
                e.stale_jumps.push((key.0, rule.to_owned()));
            }
        }
    }

    /// What the lines said.
    pub fn finish(self) -> Existing {
        self.existing
    }
}

/// Whether rule `body` jumps (`-j`, `-g`) to a chain that starts with `ours`.
pub(crate) fn jumps_to(body: &str, ours: &str) -> bool {
    let mut words = body.split_whitespace();
    while let Some(w) = words.next() {
        if w == "-j" || w == "-g" {
            return words.next().is_some_and(|t| t.starts_with(ours));
        }
    }
    false
}

/// The name of the ClusterIP chain (`<prefix>-SVC-…`) of a service port in `family`.
pub fn service_chain(
    prefix: &str,
    family: IpFamily,
    service: &ObjectName,
    protocol: &str,
    port: u16,
) -> String {
    format!(
        "{prefix}-SVC-{}",
        hash_name(&format!("{}-{service}/{protocol}/{port}", family.suffix()))
    )
}

/// The rules of our chains with their packet counters: (table, chain) → (packets, rule text).
pub type CountedRules = BTreeMap<(Table, String), Vec<(u64, String)>>;

/// Our chains' rules (chains named `<prefix>-…`) with their counters, from `iptables-save -c`.
pub fn counted_rules(save: &str, prefix: &str) -> CountedRules {
    let ours = format!("{prefix}-");
    let mut out = CountedRules::new();
    let mut table = None;
    for line in save.lines() {
        if let Some(t) = line.strip_prefix('*') {
            table = Table::from_name(t);
            continue;
        }
        let Some(table) = table else {
            continue;
        };
        let (packets, rest) = match line.strip_prefix('[') {
            Some(r) => {
                let (c, rest) = r.split_once("] ").unwrap_or(("0:0", r));
                (
                    c.split(':')
                        .next()
                        .and_then(|p| p.parse().ok())
                        .unwrap_or(0),
                    rest,
                )
            }
            None => (0, line),
        };
        if let Some(rule) = rest.strip_prefix("-A ") {
            let (chain, body) = rule.split_once(' ').unwrap_or((rule, ""));
            if chain.starts_with(&ours) {
                out.entry((table, chain.to_owned()))
                    .or_default()
                    .push((packets, body.to_owned()));
            }
        }
    }
    out
}

/// Adds the counters of `rules` (one family) to `s`: packets translated (DNAT rules),
/// dropped and rejected (the filter table's DROP and REJECT rules, where every drop ends),
/// NetworkPolicy's drops (`other["policy_dropped"]`), and drops by reason: the rules tagged
/// with their verdict and reason ([`eventlog::IPT_COUNT_TAG`]: the rule that drops, rejects
/// or marks for either), which count every packet whether or not a log rule is in front.
///
/// An NFLOG rule's counter counts the packets its `limit` let through (logged): with log
/// rules, the tagged rules' total less the logged is what the limits held back, added to
/// `other["events_suppressed"]` (absent without log rules: `nflog_rate` 0).
pub fn add_stats(rules: &CountedRules, s: &mut dataplane_core::Stats) {
    let (mut logged_total, mut counted_total) = (None::<u64>, 0u64);
    for ((table, _), rules) in rules {
        for (packets, rule) in rules {
            if eventlog::ipt_prefix_of(rule).is_some() {
                *logged_total.get_or_insert(0) += packets;
                continue;
            }
            if let Some((_, reason)) = eventlog::ipt_counted_of(rule) {
                *s.drops.entry(reason).or_default() += packets;
                counted_total += packets;
            }
            if *table == Table::Filter && rule.contains("network policy:") {
                *s.other.entry("policy_dropped".to_owned()).or_default() += packets;
            }
            if rule.contains("-j DNAT") {
                s.packets_translated += packets;
            } else if *table == Table::Filter && rule.contains("-j DROP") {
                s.packets_dropped += packets;
            } else if *table == Table::Filter && rule.contains("-j REJECT") {
                s.packets_rejected += packets;
            }
        }
    }
    s.drops.retain(|_, n| *n > 0);
    if let Some(logged) = logged_total {
        *s.other.entry("events_suppressed".to_owned()).or_default() +=
            counted_total.saturating_sub(logged);
    }
}

/// The word after `flag` in `rule`.
pub(crate) fn word_after<'a>(rule: &'a str, flag: &str) -> Option<&'a str> {
    let mut words = rule.split_whitespace();
    while let Some(w) = words.next() {
        if w == flag {
            return words.next();
        }
    }
    None
}

/// The frontends of one family's `<prefix>-SERVICES` chain in `rules`, each with the
/// backends its chains DNAT to and the comment of its rule (`<ns>/<name>/<proto>/<port>
/// <kind>`, see [`frontend_comment`]).
pub fn frontends_of(rules: &CountedRules, prefix: &str) -> Vec<(ObservedFrontend, Option<String>)> {
    let mut out = Vec::new();
    let Some(services) = rules.get(&(Table::Nat, format!("{prefix}-SERVICES"))) else {
        return out;
    };
    for (_, r) in services {
        let (Some(dst), Some(proto), Some(dport), Some(target)) = (
            word_after(r, "-d"),
            word_after(r, "-p"),
            word_after(r, "--dport"),
            word_after(r, "-g").or_else(|| word_after(r, "-j")),
        ) else {
            continue;
        };
        let ip: Option<IpAddr> = dst.split('/').next().and_then(|a| a.parse().ok());
        let Some(protocol) = Protocol::from_name(proto) else {
            continue;
        };
        let (Some(ip), Ok(port)) = (ip, dport.parse::<u16>()) else {
            continue;
        };
        let mut backends = BTreeSet::new();
        let mut seen = BTreeSet::new();
        let mut todo = vec![target.to_owned()];
        while let Some(chain) = todo.pop() {
            if !seen.insert(chain.clone()) {
                continue;
            }
            for (_, rule) in rules.get(&(Table::Nat, chain)).into_iter().flatten() {
                if let Some(to) = word_after(rule, "--to-destination") {
                    let to = to.replace(['[', ']'], "");
                    if let Some((a, p)) = to.rsplit_once(':') {
                        if let (Ok(a), Ok(p)) = (a.parse::<IpAddr>(), p.parse::<u16>()) {
                            backends.insert(SocketAddr::new(a, p));
                        }
                    }
                }
                if let Some(next) = word_after(rule, "-g").or_else(|| word_after(rule, "-j")) {
                    if next.starts_with(&format!("{prefix}-")) {
                        todo.push(next.to_owned());
                    }
                }
            }
        }
        let comment = r.split_once("--comment ").map(|(_, c)| {
            c.trim_start_matches('"')
                .split('"')
                .next()
                .unwrap_or("")
                .to_owned()
        });
        out.push((
            ObservedFrontend {
                address: SocketAddr::new(ip, port),
                protocol,
                backends,
            },
            comment,
        ));
    }
    out
}

/// The service and the frontend kind (`ClusterIP`, `ExternalIP`, `NodePort`,
/// `LoadBalancer`) of a frontend rule's comment (`<ns>/<name>/<proto>/<port> <kind>`).
pub fn frontend_comment(comment: &str) -> (Option<ObjectName>, Option<&'static str>) {
    let (key, kind) = comment.split_once(' ').unwrap_or((comment, ""));
    let mut parts = key.split('/');
    let service = match (parts.next(), parts.next()) {
        (Some(ns), Some(name)) if !ns.is_empty() && !name.is_empty() => {
            Some(ObjectName::new(ns, name))
        }
        _ => None,
    };
    let kind = match kind {
        "cluster IP" => Some("ClusterIP"),
        "external IP" => Some("ExternalIP"),
        "node port" => Some("NodePort"),
        "load balancer IP" => Some("LoadBalancer"),
        _ => None,
    };
    (service, kind)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_fit_iptables_limits() {
        let n = format!(
            "DP-SEP-{}",
            hash_name("v6-some-namespace/some-service/tcp/443@[fd00::1]:8443")
        );
        assert!(n.len() <= 28, "{n}");
        assert_ne!(hash_name("a"), hash_name("b"));
    }

    #[test]
    fn parses_existing_chains_and_hooks() {
        let save = "*nat\n:PREROUTING ACCEPT [0:0]\n:DP-SERVICES - [0:0]\n:KUBE-X - [0:0]\n-A PREROUTING -j DP-SERVICES\n-A OUTPUT -j KUBE-X\nCOMMIT\n*filter\n:DP-FILTER - [0:0]\nCOMMIT\n";
        let e = parse_existing(save, "DP");
        assert_eq!(e.nat_chains, BTreeSet::from(["DP-SERVICES".to_owned()]));
        assert_eq!(e.filter_chains, BTreeSet::from(["DP-FILTER".to_owned()]));
        assert!(e.hooks.contains(&(Table::Nat, "PREROUTING".to_owned())));
        assert_eq!(e.hooks.len(), 1);
    }

    /// A hook pushed down by another component's rule, a hook there twice and a jump of an
    /// earlier layout are seen; the sync deletes them and inserts the hook first again.
    #[test]
    fn hooks_not_first_are_moved_back_to_the_top() {
        let save = "*filter\n:INPUT ACCEPT [0:0]\n:FORWARD ACCEPT [0:0]\n:OUTPUT ACCEPT [0:0]\n\
                    -A INPUT -j DP-FILTER\n\
                    -A FORWARD -j ACCEPT\n-A FORWARD -j DP-FILTER\n\
                    -A OUTPUT -j DP-FILTER-OUT\n-A OUTPUT -j DP-FILTER\n-A OUTPUT -j DP-FILTER-OUT\n\
                    COMMIT\n";
        let e = parse_existing(save, "DP");
        assert_eq!(
            e.hooks,
            BTreeSet::from([(Table::Filter, "INPUT".to_owned())])
        );
        assert_eq!(
            e.misplaced,
            BTreeMap::from([
                ((Table::Filter, "FORWARD".to_owned()), 1),
                ((Table::Filter, "OUTPUT".to_owned()), 2),
            ])
        );
        assert_eq!(
            e.stale_jumps,
            vec![(Table::Filter, "OUTPUT -j DP-FILTER".to_owned())]
        );
        assert_eq!(
            hook_lines("DP", &e, Table::Filter),
            [
                "-D OUTPUT -j DP-FILTER",
                "-D FORWARD -j DP-FILTER",
                "-I FORWARD 1 -j DP-FILTER",
                "-D OUTPUT -j DP-FILTER-OUT",
                "-D OUTPUT -j DP-FILTER-OUT",
                "-I OUTPUT 1 -j DP-FILTER-OUT",
            ]
        );
        // A reset deletes every one of them.
        let reset = render_reset("DP", &e);
        for rule in [
            "-D INPUT -j DP-FILTER\n",
            "-D FORWARD -j DP-FILTER\n",
            "-D OUTPUT -j DP-FILTER\n",
        ] {
            assert!(reset.contains(rule), "{reset}");
        }
        assert_eq!(reset.matches("-D OUTPUT -j DP-FILTER-OUT\n").count(), 2);
        // Another instance's chains are not ours.
        let other = parse_existing("*filter\n-A FORWARD -j DPX-FILTER\nCOMMIT\n", "DP");
        assert!(other.stale_jumps.is_empty() && other.misplaced.is_empty());
    }

    #[test]
    fn policy_chains_are_filed_under_their_table() {
        assert_eq!(table_of("DP", "DP-RAW-PRE"), Table::Raw);
        assert_eq!(table_of("DP", "DP-MGL-ALLOW"), Table::Mangle);
        assert_eq!(table_of("DP", "DP-HOST"), Table::Filter);
        assert_eq!(table_of("DP", "DP-POLICY"), Table::Filter);
        assert_eq!(table_of("DP", "DPX-RAW-PRE"), Table::Filter);
    }

    #[test]
    fn name_hashes_are_sha256_prefixes() {
        // SHA-256("") = e3b0c442 98fc1c14 …: its first 80 bits in base32.
        assert_eq!(hash_name(""), "4OYMIQUY7QOBJGX3");
        assert_eq!(hash_name("a").len(), HASH_CHARS);
    }

    #[test]
    fn filtered_parse_sees_every_chain_and_keeps_only_the_chosen() {
        let save = "*nat\n:PREROUTING ACCEPT [0:0]\n:DP-SERVICES - [0:0]\n:DP-SVC-A - [0:0]\n:KUBE-X - [0:0]\n-A PREROUTING -j DP-SERVICES\nCOMMIT\n*filter\n:DP-FILTER - [0:0]\nCOMMIT\n*security\n:DP-M - [0:0]\nCOMMIT\n";
        let mut seen = Vec::new();
        let mut parser = ExistingParser::filtered("DP", |table, name| {
            seen.push(format!("{table}/{name}"));
            name == "DP-SVC-A"
        });
        for line in save.lines() {
            parser.line(line);
        }
        let e = parser.finish();
        assert_eq!(
            seen,
            ["nat/DP-SERVICES", "nat/DP-SVC-A", "filter/DP-FILTER"]
        );
        assert_eq!(e.nat_chains, BTreeSet::from(["DP-SVC-A".to_owned()]));
        assert!(e.filter_chains.is_empty());
        assert!(e.hooks.contains(&(Table::Nat, "PREROUTING".to_owned())));
    }
}
