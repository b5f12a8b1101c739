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
//! Every pod serves TCP and UDP on ports 80 and 81, answering with its name (`x/a`), and has
//! the named container ports `serve-80-tcp`, `serve-80-udp`, `serve-81-tcp`, `serve-81-udp`;
//! every pod has a ClusterIP service `s-<pod>` in its namespace with the four ports. Each
//! node's [`DesiredState`](dataplane_core::DesiredState) has its own pods as `endpoints`
//! (labels, named ports, host-side veth), the other node's as `pods` (peers with their node),
//! the three `namespaces` with their labels, the nine services and the case's policies. SCTP
//! is not probed: the testkit has no SCTP probe (`sctp-only-port` still checks that a policy
//! allowing only SCTP isolates the pod for TCP and UDP, fail closed).
//!
//! # A case
//!
//! A [`PolicyCase`] is a sequence of [`Step`]s — apply (create or edit) policies, delete one,
//! relabel a pod, relabel a namespace. After each step the runner
//! 1. builds both nodes' states and validates them;
//! 2. computes the expected **reachability matrix** from the reference model: every client
//!    (the nine pods, and the two nodes themselves: kubelet's place) × every server pod ×
//!    {TCP, UDP} × {80, 81} × {direct to the pod address, via its ClusterIP} (792 cells) —
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
//! 4. probes the whole matrix at once: one thread per client sends all of its probes on
//!    non-blocking sockets ([`crate::traffic::probe_batch`]); a cell expected allowed must be
//!    answered by the right pod within [`PolicyRunOptions::timeout`], a cell expected denied
//!    must stay unanswered for [`PolicyRunOptions::drop_wait`] (dropped, not refused: policy
//!    drops). The drop wait is paid once per matrix, so a step takes about half a second.
//!    Every probe has a source port of its own for the whole run (each client counts through
//!    20000..30000), so a conntrack entry of an earlier step never answers a later probe as
//!    established: each cell is a new connection, checked by the policy in force;
//! 5. checks that established connections keep flowing: before a step that denies cells the
//!    step before allowed, up to four TCP connections of such cells (two direct, two through
//!    the ClusterIP) are opened and answered once; after the step they must still be answered
//!    (policy is checked on a connection's first packet; replies and later packets of an
//!    allowed connection are not re-checked — the lead's rule for every backend).
//!
//! A failed step lists its wrong cells (case, step, client, server, protocol, port, path,
//! expected and seen) and prints the e2e suite's truth table for each protocol, port and path
//! with a wrong cell. The [`Report`](super::Report) is the standard table's:
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
//!   a UDP-only port, an SCTP-only port (fail closed for TCP and UDP);
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
//! - in IPv6 as well: default deny ingress, `podSelector`, `ipBlock` with `except`;
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
mod runner;
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
