//! Conntrack and session-affinity expiry (the work of [`Dataplane::maintain`]) and its
//! timing policy: how often it should run ([`maintenance_interval`]) and the clock it reads
//! ([`monotonic_now`]).
//!
//! [`Dataplane::maintain`]: dataplane_core::Dataplane::maintain

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use dataplane_core::Protocol;

use crate::config::CtTimeouts;
use crate::ct::{all_entries, ct_entries, forward_key, pair, reverse_key};
use crate::error::EbpfError;
use crate::loader::Maps;
use crate::map_table;
use crate::maps::{
    CtEntry, CtKey, PolCt, CT_F_DSR, CT_SCTP_ESTAB, CT_TCP_FIN_FWD, CT_TCP_FIN_REV, CT_TCP_REPLY,
    CT_TCP_RST,
};
use crate::writer::{self, Current};

/// The shortest interval that
/// [`Dataplane::maintenance_interval`](dataplane_core::Dataplane::maintenance_interval)
/// answers: a timeout of a second or less is not worth a scan of the conntrack table more
/// often than this.
pub const MIN_MAINTENANCE_INTERVAL: Duration = Duration::from_secs(1);

/// The longest interval that
/// [`Dataplane::maintenance_interval`](dataplane_core::Dataplane::maintenance_interval)
/// answers: Cilium's conntrack GC starts at this interval (`ConntrackGCStartingInterval`)
/// before it adapts.
pub const MAX_MAINTENANCE_INTERVAL: Duration = Duration::from_mins(5);

/// How often [`Dataplane::maintain`](dataplane_core::Dataplane::maintain) should run with
/// conntrack `timeouts`: half the shortest timeout, clamped to
/// [`MIN_MAINTENANCE_INTERVAL`]..=[`MAX_MAINTENANCE_INTERVAL`].
///
/// An entry idle for its timeout `t` is removed by the first pass after that, so it lives at
/// most `t` plus one interval: with half the shortest timeout, 1.5 × `t` for the shortest
/// one and less for the others. The defaults give 5 s (half of `tcp_closing`, 10 s).
/// Cilium's conntrack GC (`pkg/maps/ctmap/gc`, `calculateIntervalWithConfig`) adapts its
/// interval to the share of entries each pass deletes instead (from 5 min, between 10 s and
/// 12 h for LRU maps): for it a late pass mostly costs memory. Ours (`dp_ct`) is LRU too, but
/// the datapath never looks at a conntrack entry's age: a flow keeps its translation (its
/// backend) until a pass removes the entry, so the timeouts hold only as closely as the passes
/// follow them, and the interval follows the timeouts rather than the table's churn. A pass
/// reads the table in batches: its cost follows the tracked connections, not the map's size.
/// Session-affinity timeouts do not count: the datapath checks an affinity entry's age itself
/// (a pass only frees the memory of expired ones). Nor do SCTP's: netfilter's 3 s before
/// establishment and in shutdown would make every node pass every 1.5 s, SCTP or not; an SCTP
/// entry past its short timeout lives one interval longer, up to 8 s with the defaults.
pub fn maintenance_interval(timeouts: &CtTimeouts) -> Duration {
    let shortest = [
        timeouts.tcp_syn,
        timeouts.tcp_established,
        timeouts.tcp_closing,
        timeouts.udp,
        timeouts.udp_stream,
    ]
    .into_iter()
    .min()
    .unwrap_or(MAX_MAINTENANCE_INTERVAL);
    (shortest / 2).clamp(MIN_MAINTENANCE_INTERVAL, MAX_MAINTENANCE_INTERVAL)
}

/// When the last conntrack pass ran, by `maintain()`'s `now`: the next pass is due one
/// [`maintenance_interval`] later. `maintain()` may be called more often than that (while
/// addresses are L2-announced the dataplane asks for a call every third of the liveness
/// window, about a second, to refresh the liveness): a call in between refreshes the liveness
/// only and leaves `dp_ct` alone, so the table is walked on the conntrack timeouts' schedule
/// whatever the liveness asks for.
#[derive(Debug, Default)]
pub(crate) struct GcSchedule {
    last: Option<Duration>,
}

impl GcSchedule {
    /// Whether a pass is due at `now` with passes `interval` apart: none ran yet, `interval`
    /// has passed since the last (less a tenth of it, so that a timer that fires a little
    /// early does not put the pass off by a whole interval), or `now` is before the last
    /// pass's (the caller's clock is not the one the last pass was given: a test that
    /// jumps ahead and back, say): then it runs rather than wait for a time that may not come.
    pub(crate) fn due(&self, now: Duration, interval: Duration) -> bool {
        let on_time = interval.saturating_sub(interval / 10);
        self.last
            .is_none_or(|last| now.checked_sub(last).is_none_or(|since| since >= on_time))
    }

    /// Records a pass at `now`.
    pub(crate) fn ran(&mut self, now: Duration) {
        self.last = Some(now);
    }
}

/// What one [`gc`] pass removed (`Dataplane::maintain` reports it).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub(crate) struct GcReport {
    /// Connections expired (forward entries; their reverse entries go with them).
    pub expired: usize,
    /// Reverse entries whose forward entry was gone.
    pub orphans: usize,
    /// Live connections whose reverse entry was gone (evicted by the LRU, or its key taken
    /// by another connection): their forward entry is removed too, so that the next packet
    /// finds no entry (`ct_lost`) and the connection gets both entries again, instead of its
    /// replies passing untranslated for as long as the forward entry lives.
    pub reverse_lost: usize,
    /// Session-affinity entries expired.
    pub affinity_expired: usize,
    /// Connections still tracked.
    pub remaining: usize,
    /// `dp_pol_ct` entries expired (NetworkPolicy's conntrack; two per connection).
    pub policy_expired: usize,
}

/// `dp_ct`'s entry at `key` now (a second look after the dump).
fn lookup(maps: &Maps, key: &CtKey) -> Result<Option<CtEntry>, EbpfError> {
    match maps.ct.get(key, 0) {
        Ok(e) => Ok(Some(e)),
        Err(aya::maps::MapError::KeyNotFound) => Ok(None),
        Err(e) => Err(EbpfError::map(map_table::CT.name, "reading", e)),
    }
}

/// Whether forward entry `k` → `v` has its own reverse entry in `by_key`.
fn paired(by_key: &BTreeMap<CtKey, CtEntry>, k: &CtKey, v: &CtEntry) -> bool {
    let rk = reverse_key(k, v);
    by_key.get(&rk).is_some_and(|r| pair(k, v, &rk, r))
}

/// The current `CLOCK_MONOTONIC` time, the clock `bpf_ktime_get_ns` uses.
pub fn monotonic_now() -> Duration {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid, writable timespec; CLOCK_MONOTONIC always exists on Linux.
    let rc = unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &raw mut ts) };
    assert_eq!(rc, 0, "clock_gettime(CLOCK_MONOTONIC) cannot fail");
    Duration::new(
        u64::try_from(ts.tv_sec).unwrap_or(0),
        u32::try_from(ts.tv_nsec).unwrap_or(0),
    )
}

/// Expires conntrack and affinity entries idle longer than their timeouts at `now`
/// (`CLOCK_MONOTONIC`, see [`monotonic_now`]): the work of `Dataplane::maintain`. Each
/// service's affinity timeout is read from the writer's mirror of `dp_svc` (`current`).
pub(crate) fn gc(
    maps: &mut Maps,
    current: &Current,
    timeouts: &CtTimeouts,
    now: Duration,
) -> Result<GcReport, EbpfError> {
    let affinity_timeouts: BTreeMap<u32, u32> = current
        .frontends
        .values()
        .map(|v| (v.id, v.affinity_timeout))
        .collect();
    let now_ns = u64::try_from(now.as_nanos()).unwrap_or(u64::MAX);
    // One copy of the table (a map: the pairing below looks keys up).
    let by_key: BTreeMap<CtKey, CtEntry> = ct_entries(maps)?.into_iter().collect();
    let mut report = GcReport::default();
    // A set: one key is never deleted twice in a pass.
    let mut remove = BTreeSet::new();
    let mut orphans = Vec::new();
    let mut half = Vec::new();
    for (k, v) in &by_key {
        // DSR entries stand alone: the ingress node's forward entry never sees a reply,
        // the backend node's reverse entry has no forward partner.
        let dsr = v.flags & CT_F_DSR != 0;
        if !v.is_reverse() || dsr {
            let closed_both =
                v.tcp_state & (CT_TCP_FIN_FWD | CT_TCP_FIN_REV) == CT_TCP_FIN_FWD | CT_TCP_FIN_REV;
            // One side of a DSR flow sees only the client's FIN.
            let closed = closed_both || (dsr && v.tcp_state & CT_TCP_FIN_FWD != 0);
            let timeout = idle_timeout(timeouts, k.proto, v.tcp_state, closed, dsr);
            let idle = now_ns.saturating_sub(v.last_seen_ns);
            if u128::from(idle) > timeout.as_nanos() {
                remove.insert(*k);
                // Its reverse key only if that entry is still this connection's: the
                // key may now hold another connection's reverse entry (or another kind
                // of entry), which must stay; or nothing (evicted).
                let rk = reverse_key(k, v);
                if v.is_forward() && !dsr && by_key.get(&rk).is_some_and(|r| pair(k, v, &rk, r)) {
                    remove.insert(rk);
                }
                report.expired += 1;
            } else if v.is_forward() && !dsr && !paired(&by_key, k, v) {
                half.push((*k, *v));
            } else {
                report.remaining += 1;
            }
        } else {
            let fk = forward_key(k, v);
            if !by_key.get(&fk).is_some_and(|f| pair(&fk, f, k, v)) {
                orphans.push((*k, *v, fk));
            }
        }
    }
    for (k, v, fk) in orphans {
        // The dump is not atomic: a new connection's reverse entry is written just before
        // its forward entry, which the dump may have passed already. Look again.
        let partner = lookup(maps, &fk)?;
        if !partner.is_some_and(|f| pair(&fk, &f, &k, &v)) && remove.insert(k) {
            report.orphans += 1;
        }
    }
    for (k, v) in half {
        // As for orphans: the dump may have passed the reverse key's bucket before the
        // datapath wrote it (a reverse entry is written before its forward entry).
        let rk = reverse_key(&k, &v);
        let partner = lookup(maps, &rk)?;
        if !partner.is_some_and(|r| pair(&k, &v, &rk, &r)) && remove.insert(k) {
            report.reverse_lost += 1;
        } else {
            report.remaining += 1;
        }
    }
    writer::remove_ct(maps, &remove)?;
    let mut stale = Vec::new();
    for item in &maps.affinity {
        let Ok((k, v)) = item else { continue };
        let timeout = u64::from(affinity_timeouts.get(&k.svc_id).copied().unwrap_or(0));
        if now_ns.saturating_sub(v.last_seen_ns) > timeout * 1_000_000_000 {
            stale.push(k);
        }
    }
    writer::remove_affinity(maps, &stale)?;
    report.affinity_expired = stale.len();

    let pol: BTreeMap<CtKey, PolCt> =
        all_entries(&maps.pol_ct_batch, &maps.pol_ct, map_table::POL_CT.name)?
            .into_iter()
            .collect();
    let expired = policy_expired(&pol, timeouts, now_ns);
    for k in &expired {
        match maps.pol_ct.remove(k) {
            Ok(()) | Err(aya::maps::MapError::KeyNotFound) => {}
            Err(e) => return Err(EbpfError::map(map_table::POL_CT.name, "removing", e)),
        }
    }
    report.policy_expired = expired.len();
    Ok(report)
}

/// How long a flow of protocol `proto` may stay idle: `state` its `CT_TCP_*` and
/// `CT_SCTP_ESTAB` bits, `fin_both` whether TCP's FIN went both ways (for the one side of a
/// DSR flow: the client's FIN), `dsr` whether it is a DSR flow (whose replies this node never
/// sees: answered from the start). SCTP follows `nf_conntrack_proto_sctp`'s states: an
/// ABORT or SHUTDOWN-COMPLETE is `CLOSED`, a SHUTDOWN or SHUTDOWN-ACK either way one of
/// the `SHUTDOWN_*`, a COOKIE-ACK `ESTABLISHED`, anything before that `COOKIE_WAIT` /
/// `COOKIE_ECHOED`.
fn idle_timeout(t: &CtTimeouts, proto: u8, state: u8, fin_both: bool, dsr: bool) -> Duration {
    let answered = state & CT_TCP_REPLY != 0 || dsr;
    if proto == Protocol::Tcp.number() {
        if state & CT_TCP_RST != 0 || fin_both {
            t.tcp_closing
        } else if answered {
            t.tcp_established
        } else {
            t.tcp_syn
        }
    } else if proto == Protocol::Sctp.number() {
        if state & CT_TCP_RST != 0 {
            t.sctp_closed
        } else if state & (CT_TCP_FIN_FWD | CT_TCP_FIN_REV) != 0 {
            t.sctp_shutdown
        } else if state & CT_SCTP_ESTAB != 0 || dsr {
            t.sctp_established
        } else {
            t.sctp_init
        }
    } else if answered {
        t.udp_stream
    } else {
        t.udp
    }
}

/// The key of the other direction of the connection keyed `k` in `dp_pol_ct`.
fn pol_reply_key(k: &CtKey) -> CtKey {
    CtKey {
        saddr: k.daddr,
        daddr: k.saddr,
        sport: k.dport,
        dport: k.sport,
        ..*k
    }
}

/// The `dp_pol_ct` entries to remove at `now_ns`: a connection's two keys go together, when
/// the later of their last packets is older than the connection's timeout (its state read
/// from both: a RST or a FIN each way is closing, a packet after the first is an answered
/// connection, as for `dp_ct`).
fn policy_expired(
    entries: &BTreeMap<CtKey, PolCt>,
    timeouts: &CtTimeouts,
    now_ns: u64,
) -> Vec<CtKey> {
    let mut out = Vec::new();
    for (k, v) in entries {
        let rk = pol_reply_key(k);
        let other = entries.get(&rk);
        let last = other.map_or(v.last_seen_ns, |o| o.last_seen_ns.max(v.last_seen_ns));
        let state = v.tcp_state | other.map_or(0, |o| o.tcp_state);
        let fin_both = v.tcp_state & CT_TCP_FIN_FWD != 0
            && other.is_some_and(|o| o.tcp_state & CT_TCP_FIN_FWD != 0);
        let timeout = idle_timeout(timeouts, k.proto, state, fin_both, false);
        if u128::from(now_ns.saturating_sub(last)) > timeout.as_nanos() {
            out.push(*k);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::maps::{Addr, CT_TCP_SYN};

    #[test]
    fn policy_conntrack_expires_both_keys_of_a_connection_by_the_later_packet() {
        let t = CtTimeouts::default();
        let s = |secs: u64| secs * 1_000_000_000;
        let k = CtKey {
            saddr: Addr::new("10.0.0.1".parse().unwrap()),
            daddr: Addr::new("10.0.0.2".parse().unwrap()),
            sport: crate::maps::Be16::new(40000),
            dport: crate::maps::Be16::new(80),
            proto: 6,
            family: 4,
            ..CtKey::default()
        };
        let rk = pol_reply_key(&k);
        let entry = |last, tcp_state| PolCt {
            last_seen_ns: s(last),
            tcp_state,
            ..PolCt::default()
        };
        // Answered, the reply side active recently: both stay.
        let mut m: BTreeMap<CtKey, PolCt> =
            [(k, entry(0, CT_TCP_SYN)), (rk, entry(1000, CT_TCP_REPLY))].into();
        let now = s(1000) + u64::try_from(t.tcp_established.as_nanos()).unwrap() / 2;
        assert!(policy_expired(&m, &t, now).is_empty());
        // Both idle beyond the established timeout: both go.
        let later = s(1001) + u64::try_from(t.tcp_established.as_nanos()).unwrap();
        assert_eq!(policy_expired(&m, &t, later).len(), 2);
        // A SYN never answered: the short timeout.
        m.insert(rk, entry(0, 0));
        let syn_late = s(1) + u64::try_from(t.tcp_syn.as_nanos()).unwrap();
        assert_eq!(policy_expired(&m, &t, syn_late).len(), 2);
    }

    #[test]
    fn a_pass_is_due_once_its_interval_has_passed() {
        let s = Duration::from_secs;
        let mut schedule = GcSchedule::default();
        assert!(schedule.due(s(100), s(5)), "the first call runs one");
        schedule.ran(s(100));
        for early in [s(100), s(101), s(104)] {
            assert!(!schedule.due(early, s(5)), "{early:?}: within the interval");
        }
        assert!(
            schedule.due(s(104) + Duration::from_millis(500), s(5)),
            "a tenth early is on time"
        );
        assert!(schedule.due(s(105), s(5)));
        assert!(schedule.due(s(400), s(5)));
        assert!(
            schedule.due(s(99), s(5)),
            "a clock behind the last pass runs one"
        );
    }

    #[test]
    fn maintenance_interval_is_half_the_shortest_timeout_within_bounds() {
        let defaults = CtTimeouts::default();
        assert_eq!(
            maintenance_interval(&defaults),
            Duration::from_secs(5),
            "half of tcp_closing (10 s)"
        );
        let tiny = CtTimeouts {
            tcp_closing: Duration::from_millis(300),
            ..defaults
        };
        assert_eq!(maintenance_interval(&tiny), MIN_MAINTENANCE_INTERVAL);
        let long = CtTimeouts {
            tcp_syn: Duration::from_hours(1),
            tcp_established: Duration::from_hours(24),
            tcp_closing: Duration::from_hours(1),
            udp: Duration::from_hours(1),
            udp_stream: Duration::from_hours(1),
            ..defaults
        };
        assert_eq!(maintenance_interval(&long), MAX_MAINTENANCE_INTERVAL);
        let udp_short = CtTimeouts {
            udp: Duration::from_secs(7),
            ..long
        };
        assert_eq!(
            maintenance_interval(&udp_short),
            Duration::from_millis(3500)
        );
    }
}
