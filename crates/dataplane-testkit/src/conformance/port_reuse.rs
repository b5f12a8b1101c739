//! Conntrack clashes when a client reuses its source port.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::Duration;

use dataplane_core::{Dataplane, IpFamily, ObjectName, Protocol, Service, ServicePort};

use crate::lab::{Lab, LabNode, POD_NAMESPACE, SERVER_PORT};
use crate::traffic::{probe_from, ProbeOutcome};

use super::report::{OneRow, Report, RowOutcome, RowReport};
use super::runner::{reset_all, start, unspecified};
use super::table::backend;
use dataplane_core::error_chain;

/// Conntrack clashes when a client reuses its source port (issue 15, item 11), run against
/// every backend like the table: a long TCP connection from a fixed client port to a
/// ClusterIP's port 80, then short connections from the same client port to port 81 of the
/// same service, whose only backend serves both ports on the same target port. Both
/// connections then map to the same backend tuple unless the dataplane resolves the clash as
/// netfilter does (another source port for the new one). Rows: each family, with the backend
/// on the client's node and on another node; each short connection must be answered by the
/// backend from another source port than the long one's, and the long connection must still
/// answer after each.
pub fn run_port_reuse(
    lab: &Lab,
    factory: &mut dyn FnMut(&LabNode) -> Box<dyn Dataplane>,
) -> Report {
    let (mut planes, caps, mut report) = start(lab, factory);
    let mut client_port = 42_100;
    for family in [IpFamily::V4, IpFamily::V6] {
        for (placement, pod) in [("local backend", 1), ("remote backend", 2)] {
            let name = format!("port reuse: {placement} {family:?}");
            client_port += 1;
            let outcome = if family == IpFamily::V6 && !(lab.spec().ipv6 && caps.ipv6) {
                RowOutcome::Skipped {
                    reason: "no IPv6 in the lab or the backend".to_owned(),
                }
            } else {
                match port_reuse_row(lab, &mut planes, family, pod, client_port) {
                    Ok(probes) => RowOutcome::Passed {
                        probes,
                        answered: BTreeMap::new(),
                    },
                    Err(e) => RowOutcome::Failed {
                        table: Vec::new(),
                        traffic: vec![e],
                    },
                }
            };
            let row = RowReport { name, outcome };
            eprint!("{}", OneRow(&caps.dataplane, &row));
            report.rows.push(row);
        }
    }
    reset_all(&mut planes, &mut report);
    report
}

fn port_reuse_row(
    lab: &Lab,
    planes: &mut [Box<dyn Dataplane>],
    family: IpFamily,
    pod: usize,
    client_port: u16,
) -> Result<usize, String> {
    let mut service = Service::new(ObjectName::new(POD_NAMESPACE, "reuse"));
    service.cluster_ips = vec![
        "10.96.2.1".parse().expect("literal address"),
        "fd00:96::2:1".parse().expect("literal address"),
    ];
    service.ports = [("long", 80), ("short", 81)]
        .into_iter()
        .map(|(name, port)| ServicePort {
            name: name.to_owned(),
            protocol: Protocol::Tcp,
            port,
            target_port: SERVER_PORT,
            node_port: None,
        })
        .collect();
    service.backends = vec![
        backend(lab, pod, IpFamily::V4),
        backend(lab, pod, IpFamily::V6),
    ];
    for (i, plane) in planes.iter_mut().enumerate() {
        let mut state = lab.desired_state(i);
        state.services = vec![service.clone()];
        plane
            .apply(&state)
            .map_err(|e| format!("apply on node-{i}: {}", error_chain(&e)))?;
    }
    let client = lab.pod(0);
    let ip = *service
        .cluster_ips
        .iter()
        .find(|ip| IpFamily::of(ip) == family)
        .expect("both families");
    let source = SocketAddr::new(unspecified(family), client_port);
    let timeout = Duration::from_secs(3);
    let mut long = crate::traffic::TcpSession::open_from(
        &client.netns,
        Some(source),
        SocketAddr::new(ip, 80),
        timeout,
    )
    .map_err(|e| format!("long connection: {}", error_chain(&e)))?;
    let (first, long_seen) = long
        .request()
        .map_err(|e| format!("long connection, first request: {}", error_chain(&e)))?;
    let want = lab.pod(pod).name.clone();
    if first != want {
        return Err(format!(
            "long connection answered by {first}, expected {want}"
        ));
    }
    let mut probes = 1;
    for round in 0..6 {
        let outcome = probe_from(
            &client.netns,
            Some(source),
            SocketAddr::new(ip, 81),
            Protocol::Tcp,
            timeout,
        )
        .map_err(|e| format!("round {round}: short connection: {}", error_chain(&e)))?;
        probes += 1;
        match outcome {
            ProbeOutcome::Answered {
                backend,
                seen_source,
                ..
            } if backend == want => {
                if seen_source == long_seen {
                    return Err(format!(
                        "round {round}: the short connection reached {want} as {seen_source}, the long one's address"
                    ));
                }
            }
            other => {
                return Err(format!(
                    "round {round}: short connection from port {client_port}: {other:?}"
                ))
            }
        }
        let (again, seen) = long.request().map_err(|e| {
            format!(
                "round {round}: the long connection died after a short one from its port: {}",
                error_chain(&e)
            )
        })?;
        probes += 1;
        if again != want || seen != long_seen {
            return Err(format!(
                "round {round}: the long connection now reaches {again} as {seen} (was {want} as {long_seen})"
            ));
        }
    }
    Ok(probes)
}
