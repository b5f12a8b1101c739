//! `AdminNetworkPolicy`, `BaselineAdminNetworkPolicy`, Calico `HostEndpoint`,
//! `GlobalNetworkPolicy` and `FelixConfiguration` from YAML manifests to the state's policy tiers, Nodes as peers,
//! and every field that is rejected (by the manifest parser and by the store).

use std::net::IpAddr;

use dataplane_core::{
    BaselineAction, ClusterAction, ClusterPeer, ClusterPolicySubject, ClusterPort, FailsafePort,
    HostAction, HostPort, LabelRequirement, LabelSelector, PolicyType, PortRange, Protocol,
    SelectorOperator,
};
use dataplane_kube::{
    parse_manifests, Cluster, Kind, ManifestError, Object, ObjectKey, Settings, TranslateError,
};

fn none(_: &dataplane_core::ObjectName, _: &[IpAddr]) -> Option<String> {
    None
}

const NODES: &str = r"
apiVersion: v1
kind: Node
metadata: { name: node-a, labels: { role: worker, kubernetes.io/os: linux } }
status: { addresses: [{ type: InternalIP, address: 172.18.0.2 }, { type: Hostname, address: node-a }] }
---
apiVersion: v1
kind: Node
metadata: { name: node-b, labels: { role: control-plane } }
status:
  addresses: [{ type: InternalIP, address: 172.18.0.3 }, { type: ExternalIP, address: 198.51.100.3 }]
  conditions: [{ type: Ready, status: 'True', lastHeartbeatTime: '2026-12-07T05:00:00Z' }]
";

const TIERS: &str = r"
apiVersion: policy.networking.k8s.io/v1alpha1
kind: AdminNetworkPolicy
metadata: { name: tenants }
spec:
  priority: 10
  subject:
    pods:
      namespaceSelector: { matchLabels: { tenant: a } }
      podSelector: { matchExpressions: [{ key: app, operator: In, values: [web] }] }
  ingress:
    - name: deny-b
      action: Deny
      from: [{ namespaces: { matchLabels: { tenant: b } } }]
      ports:
        - portNumber: { protocol: TCP, port: 8080 }
        - namedPort: http
        - portRange: { protocol: UDP, start: 5000, end: 5100 }
    - name: pass-monitoring
      action: Pass
      from: [{ pods: { namespaceSelector: {}, podSelector: { matchLabels: { app: prom } } } }]
  egress:
    - name: allow-control-plane
      action: Allow
      to: [{ nodes: { matchLabels: { role: control-plane } } }, { networks: [192.0.2.0/24, 2001:db8::/32] }]
status:
  conditions: []
---
apiVersion: policy.networking.k8s.io/v1alpha1
kind: BaselineAdminNetworkPolicy
metadata: { name: default }
spec:
  subject: { namespaces: {} }
  ingress:
    - { name: deny-all, action: Deny, from: [{ namespaces: {} }] }
---
apiVersion: projectcalico.org/v3
kind: HostEndpoint
metadata: { name: node-a-eth0, labels: { host-endpoint: uplink } }
spec: { node: node-a, interfaceName: eth0, expectedIPs: [172.18.0.2] }
---
apiVersion: projectcalico.org/v3
kind: HostEndpoint
metadata: { name: node-b-eth0, labels: { host-endpoint: uplink } }
spec: { node: node-b, interfaceName: eth0 }
---
apiVersion: projectcalico.org/v3
kind: GlobalNetworkPolicy
metadata: { name: block-flood }
spec:
  order: 10
  selector: has(host-endpoint) && zone not in {'lab', 'test'}
  doNotTrack: true
  applyOnForward: true
  ingress:
    - action: Deny
      source: { nets: [203.0.113.0/24] }
    - action: Allow
      protocol: TCP
      source: { nets: [198.51.100.7] }
      destination: { ports: [22, '30000:32767', '443'] }
  egress:
    - { action: Allow, protocol: 17, destination: { ports: [53] } }
---
apiVersion: projectcalico.org/v3
kind: GlobalNetworkPolicy
metadata: { name: nodeports }
spec:
  selector: host-endpoint == 'uplink'
  preDNAT: true
  applyOnForward: true
  types: [Ingress]
  ingress:
    - { action: Allow, protocol: TCP, destination: { ports: [30080] }, metadata: { annotations: { why: demo } } }
---
apiVersion: projectcalico.org/v3
kind: FelixConfiguration
metadata: { name: default }
spec:
  logSeverityScreen: Info
  failsafeInboundHostPorts: [{ protocol: TCP, port: 22 }, { protocol: udp, port: 68 }]
---
apiVersion: projectcalico.org/v3
kind: FelixConfiguration
metadata: { name: node.node-a }
spec:
  failsafeOutboundHostPorts: []
---
apiVersion: projectcalico.org/v3
kind: FelixConfiguration
metadata: { name: node.node-b }
spec:
  failsafeInboundHostPorts: []
";

fn store() -> Cluster {
    let mut cluster = Cluster::new(Settings::new(
        "node-a",
        dataplane_core::Node::new("node-a", []),
    ));
    for text in [NODES, TIERS] {
        for o in parse_manifests(text, "tiers.yaml").unwrap().objects {
            cluster.apply(o).unwrap();
        }
    }
    cluster
}

fn sel(k: &str, v: &str) -> LabelSelector {
    LabelSelector::default().with_label(k, v)
}

#[test]
fn the_tiers_translate() {
    let mut cluster = store();
    let t = cluster.translate(&none).unwrap();
    assert!(t.warnings.is_empty(), "{:?}", t.warnings);
    let s = &t.state;
    dataplane_core::validate(s).unwrap();

    // AdminNetworkPolicy.
    assert_eq!(s.cluster_policies.len(), 1);
    let anp = &s.cluster_policies[0];
    assert_eq!((anp.name.as_str(), anp.priority), ("tenants", 10));
    let ClusterPolicySubject::Pods(pods) = &anp.subject else {
        panic!("{:?}", anp.subject)
    };
    assert_eq!(pods.namespace_selector, sel("tenant", "a"));
    assert_eq!(
        pods.pod_selector.match_expressions,
        [LabelRequirement {
            key: "app".into(),
            operator: SelectorOperator::In,
            values: vec!["web".into()]
        }]
    );
    assert_eq!(anp.ingress[0].action, ClusterAction::Deny);
    assert_eq!(
        anp.ingress[0].peers,
        [ClusterPeer::Namespaces(sel("tenant", "b"))]
    );
    assert_eq!(
        anp.ingress[0].ports,
        [
            ClusterPort::PortNumber {
                protocol: Protocol::Tcp,
                port: 8080
            },
            ClusterPort::NamedPort("http".into()),
            ClusterPort::PortRange {
                protocol: Protocol::Udp,
                start: 5000,
                end: 5100
            },
        ]
    );
    assert_eq!(anp.ingress[1].action, ClusterAction::Pass);
    assert!(
        matches!(&anp.ingress[1].peers[0], ClusterPeer::Pods(p) if p.pod_selector == sel("app", "prom"))
    );
    assert_eq!(anp.egress[0].action, ClusterAction::Allow);
    assert_eq!(
        anp.egress[0].peers,
        [
            ClusterPeer::Nodes(sel("role", "control-plane")),
            ClusterPeer::Networks(vec![
                "192.0.2.0/24".parse().unwrap(),
                "2001:db8::/32".parse().unwrap()
            ]),
        ]
    );

    // BaselineAdminNetworkPolicy.
    let banp = s.baseline_policy.as_ref().unwrap();
    assert_eq!(
        banp.subject,
        ClusterPolicySubject::Namespaces(LabelSelector::default())
    );
    assert_eq!(banp.ingress[0].action, BaselineAction::Deny);

    // Nodes as peers: both, with their labels and InternalIP/ExternalIP addresses.
    let names: Vec<_> = s.nodes.iter().map(|n| n.name.as_str()).collect();
    assert_eq!(names, ["node-a", "node-b"]);
    assert_eq!(
        s.nodes[1].addresses,
        [
            "172.18.0.3".parse::<IpAddr>().unwrap(),
            "198.51.100.3".parse().unwrap()
        ]
    );
    assert_eq!(s.nodes[0].labels["role"], "worker");
}

#[test]
fn the_host_tiers_translate() {
    let mut cluster = store();
    let t = cluster.translate(&none).unwrap();
    let s = &t.state;
    // HostEndpoints: this node's only.
    assert_eq!(s.host_endpoints.len(), 1);
    let hep = &s.host_endpoints[0];
    assert_eq!(
        (
            hep.name.as_str(),
            hep.node.as_str(),
            hep.interface_name.as_str()
        ),
        ("node-a-eth0", "node-a", "eth0")
    );
    assert_eq!(hep.labels["host-endpoint"], "uplink");
    assert_eq!(hep.expected_ips, ["172.18.0.2".parse::<IpAddr>().unwrap()]);

    // GlobalNetworkPolicies.
    let flood = s
        .host_policies
        .iter()
        .find(|p| p.name == "block-flood")
        .unwrap();
    assert_eq!(flood.order, Some(10));
    assert!(flood.do_not_track && flood.apply_on_forward && !flood.pre_dnat);
    assert_eq!(
        flood.selector.match_expressions[0].operator,
        SelectorOperator::Exists
    );
    assert_eq!(
        flood.selector.match_expressions[1].operator,
        SelectorOperator::NotIn
    );
    assert_eq!(flood.selector.match_expressions[1].values, ["lab", "test"]);
    assert_eq!(flood.ingress[0].action, HostAction::Deny);
    assert_eq!(
        flood.ingress[0].source.nets,
        ["203.0.113.0/24".parse().unwrap()]
    );
    assert_eq!(
        flood.ingress[1].source.nets,
        ["198.51.100.7/32".parse().unwrap()]
    );
    assert_eq!(
        flood.ingress[1].destination.ports,
        [
            HostPort::Number(22),
            HostPort::Range(PortRange {
                start: 30000,
                end: 32767
            }),
            HostPort::Number(443)
        ]
    );
    assert_eq!(flood.egress[0].protocol, Some(Protocol::Udp));
    let nodeports = s
        .host_policies
        .iter()
        .find(|p| p.name == "nodeports")
        .unwrap();
    assert!(nodeports.pre_dnat && nodeports.order.is_none());
    assert_eq!(nodeports.types, [PolicyType::Ingress]);
    assert_eq!(nodeports.selector.match_expressions[0].values, ["uplink"]);

    // Failsafe ports: `default`'s inbound, this node's outbound (none); node-b's not read.
    assert_eq!(
        s.failsafe_ports.inbound,
        [FailsafePort::tcp(22), FailsafePort::udp(68)]
    );
    assert!(s.failsafe_ports.outbound.is_empty());
}

#[test]
fn changes_are_incremental_and_equal_a_fresh_translation() {
    let mut cluster = store();
    let first = cluster.translate_changes(&none).unwrap();
    assert_eq!(first.changes.cluster_policies.len(), 1);
    assert!(first.changes.baseline_policy.is_some());
    assert_eq!(first.changes.host_policies.len(), 2);
    assert_eq!(first.changes.nodes.len(), 2);
    assert!(first.changes.failsafe_ports.is_some());

    // A heartbeat of another node is no change at all.
    let beat = NODES.replace("05:00:00Z", "05:01:00Z");
    for o in parse_manifests(&beat, "n.yaml").unwrap().objects {
        assert!(!cluster.apply(o).unwrap());
    }
    // Deleting the baseline and one host policy: only those change.
    assert!(cluster.delete(&ObjectKey::cluster(
        Kind::BaselineAdminNetworkPolicy,
        "default"
    )));
    assert!(cluster.delete(&ObjectKey::cluster(Kind::GlobalNetworkPolicy, "nodeports")));
    let next = cluster.translate_changes(&none).unwrap();
    assert_eq!(next.changes.len(), 2, "{:?}", next.changes);
    assert!(next
        .changes
        .baseline_policy
        .as_ref()
        .unwrap()
        .current
        .is_none());
    assert!(next.changes.host_policies["nodeports"].current.is_none());
    let mut fresh = store();
    fresh.delete(&ObjectKey::cluster(
        Kind::BaselineAdminNetworkPolicy,
        "default",
    ));
    fresh.delete(&ObjectKey::cluster(Kind::GlobalNetworkPolicy, "nodeports"));
    let mut incremental = cluster.translate(&none).unwrap().state;
    let mut expected = fresh.translate(&none).unwrap().state;
    incremental
        .host_policies
        .sort_by(|a, b| a.name.cmp(&b.name));
    expected.host_policies.sort_by(|a, b| a.name.cmp(&b.name));
    assert_eq!(incremental, expected);
}

/// A manifest of `kind` with `spec`, and the field both the parser and the store name.
fn rejected(kind: &str, api: &str, name: &str, spec: &str, field: &str) {
    let text =
        format!("apiVersion: {api}\nkind: {kind}\nmetadata: {{ name: {name} }}\nspec:\n{spec}\n");
    let err = parse_manifests(&text, "bad.yaml").unwrap_err();
    let ManifestError::Object { path, .. } = &err else {
        panic!("{kind} {name}: {err}")
    };
    assert_eq!(path, field, "{err}");
    // The store refuses the same object (a watch delivers it without the parser), and keeps
    // what it had.
    let value: serde_json::Value = serde_saphyr::from_str(&text).unwrap();
    let object: Object = match kind {
        "AdminNetworkPolicy" => {
            serde_json::from_value::<dataplane_kube::anp::AdminNetworkPolicy>(value)
                .unwrap()
                .into()
        }
        "BaselineAdminNetworkPolicy" => {
            serde_json::from_value::<dataplane_kube::anp::BaselineAdminNetworkPolicy>(value)
                .unwrap()
                .into()
        }
        "HostEndpoint" => serde_json::from_value::<dataplane_kube::calico::HostEndpoint>(value)
            .unwrap()
            .into(),
        "GlobalNetworkPolicy" => {
            serde_json::from_value::<dataplane_kube::calico::GlobalNetworkPolicy>(value)
                .unwrap()
                .into()
        }
        "FelixConfiguration" => {
            serde_json::from_value::<dataplane_kube::calico::FelixConfiguration>(value)
                .unwrap()
                .into()
        }
        other => panic!("{other}"),
    };
    let mut cluster = store();
    let before = cluster.translate(&none).unwrap().state;
    match cluster.apply(object) {
        Err(TranslateError::Rejected {
            object, field: f, ..
        }) => {
            assert_eq!((object.name.as_ref(), f.as_str()), (name, field));
        }
        other => panic!("{kind} {name}: {other:?}"),
    }
    assert_eq!(cluster.translate(&none).unwrap().state, before);
}

const ANP: &str = "policy.networking.k8s.io/v1alpha1";
const CALICO: &str = "projectcalico.org/v3";

#[test]
fn unsupported_admin_network_policy_fields_are_rejected() {
    let subject = "  priority: 20\n  subject: { namespaces: {} }\n";
    let ingress =
        |peer: &str| format!("{subject}  ingress: [{{ name: r, action: Deny, from: [{peer}] }}]");
    let egress =
        |peer: &str| format!("{subject}  egress: [{{ name: r, action: Deny, to: [{peer}] }}]");
    for (spec, field) in [
        (ingress("{ namespaces: { sameLabels: [tenant] } }"), "spec.ingress[0].from[0].namespaces.sameLabels"),
        (ingress("{ namespaces: { notSameLabels: [tenant] } }"), "spec.ingress[0].from[0].namespaces.notSameLabels"),
        (ingress("{ namespaces: { namespaceSelector: {} } }"), "spec.ingress[0].from[0].namespaces.namespaceSelector"),
        (ingress("{ pods: { namespaceSelector: { sameLabels: [x] }, podSelector: {} } }"), "spec.ingress[0].from[0].pods.namespaceSelector.sameLabels"),
        (egress("{ domainNames: [example.com] }"), "spec.egress[0].to[0].domainNames"),
        (ingress("{ nodes: {} }"), "spec.ingress[0].from[0].nodes"),
        (ingress("{ networks: [10.0.0.0/8] }"), "spec.ingress[0].from[0].networks"),
        (ingress("{ namespaces: {}, pods: { podSelector: {} } }"), "spec.ingress[0].from[0]"),
        (egress("{ networks: [not-a-cidr] }"), "spec.egress[0].to[0].networks[0]"),
        (format!("{subject}  ingress: [{{ name: r, action: Log, from: [{{ namespaces: {{}} }}] }}]"), "spec.ingress[0].action"),
        (format!("{subject}  ingress: [{{ name: r, action: Deny, to: [{{ namespaces: {{}} }}] }}]"), "spec.ingress[0].to"),
        (format!("{subject}  ingress: [{{ name: r, action: Deny, from: [{{ namespaces: {{}} }}], ports: [{{ namedPort: http, portNumber: {{ port: 80 }} }}] }}]"), "spec.ingress[0].ports[0]"),
        (format!("{subject}  ingress: [{{ name: r, action: Deny, from: [{{ namespaces: {{}} }}], ports: [{{ portRange: {{ start: 90, end: 80 }} }}] }}]"), "spec.ingress[0].ports[0].portRange.end"),
        (format!("{subject}  ingress: [{{ name: r, action: Deny, from: [{{ namespaces: {{}} }}], ports: [{{ portNumber: {{ protocol: ICMP, port: 1 }} }}] }}]"), "spec.ingress[0].ports[0].portNumber.protocol"),
        ("  priority: 1001\n  subject: { namespaces: {} }".to_owned(), "spec.priority"),
        ("  priority: 5\n  subject: {}".to_owned(), "spec.subject"),
    ] {
        rejected("AdminNetworkPolicy", ANP, "bad", &spec, field);
    }
    // The API server would have refused an unknown field too; the parser names it.
    let text = format!("apiVersion: {ANP}\nkind: AdminNetworkPolicy\nmetadata: {{ name: bad }}\nspec:\n  priority: 3\n  subject: {{ namespaces: {{}} }}\n  tier: x\n");
    let err = parse_manifests(&text, "bad.yaml").unwrap_err();
    assert!(err.to_string().contains("unknown field `tier`"), "{err}");
    // A Pass in the baseline, and a baseline not named `default`.
    let spec = "  subject: { namespaces: {} }\n  ingress: [{ name: r, action: Pass, from: [{ namespaces: {} }] }]";
    rejected(
        "BaselineAdminNetworkPolicy",
        ANP,
        "default",
        spec,
        "spec.ingress[0].action",
    );
    rejected(
        "BaselineAdminNetworkPolicy",
        ANP,
        "other",
        "  subject: { namespaces: {} }",
        "metadata.name",
    );
}

#[test]
fn a_second_policy_at_one_priority_is_rejected_by_the_store() {
    let mut cluster = store();
    let text = format!("apiVersion: {ANP}\nkind: AdminNetworkPolicy\nmetadata: {{ name: again }}\nspec: {{ priority: 10, subject: {{ namespaces: {{}} }} }}\n");
    let object = parse_manifests(&text, "again.yaml")
        .unwrap()
        .objects
        .remove(0);
    let err = cluster.apply(object).unwrap_err();
    assert!(
        matches!(&err, TranslateError::Rejected { object, .. } if &*object.name == "again"),
        "{err}"
    );
    assert!(err.to_string().contains("priority"), "{err}");
    // Two HostEndpoints of this node on one interface, likewise.
    let text = format!("apiVersion: {CALICO}\nkind: HostEndpoint\nmetadata: {{ name: twin }}\nspec: {{ node: node-a, interfaceName: eth0 }}\n");
    let object = parse_manifests(&text, "twin.yaml")
        .unwrap()
        .objects
        .remove(0);
    assert!(matches!(
        cluster.apply(object),
        Err(TranslateError::Rejected { .. })
    ));
}

#[test]
fn unsupported_calico_fields_are_rejected() {
    let gnp = |extra: &str| format!("  selector: has(host-endpoint)\n{extra}");
    let ingress = |rule: &str| gnp(&format!("  ingress: [{rule}]"));
    for (spec, field) in [
        ("  selector: all()".to_owned(), "spec.selector"),
        ("  selector: ''".to_owned(), "spec.selector"),
        ("  selector: \"!has(pod)\"".to_owned(), "spec.selector"),
        (
            "  selector: projectcalico.org/namespace == 'default'".to_owned(),
            "spec.selector",
        ),
        (
            "  selector: a == 'b' || c == 'd'".to_owned(),
            "spec.selector",
        ),
        (
            gnp("  namespaceSelector: team == 'a'"),
            "spec.namespaceSelector",
        ),
        (
            gnp("  serviceAccountSelector: role == 'x'"),
            "spec.serviceAccountSelector",
        ),
        (gnp("  tier: security"), "spec.tier"),
        (gnp("  order: 10.5"), "spec.order"),
        (
            gnp("  performanceHints: [AssumeNeededOnEveryNode]"),
            "spec.performanceHints",
        ),
        (ingress("{ action: Log }"), "spec.ingress[0].action"),
        (ingress("{ action: Pass }"), "spec.ingress[0].action"),
        (
            ingress("{ action: Deny, protocol: ICMP }"),
            "spec.ingress[0].protocol",
        ),
        (
            ingress("{ action: Deny, notProtocol: TCP }"),
            "spec.ingress[0].notProtocol",
        ),
        (
            ingress("{ action: Deny, icmp: { type: 8 } }"),
            "spec.ingress[0].icmp",
        ),
        (
            ingress("{ action: Deny, notICMP: { type: 8 } }"),
            "spec.ingress[0].notICMP",
        ),
        (
            ingress("{ action: Deny, ipVersion: 4 }"),
            "spec.ingress[0].ipVersion",
        ),
        (
            ingress("{ action: Deny, http: { methods: [GET] } }"),
            "spec.ingress[0].http",
        ),
        (
            ingress("{ action: Deny, source: { notNets: [10.0.0.0/8] } }"),
            "spec.ingress[0].source.notNets",
        ),
        (
            ingress("{ action: Deny, source: { selector: a == 'b' } }"),
            "spec.ingress[0].source.selector",
        ),
        (
            ingress("{ action: Deny, source: { notSelector: a == 'b' } }"),
            "spec.ingress[0].source.notSelector",
        ),
        (
            ingress("{ action: Deny, source: { namespaceSelector: all() } }"),
            "spec.ingress[0].source.namespaceSelector",
        ),
        (
            ingress("{ action: Deny, source: { serviceAccounts: { names: [x] } } }"),
            "spec.ingress[0].source.serviceAccounts",
        ),
        (
            ingress("{ action: Deny, destination: { services: { name: x, namespace: y } } }"),
            "spec.ingress[0].destination.services",
        ),
        (
            ingress("{ action: Deny, protocol: TCP, destination: { notPorts: [22] } }"),
            "spec.ingress[0].destination.notPorts",
        ),
        (
            ingress("{ action: Deny, protocol: TCP, destination: { ports: [http] } }"),
            "spec.ingress[0].destination.ports[0]",
        ),
        (
            ingress("{ action: Deny, source: { nets: [nowhere] } }"),
            "spec.ingress[0].source.nets[0]",
        ),
    ] {
        rejected("GlobalNetworkPolicy", CALICO, "bad", &spec, field);
    }
}

#[test]
fn unsupported_host_endpoint_and_felix_fields_are_rejected() {
    // An unknown field of a rule is named by the parser.
    let text = format!(
        "apiVersion: {CALICO}\nkind: GlobalNetworkPolicy\nmetadata: {{ name: bad }}\nspec:\n  \
         selector: has(host-endpoint)\n  ingress: [{{ action: Deny, destinationx: {{}} }}]\n"
    );
    let err = parse_manifests(&text, "bad.yaml").unwrap_err();
    assert!(
        matches!(&err, ManifestError::Object { path, .. } if path == "spec.ingress[0].destinationx"),
        "{err}"
    );
    for (spec, field) in [
        ("  node: node-a\n  interfaceName: eth1\n  profiles: [projectcalico-default-allow]", "spec.profiles"),
        ("  node: node-a\n  interfaceName: eth1\n  ports: [{ name: ssh, port: 22, protocol: TCP }]", "spec.ports"),
        ("  node: node-a\n  expectedIPs: [172.18.0.2]", "spec.interfaceName"),
        ("  interfaceName: eth1", "spec.node"),
        ("  node: node-a\n  interfaceName: eth1\n  expectedIPs: [nowhere]", "spec.expectedIPs[0]"),
    ] {
        rejected("HostEndpoint", CALICO, "bad", spec, field);
    }
    for (spec, field) in [
        (
            "  failsafeInboundHostPorts: [{ protocol: TCP, port: 22, net: 10.0.0.0/8 }]",
            "spec.failsafeInboundHostPorts[0].net",
        ),
        (
            "  failsafeOutboundHostPorts: [{ protocol: ICMP, port: 1 }]",
            "spec.failsafeOutboundHostPorts[0].protocol",
        ),
        (
            "  failsafeInboundHostPorts: [{ protocol: TCP, port: 0 }]",
            "spec.failsafeInboundHostPorts[0].port",
        ),
    ] {
        rejected("FelixConfiguration", CALICO, "default", spec, field);
    }
}

#[test]
fn a_host_policy_with_bad_flags_is_rejected_by_validation() {
    // Calico's own rule, checked by dataplane-core: preDNAT takes no egress rules.
    let mut cluster = store();
    let text = format!("apiVersion: {CALICO}\nkind: GlobalNetworkPolicy\nmetadata: {{ name: pre }}\nspec:\n  selector: has(host-endpoint)\n  preDNAT: true\n  applyOnForward: true\n  egress: [{{ action: Deny }}]\n");
    let object = parse_manifests(&text, "pre.yaml")
        .unwrap()
        .objects
        .remove(0);
    assert!(matches!(
        cluster.apply(object),
        Err(TranslateError::Rejected { object, .. }) if object == ObjectKey::cluster(Kind::GlobalNetworkPolicy, "pre")
    ));
}
