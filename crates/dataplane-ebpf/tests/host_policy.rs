//! Host endpoint policy on the uplink with BPF_PROG_TEST_RUN on hand-built packets, against
//! live maps: untracked denies at XDP (and first thing in TC where XDP is not attached),
//! failsafe ports, untracked allows that leave no conntrack entry, pre-DNAT denies of a
//! NodePort by source, normal policies (default deny, the node's own traffic, applyOnForward
//! for forwarded traffic, judged after translation, replies through their connection), and
//! rules with SCTP ports.
//!
//! ```text
//!   client --eth0 (02:..:02, 172.18.0.2, fd00:18::2)--> [dp_xdp_uplink] --XDP_TX--> node-b
//!                                                             | XDP_PASS      172.18.0.3
//!                                                             v               10.244.1.0/24
//!                                                       [dp_from_uplink]
//!   host endpoint "uplink" (role=uplink) on eth0; NodePort 30080 (SNAT) -> 10.244.1.20:8080
//!   blocked (untracked Deny): 198.51.100.0/24, 2001:db8:bad::/48
//!   trusted (untracked Allow): 192.0.2.0/25 to TCP 30080; node's replies from TCP 30080
//! ```
//! Verdicts: XDP `XDP_DROP` 1, `XDP_PASS` 2, `XDP_TX` 3; TC 0 (stack), 2 (shot), 7 (redirect).

mod common;

use common::{backend, check, ct_key, ct_map, eth, ip, require_root, Fixture, TestNode, TCP_SYN};
use dataplane_core::{
    Dataplane, DesiredState, Endpoint, HostAction, HostEndpoint, HostPolicy, HostPort, HostRule,
    LabelSelector, ObjectName, PolicyType, Protocol, Service, ServicePort,
};
use dataplane_ebpf::{EbpfDataplane, Hook, HostRuleDrops, XdpMode};

const XDP_DROP: u32 = 1;
const XDP_PASS: u32 = 2;
const XDP_TX: u32 = 3;
const TC_OK: u32 = 0;
const TC_SHOT: u32 = 2;
const TC_REDIRECT: u32 = 7;

fn dataplane(n: &TestNode) -> EbpfDataplane {
    let mut c = n.config();
    c.xdp = XdpMode::Native;
    EbpfDataplane::new(c).expect("eBPF dataplane with XDP loads")
}

fn uplink() -> LabelSelector {
    LabelSelector::default().with_label("role", "uplink")
}

fn net(s: &str) -> ipnetwork::IpNetwork {
    s.parse().unwrap()
}

/// Untracked: `blocked` denies the given prefixes; `trusted` lets 192.0.2.0/25 reach TCP
/// 30080 untracked, and the node's replies from TCP 30080 out, and denies the node's own
/// packets to 198.51.100.0/24 and to node-b's pods (10.244.1.0/24).
fn untracked(blocked: Vec<ipnetwork::IpNetwork>) -> Vec<HostPolicy> {
    let mut policies = blocklist(blocked);
    policies.push(
        HostPolicy::new("trusted", uplink())
            .untracked()
            .with_order(20)
            .with_ingress(
                HostRule::new(HostAction::Allow)
                    .protocol(Protocol::Tcp)
                    .from_nets([net("192.0.2.0/25")])
                    .to_ports([HostPort::Number(30080)]),
            )
            .with_egress(
                HostRule::new(HostAction::Allow)
                    .protocol(Protocol::Tcp)
                    .from_ports([HostPort::Number(30080)]),
            )
            .with_egress(HostRule::new(HostAction::Deny).to_nets([net("198.51.100.0/24")]))
            .with_egress(HostRule::new(HostAction::Deny).to_nets([net("10.244.1.0/24")])),
    );
    policies
}

/// Untracked: a blocklist alone, one Deny on `blocked` source nets (the XDP program's
/// one-lookup path).
fn blocklist(blocked: Vec<ipnetwork::IpNetwork>) -> Vec<HostPolicy> {
    vec![HostPolicy::new("blocked", uplink())
        .untracked()
        .with_order(10)
        .with_ingress(HostRule::new(HostAction::Deny).from_nets(blocked))]
}

fn scene(policies: Vec<HostPolicy>) -> DesiredState {
    let mut svc = Service::new(ObjectName::new("default", "web"));
    svc.cluster_ips = vec!["10.96.0.31".parse().unwrap()];
    svc.ports = vec![ServicePort {
        name: "http".into(),
        protocol: Protocol::Tcp,
        port: 80,
        target_port: 8080,
        node_port: Some(30080),
    }];
    svc.backends = vec![backend("10.244.1.20", "node-b")];
    let mut st = DesiredState::new(common::node_a());
    st.services = vec![svc];
    st.host_endpoints =
        vec![HostEndpoint::new("uplink", "node-a", "eth0").with_label("role", "uplink")];
    st.host_policies = policies;
    st
}

fn blocked_nets() -> Vec<ipnetwork::IpNetwork> {
    vec![net("198.51.100.0/24"), net("2001:db8:bad::/48")]
}

fn syn(src: &str, dst: &str, sport: u16, dport: u16) -> Vec<u8> {
    eth().ip(src, dst).tcp(sport, dport, TCP_SYN).build()
}

fn same(description: &'static str, hook: Hook, input: Vec<u8>, verdict: u32) -> Fixture {
    Fixture {
        description,
        hook,
        output: input.clone(),
        input,
        verdict,
    }
}

/// Drops of `policy`'s `direction` rule `rule`.
fn drops(dp: &EbpfDataplane, policy: &str, direction: PolicyType, rule: usize) -> u64 {
    dp.host_rule_drops()
        .expect("host rule drops")
        .into_iter()
        .find(|d: &HostRuleDrops| {
            d.rule.policy == policy && d.rule.direction == direction && d.rule.rule == rule
        })
        .map_or(0, |d| d.packets)
}

#[test]
#[allow(clippy::too_many_lines)] // one table of fixtures, then the refusal and the removal
fn untracked_denies_at_xdp_and_tc_with_failsafes_and_untracked_allows() {
    if !require_root("untracked_denies_at_xdp_and_tc_with_failsafes_and_untracked_allows") {
        return;
    }
    let n = TestNode::routed_to_node_b("hpxdp");
    let mut dp = dataplane(&n);
    dp.apply(&scene(untracked(blocked_nets()))).expect("apply");
    let ct = ct_map(&n);

    for f in [
        same(
            "TCP SYN from a blocked prefix to the node: dropped at XDP",
            Hook::Xdp,
            syn("198.51.100.7", "172.18.0.2", 40000, 9000),
            XDP_DROP,
        ),
        same(
            "TCP SYN from a blocked prefix to the NodePort: dropped at XDP, before the fast \
             path",
            Hook::Xdp,
            syn("198.51.100.7", "172.18.0.2", 40001, 30080),
            XDP_DROP,
        ),
        same(
            "TCP SYN from a blocked prefix to a pod (forwarded): dropped at XDP",
            Hook::Xdp,
            syn("198.51.100.7", "10.244.0.10", 40002, 8080),
            XDP_DROP,
        ),
        same(
            "IPv6 TCP SYN from a blocked prefix: dropped at XDP",
            Hook::Xdp,
            syn("2001:db8:bad::7", "fd00:18::2", 40003, 9000),
            XDP_DROP,
        ),
        same(
            "UDP from a blocked prefix: dropped at XDP",
            Hook::Xdp,
            eth()
                .ip("198.51.100.8", "172.18.0.2")
                .udp(5353, 53)
                .payload(b"q")
                .build(),
            XDP_DROP,
        ),
        same(
            "TCP SYN from a blocked prefix to failsafe port 22 of the node: exempt, passed",
            Hook::Xdp,
            syn("198.51.100.7", "172.18.0.2", 40004, 22),
            XDP_PASS,
        ),
        same(
            "... and TC lets it through to the stack",
            Hook::FromUplink,
            syn("198.51.100.7", "172.18.0.2", 40004, 22),
            TC_OK,
        ),
        same(
            "TCP SYN from a blocked prefix to port 22 of a pod (not the node's): dropped",
            Hook::Xdp,
            syn("198.51.100.7", "10.244.0.10", 40005, 22),
            XDP_DROP,
        ),
        same(
            "without XDP, TC ingress drops the blocked source first",
            Hook::FromUplink,
            syn("198.51.100.7", "172.18.0.2", 40006, 30080),
            TC_SHOT,
        ),
        same(
            "an address next to the blocked prefix: untouched",
            Hook::Xdp,
            syn("198.51.101.7", "172.18.0.2", 40007, 9000),
            XDP_PASS,
        ),
        same(
            "untracked Allow (192.0.2.0/25 to the NodePort): XDP leaves it to TC, no fast \
             path",
            Hook::Xdp,
            syn("192.0.2.7", "172.18.0.2", 40008, 30080),
            XDP_PASS,
        ),
        same(
            "... and TC hands it to the stack untranslated",
            Hook::FromUplink,
            syn("192.0.2.7", "172.18.0.2", 40008, 30080),
            TC_OK,
        ),
        same(
            "the node's reply from TCP 30080: allowed untracked on the way out",
            Hook::ToUplink,
            eth()
                .ip("172.18.0.2", "192.0.2.7")
                .tcp(30080, 40008, TCP_SYN | common::TCP_ACK)
                .build(),
            TC_OK,
        ),
        same(
            "the node to a blocked prefix (untracked egress Deny): dropped",
            Hook::ToUplink,
            syn("172.18.0.2", "198.51.100.7", 40009, 443),
            TC_SHOT,
        ),
        same(
            "the node to a blocked prefix on failsafe UDP 53: exempt",
            Hook::ToUplink,
            eth()
                .ip("172.18.0.2", "198.51.100.7")
                .udp(40010, 53)
                .payload(b"q")
                .build(),
            TC_OK,
        ),
    ] {
        check(&mut dp, &f);
    }
    assert!(
        ct.get(&ct_key("192.0.2.7", 40008, "172.18.0.2", 30080), 0)
            .is_err(),
        "an untracked Allow leaves no conntrack entry"
    );
    // XDP: 5 drops by the ingress rule, TC: 1; egress: 1.
    assert_eq!(drops(&dp, "blocked", PolicyType::Ingress, 0), 7);
    assert_eq!(drops(&dp, "trusted", PolicyType::Egress, 1), 1);

    // Outside the untracked allow (192.0.2.200 is not in /25): the XDP fast path translates
    // and tracks it as before.
    let run = dp
        .run_packet(
            Hook::Xdp,
            &syn("192.0.2.200", "172.18.0.2", 40011, 30080),
            1,
        )
        .expect("run");
    assert_eq!(
        run.verdict, XDP_TX,
        "tracked NodePort connection: fast path"
    );
    assert!(ct
        .get(&ct_key("192.0.2.200", 40011, "172.18.0.2", 30080), 0)
        .is_ok());

    // A NodePort connection translated in TC (SNAT to the node's address, to node-b's pod)
    // leaves by the uplink's egress: forwarded, not the node's own, so the untracked egress
    // Deny of 10.244.1.0/24 (the node's own packets only) leaves it alone; the node's own
    // packet there is dropped.
    let run = dp
        .run_packet(
            Hook::FromUplink,
            &syn("192.0.2.201", "172.18.0.2", 40014, 30080),
            1,
        )
        .expect("run");
    assert_eq!(run.verdict, TC_REDIRECT, "NodePort translated in TC");
    let out = dp.run_packet(Hook::ToUplink, &run.output, 1).expect("run");
    assert_eq!(
        out.verdict, TC_OK,
        "the translated packet is forwarded, not the node's"
    );
    check(
        &mut dp,
        &same(
            "the node's own packet to node-b's pod: untracked egress Deny",
            Hook::ToUplink,
            syn("172.18.0.2", "10.244.1.20", 40015, 8080),
            TC_SHOT,
        ),
    );

    // A rule with SCTP ports matches SCTP to those ports (at XDP, untracked), not SCTP to
    // others nor TCP to them.
    let mut sctp = untracked(blocked_nets());
    sctp.push(
        HostPolicy::new("sctp", uplink()).untracked().with_ingress(
            HostRule::new(HostAction::Deny)
                .protocol(Protocol::Sctp)
                .to_ports([HostPort::Number(9)]),
        ),
    );
    dp.apply(&scene(sctp))
        .expect("a rule with SCTP ports is applied");
    let init = |dport: u16| {
        common::sctp::frame(
            "192.0.2.210",
            "172.18.0.2",
            40020,
            dport,
            0,
            &common::sctp::chunk(common::sctp::INIT, 1, &[]),
            false,
        )
    };
    for f in [
        same(
            "SCTP to the denied port: dropped at XDP",
            Hook::Xdp,
            init(9),
            XDP_DROP,
        ),
        same(
            "SCTP to another port: passed",
            Hook::Xdp,
            init(10),
            XDP_PASS,
        ),
        same(
            "TCP to the SCTP rule's port: passed",
            Hook::Xdp,
            syn("192.0.2.210", "172.18.0.2", 40021, 9),
            XDP_PASS,
        ),
        same(
            "blocked stays blocked",
            Hook::Xdp,
            syn("198.51.100.9", "172.18.0.2", 40012, 9000),
            XDP_DROP,
        ),
    ] {
        check(&mut dp, &f);
    }

    // Without the host endpoint nothing is dropped (a flip to an empty generation).
    let mut open = scene(untracked(blocked_nets()));
    open.host_endpoints.clear();
    dp.apply(&open).expect("apply without the endpoint");
    check(
        &mut dp,
        &same(
            "no host endpoint: the blocked prefix passes",
            Hook::Xdp,
            syn("198.51.100.7", "172.18.0.2", 40013, 9000),
            XDP_PASS,
        ),
    );
    dp.reset().expect("reset");
}

/// `HC_F_SRC_ONLY_IN` in the active generation's `dp_host_cfg` entry of `n`.
fn source_only_mode(n: &TestNode) -> bool {
    use dataplane_ebpf::maps::{HostCfg, HC_F_SRC_ONLY_IN};
    let map = aya::maps::MapData::from_pin(n.pin_dir.join("dp_host_cfg")).expect("pinned");
    let cfg: aya::maps::Array<_, HostCfg> =
        aya::maps::Array::try_from(aya::maps::Map::Array(map)).expect("dp_host_cfg");
    let gen = cfg.get(&0, 0).expect("entry 0").gen & 1;
    cfg.get(&(1 + gen), 0).expect("active entry").flags & HC_F_SRC_ONLY_IN != 0
}

/// XDP's one-lookup path and the general one give the verdicts of the rules: a blocklist
/// (untracked rules on source nets alone: an Allow of 198.51.100.128/25 before the Deny of
/// the /24) is decided by the source lookup alone (`HC_F_SRC_ONLY_IN`), failsafe ports
/// stay open, the ports are read only for a matched packet; one more rule on a port makes
/// the set mixed, and a packet its source alone would have matched passes.
#[test]
#[allow(clippy::too_many_lines)] // two tables of fixtures, one per mode
fn blocklist_is_decided_by_the_source_alone_and_mixed_rules_by_all_four() {
    if !require_root("blocklist_is_decided_by_the_source_alone_and_mixed_rules_by_all_four") {
        return;
    }
    let n = TestNode::routed_to_node_b("hpsrc");
    let mut dp = dataplane(&n);
    let excepted = || {
        HostPolicy::new("excepted", uplink())
            .untracked()
            .with_order(5)
            .with_ingress(HostRule::new(HostAction::Allow).from_nets([net("198.51.100.128/25")]))
    };
    let mut policies = vec![excepted()];
    policies.extend(blocklist(blocked_nets()));
    dp.apply(&scene(policies)).expect("apply");
    assert!(source_only_mode(&n), "a blocklist: the one-lookup path");
    let mut cut_short = syn("198.51.100.7", "172.18.0.2", 40100, 9000);
    cut_short.truncate(14 + 20 + 12);

    for f in [
        same(
            "TCP SYN from a blocked prefix to the node: dropped by its source",
            Hook::Xdp,
            syn("198.51.100.7", "172.18.0.2", 40101, 9000),
            XDP_DROP,
        ),
        same(
            "UDP from a blocked prefix: dropped",
            Hook::Xdp,
            eth()
                .ip("198.51.100.8", "172.18.0.2")
                .udp(5353, 9999)
                .payload(b"q")
                .build(),
            XDP_DROP,
        ),
        same(
            "ICMP echo from a blocked prefix (no ports): dropped",
            Hook::Xdp,
            eth()
                .ip("198.51.100.9", "172.18.0.2")
                .icmp_echo(false, 7)
                .build(),
            XDP_DROP,
        ),
        same(
            "IPv6 TCP SYN from a blocked prefix: dropped",
            Hook::Xdp,
            syn("2001:db8:bad::7", "fd00:18::2", 40102, 9000),
            XDP_DROP,
        ),
        same(
            "TCP SYN from a blocked prefix to a pod (forwarded): dropped",
            Hook::Xdp,
            syn("198.51.100.7", "10.244.0.10", 40103, 8080),
            XDP_DROP,
        ),
        same(
            "TCP SYN from a blocked prefix to failsafe TCP 22 of the node: exempt, passed",
            Hook::Xdp,
            syn("198.51.100.7", "172.18.0.2", 40104, 22),
            XDP_PASS,
        ),
        same(
            "UDP from a blocked prefix to failsafe UDP 68 of the node: exempt, passed",
            Hook::Xdp,
            eth()
                .ip("198.51.100.7", "172.18.0.2")
                .udp(67, 68)
                .payload(b"d")
                .build(),
            XDP_PASS,
        ),
        same(
            "TCP SYN from a blocked prefix to port 22 of a pod (not the node's): dropped",
            Hook::Xdp,
            syn("198.51.100.7", "10.244.0.10", 40105, 22),
            XDP_DROP,
        ),
        same(
            "UDP from a blocked prefix to TCP's failsafe port 22: dropped (UDP 22 is none)",
            Hook::Xdp,
            eth()
                .ip("198.51.100.7", "172.18.0.2")
                .udp(40106, 22)
                .payload(b"u")
                .build(),
            XDP_DROP,
        ),
        same(
            "from the excepted /25 (its untracked Allow comes first): left to TC",
            Hook::Xdp,
            syn("198.51.100.200", "172.18.0.2", 40107, 9000),
            XDP_PASS,
        ),
        same(
            "... which lets it through untracked",
            Hook::FromUplink,
            syn("198.51.100.200", "172.18.0.2", 40107, 9000),
            TC_OK,
        ),
        same(
            "an address next to the blocked prefix: untouched",
            Hook::Xdp,
            syn("198.51.101.7", "172.18.0.2", 40108, 9000),
            XDP_PASS,
        ),
        same(
            "a blocked source's TCP header cut short: left to TC, which finds its ports",
            Hook::Xdp,
            cut_short,
            XDP_PASS,
        ),
    ] {
        check(&mut dp, &f);
    }
    // Every XDP drop counted by the Deny (the blocklist's rule 0, the set's bit 1).
    assert_eq!(drops(&dp, "blocked", PolicyType::Ingress, 0), 7);
    assert_eq!(drops(&dp, "excepted", PolicyType::Ingress, 0), 0);

    // Mixed: one more untracked rule, a Deny of 203.0.113.0/24 to TCP 9000 only.
    let mut policies = vec![excepted()];
    policies.extend(blocklist(blocked_nets()));
    policies.push(
        HostPolicy::new("port", uplink())
            .untracked()
            .with_order(20)
            .with_ingress(
                HostRule::new(HostAction::Deny)
                    .protocol(Protocol::Tcp)
                    .from_nets([net("203.0.113.0/24")])
                    .to_ports([HostPort::Number(9000)]),
            ),
    );
    dp.apply(&scene(policies)).expect("apply");
    assert!(!source_only_mode(&n), "a rule on a port: the general path");
    for f in [
        same(
            "mixed: TCP SYN from 203.0.113.0/24 to TCP 9000: dropped",
            Hook::Xdp,
            syn("203.0.113.5", "172.18.0.2", 40110, 9000),
            XDP_DROP,
        ),
        same(
            "mixed: from 203.0.113.0/24 to TCP 80: its source matches, its port does not: \
             passed",
            Hook::Xdp,
            syn("203.0.113.5", "172.18.0.2", 40111, 80),
            XDP_PASS,
        ),
        same(
            "mixed: UDP from 203.0.113.0/24 to 9000: passed",
            Hook::Xdp,
            eth()
                .ip("203.0.113.5", "172.18.0.2")
                .udp(40112, 9000)
                .payload(b"u")
                .build(),
            XDP_PASS,
        ),
        same(
            "mixed: TCP SYN from the blocked /24 still dropped",
            Hook::Xdp,
            syn("198.51.100.7", "172.18.0.2", 40113, 9000),
            XDP_DROP,
        ),
        same(
            "mixed: ... but not on failsafe TCP 22 of the node",
            Hook::Xdp,
            syn("198.51.100.7", "172.18.0.2", 40114, 22),
            XDP_PASS,
        ),
        same(
            "mixed: the excepted /25 still left to TC",
            Hook::Xdp,
            syn("198.51.100.200", "172.18.0.2", 40115, 9000),
            XDP_PASS,
        ),
    ] {
        check(&mut dp, &f);
    }
    assert_eq!(drops(&dp, "port", PolicyType::Ingress, 0), 1);
    assert_eq!(drops(&dp, "blocked", PolicyType::Ingress, 0), 8);
    dp.reset().expect("reset");
}

#[test]
fn pre_dnat_denies_a_node_port_by_source() {
    if !require_root("pre_dnat_denies_a_node_port_by_source") {
        return;
    }
    let n = TestNode::routed_to_node_b("hpdnat");
    let mut dp = dataplane(&n);
    let before = scene(untracked(blocked_nets()));
    dp.apply(&before).expect("apply");
    let mut after = before.clone();
    after.host_policies.push(
        HostPolicy::new("guard-nodeport", uplink())
            .pre_dnat()
            .with_order(30)
            .with_ingress(
                HostRule::new(HostAction::Deny)
                    .protocol(Protocol::Tcp)
                    .from_nets([net("203.0.113.0/24")])
                    .to_ports([HostPort::Range(dataplane_core::PortRange {
                        start: 30000,
                        end: 32767,
                    })]),
            ),
    );
    // A host policy change applies incrementally (core's validator checks it against the
    // objects that stay): the host tables are compiled again and written under the other
    // generation, which the datapath then flips to.
    let report = dp
        .apply_changes(&dataplane_core::diff(&before, &after))
        .expect("apply_changes");
    assert!(
        !report.full_sync && report.objects_written > 0,
        "{report:?}"
    );
    for f in [
        same(
            "pre-DNAT rules in force: XDP leaves new flows to TC",
            Hook::Xdp,
            syn("203.0.113.9", "172.18.0.2", 41000, 30080),
            XDP_PASS,
        ),
        same(
            "TCP SYN from 203.0.113.0/24 to the NodePort: dropped by the pre-DNAT rule",
            Hook::FromUplink,
            syn("203.0.113.9", "172.18.0.2", 41000, 30080),
            TC_SHOT,
        ),
        same(
            "the same source to another port of the node: not the rule's (no default deny)",
            Hook::FromUplink,
            syn("203.0.113.9", "172.18.0.2", 41001, 9000),
            TC_OK,
        ),
        same(
            "untracked rules still first: the blocked prefix is dropped in TC too",
            Hook::FromUplink,
            syn("198.51.100.7", "172.18.0.2", 41002, 30080),
            TC_SHOT,
        ),
    ] {
        check(&mut dp, &f);
    }
    // Another source reaches the NodePort: translated (SNAT to node-b) and redirected.
    let run = dp
        .run_packet(
            Hook::FromUplink,
            &syn("100.64.0.9", "172.18.0.2", 41003, 30080),
            1,
        )
        .expect("run");
    assert_eq!(run.verdict, TC_REDIRECT, "allowed NodePort connection");
    assert_eq!(drops(&dp, "guard-nodeport", PolicyType::Ingress, 0), 1);
    // The counters of the rules that stayed carried over the generation flip.
    assert_eq!(drops(&dp, "blocked", PolicyType::Ingress, 0), 1);

    // Removed again (incrementally): the NodePort answers the range.
    let report = dp.sync(Some(&after), &before).expect("sync");
    assert!(!report.full_sync, "{report:?}");
    let run = dp
        .run_packet(
            Hook::FromUplink,
            &syn("203.0.113.9", "172.18.0.2", 41004, 30080),
            1,
        )
        .expect("run");
    assert_eq!(run.verdict, TC_REDIRECT, "pre-DNAT policy gone");
    dp.reset().expect("reset");
}

/// Normal policies: `node-in` lets 192.0.2.0/24 reach the node's TCP 6379 (not forwarded
/// traffic: no applyOnForward), `node-out` lets the node reach 198.51.100.0/24 on TCP 443,
/// `fwd-in` (applyOnForward, ingress only) lets anyone but 100.64.0.0/10 reach TCP 8080
/// through the node.
fn normal() -> Vec<HostPolicy> {
    vec![
        HostPolicy::new("node-in", uplink())
            .with_order(10)
            .with_ingress(
                HostRule::new(HostAction::Allow)
                    .protocol(Protocol::Tcp)
                    .from_nets([net("192.0.2.0/24")])
                    .to_ports([HostPort::Number(6379)]),
            ),
        HostPolicy::new("node-out", uplink())
            .with_order(20)
            .with_types([PolicyType::Egress])
            .with_egress(
                HostRule::new(HostAction::Allow)
                    .protocol(Protocol::Tcp)
                    .to_nets([net("198.51.100.0/24")])
                    .to_ports([HostPort::Number(443)]),
            ),
        HostPolicy::new("fwd-in", uplink())
            .with_order(30)
            .on_forward()
            .with_types([PolicyType::Ingress])
            .with_ingress(HostRule::new(HostAction::Deny).from_nets([net("100.64.0.0/10")]))
            .with_ingress(
                HostRule::new(HostAction::Allow)
                    .protocol(Protocol::Tcp)
                    .to_ports([HostPort::Number(8080)]),
            ),
    ]
}

#[test]
#[allow(clippy::too_many_lines)] // one table of fixtures, then the NodePort's two runs
fn normal_policies_default_deny_apply_on_forward_and_replies() {
    if !require_root("normal_policies_default_deny_apply_on_forward_and_replies") {
        return;
    }
    let n = TestNode::routed_to_node_b("hpnorm");
    let mut dp = dataplane(&n);
    dp.apply(&scene(normal())).expect("apply");
    let syn_ack = |src: &str, dst: &str, sport, dport| {
        eth()
            .ip(src, dst)
            .tcp(sport, dport, TCP_SYN | common::TCP_ACK)
            .build()
    };
    for f in [
        same(
            "192.0.2.7 to the node's TCP 6379: node-in allows it",
            Hook::FromUplink,
            syn("192.0.2.7", "172.18.0.2", 40000, 6379),
            TC_OK,
        ),
        same(
            "... the node's reply leaves through its connection (node-out would not allow it)",
            Hook::ToUplink,
            syn_ack("172.18.0.2", "192.0.2.7", 6379, 40000),
            TC_OK,
        ),
        same(
            "203.0.113.9 to the node's TCP 6379: no rule, default deny",
            Hook::FromUplink,
            syn("203.0.113.9", "172.18.0.2", 40001, 6379),
            TC_SHOT,
        ),
        same(
            "203.0.113.9 to failsafe TCP 22: exempt",
            Hook::FromUplink,
            syn("203.0.113.9", "172.18.0.2", 40002, 22),
            TC_OK,
        ),
        same(
            "... and the node's reply from 22 leaves through its connection",
            Hook::ToUplink,
            syn_ack("172.18.0.2", "203.0.113.9", 22, 40002),
            TC_OK,
        ),
        same(
            "the node to 198.51.100.7:443: node-out allows it",
            Hook::ToUplink,
            syn("172.18.0.2", "198.51.100.7", 40003, 443),
            TC_OK,
        ),
        same(
            "... its reply comes in through its connection (no ingress rule for it)",
            Hook::FromUplink,
            syn_ack("198.51.100.7", "172.18.0.2", 443, 40003),
            TC_OK,
        ),
        same(
            "the node to 203.0.113.9:443: no egress rule, default deny",
            Hook::ToUplink,
            syn("172.18.0.2", "203.0.113.9", 40004, 443),
            TC_SHOT,
        ),
        same(
            "forwarded to a pod's TCP 8080: fwd-in (applyOnForward) allows it",
            Hook::FromUplink,
            syn("203.0.113.9", "10.244.0.10", 40005, 8080),
            TC_OK,
        ),
        same(
            "forwarded to a pod's TCP 9090: fwd-in applies and has no rule: default deny",
            Hook::FromUplink,
            syn("203.0.113.9", "10.244.0.10", 40006, 9090),
            TC_SHOT,
        ),
        same(
            "forwarded from 192.0.2.7 to a pod's TCP 6379: node-in is not applyOnForward",
            Hook::FromUplink,
            syn("192.0.2.7", "10.244.0.10", 40007, 6379),
            TC_SHOT,
        ),
        same(
            "a TCP ACK with no connection (a session from before the policies): picked up",
            Hook::FromUplink,
            eth()
                .ip("203.0.113.9", "172.18.0.2")
                .tcp(40010, 6379, common::TCP_ACK)
                .build(),
            TC_OK,
        ),
        same(
            "... and the node's answer in that session leaves through it",
            Hook::ToUplink,
            eth()
                .ip("172.18.0.2", "203.0.113.9")
                .tcp(6379, 40010, common::TCP_ACK)
                .build(),
            TC_OK,
        ),
        same(
            "a SYN-ACK with no connection (to a SYN no policy saw): judged, default deny",
            Hook::ToUplink,
            syn_ack("172.18.0.2", "203.0.113.9", 7000, 40011),
            TC_SHOT,
        ),
        same(
            "normal policies in force: XDP leaves NodePort flows to TC",
            Hook::Xdp,
            syn("203.0.113.9", "172.18.0.2", 40008, 30080),
            XDP_PASS,
        ),
    ] {
        check(&mut dp, &f);
    }
    // The NodePort is judged after translation: to node-b's pod on 8080, forwarded, so
    // fwd-in's rule for 8080 lets NodePort 30080 through (SNAT, redirected).
    let run = dp
        .run_packet(
            Hook::FromUplink,
            &syn("203.0.113.9", "172.18.0.2", 40009, 30080),
            1,
        )
        .expect("run");
    assert_eq!(run.verdict, TC_REDIRECT, "NodePort to 8080 allowed");
    // Judged with the client's own source, though the NodePort's SNAT has replaced it by
    // the node's address: fwd-in's deny of 100.64.0.0/10 drops it.
    let run = dp
        .run_packet(
            Hook::FromUplink,
            &syn("100.64.0.9", "172.18.0.2", 40012, 30080),
            1,
        )
        .expect("run");
    assert_eq!(run.verdict, TC_SHOT, "NodePort from a denied client");
    // A ClusterIP's unknown port from outside is rejected (the reference model's Reject):
    // the answer is ours, the normal stage does not judge it (fwd-in would drop the packet).
    let input = syn("203.0.113.9", "10.96.0.31", 40013, 81);
    let run = dp.run_packet(Hook::FromUplink, &input, 1).expect("run");
    assert_ne!(run.verdict, TC_SHOT, "rejected, not dropped");
    assert_ne!(run.output, input, "the answer (a RST) goes back");
    assert_eq!(drops(&dp, "fwd-in", PolicyType::Ingress, 0), 1);
    dp.reset().expect("reset");
}

/// Untracked rules judge every packet crossing the uplink, the replies of tracked connections
/// included (core's `reply_allowed`; netfilter's raw table, where Calico renders doNotTrack,
/// sees every packet before conntrack), but only the node's *own* packets on the way out: the
/// reply of a NodePort connection to a local pod, reverse-translated to come from the
/// NodePort on the node's address, is forwarded, not the node's, and no untracked egress rule
/// sees it (regression: `host_translated()` took it for the node's own, so an untracked egress
/// Deny of the client dropped it; the host table's `untracked-deny-replies` found it).
#[test]
fn untracked_rules_judge_replies_the_node_sends_or_receives_not_forwarded_ones() {
    if !require_root("untracked_rules_judge_replies_the_node_sends_or_receives_not_forwarded_ones")
    {
        return;
    }
    let n = TestNode::routed_to_node_b("hprepl");
    ip(&[
        "-n", &n.name, "link", "add", "veth0", "type", "veth", "peer", "name", "veth0p",
    ]);
    ip(&["-n", &n.name, "link", "set", "veth0", "up"]);
    ip(&["-n", &n.name, "link", "set", "veth0p", "up"]);
    let mut dp = dataplane(&n);
    let mut st = scene(vec![HostPolicy::new("replies", uplink())
        .untracked()
        .with_ingress(HostRule::new(HostAction::Deny).from_nets([net("10.244.1.0/24")]))
        .with_egress(
            HostRule::new(HostAction::Deny).to_nets([net("203.0.113.0/24")]),
        )]);
    st.endpoints = vec![Endpoint::new(
        ObjectName::new("default", "local"),
        "veth0",
        ["10.244.0.10".parse().unwrap()],
    )];
    let mut local = Service::new(ObjectName::new("default", "local"));
    local.cluster_ips = vec!["10.96.0.32".parse().unwrap()];
    local.ports = vec![ServicePort {
        name: "http".into(),
        protocol: Protocol::Tcp,
        port: 80,
        target_port: 8080,
        node_port: Some(30090),
    }];
    local.backends = vec![backend("10.244.0.10", "node-a")];
    st.services.push(local);
    dp.apply(&st).expect("apply");
    let syn_ack = |src: &str, dst: &str, sport, dport| {
        eth()
            .ip(src, dst)
            .tcp(sport, dport, TCP_SYN | common::TCP_ACK)
            .build()
    };
    // 100.64.0.9 (not denied) to the local pod's NodePort: translated, to the pod.
    let run = dp
        .run_packet(
            Hook::FromUplink,
            &syn("100.64.0.9", "172.18.0.2", 41000, 30090),
            1,
        )
        .expect("run");
    assert_eq!(run.verdict, TC_REDIRECT, "the NodePort to the local pod");
    // 203.0.113.9 too: its connection is tracked (the egress rule does not see its SYN).
    let run = dp
        .run_packet(
            Hook::FromUplink,
            &syn("203.0.113.9", "172.18.0.2", 41001, 30090),
            1,
        )
        .expect("run");
    assert_eq!(run.verdict, TC_REDIRECT, "the NodePort to the local pod");
    for f in [
        same(
            "the pod's reply to 203.0.113.9, as the NodePort on the node: forwarded, not \
             the node's own, so the untracked egress Deny does not see it",
            Hook::ToUplink,
            syn_ack("172.18.0.2", "203.0.113.9", 30090, 41001),
            TC_OK,
        ),
        same(
            "the node's own server's reply to 203.0.113.9: the untracked egress Deny drops it",
            Hook::ToUplink,
            syn_ack("172.18.0.2", "203.0.113.9", 7000, 41002),
            TC_SHOT,
        ),
        same(
            "the node dials node-b's pod: tracked, out",
            Hook::ToUplink,
            syn("172.18.0.2", "10.244.1.20", 41003, 8080),
            TC_OK,
        ),
        same(
            "... its reply: the untracked ingress Deny drops it at XDP",
            Hook::Xdp,
            syn_ack("10.244.1.20", "172.18.0.2", 8080, 41003),
            XDP_DROP,
        ),
        same(
            "... and in TC (where XDP is not attached)",
            Hook::FromUplink,
            syn_ack("10.244.1.20", "172.18.0.2", 8080, 41003),
            TC_SHOT,
        ),
    ] {
        check(&mut dp, &f);
    }
    dp.reset().expect("reset");
}

/// The node's own connection to its own NodePort, translated by `dp_to_lo` to a pod on
/// another node and sent out of the uplink, is the node's own traffic for host policy: a
/// normal egress policy (not applyOnForward) judges it after translation, as netfilter's
/// filter output does after nat output (regression: `host_translated()` took every packet
/// with a reverse conntrack entry for a forwarded one, so the node's own NodePort connections
/// escaped its egress policy; found by the differential test with host policies).
#[test]
fn the_nodes_own_nodeport_connection_meets_its_egress_policy() {
    if !require_root("the_nodes_own_nodeport_connection_meets_its_egress_policy") {
        return;
    }
    let n = TestNode::routed_to_node_b("hpownnp");
    let mut dp = dataplane(&n);
    let egress = |port: u16| {
        vec![HostPolicy::new("node-out", uplink())
            .with_types([PolicyType::Egress])
            .with_egress(
                HostRule::new(HostAction::Allow)
                    .protocol(Protocol::Tcp)
                    .to_ports([HostPort::Number(port)]),
            )]
    };
    for (port, verdict, what) in [
        (
            443,
            TC_SHOT,
            "egress allows 443 only: the translated 8080 is dropped",
        ),
        (
            8080,
            TC_OK,
            "egress allows 8080: the translated connection leaves",
        ),
    ] {
        dp.apply(&scene(egress(port))).expect("apply");
        let sport = 42000 + port % 1000;
        let run = dp
            .run_packet(
                Hook::ToLo,
                &syn("172.18.0.2", "172.18.0.2", sport, 30080),
                1,
            )
            .expect("run");
        assert_eq!(
            run.verdict, TC_REDIRECT,
            "to_lo translates and sends it out"
        );
        let run = dp.run_packet(Hook::ToUplink, &run.output, 1).expect("run");
        assert_eq!(run.verdict, verdict, "{what}");
    }
    dp.reset().expect("reset");
}

/// `DP_MARK_UNTRACKED` (common.h): `skb->mark` bit 0x80, as `dp_from_uplink` sets it.
const MARK_UNTRACKED: u32 = 0x80;

/// An untracked Allow from the uplink marks the skb (`DP_MARK_UNTRACKED`, also when XDP passed
/// it on), and `dp_to_uplink` sends a marked packet the node routes back out untouched — no
/// service translation, no applyOnForward egress rules — clearing only that bit, as netfilter
/// accepts an untracked packet and never NATs it (Calico: `--ctstate UNTRACKED -j ACCEPT`,
/// felix rules/static.go). Unmarked, the same packets are translated and judged as before:
/// `fwd-out`'s default deny drops them (regression: the differential test's cases with
/// `fd00:96::8` and `fd00:244:0:1::88`).
#[test]
#[allow(clippy::too_many_lines)] // one table of runs
fn untracked_packets_routed_back_out_of_the_uplink_pass_untouched() {
    if !require_root("untracked_packets_routed_back_out_of_the_uplink_pass_untouched") {
        return;
    }
    let n = TestNode::routed_to_node_b("hpuntrk");
    let mut dp = dataplane(&n);
    let policies = vec![
        HostPolicy::new("trusted", uplink())
            .untracked()
            .on_forward()
            .with_order(10)
            .with_types([PolicyType::Ingress])
            .with_ingress(HostRule::new(HostAction::Allow).from_nets([net("192.0.2.0/25")])),
        HostPolicy::new("fwd-out", uplink())
            .on_forward()
            .with_order(20)
            .with_types([PolicyType::Egress]),
    ];
    dp.apply(&scene(policies)).expect("apply");
    let eth0 = |mark: Option<u32>| dataplane_ebpf::RunOn {
        interface: Some("eth0".to_owned()),
        ingress: Some("eth0".to_owned()),
        mark,
    };
    let to_cluster_ip = syn("192.0.2.7", "10.96.0.31", 40100, 80);
    let through = syn("192.0.2.7", "203.0.113.50", 40101, 443);
    let untrusted = syn("192.0.2.200", "203.0.113.50", 40102, 443);
    for input in [&to_cluster_ip, &through] {
        // XDP leaves an untracked Allow to TC, which judges it again and marks it.
        let run = dp.run_packet(Hook::Xdp, input, 1).expect("xdp run");
        assert_eq!(run.verdict, XDP_PASS, "XDP passes an untracked Allow to TC");
        assert_eq!(run.output, *input, "XDP leaves it as it came");
        let run = dp
            .run_packet_on(Hook::FromUplink, input, 1, &eth0(None))
            .expect("from_uplink run");
        assert_eq!(run.verdict, TC_OK, "untracked Allow: to the stack");
        assert_eq!(common::hex(&run.output), common::hex(input), "untouched");
        assert_eq!(run.mark, Some(MARK_UNTRACKED), "marked untracked");
        // Routed back out of the uplink with the mark: untouched, the bit cleared.
        let run = dp
            .run_packet_on(Hook::ToUplink, input, 1, &eth0(run.mark))
            .expect("to_uplink run");
        assert_eq!(run.verdict, TC_OK, "marked: passes dp_to_uplink");
        assert_eq!(common::hex(&run.output), common::hex(input), "untouched");
        assert_eq!(run.mark, Some(0), "the bit cleared");
    }
    // Another user's mark bits stay (kube-proxy's 0x4000 beside ours).
    let run = dp
        .run_packet_on(
            Hook::ToUplink,
            &through,
            1,
            &eth0(Some(0x4000 | MARK_UNTRACKED)),
        )
        .expect("to_uplink run");
    assert_eq!(run.verdict, TC_OK, "marked: passes dp_to_uplink");
    assert_eq!(run.mark, Some(0x4000), "only the untracked bit cleared");
    // Unmarked: the ClusterIP is served as a new service packet (translated to the backend
    // on node-b), then fwd-out's default deny drops it; passing through, dropped unchanged.
    let run = dp
        .run_packet_on(Hook::ToUplink, &to_cluster_ip, 1, &eth0(None))
        .expect("to_uplink run");
    assert_eq!(run.verdict, TC_SHOT, "unmarked: fwd-out judges it");
    assert_ne!(run.output, to_cluster_ip, "unmarked: translated first");
    let run = dp
        .run_packet_on(Hook::ToUplink, &through, 1, &eth0(None))
        .expect("to_uplink run");
    assert_eq!(run.verdict, TC_SHOT, "unmarked: fwd-out judges it");
    assert_eq!(common::hex(&run.output), common::hex(&through), "unchanged");
    // No untracked Allow: not marked, and judged on its way through (fwd-out's default
    // deny, at ingress already: it leaves the node again).
    let run = dp
        .run_packet_on(Hook::FromUplink, &untrusted, 1, &eth0(None))
        .expect("from_uplink run");
    assert_eq!(run.verdict, TC_SHOT, "not untracked: fwd-out drops it");
    assert_eq!(run.mark, Some(0), "not untracked: not marked");
    dp.reset().expect("reset");
}

/// A pod's connection this node source-NATs on its way through is judged by applyOnForward
/// egress rules with the pod's address and port, as netfilter's FORWARD chain judges it
/// before SNAT: a service connection `dp_from_pod` translated with SNAT (`masquerade.all_services`)
/// reaches `dp_to_uplink` with the node's address, and `host_after()` takes the source from
/// the connection's reverse `dp_ct` entry (regression: it judged the node's address, so
/// `fwd-out`'s rules on the pods' nets never matched; the differential test's case with
/// `198.51.100.4`). A connection `dp_to_uplink` masquerades itself is judged the same way.
#[test]
fn masqueraded_pod_connections_meet_forward_egress_rules_with_the_pods_source() {
    if !require_root("masqueraded_pod_connections_meet_forward_egress_rules_with_the_pods_source") {
        return;
    }
    let n = TestNode::routed_to_node_b("hpmasq");
    let mut dp = dataplane(&n);
    let policies = vec![HostPolicy::new("fwd-out", uplink())
        .on_forward()
        .with_types([PolicyType::Egress])
        .with_egress(HostRule::new(HostAction::Deny).from_nets([net("10.244.0.11/32")]))
        .with_egress(
            HostRule::new(HostAction::Allow)
                .protocol(Protocol::Tcp)
                .from_nets([net("10.244.0.0/24")])
                .from_ports([HostPort::Number(41000)]),
        )];
    let mut state = scene(policies);
    state.node.masquerade.all_services = true;
    dp.apply(&state).expect("apply");
    for (pod, sport, verdict, what) in [
        (
            "10.244.0.10",
            41000,
            TC_OK,
            "the pod's address and port: allowed",
        ),
        (
            "10.244.0.10",
            41001,
            TC_SHOT,
            "another port of the pod: default deny",
        ),
        ("10.244.0.11", 41000, TC_SHOT, "the denied pod"),
    ] {
        // The service connection, source-NATed by dp_from_pod and routed to the uplink.
        let run = dp
            .run_packet(Hook::FromPod, &syn(pod, "10.96.0.31", sport, 80), 1)
            .expect("from_pod run");
        assert_eq!(run.verdict, TC_REDIRECT, "{what}: translated and routed");
        let out = common::wire::parse_checked(&run.output).expect("a well-formed frame");
        assert_eq!(
            out.src.to_string(),
            "172.18.0.2",
            "{what}: SNAT to the node"
        );
        let sent = run.output;
        let run = dp
            .run_packet(Hook::ToUplink, &sent, 1)
            .expect("to_uplink run");
        assert_eq!(run.verdict, verdict, "service connection, {what}");
        assert_eq!(
            common::hex(&run.output),
            common::hex(&sent),
            "{what}: unchanged"
        );
        // Straight out of the cluster: masqueraded by dp_to_uplink, judged the same way.
        let run = dp
            .run_packet(Hook::ToUplink, &syn(pod, "198.51.100.4", sport, 443), 1)
            .expect("to_uplink run");
        assert_eq!(run.verdict, verdict, "masqueraded, {what}");
        let out = common::wire::parse_checked(&run.output).expect("a well-formed frame");
        assert_eq!(out.src.to_string(), "172.18.0.2", "{what}: masqueraded");
    }
    assert_eq!(
        drops(&dp, "fwd-out", PolicyType::Egress, 0),
        2,
        "the denied pod's two"
    );
    dp.reset().expect("reset");
}

/// The XDP cost of a blocked-source flood against 10k and 100k prefixes in the trie, for a
/// blocklist alone (one untracked Deny on source nets: the one-lookup path,
/// `HC_F_SRC_ONLY_IN`) and for the mixed set of [`untracked`] (the general path: the trusted
/// rule names a protocol and a port). Printed, not asserted: `cargo test -p dataplane-ebpf
/// --all-features --test host_policy -- --ignored --nocapture xdp_deny_cost`.
#[test]
#[ignore = "a measurement: run it explicitly"]
fn xdp_deny_cost() {
    if !require_root("xdp_deny_cost") {
        return;
    }
    let n = TestNode::routed_to_node_b("hpcost");
    let mut dp = dataplane(&n);
    for count in [0u32, 10_000, 100_000] {
        // count /32s spread over 10.128.0.0/9 (not the lab's), plus the blocked /24.
        let mut nets: Vec<ipnetwork::IpNetwork> = (0..count)
            .map(|i| {
                let a = 0x0a80_0000u32 | (i * 7 + 1) & 0x007f_ffff;
                net(&format!("{}/32", std::net::Ipv4Addr::from(a)))
            })
            .collect();
        nets.push(net("198.51.100.0/24"));
        for (mode, policies) in [
            ("blocklist", blocklist(nets.clone())),
            ("mixed", untracked(nets.clone())),
        ] {
            let t = std::time::Instant::now();
            dp.apply(&scene(policies)).expect("apply");
            let applied = t.elapsed();
            let mut per = |src: &str| {
                dp.run_packet(Hook::Xdp, &syn(src, "172.18.0.2", 40000, 9000), 1_000_000)
                    .expect("run")
            };
            let drop = per("198.51.100.7");
            assert_eq!(drop.verdict, XDP_DROP);
            let pass = per("100.64.0.9");
            // The last /32 of the list (the /24 when there is none).
            let last = if count == 0 {
                "198.51.100.8".to_owned()
            } else {
                std::net::Ipv4Addr::from(0x0a80_0000u32 | ((count - 1) * 7 + 1) & 0x007f_ffff)
                    .to_string()
            };
            let listed = per(&last);
            assert_eq!(listed.verdict, XDP_DROP);
            println!(
                "{mode:>9}, prefixes {count:>6}: apply {applied:>10.1?}, XDP drop of a source in \
                 the /24 {:?}/packet, of a listed /32 {:?}/packet, pass of an unlisted one \
                 {:?}/packet",
                drop.duration, listed.duration, pass.duration
            );
        }
    }
    dp.reset().expect("reset");
}
