//! Flow events: what a dataplane saw happen to packets and connections (drops with their
//! reason, new connections, policy verdicts), one model for every backend.
//!
//! A [`FlowEvent`] comes from an [`EventSource`]: [`Dataplane::events`](crate::Dataplane::events)
//! on a dataplane this process owns, or [`Inspect::events`](crate::Inspect::events) on a node
//! another process programmed ([`inspect`](crate::inspect)). Read a source as a blocking
//! iterator ([`BlockingEvents`]) or, with the `tokio` feature, as a [`Stream`] ([`EventStream`]).
//! [`EventFilter`] selects events as `hubble observe` does (`dpctl flows` uses it).
//!
//! ```no_run
//! # #[cfg(feature = "tokio")]
//! # async fn example(source: dataplane::events::BoxEventSource) -> std::io::Result<()> {
//! use dataplane::events::{EventFilter, EventStream, EventVerdict};
//!
//! let mut filter = EventFilter::default();
//! filter.verdicts.insert(EventVerdict::Dropped);
//! let mut drops = EventStream::with_filter(source, filter)?;
//! // With any Stream combinator library: `while let Some(event) = drops.next().await`.
//! # drop(drops);
//! # Ok(())
//! # }
//! ```

pub use dataplane_core::events::{
    BlockingEvents, BoxEventSource, Direction, DropReason, EventFilter, EventKind, EventOptions,
    EventParseError, EventSource, EventVerdict, FlowEvent, L4Protocol, ObservationPoint, PeerMatch,
    TcpFlags, Timestamp, Tuple, EVENT_SCHEMA_VERSION,
};

#[cfg(feature = "tokio")]
pub use stream::{EventStream, EventStreamOptions};

#[cfg(feature = "tokio")]
mod stream {
    //! [`EventStream`]: an [`EventSource`] read on a thread of its own, as a `Stream`.
    //!
    //! **Why a thread, not readiness on the source's file descriptor.** A source may have no
    //! descriptor at all ([`EventSource::readiness_fd`] is an `Option`, and a source whose
    //! kernel object cannot be polled waits with [`EventSource::wait`]); waiting on a
    //! descriptor would need tokio's reactor (`AsyncFd`, the `net` feature and a runtime with
    //! an I/O driver), while this crate's async parts need none (as
    //! [`AsyncDataplane`](crate::AsyncDataplane): only tokio's channels, which work on any
    //! executor); and decoding a batch of ring-buffer records or netlink messages is CPU work
    //! that is better off the runtime's threads. The cost is one thread per stream, asleep in
    //! `wait` while nothing happens.
    //!
    //! **Back-pressure.** The channel to the stream is bounded: when the consumer is slower
    //! than the events, the thread stops reading, the kernel's buffer fills and the kernel
    //! counts what it cannot keep ([`EventStream::lost`]): memory stays bounded and the
    //! datapath never waits for a reader, as with the blocking iterator.
    //!
    //! **End.** Dropping the stream closes the channel; the thread notices within one poll
    //! interval (or at once when it is blocked handing over an event), drops the source
    //! (closing its kernel objects) and ends. A source error is yielded once, then the stream
    //! ends.

    use std::fmt;
    use std::pin::Pin;
    use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
    use std::sync::Arc;
    use std::task::{Context, Poll};
    use std::time::Duration;

    use dataplane_core::events::{BoxEventSource, EventFilter, EventSource, FlowEvent};
    use dataplane_core::Error;
    use futures_core::Stream;
    use tokio::sync::mpsc;

    /// How a [`EventStream`] reads its source.
    #[derive(Debug, Clone)]
    pub struct EventStreamOptions {
        /// Only events that match are yielded (default: every event). Applied on the reader
        /// thread, so that filtered-out events cost the consumer nothing.
        pub filter: EventFilter,
        /// The longest the reader waits in [`EventSource::wait`] before it looks whether the
        /// stream was dropped (default 100 ms): the latest a dropped stream's thread ends.
        pub poll: Duration,
        /// Events read but not yet taken by the consumer, at most (default 1024); beyond
        /// that the reader stops reading and the kernel's buffer takes the rest.
        pub capacity: usize,
        /// Events read from the source at once, at most (default 256).
        pub batch: usize,
    }

    impl Default for EventStreamOptions {
        fn default() -> Self {
            Self {
                filter: EventFilter::default(),
                poll: Duration::from_millis(100),
                capacity: 1024,
                batch: 256,
            }
        }
    }

    #[derive(Debug, Default)]
    struct Shared {
        /// The stream is gone: the thread ends at its next look.
        stopped: AtomicBool,
        /// The source's [`EventSource::lost`], as of its last read.
        lost: AtomicU64,
        /// The thread has ended (it dropped the source).
        ended: AtomicBool,
    }

    /// The events of an [`EventSource`] as a [`Stream`] of `Result<FlowEvent, Error>`, read
    /// on a thread of its own (see the module's notes for why, and for back-pressure).
    /// Runtime-independent: poll it from any executor.
    pub struct EventStream {
        events: mpsc::Receiver<Result<FlowEvent, Error>>,
        shared: Arc<Shared>,
    }

    impl fmt::Debug for EventStream {
        fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.debug_struct("EventStream")
                .field("queued", &self.events.len())
                .field("lost", &self.lost())
                .finish_non_exhaustive()
        }
    }

    impl EventStream {
        /// Streams every event of `source`. Fails only when the operating system cannot
        /// start a thread.
        pub fn new(source: BoxEventSource) -> std::io::Result<Self> {
            Self::with_options(source, EventStreamOptions::default())
        }

        /// Streams the events of `source` that `filter` matches.
        pub fn with_filter(source: BoxEventSource, filter: EventFilter) -> std::io::Result<Self> {
            Self::with_options(
                source,
                EventStreamOptions {
                    filter,
                    ..EventStreamOptions::default()
                },
            )
        }

        /// Streams `source` as `options` say.
        pub fn with_options(
            source: BoxEventSource,
            options: EventStreamOptions,
        ) -> std::io::Result<Self> {
            let (tx, events) = mpsc::channel(options.capacity.max(1));
            let shared = Arc::new(Shared::default());
            let thread_shared = Arc::clone(&shared);
            std::thread::Builder::new()
                .name("dataplane-events".to_owned())
                .spawn(move || {
                    let mut source = source;
                    read(&mut source, &tx, &thread_shared, &options);
                    drop(source);
                    thread_shared.ended.store(true, Ordering::Release);
                })?;
            Ok(Self { events, shared })
        }

        /// Events the kernel could not keep so far because the reader was too slow
        /// ([`EventSource::lost`] as of the reader's last read).
        pub fn lost(&self) -> u64 {
            self.shared.lost.load(Ordering::Relaxed)
        }

        /// Whether the reader thread has ended (after a source error, or after the stream
        /// was closed). For tests and diagnostics.
        pub fn reader_ended(&self) -> bool {
            self.shared.ended.load(Ordering::Acquire)
        }

        /// Tells the reader to stop; the events already queued are still yielded, then the
        /// stream ends.
        pub fn close(&mut self) {
            self.shared.stopped.store(true, Ordering::Release);
            self.events.close();
        }
    }

    impl Stream for EventStream {
        type Item = Result<FlowEvent, Error>;

        fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
            self.events.poll_recv(cx)
        }

        fn size_hint(&self) -> (usize, Option<usize>) {
            (self.events.len(), None)
        }
    }

    impl Drop for EventStream {
        /// Tells the reader to stop, without waiting for it (that would block the runtime
        /// for up to one poll interval); it ends within one.
        fn drop(&mut self) {
            self.close();
        }
    }

    /// The reader thread: reads batches, filters, hands over; ends when the stream is gone
    /// or after handing over the source's error.
    fn read(
        source: &mut BoxEventSource,
        tx: &mpsc::Sender<Result<FlowEvent, Error>>,
        shared: &Shared,
        options: &EventStreamOptions,
    ) {
        let mut batch = Vec::with_capacity(options.batch.max(1));
        loop {
            if shared.stopped.load(Ordering::Acquire) || tx.is_closed() {
                return;
            }
            batch.clear();
            let read = source.read(&mut batch, options.batch.max(1));
            shared.lost.store(source.lost(), Ordering::Relaxed);
            match read {
                Err(e) => {
                    let _ = tx.blocking_send(Err(e));
                    return;
                }
                Ok(0) => {
                    if let Err(e) = source.wait(options.poll) {
                        let _ = tx.blocking_send(Err(e));
                        return;
                    }
                }
                Ok(_) => {
                    for event in batch.drain(..) {
                        // Blocks while the channel is full (back-pressure); fails once the
                        // stream is dropped.
                        if options.filter.matches(&event) && tx.blocking_send(Ok(event)).is_err() {
                            return;
                        }
                    }
                }
            }
        }
    }

    #[cfg(test)]
    mod tests {
        use std::collections::VecDeque;
        use std::future::poll_fn;
        use std::net::SocketAddr;
        use std::time::Instant;

        use dataplane_core::events::{
            DropReason, EventKind, EventVerdict, L4Protocol, Timestamp, Tuple,
        };

        use super::*;

        /// What the scripted source does on each read.
        enum Step {
            Events(Vec<FlowEvent>),
            Nothing,
            Fail,
        }

        /// A source that plays a script; then has nothing forever. Records its waits and its
        /// drop.
        struct Scripted {
            steps: VecDeque<Step>,
            lost: u64,
            waits: Arc<AtomicU64>,
            dropped: Arc<AtomicBool>,
        }

        impl Scripted {
            fn new(steps: Vec<Step>) -> (Self, Arc<AtomicU64>, Arc<AtomicBool>) {
                let waits = Arc::new(AtomicU64::new(0));
                let dropped = Arc::new(AtomicBool::new(false));
                (
                    Self {
                        steps: steps.into(),
                        lost: 0,
                        waits: Arc::clone(&waits),
                        dropped: Arc::clone(&dropped),
                    },
                    waits,
                    dropped,
                )
            }
        }

        impl EventSource for Scripted {
            fn read(&mut self, out: &mut Vec<FlowEvent>, max: usize) -> Result<usize, Error> {
                match self.steps.pop_front() {
                    Some(Step::Events(mut events)) => {
                        let n = events.len().min(max);
                        let rest = events.split_off(n);
                        out.extend(events);
                        if !rest.is_empty() {
                            self.steps.push_front(Step::Events(rest));
                        }
                        self.lost += 1;
                        Ok(n)
                    }
                    Some(Step::Nothing) | None => Ok(0),
                    Some(Step::Fail) => Err(Error::Kernel {
                        dataplane: "scripted".to_owned(),
                        operation: "reading the scripted source".to_owned(),
                        source: std::io::Error::other("gone").into(),
                    }),
                }
            }
            fn wait(&mut self, timeout: Duration) -> Result<(), Error> {
                self.waits.fetch_add(1, Ordering::Relaxed);
                std::thread::sleep(timeout.min(Duration::from_millis(5)));
                Ok(())
            }
            fn readiness_fd(&self) -> Option<std::os::fd::RawFd> {
                None
            }
            fn lost(&self) -> u64 {
                self.lost
            }
        }

        impl Drop for Scripted {
            fn drop(&mut self) {
                self.dropped.store(true, Ordering::Release);
            }
        }

        fn event(port: u16, verdict: EventVerdict) -> FlowEvent {
            let mut e = FlowEvent::new(
                Timestamp(u64::from(port)),
                "node-0",
                EventKind::Drop,
                verdict,
                L4Protocol::Tcp,
                Tuple::new(
                    SocketAddr::from(([10, 244, 0, 5], 40000)),
                    SocketAddr::from(([10, 96, 0, 10], port)),
                ),
            );
            if verdict.is_drop() {
                e.reason = Some(DropReason::NoBackend);
            }
            e
        }

        async fn next(s: &mut EventStream) -> Option<Result<FlowEvent, Error>> {
            poll_fn(|cx| Pin::new(&mut *s).poll_next(cx)).await
        }

        fn wait_until(what: &str, cond: impl Fn() -> bool) {
            let deadline = Instant::now() + Duration::from_secs(30);
            while !cond() {
                assert!(Instant::now() < deadline, "timed out waiting for {what}");
                std::thread::sleep(Duration::from_millis(2));
            }
        }

        fn runtime() -> tokio::runtime::Runtime {
            tokio::runtime::Builder::new_current_thread()
                .build()
                .unwrap()
        }

        #[test]
        fn yields_the_events_in_order_across_empty_reads_then_the_error_once() {
            let (src, waits, dropped) = Scripted::new(vec![
                Step::Events(vec![event(1, EventVerdict::Dropped)]),
                Step::Nothing,
                Step::Nothing,
                Step::Events((2..=600).map(|p| event(p, EventVerdict::Dropped)).collect()),
                Step::Fail,
            ]);
            let mut stream = EventStream::new(Box::new(src)).unwrap();
            runtime().block_on(async {
                for port in 1..=600 {
                    let e = next(&mut stream).await.unwrap().unwrap();
                    assert_eq!(e.original.destination.port(), port);
                }
                let err = next(&mut stream).await.unwrap().unwrap_err();
                assert!(dataplane_core::error_chain(&err).contains("gone"), "{err}");
                assert!(
                    next(&mut stream).await.is_none(),
                    "the stream ends after the error"
                );
            });
            assert_eq!(waits.load(Ordering::Relaxed), 2, "one wait per empty read");
            // 1 event + 600 events in batches of at most 256: 1 + 3 reads that returned some.
            assert_eq!(stream.lost(), 4, "the source's lost counter is published");
            wait_until("the reader to drop the source", || {
                dropped.load(Ordering::Acquire)
            });
            assert!(stream.reader_ended());
        }

        #[test]
        fn the_filter_runs_on_the_reader() {
            let (src, _, _) = Scripted::new(vec![Step::Events(vec![
                event(1, EventVerdict::Forwarded),
                event(2, EventVerdict::Dropped),
                event(3, EventVerdict::Translated),
                event(4, EventVerdict::Dropped),
            ])]);
            let mut filter = EventFilter::default();
            filter.verdicts.insert(EventVerdict::Dropped);
            let mut stream = EventStream::with_filter(Box::new(src), filter).unwrap();
            runtime().block_on(async {
                let ports = [
                    next(&mut stream).await.unwrap().unwrap(),
                    next(&mut stream).await.unwrap().unwrap(),
                ]
                .map(|e| e.original.destination.port());
                assert_eq!(ports, [2, 4]);
            });
            assert_eq!(stream.size_hint().0, 0, "nothing else was queued");
        }

        #[test]
        fn dropping_the_stream_stops_the_reader_and_drops_the_source() {
            // A source with nothing to say: the reader sits in `wait`.
            let (src, waits, dropped) = Scripted::new(vec![]);
            let stream = EventStream::new(Box::new(src)).unwrap();
            wait_until("the reader to wait", || waits.load(Ordering::Relaxed) > 0);
            drop(stream);
            wait_until("the reader to drop the source", || {
                dropped.load(Ordering::Acquire)
            });
        }

        #[test]
        fn dropping_a_full_stream_unblocks_the_reader() {
            // More events than the channel holds and nobody taking them: the reader blocks
            // handing over; the drop must free it.
            let (src, _, dropped) = Scripted::new(vec![Step::Events(
                (1..=50).map(|p| event(p, EventVerdict::Dropped)).collect(),
            )]);
            let stream = EventStream::with_options(
                Box::new(src),
                EventStreamOptions {
                    capacity: 4,
                    ..EventStreamOptions::default()
                },
            )
            .unwrap();
            wait_until("the channel to fill", || stream.size_hint().0 == 4);
            assert!(!dropped.load(Ordering::Acquire));
            drop(stream);
            wait_until("the reader to drop the source", || {
                dropped.load(Ordering::Acquire)
            });
        }
    }
}
