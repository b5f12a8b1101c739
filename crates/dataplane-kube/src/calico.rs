//! Calico's host endpoint policy objects (`projectcalico.org/v3`: HostEndpoint,
//! GlobalNetworkPolicy for host endpoints, `FelixConfiguration`'s failsafe ports) as serde types
//! of their own, and their translation to [`dataplane_core::HostEndpoint`],
//! [`dataplane_core::HostPolicy`] and [`dataplane_core::FailsafePorts`].
//!
//! Followed: Calico's resource reference pages (`hostendpoint`, `globalnetworkpolicy`,
//! `felixconfig`) and its API types (github:projectcalico/api `pkg/apis/projectcalico/v3`:
//! `HostEndpointSpec`, `GlobalNetworkPolicySpec`, `Rule`, `EntityRule`, `ProtoPort`), and its
//! selector syntax (`libcalico-go/lib/selector`).
//!
//! Read: a HostEndpoint's `node`, `interfaceName`, `expectedIPs` and labels (only those of
//! this node are kept); a GlobalNetworkPolicy's `order` (a whole number), `selector` (the
//! `&&` of `k == 'v'`, `k != 'v'`, `has(k)`, `!has(k)`, `k in {..}`, `k not in {..}`),
//! `types`, `applyOnForward`, `preDNAT`, `doNotTrack`, and rules with `action` Allow or
//! Deny, `protocol` (TCP, UDP, SCTP), and `source` / `destination` `nets` and `ports`
//! (numbers and `"start:end"` ranges); `FelixConfiguration` `default` and `node.<this node>`
//! `failsafeInboundHostPorts` / `failsafeOutboundHostPorts` (the node's object overrides
//! `default` per field, as Felix merges them; absent: Calico's defaults; `[]`: none).
//!
//! Rejected, with the field named (a rule left out could open what it closes): a policy that
//! selects pods too (an empty or `all()` selector, one with only negative terms, one on
//! Calico's workload labels `projectcalico.org/...`, a `namespaceSelector`, a
//! `serviceAccountSelector`), a tier other than `default`, the actions Log and Pass,
//! `notProtocol`, ICMP matches, `ipVersion`, `http`, the entity fields `notNets`,
//! `selector`, `notSelector`, `namespaceSelector`, `notPorts`, `serviceAccounts`,
//! `services`, named ports, a HostEndpoint's `profiles` and `ports`, a failsafe port's `net`,
//! and unknown fields. `FelixConfiguration`'s other settings are not read.

use dataplane_core::{
    FailsafePort, FailsafePorts, HostAction, HostPolicy, HostPort, HostRule, HostRuleMatch,
    LabelRequirement, LabelSelector, PolicyType, PortRange, Protocol, SelectorOperator,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use serde::{Deserialize, Serialize};

use crate::anp::Bad;
use crate::support::parse_cidr;

/// The `FelixConfiguration` every node reads.
pub const FELIX_DEFAULT: &str = "default";

/// The prefix of a node's own `FelixConfiguration` (`node.<node name>`).
pub const FELIX_NODE_PREFIX: &str = "node.";

/// `projectcalico.org/v3` HostEndpoint (cluster-scoped).
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct HostEndpoint {
    /// Metadata: name, labels (what policies select).
    #[serde(default)]
    pub metadata: ObjectMeta,
    /// The endpoint.
    #[serde(default)]
    pub spec: HostEndpointSpec,
}

/// `HostEndpointSpec`.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct HostEndpointSpec {
    /// The node.
    #[serde(default)]
    pub node: String,
    /// The interface, or `*` for all.
    #[serde(default)]
    pub interface_name: String,
    /// The interface's addresses.
    #[serde(default, rename = "expectedIPs", skip_serializing_if = "Vec::is_empty")]
    pub expected_ips: Vec<String>,
    /// Profiles: rejected when given.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub profiles: Option<Vec<String>>,
    /// Named ports: rejected when given.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ports: Option<Vec<serde_json::Value>>,
}

/// `projectcalico.org/v3` GlobalNetworkPolicy (cluster-scoped), for host endpoints.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct GlobalNetworkPolicy {
    /// Metadata (name).
    #[serde(default)]
    pub metadata: ObjectMeta,
    /// The policy.
    #[serde(default)]
    pub spec: GlobalNetworkPolicySpec,
}

/// `GlobalNetworkPolicySpec`.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct GlobalNetworkPolicySpec {
    /// `default` only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tier: Option<String>,
    /// Lower first; none last. A whole number here.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub order: Option<f64>,
    /// The host endpoints, as a Calico selector.
    #[serde(default)]
    pub selector: String,
    /// `Ingress`, `Egress`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub types: Option<Vec<String>>,
    /// Ingress rules.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ingress: Vec<Rule>,
    /// Egress rules.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub egress: Vec<Rule>,
    /// Forwarded traffic too.
    #[serde(default)]
    pub apply_on_forward: bool,
    /// Before DNAT.
    #[serde(default, rename = "preDNAT")]
    pub pre_dnat: bool,
    /// Untracked.
    #[serde(default)]
    pub do_not_track: bool,
    /// Rejected when given (selects pods).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace_selector: Option<String>,
    /// Rejected when given (selects pods).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service_account_selector: Option<String>,
    /// Rejected when given.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub performance_hints: Option<serde_json::Value>,
}

/// A Calico `Rule`.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Rule {
    /// `Allow` or `Deny` (Log and Pass rejected).
    #[serde(default)]
    pub action: String,
    /// `TCP`, `UDP`, `SCTP` (or 6, 17, 132).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub protocol: Option<serde_json::Value>,
    /// Source.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source: Option<EntityRule>,
    /// Destination.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub destination: Option<EntityRule>,
    /// Annotations of the rule: not read.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metadata: Option<serde_json::Value>,
    /// Rejected when given.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub not_protocol: Option<serde_json::Value>,
    /// Rejected when given.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub icmp: Option<serde_json::Value>,
    /// Rejected when given.
    #[serde(default, rename = "notICMP", skip_serializing_if = "Option::is_none")]
    pub not_icmp: Option<serde_json::Value>,
    /// Rejected when given.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ip_version: Option<serde_json::Value>,
    /// Rejected when given.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub http: Option<serde_json::Value>,
}

/// A Calico `EntityRule`.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct EntityRule {
    /// CIDRs.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub nets: Vec<String>,
    /// Ports: numbers, `"80"`, `"1000:2000"`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ports: Vec<serde_json::Value>,
    /// Rejected when given.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub not_nets: Option<serde_json::Value>,
    /// Rejected when given.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub selector: Option<serde_json::Value>,
    /// Rejected when given.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub not_selector: Option<serde_json::Value>,
    /// Rejected when given.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace_selector: Option<serde_json::Value>,
    /// Rejected when given.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub not_ports: Option<serde_json::Value>,
    /// Rejected when given.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service_accounts: Option<serde_json::Value>,
    /// Rejected when given.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub services: Option<serde_json::Value>,
}

/// `projectcalico.org/v3` `FelixConfiguration` (cluster-scoped): only its failsafe ports are
/// read, the other settings are let through unread.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct FelixConfiguration {
    /// Metadata: `default` or `node.<node name>`.
    #[serde(default)]
    pub metadata: ObjectMeta,
    /// The settings read.
    #[serde(default)]
    pub spec: FelixConfigurationSpec,
}

/// The part of `FelixConfigurationSpec` read.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct FelixConfigurationSpec {
    /// Inbound failsafe ports (absent: the defaults).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub failsafe_inbound_host_ports: Option<Vec<ProtoPort>>,
    /// Outbound failsafe ports (absent: the defaults).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub failsafe_outbound_host_ports: Option<Vec<ProtoPort>>,
}

/// `ProtoPort`.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ProtoPort {
    /// `TCP` or `UDP` (any case; TCP default).
    #[serde(default)]
    pub protocol: String,
    /// The port.
    #[serde(default)]
    pub port: i64,
    /// Rejected when given.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub net: Option<String>,
}

fn rejected(field: impl Into<String>, what: &str) -> Bad {
    (field.into(), format!("unsupported: {what}"))
}

pub(crate) fn translate_host_endpoint(
    name: &str,
    hep: &HostEndpoint,
) -> Result<dataplane_core::HostEndpoint, Bad> {
    let s = &hep.spec;
    if s.profiles.as_ref().is_some_and(|p| !p.is_empty()) {
        return Err(rejected(
            "spec.profiles",
            "profiles (only policies apply here)",
        ));
    }
    if s.ports.as_ref().is_some_and(|p| !p.is_empty()) {
        return Err(rejected("spec.ports", "named ports of host endpoints"));
    }
    if s.node.is_empty() {
        return Err(("spec.node".to_owned(), "required".to_owned()));
    }
    if s.interface_name.is_empty() {
        // Calico then takes the endpoint by its expectedIPs: not modelled.
        return Err(rejected(
            "spec.interfaceName",
            "a host endpoint without an interface name (by expectedIPs only)",
        ));
    }
    let mut out = dataplane_core::HostEndpoint::new(name, &s.node, &s.interface_name);
    for (i, ip) in s.expected_ips.iter().enumerate() {
        let ip = crate::parse_ip_sloppy(ip).map_err(|_| {
            (
                format!("spec.expectedIPs[{i}]"),
                format!("{ip:?} is not an address"),
            )
        })?;
        out.expected_ips.push(ip);
    }
    out.labels = hep.metadata.labels.clone().unwrap_or_default();
    Ok(out)
}

pub(crate) fn translate_global_policy(
    name: &str,
    gnp: &GlobalNetworkPolicy,
) -> Result<HostPolicy, Bad> {
    let s = &gnp.spec;
    if s.tier.as_deref().is_some_and(|t| t != "default") {
        return Err(rejected("spec.tier", "tiers other than default"));
    }
    if s.namespace_selector
        .as_deref()
        .is_some_and(|x| !x.trim().is_empty())
    {
        return Err(rejected(
            "spec.namespaceSelector",
            "a policy selecting pods (host endpoints only here)",
        ));
    }
    if s.service_account_selector
        .as_deref()
        .is_some_and(|x| !x.trim().is_empty())
    {
        return Err(rejected(
            "spec.serviceAccountSelector",
            "a policy selecting pods (host endpoints only here)",
        ));
    }
    if s.performance_hints.is_some() {
        return Err(rejected("spec.performanceHints", "performance hints"));
    }
    let selector = calico_selector(&s.selector).map_err(|m| ("spec.selector".to_owned(), m))?;
    let mut out = HostPolicy::new(name, selector);
    if let Some(order) = s.order {
        if !(order.fract() == 0.0 && (0.0..=f64::from(u32::MAX)).contains(&order)) {
            return Err((
                "spec.order".to_owned(),
                format!("unsupported: {order} (whole numbers 0..=4294967295 only)"),
            ));
        }
        // Checked above: whole and in range.
        #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
        let order = order as u32;
        out.order = Some(order);
    }
    for (i, t) in s.types.iter().flatten().enumerate() {
        let t = match t.as_str() {
            "Ingress" => PolicyType::Ingress,
            "Egress" => PolicyType::Egress,
            other => {
                return Err((
                    format!("spec.types[{i}]"),
                    format!("unknown type {other:?}"),
                ));
            }
        };
        if !out.types.contains(&t) {
            out.types.push(t);
        }
    }
    for (i, r) in s.ingress.iter().enumerate() {
        out.ingress.push(rule(r, &format!("spec.ingress[{i}]"))?);
    }
    for (i, r) in s.egress.iter().enumerate() {
        out.egress.push(rule(r, &format!("spec.egress[{i}]"))?);
    }
    out.apply_on_forward = s.apply_on_forward;
    out.pre_dnat = s.pre_dnat;
    out.do_not_track = s.do_not_track;
    Ok(out)
}

fn rule(r: &Rule, at: &str) -> Result<HostRule, Bad> {
    for (field, given) in [
        ("notProtocol", r.not_protocol.is_some()),
        ("icmp", r.icmp.is_some()),
        ("notICMP", r.not_icmp.is_some()),
        ("ipVersion", r.ip_version.is_some()),
        ("http", r.http.is_some()),
    ] {
        if given {
            return Err(rejected(format!("{at}.{field}"), "this rule match"));
        }
    }
    let action = match r.action.as_str() {
        "Allow" => HostAction::Allow,
        "Deny" => HostAction::Deny,
        "Log" | "Pass" => return Err(rejected(format!("{at}.action"), &r.action)),
        other => return Err((format!("{at}.action"), format!("unknown action {other:?}"))),
    };
    let mut out = HostRule::new(action);
    if let Some(p) = &r.protocol {
        let proto = match p {
            serde_json::Value::String(s) => match s.to_ascii_uppercase().as_str() {
                "TCP" => Some(Protocol::Tcp),
                "UDP" => Some(Protocol::Udp),
                "SCTP" => Some(Protocol::Sctp),
                _ => None,
            },
            serde_json::Value::Number(n) => match n.as_u64() {
                Some(6) => Some(Protocol::Tcp),
                Some(17) => Some(Protocol::Udp),
                Some(132) => Some(Protocol::Sctp),
                _ => None,
            },
            _ => None,
        };
        out.protocol = Some(proto.ok_or_else(|| {
            rejected(
                format!("{at}.protocol"),
                &format!("protocol {p} (TCP, UDP, SCTP only)"),
            )
        })?);
    }
    if let Some(e) = &r.source {
        out.source = entity(e, &format!("{at}.source"))?;
    }
    if let Some(e) = &r.destination {
        out.destination = entity(e, &format!("{at}.destination"))?;
    }
    Ok(out)
}

fn entity(e: &EntityRule, at: &str) -> Result<HostRuleMatch, Bad> {
    for (field, given) in [
        ("notNets", e.not_nets.is_some()),
        ("selector", e.selector.is_some()),
        ("notSelector", e.not_selector.is_some()),
        ("namespaceSelector", e.namespace_selector.is_some()),
        ("notPorts", e.not_ports.is_some()),
        ("serviceAccounts", e.service_accounts.is_some()),
        ("services", e.services.is_some()),
    ] {
        if given {
            return Err(rejected(format!("{at}.{field}"), "this entity match"));
        }
    }
    let mut out = HostRuleMatch::default();
    for (i, n) in e.nets.iter().enumerate() {
        out.nets.push(
            parse_cidr(n)
                .or_else(|| {
                    crate::parse_ip_sloppy(n)
                        .ok()
                        .map(ipnetwork::IpNetwork::from)
                })
                .ok_or_else(|| (format!("{at}.nets[{i}]"), format!("{n:?} is not a CIDR")))?,
        );
    }
    for (i, p) in e.ports.iter().enumerate() {
        out.ports
            .push(host_port(p).map_err(|m| (format!("{at}.ports[{i}]"), m))?);
    }
    Ok(out)
}

fn host_port(p: &serde_json::Value) -> Result<HostPort, String> {
    let number = |s: &str| {
        s.trim()
            .parse::<u16>()
            .ok()
            .filter(|n| *n != 0)
            .ok_or_else(|| format!("{s:?} is not a port (1-65535)"))
    };
    match p {
        serde_json::Value::Number(n) => n
            .as_u64()
            .and_then(|n| u16::try_from(n).ok())
            .filter(|n| *n != 0)
            .map(HostPort::Number)
            .ok_or_else(|| format!("{n} is not a port (1-65535)")),
        serde_json::Value::String(s) => {
            if let Some((a, b)) = s.split_once(':') {
                let (start, end) = (number(a)?, number(b)?);
                if end < start {
                    return Err(format!("{s:?}: the end is before the start"));
                }
                Ok(HostPort::Range(PortRange { start, end }))
            } else if s.trim().bytes().all(|b| b.is_ascii_digit()) {
                number(s).map(HostPort::Number)
            } else {
                Err(format!("unsupported: named port {s:?}"))
            }
        }
        other => Err(format!("{other} is not a port")),
    }
}

/// The failsafe ports of `FelixConfiguration` `default` overridden per field by `node` (this
/// node's `node.<name>`).
pub(crate) fn failsafe_ports(
    default: Option<&FelixConfiguration>,
    node: Option<&FelixConfiguration>,
) -> Result<FailsafePorts, Bad> {
    let mut out = FailsafePorts::default();
    for felix in [default, node].into_iter().flatten() {
        if let Some(list) = &felix.spec.failsafe_inbound_host_ports {
            out.inbound = proto_ports(list, "spec.failsafeInboundHostPorts")?;
        }
        if let Some(list) = &felix.spec.failsafe_outbound_host_ports {
            out.outbound = proto_ports(list, "spec.failsafeOutboundHostPorts")?;
        }
    }
    Ok(out)
}

fn proto_ports(list: &[ProtoPort], at: &str) -> Result<Vec<FailsafePort>, Bad> {
    let mut out = Vec::with_capacity(list.len());
    for (i, p) in list.iter().enumerate() {
        let at = format!("{at}[{i}]");
        if p.net.as_deref().is_some_and(|n| !n.is_empty()) {
            return Err(rejected(
                format!("{at}.net"),
                "a failsafe port for one net only",
            ));
        }
        let port = u16::try_from(p.port)
            .ok()
            .filter(|n| *n != 0)
            .ok_or_else(|| {
                (
                    format!("{at}.port"),
                    format!("{} is not a port (1-65535)", p.port),
                )
            })?;
        let port = match p.protocol.to_ascii_uppercase().as_str() {
            "" | "TCP" => FailsafePort::tcp(port),
            "UDP" => FailsafePort::udp(port),
            other => {
                return Err((
                    format!("{at}.protocol"),
                    format!("unknown protocol {other:?}"),
                ));
            }
        };
        out.push(port);
    }
    Ok(out)
}

/// Label keys Calico gives workload endpoints (pods), never host endpoints.
const WORKLOAD_LABEL_PREFIX: &str = "projectcalico.org/";

/// A Calico selector as a label selector: the `&&` of simple terms. A selector that would
/// select pods as well as host endpoints (every endpoint, or only negative terms, or
/// Calico's workload labels) is refused: the model's host policies apply to host endpoints
/// only, and a pod left unprotected would be an opening.
pub(crate) fn calico_selector(text: &str) -> Result<LabelSelector, String> {
    let text = text.trim();
    let selects_pods = "unsupported: selects pods as well as host endpoints (give it a \
                        positive term on a host endpoint label, e.g. has(host-endpoint))";
    if text.is_empty() || text == "all()" {
        return Err(format!("{text:?}: {selects_pods}"));
    }
    if text.contains("||") || text.contains('(') && !text.contains("has(") {
        return Err(format!(
            "{text:?}: unsupported: only the && of k == 'v', k != 'v', has(k), !has(k), \
             k in {{..}}, k not in {{..}}"
        ));
    }
    let mut out = LabelSelector::default();
    let mut positive = false;
    for term in text.split("&&") {
        let term = term.trim();
        let req = term_requirement(term).ok_or_else(|| {
            format!("{term:?}: unsupported selector term (k == 'v', k != 'v', has(k), !has(k), k in {{..}}, k not in {{..}})")
        })?;
        if req.key.starts_with(WORKLOAD_LABEL_PREFIX) {
            return Err(format!("{term:?}: {selects_pods}"));
        }
        positive |= matches!(
            req.operator,
            SelectorOperator::In | SelectorOperator::Exists
        );
        out.match_expressions.push(req);
    }
    if !positive {
        return Err(format!("{text:?}: {selects_pods}"));
    }
    Ok(out)
}

fn term_requirement(term: &str) -> Option<LabelRequirement> {
    let req = |key: &str, operator, values: Vec<String>| {
        let key = key.trim();
        is_key(key).then(|| LabelRequirement {
            key: key.to_owned(),
            operator,
            values,
        })
    };
    if let Some(rest) = term.strip_prefix("!has(") {
        return req(
            rest.strip_suffix(')')?,
            SelectorOperator::DoesNotExist,
            Vec::new(),
        );
    }
    if let Some(rest) = term.strip_prefix("has(") {
        return req(
            rest.strip_suffix(')')?,
            SelectorOperator::Exists,
            Vec::new(),
        );
    }
    if let Some((k, v)) = term.split_once("==") {
        return req(k, SelectorOperator::In, vec![quoted(v)?]);
    }
    if let Some((k, v)) = term.split_once("!=") {
        return req(k, SelectorOperator::NotIn, vec![quoted(v)?]);
    }
    let (k, op, set) = if let Some((k, set)) = term.split_once(" not in ") {
        (k, SelectorOperator::NotIn, set)
    } else {
        let (k, set) = term.split_once(" in ")?;
        (k, SelectorOperator::In, set)
    };
    let inner = set.trim().strip_prefix('{')?.strip_suffix('}')?;
    let values = inner
        .split(',')
        .map(quoted)
        .collect::<Option<Vec<String>>>()?;
    if values.is_empty() {
        return None;
    }
    req(k, op, values)
}

fn quoted(v: &str) -> Option<String> {
    let v = v.trim();
    let inner = v
        .strip_prefix('\'')
        .and_then(|s| s.strip_suffix('\''))
        .or_else(|| v.strip_prefix('"').and_then(|s| s.strip_suffix('"')))?;
    (!inner.contains(['\'', '"'])).then(|| inner.to_owned())
}

fn is_key(k: &str) -> bool {
    !k.is_empty()
        && k.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'/'))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn selectors() {
        let s =
            calico_selector("role == 'uplink' && env != \"dev\" && has(host-endpoint)").unwrap();
        assert_eq!(s.match_expressions.len(), 3);
        assert_eq!(s.match_expressions[0].operator, SelectorOperator::In);
        assert_eq!(s.match_expressions[1].operator, SelectorOperator::NotIn);
        let s = calico_selector("zone in {'a', 'b'} && tier not in {'x'}").unwrap();
        assert_eq!(s.match_expressions[0].values, ["a", "b"]);
        for bad in [
            "",
            "all()",
            "!has(x)",
            "a != 'b'",
            "a == 'b' || c == 'd'",
            "(a == 'b')",
            "projectcalico.org/namespace == 'default'",
            "a == b",
        ] {
            assert!(calico_selector(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn ports() {
        assert_eq!(host_port(&22.into()), Ok(HostPort::Number(22)));
        assert_eq!(
            host_port(&"1000:2000".into()),
            Ok(HostPort::Range(PortRange {
                start: 1000,
                end: 2000
            }))
        );
        assert!(host_port(&"http".into())
            .unwrap_err()
            .contains("named port"));
        assert!(host_port(&0.into()).is_err());
        assert!(host_port(&"20:10".into()).is_err());
    }
}
