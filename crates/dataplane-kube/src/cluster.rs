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
//! claim has one winner, the claimant that sorts first (model service name and port index;
//! a live pod before a terminating one, then by name), and the others lose that frontend or
//! are left out, with a warning. Claims are indexed, so a change re-checks only the objects
//! that share a claim with it.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::net::IpAddr;
use std::sync::Arc;

use dataplane_core::{DesiredState, ObjectName, Protocol};

use crate::node::{translate_node, NodeInfo};
use crate::pod::{translate_namespace, translate_pod, PodOut};
use crate::policy::translate_policy;
use crate::service::{slice_service, RawService};
use crate::{InterfaceResolver, Kind, Object, ObjectKey, Settings, TranslateError};

/// The result of [`Cluster::translate`].
#[derive(Debug, Clone, PartialEq)]
pub struct Translation {
    /// The node's desired state; it always passes [`dataplane_core::validate`].
    pub state: DesiredState,
    /// What was left out of the state, or read differently than written, and why: every
    /// current warning (not only those of the objects that changed), ordered by object.
    pub warnings: Vec<TranslationWarning>,
}

/// A part of an object that the translation left out or read differently than written.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TranslationWarning {
    /// The object.
    pub object: ObjectKey,
    /// The field, as a path (`spec.ports[1].port`).
    pub field: String,
    /// What is wrong and what was done about it.
    pub message: String,
}

impl fmt::Display for TranslationWarning {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}: {}", self.object, self.field, self.message)
    }
}

/// Collects the warnings of one object's translation.
#[derive(Debug)]
pub(crate) struct Warnings {
    key: ObjectKey,
    list: Vec<TranslationWarning>,
}

impl Warnings {
    pub(crate) fn new(key: ObjectKey) -> Self {
        Self {
            key,
            list: Vec::new(),
        }
    }

    /// A warning about `field` of the object being translated.
    pub(crate) fn push(&mut self, field: impl Into<String>, message: impl Into<String>) {
        let object = self.key.clone();
        self.list.push(TranslationWarning {
            object,
            field: field.into(),
            message: message.into(),
        });
    }

    /// A warning about `field` of another object read along (a Service's EndpointSlice).
    pub(crate) fn push_for(
        &mut self,
        object: &ObjectKey,
        field: impl Into<String>,
        message: impl Into<String>,
    ) {
        self.list.push(TranslationWarning {
            object: object.clone(),
            field: field.into(),
            message: message.into(),
        });
    }
}

/// One shared string per node or zone name: every backend on a node names it, and the model
/// shares those names (`Arc<str>`) so that a big state does not hold a copy per backend.
#[derive(Debug, Default)]
pub(crate) struct Interner(BTreeMap<Box<str>, Arc<str>>);

impl Interner {
    pub(crate) fn get(&mut self, s: &str) -> Arc<str> {
        if let Some(a) = self.0.get(s) {
            return Arc::clone(a);
        }
        let a: Arc<str> = Arc::from(s);
        self.0.insert(s.into(), Arc::clone(&a));
        a
    }
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

/// Who claims a frontend: a model service and its port index (`HEALTH` for the health
/// check port). The first in order wins.
type Claimant = (ObjectName, u32);

const HEALTH: u32 = u32::MAX;

/// What a claim is, to drop the right part when it is lost.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum What {
    ClusterIp(usize),
    ExternalIp(usize),
    LoadBalancerIp(usize),
    NodePort(usize),
    HealthCheck,
}

#[derive(Debug)]
struct ModelService {
    owner: ObjectKey,
    raw: RawService,
    claims: Vec<(Frontend, u32, What)>,
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
    objects: BTreeMap<ObjectKey, Object>,
    counts: BTreeMap<Kind, usize>,
    /// EndpointSlices by the Service they belong to.
    slices_by_service: BTreeMap<ObjectKey, BTreeSet<ObjectKey>>,

    dirty_services: BTreeSet<ObjectKey>,
    dirty_pods: BTreeSet<ObjectKey>,
    dirty_policies: BTreeSet<ObjectKey>,
    dirty_namespaces: BTreeSet<ObjectKey>,
    node_dirty: bool,
    /// Local pods whose interface was not found: tried again at each translation.
    retry_pods: BTreeSet<ObjectKey>,

    interner: Interner,
    node: Option<NodeInfo>,
    /// A state with only the node, to validate one object at a time.
    probe: DesiredState,
    warnings: BTreeMap<Source, Vec<TranslationWarning>>,

    /// Model service names by the Kubernetes Service they come from.
    names_by_owner: BTreeMap<ObjectKey, Vec<ObjectName>>,
    models: BTreeMap<ObjectName, ModelService>,
    claims: BTreeMap<Frontend, BTreeMap<Claimant, u32>>,
    services: BTreeMap<ObjectName, dataplane_core::Service>,

    pods: BTreeMap<ObjectName, PodRaw>,
    pod_claims: BTreeMap<IpAddr, BTreeSet<PodRank>>,
    endpoints: BTreeMap<ObjectName, dataplane_core::Endpoint>,
    peers: BTreeMap<ObjectName, dataplane_core::PeerPod>,

    policies: BTreeMap<ObjectName, dataplane_core::Policy>,
    namespaces: BTreeMap<String, dataplane_core::Namespace>,
}

impl Cluster {
    /// An empty store for the node and settings `settings`.
    pub fn new(settings: Settings) -> Self {
        let probe = DesiredState::new(settings.node.clone());
        Self {
            settings,
            objects: BTreeMap::new(),
            counts: BTreeMap::new(),
            slices_by_service: BTreeMap::new(),
            dirty_services: BTreeSet::new(),
            dirty_pods: BTreeSet::new(),
            dirty_policies: BTreeSet::new(),
            dirty_namespaces: BTreeSet::new(),
            node_dirty: true,
            retry_pods: BTreeSet::new(),
            interner: Interner::default(),
            node: None,
            probe,
            warnings: BTreeMap::new(),
            names_by_owner: BTreeMap::new(),
            models: BTreeMap::new(),
            claims: BTreeMap::new(),
            services: BTreeMap::new(),
            pods: BTreeMap::new(),
            pod_claims: BTreeMap::new(),
            endpoints: BTreeMap::new(),
            peers: BTreeMap::new(),
            policies: BTreeMap::new(),
            namespaces: BTreeMap::new(),
        }
    }

    /// The settings the store translates with.
    pub fn settings(&self) -> &Settings {
        &self.settings
    }

    /// Adds `object` or replaces the stored one with its key; `false` when it is the same
    /// as the stored one (nothing to translate).
    pub fn apply(&mut self, object: Object) -> Result<bool, TranslateError> {
        let key = object.key()?;
        if self.objects.get(&key) == Some(&object) {
            return Ok(false);
        }
        let old = self.objects.insert(key.clone(), object);
        if old.is_none() {
            *self.counts.entry(key.kind).or_default() += 1;
        }
        let new = self.objects.get(&key).cloned();
        self.touch(&key, old.as_ref(), new.as_ref());
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
        self.touch(key, Some(&old), None);
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
                    name: key.name,
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

    /// The stored object `key`.
    pub fn get(&self, key: &ObjectKey) -> Option<&Object> {
        self.objects.get(key)
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
            Some(Object::Node(n)) => crate::node::draining(n),
            _ => false,
        }
    }

    fn node_key(&self) -> ObjectKey {
        ObjectKey::cluster(Kind::Node, self.settings.node_name.clone())
    }

    /// Records what a change of `key` (from `old` to `new`) makes stale.
    fn touch(&mut self, key: &ObjectKey, old: Option<&Object>, new: Option<&Object>) {
        match key.kind {
            Kind::Service => {
                self.dirty_services.insert(key.clone());
            }
            Kind::EndpointSlice => {
                self.warnings.remove(&Source::Object(key.clone()));
                for (o, added) in [(old, false), (new, true)] {
                    let Some(Object::EndpointSlice(slice)) = o else {
                        continue;
                    };
                    match slice_service(key, slice) {
                        Some(svc) => {
                            let set = self.slices_by_service.entry(svc.clone()).or_default();
                            if added {
                                set.insert(key.clone());
                            } else {
                                set.remove(key);
                                if set.is_empty() {
                                    self.slices_by_service.remove(&svc);
                                }
                            }
                            self.dirty_services.insert(svc);
                        }
                        // kube-proxy ignores such slices (`endpointSliceCacheKeys`).
                        None if added => {
                            let mut w = Warnings::new(key.clone());
                            w.push(
                                format!("metadata.labels[{}]", crate::LABEL_SERVICE_NAME),
                                "no service name label; slice ignored",
                            );
                            self.warnings.insert(Source::Object(key.clone()), w.list);
                        }
                        None => {}
                    }
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
                if key.name == self.settings.node_name {
                    self.node_dirty = true;
                }
            }
        }
    }

    /// The node's desired state from the stored objects, re-translating only what changed
    /// since the last call. Fails only when no state can exist: the local Node is not in
    /// the store, or has no usable address.
    pub fn translate(
        &mut self,
        interfaces: &dyn InterfaceResolver,
    ) -> Result<Translation, TranslateError> {
        if self.node_dirty || self.node.is_none() {
            self.update_node()?;
        }
        let dirty = std::mem::take(&mut self.dirty_services);
        for key in dirty {
            self.update_service(&key);
        }
        let mut dirty = std::mem::take(&mut self.dirty_pods);
        dirty.append(&mut std::mem::take(&mut self.retry_pods));
        for key in dirty {
            self.update_pod(&key, interfaces);
        }
        for key in std::mem::take(&mut self.dirty_policies) {
            self.update_policy(&key);
        }
        for key in std::mem::take(&mut self.dirty_namespaces) {
            self.update_namespace(&key);
        }
        Ok(self.assemble())
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
        let Some(Object::Node(k8s)) = self.objects.get(&key) else {
            return Err(TranslateError::NodeNotFound {
                name: self.settings.node_name.clone(),
            });
        };
        let mut w = Warnings::new(key.clone());
        let info = translate_node(&self.settings, k8s, &mut w)?;
        self.node_dirty = false;
        self.set_warnings(Source::Object(key), w.list);
        if self.node.as_ref() == Some(&info) {
            return Ok(());
        }
        // Every service depends on the node: addresses (NodePorts, ClusterIP checks), pod
        // CIDRs, the node port range, the zone (topology) and locality.
        self.probe = DesiredState::new(info.node.clone());
        self.node = Some(info);
        let all: Vec<ObjectKey> = self
            .objects
            .keys()
            .filter(|k| k.kind == Kind::Service)
            .chain(self.names_by_owner.keys())
            .cloned()
            .collect();
        self.dirty_services.extend(all);
        Ok(())
    }

    fn update_service(&mut self, key: &ObjectKey) {
        let Some(node) = self.node.as_ref() else {
            return;
        };
        let mut w = Warnings::new(key.clone());
        let raws = match self.objects.get(key) {
            Some(Object::Service(svc)) => {
                let slices: Vec<(&ObjectKey, &k8s_openapi::api::discovery::v1::EndpointSlice)> =
                    self.slices_by_service
                        .get(key)
                        .into_iter()
                        .flatten()
                        .filter_map(|k| match self.objects.get(k) {
                            Some(Object::EndpointSlice(s)) => Some((k, &**s)),
                            _ => None,
                        })
                        .collect();
                let mut ctx = crate::service::Ctx {
                    settings: &self.settings,
                    node,
                    interner: &mut self.interner,
                    probe: &mut self.probe,
                };
                crate::service::translate(&mut ctx, key, svc, &slices, &mut w)
            }
            _ => Vec::new(),
        };
        self.set_warnings(Source::Object(key.clone()), w.list);

        let old_names = self.names_by_owner.remove(key).unwrap_or_default();
        let mut touched: BTreeSet<Frontend> = BTreeSet::new();
        let mut affected: BTreeSet<ObjectName> = old_names.iter().cloned().collect();
        for name in &old_names {
            if let Some(m) = self.models.remove(name) {
                for (frontend, slot, _) in &m.claims {
                    release(&mut self.claims, frontend, &(name.clone(), *slot));
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
                    .extend(w.list);
                continue;
            }
            let claims = service_claims(&raw, addresses);
            for (frontend, slot, _) in &claims {
                *self
                    .claims
                    .entry(*frontend)
                    .or_default()
                    .entry((name.clone(), *slot))
                    .or_default() += 1;
                touched.insert(*frontend);
            }
            affected.insert(name.clone());
            new_names.push(name.clone());
            self.models.insert(
                name,
                ModelService {
                    owner: key.clone(),
                    raw,
                    claims,
                },
            );
        }
        if !new_names.is_empty() {
            self.names_by_owner.insert(key.clone(), new_names);
        }
        for frontend in &touched {
            if let Some(claimants) = self.claims.get(frontend) {
                affected.extend(claimants.keys().map(|(n, _)| n.clone()));
            }
        }
        for name in affected {
            self.resolve_service(&name);
        }
    }

    /// The model service `name` with the frontends it lost to other claimants taken out.
    fn resolve_service(&mut self, name: &ObjectName) {
        let source = Source::ServiceClaims(name.clone());
        let Some(m) = self.models.get(name) else {
            self.services.remove(name);
            self.warnings.remove(&source);
            return;
        };
        let mut w = Warnings::new(m.owner.clone());
        let raw = &m.raw;
        let mut drop_ports = BTreeSet::new();
        let mut drop_external = BTreeSet::new();
        let mut drop_lb = BTreeSet::new();
        let mut drop_node_ports = BTreeSet::new();
        let mut drop_health = false;
        for (frontend, slot, what) in &m.claims {
            let Some(((winner, winner_slot), _)) =
                self.claims.get(frontend).and_then(|c| c.first_key_value())
            else {
                continue;
            };
            if winner == name && winner_slot == slot {
                continue;
            }
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
                    if drop_ports.insert(i) {
                        w.push(
                            format!("spec.ports[{}]", raw.port_fields[i]),
                            format!("{clash}; port left out"),
                        );
                    }
                }
                What::ExternalIp(i) => {
                    if drop_external.insert(i) {
                        w.push(
                            raw.external_ip_fields[i].clone(),
                            format!("{clash}; address left out"),
                        );
                    }
                }
                What::LoadBalancerIp(i) => {
                    if drop_lb.insert(i) {
                        w.push(
                            raw.lb_ip_fields[i].clone(),
                            format!("{clash}; address left out"),
                        );
                    }
                }
                What::NodePort(i) => {
                    if drop_node_ports.insert(i) {
                        w.push(
                            format!("spec.ports[{}].nodePort", raw.port_fields[i]),
                            format!("{clash}; nodePort left out"),
                        );
                    }
                }
                What::HealthCheck => {
                    if !drop_health {
                        drop_health = true;
                        w.push("spec.healthCheckNodePort", format!("{clash}; left out"));
                    }
                }
            }
        }
        let mut service = raw.service.clone();
        if drop_health {
            service.health_check_node_port = None;
        }
        for i in &drop_node_ports {
            service.ports[*i].node_port = None;
        }
        keep_indices(&mut service.external_ips, &drop_external);
        keep_indices(&mut service.load_balancer_ips, &drop_lb);
        keep_indices(&mut service.ports, &drop_ports);
        if service.ports.is_empty() {
            self.services.remove(name);
        } else {
            self.services.insert(name.clone(), service);
        }
        self.set_warnings(source, w.list);
    }

    fn update_pod(&mut self, key: &ObjectKey, interfaces: &dyn InterfaceResolver) {
        let Some(name) = key.object_name() else {
            return;
        };
        let mut w = Warnings::new(key.clone());
        let raw = match self.objects.get(key) {
            Some(Object::Pod(pod)) => {
                let t = translate_pod(
                    &self.settings,
                    &mut self.interner,
                    interfaces,
                    &name,
                    pod,
                    &mut w,
                );
                if t.retry {
                    self.retry_pods.insert(key.clone());
                }
                Some(PodRaw {
                    out: t.out,
                    rank: (t.terminating, name.clone()),
                })
            }
            _ => None,
        };
        self.set_warnings(Source::Object(key.clone()), w.list);
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
                    .insert(raw.rank.clone());
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
        self.endpoints.remove(name);
        self.peers.remove(name);
        let Some(raw) = self.pods.get(name) else {
            self.warnings.remove(&source);
            return;
        };
        let key = ObjectKey::namespaced(Kind::Pod, name.namespace.clone(), name.name.clone());
        let mut w = Warnings::new(key);
        for ip in pod_ips(&raw.out) {
            if let Some((_, winner)) = self.pod_claims.get(ip).and_then(|s| s.first()) {
                if winner != name {
                    w.push(
                        "status.podIPs",
                        format!("{ip} is also the address of pod {winner}; left out"),
                    );
                }
            }
        }
        if w.list.is_empty() {
            match &raw.out {
                PodOut::Local(e) => {
                    self.endpoints.insert(name.clone(), e.clone());
                }
                PodOut::Peer(p) => {
                    self.peers.insert(name.clone(), p.clone());
                }
                PodOut::Nothing => {}
            }
        }
        self.set_warnings(source, w.list);
    }

    fn update_policy(&mut self, key: &ObjectKey) {
        let Some(name) = key.object_name() else {
            return;
        };
        let mut w = Warnings::new(key.clone());
        let policy = match self.objects.get(key) {
            Some(Object::NetworkPolicy(np)) => translate_policy(&name, np, &mut w),
            _ => None,
        };
        self.set_warnings(Source::Object(key.clone()), w.list);
        match policy {
            Some(p) => self.policies.insert(name, p),
            None => self.policies.remove(&name),
        };
    }

    fn update_namespace(&mut self, key: &ObjectKey) {
        let mut w = Warnings::new(key.clone());
        let ns = match self.objects.get(key) {
            Some(Object::Namespace(ns)) => translate_namespace(&key.name, ns, &mut w),
            _ => None,
        };
        self.set_warnings(Source::Object(key.clone()), w.list);
        match ns {
            Some(n) => self.namespaces.insert(key.name.clone(), n),
            None => self.namespaces.remove(&key.name),
        };
    }

    /// The whole state, from the kept translations: one clone of each, no translating.
    fn assemble(&self) -> Translation {
        let node = self.node.as_ref().expect("translated before").node.clone();
        let mut state = DesiredState::new(node);
        state.services = self.services.values().cloned().collect();
        state.endpoints = self.endpoints.values().cloned().collect();
        state.pods = self.peers.values().cloned().collect();
        state.policies = self.policies.values().cloned().collect();
        state.namespaces = self.namespaces.values().cloned().collect();
        let warnings = self.warnings.values().flatten().cloned().collect();
        Translation { state, warnings }
    }
}

fn release(
    claims: &mut BTreeMap<Frontend, BTreeMap<Claimant, u32>>,
    frontend: &Frontend,
    who: &Claimant,
) {
    if let Some(set) = claims.get_mut(frontend) {
        if let Some(n) = set.get_mut(who) {
            *n -= 1;
            if *n == 0 {
                set.remove(who);
            }
        }
        if set.is_empty() {
            claims.remove(frontend);
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
fn service_claims(raw: &RawService, node_addresses: &[IpAddr]) -> Vec<(Frontend, u32, What)> {
    let s = &raw.service;
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
