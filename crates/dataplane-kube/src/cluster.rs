//! The store of objects and the incremental translation.
//!
//! Like kube-proxy's change trackers (`servicechangetracker.go`, `endpointschangetracker.go`),
//! the store remembers what changed since the last [`Cluster::translate`] and re-translates
//! only that: a Service or one of its EndpointSlices re-translates the Service, a Pod that
//! pod, a NetworkPolicy that policy, a Namespace that namespace, and a change of the local
//! Node that matters (addresses, pod CIDRs, zone) every Service.
//!
//! Two objects can claim the same thing: a frontend (`TCP 192.0.2.1:80` as two Services'
//! ExternalIP) or a pod address (a reused IP). dataplane-core rejects such a state, so each
//! claim has one winner, the claimant that sorts first (a frontend: by kind, ClusterIP then
//! nodePort or health check port then LoadBalancer IP then ExternalIP, then model service
//! name and port index; a pod address: a live pod before a terminating one, then by name),
//! and the others lose that frontend or are left out, with a warning. A part lost (a port,
//! an address, a nodePort) gives up its other claims, which go to the next claimant. Claims
//! are indexed, so a change re-checks only the objects that share a claim with it.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;
use std::sync::Arc;

use dataplane_core::{ChangeSet, DesiredState, ObjectName, Protocol};

use crate::materialized::Materialized;
use crate::node::{translate_node, NodeInfo};
use crate::pod::{translate_namespace, translate_pod, PodOut};
use crate::policy::translate_policy;
use crate::service::SliceData;
pub use crate::support::TranslationWarning;
use crate::support::{Interner, Warnings};
use crate::{InterfaceResolver, Kind, Object, ObjectKey, Settings, TranslateError};

/// The result of [`Cluster::translate`].
#[derive(Debug, Clone, PartialEq)]
pub struct Translation {
    /// The node's desired state; it always passes [`dataplane_core::validate()`].
    pub state: DesiredState,
    /// What was left out of the state, or read differently than written, and why: every
    /// current warning (not only those of the objects that changed), ordered by object.
    pub warnings: Vec<TranslationWarning>,
}

/// The result of [`Cluster::translate_changes`].
#[derive(Debug, Clone, PartialEq)]
pub struct Changes {
    /// What changed in the state since the last [`Cluster::translate`] or
    /// [`Cluster::translate_changes`]: what `Dataplane::apply_changes` takes. The whole state
    /// is [`Cluster::state`].
    pub changes: ChangeSet,
    /// Every current warning, as in [`Translation::warnings`].
    pub warnings: Vec<TranslationWarning>,
}

/// Where a group of warnings comes from (each is replaced as a whole when re-translated).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
enum Source {
    /// The translation of an object (a Service's includes its slices').
    Object(ObjectKey),
    /// A model service's lost frontend claims.
    ServiceClaims(ObjectName),
    /// A pod's lost address claims.
    PodClaims(ObjectName),
}

/// A frontend: what dataplane-core lets only one service port claim.
type Frontend = (IpAddr, Protocol, u16);

/// Who claims a frontend: the claim's rank ([`What::rank`]), a model service, its port index
/// (`HEALTH` for the health check port) and what the claim is. The first in order that is
/// still active wins.
type Claimant = (u8, ObjectName, u32, What);

const HEALTH: u32 = u32::MAX;

/// What a claim is, to drop the right part when it is lost.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum What {
    ClusterIp(usize),
    ExternalIp(usize),
    LoadBalancerIp(usize),
    NodePort(usize),
    HealthCheck,
}

impl What {
    /// Claims are ranked by kind first, by how much the address belongs to the service:
    /// a ClusterIP is allocated to it by the API server; a nodePort and the health check
    /// port are allocated too (from the node port range); a LoadBalancer IP is written by a
    /// controller; an ExternalIP is whatever the Service's author wrote (CVE-2020-8554: a
    /// Service with `externalIPs: [<kube-dns's ClusterIP>]` must not take DNS). kube-proxy
    /// never drops a ClusterIP rule for another Service's ExternalIP.
    fn rank(self) -> u8 {
        match self {
            What::ClusterIp(_) => 0,
            What::NodePort(_) | What::HealthCheck => 1,
            What::LoadBalancerIp(_) => 2,
            What::ExternalIp(_) => 3,
        }
    }
}

#[derive(Debug)]
struct ModelService {
    owner: ObjectKey,
    /// The translation as made, before frontends lost to other services are taken out; kept
    /// only while the state holds something else (a copy without them, or nothing). `None`:
    /// the state holds exactly it (the common case, so it is not held twice).
    kept: Option<Box<dataplane_core::Service>>,
    /// For warnings: `RawService`'s fields.
    port_fields: Vec<usize>,
    external_ip_fields: Vec<String>,
    lb_ip_fields: Vec<String>,
    claims: Vec<(Frontend, u32, What)>,
    /// What it lost to other claimants, as last resolved; `None`: nothing (the common case,
    /// which then costs no allocation).
    drops: Option<Box<Drops>>,
}

impl ModelService {
    /// Whether a claim of this service still counts: a claim whose part (port, address,
    /// nodePort, health check port) was dropped for losing another claim gives up its
    /// other claims too, so that they go to the next claimant (kube-proxy serves them).
    /// What it lost to other claimants.
    fn drops(&self) -> &Drops {
        self.drops.as_deref().unwrap_or(&NO_DROPS)
    }

    fn active(&self, slot: u32, what: What) -> bool {
        let drops = self.drops();
        if drops.all {
            return false;
        }
        let port_alive = |i: usize| !drops.ports.contains(&i);
        match what {
            What::ClusterIp(i) => port_alive(i),
            What::NodePort(i) => port_alive(i) && !drops.node_ports.contains(&i),
            What::ExternalIp(j) => {
                usize::try_from(slot).is_ok_and(port_alive) && !drops.external.contains(&j)
            }
            What::LoadBalancerIp(j) => {
                usize::try_from(slot).is_ok_and(port_alive) && !drops.lb.contains(&j)
            }
            What::HealthCheck => !drops.health,
        }
    }
}

/// A pod's claim rank: live before terminating, then by name.
type PodRank = (bool, ObjectName);

#[derive(Debug)]
struct PodRaw {
    out: PodOut,
    rank: PodRank,
}

/// The store of Kubernetes objects and their translation for one node.
///
/// ```
/// use dataplane_kube::{Cluster, Kind, Object, ObjectKey, Settings, TranslateError};
/// use dataplane_kube::k8s_openapi::api::core::v1::Node;
/// let mut cluster = Cluster::new(Settings::new("node-a", dataplane_core::Node::new("node-a", [])));
/// let none = |_: &dataplane_core::ObjectName, _: &[std::net::IpAddr]| None;
/// assert!(matches!(cluster.translate(&none), Err(TranslateError::NodeNotFound { .. })));
///
/// let mut node = Node::default();
/// node.metadata.name = Some("node-a".into());
/// node.status = Some(serde_json::from_value(serde_json::json!(
///     { "addresses": [{ "type": "InternalIP", "address": "172.18.0.2" }] }
/// ))?);
/// assert!(cluster.apply(Object::from(node.clone()))?);
/// assert!(!cluster.apply(Object::from(node))?, "the same object again changes nothing");
/// let state = cluster.translate(&none)?.state;
/// assert_eq!(state.node.addresses, ["172.18.0.2".parse::<std::net::IpAddr>()?]);
/// assert!(cluster.delete(&ObjectKey::cluster(Kind::Node, "node-a")));
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Debug)]
pub struct Cluster {
    settings: Settings,
    objects: BTreeMap<ObjectKey, Stored>,
    counts: BTreeMap<Kind, usize>,
    /// EndpointSlices by the Service they belong to.
    slices_by_service: BTreeMap<ObjectKey, Bag<ObjectKey>>,

    dirty_services: BTreeSet<ObjectKey>,
    dirty_pods: BTreeSet<ObjectKey>,
    dirty_policies: BTreeSet<ObjectKey>,
    dirty_namespaces: BTreeSet<ObjectKey>,
    /// Nodes (this one too) whose peer entry (`DesiredState::nodes`) is stale.
    dirty_nodes: BTreeSet<ObjectKey>,
    /// Whether a cluster-wide or host policy object changed: they are few, and all of them
    /// are translated again together (`tiers::translate_tiers`).
    tiers_dirty: bool,
    node_dirty: bool,
    /// Pods on this node: their interfaces are looked up again at each translation (a
    /// sandbox recreated with the same address has a new veth; one not found yet may be).
    local_pods: BTreeSet<ObjectKey>,

    interner: Interner,
    node: Option<NodeInfo>,
    /// A state with only the node, to validate one object at a time.
    probe: DesiredState,
    warnings: BTreeMap<Source, Vec<TranslationWarning>>,

    /// Model service names by the Kubernetes Service they come from, when they are not
    /// just one model named as the Service (which a lookup in `models` finds: no entry for
    /// nearly every Service, ~1.5 MiB at 10k services).
    names_by_owner: BTreeMap<ObjectKey, Vec<ObjectName>>,
    /// Boxed: a map filled in name order leaves its nodes about half empty, and a
    /// `ModelService` is ~150 bytes (boxed: ~2 MiB less at 10k services).
    models: BTreeMap<ObjectName, Box<ModelService>>,
    claims: BTreeMap<Frontend, Bag<Claimant>>,

    pods: BTreeMap<ObjectName, PodRaw>,
    pod_claims: BTreeMap<IpAddr, Bag<PodRank>>,

    /// The translated state, patched in place, and its changes.
    out: Materialized,

    /// Who decides the Services this node announces ([`crate::l2`]).
    l2: crate::L2Announcements,
    /// The Services an election gave this node ([`Cluster::set_l2_announced`]).
    l2_announced: BTreeSet<ObjectKey>,
}

impl Cluster {
    /// An empty store for the node and settings `settings`.
    pub fn new(settings: Settings) -> Self {
        let probe = DesiredState::new(settings.node.clone());
        let out = Materialized::new(settings.node.clone());
        Self {
            settings,
            objects: BTreeMap::new(),
            counts: BTreeMap::new(),
            slices_by_service: BTreeMap::new(),
            dirty_services: BTreeSet::new(),
            dirty_pods: BTreeSet::new(),
            dirty_policies: BTreeSet::new(),
            dirty_namespaces: BTreeSet::new(),
            dirty_nodes: BTreeSet::new(),
            tiers_dirty: true,
            node_dirty: true,
            local_pods: BTreeSet::new(),
            interner: Interner::default(),
            node: None,
            probe,
            warnings: BTreeMap::new(),
            names_by_owner: BTreeMap::new(),
            models: BTreeMap::new(),
            claims: BTreeMap::new(),
            pods: BTreeMap::new(),
            pod_claims: BTreeMap::new(),
            out,
            l2: crate::L2Announcements::Off,
            l2_announced: BTreeSet::new(),
        }
    }

    /// Sets who decides the Services this node announces on its L2 segment
    /// ([`L2Announcements`](crate::L2Announcements); `Off` until set). A change
    /// re-translates every Service at the next translation.
    pub fn set_l2_announcements(&mut self, mode: crate::L2Announcements) {
        if self.l2 != mode {
            self.l2 = mode;
            let all: Vec<ObjectKey> = self.keys(Kind::Service).cloned().collect();
            self.dirty_services.extend(all);
        }
    }

    /// Who decides the Services this node announces.
    pub fn l2_announcements(&self) -> crate::L2Announcements {
        self.l2
    }

    /// Records whether the election gave the Service `key` to this node (with
    /// [`L2Announcements::Elected`](crate::L2Announcements::Elected): its translation then
    /// sets `l2_announce`). `true` when that changed: the next translation re-translates that
    /// Service only, so its change set is that one service. The key is kept whether or not
    /// the Service is stored (an election may outlive a relist).
    pub fn set_l2_announced(&mut self, key: &ObjectKey, announced: bool) -> bool {
        let changed = if announced {
            self.l2_announced.insert(key.clone())
        } else {
            self.l2_announced.remove(key)
        };
        if changed && self.l2 == crate::L2Announcements::Elected {
            self.dirty_services.insert(key.clone());
        }
        changed
    }

    /// The Services the election gave this node ([`Cluster::set_l2_announced`]).
    pub fn l2_announced(&self) -> &BTreeSet<ObjectKey> {
        &self.l2_announced
    }

    /// The Services this node may compete to announce, as of the last translation: those
    /// translated with a LoadBalancer IP or ExternalIP left (after the families and the
    /// claims of other services), and with `externalTrafficPolicy: Local` only those with a
    /// ready endpoint on this node (Cilium's l2announcer: a node without one would attract
    /// traffic it cannot serve). A Service split into several model services is a candidate
    /// when one of them is. Walks every translated service: call it after a translation,
    /// not per event.
    pub fn l2_candidates(&self) -> BTreeSet<ObjectKey> {
        let node_name = self.settings.node_name.as_str();
        self.models
            .iter()
            .filter(|(name, _)| {
                self.out
                    .service(name)
                    .is_some_and(|s| crate::l2::candidate(s, node_name))
            })
            .map(|(_, m)| m.owner.clone())
            .collect()
    }

    /// The settings the store translates with.
    pub fn settings(&self) -> &Settings {
        &self.settings
    }

    /// Adds `object` or replaces the stored one with its key; `false` when it reads the
    /// same to the translation as the stored one (nothing to translate).
    ///
    /// Only what translations read is kept (the store does not lend objects back): of every
    /// object, its name, namespace, labels, deletion timestamp and the two annotations read
    /// (`service.beta.kubernetes.io/load-balancer-source-ranges`, to warn about it, and
    /// [`ANNOTATION_L2_ANNOUNCE_NODE`](crate::ANNOTATION_L2_ANNOUNCE_NODE)), so a
    /// new `resourceVersion`, `managedFields` or annotation is no change; of a Pod, only
    /// `spec.nodeName`, `spec.hostNetwork`, the containers' names and ports, `status.phase`
    /// and its addresses (a readiness or restart update of a pod is then no change); of a
    /// Service, only the fields the translation reads, a default spelled out read as its
    /// absence (not its selector, IP family fields, status conditions, nor its name and
    /// namespace, which the key holds); of an EndpointSlice, its usable
    /// endpoints and ports as read (node and zone names shared across the store); of a Node,
    /// not `status.images`. (client-go's informer caches do the like with
    /// `TransformStripManagedFields`.)
    pub fn apply(&mut self, mut object: Object) -> Result<bool, TranslateError> {
        let mut key = object.key()?;
        // One copy of each namespace's name for every key (and model name) in it.
        if let Some(ns) = &mut key.namespace {
            *ns = self.interner.get(ns);
        }
        strip(&mut object);
        if let Object::Node(node) = &mut object {
            if *key.name != *self.settings.node_name {
                crate::tiers::strip_peer_node(node);
            }
        }
        if key.kind.is_policy_tier() {
            self.check_tier(&key, &object)?;
        }
        let object = Stored::new(&key, object, &mut self.interner);
        if self.objects.get(&key) == Some(&object) {
            return Ok(false);
        }
        let new = slice_owner(&object);
        let old = self.objects.insert(key.clone(), object);
        if old.is_none() {
            *self.counts.entry(key.kind).or_default() += 1;
        }
        let old = old.map_or(Owner::Absent, |o| slice_owner(&o));
        self.touch(&key, old, new);
        Ok(true)
    }

    /// Removes the object `key`; `false` when there was none.
    pub fn delete(&mut self, key: &ObjectKey) -> bool {
        let Some(old) = self.objects.remove(key) else {
            return false;
        };
        if let Some(n) = self.counts.get_mut(&key.kind) {
            *n -= 1;
        }
        self.touch(key, slice_owner(&old), Owner::Absent);
        true
    }

    /// Replaces every object of `kind` with `objects` (a relist): the stored ones missing
    /// from `objects` are deleted. `true` when anything changed.
    pub fn replace(&mut self, kind: Kind, objects: Vec<Object>) -> Result<bool, TranslateError> {
        let mut keys = BTreeSet::new();
        for o in &objects {
            let key = o.key()?;
            if key.kind != kind {
                return Err(TranslateError::WrongKind {
                    expected: kind,
                    found: key.kind,
                    name: key.name.to_string(),
                });
            }
            keys.insert(key);
        }
        let gone: Vec<ObjectKey> = self
            .objects
            .keys()
            .filter(|k| k.kind == kind && !keys.contains(*k))
            .cloned()
            .collect();
        let mut changed = false;
        for key in gone {
            changed |= self.delete(&key);
        }
        for o in objects {
            changed |= self.apply(o)?;
        }
        Ok(changed)
    }

    /// The keys of the stored objects of `kind` (a source that lists in parts deletes the
    /// ones its listing did not name).
    pub fn keys(&self, kind: Kind) -> impl Iterator<Item = &ObjectKey> + '_ {
        self.objects.keys().filter(move |k| k.kind == kind)
    }

    /// Whether an object with key `key` is stored.
    pub fn contains(&self, key: &ObjectKey) -> bool {
        self.objects.contains_key(key)
    }

    /// Whether applying `object` would change nothing ([`Cluster::apply`] would return
    /// `false`): an object with its key is stored and reads the same to the translation.
    /// `false` for an object without a key. For a caller that wants to know before applying
    /// (to note which objects a relist changed); it costs a copy of the object.
    pub fn is_current(&self, object: &Object) -> bool {
        let Ok(key) = object.key() else {
            return false;
        };
        let Some(stored) = self.objects.get(&key) else {
            return false;
        };
        let mut object = object.clone();
        strip(&mut object);
        if let Object::Node(node) = &mut object {
            if *key.name != *self.settings.node_name {
                crate::tiers::strip_peer_node(node);
            }
        }
        // A scratch interner: the names compare by value.
        *stored == Stored::new(&key, object, &mut Interner::default())
    }

    /// How many objects of `kind` are stored.
    pub fn count(&self, kind: Kind) -> usize {
        self.counts.get(&kind).copied().unwrap_or(0)
    }

    /// Whether the local Node is going away: it has a `deletionTimestamp` or the cluster
    /// autoscaler's `ToBeDeletedByClusterAutoscaler` taint (kube-proxy's `/healthz` then
    /// fails, so that load balancers drain the node first).
    pub fn node_draining(&self) -> bool {
        match self.objects.get(&self.node_key()) {
            Some(Stored::Object(Object::Node(n))) => crate::node::draining(n),
            _ => false,
        }
    }

    fn node_key(&self) -> ObjectKey {
        ObjectKey::cluster(Kind::Node, self.settings.node_name.clone())
    }

    /// Records what a change of `key` makes stale. For an EndpointSlice, `old` and `new` are
    /// the Service it belonged to before and belongs to now.
    fn touch(&mut self, key: &ObjectKey, old: Owner, new: Owner) {
        match key.kind {
            Kind::Service => {
                self.dirty_services.insert(key.clone());
            }
            Kind::EndpointSlice => {
                self.warnings.remove(&Source::Object(key.clone()));
                if let Owner::Service(svc) = old {
                    if let Some(set) = self.slices_by_service.get_mut(&svc) {
                        set.remove(key);
                        if set.is_empty() {
                            self.slices_by_service.remove(&svc);
                        }
                    }
                    self.dirty_services.insert(svc);
                }
                match new {
                    Owner::Service(svc) => {
                        self.slices_by_service
                            .entry(svc.clone())
                            .or_default()
                            .add(key.clone());
                        self.dirty_services.insert(svc);
                    }
                    // kube-proxy ignores such slices (`endpointSliceCacheKeys`).
                    Owner::None => {
                        let mut w = Warnings::new(key.clone());
                        w.push(
                            format!("metadata.labels[{}]", crate::LABEL_SERVICE_NAME),
                            "no service name label; slice ignored",
                        );
                        self.warnings
                            .insert(Source::Object(key.clone()), w.into_list());
                    }
                    Owner::Absent => {}
                }
            }
            Kind::Pod => {
                self.dirty_pods.insert(key.clone());
            }
            Kind::NetworkPolicy => {
                self.dirty_policies.insert(key.clone());
            }
            Kind::Namespace => {
                self.dirty_namespaces.insert(key.clone());
            }
            Kind::Node => {
                if *key.name == *self.settings.node_name {
                    self.node_dirty = true;
                }
                self.dirty_nodes.insert(key.clone());
            }
            Kind::AdminNetworkPolicy
            | Kind::BaselineAdminNetworkPolicy
            | Kind::HostEndpoint
            | Kind::GlobalNetworkPolicy
            | Kind::FelixConfiguration => self.tiers_dirty = true,
        }
    }

    /// The stored cluster-wide and host policy objects, with `replacing` in place of the
    /// stored object with its key (a check before it is stored).
    fn tier_objects(&self, replacing: Option<(&ObjectKey, &Object)>) -> Vec<(ObjectKey, Object)> {
        let mut out: Vec<(ObjectKey, Object)> = self
            .objects
            .keys()
            .filter(|k| k.kind.is_policy_tier())
            .filter(|k| replacing.is_none_or(|(r, _)| r != *k))
            .filter_map(|k| Some((k.clone(), self.decoded(k)?)))
            .collect();
        if let Some((k, o)) = replacing {
            out.push((k.clone(), o.clone()));
        }
        out
    }

    /// Refuses a policy tier object that does not translate, or that makes the policy
    /// tiers invalid together with the stored ones (two AdminNetworkPolicies at one
    /// priority, two `HostEndpoints` for one interface).
    fn check_tier(&self, key: &ObjectKey, object: &Object) -> Result<(), TranslateError> {
        let objects = self.tier_objects(Some((key, object)));
        crate::tiers::translate_tiers(&self.settings.node_name, &objects, Some(key)).map(drop)
    }

    fn update_tiers(&mut self) {
        let objects = self.tier_objects(None);
        let key = ObjectKey::cluster(Kind::FelixConfiguration, "(policy tiers)");
        let tiers = match crate::tiers::translate_tiers(&self.settings.node_name, &objects, None) {
            Ok(t) => {
                self.warnings.remove(&Source::Object(key));
                t
            }
            Err(e) => {
                // Not reachable: every object was checked with the others when stored, and
                // a deletion cannot make the rest invalid. Kept: the previous tiers stay.
                let mut w = Warnings::new(key.clone());
                w.push("(policy tiers)", format!("{e}; previous policy tiers kept"));
                self.set_warnings(Source::Object(key), w.into_list());
                return;
            }
        };
        self.out.set_tiers(tiers);
    }

    fn update_peer_node(&mut self, key: &ObjectKey) {
        let mut w = Warnings::new(key.clone());
        let peer = match self.objects.get(key) {
            Some(Stored::Object(Object::Node(n))) => crate::tiers::peer_node(&key.name, n, &mut w),
            _ => None,
        };
        // The local node's warnings are its translation's (`update_node`); a peer's own.
        if *key.name != *self.settings.node_name {
            self.set_warnings(Source::Object(key.clone()), w.into_list());
        }
        self.out.put_node(&key.name, peer);
    }

    /// The node's desired state from the stored objects, re-translating only what changed
    /// since the last call (of this or [`Cluster::translate_changes`]). Fails only when no
    /// state can exist: the local Node is not in the store, or has no usable address.
    ///
    /// The state is a copy, every list in name order; where that copy costs too much (it is
    /// most of the cost of a small change to a big state), take the changes instead
    /// ([`Cluster::translate_changes`]) and borrow the state ([`Cluster::state`]).
    pub fn translate(
        &mut self,
        interfaces: &dyn InterfaceResolver,
    ) -> Result<Translation, TranslateError> {
        self.update(interfaces, false)?;
        Ok(Translation {
            state: self.out.sorted_copy(),
            warnings: self.current_warnings(),
        })
    }

    /// Like [`Cluster::translate`], but returns what changed in the state since the last
    /// call (of this or `translate`), in proportion to the change: the `ChangeSet` that
    /// `dataplane_core::diff` would compute between the two states, without either state
    /// being copied. The first call's changes add everything.
    ///
    /// ```
    /// # use dataplane_kube::{parse_manifests, Cluster, Settings};
    /// let yaml = "apiVersion: v1\nkind: Node\nmetadata: {name: n}\nstatus: {addresses: [{type: InternalIP, address: 172.18.0.2}]}\n";
    /// let mut cluster = Cluster::new(Settings::new("n", dataplane_core::Node::new("n", [])));
    /// for o in parse_manifests(yaml, "node.yaml")?.objects {
    ///     cluster.apply(o)?;
    /// }
    /// let none = |_: &dataplane_core::ObjectName, _: &[std::net::IpAddr]| None;
    /// let first = cluster.translate_changes(&none)?;
    /// assert!(first.changes.node.is_some());
    /// let svc = "apiVersion: v1\nkind: Service\nmetadata: {name: web, namespace: default}\nspec: {clusterIPs: [10.96.0.1], ports: [{port: 80}]}\n";
    /// for o in parse_manifests(svc, "svc.yaml")?.objects {
    ///     cluster.apply(o)?;
    /// }
    /// let next = cluster.translate_changes(&none)?;
    /// assert_eq!((next.changes.len(), next.changes.node.is_none()), (1, true));
    /// assert_eq!(cluster.state().unwrap().services.len(), 1);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn translate_changes(
        &mut self,
        interfaces: &dyn InterfaceResolver,
    ) -> Result<Changes, TranslateError> {
        self.update(interfaces, true)?;
        Ok(Changes {
            changes: self.out.take_changes(),
            warnings: self.current_warnings(),
        })
    }

    /// Like [`Cluster::translate_changes`] without the changes: brings the state up to
    /// date, lent by [`Cluster::state`], and returns the current warnings; the next
    /// `translate_changes` reports the changes since this call. For a caller that programs
    /// the whole state (a first sync, a resync): the first `translate_changes` of a big store
    /// is a copy of the whole state (every object added), which this does not make.
    pub fn translate_in_place(
        &mut self,
        interfaces: &dyn InterfaceResolver,
    ) -> Result<Vec<TranslationWarning>, TranslateError> {
        self.update(interfaces, false)?;
        Ok(self.current_warnings())
    }

    /// The state as of the last successful [`Cluster::translate`],
    /// [`Cluster::translate_changes`] or [`Cluster::translate_in_place`], lent (no copy);
    /// `None` before the first. The order of its lists is not meaningful (a removal takes
    /// the last element's place).
    pub fn state(&self) -> Option<&DesiredState> {
        self.node.is_some().then_some(&*self.out.state)
    }

    /// [`Cluster::state`], shared rather than lent: for a caller that hands the state to
    /// another thread to program (the node agent's dataplane thread) without copying it.
    /// The store changes its state in place only while no one else holds it: a translation
    /// made while this is still held copies the state first (once), so hand it back (drop
    /// it) before the next translation.
    pub fn shared_state(&self) -> Option<Arc<DesiredState>> {
        self.node.is_some().then(|| Arc::clone(&self.out.state))
    }

    /// Brings the state up to date; with `record`, keeping what changed for
    /// `translate_changes` (without, what was recorded is forgotten once the node is known).
    fn update(
        &mut self,
        interfaces: &dyn InterfaceResolver,
        record: bool,
    ) -> Result<(), TranslateError> {
        if self.node_dirty || self.node.is_none() {
            self.update_node()?;
        }
        self.out.set_recording(record);
        let dirty = std::mem::take(&mut self.dirty_services);
        for key in dirty {
            self.update_service(&key);
        }
        let dirty = std::mem::take(&mut self.dirty_pods);
        for key in &dirty {
            self.update_pod(key, interfaces);
        }
        self.recheck_interfaces(interfaces, &dirty);
        for key in std::mem::take(&mut self.dirty_policies) {
            self.update_policy(&key);
        }
        for key in std::mem::take(&mut self.dirty_namespaces) {
            self.update_namespace(&key);
        }
        for key in std::mem::take(&mut self.dirty_nodes) {
            self.update_peer_node(&key);
        }
        if std::mem::take(&mut self.tiers_dirty) {
            self.update_tiers();
        }
        self.out.set_recording(true);
        self.out.fit_lists();
        Ok(())
    }

    fn current_warnings(&self) -> Vec<TranslationWarning> {
        self.warnings.values().flatten().cloned().collect()
    }

    fn set_warnings(&mut self, source: Source, list: Vec<TranslationWarning>) {
        if list.is_empty() {
            self.warnings.remove(&source);
        } else {
            self.warnings.insert(source, list);
        }
    }

    fn update_node(&mut self) -> Result<(), TranslateError> {
        let key = self.node_key();
        let Some(Stored::Object(Object::Node(k8s))) = self.objects.get(&key) else {
            return Err(TranslateError::NodeNotFound {
                name: self.settings.node_name.clone(),
            });
        };
        let mut w = Warnings::new(key.clone());
        let info = translate_node(&self.settings, k8s, &mut w)?;
        self.node_dirty = false;
        self.set_warnings(Source::Object(key), w.into_list());
        if self.node.as_ref() == Some(&info) {
            return Ok(());
        }
        // Every service depends on the node: addresses (NodePorts, ClusterIP checks), pod
        // CIDRs, the node port range, the zone (topology) and locality.
        self.probe = DesiredState::new(info.node.clone());
        self.out.set_node(info.node.clone());
        self.node = Some(info);
        let all: Vec<ObjectKey> = self
            .objects
            .keys()
            .filter(|k| k.kind == Kind::Service)
            .chain(self.names_by_owner.keys())
            .chain(self.models.values().map(|m| &m.owner))
            .cloned()
            .collect();
        self.dirty_services.extend(all);
        Ok(())
    }

    /// The stored object `key` as an object again (a Service, Pod, NetworkPolicy or
    /// Namespace is kept serialized); `None` for an EndpointSlice (kept read).
    fn decoded(&self, key: &ObjectKey) -> Option<Object> {
        match self.objects.get(key)? {
            Stored::Object(o) => Some(o.clone()),
            Stored::Json(bytes) => from_json(key.kind, bytes),
            Stored::Slice(_) => None,
        }
    }

    /// Takes the names of the model services made from the Service `key`: its entry in
    /// `names_by_owner`, else its own name when the model of that name is its.
    fn take_model_names(&mut self, key: &ObjectKey) -> Vec<ObjectName> {
        if let Some(names) = self.names_by_owner.remove(key) {
            return names;
        }
        match key.object_name() {
            Some(name) if self.models.get(&name).is_some_and(|m| &m.owner == key) => vec![name],
            _ => Vec::new(),
        }
    }

    fn update_service(&mut self, key: &ObjectKey) {
        let Some(node) = self.node.as_ref() else {
            return;
        };
        let mut w = Warnings::new(key.clone());
        let object = self.decoded(key);
        let raws = match &object {
            Some(Object::Service(svc)) => {
                let slices: Vec<&SliceData> = self
                    .slices_by_service
                    .get(key)
                    .into_iter()
                    .flat_map(Bag::iter)
                    .filter_map(|k| match self.objects.get(k) {
                        Some(Stored::Slice(s)) => Some(&**s),
                        _ => None,
                    })
                    .collect();
                let mut ctx = crate::service::Ctx {
                    settings: &self.settings,
                    node,
                    probe: &mut self.probe,
                    l2: self.l2,
                    l2_elected: self.l2_announced.contains(key),
                };
                crate::service::translate(&mut ctx, key, svc, &slices, &mut w)
            }
            _ => Vec::new(),
        };
        self.set_warnings(Source::Object(key.clone()), w.into_list());

        let old_names = self.take_model_names(key);
        let mut touched: BTreeSet<Frontend> = BTreeSet::new();
        let mut affected: BTreeSet<ObjectName> = old_names.iter().cloned().collect();
        for name in &old_names {
            if let Some(m) = self.models.remove(name) {
                for (frontend, slot, what) in &m.claims {
                    let who = (what.rank(), name.clone(), *slot, *what);
                    if let Some(bag) = self.claims.get_mut(frontend) {
                        bag.remove(&who);
                        if bag.is_empty() {
                            self.claims.remove(frontend);
                        }
                    }
                    touched.insert(*frontend);
                }
            }
        }
        let mut new_names = Vec::with_capacity(raws.len());
        let addresses = &self.node.as_ref().expect("checked above").node.addresses;
        for raw in raws {
            let name = raw.service.name.clone();
            if self.models.get(&name).is_some_and(|m| &m.owner != key) {
                // Only a split name cut to fit a label and hashed could meet another.
                let mut w = Warnings::new(key.clone());
                w.push(
                    "metadata.name",
                    format!("model service name {name} is taken; left out"),
                );
                self.warnings
                    .entry(Source::Object(key.clone()))
                    .or_default()
                    .extend(w.into_list());
                continue;
            }
            let claims = service_claims(&raw.service, addresses);
            for (frontend, slot, what) in &claims {
                self.claims.entry(*frontend).or_default().add((
                    what.rank(),
                    name.clone(),
                    *slot,
                    *what,
                ));
                touched.insert(*frontend);
            }
            affected.insert(name.clone());
            new_names.push(name.clone());
            self.models.insert(
                name,
                Box::new(ModelService {
                    owner: key.clone(),
                    kept: Some(Box::new(raw.service)),
                    port_fields: raw.port_fields,
                    external_ip_fields: raw.external_ip_fields,
                    lb_ip_fields: raw.lb_ip_fields,
                    claims,
                    drops: None,
                }),
            );
        }
        // One model named as the Service (nearly every one) needs no entry.
        let implied = matches!(&new_names[..], [one] if key.object_name().as_ref() == Some(one));
        if !new_names.is_empty() && !implied {
            self.names_by_owner.insert(key.clone(), new_names);
        }
        for frontend in &touched {
            if let Some(claimants) = self.claims.get(frontend) {
                affected.extend(claimants.iter().map(|(_, n, _, _)| n.clone()));
            }
        }
        self.resolve_services(affected);
    }

    /// Resolves `names` and, while any one's losses change, every service that shares a
    /// frontend with it. This ends: whether a claim wins depends only on the claims ranked
    /// before it on its frontend (an earlier rank, or the same rank and an earlier name), so
    /// the outcome settles in rank and name order, and there is one outcome, the same
    /// whatever the order of the changes (the property test compares with a fresh store).
    fn resolve_services(&mut self, names: BTreeSet<ObjectName>) {
        let mut work = names;
        while let Some(name) = work.pop_first() {
            if !self.resolve_service(&name) {
                continue;
            }
            if let Some(m) = self.models.get(&name) {
                work.insert(name.clone());
                for (frontend, _, _) in &m.claims {
                    if let Some(claimants) = self.claims.get(frontend) {
                        work.extend(claimants.iter().map(|(_, n, _, _)| n.clone()));
                    }
                }
            }
        }
    }

    /// The model service `name` with the frontends it lost to other claimants taken out;
    /// `true` when what it loses changed (so its neighbours need resolving again).
    // One claim kind per arm, each with its own warning; split, it reads worse.
    #[allow(clippy::too_many_lines)]
    fn resolve_service(&mut self, name: &ObjectName) -> bool {
        let source = Source::ServiceClaims(name.clone());
        let Some(m) = self.models.get_mut(name) else {
            self.out.put_service(name, None);
            self.warnings.remove(&source);
            return false;
        };
        let Some(raw_service) = m
            .kept
            .take()
            .map(|b| *b)
            .or_else(|| self.out.service(name).cloned())
        else {
            // Not reachable: without a kept translation the state holds it.
            return false;
        };
        let Some(m) = self.models.get(name) else {
            return false;
        };
        let mut w = Warnings::new(m.owner.clone());
        let raw = m;
        let mut drop = Drops::default();
        for (frontend, slot, what) in &m.claims {
            let me = (what.rank(), name.clone(), *slot, *what);
            // The first claimant ranked before this claim whose claim still counts.
            let winner = self.claims.get(frontend).and_then(|bag| {
                bag.iter()
                    .take_while(|c| **c < me)
                    .find(|(_, n, s, wh)| self.models.get(n).is_some_and(|o| o.active(*s, *wh)))
            });
            let Some((_, winner, _, _)) = winner else {
                continue;
            };
            let (proto, addr) = (
                frontend.1,
                std::net::SocketAddr::new(frontend.0, frontend.2),
            );
            let other = if *winner == *name {
                "another port of this service".to_owned()
            } else {
                format!("service {winner}")
            };
            let clash = format!("{proto} {addr} is also claimed by {other}");
            match *what {
                What::ClusterIp(i) => {
                    if drop.ports.insert(i) {
                        w.push(
                            format!("spec.ports[{}]", raw.port_fields[i]),
                            format!("{clash}; port left out"),
                        );
                    }
                }
                What::ExternalIp(i) => {
                    if drop.external.insert(i) {
                        w.push(
                            raw.external_ip_fields[i].clone(),
                            format!("{clash}; address left out"),
                        );
                    }
                }
                What::LoadBalancerIp(i) => {
                    if drop.lb.insert(i) {
                        w.push(
                            raw.lb_ip_fields[i].clone(),
                            format!("{clash}; address left out"),
                        );
                    }
                }
                What::NodePort(i) => {
                    if drop.node_ports.insert(i) {
                        w.push(
                            format!("spec.ports[{}].nodePort", raw.port_fields[i]),
                            format!("{clash}; nodePort left out"),
                        );
                    }
                }
                What::HealthCheck => {
                    if !drop.health {
                        drop.health = true;
                        w.push("spec.healthCheckNodePort", format!("{clash}; left out"));
                    }
                }
            }
        }
        // A port dropped takes its other claims with it; so does the service when it has
        // no port left.
        drop.all = drop.ports.len() == raw_service.ports.len();
        let changed = *m.drops() != drop;
        if drop.is_empty() {
            self.out.put_service(name, Some(raw_service));
            self.set_warnings(source, w.into_list());
            if let Some(m) = self.models.get_mut(name) {
                m.drops = None;
            }
            return changed;
        }
        let mut service = raw_service.clone();
        drop.apply(&mut service);
        if let Some(m) = self.models.get_mut(name) {
            m.kept = Some(Box::new(raw_service));
            m.drops = Some(Box::new(drop));
        }
        let service = (!service.ports.is_empty()).then_some(service);
        self.out.put_service(name, service);
        self.set_warnings(source, w.into_list());
        changed
    }

    /// Looks up the interface of every local pod not just translated (one resolver call
    /// each; the agent's resolver answers from a cache) and re-translates the pods whose
    /// interface changed, appeared or went away.
    fn recheck_interfaces(
        &mut self,
        interfaces: &dyn InterfaceResolver,
        just_updated: &BTreeSet<ObjectKey>,
    ) {
        let mut changed = Vec::new();
        for key in self.local_pods.difference(just_updated) {
            let Some(name) = key.object_name() else {
                continue;
            };
            let (ips, current) = match self.pods.get(&name).map(|r| &r.out) {
                Some(PodOut::Local(e)) => (&e.ips, Some(e.interface.as_str())),
                Some(PodOut::Peer(p)) => (&p.ips, None),
                _ => continue,
            };
            let found = interfaces.interface(&name, ips);
            if found.as_deref() != current {
                changed.push((key.clone(), found));
            }
        }
        for (key, found) in changed {
            let found = move |_: &ObjectName, _: &[IpAddr]| found.clone();
            self.update_pod(&key, &found);
        }
    }

    fn update_pod(&mut self, key: &ObjectKey, interfaces: &dyn InterfaceResolver) {
        let Some(name) = key.object_name() else {
            return;
        };
        let mut w = Warnings::new(key.clone());
        let raw = if let Some(Object::Pod(pod)) = self.decoded(key) {
            let t = translate_pod(
                &self.settings,
                &mut self.interner,
                interfaces,
                &name,
                &pod,
                &mut w,
            );
            if t.local {
                self.local_pods.insert(key.clone());
            } else {
                self.local_pods.remove(key);
            }
            Some(PodRaw {
                out: t.out,
                rank: (t.terminating, name.clone()),
            })
        } else {
            self.local_pods.remove(key);
            None
        };
        self.set_warnings(Source::Object(key.clone()), w.into_list());
        let mut affected: BTreeSet<ObjectName> = BTreeSet::from([name.clone()]);
        let mut touched = BTreeSet::new();
        if let Some(old) = self.pods.remove(&name) {
            for ip in pod_ips(&old.out) {
                if let Some(set) = self.pod_claims.get_mut(ip) {
                    set.remove(&old.rank);
                    if set.is_empty() {
                        self.pod_claims.remove(ip);
                    }
                }
                touched.insert(*ip);
            }
        }
        if let Some(raw) = raw {
            for ip in pod_ips(&raw.out) {
                self.pod_claims
                    .entry(*ip)
                    .or_default()
                    .add(raw.rank.clone());
                touched.insert(*ip);
            }
            self.pods.insert(name.clone(), raw);
        }
        for ip in touched {
            if let Some(set) = self.pod_claims.get(&ip) {
                affected.extend(set.iter().map(|(_, n)| n.clone()));
            }
        }
        for name in affected {
            self.resolve_pod(&name);
        }
    }

    fn resolve_pod(&mut self, name: &ObjectName) {
        let source = Source::PodClaims(name.clone());
        let Some(raw) = self.pods.get(name) else {
            self.out.put_endpoint(name, None);
            self.out.put_pod(name, None);
            self.warnings.remove(&source);
            return;
        };
        let key = ObjectKey::namespaced(Kind::Pod, name.namespace.clone(), name.name.clone());
        let mut w = Warnings::new(key);
        for ip in pod_ips(&raw.out) {
            if let Some((_, winner)) = self.pod_claims.get(ip).and_then(Bag::first) {
                if winner != name {
                    w.push(
                        "status.podIPs",
                        format!("{ip} is also the address of pod {winner}; left out"),
                    );
                }
            }
        }
        let (mut endpoint, mut peer) = (None, None);
        if w.is_empty() {
            match &raw.out {
                PodOut::Local(e) => endpoint = Some(e.clone()),
                PodOut::Peer(p) => peer = Some(p.clone()),
                PodOut::Nothing => {}
            }
        }
        self.out.put_endpoint(name, endpoint);
        self.out.put_pod(name, peer);
        self.set_warnings(source, w.into_list());
    }

    fn update_policy(&mut self, key: &ObjectKey) {
        let Some(name) = key.object_name() else {
            return;
        };
        let mut w = Warnings::new(key.clone());
        let policy = match self.decoded(key) {
            Some(Object::NetworkPolicy(np)) => translate_policy(&name, &np, &mut w),
            _ => None,
        };
        self.set_warnings(Source::Object(key.clone()), w.into_list());
        self.out.put_policy(&name, policy);
    }

    fn update_namespace(&mut self, key: &ObjectKey) {
        let mut w = Warnings::new(key.clone());
        let ns = match self.decoded(key) {
            Some(Object::Namespace(ns)) => translate_namespace(&key.name, &ns, &mut w),
            _ => None,
        };
        self.set_warnings(Source::Object(key.clone()), w.into_list());
        self.out.put_namespace(&key.name, ns);
    }
}

/// Whom an EndpointSlice belongs to, in a change.
#[derive(Debug)]
enum Owner {
    /// The object does not exist (before an addition, after a deletion).
    Absent,
    /// It exists without a `kubernetes.io/service-name` label (or is not a slice).
    None,
    /// It belongs to this Service.
    Service(ObjectKey),
}

fn slice_owner(object: &Stored) -> Owner {
    match object {
        Stored::Slice(slice) => slice.service.clone().map_or(Owner::None, Owner::Service),
        Stored::Object(_) | Stored::Json(_) => Owner::None,
    }
}

/// What the store keeps of an object: what the translation reads. An EndpointSlice, most
/// of a big store, is kept read ([`SliceData`]: its endpoints in a tenth of the space).
/// Services, Pods, `NetworkPolicy` objects and Namespaces are kept stripped ([`strip`]) and
/// serialized: their translation is made again at a later translate (a Pod's needs the
/// interface resolver; a Service's depends on the node and its slices), and a k8s-openapi
/// object has room inline for every optional field (a stripped Pod takes kilobytes, its
/// JSON a few hundred bytes). Reading one back costs microseconds, once per change. Nodes
/// (one matters) are kept as objects.
#[derive(Debug, PartialEq)]
enum Stored {
    Object(Object),
    Json(Box<[u8]>),
    Slice(Box<SliceData>),
}

impl Stored {
    fn new(key: &ObjectKey, object: Object, interner: &mut Interner) -> Self {
        match object {
            Object::EndpointSlice(slice) => {
                Stored::Slice(Box::new(SliceData::new(key, &slice, interner)))
            }
            Object::Node(node) => Stored::Object(Object::Node(node)),
            other => match to_json(&other) {
                Ok(bytes) => Stored::Json(bytes.into_boxed_slice()),
                // Not reachable: k8s-openapi objects always serialize.
                Err(_) => Stored::Object(other),
            },
        }
    }
}

fn to_json(object: &Object) -> Result<Vec<u8>, serde_json::Error> {
    match object {
        Object::Service(o) => serde_json::to_vec(o),
        Object::EndpointSlice(o) => serde_json::to_vec(o),
        Object::NetworkPolicy(o) => serde_json::to_vec(o),
        Object::Pod(o) => serde_json::to_vec(o),
        Object::Namespace(o) => serde_json::to_vec(o),
        Object::Node(o) => serde_json::to_vec(o),
        Object::AdminNetworkPolicy(o) => serde_json::to_vec(o),
        Object::BaselineAdminNetworkPolicy(o) => serde_json::to_vec(o),
        Object::HostEndpoint(o) => serde_json::to_vec(o),
        Object::GlobalNetworkPolicy(o) => serde_json::to_vec(o),
        Object::FelixConfiguration(o) => serde_json::to_vec(o),
    }
}

/// An object `to_json` wrote. `None` is not reachable (what was written reads back).
fn from_json(kind: Kind, bytes: &[u8]) -> Option<Object> {
    use k8s_openapi::api::core::v1 as core;
    Some(match kind {
        Kind::Service => serde_json::from_slice::<core::Service>(bytes).ok()?.into(),
        Kind::EndpointSlice => {
            serde_json::from_slice::<k8s_openapi::api::discovery::v1::EndpointSlice>(bytes)
                .ok()?
                .into()
        }
        Kind::NetworkPolicy => {
            serde_json::from_slice::<k8s_openapi::api::networking::v1::NetworkPolicy>(bytes)
                .ok()?
                .into()
        }
        Kind::Pod => serde_json::from_slice::<core::Pod>(bytes).ok()?.into(),
        Kind::Namespace => serde_json::from_slice::<core::Namespace>(bytes)
            .ok()?
            .into(),
        Kind::Node => serde_json::from_slice::<core::Node>(bytes).ok()?.into(),
        Kind::AdminNetworkPolicy => serde_json::from_slice::<crate::anp::AdminNetworkPolicy>(bytes)
            .ok()?
            .into(),
        Kind::BaselineAdminNetworkPolicy => {
            serde_json::from_slice::<crate::anp::BaselineAdminNetworkPolicy>(bytes)
                .ok()?
                .into()
        }
        Kind::HostEndpoint => serde_json::from_slice::<crate::calico::HostEndpoint>(bytes)
            .ok()?
            .into(),
        Kind::GlobalNetworkPolicy => {
            serde_json::from_slice::<crate::calico::GlobalNetworkPolicy>(bytes)
                .ok()?
                .into()
        }
        Kind::FelixConfiguration => {
            serde_json::from_slice::<crate::calico::FelixConfiguration>(bytes)
                .ok()?
                .into()
        }
    })
}

/// Drops what the translation never reads and an object can be mostly made of, as client-go's
/// informer transforms do (`TransformStripManagedFields`): of every object's metadata, all
/// but its name, namespace, labels, deletion timestamp and the source-ranges and L2 announcing-node annotations; of a
/// Service, all but what [`strip_service`] keeps; of a Pod, all but its
/// node, host network flag, containers' names and ports, phase and addresses (a pod's
/// readiness and container statuses change often and matter to no translation, so such
/// updates become no-ops); of an EndpointSlice, its endpoints' `targetRef` and
/// `deprecatedTopology`; of a Node, its image list.
fn strip(object: &mut Object) {
    use k8s_openapi::api::core::v1 as core;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
    let meta = object.metadata_mut();
    let mut annotations = meta.annotations.take();
    if let Some(a) = &mut annotations {
        // The only annotations any translation reads: the source ranges (to warn that it is
        // not used) and the node that announces a Service.
        a.retain(|k, _| {
            k == crate::service::ANNOTATION_SOURCE_RANGES || k == crate::ANNOTATION_L2_ANNOUNCE_NODE
        });
        if a.is_empty() {
            annotations = None;
        }
    }
    // What identifies the object and what the translations read; a resourceVersion,
    // uid, managedFields, owner or finalizer change is no change.
    *meta = ObjectMeta {
        name: meta.name.take(),
        namespace: meta.namespace.take(),
        labels: meta.labels.take(),
        annotations,
        deletion_timestamp: meta.deletion_timestamp.take(),
        ..Default::default()
    };
    match object {
        Object::Service(svc) => strip_service(svc),
        Object::Pod(pod) => {
            if let Some(spec) = pod.spec.take() {
                pod.spec = Some(core::PodSpec {
                    containers: spec
                        .containers
                        .into_iter()
                        .map(|c| core::Container {
                            name: c.name,
                            ports: c.ports,
                            ..Default::default()
                        })
                        .collect(),
                    // Sidecars (restartPolicy Always) name ports too.
                    init_containers: spec.init_containers.map(|list| {
                        list.into_iter()
                            .filter(|c| c.restart_policy.as_deref() == Some("Always"))
                            .map(|c| core::Container {
                                name: c.name,
                                ports: c.ports,
                                restart_policy: c.restart_policy,
                                ..Default::default()
                            })
                            .collect()
                    }),
                    host_network: spec.host_network,
                    node_name: spec.node_name,
                    ..Default::default()
                });
            }
            if let Some(status) = pod.status.take() {
                pod.status = Some(core::PodStatus {
                    phase: status.phase,
                    pod_ip: status.pod_ip,
                    pod_ips: status.pod_ips,
                    ..Default::default()
                });
            }
        }
        Object::EndpointSlice(slice) => {
            for e in &mut slice.endpoints {
                e.target_ref = None;
                e.deprecated_topology = None;
            }
        }
        Object::Node(node) => {
            if let Some(status) = &mut node.status {
                status.images = None;
            }
        }
        _ => {}
    }
}

/// [`strip`] of a Service: only the fields `service::translate` reads are kept, and those
/// whose value reads as their absence (`type: ClusterIP`, `sessionAffinity: None`, traffic
/// policies `Cluster`, `protocol: TCP`, `clusterIP` next to a `clusterIPs` list) are
/// dropped, so that the stored JSON is a third of a stripped Service's (10k services:
/// ~2 MiB) and a change between spellings of the same thing is no change. kube-proxy reads
/// no selector (the EndpointSlice controller does), no IP family fields (the ClusterIPs
/// tell) and of the status only the load balancer's ingress IPs and their mode; of the
/// labels only the two it selects on, of the metadata nothing else (the key names the
/// Service). Lists keep their length: warnings name their entries by index.
fn strip_service(svc: &mut k8s_openapi::api::core::v1::Service) {
    use k8s_openapi::api::core::v1 as core;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
    let meta = std::mem::take(&mut svc.metadata);
    let mut labels = meta.labels;
    if let Some(l) = &mut labels {
        l.retain(|k, _| k == crate::LABEL_HEADLESS || k == crate::LABEL_SERVICE_PROXY_NAME);
        if l.is_empty() {
            labels = None;
        }
    }
    svc.metadata = ObjectMeta {
        labels,
        annotations: meta.annotations,
        ..Default::default()
    };
    let not = |value: Option<String>, default: &str| value.filter(|v| v != default);
    if let Some(spec) = svc.spec.take() {
        let has_list = spec.cluster_ips.as_ref().is_some_and(|l| !l.is_empty());
        let session_affinity = not(spec.session_affinity, "None");
        svc.spec = Some(core::ServiceSpec {
            type_: not(spec.type_, "ClusterIP"),
            // With a list, `clusterIP` only matters as `None` (headless).
            cluster_ip: spec.cluster_ip.filter(|ip| !has_list || ip == "None"),
            cluster_ips: spec.cluster_ips,
            external_ips: spec.external_ips,
            ports: spec.ports.map(|ports| {
                ports
                    .into_iter()
                    .map(|p| core::ServicePort {
                        name: p.name,
                        protocol: not(p.protocol, "TCP"),
                        port: p.port,
                        node_port: p.node_port,
                        target_port: p.target_port,
                        ..Default::default()
                    })
                    .collect()
            }),
            // Its config is read with ClientIP affinity only.
            session_affinity_config: spec
                .session_affinity_config
                .filter(|_| session_affinity.is_some()),
            session_affinity,
            external_traffic_policy: not(spec.external_traffic_policy, "Cluster"),
            internal_traffic_policy: not(spec.internal_traffic_policy, "Cluster"),
            health_check_node_port: spec.health_check_node_port,
            load_balancer_source_ranges: spec.load_balancer_source_ranges,
            ..Default::default()
        });
    }
    let ingress = svc
        .status
        .take()
        .and_then(|s| s.load_balancer)
        .and_then(|l| l.ingress)
        .filter(|l| !l.is_empty());
    svc.status = ingress.map(|ingress| core::ServiceStatus {
        load_balancer: Some(core::LoadBalancerStatus {
            ingress: Some(
                ingress
                    .into_iter()
                    .map(|i| core::LoadBalancerIngress {
                        ip: i.ip,
                        ip_mode: i.ip_mode,
                        ..Default::default()
                    })
                    .collect(),
            ),
        }),
        ..Default::default()
    });
}

/// A small sorted multiset. Most claims and slice sets hold one or two entries, where a
/// `BTreeSet` allocates a node for eleven (a tenth of the store's memory at 10k services).
#[derive(Debug)]
struct Bag<T>(Vec<(T, u32)>);

impl<T> Default for Bag<T> {
    fn default() -> Self {
        Self(Vec::new())
    }
}

impl<T: Ord> Bag<T> {
    fn add(&mut self, x: T) {
        match self.0.binary_search_by(|(y, _)| y.cmp(&x)) {
            Ok(i) => self.0[i].1 += 1,
            Err(i) => {
                // One at a time: a `Vec` grows to four at its first push, and most bags hold
                // one entry for good (10k services: 4.4 MiB of slack, tests/memory.rs).
                self.0.reserve_exact(1);
                self.0.insert(i, (x, 1));
            }
        }
    }

    fn remove(&mut self, x: &T) {
        if let Ok(i) = self.0.binary_search_by(|(y, _)| y.cmp(x)) {
            self.0[i].1 -= 1;
            if self.0[i].1 == 0 {
                self.0.remove(i);
            }
        }
    }

    fn first(&self) -> Option<&T> {
        self.0.first().map(|(x, _)| x)
    }

    fn iter(&self) -> impl Iterator<Item = &T> {
        self.0.iter().map(|(x, _)| x)
    }

    fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

/// [`ModelService::drops`] when it has lost nothing.
static NO_DROPS: Drops = Drops {
    ports: BTreeSet::new(),
    external: BTreeSet::new(),
    lb: BTreeSet::new(),
    node_ports: BTreeSet::new(),
    health: false,
    all: false,
};

/// What a model service loses to other claimants (indices into its lists).
#[derive(Debug, Default, PartialEq, Eq)]
struct Drops {
    ports: BTreeSet<usize>,
    external: BTreeSet<usize>,
    lb: BTreeSet<usize>,
    node_ports: BTreeSet<usize>,
    health: bool,
    /// Every port is dropped: the service is left out.
    all: bool,
}

impl Drops {
    fn is_empty(&self) -> bool {
        !self.health
            && !self.all
            && self.ports.is_empty()
            && self.external.is_empty()
            && self.lb.is_empty()
            && self.node_ports.is_empty()
    }

    fn apply(&self, service: &mut dataplane_core::Service) {
        if self.health {
            service.health_check_node_port = None;
        }
        for i in &self.node_ports {
            service.ports[*i].node_port = None;
        }
        keep_indices(&mut service.external_ips, &self.external);
        keep_indices(&mut service.load_balancer_ips, &self.lb);
        keep_indices(&mut service.ports, &self.ports);
        // Every address lost to other services: nothing left to announce (the model refuses
        // `l2_announce` without one).
        if service.external_ips.is_empty() && service.load_balancer_ips.is_empty() {
            service.l2_announce = false;
        }
    }
}

fn keep_indices<T>(list: &mut Vec<T>, drop: &BTreeSet<usize>) {
    if drop.is_empty() {
        return;
    }
    let mut i = 0;
    list.retain(|_| {
        let keep = !drop.contains(&i);
        i += 1;
        keep
    });
}

/// What a model service claims, as dataplane-core's validation counts it: each port on
/// every ClusterIP, ExternalIP and LoadBalancer IP, its NodePort on every node address, and
/// the health check port (TCP) on every node address.
fn service_claims(
    s: &dataplane_core::Service,
    node_addresses: &[IpAddr],
) -> Vec<(Frontend, u32, What)> {
    let mut out = Vec::new();
    for (i, p) in s.ports.iter().enumerate() {
        let slot = u32::try_from(i).unwrap_or(HEALTH - 1);
        for ip in &s.cluster_ips {
            out.push(((*ip, p.protocol, p.port), slot, What::ClusterIp(i)));
        }
        for (j, ip) in s.external_ips.iter().enumerate() {
            out.push(((*ip, p.protocol, p.port), slot, What::ExternalIp(j)));
        }
        for (j, ip) in s.load_balancer_ips.iter().enumerate() {
            out.push(((*ip, p.protocol, p.port), slot, What::LoadBalancerIp(j)));
        }
        if let Some(np) = p.node_port {
            for a in node_addresses {
                out.push(((*a, p.protocol, np), slot, What::NodePort(i)));
            }
        }
    }
    if let Some(hc) = s.health_check_node_port {
        for a in node_addresses {
            out.push(((*a, Protocol::Tcp, hc), HEALTH, What::HealthCheck));
        }
    }
    out
}

fn pod_ips(out: &PodOut) -> &[IpAddr] {
    match out {
        PodOut::Local(e) => &e.ips,
        PodOut::Peer(p) => &p.ips,
        PodOut::Nothing => &[],
    }
}
