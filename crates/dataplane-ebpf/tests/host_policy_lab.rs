//! Host endpoint policy end to end in the testkit lab: real TCP from two external clients to
//! node 0, whose uplink's host endpoint has an untracked (doNotTrack) Deny for one of them,
//! with XDP in driver mode on that uplink.
//!
//! ```text
//!   external-0 (blocked) --x0-- br0 --n0-- [XDP on node-0 eth0: XDP_DROP] ... node-0
//!   external-1           --x1-- br0 --n0-- [XDP: pass] --> [TC] --> NodePort 30080 --> pod-0-*
//! ```
//! The blocked client's SYNs to the NodePort never reach TC (dropped at XDP, counted for the
//! rule and at the `xdp` point), its SYN to failsafe port 22 does (the node's stack answers
//! with a RST: nothing listens there), the other client is served; with the policy removed
//! (an incremental `apply_changes`) the blocked client is served too.

mod common;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use common::{answered, require_root, PinDirs};
use dataplane_core::{
    Backend, Dataplane, DesiredState, HostAction, HostEndpoint, HostPolicy, HostRule,
    LabelSelector, ObjectName, PolicyType, Protocol, Service, ServicePort,
};
use dataplane_ebpf::{EbpfConfig, EbpfDataplane, XdpMode};
use dataplane_testkit::{probe, Family, Lab, LabSpec, ProbeOutcome, SERVER_PORT};

const TIMEOUT: Duration = Duration::from_secs(2);
/// Shorter than TCP's first retransmission timeout: one SYN per dropped probe.
const SHORT: Duration = Duration::from_millis(700);

fn pin_dir() -> PathBuf {
    PathBuf::from(format!("/sys/fs/bpf/dpe-hostlab-{}-n0", std::process::id()))
}

/// NodePort 30080 to node 0's pods; node 0's uplink is host endpoint `uplink`, which policy
/// `blocked` (untracked, ingress Deny from `blocked`) selects.
fn state(lab: &Lab, blocked: ipnetwork::IpNetwork) -> DesiredState {
    let mut s = lab.desired_state(0);
    let mut web = Service::new(ObjectName::new("default", "web"));
    web.cluster_ips = vec!["10.96.0.23".parse().unwrap()];
    let mut port = ServicePort::new(Protocol::Tcp, 80, SERVER_PORT);
    port.node_port = Some(30080);
    web.ports = vec![port];
    web.backends = lab
        .pods_on(0)
        .map(|p| {
            let mut b = Backend::new(p.address(Family::V4).expect("pod address"));
            b.node_name = Some(lab.node(0).name.as_str().into());
            b
        })
        .collect();
    s.services = vec![web];
    let uplink = s.node.interfaces.uplink.clone();
    s.host_endpoints =
        vec![HostEndpoint::new("uplink", &s.node.name, uplink).with_label("role", "uplink")];
    s.host_policies = vec![HostPolicy::new(
        "blocked",
        LabelSelector::default().with_label("role", "uplink"),
    )
    .untracked()
    .with_ingress(HostRule::new(HostAction::Deny).from_nets([blocked]))];
    s
}

#[test]
fn untracked_deny_drops_a_blocked_client_at_xdp_end_to_end() {
    if !require_root("untracked_deny_drops_a_blocked_client_at_xdp_end_to_end") {
        return;
    }
    let lab = Lab::new(LabSpec {
        nodes: 1,
        pods_per_node: 2,
        external_clients: 2,
        ipv6: false,
    })
    .expect("lab");
    let _pins = PinDirs(vec![pin_dir()]);
    let (blocked, other) = (lab.external(0), lab.external(1));
    let blocked_ip = blocked.address(Family::V4).unwrap();
    let _ = std::fs::remove_dir_all(pin_dir());
    let mut c = EbpfConfig::new(pin_dir());
    c.netns = Some(lab.node(0).netns.path().to_owned());
    c.xdp = XdpMode::Native;
    let mut dp = EbpfDataplane::new(c).expect("load");
    let blocked_net: ipnetwork::IpNetwork = format!("{blocked_ip}/32").parse().unwrap();
    dp.apply(&state(&lab, blocked_net)).expect("apply");
    assert!(dp.capabilities().xdp && dp.capabilities().host_policy);

    let node0 = lab.node(0).address(Family::V4).unwrap();
    let node_port = SocketAddr::new(node0, 30080);
    let pods: Vec<String> = lab.pods_on(0).map(|p| p.name.clone()).collect();
    let policy_drops = |dp: &EbpfDataplane, program: &str| {
        dp.stats()
            .expect("stats")
            .other
            .get(&format!("drops.{program}.policy"))
            .copied()
            .unwrap_or(0)
    };
    let rule_drops = |dp: &EbpfDataplane| {
        let drops = dp.host_rule_drops().expect("host rule drops");
        assert_eq!(drops.len(), 1, "{drops:?}");
        assert_eq!(
            (
                drops[0].rule.policy.as_str(),
                drops[0].rule.direction,
                drops[0].rule.rule
            ),
            ("blocked", PolicyType::Ingress, 0)
        );
        drops[0].packets
    };

    let (backend, _) =
        answered(&probe(&other.netns, node_port, Protocol::Tcp, TIMEOUT).expect("probe"));
    assert!(
        pods.contains(&backend),
        "the other client is served: {backend}"
    );
    assert_eq!(rule_drops(&dp), 0);

    let out = probe(&blocked.netns, node_port, Protocol::Tcp, SHORT).expect("probe");
    assert_eq!(
        out,
        ProbeOutcome::Timeout,
        "the blocked client gets no answer"
    );
    let at_xdp = policy_drops(&dp, "dp_xdp_uplink");
    assert!(at_xdp >= 1, "dropped at XDP: {at_xdp}");
    assert_eq!(
        policy_drops(&dp, "dp_from_uplink"),
        0,
        "none of its packets reached TC"
    );
    assert_eq!(rule_drops(&dp), at_xdp, "counted for the rule");

    // Failsafe TCP 22 (Calico's default inbound failsafes): past XDP and TC to the node's
    // stack, which refuses it.
    let out = probe(
        &blocked.netns,
        SocketAddr::new(node0, 22),
        Protocol::Tcp,
        TIMEOUT,
    )
    .expect("probe");
    assert_eq!(out, ProbeOutcome::Refused, "failsafe port 22 is exempt");
    assert_eq!(rule_drops(&dp), at_xdp, "nothing more dropped");

    // The rule removed, incrementally: the blocked client is served again.
    let mut open = state(&lab, blocked_net);
    open.host_policies.clear();
    let report = dp
        .apply_changes(&dataplane_core::diff(&state(&lab, blocked_net), &open))
        .expect("apply_changes without the policy");
    assert!(!report.full_sync, "{report:?}");
    let (backend, _) =
        answered(&probe(&blocked.netns, node_port, Protocol::Tcp, TIMEOUT).expect("probe"));
    assert!(
        pods.contains(&backend),
        "served once the rule is gone: {backend}"
    );
    dp.reset().expect("reset");
}
