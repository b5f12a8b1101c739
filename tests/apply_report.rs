//! `ApplyReport::services_changed` / `services_removed` mean the same on every dataplane: one
//! scripted sequence of applies runs against the eBPF, nftables and iptables dataplanes, each
//! in a network namespace of its own, and the in-memory `FakeDataplane`, and every report must
//! carry the same, exact counts.
//!
//! ```text
//!   [netns dpar-PID-ebpf]      [netns dpar-PID-nft]       [netns dpar-PID-ipt]
//!    eth0 (veth) 172.18.0.10    eth0 (veth) 172.18.0.10    eth0 (veth) 172.18.0.10
//!    TC programs + pinned maps  table inet dataplane       DP-* chains
//! ```
//!
//! Counts compare with the services the last *successful* apply programmed: all of them on
//! the first apply, none when a full sync finds everything as it was, and a failed apply
//! changes nothing they are compared with. Also here: the dataplanes are `Send` (they fit a
//! `BoxDataplane`), and the netfilter ones need no maintenance while the eBPF one does.
//!
//! Run with `cargo test --features ebpf,nft --test apply_report` (as root; it prints SKIPPED
//! otherwise and fails under `CI=true`).
#![cfg(all(feature = "ebpf", feature = "nft"))]

use std::net::IpAddr;
use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use dataplane_core::fake::{FakeDataplane, Fault};
use dataplane_core::{
    diff, ApplyReport, Backend, BoxDataplane, Change, ChangeSet, Dataplane, DesiredState,
    Interfaces, Masquerade, Node, ObjectName, PortRange, Protocol, Service, ServicePort,
};
use dataplane_ebpf::{EbpfConfig, EbpfDataplane};
use dataplane_iptables::{IptablesDataplane, NetfilterConfig, NftablesDataplane};
use dataplane_testkit::require_root;

/// A network namespace with a veth `eth0` (the node's uplink), deleted on drop, and a bpffs
/// pin directory removed on drop.
struct Netns {
    name: String,
    pin_dir: PathBuf,
}

fn ip_cmd(args: &[&str]) {
    let out = Command::new("ip").args(args).output().expect("ip runs");
    assert!(
        out.status.success(),
        "ip {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

impl Netns {
    fn new(tag: &str) -> Self {
        let name = format!("dpar-{}-{tag}", std::process::id());
        let pin_dir = PathBuf::from(format!("/sys/fs/bpf/{name}"));
        let _ = Command::new("ip").args(["netns", "del", &name]).output();
        let _ = std::fs::remove_dir_all(&pin_dir);
        // Built first, so that Drop removes whatever the commands below managed to create.
        let ns = Self { name, pin_dir };
        let n = ns.name.as_str();
        ip_cmd(&["netns", "add", n]);
        ip_cmd(&[
            "-n", n, "link", "add", "eth0", "type", "veth", "peer", "name", "peer0",
        ]);
        ip_cmd(&["-n", n, "link", "set", "peer0", "up"]);
        ip_cmd(&["-n", n, "addr", "add", "172.18.0.10/16", "dev", "eth0"]);
        ip_cmd(&["-n", n, "link", "set", "eth0", "up"]);
        ip_cmd(&["-n", n, "link", "set", "lo", "up"]);
        ns
    }

    fn path(&self) -> PathBuf {
        PathBuf::from(format!("/run/netns/{}", self.name))
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .output();
        let _ = std::fs::remove_dir_all(&self.pin_dir);
    }
}

fn addr(s: &str) -> IpAddr {
    s.parse().unwrap()
}

fn node() -> Node {
    Node {
        name: "node-0".to_owned(),
        addresses: vec![addr("172.18.0.10")],
        pod_cidrs: vec!["10.244.0.0/24".parse().unwrap()],
        cluster_cidrs: vec!["10.244.0.0/16".parse().unwrap()],
        service_cidrs: vec!["10.96.0.0/12".parse().unwrap()],
        node_port_range: PortRange::default(),
        interfaces: Interfaces {
            uplink: "eth0".to_owned(),
        },
        masquerade: Masquerade::default(),
        mtu: 1500,
        external_mode: dataplane_core::ExternalMode::default(),
    }
}

/// Service `name` on ClusterIP `cluster_ip`, TCP 80 -> 8080, with backends on another node.
fn service(name: &str, cluster_ip: &str, backends: &[&str]) -> Service {
    let mut s = Service::new(ObjectName::new("default", name));
    s.cluster_ips = vec![addr(cluster_ip)];
    s.ports = vec![ServicePort {
        name: "http".to_owned(),
        protocol: Protocol::Tcp,
        port: 80,
        target_port: 8080,
        node_port: None,
    }];
    s.backends = backends
        .iter()
        .map(|b| {
            let mut be = Backend::new(addr(b));
            be.node_name = Some("node-1".into());
            be
        })
        .collect();
    s
}

fn state(services: Vec<Service>) -> DesiredState {
    let mut s = DesiredState::new(node());
    s.services = services;
    s
}

/// With a NodePort: a change of the node's addresses changes its frontends, not the service.
fn a() -> Service {
    with_node_port(service("a", "10.96.0.10", &["10.244.1.10"]))
}
fn a_changed() -> Service {
    with_node_port(service("a", "10.96.0.10", &["10.244.1.10", "10.244.1.11"]))
}
fn with_node_port(mut s: Service) -> Service {
    s.ports[0].node_port = Some(30080);
    s
}
fn b() -> Service {
    service("b", "10.96.0.11", &["10.244.1.20"])
}
fn b_changed() -> Service {
    service("b", "10.96.0.11", &["10.244.1.21"])
}
fn b_changed_again() -> Service {
    service("b", "10.96.0.11", &["10.244.1.21", "10.244.1.22"])
}
fn c() -> Service {
    service("c", "10.96.0.12", &["10.244.1.30"])
}
fn c_changed() -> Service {
    service("c", "10.96.0.12", &["10.244.1.31"])
}
fn d() -> Service {
    service("d", "10.96.0.13", &["10.244.1.40"])
}

/// More services than the eBPF dataplane of this test has room for (see `EBPF_SERVICES`).
fn too_big() -> DesiredState {
    state(
        (0..20)
            .map(|i| {
                service(
                    &format!("big-{i}"),
                    &format!("10.96.1.{i}"),
                    &["10.244.1.50"],
                )
            })
            .collect(),
    )
}

/// Frontend entries of the eBPF dataplane here: room for the sequence's states (at most
/// three services, two entries each: the ClusterIP port and the ClusterIP's entry for other
/// ports), not for [`too_big`]. Its failure is a capacity error; the netfilter dataplanes'
/// is a transaction the kernel refuses (their fault hook).
const EBPF_SERVICES: u32 = 10;

/// One step's outcome: (step, full sync (`None`: the dataplane's choice), services changed,
/// services removed).
type Row = (&'static str, Option<bool>, usize, usize);

fn row(step: &'static str, report: &ApplyReport) -> Row {
    (
        step,
        Some(report.full_sync),
        report.services_changed,
        report.services_removed,
    )
}

/// A step whose full or incremental sync is the dataplane's choice (iptables applies a change
/// of the node's addresses incrementally, the others fully): only the counts are compared.
fn counts_row(step: &'static str, report: &ApplyReport) -> Row {
    (step, None, report.services_changed, report.services_removed)
}

/// What every dataplane must report for [`scenario`].
fn expected() -> Vec<Row> {
    vec![
        ("first apply of a, b, c", Some(true), 3, 0),
        ("the same state again, full", Some(true), 0, 0),
        ("apply_changes: b changed, c removed", Some(false), 1, 1),
        ("apply_changes: an empty change set", Some(false), 0, 0),
        (
            "apply_changes: an entry equal on both sides",
            Some(false),
            0,
            0,
        ),
        ("full apply: c back, a changed", Some(true), 2, 0),
        (
            "sync: a node address added (a's NodePort gains a frontend)",
            None,
            0,
            0,
        ),
        ("sync: the node address removed again", None, 0, 0),
        (
            "sync after a failed apply: a removed, b changed, d added",
            Some(true),
            2,
            1,
        ),
        ("sync without a change", Some(false), 0, 0),
        (
            "sync after a failed apply_changes: c changed",
            Some(true),
            1,
            0,
        ),
        ("first apply after reset", Some(true), 3, 0),
    ]
}

/// The scripted sequence; `fail` arms (`true`) and disarms the dataplane's forced failure.
fn scenario<D: Dataplane>(dp: &mut D, fail: impl Fn(&mut D, bool)) -> Vec<Row> {
    let mut rows = Vec::new();
    let s1 = state(vec![a(), b(), c()]);
    rows.push(row(
        "first apply of a, b, c",
        &dp.apply(&s1).expect("first apply"),
    ));
    rows.push(row(
        "the same state again, full",
        &dp.apply(&s1).expect("identical apply"),
    ));

    let s2 = state(vec![a(), b_changed()]);
    rows.push(row(
        "apply_changes: b changed, c removed",
        &dp.apply_changes(&diff(&s1, &s2)).expect("apply_changes"),
    ));
    rows.push(row(
        "apply_changes: an empty change set",
        &dp.apply_changes(&diff(&s2, &s2)).expect("empty change set"),
    ));
    // `diff` never makes one, but a change set built by hand may hold it.
    let mut no_op = ChangeSet::default();
    no_op.services.insert(
        a().name,
        Change {
            previous: Some(a()),
            current: Some(a()),
        },
    );
    rows.push(row(
        "apply_changes: an entry equal on both sides",
        &dp.apply_changes(&no_op).expect("no-op entry"),
    ));

    let s3 = state(vec![a_changed(), b_changed(), c()]);
    rows.push(row(
        "full apply: c back, a changed",
        &dp.apply(&s3).expect("full apply"),
    ));
    // A change of the node changes no service object: every dataplane counts objects.
    let mut s3_node = s3.clone();
    s3_node.node.addresses.push(addr("172.18.0.11"));
    rows.push(counts_row(
        "sync: a node address added (a's NodePort gains a frontend)",
        &dp.sync(Some(&s3), &s3_node).expect("node change"),
    ));
    rows.push(counts_row(
        "sync: the node address removed again",
        &dp.sync(Some(&s3_node), &s3).expect("node change back"),
    ));

    fail(dp, true);
    let err = dp.apply(&too_big()).expect_err("the forced failure");
    eprintln!("forced failure: {err}");
    fail(dp, false);
    // The last successful apply programmed s3: the counts compare with it.
    let s4 = state(vec![b_changed_again(), c(), d()]);
    rows.push(row(
        "sync after a failed apply: a removed, b changed, d added",
        &dp.sync(Some(&s3), &s4).expect("sync after the failure"),
    ));
    rows.push(row(
        "sync without a change",
        &dp.sync(Some(&s4), &s4).expect("sync without a change"),
    ));

    // An incremental apply that fails (half way, for all the dataplane knows): the counts
    // still compare with s4, the last state applied in full.
    fail(dp, true);
    let mut bigger = too_big();
    bigger.services.extend(s4.services.iter().cloned());
    let err = dp
        .apply_changes(&diff(&s4, &bigger))
        .expect_err("the forced failure of a change set");
    eprintln!("forced failure of a change set: {err}");
    fail(dp, false);
    let s5 = state(vec![b_changed_again(), c_changed(), d()]);
    rows.push(row(
        "sync after a failed apply_changes: c changed",
        &dp.sync(Some(&s4), &s5).expect("sync after the failure"),
    ));

    dp.reset().expect("reset");
    rows.push(row(
        "first apply after reset",
        &dp.apply(&s4).expect("apply after reset"),
    ));
    dp.reset().expect("final reset");
    rows
}

#[test]
fn service_counts_are_the_same_on_every_dataplane() {
    if !require_root("service_counts_are_the_same_on_every_dataplane") {
        return;
    }
    let want = expected();

    let ns = Netns::new("ebpf");
    let mut config = EbpfConfig::new(&ns.pin_dir);
    config.netns = Some(ns.path());
    config.capacities.services = EBPF_SERVICES;
    config.capacities.maglev_table_size = 251;
    let mut ebpf = EbpfDataplane::new(config).expect("the eBPF dataplane loads");
    // Its failure comes from the state (capacity), nothing to arm.
    let got = scenario(&mut ebpf, |_, _| {});
    assert_eq!(got, want, "eBPF (left: reported, right: expected)");
    drop(ebpf);
    drop(ns);

    let ns = Netns::new("nft");
    let mut nft = NftablesDataplane::new(NetfilterConfig::nftables(Some(ns.path())));
    let got = scenario(&mut nft, NftablesDataplane::set_fail_transactions);
    assert_eq!(got, want, "nftables (left: reported, right: expected)");
    drop(ns);

    let ns = Netns::new("ipt");
    let mut ipt = IptablesDataplane::new(NetfilterConfig::iptables(Some(ns.path())));
    let got = scenario(&mut ipt, IptablesDataplane::set_fail_transactions);
    assert_eq!(got, want, "iptables (left: reported, right: expected)");

    // The fake embedders test against counts the same way (its failures are injected).
    let mut fake = FakeDataplane::new();
    let got = scenario(&mut fake, |f, on| {
        if on {
            f.fail_next_apply(Fault::Kernel("injected".to_owned()));
        }
    });
    assert_eq!(got, want, "fake (left: reported, right: expected)");
}

/// The eBPF dataplane expires its own conntrack and says how often; the netfilter ones leave
/// it to the kernel.
#[test]
fn maintenance_is_needed_by_the_ebpf_dataplane_only() {
    if !require_root("maintenance_is_needed_by_the_ebpf_dataplane_only") {
        return;
    }
    let ns = Netns::new("mnt");
    let mut config = EbpfConfig::new(&ns.pin_dir);
    config.netns = Some(ns.path());
    config.capacities.maglev_table_size = 251;
    let mut ebpf = EbpfDataplane::new(config).expect("the eBPF dataplane loads");
    ebpf.apply(&state(vec![a()])).expect("apply");
    assert_eq!(
        ebpf.maintenance_interval(),
        Some(Duration::from_secs(5)),
        "half the default tcp_closing timeout"
    );
    let report = ebpf.maintain(dataplane::monotonic_now()).expect("maintain");
    assert_eq!((report.flows_expired, report.flows_remaining), (0, Some(0)));
    ebpf.reset().expect("reset");

    for mut dp in [
        Box::new(NftablesDataplane::new(NetfilterConfig::nftables(Some(
            ns.path(),
        )))) as BoxDataplane,
        Box::new(IptablesDataplane::new(NetfilterConfig::iptables(Some(
            ns.path(),
        )))),
    ] {
        let name = dp.capabilities().dataplane;
        assert_eq!(dp.maintenance_interval(), None, "{name}");
        assert_eq!(
            dp.maintain(dataplane::monotonic_now()).expect("maintain"),
            dataplane_core::MaintenanceReport::default(),
            "{name}: nothing to do"
        );
    }
}

/// Every dataplane can move to another thread, alone or as a `BoxDataplane` (a compile-time
/// check: this test fails by not building).
#[test]
fn dataplanes_are_send() {
    fn send<T: Send>() {}
    fn boxed(e: EbpfDataplane, n: NftablesDataplane, i: IptablesDataplane) -> [BoxDataplane; 3] {
        [Box::new(e), Box::new(n), Box::new(i)]
    }
    send::<EbpfDataplane>();
    send::<NftablesDataplane>();
    send::<IptablesDataplane>();
    let _ = boxed;
    // And a boxed one really crosses a thread (the netfilter ones touch nothing until used).
    let dp: BoxDataplane = Box::new(NftablesDataplane::new(NetfilterConfig::nftables(None)));
    let name = std::thread::spawn(move || dp.capabilities().dataplane)
        .join()
        .expect("thread");
    assert_eq!(name, "nftables");
}
