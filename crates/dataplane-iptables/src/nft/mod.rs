//! The nftables flavour.

mod family;
pub mod host;
pub(crate) mod netlink;
// Reading `nft -j` listings back: public for the tests that parse captured listings (its
// `Listing` holds `serde_json` values), not part of the API: hidden.
#[doc(hidden)]
pub mod observe;
pub mod policy;
pub mod render;
mod rule_text;
pub mod tiers;

use std::collections::BTreeMap;
use std::net::SocketAddr;

use dataplane_core::{
    validate, ApplyReport, BoxEventSource, Capabilities, ChangeSet, Dataplane, DesiredState, Error,
    EventOptions, Flow, Incremental, Node, ObjectName, ObservedState, Protocol, Skipped, Stats,
    Validator,
};

use crate::config::NetfilterConfig;
use crate::error::NetfilterError;
use crate::events::{InterfaceRole, Names, NetfilterEvents, SharedNames};
use crate::exec;
use crate::flavour::Flavour;
use crate::plan::check_supported;
use crate::plan::{changed_hairpin, changed_ports, node_plan_with};
use dataplane_core::ServiceFingerprints;
use render::{
    compile_patch, compile_state_with, render_full, render_patch, render_reset, sorted_difference,
    write_full_except, Element, NftRuleset,
};

const BACKEND: &str = Flavour::Nftables.name();

/// A slot key no group ever uses: deleting it makes the kernel refuse the transaction.
const FAULT_KEY: u32 = 0x7fff_ffff;

/// The nftables backend.
///
/// It needs no [`Dataplane::maintain`] (the trait's no-op default, and `None` for
/// [`Dataplane::maintenance_interval`]): connections are tracked by the kernel's conntrack,
/// which expires its own entries; an apply deletes the stale UDP/SCTP ones, as kube-proxy
/// does (see the crate documentation).
///
/// ```no_run
/// use dataplane_core::Dataplane;
/// use dataplane_iptables::{NetfilterConfig, NftablesDataplane};
/// # fn f(state: &dataplane_core::DesiredState) -> Result<(), dataplane_core::Error> {
/// let mut dp = NftablesDataplane::new(NetfilterConfig::nftables(None));
/// dp.apply(state)?;
/// # Ok(()) }
/// ```
#[derive(Debug)]
pub struct NftablesDataplane {
    config: NetfilterConfig,
    /// The node and the ruleset of the last successful sync. No copy of the services: the
    /// ruleset is what partial syncs diff against, and a copy of the state would be a large
    /// part of the backend's memory (`benches/scaling` measures it).
    applied: Option<(Node, NftRuleset)>,
    /// The frontends and endpoint addresses the applied state claims, so that a partial sync
    /// is validated against the services it keeps, not only in itself.
    validator: Option<Validator>,
    /// A transaction failed since the last successful one: the next sync is full.
    dirty: bool,
    /// The netlink socket of element-only changes, kept between them (see
    /// [`netlink::Socket`]); dropped after a failure and on reset.
    netlink: Option<netlink::Socket>,
    /// The services the last successful sync programmed, for the report's counts (a failed
    /// transaction changes nothing, so they stay).
    programmed: ServiceFingerprints,
    /// What NetworkPolicy is compiled from (the last successful sync's node, endpoints, peer
    /// pods, namespaces and policies; no services), for [`CompiledPolicy::update`] in
    /// partial syncs. Taken out during a partial sync and put back on success: a failure
    /// leaves `None`, and the next partial sync asks for a full one.
    ///
    /// [`CompiledPolicy::update`]: dataplane_core::CompiledPolicy::update
    policy_state: Option<Box<DesiredState>>,
    /// What the event readers name things with, replaced after every apply while a reader
    /// is open (see [`SharedNames`]).
    names: SharedNames,
    /// The L2 announcements it programmed (`crate::l2`).
    l2: crate::l2::Announcer,
    /// The test hook ([`NftablesDataplane::set_fail_transactions`]) is on.
    #[cfg(feature = "fault-injection")]
    fail_transactions: bool,
}

impl NftablesDataplane {
    /// A backend that programs table `config.name` in `config.netns`. Nothing is touched until
    /// the first apply.
    pub fn new(config: NetfilterConfig) -> Self {
        Self {
            config,
            applied: None,
            validator: None,
            dirty: false,
            netlink: None,
            programmed: ServiceFingerprints::default(),
            policy_state: None,
            names: SharedNames::default(),
            l2: crate::l2::Announcer::default(),
            #[cfg(feature = "fault-injection")]
            fail_transactions: false,
        }
    }

    /// Where the L2 announcements go: routes and proxy entries of protocol
    /// [`crate::l2::ROUTE_PROTOCOL_NFTABLES`], drop rules in table `inet <name>-l2`.
    fn l2_kernel(&self) -> crate::l2::Kernel {
        crate::l2::Kernel {
            backend: BACKEND,
            netns: self.config.netns.clone(),
            protocol: crate::l2::ROUTE_PROTOCOL_NFTABLES,
            filter: crate::l2::Filter::Nftables {
                nft: self.config.nft.clone(),
                table: format!("{}-l2", self.config.name),
            },
        }
    }

    /// The names of what is applied now, for the event readers.
    fn current_names(&self) -> Names {
        let mut names = Names::default();
        if let Some((node, rs)) = &self.applied {
            names.node.clone_from(&node.name);
            names.frontends = frontends(rs);
            names.pod_cidrs.clone_from(&node.pod_cidrs);
            names
                .interfaces
                .insert(node.interfaces.uplink.clone(), InterfaceRole::Uplink);
        }
        if let Some(state) = &self.policy_state {
            names.add_pods(state);
        }
        names
    }

    /// Hands the names of what is applied now to the open event readers (none open: nothing
    /// to compute; `events()` computes them when one opens).
    fn share_names(&self) {
        if self.names.has_readers() {
            self.names.set(self.current_names());
        }
    }

    /// The configuration.
    pub fn config(&self) -> &NetfilterConfig {
        &self.config
    }

    /// The configuration, to change tool paths between applies (changing `netns` or `name`
    /// after an apply orphans what was programmed).
    pub fn config_mut(&mut self) -> &mut NetfilterConfig {
        &mut self.config
    }

    /// Test hook (feature `fault-injection`, for tests only): make every following
    /// transaction, or netlink batch, end with an operation the kernel refuses, to show that a
    /// failed apply changes nothing.
    #[cfg(feature = "fault-injection")]
    pub fn set_fail_transactions(&mut self, fail: bool) {
        self.fail_transactions = fail;
    }

    /// Whether the test hook asks for a refused transaction (never without the feature).
    // Without the feature there is no hook to read.
    #[cfg_attr(not(feature = "fault-injection"), allow(clippy::unused_self))]
    fn fault(&self) -> bool {
        #[cfg(feature = "fault-injection")]
        return self.fail_transactions;
        #[cfg(not(feature = "fault-injection"))]
        false
    }

    /// The full-sync transaction for `desired`, without applying it (pure; for `dpctl`, benches
    /// and debugging).
    pub fn render(&self, desired: &DesiredState) -> Result<String, Error> {
        let rs = self.compile(desired)?;
        Ok(render_full(&rs))
    }

    fn check(desired: &DesiredState) -> Result<Vec<Skipped>, Error> {
        validate(desired)?;
        Self::check_supported(desired)
    }

    fn check_supported(desired: &DesiredState) -> Result<Vec<Skipped>, Error> {
        check_supported(desired, Flavour::Nftables)
    }

    fn compile(&self, desired: &DesiredState) -> Result<NftRuleset, Error> {
        self.config.validate(BACKEND)?;
        Self::check(desired)?;
        compile_state_with(desired, &self.config)
    }

    fn nft(&self, args: &[&str], stdin: Option<&str>, op: &str) -> Result<String, NetfilterError> {
        exec::run(
            BACKEND,
            self.config.netns.as_deref(),
            &self.config.nft,
            args,
            stdin,
            op,
        )
    }

    fn transaction(&mut self, text: &str, op: &str) -> Result<usize, NetfilterError> {
        let fault = self.fault();
        self.transaction_with(&|out| out.write_str(text), op, fault)
    }

    /// The operation the kernel refuses (the test hook's), for a netlink batch.
    fn fault_op() -> netlink::ElementOp {
        netlink::ElementOp {
            set: "backends-v4".into(),
            key: netlink::mark_bytes(FAULT_KEY),
            data: None,
            delete: true,
        }
    }

    /// Runs `nft -f -` on the transaction `render` writes (streamed to `nft`, never held
    /// whole); returns the number of lines.
    fn transaction_with(
        &mut self,
        render: &exec::Render<'_>,
        op: &str,
        fault: bool,
    ) -> Result<usize, NetfilterError> {
        let table = &self.config.name;
        let with_fault = |out: &mut dyn std::fmt::Write| {
            render(out)?;
            if fault {
                writeln!(
                    out,
                    "delete element inet {table} backends-v4 {{ {FAULT_KEY:#010x} }}"
                )?;
            }
            Ok(())
        };
        let result = exec::run_streamed(
            BACKEND,
            self.config.netns.as_deref(),
            &self.config.nft,
            &["-f", "-"],
            &with_fault,
            op,
        );
        match result {
            Ok((_, lines)) => {
                tracing::debug!(lines, op, "nft transaction");
                Ok(lines)
            }
            Err(e) => {
                self.dirty = true;
                Err(e)
            }
        }
    }

    fn full_sync(&mut self, desired: &DesiredState) -> Result<ApplyReport, Error> {
        self.config.validate(BACKEND)?;
        // Validates in full, as `check` does, and keeps the claims for partial syncs.
        let validator = Validator::new(desired)?;
        let skipped = Self::check_supported(desired)?;
        let l2 = self.l2_kernel();
        l2.check_state(desired)?;
        let rs = compile_state_with(desired, &self.config)?;
        // Into a table that holds no service yet (nothing can be disturbed), the backend and
        // hairpin elements, most of a big ruleset, go in a netlink batch of their own after
        // the transaction: `nft` spends about as long parsing those 100k+ elements as all the
        // chains and rules of 10k services.
        let empty_before = !self.dirty
            && self
                .applied
                .as_ref()
                .is_some_and(|(_, old)| old.services.is_empty());
        let in_batch = if empty_before {
            rs.node_elements
                .iter()
                .chain(rs.services.values().flat_map(|s| s.elements.iter()))
                .filter(|e| by_netlink(e))
                .count()
        } else {
            0
        };
        // With the fault hook on, the element batch is what fails: the restore below runs.
        let fault_in_batch = self.fault() && in_batch > 0;
        let lines = self.transaction_with(
            &|out| write_full_except(&rs, |e| in_batch > 0 && by_netlink(e), out),
            "full sync",
            self.fault() && !fault_in_batch,
        )?;
        let objects_written = lines + in_batch;
        if in_batch > 0 {
            // Encoded straight from the ruleset, the elements `render_full_except` left out
            // (the same test): no list of ~126k operations next to the batch at 10k x 10.
            let ops = rs
                .node_elements
                .iter()
                .chain(rs.services.values().flat_map(|s| &s.elements))
                .filter_map(|e| element_op(e, false))
                .chain(fault_in_batch.then(Self::fault_op));
            if let Err(e) = self.send_elements(ops) {
                // Back to the table as it was (no services), in one transaction.
                if let Some((node, old)) = self.applied.take() {
                    // Never with the fault hook: it stands for the one failure above.
                    if self
                        .transaction_with(
                            &|out| write_full_except(&old, |_| false, out),
                            "restore after a failed full sync",
                            false,
                        )
                        .is_ok()
                    {
                        self.dirty = false;
                    }
                    self.applied = Some((node, old));
                }
                return Err(e.into());
            }
        }
        self.dirty = false;
        // The datagram frontends this sync programs, and the ones it removed (the old
        // ruleset's), whose stale conntrack entries go below.
        let mut stale = crate::conntrack::Stale::new(&desired.node.service_cidrs);
        for s in &desired.services {
            stale.current(s, &desired.node.addresses);
        }
        if let Some((_, old)) = &self.applied {
            for (frontend, protocol) in frontends(old).into_keys() {
                stale.removed_frontend(frontend, protocol);
            }
        }
        let programmed = ServiceFingerprints::of(&desired.services);
        let (services_changed, services_removed) = programmed.counts_since(&self.programmed);
        self.programmed = programmed;
        let mut report = ApplyReport {
            full_sync: true,
            services_changed,
            services_removed,
            objects_written,
            skipped,
            warnings: dataplane_core::warnings(desired),
        };
        crate::conntrack::clean(
            BACKEND,
            self.config.netns.as_deref(),
            &stale,
            &mut report.warnings,
        );
        self.applied = Some((desired.node.clone(), rs));
        self.validator = Some(validator);
        self.policy_state = Some(Box::new(policy_state(desired)));
        if let Err(e) = self.l2.sync_state(&l2, desired, &mut report.warnings) {
            self.dirty = true;
            return Err(e);
        }
        Ok(report)
    }

    /// Sends `ops` as one netlink batch over the kept socket (opened when there is none);
    /// after a failure the socket is dropped and the next sync is full.
    fn send_elements(
        &mut self,
        ops: impl IntoIterator<Item = netlink::ElementOp>,
    ) -> Result<(), NetfilterError> {
        let sent = match self.netlink.take() {
            Some(socket) => Ok(socket),
            None => netlink::Socket::open(self.config.netns.as_deref()),
        }
        .and_then(|socket| socket.apply(&self.config.name, ops).map(|()| socket));
        match sent {
            Ok(socket) => {
                self.netlink = Some(socket);
                Ok(())
            }
            Err(e) => {
                self.dirty = true;
                Err(e)
            }
        }
    }

    fn listing(&self) -> Result<observe::Listing, NetfilterError> {
        let json = self.nft(
            &["-j", "list", "table", "inet", &self.config.name],
            None,
            "list table",
        )?;
        observe::parse_listing(&json)
    }

    /// The policy objects after `changes`, taken out of the backend (put back when the sync
    /// succeeds).
    fn next_policy_state(&mut self, changes: &ChangeSet) -> Result<Box<DesiredState>, Error> {
        let mut state = self.policy_state.take().ok_or(Error::FullSyncRequired)?;
        changes.apply_to(&mut state);
        // `apply_to` also brings the changed services: not what policy is compiled from.
        state.services.clear();
        Ok(state)
    }

    /// What a partial sync refuses before anything: a bad configuration, and by name the
    /// objects the flavour does not program.
    fn check_change_support(&self, changes: &ChangeSet) -> Result<(), Error> {
        self.config.validate(BACKEND)?;
        let caps = Flavour::Nftables.capabilities();
        caps.check_policy_tier_changes(changes)?;
        caps.check_l2_announcement_changes(changes)
    }

    /// [`Dataplane::apply_changes`] without the conntrack cleanup that follows it.
    fn partial_sync(&mut self, changes: &ChangeSet) -> Result<ApplyReport, Error> {
        self.check_change_support(changes)?;
        let (Some((node, rs)), Some(validator)) = (&self.applied, &self.validator) else {
            return Err(Error::FullSyncRequired);
        };
        // The changed objects against the ones that stay, as a full validation would: a
        // clash is a typed error naming both, before the kernel sees anything. Core's
        // validator covers every kind of object, the cluster-wide policy objects (cluster
        // policies, the baseline, peer nodes, host endpoints and policies, failsafe ports)
        // included.
        let verdict = validator.check(node, changes)?;
        // The uplink and its sysctls, for the announced addresses after the change.
        let uplink = &node.interfaces.uplink;
        self.l2.check_changes(&self.l2_kernel(), uplink, changes)?;
        // After a failed transaction, and for a change of the node (which every service is
        // compiled against), the whole state is needed, of which this backend keeps no copy.
        // So is a change of `shared_pick_chains` (the node-wide maps and chains differ).
        let layout_changed = rs.picks.is_empty() == self.config.shared_pick_chains;
        if self.dirty || verdict == Incremental::FullRequired || layout_changed {
            return Err(Error::FullSyncRequired);
        }
        // Work proportional to the change: validate and compile only the services it touches
        // (cross-service clashes, such as a frontend used twice, the kernel refuses as a
        // duplicate map element, which fails the whole transaction).
        let mut touched = DesiredState::new(node.clone());
        touched.services = changes
            .services
            .values()
            .filter_map(|c| c.current.clone())
            .collect();
        touched.endpoints = changes
            .endpoints
            .values()
            .filter_map(|c| c.current.clone())
            .collect();
        let skipped = Self::check_supported(&touched)?;
        let planned = changed_ports(&touched, changes);
        let patch = compile_patch(
            rs,
            &node_plan_with(node, &self.config),
            planned.iter().map(|(n, p)| (n, p.as_deref())),
            &changed_hairpin(node, changes),
        )?;
        let (services_changed, services_removed) = changes.service_counts();
        let mut report = ApplyReport {
            full_sync: false,
            services_changed,
            services_removed,
            objects_written: 0,
            skipped,
            warnings: changes
                .services
                .values()
                .filter_map(|c| c.current.as_ref())
                .flat_map(|s| dataplane_core::service_warnings(node, s))
                .collect(),
        };
        // NetworkPolicy: core's incremental update on the policy objects after the change
        // (endpoints, peer pods, namespaces, policies: none of them is in `touched`).
        let policy_changed = !changes.policies.is_empty()
            || !changes.pods.is_empty()
            || !changes.namespaces.is_empty()
            || !changes.endpoints.is_empty()
            || changes.has_tier_changes();
        let policy = if policy_changed {
            let state = self.next_policy_state(changes)?;
            let (_, rs) = self.applied.as_mut().ok_or(Error::FullSyncRequired)?;
            // Updates core's tables in place (a copy would cost the whole policy per
            // change): from here on a failure leaves them ahead of the kernel, so it makes
            // the next sync a full one (as a failed transaction does).
            let max = self.config.max_policy_elements;
            match policy::compile_patch(&mut rs.policy, &state, changes, max) {
                Ok(patch) => Some((state, patch)),
                Err(e) => {
                    self.dirty = true;
                    return Err(e);
                }
            }
        } else {
            None
        };
        let (_, rs) = self.applied.as_ref().ok_or(Error::FullSyncRequired)?;
        let member_ops = match &policy {
            None => Some(Vec::new()),
            Some((_, p)) if p.members_only() => Some(policy::member_ops(&rs.policy, p)),
            Some(_) => None,
        };
        if let (Some(mut ops), Some(member_ops)) = (element_ops(rs, &patch), member_ops) {
            // Only backends, hairpin addresses or peer-set members changed: no chain is
            // touched, so skip the nft process (and its dump of every chain) and send the
            // elements directly.
            ops.extend(member_ops);
            report.objects_written = ops.len();
            if self.fault() {
                ops.push(Self::fault_op());
            }
            tracing::debug!(elements = ops.len(), "partial sync through netlink");
            self.send_elements(ops)?;
        } else {
            let mut text = render_patch(rs, &patch);
            if let Some((_, p)) = &policy {
                let _ = policy::write_patch(&rs.policy, p, &self.config.name, &mut text);
            }
            report.objects_written = text.lines().count();
            if !text.is_empty() {
                self.transaction(&text, "partial sync")?;
            }
        }
        self.programmed.record(changes);
        if let Some((node, rs)) = &mut self.applied {
            rs.apply_patch(patch);
            if let Some((state, p)) = policy {
                rs.policy.apply_patch(p);
                self.policy_state = Some(state);
            }
            if let Some(v) = &mut self.validator {
                v.commit(node, changes);
            }
        }
        self.announce_changes(changes, &mut report.warnings)?;
        Ok(report)
    }

    /// The L2 announcements of a partial sync whose rules are in; a failure makes the next
    /// sync a full one.
    fn announce_changes(
        &mut self,
        changes: &ChangeSet,
        warnings: &mut Vec<dataplane_core::Warning>,
    ) -> Result<(), Error> {
        let l2 = self.l2_kernel();
        let (node, _) = self.applied.as_ref().ok_or(Error::FullSyncRequired)?;
        let uplink = node.interfaces.uplink.clone();
        self.l2
            .sync_changes(&l2, &uplink, changes, warnings)
            .inspect_err(|_| self.dirty = true)
    }

    /// The packet counter at the top of one of our chains (`svc-v4-ns/name/tcp/80`, ...);
    /// `None` for a port without a chain of its own
    /// ([`NetfilterConfig::shared_pick_chains`]).
    pub fn chain_counter(&self, chain: &str) -> Result<Option<u64>, Error> {
        Ok(observe::chain_counter(&self.listing()?, chain))
    }
}

/// What NetworkPolicy is compiled from: `desired` without its services (kept between syncs
/// for incremental policy updates; the services would be most of a copy's memory).
fn policy_state(desired: &DesiredState) -> DesiredState {
    let mut state = DesiredState::new(desired.node.clone());
    state.endpoints.clone_from(&desired.endpoints);
    state.policies.clone_from(&desired.policies);
    state.namespaces.clone_from(&desired.namespaces);
    state.pods.clone_from(&desired.pods);
    state.cluster_policies.clone_from(&desired.cluster_policies);
    state.baseline_policy.clone_from(&desired.baseline_policy);
    state.nodes.clone_from(&desired.nodes);
    state.host_endpoints.clone_from(&desired.host_endpoints);
    state.host_policies.clone_from(&desired.host_policies);
    state.failsafe_ports.clone_from(&desired.failsafe_ports);
    state
}

/// The element operations of `patch` when it changes nothing but elements of the backend and
/// hairpin sets (whose keys and values have fixed binary forms); `None` otherwise.
fn element_ops(old: &NftRuleset, patch: &render::Patch) -> Option<Vec<netlink::ElementOp>> {
    let mut deletes = Vec::new();
    let mut adds = Vec::new();
    if !patch.picks.is_empty() {
        return None;
    }
    for e in &patch.node_elements {
        adds.push(element_op(e, false)?);
    }
    for (name, new) in &patch.services {
        let (Some(o), Some(n)) = (old.services.get(name), new) else {
            return None;
        };
        if o.chains != n.chains || o.sets != n.sets {
            return None;
        }
        for e in sorted_difference(&o.elements, &n.elements) {
            deletes.push(element_op(e, true)?);
        }
        for e in sorted_difference(&n.elements, &o.elements) {
            adds.push(element_op(e, false)?);
        }
    }
    deletes.extend(adds);
    Some(deletes)
}

/// Whether `e` can go to the kernel as a netlink element operation (a backend or hairpin
/// element: fixed binary keys and values).
fn by_netlink(e: &Element) -> bool {
    matches!(
        e,
        Element::Backend { .. }
            | Element::Hairpin(_)
            | Element::Mark { .. }
            | Element::GroupBackend { .. }
    )
}

fn element_op(e: &Element, delete: bool) -> Option<netlink::ElementOp> {
    let (key, data) = match e {
        Element::Backend { slot, to } => (
            netlink::mark_bytes(*slot),
            (!delete).then(|| netlink::backend_bytes(&to.ip(), to.port())),
        ),
        Element::Hairpin(ip) => (netlink::addr_bytes(ip).with(&netlink::addr_bytes(ip)), None),
        Element::Mark {
            addr,
            protocol,
            port,
            mark,
        } => (
            netlink::frontend_bytes(addr, *protocol, *port),
            (!delete).then(|| netlink::mark_bytes(*mark)),
        ),
        Element::GroupBackend { slot, to } => (
            {
                let (group, slot) = render::split_slot(*slot);
                netlink::mark_bytes(group).with(&slot.to_ne_bytes())
            },
            (!delete).then(|| netlink::backend_bytes(&to.ip(), to.port())),
        ),
        Element::Frontend { .. } | Element::SharedFrontend { .. } | Element::ClusterIp(_) => {
            return None
        }
    };
    Some(netlink::ElementOp {
        set: e.set().into(),
        key,
        data,
        delete,
    })
}

/// The frontends of the applied ruleset and the service each leads to (for [`Dataplane::flows`]).
fn frontends(rs: &NftRuleset) -> BTreeMap<(SocketAddr, Protocol), ObjectName> {
    let mut out = BTreeMap::new();
    for (name, svc) in &rs.services {
        for e in &svc.elements {
            if let Element::Frontend {
                addr,
                protocol,
                port,
                ..
            }
            | Element::SharedFrontend {
                addr,
                protocol,
                port,
                ..
            } = e
            {
                out.insert((SocketAddr::new(*addr, *port), *protocol), name.clone());
            }
        }
    }
    out
}

impl Dataplane for NftablesDataplane {
    fn capabilities(&self) -> Capabilities {
        Flavour::Nftables.capabilities()
    }

    fn apply(&mut self, desired: &DesiredState) -> Result<ApplyReport, Error> {
        let report = self.full_sync(desired);
        self.share_names();
        report
    }

    fn apply_changes(&mut self, changes: &ChangeSet) -> Result<ApplyReport, Error> {
        let report = self.partial_sync(changes);
        self.share_names();
        let mut report = report?;
        // kube-proxy's stale UDP flows of the changed services (see `crate::conntrack`).
        if let Some((node, _)) = &self.applied {
            crate::conntrack::clean(
                BACKEND,
                self.config.netns.as_deref(),
                &crate::conntrack::Stale::of_changes(changes, node),
                &mut report.warnings,
            );
        }
        Ok(report)
    }

    fn observe(&self) -> Result<ObservedState, Error> {
        if self.applied.is_none() {
            // Nothing of ours may exist; an absent table is an empty state.
            let tables = self.nft(&["list", "tables"], None, "list tables")?;
            let ours = format!("table inet {}", self.config.name);
            if !tables.lines().any(|l| l.trim() == ours) {
                return Ok(ObservedState::default());
            }
        }
        Ok(observe::observed_state(&self.listing()?)?)
    }

    fn flows(&self) -> Result<Vec<Flow>, Error> {
        let Some((_, rs)) = &self.applied else {
            return Ok(Vec::new());
        };
        let text = exec::read_proc(
            BACKEND,
            self.config.netns.as_deref(),
            "/proc/net/nf_conntrack",
        )?;
        Ok(crate::conntrack::parse(&text, &frontends(rs)))
    }

    fn stats(&self) -> Result<Stats, Error> {
        let table = self.config.name.as_str();
        let json = self.nft(
            &["-j", "list", "counters", "table", "inet", table],
            None,
            "list counters",
        )?;
        let mut s = observe::counter_stats(&json)?;
        s.flows = self.flows()?.len() as u64;
        // The kernel conntrack's failures in this namespace (a full table drops new
        // connections: `conntrack_drop`). No such file: conntrack is not loaded, nothing to
        // count.
        match exec::read_proc(
            BACKEND,
            self.config.netns.as_deref(),
            "/proc/net/stat/nf_conntrack",
        ) {
            Ok(text) => observe::add_conntrack_stat(&mut s.other, &text),
            Err(e) => tracing::debug!(error = %e, "no conntrack statistics"),
        }
        Ok(s)
    }

    /// NFLOG drops and rejects of this table's rules, and with
    /// `options.new_connections` the connections its rules translated (see
    /// [`crate::events`]); named from what is applied, as every later apply changes it (a
    /// reader opened before the first apply names what it programs).
    fn events(&self, options: &EventOptions) -> Result<BoxEventSource, Error> {
        self.names.set(self.current_names());
        NetfilterEvents::boxed(BACKEND, &self.config, options, self.names.clone())
    }

    fn reset(&mut self) -> Result<(), Error> {
        let text = render_reset(&self.config.name);
        self.netlink = None;
        self.nft(&["-f", "-"], Some(&text), "reset")?;
        let l2 = self.l2_kernel();
        self.l2.reset(&l2)?;
        self.applied = None;
        self.validator = None;
        self.dirty = false;
        self.programmed = ServiceFingerprints::default();
        self.policy_state = None;
        self.share_names();
        Ok(())
    }
}
