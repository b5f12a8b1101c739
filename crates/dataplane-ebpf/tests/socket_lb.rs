//! Socket-level load balancing (`EbpfConfig::socket_lb_cgroup`) in the testkit lab, with real
//! TCP and UDP: this test process moves into its own cgroup v2, the socket hooks attach there,
//! and its sockets (the probes run on threads of this process, inside the client pod's
//! namespace) get backends at `connect()`.
//!
//! One test in its own binary: the hooks see every socket of the process, so no other test
//! may run beside it.

mod common;

use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpStream, UdpSocket};
use std::path::PathBuf;
use std::time::Duration;

use common::{answered, stat, PinDirs};
use dataplane_core::{
    Backend, Dataplane, DesiredState, ObjectName, Protocol, Service, ServicePort,
};
use dataplane_ebpf::{EbpfConfig, EbpfDataplane, EbpfError, SOCK_PROGRAMS};
use dataplane_testkit::{
    probe, require_root, CgroupScope, Family, Lab, LabSpec, ProbeOutcome, SERVER_PORT,
};

const TIMEOUT: Duration = Duration::from_secs(2);

fn pin_dir(node: usize) -> PathBuf {
    PathBuf::from(format!(
        "/sys/fs/bpf/dpe-socklb-{}-n{node}",
        std::process::id()
    ))
}

fn config(lab: &Lab, node: usize, cgroup: Option<PathBuf>) -> EbpfConfig {
    let mut c = EbpfConfig::new(pin_dir(node));
    c.netns = Some(lab.node(node).netns.path().to_owned());
    c.socket_lb_cgroup = cgroup;
    c
}

fn sa(s: &str) -> SocketAddr {
    s.parse().unwrap()
}

fn port(protocol: Protocol) -> ServicePort {
    ServicePort {
        name: protocol.to_string().to_lowercase(),
        protocol,
        port: 80,
        target_port: SERVER_PORT,
        node_port: None,
    }
}

/// web: 10.96.0.10 and `fd00:96::10`, TCP and UDP 80, the node-1 pods; empty: 10.96.0.12, no
/// backends; sticky: 10.96.0.13 with ClientIP affinity (left to the TC programs); own:
/// 10.96.0.14, the client pod itself.
fn state(lab: &Lab, node: usize) -> DesiredState {
    let backends: Vec<Backend> = lab
        .pods_on(1)
        .flat_map(|p| {
            [Family::V4, Family::V6].map(|f| {
                let mut b = Backend::new(p.address(f).expect("pod address"));
                b.node_name = Some(lab.node(1).name.as_str().into());
                b
            })
        })
        .collect();
    let mut web = Service::new(ObjectName::new("default", "web"));
    web.cluster_ips = vec![
        "10.96.0.10".parse().unwrap(),
        "fd00:96::10".parse().unwrap(),
    ];
    web.ports = vec![port(Protocol::Tcp), port(Protocol::Udp)];
    web.backends.clone_from(&backends);
    let mut empty = Service::new(ObjectName::new("default", "empty"));
    empty.cluster_ips = vec!["10.96.0.12".parse().unwrap()];
    empty.ports = vec![port(Protocol::Tcp)];
    let mut sticky = Service::new(ObjectName::new("default", "sticky"));
    sticky.cluster_ips = vec!["10.96.0.13".parse().unwrap()];
    sticky.ports = vec![port(Protocol::Tcp)];
    sticky.backends = backends.into_iter().filter(|b| b.ip.is_ipv4()).collect();
    sticky.session_affinity = dataplane_core::SessionAffinity::ClientIp {
        timeout_seconds: 60,
    };
    let mut own = Service::new(ObjectName::new("default", "own"));
    own.cluster_ips = vec!["10.96.0.14".parse().unwrap()];
    own.ports = vec![port(Protocol::Tcp)];
    let mut client = Backend::new(lab.pod(0).address(Family::V4).expect("pod address"));
    client.node_name = Some(lab.node(0).name.as_str().into());
    own.backends = vec![client];
    let mut s = lab.desired_state(node);
    s.services = vec![web, empty, sticky, own];
    s
}

/// Connects over TCP from the client pod, asks once, and returns the peer address the socket
/// reports and the server's answer line.
fn tcp_exchange(lab: &Lab, dst: SocketAddr) -> (SocketAddr, String) {
    lab.pod(0)
        .netns
        .run(|| {
            let mut s = TcpStream::connect_timeout(&dst, TIMEOUT).expect("connect");
            s.set_read_timeout(Some(TIMEOUT)).unwrap();
            s.write_all(b"hello\n").expect("send");
            let mut line = String::new();
            BufReader::new(&s).read_line(&mut line).expect("answer");
            (s.peer_addr().expect("peer address"), line)
        })
        .expect("enter the client pod")
}

/// A connected UDP socket from the client pod: the peer it reports, where the answer came
/// from (`recvmsg`), and the answer.
fn udp_exchange(lab: &Lab, dst: SocketAddr) -> (SocketAddr, SocketAddr, String) {
    lab.pod(0)
        .netns
        .run(|| {
            let bind = if dst.is_ipv4() { "0.0.0.0:0" } else { "[::]:0" };
            let s = UdpSocket::bind(bind).expect("bind");
            s.set_read_timeout(Some(TIMEOUT)).unwrap();
            s.connect(dst).expect("connect");
            s.send(b"hello\n").expect("send");
            let mut buf = [0u8; 512];
            let (n, from) = s.recv_from(&mut buf).expect("answer");
            (
                s.peer_addr().expect("peer address"),
                from,
                String::from_utf8_lossy(&buf[..n]).into_owned(),
            )
        })
        .expect("enter the client pod")
}

/// The socket hooks' pins (also staged ones a failed attach would leave), sorted.
fn pins_of_sock_links(node: usize) -> Vec<String> {
    let Ok(entries) = std::fs::read_dir(pin_dir(node).join("links")) else {
        return Vec::new();
    };
    let mut pins: Vec<String> = entries
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with("sock"))
        .collect();
    pins.sort();
    pins
}

#[test]
#[allow(clippy::too_many_lines)] // one lab, many checks: building the lab is the slow part
fn socket_lb_end_to_end() {
    if !require_root("socket_lb_end_to_end") {
        return;
    }
    let lab = Lab::new(LabSpec {
        nodes: 2,
        pods_per_node: 2,
        external_clients: 0,
        ipv6: true,
    })
    .expect("lab");
    let _pins = PinDirs((0..2).map(pin_dir).collect());
    for i in 0..2 {
        let _ = std::fs::remove_dir_all(pin_dir(i));
    }
    let scope =
        CgroupScope::enter(&format!("dpe-socklb-{}", std::process::id())).expect("own cgroup v2");

    // A path that is no cgroup v2 directory is refused, naming it, and leaves no link.
    let err = EbpfDataplane::new(config(&lab, 0, Some(PathBuf::from("/tmp")))).unwrap_err();
    assert!(
        matches!(&err, EbpfError::Attach { interface, .. } if interface == "/tmp"),
        "a non-cgroup path is refused: {err:?}"
    );
    assert!(
        pins_of_sock_links(0).is_empty(),
        "no socket link stays pinned"
    );

    // Kept on drop: the restart below must take the hooks an earlier process left.
    let mut c0 = config(&lab, 0, Some(scope.path().to_owned()));
    c0.keep_attachments_on_drop = true;
    let mut dp0 = EbpfDataplane::new(c0).expect("load node 0");
    dp0.apply(&state(&lab, 0)).expect("apply node 0");
    let mut dp1 = EbpfDataplane::new(config(&lab, 1, None)).expect("load node 1");
    dp1.apply(&state(&lab, 1)).expect("apply node 1");
    let mut want: Vec<String> = SOCK_PROGRAMS.iter().map(|p| format!("sock@{p}")).collect();
    want.sort();
    assert_eq!(
        pins_of_sock_links(0),
        want,
        "one pinned link per socket hook"
    );

    let client = lab.pod(0);
    let client_v4 = client.address(Family::V4).unwrap();
    let remote: Vec<String> = lab.pods_on(1).map(|p| p.name.clone()).collect();
    let answered_by = |line: &str| {
        let name = line
            .split_whitespace()
            .next()
            .unwrap_or_default()
            .to_owned();
        assert!(remote.contains(&name), "a node-1 pod answers, got {line:?}");
        name
    };

    // TCP: balanced at connect(); the packets are pod-to-pod, so the TC programs translate
    // nothing and track nothing, and the socket still reports the ClusterIP as its peer.
    let sock0 = stat(&dp0, "socket_translated");
    let tc0 = stat(&dp0, "translated");
    let mut seen = std::collections::BTreeSet::new();
    for _ in 0..16 {
        let (peer, line) = tcp_exchange(&lab, sa("10.96.0.10:80"));
        assert_eq!(
            peer,
            sa("10.96.0.10:80"),
            "getpeername() shows the ClusterIP"
        );
        seen.insert(answered_by(&line));
    }
    assert_eq!(
        seen.len(),
        remote.len(),
        "connections spread over the backends: {seen:?}"
    );
    assert_eq!(stat(&dp0, "socket_translated"), sock0 + 16);
    assert_eq!(
        stat(&dp0, "translated"),
        tc0,
        "no packet needed translating"
    );
    let flows = dp0.flows().expect("flows");
    assert!(
        !flows.iter().any(|f| f.frontend == sa("10.96.0.10:80")),
        "no conntrack entry for connections balanced at the socket: {flows:?}"
    );
    let out = probe(&client.netns, sa("10.96.0.10:80"), Protocol::Tcp, TIMEOUT).expect("probe");
    assert_eq!(
        answered(&out).1,
        client_v4,
        "the backend sees the pod's own address"
    );

    // Connected UDP: recvmsg() reports the answer as coming from the ClusterIP.
    let (peer, from, line) = udp_exchange(&lab, sa("10.96.0.10:80"));
    answered_by(&line);
    assert_eq!(
        peer,
        sa("10.96.0.10:80"),
        "UDP getpeername() shows the ClusterIP"
    );
    assert_eq!(
        from,
        sa("10.96.0.10:80"),
        "UDP recvmsg() shows the ClusterIP"
    );

    // IPv6, and an IPv4 service reached from a dual-stack (AF_INET6) socket.
    let (peer, line) = tcp_exchange(&lab, sa("[fd00:96::10]:80"));
    answered_by(&line);
    assert_eq!(peer, sa("[fd00:96::10]:80"));
    let (peer, from, line) = udp_exchange(&lab, sa("[fd00:96::10]:80"));
    answered_by(&line);
    assert_eq!(
        (peer, from),
        (sa("[fd00:96::10]:80"), sa("[fd00:96::10]:80"))
    );
    let (peer, line) = tcp_exchange(&lab, sa("[::ffff:10.96.0.10]:80"));
    answered_by(&line);
    assert_eq!(
        peer,
        sa("[::ffff:10.96.0.10]:80"),
        "a v4-mapped peer stays v4-mapped"
    );
    assert_eq!(stat(&dp0, "socket_translated"), sock0 + 16 + 1 + 1 + 2 + 1);
    assert_eq!(stat(&dp0, "translated"), tc0, "still no packet translated");

    // Hairpin: the pod is connected to itself inside its namespace and sees its own address
    // (the TC path masquerades it to the node's, because its packets leave the pod).
    let out = probe(&client.netns, sa("10.96.0.14:80"), Protocol::Tcp, TIMEOUT).expect("probe");
    let (backend, seen) = answered(&out);
    assert_eq!(backend, client.name, "the pod reaches itself");
    assert_eq!(seen, client_v4, "and sees its own address");
    assert_eq!(
        stat(&dp0, "socket_translated"),
        sock0 + 16 + 1 + 1 + 2 + 1 + 1
    );

    // What the socket path leaves alone the TC programs still do: a service without
    // backends is rejected, ClientIP affinity keeps the client on one backend.
    let before = stat(&dp0, "socket_translated");
    let out = probe(&client.netns, sa("10.96.0.12:80"), Protocol::Tcp, TIMEOUT).expect("probe");
    assert!(
        matches!(out, ProbeOutcome::Refused),
        "no backend: refused, got {out:?}"
    );
    let sticky: std::collections::BTreeSet<String> = (0..6)
        .map(|_| answered_by(&tcp_exchange(&lab, sa("10.96.0.13:80")).1))
        .collect();
    assert_eq!(
        sticky.len(),
        1,
        "ClientIP affinity: one backend, got {sticky:?}"
    );
    assert_eq!(stat(&dp0, "socket_translated"), before, "both left to TC");
    assert!(
        stat(&dp0, "translated") > tc0,
        "the TC programs translated the affinity ones"
    );

    // Dropped with its attachments kept, the hooks stay and keep balancing (the pinned
    // counters show it after the restart below: one more connect, no packet translated).
    let (sock_kept, tc_kept) = (stat(&dp0, "socket_translated"), stat(&dp0, "translated"));
    drop(dp0);
    let (_, line) = tcp_exchange(&lab, sa("10.96.0.10:80"));
    answered_by(&line);
    assert_eq!(pins_of_sock_links(0), want);
    // A restart without socket_lb_cgroup removes them; the TC path serves the ClusterIP
    // alone, and its connections are tracked again.
    let mut dp0 = EbpfDataplane::new(config(&lab, 0, None)).expect("reload node 0");
    assert_eq!(
        stat(&dp0, "socket_translated"),
        sock_kept + 1,
        "balanced by the kept hooks"
    );
    assert_eq!(stat(&dp0, "translated"), tc_kept, "not by TC");
    dp0.apply(&state(&lab, 0)).expect("apply node 0");
    assert!(
        pins_of_sock_links(0).is_empty(),
        "socket links unpinned: {:?}",
        pins_of_sock_links(0)
    );
    let tc = stat(&dp0, "translated");
    let (peer, line) = tcp_exchange(&lab, sa("10.96.0.10:80"));
    answered_by(&line);
    assert_eq!(peer, sa("10.96.0.10:80"));
    assert!(
        stat(&dp0, "translated") > tc,
        "translated per packet by TC now"
    );
    assert!(
        dp0.flows()
            .expect("flows")
            .iter()
            .any(|f| f.frontend == sa("10.96.0.10:80")),
        "and tracked"
    );

    dp0.reset().expect("reset node 0");
    dp1.reset().expect("reset node 1");
    drop(scope);
}
