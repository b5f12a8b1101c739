//! Host endpoint policy in the nftables flavour: Calico's HostEndpoint and host
//! GlobalNetworkPolicy ([`dataplane_core::HostPolicy`]) on the node's uplink, in the order
//! core's reference model states (`dataplane_core::host_policy`): failsafe ports, untracked
//! (`doNotTrack`), pre-DNAT, DNAT and NetworkPolicy, normal. Pure functions.
//!
//! Followed: Calico's "Summary of host endpoint policies", "Untracked policy", "Pre-DNAT
//! policy", "Apply on forwarded traffic" and "Failsafe rules" pages, and felix's rule
//! renderer in projectcalico/calico `felix/rules/static.go`: `StaticRawTableChains` (the
//! failsafe chains `failsafeInChain("raw")`/`failsafeOutChain("raw")` and the host endpoint
//! dispatch of `StaticRawPreroutingChain`/`StaticRawOutputChain`: untracked policy, before
//! conntrack), `StaticMangleTableChains` (pre-DNAT policy in mangle PREROUTING, "Host
//! endpoint policy accepted packet" by a mark bit) and `StaticFilterInputChains` /
//! output / forward (normal policy, `failsafeInChain("filter")`). Our own layout: one `inet`
//! table, base chains at the priorities of those tables, a conntrack mark in place of the
//! packet mark (which our service chains own).
//!
//! Layout (base chains of our `inet` table, present while this node has a host endpoint on
//! its uplink and a host policy selects it):
//!
//! ```text
//! host-raw-pre   filter prerouting  priority raw (-300)   iifname <uplink>: failsafe → return;
//!                                                          untracked ingress rules: notrack accept | drop
//! host-raw-out   filter output      priority raw (-300)   oifname <uplink>: failsafe → return;
//!                                                          untracked egress rules
//! host-pre-dnat  filter prerouting  priority dstnat - 10  iifname <uplink>, ct state new: failsafe → return;
//!                                                          pre-DNAT rules: ct mark |= 0x10000 | drop
//! host-input     filter input       priority filter + 10  iifname <uplink>: normal ingress (own traffic)
//! host-output    filter output      priority filter + 10  oifname <uplink>, not DNATed: normal egress (own traffic)
//! host-post-dnat filter postrouting priority mangle       oifname <uplink>, DNATed, local source: the same
//! host-forward   filter forward     priority filter + 10  iifname <uplink> jump host-fwd-in;
//!                                                          oifname <uplink> jump host-fwd-out (applyOnForward)
//! ```
//!
//! Why:
//! - Untracked rules sit in `raw` prerouting/output (priority -300, before conntrack at
//!   -200), not in a `netdev`/`ingress` hook: an untracked *allow* needs `notrack`, which only
//!   a hook before conntrack can set, and one chain keeps allow and deny rules in their
//!   order (a deny in an earlier hook would overtake an allow that comes first). The
//!   ingress hook would drop a little earlier (before the stack's IP layer) but needs the
//!   device present when the chain is added, which the backend does not control.
//! - Pre-DNAT rules run before the `nat` prerouting hook (priority `dstnat`, -100), so they
//!   see the original destination (a NodePort); their allow is remembered in a conntrack
//!   mark bit, which the normal chains accept (the packet mark is the services' backend
//!   slot, rewritten by the service chains).
//! - Normal rules run in the filter hooks, after DNAT: the translated destination. Only a
//!   connection's first packet is checked (`ct state established,related accept` first),
//!   as everywhere in this project; untracked packets (`ct state untracked`) were decided
//!   by the untracked rules and pass. A policy that applies to a direction and has no
//!   matching rule drops (default deny); an endpoint without applicable policies is open.
//! - The node's own translated (DNAT) connections (to a service, to its own NodePort whose
//!   backend is on another node) are judged in postrouting, not output: in the output hook
//!   their `oifname` is still the pre-DNAT route's (`lo` for the node's own address), so an
//!   egress policy would miss them. Calico does the same (felix `filterOutputChain` skips
//!   `ctstate DNAT`, `StaticManglePostroutingChain` judges it).
//! - Many addresses in one rule go in a named interval set (one element per disjoint
//!   prefix, added 2000 to a line), so a 100k-prefix deny list is one set lookup per packet
//!   and loads in one transaction.

use std::collections::{BTreeMap, BTreeSet};

use dataplane_core::{
    host_policies_for, uplink_host_endpoint, DesiredState, FailsafePort, HostAction, HostPolicy,
    HostPort, HostRule, HostRuleMatch, HostStage, IpFamily, PolicyType,
};
use ipnetwork::IpNetwork;

use super::family::{addr_type, ip_kw};
use super::rule_text::disjoint;
use crate::plan::{proto_name, FamilySuffix as _};

/// The conntrack mark bit of a connection a pre-DNAT rule allowed.
pub const PRE_DNAT_ALLOWED: u32 = 0x0001_0000;

/// More addresses than this in one rule go in a named set.
const INLINE_NETS: usize = 64;

/// Elements per `add element` line.
const ELEMENTS_PER_LINE: usize = 2000;

/// The host policy objects of a state.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct NftHost {
    /// Base chains: name → (hook spec, rules).
    pub base: BTreeMap<String, (String, Vec<String>)>,
    /// Regular chains: name → rules.
    pub chains: BTreeMap<String, Vec<String>>,
    /// Named interval sets: name → (address type, elements).
    pub sets: BTreeMap<String, (&'static str, Vec<String>)>,
}

impl NftHost {
    /// Whether there is nothing.
    pub fn is_empty(&self) -> bool {
        self.base.is_empty() && self.chains.is_empty() && self.sets.is_empty()
    }
}

/// Compiles the host policy objects of `state` (valid).
pub fn compile(state: &DesiredState) -> NftHost {
    let mut out = NftHost::default();
    let Some(endpoint) = uplink_host_endpoint(state) else {
        return out;
    };
    let policies = host_policies_for(state, endpoint);
    if policies.is_empty() {
        return out;
    }
    let uplink = &state.node.interfaces.uplink;
    let mut b = Builder {
        out: &mut out,
        next_set: 0,
    };
    let node_v4: Vec<String> = addrs(state, IpFamily::V4);
    let node_v6: Vec<String> = addrs(state, IpFamily::V6);
    // Failsafe: inbound to one of the node's addresses, outbound from the node.
    let inbound = failsafe_match(&state.failsafe_ports.inbound);
    let outbound = failsafe_match(&state.failsafe_ports.outbound);
    let mut failsafe_in = Vec::new();
    if let Some(ports) = &inbound {
        for (f, nodes) in [(IpFamily::V4, &node_v4), (IpFamily::V6, &node_v6)] {
            if !nodes.is_empty() {
                failsafe_in.push(format!(
                    "{} daddr {{ {} }} {ports}",
                    ip_kw(f),
                    nodes.join(", ")
                ));
            }
        }
    }
    let failsafe_out: Vec<String> = outbound.into_iter().collect();
    let stages = Stages(policies);
    let ingress = PolicyType::Ingress;
    let egress = PolicyType::Egress;
    // Untracked: allow = notrack, first match in policy order, no default deny.
    // (Outward: the node's own packets, whose crossing is known before DNAT.)
    for (direction, dev, failsafe, chain, hook) in [
        (
            ingress,
            "iifname",
            &failsafe_in,
            "host-raw-pre",
            "prerouting",
        ),
        (egress, "oifname", &failsafe_out, "host-raw-out", "output"),
    ] {
        let untracked = stages.applicable(HostStage::Untracked, direction, false);
        if untracked.is_empty() {
            continue;
        }
        let mut rules = vec![format!("{dev} != \"{uplink}\" return")];
        rules.extend(failsafe.iter().map(|m| format!("{m} return")));
        b.rules(&untracked, direction, "notrack accept", &mut rules);
        b.base(chain, &format!("filter hook {hook} priority raw"), rules);
    }
    // Pre-DNAT: ingress only, on the original destination; allow marks the connection.
    let pre = stages.applicable(HostStage::PreDnat, ingress, false);
    if !pre.is_empty() {
        let mut rules = vec![
            format!("iifname != \"{uplink}\" return"),
            "ct state != new return".to_owned(),
        ];
        rules.extend(failsafe_in.iter().map(|m| format!("{m} return")));
        let allow = format!("ct mark set ct mark | {PRE_DNAT_ALLOWED:#010x} return");
        b.rules(&pre, ingress, &allow, &mut rules);
        b.base(
            "host-pre-dnat",
            "filter hook prerouting priority dstnat - 10",
            rules,
        );
    }
    normal_chains(&mut b, &stages, uplink, &failsafe_in, &failsafe_out);
    out
}

/// The policies selecting the endpoint, in order.
struct Stages<'a>(Vec<&'a HostPolicy>);

impl<'a> Stages<'a> {
    /// Those of stage `s` that apply to `d` (to forwarded traffic: `applyOnForward` only).
    fn applicable(&self, s: HostStage, d: PolicyType, forwarded: bool) -> Vec<&'a HostPolicy> {
        self.0
            .iter()
            .copied()
            .filter(|p| p.stage() == s && p.applies_to(d) && (!forwarded || p.apply_on_forward))
            .collect()
    }
}

/// The normal policies' chains: after DNAT, stateful, default deny where a policy applies.
fn normal_chains(
    b: &mut Builder<'_>,
    stages: &Stages<'_>,
    uplink: &str,
    failsafe_in: &[String],
    failsafe_out: &[String],
) {
    let (ingress, egress) = (PolicyType::Ingress, PolicyType::Egress);
    let head = |extra: &[String]| {
        let mut rules = vec![
            "ct state established,related accept".to_owned(),
            "ct state untracked accept".to_owned(),
            format!("ct mark & {PRE_DNAT_ALLOWED:#010x} != 0 accept"),
            // Neighbour discovery on the link (hop limit 255: never forwarded, RFC 4861):
            // without it a closed endpoint loses IPv6 altogether, failsafe ports included.
            "icmpv6 type { nd-router-solicit, nd-router-advert, nd-neighbor-solicit, nd-neighbor-advert, nd-redirect } ip6 hoplimit 255 accept".to_owned(),
        ];
        rules.extend(extra.iter().map(|m| format!("{m} accept")));
        rules
    };
    // The node's own traffic: from the uplink to the node, from the node to the uplink.
    for (direction, dev, failsafe, chain, hook) in [
        (ingress, "iifname", failsafe_in, "host-input", "input"),
        (egress, "oifname", failsafe_out, "host-output", "output"),
    ] {
        let own = stages.applicable(HostStage::Normal, direction, false);
        if own.is_empty() {
            continue;
        }
        let mut rules = vec![format!("{dev} != \"{uplink}\" accept")];
        if direction == egress {
            // The node's own DNATed packets are judged in host-post-dnat: here their
            // output interface is still the pre-DNAT route's (felix filterOutputChain).
            rules.push("ct status dnat accept".to_owned());
        }
        rules.extend(head(failsafe));
        b.rules(&own, direction, "accept", &mut rules);
        rules.push("drop".to_owned());
        b.base(
            chain,
            &format!("filter hook {hook} priority filter + 10"),
            rules,
        );
        if direction == egress {
            // The node's own connections that nat output translated (a service it dialled,
            // its own NodePort to another node's pod): judged once the kernel has routed the
            // translated packet (felix StaticManglePostroutingChain: `ctstate DNAT`, after
            // the output interface is recomputed). Forwarded packets still have their
            // sender's source here (masquerade comes later, at srcnat).
            let mut rules = vec![
                format!("oifname != \"{uplink}\" accept"),
                "ct status & dnat == 0 accept".to_owned(),
                "fib saddr type != local accept".to_owned(),
            ];
            rules.extend(head(failsafe));
            b.rules(&own, direction, "accept", &mut rules);
            rules.push("drop".to_owned());
            b.base(
                "host-post-dnat",
                "filter hook postrouting priority mangle",
                rules,
            );
        }
    }
    // Forwarded traffic crossing the endpoint, each way (both for uplink to uplink).
    let legs: Vec<_> = [
        (ingress, "iifname", "host-fwd-in"),
        (egress, "oifname", "host-fwd-out"),
    ]
    .into_iter()
    .map(|(d, dev, chain)| (d, dev, chain, stages.applicable(HostStage::Normal, d, true)))
    .filter(|(.., policies)| !policies.is_empty())
    .collect();
    if !legs.is_empty() {
        let mut rules = head(&[]);
        for (direction, dev, chain, policies) in legs {
            let mut r = Vec::new();
            b.rules(&policies, direction, "return", &mut r);
            r.push("drop".to_owned());
            b.out.chains.insert(chain.to_owned(), r);
            rules.push(format!("{dev} \"{uplink}\" jump {chain}"));
        }
        b.base(
            "host-forward",
            "filter hook forward priority filter + 10",
            rules,
        );
    }
}

fn addrs(state: &DesiredState, f: IpFamily) -> Vec<String> {
    state
        .node
        .addresses
        .iter()
        .filter(|a| IpFamily::of(a) == f)
        .map(ToString::to_string)
        .collect()
}

/// `meta l4proto . th dport { tcp . 22, … }` of failsafe ports (none: `None`).
fn failsafe_match(ports: &[FailsafePort]) -> Option<String> {
    if ports.is_empty() {
        return None;
    }
    let elements: BTreeSet<String> = ports
        .iter()
        .map(|p| format!("{} . {}", proto_name(p.protocol), p.port))
        .collect();
    Some(format!(
        "meta l4proto . th dport {{ {} }}",
        elements.into_iter().collect::<Vec<_>>().join(", ")
    ))
}

struct Builder<'a> {
    out: &'a mut NftHost,
    next_set: usize,
}

impl Builder<'_> {
    fn base(&mut self, name: &str, hook: &str, rules: Vec<String>) {
        self.out.base.insert(
            name.to_owned(),
            (format!("type {hook}; policy accept;"), rules),
        );
    }

    /// The rules of `policies` in `direction`, in order, each ending in `allow` or `drop`.
    fn rules(
        &mut self,
        policies: &[&HostPolicy],
        direction: PolicyType,
        allow: &str,
        out: &mut Vec<String>,
    ) {
        for p in policies {
            for r in p.rules(direction) {
                let verdict = match r.action {
                    HostAction::Allow => allow,
                    HostAction::Deny => "drop",
                };
                self.rule(r, verdict, out);
            }
        }
    }

    /// One host rule (one nft rule per address family its nets allow).
    fn rule(&mut self, r: &HostRule, verdict: &str, out: &mut Vec<String>) {
        let proto = r
            .protocol
            .map(|p| format!("meta l4proto {} ", proto_name(p)))
            .unwrap_or_default();
        let ports = |m: &HostRuleMatch, field: &str| -> String {
            if m.ports.is_empty() {
                return String::new();
            }
            let items: Vec<String> = m
                .ports
                .iter()
                .map(|p| match p {
                    HostPort::Number(n) => n.to_string(),
                    HostPort::Range(r) => format!("{}-{}", r.start, r.end),
                })
                .collect();
            format!("th {field} {{ {} }} ", items.join(", "))
        };
        let l4 = format!(
            "{proto}{}{}",
            ports(&r.source, "sport"),
            ports(&r.destination, "dport")
        );
        if r.source.nets.is_empty() && r.destination.nets.is_empty() {
            out.push(format!("{l4}{verdict}"));
            return;
        }
        for f in [IpFamily::V4, IpFamily::V6] {
            let src = self.nets(&r.source.nets, f, "saddr");
            let dst = self.nets(&r.destination.nets, f, "daddr");
            // A side with nets but none of this family matches nothing of it.
            let (Some(src), Some(dst)) = (src, dst) else {
                continue;
            };
            out.push(format!("{src}{dst}{l4}{verdict}"));
        }
    }

    /// The match of `nets` of family `f` on `field` (empty: any); `None` when the side
    /// has nets but none of `f`.
    fn nets(&mut self, nets: &[IpNetwork], f: IpFamily, field: &str) -> Option<String> {
        if nets.is_empty() {
            return Some(String::new());
        }
        let elements = disjoint(nets, f);
        if elements.is_empty() {
            return None;
        }
        let ip = ip_kw(f);
        if elements.len() <= INLINE_NETS {
            return Some(format!("{ip} {field} {{ {} }} ", elements.join(", ")));
        }
        let name = format!("host-nets-{}-{}", self.next_set, f.suffix());
        self.next_set += 1;
        self.out.sets.insert(name.clone(), (addr_type(f), elements));
        Some(format!("{ip} {field} @{name} "))
    }
}

/// Writes the `add` lines of `host`.
pub fn write_add<W: std::fmt::Write + ?Sized>(
    host: &NftHost,
    kept: &BTreeSet<String>,
    table: &str,
    out: &mut W,
) -> std::fmt::Result {
    for (name, (at, elements)) in &host.sets {
        if !kept.contains(name) {
            writeln!(
                out,
                "add set inet {table} {name} {{ type {at}; flags interval; }}"
            )?;
        }
        for chunk in elements.chunks(ELEMENTS_PER_LINE) {
            writeln!(
                out,
                "add element inet {table} {name} {{ {} }}",
                chunk.join(", ")
            )?;
        }
    }
    for name in host.chains.keys() {
        if !kept.contains(name) {
            writeln!(out, "add chain inet {table} {name}")?;
        }
    }
    for (name, (hook, _)) in &host.base {
        if !kept.contains(name) {
            writeln!(out, "add chain inet {table} {name} {{ {hook} }}")?;
        }
    }
    for (name, rules) in host
        .chains
        .iter()
        .chain(host.base.iter().map(|(n, (_, r))| (n, r)))
    {
        for r in rules {
            writeln!(out, "add rule inet {table} {name} {r}")?;
        }
    }
    Ok(())
}

/// Writes the removal of `old` before `new` is added: base chains first (they jump to the
/// others and use the sets), everything flushed; what `new` has again (same name, and for a
/// base chain the same hook) is kept, emptied, the rest deleted. Returns the kept names.
pub fn write_remove<W: std::fmt::Write + ?Sized>(
    old: &NftHost,
    new: &NftHost,
    table: &str,
    out: &mut W,
) -> Result<BTreeSet<String>, std::fmt::Error> {
    let mut kept = BTreeSet::new();
    for (name, (hook, _)) in &old.base {
        writeln!(out, "flush chain inet {table} {name}")?;
        if new.base.get(name).is_some_and(|(h, _)| h == hook) {
            kept.insert(name.clone());
        }
    }
    for name in old.chains.keys() {
        writeln!(out, "flush chain inet {table} {name}")?;
        if new.chains.contains_key(name) {
            kept.insert(name.clone());
        }
    }
    for name in old.base.keys().chain(old.chains.keys()) {
        if !kept.contains(name) {
            writeln!(out, "delete chain inet {table} {name}")?;
        }
    }
    for (name, (at, _)) in &old.sets {
        if new.sets.get(name).is_some_and(|(a, _)| a == at) {
            writeln!(out, "flush set inet {table} {name}")?;
            kept.insert(name.clone());
        } else {
            writeln!(out, "delete set inet {table} {name}")?;
        }
    }
    Ok(kept)
}
