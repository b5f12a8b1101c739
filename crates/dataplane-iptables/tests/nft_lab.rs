//! The nftables backend in the testkit lab, with real TCP and UDP traffic. Needs root.

mod common;

use std::time::Duration;

use dataplane_core::{diff, Dataplane, Error, ExternalMode, Protocol, ValidationError};
use dataplane_iptables::{NetfilterConfig, NftablesDataplane};
use dataplane_testkit::{probe, require_root, Lab, ProbeOutcome};

fn backend_for(lab: &Lab) -> NftablesDataplane {
    NftablesDataplane::new(NetfilterConfig::nftables(Some(
        lab.node(0).netns.path().to_owned(),
    )))
}

fn ruleset(lab: &Lab) -> String {
    let out = lab
        .node(0)
        .netns
        .exec("nft", &["-s", "list", "ruleset"])
        .unwrap();
    assert!(out.status.success());
    String::from_utf8(out.stdout).unwrap()
}

#[test]
fn conformance_table_with_real_traffic() {
    if !require_root("conformance_table_with_real_traffic") {
        return;
    }
    let lab = common::lab::lab();
    common::lab::route_external(&lab);
    let state = common::lab::services(&lab);
    let mut dp = backend_for(&lab);
    let report = dp.apply(&state).unwrap();
    assert!(report.full_sync);
    common::lab::run(&lab, &state, &dp);
    common::lab::check_affinity(&lab);

    // The probes' connections are still in conntrack (TIME_WAIT), DNAT-ed to web's backends.
    let flows = dp.flows().unwrap();
    assert!(
        flows
            .iter()
            .any(|f| f.frontend == "10.96.0.10:80".parse().unwrap()
                && f.service.as_ref().is_some_and(|s| s.name == "web")
                && f.backend.port() == dataplane_testkit::SERVER_PORT),
        "{flows:?}"
    );
    let web = common::lab::observed_web(&dp);
    assert_eq!(web.backends.len(), 2, "{web:?}");
    let counters = dp.stats().unwrap();
    assert!(
        counters.packets_translated > 0
            && counters.packets_rejected > 0
            && counters.packets_dropped > 0,
        "{counters:?}"
    );
    dp.reset().unwrap();
    assert!(!ruleset(&lab).contains("table inet dataplane"));
}

/// The first services of a table (here after an apply of the node alone, as an agent starts)
/// go in two steps: the `nft` transaction without the backend and hairpin elements, then
/// those as one netlink batch. The conformance table holds with real traffic, and a later full
/// sync, which replaces a table with services in one transaction, too.
#[test]
fn first_services_after_an_empty_table_with_real_traffic() {
    if !require_root("first_services_after_an_empty_table_with_real_traffic") {
        return;
    }
    let lab = common::lab::lab();
    common::lab::route_external(&lab);
    let state = common::lab::services(&lab);
    let mut node_only = state.clone();
    node_only.services.clear();
    let mut dp = backend_for(&lab);
    dp.apply(&node_only).unwrap();
    let report = dp.apply(&state).unwrap();
    assert!(report.full_sync);
    let web = common::lab::observed_web(&dp);
    assert_eq!(web.backends.len(), 2, "backends sent over netlink: {web:?}");
    common::lab::run(&lab, &state, &dp);
    dp.apply(&state).unwrap();
    common::lab::web_backends(&lab, 3);
    dp.reset().unwrap();
    assert!(!ruleset(&lab).contains("table inet dataplane"));
}

/// The first services' element batch fails after the `nft` transaction took their chains:
/// the table goes back to what it was (no services), and the next apply works.
#[test]
fn a_failed_first_sync_element_batch_restores_the_empty_table() {
    if !require_root("a_failed_first_sync_element_batch_restores_the_empty_table") {
        return;
    }
    let lab = common::lab::lab();
    let state = common::lab::services(&lab);
    let mut node_only = state.clone();
    node_only.services.clear();
    let mut dp = backend_for(&lab);
    dp.apply(&node_only).unwrap();
    let before = ruleset(&lab);
    dp.set_fail_transactions(true);
    let err = dp.apply(&state).unwrap_err();
    assert!(format!("{err:?}").contains("refused the batch"), "{err:?}");
    assert_eq!(ruleset(&lab), before);
    dp.set_fail_transactions(false);
    let report = dp.apply(&state).unwrap();
    assert!(report.full_sync);
    common::lab::web_backends(&lab, 3);
    // The connections show up as flows of their service, found from the ruleset's frontends
    // (the backend keeps no copy of the state).
    let web: std::net::SocketAddr = "10.96.0.10:80".parse().unwrap();
    let flows = dp.flows().unwrap();
    let to_web: Vec<_> = flows
        .iter()
        .filter(|f| f.frontend == web && f.protocol == Protocol::Tcp)
        .collect();
    assert!(to_web.len() >= 3, "{flows:?}");
    assert!(
        to_web.iter().all(|f| f
            .service
            .as_ref()
            .is_some_and(|s| s.to_string() == "default/web")
            && f.backend != web),
        "{to_web:?}"
    );
    dp.reset().unwrap();
}

#[test]
fn partial_sync_keeps_counters_of_unchanged_services() {
    if !require_root("partial_sync_keeps_counters_of_unchanged_services") {
        return;
    }
    let lab = common::lab::lab();
    let old = common::lab::services(&lab);
    let mut dp = backend_for(&lab);
    dp.apply(&old).unwrap();
    common::lab::web_backends(&lab, 3);
    let web_chain = "svc-v4-default/web/tcp/80";
    let before = dp.chain_counter(web_chain).unwrap().unwrap();
    assert!(before >= 3, "counter {before}");

    // Change another service: "empty" gets a backend.
    let mut new = old.clone();
    let pod2 = lab.pod(2).addresses[0];
    let i = new
        .services
        .iter()
        .position(|s| s.name.name == "empty")
        .unwrap();
    new.services[i]
        .backends
        .push(dataplane_core::Backend::new(pod2));
    let report = dp.apply_changes(&diff(&old, &new)).unwrap();
    assert!(!report.full_sync);
    assert_eq!(report.services_changed, 1);
    assert_eq!(
        dp.chain_counter(web_chain).unwrap().unwrap(),
        before,
        "unchanged service's counter reset"
    );
    let o = probe(
        &lab.pod(1).netns,
        "10.96.0.13:80".parse().unwrap(),
        Protocol::Tcp,
        Duration::from_secs(2),
    )
    .unwrap();
    assert_eq!(o.backend(), Some("pod-1-0"), "{o:?}");

    // Remove a service: its chains go, the others stay.
    let mut newer = new.clone();
    newer.services.retain(|s| s.name.name != "hairpin");
    dp.apply_changes(&diff(&new, &newer)).unwrap();
    let text = ruleset(&lab);
    assert!(!text.contains("default/hairpin/"), "stale chain left");
    assert_eq!(dp.chain_counter(web_chain).unwrap().unwrap(), before);
    let o = probe(
        &lab.pod(0).netns,
        "10.96.0.14:80".parse().unwrap(),
        Protocol::Tcp,
        Duration::from_secs(2),
    )
    .unwrap();
    assert!(
        matches!(o, ProbeOutcome::Unreachable | ProbeOutcome::Timeout),
        "removed service still answers: {o:?}"
    );

    dp.reset().unwrap();
}

#[test]
fn replacing_a_backend_goes_over_netlink_and_keeps_counters() {
    if !require_root("replacing_a_backend_goes_over_netlink_and_keeps_counters") {
        return;
    }
    let lab = common::lab::lab();
    let old = common::lab::services(&lab);
    let mut dp = backend_for(&lab);
    dp.apply(&old).unwrap();
    common::lab::web_backends(&lab, 3);
    let web_chain = "svc-v4-default/web/tcp/80";
    let before = dp.chain_counter(web_chain).unwrap().unwrap();
    assert!(before >= 3, "counter {before}");

    // Replace one backend (same count): only map elements change, sent straight over netlink;
    // even the changed service's chain keeps its counter.
    let mut replaced = old.clone();
    let web = replaced
        .services
        .iter_mut()
        .find(|s| s.name.name == "web")
        .unwrap();
    let old_ip = lab.pod(2).addresses[0];
    let new_ip = lab.pod(3).addresses[0];
    web.backends.iter_mut().find(|b| b.ip == old_ip).unwrap().ip = new_ip;
    // Proof that nft is not involved: it is not even found.
    dp.config_mut().nft = "/nonexistent/nft".into();
    let report = dp.apply_changes(&diff(&old, &replaced)).unwrap();
    dp.config_mut().nft = "nft".into();
    assert!(!report.full_sync);
    assert_eq!(dp.chain_counter(web_chain).unwrap().unwrap(), before);
    let seen: std::collections::BTreeSet<String> =
        common::lab::web_backends(&lab, 16).into_iter().collect();
    assert_eq!(
        seen,
        ["pod-0-0", "pod-1-1"]
            .into_iter()
            .map(String::from)
            .collect()
    );
    let observed = dp.observe().unwrap();
    let fe = observed
        .frontends
        .iter()
        .find(|f| f.address == "10.96.0.10:80".parse().unwrap() && f.protocol == Protocol::Tcp)
        .unwrap();
    assert!(
        fe.backends.iter().any(|b| b.ip() == new_ip)
            && !fe.backends.iter().any(|b| b.ip() == old_ip),
        "{fe:?}"
    );

    // Back again: a second element-only change, over the netlink socket the first one kept
    // open, takes effect as well.
    dp.config_mut().nft = "/nonexistent/nft".into();
    let report = dp.apply_changes(&diff(&replaced, &old)).unwrap();
    dp.config_mut().nft = "nft".into();
    assert!(!report.full_sync);
    let seen: std::collections::BTreeSet<String> =
        common::lab::web_backends(&lab, 16).into_iter().collect();
    assert!(
        seen.contains(&lab.pod(2).name) && !seen.contains(&lab.pod(3).name),
        "{seen:?}"
    );
    dp.reset().unwrap();
}

#[test]
fn a_broken_apply_changes_nothing() {
    if !require_root("a_broken_apply_changes_nothing") {
        return;
    }
    let lab = common::lab::lab();
    let old = common::lab::services(&lab);
    let mut dp = backend_for(&lab);
    dp.apply(&old).unwrap();
    let before = ruleset(&lab);

    // A partial sync whose service takes a frontend that a kept service holds: the
    // validation error a full sync gives, before the kernel sees anything (the kernel's
    // "File exists" would not name the objects).
    let mut clash = old.clone();
    let web_ip = old
        .services
        .iter()
        .find(|s| s.name.name == "web")
        .unwrap()
        .cluster_ips[0];
    for s in clash.services.iter_mut().filter(|s| s.name.name == "local") {
        s.cluster_ips = vec![web_ip];
    }
    let full = dp.apply(&clash).unwrap_err();
    let err = dp.apply_changes(&diff(&old, &clash)).unwrap_err();
    assert!(
        matches!(
            err,
            Error::Invalid(ValidationError::DuplicateFrontend { .. })
        ),
        "{err:?}"
    );
    assert_eq!(err.to_string(), full.to_string(), "as a full sync says it");
    assert_eq!(ruleset(&lab), before);

    // The kernel refuses the last operation of the transaction: nothing before it sticks.
    let mut new = old.clone();
    new.services.retain(|s| s.name.name != "web");
    dp.set_fail_transactions(true);
    // An element-only change (sent over netlink, not through nft) fails as a whole too.
    let mut replaced = old.clone();
    replaced.services[0].backends[0].ip = lab.pod(1).addresses[0];
    dp.config_mut().nft = "/nonexistent/nft".into();
    let err = dp.apply_changes(&diff(&old, &replaced)).unwrap_err();
    dp.config_mut().nft = "nft".into();
    assert!(format!("{err:?}").contains("refused the batch"), "{err:?}");
    assert_eq!(ruleset(&lab), before);
    // After a failure a change set is not enough: the backend asks for the whole state.
    let err = dp.apply_changes(&diff(&old, &new)).unwrap_err();
    assert!(matches!(err, Error::FullSyncRequired), "{err}");
    assert_eq!(ruleset(&lab), before);
    let err = dp.apply(&new).unwrap_err();
    assert!(matches!(err, Error::Kernel { .. }), "{err}");
    assert_eq!(ruleset(&lab), before);
    common::lab::web_backends(&lab, 1);

    // What the flavour cannot enforce safely (network policy) is refused before anything
    // runs.
    let mut policy = old.clone();
    policy.policies.push(common::deny_all_policy());
    dp.set_fail_transactions(false);
    let err = dp.apply(&policy).unwrap_err();
    assert!(matches!(err, Error::Unsupported { .. }), "{err}");
    assert_eq!(ruleset(&lab), before);

    // A missing nft binary.
    let mut cfg = NetfilterConfig::nftables(Some(lab.node(0).netns.path().to_owned()));
    cfg.nft = "/nonexistent/nft".into();
    let err = NftablesDataplane::new(cfg).apply(&new).unwrap_err();
    assert!(matches!(err, Error::Kernel { .. }), "{err}");
    assert_eq!(ruleset(&lab), before);

    // After the failures the backend asks for a full sync (it keeps no copy of the state to
    // make one of a change set) and changes nothing; the full sync works.
    let err = dp.apply_changes(&diff(&old, &new)).unwrap_err();
    assert!(matches!(err, Error::FullSyncRequired), "{err:?}");
    assert_eq!(ruleset(&lab), before);
    let report = dp.apply(&new).unwrap();
    assert!(report.full_sync);
    assert!(!ruleset(&lab).contains("default/web/"));
    // And incremental applies work again after it.
    let report = dp.apply_changes(&diff(&new, &old)).unwrap();
    assert!(!report.full_sync);
    assert!(ruleset(&lab).contains("default/web/"));

    // What it serves in a lesser way does not take the node down (issue 15 item 9): a DSR
    // service with external frontends is served with SNAT, and the report says so, from a
    // full and from an incremental apply; the rest of the node keeps working.
    let mut dsr = old.clone();
    let with_frontends = dsr
        .services
        .iter_mut()
        .find(|s| !s.load_balancer_ips.is_empty())
        .expect("a service with a LoadBalancer IP");
    with_frontends.external_traffic_policy = dataplane_core::TrafficPolicy::Cluster;
    with_frontends.external_mode = Some(ExternalMode::Dsr);
    let name = format!("service {}", with_frontends.name);
    for report in [
        dp.apply_changes(&diff(&old, &dsr)).unwrap(),
        dp.apply(&dsr).unwrap(),
    ] {
        assert_eq!(
            report
                .skipped
                .iter()
                .map(|s| (s.object.as_str(), s.field.as_str()))
                .collect::<Vec<_>>(),
            [(name.as_str(), "externalMode")],
            "{report:?}"
        );
    }
    assert_eq!(common::lab::web_backends(&lab, 1).len(), 1);
    dp.reset().unwrap();
}

#[test]
fn foreign_tables_survive_apply_and_reset() {
    if !require_root("foreign_tables_survive_apply_and_reset") {
        return;
    }
    let lab = common::lab::lab();
    let ns = &lab.node(0).netns;
    let foreign = "table ip foreign {\n\tchain input {\n\t\ttype filter hook input priority filter; policy accept;\n\t\ttcp dport 22 counter accept\n\t}\n}\n";
    let out = ns
        .exec(
            "sh",
            &[
                "-c",
                &format!(
                    "printf '{}' | nft -f -",
                    foreign.replace('\n', "\\n").replace('\t', "\\t")
                ),
            ],
        )
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let ipt = ns
        .exec(
            "iptables",
            &[
                "-t",
                "nat",
                "-A",
                "POSTROUTING",
                "-s",
                "10.1.2.3/32",
                "-j",
                "ACCEPT",
            ],
        )
        .unwrap();
    assert!(ipt.status.success());
    let before = ruleset(&lab);

    let state = common::lab::services(&lab);
    let mut dp = backend_for(&lab);
    dp.apply(&state).unwrap();
    dp.apply(&state).unwrap();
    let during = ruleset(&lab);
    assert!(
        during.contains("table ip foreign") && during.contains("10.1.2.3"),
        "{during}"
    );
    dp.reset().unwrap();
    assert_eq!(ruleset(&lab), before);
    dp.reset().unwrap();
    assert_eq!(ruleset(&lab), before);
}

/// kube-proxy parity (issue 15): source ranges for every client, traffic policies, the
/// short-circuit of eTP:Local, unallocated service addresses, `masquerade.allServices`,
/// programmed by partial syncs and checked with real traffic against the reference model.
#[test]
fn parity_settings_through_partial_syncs_with_real_traffic() {
    if !require_root("parity_settings_through_partial_syncs_with_real_traffic") {
        return;
    }
    let lab = common::lab::lab();
    common::lab::route_external(&lab);
    let mut dp = backend_for(&lab);
    common::lab::parity_changes(&lab, &mut dp);
    dp.reset().unwrap();
}
