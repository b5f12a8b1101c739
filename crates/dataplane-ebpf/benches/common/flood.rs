//! The flood generator of the lab benches (`drop_flood` here, `untracked_deny` in the root
//! crate, which includes this file by path): the `flood_loop` bench fixture
//! (`bpf/test/flood_loop.c`) that sends frames into node-0's uplink as XDP frames without
//! building an skb for each, and the device settings the flood benches share (queues, XPS,
//! CPU pinning). See drop_flood.rs for how it works and what it achieves on this VM.

/// The fixture's object, committed beside its source (never built by the library), for
/// [`FloodLoop::start`].
pub static FLOOD_LOOP_OBJ: &[u8] = aya::include_bytes_aligned!("../../bpf/test/obj/flood_loop.o");

/// `xdp_pass` (`bpf/test/xdp_pass.c`): passes every frame. On a veth it turns the frames a
/// peer's `ndo_xdp_xmit` delivers into skbs for the stack (without an XDP program, or GRO,
/// the veth has no NAPI context and refuses them).
pub static XDP_PASS_OBJ: &[u8] = aya::include_bytes_aligned!("../../bpf/test/obj/xdp_pass.o");

/// The flood's generator, in the underlay namespace: the `flood_loop` bench fixture
/// (`bpf/test/flood_loop.c`, committed as `bpf/test/obj/flood_loop.o`) on a veth pair of its
/// own, `fl_a` / `fl_b`. A frame arriving on `fl_b` is broadcast (devmap) into `n0`, whose
/// `ndo_xdp_xmit` hands it to node-0's uplink XDP program as an XDP frame, and back out of
/// `fl_b`; `fl_a` returns it (`XDP_TX`); so each seed frame circulates, `COPIES` copies to
/// the node per turn, until `flood_budget` runs out. No skb is built per frame: only the seeds, sent
/// with an `AF_PACKET` socket on `fl_a`, are skbs.
pub struct FloodLoop {
    ebpf: aya::Ebpf,
    /// `AF_PACKET` socket (send only) for the seeds.
    seeder: std::os::fd::OwnedFd,
    /// `fl_a`'s index.
    seed_ifindex: i32,
    /// Seed frames sent at once.
    seeds: usize,
}

/// Copies of a frame sent to the node per turn of a loop (see `flood_loop.c`): a turn's own
/// cost (two XDP runs, one veth hop) is shared by this many frames to the node.
pub const COPIES: u32 = 8;

/// Frames to the node per turn of all loops together: seed frames sent when the loops have
/// died out are this divided by the copies a turn. Loops that run side by side fill the
/// veths' NAPI polls (64 frames a poll) instead of one frame a poll; more than half of the
/// node's 256-frame XDP ring at once and its receive poll falls behind (`n0`'s TX drops).
pub const IN_FLIGHT: usize = 128;

impl FloodLoop {
    /// Creates `fl_a` / `fl_b` in namespace `ns` (the calling thread must be in it), loads
    /// `obj` (the fixture's object, [`FLOOD_LOOP_OBJ`]), attaches
    /// the fixture's programs in driver mode and points the broadcast at `target` (`copies`
    /// slots) and `fl_b`.
    pub fn start(
        obj: &[u8],
        ns: &str,
        target: &str,
        copies: u32,
    ) -> Result<Self, Box<dyn std::error::Error>> {
        use aya::maps::{Array, DevMap};
        use aya::programs::xdp::XdpMode as Mode;
        for args in [
            vec![
                "-n", ns, "link", "add", "fl_a", "type", "veth", "peer", "name", "fl_b",
            ],
            vec!["-n", ns, "link", "set", "fl_a", "up"],
            vec!["-n", ns, "link", "set", "fl_b", "up"],
        ] {
            let out = std::process::Command::new("ip").args(&args).output()?;
            if !out.status.success() {
                return Err(
                    format!("ip {args:?}: {}", String::from_utf8_lossy(&out.stderr)).into(),
                );
            }
        }
        let mut ebpf = aya::Ebpf::load(obj)?;
        for (program, interface) in [("flood_bounce", "fl_a"), ("flood_fanout", "fl_b")] {
            let prog: &mut aya::programs::Xdp = ebpf
                .program_mut(program)
                .ok_or("a program of the fixture")?
                .try_into()?;
            prog.load()?;
            prog.attach(interface, Mode::Driver)?;
        }
        let mut ports = DevMap::try_from(ebpf.map_mut("flood_ports").ok_or("flood_ports")?)?;
        let target = nix::net::if_::if_nametoindex(target)?;
        for slot in 0..copies {
            ports.set(slot, target, None, 0)?;
        }
        ports.set(copies, nix::net::if_::if_nametoindex("fl_b")?, None, 0)?;
        let mut budget: Array<_, u64> =
            Array::try_from(ebpf.map_mut("flood_budget").ok_or("flood_budget")?)?;
        budget.set(0, 0, 0)?;
        budget.set(2, u64::from(copies), 0)?;
        let seeder = packet_socket()?;
        let seed_ifindex = i32::try_from(nix::net::if_::if_nametoindex("fl_a")?)?;
        Ok(Self {
            ebpf,
            seeder,
            seed_ifindex,
            seeds: (IN_FLIGHT / copies as usize).max(1),
        })
    }

    fn budget(&mut self) -> aya::maps::Array<&mut aya::maps::MapData, u64> {
        aya::maps::Array::try_from(self.ebpf.map_mut("flood_budget").expect("loaded"))
            .expect("an array")
    }

    /// Frames sent to the node so far (copies of the turns the loops took).
    pub fn sent(&mut self) -> u64 {
        self.budget().get(&1, 0).expect("flood_budget[1]")
    }

    /// One pacing slice: allows `frames` more frames to the node (the unused rest of the last slice is not
    /// kept), and sends `frame` as seeds when the last slice's loops used up their budget
    /// and so ended.
    pub fn slice(&mut self, frame: &[u8], frames: u64) -> std::io::Result<()> {
        let mut budget = self.budget();
        let left = budget.get(&0, 0).map_err(std::io::Error::other)?;
        budget.set(0, frames, 0).map_err(std::io::Error::other)?;
        if left > 0 || frames == 0 {
            return Ok(());
        }
        for _ in 0..self.seeds {
            send_on(&self.seeder, self.seed_ifindex, frame)?;
        }
        Ok(())
    }
}

/// An `AF_PACKET` raw socket (for sending only: protocol 0 receives nothing).
#[allow(unsafe_code)] // socket(2), see the SAFETY comments
pub fn packet_socket() -> std::io::Result<std::os::fd::OwnedFd> {
    use std::os::fd::FromRawFd;
    // SAFETY: plain socket(2) with constant arguments.
    let fd = unsafe { libc::socket(libc::AF_PACKET, libc::SOCK_RAW, 0) };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: a descriptor just opened and owned by nothing else.
    Ok(unsafe { std::os::fd::OwnedFd::from_raw_fd(fd) })
}

/// Sends the Ethernet frame `frame` out of interface `ifindex` through `socket`.
#[allow(unsafe_code)] // sendto(2) with a sockaddr_ll, see the SAFETY comments
pub fn send_on(socket: &std::os::fd::OwnedFd, ifindex: i32, frame: &[u8]) -> std::io::Result<()> {
    use std::os::fd::AsRawFd;
    // SAFETY: sockaddr_ll is plain data; all-zero is a valid value.
    let mut to: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
    to.sll_family = u16::try_from(libc::AF_PACKET).expect("a family");
    to.sll_ifindex = ifindex;
    to.sll_halen = 6;
    to.sll_addr[..6].copy_from_slice(&frame[..6]);
    // SAFETY: `frame` and `to` outlive the call, the lengths passed are theirs.
    let sent = unsafe {
        libc::sendto(
            socket.as_raw_fd(),
            frame.as_ptr().cast(),
            frame.len(),
            0,
            std::ptr::from_ref(&to).cast(),
            u32::try_from(std::mem::size_of::<libc::sockaddr_ll>()).expect("small"),
        )
    };
    if sent < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

/// Gives veth `ifname` (in the namespace at `netns`) `queues` RX and TX queues
/// (`ETHTOOL_SCHANNELS`; no ethtool binary needed). A veth with an XDP program receives on the
/// queue of the sending CPU (`veth_select_rxq`: CPU number modulo the queues), so with one per
/// CPU the flood (sent on CPU 0) and the forwarded traffic (CPU 1) land on their own queues
/// and NAPI contexts, as RSS spreads flows over a NIC's queues; with one queue they share a
/// 256-frame ring and the flood crowds the forwarded packets out of it.
#[allow(unsafe_code)] // two ioctls, see the SAFETY comments
pub fn set_queues(netns: &std::path::Path, ifname: &str, queues: u32) {
    /// `struct ethtool_channels`
    #[repr(C)]
    #[derive(Default)]
    struct Channels {
        cmd: u32,
        max_rx: u32,
        max_tx: u32,
        max_other: u32,
        max_combined: u32,
        rx_count: u32,
        tx_count: u32,
        other_count: u32,
        combined_count: u32,
    }
    const ETHTOOL_GCHANNELS: u32 = 0x3c;
    const ETHTOOL_SCHANNELS: u32 = 0x3d;
    let path = netns.to_owned();
    let ifname = ifname.to_owned();
    std::thread::spawn(move || {
        let file = std::fs::File::open(&path).expect("netns file");
        nix::sched::setns(&file, nix::sched::CloneFlags::CLONE_NEWNET).expect("setns");
        let sock = std::net::UdpSocket::bind("0.0.0.0:0").expect("socket for the ioctl");
        let mut channels = Channels::default();
        // SAFETY: ifreq is plain old data, so all-zero is a valid value.
        let mut req: libc::ifreq = unsafe { std::mem::zeroed() };
        assert!(ifname.len() < req.ifr_name.len(), "interface name too long");
        for (dst, src) in req.ifr_name.iter_mut().zip(ifname.bytes()) {
            *dst = src.cast_signed();
        }
        for cmd in [ETHTOOL_GCHANNELS, ETHTOOL_SCHANNELS] {
            channels.cmd = cmd;
            channels.rx_count = queues;
            channels.tx_count = queues;
            req.ifr_ifru.ifru_data = (&raw mut channels).cast();
            // SAFETY: SIOCETHTOOL with a valid ifreq whose data points at an
            // ethtool_channels that lives across the call; the kernel reads and writes only
            // that struct.
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
                "ethtool channels {cmd:#x} on {ifname}: {}",
                std::io::Error::last_os_error()
            );
        }
    })
    .join()
    .expect("ethtool thread");
}

/// Transmit packet steering on veth `ifname` in namespace `ns`: TX queue `q` for CPU `q`. A
/// forwarded skb that `ifname` transmits lands on its peer's RX queue of the same number
/// (`veth_xmit` keeps the skb's queue mapping; only XDP frames, `veth_xdp_xmit`, pick the
/// queue by the sending CPU). Without it the queue is the flow's hash: half of the CRR's
/// connections, sent from CPU 1, were queued on the flood's RX queue behind its frames and
/// handled by CPU 0's poll (rounds at 0.36-0.82 of no flood at 0.9-1 Mpps; with a user-space
/// spin on CPU 0 instead, 0.82-1.14).
pub fn set_xps(ns: &str, ifname: &str, queues: u32) {
    let mut script = String::new();
    for q in 0..queues {
        use std::fmt::Write as _;
        let _ = write!(
            script,
            "echo {:x} > /sys/class/net/{ifname}/queues/tx-{q}/xps_cpus; ",
            1u64 << q
        );
    }
    // `ip netns exec` mounts the namespace's own sysfs, where the device's queues are.
    let out = std::process::Command::new("ip")
        .args(["netns", "exec", ns, "sh", "-c", &script])
        .output()
        .expect("ip netns exec");
    assert!(
        out.status.success(),
        "xps on {ifname}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

pub fn pin_to(cpu: usize) {
    use nix::sched::{sched_setaffinity, CpuSet};
    use nix::unistd::Pid;
    let mut one = CpuSet::new();
    one.set(cpu).expect("a CPU number");
    sched_setaffinity(Pid::from_raw(0), &one).expect("pinned");
}

/// The MAC address of `interface` in namespace `ns`.
pub fn mac_of(ns: &str, interface: &str) -> [u8; 6] {
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
