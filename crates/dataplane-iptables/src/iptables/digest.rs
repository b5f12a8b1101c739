//! What the iptables backend keeps between syncs: a digest per chain, not its rules.
//!
//! The rules of a big cluster are far more than the backend should hold (tens of rules per
//! service port, each a line of text). A partial sync only needs to know which chains differ from what was programmed, so the backend keeps, per chain, a
//! 128-bit hash of its name and a 64-bit hash of its rules (24 bytes), and compiles the state
//! again to write the chains that changed: once for their declarations, once for their rules
//! (a rule may only jump to a chain that exists).
//! The render tests check it against a plain writer of the compiled rulesets.

use std::collections::BTreeSet;
use std::hash::{Hash, Hasher};

use dataplane_core::DesiredState;

use super::policy::{self, NameCollision};
use super::render::{each_chain, hook_lines, node_wide, Chains, Existing, Table};
use crate::eventlog::LogPlan;
use crate::plan::{node_plan, NodePlan};
use dataplane_core::IpFamily;

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
    fn table(&self, table: Table) -> &[(NameHash, u64)] {
        match table {
            Table::Nat => &self.nat,
            Table::Filter => &self.filter,
        }
    }

    fn table_mut(&mut self, table: Table) -> &mut Vec<(NameHash, u64)> {
        match table {
            Table::Nat => &mut self.nat,
            Table::Filter => &mut self.filter,
        }
    }

    /// The rules hash of chain `name` (by its name hash).
    pub fn get(&self, table: Table, name: NameHash) -> Option<u64> {
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

/// The digests of `family`'s chains of `state` (its policy compiled here; see
/// [`digests_with`]).
pub fn digests(state: &DesiredState, prefix: &str, family: IpFamily) -> Digests {
    // Two contents under one name are refused by the backend before it gets here.
    let policy =
        policy::chains(&dataplane_core::compile(state), state, prefix, family).unwrap_or_default();
    digests_with(state, &policy, prefix, family).unwrap_or_default()
}

/// The digests of `family`'s chains of `state` with its policy chains `policy` (from
/// [`policy::chains`] of the state's compiled policy, which the backend keeps up to date
/// between syncs). One name given two different rule lists (two hashed texts whose hashes
/// met) is a [`NameCollision`]: neither is written over the other.
pub fn digests_with(
    state: &DesiredState,
    policy: &Chains,
    prefix: &str,
    family: IpFamily,
) -> Result<Digests, NameCollision> {
    digests_logged(state, policy, prefix, family, &default_log())
}

/// The iptables flavour's default log settings (of [`NetfilterConfig::iptables`](crate::NetfilterConfig::iptables)).
pub fn default_log() -> LogPlan {
    crate::NetfilterConfig::iptables(None).log_plan()
}

/// [`digests_with`] with the drop rules logging as `log` says.
pub fn digests_logged(
    state: &DesiredState,
    policy: &Chains,
    prefix: &str,
    family: IpFamily,
    log: &LogPlan,
) -> Result<Digests, NameCollision> {
    let node = NodePlan {
        log: *log,
        ..node_plan(&state.node)
    };
    let mut d = Digests::default();
    let _ = each_chain::<()>(
        state,
        &node,
        policy,
        prefix,
        family,
        &mut |table, chains| {
            d.table_mut(table).extend(
                chains
                    .iter()
                    .map(|(name, rules)| (name_hash(name), rules_hash(rules))),
            );
            Ok(())
        },
    );
    let mut collided = None;
    for table in Table::ALL {
        let t = d.table_mut(table);
        t.sort_unstable();
        // A chain compiled twice (a backend's endpoint chain under two choices of one port)
        // has the same rules both times; different rules under one name are a collision.
        if let Some(w) = t.windows(2).find(|w| w[0].0 == w[1].0 && w[0].1 != w[1].1) {
            collided.get_or_insert((table, w[0].0));
        }
        t.dedup_by_key(|(h, _)| *h);
        t.shrink_to_fit();
    }
    match collided {
        None => Ok(d),
        Some((table, hash)) => Err(collision(state, &node, policy, prefix, family, table, hash)),
    }
}

/// The two rule lists of the chain of `table` whose name hashes to `hash` (found again: the
/// digests keep no text).
fn collision(
    state: &DesiredState,
    node: &crate::plan::NodePlan,
    policy: &Chains,
    prefix: &str,
    family: IpFamily,
    table: Table,
    hash: NameHash,
) -> NameCollision {
    let mut found: Option<(String, String)> = None;
    let mut second = None;
    let _ = each_chain::<()>(state, node, policy, prefix, family, &mut |t, chains| {
        for (name, rules) in chains {
            if t != table || name_hash(name) != hash {
                continue;
            }
            let text = rules.join("\n");
            match &found {
                None => found = Some((name.clone(), text)),
                Some((_, first)) if *first != text && second.is_none() => second = Some(text),
                Some(_) => {}
            }
        }
        Ok(())
    });
    let (name, first) = found.unwrap_or_default();
    NameCollision {
        name: format!("{table} chain {name}"),
        first,
        second: second.unwrap_or_default(),
    }
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
    /// The policy chains `new` was made with (`None`: compiled from the state when written).
    policy: Option<&'a Chains>,
    /// How the drop rules log.
    log: LogPlan,
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
            policy: None,
            log: default_log(),
        }
    }

    /// The same sync with the drop rules logging as `log` says (as `new` was made with,
    /// [`digests_logged`]).
    #[must_use]
    pub fn with_log(mut self, log: LogPlan) -> Self {
        self.log = log;
        self
    }

    /// The same sync with the policy chains `new` was made with ([`digests_with`]).
    #[must_use]
    pub fn with_policy(mut self, policy: &'a Chains) -> Self {
        self.policy = Some(policy);
        self
    }

    fn present(&self, table: Table) -> &[NameHash] {
        &self.present[table.index()]
    }

    /// Chain `name` (hash) with rules hash `digest` must be written.
    fn changed(&self, table: Table, name: NameHash, digest: u64) -> bool {
        self.old.and_then(|o| o.get(table, name)) != Some(digest)
            || self.present(table).binary_search(&name).is_err()
    }

    /// Chains the kernel holds that `new` does not have.
    fn stale(&self, table: Table) -> impl Iterator<Item = &'a String> + '_ {
        self.existing
            .chains(table)
            .iter()
            .filter(move |c| self.new.get(table, name_hash(c)).is_none())
    }

    /// The sync writes into `table`.
    pub fn touches_table(&self, table: Table) -> bool {
        self.touches(table)
    }

    fn touches(&self, table: Table) -> bool {
        self.new
            .table(table)
            .iter()
            .any(|(h, d)| self.changed(table, *h, *d))
            || self.stale(table).next().is_some()
            || !hook_lines(self.prefix, self.existing, table).is_empty()
    }

    /// The sync changes nothing.
    pub fn is_empty(&self) -> bool {
        Table::ALL.iter().all(|t| !self.touches(*t))
    }

    /// Writes the `iptables-restore --noflush` input of this sync for `state`'s `family`
    /// chains (the state `new` was made from). `fault`, the test hook's refused rule, ends
    /// the first table written.
    pub fn write<W: std::fmt::Write + ?Sized>(
        &self,
        state: &DesiredState,
        family: IpFamily,
        fault: Option<&str>,
        out: &mut W,
    ) -> std::fmt::Result {
        self.write_tables(state, family, fault, &Table::ALL, out)
    }

    /// [`Self::write`] of the sections of `tables` only (the backend tries the filter
    /// section alone before writing both).
    pub fn write_tables<W: std::fmt::Write + ?Sized>(
        &self,
        state: &DesiredState,
        family: IpFamily,
        mut fault: Option<&str>,
        tables: &[Table],
        out: &mut W,
    ) -> std::fmt::Result {
        let node = NodePlan {
            log: self.log,
            ..node_plan(&state.node)
        };
        let compiled;
        let policy = if let Some(p) = self.policy {
            p
        } else {
            compiled = policy::chains(&dataplane_core::compile(state), state, self.prefix, family)
                .map_err(|_| std::fmt::Error)?;
            &compiled
        };
        // The filter table holds the policy chains and node-wide chains, which do not depend
        // on the services.
        let node_wide = node_wide(
            &node,
            family,
            self.prefix,
            &mut Vec::new(),
            &BTreeSet::new(),
            !policy.is_empty(),
        );
        for table in Table::ALL {
            if !self.touches(table) || !tables.contains(&table) {
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
                match table {
                    Table::Nat => {
                        each_chain(
                            state,
                            &node,
                            policy,
                            self.prefix,
                            family,
                            &mut |t, chains| {
                                if t == Table::Nat {
                                    emit(chains)
                                } else {
                                    Ok(())
                                }
                            },
                        )?;
                    }
                    Table::Filter => {
                        emit(policy)?;
                        emit(&node_wide.filter)?;
                    }
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
