//! What new-connection events cost: TCP connect/request/response/close (CRR) through a
//! ClusterIP, with `EventOptions::new_connections` off and on (issue 20's goal: on ≥ 0.97 of
//! off), in a one-node testkit lab. A reader drains the events while they are on, as an agent
//! streaming them would.
//!
//! ```text
//!   node-0: pod-0-0 (client, 2 threads) --> ClusterIP 10.96.0.10:80 --> pod-0-1, pod-0-2
//! ```
//!
//! Rounds alternate the order of the two settings; each setting gets 0.3 s of unmeasured load
//! after the switch, then `MEASURE` of CRR; the result is the median of the rounds' ratios,
//! with their spread; conntrack is collected (`maintain`) before each, outside the measured
//! time, and the bench runs at nice -20 (the machine is shared). The event rate limits are `EventLimits::default()` (new connections:
//! no limit, so every connection is one record, read and decoded by the reader).
//! Run as root: `cargo bench -p dataplane-ebpf --bench events_crr` (prints a Markdown row).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

mod common;
use common::crr;

use dataplane_core::{
    Dataplane, EventOptions, EventSource, FlowEvent, ObjectName, Protocol, Service, ServicePort,
};
use dataplane_ebpf::{EbpfConfig, EbpfDataplane, EventLimit};
use dataplane_testkit::{Lab, LabSpec, SERVER_PORT};

const ROUNDS: usize = 25;
const WARM: Duration = Duration::from_millis(200);
const MEASURE: Duration = Duration::from_millis(600);

/// The knobs, from the environment: `EVENTS_CRR_ROUNDS` (default `ROUNDS`),
/// `EVENTS_CRR_NEW_CONN_LIMIT=RATE/BURST` (the new-connection events' limit; default
/// `EventLimits::default()`'s, none) and `EVENTS_CRR_READER_PAUSE_MS` (the reader sleeps this
/// long after each read that found events, batching its wake-ups; default 0: it reads as
/// soon as the ring wakes it, as `dataplane::EventStream`'s thread does).
struct Knobs {
    rounds: usize,
    new_connections: Option<EventLimit>,
    reader_pause: Duration,
}

impl Knobs {
    fn from_env() -> Self {
        let var = |name: &str| std::env::var(name).ok();
        Self {
            rounds: var("EVENTS_CRR_ROUNDS")
                .and_then(|r| r.parse().ok())
                .unwrap_or(ROUNDS),
            new_connections: var("EVENTS_CRR_NEW_CONN_LIMIT").map(|l| {
                let (rate, burst) = l
                    .split_once('/')
                    .expect("EVENTS_CRR_NEW_CONN_LIMIT=RATE/BURST");
                EventLimit::per_second(
                    rate.parse().expect("a rate"),
                    burst.parse().expect("a burst"),
                )
            }),
            reader_pause: Duration::from_millis(
                var("EVENTS_CRR_READER_PAUSE_MS")
                    .and_then(|p| p.parse().ok())
                    .unwrap_or(0),
            ),
        }
    }
}

#[allow(clippy::too_many_lines)] // one scenario, in order
fn main() {
    if !dataplane_testkit::require_root("events_crr") {
        return;
    }
    common::renice();
    let lab = Lab::new(LabSpec {
        nodes: 1,
        pods_per_node: 3,
        external_clients: 0,
        ipv6: false,
    })
    .expect("lab");
    let pin_dir = PathBuf::from(format!("/sys/fs/bpf/dpe-evcrr-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&pin_dir);
    let knobs = Knobs::from_env();
    let mut config = EbpfConfig::new(&pin_dir);
    if let Some(limit) = knobs.new_connections {
        config.events.new_connections = limit;
    }
    config.netns = Some(lab.node(0).netns.path().to_owned());
    let mut dp = EbpfDataplane::new(config).expect("load");
    let mut state = lab.desired_state(0);
    let mut web = Service::new(ObjectName::new("default", "web"));
    web.cluster_ips = vec!["10.96.0.10".parse().unwrap()];
    web.ports = vec![ServicePort::new(Protocol::Tcp, 80, SERVER_PORT)];
    web.backends = common::node0_backends(&lab, &["pod-0-1", "pod-0-2"]);
    state.services = vec![web];
    dp.apply(&state).expect("apply");
    let dst: SocketAddr = "10.96.0.10:80".parse().unwrap();
    let client = &lab.pod_by_name("pod-0-0").expect("client pod").netns;

    // The reader: drains whatever the programs write, the whole time.
    let mut events = dp.events(&EventOptions::default()).expect("events");
    let stop = AtomicBool::new(false);
    let (ratios, read) = std::thread::scope(|s| {
        let reader = s.spawn(|| {
            let mut out: Vec<FlowEvent> = Vec::new();
            let mut total = 0usize;
            while !stop.load(Ordering::Relaxed) {
                out.clear();
                match events.read(&mut out, 4096) {
                    Ok(0) => {
                        let _ = events.wait(Duration::from_millis(20));
                    }
                    Ok(n) => {
                        total += n;
                        if !knobs.reader_pause.is_zero() {
                            std::thread::sleep(knobs.reader_pause);
                        }
                    }
                    Err(e) => panic!("reading events: {e}"),
                }
            }
            (total, events.lost())
        });
        let mut ratios = Vec::new();
        let mut failures = 0;
        for round in 0..knobs.rounds {
            let mut rate = [0.0; 2];
            let order = if round % 2 == 0 {
                [false, true]
            } else {
                [true, false]
            };
            for on in order {
                let options = EventOptions {
                    new_connections: on,
                    policy_verdicts: false,
                };
                // Conntrack GC, as an agent's periodic maintain() does, outside the measured
                // time: the closed connections' entries go.
                dp.maintain(dataplane_ebpf::monotonic_now())
                    .expect("maintain");
                // A second reader holds the setting while it lives; the draining one reads.
                let ask = dp.events(&options).expect("set the event flags");
                crr(client, dst, WARM);
                let (r, failed) = crr(client, dst, MEASURE);
                drop(ask);
                failures += failed;
                rate[usize::from(on)] = r;
            }
            println!(
                "round {round}: off {:.0} conn/s, on {:.0} conn/s, on/off {:.3}",
                rate[0],
                rate[1],
                rate[1] / rate[0]
            );
            ratios.push(rate[1] / rate[0]);
        }
        stop.store(true, Ordering::Relaxed);
        let read = reader.join().expect("reader");
        assert_eq!(failures, 0, "failed connections");
        (ratios, read)
    });
    let mut sorted = ratios.clone();
    sorted.sort_by(f64::total_cmp);
    let median = sorted[sorted.len() / 2];
    let limits = dp.config().events;
    println!(
        "events read: {}, lost: {}; limits: {:?}; reader pause {:?}",
        read.0, read.1, limits, knobs.reader_pause
    );
    println!(
        "| backend | CRR new-connection events on / off (median of {}) | rounds min-max | goal |",
        knobs.rounds
    );
    println!("|---|---:|---|---|");
    println!(
        "| eBPF (TC), 1 node, ClusterIP -> 2 local pods | {median:.3} | {:.3}-{:.3} | ≥ 0.97 {} |",
        sorted[0],
        sorted[sorted.len() - 1],
        if median >= 0.97 { "met" } else { "**missed**" }
    );
    dp.reset().expect("reset");
}
