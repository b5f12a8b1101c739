//! The ipsets of the policy chains in the kernel: reading ours from `ipset save`, the
//! operations that bring them to what the chains need, written as `ipset restore` input, and
//! their inverse (to undo a sync that failed half-way). Pure functions; the backend runs
//! the tool.
//!
//! `ipset restore` is not a transaction: it stops at the first line the kernel refuses and
//! keeps what it did before. A sync therefore writes sets in an order where every window
//! fails closed (the rules loaded at that moment allow at most what the old or the new state
//! allows; sets only ever allow):
//!
//! 1. before the rules ([`split`]): creates (no loaded rule names a new set), the members of
//!    the new sets, and the removals from existing sets (the old rules then allow less);
//! 2. the rules;
//! 3. the additions to existing sets: before the rules, a pod added to a set that an entry
//!    being removed still names would be let in by the old rules;
//! 4. the destroys of the sets no rule names any more, best effort (a leftover set is
//!    destroyed by a later sync).
//!
//! When a later step fails, the first is undone with [`undo`], which is total: it runs under
//! `-exist` whatever part of the batch ran (a set created by the batch is created again with
//! the same parameters and destroyed; the additions and removals of existing sets are
//! reversed, which `-exist` lets pass where they never ran).

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;

use dataplane_core::policy_tables::MemberChange;
use dataplane_core::{CompiledPolicy, IpFamily, PolicyDelta};

use ipnetwork::IpNetwork;

use super::policy::{is_net_set, is_our_set, IpSetSpec, IpSets};

/// One `ipset restore` command.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub enum SetOp {
    /// Create an empty `hash:ip` set of `family`.
    Create {
        /// Set name.
        name: String,
        /// Its family.
        family: IpFamily,
    },
    /// Add a member.
    Add {
        /// Set name.
        name: String,
        /// The member.
        ip: IpAddr,
    },
    /// Remove a member.
    Del {
        /// Set name.
        name: String,
        /// The member.
        ip: IpAddr,
    },
    /// Destroy a set (no rule may name it).
    Destroy {
        /// Set name.
        name: String,
    },
    /// Create an empty `hash:net` set of `family` (host policy's CIDRs).
    CreateNet {
        /// Set name.
        name: String,
        /// Its family.
        family: IpFamily,
    },
    /// Add a CIDR to a `hash:net` set.
    AddNet {
        /// Set name.
        name: String,
        /// The CIDR.
        net: IpNetwork,
    },
    /// Remove a CIDR from a `hash:net` set.
    DelNet {
        /// Set name.
        name: String,
        /// The CIDR.
        net: IpNetwork,
    },
}

impl SetOp {
    /// The operation that undoes a member change (`None` for a create or destroy: see
    /// [`undo`]).
    pub fn inverse(&self) -> Option<SetOp> {
        Some(match self {
            SetOp::Add { name, ip } => SetOp::Del {
                name: name.clone(),
                ip: *ip,
            },
            SetOp::Del { name, ip } => SetOp::Add {
                name: name.clone(),
                ip: *ip,
            },
            SetOp::AddNet { name, net } => SetOp::DelNet {
                name: name.clone(),
                net: *net,
            },
            SetOp::DelNet { name, net } => SetOp::AddNet {
                name: name.clone(),
                net: *net,
            },
            SetOp::Create { .. } | SetOp::CreateNet { .. } | SetOp::Destroy { .. } => return None,
        })
    }

    /// The set it works on.
    pub fn name(&self) -> &str {
        match self {
            SetOp::Create { name, .. }
            | SetOp::Add { name, .. }
            | SetOp::Del { name, .. }
            | SetOp::Destroy { name }
            | SetOp::CreateNet { name, .. }
            | SetOp::AddNet { name, .. }
            | SetOp::DelNet { name, .. } => name,
        }
    }
}

/// Writes `ops` as `ipset restore` input; sets are created with room for `max_elements`.
pub fn write_ops<W: std::fmt::Write + ?Sized>(
    ops: &[SetOp],
    max_elements: u32,
    out: &mut W,
) -> std::fmt::Result {
    for op in ops {
        match op {
            SetOp::Create { name, family } | SetOp::CreateNet { name, family } => {
                let kind = match op {
                    SetOp::CreateNet { .. } => "hash:net",
                    _ => "hash:ip",
                };
                let family = match family {
                    IpFamily::V4 => "inet",
                    IpFamily::V6 => "inet6",
                };
                writeln!(
                    out,
                    "create {name} {kind} family {family} maxelem {max_elements}"
                )?;
            }
            SetOp::AddNet { name, net } => writeln!(out, "add {name} {net}")?,
            SetOp::DelNet { name, net } => writeln!(out, "del {name} {net}")?,
            SetOp::Add { name, ip } => writeln!(out, "add {name} {ip}")?,
            SetOp::Del { name, ip } => writeln!(out, "del {name} {ip}")?,
            SetOp::Destroy { name } => writeln!(out, "destroy {name}")?,
        }
    }
    Ok(())
}

/// What undoes any part of `ops` that ran, to be run under `-exist` (every line then
/// succeeds whether its operation ran or not: `ipset restore` stops at the first refused
/// line, so an undo that could fail part-way would not be one): the member changes of sets
/// `ops` did not create reversed, last first; then each set `ops` created is created again
/// with the same parameters (a no-op if it exists, so that the destroy that follows cannot
/// fail on a set the batch never got to) and destroyed, members and all. Destroys in `ops`
/// are not undone (they run after the rules stopped naming the sets).
pub fn undo(ops: &[SetOp]) -> Vec<SetOp> {
    let created: BTreeSet<&str> = ops
        .iter()
        .filter_map(|o| match o {
            SetOp::Create { name, .. } | SetOp::CreateNet { name, .. } => Some(name.as_str()),
            _ => None,
        })
        .collect();
    let mut out: Vec<SetOp> = ops
        .iter()
        .rev()
        .filter(|o| !created.contains(o.name()))
        .filter_map(SetOp::inverse)
        .collect();
    for op in ops {
        if let SetOp::Create { name, .. } | SetOp::CreateNet { name, .. } = op {
            out.push(op.clone());
            out.push(SetOp::Destroy { name: name.clone() });
        }
    }
    out
}

/// `ops` in the two runs of a sync: before the rules (creates, the members of created sets,
/// removals) and after them (additions to sets that existed): see the module's order.
pub fn split(ops: Vec<SetOp>) -> (Vec<SetOp>, Vec<SetOp>) {
    let created: BTreeSet<String> = ops
        .iter()
        .filter_map(|o| match o {
            SetOp::Create { name, .. } | SetOp::CreateNet { name, .. } => Some(name.clone()),
            _ => None,
        })
        .collect();
    ops.into_iter().partition(|o| match o {
        SetOp::Add { name, .. } | SetOp::AddNet { name, .. } => created.contains(name),
        SetOp::Create { .. }
        | SetOp::CreateNet { .. }
        | SetOp::Del { .. }
        | SetOp::DelNet { .. }
        | SetOp::Destroy { .. } => true,
    })
}

/// What the kernel holds: our sets with their members, and how many sets are not ours (they
/// count against the kernel's limit too).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct KernelSets {
    /// Our sets: name → members (`hash:ip`; a `hash:net` set's are in `nets`).
    pub ours: BTreeMap<String, BTreeSet<IpAddr>>,
    /// Sets that are not ours (the hairpin sets are counted on their own: see
    /// `NetfilterConfig::hairpin_ipset`).
    pub foreign: usize,
    /// Our `hash:net` sets' CIDRs (read by a full sync).
    pub nets: BTreeMap<String, BTreeSet<IpNetwork>>,
}

/// Reads `ipset save` output.
pub fn parse_save(save: &str, prefix: &str) -> KernelSets {
    let mut sets = KernelSets::default();
    for line in save.lines() {
        let mut words = line.split_whitespace();
        match (words.next(), words.next(), words.next()) {
            (Some("create"), Some(name), _) => {
                if is_our_set(prefix, name) {
                    sets.ours.entry(name.to_owned()).or_default();
                } else if !super::hairpin::is_hairpin_set(prefix, name) {
                    sets.foreign += 1;
                }
            }
            (Some("add"), Some(name), Some(member)) if is_net_set(prefix, name) => {
                // `ipset save` lists a host-length CIDR of a `hash:net` as an address.
                let net = member
                    .parse::<IpNetwork>()
                    .or_else(|_| member.parse::<IpAddr>().map(IpNetwork::from));
                if let (true, Ok(net)) = (sets.ours.contains_key(name), net) {
                    sets.nets.entry(name.to_owned()).or_default().insert(net);
                }
            }
            (Some("add"), Some(name), Some(member)) => {
                if let (Some(members), Ok(ip)) = (sets.ours.get_mut(name), member.parse()) {
                    members.insert(ip);
                }
            }
            _ => {}
        }
    }
    sets
}

/// The members of `spec`'s peer set in its family, from `compiled`.
pub fn members<'a>(
    compiled: &'a CompiledPolicy,
    spec: &'a IpSetSpec,
) -> impl Iterator<Item = IpAddr> + 'a {
    compiled
        .sets
        .get(&spec.id)
        .into_iter()
        .flat_map(|s| s.members.iter())
        .filter(move |ip| IpFamily::of(ip) == spec.family)
        .copied()
}

/// A full sync's operations: each set of `want` made to hold exactly its members (created if
/// missing) over what the kernel holds (`kernel`). Sets of ours that `want` lacks are left
/// (see [`destroys`]).
pub fn converge(kernel: &KernelSets, want: &IpSets, compiled: &CompiledPolicy) -> Vec<SetOp> {
    let empty = BTreeSet::new();
    let no_nets = BTreeSet::new();
    let mut ops = Vec::new();
    for (name, spec) in want {
        if !spec.nets.is_empty() {
            if !kernel.ours.contains_key(name) {
                ops.push(SetOp::CreateNet {
                    name: name.clone(),
                    family: spec.family,
                });
            }
            let have = kernel.nets.get(name).unwrap_or(&no_nets);
            let target: BTreeSet<IpNetwork> = spec.nets.iter().copied().collect();
            ops.extend(target.difference(have).map(|net| SetOp::AddNet {
                name: name.clone(),
                net: *net,
            }));
            ops.extend(have.difference(&target).map(|net| SetOp::DelNet {
                name: name.clone(),
                net: *net,
            }));
            continue;
        }
        let have = if let Some(have) = kernel.ours.get(name) {
            have
        } else {
            ops.push(SetOp::Create {
                name: name.clone(),
                family: spec.family,
            });
            &empty
        };
        let target: BTreeSet<IpAddr> = members(compiled, spec).collect();
        ops.extend(target.difference(have).map(|ip| SetOp::Add {
            name: name.clone(),
            ip: *ip,
        }));
        ops.extend(have.difference(&target).map(|ip| SetOp::Del {
            name: name.clone(),
            ip: *ip,
        }));
    }
    ops
}

/// A partial sync's operations: the sets `want` has and `before` (what the last sync left)
/// lacks are created with their members; the sets both have get `delta`'s member changes
/// of their family, and nothing else is looked at.
pub fn incremental(
    before: &IpSets,
    want: &IpSets,
    compiled: &CompiledPolicy,
    delta: &PolicyDelta,
) -> Vec<SetOp> {
    let mut ops = Vec::new();
    for (name, spec) in want {
        if before.contains_key(name) {
            // A host policy set is named by its CIDRs: one that stays is as it was.
            continue;
        }
        if !spec.nets.is_empty() {
            ops.push(SetOp::CreateNet {
                name: name.clone(),
                family: spec.family,
            });
            ops.extend(spec.nets.iter().map(|net| SetOp::AddNet {
                name: name.clone(),
                net: *net,
            }));
            continue;
        }
        ops.push(SetOp::Create {
            name: name.clone(),
            family: spec.family,
        });
        ops.extend(members(compiled, spec).map(|ip| SetOp::Add {
            name: name.clone(),
            ip,
        }));
    }
    for (id, MemberChange { added, removed }) in &delta.members_changed {
        for (name, spec) in want
            .iter()
            .filter(|(n, s)| s.id == *id && before.contains_key(*n))
        {
            let of = |ips: &BTreeSet<IpAddr>| -> Vec<IpAddr> {
                ips.iter()
                    .filter(|ip| IpFamily::of(ip) == spec.family)
                    .copied()
                    .collect()
            };
            ops.extend(of(added).into_iter().map(|ip| SetOp::Add {
                name: name.clone(),
                ip,
            }));
            ops.extend(of(removed).into_iter().map(|ip| SetOp::Del {
                name: name.clone(),
                ip,
            }));
        }
    }
    ops
}

/// The destroys of our sets in `have` that `want` lacks: run after the rules that named them
/// are gone.
pub fn destroys<'a>(have: impl IntoIterator<Item = &'a String>, want: &IpSets) -> Vec<SetOp> {
    have.into_iter()
        .filter(|n| !want.contains_key(*n))
        .map(|n| SetOp::Destroy { name: n.clone() })
        .collect()
}

/// The number of sets in the kernel at the busiest moment of a sync: the foreign ones, ours
/// that stay until the rules stop naming them, and the new ones.
pub fn peak<'a>(
    foreign: usize,
    have: impl IntoIterator<Item = &'a String>,
    want: &IpSets,
) -> usize {
    let have: BTreeSet<&String> = have.into_iter().collect();
    foreign + have.len() + want.keys().filter(|n| !have.contains(n)).count()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_ours_and_counts_the_rest() {
        let save = "create DP-v4-AAA hash:ip family inet hashsize 1024 maxelem 65536 bucketsize 12 initval 0x1\n\
                    add DP-v4-AAA 10.0.0.1\nadd DP-v4-AAA 10.0.0.2\n\
                    create other hash:net family inet hashsize 1024 maxelem 65536\nadd other 10.0.0.0/8\n\
                    create DP-v6-BBB hash:ip family inet6 hashsize 1024 maxelem 65536\n";
        let k = parse_save(save, "DP");
        assert_eq!(k.foreign, 1);
        assert_eq!(k.ours.len(), 2);
        assert_eq!(k.ours["DP-v4-AAA"].len(), 2);
        assert!(k.ours["DP-v6-BBB"].is_empty());
    }

    /// The undo of a batch that stopped anywhere succeeds under `-exist`, simulated: each
    /// prefix of the ops run, then the undo, gives back the sets as they were.
    #[test]
    fn undo_is_total_for_every_prefix_that_ran() {
        let ip: IpAddr = "10.0.0.1".parse().unwrap();
        let ip2: IpAddr = "10.0.0.2".parse().unwrap();
        let ops = vec![
            SetOp::Create {
                name: "new".into(),
                family: IpFamily::V4,
            },
            SetOp::Add {
                name: "new".into(),
                ip,
            },
            SetOp::Del {
                name: "old".into(),
                ip: ip2,
            },
            SetOp::Add {
                name: "old".into(),
                ip,
            },
        ];
        let start: BTreeMap<String, BTreeSet<IpAddr>> =
            BTreeMap::from([("old".to_owned(), BTreeSet::from([ip2]))]);
        // `exist`: the ipset tool's `-exist` (no error for an op that changes nothing).
        let run = |sets: &mut BTreeMap<String, BTreeSet<IpAddr>>, ops: &[SetOp], exist: bool| {
            for op in ops {
                let ok = match op {
                    SetOp::Create { name, .. } => {
                        let had = sets.contains_key(name);
                        sets.entry(name.clone()).or_default();
                        exist || !had
                    }
                    SetOp::Add { name, ip } => {
                        sets.get_mut(name).is_some_and(|m| m.insert(*ip) || exist)
                    }
                    SetOp::Del { name, ip } => {
                        sets.get_mut(name).is_some_and(|m| m.remove(ip) || exist)
                    }
                    SetOp::Destroy { name } => sets.remove(name).is_some() || exist,
                    SetOp::CreateNet { .. } | SetOp::AddNet { .. } | SetOp::DelNet { .. } => false,
                };
                if !ok {
                    return false;
                }
            }
            true
        };
        for ran in 0..=ops.len() {
            let mut sets = start.clone();
            assert!(run(&mut sets, &ops[..ran], false));
            assert!(run(&mut sets, &undo(&ops), true), "after {ran} ops");
            assert_eq!(sets, start, "after {ran} ops");
        }
        let (before, after) = split(ops.clone());
        assert_eq!(before, ops[..3].to_vec());
        assert_eq!(after, ops[3..].to_vec());
    }

    #[test]
    fn undo_reverses_every_step_but_destroys() {
        let ip: IpAddr = "10.0.0.1".parse().unwrap();
        let ops = vec![
            SetOp::Create {
                name: "s".into(),
                family: IpFamily::V4,
            },
            SetOp::Add {
                name: "s".into(),
                ip,
            },
            SetOp::Del {
                name: "t".into(),
                ip,
            },
            SetOp::Destroy { name: "u".into() },
        ];
        assert_eq!(
            undo(&ops),
            vec![
                SetOp::Add {
                    name: "t".into(),
                    ip
                },
                SetOp::Create {
                    name: "s".into(),
                    family: IpFamily::V4,
                },
                SetOp::Destroy { name: "s".into() },
            ]
        );
        let mut text = String::new();
        write_ops(&ops, 1024, &mut text).unwrap();
        assert_eq!(
            text,
            "create s hash:ip family inet maxelem 1024\nadd s 10.0.0.1\ndel t 10.0.0.1\ndestroy u\n"
        );
    }
}
