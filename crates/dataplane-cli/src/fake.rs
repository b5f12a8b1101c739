//! A fake [`Inspect`] for the tests of `status`, `services`, `conntrack` and `flows`: fixed
//! answers and a scripted event source.

use std::collections::{BTreeMap, VecDeque};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use dataplane::events::{
    BoxEventSource, DropReason, EventKind, EventOptions, EventSource, EventVerdict, FlowEvent,
    L4Protocol, ObservationPoint, TcpFlags, Timestamp, Tuple,
};
use dataplane::{
    Attachment, Error, Flow, Inspect, LiveFrontend, NodeStatus, ObjectName, Protocol, Stats,
    TableFill,
};

/// One read of the scripted source.
#[derive(Debug, Clone)]
pub enum Step {
    /// These events are waiting.
    Events(Vec<FlowEvent>),
    /// Nothing is waiting (the reader waits).
    Nothing,
    /// The source fails.
    Fail,
}

/// Fixed answers; `events()` plays `script` (then has nothing forever).
#[derive(Debug, Clone, Default)]
pub struct FakeInspect {
    pub status: NodeStatus,
    pub services: Vec<LiveFrontend>,
    pub conntrack: Vec<Flow>,
    pub script: Vec<Step>,
    /// The options each `events()` call asked for.
    pub asked: Arc<Mutex<Vec<EventOptions>>>,
    /// How many times the source waited.
    pub waits: Arc<Mutex<usize>>,
}

struct Scripted {
    steps: VecDeque<Step>,
    waits: Arc<Mutex<usize>>,
}

impl EventSource for Scripted {
    fn read(&mut self, out: &mut Vec<FlowEvent>, max: usize) -> Result<usize, Error> {
        match self.steps.pop_front() {
            Some(Step::Events(mut events)) => {
                let rest = events.split_off(events.len().min(max));
                let n = events.len();
                out.extend(events);
                if !rest.is_empty() {
                    self.steps.push_front(Step::Events(rest));
                }
                Ok(n)
            }
            Some(Step::Nothing) | None => Ok(0),
            Some(Step::Fail) => Err(Error::Kernel {
                dataplane: "fake".to_owned(),
                operation: "reading the event ring".to_owned(),
                source: std::io::Error::other("map gone").into(),
            }),
        }
    }
    fn wait(&mut self, _: Duration) -> Result<(), Error> {
        *self.waits.lock().unwrap() += 1;
        Ok(())
    }
    fn readiness_fd(&self) -> Option<std::os::fd::RawFd> {
        None
    }
    fn lost(&self) -> u64 {
        0
    }
}

impl Inspect for FakeInspect {
    fn status(&self) -> Result<NodeStatus, Error> {
        Ok(self.status.clone())
    }
    fn services(&self) -> Result<Vec<LiveFrontend>, Error> {
        Ok(self.services.clone())
    }
    fn conntrack(&self) -> Result<Vec<Flow>, Error> {
        Ok(self.conntrack.clone())
    }
    fn events(&self, options: &EventOptions) -> Result<BoxEventSource, Error> {
        self.asked.lock().unwrap().push(*options);
        Ok(Box::new(Scripted {
            steps: self.script.clone().into(),
            waits: Arc::clone(&self.waits),
        }))
    }
}

fn sa(s: &str) -> SocketAddr {
    s.parse().expect("literal socket address")
}

/// An eBPF node with two services (one named, one not), one table half full, two drop
/// reasons.
pub fn node() -> FakeInspect {
    let web = ObjectName::new("default", "web");
    FakeInspect {
        status: NodeStatus {
            dataplane: "ebpf".to_owned(),
            attachments: vec![
                Attachment {
                    program: "dp_to_pod".to_owned(),
                    hook: "tc-egress".to_owned(),
                    target: Some("veth1".to_owned()),
                },
                Attachment {
                    program: "dp_from_uplink".to_owned(),
                    hook: "tc-ingress".to_owned(),
                    target: Some("eth0".to_owned()),
                },
            ],
            services: 2,
            frontends: 3,
            backends: 5,
            endpoints: 2,
            policies: 1,
            tables: vec![
                TableFill {
                    name: "dp_svc".to_owned(),
                    entries: 3,
                    capacity: 8,
                },
                TableFill {
                    name: "dp_ct".to_owned(),
                    entries: 0,
                    capacity: 65536,
                },
            ],
            conntrack_entries: 4,
            stats: Stats {
                packets_translated: 10,
                packets_dropped: 3,
                packets_rejected: 2,
                flows: 4,
                drops: BTreeMap::from([(DropReason::NoBackend, 2), (DropReason::Policy, 3)]),
                other: BTreeMap::new(),
            },
        },
        services: vec![
            LiveFrontend {
                service: None,
                kind: None,
                address: sa("10.96.0.99:53"),
                protocol: Protocol::Udp,
                backends: vec![],
            },
            LiveFrontend {
                service: Some(web.clone()),
                kind: Some("NodePort".to_owned()),
                address: sa("172.18.0.10:30080"),
                protocol: Protocol::Tcp,
                backends: vec![sa("10.244.0.11:8080")],
            },
            LiveFrontend {
                service: Some(web.clone()),
                kind: Some("ClusterIP".to_owned()),
                address: sa("10.96.0.10:80"),
                protocol: Protocol::Tcp,
                backends: vec![
                    sa("10.244.0.11:8080"),
                    sa("10.244.0.12:8080"),
                    sa("10.244.1.11:8080"),
                    sa("10.244.1.12:8080"),
                ],
            },
        ],
        conntrack: vec![
            Flow {
                protocol: Protocol::Tcp,
                client: sa("10.244.0.5:40000"),
                frontend: sa("10.96.0.10:80"),
                backend: sa("10.244.1.11:8080"),
                service: Some(web),
            },
            Flow {
                protocol: Protocol::Udp,
                client: sa("10.244.0.5:40001"),
                frontend: sa("10.96.0.99:53"),
                backend: sa("10.244.1.53:53"),
                service: None,
            },
        ],
        script: Vec::new(),
        asked: Arc::default(),
        waits: Arc::default(),
    }
}

/// A drop of a SYN to `web`'s frontend from `default/client`, at second `second` of the day.
pub fn drop_event(second: u64, reason: DropReason, verdict: EventVerdict) -> FlowEvent {
    let mut e = FlowEvent::new(
        Timestamp(1_796_565_720_000_000_000 + second * 1_000_000_000),
        "node-0",
        EventKind::Drop,
        verdict,
        L4Protocol::Tcp,
        Tuple::new(sa("10.244.0.5:40000"), sa("10.96.0.10:80")),
    );
    e.reason = Some(reason);
    e.point = Some(ObservationPoint::FromPod);
    e.interface = Some("veth0".to_owned());
    e.tcp_flags = Some(TcpFlags(TcpFlags::SYN));
    e.service = Some(ObjectName::new("default", "web"));
    e.source_endpoint = Some(ObjectName::new("default", "client"));
    e
}

/// A new connection to `api` translated to its backend, from `kube-system/dns`.
pub fn new_connection(second: u64) -> FlowEvent {
    let mut e = FlowEvent::new(
        Timestamp(1_796_565_720_000_000_000 + second * 1_000_000_000),
        "node-1",
        EventKind::NewConnection,
        EventVerdict::Translated,
        L4Protocol::Udp,
        Tuple::new(sa("10.244.1.7:5353"), sa("10.96.0.20:53")),
    );
    e.translated = Some(Tuple::new(sa("10.244.1.7:5353"), sa("10.244.0.9:53")));
    e.backend = Some(sa("10.244.0.9:53"));
    e.service = Some(ObjectName::new("default", "api"));
    e.source_endpoint = Some(ObjectName::new("kube-system", "dns"));
    e.destination_endpoint = Some(ObjectName::new("default", "api-0"));
    e
}

/// The lines of `text` with the runs of spaces between columns made one: a table's rows
/// without its column widths.
pub fn rows(text: &str) -> Vec<String> {
    text.lines()
        .map(|l| l.split_whitespace().collect::<Vec<_>>().join(" "))
        .collect()
}
