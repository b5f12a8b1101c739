//! SCTP probes and servers over raw sockets, pod to pod with no dataplane: what a NAT that
//! breaks the `CRC32c` or the ports looks like to a probe. The breakage is made by nftables
//! payload rewrites in the pods' own output hooks.
//!
//! ```text
//!   pod-0-0 (client) ── node-0 ── pod-0-1 (server :8080)
//!   output hook: rewrites the request's          output hook: rewrites the answer's
//!   checksum (the server reports it)             checksum or source port
//! ```

use std::net::SocketAddr;
use std::time::Duration;

use dataplane_core::Protocol;
use dataplane_testkit::{
    probe, probe_batch, probe_from, require_root, BatchOutcome, BatchProbe, Family, Lab, LabSpec,
    NetNs, ProbeOutcome, TrafficError, SERVER_PORT,
};

const TIMEOUT: Duration = Duration::from_secs(3);

fn lab() -> Lab {
    Lab::new(LabSpec {
        nodes: 1,
        pods_per_node: 2,
        external_clients: 1,
        ipv6: true,
    })
    .unwrap()
}

/// Rewrites `bits` (an nftables raw payload expression of the transport header) of every
/// SCTP packet leaving `netns` to `value`.
fn rewrite_output(netns: &NetNs, bits: &str, value: &str) {
    let script = format!(
        "table inet sctplab {{\n chain out {{\n  type filter hook output priority 0;\n  \
         meta l4proto sctp {bits} set {value}\n }}\n}}\n"
    );
    netns
        .exec_checked("nft", &["-f", "-"], Some(&script))
        .unwrap();
}

fn stop_rewriting(netns: &NetNs) {
    netns
        .exec_checked("nft", &["delete", "table", "inet", "sctplab"], None)
        .unwrap();
}

fn server(lab: &Lab, family: Family) -> SocketAddr {
    SocketAddr::new(lab.pod(1).address(family).unwrap(), SERVER_PORT)
}

/// Pod 0's probes of pod 1 in both families fail with a bad checksum (the rewritten value
/// `12 34 56 78`, read little-endian), their message saying `says`.
fn expect_bad_checksum(lab: &Lab, says: &str) {
    for family in [Family::V4, Family::V6] {
        let dst = server(lab, family);
        match probe(&lab.pod(0).netns, dst, Protocol::Sctp, TIMEOUT) {
            Err(e @ TrafficError::BadChecksum { .. }) => {
                let text = e.to_string();
                assert!(text.contains(says), "{text}");
                assert!(text.contains("found 0x78563412"), "{text}");
            }
            other => panic!("{dst}: {other:?}"),
        }
    }
}

/// Pod 0's IPv4 probe of pod 1 is answered.
fn expect_answer(lab: &Lab) {
    let outcome = probe(
        &lab.pod(0).netns,
        server(lab, Family::V4),
        Protocol::Sctp,
        TIMEOUT,
    )
    .unwrap();
    assert_eq!(outcome.backend(), Some("pod-0-1"), "{outcome:?}");
}

#[test]
fn an_sctp_probe_names_its_server_and_closes_its_association() {
    if !require_root("an_sctp_probe_names_its_server_and_closes_its_association") {
        return;
    }
    let lab = lab();
    for family in [Family::V4, Family::V6] {
        let dst = server(&lab, family);
        // A fixed source port twice: the first association's ABORT lets the second start.
        let source = SocketAddr::new(lab.pod(0).address(family).unwrap(), 41_000);
        for _ in 0..2 {
            let outcome = probe_from(
                &lab.pod(0).netns,
                Some(source),
                dst,
                Protocol::Sctp,
                TIMEOUT,
            )
            .unwrap();
            let ProbeOutcome::Answered {
                backend,
                seen_source,
                local,
                ..
            } = outcome
            else {
                panic!("{dst}: {outcome:?}");
            };
            assert_eq!(backend, "pod-0-1");
            assert_eq!(seen_source, source);
            assert_eq!(local, source);
        }
        // A port nobody serves in a namespace that serves SCTP: no answer (the server's raw
        // socket takes the packet, so the kernel sends no protocol unreachable).
        let unserved = SocketAddr::new(dst.ip(), 9);
        let outcome = probe(
            &lab.pod(0).netns,
            unserved,
            Protocol::Sctp,
            Duration::from_millis(500),
        )
        .unwrap();
        assert_eq!(outcome, ProbeOutcome::Timeout, "{unserved}");
    }
}

#[test]
fn a_corrupted_answer_checksum_fails_the_probe() {
    if !require_root("a_corrupted_answer_checksum_fails_the_probe") {
        return;
    }
    let lab = lab();
    rewrite_output(&lab.pod(1).netns, "@th,64,32", "0x12345678");
    expect_bad_checksum(&lab, "sctp INIT-ACK from");
    stop_rewriting(&lab.pod(1).netns);
    expect_answer(&lab);
}

#[test]
fn a_corrupted_request_checksum_is_reported_by_the_server() {
    if !require_root("a_corrupted_request_checksum_is_reported_by_the_server") {
        return;
    }
    let lab = lab();
    rewrite_output(&lab.pod(0).netns, "@th,64,32", "0x12345678");
    expect_bad_checksum(&lab, "as the server got it");
}

#[test]
fn an_answer_from_the_wrong_port_is_ignored() {
    if !require_root("an_answer_from_the_wrong_port_is_ignored") {
        return;
    }
    let lab = lab();
    // The answers leave from port 8081 (and with a checksum that no longer fits: the port
    // is checked first).
    rewrite_output(&lab.pod(1).netns, "@th,0,16", "8081");
    for family in [Family::V4, Family::V6] {
        let dst = server(&lab, family);
        let outcome = probe(
            &lab.pod(0).netns,
            dst,
            Protocol::Sctp,
            Duration::from_millis(1500),
        )
        .unwrap();
        assert_eq!(outcome, ProbeOutcome::Timeout, "{dst}");
    }
}

#[test]
fn sctp_probes_run_in_a_batch() {
    if !require_root("sctp_probes_run_in_a_batch") {
        return;
    }
    let lab = lab();
    let node = lab.node(0);
    let closed = |family| SocketAddr::new(node.address(family).unwrap(), 5);
    let answered = |destination, protocol| (destination, protocol, Some("pod-0-1"));
    let ended = |destination, outcome| (destination, Protocol::Sctp, outcome);
    let probes = [
        answered(server(&lab, Family::V4), Protocol::Sctp),
        answered(server(&lab, Family::V6), Protocol::Tcp),
        answered(server(&lab, Family::V6), Protocol::Sctp),
        answered(server(&lab, Family::V4), Protocol::Udp),
    ];
    // The node runs no server, so nothing in it speaks SCTP: ICMP protocol unreachable, in
    // IPv6 a parameter problem (unrecognized next header).
    let ends = [
        ended(closed(Family::V4), ProbeOutcome::Refused),
        ended(closed(Family::V6), ProbeOutcome::Refused),
    ];
    let batch: Vec<BatchProbe> = probes
        .iter()
        .map(|(d, p, _)| (*d, *p))
        .chain(ends.iter().map(|(d, p, _)| (*d, *p)))
        .map(|(destination, protocol)| BatchProbe {
            destination,
            protocol,
            source_port: None,
            timeout: TIMEOUT,
        })
        .collect();
    let outcomes = probe_batch(&lab.pod(0).netns, &batch).unwrap();
    for ((destination, protocol, backend), outcome) in probes.iter().zip(&outcomes) {
        assert_eq!(
            outcome.backend(),
            *backend,
            "{protocol} {destination}: {outcome:?}"
        );
    }
    for ((destination, _, want), outcome) in ends.iter().zip(&outcomes[probes.len()..]) {
        assert_eq!(
            *outcome,
            BatchOutcome::Ended(want.clone()),
            "sctp {destination}"
        );
    }
    // The external client knows only the underlay: no route to a pod.
    for family in [Family::V4, Family::V6] {
        let destination = server(&lab, family);
        let outcome = probe(&lab.external(0).netns, destination, Protocol::Sctp, TIMEOUT).unwrap();
        assert_eq!(outcome, ProbeOutcome::Unreachable, "{destination}");
    }
}

/// The handshake and the request take the kernel's SCTP conntrack (in the server's
/// namespace, enabled there by an nftables `ct` rule) through `COOKIE_WAIT` (the INIT-ACK)
/// and `COOKIE_ECHOED` to `ESTABLISHED` (the COOKIE-ACK), and the probe's ABORT closes the
/// entry: what `conntrack -E` reports.
#[test]
fn an_sctp_probe_walks_conntrack_to_established_and_closes_it() {
    if !require_root("an_sctp_probe_walks_conntrack_to_established_and_closes_it") {
        return;
    }
    let lab = lab();
    let pod = lab.pod(1);
    pod.netns
        .exec_checked(
            "nft",
            &["-f", "-"],
            Some("table inet sctplab {\n chain in {\n  type filter hook input priority 0;\n  ct state new counter\n }\n}\n"),
        )
        .unwrap();
    let events = std::process::Command::new("ip")
        .args([
            "netns",
            "exec",
            pod.netns.name(),
            // Line-buffered: a pipe would otherwise get its lines in blocks.
            "stdbuf",
            "-oL",
            "conntrack",
            "-E",
            "-p",
            "sctp",
        ])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    // Lines as `conntrack -E` prints them, read on a thread of their own: the test waits for
    // what it expects with a deadline instead of guessing how long the tool takes to
    // subscribe (a loaded machine) or to print.
    let mut events = events;
    let stdout = events.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel::<String>();
    std::thread::spawn(move || {
        use std::io::BufRead;
        for line in std::io::BufReader::new(stdout)
            .lines()
            .map_while(Result::ok)
        {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    // Probes until one association's whole walk is seen (each probe has a source port of its
    // own; one that started before `conntrack -E` had subscribed shows only part of its walk).
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    let mut text = String::new();
    let mut walks: std::collections::BTreeMap<String, Vec<&'static str>> =
        std::collections::BTreeMap::new();
    let full = ["COOKIE_WAIT", "COOKIE_ECHOED", "ESTABLISHED", "CLOSED"];
    let done = |walks: &std::collections::BTreeMap<String, Vec<&'static str>>| {
        walks.values().any(|walk| {
            // This kernel enters an INIT as CLOSED (`[NEW] ... CLOSED [UNREPLIED]`); older
            // ones as COOKIE_WAIT. The rest is the same.
            let from_init: Vec<&str> = walk
                .iter()
                .copied()
                .skip_while(|s| *s != "COOKIE_WAIT")
                .collect();
            from_init == full
        })
    };
    while !done(&walks) && std::time::Instant::now() < deadline {
        expect_answer(&lab);
        let until = std::time::Instant::now() + Duration::from_secs(2);
        while !done(&walks) {
            let Some(left) = until.checked_duration_since(std::time::Instant::now()) else {
                break;
            };
            let Ok(line) = rx.recv_timeout(left) else {
                break;
            };
            let state = full
                .into_iter()
                .find(|state| line.split_whitespace().any(|w| w == *state));
            let port = line
                .split_whitespace()
                .find(|w| w.starts_with("sport="))
                .map(str::to_owned);
            if let (Some(state), Some(port)) = (state, port) {
                walks.entry(port).or_default().push(state);
            }
            text.push_str(&line);
            text.push('\n');
        }
    }
    let _ = events.kill();
    let _ = events.wait();
    assert!(
        done(&walks),
        "no association walked {full:?}: {walks:?}\n{text}"
    );
}
