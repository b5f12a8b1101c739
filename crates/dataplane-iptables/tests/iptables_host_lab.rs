//! Host endpoint policy in the iptables flavour with real traffic in the testkit lab: an
//! untracked deny over a 100k-prefix `hash:net` set (its apply time printed, not asserted),
//! failsafe ports before it, its removal by a partial sync, and a normal policy's default
//! deny of the node's own ingress. Needs root. The whole host policy table is
//! `tests/host_conformance.rs`.
//!
//! ```text
//!   external-0 (allowed)   external-1 (in the blocked prefixes)
//!        └──────────── br0 ────────────┘
//!                        │ eth0 = host endpoint (role=uplink)
//!   node-0: servers on 7000 and 22 (failsafe) in its own namespace
//! ```

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::{Duration, Instant};

use dataplane_core::ipnetwork::{IpNetwork, Ipv4Network};
use dataplane_core::{
    diff, Dataplane, DesiredState, HostAction, HostEndpoint, HostPolicy, HostPort, HostRule,
    LabelSelector, PolicyType, Protocol,
};
use dataplane_iptables::{IptablesDataplane, IptablesMode, NetfilterConfig};
use dataplane_testkit::{probe, require_root, serve, Family, Lab, LabSpec, ProbeOutcome};

const APP: u16 = 7000;
const SSH: u16 = 22;

fn uplink() -> LabelSelector {
    LabelSelector::default().with_label("role", "uplink")
}

/// Node-0's state with a host endpoint on its uplink and `policies`.
fn hosted(lab: &Lab, policies: Vec<HostPolicy>) -> DesiredState {
    let node = lab.node(0);
    let mut s = lab.desired_state(0).with_host_endpoint(
        HostEndpoint::new("node-0-eth0", node.name.clone(), node.uplink.clone())
            .with_label("role", "uplink"),
    );
    s.host_policies = policies;
    s
}

/// Whether external `k` gets an answer from node-0's server on `port` (TCP).
fn answered(lab: &Lab, k: usize, port: u16) -> bool {
    let node = lab.node(0).address(Family::V4).unwrap();
    let outcome = probe(
        &lab.external(k).netns,
        SocketAddr::new(node, port),
        Protocol::Tcp,
        Duration::from_millis(700),
    )
    .expect("probe");
    match outcome {
        ProbeOutcome::Answered { .. } => true,
        ProbeOutcome::Timeout => false,
        other => panic!("external-{k} to port {port}: {other:?} (neither answered nor dropped)"),
    }
}

/// `n` /32 prefixes in 100.64.0.0/10 and the /32 of `extra`.
fn prefixes(n: u32, extra: IpAddr) -> Vec<IpNetwork> {
    let base = u32::from(Ipv4Addr::new(100, 64, 0, 0));
    let mut nets: Vec<IpNetwork> = (0..n)
        .map(|i| IpNetwork::V4(Ipv4Network::new(Ipv4Addr::from(base + i), 32).unwrap()))
        .collect();
    nets.push(IpNetwork::from(extra));
    nets
}

/// The members of our `hash:net` sets in node-0's namespace.
fn net_set_members(lab: &Lab) -> usize {
    let out = lab
        .node(0)
        .netns
        .exec("ipset", &["save"])
        .expect("ipset save");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|l| l.starts_with("add DP-n4-"))
        .count()
}

#[test]
fn untracked_deny_of_100k_prefixes_with_failsafe_and_default_deny_nft() {
    if require_root("untracked_deny_of_100k_prefixes_with_failsafe_and_default_deny_nft") {
        host_policy_in_the_lab(IptablesMode::Nft);
    }
}

#[test]
fn untracked_deny_of_100k_prefixes_with_failsafe_and_default_deny_legacy() {
    if require_root("untracked_deny_of_100k_prefixes_with_failsafe_and_default_deny_legacy") {
        host_policy_in_the_lab(IptablesMode::Legacy);
    }
}

/// The whole sequence with the iptables tools of `mode`.
fn host_policy_in_the_lab(mode: IptablesMode) {
    let lab = Lab::new(LabSpec {
        nodes: 1,
        pods_per_node: 1,
        external_clients: 2,
        ipv6: false,
    })
    .expect("lab");
    let node = lab.node(0);
    let _app = serve(&node.netns, "node-0:7000", APP).expect("serve 7000");
    let _ssh = serve(&node.netns, "node-0:22", SSH).expect("serve 22");
    let mut config = NetfilterConfig::iptables(Some(node.netns.path().to_owned()));
    config.ipset_max_elements = 131_072;
    config.iptables_mode = mode;
    let [save, _] = IptablesDataplane::save_tools(&config);
    let mut dp = IptablesDataplane::new(config);

    let open = hosted(&lab, Vec::new());
    dp.apply(&open).expect("apply open");
    assert!(answered(&lab, 0, APP) && answered(&lab, 1, APP));

    // Untracked deny of 100k prefixes, external-1's among them.
    let attacker = lab.external(1).address(Family::V4).unwrap();
    let block = HostPolicy::new("block", uplink())
        .untracked()
        .with_ingress(HostRule::new(HostAction::Deny).from_nets(prefixes(100_000, attacker)));
    let blocked = hosted(&lab, vec![block]);
    let started = Instant::now();
    dp.apply_changes(&diff(&open, &blocked))
        .expect("apply the 100k-prefix untracked deny");
    let took = started.elapsed();
    println!("{mode:?}: untracked deny of 100001 prefixes (hash:net): apply_changes took {took:?}");
    assert_eq!(net_set_members(&lab), 100_001);
    assert!(answered(&lab, 0, APP), "external-0 is not in the prefixes");
    assert!(
        !answered(&lab, 1, APP),
        "external-1 is denied before conntrack"
    );
    assert!(
        answered(&lab, 1, SSH),
        "failsafe ports come before untracked policy"
    );
    // A full sync of the same state changes nothing and keeps the set.
    let started = Instant::now();
    dp.apply(&blocked).expect("full sync");
    println!(
        "{mode:?}: the same state again as a full sync took {:?}",
        started.elapsed()
    );
    assert!(!answered(&lab, 1, APP));

    // A normal policy: the node's own ingress allows TCP 7000 from external-0 only; the
    // rest is denied by default (but for the failsafe ports).
    let external0 = IpNetwork::from(lab.external(0).address(Family::V4).unwrap());
    let normal = HostPolicy::new("app-from-0", uplink())
        .with_types([PolicyType::Ingress])
        .with_ingress(
            HostRule::new(HostAction::Allow)
                .protocol(Protocol::Tcp)
                .from_nets([external0])
                .to_ports([HostPort::Number(APP)]),
        );
    let normal_only = hosted(&lab, vec![normal]);
    dp.apply_changes(&diff(&blocked, &normal_only))
        .expect("normal policy");
    assert_eq!(net_set_members(&lab), 0, "the 100k set is destroyed");
    assert!(answered(&lab, 0, APP));
    assert!(!answered(&lab, 1, APP), "default deny");
    assert!(answered(&lab, 1, SSH), "failsafe");

    // Back to open: every chain and hook of host policy goes.
    dp.apply_changes(&diff(&normal_only, &open)).expect("open");
    assert!(answered(&lab, 1, APP));
    dp.apply(&DesiredState {
        host_endpoints: Vec::new(),
        ..open.clone()
    })
    .expect("no host endpoint");
    for table in ["raw", "mangle"] {
        let out = node
            .netns
            .exec(&save.to_string_lossy(), &["-t", table])
            .expect("iptables-save");
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(!text.contains("DP-"), "{table}:\n{text}");
    }
    dp.reset().expect("reset");
}
