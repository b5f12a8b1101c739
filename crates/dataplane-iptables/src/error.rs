//! Errors of the netfilter backends.
//!
//! What is wrong with the input (invalid, unsupported, over capacity) is a
//! [`dataplane_core::Error`] from the start; [`NetfilterError`] is what goes wrong in the
//! kernel and the tools that program it, and reaches the trait's callers as the source of an
//! [`Error::Kernel`]. The wrapper names the backend and the operation, so these messages do
//! not: each part of a chain is printed once.

use dataplane_core::Error;

/// What went wrong while programming or reading netfilter. Converted into
/// [`dataplane_core::Error::Kernel`] at the trait boundary.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum NetfilterError {
    /// A tool could not be started (or its input not written).
    #[error("could not run {program}")]
    Spawn {
        /// Backend name.
        backend: &'static str,
        /// What was being done.
        operation: String,
        /// The program.
        program: String,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// A tool ran and failed.
    #[error("{program} exited with {status}: {stderr}")]
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
    #[error("unexpected output: {detail}")]
    Parse {
        /// Backend name.
        backend: &'static str,
        /// What was being read.
        operation: String,
        /// What did not fit.
        detail: String,
    },
    /// A broken internal invariant (a bug): nothing was changed.
    #[error("internal error (a bug): {detail}")]
    Internal {
        /// Backend name.
        backend: &'static str,
        /// What did not hold.
        detail: String,
    },
    /// Two objects would get one hashed name (a chain or set shared by both would give one
    /// the other's rules or members): refused before anything is written.
    #[error("{first} and {second} would both be named {name}")]
    NameCollision {
        /// Backend name.
        backend: &'static str,
        /// The name.
        name: String,
        /// The object that has it.
        first: String,
        /// The object that would get it too.
        second: String,
    },
    /// Another socket reads the NFLOG group (the kernel gives a group to one reader per
    /// network namespace): the dataplane's own event stream, or another inspector.
    #[error(
        "NFLOG group {group} is held by another reader (such as the node agent's --flow-log or \
         another `dpctl flows`): the kernel lets one socket bind a group per network namespace"
    )]
    NflogGroupBusy {
        /// Backend name.
        backend: &'static str,
        /// The group.
        group: u16,
    },
    /// A configuration field out of its range: refused before anything touches the kernel.
    #[error("NetfilterConfig::{field} {detail}")]
    InvalidConfig {
        /// Backend name.
        backend: &'static str,
        /// The field (`nflog_rate`).
        field: &'static str,
        /// What is wrong with its value.
        detail: String,
    },
    /// The rules of the first family could not be kept aside (in a temporary file) to be put
    /// back if the second family's restore fails: refused before anything is written.
    #[error("the rules to put back on a failure could not be kept")]
    Snapshot {
        /// Backend name.
        backend: &'static str,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// A restore failed (`failed`) after the restore of an earlier family had committed, and
    /// putting that family's rules back failed too (`source`): the kernel holds that family's
    /// part of the refused state. The backend is dirty: the next sync is a full one, which
    /// reads the kernel.
    #[error("the {family} rules stay changed: putting them back failed after {failed}")]
    RollbackFailed {
        /// Backend name.
        backend: &'static str,
        /// The family left changed (`IPv4`).
        family: &'static str,
        /// The failure that made the rollback necessary.
        failed: Box<NetfilterError>,
        /// Why the rollback failed.
        #[source]
        source: Box<NetfilterError>,
    },
    /// An inspector found nothing of ours to read.
    #[error("nothing is programmed: {detail}")]
    NothingProgrammed {
        /// Backend name.
        backend: &'static str,
        /// What was looked for and not found.
        detail: String,
    },
}

impl From<NetfilterError> for Error {
    fn from(e: NetfilterError) -> Self {
        let (backend, operation) = match &e {
            NetfilterError::Spawn {
                backend, operation, ..
            }
            | NetfilterError::Command {
                backend, operation, ..
            }
            | NetfilterError::Parse {
                backend, operation, ..
            } => (*backend, operation.clone()),
            NetfilterError::Internal { backend, .. }
            | NetfilterError::NameCollision { backend, .. } => (*backend, "rendering".to_owned()),
            NetfilterError::NflogGroupBusy { backend, .. } => {
                (*backend, "opening flow events".to_owned())
            }
            NetfilterError::NothingProgrammed { backend, .. } => {
                (*backend, "inspecting".to_owned())
            }
            NetfilterError::InvalidConfig { backend, .. } => {
                (*backend, "checking the configuration".to_owned())
            }
            NetfilterError::Snapshot { backend, .. } => {
                (*backend, "keeping the rules to put back".to_owned())
            }
            NetfilterError::RollbackFailed { backend, .. } => (*backend, "rollback".to_owned()),
        };
        Error::Kernel {
            dataplane: backend.to_owned(),
            operation,
            source: Box::new(e),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The messages of an error and its sources, outermost first.
    fn chain(e: &dyn std::error::Error) -> Vec<String> {
        let mut out = vec![e.to_string()];
        let mut next = e.source();
        while let Some(s) = next {
            out.push(s.to_string());
            next = s.source();
        }
        out
    }

    /// Each fact (backend, operation, program) appears once in the printed chain.
    #[test]
    fn a_converted_error_prints_each_part_once() {
        let cases = [
            NetfilterError::Spawn {
                backend: "iptables",
                operation: "partial sync".to_owned(),
                program: "iptables-restore".to_owned(),
                source: std::io::Error::new(std::io::ErrorKind::NotFound, "no such file"),
            },
            NetfilterError::Command {
                backend: "nftables",
                program: "nft".to_owned(),
                operation: "full sync".to_owned(),
                status: "exit status: 1".to_owned(),
                stderr: "Error: Could not process rule".to_owned(),
            },
            NetfilterError::Parse {
                backend: "nftables",
                operation: "list table".to_owned(),
                detail: "not JSON".to_owned(),
            },
            NetfilterError::Internal {
                backend: "nftables",
                detail: "no slot group".to_owned(),
            },
        ];
        for e in cases {
            let parts = chain(&Error::from(e));
            let printed = parts.join(": ");
            for (i, a) in parts.iter().enumerate() {
                for b in &parts[i + 1..] {
                    assert!(
                        !a.contains(b.as_str()) && !b.contains(a.as_str()),
                        "{printed}"
                    );
                }
            }
            // Backend, operation and program, each a whole word (or words) once.
            let words: Vec<&str> = printed
                .split(|c: char| c.is_whitespace() || c == ':')
                .filter(|w| !w.is_empty())
                .collect();
            for fact in [
                "iptables",
                "nftables",
                "iptables-restore",
                "nft",
                "partial sync",
                "full sync",
                "list table",
                "rendering",
            ] {
                let fact: Vec<&str> = fact.split(' ').collect();
                let count = words.windows(fact.len()).filter(|w| *w == fact).count();
                assert!(count <= 1, "{fact:?} twice: {printed}");
            }
        }
    }
}
