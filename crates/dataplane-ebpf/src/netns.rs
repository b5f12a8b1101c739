//! Running work inside the configured network namespace.
//!
//! aya resolves interface names (and netlink talks) in the calling thread's network namespace,
//! so attach work runs with the calling thread `setns`'d into the node's namespace, and back in
//! its own one afterwards (also when the work panics). Not on a thread of its own: spawning
//! one cost ~100 µs on the 2-CPU bench VM, twice in every sync, most of an endpoint change's
//! `apply_changes` (the scaling bench's control section; two `setns` calls are ~20 µs).

use std::fs::File;
use std::path::Path;

use nix::sched::{setns, CloneFlags};

use crate::error::EbpfError;

/// The calling thread's own network namespace (per thread: `setns` moves one thread).
pub(crate) const THREAD_NETNS: &str = "/proc/thread-self/ns/net";

/// Moves the calling thread back into its namespace when dropped.
struct Home(File);

impl Drop for Home {
    fn drop(&mut self) {
        if let Err(e) = setns(&self.0, CloneFlags::CLONE_NEWNET) {
            // A thread left in the node's namespace would do everything after this (sockets,
            // interface lookups, sysctls) in the wrong one: nothing can be trusted after it.
            tracing::error!(error = %e, "returning to the thread's network namespace failed");
            std::process::abort();
        }
    }
}

/// Runs `f` in the namespace at `netns` (or as it is when `None`), on the calling thread.
pub(crate) fn in_netns<R: Send>(
    netns: Option<&Path>,
    f: impl FnOnce() -> Result<R, EbpfError> + Send,
) -> Result<R, EbpfError> {
    let Some(path) = netns else { return f() };
    let error = |p: &Path, source: std::io::Error| EbpfError::Netns {
        path: p.to_owned(),
        source,
    };
    let file = File::open(path).map_err(|e| error(path, e))?;
    let home = File::open(THREAD_NETNS).map_err(|e| error(Path::new(THREAD_NETNS), e))?;
    setns(&file, CloneFlags::CLONE_NEWNET).map_err(|e| error(path, e.into()))?;
    let _home = Home(home);
    f()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn inode(path: &str) -> u64 {
        use std::os::unix::fs::MetadataExt;
        std::fs::metadata(path).unwrap().ino()
    }

    /// Root only (it creates a namespace): the work sees the node's namespace, the thread is
    /// back in its own afterwards, after an error and after a panic too.
    #[test]
    fn work_runs_in_the_namespace_and_the_thread_returns() {
        if !nix::unistd::Uid::effective().is_root() {
            assert!(
                std::env::var_os("CI").is_none(),
                "needs root (CI=true: a skip is a failure)"
            );
            eprintln!("skipped work_runs_in_the_namespace_and_the_thread_returns: needs root");
            return;
        }
        let name = format!("dp-netns-test-{}", std::process::id());
        let status = std::process::Command::new("ip")
            .args(["netns", "add", &name])
            .status()
            .unwrap();
        assert!(status.success(), "ip netns add {name}");
        let path = std::path::PathBuf::from(format!("/run/netns/{name}"));
        let own = inode(THREAD_NETNS);
        let node = inode(path.to_str().unwrap());
        assert_ne!(own, node);
        let seen = in_netns(Some(&path), || Ok(inode(THREAD_NETNS))).unwrap();
        assert_eq!(seen, node, "the work ran in the node's namespace");
        assert_eq!(inode(THREAD_NETNS), own, "back after the work");
        let failed: Result<(), EbpfError> = in_netns(Some(&path), || {
            Err(EbpfError::Netns {
                path: path.clone(),
                source: std::io::Error::other("test"),
            })
        });
        assert!(failed.is_err());
        assert_eq!(inode(THREAD_NETNS), own, "back after an error");
        let panicked = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            let _: Result<(), EbpfError> = in_netns(Some(&path), || panic!("in the work"));
        }));
        assert!(panicked.is_err());
        assert_eq!(inode(THREAD_NETNS), own, "back after a panic");
        let missing = in_netns(Some(Path::new("/run/netns/dp-no-such-netns")), || Ok(()));
        assert!(matches!(missing, Err(EbpfError::Netns { .. })));
        let _ = std::process::Command::new("ip")
            .args(["netns", "del", &name])
            .status();
    }
}
