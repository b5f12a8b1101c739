//! L2 announcements: the uplink answers ARP requests and neighbour solicitations for the
//! LoadBalancer IPs and ExternalIPs of services with
//! [`Service::l2_announce`](dataplane_core::Service::l2_announce)
//! (`bpf/lib/l2_responder.h`, at XDP when it is attached, else in `dp_from_uplink`).
//!
//! - `dp_l2_addrs`: (address, uplink ifindex) → answers sent, filled from
//!   [`dataplane_core::l2::announced_addresses`]: a full sync reconciles the map with the
//!   state, an incremental one writes only the addresses its changed services add or drop
//!   (an address two services announce stays until neither does).
//! - `dp_l2_cfg[0]`: the uplink's MAC and the liveness: the programs answer only while the
//!   last refresh (`CLOCK_MONOTONIC`, which is `bpf_ktime_get_ns()`) is at most
//!   [`EbpfConfig::l2_liveness`](crate::EbpfConfig::l2_liveness) old. Every sync and every
//!   `maintain()` refreshes it. Cilium does the same with its agent liveness (a timestamp the
//!   agent writes every second) and `l2_announcements_max_liveness`: a node whose agent is
//!   gone stops answering, and the node that takes the lease over is then the only one that
//!   does.
//! - After a sync that adds addresses, and whenever the liveness is refreshed after having
//!   lapsed (the node was quiet, or this process is new), the node sends a gratuitous ARP or
//!   an unsolicited neighbour advertisement for each address it now answers for
//!   ([`dataplane_core::l2::announce_on`], in the node's namespace), so that neighbours whose
//!   caches hold another node's MAC (the previous announcer's) move at once, as `MetalLB`'s and
//!   kube-vip's speakers do on a failover and Cilium's l2announcer does with gratuitous ARPs.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;
use std::time::Duration;

use std::path::Path;

use dataplane_core::l2::{announced_by, Link};
use dataplane_core::{ChangeSet, DesiredState, Error, ObjectName, Warning};

use crate::error::{removed, EbpfError};
use crate::loader::L2Maps;
use crate::map_table;
use crate::maps::{family_of, Addr, L2Cfg, L2Key, L2Value, L2_ADDRS};
use crate::netns;
use crate::plan::BACKEND;

/// What the L2 maps hold, and what a sync needs to change them in proportion to its
/// changes.
#[derive(Debug, Default)]
pub(crate) struct L2State {
    /// The keys of `dp_l2_addrs`.
    written: BTreeSet<L2Key>,
    /// Per announcing service of the applied state, its addresses.
    by_service: BTreeMap<ObjectName, BTreeSet<IpAddr>>,
    /// The uplink's name, MAC and ifindex at the last sync that had announcements.
    uplink: Option<Uplink>,
    /// When the liveness was last written (`CLOCK_MONOTONIC`); `None`: not by this process.
    refreshed: Option<Duration>,
    /// [`EbpfConfig::l2_liveness`](crate::EbpfConfig::l2_liveness).
    window: Duration,
}

/// The interface the addresses are announced on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Uplink {
    pub name: String,
    pub link: Link,
}

/// What a sync will write: the announcing services, the union of their addresses and the
/// uplink they are announced on (`None` when there are none).
#[derive(Debug)]
pub(crate) struct L2Plan {
    by_service: BTreeMap<ObjectName, BTreeSet<IpAddr>>,
    wanted: BTreeSet<IpAddr>,
    uplink: Option<Uplink>,
}

impl L2State {
    /// The state of the (adopted) maps: the addresses an earlier process left.
    pub(crate) fn read(maps: &L2Maps, window: Duration) -> Result<Self, EbpfError> {
        let mut written = BTreeSet::new();
        for key in maps.addrs.keys() {
            written.insert(
                key.map_err(|e| EbpfError::map(map_table::L2_ADDRS_MAP.name, "reading", e))?,
            );
        }
        Ok(Self {
            written,
            window,
            ..Self::default()
        })
    }

    /// The plan of a full sync of `desired` (`changes` `None`) or of an incremental one
    /// (`changes`' services against the applied ones), on `node`'s uplink in the namespace
    /// `netns`. Refuses, before anything is written, more addresses than `dp_l2_addrs` holds
    /// and addresses to announce on an uplink without an Ethernet address.
    pub(crate) fn plan(
        &self,
        desired: &DesiredState,
        changes: Option<&ChangeSet>,
        node: &dataplane_core::Node,
        netns: Option<&Path>,
    ) -> Result<L2Plan, Error> {
        let by_service = self.announcing(desired, changes);
        let wanted: BTreeSet<IpAddr> = by_service.values().flatten().copied().collect();
        if wanted.len() > L2_ADDRS as usize {
            return Err(Error::CapacityExceeded {
                what: format!("{} (L2-announced addresses)", map_table::L2_ADDRS_MAP.name),
                needed: wanted.len(),
                capacity: L2_ADDRS as usize,
            });
        }
        let uplink = if wanted.is_empty() {
            None
        } else {
            let name = node.interfaces.uplink.clone();
            let uplink = netns::in_netns(netns, || uplink_of(&name))?;
            Some(uplink.ok_or_else(|| Error::Unsupported {
                dataplane: BACKEND.to_owned(),
                feature: "L2 announcements on an uplink without an Ethernet address".to_owned(),
                object: format!("node {} interfaces.uplink {name}", node.name),
            })?)
        };
        Ok(L2Plan {
            by_service,
            wanted,
            uplink,
        })
    }

    /// Per announcing service, its addresses: `desired`'s (a full sync), or the applied ones
    /// with `changes`' services changed.
    fn announcing(
        &self,
        desired: &DesiredState,
        changes: Option<&ChangeSet>,
    ) -> BTreeMap<ObjectName, BTreeSet<IpAddr>> {
        match changes {
            None => desired
                .services
                .iter()
                .filter(|s| s.l2_announce)
                .map(|s| (s.name.clone(), announced_by(s)))
                .collect(),
            Some(changes) => {
                let mut by_service = self.by_service.clone();
                for (name, change) in &changes.services {
                    match change.current.as_ref().map(announced_by) {
                        Some(addresses) if !addresses.is_empty() => {
                            by_service.insert(name.clone(), addresses);
                        }
                        _ => {
                            by_service.remove(name);
                        }
                    }
                }
                by_service
            }
        }
    }

    /// Makes `dp_l2_addrs` hold `plan`'s addresses on its uplink (removals first, so that
    /// the map never needs room for both), refreshes the liveness with the
    /// uplink's MAC, and announces (in `netns`) the addresses added, or all of them when the
    /// liveness had lapsed. Returns the entries written, and a warning when the
    /// announcements could not be sent.
    pub(crate) fn write(
        &mut self,
        maps: &mut L2Maps,
        plan: L2Plan,
        netns: Option<&Path>,
    ) -> Result<(usize, Option<Warning>), EbpfError> {
        let ifindex = plan.uplink.as_ref().map_or(0, |u| u.link.ifindex());
        let target: BTreeSet<L2Key> = plan.wanted.iter().map(|ip| key(*ip, ifindex)).collect();
        let mut entries = 0;
        let stale: Vec<L2Key> = self.written.difference(&target).copied().collect();
        for k in stale {
            removed(maps.addrs.remove(&k))
                .map_err(|e| EbpfError::map(map_table::L2_ADDRS_MAP.name, "removing", e))?;
            self.written.remove(&k);
            entries += 1;
        }
        let mut added = Vec::new();
        let new: Vec<L2Key> = target.difference(&self.written).copied().collect();
        for k in new {
            maps.addrs
                .insert(k, L2Value::default(), 0)
                .map_err(|e| EbpfError::map(map_table::L2_ADDRS_MAP.name, "writing", e))?;
            self.written.insert(k);
            added.push(k.addr.ip(k.family));
            entries += 1;
        }
        self.by_service = plan.by_service;
        if plan.uplink.is_some() {
            self.uplink = plan.uplink;
        }
        let announce = if self.refresh(maps)? {
            plan.wanted.into_iter().collect()
        } else {
            added
        };
        let warning = self
            .uplink
            .as_ref()
            .and_then(|u| send_announcements(netns, u, &announce));
        Ok((entries, warning))
    }

    /// [`Self::refresh`], and after a lapse the announcements of every address (in `netns`):
    /// `maintain()`'s part. Returns a warning when they could not be sent.
    pub(crate) fn keep_alive(
        &mut self,
        maps: &mut L2Maps,
        netns: Option<&Path>,
    ) -> Result<Option<Warning>, EbpfError> {
        if !self.refresh(maps)? {
            return Ok(None);
        }
        let addresses = self.addresses();
        Ok(self
            .uplink
            .as_ref()
            .and_then(|u| send_announcements(netns, u, &addresses)))
    }

    /// Writes the liveness (now) with the uplink's MAC and the window, once a sync has found
    /// the uplink. Returns whether the liveness had lapsed (or was never written by this
    /// process) while addresses were announced: the node was quiet until now.
    fn refresh(&mut self, maps: &mut L2Maps) -> Result<bool, EbpfError> {
        let window = self.window;
        let Some(uplink) = &self.uplink else {
            return Ok(false);
        };
        let now = crate::maintain::monotonic_now();
        let lapsed = self
            .refreshed
            .is_none_or(|at| now.saturating_sub(at) > window);
        let cfg = L2Cfg {
            mac: uplink.link.mac(),
            pad: [0; 2],
            max_liveness_ns: u64::try_from(window.as_nanos()).unwrap_or(u64::MAX),
            liveness_ns: u64::try_from(now.as_nanos()).unwrap_or(u64::MAX),
        };
        maps.cfg
            .set(0, cfg, 0)
            .map_err(|e| EbpfError::map(map_table::L2_CFG.name, "writing", e))?;
        self.refreshed = Some(now);
        Ok(lapsed && !self.written.is_empty())
    }

    /// Whether any address is announced.
    pub(crate) fn announces(&self) -> bool {
        !self.written.is_empty()
    }

    /// The addresses announced now.
    fn addresses(&self) -> Vec<IpAddr> {
        self.written.iter().map(|k| k.addr.ip(k.family)).collect()
    }
}

/// Answers sent per address `map` (`dp_l2_addrs`) holds, into `other`:
/// `l2_responses.<address>`, and their sum `l2_responses` (one lookup per entry; the owner's
/// `stats()` and `LiveEbpf`'s read the same).
pub(crate) fn counters<T: std::borrow::Borrow<aya::maps::MapData>>(
    map: &aya::maps::HashMap<T, L2Key, L2Value>,
    other: &mut BTreeMap<String, u64>,
) -> Result<(), EbpfError> {
    let mut total = 0;
    for entry in map {
        let (k, v) =
            entry.map_err(|e| EbpfError::map(map_table::L2_ADDRS_MAP.name, "reading", e))?;
        total += v.responses;
        *other
            .entry(format!("l2_responses.{}", k.addr.ip(k.family)))
            .or_insert(0) += v.responses;
    }
    other.insert("l2_responses".to_owned(), total);
    Ok(())
}

/// The map key of `ip` on the interface `ifindex`.
fn key(ip: IpAddr, ifindex: u32) -> L2Key {
    L2Key {
        addr: Addr::new(ip),
        ifindex,
        family: family_of(&ip),
        pad: [0; 3],
    }
}

/// Interface `name` in the calling thread's namespace ([`dataplane_core::l2::link_of`]);
/// `Ok(None)` when it has no Ethernet address (not an Ethernet interface).
fn uplink_of(name: &str) -> Result<Option<Uplink>, EbpfError> {
    let link = dataplane_core::l2::link_of(name).map_err(|e| EbpfError::Attach {
        interface: name.to_owned(),
        program: "L2 announcements (reading the uplink's MAC)".to_owned(),
        source: Box::new(e),
    })?;
    Ok(link.map(|link| Uplink {
        name: name.to_owned(),
        link,
    }))
}

/// Sends the gratuitous announcements of `addresses` out of `uplink` in `netns`
/// ([`dataplane_core::l2::announce_on`], with the interface and MAC the sync found, which the
/// programs answer with too); a failure is a warning (the answers are programmed:
/// neighbours learn the node when they ask).
fn send_announcements(
    netns: Option<&Path>,
    uplink: &Uplink,
    addresses: &[IpAddr],
) -> Option<Warning> {
    if addresses.is_empty() {
        return None;
    }
    let sent = netns::in_netns(netns, || {
        dataplane_core::l2::announce_on(&uplink.link, addresses.iter().copied()).map_err(|e| {
            EbpfError::Attach {
                interface: uplink.name.clone(),
                program: "L2 announcements (gratuitous ARP / unsolicited NA)".to_owned(),
                source: Box::new(e),
            }
        })
    });
    match sent {
        Ok(n) => {
            tracing::debug!(interface = %uplink.name, sent = n, "L2 announcements sent");
            None
        }
        Err(e) => Some(Warning {
            object: "node".to_owned(),
            field: "l2Announce".to_owned(),
            message: format!(
                "gratuitous announcements of {} addresses not sent (neighbours keep a \
                 previous announcer's MAC until their entries expire): {e}",
                addresses.len()
            ),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use dataplane_core::Service;

    fn service(name: &str, lb: &[&str], announce: bool) -> Service {
        let mut s = Service::new(ObjectName::new("default", name));
        s.load_balancer_ips = lb.iter().map(|a| a.parse().unwrap()).collect();
        s.l2_announce = announce;
        s
    }

    fn change(previous: Option<Service>, current: Option<Service>) -> ChangeSet {
        let name = previous
            .as_ref()
            .or(current.as_ref())
            .map(|s| s.name.clone())
            .unwrap();
        let mut c = ChangeSet::default();
        c.services
            .insert(name, dataplane_core::Change { previous, current });
        c
    }

    fn union(by_service: &BTreeMap<ObjectName, BTreeSet<IpAddr>>) -> Vec<String> {
        let all: BTreeSet<&IpAddr> = by_service.values().flatten().collect();
        all.iter().map(ToString::to_string).collect()
    }

    #[test]
    fn an_address_two_services_announce_stays_until_neither_does() {
        let node = dataplane_core::Node::new("node-a", ["172.18.0.2".parse().unwrap()]);
        let mut st = DesiredState::new(node);
        st.services = vec![
            service("a", &["172.18.0.200"], true),
            service("b", &["172.18.0.200", "fd00:18::c8"], true),
            service("quiet", &["172.18.0.201"], false),
        ];
        let mut l2 = L2State::default();
        l2.by_service = l2.announcing(&st, None);
        assert_eq!(union(&l2.by_service), ["172.18.0.200", "fd00:18::c8"]);
        // b goes: 172.18.0.200 stays for a
        let b = service("b", &["172.18.0.200", "fd00:18::c8"], true);
        l2.by_service = l2.announcing(&st, Some(&change(Some(b), None)));
        assert_eq!(union(&l2.by_service), ["172.18.0.200"]);
        // a stops announcing: nothing left
        let a = service("a", &["172.18.0.200"], true);
        let quiet_a = service("a", &["172.18.0.200"], false);
        l2.by_service = l2.announcing(&st, Some(&change(Some(a), Some(quiet_a))));
        assert!(union(&l2.by_service).is_empty());
    }

    #[test]
    fn more_addresses_than_the_map_holds_are_refused_before_anything() {
        let node = dataplane_core::Node::new("node-a", ["172.18.0.2".parse().unwrap()]);
        let mut st = DesiredState::new(node.clone());
        let mut big = service("big", &[], true);
        big.load_balancer_ips = (0..=L2_ADDRS)
            .map(|i| IpAddr::from([10, 100, (i >> 8) as u8, i as u8]))
            .collect();
        st.services = vec![big];
        // (the uplink is looked up only after the count is checked: no namespace needed)
        match L2State::default().plan(&st, None, &node, None) {
            Err(Error::CapacityExceeded {
                what,
                needed,
                capacity,
            }) => {
                assert!(what.contains("dp_l2_addrs"), "{what}");
                assert_eq!(
                    (needed, capacity),
                    (L2_ADDRS as usize + 1, L2_ADDRS as usize)
                );
            }
            other => panic!("refused as over capacity, got {other:?}"),
        }
    }
}
