//! Cluster-wide policy tiers in the iptables flavour: the cluster policies
//! ([`dataplane_core::ClusterPolicy`], the AdminNetworkPolicy model) before NetworkPolicy and
//! the baseline ([`dataplane_core::BaselinePolicy`]) after it, as filter chains that the
//! policy dispatch (`DP-POLICY`, see [`super::policy`]) jumps to per local pod address and
//! direction. Pure functions.
//!
//! ```text
//! DP-POLICY: -s <pod ip> ─▶ DP-CE-<hash>   (egress; -d <pod ip> ─▶ DP-CI-<hash> for ingress)
//!   DP-CE/CI-<hash>: the cluster policies selecting the pod, priority ascending, each one's
//!                    rules in order, one line per peer address or CIDR and port:
//!                      Allow ─▶ RETURN                (decided: back to DP-POLICY)
//!                      Deny  ─▶ DP-DENY-OUT|IN        (counted, logged, dropped)
//!                      Pass  ─goto─▶ <next tier>      (skips the remaining cluster rules)
//!                    last: ─goto─▶ <next tier>
//!   <next tier>: the pod's NetworkPolicy chain DP-PE/PI-<hash> when a NetworkPolicy
//!                isolates it (its implicit deny is final), else the baseline chain
//!                DP-BE/BI-<hash> (Allow ─▶ RETURN, Deny ─▶ DP-DENY-*; no match: RETURN),
//!                else none (allowed: RETURN).
//! ```
//!
//! Followed: the reference semantics of [`dataplane_core::policy_verdict`] (module
//! `dataplane_core::policy`, "Cluster policies and the baseline"), which follows the
//! AdminNetworkPolicy API (<https://network-policy-api.sigs.k8s.io/reference/spec/>,
//! "Policy precedence"). The chain structure is Calico's tiers in felix's iptables rule
//! renderer (`felix/rules/endpoints.go`: per endpoint and direction, one block per tier, each
//! policy of the tier a chain, `Pass` ending the tier's block and the tier's end-of-tier
//! drop; `felix/rules/policy.go`: `Pass` and `Allow` as marks and `RETURN`), with `-g`
//! (goto) in place of Calico's pass mark: a `Pass` leaves the cluster chain for the next
//! tier's chain and its `RETURN` goes straight back to `DP-POLICY`, so no mark bit is
//! spent.
//!
//! Departures, each for a reason:
//! - Cluster and baseline peers are rendered as addresses and CIDRs in the rules, not as
//!   ipsets: a peer of a cluster rule is resolved against the state (pods by namespace and
//!   pod labels, nodes by [`dataplane_core::PeerNode`] labels), and its members change the
//!   chain's content, so its name (a hash of the content): a partial sync rewrites just the
//!   chains whose content changed. Cluster policies are few and coarse (namespaces,
//!   networks), where NetworkPolicy's peer sets are many; the ipsets (limited, see
//!   [`crate::NetfilterConfig::max_ipsets`]) stay for NetworkPolicy.
//! - A named port is resolved when the rules are written, on the destination pod as the
//!   reference model does: on ingress the subject pod's container ports, on egress each
//!   known pod the peer selects that has the port (one `-d <pod>/32 -p <proto> --dport`
//!   line each), which is Calico's named-port ipset (`hash:ip,port`) written out.

use std::collections::BTreeMap;
use std::net::IpAddr;

use dataplane_core::{
    ClusterPeer, ClusterPolicySubject, ClusterPort, ClusterRule, DesiredState, Endpoint, IpFamily,
    LabelSelector, NamedPort, ObjectName, PolicyType, Protocol,
};
use ipnetwork::IpNetwork;

use super::naming::host;
use crate::plan::proto_name;

/// A pod as a cluster rule's peer or subject sees it.
#[derive(Debug, Clone, Copy)]
struct PodView<'a> {
    name: &'a ObjectName,
    labels: &'a BTreeMap<String, String>,
    named_ports: &'a [NamedPort],
    ips: &'a [IpAddr],
}

/// What a tier rule does when it matches (the three cluster actions; the baseline has two).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum TierAction {
    /// Allowed: `RETURN`.
    Allow,
    /// Denied: the direction's deny chain.
    Deny,
    /// On to the next tier: `-g` to it (or `RETURN` without one).
    Pass,
}

impl From<dataplane_core::ClusterAction> for TierAction {
    fn from(a: dataplane_core::ClusterAction) -> Self {
        match a {
            dataplane_core::ClusterAction::Allow => TierAction::Allow,
            dataplane_core::ClusterAction::Deny => TierAction::Deny,
            dataplane_core::ClusterAction::Pass => TierAction::Pass,
        }
    }
}

impl From<dataplane_core::BaselineAction> for TierAction {
    fn from(a: dataplane_core::BaselineAction) -> Self {
        match a {
            dataplane_core::BaselineAction::Allow => TierAction::Allow,
            dataplane_core::BaselineAction::Deny => TierAction::Deny,
        }
    }
}

/// The state's pods and nodes, indexed once for every rule of one render.
pub(crate) struct TierContext<'a> {
    state: &'a DesiredState,
    /// Every known pod (local endpoints first, then peer pods), as the reference model's
    /// `Party::at` finds them.
    pods: Vec<PodView<'a>>,
    /// The namespaces' labels.
    namespaces: BTreeMap<&'a str, BTreeMap<String, String>>,
}

impl<'a> TierContext<'a> {
    /// The context of `state`.
    pub(crate) fn new(state: &'a DesiredState) -> Self {
        let mut pods: Vec<PodView<'a>> = state
            .endpoints
            .iter()
            .map(|e| PodView {
                name: &e.name,
                labels: &e.labels,
                named_ports: &e.named_ports,
                ips: &e.ips,
            })
            .collect();
        pods.extend(state.pods.iter().map(|p| PodView {
            name: &p.name,
            labels: &p.labels,
            named_ports: &p.named_ports,
            ips: &p.ips,
        }));
        let mut namespaces = BTreeMap::new();
        for p in &pods {
            let ns = p.name.namespace.as_str();
            namespaces
                .entry(ns)
                .or_insert_with(|| state.namespace_labels(ns));
        }
        Self {
            state,
            pods,
            namespaces,
        }
    }

    fn namespace_labels(&self, namespace: &str) -> BTreeMap<String, String> {
        self.namespaces
            .get(namespace)
            .cloned()
            .unwrap_or_else(|| self.state.namespace_labels(namespace))
    }

    fn subject_matches(&self, subject: &ClusterPolicySubject, pod: &PodView<'_>) -> bool {
        let namespace = || self.namespace_labels(&pod.name.namespace);
        match subject {
            ClusterPolicySubject::Namespaces(sel) => sel.matches(&namespace()),
            ClusterPolicySubject::Pods(pods) => {
                pods.pod_selector.matches(pod.labels)
                    && pods.namespace_selector.matches(&namespace())
            }
        }
    }

    /// Whether pod `pod` is a `Namespaces` or `Pods` peer `peer` selects.
    fn pod_peer_matches(&self, peer: &ClusterPeer, pod: &PodView<'_>) -> bool {
        match peer {
            ClusterPeer::Namespaces(sel) => {
                sel.matches(&self.namespace_labels(&pod.name.namespace))
            }
            ClusterPeer::Pods(pods) => {
                pods.pod_selector.matches(pod.labels)
                    && pods
                        .namespace_selector
                        .matches(&self.namespace_labels(&pod.name.namespace))
            }
            ClusterPeer::Networks(nets) => pod
                .ips
                .iter()
                .any(|ip| nets.iter().any(|n| n.contains(*ip))),
            ClusterPeer::Nodes(_) => false,
        }
    }

    /// Whether `ip` is a known pod's (the reference model's `Party::Pod`).
    fn is_pod_ip(&self, ip: &IpAddr) -> bool {
        self.pods.iter().any(|p| p.ips.contains(ip))
    }

    /// The addresses of the nodes `sel` selects that policy sees as nodes: this node's
    /// addresses when its peer-node entry's labels (none without one) match, and those of
    /// the other peer nodes that match, but for addresses that are a pod's or this node's.
    fn node_addresses(&self, sel: &LabelSelector) -> Vec<IpAddr> {
        let state = self.state;
        let empty = BTreeMap::new();
        let own_labels = state
            .nodes
            .iter()
            .find(|n| n.name == state.node.name)
            .map_or(&empty, |n| &n.labels);
        let mut out = Vec::new();
        if sel.matches(own_labels) {
            out.extend(state.node.addresses.iter().copied());
        }
        for n in &state.nodes {
            if !sel.matches(&n.labels) {
                continue;
            }
            for ip in &n.addresses {
                // The reference model's `Party::at`: a pod's address is a pod, this node's
                // is this node (labelled by its own entry, above); the first node entry
                // with an address labels it.
                let first = state.nodes.iter().find(|m| m.addresses.contains(ip));
                if self.is_pod_ip(ip)
                    || state.node.addresses.contains(ip)
                    || first.is_some_and(|m| m.name != n.name)
                {
                    continue;
                }
                out.push(*ip);
            }
        }
        out.sort();
        out.dedup();
        out
    }

    /// The `iptables` matches of one rule of `direction` for subject `subject` in `family`:
    /// one line prefix per peer address or CIDR and port (empty: the rule matches nothing
    /// here).
    fn rule_matches<A>(
        &self,
        rule: &ClusterRule<A>,
        direction: PolicyType,
        subject: &PodView<'_>,
        family: IpFamily,
    ) -> Vec<String> {
        let flag = match direction {
            PolicyType::Ingress => "-s",
            PolicyType::Egress => "-d",
        };
        let in_family = |ip: &IpAddr| IpFamily::of(ip) == family;
        let mut out = Vec::new();
        // Numbered ports and ranges, and (ingress) named ports resolved on the subject.
        let mut fixed: Vec<String> = Vec::new();
        let mut named: Vec<&str> = Vec::new();
        for p in &rule.ports {
            match p {
                ClusterPort::PortNumber { protocol, port } => {
                    fixed.push(port_match(*protocol, *port, *port));
                }
                ClusterPort::PortRange {
                    protocol,
                    start,
                    end,
                } => fixed.push(port_match(*protocol, *start, *end)),
                ClusterPort::NamedPort(name) => match direction {
                    PolicyType::Ingress => fixed.extend(
                        subject
                            .named_ports
                            .iter()
                            .filter(|np| np.name == *name)
                            .map(|np| port_match(np.protocol, np.port, np.port)),
                    ),
                    PolicyType::Egress => named.push(name),
                },
            }
        }
        fixed.sort();
        fixed.dedup();
        let every_port = rule.ports.is_empty();
        // Each peer's addresses (hosts) and CIDRs.
        let mut addrs: Vec<String> = Vec::new();
        for peer in &rule.peers {
            match peer {
                ClusterPeer::Networks(nets) => addrs.extend(
                    nets.iter()
                        .filter(|n| IpFamily::of(&n.ip()) == family)
                        .map(IpNetwork::to_string),
                ),
                ClusterPeer::Nodes(sel) => addrs.extend(
                    self.node_addresses(sel)
                        .iter()
                        .filter(|ip| in_family(ip))
                        .map(host),
                ),
                ClusterPeer::Namespaces(_) | ClusterPeer::Pods(_) => addrs.extend(
                    self.pods
                        .iter()
                        .filter(|p| self.pod_peer_matches(peer, p))
                        .flat_map(|p| p.ips.iter().filter(|ip| in_family(ip)))
                        // The first pod with an address is the one policy sees there.
                        .filter(|ip| {
                            self.pods
                                .iter()
                                .find(|q| q.ips.contains(ip))
                                .is_some_and(|q| self.pod_peer_matches(peer, q))
                        })
                        .map(host),
                ),
            }
        }
        addrs.sort();
        addrs.dedup();
        if every_port {
            out.extend(addrs.iter().map(|a| format!("{flag} {a} ")));
        } else {
            for a in &addrs {
                out.extend(fixed.iter().map(|p| format!("{flag} {a} {p}")));
            }
        }
        // Egress named ports: each known pod with the port that a peer of the rule matches
        // (the destination is that pod).
        for name in named {
            for pod in &self.pods {
                for np in pod.named_ports.iter().filter(|np| np.name == name) {
                    for ip in pod.ips.iter().filter(|ip| in_family(ip)) {
                        let first = self.pods.iter().find(|q| q.ips.contains(ip));
                        if first.is_none_or(|q| q.name != pod.name) {
                            continue;
                        }
                        let peer_ok = rule.peers.iter().any(|peer| match peer {
                            ClusterPeer::Networks(nets) => nets.iter().any(|n| n.contains(*ip)),
                            ClusterPeer::Nodes(_) => false,
                            _ => self.pod_peer_matches(peer, pod),
                        });
                        if peer_ok {
                            out.push(format!(
                                "-d {} {}",
                                host(ip),
                                port_match(np.protocol, np.port, np.port)
                            ));
                        }
                    }
                }
            }
        }
        out
    }

    /// The lines of `rules` (each `(name, action, rule)`) for `subject` in `direction`:
    /// `Allow` returns, `Deny` goes to `deny`, `Pass` goes to `next` (returns without one).
    fn tier_lines<'r, A: Copy + Into<TierAction> + 'r>(
        &self,
        rules: impl IntoIterator<Item = (&'r str, &'r ClusterRule<A>)>,
        direction: PolicyType,
        subject: &PodView<'_>,
        family: IpFamily,
        deny: &str,
        next: Option<&str>,
    ) -> Vec<String> {
        let mut lines = Vec::new();
        for (policy, rule) in rules {
            let target = match rule.action.into() {
                TierAction::Allow => "-j RETURN".to_owned(),
                TierAction::Deny => format!("-j {deny}"),
                TierAction::Pass => {
                    next.map_or_else(|| "-j RETURN".to_owned(), |n| format!("-g {n}"))
                }
            };
            let comment = comment(&format!("{policy}/{}", rule.name));
            for m in self.rule_matches(rule, direction, subject, family) {
                lines.push(format!("{m}-m comment --comment {comment} {target}"));
            }
        }
        lines
    }

    /// The cluster tier's lines of endpoint `endpoint` in `direction` (`None`: no cluster
    /// policy selects it), ending in a goto to `next`.
    pub(crate) fn cluster_lines(
        &self,
        endpoint: &Endpoint,
        direction: PolicyType,
        family: IpFamily,
        deny: &str,
        next: Option<&str>,
    ) -> Option<Vec<String>> {
        let subject = Self::view(endpoint);
        let mut selecting: Vec<&dataplane_core::ClusterPolicy> = self
            .state
            .cluster_policies
            .iter()
            .filter(|p| self.subject_matches(&p.subject, &subject))
            .collect();
        if selecting.is_empty() {
            return None;
        }
        selecting.sort_by(|a, b| (a.priority, &a.name).cmp(&(b.priority, &b.name)));
        let rules = selecting
            .iter()
            .flat_map(|p| p.rules(direction).iter().map(move |r| (p.name.as_str(), r)));
        let mut lines = self.tier_lines(rules, direction, &subject, family, deny, next);
        if let Some(next) = next {
            lines.push(format!("-g {next}"));
        }
        Some(lines)
    }

    /// The baseline's lines of endpoint `endpoint` in `direction` (`None`: the baseline
    /// does not select it, or has no rule that matches anything here).
    pub(crate) fn baseline_lines(
        &self,
        endpoint: &Endpoint,
        direction: PolicyType,
        family: IpFamily,
        deny: &str,
    ) -> Option<Vec<String>> {
        let baseline = self.state.baseline_policy.as_ref()?;
        let subject = Self::view(endpoint);
        if !self.subject_matches(&baseline.subject, &subject) {
            return None;
        }
        let rules = baseline.rules(direction).iter().map(|r| ("baseline", r));
        let lines = self.tier_lines(rules, direction, &subject, family, deny, None);
        (!lines.is_empty()).then_some(lines)
    }

    fn view(e: &Endpoint) -> PodView<'_> {
        PodView {
            name: &e.name,
            labels: &e.labels,
            named_ports: &e.named_ports,
            ips: &e.ips,
        }
    }
}

/// `-p tcp -m tcp --dport 80:81 ` (with a trailing space).
fn port_match(protocol: Protocol, lo: u16, hi: u16) -> String {
    let p = proto_name(protocol);
    if lo == hi {
        format!("-p {p} -m {p} --dport {lo} ")
    } else {
        format!("-p {p} -m {p} --dport {lo}:{hi} ")
    }
}

/// A quoted `--comment` naming a rule (`policy/rule`): rule names are free text (at most
/// 100 characters), so only letters, digits, spaces and `-._/:` are kept (nothing the
/// restore tool's quoting could trip on), and the text stays under iptables' 256.
fn comment(text: &str) -> String {
    let clean: String = text
        .chars()
        .filter(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '.' | '_' | '/' | ':' | ' '))
        .take(200)
        .collect();
    format!("\"tier {clean}\"")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn comments_are_quoted_and_bounded() {
        assert_eq!(comment("p/r"), "\"tier p/r\"");
        assert_eq!(comment("a\"b\\c\n"), "\"tier abc\"");
        assert!(comment(&"x".repeat(500)).len() < 256);
    }
}
