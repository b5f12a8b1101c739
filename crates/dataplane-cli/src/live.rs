//! `dpctl status`, `services` and `conntrack`: what a running dataplane programmed on this node,
//! read through [`dataplane::inspect`] (read-only: safe beside the running agent).
//!
//! Each command renders to a writer from a `&dyn Inspect`, so that the tables and the JSON are
//! tested with a fake inspector; [`Target`] opens the real one.

use std::fmt::Write as _;
use std::io::Write;
use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::Context;
use clap::{Args, ValueEnum};
use comfy_table::{presets, CellAlignment, ContentArrangement, Table};
use dataplane::{Flow, Inspect, LiveFrontend, NodeStatus, ObjectName, Options};

use crate::Choice;

/// Which node's dataplane to read, with the agent's flags for where its state is.
#[derive(Debug, Clone, Args)]
pub struct Target {
    /// The dataplane whose state to read; `auto`: the first whose state exists (pinned maps,
    /// then the nftables table, then the iptables chains).
    #[arg(long, value_enum, default_value_t = Choice::Auto)]
    pub backend: Choice,
    /// The network namespace of the node (a name under /run/netns, or a path): where the
    /// netfilter state and the interfaces are. dpctl does not enter it for the eBPF maps
    /// (bpffs paths are global).
    #[arg(long, value_name = "NAME|PATH")]
    pub netns: Option<String>,
    /// The bpffs directory of the eBPF dataplane (the agent's `--bpf-pin-dir`).
    #[arg(
        long = "pin-dir",
        visible_alias = "bpf-pin-dir",
        value_name = "DIR",
        default_value = "/sys/fs/bpf/dataplane"
    )]
    pub pin_dir: PathBuf,
    /// The nftables table (`inet`) of the nftables dataplane (the agent's `--nft-table`).
    #[arg(long, value_name = "NAME", default_value = "dataplane")]
    pub nft_table: String,
    /// The chain prefix of the iptables dataplane (the agent's `--iptables-prefix`).
    #[arg(long, value_name = "PREFIX", default_value = "DP")]
    pub iptables_prefix: String,
}

impl Target {
    /// The network namespace as a path: a bare name is one of `ip netns`'s.
    pub fn netns_path(&self) -> Option<PathBuf> {
        self.netns.as_ref().map(|n| {
            if n.contains('/') {
                PathBuf::from(n)
            } else {
                PathBuf::from("/run/netns").join(n)
            }
        })
    }

    /// The facade's options for this target.
    pub fn options(&self) -> Options {
        let mut options = match self.netns_path() {
            Some(ns) => Options::in_netns(ns),
            None => Options::default(),
        };
        options.ebpf.pin_dir.clone_from(&self.pin_dir);
        options.nftables = options.nftables.with_name(&self.nft_table);
        options.iptables = options.iptables.with_name(&self.iptables_prefix);
        options
    }

    /// Opens the read-only view.
    pub fn open(&self) -> anyhow::Result<Box<dyn Inspect>> {
        if let Some(ns) = self.netns_path() {
            if !ns.exists() {
                anyhow::bail!("--netns {}: no such network namespace", ns.display());
            }
        }
        Ok(dataplane::inspect(
            self.backend.selection(),
            &self.options(),
        )?)
    }
}

/// What the read-only views need, for their `--help` (`status`, `services`, `conntrack`).
pub const READ_PRIVILEGES: &str = "Privileges: root. eBPF: CAP_BPF (or CAP_SYS_ADMIN) and \
read access to the pins in --pin-dir (the dataplane makes them root's: directory 0700, pins \
0600). nftables, iptables: CAP_NET_ADMIN (netlink, `nft`, `iptables-save`). --netns: \
CAP_SYS_ADMIN to enter the namespace. Without them dpctl says so and exits 1.";

/// What `flows` needs, for its `--help`.
pub const FLOWS_PRIVILEGES: &str = "Privileges: root. eBPF: CAP_BPF (or CAP_SYS_ADMIN) and \
read-write access to the pins of dp_events, dp_names and dp_ev_limit in --pin-dir (a ring \
buffer reader moves its read position; the pins are root's, 0600). nftables, iptables: \
CAP_NET_ADMIN (NFLOG and conntrack netlink sockets). --netns: CAP_SYS_ADMIN. Without them \
dpctl says so and exits 1.";

impl Target {
    /// What reading this target's state with `command` needs, in words.
    pub fn needs(&self, command: &str) -> String {
        let access = if command == "flows" {
            "read-write"
        } else {
            "read"
        };
        let ebpf = format!(
            "CAP_BPF and {access} access to the pins in {} (root's: 0700, 0600)",
            self.pin_dir.display()
        );
        let netfilter = "CAP_NET_ADMIN".to_owned();
        let mut needs = match self.backend {
            Choice::Ebpf => ebpf,
            Choice::Nft | Choice::Iptables => netfilter,
            Choice::Auto => format!("{ebpf} (eBPF), or {netfilter} (nftables, iptables)"),
        };
        if self.netns.is_some() {
            needs.push_str(", and CAP_SYS_ADMIN to enter --netns");
        }
        needs
    }
}

/// Whether `e` happened for want of privileges: an `EPERM`/`EACCES` anywhere in its chain,
/// or the words the tools (`nft`, `iptables-save`) and the kernel use for it in a message
/// (the facade reports a tool's failure as its stderr).
pub fn permission_denied(e: &anyhow::Error) -> bool {
    const WORDS: [&str; 4] = [
        "Permission denied",
        "Operation not permitted",
        "you must be root",
        "must be run as root",
    ];
    e.chain().any(|c| {
        let io = c.downcast_ref::<std::io::Error>().is_some_and(|io| {
            io.kind() == std::io::ErrorKind::PermissionDenied
                || io.raw_os_error().is_some_and(|n| {
                    n == nix::errno::Errno::EPERM as i32 || n == nix::errno::Errno::EACCES as i32
                })
        });
        io || WORDS.iter().any(|w| c.to_string().contains(w))
    })
}

/// `e`, said as what `dpctl COMMAND` needs when it failed for want of privileges.
pub fn explain_privileges(command: &str, target: &Target, e: anyhow::Error) -> anyhow::Error {
    if permission_denied(&e) {
        e.context(format!(
            "dpctl {command} needs {}: run it as root",
            target.needs(command)
        ))
    } else {
        e
    }
}

/// How `status` and `conntrack` print.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Output {
    /// Tables for people.
    Table,
    /// JSON for scripts.
    Json,
}

/// How `services` prints.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum ServicesOutput {
    /// One row per frontend, the first backends.
    Table,
    /// Every backend.
    Wide,
    /// JSON for scripts.
    Json,
}

/// A table in `kubectl get`'s look: upper-case headers, no borders.
pub fn table(headers: &[&str]) -> Table {
    let mut t = Table::new();
    t.load_preset(presets::NOTHING)
        .set_content_arrangement(ContentArrangement::Disabled)
        .set_header(headers.iter().copied());
    // `NOTHING` pads every cell with a space on both sides: none at the left edge, two
    // spaces between columns, nothing after the last.
    let last = headers.len().saturating_sub(1);
    for (i, column) in t.column_iter_mut().enumerate() {
        column.set_padding((0, if i == last { 0 } else { 2 }));
    }
    t
}

/// A table as text, without the spaces that pad the last column.
pub fn shown(t: &Table) -> String {
    t.lines()
        .map(|l| l.trim_end().to_owned())
        .collect::<Vec<_>>()
        .join("\n")
}

/// `dpctl status`.
pub fn status(inspect: &dyn Inspect, output: Output, out: &mut dyn Write) -> anyhow::Result<()> {
    let status = inspect.status().context("reading the dataplane's status")?;
    match output {
        Output::Json => writeln!(out, "{}", status_json(&status))?,
        Output::Table => write!(out, "{}", status_text(&status))?,
    }
    Ok(())
}

/// The status as JSON: [`NodeStatus`] with each table's fill level in % (`percent`) added.
pub fn status_json(status: &NodeStatus) -> String {
    let mut value = serde_json::to_value(status).unwrap_or_default();
    if let Some(tables) = value.get_mut("tables").and_then(|t| t.as_array_mut()) {
        for (json, fill) in tables.iter_mut().zip(&status.tables) {
            if let Some(obj) = json.as_object_mut() {
                obj.insert("percent".to_owned(), serde_json::json!(fill.percent()));
            }
        }
    }
    serde_json::to_string_pretty(&value).unwrap_or_default()
}

fn status_text(s: &NodeStatus) -> String {
    let mut text = format!(
        "dataplane:   {}\nprogrammed:  {} services, {} frontends, {} backends, {} endpoints, {} \
         policies\nconntrack:   {} entries\npackets:     {} translated, {} dropped, {} rejected\n",
        s.dataplane,
        s.services,
        s.frontends,
        s.backends,
        s.endpoints,
        s.policies,
        s.conntrack_entries,
        s.stats.packets_translated,
        s.stats.packets_dropped,
        s.stats.packets_rejected,
    );
    text.push_str("\nATTACHMENTS\n");
    if s.attachments.is_empty() {
        text.push_str("(none)\n");
    } else {
        let mut t = table(&["PROGRAM", "HOOK", "TARGET"]);
        let mut attachments = s.attachments.clone();
        attachments.sort();
        for a in attachments {
            t.add_row([
                a.program,
                a.hook,
                a.target.unwrap_or_else(|| "-".to_owned()),
            ]);
        }
        let _ = writeln!(text, "{}", shown(&t));
    }
    if !s.tables.is_empty() {
        text.push_str("\nTABLES\n");
        let mut t = table(&["TABLE", "ENTRIES", "CAPACITY", "FILL"]);
        for fill in &s.tables {
            t.add_row([
                fill.name.clone(),
                fill.entries.to_string(),
                fill.capacity.to_string(),
                fill_level(fill.percent()),
            ]);
        }
        right_align(&mut t, &[1, 2, 3]);
        let _ = writeln!(text, "{}", shown(&t));
    }
    text.push_str("\nDROPS BY REASON\n");
    if s.stats.drops.is_empty() {
        text.push_str("(none counted)\n");
    } else {
        let mut t = table(&["REASON", "PACKETS"]);
        for (reason, n) in &s.stats.drops {
            t.add_row([reason.to_string(), n.to_string()]);
        }
        right_align(&mut t, &[1]);
        let _ = writeln!(text, "{}", shown(&t));
    }
    if !s.stats.other.is_empty() {
        text.push_str("\nCOUNTERS\n");
        let mut t = table(&["COUNTER", "VALUE"]);
        for (name, n) in &s.stats.other {
            t.add_row([name.clone(), n.to_string()]);
        }
        right_align(&mut t, &[1]);
        let _ = writeln!(text, "{}", shown(&t));
    }
    text
}

/// A fill level for people: one decimal, and `<0.1%` rather than `0.0%` for a table that is
/// not empty.
fn fill_level(percent: f64) -> String {
    if percent > 0.0 && percent < 0.05 {
        "<0.1%".to_owned()
    } else {
        format!("{percent:.1}%")
    }
}

fn right_align(t: &mut Table, columns: &[usize]) {
    for &i in columns {
        if let Some(c) = t.column_mut(i) {
            c.set_cell_alignment(CellAlignment::Right);
        }
    }
}

/// How many backends a `services` row shows before "+N more" (all with `-o wide`).
const BACKENDS_SHOWN: usize = 3;

/// `dpctl services`.
pub fn services(
    inspect: &dyn Inspect,
    output: ServicesOutput,
    out: &mut dyn Write,
) -> anyhow::Result<()> {
    let mut frontends = inspect
        .services()
        .context("reading the programmed services")?;
    frontends.sort_by(|a, b| {
        (&a.service, a.address, a.protocol).cmp(&(&b.service, b.address, b.protocol))
    });
    match output {
        ServicesOutput::Json => {
            writeln!(out, "{}", serde_json::to_string_pretty(&frontends)?)?;
        }
        ServicesOutput::Table | ServicesOutput::Wide => {
            let wide = output == ServicesOutput::Wide;
            writeln!(out, "{}", shown(&services_table(&frontends, wide)))?;
        }
    }
    Ok(())
}

fn services_table(frontends: &[LiveFrontend], wide: bool) -> Table {
    let mut t = table(&["NAMESPACE", "NAME", "TYPE", "FRONTEND", "PROTO", "BACKENDS"]);
    for f in frontends {
        let (ns, name) = names(f.service.as_ref());
        t.add_row([
            ns,
            name,
            f.kind.clone().unwrap_or_else(|| "-".to_owned()),
            frontend(f.address),
            f.protocol.to_string(),
            backend_list(&f.backends, wide),
        ]);
    }
    t
}

/// A frontend address; port 0 is the ClusterIP wildcard (every port).
fn frontend(address: SocketAddr) -> String {
    if address.port() == 0 {
        format!("{}:*", bracketed(address))
    } else {
        address.to_string()
    }
}

fn bracketed(address: SocketAddr) -> String {
    match address {
        SocketAddr::V4(a) => a.ip().to_string(),
        SocketAddr::V6(a) => format!("[{}]", a.ip()),
    }
}

fn backend_list(backends: &[SocketAddr], wide: bool) -> String {
    if backends.is_empty() {
        return "<none>".to_owned();
    }
    let shown = if wide {
        backends.len()
    } else {
        backends.len().min(BACKENDS_SHOWN)
    };
    let mut text = backends[..shown]
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join(",");
    if shown < backends.len() {
        let _ = write!(text, " + {} more", backends.len() - shown);
    }
    text
}

fn names(service: Option<&ObjectName>) -> (String, String) {
    service.map_or_else(
        || ("-".to_owned(), "-".to_owned()),
        |s| (s.namespace.to_string(), s.name.to_string()),
    )
}

/// `dpctl conntrack`.
pub fn conntrack(
    inspect: &dyn Inspect,
    service: Option<&ObjectName>,
    output: Output,
    out: &mut dyn Write,
) -> anyhow::Result<()> {
    let mut flows: Vec<Flow> = inspect
        .conntrack()
        .context("reading the connection tracking table")?
        .into_iter()
        .filter(|f| service.is_none() || f.service.as_ref() == service)
        .collect();
    flows.sort_by(|a, b| {
        (&a.service, a.frontend, a.client, a.backend)
            .cmp(&(&b.service, b.frontend, b.client, b.backend))
    });
    match output {
        Output::Json => writeln!(out, "{}", serde_json::to_string_pretty(&flows)?)?,
        Output::Table => {
            let mut t = table(&["PROTO", "CLIENT", "FRONTEND", "BACKEND", "SERVICE"]);
            for f in &flows {
                t.add_row([
                    f.protocol.to_string(),
                    f.client.to_string(),
                    f.frontend.to_string(),
                    f.backend.to_string(),
                    f.service
                        .as_ref()
                        .map_or_else(|| "-".to_owned(), ToString::to_string),
                ]);
            }
            writeln!(out, "{}", shown(&t))?;
            writeln!(out, "{} connections", flows.len())?;
        }
    }
    Ok(())
}

/// Parses `namespace/name`.
pub fn parse_object_name(s: &str) -> Result<ObjectName, String> {
    match s.split_once('/') {
        Some((ns, name)) if !ns.is_empty() && !name.is_empty() && !name.contains('/') => {
            Ok(ObjectName::new(ns, name))
        }
        _ => Err(format!("{s:?}: expected namespace/name")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fake;

    fn render(f: impl FnOnce(&mut Vec<u8>) -> anyhow::Result<()>) -> String {
        let mut out = Vec::new();
        f(&mut out).unwrap();
        String::from_utf8(out).unwrap()
    }

    #[test]
    fn only_a_want_of_privileges_is_explained() {
        let target = Target {
            backend: Choice::Ebpf,
            netns: None,
            pin_dir: "/sys/fs/bpf/x".into(),
            nft_table: "dataplane".to_owned(),
            iptables_prefix: "DP".to_owned(),
        };
        let denied = anyhow::Error::new(std::io::Error::from_raw_os_error(13)).context("opening");
        let e = explain_privileges("status", &target, denied);
        assert_eq!(
            format!("{e:#}"),
            "dpctl status needs CAP_BPF and read access to the pins in /sys/fs/bpf/x (root's: \
             0700, 0600): run it as root: opening: Permission denied (os error 13)"
        );
        let eperm = anyhow::Error::new(std::io::Error::from_raw_os_error(1));
        assert!(permission_denied(&eperm));
        let tool = anyhow::anyhow!("`nft list table inet x` failed: Operation not permitted");
        assert!(permission_denied(&tool));
        let other = anyhow::Error::new(std::io::Error::from_raw_os_error(2)).context("opening");
        let e = explain_privileges("flows", &target, other);
        assert_eq!(
            format!("{e:#}"),
            "opening: No such file or directory (os error 2)"
        );
    }

    #[test]
    fn status_shows_counts_attachments_fill_levels_and_drops() {
        let node = fake::node();
        let text = render(|out| status(&node, Output::Table, out));
        let lines: Vec<&str> = text.lines().map(str::trim_end).collect();
        assert_eq!(
            lines[..4],
            [
                "dataplane:   ebpf",
                "programmed:  2 services, 3 frontends, 5 backends, 2 endpoints, 1 policies",
                "conntrack:   4 entries",
                "packets:     10 translated, 3 dropped, 2 rejected",
            ]
        );
        let after = |title: &str, n: usize| -> Vec<String> {
            let at = lines.iter().position(|l| *l == title).expect(title);
            lines[at + 1..=at + n]
                .iter()
                .map(|l| fake::rows(l).join(""))
                .collect()
        };
        // Attachments sorted by program.
        assert_eq!(
            after("ATTACHMENTS", 3),
            [
                "PROGRAM HOOK TARGET",
                "dp_from_uplink tc-ingress eth0",
                "dp_to_pod tc-egress veth1"
            ]
        );
        assert_eq!(
            after("TABLES", 3),
            [
                "TABLE ENTRIES CAPACITY FILL",
                "dp_svc 3 8 37.5%",
                "dp_ct 0 65536 0.0%"
            ]
        );
        assert_eq!(
            after("DROPS BY REASON", 3),
            ["REASON PACKETS", "no-backend 2", "policy 3"]
        );
        assert!(!text.contains("COUNTERS"), "no other counters: {text}");
        assert!(
            text.lines().all(|l| l == l.trim_end()),
            "no trailing spaces: {text:?}"
        );
    }

    #[test]
    fn status_json_is_the_node_status_with_percentages() {
        let node = fake::node();
        let text = render(|out| status(&node, Output::Json, out));
        let value: serde_json::Value = serde_json::from_str(&text).unwrap();
        assert_eq!(value["dataplane"], "ebpf");
        assert_eq!(value["frontends"], 3);
        assert_eq!(value["conntrackEntries"], 4);
        assert_eq!(value["tables"][0]["name"], "dp_svc");
        assert_eq!(value["tables"][0]["percent"], 37.5);
        assert_eq!(value["stats"]["drops"]["no-backend"], 2);
        // The added field does not stop it from reading back as a NodeStatus.
        let back: NodeStatus = serde_json::from_value(value).unwrap();
        assert_eq!(back, node.status);
    }

    #[test]
    fn services_list_frontends_like_kubectl_get() {
        let node = fake::node();
        let text = render(|out| services(&node, ServicesOutput::Table, out));
        let rows = fake::rows(&text);
        assert_eq!(
            rows,
            [
                "NAMESPACE NAME TYPE FRONTEND PROTO BACKENDS",
                "- - - 10.96.0.99:53 UDP <none>",
                "default web ClusterIP 10.96.0.10:80 TCP \
                 10.244.0.11:8080,10.244.0.12:8080,10.244.1.11:8080 + 1 more",
                "default web NodePort 172.18.0.10:30080 TCP 10.244.0.11:8080",
            ]
        );
        let wide = render(|out| services(&node, ServicesOutput::Wide, out));
        assert!(
            wide.contains("10.244.0.11:8080,10.244.0.12:8080,10.244.1.11:8080,10.244.1.12:8080"),
            "{wide}"
        );
        let json = render(|out| services(&node, ServicesOutput::Json, out));
        let back: Vec<LiveFrontend> = serde_json::from_str(&json).unwrap();
        assert_eq!(back.len(), 3);
        assert!(back.iter().all(|f| node.services.contains(f)));
    }

    #[test]
    fn conntrack_filters_by_service() {
        let node = fake::node();
        let web = ObjectName::new("default", "web");
        let text = render(|out| conntrack(&node, Some(&web), Output::Table, out));
        let rows = fake::rows(&text);
        assert_eq!(
            rows,
            [
                "PROTO CLIENT FRONTEND BACKEND SERVICE",
                "TCP 10.244.0.5:40000 10.96.0.10:80 10.244.1.11:8080 default/web",
                "1 connections",
            ]
        );
        let json = render(|out| conntrack(&node, None, Output::Json, out));
        let all: Vec<Flow> = serde_json::from_str(&json).unwrap();
        assert_eq!(all.len(), 2);
        let other = ObjectName::new("default", "other");
        let json = render(|out| conntrack(&node, Some(&other), Output::Json, out));
        assert_eq!(json.trim(), "[]");
    }

    #[test]
    fn a_nearly_empty_table_is_not_shown_empty() {
        assert_eq!(fill_level(0.0), "0.0%");
        assert_eq!(fill_level(4.0 * 100.0 / 65536.0), "<0.1%");
        assert_eq!(fill_level(0.05), "0.1%");
        assert_eq!(fill_level(37.5), "37.5%");
        assert_eq!(fill_level(100.0), "100.0%");
    }

    #[test]
    fn the_wildcard_frontend_and_ipv6_read_well() {
        assert_eq!(frontend("10.96.0.10:0".parse().unwrap()), "10.96.0.10:*");
        assert_eq!(frontend("[fd00::10]:0".parse().unwrap()), "[fd00::10]:*");
        assert_eq!(frontend("[fd00::10]:80".parse().unwrap()), "[fd00::10]:80");
    }

    #[test]
    fn targets_name_the_agents_state() {
        use clap::Parser;
        #[derive(Parser)]
        struct T {
            #[command(flatten)]
            target: Target,
        }
        let t = T::parse_from([
            "t",
            "--netns",
            "lab-node-0",
            "--bpf-pin-dir",
            "/sys/fs/bpf/x",
            "--nft-table",
            "t0",
            "--iptables-prefix",
            "P0",
            "--backend",
            "nftables",
        ])
        .target;
        let o = t.options();
        assert_eq!(o.netns, Some(PathBuf::from("/run/netns/lab-node-0")));
        assert_eq!(o.ebpf.pin_dir, PathBuf::from("/sys/fs/bpf/x"));
        assert_eq!(o.nftables.name, "t0");
        assert_eq!(o.iptables.name, "P0");
        assert_eq!(t.backend, Choice::Nft);
        let t = T::parse_from(["t", "--netns", "/proc/1/ns/net"]).target;
        assert_eq!(t.netns_path(), Some(PathBuf::from("/proc/1/ns/net")));
        assert_eq!(parse_object_name("a/b"), Ok(ObjectName::new("a", "b")));
        for bad in ["a", "a/", "/b", "a/b/c"] {
            assert!(parse_object_name(bad).is_err(), "{bad}");
        }
    }
}
