//! The vocabulary a policy case is written in: [`PolicyCase`], [`Step`], and builders for
//! the policies themselves.

use dataplane_core::{
    BaselinePolicy, ClusterPolicy, IpBlock, IpFamily, LabelRequirement, LabelSelector, ObjectName,
    Policy, PolicyPeer, PolicyPort, PolicyRule, PolicyType, PortRef, Protocol, SelectorOperator,
};
use ipnetwork::IpNetwork;

use super::layout::{pod_index, World, NAMESPACES};

/// One case of the policy table: steps, each followed by the full reachability matrix.
#[derive(Debug, Clone)]
pub struct PolicyCase {
    /// Case name (unique in the table).
    pub name: String,
    /// Where it comes from: the e2e test's title or the documentation's example.
    pub source: String,
    /// The family the case is written for (its `ipBlock`s): a lab or backend without it
    /// skips the case. The matrix is probed in every family the lab and the backend have.
    pub family: IpFamily,
    /// The steps: the first is applied with a full sync, each later one as the diff from the
    /// step before.
    pub steps: Vec<Step>,
    /// Whether each step also sends forged datagrams (pods sending from addresses that are
    /// not their own, to a sink that records what arrives) besides the matrix: the
    /// anti-spoofing cells, delivered or not as the reference model says.
    pub forged: bool,
    /// Whether the matrices also have SCTP cells (every client to every pod's SCTP ports 80
    /// and 81, directly: the services have no SCTP port), for a backend that meets
    /// [`Requirement::Sctp`](crate::conformance::Requirement::Sctp); a backend without
    /// SCTP runs the case without them, with a visible skipped row.
    pub sctp: bool,
}

impl PolicyCase {
    /// A case called `name`, written after `source`, for IPv4, with `steps`.
    pub fn new(name: &str, source: &str, steps: Vec<Step>) -> Self {
        PolicyCase {
            name: name.to_owned(),
            source: source.to_owned(),
            family: IpFamily::V4,
            steps,
            forged: false,
            sctp: false,
        }
    }

    /// The same case with the forged datagrams sent after each step (see
    /// [`PolicyCase::forged`]).
    #[must_use]
    pub fn with_forged(mut self) -> Self {
        self.forged = true;
        self
    }

    /// The same case with SCTP cells in its matrices (see [`PolicyCase::sctp`]).
    #[must_use]
    pub fn with_sctp(mut self) -> Self {
        self.sctp = true;
        self
    }

    /// Whether a step applies a cluster policy or a baseline: a backend without
    /// [`Capabilities::cluster_policy`](dataplane_core::Capabilities::cluster_policy) skips
    /// the case, visibly.
    pub fn needs_cluster_policy(&self) -> bool {
        self.steps
            .iter()
            .any(|s| matches!(s, Step::ApplyCluster(_) | Step::SetBaseline(Some(_))))
    }

    /// The same case written for `family` (skipped where the lab or backend lacks it).
    #[must_use]
    pub fn in_family(mut self, family: IpFamily) -> Self {
        self.family = family;
        self
    }
}

/// One change of the cluster.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Step {
    /// Creates these policies, replacing those of the same name (an edit); `Apply(vec![])`
    /// changes nothing (the no-policy matrix as a first step).
    Apply(Vec<Policy>),
    /// Deletes the policy `namespace/name`.
    Delete(ObjectName),
    /// Creates these cluster policies, replacing those of the same name.
    ApplyCluster(Vec<ClusterPolicy>),
    /// Deletes the cluster policy of this name.
    DeleteCluster(String),
    /// Sets (`Some`) or removes (`None`) the baseline policy.
    SetBaseline(Option<BaselinePolicy>),
    /// Sets (`Some`) or removes (`None`) label `key` of pod `pod` (`"x/a"`).
    LabelPod {
        /// The pod, `namespace/name`.
        pod: String,
        /// Label key.
        key: String,
        /// New value, or `None` to remove the label.
        value: Option<String>,
    },
    /// Sets (`Some`) or removes (`None`) label `key` of namespace `namespace`.
    LabelNamespace {
        /// The namespace.
        namespace: String,
        /// Label key.
        key: String,
        /// New value, or `None` to remove the label.
        value: Option<String>,
    },
}

impl Step {
    /// Sets label `key=value` on pod `pod` (`"x/b"`).
    pub fn label_pod(pod: &str, key: &str, value: &str) -> Self {
        Step::LabelPod {
            pod: pod.to_owned(),
            key: key.to_owned(),
            value: Some(value.to_owned()),
        }
    }

    /// Removes label `key` from pod `pod`.
    pub fn unlabel_pod(pod: &str, key: &str) -> Self {
        Step::LabelPod {
            pod: pod.to_owned(),
            key: key.to_owned(),
            value: None,
        }
    }

    /// Sets label `key=value` on namespace `namespace`.
    pub fn label_namespace(namespace: &str, key: &str, value: &str) -> Self {
        Step::LabelNamespace {
            namespace: namespace.to_owned(),
            key: key.to_owned(),
            value: Some(value.to_owned()),
        }
    }

    /// Removes label `key` from namespace `namespace`.
    pub fn unlabel_namespace(namespace: &str, key: &str) -> Self {
        Step::LabelNamespace {
            namespace: namespace.to_owned(),
            key: key.to_owned(),
            value: None,
        }
    }

    /// Deletes policy `name` of namespace `namespace`.
    pub fn delete(namespace: &str, name: &str) -> Self {
        Step::Delete(ObjectName::new(namespace, name))
    }

    /// A few words for the report.
    pub fn describe(&self) -> String {
        let label = |key: &str, value: &Option<String>| match value {
            Some(v) => format!("{key}={v}"),
            None => format!("{key}-"),
        };
        match self {
            Step::Apply(policies) if policies.is_empty() => "no policy".to_owned(),
            Step::Apply(policies) => {
                let names: Vec<String> = policies.iter().map(|p| p.name.to_string()).collect();
                format!("apply {}", names.join(", "))
            }
            Step::Delete(name) => format!("delete {name}"),
            Step::ApplyCluster(policies) => {
                let names: Vec<&str> = policies.iter().map(|p| p.name.as_str()).collect();
                format!("apply cluster policy {}", names.join(", "))
            }
            Step::DeleteCluster(name) => format!("delete cluster policy {name}"),
            Step::SetBaseline(Some(_)) => "set the baseline".to_owned(),
            Step::SetBaseline(None) => "remove the baseline".to_owned(),
            Step::LabelPod { pod, key, value } => format!("label pod {pod} {}", label(key, value)),
            Step::LabelNamespace {
                namespace,
                key,
                value,
            } => format!("label namespace {namespace} {}", label(key, value)),
        }
    }

    /// Applies the step to `world`; an error names what the step refers to and is missing.
    pub(super) fn apply_to(&self, world: &mut World) -> Result<(), String> {
        fn set(
            labels: &mut std::collections::BTreeMap<String, String>,
            key: &str,
            value: Option<&String>,
        ) {
            match value {
                Some(v) => {
                    labels.insert(key.to_owned(), v.clone());
                }
                None => {
                    labels.remove(key);
                }
            }
        }
        match self {
            Step::Apply(policies) => {
                for p in policies {
                    match world.policies.iter_mut().find(|q| q.name == p.name) {
                        Some(q) => *q = p.clone(),
                        None => world.policies.push(p.clone()),
                    }
                }
            }
            Step::Delete(name) => {
                let before = world.policies.len();
                world.policies.retain(|p| p.name != *name);
                if world.policies.len() == before {
                    return Err(format!("step deletes policy {name}, which does not exist"));
                }
            }
            Step::ApplyCluster(policies) => {
                for p in policies {
                    match world.cluster_policies.iter_mut().find(|q| q.name == p.name) {
                        Some(q) => *q = p.clone(),
                        None => world.cluster_policies.push(p.clone()),
                    }
                }
            }
            Step::DeleteCluster(name) => {
                let before = world.cluster_policies.len();
                world.cluster_policies.retain(|p| p.name != *name);
                if world.cluster_policies.len() == before {
                    return Err(format!(
                        "step deletes cluster policy {name}, which does not exist"
                    ));
                }
            }
            Step::SetBaseline(baseline) => world.baseline.clone_from(baseline),
            Step::LabelPod { pod, key, value } => {
                let k = pod_index(pod)?;
                set(&mut world.pod_labels[k], key, value.as_ref());
            }
            Step::LabelNamespace {
                namespace,
                key,
                value,
            } => {
                let n = NAMESPACES
                    .iter()
                    .position(|x| x == namespace)
                    .ok_or_else(|| format!("no namespace {namespace:?} in the layout"))?;
                set(&mut world.namespace_labels[n], key, value.as_ref());
            }
        }
        Ok(())
    }
}

/// A policy `namespace/name` selecting `pod_selector`, isolating no direction yet: add
/// directions with [`PolicyBuilder::ingress`], [`PolicyBuilder::egress`],
/// [`PolicyBuilder::deny_ingress`] and [`PolicyBuilder::deny_egress`].
pub fn policy(namespace: &str, name: &str, pod_selector: LabelSelector) -> PolicyBuilder {
    PolicyBuilder(Policy {
        name: ObjectName::new(namespace, name),
        pod_selector,
        policy_types: Vec::new(),
        ingress: Vec::new(),
        egress: Vec::new(),
    })
}

/// Builds a [`Policy`]; see [`policy`].
#[derive(Debug, Clone)]
pub struct PolicyBuilder(Policy);

impl PolicyBuilder {
    fn isolate(&mut self, direction: PolicyType) {
        if !self.0.policy_types.contains(&direction) {
            self.0.policy_types.push(direction);
        }
    }

    /// Isolates ingress and allows `rule` (call again for more rules).
    #[must_use]
    pub fn ingress(mut self, rule: PolicyRule) -> Self {
        self.isolate(PolicyType::Ingress);
        self.0.ingress.push(rule);
        self
    }

    /// Isolates egress and allows `rule`.
    #[must_use]
    pub fn egress(mut self, rule: PolicyRule) -> Self {
        self.isolate(PolicyType::Egress);
        self.0.egress.push(rule);
        self
    }

    /// Isolates ingress (with no rule: denies all of it unless another policy allows).
    #[must_use]
    pub fn deny_ingress(mut self) -> Self {
        self.isolate(PolicyType::Ingress);
        self
    }

    /// Isolates egress.
    #[must_use]
    pub fn deny_egress(mut self) -> Self {
        self.isolate(PolicyType::Egress);
        self
    }

    /// The policy.
    pub fn build(self) -> Policy {
        self.0
    }
}

/// The empty selector (every pod, or every namespace).
pub fn all() -> LabelSelector {
    LabelSelector::default()
}

/// A selector of `matchLabels`.
pub fn labels(pairs: &[(&str, &str)]) -> LabelSelector {
    LabelSelector {
        match_labels: pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect(),
        match_expressions: Vec::new(),
    }
}

/// A selector of one `matchExpressions` requirement.
pub fn expression(key: &str, operator: SelectorOperator, values: &[&str]) -> LabelSelector {
    expressions(&[(key, operator, values)])
}

/// A selector of several `matchExpressions` requirements (all must hold).
pub fn expressions(requirements: &[(&str, SelectorOperator, &[&str])]) -> LabelSelector {
    LabelSelector {
        match_labels: std::collections::BTreeMap::new(),
        match_expressions: requirements
            .iter()
            .map(|(key, operator, values)| LabelRequirement {
                key: (*key).to_owned(),
                operator: *operator,
                values: values.iter().map(|v| (*v).to_owned()).collect(),
            })
            .collect(),
    }
}

/// A peer selecting pods of the policy's namespace.
pub fn pods(selector: LabelSelector) -> PolicyPeer {
    PolicyPeer {
        pod_selector: Some(selector),
        ..PolicyPeer::default()
    }
}

/// A peer selecting every pod of the selected namespaces.
pub fn namespaces(selector: LabelSelector) -> PolicyPeer {
    PolicyPeer {
        namespace_selector: Some(selector),
        ..PolicyPeer::default()
    }
}

/// A peer with both selectors: the selected pods of the selected namespaces (AND).
pub fn pods_in(namespace_selector: LabelSelector, pod_selector: LabelSelector) -> PolicyPeer {
    PolicyPeer {
        pod_selector: Some(pod_selector),
        namespace_selector: Some(namespace_selector),
        ip_block: None,
    }
}

/// An `ipBlock` peer.
pub fn ip_block(cidr: IpNetwork, except: &[IpNetwork]) -> PolicyPeer {
    PolicyPeer {
        ip_block: Some(IpBlock {
            cidr,
            except: except.to_vec(),
        }),
        ..PolicyPeer::default()
    }
}

/// A rule allowing `peers` (empty: every peer) on `ports` (empty: every port).
pub fn rule(peers: Vec<PolicyPeer>, ports: Vec<PolicyPort>) -> PolicyRule {
    PolicyRule { peers, ports }
}

/// Port `port` of `protocol`.
pub fn port(protocol: Protocol, port: u16) -> PolicyPort {
    PolicyPort {
        protocol,
        port: Some(PortRef::Number(port)),
        end_port: None,
    }
}

/// Ports `start..=end` of `protocol` (`endPort`).
pub fn port_range(protocol: Protocol, start: u16, end: u16) -> PolicyPort {
    PolicyPort {
        protocol,
        port: Some(PortRef::Number(start)),
        end_port: Some(end),
    }
}

/// The named container port `name` of `protocol`.
pub fn named_port(protocol: Protocol, name: &str) -> PolicyPort {
    PolicyPort {
        protocol,
        port: Some(PortRef::Name(name.to_owned())),
        end_port: None,
    }
}

/// Every port of `protocol`.
pub fn any_port(protocol: Protocol) -> PolicyPort {
    PolicyPort {
        protocol,
        port: None,
        end_port: None,
    }
}
