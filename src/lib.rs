#![doc = include_str!("guide.md")]
#![warn(missing_docs)]
// The guide links to the items of every feature; the docs are meant to be built with
// `--all-features`. Built with fewer, those links have no target: not worth a warning.
#![cfg_attr(
    not(all(feature = "ebpf", feature = "nft", feature = "tokio")),
    allow(rustdoc::broken_intra_doc_links)
)]

// The root is what an embedder writes code against: the model, the trait and its reports,
// validation and the file format, opening a dataplane, health checks. Everything a
// dataplane *implementer* or a test needs lives in the named modules below, so that the root
// reads as the embedding API and `dataplane_core` stays usable directly for backend authors.

pub use dataplane_core::model::*;

// Each from its module: `dataplane_core::validate` names a module and a function, and a
// re-export from the crate root would bring both.
pub use dataplane_core::dataplane::{
    error_chain, ApplyReport, BoxDataplane, Capabilities, Dataplane, Error, Flow,
    MaintenanceReport, ObservedFrontend, ObservedState, Skipped, Stats, Warning,
};
// `Dataplane::apply_changes` takes a `ChangeSet`: whoever implements the trait (a test
// double, say) names it, so it stays beside the trait. Computing one is `implement::diff`.
pub use dataplane_core::diff::{Change, ChangeSet};
pub use dataplane_core::format::{from_json, from_yaml, to_json, to_yaml, FormatError};
pub use dataplane_core::health::{health_check, health_checks, HealthCheck};
pub use dataplane_core::validate::{validate, warnings, ValidationError};
// An address family is part of the vocabulary (a Service's families, a pod's addresses), not
// only of the reference model.
/// The CIDR type of the model's fields (`pod_cidrs`, `load_balancer_source_ranges`, ...),
/// re-exported so that an embedder uses the same version.
pub use dataplane_core::ipnetwork;
pub use dataplane_core::reference::IpFamily;

mod open;
pub use open::{
    monotonic_now, open, DataplaneKind, OpenError, Opened, Options, Selection, UnknownKind,
};

pub mod events;

// Looking at a node another process programmed (`dpctl status`): read-only.
mod inspect;
pub use dataplane_core::inspect::{Attachment, Inspect, LiveFrontend, NodeStatus, TableFill};
pub use inspect::inspect;

#[cfg(feature = "tokio")]
mod handle;
#[cfg(feature = "tokio")]
pub use handle::{AsyncDataplane, AsyncError, MaintenanceResult};

pub mod reference {
    //! The reference model: what every dataplane must do with a packet, written as plain
    //! code. [`evaluate`] gives the [`Verdict`] for a [`Packet`] entering the node at an
    //! [`Entry`]; the conformance suite compares every dataplane with it, and an embedder can
    //! use it to explain or predict what the kernel will do (`dpctl demo` prints it next to
    //! the real traffic). The helpers (eligible backends, the source-range allow list) are
    //! the parts of that decision that dataplanes share; [`policy_verdict`] is its
    //! NetworkPolicy part (which policies allow or deny a connection, per direction).

    pub use dataplane_core::policy::{
        policy_allows, policy_verdict, Decision, Party, PolicyVerdict,
    };
    pub use dataplane_core::reference::*;
}

pub mod implement {
    //! Tools for implementing [`Dataplane`](crate::Dataplane): change sets, incremental
    //! validation, warnings per service, Maglev tables, the NetworkPolicy compiler
    //! ([`compile`]: per-endpoint tables over shared peer sets, updated incrementally).
    //!
    //! An embedder does not need these: [`Dataplane::sync`](crate::Dataplane::sync) diffs
    //! and validates for it. A dataplane implementation uses them to apply a
    //! [`ChangeSet`](crate::ChangeSet) in proportion to its size.
    //!
    //! (The module is named `implement`, not `backend`, because a backend is a service
    //! endpoint in this crate, as in Kubernetes: [`Backend`](crate::Backend).)

    pub use dataplane_core::diff::{diff, service_index, ServiceIndex};
    pub use dataplane_core::maglev::{
        maglev_table, MaglevBackend, MaglevError, DEFAULT_MAGLEV_TABLE_SIZE,
    };
    pub use dataplane_core::policy_tables::{compile, CompiledPolicy, PolicyDelta};
    pub use dataplane_core::validate::{
        service_warnings, Incremental, Validator, MAX_AFFINITY_TIMEOUT_SECONDS,
    };
}

pub mod testing {
    //! Helpers for tests and benchmarks of code that embeds a dataplane.
    //!
    //! [`FakeDataplane`] is an in-memory [`Dataplane`](crate::Dataplane) driven by the
    //! reference model: hand it to the code under test instead of a kernel dataplane, inject
    //! faults ([`Fault`]) and check what the code did ([`FakeCalls`]) without root.
    //!
    //! [`synthetic`] builds deterministic desired states of any size (`synthetic::state(10_000,
    //! 10)`: ten thousand services of ten backends each) for scale tests and benchmarks.

    pub use dataplane_core::fake::{FakeCalls, FakeDataplane, Fault};
    pub use dataplane_core::synthetic;
}

/// The eBPF dataplane (TC and XDP programs loaded with aya), feature `ebpf`: its
/// configuration ([`ebpf::EbpfConfig`]: pin directory, map capacities, timeouts, XDP mode)
/// for [`Options::ebpf`], and its own tools (the supported-kernel check, `monotonic_now`).
#[cfg(feature = "ebpf")]
pub use dataplane_ebpf as ebpf;

/// The nftables and iptables dataplanes, feature `nft`: their configuration
/// ([`netfilter::NetfilterConfig`]) for [`Options::nftables`] and [`Options::iptables`], and
/// their renderers.
#[cfg(feature = "nft")]
pub use dataplane_iptables as netfilter;

/// The README's Rust examples are compiled as doc-tests so that they stay true.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
struct ReadmeDoctests;
