//! `dpctl flows`: the flow events of a running dataplane, selected as `hubble observe` selects
//! them (`--verdict`, `--reason`, `--from`, `--to`, `--service`, `--port`, `--protocol`: core's
//! [`EventFilter`]), as a table, one line per event, or JSON lines (one [`FlowEvent`] per line,
//! its stable schema).
//!
//! Events exist only while a reader is open: the backends keep no history (Hubble keeps a ring
//! of past flows in the agent; ours do not). Without `--follow`, dpctl opens a reader, takes
//! what is waiting in it right away and exits: for eBPF that is what the ring buffer holds
//! that no reader has consumed yet; for nftables and iptables (a netlink socket that receives
//! only what happens after it is opened) it is usually nothing. `--follow` keeps reading until
//! interrupted (or `--count` events).

use std::fmt::Write as _;
use std::io::{ErrorKind, Write};
use std::time::Duration;

use anyhow::Context;
use clap::{Args, ValueEnum};
use dataplane::events::{
    BoxEventSource, DropReason, EventFilter, EventKind, EventOptions, EventVerdict, FlowEvent,
    L4Protocol, PeerMatch,
};
use dataplane::{Inspect, ObjectName};

use crate::live::{parse_object_name, table};

/// How long one wait for events lasts before dpctl looks again (and at the lost counter).
const POLL: Duration = Duration::from_millis(200);
/// Events taken from the source per read.
const BATCH: usize = 1024;
/// Without `--follow`: the most events taken from what is waiting (a source that produces
/// faster than dpctl reads would otherwise never be empty).
const MAX_BUFFERED: usize = 1_000_000;

/// How `flows` prints.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum FlowsOutput {
    /// A table of the events (with `--follow`: one line per event, as `compact`).
    Table,
    /// One line per event, as `hubble observe` prints them.
    Compact,
    /// One JSON object per line (the `FlowEvent` schema).
    Json,
}

/// The flags of `dpctl flows`.
#[derive(Debug, Clone, Args)]
pub struct FlowsArgs {
    /// Keep reading and print events as they come, until interrupted.
    #[arg(short = 'f', long)]
    pub follow: bool,
    /// Only events with this verdict (repeatable: any of them): forwarded, translated,
    /// dropped, rejected, policy-denied.
    #[arg(long = "verdict", value_name = "VERDICT")]
    pub verdicts: Vec<EventVerdict>,
    /// Only drops with this reason (repeatable: any of them): no-backend, source-range,
    /// policy, ...
    #[arg(long = "reason", value_name = "REASON")]
    pub reasons: Vec<DropReason>,
    /// Only events from this side: a pod (namespace/pod), a namespace (namespace/), an
    /// address or a CIDR.
    #[arg(long, value_name = "PEER")]
    pub from: Option<PeerMatch>,
    /// Only events to this side (the frontend or the backend): as --from.
    #[arg(long, value_name = "PEER")]
    pub to: Option<PeerMatch>,
    /// Only events of this service (namespace/name).
    #[arg(long, value_name = "NAMESPACE/NAME", value_parser = parse_object_name)]
    pub service: Option<ObjectName>,
    /// Only events with this port on either side, before or after translation.
    #[arg(long)]
    pub port: Option<u16>,
    /// Only events of this IP protocol (`TCP`, `UDP`, `SCTP`, `ICMP`, `ICMPv6` or a number).
    #[arg(long)]
    pub protocol: Option<L4Protocol>,
    /// Without --follow: only the last N of the events that were waiting.
    #[arg(long, value_name = "N")]
    pub last: Option<usize>,
    /// Exit after N matching events.
    #[arg(long, value_name = "N")]
    pub count: Option<usize>,
    /// Ask for new-connection events too (the running dataplane decides: an inspector never
    /// changes its settings).
    #[arg(long)]
    pub new_connections: bool,
    /// Ask for allowed policy verdicts too (denials are always reported).
    #[arg(long)]
    pub policy_verdicts: bool,
    /// Output format.
    #[arg(short = 'o', long, value_enum, default_value_t = FlowsOutput::Table)]
    pub output: FlowsOutput,
}

impl FlowsArgs {
    /// The selection, as core's filter.
    pub fn filter(&self) -> EventFilter {
        EventFilter {
            verdicts: self.verdicts.iter().copied().collect(),
            reasons: self.reasons.iter().copied().collect(),
            from: self.from.clone(),
            to: self.to.clone(),
            service: self.service.clone(),
            port: self.port,
            protocol: self.protocol,
        }
    }

    fn event_options(&self) -> EventOptions {
        EventOptions {
            new_connections: self.new_connections,
            policy_verdicts: self.policy_verdicts,
        }
    }
}

/// `dpctl flows`.
pub fn run(inspect: &dyn Inspect, args: &FlowsArgs, out: &mut dyn Write) -> anyhow::Result<()> {
    let source = inspect
        .events(&args.event_options())
        .context("opening the dataplane's event reader")?;
    quietly(show(source, args, out))
}

/// A closed pipe (`dpctl flows -f | head`) is the reader leaving, not a failure.
fn quietly(result: anyhow::Result<()>) -> anyhow::Result<()> {
    match result {
        Err(e)
            if e.downcast_ref::<std::io::Error>()
                .is_some_and(|io| io.kind() == ErrorKind::BrokenPipe) =>
        {
            Ok(())
        }
        other => other,
    }
}

/// Reads `source` as `args` say and prints to `out`.
pub fn show(
    mut source: BoxEventSource,
    args: &FlowsArgs,
    out: &mut dyn Write,
) -> anyhow::Result<()> {
    let filter = args.filter();
    let mut batch = Vec::with_capacity(BATCH);
    if !args.follow {
        let mut events = Vec::new();
        let mut taken = 0;
        while taken < MAX_BUFFERED {
            batch.clear();
            let n = source.read(&mut batch, BATCH).context("reading events")?;
            if n == 0 {
                break;
            }
            taken += n;
            events.extend(batch.drain(..).filter(|e| filter.matches(e)));
        }
        if let Some(last) = args.last {
            events.drain(..events.len().saturating_sub(last));
        }
        if let Some(count) = args.count {
            events.truncate(count);
        }
        print_all(&events, args.output, out)?;
        report_lost(source.lost(), 0);
        return Ok(());
    }
    let mut shown = 0usize;
    let mut lost = 0;
    loop {
        batch.clear();
        let n = source.read(&mut batch, BATCH).context("reading events")?;
        lost = report_lost(source.lost(), lost);
        for event in batch.drain(..).filter(|e| filter.matches(e)) {
            print_one(&event, args.output, out)?;
            shown += 1;
            if args.count.is_some_and(|c| shown >= c) {
                return Ok(());
            }
        }
        out.flush()?;
        if n == 0 {
            source.wait(POLL).context("waiting for events")?;
        }
    }
}

/// Says on stderr how many events the kernel lost since `before`; returns the new total.
fn report_lost(total: u64, before: u64) -> u64 {
    if total > before {
        eprintln!(
            "warning: {} events lost (the reader was too slow for the kernel's buffer)",
            total - before
        );
    }
    total
}

fn print_one(event: &FlowEvent, output: FlowsOutput, out: &mut dyn Write) -> std::io::Result<()> {
    match output {
        FlowsOutput::Json => writeln!(out, "{}", event.to_json_line()),
        FlowsOutput::Table | FlowsOutput::Compact => writeln!(out, "{event}"),
    }
}

fn print_all(
    events: &[FlowEvent],
    output: FlowsOutput,
    out: &mut dyn Write,
) -> std::io::Result<()> {
    match output {
        FlowsOutput::Table => {
            if events.is_empty() {
                writeln!(out, "no events")
            } else {
                writeln!(out, "{}", events_table(events))
            }
        }
        _ => events.iter().try_for_each(|e| print_one(e, output, out)),
    }
}

/// The events as a table: time of day, node, both sides with their pods, the service and
/// backend, protocol and flags, verdict and reason, where it was seen.
pub fn events_table(events: &[FlowEvent]) -> comfy_table::Table {
    let mut t = table(&[
        "TIME",
        "NODE",
        "SOURCE",
        "DESTINATION",
        "PROTO",
        "TYPE",
        "VERDICT",
        "REASON",
        "POINT",
    ]);
    for e in events {
        let time = e.time.to_string();
        // `2026-12-06T14:02:03.123456789Z` → `14:02:03.123456`: the date is the same for a
        // demo's or a session's events, and microseconds order them.
        let time_of_day = time.get(11..26).unwrap_or(&time).to_owned();
        let mut source = e.original.source.to_string();
        if let Some(p) = &e.source_endpoint {
            let _ = write!(source, " ({p})");
        }
        let mut destination = e.original.destination.to_string();
        if let Some(s) = &e.service {
            let _ = write!(destination, " (service {s})");
        }
        let to = e
            .backend
            .or_else(|| e.translated.map(|t| t.destination))
            .filter(|to| *to != e.original.destination);
        if let Some(to) = to {
            let _ = write!(destination, " => {to}");
        }
        if let Some(p) = &e.destination_endpoint {
            let _ = write!(destination, " ({p})");
        }
        let mut proto = e.protocol.to_string();
        if let Some(flags) = e.tcp_flags.filter(|f| !f.is_empty()) {
            let _ = write!(proto, " {flags}");
        }
        let mut verdict = e.verdict.name().to_owned();
        if e.suppressed > 0 {
            let _ = write!(verdict, " (+{})", e.suppressed);
        }
        let mut point = e.point.map_or_else(|| "-".to_owned(), |p| p.to_string());
        if let Some(i) = &e.interface {
            let _ = write!(point, " {i}");
        }
        t.add_row([
            time_of_day,
            e.node.clone(),
            source,
            destination,
            proto,
            kind(e.kind).to_owned(),
            verdict,
            e.reason.map_or_else(|| "-".to_owned(), |r| r.to_string()),
            point,
        ]);
    }
    t
}

fn kind(kind: EventKind) -> &'static str {
    match kind {
        EventKind::Drop => "drop",
        EventKind::NewConnection => "new",
        EventKind::ConnectionEnd => "end",
        EventKind::PolicyVerdict => "policy",
    }
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;
    use crate::fake::{self, Step};

    #[derive(Parser)]
    struct T {
        #[command(flatten)]
        args: FlowsArgs,
    }

    fn args(flags: &[&str]) -> FlowsArgs {
        T::try_parse_from(std::iter::once("flows").chain(flags.iter().copied()))
            .unwrap()
            .args
    }

    fn run_with(node: &fake::FakeInspect, flags: &[&str]) -> anyhow::Result<String> {
        let mut out = Vec::new();
        run(node, &args(flags), &mut out)?;
        Ok(String::from_utf8(out).unwrap())
    }

    fn script() -> Vec<Step> {
        vec![
            Step::Events(vec![
                fake::drop_event(1, DropReason::NoBackend, EventVerdict::Rejected),
                fake::new_connection(2),
            ]),
            Step::Nothing,
            Step::Events(vec![
                fake::drop_event(3, DropReason::Policy, EventVerdict::PolicyDenied),
                fake::drop_event(4, DropReason::SourceRange, EventVerdict::Dropped),
            ]),
        ]
    }

    #[test]
    fn without_follow_it_prints_what_is_waiting_as_a_table_and_exits() {
        let mut node = fake::node();
        node.script = script();
        let text = run_with(&node, &[]).unwrap();
        let rows = fake::rows(&text);
        // The first empty read ends "what is waiting": the events after it are not read.
        assert_eq!(
            rows,
            [
                "TIME NODE SOURCE DESTINATION PROTO TYPE VERDICT REASON POINT",
                "14:02:01.000000 node-0 10.244.0.5:40000 (default/client) 10.96.0.10:80 \
                 (service default/web) TCP SYN drop rejected no-backend from-pod veth0",
                "14:02:02.000000 node-1 10.244.1.7:5353 (kube-system/dns) 10.96.0.20:53 \
                 (service default/api) => 10.244.0.9:53 (default/api-0) UDP new translated - -",
            ]
        );
        assert_eq!(
            *node.waits.lock().unwrap(),
            0,
            "no waiting without --follow"
        );
        node.script = vec![];
        assert_eq!(run_with(&node, &[]).unwrap().trim(), "no events");
    }

    #[test]
    fn follow_prints_json_lines_that_match_the_filter() {
        let mut node = fake::node();
        node.script = script();
        let text = run_with(
            &node,
            &[
                "--follow",
                "--verdict",
                "dropped",
                "--verdict",
                "policy-denied",
                "-o",
                "json",
                "--count",
                "2",
                "--new-connections",
            ],
        )
        .unwrap();
        let events: Vec<FlowEvent> = text
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        assert_eq!(
            events,
            [
                fake::drop_event(3, DropReason::Policy, EventVerdict::PolicyDenied),
                fake::drop_event(4, DropReason::SourceRange, EventVerdict::Dropped),
            ]
        );
        assert_eq!(
            *node.waits.lock().unwrap(),
            1,
            "waited once, on the empty read"
        );
        assert_eq!(
            *node.asked.lock().unwrap(),
            [EventOptions {
                new_connections: true,
                policy_verdicts: false
            }]
        );
    }

    #[test]
    fn every_selection_flag_reaches_the_filter() {
        let a = args(&[
            "--reason",
            "no-backend",
            "--from",
            "default/",
            "--to",
            "10.96.0.0/12",
            "--service",
            "default/web",
            "--port",
            "80",
            "--protocol",
            "tcp",
        ]);
        let f = a.filter();
        assert_eq!(f.reasons, std::iter::once(DropReason::NoBackend).collect());
        assert_eq!(f.from, Some(PeerMatch::Namespace("default".to_owned())));
        assert_eq!(f.to, Some("10.96.0.0/12".parse().unwrap()));
        assert_eq!(f.service, Some(ObjectName::new("default", "web")));
        assert_eq!((f.port, f.protocol), (Some(80), Some(L4Protocol::Tcp)));
        let rejected = fake::drop_event(1, DropReason::NoBackend, EventVerdict::Rejected);
        assert!(f.matches(&rejected));
        assert!(!f.matches(&fake::new_connection(2)));
        for bad in [
            &["--verdict", "gone"][..],
            &["--reason", "bored"],
            &["--from", "a/b/c"],
            &["--service", "web"],
            &["--protocol", "tcpx"],
        ] {
            let err = T::try_parse_from(std::iter::once("flows").chain(bad.iter().copied()))
                .err()
                .unwrap_or_else(|| panic!("{bad:?} should be refused"));
            assert!(err.to_string().contains(bad[1]), "{bad:?}: {err}");
        }
    }

    #[test]
    fn last_keeps_the_newest_and_compact_is_one_line_each() {
        let mut node = fake::node();
        node.script = vec![Step::Events(
            (1..=5)
                .map(|s| fake::drop_event(s, DropReason::NoBackend, EventVerdict::Dropped))
                .collect(),
        )];
        let text = run_with(&node, &["--last", "2", "-o", "compact"]).unwrap();
        assert_eq!(
            text.lines().collect::<Vec<_>>(),
            [
                fake::drop_event(4, DropReason::NoBackend, EventVerdict::Dropped).to_string(),
                fake::drop_event(5, DropReason::NoBackend, EventVerdict::Dropped).to_string(),
            ]
        );
    }

    #[test]
    fn a_source_error_fails_the_command_with_its_cause() {
        let mut node = fake::node();
        node.script = vec![Step::Fail];
        let err = run_with(&node, &["--follow"]).unwrap_err();
        assert!(format!("{err:#}").contains("map gone"), "{err:#}");
    }

    #[test]
    fn a_closed_pipe_ends_quietly() {
        struct Closed;
        impl Write for Closed {
            fn write(&mut self, _: &[u8]) -> std::io::Result<usize> {
                Err(ErrorKind::BrokenPipe.into())
            }
            fn flush(&mut self) -> std::io::Result<()> {
                Ok(())
            }
        }
        let mut node = fake::node();
        node.script = script();
        run(&node, &args(&["--follow", "-o", "json"]), &mut Closed).unwrap();
    }
}
