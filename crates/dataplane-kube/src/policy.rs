//! NetworkPolicy → model policy, with the API server's defaulting and validation (a policy
//! the API server would reject is left out with a warning).

use dataplane_core::{
    IpBlock, LabelRequirement, LabelSelector, ObjectName, Policy, PolicyPeer, PolicyPort,
    PolicyRule, PolicyType, PortRef, SelectorOperator,
};
use k8s_openapi::api::networking::v1::{NetworkPolicy, NetworkPolicyPeer, NetworkPolicyPort};
use k8s_openapi::apimachinery::pkg::apis::meta::v1 as meta;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

use crate::support::{is_label, is_subdomain, parse_cidr, protocol, Warnings};

/// A field and what is wrong with it.
type Bad = (String, String);

pub(crate) fn translate_policy(
    name: &ObjectName,
    np: &NetworkPolicy,
    w: &mut Warnings,
) -> Option<Policy> {
    match policy(name, np) {
        Ok(p) => Some(p),
        Err((field, message)) => {
            w.push(field, format!("{message}; policy left out"));
            None
        }
    }
}

fn policy(name: &ObjectName, np: &NetworkPolicy) -> Result<Policy, Bad> {
    if !is_label(&name.namespace, 63) || !is_subdomain(&name.name) {
        return Err((
            "metadata.name".into(),
            format!("{name} is not a valid name"),
        ));
    }
    let spec = np.spec.clone().unwrap_or_default();
    let pod_selector = selector(spec.pod_selector.as_ref(), "spec.podSelector")?;
    let mut ingress = Vec::new();
    for (i, r) in spec.ingress.iter().flatten().enumerate() {
        let at = format!("spec.ingress[{i}]");
        ingress.push(rule(r.from.as_deref(), r.ports.as_deref(), &at, "from")?);
    }
    let mut egress = Vec::new();
    for (i, r) in spec.egress.iter().flatten().enumerate() {
        let at = format!("spec.egress[{i}]");
        egress.push(rule(r.to.as_deref(), r.ports.as_deref(), &at, "to")?);
    }
    // Defaulting (`SetDefaults_NetworkPolicySpec`): without policyTypes a policy isolates
    // ingress, and egress too when it has egress rules.
    let policy_types = match &spec.policy_types {
        Some(types) if !types.is_empty() => {
            let mut out = Vec::new();
            for (i, t) in types.iter().enumerate() {
                let t = match t.as_str() {
                    "Ingress" => PolicyType::Ingress,
                    "Egress" => PolicyType::Egress,
                    other => {
                        return Err((
                            format!("spec.policyTypes[{i}]"),
                            format!("unknown type {other:?}"),
                        ))
                    }
                };
                if out.contains(&t) {
                    return Err((
                        format!("spec.policyTypes[{i}]"),
                        format!("{t:?} given twice"),
                    ));
                }
                out.push(t);
            }
            out
        }
        _ => {
            let mut out = vec![PolicyType::Ingress];
            if !egress.is_empty() {
                out.push(PolicyType::Egress);
            }
            out
        }
    };
    Ok(Policy {
        name: name.clone(),
        pod_selector,
        policy_types,
        ingress,
        egress,
    })
}

fn rule(
    peers: Option<&[NetworkPolicyPeer]>,
    ports: Option<&[NetworkPolicyPort]>,
    at: &str,
    peers_field: &str,
) -> Result<PolicyRule, Bad> {
    let mut out = PolicyRule::default();
    for (j, p) in peers.unwrap_or_default().iter().enumerate() {
        out.peers
            .push(peer(p, &format!("{at}.{peers_field}[{j}]"))?);
    }
    for (j, p) in ports.unwrap_or_default().iter().enumerate() {
        out.ports.push(port(p, &format!("{at}.ports[{j}]"))?);
    }
    Ok(out)
}

fn peer(p: &NetworkPolicyPeer, at: &str) -> Result<PolicyPeer, Bad> {
    if p.ip_block.is_some() && (p.pod_selector.is_some() || p.namespace_selector.is_some()) {
        return Err((
            at.to_owned(),
            "ipBlock cannot be combined with podSelector or namespaceSelector".into(),
        ));
    }
    let mut out = PolicyPeer::default();
    if let Some(s) = &p.pod_selector {
        out.pod_selector = Some(selector(Some(s), &format!("{at}.podSelector"))?);
    }
    if let Some(s) = &p.namespace_selector {
        out.namespace_selector = Some(selector(Some(s), &format!("{at}.namespaceSelector"))?);
    }
    if let Some(b) = &p.ip_block {
        let cidr = parse_cidr(&b.cidr).ok_or_else(|| {
            (
                format!("{at}.ipBlock.cidr"),
                format!("{:?} is not a CIDR", b.cidr),
            )
        })?;
        let mut except = Vec::new();
        for (k, e) in b.except.iter().flatten().enumerate() {
            let f = format!("{at}.ipBlock.except[{k}]");
            let net = parse_cidr(e).ok_or_else(|| (f.clone(), format!("{e:?} is not a CIDR")))?;
            if !(cidr.contains(net.network()) && net.prefix() > cidr.prefix()) {
                return Err((f, format!("{net} is not strictly inside {cidr}")));
            }
            except.push(net);
        }
        out.ip_block = Some(IpBlock { cidr, except });
    }
    if out.pod_selector.is_none() && out.namespace_selector.is_none() && out.ip_block.is_none() {
        return Err((
            at.to_owned(),
            "a peer must name podSelector, namespaceSelector or ipBlock".into(),
        ));
    }
    Ok(out)
}

fn port(p: &NetworkPolicyPort, at: &str) -> Result<PolicyPort, Bad> {
    let proto = protocol(p.protocol.as_deref()).ok_or_else(|| {
        (
            format!("{at}.protocol"),
            format!(
                "unknown protocol {:?}",
                p.protocol.as_deref().unwrap_or_default()
            ),
        )
    })?;
    let number = |n: i32, f: &str| {
        u16::try_from(n)
            .ok()
            .filter(|n| *n != 0)
            .ok_or_else(|| (format!("{at}.{f}"), format!("{n} is not a port (1-65535)")))
    };
    let port = match &p.port {
        None => None,
        Some(IntOrString::Int(n)) => Some(PortRef::Number(number(*n, "port")?)),
        Some(IntOrString::String(s)) => match s.parse::<i32>() {
            Ok(n) => Some(PortRef::Number(number(n, "port")?)),
            Err(_) if is_label(s, 15) => Some(PortRef::Name(s.clone())),
            Err(_) => return Err((format!("{at}.port"), format!("{s:?} is not a port name"))),
        },
    };
    let end_port = match (p.end_port, &port) {
        (None, _) => None,
        (Some(end), Some(PortRef::Number(start))) => {
            let end = number(end, "endPort")?;
            if end < *start {
                return Err((
                    format!("{at}.endPort"),
                    format!("{end} is smaller than port {start}"),
                ));
            }
            Some(end)
        }
        (Some(_), _) => {
            return Err((
                format!("{at}.endPort"),
                "endPort needs a numeric port".into(),
            ));
        }
    };
    Ok(PolicyPort {
        protocol: proto,
        port,
        end_port,
    })
}

/// A label selector, checked as the API server does (`ValidateLabelSelector`): known
/// operators, values only with `In` and `NotIn` (and required there), non-empty keys.
pub(crate) fn selector(s: Option<&meta::LabelSelector>, at: &str) -> Result<LabelSelector, Bad> {
    let mut out = LabelSelector::default();
    let Some(s) = s else {
        return Ok(out);
    };
    if let Some(labels) = &s.match_labels {
        if labels.keys().any(String::is_empty) {
            return Err((format!("{at}.matchLabels"), "an empty key".into()));
        }
        out.match_labels.clone_from(labels);
    }
    for (i, r) in s.match_expressions.iter().flatten().enumerate() {
        let f = format!("{at}.matchExpressions[{i}]");
        let operator = match r.operator.as_str() {
            "In" => SelectorOperator::In,
            "NotIn" => SelectorOperator::NotIn,
            "Exists" => SelectorOperator::Exists,
            "DoesNotExist" => SelectorOperator::DoesNotExist,
            other => {
                return Err((
                    format!("{f}.operator"),
                    format!("unknown operator {other:?}"),
                ))
            }
        };
        if r.key.is_empty() {
            return Err((format!("{f}.key"), "an empty key".into()));
        }
        let values = r.values.clone().unwrap_or_default();
        let needs_values = matches!(operator, SelectorOperator::In | SelectorOperator::NotIn);
        if needs_values == values.is_empty() {
            let m = if needs_values {
                "In and NotIn need values"
            } else {
                "Exists and DoesNotExist take no values"
            };
            return Err((format!("{f}.values"), m.into()));
        }
        out.match_expressions.push(LabelRequirement {
            key: r.key.clone(),
            operator,
            values,
        });
    }
    Ok(out)
}
