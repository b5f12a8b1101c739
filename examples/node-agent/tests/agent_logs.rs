//! Logging: one line per sync, and a translation warning logged once per object version (its
//! own test binary: the test installs a log subscriber for its thread, and tracing caches
//! per call site whether anyone listens, which other tests' threads would race with).

mod agent_common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use agent_common::harness::{harness, list_all, object};
use agent_common::service;
use dataplane_agent::runner::RunKind;
use dataplane_agent::source::SourceEvent;

/// A log sink for the test's thread.
#[derive(Clone, Default)]
struct Logs(Arc<std::sync::Mutex<Vec<u8>>>);

impl std::io::Write for Logs {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Logs {
    fn count(&self, needle: &str) -> usize {
        String::from_utf8_lossy(&self.0.lock().unwrap())
            .matches(needle)
            .count()
    }
}

#[tokio::test]
async fn a_translation_warning_is_logged_once_per_object_version() {
    let logs = Logs::default();
    let writer = logs.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_writer(move || writer.clone())
        .with_ansi(false)
        .finish();
    // The test runs on one thread (tokio's current-thread runtime): the subscriber sees it all.
    let _guard = tracing::subscriber::set_default(subscriber);
    let mut h = harness(Duration::from_mins(1));
    list_all(&mut h, 40_000);
    h.reconciler.sync_if_due(Instant::now()).await.unwrap();
    h.reconciler.sync(RunKind::Full).await.report.unwrap();
    h.reconciler.sync(RunKind::Partial).await.report.unwrap();
    let warning = "40000 is outside the node port range";
    assert_eq!(logs.count(warning), 1, "three syncs, one warning logged");
    assert_eq!(logs.count(" synced"), 3, "one line per sync");
    // The same service again, only its resourceVersion new: no change, not logged again.
    h.reconciler.handle(SourceEvent::Applied(object(
        &service("web", "10.96.0.10", 80, Some(40_000))
            .replace("  name: web\n", "  name: web\n  resourceVersion: \"2\"\n"),
    )));
    h.reconciler.sync(RunKind::Partial).await.report.unwrap();
    assert_eq!(logs.count(warning), 1);
    // A new version of the service (another port), still with the problem: logged again,
    // once.
    h.reconciler.handle(SourceEvent::Applied(object(&service(
        "web",
        "10.96.0.10",
        81,
        Some(40_000),
    ))));
    h.reconciler.sync(RunKind::Partial).await.report.unwrap();
    h.reconciler.sync(RunKind::Partial).await.report.unwrap();
    assert_eq!(logs.count(warning), 2);
}

#[tokio::test]
async fn a_dataplane_note_is_logged_again_when_it_comes_back() {
    let logs = Logs::default();
    let writer = logs.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_writer(move || writer.clone())
        .with_ansi(false)
        .finish();
    let _guard = tracing::subscriber::set_default(subscriber);
    // A dataplane without TCP: the service's port is skipped, and says so.
    let fake = dataplane::testing::FakeDataplane::new();
    let full_caps = dataplane::testing::FakeDataplane::default_capabilities();
    let mut no_tcp = full_caps.clone();
    no_tcp.protocols.remove(&dataplane::Protocol::Tcp);
    fake.set_capabilities(no_tcp.clone());
    let mut h = agent_common::harness::harness_over(
        Duration::from_mins(1),
        Box::new(fake.clone()),
        fake.clone(),
    );
    list_all(&mut h, 30_080);
    h.reconciler.sync_if_due(Instant::now()).await.unwrap();
    h.reconciler.sync(RunKind::Full).await.report.unwrap();
    let note = "service default/web";
    assert_eq!(logs.count(note), 1, "two syncs, one note logged");
    // TCP is back: the note goes; then gone again: the note is logged again (it was
    // remembered forever before, and never logged a second time).
    fake.set_capabilities(full_caps);
    h.reconciler.sync(RunKind::Full).await.report.unwrap();
    assert_eq!(logs.count(note), 1);
    fake.set_capabilities(no_tcp);
    h.reconciler.sync(RunKind::Full).await.report.unwrap();
    assert_eq!(logs.count(note), 2);
}
