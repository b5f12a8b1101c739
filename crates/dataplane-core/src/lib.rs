//! `dataplane-core`: the model, validation, change tracking, Maglev, the reference model, the
//! NetworkPolicy compiler and the [`Dataplane`] trait.
//!
//! Pure: no syscalls, no clock, no runtime. Time and randomness are arguments.
//!
//! [`FakeDataplane`] is an in-memory [`Dataplane`] for tests of code that drives one.
#![warn(missing_docs)]

/// The CIDR type of the model's fields, re-exported so that users build with the same version.
pub use ipnetwork;

pub mod counts;
pub mod dataplane;
pub mod diff;
pub mod error;
pub mod events;
pub mod fake;
pub mod format;
pub mod health;
pub mod host_policy;
pub mod inspect;
pub mod l2;
pub mod maglev;
pub mod model;
pub mod policy;
pub mod policy_tables;
pub mod reference;
// Public for the benches and the scale tests of other crates (one generator for all of
// them), not an embedder's API: hidden from the docs, no stability promise.
#[doc(hidden)]
pub mod synthetic;
pub mod validate;

pub use counts::{service_fingerprint, ServiceFingerprints};
pub use dataplane::{
    error_chain, ApplyReport, BoxDataplane, Capabilities, Dataplane, Error, Flow,
    MaintenanceReport, ObservedFrontend, ObservedState, Skipped, Stats, Warning,
};
pub use diff::{diff, service_index, Change, ChangeSet, ServiceIndex};
pub use events::{
    BlockingEvents, BoxEventSource, Direction, DropReason, EventFilter, EventKind, EventOptions,
    EventParseError, EventSource, EventVerdict, FlowEvent, L4Protocol, ObservationPoint, PeerMatch,
    TcpFlags, Timestamp, Tuple, EVENT_SCHEMA_VERSION,
};
pub use fake::FakeDataplane;
pub use format::{from_json, from_yaml, to_json, to_yaml, FormatError};
pub use health::{health_check, health_checks, HealthCheck};
pub use host_policy::{host_policies_for, uplink_host_endpoint, HostStage};
pub use inspect::{Attachment, Inspect, LiveFrontend, NodeStatus, TableFill};
pub use maglev::{maglev_table, MaglevBackend, MaglevError, DEFAULT_MAGLEV_TABLE_SIZE};
pub use model::*;
pub use policy::{policy_allows, policy_verdict, Decision, Party, PolicyVerdict};
pub use policy_tables::{compile, CompiledPolicy, PolicyDelta};
pub use reference::{
    eligible_backends, eligible_backends_with_policy, evaluate, evaluate_on_node, is_spoofed,
    node_address, reply_allowed, source_range_allow_list, source_range_allows,
    tracked_reply_passes, Eligible, Entry, FrontendKind, IpFamily, Packet, SourceSeen, TrafficKind,
    Verdict,
};
pub use validate::{service_warnings, validate, warnings, Incremental, ValidationError, Validator};

/// The README's example is compiled and run as a doc-test so that it stays true.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
struct ReadmeDoctests;
