//! L2 announcements in the model: validation, capability checks, the announced addresses.

use dataplane_core::{
    diff, l2, validate, Capabilities, DesiredState, Error, FakeDataplane, Node, ObjectName,
    Service, ServicePort, ValidationError,
};

fn node() -> Node {
    Node::new("node-a", ["172.18.0.2".parse().unwrap()])
}

fn web() -> Service {
    Service::cluster_ip(
        ObjectName::new("default", "web"),
        "10.96.0.10".parse().unwrap(),
        [ServicePort::tcp(80, 8080)],
    )
}

#[test]
fn announcing_a_service_without_external_addresses_is_refused_by_name() {
    let state = DesiredState::new(node()).with_service(web().with_l2_announce());
    let err = validate(&state).unwrap_err();
    assert!(
        matches!(&err, ValidationError::Inconsistent { object, field, .. }
            if object == "service default/web" && field == "l2Announce"),
        "{err:?}"
    );
}

#[test]
fn announced_addresses_are_the_lb_and_external_ips_of_announced_services() {
    let announced = web()
        .with_load_balancer_ip("172.18.0.200".parse().unwrap())
        .with_load_balancer_ip("fd00:18::c8".parse().unwrap())
        .with_external_ip("172.18.0.201".parse().unwrap())
        .with_l2_announce();
    let mut quiet = web().with_load_balancer_ip("172.18.0.202".parse().unwrap());
    quiet.name = ObjectName::new("default", "quiet");
    quiet.cluster_ips = vec!["10.96.0.11".parse().unwrap()];
    let state = DesiredState::new(node())
        .with_service(announced)
        .with_service(quiet);
    validate(&state).unwrap();
    let got: Vec<String> = l2::announced_addresses(&state)
        .iter()
        .map(ToString::to_string)
        .collect();
    assert_eq!(got, ["172.18.0.200", "172.18.0.201", "fd00:18::c8"]);
}

#[test]
fn a_backend_without_the_capability_refuses_announcements_by_name() {
    let state = DesiredState::new(node()).with_service(
        web()
            .with_load_balancer_ip("172.18.0.200".parse().unwrap())
            .with_l2_announce(),
    );
    let without = Capabilities {
        dataplane: "plain".to_owned(),
        l2_announcements: false,
        ..FakeDataplane::default_capabilities()
    };
    let err = without.check_l2_announcements(&state).unwrap_err();
    assert!(
        matches!(&err, Error::Unsupported { object, feature, .. }
            if object == "service default/web" && feature == "L2 announcements"),
        "{err:?}"
    );
    // Through a change set: added or changed services are checked, removals pass.
    let empty = DesiredState::new(node());
    let changes = diff(&empty, &state);
    assert!(without.check_l2_announcement_changes(&changes).is_err());
    assert!(without
        .check_l2_announcement_changes(&diff(&state, &empty))
        .is_ok());
    // A dataplane with the capability takes it.
    let with = FakeDataplane::default_capabilities();
    assert!(with.l2_announcements);
    with.check_l2_announcements(&state).unwrap();
}
