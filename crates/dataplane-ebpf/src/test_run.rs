//! The test-run hook: one packet through one program with `BPF_PROG_TEST_RUN`, against
//! the live maps. For the tests and the per-packet benches, which are other crates (so it
//! is public), not for embedders (so it is hidden from the docs).

use std::time::Duration;

use aya::programs::{TestRun, TestRunOptions};
use dataplane_core::Error;

use crate::dataplane::EbpfDataplane;
use crate::error::EbpfError;
use crate::loader::Hook;
use crate::{local, netns};

/// Result of running one packet through a program with `BPF_PROG_TEST_RUN`. For tests and
/// benches only (hidden, like [`EbpfDataplane::run_packet`]).
#[doc(hidden)]
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PacketRun {
    /// TC verdict (`TC_ACT_OK` 0, `TC_ACT_SHOT` 2, `TC_ACT_REDIRECT` 7), or for
    /// [`Hook::Xdp`] the XDP one (`XDP_PASS` 2, `XDP_TX` 3, `XDP_REDIRECT` 4).
    pub verdict: u32,
    /// The packet as the program left it.
    pub output: Vec<u8>,
    /// `skb->mark` as the program left it (TC hooks; `None` for [`Hook::Xdp`]).
    pub mark: Option<u32>,
    /// Kernel-measured run time.
    pub duration: Duration,
}

impl EbpfDataplane {
    /// Runs `packet` (an Ethernet frame) through `hook`'s program with `BPF_PROG_TEST_RUN`,
    /// against the live maps. For tests and per-packet benchmarks, which are other crates
    /// (so it is public), not for embedders (so it is hidden from the docs).
    /// Runs inside the configured network namespace, so FIB lookups see the node's routes.
    /// [`Hook::Xdp`] (loaded only when [`EbpfConfig::xdp`](crate::EbpfConfig::xdp) is on)
    /// runs as if the packet had arrived on the applied state's uplink; [`Hook::FromPod`] as
    /// if it had come from the veth of the applied endpoint that has its source address
    /// (else from loopback, where a forged source is judged as from no pod's veth). After
    /// `reset` it loads the programs again (as the next apply would).
    #[doc(hidden)]
    pub fn run_packet(
        &mut self,
        hook: Hook,
        packet: &[u8],
        repeat: u32,
    ) -> Result<PacketRun, Error> {
        self.run_packet_on(hook, packet, repeat, &RunOn::default())
    }

    /// [`Self::run_packet`] with the interfaces of the skb chosen (TC hooks): `on.interface`
    /// the one it is on (for [`Hook::FromPod`]: instead of the veth that has its source, so a
    /// pod forging another's address can be run), `on.ingress` the one it was received on
    /// (`skb->ingress_ifindex`; none: sent by the host), `on.mark` the skb's mark (as an
    /// earlier hook left it, [`PacketRun::mark`]). For tests only (hidden).
    #[doc(hidden)]
    pub fn run_packet_on(
        &mut self,
        hook: Hook,
        packet: &[u8],
        repeat: u32,
        on: &RunOn,
    ) -> Result<PacketRun, Error> {
        let netns = self.config.netns.clone();
        let uplink = self.applied().map(|s| s.node.interfaces.uplink.clone());
        let pod_interface = on.interface.clone().or_else(|| {
            (hook == Hook::FromPod)
                .then(|| source_of(packet))
                .flatten()
                .and_then(|src| {
                    self.applied()?
                        .endpoints
                        .iter()
                        .find(|e| e.ips.contains(&src))
                        .map(|e| e.interface.clone())
                })
        });
        let ingress = on.ingress.clone();
        let mark = on.mark.unwrap_or(0);
        let objects = &mut self.loaded_mut()?.objects;
        let mut out = vec![0u8; packet.len() + 256];
        let err = |e: aya::programs::ProgramError| EbpfError::Load {
            object: format!("test run of {}", hook.program()),
            source: Box::new(e),
        };
        let result = if hook == Hook::Xdp {
            let prog = objects.xdp_program_mut()?;
            netns::in_netns(netns.as_deref(), || {
                // struct xdp_md: data, data_end, data_meta, ingress_ifindex, rx_queue_index,
                // egress_ifindex. Without an ingress interface the kernel uses loopback.
                let ifindex = uplink.as_deref().map_or(0, local::ifindex_of);
                let len = u32::try_from(packet.len()).unwrap_or(u32::MAX);
                let ctx: Vec<u8> = [0, len, 0, ifindex, 0, 0]
                    .iter()
                    .flat_map(|w: &u32| w.to_ne_bytes())
                    .collect();
                prog.test_run(TestRunOptions {
                    data_in: Some(packet),
                    data_out: Some(&mut out),
                    ctx_in: (ifindex != 0).then_some(ctx.as_slice()),
                    repeat: repeat.max(1),
                    ..TestRunOptions::default()
                })
                .map(|r| (r, None))
                .map_err(err)
            })?
        } else {
            let prog = objects.program_mut(hook)?;
            netns::in_netns(netns.as_deref(), || {
                // struct __sk_buff up to `ifindex` (the 11th word): the device the skb is on.
                // `mark` is the 3rd word, `ingress_ifindex` the 10th.
                let ifindex = pod_interface.as_deref().map_or(0, local::ifindex_of);
                let ingress = ingress.as_deref().map_or(0, local::ifindex_of);
                let mut words = [0u32; 11];
                words[SKB_MARK_WORD] = mark;
                words[9] = ingress;
                words[10] = ifindex;
                let ctx: Vec<u8> = words.iter().flat_map(|w| w.to_ne_bytes()).collect();
                // The whole struct __sk_buff comes back (the kernel refuses a shorter
                // buffer); without ctx_in the kernel runs with a zeroed one, as it would
                // without a context.
                let mut ctx_out = [0u8; SKB_CTX_OUT];
                let result = prog
                    .test_run(TestRunOptions {
                        data_in: Some(packet),
                        data_out: Some(&mut out),
                        ctx_in: (ifindex > 1 || ingress != 0 || mark != 0)
                            .then_some(ctx.as_slice()),
                        ctx_out: Some(&mut ctx_out),
                        repeat: repeat.max(1),
                        ..TestRunOptions::default()
                    })
                    .map_err(err)?;
                let at = SKB_MARK_WORD * 4;
                let mark = ctx_out
                    .get(at..at + 4)
                    .and_then(|b| b.try_into().ok())
                    .map(u32::from_ne_bytes);
                Ok::<_, EbpfError>((result, mark))
            })?
        };
        let (result, mark) = result;
        out.truncate(result.data_size_out as usize);
        Ok(PacketRun {
            verdict: result.return_value,
            output: out,
            mark,
            duration: result.duration,
        })
    }
}

/// The interfaces a test packet is run with ([`EbpfDataplane::run_packet_on`]), by name in
/// the node's namespace. For tests only (hidden).
#[doc(hidden)]
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RunOn {
    /// The interface the skb is on (`skb->ifindex`).
    pub interface: Option<String>,
    /// The interface the skb was received on (`skb->ingress_ifindex`).
    pub ingress: Option<String>,
    /// The skb's mark (`skb->mark`; none: 0, as a packet off the wire has).
    pub mark: Option<u32>,
}

/// `mark`'s word in `struct __sk_buff` (after `len` and `pkt_type`).
const SKB_MARK_WORD: usize = 2;

/// Room for the `struct __sk_buff` the kernel writes back (192 bytes on 6.x kernels).
const SKB_CTX_OUT: usize = 256;

/// The source address of Ethernet frame `packet` (IPv4 or IPv6), if it has one.
fn source_of(packet: &[u8]) -> Option<std::net::IpAddr> {
    match packet.get(12..14)? {
        [0x08, 0x00] => {
            let b: [u8; 4] = packet.get(26..30)?.try_into().ok()?;
            Some(std::net::IpAddr::from(b))
        }
        [0x86, 0xdd] => {
            let b: [u8; 16] = packet.get(22..38)?.try_into().ok()?;
            Some(std::net::IpAddr::from(b))
        }
        _ => None,
    }
}
