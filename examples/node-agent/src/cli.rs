//! The command line (kube-proxy's flag names where one exists) and what it configures: the
//! store's [`Settings`], the dataplane's [`Options`] and the loop's [`Periods`].

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::Parser;
use dataplane::ebpf::EventLimit;
use dataplane::ipnetwork::IpNetwork;
use dataplane::netfilter::config::MAX_NFLOG_RATE;
use dataplane::{Masquerade, Node, Options, Selection};
use dataplane_kube::{L2Announcements, Settings};

use crate::l2::{L2Config, ServiceSelector};
use crate::lease::LeaseTiming;
use crate::runner::Periods;

/// `dataplane-agent`: keeps this node's dataplane in sync with Kubernetes (a kube-proxy
/// replacement). Runs in the network namespace it programs.
#[derive(Debug, Clone, Parser)]
#[command(name = "dataplane-agent", version, about)]
#[allow(clippy::struct_field_names)]
pub struct Args {
    /// Read the objects from this directory of Kubernetes manifests (*.yaml, *.yml, *.json,
    /// multi-document), watched for changes, instead of the API server.
    #[arg(long, value_name = "DIR", conflicts_with = "kubeconfig")]
    pub manifests: Option<PathBuf>,
    /// The kubeconfig file of the API server; without it (and without --manifests) the
    /// in-cluster configuration.
    #[arg(long, value_name = "PATH")]
    pub kubeconfig: Option<PathBuf>,
    /// This node's name, as in its Node object (default: the host name, lower-cased).
    #[arg(long, value_name = "NAME")]
    pub hostname_override: Option<String>,
    /// The dataplane: auto (eBPF when it can run here, else nftables, else iptables), ebpf,
    /// nft (nftables) or iptables.
    #[arg(long, default_value = "auto", value_parser = parse_selection)]
    pub backend: Selection,
    /// The cluster's pod CIDRs, comma-separated (one per family).
    #[arg(long, value_name = "CIDR[,CIDR]", value_delimiter = ',')]
    pub cluster_cidr: Vec<IpNetwork>,
    /// The service (ClusterIP) CIDRs, comma-separated (one per family).
    #[arg(long, value_name = "CIDR[,CIDR]", value_delimiter = ',')]
    pub service_cidr: Vec<IpNetwork>,
    /// The NodePort range, `START-END`.
    #[arg(long, default_value = "30000-32767", value_parser = parse_port_range)]
    pub nodeport_range: (u16, u16),
    /// The node's uplink interface (towards the other nodes and the outside).
    #[arg(long, default_value = dataplane::DEFAULT_UPLINK, value_name = "IFACE")]
    pub uplink: String,
    /// Masquerade every connection to a service to the node's address (kube-proxy's
    /// --masquerade-all).
    #[arg(long)]
    pub masquerade_all: bool,
    /// The shortest time between two syncs: a burst of changes is applied once.
    #[arg(long, default_value = "1s", value_parser = parse_duration)]
    pub min_sync_period: Duration,
    /// The longest time between two syncs (a sync after this long applies the changes, if
    /// any). Greater than 0 (as kube-proxy requires).
    #[arg(long, default_value = "30s", value_parser = parse_period)]
    pub sync_period: Duration,
    /// The longest time between two full syncs, which apply the whole state again and so
    /// repair what changed behind the agent's back (kube-proxy's `FullSyncPeriod`, an hour,
    /// which it has no flag for). At least --sync-period.
    #[arg(long, default_value = "1h", value_parser = parse_period)]
    pub full_sync_period: Duration,
    /// After a failed sync, the next one (full) comes after this long at the latest (at least
    /// --min-sync-period).
    #[arg(long, default_value = "5s", value_parser = parse_duration)]
    pub retry_interval: Duration,
    /// Where /healthz and /livez are served (empty: not at all).
    #[arg(long, default_value = "0.0.0.0:10256", value_parser = parse_bind)]
    pub healthz_bind_address: BindAddress,
    /// Where /metrics is served (empty: not at all).
    #[arg(long, default_value = "127.0.0.1:10249", value_parser = parse_bind)]
    pub metrics_bind_address: BindAddress,
    /// The bpffs directory of the eBPF dataplane's pinned maps and links.
    #[arg(long, default_value = "/sys/fs/bpf/dataplane", value_name = "DIR")]
    pub bpf_pin_dir: PathBuf,
    /// The nftables table of the nftables dataplane.
    #[arg(long, default_value = "dataplane", value_name = "NAME")]
    pub nft_table: String,
    /// The chain-name prefix of the iptables dataplane.
    #[arg(long, default_value = "DP", value_name = "PREFIX")]
    pub iptables_prefix: String,
    /// Handle only the Services labelled `service.kubernetes.io/service-proxy-name: NAME`
    /// (default: only the unlabelled ones, like kube-proxy).
    #[arg(long, value_name = "NAME")]
    pub proxy_name: Option<String>,
    /// Write the dataplane's flow events (drops and rejects; new connections with
    /// `--flow-log-new-connections`) as JSON lines to PATH (appended to) or to standard
    /// output (`-`).
    #[arg(long, value_name = "PATH|-")]
    pub flow_log: Option<crate::flowlog::Output>,
    /// With `--flow-log`: every new connection too, not only drops and rejects (costs a little
    /// per new connection).
    #[arg(long, requires = "flow_log")]
    pub flow_log_new_connections: bool,
    /// Drop and reject events the dataplane writes per second at most (the packets are
    /// dropped all the same and counted; only the events are limited). eBPF: per CPU and drop
    /// reason (default 1000, burst 1000); 0: no limit (Cilium's
    /// --bpf-events-default-rate-limit). nftables/iptables: per drop or reject rule, the burst
    /// being the rate (default 20), at most 10000 (iptables' limit match); 0 logs that most.
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(0..=i64::from(EventLimit::MAX_RATE)))]
    pub event_drop_rate: Option<u32>,
    /// With --event-drop-rate: the most drop events written at once after a quiet time (eBPF
    /// only; default: the rate). 0 only with a rate of 0.
    #[arg(long, value_name = "N", requires = "event_drop_rate")]
    pub event_drop_burst: Option<u32>,
    /// Announce Services' LoadBalancer IPs and ExternalIPs on the uplink's L2 segment
    /// (answer ARP and neighbour solicitations for them), one node per Service: over the API
    /// server the node holding the Service's Lease (`dataplane-l2announce-<namespace>-<name>`
    /// in --l2-lease-namespace); over --manifests the node the Service's annotation
    /// `dataplane.io/l2-announce-node` names. Needs a dataplane that can announce.
    #[arg(long)]
    pub l2_announcements: bool,
    /// How long a Service's Lease holds without renewal (whole seconds).
    #[arg(long, default_value = "15s", value_parser = parse_period, requires = "l2_announcements", conflicts_with = "manifests")]
    pub l2_lease_duration: Duration,
    /// How long the holder keeps announcing when it cannot renew its Lease (shorter than
    /// --l2-lease-duration).
    #[arg(long, default_value = "5s", value_parser = parse_period, requires = "l2_announcements", conflicts_with = "manifests")]
    pub l2_lease_renew_deadline: Duration,
    /// How often a node tries to acquire or renew a Lease.
    #[arg(long, default_value = "2s", value_parser = parse_period, requires = "l2_announcements", conflicts_with = "manifests")]
    pub l2_lease_retry_period: Duration,
    /// The namespace of the Leases.
    #[arg(
        long,
        default_value = "kube-system",
        value_name = "NAMESPACE",
        requires = "l2_announcements",
        conflicts_with = "manifests"
    )]
    pub l2_lease_namespace: String,
    /// Announce only the Services this label selector selects (`kubectl get -l` syntax:
    /// `key=value`, `key!=value`, `key`, `!key`, `key in (a,b)`, `key notin (a,b)`,
    /// comma-separated); default: every Service with an address to announce.
    #[arg(
        long,
        value_name = "SELECTOR",
        requires = "l2_announcements",
        conflicts_with = "manifests"
    )]
    pub l2_service_selector: Option<ServiceSelector>,
    /// Remove everything the agent installed (eBPF pins and links, the nftables table, the
    /// iptables chains) and exit.
    #[arg(long)]
    pub cleanup: bool,
}

impl Args {
    /// This node's name: `--hostname-override`, else the host name (lower-cased, as
    /// kube-proxy does).
    pub fn node_name(&self) -> anyhow::Result<String> {
        if let Some(name) = &self.hostname_override {
            return Ok(name.trim().to_lowercase());
        }
        // The UTS namespace's name, which is what `hostname` prints.
        let name = std::fs::read_to_string("/proc/sys/kernel/hostname")?;
        Ok(name.trim().to_lowercase())
    }

    /// The store's settings: the node template from the flags (its name, addresses and pod
    /// CIDRs come from the Node object).
    pub fn settings(&self) -> anyhow::Result<Settings> {
        let node_name = self.node_name()?;
        let node = Node::new(node_name.clone(), [])
            .with_cluster_cidrs(self.cluster_cidr.iter().copied())
            .with_service_cidrs(self.service_cidr.iter().copied())
            .with_node_port_range(self.nodeport_range.0, self.nodeport_range.1)
            .with_uplink(self.uplink.clone())
            .with_masquerade(Masquerade {
                all_services: self.masquerade_all,
                ..Masquerade::default()
            });
        Ok(Settings {
            node_name,
            node,
            proxy_name: self.proxy_name.clone(),
        })
    }

    /// The dataplane options: the current network namespace, the names from the flags, the
    /// drop events' limits, and eBPF attachments kept when the agent exits (traffic keeps
    /// flowing through a restart).
    ///
    /// # Errors
    /// A drop-event burst the eBPF programs cannot apply (one of 0 with a rate, or one without
    /// a rate of 0), naming the flags.
    pub fn options(&self) -> anyhow::Result<Options> {
        let mut options = Options::default();
        options.ebpf.pin_dir.clone_from(&self.bpf_pin_dir);
        options.ebpf.keep_attachments_on_drop = true;
        if self.l2_mode() == L2Announcements::Elected {
            options.ebpf.l2_liveness = self.l2_liveness(options.ebpf.l2_liveness);
        }
        options.nftables = options.nftables.with_name(&self.nft_table);
        options.iptables = options.iptables.with_name(&self.iptables_prefix);
        if let Some(drops) = self.event_drop_limit()? {
            options.ebpf.events.drops = drops;
            // Netfilter's limit is one number per rule (rate and burst), and has a ceiling:
            // "no limit" is the most it can log.
            let nflog_rate = match drops.rate {
                0 => MAX_NFLOG_RATE,
                rate => rate.min(MAX_NFLOG_RATE),
            };
            options.nftables.nflog_rate = nflog_rate;
            options.iptables.nflog_rate = nflog_rate;
        }
        Ok(options)
    }

    /// The eBPF responder's liveness window with Lease elections: at most `default`, the
    /// renew deadline, and the lease duration less a retry period. A killed agent leaves its
    /// programs attached, and they answer for its Services until the liveness it last wrote
    /// (at the latest when it died) lapses; another node may take a Lease over a lease
    /// duration after the last renewal it saw (at the earliest a retry period before the
    /// death). Within both bounds the dead node is quiet before the new holder announces,
    /// as a live holder that cannot renew is at its renew deadline: never two answers.
    fn l2_liveness(&self, default: Duration) -> Duration {
        default.min(self.l2_lease_renew_deadline).min(
            self.l2_lease_duration
                .saturating_sub(self.l2_lease_retry_period),
        )
    }

    /// `--event-drop-rate` and `--event-drop-burst` as the eBPF dataplane's limit (the burst
    /// defaults to the rate), or `None` for the defaults.
    fn event_drop_limit(&self) -> anyhow::Result<Option<EventLimit>> {
        let Some(rate) = self.event_drop_rate else {
            return Ok(None);
        };
        let burst = self.event_drop_burst.unwrap_or(rate);
        if (rate == 0) != (burst == 0) {
            anyhow::bail!(
                "--event-drop-rate {rate} --event-drop-burst {burst}: a rate needs a burst of at \
                 least 1, and a rate of 0 (no limit) a burst of 0"
            );
        }
        Ok(Some(EventLimit::per_second(rate, burst)))
    }

    /// Who decides the Services this node announces: off without `--l2-announcements`; with
    /// it, over `--manifests` the Services' annotation, over the API server the Lease
    /// election.
    pub fn l2_mode(&self) -> L2Announcements {
        match (self.l2_announcements, self.manifests.is_some()) {
            (false, _) => L2Announcements::Off,
            (true, true) => L2Announcements::Annotated,
            (true, false) => L2Announcements::Elected,
        }
    }

    /// The L2 announcements' election (`None`: off, or over --manifests, where the annotation
    /// decides and nothing is elected).
    ///
    /// # Errors
    /// Lease timings that cannot work (the renew deadline not shorter than the duration,
    /// ...: [`LeaseTiming::validate`]) or a lease namespace that is no namespace name,
    /// naming the flag.
    pub fn l2_config(&self) -> anyhow::Result<Option<L2Config>> {
        if !self.l2_announcements || self.manifests.is_some() {
            return Ok(None);
        }
        let timing = LeaseTiming {
            duration: self.l2_lease_duration,
            renew_deadline: self.l2_lease_renew_deadline,
            retry_period: self.l2_lease_retry_period,
        };
        timing.validate().map_err(anyhow::Error::msg)?;
        let ns = &self.l2_lease_namespace;
        let label = !ns.is_empty()
            && ns.len() <= 63
            && ns
                .chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
            && !ns.starts_with('-')
            && !ns.ends_with('-');
        if !label {
            anyhow::bail!("--l2-lease-namespace {ns:?}: not a namespace name (a DNS-1123 label)");
        }
        Ok(Some(L2Config {
            timing,
            namespace: ns.clone(),
            selector: self.l2_service_selector.clone(),
        }))
    }

    /// The reconcile loop's periods. The sync period is at least the minimum one (kube-proxy
    /// refuses the opposite); the retry interval too, and at least 10 ms: a zero one would
    /// retry a failing sync in a busy loop.
    pub fn periods(&self) -> Periods {
        let sync = self.sync_period.max(self.min_sync_period);
        Periods {
            min_sync: self.min_sync_period,
            sync,
            full_sync: self.full_sync_period.max(sync),
            retry: self
                .retry_interval
                .max(self.min_sync_period)
                .max(Duration::from_millis(10)),
        }
    }
}

fn parse_selection(s: &str) -> Result<Selection, String> {
    s.parse().map_err(|e: dataplane::UnknownKind| e.to_string())
}

/// A server's `address:port`, or none (an empty flag value turns the server off).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BindAddress(pub Option<SocketAddr>);

fn parse_bind(s: &str) -> Result<BindAddress, String> {
    if s.is_empty() {
        return Ok(BindAddress(None));
    }
    s.parse()
        .map(|a| BindAddress(Some(a)))
        .map_err(|e| format!("{s:?} is no address:port: {e}"))
}

/// `START-END`, inclusive, START <= END.
pub fn parse_port_range(s: &str) -> Result<(u16, u16), String> {
    let (start, end) = s
        .split_once('-')
        .ok_or_else(|| format!("{s:?} is no port range: expected START-END"))?;
    let port = |p: &str| {
        p.trim()
            .parse::<u16>()
            .map_err(|e| format!("{p:?} in {s:?} is no port: {e}"))
    };
    let (start, end) = (port(start)?, port(end)?);
    if start > end || start == 0 {
        return Err(format!("{s:?}: the range is empty or starts at 0"));
    }
    Ok((start, end))
}

/// The longest period a duration flag takes: a year. Far beyond any useful sync period, and
/// far from where `Instant + Duration` overflows (which panics).
pub const MAX_DURATION: Duration = Duration::from_hours(365 * 24);

/// Why a duration flag's value is refused (clap prints it after the flag's name).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DurationError {
    /// Nothing given.
    Empty,
    /// Something other than a number where one was expected.
    Number {
        /// The whole value.
        value: String,
        /// Where the number was expected.
        at: String,
    },
    /// A number without a unit.
    NoUnit {
        /// The whole value.
        value: String,
    },
    /// A unit other than `h`, `m`, `s`, `ms`, `us`, `ns`.
    Unit {
        /// The whole value.
        value: String,
        /// The unit.
        unit: String,
    },
    /// Longer than [`MAX_DURATION`] (or than any `Duration`).
    TooLong {
        /// The whole value.
        value: String,
    },
    /// Zero where the flag needs a positive period.
    Zero,
}

impl std::fmt::Display for DurationError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            DurationError::Empty => f.write_str("an empty duration"),
            DurationError::Number { value, at } => {
                write!(f, "{value:?}: expected a number at {at:?}")
            }
            DurationError::NoUnit { value } => {
                write!(
                    f,
                    "{value:?}: a number without a unit (h, m, s, ms, us, ns)"
                )
            }
            DurationError::Unit { value, unit } => {
                write!(f, "{value:?}: unknown unit {unit:?} (h, m, s, ms, us, ns)")
            }
            DurationError::TooLong { value } => write!(
                f,
                "{value:?} is too long: at most {}h",
                MAX_DURATION.as_secs() / 3600
            ),
            DurationError::Zero => f.write_str("must be greater than 0"),
        }
    }
}

impl std::error::Error for DurationError {}

/// A duration as kube-proxy's flags write it: a sequence of number+unit, units `h`, `m`,
/// `s`, `ms`, `us`, `ns` (`1s`, `500ms`, `2m`, `1m30s`, `1.5s`); a bare `0` is zero. At most
/// [`MAX_DURATION`]; the sum is checked (a long value is an error, not a panic).
pub fn parse_duration(s: &str) -> Result<Duration, DurationError> {
    let text = s.trim();
    if text == "0" {
        return Ok(Duration::ZERO);
    }
    if text.is_empty() {
        return Err(DurationError::Empty);
    }
    let too_long = || DurationError::TooLong {
        value: s.to_owned(),
    };
    let mut total = Duration::ZERO;
    let mut rest = text;
    while !rest.is_empty() {
        let number_len = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .ok_or_else(|| DurationError::NoUnit {
                value: s.to_owned(),
            })?;
        let number: f64 = rest[..number_len]
            .parse()
            .map_err(|_| DurationError::Number {
                value: s.to_owned(),
                at: rest.to_owned(),
            })?;
        rest = &rest[number_len..];
        let unit_len = rest
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(rest.len());
        let seconds = match &rest[..unit_len] {
            "h" => 3600.0,
            "m" => 60.0,
            "s" => 1.0,
            "ms" => 1e-3,
            "us" | "µs" => 1e-6,
            "ns" => 1e-9,
            unit => {
                return Err(DurationError::Unit {
                    value: s.to_owned(),
                    unit: unit.to_owned(),
                })
            }
        };
        rest = &rest[unit_len..];
        // Out of range for a Duration (or infinite): too long.
        let part = Duration::try_from_secs_f64(number * seconds).map_err(|_| too_long())?;
        total = total.checked_add(part).ok_or_else(too_long)?;
    }
    if total > MAX_DURATION {
        return Err(too_long());
    }
    Ok(total)
}

/// [`parse_duration`] for a period that must be positive (`--sync-period`: kube-proxy
/// refuses 0, which would make every loop iteration a full sync).
pub fn parse_period(s: &str) -> Result<Duration, DurationError> {
    match parse_duration(s)? {
        Duration::ZERO => Err(DurationError::Zero),
        period => Ok(period),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_as_kube_proxy_writes_them() {
        assert_eq!(parse_duration("1s"), Ok(Duration::from_secs(1)));
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("2m"), Ok(Duration::from_mins(2)));
        assert_eq!(parse_duration("1m30s"), Ok(Duration::from_secs(90)));
        assert_eq!(parse_duration("1.5s"), Ok(Duration::from_millis(1500)));
        assert_eq!(parse_duration("0"), Ok(Duration::ZERO));
        assert_eq!(parse_duration("8760h"), Ok(MAX_DURATION));
        assert!(parse_duration("5").is_err());
        assert!(parse_duration("5 parsecs").is_err());
        assert!(parse_duration("s").is_err());
        assert!(parse_duration("").is_err());
    }

    #[test]
    fn long_durations_are_errors_not_panics() {
        for long in [
            "8761h",
            "99999999999999999999h",
            "0.5h8760h",
            // Each part fits, the sum does not fit a Duration.
            "18446744073709551615s18446744073709551615s",
        ] {
            assert!(
                matches!(parse_duration(long), Err(DurationError::TooLong { .. })),
                "{long}: {:?}",
                parse_duration(long)
            );
        }
        assert!(matches!(
            parse_duration("1x"),
            Err(DurationError::Unit { .. })
        ));
    }

    #[test]
    fn the_sync_period_must_be_positive_and_errors_name_the_flag() {
        let parse = |flag: &str, value: &str| {
            Args::try_parse_from(["dataplane-agent", "--manifests", "/m", flag, value])
                .map(|a| a.periods())
                .map_err(|e| e.to_string())
        };
        let zero = parse("--sync-period", "0").unwrap_err();
        assert!(zero.contains("--sync-period"), "{zero}");
        assert!(zero.contains("greater than 0"), "{zero}");
        let long = parse("--min-sync-period", "100000h").unwrap_err();
        assert!(long.contains("--min-sync-period"), "{long}");
        assert!(long.contains("too long"), "{long}");
        // The minimum may be 0 (kube-proxy allows it); the longest periods are fine.
        let p = parse("--min-sync-period", "0").unwrap();
        assert_eq!(p.min_sync, Duration::ZERO);
        let p = parse("--sync-period", "8760h").unwrap();
        assert_eq!(p.sync, MAX_DURATION);
        // Far from an Instant overflow: a runner adds them to now.
        let now = std::time::Instant::now();
        assert!(now.checked_add(p.sync + p.retry + p.min_sync).is_some());
    }

    #[test]
    fn port_ranges() {
        assert_eq!(parse_port_range("30000-32767"), Ok((30000, 32767)));
        assert!(parse_port_range("32767-30000").is_err());
        assert!(parse_port_range("30000").is_err());
        assert!(parse_port_range("0-10").is_err());
    }

    #[test]
    fn the_contract_command_line_parses_with_its_defaults() {
        let args = Args::try_parse_from([
            "dataplane-agent",
            "--manifests",
            "/m",
            "--hostname-override",
            "Node-0",
            "--cluster-cidr",
            "10.244.0.0/16,fd00:10:244::/56",
            "--service-cidr",
            "10.96.0.0/12",
            "--backend",
            "nft",
            "--masquerade-all",
        ])
        .unwrap();
        assert_eq!(args.node_name().unwrap(), "node-0");
        assert_eq!(args.cluster_cidr.len(), 2);
        assert_eq!(
            args.backend,
            Selection::Only(dataplane::DataplaneKind::Nftables)
        );
        assert_eq!(args.min_sync_period, Duration::from_secs(1));
        assert_eq!(args.sync_period, Duration::from_secs(30));
        assert_eq!(args.retry_interval, Duration::from_secs(5));
        assert_eq!(
            args.healthz_bind_address.0,
            Some("0.0.0.0:10256".parse().unwrap())
        );
        assert_eq!(
            args.metrics_bind_address.0,
            Some("127.0.0.1:10249".parse().unwrap())
        );
        let settings = args.settings().unwrap();
        assert_eq!(settings.node.node_port_range.start, 30000);
        assert!(settings.node.masquerade.all_services);
        assert_eq!(settings.node.interfaces.uplink, "eth0");
        let options = args.options().unwrap();
        assert!(options.ebpf.keep_attachments_on_drop);
        // Without the flags, each dataplane's own defaults.
        assert_eq!(options.ebpf.events, dataplane::ebpf::EventLimits::default());
        assert_eq!(
            options.nftables.nflog_rate,
            dataplane::netfilter::eventlog::DEFAULT_LOG_RATE
        );
        assert_eq!(options.nftables.name, "dataplane");
        assert_eq!(options.iptables.name, "DP");
        assert!(Args::try_parse_from([
            "dataplane-agent",
            "--manifests",
            "/m",
            "--kubeconfig",
            "/k"
        ])
        .is_err());
    }

    /// With Lease elections the eBPF responder of a killed agent goes quiet before another
    /// node can take its Leases over: its liveness window is kept within the renew deadline
    /// and the lease duration less a retry period.
    #[test]
    fn l2_liveness_stays_inside_the_lease() {
        let liveness = |flags: &[&str]| {
            let mut argv = vec!["dataplane-agent"];
            argv.extend_from_slice(flags);
            Args::try_parse_from(argv)
                .unwrap()
                .options()
                .unwrap()
                .ebpf
                .l2_liveness
        };
        let default = dataplane::ebpf::DEFAULT_L2_LIVENESS;
        assert_eq!(liveness(&["--kubeconfig", "/k"]), default);
        // The defaults (15 s, 5 s, 2 s) leave it alone.
        assert_eq!(
            liveness(&["--kubeconfig", "/k", "--l2-announcements"]),
            default
        );
        let short = [
            "--kubeconfig",
            "/k",
            "--l2-announcements",
            "--l2-lease-duration=3s",
            "--l2-lease-renew-deadline=2s",
            "--l2-lease-retry-period=500ms",
        ];
        assert_eq!(liveness(&short), Duration::from_secs(2));
        let late_deadline = [
            "--kubeconfig",
            "/k",
            "--l2-announcements",
            "--l2-lease-duration=2s",
            "--l2-lease-renew-deadline=1900ms",
            "--l2-lease-retry-period=500ms",
        ];
        assert_eq!(liveness(&late_deadline), Duration::from_millis(1500));
        // Over manifests nothing is elected: the default.
        assert_eq!(
            liveness(&["--manifests", "/m", "--l2-announcements"]),
            default
        );
    }

    #[test]
    fn l2_flags_and_their_defaults() {
        let parse = |flags: &[&str]| {
            let mut argv = vec!["dataplane-agent", "--kubeconfig", "/k"];
            argv.extend_from_slice(flags);
            Args::try_parse_from(argv).map_err(|e| e.to_string())
        };
        // Off by default.
        assert_eq!(parse(&[]).unwrap().l2_config().unwrap(), None);
        assert_eq!(parse(&[]).unwrap().l2_mode(), L2Announcements::Off);
        assert_eq!(
            parse(&["--l2-announcements"]).unwrap().l2_mode(),
            L2Announcements::Elected
        );
        let config = parse(&["--l2-announcements"])
            .unwrap()
            .l2_config()
            .unwrap()
            .expect("on");
        assert_eq!(config.timing, LeaseTiming::default());
        assert_eq!(
            (
                config.timing.duration,
                config.timing.renew_deadline,
                config.timing.retry_period
            ),
            (
                Duration::from_secs(15),
                Duration::from_secs(5),
                Duration::from_secs(2)
            )
        );
        assert_eq!(config.namespace, "kube-system");
        assert_eq!(config.selector, None);
        let config = parse(&[
            "--l2-announcements",
            "--l2-lease-duration=30s",
            "--l2-lease-renew-deadline=10s",
            "--l2-lease-retry-period=1s",
            "--l2-lease-namespace=dataplane",
            "--l2-service-selector=l2 in (yes),!legacy",
        ])
        .unwrap()
        .l2_config()
        .unwrap()
        .unwrap();
        assert_eq!(config.timing.duration, Duration::from_secs(30));
        assert_eq!(config.namespace, "dataplane");
        assert_eq!(
            config.selector.map(|s| s.to_string()).as_deref(),
            Some("l2 in (yes),!legacy")
        );
        // Over manifests the annotation decides: nothing to elect.
        let args =
            Args::try_parse_from(["dataplane-agent", "--manifests", "/m", "--l2-announcements"])
                .unwrap();
        assert_eq!(args.l2_config().unwrap(), None);
        assert_eq!(args.l2_mode(), L2Announcements::Annotated);
    }

    #[test]
    fn l2_flags_that_cannot_work_are_refused_naming_the_flag() {
        let parse = |flags: &[&str]| {
            let mut argv = vec!["dataplane-agent", "--kubeconfig", "/k"];
            argv.extend_from_slice(flags);
            Args::try_parse_from(argv).map_err(|e| e.to_string())
        };
        for (flags, says) in [
            (&["--l2-lease-duration=20s"][..], "--l2-announcements"),
            (&["--l2-service-selector=a=b"][..], "--l2-announcements"),
            (
                &["--l2-announcements", "--l2-service-selector=a b c"][..],
                "--l2-service-selector",
            ),
            (
                &["--l2-announcements", "--l2-lease-retry-period=0"][..],
                "--l2-lease-retry-period",
            ),
        ] {
            let e = parse(flags).unwrap_err();
            assert!(e.contains(says), "{flags:?}: {e}");
        }
        for (flags, says) in [
            (
                &["--l2-announcements", "--l2-lease-renew-deadline=15s"][..],
                "--l2-lease-renew-deadline 15s must be shorter than --l2-lease-duration 15s",
            ),
            (
                &[
                    "--l2-announcements",
                    "--l2-lease-duration=4500ms",
                    "--l2-lease-renew-deadline=3s",
                    "--l2-lease-retry-period=1s",
                ][..],
                "whole number of seconds",
            ),
            (
                &["--l2-announcements", "--l2-lease-retry-period=5s"][..],
                "--l2-lease-retry-period",
            ),
            (
                &["--l2-announcements", "--l2-lease-namespace=Kube_System"][..],
                "--l2-lease-namespace",
            ),
        ] {
            let e = parse(flags).unwrap().l2_config().unwrap_err().to_string();
            assert!(e.contains(says), "{flags:?}: {e}");
        }
        let e = Args::try_parse_from([
            "dataplane-agent",
            "--manifests",
            "/m",
            "--l2-announcements",
            "--l2-lease-namespace=x",
        ])
        .unwrap_err()
        .to_string();
        assert!(e.contains("--manifests"), "{e}");
    }

    #[test]
    fn event_drop_limits() {
        let parse = |flags: &[&str]| {
            let mut argv = vec!["dataplane-agent", "--manifests", "/m"];
            argv.extend_from_slice(flags);
            Args::try_parse_from(argv)
                .map_err(|e| e.to_string())
                .and_then(|a| a.options().map_err(|e| e.to_string()))
        };
        let limits = |o: &Options| {
            (
                o.ebpf.events.drops,
                o.nftables.nflog_rate,
                o.iptables.nflog_rate,
            )
        };
        // The burst defaults to the rate.
        let o = parse(&["--event-drop-rate", "50"]).unwrap();
        assert_eq!(limits(&o), (EventLimit::per_second(50, 50), 50, 50));
        let o = parse(&["--event-drop-rate", "50", "--event-drop-burst", "200"]).unwrap();
        assert_eq!(limits(&o), (EventLimit::per_second(50, 200), 50, 50));
        // New connections and policy verdicts keep their defaults.
        assert_eq!(
            o.ebpf.events.new_connections,
            dataplane::ebpf::EventLimits::default().new_connections
        );
        // No limit: eBPF unlimited, netfilter as many as it can log; above that, its ceiling.
        let o = parse(&["--event-drop-rate", "0"]).unwrap();
        assert_eq!(
            limits(&o),
            (EventLimit::UNLIMITED, MAX_NFLOG_RATE, MAX_NFLOG_RATE)
        );
        let o = parse(&["--event-drop-rate", "1000000000"]).unwrap();
        assert_eq!(
            o.ebpf.events.drops,
            EventLimit::per_second(1_000_000_000, 1_000_000_000)
        );
        assert_eq!(o.nftables.nflog_rate, MAX_NFLOG_RATE);
        assert_eq!(o.ebpf.events.validate(), Ok(()));
        // Refused, naming the flag.
        for (flags, flag) in [
            (
                &["--event-drop-rate", "1000000001"][..],
                "--event-drop-rate",
            ),
            (&["--event-drop-rate=-1"][..], "--event-drop-rate"),
            (&["--event-drop-rate", "lots"][..], "--event-drop-rate"),
            (&["--event-drop-burst", "10"][..], "--event-drop-rate"),
            (
                &["--event-drop-rate", "10", "--event-drop-burst", "0"][..],
                "--event-drop-burst",
            ),
            (
                &["--event-drop-rate", "0", "--event-drop-burst", "10"][..],
                "--event-drop-burst",
            ),
        ] {
            let e = parse(flags).unwrap_err();
            assert!(e.contains(flag), "{flags:?}: {e}");
        }
    }
}
