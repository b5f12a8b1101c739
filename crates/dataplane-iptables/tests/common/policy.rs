//! NetworkPolicy builders and a fixture with every policy feature, for the iptables policy
//! tests.

use std::collections::BTreeMap;

use dataplane_core::{
    DesiredState, Endpoint, IpBlock, LabelSelector, NamedPort, Namespace, ObjectName, PeerPod,
    Policy, PolicyPeer, PolicyPort, PolicyRule, PolicyType, PortRef, Protocol,
};

use super::{ip, node};

/// A selector of `key=value` pairs (none: every pod).
pub fn labels(pairs: &[(&str, &str)]) -> LabelSelector {
    LabelSelector {
        match_labels: pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect::<BTreeMap<_, _>>(),
        match_expressions: Vec::new(),
    }
}

/// A policy in `namespace` selecting `selector`, isolating `types`, without rules.
pub fn policy(
    namespace: &str,
    name: &str,
    selector: LabelSelector,
    types: &[PolicyType],
) -> Policy {
    Policy {
        name: ObjectName::new(namespace, name),
        pod_selector: selector,
        policy_types: types.to_vec(),
        ingress: Vec::new(),
        egress: Vec::new(),
    }
}

/// A rule allowing `peers` on `ports`.
pub fn rule(peers: Vec<PolicyPeer>, ports: Vec<PolicyPort>) -> PolicyRule {
    PolicyRule { peers, ports }
}

/// Pods of the policy's namespace matching `pairs`.
pub fn pods(pairs: &[(&str, &str)]) -> PolicyPeer {
    PolicyPeer {
        pod_selector: Some(labels(pairs)),
        ..PolicyPeer::default()
    }
}

/// Every pod of the namespaces matching `ns`, or (with `pod`) those pods of them.
pub fn namespaces(ns: &[(&str, &str)], pod: Option<&[(&str, &str)]>) -> PolicyPeer {
    PolicyPeer {
        namespace_selector: Some(labels(ns)),
        pod_selector: pod.map(labels),
        ip_block: None,
    }
}

/// `cidr` without `except`.
pub fn block(cidr: &str, except: &[&str]) -> PolicyPeer {
    PolicyPeer {
        ip_block: Some(IpBlock {
            cidr: cidr.parse().unwrap(),
            except: except.iter().map(|e| e.parse().unwrap()).collect(),
        }),
        ..PolicyPeer::default()
    }
}

/// A numeric port (range with `end`).
pub fn port(protocol: Protocol, port: u16, end: Option<u16>) -> PolicyPort {
    PolicyPort {
        protocol,
        port: Some(PortRef::Number(port)),
        end_port: end,
    }
}

/// A named port.
pub fn named(protocol: Protocol, name: &str) -> PolicyPort {
    PolicyPort {
        protocol,
        port: Some(PortRef::Name(name.to_owned())),
        end_port: None,
    }
}

/// A local endpoint of the fixture node.
pub fn endpoint(namespace: &str, name: &str, ips: &[&str], app: &str) -> Endpoint {
    Endpoint::new(
        ObjectName::new(namespace, name),
        format!("veth-{name}"),
        ips.iter().map(|a| ip(a)),
    )
    .with_label("app", app)
}

/// The fixture node with local endpoints, remote pods, namespaces and policies that use every
/// policy feature: default deny both ways, pod and namespace selectors (alone and together),
/// a named port resolved on ingress and on egress, endPort ranges, ipBlock with excepts (v4
/// and v6), UDP and SCTP ports, and two policies with one peer (one set).
pub fn showcase() -> DesiredState {
    let mut state = DesiredState::new(node());
    let mut web = endpoint("default", "web-0", &["10.244.0.10", "fd00:244::10"], "web");
    web.named_ports = vec![NamedPort::new("http", Protocol::Tcp, 8080)];
    state.endpoints.push(web);
    state
        .endpoints
        .push(endpoint("default", "db-0", &["10.244.0.20"], "db"));
    state
        .endpoints
        .push(endpoint("other", "tool-0", &["10.244.0.30"], "tool"));
    state.pods.push(
        PeerPod::new(ObjectName::new("default", "client-1"), [ip("10.244.1.5")])
            .with_label("app", "client"),
    );
    state.pods.push(
        PeerPod::new(
            ObjectName::new("other", "x-1"),
            [ip("10.244.1.6"), ip("fd00:244:1::6")],
        )
        .with_label("app", "x")
        .with_named_port(NamedPort::new("http", Protocol::Tcp, 9090)),
    );
    state
        .namespaces
        .push(Namespace::new("default").with_label("kubernetes.io/metadata.name", "default"));
    state.namespaces.push(
        Namespace::new("other")
            .with_label("kubernetes.io/metadata.name", "other")
            .with_label("team", "a"),
    );
    state.policies.push(policy(
        "default",
        "deny-all",
        labels(&[]),
        &[PolicyType::Ingress, PolicyType::Egress],
    ));
    let mut web_in = policy(
        "default",
        "web-in",
        labels(&[("app", "web")]),
        &[PolicyType::Ingress],
    );
    web_in.ingress = vec![
        rule(
            vec![pods(&[("app", "client")])],
            vec![named(Protocol::Tcp, "http")],
        ),
        rule(
            vec![namespaces(&[("team", "a")], Some(&[("app", "x")]))],
            vec![
                port(Protocol::Tcp, 80, Some(81)),
                port(Protocol::Udp, 53, None),
            ],
        ),
        rule(
            vec![
                block("192.168.0.0/16", &["192.168.1.0/24", "192.168.2.0/24"]),
                block("fd00:99::/32", &["fd00:99:1::/48"]),
            ],
            vec![port(Protocol::Sctp, 9000, None)],
        ),
    ];
    state.policies.push(web_in);
    // The same peer as web-in's first rule: one set for both.
    let mut db_in = policy("default", "db-in", labels(&[("app", "db")]), &[]);
    db_in.ingress = vec![rule(
        vec![pods(&[("app", "client")]), pods(&[("app", "web")])],
        vec![],
    )];
    state.policies.push(db_in);
    let mut db_out = policy(
        "default",
        "db-out",
        labels(&[("app", "db")]),
        &[PolicyType::Egress],
    );
    db_out.egress = vec![
        rule(vec![block("0.0.0.0/0", &["10.0.0.0/8"])], vec![]),
        rule(
            vec![namespaces(&[("team", "a")], None)],
            vec![named(Protocol::Tcp, "http")],
        ),
    ];
    state.policies.push(db_out);
    state
}
