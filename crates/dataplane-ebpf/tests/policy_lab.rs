//! NetworkPolicy with real traffic in the testkit lab (a smoke test; the full table is
//! `tests/policy_conformance.rs`).
//!
//! ```text
//!   node-0: pod-0-0 (client), pod-0-1        node-1: pod-1-0, pod-1-1
//! ```
//! Every pod is isolated for ingress (`deny-all`); `allow` lets `app=pod-0-0` reach
//! `pod-1-0` and `pod-0-1`. ClusterIP 10.96.0.10:80 -> pod-1-0. Node 0 runs with host
//! routing, so its pod-to-pod packets reach `dp_to_pod` through `dp_from_pod`'s redirect
//! rather than the stack (the conformance table covers the stack's way).

mod common;

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

use common::{answered, stat, PinDirs};
use dataplane_core::{
    diff, Backend, Dataplane, DesiredState, Namespace, ObjectName, PeerPod, Policy, Protocol,
    Service, ServicePort,
};
use dataplane_ebpf::{EbpfConfig, EbpfDataplane};
use dataplane_testkit::{
    probe, require_root, Family, Lab, LabSpec, ProbeOutcome, TcpSession, SERVER_PORT,
};

const TIMEOUT: Duration = Duration::from_secs(2);

fn pin_dir(node: usize) -> PathBuf {
    PathBuf::from(format!(
        "/sys/fs/bpf/dpe-pollab-{}-n{node}",
        std::process::id()
    ))
}

fn policy(json: serde_json::Value) -> Policy {
    serde_json::from_value(json).expect("policy JSON")
}

fn deny_all() -> Policy {
    policy(serde_json::json!({
        "namespace": "default", "name": "deny-all", "podSelector": {}, "policyTypes": ["Ingress"],
    }))
}

fn allow() -> Policy {
    policy(serde_json::json!({
        "namespace": "default", "name": "allow",
        "podSelector": {"matchExpressions": [{"key": "app", "operator": "In", "values": ["pod-1-0", "pod-0-1"]}]},
        "ingress": [{"peers": [{"podSelector": {"matchLabels": {"app": "pod-0-0"}}}]}],
    }))
}

fn state(lab: &Lab, node: usize, policies: Vec<Policy>) -> DesiredState {
    let mut st = lab.desired_state(node);
    st.namespaces = vec![Namespace::new("default")];
    st.pods = lab
        .pods()
        .iter()
        .filter(|p| p.node != node)
        .map(|p| {
            let mut pod = PeerPod::new(ObjectName::new("default", &p.name), p.addresses.clone())
                .with_label("app", &p.name);
            pod.node_name = Some(lab.node(p.node).name.as_str().into());
            pod
        })
        .collect();
    let target = lab.pod_by_name("pod-1-0").expect("pod-1-0");
    let mut svc = Service::new(ObjectName::new("default", "web"));
    svc.cluster_ips = vec!["10.96.0.10".parse().unwrap()];
    let named = |protocol: Protocol| ServicePort {
        name: protocol.to_string().to_lowercase(),
        ..ServicePort::new(protocol, 80, SERVER_PORT)
    };
    svc.ports = vec![named(Protocol::Tcp), named(Protocol::Udp)];
    let mut b = Backend::new(target.address(Family::V4).unwrap());
    b.node_name = Some(lab.node(target.node).name.as_str().into());
    svc.backends = vec![b];
    st.services = vec![svc];
    st.policies = policies;
    st
}

fn to(ip: IpAddr, port: u16) -> SocketAddr {
    SocketAddr::new(ip, port)
}

#[test]
#[allow(clippy::too_many_lines)] // one scene, read top to bottom
fn deny_all_and_an_allow_with_real_traffic() {
    if !require_root("deny_all_and_an_allow_with_real_traffic") {
        return;
    }
    let lab = Lab::new(LabSpec {
        nodes: 2,
        pods_per_node: 2,
        external_clients: 0,
        ipv6: false,
    })
    .expect("lab");
    let _pins = PinDirs((0..2).map(pin_dir).collect());
    let policies = vec![deny_all(), allow()];
    let mut dps: Vec<EbpfDataplane> = (0..2)
        .map(|i| {
            let _ = std::fs::remove_dir_all(pin_dir(i));
            let mut c = EbpfConfig::new(pin_dir(i));
            c.netns = Some(lab.node(i).netns.path().to_owned());
            c.host_routing = i == 0;
            let mut dp = EbpfDataplane::new(c).expect("load");
            dp.apply(&state(&lab, i, policies.clone())).expect("apply");
            dp
        })
        .collect();
    let pod = |name: &str| lab.pod_by_name(name).expect("pod");
    let ip = |name: &str| pod(name).address(Family::V4).unwrap();
    let (client, other) = (pod("pod-0-0"), pod("pod-0-1"));
    let cluster_ip = to("10.96.0.10".parse().unwrap(), 80);

    for proto in [Protocol::Tcp, Protocol::Udp] {
        let (who, seen) = answered(
            &probe(
                &client.netns,
                to(ip("pod-1-0"), SERVER_PORT),
                proto,
                TIMEOUT,
            )
            .expect("probe"),
        );
        assert_eq!(
            (who.as_str(), seen),
            ("pod-1-0", ip("pod-0-0")),
            "{proto}: allowed across nodes"
        );
        let (who, _) = answered(
            &probe(
                &client.netns,
                to(ip("pod-0-1"), SERVER_PORT),
                proto,
                TIMEOUT,
            )
            .expect("probe"),
        );
        assert_eq!(who, "pod-0-1", "{proto}: allowed on the same node");
        let (who, _) = answered(&probe(&client.netns, cluster_ip, proto, TIMEOUT).expect("probe"));
        assert_eq!(
            who, "pod-1-0",
            "{proto}: allowed through the ClusterIP (after DNAT)"
        );
        for (from, dst, what) in [
            (other, to(ip("pod-1-0"), SERVER_PORT), "pod-0-1 -> pod-1-0"),
            (other, cluster_ip, "pod-0-1 -> ClusterIP -> pod-1-0"),
            (
                other,
                to(ip("pod-0-0"), SERVER_PORT),
                "pod-0-1 -> pod-0-0 (same node)",
            ),
            (client, to(ip("pod-1-1"), SERVER_PORT), "pod-0-0 -> pod-1-1"),
        ] {
            let out = probe(&from.netns, dst, proto, TIMEOUT).expect("probe");
            assert_eq!(out, ProbeOutcome::Timeout, "{proto}: {what} is dropped");
        }
    }
    // The node reaches its own pods whatever the policies (kubelet probes).
    let node0 = &lab.node(0).netns;
    let (who, _) = answered(
        &probe(
            node0,
            to(ip("pod-0-1"), SERVER_PORT),
            Protocol::Tcp,
            TIMEOUT,
        )
        .expect("probe"),
    );
    assert_eq!(who, "pod-0-1");
    assert!(
        stat(&dps[0], "policy_denied") > 0,
        "node-0 counted its drops"
    );
    assert!(
        stat(&dps[1], "policy_denied") > 0,
        "node-1 counted its drops"
    );

    // An established connection outlives the policy that allowed it; new ones do not.
    let mut session =
        TcpSession::open(&client.netns, to(ip("pod-1-0"), SERVER_PORT)).expect("connect");
    let (first, _) = session.request().expect("request");
    assert_eq!(first, "pod-1-0");
    for (i, dp) in dps.iter_mut().enumerate() {
        let before = state(&lab, i, policies.clone());
        let after = state(&lab, i, vec![deny_all()]);
        dp.apply_changes(&diff(&before, &after))
            .expect("allow removed");
    }
    let (again, _) = session.request().expect("request after the change");
    assert_eq!(again, "pod-1-0", "the established connection keeps flowing");
    let out = probe(
        &client.netns,
        to(ip("pod-1-0"), SERVER_PORT),
        Protocol::Tcp,
        TIMEOUT,
    )
    .expect("probe");
    assert_eq!(out, ProbeOutcome::Timeout, "a new connection is denied");
    for dp in &mut dps {
        dp.reset().expect("reset");
    }
}
