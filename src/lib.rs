//! `dataplane`: an embeddable Kubernetes node networking dataplane.
//!
//! Hand it a node's desired state ([`DesiredState`]) and a backend programs the kernel to match.
//! The model, validation, change tracking and the [`Dataplane`] trait live in
//! [`dataplane_core`]; backends sit behind the `ebpf` and `nft` features.

pub use dataplane_core::*;

mod open;
pub use open::{
    monotonic_now, open, DataplaneKind, OpenError, Opened, Options, Selection, UnknownKind,
};

/// The eBPF backend (TC and XDP programs loaded with aya).
#[cfg(feature = "ebpf")]
pub use dataplane_ebpf as ebpf;

/// The nftables and iptables backends.
#[cfg(feature = "nft")]
pub use dataplane_iptables as netfilter;

/// The README's Rust examples are compiled as doc-tests so that they stay true.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
struct ReadmeDoctests;
