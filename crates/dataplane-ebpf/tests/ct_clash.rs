//! Conntrack clashes in the one key space: two connections from one client port to two
//! ports of a service that pick the same backend, and garbage collection of entries whose
//! reverse keys are gone or taken by another connection.
//!
//! ```text
//!   pod 10.244.0.5:40000 --veth--> [dp_from_pod] --> 10.96.0.30:80 \
//!                                                    10.96.0.30:81 -+-> 10.244.1.20:8080 (node-b)
//!   replies 10.244.1.20:8080 --eth0--> [dp_from_uplink] --> back to the pod
//! ```
//! The service has a single backend, so both connections must pick it: the second gets
//! another source port; the first keeps its entries.

mod common;

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use common::{
    answered, backend, checksum_ok, eth, hex, node_a, require_root, PinDirs, TestNode, TCP_ACK,
    TCP_SYN,
};
use dataplane_core::{Dataplane, DesiredState, ObjectName, Protocol, Service, ServicePort};
use dataplane_ebpf::maps::{
    family_of, Addr, Be16, CtEntry, CtKey, CT_F_REV, CT_F_SNAT, CT_TCP_SYN,
};
use dataplane_ebpf::{monotonic_now, EbpfConfig, EbpfDataplane, Hook};
use dataplane_testkit::{probe_from, Family, Lab, LabSpec, TcpSession, SERVER_PORT};

const CLIENT: &str = "10.244.0.5";
const VIP: &str = "10.96.0.30";
const BACKEND: &str = "10.244.1.20";
const OK: u32 = 0;
const TCP_RST: u8 = 0x04;

fn two_port_service() -> Service {
    let mut s = Service::new(ObjectName::new("default", "two-port"));
    s.cluster_ips = vec![VIP.parse().unwrap()];
    s.ports = [80, 81]
        .into_iter()
        .map(|port| ServicePort {
            name: format!("tcp-{port}"),
            protocol: Protocol::Tcp,
            port,
            target_port: 8080,
            node_port: None,
        })
        .collect();
    s.backends = vec![backend(BACKEND, "node-b")];
    s
}

fn state(services: Vec<Service>) -> DesiredState {
    let mut st = DesiredState::new(node_a());
    st.services = services;
    st
}

/// (source, destination) of an IPv4 TCP frame, after checking both checksums.
fn tuple(what: &str, frame: &[u8]) -> (SocketAddr, SocketAddr) {
    let ip = &frame[14..];
    let hl = usize::from(ip[0] & 0x0f) * 4;
    assert!(checksum_ok(&ip[..hl]), "{what}: IPv4 header checksum");
    let tcp = &ip[hl..];
    let mut pseudo = Vec::new();
    pseudo.extend(&ip[12..20]);
    pseudo.extend([0, 6]);
    pseudo.extend(u16::try_from(tcp.len()).unwrap().to_be_bytes());
    pseudo.extend(tcp);
    assert!(
        checksum_ok(&pseudo),
        "{what}: TCP checksum of {}",
        hex(frame)
    );
    let addr = |a: &[u8]| IpAddr::from([a[0], a[1], a[2], a[3]]);
    let port = |p: &[u8]| u16::from_be_bytes([p[0], p[1]]);
    (
        SocketAddr::new(addr(&ip[12..16]), port(&tcp[0..2])),
        SocketAddr::new(addr(&ip[16..20]), port(&tcp[2..4])),
    )
}

fn sa(ip: &str, port: u16) -> SocketAddr {
    SocketAddr::new(ip.parse().unwrap(), port)
}

/// Runs `frame` through `hook` and returns the tuple it leaves with (checksums checked).
fn through(
    dp: &mut EbpfDataplane,
    hook: Hook,
    frame: &[u8],
    what: &str,
) -> (SocketAddr, SocketAddr) {
    let run = dp.run_packet(hook, frame, 1).expect("test run");
    assert_eq!(run.verdict, OK, "{what}: verdict");
    tuple(what, &run.output)
}

/// Two connections from the same client port, to ports 80 and 81 of a service with one
/// backend: the second SYN leaves with another source port (the client's address kept), the
/// first connection's entries stay, and a reply to each goes back to the right frontend port
/// and the client's own port. A reopened connection (RST, then SYN on the same tuple) keeps
/// its port: its own reverse entry may be overwritten.
#[test]
#[allow(clippy::too_many_lines)] // one scenario, step by step
fn second_connection_from_one_client_port_gets_another_port() {
    if !require_root("second_connection_from_one_client_port_gets_another_port") {
        return;
    }
    let n = TestNode::new("clash");
    let mut dp = n.dataplane();
    dp.apply(&state(vec![two_port_service()])).expect("apply");
    let from_client =
        |dport: u16, flags: u8| eth().ip(CLIENT, VIP).tcp(40000, dport, flags).build();
    let from_backend =
        |dport: u16, flags: u8| eth().ip(BACKEND, CLIENT).tcp(8080, dport, flags).build();

    let first = through(
        &mut dp,
        Hook::FromPod,
        &from_client(80, TCP_SYN),
        "SYN to :80",
    );
    assert_eq!(
        first,
        (sa(CLIENT, 40000), sa(BACKEND, 8080)),
        "first: client port kept"
    );
    let second = through(
        &mut dp,
        Hook::FromPod,
        &from_client(81, TCP_SYN),
        "SYN to :81",
    );
    let remapped = second.0.port();
    assert_eq!(
        second.0.ip(),
        CLIENT.parse::<IpAddr>().unwrap(),
        "client address kept"
    );
    assert_ne!(remapped, 40000, "second: another source port");
    assert!(
        (32768..=60999).contains(&remapped),
        "from the SNAT range: {remapped}"
    );
    assert_eq!(second.1, sa(BACKEND, 8080), "same backend");

    // Replies: each to its own frontend port and the client's own port.
    let r1 = through(
        &mut dp,
        Hook::FromUplink,
        &from_backend(40000, TCP_SYN | TCP_ACK),
        "reply 1",
    );
    assert_eq!(
        r1,
        (sa(VIP, 80), sa(CLIENT, 40000)),
        "first connection's reply"
    );
    let r2 = through(
        &mut dp,
        Hook::FromUplink,
        &from_backend(remapped, TCP_SYN | TCP_ACK),
        "reply 2",
    );
    assert_eq!(
        r2,
        (sa(VIP, 81), sa(CLIENT, 40000)),
        "second connection's reply"
    );
    // Both keep flowing, each with its own tuple.
    let d1 = through(&mut dp, Hook::FromPod, &from_client(80, TCP_ACK), "data 1");
    assert_eq!(d1, first, "first connection unchanged");
    let d2 = through(&mut dp, Hook::FromPod, &from_client(81, TCP_ACK), "data 2");
    assert_eq!(d2, second, "second connection keeps its port");
    assert_eq!(
        dp.flows().expect("flows").len(),
        2,
        "two connections tracked"
    );

    // The second connection is reset and reopened: its old reverse entry is its own, yet the
    // client port is still the first connection's, so it is remapped again; the first's
    // entries are untouched.
    through(
        &mut dp,
        Hook::FromPod,
        &from_client(81, TCP_RST | TCP_ACK),
        "RST 2",
    );
    let again = through(
        &mut dp,
        Hook::FromPod,
        &from_client(81, TCP_SYN),
        "SYN 2 again",
    );
    assert_ne!(again.0.port(), 40000);
    let r1 = through(
        &mut dp,
        Hook::FromUplink,
        &from_backend(40000, TCP_ACK),
        "reply 1 again",
    );
    assert_eq!(r1, (sa(VIP, 80), sa(CLIENT, 40000)));
    // The first connection is reset and reopened: the reverse key of its tuple is its own,
    // so it keeps the client's port.
    through(
        &mut dp,
        Hook::FromPod,
        &from_client(80, TCP_RST | TCP_ACK),
        "RST 1",
    );
    let reopened = through(
        &mut dp,
        Hook::FromPod,
        &from_client(80, TCP_SYN),
        "SYN 1 again",
    );
    assert_eq!(reopened, first, "a reopened connection keeps its own tuple");

    // GC expires both; the remapped connection's reverse entry goes with it.
    let report = dp
        .maintain(monotonic_now() + Duration::from_mins(10))
        .expect("maintain");
    assert_eq!(
        (report.flows_expired, report.other["orphans"]),
        (2, 1),
        "{report:?}"
    );
    assert!(dp.flows().expect("flows").is_empty());
}
/// `maintain()` (the conntrack GC) on a conntrack table full of expired connections whose reverse entries are gone
/// (evicted by the LRU) or now belong to another connection: it completes, removes every
/// expired forward entry and exactly the reverse entries that were theirs, and leaves the
/// live connection that took over a reverse key intact.
#[test]
#[allow(clippy::too_many_lines, clippy::similar_names)] // one table, built case by case
fn gc_drains_expired_entries_whose_reverse_keys_are_gone_or_shared() {
    if !require_root("gc_drains_expired_entries_whose_reverse_keys_are_gone_or_shared") {
        return;
    }
    let n = TestNode::new("ctgc");
    let mut dp = n.dataplane();
    dp.apply(&state(vec![two_port_service()])).expect("apply");
    let map = aya::maps::MapData::from_pin(n.pin_dir.join("dp_ct")).expect("pinned dp_ct");
    let mut ct: aya::maps::HashMap<_, CtKey, CtEntry> =
        aya::maps::HashMap::try_from(aya::maps::Map::LruHashMap(map)).expect("dp_ct");
    // The clock of the test: entries last seen at `old` are an hour idle at `now`.
    let old_at = monotonic_now();
    let now = old_at + Duration::from_hours(1);
    let old = u64::try_from(old_at.as_nanos()).unwrap();
    let fresh = u64::try_from(now.as_nanos()).unwrap();
    let key = |src: &str, sport: u16, dst: &str, dport: u16| CtKey {
        saddr: Addr::new(src.parse().unwrap()),
        daddr: Addr::new(dst.parse().unwrap()),
        sport: Be16::new(sport),
        dport: Be16::new(dport),
        proto: 6,
        family: family_of(&src.parse().unwrap()),
        pad0: 0,
        pad: 0,
    };
    // A connection client:sport -> VIP:vport -> backend:8080 (SYN only: tcp_syn timeout),
    // as lb_forward writes it; `snat_port`: the source port the backend sees instead.
    let conn = |sport: u16, vport: u16, snat_port: Option<u16>, seen: u64| {
        let fk = key(CLIENT, sport, VIP, vport);
        let seen_port = snat_port.unwrap_or(sport);
        let rk = key(BACKEND, 8080, CLIENT, seen_port);
        let flags = if snat_port.is_some() { CT_F_SNAT } else { 0 };
        let fe = CtEntry {
            nat_addr: Addr::new(BACKEND.parse().unwrap()),
            snat_addr: Addr::new(CLIENT.parse().unwrap()),
            nat_port: Be16::new(8080),
            snat_port: Be16::new(seen_port),
            flags,
            tcp_state: CT_TCP_SYN,
            created_ns: seen,
            last_seen_ns: seen,
            ..CtEntry::default()
        };
        let re = CtEntry {
            nat_addr: Addr::new(VIP.parse().unwrap()),
            snat_addr: Addr::new(CLIENT.parse().unwrap()),
            nat_port: Be16::new(vport),
            snat_port: Be16::new(sport),
            flags: flags | CT_F_REV,
            ..fe
        };
        (fk, fe, rk, re)
    };
    let mut expired_fwd = Vec::new();
    let mut must_go = Vec::new();
    // 1. 200 expired connections whose reverse entries the LRU evicted.
    for i in 0..200u16 {
        let (fk, fe, _, _) = conn(20000 + i, 80, None, old);
        ct.insert(fk, fe, 0).expect("insert");
        expired_fwd.push(fk);
    }
    // 2. 50 expired connections with their reverse entries: both go.
    for i in 0..50u16 {
        let (fk, fe, rk, re) = conn(30000 + i, 80, None, old);
        ct.insert(fk, fe, 0).expect("insert");
        ct.insert(rk, re, 0).expect("insert");
        expired_fwd.push(fk);
        must_go.push(rk);
    }
    // 3. Expired client:40000 -> VIP:80 whose reverse key (backend:8080 -> client:40000) now
    //    belongs to a live connection client:40000 -> VIP:81; and a second expired
    //    connection naming the same reverse key (client:40000 -> VIP:82, a leftover).
    let (old80, old80e, shared, _) = conn(40000, 80, None, old);
    let (live81, live81e, shared2, live81r) = conn(40000, 81, None, fresh);
    let (old82, old82e, shared3, _) = conn(40000, 82, None, old);
    assert_eq!((shared, shared2), (shared2, shared3));
    for (k, v) in [
        (old80, old80e),
        (live81, live81e),
        (shared, live81r),
        (old82, old82e),
    ] {
        ct.insert(k, v, 0).expect("insert");
    }
    expired_fwd.extend([old80, old82]);
    // 4. An expired connection whose source port was remapped (40001 seen as 50001), and a
    //    live one: the live one and its reverse entry stay.
    let (fk, fe, rk, re) = conn(40001, 81, Some(50001), old);
    for (k, v) in [(fk, fe), (rk, re)] {
        ct.insert(k, v, 0).expect("insert");
    }
    expired_fwd.push(fk);
    must_go.push(rk);
    let (live, livee, liver, liverv) = conn(40002, 81, Some(50002), fresh);
    for (k, v) in [(live, livee), (liver, liverv)] {
        ct.insert(k, v, 0).expect("insert");
    }
    // 5. A reverse entry whose forward entry is gone (an orphan), and one whose forward key
    //    holds an entry of another connection (its reverse key is elsewhere): both go. That
    //    other connection's own reverse entry is missing (evicted): its live forward entry
    //    goes too (`reverse_lost`), so that its next packet sets up both again.
    let (_, _, orphan, orphan_e) = conn(40003, 80, None, fresh);
    ct.insert(orphan, orphan_e, 0).expect("insert");
    let (_, _, stale_rev, stale_rev_e) = conn(40004, 80, Some(50004), fresh);
    let (other, other_e, _, _) = conn(40004, 80, Some(50005), fresh);
    ct.insert(stale_rev, stale_rev_e, 0).expect("insert");
    ct.insert(other, other_e, 0).expect("insert");
    must_go.extend([orphan, stale_rev, other]);

    let report = dp.maintain(now).expect("maintenance completes");
    assert_eq!(report.flows_expired, expired_fwd.len() as u64, "{report:?}");
    assert_eq!(report.other["orphans"], 2, "{report:?}");
    assert_eq!(report.other["reverse_lost"], 1, "{report:?}");
    assert_eq!(report.flows_remaining, Some(2), "{report:?}");
    let left: BTreeMap<CtKey, CtEntry> = ct.iter().map(|r| r.expect("entry")).collect();
    for k in expired_fwd.iter().chain(&must_go) {
        assert!(!left.contains_key(k), "removed: {k:?}");
    }
    assert_eq!(
        left.get(&live81),
        Some(&live81e),
        "the live connection stays"
    );
    assert_eq!(
        left.get(&shared),
        Some(&live81r),
        "its reverse entry too, though an expired connection named the same key"
    );
    assert_eq!(left.get(&live), Some(&livee));
    assert_eq!(left.get(&liver), Some(&liverv));
    assert_eq!(left.len(), 4, "nothing else: {left:#?}");
    // Nothing left to do at the next pass (one interval later: a call sooner leaves `dp_ct`
    // alone).
    let next = now + dp.maintenance_interval().expect("an interval");
    let report = dp.maintain(next).expect("maintain again");
    assert_eq!(
        (
            report.flows_expired,
            report.other["orphans"],
            report.other["reverse_lost"],
            report.flows_remaining
        ),
        (0, 0, 0, Some(2))
    );
}

/// Real TCP in the lab: a long connection from a fixed client port to port 80 of a service
/// with one backend (on node 1), then several short connections from the same port to port
/// 81, each of which picks that backend. Every short one is answered (from another source
/// port, as the backend sees it), and the long one still carries data both ways afterwards.
#[test]
fn long_connection_survives_short_ones_from_its_port() {
    if !require_root("long_connection_survives_short_ones_from_its_port") {
        return;
    }
    let lab = Lab::new(LabSpec {
        nodes: 2,
        pods_per_node: 1,
        external_clients: 0,
        ipv6: false,
    })
    .expect("lab");
    let dir = std::path::PathBuf::from(format!("/sys/fs/bpf/dpe-ctc-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let _pins = PinDirs(vec![dir.clone()]);
    let mut config = EbpfConfig::new(dir);
    config.netns = Some(lab.node(0).netns.path().to_owned());
    let mut dp = EbpfDataplane::new(config).expect("load");
    let (client, server) = (lab.pod(0), lab.pods_on(1).next().expect("a node-1 pod"));
    let mut svc = two_port_service();
    for p in &mut svc.ports {
        p.target_port = SERVER_PORT;
    }
    let mut b = dataplane_core::Backend::new(server.address(Family::V4).unwrap());
    b.node_name = Some(lab.node(1).name.as_str().into());
    svc.backends = vec![b];
    let mut st = lab.desired_state(0);
    st.services = vec![svc];
    dp.apply(&st).expect("apply");

    let client_ip = client.address(Family::V4).unwrap();
    let port = 41234;
    let source = SocketAddr::new("0.0.0.0".parse().unwrap(), port);
    let timeout = Duration::from_secs(3);
    let mut long = TcpSession::open_from(&client.netns, Some(source), sa(VIP, 80), timeout)
        .expect("long connection to :80");
    let (name, seen) = long.request().expect("first request");
    assert_eq!(name, server.name);
    assert_eq!(
        seen,
        SocketAddr::new(client_ip, port),
        "the backend sees the client port"
    );

    for i in 0..5 {
        let out = probe_from(
            &client.netns,
            Some(source),
            sa(VIP, 81),
            Protocol::Tcp,
            timeout,
        )
        .expect("probe");
        let (name, seen) = answered(&out);
        assert_eq!(
            name, server.name,
            "short connection {i} answered by the one backend"
        );
        assert_eq!(
            seen, client_ip,
            "short connection {i}: the client's address"
        );
        let local = match &out {
            dataplane_testkit::ProbeOutcome::Answered { local, .. } => *local,
            _ => unreachable!(),
        };
        assert_eq!(
            local.port(),
            port,
            "short connection {i} left from the same port"
        );
        // Between the short ones, the long one is still usable.
        let (name, seen) = long
            .request()
            .unwrap_or_else(|e| panic!("long connection after short one {i}: {e}"));
        assert_eq!(
            (name.as_str(), seen),
            (server.name.as_str(), SocketAddr::new(client_ip, port))
        );
    }
    for _ in 0..3 {
        let (name, _) = long.request().expect("long connection at the end");
        assert_eq!(name, server.name);
    }
    dp.reset().expect("reset");
}
