//! The small HTTP/1 servers of the agent (hyper 1): health-check ports, `/healthz`,
//! `/metrics`. Each answers from a handler over shared state; a server ends when its task is
//! aborted (the listener and its connections are owned by the task and close with it). Each
//! listener has [`Limits`]: a header read timeout and a cap on connections.

use std::future::Future;
use std::io;
use std::net::{IpAddr, Ipv6Addr, SocketAddr};
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use http_body_util::Full;
use hyper::body::{Bytes, Incoming};
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::{TcpListener, TcpSocket};
use tokio::sync::Semaphore;
use tokio::task::JoinSet;

/// An answer: status, content type, body.
pub type Reply = (StatusCode, &'static str, String);

/// What a server answers for a request's path.
pub type Handler = Arc<dyn Fn(String) -> Pin<Box<dyn Future<Output = Reply> + Send>> + Send + Sync>;

/// A handler from a synchronous function of the path.
pub fn handler(f: impl Fn(&str) -> Reply + Send + Sync + 'static) -> Handler {
    let f = Arc::new(f);
    Arc::new(move |path: String| {
        let f = Arc::clone(&f);
        Box::pin(async move { f(&path) })
    })
}

/// Binds a listening socket at `addr`. An IPv6 address listens on IPv6 only, so that
/// `0.0.0.0` and `[::]` can both be bound on one port (kube-proxy listens on both).
pub fn bind(addr: SocketAddr) -> io::Result<TcpListener> {
    bind_socket(addr, true)
}

/// Binds the listening sockets of one of the agent's own servers (`/healthz`, `/metrics`) at
/// `addr`: `0.0.0.0` is `[::]` too (IPv6 only, the same port; skipped on a node without
/// IPV6), and `[::]` alone takes both families (dual-stack). kube-proxy is a Go program, and
/// Go's `net.Listen("tcp", "0.0.0.0:10256")` opens one dual-stack socket: its `/healthz`
/// answers over IPv6 too, and so must ours on an IPv6 or dual-stack node.
pub fn bind_server(addr: SocketAddr) -> io::Result<Vec<TcpListener>> {
    match addr.ip() {
        IpAddr::V4(ip) if ip.is_unspecified() => {
            let v4 = bind(addr)?;
            // Port 0: the IPv6 socket takes the port the IPv4 one got.
            let v6_addr = SocketAddr::new(Ipv6Addr::UNSPECIFIED.into(), v4.local_addr()?.port());
            match bind(v6_addr) {
                Ok(v6) => Ok(vec![v4, v6]),
                Err(e) if no_ipv6(&e) => {
                    tracing::debug!(error = %e, "no IPv6 here: IPv4 only");
                    Ok(vec![v4])
                }
                Err(e) => Err(e),
            }
        }
        IpAddr::V6(ip) if ip.is_unspecified() => Ok(vec![bind_socket(addr, false)?]),
        _ => Ok(vec![bind(addr)?]),
    }
}

/// Whether binding failed because the node has no IPv6 (the IPv4 socket serves alone).
pub fn no_ipv6(e: &io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(libc::EAFNOSUPPORT | libc::EADDRNOTAVAIL)
    )
}

fn bind_socket(addr: SocketAddr, v6only: bool) -> io::Result<TcpListener> {
    let socket = if addr.is_ipv4() {
        TcpSocket::new_v4()?
    } else {
        let socket = TcpSocket::new_v6()?;
        nix::sys::socket::setsockopt(&socket, nix::sys::socket::sockopt::Ipv6V6Only, &v6only)?;
        socket
    };
    // A restarted agent binds again at once, while connections of the old one linger.
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(128)
}

/// What one listener of a server allows its clients.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// How long a connection may take to send a request's headers, and stay idle between
    /// requests: a client that connects and sends nothing holds no connection forever (Go's
    /// `http.Server.ReadHeaderTimeout`; hyper has none without a timer).
    pub header_read_timeout: Duration,
    /// Connections served at once; further ones wait in the listen backlog until one ends,
    /// so that a flood of clients costs bounded memory and file descriptors.
    pub max_connections: usize,
}

impl Default for Limits {
    /// 10 s for the headers (a probe sends them at once; kubelet's and load balancers'
    /// probes time out sooner), 128 connections (probers keep a few each).
    fn default() -> Self {
        Self {
            header_read_timeout: Duration::from_secs(10),
            max_connections: 128,
        }
    }
}

/// Serves every one of `listeners` with `handler` until the task is aborted.
pub async fn serve_all(listeners: Vec<TcpListener>, handler: Handler, limits: Limits) {
    futures::future::join_all(
        listeners
            .into_iter()
            .map(|listener| serve(listener, Arc::clone(&handler), limits)),
    )
    .await;
}

/// Serves `listener` with `handler` until the task is aborted (or the future dropped): then
/// the listener closes, and so do the connections it accepted (they are tasks of a
/// `JoinSet` owned here), so that a closed health port leaves no client connected.
pub async fn serve(listener: TcpListener, handler: Handler, limits: Limits) {
    let permits = Arc::new(Semaphore::new(limits.max_connections.max(1)));
    let mut connections = JoinSet::new();
    loop {
        // Forget the connections that ended.
        while connections.try_join_next().is_some() {}
        // At the cap: accept nothing until a connection ends.
        let Ok(permit) = Arc::clone(&permits).acquire_owned().await else {
            return; // never closed
        };
        let (stream, _peer) = match listener.accept().await {
            Ok(accepted) => accepted,
            Err(e) => {
                // Out of file descriptors, say: keep serving, after a pause that lets some
                // close (retrying at once would spin).
                tracing::debug!(error = %e, "accepting a connection");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let handler = Arc::clone(&handler);
        connections.spawn(async move {
            let _permit = permit;
            let service = hyper::service::service_fn(move |request: Request<Incoming>| {
                let handler = Arc::clone(&handler);
                async move {
                    let (status, content_type, body) =
                        handler(request.uri().path().to_owned()).await;
                    let response = Response::builder()
                        .status(status)
                        .header("Content-Type", content_type)
                        .header("X-Content-Type-Options", "nosniff")
                        .body(Full::new(Bytes::from(body)))
                        .expect("static headers are valid");
                    Ok::<_, std::convert::Infallible>(response)
                }
            });
            let _ = hyper::server::conn::http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(limits.header_read_timeout)
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}
