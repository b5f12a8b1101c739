//! eBPF backend of the `dataplane` crate: Kubernetes Services in TC programs written in C
//! (`bpf/`), loaded with aya, with our own conntrack in pinned maps so that connections
//! survive an agent restart.
//!
//! ```text
//!            pod netns                     node netns                       other nodes
//!   [pod] --veth--> (host side) --TC ingress: dp_from_pod-->  stack/redirect --> eth0
//!                                 eth0 --XDP: dp_xdp_uplink (optional, EbpfConfig::xdp)
//!                                                        eth0 --TC ingress: dp_from_uplink
//!                                   host stack --> eth0 --TC egress:  dp_to_uplink
//!                                   host stack --> lo   --TC egress:  dp_to_lo (own NodePorts)
//! ```
//!
//! Needs Linux >= 6.6 for TCX (older kernels fall back to clsact filters, which cannot be
//! pinned), BTF, bpffs, and root (`CAP_BPF` + `CAP_NET_ADMIN`).
//!
//! Flow events (drops and rejects with their reason always; new connections and policy
//! verdicts on request) come from a BPF ring buffer: [`Dataplane::events`] on the dataplane,
//! or [`open_pinned_events`] beside a running one; see [`EbpfEvents`].
//!
//! [`Dataplane::events`]: dataplane_core::Dataplane::events
//!
//! ```no_run
//! use dataplane_core::Dataplane;
//! use dataplane_ebpf::{EbpfConfig, EbpfDataplane};
//! # fn state() -> dataplane_core::DesiredState { unimplemented!() }
//! let mut dp = EbpfDataplane::new(EbpfConfig::new("/sys/fs/bpf/dataplane"))?;
//! dp.apply(&state())?;
//! for flow in dp.flows()? {
//!     println!("{} -> {} -> {}", flow.client, flow.frontend, flow.backend);
//! }
//! # Ok::<(), dataplane_core::Error>(())
//! ```
#![warn(missing_docs)]
// `unsafe` is for what aya does not wrap: the batch map syscalls (`bpf(2)` through libc,
// `batch.rs`), opening pins with flags and detaching links (`sys.rs`), the shared mappings of the mmapable arrays (`mmap.rs`), libc calls
// (`geteuid`, `clock_gettime`, `if_nametoindex`) and the `aya::Pod` impls of the map mirror
// (`maps.rs`). Each use has a `// SAFETY:` comment.
#![allow(unsafe_code)]

mod backends;
mod batch;
mod config;
mod ct;
mod dataplane;
mod error;
mod events;
mod hook;
mod host_policy;
mod l2;
mod layout;
mod live;
mod loader;
mod local;
mod loopback;
mod maintain;
mod objects;
mod pins;
// The table of the maps: public (hidden) for the BTF layout test, which is another crate.
#[doc(hidden)]
pub mod map_table;
// The Rust mirror of `bpf/lib/maps.h`: public for the BTF layout test and the tests that
// write conntrack entries themselves, not part of the embedder's API (hidden).
#[doc(hidden)]
pub mod maps;
mod mmap;
mod names;
mod netns;
mod plan;
mod policy;
mod support;
mod sys;
mod test_run;
mod writer;

pub use config::{
    AttachMode, Capacities, CtTimeouts, EbpfConfig, EventLimit, EventLimitError, EventLimits,
    XdpMode, DEFAULT_L2_LIVENESS,
};
pub use dataplane::EbpfDataplane;
pub use error::EbpfError;
pub use events::{open_pinned_events, EbpfEvents};
pub use host_policy::{HostRuleDrops, HostRuleRef};
pub use live::LiveEbpf;
pub use loader::remove_pinned;
pub use maintain::{
    maintenance_interval, monotonic_now, MAX_MAINTENANCE_INTERVAL, MIN_MAINTENANCE_INTERVAL,
};
pub use support::is_supported;
// Public for the tests and benches (which are separate crates), not for embedders: hidden
// from the docs and outside the API this crate keeps stable. The compiled objects and the
// program names are for the BTF layout and socket tests; `Hook` names the program that
// `EbpfDataplane::run_packet` runs, `PacketRun` is what it returns.
#[doc(hidden)]
pub use loader::{Hook, SOCK_PROGRAMS};
#[doc(hidden)]
pub use objects::{floor_object, sock_object, tc_host_object, tc_pod_object, xdp_uplink_object};
// The layout records of the pinned maps, for the upgrade tests.
#[doc(hidden)]
pub use layout::{expected_layout, LayoutRecord, LAYOUT_MAP};
#[doc(hidden)]
pub use test_run::{PacketRun, RunOn};
