//! Health-check NodePort data for `externalTrafficPolicy: Local` services.
//!
//! Load balancers probe `http://NODE:healthCheckNodePort/` and send traffic only to nodes that
//! answer 200, i.e. that have a local endpoint (kube-proxy's service health server). The HTTP
//! server belongs to the agent; this module says what it must answer, from the same
//! eligibility rules the datapath uses.

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
    /// Local endpoints that take new external connections (ready ones, or the serving
    /// terminating ones when none is ready). Zero: answer 503 so that traffic goes elsewhere.
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
    // A backend counts once however many ports and families the service has.
    let mut local: BTreeSet<IpAddr> = BTreeSet::new();
    for port in &s.ports {
        for family in [IpFamily::V4, IpFamily::V6] {
            if let Eligible::Backends(b) =
                eligible_backends(state, s, port, TrafficKind::External, family)
            {
                local.extend(b.iter().map(|b| b.ip));
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
    fn no_local_endpoint_is_503_and_terminating_fallback_counts() {
        let mut st = state();
        st.services[0].backends[0].ready = false;
        assert_eq!(health_checks(&st)[0].local_endpoints, 0);
        assert_eq!(health_checks(&st)[0].http_status(), 503);
        // Only terminating-but-serving local endpoints: they still take connections.
        st.services[0].backends[0].terminating = true;
        st.services[0].backends[0].serving = true;
        assert_eq!(health_checks(&st)[0].local_endpoints, 1);
    }
}
