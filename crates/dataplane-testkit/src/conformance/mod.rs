//! The conformance table: one behaviour table, run against every backend and against core's
//! reference model (kube-proxy's `packetFlowTest`, with real packets).
//!
//! For each [`Case`] the runner
//! 1. builds each node's [`DesiredState`](dataplane_core::DesiredState) from
//!    [`Lab::desired_state`](crate::Lab::desired_state) and the case's services;
//! 2. asks [`dataplane_core::evaluate`] what should happen at the ingress node and compares it
//!    with the row: a disagreement is a *table* failure (the row is wrong, or the model is);
//! 3. skips the row, visibly, when the backend's [`Capabilities`](dataplane_core::Capabilities)
//!    lack something it needs;
//! 4. applies the states to every node's backend (full sync, instances reused across rows);
//! 5. sends real TCP or UDP probes from the client's namespace and checks the answering backend
//!    and the source address it saw, and that each answer agrees with the reference model for
//!    that exact 5-tuple.
//!
//! ```text
//!   Pod(i) ──veth──▶ node(i)   ─┐            External(k) ──underlay──▶ node (the row's `node`,
//!   Host(n) = node n namespace ─┴─ ingress      or node 0 for a ClusterIP, the pod's node for
//!                                               a pod IP); the runner adds the route
//! ```

//!
//! The modules, each importing only those listed before it: `case` (the vocabulary a row is
//! written in: [`Case`], [`Client`], [`Destination`], [`Expect`], [`Seen`], [`Requirement`]),
//! `report` ([`Report`] and its rows), `runner` ([`run`], [`run_with`]: the checks above),
//! `table` ([`standard_cases`] for [`STANDARD_LAB`], kube-proxy parity rows included) and
//! `port_reuse` ([`run_port_reuse`], the source-port clash rows, a runner of its own),
//! [`policy`] (the NetworkPolicy reachability matrices: [`policy::run_policy`] over
//! [`policy::policy_cases`] in [`policy::POLICY_LAB`], reporting in the same [`Report`]) and
//! [`host`] (host endpoint policy, Calico's model: [`host::run_host`] over
//! [`host::host_cases`] in [`host::HOST_LAB`], the same [`Report`]; it shares the policy
//! runner's re-probe rule), and [`l2`] (L2 announcements of LoadBalancer IPs and
//! ExternalIPs: [`l2::run_l2`] over [`l2::l2_cases`] in [`l2::L2_LAB`], the same [`Report`]).

mod case;
pub mod host;
pub mod l2;
pub mod policy;
mod port_reuse;
mod report;
mod runner;
mod table;

pub use case::{Case, Client, Destination, Expect, Requirement, Seen};
pub use port_reuse::run_port_reuse;
pub use report::{Report, RowOutcome, RowReport};
pub use runner::{run, run_with, RunOptions};
pub use table::{standard_cases, STANDARD_LAB};
