//! What every translation module shares: the warnings of one object's translation and the
//! shared node and zone names. A module of its own so that the store (`cluster`) and the
//! per-kind translations it calls do not import each other.

use std::collections::BTreeMap;
use std::fmt;
use std::net::IpAddr;
use std::sync::Arc;

use dataplane_core::{Protocol, ThinStr};
use ipnetwork::IpNetwork;

use crate::ObjectKey;

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

    /// Warnings made earlier (an EndpointSlice's, read when it was stored).
    pub(crate) fn extend(&mut self, list: impl IntoIterator<Item = TranslationWarning>) {
        self.list.extend(list);
    }

    /// Whether nothing was collected.
    pub(crate) fn is_empty(&self) -> bool {
        self.list.is_empty()
    }

    /// The warnings collected.
    pub(crate) fn into_list(self) -> Vec<TranslationWarning> {
        self.list
    }
}

/// One shared string per name many objects repeat (a namespace, a port name), and one per
/// node or zone name: every backend on a node names it, and the model shares those names
/// ([`ThinStr`], a thin pointer in each backend) so that a big state does not hold a copy per
/// backend. Likewise one shared [`Place`] per node and zone pair.
#[derive(Debug, Default)]
pub(crate) struct Interner {
    names: BTreeMap<Box<str>, Arc<str>>,
    places_names: BTreeMap<Box<str>, ThinStr>,
    places: BTreeMap<PlaceKey, Arc<Place>>,
}

/// A node and a zone name, either unknown.
type PlaceKey = (Option<ThinStr>, Option<ThinStr>);

/// Where an endpoint is: its node and zone, shared by every endpoint with the same pair. An
/// endpoint holds one thin pointer (8 bytes) instead of two names (32): 2.3 MiB at 100k
/// endpoints.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct Place {
    pub node: Option<ThinStr>,
    pub zone: Option<ThinStr>,
}

impl Interner {
    pub(crate) fn get(&mut self, s: &str) -> Arc<str> {
        if let Some(a) = self.names.get(s) {
            return Arc::clone(a);
        }
        let a: Arc<str> = Arc::from(s);
        self.names.insert(s.into(), Arc::clone(&a));
        a
    }

    /// The shared node or zone name `s` (as the model's backends and pods hold it).
    pub(crate) fn place_name(&mut self, s: &str) -> ThinStr {
        if let Some(a) = self.places_names.get(s) {
            return a.clone();
        }
        let a = ThinStr::from(s);
        self.places_names.insert(s.into(), a.clone());
        a
    }

    /// The shared place of `node` and `zone`; `None` when both are unknown.
    pub(crate) fn place(&mut self, node: Option<&str>, zone: Option<&str>) -> Option<Arc<Place>> {
        if node.is_none() && zone.is_none() {
            return None;
        }
        let key = (
            node.map(|n| self.place_name(n)),
            zone.map(|z| self.place_name(z)),
        );
        if let Some(p) = self.places.get(&key) {
            return Some(Arc::clone(p));
        }
        let place = Arc::new(Place {
            node: key.0.clone(),
            zone: key.1.clone(),
        });
        self.places.insert(key, Arc::clone(&place));
        Some(place)
    }
}

/// Kubernetes protocol names are upper case (`TCP`); `None` defaults to TCP as the API
/// server does.
pub(crate) fn protocol(name: Option<&str>) -> Option<Protocol> {
    match name {
        None => Some(Protocol::Tcp),
        Some(n) => Protocol::ALL.into_iter().find(|p| p.to_string() == n),
    }
}

/// A CIDR as `net.ParseCIDR` reads it: the address masked to the prefix (kube-proxy and the
/// NetworkPolicy implementations take `10.0.0.1/24` as `10.0.0.0/24`). A bare address is
/// not a CIDR. Surrounding white space is ignored (kube-proxy trims source ranges).
pub(crate) fn parse_cidr(s: &str) -> Option<IpNetwork> {
    let (addr, prefix) = s.trim().split_once('/')?;
    // `ParseCIDRSloppy`: the address as `parse_ip_sloppy` reads it.
    let addr = crate::parse_ip_sloppy(addr).ok()?;
    let prefix: u8 = prefix.parse().ok()?;
    let net = IpNetwork::new(addr, prefix).ok()?;
    IpNetwork::new(net.network(), net.prefix()).ok()
}

/// A DNS-1123 label (what dataplane-core accepts as a port name).
pub(crate) fn is_label(s: &str, max: usize) -> bool {
    !s.is_empty()
        && s.len() <= max
        && s.chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
        && s.starts_with(|c: char| c.is_ascii_alphanumeric())
        && s.ends_with(|c: char| c.is_ascii_alphanumeric())
}

/// What dataplane-core accepts as an address of a node, a pod or a frontend.
pub(crate) fn usable_unicast(ip: IpAddr) -> bool {
    !(ip.is_unspecified()
        || ip.is_multicast()
        || ip.is_loopback()
        || matches!(ip, IpAddr::V4(v4) if v4.is_broadcast()))
}

/// A DNS-1123 subdomain (pod and policy names).
pub(crate) fn is_subdomain(s: &str) -> bool {
    s.len() <= 253 && s.split('.').all(|part| is_label(part, 253))
}
