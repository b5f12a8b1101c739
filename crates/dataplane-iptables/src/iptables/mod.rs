//! The iptables flavour: kube-proxy iptables-mode chains applied with
//! `iptables-restore --noflush` / `ip6tables-restore --noflush`, and NetworkPolicy as
//! filter chains ([`policy`]) over ipsets ([`ipset`]): sets created and emptied of leaving
//! members before the rules that name them, filled with joining members after, destroyed
//! (best effort) after the rules stop naming them, put back if the rules are refused (see
//! [`ipset`] for why that order fails closed at every step).

// Chain digests and the partial-sync plan: public for the render tests, which check what a
// partial restore writes, not part of the API: hidden.
#[doc(hidden)]
pub mod digest;
pub(crate) mod hairpin;
// The set operations of a sync: public for the render tests, which run them against a
// simulated kernel, not part of the API: hidden.
pub(crate) mod host;
#[doc(hidden)]
pub mod ipset;
pub(crate) mod mode;
mod naming;
pub mod policy;
pub mod render;
mod rollback;
mod tiers;

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use dataplane_core::{
    validate, ApplyReport, BoxEventSource, Capabilities, ChangeSet, Dataplane, DesiredState, Error,
    EventOptions, Flow, ObservedState, Skipped, Stats,
};

use crate::config::NetfilterConfig;
use crate::error::NetfilterError;
use crate::events::{Names, NetfilterEvents, SharedNames};
use crate::exec;
use crate::flavour::Flavour;
use crate::plan::check_supported;
use dataplane_core::CompiledPolicy;
use dataplane_core::IpFamily;
use dataplane_core::ServiceFingerprints;
use digest::{
    digests_logged, name_hash, Digests, NameHash, RenderOptions, ServicesPatch, SyncPlan,
};
use ipset::{KernelSets, SetOp};
use policy::{is_our_set, IpSets};
use render::{write_reset, Chains, Existing, ExistingParser, Table, MAX_PREFIX_LEN};
use rollback::Snapshot;

const BACKEND: &str = Flavour::Iptables.name();

/// nat chains per `COMMIT` of a full sync with iptables-nft (see [`SyncPlan::in_sections`]):
/// `iptables-nft-restore` 1.8.9 is quadratic in the chains of one commit; at 10k services x
/// 10 (130k chains) sections of ~500 chains took ~10 s of CPU, of ~2000 ~15 s, one section
/// over 5 minutes (`benches/notes.md`).
const NFT_SECTION_CHAINS: usize = 1000;

/// The iptables backend (works with iptables-nft and iptables-legacy).
///
/// It needs no [`Dataplane::maintain`] (the trait's no-op default, and `None` for
/// [`Dataplane::maintenance_interval`]): connections are tracked by the kernel's conntrack,
/// which expires its own entries; an apply deletes the stale UDP/SCTP ones, as kube-proxy
/// does (see the crate documentation).
///
/// ```no_run
/// use dataplane_core::Dataplane;
/// use dataplane_iptables::{IptablesDataplane, NetfilterConfig};
/// # fn f(state: &dataplane_core::DesiredState) -> Result<(), dataplane_core::Error> {
/// let mut dp = IptablesDataplane::new(NetfilterConfig::iptables(None));
/// dp.apply(state)?;
/// # Ok(()) }
/// ```
#[derive(Debug)]
pub struct IptablesDataplane {
    config: NetfilterConfig,
    /// What the last successful sync programmed.
    applied: Option<Applied>,
    dirty: bool,
    /// This backend ever ran an `ipset restore` (sets of ours may be in the kernel): from
    /// then on, sets that cannot be read are an error, not "none" (they would leak).
    wrote_sets: bool,
    /// A destroy of unused sets failed after its sync committed: the next sync reads the
    /// kernel's sets to destroy them, whatever it needs.
    sets_to_clean: bool,
    /// Members of the hairpin sets per family (IPv4, IPv6) after the last sync, at most
    /// (a partial sync counts its additions, some of which may have been there): a partial
    /// sync that could go over `ipset_max_elements` takes the sync over every service, which
    /// counts exactly.
    hairpin_members: [usize; 2],
    /// What the event readers name things with, replaced after every apply while a reader
    /// is open (see [`SharedNames`]).
    names: SharedNames,
    /// The tools, resolved from the configuration at first use (an
    /// [`IptablesMode::Auto`](crate::config::IptablesMode::Auto) configuration looks at the
    /// namespace once).
    tools: std::sync::OnceLock<mode::Tools>,
    /// The L2 announcements it programmed (`crate::l2`).
    l2: crate::l2::Announcer,
    /// The test hook ([`IptablesDataplane::set_fail_transactions`]) is on.
    #[cfg(feature = "fault-injection")]
    fail_transactions: bool,
}

impl IptablesDataplane {
    /// A backend whose chains start with `config.name` (at most 5 characters) in
    /// `config.netns`. Nothing is touched until the first apply.
    pub fn new(config: NetfilterConfig) -> Self {
        Self {
            config,
            applied: None,
            dirty: false,
            wrote_sets: false,
            sets_to_clean: false,
            hairpin_members: [0; 2],
            names: SharedNames::default(),
            tools: std::sync::OnceLock::new(),
            l2: crate::l2::Announcer::default(),
            #[cfg(feature = "fault-injection")]
            fail_transactions: false,
        }
    }

    /// Where the L2 announcements go: routes and proxy entries of protocol
    /// [`crate::l2::ROUTE_PROTOCOL_IPTABLES`], drop rules in the `filter` chains `<prefix>L2`
    /// (outside the `<prefix>-` chains the syncs own), with the flavour's tools.
    fn l2_kernel(&self) -> crate::l2::Kernel {
        let [v4, v6] = [IpFamily::V4, IpFamily::V6].map(|f| {
            let (restore, tool) = self.tools(f);
            (restore.to_owned(), tool.to_owned())
        });
        crate::l2::Kernel {
            backend: BACKEND,
            netns: self.config.netns.clone(),
            protocol: crate::l2::ROUTE_PROTOCOL_IPTABLES,
            filter: crate::l2::Filter::Iptables {
                restore: [v4.0, v6.0],
                tool: [v4.1, v6.1],
                chain: format!("{}L2", self.config.name),
            },
        }
    }

    /// The iptables mode the backend runs the tools in (`Legacy` or `Nft`; resolved from the
    /// configuration, for [`IptablesMode::Auto`](crate::config::IptablesMode::Auto) by looking
    /// at the namespace, once).
    pub fn mode(&self) -> crate::config::IptablesMode {
        self.resolved().mode
    }

    /// The `iptables-save` and `ip6tables-save` a backend of `config` reads its rules with
    /// (the flavour [`mode`](Self::mode) resolves to, found out in the namespace for
    /// [`IptablesMode::Auto`](crate::config::IptablesMode::Auto)): for a reader in another
    /// process (an inspector) that must look at the flavour the writer uses, not at the one
    /// `iptables-save` on `PATH` happens to be.
    #[must_use]
    pub fn save_tools(config: &NetfilterConfig) -> [std::path::PathBuf; 2] {
        mode::resolve(BACKEND, config).save
    }

    fn resolved(&self) -> &mode::Tools {
        self.tools
            .get_or_init(|| mode::resolve(BACKEND, &self.config))
    }

    /// The names of what is applied now, for the event readers.
    fn current_names(&self) -> Names {
        self.applied
            .as_ref()
            .map(|a| Names::of_state(&a.state))
            .unwrap_or_default()
    }

    /// Hands the names of what is applied now to the open event readers (none open: nothing
    /// to compute; `events()` computes them when one opens).
    fn share_names(&self) {
        if self.names.has_readers() {
            self.names.set(self.current_names());
        }
    }

    /// Test hook (feature `fault-injection`, for tests only): make every following restore
    /// end with a rule the tool refuses (and with it the whole input), to show that a failed
    /// apply changes nothing.
    #[cfg(feature = "fault-injection")]
    pub fn set_fail_transactions(&mut self, fail: bool) {
        self.fail_transactions = fail;
    }

    /// The `iptables-restore --noflush` input of a full sync of `desired`'s `family` chains
    /// into a kernel that holds none of ours, without applying it (pure; for benches and
    /// debugging): what the backend writes, compiled the way it compiles it. The ipsets that
    /// policy chains name are written before it by `ipset restore` and are not in it (see
    /// [`policy::ipsets`]).
    pub fn render(&self, desired: &DesiredState, family: IpFamily) -> Result<String, Error> {
        self.check(desired)?;
        let prefix = &self.config.name;
        let compiled = dataplane_core::compile(desired);
        let policy = policy::chains(&compiled, desired, prefix, family)
            .map_err(|e| e.into_error(BACKEND))?;
        let new = digests_logged(
            desired,
            &policy,
            prefix,
            family,
            &RenderOptions::of(&self.config),
        )
        .map_err(|e| e.into_error(BACKEND))?;
        let none = Existing::default();
        let mut out = String::new();
        SyncPlan::new(None, &new, &none, prefix)
            .with_policy(&policy)
            .with_options(RenderOptions::of(&self.config))
            .write(desired, family, None, &mut out)
            .map_err(|_| NetfilterError::Internal {
                backend: BACKEND,
                detail: "the restore input could not be written".to_owned(),
            })?;
        Ok(out)
    }

    /// The restore tool and the plain tool of `family`.
    fn tools(&self, family: IpFamily) -> (&Path, &Path) {
        let t = self.resolved();
        let i = family_index(family);
        (&t.restore[i], &t.plain[i])
    }

    /// The `iptables-save` of `family`: iptables-restore and iptables-save are one binary
    /// family, so it is derived from the restore tool.
    fn save_tool(&self, family: IpFamily) -> PathBuf {
        self.resolved().save[family_index(family)].clone()
    }

    /// `iptables-save -c`: everything of `family`, with counters.
    fn save_with_counters(&self, family: IpFamily) -> Result<String, NetfilterError> {
        exec::run(
            BACKEND,
            self.config.netns.as_deref(),
            &self.save_tool(family),
            &["-c"],
            None,
            "save",
        )
    }

    /// What the kernel holds of ours against the chains of `new`: the name hashes of all our
    /// chains (nat, filter; sorted), and the names of those `new` lacks (the stale ones, to
    /// remove) with the hook jumps. Every sync reads this, and there are several chains per
    /// service port: their names are not kept. `snapshot`: also handed every line, to keep
    /// what is there to be put back (see [`rollback`]).
    fn existing_against(
        &self,
        family: IpFamily,
        new: &Digests,
        mut snapshot: Option<&mut Snapshot>,
    ) -> Result<(Existing, [Vec<NameHash>; 4]), NetfilterError> {
        let mut present: [Vec<NameHash>; 4] = Default::default();
        let mut parser = ExistingParser::filtered(&self.config.name, |table, name| {
            let h = name_hash(name);
            present[table.index()].push(h);
            new.get(table, h).is_none()
        });
        exec::run_lines(
            BACKEND,
            self.config.netns.as_deref(),
            &self.save_tool(family),
            &[],
            &mut |line| {
                parser.line(line);
                if let Some(s) = snapshot.as_deref_mut() {
                    s.line(line);
                }
            },
            "save",
        )?;
        let existing = parser.finish();
        for p in &mut present {
            p.sort_unstable();
            p.dedup();
            p.shrink_to_fit();
        }
        Ok((existing, present))
    }

    /// Our chains and hook jumps in the kernel, read from `iptables-save` a line at a time.
    fn existing(&self, family: IpFamily) -> Result<Existing, NetfilterError> {
        let mut parser = ExistingParser::new(&self.config.name);
        self.save_into(family, &mut parser)?;
        Ok(parser.finish())
    }

    /// Runs the save tool of `family` and feeds its output to `parser` a line at a time.
    fn save_into(
        &self,
        family: IpFamily,
        parser: &mut ExistingParser<'_>,
    ) -> Result<(), NetfilterError> {
        exec::run_lines(
            BACKEND,
            self.config.netns.as_deref(),
            &self.save_tool(family),
            &[],
            &mut |line| parser.line(line),
            "save",
        )
    }

    /// The test hook's rule, which the tool refuses (with it, the whole input); never
    /// without the `fault-injection` feature.
    // Without the feature there is no hook to read.
    #[cfg_attr(not(feature = "fault-injection"), allow(clippy::unused_self))]
    fn fault_rule(&self) -> Option<String> {
        #[cfg(feature = "fault-injection")]
        return self
            .fail_transactions
            .then(|| format!("-A {0}-SERVICES -j {0}-FAULT-INJECTED", self.config.name));
        #[cfg(not(feature = "fault-injection"))]
        None
    }

    /// Runs `iptables-restore --noflush` on the input `render` writes (streamed, never held
    /// whole); returns the number of lines.
    fn restore(
        &mut self,
        family: IpFamily,
        render: &exec::Render<'_>,
        op: &str,
    ) -> Result<usize, NetfilterError> {
        self.restore_with(family, render, op, &[])
    }

    /// [`Self::restore`] with more arguments (`--test`: check, write nothing).
    fn restore_with(
        &mut self,
        family: IpFamily,
        render: &exec::Render<'_>,
        op: &str,
        more: &[&str],
    ) -> Result<usize, NetfilterError> {
        let (restore, _) = self.tools(family);
        let restore = restore.to_owned();
        let mut args = vec!["--noflush", "-w"];
        args.extend_from_slice(more);
        let result = exec::run_streamed(
            BACKEND,
            self.config.netns.as_deref(),
            &restore,
            &args,
            render,
            op,
        );
        match result {
            Ok((_, lines)) => {
                tracing::debug!(lines, op, ?family, "iptables-restore");
                Ok(lines)
            }
            Err(e) => {
                self.dirty = true;
                Err(e)
            }
        }
    }

    fn check(&self, desired: &DesiredState) -> Result<Vec<Skipped>, Error> {
        self.config.validate(BACKEND)?;
        if self.config.name.contains('-') {
            // Our chains and sets are `<prefix>-…`: with a `-` in it, one instance's prefix
            // could start another's names (`DP` would take `DP-X`'s chains and sets).
            return Err(Error::Unsupported {
                dataplane: BACKEND.to_owned(),
                feature: "a chain prefix with '-'".to_owned(),
                object: format!("configuration name {:?}", self.config.name),
            });
        }
        if self.config.name.is_empty() || self.config.name.len() > MAX_PREFIX_LEN {
            return Err(Error::Unsupported {
                dataplane: BACKEND.to_owned(),
                feature: format!("a chain prefix of {} characters", self.config.name.len()),
                object: format!(
                    "configuration name {:?} (1..={MAX_PREFIX_LEN})",
                    self.config.name
                ),
            });
        }
        validate(desired)?;
        check_supported(desired, Flavour::Iptables)
    }

    /// Runs `ipset` with `args`; `stdin`: the input `ops` (an `ipset restore`).
    fn ipset(
        &self,
        args: &[&str],
        ops: Option<&[SetOp]>,
        op: &str,
    ) -> Result<String, NetfilterError> {
        let max = self.config.ipset_max_elements;
        match ops {
            Some(ops) => exec::run_streamed(
                BACKEND,
                self.config.netns.as_deref(),
                &self.config.ipset,
                args,
                &|out| ipset::write_ops(ops, max, out),
                op,
            )
            .map(|(stdout, _)| stdout),
            None => exec::run(
                BACKEND,
                self.config.netns.as_deref(),
                &self.config.ipset,
                args,
                None,
                op,
            ),
        }
    }

    /// The sets in the kernel (`members`: with our sets' members, else their names only).
    /// Without the `ipset` tool, or when the kernel cannot list sets, there are none of
    /// ours, unless `needed` (the state's policy needs sets) or this backend ever wrote
    /// sets (they would be left forever): then that is the error.
    fn kernel_sets(&self, members: bool, needed: bool) -> Result<KernelSets, NetfilterError> {
        let prefix = &self.config.name;
        let listed = if members {
            self.ipset(&["save"], None, "ipset save")
                .map(|text| ipset::parse_save(&text, prefix))
        } else {
            self.ipset(&["list", "-n"], None, "ipset list").map(|text| {
                let mut sets = KernelSets::default();
                for name in text.lines().map(str::trim).filter(|n| !n.is_empty()) {
                    if is_our_set(prefix, name) {
                        sets.ours.insert(name.to_owned(), BTreeSet::new());
                    } else if !hairpin::is_hairpin_set(prefix, name) {
                        sets.foreign += 1;
                    }
                }
                sets
            })
        };
        match listed {
            Err(e) if !needed && !self.wrote_sets => {
                tracing::debug!(error = %e, "no ipsets read");
                Ok(KernelSets::default())
            }
            other => other,
        }
    }

    /// Runs `ops`; if that fails, undoes what of them ran (see [`ipset::undo`]).
    fn run_set_ops(&mut self, ops: &[SetOp], op: &str) -> Result<(), NetfilterError> {
        if ops.is_empty() {
            return Ok(());
        }
        self.wrote_sets = true;
        let result = self.ipset(&["restore"], Some(ops), op).map(|_| ());
        if result.is_err() {
            self.undo_set_ops(ops);
        }
        result
    }

    /// Destroys `destroys` after the rules that named them committed: best effort (the sync
    /// is done; a failure, a set still busy for a moment, is logged and retried once after
    /// 100 ms, as weave's npc retries its ipset destroys; a set left is destroyed by the
    /// next sync, which then reads the kernel's sets). Returns how many were destroyed.
    fn destroy_unused(&mut self, destroys: &[SetOp]) -> usize {
        if destroys.is_empty() {
            return 0;
        }
        for attempt in 0..2 {
            match self.ipset(&["-exist", "restore"], Some(destroys), "ipset destroy") {
                Ok(_) => {
                    self.sets_to_clean = false;
                    return destroys.len();
                }
                Err(e) if attempt == 0 => {
                    tracing::warn!(error = %e, "unused ipsets not destroyed; retrying");
                    std::thread::sleep(std::time::Duration::from_millis(100));
                }
                Err(e) => {
                    tracing::warn!(error = %e, "unused ipsets left for the next sync");
                }
            }
        }
        self.sets_to_clean = true;
        0
    }

    /// Undoes `ops`, whatever part of them ran (see [`ipset::undo`], total under `-exist`).
    /// A failure here is logged: the caller reports the first one, and the backend is dirty
    /// (the next sync is a full one, which reads the kernel's sets).
    fn undo_set_ops(&mut self, ops: &[SetOp]) {
        self.dirty = true;
        let undo = ipset::undo(ops);
        if undo.is_empty() {
            return;
        }
        if let Err(e) = self.ipset(&["-exist", "restore"], Some(&undo), "ipset undo") {
            tracing::error!(error = %e, "ipsets could not be put back");
        }
    }

    /// Runs `ipset restore` with the hairpin sets' input `render` (see [`hairpin`]).
    fn hairpin_restore(&self, render: &exec::Render<'_>, op: &str) -> Result<(), NetfilterError> {
        exec::run_streamed(
            BACKEND,
            self.config.netns.as_deref(),
            &self.config.ipset,
            &["restore"],
            render,
            op,
        )
        .map(|_| ())
    }

    /// Creates the hairpin sets if missing and adds `members` (per family) to them.
    fn hairpin_add(&self, members: &[BTreeSet<hairpin::Member>; 2]) -> Result<(), NetfilterError> {
        let (prefix, max) = (&self.config.name, self.config.ipset_max_elements);
        self.hairpin_restore(
            &|out| hairpin::write_adds(prefix, members, max, out),
            "ipset hairpin",
        )
    }

    /// Makes the hairpin sets hold exactly `members` after a sync over every service (the
    /// members of backends gone leave), best effort: what is left is harmless and the next
    /// such sync tries again. Returns the members written.
    fn hairpin_exact(&mut self, members: &[BTreeSet<hairpin::Member>; 2]) -> usize {
        let (prefix, max) = (&self.config.name, self.config.ipset_max_elements);
        self.hairpin_members = [members[0].len(), members[1].len()];
        match self.hairpin_restore(
            &|out| hairpin::write_exact(prefix, members, max, out),
            "ipset hairpin",
        ) {
            Ok(()) => members[0].len() + members[1].len(),
            Err(e) => {
                tracing::warn!(error = %e, "stale hairpin set members left");
                0
            }
        }
    }

    /// A changed-services partial sync's hairpin work: the members of the changed services
    /// (`services`, before and after) added, only added (see [`hairpin`]). Returns the
    /// members written, or `None` where the sets could go over `ipset_max_elements` (the
    /// caller takes the sync over every service, which counts exactly).
    fn hairpin_partial(
        &mut self,
        desired: &DesiredState,
        services: &[(
            Option<&dataplane_core::Service>,
            Option<&dataplane_core::Service>,
        )],
    ) -> Result<Option<usize>, Error> {
        if !self.config.hairpin_ipset {
            return Ok(Some(0));
        }
        let adds: [BTreeSet<hairpin::Member>; 2] = [IpFamily::V4, IpFamily::V6].map(|f| {
            services
                .iter()
                .filter_map(|(_, after)| *after)
                .flat_map(|s| hairpin::service_members(desired, s, f))
                .collect()
        });
        let max = self.config.ipset_max_elements as usize;
        if (0..2).any(|i| self.hairpin_members[i] + adds[i].len() > max) {
            return Ok(None);
        }
        if adds.iter().all(BTreeSet::is_empty) {
            return Ok(Some(0));
        }
        self.hairpin_add(&adds)?;
        for (count, a) in self.hairpin_members.iter_mut().zip(&adds) {
            *count += a.len();
        }
        Ok(Some(adds[0].len() + adds[1].len()))
    }

    /// The hairpin sets' members of `desired` per family, refused (before anything is
    /// written) where a set would hold more than `ipset_max_elements`; `None` without the
    /// hairpin sets ([`NetfilterConfig::hairpin_ipset`] off).
    fn hairpin_plan(
        &self,
        desired: &DesiredState,
    ) -> Result<Option<[BTreeSet<hairpin::Member>; 2]>, Error> {
        if !self.config.hairpin_ipset {
            return Ok(None);
        }
        let members = [IpFamily::V4, IpFamily::V6].map(|f| hairpin::members(desired, f));
        let max = self.config.ipset_max_elements as usize;
        for (family, m) in [IpFamily::V4, IpFamily::V6].into_iter().zip(&members) {
            if m.len() > max {
                return Err(Error::CapacityExceeded {
                    what: format!(
                        "ipset {} (this node's backends, for hairpin), NetfilterConfig::ipset_max_elements",
                        hairpin::set_name(&self.config.name, family)
                    ),
                    needed: m.len(),
                    capacity: max,
                });
            }
        }
        Ok(Some(members))
    }

    /// The ipset work of a sync before the rules are written: the compiled policy of
    /// `desired` (`previous`, the last sync's policy and sets, brought forward by `changes`;
    /// or compiled afresh), the sets it needs, the kernel's sets, and the creates and member
    /// changes to run first. Refuses a policy that needs more sets (or members) than
    /// configured, before anything is written.
    fn plan_sets(
        &mut self,
        desired: &DesiredState,
        previous: Option<(CompiledPolicy, IpSets)>,
        changes: Option<&ChangeSet>,
    ) -> Result<SetsPlan, Error> {
        let prefix = self.config.name.clone();
        let (compiled, before, delta) = match (previous, changes) {
            (Some((mut compiled, sets)), Some(changes)) => {
                let delta = compiled.update(desired, changes);
                (compiled, Some(sets), Some(delta))
            }
            _ => (dataplane_core::compile(desired), None, None),
        };
        let mut want = policy::ipsets(&compiled, &prefix).map_err(|e| e.into_error(BACKEND))?;
        // Host policy's `hash:net` sets (named by their CIDRs: never a peer set's name).
        want.extend(policy::host_ipsets(desired, &prefix));
        // Only a full sync reads every member (to make each set exact); a partial one trusts
        // what the last sync left and reads the names (for the count).
        let incremental = before.is_some();
        let had = before.as_ref().is_some_and(|b| !b.is_empty());
        // Reading the sets may fail quietly only when there are none to write or destroy
        // (no `ipset` tool, no ipset support in the kernel, and no policy that needs it).
        let kernel = if incremental && want.is_empty() && !had && !self.sets_to_clean {
            KernelSets::default()
        } else {
            self.kernel_sets(!incremental, !want.is_empty() || had || self.sets_to_clean)?
        };
        // The hairpin sets count whether or not they exist yet.
        let hairpin = if self.config.hairpin_ipset { 2 } else { 0 };
        let peak = ipset::peak(kernel.foreign + hairpin, kernel.ours.keys(), &want);
        if peak > self.config.max_ipsets {
            let room = self.config.max_ipsets.saturating_sub(peak - want.len());
            let over = policy::first_over(&compiled, &prefix, room).map_or_else(String::new, |e| {
                format!("; the peers of endpoint {e} go over")
            });
            let hosts = want.values().filter(|s| !s.nets.is_empty()).count();
            return Err(Error::CapacityExceeded {
                what: format!(
                    "the ipsets of network policy and host policy (NetfilterConfig::max_ipsets, {} set(s) held by others, {hairpin} hairpin set(s), {hosts} of host policy{over})",
                    kernel.foreign
                ),
                needed: peak,
                capacity: self.config.max_ipsets,
            });
        }
        let max = self.config.ipset_max_elements as usize;
        for (name, spec) in &want {
            let n = if spec.nets.is_empty() {
                ipset::members(&compiled, spec).count()
            } else {
                spec.nets.len()
            };
            if n > max {
                let of = if spec.nets.is_empty() {
                    format!("peer set {}", spec.id)
                } else {
                    "the CIDRs of a host policy rule".to_owned()
                };
                return Err(Error::CapacityExceeded {
                    what: format!("ipset {name} ({of}), NetfilterConfig::ipset_max_elements"),
                    needed: n,
                    capacity: max,
                });
            }
        }
        let (ops, adds) = ipset::split(match (&before, &delta) {
            (Some(before), Some(delta)) => ipset::incremental(before, &want, &compiled, delta),
            _ => ipset::converge(&kernel, &want, &compiled),
        });
        let chains = [
            policy::chains(&compiled, desired, &prefix, IpFamily::V4)
                .map_err(|e| e.into_error(BACKEND))?,
            policy::chains(&compiled, desired, &prefix, IpFamily::V6)
                .map_err(|e| e.into_error(BACKEND))?,
        ];
        Ok(SetsPlan {
            compiled,
            want,
            kernel: kernel.ours.into_keys().collect(),
            ops,
            adds,
            chains,
        })
    }

    /// `changes`: the change set that turns the last applied state into `desired` (a
    /// partial sync brings the compiled policy forward with it).
    fn sync(
        &mut self,
        desired: &DesiredState,
        full: bool,
        changes: Option<&ChangeSet>,
    ) -> Result<ApplyReport, Error> {
        let skipped = self.check(desired)?;
        let full_sync = full || self.dirty;
        let l2 = self.l2_kernel();
        match changes.filter(|_| !full_sync) {
            Some(c) => self
                .l2
                .check_changes(&l2, &desired.node.interfaces.uplink, c)?,
            None => l2.check_state(desired)?,
        }
        let mut applied = self.applied.take();
        match self.sync_checked(desired, full_sync, changes, &mut applied) {
            Ok((mut report, now)) => {
                report.skipped = skipped;
                self.dirty = false;
                // kube-proxy's stale UDP flows (see `crate::conntrack`): from a partial
                // sync's changed services, or from the whole last state to this one.
                let stale = match changes.filter(|_| !full_sync) {
                    Some(c) => crate::conntrack::Stale::of_changes(c, &desired.node),
                    None => crate::conntrack::Stale::between(
                        applied.as_ref().map(|a| &a.state),
                        desired,
                    ),
                };
                crate::conntrack::clean(
                    BACKEND,
                    self.config.netns.as_deref(),
                    &stale,
                    &mut report.warnings,
                );
                self.applied = Some(now);
                let announced = match changes.filter(|_| !full_sync) {
                    Some(c) => self.l2.sync_changes(
                        &l2,
                        &desired.node.interfaces.uplink,
                        c,
                        &mut report.warnings,
                    ),
                    None => self.l2.sync_state(&l2, desired, &mut report.warnings),
                };
                if let Err(e) = announced {
                    self.dirty = true;
                    return Err(e);
                }
                Ok(report)
            }
            Err(e) => {
                // The last applied state stays (a later change set is applied to it, as a
                // full sync); its compiled policy may have moved into the failed sync, so
                // the next sync is a full one, which compiles afresh.
                self.applied = applied;
                self.dirty = true;
                Err(e)
            }
        }
    }

    /// [`Self::sync`] of a checked state; `applied`: the last successful sync's, whose
    /// compiled policy a partial sync takes.
    fn sync_checked(
        &mut self,
        desired: &DesiredState,
        full_sync: bool,
        changes: Option<&ChangeSet>,
        applied: &mut Option<Applied>,
    ) -> Result<(ApplyReport, Applied), Error> {
        let previous = applied
            .as_mut()
            .filter(|_| !full_sync && changes.is_some())
            .map(|a| (std::mem::take(&mut a.compiled), a.sets.clone()));
        let sets = self.plan_sets(desired, previous, changes.filter(|_| !full_sync))?;
        let fast = match (full_sync, changes, applied.as_ref()) {
            (false, Some(c), Some(a)) => self.services_only(desired, c, a, &sets)?,
            _ => None,
        };
        let (new, written) = match fast {
            Some(done) => done,
            None => self.sync_all(desired, full_sync, applied.as_ref(), &sets)?,
        };
        // Compared with the services of the last successful sync (which a failed sync leaves
        // as the applied state), not with the chains: see `dataplane_core::counts`.
        // A partial sync's counts are the change set's (`apply_changes` sets them): not
        // worth two fingerprints of every service.
        let (services_changed, services_removed) = if let Some(c) = changes.filter(|_| !full_sync) {
            c.service_counts()
        } else {
            let before = applied
                .as_ref()
                .map(|a| ServiceFingerprints::of(&a.state.services))
                .unwrap_or_default();
            ServiceFingerprints::of(&desired.services).counts_since(&before)
        };
        let report = ApplyReport {
            full_sync,
            services_changed,
            services_removed,
            objects_written: written,
            skipped: Vec::new(),
            warnings: dataplane_core::warnings(desired),
        };
        let now = Applied {
            state: desired.clone(),
            digests: new,
            compiled: sets.compiled,
            sets: sets.want,
        };
        Ok((report, now))
    }

    /// The sync over every service (a full sync, or a partial one that is not only services'
    /// endpoints): the digests of the whole state against what the kernel holds
    /// (`iptables-save`), the set operations around the rules, the rules of the chains that
    /// differ. Returns the new digests and the lines written.
    fn sync_all(
        &mut self,
        desired: &DesiredState,
        full_sync: bool,
        applied: Option<&Applied>,
        sets: &SetsPlan,
    ) -> Result<([Digests; 2], usize), Error> {
        let prefix = self.config.name.clone();
        let opts = RenderOptions::of(&self.config);
        let families = [IpFamily::V4, IpFamily::V6];
        let hairpin = self.hairpin_plan(desired)?;
        let new = [
            digests_logged(desired, &sets.chains[0], &prefix, IpFamily::V4, &opts)
                .map_err(|e| e.into_error(BACKEND))?,
            digests_logged(desired, &sets.chains[1], &prefix, IpFamily::V6, &opts)
                .map_err(|e| e.into_error(BACKEND))?,
        ];
        // Both families' kernel state is read before either is written; IPv4's also kept, to
        // be put back if IPv6 then fails (see `rollback`).
        let mut snapshot = Snapshot::new(&prefix);
        let (existing4, present4) =
            self.existing_against(IpFamily::V4, &new[0], Some(&mut snapshot))?;
        snapshot
            .finish()
            .map_err(|source| NetfilterError::Snapshot {
                backend: BACKEND,
                source,
            })?;
        let (existing6, present6) = self.existing_against(IpFamily::V6, &new[1], None)?;
        let existing = [existing4, existing6];
        let mut present = [present4, present6];
        let op = if full_sync {
            "full sync"
        } else {
            "partial sync"
        };
        // The hairpin sets with every member the new rules need (a member too many is
        // harmless: see `hairpin`), before anything else is written.
        if let Some(members) = &hairpin {
            self.hairpin_add(members)?;
        }
        // Sets first (creates, the members of new sets, removals): the rules loaded next
        // name them, and the rules still loaded only lose members (see `ipset`'s order).
        self.run_set_ops(&sets.ops, "ipset restore")?;
        let fault = self.fault_rule();
        let mut written = sets.ops.len();
        let mut plans = Vec::new();
        let nft_sections = self.mode() == crate::config::IptablesMode::Nft;
        for (i, family) in families.into_iter().enumerate() {
            let old = applied
                .as_ref()
                .filter(|_| !full_sync)
                .map(|a| &a.digests[i]);
            let plan = SyncPlan::with_present(
                old,
                &new[i],
                &existing[i],
                std::mem::take(&mut present[i]),
                &prefix,
            )
            .with_policy(&sets.chains[i])
            .with_options(opts);
            let plan = if nft_sections {
                plan.in_sections(NFT_SECTION_CHAINS)
            } else {
                plan
            };
            plans.push((family, plan));
        }
        self.test_later_tables(desired, &plans, sets)?;
        let mut committed = false;
        for (i, (family, plan)) in plans.iter().enumerate() {
            if plan.is_empty() {
                continue;
            }
            // The chains are compiled again and written into the tool while it runs (tens of
            // MiB at 10k services), never held.
            let render =
                |out: &mut dyn std::fmt::Write| plan.write(desired, *family, fault.as_deref(), out);
            match self.restore(*family, &render, op) {
                Ok(lines) => {
                    written += lines;
                    committed = true;
                }
                Err(e) if committed => {
                    // IPv6 failed after IPv4 committed: IPv4 goes back, then the set
                    // operations of both (no rule loaded names what they created).
                    if let Err(r) = self.roll_back_snapshot(IpFamily::V4, &snapshot, &existing[0]) {
                        self.undo_unloaded(sets, i);
                        return Err(rollback_failed(IpFamily::V4, e, r).into());
                    }
                    self.undo_unloaded(sets, 0);
                    return Err(e.into());
                }
                Err(e) => {
                    self.undo_unloaded(sets, i);
                    return Err(e.into());
                }
            }
        }
        drop(snapshot);
        drop(plans);
        drop(existing);
        // Additions to sets that existed, now that the rules naming the new state run (the
        // old rules with the new members could have let in what neither allows). If this
        // fails the rules stay loaded with sets that lack members: fail closed, the sync an
        // error, the backend dirty (the next sync, a full one, makes every set exact).
        if let Err(e) = self.run_set_ops(&sets.adds, "ipset add") {
            return Err(e.into());
        }
        written += sets.adds.len();
        // The sets no rule names any more go last, best effort: the sync has committed.
        let destroys = ipset::destroys(&sets.kernel, &sets.want);
        written += self.destroy_unused(&destroys);
        if let Some(members) = &hairpin {
            written += self.hairpin_exact(members);
        }
        Ok((new, written))
    }

    /// iptables-restore commits nat and filter one after the other (the `nf_tables` backend
    /// too): a filter section refused after nat committed would leave the new services with
    /// the old filter rules. The sections after the first that `plans` write (filter: policy
    /// chains and drops, small; raw and mangle: host policy) are tried first with `--test`
    /// (which checks what userspace can: the matches, the sets named, the syntax), and a
    /// refusal is returned, the set operations undone, before any table is written.
    fn test_later_tables(
        &mut self,
        desired: &DesiredState,
        plans: &[(IpFamily, SyncPlan<'_>)],
        sets: &SetsPlan,
    ) -> Result<(), Error> {
        for (family, plan) in plans {
            let later: Vec<Table> = [Table::Filter, Table::Raw, Table::Mangle]
                .into_iter()
                .filter(|t| plan.touches_table(*t))
                .collect();
            if later.len() + usize::from(plan.touches_table(Table::Nat)) > 1 {
                let render = |out: &mut dyn std::fmt::Write| {
                    plan.write_tables(desired, *family, None, &later, out)
                };
                if let Err(e) = self.restore_with(*family, &render, "filter test", &["--test"]) {
                    // Nothing written yet: every set operation goes back.
                    self.undo_unloaded(sets, 0);
                    return Err(e.into());
                }
            }
        }
        Ok(())
    }

    /// A partial sync of a change set that changes services only, without reading the
    /// kernel's rules back, as kube-proxy's partial sync (see [`ServicesPatch`]): the changed
    /// services are compiled before and after, and only their nat chains that differ from
    /// the last sync's are written, one small `--noflush` restore per family. With
    /// iptables-nft that restore costs in proportion to it; iptables-legacy replaces the
    /// whole table on every commit whatever it holds. The filter hooks are read (three
    /// built-in chains with `-S`, cheap in both modes) and put first again as on every sync;
    /// the nat hooks, like kube-proxy's jumps, only on a full sync. `None`: not such a change
    /// (the node, endpoints, policies or sets change, a service's frontends change, or the
    /// filter chains would differ): the caller syncs over every service. Returns the digests
    /// of what is programmed after it and the lines written.
    fn services_only(
        &mut self,
        desired: &DesiredState,
        changes: &ChangeSet,
        applied: &Applied,
        sets: &SetsPlan,
    ) -> Result<Option<([Digests; 2], usize)>, Error> {
        let only_services = changes.node.is_none()
            && changes.endpoints.is_empty()
            && changes.policies.is_empty()
            && changes.namespaces.is_empty()
            && changes.pods.is_empty()
            && changes.cluster_policies.is_empty()
            && changes.baseline_policy.is_none()
            && changes.nodes.is_empty()
            && changes.host_endpoints.is_empty()
            && changes.host_policies.is_empty()
            && changes.failsafe_ports.is_none();
        if !only_services
            || !sets.ops.is_empty()
            || !sets.adds.is_empty()
            || self.sets_to_clean
            || !ipset::destroys(&sets.kernel, &sets.want).is_empty()
        {
            return Ok(None);
        }
        let prefix = self.config.name.clone();
        let opts = RenderOptions::of(&self.config);
        // The services as programmed and as wanted: the change set carries both (it is
        // relative to the applied state), so neither state is searched.
        let services: Vec<(
            Option<&dataplane_core::Service>,
            Option<&dataplane_core::Service>,
        )> = changes
            .services
            .values()
            .map(|c| (c.previous.as_ref(), c.current.as_ref()))
            .collect();
        let mut patches = Vec::new();
        for (i, family) in [IpFamily::V4, IpFamily::V6].into_iter().enumerate() {
            let old = &applied.digests[i];
            if digest::filter_digests(desired, &sets.chains[i], &prefix, family, &opts)
                != old.filter()
            {
                return Ok(None);
            }
            match ServicesPatch::new(old, &services, desired, &prefix, family, &opts) {
                Some(p) => patches.push(p),
                None => return Ok(None),
            }
        }
        let hooks = [
            self.filter_hooks(IpFamily::V4)?,
            self.filter_hooks(IpFamily::V6)?,
        ];
        let writes = |i: usize| !patches[i].is_empty() || !hooks[i].is_empty();
        if writes(0) && writes(1) && !hooks[0].is_empty() {
            // IPv4's hooks would be moved first again, and the reverse patch below cannot
            // put a displaced hook back where it was: the sync over every service does
            // (from its snapshot of IPv4).
            return Ok(None);
        }
        // The hairpin members of the changed services, before their rules load.
        let Some(mut written) = self.hairpin_partial(desired, &services)? else {
            return Ok(None);
        };
        let fault = self.fault_rule();
        let digests = [
            patches[0].digests_after(&applied.digests[0]),
            patches[1].digests_after(&applied.digests[1]),
        ];
        for (i, family) in [IpFamily::V4, IpFamily::V6].into_iter().enumerate() {
            let (patch, hooks) = (&patches[i], &hooks[i]);
            if !writes(i) {
                continue;
            }
            let (chains, removed) = patch.counts();
            tracing::debug!(?family, chains, removed, "partial sync of changed services");
            let render = |out: &mut dyn std::fmt::Write| patch.write(hooks, fault.as_deref(), out);
            match self.restore(family, &render, "partial sync") {
                Ok(lines) => written += lines,
                Err(e) if i > 0 && writes(0) => {
                    // IPv6 failed after IPv4's patch committed: the reverse patch (each
                    // changed service from after back to before) over what IPv4 holds now.
                    let reversed: Vec<_> = services.iter().map(|(b, a)| (*a, *b)).collect();
                    let back = ServicesPatch::new(
                        &digests[0],
                        &reversed,
                        &applied.state,
                        &prefix,
                        IpFamily::V4,
                        &opts,
                    );
                    let result = match back {
                        Some(back) => self
                            .restore(IpFamily::V4, &|out| back.write(&[], None, out), "rollback")
                            .map(|_| ()),
                        None => Err(NetfilterError::Internal {
                            backend: BACKEND,
                            detail: "the reverse of a services patch changes the dispatch"
                                .to_owned(),
                        }),
                    };
                    return Err(match result {
                        Ok(()) => e.into(),
                        Err(r) => rollback_failed(IpFamily::V4, e, r).into(),
                    });
                }
                Err(e) => return Err(e.into()),
            }
        }
        Ok(Some((digests, written)))
    }

    /// The lines that put our filter hooks first again in `family` (see [`hook_lines`]),
    /// from `-S` of the three hooked built-in filter chains: one chain each, where
    /// `iptables-save` would list every table (and, with iptables-nft, fetch every rule).
    fn filter_hooks(&self, family: IpFamily) -> Result<Vec<String>, NetfilterError> {
        let (_, tool) = self.tools(family);
        let tool = tool.to_owned();
        let mut parser = ExistingParser::new(&self.config.name);
        parser.line("*filter");
        let mut builtins: Vec<&str> = render::hooks(&self.config.name)
            .into_iter()
            .filter(|(t, _, _)| *t == Table::Filter)
            .map(|(_, chain, _)| chain)
            .collect();
        builtins.dedup();
        for chain in builtins {
            exec::run_lines(
                BACKEND,
                self.config.netns.as_deref(),
                &tool,
                &["-w", "-t", "filter", "-S", chain],
                &mut |line| parser.line(line),
                "list a hooked chain",
            )?;
        }
        Ok(render::hook_lines(
            &self.config.name,
            &parser.finish(),
            Table::Filter,
        ))
    }

    /// Undoes the set operations run before the rules of family `i` and the next (the rules
    /// of a family loaded before name its own; the backend is dirty: the next sync is a full
    /// one).
    fn undo_unloaded(&mut self, sets: &SetsPlan, i: usize) {
        let unloaded: Vec<SetOp> = sets
            .ops
            .iter()
            .filter(|o| {
                sets.want
                    .get(o.name())
                    .is_none_or(|s| family_index(s.family) >= i)
            })
            .cloned()
            .collect();
        self.undo_set_ops(&unloaded);
    }

    /// Puts `family`'s rules back as `snapshot` holds them (see [`rollback`]), over what the
    /// kernel holds now; `before`: what the sync read before writing (where it moved hooks,
    /// they go back where they were).
    fn roll_back_snapshot(
        &mut self,
        family: IpFamily,
        snapshot: &Snapshot,
        before: &Existing,
    ) -> Result<(), NetfilterError> {
        let prefix = self.config.name.clone();
        // The chains of ours the sync added (the snapshot lacks them), and the hooks now.
        let mut parser = ExistingParser::filtered(&prefix, |t, name| !snapshot.has(t, name));
        self.save_into(family, &mut parser)?;
        let now = parser.finish();
        // nat and filter: the sync put missing or misplaced hooks first; raw and mangle
        // (hooked only with host policy): the sync added or deleted our jumps.
        let moved = Table::EVERY.map(|t| match t {
            Table::Nat | Table::Filter => !render::hook_lines(&prefix, before, t).is_empty(),
            Table::Raw | Table::Mangle => {
                render::reset_jumps(&prefix, before, t) != render::reset_jumps(&prefix, &now, t)
            }
        });
        let lines = self.restore(
            family,
            &|out| snapshot.write_rollback(&prefix, &now, moved, out),
            "rollback",
        )?;
        tracing::warn!(
            ?family,
            lines,
            "rules put back after the next family failed"
        );
        Ok(())
    }

    /// The rules of our chains in `iptables-save -c`: (table, chain) → (packets, rule text).
    fn our_rules(&self, family: IpFamily) -> Result<Rules, NetfilterError> {
        let save = self.save_with_counters(family)?;
        Ok(render::counted_rules(&save, &self.config.name))
    }

    /// The packets counted by all rules of one of our nat chains (`None`: no such chain or
    /// an empty one).
    pub fn chain_counter(&self, family: IpFamily, chain: &str) -> Result<Option<u64>, Error> {
        let rules = self.our_rules(family)?;
        Ok(rules
            .get(&(Table::Nat, chain.to_owned()))
            .map(|r| r.iter().map(|(p, _)| *p).sum()))
    }
}

/// The error of a failed rollback of `family` after `failed`.
fn rollback_failed(
    family: IpFamily,
    failed: NetfilterError,
    rollback: NetfilterError,
) -> NetfilterError {
    tracing::error!(error = %rollback, ?family, "rules could not be put back");
    NetfilterError::RollbackFailed {
        backend: BACKEND,
        family: match family {
            IpFamily::V4 => "IPv4",
            IpFamily::V6 => "IPv6",
        },
        failed: Box::new(failed),
        source: Box::new(rollback),
    }
}

/// The place of `family` in per-family arrays (IPv4, IPv6).
fn family_index(family: IpFamily) -> usize {
    match family {
        IpFamily::V4 => 0,
        IpFamily::V6 => 1,
    }
}

/// What a successful sync programmed, kept for the next one.
#[derive(Debug)]
struct Applied {
    /// The state.
    state: DesiredState,
    /// The digests of its chains per family (IPv4, IPv6).
    digests: [Digests; 2],
    /// Its compiled NetworkPolicy, brought forward by each partial sync
    /// ([`CompiledPolicy::update`]).
    compiled: CompiledPolicy,
    /// The ipsets its policy chains name.
    sets: IpSets,
}

/// The ipset side of one sync ([`IptablesDataplane::plan_sets`]).
struct SetsPlan {
    /// The compiled policy of the state being applied.
    compiled: CompiledPolicy,
    /// The sets its chains name.
    want: IpSets,
    /// Our sets in the kernel before the sync.
    kernel: BTreeSet<String>,
    /// Creates, the members of created sets and removals, run before the rules.
    ops: Vec<SetOp>,
    /// Additions to sets that existed, run after the rules (see [`ipset`]'s order).
    adds: Vec<SetOp>,
    /// The policy chains per family (IPv4, IPv6).
    chains: [Chains; 2],
}

use render::CountedRules as Rules;

/// A `fmt::Write` that keeps nothing.
struct Discard;

impl std::fmt::Write for Discard {
    fn write_str(&mut self, _: &str) -> std::fmt::Result {
        Ok(())
    }
}

impl Dataplane for IptablesDataplane {
    fn capabilities(&self) -> Capabilities {
        Flavour::Iptables.capabilities()
    }

    fn apply(&mut self, desired: &DesiredState) -> Result<ApplyReport, Error> {
        let report = self.sync(desired, true, None);
        self.share_names();
        report
    }

    fn apply_changes(&mut self, changes: &ChangeSet) -> Result<ApplyReport, Error> {
        let Some(applied) = &self.applied else {
            return Err(Error::FullSyncRequired);
        };
        let mut desired = applied.state.clone();
        changes.apply_to(&mut desired);
        let report = self.sync(&desired, false, Some(changes));
        self.share_names();
        let mut report = report?;
        (report.services_changed, report.services_removed) = changes.service_counts();
        // An incremental apply reports about the changed services only (the trait's contract).
        let current: Vec<&dataplane_core::Service> = changes
            .services
            .values()
            .filter_map(|c| c.current.as_ref())
            .collect();
        // (The sync's own warnings, such as a failed conntrack cleanup, stay.)
        report
            .warnings
            .retain(|w| w.field == "conntrack" || w.field == "l2Announce");
        report.warnings.extend(
            current
                .iter()
                .flat_map(|s| dataplane_core::service_warnings(&desired.node, s)),
        );
        let objects: Vec<String> = current
            .iter()
            .map(|s| format!("service {}", s.name))
            .collect();
        report.skipped.retain(|skip| objects.contains(&skip.object));
        Ok(report)
    }

    fn observe(&self) -> Result<ObservedState, Error> {
        let mut frontends = Vec::new();
        for family in [IpFamily::V4, IpFamily::V6] {
            let rules = self.our_rules(family)?;
            frontends.extend(
                render::frontends_of(&rules, &self.config.name)
                    .into_iter()
                    .map(|(f, _)| f),
            );
        }
        frontends.sort();
        Ok(ObservedState { frontends })
    }

    fn flows(&self) -> Result<Vec<Flow>, Error> {
        let Some(Applied { state, .. }) = &self.applied else {
            return Ok(Vec::new());
        };
        let text = exec::read_proc(
            BACKEND,
            self.config.netns.as_deref(),
            "/proc/net/nf_conntrack",
        )?;
        Ok(crate::conntrack::parse(
            &text,
            &crate::conntrack::frontends(state),
        ))
    }

    fn stats(&self) -> Result<Stats, Error> {
        let mut s = Stats::default();
        for family in [IpFamily::V4, IpFamily::V6] {
            render::add_stats(&self.our_rules(family)?, &mut s);
        }
        s.flows = self.flows()?.len() as u64;
        // The kernel conntrack's failures in this namespace (table full: `drop`), as the
        // nftables backend reports them.
        match crate::exec::read_proc(
            BACKEND,
            self.config.netns.as_deref(),
            "/proc/net/stat/nf_conntrack",
        ) {
            Ok(text) => crate::nft::observe::add_conntrack_stat(&mut s.other, &text),
            Err(e) => tracing::debug!(error = %e, "no conntrack statistics"),
        }
        Ok(s)
    }

    /// NFLOG drops and rejects of our chains, and with `options.new_connections` the
    /// connections they translated (see [`crate::events`]); named from what is applied, as
    /// every later apply changes it (a reader opened before the first apply names what it
    /// programs).
    fn events(&self, options: &EventOptions) -> Result<BoxEventSource, Error> {
        self.names.set(self.current_names());
        NetfilterEvents::boxed(BACKEND, &self.config, options, self.names.clone())
    }

    fn reset(&mut self) -> Result<(), Error> {
        for family in [IpFamily::V4, IpFamily::V6] {
            let existing = self.existing(family)?;
            let prefix = self.config.name.clone();
            // Anything to remove (found without writing it), then written into the tool;
            // with iptables-nft in sections (see `write_reset_in_sections`).
            if write_reset(&prefix, &existing, &mut Discard).unwrap_or(true) {
                if self.mode() == crate::config::IptablesMode::Nft {
                    self.restore(
                        family,
                        &|out| {
                            render::write_reset_in_sections(
                                &prefix,
                                &existing,
                                NFT_SECTION_CHAINS,
                                out,
                            )
                            .map(|_| ())
                        },
                        "reset",
                    )?;
                } else {
                    self.restore(
                        family,
                        &|out| write_reset(&prefix, &existing, out).map(|_| ()),
                        "reset",
                    )?;
                }
            }
        }
        // Our sets go after the rules that named them.
        let kernel = self.kernel_sets(false, false)?;
        self.wrote_sets = false;
        self.sets_to_clean = false;
        let destroys = ipset::destroys(kernel.ours.keys(), &IpSets::new());
        if !destroys.is_empty() {
            self.ipset(&["-exist", "restore"], Some(&destroys), "ipset destroy")?;
        }
        // The hairpin sets (not among the policy sets above), now that no rule names them.
        // Without the tool there are none (it is needed to write them).
        if let Ok(listed) = self.ipset(&["list", "-n"], None, "ipset list") {
            let hairpin: Vec<&str> = hairpin::ours_in(&self.config.name, &listed);
            if !hairpin.is_empty() {
                self.hairpin_restore(
                    &|out| {
                        hairpin
                            .iter()
                            .try_for_each(|n| writeln!(out, "destroy {n}"))
                    },
                    "ipset destroy",
                )?;
            }
        }
        self.hairpin_members = [0; 2];
        let l2 = self.l2_kernel();
        self.l2.reset(&l2)?;
        self.applied = None;
        self.dirty = false;
        self.share_names();
        Ok(())
    }
}
