//! Flow events: one model for what every backend saw happen to a packet or a connection.
//!
//! A [`FlowEvent`] says when and where (node, [`ObservationPoint`], interface) a packet or
//! connection was seen, its 5-tuple before and after translation, the service and backend that
//! translated it, the [`EventVerdict`], the [`DropReason`] of a drop, TCP flags, and the
//! endpoint (`namespace/pod`) on each side when known. Each backend produces them from its own
//! sources (the eBPF ring buffer; conntrack netlink events and NFLOG for netfilter) through an
//! [`EventSource`]. A field a source cannot know is absent (`None`), never invented.
//!
//! The JSON form (one object per line, `serde_json`) is a stable schema, versioned by
//! [`EVENT_SCHEMA_VERSION`]: fields are only ever added, and absent fields are left out rather
//! than written as `null`. It follows `hubble observe -o json` in spirit (verdict, drop reason,
//! source and destination with their pods, a trace point), not its exact shape.
//!
//! [`EventFilter`] is the selection `dpctl flows` offers (`--verdict`, `--from`, `--to`,
//! `--service`, `--port`, `--protocol`), pure so that every reader filters the same way.

use std::collections::BTreeSet;
use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::str::FromStr;
use std::time::Duration;

use ipnetwork::IpNetwork;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::error::Error;
use crate::model::ObjectName;

/// The version of the [`FlowEvent`] JSON schema. Incremented only when a field changes meaning
/// or is removed (never so far); adding a field keeps the version.
pub const EVENT_SCHEMA_VERSION: u32 = 1;

/// One thing the dataplane saw: a packet dropped or rejected, a connection created or ended,
/// a policy verdict.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct FlowEvent {
    /// When, as wall-clock time (RFC 3339 with nanoseconds in JSON).
    pub time: Timestamp,
    /// The node that saw it ([`crate::Node::name`]).
    pub node: String,
    /// What kind of event this is.
    pub kind: EventKind,
    /// What happened to the packet or connection.
    pub verdict: EventVerdict,
    /// Why it was dropped or rejected (`Some` exactly when the verdict is a drop, a reject or
    /// a policy denial and the source knows why).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<DropReason>,
    /// Where it was seen, when the source knows.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub point: Option<ObservationPoint>,
    /// The packet's direction in its connection, when the source knows.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub direction: Option<Direction>,
    /// The interface it was seen on, when known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub interface: Option<String>,
    /// The IP protocol.
    pub protocol: L4Protocol,
    /// Source and destination as the packet arrived (ports 0 for protocols without ports).
    pub original: Tuple,
    /// Source and destination after the dataplane's translation (DNAT to a backend, SNAT for
    /// masquerade), when it translated.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub translated: Option<Tuple>,
    /// The service whose frontend the packet addressed, when known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service: Option<ObjectName>,
    /// The backend chosen, when translated.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub backend: Option<SocketAddr>,
    /// TCP flags of the packet (TCP only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tcp_flags: Option<TcpFlags>,
    /// The local or peer pod that sent it, when known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source_endpoint: Option<ObjectName>,
    /// The local or peer pod it was sent to (after translation), when known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub destination_endpoint: Option<ObjectName>,
    /// Events of the same kind the source suppressed (rate limit or aggregation) on the same
    /// CPU or group since the last one it reported: this event stands for `1 + suppressed`.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub suppressed: u64,
}

#[allow(clippy::trivially_copy_pass_by_ref)] // serde's skip_serializing_if passes a reference
fn is_zero(n: &u64) -> bool {
    *n == 0
}

impl FlowEvent {
    /// An event with the required fields and every optional one absent.
    pub fn new(
        time: Timestamp,
        node: impl Into<String>,
        kind: EventKind,
        verdict: EventVerdict,
        protocol: L4Protocol,
        original: Tuple,
    ) -> Self {
        Self {
            time,
            node: node.into(),
            kind,
            verdict,
            reason: None,
            point: None,
            direction: None,
            interface: None,
            protocol,
            original,
            translated: None,
            service: None,
            backend: None,
            tcp_flags: None,
            source_endpoint: None,
            destination_endpoint: None,
            suppressed: 0,
        }
    }

    /// The event as one line of JSON (no trailing newline).
    pub fn to_json_line(&self) -> String {
        // A FlowEvent has only string keys and finite values: serialization cannot fail.
        serde_json::to_string(self).unwrap_or_default()
    }
}

impl fmt::Display for FlowEvent {
    /// One line in the spirit of `hubble observe`:
    /// `14:02:03.123456 node-0 10.244.0.5:4000 (default/client) -> 10.96.0.10:80 (default/web) TCP SYN DROPPED (no-backend) at from-pod eth1`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {} ", self.time, self.node)?;
        write!(f, "{}", self.original.source)?;
        if let Some(e) = &self.source_endpoint {
            write!(f, " ({e})")?;
        }
        write!(f, " -> {}", self.original.destination)?;
        if let Some(s) = &self.service {
            write!(f, " (service {s})")?;
        }
        if let Some(t) = &self.translated {
            if t.destination != self.original.destination {
                write!(f, " => {}", t.destination)?;
            }
        }
        if let Some(e) = &self.destination_endpoint {
            write!(f, " ({e})")?;
        }
        write!(f, " {}", self.protocol)?;
        if let Some(flags) = self.tcp_flags {
            if !flags.is_empty() {
                write!(f, " {flags}")?;
            }
        }
        write!(f, " {}", self.verdict)?;
        if let Some(r) = self.reason {
            write!(f, " ({r})")?;
        }
        if self.kind != EventKind::Drop {
            write!(f, " [{}]", self.kind)?;
        }
        if let Some(p) = self.point {
            write!(f, " at {p}")?;
        }
        if let Some(i) = &self.interface {
            write!(f, " {i}")?;
        }
        if self.suppressed > 0 {
            write!(f, " (+{} suppressed)", self.suppressed)?;
        }
        Ok(())
    }
}

/// What kind of event a [`FlowEvent`] is (Cilium's monitor has the same split: drop, trace,
/// policy verdict).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum EventKind {
    /// A packet was dropped or rejected (always reported, rate-limited).
    Drop,
    /// A connection was created (reported when [`EventOptions::new_connections`] is on).
    NewConnection,
    /// A connection ended or expired (sources that see it: conntrack destroy events).
    ConnectionEnd,
    /// NetworkPolicy judged a new connection (reported when [`EventOptions::policy_verdicts`]
    /// is on; denials are always reported as [`EventKind::Drop`]).
    PolicyVerdict,
}

impl fmt::Display for EventKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            EventKind::Drop => "drop",
            EventKind::NewConnection => "new-connection",
            EventKind::ConnectionEnd => "connection-end",
            EventKind::PolicyVerdict => "policy-verdict",
        })
    }
}

/// What happened to the packet or connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum EventVerdict {
    /// Passed on unchanged.
    Forwarded,
    /// Passed on with its addresses translated (service DNAT, masquerade SNAT).
    Translated,
    /// Dropped silently.
    Dropped,
    /// Refused with a TCP reset or an ICMP error.
    Rejected,
    /// Dropped because NetworkPolicy does not allow it.
    PolicyDenied,
}

impl EventVerdict {
    /// Every verdict.
    pub const ALL: [EventVerdict; 5] = [
        EventVerdict::Forwarded,
        EventVerdict::Translated,
        EventVerdict::Dropped,
        EventVerdict::Rejected,
        EventVerdict::PolicyDenied,
    ];

    /// The name used in JSON and on the command line (`policy-denied`).
    pub fn name(self) -> &'static str {
        match self {
            EventVerdict::Forwarded => "forwarded",
            EventVerdict::Translated => "translated",
            EventVerdict::Dropped => "dropped",
            EventVerdict::Rejected => "rejected",
            EventVerdict::PolicyDenied => "policy-denied",
        }
    }

    /// Whether the packet did not get through (dropped, rejected or denied).
    pub fn is_drop(self) -> bool {
        matches!(
            self,
            EventVerdict::Dropped | EventVerdict::Rejected | EventVerdict::PolicyDenied
        )
    }
}

impl fmt::Display for EventVerdict {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.name().to_ascii_uppercase())
    }
}

impl FromStr for EventVerdict {
    type Err = EventParseError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        EventVerdict::ALL
            .into_iter()
            .find(|v| v.name().eq_ignore_ascii_case(s))
            .ok_or_else(|| EventParseError {
                what: "verdict",
                value: s.to_owned(),
                expected: EventVerdict::ALL.map(EventVerdict::name).join(", "),
            })
    }
}

/// Why a packet was dropped or rejected.
///
/// Each reason has a stable number ([`DropReason::code`]): the eBPF programs write it into their
/// events and counters, so a number never changes meaning and new reasons take new numbers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
#[non_exhaustive]
pub enum DropReason {
    /// The service has no backend a new connection may use (kube-proxy rejects these).
    NoBackend,
    /// The client is outside the service's `loadBalancerSourceRanges`.
    SourceRange,
    /// NetworkPolicy does not allow the connection.
    Policy,
    /// The connection tracking table is full.
    ConntrackFull,
    /// Another table the datapath writes at run time (NAT, affinity) is full.
    MapFull,
    /// No free source port for masquerade / SNAT.
    SnatExhausted,
    /// The packet is malformed or truncated.
    InvalidPacket,
    /// The packet does not fit the path's MTU (with the DSR option, for example).
    Mtu,
    /// The protocol is not one the service or the datapath handles.
    UnsupportedProtocol,
    /// To an address in the service CIDRs that no frontend has.
    Unallocated,
    /// From a pod, with a source address that is not the pod's own.
    Spoofed,
    /// A fragment that cannot be judged (no ports).
    Fragment,
    /// A reason the source reported that this version does not know (its code is lost in
    /// JSON; see the source's counters).
    Unknown,
}

impl DropReason {
    /// Every reason, in code order.
    pub const ALL: [DropReason; 13] = [
        DropReason::NoBackend,
        DropReason::SourceRange,
        DropReason::Policy,
        DropReason::ConntrackFull,
        DropReason::MapFull,
        DropReason::SnatExhausted,
        DropReason::InvalidPacket,
        DropReason::Mtu,
        DropReason::UnsupportedProtocol,
        DropReason::Unallocated,
        DropReason::Spoofed,
        DropReason::Fragment,
        DropReason::Unknown,
    ];

    /// The stable number of the reason (1-based; 0 means "no reason" in the BPF structures;
    /// `Unknown` is 255).
    pub fn code(self) -> u8 {
        match self {
            DropReason::NoBackend => 1,
            DropReason::SourceRange => 2,
            DropReason::Policy => 3,
            DropReason::ConntrackFull => 4,
            DropReason::MapFull => 5,
            DropReason::SnatExhausted => 6,
            DropReason::InvalidPacket => 7,
            DropReason::Mtu => 8,
            DropReason::UnsupportedProtocol => 9,
            DropReason::Unallocated => 10,
            DropReason::Spoofed => 11,
            DropReason::Fragment => 12,
            DropReason::Unknown => 255,
        }
    }

    /// The reason numbered `code`: `None` for 0 (no reason), [`DropReason::Unknown`] for a
    /// number this version does not know.
    pub fn from_code(code: u8) -> Option<DropReason> {
        if code == 0 {
            return None;
        }
        Some(
            DropReason::ALL
                .into_iter()
                .find(|r| r.code() == code)
                .unwrap_or(DropReason::Unknown),
        )
    }

    /// The name used in JSON, metrics labels and on the command line (`no-backend`).
    pub fn name(self) -> &'static str {
        match self {
            DropReason::NoBackend => "no-backend",
            DropReason::SourceRange => "source-range",
            DropReason::Policy => "policy",
            DropReason::ConntrackFull => "conntrack-full",
            DropReason::MapFull => "map-full",
            DropReason::SnatExhausted => "snat-exhausted",
            DropReason::InvalidPacket => "invalid-packet",
            DropReason::Mtu => "mtu",
            DropReason::UnsupportedProtocol => "unsupported-protocol",
            DropReason::Unallocated => "unallocated",
            DropReason::Spoofed => "spoofed",
            DropReason::Fragment => "fragment",
            DropReason::Unknown => "unknown",
        }
    }
}

impl fmt::Display for DropReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for DropReason {
    type Err = EventParseError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        DropReason::ALL
            .into_iter()
            .find(|r| r.name().eq_ignore_ascii_case(s))
            .ok_or_else(|| EventParseError {
                what: "drop reason",
                value: s.to_owned(),
                expected: DropReason::ALL.map(DropReason::name).join(", "),
            })
    }
}

/// Where on the node a packet was seen.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ObservationPoint {
    /// Leaving a local pod (TC ingress of its host-side veth; netfilter: in from a pod interface).
    FromPod,
    /// Entering a local pod (TC egress of its host-side veth; netfilter: out to a pod interface).
    ToPod,
    /// Arriving on the uplink (TC ingress; netfilter: in from the uplink).
    FromUplink,
    /// Leaving on the uplink (TC egress; netfilter: out to the uplink).
    ToUplink,
    /// The uplink's XDP program, before the kernel's stack.
    Xdp,
    /// A socket hook (`connect()` / `sendmsg()` translated before any packet exists).
    Socket,
    /// Sent by the node itself (netfilter's output hook).
    FromHost,
}

impl fmt::Display for ObservationPoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            ObservationPoint::FromPod => "from-pod",
            ObservationPoint::ToPod => "to-pod",
            ObservationPoint::FromUplink => "from-uplink",
            ObservationPoint::ToUplink => "to-uplink",
            ObservationPoint::Xdp => "xdp",
            ObservationPoint::Socket => "socket",
            ObservationPoint::FromHost => "from-host",
        })
    }
}

/// The packet's direction in its connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Direction {
    /// From the client that opened the connection.
    Original,
    /// A reply, towards that client.
    Reply,
}

/// Source and destination of a packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Tuple {
    /// Source address and port.
    pub source: SocketAddr,
    /// Destination address and port.
    pub destination: SocketAddr,
}

impl Tuple {
    /// A tuple from its two ends.
    pub fn new(source: SocketAddr, destination: SocketAddr) -> Self {
        Self {
            source,
            destination,
        }
    }
}

/// The IP protocol of an event: any protocol can be dropped, not only the service protocols.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum L4Protocol {
    /// TCP (6).
    Tcp,
    /// UDP (17).
    Udp,
    /// SCTP (132).
    Sctp,
    /// ICMP (1).
    Icmp,
    /// `ICMPv6` (58).
    Icmpv6,
    /// Any other IP protocol, by number.
    Other(u8),
}

impl L4Protocol {
    /// The protocol numbered `number`.
    pub fn from_number(number: u8) -> Self {
        match number {
            6 => L4Protocol::Tcp,
            17 => L4Protocol::Udp,
            132 => L4Protocol::Sctp,
            1 => L4Protocol::Icmp,
            58 => L4Protocol::Icmpv6,
            n => L4Protocol::Other(n),
        }
    }

    /// The IP protocol number.
    pub fn number(self) -> u8 {
        match self {
            L4Protocol::Tcp => 6,
            L4Protocol::Udp => 17,
            L4Protocol::Sctp => 132,
            L4Protocol::Icmp => 1,
            L4Protocol::Icmpv6 => 58,
            L4Protocol::Other(n) => n,
        }
    }
}

impl From<crate::model::Protocol> for L4Protocol {
    fn from(p: crate::model::Protocol) -> Self {
        L4Protocol::from_number(p.number())
    }
}

impl fmt::Display for L4Protocol {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            L4Protocol::Tcp => f.write_str("TCP"),
            L4Protocol::Udp => f.write_str("UDP"),
            L4Protocol::Sctp => f.write_str("SCTP"),
            L4Protocol::Icmp => f.write_str("ICMP"),
            L4Protocol::Icmpv6 => f.write_str("ICMPv6"),
            L4Protocol::Other(n) => write!(f, "{n}"),
        }
    }
}

impl FromStr for L4Protocol {
    type Err = EventParseError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        for p in [
            L4Protocol::Tcp,
            L4Protocol::Udp,
            L4Protocol::Sctp,
            L4Protocol::Icmp,
            L4Protocol::Icmpv6,
        ] {
            if p.to_string().eq_ignore_ascii_case(s) {
                return Ok(p);
            }
        }
        s.parse::<u8>()
            .map(L4Protocol::from_number)
            .map_err(|_| EventParseError {
                what: "protocol",
                value: s.to_owned(),
                expected: "TCP, UDP, SCTP, ICMP, ICMPv6 or a protocol number".to_owned(),
            })
    }
}

impl Serialize for L4Protocol {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for L4Protocol {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

/// TCP flags of a packet, written as their names (`SYN ACK`; a list of names in JSON).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct TcpFlags(pub u8);

impl TcpFlags {
    /// FIN.
    pub const FIN: u8 = 0x01;
    /// SYN.
    pub const SYN: u8 = 0x02;
    /// RST.
    pub const RST: u8 = 0x04;
    /// PSH.
    pub const PSH: u8 = 0x08;
    /// ACK.
    pub const ACK: u8 = 0x10;
    /// URG.
    pub const URG: u8 = 0x20;
    /// ECE.
    pub const ECE: u8 = 0x40;
    /// CWR.
    pub const CWR: u8 = 0x80;

    const NAMES: [(u8, &'static str); 8] = [
        (Self::SYN, "SYN"),
        (Self::ACK, "ACK"),
        (Self::FIN, "FIN"),
        (Self::RST, "RST"),
        (Self::PSH, "PSH"),
        (Self::URG, "URG"),
        (Self::ECE, "ECE"),
        (Self::CWR, "CWR"),
    ];

    /// Whether no flag is set.
    pub fn is_empty(self) -> bool {
        self.0 == 0
    }

    /// Whether every flag of `bits` is set.
    pub fn contains(self, bits: u8) -> bool {
        self.0 & bits == bits
    }

    /// The names of the flags set, SYN first.
    pub fn names(self) -> Vec<&'static str> {
        Self::NAMES
            .iter()
            .filter(|(bit, _)| self.0 & bit != 0)
            .map(|&(_, name)| name)
            .collect()
    }
}

impl fmt::Display for TcpFlags {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.names().join(" "))
    }
}

impl Serialize for TcpFlags {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        self.names().serialize(s)
    }
}

impl<'de> Deserialize<'de> for TcpFlags {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let names = Vec::<String>::deserialize(d)?;
        let mut bits = 0;
        for name in names {
            let (bit, _) = Self::NAMES
                .iter()
                .find(|(_, n)| n.eq_ignore_ascii_case(&name))
                .ok_or_else(|| serde::de::Error::custom(format!("unknown TCP flag {name:?}")))?;
            bits |= bit;
        }
        Ok(TcpFlags(bits))
    }
}

/// Wall-clock time of an event: nanoseconds since the Unix epoch, written as RFC 3339 UTC with
/// nanoseconds (`2026-12-06T14:02:03.123456789Z`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Timestamp(pub u64);

impl Timestamp {
    /// The time `since_epoch` after the Unix epoch (saturating at the year 2554).
    pub fn from_unix(since_epoch: Duration) -> Self {
        Timestamp(u64::try_from(since_epoch.as_nanos()).unwrap_or(u64::MAX))
    }

    /// Nanoseconds since the Unix epoch.
    pub fn unix_nanos(self) -> u64 {
        self.0
    }

    /// Parses RFC 3339 in UTC (`Z`) with up to nine fraction digits, as written by `Display`.
    ///
    /// # Errors
    /// Any other shape.
    pub fn parse_rfc3339(text: &str) -> Result<Self, EventParseError> {
        let bad = || EventParseError {
            what: "time",
            value: text.to_owned(),
            expected: "RFC 3339 UTC, e.g. 2026-12-06T14:02:03.123456789Z".to_owned(),
        };
        let utc = text.strip_suffix('Z').ok_or_else(bad)?;
        let (date, time) = utc.split_once('T').ok_or_else(bad)?;
        let mut date_parts = date.splitn(3, '-');
        let num = |it: &mut std::str::SplitN<'_, char>| -> Result<i64, EventParseError> {
            it.next()
                .and_then(|p| p.parse::<i64>().ok())
                .ok_or_else(bad)
        };
        let (y, m, day) = (
            num(&mut date_parts)?,
            num(&mut date_parts)?,
            num(&mut date_parts)?,
        );
        let (hms, frac) = time.split_once('.').unwrap_or((time, ""));
        let mut time_parts = hms.splitn(3, ':');
        let (hh, mm, ss) = (
            num(&mut time_parts)?,
            num(&mut time_parts)?,
            num(&mut time_parts)?,
        );
        if !(1..=12).contains(&m)
            || !(1..=31).contains(&day)
            || !(0..24).contains(&hh)
            || !(0..60).contains(&mm)
            || !(0..61).contains(&ss)
            || frac.len() > 9
            || !frac.bytes().all(|b| b.is_ascii_digit())
        {
            return Err(bad());
        }
        let nanos: i64 = if frac.is_empty() {
            0
        } else {
            format!("{frac:0<9}").parse().map_err(|_| bad())?
        };
        let days = days_from_civil(y, m, day);
        let secs = days * 86_400 + hh * 3600 + mm * 60 + ss;
        let total = i128::from(secs) * 1_000_000_000 + i128::from(nanos);
        u64::try_from(total).map(Timestamp).map_err(|_| bad())
    }
}

// Howard Hinnant's civil-date algorithms (public domain): days since 1970-01-01 and back.
fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

fn civil_from_days(z: i64) -> (i64, i64, i64) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    (if m <= 2 { y + 1 } else { y }, m, d)
}

impl fmt::Display for Timestamp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let secs = i64::try_from(self.0 / 1_000_000_000).unwrap_or(i64::MAX);
        let nanos = self.0 % 1_000_000_000;
        let (y, m, d) = civil_from_days(secs.div_euclid(86_400));
        let rem = secs.rem_euclid(86_400);
        write!(
            f,
            "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}.{nanos:09}Z",
            rem / 3600,
            rem / 60 % 60,
            rem % 60
        )
    }
}

impl Serialize for Timestamp {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Timestamp {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        Timestamp::parse_rfc3339(&s).map_err(serde::de::Error::custom)
    }
}

/// A value on the command line or in JSON that is not one of the expected ones.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid {what} {value:?}: expected {expected}")]
pub struct EventParseError {
    /// What was being parsed.
    pub what: &'static str,
    /// The value given.
    pub value: String,
    /// What would have been accepted.
    pub expected: String,
}

/// What a reader asks a backend to report beyond drops and rejects (which are always on).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct EventOptions {
    /// Report every new connection ([`EventKind::NewConnection`], and connection ends where the
    /// source sees them). Costs a little per new connection; off by default.
    pub new_connections: bool,
    /// Report every NetworkPolicy verdict on a new connection, allowed ones too.
    pub policy_verdicts: bool,
}

/// A stream of [`FlowEvent`]s from one backend: the kernel keeps them in a buffer (the BPF ring
/// buffer, a netlink socket) until they are read; a slow reader loses events, counted by
/// [`EventSource::lost`], never slows the datapath.
pub trait EventSource: Send {
    /// Moves the events already waiting into `out`, at most `max`, without blocking; returns
    /// how many were added.
    ///
    /// # Errors
    /// The kernel source failed (its socket or map is gone).
    fn read(&mut self, out: &mut Vec<FlowEvent>, max: usize) -> Result<usize, Error>;

    /// Blocks until events may be waiting or `timeout` has passed.
    ///
    /// # Errors
    /// The kernel source failed.
    fn wait(&mut self, timeout: Duration) -> Result<(), Error>;

    /// A file descriptor that becomes readable when events may be waiting, for async readiness
    /// (tokio's `AsyncFd`); `None` when the source has none (then poll with [`Self::wait`]).
    fn readiness_fd(&self) -> Option<std::os::fd::RawFd>;

    /// Events lost so far because the buffer was full (the reader was too slow).
    fn lost(&self) -> u64;
}

impl<S: EventSource + ?Sized> EventSource for Box<S> {
    fn read(&mut self, out: &mut Vec<FlowEvent>, max: usize) -> Result<usize, Error> {
        (**self).read(out, max)
    }
    fn wait(&mut self, timeout: Duration) -> Result<(), Error> {
        (**self).wait(timeout)
    }
    fn readiness_fd(&self) -> Option<std::os::fd::RawFd> {
        (**self).readiness_fd()
    }
    fn lost(&self) -> u64 {
        (**self).lost()
    }
}

/// A boxed [`EventSource`], what [`crate::Dataplane::events`] returns.
pub type BoxEventSource = Box<dyn EventSource>;

/// A blocking iterator over an [`EventSource`]: each `next()` waits (in steps of `poll`) until
/// an event arrives. Ends only on an error (yielded once).
#[derive(Debug)]
pub struct BlockingEvents<S> {
    source: S,
    buffer: std::collections::VecDeque<FlowEvent>,
    scratch: Vec<FlowEvent>,
    poll: Duration,
    failed: bool,
}

impl<S: EventSource> BlockingEvents<S> {
    /// Iterates over `source`, waiting up to `poll` per wait call.
    pub fn new(source: S, poll: Duration) -> Self {
        Self {
            source,
            buffer: std::collections::VecDeque::new(),
            scratch: Vec::new(),
            poll,
            failed: false,
        }
    }

    /// The source, e.g. for [`EventSource::lost`].
    pub fn source(&self) -> &S {
        &self.source
    }
}

impl<S: EventSource> Iterator for BlockingEvents<S> {
    type Item = Result<FlowEvent, Error>;

    fn next(&mut self) -> Option<Self::Item> {
        loop {
            if let Some(e) = self.buffer.pop_front() {
                return Some(Ok(e));
            }
            if self.failed {
                return None;
            }
            self.scratch.clear();
            let read = self.source.read(&mut self.scratch, 1024).and_then(|n| {
                if n == 0 {
                    self.source.wait(self.poll)
                } else {
                    Ok(())
                }
            });
            if let Err(e) = read {
                self.failed = true;
                return Some(Err(e));
            }
            self.buffer.extend(self.scratch.drain(..));
        }
    }
}

/// One side of a connection in an [`EventFilter`]: a pod (`namespace/name`), every pod of a
/// namespace (`namespace/`), or an address range (`10.244.0.0/16`, `10.244.1.5`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PeerMatch {
    /// A pod by name.
    Endpoint(ObjectName),
    /// Every pod of a namespace.
    Namespace(String),
    /// An address or CIDR.
    Cidr(IpNetwork),
}

impl PeerMatch {
    fn matches(&self, endpoint: Option<&ObjectName>, addresses: &[IpAddr]) -> bool {
        match self {
            PeerMatch::Endpoint(name) => endpoint == Some(name),
            PeerMatch::Namespace(ns) => endpoint.is_some_and(|e| &e.namespace == ns),
            PeerMatch::Cidr(net) => addresses.iter().any(|a| net.contains(*a)),
        }
    }
}

impl FromStr for PeerMatch {
    type Err = EventParseError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if let Ok(ip) = s.parse::<IpAddr>() {
            return Ok(PeerMatch::Cidr(IpNetwork::from(ip)));
        }
        if let Ok(net) = s.parse::<IpNetwork>() {
            if s.contains('/') && s.split('/').nth(1).is_some_and(|p| p.parse::<u8>().is_ok()) {
                return Ok(PeerMatch::Cidr(net));
            }
        }
        match s.split_once('/') {
            Some((ns, "")) if !ns.is_empty() => Ok(PeerMatch::Namespace(ns.to_owned())),
            Some((ns, name)) if !ns.is_empty() && !name.contains('/') => {
                Ok(PeerMatch::Endpoint(ObjectName::new(ns, name)))
            }
            _ => Err(EventParseError {
                what: "peer",
                value: s.to_owned(),
                expected: "namespace/pod, namespace/, an IP address or a CIDR".to_owned(),
            }),
        }
    }
}

impl fmt::Display for PeerMatch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PeerMatch::Endpoint(n) => write!(f, "{n}"),
            PeerMatch::Namespace(ns) => write!(f, "{ns}/"),
            PeerMatch::Cidr(net) => write!(f, "{net}"),
        }
    }
}

/// Which events to show, as `hubble observe` selects them: every condition given must hold.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct EventFilter {
    /// Any of these verdicts (empty: any verdict).
    pub verdicts: BTreeSet<EventVerdict>,
    /// Any of these drop reasons (empty: any, and events without a reason too).
    pub reasons: BTreeSet<DropReason>,
    /// The sending side: the source endpoint or the source address (before or after SNAT).
    pub from: Option<PeerMatch>,
    /// The receiving side: the destination endpoint or the destination address (the frontend
    /// before translation or the backend after).
    pub to: Option<PeerMatch>,
    /// The service the packet addressed.
    pub service: Option<ObjectName>,
    /// A port on either side, before or after translation.
    pub port: Option<u16>,
    /// The IP protocol.
    pub protocol: Option<L4Protocol>,
}

impl EventFilter {
    /// Whether `event` passes every condition.
    pub fn matches(&self, event: &FlowEvent) -> bool {
        if !self.verdicts.is_empty() && !self.verdicts.contains(&event.verdict) {
            return false;
        }
        if !self.reasons.is_empty() && !event.reason.is_some_and(|r| self.reasons.contains(&r)) {
            return false;
        }
        if self.protocol.is_some_and(|p| p != event.protocol) {
            return false;
        }
        if self.service.is_some() && self.service != event.service {
            return false;
        }
        let tuples: Vec<&Tuple> = std::iter::once(&event.original)
            .chain(event.translated.as_ref())
            .collect();
        if let Some(port) = self.port {
            let backend_port = event.backend.map(|b| b.port());
            if !tuples
                .iter()
                .any(|t| t.source.port() == port || t.destination.port() == port)
                && backend_port != Some(port)
            {
                return false;
            }
        }
        if let Some(from) = &self.from {
            let addrs: Vec<IpAddr> = tuples.iter().map(|t| t.source.ip()).collect();
            if !from.matches(event.source_endpoint.as_ref(), &addrs) {
                return false;
            }
        }
        if let Some(to) = &self.to {
            let mut addrs: Vec<IpAddr> = tuples.iter().map(|t| t.destination.ip()).collect();
            addrs.extend(event.backend.map(|b| b.ip()));
            if !to.matches(event.destination_endpoint.as_ref(), &addrs) {
                return false;
            }
        }
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> FlowEvent {
        let mut e = FlowEvent::new(
            Timestamp::parse_rfc3339("2026-12-06T14:02:03.123456789Z").unwrap(),
            "node-0",
            EventKind::Drop,
            EventVerdict::Rejected,
            L4Protocol::Tcp,
            Tuple::new(
                "10.244.0.5:40000".parse().unwrap(),
                "10.96.0.10:80".parse().unwrap(),
            ),
        );
        e.reason = Some(DropReason::NoBackend);
        e.point = Some(ObservationPoint::FromPod);
        e.tcp_flags = Some(TcpFlags(TcpFlags::SYN));
        e.service = Some(ObjectName::new("default", "web"));
        e.source_endpoint = Some(ObjectName::new("default", "client"));
        e
    }

    #[test]
    fn json_lines_are_stable_and_round_trip() {
        let e = sample();
        let line = e.to_json_line();
        assert_eq!(
            line,
            r#"{"time":"2026-12-06T14:02:03.123456789Z","node":"node-0","kind":"drop","verdict":"rejected","reason":"no-backend","point":"from-pod","protocol":"TCP","original":{"source":"10.244.0.5:40000","destination":"10.96.0.10:80"},"service":{"namespace":"default","name":"web"},"tcpFlags":["SYN"],"sourceEndpoint":{"namespace":"default","name":"client"}}"#
        );
        let back: FlowEvent = serde_json::from_str(&line).unwrap();
        assert_eq!(back, e);
        assert_eq!(
            e.to_string(),
            "2026-12-06T14:02:03.123456789Z node-0 10.244.0.5:40000 (default/client) -> 10.96.0.10:80 (service default/web) TCP SYN REJECTED (no-backend) at from-pod"
        );
    }

    #[test]
    fn timestamps_round_trip_across_dates() {
        for nanos in [
            0u64,
            1,
            951_782_400_000_000_000, // 2000-02-29
            1_796_565_723_123_456_789,
            4_102_444_799_999_999_999, // 2099-12-31T23:59:59.999999999
        ] {
            let t = Timestamp(nanos);
            assert_eq!(Timestamp::parse_rfc3339(&t.to_string()), Ok(t), "{t}");
        }
        assert_eq!(
            Timestamp(951_782_400_000_000_000).to_string(),
            "2000-02-29T00:00:00.000000000Z"
        );
        assert_eq!(
            Timestamp::parse_rfc3339("1970-01-01T00:00:01Z"),
            Ok(Timestamp(1_000_000_000))
        );
        for bad in ["", "2026-13-01T00:00:00Z", "2026-12-06T14:02:03", "x"] {
            assert!(Timestamp::parse_rfc3339(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn drop_reason_codes_are_unique_and_round_trip() {
        let mut seen = BTreeSet::new();
        for r in DropReason::ALL {
            assert!(seen.insert(r.code()), "{r} reuses code {}", r.code());
            assert_eq!(DropReason::from_code(r.code()), Some(r));
            assert_eq!(r.name().parse::<DropReason>(), Ok(r));
        }
        assert_eq!(DropReason::from_code(0), None);
        assert_eq!(DropReason::from_code(200), Some(DropReason::Unknown));
    }

    #[test]
    fn filters_select_like_hubble_observe() {
        let e = sample();
        let f = |s: &str| -> EventFilter {
            let mut f = EventFilter::default();
            for part in s.split_whitespace() {
                let (k, v) = part.split_once('=').unwrap();
                match k {
                    "verdict" => {
                        f.verdicts.insert(v.parse().unwrap());
                    }
                    "from" => f.from = Some(v.parse().unwrap()),
                    "to" => f.to = Some(v.parse().unwrap()),
                    "port" => f.port = Some(v.parse().unwrap()),
                    "proto" => f.protocol = Some(v.parse().unwrap()),
                    "reason" => {
                        f.reasons.insert(v.parse().unwrap());
                    }
                    _ => unreachable!(),
                }
            }
            f
        };
        for yes in [
            "",
            "verdict=rejected",
            "from=default/client",
            "from=default/",
            "from=10.244.0.0/16",
            "to=10.96.0.10",
            "port=80",
            "port=40000",
            "proto=tcp",
            "reason=no-backend verdict=rejected",
        ] {
            assert!(f(yes).matches(&e), "{yes:?} should match");
        }
        for no in [
            "verdict=dropped",
            "from=default/other",
            "from=kube-system/",
            "to=10.244.0.0/16",
            "port=81",
            "proto=udp",
            "reason=policy",
        ] {
            assert!(!f(no).matches(&e), "{no:?} should not match");
        }
        assert!("default/a/b".parse::<PeerMatch>().is_err());
        assert!("nonsense".parse::<PeerMatch>().is_err());
    }

    struct Scripted(Vec<Vec<FlowEvent>>, usize);

    impl EventSource for Scripted {
        fn read(&mut self, out: &mut Vec<FlowEvent>, max: usize) -> Result<usize, Error> {
            let Some(batch) = self.0.first_mut() else {
                return Err(Error::FullSyncRequired);
            };
            let n = batch.len().min(max);
            out.extend(batch.drain(..n));
            if batch.is_empty() {
                self.0.remove(0);
            }
            Ok(n)
        }
        fn wait(&mut self, _: Duration) -> Result<(), Error> {
            self.1 += 1;
            Ok(())
        }
        fn readiness_fd(&self) -> Option<std::os::fd::RawFd> {
            None
        }
        fn lost(&self) -> u64 {
            0
        }
    }

    #[test]
    fn blocking_iterator_waits_on_empty_reads_and_ends_on_error() {
        let e = sample();
        let src = Scripted(vec![vec![e.clone()], vec![], vec![e.clone(), e.clone()]], 0);
        let mut it = BlockingEvents::new(src, Duration::from_millis(1));
        for _ in 0..3 {
            assert_eq!(it.next().unwrap().unwrap(), e);
        }
        assert!(it.next().unwrap().is_err());
        assert!(it.next().is_none());
        assert_eq!(it.source().1, 1, "one empty read, one wait");
    }
}
