//! The model's constructors: their defaults are the file format's (and Kubernetes'), so a
//! state built in code equals the same state read from a document that leaves them out.

use std::net::IpAddr;

use dataplane_core::{
    from_yaml, to_yaml, validate, Backend, BackendSelection, DesiredState, Endpoint, ExternalMode,
    Node, ObjectName, Protocol, Service, ServicePort, SessionAffinity, TrafficPolicy,
    DEFAULT_AFFINITY_TIMEOUT_SECONDS, DEFAULT_UPLINK,
};

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

#[test]
fn a_node_from_new_equals_a_document_that_leaves_the_defaults_out() {
    let read = from_yaml(
        "apiVersion: dataplane.rs/v1alpha1\nkind: DesiredState\n\
         node: { name: node-a, addresses: [172.18.0.10], interfaces: { uplink: eth0 } }\n",
    )
    .unwrap();
    let built = DesiredState::new(Node::new("node-a", [ip("172.18.0.10")]));
    assert_eq!(built, read);
    assert_eq!(built.node.interfaces.uplink, DEFAULT_UPLINK);
    validate(&built).unwrap();
}

#[test]
fn a_service_from_the_constructors_equals_its_document() {
    let read = from_yaml(
        "apiVersion: dataplane.rs/v1alpha1\nkind: DesiredState\n\
         node: { name: node-a, addresses: [172.18.0.10], interfaces: { uplink: ens5 }, \
                 podCIDRs: [10.244.1.0/24], clusterCIDRs: [10.244.0.0/16], \
                 serviceCIDRs: [10.96.0.0/12], mtu: 9000, externalMode: Dsr, \
                 nodePortRange: { start: 30000, end: 31000 } }\n\
         services:\n\
         - namespace: default\n  name: web\n  clusterIPs: [10.96.0.20]\n  \
           loadBalancerIPs: [192.0.2.10]\n  externalIPs: [198.51.100.7]\n  \
           ports:\n  - { name: http, protocol: TCP, port: 80, targetPort: 8080, nodePort: 30080 }\n  \
           - { name: dns, protocol: UDP, port: 53, targetPort: 5353 }\n  \
           - { name: sig, protocol: SCTP, port: 9, targetPort: 9 }\n  \
           backends:\n  - { ip: 10.244.1.5, nodeName: node-a, zone: z1, weight: 2 }\n  \
           - { ip: 10.244.2.7, nodeName: node-b, ready: false, terminating: true }\n  \
           sessionAffinity: { type: ClientIP, timeoutSeconds: 10800 }\n  \
           externalTrafficPolicy: Local\n  internalTrafficPolicy: Local\n  \
           backendSelection: Maglev\n  externalMode: Snat\n\
         endpoints:\n\
         - { namespace: default, name: web-0, interface: veth0, ips: [10.244.1.5], labels: { app: web } }\n",
    )
    .unwrap();
    let node = Node::new("node-a", [ip("172.18.0.10")])
        .with_uplink("ens5")
        .with_pod_cidrs(["10.244.1.0/24".parse().unwrap()])
        .with_cluster_cidrs(["10.244.0.0/16".parse().unwrap()])
        .with_service_cidrs(["10.96.0.0/12".parse().unwrap()])
        .with_mtu(9000)
        .with_external_mode(ExternalMode::Dsr)
        .with_node_port_range(30000, 31000);
    let web = Service::cluster_ip(
        ObjectName::new("default", "web"),
        ip("10.96.0.20"),
        [ServicePort::tcp(80, 8080)
            .named("http")
            .with_node_port(30080)],
    )
    .with_load_balancer_ip(ip("192.0.2.10"))
    .with_external_ip(ip("198.51.100.7"))
    .with_port(ServicePort::udp(53, 5353).named("dns"))
    .with_ports([ServicePort::sctp(9, 9).named("sig")])
    .with_backend(
        Backend::new(ip("10.244.1.5"))
            .on_node("node-a")
            .in_zone("z1")
            .with_weight(2),
    )
    .with_backends([Backend::new(ip("10.244.2.7"))
        .on_node("node-b")
        .terminating()])
    .with_session_affinity(SessionAffinity::client_ip())
    .with_external_traffic_policy(TrafficPolicy::Local)
    .with_internal_traffic_policy(TrafficPolicy::Local)
    .with_backend_selection(BackendSelection::Maglev)
    .with_external_mode(ExternalMode::Snat);
    let pod = Endpoint::new(
        ObjectName::new("default", "web-0"),
        "veth0",
        [ip("10.244.1.5")],
    )
    .with_label("app", "web");
    let built = DesiredState::new(node).with_service(web).with_endpoint(pod);
    assert_eq!(built, read);
    validate(&built).unwrap();
    assert_eq!(
        SessionAffinity::client_ip(),
        SessionAffinity::ClientIp {
            timeout_seconds: DEFAULT_AFFINITY_TIMEOUT_SECONDS
        }
    );
    assert_eq!(built.services[0].ports[1].protocol, Protocol::Udp);
}

#[test]
fn protocols_convert_both_ways() {
    use dataplane_core::Protocol;
    for p in Protocol::ALL {
        assert_eq!(Protocol::from_number(p.number()), Some(p));
        assert_eq!(Protocol::from_name(&p.to_string()), Some(p));
        assert_eq!(Protocol::from_name(&p.to_string().to_lowercase()), Some(p));
    }
    assert_eq!(Protocol::from_number(1), None);
    assert_eq!(Protocol::from_name("icmp"), None);
}

/// Found by the `render_nft` fuzz target: two endpoints of one namespace (without a
/// `Namespace` object) with different `namespaceLabels` made the namespace's labels, and so
/// the members of a policy's peer sets, depend on the order of the endpoints. They are the
/// labels of the endpoint first by name, whatever the order.
#[test]
fn namespace_labels_do_not_depend_on_the_order_of_the_endpoints() {
    let pod = |name: &str, addr: &str, env: &str| {
        let mut e = Endpoint::new(
            ObjectName::new("team", name),
            format!("veth-{name}"),
            [ip(addr)],
        );
        e.namespace_labels.insert("env".into(), env.into());
        e
    };
    let mut state = DesiredState::new(Node::new("node-a", [ip("172.18.0.10")]))
        .with_endpoint(pod("b", "10.244.0.2", "prod"))
        .with_endpoint(pod("a", "10.244.0.1", "dev"));
    // Ingress to every pod of `team` from the namespaces labelled env=dev: `team` is one of
    // them by the first endpoint's labels, not by the second's.
    let from_dev = dataplane_core::PolicyPeer {
        namespace_selector: Some(dataplane_core::LabelSelector {
            match_labels: [("env".to_owned(), "dev".to_owned())].into(),
            match_expressions: vec![],
        }),
        ..Default::default()
    };
    state = state.with_policy(dataplane_core::Policy {
        name: ObjectName::new("team", "from-dev"),
        pod_selector: dataplane_core::LabelSelector::default(),
        policy_types: vec![dataplane_core::PolicyType::Ingress],
        ingress: vec![dataplane_core::PolicyRule {
            peers: vec![from_dev],
            ports: vec![],
        }],
        egress: vec![],
    });
    validate(&state).unwrap();
    let labels = state.namespace_labels("team");
    assert_eq!(labels.get("env").map(String::as_str), Some("dev"));
    state.endpoints.reverse();
    assert_eq!(state.namespace_labels("team"), labels);
    assert_eq!(
        dataplane_core::compile(&state),
        dataplane_core::compile(&{
            let mut r = state.clone();
            r.endpoints.reverse();
            r
        })
    );
}

/// A backend's own target port reads as `port`, is written only when set (documents without
/// it are unchanged), and `with_port` builds the same.
#[test]
fn a_backends_own_port_reads_and_writes_as_port() {
    let doc = "apiVersion: dataplane.rs/v1alpha1\nkind: DesiredState\n\
               node: { name: node-a, addresses: [172.18.0.10], interfaces: { uplink: eth0 } }\n\
               services:\n\
               - namespace: default\n  name: web\n  clusterIPs: [10.96.0.20]\n  \
                 ports: [{ name: http, protocol: TCP, port: 80, targetPort: 8080 }]\n  \
                 backends: [{ ip: 10.244.1.5 }, { ip: 10.244.2.7, port: 9090 }]\n";
    let read = from_yaml(doc).unwrap();
    let built = DesiredState::new(Node::new("node-a", [ip("172.18.0.10")])).with_service(
        Service::cluster_ip(
            ObjectName::new("default", "web"),
            ip("10.96.0.20"),
            [ServicePort::tcp(80, 8080).named("http")],
        )
        .with_backend(Backend::new(ip("10.244.1.5")))
        .with_backend(Backend::new(ip("10.244.2.7")).with_port(9090)),
    );
    assert_eq!(read, built);
    validate(&read).unwrap();
    let web = &read.services[0];
    let targets: Vec<String> = web
        .backends
        .iter()
        .map(|b| b.target(&web.ports[0]).to_string())
        .collect();
    assert_eq!(targets, ["10.244.1.5:8080", "10.244.2.7:9090"]);
    let json = serde_json::to_value(&web.backends).unwrap();
    assert_eq!(json[0].get("port"), None, "{json}");
    assert_eq!(json[1]["port"], 9090, "{json}");
    assert_eq!(from_yaml(&to_yaml(&read).unwrap()).unwrap(), read);
}

/// A backend is 48 bytes (a million of them at 100k services x 10): its node name and zone
/// are thin shared strings, 8 bytes each with `Option` (issue 24, the eBPF peak RSS).
#[test]
fn backend_layout_stays_small() {
    use dataplane_core::{Backend, ThinStr};
    assert_eq!(std::mem::size_of::<Option<ThinStr>>(), 8);
    assert_eq!(std::mem::size_of::<Backend>(), 48);
}

/// A thin shared string reads, compares and serializes as the plain string it holds, and
/// a clone shares the text.
#[test]
fn thin_str_is_a_plain_string_outside() {
    use dataplane_core::{Backend, ThinStr};
    let name = ThinStr::from("node-a");
    let copy = name.clone();
    assert!(
        std::ptr::eq(name.as_str(), copy.as_str()),
        "a clone copies the text"
    );
    assert_eq!(name, "node-a");
    assert_eq!("node-a", name);
    assert_eq!(name, String::from("node-a"));
    assert_eq!(&*name, "node-a");
    assert_eq!(name.to_string(), "node-a");
    assert_eq!(format!("{name:?}"), "\"node-a\"");
    assert_eq!(ThinStr::from(std::sync::Arc::<str>::from("node-a")), name);
    let mut sorted = vec![ThinStr::from("b"), ThinStr::from("a")];
    sorted.sort();
    assert_eq!(sorted, ["a", "b"]);
    let b = Backend::new("10.244.1.5".parse().unwrap())
        .on_node(copy)
        .in_zone("zone-1");
    let json = serde_json::to_value(&b).unwrap();
    assert_eq!(json["nodeName"], "node-a");
    assert_eq!(json["zone"], "zone-1");
    let back: Backend = serde_json::from_value(json).unwrap();
    assert_eq!(back, b);
    assert_eq!(back.node_name.as_deref(), Some("node-a"));
    let with_none: Backend = serde_json::from_str(r#"{"ip": "10.244.1.6"}"#).unwrap();
    assert_eq!(with_none.node_name, None);
    assert!(!serde_json::to_string(&with_none)
        .unwrap()
        .contains("nodeName"));
}
