//! The desired states the bench programs: N services with two targets for the end-to-end
//! measurement, N services (10k by default) with a probe service for the control plane. Synthetic services
//! (`dataplane::testing::synthetic`) fill the tables; the targets and the probe point at the
//! lab node's own pods, on ClusterIPs far above the synthetic ones. The NetworkPolicy
//! sections' states: the last target with 1k synthetic policies (`synthetic::policies`) over
//! 10k peer pods selecting its backends.

use std::net::{IpAddr, Ipv4Addr};

use dataplane::testing::synthetic;
use dataplane::{
    Backend, DesiredState, LabelSelector, ObjectName, PeerPod, Protocol, Service, ServicePort,
};

use crate::load;

/// Services of the control-plane bench by default (and of the compute-only costs), and the
/// reference size of the end-to-end targets (CRR at 10k, flat from 1 to 10k; beyond, flat
/// from 10k to the largest size).
pub const CONTROL_SERVICES: usize = 10_000;

fn vip(i: usize) -> Ipv4Addr {
    match synthetic::cluster_ip(i) {
        IpAddr::V4(a) => a,
        IpAddr::V6(_) => unreachable!("synthetic ClusterIPs are IPv4"),
    }
}

/// ClusterIP of lab node `node`'s last target: far above the synthetic ones, and different on
/// every node.
pub fn vip_last(node: usize) -> Ipv4Addr {
    vip(500_000 + 2 * node)
}
/// ClusterIP of lab node `node`'s random target (as [`vip_last`]).
pub fn vip_random(node: usize) -> Ipv4Addr {
    vip(500_001 + 2 * node)
}
/// ClusterIP of the control plane's probe service (the same on every node: the control plane
/// is measured on one node at a time).
pub fn vip_probe() -> Ipv4Addr {
    vip(499_990)
}

/// Service `namespace/name`: TCP port 80 on `cluster_ip` to `pods` of `node` on `load::PORT`.
fn target_service(
    namespace: &str,
    name: &str,
    cluster_ip: Ipv4Addr,
    pods: &[Ipv4Addr],
    node: &str,
) -> Service {
    let mut s = Service::new(ObjectName::new(namespace, name));
    s.cluster_ips = vec![IpAddr::V4(cluster_ip)];
    s.ports = vec![ServicePort {
        name: String::new(),
        protocol: Protocol::Tcp,
        port: 80,
        target_port: load::PORT,
        node_port: None,
    }];
    s.backends = pods
        .iter()
        .map(|ip| {
            let mut b = Backend::new(IpAddr::V4(*ip));
            b.node_name = Some(node.into());
            b
        })
        .collect();
    s
}

/// splitmix64 step: deterministic placement of the random target.
fn splitmix(seed: u64) -> u64 {
    let mut z = seed.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// N services on `node`: N-2 synthetic ones, the random target at a random index (name
/// `bench/svc-<r>-target`, next to `svc-<r>` in name order) and the last target
/// (`zzz-bench/target-last`, last in both list and name order). N = 1: only the last one.
/// Returns the state and the name-order rank of the random target.
pub fn scaling_state(
    base: &DesiredState,
    index: usize,
    pods: &[Ipv4Addr],
    n: usize,
) -> (DesiredState, usize) {
    let node = base.node.name.clone();
    let mut st = base.clone();
    let last = target_service("zzz-bench", "target-last", vip_last(index), pods, &node);
    if n <= 1 {
        st.services = vec![last];
        return (st, 0);
    }
    let synth = n - 2;
    let r = (splitmix(n as u64) % (synth.max(1) as u64)) as usize;
    let mut services: Vec<Service> = (0..synth).map(|i| synthetic::service(i, 10)).collect();
    let random = target_service(
        "bench",
        &format!("svc-{r}-target"),
        vip_random(index),
        pods,
        &node,
    );
    let rank = services.iter().filter(|s| s.name < random.name).count();
    services.insert(r.min(services.len()), random);
    services.push(last);
    st.services = services;
    (st, rank)
}

/// The control plane's state of `n` services on `base`'s node: `n - 1` synthetic services and
/// the probe service (`zzz-bench/probe`, last), whose one backend is `probe_backend`.
pub fn control_state(base: &DesiredState, n: usize, probe_backend: Ipv4Addr) -> DesiredState {
    let mut st = base.clone();
    let node = st.node.name.clone();
    // Sized once: growing by the last push would double the vector's capacity, which the
    // peak-RSS measurement would count.
    st.services = Vec::with_capacity(n.max(1));
    st.services
        .extend((0..n.saturating_sub(1)).map(|i| synthetic::service(i, 10)));
    st.services.push(target_service(
        "zzz-bench",
        "probe",
        vip_probe(),
        &[probe_backend],
        &node,
    ));
    st
}

/// Policies of the NetworkPolicy sections (all selecting the node's backend pods).
pub const POLICIES: usize = 1_000;
/// Peer pods of the NetworkPolicy sections.
pub const PEERS: usize = 10_000;
/// The label the backend pods carry in the policy states, and that every policy selects.
const POLICY_TARGET: (&str, &str) = ("bench", "policy-target");

/// The states of the NetworkPolicy sections on one lab node (see `policy`).
pub struct PolicyStates {
    /// The node's endpoints (backend pods labelled as the policies' target, the client pod
    /// as the group that policy 0 admits) and the last target service: no policies.
    pub base: DesiredState,
    /// `base` with [`POLICIES`] policies over [`PEERS`] peer pods, and `remote` (denied).
    pub with_policies: DesiredState,
    /// A pod of another lab node as a peer pod, with a label no policy admits.
    pub remote: PeerPod,
}

impl PolicyStates {
    /// The states of node `index` (`base` from the lab, `pods` its backend pods), with the
    /// pod `remote_name` at `remote_ip` on node `remote_node` as the remote peer.
    pub fn new(
        base: &DesiredState,
        index: usize,
        pods: &[Ipv4Addr],
        remote_name: ObjectName,
        remote_ip: Ipv4Addr,
        remote_node: &str,
    ) -> PolicyStates {
        let node = base.node.name.clone();
        let mut st = base.clone();
        let backends: Vec<IpAddr> = pods.iter().map(|p| IpAddr::V4(*p)).collect();
        for e in &mut st.endpoints {
            if e.ips.iter().any(|ip| backends.contains(ip)) {
                e.labels
                    .insert(POLICY_TARGET.0.to_owned(), POLICY_TARGET.1.to_owned());
            } else {
                e.labels
                    .insert(synthetic::ROLE_LABEL.to_owned(), synthetic::admitted(0).1);
            }
        }
        st.services = vec![target_service(
            "zzz-bench",
            "target-last",
            vip_last(index),
            pods,
            &node,
        )];
        let remote = PeerPod::new(remote_name, [IpAddr::V4(remote_ip)])
            .with_label(synthetic::ROLE_LABEL, "denied")
            .on_node(remote_node);
        let mut with_policies = st.clone();
        let target = LabelSelector {
            match_labels: std::iter::once((POLICY_TARGET.0.to_owned(), POLICY_TARGET.1.to_owned()))
                .collect(),
            match_expressions: Vec::new(),
        };
        let namespace = st
            .endpoints
            .first()
            .map_or_else(|| "default".to_owned(), |e| e.name.namespace.to_string());
        synthetic::policies(POLICIES, PEERS, &namespace, &target, load::PORT)
            .add_to(&mut with_policies);
        with_policies.pods.push(remote.clone());
        PolicyStates {
            base: st,
            with_policies,
            remote,
        }
    }

    /// The remote peer relabelled into the group policy 0 admits (its namespace is the
    /// target's, which the policies label `team-0`).
    pub fn remote_admitted(&self) -> PeerPod {
        let mut pod = self.remote.clone();
        pod.labels
            .insert(synthetic::ROLE_LABEL.to_owned(), synthetic::admitted(0).1);
        pod
    }
}
