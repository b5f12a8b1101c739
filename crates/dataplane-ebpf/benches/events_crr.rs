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
//! after the switch, then `MEASURE` of CRR; the result is the median of the rounds' ratios.
//! Run as root: `cargo bench -p dataplane-ebpf --bench events_crr` (prints a Markdown row).

use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use dataplane_core::{
    Backend, Dataplane, EventOptions, EventSource, FlowEvent, ObjectName, Protocol, Service,
    ServicePort,
};
use dataplane_ebpf::{EbpfConfig, EbpfDataplane};
use dataplane_testkit::{Family, Lab, LabSpec, SERVER_PORT};

const ROUNDS: usize = 7;
const WARM: Duration = Duration::from_millis(300);
const MEASURE: Duration = Duration::from_secs(1);
const THREADS: usize = 2;
const IO_TIMEOUT: Duration = Duration::from_secs(2);

fn one_crr(dst: SocketAddr) -> io::Result<()> {
    let mut s = TcpStream::connect_timeout(&dst, IO_TIMEOUT)?;
    s.set_nodelay(true)?;
    s.set_read_timeout(Some(IO_TIMEOUT))?;
    s.write_all(b"r\n")?;
    let mut buf = [0u8; 128];
    let mut n = 0;
    while !buf[..n].ends_with(b"\n") {
        let m = s.read(&mut buf[n..])?;
        if m == 0 || n + m == buf.len() {
            return Err(io::Error::other("no answer line"));
        }
        n += m;
    }
    // RST on close: no TIME_WAIT piling up over the rounds.
    nix::sys::socket::setsockopt(
        &s,
        nix::sys::socket::sockopt::Linger,
        &libc::linger {
            l_onoff: 1,
            l_linger: 0,
        },
    )?;
    Ok(())
}

/// Connections per second from `lab`'s client pod to `dst` over `duration`, and failures.
fn crr(lab: &Lab, dst: SocketAddr, duration: Duration) -> (f64, u64) {
    let client = &lab.pod_by_name("pod-0-0").expect("client pod").netns;
    let (ok, failed) = client
        .run(|| {
            std::thread::scope(|s| {
                let workers: Vec<_> = (0..THREADS)
                    .map(|_| {
                        s.spawn(|| {
                            let (mut ok, mut failed) = (0u64, 0u64);
                            let start = Instant::now();
                            while start.elapsed() < duration {
                                match one_crr(dst) {
                                    Ok(()) => ok += 1,
                                    Err(_) => failed += 1,
                                }
                            }
                            (ok, failed)
                        })
                    })
                    .collect();
                workers
                    .into_iter()
                    .map(|w| w.join().expect("client thread"))
                    .fold((0, 0), |a, b| (a.0 + b.0, a.1 + b.1))
            })
        })
        .expect("enter the client's namespace");
    #[allow(clippy::cast_precision_loss)] // counts far below 2^52
    (ok as f64 / duration.as_secs_f64(), failed)
}

fn main() {
    if !dataplane_testkit::require_root("events_crr") {
        return;
    }
    let lab = Lab::new(LabSpec {
        nodes: 1,
        pods_per_node: 3,
        external_clients: 0,
        ipv6: false,
    })
    .expect("lab");
    let pin_dir = PathBuf::from(format!("/sys/fs/bpf/dpe-evcrr-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&pin_dir);
    let mut config = EbpfConfig::new(&pin_dir);
    config.netns = Some(lab.node(0).netns.path().to_owned());
    let mut dp = EbpfDataplane::new(config).expect("load");
    let mut state = lab.desired_state(0);
    let mut web = Service::new(ObjectName::new("default", "web"));
    web.cluster_ips = vec!["10.96.0.10".parse().unwrap()];
    web.ports = vec![ServicePort::new(Protocol::Tcp, 80, SERVER_PORT)];
    web.backends = ["pod-0-1", "pod-0-2"]
        .iter()
        .map(|p| {
            let pod = lab.pod_by_name(p).expect("backend pod");
            let mut b = Backend::new(pod.address(Family::V4).unwrap());
            b.node_name = Some(lab.node(0).name.as_str().into());
            b
        })
        .collect();
    state.services = vec![web];
    dp.apply(&state).expect("apply");
    let dst: SocketAddr = "10.96.0.10:80".parse().unwrap();

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
                    Ok(n) => total += n,
                    Err(e) => panic!("reading events: {e}"),
                }
            }
            (total, events.lost())
        });
        let mut ratios = Vec::new();
        let mut failures = 0;
        for round in 0..ROUNDS {
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
                // A second reader holds the setting while it lives; the draining one reads.
                let ask = dp.events(&options).expect("set the event flags");
                crr(&lab, dst, WARM);
                let (r, failed) = crr(&lab, dst, MEASURE);
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
    println!(
        "events read: {}, lost: {} (new-connection events are rate-limited to 1000/s per CPU)",
        read.0, read.1
    );
    println!("| backend | CRR new-connection events on / off (median of {ROUNDS}) | goal |");
    println!("|---|---|---|");
    println!(
        "| eBPF (TC), 1 node, ClusterIP -> 2 local pods | {median:.3} | ≥ 0.97 {} |",
        if median >= 0.97 { "met" } else { "**missed**" }
    );
    dp.reset().expect("reset");
}
