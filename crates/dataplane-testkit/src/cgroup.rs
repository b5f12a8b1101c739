//! A cgroup v2 for the calling process, for tests of cgroup-attached programs (socket-level
//! load balancing): [`CgroupScope::enter`] creates a child cgroup, moves this whole process
//! into it, and on drop moves it back and removes it. Only this process's sockets see what is
//! attached there.
//!
//! A lab runs every node's pods as threads of one process; [`CgroupScope::threaded_child`]
//! gives the threads of some namespaces (one node's pods) a threaded cgroup of their own, so
//! that what is attached there sees only their sockets, as it would see only one node's pods.
//! It records the cgroup on those namespaces' handles ([`NetNs::set_thread_cgroup`]): the
//! namespace module writes a thread into it on entering and knows nothing else of cgroups.

use std::path::{Path, PathBuf};

use crate::netns::NetNs;

/// A cgroup v2 operation of [`CgroupScope`] (or of finding the hierarchy) failed.
#[derive(Debug, thiserror::Error)]
#[error("cgroup {}: cannot {operation}", path.display())]
pub struct CgroupError {
    /// The cgroup directory or file.
    pub path: PathBuf,
    /// What was being done.
    pub operation: &'static str,
    /// The cause.
    #[source]
    pub source: std::io::Error,
}

const CGROUP2_SUPER_MAGIC: i64 = 0x6367_7270;
/// Where a cgroup v2 hierarchy is mounted when the machine has none mounted.
const FALLBACK_MOUNT: &str = "/run/dataplane-testkit/cgroup2";

/// This process inside its own cgroup v2 (see the module docs).
#[derive(Debug)]
pub struct CgroupScope {
    path: PathBuf,
    previous: PathBuf,
    children: Vec<PathBuf>,
    /// Handles of the namespaces given a threaded child, cleared again on drop.
    assigned: Vec<NetNs>,
}

fn err(path: impl Into<PathBuf>, operation: &'static str, source: std::io::Error) -> CgroupError {
    CgroupError {
        path: path.into(),
        operation,
        source,
    }
}

fn is_cgroup2(p: &Path) -> bool {
    nix::sys::statfs::statfs(p).is_ok_and(|s| s.filesystem_type().0 == CGROUP2_SUPER_MAGIC)
}

/// The mount point of the cgroup v2 hierarchy, mounting it when nothing has.
pub fn cgroup2_root() -> Result<PathBuf, CgroupError> {
    let mountinfo = std::fs::read_to_string("/proc/self/mountinfo")
        .map_err(|e| err("/proc/self/mountinfo", "read", e))?;
    // Fields: id parent major:minor root mount-point options... - fstype source options.
    for line in mountinfo.lines() {
        let Some((left, right)) = line.split_once(" - ") else {
            continue;
        };
        let fields: Vec<&str> = left.split(' ').collect();
        if right.starts_with("cgroup2 ") && fields.get(3) == Some(&"/") {
            if let Some(mount) = fields.get(4) {
                return Ok(PathBuf::from(mount));
            }
        }
    }
    let dir = PathBuf::from(FALLBACK_MOUNT);
    if !is_cgroup2(&dir) {
        std::fs::create_dir_all(&dir).map_err(|e| err(&dir, "create the mount point", e))?;
        nix::mount::mount(
            Some("cgroup2"),
            &dir,
            Some("cgroup2"),
            nix::mount::MsFlags::empty(),
            None::<&str>,
        )
        .map_err(|e| err(&dir, "mount cgroup2", e.into()))?;
    }
    Ok(dir)
}

impl CgroupScope {
    /// Creates cgroup `name` under the cgroup v2 root and moves this process into it.
    pub fn enter(name: &str) -> Result<CgroupScope, CgroupError> {
        let root = cgroup2_root()?;
        let own = std::fs::read_to_string("/proc/self/cgroup")
            .map_err(|e| err("/proc/self/cgroup", "read", e))?;
        let current = own
            .lines()
            .find_map(|l| l.strip_prefix("0::"))
            .unwrap_or("/")
            .trim_start_matches('/');
        let previous = root.join(current);
        let path = root.join(name);
        match std::fs::create_dir(&path) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
            Err(e) => return Err(err(path, "create", e)),
        }
        move_into(&path)?;
        Ok(CgroupScope {
            path,
            previous,
            children: Vec::new(),
            assigned: Vec::new(),
        })
    }

    /// The cgroup's directory (what the programs attach to).
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Creates threaded cgroup `name` under this one and assigns it the namespaces `netns`:
    /// from now on every thread the testkit starts in one of them ([`NetNs::run`], servers,
    /// probes) joins it first, so the sockets it creates belong to it (through
    /// [`NetNs::set_thread_cgroup`] on the handles, and so on every clone of them; the
    /// assignment ends when the scope is dropped). Returns its directory.
    pub fn threaded_child<'a>(
        &mut self,
        name: &str,
        netns: impl IntoIterator<Item = &'a NetNs>,
    ) -> Result<PathBuf, CgroupError> {
        let path = self.path.join(name);
        match std::fs::create_dir(&path) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
            Err(e) => return Err(err(path, "create", e)),
        }
        if !self.children.contains(&path) {
            self.children.push(path.clone());
        }
        let kind = path.join("cgroup.type");
        let current = std::fs::read_to_string(&kind).map_err(|e| err(&kind, "read", e))?;
        if current.trim() != "threaded" {
            std::fs::write(&kind, "threaded").map_err(|e| err(&kind, "make it threaded", e))?;
        }
        for ns in netns {
            ns.set_thread_cgroup(Some(path.clone()));
            self.assigned.push(ns.clone());
        }
        Ok(path)
    }
}

fn move_into(cgroup: &Path) -> Result<(), CgroupError> {
    let procs = cgroup.join("cgroup.procs");
    std::fs::write(&procs, std::process::id().to_string())
        .map_err(|e| err(procs, "move this process into it", e))
}

impl Drop for CgroupScope {
    fn drop(&mut self) {
        // (Unless another scope has assigned the namespace since.)
        for ns in &self.assigned {
            if ns
                .thread_cgroup()
                .is_some_and(|c| self.children.contains(&c))
            {
                ns.set_thread_cgroup(None);
            }
        }
        // All threads, also those in threaded children.
        if let Err(e) = move_into(&self.previous) {
            tracing::warn!(error = %e, "moving back out of the test cgroup");
        }
        for child in &self.children {
            if let Err(e) = std::fs::remove_dir(child) {
                tracing::warn!(cgroup = %child.display(), error = %e, "removing a test cgroup");
            }
        }
        if let Err(e) = std::fs::remove_dir(&self.path) {
            tracing::warn!(cgroup = %self.path.display(), error = %e, "removing the test cgroup");
        }
    }
}
