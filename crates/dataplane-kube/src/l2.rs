//! L2 announcements: which Services this node announces (`dataplane_core::Service::l2_announce`:
//! it answers ARP and neighbour solicitations for their LoadBalancer IPs and ExternalIPs).
//!
//! One node per Service should announce. Who decides is [`L2Announcements`]:
//!
//! - [`L2Announcements::Annotated`]: the Service says, by the annotation
//!   [`ANNOTATION_L2_ANNOUNCE_NODE`] naming the node (a manifest directory has no API server to
//!   hold leases in: the announcing node is configuration, as kube-vip's `kube-vip.io/vipHost`
//!   or a `MetalLB` `L2Advertisement`'s `nodeSelectors` make it).
//! - [`L2Announcements::Elected`]: an election outside the store (the node agent's one
//!   `coordination.k8s.io/v1` Lease per Service, as Cilium's `pkg/l2announcer` holds
//!   `cilium-l2announce-<namespace>-<name>`) hands the store the Services this node won,
//!   one at a time ([`Cluster::set_l2_announced`](crate::Cluster::set_l2_announced)): each
//!   flip re-translates that one Service, so the change set is that one service.
//! - [`L2Announcements::Off`] (the default): nothing is announced; a Service whose
//!   annotation names this node gets a warning that says so.
//!
//! A Service with nothing to announce (no LoadBalancer ingress IP nor ExternalIP of a family
//! it has a ClusterIP of) is not announced, with a warning when it was asked to be: the model
//! refuses `l2_announce` without an address (`ValidationError::Inconsistent`, `l2Announce`).

use std::collections::BTreeMap;

use dataplane_core::{Service, TrafficPolicy};

use crate::support::{is_subdomain, Warnings};

/// The Service annotation that names the node announcing its LoadBalancer IPs and
/// ExternalIPs when the announcing node is configured ([`L2Announcements::Annotated`]: the
/// node agent over a manifest directory). Its value is a node name (a DNS-1123 subdomain,
/// as `metadata.name` of a Node).
pub const ANNOTATION_L2_ANNOUNCE_NODE: &str = "dataplane.io/l2-announce-node";

/// Who decides which Services this node announces (see the module documentation).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum L2Announcements {
    /// No Service is announced.
    #[default]
    Off,
    /// The Services whose [`ANNOTATION_L2_ANNOUNCE_NODE`] names this node.
    Annotated,
    /// The Services given to [`Cluster::set_l2_announced`](crate::Cluster::set_l2_announced)
    /// (an election); the annotation is not read.
    Elected,
}

/// Whether `service` (translated from a Service with `annotations`) is announced by the node
/// `node_name`: by `mode`, `elected` telling the election's verdict. Warns (on `w`) when the
/// Service asks for something that is not done.
pub(crate) fn announced(
    mode: L2Announcements,
    elected: bool,
    annotations: Option<&BTreeMap<String, String>>,
    node_name: &str,
    service: &Service,
    w: &mut Warnings,
) -> bool {
    let field = || format!("metadata.annotations[{ANNOTATION_L2_ANNOUNCE_NODE}]");
    let named = annotations.and_then(|a| a.get(ANNOTATION_L2_ANNOUNCE_NODE));
    let asked = match (mode, named) {
        (L2Announcements::Elected, _) => elected,
        (_, None) => false,
        (mode, Some(value)) => {
            let value = value.trim();
            if !is_subdomain(value) {
                w.push(
                    field(),
                    format!("{value:?} is not a node name (a DNS-1123 subdomain); not announced"),
                );
                return false;
            }
            if value != node_name {
                return false;
            }
            if mode == L2Announcements::Off {
                w.push(
                    field(),
                    "names this node, but L2 announcements are off on it; not announced",
                );
                return false;
            }
            true
        }
    };
    if asked && service.load_balancer_ips.is_empty() && service.external_ips.is_empty() {
        let field = match mode {
            L2Announcements::Elected => "status.loadBalancer.ingress".to_owned(),
            _ => field(),
        };
        w.push(
            field,
            "no LoadBalancer IP or ExternalIP of the service's families to announce; not announced",
        );
        return false;
    }
    asked
}

/// Whether this node (`node_name`) may compete to announce `service` as translated: it has
/// an address to announce, and with `externalTrafficPolicy: Local` a ready endpoint on this
/// node (Cilium's l2announcer makes only such nodes candidates: another node would attract
/// traffic it has no endpoint for).
pub(crate) fn candidate(service: &Service, node_name: &str) -> bool {
    if service.load_balancer_ips.is_empty() && service.external_ips.is_empty() {
        return false;
    }
    service.external_traffic_policy == TrafficPolicy::Cluster
        || service
            .backends
            .iter()
            .any(|b| b.ready && !b.terminating && b.node_name.as_deref() == Some(node_name))
}
