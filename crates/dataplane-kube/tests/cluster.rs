//! The store's behaviour around the node, late interfaces and change scope.

use std::cell::Cell;
use std::net::IpAddr;

use dataplane_core::ObjectName;
use dataplane_kube::{parse_manifests, Cluster, Kind, Object, ObjectKey, Settings, TranslateError};

fn objects(yaml: &str) -> Vec<Object> {
    parse_manifests(yaml, "test.yaml").unwrap().objects
}

fn one(yaml: &str) -> Object {
    objects(yaml).remove(0)
}

fn node(extra_meta: &str, extra_spec: &str, addresses: &str) -> Object {
    one(&format!(
        "apiVersion: v1\nkind: Node\nmetadata:\n  name: node-a\n  labels: {{topology.kubernetes.io/zone: zone-a}}\n{extra_meta}spec:\n  podCIDRs: [10.244.1.0/24]\n{extra_spec}status:\n  addresses: {addresses}\n"
    ))
}

fn settings() -> Settings {
    Settings::new(
        "node-a",
        dataplane_core::Node::new("node-a", [])
            .with_cluster_cidrs(["10.244.0.0/16".parse().unwrap()])
            .with_service_cidrs(["10.96.0.0/16".parse().unwrap()]),
    )
}

const ADDRESSES: &str = "[{type: InternalIP, address: 172.18.0.2}]";

fn none(_: &ObjectName, _: &[IpAddr]) -> Option<String> {
    None
}

#[test]
fn no_node_no_state() {
    let mut cluster = Cluster::new(settings());
    assert_eq!(
        cluster.translate(&none).unwrap_err(),
        TranslateError::NodeNotFound {
            name: "node-a".into()
        }
    );
    // Another node is not ours.
    cluster
        .apply(one("apiVersion: v1\nkind: Node\nmetadata: {name: node-b}\nstatus: {addresses: [{type: InternalIP, address: 172.18.0.3}]}\n"))
        .unwrap();
    assert!(matches!(
        cluster.translate(&none),
        Err(TranslateError::NodeNotFound { .. })
    ));
    cluster.apply(node("", "", ADDRESSES)).unwrap();
    assert!(cluster.translate(&none).is_ok());
    cluster.delete(&ObjectKey::cluster(Kind::Node, "node-a"));
    assert!(matches!(
        cluster.translate(&none),
        Err(TranslateError::NodeNotFound { .. })
    ));
}

#[test]
fn a_node_without_addresses_uses_the_templates_or_fails() {
    let mut cluster = Cluster::new(settings());
    cluster.apply(node("", "", "[]")).unwrap();
    let err = cluster.translate(&none).unwrap_err();
    assert!(
        matches!(&err, TranslateError::InvalidNode { field, .. } if field == "status.addresses"),
        "{err}"
    );

    let mut with_addresses = settings();
    with_addresses.node.addresses = vec!["172.18.0.9".parse().unwrap()];
    let mut cluster = Cluster::new(with_addresses);
    cluster.apply(node("", "", "[]")).unwrap();
    let t = cluster.translate(&none).unwrap();
    assert_eq!(
        t.state.node.addresses,
        ["172.18.0.9".parse::<IpAddr>().unwrap()]
    );
    assert_eq!(t.warnings.len(), 1, "{:?}", t.warnings);
    assert_eq!(t.warnings[0].to_string(), "Node node-a: status.addresses: no usable InternalIP or ExternalIP; the settings' node addresses are used");
}

#[test]
fn draining_follows_deletion_and_the_autoscaler_taint() {
    let mut cluster = Cluster::new(settings());
    assert!(!cluster.node_draining());
    cluster.apply(node("", "", ADDRESSES)).unwrap();
    assert!(!cluster.node_draining());
    cluster
        .apply(node(
            "",
            "  taints: [{key: ToBeDeletedByClusterAutoscaler, value: '1700000000', effect: NoSchedule}]\n",
            ADDRESSES,
        ))
        .unwrap();
    assert!(cluster.node_draining());
    cluster
        .apply(node(
            "  deletionTimestamp: '2026-12-06T11:00:00Z'\n",
            "",
            ADDRESSES,
        ))
        .unwrap();
    assert!(cluster.node_draining());
}

const LOCAL_POD: &str = "apiVersion: v1\nkind: Pod\nmetadata: {name: web-0, namespace: default, labels: {app: web}}\nspec: {nodeName: node-a, containers: [{name: c}]}\nstatus: {phase: Running, podIPs: [{ip: 10.244.1.5}]}\n";

#[test]
fn a_local_pod_waits_for_its_interface_as_a_peer_and_follows_a_new_one() {
    let mut cluster = Cluster::new(settings());
    cluster.apply(node("", "", ADDRESSES)).unwrap();
    cluster.apply(one(LOCAL_POD)).unwrap();
    let veth: std::cell::RefCell<Option<&str>> = std::cell::RefCell::new(None);
    let calls = Cell::new(0);
    let resolver = |_: &ObjectName, ips: &[IpAddr]| {
        calls.set(calls.get() + 1);
        assert_eq!(ips, ["10.244.1.5".parse::<IpAddr>().unwrap()]);
        veth.borrow().map(str::to_owned)
    };
    let t = cluster.translate(&resolver).unwrap();
    assert!(t.state.endpoints.is_empty());
    // Not an endpoint yet, but a policy peer on this node, so that policies selecting it
    // match its address.
    assert_eq!(t.state.pods.len(), 1);
    assert_eq!(
        t.state.pods[0].ips,
        ["10.244.1.5".parse::<IpAddr>().unwrap()]
    );
    assert_eq!(t.state.pods[0].node_name.as_deref(), Some("node-a"));
    assert_eq!(t.warnings.len(), 1, "{:?}", t.warnings);
    // Asked again at every translation, once, without any change to the pod.
    cluster.translate(&resolver).unwrap();
    assert_eq!(calls.get(), 2);
    *veth.borrow_mut() = Some("veth-web0");
    let t = cluster.translate(&resolver).unwrap();
    assert_eq!(t.state.endpoints[0].interface, "veth-web0");
    assert!(t.state.pods.is_empty());
    assert!(t.warnings.is_empty());
    assert_eq!(calls.get(), 3);
    // Found: still asked once per translation (a sandbox recreated with the same address
    // has a new veth); nothing changes while the answer is the same.
    let c = cluster.translate_changes(&resolver).unwrap();
    assert!(c.changes.is_empty());
    assert_eq!(calls.get(), 4);
    *veth.borrow_mut() = Some("veth-web1");
    let c = cluster.translate_changes(&resolver).unwrap();
    assert_eq!(c.changes.len(), 1);
    assert_eq!(calls.get(), 5);
    assert_eq!(cluster.state().unwrap().endpoints[0].interface, "veth-web1");
    // Gone: a peer again, with the warning.
    *veth.borrow_mut() = None;
    let t = cluster.translate(&resolver).unwrap();
    assert!(t.state.endpoints.is_empty());
    assert_eq!((t.state.pods.len(), t.warnings.len()), (1, 1));
    assert_eq!(calls.get(), 6);
}

#[test]
fn a_node_heartbeat_changes_nothing_and_a_zone_change_moves_topology() {
    let service = "apiVersion: v1\nkind: Service\nmetadata: {name: web, namespace: default}\nspec: {clusterIPs: [10.96.0.20], ports: [{port: 80}]}\n---\napiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata: {name: web-1, namespace: default, labels: {kubernetes.io/service-name: web}}\naddressType: IPv4\nendpoints:\n- {addresses: [10.244.1.5], hints: {forZones: [{name: zone-a}]}}\n- {addresses: [10.244.2.5], hints: {forZones: [{name: zone-b}]}}\nports: [{name: '', port: 80}]\n";
    let mut cluster = Cluster::new(settings());
    cluster.apply(node("", "", ADDRESSES)).unwrap();
    for o in objects(service) {
        cluster.apply(o).unwrap();
    }
    let backends = |c: &mut Cluster| -> Vec<String> {
        c.translate(&none).unwrap().state.services[0]
            .backends
            .iter()
            .map(|b| b.ip.to_string())
            .collect()
    };
    assert_eq!(backends(&mut cluster), ["10.244.1.5"]);
    // An annotation is not even kept; a field no translation reads is a change of the
    // object, not of the translation.
    let annotated = node("  annotations: {beat: '2'}\n", "", ADDRESSES);
    assert!(!cluster.apply(annotated).unwrap());
    let heartbeat = node("", "  unschedulable: false\n", ADDRESSES);
    assert!(cluster.apply(heartbeat).unwrap());
    assert_eq!(backends(&mut cluster), ["10.244.1.5"]);
    let moved = one(&format!(
        "apiVersion: v1\nkind: Node\nmetadata:\n  name: node-a\n  labels: {{topology.kubernetes.io/zone: zone-b}}\nspec:\n  podCIDRs: [10.244.1.0/24]\nstatus:\n  addresses: {ADDRESSES}\n"
    ));
    cluster.apply(moved).unwrap();
    assert_eq!(backends(&mut cluster), ["10.244.2.5"]);
}

#[test]
fn a_slice_relabelled_to_another_service_moves_its_endpoints() {
    let yaml = "apiVersion: v1\nkind: Service\nmetadata: {name: a, namespace: default}\nspec: {clusterIPs: [10.96.0.1], ports: [{port: 80}]}\n---\napiVersion: v1\nkind: Service\nmetadata: {name: b, namespace: default}\nspec: {clusterIPs: [10.96.0.2], ports: [{port: 80}]}\n";
    let slice = |owner: &str| {
        one(&format!("apiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata: {{name: s, namespace: default, labels: {{kubernetes.io/service-name: {owner}}}}}\naddressType: IPv4\nendpoints: [{{addresses: [10.244.2.5]}}]\nports: [{{name: '', port: 80}}]\n"))
    };
    let mut cluster = Cluster::new(settings());
    cluster.apply(node("", "", ADDRESSES)).unwrap();
    for o in objects(yaml) {
        cluster.apply(o).unwrap();
    }
    cluster.apply(slice("a")).unwrap();
    let counts = |c: &mut Cluster| -> Vec<usize> {
        c.translate(&none)
            .unwrap()
            .state
            .services
            .iter()
            .map(|s| s.backends.len())
            .collect()
    };
    assert_eq!(counts(&mut cluster), [1, 0]);
    cluster.apply(slice("b")).unwrap();
    assert_eq!(counts(&mut cluster), [0, 1]);
    cluster.delete(&ObjectKey::namespaced(Kind::EndpointSlice, "default", "s"));
    assert_eq!(counts(&mut cluster), [0, 0]);
}

#[test]
fn what_no_translation_reads_is_not_kept_and_changes_nothing() {
    let pod = |ready: &str| {
        one(&format!(
            "apiVersion: v1\nkind: Pod\nmetadata:\n  name: web-0\n  namespace: default\n  managedFields: [{{manager: kubelet, operation: Update}}]\n  annotations: {{kubectl.kubernetes.io/last-applied-configuration: '{{}}', keep: me}}\nspec:\n  nodeName: node-b\n  containers: [{{name: c, image: nginx, env: [{{name: A, value: b}}], ports: [{{name: http, containerPort: 80}}]}}]\nstatus:\n  phase: Running\n  conditions: [{{type: Ready, status: '{ready}'}}]\n  podIPs: [{{ip: 10.244.2.5}}]\n"
        ))
    };
    let mut cluster = Cluster::new(settings());
    assert!(cluster.apply(pod("True")).unwrap());
    assert!(
        !cluster.apply(pod("False")).unwrap(),
        "a readiness flip is no change to the translation"
    );
    assert!(cluster.is_current(&pod("False")));
    // A new resourceVersion, uid, image or annotation is no change either; a new address is.
    let mut other = pod("True");
    let Object::Pod(p) = &mut other else {
        unreachable!()
    };
    p.metadata.resource_version = Some("42".into());
    p.metadata.uid = Some("u".into());
    p.metadata.annotations = Some([("other".to_owned(), "x".to_owned())].into());
    p.spec.as_mut().unwrap().containers[0].image = Some("nginx:2".into());
    assert!(cluster.is_current(&other));
    assert!(!cluster.apply(other).unwrap());
    let moved = one(
        "apiVersion: v1\nkind: Pod\nmetadata: {name: web-0, namespace: default}\nspec: {nodeName: node-b, containers: [{name: c, ports: [{name: http, containerPort: 80}]}]}\nstatus: {phase: Running, podIPs: [{ip: 10.244.2.6}]}\n",
    );
    assert!(!cluster.is_current(&moved));
    assert!(cluster.apply(moved).unwrap());
    assert!(!cluster.is_current(&pod("True")));
    assert!(cluster.apply(pod("True")).unwrap());
    assert!(!cluster.is_current(&one(
        "apiVersion: v1\nkind: Pod\nmetadata: {name: web-1, namespace: default}\n"
    )));
    cluster.apply(node("", "", ADDRESSES)).unwrap();
    let t = cluster.translate(&none).unwrap();
    assert_eq!(t.state.pods[0].named_ports[0].port, 80);
}

#[test]
fn a_service_spelling_out_defaults_or_ip_families_is_no_change() {
    // As `kubectl get -o yaml` prints a Service: every default written out.
    let full = |ip: &str, extra: &str| {
        one(&format!(
            "apiVersion: v1\nkind: Service\nmetadata:\n  name: web\n  namespace: default\n  uid: u1\n  resourceVersion: '7'\n  labels: {{app: web}}\nspec:\n  type: ClusterIP\n  clusterIP: {ip}\n  clusterIPs: [{ip}]\n  ipFamilies: [IPv4]\n  ipFamilyPolicy: SingleStack\n  internalTrafficPolicy: Cluster\n  sessionAffinity: None\n  selector: {{app: web}}\n  ports: [{{name: http, port: 80, protocol: TCP, targetPort: 8080, appProtocol: http}}]\n{extra}status:\n  loadBalancer: {{}}\n"
        ))
    };
    let short = one(
        "apiVersion: v1\nkind: Service\nmetadata: {name: web, namespace: default}\nspec:\n  clusterIPs: [10.96.0.20]\n  ports: [{name: http, port: 80, targetPort: 8080}]\n",
    );
    let mut cluster = Cluster::new(settings());
    cluster.apply(node("", "", ADDRESSES)).unwrap();
    assert!(cluster.apply(full("10.96.0.20", "")).unwrap());
    let before = cluster.translate(&none).unwrap().state;
    assert!(cluster.is_current(&short));
    assert!(!cluster.apply(short).unwrap());
    assert_eq!(cluster.translate(&none).unwrap().state, before);
    // What the translation reads is still a change: the address, the affinity's timeout.
    assert!(!cluster.is_current(&full("10.96.0.21", "")));
    let affinity = "  sessionAffinityConfig: {clientIP: {timeoutSeconds: 60}}\n";
    assert!(
        cluster.is_current(&full("10.96.0.20", affinity)),
        "read with ClientIP only"
    );
    let client_ip = full("10.96.0.20", affinity);
    let Object::Service(mut svc) = client_ip else {
        unreachable!()
    };
    svc.spec.as_mut().unwrap().session_affinity = Some("ClientIP".into());
    assert!(cluster.apply(Object::Service(svc)).unwrap());
    let t = cluster.translate(&none).unwrap();
    assert_eq!(
        t.state.services[0].session_affinity,
        dataplane_core::SessionAffinity::ClientIp {
            timeout_seconds: 60
        }
    );
    // A headless Service (clusterIP None next to a list) stays headless.
    let headless = one(
        "apiVersion: v1\nkind: Service\nmetadata: {name: web, namespace: default}\nspec:\n  clusterIP: None\n  clusterIPs: [None]\n  ports: [{name: http, port: 80}]\n",
    );
    assert!(cluster.apply(headless).unwrap());
    assert!(cluster.translate(&none).unwrap().state.services.is_empty());
}

#[test]
fn translate_in_place_lends_the_state_and_takes_the_changes() {
    let mut cluster = Cluster::new(settings());
    assert!(matches!(
        cluster.translate_in_place(&none),
        Err(TranslateError::NodeNotFound { .. })
    ));
    assert!(cluster.state().is_none());
    cluster.apply(node("", "", ADDRESSES)).unwrap();
    for o in objects("apiVersion: v1\nkind: Service\nmetadata: {name: web, namespace: default}\nspec: {clusterIPs: [10.96.0.20], ports: [{port: 80}]}\n") {
        cluster.apply(o).unwrap();
    }
    assert!(cluster.translate_in_place(&none).unwrap().is_empty());
    assert_eq!(cluster.state().unwrap().services.len(), 1);
    // The changes up to it are taken: the next changes are only what came after.
    assert!(cluster.translate_changes(&none).unwrap().changes.is_empty());
    cluster.delete(&ObjectKey::namespaced(Kind::Service, "default", "web"));
    let c = cluster.translate_changes(&none).unwrap();
    assert_eq!(c.changes.services.len(), 1);
    assert!(cluster.state().unwrap().services.is_empty());
}

/// Service `default/web` at `cluster_ip` with `ports` (a YAML flow list).
fn web_service(cluster_ip: &str, ports: &str) -> Object {
    one(&format!("apiVersion: v1\nkind: Service\nmetadata: {{name: web, namespace: default}}\nspec:\n  clusterIP: {cluster_ip}\n  ports: {ports}\n"))
}

/// EndpointSlice `name` of `default/web`: `ips` (on node-a), with the ports `port_names`, each
/// at `number`.
fn web_slice(name: &str, ips: &[&str], port_names: &[&str], number: u16) -> Object {
    let endpoints: Vec<String> = ips
        .iter()
        .map(|ip| format!("{{addresses: [{ip}], nodeName: node-a}}"))
        .collect();
    let ports: Vec<String> = port_names
        .iter()
        .map(|p| format!("{{name: {p}, port: {number}, protocol: TCP}}"))
        .collect();
    one(&format!(
        "apiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata: {{name: {name}, namespace: default, labels: {{kubernetes.io/service-name: web}}}}\naddressType: IPv4\nendpoints: [{}]\nports: [{}]\n",
        endpoints.join(", "),
        ports.join(", ")
    ))
}

const HTTP: &str = "[{name: http, port: 80, protocol: TCP, targetPort: http}]";

/// The backends of single-port model service `s` as `address:target port`.
fn targets(s: &dataplane_core::Service) -> Vec<String> {
    s.backends
        .iter()
        .map(|b| b.target(&s.ports[0]).to_string())
        .collect()
}

/// A rolling update moving the named port `http` from 8080 to 9090: the old pods' slice says
/// 8080, the new ones' 9090. kube-proxy DNATs each endpoint to its own number
/// (`endpointslicecache.go`: `addEndpoints`); so does the translation: one model service, every
/// endpoint in it, the port's number the most common one, the others on their backends.
#[test]
fn a_named_port_on_two_numbers_keeps_every_endpoint_with_its_own_number() {
    let mut cluster = Cluster::new(settings());
    cluster.apply(node("", "", ADDRESSES)).unwrap();
    cluster.apply(web_service("10.96.0.20", HTTP)).unwrap();
    let old = ["10.244.1.10", "10.244.1.11"];
    cluster
        .apply(web_slice("web-old", &old, &["http"], 8080))
        .unwrap();
    cluster
        .apply(web_slice("web-new", &["10.244.2.10"], &["http"], 9090))
        .unwrap();
    let t = cluster.translate(&none).unwrap();
    assert!(t.warnings.is_empty(), "{:?}", t.warnings);
    assert_eq!(t.state.services.len(), 1, "{:?}", t.state.services);
    let web = &t.state.services[0];
    assert_eq!(web.name, ObjectName::new("default", "web"));
    assert_eq!(web.ports.len(), 1);
    let port = &web.ports[0];
    assert_eq!((port.port, port.target_port), (80, 8080));
    assert_eq!(
        targets(web),
        ["10.244.1.10:8080", "10.244.1.11:8080", "10.244.2.10:9090"]
    );
    // Only the backend off the port's number carries its own.
    let own: Vec<Option<u16>> = web.backends.iter().map(|b| b.port).collect();
    assert_eq!(own, [None, None, Some(9090)]);

    // The new ReplicaSet takes over: 9090 becomes the port's number, 8080 the odd one out.
    let new = ["10.244.2.10", "10.244.2.11", "10.244.2.12"];
    cluster
        .apply(web_slice("web-new", &new, &["http"], 9090))
        .unwrap();
    let t = cluster.translate(&none).unwrap();
    let web = &t.state.services[0];
    assert_eq!(web.ports[0].target_port, 9090);
    let own: Vec<Option<u16>> = web.backends.iter().map(|b| b.port).collect();
    assert_eq!(own, [Some(8080), Some(8080), None, None, None]);
    dataplane_core::validate(&t.state).unwrap();
}

/// Two ports resolving to the same numbers on the same pods, some of them off the common
/// number: each port is a model service of its own (a backend's own number needs a
/// single-port service), and nothing is left out.
#[test]
fn ports_with_backends_of_their_own_numbers_are_not_grouped() {
    let mut cluster = Cluster::new(settings());
    cluster.apply(node("", "", ADDRESSES)).unwrap();
    cluster
        .apply(web_service(
            "10.96.0.21",
            "[{name: http, port: 80, protocol: TCP, targetPort: http}, {name: alt, port: 8000, protocol: TCP, targetPort: http}]",
        ))
        .unwrap();
    for (name, ip, number) in [("a", "10.244.1.10", 8080), ("b", "10.244.2.10", 9090)] {
        cluster
            .apply(web_slice(name, &[ip], &["http", "alt"], number))
            .unwrap();
    }
    let t = cluster.translate(&none).unwrap();
    assert!(t.warnings.is_empty(), "{:?}", t.warnings);
    let names: Vec<String> = t
        .state
        .services
        .iter()
        .map(|s| s.name.to_string())
        .collect();
    assert_eq!(names, ["default/0-web", "default/1-web"]);
    for s in &t.state.services {
        assert_eq!(s.ports.len(), 1);
        assert_eq!(targets(s), ["10.244.1.10:8080", "10.244.2.10:9090"]);
    }
    dataplane_core::validate(&t.state).unwrap();
}

/// One address listed with two numbers for one port (two slices disagreeing about a pod):
/// kube-proxy would make two endpoints of it; the model holds one backend per address, so it
/// keeps the port's number and says so.
#[test]
fn an_address_with_two_numbers_keeps_the_ports_and_warns() {
    let mut cluster = Cluster::new(settings());
    cluster.apply(node("", "", ADDRESSES)).unwrap();
    cluster.apply(web_service("10.96.0.22", HTTP)).unwrap();
    let slices: [(&str, &[&str], u16); 2] = [
        ("web-a", &["10.244.1.10"], 8080),
        ("web-b", &["10.244.1.10", "10.244.1.11"], 9090),
    ];
    for (name, ips, number) in slices {
        cluster
            .apply(web_slice(name, ips, &["http"], number))
            .unwrap();
    }
    let t = cluster.translate(&none).unwrap();
    let web = &t.state.services[0];
    assert_eq!(web.ports[0].target_port, 9090);
    assert_eq!(targets(web), ["10.244.1.10:9090", "10.244.1.11:9090"]);
    let warnings: Vec<String> = t.warnings.iter().map(ToString::to_string).collect();
    assert_eq!(
        warnings,
        ["Service default/web: spec.ports[0].targetPort: service default/web port http: an endpoint address has several numbers, the model keeps one per address: 10.244.1.10 (8080 and 9090; 9090 is used)"]
    );
}
