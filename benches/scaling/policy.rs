//! NetworkPolicy (issue 18): what 1k policies over 10k peer pods cost a backend.
//!
//! ```text
//!   per packet   PacketLab (one node, pods A and B): SYNs from A to a ClusterIP backed by B,
//!                with 0 / 100 / 10k policies selecting both (benches/common/packet.rs)
//!   end to end   the end-to-end lab (see the crate docs), on the eBPF (TC), nftables and
//!                iptables nodes:
//!                  client pod-i-0 ──▶ ClusterIP ──▶ pod-i-1..10   (selected by 1k policies,
//!                                                                 the client admitted)
//!                  pod-0-0 (node 0, a peer pod of node i) ──▶ pod-i-1 by pod IP
//! ```
//!
//! - CRR: the target service's CRR with the 1k policies against the same state without
//!   policies, in alternating rounds (each round applies both states in turn), per backend.
//!   Before the rounds, the path is checked: with the policies the admitted client is
//!   answered and the remote pod (labelled `role=denied`) is not.
//! - From empty: a fresh backend holds the node, its endpoints and the target service (node
//!   setup, timed on its own), then gets the policies, peer pods and namespaces in one apply.
//! - Label change: on that backend, the remote pod is relabelled into the group that policy 0
//!   admits through `apply_changes` (a one-pod `ChangeSet`); the clock runs until a new
//!   connection from it to pod-i-1 is answered. It is then relabelled back and must be
//!   denied again before the next change.
//!
//! A backend that refuses the states (or fails) gets its error in its rows; the others go on.

use std::net::{IpAddr, SocketAddr, SocketAddrV4};
use std::time::{Duration, Instant};

use dataplane::{BoxDataplane, Change, ChangeSet, PeerPod};
use dataplane_testkit::Lab;

use crate::clock::{log, ms, timed, us};
use crate::load;
use crate::machine::Machine;
use crate::nodes::{client, open_dataplane, BenchLab, Node};
use crate::packet;
use crate::results::{median, PolicyControlRow, PolicyCrrRow, PolicyPacketRow, PolicyResults};
use crate::settings::Settings;
use crate::states::{vip_last, PolicyStates, PEERS, POLICIES};

/// The backends measured (the socket LB node shares the eBPF one's policy code).
const MEASURED: [&str; 3] = ["ebpf", "nftables", "iptables"];
/// Numbers of policies of the per-packet measurement.
pub const PACKET_POLICIES: [usize; 3] = [0, 100, 10_000];
/// Pause, then unmeasured load, after each apply of the CRR rounds.
const SETTLE: Duration = Duration::from_millis(300);
/// How long a probe that must be denied waits for an answer.
const DENIED_WAIT: Duration = Duration::from_millis(300);
/// How long one probe waits while the clock of a label change runs: a probe whose SYN met
/// the old rules fails after this and the next one goes.
const REACH_ATTEMPT: Duration = Duration::from_millis(100);

/// The pod of another node, probing a target pod by its address.
struct RemoteProbe {
    prober: load::Prober,
    /// The first backend pod of the measured node, on the servers' port.
    dst: SocketAddrV4,
    /// Its name, as its server answers.
    want: String,
}

impl RemoteProbe {
    /// Errors when a probe is answered: the remote pod must be denied (`what`: when).
    fn expect_denied(&mut self, what: &str) -> Result<(), String> {
        match self.prober.probe_within(self.dst, DENIED_WAIT) {
            Ok(name) => Err(format!(
                "{what}: a pod no policy admits was answered by {name} on {}: the policies \
                 are not enforced",
                self.dst
            )),
            Err(_) => Ok(()),
        }
    }
}

/// Every NetworkPolicy measurement; failures are recorded in the results.
pub fn run(settings: &Settings, machine: Machine, start: Instant) -> PolicyResults {
    let t = Instant::now();
    let mut r = PolicyResults {
        machine: Some(machine),
        settings: Some(settings.clone()),
        policies: POLICIES,
        peers: PEERS,
        ..PolicyResults::default()
    };
    log(
        start,
        "policy: per-packet cost of a new connection (BPF_PROG_TEST_RUN)",
    );
    if let Err(e) = packet_costs(settings, &mut r.packet, start) {
        eprintln!("policy per-packet section failed: {e}");
        r.packet_error = Some(e);
    }
    if let Err(e) = end_to_end(settings, &mut r, start) {
        eprintln!("policy end-to-end section failed: {e}");
        r.error = Some(e);
    }
    r.secs = t.elapsed().as_secs_f64();
    r
}

/// `dp_from_pod` and `dp_to_pod` per new connection at each of [`PACKET_POLICIES`], in turns
/// (five rounds of `settings.packets` SYNs, one in quick runs, alternating order) so that
/// every number sees the machine alike.
fn packet_costs(
    settings: &Settings,
    rows: &mut Vec<PolicyPacketRow>,
    start: Instant,
) -> Result<(), String> {
    let mut lab = packet::PacketLab::new()?;
    let rounds = if settings.quick { 1 } else { 5 };
    let chunk = settings.packets.max(1);
    let mut from_pod = [packet::Sample::default(); PACKET_POLICIES.len()];
    let mut to_pod = [packet::Sample::default(); PACKET_POLICIES.len()];
    let mut program_ms: [Vec<f64>; PACKET_POLICIES.len()] = Default::default();
    for round in 0..rounds {
        let mut order: Vec<usize> = (0..PACKET_POLICIES.len()).collect();
        if round % 2 == 1 {
            order.reverse();
        }
        for i in order {
            let n = PACKET_POLICIES[i];
            let took = lab.program_policies(n)?;
            program_ms[i].push(ms(took));
            // The lookups must be on the measured paths.
            let (egress, ingress) = lab.policy_denied()?;
            if n > 0 && !(egress && ingress) {
                return Err(format!(
                    "with {n} policies a SYN no policy allows passed (egress dropped: {egress}, \
                     ingress dropped: {ingress}): the measured path has no policy lookup"
                ));
            }
            // Warm-up: fault in the code paths and the new state's maps.
            let (from, to) = lab
                .policy_new_flows(1_000)
                .and_then(|_| lab.policy_new_flows(chunk))
                .map_err(|e| format!("{n} policies, round {round}: {e}"))?;
            from_pod[i].add(from);
            to_pod[i].add(to);
        }
    }
    for (i, n) in PACKET_POLICIES.into_iter().enumerate() {
        let row = PolicyPacketRow {
            policies: n,
            program_ms: median(&program_ms[i]),
            new_flow_ns: from_pod[i].ns_per_packet(),
            to_pod_new_flow_ns: Some(to_pod[i].ns_per_packet()),
        };
        log(
            start,
            &format!(
                "  {n} policies: new connection dp_from_pod {:.0} ns, dp_to_pod {:.0} ns \
                 (programmed in {:.0} ms)",
                row.new_flow_ns,
                to_pod[i].ns_per_packet(),
                row.program_ms
            ),
        );
        rows.push(row);
    }
    Ok(())
}

/// The end-to-end lab's eBPF (TC), nftables and iptables nodes: CRR, programming from empty
/// and a label change, one backend at a time.
fn end_to_end(settings: &Settings, r: &mut PolicyResults, start: Instant) -> Result<(), String> {
    // One service per node (the target): the eBPF maps keep their default sizes.
    let mut bench = BenchLab::set_up(start, &|_| true, 1)?;
    let remote_pod = bench
        .lab
        .pods_on(0)
        .next()
        .ok_or("the lab's node 0 has no pod")?;
    let remote_name = remote_pod.endpoint().name;
    let Some(IpAddr::V4(remote_ip)) = remote_pod.address(dataplane_testkit::Family::V4) else {
        return Err("the remote pod has no IPv4 address".to_owned());
    };
    let remote_node = bench.lab.node(0).name.clone();
    for node in bench.nodes.iter_mut().skip(1) {
        if !MEASURED.contains(&node.kind) {
            if let Some(mut dp) = node.dp.take() {
                let _ = dp.reset();
            }
            continue;
        }
        log(
            start,
            &format!(
                "policy: {} with {POLICIES} policies over {PEERS} peers",
                node.kind
            ),
        );
        let states = PolicyStates::new(
            &bench.lab.desired_state(node.index),
            node.index,
            &node.pods,
            remote_name.clone(),
            remote_ip,
            &remote_node,
        );
        let mut crr_row = PolicyCrrRow {
            backend: node.kind.to_owned(),
            ..PolicyCrrRow::default()
        };
        let mut control_row = PolicyControlRow {
            backend: node.kind.to_owned(),
            ..PolicyControlRow::default()
        };
        if let Some(e) = &node.error {
            crr_row.error = Some(e.clone());
            control_row.error = Some(e.clone());
        } else {
            let mut remote = RemoteProbe {
                prober: load::Prober::new(client(&bench.lab, 0), load::PROBE_BATCH)?,
                dst: SocketAddrV4::new(node.pods[0], load::PORT),
                want: node.names.first().cloned().ok_or("no backend pod")?,
            };
            if let Err(e) = crr(
                settings,
                &bench.lab,
                node,
                &states,
                &mut remote,
                &mut crr_row,
                start,
            ) {
                eprintln!("  {} CRR: {e}", node.kind);
                crr_row.error = Some(e);
            }
            if let Some(mut dp) = node.dp.take() {
                let _ = dp.reset();
            }
            let r = control(
                settings,
                &bench.lab,
                node,
                &states,
                &mut remote,
                &mut control_row,
                start,
            );
            if let Err(e) = r {
                eprintln!("  {} control plane: {e}", node.kind);
                control_row.error = Some(e);
            }
        }
        r.crr.push(crr_row);
        r.control.push(control_row);
    }
    Ok(())
}

/// CRR to the target service with and without the policies, alternating.
fn crr(
    settings: &Settings,
    lab: &Lab,
    node: &mut Node,
    states: &PolicyStates,
    remote: &mut RemoteProbe,
    row: &mut PolicyCrrRow,
    start: Instant,
) -> Result<(), String> {
    let dp = node.dp.as_mut().ok_or("no dataplane")?;
    let client = client(lab, node.index);
    let targets = [SocketAddr::V4(SocketAddrV4::new(vip_last(node.index), 80))];
    dp.apply(&states.with_policies)
        .map_err(|e| format!("apply {POLICIES} policies: {e}"))?;
    let check = load::crr(client, &targets, Duration::from_millis(200), 1)?;
    if check.ok == 0 {
        return Err(format!(
            "with the policies the admitted client got no answer ({})",
            check.first_error.unwrap_or_default()
        ));
    }
    remote.expect_denied("with the policies")?;
    // Unmeasured load through both states first: the first measured round must not be the
    // only one with empty connection tracking.
    for state in [&states.base, &states.with_policies] {
        dp.apply(state).map_err(|e| format!("apply: {e}"))?;
        load::crr(client, &targets, Duration::from_secs(1), settings.threads)?;
    }
    let crr_time = Duration::from_secs_f64(settings.crr_secs);
    for round in 0..settings.rounds {
        let order = if round % 2 == 0 {
            [false, true]
        } else {
            [true, false]
        };
        let mut rate = [f64::NAN; 2];
        for with in order {
            let state = if with {
                &states.with_policies
            } else {
                &states.base
            };
            dp.apply(state).map_err(|e| format!("apply: {e}"))?;
            // The apply's deferred kernel work (freed rules, sets and map entries) must not
            // land in the measurement, nor the first connections' cold caches.
            std::thread::sleep(SETTLE);
            load::crr(client, &targets, SETTLE, settings.threads)?;
            let c = load::crr(client, &targets, crr_time, settings.threads)?;
            row.failed_connections += c.failed;
            if c.ok == 0 {
                return Err(format!(
                    "no connection answered {} policies ({})",
                    if with { "with" } else { "without" },
                    c.first_error.unwrap_or_default()
                ));
            }
            rate[usize::from(with)] = c.rate();
        }
        row.crr_none.push(rate[0]);
        row.crr_policy.push(rate[1]);
        row.ratio.push(rate[1] / rate[0]);
    }
    log(
        start,
        &format!(
            "  {} CRR: {:.0} conn/s without policies, {:.0} with {POLICIES} (x{:.3}, median \
             of {} rounds)",
            node.kind,
            median(&row.crr_none),
            median(&row.crr_policy),
            median(&row.ratio),
            row.ratio.len()
        ),
    );
    Ok(())
}

/// Programming the policies from empty on fresh backends, then label changes on the last.
fn control(
    settings: &Settings,
    lab: &Lab,
    node: &Node,
    states: &PolicyStates,
    remote: &mut RemoteProbe,
    row: &mut PolicyControlRow,
    start: Instant,
) -> Result<(), String> {
    let netns = lab.node(node.index).netns.path();
    let repeats = if settings.quick { 1 } else { 3 };
    let mut dp: Option<BoxDataplane> = None;
    for k in 0..repeats {
        if let Some(mut old) = dp.take() {
            old.reset().map_err(|e| format!("reset: {e}"))?;
        }
        let mut fresh = open_dataplane(node.kind, netns, &format!("pol{k}"), None, 1)?;
        let (applied, setup) = timed(|| fresh.apply(&states.base));
        applied.map_err(|e| format!("apply the node without policies: {e}"))?;
        row.setup_ms.push(ms(setup));
        let (applied, took) = timed(|| fresh.apply(&states.with_policies));
        applied.map_err(|e| format!("apply {POLICIES} policies from empty: {e}"))?;
        row.apply_from_empty_ms.push(ms(took));
        log(
            start,
            &format!(
                "  {} node setup {setup:?}, then {POLICIES} policies over {PEERS} peers: \
                 {took:?}",
                node.kind
            ),
        );
        dp = Some(fresh);
        // A slow backend gets fewer repetitions: the bench has a time budget.
        if took > Duration::from_secs(5) {
            break;
        }
    }
    let mut dp = dp.ok_or("no dataplane")?;
    let r = label_changes(settings, node, &mut dp, states, remote, row, start);
    dp.reset().map_err(|e| format!("reset: {e}"))?;
    r
}

/// A one-pod change from `before` to `after`.
fn pod_change(before: &PeerPod, after: &PeerPod) -> ChangeSet {
    let mut changes = ChangeSet::default();
    changes.pods.insert(
        after.name.clone(),
        Change {
            previous: Some(before.clone()),
            current: Some(after.clone()),
        },
    );
    changes
}

/// Relabels the remote pod into the admitted group, `settings.changes` times (or for 30 s):
/// the time `apply_changes` takes and the time until its probe is answered; relabels it back
/// (and checks it is denied) between changes.
fn label_changes(
    settings: &Settings,
    node: &Node,
    dp: &mut BoxDataplane,
    states: &PolicyStates,
    remote: &mut RemoteProbe,
    row: &mut PolicyControlRow,
    start: Instant,
) -> Result<(), String> {
    let denied = &states.remote;
    let admitted = states.remote_admitted();
    remote.expect_denied("before the first label change")?;
    let budget = Instant::now();
    for _ in 0..settings.changes {
        remote.prober.refill()?;
        let t = Instant::now();
        dp.apply_changes(&pod_change(denied, &admitted))
            .map_err(|e| format!("apply one label change: {e}"))?;
        let applied = t.elapsed();
        load::wait_for(
            &mut remote.prober,
            remote.dst,
            &remote.want,
            Duration::from_secs(5),
            REACH_ATTEMPT,
        )
        .map_err(|e| format!("after the label change: {e}"))?;
        let reached = t.elapsed();
        row.relabel_apply_us.push(us(applied));
        row.relabel_reach_us.push(us(reached));
        dp.apply_changes(&pod_change(&admitted, denied))
            .map_err(|e| format!("apply the label change back: {e}"))?;
        remote.expect_denied("after relabelling the pod back")?;
        if budget.elapsed() > Duration::from_secs(30) {
            break;
        }
    }
    log(
        start,
        &format!(
            "  {} label change: apply {:.0} µs, enforced {:.0} µs (medians of {})",
            node.kind,
            median(&row.relabel_apply_us),
            median(&row.relabel_reach_us),
            row.relabel_reach_us.len()
        ),
    );
    Ok(())
}
