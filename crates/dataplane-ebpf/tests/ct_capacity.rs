//! Conntrack filled past its capacity (issue 21, item 4), with real traffic: `dp_ct` is an LRU
//! hash sized by `Capacities::conntrack` (16 entries here: 8 connections).
//!
//! ```text
//!   pod-0-0 ══ 12 long connections ═▶ 10.96.0.10:80 ─┬─▶ pod-0-1
//!   pod-0-0 ── 50 new connections ──▶ 10.96.0.10:80 ─┘   pod-0-2   (random choice)
//! ```
//!
//! - New connections are never refused: the LRU evicts the least recently used entries (the
//!   idle long connections'), and `stats()` shows the table at most full (`ct_entries` <=
//!   `ct_capacity`).
//! - A long connection whose entries went is counted at its next packet (`ct_lost`) and gets a
//!   backend afresh: it continues on its own backend or fails (the other backend answers RST);
//!   it is never answered by another backend. One whose reverse entry alone went loses its
//!   forward entry at the next `maintain()` (`reverse_lost`), so that no connection fails
//!   uncounted.
//! - Under a high rate of new connections with the table full (a CRR load: connect, request,
//!   answer, reset), no connection stalls: the entries a SYN has just created are not the
//!   ones the LRU evicts before its SYN-ACK comes back (`crr_through_a_full_conntrack...`).
//! - A client port reused towards a second frontend with the same backend takes over the
//!   first frontend's stale reverse entry (its connection reset) instead of clashing with it
//!   (`client_ports_reused_across_frontends...`).

mod common;

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::time::Duration;

use dataplane_core::{Dataplane, Protocol};
use dataplane_ebpf::{monotonic_now, EbpfDataplane};
use dataplane_testkit::{
    measure, probe, probe_from, require_root, Lab, LabSpec, ProbeOutcome, TcpSession,
};

const VIP: &str = "10.96.0.10";
/// `dp_ct`'s size: 8 connections.
const CONNTRACK: u32 = 16;
/// More long connections than fit.
const LONG: usize = 12;
const FILL: usize = 50;
/// Bounds each wait (a probe, a request on a long connection); measures nothing.
const TIMEOUT: Duration = Duration::from_secs(5);

#[test]
fn a_full_conntrack_evicts_counts_and_never_mistranslates() {
    if !require_root("a_full_conntrack_evicts_counts_and_never_mistranslates") {
        return;
    }
    let lab = Lab::new(LabSpec {
        nodes: 1,
        pods_per_node: 3,
        external_clients: 0,
        ipv6: false,
    })
    .expect("lab");
    let (_pins, mut dp) = common::lab_node_dataplane(&lab, "dpe-ctcap", |caps| {
        caps.conntrack = CONNTRACK;
    });
    let mut state = lab.desired_state(0);
    state.services = vec![common::lab_cluster_ip(&lab, "web", VIP, &[1, 2])];
    dp.apply(&state).expect("apply");
    let vip = SocketAddr::new(VIP.parse().unwrap(), 80);
    let client = &lab.pod(0).netns;
    let stat = |dp: &EbpfDataplane, name: &str| -> u64 {
        *dp.stats()
            .expect("stats")
            .other
            .get(name)
            .unwrap_or_else(|| panic!("no counter {name}"))
    };

    let mut long: Vec<(TcpSession, String)> = (0..LONG)
        .map(|i| {
            let mut s = TcpSession::open(client, vip).expect("long connection");
            s.set_timeout(TIMEOUT);
            let (backend, _) = s.request().unwrap_or_else(|e| panic!("long {i}: {e}"));
            (s, backend)
        })
        .collect();

    // Fill: every new connection is answered, the table never holds more than its size.
    for i in 0..FILL {
        let o = probe(client, vip, Protocol::Tcp, TIMEOUT).expect("probe runs");
        assert!(
            matches!(o, ProbeOutcome::Answered { .. }),
            "new connection {i} with conntrack full: {o:?}"
        );
    }
    let counters = dp.stats().expect("stats").other;
    assert_eq!(counters["ct_capacity"], u64::from(CONNTRACK));
    assert!(
        counters["ct_entries"] <= u64::from(CONNTRACK),
        "{counters:?}"
    );
    assert!(
        counters["ct_created"] >= (LONG + FILL) as u64,
        "{counters:?}"
    );

    // A maintenance pass removes the forward entries whose reverse entry the LRU evicted
    // (their replies would pass untranslated): counted in `reverse_lost`. After it a
    // connection is tracked with both entries or not at all, and the table holds at most
    // CONNTRACK / 2 connections: at least LONG - CONNTRACK / 2 long ones lost theirs.
    let gc = dp.maintain(monotonic_now()).expect("maintain");
    let reverse_lost = gc.other["reverse_lost"];
    let tracked: BTreeSet<SocketAddr> = dp
        .flows()
        .expect("flows")
        .into_iter()
        .map(|f| f.client)
        .collect();
    let untracked = long
        .iter()
        .filter(|(s, _)| !tracked.contains(&s.local_addr()))
        .count();
    assert!(
        untracked >= LONG - CONNTRACK as usize / 2,
        "{untracked} long connections without entries"
    );

    // Each continues on its backend or fails (the other backend's RST), never answered by
    // the other; each without entries is counted at its next packet; none fails uncounted.
    let lost_before = stat(&dp, "ct_lost");
    let mut kept = 0;
    let mut failed = 0;
    for (i, (s, backend)) in long.iter_mut().enumerate() {
        match s.request() {
            Ok((now, _)) => {
                assert_eq!(
                    &now, backend,
                    "long connection {i} moved to another backend"
                );
                kept += 1;
            }
            Err(e) => {
                eprintln!("long connection {i} lost: {e}");
                failed += 1;
            }
        }
    }
    let lost = stat(&dp, "ct_lost") - lost_before;
    eprintln!(
        "{kept} of {LONG} long connections kept their backend ({untracked} without entries); \
         ct_lost {lost}, reverse_lost {reverse_lost}"
    );
    assert!(
        lost >= untracked as u64,
        "{untracked} connections without entries, {lost} counted in ct_lost"
    );
    assert!(
        failed <= lost,
        "{failed} connections failed, {lost} counted in ct_lost"
    );
    dp.reset().expect("reset");
}

/// `dp_ct`'s size for the CRR test: 512 connections.
const CRR_CONNTRACK: u32 = 1024;
/// Client threads (the entries are created on both CPUs at once, as under the scaling bench's
/// CRR load) and connections per thread: ten times what the table holds.
const CRR_THREADS: usize = 4;
const CRR_PER_THREAD: usize = 5000;
/// Bounds each connection (a stalled one waits it out); measures nothing.
const CRR_TIMEOUT: Duration = Duration::from_millis(500);

/// With a full `dp_ct` under CRR, connections were lost, counted nowhere (found while looking
/// for the scaling bench's failed connections, which had another cause: the test
/// `client_ports_reused_across_frontends_take_over_stale_entries`). Each failed connection's
/// SYN was translated and its SYN-ACK was not (`translated` short by 4 and
/// `reverse_translated` by 3 per failure): the reverse entry the SYN had just written was
/// evicted first, as a fresh LRU node without its
/// reference bit is, and each retransmitted SYN found the forward entry alone. Before the fix
/// (`ct_mark_used`) 50-113 of these 20 000 connections timed out; now every one is answered.
#[test]
fn crr_through_a_full_conntrack_loses_no_connection() {
    if !require_root("crr_through_a_full_conntrack_loses_no_connection") {
        return;
    }
    let lab = Lab::new(LabSpec {
        nodes: 1,
        pods_per_node: 3,
        external_clients: 0,
        ipv6: false,
    })
    .expect("lab");
    let (_pins, mut dp) = common::lab_node_dataplane(&lab, "dpe-ctcrr", |caps| {
        caps.conntrack = CRR_CONNTRACK;
    });
    let mut state = lab.desired_state(0);
    state.services = vec![common::lab_cluster_ip(&lab, "web", VIP, &[1, 2])];
    dp.apply(&state).expect("apply");
    let vip = SocketAddr::new(VIP.parse().unwrap(), 80);
    let client = &lab.pod(0).netns;

    let runs: Vec<_> = std::thread::scope(|s| {
        let threads: Vec<_> = (0..CRR_THREADS)
            .map(|_| {
                s.spawn(|| {
                    measure(client, vip, Protocol::Tcp, CRR_PER_THREAD, CRR_TIMEOUT)
                        .expect("CRR runs")
                })
            })
            .collect();
        threads
            .into_iter()
            .map(|t| t.join().expect("client thread"))
            .collect()
    });
    let answered: usize = runs.iter().map(|m| m.latencies.len()).sum();
    let failures: Vec<_> = runs
        .iter()
        .filter(|m| !m.failures.is_empty())
        .map(|m| &m.failures)
        .collect();
    let counters = dp.stats().expect("stats");
    eprintln!(
        "{answered} of {} connections answered; {:?}; drops {:?}",
        CRR_THREADS * CRR_PER_THREAD,
        counters.other,
        counters.drops
    );
    dp.reset().expect("reset");
    assert!(
        counters.other["ct_created"] > u64::from(CRR_CONNTRACK),
        "the table never filled: {:?}",
        counters.other
    );
    assert!(failures.is_empty(), "connections failed: {failures:?}");
    assert_eq!(answered, CRR_THREADS * CRR_PER_THREAD);
}

/// The second ClusterIP of the port-reuse test, with the same backend as [`VIP`].
const VIP2: &str = "10.96.0.11";
/// The SNAT ports (`snat.h`): the client uses each on VIP first.
const SNAT_PORTS: std::ops::RangeInclusive<u16> = 32_768..=60_999;
/// Connections to VIP2, from the first ports of that range.
const REUSED: u16 = 40;

/// The scaling bench's eBPF node dropped SYNs (`snat_exhausted`, `DROP_NO_SNAT`) once its
/// client had used its whole port range on one ClusterIP and then connected to another with
/// the same backends: each new connection's reverse key (backend -> client:port) was held by
/// a closed connection's stale entry of the first ClusterIP, counted as a clash, and the
/// random SNAT ports tried instead were all held the same way; the client waited a second
/// for its SYN's retransmission (a failed connection under the bench's 1 s timeout, and the
/// CRR collapse). Here the client connects to VIP from every SNAT port, then to VIP2 from
/// some of them: every one must be answered, nothing dropped.
#[test]
fn client_ports_reused_across_frontends_take_over_stale_entries() {
    if !require_root("client_ports_reused_across_frontends_take_over_stale_entries") {
        return;
    }
    let lab = Lab::new(LabSpec {
        nodes: 1,
        pods_per_node: 2,
        external_clients: 0,
        ipv6: false,
    })
    .expect("lab");
    let (_pins, mut dp) = common::lab_node_dataplane(&lab, "dpe-ctport", |caps| {
        caps.conntrack = 1 << 17;
    });
    let mut state = lab.desired_state(0);
    state.services = vec![
        common::lab_cluster_ip(&lab, "web", VIP, &[1]),
        common::lab_cluster_ip(&lab, "web2", VIP2, &[1]),
    ];
    dp.apply(&state).expect("apply");
    let client = &lab.pod(0).netns;
    let from = |port: u16| Some(SocketAddr::new([0, 0, 0, 0].into(), port));

    let first = SocketAddr::new(VIP.parse().unwrap(), 80);
    for port in SNAT_PORTS {
        let o = probe_from(client, from(port), first, Protocol::Tcp, TIMEOUT).expect("probe runs");
        assert!(
            matches!(o, ProbeOutcome::Answered { .. }),
            "{VIP} from port {port}: {o:?}"
        );
    }
    let second = SocketAddr::new(VIP2.parse().unwrap(), 80);
    let failed: Vec<(u16, ProbeOutcome)> = SNAT_PORTS
        .take(usize::from(REUSED))
        .filter_map(|port| {
            let o = probe_from(client, from(port), second, Protocol::Tcp, CRR_TIMEOUT)
                .expect("probe runs");
            (!matches!(o, ProbeOutcome::Answered { .. })).then_some((port, o))
        })
        .collect();
    let counters = dp.stats().expect("stats");
    eprintln!(
        "{VIP2}: {} of {REUSED} failed; {:?}",
        failed.len(),
        counters.other
    );
    dp.reset().expect("reset");
    assert!(failed.is_empty(), "{VIP2}: {failed:?}");
    assert_eq!(counters.other["snat_exhausted"], 0, "{:?}", counters.other);
    assert_eq!(counters.other["dropped"], 0, "{:?}", counters.other);
}
