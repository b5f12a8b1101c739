//! The small HTTP/1 servers of the agent (hyper 1): health-check ports, `/healthz`,
//! `/metrics`. Each answers from a handler over shared state; a server ends when its task is
//! aborted (the listener is owned by the task and closes with it).

use std::future::Future;
use std::io;
use std::net::{IpAddr, Ipv6Addr, SocketAddr};
use std::pin::Pin;
use std::sync::Arc;

use http_body_util::Full;
use hyper::body::{Bytes, Incoming};
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::net::{TcpListener, TcpSocket};

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

/// Serves every one of `listeners` with `handler` until the task is aborted.
pub async fn serve_all(listeners: Vec<TcpListener>, handler: Handler) {
    futures::future::join_all(
        listeners
            .into_iter()
            .map(|listener| serve(listener, Arc::clone(&handler))),
    )
    .await;
}

/// Serves `listener` with `handler` until the task is aborted.
pub async fn serve(listener: TcpListener, handler: Handler) {
    loop {
        let (stream, _peer) = match listener.accept().await {
            Ok(accepted) => accepted,
            Err(e) => {
                // Out of file descriptors, say: keep serving, after a pause that lets some
                // close (retrying at once would spin).
                tracing::debug!(error = %e, "accepting a connection");
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                continue;
            }
        };
        let handler = Arc::clone(&handler);
        tokio::spawn(async move {
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
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}
