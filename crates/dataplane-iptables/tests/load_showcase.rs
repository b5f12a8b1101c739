//! Every construct the renderers emit (SCTP, affinity sets in both families, weights, source
//! ranges, Local policies, reject and drop) is accepted by the kernel, and reads back as the
//! frontends and backends the plan says. Needs root.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;

use dataplane_core::{Dataplane, ObservedFrontend, Protocol};
use dataplane_iptables::plan::{plan, Choice};
use dataplane_iptables::{IptablesDataplane, NetfilterConfig, NftablesDataplane};
use dataplane_testkit::{require_root, Lab, LabSpec};

fn bare_node() -> Lab {
    Lab::new(LabSpec {
        nodes: 1,
        pods_per_node: 0,
        external_clients: 0,
        ipv6: true,
    })
    .expect("lab")
}

/// Frontend → every backend any of its choices may pick, from the plan.
fn expected() -> BTreeMap<(SocketAddr, Protocol), BTreeSet<SocketAddr>> {
    let state = common::showcase();
    let mut out = BTreeMap::new();
    for ports in plan(&state).services.values() {
        for p in ports {
            let all = |choices: &[&Choice]| -> BTreeSet<SocketAddr> {
                choices
                    .iter()
                    .filter_map(|c| match c {
                        Choice::Backends(b) => Some(b.iter().map(|(a, _)| *a)),
                        _ => None,
                    })
                    .flatten()
                    .collect()
            };
            // A ClusterIP picks by internalTrafficPolicy whoever the client is.
            for ip in &p.cluster_ips {
                out.insert(
                    (SocketAddr::new(*ip, p.port), p.protocol),
                    all(&[&p.internal]),
                );
            }
            let ext = all(&[&p.external, &p.cluster]);
            for ip in p.external_ips.iter().chain(&p.load_balancer_ips) {
                out.insert((SocketAddr::new(*ip, p.port), p.protocol), ext.clone());
            }
            if let Some((addrs, np)) = &p.node_port {
                for a in addrs {
                    out.insert((SocketAddr::new(*a, *np), p.protocol), ext.clone());
                }
            }
        }
    }
    out
}

fn as_map(
    frontends: &[ObservedFrontend],
) -> BTreeMap<(SocketAddr, Protocol), BTreeSet<SocketAddr>> {
    frontends
        .iter()
        .map(|f| ((f.address, f.protocol), f.backends.clone()))
        .collect()
}

#[test]
fn nftables_loads_and_reads_back_the_showcase() {
    if !require_root("nftables_loads_and_reads_back_the_showcase") {
        return;
    }
    let lab = bare_node();
    let mut dp = NftablesDataplane::new(NetfilterConfig::nftables(Some(
        lab.node(0).netns.path().to_owned(),
    )));
    dp.apply(&common::showcase()).unwrap();
    assert_eq!(as_map(&dp.observe().unwrap().frontends), expected());
    if std::env::var_os("DP_WRITE_FIXTURES").is_some() {
        let out = lab
            .node(0)
            .netns
            .exec("nft", &["-j", "list", "table", "inet", "dataplane"])
            .unwrap();
        std::fs::write(
            concat!(
                env!("CARGO_MANIFEST_DIR"),
                "/tests/fixtures/showcase-nft.json"
            ),
            out.stdout,
        )
        .unwrap();
    }
    dp.reset().unwrap();
    assert!(dp.observe().unwrap().frontends.is_empty());
}

/// The JSON reader against a listing the kernel produced (refresh with `DP_WRITE_FIXTURES=1`).
#[test]
fn nft_json_listing_parses_to_the_planned_frontends() {
    let json = include_str!("fixtures/showcase-nft.json");
    let listing = dataplane_iptables::nft::observe::parse_listing(json).unwrap();
    let observed = dataplane_iptables::nft::observe::observed_state(&listing).unwrap();
    assert_eq!(as_map(&observed.frontends), expected());
    assert!(
        dataplane_iptables::nft::observe::chain_counter(&listing, "svc-v4-default/web/tcp/80")
            .is_some()
    );
}

#[test]
fn iptables_loads_and_reads_back_the_showcase() {
    if !require_root("iptables_loads_and_reads_back_the_showcase") {
        return;
    }
    let lab = bare_node();
    let mut dp = IptablesDataplane::new(NetfilterConfig::iptables(Some(
        lab.node(0).netns.path().to_owned(),
    )));
    dp.apply(&common::showcase()).unwrap();
    assert_eq!(as_map(&dp.observe().unwrap().frontends), expected());
    dp.reset().unwrap();
    assert!(dp.observe().unwrap().frontends.is_empty());
}
