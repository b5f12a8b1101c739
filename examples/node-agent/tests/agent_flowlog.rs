//! The flow log (`--flow-log`) over a scripted event source, and drops by reason on
//! `/metrics` from the dataplane's `Stats::drops`.

use std::collections::{BTreeMap, VecDeque};
use std::io::Write;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use dataplane::testing::FakeDataplane;
use dataplane::Stats;
use dataplane_agent::flowlog::{self, Output};
use dataplane_agent::metrics::Metrics;
use dataplane_core::events::{
    DropReason, EventKind, EventOptions, EventSource, EventVerdict, FlowEvent, L4Protocol,
    Timestamp, Tuple,
};

/// Batches of events, each with the source's lost count once it is read.
type Batches = Arc<Mutex<VecDeque<(Vec<FlowEvent>, u64)>>>;

/// Events handed out in the batches scripted, with a lost count that grows as scripted.
struct Scripted {
    batches: Batches,
    lost: u64,
}

impl EventSource for Scripted {
    fn read(&mut self, out: &mut Vec<FlowEvent>, max: usize) -> Result<usize, dataplane::Error> {
        let mut batches = self.batches.lock().unwrap();
        let Some((mut events, lost)) = batches.pop_front() else {
            return Ok(0);
        };
        self.lost = lost;
        let n = events.len().min(max);
        out.extend(events.drain(..n));
        if !events.is_empty() {
            batches.push_front((events, lost));
        }
        Ok(n)
    }
    fn wait(&mut self, timeout: Duration) -> Result<(), dataplane::Error> {
        if self.batches.lock().unwrap().is_empty() {
            std::thread::sleep(timeout.min(Duration::from_millis(5)));
        }
        Ok(())
    }
    fn readiness_fd(&self) -> Option<std::os::fd::RawFd> {
        None
    }
    fn lost(&self) -> u64 {
        self.lost
    }
}

/// A writer into shared memory.
#[derive(Clone, Default)]
struct Shared(Arc<Mutex<Vec<u8>>>);

impl Write for Shared {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

fn event(n: u16, verdict: EventVerdict, reason: Option<DropReason>) -> FlowEvent {
    let kind = if reason.is_some() {
        EventKind::Drop
    } else {
        EventKind::NewConnection
    };
    let mut e = FlowEvent::new(
        Timestamp(1_700_000_000_000_000_000 + u64::from(n)),
        "node-0",
        kind,
        verdict,
        L4Protocol::Tcp,
        Tuple::new(
            format!("10.244.0.11:{}", 40_000 + n).parse().unwrap(),
            "10.96.0.10:80".parse().unwrap(),
        ),
    );
    e.reason = reason;
    e
}

/// The counter's value in the text exposition (0 when absent).
fn metric(text: &str, name_and_labels: &str) -> u64 {
    text.lines()
        .find_map(|l| l.strip_prefix(name_and_labels)?.trim().parse().ok())
        .unwrap_or(0)
}

#[test]
fn events_are_written_as_json_lines_and_losses_counted() {
    let first = vec![
        event(1, EventVerdict::Rejected, Some(DropReason::NoBackend)),
        event(2, EventVerdict::PolicyDenied, Some(DropReason::Policy)),
    ];
    let second = vec![event(3, EventVerdict::Translated, None)];
    let batches = Arc::new(Mutex::new(VecDeque::from([
        (first.clone(), 0),
        (second.clone(), 5),
    ])));
    let source = Scripted {
        batches: Arc::clone(&batches),
        lost: 0,
    };
    let out = Shared::default();
    let metrics = Arc::new(Metrics::new());
    let log = flowlog::spawn(
        Box::new(source),
        Box::new(out.clone()),
        Arc::clone(&metrics),
    )
    .unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    while String::from_utf8_lossy(&out.0.lock().unwrap())
        .lines()
        .count()
        < 3
    {
        assert!(Instant::now() < deadline, "the events were not written");
        std::thread::sleep(Duration::from_millis(10));
    }
    log.stop();
    let text = String::from_utf8(out.0.lock().unwrap().clone()).unwrap();
    let written: Vec<FlowEvent> = text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{l}: {e}")))
        .collect();
    let mut expected = first;
    expected.extend(second);
    assert_eq!(written, expected);
    assert!(text.contains(r#""reason":"no-backend""#), "{text}");
    let exposition = metrics.encode();
    assert_eq!(
        metric(&exposition, "dataplane_flow_events_total"),
        3,
        "{exposition}"
    );
    assert_eq!(
        metric(&exposition, "dataplane_flow_events_lost_total"),
        5,
        "{exposition}"
    );
}

#[test]
fn a_dataplane_without_events_runs_without_a_flow_log() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("flows.jsonl");
    let started = flowlog::start(
        &FakeDataplane::new(),
        &EventOptions::default(),
        &Output::File(path.clone()),
        Arc::new(Metrics::new()),
    )
    .unwrap();
    assert!(started.is_none(), "the fake dataplane has no event source");
    assert!(
        !path.exists(),
        "nothing opened for a log that will not be written"
    );
    assert_eq!("-".parse::<Output>(), Ok(Output::Stdout));
    assert!("".parse::<Output>().is_err());
}

#[test]
fn drops_by_reason_come_from_the_stats_drops() {
    let metrics = Metrics::new();
    let stats = |no_backend: u64, policy: u64| Stats {
        drops: BTreeMap::from([
            (DropReason::NoBackend, no_backend),
            (DropReason::Policy, policy),
        ]),
        ..Stats::default()
    };
    metrics.stats(&stats(3, 1), None);
    metrics.stats(&stats(5, 1), None);
    let text = metrics.encode();
    assert_eq!(
        metric(&text, r#"dataplane_drops_total{reason="no-backend"}"#),
        5,
        "{text}"
    );
    assert_eq!(
        metric(&text, r#"dataplane_drops_total{reason="policy"}"#),
        1,
        "{text}"
    );
    // The dataplane was reset: its counters start again from zero, the metric keeps growing.
    metrics.stats(&stats(2, 1), None);
    let text = metrics.encode();
    assert_eq!(
        metric(&text, r#"dataplane_drops_total{reason="no-backend"}"#),
        7,
        "{text}"
    );
}
