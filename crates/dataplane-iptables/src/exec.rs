//! Running the netfilter tools, optionally inside a network namespace (through `nsenter`, so
//! that no thread of the caller ever changes namespace).

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use crate::error::NetfilterError;

/// Runs `program args...` in `netns` (or the current namespace), feeding `stdin`.
/// Returns standard output.
pub(crate) fn run(
    backend: &'static str,
    netns: Option<&Path>,
    program: &Path,
    args: &[&str],
    stdin: Option<&str>,
    operation: &str,
) -> Result<String, NetfilterError> {
    let mut cmd = match netns {
        Some(ns) => {
            let mut c = Command::new("nsenter");
            c.arg(format!("--net={}", ns.display()))
                .arg("--")
                .arg(program);
            c
        }
        None => Command::new(program),
    };
    cmd.args(args)
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let spawn_err = |source| NetfilterError::Spawn {
        backend,
        program: program.display().to_string(),
        source,
    };
    // nsenter itself exists; a missing tool inside it shows up as exit status 127.
    if netns.is_some() && !program_exists(program) {
        return Err(spawn_err(std::io::Error::new(
            std::io::ErrorKind::NotFound,
            format!("{} not found", program.display()),
        )));
    }
    let mut child = cmd.spawn().map_err(spawn_err)?;
    if let Some(text) = stdin {
        if let Some(mut pipe) = child.stdin.take() {
            // A tool that stops at the first bad line closes its input early: the broken pipe
            // is not the error, its exit status and standard error (below) are.
            match pipe.write_all(text.as_bytes()) {
                Err(e) if e.kind() != std::io::ErrorKind::BrokenPipe => return Err(spawn_err(e)),
                _ => {}
            }
        }
    }
    let out = child.wait_with_output().map_err(spawn_err)?;
    if !out.status.success() {
        return Err(NetfilterError::Command {
            backend,
            program: program.display().to_string(),
            operation: operation.to_owned(),
            status: out.status.to_string(),
            stderr: String::from_utf8_lossy(&out.stderr).trim().to_owned(),
        });
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

fn program_exists(program: &Path) -> bool {
    if program.components().count() > 1 {
        return program.is_file();
    }
    std::env::var_os("PATH")
        .is_some_and(|paths| std::env::split_paths(&paths).any(|dir| dir.join(program).is_file()))
}

/// Reads a file inside `netns` (for `/proc/net/...`, which is per namespace).
pub(crate) fn read_proc(
    backend: &'static str,
    netns: Option<&Path>,
    path: &str,
) -> Result<String, NetfilterError> {
    match netns {
        Some(_) => run(backend, netns, &PathBuf::from("cat"), &[path], None, path),
        None => std::fs::read_to_string(path).map_err(|source| NetfilterError::Spawn {
            backend,
            program: path.to_owned(),
            source,
        }),
    }
}
