//! Per-packet cost of the eBPF TC service program through `BPF_PROG_TEST_RUN`, shared by the
//! criterion bench (`benches/packet.rs`) and the report (`benches/scaling`).
//!
//! A one-node lab gives the program a real node namespace (its FIB lookups see the node's
//! routes); the state is `synthetic::state(n, 10)` on that node. Packets are TCP from a pod
//! (`dp_from_pod`, the ClusterIP path) to the ClusterIPs of services picked at random:
//! - new flow: a SYN with a tuple never seen before (conntrack miss, service lookup, backend
//!   choice, conntrack insert into a map that is filling up / evicting, DNAT);
//! - established flow: an ACK of one of 4096 flows opened before, taken round-robin, so that
//!   consecutive packets belong to different flows (conntrack hit, DNAT).
//!
//! The XDP program (`dp_xdp_uplink`) gets TCP from an external client to NodePorts of the same
//! services (synthetic services have NodePorts up to index 2767: beyond, the maps are bigger
//! but the packets address the first 2768 services), whose backends are all on other nodes
//! (the node's pod CIDR is one no synthetic backend uses) and reachable through the FIB (a
//! permanent neighbour for the node's gateway): SNAT to the node address and `XDP_TX`, new
//! and established flows alike.
//!
//! NetworkPolicy (`program_policies`, `policy_new_flows`): the lab's two pods A (10.244.0.10,
//! and in the state 15 more addresses to send from) and B (10.244.0.11) are both selected by `synthetic::policies(n, 10_000, ..)` (isolated
//! for ingress and egress, `n` allow entries per direction over 100 peer sets of 100 pods),
//! and A and B admit each other (policy 0, TCP 8080). Packets are SYNs of new connections
//! from A to one of [`POLICY_SERVICES`] ClusterIPs whose one backend is B on 8080, through
//! `dp_from_pod` (the service translation, then A's egress lookup, after DNAT as the model
//! says), then as it left them through `dp_to_pod` (B's ingress lookup, where the eBPF
//! backend checks ingress). `policy_denied` proves that both lookups are on the measured
//! paths: a SYN to a further ClusterIP, backed by B on port 7070 that no policy allows, is
//! dropped by `dp_from_pod`, and a SYN to B from an address no policy admits by `dp_to_pod`.
//!
//! Conntrack: before the first size [`PacketLab::program`] runs as many new-flow SYNs as `dp_ct`
//! has entries (two entries each: the LRU map is full and evicting afterwards), so that every
//! size measures its new flows against the conntrack of a busy node, as the end-to-end section
//! does with its CRR fill; without it the first sizes inserted into an emptier map than the
//! later ones, and the new flow's growth with services was partly conntrack filling up.
//! `DP_BENCH_PACKET_FILL=0` leaves it out (as runs before 2026-12-07 measured).
//!
//! The time is the kernel's own measurement of the program run (`repeat = 1`: each packet runs
//! once), summed over all packets; it includes the kernel's timer reads around the run.
#![allow(dead_code)] // each including bench uses a part

use std::fs::File;
use std::net::{Ipv4Addr, SocketAddrV4};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use dataplane::ebpf::{EbpfConfig, EbpfDataplane, Hook, XdpMode};
use dataplane::testing::synthetic;
use dataplane::{
    Backend, Dataplane, DesiredState, LabelSelector, ObjectName, Protocol, Service, ServicePort,
};
use dataplane_testkit::packet::{self, TCP_ACK, TCP_SYN};
use dataplane_testkit::{Lab, LabSpec};
use nix::sched::{setns, CloneFlags};

/// The programs of the floor fixture (`dataplane::ebpf::floor_object`), shortest first.
pub const FLOOR_PROGRAMS: [&str; 4] = ["floor_entry", "floor_ct", "floor_ct_nat", "floor_svc"];

/// Established flows kept open and cycled through.
pub const ESTABLISHED_FLOWS: usize = 4096;

const TC_ACT_SHOT: u32 = 2;
const XDP_TX: u32 = 3;
/// NodePorts of synthetic services: 30000 + index, up to 32767.
const NODE_PORT_BASE: u16 = 30_000;
const NODE_PORT_SERVICES: usize = 2_768;
/// The bench node's pod CIDR: no synthetic backend (10.244.0.2 - 10.244.253.x) is in it, so
/// every backend is remote and the XDP path forwards.
const POD_CIDR: &str = "10.244.254.0/24";

/// ClusterIPs of the policy measurement's target service (one backend: pod B on
/// [`POLICY_PORT`]), rotated over.
pub const POLICY_SERVICES: usize = 16;
/// Addresses pod A sends its new connections from (see `program_policies`): with 64k
/// source ports each, 1M new connections before a tuple repeats.
const POLICY_SOURCES: usize = 16;
/// Peer pods of the policy measurement, at every number of policies.
pub const POLICY_PEERS: usize = 10_000;
/// The port policy 0 allows (`synthetic::policies`' base port) and B serves on.
const POLICY_PORT: u16 = 8080;
/// A port of B that no synthetic policy allows (they allow 8080 ..= 8179).
const DENIED_PORT: u16 = 7070;
/// The label both pods carry and every synthetic policy selects.
const POLICY_TARGET: (&str, &str) = ("bench", "policy-target");

/// Kernel-measured time over a number of packets.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Sample {
    /// Packets run.
    pub packets: u64,
    /// Sum of the kernel-measured run times.
    pub total: Duration,
}

impl Sample {
    /// Adds the packets and time of `other`.
    pub fn add(&mut self, other: Sample) {
        self.packets += other.packets;
        self.total += other.total;
    }

    /// Mean nanoseconds per packet.
    pub fn ns_per_packet(&self) -> f64 {
        #[allow(clippy::cast_precision_loss)]
        let n = self.packets.max(1) as f64;
        self.total.as_secs_f64() * 1e9 / n
    }
}

/// A one-node lab with the eBPF backend loaded on its node.
///
/// The calling thread enters the node's namespace for the lifetime of the `PacketLab` and the
/// dataplane is configured for "the current namespace": `run_packet` then runs the program on
/// this thread, not on a new thread per packet (a fresh thread means cold caches, which would
/// be measured instead of the program).
#[derive(Debug)]
pub struct PacketLab {
    // Field order: the floor fixture and the dataplane go before the lab's namespaces.
    floor: Option<aya::Ebpf>,
    dp: EbpfDataplane,
    lab: Lab,
    home: File,
    services: usize,
    established: Vec<Vec<u8>>,
    next_established: usize,
    next_new: u64,
    xdp_established: Vec<Vec<u8>>,
    next_xdp_established: usize,
    next_xdp_new: u64,
    node_addr: Ipv4Addr,
    rng: u64,
    next_policy_new: u64,
    /// `dp_ct`'s capacity (entries).
    ct_capacity: u32,
    /// New flows run to fill conntrack before the first size (0: not yet).
    ct_fill: u64,
}

fn pin_dir() -> PathBuf {
    PathBuf::from(format!(
        "/sys/fs/bpf/dp-bench-{}-packet",
        std::process::id()
    ))
}

impl PacketLab {
    /// Builds the lab and loads the programs (no services yet).
    pub fn new() -> Result<PacketLab, String> {
        let lab = Lab::new(LabSpec {
            nodes: 1,
            // Pods A and B of the policy measurement; the service measurement uses neither.
            pods_per_node: 2,
            external_clients: 0,
            ipv6: false,
        })
        .map_err(|e| format!("lab: {e}"))?;
        // The FIB's answer for remote backends (via the gateway) must be complete at XDP.
        lab.node(0)
            .netns
            .ip_batch(&[
                "neigh replace 172.18.0.1 lladdr 02:00:00:00:00:fe dev eth0 nud permanent"
                    .to_owned(),
            ])
            .map_err(|e| format!("gateway neighbour: {e}"))?;
        let node_addr = match lab.node(0).addresses[0] {
            std::net::IpAddr::V4(a) => a,
            std::net::IpAddr::V6(_) => return Err("the lab node has no IPv4 address".to_owned()),
        };
        let home = File::open("/proc/thread-self/ns/net")
            .map_err(|e| format!("open own network namespace: {e}"))?;
        let node = File::open(lab.node(0).netns.path())
            .map_err(|e| format!("open node namespace: {e}"))?;
        setns(&node, CloneFlags::CLONE_NEWNET).map_err(|e| format!("enter node namespace: {e}"))?;
        let mut config = EbpfConfig::new(pin_dir());
        config.netns = None;
        // 100k ClusterIPs (two entries each) plus the NodePorts synthetic states carry.
        config.capacities.services = 1 << 18;
        config.capacities.backend_slots = 1 << 21;
        // 10k policies: 10k rules per pod and direction, two pods, and room for a rewrite
        // under new numbers (the config's advice: twice the rules).
        config.capacities.policy_rules = 1 << 18;
        config.xdp = XdpMode::Native;
        let ct_capacity = config.capacities.conntrack;
        let dp = match EbpfDataplane::new(config) {
            Ok(dp) => dp,
            Err(e) => {
                let _ = setns(&home, CloneFlags::CLONE_NEWNET);
                return Err(format!("load eBPF programs: {e}"));
            }
        };
        Ok(PacketLab {
            floor: None,
            dp,
            lab,
            home,
            services: 0,
            established: Vec::new(),
            next_established: 0,
            next_new: 0,
            xdp_established: Vec::new(),
            next_xdp_established: 0,
            next_xdp_new: 0,
            node_addr,
            rng: 0x9e37_79b9_7f4a_7c15,
            next_policy_new: 0,
            ct_capacity,
            ct_fill: 0,
        })
    }

    fn random(&mut self, below: usize) -> usize {
        // splitmix64: deterministic, good enough to spread flows over services.
        self.rng = self.rng.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.rng;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^= z >> 31;
        (z % below as u64) as usize
    }

    fn cluster_ip(i: usize) -> Ipv4Addr {
        match synthetic::cluster_ip(i) {
            std::net::IpAddr::V4(a) => a,
            std::net::IpAddr::V6(_) => unreachable!("synthetic ClusterIPs are IPv4"),
        }
    }

    /// New flows run to fill conntrack before the first size (see the module docs).
    pub fn conntrack_fill(&self) -> u64 {
        self.ct_fill
    }

    /// Programs `n` services x 10 backends; returns how long the apply took. The first time,
    /// fills conntrack (see the module docs). Then opens [`ESTABLISHED_FLOWS`] flows to
    /// random services.
    pub fn program(&mut self, n: usize) -> Result<Duration, String> {
        let mut state = self.lab.desired_state(0);
        state.node.pod_cidrs = vec![POD_CIDR.parse().expect("literal CIDR")];
        state.services = synthetic::state(n, 10).services;
        let start = Instant::now();
        self.dp
            .apply(&state)
            .map_err(|e| format!("apply {n} services: {e}"))?;
        let took = start.elapsed();
        self.services = n;
        let skip_fill = std::env::var("DP_BENCH_PACKET_FILL").is_ok_and(|v| v == "0");
        if self.ct_fill == 0 && !skip_fill {
            // Before the established flows, which must stay in conntrack.
            let fill = u64::from(self.ct_capacity);
            self.new_flows(fill)?;
            self.ct_fill = fill;
        }
        self.established.clear();
        self.next_established = 0;
        for k in 0..ESTABLISHED_FLOWS {
            let dst = SocketAddrV4::new(Self::cluster_ip(self.random(n)), 80);
            // Sources 10.244.0.128-255 (never a synthetic backend of the first 12 services,
            // so no hairpin), ports 1024-1055; the new flows use ports from 2000.
            let src = SocketAddrV4::new(
                Ipv4Addr::new(10, 244, 0, 128 + (k % 128) as u8),
                1024 + (k / 128) as u16,
            );
            self.run(&tcp_packet(src, dst, TCP_SYN))?;
            self.established.push(tcp_packet(src, dst, TCP_ACK));
        }
        self.xdp_established.clear();
        self.next_xdp_established = 0;
        for k in 0..ESTABLISHED_FLOWS {
            let src = SocketAddrV4::new(
                Ipv4Addr::new(172, 18, 255, 1 + (k % 128) as u8),
                1024 + (k / 128) as u16,
            );
            let dst = self.node_port();
            self.run_xdp(&tcp_packet(src, dst, TCP_SYN))?;
            self.xdp_established.push(tcp_packet(src, dst, TCP_ACK));
        }
        Ok(took)
    }

    /// The node's address and the NodePort of a random service that has one. Service 0 is
    /// left out: one of its backends has the address of the lab's pod, which the FIB routes
    /// to the pod's veth, a neighbour XDP would have to wait for.
    fn node_port(&mut self) -> SocketAddrV4 {
        let i = 1 + self.random(self.services.min(NODE_PORT_SERVICES) - 1);
        SocketAddrV4::new(self.node_addr, NODE_PORT_BASE + i as u16)
    }

    fn run_xdp(&mut self, packet: &[u8]) -> Result<Duration, String> {
        let run = self
            .dp
            .run_packet(Hook::Xdp, packet, 1)
            .map_err(|e| format!("XDP test run: {e}"))?;
        if run.verdict != XDP_TX {
            return Err(format!(
                "the XDP program did not forward a NodePort packet (verdict {})",
                run.verdict
            ));
        }
        Ok(run.duration)
    }

    /// Runs `count` XDP packets of established NodePort flows, round-robin over the flows.
    pub fn xdp_established(&mut self, count: u64) -> Result<Sample, String> {
        let mut s = Sample::default();
        for _ in 0..count {
            let i = self.next_xdp_established % self.xdp_established.len().max(1);
            self.next_xdp_established += 1;
            let packet = std::mem::take(&mut self.xdp_established[i]);
            let r = self.run_xdp(&packet);
            self.xdp_established[i] = packet;
            s.total += r?;
            s.packets += 1;
        }
        Ok(s)
    }

    /// Runs `count` XDP SYNs of NodePort flows never seen before.
    pub fn xdp_new_flows(&mut self, count: u64) -> Result<Sample, String> {
        let mut s = Sample::default();
        for _ in 0..count {
            let k = self.next_xdp_new;
            self.next_xdp_new += 1;
            let src = SocketAddrV4::new(
                Ipv4Addr::new(172, 18, 254, 1 + (k % 128) as u8),
                2000 + ((k / 128) % 63_000) as u16,
            );
            let dst = self.node_port();
            s.total += self.run_xdp(&tcp_packet(src, dst, TCP_SYN))?;
            s.packets += 1;
        }
        Ok(s)
    }

    fn run(&mut self, packet: &[u8]) -> Result<Duration, String> {
        self.run_repeated(packet, 1)
    }

    /// Runs `packet` `repeat` times in one test run; the kernel's mean time per run.
    fn run_repeated(&mut self, packet: &[u8], repeat: u32) -> Result<Duration, String> {
        let run = self
            .dp
            .run_packet(Hook::FromPod, packet, repeat)
            .map_err(|e| format!("test run: {e}"))?;
        if run.verdict == TC_ACT_SHOT {
            return Err("the TC program dropped a ClusterIP packet".to_owned());
        }
        // Destination address of the IPv4 header: it must have become a backend.
        if run.output.get(30..34) == packet.get(30..34) {
            return Err(format!(
                "the TC program did not translate a packet to {}.{}.{}.{} (verdict {})",
                packet[30], packet[31], packet[32], packet[33], run.verdict
            ));
        }
        Ok(run.duration)
    }

    /// Runs `count` established-flow packets, consecutive ones from different flows.
    pub fn established(&mut self, count: u64) -> Result<Sample, String> {
        let mut s = Sample::default();
        for _ in 0..count {
            let i = self.next_established % self.established.len().max(1);
            self.next_established += 1;
            let packet = std::mem::take(&mut self.established[i]);
            let r = self.run(&packet);
            self.established[i] = packet;
            s.total += r?;
            s.packets += 1;
        }
        Ok(s)
    }

    /// Runs `count` established-flow packets in batches of `repeat` runs of one flow's
    /// packet (warm caches), moving to the next flow after each batch.
    pub fn established_repeated(&mut self, count: u64, repeat: u32) -> Result<Sample, String> {
        let mut s = Sample::default();
        while s.packets < count {
            let i = self.next_established % self.established.len().max(1);
            self.next_established += 1;
            let packet = std::mem::take(&mut self.established[i]);
            let r = self.run_repeated(&packet, repeat);
            self.established[i] = packet;
            s.total += r? * repeat;
            s.packets += u64::from(repeat);
        }
        Ok(s)
    }

    /// Runs `count` established-flow packets, as [`PacketLab::established`] does, through
    /// `program` of the floor fixture instead of `dp_from_pod`: the same packets on the same
    /// maps, stopped after its first steps (see `bpf/test/floor.c`). Each run is checked:
    /// `floor_ct` must find the flow, `floor_ct_nat` must also rewrite the destination,
    /// `floor_svc` must find the service and a backend.
    pub fn floor(&mut self, program: &str, count: u64) -> Result<Sample, String> {
        use aya::programs::{SchedClassifier, TestRun, TestRunOptions};

        if self.floor.is_none() {
            // The fixture's maps are the dataplane's, found by their pins.
            let mut ebpf = aya::EbpfLoader::new()
                .default_map_pin_directory(pin_dir())
                .load(dataplane::ebpf::floor_object())
                .map_err(|e| format!("load the floor fixture: {e}"))?;
            for name in FLOOR_PROGRAMS {
                let prog: &mut SchedClassifier = ebpf
                    .program_mut(name)
                    .ok_or_else(|| format!("the floor fixture has no {name}"))?
                    .try_into()
                    .map_err(|e| format!("{name}: {e}"))?;
                prog.load().map_err(|e| format!("verify {name}: {e}"))?;
            }
            self.floor = Some(ebpf);
        }
        let ebpf = self.floor.as_mut().expect("loaded above");
        let prog: &mut SchedClassifier = ebpf
            .program_mut(program)
            .ok_or_else(|| format!("the floor fixture has no {program}"))?
            .try_into()
            .map_err(|e| format!("{program}: {e}"))?;
        let mut out = vec![0u8; 512];
        let mut s = Sample::default();
        for _ in 0..count {
            let i = self.next_established % self.established.len().max(1);
            self.next_established += 1;
            let packet = &self.established[i];
            let run = prog
                .test_run(TestRunOptions {
                    data_in: Some(packet),
                    data_out: Some(&mut out),
                    repeat: 1,
                    ..TestRunOptions::default()
                })
                .map_err(|e| format!("test run of {program}: {e}"))?;
            if run.return_value == TC_ACT_SHOT {
                return Err(format!("{program} did not find its flow or service"));
            }
            if program == "floor_ct_nat" && out.get(30..34) == packet.get(30..34) {
                return Err(format!("{program} did not rewrite the destination"));
            }
            s.total += run.duration;
            s.packets += 1;
        }
        Ok(s)
    }

    /// Runs `count` SYNs of flows never seen before.
    pub fn new_flows(&mut self, count: u64) -> Result<Sample, String> {
        let mut s = Sample::default();
        for _ in 0..count {
            let k = self.next_new;
            self.next_new += 1;
            // 10.244.0.128-255 x ports 2000-64999: 8M distinct tuples before one repeats.
            let src = SocketAddrV4::new(
                Ipv4Addr::new(10, 244, 0, 128 + (k % 128) as u8),
                2000 + ((k / 128) % 63_000) as u16,
            );
            let dst = SocketAddrV4::new(Self::cluster_ip(self.random(self.services)), 80);
            s.total += self.run(&tcp_packet(src, dst, TCP_SYN))?;
            s.packets += 1;
        }
        Ok(s)
    }
}

/// Address of lab pod `j` (A is 0, B is 1).
fn pod_ip(j: u8) -> Ipv4Addr {
    Ipv4Addr::new(10, 244, 0, 10 + j)
}

/// Source address `i` of pod A's SYNs: its own, then 10.244.0.100 .. (addresses the state
/// gives A besides; no synthetic peer, ipBlock or the stranger of `policy_denied`).
fn source_ip(i: usize) -> Ipv4Addr {
    if i == 0 {
        pod_ip(0)
    } else {
        Ipv4Addr::new(10, 244, 0, 99 + (i % POLICY_SOURCES) as u8)
    }
}

/// ClusterIP `k` of the policy target service (`k = POLICY_SERVICES`: the denied one), far
/// above the synthetic services' ClusterIPs.
fn policy_vip(k: usize) -> Ipv4Addr {
    PacketLab::cluster_ip(450_000 + k)
}

impl PacketLab {
    /// Programs the policy measurement's state (see the module docs) with `n_policies`
    /// policies over [`POLICY_PEERS`] peer pods; returns how long the apply took. 0 policies:
    /// the same services and pods, nothing isolated.
    pub fn program_policies(&mut self, n_policies: usize) -> Result<Duration, String> {
        let mut state: DesiredState = self.lab.desired_state(0);
        state.node.pod_cidrs = vec![POD_CIDR.parse().expect("literal CIDR")];
        if state.endpoints.len() < 2 {
            return Err("the packet lab has fewer than two pods".to_owned());
        }
        for e in &mut state.endpoints {
            e.labels
                .insert(POLICY_TARGET.0.to_owned(), POLICY_TARGET.1.to_owned());
            let (_, role) = synthetic::admitted(0);
            e.labels.insert(synthetic::ROLE_LABEL.to_owned(), role);
            // After DNAT every new connection goes to B:8080, so A's source port alone would
            // repeat a tuple after 64k SYNs (the dataplane then has to SNAT the port):
            // A's SYNs come from several of its addresses (the state's, which is what
            // `run_packet` and the programs look at).
            if e.ips.contains(&std::net::IpAddr::V4(pod_ip(0))) {
                e.ips
                    .extend((1..POLICY_SOURCES).map(|i| std::net::IpAddr::V4(source_ip(i))));
            }
        }
        let b = std::net::IpAddr::V4(pod_ip(1));
        let service = |k: usize, target_port: u16| {
            let mut s = Service::new(ObjectName::new("bench-policy", format!("target-{k}")));
            s.cluster_ips = vec![std::net::IpAddr::V4(policy_vip(k))];
            s.ports = vec![ServicePort {
                name: String::new(),
                protocol: Protocol::Tcp,
                port: 80,
                target_port,
                node_port: None,
            }];
            let mut backend = Backend::new(b);
            backend.node_name = Some(state.node.name.as_str().into());
            s.backends = vec![backend];
            s
        };
        state.services = (0..POLICY_SERVICES)
            .map(|k| service(k, POLICY_PORT))
            .chain(std::iter::once(service(POLICY_SERVICES, DENIED_PORT)))
            .collect();
        if n_policies > 0 {
            let target = LabelSelector {
                match_labels: std::iter::once((
                    POLICY_TARGET.0.to_owned(),
                    POLICY_TARGET.1.to_owned(),
                ))
                .collect(),
                match_expressions: Vec::new(),
            };
            let namespace = state.endpoints[0].name.namespace.clone();
            synthetic::policies(n_policies, POLICY_PEERS, &namespace, &target, POLICY_PORT)
                .add_to(&mut state);
        }
        let start = Instant::now();
        self.dp
            .apply(&state)
            .map_err(|e| format!("apply {n_policies} policies: {e}"))?;
        Ok(start.elapsed())
    }

    /// Runs `count` SYNs of new connections from pod A to the policy target's ClusterIPs
    /// (B on the allowed port), each tuple never seen before, through `dp_from_pod` (A's
    /// egress), which must translate it, then as `dp_from_pod` left it through `dp_to_pod`
    /// (B's ingress), which must not drop it. The two programs' samples.
    pub fn policy_new_flows(&mut self, count: u64) -> Result<(Sample, Sample), String> {
        let mut from_pod = Sample::default();
        let mut to_pod = Sample::default();
        for _ in 0..count {
            let k = self.next_policy_new;
            self.next_policy_new += 1;
            let src = SocketAddrV4::new(
                source_ip(((k / 64_000) % POLICY_SOURCES as u64) as usize),
                1024 + (k % 64_000) as u16,
            );
            let vip = policy_vip((k % POLICY_SERVICES as u64) as usize);
            let packet = tcp_packet(src, SocketAddrV4::new(vip, 80), TCP_SYN);
            let run = self
                .dp
                .run_packet(Hook::FromPod, &packet, 1)
                .map_err(|e| format!("test run: {e}"))?;
            if run.verdict == TC_ACT_SHOT || run.output.get(30..34) == packet.get(30..34) {
                return Err(format!(
                    "dp_from_pod did not translate the allowed SYN {src} -> {vip}:80 (verdict \
                     {}; counters: {})",
                    run.verdict,
                    self.counters()
                ));
            }
            from_pod.total += run.duration;
            from_pod.packets += 1;
            let delivered = self
                .dp
                .run_packet(Hook::ToPod, &run.output, 1)
                .map_err(|e| format!("test run of dp_to_pod: {e}"))?;
            if delivered.verdict == TC_ACT_SHOT {
                return Err(format!(
                    "dp_to_pod dropped the allowed SYN {src} -> {vip}:80 (counters: {})",
                    self.counters()
                ));
            }
            to_pod.total += delivered.duration;
            to_pod.packets += 1;
        }
        Ok((from_pod, to_pod))
    }

    /// The dataplane's non-zero counters, for an error message.
    fn counters(&self) -> String {
        self.dp.stats().map_or_else(
            |e| format!("unreadable: {e}"),
            |s| {
                s.other
                    .iter()
                    .filter(|(_, v)| **v > 0)
                    .map(|(k, v)| format!("{k}={v}"))
                    .collect::<Vec<_>>()
                    .join(", ")
            },
        )
    }

    /// Whether the policies drop what they must on both measured paths: a SYN from pod A to
    /// the ClusterIP backed by B on a port no policy allows (A's egress, `dp_from_pod`), and
    /// a SYN to B on the allowed port from an address no policy admits (B's ingress,
    /// `dp_to_pod`). Both must be dropped when policies select A and B; neither without.
    pub fn policy_denied(&mut self) -> Result<(bool, bool), String> {
        let k = self.next_policy_new;
        self.next_policy_new += 1;
        let port = 1024 + (k % 64_000) as u16;
        let dst = SocketAddrV4::new(policy_vip(POLICY_SERVICES), 80);
        let egress = self
            .dp
            .run_packet(
                Hook::FromPod,
                &tcp_packet(SocketAddrV4::new(pod_ip(0), port), dst, TCP_SYN),
                1,
            )
            .map_err(|e| format!("test run: {e}"))?;
        // 10.244.0.200: in the cluster CIDR, neither a pod of the state nor in an ipBlock.
        let stranger = SocketAddrV4::new(Ipv4Addr::new(10, 244, 0, 200), port);
        let ingress = self
            .dp
            .run_packet(
                Hook::ToPod,
                &tcp_packet(stranger, SocketAddrV4::new(pod_ip(1), POLICY_PORT), TCP_SYN),
                1,
            )
            .map_err(|e| format!("test run of dp_to_pod: {e}"))?;
        Ok((
            egress.verdict == TC_ACT_SHOT,
            ingress.verdict == TC_ACT_SHOT,
        ))
    }
}

impl Drop for PacketLab {
    fn drop(&mut self) {
        self.floor = None;
        let _ = self.dp.reset();
        if let Err(e) = setns(&self.home, CloneFlags::CLONE_NEWNET) {
            eprintln!("warning: could not return to the original network namespace: {e}");
        }
    }
}

/// An Ethernet + IPv4 + TCP frame (no payload, "don't fragment") with valid checksums, as
/// a pod's veth would hand it to the program.
pub fn tcp_packet(src: SocketAddrV4, dst: SocketAddrV4, flags: u8) -> Vec<u8> {
    packet::eth()
        .macs([0x02, 0, 0, 0, 0, 0x01], [0xee; 6])
        .ips((*src.ip()).into(), (*dst.ip()).into())
        .tcp(src.port(), dst.port(), flags)
        .seq_ack(1000, u32::from(flags & TCP_ACK != 0))
        .dont_fragment()
        .build()
}
