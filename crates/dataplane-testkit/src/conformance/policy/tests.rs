//! The table without traffic: every case's matrices come from the reference model, agree
//! between the nodes, and mean what the cases say.

use std::collections::BTreeSet;
use std::time::Duration;

use dataplane_core::Protocol::{Sctp, Tcp, Udp};
use dataplane_core::{validate, IpFamily, Protocol};

use super::layout::{node_states, pod_index, World, POD_COUNT};
use super::runner::{
    cells, cells_with, client_name, expectations, ports_needed, probe_ports, reprobes, spoof_cells,
    spoof_expectation, take_port, truth_tables, Cell, Forged, Path, CLIENT_COUNT, SINK_PORT,
    SPOOF_TARGET,
};
use super::{policy_cases, PolicyCase, Step, POLICY_LAB};
use crate::traffic::{BatchOutcome, ProbeOutcome};

/// The families of the dual-stack lab.
const BOTH: [IpFamily; 2] = [IpFamily::V4, IpFamily::V6];

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
            let (expected, errors) = expectations(&states, &cells_with(&BOTH, case.sctp));
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

/// Whether `matrix` allows `client` to reach `server` on `protocol`/`port` by `path`, in
/// IPv4.
fn allowed(
    matrix: &[bool],
    client: &str,
    server: &str,
    protocol: Protocol,
    port: u16,
    path: Path,
) -> bool {
    allowed_in(IpFamily::V4, matrix, client, server, protocol, port, path)
}

/// [`allowed`] in `family`.
fn allowed_in(
    family: IpFamily,
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
        family,
    };
    // A case with SCTP cells has the longer matrix.
    let all = cells_with(&BOTH, matrix.len() > cells(&BOTH).len());
    let i = all.iter().position(|c| *c == wanted).unwrap();
    matrix[i]
}

#[test]
fn the_matrix_has_every_cell_once() {
    let all = cells(&BOTH);
    assert_eq!(all.len(), CLIENT_COUNT * 2 * POD_COUNT * 2 * 2 * 2);
    let distinct: BTreeSet<String> = all.iter().map(ToString::to_string).collect();
    assert_eq!(distinct.len(), all.len());
}

#[test]
fn sctp_cells_are_direct_and_come_on_top_of_the_tcp_and_udp_ones() {
    let plain = cells(&BOTH);
    let with = cells_with(&BOTH, true);
    assert_eq!(with.len(), plain.len() + CLIENT_COUNT * 2 * POD_COUNT * 2);
    let sctp: Vec<&Cell> = with.iter().filter(|c| c.protocol == Sctp).collect();
    assert!(sctp.iter().all(|c| c.path == Path::Direct));
    assert!(plain.iter().all(|c| with.contains(c)));
    let distinct: BTreeSet<String> = with.iter().map(ToString::to_string).collect();
    assert_eq!(distinct.len(), with.len());
}

#[test]
fn the_sctp_cells_say_what_the_cases_mean() {
    use Path::Direct;
    let cases = policy_cases();
    let with_sctp: Vec<&str> = cases
        .iter()
        .filter(|c| c.sctp)
        .map(|c| c.name.as_str())
        .collect();
    assert_eq!(
        with_sctp,
        [
            "sctp-only-port",
            "tcp-only-port-denies-sctp",
            "sctp-egress-port"
        ]
    );
    for family in BOTH {
        let at = |m: &[bool], client, server, protocol, port| {
            allowed_in(family, m, client, server, protocol, port, Direct)
        };
        // Ingress allows SCTP/80 only: SCTP/81 and TCP/UDP on 80 denied (fail closed).
        let m = &matrices(&case("sctp-only-port"))[0];
        assert!(at(m, "y/a", "x/a", Sctp, 80));
        assert!(at(m, "node-1", "x/a", Sctp, 80));
        assert!(!at(m, "y/a", "x/a", Sctp, 81));
        assert!(!at(m, "y/a", "x/a", Tcp, 80));
        assert!(!at(m, "y/a", "x/a", Udp, 80));
        assert!(at(m, "y/a", "x/b", Sctp, 81), "x/b is not isolated");
        // Ingress allows TCP/80: SCTP/80 denied.
        let m = &matrices(&case("tcp-only-port-denies-sctp"))[0];
        assert!(at(m, "z/c", "x/a", Tcp, 80));
        assert!(!at(m, "z/c", "x/a", Sctp, 80));
        assert!(!at(m, "z/c", "x/a", Sctp, 81));
        assert!(at(m, "z/c", "x/b", Sctp, 80), "x/b is not isolated");
        // Egress of x allows SCTP/81 only.
        let m = &matrices(&case("sctp-egress-port"))[0];
        assert!(at(m, "x/b", "z/c", Sctp, 81));
        assert!(!at(m, "x/b", "z/c", Sctp, 80));
        assert!(!at(m, "x/b", "z/c", Tcp, 81));
        assert!(!at(m, "x/b", "z/c", Udp, 81));
        assert!(at(m, "y/a", "z/c", Sctp, 80), "y's egress is open");
    }
}

#[test]
fn every_case_is_sound_and_has_allowed_and_denied_cells() {
    let cases = policy_cases();
    assert!(cases.len() >= 30, "{} cases", cases.len());
    let names: BTreeSet<&str> = cases.iter().map(|c| c.name.as_str()).collect();
    assert_eq!(names.len(), cases.len(), "case names are unique");
    assert!(cases.iter().filter(|c| c.family == IpFamily::V6).count() >= 2);
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

    // SCTP-only isolates TCP and UDP.
    let m = &matrices(&case("sctp-only-port"))[0];
    assert!(!allowed(m, "y/a", "x/a", Tcp, 80, Direct));
    assert!(!allowed(m, "y/a", "x/a", Udp, 80, Direct));

    // ipBlock except, across nodes: node-1's pods excluded.
    let m = &matrices(&case("ip-block-except-egress"))[0];
    assert!(allowed(m, "x/a", "y/b", Tcp, 80, Direct));
    assert!(!allowed(m, "x/a", "y/c", Tcp, 80, Direct));
    assert!(!allowed(m, "x/a", "z/a", Udp, 81, ClusterIp));
    let m = &matrices(&case("ip-block-except-egress-ipv6"))[0];
    assert!(allowed_in(
        IpFamily::V6,
        m,
        "x/a",
        "y/b",
        Tcp,
        80,
        ClusterIp
    ));
    assert!(!allowed_in(IpFamily::V6, m, "x/a", "z/a", Tcp, 80, Direct));
    assert!(
        !allowed(m, "x/a", "y/b", Tcp, 80, ClusterIp),
        "an IPv6 ipBlock matches no IPv4 address"
    );

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
fn named_ports_resolve_on_the_destination_and_every_case_has_ipv6_cells() {
    use Path::{ClusterIp, Direct};
    // Named ports resolve on the destination: z/c's serve-80-tcp is 81, everyone else's 80
    // (resolving on the client or to a fixed number gets z/c wrong).
    let m = &matrices(&case("named-port-egress"))[0];
    assert!(allowed(m, "x/b", "z/b", Tcp, 80, ClusterIp));
    assert!(!allowed(m, "x/b", "z/b", Tcp, 81, Direct));
    assert!(allowed(m, "x/b", "z/c", Tcp, 81, ClusterIp));
    assert!(allowed(m, "x/b", "z/c", Tcp, 81, Direct));
    assert!(!allowed(m, "x/b", "z/c", Tcp, 80, Direct));
    assert!(!allowed(m, "x/b", "z/c", Tcp, 80, ClusterIp));
    assert!(!allowed(m, "x/b", "z/c", Udp, 80, Direct));
    assert!(allowed_in(IpFamily::V6, m, "x/b", "z/c", Tcp, 81, Direct));
    assert!(!allowed_in(IpFamily::V6, m, "x/b", "z/c", Tcp, 80, Direct));
    // Every case in both families: egress isolation in IPv6 too.
    let m = &matrices(&case("default-deny-egress"))[0];
    assert!(!allowed_in(IpFamily::V6, m, "x/a", "y/a", Tcp, 80, Direct));
    assert!(!allowed_in(
        IpFamily::V6,
        m,
        "x/a",
        "z/c",
        Udp,
        81,
        ClusterIp
    ));
    assert!(allowed_in(
        IpFamily::V6,
        m,
        "y/a",
        "x/a",
        Udp,
        81,
        ClusterIp
    ));
    assert!(allowed_in(
        IpFamily::V6,
        m,
        "node-0",
        "x/a",
        Tcp,
        80,
        Direct
    ));
    let m = &matrices(&case("ip-block-except-egress"))[0];
    assert!(
        !allowed_in(IpFamily::V6, m, "x/a", "y/b", Tcp, 80, Direct),
        "an IPv4 ipBlock matches no IPv6 address"
    );
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
    let all = cells(&BOTH);
    let expected: Vec<bool> = all.iter().map(|c| c.server != 0).collect();
    let answer = |c: &Cell| answered(c, Duration::ZERO);
    let mut outcomes: Vec<BatchOutcome> = all
        .iter()
        .zip(&expected)
        .map(|(c, a)| if *a { answer(c) } else { TIMEOUT })
        .collect();
    assert!(truth_tables(&all, &expected, &outcomes).is_empty());
    // One cell answered where denied: one table, with `!` in that cell and `X` elsewhere.
    let wrong = all
        .iter()
        .position(|c| {
            c.server == 0 && c.client == 3 && c.path == Path::ClusterIp && c.family == IpFamily::V6
        })
        .unwrap();
    outcomes[wrong] = answer(&all[wrong]);
    let tables = truth_tables(&all, &expected, &outcomes);
    assert_eq!(tables.len(), 1, "{tables:#?}");
    let table = &tables[0];
    assert!(table.starts_with("IPv6 TCP/80 via ClusterIP"), "{table}");
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
    let (_, errors) = expectations(&states, &cells(&[IpFamily::V4]));
    assert!(
        errors
            .iter()
            .any(|e| e.starts_with("y/c -> x/a") && e.contains("policy_allows is")),
        "{errors:#?}"
    );
}

const TIMEOUT: BatchOutcome = BatchOutcome::Ended(ProbeOutcome::Timeout);

fn answered(cell: &Cell, latency: Duration) -> BatchOutcome {
    BatchOutcome::Ended(ProbeOutcome::Answered {
        backend: super::layout::pod_name(cell.server),
        seen_source: "10.244.0.10:1".parse().unwrap(),
        latency,
        local: "10.244.0.10:1".parse().unwrap(),
    })
}

#[test]
fn a_connected_probe_is_never_a_drop() {
    let all = cells(&BOTH);
    let expected: Vec<bool> = all.iter().map(|c| c.server != 0).collect();
    let mut outcomes: Vec<BatchOutcome> = all
        .iter()
        .zip(&expected)
        .map(|(c, a)| {
            if *a {
                answered(c, Duration::ZERO)
            } else {
                TIMEOUT
            }
        })
        .collect();
    let denied = expected.iter().position(|a| !*a).unwrap();
    outcomes[denied] = BatchOutcome::Connected;
    let tables = truth_tables(&all, &expected, &outcomes);
    assert_eq!(
        tables.len(),
        1,
        "a denied cell that connected fails: {tables:#?}"
    );
    assert!(
        reprobes(&expected, &outcomes, Duration::from_millis(500)).is_empty(),
        "and is not asked again"
    );
}

#[test]
fn unanswered_allowed_cells_and_slow_batches_are_probed_again() {
    let all = cells(&BOTH);
    let expected: Vec<bool> = all.iter().map(|c| c.server != 0).collect();
    let wait = Duration::from_millis(500);
    let fast: Vec<BatchOutcome> = all
        .iter()
        .zip(&expected)
        .map(|(c, a)| if *a { answered(c, wait / 10) } else { TIMEOUT })
        .collect();
    assert!(
        reprobes(&expected, &fast, wait).is_empty(),
        "all as expected"
    );

    // An allowed UDP cell unanswered, an allowed TCP cell connected but unanswered: both
    // again; the denied cells' drops stand (the batch was fast).
    let mut outcomes = fast.clone();
    let udp = (0..all.len())
        .find(|i| expected[*i] && all[*i].protocol == Udp)
        .unwrap();
    let tcp = (0..all.len())
        .find(|i| expected[*i] && all[*i].protocol == Tcp)
        .unwrap();
    outcomes[udp] = TIMEOUT;
    outcomes[tcp] = BatchOutcome::Connected;
    assert_eq!(
        reprobes(&expected, &outcomes, wait),
        vec![tcp.min(udp), tcp.max(udp)]
    );

    // One allowed answer slower than half the drop wait: every denied cell that timed out
    // is asked again (with the full timeout), not passed.
    let mut outcomes = fast;
    outcomes[udp] = answered(&all[udp], wait / 2 + Duration::from_millis(1));
    let again = reprobes(&expected, &outcomes, wait);
    let denied: Vec<usize> = (0..all.len()).filter(|i| !expected[*i]).collect();
    assert_eq!(again, denied);
}

#[test]
fn source_ports_cannot_wrap_and_nodes_never_share_them_with_pods() {
    let pods = probe_ports(0);
    let nodes = probe_ports(CLIENT_COUNT - 1);
    assert_eq!(probe_ports(POD_COUNT), nodes, "node-0 counts with node-1");
    assert!(
        pods.end <= nodes.start || nodes.end <= pods.start,
        "{pods:?} {nodes:?}"
    );
    assert!(nodes.end <= 30_000, "below the NodePort range");
    // Counting steps over the lab's server port, and stops at the end of the range.
    let mut next = crate::lab::SERVER_PORT - 1;
    assert_eq!(take_port(&mut next, 0), Ok(crate::lab::SERVER_PORT - 1));
    assert_eq!(take_port(&mut next, 0), Ok(crate::lab::SERVER_PORT + 1));
    let mut next = nodes.end - 1;
    assert_eq!(take_port(&mut next, POD_COUNT), Ok(nodes.end - 1));
    let e = take_port(&mut next, POD_COUNT).unwrap_err();
    assert!(e.contains("node-0 used all its source ports"), "{e}");
    assert!(
        take_port(&mut next, POD_COUNT).is_err(),
        "and stays so: no wrap"
    );
    // What a backend without cluster policy runs (every kernel dataplane today).
    let without_cluster: Vec<PolicyCase> = policy_cases()
        .into_iter()
        .filter(|c| !c.needs_cluster_policy())
        .collect();
    let needed = ports_needed(&without_cluster, &BOTH);
    let have = pods.len().min(nodes.len());
    // A quarter left for re-probes (loss under load, slow batches).
    assert!(
        needed * 5 / 4 <= have,
        "{needed} source ports needed per client, {have} in a range"
    );
    // Every case: still no wrap, with less room for re-probes (enlarge the ranges, or
    // reuse ports across cases, before a backend with cluster policy meets many losses).
    let needed = ports_needed(&policy_cases(), &BOTH);
    assert!(
        needed <= have,
        "{needed} source ports needed per client, {have} in a range"
    );
}

#[test]
fn forged_sources_are_dropped_with_policies_though_the_target_would_accept_them() {
    let spoofs = spoof_cells(&BOTH);
    assert_eq!(spoofs.len(), 6, "{spoofs:?}");
    assert!(
        spoofs
            .iter()
            .all(|s| s.family == IpFamily::V6 || matches!(s.forged, Forged::Pod(_))),
        "no IPv4 node address: the kernel drops it as a martian"
    );
    let case = case("anti-spoofing");
    assert!(case.forged, "the case sends the forged datagrams");
    let mut world = World::initial();
    let open = node_states(POLICY_LAB, &world);
    for spoof in &spoofs {
        let (received, _) = spoof_expectation(&open, *spoof).unwrap();
        assert!(received, "{spoof}: no policy, no anti-spoofing");
    }
    case.steps[0].apply_to(&mut world).unwrap();
    let states = node_states(POLICY_LAB, &world);
    let target = states[1]
        .endpoints
        .iter()
        .find(|e| e.name.to_string() == "z/c")
        .unwrap();
    for spoof in &spoofs {
        let (received, source) = spoof_expectation(&states, *spoof).unwrap();
        assert!(!received, "{spoof}: anti-spoofing");
        // The target would take the forged source: only the source check stops it.
        let to = target
            .ips
            .iter()
            .copied()
            .find(|ip| IpFamily::of(ip) == spoof.family)
            .unwrap();
        let accepted = dataplane_core::policy_allows(&states[1], source, to, Udp, SINK_PORT)
            || states[1].node.addresses.contains(&source);
        assert!(accepted, "{spoof}");
        assert_eq!(super::layout::pod_name(SPOOF_TARGET), "z/c");
    }
}

/// Issue 22's rows for the reference model: the baseline applies only where nothing else
/// decided, a cluster Deny beats a NetworkPolicy Allow, Pass defers to NetworkPolicy.
#[test]
fn the_cluster_policy_matrices_say_what_the_cases_mean() {
    use Path::{ClusterIp, Direct};
    let m = matrices(&case("cluster-tiers"));
    // 1: the baseline denies y, and nothing else decides.
    assert!(
        !allowed(&m[0], "y/a", "x/b", Tcp, 80, Direct),
        "the baseline denies y"
    );
    assert!(!allowed(&m[0], "y/a", "z/b", Tcp, 80, ClusterIp));
    assert!(!allowed(&m[0], "y/a", "y/b", Udp, 81, Direct));
    assert!(
        allowed(&m[0], "z/a", "x/b", Tcp, 80, Direct),
        "z is no peer of the rule"
    );
    assert!(
        allowed(&m[0], "node-0", "y/b", Tcp, 80, Direct),
        "the node reaches its pods"
    );
    // 2: x is isolated by its NetworkPolicy, which decides; z is not.
    assert!(
        allowed(&m[1], "y/a", "x/b", Tcp, 80, Direct),
        "x's policy allows all"
    );
    assert!(
        !allowed(&m[1], "y/a", "z/b", Tcp, 80, Direct),
        "the baseline still decides"
    );
    // 3: the cluster Deny beats the NetworkPolicy's Allow.
    assert!(!allowed(&m[2], "y/b", "x/a", Tcp, 80, Direct));
    assert!(!allowed(&m[2], "y/a", "x/c", Udp, 81, ClusterIp));
    assert!(
        allowed(&m[2], "z/a", "x/a", Tcp, 80, Direct),
        "z is no peer of the rule"
    );
    assert!(allowed(&m[2], "node-1", "x/a", Tcp, 80, Direct));
    // 4: a Pass before the Deny hands y -> x back to the NetworkPolicy.
    assert!(allowed(&m[3], "y/b", "x/a", Tcp, 80, Direct));
    assert!(allowed(&m[3], "y/a", "x/c", Udp, 81, ClusterIp));
    assert!(
        !allowed(&m[3], "y/a", "z/b", Tcp, 80, Direct),
        "the baseline for z"
    );
}

#[test]
fn cluster_cases_are_marked_for_the_capability() {
    let marked: Vec<String> = policy_cases()
        .into_iter()
        .filter(PolicyCase::needs_cluster_policy)
        .map(|c| c.name)
        .collect();
    assert_eq!(marked, ["cluster-tiers"]);
}
