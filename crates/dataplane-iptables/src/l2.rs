//! L2 announcements on the netfilter backends (issue 23): the node answers ARP requests and
//! neighbour solicitations for the LoadBalancer IPs and ExternalIPs of the services with
//! [`Service::l2_announce`](dataplane_core::Service::l2_announce), through the kernel's own
//! ARP and NDP code, on the uplink only. Both flavours share it; each hands over a
//! [`Filter`] of its own kind for the drop rules below.
//!
//! ```text
//!  client: who has 172.18.0.200?  ──▶ uplink ──▶ arp_process(): route of the target
//!      local 172.18.0.200 dev <uplink> table local proto 209|210   = RTN_LOCAL ──▶ reply
//!  client: NS for fd00:18::c8      ──▶ uplink ──▶ ndisc_recv_ns(): proxy entry
//!      fd00:18::c8 dev <uplink> proxy proto 209|210 (pneigh), uplink forwarding on ──▶ NA
//!  traffic to the address: service ports DNAT-ed in prerouting (the flavour's rules);
//!      the rest dropped: IPv4 in input (the local route would deliver it to the node's
//!      sockets), IPv6 in forward (it would go back out of the uplink)
//!  ARP requests for an IPv4 address from another interface (a pod's): dropped — the
//!      kernel would answer a local target on any interface (`arp_ignore=0`)
//!  a sync that adds an address ──▶ gratuitous ARP / unsolicited NA out of the uplink
//! ```
//!
//! Why these mechanisms (checked on Linux 6.18):
//! - **IPv4: a `local` route in the `local` table.** `arp_process()` (net/ipv4/arp.c) looks
//!   the target up with `ip_route_input()` on the receiving device and answers when it is
//!   `RTN_LOCAL`, after `arp_ignore()`: with `arp_ignore=0` (the default) for any local
//!   target, with `1` only for addresses configured on the receiving interface (a route is
//!   not an address: no answer), with `2` only when the sender is also in that address's
//!   subnet (none either; both tried on this kernel). A node with `arp_ignore` 1 or 2 on its uplink does not answer;
//!   the README says so. Proxy ARP (`ip neigh add proxy`, `pneigh`) does not work here:
//!   `arp_process()` consults it only when the route to the target leaves through *another*
//!   device, and the announced address is on-link on the uplink (verified: the request stays
//!   unanswered). The route's side effect is that the node owns the address: what the
//!   service's DNAT does not translate would reach the node's own sockets, so a filter drops
//!   it (kube-proxy's IPVS mode, which binds its addresses to `kube-ipvs0`, has
//!   `KUBE-IPVS-FILTER` for the same reason, `pkg/proxy/ipvs/proxier.go`,
//!   kubernetes/kubernetes#72236).
//! - **IPv6: a proxy neighbour entry** (`NTF_PROXY`, what `MetalLB`'s
//!   `internal/layer2/ndp_proxy.go` programs). `ndisc_recv_ns()` (net/ipv6/ndisc.c) answers
//!   for a configured address, or for a `pneigh` target when the receiving interface
//!   forwards and `proxy_ndp` is on; a local route is not enough (it answers for configured
//!   addresses only). Adding the entry joins the target's solicited-node group
//!   (`pndisc_constructor()`). We set `net.ipv6.conf.all.proxy_ndp=1`: the unicast
//!   solicitations of neighbour unreachability detection are addressed to the target and
//!   take `ip6_forward()`, which hands them to the proxy only with the `all` setting (with
//!   the interface's alone the client's entry fails after `delay_first_probe_time` and is
//!   re-resolved by multicast: verified). And `net.ipv6.neigh.<uplink>.proxy_delay=0`:
//!   otherwise a proxied answer waits a random time up to 0.8 s (`pneigh_enqueue()`). Both
//!   are restored on `reset()` (the values before are kept in a marker file, as the eBPF
//!   backend keeps its `accept_local` marker, so that another process restores them too).
//!   IPv6 forwarding must be on for the uplink (a Kubernetes node's is): a state announcing
//!   an IPv6 address on a node without it is refused before anything is written.
//!
//! Ownership: every route and proxy entry carries the route protocol of the flavour
//! ([`ROUTE_PROTOCOL_NFTABLES`], [`ROUTE_PROTOCOL_IPTABLES`]), so a full sync removes the
//! entries of ours it no longer wants (after a restart, too) and never one it did not create.
//! The drop rules are in the flavour's own objects (`inet <name>-l2` and `arp <name>-l2`
//! tables; `<prefix>L2` chains of iptables, ip6tables and `arptables`), outside the objects
//! its main ruleset owns. A proxy NDP entry belongs to the uplink, so IPv6 needs no ARP-like
//! filter: a pod's solicitation on its own interface finds no entry.
//!
//! Liveness: the kernel keeps answering after the agent dies (the entries stay until a
//! `reset()` or another sync removes them). The eBPF backend's responder stops on a stale
//! liveness timestamp; these backends cannot, which is their documented limit: a node whose
//! agent died keeps attracting the addresses it announced until it is drained or its entries
//! are removed.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::fs::File;
use std::net::IpAddr;
use std::path::{Path, PathBuf};

use dataplane_core::{ChangeSet, DesiredState, Error, ObjectName, Service, Warning};
use nix::sched::{setns, CloneFlags};

use crate::error::NetfilterError;
use crate::exec;

/// Route protocol (`rtm_protocol`, `NDA_PROTOCOL`) of the nftables flavour's routes and proxy
/// entries: unassigned in `/etc/iproute2/rt_protos`.
pub(crate) const ROUTE_PROTOCOL_NFTABLES: u8 = 209;
/// ... and of the iptables flavour's, so that two flavours in one namespace never remove
/// each other's.
pub(crate) const ROUTE_PROTOCOL_IPTABLES: u8 = 210;

/// Where the markers of the sysctls we changed are kept (per network namespace inode).
const MARKER_DIR: &str = "/run/dataplane-netfilter-l2";

/// The sysctls IPv6 announcements need, with the value they need; `{}` is the uplink.
const SYSCTLS: [(&str, &str); 2] = [
    ("net/ipv6/conf/all/proxy_ndp", "1"),
    ("net/ipv6/neigh/{}/proxy_delay", "0"),
];

/// How a flavour drops what reaches an announced address and is not a service's.
#[derive(Debug, Clone)]
pub(crate) enum Filter {
    /// A table of its own: `inet <name>-l2`.
    Nftables {
        /// The `nft` binary.
        nft: PathBuf,
        /// The table.
        table: String,
    },
    /// Chains of their own, `<prefix>L2` in `filter` (outside the flavour's `<prefix>-`
    /// chains, which its syncs own), jumped to first from `INPUT` (IPv4) and `FORWARD`
    /// (IPv6).
    Iptables {
        /// `iptables-restore`, `ip6tables-restore`.
        restore: [PathBuf; 2],
        /// `iptables`, `ip6tables`.
        tool: [PathBuf; 2],
        /// The chain.
        chain: String,
    },
}

impl Filter {
    /// Replaces the drop rules with ones for `addresses` on `uplink` (none: removes them).
    fn write(
        &self,
        backend: &'static str,
        netns: Option<&Path>,
        addresses: &BTreeSet<IpAddr>,
        uplink: &str,
    ) -> Result<(), NetfilterError> {
        match self {
            Filter::Nftables { nft, table } => {
                let text = nft_filter(table, addresses, uplink);
                exec::run(backend, netns, nft, &["-f", "-"], Some(&text), "l2 filter")?;
            }
            Filter::Iptables {
                restore,
                tool,
                chain,
            } => {
                for (i, (hook, v4)) in [("INPUT", true), ("FORWARD", false)].iter().enumerate() {
                    let mine: Vec<IpAddr> = addresses
                        .iter()
                        .copied()
                        .filter(|a| a.is_ipv4() == *v4)
                        .collect();
                    iptables_filter(backend, netns, &restore[i], &tool[i], chain, hook, &mine)?;
                }
                let v4: Vec<IpAddr> = addresses.iter().copied().filter(IpAddr::is_ipv4).collect();
                arptables_filter(backend, netns, chain, uplink, &v4)?;
            }
        }
        Ok(())
    }
}

/// The nft transaction that leaves table `inet <table>` with a drop rule for `addresses`
/// and table `arp <table>` with one for the ARP requests for them that do not come in
/// through `uplink` (or without the tables when there are none).
fn nft_filter(table: &str, addresses: &BTreeSet<IpAddr>, uplink: &str) -> String {
    let mut t = format!(
        "table inet {table} {{}}\ndelete table inet {table}\n\
         table arp {table} {{}}\ndelete table arp {table}\n"
    );
    if addresses.is_empty() {
        return t;
    }
    let v4: Vec<String> = addresses
        .iter()
        .filter(|a| a.is_ipv4())
        .map(ToString::to_string)
        .collect();
    if !v4.is_empty() {
        let _ = writeln!(
            t,
            "table arp {table} {{\n  set announced {{ type ipv4_addr; elements = {{ {} }}; }}\n  \
             chain input {{ type filter hook input priority filter; policy accept; \
             arp operation request iifname != \"{uplink}\" arp daddr ip @announced counter drop \
             comment \"l2: announced on the uplink only\"; }}\n}}",
            v4.join(", ")
        );
    }
    let list = |v4: bool| {
        addresses
            .iter()
            .filter(|a| a.is_ipv4() == v4)
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join(", ")
    };
    let _ = writeln!(t, "table inet {table} {{");
    for (name, kind, v4) in [
        ("announced-v4", "ipv4_addr", true),
        ("announced-v6", "ipv6_addr", false),
    ] {
        let elements = list(v4);
        let _ = write!(t, "  set {name} {{ type {kind};");
        if !elements.is_empty() {
            let _ = write!(t, " elements = {{ {elements} }};");
        }
        let _ = writeln!(t, " }}");
    }
    let _ = writeln!(
        t,
        "  chain input {{ type filter hook input priority filter; policy accept; \
         ip daddr @announced-v4 counter drop comment \"l2: not a service port\"; }}"
    );
    let _ = writeln!(
        t,
        "  chain forward {{ type filter hook forward priority filter; policy accept; \
         ip6 daddr @announced-v6 counter drop comment \"l2: not a service port\"; }}"
    );
    let _ = writeln!(t, "}}");
    t
}

/// Leaves `chain` of one family with a drop rule per address of `addresses`, jumped to
/// first from `hook`; without addresses, removes both.
fn iptables_filter(
    backend: &'static str,
    netns: Option<&Path>,
    restore: &Path,
    tool: &Path,
    chain: &str,
    hook: &str,
    addresses: &[IpAddr],
) -> Result<(), NetfilterError> {
    let jump = ["-w", "-C", hook, "-j", chain];
    let hooked = exec::run(backend, netns, tool, &jump, None, "l2 filter").is_ok();
    if addresses.is_empty() {
        if hooked {
            exec::run(
                backend,
                netns,
                tool,
                &["-w", "-D", hook, "-j", chain],
                None,
                "l2 filter",
            )?;
        }
        // The chain may not exist: nothing to remove then.
        let _ = exec::run(
            backend,
            netns,
            tool,
            &["-w", "-F", chain],
            None,
            "l2 filter",
        )
        .and_then(|_| {
            exec::run(
                backend,
                netns,
                tool,
                &["-w", "-X", chain],
                None,
                "l2 filter",
            )
        });
        return Ok(());
    }
    // Declaring the chain in a `--noflush` restore empties it: one atomic replacement.
    let mut text = format!("*filter\n:{chain} - [0:0]\n");
    for a in addresses {
        let len = if a.is_ipv4() { 32 } else { 128 };
        let _ = writeln!(
            text,
            "-A {chain} -d {a}/{len} -m comment --comment \"l2: not a service port\" -j DROP"
        );
    }
    text.push_str("COMMIT\n");
    exec::run(
        backend,
        netns,
        restore,
        &["-w", "--noflush"],
        Some(&text),
        "l2 filter",
    )?;
    if !hooked {
        exec::run(
            backend,
            netns,
            tool,
            &["-w", "-I", hook, "1", "-j", chain],
            None,
            "l2 filter",
        )?;
    }
    Ok(())
}

/// Leaves arptables chain `chain` with a drop rule per IPv4 address of `addresses` for the
/// ARP requests that do not come in through `uplink`, jumped to first from `INPUT`; without
/// addresses, removes both. (The `arptables` on `PATH`: a drop holds whichever of the
/// kernel's two ARP filter APIs it programs.)
fn arptables_filter(
    backend: &'static str,
    netns: Option<&Path>,
    chain: &str,
    uplink: &str,
    addresses: &[IpAddr],
) -> Result<(), NetfilterError> {
    let tool = Path::new("arptables");
    let run = |args: &[&str]| exec::run(backend, netns, tool, args, None, "l2 arp filter");
    let hooked = run(&["-C", "INPUT", "-j", chain]).is_ok();
    if addresses.is_empty() {
        if hooked {
            run(&["-D", "INPUT", "-j", chain])?;
        }
        // The chain may not exist: nothing to remove then.
        let _ = run(&["-F", chain]).and_then(|_| run(&["-X", chain]));
        return Ok(());
    }
    if run(&["-F", chain]).is_err() {
        run(&["-N", chain])?;
    }
    for a in addresses {
        let a = a.to_string();
        run(&[
            "-A", chain, "!", "-i", uplink, "--opcode", "Request", "-d", &a, "-j", "DROP",
        ])?;
    }
    if !hooked {
        run(&["-I", "INPUT", "1", "-j", chain])?;
    }
    Ok(())
}

/// Runs `f` on a thread inside `netns` (`setns` changes only the calling thread).
fn in_netns<T: Send>(
    backend: &'static str,
    netns: Option<&Path>,
    f: impl FnOnce() -> Result<T, NetfilterError> + Send,
) -> Result<T, NetfilterError> {
    let Some(path) = netns else {
        return f();
    };
    std::thread::scope(|s| {
        s.spawn(|| {
            let file =
                File::open(path).map_err(|e| io_error(backend, "enter the namespace", &e))?;
            setns(&file, CloneFlags::CLONE_NEWNET).map_err(|e| NetfilterError::Command {
                backend,
                program: "setns".to_owned(),
                operation: "l2 announcements".to_owned(),
                status: "error".to_owned(),
                stderr: e.to_string(),
            })?;
            f()
        })
        .join()
        .unwrap_or_else(|_| {
            Err(NetfilterError::Internal {
                backend,
                detail: "the l2 announcement thread panicked".to_owned(),
            })
        })
    })
}

fn io_error(backend: &'static str, what: &str, e: &std::io::Error) -> NetfilterError {
    NetfilterError::Command {
        backend,
        program: "l2 announcements".to_owned(),
        operation: what.to_owned(),
        status: "error".to_owned(),
        stderr: e.to_string(),
    }
}

/// Where and how a backend programs its announcements: built from its configuration for
/// each call (the configuration may change between syncs).
#[derive(Debug, Clone)]
pub(crate) struct Kernel {
    /// Backend name.
    pub(crate) backend: &'static str,
    /// Its network namespace.
    pub(crate) netns: Option<PathBuf>,
    /// Its route protocol.
    pub(crate) protocol: u8,
    /// Its drop rules.
    pub(crate) filter: Filter,
}

/// The L2 announcements of one backend: what it has programmed.
#[derive(Debug, Default)]
pub(crate) struct Announcer {
    /// The announced addresses of each service of the last successful sync (for partial
    /// syncs).
    by_service: BTreeMap<ObjectName, BTreeSet<IpAddr>>,
    /// The uplink and the addresses the kernel answers for, as the last successful sync left
    /// them; `None`: unknown (never synced, or a failure since), the next sync reads the
    /// kernel.
    programmed: Option<(String, BTreeSet<IpAddr>)>,
}

impl Kernel {
    fn netns(&self) -> Option<&Path> {
        self.netns.as_deref()
    }

    fn ip(&self, args: &[&str], stdin: Option<&str>, op: &str) -> Result<String, NetfilterError> {
        exec::run(self.backend, self.netns(), Path::new("ip"), args, stdin, op)
    }

    fn refused(&self, service: &ObjectName, feature: String) -> Error {
        Error::Unsupported {
            dataplane: self.backend.to_owned(),
            feature,
            object: format!("service {service} (field l2Announce)"),
        }
    }

    /// What the kernel must allow before anything is written: the uplink exists, and for an
    /// IPv6 address it forwards (proxy NDP answers only there).
    fn check(
        &self,
        uplink: &str,
        wanted: &BTreeMap<ObjectName, BTreeSet<IpAddr>>,
    ) -> Result<(), Error> {
        let Some((first, _)) = wanted.iter().find(|(_, a)| !a.is_empty()) else {
            return Ok(());
        };
        if self
            .ip(
                &["-j", "link", "show", "dev", uplink],
                None,
                "l2: the uplink",
            )
            .is_err()
        {
            return Err(self.refused(
                first,
                format!("L2 announcements on the uplink {uplink}, which the node's network namespace does not have"),
            ));
        }
        let v4 = wanted
            .iter()
            .find_map(|(n, set)| set.iter().find(|a| a.is_ipv4()).map(|a| (n, a)));
        if let (Some((service, address)), Filter::Iptables { .. }) = (v4, &self.filter) {
            let tool = Path::new("arptables");
            if exec::run(
                self.backend,
                self.netns(),
                tool,
                &["-V"],
                None,
                "l2: arptables",
            )
            .is_err()
            {
                return Err(self.refused(
                    service,
                    format!("announcing the IPv4 address {address} without the arptables tool (ARP requests from other interfaces than the uplink must be dropped)"),
                ));
            }
        }
        let Some((service, address)) = wanted
            .iter()
            .find_map(|(n, set)| set.iter().find(|a| a.is_ipv6()).map(|a| (n, a)))
        else {
            return Ok(());
        };
        let key = format!("net/ipv6/conf/{uplink}/forwarding");
        let value = in_netns(self.backend, self.netns(), || {
            std::fs::read_to_string(Path::new("/proc/sys").join(&key))
                .map_err(|e| io_error(self.backend, &key, &e))
        })?;
        if value.trim() == "1" {
            return Ok(());
        }
        Err(self.refused(
            service,
            format!(
                "announcing the IPv6 address {address} while {} is {} (the kernel answers proxied neighbour solicitations only on a forwarding interface)",
                key.replace('/', "."),
                value.trim()
            ),
        ))
    }

    /// The entries of ours the kernel holds on any device: (address, device).
    fn entries(&self) -> Result<BTreeSet<(IpAddr, String)>, NetfilterError> {
        let proto = self.protocol.to_string();
        let routes = self.ip(
            &[
                "-j", "-4", "route", "show", "table", "local", "proto", &proto,
            ],
            None,
            "l2: list routes",
        )?;
        let proxies = self.ip(
            &["-j", "-6", "neigh", "show", "proxy", "proto", &proto],
            None,
            "l2: list proxy entries",
        )?;
        let mut found = BTreeSet::new();
        for text in [routes, proxies] {
            let text = if text.trim().is_empty() {
                "[]"
            } else {
                text.as_str()
            };
            let rows: Vec<serde_json::Value> =
                serde_json::from_str(text).map_err(|e| NetfilterError::Parse {
                    backend: self.backend,
                    operation: "l2: list routes and proxy entries".to_owned(),
                    detail: e.to_string(),
                })?;
            for row in rows {
                let dst = row["dst"].as_str().and_then(|d| d.parse::<IpAddr>().ok());
                if let (Some(dst), Some(dev)) = (dst, row["dev"].as_str()) {
                    found.insert((dst, dev.to_owned()));
                }
            }
        }
        Ok(found)
    }

    /// The `ip -batch` line that adds or removes the entry of `ip` on `dev`.
    fn line(&self, add: bool, ip: IpAddr, dev: &str) -> String {
        let p = self.protocol;
        match (ip, add) {
            (IpAddr::V4(_), true) => {
                format!("route replace local {ip}/32 dev {dev} table local proto {p}")
            }
            (IpAddr::V4(_), false) => {
                format!("route del local {ip}/32 dev {dev} table local proto {p}")
            }
            (IpAddr::V6(_), true) => format!("neigh replace proxy {ip} dev {dev} proto {p}"),
            (IpAddr::V6(_), false) => format!("neigh del proxy {ip} dev {dev}"),
        }
    }

    fn batch(&self, lines: &[String], op: &str) -> Result<(), NetfilterError> {
        if lines.is_empty() {
            return Ok(());
        }
        let text = lines.join("\n") + "\n";
        self.ip(&["-batch", "-"], Some(&text), op).map(|_| ())
    }

    /// Brings the kernel from `have` (address, device) to `want` on `uplink`: the changed
    /// entries only, the filter when the addresses changed, the sysctls when an IPv6 address
    /// is added, and the announcements of the added addresses (a failed send is a warning:
    /// the kernel answers all the same).
    fn converge(
        &self,
        uplink: &str,
        have: &BTreeSet<(IpAddr, String)>,
        want: &BTreeSet<IpAddr>,
        warnings: &mut Vec<Warning>,
    ) -> Result<(), NetfilterError> {
        let target: BTreeSet<(IpAddr, String)> =
            want.iter().map(|a| (*a, uplink.to_owned())).collect();
        let removed: Vec<String> = have
            .difference(&target)
            .map(|(a, dev)| self.line(false, *a, dev))
            .collect();
        let added: Vec<IpAddr> = target.difference(have).map(|(a, _)| *a).collect();
        if added.iter().any(IpAddr::is_ipv6) {
            self.sysctls(uplink)?;
        }
        let had: BTreeSet<IpAddr> = have.iter().map(|(a, _)| *a).collect();
        // The filter before the routes when adding (the node never owns an address
        // unfiltered), after them when removing.
        if had != *want && !want.is_empty() {
            self.filter
                .write(self.backend, self.netns(), want, uplink)?;
        }
        let mut lines = removed;
        lines.extend(added.iter().map(|a| self.line(true, *a, uplink)));
        self.batch(&lines, "l2: routes and proxy entries")?;
        if had != *want && want.is_empty() {
            self.filter
                .write(self.backend, self.netns(), want, uplink)?;
        }
        if added.is_empty() {
            return Ok(());
        }
        let sent = in_netns(self.backend, self.netns(), || {
            dataplane_core::l2::announce(uplink, added.iter().copied())
                .map_err(|e| io_error(self.backend, "l2: gratuitous announcements", &e))
        });
        if let Err(e) = sent {
            tracing::warn!(error = %e, "gratuitous ARP / unsolicited NA not sent");
            warnings.push(Warning {
                object: format!("{} dataplane", self.backend),
                field: "l2Announce".to_owned(),
                message: format!(
                    "the gratuitous ARP / unsolicited neighbour advertisement of {added:?} was not sent (neighbours learn the new MAC when their entries expire): {}",
                    dataplane_core::error_chain(&e)
                ),
            });
        }
        Ok(())
    }

    /// The marker file of this backend's namespace: the sysctl values before we changed them.
    fn marker(&self) -> Result<PathBuf, NetfilterError> {
        use std::os::unix::fs::MetadataExt;
        let ns = self
            .netns()
            .map_or_else(|| PathBuf::from("/proc/self/ns/net"), Path::to_path_buf);
        let meta = std::fs::metadata(&ns).map_err(|e| io_error(self.backend, "l2: marker", &e))?;
        Ok(Path::new(MARKER_DIR).join(format!(
            "{}-{}-{}-{}",
            self.backend,
            self.protocol,
            meta.dev(),
            meta.ino()
        )))
    }

    /// Sets [`SYSCTLS`] for `uplink`, recording the values before in the marker (once: the
    /// first values are the ones to restore).
    fn sysctls(&self, uplink: &str) -> Result<(), NetfilterError> {
        let marker = self.marker()?;
        let backend = self.backend;
        in_netns(backend, self.netns(), || {
            let mut before = String::new();
            let mut changes = Vec::new();
            for (key, value) in SYSCTLS {
                let key = key.replace("{}", uplink);
                let path = Path::new("/proc/sys").join(&key);
                let now =
                    std::fs::read_to_string(&path).map_err(|e| io_error(backend, &key, &e))?;
                if now.trim() != value {
                    let _ = writeln!(before, "{key}={}", now.trim());
                    changes.push((path, value));
                }
            }
            if changes.is_empty() {
                return Ok(());
            }
            // Marker first: a crash in between leaves a marker for values not yet changed,
            // which a later restore writes again, harmlessly. An existing one is kept: it
            // has the values from before the first change.
            if !marker.exists() {
                std::fs::create_dir_all(MARKER_DIR)
                    .map_err(|e| io_error(backend, "l2: marker directory", &e))?;
                std::fs::write(&marker, before).map_err(|e| io_error(backend, "l2: marker", &e))?;
            }
            for (path, value) in changes {
                std::fs::write(&path, value)
                    .map_err(|e| io_error(backend, &path.display().to_string(), &e))?;
            }
            Ok(())
        })
    }

    /// Writes back the values the marker recorded, then removes it.
    fn restore_sysctls(&self) -> Result<(), NetfilterError> {
        let marker = self.marker()?;
        let Ok(text) = std::fs::read_to_string(&marker) else {
            return Ok(());
        };
        let backend = self.backend;
        in_netns(backend, self.netns(), || {
            for (key, value) in text.lines().filter_map(|l| l.split_once('=')) {
                match std::fs::write(Path::new("/proc/sys").join(key), value) {
                    Ok(()) => {}
                    // The uplink is gone, and its settings with it.
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                    Err(e) => return Err(io_error(backend, key, &e)),
                }
            }
            Ok(())
        })?;
        std::fs::remove_file(&marker).map_err(|e| io_error(self.backend, "l2: marker", &e))
    }
}

/// The addresses `services` announce, by service.
fn by_service<'a>(
    services: impl IntoIterator<Item = &'a Service>,
) -> BTreeMap<ObjectName, BTreeSet<IpAddr>> {
    services
        .into_iter()
        .filter(|s| s.l2_announce)
        .map(|s| (s.name.clone(), dataplane_core::l2::announced_by(s)))
        .collect()
}

impl Kernel {
    /// Checks a full sync to `desired` before anything is written.
    pub(crate) fn check_state(&self, desired: &DesiredState) -> Result<(), Error> {
        self.check(
            &desired.node.interfaces.uplink,
            &by_service(&desired.services),
        )
    }
}

impl Announcer {
    /// The announced addresses by service after `changes`.
    fn after(&self, changes: &ChangeSet) -> BTreeMap<ObjectName, BTreeSet<IpAddr>> {
        let mut by = self.by_service.clone();
        for (name, change) in &changes.services {
            by.remove(name);
            by.extend(by_service(change.current.as_ref()));
        }
        by
    }

    /// Checks a partial sync of `changes` on `uplink` before anything is written.
    pub(crate) fn check_changes(
        &self,
        k: &Kernel,
        uplink: &str,
        changes: &ChangeSet,
    ) -> Result<(), Error> {
        let after = self.after(changes);
        // Nothing announced changes: nothing to check (no tool run per partial sync).
        if after == self.by_service && self.programmed.is_some() {
            return Ok(());
        }
        k.check(uplink, &after)
    }

    /// A full sync to `desired` (checked with [`Kernel::check_state`]): removes the
    /// entries of ours it no longer wants, wherever they are, adds the missing ones.
    pub(crate) fn sync_state(
        &mut self,
        k: &Kernel,
        desired: &DesiredState,
        warnings: &mut Vec<Warning>,
    ) -> Result<(), Error> {
        let uplink = &desired.node.interfaces.uplink;
        let by = by_service(&desired.services);
        let want: BTreeSet<IpAddr> = by.values().flatten().copied().collect();
        // Nothing announced, before or now (as the last successful sync left it): no tool
        // run per full sync for the nodes that announce nothing. The first sync, and any
        // after a failure, read the kernel and remove what an earlier process left.
        if want.is_empty() && matches!(&self.programmed, Some((_, had)) if had.is_empty()) {
            self.by_service = by;
            return Ok(());
        }
        self.programmed = None;
        let have = k.entries()?;
        k.converge(uplink, &have, &want, warnings)?;
        self.by_service = by;
        self.programmed = Some((uplink.clone(), want));
        Ok(())
    }

    /// A partial sync of `changes` (checked with [`Announcer::check_changes`]) on `uplink`:
    /// only the addresses that changed.
    pub(crate) fn sync_changes(
        &mut self,
        k: &Kernel,
        uplink: &str,
        changes: &ChangeSet,
        warnings: &mut Vec<Warning>,
    ) -> Result<(), Error> {
        let by = self.after(changes);
        let want: BTreeSet<IpAddr> = by.values().flatten().copied().collect();
        let have = match self.programmed.take() {
            Some((dev, addresses)) => addresses.into_iter().map(|a| (a, dev.clone())).collect(),
            None => k.entries()?,
        };
        k.converge(uplink, &have, &want, warnings)?;
        self.by_service = by;
        self.programmed = Some((uplink.to_owned(), want));
        Ok(())
    }

    /// Removes every entry of ours and the filter, and puts the sysctls we changed back.
    pub(crate) fn reset(&mut self, k: &Kernel) -> Result<(), Error> {
        self.programmed = None;
        self.by_service.clear();
        let lines: Vec<String> = k
            .entries()?
            .iter()
            .map(|(a, dev)| k.line(false, *a, dev))
            .collect();
        k.batch(&lines, "l2: remove routes and proxy entries")?;
        k.filter.write(k.backend, k.netns(), &BTreeSet::new(), "")?;
        k.restore_sysctls()?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nft_filter_text() {
        let a: BTreeSet<IpAddr> = ["172.18.0.200", "fd00:18::c8"]
            .iter()
            .map(|s| s.parse().unwrap())
            .collect();
        let t = nft_filter("dataplane-l2", &a, "eth0");
        assert!(t.starts_with("table inet dataplane-l2 {}\ndelete table inet dataplane-l2\n"));
        assert!(
            t.contains("arp operation request iifname != \"eth0\" arp daddr ip @announced"),
            "{t}"
        );
        assert!(
            t.contains("set announced-v4 { type ipv4_addr; elements = { 172.18.0.200 }; }"),
            "{t}"
        );
        assert!(
            t.contains("set announced-v6 { type ipv6_addr; elements = { fd00:18::c8 }; }"),
            "{t}"
        );
        assert!(t.contains("hook input") && t.contains("ip daddr @announced-v4 counter drop"));
        assert!(t.contains("hook forward") && t.contains("ip6 daddr @announced-v6 counter drop"));
        // Nothing announced: the table goes.
        assert_eq!(
            nft_filter("x", &BTreeSet::new(), "eth0"),
            "table inet x {}\ndelete table inet x\ntable arp x {}\ndelete table arp x\n"
        );
    }
}
