//! The table without traffic: every probe's expectation comes from the reference model and
//! is what the case means, and each dropped probe is dropped by the case's host policy.

use std::collections::BTreeSet;

use dataplane_core::{IpFamily, Protocol};

use super::case::{HostCase, Meaning, Party, Target};
use super::runner::{check_case, expectation, step_states, PROBE_PORTS};
use super::table::{node_states, servers};
use super::{host_cases, CLIENT_A, HOST_LAB, HOST_SERVICE_PORT, NODE, UPSTREAM};

const BOTH: [IpFamily; 2] = [IpFamily::V4, IpFamily::V6];

fn case(name: &str) -> HostCase {
    host_cases()
        .into_iter()
        .find(|c| c.name == name)
        .unwrap_or_else(|| panic!("no case {name}"))
}

#[test]
fn the_host_cases_say_what_the_reference_model_says() {
    for case in host_cases() {
        let problems = check_case(HOST_LAB, &case, &BOTH);
        assert!(problems.is_empty(), "{}: {problems:#?}", case.name);
    }
}

#[test]
fn a_wrong_meaning_is_a_table_failure() {
    // Every probe of every case, its meaning flipped, alone: the check must catch each one.
    for case in host_cases() {
        for s in 0..case.steps.len() {
            for p in 0..case.steps[s].probes.len() {
                let mut wrong = case.clone();
                let probe = &mut wrong.steps[s].probes[p];
                probe.meaning = match probe.meaning {
                    Meaning::Answered => Meaning::Dropped,
                    Meaning::Dropped => Meaning::Answered,
                };
                assert!(
                    !check_case(HOST_LAB, &wrong, &BOTH).is_empty(),
                    "{} step {}: {} flipped went unnoticed",
                    case.name,
                    s + 1,
                    wrong.steps[s].probes[p]
                );
            }
        }
    }
}

#[test]
fn each_dropped_probe_is_dropped_by_the_host_policy() {
    // Without node-0's host endpoint (the warm-up state) every probe of the table is answered:
    // a drop is the policy's doing, not the lab's.
    let open = node_states(HOST_LAB, None);
    for case in host_cases() {
        for step in &case.steps {
            for probe in step.probes.iter().chain(&step.hold) {
                for family in BOTH {
                    assert_eq!(
                        expectation(HOST_LAB, &open, probe, family),
                        Ok(Meaning::Answered),
                        "{}: {probe} ({family:?}) without host endpoint",
                        case.name
                    );
                }
            }
        }
    }
}

#[test]
fn every_case_answers_and_drops_in_both_protocols() {
    let mut names = BTreeSet::new();
    for case in host_cases() {
        assert!(names.insert(case.name.clone()), "{} twice", case.name);
        assert!(
            case.source.contains("Calico"),
            "{}: cite the Calico page",
            case.name
        );
        let probes: Vec<_> = case.steps.iter().flat_map(|s| &s.probes).collect();
        for meaning in [Meaning::Answered, Meaning::Dropped] {
            for protocol in [Protocol::Tcp, Protocol::Udp] {
                assert!(
                    probes
                        .iter()
                        .any(|p| p.meaning == meaning && p.protocol == protocol),
                    "{}: no {protocol} probe meant {meaning:?}",
                    case.name
                );
            }
        }
    }
}

#[test]
fn the_return_rule_decides_the_untracked_allow() {
    let c = case("untracked-allow-return-rule");
    let [without, with] = [&c.steps[0], &c.steps[1]].map(|s| step_states(HOST_LAB, Some(s)));
    let probe = c.steps[1]
        .probes
        .iter()
        .find(|p| p.from == Party::External(CLIENT_A) && p.untracked)
        .expect("client A's untracked probe");
    for family in BOTH {
        assert_eq!(
            expectation(HOST_LAB, &without, probe, family),
            Ok(Meaning::Dropped)
        );
        assert_eq!(
            expectation(HOST_LAB, &with, probe, family),
            Ok(Meaning::Answered)
        );
    }
}

#[test]
fn the_run_fits_its_source_ports_and_serves_every_probed_port() {
    let cases = host_cases();
    // Warm-up (three tries at most), each step twice (a re-probe of everything, at worst),
    // its held connections: both families.
    let probes: usize = cases
        .iter()
        .flat_map(|c| &c.steps)
        .map(|s| 2 * s.probes.len() + s.hold.len())
        .sum::<usize>()
        * 2;
    let warm_up = 3
        * 2
        * cases
            .iter()
            .flat_map(|c| &c.steps)
            .map(|s| s.probes.len() + s.hold.len())
            .sum::<usize>();
    assert!(probes + warm_up < PROBE_PORTS.len(), "{probes} + {warm_up}");
    let served = servers(&cases);
    for port in [22, 6443, HOST_SERVICE_PORT] {
        assert!(served.contains(&(Party::Node(NODE), port)), "node-0:{port}");
    }
    for port in [53, 6443, HOST_SERVICE_PORT] {
        assert!(
            served.contains(&(Party::External(UPSTREAM), port)),
            "upstream:{port}"
        );
    }
    assert!(served.iter().all(|(_, port)| !PROBE_PORTS.contains(port)));
    let _ = Target::ClusterIp;
}
