//! AdminNetworkPolicy and BaselineAdminNetworkPolicy (`policy.networking.k8s.io/v1alpha1`,
//! the network-policy-api project, `apis/v1alpha1/`: `adminnetworkpolicy_types.go`,
//! `baselineadminnetworkpolicy_types.go`, `shared_types.go`) as serde types of their own (the
//! CRDs are not in k8s-openapi), and their translation to
//! [`dataplane_core::ClusterPolicy`] and [`dataplane_core::BaselinePolicy`].
//!
//! Every field of the current API is read: the subject (`namespaces`, or `pods` with
//! `namespaceSelector` and `podSelector`), the rules' `name`, `action`, `from` / `to` peers
//! (`namespaces`, `pods`; egress also `nodes` and `networks`) and `ports` (`portNumber`,
//! `namedPort`, `portRange`). What the model cannot hold is **rejected**, never dropped (a
//! Deny rule left out would open what it closes): the `domainNames` egress peer, v0.1.0's
//! `sameLabels` / `notSameLabels` namespace peers, and any other field (unknown fields are
//! errors). `status` is not read.

use std::collections::BTreeMap;

use dataplane_core::{
    BaselineAction, BaselinePolicy, ClusterAction, ClusterPeer, ClusterPolicy,
    ClusterPolicySubject, ClusterPort, ClusterRule, LabelSelector, NamespacedPods, Protocol,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelectorRequirement, ObjectMeta};
use serde::{Deserialize, Serialize};

use crate::support::parse_cidr;

/// A field and what is wrong with it.
pub(crate) type Bad = (String, String);

/// The one name a BaselineAdminNetworkPolicy may have (the API's validation).
pub const BASELINE_NAME: &str = "default";

/// `policy.networking.k8s.io/v1alpha1` AdminNetworkPolicy (cluster-scoped).
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct AdminNetworkPolicy {
    /// Metadata (name, labels).
    #[serde(default)]
    pub metadata: ObjectMeta,
    /// The policy.
    #[serde(default)]
    pub spec: AdminNetworkPolicySpec,
}

/// `AdminNetworkPolicySpec`.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct AdminNetworkPolicySpec {
    /// 0..=1000, lower first.
    #[serde(default)]
    pub priority: i64,
    /// The pods it applies to.
    #[serde(default)]
    pub subject: Subject,
    /// Ingress rules, in order.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ingress: Vec<Rule>,
    /// Egress rules, in order.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub egress: Vec<Rule>,
}

/// `policy.networking.k8s.io/v1alpha1` BaselineAdminNetworkPolicy (cluster-scoped, named
/// [`BASELINE_NAME`]).
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct BaselineAdminNetworkPolicy {
    /// Metadata (name, labels).
    #[serde(default)]
    pub metadata: ObjectMeta,
    /// The policy.
    #[serde(default)]
    pub spec: BaselineAdminNetworkPolicySpec,
}

/// `BaselineAdminNetworkPolicySpec`.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct BaselineAdminNetworkPolicySpec {
    /// The pods it applies to.
    #[serde(default)]
    pub subject: Subject,
    /// Ingress rules, in order.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ingress: Vec<Rule>,
    /// Egress rules, in order.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub egress: Vec<Rule>,
}

/// `AdminNetworkPolicySubject`: exactly one of the two.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Subject {
    /// Every pod of these namespaces.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespaces: Option<Selector>,
    /// These pods.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pods: Option<NamespacedPod>,
}

/// A label selector as the API spells it, with v0.1.0's namespace-peer fields kept only to
/// reject them by name.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Selector {
    /// Labels that must match exactly.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub match_labels: Option<BTreeMap<String, String>>,
    /// Set-based requirements.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub match_expressions: Option<Vec<LabelSelectorRequirement>>,
    /// v0.1.0's `NamespacedPeer.namespaceSelector`: rejected.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace_selector: Option<serde_json::Value>,
    /// v0.1.0's `NamespacedPeer.sameLabels`: rejected (the model has no per-subject peers).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub same_labels: Option<serde_json::Value>,
    /// v0.1.0's `NamespacedPeer.notSameLabels`: rejected.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub not_same_labels: Option<serde_json::Value>,
}

/// `NamespacedPod`.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct NamespacedPod {
    /// The namespaces.
    #[serde(default)]
    pub namespace_selector: Selector,
    /// The pods in them.
    #[serde(default)]
    pub pod_selector: Selector,
}

/// An ingress or egress rule (`AdminNetworkPolicyIngressRule` / `...EgressRule` and the
/// baseline's): `from` on ingress, `to` on egress.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Rule {
    /// Rule name.
    #[serde(default)]
    pub name: String,
    /// `Allow`, `Deny` or (not in the baseline) `Pass`.
    #[serde(default)]
    pub action: String,
    /// Ingress peers.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub from: Option<Vec<Peer>>,
    /// Egress peers.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub to: Option<Vec<Peer>>,
    /// Destination ports.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ports: Option<Vec<Port>>,
}

/// A peer: exactly one field.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Peer {
    /// Every pod of these namespaces.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespaces: Option<Selector>,
    /// These pods.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pods: Option<NamespacedPod>,
    /// These nodes (egress).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nodes: Option<Selector>,
    /// These CIDRs (egress).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub networks: Option<Vec<String>>,
    /// FQDNs (egress, ANP only): rejected (the model matches addresses).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub domain_names: Option<Vec<String>>,
}

/// `AdminNetworkPolicyPort`: exactly one field.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Port {
    /// One port.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub port_number: Option<PortNumber>,
    /// A container port name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub named_port: Option<String>,
    /// A range.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub port_range: Option<PortRange>,
}

/// `Port`: protocol (TCP default) and number.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PortNumber {
    /// `TCP` (default), `UDP` or `SCTP`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub protocol: Option<String>,
    /// The port.
    #[serde(default)]
    pub port: i64,
}

/// `PortRange`: protocol (TCP default), start and end (inclusive).
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PortRange {
    /// `TCP` (default), `UDP` or `SCTP`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub protocol: Option<String>,
    /// First port.
    #[serde(default)]
    pub start: i64,
    /// Last port.
    #[serde(default)]
    pub end: i64,
}

pub(crate) fn translate_admin(name: &str, anp: &AdminNetworkPolicy) -> Result<ClusterPolicy, Bad> {
    let spec = &anp.spec;
    let priority = u32::try_from(spec.priority)
        .ok()
        .filter(|p| *p <= dataplane_core::MAX_CLUSTER_POLICY_PRIORITY)
        .ok_or_else(|| {
            (
                "spec.priority".to_owned(),
                format!("{} is not in 0..=1000", spec.priority),
            )
        })?;
    let mut out = ClusterPolicy::new(name, priority, subject(&spec.subject)?);
    out.ingress = rules(&spec.ingress, "spec.ingress", true, cluster_action)?;
    out.egress = rules(&spec.egress, "spec.egress", false, cluster_action)?;
    Ok(out)
}

pub(crate) fn translate_baseline(
    name: &str,
    banp: &BaselineAdminNetworkPolicy,
) -> Result<BaselinePolicy, Bad> {
    if name != BASELINE_NAME {
        return Err((
            "metadata.name".to_owned(),
            format!("a BaselineAdminNetworkPolicy must be named {BASELINE_NAME:?}"),
        ));
    }
    let spec = &banp.spec;
    let mut out = BaselinePolicy::new(subject(&spec.subject)?);
    out.ingress = rules(&spec.ingress, "spec.ingress", true, baseline_action)?;
    out.egress = rules(&spec.egress, "spec.egress", false, baseline_action)?;
    Ok(out)
}

fn cluster_action(s: &str) -> Option<ClusterAction> {
    match s {
        "Allow" => Some(ClusterAction::Allow),
        "Deny" => Some(ClusterAction::Deny),
        "Pass" => Some(ClusterAction::Pass),
        _ => None,
    }
}

fn baseline_action(s: &str) -> Option<BaselineAction> {
    match s {
        "Allow" => Some(BaselineAction::Allow),
        "Deny" => Some(BaselineAction::Deny),
        _ => None,
    }
}

fn subject(s: &Subject) -> Result<ClusterPolicySubject, Bad> {
    match (&s.namespaces, &s.pods) {
        (Some(ns), None) => Ok(ClusterPolicySubject::Namespaces(selector(
            ns,
            "spec.subject.namespaces",
        )?)),
        (None, Some(p)) => Ok(ClusterPolicySubject::Pods(pods(p, "spec.subject.pods")?)),
        _ => Err((
            "spec.subject".to_owned(),
            "exactly one of namespaces and pods is required".to_owned(),
        )),
    }
}

fn pods(p: &NamespacedPod, at: &str) -> Result<NamespacedPods, Bad> {
    Ok(NamespacedPods {
        namespace_selector: selector(&p.namespace_selector, &format!("{at}.namespaceSelector"))?,
        pod_selector: selector(&p.pod_selector, &format!("{at}.podSelector"))?,
    })
}

fn selector(s: &Selector, at: &str) -> Result<LabelSelector, Bad> {
    for (field, value) in [
        ("namespaceSelector", &s.namespace_selector),
        ("sameLabels", &s.same_labels),
        ("notSameLabels", &s.not_same_labels),
    ] {
        if value.is_some() {
            return Err((
                format!("{at}.{field}"),
                "unsupported (v0.1.0's NamespacedPeer; the model's peers do not depend on \
                 the subject's labels)"
                    .to_owned(),
            ));
        }
    }
    let k8s = k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector {
        match_labels: s.match_labels.clone(),
        match_expressions: s.match_expressions.clone(),
    };
    crate::policy::selector(Some(&k8s), at)
}

fn rules<A>(
    list: &[Rule],
    at: &str,
    ingress: bool,
    action: fn(&str) -> Option<A>,
) -> Result<Vec<ClusterRule<A>>, Bad> {
    let mut out = Vec::with_capacity(list.len());
    for (i, r) in list.iter().enumerate() {
        let at = format!("{at}[{i}]");
        let act = action(&r.action).ok_or_else(|| {
            (
                format!("{at}.action"),
                format!("{:?} is not an action of this kind", r.action),
            )
        })?;
        let (field, wrong) = if ingress {
            ("from", "to")
        } else {
            ("to", "from")
        };
        let wrong_given = if ingress { &r.to } else { &r.from };
        if wrong_given.is_some() {
            return Err((
                format!("{at}.{wrong}"),
                format!(
                    "not a field of a {} rule",
                    if ingress { "ingress" } else { "egress" }
                ),
            ));
        }
        let peers = if ingress { &r.from } else { &r.to };
        let mut rule = ClusterRule::new(r.name.clone(), act, []);
        for (j, p) in peers.iter().flatten().enumerate() {
            rule.peers
                .push(peer(p, &format!("{at}.{field}[{j}]"), ingress)?);
        }
        for (j, p) in r.ports.iter().flatten().enumerate() {
            rule.ports.push(port(p, &format!("{at}.ports[{j}]"))?);
        }
        out.push(rule);
    }
    Ok(out)
}

fn peer(p: &Peer, at: &str, ingress: bool) -> Result<ClusterPeer, Bad> {
    if p.domain_names.is_some() {
        return Err((
            format!("{at}.domainNames"),
            "unsupported (the model matches addresses, not DNS names)".to_owned(),
        ));
    }
    let given = usize::from(p.namespaces.is_some())
        + usize::from(p.pods.is_some())
        + usize::from(p.nodes.is_some())
        + usize::from(p.networks.is_some());
    if given != 1 {
        return Err((
            at.to_owned(),
            "exactly one peer field is required".to_owned(),
        ));
    }
    if ingress && (p.nodes.is_some() || p.networks.is_some()) {
        let f = if p.nodes.is_some() {
            "nodes"
        } else {
            "networks"
        };
        return Err((format!("{at}.{f}"), "an egress peer only".to_owned()));
    }
    if let Some(s) = &p.namespaces {
        return Ok(ClusterPeer::Namespaces(selector(
            s,
            &format!("{at}.namespaces"),
        )?));
    }
    if let Some(s) = &p.pods {
        return Ok(ClusterPeer::Pods(pods(s, &format!("{at}.pods"))?));
    }
    if let Some(s) = &p.nodes {
        return Ok(ClusterPeer::Nodes(selector(s, &format!("{at}.nodes"))?));
    }
    let mut nets = Vec::new();
    for (k, n) in p.networks.iter().flatten().enumerate() {
        nets.push(parse_cidr(n).ok_or_else(|| {
            (
                format!("{at}.networks[{k}]"),
                format!("{n:?} is not a CIDR"),
            )
        })?);
    }
    Ok(ClusterPeer::Networks(nets))
}

fn port(p: &Port, at: &str) -> Result<ClusterPort, Bad> {
    let given = usize::from(p.port_number.is_some())
        + usize::from(p.named_port.is_some())
        + usize::from(p.port_range.is_some());
    if given != 1 {
        return Err((
            at.to_owned(),
            "exactly one port field is required".to_owned(),
        ));
    }
    let number = |n: i64, f: &str| {
        u16::try_from(n)
            .ok()
            .filter(|n| *n != 0)
            .ok_or_else(|| (format!("{at}.{f}"), format!("{n} is not a port (1-65535)")))
    };
    let proto = |p: Option<&str>, f: &str| -> Result<Protocol, Bad> {
        crate::support::protocol(p).ok_or_else(|| {
            (
                format!("{at}.{f}.protocol"),
                format!("unknown protocol {p:?}"),
            )
        })
    };
    if let Some(n) = &p.port_number {
        return Ok(ClusterPort::PortNumber {
            protocol: proto(n.protocol.as_deref(), "portNumber")?,
            port: number(n.port, "portNumber.port")?,
        });
    }
    if let Some(r) = &p.port_range {
        let start = number(r.start, "portRange.start")?;
        let end = number(r.end, "portRange.end")?;
        if end < start {
            return Err((
                format!("{at}.portRange.end"),
                format!("{end} is smaller than start {start}"),
            ));
        }
        return Ok(ClusterPort::PortRange {
            protocol: proto(r.protocol.as_deref(), "portRange")?,
            start,
            end,
        });
    }
    let name = p.named_port.clone().unwrap_or_default();
    if !crate::support::is_label(&name, 15) {
        return Err((
            format!("{at}.namedPort"),
            format!("{name:?} is not a port name"),
        ));
    }
    Ok(ClusterPort::NamedPort(name))
}
