//! L2 announcements: the announcing-node annotation (a manifest directory's configured
//! announcer) sets `l2_announce` on the node it names only; an election's verdict
//! (`Cluster::set_l2_announced`) flips one Service at a time, as a one-service change set;
//! and the candidates an election may compete for.

use std::net::IpAddr;

use dataplane_core::ObjectName;
use dataplane_kube::{
    parse_manifests, Cluster, Kind, L2Announcements, Object, ObjectKey, Settings,
    ANNOTATION_L2_ANNOUNCE_NODE,
};

fn objects(yaml: &str) -> Vec<Object> {
    parse_manifests(yaml, "test.yaml").unwrap().objects
}

fn none(_: &ObjectName, _: &[IpAddr]) -> Option<String> {
    None
}

const NODES: &str = "
apiVersion: v1
kind: Node
metadata: {name: node-a}
status: {addresses: [{type: InternalIP, address: 172.18.0.2}]}
---
apiVersion: v1
kind: Node
metadata: {name: node-b}
status: {addresses: [{type: InternalIP, address: 172.18.0.3}]}
";

/// A LoadBalancer Service `name` with ingress IP `lb`, an ExternalIP-only one if `lb` is
/// empty, `annotation` (the announcing node, if any), `policy` its externalTrafficPolicy.
fn service(
    name: &str,
    cluster_ip: &str,
    lb: &str,
    annotation: Option<&str>,
    policy: &str,
) -> String {
    let annotations = annotation.map_or_else(String::new, |node| {
        format!("  annotations: {{{ANNOTATION_L2_ANNOUNCE_NODE}: {node}}}\n")
    });
    let (type_, status) = if lb.is_empty() {
        ("ClusterIP", String::new())
    } else {
        (
            "LoadBalancer",
            format!("status: {{loadBalancer: {{ingress: [{{ip: {lb}}}]}}}}\n"),
        )
    };
    let external = if lb.is_empty() {
        "  externalIPs: [172.18.0.201]\n"
    } else {
        ""
    };
    format!(
        "apiVersion: v1\nkind: Service\nmetadata:\n  name: {name}\n  namespace: default\n{annotations}spec:\n  type: {type_}\n  clusterIPs: [{cluster_ip}]\n  externalTrafficPolicy: {policy}\n{external}  ports: [{{name: http, port: 80, targetPort: 8080}}]\n{status}"
    )
}

/// The endpoints of Service `name`: one on `node`.
fn slice(name: &str, ip: &str, node: &str) -> String {
    format!(
        "apiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata:\n  name: {name}-1\n  namespace: default\n  labels: {{kubernetes.io/service-name: {name}}}\naddressType: IPv4\nendpoints: [{{addresses: [{ip}], nodeName: {node}}}]\nports: [{{name: http, port: 8080}}]\n"
    )
}

fn store(node: &str, mode: L2Announcements, yaml: &str) -> Cluster {
    let template = dataplane_core::Node::new(node, [])
        .with_cluster_cidrs(["10.244.0.0/16".parse().unwrap()])
        .with_service_cidrs(["10.96.0.0/12".parse().unwrap()]);
    let mut cluster = Cluster::new(Settings::new(node, template));
    cluster.set_l2_announcements(mode);
    for o in objects(NODES).into_iter().chain(objects(yaml)) {
        cluster.apply(o).unwrap();
    }
    cluster
}

fn announced(cluster: &mut Cluster) -> Vec<String> {
    let t = cluster.translate(&none).unwrap();
    dataplane_core::validate(&t.state).unwrap();
    t.state
        .services
        .iter()
        .filter(|s| s.l2_announce)
        .map(|s| s.name.name.to_string())
        .collect()
}

fn key(name: &str) -> ObjectKey {
    ObjectKey::namespaced(Kind::Service, "default", name)
}

#[test]
fn the_annotation_announces_on_the_node_it_names_only() {
    let yaml = [
        service(
            "web",
            "10.96.0.10",
            "172.18.0.200",
            Some("node-a"),
            "Cluster",
        ),
        service(
            "api",
            "10.96.0.11",
            "172.18.0.210",
            Some("node-b"),
            "Cluster",
        ),
        service("ext", "10.96.0.12", "", Some("node-a"), "Cluster"),
        service("plain", "10.96.0.13", "172.18.0.220", None, "Cluster"),
    ]
    .join("---\n");
    let mut a = store("node-a", L2Announcements::Annotated, &yaml);
    assert_eq!(announced(&mut a), ["ext", "web"], "node-a: its two");
    let mut b = store("node-b", L2Announcements::Annotated, &yaml);
    assert_eq!(announced(&mut b), ["api"], "node-b: its one");
    // Off: nothing, and the service naming this node says why.
    let mut off = store("node-a", L2Announcements::Off, &yaml);
    let t = off.translate(&none).unwrap();
    assert!(t.state.services.iter().all(|s| !s.l2_announce));
    let field = format!("metadata.annotations[{ANNOTATION_L2_ANNOUNCE_NODE}]");
    let off_warnings: Vec<_> = t.warnings.iter().filter(|w| w.field == field).collect();
    assert_eq!(off_warnings.len(), 2, "{off_warnings:?}");
    assert!(off_warnings[0].message.contains("L2 announcements are off"));
    // Elected: the annotation is not read.
    let mut elected = store("node-a", L2Announcements::Elected, &yaml);
    assert!(announced(&mut elected).is_empty());
}

#[test]
fn a_bad_annotation_or_nothing_to_announce_is_a_warning() {
    let yaml = [
        service("bad", "10.96.0.10", "172.18.0.200", Some("Node_A"), "Cluster"),
        // A ClusterIP service without ExternalIPs has nothing to announce.
        "apiVersion: v1\nkind: Service\nmetadata:\n  name: inner\n  namespace: default\n  annotations: {dataplane.io/l2-announce-node: node-a}\nspec:\n  clusterIPs: [10.96.0.11]\n  ports: [{port: 80}]\n".to_owned(),
        // An ingress IP of a family the service has no ClusterIP of is not served.
        service("v6lb", "10.96.0.12", "fd00:18::c8", Some("node-a"), "Cluster"),
    ]
    .join("---\n");
    let mut a = store("node-a", L2Announcements::Annotated, &yaml);
    let t = a.translate(&none).unwrap();
    dataplane_core::validate(&t.state).unwrap();
    assert!(t.state.services.iter().all(|s| !s.l2_announce));
    let field = format!("metadata.annotations[{ANNOTATION_L2_ANNOUNCE_NODE}]");
    let by = |name: &str| {
        t.warnings
            .iter()
            .find(|w| w.object == key(name) && w.field == field)
            .unwrap_or_else(|| panic!("no warning for {name}: {:?}", t.warnings))
            .message
            .clone()
    };
    assert!(
        by("bad").contains("\"Node_A\" is not a node name"),
        "{}",
        by("bad")
    );
    assert!(
        by("inner").contains("nothing to announce") || by("inner").contains("no LoadBalancer IP")
    );
    assert!(by("v6lb").contains("no LoadBalancer IP"));
}

#[test]
fn an_elected_service_is_a_one_service_change() {
    let yaml = [
        service("web", "10.96.0.10", "172.18.0.200", None, "Cluster"),
        service("api", "10.96.0.11", "172.18.0.210", None, "Cluster"),
    ]
    .join("---\n");
    let mut a = store("node-a", L2Announcements::Elected, &yaml);
    a.translate_in_place(&none).unwrap();
    assert!(a.state().unwrap().services.iter().all(|s| !s.l2_announce));

    assert!(a.set_l2_announced(&key("web"), true));
    assert!(
        !a.set_l2_announced(&key("web"), true),
        "no change the second time"
    );
    let c = a.translate_changes(&none).unwrap();
    assert_eq!(c.changes.len(), 1, "{:?}", c.changes);
    let change = &c.changes.services[&ObjectName::new("default", "web")];
    let (old, new) = (
        change.previous.as_ref().unwrap(),
        change.current.as_ref().unwrap(),
    );
    assert!(!old.l2_announce && new.l2_announce);
    let mut expected = old.clone();
    expected.l2_announce = true;
    assert_eq!(*new, expected, "only l2_announce changed");
    dataplane_core::validate(a.state().unwrap()).unwrap();
    assert_eq!(
        dataplane_core::l2::announced_addresses(a.state().unwrap()),
        ["172.18.0.200".parse::<IpAddr>().unwrap()].into()
    );

    // Lost: one change back.
    assert!(a.set_l2_announced(&key("web"), false));
    let c = a.translate_changes(&none).unwrap();
    assert_eq!(c.changes.len(), 1);
    assert!(
        !c.changes.services[&ObjectName::new("default", "web")]
            .current
            .as_ref()
            .unwrap()
            .l2_announce
    );
    // Nothing changed: no change.
    assert!(a.translate_changes(&none).unwrap().changes.is_empty());
    // An elected key without a Service (deleted meanwhile) is no error.
    assert!(a.set_l2_announced(&key("gone"), true));
    assert!(a.translate_changes(&none).unwrap().changes.is_empty());
}

#[test]
fn candidates_have_addresses_and_local_endpoints_for_local_policy() {
    let yaml = [
        service("web", "10.96.0.10", "172.18.0.200", None, "Cluster"),
        service("local-here", "10.96.0.11", "172.18.0.210", None, "Local"),
        slice("local-here", "10.244.1.5", "node-a"),
        service("local-there", "10.96.0.12", "172.18.0.220", None, "Local"),
        slice("local-there", "10.244.2.5", "node-b"),
        service("ext", "10.96.0.13", "", None, "Cluster"),
        "apiVersion: v1\nkind: Service\nmetadata: {name: inner, namespace: default}\nspec: {clusterIPs: [10.96.0.14], ports: [{port: 80}]}\n".to_owned(),
    ]
    .join("---\n");
    let mut a = store("node-a", L2Announcements::Elected, &yaml);
    a.translate_in_place(&none).unwrap();
    let names = |c: &Cluster| -> Vec<String> {
        c.l2_candidates()
            .iter()
            .map(|k| k.name.to_string())
            .collect()
    };
    assert_eq!(names(&a), ["ext", "local-here", "web"]);
    let mut b = store("node-b", L2Announcements::Elected, &yaml);
    b.translate_in_place(&none).unwrap();
    assert_eq!(names(&b), ["ext", "local-there", "web"]);
    // The local endpoint goes away: no longer a candidate on node-a.
    a.delete(&ObjectKey::namespaced(
        Kind::EndpointSlice,
        "default",
        "local-here-1",
    ));
    a.translate_in_place(&none).unwrap();
    assert_eq!(names(&a), ["ext", "web"]);
}

#[test]
fn an_address_lost_to_another_service_leaves_nothing_to_announce() {
    // `late` has the same ExternalIP and port as `early`'s, and loses it (by name).
    let yaml = "
apiVersion: v1
kind: Service
metadata: {name: early, namespace: default}
spec: {clusterIPs: [10.96.0.10], externalIPs: [172.18.0.201], ports: [{port: 80}]}
---
apiVersion: v1
kind: Service
metadata: {name: late, namespace: default, annotations: {dataplane.io/l2-announce-node: node-a}}
spec: {clusterIPs: [10.96.0.11], externalIPs: [172.18.0.201], ports: [{port: 80}]}
";
    let mut a = store("node-a", L2Announcements::Annotated, yaml);
    let t = a.translate(&none).unwrap();
    dataplane_core::validate(&t.state).unwrap();
    let late = t
        .state
        .services
        .iter()
        .find(|s| &*s.name.name == "late")
        .unwrap();
    assert!(late.external_ips.is_empty() && !late.l2_announce);
    assert!(a.l2_candidates().iter().all(|k| &*k.name != "late"));
}
