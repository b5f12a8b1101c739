//! Errors of the eBPF backend. They convert into [`dataplane_core::Error::Kernel`].
//!
//! No variant holds a type of aya (or another crate we depend on): a cause is boxed as
//! `dyn Error + Send + Sync`, so that an embedder matching on [`EbpfError`] is not tied to the
//! aya version this crate pins. The cause's message stays reachable through `source()`.

use std::path::PathBuf;

/// What went wrong while loading, attaching or writing maps.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum EbpfError {
    /// The kernel refused to load an object or program.
    #[error("loading {object}")]
    Load {
        /// Object or program name.
        object: String,
        /// Cause.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync + 'static>,
    },
    /// A map operation failed.
    #[error("map {map}: {operation}")]
    Map {
        /// Map name.
        map: &'static str,
        /// What was being done.
        operation: String,
        /// Cause (the loader library's map error, boxed: see the module docs).
        #[source]
        source: Box<dyn std::error::Error + Send + Sync + 'static>,
    },
    /// Attaching or detaching a program failed.
    #[error("attaching {program} to {interface}")]
    Attach {
        /// Interface name.
        interface: String,
        /// Program name.
        program: String,
        /// Cause.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync + 'static>,
    },
    /// Entering the configured network namespace failed.
    #[error("entering network namespace {path}")]
    Netns {
        /// The namespace path.
        path: PathBuf,
        /// Cause.
        #[source]
        source: std::io::Error,
    },
    /// A bpffs path could not be created, read or removed.
    #[error("pin path {path}")]
    Pin {
        /// The path.
        path: PathBuf,
        /// Cause.
        #[source]
        source: std::io::Error,
    },
    /// A pinned map holds another version's layout that this version can neither read nor
    /// migrate (see the crate README, "Upgrades over old pins"). Nothing was changed.
    #[error(
        "pinned map {map} in {} has {found}, this version needs {expected}: {what_to_do}",
        pin_dir.display()
    )]
    IncompatiblePins {
        /// The map's name.
        map: String,
        /// The pin directory.
        pin_dir: PathBuf,
        /// What the pinned map is (its layout record, or its sizes).
        found: String,
        /// What this version needs.
        expected: String,
        /// What the operator can do.
        what_to_do: String,
    },
    /// The system cannot run this backend.
    #[error("eBPF backend not supported here: {reason}")]
    NotSupported {
        /// Why.
        reason: String,
    },
}

impl EbpfError {
    pub(crate) fn map(
        map: &'static str,
        operation: impl Into<String>,
        source: aya::maps::MapError,
    ) -> Self {
        Self::Map {
            map,
            operation: operation.into(),
            source: Box::new(source),
        }
    }
}

/// The result of deleting a map key, with "no such key" taken as done: the key went already
/// (the LRU evicted it, the datapath replaced it, an earlier delete of the same pass removed
/// it). aya 0.14 reports the kernel's `ENOENT` from `bpf_map_delete_elem` as a
/// `SyscallError`, not as `KeyNotFound`; both count.
pub(crate) fn removed(result: Result<(), aya::maps::MapError>) -> Result<(), aya::maps::MapError> {
    match result {
        Err(aya::maps::MapError::KeyNotFound) => Ok(()),
        Err(aya::maps::MapError::SyscallError(e))
            if e.io_error.raw_os_error() == Some(libc::ENOENT) =>
        {
            Ok(())
        }
        other => other,
    }
}

impl EbpfError {
    /// What was being done, for [`dataplane_core::Error::Kernel`]'s `operation`: the
    /// details (which map, object, interface or path) are the error's own message, which
    /// follows as its source.
    fn operation(&self) -> &'static str {
        match self {
            EbpfError::Load { .. } => "loading the BPF programs",
            EbpfError::Map { .. } => "a BPF map operation",
            EbpfError::Attach { .. } => "attaching a program",
            EbpfError::Netns { .. } => "entering the network namespace",
            EbpfError::Pin { .. } => "managing the pin directory",
            EbpfError::NotSupported { .. } => "checking for eBPF support",
            EbpfError::IncompatiblePins { .. } => "adopting the pinned maps",
        }
    }
}

/// `operation` says what was being done and the [`EbpfError`] is the source: each message
/// of the chain prints once.
impl From<EbpfError> for dataplane_core::Error {
    fn from(e: EbpfError) -> Self {
        dataplane_core::Error::Kernel {
            dataplane: crate::plan::BACKEND.to_owned(),
            operation: e.operation().to_owned(),
            source: Box::new(e),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::error::Error as _;

    use super::EbpfError;

    /// `err` and each of its sources, as they print.
    fn chain(err: &dataplane_core::Error) -> Vec<String> {
        let mut out = vec![err.to_string()];
        let mut next = err.source();
        while let Some(e) = next {
            out.push(e.to_string());
            next = e.source();
        }
        out
    }

    #[test]
    fn a_converted_error_prints_each_message_once() {
        let enoent = || std::io::Error::from_raw_os_error(libc::ENOENT);
        let errors = [
            EbpfError::Load {
                object: "tc_pod.o".to_owned(),
                source: "program missing".into(),
            },
            EbpfError::map(
                crate::map_table::CT.name,
                "removing",
                aya::maps::MapError::SyscallError(aya::sys::SyscallError {
                    call: "bpf_map_delete_elem",
                    io_error: enoent(),
                }),
            ),
            EbpfError::Attach {
                interface: "eth0".to_owned(),
                program: crate::Hook::FromUplink.program().to_owned(),
                source: Box::new(enoent()),
            },
            EbpfError::Netns {
                path: "/run/netns/node-0".into(),
                source: enoent(),
            },
            EbpfError::Pin {
                path: "/sys/fs/bpf/dataplane".into(),
                source: enoent(),
            },
            EbpfError::NotSupported {
                reason: "needs root".to_owned(),
            },
            EbpfError::IncompatiblePins {
                map: "dp_svc".to_owned(),
                pin_dir: "/sys/fs/bpf/dataplane".into(),
                found: "layout version 2".to_owned(),
                expected: "layout version 1".to_owned(),
                what_to_do: "remove it".to_owned(),
            },
        ];
        for e in errors {
            let detail = e.to_string();
            let chain = chain(&e.into());
            assert!(
                chain.iter().any(|m| m == &detail),
                "the detail is in the chain: {chain:?}"
            );
            for (i, m) in chain.iter().enumerate() {
                for later in &chain[i + 1..] {
                    assert!(
                        !m.contains(later.as_str()),
                        "{m:?} repeats {later:?}: {chain:?}"
                    );
                }
            }
        }
    }
}
