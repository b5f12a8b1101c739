//! Partial syncs of the iptables flavour against full syncs, in the kernel, in both iptables
//! modes: a seeded sequence of random service changes applied with `apply_changes` (endpoint
//! changes take the changed-services path, which reads nothing back; service additions,
//! removals and port changes the sync over every service) must leave exactly the rules that a
//! fresh backend's full sync of the final state writes (`iptables-save` of both families,
//! our chains and the hooks, counters aside). Stale chains are where partial restores go
//! wrong: a chain left over, or one rewritten with another's rules, shows here.
//!
//! Also: the mode detection (`IptablesMode::Auto`) finds the flavour that holds our chains,
//! and picks `nf_tables` in an empty namespace.

mod common;

use std::collections::BTreeMap;

use dataplane_core::{diff, Backend, Dataplane, DesiredState, ObjectName, Protocol, Service};
use dataplane_iptables::config::IptablesMode;
use dataplane_iptables::{IptablesDataplane, NetfilterConfig};
use dataplane_testkit::{require_root, Lab, LabSpec, NetNs};

use common::{ip, port, showcase};

const PREFIX: &str = "PS";

fn lab() -> Lab {
    Lab::new(LabSpec {
        nodes: 1,
        pods_per_node: 0,
        external_clients: 0,
        ipv6: true,
    })
    .expect("lab")
}

fn config(ns: &NetNs, mode: IptablesMode) -> NetfilterConfig {
    let mut c = NetfilterConfig::iptables(Some(ns.path().to_owned())).with_name(PREFIX);
    c.iptables_mode = mode;
    c
}

/// A small deterministic generator (the sequence is the seed's, run after run).
struct Rng(u64);

impl Rng {
    fn below(&mut self, n: usize) -> usize {
        self.0 = self
            .0
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1_442_695_040_888_963_407);
        usize::try_from((self.0 >> 33) % n as u64).unwrap_or(0)
    }
}

fn remote(a: &str) -> Backend {
    common::backend(a, "node-1")
}

/// `state` with one random change: mostly endpoints (the changed-services path), sometimes
/// a service added, removed, or given another port (a sync over every service).
fn mutate(state: &DesiredState, rng: &mut Rng, step: usize) -> DesiredState {
    let mut next = state.clone();
    let n = next.services.len();
    match rng.below(10) {
        0 => {
            let mut s = Service::new(ObjectName::new("gen", format!("s{step}")));
            s.cluster_ips = vec![ip(&format!("10.96.7.{}", 1 + step % 250))];
            let proto = if rng.below(2) == 0 {
                Protocol::Tcp
            } else {
                Protocol::Udp
            };
            s.ports = vec![port(proto, 80, 8080, None)];
            s.backends = (0..=rng.below(4))
                .map(|k| remote(&format!("10.244.9.{}", 10 + k)))
                .collect();
            next.services.push(s);
        }
        1 if n > 2 => {
            next.services.remove(rng.below(n));
        }
        2 => {
            let i = rng.below(n);
            if let Some(p) = next.services[i].ports.first_mut() {
                p.port = 1000 + u16::try_from(step).unwrap_or(0);
            }
        }
        _ => {
            // Endpoints: replace, add or remove one, or empty the service (reject).
            let i = rng.below(n);
            let s = &mut next.services[i];
            let v6 = s.cluster_ips.iter().any(std::net::IpAddr::is_ipv6)
                && s.cluster_ips.iter().all(std::net::IpAddr::is_ipv6);
            let addr = |k: usize| {
                if v6 {
                    format!("fd00:244:1::{:x}", 0x100 + k)
                } else {
                    format!("10.244.{}.{}", 1 + k / 200, 1 + k % 200)
                }
            };
            let single_port = s.ports.len() == 1;
            match rng.below(5) {
                0 if !s.backends.is_empty() => {
                    let j = rng.below(s.backends.len());
                    s.backends[j] = remote(&addr(step * 7 + j));
                }
                // A backend moves to a target port of its own, or back (a rolling update of
                // a named port): its DNAT changes, nothing else.
                4 if single_port && !s.backends.is_empty() => {
                    let j = rng.below(s.backends.len());
                    let own = 9000 + u16::try_from(step % 500).unwrap_or(0);
                    let moved = s.backends[j].port.is_none();
                    s.backends[j].port = moved.then_some(own);
                }
                1 => s.backends.push(remote(&addr(step * 7 + 5))),
                2 if !s.backends.is_empty() => {
                    let j = rng.below(s.backends.len());
                    s.backends.remove(j);
                }
                _ => s.backends.clear(),
            }
        }
    }
    next
}

/// Our rules in the kernel, both families, nat and filter: (family, table, chain) → rules,
/// with our chains declared (an empty chain is listed) and the built-in chains' rules that
/// jump to ours (the hooks); counters left out.
fn ours(ns: &NetNs, mode: IptablesMode) -> BTreeMap<(String, String, String), Vec<String>> {
    let infix = mode.infix().expect("a concrete mode");
    let ours = format!("{PREFIX}-");
    let mut out = BTreeMap::new();
    for family in ["iptables", "ip6tables"] {
        let save = ns
            .exec_checked(&format!("{family}-{infix}-save"), &[] as &[&str], None)
            .expect("save");
        let mut table = String::new();
        for line in String::from_utf8_lossy(&save.stdout).lines() {
            if let Some(t) = line.strip_prefix('*') {
                t.clone_into(&mut table);
            } else if let Some(decl) = line.strip_prefix(':') {
                let chain = decl.split_whitespace().next().unwrap_or("");
                if chain.starts_with(&ours) {
                    out.entry((family.to_owned(), table.clone(), chain.to_owned()))
                        .or_insert_with(Vec::new);
                }
            } else if let Some(rule) = line.strip_prefix("-A ") {
                let chain = rule.split_whitespace().next().unwrap_or("");
                if chain.starts_with(&ours) || rule.contains(&format!(" {ours}")) {
                    out.entry((family.to_owned(), table.clone(), chain.to_owned()))
                        .or_insert_with(Vec::new)
                        .push(rule.to_owned());
                }
            }
        }
    }
    out
}

/// The differences between two rule maps, for a readable failure.
fn differences(
    a: &BTreeMap<(String, String, String), Vec<String>>,
    b: &BTreeMap<(String, String, String), Vec<String>>,
) -> Vec<String> {
    let mut d = Vec::new();
    for (k, v) in a {
        match b.get(k) {
            None => d.push(format!("only after the partial syncs: {k:?} {v:?}")),
            Some(w) if w != v => d.push(format!("{k:?}: partial {v:?} / full {w:?}")),
            Some(_) => {}
        }
    }
    for (k, v) in b {
        if !a.contains_key(k) {
            d.push(format!("only after the full sync: {k:?} {v:?}"));
        }
    }
    d
}

#[test]
fn partial_syncs_leave_the_rules_of_a_full_sync_in_both_modes() {
    if !require_root("partial_syncs_leave_the_rules_of_a_full_sync_in_both_modes") {
        return;
    }
    let lab = lab();
    let ns = &lab.node(0).netns;
    for mode in [IptablesMode::Legacy, IptablesMode::Nft] {
        for seed in 1..=3u64 {
            let mut rng = Rng(seed);
            let mut state = showcase();
            let mut dp = IptablesDataplane::new(config(ns, mode));
            assert_eq!(dp.mode(), mode);
            dp.apply(&state).expect("full sync");
            for step in 0..15 {
                let next = mutate(&state, &mut rng, step);
                let report = dp
                    .apply_changes(&diff(&state, &next))
                    .unwrap_or_else(|e| panic!("{mode:?} seed {seed} step {step}: {e}"));
                assert!(!report.full_sync, "{mode:?} seed {seed} step {step}");
                state = next;
            }
            let partial = ours(ns, mode);
            dp.reset().expect("reset");
            assert!(ours(ns, mode).is_empty(), "reset left rules ({mode:?})");
            let mut fresh = IptablesDataplane::new(config(ns, mode));
            fresh.apply(&state).expect("full sync of the final state");
            let full = ours(ns, mode);
            fresh.reset().expect("reset");
            let d = differences(&partial, &full);
            assert!(
                d.is_empty(),
                "{mode:?} seed {seed}: partial syncs and a full sync differ:\n{}",
                d.join("\n")
            );
            assert!(!full.is_empty());
        }
    }
}

#[test]
fn auto_finds_the_mode_that_holds_our_chains() {
    if !require_root("auto_finds_the_mode_that_holds_our_chains") {
        return;
    }
    let lab = lab();
    let ns = &lab.node(0).netns;
    // Nothing anywhere: nf_tables.
    assert_eq!(
        IptablesDataplane::new(config(ns, IptablesMode::Auto)).mode(),
        IptablesMode::Nft
    );
    for mode in [IptablesMode::Legacy, IptablesMode::Nft] {
        let mut dp = IptablesDataplane::new(config(ns, mode));
        dp.apply(&showcase()).expect("apply");
        // A restarted agent keeps the flavour its rules are in.
        let mut again = IptablesDataplane::new(config(ns, IptablesMode::Auto));
        assert_eq!(again.mode(), mode);
        // And takes them over: the same state again changes nothing of the rules.
        let before = ours(ns, mode);
        again.apply(&showcase()).expect("apply again");
        assert_eq!(differences(&ours(ns, mode), &before), Vec::<String>::new());
        again.reset().expect("reset");
        assert!(ours(ns, mode).is_empty(), "{mode:?}");
    }
}

/// A full sync in sections (iptables-nft's, see `SyncPlan::in_sections`), cut here every
/// few chains, loads the rules one section would: whole services per section, the
/// node-wide chains before them, `SERVICES` and the hooks last.
#[test]
fn a_full_sync_in_sections_writes_what_one_section_writes() {
    use dataplane_core::IpFamily;
    use dataplane_iptables::iptables::digest::{digests, SyncPlan};
    use dataplane_iptables::iptables::render::Existing;
    if !require_root("a_full_sync_in_sections_writes_what_one_section_writes") {
        return;
    }
    let lab = lab();
    let ns = &lab.node(0).netns;
    let state = showcase();
    let mut dp = IptablesDataplane::new(config(ns, IptablesMode::Nft));
    dp.apply(&state).expect("apply");
    let whole = ours(ns, IptablesMode::Nft);
    dp.reset().expect("reset");
    // The hairpin sets the rules name (`NetfilterConfig::hairpin_ipset`), which the backend
    // creates before its rules and its reset destroys.
    for (set, family) in [("v4", "inet"), ("v6", "inet6")] {
        let name = format!("{PREFIX}-hairpin-{set}");
        ns.exec_checked(
            "ipset",
            &["create", &name, "hash:ip,port,ip", "family", family],
            None,
        )
        .expect("hairpin set");
    }
    for (family, tool) in [
        (IpFamily::V4, "iptables-nft-restore"),
        (IpFamily::V6, "ip6tables-nft-restore"),
    ] {
        let d = digests(&state, PREFIX, family);
        let none = Existing::default();
        let mut input = String::new();
        SyncPlan::new(None, &d, &none, PREFIX)
            .in_sections(3)
            .write(&state, family, None, &mut input)
            .expect("write");
        let nat_sections = input.matches("*nat").count();
        assert!(nat_sections > 2, "{family:?}: {nat_sections} sections");
        ns.exec_checked(tool, &["--noflush", "-w"], Some(&input))
            .unwrap_or_else(|e| panic!("{family:?}: {e}\n{input}"));
    }
    let sectioned = ours(ns, IptablesMode::Nft);
    // What the backend's reset removes: the sectioned load is ours in every way.
    IptablesDataplane::new(config(ns, IptablesMode::Nft))
        .reset()
        .expect("reset");
    assert!(ours(ns, IptablesMode::Nft).is_empty());
    assert_eq!(differences(&sectioned, &whole), Vec::<String>::new());
}

/// `reset()` in sections (iptables-nft's, see `write_reset_in_sections`), cut here every
/// two chains, removes every chain and hook of ours and nothing else.
#[test]
fn a_reset_in_sections_removes_what_one_section_removes() {
    use dataplane_core::IpFamily;
    use dataplane_iptables::iptables::render::{parse_existing, write_reset_in_sections};
    if !require_root("a_reset_in_sections_removes_what_one_section_removes") {
        return;
    }
    let lab = lab();
    let ns = &lab.node(0).netns;
    ns.exec_checked("iptables-nft", &["-t", "nat", "-N", "FOREIGN"], None)
        .expect("foreign chain");
    let mut dp = IptablesDataplane::new(config(ns, IptablesMode::Nft));
    dp.apply(&showcase()).expect("apply");
    assert!(!ours(ns, IptablesMode::Nft).is_empty());
    for (family, save, restore) in [
        (IpFamily::V4, "iptables-nft-save", "iptables-nft-restore"),
        (IpFamily::V6, "ip6tables-nft-save", "ip6tables-nft-restore"),
    ] {
        let text = ns.exec_checked(save, &[] as &[&str], None).expect("save");
        let existing = parse_existing(&String::from_utf8_lossy(&text.stdout), PREFIX);
        let mut input = String::new();
        write_reset_in_sections(PREFIX, &existing, 2, &mut input).expect("write");
        assert!(input.matches("COMMIT").count() > 4, "{family:?}");
        ns.exec_checked(restore, &["--noflush", "-w"], Some(&input))
            .unwrap_or_else(|e| panic!("{family:?}: {e}\n{input}"));
    }
    assert!(ours(ns, IptablesMode::Nft).is_empty());
    ns.exec_checked("iptables-nft", &["-t", "nat", "-S", "FOREIGN"], None)
        .expect("the foreign chain stays");
}
