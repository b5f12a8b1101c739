//! The `bpf_entry` target's harness: a node namespace like the differential test's
//! (`crates/dataplane-ebpf/tests/differential.rs`, `Harness::new`: an uplink with default
//! routes through a permanent neighbour, 8 pod veths, forwarding on, XDP in generic mode,
//! host routing on), one `EbpfDataplane` with a fixed state (every kind of service), and
//! frames from fuzzer bytes run through every hook with `BPF_PROG_TEST_RUN`.
//!
//! The frames mirror that test's `RawFrame` (well-formed headers of every kind the programs
//! parse, aimed at the state's frontends, pods, the node and the outside, then maybe some
//! bytes overwritten and the end cut off), plus raw bytes as a whole frame. The checks are
//! its `any_frame_into_any_hook`'s, with the same independent wire reader
//! (`tests/common/wire.rs`, included below rather than copied).

// The eBPF tests' independent wire reader, used as it is (written from the RFCs, not shared
// with the programs or the packet builder, so that a checksum bug is not mirrored).
#[allow(clippy::all, clippy::pedantic, dead_code)]
#[path = "../../crates/dataplane-ebpf/tests/common/wire.rs"]
mod wire;

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::path::PathBuf;
use std::process::Command;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

use arbitrary::{Result, Unstructured};
use dataplane_core::{
    Backend, BackendSelection, Dataplane, DesiredState, Endpoint, ExternalMode, Interfaces,
    LabelSelector, Masquerade, Node, ObjectName, Policy, PolicyPeer, PolicyPort, PolicyRule,
    PolicyType, PortRange, PortRef, Protocol, Service, ServicePort, SessionAffinity, TrafficPolicy,
};
use dataplane_ebpf::EbpfConfig;
use dataplane_ebpf::{EbpfDataplane, Hook, RunOn, XdpMode};
use dataplane_testkit::packet::{eth, quoted, TCP_SYN};
use wire::parse_checked;

const TC_OK: u32 = 0;
const TC_SHOT: u32 = 2;
const TC_REDIRECT: u32 = 7;
const XDP_DROP: u32 = 1;
const XDP_PASS: u32 = 2;
const XDP_TX: u32 = 3;
const XDP_REDIRECT: u32 = 4;

const NODE_V4: Ipv4Addr = Ipv4Addr::new(172, 18, 0, 2);
const NODE_V6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0x18, 0, 0, 0, 0, 0, 2);
const POD_INTERFACES: usize = 8;

fn v4(a: u8, b: u8, c: u8, d: u8) -> IpAddr {
    IpAddr::V4(Ipv4Addr::new(a, b, c, d))
}

fn v6(segments: [u16; 8]) -> IpAddr {
    IpAddr::V6(Ipv6Addr::from(segments))
}

fn net(s: &str) -> ipnetwork::IpNetwork {
    s.parse().expect("CIDR")
}

fn backend(ip: IpAddr, node: &str) -> Backend {
    Backend::new(ip).on_node(node)
}

/// The programmed state: node `node-a` (the namespace's uplink addresses) with two local
/// pods, and services of every kind: dual-stack ClusterIP (TCP and UDP, local and remote
/// backends, one terminating), NodePort with `externalTrafficPolicy: Local`, ClientIP
/// affinity, Maglev and a health-check port, LoadBalancer with source ranges in DSR mode,
/// ExternalIP in hybrid mode, a ClusterIP without backends (rejects), an
/// `internalTrafficPolicy: Local` one; masquerade with a non-masquerade CIDR; a
/// NetworkPolicy isolating one pod's ingress.
#[allow(clippy::too_many_lines)]
pub fn fixed_state() -> DesiredState {
    let node = Node {
        name: "node-a".into(),
        addresses: vec![IpAddr::V4(NODE_V4), IpAddr::V6(NODE_V6)],
        pod_cidrs: vec![net("10.244.0.0/24"), net("fd00:244::/64")],
        cluster_cidrs: vec![net("10.244.0.0/16"), net("fd00:244::/56")],
        service_cidrs: vec![net("10.96.0.0/12"), net("fd00:96::/112")],
        node_port_range: PortRange::default(),
        interfaces: Interfaces {
            uplink: "eth0".into(),
        },
        masquerade: Masquerade {
            enabled: true,
            all: false,
            non_masquerade_cidrs: vec![net("192.168.0.0/16")],
            all_services: false,
        },
        mtu: 1500,
        external_mode: ExternalMode::Snat,
    };
    let pod1 = v4(10, 244, 0, 101);
    let pod1_6 = v6([0xfd00, 0x244, 0, 0, 0, 0, 0, 0x101]);
    let pod2 = v4(10, 244, 0, 102);
    let remote = v4(10, 244, 1, 77);
    let remote6 = v6([0xfd00, 0x244, 0, 1, 0, 0, 0, 0x77]);
    let web = Service::new(ObjectName::new("default", "web"))
        .with_cluster_ip(v4(10, 96, 0, 1))
        .with_cluster_ip(v6([0xfd00, 0x96, 0, 0, 0, 0, 0, 1]))
        .with_ports([
            ServicePort::tcp(80, 8080).named("http"),
            ServicePort::udp(53, 5353).named("dns"),
        ])
        .with_backends([
            backend(pod1, "node-a"),
            backend(remote, "node-b"),
            backend(pod1_6, "node-a"),
            backend(remote6, "node-b"),
            backend(pod2, "node-a").terminating(),
        ]);
    let np = Service::new(ObjectName::new("default", "np"))
        .with_cluster_ip(v4(10, 96, 0, 2))
        .with_port(ServicePort::tcp(80, 8080).with_node_port(30_080))
        .with_backends([backend(pod1, "node-a"), backend(remote, "node-b")])
        .with_external_traffic_policy(TrafficPolicy::Local)
        .with_session_affinity(SessionAffinity::client_ip())
        .with_backend_selection(BackendSelection::Maglev);
    let mut np = np;
    np.health_check_node_port = Some(32_000);
    let mut lb = Service::new(ObjectName::new("shop", "lb"))
        .with_cluster_ip(v4(10, 96, 0, 3))
        .with_load_balancer_ip(v4(192, 0, 2, 1))
        .with_ports([
            ServicePort::tcp(80, 8080)
                .named("http")
                .with_node_port(30_081),
            ServicePort::udp(53, 53).named("dns").with_node_port(30_053),
        ])
        .with_backends([backend(remote, "node-b"), backend(pod2, "node-a")])
        .with_external_mode(ExternalMode::Dsr);
    lb.load_balancer_source_ranges = vec![net("203.0.113.0/24"), net("192.168.0.0/16")];
    let ext = Service::new(ObjectName::new("shop", "ext"))
        .with_cluster_ip(v4(10, 96, 0, 4))
        .with_external_ip(v4(198, 51, 100, 2))
        .with_ports([
            ServicePort::tcp(443, 8443).named("https"),
            ServicePort::udp(443, 8443).named("quic"),
        ])
        .with_backends([
            backend(v4(10, 244, 2, 9), "node-c"),
            backend(remote, "node-b").terminating(),
        ])
        .with_external_mode(ExternalMode::Hybrid);
    let empty = Service::new(ObjectName::new("default", "empty"))
        .with_cluster_ip(v4(10, 96, 0, 5))
        .with_port(ServicePort::tcp(80, 80));
    let local = Service::new(ObjectName::new("default", "local"))
        .with_cluster_ip(v4(10, 96, 0, 6))
        .with_cluster_ip(v6([0xfd00, 0x96, 0, 0, 0, 0, 0, 6]))
        .with_port(ServicePort::udp(53, 53))
        .with_backends([
            backend(pod2, "node-a"),
            backend(remote, "node-b"),
            backend(remote6, "node-b"),
        ])
        .with_internal_traffic_policy(TrafficPolicy::Local);
    let isolate = Policy {
        name: ObjectName::new("default", "db-ingress"),
        pod_selector: LabelSelector {
            match_labels: [("app".to_owned(), "db".to_owned())].into(),
            match_expressions: vec![],
        },
        policy_types: vec![PolicyType::Ingress],
        ingress: vec![PolicyRule {
            peers: vec![PolicyPeer {
                pod_selector: Some(LabelSelector {
                    match_labels: [("app".to_owned(), "web".to_owned())].into(),
                    match_expressions: vec![],
                }),
                ..PolicyPeer::default()
            }],
            ports: vec![PolicyPort {
                protocol: Protocol::Tcp,
                port: Some(PortRef::Number(8080)),
                end_port: None,
            }],
        }],
        egress: vec![],
    };
    DesiredState::new(node)
        .with_service(web)
        .with_service(np)
        .with_service(lb)
        .with_service(ext)
        .with_service(empty)
        .with_service(local)
        .with_endpoint(
            Endpoint::new(ObjectName::new("default", "web-0"), "veth0", [pod1, pod1_6])
                .with_label("app", "web"),
        )
        .with_endpoint(
            Endpoint::new(ObjectName::new("default", "db-0"), "veth1", [pod2])
                .with_label("app", "db"),
        )
        .with_policy(isolate)
}

/// Addresses frames are sent from and to: the node, frontends, an unallocated service
/// address, local and remote pods, the outside (in and out of the source ranges),
/// link-local, multicast, loopback.
fn addresses(ipv6: bool) -> Vec<IpAddr> {
    if ipv6 {
        vec![
            IpAddr::V6(NODE_V6),
            v6([0xfd00, 0x96, 0, 0, 0, 0, 0, 1]),
            v6([0xfd00, 0x96, 0, 0, 0, 0, 0, 6]),
            v6([0xfd00, 0x96, 0, 0, 0, 0, 0, 0xfa]),
            v6([0xfd00, 0x244, 0, 0, 0, 0, 0, 0x101]),
            v6([0xfd00, 0x244, 0, 1, 0, 0, 0, 0x77]),
            v6([0x2001, 0xdb8, 0, 0, 0, 0, 0, 9]),
            v6([0xfe80, 0, 0, 0, 0, 0, 0, 1]),
            v6([0xff02, 0, 0, 0, 0, 0, 0, 1]),
        ]
    } else {
        vec![
            IpAddr::V4(NODE_V4),
            v4(10, 96, 0, 1),
            v4(10, 96, 0, 2),
            v4(10, 96, 0, 3),
            v4(10, 96, 0, 4),
            v4(10, 96, 0, 5),
            v4(10, 96, 0, 6),
            v4(10, 96, 0, 250),
            v4(192, 0, 2, 1),
            v4(198, 51, 100, 2),
            v4(10, 244, 0, 101),
            v4(10, 244, 0, 102),
            v4(10, 244, 1, 77),
            v4(203, 0, 113, 9),
            v4(100, 64, 0, 9),
            v4(192, 168, 1, 1),
            v4(127, 0, 0, 1),
        ]
    }
}

/// A port: the state's frontend, target and NodePorts more often than their share.
fn port(u: &mut Unstructured) -> Result<u16> {
    if u.ratio(3, 4)? {
        u.choose(&[
            80u16, 53, 443, 8080, 8443, 5353, 30_080, 30_081, 30_053, 32_000, 30_999,
        ])
        .copied()
    } else {
        u.arbitrary()
    }
}

/// A frame from the bytes, and its source address (if it has one).
pub fn frame(u: &mut Unstructured) -> Result<(Vec<u8>, Option<IpAddr>)> {
    let kind = u.int_in_range(0..=7u8)?;
    if kind == 7 {
        // Raw bytes as a whole frame, after a chosen ethertype.
        let ethertype = *u.choose(&[[0x08u8, 0x00], [0x86, 0xdd], [0x08, 0x06], [0x81, 0x00]])?;
        let mut raw = vec![2, 0, 0, 0, 0, 1, 2, 0, 0, 0, 0, 2];
        raw.extend(ethertype);
        raw.extend(u.bytes(u.len())?);
        return Ok((raw, None));
    }
    let ipv6: bool = u.arbitrary()?;
    let pool = addresses(ipv6);
    let src = *u.choose(&pool)?;
    let dst = *u.choose(&pool)?;
    let (sport, dport) = (port(u)?, port(u)?);
    let flags: u8 = if u.arbitrary()? {
        TCP_SYN
    } else {
        u.arbitrary()?
    };
    let ttl = *u.choose(&[64u8, 64, 64, 64, 0, 1, 2])?;
    let dsr_option = u.ratio(1, 5)?;
    let len = u.int_in_range(0..=48usize)?;
    let payload = u.bytes(len)?.to_vec();
    let mut b = eth().ips(src, dst).ttl(ttl).payload(&payload);
    if dsr_option && src.is_ipv4() {
        b = b.dsr_option("192.0.2.1", 80);
    }
    let mut frame = match kind {
        0 | 1 => b.tcp(sport, dport, flags).build(),
        2 | 3 => b.udp(sport, dport).build(),
        4 => {
            // An ICMP error quoting a packet between dst and src (a reply's error).
            let inner = eth().ips(dst, src);
            let inner = if flags & 1 == 0 {
                inner.tcp(dport, sport, TCP_SYN)
            } else {
                inner.udp(dport, sport)
            };
            b.payload(&[])
                .icmp_unreachable(quoted(&inner.build()))
                .build()
        }
        _ => b.icmp_echo(kind == 6, sport).build(),
    };
    for _ in 0..u.int_in_range(0..=2u8)? {
        // Past the Ethernet header: a wrong ethertype only tests that nothing is done.
        let (at, byte): (usize, u8) = (u.arbitrary()?, u.arbitrary()?);
        let len = frame.len();
        if len > 14 {
            frame[14 + at % (len - 14)] = byte;
        }
    }
    if u.ratio(1, 8)? {
        let cut = u.int_in_range(1..=128usize)?;
        frame.truncate(frame.len().saturating_sub(cut).max(14));
    }
    Ok((frame, Some(src)))
}

fn hex(b: &[u8]) -> String {
    b.iter()
        .map(|x| format!("{x:02x}"))
        .collect::<Vec<_>>()
        .join(" ")
}

/// Runs `ip ARGS`; the harness cannot work without it.
fn ip(args: &[&str]) {
    let out = Command::new("ip").args(args).output().expect("ip runs");
    assert!(
        out.status.success(),
        "ip {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The node namespace `dpe-PID-bpffuzz` with a veth `eth0` as uplink, and a pin directory;
/// both removed on drop (the eBPF tests' `TestNode`, whose file also embeds a test fixture
/// this crate cannot reach).
struct TestNode {
    name: String,
    pin_dir: PathBuf,
}

impl TestNode {
    fn new() -> Self {
        let pid = std::process::id();
        let node = TestNode {
            name: format!("dpe-{pid}-bpffuzz"),
            pin_dir: PathBuf::from(format!("/sys/fs/bpf/dpe-test-{pid}-bpffuzz")),
        };
        let n = node.name.as_str();
        ip(&["netns", "add", n]);
        ip(&[
            "-n", n, "link", "add", "eth0", "type", "veth", "peer", "name", "peer0",
        ]);
        ip(&["-n", n, "link", "set", "peer0", "up"]);
        ip(&["-n", n, "addr", "add", "172.18.0.2/16", "dev", "eth0"]);
        ip(&[
            "-n",
            n,
            "link",
            "set",
            "eth0",
            "address",
            "02:00:00:00:00:10",
        ]);
        ip(&["-n", n, "link", "set", "eth0", "up"]);
        node
    }

    fn netns_path(&self) -> PathBuf {
        PathBuf::from(format!("/run/netns/{}", self.name))
    }

    /// Writes `/proc/sys/KEY` inside the namespace.
    fn sysctl(&self, key: &str, value: &str) {
        let path = self.netns_path();
        let key = PathBuf::from("/proc/sys").join(key);
        let value = value.to_owned();
        std::thread::spawn(move || {
            let file = std::fs::File::open(&path).expect("netns file");
            nix::sched::setns(&file, nix::sched::CloneFlags::CLONE_NEWNET).expect("setns");
            std::fs::write(&key, value).unwrap_or_else(|e| panic!("{}: {e}", key.display()));
        })
        .join()
        .expect("sysctl thread");
    }
}

impl Drop for TestNode {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.pin_dir);
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .output();
    }
}

/// The node namespace and the dataplane programmed with [`fixed_state`].
pub struct Harness {
    dp: EbpfDataplane,
    state: DesiredState,
    // Dropped after the dataplane (fields drop in order): removes the namespace and pins.
    _node: TestNode,
}

impl Harness {
    fn new() -> Self {
        let node = TestNode::new();
        for i in 0..POD_INTERFACES {
            let (host, peer) = (format!("veth{i}"), format!("veth{i}p"));
            let n = node.name.as_str();
            ip(&[
                "-n", n, "link", "add", &host, "type", "veth", "peer", "name", &peer,
            ]);
            ip(&["-n", n, "link", "set", &host, "up"]);
            ip(&["-n", n, "link", "set", &peer, "up"]);
        }
        // Default routes through permanent neighbours, so that FIB lookups answer (a
        // redirect, as on a node) instead of failing for want of a route.
        let n = node.name.as_str();
        ip(&[
            "-n",
            n,
            "neigh",
            "replace",
            "172.18.0.1",
            "lladdr",
            "02:00:00:00:00:01",
            "dev",
            "eth0",
            "nud",
            "permanent",
        ]);
        ip(&[
            "-n",
            n,
            "route",
            "replace",
            "default",
            "via",
            "172.18.0.1",
            "dev",
            "eth0",
        ]);
        node.sysctl("net/ipv4/ip_forward", "1");
        ip(&[
            "-n",
            n,
            "addr",
            "add",
            "fd00:18::2/64",
            "dev",
            "eth0",
            "nodad",
        ]);
        ip(&[
            "-n",
            n,
            "neigh",
            "replace",
            "fd00:18::1",
            "lladdr",
            "02:00:00:00:00:01",
            "dev",
            "eth0",
            "nud",
            "permanent",
        ]);
        ip(&[
            "-n",
            n,
            "-6",
            "route",
            "replace",
            "default",
            "via",
            "fd00:18::1",
        ]);
        node.sysctl("net/ipv6/conf/all/forwarding", "1");
        // This thread (libFuzzer's, which runs every input) moves into the namespace and the
        // dataplane runs without one of its own: each test run in a namespace would cost a
        // thread (`EbpfConfig::netns`), a third of an execution's time.
        let file = std::fs::File::open(node.netns_path()).expect("netns file");
        nix::sched::setns(&file, nix::sched::CloneFlags::CLONE_NEWNET).expect("setns");
        let mut config = EbpfConfig::new(&node.pin_dir);
        config.capacities.maglev_table_size = 251;
        config.xdp = XdpMode::Generic;
        config.host_routing = true;
        let mut dp = EbpfDataplane::new(config).expect("eBPF dataplane loads");
        let state = fixed_state();
        dp.apply(&state).expect("the fixed state applies");
        Harness {
            dp,
            state,
            _node: node,
        }
    }

    /// Runs `frame` through every hook and checks what comes out.
    ///
    /// # Panics
    /// On a failed test run the kernel did not refuse for a malformed frame, a verdict the
    /// hook may not give, or a well-formed frame made malformed (lengths, checksums).
    pub fn run(&mut self, frame: &[u8], src: Option<IpAddr>) {
        // From the veth of the pod that has its source, else from the first pod's.
        let veth = src
            .and_then(|src| {
                self.state
                    .endpoints
                    .iter()
                    .find(|e| e.ips.contains(&src))
                    .map(|e| e.interface.clone())
            })
            .or_else(|| Some("veth0".to_owned()));
        let valid = parse_checked(frame).is_ok();
        for (hook, on) in [
            (
                Hook::FromPod,
                RunOn {
                    interface: veth.clone(),
                    ingress: veth.clone(),
                    mark: None,
                },
            ),
            (
                Hook::ToPod,
                RunOn {
                    interface: veth.clone(),
                    ingress: None,
                    mark: None,
                },
            ),
            (Hook::FromUplink, RunOn::default()),
            (Hook::ToUplink, RunOn::default()),
            (Hook::ToLo, RunOn::default()),
            (Hook::Xdp, RunOn::default()),
        ] {
            let run = match self.dp.run_packet_on(hook, frame, 1, &on) {
                Ok(run) => run,
                // The kernel's test run refuses some malformed frames itself (an IPv4
                // ethertype with less than an IPv4 header: EINVAL) before a program sees them.
                Err(e) if !valid && format!("{e:?}").contains("InvalidInput") => continue,
                Err(e) => panic!("{hook:?}: test run failed: {e:?}\n{}", hex(frame)),
            };
            let (allowed, dropped): (&[u32], u32) = if hook == Hook::Xdp {
                (&[XDP_DROP, XDP_PASS, XDP_TX, XDP_REDIRECT], XDP_DROP)
            } else {
                (&[TC_OK, TC_SHOT, TC_REDIRECT], TC_SHOT)
            };
            assert!(
                allowed.contains(&run.verdict),
                "{hook:?}: verdict {} is none the hook may give\n{}",
                run.verdict,
                hex(frame)
            );
            if valid && run.verdict != dropped {
                CHECKED.fetch_add(1, Ordering::Relaxed);
                if run.output != frame {
                    REWRITTEN.fetch_add(1, Ordering::Relaxed);
                }
                if let Err(e) = parse_checked(&run.output) {
                    panic!(
                        "{hook:?} (verdict {}) made a bad frame of a good one: {e}\n\
                         in:  {}\nout: {}",
                        run.verdict,
                        hex(frame),
                        hex(&run.output)
                    );
                }
            }
        }
    }
}

static HARNESS: Mutex<Option<Harness>> = Mutex::new(None);
/// Well-formed frames a hook passed on (and whose output was checked), and those of them it
/// rewrote: printed at exit, so that a run shows its checks were not vacuous.
static CHECKED: AtomicU64 = AtomicU64::new(0);
static REWRITTEN: AtomicU64 = AtomicU64::new(0);

extern "C" fn cleanup() {
    eprintln!(
        "bpf_entry: {} well-formed frames passed on by a hook and checked, {} of them rewritten",
        CHECKED.load(Ordering::Relaxed),
        REWRITTEN.load(Ordering::Relaxed)
    );
    // libFuzzer ends a bounded run with exit(): drop the harness, which removes the
    // namespace and the pins (a crash leaves them: `scripts/fuzz` removes leftovers).
    if let Ok(mut h) = HARNESS.try_lock() {
        h.take();
    }
}

/// Runs `f` with the harness, built on first use.
///
/// # Panics
/// When not root (the programs need it), or when the namespace or dataplane cannot be set up.
pub fn with_harness(f: impl FnOnce(&mut Harness)) {
    let mut guard = HARNESS
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    if guard.is_none() {
        if !nix::unistd::geteuid().is_root() {
            eprintln!("bpf_entry needs root (BPF_PROG_TEST_RUN, network namespaces)");
            std::process::exit(1);
        }
        *guard = Some(Harness::new());
        // SAFETY: registers a plain `extern "C" fn` without arguments, as atexit requires.
        unsafe {
            libc::atexit(cleanup);
        }
    }
    f(guard.as_mut().expect("harness built"));
}
