//! Pod interfaces from the routes of a lab node (root): a local pod's /32 host route names
//! its veth; another node's pod (through a gateway), the node's own address (local) and a
//! neighbour on the uplink are no pod's.

use dataplane_agent::interfaces::RouteResolver;
use dataplane_kube::InterfaceResolver;
use dataplane_testkit::{Lab, LabSpec};

#[test]
fn a_local_pod_is_found_on_its_veth_and_nothing_else_is_a_pod() {
    if !dataplane_testkit::require_root(
        "a_local_pod_is_found_on_its_veth_and_nothing_else_is_a_pod",
    ) {
        return;
    }
    let lab = Lab::new(LabSpec {
        nodes: 2,
        pods_per_node: 2,
        external_clients: 0,
        ipv6: true,
    })
    .unwrap();
    let node0 = lab.node(0);
    let local = lab.pod(1).clone();
    let remote = lab.pod(2).clone();
    let node1_address = lab.node(1).addresses[0];
    let own_address = node0.addresses[0];
    let answers = node0
        .netns
        .run(move || {
            let resolver = RouteResolver::new("eth0");
            let name = dataplane::ObjectName::new("default", &local.name);
            (
                resolver.interface(&name, &local.addresses),
                // The IPv6 address alone: the same veth.
                resolver.lookup(local.addresses[1]).unwrap(),
                resolver.lookup(remote.addresses[0]).unwrap(),
                resolver.lookup(node1_address).unwrap(),
                resolver.lookup(own_address).unwrap(),
                {
                    resolver.refresh();
                    resolver.interface(&name, &local.addresses)
                },
            )
        })
        .unwrap();
    let veth = Some(lab.pod(1).host_interface.clone());
    assert_eq!(answers.0, veth, "the local pod");
    assert_eq!(answers.1, veth, "the local pod's IPv6 address");
    assert_eq!(answers.2, None, "a pod of node-1 (via node-1)");
    assert_eq!(answers.3, None, "node-1 itself (out of the uplink)");
    assert_eq!(answers.4, None, "the node's own address (local)");
    assert_eq!(answers.5, veth, "after a refresh");
}
