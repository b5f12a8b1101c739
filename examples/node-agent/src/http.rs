//! The small HTTP/1 servers of the agent (hyper 1): health-check ports, `/healthz`,
//! `/metrics`. Each answers from a handler over shared state; a server ends when its task is
//! aborted (the listener is owned by the task and closes with it).

use std::future::Future;
use std::io;
use std::net::SocketAddr;
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

/// Binds a listening socket at `addr`. An IPv6 wildcard address listens on IPv6 only, so that
/// `0.0.0.0` and `[::]` can both be bound on one port (kube-proxy listens on both).
pub fn bind(addr: SocketAddr) -> io::Result<TcpListener> {
    let socket = if addr.is_ipv4() {
        TcpSocket::new_v4()?
    } else {
        let socket = TcpSocket::new_v6()?;
        nix::sys::socket::setsockopt(&socket, nix::sys::socket::sockopt::Ipv6V6Only, &true)?;
        socket
    };
    // A restarted agent binds again at once, while connections of the old one linger.
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(128)
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
