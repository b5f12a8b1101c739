//! The error of every dataplane operation, in a module of its own so that the trait
//! (`dataplane`) and the event sources (`events`) can both use it without importing each other.

use crate::validate::ValidationError;

/// Errors of a [`Dataplane`](crate::Dataplane) (and of the event and inspection sources).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The desired state is invalid; nothing was changed.
    #[error("invalid desired state: {0}")]
    Invalid(#[from] ValidationError),
    /// The state needs something the backend cannot do; nothing was changed.
    #[error("the {dataplane} dataplane does not support {feature} (needed by {object})")]
    Unsupported {
        /// The dataplane's name ([`Capabilities::dataplane`](crate::Capabilities::dataplane)).
        dataplane: String,
        /// The missing capability.
        feature: String,
        /// The object that needs it.
        object: String,
    },
    /// A capacity would be exceeded; nothing was changed.
    #[error("{what} is full: {needed} entries needed, capacity {capacity}")]
    CapacityExceeded {
        /// Which table.
        what: String,
        /// Entries the state needs.
        needed: usize,
        /// Configured capacity.
        capacity: usize,
    },
    /// `apply_changes` was called before a successful full `apply`, after a failure, or with a
    /// change the backend can only make with the whole state (it changed nothing): call
    /// `apply` with the new state.
    #[error("a full sync is required before incremental changes")]
    FullSyncRequired,
    /// The kernel (or a tool the backend drives) refused an operation.
    #[error("{dataplane}: {operation} failed")]
    Kernel {
        /// The dataplane's name ([`Capabilities::dataplane`](crate::Capabilities::dataplane)).
        dataplane: String,
        /// What was being done.
        operation: String,
        /// The cause.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync + 'static>,
    },
}

/// `e` and its causes on one line, `": "` between them: the whole story of a failure for a
/// log line or a report (each error in the chain prints only its own part).
pub fn error_chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        out.push_str(": ");
        out.push_str(&s.to_string());
        source = s.source();
    }
    out
}
