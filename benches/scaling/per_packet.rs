//! Per-packet cost of the eBPF programs (`BPF_PROG_TEST_RUN`), through the fixture that the
//! criterion bench `packet` shares (`benches/common/packet.rs`).

use std::time::Instant;

use crate::clock::{log, ms};
use crate::packet;
use crate::results::{PacketRow, Results};
use crate::settings::Settings;

/// Service sizes of the per-packet section.
const PACKET_SERVICES: [usize; 4] = [10, 1_000, 10_000, 100_000];

/// Measures the section into `results`: its rows and conntrack fill, or its error.
pub fn run(settings: &Settings, start: Instant, results: &mut Results) {
    results.packet.clear();
    results.packet_error = None;
    results.packet_ct_fill = 0;
    match packet_costs(settings, start) {
        Ok((rows, fill)) => {
            results.packet = rows;
            results.packet_ct_fill = fill;
        }
        Err(e) => {
            eprintln!("per-packet section failed: {e}");
            results.packet_error = Some(e);
        }
    }
}

/// The TC program's established and new-flow costs, the XDP program's, and the floor
/// fixture's, at each of `PACKET_SERVICES`; and the new flows run to fill conntrack first.
fn packet_costs(settings: &Settings, start: Instant) -> Result<(Vec<PacketRow>, u64), String> {
    let mut lab = packet::PacketLab::new()?;
    let mut rows = Vec::new();
    for n in PACKET_SERVICES {
        let took = lab.program(n)?;
        // Warm-up: fill conntrack a little, fault in the code paths.
        lab.new_flows(1_000)?;
        lab.established(1_000)?;
        for program in packet::FLOOR_PROGRAMS {
            lab.floor(program, 1_000)?;
        }
        // The established packets and the floor fixture on the same packets, in turns, so
        // that both see the machine alike.
        let mut established = packet::Sample::default();
        let mut floor = [packet::Sample::default(); 4];
        let chunk = (settings.packets / 5).max(1);
        for _ in 0..5 {
            established.add(lab.established(chunk)?);
            for (f, program) in floor.iter_mut().zip(packet::FLOOR_PROGRAMS) {
                f.add(lab.floor(program, chunk)?);
            }
        }
        let new_flow = lab.new_flows(settings.packets)?;
        lab.xdp_new_flows(1_000)?;
        lab.xdp_established(1_000)?;
        let xdp_established = lab.xdp_established(settings.packets)?;
        let xdp_new_flow = lab.xdp_new_flows(settings.packets)?;
        let row = PacketRow {
            services: n,
            program_ms: ms(took),
            established_ns: established.ns_per_packet(),
            new_flow_ns: new_flow.ns_per_packet(),
            xdp_established_ns: Some(xdp_established.ns_per_packet()),
            xdp_new_flow_ns: Some(xdp_new_flow.ns_per_packet()),
            floor_ns: Some(floor.map(|f| f.ns_per_packet())),
        };
        log(
            start,
            &format!(
                "  {n} services: TC established {:.0} ns, new flow {:.0} ns ({:.2}x the \
                 floor); XDP established {:.0} ns, new flow {:.0} ns; floor {:.0} / {:.0} / \
                 {:.0} ns, service {:.0} ns (programmed in {:.0} ms)",
                row.established_ns,
                row.new_flow_ns,
                row.new_flow_ns / floor[2].ns_per_packet(),
                xdp_established.ns_per_packet(),
                xdp_new_flow.ns_per_packet(),
                floor[0].ns_per_packet(),
                floor[1].ns_per_packet(),
                floor[2].ns_per_packet(),
                floor[3].ns_per_packet(),
                row.program_ms
            ),
        );
        rows.push(row);
    }
    Ok((rows, lab.conntrack_fill()))
}
