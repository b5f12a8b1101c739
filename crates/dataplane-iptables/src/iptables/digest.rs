//! What the iptables backend keeps between syncs: a digest per chain, not its rules.
//!
//! 10k services x 10 endpoints are ~330k rules (~55 MiB of text). A partial sync only needs to
//! know which chains differ from what was programmed, so the backend keeps, per chain, a
//! 128-bit hash of its name and a 64-bit hash of its rules (24 bytes), and compiles the state
//! again to write the chains that changed: once for their declarations, once for their rules
//! (a rule may only jump to a chain that exists).
//! [`render_sync`](super::render::render_sync) of the compiled rulesets says the same, in
//! another order; a test checks it.

use std::collections::{BTreeMap, BTreeSet};
use std::hash::{Hash, Hasher};

use dataplane_core::{DesiredState, Service};

use super::render::{compile_port, finish_ruleset, hook_lines, Existing, IptRuleset};
use crate::plan::{node_plan, service_ports, Family, NodePlan};

/// The tables our chains live in, in the order an input lists them (nat first: if the tool
/// refuses it, it stops before touching the filter table).
const TABLES: [&str; 2] = ["nat", "filter"];

/// A chain name's 128-bit hash, as two words (a `u128` would align the entries to 32 bytes).
pub type NameHash = [u64; 2];

/// Per-chain digests of one family's ruleset, per table: `(name hash, rules hash)` sorted by
/// name hash.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Digests {
    /// nat-table chains.
    pub nat: Vec<(NameHash, u64)>,
    /// filter-table chains.
    pub filter: Vec<(NameHash, u64)>,
}

impl Digests {
    fn table(&self, table: &str) -> &[(NameHash, u64)] {
        if table == "nat" {
            &self.nat
        } else {
            &self.filter
        }
    }

    /// The rules hash of chain `name` (by its name hash).
    pub fn get(&self, table: &str, name: NameHash) -> Option<u64> {
        let t = self.table(table);
        t.binary_search_by(|(h, _)| h.cmp(&name))
            .ok()
            .map(|i| t[i].1)
    }
}

/// 128-bit hash of a chain name (two independent 64-bit hashes: names must not collide).
pub fn name_hash(name: &str) -> NameHash {
    let half = |seed: u8| {
        let mut h = std::collections::hash_map::DefaultHasher::new();
        seed.hash(&mut h);
        name.hash(&mut h);
        h.finish()
    };
    [half(0), half(1)]
}

fn rules_hash(rules: &[String]) -> u64 {
    let mut h = std::collections::hash_map::DefaultHasher::new();
    rules.hash(&mut h);
    h.finish()
}

/// Chains by name and their rules.
pub(crate) type Chains = BTreeMap<String, Vec<String>>;

/// A visitor of one group of chains of a table.
pub(crate) type Visit<'a, E> = dyn FnMut(&'static str, &Chains) -> Result<(), E> + 'a;

/// Calls `f(table, chains)` for the chains of `family` in the rulesets of `state`, a group at
/// a time: each service's (in name order; they jump only to each other and to node-wide
/// chains), then the node-wide ones of each table. The same chains and rules as
/// [`compile`](super::render::compile) of the plan, without holding them.
pub(crate) fn each_chain<E>(
    state: &DesiredState,
    node: &NodePlan,
    prefix: &str,
    family: Family,
    f: &mut Visit<'_, E>,
) -> Result<(), E> {
    // Of services with one name the last counts, as in the plan's map: reversed, a stable
    // sort puts it first of its name, and `dedup_by` keeps the first.
    let mut services: Vec<&Service> = state.services.iter().rev().collect();
    services.sort_by(|a, b| a.name.cmp(&b.name));
    services.dedup_by(|a, b| a.name == b.name);
    let mut frontends = Vec::new();
    let mut reject_ips = BTreeSet::new();
    for s in services {
        let mut chains = BTreeMap::new();
        let kept = frontends.len();
        for port in service_ports(state, s)
            .iter()
            .filter(|p| p.family == family)
        {
            compile_port(node, port, prefix, &mut chains, &mut frontends);
            reject_ips.extend(port.cluster_ips.iter().copied());
        }
        // The frontend rules stay until the `SERVICES` chain is made: exactly sized.
        for r in &mut frontends[kept..] {
            r.shrink_to_fit();
        }
        f("nat", &chains)?;
    }
    let mut rs = IptRuleset {
        family,
        prefix: prefix.to_owned(),
        nat: BTreeMap::new(),
        filter: BTreeMap::new(),
    };
    finish_ruleset(node, family, prefix, &mut rs, &mut frontends, &reject_ips);
    f("nat", &rs.nat)?;
    f("filter", &rs.filter)
}

/// The digests of `family`'s chains of `state`.
pub fn digests(state: &DesiredState, prefix: &str, family: Family) -> Digests {
    let node = node_plan(&state.node);
    let mut d = Digests::default();
    let _ = each_chain::<()>(state, &node, prefix, family, &mut |table, chains| {
        let t = if table == "nat" {
            &mut d.nat
        } else {
            &mut d.filter
        };
        t.extend(
            chains
                .iter()
                .map(|(name, rules)| (name_hash(name), rules_hash(rules))),
        );
        Ok(())
    });
    for t in [&mut d.nat, &mut d.filter] {
        // A chain compiled twice keeps its last rules, as a map insert would.
        t.reverse();
        t.sort_by_key(|(h, _)| *h);
        t.dedup_by_key(|(h, _)| *h);
        t.shrink_to_fit();
    }
    d
}

/// What a sync from `old` (`None`: unknown, rewrite everything) to `new` does, given what the
/// kernel holds (`existing`).
#[derive(Debug)]
pub struct SyncPlan<'a> {
    old: Option<&'a Digests>,
    new: &'a Digests,
    existing: &'a Existing,
    prefix: &'a str,
    /// Name hashes of our chains in the kernel, per table (nat, filter), sorted.
    present: [Vec<NameHash>; 2],
}

impl<'a> SyncPlan<'a> {
    /// The sync of `new` over `old` and `existing`.
    pub fn new(
        old: Option<&'a Digests>,
        new: &'a Digests,
        existing: &'a Existing,
        prefix: &'a str,
    ) -> Self {
        let hashed = |names: &BTreeSet<String>| -> Vec<NameHash> {
            // Names in order, hashes not: sorted for the lookups.
            let mut v: Vec<NameHash> = names.iter().map(|n| name_hash(n)).collect();
            v.sort_unstable();
            v
        };
        let present = [
            hashed(&existing.nat_chains),
            hashed(&existing.filter_chains),
        ];
        SyncPlan::with_present(old, new, existing, present, prefix)
    }

    /// The same sync, from the name hashes of all our chains in the kernel (`present`: nat,
    /// filter) and an `existing` that lists only the stale ones (see
    /// [`super::render::ExistingParser::filtered`]).
    pub fn with_present(
        old: Option<&'a Digests>,
        new: &'a Digests,
        existing: &'a Existing,
        present: [Vec<NameHash>; 2],
        prefix: &'a str,
    ) -> Self {
        SyncPlan {
            old,
            new,
            existing,
            prefix,
            present,
        }
    }

    fn present(&self, table: &str) -> &[NameHash] {
        &self.present[usize::from(table != "nat")]
    }

    fn existing_chains(&self, table: &str) -> &'a BTreeSet<String> {
        if table == "nat" {
            &self.existing.nat_chains
        } else {
            &self.existing.filter_chains
        }
    }

    /// Chain `name` (hash) with rules hash `digest` must be written.
    fn changed(&self, table: &str, name: NameHash, digest: u64) -> bool {
        self.old.and_then(|o| o.get(table, name)) != Some(digest)
            || self.present(table).binary_search(&name).is_err()
    }

    /// Chains the kernel holds that `new` does not have.
    fn stale(&self, table: &'a str) -> impl Iterator<Item = &'a String> + '_ {
        self.existing_chains(table)
            .iter()
            .filter(move |c| self.new.get(table, name_hash(c)).is_none())
    }

    fn touches(&self, table: &'a str) -> bool {
        self.new
            .table(table)
            .iter()
            .any(|(h, d)| self.changed(table, *h, *d))
            || self.stale(table).next().is_some()
            || !hook_lines(self.prefix, self.existing, table).is_empty()
    }

    /// The sync changes nothing.
    pub fn is_empty(&self) -> bool {
        TABLES.iter().all(|t| !self.touches(t))
    }

    /// Writes the `iptables-restore --noflush` input of this sync for `state`'s `family`
    /// chains (the state `new` was made from). `fault`, the test hook's refused rule, ends
    /// the first table written.
    pub fn write<W: std::fmt::Write + ?Sized>(
        &self,
        state: &DesiredState,
        family: Family,
        mut fault: Option<&str>,
        out: &mut W,
    ) -> std::fmt::Result {
        let node = node_plan(&state.node);
        // The filter table holds only node-wide chains, which do not depend on the services.
        let mut node_wide = IptRuleset {
            family,
            prefix: self.prefix.to_owned(),
            nat: BTreeMap::new(),
            filter: BTreeMap::new(),
        };
        finish_ruleset(
            &node,
            family,
            self.prefix,
            &mut node_wide,
            &mut Vec::new(),
            &BTreeSet::new(),
        );
        for table in TABLES {
            if !self.touches(table) {
                continue;
            }
            writeln!(out, "*{table}")?;
            // All declarations (with --noflush, declaring a chain creates or flushes it), in
            // name order, then all rules: a rule may only jump to a declared chain, and the
            // legacy iptables-restore takes half as long again for 130k chains created out of
            // order. The names, without the common prefix, are packed into one buffer, each
            // ended by a NUL, to be sorted by their offsets (~2.5 MiB at 10k services).
            let ours = format!("{}-", self.prefix);
            let mut names = String::new();
            let mut starts: Vec<u32> = Vec::new();
            for declare in [true, false] {
                let mut emit = |chains: &Chains| -> std::fmt::Result {
                    for (name, rules) in chains {
                        if !self.changed(table, name_hash(name), rules_hash(rules)) {
                            continue;
                        }
                        if declare {
                            starts.push(u32::try_from(names.len()).map_err(|_| std::fmt::Error)?);
                            names.push_str(name.strip_prefix(&ours).unwrap_or(name));
                            names.push('\0');
                        } else {
                            for r in rules {
                                writeln!(out, "-A {name} {r}")?;
                            }
                        }
                    }
                    Ok(())
                };
                if table == "nat" {
                    each_chain(state, &node, self.prefix, family, &mut |t, chains| {
                        if t == "nat" {
                            emit(chains)
                        } else {
                            Ok(())
                        }
                    })?;
                } else {
                    emit(&node_wide.filter)?;
                }
                if declare {
                    let name = |start: u32| {
                        let rest = &names[start as usize..];
                        &rest[..rest.find('\0').unwrap_or(rest.len())]
                    };
                    starts.sort_unstable_by(|x, y| name(*x).cmp(name(*y)));
                    for start in std::mem::take(&mut starts) {
                        writeln!(out, ":{ours}{} - [0:0]", name(start))?;
                    }
                    names = String::new();
                }
            }
            for h in hook_lines(self.prefix, self.existing, table) {
                writeln!(out, "{h}")?;
            }
            let gone: Vec<&String> = self.stale(table).collect();
            for c in &gone {
                writeln!(out, ":{c} - [0:0]")?;
            }
            for c in &gone {
                writeln!(out, "-X {c}")?;
            }
            if let Some(f) = fault.take() {
                writeln!(out, "{f}")?;
            }
            writeln!(out, "COMMIT")?;
        }
        Ok(())
    }
}
