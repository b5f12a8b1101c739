//! Health-check NodePort data for `externalTrafficPolicy: Local` services.
//!
//! Load balancers probe `http://NODE:healthCheckNodePort/` and send traffic only to nodes that
//! answer 200, i.e. that have a ready local endpoint (kube-proxy's service health server). The
//! HTTP server belongs to the agent; this module says what it must answer, from the same
//! eligibility rules the datapath uses, less the datapath's terminating fallback: a node whose
//! only local endpoints are terminating answers 503 (kube-proxy's `LocalReadyEndpoints`:
//! "health check signal should fail if there are only terminating endpoints on a node"), so
//! that load balancers move new connections elsewhere while those endpoints drain, and the
//! datapath still sends them what arrives meanwhile.

use std::collections::BTreeSet;
use std::net::IpAddr;

use serde::{Deserialize, Serialize};

use crate::model::{DesiredState, ObjectName, Service, TrafficPolicy};
use crate::reference::{eligible_backends, Eligible, IpFamily, TrafficKind};

/// What one service's health-check NodePort must report on this node.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct HealthCheck {
    /// The service.
    pub service: ObjectName,
    /// `healthCheckNodePort`.
    pub node_port: u16,
    /// Ready local endpoints (terminating ones do not count, even those the datapath falls
    /// back to). Zero: answer 503 so that traffic goes elsewhere.
    pub local_endpoints: usize,
}

impl HealthCheck {
    /// The HTTP status a health server answers with: 200 with local endpoints, else 503.
    pub fn http_status(&self) -> u16 {
        if self.local_endpoints > 0 {
            200
        } else {
            503
        }
    }
}

/// The health checks of every service with `externalTrafficPolicy: Local` and a
/// `healthCheckNodePort`, in service order.
pub fn health_checks(state: &DesiredState) -> Vec<HealthCheck> {
    state
        .services
        .iter()
        .filter_map(|s| health_check(state, s))
        .collect()
}

/// [`health_checks`] for one service of `state` (only `state.node` is read, so the service
/// need not be in `state.services`): `None` unless it has a `healthCheckNodePort`.
pub fn health_check(state: &DesiredState, s: &Service) -> Option<HealthCheck> {
    if s.external_traffic_policy != TrafficPolicy::Local {
        return None;
    }
    let node_port = s.health_check_node_port?;
    // A backend counts once however many ports and families the service has. Only ready
    // ones: when none is ready the datapath falls back to serving terminating endpoints, but
    // the health check fails (kube-proxy's `EndpointsMap.LocalReadyEndpoints`).
    let mut local: BTreeSet<IpAddr> = BTreeSet::new();
    for port in &s.ports {
        for family in [IpFamily::V4, IpFamily::V6] {
            if let Eligible::Backends(b) =
                eligible_backends(state, s, port, TrafficKind::External, family)
            {
                local.extend(b.iter().filter(|b| b.ready && !b.terminating).map(|b| b.ip));
            }
        }
    }
    Some(HealthCheck {
        service: s.name.clone(),
        node_port,
        local_endpoints: local.len(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{Backend, Service, ServicePort};
    use crate::synthetic;
    use crate::Protocol;

    fn state() -> DesiredState {
        let mut st = synthetic::state(0, 0);
        let node = st.node.name.clone();
        let mut svc = Service::new(ObjectName::new("default", "web"));
        svc.cluster_ips = vec!["10.96.0.10".parse().unwrap()];
        svc.ports = vec![ServicePort {
            name: "http".into(),
            protocol: Protocol::Tcp,
            port: 80,
            target_port: 8080,
            node_port: Some(30080),
        }];
        svc.external_traffic_policy = TrafficPolicy::Local;
        svc.health_check_node_port = Some(32000);
        let mut local = Backend::new("10.244.0.5".parse().unwrap());
        local.node_name = Some(node.as_str().into());
        let mut local_not_ready = Backend::new("10.244.0.6".parse().unwrap());
        local_not_ready.node_name = Some(node.into());
        local_not_ready.ready = false;
        let mut remote = Backend::new("10.244.1.5".parse().unwrap());
        remote.node_name = Some("elsewhere".into());
        svc.backends = vec![local, local_not_ready, remote];
        let mut cluster = svc.clone();
        cluster.name = ObjectName::new("default", "cluster");
        cluster.external_traffic_policy = TrafficPolicy::Cluster;
        cluster.health_check_node_port = None;
        st.services = vec![svc, cluster];
        st
    }

    #[test]
    fn counts_ready_local_endpoints_of_local_services_only() {
        let st = state();
        let hc = health_checks(&st);
        assert_eq!(
            hc,
            vec![HealthCheck {
                service: ObjectName::new("default", "web"),
                node_port: 32000,
                local_endpoints: 1,
            }]
        );
        assert_eq!(hc[0].http_status(), 200);
    }

    #[test]
    fn no_ready_local_endpoint_is_503_even_with_terminating_ones_serving() {
        let mut st = state();
        st.services[0].backends[0].ready = false;
        assert_eq!(health_checks(&st)[0].local_endpoints, 0);
        assert_eq!(health_checks(&st)[0].http_status(), 503);
        // Only terminating-but-serving local endpoints: the datapath still sends external
        // connections to them (the fallback), but the health check fails so that load
        // balancers stop sending new ones (kube-proxy's LocalReadyEndpoints).
        st.services[0].backends[0].terminating = true;
        st.services[0].backends[0].serving = true;
        let port = st.services[0].ports[0].clone();
        assert!(matches!(
            eligible_backends(&st, &st.services[0], &port, TrafficKind::External, IpFamily::V4),
            Eligible::Backends(b) if b.len() == 1 && b[0].terminating
        ));
        assert_eq!(health_checks(&st)[0].local_endpoints, 0);
        assert_eq!(health_checks(&st)[0].http_status(), 503);
        // A ready one next to it: counted alone.
        st.services[0].backends[1].ready = true;
        assert_eq!(health_checks(&st)[0].local_endpoints, 1);
    }
}
