//! Golden tests of the pure iptables renderer.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;

use dataplane_core::{Backend, DesiredState, IpFamily};
use dataplane_iptables::iptables::digest::{digests, SyncPlan};
use dataplane_iptables::iptables::render::{
    compile_state, hook_lines, hooks, parse_existing, render_reset, Existing, IptRuleset, Table,
};
use dataplane_iptables::{IptablesDataplane, NetfilterConfig};

/// The chains the backend writes for `state`'s `family`.
fn compile(state: &DesiredState, family: IpFamily) -> IptRuleset {
    let [v4, v6] = compile_state(state, "DP");
    match family {
        IpFamily::V4 => v4,
        IpFamily::V6 => v6,
    }
}

/// The oracle of the backend's writer: the `iptables-restore --noflush` input that turns
/// what `existing` says is in the kernel (last programmed as `old`, if known) into `new`,
/// from whole rulesets: only chains whose rules differ are rewritten (so unchanged chains
/// keep their counters), stale chains are removed, missing hook jumps are added.
fn render_sync(old: Option<&IptRuleset>, new: &IptRuleset, existing: &Existing) -> String {
    let mut out = String::new();
    // nat first: if the tool refuses it, it stops before touching the filter table.
    for table in Table::ALL {
        let new_chains = new.chains(table);
        let existing_chains = existing.chains(table);
        let changed: Vec<&String> = new_chains
            .iter()
            .filter(|(c, r)| {
                old.and_then(|o| o.chains(table).get(*c)) != Some(*r)
                    || !existing_chains.contains(*c)
            })
            .map(|(c, _)| c)
            .collect();
        let stale: Vec<&String> = existing_chains
            .iter()
            .filter(|c| !new_chains.contains_key(*c))
            .collect();
        let hook_lines = hook_lines(&new.prefix, existing, table);
        if changed.is_empty() && stale.is_empty() && hook_lines.is_empty() {
            continue;
        }
        writeln!(out, "*{table}").unwrap();
        // With --noflush, declaring a chain creates it or flushes it; nothing else is touched.
        for c in changed.iter().chain(stale.iter()) {
            writeln!(out, ":{c} - [0:0]").unwrap();
        }
        for c in &changed {
            for r in &new_chains[*c] {
                writeln!(out, "-A {c} {r}").unwrap();
            }
        }
        for h in hook_lines {
            writeln!(out, "{h}").unwrap();
        }
        for c in &stale {
            writeln!(out, "-X {c}").unwrap();
        }
        out.push_str("COMMIT\n");
    }
    out
}

/// What the backend hands `iptables-restore` / `ip6tables-restore` for a full sync into a
/// kernel without our chains.
#[test]
fn full_sync_golden_v4_and_v6() {
    let state = common::showcase();
    let dp = IptablesDataplane::new(NetfilterConfig::iptables(None));
    let v4 = dp.render(&state, IpFamily::V4).unwrap();
    let v6 = dp.render(&state, IpFamily::V6).unwrap();
    let existing = Existing::default();
    // The same as the oracle writes from the whole rulesets.
    for (text, family) in [(&v4, IpFamily::V4), (&v6, IpFamily::V6)] {
        let want = render_sync(None, &compile(&state, family), &existing);
        assert_eq!(effect(text), effect(&want), "{family:?}");
    }
    insta::assert_snapshot!("v4", v4);
    insta::assert_snapshot!("v6", v6);
}

#[test]
fn partial_sync_rewrites_only_changed_chains() {
    let old = common::showcase();
    let mut new = old.clone();
    new.services[0]
        .backends
        .push(Backend::new(common::ip("10.244.2.10")));
    let before = compile(&old, IpFamily::V4);
    let after = compile(&new, IpFamily::V4);
    // Everything of `before` is in the kernel, hooks included.
    let mut existing = Existing {
        nat_chains: before.nat.keys().cloned().collect(),
        filter_chains: before.filter.keys().cloned().collect(),
        ..Existing::default()
    };
    // (The raw and mangle hooks are host policy's: not in this state.)
    for (t, c, _) in hooks("DP")
        .into_iter()
        .filter(|h| Table::ALL.contains(&h.0))
    {
        existing.hooks.insert((t, c.to_owned()));
    }
    let (before_d, after_d) = (
        digests(&old, "DP", IpFamily::V4),
        digests(&new, "DP", IpFamily::V4),
    );
    let sync = SyncPlan::new(Some(&before_d), &after_d, &existing, "DP");
    let mut text = String::new();
    sync.write(&new, IpFamily::V4, None, &mut text).unwrap();
    assert!(
        !text.contains("shop") && !text.contains("*filter"),
        "{text}"
    );
    assert_eq!(
        effect(&text),
        effect(&render_sync(Some(&before), &after, &existing))
    );
    insta::assert_snapshot!(text);
    // Nothing changed: nothing to do, and the backend knows without rendering.
    assert!(!sync.is_empty());
    assert_eq!(render_sync(Some(&before), &before, &existing), "");
    assert!(SyncPlan::new(Some(&before_d), &before_d, &existing, "DP").is_empty());
}

/// The full sync compiles service by service in name order: the same rulesets whatever the
/// order of the services.
#[test]
fn compiling_service_by_service_gives_the_same_rulesets() {
    for (state, what) in [
        (common::showcase(), "showcase"),
        (dataplane_core::synthetic::state(300, 4), "synthetic"),
    ] {
        let mut reversed = state.clone();
        reversed.services.reverse();
        assert_eq!(
            compile_state(&reversed, "DP"),
            compile_state(&state, "DP"),
            "{what}"
        );
    }
}

/// The test hook's refused rule ends the first table written, whichever it is.
#[test]
fn the_fault_rule_goes_into_the_first_table_written() {
    let state = common::showcase();
    let d = digests(&state, "DP", IpFamily::V4);
    let none = Existing::default();
    let sync = SyncPlan::new(None, &d, &none, "DP");
    let mut text = String::new();
    sync.write(&state, IpFamily::V4, Some("-A DP-SERVICES -j X"), &mut text)
        .unwrap();
    let nat = text.split("COMMIT\n").next().unwrap();
    assert!(
        nat.starts_with("*nat\n") && nat.ends_with("-A DP-SERVICES -j X\n"),
        "{nat}"
    );
    assert_eq!(text.matches("-j X").count(), 1, "{text}");
    let mut without = String::new();
    sync.write(&state, IpFamily::V4, None, &mut without)
        .unwrap();
    assert_eq!(text.replace("-A DP-SERVICES -j X\n", ""), without);
}

#[test]
fn reset_removes_exactly_our_chains_and_hooks() {
    let save = "*nat\n:PREROUTING ACCEPT [0:0]\n:DP-SERVICES - [0:0]\n:DP-SVC-ABC - [0:0]\n:OTHER - [0:0]\n-A PREROUTING -j DP-SERVICES\n-A PREROUTING -j OTHER\nCOMMIT\n";
    let text = render_reset("DP", &parse_existing(save, "DP"));
    insta::assert_snapshot!(text);
    assert!(!text.contains("OTHER"));
}

/// An input as what it does per table: chains declared (created or flushed), rules per
/// chain, other lines (hooks, the fault rule), chains deleted. The order of chains in an
/// input does not change what it does.
type Effect = BTreeMap<
    String,
    (
        BTreeSet<String>,
        BTreeMap<String, Vec<String>>,
        Vec<String>,
        BTreeSet<String>,
    ),
>;

fn effect(text: &str) -> Effect {
    let mut out = Effect::new();
    let mut table = String::new();
    for line in text.lines() {
        if let Some(t) = line.strip_prefix('*') {
            t.clone_into(&mut table);
            continue;
        }
        let e = out.entry(table.clone()).or_default();
        if let Some(decl) = line.strip_prefix(':') {
            assert!(
                e.0.insert(decl.split(' ').next().unwrap().to_owned()),
                "declared twice: {line}"
            );
        } else if let Some(rule) = line.strip_prefix("-A ") {
            let (chain, body) = rule.split_once(' ').unwrap();
            if chain.starts_with("DP-") && e.0.contains(chain) {
                e.1.entry(chain.to_owned())
                    .or_default()
                    .push(body.to_owned());
            } else {
                e.2.push(line.to_owned());
            }
        } else if let Some(chain) = line.strip_prefix("-X ") {
            e.3.insert(chain.to_owned());
        } else if line != "COMMIT" {
            e.2.push(line.to_owned());
        }
    }
    out
}

/// Every jump of `text` to one of our chains goes to a chain the kernel holds or that `text`
/// declared before (iptables-restore refuses a jump to a chain it does not know yet).
fn jumps_only_to_known_chains(text: &str, existing: &Existing) {
    let mut known: BTreeSet<String> = existing
        .nat_chains
        .iter()
        .chain(&existing.filter_chains)
        .cloned()
        .collect();
    for line in text.lines() {
        if let Some(decl) = line.strip_prefix(':') {
            known.insert(decl.split(' ').next().unwrap().to_owned());
        } else if line.starts_with("-A ") || line.starts_with("-I ") {
            let words: Vec<&str> = line.split_whitespace().collect();
            for w in words.windows(2) {
                if (w[0] == "-j" || w[0] == "-g") && w[1].starts_with("DP-") {
                    assert!(known.contains(w[1]), "jump before declaration: {line}");
                }
            }
        }
    }
}

/// The backend writes a sync from per-chain digests and a second compile; it does what
/// `render_sync` of the kept rulesets does: full, partial (changed, added and removed
/// services), over chains the kernel holds, and nothing when nothing changed.
#[test]
fn syncs_from_digests_do_what_syncs_from_rulesets_do() {
    let all_of = |rs: &IptRuleset| {
        let mut e = Existing {
            nat_chains: rs.nat.keys().cloned().collect(),
            filter_chains: rs.filter.keys().cloned().collect(),
            ..Existing::default()
        };
        for (t, c, _) in hooks("DP")
            .into_iter()
            .filter(|h| Table::ALL.contains(&h.0))
        {
            e.hooks.insert((t, c.to_owned()));
        }
        e
    };
    for old in [common::showcase(), dataplane_core::synthetic::state(200, 3)] {
        let mut new = old.clone();
        new.services[0]
            .backends
            .push(Backend::new(common::ip("10.244.2.10")));
        let removed = new.services.remove(1);
        let mut added = removed.clone();
        added.name.name = format!("{}-again", added.name.name).into();
        added.cluster_ips.clear();
        for p in &mut added.ports {
            p.node_port = None;
        }
        new.services.push(added);
        for family in [IpFamily::V4, IpFamily::V6] {
            let old_rs = compile(&old, family);
            let new_rs = compile(&new, family);
            let old_d = digests(&old, "DP", family);
            let new_d = digests(&new, "DP", family);
            let kernel = all_of(&old_rs);
            for (before, existing, fault) in [
                (None, Existing::default(), None),
                (None, kernel.clone(), None),
                (Some((&old_rs, &old_d)), kernel.clone(), None),
                (
                    Some((&old_rs, &old_d)),
                    kernel.clone(),
                    Some("-A DP-SERVICES -j X"),
                ),
            ] {
                // What the backend wrote from the kept rulesets: the fault rule spliced in
                // before the first table's COMMIT.
                let mut want = render_sync(before.map(|b| b.0), &new_rs, &existing);
                if let (Some(f), Some(at)) = (fault, want.find("COMMIT\n")) {
                    want.insert_str(at, &format!("{f}\n"));
                }
                let sync = SyncPlan::new(before.map(|b| b.1), &new_d, &existing, "DP");
                let mut got = String::new();
                sync.write(&new, family, fault, &mut got).unwrap();
                assert_eq!(
                    effect(&got),
                    effect(&want),
                    "{family:?}\n{got}\n---\n{want}"
                );
                jumps_only_to_known_chains(&got, &existing);
                assert_eq!(sync.is_empty(), want.is_empty());
                if family == IpFamily::V4 && before.is_some() {
                    // The removed service's chains go, the changed one is rewritten.
                    assert!(
                        got.contains("\n-X DP-") && got.contains("10.244.2.10"),
                        "{got}"
                    );
                }
            }
            // Nothing changed: nothing to write.
            let same = SyncPlan::new(Some(&old_d), &old_d, &kernel, "DP");
            assert!(same.is_empty());
            assert!(render_sync(Some(&old_rs), &old_rs, &kernel).is_empty());
        }
    }
}

/// Issue 15 (kube-proxy parity): what each item renders to in the iptables flavour.
mod parity {
    use super::common::{self, backend, ip, port};
    use super::compile;
    use dataplane_core::IpFamily;
    use dataplane_core::{DesiredState, ObjectName, Protocol, Service, TrafficPolicy};
    use dataplane_iptables::eventlog;
    use dataplane_iptables::iptables::render::IptRuleset;

    fn lb_state() -> DesiredState {
        let mut state = DesiredState::new(common::node());
        let mut s = Service::new(ObjectName::new("default", "lb"));
        s.cluster_ips = vec![ip("10.200.0.20"), ip("fd00:96::20")];
        s.load_balancer_ips = vec![ip("192.0.2.20"), ip("192.0.2.24"), ip("2001:db8::20")];
        s.load_balancer_source_ranges = vec![
            "203.0.113.0/24".parse().unwrap(),
            "172.18.0.0/16".parse().unwrap(),
            "192.0.2.16/29".parse().unwrap(),
        ];
        s.ports = vec![port(Protocol::Tcp, 80, 8080, None)];
        s.backends = vec![
            backend("10.244.0.10", "node-0"),
            backend("10.244.1.10", "node-1"),
            backend("fd00:244::10", "node-0"),
        ];
        state.services.push(s);
        state
    }

    /// The nat chain of `kind` (`SVC`, `EXT`, `FW`): there is one of each per family here;
    /// without the NFLOG rules, each checked to copy the matches of the drop or reject
    /// rule right after it and to name the service ([`logs`] has them).
    fn chain(rs: &IptRuleset, kind: &str) -> Option<Vec<String>> {
        let rules = rs
            .nat
            .iter()
            .find(|(name, _)| name.starts_with(&format!("DP-{kind}-")))
            .map(|(_, rules)| rules.clone())?;
        Some(without_logs(&rules))
    }

    /// `rules` without the NFLOG rules and the count tags (`-m comment --comment
    /// dp-count:<verdict>-<reason>`); each NFLOG rule must precede a rule with its matches
    /// that marks for drop or reject (or drops), tagged with the verdict and reason it logs.
    fn without_logs(rules: &[String]) -> Vec<String> {
        let mut out = Vec::new();
        for (i, r) in rules.iter().enumerate() {
            if let Some((matches, _)) = r.split_once("-m limit --limit 20/sec --limit-burst 20 -j NFLOG --nflog-group 2001 --nflog-prefix \"dp ") {
                let next = &rules[i + 1];
                assert!(next.starts_with(matches), "{r} before {next}");
                assert!(
                    ["-g DP-MARK-DROP", "-g DP-MARK-REJ", "-j DROP"]
                        .iter()
                        .any(|t| next.ends_with(t)),
                    "{r} before {next}"
                );
                let logged = eventlog::ipt_prefix_of(r).expect("our prefix");
                assert_eq!(
                    eventlog::ipt_counted_of(next),
                    Some((logged.verdict, logged.reason)),
                    "{r} before {next}"
                );
            } else {
                out.push(untagged(r));
            }
        }
        out
    }

    /// `rule` without its count tag.
    fn untagged(rule: &str) -> String {
        const TAG: &str = "-m comment --comment dp-count:";
        match rule.find(TAG) {
            Some(at) => {
                let rest = &rule[at + TAG.len()..];
                let after = rest.find(' ').map_or("", |e| &rest[e + 1..]);
                format!("{}{after}", &rule[..at])
            }
            None => rule.to_owned(),
        }
    }

    /// The NFLOG prefixes of the rules of `kind`'s chain, in order.
    fn logs(rs: &IptRuleset, kind: &str) -> Vec<String> {
        rs.nat
            .iter()
            .find(|(name, _)| name.starts_with(&format!("DP-{kind}-")))
            .map(|(_, rules)| {
                rules
                    .iter()
                    .filter_map(|r| {
                        Some(
                            r.split_once("--nflog-prefix ")?
                                .1
                                .trim_matches('"')
                                .to_owned(),
                        )
                    })
                    .collect()
            })
            .unwrap_or_default()
    }

    /// Items 1, 2, 12: the firewall chain sends each allowed source (ranges, and the LB IPs
    /// no range holds when a range holds the node: allowFromNode) to the service and marks
    /// every other client for drop, whatever its interface; IPv6 without IPv6 ranges has
    /// none, and no IPv4 range shows in IPv6 rules.
    #[test]
    fn firewall_chain_for_every_client_per_family() {
        let state = lb_state();
        let v4 = compile(&state, IpFamily::V4);
        let fw = chain(&v4, "FW").expect("FW chain");
        let ext = v4.nat.keys().find(|c| c.starts_with("DP-EXT-")).unwrap();
        assert_eq!(
            fw,
            [
                format!("-s 203.0.113.0/24 -g {ext}"),
                format!("-s 172.18.0.0/16 -g {ext}"),
                format!("-s 192.0.2.16/29 -g {ext}"),
                format!("-s 192.0.2.24/32 -g {ext}"),
                "-g DP-MARK-DROP".to_owned(),
            ]
        );
        assert_eq!(logs(&v4, "FW"), ["dp drop source-range default/lb"]);
        let v6 = compile(&state, IpFamily::V6);
        assert!(chain(&v6, "FW").is_none());
        let ext6 = v6.nat.keys().find(|c| c.starts_with("DP-EXT-")).unwrap();
        assert!(v6.nat["DP-SERVICES"]
            .iter()
            .any(|r| r.starts_with("-d 2001:db8::20/128") && r.ends_with(&format!("-g {ext6}"))));
        assert!(v6
            .nat
            .values()
            .flatten()
            .all(|r| !r.contains("203.0.113") && !r.contains("172.18.0.0")));
    }

    /// Items 3 and 6: externalTrafficPolicy Local: the node (addrtype LOCAL) masqueraded and
    /// cluster-wide, this node's pods cluster-wide with their address, outside clients by the
    /// policy; allServices marks pods and node alike.
    #[test]
    fn etp_local_short_circuits_node_and_pods() {
        let mut state = lb_state();
        state.services[0].load_balancer_source_ranges.clear();
        state.services[0].external_traffic_policy = TrafficPolicy::Local;
        let v4 = compile(&state, IpFamily::V4);
        let ext = chain(&v4, "EXT").unwrap();
        let sel = |r: &str| r.rsplit(' ').next().unwrap().to_owned();
        assert_eq!(ext.len(), 4, "{ext:?}");
        assert_eq!(ext[0], "-m addrtype --src-type LOCAL -j DP-MARK-MASQ");
        assert!(ext[1].starts_with("-m addrtype --src-type LOCAL -g DP-SEL-"));
        // This node's pods, told by its pod CIDR (not by an interface).
        assert_eq!(ext[2], format!("-s 10.244.0.0/24 -g {}", sel(&ext[1])));
        assert!(ext[3].starts_with("-g DP-SEL-") && sel(&ext[3]) != sel(&ext[1]));
        state.node.masquerade.all_services = true;
        let v4 = compile(&state, IpFamily::V4);
        let ext = chain(&v4, "EXT").unwrap();
        assert_eq!(ext.len(), 5, "{ext:?}");
        assert_eq!(ext[0], "-m addrtype --src-type LOCAL -j DP-MARK-MASQ");
        assert!(ext[1].starts_with("-m addrtype --src-type LOCAL -g DP-SEL-"));
        assert_eq!(ext[2], "-s 10.244.0.0/24 -j DP-MARK-MASQ");
        assert_eq!(ext[3], format!("-s 10.244.0.0/24 -g {}", sel(&ext[1])));
        assert!(ext[4].starts_with("-g DP-SEL-"));
        state.services[0].external_traffic_policy = TrafficPolicy::Cluster;
        let v4 = compile(&state, IpFamily::V4);
        let ext = chain(&v4, "EXT").unwrap();
        assert_eq!(ext.len(), 2, "{ext:?}");
        assert_eq!(ext[0], "-j DP-MARK-MASQ");
    }

    /// Issue 24: externalTrafficPolicy Cluster with the ClusterIP's backends goes on to the
    /// ClusterIP chain, as kube-proxy's KUBE-EXT to KUBE-SVC (no selection chain of its
    /// own); with other backends (internalTrafficPolicy Local) to a selection chain.
    #[test]
    fn etp_cluster_goes_on_to_the_clusterip_chain() {
        let mut state = lb_state();
        state.services[0].load_balancer_source_ranges.clear();
        let v4 = compile(&state, IpFamily::V4);
        let svc = v4.nat.keys().find(|c| c.starts_with("DP-SVC-")).unwrap();
        assert_eq!(
            chain(&v4, "EXT").unwrap(),
            ["-j DP-MARK-MASQ".to_owned(), format!("-g {svc}")]
        );
        assert_eq!(chain(&v4, "SEL"), None);
        let v6 = compile(&state, IpFamily::V6);
        let svc6 = v6.nat.keys().find(|c| c.starts_with("DP-SVC-")).unwrap();
        assert_eq!(chain(&v6, "EXT").unwrap()[1], format!("-g {svc6}"));
        // No ClusterIP of the family: a selection chain.
        let mut no_cluster_ip = state.clone();
        no_cluster_ip.services[0].cluster_ips.clear();
        let v4 = compile(&no_cluster_ip, IpFamily::V4);
        assert!(chain(&v4, "EXT").unwrap()[1].starts_with("-g DP-SEL-"));
        assert_eq!(
            chain(&v4, "SEL").unwrap(),
            [
                "-p tcp -m tcp -m statistic --mode random --probability 0.5000000000 -j DNAT --to-destination 10.244.0.10:8080",
                "-p tcp -m tcp -j DNAT --to-destination 10.244.1.10:8080",
            ]
        );
        // internalTrafficPolicy Local: the ClusterIP picks this node's backend only, the
        // external frontends every backend, from a selection chain.
        state.services[0].internal_traffic_policy = TrafficPolicy::Local;
        let v4 = compile(&state, IpFamily::V4);
        let ext = chain(&v4, "EXT").unwrap();
        assert!(ext[1].starts_with("-g DP-SEL-"), "{ext:?}");
        assert_eq!(chain(&v4, "SEL").unwrap().len(), 2);
    }

    /// Items 4, 6, 7: the ClusterIP chain picks by internalTrafficPolicy for every client
    /// and marks the sources outside the cluster CIDRs (all sources with allServices); a
    /// ClusterIP outside the service CIDRs is a frontend like any other.
    #[test]
    fn clusterip_internal_policy_for_every_client() {
        let mut state = lb_state();
        state.services[0].load_balancer_ips.clear();
        state.services[0].internal_traffic_policy = TrafficPolicy::Local;
        state.services[0].backends = vec![backend("10.244.1.10", "node-1")];
        let v4 = compile(&state, IpFamily::V4);
        assert_eq!(
            chain(&v4, "SVC").unwrap(),
            [
                "-s 10.244.0.0/16 -g DP-MARK-DROP",
                "-j DP-MARK-MASQ",
                "-g DP-MARK-DROP"
            ]
        );
        // No backend on this node for internalTrafficPolicy Local: logged as such, twice
        // (one rule per drop rule).
        assert_eq!(
            logs(&v4, "SVC"),
            [
                "dp drop no-backend default/lb",
                "dp drop no-backend default/lb"
            ]
        );
        let svc = v4.nat.keys().find(|c| c.starts_with("DP-SVC-")).unwrap();
        assert!(v4.nat["DP-SERVICES"]
            .iter()
            .any(|r| r.starts_with("-d 10.200.0.20/32 -p tcp") && r.ends_with(svc)));
        state.node.masquerade.all_services = true;
        let v4 = compile(&state, IpFamily::V4);
        assert_eq!(
            chain(&v4, "SVC").unwrap(),
            ["-j DP-MARK-MASQ", "-g DP-MARK-DROP"]
        );
        // A family without cluster CIDRs has no local detector in kube-proxy: no client is
        // marked for being outside them.
        state.node.masquerade.all_services = false;
        state.node.cluster_cidrs.clear();
        let v4 = compile(&state, IpFamily::V4);
        assert_eq!(chain(&v4, "SVC").unwrap(), ["-g DP-MARK-DROP"]);
    }

    /// Issue 24: with backends, a ClusterIP chain that tests the client at most once holds
    /// the selection rules itself (kube-proxy's KUBE-SVC); under two cluster CIDRs each
    /// jumps to a selection chain of its own, as before.
    #[test]
    fn clusterip_selection_folds_into_the_service_chain() {
        let mut state = lb_state();
        state.services[0].load_balancer_ips.clear();
        let select = [
            "-p tcp -m tcp -m statistic --mode random --probability 0.5000000000 -j DNAT --to-destination 10.244.0.10:8080",
            "-p tcp -m tcp -j DNAT --to-destination 10.244.1.10:8080",
        ];
        let v4 = compile(&state, IpFamily::V4);
        let mut want = vec!["! -s 10.244.0.0/16 -j DP-MARK-MASQ"];
        want.extend(select);
        assert_eq!(chain(&v4, "SVC").unwrap(), want);
        assert_eq!(chain(&v4, "SEL"), None);
        state.node.masquerade.all_services = true;
        let v4 = compile(&state, IpFamily::V4);
        want[0] = "-j DP-MARK-MASQ";
        assert_eq!(chain(&v4, "SVC").unwrap(), want);
        state.node.masquerade.all_services = false;
        state.node.cluster_cidrs.clear();
        let v4 = compile(&state, IpFamily::V4);
        assert_eq!(chain(&v4, "SVC").unwrap(), select);
        state.node.cluster_cidrs = vec![
            "10.244.0.0/16".parse().unwrap(),
            "10.245.0.0/16".parse().unwrap(),
        ];
        let v4 = compile(&state, IpFamily::V4);
        let sel = v4
            .nat
            .keys()
            .find(|c| c.starts_with("DP-SEL-"))
            .unwrap()
            .clone();
        assert_eq!(
            chain(&v4, "SVC").unwrap(),
            [
                format!("-s 10.244.0.0/16 -g {sel}"),
                format!("-s 10.245.0.0/16 -g {sel}"),
                "-j DP-MARK-MASQ".to_owned(),
                format!("-g {sel}"),
            ]
        );
        assert_eq!(v4.nat[&sel], select);
    }

    /// Item 5, beyond kube-proxy's iptables mode: new connections still addressed to the
    /// family's service CIDRs after DNAT are dropped in the filter chain, after the reject
    /// of unknown ClusterIP ports (marked in nat).
    #[test]
    fn unallocated_service_addresses_are_dropped() {
        let state = lb_state();
        let v4 = compile(&state, IpFamily::V4);
        let filter = &without_logs(&v4.filter["DP-FILTER"]);
        assert_eq!(
            filter.last().unwrap(),
            "-d 10.96.0.0/12 -m conntrack --ctstate NEW -m comment --comment \"unallocated service address\" -j DROP"
        );
        assert!(filter[..filter.len() - 1]
            .iter()
            .all(|r| r.contains("--mark")));
        let v6 = compile(&state, IpFamily::V6);
        assert!(v6.filter["DP-FILTER"].iter().all(|r| !r.contains("-d ")));
        // Logged right before, with the reason.
        let raw = &v4.filter["DP-FILTER"];
        assert!(raw[raw.len() - 2].ends_with("--nflog-prefix \"dp drop unallocated\""));
        // The rejects of unserved ClusterIP ports are logged in nat, where they are marked:
        // one rule per ClusterIP, after its ports, to one chain that logs and marks (issue
        // 24: not a log rule and a counted mark per address).
        let services = &v4.nat["DP-SERVICES"];
        assert_eq!(
            services.last().unwrap(),
            "-d 10.200.0.20/32 -g DP-CIP-UNSERVED"
        );
        assert_eq!(
            services.iter().filter(|r| r.contains("UNSERVED")).count(),
            1
        );
        assert!(services.iter().all(|r| !r.contains("NFLOG")));
        let unserved = &v4.nat["DP-CIP-UNSERVED"];
        assert_eq!(without_logs(unserved), ["-g DP-MARK-REJ"]);
        assert_eq!(unserved.len(), 2);
        assert!(unserved[0].ends_with("\"dp reject unallocated\""));
        assert_eq!(
            v6.nat["DP-SERVICES"].last().unwrap(),
            "-d fd00:96::20/128 -g DP-CIP-UNSERVED"
        );
        // No ClusterIP, no such chain.
        let mut none = state.clone();
        none.services.clear();
        assert!(!compile(&none, IpFamily::V4)
            .nat
            .contains_key("DP-CIP-UNSERVED"));
    }
}

/// NetworkPolicy: the filter chains and ipsets the backend writes, checked by running them
/// (a small interpreter of the rules they use) against the reference model.
mod policy {
    use std::collections::{BTreeMap, BTreeSet};
    use std::fmt::Write as _;
    use std::net::IpAddr;

    use dataplane_core::{
        compile, diff, policy_verdict, validate, DesiredState, IpFamily, PolicyType, Protocol,
    };
    use dataplane_iptables::iptables::digest::{digests, digests_with};
    use dataplane_iptables::iptables::ipset::{self, converge, incremental, KernelSets, SetOp};
    use dataplane_iptables::iptables::policy::{
        chains, chains_named, ipsets, ipsets_named, policy_chain, IpSets,
    };
    use dataplane_iptables::iptables::render::{compile_state, Chains, Existing};
    use dataplane_iptables::{IptablesDataplane, NetfilterConfig};
    use ipnetwork::IpNetwork;
    use proptest::prelude::*;

    use super::common::{self, ip, policy as fixture};

    /// The policy chains of `family` and the members of every set they name.
    fn programmed(
        state: &DesiredState,
        family: IpFamily,
    ) -> (Chains, BTreeMap<String, BTreeSet<IpAddr>>) {
        let compiled = compile(state);
        let sets = ipsets(&compiled, "DP")
            .unwrap()
            .iter()
            .map(|(name, spec)| (name.clone(), ipset::members(&compiled, spec).collect()))
            .collect();
        (chains(&compiled, state, "DP", family).unwrap(), sets)
    }

    /// What a rule does when it matches.
    enum Outcome {
        /// Back to the calling chain (or out of ours: the host's rules decide).
        Return,
        /// Dropped.
        Drop,
    }

    /// Runs `chain` for a new connection's first packet; panics on a rule it does not
    /// understand (so a new kind of rule needs this interpreter taught, not ignored).
    fn run(
        chains: &Chains,
        sets: &BTreeMap<String, BTreeSet<IpAddr>>,
        chain: &str,
        packet: (IpAddr, IpAddr, Protocol, u16, &str),
    ) -> Outcome {
        let (src, dst, protocol, port, iif) = packet;
        for rule in &chains[chain] {
            // The comment's text is not a match.
            let rule = match rule.split_once("-m comment --comment \"") {
                Some((before, rest)) => {
                    format!("{before}{}", rest.split_once("\" ").unwrap().1)
                }
                None => rule.clone(),
            };
            let words: Vec<&str> = rule.split_whitespace().collect();
            let mut matches = true;
            let mut target = None;
            let mut i = 0;
            while i < words.len() {
                let net = |w: &str| -> IpNetwork { w.parse().unwrap() };
                match words[i] {
                    "-m" => i += 1,
                    "--ctstate" => {
                        // A first packet is NEW.
                        matches &= words[i + 1].split(',').any(|s| s == "NEW");
                        i += 1;
                    }
                    "-s" => {
                        matches &= net(words[i + 1]).contains(src);
                        i += 1;
                    }
                    "-i" => {
                        matches &= words[i + 1] == iif;
                        i += 1;
                    }
                    "-d" => {
                        matches &= net(words[i + 1]).contains(dst);
                        i += 1;
                    }
                    "--match-set" => {
                        let who = match words[i + 2] {
                            "src" => src,
                            "dst" => dst,
                            other => panic!("set direction {other}"),
                        };
                        matches &= sets[words[i + 1]].contains(&who);
                        i += 2;
                    }
                    "-p" => {
                        matches &= Protocol::from_name(words[i + 1]) == Some(protocol);
                        i += 1;
                    }
                    "--icmpv6-type" => {
                        // Neighbour discovery, never one of the probed protocols: `-p
                        // ipv6-icmp` before it does not match.
                        assert!(!matches, "{rule}");
                        i += 1;
                    }
                    "--dport" => {
                        let (lo, hi) = words[i + 1]
                            .split_once(':')
                            .unwrap_or((words[i + 1], words[i + 1]));
                        matches &= (lo.parse().unwrap()..=hi.parse().unwrap()).contains(&port);
                        i += 1;
                    }
                    "-j" => {
                        target = Some(words[i + 1]);
                        i += 1;
                    }
                    other => panic!("rule not understood ({other}): {rule}"),
                }
                i += 1;
            }
            if !matches {
                continue;
            }
            match target {
                Some("RETURN") => return Outcome::Return,
                // The node-wide chains that log, count and drop.
                Some("DROP" | "DP-DENY-IN" | "DP-DENY-OUT" | "DP-SPOOFED") => return Outcome::Drop,
                Some(sub) => {
                    if let Outcome::Drop = run(chains, sets, sub, packet) {
                        return Outcome::Drop;
                    }
                }
                None => panic!("rule without target: {rule}"),
            }
        }
        Outcome::Return
    }

    /// Every new connection between the fixture's addresses (at least one end on this
    /// node), on the ports and protocols its policies name and a few they do not: the
    /// chains drop it exactly when the reference model denies the half this node checks
    /// (the client's egress when the client is local, the server's ingress when the server
    /// is).
    #[test]
    fn the_chains_agree_with_the_reference_model() {
        let state = fixture::showcase();
        let (_, sets) = programmed(&state, IpFamily::V4);
        let checked = check_against_reference(&state, &sets).unwrap();
        // Both answers were seen many times.
        assert!(checked.iter().all(|n| *n > 100), "{checked:?}");
    }

    /// Anti-spoofing: every packet in on a local endpoint's interface from an address that
    /// is not its own (the fixture's addresses, IPv6 link-local and unspecified ones) to any
    /// address (link-local and multicast ones too) is dropped exactly when the reference
    /// model says it is forged ([`dataplane_core::is_spoofed`]).
    #[test]
    fn anti_spoofing_agrees_with_the_reference_model() {
        let state = fixture::showcase();
        let (_, sets) = programmed(&state, IpFamily::V4);
        let compiled = compile(&state);
        let mut addresses: Vec<IpAddr> = state
            .endpoints
            .iter()
            .flat_map(|e| e.ips.iter().copied())
            .chain(state.node.addresses.iter().copied())
            .chain(["8.8.8.8", "2001:db8::1"].map(ip))
            .collect();
        let sources: Vec<IpAddr> = addresses
            .iter()
            .copied()
            .chain(["fe80::1", "::"].map(ip))
            .collect();
        addresses.extend(["fe80::2", "ff02::1", "ff02::1:ff00:1"].map(ip));
        let mut seen = [0usize; 2];
        for family in [IpFamily::V4, IpFamily::V6] {
            let chains = chains(&compiled, &state, "DP", family).unwrap();
            for e in &state.endpoints {
                for &from in sources.iter().filter(|a| IpFamily::of(a) == family) {
                    if e.ips.contains(&from) {
                        continue;
                    }
                    for &to in addresses.iter().filter(|a| IpFamily::of(a) == family) {
                        let dropped = matches!(
                            run(
                                &chains,
                                &sets,
                                &policy_chain("DP"),
                                (from, to, Protocol::Udp, 53, e.interface.as_str())
                            ),
                            Outcome::Drop
                        );
                        let spoofed = dataplane_core::is_spoofed(&state, &e.name, from, to);
                        // A forged packet is dropped; an exempt one (link-local towards the
                        // link) is not dropped by anything (no pod is its source or target).
                        assert_eq!(dropped, spoofed, "{} {from} -> {to}", e.name);
                        seen[usize::from(spoofed)] += 1;
                    }
                }
            }
        }
        assert!(seen.iter().all(|n| *n > 0), "{seen:?}");
    }

    /// Runs every new connection between `state`'s addresses (and a few outside ones) with
    /// at least one end on this node, on TCP/UDP/SCTP and ports that policies name and do
    /// not, through the policy chains of `state` over the ipsets `sets`: the chains must drop
    /// exactly what the reference model denies in the half this node checks (the client's
    /// egress when the client is local, the server's ingress when the server is). Returns how
    /// many were (denied, allowed).
    fn check_against_reference(
        state: &DesiredState,
        sets: &BTreeMap<String, BTreeSet<IpAddr>>,
    ) -> Result<[usize; 2], String> {
        let local: BTreeSet<IpAddr> = state
            .endpoints
            .iter()
            .flat_map(|e| e.ips.iter().copied())
            .collect();
        let mut addresses: Vec<IpAddr> = local.iter().copied().collect();
        addresses.extend(state.pods.iter().flat_map(|p| p.ips.iter().copied()));
        addresses.extend(state.node.addresses.iter().copied());
        addresses.extend(
            [
                "192.168.1.5",
                "192.168.3.5",
                "192.168.2.200",
                "8.8.8.8",
                "10.1.2.3",
                "fd00:99::5",
                "fd00:99:1::5",
                "2001:db8::1",
            ]
            .map(ip),
        );
        let compiled = compile(state);
        // The interface a packet from `from` comes in on: its pod's, else the uplink.
        let interface = |from: IpAddr| -> &str {
            state
                .endpoints
                .iter()
                .find(|e| e.ips.contains(&from))
                .map_or(state.node.interfaces.uplink.as_str(), |e| {
                    e.interface.as_str()
                })
        };
        let mut checked = [0usize; 2];
        for family in [IpFamily::V4, IpFamily::V6] {
            let chains = chains(&compiled, state, "DP", family).unwrap();
            for &from in &addresses {
                for &to in &addresses {
                    let same_family = IpFamily::of(&from) == family && IpFamily::of(&to) == family;
                    if !same_family || !(local.contains(&from) || local.contains(&to)) {
                        continue;
                    }
                    for protocol in [Protocol::Tcp, Protocol::Udp, Protocol::Sctp] {
                        for port in [53, 79, 80, 81, 82, 8080, 9000, 9090] {
                            let v = policy_verdict(state, from, to, protocol, port);
                            let want = (!local.contains(&from) || v.egress.allows())
                                && (!local.contains(&to) || v.ingress.allows());
                            // The node's own traffic goes through OUTPUT, which does
                            // not jump to the policy chains.
                            let got = chains.is_empty()
                                || state.node.addresses.contains(&from)
                                || matches!(
                                    run(
                                        &chains,
                                        sets,
                                        &policy_chain("DP"),
                                        (from, to, protocol, port, interface(from))
                                    ),
                                    Outcome::Return
                                );
                            if got != want {
                                return Err(format!("{from} -> {to} {protocol:?}/{port}: {v:?}"));
                            }
                            checked[usize::from(want)] += 1;
                        }
                    }
                }
            }
        }
        Ok(checked)
    }

    /// What the kernel's ipsets hold after `ops`, as `ipset restore` would leave them (an
    /// operation it would refuse is an error).
    fn apply_ops(
        kernel: &mut BTreeMap<String, BTreeSet<IpAddr>>,
        ops: &[SetOp],
    ) -> Result<(), String> {
        for op in ops {
            let ok = match op {
                SetOp::Create { name, .. } => {
                    kernel.insert(name.clone(), BTreeSet::new()).is_none()
                }
                SetOp::Add { name, ip } => kernel.get_mut(name).is_some_and(|s| s.insert(*ip)),
                SetOp::Del { name, ip } => kernel.get_mut(name).is_some_and(|s| s.remove(ip)),
                SetOp::Destroy { name } => kernel.remove(name).is_some(),
                // Host policy's `hash:net` sets: not in these NetworkPolicy worlds.
                SetOp::CreateNet { .. } | SetOp::AddNet { .. } | SetOp::DelNet { .. } => false,
            };
            if !ok {
                return Err(format!("ipset refuses {op:?}"));
            }
        }
        Ok(())
    }

    const APPS: [&str; 4] = ["web", "db", "client", "x"];

    /// A random world over the fixture's pods: their `app` labels, the `team` of namespace
    /// `other`, x-1's named port, and which of the candidate policies exist.
    #[derive(Debug, Clone)]
    struct World {
        labels: [usize; 5],
        team: usize,
        x_port: usize,
        policies: Vec<bool>,
    }

    /// The fixture's policies and a few more: allow-all, an egress ipBlock excepting a pod,
    /// SCTP from a namespace, an egress named port, a policy in the other namespace.
    fn candidates() -> Vec<dataplane_core::Policy> {
        use fixture::{block, labels, named, namespaces, pods, policy, port, rule};
        let mut all = fixture::showcase().policies;
        let mut p = policy(
            "default",
            "db-all",
            labels(&[("app", "db")]),
            &[PolicyType::Ingress],
        );
        p.ingress = vec![rule(vec![], vec![])];
        all.push(p);
        let mut p = policy(
            "default",
            "web-out",
            labels(&[("app", "web")]),
            &[PolicyType::Egress],
        );
        p.egress = vec![rule(
            vec![block("10.244.0.0/16", &["10.244.1.5/32"])],
            vec![
                port(Protocol::Udp, 53, None),
                port(Protocol::Tcp, 80, Some(81)),
            ],
        )];
        all.push(p);
        let mut p = policy("default", "client-in", labels(&[("app", "client")]), &[]);
        p.ingress = vec![rule(
            vec![namespaces(&[("team", "b")], None)],
            vec![port(Protocol::Sctp, 9000, None)],
        )];
        all.push(p);
        let mut p = policy(
            "default",
            "x-out",
            labels(&[("app", "x")]),
            &[PolicyType::Egress],
        );
        p.egress = vec![rule(vec![], vec![named(Protocol::Tcp, "http")])];
        all.push(p);
        let mut p = policy("other", "other-out", labels(&[]), &[PolicyType::Egress]);
        p.egress = vec![
            rule(
                vec![namespaces(
                    &[("kubernetes.io/metadata.name", "default")],
                    Some(&[("app", "web")]),
                )],
                vec![port(Protocol::Tcp, 8080, None)],
            ),
            rule(vec![pods(&[("app", "x")])], vec![]),
        ];
        all.push(p);
        all
    }

    impl World {
        fn state(&self) -> DesiredState {
            let mut state = fixture::showcase();
            let candidates = candidates();
            state.policies = candidates
                .into_iter()
                .zip(&self.policies)
                .filter(|(_, on)| **on)
                .map(|(p, _)| p)
                .collect();
            let (endpoints, pods) = self.labels.split_at(3);
            for (e, l) in state.endpoints.iter_mut().zip(endpoints) {
                e.labels.insert("app".into(), APPS[*l].into());
            }
            for (p, l) in state.pods.iter_mut().zip(pods) {
                p.labels.insert("app".into(), APPS[*l].into());
            }
            let other = &mut state.namespaces[1].labels;
            match ["a", "b"].get(self.team) {
                Some(t) => other.insert("team".into(), (*t).into()),
                None => other.remove("team"),
            };
            state.pods[1].named_ports = [9090, 8080]
                .get(self.x_port)
                .map(|p| dataplane_core::NamedPort::new("http", Protocol::Tcp, *p))
                .into_iter()
                .collect();
            state
        }
    }

    fn world() -> impl Strategy<Value = World> {
        (
            proptest::array::uniform5(0..APPS.len()),
            0..3usize,
            0..3usize,
            proptest::collection::vec(any::<bool>(), candidates().len()),
        )
            .prop_map(|(labels, team, x_port, policies)| World {
                labels,
                team,
                x_port,
                policies,
            })
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(32))]

        /// Random worlds, one after another as the backend syncs them (the first in full,
        /// the next ones as partial syncs from `CompiledPolicy::update`): the set operations
        /// are ones `ipset` accepts and leave exactly the sets the chains name with their
        /// members, and the chains over those sets agree with the reference model.
        #[test]
        fn random_worlds_agree_with_the_reference_model(steps in proptest::collection::vec(world(), 1..4)) {
            let mut kernel: BTreeMap<String, BTreeSet<IpAddr>> = BTreeMap::new();
            let mut previous: Option<(DesiredState, dataplane_core::CompiledPolicy, IpSets)> = None;
            for w in steps {
                let state = w.state();
                validate(&state).map_err(|e| TestCaseError::fail(e.to_string()))?;
                let (compiled, want, ops) = if let Some((old, mut compiled, before)) = previous.take() {
                    let delta = compiled.update(&state, &diff(&old, &state));
                    let want = ipsets(&compiled, "DP").unwrap();
                    let ops = incremental(&before, &want, &compiled, &delta);
                    (compiled, want, ops)
                } else {
                    let compiled = compile(&state);
                    let want = ipsets(&compiled, "DP").unwrap();
                    let held = KernelSets {
                        ours: kernel.clone(),
                        foreign: 0,
                        ..KernelSets::default()
                    };
                    let ops = converge(&held, &want, &compiled);
                    (compiled, want, ops)
                };
                apply_ops(&mut kernel, &ops).map_err(TestCaseError::fail)?;
                let held: Vec<String> = kernel.keys().cloned().collect();
                let destroys = ipset::destroys(&held, &want);
                apply_ops(&mut kernel, &destroys).map_err(TestCaseError::fail)?;
                let expected: BTreeMap<String, BTreeSet<IpAddr>> = want
                    .iter()
                    .map(|(n, spec)| (n.clone(), ipset::members(&compiled, spec).collect()))
                    .collect();
                prop_assert_eq!(&kernel, &expected);
                check_against_reference(&state, &kernel).map_err(TestCaseError::fail)?;
                previous = Some((state, compiled, want));
            }
        }
    }

    /// The chains and sets of the fixture, as golden text: the layout the README describes.
    #[test]
    fn policy_chains_and_sets_golden() {
        let state = fixture::showcase();
        let mut out = String::new();
        for family in [IpFamily::V4, IpFamily::V6] {
            let (chains, _) = programmed(&state, family);
            writeln!(out, "# {family:?}").unwrap();
            for (name, rules) in &chains {
                writeln!(out, ":{name}").unwrap();
                for r in rules {
                    writeln!(out, "-A {name} {r}").unwrap();
                }
            }
        }
        let compiled = compile(&state);
        writeln!(out, "# ipsets").unwrap();
        for (name, spec) in ipsets(&compiled, "DP").unwrap() {
            let members: Vec<String> = ipset::members(&compiled, &spec)
                .map(|m| m.to_string())
                .collect();
            writeln!(
                out,
                "{name} {:?} {} [{}]",
                spec.family,
                spec.id,
                members.join(" ")
            )
            .unwrap();
        }
        insta::assert_snapshot!(out);
    }

    /// Features, one by one, in the rules.
    #[test]
    fn each_feature_is_written_as_iptables_spells_it() {
        let state = fixture::showcase();
        let [v4, v6] = compile_state(&state, "DP");
        let all: Vec<String> = v4
            .filter
            .iter()
            .flat_map(|(c, rules)| rules.iter().map(move |r| format!("-A {c} {r}")))
            .collect();
        let has = |needle: &str| all.iter().any(|r| r.contains(needle));
        // The filter chain hands over to the policy chain after its own drops and rejects.
        assert_eq!(v4.filter["DP-FILTER"].last().unwrap(), "-j DP-POLICY");
        assert_eq!(v6.filter["DP-FILTER"].last().unwrap(), "-j DP-POLICY");
        let top = &v4.filter["DP-POLICY"];
        // Anti-spoofing first, one rule per local endpoint's interface, then the
        // established connections.
        let spoof = state.endpoints.len();
        for e in &state.endpoints {
            let at = top
                .iter()
                .position(|r| r.starts_with(&format!("-i {} -j DP-AS-", e.interface)));
            assert!(at.is_some_and(|at| at < spoof), "{top:?}");
        }
        assert_eq!(
            top[spoof],
            "-m conntrack --ctstate RELATED,ESTABLISHED -j RETURN"
        );
        // The node's own traffic never reaches it (OUTPUT has its own entry chain), so no
        // rule trusts the node's address as a source.
        assert!(
            !top.iter().any(|r| r.starts_with("-s 172.18.0.10/32 ")),
            "{top:?}"
        );
        assert!(
            !v4.filter["DP-FILTER-OUT"]
                .iter()
                .any(|r| r.contains("POLICY")),
            "{v4:?}"
        );
        assert!(top
            .iter()
            .any(|r| r.contains("-s 10.244.0.10/32 -d 10.244.0.10/32 ")));
        // endPort range, UDP, SCTP, named port resolved on ingress (8080).
        assert!(has("-p tcp -m tcp --dport 80:81 -j RETURN"));
        assert!(has("-p udp -m udp --dport 53 -j RETURN"));
        assert!(has(
            "-s 192.168.0.0/16 -p sctp -m sctp --dport 9000 -j RETURN"
        ));
        assert!(has("src -p tcp -m tcp --dport 8080 -j RETURN"));
        // The egress named port: resolved on the destinations (9090 on x-1), as a set.
        assert!(has("dst -p tcp -m tcp --dport 9090 -j RETURN"));
        // An except drops before the cidr's RETURN.
        let chain = all
            .iter()
            .find(|r| r.contains("-s 192.168.1.0/24"))
            .map(|r| r.split(' ').nth(1).unwrap().to_owned())
            .unwrap();
        let rules = &v4.filter[&chain];
        let except = rules
            .iter()
            .position(|r| r.starts_with("-s 192.168.1.0/24") && r.ends_with("-j DP-DENY-IN"));
        let cidr = rules
            .iter()
            .position(|r| r.starts_with("-s 192.168.0.0/16"));
        assert!(except.unwrap() < cidr.unwrap(), "{rules:?}");
        // Every isolated chain ends in a counted drop of its direction.
        for (name, rules) in &v4.filter {
            let deny = if name.starts_with("DP-PI-") {
                "-j DP-DENY-IN"
            } else if name.starts_with("DP-PE-") {
                "-j DP-DENY-OUT"
            } else {
                continue;
            };
            assert!(rules.last().unwrap().ends_with(deny), "{name}: {rules:?}");
        }
        // v6: the v6 ipBlock, no v4 address anywhere.
        let v6_rules: Vec<&String> = v6.filter.values().flatten().collect();
        assert!(v6_rules
            .iter()
            .any(|r| r.contains("-s fd00:99:1::/48") && r.ends_with("-j DP-DENY-IN")));
        assert!(
            !v6_rules.iter().any(|r| r.contains("10.244.")),
            "{v6_rules:?}"
        );
        // tool-0 (namespace other) is selected by no policy: no dispatch.
        assert!(!top.iter().any(|r| r.contains("10.244.0.30")));
    }

    /// A thousand policies with one peer selector share one set, and pods selected alike share
    /// their chains.
    #[test]
    fn sets_and_chains_are_shared() {
        let mut state = fixture::showcase();
        let base = state.policies.len();
        for i in 0..1000 {
            let mut p = fixture::policy(
                "default",
                &format!("same-{i}"),
                fixture::labels(&[("app", "web")]),
                &[PolicyType::Ingress],
            );
            p.ingress = vec![fixture::rule(
                vec![fixture::pods(&[("app", "client")])],
                vec![],
            )];
            state.policies.push(p);
        }
        for i in 0..5 {
            state.endpoints.push(fixture::endpoint(
                "default",
                &format!("web-{}", i + 1),
                &[&format!("10.244.0.{}", 100 + i)],
                "web",
            ));
        }
        let compiled = compile(&state);
        let before = ipsets(
            &compile(&{
                let mut s = state.clone();
                s.policies.truncate(base);
                s
            }),
            "DP",
        )
        .unwrap();
        let after = ipsets(&compiled, "DP").unwrap();
        // The peer `app=client` (with and without ports) is one set already named.
        assert_eq!(
            before.keys().collect::<Vec<_>>(),
            after.keys().collect::<Vec<_>>()
        );
        let v4 = chains(&compiled, &state, "DP", IpFamily::V4).unwrap();
        let target = |ip: &str| -> &str {
            let dispatch = format!("-d {ip}/32 -j ");
            v4["DP-POLICY"]
                .iter()
                .find_map(|r| r.strip_prefix(&dispatch))
                .unwrap()
        };
        // web-1..5 share one ingress chain; web-0 (with its named port) has its own.
        let shared: BTreeSet<&str> = (100..105)
            .map(|i| target(&format!("10.244.0.{i}")))
            .collect();
        assert_eq!(shared.len(), 1, "{shared:?}");
        assert!(!shared.contains(target("10.244.0.10")));
    }

    /// A pod relabelled out of a selector is an ipset del and nothing else: no chain changes.
    /// A changed policy rewrites the chains of the endpoints it selects and no set.
    #[test]
    fn partial_syncs_touch_only_what_changed() {
        let old = fixture::showcase();
        let mut new = old.clone();
        let client = new
            .pods
            .iter_mut()
            .find(|p| p.name.name == "client-1")
            .unwrap();
        client.labels.insert("app".into(), "x".into());
        let mut compiled = compile(&old);
        let before = ipsets(&compiled, "DP").unwrap();
        let delta = compiled.update(&new, &diff(&old, &new));
        assert_eq!(compiled, compile(&new));
        let want = ipsets(&compiled, "DP").unwrap();
        let ops = incremental(&before, &want, &compiled, &delta);
        assert!(!ops.is_empty());
        assert!(
            ops.iter()
                .all(|o| matches!(o, SetOp::Del { ip: gone, .. } if *gone == ip("10.244.1.5"))),
            "{ops:?}"
        );
        for family in [IpFamily::V4, IpFamily::V6] {
            assert_eq!(
                digests(&old, "DP", family).filter,
                digests(&new, "DP", family).filter,
                "{family:?}"
            );
        }
        // A full sync over a kernel that holds the old sets makes the same changes.
        let kernel = KernelSets {
            ours: before
                .iter()
                .map(|(n, spec)| (n.clone(), ipset::members(&compile(&old), spec).collect()))
                .collect(),
            foreign: 0,
            ..KernelSets::default()
        };
        let mut full = converge(&kernel, &want, &compiled);
        let mut inc = ops.clone();
        full.sort();
        inc.sort();
        assert_eq!(full, inc);

        // A policy edit: a port more for web-0's ingress.
        let mut edited = old.clone();
        let p = edited
            .policies
            .iter_mut()
            .find(|p| p.name.name == "web-in")
            .unwrap();
        p.ingress[1]
            .ports
            .push(fixture::port(Protocol::Tcp, 443, None));
        let mut compiled = compile(&old);
        let delta = compiled.update(&edited, &diff(&old, &edited));
        assert!(delta.members_changed.is_empty() && delta.sets_added.is_empty());
        let (a, b) = (
            digests(&old, "DP", IpFamily::V4),
            digests(&edited, "DP", IpFamily::V4),
        );
        let changed = b.filter.iter().filter(|c| !a.filter.contains(c)).count();
        // web-0's new ingress chain and the dispatch chain.
        assert_eq!(changed, 2, "{a:?}\n{b:?}");
    }

    /// The backend's own full-sync input for a state with policies is what the plain writer
    /// makes of the whole rulesets: the policy chains declared and filled, the filter chain
    /// jumping to them.
    #[test]
    fn the_backend_writes_the_policy_chains_in_its_full_sync() {
        let state = fixture::showcase();
        let dp = IptablesDataplane::new(NetfilterConfig::iptables(None));
        for (i, family) in [IpFamily::V4, IpFamily::V6].into_iter().enumerate() {
            let text = dp.render(&state, family).unwrap();
            let want =
                super::render_sync(None, &compile_state(&state, "DP")[i], &Existing::default());
            assert_eq!(super::effect(&text), super::effect(&want), "{family:?}");
            assert!(text.contains("-A DP-FILTER -j DP-POLICY\n"), "{text}");
            assert!(text.contains(":DP-POLICY - [0:0]\n"), "{text}");
        }
    }

    /// Two different contents hashed to one name (forced through the hash seam) are a typed
    /// error, never one overwriting the other; a prefix with `-` is refused.
    #[test]
    fn name_collisions_are_refused() {
        let state = fixture::showcase();
        let compiled = compile(&state);
        let same = |_: &str| "SAME".to_owned();
        let err = chains_named(&compiled, &state, "DP", IpFamily::V4, &same).unwrap_err();
        assert!(err.name.starts_with("DP-"), "{err:?}");
        assert_ne!(err.first, err.second);
        let err = ipsets_named(&compiled, "DP", &same).unwrap_err();
        assert_eq!(err.name, "DP-v4-SAME");
        assert!(matches!(
            err.into_error("iptables"),
            dataplane_core::Error::Unsupported { .. }
        ));
        // The real hash: no collision in the fixture.
        assert!(chains(&compiled, &state, "DP", IpFamily::V4).is_ok());
        // Any chain (service chains too): a policy chain given the name of the filter chain,
        // with other rules, is refused by the digests, not written over it.
        let clash = Chains::from([("DP-FILTER".to_owned(), vec!["-j DROP".to_owned()])]);
        let err = digests_with(&state, &clash, "DP", IpFamily::V4).unwrap_err();
        assert_eq!(err.name, "filter chain DP-FILTER");
        assert_ne!(err.first, err.second);
        let none = Chains::new();
        assert!(digests_with(&state, &none, "DP", IpFamily::V4).is_ok());
        let dp = IptablesDataplane::new(NetfilterConfig {
            name: "DP-X".to_owned(),
            ..NetfilterConfig::iptables(None)
        });
        assert!(matches!(
            dp.render(&state, IpFamily::V4),
            Err(dataplane_core::Error::Unsupported { .. })
        ));
    }

    /// No policy, no policy chains, no sets, and the filter chain is as it was.
    #[test]
    fn no_policy_no_chains() {
        let state = common::showcase();
        let compiled = compile(&state);
        assert!(ipsets(&compiled, "DP").unwrap().is_empty());
        let [v4, _] = compile_state(&state, "DP");
        // DP-FILTER, the OUTPUT entry DP-FILTER-OUT, and the (empty of traffic) drop chains
        // of policy and anti-spoofing, which carry the log settings.
        assert_eq!(
            v4.filter.keys().collect::<Vec<_>>(),
            [
                "DP-DENY-IN",
                "DP-DENY-OUT",
                "DP-FILTER",
                "DP-FILTER-OUT",
                "DP-SPOOFED"
            ]
        );
        assert!(!v4.filter["DP-FILTER"].iter().any(|r| r.contains("POLICY")));
        // Policies that isolate nobody on this node need none either.
        let mut state = state;
        state.policies.push(fixture::policy(
            "elsewhere",
            "deny",
            fixture::labels(&[]),
            &[PolicyType::Ingress],
        ));
        let s: IpSets = ipsets(&compile(&state), "DP").unwrap();
        assert!(s.is_empty());
        // Only the anti-spoofing of the local endpoints (with policies, a pod's packet from
        // an address not its own is dropped), nothing isolated.
        let filter = &compile_state(&state, "DP")[0].filter;
        assert!(
            filter.keys().all(|c| c.starts_with("DP-FILTER")
                || ["DP-POLICY", "DP-DENY-IN", "DP-DENY-OUT", "DP-SPOOFED"].contains(&c.as_str())
                || c.starts_with("DP-AS-")),
            "{filter:?}"
        );
    }
}

/// With the hairpin set (the default) no backend outside ClientIP affinity has a chain: the
/// selection chain DNATs, and `DP-POSTROUTING` masquerades a backend reaching itself by the
/// set. Without it (`NetfilterConfig::hairpin_ipset` off) this node's backends (in its pod
/// CIDR 10.244.0.0/24) keep a chain that marks the hairpin, the others are DNAT-ed from the
/// selection chain as with it, and no rule names the set.
#[test]
fn hairpin_without_the_set_keeps_a_chain_for_this_nodes_backends_only() {
    let state = common::showcase();
    let on = IptablesDataplane::new(NetfilterConfig::iptables(None))
        .render(&state, IpFamily::V4)
        .unwrap();
    let mut config = NetfilterConfig::iptables(None);
    config.hairpin_ipset = false;
    let off = IptablesDataplane::new(config)
        .render(&state, IpFamily::V4)
        .unwrap();
    let set_rule = "-A DP-POSTROUTING -m conntrack --ctstate DNAT -m set --match-set DP-hairpin-v4 dst,dst,src -g DP-MASQ\n";
    assert!(on.contains(set_rule), "{on}");
    assert!(!off.contains("--match-set DP-hairpin"), "{off}");
    let seps = |text: &str| text.lines().filter(|l| l.starts_with(":DP-SEP-")).count();
    // The two backends of the sticky service (affinity) in both; without the set, the other
    // backends of this node: 10.244.0.10 (two ports) and 10.244.0.11 (one).
    assert_eq!(seps(&on), 2, "{on}");
    assert_eq!(seps(&off), 5, "{off}");
    for local in ["10.244.0.10:8080", "10.244.0.11:8443"] {
        let ip = local.split(':').next().unwrap();
        assert!(
            off.contains(&format!("-s {ip}/32 -j DP-MARK-MASQ\n")),
            "{off}"
        );
        assert!(
            !on.contains(&format!("-s {ip}/32 -j DP-MARK-MASQ\n")),
            "{on}"
        );
        assert!(on.contains(&format!("-j DNAT --to-destination {local}\n")));
    }
    // A backend of another node: DNAT-ed by the selection rules (folded into the service
    // chain: one cluster CIDR) either way.
    for text in [&on, &off] {
        assert!(text.contains(
            "-A DP-SVC-HASN5QMY2Q6ZTYWA -p tcp -m tcp -j DNAT --to-destination 10.244.1.10:8080\n"
        ));
        assert!(!text.contains("-s 10.244.1.10/32 -j DP-MARK-MASQ"));
    }
}
