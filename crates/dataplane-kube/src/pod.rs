//! Pods (local endpoints and peers) and Namespaces.

use std::net::IpAddr;

use dataplane_core::{NamedPort, ObjectName};
use k8s_openapi::api::core::v1::{Namespace, Pod};

use crate::support::{is_label, is_subdomain, protocol, usable_unicast, Interner, Warnings};
use crate::{InterfaceResolver, Settings};

/// What a Pod becomes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum PodOut {
    /// A workload on this node.
    Local(dataplane_core::Endpoint),
    /// A pod elsewhere, as a policy peer.
    Peer(dataplane_core::PeerPod),
    /// Nothing: host network, finished, no address yet, or left out.
    Nothing,
}

/// Result of translating one pod: what it becomes, and whether it is on this node (its
/// interface is looked up again at each translation).
pub(crate) struct PodTranslation {
    pub out: PodOut,
    pub local: bool,
    /// Whether the pod is being deleted (it loses address clashes to a live pod).
    pub terminating: bool,
}

pub(crate) fn translate_pod(
    settings: &Settings,
    interner: &mut Interner,
    interfaces: &dyn InterfaceResolver,
    name: &ObjectName,
    pod: &Pod,
    w: &mut Warnings,
) -> PodTranslation {
    let nothing = PodTranslation {
        out: PodOut::Nothing,
        local: false,
        terminating: false,
    };
    let spec = pod.spec.as_ref();
    // A host-network pod's addresses are its node's: it is neither an endpoint nor a peer
    // (policies do not select host-network pods).
    if spec.and_then(|s| s.host_network).unwrap_or(false) {
        return nothing;
    }
    let status = pod.status.as_ref();
    // A finished pod's address may already be another pod's.
    if matches!(
        status.and_then(|s| s.phase.as_deref()),
        Some("Succeeded" | "Failed")
    ) {
        return nothing;
    }
    let ips = pod_ips(pod, w);
    if ips.is_empty() {
        return nothing;
    }
    if !is_label(&name.namespace, 63) || !is_subdomain(&name.name) {
        w.push(
            "metadata.name",
            format!("{name} is not a valid pod name; left out"),
        );
        return nothing;
    }
    let labels = pod.metadata.labels.clone().unwrap_or_default();
    if labels.keys().any(String::is_empty) {
        w.push("metadata.labels", "an empty label key; left out");
        return nothing;
    }
    let named_ports = named_ports(pod, w);
    let terminating = pod.metadata.deletion_timestamp.is_some();
    let node_name = spec
        .and_then(|s| s.node_name.as_deref())
        .filter(|n| !n.is_empty());
    if node_name == Some(settings.node_name.as_str()) {
        let Some(interface) = interfaces.interface(name, &ips) else {
            // Not an endpoint without its veth, but still a pod policies select: as a peer,
            // rules that select it still match its addresses (elsewhere in the state).
            w.push(
                "status.podIPs",
                "no host-side interface found for the pod's addresses; a policy peer, not an endpoint, until one is",
            );
            let mut p = dataplane_core::PeerPod::new(name.clone(), ips);
            p.labels = labels;
            p.named_ports = named_ports;
            p.node_name = Some(interner.place_name(&settings.node_name));
            return PodTranslation {
                out: PodOut::Peer(p),
                local: true,
                terminating,
            };
        };
        let mut e = dataplane_core::Endpoint::new(name.clone(), interface, ips);
        e.labels = labels;
        e.named_ports = named_ports;
        return PodTranslation {
            out: PodOut::Local(e),
            local: true,
            terminating,
        };
    }
    let mut p = dataplane_core::PeerPod::new(name.clone(), ips);
    p.labels = labels;
    p.named_ports = named_ports;
    p.node_name = node_name.map(|n| interner.place_name(n));
    PodTranslation {
        out: PodOut::Peer(p),
        local: false,
        terminating,
    }
}

/// `status.podIPs` (`status.podIP` when absent), usable and distinct.
fn pod_ips(pod: &Pod, w: &mut Warnings) -> Vec<IpAddr> {
    let Some(status) = &pod.status else {
        return Vec::new();
    };
    let (list, field): (Vec<&String>, &str) = match (&status.pod_ips, &status.pod_ip) {
        (Some(list), _) if !list.is_empty() => {
            (list.iter().map(|p| &p.ip).collect(), "status.podIPs")
        }
        (_, Some(one)) if !one.is_empty() => (vec![one], "status.podIP"),
        _ => return Vec::new(),
    };
    let mut out = Vec::new();
    for (i, s) in list.into_iter().enumerate() {
        let field = if field == "status.podIP" {
            field.to_owned()
        } else {
            format!("{field}[{i}].ip")
        };
        match crate::parse_ip_sloppy(s) {
            Ok(ip) if usable_unicast(ip) => {
                if !out.contains(&ip) {
                    out.push(ip);
                }
            }
            Ok(ip) => w.push(field, format!("{ip} is not a unicast address; left out")),
            Err(_) => w.push(field, format!("{s:?} is not an IP address; left out")),
        }
    }
    out
}

/// Named container ports, which NetworkPolicy ports may name: `spec.containers[].ports`,
/// then those of sidecars (`spec.initContainers[]` with `restartPolicy: Always`, which run
/// beside the containers), as Kubernetes' `FindPort` (`pkg/api/v1/pod/util.go`) looks them up.
fn named_ports(pod: &Pod, w: &mut Warnings) -> Vec<NamedPort> {
    let mut out: Vec<NamedPort> = Vec::new();
    let Some(spec) = &pod.spec else {
        return out;
    };
    let containers = spec
        .containers
        .iter()
        .enumerate()
        .map(|(c, container)| (format!("spec.containers[{c}]"), container));
    let sidecars = spec
        .init_containers
        .iter()
        .flatten()
        .enumerate()
        .filter(|(_, c)| c.restart_policy.as_deref() == Some("Always"))
        .map(|(c, container)| (format!("spec.initContainers[{c}]"), container));
    for (container_field, container) in containers.chain(sidecars) {
        for (i, p) in container.ports.iter().flatten().enumerate() {
            let Some(name) = p.name.as_deref().filter(|n| !n.is_empty()) else {
                continue;
            };
            let field = format!("{container_field}.ports[{i}]");
            // IANA service names: at most 15 characters (what dataplane-core accepts).
            if !is_label(name, 15) {
                w.push(
                    format!("{field}.name"),
                    format!("{name:?} is not a valid port name; left out"),
                );
                continue;
            }
            let Some(proto) = protocol(p.protocol.as_deref()) else {
                w.push(format!("{field}.protocol"), "unknown protocol; left out");
                continue;
            };
            let Some(port) = u16::try_from(p.container_port).ok().filter(|p| *p != 0) else {
                w.push(
                    format!("{field}.containerPort"),
                    format!("{} is not a port (1-65535); left out", p.container_port),
                );
                continue;
            };
            if out.iter().any(|o| o.name == name && o.protocol == proto) {
                w.push(
                    format!("{field}.name"),
                    format!("{proto} {name} is named twice; left out"),
                );
                continue;
            }
            out.push(NamedPort::new(name, proto, port));
        }
    }
    out
}

/// A Namespace and its labels (for namespace selectors).
pub(crate) fn translate_namespace(
    name: &str,
    ns: &Namespace,
    w: &mut Warnings,
) -> Option<dataplane_core::Namespace> {
    if !is_label(name, 63) {
        w.push(
            "metadata.name",
            format!("{name:?} is not a valid namespace name; left out"),
        );
        return None;
    }
    let labels = ns.metadata.labels.clone().unwrap_or_default();
    if labels.keys().any(String::is_empty) {
        w.push("metadata.labels", "an empty label key; left out");
        return None;
    }
    Some(dataplane_core::Namespace {
        name: name.to_owned(),
        labels,
    })
}
