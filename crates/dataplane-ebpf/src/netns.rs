//! Running work inside the configured network namespace.
//!
//! aya resolves interface names (and netlink talks) in the calling thread's network namespace,
//! so attach work runs on a scoped thread that has `setns`'d into the node's namespace.

use std::fs::File;
use std::path::Path;

use nix::sched::{setns, CloneFlags};

use crate::error::EbpfError;

/// Runs `f` in the namespace at `netns` (or on the current thread when `None`).
pub(crate) fn in_netns<R: Send>(
    netns: Option<&Path>,
    f: impl FnOnce() -> Result<R, EbpfError> + Send,
) -> Result<R, EbpfError> {
    let Some(path) = netns else { return f() };
    let file = File::open(path).map_err(|source| EbpfError::Netns {
        path: path.to_owned(),
        source,
    })?;
    std::thread::scope(|s| {
        s.spawn(move || {
            setns(&file, CloneFlags::CLONE_NEWNET).map_err(|e| EbpfError::Netns {
                path: path.to_owned(),
                source: std::io::Error::from(e),
            })?;
            f()
        })
        .join()
        .unwrap_or_else(|p| std::panic::resume_unwind(p))
    })
}
