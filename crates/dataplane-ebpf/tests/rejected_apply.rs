//! A refused sync leaves the kernel as it was (issue 21, item 4): after each rejected
//! `apply` / `apply_changes` (a validation error, a capacity error, an uplink that is not
//! there) the pin directory holds the same maps, byte for byte, and the same links, and
//! `observe()` says the same; traffic still follows the old state.
//!
//! ```text
//!   pod-0-0 ──▶ 10.96.0.10:80 (web) ──▶ pod-0-1        served before and after
//!   pod-0-0 ──▶ 10.96.0.11:80 (new) ──▶ pod-0-1        only in the refused states: dropped
//! ```
//!
//! The missing uplink is the regression case: the sync used to write the new state's maps and
//! fail at the attach, so the refused service was served.

mod common;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::Duration;

use common::pins::quiet_snapshot;
use dataplane_core::{diff, Dataplane, DesiredState, Error, Protocol, Service, ValidationError};
use dataplane_ebpf::EbpfDataplane;
use dataplane_testkit::{probe, require_root, Lab, LabSpec, ProbeOutcome};

const WEB: &str = "10.96.0.10";
const NEW: &str = "10.96.0.11";
/// Frontend entries the test's maps hold (`Capacities::services`).
const SERVICE_ENTRIES: u32 = 16;
/// How long a probe waits for an answer before it counts as dropped: bounds a wait, measures
/// nothing.
const PROBE_TIMEOUT: Duration = Duration::from_secs(3);

fn service(lab: &Lab, name: &str, vip: &str) -> Service {
    common::lab_cluster_ip(lab, name, vip, &[1])
}

/// The maps and links of `dir`, without what the programs write per packet (counters, the
/// event rate limiter), which stray packets of the lab could change between two snapshots.
fn kernel_state(dir: &std::path::Path) -> BTreeMap<String, String> {
    let mut s = quiet_snapshot(dir);
    for per_packet in ["dp_stats", "dp_drops", "dp_ev_limit"] {
        assert!(s.remove(per_packet).is_some(), "{per_packet} is pinned");
    }
    s
}

/// One node with two pods, IPv4.
fn lab() -> Lab {
    Lab::new(LabSpec {
        nodes: 1,
        pods_per_node: 2,
        external_clients: 0,
        ipv6: false,
    })
    .expect("lab")
}

fn answered_by(lab: &Lab, vip: &str) -> Option<String> {
    let dst = SocketAddr::new(vip.parse().unwrap(), 80);
    match probe(&lab.pod(0).netns, dst, Protocol::Tcp, PROBE_TIMEOUT).expect("probe runs") {
        ProbeOutcome::Answered { backend, .. } => Some(backend),
        _ => None,
    }
}

#[test]
#[allow(clippy::too_many_lines)] // one scene, read top to bottom
fn a_rejected_apply_leaves_maps_links_and_traffic_as_they_were() {
    if !require_root("a_rejected_apply_leaves_maps_links_and_traffic_as_they_were") {
        return;
    }
    let lab = lab();
    let (pins, mut dp) = common::lab_node_dataplane(&lab, "dpe-rejected", |caps| {
        caps.services = SERVICE_ENTRIES;
    });
    let dir = pins.0[0].clone();
    let mut old = lab.desired_state(0);
    old.services = vec![service(&lab, "web", WEB)];
    dp.apply(&old).expect("apply");
    assert_eq!(answered_by(&lab, WEB).as_deref(), Some("pod-0-1"));
    let maps_before = kernel_state(&dir);
    let observed_before = dp.observe().expect("observe");
    let unchanged = |dp: &EbpfDataplane, what: &str| {
        assert_eq!(
            dp.observe().expect("observe"),
            observed_before,
            "{what}: observe() changed"
        );
        let now = kernel_state(&dir);
        for (name, value) in &maps_before {
            assert_eq!(now.get(name), Some(value), "{what}: {name} changed");
        }
        assert_eq!(now.len(), maps_before.len(), "{what}: pins added");
    };

    // A validation error: a second service on web's frontend.
    let mut clash = old.clone();
    clash.services.push(service(&lab, "clash", WEB));
    let e = dp.apply(&clash).unwrap_err();
    assert!(
        matches!(e, Error::Invalid(ValidationError::DuplicateFrontend { .. })),
        "{e:?}"
    );
    unchanged(&dp, "validation error (apply)");
    let e = dp.apply_changes(&diff(&old, &clash)).unwrap_err();
    assert!(matches!(e, Error::Invalid(_)), "{e:?}");
    unchanged(&dp, "validation error (apply_changes)");

    // A capacity error: more frontend entries than the map holds (each ClusterIP port
    // takes one, and one more for its unknown ports), as a full and as an incremental sync.
    let mut big = old.clone();
    for i in 0..SERVICE_ENTRIES {
        big.services.push(service(
            &lab,
            &format!("s{i}"),
            &format!("10.96.1.{}", i + 1),
        ));
    }
    // (a failed sync asks for a full one next: the incremental one first)
    let e = dp.apply_changes(&diff(&old, &big)).unwrap_err();
    assert!(matches!(e, Error::CapacityExceeded { .. }), "{e:?}");
    unchanged(&dp, "capacity error (apply_changes)");
    let e = dp.apply(&big).unwrap_err();
    assert!(matches!(e, Error::CapacityExceeded { .. }), "{e:?}");
    unchanged(&dp, "capacity error (apply)");

    // An uplink that is not there, with a new service: refused before any map is written.
    let mut no_uplink = old.clone();
    no_uplink.services.push(service(&lab, "new", NEW));
    "missing0".clone_into(&mut no_uplink.node.interfaces.uplink);
    let e = dp.apply(&no_uplink).unwrap_err();
    unchanged(&dp, "missing uplink");
    let chain = format!("{e:?}");
    assert!(chain.contains("missing0"), "{chain}");

    // Cluster policies, the baseline and host endpoint policy are programmed: what the
    // backend would still declare missing of core's synthetic tier states is refused by name,
    // with a new service in the same state, as a full and an incremental sync (none today).
    // `apply_changes` here, after the failed applies above, asks for a full sync (the
    // trait's contract), which changes nothing either; of a synced backend it is the same
    // refusal by name (`a_refused_tier_change_leaves_maps_and_links_as_they_were`).
    let caps = dp.capabilities();
    assert!(caps.cluster_policy, "{caps:?}");
    assert!(caps.host_policy, "{caps:?}");
    let refusals: Vec<(DesiredState, String)> =
        dataplane_core::synthetic::tier_refusals(&old, service(&lab, "new", NEW))
            .into_iter()
            .filter(|(_, object)| {
                !(if object.starts_with("host endpoint") {
                    caps.host_policy
                } else {
                    caps.cluster_policy
                })
            })
            .collect();
    // A host policy set of more rules than the programs hold (64) is refused, naming the
    // policy.
    let mut too_many = old.clone().with_service(service(&lab, "new", NEW));
    let uplink = too_many.node.interfaces.uplink.clone();
    too_many.host_endpoints =
        vec![
            dataplane_core::HostEndpoint::new("uplink", &too_many.node.name, uplink)
                .with_label("role", "uplink"),
        ];
    let mut policy = dataplane_core::HostPolicy::new(
        "too-many",
        dataplane_core::LabelSelector::default().with_label("role", "uplink"),
    )
    .untracked();
    for port in 1..=65 {
        policy = policy.with_ingress(
            dataplane_core::HostRule::new(dataplane_core::HostAction::Deny)
                .protocol(Protocol::Sctp)
                .to_ports([dataplane_core::HostPort::Number(port)]),
        );
    }
    too_many.host_policies = vec![policy];
    let e = dp.apply(&too_many).unwrap_err();
    assert!(
        matches!(&e, Error::CapacityExceeded { what, .. } if what.contains("too-many")),
        "{e:?}"
    );
    unchanged(&dp, "host policy too-many (apply)");
    let e = dp.apply_changes(&diff(&old, &too_many)).unwrap_err();
    assert!(
        matches!(&e, Error::CapacityExceeded { .. } | Error::FullSyncRequired),
        "{e:?}"
    );
    unchanged(&dp, "host policy too-many (apply_changes)");
    for (tiered, object) in refusals {
        let e = dp.apply(&tiered).unwrap_err();
        assert!(
            matches!(&e, Error::Unsupported { object: o, .. } if *o == object),
            "{object}: {e:?}"
        );
        unchanged(&dp, &format!("{object} (apply)"));
        let e = dp.apply_changes(&diff(&old, &tiered)).unwrap_err();
        assert!(
            matches!(&e, Error::Unsupported { object: o, .. } if *o == object)
                || matches!(e, Error::FullSyncRequired),
            "{object}: {e:?}"
        );
        unchanged(&dp, &format!("{object} (apply_changes)"));
    }

    // Traffic follows the old state: web answers, the refused service does not.
    assert_eq!(answered_by(&lab, WEB).as_deref(), Some("pod-0-1"));
    assert_eq!(
        answered_by(&lab, NEW),
        None,
        "the refused service is served"
    );

    // The next good state is programmed as usual (a full sync after the failures).
    let mut good = no_uplink.clone();
    good.node = old.node.clone();
    let report = dp.apply(&good).expect("apply after the refusals");
    assert!(report.full_sync);
    assert_eq!(answered_by(&lab, NEW).as_deref(), Some("pod-0-1"));
    dp.reset().expect("reset");
}

/// A refused change of the cluster-wide policy objects (core's
/// `synthetic::tier_invalid_changes`: a cluster policy's priority taken twice or out of
/// range, an ingress `networks` peer in the baseline, a loopback peer node, a second host
/// endpoint for the uplink, a preDNAT and doNotTrack host policy, a failsafe port twice) is
/// the validation error naming the object and the field, from `apply_changes` (core's
/// incremental validator, no full sync asked for) and from `apply`, with every pinned map
/// and link as it was; the backend stays synced: a valid host policy change then applies
/// incrementally, and the service still answers. A host rule with SCTP ports is then
/// refused by `apply_changes` by the policy's name, the maps as they were.
#[test]
fn a_refused_tier_change_leaves_maps_and_links_as_they_were() {
    if !require_root("a_refused_tier_change_leaves_maps_and_links_as_they_were") {
        return;
    }
    let lab = lab();
    let (pins, mut dp) = common::lab_node_dataplane(&lab, "dpe-rejtier", |_| {});
    let dir = pins.0[0].clone();
    let mut base = lab.desired_state(0);
    base.services = vec![service(&lab, "web", WEB)];
    let (old, cases) = dataplane_core::synthetic::tier_invalid_changes(&base);
    dp.apply(&old).expect("apply");
    assert_eq!(answered_by(&lab, WEB).as_deref(), Some("pod-0-1"));
    let maps_before = kernel_state(&dir);
    let observed_before = dp.observe().expect("observe");
    assert!(!cases.is_empty());
    for (bad, expected) in cases {
        let e = dp.apply_changes(&diff(&old, &bad)).unwrap_err();
        assert!(
            matches!(&e, Error::Invalid(got) if *got == expected),
            "apply_changes: {expected}: {e:?}"
        );
        let e = dp.apply(&bad).unwrap_err();
        assert!(
            matches!(&e, Error::Invalid(got) if *got == expected),
            "apply: {expected}: {e:?}"
        );
        assert_eq!(
            dp.observe().expect("observe"),
            observed_before,
            "{expected}"
        );
        assert_eq!(
            kernel_state(&dir),
            maps_before,
            "{expected}: the maps changed"
        );
    }
    // Still synced: a valid change of the host policy is an incremental sync that writes the
    // host policy's next generation.
    let mut next = old.clone();
    next.host_policies[0].ingress[0].source.nets = vec!["203.0.113.0/24".parse().unwrap()];
    let report = dp.apply_changes(&diff(&old, &next)).expect("apply_changes");
    assert!(
        !report.full_sync && report.objects_written > 0,
        "{report:?}"
    );
    assert_ne!(
        kernel_state(&dir),
        maps_before,
        "the host maps were written"
    );
    assert_eq!(answered_by(&lab, WEB).as_deref(), Some("pod-0-1"));
    // A valid change the backend cannot program, more host rules in one set than the
    // programs hold (64): refused by the policy's name before any map is written.
    let written = kernel_state(&dir);
    let mut too_many = next.clone();
    for port in 1..=64 {
        too_many.host_policies[0].ingress.push(
            dataplane_core::HostRule::new(dataplane_core::HostAction::Deny)
                .protocol(Protocol::Sctp)
                .to_ports([dataplane_core::HostPort::Number(port)]),
        );
    }
    let e = dp.apply_changes(&diff(&next, &too_many)).unwrap_err();
    assert!(
        matches!(&e, Error::CapacityExceeded { what, .. } if what.contains("block")),
        "{e:?}"
    );
    assert_eq!(
        kernel_state(&dir),
        written,
        "too many rules: the maps changed"
    );
    dp.reset().expect("reset");
}

/// A Maglev port with more eligible backends than the table has slots is refused (the
/// table is built while the full sync is planned, a chunk at a time, inside the write) before
/// the first map write: in particular before the write that clears the NetworkPolicy maps
/// when the new state has no policy. Regression case of branch `ebpfrss2`, which built the
/// table after that write.
#[test]
fn a_refused_maglev_port_leaves_the_policy_maps_as_they_were() {
    /// A prime, so that the table itself is valid: 8 backends do not fit.
    const MAGLEV_SLOTS: u32 = 7;
    if !require_root("a_refused_maglev_port_leaves_the_policy_maps_as_they_were") {
        return;
    }
    let lab = lab();
    let (pins, mut dp) = common::lab_node_dataplane(&lab, "dpe-rej-maglev", |caps| {
        caps.maglev_table_size = MAGLEV_SLOTS;
    });
    let dir = pins.0[0].clone();
    let empty = kernel_state(&dir);
    let mut old = lab.desired_state(0);
    old.services = vec![service(&lab, "web", WEB)];
    old.policies.push(dataplane_core::Policy {
        name: dataplane_core::ObjectName::new(dataplane_testkit::POD_NAMESPACE, "deny-all"),
        pod_selector: dataplane_core::LabelSelector::default(),
        policy_types: vec![dataplane_core::PolicyType::Ingress],
        ingress: Vec::new(),
        egress: Vec::new(),
    });
    dp.apply(&old).expect("apply");
    let maps_before = kernel_state(&dir);
    // The policy is in the maps (so that clearing it would show): some map the policy
    // writes differs from the empty one's.
    let policy_maps: Vec<&String> = maps_before
        .iter()
        .filter(|(name, value)| name.contains("pol") && empty.get(*name) != Some(*value))
        .map(|(name, _)| name)
        .collect();
    assert!(!policy_maps.is_empty(), "no policy map holds the policy");
    let observed_before = dp.observe().expect("observe");

    // No policy, and a Maglev port with one backend more than the table's slots.
    let mut refused = old.clone();
    refused.policies.clear();
    let mut maglev = service(&lab, "maglev", NEW);
    maglev.backend_selection = dataplane_core::BackendSelection::Maglev;
    maglev.backends = (1..=MAGLEV_SLOTS + 1)
        .map(|i| dataplane_core::Backend::new(format!("10.244.9.{i}").parse().unwrap()))
        .collect();
    refused.services.push(maglev);
    let e = dp.apply(&refused).unwrap_err();
    assert!(
        matches!(&e, Error::CapacityExceeded { what, needed: 8, capacity: 7 }
            if what.contains("maglev") && what.contains("default/maglev")),
        "{e:?}"
    );
    let now = kernel_state(&dir);
    for (name, value) in &maps_before {
        assert_eq!(now.get(name), Some(value), "{name} changed");
    }
    assert_eq!(now.len(), maps_before.len(), "pins added");
    assert_eq!(dp.observe().expect("observe"), observed_before);

    // The same state with a Maglev port that fits is programmed, the policy cleared.
    let mut fits = refused.clone();
    fits.services.last_mut().unwrap().backends.pop();
    dp.apply(&fits).expect("apply with a table that fits");
    let after = kernel_state(&dir);
    for name in policy_maps {
        assert_ne!(after.get(name), maps_before.get(name), "{name} not cleared");
    }

    // After a reset nothing is loaded: the refused sync loads the objects to plan into them,
    // and takes them away again.
    dp.reset().expect("reset");
    let pins_after_reset = pinned(&dir);
    let e = dp.apply(&refused).unwrap_err();
    assert!(matches!(e, Error::CapacityExceeded { .. }), "{e:?}");
    assert_eq!(pinned(&dir), pins_after_reset, "the refused sync left pins");
}

/// The names pinned in `dir` (none when it is gone).
fn pinned(dir: &std::path::Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .map(|d| {
            d.filter_map(Result::ok)
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    names.sort();
    names
}
