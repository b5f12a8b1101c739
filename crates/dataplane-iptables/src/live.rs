//! [`LiveNetfilter`]: what a netfilter dataplane programmed, read back from the kernel by a
//! process that does not own it (`dpctl status` beside a running agent).
//!
//! Read-only: it runs `nft list …` (table and counters) or `iptables-save -c` /
//! `ip6tables-save -c`, reads `/proc/net/nf_conntrack`, and opens its own NFLOG and
//! conntrack-event sockets; it never adds, flushes or deletes anything. What it names comes
//! from the ruleset itself: the service of a frontend from its chain's name (nftables,
//! `svc-v4-<ns>/<name>/<proto>/<port>`) or its rule's comment (iptables,
//! `<ns>/<name>/<proto>/<port> cluster IP`), isolated pods from the policy dispatch maps
//! (nftables, `pol-in-<ns>/<pod>`).

use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, SocketAddr};

use dataplane_core::{
    Attachment, BoxEventSource, Error, EventOptions, Flow, Inspect, IpFamily, LiveFrontend,
    NodeStatus, ObjectName, Protocol, Stats,
};

use crate::config::NetfilterConfig;
use crate::error::NetfilterError;
use crate::events::{InterfaceRole, Names, NetfilterEvents};
use crate::exec;
use crate::flavour::Flavour;
use crate::iptables::render::{self as ipt, Table};
use crate::nft::observe;

/// A read-only view of the netfilter dataplane programmed in a network namespace: the
/// nftables table `config.name`, or else the iptables chains prefixed `config.name-`.
#[derive(Debug, Clone)]
pub struct LiveNetfilter {
    config: NetfilterConfig,
    flavour: Flavour,
}

/// What one read of the ruleset gives.
#[derive(Debug, Default)]
struct Read {
    frontends: Vec<LiveFrontend>,
    attachments: BTreeSet<Attachment>,
    endpoints: u64,
    policies: u64,
    stats: Stats,
    /// Pod address → pod (nftables: the isolated pods of the policy dispatch maps).
    pods: BTreeMap<IpAddr, ObjectName>,
    /// Pod interfaces (the policy layer's).
    interfaces: BTreeSet<String>,
}

impl LiveNetfilter {
    /// Finds what is programmed in `config.netns`: the nftables table `inet <name>`, else
    /// iptables chains named `<name>-…` (IPv4 or IPv6). Reads only.
    ///
    /// # Errors
    /// [`NetfilterError::NothingProgrammed`] when neither exists.
    pub fn open(config: &NetfilterConfig) -> Result<LiveNetfilter, NetfilterError> {
        let netns = config.netns.as_deref();
        let name = &config.name;
        // A missing `nft` or `iptables-save` is the same as nothing of that flavour here.
        let nft = exec::run(
            Flavour::Nftables.name(),
            netns,
            &config.nft,
            &["list", "tables"],
            None,
            "list tables",
        )
        .is_ok_and(|out| {
            out.lines()
                .any(|l| l.trim() == format!("table inet {name}"))
        });
        let flavour = if nft {
            Flavour::Nftables
        } else {
            let chain = format!(":{name}-");
            let found = [IpFamily::V4, IpFamily::V6].into_iter().any(|f| {
                save(config, f, false).is_ok_and(|text| text.lines().any(|l| l.starts_with(&chain)))
            });
            if !found {
                let place = netns.map_or_else(
                    || "this network namespace".to_owned(),
                    |p| format!("network namespace {}", p.display()),
                );
                return Err(NetfilterError::NothingProgrammed {
                    backend: "netfilter",
                    detail: format!(
                        "no nftables table inet {name} and no iptables chains with prefix {name}- in {place}"
                    ),
                });
            }
            Flavour::Iptables
        };
        Ok(LiveNetfilter {
            config: config.clone(),
            flavour,
        })
    }

    /// The flavour found: `nftables` or `iptables`.
    pub fn dataplane(&self) -> &'static str {
        self.flavour.name()
    }

    fn read(&self) -> Result<Read, NetfilterError> {
        match self.flavour {
            Flavour::Nftables => self.read_nft(),
            Flavour::Iptables => self.read_iptables(),
        }
    }

    fn nft(&self, args: &[&str], op: &str) -> Result<String, NetfilterError> {
        exec::run(
            Flavour::Nftables.name(),
            self.config.netns.as_deref(),
            &self.config.nft,
            args,
            None,
            op,
        )
    }

    fn read_nft(&self) -> Result<Read, NetfilterError> {
        let table = self.config.name.as_str();
        let l = observe::parse_listing(
            &self.nft(&["-j", "list", "table", "inet", table], "list table")?,
        )?;
        let mut out = Read::default();
        for (f, chain) in observe::live_frontends(&l)? {
            let (service, kind) = nft_chain_service(&chain, f.address.port());
            out.frontends.push(live_frontend(f, service, kind));
        }
        out.attachments = l
            .hooks
            .iter()
            .map(|(chain, hook, kind)| Attachment {
                program: format!("inet {table} {chain}"),
                hook: format!("{kind} {hook}"),
                target: None,
            })
            .collect();
        out.interfaces = l
            .maps
            .get("pol-pod-ifaces")
            .into_iter()
            .flatten()
            .filter_map(|(k, _)| k.as_str().map(str::to_owned))
            .collect();
        out.endpoints = out.interfaces.len() as u64;
        out.policies = l
            .rules
            .keys()
            .filter(|c| c.starts_with("pol-in-") || c.starts_with("pol-out-"))
            .count() as u64;
        for map in [
            "pol-ingress-v4",
            "pol-ingress-v6",
            "pol-egress-v4",
            "pol-egress-v6",
        ] {
            for (k, chain) in observe::verdict_elements(&l, map) {
                let ip = k.as_str().and_then(|s| s.parse::<IpAddr>().ok());
                let pod = chain
                    .strip_prefix("pol-in-")
                    .or_else(|| chain.strip_prefix("pol-out-"))
                    .and_then(object_name);
                if let (Some(ip), Some(pod)) = (ip, pod) {
                    out.pods.insert(ip, pod);
                }
            }
        }
        out.stats = observe::counter_stats(&self.nft(
            &["-j", "list", "counters", "table", "inet", table],
            "list counters",
        )?)?;
        Ok(out)
    }

    fn read_iptables(&self) -> Result<Read, NetfilterError> {
        let prefix = self.config.name.as_str();
        let ours = format!("{prefix}-");
        let mut out = Read::default();
        let mut policies = BTreeSet::new();
        for family in [IpFamily::V4, IpFamily::V6] {
            let text = save(&self.config, family, true)?;
            let rules = ipt::counted_rules(&text, prefix);
            for (f, comment) in ipt::frontends_of(&rules, prefix) {
                let (service, kind) = comment
                    .as_deref()
                    .map_or((None, None), ipt::frontend_comment);
                out.frontends.push(live_frontend(f, service, kind));
            }
            ipt::add_stats(&rules, &mut out.stats);
            for ((_, chain), chain_rules) in &rules {
                if chain.starts_with(&format!("{prefix}-PI-"))
                    || chain.starts_with(&format!("{prefix}-PE-"))
                {
                    policies.insert(chain.clone());
                }
                if *chain == format!("{prefix}-POLICY") {
                    for (_, r) in chain_rules {
                        let jumps_as = ipt::word_after(r, "-j")
                            .is_some_and(|t| t.starts_with(&format!("{prefix}-AS-")));
                        if let (true, Some(iface)) = (jumps_as, ipt::word_after(r, "-i")) {
                            out.interfaces.insert(iface.to_owned());
                        }
                    }
                }
            }
            // The jumps from the built-in chains into ours.
            let mut table = None;
            for line in text.lines() {
                if let Some(t) = line.strip_prefix('*') {
                    table = Table::from_name(t).map(|_| t.to_owned());
                    continue;
                }
                let rule = line.split_once("] ").map_or(line, |(_, r)| r);
                let Some(rest) = rule.strip_prefix("-A ") else {
                    continue;
                };
                let (chain, body) = rest.split_once(' ').unwrap_or((rest, ""));
                let target = ipt::word_after(body, "-j").or_else(|| ipt::word_after(body, "-g"));
                if let (Some(t), Some(table), false) = (target, &table, chain.starts_with(&ours)) {
                    if t.starts_with(&ours) {
                        out.attachments.insert(Attachment {
                            program: t.to_owned(),
                            hook: format!("{table} {chain}"),
                            target: None,
                        });
                    }
                }
            }
        }
        out.endpoints = out.interfaces.len() as u64;
        out.policies = policies.len() as u64;
        out.frontends.sort_by_key(|f| (f.address, f.protocol));
        Ok(out)
    }

    /// Frontend (address, protocol) → service, for the named frontends of `read`.
    fn frontend_names(read: &Read) -> BTreeMap<(SocketAddr, Protocol), ObjectName> {
        read.frontends
            .iter()
            .filter_map(|f| Some(((f.address, f.protocol), f.service.clone()?)))
            .collect()
    }

    fn flows(&self, read: &Read) -> Result<Vec<Flow>, NetfilterError> {
        let text = exec::read_proc(
            self.flavour.name(),
            self.config.netns.as_deref(),
            "/proc/net/nf_conntrack",
        )?;
        Ok(crate::conntrack::parse(&text, &Self::frontend_names(read)))
    }
}

fn live_frontend(
    f: dataplane_core::ObservedFrontend,
    service: Option<ObjectName>,
    kind: Option<&str>,
) -> LiveFrontend {
    LiveFrontend {
        service,
        kind: kind.map(str::to_owned),
        address: f.address,
        protocol: f.protocol,
        backends: f.backends.into_iter().collect(),
    }
}

/// `iptables-save` (with `-c`: counters) of `family`, read-only.
fn save(
    config: &NetfilterConfig,
    family: IpFamily,
    counters: bool,
) -> Result<String, NetfilterError> {
    // The flavour the backend writes (legacy or nft, `IptablesMode::Auto` resolved in the
    // namespace), not whichever `iptables-save` is on PATH.
    let [v4, v6] = crate::IptablesDataplane::save_tools(config);
    let tool = match family {
        IpFamily::V4 => v4,
        IpFamily::V6 => v6,
    };
    let args: &[&str] = if counters { &["-c"] } else { &[] };
    exec::run(
        Flavour::Iptables.name(),
        config.netns.as_deref(),
        &tool,
        args,
        None,
        "save",
    )
}

/// `<ns>/<name>` at the start of `text` (the rest after another `/` ignored); `None` for
/// a name the backend hashed (it ends in `_<hash>`) or another shape.
fn object_name(text: &str) -> Option<ObjectName> {
    let mut parts = text.split('/');
    let (ns, name) = (parts.next()?, parts.next()?);
    if ns.is_empty() || name.is_empty() || name.contains('_') {
        return None;
    }
    Some(ObjectName::new(ns, name))
}

/// The service and frontend kind of an nftables service chain (`svc-v4-<ns>/<name>/<proto>/
/// <port>`: ClusterIP; `fw-…`: a LoadBalancer IP behind source ranges; `ext-…`: NodePort when
/// the frontend's port is not the service port, else an external IP or a LoadBalancer IP,
/// which the ruleset does not tell apart).
fn nft_chain_service(
    chain: &str,
    frontend_port: u16,
) -> (Option<ObjectName>, Option<&'static str>) {
    let Some((kind, rest)) = chain.split_once('-') else {
        return (None, None);
    };
    let Some(key) = rest
        .strip_prefix("v4-")
        .or_else(|| rest.strip_prefix("v6-"))
    else {
        return (None, None);
    };
    let service = object_name(key);
    let service_port = key.rsplit('/').next().and_then(|p| p.parse::<u16>().ok());
    let kind = match kind {
        "svc" => Some("ClusterIP"),
        "fw" => Some("LoadBalancer"),
        "ext" if service_port.is_some_and(|p| p != frontend_port) => Some("NodePort"),
        _ => None,
    };
    (service, kind)
}

fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_owned())
        .unwrap_or_default()
}

impl Inspect for LiveNetfilter {
    fn status(&self) -> Result<NodeStatus, Error> {
        let read = self.read()?;
        let flows = self.flows(&read)?;
        let mut backends: BTreeMap<Option<&ObjectName>, BTreeSet<SocketAddr>> = BTreeMap::new();
        for f in &read.frontends {
            backends
                .entry(f.service.as_ref())
                .or_default()
                .extend(f.backends.iter().copied());
        }
        let services: BTreeSet<&ObjectName> = read
            .frontends
            .iter()
            .filter_map(|f| f.service.as_ref())
            .collect();
        let mut stats = read.stats.clone();
        stats.flows = flows.len() as u64;
        Ok(NodeStatus {
            dataplane: self.flavour.name().to_owned(),
            attachments: read.attachments.iter().cloned().collect(),
            services: services.len() as u64,
            frontends: read.frontends.len() as u64,
            backends: backends.values().map(|b| b.len() as u64).sum(),
            endpoints: read.endpoints,
            policies: read.policies,
            tables: Vec::new(),
            // The kernel's entries to our frontends (not the whole conntrack table).
            conntrack_entries: flows.len() as u64,
            stats,
        })
    }

    fn services(&self) -> Result<Vec<LiveFrontend>, Error> {
        Ok(self.read()?.frontends)
    }

    fn conntrack(&self) -> Result<Vec<Flow>, Error> {
        let read = self.read()?;
        Ok(self.flows(&read)?)
    }

    fn events(&self, options: &EventOptions) -> Result<BoxEventSource, Error> {
        let read = self.read()?;
        let mut names = Names {
            node: hostname(),
            frontends: Self::frontend_names(&read),
            endpoints: read.pods.clone(),
            ..Names::default()
        };
        for i in &read.interfaces {
            names.interfaces.insert(i.clone(), InterfaceRole::Pod);
        }
        NetfilterEvents::boxed(self.flavour.name(), &self.config, options, names)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nft_chain_names_give_service_and_kind() {
        let web = Some(ObjectName::new("default", "web"));
        assert_eq!(
            nft_chain_service("svc-v4-default/web/tcp/80", 80),
            (web.clone(), Some("ClusterIP"))
        );
        assert_eq!(
            nft_chain_service("ext-v6-default/web/tcp/80", 30080),
            (web.clone(), Some("NodePort"))
        );
        assert_eq!(
            nft_chain_service("ext-v4-default/web/tcp/80", 80),
            (web.clone(), None)
        );
        assert_eq!(
            nft_chain_service("fw-v4-default/web/tcp/80", 80),
            (web, Some("LoadBalancer"))
        );
        assert_eq!(nft_chain_service("reject-service", 80), (None, None));
        // A hashed (too long) endpoint chain name is no name.
        assert_eq!(object_name("ns/very-long_0123abcd"), None);
    }

    #[test]
    fn iptables_comments_give_service_and_kind() {
        assert_eq!(
            ipt::frontend_comment("prod/shop/tcp/443 load balancer IP"),
            (Some(ObjectName::new("prod", "shop")), Some("LoadBalancer"))
        );
        assert_eq!(
            ipt::frontend_comment("default/web/udp/53 node port").1,
            Some("NodePort")
        );
        assert_eq!(ipt::frontend_comment("something else"), (None, None));
    }
}
