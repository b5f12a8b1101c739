//! NetworkPolicy in the iptables flavour, in the testkit lab with real TCP and UDP traffic
//! (IPv4 and IPv6): three pods on one node, default deny, then allows, changed by partial
//! syncs; established connections; the ipset capacity limit; failed applies. Needs root.
//!
//! ```text
//!   node-0 (172.18.0.10, fd00:18::10): backend under test, ClusterIP 10.96.0.10:80 → pod-0-0
//!     ├── pod-0-0  server (TCP/UDP 8080), the policies' target
//!     ├── pod-0-1  client (role=client)
//!     └── pod-0-2  client (relabelled role=client mid-test)
//! ```

mod common;

use std::net::{IpAddr, SocketAddr, SocketAddrV4, SocketAddrV6};
use std::time::Duration;

use common::policy::{labels, pods, policy, port, rule};
use dataplane_core::{
    diff, Dataplane, DesiredState, Error, ObjectName, PolicyType, Protocol, Service,
};
use dataplane_iptables::{IptablesDataplane, NetfilterConfig};
use dataplane_testkit::{
    probe, require_root, Family, Lab, LabSpec, NetNs, ProbeOutcome, TcpSession, SERVER_PORT,
};

const CLUSTER_IP: &str = "10.96.0.10:80";

fn lab() -> Lab {
    Lab::new(LabSpec {
        nodes: 1,
        pods_per_node: 3,
        external_clients: 0,
        ipv6: true,
    })
    .expect("lab")
}

fn backend(lab: &Lab, tweak: impl FnOnce(&mut NetfilterConfig)) -> IptablesDataplane {
    let mut config = NetfilterConfig::iptables(Some(lab.node(0).netns.path().to_owned()));
    tweak(&mut config);
    IptablesDataplane::new(config)
}

/// The node with its pods (pod-0-1 labelled `role=client`) and a ClusterIP to pod-0-0.
fn base(lab: &Lab) -> DesiredState {
    let mut state = lab.desired_state(0);
    state.endpoints[1]
        .labels
        .insert("role".into(), "client".into());
    let mut web = Service::new(ObjectName::new("default", "web"));
    let cluster_ip: SocketAddr = CLUSTER_IP.parse().unwrap();
    web.cluster_ips = vec![cluster_ip.ip()];
    web.ports = vec![common::port(Protocol::Tcp, 80, SERVER_PORT, None)];
    web.backends = vec![lab.backend(0, Family::V4).unwrap()];
    state.services.push(web);
    state
}

/// Ingress of pod-0-0 denied.
fn deny_ingress(state: &DesiredState) -> DesiredState {
    let mut s = state.clone();
    s.policies.push(policy(
        "default",
        "deny-in",
        labels(&[("app", "pod-0-0")]),
        &[PolicyType::Ingress],
    ));
    s
}

/// And allowed from `role=client` on TCP 8080.
fn allow_clients(state: &DesiredState) -> DesiredState {
    let mut s = state.clone();
    let mut allow = policy(
        "default",
        "allow-clients",
        labels(&[("app", "pod-0-0")]),
        &[PolicyType::Ingress],
    );
    allow.ingress = vec![rule(
        vec![pods(&[("role", "client")])],
        vec![port(Protocol::Tcp, SERVER_PORT, None)],
    )];
    s.policies.push(allow);
    s
}

/// Whether a probe from `from` to `to` is answered; not answered means dropped (a policy
/// denial is a drop, never a refusal: a refusal or an unreachable fails the test).
fn answers(from: &NetNs, to: SocketAddr, protocol: Protocol) -> bool {
    match probe(from, to, protocol, Duration::from_secs(1)).expect("probe") {
        ProbeOutcome::Answered { .. } => true,
        ProbeOutcome::Timeout => false,
        other => panic!("{to} {protocol:?}: {other:?}, not a drop"),
    }
}

fn pod_addr(lab: &Lab, pod: usize, family: Family) -> SocketAddr {
    SocketAddr::new(lab.pod(pod).address(family).unwrap(), SERVER_PORT)
}

/// What the node holds of ours and others': its filter and nat rules and its ipsets, in a
/// comparable form (no counters, no comments with dates, members sorted).
fn kernel(lab: &Lab) -> String {
    let ns = &lab.node(0).netns;
    let mut out = String::new();
    for tool in ["iptables-save", "ip6tables-save"] {
        let o = ns.exec(tool, &[] as &[&str]).expect(tool);
        for line in String::from_utf8_lossy(&o.stdout).lines() {
            if !line.starts_with('#') {
                out.push_str(line);
                out.push('\n');
            }
        }
    }
    let o = ns.exec("ipset", &["save"]).expect("ipset save");
    let mut sets: Vec<String> = String::from_utf8_lossy(&o.stdout)
        .lines()
        .map(|l| {
            // `initval` is random per set creation: a set created again differs.
            l.split(" initval").next().unwrap_or(l).to_owned()
        })
        .collect();
    sets.sort();
    out.push_str(&sets.join("\n"));
    out
}

fn our_sets(lab: &Lab) -> Vec<String> {
    let o = lab
        .node(0)
        .netns
        .exec("ipset", &["list", "-n"])
        .expect("ipset list");
    String::from_utf8_lossy(&o.stdout)
        .lines()
        // The policy sets: not the hairpin sets (`NetfilterConfig::hairpin_ipset`).
        .filter(|n| n.starts_with("DP-") && !n.starts_with("DP-hairpin-"))
        .map(str::to_owned)
        .collect()
}

/// Default deny, then allows, each applied as a partial sync, with real traffic: direct,
/// through the ClusterIP (checked after DNAT), both families; the fixed rules (node ↔ pods,
/// a pod reaching itself); a connection established before the deny keeps flowing.
#[test]
fn default_deny_then_allow_with_real_traffic() {
    if !require_root("default_deny_then_allow_with_real_traffic") {
        return;
    }
    let lab = lab();
    let mut dp = backend(&lab, |_| {});
    assert!(dp.capabilities().network_policy);
    let (server, client, other) = (&lab.pod(0).netns, &lab.pod(1).netns, &lab.pod(2).netns);
    let node = &lab.node(0).netns;
    let v4 = pod_addr(&lab, 0, Family::V4);
    let v6 = pod_addr(&lab, 0, Family::V6);
    let cluster_ip: SocketAddr = CLUSTER_IP.parse().unwrap();

    let open = base(&lab);
    dp.apply(&open).unwrap();
    assert!(our_sets(&lab).is_empty());
    for to in [v4, v6, cluster_ip] {
        assert!(answers(client, to, Protocol::Tcp), "{to} before any policy");
    }
    // UDP answers before the policy: its silence after is the policy's drop.
    assert!(answers(client, v4, Protocol::Udp));
    assert!(answers(client, v6, Protocol::Udp));
    let mut established = TcpSession::open(client, v4).expect("session");
    established.request().expect("answered before the policy");

    // Default deny: the ingress of pod-0-0 is closed to new connections.
    let denied = deny_ingress(&open);
    let report = dp.apply_changes(&diff(&open, &denied)).unwrap();
    assert!(!report.full_sync);
    for to in [v4, v6, cluster_ip] {
        assert!(!answers(client, to, Protocol::Tcp), "{to} denied");
    }
    assert!(!answers(client, v4, Protocol::Udp));
    assert!(!answers(client, v6, Protocol::Udp));
    // Not re-checked: the connection established before the change keeps flowing.
    let (who, _) = established
        .request()
        .expect("established connection still flows");
    assert_eq!(who, lab.pod(0).name);
    // Fixed rules: the node reaches its pod, the pod reaches itself (directly and through
    // the service: hairpin); pods that no policy isolates stay open.
    assert!(answers(node, v4, Protocol::Tcp));
    assert!(answers(node, v6, Protocol::Tcp));
    assert!(answers(server, v4, Protocol::Tcp));
    assert!(answers(server, cluster_ip, Protocol::Tcp));
    assert!(answers(
        server,
        pod_addr(&lab, 1, Family::V4),
        Protocol::Tcp
    ));
    assert!(answers(other, pod_addr(&lab, 1, Family::V4), Protocol::Udp));

    // Allowed from role=client on TCP 8080: pod-0-1 in, by TCP only; pod-0-2 still out.
    let allowed = allow_clients(&denied);
    dp.apply_changes(&diff(&denied, &allowed)).unwrap();
    assert!(!our_sets(&lab).is_empty());
    for to in [v4, v6, cluster_ip] {
        assert!(answers(client, to, Protocol::Tcp), "{to} allowed");
    }
    assert!(!answers(client, v4, Protocol::Udp));
    assert!(!answers(other, v4, Protocol::Tcp));

    // pod-0-2 relabelled into the peer selector: an ipset change, the rules stay as they are.
    let before = (
        filter_rules(&lab, Family::V4),
        filter_rules(&lab, Family::V6),
    );
    let mut relabelled = allowed.clone();
    relabelled.endpoints[2]
        .labels
        .insert("role".into(), "client".into());
    dp.apply_changes(&diff(&allowed, &relabelled)).unwrap();
    assert_eq!(
        (
            filter_rules(&lab, Family::V4),
            filter_rules(&lab, Family::V6)
        ),
        before
    );
    assert!(answers(other, v4, Protocol::Tcp));
    assert!(answers(other, v6, Protocol::Tcp));

    let egress = egress_only_to_the_node(&lab, &mut dp, &relabelled);

    // The drops were counted.
    let stats = dp.stats().unwrap();
    assert!(
        stats.other.get("policy_dropped").copied().unwrap_or(0) > 0,
        "{stats:?}"
    );

    // The same state from a full sync: nothing changes.
    let held = kernel(&lab);
    dp.apply(&egress).unwrap();
    assert_eq!(strip_counters(&kernel(&lab)), strip_counters(&held));

    // Policies deleted: everything open again, and our sets gone.
    dp.apply_changes(&diff(&egress, &open)).unwrap();
    assert!(our_sets(&lab).is_empty());
    assert!(answers(client, v4, Protocol::Tcp));
    dp.reset().unwrap();
    assert!(our_sets(&lab).is_empty());
    assert!(!kernel(&lab).contains("DP-"));
}

/// pod-0-1's egress isolated with no rule: it reaches nothing but its node, while its
/// ingress stays open (IPv6 included, neighbour discovery with it). Returns the state.
fn egress_only_to_the_node(
    lab: &Lab,
    dp: &mut IptablesDataplane,
    relabelled: &DesiredState,
) -> DesiredState {
    let (client, other) = (&lab.pod(1).netns, &lab.pod(2).netns);
    let v4 = pod_addr(lab, 0, Family::V4);
    let cluster_ip: SocketAddr = CLUSTER_IP.parse().unwrap();
    let mut egress = relabelled.clone();
    egress.policies.push(policy(
        "default",
        "client-out",
        labels(&[("app", "pod-0-1")]),
        &[PolicyType::Egress],
    ));
    dp.apply_changes(&diff(relabelled, &egress)).unwrap();
    assert!(!answers(client, v4, Protocol::Tcp));
    assert!(!answers(client, cluster_ip, Protocol::Tcp));
    assert!(answers(other, v4, Protocol::Tcp));
    // Its ingress is open: reached over IPv6 once the node has forgotten its link-layer
    // address, its neighbour advertisement (from its own address, to the node's link-local
    // one, tracked by no connection) must pass its egress chain.
    lab.node(0)
        .netns
        .exec_checked(
            "ip",
            &["-6", "neigh", "flush", "dev", &lab.pod(1).host_interface],
            None,
        )
        .unwrap();
    assert!(answers(other, pod_addr(lab, 1, Family::V6), Protocol::Tcp));
    let node_addr = SocketAddr::new(lab.node(0).address(Family::V4).unwrap(), SERVER_PORT);
    // The node has no server: a refusal (RST) is the node answering, not a policy drop.
    let to_node = probe(client, node_addr, Protocol::Tcp, Duration::from_secs(1)).unwrap();
    assert_eq!(to_node, ProbeOutcome::Refused);
    egress
}

/// The node's filter table of `family`.
fn filter_rules(lab: &Lab, family: Family) -> String {
    let tool = match family {
        Family::V4 => "iptables-save",
        Family::V6 => "ip6tables-save",
    };
    let o = lab.node(0).netns.exec(tool, &["-t", "filter"]).unwrap();
    strip_counters(
        &String::from_utf8_lossy(&o.stdout)
            .lines()
            .filter(|l| !l.starts_with('#'))
            .collect::<Vec<_>>()
            .join("\n"),
    )
}

fn strip_counters(text: &str) -> String {
    text.lines()
        .map(|l| {
            if l.starts_with(':') {
                l.split(" [").next().unwrap_or(l).to_owned()
            } else {
                l.to_owned()
            }
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// More ipsets than configured (others' sets count too) is refused before anything is
/// written; a failed rule load puts the sets back; others' sets survive apply and reset.
#[test]
fn refused_and_failed_policy_applies_change_nothing() {
    if !require_root("refused_and_failed_policy_applies_change_nothing") {
        return;
    }
    let lab = lab();
    let ns = &lab.node(0).netns;
    ns.exec_checked("ipset", &["create", "foreign", "hash:ip"], None)
        .expect("foreign set");
    let allowed = allow_clients(&deny_ingress(&base(&lab)));
    let mut dp = backend(&lab, |_| {});
    dp.apply(&allowed).unwrap();
    let sets = our_sets(&lab);
    // The client set, in both families (pod-0-0 has both).
    assert_eq!(sets.len(), 2, "{sets:?}");
    let held = strip_counters(&kernel(&lab));

    // One more peer set: needs 2 + 2 + the foreign one + the two hairpin sets = 7.
    let mut more = allowed.clone();
    let mut p = policy(
        "default",
        "from-pod-0-2",
        labels(&[("app", "pod-0-0")]),
        &[PolicyType::Ingress],
    );
    p.ingress = vec![rule(vec![pods(&[("app", "pod-0-2")])], vec![])];
    more.policies.push(p);
    let mut small = backend(&lab, |c| c.max_ipsets = 4);
    let err = small.apply(&more).unwrap_err();
    match &err {
        Error::CapacityExceeded {
            what,
            needed,
            capacity,
        } => {
            assert_eq!((*needed, *capacity), (7, 4), "{err}");
            assert!(
                what.contains("max_ipsets") && what.contains("default/pod-0-0"),
                "{err}"
            );
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(strip_counters(&kernel(&lab)), held);

    // The kernel refuses the rules: the new sets go again, the old keep their members.
    dp.set_fail_transactions(true);
    let err = dp.apply_changes(&diff(&allowed, &more)).unwrap_err();
    assert!(matches!(err, Error::Kernel { .. }), "{err}");
    assert_eq!(strip_counters(&kernel(&lab)), held);
    let mut relabelled = allowed.clone();
    relabelled.endpoints[2]
        .labels
        .insert("role".into(), "client".into());
    let err = dp.apply(&relabelled).unwrap_err();
    assert!(matches!(err, Error::Kernel { .. }), "{err}");
    assert_eq!(strip_counters(&kernel(&lab)), held);
    assert!(!answers(
        &lab.pod(2).netns,
        pod_addr(&lab, 0, Family::V4),
        Protocol::Tcp
    ));

    // Working again: the change set after the failures goes as a full sync.
    dp.set_fail_transactions(false);
    let report = dp.apply_changes(&diff(&allowed, &more)).unwrap();
    assert!(report.full_sync);
    assert_eq!(our_sets(&lab).len(), 4);
    assert!(answers(
        &lab.pod(2).netns,
        pod_addr(&lab, 0, Family::V4),
        Protocol::Tcp
    ));
    dp.reset().unwrap();
    assert!(our_sets(&lab).is_empty());
    let o = ns.exec("ipset", &["list", "-n"]).unwrap();
    assert_eq!(String::from_utf8_lossy(&o.stdout).trim(), "foreign");
}

/// A backend that cannot find `ipset` refuses a state whose policy needs sets, changing
/// nothing; without policy and without the hairpin set it does not need the tool at all.
#[test]
fn without_ipset_policy_is_an_error_and_services_still_work() {
    if !require_root("without_ipset_policy_is_an_error_and_services_still_work") {
        return;
    }
    let lab = lab();
    // Services need the tool only for the hairpin set (`NetfilterConfig::hairpin_ipset`).
    let mut dp = backend(&lab, |c| {
        c.ipset = "/nonexistent/ipset".into();
        c.hairpin_ipset = false;
    });
    let open = base(&lab);
    dp.apply(&open).unwrap();
    let held = strip_counters(&kernel(&lab));
    let err = dp.apply(&allow_clients(&open)).unwrap_err();
    assert!(matches!(err, Error::Kernel { .. }), "{err}");
    assert_eq!(strip_counters(&kernel(&lab)), held);
    // A policy that needs no set (deny all) works without the tool.
    dp.apply(&deny_ingress(&open)).unwrap();
    assert!(!answers(
        &lab.pod(1).netns,
        pod_addr(&lab, 0, Family::V4),
        Protocol::Tcp
    ));
    dp.reset().unwrap();
}

/// Another component inserting an ACCEPT above our hook (a CNI firewall plugin, Docker)
/// would bypass policy: the next sync, even one with nothing to change, puts our jump first
/// again (both families).
#[test]
fn a_rule_inserted_above_our_hook_is_moved_below_it() {
    if !require_root("a_rule_inserted_above_our_hook_is_moved_below_it") {
        return;
    }
    let lab = lab();
    let ns = &lab.node(0).netns;
    let mut dp = backend(&lab, |_| {});
    let denied = deny_ingress(&base(&lab));
    dp.apply(&denied).unwrap();
    let (client, v4, v6) = (
        &lab.pod(1).netns,
        pod_addr(&lab, 0, Family::V4),
        pod_addr(&lab, 0, Family::V6),
    );
    assert!(!answers(client, v4, Protocol::Tcp));
    for tool in ["iptables", "ip6tables"] {
        ns.exec_checked(tool, &["-I", "FORWARD", "1", "-j", "ACCEPT"], None)
            .unwrap();
    }
    // Bypassed until the next sync.
    assert!(answers(client, v4, Protocol::Tcp));
    let report = dp.apply_changes(&diff(&denied, &denied)).unwrap();
    assert!(!report.full_sync);
    for tool in ["iptables", "ip6tables"] {
        let o = ns.exec_checked(tool, &["-S", "FORWARD"], None).unwrap();
        let rules: Vec<String> = String::from_utf8_lossy(&o.stdout)
            .lines()
            .filter(|l| l.starts_with("-A "))
            .map(str::to_owned)
            .collect();
        assert_eq!(
            rules,
            ["-A FORWARD -j DP-FILTER", "-A FORWARD -j ACCEPT"],
            "{tool}"
        );
    }
    assert!(!answers(client, v4, Protocol::Tcp));
    assert!(!answers(client, v6, Protocol::Tcp));
    dp.reset().unwrap();
    let o = ns
        .exec_checked("iptables", &["-S", "FORWARD"], None)
        .unwrap();
    assert!(!String::from_utf8_lossy(&o.stdout).contains("DP-"));
}

/// A UDP datagram from `src` to `dst` (port `port`, payload `payload`) sent as a whole IP
/// packet from a raw socket (`IPPROTO_RAW`: the header is ours, its source whatever we
/// write) inside `from`: how a pod forges another's address.
fn send_forged(from: &NetNs, src: IpAddr, dst: SocketAddr, payload: &[u8]) {
    use nix::sys::socket::{
        sendto, socket, AddressFamily, MsgFlags, SockFlag, SockProtocol, SockType, SockaddrIn,
        SockaddrIn6,
    };
    use std::os::fd::AsRawFd as _;
    let udp_len = u16::try_from(8 + payload.len()).unwrap();
    let mut udp = Vec::new();
    udp.extend_from_slice(&4242u16.to_be_bytes());
    udp.extend_from_slice(&dst.port().to_be_bytes());
    udp.extend_from_slice(&udp_len.to_be_bytes());
    udp.extend_from_slice(&[0, 0]);
    udp.extend_from_slice(payload);
    let packet = match (src, dst.ip()) {
        (IpAddr::V4(s), IpAddr::V4(d)) => {
            // Total length, identification and header checksum are the kernel's to fill
            // (raw(7)); a zero UDP checksum is "none" in IPv4.
            let mut p = vec![0x45, 0, 0, 0, 0, 0, 0, 0, 64, 17, 0, 0];
            p.extend_from_slice(&s.octets());
            p.extend_from_slice(&d.octets());
            p.extend_from_slice(&udp);
            p
        }
        (IpAddr::V6(s), IpAddr::V6(d)) => {
            // IPv6 UDP needs its checksum, over the pseudo-header.
            let mut sum: u32 = 17 + u32::from(udp_len);
            let mut words = |bytes: &[u8]| {
                for c in bytes.chunks(2) {
                    sum += u32::from(u16::from_be_bytes([c[0], *c.get(1).unwrap_or(&0)]));
                }
            };
            words(&s.octets());
            words(&d.octets());
            words(&udp);
            while sum > 0xffff {
                sum = (sum & 0xffff) + (sum >> 16);
            }
            let check = !(sum as u16);
            udp[6..8].copy_from_slice(&check.to_be_bytes());
            let mut p = vec![0x60, 0, 0, 0];
            p.extend_from_slice(&udp_len.to_be_bytes());
            p.extend_from_slice(&[17, 64]);
            p.extend_from_slice(&s.octets());
            p.extend_from_slice(&d.octets());
            p.extend_from_slice(&udp);
            p
        }
        _ => panic!("{src} and {dst} are of different families"),
    };
    from.run(|| {
        let family = match dst {
            SocketAddr::V4(_) => AddressFamily::Inet,
            SocketAddr::V6(_) => AddressFamily::Inet6,
        };
        let fd = socket(family, SockType::Raw, SockFlag::empty(), SockProtocol::Raw)
            .expect("raw socket");
        let sent = match dst {
            SocketAddr::V4(d) => sendto(
                fd.as_raw_fd(),
                &packet,
                &SockaddrIn::from(SocketAddrV4::new(*d.ip(), 0)),
                MsgFlags::empty(),
            ),
            SocketAddr::V6(d) => sendto(
                fd.as_raw_fd(),
                &packet,
                &SockaddrIn6::from(SocketAddrV6::new(*d.ip(), 0, 0, 0)),
                MsgFlags::empty(),
            ),
        };
        assert_eq!(sent.expect("sendto"), packet.len());
    })
    .expect("in the pod");
}

/// With policies, a pod cannot borrow another's rights by forging its source address: to an
/// isolated pod's UDP server that admits the node's traffic and `role=client` (pod-0-1),
/// pod-0-2 sends from the node's address and from pod-0-1's (raw sockets, both families);
/// none of it arrives, while pod-0-1's own datagram, sent after, does, and so does the
/// node's from an address of its that `node.addresses` does not list.
#[test]
fn forged_sources_do_not_pass_policy() {
    const PORT: u16 = 9999;
    if !require_root("forged_sources_do_not_pass_policy") {
        return;
    }
    let lab = lab();
    let mut dp = backend(&lab, |_| {});
    let mut desired = deny_ingress(&base(&lab));
    let mut allow = policy(
        "default",
        "allow-clients-udp",
        labels(&[("app", "pod-0-0")]),
        &[PolicyType::Ingress],
    );
    allow.ingress = vec![rule(
        vec![pods(&[("role", "client")])],
        vec![port(Protocol::Udp, PORT, None)],
    )];
    desired.policies.push(allow);
    dp.apply(&desired).unwrap();
    let (server, client, forger) = (&lab.pod(0).netns, &lab.pod(1).netns, &lab.pod(2).netns);
    for family in [Family::V4, Family::V6] {
        let to = SocketAddr::new(lab.pod(0).address(family).unwrap(), PORT);
        let any: SocketAddr = match family {
            Family::V4 => "0.0.0.0:9999".parse().unwrap(),
            Family::V6 => "[::]:9999".parse().unwrap(),
        };
        let receiver = server
            .run(|| std::net::UdpSocket::bind(any))
            .unwrap()
            .expect("bind");
        // A guard against a hang, not an expectation: the real datagram comes at once.
        receiver
            .set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        let node = lab.node(0).address(family).unwrap();
        let allowed = lab.pod(1).address(family).unwrap();
        send_forged(forger, node, to, b"forged node");
        send_forged(forger, allowed, to, b"forged pod");
        // The node's own traffic passes whatever its source: kubelet may probe from an
        // address that is not in `node.addresses`.
        let secondary: IpAddr = match family {
            Family::V4 => "172.18.0.99".parse().unwrap(),
            Family::V6 => "fd00:18::99".parse().unwrap(),
        };
        let prefix = if secondary.is_ipv4() { "/32" } else { "/128" };
        lab.node(0)
            .netns
            .exec_checked(
                "ip",
                &[
                    "addr",
                    "add",
                    &format!("{secondary}{prefix}"),
                    "dev",
                    "lo",
                    "nodad",
                ],
                None,
            )
            .unwrap();
        lab.node(0)
            .netns
            .run(|| {
                let s = std::net::UdpSocket::bind(SocketAddr::new(secondary, 0))?;
                s.send_to(b"node", to)
            })
            .unwrap()
            .expect("node send");
        let bind: SocketAddr = SocketAddr::new(allowed, 0);
        client
            .run(|| {
                let s = std::net::UdpSocket::bind(bind)?;
                s.send_to(b"real", to)
            })
            .unwrap()
            .expect("real send");
        let mut got = Vec::new();
        let mut buf = [0u8; 64];
        loop {
            let (n, from) = receiver.recv_from(&mut buf).expect("the real datagram");
            got.push((String::from_utf8_lossy(&buf[..n]).into_owned(), from.ip()));
            if &buf[..n] == b"real" {
                break;
            }
        }
        assert_eq!(
            got,
            [("node".to_owned(), secondary), ("real".to_owned(), allowed)],
            "{family:?}"
        );
    }
    let stats = dp.stats().unwrap();
    assert!(
        stats.other.get("policy_dropped").copied().unwrap_or(0) >= 3,
        "{stats:?}"
    );
    dp.reset().unwrap();
}

/// An `ipset` that runs the real one, except while `flag` exists: then the commands whose
/// arguments contain `fails` exit 1 without running.
fn flaky_ipset(name: &str, fails: &str) -> (std::path::PathBuf, std::path::PathBuf) {
    use std::os::unix::fs::PermissionsExt as _;
    let dir = std::env::temp_dir().join(format!("dp-ipset-{name}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let flag = dir.join("fail");
    let script = dir.join("ipset");
    std::fs::write(
        &script,
        format!(
            "#!/bin/sh\nif [ -e '{}' ]; then case \"$*\" in *'{fails}'*) echo refused >&2; exit 1;; esac; fi\nexec ipset \"$@\"\n",
            flag.display()
        ),
    )
    .unwrap();
    std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).unwrap();
    (script, flag)
}

/// iptables-restore commits nat, then filter: a filter section that would be refused (here
/// it names sets an `ipset` that does nothing never created) is found by the `--test` run
/// before anything is written, so the service change in nat is not committed either.
#[test]
fn a_refused_filter_section_leaves_nat_as_it_was() {
    if !require_root("a_refused_filter_section_leaves_nat_as_it_was") {
        return;
    }
    let lab = lab();
    let mut dp = backend(&lab, |c| {
        c.ipset = "/bin/true".into();
        c.hairpin_ipset = false;
    });
    let open = base(&lab);
    dp.apply(&open).unwrap();
    let held = strip_counters(&kernel(&lab));
    let mut next = allow_clients(&deny_ingress(&open));
    next.services[0].ports[0].port = 81;
    let err = dp.apply(&next).unwrap_err();
    assert!(matches!(err, Error::Kernel { .. }), "{err}");
    assert_eq!(strip_counters(&kernel(&lab)), held);
    dp.reset().unwrap();
}

/// Once the backend wrote sets, a failed `ipset save` is an error (taking it for "no sets"
/// would leave ours forever); a failed destroy of unused sets after the rules committed is
/// not (the sync is done; a later one destroys them).
#[test]
fn set_read_and_destroy_failures_do_not_leak_sets() {
    if !require_root("set_read_and_destroy_failures_do_not_leak_sets") {
        return;
    }
    let lab = lab();
    let open = base(&lab);
    let allowed = allow_clients(&deny_ingress(&open));

    let (script, flag) = flaky_ipset("read", "save");
    let mut dp = backend(&lab, |c| c.ipset = script.clone());
    dp.apply(&allowed).unwrap();
    assert_eq!(our_sets(&lab).len(), 2);
    let held = strip_counters(&kernel(&lab));
    std::fs::write(&flag, "").unwrap();
    let err = dp.apply(&open).unwrap_err();
    assert!(matches!(err, Error::Kernel { .. }), "{err}");
    assert_eq!(strip_counters(&kernel(&lab)), held);
    std::fs::remove_file(&flag).unwrap();
    dp.apply(&open).unwrap();
    assert!(our_sets(&lab).is_empty());

    let (script, flag) = flaky_ipset("destroy", "-exist restore");
    let mut dp = backend(&lab, |c| c.ipset = script.clone());
    dp.apply(&allowed).unwrap();
    std::fs::write(&flag, "").unwrap();
    let report = dp.apply(&open).unwrap();
    assert!(report.full_sync);
    // The rules no longer name them: left, not an error.
    assert_eq!(our_sets(&lab).len(), 2);
    assert!(!filter_rules(&lab, Family::V4).contains("DP-POLICY"));
    std::fs::remove_file(&flag).unwrap();
    // The next sync, a partial one with nothing to change, destroys them.
    let report = dp.apply_changes(&diff(&open, &open)).unwrap();
    assert!(!report.full_sync);
    assert!(our_sets(&lab).is_empty());
    dp.reset().unwrap();
    let _ = std::fs::remove_dir_all(script.parent().unwrap());
}
