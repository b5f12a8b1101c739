//! Shared helpers of the privileged tests: root check, a throw-away node namespace with a
//! dummy uplink, a pin directory, and the testkit's fluent packet builder
//! (`eth().ip(..).tcp(..)`, from `dataplane_testkit::packet`).
#![allow(dead_code, unused_imports)] // each test binary uses a part

pub mod pins;
pub mod sctp;
pub mod wire;

use std::net::IpAddr;
use std::path::PathBuf;
use std::process::Command;

use dataplane_core::{Backend, Dataplane, Interfaces, Masquerade, Node, PortRange};
use dataplane_ebpf::{EbpfConfig, EbpfDataplane};

pub use dataplane_testkit::packet::{
    checksum_ok, eth, l4_checksum, quoted, PacketBuilder, TCP_ACK, TCP_SYN,
};
pub use dataplane_testkit::require_root;

/// One BPF_PROG_TEST_RUN fixture: a packet into `hook`, the verdict and output bytes wanted.
pub struct Fixture {
    pub description: &'static str,
    pub hook: dataplane_ebpf::Hook,
    pub input: Vec<u8>,
    pub verdict: u32,
    pub output: Vec<u8>,
}

/// Runs `f` through `dp` and checks its verdict and output bytes; returns the output.
pub fn check(dp: &mut EbpfDataplane, f: &Fixture) -> Vec<u8> {
    check_on(dp, f, &dataplane_ebpf::RunOn::default())
}

/// [`check`] with the skb's interfaces chosen (TC hooks; see `EbpfDataplane::run_packet_on`).
pub fn check_on(dp: &mut EbpfDataplane, f: &Fixture, on: &dataplane_ebpf::RunOn) -> Vec<u8> {
    let run = dp.run_packet_on(f.hook, &f.input, 1, on).expect("test run");
    assert_eq!(run.verdict, f.verdict, "{}: verdict", f.description);
    assert_eq!(
        hex(&run.output),
        hex(&f.output),
        "{}: output bytes (left: got, right: expected)",
        f.description
    );
    run.output
}

/// Bytes as space-separated hex, for readable assertion diffs.
pub fn hex(b: &[u8]) -> String {
    b.iter()
        .map(|x| format!("{x:02x}"))
        .collect::<Vec<_>>()
        .join(" ")
}

/// Counter `name` of `dp`'s `stats().other` (summed over CPUs).
pub fn stat(dp: &EbpfDataplane, name: &str) -> u64 {
    dp.stats().expect("stats").other[name]
}

/// The backend that answered and the source it saw; panics on any other outcome.
pub fn answered(outcome: &dataplane_testkit::ProbeOutcome) -> (String, IpAddr) {
    match outcome {
        dataplane_testkit::ProbeOutcome::Answered {
            backend,
            seen_source,
            ..
        } => (backend.clone(), seen_source.ip()),
        other => panic!("expected an answer, got {other:?}"),
    }
}

/// Removes the test's pin directories on drop, also when the test panics.
pub struct PinDirs(pub Vec<PathBuf>);

impl Drop for PinDirs {
    fn drop(&mut self) {
        for d in &self.0 {
            let _ = std::fs::remove_dir_all(d);
        }
    }
}

/// The pin directories of a lab of `nodes` nodes (`/sys/fs/bpf/<tag>-<pid>-n<i>`, removed when
/// the returned guard drops) and the factory the testkit's conformance runners call per node:
/// a fresh `EbpfDataplane` in that node's network namespace, pinned in its own directory.
pub fn lab_dataplanes(
    tag: &str,
    nodes: usize,
) -> (
    PinDirs,
    impl FnMut(&dataplane_testkit::LabNode) -> Box<dyn Dataplane>,
) {
    let pid = std::process::id();
    let dirs: Vec<PathBuf> = (0..nodes)
        .map(|i| PathBuf::from(format!("/sys/fs/bpf/{tag}-{pid}-n{i}")))
        .collect();
    let guard = PinDirs(dirs.clone());
    let factory = move |node: &dataplane_testkit::LabNode| {
        let dir = dirs[node.index].clone();
        let _ = std::fs::remove_dir_all(&dir);
        let mut config = EbpfConfig::new(dir);
        config.netns = Some(node.netns.path().to_owned());
        Box::new(EbpfDataplane::new(config).expect("eBPF dataplane loads")) as Box<dyn Dataplane>
    };
    (guard, factory)
}

/// Node `node-a` (`172.18.0.2`, `fd00:18::2`) of the per-packet tests: pods `10.244.0.0/24`,
/// cluster `10.244.0.0/16` and `fd00:244::/64`, uplink `eth0`.
pub fn node_a() -> Node {
    Node {
        name: "node-a".to_owned(),
        addresses: vec!["172.18.0.2".parse().unwrap(), "fd00:18::2".parse().unwrap()],
        pod_cidrs: vec!["10.244.0.0/24".parse().unwrap()],
        cluster_cidrs: vec![
            "10.244.0.0/16".parse().unwrap(),
            "fd00:244::/64".parse().unwrap(),
        ],
        service_cidrs: vec![
            "10.96.0.0/12".parse().unwrap(),
            "fd00:96::/108".parse().unwrap(),
        ],
        node_port_range: PortRange::default(),
        interfaces: Interfaces {
            uplink: "eth0".to_owned(),
        },
        masquerade: Masquerade::default(),
        mtu: 1500,
        external_mode: dataplane_core::ExternalMode::Snat,
    }
}

/// A ready backend at `ip` on node `node`.
pub fn backend(ip: &str, node: &str) -> Backend {
    let mut b = Backend::new(ip.parse().unwrap());
    b.node_name = Some(node.into());
    b
}

/// Runs `ip ARGS`, failing the test with its error output when it fails.
pub fn ip(args: &[&str]) {
    let out = Command::new("ip").args(args).output().expect("ip runs");
    assert!(
        out.status.success(),
        "ip {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A network namespace with a dummy `eth0` (the node's uplink) and a bpffs pin directory;
/// both are removed on drop.
pub struct TestNode {
    pub name: String,
    pub pin_dir: PathBuf,
}

impl TestNode {
    pub fn new(tag: &str) -> Self {
        let name = format!("dpe-{}-{tag}", std::process::id());
        let pin_dir = PathBuf::from(format!("/sys/fs/bpf/dpe-test-{}-{tag}", std::process::id()));
        let _ = Command::new("ip").args(["netns", "del", &name]).output();
        let _ = std::fs::remove_dir_all(&pin_dir);
        // Built first so that Drop cleans up whatever the commands below managed to create.
        let node = Self { name, pin_dir };
        let name = node.name.as_str();
        ip(&["netns", "add", name]);
        ip(&[
            "-n", name, "link", "add", "eth0", "type", "veth", "peer", "name", "peer0",
        ]);
        ip(&["-n", name, "link", "set", "peer0", "up"]);
        ip(&["-n", name, "addr", "add", "172.18.0.2/16", "dev", "eth0"]);
        ip(&["-n", name, "link", "set", "eth0", "up"]);
        node
    }

    pub fn netns_path(&self) -> PathBuf {
        PathBuf::from(format!("/run/netns/{}", self.name))
    }

    pub fn config(&self) -> EbpfConfig {
        let mut c = EbpfConfig::new(&self.pin_dir);
        c.netns = Some(self.netns_path());
        c.capacities.maglev_table_size = 251;
        c
    }

    pub fn dataplane(&self) -> EbpfDataplane {
        EbpfDataplane::new(self.config()).expect("eBPF dataplane loads")
    }

    /// A node `tag` (MAC 02:..:02) whose FIB sends node-b's pods (10.244.1.0/24) to node-b
    /// (172.18.0.3, 02:..:03, a permanent neighbour): what the XDP and host-policy fixtures
    /// forward to.
    pub fn routed_to_node_b(tag: &str) -> TestNode {
        let n = TestNode::new(tag);
        n.route_via_neighbour(
            "02:00:00:00:00:02",
            "10.244.1.0/24",
            "172.18.0.3",
            "02:00:00:00:00:03",
        );
        n
    }

    /// Gives `eth0` the MAC address `mac`, routes `cidr` via `gateway` on it with a permanent
    /// neighbour entry (`gateway_mac`) and turns forwarding on, so that a FIB lookup for an
    /// address in `cidr` succeeds deterministically (no neighbour resolution).
    pub fn route_via_neighbour(&self, mac: &str, cidr: &str, gateway: &str, gateway_mac: &str) {
        let name = self.name.as_str();
        ip(&["-n", name, "link", "set", "eth0", "down"]);
        ip(&["-n", name, "link", "set", "eth0", "address", mac]);
        ip(&["-n", name, "link", "set", "eth0", "up"]);
        self.permanent_neighbour(gateway, gateway_mac);
        ip(&[
            "-n", name, "route", "replace", cidr, "via", gateway, "dev", "eth0",
        ]);
        self.sysctl("net/ipv4/ip_forward", "1");
    }

    /// The IPv6 side of [`Self::route_via_neighbour`] (call that first, for the MAC): gives
    /// `eth0` `fd00:18::2/64` (no DAD), routes `cidr` via `gateway` with a permanent neighbour
    /// entry (`gateway_mac`) and turns IPv6 forwarding on.
    pub fn route6_via_neighbour(&self, cidr: &str, gateway: &str, gateway_mac: &str) {
        let name = self.name.as_str();
        ip(&[
            "-n",
            name,
            "addr",
            "add",
            "fd00:18::2/64",
            "dev",
            "eth0",
            "nodad",
        ]);
        self.permanent_neighbour(gateway, gateway_mac);
        ip(&[
            "-n", name, "-6", "route", "replace", cidr, "via", gateway, "dev", "eth0",
        ]);
        self.sysctl("net/ipv6/conf/all/forwarding", "1");
    }

    /// A permanent neighbour entry on `eth0`: `addr` is at `mac`.
    fn permanent_neighbour(&self, addr: &str, mac: &str) {
        ip(&[
            "-n",
            &self.name,
            "neigh",
            "replace",
            addr,
            "lladdr",
            mac,
            "dev",
            "eth0",
            "nud",
            "permanent",
        ]);
    }

    /// Writes `/proc/sys/KEY` inside the namespace.
    pub fn sysctl(&self, key: &str, value: &str) {
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

    /// `ip -n NODE link show IFNAME`.
    pub fn link_show(&self, ifname: &str) -> String {
        let out = Command::new("ip")
            .args(["-n", &self.name, "link", "show", ifname])
            .output()
            .expect("ip runs");
        String::from_utf8_lossy(&out.stdout).into_owned()
    }
}

/// Attaches the `xdp_pass` fixture (driver mode) to `ifname` in the namespace at `netns`;
/// dropping the returned object detaches it. A veth delivers frames its peer sends with
/// `XDP_TX` only while it runs an XDP program itself.
pub fn attach_xdp_pass(netns: &std::path::Path, ifname: &str) -> aya::Ebpf {
    // A test-only fixture: committed beside its source, never built or embedded by the library.
    static OBJ: &[u8] = aya::include_bytes_aligned!(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/bpf/test/obj/xdp_pass.o"
    ));
    let path = netns.to_owned();
    let ifname = ifname.to_owned();
    std::thread::spawn(move || {
        let file = std::fs::File::open(&path).expect("netns file");
        nix::sched::setns(&file, nix::sched::CloneFlags::CLONE_NEWNET).expect("setns");
        let mut ebpf = aya::Ebpf::load(OBJ).expect("xdp_pass.o loads");
        let prog: &mut aya::programs::Xdp = ebpf
            .program_mut("xdp_pass")
            .expect("xdp_pass program")
            .try_into()
            .expect("an XDP program");
        prog.load().expect("xdp_pass verifies");
        prog.attach(&ifname, aya::programs::XdpMode::Driver)
            .unwrap_or_else(|e| panic!("attach xdp_pass to {ifname}: {e}"));
        ebpf
    })
    .join()
    .expect("attach thread")
}

/// `ETHTOOL_STXCSUM`: TX checksum offload on/off.
pub const ETHTOOL_STXCSUM: u32 = 0x17;

/// Sets one legacy ethtool feature (`ETHTOOL_S*` `cmd` to `on`) of `ifname` inside the
/// namespace at `netns` (no ethtool binary needed).
#[allow(unsafe_code)] // one ioctl, see the SAFETY comment
pub fn ethtool_set(netns: &std::path::Path, ifname: &str, cmd: u32, on: bool) {
    #[repr(C)]
    struct EthtoolValue {
        cmd: u32,
        data: u32,
    }
    let path = netns.to_owned();
    let ifname = ifname.to_owned();
    std::thread::spawn(move || {
        let file = std::fs::File::open(&path).expect("netns file");
        nix::sched::setns(&file, nix::sched::CloneFlags::CLONE_NEWNET).expect("setns");
        let sock = std::net::UdpSocket::bind("127.0.0.1:0")
            .or_else(|_| std::net::UdpSocket::bind("[::1]:0"))
            .or_else(|_| {
                // No loopback address yet: any AF_INET socket will do for the ioctl.
                std::net::UdpSocket::bind("0.0.0.0:0")
            })
            .expect("socket for the ioctl");
        let mut value = EthtoolValue {
            cmd,
            data: u32::from(on),
        };
        // SAFETY: ifreq is plain old data, so all-zero is a valid value.
        let mut req: libc::ifreq = unsafe { std::mem::zeroed() };
        assert!(ifname.len() < req.ifr_name.len(), "interface name too long");
        for (dst, src) in req.ifr_name.iter_mut().zip(ifname.bytes()) {
            *dst = src.cast_signed();
        }
        req.ifr_ifru.ifru_data = (&raw mut value).cast();
        // SAFETY: SIOCETHTOOL with a valid ifreq whose data points at an ethtool_value that
        // lives across the call; the kernel reads (and may write) only that struct.
        let rc = unsafe {
            libc::ioctl(
                std::os::fd::AsRawFd::as_raw_fd(&sock),
                libc::SIOCETHTOOL,
                &raw mut req,
            )
        };
        assert_eq!(
            rc,
            0,
            "ethtool {cmd:#x} on {ifname}: {}",
            std::io::Error::last_os_error()
        );
    })
    .join()
    .expect("ethtool thread");
}

impl Drop for TestNode {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.pin_dir);
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .output();
    }
}

/// Names of the TCX programs attached to `ifname` in the node's namespace.
pub fn tcx_programs(node: &TestNode, ifname: &str, egress: bool) -> Vec<String> {
    tcx_programs_in(node.netns_path(), ifname, egress)
}

/// Names of the TCX programs attached to `ifname` in the namespace at `path`.
pub fn tcx_programs_in(path: PathBuf, ifname: &str, egress: bool) -> Vec<String> {
    use aya::programs::{SchedClassifier, TcAttachType};
    let ifname = ifname.to_owned();
    std::thread::spawn(move || {
        let file = std::fs::File::open(&path).expect("netns file");
        nix::sched::setns(&file, nix::sched::CloneFlags::CLONE_NEWNET).expect("setns");
        let kind = if egress {
            TcAttachType::Egress
        } else {
            TcAttachType::Ingress
        };
        let (_, progs) = SchedClassifier::query_tcx(&ifname, kind).expect("query_tcx");
        progs
            .iter()
            .map(|p| p.name_as_str().unwrap_or("?").to_owned())
            .collect()
    })
    .join()
    .expect("query thread")
}

/// Lines of `tc filter show dev IFNAME ingress|egress` in the node's namespace that name `prog`.
pub fn clsact_filters(node: &TestNode, ifname: &str, egress: bool, prog: &str) -> usize {
    let out = Command::new("ip")
        .args([
            "netns", "exec", &node.name, "tc", "filter", "show", "dev", ifname,
        ])
        .arg(if egress { "egress" } else { "ingress" })
        .output()
        .expect("tc runs");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|l| l.contains(prog))
        .count()
}

/// A dataplane in node 0 of `lab`, pinned in its own directory (`/sys/fs/bpf/<tag>-<pid>`,
/// removed when the returned guard drops), with [`pins::small_capacities`] changed by
/// `capacities`.
pub fn lab_node_dataplane(
    lab: &dataplane_testkit::Lab,
    tag: &str,
    capacities: impl FnOnce(&mut dataplane_ebpf::Capacities),
) -> (PinDirs, EbpfDataplane) {
    let dir = PathBuf::from(format!("/sys/fs/bpf/{tag}-{}", std::process::id()));
    let guard = PinDirs(vec![dir.clone()]);
    let _ = std::fs::remove_dir_all(&dir);
    let mut config = EbpfConfig::new(&dir);
    config.netns = Some(lab.node(0).netns.path().to_owned());
    pins::small_capacities(&mut config.capacities);
    capacities(&mut config.capacities);
    let dp = EbpfDataplane::new(config).expect("eBPF dataplane loads");
    (guard, dp)
}

/// ClusterIP `default/<name>` at `vip`, TCP 80 to the lab's server port on the IPv4
/// addresses of the lab pods `pods`.
pub fn lab_cluster_ip(
    lab: &dataplane_testkit::Lab,
    name: &str,
    vip: &str,
    pods: &[usize],
) -> dataplane_core::Service {
    let mut s = dataplane_core::Service::new(dataplane_core::ObjectName::new("default", name));
    s.cluster_ips = vec![vip.parse().unwrap()];
    s.ports = vec![dataplane_core::ServicePort {
        name: "http".to_owned(),
        protocol: dataplane_core::Protocol::Tcp,
        port: 80,
        target_port: dataplane_testkit::SERVER_PORT,
        node_port: None,
    }];
    s.backends = pods
        .iter()
        .map(|&p| {
            lab.backend(p, dataplane_core::IpFamily::V4)
                .expect("lab backend")
        })
        .collect();
    s
}

/// `dp_ct` of `n`, typed.
pub fn ct_map(
    n: &TestNode,
) -> aya::maps::HashMap<
    aya::maps::MapData,
    dataplane_ebpf::maps::CtKey,
    dataplane_ebpf::maps::CtEntry,
> {
    let map = aya::maps::MapData::from_pin(n.pin_dir.join("dp_ct")).expect("pinned dp_ct");
    aya::maps::HashMap::try_from(aya::maps::Map::LruHashMap(map)).expect("dp_ct")
}

/// The conntrack key of `src`:`sport` -> `dst`:`dport` (TCP).
pub fn ct_key(src: &str, sport: u16, dst: &str, dport: u16) -> dataplane_ebpf::maps::CtKey {
    use dataplane_ebpf::maps::{family_of, Addr, Be16, CtKey};
    let src: IpAddr = src.parse().unwrap();
    CtKey {
        saddr: Addr::new(src),
        daddr: Addr::new(dst.parse().unwrap()),
        sport: Be16::new(sport),
        dport: Be16::new(dport),
        proto: 6,
        family: family_of(&src),
        pad0: 0,
        pad: 0,
    }
}
