//! Errors of the netfilter backends.

use dataplane_core::{Error, ValidationError};

/// What went wrong in a netfilter backend. Converted into [`dataplane_core::Error`] at the
/// trait boundary.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum NetfilterError {
    /// The desired state is invalid; nothing was changed.
    #[error("invalid desired state: {0}")]
    Invalid(#[from] ValidationError),
    /// The state needs something this flavour cannot express; nothing was changed.
    #[error("{backend} backend does not support {feature} (needed by {object})")]
    Unsupported {
        /// Backend name.
        backend: &'static str,
        /// The missing feature.
        feature: String,
        /// The object that needs it.
        object: String,
    },
    /// A table would overflow.
    #[error("{what} is full: {needed} entries needed, capacity {capacity}")]
    Capacity {
        /// Which table.
        what: String,
        /// Entries needed.
        needed: usize,
        /// Capacity.
        capacity: usize,
    },
    /// A tool could not be started.
    #[error("{backend}: could not run {program}")]
    Spawn {
        /// Backend name.
        backend: &'static str,
        /// The program.
        program: String,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// A tool ran and failed.
    #[error("{backend}: {program} {operation} exited with {status}: {stderr}")]
    Command {
        /// Backend name.
        backend: &'static str,
        /// The program.
        program: String,
        /// What was being done.
        operation: String,
        /// Exit status.
        status: String,
        /// Its standard error, trimmed.
        stderr: String,
    },
    /// A tool's output could not be parsed.
    #[error("{backend}: cannot parse output of {operation}: {detail}")]
    Parse {
        /// Backend name.
        backend: &'static str,
        /// What was being read.
        operation: String,
        /// What did not fit.
        detail: String,
    },
    /// A broken internal invariant (a bug): nothing was changed.
    #[error("internal error in the {backend} renderer: {detail}")]
    Internal {
        /// Backend name.
        backend: &'static str,
        /// What did not hold.
        detail: String,
    },
    /// Incremental changes before a full sync.
    #[error("a full sync is required before incremental changes")]
    FullSyncRequired,
}

impl NetfilterError {
    fn backend_name(&self) -> &'static str {
        match self {
            NetfilterError::Unsupported { backend, .. }
            | NetfilterError::Spawn { backend, .. }
            | NetfilterError::Command { backend, .. }
            | NetfilterError::Parse { backend, .. }
            | NetfilterError::Internal { backend, .. } => backend,
            _ => "netfilter",
        }
    }
}

impl From<NetfilterError> for Error {
    fn from(e: NetfilterError) -> Self {
        match e {
            NetfilterError::Invalid(v) => Error::Invalid(v),
            NetfilterError::Unsupported {
                backend,
                feature,
                object,
            } => Error::Unsupported {
                dataplane: backend.to_owned(),
                feature,
                object,
            },
            NetfilterError::Capacity {
                what,
                needed,
                capacity,
            } => Error::CapacityExceeded {
                what,
                needed,
                capacity,
            },
            NetfilterError::FullSyncRequired => Error::FullSyncRequired,
            other => {
                let backend = other.backend_name().to_owned();
                let operation = match &other {
                    NetfilterError::Spawn { program, .. } => format!("running {program}"),
                    NetfilterError::Command { operation, .. }
                    | NetfilterError::Parse { operation, .. } => operation.clone(),
                    NetfilterError::Internal { .. } => "rendering".to_owned(),
                    _ => String::new(),
                };
                Error::Kernel {
                    dataplane: backend,
                    operation,
                    source: Box::new(other),
                }
            }
        }
    }
}
