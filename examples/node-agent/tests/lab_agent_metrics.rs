//! The agent's `/metrics`, scraped from inside each node's namespace (it listens on
//! 127.0.0.1 there) and parsed: kube-proxy's names where one exists (last sync time, sync
//! duration, network programming latency from the EndpointSlice trigger-time annotation,
//! services without local endpoints), and the agent's services gauge, which follows the
//! manifest directory. Plus the parser itself, without root.

mod common;

use std::time::{Duration, SystemTime};

use common::agent::{Backend, LAST_SYNC};
use common::manifests::{self, LOCAL, WEB};
use common::prom::{self, Metrics};
use dataplane_testkit::Family;

/// The agent's gauge of the services it programs.
const SERVICES: &str = "dataplane_services";
const SYNC_DURATION: &str = "kubeproxy_sync_proxy_rules_duration_seconds";
const PROGRAMMING: &str = "kubeproxy_network_programming_duration_seconds";
const NO_LOCAL: &str = "kubeproxy_sync_proxy_rules_no_local_endpoints_total";
/// The agent's counter of failed syncs.
const APPLY_ERRORS: &str = "dataplane_apply_errors_total";

fn gauge(m: &Metrics, name: &str, labels: &[(&str, &str)]) -> Result<f64, String> {
    m.get(name, labels)
        .ok_or_else(|| format!("no {name}{labels:?} in the scrape"))
}

/// A sample that counts things: a whole number.
fn count(m: &Metrics, name: &str, labels: &[(&str, &str)]) -> Result<u64, String> {
    let v = gauge(m, name, labels)?;
    if v >= 0.0 && v.fract() == 0.0 && v < 1e15 {
        #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
        Ok(v as u64)
    } else {
        Err(format!("{name}{labels:?} = {v}: not a count"))
    }
}

fn metrics_follow_the_manifests(backend: Backend) {
    let _serial = common::serial();
    let (lab, dirs, mut agents) = common::start_lab(backend, 0);
    let now = || {
        SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .expect("after 1970")
            .as_secs_f64()
    };

    // web: endpoints on node-1, the slice stamped by "the EndpointSlice controller" now;
    // local (externalTrafficPolicy Local): its endpoint on node-1 only.
    let mut web = manifests::service(&WEB);
    web.push_str(&manifests::endpoint_slice_of(
        &lab,
        WEB.name,
        &[2],
        Some(SystemTime::now()),
        Family::V4,
        WEB.udp,
    ));
    dirs.write("web.yaml", &web);
    let mut local = manifests::service(&LOCAL);
    local.push_str(&manifests::endpoint_slice(&lab, LOCAL.name, &[3], None));
    dirs.write("local.yaml", &local);

    for node in 0..2 {
        let m = agents.wait_metrics(node, "both services in the metrics", |m| {
            match count(m, SERVICES, &[])? {
                2 => Ok(m.clone()),
                n => Err(format!("{SERVICES} = {n}")),
            }
        });
        let last = gauge(&m, LAST_SYNC, &[("ip_family", "IPv4")]).expect("last sync time");
        assert!(
            last > 0.0 && last <= now() + 5.0,
            "{LAST_SYNC} = {last}: a unix time, not in the future"
        );
        assert_eq!(
            m.types.get(SYNC_DURATION).map(String::as_str),
            Some("histogram")
        );
        let syncs = count(&m, &format!("{SYNC_DURATION}_count"), &[]).expect("sync count");
        assert!(syncs >= 1, "{SYNC_DURATION}_count = {syncs}");
        assert_eq!(count(&m, APPLY_ERRORS, &[]), Ok(0), "no sync failed");

        // The slice carried a trigger time: its change was programmed, and the latency was
        // observed (kube-proxy observes it for every slice change it syncs).
        let programmed =
            agents.wait_metrics(node, "network programming observed", |m| {
                match count(m, &format!("{PROGRAMMING}_count"), &[])? {
                    n if n >= 1 => Ok(m.clone()),
                    n => Err(format!("{PROGRAMMING}_count = {n}")),
                }
            });
        let sum = gauge(&programmed, &format!("{PROGRAMMING}_sum"), &[]).expect("sum");
        assert!(
            (0.0..3600.0).contains(&sum),
            "{PROGRAMMING}_sum = {sum}: seconds since the trigger time"
        );

        // local has no endpoint on node-0: counted there (kube-proxy's gauge, by traffic
        // policy), not on node-1.
        let expected = u64::from(node == 0);
        agents.wait_metrics(node, "services without local endpoints", |m| {
            match count(m, NO_LOCAL, &[("traffic_policy", "external")])? {
                n if n == expected => Ok(()),
                n => Err(format!("{NO_LOCAL}{{traffic_policy=external}} = {n}")),
            }
        });
    }

    // A file deleted: the gauges follow.
    dirs.remove("local.yaml");
    for node in 0..2 {
        agents.wait_metrics(node, "one service left", |m| {
            let services = count(m, SERVICES, &[])?;
            let no_local = count(m, NO_LOCAL, &[("traffic_policy", "external")])?;
            if services == 1 && no_local == 0 {
                Ok(())
            } else {
                Err(format!("{SERVICES} = {services}, {NO_LOCAL} = {no_local}"))
            }
        });
    }
    // A later sync moves the last-sync time on.
    let before = gauge(
        &agents.metrics(0).expect("scrape"),
        LAST_SYNC,
        &[("ip_family", "IPv4")],
    )
    .expect("time");
    // Not an assertion on time: a gauge kept in whole seconds would otherwise show the same
    // value for a sync within the same second.
    std::thread::sleep(Duration::from_millis(1100));
    dirs.remove("web.yaml");
    agents.wait_metrics(0, "a sync after the deletion", |m| {
        let services = count(m, SERVICES, &[])?;
        let last = gauge(m, LAST_SYNC, &[("ip_family", "IPv4")])?;
        if services == 0 && last > before {
            Ok(())
        } else {
            Err(format!(
                "{SERVICES} = {services}, {LAST_SYNC} = {last} (before: {before})"
            ))
        }
    });
}

common::per_backend!(metrics_follow_the_manifests:
    metrics_follow_the_manifests_ebpf => Ebpf,
    metrics_follow_the_manifests_nft => Nft,
    metrics_follow_the_manifests_iptables => Iptables,
);

#[test]
fn prometheus_text_parses() {
    let text = r#"# HELP kubeproxy_sync_proxy_rules_last_timestamp_seconds The last time proxy rules were successfully synced.
# TYPE kubeproxy_sync_proxy_rules_last_timestamp_seconds gauge
kubeproxy_sync_proxy_rules_last_timestamp_seconds 1.7650e9
# TYPE kubeproxy_sync_proxy_rules_duration_seconds histogram
kubeproxy_sync_proxy_rules_duration_seconds_sum 0.25
kubeproxy_sync_proxy_rules_duration_seconds_count 3
kubeproxy_sync_proxy_rules_duration_seconds_bucket{le="0.001"} 0
kubeproxy_sync_proxy_rules_duration_seconds_bucket{le="+Inf"} 3
# TYPE drops counter
drops_total{reason="no \"backend\"",iface="eth0"} 7 # {trace_id="x"} 1
drops_total{reason="policy\\deny",iface="vp0"} 2 1700000000
# EOF
"#;
    let m = prom::parse(text).expect("parses");
    assert!(m.eof);
    assert_eq!(
        m.get("kubeproxy_sync_proxy_rules_last_timestamp_seconds", &[]),
        Some(1.765e9)
    );
    assert_eq!(
        m.types
            .get("kubeproxy_sync_proxy_rules_duration_seconds")
            .map(String::as_str),
        Some("histogram")
    );
    assert_eq!(
        m.get(
            "kubeproxy_sync_proxy_rules_duration_seconds_bucket",
            &[("le", "+Inf")]
        ),
        Some(3.0)
    );
    assert_eq!(
        m.get("drops_total", &[("reason", "no \"backend\"")]),
        Some(7.0)
    );
    assert_eq!(
        m.get("drops_total", &[("reason", "policy\\deny")]),
        Some(2.0)
    );
    assert!((m.sum("drops_total") - 9.0).abs() < f64::EPSILON);
    assert_eq!(m.get("absent", &[]), None);

    for bad in [
        "name{le=\"1\" 3\n",
        "name{le=\"1} 3\n",
        "name not-a-number\n",
        "bad-name 1\n",
        "# EOF\nlate 1\n",
    ] {
        assert!(prom::parse(bad).is_err(), "{bad:?} must not parse");
    }
}

#[test]
fn http_responses_parse() {
    let chunked = b"HTTP/1.1 503 Service Unavailable\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n";
    let r = common::http::parse(chunked).expect("parses");
    assert_eq!((r.status, r.body.as_str()), (503, "hello world"));
    let sized = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\ncontent-type: application/json\r\n\r\n{}";
    let r = common::http::parse(sized).expect("parses");
    assert_eq!((r.status, r.body.as_str()), (200, "{}"));
    assert_eq!(r.header("content-type"), Some("application/json"));
    assert!(common::http::parse(b"HTTP/1.1 200 OK\r\nContent-Length: 9\r\n\r\nshort").is_err());
    assert!(common::http::parse(b"garbage").is_err());
}
