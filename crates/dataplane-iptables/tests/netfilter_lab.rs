//! Both netfilter backends in the testkit lab, with real TCP and UDP traffic: one table of
//! tests, each run against every flavour (module `nftables`, module `iptables`), and the
//! tests that only the nftables flavour has (its netlink element path). Needs root.

mod common;

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::ops::{Deref, DerefMut};
use std::time::Duration;

use dataplane_core::{
    diff, ApplyReport, BackendSelection, Dataplane, DesiredState, Error, ExternalMode, IpFamily,
    ObjectName, Protocol, ValidationError,
};
use dataplane_iptables::iptables::render::service_chain;
use dataplane_iptables::{IptablesDataplane, NetfilterConfig, NftablesDataplane};
use dataplane_testkit::{probe, probe_from, require_root, Lab, ProbeOutcome};

/// A netfilter flavour under test.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Flavour {
    Nftables,
    Iptables,
}

/// A backend of either flavour; a `Dataplane` through `Deref`.
// One per test, made once and never moved around: the size difference costs nothing.
#[allow(clippy::large_enum_variant)]
enum Backend {
    Nftables(NftablesDataplane),
    Iptables(IptablesDataplane),
}

impl Deref for Backend {
    type Target = dyn Dataplane;

    fn deref(&self) -> &Self::Target {
        match self {
            Backend::Nftables(dp) => dp,
            Backend::Iptables(dp) => dp,
        }
    }
}

impl DerefMut for Backend {
    fn deref_mut(&mut self) -> &mut Self::Target {
        match self {
            Backend::Nftables(dp) => dp,
            Backend::Iptables(dp) => dp,
        }
    }
}

impl Backend {
    fn set_fail_transactions(&mut self, fail: bool) {
        match self {
            Backend::Nftables(dp) => dp.set_fail_transactions(fail),
            Backend::Iptables(dp) => dp.set_fail_transactions(fail),
        }
    }

    /// The packets counted at the top of `default/web`'s ClusterIP chain (IPv4, TCP 80).
    fn web_counter(&self) -> u64 {
        match self {
            Backend::Nftables(dp) => dp.chain_counter("svc-v4-default/web/tcp/80"),
            Backend::Iptables(dp) => {
                dp.chain_counter(IpFamily::V4, &Flavour::Iptables.chain("web"))
            }
        }
        .unwrap()
        .expect("web's chain")
    }
}

impl Flavour {
    fn name(self) -> &'static str {
        match self {
            Flavour::Nftables => "nftables",
            Flavour::Iptables => "iptables",
        }
    }

    /// A backend of this flavour for node 0, with `config` changed by `tweak`.
    fn backend_with(self, lab: &Lab, tweak: impl FnOnce(&mut NetfilterConfig)) -> Backend {
        let netns = Some(lab.node(0).netns.path().to_owned());
        match self {
            Flavour::Nftables => {
                let mut config = NetfilterConfig::nftables(netns);
                tweak(&mut config);
                Backend::Nftables(NftablesDataplane::new(config))
            }
            Flavour::Iptables => {
                let mut config = NetfilterConfig::iptables(netns);
                tweak(&mut config);
                Backend::Iptables(IptablesDataplane::new(config))
            }
        }
    }

    fn backend(self, lab: &Lab) -> Backend {
        self.backend_with(lab, |_| {})
    }

    /// What node 0's netfilter holds, in the form this flavour's tests compare: the whole
    /// `nft` ruleset for nftables; for iptables (iptables-nft keeps its rules in `nf_tables`)
    /// without what iptables considers always present.
    fn ruleset(self, lab: &Lab) -> String {
        let out = lab
            .node(0)
            .netns
            .exec("nft", &["-s", "list", "ruleset"])
            .unwrap();
        assert!(out.status.success());
        let text = String::from_utf8(out.stdout).unwrap();
        match self {
            Flavour::Nftables => text,
            Flavour::Iptables => semantic(&text),
        }
    }

    /// Text that any of our objects in a listing contains.
    fn ours(self) -> &'static str {
        match self {
            Flavour::Nftables => "table inet dataplane",
            Flavour::Iptables => "DP-",
        }
    }

    /// Text in the listing that only the ClusterIP chain of `default/<service>` (IPv4, TCP
    /// 80) contains.
    fn chain(self, service: &str) -> String {
        match self {
            Flavour::Nftables => format!("default/{service}/"),
            Flavour::Iptables => service_chain(
                "DP",
                IpFamily::V4,
                &ObjectName::new("default", service),
                "tcp",
                80,
            ),
        }
    }
}

/// An `nft` listing without counters, without what iptables considers always present:
/// built-in chains with no rules and policy accept, and iptables' tables when they hold
/// nothing else.
fn semantic(text: &str) -> String {
    let mut out = String::new();
    let mut table: Vec<String> = Vec::new();
    let mut table_head = String::new();
    let mut chain: Vec<String> = Vec::new();
    for line in text.lines() {
        if line.starts_with("table ") {
            line.clone_into(&mut table_head);
            table.clear();
        } else if line == "}" {
            let iptables_table = [
                "table ip nat",
                "table ip filter",
                "table ip6 nat",
                "table ip6 filter",
            ]
            .iter()
            .any(|t| table_head.starts_with(t));
            if !(iptables_table && table.is_empty()) {
                out.push_str(&table_head);
                out.push('\n');
                for l in &table {
                    out.push_str(l);
                    out.push('\n');
                }
                out.push_str("}\n");
            }
        } else if line.starts_with("\tchain ") {
            chain = vec![line.to_owned()];
        } else if line == "\t}" {
            chain.push(line.to_owned());
            let builtin_empty = chain.len() == 3 && chain[1].contains("policy accept;");
            if !builtin_empty {
                table.append(&mut chain);
            }
            chain.clear();
        } else if !line.trim().is_empty() {
            chain.push(line.to_owned());
        }
    }
    out
}

/// Runs each listed test, a function of the flavour, against both flavours: `nftables::<test>`
/// and `iptables::<test>`.
macro_rules! for_each_flavour {
    ($($test:ident),* $(,)?) => {
        mod nftables {
            $(
                #[test]
                fn $test() {
                    super::$test(super::Flavour::Nftables);
                }
            )*
        }
        mod iptables {
            $(
                #[test]
                fn $test() {
                    super::$test(super::Flavour::Iptables);
                }
            )*
        }
    };
}

for_each_flavour!(
    conformance_table_with_real_traffic,
    partial_sync_keeps_counters_of_unchanged_services,
    a_broken_apply_changes_nothing,
    foreign_rules_survive_apply_and_reset,
    parity_settings_through_partial_syncs_with_real_traffic,
    a_udp_client_that_keeps_its_port_follows_the_endpoints,
);

/// Whether the test may run (root); names the test and flavour when it may not.
fn root(test: &str, flavour: Flavour) -> bool {
    require_root(&format!("{}::{test}", flavour.name()))
}

/// A lab whose node 0 runs the lab's services with a backend of `flavour` (`None`: not root).
fn applied(test: &str, flavour: Flavour) -> Option<(Lab, DesiredState, Backend)> {
    if !root(test, flavour) {
        return None;
    }
    let lab = common::lab::lab();
    let state = common::lab::services(&lab);
    let mut dp = flavour.backend(&lab);
    dp.apply(&state).unwrap();
    Some((lab, state, dp))
}

/// The (object, field) of each thing a report says was served in a lesser way.
fn skipped(report: &ApplyReport) -> Vec<(&str, &str)> {
    report
        .skipped
        .iter()
        .map(|s| (s.object.as_str(), s.field.as_str()))
        .collect()
}

fn conformance_table_with_real_traffic(flavour: Flavour) {
    if !root("conformance_table_with_real_traffic", flavour) {
        return;
    }
    let lab = common::lab::lab();
    common::lab::route_external(&lab);
    let state = common::lab::services(&lab);
    let mut dp = flavour.backend(&lab);
    let report = dp.apply(&state).unwrap();
    assert!(report.full_sync);
    common::lab::run(&lab, &state, &*dp);
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
    let web = common::lab::observed_web(&*dp);
    assert_eq!(web.backends.len(), 2, "{web:?}");
    let counters = dp.stats().unwrap();
    assert!(
        counters.packets_translated > 0
            && counters.packets_rejected > 0
            && counters.packets_dropped > 0,
        "{counters:?}"
    );
    dp.reset().unwrap();
    assert!(!flavour.ruleset(&lab).contains(flavour.ours()));
}

fn partial_sync_keeps_counters_of_unchanged_services(flavour: Flavour) {
    let Some((lab, old, mut dp)) =
        applied("partial_sync_keeps_counters_of_unchanged_services", flavour)
    else {
        return;
    };
    common::lab::web_backends(&lab, 3);
    let before = dp.web_counter();
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
        dp.web_counter(),
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

    // Remove a service: its chains go (stale chains removed), the others stay.
    let hairpin_chain = flavour.chain("hairpin");
    assert!(flavour.ruleset(&lab).contains(&hairpin_chain));
    let mut newer = new.clone();
    newer.services.retain(|s| s.name.name != "hairpin");
    dp.apply_changes(&diff(&new, &newer)).unwrap();
    assert!(
        !flavour.ruleset(&lab).contains(&hairpin_chain),
        "stale chain left"
    );
    assert_eq!(dp.web_counter(), before);
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

fn a_broken_apply_changes_nothing(flavour: Flavour) {
    let Some((lab, old, mut dp)) = applied("a_broken_apply_changes_nothing", flavour) else {
        return;
    };
    let ruleset = || flavour.ruleset(&lab);
    let before = ruleset();

    if flavour == Flavour::Nftables {
        // A partial sync whose service takes a frontend that a kept service holds: the
        // validation error a full sync gives, before the kernel sees anything (the kernel's
        // "File exists" would not name the objects). (iptables keeps the whole state and
        // validates it whole for every sync.)
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
        assert_eq!(ruleset(), before);
    }

    // The kernel refuses the last operation of the transaction: nothing before it sticks.
    let mut new = old.clone();
    new.services.retain(|s| s.name.name != "web");
    dp.set_fail_transactions(true);
    match &mut dp {
        Backend::Nftables(nft) => {
            // An element-only change (sent over netlink, not through nft) fails as a whole
            // too.
            let mut replaced = old.clone();
            replaced.services[0].backends[0].ip = lab.pod(1).addresses[0];
            nft.config_mut().nft = "/nonexistent/nft".into();
            let err = nft.apply_changes(&diff(&old, &replaced)).unwrap_err();
            nft.config_mut().nft = "nft".into();
            assert!(format!("{err:?}").contains("refused the batch"), "{err:?}");
            assert_eq!(ruleset(), before);
            // After a failure a change set is not enough: the backend asks for the whole
            // state.
            let err = nft.apply_changes(&diff(&old, &new)).unwrap_err();
            assert!(matches!(err, Error::FullSyncRequired), "{err}");
        }
        Backend::Iptables(ipt) => {
            let err = ipt.apply_changes(&diff(&old, &new)).unwrap_err();
            assert!(matches!(err, Error::Kernel { .. }), "{err}");
        }
    }
    assert_eq!(ruleset(), before);
    let err = dp.apply(&new).unwrap_err();
    assert!(matches!(err, Error::Kernel { .. }), "{err}");
    assert_eq!(ruleset(), before);
    common::lab::web_backends(&lab, 1);

    // What the flavour cannot enforce safely (network policy, where it lacks it) is refused
    // before anything runs.
    dp.set_fail_transactions(false);
    if !dp.capabilities().network_policy {
        let mut policy = old.clone();
        policy.policies.push(common::deny_all_policy());
        let err = dp.apply(&policy).unwrap_err();
        assert!(matches!(err, Error::Unsupported { .. }), "{err}");
        assert_eq!(ruleset(), before);
    }

    // A missing tool.
    let err = flavour
        .backend_with(&lab, |c| {
            c.nft = "/nonexistent/nft".into();
            c.iptables_restore = "/nonexistent/iptables-restore".into();
        })
        .apply(&new)
        .unwrap_err();
    assert!(matches!(err, Error::Kernel { .. }), "{err}");
    assert_eq!(ruleset(), before);

    match &mut dp {
        Backend::Nftables(nft) => {
            // After the failures the backend asks for a full sync (it keeps no copy of the
            // state to make one of a change set) and changes nothing; the full sync works.
            let err = nft.apply_changes(&diff(&old, &new)).unwrap_err();
            assert!(matches!(err, Error::FullSyncRequired), "{err:?}");
            assert_eq!(ruleset(), before);
            let report = nft.apply(&new).unwrap();
            assert!(report.full_sync);
            assert!(!ruleset().contains(&flavour.chain("web")));
            // And incremental applies work again after it.
            let report = nft.apply_changes(&diff(&new, &old)).unwrap();
            assert!(!report.full_sync);
            assert!(ruleset().contains(&flavour.chain("web")));
        }
        Backend::Iptables(ipt) => {
            // It keeps the state: the change set after the failures is applied as a full
            // sync.
            let report = ipt.apply_changes(&diff(&old, &new)).unwrap();
            assert!(report.full_sync);
            assert!(!ruleset().contains(&flavour.chain("web")));
        }
    }

    served_in_a_lesser_way(&mut dp, &lab, &old);
    dp.reset().unwrap();
}

/// What a flavour serves in a lesser way does not take the node down (issue 15 item 9), and
/// the report says so, from a full and from an incremental apply; the rest of the node keeps
/// working.
fn served_in_a_lesser_way(dp: &mut Backend, lab: &Lab, old: &DesiredState) {
    match dp {
        Backend::Nftables(nft) => {
            // A DSR service with external frontends is served with SNAT.
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
                nft.apply_changes(&diff(old, &dsr)).unwrap(),
                nft.apply(&dsr).unwrap(),
            ] {
                assert_eq!(
                    skipped(&report),
                    [(name.as_str(), "externalMode")],
                    "{report:?}"
                );
            }
            assert_eq!(common::lab::web_backends(lab, 1).len(), 1);
        }
        Backend::Iptables(ipt) => {
            // Maglev is served with random selection.
            let mut maglev = old.clone();
            maglev.services[0].backend_selection = BackendSelection::Maglev;
            let report = ipt.apply(&maglev).unwrap();
            assert_eq!(
                skipped(&report),
                [("service default/web", "backendSelection")],
                "{report:?}"
            );
            assert_eq!(common::lab::web_backends(lab, 1).len(), 1);
            let report = ipt.apply_changes(&diff(&maglev, old)).unwrap();
            assert!(report.skipped.is_empty(), "{report:?}");
        }
    }
}

/// Rules and tables of others, in iptables and in nftables, are left alone by apply and reset.
fn foreign_rules_survive_apply_and_reset(flavour: Flavour) {
    if !root("foreign_rules_survive_apply_and_reset", flavour) {
        return;
    }
    let lab = common::lab::lab();
    let ns = &lab.node(0).netns;
    for args in [
        &["-t", "nat", "-N", "KUBE-FOREIGN"][..],
        &[
            "-t",
            "nat",
            "-A",
            "KUBE-FOREIGN",
            "-s",
            "10.1.2.3/32",
            "-j",
            "RETURN",
        ],
        &["-t", "nat", "-A", "PREROUTING", "-j", "KUBE-FOREIGN"],
        &[
            "-t",
            "nat",
            "-A",
            "POSTROUTING",
            "-s",
            "10.1.2.4/32",
            "-j",
            "ACCEPT",
        ],
        &[
            "-t", "filter", "-A", "INPUT", "-p", "tcp", "--dport", "22", "-j", "ACCEPT",
        ],
    ] {
        let out = ns.exec("iptables", args).unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
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
    let out = ns
        .exec("nft", &["add", "table", "inet", "foreign"])
        .unwrap();
    assert!(out.status.success());
    let before = flavour.ruleset(&lab);

    let state = common::lab::services(&lab);
    let mut dp = flavour.backend(&lab);
    dp.apply(&state).unwrap();
    dp.apply(&state).unwrap();
    let during = flavour.ruleset(&lab);
    assert!(
        during.contains("KUBE-FOREIGN")
            && during.contains("10.1.2.3")
            && during.contains("10.1.2.4")
            && during.contains("table ip foreign")
            && during.contains("table inet foreign"),
        "{during}"
    );
    if flavour == Flavour::Iptables {
        // PREROUTING and OUTPUT, in the ip and ip6 nat tables: once each after two applies.
        assert_eq!(
            during.matches("jump DP-SERVICES").count(),
            4,
            "hook jumps duplicated: {during}"
        );
    }
    dp.reset().unwrap();
    assert_eq!(flavour.ruleset(&lab), before);
    dp.reset().unwrap();
    assert_eq!(flavour.ruleset(&lab), before);
}

/// kube-proxy parity (issue 15): source ranges for every client, traffic policies, the
/// short-circuit of eTP:Local, unallocated service addresses, `masquerade.allServices`,
/// programmed by partial syncs and checked with real traffic against the reference model.
fn parity_settings_through_partial_syncs_with_real_traffic(flavour: Flavour) {
    if !root(
        "parity_settings_through_partial_syncs_with_real_traffic",
        flavour,
    ) {
        return;
    }
    let lab = common::lab::lab();
    common::lab::route_external(&lab);
    let mut dp = flavour.backend(&lab);
    common::lab::parity_changes(&lab, &mut *dp);
    dp.reset().unwrap();
}

/// `state` with web's backends (ClusterIP 10.96.0.10, TCP and UDP port 80) on lab pod `k`
/// alone.
fn web_on(lab: &Lab, state: &DesiredState, k: usize) -> DesiredState {
    let mut out = state.clone();
    let web = out
        .services
        .iter_mut()
        .find(|s| s.name.name == "web")
        .expect("web service");
    let template = web.backends[0].clone();
    web.backends = lab
        .pod(k)
        .addresses
        .iter()
        .map(|ip| dataplane_core::Backend {
            ip: *ip,
            node_name: Some(format!("node-{}", k / 2).into()),
            ..template.clone()
        })
        .collect();
    out
}

/// Probes web's UDP ClusterIP from pod-0-1's port 41000 until `want` answers (a probe every
/// 200 ms keeps the client's conntrack entry alive, as a DNS client does); panics after a
/// minute with the last answer.
fn wait_for_udp_backend(lab: &Lab, want: &str) {
    let src = SocketAddr::from(([0, 0, 0, 0], 41_000));
    let vip: SocketAddr = "10.96.0.10:80".parse().unwrap();
    let deadline = std::time::Instant::now() + Duration::from_mins(1);
    let mut last = None;
    while std::time::Instant::now() < deadline {
        let outcome = probe_from(
            &lab.pod(1).netns,
            Some(src),
            vip,
            Protocol::Udp,
            Duration::from_secs(1),
        )
        .unwrap();
        if let ProbeOutcome::Answered { backend, local, .. } = &outcome {
            assert_eq!(local.port(), 41_000, "the probe kept its source port");
            if backend == want {
                return;
            }
        }
        last = Some(outcome);
        std::thread::sleep(Duration::from_millis(200));
    }
    panic!("UDP {vip} from port 41000 never answered by {want}; last: {last:?}");
}

/// kube-proxy parity (its `CleanStaleEntries`): a UDP client that keeps its source port
/// keeps its conntrack entry alive, and with it the DNAT to the endpoint it first reached.
/// When that endpoint is removed, the sync deletes the entry, and the same source port
/// reaches the new endpoint: through a partial sync, then through a full one.
fn a_udp_client_that_keeps_its_port_follows_the_endpoints(flavour: Flavour) {
    if !root(
        "a_udp_client_that_keeps_its_port_follows_the_endpoints",
        flavour,
    ) {
        return;
    }
    let lab = common::lab::lab();
    let state = common::lab::services(&lab);
    let on_a = web_on(&lab, &state, 2);
    let on_b = web_on(&lab, &state, 0);
    let mut dp = flavour.backend(&lab);
    dp.apply(&on_a).unwrap();
    wait_for_udp_backend(&lab, "pod-1-0");
    // Partial sync: the endpoint set changes from pod-1-0 to pod-0-0.
    let report = dp.apply_changes(&diff(&on_a, &on_b)).unwrap();
    assert!(
        report.warnings.iter().all(|w| w.field != "conntrack"),
        "{:?}",
        report.warnings
    );
    wait_for_udp_backend(&lab, "pod-0-0");
    // Full sync: back to pod-1-0.
    let report = dp.apply(&on_a).unwrap();
    assert!(report.full_sync);
    assert!(
        report.warnings.iter().all(|w| w.field != "conntrack"),
        "{:?}",
        report.warnings
    );
    wait_for_udp_backend(&lab, "pod-1-0");
    dp.reset().unwrap();
}

/// The nftables flavour's element path: the first services after an empty table, and
/// element-only changes, go to the kernel as netlink batches.
mod nftables_only {
    use super::*;

    fn backend(lab: &Lab) -> NftablesDataplane {
        NftablesDataplane::new(NetfilterConfig::nftables(Some(
            lab.node(0).netns.path().to_owned(),
        )))
    }

    fn ruleset(lab: &Lab) -> String {
        Flavour::Nftables.ruleset(lab)
    }

    /// The first services of a table (here after an apply of the node alone, as an agent
    /// starts) go in two steps: the `nft` transaction without the backend and hairpin
    /// elements, then those as one netlink batch. The conformance table holds with real
    /// traffic, and a later full sync, which replaces a table with services in one
    /// transaction, too.
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
        let mut dp = backend(&lab);
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

    /// The first services' element batch fails after the `nft` transaction took their
    /// chains: the table goes back to what it was (no services), and the next apply works.
    #[test]
    fn a_failed_first_sync_element_batch_restores_the_empty_table() {
        if !require_root("a_failed_first_sync_element_batch_restores_the_empty_table") {
            return;
        }
        let lab = common::lab::lab();
        let state = common::lab::services(&lab);
        let mut node_only = state.clone();
        node_only.services.clear();
        let mut dp = backend(&lab);
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
        // The connections show up as flows of their service, found from the ruleset's
        // frontends (the backend keeps no copy of the state).
        let web: SocketAddr = "10.96.0.10:80".parse().unwrap();
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

    /// Replaces `web`'s backend on pod 2 with pod 3 in `old` by `apply_changes`, with `nft`
    /// unfindable (proof that only a netlink element batch runs); returns the new state and
    /// the old and new backend addresses.
    fn replace_web_backend(
        lab: &Lab,
        dp: &mut NftablesDataplane,
        old: &DesiredState,
    ) -> (DesiredState, std::net::IpAddr, std::net::IpAddr) {
        let mut replaced = old.clone();
        let web = replaced
            .services
            .iter_mut()
            .find(|s| s.name.name == "web")
            .unwrap();
        let old_ip = lab.pod(2).addresses[0];
        let new_ip = lab.pod(3).addresses[0];
        web.backends.iter_mut().find(|b| b.ip == old_ip).unwrap().ip = new_ip;
        dp.config_mut().nft = "/nonexistent/nft".into();
        let report = dp.apply_changes(&diff(old, &replaced)).unwrap();
        dp.config_mut().nft = "nft".into();
        assert!(!report.full_sync);
        (replaced, old_ip, new_ip)
    }

    /// With `shared_pick_chains`, the plain service ports have no chain: `web`'s ClusterIP
    /// picks through `pick-clusterip-v4-2` and the `service-slots-v4` map. Real traffic
    /// reaches its backends after the first services' element batch; a backend replaced is
    /// a netlink batch (`nft` not found); a backend added moves the frontend to the shared
    /// chain of three slots; a refused change leaves the table as it was.
    #[test]
    fn shared_pick_chains_with_real_traffic() {
        if !require_root("shared_pick_chains_with_real_traffic") {
            return;
        }
        let lab = common::lab::lab();
        let old = common::lab::services(&lab);
        let mut node_only = old.clone();
        node_only.services.clear();
        let mut config = NetfilterConfig::nftables(Some(lab.node(0).netns.path().to_owned()));
        config.shared_pick_chains = true;
        let mut dp = NftablesDataplane::new(config);
        dp.apply(&node_only).unwrap();
        dp.apply(&old).unwrap();
        let text = ruleset(&lab);
        assert!(!text.contains("chain svc-v4-default/web/tcp/80"), "{text}");
        assert!(
            text.contains("comment \"svc-v4-default/web/tcp/80\" : goto pick-clusterip-v4-2"),
            "{text}"
        );
        assert_eq!(dp.chain_counter("svc-v4-default/web/tcp/80").unwrap(), None);
        assert_eq!(common::lab::observed_web(&dp).backends.len(), 2);
        let seen: BTreeSet<String> = common::lab::web_backends(&lab, 16).into_iter().collect();
        assert_eq!(seen.len(), 2, "{seen:?}");

        let (replaced, old_ip, _) = replace_web_backend(&lab, &mut dp, &old);
        let seen: BTreeSet<String> = common::lab::web_backends(&lab, 16).into_iter().collect();
        assert!(
            seen.contains(&lab.pod(3).name) && !seen.contains(&lab.pod(2).name),
            "{seen:?}"
        );

        // A third backend: the frontend goes to the three-slot chain.
        let mut grown = replaced.clone();
        let web = grown
            .services
            .iter_mut()
            .find(|s| s.name.name == "web")
            .unwrap();
        web.backends.push(dataplane_core::Backend::new(old_ip));
        dp.apply_changes(&diff(&replaced, &grown)).unwrap();
        assert!(ruleset(&lab).contains("goto pick-clusterip-v4-3"));
        let seen: BTreeSet<String> = common::lab::web_backends(&lab, 24).into_iter().collect();
        assert_eq!(seen.len(), 3, "{seen:?}");

        // Refused: nothing changes.
        let before = ruleset(&lab);
        dp.set_fail_transactions(true);
        assert!(dp.apply_changes(&diff(&grown, &replaced)).is_err());
        dp.set_fail_transactions(false);
        assert_eq!(ruleset(&lab), before);
        dp.reset().unwrap();
    }

    #[test]
    fn replacing_a_backend_goes_over_netlink_and_keeps_counters() {
        if !require_root("replacing_a_backend_goes_over_netlink_and_keeps_counters") {
            return;
        }
        let lab = common::lab::lab();
        let old = common::lab::services(&lab);
        let mut dp = backend(&lab);
        dp.apply(&old).unwrap();
        common::lab::web_backends(&lab, 3);
        let web_chain = "svc-v4-default/web/tcp/80";
        let before = dp.chain_counter(web_chain).unwrap().unwrap();
        assert!(before >= 3, "counter {before}");

        // Replace one backend (same count): only map elements change, sent straight over
        // netlink; even the changed service's chain keeps its counter.
        let (replaced, old_ip, new_ip) = replace_web_backend(&lab, &mut dp, &old);
        assert_eq!(dp.chain_counter(web_chain).unwrap().unwrap(), before);
        let seen: BTreeSet<String> = common::lab::web_backends(&lab, 16).into_iter().collect();
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

        // Back again: a second element-only change, over the netlink socket the first one
        // kept open, takes effect as well.
        dp.config_mut().nft = "/nonexistent/nft".into();
        let report = dp.apply_changes(&diff(&replaced, &old)).unwrap();
        dp.config_mut().nft = "nft".into();
        assert!(!report.full_sync);
        let seen: BTreeSet<String> = common::lab::web_backends(&lab, 16).into_iter().collect();
        assert!(
            seen.contains(&lab.pod(2).name) && !seen.contains(&lab.pod(3).name),
            "{seen:?}"
        );
        dp.reset().unwrap();
    }
}
