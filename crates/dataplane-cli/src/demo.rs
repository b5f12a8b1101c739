//! `dpctl demo`: the main job. Builds a lab of network namespaces, programs a dataplane on every
//! node, sends real TCP and UDP traffic through each kind of service frontend, and prints who
//! answered and which source address the backend saw, next to what the reference model says
//! should happen. Then a NetworkPolicy section: a policy is added as a change, and probes that
//! it allows and denies are printed with the policy verdict that explains them. Then it
//! removes everything.

use std::collections::BTreeSet;
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use anyhow::{bail, Context};
use dataplane::reference::{
    evaluate, policy_verdict, Decision, Entry, Packet, PolicyVerdict, SourceSeen, Verdict,
};
use dataplane::{
    Backend, BoxDataplane, DesiredState, ExternalMode, LabelSelector, Namespace, ObjectName,
    PeerPod, Policy, PolicyPeer, PolicyPort, PolicyRule, PolicyType, PortRef, Protocol, Selection,
    Service, ServicePort, TrafficPolicy,
};
use dataplane_testkit::{probe, Lab, LabSpec, ProbeOutcome, SERVER_PORT};

use crate::dataplanes;

const CLUSTER_IP: &str = "10.96.0.10";
const LB_IP: &str = "172.18.200.10";
const EXTERNAL_IP: &str = "172.18.201.10";
const NODE_PORT: u16 = 30080;
const LOCAL_NODE_PORT: u16 = 30081;
const DSR_NODE_PORT: u16 = 30082;
/// ClusterIP of the policy section's `api` service (one backend: pod-1-0).
const API_IP: &str = "10.96.0.13";
const PROBE_TIMEOUT: Duration = Duration::from_millis(1500);

/// Who sends a probe.
#[derive(Debug, Clone, Copy)]
enum From {
    Pod(usize),
    External(usize),
}

struct Row {
    client: From,
    /// The node whose dataplane sees the packet first.
    ingress: usize,
    frontend: &'static str,
    destination: SocketAddr,
    protocol: Protocol,
}

/// The demo's services; `dsr`: with a DSR NodePort (when the dataplane can do it).
fn services(lab: &Lab, dsr: bool) -> Vec<Service> {
    let ip = |s: &str| s.parse::<IpAddr>().expect("literal address");
    let backend = |pod: usize| {
        let p = lab.pod(pod);
        let mut b = Backend::new(p.addresses[0]);
        b.node_name = Some(lab.node(p.node).name.as_str().into());
        b
    };
    let port = |name: &str, protocol, port, node_port| ServicePort {
        name: name.to_owned(),
        protocol,
        port,
        target_port: SERVER_PORT,
        node_port,
    };
    let mut web = Service::new(ObjectName::new("default", "web"));
    web.cluster_ips = vec![ip(CLUSTER_IP)];
    web.load_balancer_ips = vec![ip(LB_IP)];
    web.external_ips = vec![ip(EXTERNAL_IP)];
    web.ports = vec![
        port("http", Protocol::Tcp, 80, Some(NODE_PORT)),
        port("dns", Protocol::Udp, 53, Some(NODE_PORT)),
    ];
    // pod-0-0 on node-0, pod-1-0 and pod-1-1 on node-1.
    web.backends = vec![backend(0), backend(2), backend(3)];
    let mut local = Service::new(ObjectName::new("default", "local"));
    local.cluster_ips = vec![ip("10.96.0.11")];
    local.ports = vec![port("http", Protocol::Tcp, 80, Some(LOCAL_NODE_PORT))];
    local.external_traffic_policy = TrafficPolicy::Local;
    local.backends = vec![backend(1)];
    let mut out = vec![web, local];
    if dsr {
        // Backends on node-1 only: node-0 forwards, node-1 answers the client directly.
        let mut direct = Service::new(ObjectName::new("default", "direct"));
        direct.cluster_ips = vec![ip("10.96.0.12")];
        direct.ports = vec![
            port("http", Protocol::Tcp, 80, Some(DSR_NODE_PORT)),
            port("dns", Protocol::Udp, 53, Some(DSR_NODE_PORT)),
        ];
        direct.backends = vec![backend(2), backend(3)];
        direct.external_mode = Some(ExternalMode::Dsr);
        out.push(direct);
    }
    out
}

fn rows(lab: &Lab, dsr: bool) -> Vec<Row> {
    let sa = |ip: IpAddr, port| SocketAddr::new(ip, port);
    let ip = |s: &str| s.parse::<IpAddr>().expect("literal address");
    let node0 = lab.node(0).addresses[0];
    let node1 = lab.node(1).addresses[0];
    let mut rows = Vec::new();
    for _ in 0..3 {
        rows.push(Row {
            client: From::Pod(1),
            ingress: 0,
            frontend: "ClusterIP",
            destination: sa(ip(CLUSTER_IP), 80),
            protocol: Protocol::Tcp,
        });
    }
    rows.push(Row {
        client: From::Pod(1),
        ingress: 0,
        frontend: "ClusterIP",
        destination: sa(ip(CLUSTER_IP), 53),
        protocol: Protocol::Udp,
    });
    rows.push(Row {
        client: From::External(0),
        ingress: 0,
        frontend: "NodePort",
        destination: sa(node0, NODE_PORT),
        protocol: Protocol::Tcp,
    });
    rows.push(Row {
        client: From::External(0),
        ingress: 1,
        frontend: "NodePort",
        destination: sa(node1, NODE_PORT),
        protocol: Protocol::Udp,
    });
    rows.push(Row {
        client: From::External(0),
        ingress: 0,
        frontend: "NodePort (ETP Local)",
        destination: sa(node0, LOCAL_NODE_PORT),
        protocol: Protocol::Tcp,
    });
    rows.push(Row {
        client: From::External(0),
        ingress: 1,
        frontend: "NodePort (ETP Local)",
        destination: sa(node1, LOCAL_NODE_PORT),
        protocol: Protocol::Tcp,
    });
    rows.push(Row {
        client: From::External(0),
        ingress: 0,
        frontend: "LoadBalancer",
        destination: sa(ip(LB_IP), 80),
        protocol: Protocol::Tcp,
    });
    rows.push(Row {
        client: From::External(0),
        ingress: 1,
        frontend: "ExternalIP",
        destination: sa(ip(EXTERNAL_IP), 80),
        protocol: Protocol::Tcp,
    });
    if dsr {
        for protocol in [Protocol::Tcp, Protocol::Udp] {
            rows.push(Row {
                client: From::External(0),
                ingress: 0,
                frontend: "NodePort (DSR)",
                destination: sa(node0, DSR_NODE_PORT),
                protocol,
            });
        }
    }
    rows
}

/// Runs the demo on the dataplane `selection` names.
pub fn run(selection: Selection) -> anyhow::Result<()> {
    if !nix::unistd::geteuid().is_root() {
        bail!("the demo builds network namespaces and programs the kernel: run it as root");
    }
    let lab = Lab::new(LabSpec {
        nodes: 2,
        pods_per_node: 2,
        external_clients: 1,
        ipv6: false,
    })
    .context("building the lab")?;
    lab.route_via_node(0, format!("{LB_IP}/32").parse()?, 0)?;
    lab.route_via_node(0, format!("{EXTERNAL_IP}/32").parse()?, 1)?;
    let opened = dataplanes::open_lab(selection, &lab)?;
    println!("dataplane: {} ({})", opened.kind, opened.reason);
    let mut dataplanes = opened.dataplanes;
    let dsr = dataplanes.first().is_some_and(|dp| dp.capabilities().dsr);
    if !dsr {
        println!("(the {} dataplane has no DSR: no DSR rows)", opened.kind);
    }
    let svcs = services(&lab, dsr);
    let states: Vec<DesiredState> = (0..lab.nodes().len())
        .map(|i| {
            let mut s = lab.desired_state(i);
            s.services.clone_from(&svcs);
            s
        })
        .collect();
    for (i, (dp, state)) in dataplanes.iter_mut().zip(&states).enumerate() {
        dp.sync(None, state)
            .with_context(|| format!("programming the demo state on node-{i}"))?;
    }
    let result = traffic_table(&lab, &states, dsr).and_then(|failures| {
        let policy_failures = if dataplanes
            .first()
            .is_some_and(|dp| dp.capabilities().network_policy)
        {
            policy_section(&lab, &mut dataplanes, &states)?
        } else {
            println!(
                "\n(the {} dataplane has no network policy: no policy rows)",
                opened.kind
            );
            0
        };
        Ok(failures + policy_failures)
    });
    for dp in &mut dataplanes {
        if let Err(e) = dp.reset() {
            eprintln!("warning: reset failed: {e}");
        }
    }
    drop(dataplanes);
    drop(lab);
    let failures = result?;
    if failures > 0 {
        bail!("{failures} row(s) disagree with the reference model");
    }
    println!("all rows agree with the reference model; lab removed");
    Ok(())
}

fn traffic_table(lab: &Lab, states: &[DesiredState], dsr: bool) -> anyhow::Result<usize> {
    println!(
        "{:<26} {:<22} {:<20} {:<4} {:<10} {:<24} {:<26} ok",
        "client", "frontend", "destination", "", "backend", "source seen by backend", "expected"
    );
    let mut failures = 0;
    for row in rows(lab, dsr) {
        let (netns, client_ip, name, entry) = match row.client {
            From::Pod(p) => {
                let pod = lab.pod(p);
                (
                    &pod.netns,
                    pod.addresses[0],
                    pod.name.clone(),
                    Entry::FromPod(ObjectName::new("default", pod.name.clone())),
                )
            }
            From::External(k) => {
                let e = lab.external(k);
                (&e.netns, e.addresses[0], e.name.clone(), Entry::FromUplink)
            }
        };
        let outcome = probe(netns, row.destination, row.protocol, PROBE_TIMEOUT)
            .with_context(|| format!("probing {} from {name}", row.destination))?;
        let packet = Packet {
            protocol: row.protocol,
            source: SocketAddr::new(client_ip, 40000),
            destination: row.destination,
        };
        let verdict = evaluate(&states[row.ingress], &packet, &entry);
        let (got_backend, got_source) = match &outcome {
            ProbeOutcome::Answered {
                backend,
                seen_source,
                ..
            } => (backend.clone(), seen_source.ip().to_string()),
            ProbeOutcome::Refused => ("(rejected)".to_owned(), "-".to_owned()),
            ProbeOutcome::Unreachable => ("(unreachable)".to_owned(), "-".to_owned()),
            ProbeOutcome::Timeout => ("(dropped)".to_owned(), "-".to_owned()),
        };
        let (expected, ok) = judge(lab, &verdict, &outcome, client_ip);
        if !ok {
            failures += 1;
        }
        println!(
            "{:<26} {:<22} {:<20} {:<4} {:<10} {:<24} {:<26} {}",
            format!("{name} ({client_ip})"),
            row.frontend,
            row.destination.to_string(),
            row.protocol.to_string(),
            got_backend,
            got_source,
            expected,
            if ok { "yes" } else { "NO" }
        );
    }
    Ok(failures)
}

/// Compares a probe's outcome with the reference model's verdict; returns the expectation as
/// text and whether it was met.
fn judge(lab: &Lab, verdict: &Verdict, outcome: &ProbeOutcome, client: IpAddr) -> (String, bool) {
    match verdict {
        Verdict::Forward {
            backends, source, ..
        } => {
            let names: BTreeSet<String> = backends
                .iter()
                .filter_map(|b| {
                    lab.pods()
                        .iter()
                        .find(|p| p.addresses.contains(&b.ip()))
                        .map(|p| p.name.clone())
                })
                .collect();
            let want_source = match source {
                SourceSeen::Client => client,
                SourceSeen::Masqueraded(a) => *a,
            };
            let ok = matches!(outcome, ProbeOutcome::Answered { backend, seen_source, .. }
                if names.contains(backend) && seen_source.ip() == want_source);
            let list = names
                .into_iter()
                .map(|n| n.trim_start_matches("pod-").to_owned())
                .collect::<Vec<_>>()
                .join("|");
            (format!("pod-{{{list}}} from {want_source}"), ok)
        }
        Verdict::Drop => ("drop".to_owned(), matches!(outcome, ProbeOutcome::Timeout)),
        Verdict::Reject => (
            "reject".to_owned(),
            matches!(outcome, ProbeOutcome::Refused | ProbeOutcome::Unreachable),
        ),
        Verdict::Untouched { .. } => (
            "untouched".to_owned(),
            matches!(outcome, ProbeOutcome::Answered { .. }),
        ),
    }
}

/// The policy section's states: `base` (one per node) with the `api` service, the lab's pods
/// on other nodes as policy peers, the `default` namespace and the policy
/// `default/api-from-pod-0-0`: pod-1-0 (the backend of `api`) lets in only pod-0-0, on TCP
/// port 8080 (the port after DNAT, as Kubernetes checks service traffic).
fn policy_states(lab: &Lab, base: &[DesiredState]) -> anyhow::Result<Vec<DesiredState>> {
    let backend = lab.pod_by_name("pod-1-0").context("the lab has pod-1-0")?;
    let allowed = lab.pod_by_name("pod-0-0").context("the lab has pod-0-0")?;
    let mut b = Backend::new(backend.addresses[0]);
    b.node_name = Some(lab.node(backend.node).name.as_str().into());
    let api = Service::cluster_ip(
        ObjectName::new("default", "api"),
        API_IP.parse()?,
        [ServicePort::tcp(80, SERVER_PORT).named("http")],
    )
    .with_backend(b);
    let selector = |pod: &str| LabelSelector {
        match_labels: [("app".to_owned(), pod.to_owned())].into(),
        match_expressions: Vec::new(),
    };
    let policy = Policy {
        name: ObjectName::new("default", "api-from-pod-0-0"),
        pod_selector: selector(&backend.name),
        policy_types: vec![PolicyType::Ingress],
        ingress: vec![PolicyRule {
            peers: vec![PolicyPeer {
                pod_selector: Some(selector(&allowed.name)),
                namespace_selector: None,
                ip_block: None,
            }],
            ports: vec![PolicyPort {
                protocol: Protocol::Tcp,
                port: Some(PortRef::Number(SERVER_PORT)),
                end_port: None,
            }],
        }],
        egress: Vec::new(),
    };
    Ok(base
        .iter()
        .enumerate()
        .map(|(i, state)| {
            let mut s = state.clone();
            s.services.push(api.clone());
            s.policies.push(policy.clone());
            s.namespaces.push(Namespace::new("default"));
            s.pods = lab
                .pods()
                .iter()
                .filter(|p| p.node != i)
                .map(|p| {
                    let endpoint = p.endpoint();
                    let mut peer = PeerPod::new(endpoint.name, p.addresses.clone())
                        .on_node(lab.node(p.node).name.as_str());
                    peer.labels = endpoint.labels;
                    peer
                })
                .collect();
            s
        })
        .collect())
}

/// Adds the policy section's objects as a change on every node, probes, and prints each probe
/// with the reference model's verdict and the policy decision behind it. Returns the rows that
/// disagree.
fn policy_section(
    lab: &Lab,
    dataplanes: &mut [BoxDataplane],
    base: &[DesiredState],
) -> anyhow::Result<usize> {
    let states = policy_states(lab, base)?;
    for (i, (dp, (before, after))) in dataplanes
        .iter_mut()
        .zip(base.iter().zip(&states))
        .enumerate()
    {
        dp.sync(Some(before), after)
            .with_context(|| format!("adding the policy section's objects on node-{i}"))?;
    }
    println!(
        "\nNetworkPolicy default/api-from-pod-0-0: pod-1-0 accepts only pod-0-0, on TCP {SERVER_PORT}"
    );
    println!(
        "{:<24} {:<20} {:<4} {:<20} {:<10} {:<54} ok",
        "client", "destination", "", "expected", "seen", "policy verdict"
    );
    let api: IpAddr = API_IP.parse()?;
    let server = lab.pod_by_name("pod-1-0").context("the lab has pod-1-0")?;
    let direct = SocketAddr::new(server.addresses[0], SERVER_PORT);
    let rows = [
        ("pod-0-0", SocketAddr::new(api, 80), Protocol::Tcp),
        ("pod-0-1", SocketAddr::new(api, 80), Protocol::Tcp),
        ("pod-0-1", direct, Protocol::Tcp),
        ("pod-0-0", direct, Protocol::Udp),
        ("pod-1-1", SocketAddr::new(api, 80), Protocol::Tcp),
    ];
    let mut failures = 0;
    for (client, destination, protocol) in rows {
        let pod = lab
            .pod_by_name(client)
            .context("the lab has the client pod")?;
        let state = &states[pod.node];
        let packet = Packet {
            protocol,
            source: SocketAddr::new(pod.addresses[0], 40000),
            destination,
        };
        let entry = Entry::FromPod(ObjectName::new("default", pod.name.clone()));
        let verdict = evaluate(state, &packet, &entry);
        let outcome = probe(&pod.netns, destination, protocol, PROBE_TIMEOUT)
            .with_context(|| format!("probing {destination} from {client}"))?;
        let (expected, ok) = judge(lab, &verdict, &outcome, pod.addresses[0]);
        let expected = if matches!(verdict, Verdict::Drop) {
            "denied".to_owned()
        } else {
            format!(
                "allowed: {}",
                expected.split(' ').next().unwrap_or_default()
            )
        };
        let seen = match &outcome {
            ProbeOutcome::Answered { backend, .. } => backend.clone(),
            ProbeOutcome::Refused => "(rejected)".to_owned(),
            ProbeOutcome::Unreachable => "(unreachable)".to_owned(),
            ProbeOutcome::Timeout => "(dropped)".to_owned(),
        };
        // After DNAT: the policy is asked about the backend and its target port.
        let (to, port) = if destination.ip() == api {
            (server.addresses[0], SERVER_PORT)
        } else {
            (destination.ip(), destination.port())
        };
        let explained = explain(&policy_verdict(state, pod.addresses[0], to, protocol, port));
        if !ok {
            failures += 1;
        }
        println!(
            "{:<24} {:<20} {:<4} {:<20} {:<10} {:<54} {}",
            format!("{client} ({})", pod.addresses[0]),
            destination.to_string(),
            protocol.to_string(),
            expected,
            seen,
            explained,
            if ok { "yes" } else { "NO" }
        );
    }
    Ok(failures)
}

/// A policy verdict in words: the decision of each half that is not a plain "not isolated".
fn explain(verdict: &PolicyVerdict) -> String {
    let half = |direction: &str, d: &Decision| -> Option<String> {
        let names = |list: &[ObjectName]| {
            list.iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join(", ")
        };
        match d {
            Decision::NotAPod | Decision::NotIsolated => None,
            Decision::NodeTraffic => Some(format!("{direction}: node traffic")),
            Decision::SamePod => Some(format!("{direction}: same pod")),
            Decision::Allowed(list) => Some(format!("{direction} allowed by {}", names(list))),
            Decision::Denied(list) => {
                Some(format!("{direction} denied (isolated by {})", names(list)))
            }
        }
    };
    let parts: Vec<String> = [
        half("egress", &verdict.egress),
        half("ingress", &verdict.ingress),
    ]
    .into_iter()
    .flatten()
    .collect();
    if parts.is_empty() {
        "no policy applies".to_owned()
    } else {
        parts.join("; ")
    }
}
