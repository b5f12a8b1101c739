//! The iptables renderer: [`Plan`] → [`IptRuleset`] (chains and rules of one address family)
//! → `iptables-restore --noflush` text. Pure functions.
//!
//! kube-proxy's iptables layout (pkg/proxy/iptables/proxier.go), under our own prefix (`DP`
//! by default):
//!
//! ```text
//! nat PREROUTING/OUTPUT ─▶ DP-SERVICES ─(-d frontend -p proto --dport)─▶ DP-SVC-* (ClusterIP)
//!                                                                    ├─▶ DP-EXT-* (NodePort, ExternalIP, LB)
//!                                                                    └─▶ DP-FW-*  (LB + sourceRanges)
//!     DP-SVC: internalTrafficPolicy for every client; ! -s clusterCIDR (all: --masquerade-all)
//!             ─▶ DP-MARK-MASQ
//!     DP-EXT: Cluster: DP-MARK-MASQ; Local: addrtype LOCAL ─▶ masq + cluster-wide,
//!             -s <pod CIDR> (this node's pods) ─▶ cluster-wide, the rest by the policy
//!     DP-FW:  -s <allowed> ─▶ DP-EXT (ranges, LB IPs when a range holds the node), else drop
//!     DP-SVC/EXT ─▶ DP-SEL-* (statistic random; recent for ClientIP affinity) ─▶ DP-SEP-* (DNAT)
//!     no backend: mark 0x10000 (reject), no local backend / not in ranges: mark 0x8000 (drop)
//! nat POSTROUTING ─▶ DP-POSTROUTING: mark 0x4000 ─▶ SNAT to the node address; pod → outside
//! filter INPUT/FORWARD/OUTPUT ─▶ DP-FILTER: drop / reject the marked packets; new connections
//!                                still to the service CIDRs (no service took them): drop
//! ```
//!
//! Beyond kube-proxy's iptables mode: the drop of unallocated service addresses (its nftables
//! mode's `cluster-ips-check`), and pods short-circuiting an externalTrafficPolicy Local
//! frontend told by this node's pod CIDRs (`NodeCIDR` local detection) rather than by the
//! cluster CIDRs (the reference model treats a pod of another node as an outside client).
//!
//! Everything after the first packet of a connection is conntrack's job. Per-packet cost grows
//! with the number of service frontends (`DP-SERVICES` is linear), as in kube-proxy.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::net::{IpAddr, SocketAddr};

use dataplane_core::{DesiredState, ObjectName};
use ipnetwork::IpNetwork;

use super::digest::each_chain;
use crate::plan::{node_plan, proto_name, Choice, Family, NodePlan, Plan, PortPlan};

/// Mark bit: masquerade this connection (SNAT to the node address) in POSTROUTING.
pub const MARK_MASQUERADE: u32 = 0x4000;
/// Mark bit: drop in the filter table.
pub const MARK_DROP: u32 = 0x8000;
/// Mark bit: reject in the filter table.
pub const MARK_REJECT: u32 = 0x10000;
/// Longest prefix: iptables chain names are at most 28 characters.
pub const MAX_PREFIX_LEN: usize = 5;

/// The chains of one family.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IptRuleset {
    /// Address family.
    pub family: Family,
    /// Chain prefix.
    pub prefix: String,
    /// nat-table chains and their rules (`-A` lines without the `-A CHAIN`).
    pub nat: BTreeMap<String, Vec<String>>,
    /// filter-table chains.
    pub filter: BTreeMap<String, Vec<String>>,
}

/// Built-in chains and the jump rule into ours, per table.
pub fn hooks(prefix: &str) -> Vec<(&'static str, &'static str, String)> {
    vec![
        ("nat", "PREROUTING", format!("{prefix}-SERVICES")),
        ("nat", "OUTPUT", format!("{prefix}-SERVICES")),
        ("nat", "POSTROUTING", format!("{prefix}-POSTROUTING")),
        ("filter", "INPUT", format!("{prefix}-FILTER")),
        ("filter", "FORWARD", format!("{prefix}-FILTER")),
        ("filter", "OUTPUT", format!("{prefix}-FILTER")),
    ]
}

/// FNV-1a, for short stable chain names.
fn hash_name(s: &str) -> String {
    const ALPHABET: &[u8; 32] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZ234567";
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in s.bytes() {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    (0..13)
        .map(|i| ALPHABET[((h >> (i * 5)) & 31) as usize] as char)
        .collect()
}

fn host(ip: &IpAddr) -> String {
    match ip {
        IpAddr::V4(_) => format!("{ip}/32"),
        IpAddr::V6(_) => format!("{ip}/128"),
    }
}

fn dnat_target(a: &SocketAddr) -> String {
    match a {
        SocketAddr::V4(v4) => format!("{}:{}", v4.ip(), v4.port()),
        SocketAddr::V6(v6) => format!("[{}]:{}", v6.ip(), v6.port()),
    }
}

fn of_family(nets: &[IpNetwork], f: Family) -> Vec<IpNetwork> {
    nets.iter()
        .copied()
        .filter(|n| Family::of(&n.ip()) == f)
        .collect()
}

/// Compiles the chains of `family`.
pub fn compile(plan: &Plan, family: Family, prefix: &str) -> IptRuleset {
    let mut rs = IptRuleset {
        family,
        prefix: prefix.to_owned(),
        nat: BTreeMap::new(),
        filter: BTreeMap::new(),
    };
    let mut services: Vec<String> = Vec::new();
    let mut reject_ips: BTreeSet<IpAddr> = BTreeSet::new();
    for ports in plan.services.values() {
        for port in ports.iter().filter(|pp| pp.family == family) {
            compile_port(&plan.node, port, prefix, &mut rs.nat, &mut services);
            reject_ips.extend(port.cluster_ips.iter().copied());
        }
    }
    finish_ruleset(
        &plan.node,
        family,
        prefix,
        &mut rs,
        &mut services,
        &reject_ips,
    );
    rs
}

/// [`compile`] of [`plan`](crate::plan::plan)`(state)` for both families (IPv4, IPv6): the
/// same rulesets, planning one service at a time (what the backend compiles, through
/// [`super::digest`], to write a sync without holding the rules).
pub fn compile_state(state: &DesiredState, prefix: &str) -> [IptRuleset; 2] {
    let node = node_plan(&state.node);
    [Family::V4, Family::V6].map(|family| {
        let mut rs = IptRuleset {
            family,
            prefix: prefix.to_owned(),
            nat: BTreeMap::new(),
            filter: BTreeMap::new(),
        };
        let _ = each_chain::<()>(state, &node, prefix, family, &mut |table, chains| {
            let t = if table == "nat" {
                &mut rs.nat
            } else {
                &mut rs.filter
            };
            t.extend(chains.iter().map(|(c, r)| (c.clone(), r.clone())));
            Ok(())
        });
        rs
    })
}

/// The node-wide chains, after every service port is compiled.
pub(crate) fn finish_ruleset(
    plan_node: &NodePlan,
    family: Family,
    p: &str,
    rs: &mut IptRuleset,
    services: &mut Vec<String>,
    reject_ips: &BTreeSet<IpAddr>,
) {
    for ip in reject_ips {
        services.push(format!("-d {} -g {p}-MARK-REJ", host(ip)));
    }
    rs.nat
        .insert(format!("{p}-SERVICES"), std::mem::take(services));
    rs.nat.insert(
        format!("{p}-MARK-MASQ"),
        vec![format!(
            "-j MARK --set-xmark {MARK_MASQUERADE:#x}/{MARK_MASQUERADE:#x}"
        )],
    );
    rs.nat.insert(
        format!("{p}-MARK-DROP"),
        vec![format!("-j MARK --set-xmark {MARK_DROP:#x}/{MARK_DROP:#x}")],
    );
    rs.nat.insert(
        format!("{p}-MARK-REJ"),
        vec![format!(
            "-j MARK --set-xmark {MARK_REJECT:#x}/{MARK_REJECT:#x}"
        )],
    );
    let masq = match plan_node.masquerade_source(family) {
        Some(a) => format!("-j SNAT --to-source {a}"),
        None => "-j MASQUERADE".to_owned(),
    };
    rs.nat.insert(format!("{p}-MASQ"), vec![masq]);
    let mut post = vec![format!(
        "-m mark --mark {MARK_MASQUERADE:#x}/{MARK_MASQUERADE:#x} -m conntrack --ctstate DNAT -g {p}-MASQ"
    )];
    if plan_node.masquerade {
        let exempt = if plan_node.masquerade_all {
            of_family(&plan_node.pod_cidrs, family)
        } else {
            of_family(&plan_node.no_masquerade, family)
        };
        let mut pod_masq: Vec<String> =
            exempt.iter().map(|n| format!("-d {n} -j RETURN")).collect();
        pod_masq.push(format!("-j {p}-MASQ"));
        rs.nat.insert(format!("{p}-POD-MASQ"), pod_masq);
        for cidr in of_family(&plan_node.pod_cidrs, family) {
            post.push(format!(
                "-s {cidr} -m conntrack ! --ctstate DNAT -g {p}-POD-MASQ"
            ));
        }
    }
    rs.nat.insert(format!("{p}-POSTROUTING"), post);
    let reject = match family {
        Family::V4 => "icmp-port-unreachable",
        Family::V6 => "icmp6-port-unreachable",
    };
    let mut filter = vec![
        format!("-m mark --mark {MARK_DROP:#x}/{MARK_DROP:#x} -j DROP"),
        format!("-p tcp -m mark --mark {MARK_REJECT:#x}/{MARK_REJECT:#x} -j REJECT --reject-with tcp-reset"),
        format!("-m mark --mark {MARK_REJECT:#x}/{MARK_REJECT:#x} -j REJECT --reject-with {reject}"),
    ];
    // Not in kube-proxy's iptables mode; its nftables mode's "drop traffic to unallocated
    // ClusterIPs". The filter chains see a packet after its DNAT (a ClusterIP on a port it
    // does not serve was marked for reject above), so a new connection still addressed to
    // the service CIDRs went to no service.
    for cidr in of_family(&plan_node.service_cidrs, family) {
        filter.push(format!(
            "-d {cidr} -m conntrack --ctstate NEW -m comment --comment \"unallocated service address\" -j DROP"
        ));
    }
    rs.filter.insert(format!("{p}-FILTER"), filter);
}

pub(crate) fn compile_port(
    node: &NodePlan,
    pp: &PortPlan,
    p: &str,
    nat: &mut BTreeMap<String, Vec<String>>,
    services: &mut Vec<String>,
) {
    let key = format!("{}-{}", pp.family.suffix(), pp.key());
    let proto = proto_name(pp.protocol);
    let m = |dport: u16| format!("-p {proto} -m {proto} --dport {dport}");
    let comment = |what: &str| format!("-m comment --comment \"{} {what}\"", pp.key());

    let choose = |kind: &str, choice: &Choice, nat: &mut BTreeMap<String, Vec<String>>| -> String {
        match choice {
            Choice::Drop => format!("{p}-MARK-DROP"),
            Choice::Reject => format!("{p}-MARK-REJ"),
            Choice::Backends(b) => selection(pp, &key, kind, b, p, nat),
        }
    };

    if !pp.cluster_ips.is_empty() {
        // kube-proxy's internal traffic chain: internalTrafficPolicy for every client; with
        // --masquerade-all every client is marked, else those outside the cluster CIDRs
        // (`! -s clusterCIDR -j KUBE-MARK-MASQ`; a family may have several cluster CIDRs,
        // so the pods return to the choice first).
        let svc = format!("{p}-SVC-{}", hash_name(&key));
        let internal = choose("internal", &pp.internal, nat);
        let mut rules: Vec<String> = Vec::new();
        let cluster = of_family(&node.cluster_cidrs, pp.family);
        if !node.masquerade_services {
            rules.extend(cluster.iter().map(|c| format!("-s {c} -g {internal}")));
        }
        // A family without cluster CIDRs has no `! -s clusterCIDR` test (kube-proxy has no
        // local detector for it then): its clients keep their address, except hairpin.
        if node.masquerade_services || !cluster.is_empty() {
            rules.push(format!("-j {p}-MARK-MASQ"));
        }
        rules.push(format!("-g {internal}"));
        nat.insert(svc.clone(), rules);
        for ip in &pp.cluster_ips {
            services.push(format!(
                "-d {} {} {} -g {svc}",
                host(ip),
                m(pp.port),
                comment("cluster IP")
            ));
        }
    }
    if pp.has_external() {
        let ext = format!("{p}-EXT-{}", hash_name(&key));
        let external = choose("external", &pp.external, nat);
        let mut rules = Vec::new();
        if pp.external_masquerade {
            // externalTrafficPolicy Cluster: everyone masqueraded, cluster-wide.
            rules.push(format!("-j {p}-MARK-MASQ"));
        } else {
            let cluster = choose("cluster", &pp.cluster, nat);
            // kube-proxy: "masquerade LOCAL traffic", "route LOCAL traffic".
            rules.push(format!("-m addrtype --src-type LOCAL -j {p}-MARK-MASQ"));
            rules.push(format!("-m addrtype --src-type LOCAL -g {cluster}"));
            // kube-proxy's "pod traffic for ... external destinations" (`IfLocal`): this
            // node's pods, told by its pod CIDRs (`NodeCIDR` local detection), as the reference
            // model does (a pod of another node, a client on another interface: outside
            // clients under the policy); masqueraded too with allServices.
            for cidr in of_family(&node.pod_cidrs, pp.family) {
                if node.masquerade_services {
                    rules.push(format!("-s {cidr} -j {p}-MARK-MASQ"));
                }
                rules.push(format!("-s {cidr} -g {cluster}"));
            }
        }
        rules.push(format!("-g {external}"));
        nat.insert(ext.clone(), rules);
        for ip in &pp.external_ips {
            services.push(format!(
                "-d {} {} {} -g {ext}",
                host(ip),
                m(pp.port),
                comment("external IP")
            ));
        }
        if let Some((addrs, np)) = &pp.node_port {
            for a in addrs {
                services.push(format!(
                    "-d {} {} {} -g {ext}",
                    host(a),
                    m(*np),
                    comment("node port")
                ));
            }
        }
        if !pp.load_balancer_ips.is_empty() {
            let target = if pp.source_ranges.is_empty() {
                ext.clone()
            } else {
                // kube-proxy's KUBE-FW chain: each allowed source (the ranges, and the LB
                // IPs when a range holds the node: allowFromNode) to the service, everyone
                // else (pods, the node, outside) dropped.
                let fw = format!("{p}-FW-{}", hash_name(&key));
                let mut rules: Vec<String> = pp
                    .source_ranges
                    .iter()
                    .map(|r| format!("-s {r} -g {ext}"))
                    .collect();
                rules.push(format!("-g {p}-MARK-DROP"));
                nat.insert(fw.clone(), rules);
                fw
            };
            for ip in &pp.load_balancer_ips {
                services.push(format!(
                    "-d {} {} {} -g {target}",
                    host(ip),
                    m(pp.port),
                    comment("load balancer IP")
                ));
            }
        }
    }
}

/// The selection chain of one choice, and the endpoint chains it leads to.
fn selection(
    pp: &PortPlan,
    key: &str,
    kind: &str,
    backends: &[(SocketAddr, u16)],
    p: &str,
    nat: &mut BTreeMap<String, Vec<String>>,
) -> String {
    let proto = proto_name(pp.protocol);
    let sel = format!("{p}-SEL-{}", hash_name(&format!("{key}#{kind}")));
    let sep = |a: &SocketAddr| format!("{p}-SEP-{}", hash_name(&format!("{key}@{a}")));
    let mut rules = Vec::new();
    if let Some(timeout) = pp.affinity_timeout {
        for (a, _) in backends {
            rules.push(format!(
                "-m recent --name {} --rcheck --seconds {timeout} --reap -g {}",
                sep(a),
                sep(a)
            ));
        }
    }
    let total: u32 = backends.iter().map(|(_, w)| u32::from(*w)).sum();
    let mut remaining = total;
    for (i, (a, w)) in backends.iter().enumerate() {
        if i + 1 == backends.len() {
            rules.push(format!("-g {}", sep(a)));
        } else {
            let prob = f64::from(*w) / f64::from(remaining);
            rules.push(format!(
                "-m statistic --mode random --probability {prob:.10} -g {}",
                sep(a)
            ));
        }
        remaining -= u32::from(*w);
        let mut ep = vec![format!("-s {} -j {p}-MARK-MASQ", host(&a.ip()))];
        if pp.affinity_timeout.is_some() {
            ep.push(format!("-m recent --name {} --set", sep(a)));
        }
        ep.push(format!(
            "-p {proto} -m {proto} -j DNAT --to-destination {}",
            dnat_target(a)
        ));
        nat.insert(sep(a), ep);
    }
    nat.insert(sel.clone(), rules);
    sel
}

/// What is in the kernel before a sync: our chains and which hook jumps exist.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Existing {
    /// Our chains in the nat table.
    pub nat_chains: BTreeSet<String>,
    /// Our chains in the filter table.
    pub filter_chains: BTreeSet<String>,
    /// (table, built-in chain) pairs that already jump to our chain.
    pub hooks: BTreeSet<(String, String)>,
}

fn table_lines(
    table: &str,
    old: Option<&BTreeMap<String, Vec<String>>>,
    new: &BTreeMap<String, Vec<String>>,
    existing_chains: &BTreeSet<String>,
    hook_lines: &[String],
    out: &mut String,
) {
    let changed: Vec<&String> = new
        .iter()
        .filter(|(c, r)| old.and_then(|o| o.get(*c)) != Some(*r) || !existing_chains.contains(*c))
        .map(|(c, _)| c)
        .collect();
    let stale: Vec<&String> = existing_chains
        .iter()
        .filter(|c| !new.contains_key(*c))
        .collect();
    if changed.is_empty() && stale.is_empty() && hook_lines.is_empty() {
        return;
    }
    let _ = writeln!(out, "*{table}");
    // With --noflush, declaring a chain creates it or flushes it; nothing else is touched.
    for c in changed.iter().chain(stale.iter()) {
        let _ = writeln!(out, ":{c} - [0:0]");
    }
    for c in &changed {
        for r in &new[*c] {
            let _ = writeln!(out, "-A {c} {r}");
        }
    }
    for h in hook_lines {
        let _ = writeln!(out, "{h}");
    }
    for c in &stale {
        let _ = writeln!(out, "-X {c}");
    }
    let _ = writeln!(out, "COMMIT");
}

/// The hook jumps into our chains that `existing` lacks, as `-I` lines.
pub(crate) fn hook_lines(prefix: &str, existing: &Existing, table: &str) -> Vec<String> {
    hooks(prefix)
        .into_iter()
        .filter(|(t, c, _)| {
            *t == table && !existing.hooks.contains(&((*t).to_owned(), (*c).to_owned()))
        })
        .map(|(_, c, target)| format!("-I {c} 1 -j {target}"))
        .collect()
}

/// The `iptables-restore --noflush` input that turns what `existing` says is in the kernel
/// (last programmed as `old`, if known) into `new`: only chains whose rules differ are
/// rewritten (so unchanged chains keep their counters), stale chains are removed, missing hook
/// jumps are added. (The backend writes the same from digests: [`super::digest::SyncPlan`].)
pub fn render_sync(old: Option<&IptRuleset>, new: &IptRuleset, existing: &Existing) -> String {
    let mut out = String::new();
    // nat first: if the tool refuses it, it stops before touching the filter table.
    table_lines(
        "nat",
        old.map(|o| &o.nat),
        &new.nat,
        &existing.nat_chains,
        &hook_lines(&new.prefix, existing, "nat"),
        &mut out,
    );
    table_lines(
        "filter",
        old.map(|o| &o.filter),
        &new.filter,
        &existing.filter_chains,
        &hook_lines(&new.prefix, existing, "filter"),
        &mut out,
    );
    out
}

/// The input that removes everything of ours that `existing` lists.
pub fn render_reset(prefix: &str, existing: &Existing) -> String {
    let mut out = String::new();
    let _ = write_reset(prefix, existing, &mut out);
    out
}

/// Writes [`render_reset`]'s input into `out` (streamed by the backend: 10k services leave
/// ~130k chains to remove). Returns whether anything was written.
pub fn write_reset<W: std::fmt::Write + ?Sized>(
    prefix: &str,
    existing: &Existing,
    out: &mut W,
) -> Result<bool, std::fmt::Error> {
    let mut wrote = false;
    for (table, chains) in [
        ("filter", &existing.filter_chains),
        ("nat", &existing.nat_chains),
    ] {
        let jumps: Vec<(String, String)> = hooks(prefix)
            .into_iter()
            .filter(|(t, c, _)| {
                *t == table && existing.hooks.contains(&((*t).to_owned(), (*c).to_owned()))
            })
            .map(|(_, c, target)| (c.to_owned(), target))
            .collect();
        if chains.is_empty() && jumps.is_empty() {
            continue;
        }
        wrote = true;
        writeln!(out, "*{table}")?;
        for c in chains {
            writeln!(out, ":{c} - [0:0]")?;
        }
        for (c, target) in jumps {
            writeln!(out, "-D {c} -j {target}")?;
        }
        for c in chains {
            writeln!(out, "-X {c}")?;
        }
        writeln!(out, "COMMIT")?;
    }
    Ok(wrote)
}

/// Reads `iptables-save` output: our chains per table and the hook jumps present.
pub fn parse_existing(save: &str, prefix: &str) -> Existing {
    let mut parser = ExistingParser::new(prefix);
    for line in save.lines() {
        parser.line(line);
    }
    parser.finish()
}

/// Sees each of our chains (table, name) and says whether to list its name.
type Keep<'a> = Box<dyn FnMut(&str, &str) -> bool + 'a>;

/// [`parse_existing`] a line at a time, for output read as it comes (`iptables-save` of 10k
/// services is ~100 MiB).
pub struct ExistingParser<'a> {
    ours: String,
    table: String,
    hook_targets: Vec<((String, String), String)>,
    existing: Existing,
    keep: Option<Keep<'a>>,
}

impl std::fmt::Debug for ExistingParser<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ExistingParser")
            .field("ours", &self.ours)
            .field("existing", &self.existing)
            .finish_non_exhaustive()
    }
}

impl<'a> ExistingParser<'a> {
    /// A parser for the chains of `prefix`.
    pub fn new(prefix: &str) -> Self {
        ExistingParser {
            ours: format!("{prefix}-"),
            table: String::new(),
            hook_targets: hooks(prefix)
                .into_iter()
                .map(|(t, c, target)| ((t.to_owned(), c.to_owned()), target))
                .collect(),
            existing: Existing::default(),
            keep: None,
        }
    }

    /// A parser that hands each of our chains (table, name) to `keep` and lists only those
    /// it keeps: at 10k services the kernel holds ~130k of them (~10 MiB as names), of which
    /// a sync needs the names of the stale ones only.
    pub fn filtered(prefix: &str, keep: impl FnMut(&str, &str) -> bool + 'a) -> Self {
        ExistingParser {
            keep: Some(Box::new(keep)),
            ..ExistingParser::new(prefix)
        }
    }

    /// Reads one line (without its newline).
    pub fn line(&mut self, line: &str) {
        let e = &mut self.existing;
        if let Some(t) = line.strip_prefix('*') {
            t.clone_into(&mut self.table);
        } else if let Some(decl) = line.strip_prefix(':') {
            let name = decl.split_whitespace().next().unwrap_or("");
            let table = self.table.as_str();
            if name.starts_with(&self.ours) && (table == "nat" || table == "filter") {
                if let Some(keep) = self.keep.as_mut() {
                    if !keep(table, name) {
                        return;
                    }
                }
                if table == "nat" {
                    e.nat_chains.insert(name.to_owned());
                } else {
                    e.filter_chains.insert(name.to_owned());
                }
            }
        } else if let Some(rule) = line.strip_prefix("-A ") {
            let chain = rule.split_whitespace().next().unwrap_or("");
            // Only the built-in chains we hook matter: no allocation per rule.
            let Some((key, target)) = self
                .hook_targets
                .iter()
                .find(|((t, c), _)| *t == self.table && c == chain)
            else {
                return;
            };
            if rule.trim_end().ends_with(&format!("-j {target}")) {
                e.hooks.insert(key.clone());
            }
        }
    }

    /// What the lines said.
    pub fn finish(self) -> Existing {
        self.existing
    }
}

/// Removes the prefix group of `name` (for tests and observe): `DP-SEP-…` → `SEP`.
pub fn chain_kind<'a>(name: &'a str, prefix: &str) -> Option<&'a str> {
    name.strip_prefix(prefix)?
        .strip_prefix('-')?
        .split('-')
        .next()
}

/// The nat chain names a service port owns (for tests).
pub fn service_chain(
    prefix: &str,
    family: Family,
    service: &ObjectName,
    protocol: &str,
    port: u16,
) -> String {
    format!(
        "{prefix}-SVC-{}",
        hash_name(&format!("{}-{service}/{protocol}/{port}", family.suffix()))
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_fit_iptables_limits() {
        let n = format!(
            "DP-SEP-{}",
            hash_name("v6-some-namespace/some-service/tcp/443@[fd00::1]:8443")
        );
        assert!(n.len() <= 28, "{n}");
        assert_ne!(hash_name("a"), hash_name("b"));
    }

    #[test]
    fn parses_existing_chains_and_hooks() {
        let save = "*nat\n:PREROUTING ACCEPT [0:0]\n:DP-SERVICES - [0:0]\n:KUBE-X - [0:0]\n-A PREROUTING -j DP-SERVICES\n-A OUTPUT -j KUBE-X\nCOMMIT\n*filter\n:DP-FILTER - [0:0]\nCOMMIT\n";
        let e = parse_existing(save, "DP");
        assert_eq!(e.nat_chains, BTreeSet::from(["DP-SERVICES".to_owned()]));
        assert_eq!(e.filter_chains, BTreeSet::from(["DP-FILTER".to_owned()]));
        assert!(e
            .hooks
            .contains(&("nat".to_owned(), "PREROUTING".to_owned())));
        assert_eq!(e.hooks.len(), 1);
    }

    #[test]
    fn filtered_parse_sees_every_chain_and_keeps_only_the_chosen() {
        let save = "*nat\n:PREROUTING ACCEPT [0:0]\n:DP-SERVICES - [0:0]\n:DP-SVC-A - [0:0]\n:KUBE-X - [0:0]\n-A PREROUTING -j DP-SERVICES\nCOMMIT\n*filter\n:DP-FILTER - [0:0]\nCOMMIT\n*mangle\n:DP-M - [0:0]\nCOMMIT\n";
        let mut seen = Vec::new();
        let mut parser = ExistingParser::filtered("DP", |table, name| {
            seen.push(format!("{table}/{name}"));
            name == "DP-SVC-A"
        });
        for line in save.lines() {
            parser.line(line);
        }
        let e = parser.finish();
        assert_eq!(
            seen,
            ["nat/DP-SERVICES", "nat/DP-SVC-A", "filter/DP-FILTER"]
        );
        assert_eq!(e.nat_chains, BTreeSet::from(["DP-SVC-A".to_owned()]));
        assert!(e.filter_chains.is_empty());
        assert!(e
            .hooks
            .contains(&("nat".to_owned(), "PREROUTING".to_owned())));
    }
}
