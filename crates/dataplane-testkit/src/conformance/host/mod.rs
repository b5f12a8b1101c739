//! The host endpoint policy conformance table (issue 22): Calico-style host endpoints and
//! their policies — untracked (`doNotTrack`), pre-DNAT, normal, `applyOnForward`, failsafe
//! ports — with real packets, against the reference model and every backend.
//!
//! # The lab
//!
//! [`HOST_LAB`]: two nodes with one pod each, four external clients on the nodes' L2
//! segment, dual-stack. Node-0's uplink (`eth0`) is the host endpoint under test (label
//! `host-endpoint: uplink`, which every policy of the table selects); node-1 is the rest of
//! the cluster.
//!
//! ```text
//!   external-0 (client A)  external-1 (client B)  external-2 (attacker)  external-3 (upstream)
//!        │                      │                  203.0.113.7 /          servers 53, 6443,
//!        │                      │                  2001:db8:bad::7        7000, 7001, 5353
//!  ──────┴──────────────────────┴──────────── br0 ───────┴─────────────────────┴──────
//!        │ eth0 = host endpoint                           │ eth0
//!   node-0: servers 22, 68/udp, 2222, 6443, 7000     node-1
//!        │ vp0                                            │ vp1
//!   pod-0-0 (8080) ◀── service default/host-np:           pod-1-0
//!                      ClusterIP :80, NodePort 30080
//! ```
//!
//! The runner adds, inside the lab's namespaces only: the attacker's sources (its underlay
//! route takes `src 203.0.113.7` and `src 2001:db8:bad::7`, so everything it sends comes from
//! the blocked prefixes) and node-0's routes back to them; routes from the other externals to
//! each node's pod CIDR through that node (forwarded traffic, and the pods' replies); servers
//! in node-0's and the upstream's namespaces on every port a case probes, each answering
//! `<party>:<port>` over TCP and UDP.
//!
//! # A case
//!
//! A [`HostCase`] is a sequence of [`HostStep`]s, each a set of host policies and failsafe
//! ports (node-0's host endpoint is in every step) with its probes. For each case the runner
//! 1. checks the table: for every probe of every step in both families, the reference model
//!    ([`dataplane_core::evaluate`] and [`dataplane_core::reply_allowed`] on the node the
//!    probe enters — the client's own for a node or pod, the addressed one for an external
//!    client — and, as it arrives from the uplink, on the node it is forwarded to when that
//!    is another) must say what the case means ([`Meaning`]): a disagreement fails the case
//!    as a *table* failure, so a wrong expectation cannot hide. The expectation each probe
//!    is then checked against is the model's;
//! 2. skips the case, as one visible row, when the backend lacks
//!    [`Capabilities::host_policy`](dataplane_core::Capabilities::host_policy) (after the
//!    table check);
//! 3. applies the open state (the host endpoint without policies) in full, then each step as
//!    the [`diff`](dataplane_core::diff()) from the state before, so that the backends'
//!    incremental paths are what is tested;
//! 4. before a step, opens its held TCP connections (answered once in the state before);
//!    after it, they must still be answered (policy is checked on a connection's first
//!    packet);
//! 5. sends every probe of the step in every family at once (one thread per client,
//!    [`crate::traffic::probe_batch`]), each a new connection from a source port of its own
//!    for the whole run (one counter, 10000..30000, so that even a masqueraded connection
//!    cannot meet an earlier one's conntrack entry): an answered probe must be answered by
//!    its server within [`HostRunOptions::timeout`], a dropped one must stay unanswered for
//!    [`HostRunOptions::drop_wait`] — dropped, not refused, and a TCP handshake that
//!    completed is never a drop. Unanswered allowed probes are probed once more (loss is not
//!    a verdict; the policy runner's rule, shared);
//! 6. with [`HostRunOptions::check_kernel_conntrack`], checks that each answered probe the
//!    case means untracked left no entry in the kernel's conntrack table of the node it
//!    entered (`conntrack -L` in the node's namespace, by the probe's source address and
//!    port).
//!
//! Before the first case the runner applies the state without host endpoint and sends every
//! probe of the table once: each must be answered (warm-up; so a probe dropped later was
//! dropped by the policy, not by the lab).
//!
//! # What the cases cover, and where they come from
//!
//! [`host_cases`] (each names its Calico documentation page in [`HostCase::source`]; the
//! reference semantics are core's [`dataplane_core::host_policy`] module):
//! - `untracked-deny-blocked-cidrs` — `"Defend against DoS attacks"`
//!   (<https://docs.tigera.io/calico/latest/network-policy/extreme-traffic/defend-dos-attack>)
//!   and "Untracked policy" (`reference/host-endpoints/untracked`): the attacker is served
//!   without policy; a `doNotTrack` ingress Deny of `203.0.113.0/24` and `2001:db8:bad::/48`
//!   drops its TCP and UDP to the node's own server and to the NodePort, while client A and
//!   client B keep being served and client A's connections opened before it keep working;
//!   the failsafe ports still answer the attacker (they come before untracked policy);
//! - `deny-all-failsafe` — "Protect Kubernetes nodes"
//!   (<https://docs.tigera.io/calico/latest/network-policy/hosts/protect-hosts>) and
//!   "Failsafe rules" (`reference/host-endpoints/failsafe`): a normal policy for ingress and
//!   egress with no rule; the node's server on 7000 stops answering (an established
//!   connection keeps working), TCP 22 and 6443 and UDP 68 still answer, the node reaches
//!   UDP 53 and TCP 6443 outside but not 7000; forwarded traffic (client A to the pod, the
//!   pod to the upstream) is untouched without `applyOnForward`. Then custom failsafe ports
//!   (in TCP 2222, out UDP 5353) replace the defaults: 22, 6443 and 53 are closed, 2222 and
//!   5353 open;
//! - `pre-dnat-nodeport` — "Apply policy to Kubernetes node ports"
//!   (<https://docs.tigera.io/calico/latest/network-policy/services/kubernetes-node-ports>)
//!   and "Pre-DNAT policy" (`reference/host-endpoints/pre-dnat`): pre-DNAT rules allow the
//!   NodePort from client A (order 10) and deny it to everyone else (order 20): client B and
//!   node-1 are dropped, client A is served; the pod behind it stays reachable from node-1's
//!   pod through the ClusterIP and directly, and client B reaches the pod directly and the
//!   node's own server;
//! - `untracked-allow-return-rule` — "Enable extreme high-connection workloads"
//!   (<https://docs.tigera.io/calico/latest/network-policy/extreme-traffic/high-connection-workloads>):
//!   under a deny-all normal policy, a `doNotTrack` ingress Allow of client A to the node's
//!   server is not enough (no conntrack, so the replies meet the deny-all egress: the model
//!   says dropped); with its explicit return rule (untracked egress Allow from port 7000 to
//!   client A) client A is served, and its flows leave no entry in the kernel's conntrack
//!   table; client B stays dropped;
//! - `apply-on-forward` — "Apply on forwarded traffic" (`reference/host-endpoints/forwarded`):
//!   a normal ingress policy denying client A (and allowing the rest) drops client A's
//!   traffic to the node but not what is forwarded through the uplink to the pod (directly,
//!   or through the NodePort); with `applyOnForward` both are dropped, client B is served;
//! - `host-egress` — "Protect Kubernetes nodes" and "Summary of host endpoint policies"
//!   (`reference/host-endpoints/summary`): an egress policy allowing port 7000 only: the node
//!   reaches the upstream's 7000 but not 7001, the failsafe outbound ports still work, the
//!   node reaches its own pod (no host endpoint between them) and its own NodePort backed by
//!   it, but not its own NodePort backed by node-1's pod ([`REMOTE_NODE_PORT`]: translated,
//!   that connection leaves by the uplink as the node's own traffic), node-1 and the pod
//!   (forwarded) are not affected, and ingress is not either;
//! - `untracked-deny-replies` — "Untracked policy" (`reference/host-endpoints/untracked`:
//!   doNotTrack rules apply to every packet, before conntrack) and felix's raw-table
//!   rendering (`rules/static.go`): untracked rules also judge the replies of *tracked*
//!   connections where they cross the host endpoint. An untracked ingress Deny of node-1's
//!   pod drops the replies of node-0 dialling its own NodePort of a service backed by that
//!   pod (`host-np-remote`, [`REMOTE_NODE_PORT`]: out of the uplink, masqueraded, the reply
//!   back on it), of node-0 and its pod reaching that pod directly, while the node's other
//!   connections and client A's NodePort (local backend) are served. The mirror: an
//!   untracked egress Deny of client A drops the node's own server's replies to client A
//!   (client B is served) but not the replies the node forwards to it (from its pod,
//!   directly or through the NodePort: forwarded packets do not pass raw output);
//! - every probe in IPv4 and IPv6, TCP and UDP (the failsafe probes on the protocol of their
//!   port).
//!
//! ```no_run
//! use dataplane_core::Dataplane;
//! use dataplane_testkit::conformance::host::{host_cases, run_host, HOST_LAB};
//! use dataplane_testkit::{Lab, LabNode};
//!
//! fn my_dataplane(node: &LabNode) -> Box<dyn Dataplane> {
//!     # let _ = node;
//!     # unimplemented!()
//! }
//!
//! let lab = Lab::new(HOST_LAB)?;
//! let report = run_host(&lab, &host_cases(), &mut |node| my_dataplane(node));
//! report.assert_ok();
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

mod case;
mod runner;
mod table;

pub use case::{
    answered, both, dropped, one, tcp, HostCase, HostProbe, HostStep, Meaning, Party, Target,
};
pub use runner::{run_host, run_host_with, HostRunOptions};
pub use table::{
    blocked_nets, cluster_ip, host_cases, host_cases_for, host_endpoint, node_states,
    party_address, ATTACKER, ATTACKER_V4, ATTACKER_V6, CLIENT_A, CLIENT_B, CUSTOM_FAILSAFE_IN,
    CUSTOM_FAILSAFE_OUT, HOST_LAB, HOST_SERVICE_PORT, NODE, NODE_PORT, OTHER_NODE,
    OTHER_UPSTREAM_PORT, REMOTE_NODE_PORT, SERVICE_PORT, UPSTREAM,
};

#[cfg(test)]
mod tests;
