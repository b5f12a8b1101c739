//! The file format: the example states parse and validate, documents round-trip through YAML
//! and JSON without loss (fixed files and generated states), defaults are filled in, and the
//! JSON rendering of the minimal example is pinned by a golden file.

mod strategies;

use std::fs;
use std::path::{Path, PathBuf};

use dataplane_core::{
    from_json, from_yaml, to_json, to_yaml, validate, BackendSelection, DesiredState, ExternalMode,
    FormatError, ObjectName, PortRange, SessionAffinity, TrafficPolicy, ValidationError,
};
use proptest::prelude::*;

const FULL: &str = include_str!("data/full.yaml");

fn examples_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples/states")
}

fn read_example(name: &str) -> String {
    let path = examples_dir().join(name);
    fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn parse_yaml(text: &str, what: &str) -> DesiredState {
    from_yaml(text).unwrap_or_else(|e| panic!("{what}: {e}"))
}

/// YAML → model → YAML → model and model → JSON → model must all give the same model.
fn assert_round_trips(state: &DesiredState) {
    let yaml = to_yaml(state).expect("to_yaml");
    let back = from_yaml(&yaml).unwrap_or_else(|e| panic!("re-reading our YAML: {e}\n{yaml}"));
    assert_eq!(&back, state, "YAML round trip changed the state:\n{yaml}");
    assert_eq!(
        to_yaml(&back).expect("to_yaml"),
        yaml,
        "YAML rendering is not stable"
    );
    let json = to_json(state).expect("to_json");
    let back = from_json(&json).unwrap_or_else(|e| panic!("re-reading our JSON: {e}\n{json}"));
    assert_eq!(&back, state, "JSON round trip changed the state:\n{json}");
}

#[test]
fn example_states_parse_and_validate() {
    let mut checked = Vec::new();
    for entry in fs::read_dir(examples_dir()).expect("examples/states exists") {
        let path = entry.expect("dir entry").path();
        let name = path.file_name().unwrap().to_string_lossy().into_owned();
        if name.starts_with("invalid-") {
            continue;
        }
        let text = fs::read_to_string(&path).expect("readable");
        let state = match path.extension().and_then(|e| e.to_str()) {
            Some("yaml") => parse_yaml(&text, &name),
            Some("json") => from_json(&text).unwrap_or_else(|e| panic!("{name}: {e}")),
            _ => continue,
        };
        if let Err(e) = validate(&state) {
            panic!("{name}: {e}");
        }
        assert_round_trips(&state);
        checked.push(name);
    }
    checked.sort();
    for required in ["demo.json", "demo.yaml", "minimal.yaml"] {
        assert!(
            checked.iter().any(|c| c == required),
            "{required} missing: {checked:?}"
        );
    }
}

#[test]
fn demo_has_one_service_of_each_kind() {
    let demo = parse_yaml(&read_example("demo.yaml"), "demo.yaml");
    assert_eq!(demo.node.name, "node-0");
    assert_eq!(demo.node.addresses[0].to_string(), "172.18.0.10");
    assert_eq!(demo.node.interfaces.uplink, "eth0");
    let svc = |name: &str| {
        demo.service(&ObjectName::new(
            if name == "storefront" {
                "shop"
            } else {
                "default"
            },
            name,
        ))
        .unwrap_or_else(|| panic!("service {name}"))
    };
    let web = svc("web");
    assert_eq!(web.ports.len(), 2);
    assert_eq!(web.backends.len(), 3);
    assert_eq!(
        svc("nodeport-cluster").external_traffic_policy,
        TrafficPolicy::Cluster
    );
    assert!(svc("nodeport-cluster").ports[0].node_port.is_some());
    assert_eq!(
        svc("nodeport-local").external_traffic_policy,
        TrafficPolicy::Local
    );
    assert!(!svc("storefront").load_balancer_source_ranges.is_empty());
    assert!(!svc("storefront").load_balancer_ips.is_empty());
    assert!(!svc("external").external_ips.is_empty());
    assert!(matches!(
        svc("sticky").session_affinity,
        SessionAffinity::ClientIp {
            timeout_seconds: 600
        }
    ));
    assert_eq!(svc("maglev").backend_selection, BackendSelection::Maglev);
    assert_eq!(svc("dual").cluster_ips.len(), 2);
}

#[test]
fn demo_json_is_demo_yaml() {
    let yaml = parse_yaml(&read_example("demo.yaml"), "demo.yaml");
    let json = from_json(&read_example("demo.json")).expect("demo.json parses");
    assert_eq!(json, yaml, "examples/states/demo.json and demo.yaml differ");
}

#[test]
fn minimal_example_fills_in_defaults() {
    let state = parse_yaml(&read_example("minimal.yaml"), "minimal.yaml");
    let node = &state.node;
    assert!(node.pod_cidrs.is_empty() && node.cluster_cidrs.is_empty());
    assert!(node.service_cidrs.is_empty());
    assert_eq!(
        node.node_port_range,
        PortRange {
            start: 30_000,
            end: 32_767
        }
    );
    assert!(node.masquerade.enabled);
    assert!(!node.masquerade.all);
    assert!(node.masquerade.non_masquerade_cidrs.is_empty());
    assert_eq!(node.mtu, 1500);
    assert_eq!(node.external_mode, ExternalMode::Snat);
    let web = &state.services[0];
    assert_eq!(web.session_affinity, SessionAffinity::None);
    assert_eq!(web.external_traffic_policy, TrafficPolicy::Cluster);
    assert_eq!(web.internal_traffic_policy, TrafficPolicy::Cluster);
    assert_eq!(web.backend_selection, BackendSelection::Random);
    assert_eq!(web.external_mode, None);
    assert_eq!(web.effective_external_mode(node), ExternalMode::Snat);
    assert_eq!(web.ports[0].name, "");
    assert_eq!(web.ports[0].node_port, None);
    let b = &web.backends[0];
    assert!(b.ready && b.serving && !b.terminating);
    assert_eq!(b.weight, 1);
    assert_eq!(b.zone, None);
    assert!(b.is_local_to(node));
    assert!(state.endpoints.is_empty() && state.policies.is_empty());
}

/// Pins the JSON rendering (field names, what is omitted); regenerate only on purpose.
#[test]
fn minimal_example_json_matches_golden() {
    let state = parse_yaml(&read_example("minimal.yaml"), "minimal.yaml");
    let json = to_json(&state).expect("to_json");
    let golden = include_str!("data/minimal.golden.json");
    assert_eq!(json.trim_end(), golden.trim_end());
}

#[test]
fn invalid_nodeport_example_parses_but_fails_validation() {
    let state = parse_yaml(
        &read_example("invalid-nodeport.yaml"),
        "invalid-nodeport.yaml",
    );
    let err = validate(&state).expect_err("nodePort 8080 must be rejected");
    assert_eq!(
        err,
        ValidationError::NodePortOutOfRange {
            object: "service default/web".into(),
            field: "ports[0].nodePort".into(),
            port: 8080,
            start: 30_000,
            end: 32_767,
        }
    );
    assert_eq!(
        err.to_string(),
        "service default/web: ports[0].nodePort: 8080 is outside the node's NodePort range 30000-32767"
    );
}

#[test]
fn invalid_unknown_field_example_fails_to_parse() {
    let text = read_example("invalid-unknown-field.yaml");
    let line = 1 + text
        .lines()
        .position(|l| l.trim_start().starts_with("targetPorts:"))
        .expect("the example has its mistake");
    let msg = from_yaml(&text)
        .expect_err("targetPorts is not a field")
        .to_string();
    assert!(msg.contains("unknown field `targetPorts`"), "{msg}");
    assert!(msg.contains(&format!("line {line} ")), "line {line}: {msg}");
}

#[test]
fn full_state_round_trips() {
    let state = parse_yaml(FULL, "full.yaml");
    assert_round_trips(&state);
    // YAML → JSON → YAML reaches the same model as well.
    let via_json = from_json(&to_json(&state).expect("to_json")).expect("from_json");
    let yaml = to_yaml(&via_json).expect("to_yaml");
    assert_eq!(parse_yaml(&yaml, "re-rendered"), state);
}

#[test]
fn json_uses_kubernetes_style_field_names() {
    let json = to_json(&parse_yaml(FULL, "full.yaml")).expect("to_json");
    let value: serde_json::Value = serde_json::from_str(&json).expect("valid JSON");
    let web = &value["services"][0];
    for key in [
        "namespace",
        "name",
        "clusterIPs",
        "externalIPs",
        "loadBalancerIPs",
        "ports",
        "backends",
        "sessionAffinity",
        "externalTrafficPolicy",
        "internalTrafficPolicy",
        "healthCheckNodePort",
        "loadBalancerSourceRanges",
        "backendSelection",
        "externalMode",
    ] {
        assert!(web.get(key).is_some(), "services[0].{key} missing in {web}");
    }
    assert_eq!(web["sessionAffinity"]["type"], "ClientIP");
    assert_eq!(web["sessionAffinity"]["timeoutSeconds"], 10_800);
    assert_eq!(web["ports"][0]["targetPort"], 8080);
    assert_eq!(web["ports"][0]["nodePort"], 30_080);
    assert_eq!(web["ports"][1]["protocol"], "UDP");
    assert_eq!(web["backends"][0]["nodeName"], "node-0");
    assert_eq!(
        value["node"]["masquerade"]["nonMasqueradeCIDRs"][0],
        "192.168.0.0/16"
    );
    assert_eq!(
        value["policies"][0]["ingress"][0]["ports"][0]["port"],
        "http"
    );
    assert_eq!(value["policies"][0]["ingress"][0]["ports"][1]["port"], 8000);
    assert_eq!(value["namespaces"][1]["labels"]["team"], "db");
    let pod = &value["pods"][0];
    assert_eq!(
        (&pod["namespace"], &pod["name"]),
        (&"db".into(), &"pg-0".into())
    );
    assert_eq!(pod["namedPorts"][0]["name"], "pg");
    assert_eq!(pod["nodeName"], "node-b");
    // Absent optional values are left out rather than written as null.
    let api = &value["services"][1];
    assert!(api.get("healthCheckNodePort").is_none(), "{api}");
    assert!(api.get("externalMode").is_none(), "{api}");
    assert!(api["ports"][0].get("nodePort").is_none(), "{api}");
    // States without namespaces or peer pods do not mention them.
    let minimal = to_json(&dataplane_core::DesiredState::new(
        parse_yaml(FULL, "full.yaml").node,
    ))
    .expect("to_json");
    assert!(
        !minimal.contains("namespaces") && !minimal.contains("pods"),
        "{minimal}"
    );
}

#[test]
fn strings_that_look_like_other_types_survive_yaml() {
    let mut state = parse_yaml(FULL, "full.yaml");
    state.services[1].name = ObjectName::new("007", "true");
    state.endpoints[0].labels.insert("null".into(), "~".into());
    state.endpoints[0].labels.insert("yes".into(), "1e3".into());
    state.endpoints[0]
        .labels
        .insert("empty".into(), String::new());
    state.node.interfaces.uplink = "0x10".into();
    assert_eq!(validate(&state), Ok(()));
    assert_round_trips(&state);
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(96))]

    #[test]
    fn generated_states_are_valid(state in strategies::state()) {
        if let Err(e) = validate(&state) {
            return Err(TestCaseError::fail(format!("generator produced an invalid state: {e}")));
        }
    }

    #[test]
    fn generated_states_round_trip_through_yaml(state in strategies::state()) {
        let yaml = to_yaml(&state).expect("to_yaml");
        let back = from_yaml(&yaml);
        prop_assert!(back.is_ok(), "re-reading failed: {:?}\n{}", back.err(), yaml);
        prop_assert_eq!(back.ok(), Some(state), "{}", yaml);
    }

    #[test]
    fn generated_states_round_trip_through_json(state in strategies::state()) {
        let json = to_json(&state).expect("to_json");
        let back = from_json(&json);
        prop_assert!(back.is_ok(), "re-reading failed: {:?}\n{}", back.err(), json);
        prop_assert_eq!(back.ok(), Some(state), "{}", json);
    }

    #[test]
    fn yaml_and_json_agree(state in strategies::state()) {
        let via_yaml = from_yaml(&to_yaml(&state).expect("to_yaml")).expect("from_yaml");
        let via_json = from_json(&to_json(&state).expect("to_json")).expect("from_json");
        prop_assert_eq!(via_yaml, via_json);
    }
}

#[test]
fn format_errors_keep_the_message_and_the_cause() {
    use std::error::Error as _;
    let yaml = from_yaml("apiVersion: [").expect_err("not yaml");
    assert!(matches!(yaml, FormatError::Yaml { .. }), "{yaml:?}");
    assert!(yaml.to_string().starts_with("yaml: "), "{yaml}");
    assert!(!yaml.to_string().contains('\n'), "one line: {yaml}");
    let cause = yaml.source().expect("the parser's error is the source");
    assert!(
        yaml.to_string().contains(
            &cause
                .to_string()
                .split_whitespace()
                .collect::<Vec<_>>()
                .join(" ")
        ),
        "{yaml} / {cause}"
    );
    let json = from_json("{").expect_err("not json");
    assert!(matches!(json, FormatError::Json { .. }), "{json:?}");
    assert!(json.to_string().starts_with("json: EOF"), "{json}");
    assert!(json.source().is_some());
}

/// A NetworkPolicy written as Kubernetes writes it: rules with `from` / `to`, and the e2e
/// suite's namespace names (`y` and `n` are booleans in YAML 1.1, strings here as in
/// Kubernetes' string fields); `yes` where a boolean is expected is refused, not guessed.
#[test]
fn policy_example_reads_kubernetes_spelling() {
    let state = parse_yaml(&read_example("policy.yaml"), "policy.yaml");
    assert_eq!(state.namespaces[1].labels["ns"], "y");
    assert_eq!(state.pods[0].name, ObjectName::new("y", "b"));
    let ingress = &state.policies[0].ingress[0];
    assert_eq!(ingress.peers.len(), 1, "`from` is read as the rule's peers");
    assert!(ingress.peers[0].namespace_selector.is_some());
    assert!(ingress.peers[0].pod_selector.is_some());
    let egress = &state.policies[1].egress;
    assert_eq!(
        (egress[0].peers.len(), egress[1].peers.len()),
        (0, 1),
        "`to` too"
    );
    // Written back, `y` stays a string.
    assert_round_trips(&state);
    let bad = read_example("minimal.yaml").replace(
        "backends: [{ ip: 10.244.0.5, nodeName: node-0 }]",
        "backends: [{ ip: 10.244.0.5, nodeName: node-0, ready: yes }]",
    );
    assert!(
        from_yaml(&bad).is_err(),
        "`ready: yes` is no YAML 1.2 boolean"
    );
}
