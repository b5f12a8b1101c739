//! Named network namespaces (`/run/netns/NAME`, as `ip netns` manages them) and the `ip`
//! command runner the lab is built with.
//!
//! The lab drives iproute2 (`ip netns add`, `ip -n NS -batch -`) rather than rtnetlink: the
//! commands are the ones a person debugging a failed test would type, and an error quotes the
//! exact line that failed. Code that must run *inside* a namespace (sysctls, servers, probes)
//! uses [`NetNs::run`]: a fresh thread `setns(2)`s into the namespace, so the caller's thread is
//! never moved.
//!
//! The bottom of the crate: it imports no other module of it. [`crate::cgroup`], [`crate::traffic`]
//! and [`crate::lab`] build on it and wrap its [`NetNsError`].

use std::fs::File;
use std::hash::{Hash, Hasher};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::{Arc, Mutex, PoisonError};

use nix::sched::{setns, CloneFlags};

/// Errors of namespaces and of the commands run in them.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum NetNsError {
    /// A command could not be started.
    #[error("cannot run `{command}`")]
    Spawn {
        /// The command line.
        command: String,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// A command exited with an error.
    #[error("`{command}` failed ({status}): {stderr}")]
    Command {
        /// The command line.
        command: String,
        /// Exit status.
        status: String,
        /// Its standard error.
        stderr: String,
    },
    /// `/run/netns/NAME` could not be opened.
    #[error("network namespace {netns}: cannot open")]
    OpenNetns {
        /// Namespace name.
        netns: String,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// `setns(2)` failed.
    #[error("network namespace {netns}: setns failed")]
    Setns {
        /// Namespace name.
        netns: String,
        /// The cause.
        #[source]
        source: nix::errno::Errno,
    },
    /// A thread entering the namespace could not join the namespace's thread cgroup
    /// ([`NetNs::set_thread_cgroup`]).
    #[error("network namespace {netns}: cannot move a thread into cgroup {}", cgroup.display())]
    JoinCgroup {
        /// Namespace name.
        netns: String,
        /// The threaded cgroup directory.
        cgroup: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// A sysctl could not be written.
    #[error("network namespace {netns}: cannot set sysctl {key}")]
    Sysctl {
        /// Namespace name.
        netns: String,
        /// The key under /proc/sys.
        key: String,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
}

/// Directory where `ip netns` bind-mounts named namespaces.
pub const NETNS_DIR: &str = "/run/netns";

/// A named network namespace. A handle only: the [`crate::Lab`] that created it deletes it.
///
/// Clones share the namespace's thread cgroup ([`NetNs::set_thread_cgroup`]); equality and
/// hashing look at the name and path only.
#[derive(Debug, Clone)]
pub struct NetNs {
    name: String,
    path: PathBuf,
    /// The threaded cgroup v2 every testkit thread entering the namespace joins, if any.
    thread_cgroup: Arc<Mutex<Option<PathBuf>>>,
}

impl PartialEq for NetNs {
    fn eq(&self, other: &Self) -> bool {
        self.name == other.name && self.path == other.path
    }
}

impl Eq for NetNs {}

impl Hash for NetNs {
    fn hash<H: Hasher>(&self, state: &mut H) {
        self.name.hash(state);
        self.path.hash(state);
    }
}

impl NetNs {
    /// A handle on the namespace `/run/netns/NAME` (which need not exist yet).
    pub fn new(name: impl Into<String>) -> Self {
        let name = name.into();
        let path = Path::new(NETNS_DIR).join(&name);
        Self {
            name,
            path,
            thread_cgroup: Arc::default(),
        }
    }

    /// Makes every thread the testkit starts in this namespace from now on ([`NetNs::run`],
    /// servers, probes) join the threaded cgroup v2 `cgroup` before it creates a socket, so
    /// that programs attached there see those sockets (`None`: join none). Applies to every
    /// clone of this handle. [`crate::CgroupScope::threaded_child`] sets and clears it.
    pub fn set_thread_cgroup(&self, cgroup: Option<PathBuf>) {
        *self
            .thread_cgroup
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = cgroup;
    }

    /// The namespace name (as `ip netns list` shows it).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// `/run/netns/NAME`: what backends take as their `netns` setting.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Runs `program args...` inside the namespace (`ip netns exec NAME program args...`) and
    /// returns its output whatever its exit status.
    pub fn exec<S: AsRef<str>>(&self, program: &str, args: &[S]) -> Result<Output, NetNsError> {
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &self.name, program]);
        cmd.args(args.iter().map(AsRef::as_ref));
        let line = describe(&cmd);
        cmd.output().map_err(|source| NetNsError::Spawn {
            command: line,
            source,
        })
    }

    /// Runs `program args...` inside the namespace with `stdin` as its input, failing
    /// unless it exits 0.
    pub fn exec_checked<S: AsRef<str>>(
        &self,
        program: &str,
        args: &[S],
        stdin: Option<&str>,
    ) -> Result<Output, NetNsError> {
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &self.name, program]);
        cmd.args(args.iter().map(AsRef::as_ref));
        checked(cmd, stdin)
    }

    /// Runs `f` on a new thread that has entered the namespace and returns its result.
    ///
    /// Sockets created by `f` belong to the namespace for their whole life, even after the
    /// thread ends. A panic in `f` is resumed on the caller's thread.
    pub fn run<F, R>(&self, f: F) -> Result<R, NetNsError>
    where
        F: FnOnce() -> R + Send,
        R: Send,
    {
        std::thread::scope(|scope| {
            let handle = scope.spawn(|| {
                self.enter()?;
                Ok(f())
            });
            match handle.join() {
                Ok(result) => result,
                Err(panic) => std::panic::resume_unwind(panic),
            }
        })
    }

    /// The threaded cgroup set by [`NetNs::set_thread_cgroup`], if any.
    pub fn thread_cgroup(&self) -> Option<PathBuf> {
        self.thread_cgroup
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// Moves the *calling thread* into the namespace, and into its thread cgroup when one is
    /// set. Only for threads the testkit spawns.
    pub(crate) fn enter(&self) -> Result<(), NetNsError> {
        let file = File::open(&self.path).map_err(|source| NetNsError::OpenNetns {
            netns: self.name.clone(),
            source,
        })?;
        setns(&file, CloneFlags::CLONE_NEWNET).map_err(|errno| NetNsError::Setns {
            netns: self.name.clone(),
            source: errno,
        })?;
        let Some(cgroup) = self.thread_cgroup() else {
            return Ok(());
        };
        std::fs::write(
            cgroup.join("cgroup.threads"),
            nix::unistd::gettid().to_string(),
        )
        .map_err(|source| NetNsError::JoinCgroup {
            netns: self.name.clone(),
            cgroup,
            source,
        })
    }

    /// Writes sysctls (`net/ipv4/ip_forward` style keys relative to `/proc/sys/`) inside the
    /// namespace: `/proc/sys/net` shows the network namespace of the thread that opens it.
    pub fn sysctl(&self, settings: &[(&str, &str)]) -> Result<(), NetNsError> {
        let netns = self.name.clone();
        self.run(|| {
            for (key, value) in settings {
                let path = Path::new("/proc/sys").join(key);
                std::fs::write(&path, value).map_err(|source| NetNsError::Sysctl {
                    netns: netns.clone(),
                    key: (*key).to_owned(),
                    source,
                })?;
            }
            Ok(())
        })?
    }

    /// Runs `ip -n NAME -batch -` with `lines` on stdin; fails on the first failing line.
    pub fn ip_batch(&self, lines: &[String]) -> Result<(), NetNsError> {
        ip_batch(Some(&self.name), lines)
    }
}

/// Runs `ip args...` in the current namespace; fails unless it exits 0.
pub(crate) fn ip(args: &[&str]) -> Result<Output, NetNsError> {
    let mut cmd = Command::new("ip");
    cmd.args(args);
    checked(cmd, None)
}

/// Runs `ip [-n NS] -batch -` with `lines` on stdin.
pub(crate) fn ip_batch(netns: Option<&str>, lines: &[String]) -> Result<(), NetNsError> {
    if lines.is_empty() {
        return Ok(());
    }
    let mut cmd = Command::new("ip");
    if let Some(ns) = netns {
        cmd.args(["-n", ns]);
    }
    cmd.args(["-batch", "-"]);
    let input = lines.join("\n") + "\n";
    checked(cmd, Some(&input)).map(|_| ())
}

fn checked(mut cmd: Command, stdin: Option<&str>) -> Result<Output, NetNsError> {
    let mut line = describe(&cmd);
    if let Some(input) = stdin {
        line.push_str(" <<< ");
        line.push_str(&input.replace('\n', "; "));
    }
    cmd.stdin(if stdin.is_some() {
        Stdio::piped()
    } else {
        Stdio::null()
    })
    .stdout(Stdio::piped())
    .stderr(Stdio::piped());
    let spawn_err = |source| NetNsError::Spawn {
        command: line.clone(),
        source,
    };
    let mut child = cmd.spawn().map_err(spawn_err)?;
    if let (Some(input), Some(mut pipe)) = (stdin, child.stdin.take()) {
        pipe.write_all(input.as_bytes()).map_err(spawn_err)?;
    }
    let output = child.wait_with_output().map_err(spawn_err)?;
    if output.status.success() {
        Ok(output)
    } else {
        Err(NetNsError::Command {
            command: line,
            status: output.status.to_string(),
            stderr: String::from_utf8_lossy(&output.stderr).trim().to_owned(),
        })
    }
}

fn describe(cmd: &Command) -> String {
    let mut s = cmd.get_program().to_string_lossy().into_owned();
    for arg in cmd.get_args() {
        s.push(' ');
        s.push_str(&arg.to_string_lossy());
    }
    s
}

/// Names of all namespaces under [`NETNS_DIR`] (what `ip netns list` shows).
pub fn list_netns() -> Vec<String> {
    let Ok(dir) = std::fs::read_dir(NETNS_DIR) else {
        return Vec::new();
    };
    let mut names: Vec<String> = dir
        .filter_map(Result::ok)
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}
