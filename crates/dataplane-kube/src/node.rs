//! The local Node: its addresses, pod CIDRs and topology zone.

use std::net::IpAddr;
use std::sync::Arc;

use k8s_openapi::api::core::v1::Node;

use crate::support::{usable_unicast, Warnings};
use crate::{Settings, TranslateError, LABEL_TOPOLOGY_ZONE, TAINT_TO_BE_DELETED};

/// What the translation of everything else needs from the Node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct NodeInfo {
    /// The model node: the settings' template with the Node's name, addresses and pod CIDRs.
    pub node: dataplane_core::Node,
    /// `Settings::node_name`, shared by the backends and peer pods that name it.
    pub name: Arc<str>,
    /// The Node's `topology.kubernetes.io/zone` label (topology-aware routing).
    pub zone: Option<String>,
}

/// The node's addresses the way kube-proxy picks its node IPs
/// (`k8s.io/component-helpers/node/util.GetNodeHostIPs`): `InternalIPs`, then `ExternalIPs`;
/// the first is the primary and the first of the other family the secondary, so they come
/// first here (the model masquerades to the first of each family); the others follow, as
/// NodePorts answer on every node address (kube-proxy's default `--nodeport-addresses`).
fn node_addresses(node: &Node, w: &mut Warnings) -> Vec<IpAddr> {
    let mut all = Vec::new();
    let addresses = node
        .status
        .as_ref()
        .and_then(|s| s.addresses.as_deref())
        .unwrap_or_default();
    for wanted in ["InternalIP", "ExternalIP"] {
        for (i, a) in addresses.iter().enumerate() {
            if a.type_ != wanted {
                continue;
            }
            let field = format!("status.addresses[{i}].address");
            match crate::parse_ip_sloppy(&a.address) {
                Ok(ip) if usable_unicast(ip) => {
                    if !all.contains(&ip) {
                        all.push(ip);
                    }
                }
                Ok(ip) => w.push(field, format!("{ip} is not a unicast address; left out")),
                Err(_) => w.push(
                    field,
                    format!("{:?} is not an IP address; left out", a.address),
                ),
            }
        }
    }
    if let Some(&primary) = all.first() {
        if let Some(pos) = all.iter().position(|ip| ip.is_ipv4() != primary.is_ipv4()) {
            let secondary = all.remove(pos);
            all.insert(1, secondary);
        }
    }
    all
}

pub(crate) fn translate_node(
    settings: &Settings,
    k8s: &Node,
    w: &mut Warnings,
) -> Result<NodeInfo, TranslateError> {
    let mut node = settings.node.clone();
    node.name.clone_from(&settings.node_name);
    let addresses = node_addresses(k8s, w);
    if addresses.is_empty() {
        if node.addresses.is_empty() {
            return Err(TranslateError::InvalidNode {
                name: settings.node_name.clone(),
                field: "status.addresses".to_owned(),
                message:
                    "no usable InternalIP or ExternalIP, and the settings' node has no addresses"
                        .to_owned(),
            });
        }
        w.push(
            "status.addresses",
            "no usable InternalIP or ExternalIP; the settings' node addresses are used",
        );
    } else {
        node.addresses = addresses;
    }
    node.pod_cidrs = pod_cidrs(k8s, w);
    if let Err(e) = dataplane_core::validate(&dataplane_core::DesiredState::new(node.clone())) {
        // The Node's pod CIDRs are what can clash with the template (service CIDRs): serve
        // without them (they only scope what is a local pod) rather than not at all.
        if node.pod_cidrs.is_empty() {
            return Err(invalid(settings, &e));
        }
        w.push("spec.podCIDRs", format!("left out: {e}"));
        node.pod_cidrs.clear();
        dataplane_core::validate(&dataplane_core::DesiredState::new(node.clone()))
            .map_err(|e| invalid(settings, &e))?;
    }
    let zone = k8s
        .metadata
        .labels
        .as_ref()
        .and_then(|l| l.get(LABEL_TOPOLOGY_ZONE))
        .filter(|z| !z.is_empty())
        .cloned();
    Ok(NodeInfo {
        name: Arc::from(settings.node_name.as_str()),
        node,
        zone,
    })
}

fn invalid(settings: &Settings, e: &dataplane_core::ValidationError) -> TranslateError {
    TranslateError::InvalidNode {
        name: settings.node_name.clone(),
        field: "(node with the settings' template)".to_owned(),
        message: e.to_string(),
    }
}

fn pod_cidrs(k8s: &Node, w: &mut Warnings) -> Vec<ipnetwork::IpNetwork> {
    let Some(spec) = &k8s.spec else {
        return Vec::new();
    };
    let (list, field): (Vec<&String>, &str) = match (&spec.pod_cidrs, &spec.pod_cidr) {
        (Some(list), _) if !list.is_empty() => (list.iter().collect(), "spec.podCIDRs"),
        (_, Some(one)) if !one.is_empty() => (vec![one], "spec.podCIDR"),
        _ => return Vec::new(),
    };
    let mut out = Vec::new();
    for (i, c) in list.into_iter().enumerate() {
        let field = if field == "spec.podCIDR" {
            field.to_owned()
        } else {
            format!("{field}[{i}]")
        };
        match crate::support::parse_cidr(c) {
            Some(net) if !out.contains(&net) => out.push(net),
            Some(_) => {}
            None => w.push(field, format!("{c:?} is not a CIDR; left out")),
        }
    }
    out
}

/// Whether the Node is going away: being deleted, or tainted by the cluster autoscaler
/// before it deletes it (kube-proxy's `/healthz` then fails so load balancers drain it).
pub(crate) fn draining(node: &Node) -> bool {
    node.metadata.deletion_timestamp.is_some()
        || node
            .spec
            .as_ref()
            .and_then(|s| s.taints.as_ref())
            .is_some_and(|t| t.iter().any(|t| t.key == TAINT_TO_BE_DELETED))
}
