//! Host endpoint policy in the iptables flavour (Calico's semantics, as the reference model
//! [`dataplane_core::host_policy`] states them): this node's host endpoint on its uplink and
//! the [`dataplane_core::HostPolicy`]s selecting it, as chains in the `raw`, `mangle` and
//! `filter` tables over `hash:net` ipsets (the raw and mangle ones named `DP-RAW-*` and
//! `DP-MGL-*`: [`super::render::table_of`] files them by name). Pure functions.
//!
//! ```text
//! raw PREROUTING ─▶ DP-RAW-PRE      ! -i <uplink> ─▶ RETURN
//!                                   failsafe in: -d <node addr> -p P --dport N ─▶ RETURN
//!                                   untracked ingress rules: Deny ─▶ DROP,
//!                                                            Allow ─▶ DP-RAW-NOTRACK
//! raw OUTPUT ─────▶ DP-RAW-OUT      ! -o <uplink> ─▶ RETURN; failsafe out ─▶ RETURN;
//!                                   untracked egress rules (as above)
//!   DP-RAW-NOTRACK: -j CT --notrack, -j ACCEPT   (no conntrack: no NAT, no later host policy)
//! mangle PREROUTING ─▶ DP-MGL-PRE   ! -i <uplink> ─▶ RETURN; established, untracked ─▶ RETURN
//!   (before nat PREROUTING's DNAT)  failsafe in ─goto─▶ DP-MGL-ALLOW
//!                                   pre-DNAT ingress rules: Allow ─goto─▶ DP-MGL-ALLOW,
//!                                                           Deny ─▶ DROP
//! mangle OUTPUT ─▶ DP-MGL-OUT       ! -o <uplink> ─▶ RETURN; failsafe out ─goto─▶ DP-MGL-ALLOW
//!   DP-MGL-ALLOW: mark 0x20000 (decided: no normal host policy)
//! mangle POSTROUTING ─▶ DP-MGL-POST ! -o <uplink>, not DNATed, not from a local address,
//!                                   established, untracked, mark ─▶ RETURN; ─▶ DP-MGL-EGR
//!   (the node's own DNATed packets: its service connections, its own NodePort to another
//!   node's pod; DP-MGL-EGR is a copy of DP-HOST-EGR)
//! filter INPUT/FORWARD ─▶ DP-FILTER ─▶ (DP-POLICY) ─▶ DP-HOST
//!   DP-HOST: established, untracked, mark 0x20000 ─▶ RETURN
//!            -i <uplink> -d <node addr> ─▶ DP-HOST-IN    (the node's own ingress)
//!            -i <uplink>               ─▶ DP-HOST-FWDI  (forwarded in: applyOnForward only)
//!            -o <uplink>               ─▶ DP-HOST-FWDO  (forwarded out: applyOnForward only)
//! filter OUTPUT ─▶ DP-FILTER-OUT ─▶ DP-HOST-OUT
//!   DP-HOST-OUT: ! -o <uplink>, DNATed (DP-MGL-POST's), established, untracked, mark
//!                ─▶ RETURN; ─▶ DP-HOST-EGR
//!   DP-HOST-IN/FWDI/FWDO/EGR: the normal rules in policy order (Allow ─▶ RETURN,
//!            Deny ─▶ DROP), last DROP when a policy applies to the leg (default deny)
//! ```
//!
//! A rule's CIDRs (more than one of the family on a side) are a `hash:net` ipset
//! `DP-n4-<hash of the CIDRs>` (`DP-n6-` for IPv6): named by content, so a change of the
//! list is a new set, created and filled before the rules that name it, and the old one
//! destroyed after them (see [`super::ipset`]). The sets count against the kernel's ipset
//! limit with NetworkPolicy's ([`crate::NetfilterConfig::max_ipsets`]): over it, the apply is
//! refused before anything is written.
//!
//! Followed: Calico felix's iptables rule renderer, `felix/rules/static.go`
//! (`StaticRawPreroutingChain` and `StaticRawOutputChain`: the failsafe chains and the
//! untracked host endpoint dispatch first in `raw`; `StaticManglePreroutingChain`:
//! established and untracked traffic returns, then the pre-DNAT host endpoint dispatch, a
//! packet its policy allowed leaving with `MarkAccept`; `acceptAlreadyAccepted`: the filter
//! chains let a packet with that mark through), `felix/rules/endpoints.go`
//! (`HostEndpointToRawChains`, `HostEndpointToMangleIngressChains`,
//! `HostEndpointToFilterChains`: per direction the policies in order, then the
//! end-of-policies drop for normal policy only; applyOnForward policies in the forward
//! chains) and `felix/rules/policy.go` (an untracked `Allow` is `NOTRACK` and accept, so its
//! replies need rules of their own). Departures, each for a reason:
//!
//! - One host endpoint, the uplink's (the reference model's: a node's host endpoint named
//!   for its uplink, else an all-interfaces one, governs traffic in and out of the uplink);
//!   Calico dispatches on every interface it has an endpoint for.
//! - An allowed packet `RETURN`s, as in the rest of this backend (Calico `ACCEPT`s): the
//!   host's own rules after ours keep their say.
//! - The mark bit is `0x20000`, next to the service chains' `0x4000`/`0x8000`/`0x10000`
//!   (Calico's `MarkAccept` is configurable and defaults to `0x10000`, which this backend
//!   uses for rejects).

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::net::IpAddr;

use dataplane_core::{
    host_policies_for, uplink_host_endpoint, DesiredState, HostAction, HostPolicy, HostPort,
    HostRule, HostRuleMatch, HostStage, IpFamily, PolicyType,
};
use ipnetwork::IpNetwork;

use super::naming::{hash_name, host, Chains};
use crate::plan::proto_name;

/// Mark bit: a failsafe port or a pre-DNAT rule allowed the packet (no normal host policy
/// looks at it).
pub const MARK_HOST_ALLOWED: u32 = 0x20000;

/// The raw PREROUTING chain.
pub fn raw_pre(prefix: &str) -> String {
    format!("{prefix}-RAW-PRE")
}

/// The raw OUTPUT chain.
pub fn raw_out(prefix: &str) -> String {
    format!("{prefix}-RAW-OUT")
}

/// The raw chain of an untracked `Allow`.
fn raw_notrack(prefix: &str) -> String {
    format!("{prefix}-RAW-NOTRACK")
}

/// The mangle PREROUTING chain.
pub fn mangle_pre(prefix: &str) -> String {
    format!("{prefix}-MGL-PRE")
}

/// The mangle OUTPUT chain.
pub fn mangle_out(prefix: &str) -> String {
    format!("{prefix}-MGL-OUT")
}

/// The mangle POSTROUTING chain: normal egress policy for the node's own translated (DNAT) packets.
pub fn mangle_post(prefix: &str) -> String {
    format!("{prefix}-MGL-POST")
}

/// The mangle chain that marks an allowed packet.
fn mangle_allow(prefix: &str) -> String {
    format!("{prefix}-MGL-ALLOW")
}

/// The filter chain `DP-FILTER` (INPUT, FORWARD) ends by jumping to.
pub fn filter_in(prefix: &str) -> String {
    format!("{prefix}-HOST")
}

/// The filter chain `DP-FILTER-OUT` (OUTPUT) ends by jumping to.
pub fn filter_out(prefix: &str) -> String {
    format!("{prefix}-HOST-OUT")
}

/// The `hash:net` ipsets of host policy: set name → its family and CIDRs.
pub type NetSets = BTreeMap<String, (IpFamily, Vec<IpNetwork>)>;

/// The ipset of the CIDRs `nets` (sorted, of `family`): `DP-n4-<16 characters of hash>`.
pub fn net_set_name(prefix: &str, family: IpFamily, nets: &[IpNetwork]) -> String {
    let mut text = String::new();
    for n in nets {
        let _ = write!(text, "{n},");
    }
    let tag = match family {
        IpFamily::V4 => "n4",
        IpFamily::V6 => "n6",
    };
    // `super::policy::set_prefix(prefix)`, spelled out: this module sits below `policy`.
    format!("{prefix}-{tag}-{}", hash_name(&text))
}

/// The host policy of `state` in `family`: its chains (raw and mangle ones named as
/// [`table_of`] says) and the ipsets they name. Empty when the node has no host endpoint on
/// its uplink.
pub fn plan(state: &DesiredState, prefix: &str, family: IpFamily) -> (Chains, NetSets) {
    let mut out = HostRender {
        prefix,
        family,
        chains: Chains::new(),
        sets: NetSets::new(),
    };
    let Some(endpoint) = uplink_host_endpoint(state) else {
        return (out.chains, out.sets);
    };
    let failsafe = |ports: &[dataplane_core::FailsafePort]| -> Vec<String> {
        ports
            .iter()
            .map(|f| {
                let p = proto_name(f.protocol);
                format!("-p {p} -m {p} --dport {}", f.port)
            })
            .collect()
    };
    let host = Host {
        prefix,
        family,
        policies: host_policies_for(state, endpoint),
        uplink: state.node.interfaces.uplink.as_str(),
        addrs: state
            .node
            .addresses
            .iter()
            .filter(|a| IpFamily::of(a) == family)
            .collect(),
        fs_in: failsafe(&state.failsafe_ports.inbound),
        fs_out: failsafe(&state.failsafe_ports.outbound),
    };
    host.raw(&mut out);
    host.mangle(&mut out);
    host.filter(&mut out);
    (out.chains, out.sets)
}

const ESTABLISHED: &str = "-m conntrack --ctstate RELATED,ESTABLISHED -j RETURN";
const UNTRACKED: &str = "-m conntrack --ctstate UNTRACKED -j RETURN";

/// The host endpoint of one family's render: its policies in order and what every stage
/// matches first.
struct Host<'a> {
    prefix: &'a str,
    family: IpFamily,
    policies: Vec<&'a HostPolicy>,
    uplink: &'a str,
    /// The node's addresses of the family.
    addrs: Vec<&'a IpAddr>,
    /// The failsafe ports' matches, inbound and outbound.
    fs_in: Vec<String>,
    fs_out: Vec<String>,
}

impl Host<'_> {
    /// The policies of `stage` that apply to `direction`, for forwarded traffic or not (the
    /// reference model's `HostView::applicable`).
    fn of_stage(
        &self,
        stage: HostStage,
        direction: PolicyType,
        forwarded: bool,
    ) -> Vec<&HostPolicy> {
        self.policies
            .iter()
            .copied()
            .filter(|p| {
                p.stage() == stage && p.applies_to(direction) && (!forwarded || p.apply_on_forward)
            })
            .collect()
    }

    /// The failsafe inbound matches to the node's addresses, each ending in `target`.
    fn failsafe_in(&self, target: &str) -> Vec<String> {
        self.addrs
            .iter()
            .flat_map(|a| {
                self.fs_in.iter().map(move |m| {
                    format!(
                        "-d {} {m} -m comment --comment \"failsafe in\" {target}",
                        host(a)
                    )
                })
            })
            .collect()
    }

    /// raw: failsafe, then the untracked rules, on the packet as it arrives (or leaves the
    /// node).
    fn raw(&self, out: &mut HostRender<'_>) {
        let prefix = self.prefix;
        let notrack = raw_notrack(prefix);
        let untracked = |a: HostAction| match a {
            HostAction::Allow => format!("-j {notrack}"),
            HostAction::Deny => "-j DROP".to_owned(),
        };
        let (ingress, egress) = (PolicyType::Ingress, PolicyType::Egress);
        let mut pre = vec![format!("! -i {} -j RETURN", self.uplink)];
        pre.extend(self.failsafe_in("-j RETURN"));
        let policies = self.of_stage(HostStage::Untracked, ingress, false);
        out.rules(&mut pre, &policies, ingress, untracked);
        let mut post = vec![format!("! -o {} -j RETURN", self.uplink)];
        post.extend(
            self.fs_out
                .iter()
                .map(|m| format!("{m} -m comment --comment \"failsafe out\" -j RETURN")),
        );
        let policies = self.of_stage(HostStage::Untracked, egress, false);
        out.rules(&mut post, &policies, egress, untracked);
        out.chains.insert(raw_pre(prefix), pre);
        out.chains.insert(raw_out(prefix), post);
        out.chains.insert(
            notrack,
            vec![
                "-m comment --comment \"untracked host policy\" -j CT --notrack".to_owned(),
                "-j ACCEPT".to_owned(),
            ],
        );
    }

    /// mangle: the failsafe ports and the pre-DNAT rules mark what they allow.
    fn mangle(&self, out: &mut HostRender<'_>) {
        let prefix = self.prefix;
        let allow = mangle_allow(prefix);
        let ingress = PolicyType::Ingress;
        let mut pre = vec![
            format!("! -i {} -j RETURN", self.uplink),
            ESTABLISHED.to_owned(),
            UNTRACKED.to_owned(),
        ];
        pre.extend(self.failsafe_in(&format!("-g {allow}")));
        let policies = self.of_stage(HostStage::PreDnat, ingress, false);
        out.rules(&mut pre, &policies, ingress, |a| match a {
            HostAction::Allow => format!("-g {allow}"),
            HostAction::Deny => "-j DROP".to_owned(),
        });
        let mut post = vec![format!("! -o {} -j RETURN", self.uplink)];
        post.extend(
            self.fs_out
                .iter()
                .map(|m| format!("{m} -m comment --comment \"failsafe out\" -g {allow}")),
        );
        out.chains.insert(mangle_pre(prefix), pre);
        out.chains.insert(mangle_out(prefix), post);
        out.chains.insert(
            allow,
            vec![format!(
                "-j MARK --set-xmark {MARK_HOST_ALLOWED:#x}/{MARK_HOST_ALLOWED:#x}"
            )],
        );
    }

    /// filter: the normal policies per leg; a leg no policy applies to is open.
    fn filter(&self, out: &mut HostRender<'_>) {
        let (prefix, uplink) = (self.prefix, self.uplink);
        let marked =
            format!("-m mark --mark {MARK_HOST_ALLOWED:#x}/{MARK_HOST_ALLOWED:#x} -j RETURN");
        let mut inward = vec![ESTABLISHED.to_owned(), UNTRACKED.to_owned(), marked.clone()];
        let mut outward = vec![
            format!("! -o {uplink} -j RETURN"),
            // The node's own DNATed packets: judged in mangle POSTROUTING (DP-MGL-POST), where
            // `-o` is the translated packet's interface (here it is still the pre-DNAT
            // route's: `lo` for the node's own NodePort). felix `filterOutputChain`.
            "-m conntrack --ctstate DNAT -j RETURN".to_owned(),
            ESTABLISHED.to_owned(),
            UNTRACKED.to_owned(),
            marked.clone(),
        ];
        // felix `StaticManglePostroutingChain`: the node's own (local source: forwarded
        // packets are masqueraded only later, in nat POSTROUTING) DNATed packets leaving by
        // the uplink meet the normal egress rules, in a mangle copy of DP-HOST-EGR.
        let mut post = vec![
            format!("! -o {uplink} -j RETURN"),
            "-m conntrack ! --ctstate DNAT -j RETURN".to_owned(),
            "-m addrtype ! --src-type LOCAL -j RETURN".to_owned(),
            ESTABLISHED.to_owned(),
            UNTRACKED.to_owned(),
            marked,
        ];
        if self.family == IpFamily::V6 {
            // Neighbour discovery on the uplink is not host policy's to decide (a default
            // deny would cut the node's IPv6 off its link).
            for nd in 133..=136 {
                let rule = format!(
                    "-p ipv6-icmp -m icmp6 --icmpv6-type {nd} -m comment --comment \"neighbour discovery\" -j RETURN"
                );
                inward.insert(0, rule.clone());
                outward.insert(1, rule);
            }
        }
        let (ingress, egress) = (PolicyType::Ingress, PolicyType::Egress);
        // In order: the node's own ingress (`-i <uplink> -d <node>`) before the forwarded
        // one, which matches every other packet in on the uplink.
        for (tag, direction, forwarded) in [
            ("IN", ingress, false),
            ("FWDI", ingress, true),
            ("FWDO", egress, true),
            ("EGR", egress, false),
        ] {
            let applicable = self.of_stage(HostStage::Normal, direction, forwarded);
            if applicable.is_empty() {
                continue;
            }
            let chain = format!("{prefix}-HOST-{tag}");
            let mut rules = Vec::new();
            out.rules(&mut rules, &applicable, direction, |a| match a {
                HostAction::Allow => "-j RETURN".to_owned(),
                HostAction::Deny => "-j DROP".to_owned(),
            });
            rules.push("-m comment --comment \"host policy: default deny\" -j DROP".to_owned());
            if tag == "EGR" {
                let copy = format!("{prefix}-MGL-EGR");
                post.push(format!("-j {copy}"));
                out.chains.insert(copy, rules.clone());
            }
            out.chains.insert(chain.clone(), rules);
            match tag {
                "IN" => inward.extend(
                    self.addrs
                        .iter()
                        .map(|a| format!("-i {uplink} -d {} -j {chain}", host(a))),
                ),
                "FWDI" => inward.push(format!("-i {uplink} -j {chain}")),
                "FWDO" => inward.push(format!("-o {uplink} -j {chain}")),
                _ => outward.push(format!("-j {chain}")),
            }
        }
        out.chains.insert(filter_in(prefix), inward);
        out.chains.insert(filter_out(prefix), outward);
        out.chains.insert(mangle_post(prefix), post);
    }
}

/// What one family's host chains are written into.
struct HostRender<'a> {
    prefix: &'a str,
    family: IpFamily,
    chains: Chains,
    sets: NetSets,
}

impl HostRender<'_> {
    /// Appends to `lines` the rules of `direction` of `policies` in order, each match's
    /// target `target(action)`.
    fn rules(
        &mut self,
        lines: &mut Vec<String>,
        policies: &[&HostPolicy],
        direction: PolicyType,
        target: impl Fn(HostAction) -> String,
    ) {
        for p in policies {
            let comment = format!("-m comment --comment \"host policy {}\"", clean(&p.name));
            for r in p.rules(direction) {
                for m in self.rule_matches(r) {
                    lines.push(format!("{m}{comment} {}", target(r.action)));
                }
            }
        }
    }

    /// The matches of `rule` in this family (none: the rule matches nothing here), each
    /// ending with a space.
    fn rule_matches(&mut self, rule: &HostRule) -> Vec<String> {
        let (Some(src), Some(dst)) = (
            self.side(&rule.source, "-s", "src"),
            self.side(&rule.destination, "-d", "dst"),
        ) else {
            return Vec::new();
        };
        let Some(protocol) = rule.protocol else {
            return vec![format!("{src}{dst}")];
        };
        let p = proto_name(protocol);
        let ports = |ports: &[HostPort], flag: &str| -> Vec<String> {
            if ports.is_empty() {
                return vec![String::new()];
            }
            ports
                .iter()
                .map(|port| match port {
                    HostPort::Number(n) => format!("--{flag} {n} "),
                    HostPort::Range(r) => format!("--{flag} {}:{} ", r.start, r.end),
                })
                .collect()
        };
        let sports = ports(&rule.source.ports, "sport");
        let dports = ports(&rule.destination.ports, "dport");
        let any_ports = !rule.source.ports.is_empty() || !rule.destination.ports.is_empty();
        let mut out = Vec::new();
        for s in &sports {
            for d in &dports {
                let m = if any_ports {
                    format!("-p {p} -m {p} {s}{d}")
                } else {
                    format!("-p {p} ")
                };
                out.push(format!("{src}{dst}{m}"));
            }
        }
        out
    }

    /// The address match of one side (`None`: it has CIDRs, none of this family).
    fn side(&mut self, side: &HostRuleMatch, flag: &str, dir: &str) -> Option<String> {
        if side.nets.is_empty() {
            return Some(String::new());
        }
        let mut nets: Vec<IpNetwork> = side
            .nets
            .iter()
            .filter(|n| IpFamily::of(&n.ip()) == self.family)
            .copied()
            .collect();
        nets.sort();
        nets.dedup();
        match nets.as_slice() {
            [] => None,
            [one] => Some(format!("{flag} {one} ")),
            _ => {
                let name = net_set_name(self.prefix, self.family, &nets);
                let m = format!("-m set --match-set {name} {dir} ");
                self.sets.insert(name, (self.family, nets));
                Some(m)
            }
        }
    }
}

/// A policy name for a comment: names are DNS subdomains, but keep only what the restore
/// tool's quoting cannot trip on.
fn clean(name: &str) -> String {
    name.chars()
        .filter(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '.'))
        .take(200)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn net_set_names_fit_ipset_limits() {
        let nets: Vec<IpNetwork> = vec!["10.0.0.0/8".parse().unwrap()];
        let n = net_set_name("DPXYZ", IpFamily::V4, &nets);
        assert!(n.len() <= 31, "{n}");
        assert!(n.starts_with("DPXYZ-n4-"), "{n}");
    }
}
