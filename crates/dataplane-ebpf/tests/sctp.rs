//! SCTP in the datapath with BPF_PROG_TEST_RUN on hand-built packets, against live maps:
//! service translation with the `CRC32c` kept right, conntrack states and their timeouts, the
//! XDP fast path.
//!
//! ```text
//!   pod 10.244.0.5, fd00:244::5 --veth--> [dp_from_pod]     node 172.18.0.2 (eth0)
//!   client 192.0.2.7 --eth0--> [dp_xdp_uplink] / [dp_from_uplink]
//!   diameter   ClusterIP 10.96.0.30:3868 -> 10.244.1.20:3869 (node-b), NodePort 30868
//!   diameter6  ClusterIP fd00:96::30:3868 -> [fd00:244::10]:3869 (local)
//!   XDP: node-b 172.18.0.3 (02:..:03, permanent neighbour) routes 10.244.1.0/24
//! ```
//! Each expected frame is built with its `CRC32c` computed afresh over the whole SCTP packet
//! by the `crc32c` crate (common/sctp.rs); the datapath updates the CRC incrementally
//! (bpf/lib/csum.h), so equal bytes show the two agree.

mod common;

use std::time::Duration;

use common::sctp::{
    chunk, crc_field, crc_ok, frame, sctp, with_crc, ABORT, COOKIE_ACK, COOKIE_ECHO, DATA, INIT,
    INIT_ACK, SHUTDOWN, SHUTDOWN_ACK, SHUTDOWN_COMPLETE,
};
use common::{backend, check, ct_map, eth, hex, node_a as node, require_root, Fixture, TestNode};
use dataplane_core::{Dataplane, DesiredState, ObjectName, Protocol, Service, ServicePort};
use dataplane_ebpf::maps::{
    CtKey, CT_SCTP_ESTAB, CT_TCP_FIN_FWD, CT_TCP_FIN_REV, CT_TCP_REPLY, CT_TCP_RST, CT_TCP_SYN,
};
use dataplane_ebpf::{monotonic_now, EbpfDataplane, Hook, XdpMode};
use proptest::prelude::*;
use proptest::test_runner::{Config, TestRunner};

const OK: u32 = 0;
const XDP_TX: u32 = 3;

fn sctp_port(port: u16, target: u16, node_port: Option<u16>) -> ServicePort {
    ServicePort {
        name: format!("sctp-{port}"),
        protocol: Protocol::Sctp,
        port,
        target_port: target,
        node_port,
    }
}

fn service(name: &str, cluster_ip: &str, port: ServicePort, backend_ip: &str, on: &str) -> Service {
    let mut s = Service::new(ObjectName::new("default", name));
    s.cluster_ips = vec![cluster_ip.parse().unwrap()];
    s.ports = vec![port];
    s.backends = vec![backend(backend_ip, on)];
    s
}

fn scene() -> DesiredState {
    let mut st = DesiredState::new(node());
    st.services = vec![
        service(
            "diameter",
            "10.96.0.30",
            sctp_port(3868, 3869, Some(30868)),
            "10.244.1.20",
            "node-b",
        ),
        service(
            "diameter6",
            "fd00:96::30",
            sctp_port(3868, 3869, None),
            "fd00:244::10",
            "node-a",
        ),
    ];
    st
}

/// An INIT chunk with initiate tag `tag`.
fn init(tag: u32) -> Vec<u8> {
    chunk(INIT, tag, &[])
}

/// An INIT-ACK with initiate tag `tag` from `src`:`sport` to `dst`:`dport`.
fn init_ack(src: &str, dst: &str, sport: u16, dport: u16, vtag: u32, tag: u32) -> Vec<u8> {
    frame(
        src,
        dst,
        sport,
        dport,
        vtag,
        &chunk(INIT_ACK, tag, &[]),
        false,
    )
}

/// The SCTP conntrack key `src`:`sport` -> `dst`:`dport`.
fn key(src: &str, sport: u16, dst: &str, dport: u16) -> CtKey {
    CtKey {
        proto: 132,
        ..common::ct_key(src, sport, dst, dport)
    }
}

/// A node `tag` with a dataplane that applied `st` whole (nothing skipped); the node lives as
/// long as the dataplane is used.
fn applied(tag: &str, st: &DesiredState) -> (TestNode, EbpfDataplane) {
    let n = TestNode::new(tag);
    let mut dp = n.dataplane();
    let report = dp.apply(st).expect("apply");
    assert!(report.skipped.is_empty(), "nothing left out: {report:?}");
    (n, dp)
}

#[test]
#[allow(clippy::too_many_lines)] // a fixture table reads best in one piece
fn service_translation_keeps_the_crc32c_right() {
    if !require_root("service_translation_keeps_the_crc32c_right") {
        return;
    }
    let (_n, mut dp) = applied("sctp", &scene());
    assert!(dp.capabilities().protocols.contains(&Protocol::Sctp));

    // COOKIE-ECHO bundled with DATA: 300 bytes of chunks, an odd DATA length padded.
    let mut echo = chunk(COOKIE_ECHO, 0, &[0xc0; 64]);
    echo.extend(chunk(DATA, 0, &[0x5a; 231]));
    let good = frame("10.244.0.5", "10.244.1.20", 40002, 3869, 0, &init(7), false);
    let fixtures = vec![
        Fixture {
            description: "ClusterIP SCTP INIT from a pod: DNAT to targetPort, CRC32c updated",
            hook: Hook::FromPod,
            input: frame("10.244.0.5", "10.96.0.30", 40000, 3868, 0, &init(7), false),
            verdict: OK,
            output: frame("10.244.0.5", "10.244.1.20", 40000, 3869, 0, &init(7), false),
        },
        Fixture {
            description: "its INIT-ACK arriving on the uplink: reverse NAT to the frontend",
            hook: Hook::FromUplink,
            input: init_ack("10.244.1.20", "10.244.0.5", 3869, 40000, 7, 9),
            verdict: OK,
            output: init_ack("10.96.0.30", "10.244.0.5", 3868, 40000, 7, 9),
        },
        Fixture {
            description: "COOKIE-ECHO + DATA of the same association: same backend",
            hook: Hook::FromPod,
            input: frame("10.244.0.5", "10.96.0.30", 40000, 3868, 9, &echo, false),
            verdict: OK,
            output: frame("10.244.0.5", "10.244.1.20", 40000, 3869, 9, &echo, false),
        },
        Fixture {
            description: "IPv6 ClusterIP SCTP INIT: DNAT, CRC32c updated",
            hook: Hook::FromPod,
            input: frame(
                "fd00:244::5",
                "fd00:96::30",
                50000,
                3868,
                0,
                &init(5),
                false,
            ),
            verdict: OK,
            output: frame(
                "fd00:244::5",
                "fd00:244::10",
                50000,
                3869,
                0,
                &init(5),
                false,
            ),
        },
        Fixture {
            description: "IPv6 INIT-ACK: reverse NAT",
            hook: Hook::FromPod,
            input: init_ack("fd00:244::10", "fd00:244::5", 3869, 50000, 5, 6),
            verdict: OK,
            output: init_ack("fd00:96::30", "fd00:244::5", 3868, 50000, 5, 6),
        },
        Fixture {
            description: "NodePort SCTP from outside: DNAT + SNAT to the node address",
            hook: Hook::FromUplink,
            input: frame("192.0.2.7", "172.18.0.2", 45000, 30868, 0, &init(3), false),
            verdict: OK,
            output: frame("172.18.0.2", "10.244.1.20", 45000, 3869, 0, &init(3), false),
        },
        Fixture {
            description: "NodePort reply: both addresses and ports restored",
            hook: Hook::FromUplink,
            input: init_ack("10.244.1.20", "172.18.0.2", 3869, 45000, 3, 4),
            verdict: OK,
            output: init_ack("172.18.0.2", "192.0.2.7", 30868, 45000, 3, 4),
        },
        Fixture {
            description: "a wrong CRC32c stays wrong by the same error (the receiver drops it \
                          as it would have)",
            hook: Hook::FromPod,
            input: with_crc(
                &frame("10.244.0.5", "10.96.0.30", 40002, 3868, 0, &init(7), false),
                crc_field(&frame(
                    "10.244.0.5",
                    "10.96.0.30",
                    40002,
                    3868,
                    0,
                    &init(7),
                    false,
                )) ^ 0xdead_beef,
            ),
            verdict: OK,
            output: with_crc(&good, crc_field(&good) ^ 0xdead_beef),
        },
        Fixture {
            description: "a CRC32c of 0 (a local stack's CHECKSUM_PARTIAL skb, filled at \
                          transmit) stays 0",
            hook: Hook::FromPod,
            input: with_crc(
                &frame("10.244.0.5", "10.96.0.30", 40003, 3868, 0, &init(7), false),
                0,
            ),
            verdict: OK,
            output: with_crc(
                &frame("10.244.0.5", "10.244.1.20", 40003, 3869, 0, &init(7), false),
                0,
            ),
        },
    ];
    for f in &fixtures {
        let out = check(&mut dp, f);
        if crc_field(&f.input) != 0 && !f.description.starts_with("a wrong") {
            assert!(crc_ok(&out), "{}: CRC32c of the output", f.description);
        }
    }

    // A second client on the same source port: the reverse key backend:3869 -> node:45000
    // is taken, so the source port is translated too (SNAT's port rewrite).
    let other = frame("192.0.2.8", "172.18.0.2", 45000, 30868, 0, &init(11), false);
    let run = dp.run_packet(Hook::FromUplink, &other, 1).expect("run");
    assert_eq!(run.verdict, OK);
    let o = common::sctp::sctp_offset(&run.output);
    let sport = u16::from_be_bytes([run.output[o], run.output[o + 1]]);
    assert_ne!(sport, 45000, "a fresh SNAT port");
    assert_eq!(
        hex(&run.output),
        hex(&frame(
            "172.18.0.2",
            "10.244.1.20",
            sport,
            3869,
            0,
            &init(11),
            false
        )),
        "SNAT port and DNAT port rewritten, CRC32c right"
    );
    check(
        &mut dp,
        &Fixture {
            description: "its reply: back to the second client's port",
            hook: Hook::FromUplink,
            input: init_ack("10.244.1.20", "172.18.0.2", 3869, sport, 11, 12),
            verdict: OK,
            output: init_ack("172.18.0.2", "192.0.2.8", 30868, 45000, 11, 12),
        },
    );
}

/// Sends `chunks` of one association (pod 10.244.0.5:`port` <-> ClusterIP 10.96.0.30:3868,
/// backend 10.244.1.20:3869) in order; `true`: from the client, `false`: the backend's reply.
fn drive(dp: &mut EbpfDataplane, port: u16, chunks: &[(bool, u8)]) {
    for &(from_client, kind) in chunks {
        let c = chunk(kind, 1, &[]);
        let (input, hook) = if from_client {
            (
                frame("10.244.0.5", "10.96.0.30", port, 3868, 1, &c, false),
                Hook::FromPod,
            )
        } else {
            (
                frame("10.244.1.20", "10.244.0.5", 3869, port, 1, &c, false),
                Hook::FromUplink,
            )
        };
        let run = dp.run_packet(hook, &input, 1).expect("run");
        assert_eq!(run.verdict, OK, "chunk {kind} of port {port}");
        assert!(crc_ok(&run.output), "chunk {kind} of port {port}: CRC32c");
    }
}

/// The state bits of the association from port `port`'s forward entry.
fn state_of(n: &TestNode, port: u16) -> u8 {
    ct_map(n)
        .get(&key("10.244.0.5", port, "10.96.0.30", 3868), 0)
        .expect("forward entry")
        .tcp_state
}

/// Conntrack follows the association through its chunks (`nf_conntrack_proto_sctp`'s states:
/// `COOKIE_WAIT`, `ESTABLISHED` on COOKIE-ACK, `SHUTDOWN_*` on SHUTDOWN / SHUTDOWN-ACK,
/// `CLOSED` on SHUTDOWN-COMPLETE or ABORT), and `maintain()` expires each with its timeout: 3 s before
/// COOKIE-ACK and in shutdown, 210 s established, 10 s closed.
#[test]
#[allow(clippy::too_many_lines)]
fn conntrack_states_and_timeouts() {
    if !require_root("conntrack_states_and_timeouts") {
        return;
    }
    let n = TestNode::new("sctpct");
    let mut dp = n.dataplane();
    dp.apply(&scene()).expect("apply");

    // One association through its whole life, the state after each chunk.
    let life: [(bool, u8, u8); 8] = [
        (true, INIT, CT_TCP_SYN),
        (false, INIT_ACK, CT_TCP_SYN | CT_TCP_REPLY),
        (true, COOKIE_ECHO, CT_TCP_SYN | CT_TCP_REPLY),
        (false, COOKIE_ACK, CT_TCP_SYN | CT_TCP_REPLY | CT_SCTP_ESTAB),
        (true, DATA, CT_TCP_SYN | CT_TCP_REPLY | CT_SCTP_ESTAB),
        (
            true,
            SHUTDOWN,
            CT_TCP_SYN | CT_TCP_REPLY | CT_SCTP_ESTAB | CT_TCP_FIN_FWD,
        ),
        (
            false,
            SHUTDOWN_ACK,
            CT_TCP_SYN | CT_TCP_REPLY | CT_SCTP_ESTAB | CT_TCP_FIN_FWD | CT_TCP_FIN_REV,
        ),
        (
            true,
            SHUTDOWN_COMPLETE,
            CT_TCP_SYN
                | CT_TCP_REPLY
                | CT_SCTP_ESTAB
                | CT_TCP_FIN_FWD
                | CT_TCP_FIN_REV
                | CT_TCP_RST,
        ),
    ];
    for (from_client, kind, want) in life {
        drive(&mut dp, 41000, &[(from_client, kind)]);
        assert_eq!(
            state_of(&n, 41000),
            want,
            "state bits after chunk {kind} ({})",
            if from_client { "client" } else { "reply" }
        );
    }
    // A new INIT on the closed association's tuple starts it afresh.
    drive(&mut dp, 41000, &[(true, INIT)]);
    assert_eq!(state_of(&n, 41000), CT_TCP_SYN, "reopened by an INIT");
    drive(
        &mut dp,
        41000,
        &[(false, INIT_ACK), (true, COOKIE_ECHO), (false, COOKIE_ACK)],
    );
    drive(&mut dp, 41000, &[(false, ABORT)]);
    assert_eq!(
        state_of(&n, 41000) & CT_TCP_RST,
        CT_TCP_RST,
        "an ABORT closes it"
    );

    // Four associations left in four states.
    let handshake = [
        (true, INIT),
        (false, INIT_ACK),
        (true, COOKIE_ECHO),
        (false, COOKIE_ACK),
    ];
    drive(&mut dp, 41001, &[(true, INIT), (false, INIT_ACK)]); // COOKIE_WAIT
    drive(&mut dp, 41002, &handshake); // ESTABLISHED
    drive(&mut dp, 41003, &handshake);
    drive(&mut dp, 41003, &[(true, SHUTDOWN)]); // SHUTDOWN_SENT
    assert_eq!(dp.flows().expect("flows").len(), 4);

    let expire = |dp: &mut EbpfDataplane, after: Duration| {
        dp.maintain(monotonic_now() + after)
            .expect("maintain")
            .flows_expired
    };
    assert_eq!(expire(&mut dp, Duration::from_secs(2)), 0, "all within 3 s");
    // Passes one maintenance interval (5 s with the default timeouts) apart: a call sooner
    // refreshes the L2 liveness only and leaves `dp_ct` alone.
    assert_eq!(
        expire(&mut dp, Duration::from_secs(7)),
        2,
        "COOKIE_WAIT and SHUTDOWN_SENT expire after 3 s"
    );
    for port in [41001, 41003] {
        assert!(
            ct_map(&n)
                .get(&key("10.244.0.5", port, "10.96.0.30", 3868), 0)
                .is_err(),
            "port {port}: gone"
        );
    }
    assert_eq!(
        expire(&mut dp, Duration::from_secs(12)),
        1,
        "CLOSED (the aborted one) after 10 s"
    );
    assert_eq!(
        expire(&mut dp, Duration::from_secs(200)),
        0,
        "ESTABLISHED stays within 210 s"
    );
    assert_eq!(
        expire(&mut dp, Duration::from_secs(215)),
        1,
        "ESTABLISHED expires after 210 s"
    );
    assert!(dp.flows().expect("flows").is_empty());
    assert_eq!(dp.stats().expect("stats").flows, 0, "no entry left");
}

/// As sent on by XDP: node-b's MACs, one hop less.
fn to_node_b(b: common::PacketBuilder) -> common::PacketBuilder {
    b.macs([0x02, 0, 0, 0, 0, 0x02], [0x02, 0, 0, 0, 0, 0x03])
        .ttl(63)
}

/// A node `tag` whose FIB sends node-b's pods (10.244.1.0/24, `fd00:244:1::/64`) to node-b
/// (02:..:03, permanent neighbours), with a native-XDP dataplane that applied `st`.
fn xdp_dataplane(tag: &str, st: &DesiredState) -> (TestNode, EbpfDataplane) {
    let n = TestNode::routed_to_node_b(tag);
    n.route6_via_neighbour("fd00:244:1::/64", "fd00:18::3", "02:00:00:00:00:03");
    let mut c = n.config();
    c.xdp = XdpMode::Native;
    let mut dp = EbpfDataplane::new(c).expect("eBPF dataplane with XDP loads");
    dp.apply(st).expect("apply");
    (n, dp)
}

/// The XDP fast path translates an SCTP NodePort (SNAT to a remote backend) with the `CRC32c`
/// updated, and TC reverse-translates the reply from the entries XDP wrote.
#[test]
fn xdp_nodeport_snat() {
    if !require_root("xdp_nodeport_snat") {
        return;
    }
    let (_n, mut dp) = xdp_dataplane("sctpxdp", &scene());
    let mut data = chunk(DATA, 0, &[0x42; 500]);
    data.extend(chunk(DATA, 0, &[0x43; 3]));
    for f in [
        Fixture {
            description: "XDP: SCTP NodePort INIT, DNAT + SNAT, CRC32c updated, XDP_TX",
            hook: Hook::Xdp,
            input: frame("192.0.2.7", "172.18.0.2", 45020, 30868, 0, &init(3), false),
            verdict: XDP_TX,
            output: sctp(
                to_node_b(eth().ip("172.18.0.2", "10.244.1.20")),
                45020,
                3869,
                0,
                &init(3),
            ),
        },
        Fixture {
            description: "XDP: DATA of the association, from conntrack",
            hook: Hook::Xdp,
            input: frame("192.0.2.7", "172.18.0.2", 45020, 30868, 8, &data, false),
            verdict: XDP_TX,
            output: sctp(
                to_node_b(eth().ip("172.18.0.2", "10.244.1.20")),
                45020,
                3869,
                8,
                &data,
            ),
        },
        Fixture {
            description: "TC: the INIT-ACK, reverse-translated from XDP's entries",
            hook: Hook::FromUplink,
            input: init_ack("10.244.1.20", "172.18.0.2", 3869, 45020, 3, 8),
            verdict: OK,
            output: init_ack("172.18.0.2", "192.0.2.7", 30868, 45020, 3, 8),
        },
    ] {
        let out = check(&mut dp, &f);
        assert!(crc_ok(&out), "{}: CRC32c", f.description);
    }
}

/// The datapath's incremental `CRC32c` update agrees with a full recomputation for random
/// ports, packet lengths and contents, both families, the DNAT of a request (destination
/// port) and the reverse NAT of its reply (source port).
#[test]
fn incremental_crc32c_matches_a_full_recomputation() {
    if !require_root("incremental_crc32c_matches_a_full_recomputation") {
        return;
    }
    let n = TestNode::new("sctpprop");
    let dp = std::cell::RefCell::new(n.dataplane());
    let cases = std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|c| c.parse().ok())
        .unwrap_or(64);
    let mut runner = TestRunner::new(Config {
        cases,
        ..Config::default()
    });
    // A client port of its own per case: conntrack keeps the earlier cases' entries (a reset
    // would reload the programs each time).
    let next_client = std::cell::Cell::new(1024u16);
    let strategy = (
        1u16..=u16::MAX,
        1u16..=u16::MAX,
        any::<bool>(),
        any::<u32>(),
        proptest::collection::vec(any::<u8>(), 0..1400),
    );
    runner
        .run(&strategy, |(port, target, v6, vtag, payload)| {
            let client = next_client.get();
            next_client.set(client.wrapping_add(1).max(1024));
            let (vip, be, pod, on) = if v6 {
                ("fd00:96::40", "fd00:244::10", "fd00:244::5", "node-a")
            } else {
                ("10.96.0.40", "10.244.1.20", "10.244.0.5", "node-b")
            };
            let mut st = DesiredState::new(node());
            st.services = vec![service("prop", vip, sctp_port(port, target, None), be, on)];
            let mut dp = dp.borrow_mut();
            dp.apply(&st).expect("apply");
            let chunks = chunk(DATA, 0, &payload);
            let hook_back = if v6 { Hook::FromPod } else { Hook::FromUplink };
            for (hook, input, want) in [
                (
                    Hook::FromPod,
                    frame(pod, vip, client, port, vtag, &chunks, false),
                    frame(pod, be, client, target, vtag, &chunks, false),
                ),
                (
                    hook_back,
                    frame(be, pod, target, client, vtag, &chunks, false),
                    frame(vip, pod, port, client, vtag, &chunks, false),
                ),
            ] {
                let run = dp.run_packet(hook, &input, 1).expect("run");
                prop_assert_eq!(run.verdict, OK);
                prop_assert_eq!(hex(&run.output), hex(&want));
            }
            Ok(())
        })
        .expect("the incremental CRC32c equals the full one");
}

/// Per-packet cost of an established association's DNAT with the `CRC32c` update against a TCP
/// connection's through the same hook (prints ns; a measurement, not a check: run with
/// `--ignored --nocapture`). Each run is one packet (`repeat` would run the program again
/// on the packet it already translated); the median of 2000 kernel-measured runs.
#[test]
#[ignore = "a measurement: prints ns per packet"]
fn sctp_translation_cost() {
    if !require_root("sctp_translation_cost") {
        return;
    }
    let n = TestNode::new("sctpcost");
    let mut dp = n.dataplane();
    let mut st = scene();
    st.services.push(service(
        "web",
        "10.96.0.31",
        ServicePort {
            name: "http".into(),
            protocol: Protocol::Tcp,
            port: 80,
            target_port: 8080,
            node_port: None,
        },
        "10.244.1.20",
        "node-b",
    ));
    dp.apply(&st).expect("apply");
    let payload = [0x5a; 1000];
    let sctp_first = frame("10.244.0.5", "10.96.0.30", 43000, 3868, 0, &init(1), false);
    let sctp_data = frame(
        "10.244.0.5",
        "10.96.0.30",
        43000,
        3868,
        1,
        &chunk(DATA, 0, &payload),
        false,
    );
    let tcp_first = eth()
        .ip("10.244.0.5", "10.96.0.31")
        .tcp(43000, 80, common::TCP_SYN)
        .build();
    let tcp_data = eth()
        .ip("10.244.0.5", "10.96.0.31")
        .tcp(43000, 80, common::TCP_ACK)
        .payload(&payload)
        .build();
    let mut median = |first: &[u8], data: &[u8]| {
        dp.run_packet(Hook::FromPod, first, 1).expect("run");
        let mut ns: Vec<u128> = (0..2000)
            .map(|_| {
                let run = dp.run_packet(Hook::FromPod, data, 1).expect("run");
                assert_eq!(run.verdict, OK);
                run.duration.as_nanos()
            })
            .collect();
        ns.sort_unstable();
        ns[ns.len() / 2]
    };
    let tcp = median(&tcp_first, &tcp_data);
    let sctp = median(&sctp_first, &sctp_data);
    println!(
        "established DNAT, 1000-byte payload, dp_from_pod: TCP {tcp} ns, SCTP (CRC32c update) \
         {sctp} ns"
    );
}

const REDIRECT: u32 = 7;

fn swap_macs(b: common::PacketBuilder) -> common::PacketBuilder {
    b.macs([0x02, 0, 0, 0, 0, 0x02], [0x02, 0, 0, 0, 0, 0x01])
}

/// DSR scene on node-a (172.18.0.2, `fd00:18::2`): `diameter-dsr` NodePort 30870 (externalMode
/// Dsr) -> 10.244.1.20:3869 on node-b, `diameter-dsr6` NodePort 30872 (Dsr) ->
/// [`fd00:244:1::20`]:3869 on node-b, and local backends 10.244.0.10 / `fd00:244::10` (NodePorts
/// 30871 / 30873, Dsr) whose requests a remote ingress node sends here with its option.
fn dsr_scene() -> DesiredState {
    let dsr = |name: &str, vip: &str, np: u16, be: &str, on: &str| {
        let mut s = service(name, vip, sctp_port(3868, 3869, Some(np)), be, on);
        s.external_mode = Some(dataplane_core::ExternalMode::Dsr);
        s
    };
    let mut st = DesiredState::new(node());
    st.node.pod_cidrs.push("fd00:244::/64".parse().unwrap());
    st.services = vec![
        dsr("diameter-dsr", "10.96.0.33", 30870, "10.244.1.20", "node-b"),
        dsr(
            "diameter-dsr-local",
            "10.96.0.34",
            30871,
            "10.244.0.10",
            "node-a",
        ),
        dsr(
            "diameter-dsr6",
            "fd00:96::43",
            30872,
            "fd00:244:1::20",
            "node-b",
        ),
        dsr(
            "diameter-dsr6-local",
            "fd00:96::44",
            30873,
            "fd00:244::10",
            "node-a",
        ),
    ];
    st
}

/// SCTP NodePort with DSR on both nodes' sides, both families: on the ingress node the request
/// goes to the remote backend with the client kept, the frontend in the IPv4 option or the IPv6
/// destination-options header, the destination port rewritten with the `CRC32c` updated (an
/// address or header change leaves it alone: it covers the SCTP packet only); a request the
/// option would push over the MTU gets fragmentation needed; a local backend gets plain DNAT.
/// On the backend's node the option is learnt and stripped (CRC untouched) and the pod's reply
/// leaves from the frontend, its source port rewritten with the CRC updated.
///
/// ```text
///   client 192.0.2.7 / 2001:db8:9::7 --eth0--> [dp_from_uplink] node-a --option--> node-b
///   ingress node 172.18.0.9 / fd00:18::9 --option--> [dp_from_uplink] --> pod 10.244.0.10
///   pod 10.244.0.10 / fd00:244::10 --veth--> [dp_from_pod] --from the frontend--> client
/// ```
#[test]
#[allow(clippy::too_many_lines)] // a fixture table reads best in one piece
fn dsr_nodeport() {
    if !require_root("dsr_nodeport") {
        return;
    }
    let (_n, mut dp) = applied("sctpdsr", &dsr_scene());

    let (client6, node6, remote6, local6) = (
        "2001:db8:9::7",
        "fd00:18::2",
        "fd00:244:1::20",
        "fd00:244::10",
    );
    let mut data = chunk(COOKIE_ECHO, 0, &[0xc0; 32]);
    data.extend(chunk(DATA, 0, &[0x5a; 101]));
    // 1500-byte IPv4 / IPv6 packets (IP + 12 + a 4-byte chunk header + body) that the option
    // or header would push over the MTU.
    let big = frame(
        "192.0.2.7",
        "172.18.0.2",
        45001,
        30870,
        9,
        &chunk(DATA, 0, &[0x5a; 1464]),
        false,
    );
    let big6 = frame(
        client6,
        node6,
        45001,
        30872,
        9,
        &chunk(DATA, 0, &[0x5a; 1444]),
        false,
    );
    assert_eq!((big.len(), big6.len()), (14 + 1500, 14 + 1500));
    let fixtures = vec![
        Fixture {
            description: "DSR SCTP NodePort INIT: DNAT to the remote backend, client kept, \
                          option added, CRC32c updated for the port",
            hook: Hook::FromUplink,
            input: frame("192.0.2.7", "172.18.0.2", 45000, 30870, 0, &init(3), false),
            verdict: OK,
            output: sctp(
                eth()
                    .ip("192.0.2.7", "10.244.1.20")
                    .dsr_option("172.18.0.2", 30870),
                45000,
                3869,
                0,
                &init(3),
            ),
        },
        Fixture {
            description: "DSR SCTP COOKIE-ECHO + DATA: same backend, option on every request",
            hook: Hook::FromUplink,
            input: frame("192.0.2.7", "172.18.0.2", 45000, 30870, 9, &data, false),
            verdict: OK,
            output: sctp(
                eth()
                    .ip("192.0.2.7", "10.244.1.20")
                    .dsr_option("172.18.0.2", 30870),
                45000,
                3869,
                9,
                &data,
            ),
        },
        Fixture {
            description: "DSR SCTP request that no longer fits the MTU: fragmentation needed",
            hook: Hook::FromUplink,
            output: swap_macs(
                eth()
                    .ip("172.18.0.2", "192.0.2.7")
                    .icmp_frag_needed(common::quoted(&big), 1492),
            )
            .build(),
            input: big,
            verdict: REDIRECT,
        },
        Fixture {
            description: "DSR SCTP NodePort with a local backend: plain DNAT, no option",
            hook: Hook::FromUplink,
            input: frame("192.0.2.7", "172.18.0.2", 45002, 30871, 0, &init(4), false),
            verdict: OK,
            output: frame("192.0.2.7", "10.244.0.10", 45002, 3869, 0, &init(4), false),
        },
        Fixture {
            description: "backend's node: an SCTP request with the DSR option is delivered \
                          without it, CRC32c untouched",
            hook: Hook::FromUplink,
            input: sctp(
                eth()
                    .ip("192.0.2.8", "10.244.0.10")
                    .dsr_option("172.18.0.9", 30870),
                46000,
                3869,
                0,
                &init(5),
            ),
            verdict: OK,
            output: frame("192.0.2.8", "10.244.0.10", 46000, 3869, 0, &init(5), false),
        },
        Fixture {
            description: "backend's node: the pod's INIT-ACK leaves from the frontend it \
                          learnt, CRC32c updated for the source port",
            hook: Hook::FromPod,
            input: init_ack("10.244.0.10", "192.0.2.8", 3869, 46000, 5, 6),
            verdict: OK,
            output: init_ack("172.18.0.9", "192.0.2.8", 30870, 46000, 5, 6),
        },
        Fixture {
            description: "IPv6 DSR SCTP NodePort INIT: DNAT to the remote backend, client \
                          kept, destination options {frontend} added, CRC32c updated",
            hook: Hook::FromUplink,
            input: frame(client6, node6, 45000, 30872, 0, &init(3), false),
            verdict: OK,
            output: sctp(
                eth().ip(client6, remote6).dsr6_option(node6, 30872),
                45000,
                3869,
                0,
                &init(3),
            ),
        },
        Fixture {
            description: "IPv6 DSR SCTP COOKIE-ECHO + DATA: header on every request",
            hook: Hook::FromUplink,
            input: frame(client6, node6, 45000, 30872, 9, &data, false),
            verdict: OK,
            output: sctp(
                eth().ip(client6, remote6).dsr6_option(node6, 30872),
                45000,
                3869,
                9,
                &data,
            ),
        },
        Fixture {
            description: "IPv6 DSR SCTP request that no longer fits the MTU: Packet Too Big",
            hook: Hook::FromUplink,
            output: swap_macs(
                eth()
                    .ip(node6, client6)
                    .icmp6_packet_too_big(common::quoted(&big6), 1476),
            )
            .build(),
            input: big6,
            verdict: REDIRECT,
        },
        Fixture {
            description: "IPv6 DSR SCTP NodePort with a local backend: plain DNAT, no header",
            hook: Hook::FromUplink,
            input: frame(client6, node6, 45002, 30873, 0, &init(4), false),
            verdict: OK,
            output: frame(client6, local6, 45002, 3869, 0, &init(4), false),
        },
        Fixture {
            description: "IPv6 backend's node: an SCTP request with the DSR header is \
                          delivered without it, CRC32c untouched",
            hook: Hook::FromUplink,
            input: sctp(
                eth().ip(client6, local6).dsr6_option("fd00:18::9", 30872),
                46000,
                3869,
                0,
                &init(5),
            ),
            verdict: OK,
            output: frame(client6, local6, 46000, 3869, 0, &init(5), false),
        },
        Fixture {
            description: "IPv6 backend's node: the pod's INIT-ACK leaves from the frontend \
                          it learnt, CRC32c updated",
            hook: Hook::FromPod,
            input: init_ack(local6, client6, 3869, 46000, 5, 6),
            verdict: OK,
            output: init_ack("fd00:18::9", client6, 30872, 46000, 5, 6),
        },
    ];
    for f in &fixtures {
        let out = check(&mut dp, f);
        if f.verdict == OK {
            assert!(crc_ok(&out), "{}: CRC32c of the output", f.description);
        }
    }
    assert_eq!(
        common::stat(&dp, "dsr_forwarded"),
        4,
        "SCTP requests that went out with DSR's option or header"
    );
    assert_eq!(
        common::stat(&dp, "dsr_replies"),
        2,
        "two replies answered from the frontend"
    );
    assert_eq!(common::stat(&dp, "frag_needed"), 2, "one per family");
}

/// An ICMP error from `src` to `dst` quoting `quote` (the IP header and the first 8 bytes
/// of SCTP, or the whole SCTP packet as a router quotes a small one): `mtu` 0 port
/// unreachable, else fragmentation needed / Packet Too Big with that MTU.
fn icmp_quoting(src: &str, dst: &str, quote: Vec<u8>, mtu: u16) -> Vec<u8> {
    let b = eth().ip(src, dst);
    let v6 = src.contains(':');
    match (mtu, v6) {
        (0, _) => b.icmp_unreachable(quote),
        (m, false) => b.icmp_frag_needed(quote, m),
        (m, true) => b.icmp6_packet_too_big(quote, u32::from(m)),
    }
    .build()
}

/// The IP packet of `frame` (its whole SCTP packet quoted), its `CRC32c` field set to
/// `crc`: what an error quoting the whole packet holds after the translation, which rewrites
/// the quoted ports and leaves the CRC as it was (bpf/lib/icmp.h; the receiving SCTP stack
/// matches an error by addresses, ports and verification tag, `sctp_err_lookup()`, not by the
/// quoted CRC; netfilter would recompute it over a quote this long).
fn whole(frame: &[u8], crc: u32) -> Vec<u8> {
    with_crc(frame, crc)[14..].to_vec()
}

/// ICMP errors quoting a translated SCTP packet are reverse-translated as TCP/UDP ones are:
/// the quoted addresses and ports back to what the other side sent or expects, the error
/// sent on to it, the quoted IPv4 header checksum and the ICMP checksum fixed. Quotes of 8
/// bytes of SCTP (ports and verification tag) and of the whole packet (its `CRC32c` left
/// alone, see [`whole`]).
#[test]
#[allow(clippy::too_many_lines)] // a fixture table reads best in one piece
fn icmp_errors_about_translated_associations() {
    if !require_root("icmp_errors_about_translated_associations") {
        return;
    }
    let (_n, mut dp) = applied("sctpicmp", &scene());
    // The associations the errors are about: a pod's ClusterIP INIT (v4 and v6) and an
    // outside client's NodePort INIT (SNAT to the node address).
    for (hook, input) in [
        (
            Hook::FromPod,
            frame("10.244.0.5", "10.96.0.30", 40000, 3868, 0, &init(7), false),
        ),
        (
            Hook::FromPod,
            frame(
                "fd00:244::5",
                "fd00:96::30",
                50000,
                3868,
                0,
                &init(5),
                false,
            ),
        ),
        (
            Hook::FromUplink,
            frame("192.0.2.7", "172.18.0.2", 45000, 30868, 0, &init(3), false),
        ),
    ] {
        let run = dp.run_packet(hook, &input, 1).expect("run");
        assert_eq!(run.verdict, OK, "association opened");
    }
    let q = |src: &str, dst: &str, sport, dport, vtag, chunks: &[u8]| {
        common::quoted(&frame(src, dst, sport, dport, vtag, chunks, false))
    };
    let to_backend = frame("10.244.0.5", "10.244.1.20", 40000, 3869, 0, &init(7), false);
    let to_backend6 = frame(
        "fd00:244::5",
        "fd00:244::10",
        50000,
        3869,
        0,
        &init(5),
        false,
    );
    let fixtures = vec![
        Fixture {
            description: "ICMP port unreachable from an SCTP backend: back to the client, \
                          quoting the frontend",
            hook: Hook::FromUplink,
            input: icmp_quoting(
                "10.244.1.20",
                "10.244.0.5",
                q("10.244.0.5", "10.244.1.20", 40000, 3869, 0, &init(7)),
                0,
            ),
            verdict: OK,
            output: icmp_quoting(
                "10.96.0.30",
                "10.244.0.5",
                q("10.244.0.5", "10.96.0.30", 40000, 3868, 0, &init(7)),
                0,
            ),
        },
        Fixture {
            description: "the same quoting the whole SCTP packet: ports translated, CRC32c \
                          left as quoted",
            hook: Hook::FromUplink,
            input: icmp_quoting("10.244.1.20", "10.244.0.5", to_backend[14..].to_vec(), 0),
            verdict: OK,
            output: icmp_quoting(
                "10.96.0.30",
                "10.244.0.5",
                whole(
                    &frame("10.244.0.5", "10.96.0.30", 40000, 3868, 0, &init(7), false),
                    crc_field(&to_backend),
                ),
                0,
            ),
        },
        Fixture {
            description: "ICMP fragmentation needed from a router about a SNATed SCTP \
                          NodePort association: to the client, quoting client -> NodePort",
            hook: Hook::FromUplink,
            input: icmp_quoting(
                "172.18.0.3",
                "172.18.0.2",
                q("172.18.0.2", "10.244.1.20", 45000, 3869, 0, &init(3)),
                1400,
            ),
            verdict: OK,
            output: icmp_quoting(
                "172.18.0.3",
                "192.0.2.7",
                q("192.0.2.7", "172.18.0.2", 45000, 30868, 0, &init(3)),
                1400,
            ),
        },
        Fixture {
            description: "ICMP error about a translated SCTP reply: to the backend, quoting \
                          its packet",
            hook: Hook::FromPod,
            input: icmp_quoting(
                "10.244.0.1",
                "10.96.0.30",
                common::quoted(&init_ack("10.96.0.30", "10.244.0.5", 3868, 40000, 7, 9)),
                0,
            ),
            verdict: OK,
            output: icmp_quoting(
                "10.244.0.1",
                "10.244.1.20",
                common::quoted(&init_ack("10.244.1.20", "10.244.0.5", 3869, 40000, 7, 9)),
                0,
            ),
        },
        Fixture {
            description: "ICMPv6 Packet Too Big from an SCTP backend: back to the client, \
                          quoting the frontend",
            hook: Hook::FromPod,
            input: icmp_quoting(
                "fd00:244::10",
                "fd00:244::5",
                q("fd00:244::5", "fd00:244::10", 50000, 3869, 0, &init(5)),
                1280,
            ),
            verdict: OK,
            output: icmp_quoting(
                "fd00:96::30",
                "fd00:244::5",
                q("fd00:244::5", "fd00:96::30", 50000, 3868, 0, &init(5)),
                1280,
            ),
        },
        Fixture {
            description: "the same quoting the whole SCTP packet: ports translated, CRC32c \
                          left as quoted",
            hook: Hook::FromPod,
            input: icmp_quoting(
                "fd00:244::10",
                "fd00:244::5",
                to_backend6[14..].to_vec(),
                1280,
            ),
            verdict: OK,
            output: icmp_quoting(
                "fd00:96::30",
                "fd00:244::5",
                whole(
                    &frame(
                        "fd00:244::5",
                        "fd00:96::30",
                        50000,
                        3868,
                        0,
                        &init(5),
                        false,
                    ),
                    crc_field(&to_backend6),
                ),
                1280,
            ),
        },
    ];
    let before = common::stat(&dp, "reverse_translated");
    for f in &fixtures {
        check(&mut dp, f);
    }
    assert_eq!(
        common::stat(&dp, "reverse_translated") - before,
        6,
        "each error reverse-translated"
    );
}

/// The XDP fast path's SCTP DSR: the option (IPv4) or destination-options header (IPv6)
/// added, byte-identical to TC's, the destination port rewritten with the `CRC32c` updated
/// in place, sent to node-b with `XDP_TX`.
#[test]
fn xdp_dsr_nodeport() {
    if !require_root("xdp_dsr_nodeport") {
        return;
    }
    let (_n, mut dp) = xdp_dataplane("sctpxdpdsr", &dsr_scene());
    let (client6, node6, remote6) = ("2001:db8:9::7", "fd00:18::2", "fd00:244:1::20");
    let mut data = chunk(DATA, 0, &[0x42; 500]);
    data.extend(chunk(DATA, 0, &[0x43; 3]));
    for f in [
        Fixture {
            description: "XDP: DSR SCTP NodePort INIT, option added, CRC32c updated, XDP_TX",
            hook: Hook::Xdp,
            input: frame("192.0.2.7", "172.18.0.2", 45030, 30870, 0, &init(3), false),
            verdict: XDP_TX,
            output: sctp(
                to_node_b(eth().ip("192.0.2.7", "10.244.1.20")).dsr_option("172.18.0.2", 30870),
                45030,
                3869,
                0,
                &init(3),
            ),
        },
        Fixture {
            description: "XDP: DATA of the DSR association, from conntrack",
            hook: Hook::Xdp,
            input: frame("192.0.2.7", "172.18.0.2", 45030, 30870, 8, &data, false),
            verdict: XDP_TX,
            output: sctp(
                to_node_b(eth().ip("192.0.2.7", "10.244.1.20")).dsr_option("172.18.0.2", 30870),
                45030,
                3869,
                8,
                &data,
            ),
        },
        Fixture {
            description: "XDP: IPv6 DSR SCTP NodePort INIT, destination options added, CRC32c \
                          updated, XDP_TX",
            hook: Hook::Xdp,
            input: frame(client6, node6, 45030, 30872, 0, &init(3), false),
            verdict: XDP_TX,
            output: sctp(
                to_node_b(eth().ip(client6, remote6)).dsr6_option(node6, 30872),
                45030,
                3869,
                0,
                &init(3),
            ),
        },
    ] {
        let out = check(&mut dp, &f);
        assert!(crc_ok(&out), "{}: CRC32c", f.description);
    }
    assert_eq!(common::stat(&dp, "dsr_forwarded"), 3);
}
