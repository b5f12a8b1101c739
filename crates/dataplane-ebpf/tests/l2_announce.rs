//! L2 announcements end to end in the testkit lab: an external client with no route for a
//! LoadBalancer IP inside the underlay's subnet (172.18.0.200, `fd00:18::c8`: on-link for it)
//! resolves it by ARP / NDP and reaches the service; a node whose liveness lapsed stops
//! answering; a failover moves the client's neighbour entry to the new announcer on its
//! gratuitous announcement.
//!
//! ```text
//!                          br0 (underlay, 172.18.0.0/16, fd00:18::/64)
//!   external-0 --x0--------+--------n0-- node-0 eth0 [dp_from_uplink: TC responder]  pod-0-0
//!   172.18.255.1           |             (announces first, its liveness then lapses)
//!   fd00:18::ff:1          +--------n1-- node-1 eth0 [dp_xdp_uplink: XDP responder]  pod-1-0
//!   who-has 172.18.0.200?                (takes over: gratuitous ARP / unsolicited NA)
//! ```
//! The services' backends are node 0's pods; externalTrafficPolicy Cluster masquerades a
//! client to the node that took its packet, so the source a backend saw says which node the
//! client reached: node 0's address first, node 1's after the failover.
//!
//! Each node runs its own `EbpfDataplane` (its namespace and pin directory); node 1 with XDP
//! (so its answers leave by `XDP_TX`; `n1`, the underlay side of its uplink, gets a pass-all
//! XDP program, without which a veth drops `XDP_TX` frames), node 0 with TC only (answers
//! leave by a redirect to its uplink); the client sends complete checksums (TX checksum offload
//! off), as `xdp_lab.rs` explains, since node 1's XDP fast path forwards its service traffic.

mod common;

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use common::{answered, attach_xdp_pass, ethtool_set, require_root, PinDirs, ETHTOOL_STXCSUM};
use dataplane_core::{
    Backend, Dataplane, DesiredState, ObjectName, Protocol, Service, ServicePort,
};
use dataplane_ebpf::{EbpfConfig, EbpfDataplane, XdpMode};
use dataplane_testkit::{probe, Family, Lab, LabExternal, LabSpec, ProbeOutcome, SERVER_PORT};

const TIMEOUT: Duration = Duration::from_secs(2);
/// The nodes' liveness window: short, so that a lapse takes little waiting.
const LIVENESS: Duration = Duration::from_secs(2);
const LB4: &str = "172.18.0.200";
const LB6: &str = "fd00:18::c8";

fn pin_dir(node: usize) -> PathBuf {
    PathBuf::from(format!(
        "/sys/fs/bpf/dpe-l2lab-{}-n{node}",
        std::process::id()
    ))
}

fn dataplane(lab: &Lab, node: usize, xdp: XdpMode) -> EbpfDataplane {
    let dir = pin_dir(node);
    let _ = std::fs::remove_dir_all(&dir);
    let mut c = EbpfConfig::new(dir);
    c.netns = Some(lab.node(node).netns.path().to_owned());
    c.xdp = xdp;
    c.l2_liveness = LIVENESS;
    EbpfDataplane::new(c).expect("load")
}

/// LoadBalancer IP `lb` (TCP and UDP port 80) of `family`, to node 0's pods; `announce`:
/// with `l2Announce`.
fn service(lab: &Lab, name: &str, cluster_ip: &str, lb: &str, announce: bool) -> Service {
    let family = if lb.contains(':') {
        Family::V6
    } else {
        Family::V4
    };
    let mut s = Service::new(ObjectName::new("default", name));
    s.cluster_ips = vec![cluster_ip.parse().unwrap()];
    s.load_balancer_ips = vec![lb.parse().unwrap()];
    s.ports = [Protocol::Tcp, Protocol::Udp]
        .into_iter()
        .map(|protocol| ServicePort {
            name: protocol.to_string().to_lowercase(),
            protocol,
            port: 80,
            target_port: SERVER_PORT,
            node_port: None,
        })
        .collect();
    s.backends = lab
        .pods_on(0)
        .map(|p| {
            let mut b = Backend::new(p.address(family).expect("pod address"));
            b.node_name = Some(lab.node(0).name.as_str().into());
            b
        })
        .collect();
    s.l2_announce = announce;
    s
}

fn state(lab: &Lab, node: usize, announce: bool) -> DesiredState {
    let mut s = lab.desired_state(node);
    s.services = vec![
        service(lab, "lb4", "10.96.0.50", LB4, announce),
        service(lab, "lb6", "fd00:96::50", LB6, announce),
    ];
    s
}

/// The MAC of node `node`'s uplink.
fn node_mac(lab: &Lab, node: usize) -> String {
    let out = lab
        .node(node)
        .netns
        .exec("ip", &["-o", "link", "show", "eth0"])
        .expect("ip link");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    text.split_whitespace()
        .skip_while(|w| *w != "link/ether")
        .nth(1)
        .unwrap_or_else(|| panic!("no MAC in {text:?}"))
        .to_owned()
}

/// The client's neighbour entry for `ip` (`ip neigh show`), empty when it has none.
fn neigh(ext: &LabExternal, ip: &str) -> String {
    let out = ext
        .netns
        .exec("ip", &["neigh", "show", ip, "dev", "eth0"])
        .expect("ip neigh");
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

fn flush(ext: &LabExternal, ip: &str) {
    ext.netns
        .exec("ip", &["neigh", "flush", "to", ip, "dev", "eth0"])
        .expect("ip neigh flush");
}

/// Waits up to 3 s for the client's entry for `ip` to be at `mac`; returns the last entry.
fn wait_neigh(ext: &LabExternal, ip: &str, mac: &str) -> String {
    let deadline = Instant::now() + Duration::from_secs(3);
    loop {
        let entry = neigh(ext, ip);
        if entry.contains(&format!("lladdr {mac}")) || Instant::now() > deadline {
            return entry;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Probes both LB IPs over TCP and UDP, refreshing `live`'s liveness before each; every probe
/// must be answered with `seen` (a node address of the probe's family) as the source the
/// backend saw.
fn reach_all(ext: &LabExternal, live: &mut EbpfDataplane, lab: &Lab, through: usize) {
    for (lb, family) in [(LB4, Family::V4), (LB6, Family::V6)] {
        let node = lab.node(through).address(family).unwrap();
        for proto in [Protocol::Tcp, Protocol::Udp] {
            live.maintain(Duration::ZERO).expect("maintain");
            let dst = SocketAddr::new(lb.parse().unwrap(), 80);
            let out = probe(&ext.netns, dst, proto, TIMEOUT).expect("probe");
            let (backend, seen) = answered(&out);
            assert!(
                backend.starts_with("pod-0-"),
                "{proto} {dst}: a node-0 pod answered, got {backend}"
            );
            assert_eq!(
                seen, node,
                "{proto} {dst}: reached through node {through} (its address seen)"
            );
        }
    }
}

#[test]
#[allow(clippy::too_many_lines)] // one lab, the whole story: building the lab is the slow part
fn lb_ip_resolved_by_arp_and_ndp_liveness_and_failover() {
    if !require_root("lb_ip_resolved_by_arp_and_ndp_liveness_and_failover") {
        return;
    }
    let lab = Lab::new(LabSpec {
        nodes: 2,
        pods_per_node: 1,
        external_clients: 1,
        ipv6: true,
    })
    .expect("lab");
    let _pins = PinDirs((0..2).map(pin_dir).collect());
    let mut a = dataplane(&lab, 0, XdpMode::Off);
    let mut b = dataplane(&lab, 1, XdpMode::Native);
    let _peer_xdp = attach_xdp_pass(lab.underlay().path(), "n1");
    a.apply(&state(&lab, 0, true)).expect("apply node 0");
    b.apply(&state(&lab, 1, false)).expect("apply node 1");
    let ext = lab.external(0);
    // Complete checksums from the client, as frames from a NIC have them: node 1's XDP fast
    // path forwards the service traffic it takes over (a veth would hand it partial ones).
    ethtool_set(ext.netns.path(), &ext.interface, ETHTOOL_STXCSUM, false);
    let (mac_a, mac_b) = (node_mac(&lab, 0), node_mac(&lab, 1));
    assert_ne!(mac_a, mac_b);
    for lb in [LB4, LB6] {
        let lb: IpAddr = lb.parse().unwrap();
        let routes = ext
            .netns
            .exec("ip", &["route", "get", &lb.to_string()])
            .expect("ip route get");
        let routes = String::from_utf8_lossy(&routes.stdout).into_owned();
        assert!(
            !routes.contains(" via "),
            "the client has no route for {lb}, only the on-link subnet: {routes}"
        );
    }

    // Node 0 announces: resolved to its MAC by ARP and NDP, the service reached through it.
    reach_all(ext, &mut a, &lab, 0);
    for lb in [LB4, LB6] {
        let entry = neigh(ext, lb);
        assert!(
            entry.contains(&format!("lladdr {mac_a}")),
            "{lb} resolved to node 0's MAC {mac_a}: {entry}"
        );
    }
    let other = a.stats().expect("stats").other;
    assert!(other["l2_responses.172.18.0.200"] >= 1, "{other:?}");
    assert!(other["l2_responses.fd00:18::c8"] >= 1, "{other:?}");
    assert_eq!(
        b.stats().expect("stats").other.get("l2_responses"),
        Some(&0),
        "node 1 answered nothing"
    );

    // Node 0's liveness lapses (nothing refreshes it): once the client forgets the entry, it
    // cannot resolve the LB IPs any more.
    std::thread::sleep(LIVENESS + Duration::from_millis(300));
    for lb in [LB4, LB6] {
        flush(ext, lb);
        let dst = SocketAddr::new(lb.parse().unwrap(), 80);
        let out = probe(&ext.netns, dst, Protocol::Tcp, TIMEOUT).expect("probe");
        assert!(
            !matches!(out, ProbeOutcome::Answered { .. }),
            "{lb}: no node answers for it, so nothing is reached: {out:?}"
        );
        let entry = neigh(ext, lb);
        assert!(
            !entry.contains("lladdr"),
            "{lb}: not resolved while node 0 is stale: {entry}"
        );
    }

    // Refreshed: node 0 answers again (and announces itself, having lapsed).
    reach_all(ext, &mut a, &lab, 0);

    // Failover: node 0 lapses again (its agent is gone), node 1 takes the addresses over. Its
    // gratuitous ARP / unsolicited NA moves the client's entries, with no flush.
    std::thread::sleep(LIVENESS + Duration::from_millis(300));
    for lb in [LB4, LB6] {
        assert!(
            neigh(ext, lb).contains(&format!("lladdr {mac_a}")),
            "{lb}: the client still has node 0's MAC before the failover"
        );
    }
    b.apply(&state(&lab, 1, true)).expect("node 1 announces");
    for lb in [LB4, LB6] {
        let entry = wait_neigh(ext, lb, &mac_b);
        assert!(
            entry.contains(&format!("lladdr {mac_b}")),
            "{lb}: the client's entry moved to node 1's MAC {mac_b} on its announcement: \
             {entry}"
        );
    }
    assert_eq!(
        b.stats().expect("stats").other["l2_responses"],
        0,
        "node 1 answered no request yet: the announcement alone moved the entries"
    );
    reach_all(ext, &mut b, &lab, 1);
    a.reset().expect("reset");
    b.reset().expect("reset");
}
