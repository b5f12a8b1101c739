//! The agent's HTTP servers: the addresses they listen on, their limits, and health ports
//! that close their connections. Tests that bind wildcard addresses run in a network
//! namespace of their own (root only), never in the machine's.

mod agent_common;

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use agent_common::harness::{free_port, get, LOCALHOST};
use dataplane::{HealthCheck, ObjectName};
use dataplane_agent::health::{serve_healthz, ServiceHealth, Status};
use dataplane_agent::http::{self, Limits};
use dataplane_agent::metrics::{serve_metrics, Metrics};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Generous: a loaded machine may be slow.
const DEADLINE: Duration = Duration::from_secs(20);

/// Runs `f` on a thread of its own in a new network namespace (only `lo`, up), on a
/// single-threaded runtime: every socket it opens is in that namespace.
fn in_new_netns<F, Fut>(f: F)
where
    F: FnOnce() -> Fut + Send,
    Fut: std::future::Future<Output = ()>,
{
    std::thread::scope(|scope| {
        scope
            .spawn(|| {
                // This thread's namespace only (unshare(2) is per thread for CLONE_NEWNET).
                nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNET).unwrap();
                // A child forked from this thread is in its namespace.
                let up = std::process::Command::new("ip")
                    .args(["link", "set", "lo", "up"])
                    .status()
                    .unwrap();
                assert!(up.success());
                tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .unwrap()
                    .block_on(f());
            })
            .join()
            .unwrap();
    });
}

#[test]
fn servers_on_0_0_0_0_answer_over_ipv6_too_and_on_the_ipv6_wildcard_over_both() {
    if !dataplane_testkit::require_root("servers_on_0_0_0_0_answer_over_ipv6_too") {
        return;
    }
    in_new_netns(|| async {
        let status = Arc::new(Status::new(std::time::Duration::from_mins(1)));
        let metrics = Arc::new(Metrics::new());
        let any4 = SocketAddr::new(IpAddr::V4(Ipv4Addr::UNSPECIFIED), 0);
        let (healthz, bound) =
            serve_healthz(any4, Arc::clone(&status), Arc::clone(&metrics)).unwrap();
        for ip in [
            IpAddr::V4(Ipv4Addr::LOCALHOST),
            IpAddr::V6(Ipv6Addr::LOCALHOST),
        ] {
            let (code, body) = get(SocketAddr::new(ip, bound.port()), "/healthz")
                .await
                .unwrap_or_else(|| panic!("/healthz does not answer on {ip}"));
            assert_eq!(code, 200, "{ip}: {body}");
        }
        let (metrics_server, bound) = serve_metrics(any4, Arc::clone(&metrics)).unwrap();
        let v6 = SocketAddr::new(IpAddr::V6(Ipv6Addr::LOCALHOST), bound.port());
        assert_eq!(get(v6, "/metrics").await.unwrap().0, 200);
        metrics_server.abort();
        // `[::]` alone: both families on one dual-stack socket.
        let any6 = SocketAddr::new(IpAddr::V6(Ipv6Addr::UNSPECIFIED), 0);
        let (dual, bound) = serve_metrics(any6, Arc::clone(&metrics)).unwrap();
        for ip in [
            IpAddr::V4(Ipv4Addr::LOCALHOST),
            IpAddr::V6(Ipv6Addr::LOCALHOST),
        ] {
            let answer = get(SocketAddr::new(ip, bound.port()), "/metrics").await;
            assert_eq!(answer.map(|a| a.0), Some(200), "[::] over {ip}");
        }
        dual.abort();
        healthz.abort();
    });
}

fn ok_handler() -> http::Handler {
    http::handler(|_| (hyper::StatusCode::OK, "text/plain", "ok".to_owned()))
}

/// Sends a keep-alive `GET /` on `stream` and reads its response (headers and the
/// `Content-Length` body); the connection stays open.
async fn keep_alive_get(stream: &mut TcpStream) -> String {
    stream
        .write_all(b"GET / HTTP/1.1\r\nHost: test\r\n\r\n")
        .await
        .unwrap();
    let mut response = Vec::new();
    let mut buf = [0u8; 1024];
    loop {
        let n = tokio::time::timeout(DEADLINE, stream.read(&mut buf))
            .await
            .expect("a response before the deadline")
            .unwrap();
        assert!(n > 0, "closed before the response ended");
        response.extend_from_slice(&buf[..n]);
        let text = String::from_utf8_lossy(&response).to_string();
        if let Some((head, body)) = text.split_once("\r\n\r\n") {
            let length: usize = head
                .lines()
                .find_map(|l| {
                    l.to_ascii_lowercase()
                        .strip_prefix("content-length: ")
                        .map(|v| v.trim().parse().unwrap())
                })
                .expect("a Content-Length");
            if body.len() >= length {
                return text;
            }
        }
    }
}

/// Reads `stream` to its end (the server closed it), panicking after the deadline.
async fn closed_by_server(stream: &mut TcpStream, what: &str) {
    let mut rest = Vec::new();
    let read = tokio::time::timeout(DEADLINE, stream.read_to_end(&mut rest)).await;
    assert!(read.is_ok(), "{what}: the server kept the connection open");
}

#[tokio::test]
async fn a_connection_that_sends_no_headers_is_closed_by_the_server() {
    let listener = http::bind(SocketAddr::new(LOCALHOST, 0)).unwrap();
    let addr = listener.local_addr().unwrap();
    let limits = Limits {
        header_read_timeout: Duration::from_millis(200),
        max_connections: 4,
    };
    let server = tokio::spawn(http::serve(listener, ok_handler(), limits));
    // Half a request line, then nothing.
    let mut stream = TcpStream::connect(addr).await.unwrap();
    stream.write_all(b"GET / HTTP/1.1\r\n").await.unwrap();
    closed_by_server(&mut stream, "half-sent headers").await;
    // Connected, nothing sent at all.
    let mut idle = TcpStream::connect(addr).await.unwrap();
    closed_by_server(&mut idle, "an idle connection").await;
    server.abort();
}

#[tokio::test]
async fn connections_past_the_cap_wait_until_one_ends() {
    let listener = http::bind(SocketAddr::new(LOCALHOST, 0)).unwrap();
    let addr = listener.local_addr().unwrap();
    let limits = Limits {
        header_read_timeout: Duration::from_hours(1),
        max_connections: 1,
    };
    let server = tokio::spawn(http::serve(listener, ok_handler(), limits));
    // The first connection is served and stays open (keep-alive).
    let mut first = TcpStream::connect(addr).await.unwrap();
    assert!(keep_alive_get(&mut first).await.starts_with("HTTP/1.1 200"));
    // The second is in the backlog, not served, while the first is open.
    let second = tokio::spawn(get(addr, "/"));
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(!second.is_finished(), "served past the cap");
    drop(first);
    let answer = tokio::time::timeout(DEADLINE, second)
        .await
        .expect("served once the first connection ended")
        .unwrap();
    assert_eq!(answer.map(|a| a.0), Some(200));
    server.abort();
}

#[tokio::test]
async fn a_closed_health_port_closes_its_open_connections() {
    let status = Arc::new(Status::new(Duration::from_mins(1)));
    // No header timeout to speak of: only the port's closing can end the connection.
    let mut health = ServiceHealth::on(status, vec![LOCALHOST]).with_limits(Limits {
        header_read_timeout: Duration::from_hours(1),
        max_connections: 4,
    });
    let port = free_port();
    let check = HealthCheck {
        service: ObjectName::new("default", "web"),
        node_port: port,
        local_endpoints: 1,
    };
    health.sync(&[check]);
    let mut stream = TcpStream::connect(SocketAddr::new(LOCALHOST, port))
        .await
        .unwrap();
    assert!(keep_alive_get(&mut stream)
        .await
        .starts_with("HTTP/1.1 200"));
    health.sync(&[]);
    closed_by_server(&mut stream, "a connection to a closed health port").await;
}

#[tokio::test]
async fn a_port_given_up_and_taken_in_one_sync_is_served_at_once() {
    // The single-threaded test runtime cannot run the old server's aborted task between
    // the two: only closing its socket at once frees the port.
    let status = Arc::new(Status::new(Duration::from_mins(1)));
    let mut health = ServiceHealth::on(status, vec![LOCALHOST]);
    let port = free_port();
    let check = |name: &str| HealthCheck {
        service: ObjectName::new("default", name),
        node_port: port,
        local_endpoints: 1,
    };
    health.sync(&[check("web")]);
    assert_eq!(health.ports().len(), 1);
    // `web` goes, `api` takes its health check port, in the same sync.
    health.sync(&[check("api")]);
    assert_eq!(
        health.ports().into_iter().collect::<Vec<_>>(),
        [(ObjectName::new("default", "api"), port)]
    );
    let (code, body) = get(SocketAddr::new(LOCALHOST, port), "/").await.unwrap();
    assert_eq!(code, 200, "{body}");
    assert!(body.contains(r#""name":"api""#), "{body}");
}
