//! The NetworkPolicy conformance table: the Kubernetes e2e suite's reachability matrices
//! (`test/e2e/network/netpol` in kubernetes/kubernetes), with real packets, against the
//! reference model and every backend.
//!
//! # The cluster
//!
//! The e2e suite's layout in [`POLICY_LAB`]: namespaces `x`, `y`, `z` (labels `ns: <name>`,
//! and `kubernetes.io/metadata.name` as the API server sets it), pods `a`, `b`, `c` in each
//! (label `pod: <name>`), spread over two nodes so that most pairs cross the underlay:
//!
//! ```text
//!   node-0: x/a x/b x/c y/a y/b        node-1: y/c z/a z/b z/c      (dual-stack)
//! ```
//!
//! Every pod serves TCP, UDP and SCTP on ports 80 and 81, answering with its name (`x/a`), and has
//! the named container ports `serve-80-tcp`, `serve-80-udp`, `serve-81-tcp`, `serve-81-udp`
//! — numbered as named, except z/c's `serve-80-tcp`, which is 81: with the same numbers
//! everywhere a backend resolving an egress rule's name on the client, or to a fixed number,
//! would pass; every pod has a ClusterIP service `s-<pod>` in its namespace with the four
//! ports. Each
//! node's [`DesiredState`](dataplane_core::DesiredState) has its own pods as `endpoints`
//! (labels, named ports, host-side veth), the other node's as `pods` (peers with their node),
//! the three `namespaces` with their labels, the nine services and the case's policies. A case
//! marked [`PolicyCase::with_sctp`] also has SCTP cells: every client to SCTP ports 80 and 81
//! of every pod's address (the services have no SCTP port, so no ClusterIP cells), where the
//! backend declares SCTP ([`Requirement::Sctp`](crate::conformance::Requirement::Sctp), as in
//! the service table; a backend without it runs the case without them, with a skipped
//! "SCTP cells" row). The other cases have none: each SCTP probe is a thread of its own.
//!
//! # A case
//!
//! A [`PolicyCase`] is a sequence of [`Step`]s — apply (create or edit) policies, delete one,
//! relabel a pod, relabel a namespace. After each step the runner
//! 1. builds both nodes' states and validates them;
//! 2. computes the expected **reachability matrix** from the reference model: every client
//!    (the nine pods, and the two nodes themselves: kubelet's place) × {IPv4, IPv6} × every
//!    server pod × {TCP, UDP} × {80, 81} × {direct to the pod address, via its ClusterIP}
//!    (1 584 cells; IPv4 only where the lab or the backend is single-stack; SCTP cases: 396
//!    direct SCTP cells more) —
//!    direct cells from [`dataplane_core::evaluate`] on the client's node (untouched =
//!    allowed, drop = denied), ClusterIP cells from `evaluate` after DNAT (the service's one
//!    backend kept = allowed); a node reaches its own pods whatever the policies (the fixed
//!    rule), another node is an address like any other; [`dataplane_core::policy_allows`]
//!    must give the same answer on the client's node (egress) and on the server's node
//!    (ingress), else the row fails as a *table* failure;
//! 3. programs every node's backend: the first step with `apply` (a full sync), every later
//!    step with `apply_changes` of the [`diff`](dataplane_core::diff()) from the step before,
//!    so that the backends' incremental paths (policy, pod label, namespace label changes)
//!    are what is tested; an error fails the row and ends the case;
//! 4. probes the whole matrix, both families, at once: one thread per client sends all of its
//!    probes on non-blocking sockets ([`crate::traffic::probe_batch`]); a cell expected
//!    allowed must be answered by the right pod within [`PolicyRunOptions::timeout`], a cell
//!    expected denied must stay unanswered for [`PolicyRunOptions::drop_wait`] (dropped, not
//!    refused: policy drops). The drop wait is paid once per matrix, so a step takes about
//!    half a second. A TCP probe whose handshake completed but whose answer did not come is
//!    *connected*, never a drop: it fails a denied cell. Then, once, from fresh ports and
//!    with the full timeout, a second batch re-probes the allowed cells left unanswered
//!    (loss under load is not a dataplane's verdict and UDP does not retransmit; the retry
//!    is sound because policy verdicts are deterministic — a wrongly dropped cell is dropped
//!    again, a retry can only turn loss into an answer), and, when an allowed cell answered
//!    later than half the drop wait (a slow batch), the denied cells that timed out (the
//!    drop wait could not tell a drop from a late answer);
//!
//!    Every probe has a source port of its own for the whole run, so a conntrack entry of an
//!    earlier step never answers a later probe as established: each cell is a new
//!    connection, checked by the policy in force. Pods count through 1024..15000 (stepping
//!    over the lab's server port), nodes through 15000..30000: disjoint, because a pod
//!    reaching itself through its ClusterIP is masqueraded to its node's address keeping its
//!    source port, which made it the same connection as its node's probe of that pod from
//!    the same port — the two first packets raced for one conntrack entry and the loser was
//!    dropped (the "node-1 → z/c UDP/80 via ClusterIP, no answer" flake). A run whose cases
//!    need more ports than a range has does not start (no silent wrap), and a re-probe
//!    beyond the range fails its row;
//! 5. checks that established connections keep flowing: before a step that denies cells the
//!    step before allowed, up to four TCP connections of such cells (two direct, two through
//!    the ClusterIP) are opened and answered once; after the step they must still be answered
//!    (policy is checked on a connection's first packet; replies and later packets of an
//!    allowed connection are not re-checked — the lead's rule for every backend);
//! 6. in a case marked [`PolicyCase::forged`] (`anti-spoofing`), sends forged datagrams
//!    before the matrix: pods z/a (z/c's node) and y/a (the other node) send UDP to a sink
//!    on z/c (port 82, recording what arrives) from x/a's address, and in IPv6 from node-1's
//!    ([`crate::traffic::send_forged`]: a socket with `IP_TRANSPARENT` bound to the forged
//!    address, root in the pod's namespace). The policy lets x/a (any port) and node-1
//!    (kubelet's rule) reach z/c, so only the source check can stop them. The expectation
//!    is the reference model's ([`dataplane_core::evaluate`] with `Entry::FromPod(client)`
//!    and the forged source: with policies, a local pod's packet from an address that is not
//!    its own is dropped — the lead's anti-spoofing rule, [`dataplane_core::is_spoofed`]);
//!    the check is whether the sink got the datagram (no answer can come back to a forger).
//!    Without policies they must arrive: the forgery works, so a drop means something. No
//!    IPv4 node address: a node drops a packet that arrives with its own IPv4 address as
//!    source itself (a martian), whatever the dataplane.
//!
//! A failed step lists its wrong cells (case, step, client, server, protocol, port, path,
//! family, expected and seen) and prints the e2e suite's truth table for each family,
//! protocol, port and path with a wrong cell. The [`Report`](super::Report) is the standard table's:
//! `report.assert_ok()` panics with all of it.
//!
//! Before the first case the runner applies the no-policy state and makes every client reach
//! every pod once in each family (warm-up: neighbour entries exist before a burst of probes
//! needs them).
//!
//! # What the cases cover, and where they come from
//!
//! [`policy_cases`] (each named after its e2e test or documentation example, in
//! [`PolicyCase::source`]):
//! - default deny ingress, egress, both; allow all ingress and egress after a deny;
//! - `podSelector`; `namespaceSelector` by the name label and by custom labels; both in one
//!   peer (AND) vs two peers (OR); several pod and namespace selectors; `matchExpressions`
//!   `In`, `NotIn`, `Exists`, `DoesNotExist`;
//! - ports: numbered, named (ingress, ingress from a namespace, egress — resolved on the
//!   destination pod), `endPort` ranges (ingress, edited; egress), any port of one protocol,
//!   a UDP-only port; SCTP cells: an SCTP-only port (`sctp-only-port`: SCTP/80 admitted,
//!   SCTP/81 and TCP and UDP on 80 denied, fail closed), a TCP port that does not admit SCTP
//!   on the same number (`tcp-only-port-denies-sctp`), an egress SCTP port
//!   (`sctp-egress-port`);
//! - several policies on one pod (union; allow-all taking precedence for ingress and egress);
//!   policies in different namespaces; ingress and egress in one policy and controlled
//!   independently; egress denied on the client although the server allows it;
//! - `ipBlock` matching pod addresses: one pod's /32, the cluster CIDR except a node's pod
//!   CIDR (egress and ingress), an address both in `except` and in another peer's CIDR
//!   (allowed);
//! - service traffic checked after DNAT: egress to pod y/b allows its ClusterIP; an `ipBlock`
//!   of the service CIDR allows no service; egress denied except a DNS-like UDP port;
//! - updates mid-case: a policy edited, a pod relabelled into and out of a selection, a
//!   namespace relabelled, policies deleted (back to open);
//! - every case in IPv6 as well (same batch), and the `ipBlock` `except` cases again with
//!   IPv6 CIDRs;
//! - anti-spoofing: pods forging another pod's and (IPv6) the node's address, dropped with
//!   policies, delivered without;
//! - cluster-wide ordered policy (issue 22, the AdminNetworkPolicy model), `cluster-tiers`: a
//!   baseline deny applies only where no NetworkPolicy isolates the pod, a cluster Deny beats
//!   a NetworkPolicy Allow, a Pass defers to NetworkPolicy. A backend without
//!   [`Capabilities::cluster_policy`](dataplane_core::Capabilities::cluster_policy) skips
//!   the case, as one visible skipped row (and its probes leave the source-port budget);
//!   host endpoint policy has no cells in this matrix (its clients and servers are pods and
//!   nodes reaching pods): core's `tests/tiers.rs` holds its reference cases;
//! - in every case, the nodes as clients: a node reaches its own pods whatever the policies
//!   (the docs: "traffic to and from the node where a Pod is running is always allowed"),
//!   another node is matched like any address outside the cluster's pods.
//!
//! Differences from the e2e suite: every case probes the whole matrix (all nine pods, both
//! protocols, both ports, directly and through a ClusterIP) where an e2e test probes the
//! pods, protocol and port it is about; loopback cells (a pod reaching itself, directly or
//! through its own service) are expected allowed, as the reference model says, where the
//! suite ignores them (kubernetes/kubernetes#95879).
//!
//! A backend's test:
//!
//! ```no_run
//! use dataplane_core::Dataplane;
//! use dataplane_testkit::conformance::policy::{policy_cases, run_policy, POLICY_LAB};
//! use dataplane_testkit::{Lab, LabNode};
//!
//! fn my_dataplane(node: &LabNode) -> Box<dyn Dataplane> {
//!     # let _ = node;
//!     # unimplemented!()
//! }
//!
//! let lab = Lab::new(POLICY_LAB)?;
//! let report = run_policy(&lab, &policy_cases(), &mut |node| my_dataplane(node));
//! report.assert_ok();
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

mod case;
mod layout;
pub(super) mod runner;
mod table;

pub use case::{
    all, any_port, expression, expressions, ip_block, labels, named_port, namespaces, pods,
    pods_in, policy, port, port_range, rule, PolicyBuilder, PolicyCase, Step,
};
pub use layout::{
    cluster_cidr, node_pod_cidr, pod_address, pod_host_cidr, service_cidr, NAMESPACES, PODS,
    POLICY_LAB, POLICY_PORTS, POLICY_PROTOCOLS,
};
pub use runner::{run_policy, run_policy_with, Path, PolicyRunOptions};
pub use table::policy_cases;

#[cfg(test)]
mod tests;
