//! What a flood of drops at the uplink costs forwarded traffic (issue 20: 1 Mpps of drops
//! must not slow forwarded traffic by more than 5 %): TCP connect/request/response/close
//! (CRR) from one external client through a NodePort, with and without a flood that the
//! eBPF programs drop at the uplink, in a one-node testkit lab with the XDP program on in
//! driver mode on node-0's veth uplink. A reader drains the events the whole time, as an
//! agent streaming them would.
//!
//! ```text
//!   underlay: generator ──XDP_REDIRECT──▶ n0 ═veth═▶ node-0 eth0 [dp_xdp_uplink: XDP_DROP]
//!   (CPU 0)   flood: TCP SYNs from external-0 to LB IP 198.51.100.1:80, whose source ranges
//!             (192.0.2.0/24) leave external-0 out: dropped at XDP (reason source-range)
//!   external-1 ── x1 ── br0 ── n0 ═veth═▶ node-0 eth0 (XDP passes, TC) ──▶ pod-0-1, pod-0-2
//!   CRR to NodePort 172.18.0.10:30080 (2 threads, CPU 1)
//! ```
//!
//! The generator is the kernel's own, and builds no skb: `BPF_PROG_TEST_RUN` with
//! `BPF_F_TEST_XDP_LIVE_FRAMES` (Linux >= 5.18) of the `xdp_redirect` fixture
//! (`bpf/test/xdp_redirect.c`: `bpf_redirect(target_ifindex)`), run in the underlay namespace
//! with `target_ifindex` = `n0`, the underlay side of node-0's veth uplink. Each repetition is
//! an XDP frame redirected into `n0`, whose `ndo_xdp_xmit` (`veth_xdp_xmit`) puts it on the
//! XDP ring of its peer, node-0's `eth0`; `eth0`'s NAPI poll (on the generator's CPU, when the
//! test run's batch re-enables softirqs) runs `dp_xdp_uplink` on it as on a frame from a NIC,
//! in driver mode, and the frame is dropped and recycled without ever becoming an skb. (A veth
//! accepts `ndo_xdp_xmit` only while its peer runs an XDP program: node-0's own is that one.)
//! The previous generator, the `xdp_pass` fixture returning `XDP_PASS`, handed every frame to
//! the stack as an skb (6-12 us a frame on this VM: 0.07-0.11 Mpps; `benches/notes.md`). It is
//! paced in 5 ms slices to `TARGET_PPS`; what it achieves is read from XDP's source-range
//! counter in `dp_drops`, not assumed.
//!
//! CPUs: the generator thread runs on CPU 0, everything else (the client threads, the pods'
//! servers, the event reader: all threads of this process) on CPU 1. The frames' whole path
//! (redirect, veth ring, `eth0`'s NAPI and the XDP program) runs in the generator's context, on
//! CPU 0, as a one-flow flood arriving on one NIC queue is handled by the one CPU that queue
//! interrupts (RSS). What the flood can cost the forwarded traffic on the other CPU is what
//! this measures: the maps, the ring buffer, the event reader and the devices they share.
//! Without the pinning the flood would take one of this VM's two cores away from the
//! forwarding, which measures the VM's size, not the dataplane.
//!
//! Rounds alternate the order of flood on / off; each gets `WARM` of unmeasured load, then
//! `MEASURE` of CRR; the result is the median of the rounds' on/off ratios, with their spread.
//! Run as root: `cargo bench -p dataplane-ebpf --bench drop_flood` (prints a Markdown row).
//! All traffic stays inside the lab's namespaces.

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

mod common;
use common::crr;

use dataplane_core::{
    Dataplane, DropReason, EventOptions, EventSource, FlowEvent, ObjectName, Protocol, Service,
    ServicePort, TrafficPolicy,
};
use dataplane_ebpf::{EbpfConfig, EbpfDataplane, Hook, RunOn, XdpMode};
use dataplane_testkit::packet::eth;
use dataplane_testkit::{Family, Lab, LabSpec, SERVER_PORT};

const ROUNDS: usize = 9;
const WARM: Duration = Duration::from_millis(300);
const MEASURE: Duration = Duration::from_secs(1);
/// The flood's target rate (issue 20).
const TARGET_PPS: u64 = 1_000_000;
/// The generator's pacing slice.
const SLICE: Duration = Duration::from_millis(5);
const NODE_PORT: u16 = 30080;

const GUARDED_IP: &str = "198.51.100.1";
/// The CPUs: the flood's, and everything else's.
const FLOOD_CPU: usize = 0;
const WORK_CPU: usize = 1;

/// The kernel's packet generator: the `xdp_redirect` bench fixture
/// (`bpf/test/xdp_redirect.c`, committed as `bpf/test/obj/xdp_redirect.o`:
/// `return bpf_redirect(target_ifindex, 0)`) run with `BPF_PROG_TEST_RUN` and
/// `BPF_F_TEST_XDP_LIVE_FRAMES` (aya's `TestRunAttrs::xdp_live_frames`): each of the `repeat`
/// runs redirects the frame, as an XDP frame (no skb), to interface `target_ifindex`, in
/// batches of `LIVE_BATCH` (flushed to the device at the end of each batch).
struct XdpGenerator {
    ebpf: aya::Ebpf,
}

/// Frames per batch of the live test run (the kernel's default, NAPI's poll weight; below the
/// 256 frames a veth's XDP ring holds, so that a batch never overflows it).
const LIVE_BATCH: u32 = 64;

impl XdpGenerator {
    /// Loads the fixture with its redirect target, interface `target` of the calling
    /// thread's namespace.
    fn load(target: u32) -> Result<Self, Box<dyn std::error::Error>> {
        // A test-only fixture: committed beside its source, never built by the library.
        static OBJ: &[u8] = aya::include_bytes_aligned!(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/bpf/test/obj/xdp_redirect.o"
        ));
        let mut ebpf = aya::EbpfLoader::new()
            .override_global("target_ifindex", &target, true)
            .load(OBJ)?;
        let prog: &mut aya::programs::Xdp = ebpf
            .program_mut("xdp_redirect")
            .ok_or("no xdp_redirect program")?
            .try_into()?;
        prog.load()?;
        Ok(Self { ebpf })
    }

    /// Sends `frame` `count` times as if interface `ifindex` (of the calling thread's
    /// namespace) had received it: each one is redirected to the target.
    fn send(
        &self,
        frame: &[u8],
        ifindex: u32,
        count: u32,
    ) -> Result<(), aya::programs::ProgramError> {
        use aya::programs::{TestRun, TestRunAttrs, TestRunOptions, Xdp};
        let prog: &Xdp = self
            .ebpf
            .program("xdp_redirect")
            .and_then(|p| p.try_into().ok())
            .expect("loaded in load()");
        // struct xdp_md { data, data_end, data_meta, ingress_ifindex, rx_queue_index,
        // egress_ifindex }: the frame from offset 0 to its end, received on `ifindex`.
        let len = u32::try_from(frame.len()).expect("a frame");
        let mut ctx = Vec::with_capacity(24);
        for field in [0, len, 0, ifindex, 0, 0u32] {
            ctx.extend_from_slice(&field.to_ne_bytes());
        }
        prog.test_run(TestRunOptions {
            data_in: Some(frame),
            ctx_in: Some(&ctx),
            repeat: count,
            attrs: TestRunAttrs::new().xdp_live_frames(LIVE_BATCH),
            ..TestRunOptions::new()
        })
        .map(drop)
    }
}

fn pin_to(cpu: usize) {
    use nix::sched::{sched_setaffinity, CpuSet};
    use nix::unistd::Pid;
    let mut one = CpuSet::new();
    one.set(cpu).expect("a CPU number");
    sched_setaffinity(Pid::from_raw(0), &one).expect("pinned");
}

/// The MAC address of `interface` in namespace `ns`.
fn mac_of(ns: &str, interface: &str) -> [u8; 6] {
    let out = std::process::Command::new("ip")
        .args(["-n", ns, "-br", "link", "show", interface])
        .output()
        .expect("ip");
    let text = String::from_utf8_lossy(&out.stdout);
    let field = text.split_whitespace().nth(2).expect("a MAC address");
    let mut mac = [0u8; 6];
    for (byte, hex) in mac.iter_mut().zip(field.split(':')) {
        *byte = u8::from_str_radix(hex, 16).expect("hex");
    }
    mac
}

/// Source-range drops at XDP and at `dp_from_uplink` (`dp_drops` by program).
fn source_range_drops(dp: &EbpfDataplane) -> (u64, u64) {
    let stats = dp.stats().expect("stats");
    let at = |program: &str| {
        stats
            .other
            .get(&format!(
                "drops.{program}.{}",
                DropReason::SourceRange.name()
            ))
            .copied()
            .unwrap_or(0)
    };
    (at("dp_xdp_uplink"), at("dp_from_uplink"))
}

fn services(lab: &Lab) -> Vec<Service> {
    let backends = common::node0_backends(lab, &["pod-0-1", "pod-0-2"]);
    let mut web = Service::new(ObjectName::new("default", "web"));
    web.cluster_ips = vec!["10.96.0.10".parse().unwrap()];
    web.ports = vec![ServicePort {
        node_port: Some(NODE_PORT),
        ..ServicePort::new(Protocol::Tcp, 80, SERVER_PORT)
    }];
    web.backends.clone_from(&backends);
    // Local: the client's source is kept, so no SNAT port per connection (with Cluster, the
    // RST-closed connections' SNAT ports stay taken until their conntrack entries expire,
    // and a long CRR load measures the port allocator running out).
    web.external_traffic_policy = TrafficPolicy::Local;
    let mut guarded = Service::new(ObjectName::new("default", "guarded"));
    guarded.cluster_ips = vec!["10.96.0.12".parse().unwrap()];
    guarded.ports = vec![ServicePort::new(Protocol::Tcp, 80, SERVER_PORT)];
    guarded.load_balancer_ips = vec![GUARDED_IP.parse().unwrap()];
    guarded.load_balancer_source_ranges = vec!["192.0.2.0/24".parse().unwrap()];
    guarded.backends = backends;
    vec![web, guarded]
}

#[allow(clippy::too_many_lines)] // one scenario, in order
fn main() {
    if !dataplane_testkit::require_root("drop_flood") {
        return;
    }
    if std::thread::available_parallelism().map_or(1, usize::from) < 2 {
        eprintln!("SKIPPED drop_flood: needs 2 CPUs (one for the flood, one for the rest)");
        return;
    }
    let rounds = std::env::var("DROP_FLOOD_ROUNDS")
        .ok()
        .and_then(|r| r.parse().ok())
        .unwrap_or(ROUNDS);
    // Before the lab: its pods' server threads inherit these.
    common::renice();
    pin_to(WORK_CPU);
    let lab = Lab::new(LabSpec {
        nodes: 1,
        pods_per_node: 3,
        external_clients: 2,
        ipv6: false,
    })
    .expect("lab");
    let pin_dir = PathBuf::from(format!("/sys/fs/bpf/dpe-flood-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&pin_dir);
    let mut config = EbpfConfig::new(&pin_dir);
    config.netns = Some(lab.node(0).netns.path().to_owned());
    // Driver mode on the veth uplink: the flood's frames reach it as XDP frames.
    config.xdp = XdpMode::Native;
    let mut dp = EbpfDataplane::new(config).expect("load");
    let mut state = lab.desired_state(0);
    state.services = services(&lab);
    dp.apply(&state).expect("apply");
    let node_ip = lab.node(0).address(Family::V4).expect("node address");
    let dst = SocketAddr::new(node_ip, NODE_PORT);
    let client = &lab.external(1).netns;

    // The flood's frame: external-0 to the guarded LB IP, addressed to node-0's uplink.
    let external0 = lab.external(0);
    let src_ip: IpAddr = external0.address(Family::V4).expect("external address");
    let frame = eth()
        .macs(
            mac_of(external0.netns.name(), "eth0"),
            mac_of(lab.node(0).netns.name(), "eth0"),
        )
        .ips(src_ip, GUARDED_IP.parse().unwrap())
        .tcp(40000, 80, 0x02)
        .build();

    let mut events = dp.events(&EventOptions::default()).expect("events");
    let stop = AtomicBool::new(false);
    let flooding = AtomicBool::new(false);
    let generator_errors = AtomicU64::new(0);
    // Frames the generator handed to the kernel, and the time it spent in those calls.
    let generated = AtomicU64::new(0);
    let generating_ns = AtomicU64::new(0);
    let results = std::thread::scope(|s| {
        let reader = s.spawn(|| {
            let mut out: Vec<FlowEvent> = Vec::new();
            let (mut read, mut suppressed) = (0u64, 0u64);
            while !stop.load(Ordering::Relaxed) {
                out.clear();
                match events.read(&mut out, 4096) {
                    Ok(0) => {
                        let _ = events.wait(Duration::from_millis(20));
                    }
                    Ok(n) => {
                        read += n as u64;
                        suppressed += out.iter().map(|e| e.suppressed).sum::<u64>();
                    }
                    Err(e) => panic!("reading events: {e}"),
                }
            }
            (read, suppressed, events.lost())
        });
        let flood = s.spawn(|| {
            lab.underlay()
                .run(|| {
                    pin_to(FLOOD_CPU);
                    // Received on external-0's bridge port, redirected into node-0's uplink veth.
                    let ifindex = nix::net::if_::if_nametoindex("x0").expect("external-0's port");
                    let target = nix::net::if_::if_nametoindex("n0").expect("node-0's port");
                    let generator =
                        XdpGenerator::load(target).expect("load the generator's XDP program");
                    let per_slice = u32::try_from(
                        TARGET_PPS * u64::try_from(SLICE.as_micros()).unwrap() / 1_000_000,
                    )
                    .unwrap();
                    let mut next = Instant::now();
                    while !stop.load(Ordering::Relaxed) {
                        if !flooding.load(Ordering::Relaxed) {
                            std::thread::sleep(Duration::from_millis(2));
                            next = Instant::now();
                            continue;
                        }
                        let t = Instant::now();
                        if generator.send(&frame, ifindex, per_slice).is_err() {
                            generator_errors.fetch_add(1, Ordering::Relaxed);
                        } else {
                            generated.fetch_add(u64::from(per_slice), Ordering::Relaxed);
                        }
                        generating_ns.fetch_add(
                            u64::try_from(t.elapsed().as_nanos()).unwrap_or(u64::MAX),
                            Ordering::Relaxed,
                        );
                        next += SLICE;
                        let now = Instant::now();
                        if next > now {
                            std::thread::sleep(next - now);
                        } else if now - next > SLICE * 10 {
                            // Behind: flat out, without banking the slices it missed.
                            next = now;
                        }
                    }
                })
                .expect("enter the flood's namespace");
        });

        let mut ratios = Vec::new();
        let mut rates = Vec::new();
        let mut failures = 0;
        // Flood frames dropped by dp_from_uplink instead of XDP (none expected).
        let mut tc_drops = 0;
        for round in 0..rounds {
            let mut conn_rate = [0.0; 2];
            let order = if round % 2 == 0 {
                [false, true]
            } else {
                [true, false]
            };
            for on in order {
                // Conntrack GC, as an agent's periodic maintain() does, outside the measured
                // time: the closed connections' entries go.
                dp.maintain(dataplane_ebpf::monotonic_now())
                    .expect("maintain");
                flooding.store(on, Ordering::Relaxed);
                crr(client, dst, WARM);
                let (xdp_before, tc_before) = source_range_drops(&dp);
                let start = Instant::now();
                let (r, failed) = crr(client, dst, MEASURE);
                let (xdp_after, tc_after) = source_range_drops(&dp);
                let drops = xdp_after - xdp_before;
                tc_drops += tc_after - tc_before;
                #[allow(clippy::cast_precision_loss)] // counts far below 2^52
                let pps = drops as f64 / start.elapsed().as_secs_f64();
                if on {
                    rates.push(pps);
                }
                failures += failed;
                conn_rate[usize::from(on)] = r;
            }
            flooding.store(false, Ordering::Relaxed);
            let ratio = conn_rate[1] / conn_rate[0];
            println!(
                "round {round}: off {:.0} conn/s, flood {:.0} conn/s at {:.3} Mpps of drops, \
                 flood/off {ratio:.3}",
                conn_rate[0],
                conn_rate[1],
                rates.last().copied().unwrap_or(0.0) / 1e6,
            );
            ratios.push(ratio);
        }
        stop.store(true, Ordering::Relaxed);
        flood.join().expect("generator");
        let read = reader.join().expect("reader");
        assert_eq!(failures, 0, "failed connections");
        (ratios, rates, read, tc_drops)
    });
    let (ratios, mut rates, read, tc_drops) = results;
    assert_eq!(
        tc_drops, 0,
        "every flood frame was dropped at XDP, none in TC"
    );
    assert_eq!(
        generator_errors.load(Ordering::Relaxed),
        0,
        "BPF_PROG_TEST_RUN with live frames failed (Linux >= 5.18 needed)"
    );
    let median = |v: &mut Vec<f64>| {
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    let mut sorted = ratios.clone();
    let ratio = median(&mut sorted);
    let pps = median(&mut rates);
    let (frames, ns) = (
        generated.load(Ordering::Relaxed),
        generating_ns.load(Ordering::Relaxed),
    );
    #[allow(clippy::cast_precision_loss)] // counts far below 2^52
    let per_frame = ns as f64 / frames.max(1) as f64;
    #[allow(clippy::cast_precision_loss)]
    let busy = ns as f64 / 1e9;
    println!(
        "generator: {frames} frames in {busy:.2} s of BPF_PROG_TEST_RUN calls: {per_frame:.0} ns \
         a frame (redirect, veth ring, node-0's XDP drop; the most one CPU makes of it: {:.3} \
         Mpps)",
        1e3 / per_frame
    );
    println!(
        "events read: {}, standing for {} more (suppressed), lost: {}; limits: {:?}",
        read.0,
        read.1,
        read.2,
        dp.config().events
    );
    println!(
        "| backend | flood of drops at the uplink (median achieved, target {} Mpps) | CRR flood / no flood (median of {rounds}) | rounds min-max | goal |",
        TARGET_PPS / 1_000_000
    );
    println!("|---|---:|---:|---|---|");
    println!(
        "| eBPF (XDP drop, driver mode on the veth uplink), 1 node, external CRR -> NodePort -> 2 local pods | {:.3} Mpps | {ratio:.3} | {:.3}-{:.3} | ≥ 0.95 at 1 Mpps {} |",
        pps / 1e6,
        sorted[0],
        sorted[sorted.len() - 1],
        if ratio >= 0.95 && pps >= 0.95e6 {
            "met"
        } else {
            "**missed**"
        }
    );
    // What the programs themselves spend on one dropped frame, without the lab's receive
    // path: dp_xdp_uplink (and, for comparison, dp_from_uplink, which drops it when XDP is
    // off) on the flood's frame with BPF_PROG_TEST_RUN (the kernel's average over the runs).
    let run = dp.run_packet(Hook::Xdp, &frame, 100_000).expect("test run");
    assert_eq!(run.verdict, 1, "XDP_DROP: the flood's frame is dropped");
    #[allow(clippy::cast_precision_loss)] // nanoseconds far below 2^52
    let ns = run.duration.as_nanos() as f64;
    println!(
        "dp_xdp_uplink per dropped frame: {ns:.0} ns (BPF_PROG_TEST_RUN, 100000 runs, drop \
         events limited as configured): 1 Mpps of such drops is {:.1} % of one CPU in the \
         program",
        ns * 1e6 / 1e9 * 100.0
    );
    let on = RunOn {
        interface: Some("eth0".to_owned()),
        ingress: Some("eth0".to_owned()),
    };
    let run = dp
        .run_packet_on(Hook::FromUplink, &frame, 100_000, &on)
        .expect("test run");
    assert_eq!(run.verdict, 2, "TC_ACT_SHOT: the flood's frame is dropped");
    #[allow(clippy::cast_precision_loss)] // nanoseconds far below 2^52
    let ns = run.duration.as_nanos() as f64;
    println!(
        "dp_from_uplink per dropped frame: {ns:.0} ns (BPF_PROG_TEST_RUN, 100000 runs, drop \
         events limited as configured): 1 Mpps of such drops is {:.1} % of one CPU in the \
         program",
        ns * 1e6 / 1e9 * 100.0
    );
    dp.reset().expect("reset");
}
