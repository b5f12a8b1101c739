//! Running the netfilter tools, optionally inside a network namespace (through `nsenter`, so
//! that no thread of the caller ever changes namespace).

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use crate::error::NetfilterError;

/// Writes a tool's standard input as text, in pieces (see [`run_streamed`]).
pub(crate) type Render<'a> = dyn Fn(&mut dyn std::fmt::Write) -> std::fmt::Result + Sync + 'a;

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
    match stdin {
        Some(text) => run_streamed(
            backend,
            netns,
            program,
            args,
            &|out| out.write_str(text),
            operation,
        )
        .map(|(stdout, _)| stdout),
        None => run_inner(backend, netns, program, args, None, None, operation)
            .map(|(stdout, _)| stdout),
    }
}

/// [`run`] without input, handing standard output to `on_line` a line at a time (without its
/// newline) as the tool writes it: it is never held whole (`iptables-save` grows with every
/// rule of every table).
pub(crate) fn run_lines(
    backend: &'static str,
    netns: Option<&Path>,
    program: &Path,
    args: &[&str],
    on_line: &mut dyn FnMut(&str),
    operation: &str,
) -> Result<(), NetfilterError> {
    run_inner(
        backend,
        netns,
        program,
        args,
        None,
        Some(on_line),
        operation,
    )
    .map(|_| ())
}

/// [`run`] with standard input written by `render` while the tool runs, through a small
/// buffer: a transaction grows with the services and is never held whole.
/// Returns standard output and the number of lines written.
pub(crate) fn run_streamed(
    backend: &'static str,
    netns: Option<&Path>,
    program: &Path,
    args: &[&str],
    render: &Render<'_>,
    operation: &str,
) -> Result<(String, usize), NetfilterError> {
    run_inner(backend, netns, program, args, Some(render), None, operation)
}

/// `fmt::Write` into a pipe: counts lines, keeps the first I/O error.
struct PipeWriter<W> {
    inner: W,
    lines: usize,
    error: Option<std::io::Error>,
}

impl<W: Write> std::fmt::Write for PipeWriter<W> {
    fn write_str(&mut self, s: &str) -> std::fmt::Result {
        self.lines += s.bytes().filter(|b| *b == b'\n').count();
        self.inner.write_all(s.as_bytes()).map_err(|e| {
            self.error.get_or_insert(e);
            std::fmt::Error
        })
    }
}

fn run_inner(
    backend: &'static str,
    netns: Option<&Path>,
    program: &Path,
    args: &[&str],
    stdin: Option<&Render<'_>>,
    on_line: Option<&mut dyn FnMut(&str)>,
    operation: &str,
) -> Result<(String, usize), NetfilterError> {
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
        operation: operation.to_owned(),
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
    let pipe = child.stdin.take();
    let pid = nix::unistd::Pid::from_raw(i32::try_from(child.id()).unwrap_or(i32::MAX));
    // The input is written on a thread of its own while this one collects the tool's output:
    // a tool that reports much before it has read everything cannot block on a full pipe.
    let (written, out) = std::thread::scope(|scope| {
        let feeder = stdin
            .zip(pipe)
            .map(|(render, pipe)| scope.spawn(move || feed(render, pipe, pid)));
        let out = match (on_line, child.stdout.take()) {
            (Some(on_line), Some(stdout)) => {
                let stderr = child.stderr.take().map(|mut e| {
                    scope.spawn(move || {
                        let mut v = Vec::new();
                        let _ = std::io::Read::read_to_end(&mut e, &mut v);
                        v
                    })
                });
                let read = read_lines(stdout, on_line);
                if read.is_err() {
                    // It would block on a pipe nobody reads.
                    let _ = child.kill();
                }
                let status = child.wait();
                let stderr = stderr.map_or_else(Vec::new, |t| t.join().unwrap_or_default());
                read.and(status).map(|status| std::process::Output {
                    status,
                    stdout: Vec::new(),
                    stderr,
                })
            }
            (_, stdout) => {
                child.stdout = stdout;
                child.wait_with_output()
            }
        };
        let written = feeder.map_or(Ok(0), |f| {
            f.join()
                .unwrap_or_else(|_| Err(std::io::Error::other("input writer panicked")))
        });
        (written, out)
    });
    let out = out.map_err(spawn_err)?;
    // A tool that stops at the first bad line closes its input early: the broken pipe is not
    // the error, its exit status and standard error (below) are. A tool that succeeded
    // without reading its whole input did not apply what was asked: an error.
    let lines = match written {
        Ok(lines) => lines,
        Err(e) if out.status.success() => return Err(spawn_err(e)),
        Err(_) => 0,
    };
    if !out.status.success() {
        return Err(NetfilterError::Command {
            backend,
            program: program.display().to_string(),
            operation: operation.to_owned(),
            status: out.status.to_string(),
            stderr: String::from_utf8_lossy(&out.stderr).trim().to_owned(),
        });
    }
    Ok((String::from_utf8_lossy(&out.stdout).into_owned(), lines))
}

/// Writes `render`'s text into the tool's input; the number of lines.
fn feed(
    render: &Render<'_>,
    pipe: std::process::ChildStdin,
    pid: nix::unistd::Pid,
) -> std::io::Result<usize> {
    let mut w = PipeWriter {
        inner: std::io::BufWriter::with_capacity(64 << 10, pipe),
        lines: 0,
        error: None,
    };
    let rendered = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| render(&mut w)));
    if let Some(e) = w.error {
        // The pipe broke: the tool stopped reading and never sees the end of input.
        return Err(e);
    }
    if !matches!(rendered, Ok(Ok(()))) {
        // The input is incomplete but the pipe is open: a tool that saw it end here could
        // apply a prefix (`nft` one transaction of it, `iptables-restore` the tables committed
        // so far). Kill the tool before the pipe closes, and drop what is buffered unsent.
        let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGKILL);
        let (pipe, _) = w.inner.into_parts();
        drop(pipe);
        return Err(std::io::Error::other("rendering the input failed"));
    }
    w.inner.flush().map(|()| w.lines)
}

/// Hands each line of `from` to `on_line`, without its newline (invalid UTF-8 replaced).
fn read_lines(from: impl std::io::Read, on_line: &mut dyn FnMut(&str)) -> std::io::Result<()> {
    use std::io::BufRead;
    let mut reader = std::io::BufReader::with_capacity(64 << 10, from);
    let mut line = Vec::new();
    loop {
        line.clear();
        if reader.read_until(b'\n', &mut line)? == 0 {
            return Ok(());
        }
        let text = String::from_utf8_lossy(&line);
        on_line(text.strip_suffix('\n').unwrap_or(&text));
    }
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
        Some(_) => run(
            backend,
            netns,
            &PathBuf::from("cat"),
            &[path],
            None,
            &format!("read {path}"),
        ),
        None => std::fs::read_to_string(path).map_err(|source| NetfilterError::Spawn {
            backend,
            operation: format!("read {path}"),
            program: path.to_owned(),
            source,
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `cat` answers while it reads: with the input written on the calling thread, 4 MiB
    /// through a 64 KiB pipe each way would block both processes.
    #[test]
    fn streamed_input_reaches_the_tool_whole_while_it_answers() {
        let line = "add rule inet t c counter accept\n";
        let n = 4 * 1024 * 1024 / line.len();
        let render = |out: &mut dyn std::fmt::Write| {
            for _ in 0..n {
                out.write_str(line)?;
            }
            Ok(())
        };
        let (stdout, lines) =
            run_streamed("test", None, Path::new("cat"), &[], &render, "echo").unwrap();
        assert_eq!(lines, n);
        assert_eq!(stdout.len(), n * line.len());
        assert!(stdout.lines().all(|l| l == line.trim_end()));
    }

    /// Output is handed over a line at a time, the last one without its newline too, and
    /// the tool's standard error is still read (a full stderr pipe would block it).
    #[test]
    fn output_lines_arrive_one_by_one() {
        let script = "seq 1 200000; printf tail; seq 1 20000 >&2";
        let mut lines = Vec::new();
        run_lines(
            "test",
            None,
            Path::new("sh"),
            &["-c", script],
            &mut |l| lines.push(l.to_owned()),
            "lines",
        )
        .unwrap();
        assert_eq!(lines.len(), 200_001);
        assert_eq!(lines[0], "1");
        assert_eq!(lines[199_999], "200000");
        assert_eq!(lines[200_000], "tail");
        let err = run_lines(
            "test",
            None,
            Path::new("sh"),
            &["-c", "echo partial; echo broken >&2; exit 3"],
            &mut |_| {},
            "lines",
        )
        .unwrap_err();
        assert!(
            matches!(&err, NetfilterError::Command { stderr, .. } if stderr == "broken"),
            "{err:?}"
        );
    }

    /// A render that fails half-way must not hand the tool a shorter input that ends
    /// normally: the tool is killed before it sees the end, nothing it would apply is kept.
    #[test]
    fn a_failed_render_kills_the_tool_before_it_sees_an_end_of_input() {
        let dir = std::env::temp_dir().join(format!("dp-exec-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let copy = dir.join("copy");
        let script = format!("cat > {0}.part && mv {0}.part {0}", copy.display());
        let render = |out: &mut dyn std::fmt::Write| {
            out.write_str("first line\n")?;
            Err(std::fmt::Error)
        };
        let err = run_streamed(
            "test",
            None,
            Path::new("sh"),
            &["-c", &script],
            &render,
            "copy",
        )
        .unwrap_err();
        assert!(matches!(err, NetfilterError::Command { .. }), "{err:?}");
        assert!(!copy.exists(), "the tool saw an end of input");
        // A tool that succeeds without reading everything is an error too.
        let render = |out: &mut dyn std::fmt::Write| {
            for _ in 0..100_000 {
                out.write_str("not read\n")?;
            }
            Ok(())
        };
        let err =
            run_streamed("test", None, Path::new("true"), &[], &render, "ignore").unwrap_err();
        assert!(matches!(err, NetfilterError::Spawn { .. }), "{err:?}");
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn a_failing_tool_is_an_error_naming_it_even_if_it_stops_reading() {
        let render = |out: &mut dyn std::fmt::Write| {
            for _ in 0..100_000 {
                out.write_str("garbage that the tool never reads\n")?;
            }
            Ok(())
        };
        let err =
            run_streamed("test", None, Path::new("false"), &[], &render, "refuse").unwrap_err();
        assert!(
            matches!(&err, NetfilterError::Command { program, operation, .. }
                if program == "false" && operation == "refuse"),
            "{err:?}"
        );
    }
}
