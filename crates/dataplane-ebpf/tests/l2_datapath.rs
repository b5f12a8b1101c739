//! The L2 responder (`bpf/lib/l2_responder.h`) with BPF_PROG_TEST_RUN on hand-built ARP
//! requests and neighbour solicitations, against live maps, at XDP and in TC.
//!
//! ```text
//!   client 02:..:01 172.18.0.50 / fd00:18::50
//!      | who-has 172.18.0.200? / NS fd00:18::c8?
//!      v
//!   eth0 (02:..:02) [dp_xdp_uplink] --XDP_TX: 172.18.0.200 is-at 02:..:02 / NA (S, O, TLLA)
//!                    | XDP_PASS: not announced (172.18.0.201), or the liveness has lapsed
//!                    v
//!                   [dp_from_uplink] --redirect to eth0 (7): the same answer, when XDP is off
//! ```
//! Service `lb` announces 172.18.0.200 and `fd00:18::c8` (LoadBalancer IPs, `l2Announce`);
//! `quiet` has 172.18.0.201 without it.

mod common;

use std::net::{IpAddr, Ipv6Addr};
use std::time::Duration;

use common::{backend, eth, l4_checksum, node_a, require_root, Fixture, TestNode, TCP_SYN};
use dataplane_core::{
    Dataplane, DesiredState, Error, MaintenanceReport, ObjectName, Protocol, Service, ServicePort,
};
use dataplane_ebpf::maps::{L2Cfg, L2Key, L2Value};
use dataplane_ebpf::{monotonic_now, EbpfDataplane, Hook, RunOn, XdpMode};

const XDP_PASS: u32 = 2;
const XDP_TX: u32 = 3;
const TC_OK: u32 = 0;
const TC_REDIRECT: u32 = 7;

const NODE_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x02];
const CLIENT_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x01];
const BROADCAST: [u8; 6] = [0xff; 6];

fn lb_service(name: &str, cluster_ip: &str, lb: &[&str], announce: bool) -> Service {
    let mut s = Service::new(ObjectName::new("default", name));
    s.cluster_ips = vec![cluster_ip.parse().unwrap()];
    s.load_balancer_ips = lb.iter().map(|a| a.parse().unwrap()).collect();
    s.ports = vec![ServicePort {
        name: "http".to_owned(),
        protocol: Protocol::Tcp,
        port: 80,
        target_port: 8080,
        node_port: Some(30080 + u16::from(announce)),
    }];
    s.backends = vec![backend("10.244.0.10", "node-a")];
    s.l2_announce = announce;
    s
}

fn scene() -> DesiredState {
    let mut st = DesiredState::new(node_a());
    st.services = vec![
        lb_service("lb", "10.96.0.40", &["172.18.0.200", "fd00:18::c8"], true),
        lb_service("quiet", "10.96.0.41", &["172.18.0.201"], false),
    ];
    st
}

fn l2_node(tag: &str) -> TestNode {
    let n = TestNode::new(tag);
    common::ip(&["-n", &n.name, "link", "set", "eth0", "down"]);
    common::ip(&[
        "-n",
        &n.name,
        "link",
        "set",
        "eth0",
        "address",
        "02:00:00:00:00:02",
    ]);
    common::ip(&["-n", &n.name, "link", "set", "eth0", "up"]);
    n
}

fn dataplane(n: &TestNode, xdp: XdpMode, liveness: Duration) -> EbpfDataplane {
    let mut c = n.config();
    c.xdp = xdp;
    c.l2_liveness = liveness;
    EbpfDataplane::new(c).expect("eBPF dataplane loads")
}

/// An Ethernet/IPv4 ARP frame.
fn arp(dst: [u8; 6], op: u16, sha: [u8; 6], sip: [u8; 4], tha: [u8; 6], tip: [u8; 4]) -> Vec<u8> {
    let mut f = Vec::with_capacity(42);
    f.extend(dst);
    f.extend(sha);
    f.extend([0x08, 0x06, 0, 1, 0x08, 0x00, 6, 4]);
    f.extend(op.to_be_bytes());
    f.extend(sha);
    f.extend(sip);
    f.extend(tha);
    f.extend(tip);
    f
}

fn arp_request(tip: [u8; 4]) -> Vec<u8> {
    arp(BROADCAST, 1, CLIENT_MAC, [172, 18, 0, 50], [0; 6], tip)
}

fn arp_reply_to_client(sip: [u8; 4]) -> Vec<u8> {
    let mut f = arp(CLIENT_MAC, 2, NODE_MAC, sip, CLIENT_MAC, [172, 18, 0, 50]);
    // the Ethernet source is the node
    f[6..12].copy_from_slice(&NODE_MAC);
    f
}

/// An Ethernet/IPv6 ICMPv6 frame with hop limit 255 and `message` (its checksum filled in).
fn icmp6(
    dst_mac: [u8; 6],
    src_mac: [u8; 6],
    src: Ipv6Addr,
    dst: Ipv6Addr,
    mut message: Vec<u8>,
) -> Vec<u8> {
    let sum = l4_checksum(IpAddr::V6(src), IpAddr::V6(dst), 58, &message);
    message[2..4].copy_from_slice(&sum.to_be_bytes());
    let mut f = Vec::new();
    f.extend(dst_mac);
    f.extend(src_mac);
    f.extend([0x86, 0xdd, 0x60, 0, 0, 0]);
    f.extend(u16::try_from(message.len()).unwrap().to_be_bytes());
    f.extend([58, 255]);
    f.extend(src.octets());
    f.extend(dst.octets());
    f.extend(message);
    f
}

fn v6(s: &str) -> Ipv6Addr {
    s.parse().unwrap()
}

/// A neighbour solicitation for `target` with `options` after it.
fn ns_message(target: Ipv6Addr, options: &[u8]) -> Vec<u8> {
    let mut m = vec![135, 0, 0, 0, 0, 0, 0, 0];
    m.extend(target.octets());
    m.extend(options);
    m
}

fn solicited_node(target: Ipv6Addr) -> (Ipv6Addr, [u8; 6]) {
    let t = target.octets();
    let group = Ipv6Addr::new(
        0xff02,
        0,
        0,
        0,
        0,
        1,
        0xff00 | u16::from(t[13]),
        u16::from_be_bytes([t[14], t[15]]),
    );
    (group, [0x33, 0x33, 0xff, t[13], t[14], t[15]])
}

/// A solicitation from the client for `target` to its solicited-node group, with the
/// client's source link-layer option and `extra` options after it.
fn ns_from_client(target: Ipv6Addr, extra: &[u8]) -> Vec<u8> {
    let (group, group_mac) = solicited_node(target);
    let mut options = vec![1, 1];
    options.extend(CLIENT_MAC);
    options.extend(extra);
    icmp6(
        group_mac,
        CLIENT_MAC,
        v6("fd00:18::50"),
        group,
        ns_message(target, &options),
    )
}

/// The advertisement of `target` at the node's MAC to `dst` (`dst_mac`) with `flags`.
fn na(target: Ipv6Addr, dst: Ipv6Addr, dst_mac: [u8; 6], flags: u8) -> Vec<u8> {
    let mut m = vec![136, 0, 0, 0, flags, 0, 0, 0];
    m.extend(target.octets());
    m.extend([2, 1]);
    m.extend(NODE_MAC);
    icmp6(dst_mac, NODE_MAC, target, dst, m)
}

const SOLICITED_OVERRIDE: u8 = 0x60;
const OVERRIDE: u8 = 0x20;

/// The fixtures every hook answers the same way; `answered` is the hook's verdict for an
/// answer, `passed` for a packet left alone.
#[allow(clippy::too_many_lines)] // a fixture table reads best in one piece
fn fixtures(hook: Hook, answered: u32, passed: u32) -> Vec<Fixture> {
    let lb6 = v6("fd00:18::c8");
    let mut padded = arp_request([172, 18, 0, 200]);
    padded.resize(60, 0);
    let mut padded_reply = arp_reply_to_client([172, 18, 0, 200]);
    padded_reply.resize(60, 0);
    let dad = icmp6(
        solicited_node(lb6).1,
        CLIENT_MAC,
        Ipv6Addr::UNSPECIFIED,
        solicited_node(lb6).0,
        ns_message(lb6, &[]),
    );
    let pass = |description, input: Vec<u8>| Fixture {
        description,
        hook,
        output: input.clone(),
        input,
        verdict: passed,
    };
    vec![
        Fixture {
            description: "ARP request for an announced LB IP: the reply, in place, to the asker",
            hook,
            input: arp_request([172, 18, 0, 200]),
            verdict: answered,
            output: arp_reply_to_client([172, 18, 0, 200]),
        },
        Fixture {
            description: "ARP request padded to 60 bytes: the reply keeps the length and padding",
            hook,
            input: padded,
            verdict: answered,
            output: padded_reply,
        },
        Fixture {
            description: "ARP probe (sender 0.0.0.0, RFC 5227): answered to the prober, target \
                          address 0 (as Linux does for its own addresses)",
            hook,
            input: arp(BROADCAST, 1, CLIENT_MAC, [0; 4], [0; 6], [172, 18, 0, 200]),
            verdict: answered,
            output: arp(
                CLIENT_MAC,
                2,
                NODE_MAC,
                [172, 18, 0, 200],
                CLIENT_MAC,
                [0; 4],
            )
            .into_iter()
            .enumerate()
            .map(|(i, b)| {
                if (6..12).contains(&i) {
                    NODE_MAC[i - 6]
                } else {
                    b
                }
            })
            .collect(),
        },
        Fixture {
            description: "NS with the source link-layer option (86 bytes): the solicited NA \
                          (S+O, target link-layer option) to the solicitor, in place",
            hook,
            input: ns_from_client(lb6, &[]),
            verdict: answered,
            output: na(lb6, v6("fd00:18::50"), CLIENT_MAC, SOLICITED_OVERRIDE),
        },
        Fixture {
            description: "NS with one more option (a nonce, 94 bytes): the NA, the frame shrunk",
            hook,
            input: ns_from_client(lb6, &[14, 1, 1, 2, 3, 4, 5, 6]),
            verdict: answered,
            output: na(lb6, v6("fd00:18::50"), CLIENT_MAC, SOLICITED_OVERRIDE),
        },
        Fixture {
            description: "DAD NS from :: without options (78 bytes): the NA to ff02::1 \
                          (Override only, RFC 4861 7.2.4), the frame grown",
            hook,
            input: dad,
            verdict: answered,
            output: na(lb6, v6("ff02::1"), [0x33, 0x33, 0, 0, 0, 1], OVERRIDE),
        },
        Fixture {
            description: "unicast NS to the address itself, no option: the NA to the frame's \
                          source",
            hook,
            input: icmp6(
                NODE_MAC,
                CLIENT_MAC,
                v6("fd00:18::50"),
                lb6,
                ns_message(lb6, &[]),
            ),
            verdict: answered,
            output: na(lb6, v6("fd00:18::50"), CLIENT_MAC, SOLICITED_OVERRIDE),
        },
        pass(
            "ARP request for an LB IP without l2Announce: untouched",
            arp_request([172, 18, 0, 201]),
        ),
        pass(
            "ARP announcement (sender = target) of the LB IP by another node: untouched",
            arp(
                BROADCAST,
                1,
                CLIENT_MAC,
                [172, 18, 0, 200],
                [0; 6],
                [172, 18, 0, 200],
            ),
        ),
        pass(
            "ARP reply about the LB IP: untouched",
            arp(
                NODE_MAC,
                2,
                CLIENT_MAC,
                [172, 18, 0, 200],
                NODE_MAC,
                [172, 18, 0, 2],
            ),
        ),
        pass(
            "NS for an unannounced address: untouched",
            ns_from_client(v6("fd00:18::c9"), &[]),
        ),
        pass(
            "NS with hop limit 64 (RFC 4861 7.1.1: invalid): untouched",
            {
                let mut f = ns_from_client(lb6, &[]);
                f[21] = 64;
                f
            },
        ),
    ]
}

/// Runs `f` through its hook on eth0 (TC: received on it) and checks verdict and bytes.
fn check_on(dp: &mut EbpfDataplane, f: &Fixture) {
    let on = RunOn {
        interface: Some("eth0".to_owned()),
        ingress: Some("eth0".to_owned()),
        mark: None,
    };
    common::check_on(dp, f, &on);
}

fn answers(fixtures: &[Fixture], answered: u32) -> (u64, u64) {
    let v4 = fixtures
        .iter()
        .filter(|f| f.verdict == answered && f.input[12..14] == [0x08, 0x06])
        .count() as u64;
    let all = fixtures.iter().filter(|f| f.verdict == answered).count() as u64;
    (v4, all - v4)
}

#[test]
fn xdp_answers_arp_and_ns_for_announced_addresses() {
    if !require_root("xdp_answers_arp_and_ns_for_announced_addresses") {
        return;
    }
    let n = l2_node("l2x");
    let mut dp = dataplane(&n, XdpMode::Native, Duration::from_mins(1));
    dp.apply(&scene()).expect("apply");
    assert!(dp.capabilities().l2_announcements);
    let fixtures = fixtures(Hook::Xdp, XDP_TX, XDP_PASS);
    for f in &fixtures {
        check_on(&mut dp, f);
    }
    let (v4, v6) = answers(&fixtures, XDP_TX);
    let other = dp.stats().expect("stats").other;
    assert_eq!(other["l2_responses.172.18.0.200"], v4, "{other:?}");
    assert_eq!(other["l2_responses.fd00:18::c8"], v6, "{other:?}");
    assert_eq!(other["l2_responses"], v4 + v6);
    assert!(!other.contains_key("l2_responses.172.18.0.201"));
}

#[test]
fn tc_answers_arp_and_ns_for_announced_addresses() {
    if !require_root("tc_answers_arp_and_ns_for_announced_addresses") {
        return;
    }
    let n = l2_node("l2t");
    let mut dp = dataplane(&n, XdpMode::Off, Duration::from_mins(1));
    dp.apply(&scene()).expect("apply");
    let fixtures = fixtures(Hook::FromUplink, TC_REDIRECT, TC_OK);
    for f in &fixtures {
        check_on(&mut dp, f);
    }
    let (v4, v6) = answers(&fixtures, TC_REDIRECT);
    assert_eq!(common::stat(&dp, "l2_responses"), v4 + v6);

    // The service stops announcing (incremental): its addresses are no longer answered.
    let mut next = scene();
    next.services[0].l2_announce = false;
    dp.sync(Some(&scene()), &next).expect("sync");
    let stopped = &fixtures[0];
    check_on(
        &mut dp,
        &Fixture {
            description: "l2Announce withdrawn: the ARP request passes",
            hook: stopped.hook,
            input: stopped.input.clone(),
            verdict: TC_OK,
            output: stopped.input.clone(),
        },
    );
    assert!(!dp
        .stats()
        .unwrap()
        .other
        .contains_key("l2_responses.172.18.0.200"));
}

#[test]
fn a_lapsed_liveness_answers_nothing_until_refreshed() {
    if !require_root("a_lapsed_liveness_answers_nothing_until_refreshed") {
        return;
    }
    let n = l2_node("l2s");
    let liveness = Duration::from_millis(300);
    let mut dp = dataplane(&n, XdpMode::Native, liveness);
    dp.apply(&scene()).expect("apply");
    assert!(
        dp.maintenance_interval().unwrap() <= liveness / 3,
        "maintain() runs often enough to keep the liveness"
    );
    let answered = &fixtures(Hook::Xdp, XDP_TX, XDP_PASS)[0];
    let tc_answered = &fixtures(Hook::FromUplink, TC_REDIRECT, TC_OK)[3];
    check_on(&mut dp, answered);
    // No refresh for longer than the window: both hooks pass the questions untouched.
    std::thread::sleep(liveness + Duration::from_millis(100));
    for (f, verdict) in [(answered, XDP_PASS), (tc_answered, TC_OK)] {
        check_on(
            &mut dp,
            &Fixture {
                description: "stale liveness: untouched",
                hook: f.hook,
                input: f.input.clone(),
                verdict,
                output: f.input.clone(),
            },
        );
    }
    // maintain() refreshes it: answered again.
    dp.maintain(Duration::from_secs(1)).expect("maintain");
    check_on(&mut dp, answered);
    check_on(&mut dp, tc_answered);
}

/// While addresses are announced `maintain()` is called every third of the liveness window,
/// but walks `dp_ct` only on the conntrack interval: a call in between refreshes the liveness
/// and leaves an expired connection in place; the pass on time removes it.
#[test]
fn maintain_refreshes_the_liveness_every_call_and_walks_conntrack_on_its_interval() {
    if !require_root(
        "maintain_refreshes_the_liveness_every_call_and_walks_conntrack_on_its_interval",
    ) {
        return;
    }
    let n = l2_node("l2gc");
    let timeouts = n.config().timeouts;
    let mut dp = dataplane(&n, XdpMode::Native, Duration::from_secs(3));
    dp.apply(&scene()).expect("apply");
    let conntrack_interval = dataplane_ebpf::maintenance_interval(&timeouts);
    assert!(
        dp.maintenance_interval().unwrap() < conntrack_interval,
        "announcing: maintain() is asked for more often than conntrack needs"
    );
    // One connection, SYN only: it expires `tcp_syn` after `seen`.
    let syn = eth()
        .ip("10.244.0.5", "10.96.0.40")
        .tcp(41000, 80, TCP_SYN)
        .build();
    dp.run_packet(Hook::FromPod, &syn, 1).expect("SYN");
    let seen = monotonic_now();
    assert_eq!(
        dp.flows().expect("flows").len(),
        1,
        "one connection tracked"
    );
    let liveness = || pinned_l2_cfg(&n).liveness_ns;

    // A pass shortly before its timeout: it stays.
    let first = seen + timeouts.tcp_syn.saturating_sub(Duration::from_secs(2));
    let before = liveness();
    let report = dp.maintain(first).expect("maintain");
    assert_eq!(
        (report.flows_expired, report.flows_remaining),
        (0, Some(1)),
        "a conntrack pass: {report:?}"
    );
    let refreshed = liveness();
    assert!(refreshed > before, "the liveness is refreshed");

    // Three seconds later (the liveness's calls) the connection has expired, but the
    // conntrack interval has not passed: the liveness only.
    let report = dp
        .maintain(first + Duration::from_secs(3))
        .expect("maintain");
    assert_eq!(report, MaintenanceReport::default(), "no conntrack pass");
    let refreshed_again = liveness();
    assert!(
        refreshed_again > refreshed,
        "the liveness is refreshed again"
    );
    assert_eq!(
        dp.flows().expect("flows").len(),
        1,
        "dp_ct untouched: the expired connection is still there"
    );

    // One conntrack interval after the first pass: the next pass removes it.
    let report = dp.maintain(first + conntrack_interval).expect("maintain");
    assert_eq!(
        (report.flows_expired, report.flows_remaining),
        (1, Some(0)),
        "a conntrack pass: {report:?}"
    );
    assert!(liveness() > refreshed_again);
    assert!(dp.flows().expect("flows").is_empty());
}

/// `dp_l2_cfg[0]`, read from its pin.
fn pinned_l2_cfg(n: &TestNode) -> L2Cfg {
    let map = aya::maps::MapData::from_pin(n.pin_dir.join("dp_l2_cfg")).expect("pinned");
    let map: aya::maps::Array<_, L2Cfg> =
        aya::maps::Array::try_from(aya::maps::Map::Array(map)).expect("an array");
    map.get(&0, 0).expect("dp_l2_cfg[0]")
}

/// The addresses `dp_l2_addrs` holds, read from its pin.
fn pinned_addresses(n: &TestNode) -> Vec<IpAddr> {
    let map = aya::maps::MapData::from_pin(n.pin_dir.join("dp_l2_addrs")).expect("pinned");
    let map: aya::maps::HashMap<_, L2Key, L2Value> =
        aya::maps::HashMap::try_from(aya::maps::Map::HashMap(map)).expect("a hash map");
    map.keys()
        .map(|k| {
            let k = k.expect("key");
            k.addr.ip(k.family)
        })
        .collect()
}

#[test]
fn announcing_on_an_uplink_without_a_mac_is_refused_with_nothing_written() {
    if !require_root("announcing_on_an_uplink_without_a_mac_is_refused_with_nothing_written") {
        return;
    }
    let n = l2_node("l2r");
    common::ip(&["-n", &n.name, "tuntap", "add", "dev", "tun0", "mode", "tun"]);
    common::ip(&["-n", &n.name, "link", "set", "tun0", "up"]);
    let mut dp = dataplane(&n, XdpMode::Off, Duration::from_mins(1));
    dp.apply(&scene()).expect("apply on eth0");
    let mut on_tun = scene();
    on_tun.node.interfaces.uplink = "tun0".to_owned();
    on_tun.services[1].l2_announce = true;
    match dp.apply(&on_tun) {
        Err(Error::Unsupported {
            feature, object, ..
        }) => {
            assert!(feature.contains("without an Ethernet address"), "{feature}");
            assert!(object.contains("interfaces.uplink tun0"), "{object}");
        }
        other => panic!("refused as unsupported, got {other:?}"),
    }
    let mut held = pinned_addresses(&n);
    held.sort();
    assert_eq!(
        held,
        ["172.18.0.200", "fd00:18::c8"]
            .iter()
            .map(|a| a.parse::<IpAddr>().unwrap())
            .collect::<Vec<_>>(),
        "the refused state wrote nothing: the previous addresses stay"
    );
    assert!(
        common::tcx_programs(&n, "tun0", false).is_empty(),
        "nothing attached to the refused uplink"
    );
    // Removed from the state: the map is emptied.
    let mut none = scene();
    none.services.clear();
    dp.apply(&none).expect("apply without services");
    assert!(pinned_addresses(&n).is_empty());
}
