//! The agent end to end, as a real process per lab node over a manifest directory, for each
//! dataplane: a Service + EndpointSlice file makes traffic flow, editing it moves the
//! traffic, and removing its endpoints and then the file gives what kube-proxy gives (the
//! reference model says which); a Local service's health port answers 200 with the local
//! endpoint count on the node that has one and 503 on the other, and follows the endpoint
//! when it moves; a dual-stack service (one slice per family) answers on both families.
//!
//! ```text
//!   external-0 ──▶ node-0:30080 / node-1:30080 (NodePort), node-i:32000 (healthCheckNodePort)
//!   pod-0-0 ──▶ 10.96.0.10:80 (ClusterIP "web")
//!   node-0: agent (nsenter) pods pod-0-0 pod-0-1 │ node-1: agent, pods pod-1-0 pod-1-1
//!   each agent: --manifests <tmp>/node-i  (cluster.yaml + one file per service)
//! ```

mod common;

use std::net::SocketAddr;

use common::agent::{Backend, HEALTHZ_PORT};
use common::manifests::{self, service_file, ServiceDef, LOCAL, WEB};
use common::{
    http, model_expects, model_service, wait_for_backend, wait_for_outcome, wait_for_udp_backend,
    wait_until,
};
use dataplane::reference::Entry;
use dataplane_testkit::{Family, Lab, ProbeOutcome};

/// Lab pods (lab-wide indices, node-major: 2 pods per node).
const POD_0_1: usize = 1;
const POD_1_0: usize = 2;
const POD_1_1: usize = 3;

fn node_addr(lab: &Lab, node: usize, port: u16) -> SocketAddr {
    SocketAddr::new(lab.node(node).address(Family::V4).expect("IPv4 node"), port)
}

fn service_file_lifecycle(backend: Backend) {
    let _serial = common::serial();
    let (lab, dirs, mut agents) = common::start_lab(backend, 1);
    let client = lab.pod(0);
    let client_ip = client.address(Family::V4).expect("IPv4 pod");
    let external = &lab.external(0).netns;
    let vip = SocketAddr::new(WEB.cluster_ip.parse().expect("ClusterIP"), WEB.port);
    let from_client = Entry::FromPod(client.endpoint().name);

    // The file makes traffic flow: the ClusterIP from a pod on the other node, the NodePort
    // of both nodes from outside.
    dirs.write("web.yaml", &service_file(&lab, &WEB, Some(&[POD_1_0])));
    wait_for_backend(&client.netns, vip, "pod-1-0", 3);
    wait_for_udp_backend(&client.netns, vip, "pod-1-0", 3);
    for node in 0..2 {
        wait_for_backend(
            external,
            node_addr(&lab, node, WEB.node_port.unwrap()),
            "pod-1-0",
            3,
        );
    }

    // Editing it moves the traffic to the new endpoint (on the client's own node now).
    dirs.write("web.yaml", &service_file(&lab, &WEB, Some(&[POD_0_1])));
    wait_for_backend(&client.netns, vip, "pod-0-1", 5);
    // New UDP flows too. (A flow that keeps its 5-tuple stays with the removed endpoint:
    // the dataplanes let UDP conntrack entries age out where kube-proxy deletes them.)
    wait_for_udp_backend(&client.netns, vip, "pod-0-1", 3);
    wait_for_backend(
        external,
        node_addr(&lab, 1, WEB.node_port.unwrap()),
        "pod-0-1",
        3,
    );

    // The Service without endpoints (the slice is gone from the file).
    let expect = model_expects(
        &lab,
        0,
        vec![model_service(&lab, &WEB, &[])],
        &from_client,
        client_ip,
        vip,
    );
    assert_eq!(expect, common::Expect::Refused, "kube-proxy rejects");
    dirs.write("web.yaml", &service_file(&lab, &WEB, None));
    wait_for_outcome("web without endpoints", &client.netns, vip, 3, |o| {
        expect.accepts(o)
    });

    // The file deleted: the address is no service any more.
    let expect = model_expects(&lab, 0, Vec::new(), &from_client, client_ip, vip);
    dirs.remove("web.yaml");
    wait_for_outcome("web deleted", &client.netns, vip, 3, |o| expect.accepts(o));
    agents.assert_running(0);
    agents.assert_running(1);
}

common::per_backend!(service_file_lifecycle:
    service_file_lifecycle_ebpf => Ebpf,
    service_file_lifecycle_nft => Nft,
    service_file_lifecycle_iptables => Iptables,
);

/// A dual-stack NodePort service: ClusterIPs `10.96.0.12` and `fd00:96::12`, NodePort 30082.
const DUAL: ServiceDef<'static> = ServiceDef {
    name: "dual",
    cluster_ip: "10.96.0.12",
    cluster_ip_v6: Some("fd00:96::12"),
    node_port: Some(30082),
    udp: false,
    ..WEB
};

/// The dual-stack service with one EndpointSlice per family, as the EndpointSlice
/// controller writes them.
fn dual_file(lab: &Lab, pods: &[usize]) -> String {
    let mut text = manifests::service(&DUAL);
    for family in [Family::V4, Family::V6] {
        text.push_str(&manifests::endpoint_slice_of(
            lab, DUAL.name, pods, None, family, false,
        ));
    }
    text
}

fn dual_stack_service(backend: Backend) {
    let _serial = common::serial();
    let (lab, dirs, mut agents) = common::start_lab_with(backend, 1, true);
    let client = lab.pod(0);
    let external = &lab.external(0).netns;
    let vips: Vec<SocketAddr> = std::iter::once(DUAL.cluster_ip)
        .chain(DUAL.cluster_ip_v6)
        .map(|ip| SocketAddr::new(ip.parse().expect("ClusterIP"), DUAL.port))
        .collect();
    let node_ports: Vec<SocketAddr> = [Family::V4, Family::V6]
        .into_iter()
        .map(|family| {
            SocketAddr::new(
                lab.node(0).address(family).expect("dual-stack node"),
                DUAL.node_port.unwrap(),
            )
        })
        .collect();

    dirs.write("dual.yaml", &dual_file(&lab, &[POD_1_0]));
    for &dst in &vips {
        wait_for_backend(&client.netns, dst, "pod-1-0", 3);
    }
    for &dst in &node_ports {
        wait_for_backend(external, dst, "pod-1-0", 3);
    }

    // Both slices edited: both families move.
    dirs.write("dual.yaml", &dual_file(&lab, &[POD_0_1]));
    for &dst in vips.iter().chain(&node_ports) {
        let netns = if node_ports.contains(&dst) {
            external
        } else {
            &client.netns
        };
        wait_for_backend(netns, dst, "pod-0-1", 3);
    }
    agents.assert_running(0);
    agents.assert_running(1);
}

common::per_backend!(dual_stack_service:
    dual_stack_service_ebpf => Ebpf,
    dual_stack_service_nft => Nft,
    dual_stack_service_iptables => Iptables,
);

/// `GET /` on `node`'s health check node port from the external client: status and the
/// `localEndpoints` of the JSON body (kube-proxy's format).
fn service_health(lab: &Lab, node: usize) -> Result<(u16, i64), String> {
    let addr = node_addr(lab, node, LOCAL.health_check_node_port.unwrap());
    let response = http::get(&lab.external(0).netns, addr, "/")?;
    let body: serde_json::Value = serde_json::from_str(&response.body)
        .map_err(|e| format!("{addr}: not JSON ({e}): {:?}", response.body))?;
    let expected_service = serde_json::json!({"namespace": "default", "name": LOCAL.name});
    if body["service"] != expected_service || body["serviceProxyHealthy"] != true {
        return Err(format!("{addr}: unexpected body {body}"));
    }
    let local = body["localEndpoints"]
        .as_i64()
        .ok_or_else(|| format!("{addr}: no localEndpoints in {body}"))?;
    Ok((response.status, local))
}

fn wait_for_health(lab: &Lab, node: usize, expected: (u16, i64)) {
    wait_until(
        &format!("health of {} on node-{node} = {expected:?}", LOCAL.name),
        || match service_health(lab, node)? {
            found if found == expected => Ok(()),
            found => Err(format!("{found:?}")),
        },
    );
}

fn local_service_health(backend: Backend) {
    let _serial = common::serial();
    let (lab, dirs, mut agents) = common::start_lab(backend, 1);

    // The endpoint on node-1: 200 there, 503 on node-0 (kube-proxy's healthcheck server).
    dirs.write("local.yaml", &service_file(&lab, &LOCAL, Some(&[POD_1_1])));
    wait_for_health(&lab, 1, (200, 1));
    wait_for_health(&lab, 0, (503, 0));

    // The traffic agrees: node-1 answers from its local endpoint keeping the client's
    // address; node-0 does what the model says a Local service without local endpoints does.
    let external = lab.external(0);
    let external_ip = external.address(Family::V4).expect("IPv4 client");
    let port = LOCAL.node_port.unwrap();
    let outcome = wait_for_outcome(
        "local NodePort on node-1",
        &external.netns,
        node_addr(&lab, 1, port),
        3,
        |o| o.backend() == Some("pod-1-1"),
    );
    let ProbeOutcome::Answered { seen_source, .. } = outcome else {
        unreachable!("answered")
    };
    assert_eq!(
        seen_source.ip(),
        external_ip,
        "externalTrafficPolicy Local keeps the client's address"
    );
    let expect = model_expects(
        &lab,
        0,
        vec![model_service(&lab, &LOCAL, &[POD_1_1])],
        &Entry::FromUplink,
        external_ip,
        node_addr(&lab, 0, port),
    );
    wait_for_outcome(
        "local NodePort on node-0",
        &external.netns,
        node_addr(&lab, 0, port),
        2,
        |o| expect.accepts(o),
    );

    // The endpoint moves to node-0: the answers swap.
    dirs.write("local.yaml", &service_file(&lab, &LOCAL, Some(&[0])));
    wait_for_health(&lab, 0, (200, 1));
    wait_for_health(&lab, 1, (503, 0));

    // The node's own health: /healthz and /livez answer 200 on the node's address.
    for node in 0..2 {
        for path in ["/healthz", "/livez"] {
            let addr = node_addr(&lab, node, HEALTHZ_PORT);
            wait_until(&format!("{path} on node-{node}"), || {
                let r = http::get(&external.netns, addr, path)?;
                if r.status == 200 {
                    Ok(())
                } else {
                    Err(format!("{} {}", r.status, r.body))
                }
            });
        }
    }

    // The file deleted: nothing listens on the health check node port any more.
    dirs.remove("local.yaml");
    for node in 0..2 {
        wait_until(
            &format!("health check port closed on node-{node}"),
            || match service_health(&lab, node) {
                Err(e) if e.contains("refused") => Ok(()),
                other => Err(format!("{other:?}")),
            },
        );
    }
    agents.assert_running(0);
    agents.assert_running(1);
}

common::per_backend!(local_service_health:
    local_service_health_ebpf => Ebpf,
    local_service_health_nft => Nft,
    local_service_health_iptables => Iptables,
);
