//! The agent's HTTP servers: the addresses they listen on, their limits, and health ports
//! that close their connections. Tests that bind wildcard addresses run in a network
//! namespace of their own (root only), never in the machine's.

mod agent_common;

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;

use agent_common::harness::get;
use dataplane_agent::health::{serve_healthz, Status};
use dataplane_agent::metrics::{serve_metrics, Metrics};

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
