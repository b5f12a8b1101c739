//! `dp_local` (pod address -> the ifindex of its host-side veth) across incremental syncs,
//! with real traffic: the backend keeps a copy of what it wrote instead of reading the map
//! back on every sync, so these check that the copy never hides a change.
//!
//! ```text
//!   node-0:  pod-0-0 ── vp0 ─┐
//!            pod-0-1 ── vp1 ─┼─ 10.96.0.10:80 (ClusterIP, DNAT to a pod, then to its veth
//!            pod-0-2 ── vp2 ─┘                 by dp_local's ifindex)
//! ```
//!
//! - A veth deleted and made again under the same name (a pod restarted in place) between two
//!   incremental syncs gets its new ifindex in `dp_local` at the second, and traffic.
//! - A sync whose `dp_local` write fails leaves the copy unknown: the next (full) apply reads
//!   the map again and repairs it.

mod common;

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use aya::maps::{HashMap, Map, MapData};
use dataplane_core::{diff, Dataplane, DesiredState, Error, Protocol};
use dataplane_ebpf::maps::{family_of, Addr, LocalKey, LocalValue};
use dataplane_testkit::lab::GATEWAY_MAC;
use dataplane_testkit::{probe, require_root, Lab, LabSpec, ProbeOutcome};

const VIP: &str = "10.96.0.10";
/// Bounds each probe; measures nothing.
const TIMEOUT: Duration = Duration::from_secs(2);

fn lab() -> Lab {
    Lab::new(LabSpec {
        nodes: 1,
        pods_per_node: 3,
        external_clients: 0,
        ipv6: false,
    })
    .expect("lab")
}

fn local_map(pin_dir: &std::path::Path) -> HashMap<MapData, LocalKey, LocalValue> {
    let map = MapData::from_pin(pin_dir.join("dp_local")).expect("pinned dp_local");
    HashMap::try_from(Map::HashMap(map)).expect("dp_local")
}

fn key(ip: IpAddr) -> LocalKey {
    LocalKey {
        addr: Addr::new(ip),
        family: family_of(&ip),
        pad: [0; 3],
    }
}

/// What `dp_local` holds: address -> ifindex.
fn local_entries(pin_dir: &std::path::Path) -> BTreeMap<IpAddr, u32> {
    local_map(pin_dir)
        .iter()
        .map(|r| r.expect("dp_local entry"))
        .map(|(k, v)| (k.addr.ip(k.family), v.ifindex))
        .collect()
}

/// The ifindex of `ifname` in node 0's namespace.
fn ifindex(lab: &Lab, ifname: &str) -> u32 {
    let name = ifname.to_owned();
    lab.node(0)
        .netns
        .run(move || nix::net::if_::if_nametoindex(name.as_str()))
        .expect("enter node-0")
        .expect("if_nametoindex")
}

/// The backend that answered a TCP probe of the VIP from pod-0-0.
fn answer(lab: &Lab, timeout: Duration) -> ProbeOutcome {
    let vip = SocketAddr::new(VIP.parse().unwrap(), 80);
    probe(&lab.pod(0).netns, vip, Protocol::Tcp, timeout).expect("probe runs")
}

/// Deletes pod `p`'s veth pair and makes it again as the lab made it (same names, addresses
/// and routes): the host side gets a new ifindex, the pod's server keeps listening.
fn recreate_veth(lab: &Lab, p: usize) {
    let pod = lab.pod(p);
    let node = &lab.node(0).netns;
    let host_if = &pod.host_interface;
    let addr = pod.addresses[0];
    node.ip_batch(&[
        format!("link del {host_if}"),
        format!(
            "link add {host_if} address {GATEWAY_MAC} type veth peer name eth0 netns {}",
            pod.netns.name()
        ),
        format!("link set {host_if} up"),
    ])
    .expect("recreate the veth");
    pod.netns
        .ip_batch(&[
            "link set eth0 up".to_owned(),
            format!("addr add {addr}/32 dev eth0"),
            "route add 169.254.1.1 dev eth0 scope link".to_owned(),
            format!("neigh replace 169.254.1.1 lladdr {GATEWAY_MAC} dev eth0 nud permanent"),
            "route add 0.0.0.0/0 via 169.254.1.1 dev eth0".to_owned(),
        ])
        .expect("configure the pod's new eth0");
    node.ip_batch(&[format!("route add {addr}/32 dev {host_if}")])
        .expect("the node's route to the pod");
}

/// `state` with a second ClusterIP `other` (10.96.0.11) to pod-0-2 added or removed: a
/// change that touches no pod.
fn toggle_other(lab: &Lab, state: &DesiredState) -> DesiredState {
    let mut next = state.clone();
    if next.services.iter().any(|s| s.name.name == "other") {
        next.services.retain(|s| s.name.name != "other");
    } else {
        next.services
            .push(common::lab_cluster_ip(lab, "other", "10.96.0.11", &[2]));
    }
    next
}

#[test]
fn a_veth_recreated_between_incremental_syncs_gets_its_new_ifindex_and_traffic() {
    if !require_root("a_veth_recreated_between_incremental_syncs_gets_its_new_ifindex_and_traffic")
    {
        return;
    }
    let lab = lab();
    let (pins, mut dp) = common::lab_node_dataplane(&lab, "dpe-localre", |_| {});
    let pin_dir = pins.0[0].clone();
    let mut state = lab.desired_state(0);
    state.services = vec![common::lab_cluster_ip(&lab, "web", VIP, &[1])];
    dp.apply(&state).expect("apply");
    let next = toggle_other(&lab, &state);
    dp.apply_changes(&diff(&state, &next))
        .expect("first incremental sync");
    let state = next;
    let pod1 = lab.pod(1).addresses[0];
    let before = ifindex(&lab, "vp1");
    assert_eq!(local_entries(&pin_dir)[&pod1], before);
    assert_eq!(common::answered(&answer(&lab, TIMEOUT)).0, "pod-0-1");

    recreate_veth(&lab, 1);
    let after = ifindex(&lab, "vp1");
    assert_ne!(after, before, "a new device");
    assert!(
        !matches!(
            answer(&lab, Duration::from_millis(500)),
            ProbeOutcome::Answered { .. }
        ),
        "before the sync dp_local sends pod-0-1's traffic to the deleted veth"
    );

    let next = toggle_other(&lab, &state);
    dp.apply_changes(&diff(&state, &next))
        .expect("second incremental sync");
    assert_eq!(
        local_entries(&pin_dir)[&pod1],
        after,
        "dp_local follows the new ifindex"
    );
    let node_ns = lab.node(0).netns.path().to_owned();
    assert_eq!(
        common::tcx_programs_in(node_ns.clone(), "vp1", true),
        ["dp_to_pod"],
        "attached again"
    );
    assert_eq!(
        common::tcx_programs_in(node_ns, "vp1", false),
        ["dp_from_pod"]
    );
    assert_eq!(
        common::answered(&answer(&lab, TIMEOUT)).0,
        "pod-0-1",
        "through the new veth"
    );
    dp.reset().expect("reset");
}

/// Entries written behind the backend's back fill `dp_local` (it is written by this backend
/// alone, so an incremental sync trusts its copy of it): the next incremental sync's write
/// fails, and the apply after it, a full one, reads the map again: the strangers go, pod-0-2
/// comes in.
#[test]
fn an_apply_after_a_failed_local_write_reads_dp_local_again() {
    if !require_root("an_apply_after_a_failed_local_write_reads_dp_local_again") {
        return;
    }
    let lab = lab();
    let (pins, mut dp) = common::lab_node_dataplane(&lab, "dpe-localfail", |caps| caps.local = 3);
    let pin_dir = pins.0[0].clone();
    let mut full = lab.desired_state(0);
    full.services = vec![common::lab_cluster_ip(&lab, "web", VIP, &[2])];
    let pod2 = lab.pod(2).addresses[0];
    // Without pod-0-2's endpoint: dp_local holds pod-0-0's and pod-0-1's addresses.
    let mut state = full.clone();
    state.endpoints.retain(|e| !e.ips.contains(&pod2));
    dp.apply(&state).expect("apply");
    let next = toggle_other(&lab, &state);
    dp.apply_changes(&diff(&state, &next))
        .expect("an incremental sync");
    let state = next;
    assert_eq!(local_entries(&pin_dir).len(), 2);

    let stranger: IpAddr = "10.244.99.1".parse().unwrap();
    local_map(&pin_dir)
        .insert(key(stranger), LocalValue { ifindex: 1 }, 0)
        .expect("a stranger's entry");
    let mut with_pod2 = state.clone();
    with_pod2.endpoints = full.endpoints.clone();
    let failed = dp.apply_changes(&diff(&state, &with_pod2));
    assert!(
        matches!(&failed, Err(e) if format!("{e:?}").contains("\"dp_local\"")),
        "dp_local is full: {failed:?}"
    );
    assert!(
        matches!(
            dp.apply_changes(&diff(&state, &with_pod2)),
            Err(Error::FullSyncRequired)
        ),
        "after a failure the next sync is full"
    );
    dp.apply(&with_pod2).expect("the full apply");
    let want: BTreeMap<IpAddr, u32> = (0..3)
        .map(|p| {
            let pod = lab.pod(p);
            (pod.addresses[0], ifindex(&lab, &pod.host_interface))
        })
        .collect();
    assert_eq!(local_entries(&pin_dir), want, "read again and repaired");
    assert_eq!(
        common::answered(&answer(&lab, TIMEOUT)).0,
        "pod-0-2",
        "to pod-0-2's veth"
    );
    dp.reset().expect("reset");
}
