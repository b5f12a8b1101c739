//! `dpctl status`, `services` and `flows` on a live node, per backend (root).
//!
//! ```text
//!   node-0 (its own network namespace): pod-0-0, pod-0-1
//!   web   10.96.0.10:80/TCP -> pod-0-0:8080, pod-0-1:8080
//!   empty 10.96.0.12:80/TCP -> (none)
//!   NetworkPolicy default/no-egress: pod-0-1 isolated for egress
//! ```
//! The test programs the node with `dataplane::open` + `apply` (as an embedder or the agent
//! would) and keeps that dataplane open, then runs the `dpctl` binary beside it with
//! `--netns`/`--pin-dir`/`--nft-table`/`--iptables-prefix`: every expected number is derived
//! from the applied state, not from another reading of the kernel.

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Output, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use dataplane::events::{DropReason, EventVerdict, FlowEvent, L4Protocol};
use dataplane::{
    open, Backend, DataplaneKind, DesiredState, LiveFrontend, Namespace, ObjectName, Options,
    Protocol, Selection, Service, ServicePort,
};
use dataplane_testkit::{probe, require_root, Family, Lab, LabSpec, SERVER_PORT};

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
    // A policy, so that every backend programs its per-pod layer (netfilter programs pod
    // interfaces only for policy): pod-0-1 may send nothing (replies still leave).
    st.namespaces = vec![Namespace::new("default")];
    st.policies = vec![serde_json::from_value(serde_json::json!({
        "namespace": "default", "name": "no-egress",
        "podSelector": {"matchLabels": {"app": "pod-0-1"}}, "policyTypes": ["Egress"],
    }))
    .expect("policy JSON")];
    st
}

/// The isolated (endpoint, direction) pairs of `st`'s policies.
fn isolated(st: &DesiredState) -> usize {
    dataplane::implement::compile(st)
        .endpoints
        .values()
        .map(|t| usize::from(t.ingress.isolated) + usize::from(t.egress.isolated))
        .sum()
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
    /// `test`: a tag of the test's own (tests run in parallel; bpffs is global).
    fn new(lab: &Lab, kind: DataplaneKind, test: &str) -> Self {
        let pid = std::process::id();
        Self {
            kind,
            netns: lab.node(0).netns.path().to_owned(),
            pin_dir: PathBuf::from(format!("/sys/fs/bpf/dpctl-live-{pid}-{kind}-{test}")),
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
    let place = Place::new(&lab, kind, "status");
    let (_dp, st) = program(&lab, &place);

    for backend in [kind.name(), "auto"] {
        let status = place.run(&["status", "-o", "json"], backend);
        assert_eq!(status["dataplane"], kind.name(), "--backend {backend}");
        assert_eq!(status["services"], 2, "{status:#}");
        assert_eq!(status["frontends"], 2, "{status:#}");
        assert_eq!(status["backends"], 2, "{status:#}");
        assert_eq!(status["endpoints"], st.endpoints.len(), "{status:#}");
        // Rule sets per endpoint and direction: pod-0-1's egress.
        assert_eq!(status["policies"], isolated(&st), "{status:#}");
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
    let mut got: Vec<Listed> = services
        .into_iter()
        .map(|f| {
            let mut b = f.backends;
            b.sort();
            (f.service.map(|s| s.to_string()), f.address, f.protocol, b)
        })
        .collect();
    got.sort();
    let mut want: Vec<Listed> = st
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
    tables_and_conntrack(&lab, &place, &want);
}

/// A frontend as `services -o json` lists it: name, address, protocol, backends (sorted).
type Listed = (Option<String>, SocketAddr, Protocol, Vec<SocketAddr>);

/// The tables for people show what `want` lists; a connection through web is in
/// `dpctl conntrack`, with one of web's backends.
fn tables_and_conntrack(lab: &Lab, place: &Place, want: &[Listed]) {
    let kind = place.kind;
    // The tables for people show the same.
    let text = |args: &[&str]| {
        let out = place.dpctl(args, kind.name()).output().expect("dpctl runs");
        ok(&out, &format!("dpctl {args:?}"))
    };
    let status = text(&["status"]);
    assert!(
        status.starts_with(&format!(
            "dataplane:   {kind}\nprogrammed:  2 services, 2 frontends"
        )),
        "{status}"
    );
    let services = text(&["services"]);
    let row = |vip: &str| {
        services
            .lines()
            .find(|l| l.contains(&format!(" {vip}:80 ")))
            .unwrap_or_else(|| panic!("no row for {vip}:\n{services}"))
            .to_owned()
    };
    assert!(row(EMPTY).trim_end().ends_with("<none>"), "{services}");
    for b in &want.iter().find(|w| w.1.ip().to_string() == WEB).unwrap().3 {
        assert!(row(WEB).contains(&b.to_string()), "{services}");
    }

    // A connection through web is in `dpctl conntrack`, with a backend of web's.
    let client = lab.pod_by_name("pod-0-0").expect("pod");
    let frontend = SocketAddr::new(WEB.parse().unwrap(), 80);
    let outcome = probe(
        &client.netns,
        frontend,
        Protocol::Tcp,
        Duration::from_secs(5),
    )
    .expect("probe");
    assert!(
        matches!(outcome, dataplane_testkit::ProbeOutcome::Answered { .. }),
        "{kind}: web did not answer: {outcome:?}"
    );
    let flows: Vec<dataplane::Flow> =
        serde_json::from_value(place.run(&["conntrack", "-o", "json"], kind.name()))
            .expect("conntrack JSON");
    let web_backends = &want.iter().find(|w| w.1 == frontend).unwrap().3;
    assert!(
        flows.iter().any(|f| f.frontend == frontend
            && f.client.ip() == client.address(Family::V4).unwrap()
            && web_backends.contains(&f.backend)),
        "{kind}: the probe's connection in {flows:?}"
    );
}

/// Generous: a deadline for conditions, never a measured time.
const DEADLINE: Duration = Duration::from_mins(1);

/// Kills the `dpctl flows` child when the test ends, also on failure.
struct Running(Child);

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A line dpctl printed: on which stream, and the line.
type Line = (&'static str, String);

/// Starts `dpctl ARGS` in the background: the child (killed when dropped) and its output
/// lines as they come, from both streams.
fn follow(place: &Place, args: &[&str]) -> (Running, mpsc::Receiver<Line>) {
    let mut child = Running(
        place
            .dpctl(args, place.kind.name())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("dpctl starts"),
    );
    let (tx, lines) = mpsc::channel::<Line>();
    for (name, pipe) in [
        (
            "stdout",
            Box::new(child.0.stdout.take().unwrap()) as Box<dyn std::io::Read + Send>,
        ),
        ("stderr", Box::new(child.0.stderr.take().unwrap())),
    ] {
        let tx = tx.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(pipe).lines().map_while(Result::ok) {
                if tx.send((name, line)).is_err() {
                    return;
                }
            }
        });
    }
    (child, lines)
}

/// `dpctl flows --follow --verdict dropped --verdict rejected -o json` started in the
/// background beside the programmed dataplane shows a probe to `empty` (no backends) live:
/// the reason `no-backend`, the service's name, the probe's tuple.
fn flows_follow_shows_a_probe_to_a_service_without_backends(kind: DataplaneKind) {
    let lab = lab();
    let place = Place::new(&lab, kind, "flows");
    let (_dp, _st) = program(&lab, &place);
    let (child, lines) = follow(
        &place,
        &[
            "flows",
            "--follow",
            "--verdict",
            "dropped",
            "--verdict",
            "rejected",
            "-o",
            "json",
        ],
    );
    let next = |what: &str| -> (&str, String) {
        lines
            .recv_timeout(DEADLINE)
            .unwrap_or_else(|_| panic!("{kind}: no {what} from dpctl flows within {DEADLINE:?}"))
    };
    // The reader is open once dpctl says so: only then is the probe sent.
    let (stream, line) = next("start line");
    assert_eq!(
        (stream, line.as_str()),
        ("stderr", "following flow events (interrupt to stop)"),
        "{kind}"
    );
    if kind != DataplaneKind::Ebpf {
        second_reader_is_refused(&place);
    }
    let client = lab.pod_by_name("pod-0-0").expect("pod");
    let destination = SocketAddr::new(EMPTY.parse().unwrap(), 80);
    let outcome = probe(
        &client.netns,
        destination,
        Protocol::Tcp,
        Duration::from_secs(2),
    )
    .expect("probe");
    assert!(
        !matches!(outcome, dataplane_testkit::ProbeOutcome::Answered { .. }),
        "{kind}: a service without backends answered: {outcome:?}"
    );
    let started = Instant::now();
    let event = loop {
        assert!(
            started.elapsed() < DEADLINE,
            "{kind}: no event for the probe"
        );
        let (stream, line) = next("event");
        assert_eq!(stream, "stdout", "{kind}: dpctl said on stderr: {line}");
        let event: FlowEvent = serde_json::from_str(&line)
            .unwrap_or_else(|e| panic!("{kind}: not a FlowEvent ({e}): {line}"));
        if event.original.destination == destination {
            break event;
        }
    };
    assert!(
        matches!(
            event.verdict,
            EventVerdict::Dropped | EventVerdict::Rejected
        ),
        "{kind}: {event}"
    );
    assert_eq!(event.reason, Some(DropReason::NoBackend), "{kind}: {event}");
    assert_eq!(
        event.service,
        Some(ObjectName::new("default", "empty")),
        "{kind}: {event}"
    );
    assert_eq!(event.protocol, L4Protocol::Tcp, "{kind}: {event}");
    assert_eq!(
        event.original.source.ip(),
        client.address(Family::V4).unwrap(),
        "{kind}: {event}"
    );
    drop(child);
    waiting_without_follow(&place, &lab, destination, &event);
}

/// Netfilter: while one `dpctl flows` reads the node's NFLOG group, a second is refused with
/// a message that says why.
fn second_reader_is_refused(place: &Place) {
    let out = place
        .dpctl(&["flows", "--follow"], place.kind.name())
        .output()
        .expect("dpctl runs");
    assert_eq!(out.status.code(), Some(1), "{}: {out:?}", place.kind);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("another reader holds NFLOG group"),
        "{}: {err}",
        place.kind
    );
}

/// `dpctl flows` without --follow shows what is waiting. The eBPF ring buffer keeps what no
/// reader took, so a probe sent while nobody reads is there (newer than `seen`); a netfilter
/// socket opened after the probe has nothing of it.
fn waiting_without_follow(place: &Place, lab: &Lab, destination: SocketAddr, seen: &FlowEvent) {
    let kind = place.kind;
    let client = lab.pod_by_name("pod-0-0").expect("pod");
    let outcome = probe(
        &client.netns,
        destination,
        Protocol::Tcp,
        Duration::from_secs(2),
    )
    .expect("probe");
    assert!(
        !matches!(outcome, dataplane_testkit::ProbeOutcome::Answered { .. }),
        "{kind}: {outcome:?}"
    );
    let out = place
        .dpctl(
            &["flows", "--reason", "no-backend", "-o", "json"],
            kind.name(),
        )
        .output()
        .expect("dpctl runs");
    let text = ok(&out, "dpctl flows");
    let waiting: Vec<FlowEvent> = text
        .lines()
        .map(|l| serde_json::from_str(l).expect("a FlowEvent"))
        .collect();
    if kind == DataplaneKind::Ebpf {
        assert!(
            waiting
                .iter()
                .any(|e| e.original.destination == destination && e.time > seen.time),
            "{kind}: the probe sent while nobody read is waiting: {text}"
        );
    } else {
        assert!(waiting.is_empty(), "{kind}: {text}");
    }
}

#[test]
fn ebpf_status_and_services() {
    if !require_root("ebpf_status_and_services") {
        return;
    }
    status_and_services(DataplaneKind::Ebpf);
}

#[test]
fn ebpf_flows_follow_shows_a_drop_live() {
    if !require_root("ebpf_flows_follow_shows_a_drop_live") {
        return;
    }
    flows_follow_shows_a_probe_to_a_service_without_backends(DataplaneKind::Ebpf);
}

#[test]
fn nftables_status_and_services() {
    if !require_root("nftables_status_and_services") {
        return;
    }
    status_and_services(DataplaneKind::Nftables);
}

#[test]
fn nftables_flows_follow_shows_a_drop_live() {
    if !require_root("nftables_flows_follow_shows_a_drop_live") {
        return;
    }
    flows_follow_shows_a_probe_to_a_service_without_backends(DataplaneKind::Nftables);
}

#[test]
fn iptables_status_and_services() {
    if !require_root("iptables_status_and_services") {
        return;
    }
    status_and_services(DataplaneKind::Iptables);
}

#[test]
fn iptables_flows_follow_shows_a_drop_live() {
    if !require_root("iptables_flows_follow_shows_a_drop_live") {
        return;
    }
    flows_follow_shows_a_probe_to_a_service_without_backends(DataplaneKind::Iptables);
}

/// A node namespace where nothing is programmed: `auto` looks at all three places (the pin
/// directory, the nftables table and the iptables chains in that namespace) and names each.
#[test]
fn auto_names_every_place_it_looked_in_an_empty_namespace() {
    if !require_root("auto_names_every_place_it_looked_in_an_empty_namespace") {
        return;
    }
    let lab = lab();
    let place = Place::new(&lab, DataplaneKind::Ebpf, "empty");
    let out = place
        .dpctl(&["status"], "auto")
        .output()
        .expect("dpctl runs");
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    let ns = place.netns.display();
    assert_eq!(
        String::from_utf8_lossy(&out.stderr).trim(),
        format!(
            "error: nothing is programmed here: no pinned maps in {}, no nftables table inet \
             {} in network namespace {ns}, no iptables chains {}-* in network namespace {ns}",
            place.pin_dir.display(),
            place.nft_table,
            place.iptables_prefix,
        )
    );
}
