//! Reading our table back from `nft -j list table inet <table>`.

use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, SocketAddr};

use dataplane_core::{DropReason, EventVerdict, ObservedFrontend, ObservedState, Protocol, Stats};
use serde_json::Value;

use crate::error::NetfilterError;
use crate::eventlog::{parse_counter_name, LOGGED_COUNTER};
use crate::nft::render::{MASQUERADE_BIT, TRANSLATED_COUNTER};

fn parse_err(detail: impl Into<String>) -> NetfilterError {
    NetfilterError::Parse {
        backend: "nftables",
        operation: "list table".to_owned(),
        detail: detail.into(),
    }
}

/// The parts of a listed table that observe and stats need.
#[derive(Debug, Default)]
pub struct Listing {
    /// Map/set name → elements as (key, value).
    pub maps: BTreeMap<String, Vec<(Value, Option<Value>)>>,
    /// Chain name → rules (their `expr` arrays).
    pub rules: BTreeMap<String, Vec<Value>>,
    /// Base chains: (chain, hook, type).
    pub hooks: Vec<(String, String, String)>,
    /// Element comments: (map, key as JSON text) → comment (the shared-pick frontends name
    /// their service this way).
    pub comments: BTreeMap<(String, String), String>,
}

/// Parses the JSON of `nft -j list table`.
pub fn parse_listing(json: &str) -> Result<Listing, NetfilterError> {
    let root: Value = serde_json::from_str(json).map_err(|e| parse_err(e.to_string()))?;
    let items = root
        .get("nftables")
        .and_then(Value::as_array)
        .ok_or_else(|| parse_err("no \"nftables\" array"))?;
    let mut out = Listing::default();
    for item in items {
        if let Some(m) = item.get("map").or_else(|| item.get("set")) {
            let name = m
                .get("name")
                .and_then(Value::as_str)
                .ok_or_else(|| parse_err("set without name"))?;
            let mut elems = Vec::new();
            for e in m
                .get("elem")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
            {
                match e {
                    Value::Array(kv) if kv.len() == 2 => {
                        let key = unwrap_elem(&kv[0]).clone();
                        if let Some(c) = kv[0]
                            .get("elem")
                            .and_then(|e| e.get("comment"))
                            .and_then(Value::as_str)
                        {
                            out.comments
                                .insert((name.to_owned(), key.to_string()), c.to_owned());
                        }
                        elems.push((key, Some(kv[1].clone())));
                    }
                    other => elems.push((unwrap_elem(other).clone(), None)),
                }
            }
            out.maps.insert(name.to_owned(), elems);
        } else if let Some(r) = item.get("rule") {
            let chain = r
                .get("chain")
                .and_then(Value::as_str)
                .ok_or_else(|| parse_err("rule without chain"))?;
            let expr = r.get("expr").cloned().unwrap_or(Value::Null);
            out.rules.entry(chain.to_owned()).or_default().push(expr);
        } else if let Some(c) = item.get("chain") {
            if let Some(name) = c.get("name").and_then(Value::as_str) {
                out.rules.entry(name.to_owned()).or_default();
                if let Some(hook) = c.get("hook").and_then(Value::as_str) {
                    let kind = c.get("type").and_then(Value::as_str).unwrap_or("filter");
                    out.hooks
                        .push((name.to_owned(), hook.to_owned(), kind.to_owned()));
                }
            }
        }
    }
    Ok(out)
}

/// Elements with timeouts or counters are wrapped as `{"elem": {"val": ...}}`.
fn unwrap_elem(v: &Value) -> &Value {
    v.get("elem").and_then(|e| e.get("val")).unwrap_or(v)
}

/// nft prints 32-bit values with the top bit set as negative numbers.
fn as_u32(v: &Value) -> Option<u32> {
    v.as_i64()
        .and_then(|i| {
            u32::try_from(i)
                .ok()
                .or_else(|| i32::try_from(i).ok().map(i32::cast_unsigned))
        })
        .or_else(|| v.as_u64().and_then(|u| u32::try_from(u).ok()))
}

/// Everything a chain can lead to: goto/jump targets (also inside anonymous vmaps), numgen
/// slot ranges and literal DNAT targets.
#[derive(Debug, Default)]
struct Reach {
    targets: BTreeSet<String>,
    ranges: Vec<(u32, u32)>,
    literal: BTreeSet<SocketAddr>,
}

fn walk(v: &Value, reach: &mut Reach) {
    match v {
        Value::Object(map) => {
            for key in ["goto", "jump"] {
                if let Some(t) = map
                    .get(key)
                    .and_then(|g| g.get("target"))
                    .and_then(Value::as_str)
                {
                    reach.targets.insert(t.to_owned());
                }
            }
            if let Some(ng) = map.get("numgen").or_else(|| map.get("jhash")) {
                if let (Some(m), off) = (
                    ng.get("mod").and_then(as_u32),
                    ng.get("offset").and_then(as_u32),
                ) {
                    reach.ranges.push((off.unwrap_or(0) & !MASQUERADE_BIT, m));
                }
            }
            if let Some(d) = map.get("dnat") {
                let addr = d
                    .get("addr")
                    .and_then(Value::as_str)
                    .and_then(|a| a.parse::<IpAddr>().ok());
                let port = d
                    .get("port")
                    .and_then(Value::as_u64)
                    .and_then(|p| u16::try_from(p).ok());
                if let (Some(a), Some(p)) = (addr, port) {
                    reach.literal.insert(SocketAddr::new(a, p));
                }
            }
            for child in map.values() {
                walk(child, reach);
            }
        }
        Value::Array(items) => items.iter().for_each(|i| walk(i, reach)),
        _ => {}
    }
}

fn backend_of(v: &Value) -> Option<SocketAddr> {
    let parts = v.get("concat")?.as_array()?;
    let ip: IpAddr = parts.first()?.as_str()?.parse().ok()?;
    let port = u16::try_from(parts.get(1)?.as_u64()?).ok()?;
    Some(SocketAddr::new(ip, port))
}

fn protocol_of(v: &Value) -> Option<Protocol> {
    Protocol::from_name(v.as_str()?)
}

/// Frontends (from the `service-ips-*` maps) and the backends each can reach.
pub fn observed_state(l: &Listing) -> Result<ObservedState, NetfilterError> {
    let frontends = live_frontends(l)?.into_iter().map(|(f, _)| f).collect();
    Ok(ObservedState { frontends })
}

/// Frontends as [`observed_state`] reads them, with the chain each leads to (its name
/// carries the service's: `svc-v4-<ns>/<name>/<proto>/<port>`, `ext-…`, `fw-…`).
pub fn live_frontends(l: &Listing) -> Result<Vec<(ObservedFrontend, String)>, NetfilterError> {
    let mut slots: BTreeMap<u32, SocketAddr> = BTreeMap::new();
    for name in ["backends-v4", "backends-v6"] {
        for (k, v) in l.maps.get(name).into_iter().flatten() {
            let key = as_u32(k).ok_or_else(|| parse_err(format!("{name}: key {k}")))?;
            let b = v
                .as_ref()
                .and_then(backend_of)
                .ok_or_else(|| parse_err(format!("{name}: value of {key}")))?;
            slots.insert(key, b);
        }
    }
    // The frontends that pick through a shared chain: their groups' marks, and the
    // groups' backends.
    let mut marks: BTreeMap<(IpAddr, Protocol, u16), u32> = BTreeMap::new();
    for name in ["service-marks-v4", "service-marks-v6"] {
        for (k, v) in l.maps.get(name).into_iter().flatten() {
            let (Some(frontend), Some(mark)) = (frontend_key(k), v.as_ref().and_then(as_u32))
            else {
                return Err(parse_err(format!("{name}: element {k}")));
            };
            marks.insert(frontend, mark & !MASQUERADE_BIT);
        }
    }
    let mut groups: BTreeMap<u32, Vec<SocketAddr>> = BTreeMap::new();
    for name in ["group-backends-v4", "group-backends-v6"] {
        for (k, v) in l.maps.get(name).into_iter().flatten() {
            let group = k
                .get("concat")
                .and_then(Value::as_array)
                .and_then(|p| p.first())
                .and_then(as_u32);
            let (Some(group), Some(b)) = (group, v.as_ref().and_then(backend_of)) else {
                return Err(parse_err(format!("{name}: element {k}")));
            };
            groups.entry(group).or_default().push(b);
        }
    }
    let mut out = Vec::new();
    for name in ["service-ips-v4", "service-ips-v6"] {
        for (k, v) in l.maps.get(name).into_iter().flatten() {
            let parts = k.get("concat").and_then(Value::as_array);
            let (Some(ip), Some(proto), Some(port)) = (
                parts
                    .and_then(|p| p.first())
                    .and_then(Value::as_str)
                    .and_then(|s| s.parse::<IpAddr>().ok()),
                parts.and_then(|p| p.get(1)).and_then(protocol_of),
                parts
                    .and_then(|p| p.get(2))
                    .and_then(Value::as_u64)
                    .and_then(|p| u16::try_from(p).ok()),
            ) else {
                return Err(parse_err(format!("{name}: key {k}")));
            };
            let mut reach = Reach::default();
            if let Some(v) = v {
                walk(v, &mut reach);
            }
            let chain = reach.targets.iter().next().cloned().unwrap_or_default();
            let (backends, chain) = if chain.starts_with("pick-") {
                let backends = marks
                    .get(&(ip, proto, port))
                    .and_then(|m| groups.get(m))
                    .into_iter()
                    .flatten()
                    .copied()
                    .collect();
                let label = l.comments.get(&(name.to_owned(), k.to_string()));
                (backends, label.cloned().unwrap_or(chain))
            } else {
                (reachable(l, &slots, reach), chain)
            };
            out.push((
                ObservedFrontend {
                    address: SocketAddr::new(ip, port),
                    protocol: proto,
                    backends,
                },
                chain,
            ));
        }
    }
    out.sort();
    Ok(out)
}

/// `addr . protocol . port` of a `service-marks` key.
fn frontend_key(k: &Value) -> Option<(IpAddr, Protocol, u16)> {
    let parts = k.get("concat")?.as_array()?;
    let ip = parts.first()?.as_str()?.parse().ok()?;
    let proto = protocol_of(parts.get(1)?)?;
    let port = u16::try_from(parts.get(2)?.as_u64()?).ok()?;
    Some((ip, proto, port))
}

/// The elements of a verdict map whose values lead to chains: (key, target chain).
pub fn verdict_elements<'a>(l: &'a Listing, map: &str) -> Vec<(&'a Value, String)> {
    l.maps
        .get(map)
        .into_iter()
        .flatten()
        .filter_map(|(k, v)| {
            let mut reach = Reach::default();
            walk(v.as_ref()?, &mut reach);
            Some((k, reach.targets.into_iter().next()?))
        })
        .collect()
}

fn reachable(l: &Listing, slots: &BTreeMap<u32, SocketAddr>, start: Reach) -> BTreeSet<SocketAddr> {
    let mut out = BTreeSet::new();
    let mut seen = BTreeSet::new();
    let mut todo = vec![start];
    while let Some(r) = todo.pop() {
        out.extend(r.literal);
        for (off, m) in r.ranges {
            for k in off..off.saturating_add(m) {
                if let Some(b) = slots.get(&k) {
                    out.insert(*b);
                }
            }
        }
        for t in r.targets {
            // Shared chains (drop/reject/dnat) lead nowhere service-specific.
            if t.starts_with("dnat-") || !seen.insert(t.clone()) {
                continue;
            }
            if let Some(rules) = l.rules.get(&t) {
                let mut next = Reach::default();
                for e in rules {
                    walk(e, &mut next);
                }
                todo.push(next);
            }
        }
    }
    out
}

fn counter_packets(expr: &Value) -> u64 {
    expr.as_array()
        .into_iter()
        .flatten()
        .filter_map(|e| e.get("counter")?.get("packets")?.as_u64())
        .sum()
}

/// Packets translated, dropped and rejected, and drops by reason, from our table's named
/// counters (the JSON of `nft -j list counters table inet <table>`: a few objects, whatever
/// the number of services, so that `stats()` stays cheap for `/metrics`).
pub fn counter_stats(json: &str) -> Result<Stats, NetfilterError> {
    let root: Value = serde_json::from_str(json).map_err(|e| parse_err(e.to_string()))?;
    let items = root
        .get("nftables")
        .and_then(Value::as_array)
        .ok_or_else(|| parse_err("no \"nftables\" array"))?;
    let mut s = Stats::default();
    let mut counted = 0u64;
    // `None`: no log rules (`nflog_rate` 0), so nothing was held back either.
    let mut logged: Option<u64> = None;
    for c in items.iter().filter_map(|i| i.get("counter")) {
        let (Some(name), Some(packets)) = (
            c.get("name").and_then(Value::as_str),
            c.get("packets").and_then(Value::as_u64),
        ) else {
            continue;
        };
        if name == TRANSLATED_COUNTER {
            s.packets_translated += packets;
        } else if name == LOGGED_COUNTER {
            *logged.get_or_insert(0) += packets;
        } else if let Some((verdict, reason)) = parse_counter_name(name) {
            counted += packets;
            *s.drops.entry(reason).or_default() += packets;
            if verdict == EventVerdict::Rejected {
                s.packets_rejected += packets;
            } else {
                s.packets_dropped += packets;
            }
            let other = match reason {
                DropReason::Policy => Some("policy_dropped"),
                DropReason::Spoofed => Some("spoofed_dropped"),
                _ => None,
            };
            if let Some(key) = other {
                *s.other.entry(key.to_owned()).or_default() += packets;
            }
        }
    }
    s.drops.retain(|_, n| *n > 0);
    // Every counted drop passed a log rule first; those it did not log were held back by
    // the rule's rate limit. Without log rules there is no such count.
    if let Some(logged) = logged {
        s.other.insert(
            "events_suppressed".to_owned(),
            counted.saturating_sub(logged),
        );
    }
    Ok(s)
}

/// The packet counter of the first rule of `chain` (the first rule of every service chain
/// starts with a counter that sees every packet entering the chain).
pub fn chain_counter(l: &Listing, chain: &str) -> Option<u64> {
    l.rules.get(chain)?.first().map(counter_packets)
}

/// The columns of `/proc/net/stat/nf_conntrack` that count connections the kernel's conntrack
/// could not track, with the name each gets in `Stats::other`: `drop` (a new connection
/// dropped because the table was full and nothing could be evicted), `early_drop` (a
/// not-yet-assured entry evicted to make room), `insert_failed` (a race lost at insert).
const CONNTRACK_STAT_COLUMNS: [(&str, &str); 3] = [
    ("drop", "conntrack_drop"),
    ("early_drop", "conntrack_early_drop"),
    ("insert_failed", "conntrack_insert_failed"),
];

/// Adds the kernel conntrack's per-namespace failure counters to `other`, summed over the
/// CPUs, from the text of `/proc/net/stat/nf_conntrack` (a header of column names, then one
/// line of hexadecimal values per CPU). A column this kernel does not have is left out.
pub(crate) fn add_conntrack_stat(other: &mut BTreeMap<String, u64>, text: &str) {
    let mut lines = text.lines();
    let Some(header) = lines.next() else { return };
    let columns: Vec<&str> = header.split_whitespace().collect();
    let rows: Vec<Vec<u64>> = lines
        .map(|l| {
            l.split_whitespace()
                .map(|v| u64::from_str_radix(v, 16).unwrap_or(0))
                .collect()
        })
        .collect();
    for (column, name) in CONNTRACK_STAT_COLUMNS {
        let Some(i) = columns.iter().position(|c| *c == column) else {
            continue;
        };
        let sum = rows.iter().filter_map(|r| r.get(i)).sum();
        other.insert(name.to_owned(), sum);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A shared-pick frontend as `nft -j` 1.0.6 lists it (the element's comment wrapped
    /// with its key): named by its comment, its backends found through its group's mark.
    #[test]
    fn a_shared_pick_frontend_is_named_by_its_comment_and_reaches_its_group() {
        let json = r#"{"nftables": [
          {"map": {"name": "service-ips-v4", "elem": [[
            {"elem": {"val": {"concat": ["10.96.0.10", "tcp", 80]},
                      "comment": "svc-v4-default/web/tcp/80"}},
            {"goto": {"target": "pick-clusterip-v4-2"}}]]}},
          {"map": {"name": "service-marks-v4", "elem": [
            [{"concat": ["10.96.0.10", "tcp", 80]}, 8192]]}},
          {"map": {"name": "group-backends-v4", "elem": [
            [{"concat": [8192, 0]}, {"concat": ["10.244.0.5", 8080]}],
            [{"concat": [8192, 1]}, {"concat": ["10.244.1.5", 8080]}],
            [{"concat": [12288, 0]}, {"concat": ["10.244.2.5", 8080]}]]}}
        ]}"#;
        let l = parse_listing(json).unwrap();
        let frontends = live_frontends(&l).unwrap();
        assert_eq!(frontends.len(), 1);
        let (f, chain) = &frontends[0];
        assert_eq!(chain, "svc-v4-default/web/tcp/80");
        let want: BTreeSet<SocketAddr> = ["10.244.0.5:8080", "10.244.1.5:8080"]
            .iter()
            .map(|a| a.parse().unwrap())
            .collect();
        assert_eq!(f.backends, want);
    }

    #[test]
    fn conntrack_failures_are_summed_over_the_cpus() {
        let text = "entries  clashres found new invalid ignore delete chainlength insert \
                    insert_failed drop early_drop icmp_error  expect_new expect_create \
                    expect_delete search_restart\n\
            00000003  00000000 00000000 00000000 00000000 00000000 00000000 00000000 00000000 \
            00000001 0000000a 00000002 00000000  00000000 00000000 00000000 00000000\n\
            00000003  00000000 00000000 00000000 00000000 00000000 00000000 00000000 00000000 \
            00000000 00000010 00000001 00000000  00000000 00000000 00000000 00000000\n";
        let mut other = BTreeMap::new();
        add_conntrack_stat(&mut other, text);
        assert_eq!(other["conntrack_drop"], 0x1a);
        assert_eq!(other["conntrack_early_drop"], 3);
        assert_eq!(other["conntrack_insert_failed"], 1);
        let mut none = BTreeMap::new();
        add_conntrack_stat(&mut none, "entries found\n00000001 00000002\n");
        assert!(none.is_empty(), "{none:?}");
    }
}
