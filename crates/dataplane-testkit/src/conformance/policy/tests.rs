//! The table without traffic: every case's matrices come from the reference model, agree
//! between the nodes, and mean what the cases say.

use std::collections::BTreeSet;

use dataplane_core::Protocol::{Tcp, Udp};
use dataplane_core::{validate, IpFamily, Protocol};

use super::layout::{node_states, pod_index, World, POD_COUNT};
use super::runner::{cells, client_name, expectations, truth_tables, Cell, Path, CLIENT_COUNT};
use super::{policy_cases, PolicyCase, Step, POLICY_LAB};
use crate::traffic::ProbeOutcome;

/// The expected matrix after each step of `case`.
fn matrices(case: &PolicyCase) -> Vec<Vec<bool>> {
    let mut world = World::initial();
    case.steps
        .iter()
        .map(|step| {
            step.apply_to(&mut world)
                .unwrap_or_else(|e| panic!("{}: {e}", case.name));
            let states = node_states(POLICY_LAB, &world);
            for s in &states {
                validate(s).unwrap_or_else(|e| panic!("{}: {e}", case.name));
            }
            let (expected, errors) = expectations(&states, case.family);
            assert!(errors.is_empty(), "{}: {errors:#?}", case.name);
            expected
        })
        .collect()
}

fn case(name: &str) -> PolicyCase {
    policy_cases()
        .into_iter()
        .find(|c| c.name == name)
        .unwrap_or_else(|| panic!("no case {name}"))
}

/// Whether `matrix` allows `client` to reach `server` on `protocol`/`port` by `path`.
fn allowed(
    matrix: &[bool],
    client: &str,
    server: &str,
    protocol: Protocol,
    port: u16,
    path: Path,
) -> bool {
    let wanted = Cell {
        client: (0..CLIENT_COUNT)
            .find(|k| client_name(*k) == client)
            .unwrap(),
        server: pod_index(server).unwrap(),
        protocol,
        port,
        path,
    };
    let i = cells().iter().position(|c| *c == wanted).unwrap();
    matrix[i]
}

#[test]
fn the_matrix_has_every_cell_once() {
    let all = cells();
    assert_eq!(all.len(), CLIENT_COUNT * POD_COUNT * 2 * 2 * 2);
    let distinct: BTreeSet<String> = all.iter().map(ToString::to_string).collect();
    assert_eq!(distinct.len(), all.len());
}

#[test]
fn every_case_is_sound_and_has_allowed_and_denied_cells() {
    let cases = policy_cases();
    assert!(cases.len() >= 30, "{} cases", cases.len());
    let names: BTreeSet<&str> = cases.iter().map(|c| c.name.as_str()).collect();
    assert_eq!(names.len(), cases.len(), "case names are unique");
    assert!(cases.iter().filter(|c| c.family == IpFamily::V6).count() >= 3);
    for case in &cases {
        assert!(!case.steps.is_empty(), "{}", case.name);
        let all: Vec<bool> = matrices(case).into_iter().flatten().collect();
        let open = all.iter().all(|a| *a);
        if case.name == "no-policies" {
            assert!(open, "without policies everything is allowed");
        } else {
            assert!(!open, "{}: nothing is denied", case.name);
            assert!(
                all.iter().any(|a| !*a) && all.iter().any(|a| *a),
                "{}",
                case.name
            );
        }
    }
}

#[test]
fn the_matrices_say_what_the_cases_mean() {
    use Path::{ClusterIp, Direct};
    let m = &matrices(&case("default-deny-ingress"))[0];
    assert!(!allowed(m, "y/a", "x/a", Tcp, 80, Direct));
    assert!(!allowed(m, "x/b", "x/a", Udp, 81, ClusterIp));
    assert!(
        allowed(m, "x/a", "y/a", Tcp, 80, ClusterIp),
        "egress is open"
    );
    assert!(
        allowed(m, "x/a", "x/a", Tcp, 80, ClusterIp),
        "a pod reaches itself"
    );
    assert!(allowed(m, "z/c", "y/a", Udp, 80, Direct));
    // The node reaches its own pods whatever the policy (kubelet probes); another node is
    // just another address.
    assert!(allowed(m, "node-0", "x/a", Tcp, 80, Direct));
    assert!(allowed(m, "node-0", "x/b", Udp, 81, ClusterIp));
    assert!(!allowed(m, "node-1", "x/a", Tcp, 80, Direct));
    assert!(!allowed(m, "node-1", "x/c", Udp, 80, ClusterIp));
    assert!(
        allowed(m, "node-1", "z/a", Tcp, 81, ClusterIp),
        "z is not isolated"
    );

    let m = &matrices(&case("pod-and-namespace-selector"))[0];
    assert!(allowed(m, "y/b", "x/a", Tcp, 80, Direct));
    assert!(allowed(m, "z/b", "x/a", Udp, 81, ClusterIp));
    assert!(
        !allowed(m, "x/b", "x/a", Tcp, 80, Direct),
        "namespace x excluded"
    );
    assert!(!allowed(m, "y/a", "x/a", Tcp, 80, Direct), "pod a excluded");
    let m = &matrices(&case("pod-or-namespace-selector"))[0];
    assert!(allowed(m, "x/b", "x/a", Tcp, 80, Direct));
    assert!(allowed(m, "y/a", "x/a", Tcp, 80, Direct));
    assert!(!allowed(m, "x/c", "x/a", Tcp, 80, Direct));

    // After DNAT: egress to pod y/b on port 80 allows its ClusterIP; an ipBlock of the
    // service CIDR allows no service at all.
    let m = &matrices(&case("egress-to-a-service-after-dnat"))[0];
    assert!(allowed(m, "x/a", "y/b", Tcp, 80, ClusterIp));
    assert!(allowed(m, "x/a", "y/b", Udp, 80, Direct));
    assert!(!allowed(m, "x/a", "y/b", Tcp, 81, ClusterIp));
    assert!(!allowed(m, "x/a", "y/a", Tcp, 80, ClusterIp));
    let m = &matrices(&case("egress-ip-block-of-the-service-cidr"))[0];
    assert!(!allowed(m, "x/a", "y/b", Tcp, 80, ClusterIp));
    assert!(!allowed(m, "x/a", "x/b", Udp, 81, Direct));

    // Named ports resolve on the destination; SCTP-only isolates TCP and UDP.
    let m = &matrices(&case("named-port-egress"))[0];
    assert!(allowed(m, "x/b", "z/c", Tcp, 80, ClusterIp));
    assert!(!allowed(m, "x/b", "z/c", Tcp, 81, Direct));
    assert!(!allowed(m, "x/b", "z/c", Udp, 80, Direct));
    let m = &matrices(&case("sctp-only-port"))[0];
    assert!(!allowed(m, "y/a", "x/a", Tcp, 80, Direct));
    assert!(!allowed(m, "y/a", "x/a", Udp, 80, Direct));

    // ipBlock except, across nodes: node-1's pods excluded.
    let m = &matrices(&case("ip-block-except-egress"))[0];
    assert!(allowed(m, "x/a", "y/b", Tcp, 80, Direct));
    assert!(!allowed(m, "x/a", "y/c", Tcp, 80, Direct));
    assert!(!allowed(m, "x/a", "z/a", Udp, 81, ClusterIp));
    let m = &matrices(&case("ip-block-except-egress-ipv6"))[0];
    assert!(allowed(m, "x/a", "y/b", Tcp, 80, ClusterIp));
    assert!(!allowed(m, "x/a", "z/a", Tcp, 80, Direct));

    // Updates: a namespace relabelled in and out; policies deleted.
    let steps = matrices(&case("updated-namespace"));
    assert!(!allowed(&steps[0], "y/a", "x/a", Tcp, 80, Direct));
    assert!(allowed(&steps[1], "y/a", "x/a", Tcp, 80, Direct));
    assert!(!allowed(&steps[1], "z/a", "x/a", Tcp, 80, Direct));
    assert!(!allowed(&steps[2], "y/a", "x/a", Tcp, 80, Direct));
    let steps = matrices(&case("policy-deleted"));
    assert!(allowed(&steps[0], "y/a", "x/a", Tcp, 80, Direct));
    assert!(!allowed(&steps[0], "y/a", "x/b", Tcp, 80, Direct));
    assert!(
        !allowed(&steps[1], "z/a", "x/a", Tcp, 80, Direct),
        "a still isolated"
    );
    assert!(
        allowed(&steps[1], "y/a", "x/b", Tcp, 80, Direct),
        "b open again"
    );
    assert!(
        allowed(&steps[1], "x/b", "z/a", Udp, 81, Direct),
        "egress open again"
    );
    assert!(steps[2].iter().all(|a| *a), "open again");
}

#[test]
fn steps_name_what_is_missing() {
    let mut world = World::initial();
    let e = Step::label_pod("q/a", "k", "v")
        .apply_to(&mut world)
        .unwrap_err();
    assert!(e.contains("q/a"), "{e}");
    let e = Step::delete("x", "nope").apply_to(&mut world).unwrap_err();
    assert!(e.contains("x/nope"), "{e}");
    let e = Step::label_namespace("w", "k", "v")
        .apply_to(&mut world)
        .unwrap_err();
    assert!(e.contains("\"w\""), "{e}");
}

#[test]
fn truth_tables_show_only_slices_with_wrong_cells() {
    let all = cells();
    let expected: Vec<bool> = all.iter().map(|c| c.server != 0).collect();
    let answer = |c: &Cell| ProbeOutcome::Answered {
        backend: super::layout::pod_name(c.server),
        seen_source: "10.244.0.10:1".parse().unwrap(),
        latency: std::time::Duration::ZERO,
        local: "10.244.0.10:1".parse().unwrap(),
    };
    let mut outcomes: Vec<ProbeOutcome> = all
        .iter()
        .zip(&expected)
        .map(|(c, a)| if *a { answer(c) } else { ProbeOutcome::Timeout })
        .collect();
    assert!(truth_tables(&all, &expected, &outcomes).is_empty());
    // One cell answered where denied: one table, with `!` in that cell and `X` elsewhere.
    let wrong = all
        .iter()
        .position(|c| c.server == 0 && c.client == 3 && c.path == Path::ClusterIp)
        .unwrap();
    outcomes[wrong] = answer(&all[wrong]);
    let tables = truth_tables(&all, &expected, &outcomes);
    assert_eq!(tables.len(), 1, "{tables:#?}");
    let table = &tables[0];
    assert!(table.starts_with("TCP/80 via ClusterIP"), "{table}");
    let row = table
        .lines()
        .find(|l| l.trim_start().starts_with("y/a"))
        .unwrap();
    assert_eq!(row.split_whitespace().nth(1), Some("!"), "{table}");
    let row = table
        .lines()
        .find(|l| l.trim_start().starts_with("y/b"))
        .unwrap();
    assert_eq!(row.split_whitespace().nth(1), Some("X"), "{table}");
}

#[test]
fn nodes_that_disagree_are_a_table_failure() {
    // node-1 still has namespace y without the label the policy selects: node-0 (x/a's
    // ingress) and node-1 (y/c's egress) answer differently for y/c -> x/a.
    let mut world = World::initial();
    let case = case("updated-namespace");
    for step in &case.steps[..2] {
        step.apply_to(&mut world).unwrap();
    }
    let mut states = node_states(POLICY_LAB, &world);
    let stale = node_states(POLICY_LAB, &{
        let mut w = world.clone();
        Step::unlabel_namespace("y", "ns2")
            .apply_to(&mut w)
            .unwrap();
        w
    });
    states[1].namespaces.clone_from(&stale[1].namespaces);
    let (_, errors) = expectations(&states, IpFamily::V4);
    assert!(
        errors
            .iter()
            .any(|e| e.starts_with("y/c -> x/a") && e.contains("policy_allows is")),
        "{errors:#?}"
    );
}
