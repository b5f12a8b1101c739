//! `dpctl demo`: the node agent's demo. Builds a lab of network namespaces, writes the lab's
//! cluster as Kubernetes manifests (Nodes, a Namespace, Pods, Services of every frontend kind
//! with their EndpointSlices), starts one `dataplane-agent` per lab node over that directory,
//! sends real TCP and UDP through each kind of frontend and prints who answered and which
//! source address the backend saw, next to what the reference model says should happen. Then
//! it edits the manifests the way a cluster changes: `web` is scaled down (a backend leaves its
//! EndpointSlice) and a NetworkPolicy is added; once every agent has synced the change, the
//! rows are printed again. Then, where the backend can program them, an AdminNetworkPolicy
//! whose Deny beats the NetworkPolicy's Allow, and Calico host endpoint policy on node-0's
//! uplink (untracked and pre-DNAT denies); a backend that cannot gets rows that say so. Then
//! it stops the agents, removes what they installed and the lab.
//!
//! Before the first probe it opens an event reader on every node (`dataplane::inspect`, as
//! `dpctl flows --follow` beside each agent) and ends with the flow log of what it did
//! ([`FlowLog`]): shown, never judged, so that no check depends on when events arrive.
//!
//! The model judges exactly what the agents were given: the expected column comes from
//! [`dataplane::reference::evaluate`] over the state `dataplane_kube::Cluster` translates from
//! the same files, for the node whose agent sees the packet first.

use std::collections::BTreeSet;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use anyhow::{anyhow, bail, Context};
use dataplane::reference::{
    evaluate, policy_verdict, Decision, Entry, Packet, PolicyVerdict, SourceSeen, Verdict,
};
use dataplane::{
    Capabilities, DataplaneKind, DesiredState, ObjectName, Options, Protocol, Selection,
};
use dataplane_kube::{parse_manifests, Cluster, Kind, Object, Settings};
use dataplane_testkit::{probe, probe_from, Lab, LabSpec, ProbeOutcome, SERVER_PORT};

use crate::agents::{self, Agent, Fleet};
use crate::flowlog::FlowLog;
use crate::manifests::{
    self, ADMIN_POLICY, API_IP, API_POD, BLOCKED_CIDR, BLOCKED_SOURCE, CLUSTER_IP, EXTERNAL_IP,
    HEALTH_NODE_PORT, HOST_ENDPOINT, LB_IP, LOCAL_NODE_PORT, NODE_PORT, POLICY, POLICY_CLIENT,
    PRE_DNAT_POLICY, SCALED_AWAY, UNTRACKED_POLICY, WEB_PODS,
};

const PROBE_TIMEOUT: Duration = Duration::from_millis(1500);

/// Who sends a probe.
#[derive(Debug, Clone, Copy)]
enum From {
    Pod(usize),
    External(usize),
}

struct Row {
    client: From,
    /// The node whose agent programmed the dataplane that sees the packet first.
    ingress: usize,
    frontend: &'static str,
    destination: SocketAddr,
    protocol: Protocol,
}

fn rows(lab: &Lab) -> Vec<Row> {
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
    rows
}

/// The kind every agent runs: what `selection` names if this machine can run it; for `auto`
/// the first of [`DataplaneKind::ALL`] that can, with the reasons for the ones passed over
/// (decided once here so that the whole lab runs one kind, and said on the first line).
fn choose(selection: Selection) -> anyhow::Result<(DataplaneKind, String)> {
    match selection {
        Selection::Only(kind) => {
            kind.usable()
                .map_err(|reason| anyhow!("the {kind} dataplane cannot run here: {reason}"))?;
            Ok((kind, format!("{kind} was asked for")))
        }
        Selection::Auto => {
            let mut skipped = Vec::new();
            for kind in DataplaneKind::ALL {
                match kind.usable() {
                    Ok(()) if skipped.is_empty() => {
                        return Ok((
                            kind,
                            format!("auto: {kind} is the first choice and can run here"),
                        ))
                    }
                    Ok(()) => {
                        return Ok((
                            kind,
                            format!("auto: {kind}, because {}", skipped.join("; ")),
                        ))
                    }
                    Err(reason) => skipped.push(format!("{kind}: {reason}")),
                }
            }
            bail!("no dataplane can run here: {}", skipped.join("; "))
        }
    }
}

/// The demo's lab: 2 nodes x 2 pods, 1 external client, IPv4.
fn lab() -> anyhow::Result<Lab> {
    Lab::new(LabSpec {
        nodes: 2,
        pods_per_node: 2,
        external_clients: 1,
        ipv6: false,
    })
    .context("building the lab")
}

/// Runs the demo with the agents at `agent` (else found beside dpctl) on the dataplane
/// `selection` names.
pub fn run(selection: Selection, agent: Option<&Path>) -> anyhow::Result<()> {
    if !nix::unistd::geteuid().is_root() {
        bail!("the demo builds network namespaces and programs the kernel: run it as root");
    }
    let binary = agents::find_binary(agent)?;
    let (kind, reason) = choose(selection)?;
    println!("dataplane: {kind} ({reason})");
    let lab = lab()?;
    lab.route_via_node(0, format!("{LB_IP}/32").parse()?, 0)?;
    lab.route_via_node(0, format!("{EXTERNAL_IP}/32").parse()?, 1)?;
    let work = tempfile::Builder::new()
        .prefix("dpctl-demo-")
        .tempdir()
        .context("creating the demo's directory")?;
    let fleet = Fleet {
        binary,
        kind,
        manifests: work.path().join("manifests"),
        logs: work.path().join("logs"),
    };
    std::fs::create_dir(&fleet.manifests)?;
    std::fs::create_dir(&fleet.logs)?;
    let mut agents = Vec::new();
    let result = run_agents(&lab, &fleet, &mut agents);
    let mut ended = Vec::new();
    let mut cleanup_failed = false;
    for agent in &mut agents {
        let how = agent
            .stop()
            .unwrap_or_else(|e| format!("stop failed: {e:#}"));
        if let Err(e) = agent.cleanup() {
            eprintln!("warning: {e:#}");
            cleanup_failed = true;
        }
        ended.push(format!("{} {how}", agent.node));
    }
    drop(agents);
    drop(lab);
    if !matches!(result, Ok(0)) || cleanup_failed {
        let dir = work.keep();
        eprintln!(
            "the manifests and the agents' logs are kept in {}",
            dir.display()
        );
    }
    let failures = result?;
    if failures > 0 {
        bail!("{failures} row(s) disagree with the reference model");
    }
    println!(
        "all rows agree with the reference model; agents {}, cleaned up (--cleanup); lab removed",
        ended.join(", ")
    );
    Ok(())
}

/// Writes the manifests, starts the agents (into `agents`, which the caller stops whatever
/// happens), prints every section. Returns the rows that disagree with the model.
fn run_agents(lab: &Lab, fleet: &Fleet, agents: &mut Vec<Agent>) -> anyhow::Result<usize> {
    let dir = &fleet.manifests;
    let files = manifests::initial(lab, SystemTime::now())?;
    let names: Vec<&str> = files.iter().map(|f| f.name).collect();
    for file in &files {
        manifests::write(dir, file)?;
    }
    for i in 0..lab.nodes().len() {
        agents.push(fleet.start(lab, i)?);
    }
    let mut synced = Vec::new();
    for agent in agents.iter_mut() {
        synced.push(agent.wait_first_sync()?);
    }
    println!(
        "agents: {} over {} ({})",
        agents
            .iter()
            .map(|a| format!("{} (pid {})", a.node, a.pid().unwrap_or_default()))
            .collect::<Vec<_>>()
            .join(", "),
        dir.display(),
        names.join(", ")
    );
    println!(
        "(no DSR rows: Kubernetes has no field for DSR, and the agent reads only Kubernetes \
         objects)"
    );
    // Readers open before the first probe, so that the log has the whole demo.
    let nodes: Vec<_> = (0..lab.nodes().len())
        .map(|i| agents::node_state(lab, i))
        .collect();
    let log = FlowLog::open(fleet.kind, &nodes);
    let failures = sections(lab, agents, &mut synced, dir, fleet.kind);
    log.finish();
    failures
}

/// Every section of traffic, health checks and edits. Returns the rows that disagree with the
/// model.
fn sections(
    lab: &Lab,
    agents: &mut [Agent],
    synced: &mut [f64],
    dir: &Path,
    kind: DataplaneKind,
) -> anyhow::Result<usize> {
    let states = translate(lab, dir)?;
    println!();
    let mut failures = traffic_table(lab, &states)?;
    failures += health_rows(lab, &states)?;
    println!();
    failures += policy_rows(lab, &states)?;

    let scaled: Vec<&str> = WEB_PODS
        .iter()
        .copied()
        .filter(|p| *p != SCALED_AWAY)
        .collect();
    let file = manifests::web(lab, &scaled, SystemTime::now())?;
    let took = edit(agents, synced, dir, &file)?;
    println!(
        "\nedit 1: web scaled down: {SCALED_AWAY} left EndpointSlice default/web-demo ({}); {took}",
        file.name
    );
    let states = translate(lab, dir)?;
    failures += traffic_table(lab, &states)?;

    let file = manifests::policy()?;
    let took = edit(agents, synced, dir, &file)?;
    println!(
        "\nedit 2: NetworkPolicy default/{POLICY} added ({}): {API_POD} accepts only \
         {POLICY_CLIENT}, on TCP {SERVER_PORT}; {took}",
        file.name
    );
    let states = translate(lab, dir)?;
    failures += policy_rows(lab, &states)?;

    failures += tier_sections(lab, agents, synced, dir, kind)?;
    Ok(failures)
}

/// Edits 3 and 4: an AdminNetworkPolicy whose Deny beats the NetworkPolicy's Allow, and
/// Calico host endpoint policy on node-0's uplink (an untracked deny of a blocked range, a
/// pre-DNAT deny of one client on `web`'s NodePort). The served row is `local`'s NodePort:
/// its one backend is not isolated, where `web`'s pod-1-0 is (edit 2's NetworkPolicy), which
/// would make a `web` row depend on the backend drawn. Each is written only when the backend can
/// program it (a backend refuses a state it cannot program whole, which would stop every
/// agent's syncs); otherwise its rows say so. Returns the rows that disagree with the model.
fn tier_sections(
    lab: &Lab,
    agents: &mut [Agent],
    synced: &mut [f64],
    dir: &Path,
    kind: DataplaneKind,
) -> anyhow::Result<usize> {
    let caps = backend_capabilities(kind, lab);
    let lacks = |what: &str, has: fn(&Capabilities) -> bool| match &caps {
        Ok(c) if has(c) => None,
        Ok(_) => Some(format!("skipped: backend lacks {what}")),
        Err(e) => Some(format!(
            "skipped: could not ask the backend for its capabilities: {e}"
        )),
    };
    let mut failures = 0;
    let file = manifests::admin_policy()?;
    match lacks("cluster policy", |c| c.cluster_policy) {
        None => {
            let took = edit(agents, synced, dir, &file)?;
            println!(
                "\nedit 3: AdminNetworkPolicy {ADMIN_POLICY} added ({}): Deny {POLICY_CLIENT} to \
                 {API_POD} on TCP {SERVER_PORT}, which NetworkPolicy default/{POLICY} allows; \
                 {took}",
                file.name
            );
            let states = translate(lab, dir)?;
            failures += policy_rows(lab, &states)?;
        }
        Some(why) => {
            println!(
                "\nedit 3: AdminNetworkPolicy {ADMIN_POLICY} ({}) not written: {why}",
                file.name
            );
            println!(
                "{:<24} {:<20} {:<4} {why}",
                format!("{POLICY_CLIENT}"),
                API_POD,
                "TCP"
            );
        }
    }
    let file = manifests::host_policy(lab)?;
    let rows = host_rows_spec(lab)?;
    match lacks("host policy", |c| c.host_policy) {
        None => {
            let client = lab.external(0);
            client
                .netns
                .exec_checked(
                    "ip",
                    &[
                        "addr",
                        "add",
                        &format!("{BLOCKED_SOURCE}/16"),
                        "dev",
                        &client.interface,
                    ],
                    None,
                )
                .context("giving the external client its blocked address")?;
            let took = edit(agents, synced, dir, &file)?;
            println!(
                "\nedit 4: Calico HostEndpoint {HOST_ENDPOINT} for node-0's uplink, \
                 GlobalNetworkPolicies {UNTRACKED_POLICY} (doNotTrack: Deny from {BLOCKED_CIDR}) \
                 and {PRE_DNAT_POLICY} (preDNAT: Deny {} to NodePort {NODE_PORT}) added \
                 ({}); {took}",
                client.addresses[0], file.name
            );
            let states = translate(lab, dir)?;
            failures += host_rows(lab, &states, &rows)?;
        }
        Some(why) => {
            println!(
                "\nedit 4: Calico host endpoint policy ({}) not written: {why}",
                file.name
            );
            for row in &rows {
                println!(
                    "{:<26} {:<22} {:<20} {why}",
                    format!("{} ({})", lab.external(0).name, row.source),
                    row.what,
                    row.destination.to_string()
                );
            }
        }
    }
    Ok(failures)
}

/// What the backend the agents run can program: asked of a dataplane of that kind opened in
/// the external client's namespace (nothing is programmed before a sync; an eBPF one gets a
/// pin directory of its own, removed after).
fn backend_capabilities(kind: DataplaneKind, lab: &Lab) -> Result<Capabilities, String> {
    let pin = PathBuf::from(format!(
        "/sys/fs/bpf/dpctl-demo-capabilities-{}",
        std::process::id()
    ));
    let mut options = Options::in_netns(lab.external(0).netns.path());
    options.ebpf.pin_dir.clone_from(&pin);
    let caps = dataplane::open(Selection::Only(kind), &options)
        .map(|opened| opened.dataplane.capabilities())
        .map_err(|e| e.to_string());
    if pin.exists() {
        let _ = std::fs::remove_dir_all(&pin);
    }
    caps
}

/// A probe of the host policy section: from the external client, from `source`.
struct HostRow {
    what: &'static str,
    source: IpAddr,
    destination: SocketAddr,
}

fn host_rows_spec(lab: &Lab) -> anyhow::Result<Vec<HostRow>> {
    let node0 = lab.node(0).addresses[0];
    let client = lab.external(0).addresses[0];
    Ok(vec![
        HostRow {
            what: "NodePort (ETP Local)",
            source: BLOCKED_SOURCE.parse()?,
            destination: SocketAddr::new(node0, LOCAL_NODE_PORT),
        },
        HostRow {
            what: "NodePort (ETP Local)",
            source: client,
            destination: SocketAddr::new(node0, LOCAL_NODE_PORT),
        },
        HostRow {
            what: "NodePort",
            source: client,
            destination: SocketAddr::new(node0, NODE_PORT),
        },
    ])
}

/// The host policy rows: each probe judged against the reference model's verdict for
/// node-0, which sees the packet first on its uplink.
fn host_rows(lab: &Lab, states: &[DesiredState], rows: &[HostRow]) -> anyhow::Result<usize> {
    println!(
        "{:<26} {:<22} {:<20} {:<4} {:<10} {:<24} {:<36} ok",
        "client", "frontend", "destination", "", "backend", "source seen by backend", "expected"
    );
    let client = lab.external(0);
    let mut failures = 0;
    for row in rows {
        let packet = Packet {
            protocol: Protocol::Tcp,
            source: SocketAddr::new(row.source, 40000),
            destination: row.destination,
        };
        let verdict = evaluate(&states[0], &packet, &Entry::FromUplink);
        let outcome = probe_from(
            &client.netns,
            Some(SocketAddr::new(row.source, 0)),
            row.destination,
            Protocol::Tcp,
            PROBE_TIMEOUT,
        )
        .with_context(|| format!("probing {} from {}", row.destination, row.source))?;
        let (got_backend, got_source) = seen(&outcome);
        let (expected, ok) = judge(lab, &verdict, &outcome, row.source);
        if !ok {
            failures += 1;
        }
        println!(
            "{:<26} {:<22} {:<20} {:<4} {:<10} {:<24} {:<36} {}",
            format!("{} ({})", client.name, row.source),
            row.what,
            row.destination.to_string(),
            "TCP",
            got_backend,
            got_source,
            expected,
            if ok { "yes" } else { "NO" }
        );
    }
    Ok(failures)
}

/// Who answered a probe and the source it saw, in words.
fn seen(outcome: &ProbeOutcome) -> (String, String) {
    match outcome {
        ProbeOutcome::Answered {
            backend,
            seen_source,
            ..
        } => (backend.clone(), seen_source.ip().to_string()),
        ProbeOutcome::Refused => ("(rejected)".to_owned(), "-".to_owned()),
        ProbeOutcome::Unreachable => ("(unreachable)".to_owned(), "-".to_owned()),
        ProbeOutcome::Timeout => ("(dropped)".to_owned(), "-".to_owned()),
    }
}

/// Writes `file` into `dir` and waits until every agent has synced after its last sync
/// (`synced`, updated). Returns how long each took, in words.
fn edit(
    agents: &mut [Agent],
    synced: &mut [f64],
    dir: &Path,
    file: &manifests::File,
) -> anyhow::Result<String> {
    let written = agents::unix_now();
    manifests::write(dir, file)?;
    let mut took = Vec::new();
    for (agent, last) in agents.iter_mut().zip(synced.iter_mut()) {
        *last = agent.wait_synced_since(*last, written)?;
        took.push(format!(
            "{} {:.0} ms",
            agent.node,
            ((*last - written) * 1000.0).max(0.0)
        ));
    }
    Ok(format!("programmed by {}", took.join(", ")))
}

/// Every node's state as its agent should have it: the manifests in `dir` translated by
/// `dataplane_kube::Cluster` for that node, with the lab's settings (the agents' flags) and
/// the lab's host-side veths as the pods' interfaces (the agent finds them by route).
fn translate(lab: &Lab, dir: &Path) -> anyhow::Result<Vec<DesiredState>> {
    let mut objects: Vec<Object> = Vec::new();
    let mut paths: Vec<PathBuf> = std::fs::read_dir(dir)
        .with_context(|| format!("reading {}", dir.display()))?
        .map(|e| e.map(|e| e.path()))
        .collect::<Result<Vec<_>, _>>()?
        .into_iter()
        .filter(|p| p.extension().is_some_and(|e| e == "yaml"))
        .collect();
    paths.sort();
    for path in paths {
        let text = std::fs::read_to_string(&path)
            .with_context(|| format!("reading {}", path.display()))?;
        let parsed = parse_manifests(&text, &path.display().to_string())?;
        objects.extend(parsed.objects);
    }
    let mut states = Vec::new();
    for i in 0..lab.nodes().len() {
        let node = lab.node(i);
        let mut cluster = Cluster::new(Settings {
            node_name: node.name.clone(),
            node: lab.node_state(i),
            proxy_name: None,
        });
        for kind in Kind::ALL {
            let of_kind = objects
                .iter()
                .filter(|o| o.kind() == kind)
                .cloned()
                .collect();
            cluster.replace(kind, of_kind)?;
        }
        let resolver = |_: &ObjectName, ips: &[IpAddr]| {
            lab.pods_on(i)
                .find(|p| p.addresses.iter().any(|a| ips.contains(a)))
                .map(|p| p.host_interface.clone())
        };
        let translation = cluster
            .translate(&resolver)
            .with_context(|| format!("translating the manifests for {}", node.name))?;
        if let Some(w) = translation.warnings.first() {
            bail!(
                "the demo's manifests do not translate cleanly for {}: {w}",
                node.name
            );
        }
        states.push(translation.state);
    }
    Ok(states)
}

fn traffic_table(lab: &Lab, states: &[DesiredState]) -> anyhow::Result<usize> {
    println!(
        "{:<26} {:<22} {:<20} {:<4} {:<10} {:<24} {:<36} ok",
        "client", "frontend", "destination", "", "backend", "source seen by backend", "expected"
    );
    let mut failures = 0;
    for row in rows(lab) {
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
        let (got_backend, got_source) = seen(&outcome);
        let (expected, ok) = judge(lab, &verdict, &outcome, client_ip);
        if !ok {
            failures += 1;
        }
        println!(
            "{:<26} {:<22} {:<20} {:<4} {:<10} {:<24} {:<36} {}",
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

/// The agents' kube-proxy health servers for `local` (`externalTrafficPolicy: Local`): asked
/// from the external client, as a cloud load balancer asks, on every node; the expected status
/// is the model's ([`dataplane::health_check`]: 200 with a local endpoint, else 503).
fn health_rows(lab: &Lab, states: &[DesiredState]) -> anyhow::Result<usize> {
    println!(
        "\nhealthCheckNodePort {HEALTH_NODE_PORT} of default/local (externalTrafficPolicy Local), \
         as a load balancer asks it"
    );
    println!(
        "{:<26} {:<28} {:<6} {:<16} {:<14} ok",
        "client", "node", "status", "localEndpoints", "expected"
    );
    let client = lab.external(0);
    let mut failures = 0;
    for (i, state) in states.iter().enumerate() {
        let node = lab.node(i);
        let expected = dataplane::health_checks(state)
            .into_iter()
            .find(|h| h.node_port == HEALTH_NODE_PORT)
            .with_context(|| format!("default/local has no health check on {}", node.name))?;
        let address = SocketAddr::new(node.addresses[0], HEALTH_NODE_PORT);
        let (code, local) = match agents::http_get(&client.netns, address, "/") {
            Ok((code, body)) => (
                code.to_string(),
                serde_json::from_str::<serde_json::Value>(&body)
                    .ok()
                    .and_then(|v| v.get("localEndpoints").and_then(serde_json::Value::as_u64))
                    .map_or_else(|| "-".to_owned(), |n| n.to_string()),
            ),
            Err(e) => (format!("({})", short_error(&e)), "-".to_owned()),
        };
        let want = expected.http_status();
        let ok = code == want.to_string();
        if !ok {
            failures += 1;
        }
        println!(
            "{:<26} {:<28} {:<6} {:<16} {:<14} {}",
            format!("{} ({})", client.name, client.addresses[0]),
            format!("{} ({address})", node.name),
            code,
            local,
            format!("{want} ({} local)", expected.local_endpoints),
            if ok { "yes" } else { "NO" }
        );
    }
    Ok(failures)
}

fn short_error(e: &anyhow::Error) -> String {
    e.root_cause().to_string()
}

/// Probes that the policy [`POLICY`] allows and denies once it exists, each printed with the
/// reference model's verdict and the policy decision that explains it. Returns the rows that
/// disagree.
fn policy_rows(lab: &Lab, states: &[DesiredState]) -> anyhow::Result<usize> {
    let policies: Vec<String> = states
        .iter()
        .flat_map(|s| s.policies.iter().map(|p| p.name.to_string()))
        .collect::<BTreeSet<_>>()
        .into_iter()
        .collect();
    if policies.is_empty() {
        println!("NetworkPolicy: none yet");
    } else {
        println!("NetworkPolicy: {}", policies.join(", "));
    }
    println!(
        "{:<24} {:<20} {:<4} {:<20} {:<10} {:<54} ok",
        "client", "destination", "", "expected", "seen", "policy verdict"
    );
    let api: IpAddr = API_IP.parse()?;
    let server = lab
        .pod_by_name(API_POD)
        .with_context(|| format!("the lab has {API_POD}"))?;
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
            Decision::ClusterAllowed { policy, rule } => Some(format!(
                "{direction} allowed by cluster policy {policy} rule {rule}"
            )),
            Decision::ClusterDenied { policy, rule } => Some(format!(
                "{direction} denied by cluster policy {policy} rule {rule}"
            )),
            Decision::BaselineAllowed { rule } => {
                Some(format!("{direction} allowed by baseline rule {rule}"))
            }
            Decision::BaselineDenied { rule } => {
                Some(format!("{direction} denied by baseline rule {rule}"))
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

#[cfg(test)]
mod tests {
    use super::*;

    /// The demo's manifests say, through the translation, what its rows expect: every node
    /// sees the three services and the other node's pods as peers, the ETP Local service has
    /// a health check, and the two edits change exactly `web`'s backends and the policies.
    #[test]
    fn the_manifests_translate_to_what_the_rows_expect() {
        if !dataplane_testkit::require_root("the_manifests_translate_to_what_the_rows_expect") {
            return;
        }
        let lab = lab().unwrap();
        let work = tempfile::tempdir().unwrap();
        let dir = work.path().join("manifests");
        std::fs::create_dir(&dir).unwrap();
        for file in manifests::initial(&lab, SystemTime::now()).unwrap() {
            manifests::write(&dir, &file).unwrap();
        }
        let states = translate(&lab, &dir).unwrap();
        let web_backends = |states: &[DesiredState]| -> Vec<Vec<IpAddr>> {
            states
                .iter()
                .map(|s| {
                    let web = s
                        .services
                        .iter()
                        .find(|s| s.name == ObjectName::new("default", "web"))
                        .expect("web is translated");
                    web.backends.iter().map(|b| b.ip).collect()
                })
                .collect()
        };
        for (i, state) in states.iter().enumerate() {
            assert_eq!(state.node.name, format!("node-{i}"));
            assert_eq!(state.services.len(), 3, "{:?}", state.services);
            assert_eq!(state.endpoints.len(), 2, "node-{i}: {:?}", state.endpoints);
            assert!(state.policies.is_empty());
            let health = dataplane::health_checks(state);
            assert_eq!(health.len(), 1, "{health:?}");
            assert_eq!(health[0].local_endpoints, usize::from(i == 0));
        }
        assert!(web_backends(&states).iter().all(|b| b.len() == 3));

        let scaled: Vec<&str> = WEB_PODS
            .iter()
            .copied()
            .filter(|p| *p != SCALED_AWAY)
            .collect();
        manifests::write(
            &dir,
            &manifests::web(&lab, &scaled, SystemTime::now()).unwrap(),
        )
        .unwrap();
        let gone = lab.pod_by_name(SCALED_AWAY).unwrap().addresses[0];
        let after = translate(&lab, &dir).unwrap();
        for backends in web_backends(&after) {
            assert_eq!(backends.len(), 2);
            assert!(!backends.contains(&gone));
        }
        manifests::write(&dir, &manifests::policy().unwrap()).unwrap();
        let after = translate(&lab, &dir).unwrap();
        for state in &after {
            assert_eq!(state.policies.len(), 1);
            assert_eq!(state.policies[0].name, ObjectName::new("default", POLICY));
            assert!(state.cluster_policies.is_empty() && state.host_policies.is_empty());
        }

        tier_rows_expect(&lab, &dir);
    }

    /// Edits 3 and 4: the AdminNetworkPolicy's Deny beats the NetworkPolicy's Allow, and
    /// node-0's uplink drops the blocked source (untracked) and the client on `web`'s
    /// NodePort (pre-DNAT), and serves the client on `local`'s.
    fn tier_rows_expect(lab: &Lab, dir: &Path) {
        // Edits 3 and 4: the AdminNetworkPolicy's Deny beats the NetworkPolicy's Allow, and
        // node-0's uplink drops the blocked source (untracked) and the client on `local`'s
        // NodePort (pre-DNAT), and serves the client on `web`'s.
        manifests::write(dir, &manifests::admin_policy().unwrap()).unwrap();
        manifests::write(dir, &manifests::host_policy(lab).unwrap()).unwrap();
        let after = translate(lab, dir).unwrap();
        for (i, state) in after.iter().enumerate() {
            assert_eq!(
                state.cluster_policies.len(),
                1,
                "{:?}",
                state.cluster_policies
            );
            assert_eq!(state.host_policies.len(), 2, "{:?}", state.host_policies);
            let endpoints: Vec<&str> = state
                .host_endpoints
                .iter()
                .map(|e| e.name.as_str())
                .collect();
            let want: &[&str] = if i == 0 { &[HOST_ENDPOINT] } else { &[] };
            assert_eq!(endpoints, want, "node-{i}");
            assert_eq!(state.nodes.len(), 2, "node-{i}: the Nodes as peers");
        }
        let client = lab.pod_by_name(POLICY_CLIENT).unwrap();
        let server = lab.pod_by_name(API_POD).unwrap();
        let verdict = policy_verdict(
            &after[client.node],
            client.addresses[0],
            server.addresses[0],
            Protocol::Tcp,
            SERVER_PORT,
        );
        assert_eq!(
            verdict.ingress,
            Decision::ClusterDenied {
                policy: ADMIN_POLICY.to_owned(),
                rule: manifests::ADMIN_RULE.to_owned()
            }
        );
        let direct = Packet {
            protocol: Protocol::Tcp,
            source: SocketAddr::new(client.addresses[0], 40000),
            destination: SocketAddr::new(server.addresses[0], SERVER_PORT),
        };
        let entry = Entry::FromPod(ObjectName::new("default", client.name.clone()));
        assert_eq!(
            evaluate(&after[client.node], &direct, &entry),
            Verdict::Drop
        );
        let expected: Vec<bool> = host_rows_spec(lab)
            .unwrap()
            .iter()
            .map(|row| {
                let packet = Packet {
                    protocol: Protocol::Tcp,
                    source: SocketAddr::new(row.source, 40000),
                    destination: row.destination,
                };
                matches!(
                    evaluate(&after[0], &packet, &Entry::FromUplink),
                    Verdict::Forward { .. }
                )
            })
            .collect();
        assert_eq!(
            expected,
            [false, true, false],
            "blocked src, local's NodePort, web's NodePort (pre-DNAT guarded)"
        );
    }
}
