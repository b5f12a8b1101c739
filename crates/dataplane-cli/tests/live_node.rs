//! `dpctl status`, `services` and `flows` on a live node, per backend (root).
//!
//! ```text
//!   node-0 (its own network namespace): pod-0-0, pod-0-1
//!   web   10.96.0.10:80/TCP -> pod-0-0:8080, pod-0-1:8080
//!   empty 10.96.0.12:80/TCP -> (none)
//! ```
//! The test programs the node with `dataplane::open` + `apply` (as an embedder or the agent
//! would) and keeps that dataplane open, then runs the `dpctl` binary beside it with
//! `--netns`/`--pin-dir`/`--nft-table`/`--iptables-prefix`: every expected number is derived
//! from the applied state, not from another reading of the kernel.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Command, Output};

use dataplane::{
    open, Backend, DataplaneKind, DesiredState, LiveFrontend, ObjectName, Options, Protocol,
    Selection, Service, ServicePort,
};
use dataplane_testkit::{require_root, Family, Lab, LabSpec, SERVER_PORT};

const WEB: &str = "10.96.0.10";
const EMPTY: &str = "10.96.0.12";

fn lab() -> Lab {
    Lab::new(LabSpec {
        nodes: 1,
        pods_per_node: 2,
        external_clients: 0,
        ipv6: false,
    })
    .expect("lab")
}

fn state(lab: &Lab) -> DesiredState {
    let mut st = lab.desired_state(0);
    let service = |name: &str, vip: &str, pods: &[&str]| {
        let mut svc = Service::cluster_ip(
            ObjectName::new("default", name),
            vip.parse().unwrap(),
            [ServicePort::tcp(80, SERVER_PORT).named("http")],
        );
        for pod in pods {
            let pod = lab.pod_by_name(pod).expect("pod");
            svc = svc.with_backend(Backend::new(pod.address(Family::V4).unwrap()));
        }
        svc
    };
    st.services = vec![
        service("web", WEB, &["pod-0-0", "pod-0-1"]),
        service("empty", EMPTY, &[]),
    ];
    st
}

/// Where this test's dataplane keeps its state: names of its own (bpffs is global).
struct Place {
    kind: DataplaneKind,
    netns: PathBuf,
    pin_dir: PathBuf,
    nft_table: String,
    iptables_prefix: String,
}

impl Place {
    fn new(lab: &Lab, kind: DataplaneKind) -> Self {
        let pid = std::process::id();
        Self {
            kind,
            netns: lab.node(0).netns.path().to_owned(),
            pin_dir: PathBuf::from(format!("/sys/fs/bpf/dpctl-live-{pid}-{kind}")),
            nft_table: format!("dpctl_live_{pid}"),
            iptables_prefix: "DPCL".to_owned(),
        }
    }

    fn options(&self) -> Options {
        let mut o = Options::in_netns(&self.netns);
        o.ebpf.pin_dir.clone_from(&self.pin_dir);
        o.nftables = o.nftables.with_name(&self.nft_table);
        o.iptables = o.iptables.with_name(&self.iptables_prefix);
        o
    }

    /// `dpctl ARGS --netns ... --pin-dir ... --nft-table ... --iptables-prefix ...`, with the
    /// backend named (`auto` too: it must find this kind's state).
    fn dpctl(&self, args: &[&str], backend: &str) -> Command {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_dpctl"));
        cmd.args(args)
            .arg("--backend")
            .arg(backend)
            .arg("--netns")
            .arg(&self.netns)
            .arg("--pin-dir")
            .arg(&self.pin_dir)
            .arg("--nft-table")
            .arg(&self.nft_table)
            .arg("--iptables-prefix")
            .arg(&self.iptables_prefix);
        cmd
    }

    fn run(&self, args: &[&str], backend: &str) -> serde_json::Value {
        let out = self.dpctl(args, backend).output().expect("dpctl runs");
        let text = ok(&out, &format!("dpctl {args:?} --backend {backend}"));
        serde_json::from_str(&text).unwrap_or_else(|e| panic!("{args:?}: {e}: {text}"))
    }
}

fn ok(out: &Output, what: &str) -> String {
    assert!(
        out.status.success(),
        "{what} failed ({}): {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout.clone()).expect("UTF-8")
}

/// Removes what the dataplane installed, also when the test fails.
struct Programmed(dataplane::BoxDataplane, PathBuf);

impl Drop for Programmed {
    fn drop(&mut self) {
        let _ = self.0.reset();
        let _ = std::fs::remove_dir_all(&self.1);
    }
}

fn program(lab: &Lab, place: &Place) -> (Programmed, DesiredState) {
    let st = state(lab);
    let opened = open(Selection::Only(place.kind), &place.options()).expect("open");
    let mut dp = Programmed(opened.dataplane, place.pin_dir.clone());
    dp.0.apply(&st).expect("apply");
    (dp, st)
}

/// `status -o json` and `services -o json` as programmed, by name and by `auto`.
fn status_and_services(kind: DataplaneKind) {
    let lab = lab();
    let place = Place::new(&lab, kind);
    let (_dp, st) = program(&lab, &place);

    for backend in [kind.name(), "auto"] {
        let status = place.run(&["status", "-o", "json"], backend);
        assert_eq!(status["dataplane"], kind.name(), "--backend {backend}");
        assert_eq!(status["services"], 2, "{status:#}");
        assert_eq!(status["frontends"], 2, "{status:#}");
        assert_eq!(status["backends"], 2, "{status:#}");
        assert_eq!(status["endpoints"], st.endpoints.len(), "{status:#}");
        assert_eq!(status["policies"], 0, "{status:#}");
    }
    let status = place.run(&["status", "-o", "json"], kind.name());
    let tables = status["tables"].as_array().expect("tables");
    if kind == DataplaneKind::Ebpf {
        let caps = &place.options().ebpf.capacities;
        // One dp_svc entry per ClusterIP and port plus one wildcard per ClusterIP; a backend
        // id per backend address and target port; one local entry per endpoint address.
        for (name, entries, capacity) in [
            ("dp_svc", 4, caps.services),
            ("dp_backends", 2, caps.backends),
            ("dp_local", st.endpoints.len(), caps.local),
        ] {
            let t = tables
                .iter()
                .find(|t| t["name"] == name)
                .unwrap_or_else(|| panic!("{name} in {tables:?}"));
            assert_eq!(t["entries"], entries, "{name}");
            assert_eq!(t["capacity"], capacity, "{name}");
            let percent = t["percent"].as_f64().expect("percent");
            #[allow(clippy::cast_precision_loss)] // small counts
            let want = entries as f64 * 100.0 / f64::from(capacity);
            assert!((percent - want).abs() < 1e-9, "{name}: {percent} != {want}");
        }
        assert!(
            !status["attachments"].as_array().unwrap().is_empty(),
            "{status:#}"
        );
    } else {
        assert!(tables.is_empty(), "netfilter has no fixed-size tables");
    }

    let services: Vec<LiveFrontend> =
        serde_json::from_value(place.run(&["services", "-o", "json"], kind.name()))
            .expect("services JSON");
    // The service's name is there when the backend recorded it (the eBPF dataplane writes
    // `dp_names` on apply): a name shown must be the right one.
    let named = |address: SocketAddr| {
        st.services
            .iter()
            .find(|s| s.cluster_ips.iter().any(|ip| *ip == address.ip()))
            .map(|s| s.name.to_string())
    };
    let mut got: Vec<(Option<String>, SocketAddr, Protocol, Vec<SocketAddr>)> = services
        .into_iter()
        .map(|f| {
            let mut b = f.backends;
            b.sort();
            let name = f.service.map(|s| s.to_string());
            if name.is_some() {
                assert_eq!(name, named(f.address), "{}", f.address);
            }
            (named(f.address), f.address, f.protocol, b)
        })
        .collect();
    got.sort();
    let mut want: Vec<(Option<String>, SocketAddr, Protocol, Vec<SocketAddr>)> = st
        .services
        .iter()
        .map(|s| {
            let mut b: Vec<SocketAddr> = s
                .backends
                .iter()
                .map(|b| SocketAddr::new(b.ip, SERVER_PORT))
                .collect();
            b.sort();
            (
                Some(s.name.to_string()),
                SocketAddr::new(s.cluster_ips[0], 80),
                Protocol::Tcp,
                b,
            )
        })
        .collect();
    want.sort();
    assert_eq!(got, want, "dpctl services -o json is what was programmed");
}

#[test]
fn ebpf_status_and_services() {
    if !require_root("ebpf_status_and_services") {
        return;
    }
    status_and_services(DataplaneKind::Ebpf);
}
