//! The cases: the Kubernetes NetworkPolicy e2e suite (`test/e2e/network/netpol`) and the
//! examples of the documentation, in the suite's layout.

use dataplane_core::IpFamily::{V4, V6};
use dataplane_core::Protocol::{Sctp, Tcp, Udp};
use dataplane_core::SelectorOperator::{DoesNotExist, Exists, In, NotIn};
use dataplane_core::{IpFamily, NAMESPACE_NAME_LABEL};

use super::case::{
    all, any_port, expression, expressions, ip_block, labels, named_port, namespaces, pods,
    pods_in, policy, port, port_range, rule, PolicyCase, Step,
};
use super::layout::{cluster_cidr, node_pod_cidr, pod_host_cidr, service_cidr};

/// The e2e suite's policy title prefix.
const E2E: &str = "e2e Netpol:";
/// The documentation page's title.
const DOCS: &str = "docs (Network Policies):";

fn case(name: &str, source: &str, steps: Vec<Step>) -> PolicyCase {
    PolicyCase::new(name, source, steps)
}

fn apply(policies: Vec<dataplane_core::Policy>) -> Step {
    Step::Apply(policies)
}

fn pod_a() -> dataplane_core::LabelSelector {
    labels(&[("pod", "a")])
}

/// Namespace `ns` by the API server's name label.
fn ns_named(ns: &str) -> dataplane_core::LabelSelector {
    labels(&[(NAMESPACE_NAME_LABEL, ns)])
}

/// Every pod of namespace `x` isolated for ingress.
fn deny_ingress_x() -> dataplane_core::Policy {
    policy("x", "deny-ingress", all()).deny_ingress().build()
}

/// Every pod of namespace `x` isolated for egress.
fn deny_egress_x() -> dataplane_core::Policy {
    policy("x", "deny-egress", all()).deny_egress().build()
}

/// The policy table: every case probed in IPv4 and IPv6 (in a dual-stack lab), the `ipBlock`
/// cases also with IPv6 CIDRs. See the module documentation of [`crate::conformance::policy`]
/// for what it covers.
pub fn policy_cases() -> Vec<PolicyCase> {
    [
        defaults(),
        selectors(),
        combined_selectors(),
        ports(),
        several_policies(),
        protocols_and_services(),
        updates(),
        ip_blocks(),
        ipv6_cases(),
        vec![anti_spoofing()],
        cluster_tiers(),
    ]
    .concat()
}

/// The AdminNetworkPolicy API reference's precedence rules.
const ANP: &str = "AdminNetworkPolicy API (network-policy-api.sigs.k8s.io):";

/// A cluster policy at `priority` whose subject is namespace `subject` (every pod of it), with
/// one ingress rule `action` from every pod of namespace `from`.
fn cluster_ingress(
    name: &str,
    priority: u32,
    subject: &str,
    action: dataplane_core::ClusterAction,
    from: &str,
) -> dataplane_core::ClusterPolicy {
    use dataplane_core::{ClusterPeer, ClusterPolicy, ClusterPolicyRule};
    ClusterPolicy::for_namespaces(name, priority, ns_named(subject)).with_ingress(
        ClusterPolicyRule::new(
            format!("{action:?}-from-{from}").to_lowercase(),
            action,
            [ClusterPeer::Namespaces(ns_named(from))],
        ),
    )
}

/// Issue 22's conformance rows for cluster policies and the baseline, in one case of four
/// steps (each step's matrix costs every client 144 source ports of a budget the table is
/// close to): the baseline applies only where nothing else decided (step 1: it denies y;
/// step 2: x's NetworkPolicy decides for x, the baseline still for z), a cluster Deny beats
/// a NetworkPolicy Allow (step 3), Pass defers to NetworkPolicy (step 4: a Pass before the
/// Deny hands y -> x back to x's allow-all). A backend without cluster policy skips it,
/// visibly.
fn cluster_tiers() -> Vec<PolicyCase> {
    use dataplane_core::ClusterAction::{Deny, Pass};
    use dataplane_core::{
        BaselineAction, BaselinePolicy, BaselineRule, ClusterPeer, ClusterPolicySubject,
    };
    let baseline_deny_from_y = BaselinePolicy::new(ClusterPolicySubject::Namespaces(all()))
        .with_ingress(BaselineRule::new(
            "deny-from-y",
            BaselineAction::Deny,
            [ClusterPeer::Namespaces(ns_named("y"))],
        ));
    vec![case(
        "cluster-tiers",
        &format!(
            "{ANP} AdminNetworkPolicy (Allow, Deny, Pass by priority) before NetworkPolicy \
             before BaselineAdminNetworkPolicy"
        ),
        vec![
            Step::SetBaseline(Some(baseline_deny_from_y)),
            apply(vec![policy("x", "allow-all", all())
                .ingress(rule(Vec::new(), Vec::new()))
                .build()]),
            Step::ApplyCluster(vec![cluster_ingress("deny-y-to-x", 10, "x", Deny, "y")]),
            Step::ApplyCluster(vec![cluster_ingress("pass-y-to-x", 5, "x", Pass, "y")]),
        ],
    )]
}

/// The team's anti-spoofing rule: z/c accepts x/a (any port) and its node (kubelet's rule),
/// so the forged datagrams of each step (z/a and y/a forging x/a's address and, in IPv6,
/// node-1's, to z/c's sink) would be delivered were it not for the source check; deleting
/// the policy turns the check off again (no policies, no anti-spoofing: delivered, which
/// also shows that the forgery itself works).
fn anti_spoofing() -> PolicyCase {
    case(
        "anti-spoofing",
        "the lead's rule (reference model): with policies, a local pod's packet from an address that is not its own is dropped",
        vec![
            apply(vec![policy("z", "c-allows-x-a", labels(&[("pod", "c")]))
                .ingress(rule(vec![pods_in(ns_named("x"), pod_a())], Vec::new()))
                .build()]),
            Step::delete("z", "c-allows-x-a"),
        ],
    )
    .with_forged()
}

/// The baseline and the default deny / allow-all policies.
fn defaults() -> Vec<PolicyCase> {
    vec![
        case(
            "no-policies",
            "baseline: without policies everything is reachable",
            vec![apply(Vec::new())],
        ),
        case(
            "default-deny-ingress",
            &format!("{E2E} should support a 'default-deny-ingress' policy"),
            vec![apply(vec![deny_ingress_x()])],
        ),
        case(
            "default-deny-egress",
            &format!("{E2E} should deny egress from all pods in a namespace"),
            vec![apply(vec![deny_egress_x()])],
        ),
        case(
            "default-deny-all",
            &format!("{E2E} should support a 'default-deny-all' policy"),
            vec![apply(vec![policy("x", "deny-all", all())
                .deny_ingress()
                .deny_egress()
                .build()])],
        ),
        case(
            "allow-all-ingress",
            &format!("{E2E} should support allow-all policy; {DOCS} Allow all ingress traffic"),
            vec![
                apply(vec![deny_ingress_x()]),
                apply(vec![policy("x", "allow-all", all())
                    .ingress(rule(Vec::new(), Vec::new()))
                    .build()]),
            ],
        ),
        case(
            "allow-all-egress",
            &format!("{DOCS} Allow all egress traffic"),
            vec![
                apply(vec![deny_egress_x()]),
                apply(vec![policy("x", "allow-all-egress", all())
                    .egress(rule(Vec::new(), Vec::new()))
                    .build()]),
            ],
        ),
    ]
}

/// Pod and namespace selectors: `podSelector`, `namespaceSelector`, both (AND) or either (OR),
/// `matchExpressions`.
fn selectors() -> Vec<PolicyCase> {
    vec![
        case(
            "pod-selector",
            &format!("{E2E} should enforce policy to allow traffic from pods within server namespace based on PodSelector"),
            vec![apply(vec![policy("x", "x-a-allows-x-b", pod_a())
                .ingress(rule(vec![pods(labels(&[("pod", "b")]))], Vec::new()))
                .build()])],
        ),
        case(
            "ingress-for-a-target",
            &format!("{E2E} should enforce policy to allow ingress traffic for a target"),
            vec![apply(vec![
                policy("x", "deny-all", all()).deny_ingress().build(),
                policy("x", "allow-all-to-a", pod_a())
                    .ingress(rule(vec![pods_in(all(), all())], Vec::new()))
                    .build(),
            ])],
        ),
        case(
            "deny-ingress-from-other-namespaces",
            &format!("{E2E} should deny ingress from pods on other namespaces"),
            vec![apply(vec![policy("x", "deny-other-ns", all())
                .ingress(rule(vec![pods(all())], Vec::new()))
                .build()])],
        ),
        case(
            "namespace-selector",
            &format!("{E2E} should enforce policy to allow traffic only from a different namespace, based on NamespaceSelector"),
            vec![apply(vec![policy("x", "allow-client-a-via-ns-selector", pod_a())
                .ingress(rule(vec![namespaces(ns_named("y"))], Vec::new()))
                .build()])],
        ),
        case(
            "pod-selector-match-expressions",
            &format!("{E2E} should enforce policy based on PodSelector with MatchExpressions"),
            vec![apply(vec![policy("x", "x-a-allows-x-b", pod_a())
                .ingress(rule(vec![pods(expression("pod", In, &["b"]))], Vec::new()))
                .build()])],
        ),
        case(
            "namespace-selector-match-expressions",
            &format!("{E2E} should enforce policy based on NamespaceSelector with MatchExpressions"),
            vec![apply(vec![policy("x", "allow-ns-y-match-selector", pod_a())
                .ingress(rule(
                    vec![namespaces(expression(NAMESPACE_NAME_LABEL, In, &["y"]))],
                    Vec::new(),
                ))
                .build()])],
        ),
    ]
}

/// Selectors combined: two peers (OR), both selectors in one peer (AND), several values,
/// `Exists` and `DoesNotExist`.
fn combined_selectors() -> Vec<PolicyCase> {
    vec![
        case(
            "pod-or-namespace-selector",
            &format!("{E2E} should enforce policy based on PodSelector or NamespaceSelector (two peers: OR)"),
            vec![apply(vec![policy("x", "allow-ns-not-x-or-pod-b", pod_a())
                .ingress(rule(
                    vec![
                        namespaces(expression(NAMESPACE_NAME_LABEL, NotIn, &["x"])),
                        pods(labels(&[("pod", "b")])),
                    ],
                    Vec::new(),
                ))
                .build()])],
        ),
        case(
            "pod-and-namespace-selector",
            &format!("{E2E} should enforce policy based on PodSelector and NamespaceSelector (one peer: AND)"),
            vec![apply(vec![policy("x", "allow-ns-not-x-and-pod-b", pod_a())
                .ingress(rule(
                    vec![pods_in(
                        expression(NAMESPACE_NAME_LABEL, NotIn, &["x"]),
                        labels(&[("pod", "b")]),
                    )],
                    Vec::new(),
                ))
                .build()])],
        ),
        case(
            "multiple-pod-and-namespace-selectors",
            &format!("{E2E} should enforce policy based on Multiple PodSelectors and NamespaceSelectors"),
            vec![apply(vec![policy("x", "allow-ns-not-x-pods-b-c", pod_a())
                .ingress(rule(
                    vec![pods_in(
                        expression(NAMESPACE_NAME_LABEL, NotIn, &["x"]),
                        expression("pod", In, &["b", "c"]),
                    )],
                    Vec::new(),
                ))
                .build()])],
        ),
        case(
            "any-pod-selectors",
            &format!("{E2E} should enforce policy based on any PodSelectors"),
            vec![apply(vec![policy("x", "allow-pods-b-and-c", pod_a())
                .ingress(rule(
                    vec![pods(labels(&[("pod", "b")])), pods(labels(&[("pod", "c")]))],
                    Vec::new(),
                ))
                .build()])],
        ),
        case(
            "pod-in-another-namespace",
            &format!("{E2E} should enforce policy to allow traffic only from a pod in a different namespace based on PodSelector and NamespaceSelector"),
            vec![apply(vec![policy("x", "allow-y-a", pod_a())
                .ingress(rule(vec![pods_in(ns_named("y"), pod_a())], Vec::new()))
                .build()])],
        ),
        case(
            "exists-and-does-not-exist",
            "matchExpressions Exists and DoesNotExist; a pod relabelled out of the selection",
            vec![
                apply(vec![policy("x", "allow-unmarked", pod_a())
                    .ingress(rule(
                        vec![pods_in(
                            all(),
                            expressions(&[("pod", Exists, &[]), ("marked", DoesNotExist, &[])]),
                        )],
                        Vec::new(),
                    ))
                    .build()]),
                Step::label_pod("y/b", "marked", "yes"),
                Step::unlabel_pod("y/b", "marked"),
            ],
        ),
    ]
}

/// Ports: numbered, named, ranges, one protocol only.
fn ports() -> Vec<PolicyCase> {
    vec![
        case(
            "ports",
            &format!("{E2E} should enforce policy based on Ports"),
            vec![apply(vec![policy("x", "allow-ingress-port-81-from-y", pod_a())
                .ingress(rule(vec![namespaces(ns_named("y"))], vec![port(Tcp, 81)]))
                .build()])],
        ),
        case(
            "named-port-ingress",
            &format!("{E2E} should allow ingress access on one named port"),
            vec![apply(vec![policy("x", "allow-all-to-serve-81-tcp", all())
                .ingress(rule(Vec::new(), vec![named_port(Tcp, "serve-81-tcp")]))
                .build()])],
        ),
        case(
            "named-port-ingress-from-namespace",
            &format!("{E2E} should allow ingress access from namespace on one named port"),
            vec![apply(vec![policy("x", "allow-y-to-serve-80-udp", all())
                .ingress(rule(
                    vec![namespaces(ns_named("y"))],
                    vec![named_port(Udp, "serve-80-udp")],
                ))
                .build()])],
        ),
        case(
            "named-port-egress",
            &format!("{E2E} should allow egress access on one named port (resolved on the destination pod)"),
            vec![apply(vec![policy("x", "allow-egress-serve-80-tcp", all())
                .egress(rule(Vec::new(), vec![named_port(Tcp, "serve-80-tcp")]))
                .build()])],
        ),
        case(
            "end-port-ingress-edited",
            &format!("{E2E} [Feature:NetworkPolicyEndPort] port ranges; the policy edited mid-case"),
            vec![
                apply(vec![policy("x", "allow-tcp-range", pod_a())
                    .ingress(rule(Vec::new(), vec![port_range(Tcp, 80, 81)]))
                    .build()]),
                apply(vec![policy("x", "allow-tcp-range", pod_a())
                    .ingress(rule(Vec::new(), vec![port_range(Tcp, 81, 90)]))
                    .build()]),
            ],
        ),
        case(
            "end-port-egress",
            &format!("{E2E} [Feature:NetworkPolicyEndPort] egress on a port range"),
            vec![apply(vec![policy("x", "allow-udp-range-out", all())
                .egress(rule(vec![namespaces(all())], vec![port_range(Udp, 79, 80)]))
                .build()])],
        ),
    ]
}

/// Several policies: unions, precedence, namespaces, both directions.
fn several_policies() -> Vec<PolicyCase> {
    vec![
        case(
            "stacked-policies",
            &format!("{E2E} should enforce multiple, stacked policies with overlapping podSelectors (union)"),
            vec![
                apply(vec![policy("x", "allow-y-80", pod_a())
                    .ingress(rule(vec![namespaces(ns_named("y"))], vec![port(Tcp, 80)]))
                    .build()]),
                apply(vec![policy("x", "allow-y-81", pod_a())
                    .ingress(rule(vec![namespaces(ns_named("y"))], vec![port(Tcp, 81)]))
                    .build()]),
            ],
        ),
        case(
            "ingress-allow-all-takes-precedence",
            &format!("{E2E} should enforce multiple ingress policies with ingress allow-all policy taking precedence"),
            vec![
                apply(vec![policy("x", "allow-80-only", pod_a())
                    .ingress(rule(Vec::new(), vec![port(Tcp, 80)]))
                    .build()]),
                apply(vec![policy("x", "allow-all", pod_a())
                    .ingress(rule(Vec::new(), Vec::new()))
                    .build()]),
            ],
        ),
        case(
            "egress-allow-all-takes-precedence",
            &format!("{E2E} should enforce multiple egress policies with egress allow-all policy taking precedence"),
            vec![
                apply(vec![policy("x", "allow-egress-80-only", pod_a())
                    .egress(rule(Vec::new(), vec![port(Tcp, 80)]))
                    .build()]),
                apply(vec![policy("x", "allow-all-egress", pod_a())
                    .egress(rule(Vec::new(), Vec::new()))
                    .build()]),
            ],
        ),
        case(
            "deny-egress-pod-selector",
            &format!("{E2E} should deny egress from pods based on PodSelector"),
            vec![apply(vec![policy("x", "deny-egress-a", pod_a()).deny_egress().build()])],
        ),
        case(
            "ingress-and-egress-together",
            &format!("{E2E} should work with Ingress, Egress specified together"),
            vec![apply(vec![policy("x", "ingress-b-egress-y", pod_a())
                .ingress(rule(vec![pods(labels(&[("pod", "b")]))], Vec::new()))
                .egress(rule(vec![namespaces(ns_named("y"))], Vec::new()))
                .build()])],
        ),
        case(
            "egress-denied-on-the-client-side",
            &format!("{E2E} should support denying of egress traffic on the client side (even if the server explicitly allows this traffic)"),
            vec![apply(vec![
                policy("x", "x-a-egress-to-y-a", pod_a())
                    .egress(rule(vec![pods_in(ns_named("y"), pod_a())], Vec::new()))
                    .build(),
                policy("y", "allow-from-x", all())
                    .ingress(rule(vec![namespaces(ns_named("x"))], Vec::new()))
                    .build(),
            ])],
        ),
        case(
            "egress-to-another-namespace",
            &format!("{E2E} should enforce egress policy allowing traffic to a server in a different namespace based on PodSelector and NamespaceSelector"),
            vec![apply(vec![policy("x", "x-a-egress-to-y-b", pod_a())
                .egress(rule(vec![pods_in(ns_named("y"), labels(&[("pod", "b")]))], Vec::new()))
                .build()])],
        ),
    ]
}

/// Protocols, and service traffic checked after DNAT.
fn protocols_and_services() -> Vec<PolicyCase> {
    vec![
        case(
            "ingress-any-port-on-a-protocol",
            &format!("{E2E} should enforce ingress policy allowing any port traffic to a server on a specific protocol"),
            vec![apply(vec![policy("x", "allow-any-udp", pod_a())
                .ingress(rule(Vec::new(), vec![any_port(Udp)]))
                .build()])],
        ),
        case(
            "udp-only-port",
            &format!("{E2E} should not allow access by TCP when a policy specifies only UDP"),
            vec![apply(vec![policy("x", "allow-udp-81", pod_a())
                .ingress(rule(Vec::new(), vec![port(Udp, 81)]))
                .build()])],
        ),
        case(
            "sctp-only-port",
            &format!("{E2E} should not mistakenly treat 'protocol: SCTP' as 'protocol: TCP', even if the plugin doesn't support SCTP"),
            vec![apply(vec![policy("x", "allow-sctp-80", pod_a())
                .ingress(rule(Vec::new(), vec![port(Sctp, 80)]))
                .build()])],
        )
        .with_sctp(),
        case(
            "tcp-only-port-denies-sctp",
            "a policy allowing TCP port 80 does not allow SCTP to port 80",
            vec![apply(vec![policy("x", "allow-tcp-80", pod_a())
                .ingress(rule(Vec::new(), vec![port(Tcp, 80)]))
                .build()])],
        )
        .with_sctp(),
        case(
            "sctp-egress-port",
            "egress allowing only SCTP port 81: SCTP/80, TCP/81 and UDP/81 denied",
            vec![apply(vec![policy("x", "allow-egress-sctp-81", all())
                .egress(rule(Vec::new(), vec![port(Sctp, 81)]))
                .build()])],
        )
        .with_sctp(),
        case(
            "egress-dns-like-port-only",
            &format!("{DOCS} a default-deny egress that still allows DNS (UDP 81 stands in for 53)"),
            vec![apply(vec![policy("x", "allow-dns-only", all())
                .egress(rule(Vec::new(), vec![port(Udp, 81)]))
                .build()])],
        ),
        case(
            "egress-to-a-service-after-dnat",
            "service traffic is checked after DNAT: egress to pod y/b allows its ClusterIP",
            vec![apply(vec![policy("x", "egress-to-y-b-80", pod_a())
                .egress(rule(
                    vec![pods_in(ns_named("y"), labels(&[("pod", "b")]))],
                    vec![port(Tcp, 80), port(Udp, 80)],
                ))
                .build()])],
        ),
        case(
            "egress-ip-block-of-the-service-cidr",
            "service traffic is checked after DNAT: an ipBlock of the service CIDR allows no service",
            vec![apply(vec![policy("x", "egress-to-service-cidr", pod_a())
                .egress(rule(vec![ip_block(service_cidr(V4), &[])], Vec::new()))
                .build()])],
        ),
        case(
            "policies-in-different-namespaces",
            "policies of several namespaces, each applying to its own pods",
            vec![apply(vec![
                deny_ingress_x(),
                policy("z", "z-egress-to-y", all())
                    .egress(rule(vec![namespaces(ns_named("y"))], Vec::new()))
                    .build(),
            ])],
        ),
    ]
}

/// Changes mid-case: edits, relabels, deletions.
fn updates() -> Vec<PolicyCase> {
    vec![
        case(
            "updated-policy",
            &format!("{E2E} should enforce updated policy"),
            vec![
                apply(vec![policy("x", "allow-ingress", pod_a())
                    .ingress(rule(vec![pods_in(all(), all())], vec![port(Tcp, 81)]))
                    .build()]),
                apply(vec![policy("x", "allow-ingress", pod_a())
                    .ingress(rule(vec![pods_in(all(), all())], vec![port(Tcp, 80)]))
                    .build()]),
            ],
        ),
        case(
            "updated-namespace",
            &format!("{E2E} should allow ingress access from updated namespace"),
            vec![
                apply(vec![policy("x", "allow-client-a-via-ns-selector", pod_a())
                    .ingress(rule(vec![namespaces(labels(&[("ns2", "updated")]))], Vec::new()))
                    .build()]),
                Step::label_namespace("y", "ns2", "updated"),
                Step::unlabel_namespace("y", "ns2"),
            ],
        ),
        case(
            "updated-pod",
            &format!("{E2E} should allow ingress access from updated pod"),
            vec![
                apply(vec![policy("x", "allow-client-a-via-pod-selector", pod_a())
                    .ingress(rule(
                        vec![pods_in(all(), labels(&[("pod2", "updated")]))],
                        Vec::new(),
                    ))
                    .build()]),
                Step::label_pod("z/b", "pod2", "updated"),
            ],
        ),
        case(
            "deny-ingress-to-updated-pod",
            &format!("{E2E} should deny ingress access to updated pod"),
            vec![
                apply(vec![policy("x", "deny-ingress-via-label-selector", labels(&[("target", "isolated")]))
                    .deny_ingress()
                    .build()]),
                Step::label_pod("x/a", "target", "isolated"),
            ],
        ),
        case(
            "policy-deleted",
            &format!("{E2E} should stop enforcing policies after they are deleted"),
            vec![
                apply(vec![
                    policy("x", "deny-all", all()).deny_ingress().deny_egress().build(),
                    policy("x", "allow-from-y-to-a", pod_a())
                        .ingress(rule(vec![namespaces(ns_named("y"))], Vec::new()))
                        .build(),
                ]),
                Step::delete("x", "deny-all"),
                Step::delete("x", "allow-from-y-to-a"),
            ],
        ),
        case(
            "ingress-and-egress-controlled-independently",
            &format!("{E2E} should enforce policies to check ingress and egress policies can be controlled independently based on PodSelector"),
            vec![
                apply(vec![policy("x", "deny-egress-a", pod_a()).deny_egress().build()]),
                apply(vec![policy("x", "deny-ingress-b", labels(&[("pod", "b")]))
                    .deny_ingress()
                    .build()]),
            ],
        ),
    ]
}

/// `ipBlock`, matching pod addresses.
fn ip_blocks() -> Vec<PolicyCase> {
    vec![
        case(
            "ip-block-egress",
            &format!("{E2E} should allow egress access to server in CIDR block"),
            vec![apply(vec![policy("x", "egress-to-y-b-cidr", pod_a())
                .egress(rule(vec![ip_block(pod_host_cidr("y/b", V4), &[])], Vec::new()))
                .build()])],
        ),
        case(
            "ip-block-except-egress",
            &format!("{E2E} should enforce except clause while egress access to server in CIDR block"),
            vec![apply(vec![policy("x", "egress-cluster-but-node-1", pod_a())
                .egress(rule(
                    vec![ip_block(cluster_cidr(V4), &[node_pod_cidr(1, V4)])],
                    Vec::new(),
                ))
                .build()])],
        ),
        case(
            "ip-block-overlapping-cidr-and-except",
            &format!("{E2E} should ensure an IP overlapping both IPBlock.CIDR and IPBlock.Except is allowed"),
            vec![
                apply(vec![policy("x", "egress-except-y-b", pod_a())
                    .egress(rule(
                        vec![ip_block(cluster_cidr(V4), &[pod_host_cidr("y/b", V4)])],
                        Vec::new(),
                    ))
                    .build()]),
                apply(vec![policy("x", "egress-except-y-b", pod_a())
                    .egress(rule(
                        vec![
                            ip_block(cluster_cidr(V4), &[pod_host_cidr("y/b", V4)]),
                            ip_block(pod_host_cidr("y/b", V4), &[]),
                        ],
                        Vec::new(),
                    ))
                    .build()]),
            ],
        ),
        case(
            "ip-block-except-ingress",
            "ipBlock with except on ingress, matching pod addresses",
            vec![apply(vec![policy("x", "ingress-from-node-1-pods", all())
                .ingress(rule(
                    vec![ip_block(cluster_cidr(V4), &[node_pod_cidr(0, V4)])],
                    Vec::new(),
                ))
                .build()])],
        ),
    ]
}

/// The `ipBlock` cases again with IPv6 CIDRs. Every case is probed in both families in the
/// dual-stack lab already; these are about IPv6 prefixes (an IPv4 `ipBlock` matches no IPv6
/// address).
fn ipv6_cases() -> Vec<PolicyCase> {
    let v6 = |c: PolicyCase| {
        let name = format!("{}-ipv6", c.name);
        PolicyCase { name, ..c }.in_family(IpFamily::V6)
    };
    vec![
        v6(case(
            "ip-block-except-egress",
            &format!(
                "{E2E} should enforce except clause while egress access to server in CIDR block"
            ),
            vec![apply(vec![policy(
                "x",
                "egress-cluster-but-node-1",
                pod_a(),
            )
            .egress(rule(
                vec![ip_block(cluster_cidr(V6), &[node_pod_cidr(1, V6)])],
                Vec::new(),
            ))
            .build()])],
        )),
        v6(case(
            "ip-block-except-ingress",
            "ipBlock with except on ingress, matching pod addresses",
            vec![apply(vec![policy("x", "ingress-from-node-1-pods", all())
                .ingress(rule(
                    vec![ip_block(cluster_cidr(V6), &[node_pod_cidr(0, V6)])],
                    Vec::new(),
                ))
                .build()])],
        )),
    ]
}
