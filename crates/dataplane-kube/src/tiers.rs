//! The cluster-wide and host policy tiers of the state from their objects
//! ([`crate::anp`], [`crate::calico`]), and the cluster's Nodes as policy peers.
//!
//! Unlike the other kinds, a tier object that does not translate is refused
//! ([`TranslateError::Rejected`]) rather than left out with a warning: a Deny rule left out
//! opens what it should close. The tiers are few objects, translated again together when one
//! changes, and checked together (with [`dataplane_core::validate`]) before an object is
//! stored, so that the store never holds a set that does not translate.

use std::net::IpAddr;

use dataplane_core::{
    BaselinePolicy, ClusterPolicy, DesiredState, FailsafePorts, HostEndpoint, HostPolicy, PeerNode,
};
use k8s_openapi::api::core::v1::{Node, NodeStatus};

use crate::calico::{FELIX_DEFAULT, FELIX_NODE_PREFIX};
use crate::support::Warnings;
use crate::{Kind, Object, ObjectKey, TranslateError};

/// The tiers of one node's state.
#[derive(Debug, Clone, PartialEq, Default)]
pub(crate) struct Tiers {
    pub cluster_policies: Vec<ClusterPolicy>,
    pub baseline_policy: Option<BaselinePolicy>,
    pub host_endpoints: Vec<HostEndpoint>,
    pub host_policies: Vec<HostPolicy>,
    pub failsafe_ports: FailsafePorts,
}

/// Translates `objects` (the tier objects of the store) for node `node_name`. An object
/// that does not translate, or a set that does not validate, is an error naming the object
/// (for the latter, `checking` when given: the object being stored).
pub(crate) fn translate_tiers(
    node_name: &str,
    objects: &[(ObjectKey, Object)],
    checking: Option<&ObjectKey>,
) -> Result<Tiers, TranslateError> {
    let mut out = Tiers::default();
    let mut felix_default = None;
    let mut felix_node = None;
    let node_felix = format!("{FELIX_NODE_PREFIX}{node_name}");
    for (key, object) in objects {
        let reject = |(field, message): (String, String)| TranslateError::Rejected {
            object: key.clone(),
            field,
            message,
        };
        match object {
            Object::AdminNetworkPolicy(o) => out
                .cluster_policies
                .push(crate::anp::translate_admin(&key.name, o).map_err(reject)?),
            Object::BaselineAdminNetworkPolicy(o) => {
                out.baseline_policy =
                    Some(crate::anp::translate_baseline(&key.name, o).map_err(reject)?);
            }
            Object::HostEndpoint(o) => {
                let e = crate::calico::translate_host_endpoint(&key.name, o).map_err(reject)?;
                // Another node's endpoint is no subject here (Calico: `spec.node`).
                if e.node == node_name {
                    out.host_endpoints.push(e);
                }
            }
            Object::GlobalNetworkPolicy(o) => out
                .host_policies
                .push(crate::calico::translate_global_policy(&key.name, o).map_err(reject)?),
            Object::FelixConfiguration(o) => {
                if *key.name == *FELIX_DEFAULT {
                    felix_default = Some((key, o));
                } else if *key.name == *node_felix {
                    felix_node = Some((key, o));
                }
                // Each checked on its own too, so that an error names the one at fault.
                crate::calico::failsafe_ports(Some(o), None).map_err(reject)?;
            }
            _ => {}
        }
    }
    out.failsafe_ports = crate::calico::failsafe_ports(
        felix_default.map(|(_, o)| &**o),
        felix_node.map(|(_, o)| &**o),
    )
    .map_err(|(field, message)| TranslateError::Rejected {
        object: ObjectKey::cluster(Kind::FelixConfiguration, node_felix.clone()),
        field,
        message,
    })?;
    // The node here only makes the state valid: what is checked is the tiers.
    let probe_node = dataplane_core::Node::new(node_name, [IpAddr::from([192, 0, 2, 1])]);
    let mut probe = DesiredState::new(probe_node);
    probe.cluster_policies.clone_from(&out.cluster_policies);
    probe.baseline_policy.clone_from(&out.baseline_policy);
    probe.host_endpoints.clone_from(&out.host_endpoints);
    probe.host_policies.clone_from(&out.host_policies);
    probe.failsafe_ports.clone_from(&out.failsafe_ports);
    if let Err(e) = dataplane_core::validate(&probe) {
        let object = checking
            .cloned()
            .unwrap_or_else(|| ObjectKey::cluster(Kind::AdminNetworkPolicy, "(policy tiers)"));
        return Err(TranslateError::Rejected {
            object,
            field: "spec".to_owned(),
            message: e.to_string(),
        });
    }
    Ok(out)
}

/// Why the store would refuse `object` on its own (a field of a policy tier object the
/// model cannot hold), as a field and a message; `None` for the other kinds, and for an
/// object whose name is missing (the store refuses that for its own reason).
pub(crate) fn rejection(object: &Object) -> Option<(String, String)> {
    let name = object.metadata().name.as_deref()?;
    let result = match object {
        Object::AdminNetworkPolicy(o) => crate::anp::translate_admin(name, o).map(drop),
        Object::BaselineAdminNetworkPolicy(o) => crate::anp::translate_baseline(name, o).map(drop),
        Object::HostEndpoint(o) => crate::calico::translate_host_endpoint(name, o).map(drop),
        Object::GlobalNetworkPolicy(o) => crate::calico::translate_global_policy(name, o).map(drop),
        Object::FelixConfiguration(o) => crate::calico::failsafe_ports(Some(o), None).map(drop),
        _ => Ok(()),
    };
    result.err()
}

/// What a Node other than this one is kept for: its name, labels and addresses (a peer of
/// `nodes` rules). Its status heartbeats are then no change.
pub(crate) fn strip_peer_node(node: &mut Node) {
    let addresses = node.status.as_mut().and_then(|s| s.addresses.take());
    node.spec = None;
    node.status = addresses.map(|a| NodeStatus {
        addresses: Some(a),
        ..NodeStatus::default()
    });
}

/// Node `name` as a policy peer: its `InternalIP` and `ExternalIP` addresses (those kube-proxy
/// reads as node IPs, `GetNodeHostIPs`) and labels.
pub(crate) fn peer_node(name: &str, node: &Node, w: &mut Warnings) -> Option<PeerNode> {
    let mut out = PeerNode::new(name, []);
    out.labels = node.metadata.labels.clone().unwrap_or_default();
    let addresses = node.status.as_ref().and_then(|s| s.addresses.as_ref());
    for (i, a) in addresses.into_iter().flatten().enumerate() {
        if a.type_ != "InternalIP" && a.type_ != "ExternalIP" {
            continue;
        }
        match crate::parse_ip_sloppy(&a.address) {
            Ok(ip) if !ip.is_unspecified() && !ip.is_multicast() => {
                if !out.addresses.contains(&ip) {
                    out.addresses.push(ip);
                }
            }
            _ => w.push(
                format!("status.addresses[{i}].address"),
                format!(
                    "{:?} is not a unicast address; left out of the peer node",
                    a.address
                ),
            ),
        }
    }
    let mut probe = DesiredState::new(dataplane_core::Node::new(
        name,
        [IpAddr::from([192, 0, 2, 1])],
    ));
    probe.nodes.push(out);
    if let Err(e) = dataplane_core::validate(&probe) {
        w.push("metadata", format!("{e}; peer node left out"));
        return None;
    }
    probe.nodes.pop()
}
