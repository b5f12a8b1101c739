//! The load generator and the servers it talks to.
//!
//! Servers: each backend pod gets a listener on [`PORT`] with a few worker threads blocked in
//! `accept()` (the kernel wakes one per connection); a worker answers every request line with
//! the pod's name until the client closes. No per-connection thread spawn, no poll loop: the
//! server's cost per connection is a handful of syscalls, so the dataplane's cost shows.
//!
//! Clients run on threads that entered the client pod's namespace (sockets belong to the
//! namespace they are created in):
//! - CRR: connect, one request line, read the answer, close with RST (`SO_LINGER` 0, so that
//!   neither side keeps `TIME_WAIT` and ports can be reused at any rate), repeat.
//! - RR: a few persistent connections, one request at a time, latency of each exchange.

use std::collections::BTreeMap;
use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::fd::{AsRawFd, OwnedFd};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use dataplane_testkit::NetNs;
use nix::sys::socket::{self, sockopt, AddressFamily, SockFlag, SockType, SockaddrIn};

/// Port of the bench servers in the backend pods.
pub const PORT: u16 = 9090;
/// Worker threads per server: at least the number of persistent RR connections, which may
/// all land on one backend.
const WORKERS: usize = 4;
/// Persistent connections of an RR run.
pub const RR_CONNECTIONS: usize = 4;
/// Sockets a [`Prober`] holds after each refill: what one change took at most when the bench
/// made 500 a change up front.
pub const PROBE_BATCH: usize = 500;
/// Connect and read timeout of the clients.
pub const IO_TIMEOUT: Duration = Duration::from_secs(1);

/// A bench server in one pod; stops on drop.
#[derive(Debug)]
pub struct Server {
    stop: Arc<AtomicBool>,
    listener: TcpListener,
    threads: Vec<JoinHandle<()>>,
}

impl Server {
    /// Listens on `0.0.0.0:PORT` in `netns`, answering with `name`.
    pub fn start(netns: &NetNs, name: &str) -> Result<Server, String> {
        let listener = netns
            .run(|| TcpListener::bind(("0.0.0.0", PORT)))
            .map_err(|e| format!("enter {}: {e}", netns.name()))?
            .map_err(|e| format!("bind {name}:{PORT}: {e}"))?;
        let stop = Arc::new(AtomicBool::new(false));
        let answer: Arc<[u8]> = format!("{name}\n").into_bytes().into();
        let mut threads = Vec::with_capacity(WORKERS);
        for _ in 0..WORKERS {
            let l = listener
                .try_clone()
                .map_err(|e| format!("clone listener of {name}: {e}"))?;
            let (stop, answer) = (Arc::clone(&stop), Arc::clone(&answer));
            let t = std::thread::Builder::new()
                .name(format!("srv-{name}"))
                .stack_size(64 * 1024)
                .spawn(move || serve(&l, &answer, &stop))
                .map_err(|e| format!("spawn server thread: {e}"))?;
            threads.push(t);
        }
        Ok(Server {
            stop,
            listener,
            threads,
        })
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Release);
        // Wakes every thread blocked in accept() (EINVAL on Linux).
        let _ = socket::shutdown(self.listener.as_raw_fd(), socket::Shutdown::Both);
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

fn serve(listener: &TcpListener, answer: &[u8], stop: &AtomicBool) {
    let mut buf = [0u8; 512];
    let mut out = Vec::with_capacity(answer.len() * 4);
    while !stop.load(Ordering::Acquire) {
        let mut s = match listener.accept() {
            Ok((s, _)) => s,
            Err(_) if stop.load(Ordering::Acquire) => return,
            Err(_) => {
                std::thread::sleep(Duration::from_millis(1));
                continue;
            }
        };
        let _ = s.set_nodelay(true);
        // A client that vanished must not hold a worker for long.
        let _ = s.set_read_timeout(Some(Duration::from_secs(5)));
        loop {
            match s.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    out.clear();
                    for _ in buf[..n].iter().filter(|&&b| b == b'\n') {
                        out.extend_from_slice(answer);
                    }
                    if !out.is_empty() && s.write_all(&out).is_err() {
                        break;
                    }
                }
            }
        }
    }
}

/// Result of a CRR run.
#[derive(Debug, Clone, Default)]
pub struct Crr {
    /// Completed connect-request-response-close cycles.
    pub ok: u64,
    /// Cycles that failed (refused, timed out, reset).
    pub failed: u64,
    /// Wall-clock duration.
    pub elapsed: Duration,
    /// Answers per backend.
    pub backends: BTreeMap<String, u64>,
    /// First error seen, if any.
    pub first_error: Option<String>,
}

impl Crr {
    /// Completed cycles per second.
    pub fn rate(&self) -> f64 {
        #[allow(clippy::cast_precision_loss)]
        let ok = self.ok as f64;
        ok / self.elapsed.as_secs_f64().max(1e-9)
    }

    fn merge(&mut self, other: Crr) {
        self.ok += other.ok;
        self.failed += other.failed;
        self.elapsed = self.elapsed.max(other.elapsed);
        for (k, v) in other.backends {
            *self.backends.entry(k).or_default() += v;
        }
        if self.first_error.is_none() {
            self.first_error = other.first_error;
        }
    }
}

fn linger_zero(s: &TcpStream) {
    let _ = socket::setsockopt(
        s,
        sockopt::Linger,
        &libc::linger {
            l_onoff: 1,
            l_linger: 0,
        },
    );
}

fn read_line(s: &mut TcpStream, buf: &mut [u8]) -> io::Result<usize> {
    let mut n = 0;
    loop {
        let m = s.read(&mut buf[n..])?;
        if m == 0 {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "closed before the answer",
            ));
        }
        n += m;
        if buf[..n].ends_with(b"\n") {
            return Ok(n - 1);
        }
        if n == buf.len() {
            return Err(io::Error::other("answer too long"));
        }
    }
}

fn one_crr(dst: SocketAddr, buf: &mut [u8]) -> io::Result<usize> {
    let mut s = TcpStream::connect_timeout(&dst, IO_TIMEOUT)?;
    s.set_nodelay(true)?;
    s.set_read_timeout(Some(IO_TIMEOUT))?;
    s.write_all(b"r\n")?;
    let n = read_line(&mut s, buf)?;
    linger_zero(&s);
    Ok(n)
}

fn crr_loop(targets: &[SocketAddr], offset: usize, duration: Duration) -> Crr {
    let mut r = Crr::default();
    let mut counts: Vec<(Vec<u8>, u64)> = Vec::new();
    let mut buf = [0u8; 128];
    let start = Instant::now();
    let mut i = offset;
    while start.elapsed() < duration {
        let dst = targets[i % targets.len()];
        i += 1;
        match one_crr(dst, &mut buf) {
            Ok(n) => {
                r.ok += 1;
                match counts.iter_mut().find(|(k, _)| k[..] == buf[..n]) {
                    Some((_, c)) => *c += 1,
                    None => counts.push((buf[..n].to_vec(), 1)),
                }
            }
            Err(e) => {
                r.failed += 1;
                r.first_error.get_or_insert_with(|| format!("{dst}: {e}"));
                // A broken path fails fast (refused) or slowly (timeout); either way do not
                // spin on it.
                if r.failed > 50 && r.ok == 0 {
                    break;
                }
            }
        }
    }
    r.elapsed = start.elapsed();
    r.backends = counts
        .into_iter()
        .map(|(k, v)| (String::from_utf8_lossy(&k).into_owned(), v))
        .collect();
    r
}

/// `threads` clients in `netns` cycling over `targets` for `duration`.
pub fn crr(
    netns: &NetNs,
    targets: &[SocketAddr],
    duration: Duration,
    threads: usize,
) -> Result<Crr, String> {
    netns
        .run(|| {
            std::thread::scope(|s| {
                let handles: Vec<_> = (0..threads)
                    .map(|t| s.spawn(move || crr_loop(targets, t, duration)))
                    .collect();
                let mut total = Crr::default();
                for h in handles {
                    total.merge(h.join().expect("client thread"));
                }
                total
            })
        })
        .map_err(|e| format!("enter {}: {e}", netns.name()))
}

/// Result of an RR run.
#[derive(Debug, Clone, Default)]
pub struct Rr {
    /// Median latency.
    pub p50: Duration,
    /// 99th percentile latency.
    pub p99: Duration,
    /// First error, if any.
    pub error: Option<String>,
}

/// Nearest-rank percentile of sorted `v`.
pub fn percentile(v: &[Duration], p: f64) -> Duration {
    if v.is_empty() {
        return Duration::ZERO;
    }
    #[allow(
        clippy::cast_precision_loss,
        clippy::cast_sign_loss,
        clippy::cast_possible_truncation
    )]
    let rank = ((p / 100.0) * v.len() as f64).ceil() as usize;
    v[rank.clamp(1, v.len()) - 1]
}

/// Request-response latency over [`RR_CONNECTIONS`] persistent connections from `netns`.
pub fn rr(netns: &NetNs, targets: &[SocketAddr], duration: Duration) -> Result<Rr, String> {
    netns
        .run(|| {
            let mut conns = Vec::new();
            for i in 0..RR_CONNECTIONS {
                let dst = targets[i % targets.len()];
                match TcpStream::connect_timeout(&dst, IO_TIMEOUT) {
                    Ok(s) => {
                        let _ = s.set_nodelay(true);
                        let _ = s.set_read_timeout(Some(IO_TIMEOUT));
                        conns.push(s);
                    }
                    Err(e) => {
                        return Rr {
                            error: Some(format!("connect {dst}: {e}")),
                            ..Rr::default()
                        }
                    }
                }
            }
            let mut lat = Vec::with_capacity(100_000);
            let mut buf = [0u8; 128];
            let start = Instant::now();
            let mut error = None;
            'run: while start.elapsed() < duration {
                for c in &mut conns {
                    let t = Instant::now();
                    let r = c.write_all(b"r\n").and_then(|()| read_line(c, &mut buf));
                    match r {
                        Ok(_) => lat.push(t.elapsed()),
                        Err(e) => {
                            error = Some(format!("request: {e}"));
                            break 'run;
                        }
                    }
                }
            }
            lat.sort_unstable();
            Rr {
                p50: percentile(&lat, 50.0),
                p99: percentile(&lat, 99.0),
                error,
            }
        })
        .map_err(|e| format!("enter {}: {e}", netns.name()))
}

/// Unconnected TCP sockets made in a pod's namespace, to probe from any thread (the endpoint
/// change bench times `apply_changes` and the probes on one thread, without handing work to
/// another one). A pool of `batch` sockets: each probe uses one and closes it; [`Prober::refill`]
/// tops the pool up between timed changes, and an empty pool refills itself (a namespace
/// switch inside the timed probe, so the batch is sized to make that rare). The pool is not
/// made for all changes up front: at 500 sockets a change it hit the process's open-file
/// limit (20000 here) at ~30 changes.
#[derive(Debug)]
pub struct Prober {
    netns: NetNs,
    batch: usize,
    sockets: Vec<OwnedFd>,
}

impl Prober {
    /// A pool of `batch` sockets created in `netns`.
    pub fn new(netns: &NetNs, batch: usize) -> Result<Prober, String> {
        let mut prober = Prober {
            netns: netns.clone(),
            batch: batch.max(1),
            sockets: Vec::new(),
        };
        prober.refill()?;
        Ok(prober)
    }

    /// Tops the pool up to its batch size (call it outside the timed part).
    pub fn refill(&mut self) -> Result<(), String> {
        let missing = self.batch.saturating_sub(self.sockets.len());
        if missing == 0 {
            return Ok(());
        }
        let fresh = self
            .netns
            .run(|| {
                (0..missing)
                    .map(|_| {
                        socket::socket(
                            AddressFamily::Inet,
                            SockType::Stream,
                            SockFlag::SOCK_CLOEXEC,
                            None,
                        )
                    })
                    .collect::<Result<Vec<_>, _>>()
            })
            .map_err(|e| format!("enter {}: {e}", self.netns.name()))?
            .map_err(|e| format!("socket: {e}"))?;
        self.sockets.extend(fresh);
        Ok(())
    }

    /// One connect-request-response-close to `dst`, waiting at most `timeout` for the
    /// connect and for the answer (a dropped SYN, as a policy denying the connection drops
    /// it, fails after `timeout`); the answering backend's name.
    pub fn probe_within(
        &mut self,
        dst: std::net::SocketAddrV4,
        timeout: Duration,
    ) -> Result<String, String> {
        self.probe_connected_within(dst, timeout)
            .map(|(name, _)| name)
    }

    /// [`Prober::probe_within`], with the moment `connect()` returned: the backend's kernel
    /// had answered the SYN (the connection was accepted by the backend that then answers;
    /// the request, the answer and the close follow).
    pub fn probe_connected_within(
        &mut self,
        dst: std::net::SocketAddrV4,
        timeout: Duration,
    ) -> Result<(String, Instant), String> {
        if self.sockets.is_empty() {
            self.refill()?;
        }
        let fd = self.sockets.pop().ok_or("prober has no sockets")?;
        let mut s = TcpStream::from(fd);
        // SO_SNDTIMEO bounds a blocking connect().
        s.set_write_timeout(Some(timeout))
            .map_err(|e| e.to_string())?;
        s.set_read_timeout(Some(timeout))
            .map_err(|e| e.to_string())?;
        socket::connect(s.as_raw_fd(), &SockaddrIn::from(dst))
            .map_err(|e| format!("connect {dst}: {e}"))?;
        let connected = Instant::now();
        let mut buf = [0u8; 128];
        let n = s
            .write_all(b"r\n")
            .and_then(|()| read_line(&mut s, &mut buf))
            .map_err(|e| format!("request {dst}: {e}"))?;
        linger_zero(&s);
        Ok((String::from_utf8_lossy(&buf[..n]).into_owned(), connected))
    }
}

/// Probes `dst` with `prober` (each attempt waiting at most `attempt`) until `want` answers;
/// errors after `timeout`. Returns when the answering probe's `connect()` returned (see
/// [`Prober::probe_connected_within`]).
pub fn wait_for(
    prober: &mut Prober,
    dst: std::net::SocketAddrV4,
    want: &str,
    timeout: Duration,
    attempt: Duration,
) -> Result<Instant, String> {
    let t = Instant::now();
    let mut last = String::new();
    while t.elapsed() < timeout {
        match prober.probe_connected_within(dst, attempt) {
            Ok((name, connected)) if name == want => return Ok(connected),
            Ok((name, _)) => last = format!("answered by {name}"),
            Err(e) => last = e,
        }
    }
    Err(format!(
        "{want} never answered on {dst} within {timeout:?} (last: {last})"
    ))
}
