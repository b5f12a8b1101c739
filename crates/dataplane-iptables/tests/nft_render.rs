//! Golden tests of the pure nftables renderer.

mod common;

use dataplane_core::{diff, Backend, DesiredState};
use std::net::SocketAddr;

use dataplane_iptables::nft::render::{
    compile_patch, compile_state, render_full, render_patch, Element, NftRuleset,
};
use dataplane_iptables::plan::{changed_hairpin, changed_ports, node_plan};

/// The partial-sync text from `old` (compiled as `rs`) to `new`, as the backend renders it.
fn delta(rs: &NftRuleset, old: &DesiredState, new: &DesiredState) -> (String, NftRuleset) {
    delta_with(rs, old, new, &node_plan(&new.node))
}

/// [`delta`] with the node plan `node` (the backend's configuration in it).
fn delta_with(
    rs: &NftRuleset,
    old: &DesiredState,
    new: &DesiredState,
    node: &dataplane_iptables::plan::NodePlan,
) -> (String, NftRuleset) {
    let changes = diff(old, new);
    let patch = compile_patch(
        rs,
        node,
        changed_ports(new, &changes)
            .iter()
            .map(|(n, p)| (n, p.as_deref())),
        &changed_hairpin(&new.node, &changes),
    )
    .unwrap();
    let text = render_patch(rs, &patch);
    let mut after = rs.clone();
    after.apply_patch(patch);
    (text, after)
}

#[test]
fn full_ruleset_golden() {
    let state = common::showcase();
    let rs = compile_state(&state, "dataplane").unwrap();
    insta::assert_snapshot!(render_full(&rs));
}

/// The full sync compiles service by service in name order: the same ruleset, slot-group
/// ids included, whatever the order of the services.
#[test]
fn compiling_service_by_service_gives_the_same_ruleset() {
    for state in [common::showcase(), dataplane_core::synthetic::state(300, 4)] {
        let mut reversed = state.clone();
        reversed.services.reverse();
        assert_eq!(
            compile_state(&reversed, "dataplane").unwrap(),
            compile_state(&state, "dataplane").unwrap()
        );
    }
}

#[test]
fn endpoint_change_touches_only_that_service() {
    let old = common::showcase();
    let mut new = old.clone();
    new.services[0]
        .backends
        .push(Backend::new(common::ip("10.244.2.10")));
    let rs = compile_state(&old, "dataplane").unwrap();
    let (text, after) = delta(&rs, &old, &new);
    assert!(!text.contains("shop") && !text.contains("sticky"), "{text}");
    insta::assert_snapshot!(text);
    // The patched ruleset equals a fresh compile of the new state.
    let fresh = compile_state(&new, "dataplane").unwrap();
    assert_eq!(render_full(&after), render_full(&fresh));
}

#[test]
fn unchanged_state_renders_an_empty_delta() {
    let state = common::showcase();
    let rs = compile_state(&state, "dataplane").unwrap();
    assert_eq!(delta(&rs, &state, &state).0, "");
}

#[test]
fn removed_service_is_deleted_and_its_ids_freed() {
    let old = common::showcase();
    let mut new = old.clone();
    let removed = new.services.remove(0);
    let rs = compile_state(&old, "dataplane").unwrap();
    let (text, after) = delta(&rs, &old, &new);
    assert!(text.contains(&format!(
        "delete chain inet dataplane svc-v4-{}/tcp/80",
        removed.name
    )));
    assert!(after.taken.len() < rs.taken.len());
    insta::assert_snapshot!(text);
}

#[test]
fn added_service_takes_a_free_group_id() {
    let old = common::showcase();
    let mut new = old.clone();
    let mut extra = new.services[0].clone();
    extra.name.name = "web2".into();
    extra.cluster_ips = vec![common::ip("10.96.0.99")];
    new.services.push(extra);
    let rs = compile_state(&old, "dataplane").unwrap();
    let (text, after) = delta(&rs, &old, &new);
    assert!(
        text.contains("add chain inet dataplane svc-v4-default/web2/tcp/80"),
        "{text}"
    );
    let ids: Vec<u32> = after
        .services
        .values()
        .flat_map(|s| s.ids.iter().map(|(_, id)| *id))
        .collect();
    let unique: std::collections::BTreeSet<u32> = ids.iter().copied().collect();
    assert_eq!(ids.len(), unique.len(), "group ids collide: {ids:?}");
}

#[test]
fn maglev_uses_a_fixed_hash_and_core_table() {
    use dataplane_core::{maglev_table, BackendSelection, MaglevBackend};
    use dataplane_iptables::nft::render::MAGLEV_SLOTS;
    let mut state = common::showcase();
    state.services[0].backend_selection = BackendSelection::Maglev;
    let rs = compile_state(&state, "dataplane").unwrap();
    let web = &rs.services[&state.services[0].name];
    let rules = web.chain("svc-v4-default/web/tcp/80").unwrap();
    assert!(rules.iter().any(|r| r.contains("jhash ip saddr . ip daddr . meta l4proto . th sport . th dport mod 4093 seed 0x64706c62")), "{rules:?}");
    // Two groups (tcp, udp ports), each a full table that matches core's Maglev table.
    let elements: Vec<(u32, SocketAddr)> = web
        .elements
        .iter()
        .filter_map(|e| match e {
            Element::Backend { slot, to } => Some((*slot, *to)),
            _ => None,
        })
        .collect();
    assert_eq!(elements.len(), 2 * MAGLEV_SLOTS as usize);
    let backends: Vec<MaglevBackend> = ["10.244.0.10:8080", "10.244.1.10:8080"]
        .iter()
        .map(|k| MaglevBackend {
            key: (*k).to_owned(),
            weight: 1,
        })
        .collect();
    let table = maglev_table(&backends, MAGLEV_SLOTS).unwrap();
    let first_group: Vec<SocketAddr> = {
        let mut v = elements.clone();
        v.sort_by_key(|(slot, _)| *slot);
        v.into_iter()
            .take(MAGLEV_SLOTS as usize)
            .map(|(_, to)| to)
            .collect()
    };
    let expected: Vec<SocketAddr> = table
        .iter()
        .map(|i| backends[*i as usize].key.parse().unwrap())
        .collect();
    assert_eq!(first_group, expected);
}

/// Elements are kept in binary form; their nft text is what the transactions used to carry.
#[test]
fn elements_write_their_nft_syntax() {
    use dataplane_core::Protocol;
    use std::sync::Arc;
    let text = |e: &Element| {
        let mut s = e.key();
        e.write_value(&mut s).unwrap();
        (e.set(), s)
    };
    let backend = Element::Backend {
        slot: 0x1002,
        to: "10.244.1.5:8080".parse().unwrap(),
    };
    assert_eq!(
        text(&backend),
        ("backends-v4", "0x00001002 : 10.244.1.5 . 8080".to_owned())
    );
    let v6 = Element::Backend {
        slot: 7,
        to: "[fd00::5]:80".parse().unwrap(),
    };
    assert_eq!(
        text(&v6),
        ("backends-v6", "0x00000007 : fd00::5 . 80".to_owned())
    );
    let frontend = Element::Frontend {
        addr: common::ip("10.96.0.10"),
        protocol: Protocol::Udp,
        port: 53,
        chain: Arc::from("svc-v4-default/dns/udp/53"),
    };
    assert_eq!(
        text(&frontend),
        (
            "service-ips-v4",
            "10.96.0.10 . udp . 53 : goto svc-v4-default/dns/udp/53".to_owned()
        )
    );
    assert_eq!(
        text(&Element::ClusterIp(common::ip("fd00:96::1"))),
        ("cluster-ips-v6", "fd00:96::1".to_owned())
    );
    assert_eq!(
        text(&Element::Hairpin(common::ip("10.244.0.3"))),
        ("hairpin-v4", "10.244.0.3 . 10.244.0.3".to_owned())
    );
}

proptest::proptest! {
    /// The merge over sorted element lists agrees with set difference.
    #[test]
    fn sorted_difference_is_set_difference(
        a in proptest::collection::btree_set(0u16..200, 0..60),
        b in proptest::collection::btree_set(0u16..200, 0..60),
    ) {
        use dataplane_iptables::nft::render::sorted_difference;
        let av: Vec<u16> = a.iter().copied().collect();
        let bv: Vec<u16> = b.iter().copied().collect();
        let got: Vec<u16> = sorted_difference(&av, &bv).copied().collect();
        let want: Vec<u16> = a.difference(&b).copied().collect();
        proptest::prop_assert_eq!(got, want);
    }
}

/// Issue 15 (kube-proxy parity): what each item renders to.
mod parity {
    use super::common::{self, backend, ip, port};
    use dataplane_core::{DesiredState, ObjectName, Protocol, Service, TrafficPolicy};
    use dataplane_iptables::nft::render::{compile_state, NftRuleset};

    fn rules(rs: &NftRuleset, chain: &str) -> Vec<String> {
        rs.services
            .values()
            .find_map(|s| s.chain(chain))
            .unwrap_or_else(|| panic!("no chain {chain}"))
            .to_vec()
    }

    fn base_rules(rs: &NftRuleset, chain: &str) -> Vec<String> {
        let prefix = format!("rule {chain} ");
        rs.base
            .iter()
            .filter_map(|s| s.strip_prefix(&prefix).map(str::to_owned))
            .collect()
    }

    /// One dual-stack LoadBalancer service with IPv4 ranges only, one holding the node's
    /// address (172.18.0.10): allowFromNode.
    fn lb_state() -> DesiredState {
        let mut state = DesiredState::new(common::node());
        let mut s = Service::new(ObjectName::new("default", "lb"));
        s.cluster_ips = vec![ip("10.96.0.20"), ip("fd00:96::20")];
        s.load_balancer_ips = vec![ip("192.0.2.20"), ip("192.0.2.24"), ip("2001:db8::20")];
        s.load_balancer_source_ranges = vec![
            "203.0.113.0/24".parse().unwrap(),
            "172.18.0.0/16".parse().unwrap(),
            "192.0.2.16/29".parse().unwrap(),
        ];
        s.ports = vec![port(Protocol::Tcp, 80, 8080, None)];
        s.backends = vec![
            backend("10.244.0.10", "node-0"),
            backend("fd00:244::10", "node-0"),
        ];
        state.services.push(s);
        state
    }

    /// Items 1, 2, 12: every client of the LB IP meets the firewall (no interface test);
    /// the allow list is the IPv4 ranges plus the LB IPs (allowFromNode) that no range holds
    /// already; the IPv6 LB IP, without IPv6 ranges, goes straight to the service.
    #[test]
    fn source_ranges_bind_every_client_per_family() {
        let rs = compile_state(&lb_state(), "dataplane").unwrap();
        assert_eq!(
            rules(&rs, "fw-v4-default/lb/tcp/80"),
            [
                // Logged (rate-limited, with the reason and the service) right before the
                // drop, which counts by reason (see `eventlog`).
                "ip saddr != { 203.0.113.0/24, 172.18.0.0/16, 192.0.2.16/29, 192.0.2.24/32 } limit rate 20/second burst 20 packets counter name \"events-logged\" log prefix \"dp drop source-range default/lb\" group 2000",
                "ip saddr != { 203.0.113.0/24, 172.18.0.0/16, 192.0.2.16/29, 192.0.2.24/32 } counter name \"drop-source-range\" goto drop-service",
                "goto ext-v4-default/lb/tcp/80",
            ]
        );
        let svc = rs.services.values().next().unwrap();
        assert!(svc.chain("fw-v6-default/lb/tcp/80").is_none());
        let v6_lb = svc
            .elements
            .iter()
            .find(|e| e.key() == "2001:db8::20 . tcp . 80")
            .expect("v6 LB element");
        let mut value = String::new();
        v6_lb.write_value(&mut value).unwrap();
        assert_eq!(value, " : goto ext-v6-default/lb/tcp/80");
        // No IPv4 range in any IPv6 rule.
        for (chain, rules) in &svc.chains {
            if chain.contains("-v6-") {
                assert!(rules.iter().all(|r| !r.contains("203.0.113")), "{rules:?}");
            }
        }
        // An IPv6 range alone restricts only the IPv6 LB IP.
        let mut v6_only = lb_state();
        v6_only.services[0].load_balancer_source_ranges = vec!["2001:db8:1::/48".parse().unwrap()];
        let rs = compile_state(&v6_only, "dataplane").unwrap();
        let svc = rs.services.values().next().unwrap();
        assert!(svc.chain("fw-v4-default/lb/tcp/80").is_none());
        assert_eq!(
            svc.chain("fw-v6-default/lb/tcp/80").unwrap()[1],
            "ip6 saddr != { 2001:db8:1::/48 } counter name \"drop-source-range\" goto drop-service"
        );
    }

    /// Items 3 and 6: externalTrafficPolicy Local short-circuits the node (masqueraded:
    /// offset with bit 31) and this node's pods (cluster-wide, not masqueraded) before the
    /// outside clients' local choice; with allServices the pods are masqueraded too, the
    /// outside clients still not.
    #[test]
    fn etp_local_short_circuits_node_and_pods() {
        let mut state = lb_state();
        state.services[0].load_balancer_source_ranges.clear();
        state.services[0].external_traffic_policy = TrafficPolicy::Local;
        state.services[0]
            .backends
            .push(backend("10.244.1.10", "node-1"));
        let rs = compile_state(&state, "dataplane").unwrap();
        let ext = rules(&rs, "ext-v4-default/lb/tcp/80");
        assert_eq!(ext.len(), 3, "{ext:?}");
        assert!(
            ext[0].starts_with(
                "counter fib saddr type local meta mark set numgen random mod 2 offset 0x8"
            ),
            "{ext:?}"
        );
        assert!(
            ext[1]
                .starts_with("ip saddr @pod-cidrs-v4 meta mark set numgen random mod 2 offset 0x0"),
            "{ext:?}"
        );
        assert!(
            ext[2].starts_with("meta mark set numgen random mod 1 offset 0x0"),
            "{ext:?}"
        );
        state.node.masquerade.all_services = true;
        let rs = compile_state(&state, "dataplane").unwrap();
        let ext = rules(&rs, "ext-v4-default/lb/tcp/80");
        assert_eq!(ext.len(), 3, "{ext:?}");
        assert!(
            ext[0].starts_with(
                "counter fib saddr type local meta mark set numgen random mod 2 offset 0x8"
            ),
            "{ext:?}"
        );
        assert!(
            ext[1]
                .starts_with("ip saddr @pod-cidrs-v4 meta mark set numgen random mod 2 offset 0x8"),
            "{ext:?}"
        );
        assert!(
            ext[2].starts_with("meta mark set numgen random mod 1 offset 0x0"),
            "{ext:?}"
        );
        // externalTrafficPolicy Cluster: one masqueraded rule for everyone.
        state.services[0].external_traffic_policy = TrafficPolicy::Cluster;
        let rs = compile_state(&state, "dataplane").unwrap();
        let ext = rules(&rs, "ext-v4-default/lb/tcp/80");
        assert_eq!(ext.len(), 1, "{ext:?}");
        assert!(ext[0].contains("offset 0x8"), "{ext:?}");
    }

    /// Items 4, 6, 7: a ClusterIP is one rule for every client, by internalTrafficPolicy
    /// (Local without a local backend drops outside clients too); sources outside the
    /// cluster CIDRs (the node, outside) are marked in `dnat-clusterip`, whatever the
    /// interface; allServices marks every client in the rule itself.
    #[test]
    fn clusterip_internal_policy_for_every_client() {
        let mut state = lb_state();
        state.services[0].load_balancer_ips.clear();
        state.services[0].internal_traffic_policy = TrafficPolicy::Local;
        state.services[0].backends = vec![backend("10.244.1.10", "node-1")];
        let rs = compile_state(&state, "dataplane").unwrap();
        assert_eq!(
            rules(&rs, "svc-v4-default/lb/tcp/80"),
            [
                "counter limit rate 20/second burst 20 packets counter name \"events-logged\" log prefix \"dp drop no-backend default/lb\" group 2000",
                "counter name \"drop-no-backend\" goto drop-service"
            ]
        );
        state.services[0].internal_traffic_policy = TrafficPolicy::Cluster;
        let rs = compile_state(&state, "dataplane").unwrap();
        let svc = rules(&rs, "svc-v4-default/lb/tcp/80");
        assert_eq!(svc.len(), 1, "{svc:?}");
        assert!(
            svc[0].ends_with("goto dnat-clusterip-v4") && !svc[0].contains("offset 0x8"),
            "{svc:?}"
        );
        assert_eq!(
            base_rules(&rs, "dnat-clusterip-v4"),
            [
                "ip saddr != @cluster-cidrs-v4 meta mark set meta mark | 0x80000000",
                "goto dnat-v4"
            ]
        );
        state.node.masquerade.all_services = true;
        let rs = compile_state(&state, "dataplane").unwrap();
        let svc = rules(&rs, "svc-v4-default/lb/tcp/80");
        assert!(
            svc[0].contains("offset 0x8") && svc[0].ends_with("goto dnat-v4"),
            "{svc:?}"
        );
        // A family without cluster CIDRs has no local detector in kube-proxy: no client is
        // marked for being outside them (not `dnat-clusterip`, whose set would be empty).
        state.node.masquerade.all_services = false;
        state
            .node
            .cluster_cidrs
            .retain(ipnetwork::IpNetwork::is_ipv6);
        let rs = compile_state(&state, "dataplane").unwrap();
        let svc = rules(&rs, "svc-v4-default/lb/tcp/80");
        assert!(
            !svc[0].contains("offset 0x8") && svc[0].ends_with("goto dnat-v4"),
            "{svc:?}"
        );
    }

    /// Item 5: kube-proxy's cluster-ips-check after DNAT (forward, output), new connections
    /// only: an allocated ClusterIP on another port rejected, the rest of the service CIDRs
    /// (this family's) dropped; the NAT dispatch no longer rejects. A ClusterIP outside the
    /// service CIDRs is a frontend and a ClusterIP like any other.
    #[test]
    fn unallocated_service_addresses_are_dropped_after_dnat() {
        let mut state = lb_state();
        state.services[0].cluster_ips = vec![ip("10.200.0.20")];
        let rs = compile_state(&state, "dataplane").unwrap();
        assert_eq!(
            base_rules(&rs, "filter-forward"),
            ["ct state new jump cluster-ips-check"]
        );
        assert_eq!(
            base_rules(&rs, "filter-output-post-dnat"),
            ["ct state new jump cluster-ips-check"]
        );
        assert_eq!(
            base_rules(&rs, "cluster-ips-check"),
            [
                "ip daddr @cluster-ips-v4 limit rate 20/second burst 20 packets counter name \"events-logged\" log prefix \"dp reject unallocated\" group 2000",
                "ip daddr @cluster-ips-v4 counter name \"reject-unallocated\" goto reject-service",
                "ip daddr @service-cidrs-v4 limit rate 20/second burst 20 packets counter name \"events-logged\" log prefix \"dp drop unallocated\" group 2000",
                "ip daddr @service-cidrs-v4 counter name \"drop-unallocated\" goto drop-service",
                "ip6 daddr @cluster-ips-v6 limit rate 20/second burst 20 packets counter name \"events-logged\" log prefix \"dp reject unallocated\" group 2000",
                "ip6 daddr @cluster-ips-v6 counter name \"reject-unallocated\" goto reject-service",
                "ip6 daddr @service-cidrs-v6 limit rate 20/second burst 20 packets counter name \"events-logged\" log prefix \"dp drop unallocated\" group 2000",
                "ip6 daddr @service-cidrs-v6 counter name \"drop-unallocated\" goto drop-service",
            ]
        );
        assert!(base_rules(&rs, "services")
            .iter()
            .all(|r| r.contains("vmap @service-ips")));
        assert!(rs.base.iter().any(|s| s
            == "set service-cidrs-v4 { type ipv4_addr; flags interval; auto-merge; elements = { 10.96.0.0/12 }; }"));
        assert!(rs
            .base
            .iter()
            .any(|s| s == "set service-cidrs-v6 { type ipv6_addr; flags interval; auto-merge; }"));
        let keys: Vec<String> = rs
            .services
            .values()
            .next()
            .unwrap()
            .elements
            .iter()
            .map(dataplane_iptables::nft::render::Element::key)
            .collect();
        assert!(
            keys.contains(&"10.200.0.20 . tcp . 80".to_owned()),
            "{keys:?}"
        );
        assert!(keys.contains(&"10.200.0.20".to_owned()), "{keys:?}");
    }
}

/// `NetfilterConfig::shared_pick_chains`: the ports that only pick at random lead to a chain
/// shared by every port with as many slots, through the `service-slots` maps.
mod shared_picks {
    use super::*;
    use dataplane_iptables::nft::render::{compile_state_with, PICK_SLOTS};
    use dataplane_iptables::plan::node_plan_with;
    use dataplane_iptables::NetfilterConfig;

    fn config() -> NetfilterConfig {
        let mut c = NetfilterConfig::nftables(None);
        c.shared_pick_chains = true;
        c
    }

    /// [`super::delta`] with the shared chains.
    fn delta(rs: &NftRuleset, old: &DesiredState, new: &DesiredState) -> (String, NftRuleset) {
        delta_with(rs, old, new, &node_plan_with(&new.node, &config()))
    }

    #[test]
    fn full_ruleset_golden() {
        let rs = compile_state_with(&common::showcase(), &config()).unwrap();
        insta::assert_snapshot!(render_full(&rs));
    }

    /// A synthetic service (ClusterIP and NodePort, 4 backends) has no chain of its own:
    /// its frontends lead to `pick-clusterip-v4-4` and `pick-v4-4`, one mark element per
    /// frontend (the NodePort's with the masquerade bit) and its backends in
    /// `group-backends-v4`.
    #[test]
    fn a_plain_service_has_no_chain_of_its_own() {
        let state = dataplane_core::synthetic::state(3, 4);
        let rs = compile_state_with(&state, &config()).unwrap();
        let text = render_full(&rs);
        assert!(!text.contains("add chain inet dataplane svc-"), "{text}");
        assert!(!text.contains("add chain inet dataplane ext-"), "{text}");
        // Every pick chain, 1 to 32 slots, both families, ClusterIP or not.
        assert_eq!(rs.picks.len(), 4 * PICK_SLOTS as usize);
        assert!(rs.picks.iter().any(|p| p.name() == "pick-clusterip-v4-4"));
        assert!(text.contains(
            "add rule inet dataplane pick-clusterip-v4-4 counter name \"translated\" meta l4proto { tcp, udp, sctp } dnat ip to meta mark & 0x7fffffff . numgen random mod 4 map @group-backends-v4"
        ), "{text}");
        let svc = rs.services.values().next().unwrap();
        assert!(svc.chains.is_empty());
        let id = svc.ids[0].1;
        let mut marks = 0;
        let mut backends = Vec::new();
        for e in &*svc.elements {
            match e {
                Element::Mark { port, mark, .. } => {
                    marks += 1;
                    let bit = if *port == 80 { 0 } else { 0x8000_0000 };
                    assert_eq!(*mark, (id << 12) | bit, "port {port}");
                }
                Element::GroupBackend { slot, to } => {
                    assert_eq!(slot >> 12, id);
                    backends.push((slot & 0xfff, *to));
                }
                Element::Backend { .. } => panic!("{e:?} in the per-slot map"),
                _ => {}
            }
        }
        // The ClusterIP (port 80) and the NodePort on the node address.
        assert_eq!(marks, 2);
        assert_eq!(
            backends.iter().map(|(s, _)| *s).collect::<Vec<_>>(),
            [0, 1, 2, 3]
        );
    }

    /// A backend replaced is elements only (no chain touched); a port that gains a backend
    /// moves its frontend to the next pick chain, which the full sync wrote (a partial sync
    /// adds none); past 32 slots the port gets a chain of its own.
    #[test]
    fn endpoint_changes_are_elements_and_the_pick_chains_are_all_there() {
        let old = dataplane_core::synthetic::state(3, 4);
        let rs = compile_state_with(&old, &config()).unwrap();
        let mut moved = old.clone();
        moved.services[0].backends[0].ip = common::ip("10.244.9.9");
        let (text, after) = delta(&rs, &old, &moved);
        assert!(!text.contains("chain") && !text.contains("rule"), "{text}");
        assert!(text.contains("10.244.9.9"), "{text}");
        // The patched ruleset holds what a fresh compile does (hairpin elements are only
        // added between full syncs).
        let fresh = compile_state_with(&moved, &config()).unwrap();
        assert_eq!(after.services, fresh.services);
        assert_eq!(after.picks, fresh.picks);

        let mut grown = old.clone();
        grown.services[0]
            .backends
            .push(Backend::new(common::ip("10.244.9.10")));
        let (text, after) = delta(&rs, &old, &grown);
        assert!(!text.contains("chain"), "{text}");
        assert!(
            text.contains("comment \"svc-v4-bench/svc-0/tcp/80\" : goto pick-clusterip-v4-5"),
            "{text}"
        );
        let fresh = compile_state_with(&grown, &config()).unwrap();
        assert_eq!(after.services, fresh.services);
        assert_eq!(after.picks, fresh.picks);
        // 33 backends: a chain of its own.
        let mut big = old.clone();
        for k in 0..29 {
            big.services[1]
                .backends
                .push(Backend::new(common::ip(&format!("10.244.8.{k}"))));
        }
        let (text, after) = delta(&rs, &old, &big);
        assert!(
            text.contains("add chain inet dataplane svc-v4-bench/svc-1/tcp/80"),
            "{text}"
        );
        let fresh = compile_state_with(&big, &config()).unwrap();
        assert_eq!(after.services, fresh.services);
    }
}
