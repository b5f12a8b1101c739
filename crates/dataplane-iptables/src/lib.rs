//! `dataplane-iptables`: the netfilter backends of the dataplane crate.
//!
//! Two flavours implement [`dataplane_core::Dataplane`]:
//!
//! - [`NftablesDataplane`]: one `inet` table of its own, verdict maps keyed by
//!   `daddr . l4proto . dport` (O(1) per packet), random backend choice through one global slot
//!   map, applied as one atomic `nft -f -` transaction; partial syncs touch only the chains and
//!   elements of the services that changed. Kubernetes NetworkPolicy in the same table and
//!   transaction ([`nft::policy`]).
//! - [`IptablesDataplane`]: kube-proxy iptables style chains, applied with
//!   `iptables-restore --noflush` so that rules it does not own are never touched;
//!   NetworkPolicy as filter chains over ipsets ([`iptables::policy`]).
//!
//! Renderers are pure functions (state → text) in [`nft::render`] and [`iptables::render`].
//!
//! The cargo feature `fault-injection` (off by default, for tests only) adds
//! `set_fail_transactions` to both backends: every following transaction ends with an
//! operation the kernel refuses, to show that a failed apply changes nothing.
//!
//! Both leave connection tracking to the kernel's conntrack, which expires its own entries:
//! [`Dataplane::maintain`](dataplane_core::Dataplane::maintain) is the trait's no-op default
//! and there is no maintenance interval. As kube-proxy does, an apply deletes the UDP and SCTP
//! entries of the frontends it touched that were answered by no serving endpoint (removed
//! endpoints, removed services, ports that had none): a client that keeps its source port
//! would otherwise keep its entry, and the removed endpoint, forever.
#![warn(missing_docs)]

pub mod config;
mod conntrack;
pub mod error;
pub mod eventlog;
pub mod events;
mod exec;
mod flavour;
pub mod iptables;
mod l2;
mod live;
pub mod nft;
pub mod plan;

pub use config::{IptablesMode, NetfilterConfig};
pub use error::NetfilterError;
pub use iptables::IptablesDataplane;
pub use live::LiveNetfilter;
pub use nft::NftablesDataplane;
