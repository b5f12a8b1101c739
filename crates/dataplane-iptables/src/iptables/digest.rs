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

use dataplane_core::{DesiredState, Service};

use super::policy::{self, NameCollision};
use super::render::{
    each_chain, hook_lines, node_wide, policy_in, reset_jumps, service_chains, Chains, Existing,
    Table,
};
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
    /// raw-table chains (host endpoint policy).
    pub raw: Vec<(NameHash, u64)>,
    /// mangle-table chains (host endpoint policy).
    pub mangle: Vec<(NameHash, u64)>,
}

impl Digests {
    fn table(&self, table: Table) -> &[(NameHash, u64)] {
        match table {
            Table::Nat => &self.nat,
            Table::Filter => &self.filter,
            Table::Raw => &self.raw,
            Table::Mangle => &self.mangle,
        }
    }

    fn table_mut(&mut self, table: Table) -> &mut Vec<(NameHash, u64)> {
        match table {
            Table::Nat => &mut self.nat,
            Table::Filter => &mut self.filter,
            Table::Raw => &mut self.raw,
            Table::Mangle => &mut self.mangle,
        }
    }

    /// The rules hash of chain `name` (by its name hash).
    pub fn get(&self, table: Table, name: NameHash) -> Option<u64> {
        let t = self.table(table);
        t.binary_search_by(|(h, _)| h.cmp(&name))
            .ok()
            .map(|i| t[i].1)
    }

    /// The filter-table digests (sorted by name hash).
    pub fn filter(&self) -> &[(NameHash, u64)] {
        &self.filter
    }

    /// `table` without the chains `removed` and with the chains `written` (name hash, rules
    /// hash), added or replaced.
    fn patch(&mut self, table: Table, removed: &[NameHash], written: &[(NameHash, u64)]) {
        let t = self.table_mut(table);
        for h in removed {
            if let Ok(i) = t.binary_search_by(|(n, _)| n.cmp(h)) {
                t.remove(i);
            }
        }
        for (h, d) in written {
            match t.binary_search_by(|(n, _)| n.cmp(h)) {
                Ok(i) => t[i].1 = *d,
                Err(i) => t.insert(i, (*h, *d)),
            }
        }
    }
}

/// The digests of `family`'s filter chains alone (the policy chains `policy` and the
/// node-wide ones; no service has a filter chain), sorted by name hash as in [`Digests`]:
/// cheap, for a partial sync's check that only services' chains change.
pub fn filter_digests(
    state: &DesiredState,
    policy: &Chains,
    prefix: &str,
    family: IpFamily,
    opts: &RenderOptions,
) -> Vec<(NameHash, u64)> {
    let node = opts.node(&state.node);
    let rs = node_wide(
        &node,
        family,
        prefix,
        &mut Vec::new(),
        &BTreeSet::new(),
        policy,
    );
    let mut v: Vec<(NameHash, u64)> = policy
        .iter()
        .filter(|(name, _)| super::render::table_of(prefix, name) == Table::Filter)
        .chain(rs.filter.iter())
        .map(|(name, rules)| (name_hash(name), rules_hash(rules)))
        .collect();
    v.sort_unstable();
    v.dedup_by_key(|(h, _)| *h);
    v
}

/// A partial sync of changed services alone, as kube-proxy's (`syncProxyRules` in
/// pkg/proxy/iptables/proxier.go: the chains of the services that did not change are left
/// out of the restore input; a service's chains that went away are flushed and deleted with
/// `:CHAIN` and `-X`; `--noflush` keeps everything else). It compiles the changed services
/// only, before and after, and writes the nat chains whose rules differ from what was
/// programmed (the last sync's digests). Unlike kube-proxy, which rewrites `KUBE-SERVICES`
/// on every sync, it applies only where the dispatch stays as it is: the changed services'
/// frontend rules and rejected cluster IPs are the same before and after (an endpoint
/// change, the busy case); otherwise [`ServicesPatch::new`] says `None` and the backend
/// syncs over every service.
#[derive(Debug, Default)]
pub struct ServicesPatch {
    /// nat chains to declare (create or flush) and fill, by name.
    write: Chains,
    /// nat chains to delete.
    remove: Vec<String>,
}

impl ServicesPatch {
    /// The patch of `family` for the services in `changed` (each before and after the
    /// change; `None`: absent) of `state` (the state after the change, of which only the
    /// services changed), over `old`, the digests of what is programmed. `None`: the
    /// dispatch (`SERVICES`) or the node-wide rejects would change.
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        old: &Digests,
        changed: &[(Option<&Service>, Option<&Service>)],
        state: &DesiredState,
        prefix: &str,
        family: IpFamily,
        opts: &RenderOptions,
    ) -> Option<ServicesPatch> {
        let node = opts.node(&state.node);
        let mut patch = ServicesPatch::default();
        let compile = |s: Option<&Service>| {
            let mut frontends = Vec::new();
            let mut rejects = BTreeSet::new();
            let chains = s.map(|s| {
                service_chains(
                    state,
                    &node,
                    s,
                    prefix,
                    family,
                    &mut frontends,
                    &mut rejects,
                )
            });
            (chains.unwrap_or_default(), frontends, rejects)
        };
        for (before, after) in changed {
            let (old_chains, old_frontends, old_rejects) = compile(*before);
            let (new_chains, new_frontends, new_rejects) = compile(*after);
            if old_frontends != new_frontends || old_rejects != new_rejects {
                return None;
            }
            // A service's chains are named by a hash of its own key: no other service has
            // them, so its chains before and after are all there is to compare.
            for name in old_chains.into_keys() {
                if !new_chains.contains_key(&name)
                    && old.get(Table::Nat, name_hash(&name)).is_some()
                {
                    patch.remove.push(name);
                }
            }
            for (name, rules) in new_chains {
                if old.get(Table::Nat, name_hash(&name)) != Some(rules_hash(&rules)) {
                    patch.write.insert(name, rules);
                }
            }
        }
        patch.remove.sort_unstable();
        patch.remove.dedup();
        Some(patch)
    }

    /// Nothing to write.
    pub fn is_empty(&self) -> bool {
        self.write.is_empty() && self.remove.is_empty()
    }

    /// Chains written and deleted.
    pub fn counts(&self) -> (usize, usize) {
        (self.write.len(), self.remove.len())
    }

    /// `old` after this patch: what the kernel holds once it is applied.
    pub fn digests_after(&self, old: &Digests) -> Digests {
        let mut d = old.clone();
        let removed: Vec<NameHash> = self.remove.iter().map(|n| name_hash(n)).collect();
        let mut written: Vec<(NameHash, u64)> = self
            .write
            .iter()
            .map(|(n, r)| (name_hash(n), rules_hash(r)))
            .collect();
        written.sort_unstable();
        d.patch(Table::Nat, &removed, &written);
        d
    }

    /// Writes the `iptables-restore --noflush` input: the nat section (declarations in name
    /// order, then the rules, then the deleted chains flushed and deleted), then a filter
    /// section with `filter_hooks` (the lines that put our filter hooks first again, see
    /// [`hook_lines`]) when there are any. `fault`, the test hook's refused rule, ends the
    /// first section written.
    pub fn write<W: std::fmt::Write + ?Sized>(
        &self,
        filter_hooks: &[String],
        mut fault: Option<&str>,
        out: &mut W,
    ) -> std::fmt::Result {
        if !self.is_empty() {
            writeln!(out, "*nat")?;
            for name in self.write.keys() {
                writeln!(out, ":{name} - [0:0]")?;
            }
            for (name, rules) in &self.write {
                for r in rules {
                    writeln!(out, "-A {name} {r}")?;
                }
            }
            for name in &self.remove {
                writeln!(out, ":{name} - [0:0]")?;
            }
            for name in &self.remove {
                writeln!(out, "-X {name}")?;
            }
            if let Some(f) = fault.take() {
                writeln!(out, "{f}")?;
            }
            writeln!(out, "COMMIT")?;
        }
        if !filter_hooks.is_empty() {
            writeln!(out, "*filter")?;
            for h in filter_hooks {
                writeln!(out, "{h}")?;
            }
            if let Some(f) = fault.take() {
                writeln!(out, "{f}")?;
            }
            writeln!(out, "COMMIT")?;
        }
        Ok(())
    }
}

impl SyncPlan<'_> {
    /// The nat table in sections (see [`SyncPlan::in_sections`]).
    #[allow(clippy::too_many_arguments)]
    fn write_nat_sections<W: std::fmt::Write + ?Sized>(
        &self,
        state: &DesiredState,
        node: &NodePlan,
        policy: &Chains,
        family: IpFamily,
        limit: usize,
        mut fault: Option<&str>,
        out: &mut W,
    ) -> std::fmt::Result {
        let services = format!("{}-SERVICES", self.prefix);
        // The node-wide chains but `SERVICES` do not depend on the services: first.
        let node_nat = node_wide(
            node,
            family,
            self.prefix,
            &mut Vec::new(),
            &BTreeSet::new(),
            policy,
        )
        .nat;
        let node_names: BTreeSet<String> = node_nat.keys().cloned().collect();
        let mut pending: Vec<(String, Vec<String>)> = node_nat
            .into_iter()
            .filter(|(n, r)| {
                *n != services && self.changed(Table::Nat, name_hash(n), rules_hash(r))
            })
            .collect();
        let section = |pending: &mut Vec<(String, Vec<String>)>,
                       last: Option<&dyn Fn(&mut W) -> std::fmt::Result>,
                       fault: &mut Option<&str>,
                       out: &mut W|
         -> std::fmt::Result {
            if pending.is_empty() && last.is_none() {
                return Ok(());
            }
            pending.sort_unstable_by(|a, b| a.0.cmp(&b.0));
            writeln!(out, "*nat")?;
            for (name, _) in pending.iter() {
                writeln!(out, ":{name} - [0:0]")?;
            }
            for (name, rules) in pending.iter() {
                for r in rules {
                    writeln!(out, "-A {name} {r}")?;
                }
            }
            pending.clear();
            if let Some(last) = last {
                last(out)?;
            }
            if let Some(f) = fault.take() {
                writeln!(out, "{f}")?;
            }
            writeln!(out, "COMMIT")
        };
        section(&mut pending, None, &mut fault, out)?;
        each_chain(
            state,
            node,
            policy,
            self.prefix,
            family,
            &mut |t, chains| {
                if t != Table::Nat {
                    return Ok(());
                }
                for (name, rules) in chains {
                    // The node-wide group comes last: only its `SERVICES` is still to write.
                    if (node_names.contains(name) && *name != services)
                        || !self.changed(Table::Nat, name_hash(name), rules_hash(rules))
                    {
                        continue;
                    }
                    pending.push((name.clone(), rules.clone()));
                }
                if pending.len() >= limit {
                    section(&mut pending, None, &mut fault, out)?;
                }
                Ok(())
            },
        )?;
        // `SERVICES` jumps to every service's first chain: one commit naming them all is
        // quadratic again. Where it does not exist yet (from empty: no hook leads to it
        // before the last section), it is filled a section at a time; over an existing one
        // it is rewritten in one commit, never left half filled.
        let fresh = self
            .present(Table::Nat)
            .binary_search(&name_hash(&services))
            .is_err();
        if let Some(i) = pending
            .iter()
            .position(|(n, _)| *n == services)
            .filter(|_| fresh)
        {
            let (name, rules) = pending.swap_remove(i);
            // The services' chains it jumps to first.
            section(&mut pending, None, &mut fault, out)?;
            if rules.is_empty() {
                pending.push((name, rules));
            } else {
                write_chain_in_sections(&name, &rules, limit, fault.take(), out)?;
            }
        }
        let finish = |out: &mut W| -> std::fmt::Result {
            for h in hook_lines(self.prefix, self.existing, Table::Nat) {
                writeln!(out, "{h}")?;
            }
            let gone: Vec<&String> = self.stale(Table::Nat).collect();
            for c in &gone {
                writeln!(out, ":{c} - [0:0]")?;
            }
            for c in &gone {
                writeln!(out, "-X {c}")?;
            }
            Ok(())
        };
        section(&mut pending, Some(&finish), &mut fault, out)
    }
}

/// Declares chain `name` and appends `rules` to it, `limit` rules per `COMMIT` section
/// (`fault` ends the first).
fn write_chain_in_sections<W: std::fmt::Write + ?Sized>(
    name: &str,
    rules: &[String],
    limit: usize,
    mut fault: Option<&str>,
    out: &mut W,
) -> std::fmt::Result {
    for (k, part) in rules.chunks(limit).enumerate() {
        writeln!(out, "*nat")?;
        if k == 0 {
            writeln!(out, ":{name} - [0:0]")?;
        }
        for r in part {
            writeln!(out, "-A {name} {r}")?;
        }
        if let Some(f) = fault.take() {
            writeln!(out, "{f}")?;
        }
        writeln!(out, "COMMIT")?;
    }
    Ok(())
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
    digests_logged(state, policy, prefix, family, &RenderOptions::default())
}

/// The iptables flavour's default log settings (of [`NetfilterConfig::iptables`](crate::NetfilterConfig::iptables)).
pub fn default_log() -> LogPlan {
    crate::NetfilterConfig::iptables(None).log_plan()
}

/// What the backend's configuration changes in the rules it writes: how the drop rules log,
/// and whether hairpin goes through the hairpin ipset (see [`super::render`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RenderOptions {
    /// How the drop rules log.
    pub log: LogPlan,
    /// [`NetfilterConfig::hairpin_ipset`](crate::NetfilterConfig::hairpin_ipset).
    pub hairpin_set: bool,
}

impl RenderOptions {
    /// The options of `config`.
    pub fn of(config: &crate::NetfilterConfig) -> Self {
        RenderOptions {
            log: config.log_plan(),
            hairpin_set: config.hairpin_ipset,
        }
    }

    /// The node plan of `node` under these options.
    pub(crate) fn node(&self, node: &dataplane_core::Node) -> NodePlan {
        NodePlan {
            log: self.log,
            hairpin_set: self.hairpin_set,
            ..node_plan(node)
        }
    }
}

impl Default for RenderOptions {
    /// The iptables flavour's defaults (of [`NetfilterConfig::iptables`](crate::NetfilterConfig::iptables)).
    fn default() -> Self {
        RenderOptions::of(&crate::NetfilterConfig::iptables(None))
    }
}

/// [`digests_with`] with the rules written as `opts` says.
pub fn digests_logged(
    state: &DesiredState,
    policy: &Chains,
    prefix: &str,
    family: IpFamily,
    opts: &RenderOptions,
) -> Result<Digests, NameCollision> {
    let node = opts.node(&state.node);
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
    for table in Table::EVERY {
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
    /// Name hashes of our chains in the kernel, per table ([`Table::EVERY`]), sorted.
    present: [Vec<NameHash>; 4],
    /// The policy chains `new` was made with (`None`: compiled from the state when written).
    policy: Option<&'a Chains>,
    /// How the drop rules log, how hairpin is masqueraded.
    opts: RenderOptions,
    /// nat chains per restore section (`None`: one section, one transaction).
    section_chains: Option<usize>,
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
        let present = Table::EVERY.map(|t| hashed(existing.chains(t)));
        SyncPlan::with_present(old, new, existing, present, prefix)
    }

    /// The same sync, from the name hashes of all our chains in the kernel (`present`, per
    /// table in [`Table::EVERY`] order) and an `existing` that lists only the stale ones (see
    /// [`super::render::ExistingParser::filtered`]).
    pub fn with_present(
        old: Option<&'a Digests>,
        new: &'a Digests,
        existing: &'a Existing,
        present: [Vec<NameHash>; 4],
        prefix: &'a str,
    ) -> Self {
        SyncPlan {
            old,
            new,
            existing,
            prefix,
            present,
            policy: None,
            opts: RenderOptions::default(),
            section_chains: None,
        }
    }

    /// The same sync with its nat chains committed in sections of about `chains` chains
    /// each (cut between services), for iptables-nft: `iptables-nft-restore` 1.8.9 takes
    /// time quadratic in the chains one `COMMIT` names (its cache request keeps them in a
    /// list it searches for each; measured in `benches/notes.md`: 1k services in 14 s, 2k in
    /// 98 s, 10k in over 5 minutes), so sections keep it linear. Each section declares and
    /// fills whole services (a service's chains jump only to each other and to node-wide
    /// ones), the node-wide chains but `SERVICES` come first, `SERVICES` (a section at a time
    /// where it is new: it names every service's chain), the hooks and the deletions last: every state between two sections is a mix of whole old and new
    /// services, never a service half written. A section refused leaves the ones before it
    /// (the backend is dirty, the next sync a full one).
    #[must_use]
    pub fn in_sections(mut self, chains: usize) -> Self {
        self.section_chains = Some(chains.max(1));
        self
    }

    /// The same sync with the rules written as `opts` says (as `new` was made with,
    /// [`digests_logged`]).
    #[must_use]
    pub fn with_options(mut self, opts: RenderOptions) -> Self {
        self.opts = opts;
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
            || !self.hooks(table).is_empty()
    }

    /// The hook lines of `table`: [`hook_lines`], but for a host policy table (raw, mangle)
    /// that the new state has no chain in, the deletion of our jumps there (its chains are
    /// stale and go too).
    fn hooks(&self, table: Table) -> Vec<String> {
        if matches!(table, Table::Raw | Table::Mangle) && self.new.table(table).is_empty() {
            return reset_jumps(self.prefix, self.existing, table)
                .into_iter()
                .map(|r| format!("-D {r}"))
                .collect();
        }
        hook_lines(self.prefix, self.existing, table)
    }

    /// The sync changes nothing.
    pub fn is_empty(&self) -> bool {
        Table::EVERY.iter().all(|t| !self.touches(*t))
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
        self.write_tables(state, family, fault, &Table::EVERY, out)
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
        let node = self.opts.node(&state.node);
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
            policy,
        );
        for table in Table::EVERY {
            if !self.touches(table) || !tables.contains(&table) {
                continue;
            }
            if let (Table::Nat, Some(limit)) = (table, self.section_chains) {
                self.write_nat_sections(state, &node, policy, family, limit, fault.take(), out)?;
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
                    Table::Filter | Table::Raw | Table::Mangle => {
                        emit(&policy_in(policy, self.prefix, table))?;
                        emit(node_wide.chains(table))?;
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
            for h in self.hooks(table) {
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
