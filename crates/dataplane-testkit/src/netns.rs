//! Named network namespaces (`/run/netns/NAME`, as `ip netns` manages them) and the `ip`
//! command runner the lab is built with.
//!
//! The lab drives iproute2 (`ip netns add`, `ip -n NS -batch -`) rather than rtnetlink: the
//! commands are the ones a person debugging a failed test would type, and an error quotes the
//! exact line that failed. Code that must run *inside* a namespace (sysctls, servers, probes)
//! uses [`NetNs::run`]: a fresh thread `setns(2)`s into the namespace, so the caller's thread is
//! never moved.

use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use nix::sched::{setns, CloneFlags};

use crate::lab::LabError;

/// Directory where `ip netns` bind-mounts named namespaces.
pub const NETNS_DIR: &str = "/run/netns";

/// A named network namespace. A handle only: the [`crate::Lab`] that created it deletes it.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct NetNs {
    name: String,
    path: PathBuf,
}

impl NetNs {
    /// A handle on the namespace `/run/netns/NAME` (which need not exist yet).
    pub fn new(name: impl Into<String>) -> Self {
        let name = name.into();
        let path = Path::new(NETNS_DIR).join(&name);
        Self { name, path }
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
    pub fn exec<S: AsRef<str>>(&self, program: &str, args: &[S]) -> Result<Output, LabError> {
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &self.name, program]);
        cmd.args(args.iter().map(AsRef::as_ref));
        let line = describe(&cmd);
        cmd.output().map_err(|source| LabError::Spawn {
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
    ) -> Result<Output, LabError> {
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &self.name, program]);
        cmd.args(args.iter().map(AsRef::as_ref));
        checked(cmd, stdin)
    }

    /// Runs `f` on a new thread that has entered the namespace and returns its result.
    ///
    /// Sockets created by `f` belong to the namespace for their whole life, even after the
    /// thread ends. A panic in `f` is resumed on the caller's thread.
    pub fn run<F, R>(&self, f: F) -> Result<R, LabError>
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

    /// Moves the *calling thread* into the namespace. Only for threads the testkit spawns.
    pub(crate) fn enter(&self) -> Result<(), LabError> {
        let file = File::open(&self.path).map_err(|source| LabError::OpenNetns {
            netns: self.name.clone(),
            source,
        })?;
        setns(&file, CloneFlags::CLONE_NEWNET).map_err(|errno| LabError::Setns {
            netns: self.name.clone(),
            source: errno,
        })?;
        crate::cgroup::join_assigned(&self.path)
    }

    /// Writes sysctls (`net/ipv4/ip_forward` style keys relative to `/proc/sys/`) inside the
    /// namespace: `/proc/sys/net` shows the network namespace of the thread that opens it.
    pub fn sysctl(&self, settings: &[(&str, &str)]) -> Result<(), LabError> {
        let netns = self.name.clone();
        self.run(|| {
            for (key, value) in settings {
                let path = Path::new("/proc/sys").join(key);
                std::fs::write(&path, value).map_err(|source| LabError::Sysctl {
                    netns: netns.clone(),
                    key: (*key).to_owned(),
                    source,
                })?;
            }
            Ok(())
        })?
    }

    /// Runs `ip -n NAME -batch -` with `lines` on stdin; fails on the first failing line.
    pub fn ip_batch(&self, lines: &[String]) -> Result<(), LabError> {
        ip_batch(Some(&self.name), lines)
    }
}

/// Runs `ip args...` in the current namespace; fails unless it exits 0.
pub(crate) fn ip(args: &[&str]) -> Result<Output, LabError> {
    let mut cmd = Command::new("ip");
    cmd.args(args);
    checked(cmd, None)
}

/// Runs `ip [-n NS] -batch -` with `lines` on stdin.
pub(crate) fn ip_batch(netns: Option<&str>, lines: &[String]) -> Result<(), LabError> {
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

fn checked(mut cmd: Command, stdin: Option<&str>) -> Result<Output, LabError> {
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
    let spawn_err = |source| LabError::Spawn {
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
        Err(LabError::Command {
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
