//! The hairpin ipsets ([`NetfilterConfig::hairpin_ipset`](crate::NetfilterConfig::hairpin_ipset)):
//! one `hash:ip,port,ip` set per family of this node's backends, `ip,proto:port,ip`, that
//! `DP-POSTROUTING` matches `dst,dst,src` after the DNAT to masquerade a backend reaching
//! itself through a service. kube-proxy's IPVS mode does the same with its `KUBE-LOOP-BACK`
//! set (pkg/proxy/ipvs/ipset.go: `kubeLoopBackIPSet`, `HashIPPortIP`; pkg/proxy/ipvs/proxier.go:
//! an entry per local endpoint, matched `dst,dst,src` in `KUBE-POSTROUTING`). With it no
//! backend needs a chain of its own for the hairpin mark, which is what the restore tools pay
//! for at scale (a chain per backend: `benches/notes.md`, issue 24).
//!
//! A member too many is harmless (a DNAT-ed connection whose source is its new destination
//! is a hairpin, whichever service it went through: see [`crate::plan::hairpin_candidates`]),
//! a member missing breaks a hairpin connection. So the members a sync needs are added
//! before its rules load; a full sync makes the set exact afterwards (a fresh set swapped
//! in), a partial sync only adds (as the nftables flavour's hairpin set; the next full sync
//! removes what went). Pure functions writing `ipset restore` input (`-exist` on each line
//! that may find its work done); the backend runs the tool.

use std::collections::BTreeSet;
use std::fmt::Write;
use std::net::IpAddr;

use dataplane_core::{DesiredState, IpFamily, Protocol, Service};

use crate::plan::{hairpin_candidates, proto_name, service_ports, Choice};

/// A member: a backend of this node, its protocol and port.
pub type Member = (IpAddr, Protocol, u16);

/// The hairpin set of `family`: `<prefix>-hairpin-v4` / `-v6` (not a name of
/// [`super::policy::is_our_set`]'s: the policy sets' convergence leaves it alone).
pub fn set_name(prefix: &str, family: IpFamily) -> String {
    match family {
        IpFamily::V4 => format!("{prefix}-hairpin-v4"),
        IpFamily::V6 => format!("{prefix}-hairpin-v6"),
    }
}

/// Both families' set names.
pub fn set_names(prefix: &str) -> [String; 2] {
    [IpFamily::V4, IpFamily::V6].map(|f| set_name(prefix, f))
}

/// The members of `s` (planned against `state`'s node) in `family`: its backends on this
/// node, by every port they serve.
pub fn service_members(state: &DesiredState, s: &Service, family: IpFamily) -> BTreeSet<Member> {
    let local: BTreeSet<IpAddr> = hairpin_candidates(s, &state.node).collect();
    let mut out = BTreeSet::new();
    if local.is_empty() {
        return out;
    }
    for pp in service_ports(state, s)
        .iter()
        .filter(|p| p.family == family)
    {
        for choice in [&pp.internal, &pp.external, &pp.cluster] {
            if let Choice::Backends(b) = choice {
                out.extend(
                    b.iter()
                        .filter(|(a, _)| local.contains(&a.ip()))
                        .map(|(a, _)| (a.ip(), pp.protocol, a.port())),
                );
            }
        }
    }
    out
}

/// The members of every service of `state` in `family`.
pub fn members(state: &DesiredState, family: IpFamily) -> BTreeSet<Member> {
    let mut out = BTreeSet::new();
    for s in &state.services {
        out.extend(service_members(state, s, family));
    }
    out
}

fn create(out: &mut dyn Write, name: &str, family: IpFamily, max: u32) -> std::fmt::Result {
    let family = match family {
        IpFamily::V4 => "inet",
        IpFamily::V6 => "inet6",
    };
    writeln!(
        out,
        "create {name} hash:ip,port,ip family {family} maxelem {max} -exist"
    )
}

fn add(out: &mut dyn Write, name: &str, (ip, proto, port): &Member) -> std::fmt::Result {
    let proto = proto_name(*proto);
    writeln!(out, "add {name} {ip},{proto}:{port},{ip} -exist")
}

/// Input that creates both sets if missing and adds `members` (per family, IPv4 first):
/// what the rules about to load need.
pub fn write_adds(
    prefix: &str,
    members: &[BTreeSet<Member>; 2],
    max: u32,
    out: &mut dyn Write,
) -> std::fmt::Result {
    write_sets(prefix, members, max, false, out)
}

/// Input that makes both sets hold exactly `members`: a fresh set filled and swapped in
/// (atomic for the rules that match it), the old one destroyed.
pub fn write_exact(
    prefix: &str,
    members: &[BTreeSet<Member>; 2],
    max: u32,
    out: &mut dyn Write,
) -> std::fmt::Result {
    write_sets(prefix, members, max, true, out)
}

/// [`write_adds`], or with `exact` [`write_exact`].
fn write_sets(
    prefix: &str,
    members: &[BTreeSet<Member>; 2],
    max: u32,
    exact: bool,
    out: &mut dyn Write,
) -> std::fmt::Result {
    for (family, members) in [IpFamily::V4, IpFamily::V6].into_iter().zip(members) {
        let name = set_name(prefix, family);
        create(out, &name, family, max)?;
        let fresh = format!("{name}-new");
        let into = if exact {
            create(out, &fresh, family, max)?;
            writeln!(out, "flush {fresh}")?;
            &fresh
        } else {
            &name
        };
        for m in members {
            add(out, into, m)?;
        }
        if exact {
            writeln!(out, "swap {fresh} {name}")?;
            writeln!(out, "destroy {fresh}")?;
        }
    }
    Ok(())
}

/// Whether set `name` is a hairpin set of `prefix` (or a fresh set a [`write_exact`] left).
pub fn is_hairpin_set(prefix: &str, name: &str) -> bool {
    set_names(prefix)
        .iter()
        .any(|n| name == n || name.strip_prefix(n.as_str()) == Some("-new"))
}

/// The hairpin sets among the set names `listed` (`ipset list -n`), to destroy on reset.
pub fn ours_in<'a>(prefix: &str, listed: &'a str) -> Vec<&'a str> {
    listed
        .lines()
        .map(str::trim)
        .filter(|l| is_hairpin_set(prefix, l))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writes_members_as_ip_proto_port_ip() {
        let m = [
            BTreeSet::from([("10.244.0.5".parse().unwrap(), Protocol::Tcp, 8080)]),
            BTreeSet::from([("fd00::5".parse().unwrap(), Protocol::Udp, 53)]),
        ];
        let mut out = String::new();
        write_adds("DP", &m, 1024, &mut out).unwrap();
        assert_eq!(
            out,
            "create DP-hairpin-v4 hash:ip,port,ip family inet maxelem 1024 -exist\n\
             add DP-hairpin-v4 10.244.0.5,tcp:8080,10.244.0.5 -exist\n\
             create DP-hairpin-v6 hash:ip,port,ip family inet6 maxelem 1024 -exist\n\
             add DP-hairpin-v6 fd00::5,udp:53,fd00::5 -exist\n"
        );
        let mut out = String::new();
        write_exact("DP", &m, 1024, &mut out).unwrap();
        assert!(out.contains(
            "flush DP-hairpin-v4-new\nadd DP-hairpin-v4-new 10.244.0.5,tcp:8080,10.244.0.5 -exist\n\
             swap DP-hairpin-v4-new DP-hairpin-v4\ndestroy DP-hairpin-v4-new\n"
        ));
        assert_eq!(
            ours_in(
                "DP",
                "DP-hairpin-v4\nDP-v4-X\nDPX-hairpin-v4\nDP-hairpin-v6-new\n"
            ),
            ["DP-hairpin-v4", "DP-hairpin-v6-new"]
        );
    }
}
