//! What the rules that drop or reject say about it: an NFLOG message with a prefix that names
//! the verdict, the reason and the service, rate-limited in the rule, and a counter per verdict
//! and reason.
//!
//! Every rule either flavour installs that drops or rejects is preceded by a rule with the
//! same matches that logs the packet to the NFLOG group of [`LogPlan::group`] (nft
//! `limit rate N/second burst N packets ... log prefix "..." group G`; iptables
//! `-m limit --limit N/sec --limit-burst N -j NFLOG --nflog-group G --nflog-prefix "..."`),
//! as Cilium's datapath sends a drop notification from the place that drops (`bpf/lib/drop.h`,
//! `send_drop_notify`) with the reason as a number. The limit is per rule (a token bucket of
//! `rate` packets a second, burst `rate`), so a flood to one frontend cannot flood the reader:
//! what it held back is not lost for the counters (the drop rule counts every packet, by
//! verdict and reason: an nftables named counter, an iptables comment [`IPT_COUNT_TAG`];
//! with or without logging), but an event cannot say how many packets of its own kind were
//! held back before it ([`dataplane_core::FlowEvent::suppressed`] stays 0; the total is
//! `Stats::other["events_suppressed"]`: the drop rules' count less the log rules', nftables'
//! named counter [`LOGGED_COUNTER`] or the NFLOG rules' own counters; absent with rate 0).
//! NetworkPolicy denials name their direction (`dp deny policy in|out`,
//! [`LogPrefix::policy_denial`]).
//!
//! The prefix ([`LogPrefix`]) is `dp <verdict> <reason>[ <namespace>/<name>]`, at most
//! [`PREFIX_MAX`] bytes (iptables' `--nflog-prefix` limit, 64 bytes with its NUL): verdict
//! `drop`, `reject` or `deny` (NetworkPolicy), the reason by its stable name
//! ([`DropReason::name`]), the service when the rule belongs to one and its name fits (else
//! the reader finds the service from the packet's destination).

use std::fmt;

use dataplane_core::{DropReason, EventVerdict, ObjectName, PolicyType};

/// The NFLOG group of the nftables flavour by default.
pub const NFLOG_GROUP_NFTABLES: u16 = 2000;
/// The NFLOG group of the iptables flavour by default (another than nftables', so both can
/// run in one network namespace, as the lab tests do).
pub const NFLOG_GROUP_IPTABLES: u16 = 2001;
/// Logged packets a second per rule by default (and the burst).
pub const DEFAULT_LOG_RATE: u32 = 20;
/// The longest prefix, in bytes: iptables refuses an `--nflog-prefix` of 64 bytes or more
/// (`NF_LOG_PREFIXLEN` with the NUL counts 64 in `xt_NFLOG`).
pub const PREFIX_MAX: usize = 63;
/// nftables: the named counter of the packets the log rules logged (after their limit).
pub const LOGGED_COUNTER: &str = "events-logged";

/// The verdict and reason combinations the rules use, with the name of their nftables
/// counter (`<verdict>-<reason>`).
pub const COUNTED: [(EventVerdict, DropReason); 7] = [
    (EventVerdict::Rejected, DropReason::NoBackend),
    (EventVerdict::Dropped, DropReason::NoBackend),
    (EventVerdict::Dropped, DropReason::SourceRange),
    (EventVerdict::Rejected, DropReason::Unallocated),
    (EventVerdict::Dropped, DropReason::Unallocated),
    (EventVerdict::PolicyDenied, DropReason::Policy),
    (EventVerdict::Dropped, DropReason::Spoofed),
];

/// How the drop rules log: to which NFLOG group, how many packets a second per rule.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LogPlan {
    /// The NFLOG group.
    pub group: u16,
    /// Packets a second per rule (and the burst); 0 turns logging off (the counters stay).
    pub rate: u32,
}

impl Default for LogPlan {
    fn default() -> Self {
        Self {
            group: NFLOG_GROUP_NFTABLES,
            rate: DEFAULT_LOG_RATE,
        }
    }
}

/// The word of a policy direction in a prefix.
fn direction_word(d: PolicyType) -> &'static str {
    match d {
        PolicyType::Ingress => "in",
        PolicyType::Egress => "out",
    }
}

/// The word of a verdict in a prefix.
fn verdict_word(v: EventVerdict) -> &'static str {
    match v {
        EventVerdict::Rejected => "reject",
        EventVerdict::PolicyDenied => "deny",
        // Only drops, rejects and denials are logged.
        _ => "drop",
    }
}

/// What one drop rule logs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogPrefix {
    /// Dropped, rejected or denied by policy.
    pub verdict: EventVerdict,
    /// Why.
    pub reason: DropReason,
    /// The service the rule belongs to, if any.
    pub service: Option<ObjectName>,
    /// NetworkPolicy denials: the direction denied (`in` or `out` in the prefix). Both run
    /// in the forward hook, so the reader needs it for the observation point: an ingress
    /// denial is at the server's side (`ToPod`, the output interface).
    pub policy_direction: Option<PolicyType>,
}

impl LogPrefix {
    /// A prefix without a service.
    pub fn new(verdict: EventVerdict, reason: DropReason) -> Self {
        Self {
            verdict,
            reason,
            service: None,
            policy_direction: None,
        }
    }

    /// A NetworkPolicy denial of `direction`: `dp deny policy in|out`.
    pub fn policy_denial(direction: PolicyType) -> Self {
        Self {
            policy_direction: Some(direction),
            ..Self::new(EventVerdict::PolicyDenied, DropReason::Policy)
        }
    }

    /// The same prefix for `service`.
    #[must_use]
    pub fn of(mut self, service: &ObjectName) -> Self {
        self.service = Some(service.clone());
        self
    }

    /// The name of the counter of this verdict and reason (nftables named counter).
    pub fn counter(&self) -> String {
        counter_name(self.verdict, self.reason)
    }

    /// The prefix text: `dp <verdict> <reason>[ <namespace>/<name>]` (a policy denial:
    /// `dp deny policy in|out`), the service left out when the whole would be longer than
    /// [`PREFIX_MAX`] (Kubernetes names are DNS labels: no spaces or quotes to escape).
    pub fn encode(&self) -> String {
        let base = format!("dp {} {}", verdict_word(self.verdict), self.reason.name());
        if let Some(d) = self.policy_direction {
            return format!("{base} {}", direction_word(d));
        }
        match &self.service {
            Some(s) if base.len() + 2 + s.namespace.len() + s.name.len() <= PREFIX_MAX => {
                format!("{base} {s}")
            }
            _ => base,
        }
    }

    /// Reads a prefix back (`None` for a prefix that is not ours).
    pub fn decode(text: &str) -> Option<Self> {
        let mut words = text.trim_end_matches('\0').split(' ');
        if words.next()? != "dp" {
            return None;
        }
        let verdict = match words.next()? {
            "drop" => EventVerdict::Dropped,
            "reject" => EventVerdict::Rejected,
            "deny" => EventVerdict::PolicyDenied,
            _ => return None,
        };
        let reason = words.next()?.parse::<DropReason>().ok()?;
        let mut policy_direction = None;
        let service = match words.next() {
            None => None,
            Some("in") if verdict == EventVerdict::PolicyDenied => {
                policy_direction = Some(PolicyType::Ingress);
                None
            }
            Some("out") if verdict == EventVerdict::PolicyDenied => {
                policy_direction = Some(PolicyType::Egress);
                None
            }
            Some(s) => {
                let (ns, name) = s.split_once('/')?;
                if ns.is_empty() || name.is_empty() {
                    return None;
                }
                Some(ObjectName::new(ns, name))
            }
        };
        if words.next().is_some() {
            return None;
        }
        Some(Self {
            verdict,
            reason,
            service,
            policy_direction,
        })
    }
}

impl fmt::Display for LogPrefix {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.encode())
    }
}

/// The nftables counter of a verdict and reason: `<verdict>-<reason>`.
pub fn counter_name(verdict: EventVerdict, reason: DropReason) -> String {
    format!("{}-{}", verdict_word(verdict), reason.name())
}

/// The verdict and reason of an nftables counter name ([`counter_name`]).
pub fn parse_counter_name(name: &str) -> Option<(EventVerdict, DropReason)> {
    COUNTED
        .into_iter()
        .find(|(v, r)| counter_name(*v, *r) == name)
}

/// nftables: the two rules that log and then drop or reject, for matches `cond` (may be
/// empty) and the verdict statement `verdict` (`drop`, `goto reject-service`...).
pub fn nft_rules(cond: &str, verdict: &str, prefix: &LogPrefix, log: &LogPlan) -> Vec<String> {
    let lead = if cond.is_empty() {
        String::new()
    } else {
        format!("{cond} ")
    };
    let mut out = Vec::with_capacity(2);
    if log.rate > 0 {
        out.push(format!(
            "{lead}limit rate {r}/second burst {r} packets counter name \"{LOGGED_COUNTER}\" log prefix \"{p}\" group {g}",
            r = log.rate,
            p = prefix.encode(),
            g = log.group,
        ));
    }
    out.push(format!(
        "{lead}counter name \"{}\" {verdict}",
        prefix.counter()
    ));
    out
}

/// The comment that tags an iptables rule that drops, rejects or marks for either, with its
/// verdict and reason: `dp-count:<verdict>-<reason>` (one word: `iptables-save` prints it
/// unquoted). `Dataplane::stats` counts drops by reason from the tagged rules' counters,
/// whether or not a log rule is in front of them.
pub const IPT_COUNT_TAG: &str = "dp-count:";

/// iptables: the NFLOG rule to put right before `rule` (same matches, its target replaced;
/// none when `log.rate` is 0), then `rule` tagged with its verdict and reason
/// ([`IPT_COUNT_TAG`]).
pub fn ipt_rules(rule: &str, prefix: &LogPrefix, log: &LogPlan) -> Vec<String> {
    let matches = ipt_matches(rule);
    let lead = if matches.is_empty() {
        String::new()
    } else {
        format!("{matches} ")
    };
    let tagged = format!(
        "{lead}-m comment --comment {IPT_COUNT_TAG}{} {}",
        prefix.counter(),
        &rule[matches.len()..].trim_start()
    );
    if log.rate == 0 {
        return vec![tagged];
    }
    vec![
        format!(
            "{lead}-m limit --limit {r}/sec --limit-burst {r} -j NFLOG --nflog-group {g} --nflog-prefix \"{p}\"",
            r = log.rate,
            g = log.group,
            p = prefix.encode(),
        ),
        tagged,
    ]
}

/// iptables: the verdict and reason a rule is tagged with ([`IPT_COUNT_TAG`]), as written or
/// as `iptables-save` prints it.
pub fn ipt_counted_of(rule: &str) -> Option<(EventVerdict, DropReason)> {
    let at = rule.find(IPT_COUNT_TAG)? + IPT_COUNT_TAG.len();
    let name = rule[at..].split([' ', '"']).next()?;
    parse_counter_name(name)
}

/// The matches of an iptables rule: everything before its target (`-j`/`-g`).
fn ipt_matches(rule: &str) -> &str {
    if rule.starts_with("-j ") || rule.starts_with("-g ") {
        return "";
    }
    let at = [" -j ", " -g "]
        .iter()
        .filter_map(|t| rule.find(t))
        .min()
        .unwrap_or(rule.len());
    &rule[..at]
}

/// iptables: the prefix of an NFLOG rule (as written or as `iptables-save` prints it).
pub fn ipt_prefix_of(rule: &str) -> Option<LogPrefix> {
    if !rule.contains("-j NFLOG") {
        return None;
    }
    let rest = &rule[rule.find("--nflog-prefix ")? + "--nflog-prefix ".len()..];
    let text = if let Some(quoted) = rest.strip_prefix('"') {
        &quoted[..quoted.find('"')?]
    } else {
        rest.split(' ').next()?
    };
    LogPrefix::decode(text)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefixes_round_trip() {
        let svc = ObjectName::new("default", "empty");
        for (v, r) in COUNTED {
            for p in [LogPrefix::new(v, r), LogPrefix::new(v, r).of(&svc)] {
                let text = p.encode();
                assert!(text.len() <= PREFIX_MAX, "{text}");
                assert_eq!(LogPrefix::decode(&text), Some(p.clone()), "{text}");
                // As the kernel hands it over, NUL-terminated.
                assert_eq!(LogPrefix::decode(&format!("{text}\0")), Some(p));
            }
        }
        assert_eq!(
            LogPrefix::new(EventVerdict::Rejected, DropReason::NoBackend)
                .of(&svc)
                .encode(),
            "dp reject no-backend default/empty"
        );
    }

    #[test]
    fn policy_denials_name_their_direction() {
        for (d, text) in [
            (PolicyType::Ingress, "dp deny policy in"),
            (PolicyType::Egress, "dp deny policy out"),
        ] {
            let p = LogPrefix::policy_denial(d);
            assert_eq!(p.encode(), text);
            assert_eq!(LogPrefix::decode(text), Some(p));
        }
        // Only denials have a direction.
        assert_eq!(LogPrefix::decode("dp drop spoofed in"), None);
    }

    #[test]
    fn a_name_too_long_is_left_out() {
        let long = ObjectName::new("a-namespace-with-a-long-name", "and-a-long-service-name");
        let p = LogPrefix::new(EventVerdict::Dropped, DropReason::SourceRange).of(&long);
        assert_eq!(p.encode(), "dp drop source-range");
        let back = LogPrefix::decode(&p.encode()).unwrap();
        assert_eq!(back.service, None);
        assert_eq!(back.reason, DropReason::SourceRange);
    }

    #[test]
    fn foreign_prefixes_are_not_ours() {
        for text in [
            "",
            "dp",
            "dp drop",
            "dp drop nonsense",
            "dp accept no-backend",
            "kube-proxy drop no-backend",
            "dp drop no-backend default",
            "dp drop no-backend default/x extra",
        ] {
            assert_eq!(LogPrefix::decode(text), None, "{text}");
        }
    }

    #[test]
    fn counter_names_round_trip() {
        for (v, r) in COUNTED {
            assert_eq!(parse_counter_name(&counter_name(v, r)), Some((v, r)));
        }
        assert_eq!(parse_counter_name("events-logged"), None);
    }

    #[test]
    fn iptables_log_rules_copy_the_matches() {
        let p = LogPrefix::new(EventVerdict::Dropped, DropReason::SourceRange)
            .of(&ObjectName::new("prod", "shop"));
        let log = LogPlan { group: 7, rate: 5 };
        let rules = ipt_rules("-s 10.0.0.0/8 -g DP-MARK-DROP", &p, &log);
        assert_eq!(
            rules,
            [
                "-s 10.0.0.0/8 -m limit --limit 5/sec --limit-burst 5 -j NFLOG --nflog-group 7 --nflog-prefix \"dp drop source-range prod/shop\"",
                "-s 10.0.0.0/8 -m comment --comment dp-count:drop-source-range -g DP-MARK-DROP"
            ]
        );
        assert_eq!(ipt_prefix_of(&rules[0]), Some(p.clone()));
        assert_eq!(ipt_prefix_of(&rules[1]), None);
        assert_eq!(ipt_counted_of(&rules[0]), None);
        assert_eq!(
            ipt_counted_of(&rules[1]),
            Some((EventVerdict::Dropped, DropReason::SourceRange))
        );
        let bare = ipt_rules("-g DP-MARK-DROP", &p, &log);
        assert!(bare[0].starts_with("-m limit"), "{}", bare[0]);
        // Without logging the drop rule is still tagged: drops are counted by reason.
        let quiet = ipt_rules("-j DROP", &p, &LogPlan { group: 7, rate: 0 });
        assert_eq!(
            quiet,
            ["-m comment --comment dp-count:drop-source-range -j DROP"]
        );
        assert_eq!(
            ipt_counted_of(&quiet[0]),
            Some((EventVerdict::Dropped, DropReason::SourceRange))
        );
    }

    #[test]
    fn nft_log_rules_count_both_ways() {
        let p = LogPrefix::new(EventVerdict::Rejected, DropReason::NoBackend)
            .of(&ObjectName::new("default", "empty"));
        let rules = nft_rules("", "goto reject-service", &p, &LogPlan::default());
        assert_eq!(
            rules,
            [
                "limit rate 20/second burst 20 packets counter name \"events-logged\" log prefix \"dp reject no-backend default/empty\" group 2000",
                "counter name \"reject-no-backend\" goto reject-service"
            ]
        );
    }
}
