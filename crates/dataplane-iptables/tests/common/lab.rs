//! A conformance table run in the testkit lab: every row's expectation comes from core's
//! reference model (`evaluate`), and real TCP/UDP traffic checks the backend against it.
//!
//! ```text
//!   external-0 (172.18.255.1) ──┐            ┌── node-1 (172.18.0.11) ── pod-1-0, pod-1-1
//!                               br0 (underlay)
//!   node-0 (172.18.0.10) ───────┘  backend under test; pods pod-0-0 (10.244.0.10), pod-0-1
//! ```

use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use dataplane_core::{
    evaluate, Backend, Capabilities, Dataplane, DesiredState, Entry, ObjectName, Packet, Protocol,
    Service, SessionAffinity, SourceSeen, TrafficPolicy, Verdict,
};
use dataplane_testkit::{probe, serve, Family, Lab, LabSpec, ProbeOutcome, SERVER_PORT};

use super::{ip, port};

/// Who sends a probe.
#[derive(Debug, Clone, Copy)]
pub enum Client {
    /// Pod `k` (lab-wide index).
    Pod(usize),
    /// Node 0's host namespace.
    Host,
    /// External client 0.
    External,
}

/// One row of the table.
#[derive(Debug, Clone)]
pub struct Row {
    pub name: &'static str,
    pub client: Client,
    pub destination: SocketAddr,
    pub protocol: Protocol,
}

pub fn lab() -> Lab {
    Lab::new(LabSpec {
        nodes: 2,
        pods_per_node: 2,
        external_clients: 1,
        ipv6: true,
    })
    .expect("lab")
}

fn pod_backend(lab: &Lab, k: usize, node: usize, dual: bool) -> Vec<Backend> {
    lab.pod(k)
        .addresses
        .iter()
        .filter(|a| dual || a.is_ipv4())
        .map(|a| {
            let mut b = Backend::new(*a);
            b.node_name = Some(format!("node-{node}").into());
            b
        })
        .collect()
}

/// The backends that answer `n` TCP probes from pod 1 to the `web` ClusterIP of
/// [`services`] (10.96.0.10:80), in order; panics on a probe nobody answered.
pub fn web_backends(lab: &Lab, n: usize) -> Vec<String> {
    (0..n)
        .map(|_| {
            let o = probe(
                &lab.pod(1).netns,
                "10.96.0.10:80".parse().expect("literal address"),
                Protocol::Tcp,
                Duration::from_secs(2),
            )
            .expect("probe");
            match o {
                ProbeOutcome::Answered { backend, .. } => backend,
                other => panic!("web ClusterIP not answered: {other:?}"),
            }
        })
        .collect()
}

/// The `web` TCP frontend (10.96.0.10:80) of [`services`] as `dp` observes it.
pub fn observed_web(dp: &dyn Dataplane) -> dataplane_core::ObservedFrontend {
    let web: SocketAddr = "10.96.0.10:80".parse().expect("literal address");
    dp.observe()
        .expect("observe")
        .frontends
        .into_iter()
        .find(|f| f.address == web && f.protocol == Protocol::Tcp)
        .expect("web frontend observed")
}

/// The services of the table. Pods: 0 = pod-0-0, 1 = pod-0-1 (node 0), 2 = pod-1-0,
/// 3 = pod-1-1 (node 1).
pub fn services(lab: &Lab) -> DesiredState {
    let mut state = lab.desired_state(0);
    let b = |k: usize| pod_backend(lab, k, k / 2, false);
    let b46 = |k: usize| pod_backend(lab, k, k / 2, true);
    let svc = |name: &str| Service::new(ObjectName::new("default", name));
    let sp = SERVER_PORT;

    let mut web = svc("web");
    web.cluster_ips = vec![ip("10.96.0.10"), ip("fd00:96::10")];
    web.ports = vec![
        port(Protocol::Tcp, 80, sp, Some(30080)),
        port(Protocol::Udp, 80, sp, Some(30080)),
    ];
    web.backends = [b46(0), b46(2)].concat();
    state.services.push(web);

    let mut local = svc("local");
    local.cluster_ips = vec![ip("10.96.0.11")];
    local.load_balancer_ips = vec![ip("192.0.2.11")];
    local.external_ips = vec![ip("198.51.100.11")];
    local.ports = vec![port(Protocol::Tcp, 80, sp, Some(30081))];
    local.external_traffic_policy = TrafficPolicy::Local;
    local.backends = [b(1), b(3)].concat();
    state.services.push(local);

    let mut remote = svc("remote-only");
    remote.cluster_ips = vec![ip("10.96.0.12")];
    remote.ports = vec![port(Protocol::Tcp, 80, sp, Some(30082))];
    remote.external_traffic_policy = TrafficPolicy::Local;
    remote.internal_traffic_policy = TrafficPolicy::Local;
    remote.backends = b(3);
    state.services.push(remote);

    let mut empty = svc("empty");
    empty.cluster_ips = vec![ip("10.96.0.13")];
    empty.ports = vec![
        port(Protocol::Tcp, 80, sp, None),
        port(Protocol::Udp, 80, sp, None),
    ];
    state.services.push(empty);

    let mut hairpin = svc("hairpin");
    hairpin.cluster_ips = vec![ip("10.96.0.14")];
    hairpin.ports = vec![port(Protocol::Tcp, 80, sp, None)];
    hairpin.backends = b(0);
    state.services.push(hairpin);

    // IPv4 ranges only: the IPv6 LoadBalancer IP is unrestricted (item 12).
    let mut ranges = svc("ranges");
    ranges.load_balancer_ips = vec![ip("192.0.2.15"), ip("2001:db8::15")];
    ranges.load_balancer_source_ranges = vec!["203.0.113.0/24".parse().unwrap()];
    ranges.ports = vec![port(Protocol::Tcp, 80, sp, None)];
    ranges.backends = b46(2);
    state.services.push(ranges);

    // The external client's range: it may, the pods and the node may not.
    let mut open = svc("ranges-open");
    open.load_balancer_ips = vec![ip("192.0.2.18")];
    open.load_balancer_source_ranges = vec!["172.18.255.0/24".parse().unwrap()];
    open.ports = vec![port(Protocol::Tcp, 80, sp, None)];
    open.backends = b(2);
    state.services.push(open);

    // A ClusterIP outside node.serviceCIDRs (10.96.0.0/12): served like any other.
    let mut outside = svc("outside-cidr");
    outside.cluster_ips = vec![ip("10.200.0.19")];
    outside.ports = vec![port(Protocol::Tcp, 80, sp, None)];
    outside.backends = b(2);
    state.services.push(outside);

    let mut sticky = svc("sticky");
    sticky.cluster_ips = vec![ip("10.96.0.16")];
    sticky.ports = vec![port(Protocol::Tcp, 80, sp, None)];
    sticky.session_affinity = SessionAffinity::ClientIp {
        timeout_seconds: 60,
    };
    sticky.backends = [b(0), b(1), b(2), b(3)].concat();
    state.services.push(sticky);

    let mut term = svc("terminating");
    term.cluster_ips = vec![ip("10.96.0.17")];
    term.ports = vec![port(Protocol::Udp, 80, sp, None)];
    let mut serving = b(0);
    let mut gone = b(2);
    for x in &mut serving {
        x.ready = false;
        x.terminating = true;
    }
    for x in &mut gone {
        x.ready = false;
        x.serving = false;
        x.terminating = true;
    }
    term.backends = [serving, gone].concat();
    state.services.push(term);
    state
}

// One line per row reads better than helpers that hide the table.
#[allow(clippy::too_many_lines)]
pub fn rows(lab: &Lab) -> Vec<Row> {
    use Client::{External, Host, Pod};
    use Protocol::{Tcp, Udp};
    let node0 = lab.node(0).address(Family::V4).unwrap();
    let node0v6 = lab.node(0).address(Family::V6).unwrap();
    let ext = lab.external(0).address(Family::V4).unwrap();
    let sa = |a: IpAddr, p: u16| SocketAddr::new(a, p);
    let row = |name, client, destination, protocol| Row {
        name,
        client,
        destination,
        protocol,
    };
    vec![
        row(
            "pod to ClusterIP tcp",
            Pod(1),
            sa(ip("10.96.0.10"), 80),
            Tcp,
        ),
        row(
            "pod to ClusterIP udp",
            Pod(1),
            sa(ip("10.96.0.10"), 80),
            Udp,
        ),
        row(
            "pod to ClusterIP v6 tcp",
            Pod(1),
            sa(ip("fd00:96::10"), 80),
            Tcp,
        ),
        row("host to ClusterIP tcp", Host, sa(ip("10.96.0.10"), 80), Tcp),
        row(
            "external to NodePort tcp (snat)",
            External,
            sa(node0, 30080),
            Tcp,
        ),
        row(
            "external to NodePort udp (snat)",
            External,
            sa(node0, 30080),
            Udp,
        ),
        row(
            "external to NodePort v6 tcp",
            External,
            sa(node0v6, 30080),
            Tcp,
        ),
        row(
            "external to ClusterIP (masquerade)",
            External,
            sa(ip("10.96.0.10"), 80),
            Tcp,
        ),
        row(
            "external to LoadBalancer ETP Local",
            External,
            sa(ip("192.0.2.11"), 80),
            Tcp,
        ),
        row(
            "external to ExternalIP ETP Local",
            External,
            sa(ip("198.51.100.11"), 80),
            Tcp,
        ),
        row(
            "external to NodePort ETP Local",
            External,
            sa(node0, 30081),
            Tcp,
        ),
        row(
            "pod to own NodePort ETP Local (cluster, client kept)",
            Pod(0),
            sa(node0, 30081),
            Tcp,
        ),
        row(
            "pod to LoadBalancer ETP Local (cluster, client kept)",
            Pod(0),
            sa(ip("192.0.2.11"), 80),
            Tcp,
        ),
        row(
            "pod to NodePort ETP Local, no local backend (cluster)",
            Pod(0),
            sa(node0, 30082),
            Tcp,
        ),
        row(
            "host to own NodePort ETP Local (cluster, masq)",
            Host,
            sa(node0, 30081),
            Tcp,
        ),
        row(
            "host to LoadBalancer ETP Local (cluster, masq)",
            Host,
            sa(ip("192.0.2.11"), 80),
            Tcp,
        ),
        row(
            "external to ClusterIP ITP Local, no local backend: drop",
            External,
            sa(ip("10.96.0.12"), 80),
            Tcp,
        ),
        row(
            "host to ClusterIP ITP Local, no local backend: drop",
            Host,
            sa(ip("10.96.0.12"), 80),
            Tcp,
        ),
        row(
            "external to NodePort ETP Local, no local backend",
            External,
            sa(node0, 30082),
            Tcp,
        ),
        row(
            "pod to ClusterIP ITP Local, no local backend",
            Pod(0),
            sa(ip("10.96.0.12"), 80),
            Tcp,
        ),
        row(
            "no backends tcp: reject",
            Pod(0),
            sa(ip("10.96.0.13"), 80),
            Tcp,
        ),
        row(
            "no backends udp: reject",
            Pod(0),
            sa(ip("10.96.0.13"), 80),
            Udp,
        ),
        row(
            "unknown ClusterIP port: reject",
            Pod(0),
            sa(ip("10.96.0.10"), 81),
            Tcp,
        ),
        row(
            "unknown ClusterIP port from host: reject",
            Host,
            sa(ip("10.96.0.10"), 81),
            Tcp,
        ),
        row(
            "unknown ClusterIP port from outside: reject",
            External,
            sa(ip("10.96.0.10"), 81),
            Udp,
        ),
        row(
            "unallocated service address from a pod: drop",
            Pod(0),
            sa(ip("10.96.0.99"), 80),
            Tcp,
        ),
        row(
            "unallocated service address from the host: drop",
            Host,
            sa(ip("10.96.0.99"), 80),
            Tcp,
        ),
        row(
            "unallocated service address from outside: drop",
            External,
            sa(ip("10.96.0.99"), 80),
            Udp,
        ),
        row(
            "pod to ClusterIP outside serviceCIDRs",
            Pod(1),
            sa(ip("10.200.0.19"), 80),
            Tcp,
        ),
        row(
            "external to ClusterIP outside serviceCIDRs (masquerade)",
            External,
            sa(ip("10.200.0.19"), 80),
            Tcp,
        ),
        row(
            "hairpin (masquerade)",
            Pod(0),
            sa(ip("10.96.0.14"), 80),
            Tcp,
        ),
        row(
            "loadBalancerSourceRanges: drop",
            External,
            sa(ip("192.0.2.15"), 80),
            Tcp,
        ),
        row(
            "pod to LoadBalancer, not in sourceRanges: drop",
            Pod(0),
            sa(ip("192.0.2.15"), 80),
            Tcp,
        ),
        row(
            "host to LoadBalancer, not in sourceRanges: drop",
            Host,
            sa(ip("192.0.2.15"), 80),
            Tcp,
        ),
        row(
            "external to LoadBalancer v6, sourceRanges only v4",
            External,
            sa(ip("2001:db8::15"), 80),
            Tcp,
        ),
        row(
            "external in sourceRanges to LoadBalancer",
            External,
            sa(ip("192.0.2.18"), 80),
            Tcp,
        ),
        row(
            "pod to LoadBalancer, sourceRanges outside only: drop",
            Pod(1),
            sa(ip("192.0.2.18"), 80),
            Tcp,
        ),
        row(
            "terminating fallback",
            Pod(1),
            sa(ip("10.96.0.17"), 80),
            Udp,
        ),
        row(
            "pod to outside (masquerade)",
            Pod(0),
            sa(ext, EXTERNAL_PORT),
            Tcp,
        ),
        row(
            "pod to remote pod (untouched)",
            Pod(0),
            sa(lab.pod(2).address(Family::V4).unwrap(), SERVER_PORT),
            Tcp,
        ),
    ]
}

/// Port of the server the external client runs.
pub const EXTERNAL_PORT: u16 = 9090;

/// Routes the external client's service traffic through node 0.
pub fn route_external(lab: &Lab) {
    for cidr in [
        "10.96.0.0/12",
        "10.200.0.0/16",
        "192.0.2.0/24",
        "198.51.100.0/24",
        "fd00:96::/108",
        "2001:db8::/32",
    ] {
        lab.route_via_node(0, cidr.parse().unwrap(), 0)
            .expect("route");
    }
}

fn capability_missing(row: &Row, caps: &Capabilities) -> Option<&'static str> {
    if row.destination.is_ipv6() && !caps.ipv6 {
        return Some("ipv6");
    }
    if !caps.protocols.contains(&row.protocol) {
        return Some("protocol");
    }
    None
}

/// Runs every row against `dp` (already applied with `state`) and panics with a table of the
/// rows that disagree with the reference model.
pub fn run(lab: &Lab, state: &DesiredState, dp: &dyn Dataplane) {
    run_rows(lab, state, dp, rows(lab));
}

/// [`run`] of some rows.
pub fn run_rows(lab: &Lab, state: &DesiredState, dp: &dyn Dataplane, rows: Vec<Row>) {
    let _external_server = serve(&lab.external(0).netns, "external-0", EXTERNAL_PORT).unwrap();
    let by_addr: BTreeMap<IpAddr, String> = lab
        .pods()
        .iter()
        .flat_map(|p| p.addresses.iter().map(|a| (*a, p.name.clone())))
        .collect();
    let caps = dp.capabilities();
    let mut failures = Vec::new();
    for row in rows {
        if let Some(missing) = capability_missing(&row, &caps) {
            eprintln!(
                "SKIPPED row {:?}: {} backend lacks {missing}",
                row.name, caps.dataplane
            );
            continue;
        }
        let family = if row.destination.is_ipv4() {
            Family::V4
        } else {
            Family::V6
        };
        let (netns, source, entry) = match row.client {
            Client::Pod(k) => {
                let p = lab.pod(k);
                (
                    &p.netns,
                    p.address(family).unwrap(),
                    Entry::FromPod(ObjectName::new("default", &p.name)),
                )
            }
            Client::Host => {
                let n = lab.node(0);
                (&n.netns, n.address(family).unwrap(), Entry::FromHost)
            }
            Client::External => {
                let x = lab.external(0);
                (&x.netns, x.address(family).unwrap(), Entry::FromUplink)
            }
        };
        let packet = Packet {
            protocol: row.protocol,
            source: SocketAddr::new(source, 40000),
            destination: row.destination,
        };
        let verdict = evaluate(state, &packet, &entry);
        let tries = match &verdict {
            Verdict::Forward { backends, .. } if backends.len() > 1 => 16,
            _ => 1,
        };
        let timeout = Duration::from_millis(if matches!(verdict, Verdict::Drop) {
            700
        } else {
            2000
        });
        let mut seen_backends = BTreeSet::new();
        for _ in 0..tries {
            let outcome = probe(netns, row.destination, row.protocol, timeout).unwrap();
            let problem = check(&verdict, &outcome, source, &by_addr, &mut seen_backends);
            if let Some(problem) = problem {
                failures.push(format!(
                    "{}: expected {verdict:?}, got {outcome:?}: {problem}",
                    row.name
                ));
                break;
            }
        }
        if let Verdict::Forward { backends, .. } = &verdict {
            let wanted: BTreeSet<String> = backends
                .iter()
                .filter_map(|b| by_addr.get(&b.ip()).cloned())
                .collect();
            if tries > 1 && seen_backends != wanted && failures.is_empty() {
                failures.push(format!(
                    "{}: backends {seen_backends:?} seen, {wanted:?} expected",
                    row.name
                ));
            }
        }
        eprintln!("row {:?}: done", row.name);
    }
    assert!(
        failures.is_empty(),
        "{} rows failed:\n{}",
        failures.len(),
        failures.join("\n")
    );
}

fn check(
    verdict: &Verdict,
    outcome: &ProbeOutcome,
    client: IpAddr,
    by_addr: &BTreeMap<IpAddr, String>,
    seen: &mut BTreeSet<String>,
) -> Option<String> {
    let source_ok = |source: &SourceSeen, seen_source: &SocketAddr| match source {
        SourceSeen::Client => seen_source.ip() == client,
        SourceSeen::Masqueraded(a) => seen_source.ip() == *a,
    };
    match (verdict, outcome) {
        (
            Verdict::Forward {
                backends, source, ..
            },
            ProbeOutcome::Answered {
                backend,
                seen_source,
                ..
            },
        ) => {
            let names: BTreeSet<&String> = backends
                .iter()
                .filter_map(|b| by_addr.get(&b.ip()))
                .collect();
            if !names.contains(backend) {
                return Some(format!("backend {backend} not allowed"));
            }
            seen.insert(backend.clone());
            (!source_ok(source, seen_source)).then(|| format!("source {seen_source} wrong"))
        }
        (Verdict::Untouched { source }, ProbeOutcome::Answered { seen_source, .. }) => {
            (!source_ok(source, seen_source)).then(|| format!("source {seen_source} wrong"))
        }
        (Verdict::Drop, ProbeOutcome::Timeout) | (Verdict::Reject, ProbeOutcome::Refused) => None,
        _ => Some("outcome differs".to_owned()),
    }
}

/// [`services`] before the kube-proxy parity settings: no source ranges, traffic policies
/// Cluster. A partial sync from it to [`services`] must program them.
pub fn services_without_policies(lab: &Lab) -> DesiredState {
    let mut state = services(lab);
    for s in &mut state.services {
        s.load_balancer_source_ranges.clear();
        s.external_traffic_policy = TrafficPolicy::Cluster;
        s.internal_traffic_policy = TrafficPolicy::Cluster;
    }
    state
}

/// Changes of source ranges and traffic policies go through `apply_changes`, a change of
/// `masquerade.allServices` (a node change) through it or, when the backend asks, a full
/// sync; after each the table holds with real traffic.
pub fn parity_changes(lab: &Lab, dp: &mut dyn Dataplane) {
    use dataplane_core::diff;
    // The rows check what a *new* connection gets. Netfilter keeps an existing flow's
    // translation across a change (as it should), and a UDP probe of one phase that picks the
    // ephemeral port of an earlier phase's probe would reuse that flow: each phase starts with
    // an empty conntrack table.
    let run = |lab: &Lab, state: &DesiredState, dp: &dyn Dataplane| {
        flush_conntrack(lab);
        run(lab, state, dp);
    };
    let before = services_without_policies(lab);
    let report = dp.apply(&before).expect("apply");
    // The ClusterIP outside the service CIDRs is programmed, with a warning.
    assert!(
        report.warnings.iter().any(
            |w| w.object == "service default/outside-cidr" && w.message.contains("10.200.0.19")
        ),
        "{report:?}"
    );
    let after = services(lab);
    let report = dp
        .apply_changes(&diff(&before, &after))
        .expect("apply_changes");
    assert!(!report.full_sync, "{report:?}");
    run(lab, &after, dp);
    // And back, incrementally: source ranges removed (firewall chains gone, LB IPs straight
    // to their services), traffic policies back to Cluster; then forward again.
    let report = dp
        .apply_changes(&diff(&after, &before))
        .expect("apply_changes back");
    assert!(!report.full_sync, "{report:?}");
    run(lab, &before, dp);
    dp.apply_changes(&diff(&before, &after))
        .expect("apply_changes again");
    run(lab, &after, dp);
    let mut all = after.clone();
    all.node.masquerade.all_services = true;
    dp.sync(Some(&after), &all)
        .expect("sync to masquerade.allServices");
    run(lab, &all, dp);
    // The unallocated-address drop, where something would answer: a service CIDR that
    // holds the external client (the rows above reach no listener in 10.96.0.0/12).
    let ext = lab.external(0).address(Family::V4).unwrap();
    let mut cidr = after.clone();
    cidr.node.service_cidrs.push(ext.into());
    dp.sync(Some(&after), &cidr)
        .expect("sync to a wider service CIDR");
    let picked = [
        "pod to outside (masquerade)",
        "pod to remote pod (untouched)",
    ];
    let mut rows: Vec<Row> = rows(lab)
        .into_iter()
        .filter(|r| picked.contains(&r.name))
        .collect();
    rows.push(Row {
        name: "host to an address in the service CIDRs",
        client: Client::Host,
        destination: SocketAddr::new(ext, EXTERNAL_PORT),
        // TCP: a UDP send the output hook drops fails at once (EPERM), a SYN is retried.
        protocol: Protocol::Tcp,
    });
    assert_eq!(rows.len(), 3);
    assert!(matches!(
        evaluate(
            &cidr,
            &Packet {
                protocol: Protocol::Tcp,
                source: SocketAddr::new(lab.pod(0).address(Family::V4).unwrap(), 40000),
                destination: SocketAddr::new(ext, EXTERNAL_PORT),
            },
            &Entry::FromPod(ObjectName::new("default", &lab.pod(0).name)),
        ),
        Verdict::Drop
    ));
    flush_conntrack(lab);
    run_rows(lab, &cidr, dp, rows);
}

/// Empties every lab node's connection tracking table (`conntrack -F`, from the `conntrack`
/// package that `scripts/dev setup` installs).
pub fn flush_conntrack(lab: &Lab) {
    for node in lab.nodes() {
        if let Err(e) = node.netns.exec_checked("conntrack", &["-F"], None) {
            panic!("conntrack -F (the conntrack package): {e}");
        }
    }
}

/// ClientIP affinity: many new connections from one client reach one backend.
pub fn check_affinity(lab: &Lab) {
    let dst: SocketAddr = "10.96.0.16:80".parse().unwrap();
    let mut seen = BTreeSet::new();
    for _ in 0..12 {
        let outcome = probe(
            &lab.pod(1).netns,
            dst,
            Protocol::Tcp,
            Duration::from_secs(2),
        )
        .unwrap();
        seen.insert(outcome.backend().expect("answered").to_owned());
    }
    assert_eq!(seen.len(), 1, "affinity broken: {seen:?}");
}
