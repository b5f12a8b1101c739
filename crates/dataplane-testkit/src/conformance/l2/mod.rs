//! The L2 announcement conformance table (issue 23): a LoadBalancer IP or ExternalIP inside
//! the nodes' own subnet, which an external client on the same L2 segment reaches with no
//! route at all — it resolves the address by ARP (IPv4) or neighbour discovery (IPv6) and
//! the node that announces the service answers — against the reference model and every
//! backend, with real TCP and UDP traffic in both families.
//!
//! # The lab
//!
//! [`L2_LAB`]: two nodes of one pod each, one external client, dual-stack. The announced
//! addresses are inside the underlay prefix (`172.18.0.0/16`, `fd00:18::/64`), so the client
//! treats them as on-link and asks for them on the segment; nothing routes them.
//!
//! ```text
//!                       external-0  172.18.255.1  fd00:18::ff:1
//!                            │  asks: who has 172.18.0.200 / fd00:18::c8 ?
//!  ──────────────────────────┴──────────── br0 ─────────────────────────────────
//!        │ eth0 (uplink) 172.18.0.10                 │ eth0 (uplink) 172.18.0.11
//!   node-0: announces (or not)                  node-1: announces (or not)
//!        │ vp0                                       │ vp1
//!   pod-0-0 :8080                               pod-1-0 :8080
//!
//!   default/l2-lb     LoadBalancer 172.18.0.200 fd00:18::c8, ExternalIP 172.18.0.202
//!                     fd00:18::ca, TCP+UDP 80 → 8080, externalTrafficPolicy: Local
//!   default/l2-quiet  LoadBalancer 172.18.0.201 fd00:18::c9, the same, never announced
//! ```
//!
//! Both services have `externalTrafficPolicy: Local` and one backend per node, so the pod that
//! answers names the node the traffic entered: `pod-N-0` means the client sent it to node N.
//!
//! # A case
//!
//! An [`L2Case`] is a sequence of [`L2Step`]s: which node announces `default/l2-lb` (every
//! node is given both services; only the announcer's copy has
//! [`Service::l2_announce`](dataplane_core::Service::l2_announce)), whether the client's
//! neighbour cache is flushed first, and the [`L2Check`]s. For each case the runner
//! 1. checks the table against the reference model: each state validates; for a
//!    [`L2Check::Resolves`] exactly the named node announces the address
//!    ([`dataplane_core::l2::announced_addresses`]) and [`dataplane_core::evaluate`] on it
//!    forwards the client's TCP and UDP to that node's pod; for a
//!    [`L2Check::DoesNotResolve`] no node announces it. A disagreement fails the case as a
//!    *table* failure;
//! 2. skips the case, as one visible row, when the backend lacks
//!    [`Capabilities::l2_announcements`](dataplane_core::Capabilities::l2_announcements)
//!    (after the table check);
//! 3. applies the first step in full, each later one as the [`diff`](dataplane_core::diff())
//!    from the step before ([`Dataplane::sync`](dataplane_core::Dataplane::sync)), node by
//!    node in index order — so a node that stops announcing is applied before the one that
//!    starts, and the new announcer's gratuitous ARP / unsolicited neighbour advertisement is
//!    the last word on the segment;
//! 4. with [`L2Step::flush`], deletes the client's neighbour entries (`ip neigh flush dev
//!    eth0`, both families), so the next packet asks afresh;
//! 5. for a [`L2Check::Resolves`] of a step without flush, first waits (up to
//!    [`L2RunOptions::announce_wait`]) for the client's existing entry to show the new node's
//!    MAC: only a gratuitous announcement can move it that fast (the kernel re-resolves a
//!    reachable entry only after `delay_first_probe_time`, 5 s, and unicast probes to the old
//!    MAC);
//! 6. sends every probe of the step at once from the client (TCP and UDP to port 80 of each
//!    address in each family, one source port each from one counter for the whole run): a
//!    resolving address must be answered by the announcing node's pod within
//!    [`L2RunOptions::timeout`]; a non-resolving one must stay unanswered for
//!    [`L2RunOptions::drop_wait`], and so must `NODE_PORT` (7000) of an address (every node's
//!    namespace serves it, TCP and UDP, for the whole run);
//! 7. then reads the client's neighbour entry of each address (`ip neigh show to ADDR dev
//!    eth0`): a resolving address must have the announcing node's uplink MAC, a
//!    non-resolving one no link-layer address at all (`INCOMPLETE` or `FAILED`: nobody
//!    answered the client's requests).
//!
//! # The cases ([`l2_cases`])
//!
//! - `announce` — one node announces: the LoadBalancer IP and the ExternalIP resolve to its
//!   MAC and reach its pod (TCP, UDP, IPv4, IPv6), a port no service serves does not reach
//!   the node's own server through the address, a pod asking for the address on its own
//!   interface gets no answer (the node answers on its uplink only), the unannounced service's LoadBalancer IP
//!   does not resolve (`MetalLB`'s `internal/layer2/announcer.go` answers only for the
//!   addresses its `shouldAnnounce` finds among those `SetBalancer` added); a step where the
//!   other node announces instead moves the answer to it after a flush.
//! - `withdraw` — announced, then no node's state has the flag: after the flush the address
//!   no longer resolves (`MetalLB`'s `DeleteBalancer`: the speaker stops answering).
//! - `failover` — node-0 announces and the client learns its MAC; then node-0 withdraws and
//!   node-1 announces *without* a flush: the client's entry moves to node-1's MAC through
//!   node-1's gratuitous ARP / unsolicited NA (Linux `arp_process()` lets a gratuitous ARP
//!   override an entry at once; `ndisc_recv_na()` honours the Override flag), and TCP and
//!   UDP reach node-1's pod; then back to node-0 the same way (`MetalLB`'s `SetBalancer`
//!   sends its gratuitous frames, `doSpam`, when a speaker takes an address over, as
//!   Cilium's L2 announcer and kube-vip do when they win the lease).
//!
//! ```no_run
//! use dataplane_core::Dataplane;
//! use dataplane_testkit::conformance::l2::{l2_cases, run_l2, L2_LAB};
//! use dataplane_testkit::{Lab, LabNode};
//!
//! fn my_dataplane(node: &LabNode) -> Box<dyn Dataplane> {
//!     # let _ = node;
//!     # unimplemented!()
//! }
//!
//! let lab = Lab::new(L2_LAB)?;
//! let report = run_l2(&lab, &l2_cases(), &mut |node| my_dataplane(node));
//! report.assert_ok();
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

mod runner;
mod table;

pub use runner::{run_l2, run_l2_with, L2RunOptions};
pub use table::{
    frontend_address, l2_cases, node_states, Frontend, L2Case, L2Check, L2Step, ANNOUNCED, CLIENT,
    L2_LAB, QUIET, SERVICE_PORT,
};

#[cfg(test)]
mod tests {
    use super::runner::check_case;
    use super::*;

    #[test]
    fn every_case_agrees_with_the_reference_model() {
        for case in l2_cases() {
            let problems = check_case(L2_LAB, &case);
            assert!(problems.is_empty(), "{}: {problems:#?}", case.name);
        }
    }

    #[test]
    fn a_wrong_expectation_is_a_table_failure() {
        // node-1 does not announce in this step: a row saying it resolves there is wrong.
        let case = L2Case::new(
            "wrong",
            vec![L2Step::new("node-0 announces", Some(0))
                .flushed()
                .checks([L2Check::Resolves {
                    frontend: Frontend::LoadBalancer,
                    node: 1,
                }])],
        );
        let problems = check_case(L2_LAB, &case);
        assert!(
            problems
                .iter()
                .any(|p| p.contains("node-1 does not announce")),
            "{problems:#?}"
        );
        // ... and an unannounced address cannot be said to resolve.
        let case = L2Case::new(
            "wrong",
            vec![L2Step::new("nobody", None).checks([L2Check::Resolves {
                frontend: Frontend::Quiet,
                node: 0,
            }])],
        );
        assert!(!check_case(L2_LAB, &case).is_empty());
        let case = L2Case::new(
            "wrong",
            vec![
                L2Step::new("node-0", Some(0)).checks([L2Check::DoesNotResolve {
                    frontend: Frontend::ExternalIp,
                }]),
            ],
        );
        assert!(!check_case(L2_LAB, &case).is_empty());
    }

    #[test]
    fn only_the_announcer_has_the_flag() {
        let states = node_states(L2_LAB, Some(1));
        let announced: Vec<usize> = states
            .iter()
            .map(|s| dataplane_core::l2::announced_addresses(s).len())
            .collect();
        assert_eq!(announced, vec![0, 4]);
        assert!(node_states(L2_LAB, None)
            .iter()
            .all(|s| dataplane_core::l2::announced_addresses(s).is_empty()));
    }
}
