//! The XDP fast path end to end in the testkit lab: real TCP/UDP from an external client to
//! node 0's NodePorts, forwarded at XDP (driver mode on node 0's veth uplink) to pods on
//! node 1.
//!
//! ```text
//!   external-0 --x0-- br0 --n0-- [XDP on node-0 eth0] --XDP_TX--> n0 -- br0 --n1-- node-1 --> pod-1-*
//!        ^                                                                          |
//!        +------------- DSR: reply from node-0:nodePort, straight from node-1 ------+
//!        +------------- SNAT: reply back through node-0 (TC reverse NAT) -----------+
//! ```
//! Every node runs its own `EbpfDataplane` (own pin directory, its namespace, TC programs
//! attached by the normal apply); only node 0 has XDP on.
//!
//! Two lab details a real uplink does not need: frames that XDP sends back out of a veth
//! (`XDP_TX`) are received by its peer only when the peer runs an XDP program itself, so the
//! underlay side of node 0's uplink (`n0`) gets a pass-everything one; and the external client sends complete checksums (TX checksum offload off),
//! as frames from a NIC have them - a veth would otherwise hand XDP partial checksums.

mod common;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use common::{
    answered, attach_xdp_pass, ethtool_set, require_root, stat, PinDirs, ETHTOOL_STXCSUM,
};
use dataplane_core::{
    Backend, Dataplane, DesiredState, ExternalMode, ObjectName, Protocol, Service, ServicePort,
};
use dataplane_ebpf::{EbpfConfig, EbpfDataplane, XdpMode};
use dataplane_testkit::{probe, Family, Lab, LabSpec, TcpSession, SERVER_PORT};

const TIMEOUT: Duration = Duration::from_secs(2);

fn pin_dir(node: usize) -> PathBuf {
    PathBuf::from(format!(
        "/sys/fs/bpf/dpe-xdplab-{}-n{node}",
        std::process::id()
    ))
}

fn config(lab: &Lab, node: usize, xdp: XdpMode) -> EbpfConfig {
    let dir = pin_dir(node);
    let _ = std::fs::remove_dir_all(&dir);
    let mut c = EbpfConfig::new(dir);
    c.netns = Some(lab.node(node).netns.path().to_owned());
    c.xdp = xdp;
    c
}

fn service(lab: &Lab, name: &str, cluster_ip: &str, node_port: u16, mode: ExternalMode) -> Service {
    let mut s = Service::new(ObjectName::new("default", name));
    s.cluster_ips = vec![cluster_ip.parse().unwrap()];
    s.ports = [Protocol::Tcp, Protocol::Udp]
        .into_iter()
        .map(|protocol| ServicePort {
            name: protocol.to_string().to_lowercase(),
            protocol,
            port: 80,
            target_port: SERVER_PORT,
            node_port: Some(node_port),
        })
        .collect();
    s.backends = lab
        .pods_on(1)
        .map(|p| {
            let mut b = Backend::new(p.address(Family::V4).expect("pod address"));
            b.node_name = Some(lab.node(1).name.as_str().into());
            b
        })
        .collect();
    s.external_mode = Some(mode);
    s
}

/// `dsr` NodePort 30090 (externalMode Dsr) and `snat` NodePort 30080 (Snat), TCP and UDP,
/// backends only on node 1.
fn state(lab: &Lab, node: usize) -> DesiredState {
    let mut s = lab.desired_state(node);
    s.services = vec![
        service(lab, "dsr", "10.96.0.20", 30090, ExternalMode::Dsr),
        service(lab, "snat", "10.96.0.21", 30080, ExternalMode::Snat),
    ];
    s
}

#[test]
#[allow(clippy::too_many_lines)] // one lab, many checks: building the lab is the slow part
fn xdp_node_port_dsr_and_snat_end_to_end() {
    if !require_root("xdp_node_port_dsr_and_snat_end_to_end") {
        return;
    }
    let lab = Lab::new(LabSpec {
        nodes: 2,
        pods_per_node: 2,
        external_clients: 1,
        ipv6: false,
    })
    .expect("lab");
    let _pins = PinDirs((0..2).map(pin_dir).collect());
    let mut dps: Vec<EbpfDataplane> = (0..2)
        .map(|i| {
            let mode = if i == 0 {
                XdpMode::Native
            } else {
                XdpMode::Off
            };
            let mut dp = EbpfDataplane::new(config(&lab, i, mode)).expect("load");
            dp.apply(&state(&lab, i)).expect("apply");
            dp
        })
        .collect();
    assert!(dps[0].capabilities().xdp, "node 0 shows the XDP capability");
    let _peer_xdp = attach_xdp_pass(lab.underlay().path(), "n0");
    let ext = lab.external(0);
    ethtool_set(ext.netns.path(), &ext.interface, ETHTOOL_STXCSUM, false);

    let node0 = lab.node(0).address(Family::V4).unwrap();
    let ext_ip = ext.address(Family::V4).unwrap();
    let remote: Vec<String> = lab.pods_on(1).map(|p| p.name.clone()).collect();

    let before = stat(&dps[0], "xdp_forwarded");
    for proto in [Protocol::Tcp, Protocol::Udp] {
        let out = probe(&ext.netns, SocketAddr::new(node0, 30090), proto, TIMEOUT).expect("probe");
        let (backend, seen) = answered(&out);
        assert!(
            remote.contains(&backend),
            "{proto}: DSR NodePort through XDP reaches a node-1 pod, got {backend}"
        );
        assert_eq!(seen, ext_ip, "{proto}: DSR keeps the client's own address");
    }
    let mut session = TcpSession::open(&ext.netns, SocketAddr::new(node0, 30090)).expect("connect");
    let (first, seen) = session.request().expect("request");
    assert_eq!(seen.ip(), ext_ip);
    for _ in 0..3 {
        let (again, _) = session.request().expect("request on the established flow");
        assert_eq!(again, first, "an established DSR flow keeps its backend");
    }
    drop(session);
    let after_dsr = stat(&dps[0], "xdp_forwarded");
    assert!(
        after_dsr >= before + 6,
        "node 0 forwarded the DSR requests at XDP: {before} -> {after_dsr}"
    );

    for proto in [Protocol::Tcp, Protocol::Udp] {
        let out = probe(&ext.netns, SocketAddr::new(node0, 30080), proto, TIMEOUT).expect("probe");
        let (backend, seen) = answered(&out);
        assert!(
            remote.contains(&backend),
            "{proto}: SNAT NodePort through XDP reaches a node-1 pod, got {backend}"
        );
        assert_eq!(seen, node0, "{proto}: SNAT shows node 0's address");
    }
    let after_snat = stat(&dps[0], "xdp_forwarded");
    assert!(
        after_snat >= after_dsr + 2,
        "node 0 forwarded the SNAT requests at XDP: {after_dsr} -> {after_snat}"
    );
    let flows = dps[0].flows().expect("flows");
    assert!(
        flows
            .iter()
            .any(|f| f.frontend == SocketAddr::new(node0, 30080) && f.client.ip() == ext_ip),
        "flows() lists the SNAT connection XDP created: {flows:?}"
    );
    for dp in &mut dps {
        dp.reset().expect("reset");
    }
}
