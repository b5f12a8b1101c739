//! Shared helpers of the privileged tests: root check, a throw-away node namespace with a
//! dummy uplink, a pin directory, and a fluent packet builder (`eth().ipv4().tcp()`).
#![allow(dead_code, unused_imports)] // each test binary uses a part

use std::net::IpAddr;
use std::path::PathBuf;
use std::process::Command;

use dataplane_core::{Backend, Dataplane, Interfaces, Masquerade, Node, PortRange};
use dataplane_ebpf::{EbpfConfig, EbpfDataplane};

pub use dataplane_testkit::require_root;

/// One BPF_PROG_TEST_RUN fixture: a packet into `hook`, the verdict and output bytes wanted.
pub struct Fixture {
    pub description: &'static str,
    pub hook: dataplane_ebpf::Hook,
    pub input: Vec<u8>,
    pub verdict: u32,
    pub output: Vec<u8>,
}

/// Runs `f` through `dp` and checks its verdict and output bytes.
pub fn check(dp: &mut EbpfDataplane, f: &Fixture) {
    let run = dp.run_packet(f.hook, &f.input, 1).expect("test run");
    assert_eq!(run.verdict, f.verdict, "{}: verdict", f.description);
    assert_eq!(
        hex(&run.output),
        hex(&f.output),
        "{}: output bytes (left: got, right: expected)",
        f.description
    );
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

fn ip(args: &[&str]) {
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

    /// Gives `eth0` the MAC address `mac`, routes `cidr` via `gateway` on it with a permanent
    /// neighbour entry (`gateway_mac`) and turns forwarding on, so that a FIB lookup for an
    /// address in `cidr` succeeds deterministically (no neighbour resolution).
    pub fn route_via_neighbour(&self, mac: &str, cidr: &str, gateway: &str, gateway_mac: &str) {
        let name = self.name.as_str();
        ip(&["-n", name, "link", "set", "eth0", "down"]);
        ip(&["-n", name, "link", "set", "eth0", "address", mac]);
        ip(&["-n", name, "link", "set", "eth0", "up"]);
        ip(&[
            "-n",
            name,
            "neigh",
            "replace",
            gateway,
            "lladdr",
            gateway_mac,
            "dev",
            "eth0",
            "nud",
            "permanent",
        ]);
        ip(&[
            "-n", name, "route", "replace", cidr, "via", gateway, "dev", "eth0",
        ]);
        self.sysctl("net/ipv4/ip_forward", "1");
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

pub const TCP_SYN: u8 = 0x02;
pub const TCP_ACK: u8 = 0x10;

/// Whether the one's-complement sum over `data` (a header with its checksum) is all ones.
pub fn checksum_ok(data: &[u8]) -> bool {
    fold(sum16(data)) == 0
}

fn fold(mut sum: u32) -> u16 {
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

fn sum16(data: &[u8]) -> u32 {
    let mut s = 0u32;
    for c in data.chunks(2) {
        let w = if c.len() == 2 {
            u16::from_be_bytes([c[0], c[1]])
        } else {
            u16::from(c[0]) << 8
        };
        s += u32::from(w);
    }
    s
}

fn octets(ip: IpAddr) -> Vec<u8> {
    match ip {
        IpAddr::V4(a) => a.octets().to_vec(),
        IpAddr::V6(a) => a.octets().to_vec(),
    }
}

/// L4 part of a packet under construction.
#[derive(Debug, Clone)]
enum L4 {
    Tcp {
        sport: u16,
        dport: u16,
        flags: u8,
        seq: u32,
        ack: u32,
        window: u16,
    },
    Udp {
        sport: u16,
        dport: u16,
    },
    Icmp {
        kind: u8,
        code: u8,
        /// The 32 bits after the checksum (the next-hop MTU of "fragmentation needed").
        rest: u32,
        quoted: Vec<u8>,
    },
}

/// Fluent packet builder: `eth().ipv4(src, dst).tcp(sport, dport, flags).payload(b"..").build()`.
#[derive(Debug, Clone)]
pub struct PacketBuilder {
    src_mac: [u8; 6],
    dst_mac: [u8; 6],
    src: Option<IpAddr>,
    dst: Option<IpAddr>,
    l4: Option<L4>,
    payload: Vec<u8>,
    ttl: u8,
    /// IPv4 options (a multiple of 4 bytes).
    options: Vec<u8>,
}

pub fn eth() -> PacketBuilder {
    PacketBuilder {
        src_mac: [0x02, 0, 0, 0, 0, 0x01],
        dst_mac: [0x02, 0, 0, 0, 0, 0x02],
        src: None,
        dst: None,
        l4: None,
        payload: Vec::new(),
        ttl: 64,
        options: Vec::new(),
    }
}

impl PacketBuilder {
    pub fn macs(mut self, src: [u8; 6], dst: [u8; 6]) -> Self {
        self.src_mac = src;
        self.dst_mac = dst;
        self
    }
    pub fn ip(mut self, src: &str, dst: &str) -> Self {
        self.src = Some(src.parse().expect("address"));
        self.dst = Some(dst.parse().expect("address"));
        self
    }
    pub fn tcp(mut self, sport: u16, dport: u16, flags: u8) -> Self {
        self.l4 = Some(L4::Tcp {
            sport,
            dport,
            flags,
            seq: 1000,
            ack: 0,
            window: 65535,
        });
        self
    }
    /// The TCP RST a reject answers with: sequence `seq`, and with `ack` an ACK of it
    /// (RST|ACK), window 0.
    pub fn tcp_rst(mut self, sport: u16, dport: u16, seq: u32, ack: Option<u32>) -> Self {
        self.l4 = Some(L4::Tcp {
            sport,
            dport,
            flags: 0x04 | if ack.is_some() { TCP_ACK } else { 0 },
            seq,
            ack: ack.unwrap_or(0),
            window: 0,
        });
        self
    }
    pub fn udp(mut self, sport: u16, dport: u16) -> Self {
        self.l4 = Some(L4::Udp { sport, dport });
        self
    }
    pub fn icmp_unreachable(mut self, quoted: Vec<u8>) -> Self {
        let v6 = self.src.is_some_and(|s| s.is_ipv6());
        self.l4 = Some(if v6 {
            L4::Icmp {
                kind: 1,
                code: 4,
                rest: 0,
                quoted,
            }
        } else {
            L4::Icmp {
                kind: 3,
                code: 3,
                rest: 0,
                quoted,
            }
        });
        self
    }
    /// ICMP/ICMPv6 echo request (or reply) with identifier `id` and sequence number 1.
    pub fn icmp_echo(mut self, reply: bool, id: u16) -> Self {
        let v6 = self.src.is_some_and(|s| s.is_ipv6());
        let kind = match (v6, reply) {
            (false, false) => 8,
            (false, true) => 0,
            (true, false) => 128,
            (true, true) => 129,
        };
        self.l4 = Some(L4::Icmp {
            kind,
            code: 0,
            rest: (u32::from(id) << 16) | 1,
            quoted: Vec::new(),
        });
        self
    }
    /// ICMP (IPv4) fragmentation needed with the next-hop `mtu`.
    pub fn icmp_frag_needed(mut self, quoted: Vec<u8>, mtu: u16) -> Self {
        self.l4 = Some(L4::Icmp {
            kind: 3,
            code: 4,
            rest: u32::from(mtu),
            quoted,
        });
        self
    }
    /// Our DSR option: the frontend `addr`:`port` a backend's node answers from.
    pub fn dsr_option(mut self, addr: &str, port: u16) -> Self {
        let a: std::net::Ipv4Addr = addr.parse().expect("IPv4 frontend");
        self.options = vec![0x9b, 8];
        self.options.extend(port.to_be_bytes());
        self.options.extend(a.octets());
        self
    }
    pub fn payload(mut self, p: &[u8]) -> Self {
        self.payload = p.to_vec();
        self
    }
    /// The IPv4 TTL / IPv6 hop limit (64 unless set).
    pub fn ttl(mut self, ttl: u8) -> Self {
        self.ttl = ttl;
        self
    }

    pub fn build(&self) -> Vec<u8> {
        let src = self.src.expect("ip() set");
        let dst = self.dst.expect("ip() set");
        let v6 = src.is_ipv6();
        let (proto, mut l4) = match self.l4.clone().expect("l4 set") {
            L4::Tcp {
                sport,
                dport,
                flags,
                seq,
                ack,
                window,
            } => {
                let mut h = Vec::new();
                h.extend(sport.to_be_bytes());
                h.extend(dport.to_be_bytes());
                h.extend(seq.to_be_bytes());
                h.extend(ack.to_be_bytes());
                h.push(5 << 4);
                h.push(flags);
                h.extend(window.to_be_bytes());
                h.extend([0, 0, 0, 0]);
                (6u8, h)
            }
            L4::Udp { sport, dport } => {
                let mut h = Vec::new();
                h.extend(sport.to_be_bytes());
                h.extend(dport.to_be_bytes());
                h.extend(((8 + self.payload.len()) as u16).to_be_bytes());
                h.extend([0, 0]);
                (17u8, h)
            }
            L4::Icmp {
                kind,
                code,
                rest,
                quoted,
            } => {
                let mut h = vec![kind, code, 0, 0];
                h.extend(rest.to_be_bytes());
                h.extend(quoted);
                (if v6 { 58u8 } else { 1u8 }, h)
            }
        };
        l4.extend(&self.payload);
        // L4 checksum (ICMPv4 has no pseudo header).
        let mut pseudo = Vec::new();
        if proto != 1 {
            pseudo.extend(octets(src));
            pseudo.extend(octets(dst));
            if v6 {
                pseudo.extend((l4.len() as u32).to_be_bytes());
                pseudo.extend([0, 0, 0, proto]);
            } else {
                pseudo.extend([0, proto]);
                pseudo.extend((l4.len() as u16).to_be_bytes());
            }
        }
        let csum_at = match proto {
            6 => 16,
            17 => 6,
            _ => 2,
        };
        let c = fold(sum16(&pseudo) + sum16(&l4));
        let c = if proto == 17 && c == 0 { 0xffff } else { c };
        l4[csum_at..csum_at + 2].copy_from_slice(&c.to_be_bytes());

        let mut out = Vec::new();
        out.extend(self.dst_mac);
        out.extend(self.src_mac);
        if v6 {
            out.extend(0x86ddu16.to_be_bytes());
            out.extend([0x60, 0, 0, 0]);
            out.extend((l4.len() as u16).to_be_bytes());
            out.push(proto);
            out.push(self.ttl);
            out.extend(octets(src));
            out.extend(octets(dst));
        } else {
            out.extend(0x0800u16.to_be_bytes());
            let hlen = 20 + self.options.len();
            let mut h = vec![0x40 | (hlen / 4) as u8, 0];
            h.extend(((hlen + l4.len()) as u16).to_be_bytes());
            h.extend([0, 0, 0, 0, self.ttl, proto, 0, 0]);
            h.extend(octets(src));
            h.extend(octets(dst));
            h.extend(&self.options);
            let c = fold(sum16(&h));
            h[10..12].copy_from_slice(&c.to_be_bytes());
            out.extend(h);
        }
        out.extend(l4);
        out
    }
}

/// The bytes our ICMP error quotes: the IP header plus the UDP header (8 bytes) or the
/// 20-byte TCP header.
pub fn quoted(packet: &[u8]) -> Vec<u8> {
    let v6 = packet[12] == 0x86;
    let ip_len = if v6 { 40 } else { 20 };
    let proto = if v6 { packet[14 + 6] } else { packet[14 + 9] };
    let l4 = if proto == 6 { 20 } else { 8 };
    packet[14..14 + ip_len + l4].to_vec()
}

/// Names of the TCX programs attached to `ifname` in the node's namespace.
pub fn tcx_programs(node: &TestNode, ifname: &str, egress: bool) -> Vec<String> {
    use aya::programs::{SchedClassifier, TcAttachType};
    let path = node.netns_path();
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
