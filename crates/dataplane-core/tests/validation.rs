//! `validate()`: every `ValidationError` variant, triggered by breaking one thing in a valid,
//! full-featured state (`tests/data/full.yaml`), with the exact object and field it must name;
//! and `from_yaml`/`from_json` errors for bad syntax and types.

mod strategies;
mod tier_edits;

use std::net::IpAddr;

use ipnetwork::IpNetwork;
use proptest::prelude::*;

use dataplane_core::validate::MAX_AFFINITY_TIMEOUT_SECONDS;
use dataplane_core::{
    from_json, from_yaml, validate, DesiredState, Incremental, IpBlock, IpFamily, LabelSelector,
    ObjectName, PolicyPeer, PortRange, PortRef, Protocol, ServicePort, SessionAffinity,
    TrafficPolicy, ValidationError, Validator, API_VERSION, KIND,
};
use dataplane_core::{warnings, Warning};

const FULL: &str = include_str!("data/full.yaml");

/// A change that breaks (or keeps) the base state.
type Tweak = fn(&mut DesiredState);

/// The valid base state. services[0] is `default/web` (dual-stack, every option set),
/// services[1] is `default/api` (IPv4 ClusterIP only); endpoints are `default/web-0` and
/// `default/api-0`; policies[0] is `default/web-ingress`.
fn base() -> DesiredState {
    from_yaml(FULL).expect("tests/data/full.yaml parses")
}

/// The error `validate` returns once `tweak` has broken the base state.
fn invalid(tweak: impl FnOnce(&mut DesiredState)) -> ValidationError {
    let mut state = base();
    tweak(&mut state);
    match validate(&state) {
        Ok(()) => panic!("the tweaked state was accepted: {state:#?}"),
        Err(e) => e,
    }
}

/// Asserts that `tweak` keeps the base state valid.
fn valid(tweak: impl FnOnce(&mut DesiredState)) {
    let mut state = base();
    tweak(&mut state);
    if let Err(e) = validate(&state) {
        panic!("the tweaked state was rejected: {e}");
    }
}

/// The message must start with `object: field:` so that a person finds the mistake, and
/// `object()` must agree.
fn assert_names(err: &ValidationError, object: &str, field: &str) {
    let shown = err.to_string();
    let prefix = format!("{object}: {field}: ");
    assert!(
        shown.starts_with(&prefix),
        "message {shown:?} does not start with {prefix:?}"
    );
    assert_eq!(err.object(), Some(object), "object() of {shown:?}");
}

fn ip(s: &str) -> IpAddr {
    s.parse().expect("test address")
}

fn net(s: &str) -> IpNetwork {
    s.parse().expect("test CIDR")
}

const WEB: &str = "service default/web";
const API: &str = "service default/api";

#[test]
fn full_featured_state_is_valid() {
    let state = base();
    assert_eq!(state.services.len(), 2);
    assert_eq!(state.endpoints.len(), 2);
    assert_eq!(state.policies.len(), 1);
    assert_eq!(validate(&state), Ok(()));
}

#[test]
fn api_version() {
    let err = invalid(|s| s.api_version = "dataplane.rs/v0".into());
    assert_eq!(
        err,
        ValidationError::ApiVersion {
            found: "dataplane.rs/v0".into(),
            expected: API_VERSION,
        }
    );
    let shown = err.to_string();
    assert!(shown.starts_with("apiVersion: "), "{shown}");
    assert!(
        shown.contains("dataplane.rs/v0") && shown.contains(API_VERSION),
        "{shown}"
    );
    assert_eq!(err.object(), None);
}

#[test]
fn kind() {
    let err = invalid(|s| s.kind = "Service".into());
    assert_eq!(
        err,
        ValidationError::Kind {
            found: "Service".into(),
            expected: KIND,
        }
    );
    let shown = err.to_string();
    assert!(shown.starts_with("kind: "), "{shown}");
    assert!(shown.contains("\"Service\""), "{shown}");
    assert_eq!(err.object(), None);
}

#[test]
fn empty_service_ports() {
    let err = invalid(|s| s.services[0].ports.clear());
    assert_eq!(
        err,
        ValidationError::Empty {
            object: WEB.into(),
            field: "ports".into(),
        }
    );
    assert_names(&err, WEB, "ports");
}

#[test]
fn empty_fields_elsewhere() {
    let cases: Vec<(&str, Tweak, &str, &str)> = vec![
        (
            "node addresses",
            |s| s.node.addresses.clear(),
            "node",
            "addresses",
        ),
        ("node name", |s| s.node.name.clear(), "node", "name"),
        (
            "uplink",
            |s| s.node.interfaces.uplink.clear(),
            "node",
            "interfaces.uplink",
        ),
        (
            "service name",
            |s| s.services[1].name.name = "".into(),
            "service default/",
            "name",
        ),
        (
            "endpoint ips",
            |s| s.endpoints[0].ips.clear(),
            "endpoint default/web-0",
            "ips",
        ),
        (
            "endpoint interface",
            |s| s.endpoints[1].interface.clear(),
            "endpoint default/api-0",
            "interface",
        ),
        (
            "policy peer without selector or block",
            |s| s.policies[0].ingress[0].peers[0] = PolicyPeer::default(),
            "policy default/web-ingress",
            "ingress[0].peers[0]",
        ),
    ];
    for (name, tweak, object, field) in cases {
        let err = invalid(tweak);
        assert_eq!(
            err,
            ValidationError::Empty {
                object: object.into(),
                field: field.into(),
            },
            "case {name}"
        );
        assert_names(&err, object, field);
    }
}

#[test]
fn invalid_service_name() {
    let err = invalid(|s| s.services[1].name.name = "Api_1".into());
    assert_eq!(
        err,
        ValidationError::InvalidName {
            object: "service default/Api_1".into(),
            field: "name".into(),
            value: "Api_1".into(),
            max: 63,
        }
    );
    assert_names(&err, "service default/Api_1", "name");
    assert!(err.to_string().contains("\"Api_1\""), "{err}");
}

#[test]
fn invalid_names_elsewhere() {
    let long_label = "a".repeat(64);
    let long_subdomain = "a".repeat(254);
    let err = invalid(|s| s.services[1].name.namespace = "-default".into());
    assert_eq!(
        err,
        ValidationError::InvalidName {
            object: "service -default/api".into(),
            field: "namespace".into(),
            value: "-default".into(),
            max: 63,
        }
    );
    let err = invalid(|s| s.services[1].name.name = long_label.clone().into());
    assert!(
        matches!(&err, ValidationError::InvalidName { field, max: 63, .. } if field == "name"),
        "{err:?}"
    );
    // Node names are DNS subdomains: dots are fine, 254 characters are not.
    valid(|s| s.node.name = "node-0.example.com".into());
    let err = invalid(|s| s.node.name = long_subdomain.clone());
    assert_eq!(
        err,
        ValidationError::InvalidName {
            object: "node".into(),
            field: "name".into(),
            value: long_subdomain.clone(),
            max: 253,
        }
    );
    // Interface names: IFNAMSIZ minus the NUL.
    valid(|s| s.node.interfaces.uplink = "a23456789012345".into());
    let err = invalid(|s| s.node.interfaces.uplink = "a234567890123456".into());
    assert_eq!(
        err,
        ValidationError::InvalidName {
            object: "node".into(),
            field: "interfaces.uplink".into(),
            value: "a234567890123456".into(),
            max: 15,
        }
    );
    assert_names(&err, "node", "interfaces.uplink");
    let err = invalid(|s| s.endpoints[0].interface = "veth/0".into());
    assert_names(&err, "endpoint default/web-0", "interface");
    let err = invalid(|s| s.services[0].ports[1].name = "Dns".into());
    assert_eq!(
        err,
        ValidationError::InvalidName {
            object: WEB.into(),
            field: "ports[1].name".into(),
            value: "Dns".into(),
            max: 63,
        }
    );
    let err = invalid(|s| {
        s.policies[0].ingress[0].ports[0].port = Some(PortRef::Name("http_alt".into()));
    });
    assert_names(
        &err,
        "policy default/web-ingress",
        "ingress[0].ports[0].port",
    );
}

#[test]
fn duplicate_name() {
    let err = invalid(|s| {
        let mut copy = s.services[1].clone();
        copy.cluster_ips = vec![ip("10.96.0.99")];
        s.services.push(copy);
    });
    assert_eq!(err, ValidationError::DuplicateName { object: API.into() });
    assert_eq!(err.to_string(), "service default/api: duplicate name");
    assert_eq!(err.object(), Some(API));

    let err = invalid(|s| {
        let mut copy = s.endpoints[1].clone();
        copy.ips = vec![ip("10.244.0.77")];
        s.endpoints.push(copy);
    });
    assert_eq!(
        err,
        ValidationError::DuplicateName {
            object: "endpoint default/api-0".into()
        }
    );
    let err = invalid(|s| s.policies.push(s.policies[0].clone()));
    assert_eq!(
        err,
        ValidationError::DuplicateName {
            object: "policy default/web-ingress".into()
        }
    );
    // The same name in another namespace is another object.
    valid(|s| {
        let mut copy = s.services[1].clone();
        copy.name.namespace = "other".into();
        copy.cluster_ips = vec![ip("10.96.0.99")];
        s.services.push(copy);
    });
}

#[test]
fn port_zero() {
    let err = invalid(|s| s.services[0].ports[0].target_port = 0);
    assert_eq!(
        err,
        ValidationError::PortZero {
            object: WEB.into(),
            field: "ports[0].targetPort".into(),
        }
    );
    assert_names(&err, WEB, "ports[0].targetPort");
    let cases: Vec<(Tweak, &str, &str)> = vec![
        (|s| s.services[0].ports[2].port = 0, WEB, "ports[2].port"),
        (
            |s| s.services[1].ports[0].node_port = Some(0),
            API,
            "ports[0].nodePort",
        ),
        (
            |s| s.services[0].health_check_node_port = Some(0),
            WEB,
            "healthCheckNodePort",
        ),
        (
            |s| s.node.node_port_range.start = 0,
            "node",
            "nodePortRange.start",
        ),
        (
            |s| s.endpoints[0].named_ports[0].port = 0,
            "endpoint default/web-0",
            "namedPorts[0].port",
        ),
        (
            |s| s.policies[0].egress[0].ports[0].port = Some(PortRef::Number(0)),
            "policy default/web-ingress",
            "egress[0].ports[0].port",
        ),
    ];
    for (tweak, object, field) in cases {
        let err = invalid(tweak);
        assert_eq!(
            err,
            ValidationError::PortZero {
                object: object.into(),
                field: field.into(),
            }
        );
        assert_names(&err, object, field);
    }
}

#[test]
fn out_of_range_affinity_timeout() {
    for timeout in [0, MAX_AFFINITY_TIMEOUT_SECONDS + 1, u32::MAX] {
        let err = invalid(|s| {
            s.services[0].session_affinity = SessionAffinity::ClientIp {
                timeout_seconds: timeout,
            };
        });
        assert_eq!(
            err,
            ValidationError::OutOfRange {
                object: WEB.into(),
                field: "sessionAffinity.timeoutSeconds".into(),
                value: u64::from(timeout),
                min: 1,
                max: 86_400,
            }
        );
        assert_names(&err, WEB, "sessionAffinity.timeoutSeconds");
        assert!(err.to_string().contains(&timeout.to_string()), "{err}");
    }
    for timeout in [1, MAX_AFFINITY_TIMEOUT_SECONDS] {
        valid(|s| {
            s.services[0].session_affinity = SessionAffinity::ClientIp {
                timeout_seconds: timeout,
            };
        });
    }
}

#[test]
fn out_of_range_mtu() {
    for mtu in [0, 575, 65_536] {
        let err = invalid(|s| s.node.mtu = mtu);
        assert_eq!(
            err,
            ValidationError::OutOfRange {
                object: "node".into(),
                field: "mtu".into(),
                value: u64::from(mtu),
                min: 576,
                max: 65_535,
            }
        );
        assert_names(&err, "node", "mtu");
    }
    valid(|s| s.node.mtu = 576);
    valid(|s| s.node.mtu = 65_535);
}

#[test]
fn out_of_range_weight() {
    let err = invalid(|s| s.services[0].backends[1].weight = 0);
    assert_eq!(
        err,
        ValidationError::OutOfRange {
            object: WEB.into(),
            field: "backends[1].weight".into(),
            value: 0,
            min: 1,
            max: 65_535,
        }
    );
    assert_names(&err, WEB, "backends[1].weight");
    valid(|s| s.services[0].backends[1].weight = u16::MAX);
}

#[test]
fn node_port_out_of_range() {
    let err = invalid(|s| s.services[1].ports[0].node_port = Some(8080));
    assert_eq!(
        err,
        ValidationError::NodePortOutOfRange {
            object: API.into(),
            field: "ports[0].nodePort".into(),
            port: 8080,
            start: 30_000,
            end: 32_767,
        }
    );
    assert_names(&err, API, "ports[0].nodePort");
    assert!(err.to_string().contains("30000-32767"), "{err}");
    // The node's range is what counts, inclusive at both ends.
    let narrow = |s: &mut DesiredState| {
        s.node.node_port_range = PortRange {
            start: 20_000,
            end: 20_100,
        };
        s.services[0].ports[0].node_port = Some(20_000);
        s.services[0].ports[1].node_port = Some(20_100);
        s.services[0].health_check_node_port = Some(20_050);
    };
    valid(narrow);
    let err = invalid(|s| {
        narrow(s);
        s.services[1].ports[0].node_port = Some(20_101);
    });
    assert_eq!(
        err,
        ValidationError::NodePortOutOfRange {
            object: API.into(),
            field: "ports[0].nodePort".into(),
            port: 20_101,
            start: 20_000,
            end: 20_100,
        }
    );
}

#[test]
fn non_canonical_cidr() {
    let err = invalid(|s| s.node.service_cidrs[0] = net("10.96.0.1/12"));
    assert_eq!(
        err,
        ValidationError::NonCanonicalCidr {
            object: "node".into(),
            field: "serviceCIDRs[0]".into(),
            value: net("10.96.0.1/12"),
            canonical: net("10.96.0.0/12"),
        }
    );
    assert_names(&err, "node", "serviceCIDRs[0]");
    assert!(err.to_string().contains("10.96.0.0/12"), "{err}");
    let cases: Vec<(Tweak, &str, &str, &str, &str)> = vec![
        (
            |s| s.node.pod_cidrs[1] = net("fd00:244::1/64"),
            "node",
            "podCIDRs[1]",
            "fd00:244::1/64",
            "fd00:244::/64",
        ),
        (
            |s| s.node.cluster_cidrs[0] = net("10.244.7.0/16"),
            "node",
            "clusterCIDRs[0]",
            "10.244.7.0/16",
            "10.244.0.0/16",
        ),
        (
            |s| s.node.masquerade.non_masquerade_cidrs[0] = net("192.168.1.1/16"),
            "node",
            "masquerade.nonMasqueradeCIDRs[0]",
            "192.168.1.1/16",
            "192.168.0.0/16",
        ),
        (
            |s| s.services[0].load_balancer_source_ranges[1] = net("2001:db8::1/32"),
            WEB,
            "loadBalancerSourceRanges[1]",
            "2001:db8::1/32",
            "2001:db8::/32",
        ),
        (
            |s| {
                s.policies[0].ingress[0].peers[1].ip_block = Some(IpBlock {
                    cidr: net("10.0.0.1/8"),
                    except: vec![],
                });
            },
            "policy default/web-ingress",
            "ingress[0].peers[1].ipBlock.cidr",
            "10.0.0.1/8",
            "10.0.0.0/8",
        ),
        (
            |s| {
                s.policies[0].ingress[0].peers[1].ip_block = Some(IpBlock {
                    cidr: net("10.0.0.0/8"),
                    except: vec![net("10.1.2.3/16")],
                });
            },
            "policy default/web-ingress",
            "ingress[0].peers[1].ipBlock.except[0]",
            "10.1.2.3/16",
            "10.1.0.0/16",
        ),
    ];
    for (tweak, object, field, value, canonical) in cases {
        let err = invalid(tweak);
        assert_eq!(
            err,
            ValidationError::NonCanonicalCidr {
                object: object.into(),
                field: field.into(),
                value: net(value),
                canonical: net(canonical),
            }
        );
        assert_names(&err, object, field);
    }
}

#[test]
fn invalid_address() {
    let err = invalid(|s| s.services[0].backends[0].ip = ip("0.0.0.0"));
    assert_eq!(
        err,
        ValidationError::InvalidAddress {
            object: WEB.into(),
            field: "backends[0].ip".into(),
            address: ip("0.0.0.0"),
            reason: "unspecified",
        }
    );
    assert_names(&err, WEB, "backends[0].ip");
    let cases: Vec<(Tweak, &str, &str, &str, &str)> = vec![
        (
            |s| s.node.addresses[0] = ip("127.0.0.1"),
            "node",
            "addresses[0]",
            "127.0.0.1",
            "loopback",
        ),
        (
            |s| s.node.addresses[1] = ip("::1"),
            "node",
            "addresses[1]",
            "::1",
            "loopback",
        ),
        (
            |s| s.services[0].cluster_ips[1] = ip("::"),
            WEB,
            "clusterIPs[1]",
            "::",
            "unspecified",
        ),
        (
            |s| s.services[0].external_ips[0] = ip("224.0.0.1"),
            WEB,
            "externalIPs[0]",
            "224.0.0.1",
            "multicast",
        ),
        (
            |s| s.services[0].load_balancer_ips[0] = ip("255.255.255.255"),
            WEB,
            "loadBalancerIPs[0]",
            "255.255.255.255",
            "broadcast",
        ),
        (
            |s| s.endpoints[0].ips[1] = ip("ff02::1"),
            "endpoint default/web-0",
            "ips[1]",
            "ff02::1",
            "multicast",
        ),
    ];
    for (tweak, object, field, address, reason) in cases {
        let err = invalid(tweak);
        assert_eq!(
            err,
            ValidationError::InvalidAddress {
                object: object.into(),
                field: field.into(),
                address: ip(address),
                reason,
            }
        );
        assert_names(&err, object, field);
        assert!(err.to_string().contains(reason), "{err}");
    }
}

#[test]
fn duplicate_frontend_cluster_ip() {
    // default/api claims web's ClusterIP with the same port and protocol.
    let err = invalid(|s| s.services[1].cluster_ips = vec![ip("10.96.0.10")]);
    assert_eq!(
        err,
        ValidationError::DuplicateFrontend {
            object: API.into(),
            field: "ports[0].port".into(),
            frontend: "TCP 10.96.0.10:80".into(),
            other: "service default/web ports[0]".into(),
        }
    );
    assert_names(&err, API, "ports[0].port");
    assert!(
        err.to_string().contains("service default/web ports[0]"),
        "{err}"
    );
    // Another port or another protocol on the same address is another frontend.
    valid(|s| {
        s.services[1].cluster_ips = vec![ip("10.96.0.10")];
        s.services[1].ports[0].port = 81;
    });
    valid(|s| {
        s.services[1].cluster_ips = vec![ip("10.96.0.10")];
        s.services[1].ports[0].port = 53; // web has UDP 53, api is TCP 53
    });
}

#[test]
fn duplicate_frontend_ipv6_and_external_addresses() {
    let err = invalid(|s| {
        s.services[1].cluster_ips = vec![ip("fd00:96::10")];
        s.services[1].backends[0].ip = ip("fd00:244::6");
    });
    assert_eq!(
        err,
        ValidationError::DuplicateFrontend {
            object: API.into(),
            field: "ports[0].port".into(),
            frontend: "TCP [fd00:96::10]:80".into(),
            other: "service default/web ports[0]".into(),
        }
    );
    // An ExternalIP of one service that is another's LoadBalancer IP.
    let err = invalid(|s| s.services[1].external_ips = vec![ip("192.0.2.10")]);
    assert_eq!(
        err,
        ValidationError::DuplicateFrontend {
            object: API.into(),
            field: "ports[0].port".into(),
            frontend: "TCP 192.0.2.10:80".into(),
            other: "service default/web ports[0]".into(),
        }
    );
}

#[test]
fn duplicate_frontend_node_port() {
    let err = invalid(|s| s.services[1].ports[0].node_port = Some(30_080));
    assert_eq!(
        err,
        ValidationError::DuplicateFrontend {
            object: API.into(),
            field: "ports[0].nodePort".into(),
            frontend: "TCP 172.18.0.10:30080".into(),
            other: "service default/web ports[0]".into(),
        }
    );
    assert_names(&err, API, "ports[0].nodePort");
    // web's UDP NodePort 30053 does not collide with a TCP NodePort 30053.
    valid(|s| s.services[1].ports[0].node_port = Some(30_053));
    // Two ports of one service cannot share a NodePort either.
    let err = invalid(|s| {
        s.services[0].ports[2].protocol = Protocol::Tcp;
        s.services[0].ports[2].node_port = Some(30_080);
    });
    assert_eq!(
        err,
        ValidationError::DuplicateFrontend {
            object: WEB.into(),
            field: "ports[2].nodePort".into(),
            frontend: "TCP 172.18.0.10:30080".into(),
            other: "service default/web ports[0]".into(),
        }
    );
}

#[test]
fn duplicate_value_in_one_object() {
    let err = invalid(|s| {
        s.services[0].ports[1].protocol = Protocol::Tcp;
        s.services[0].ports[1].port = 80;
    });
    assert_eq!(
        err,
        ValidationError::Duplicate {
            object: WEB.into(),
            field: "ports[1].port".into(),
            value: "TCP 80".into(),
        }
    );
    assert_names(&err, WEB, "ports[1].port");
    let cases: Vec<(Tweak, &str, &str, &str)> = vec![
        (
            |s| s.services[0].ports[2].name = "http".into(),
            WEB,
            "ports[2].name",
            "http",
        ),
        (
            |s| s.services[0].backends[2].ip = ip("10.244.0.5"),
            WEB,
            "backends[2].ip",
            "10.244.0.5",
        ),
        (
            |s| s.services[0].external_ips.push(ip("198.51.100.10")),
            WEB,
            "externalIPs[1]",
            "198.51.100.10",
        ),
        (
            |s| s.services[0].load_balancer_ips.push(ip("192.0.2.10")),
            WEB,
            "loadBalancerIPs[1]",
            "192.0.2.10",
        ),
        (
            |s| s.node.addresses.push(ip("172.18.0.10")),
            "node",
            "addresses[2]",
            "172.18.0.10",
        ),
        (
            |s| s.endpoints[1].ips.push(ip("10.244.0.5")),
            "endpoint default/api-0",
            "ips[1]",
            "10.244.0.5 (also used by endpoint default/web-0)",
        ),
    ];
    for (tweak, object, field, value) in cases {
        let err = invalid(tweak);
        assert_eq!(
            err,
            ValidationError::Duplicate {
                object: object.into(),
                field: field.into(),
                value: value.into(),
            }
        );
        assert_names(&err, object, field);
    }
}

#[test]
fn backend_family_mismatch() {
    // default/api has only an IPv4 ClusterIP and no NodePort.
    let err = invalid(|s| {
        let mut b = s.services[1].backends[0].clone();
        b.ip = ip("fd00:244::6");
        s.services[1].backends.push(b);
    });
    assert_eq!(
        err,
        ValidationError::BackendFamilyMismatch {
            object: API.into(),
            field: "backends[1].ip".into(),
            backend: ip("fd00:244::6"),
            backend_family: IpFamily::V6,
        }
    );
    assert_names(&err, API, "backends[1].ip");
    assert!(err.to_string().contains("fd00:244::6"), "{err}");
    // An IPv6-only service with an IPv4 backend.
    let err = invalid(|s| s.services[1].cluster_ips = vec![ip("fd00:96::11")]);
    assert_eq!(
        err,
        ValidationError::BackendFamilyMismatch {
            object: API.into(),
            field: "backends[0].ip".into(),
            backend: ip("10.244.0.6"),
            backend_family: IpFamily::V4,
        }
    );
    // A service without frontends (headless-like) takes any family.
    valid(|s| {
        s.services[1].cluster_ips.clear();
        s.services[1].backends[0].ip = ip("fd00:244::6");
    });
}

/// Unallocated addresses in the service CIDRs are dropped, and unknown ports of a ClusterIP
/// rejected: a service range over the pod network or a node address, or a ClusterIP that is a
/// pod or node address, would cut off that address's other traffic.
#[test]
fn service_addresses_must_not_take_pod_or_node_addresses() {
    let node = "node";
    let cases: [(Tweak, &str, &str, &str); 6] = [
        (
            |s| s.node.service_cidrs[0] = "10.0.0.0/8".parse().unwrap(),
            node,
            "serviceCIDRs[0]",
            "overlaps the pod network (clusterCIDRs or podCIDRs)",
        ),
        (
            |s| s.node.service_cidrs[1] = "fd00:244::/120".parse().unwrap(),
            node,
            "serviceCIDRs[1]",
            "overlaps the pod network (clusterCIDRs or podCIDRs)",
        ),
        (
            |s| s.node.service_cidrs[0] = "172.18.0.0/16".parse().unwrap(),
            node,
            "serviceCIDRs[0]",
            "holds a node address",
        ),
        (
            |s| s.services[1].cluster_ips = vec![ip("172.18.0.10")],
            API,
            "clusterIPs[0]",
            "is a node address",
        ),
        (
            |s| s.services[1].cluster_ips = vec![ip("10.244.3.7")],
            API,
            "clusterIPs[0]",
            "is inside the pod network (clusterCIDRs or podCIDRs)",
        ),
        (
            |s| s.services[0].cluster_ips[1] = ip("fd00:244::99"),
            WEB,
            "clusterIPs[1]",
            "is inside the pod network (clusterCIDRs or podCIDRs)",
        ),
    ];
    for (tweak, object, field, reason) in cases {
        let err = invalid(tweak);
        assert_eq!(
            err,
            ValidationError::Inconsistent {
                object: object.into(),
                field: field.into(),
                reason,
            }
        );
        assert_names(&err, object, field);
    }
}

#[test]
fn cluster_ip_outside_service_cidrs_is_a_warning_not_an_error() {
    // Kubernetes' ServiceCIDR API adds service ranges at run time and kube-proxy programs every
    // ClusterIP it is given: accepted, and named in the warnings.
    let mut state = base();
    state.services[1].cluster_ips = vec![ip("10.200.0.11")];
    state.services[0].cluster_ips[1] = ip("fd00:97::10");
    validate(&state).expect("a ClusterIP outside serviceCIDRs is valid");
    let found = warnings(&state);
    assert_eq!(
        found,
        vec![
            Warning {
                object: WEB.into(),
                field: "clusterIPs[1]".into(),
                message: "fd00:97::10 is outside node.serviceCIDRs".into(),
            },
            Warning {
                object: API.into(),
                field: "clusterIPs[0]".into(),
                message: "10.200.0.11 is outside node.serviceCIDRs".into(),
            },
        ],
        "{found:?}"
    );
    assert_eq!(
        found[1].to_string(),
        format!("{API}: clusterIPs[0]: 10.200.0.11 is outside node.serviceCIDRs")
    );
    // No service CIDR of a family: ClusterIPs of that family are not range-checked.
    state.node.service_cidrs.retain(IpNetwork::is_ipv4);
    state.services[1].cluster_ips = vec![ip("10.96.0.11")];
    assert!(warnings(&state).is_empty());
    // The base state has none.
    assert!(warnings(&base()).is_empty());
}

#[test]
fn too_many_cluster_ips() {
    let err = invalid(|s| s.services[1].cluster_ips.push(ip("10.96.0.12")));
    assert_eq!(
        err,
        ValidationError::TooManyClusterIps {
            object: API.into(),
            field: "clusterIPs[1]".into(),
            family: IpFamily::V4,
        }
    );
    assert_names(&err, API, "clusterIPs[1]");
    let err = invalid(|s| s.services[0].cluster_ips.push(ip("fd00:96::11")));
    assert_eq!(
        err,
        ValidationError::TooManyClusterIps {
            object: WEB.into(),
            field: "clusterIPs[2]".into(),
            family: IpFamily::V6,
        }
    );
}

#[test]
fn unnamed_port() {
    let err = invalid(|s| s.services[0].ports[1].name.clear());
    assert_eq!(
        err,
        ValidationError::UnnamedPort {
            object: WEB.into(),
            field: "ports[1].name".into(),
        }
    );
    assert_names(&err, WEB, "ports[1].name");
    // A second port makes the first one's missing name an error too.
    let err = invalid(|s| {
        s.services[1].ports.push(ServicePort {
            name: "metrics".into(),
            protocol: Protocol::Tcp,
            port: 9090,
            target_port: 9090,
            node_port: None,
        });
    });
    assert_eq!(
        err,
        ValidationError::UnnamedPort {
            object: API.into(),
            field: "ports[0].name".into(),
        }
    );
}

#[test]
fn inconsistent_settings() {
    let err = invalid(|s| s.services[0].backends[2].ready = true);
    assert_eq!(
        err,
        ValidationError::Inconsistent {
            object: WEB.into(),
            field: "backends[2].ready".into(),
            reason: "a terminating backend cannot be ready",
        }
    );
    assert_names(&err, WEB, "backends[2].ready");
    let cases: Vec<(Tweak, &str, &str)> = vec![
        (
            |s| s.services[0].external_traffic_policy = TrafficPolicy::Cluster,
            WEB,
            "healthCheckNodePort",
        ),
        (
            |s| s.services[0].health_check_node_port = Some(30_053),
            WEB,
            "healthCheckNodePort",
        ),
        (
            |s| {
                s.node.node_port_range = PortRange {
                    start: 32_000,
                    end: 31_000,
                };
            },
            "node",
            "nodePortRange",
        ),
        (
            |s| {
                s.policies[0].ingress[0].peers[1].pod_selector = Some(LabelSelector::default());
            },
            "policy default/web-ingress",
            "ingress[0].peers[1]",
        ),
        (
            |s| s.policies[0].ingress[0].ports[1].end_port = Some(7999),
            "policy default/web-ingress",
            "ingress[0].ports[1].endPort",
        ),
        (
            |s| s.policies[0].ingress[0].ports[0].end_port = Some(9000),
            "policy default/web-ingress",
            "ingress[0].ports[0].endPort",
        ),
        (
            |s| s.policies[0].ingress[0].ports[2].end_port = Some(9000),
            "policy default/web-ingress",
            "ingress[0].ports[2].endPort",
        ),
    ];
    for (tweak, object, field) in cases {
        let err = invalid(tweak);
        assert!(
            matches!(&err, ValidationError::Inconsistent { object: o, field: f, .. } if o == object && f == field),
            "expected Inconsistent at {object} {field}, got {err:?}"
        );
        assert_names(&err, object, field);
    }
}

#[test]
fn except_outside_cidr() {
    let err = invalid(|s| {
        s.policies[0].ingress[0].peers[1].ip_block = Some(IpBlock {
            cidr: net("10.0.0.0/8"),
            except: vec![net("10.1.0.0/16"), net("192.168.0.0/24")],
        });
    });
    assert_eq!(
        err,
        ValidationError::ExceptOutsideCidr {
            object: "policy default/web-ingress".into(),
            field: "ingress[0].peers[1].ipBlock.except[1]".into(),
            except: net("192.168.0.0/24"),
            cidr: net("10.0.0.0/8"),
        }
    );
    assert_names(
        &err,
        "policy default/web-ingress",
        "ingress[0].peers[1].ipBlock.except[1]",
    );
    // The whole block, a wider range and another family are not strictly inside either.
    for except in ["10.0.0.0/8", "0.0.0.0/0", "fd00::/8"] {
        let err = invalid(|s| {
            s.policies[0].ingress[0].peers[1].ip_block = Some(IpBlock {
                cidr: net("10.0.0.0/8"),
                except: vec![net(except)],
            });
        });
        assert!(
            matches!(&err, ValidationError::ExceptOutsideCidr { except: e, .. } if *e == net(except)),
            "{except}: {err:?}"
        );
    }
}

#[test]
fn policy_objects_are_named_by_namespace_and_name() {
    let err = invalid(|s| s.policies[0].name = ObjectName::new("team-a", "Bad"));
    assert_eq!(
        err,
        ValidationError::InvalidName {
            object: "policy team-a/Bad".into(),
            field: "name".into(),
            value: "Bad".into(),
            max: 253,
        }
    );
}

/// A health-check NodePort is served on every node address, like a NodePort, so another
/// service's NodePort on the same number cannot work.
#[test]
fn health_check_node_port_collides_with_other_service_node_port() {
    let err = invalid(|s| s.services[1].ports[0].node_port = Some(32_000));
    assert!(
        matches!(
            &err,
            ValidationError::DuplicateFrontend { .. } | ValidationError::Inconsistent { .. }
        ),
        "{err:?}"
    );
}

/// Kubernetes validates a Service port name as a DNS-1123 label (up to 63 characters); only
/// container port names (IANA service names) are limited to 15. `metrics-exporter-http` is a
/// valid Kubernetes service port name that a backend must accept.
#[test]
fn service_port_names_are_dns_labels() {
    valid(|s| s.services[0].ports[0].name = "metrics-exporter-http".into());
    let long = "a".repeat(64);
    let err = invalid(|s| s.services[0].ports[0].name.clone_from(&long));
    assert_eq!(
        err,
        ValidationError::InvalidName {
            object: WEB.into(),
            field: "ports[0].name".into(),
            value: long.clone(),
            max: 63,
        }
    );
}

// ---------------------------------------------------------------------------------------------
// Parse errors: typed, located, naming the field; never a panic.

const HEAD: &str = "apiVersion: dataplane.rs/v1alpha1
kind: DesiredState
node:
  name: node-0
  addresses: [172.18.0.10]
  interfaces: { uplink: eth0 }
";

/// `HEAD` followed by `rest`, parsed; the error's message.
fn yaml_error(rest: &str) -> String {
    match from_yaml(&format!("{HEAD}{rest}")) {
        Ok(state) => panic!("parsed: {state:?}"),
        Err(e) => e.to_string(),
    }
}

fn service_with(line: &str) -> String {
    format!(
        "services:\n  - namespace: default\n    name: web\n    ports: [{{ protocol: TCP, port: 80, targetPort: 8080 }}]\n    {line}\n"
    )
}

#[test]
fn yaml_unknown_fields_are_named() {
    for (rest, field) in [
        ("bogus: 1\n", "bogus"),
        ("services:\n  - namespace: default\n    name: web\n    clusterIP: 10.96.0.1\n    ports: []\n", "clusterIP"),
        (&service_with("backends: [{ ip: 10.244.0.5, nodename: node-0 }]"), "nodename"),
        (&service_with("sessionAffinity: { type: ClientIP, timeoutSeconds: 5, extra: 1 }"), "extra"),
    ] {
        let msg = yaml_error(rest);
        assert!(msg.contains(&format!("unknown field `{field}`")), "{field}: {msg}");
        assert!(msg.contains("line "), "no location: {msg}");
    }
    let msg = match from_yaml(&HEAD.replace("  interfaces", "  mtus: 1400\n  interfaces")) {
        Ok(state) => panic!("parsed: {state:?}"),
        Err(e) => e.to_string(),
    };
    assert!(
        msg.contains("unknown field `mtus`") && msg.contains("line 6"),
        "{msg}"
    );
}

#[test]
fn yaml_wrong_types_name_the_field() {
    for (rest, field) in [
        (service_with("sessionAffinity: { type: ClientIP, timeoutSeconds: soon }"), "timeoutSeconds: soon"),
        (service_with("externalTrafficPolicy: Everywhere"), "Everywhere"),
        (service_with("backends: [{ ip: 10.244.0.5, weight: 70000 }]"), "weight: 70000"),
        (service_with("backends: [{ ip: 10.244.0.5, ready: maybe }]"), "ready: maybe"),
        (service_with("clusterIPs: [10.96.0.300]"), "clusterIPs"),
        (service_with("clusterIPs: 10.96.0.1"), "clusterIPs"),
        ("services:\n  - namespace: default\n    name: web\n    ports: [{ protocol: ICMP, port: 7, targetPort: 7 }]\n".into(), "ICMP"),
        ("services:\n  - namespace: default\n    name: web\n    ports: [{ protocol: TCP, port: 70000, targetPort: 7 }]\n".into(), "port: 70000"),
        ("services:\n  - namespace: default\n    ports: [{ protocol: TCP, port: 7, targetPort: 7 }]\n".into(), "missing field `name`"),
    ] {
        let msg = yaml_error(&rest);
        assert!(msg.contains(field), "{field}: {msg}");
        assert!(msg.contains("line "), "no location: {msg}");
    }
}

#[test]
fn yaml_bad_cidrs_name_the_field() {
    for (field, value) in [
        ("serviceCIDRs", "10.96.0.0/33"),
        ("podCIDRs", "banana"),
        ("clusterCIDRs", "10.244.0.0/16/2"),
        ("serviceCIDRs", "fd00::/129"),
    ] {
        let doc = HEAD.replace(
            "  interfaces",
            &format!("  {field}: [\"{value}\"]\n  interfaces"),
        );
        let msg = match from_yaml(&doc) {
            Ok(state) => panic!("{value} parsed: {state:?}"),
            Err(e) => e.to_string(),
        };
        assert!(msg.contains(field) && msg.contains(value), "{value}: {msg}");
        assert!(msg.contains("line 6"), "{value}: {msg}");
    }
    let msg = yaml_error(&service_with("loadBalancerSourceRanges: [1.2.3.0/40]"));
    assert!(msg.contains("loadBalancerSourceRanges"), "{msg}");
}

#[test]
fn yaml_garbage_is_an_error_not_a_panic() {
    for text in [
        "",
        "---\n",
        "[]",
        "null",
        "apiVersion: [",
        "{",
        "\u{0}\u{1}",
        "apiVersion: dataplane.rs/v1alpha1\nkind: DesiredState\n",
        "a: &a [*a]",
        "node: !!binary aGVsbG8=",
    ] {
        assert!(from_yaml(text).is_err(), "{text:?} parsed");
    }
}

#[test]
fn json_errors_are_typed_and_located() {
    let head = r#"{"apiVersion":"dataplane.rs/v1alpha1","kind":"DesiredState","node":{"name":"n","addresses":["172.18.0.10"],"interfaces":{"uplink":"eth0"}"#;
    let msg = from_json(&format!(r#"{head},"bogus":1}}}}"#))
        .expect_err("unknown field")
        .to_string();
    assert!(
        msg.contains("unknown field `bogus`") && msg.contains("line 1"),
        "{msg}"
    );
    let msg = from_json(&format!(r#"{head},"serviceCIDRs":["10.0.0.0/33"]}}}}"#))
        .expect_err("bad CIDR")
        .to_string();
    assert!(
        msg.contains("10.0.0.0/33") && msg.contains("column"),
        "{msg}"
    );
    let msg = from_json(&format!(r#"{head},"mtu":"big"}}}}"#))
        .expect_err("wrong type")
        .to_string();
    assert!(
        msg.contains("expected u32") && msg.contains("column"),
        "{msg}"
    );
    for text in ["", "{", "[]", "null", "{\"apiVersion\": 1}"] {
        assert!(from_json(text).is_err(), "{text:?} parsed");
    }
}

#[test]
fn repeated_keys_are_errors_not_silent_overrides() {
    for rest in [
        "kind: DesiredState\n",
        "services:\n  - namespace: default\n    name: web\n    name: other\n    ports: [{ protocol: TCP, port: 80, targetPort: 8080 }]\n",
        "services:\n  - namespace: default\n    name: web\n    ports: [{ protocol: TCP, port: 80, port: 81, targetPort: 8080 }]\n",
    ] {
        let msg = yaml_error(rest);
        assert!(msg.contains("duplicate"), "{msg}");
    }
    let json = r#"{"apiVersion":"dataplane.rs/v1alpha1","kind":"DesiredState","node":{"name":"n","addresses":["172.18.0.10"],"interfaces":{"uplink":"eth0"}},"services":[{"namespace":"default","name":"web","name":"other","ports":[]}]}"#;
    let msg = from_json(json).expect_err("duplicate name").to_string();
    assert!(msg.contains("duplicate field `name`"), "{msg}");
}

// ---------------------------------------------------------------------------------------------
// Any state, however broken: no panic, and every error names its object first.

/// One way to break a generated valid state; indexes wrap around the lists they select from.
#[derive(Debug, Clone)]
enum Corruption {
    Port(usize, usize, u16),
    TargetPort(usize, usize, u16),
    NodePort(usize, usize, Option<u16>),
    PortName(usize, usize, &'static str),
    ServiceName(usize, &'static str),
    ClusterIps(usize, Vec<&'static str>),
    BackendIp(usize, usize, &'static str),
    BackendWeight(usize, usize, u16),
    BackendFlags(usize, usize, bool, bool, bool),
    Affinity(usize, u32),
    HealthCheck(usize, Option<u16>),
    Mtu(u32),
    NodePortRange(u16, u16),
    ServiceCidr(&'static str, u8),
    DuplicateService(usize),
    EndpointIp(usize, &'static str),
    Except(usize, &'static str),
}

const ADDRESSES: [&str; 10] = [
    "0.0.0.0",
    "127.0.0.1",
    "224.0.0.1",
    "255.255.255.255",
    "::",
    "fd00:244::9",
    "10.244.0.101",
    "10.96.0.1",
    "10.200.0.1",
    "172.18.0.10",
];
const BAD_NAMES: [&str; 6] = ["", "UPPER", "-x", "a.b", "ok", "abcdefghijklmnop"];

fn corruption() -> impl Strategy<Value = Corruption> {
    use prop::sample::select;
    let i = || 0usize..8;
    let address = || select(ADDRESSES.to_vec());
    prop_oneof![
        (i(), i(), any::<u16>()).prop_map(|(a, b, v)| Corruption::Port(a, b, v)),
        (i(), i(), any::<u16>()).prop_map(|(a, b, v)| Corruption::TargetPort(a, b, v)),
        (i(), i(), any::<Option<u16>>()).prop_map(|(a, b, v)| Corruption::NodePort(a, b, v)),
        (i(), i(), select(BAD_NAMES.to_vec())).prop_map(|(a, b, v)| Corruption::PortName(a, b, v)),
        (i(), select(BAD_NAMES.to_vec())).prop_map(|(a, v)| Corruption::ServiceName(a, v)),
        (i(), prop::collection::vec(address(), 0..3))
            .prop_map(|(a, v)| Corruption::ClusterIps(a, v)),
        (i(), i(), address()).prop_map(|(a, b, v)| Corruption::BackendIp(a, b, v)),
        (i(), i(), any::<u16>()).prop_map(|(a, b, v)| Corruption::BackendWeight(a, b, v)),
        (i(), i(), any::<bool>(), any::<bool>(), any::<bool>())
            .prop_map(|(a, b, r, s, t)| Corruption::BackendFlags(a, b, r, s, t)),
        (i(), any::<u32>()).prop_map(|(a, v)| Corruption::Affinity(a, v)),
        (i(), any::<Option<u16>>()).prop_map(|(a, v)| Corruption::HealthCheck(a, v)),
        any::<u32>().prop_map(Corruption::Mtu),
        (any::<u16>(), any::<u16>()).prop_map(|(a, b)| Corruption::NodePortRange(a, b)),
        (address(), 0u8..=32).prop_map(|(a, p)| Corruption::ServiceCidr(a, p)),
        i().prop_map(Corruption::DuplicateService),
        (i(), address()).prop_map(|(a, v)| Corruption::EndpointIp(a, v)),
        (
            i(),
            select(vec![
                "10.1.0.0/16",
                "10.0.0.0/8",
                "192.168.0.0/24",
                "10.1.2.3/16"
            ])
        )
            .prop_map(|(a, v)| Corruption::Except(a, v)),
    ]
}

fn corrupt(state: &mut DesiredState, corruption: &Corruption) {
    use tier_edits::pick;
    let ports = |s: &mut DesiredState, a: usize, b: usize, f: &dyn Fn(&mut ServicePort)| {
        if let Some(p) = pick(&mut s.services, a).and_then(|svc| pick(&mut svc.ports, b)) {
            f(p);
        }
    };
    match corruption.clone() {
        Corruption::Port(a, b, v) => ports(state, a, b, &|p| p.port = v),
        Corruption::TargetPort(a, b, v) => ports(state, a, b, &|p| p.target_port = v),
        Corruption::NodePort(a, b, v) => ports(state, a, b, &|p| p.node_port = v),
        Corruption::PortName(a, b, v) => ports(state, a, b, &|p| p.name = v.into()),
        Corruption::ServiceName(a, v) => {
            if let Some(s) = pick(&mut state.services, a) {
                s.name.name = v.into();
            }
        }
        Corruption::ClusterIps(a, v) => {
            if let Some(s) = pick(&mut state.services, a) {
                s.cluster_ips = v.into_iter().map(ip).collect();
            }
        }
        Corruption::BackendIp(a, b, v) => {
            if let Some(x) = pick(&mut state.services, a).and_then(|s| pick(&mut s.backends, b)) {
                x.ip = ip(v);
            }
        }
        Corruption::BackendWeight(a, b, v) => {
            if let Some(x) = pick(&mut state.services, a).and_then(|s| pick(&mut s.backends, b)) {
                x.weight = v;
            }
        }
        Corruption::BackendFlags(svc, be, ready, serving, terminating) => {
            if let Some(x) = pick(&mut state.services, svc).and_then(|s| pick(&mut s.backends, be))
            {
                (x.ready, x.serving, x.terminating) = (ready, serving, terminating);
            }
        }
        Corruption::Affinity(a, v) => {
            if let Some(s) = pick(&mut state.services, a) {
                s.session_affinity = SessionAffinity::ClientIp { timeout_seconds: v };
            }
        }
        Corruption::HealthCheck(a, v) => {
            if let Some(s) = pick(&mut state.services, a) {
                s.health_check_node_port = v;
            }
        }
        Corruption::Mtu(v) => state.node.mtu = v,
        Corruption::NodePortRange(a, b) => {
            state.node.node_port_range = PortRange { start: a, end: b }
        }
        Corruption::ServiceCidr(a, p) => {
            let address = ip(a);
            let prefix = if address.is_ipv4() { p } else { p * 4 };
            state.node.service_cidrs = vec![IpNetwork::new(address, prefix).expect("prefix fits")];
        }
        Corruption::DuplicateService(a) => {
            if let Some(s) = pick(&mut state.services, a).cloned() {
                state.services.push(s);
            }
        }
        Corruption::EndpointIp(a, v) => {
            if let Some(e) = pick(&mut state.endpoints, a) {
                e.ips = vec![ip(v)];
            }
        }
        Corruption::Except(a, v) => {
            if let Some(p) = pick(&mut state.policies, a) {
                p.ingress.push(dataplane_core::PolicyRule {
                    peers: vec![PolicyPeer {
                        ip_block: Some(IpBlock {
                            cidr: net("10.0.0.0/8"),
                            except: vec![net(v)],
                        }),
                        ..PolicyPeer::default()
                    }],
                    ports: vec![],
                });
            }
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn broken_states_give_one_line_errors_that_start_with_the_object(
        mut state in strategies::state(),
        corruptions in prop::collection::vec(corruption(), 0..4),
    ) {
        for c in &corruptions {
            corrupt(&mut state, c);
        }
        if let Err(e) = validate(&state) {
            let shown = e.to_string();
            prop_assert!(!shown.contains('\n'), "{}", shown);
            match e.object() {
                Some(object) => prop_assert!(
                    shown.starts_with(&format!("{object}: ")),
                    "{:?} does not start with its object {:?}", shown, object
                ),
                None => prop_assert!(
                    shown.starts_with("apiVersion: ") || shown.starts_with("kind: "),
                    "{}", shown
                ),
            }
        }
    }
}

/// A clash the incremental validator finds names the same field as a full validation of the
/// new state: the ClusterIP's port, or the nodePort.
#[test]
fn incremental_clash_names_the_field_a_full_validation_names() {
    let old = dataplane_core::synthetic::state(3, 1);
    let clash = |tweak: &dyn Fn(&mut DesiredState)| {
        let mut new = old.clone();
        tweak(&mut new);
        let full = validate(&new).unwrap_err().to_string();
        let v = Validator::new(&old).unwrap();
        let incremental = v
            .check(&old.node, &dataplane_core::diff(&old, &new))
            .unwrap_err()
            .to_string();
        assert_eq!(incremental, full);
        incremental
    };
    let port = clash(&|s| s.services[2].cluster_ips = s.services[0].cluster_ips.clone());
    assert!(port.contains("ports[0].port"), "{port}");
    let node_port = clash(&|s| s.services[2].ports[0].node_port = s.services[0].ports[0].node_port);
    assert!(node_port.contains("ports[0].nodePort"), "{node_port}");
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    /// The incremental validator reaches the verdict a full validation of the new state does.
    #[test]
    fn incremental_validation_agrees_with_full_validation(
        state in strategies::state(),
        corruptions in prop::collection::vec(corruption(), 0..4),
        swap in any::<prop::sample::Index>(),
        tier_edits in tier_edits::edits(3),
    ) {
        prop_assume!(validate(&state).is_ok());
        let mut next = state.clone();
        for c in &corruptions {
            corrupt(&mut next, c);
        }
        // And the cluster-wide policy objects (`tier_validation.rs` checks those alone for
        // the very error).
        for e in &tier_edits {
            tier_edits::apply(&mut next, e);
        }
        // Also a frontend clash between two services, the change's main cross-object check.
        if next.services.len() >= 2 {
            let i = swap.index(next.services.len());
            let j = (i + 1) % next.services.len();
            next.services[i].cluster_ips = next.services[j].cluster_ips.clone();
        }
        // A change set is keyed by name: duplicate names are not something it can carry.
        let names = |n: Vec<&ObjectName>| n.len() == n.iter().collect::<std::collections::BTreeSet<_>>().len();
        prop_assume!(names(next.services.iter().map(|s| &s.name).collect()));
        prop_assume!(names(next.endpoints.iter().map(|e| &e.name).collect()));
        prop_assume!(names(next.policies.iter().map(|p| &p.name).collect()));
        prop_assume!(names(next.pods.iter().map(|p| &p.name).collect()));
        let changes = dataplane_core::diff(&state, &next);
        let mut v = Validator::new(&state).expect("valid state");
        match v.check(&state.node, &changes) {
            Ok(Incremental::FullRequired) => prop_assert!(changes.node.is_some()),
            Ok(Incremental::Valid) => {
                prop_assert!(validate(&next).is_ok(), "{:?}", validate(&next));
                v.commit(&state.node, &changes);
                // Committed: the same validator judges a change back to the old state too.
                let back = dataplane_core::diff(&next, &state);
                prop_assert_eq!(v.check(&next.node, &back).map_err(|e| e.to_string()), Ok(Incremental::Valid));
            }
            Err(e) => prop_assert!(validate(&next).is_err(), "incremental: {}, full: ok", e),
        }
    }
}

/// A tweak that breaks the base state and the field the error must name.
type BoxedCase = (Box<dyn Fn(&mut DesiredState)>, &'static str);

/// Label selectors follow the API server's `ValidateLabelSelectorRequirement`: `In`/`NotIn`
/// need values, `Exists`/`DoesNotExist` take none; in the policy's own selector and in both
/// selectors of a peer.
#[test]
fn selector_operator_and_values_must_agree() {
    use dataplane_core::{LabelRequirement, SelectorOperator};
    let req = |operator, values: &[&str]| LabelRequirement {
        key: "tier".into(),
        operator,
        values: values.iter().map(|v| (*v).to_owned()).collect(),
    };
    let cases: Vec<BoxedCase> = vec![
        (
            Box::new(move |s| {
                s.policies[0].pod_selector.match_expressions[0] = req(SelectorOperator::In, &[]);
            }),
            "podSelector.matchExpressions[0].values",
        ),
        (
            Box::new(move |s| {
                s.policies[0].pod_selector.match_expressions[0] = req(SelectorOperator::NotIn, &[]);
            }),
            "podSelector.matchExpressions[0].values",
        ),
        (
            Box::new(move |s| {
                s.policies[0].pod_selector.match_expressions[1] =
                    req(SelectorOperator::DoesNotExist, &["x"]);
            }),
            "podSelector.matchExpressions[1].values",
        ),
        (
            Box::new(move |s| {
                s.policies[0].ingress[0].peers[0]
                    .namespace_selector
                    .as_mut()
                    .expect("full.yaml's peer has a namespace selector")
                    .match_expressions[0] = req(SelectorOperator::Exists, &["a"]);
            }),
            "ingress[0].peers[0].namespaceSelector.matchExpressions[0].values",
        ),
        (
            Box::new(move |s| {
                s.policies[0].ingress[0].peers[0]
                    .pod_selector
                    .as_mut()
                    .expect("full.yaml's peer has a pod selector")
                    .match_expressions
                    .push(req(SelectorOperator::In, &[]));
            }),
            "ingress[0].peers[0].podSelector.matchExpressions[0].values",
        ),
    ];
    for (tweak, field) in cases {
        let err = invalid(|s| tweak(s));
        assert!(
            matches!(&err, ValidationError::Inconsistent { field: f, .. } if f == field),
            "expected Inconsistent at {field}, got {err:?}"
        );
        assert_names(&err, "policy default/web-ingress", field);
    }
    // The same operators with fitting values are fine.
    valid(|s| {
        s.policies[0].pod_selector.match_expressions[0] = req(SelectorOperator::NotIn, &["a"]);
    });
    valid(|s| s.policies[0].pod_selector.match_expressions[0] = req(SelectorOperator::Exists, &[]));
}

#[test]
fn selector_keys_must_not_be_empty() {
    let err = invalid(|s| s.policies[0].pod_selector.match_expressions[0].key.clear());
    assert_names(
        &err,
        "policy default/web-ingress",
        "podSelector.matchExpressions[0].key",
    );
    assert!(matches!(err, ValidationError::Empty { .. }), "{err:?}");
    let err = invalid(|s| {
        s.policies[0].egress[0].peers[0]
            .namespace_selector
            .as_mut()
            .expect("full.yaml's egress peer has a namespace selector")
            .match_labels
            .insert(String::new(), "x".into());
    });
    assert_names(
        &err,
        "policy default/web-ingress",
        "egress[0].peers[0].namespaceSelector.matchLabels",
    );
}

#[test]
fn policy_types_are_listed_once() {
    let err = invalid(|s| {
        s.policies[0]
            .policy_types
            .push(dataplane_core::PolicyType::Ingress);
    });
    assert_eq!(
        err,
        ValidationError::Duplicate {
            object: "policy default/web-ingress".into(),
            field: "policyTypes[2]".into(),
            value: "Ingress".into(),
        }
    );
}

/// Peer pods are checked like endpoints: names, addresses (unique across local and peer
/// pods), node name and named ports.
#[test]
fn peer_pods() {
    let err = invalid(|s| s.pods.push(s.pods[0].clone()));
    assert_eq!(
        err,
        ValidationError::DuplicateName {
            object: "pod db/pg-0".into()
        }
    );
    // A pod is local or a peer, not both.
    let err = invalid(|s| s.pods[0].name = s.endpoints[0].name.clone());
    assert_eq!(
        err,
        ValidationError::DuplicateName {
            object: "pod default/web-0".into()
        }
    );
    let err = invalid(|s| s.pods[0].ips.push(ip("10.244.0.6")));
    assert_eq!(
        err,
        ValidationError::Duplicate {
            object: "pod db/pg-0".into(),
            field: "ips[1]".into(),
            value: "10.244.0.6 (also used by endpoint default/api-0)".into(),
        }
    );
    let err = invalid(|s| s.pods[0].ips.clear());
    assert_names(&err, "pod db/pg-0", "ips");
    let err = invalid(|s| s.pods[0].ips[0] = ip("224.0.0.1"));
    assert!(
        matches!(err, ValidationError::InvalidAddress { .. }),
        "{err:?}"
    );
    assert_names(&err, "pod db/pg-0", "ips[0]");
    let err = invalid(|s| s.pods[0].name.namespace = "DB".into());
    assert!(
        matches!(err, ValidationError::InvalidName { .. }),
        "{err:?}"
    );
    assert_names(&err, "pod DB/pg-0", "namespace");
    let err = invalid(|s| s.pods[0].node_name = Some("".into()));
    assert_names(&err, "pod db/pg-0", "nodeName");
    let err = invalid(|s| s.pods[0].named_ports[0].port = 0);
    assert_names(&err, "pod db/pg-0", "namedPorts[0].port");
    let err = invalid(|s| s.pods[0].named_ports[0].name = "a-name-longer-than-15".into());
    assert_names(&err, "pod db/pg-0", "namedPorts[0].name");
}

/// One name for two ports of one protocol leaves a policy naming it ambiguous; one name for
/// TCP and UDP is fine (as for DNS).
#[test]
fn named_ports_are_unique_per_protocol() {
    use dataplane_core::NamedPort;
    let err = invalid(|s| {
        s.endpoints[0]
            .named_ports
            .push(NamedPort::new("http", Protocol::Tcp, 8081));
    });
    assert_eq!(
        err,
        ValidationError::Duplicate {
            object: "endpoint default/web-0".into(),
            field: "namedPorts[1].name".into(),
            value: "TCP http".into(),
        }
    );
    valid(|s| {
        s.endpoints[0]
            .named_ports
            .push(NamedPort::new("http", Protocol::Udp, 8080));
    });
}

#[test]
fn namespaces() {
    let err = invalid(|s| s.namespaces.push(s.namespaces[1].clone()));
    assert_eq!(
        err,
        ValidationError::DuplicateName {
            object: "namespace db".into()
        }
    );
    let err = invalid(|s| s.namespaces[0].name = "Team_A".into());
    assert!(
        matches!(err, ValidationError::InvalidName { max: 63, .. }),
        "{err:?}"
    );
    assert_names(&err, "namespace Team_A", "name");
    let err = invalid(|s| {
        s.namespaces[0].labels.insert(String::new(), "x".into());
    });
    assert_names(&err, "namespace default", "labels");
}

/// Protocols and selector operators are closed sets: an unknown one fails to parse, naming
/// the value.
#[test]
fn unknown_protocol_and_operator_fail_to_parse() {
    let text = FULL.replace("{ protocol: UDP }", "{ protocol: ICMP }");
    assert_ne!(text, FULL);
    let err = from_yaml(&text).expect_err("ICMP is no policy protocol");
    assert!(err.to_string().contains("ICMP"), "{err}");
    let text = FULL.replace("operator: Exists", "operator: Exist");
    assert_ne!(text, FULL);
    let err = from_yaml(&text).expect_err("Exist is no operator");
    assert!(err.to_string().contains("Exist"), "{err}");
}

/// Changed peer pods are checked incrementally like endpoints, addresses included.
#[test]
fn incremental_validation_checks_peer_pods_and_namespaces() {
    let old = base();
    let v = Validator::new(&old).expect("valid base");
    let check = |tweak: &dyn Fn(&mut DesiredState)| {
        let mut new = old.clone();
        tweak(&mut new);
        let full = validate(&new).map_err(|e| e.to_string());
        let incremental = v
            .check(&old.node, &dataplane_core::diff(&old, &new))
            .map(|_| ())
            .map_err(|e| e.to_string());
        assert_eq!(incremental, full);
        incremental
    };
    let clash = check(&|s| s.pods[0].ips[0] = ip("10.244.0.5")).unwrap_err();
    assert!(
        clash.contains("also used by endpoint default/web-0"),
        "{clash}"
    );
    check(&|s| s.pods[0].named_ports[0].port = 0).unwrap_err();
    check(&|s| s.namespaces[0].name = "Bad".into()).unwrap_err();
    // Moving an address from a peer pod to a new one in the same change is fine.
    check(&|s| {
        let mut moved = s.pods[0].clone();
        moved.name = ObjectName::new("db", "pg-1");
        s.pods[0] = moved;
    })
    .expect("an address moves between pods");
}

/// A pod is local or a peer, not both: the incremental validator sees a name clash across the
/// two kinds, which a change set keys separately, and forgets names the change removes.
#[test]
fn incremental_validation_keeps_pod_names_unique_across_endpoints_and_peers() {
    let old = base();
    let mut v = Validator::new(&old).expect("valid base");
    let judge = |v: &Validator, from: &DesiredState, tweak: &dyn Fn(&mut DesiredState)| {
        let mut new = from.clone();
        tweak(&mut new);
        let full = validate(&new).map_err(|e| e.to_string());
        let changes = dataplane_core::diff(from, &new);
        let incremental = v
            .check(&from.node, &changes)
            .map(|_| ())
            .map_err(|e| e.to_string());
        assert_eq!(incremental, full);
        (incremental, new, changes)
    };
    // A new peer pod named like an endpoint, and a new endpoint named like a peer pod.
    let (err, _, _) = judge(&v, &old, &|s| {
        let mut p = s.pods[0].clone();
        p.name = ObjectName::new("default", "api-0");
        p.ips = vec![ip("10.244.2.10")];
        s.pods.push(p);
    });
    assert_eq!(err.unwrap_err(), "pod default/api-0: duplicate name");
    let (err, _, _) = judge(&v, &old, &|s| {
        let mut e = s.endpoints[1].clone();
        e.name = ObjectName::new("db", "pg-0");
        e.interface = "veth-pg".into();
        e.ips = vec![ip("10.244.0.60")];
        s.endpoints.push(e);
    });
    assert_eq!(err.unwrap_err(), "pod db/pg-0: duplicate name");
    // The pod moves to this node: a peer becomes an endpoint in one change.
    let (ok, moved, changes) = judge(&v, &old, &|s| {
        let p = s.pods.remove(0);
        s.endpoints
            .push(dataplane_core::Endpoint::new(p.name, "veth-pg", p.ips));
    });
    ok.expect("a pod moving to this node");
    v.commit(&old.node, &changes);
    // Committed: the name is an endpoint's now, a peer pod of that name clashes.
    let (err, _, _) = judge(&v, &moved, &|s| {
        s.pods.push(dataplane_core::PeerPod::new(
            ObjectName::new("db", "pg-0"),
            [ip("10.244.2.11")],
        ));
    });
    assert_eq!(err.unwrap_err(), "pod db/pg-0: duplicate name");
}

/// A backend's own target port: valid in a single-port service, never 0, and refused in a
/// service with several ports (it would not say which port it is for).
#[test]
fn backend_port() {
    valid(|s| s.services[1].backends[0].port = Some(9090));
    // Its own port equal to the service port's target says the same thing: accepted.
    valid(|s| s.services[1].backends[0].port = Some(8080));
    let err = invalid(|s| s.services[1].backends[0].port = Some(0));
    assert_eq!(
        err,
        ValidationError::PortZero {
            object: API.into(),
            field: "backends[0].port".into(),
        }
    );
    assert_names(&err, API, "backends[0].port");
    let err = invalid(|s| s.services[0].backends[1].port = Some(9090));
    assert_eq!(
        err,
        ValidationError::BackendPortWithSeveralPorts {
            object: WEB.into(),
            field: "backends[1].port".into(),
            backend: ip("10.244.1.5"),
            port: 9090,
            ports: 3,
        }
    );
    assert_names(&err, WEB, "backends[1].port");
    assert!(err.to_string().contains("10.244.1.5"), "{err}");
    // A second port added to a service whose backends carry their own: refused too.
    let err = invalid(|s| {
        s.services[1].backends[0].port = Some(9090);
        s.services[1].ports[0].name = "http".into();
        s.services[1]
            .ports
            .push(ServicePort::tcp(81, 8081).named("alt"));
    });
    assert!(
        matches!(err, ValidationError::BackendPortWithSeveralPorts { ref field, ports: 2, .. } if field == "backends[0].port"),
        "{err:?}"
    );
}
