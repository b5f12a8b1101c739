//! L2 announcements (`--l2-announcements`): which Services this node announces on its uplink
//! (`dataplane_core::Service::l2_announce`: it answers ARP and neighbour solicitations for
//! their LoadBalancer IPs and ExternalIPs).
//!
//! - Over a **manifest directory** the announcing node is configuration: the Service
//!   annotation [`dataplane_kube::ANNOTATION_L2_ANNOUNCE_NODE`] names it
//!   (`dataplane_kube::L2Announcements::Annotated`).
//! - Over the **API server** the nodes elect one per Service with a
//!   `coordination.k8s.io/v1` Lease named [`lease_name`] in `--l2-lease-namespace`, as
//!   Cilium's `pkg/l2announcer` does with `cilium-l2announce-<namespace>-<name>`
//!   (`dataplane_kube::L2Announcements::Elected`). [`Announcer`] runs one [`Election`] per
//!   candidate Service on a task of its own (Cilium runs one client-go `LeaderElector` per
//!   Service the same way) and reports each change of "this node holds it" to the reconcile
//!   loop, which hands it to the store (`Cluster::set_l2_announced`: a one-service change).
//!
//! ```text
//!  sync ─▶ Cluster::l2_candidates ∩ --l2-service-selector ─▶ Announcer::set_candidates
//!                                                               │ one task per Service:
//!                                                               │ Election::step every retry period
//!  Cluster::set_l2_announced ◀── (Service, held) ◀──────────────┘ (held → false at the renew deadline)
//!           └─▶ next sync: that one service's l2_announce flips
//! ```
//!
//! A candidate has an address to announce, is selected by `--l2-service-selector` and, with
//! `externalTrafficPolicy: Local`, has a ready endpoint on this node (Cilium's rule: another
//! node would attract traffic it drops). A Service that stops being a candidate while this
//! node announces it is first withdrawn from the datapath (a sync), and its lease released
//! after that sync; on shutdown (SIGTERM) the agent withdraws every announcement, syncs, then
//! releases its leases (client-go's `ReleaseOnCancel`; Cilium lets them expire): the datapath
//! stays in place when the agent stops, and a datapath still answering ARP for a released
//! Service would be a second announcer. A withdrawal that fails releases nothing (the leases
//! expire a lease duration later).
//!
//! [`Election`]: crate::lease::Election

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Instant, SystemTime};

use dataplane_kube::k8s_openapi::api::coordination::v1::Lease;
use dataplane_kube::ObjectKey;
use futures::future::BoxFuture;
use kube::core::{Expression, Selector, SelectorExt as _};
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;

use crate::lease::{Election, LeaseApi, LeaseTiming, Step};

/// The prefix of the Lease names (Cilium's is `cilium-l2announce`).
pub const LEASE_PREFIX: &str = "dataplane-l2announce";

/// The name of the Lease that elects the announcer of the Service `key`:
/// `dataplane-l2announce-<namespace>-<name>`, as Cilium names its own. Like Cilium's, two
/// Services can meet in one name (`a-b/c` and `a/b-c`): they then share one election.
pub fn lease_name(key: &ObjectKey) -> String {
    format!(
        "{LEASE_PREFIX}-{}-{}",
        key.namespace.as_deref().unwrap_or_default(),
        key.name
    )
}

/// What `--l2-announcements` configures (the election's part; the manifest source needs
/// none of it).
#[derive(Debug, Clone, PartialEq)]
pub struct L2Config {
    /// The leases' timing.
    pub timing: LeaseTiming,
    /// The namespace of the leases.
    pub namespace: String,
    /// The Services that may be announced (`None`: all).
    pub selector: Option<ServiceSelector>,
}

/// `--l2-service-selector`: a label selector as `kubectl get -l` takes one: `,`-separated
/// requirements `key=value` (or `==`), `key!=value`, `key`, `!key`, `key in (a,b)`,
/// `key notin (a,b)`, all of which must hold.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServiceSelector {
    text: String,
    selector: Selector,
}

impl ServiceSelector {
    /// Whether a Service with `labels` is selected.
    pub fn matches(&self, labels: Option<&BTreeMap<String, String>>) -> bool {
        static EMPTY: BTreeMap<String, String> = BTreeMap::new();
        self.selector.matches(labels.unwrap_or(&EMPTY))
    }
}

impl std::fmt::Display for ServiceSelector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.text)
    }
}

impl std::str::FromStr for ServiceSelector {
    type Err = String;

    /// Parses a selector (see [`ServiceSelector`]); an error names the requirement.
    fn from_str(s: &str) -> Result<Self, String> {
        let mut expressions = Vec::new();
        for requirement in split_requirements(s)? {
            expressions.push(parse_requirement(&requirement)?);
        }
        if expressions.is_empty() {
            return Err(format!(
                "{s:?}: an empty selector (leave the flag out to select every Service)"
            ));
        }
        Ok(Self {
            text: s.trim().to_owned(),
            selector: Selector::from_iter(expressions),
        })
    }
}

/// The requirements of a selector: split at the commas outside parentheses.
fn split_requirements(s: &str) -> Result<Vec<String>, String> {
    let mut out = Vec::new();
    let (mut depth, mut current) = (0u32, String::new());
    for c in s.chars() {
        match c {
            '(' => depth += 1,
            ')' => {
                depth = depth
                    .checked_sub(1)
                    .ok_or_else(|| format!("{s:?}: unbalanced parenthesis"))?;
            }
            ',' if depth == 0 => {
                out.push(std::mem::take(&mut current));
                continue;
            }
            _ => {}
        }
        current.push(c);
    }
    if depth != 0 {
        return Err(format!("{s:?}: unbalanced parenthesis"));
    }
    out.push(current);
    Ok(out
        .into_iter()
        .map(|r| r.trim().to_owned())
        .filter(|r| !r.is_empty())
        .collect())
}

/// A label key (an optional DNS subdomain prefix and `/`, then a name of up to 63
/// alphanumerics, `-`, `_`, `.`) or value (the same name, or empty).
fn label_name(s: &str) -> bool {
    s.len() <= 63
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
        && (s.is_empty()
            || (s.starts_with(|c: char| c.is_ascii_alphanumeric())
                && s.ends_with(|c: char| c.is_ascii_alphanumeric())))
}

fn label_key(s: &str) -> bool {
    let (prefix, name) = s.rsplit_once('/').unwrap_or(("", s));
    !name.is_empty()
        && label_name(name)
        && (prefix.is_empty() && !s.contains('/')
            || (!prefix.is_empty()
                && prefix.len() <= 253
                && prefix
                    .split('.')
                    .all(|p| !p.is_empty() && label_name(p) && !p.contains('_'))))
}

fn parse_requirement(r: &str) -> Result<Expression, String> {
    let key = |k: &str| -> Result<String, String> {
        let k = k.trim();
        if label_key(k) {
            Ok(k.to_owned())
        } else {
            Err(format!("{r:?}: {k:?} is not a label key"))
        }
    };
    let value = |v: &str| -> Result<String, String> {
        let v = v.trim();
        if label_name(v) {
            Ok(v.to_owned())
        } else {
            Err(format!("{r:?}: {v:?} is not a label value"))
        }
    };
    let set = |rest: &str| -> Result<BTreeSet<String>, String> {
        let inner = rest
            .trim()
            .strip_prefix('(')
            .and_then(|x| x.strip_suffix(')'))
            .ok_or_else(|| format!("{r:?}: expected a set of values in parentheses"))?;
        inner.split(',').map(value).collect()
    };
    if let Some((k, v)) = r.split_once("!=") {
        return Ok(Expression::NotEqual(key(k)?, value(v)?));
    }
    if let Some((k, v)) = r.split_once("==").or_else(|| r.split_once('=')) {
        return Ok(Expression::Equal(key(k)?, value(v)?));
    }
    let words: Vec<&str> = r.splitn(2, char::is_whitespace).collect();
    match words.as_slice() {
        [k, rest] if rest.trim_start().starts_with("notin") => Ok(Expression::NotIn(
            key(k)?,
            set(&rest.trim_start()["notin".len()..])?,
        )),
        [k, rest] if rest.trim_start().starts_with("in") => Ok(Expression::In(
            key(k)?,
            set(&rest.trim_start()["in".len()..])?,
        )),
        [k] => match k.strip_prefix('!') {
            Some(k) => Ok(Expression::DoesNotExist(key(k)?)),
            None => Ok(Expression::Exists(key(k)?)),
        },
        _ => Err(format!(
            "{r:?}: expected key=value, key!=value, key, !key, key in (...) or key notin (...)"
        )),
    }
}

/// A change of this node's hold on a Service's lease.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verdict {
    /// The Service.
    pub service: ObjectKey,
    /// Whether this node holds its lease now.
    pub held: bool,
}

/// What the reconcile loop asks of an election (the [`Announcer`] over the API server, a
/// scripted one in tests).
pub trait Elect: Send {
    /// The Services to compete for from now on: new ones start, the others stop and give
    /// their lease up (their announcement was withdrawn first, see the module docs).
    fn set_candidates(&mut self, services: &BTreeSet<ObjectKey>);
    /// Stops every election; with `release`, gives up the leases held.
    fn shutdown(self: Box<Self>, release: bool) -> BoxFuture<'static, ()>;
}

/// One election per candidate Service, each on a task of its own, reporting [`Verdict`]s.
pub struct Announcer<A> {
    api: std::sync::Arc<A>,
    identity: String,
    timing: LeaseTiming,
    tasks: BTreeMap<ObjectKey, Running>,
    verdicts: mpsc::UnboundedSender<Verdict>,
}

struct Running {
    stop: oneshot::Sender<bool>,
    task: JoinHandle<()>,
}

impl<A> std::fmt::Debug for Announcer<A> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Announcer")
            .field("identity", &self.identity)
            .field("services", &self.tasks.len())
            .finish_non_exhaustive()
    }
}

/// The leases of the namespace `namespace` through `client`.
pub fn kube_leases(client: kube::Client, namespace: &str) -> kube::Api<Lease> {
    kube::Api::namespaced(client, namespace)
}

impl<A: LeaseApi + 'static> Announcer<A> {
    /// An announcer for the node `identity` over `api`, and the receiver of its verdicts.
    pub fn new(
        api: A,
        identity: impl Into<String>,
        timing: LeaseTiming,
    ) -> (Self, mpsc::UnboundedReceiver<Verdict>) {
        let (tx, rx) = mpsc::unbounded_channel();
        (
            Self {
                api: std::sync::Arc::new(api),
                identity: identity.into(),
                timing,
                tasks: BTreeMap::new(),
                verdicts: tx,
            },
            rx,
        )
    }

    /// The Services competed for now.
    pub fn services(&self) -> impl Iterator<Item = &ObjectKey> {
        self.tasks.keys()
    }

    fn start(&mut self, key: ObjectKey) {
        let (stop, stopped) = oneshot::channel();
        let election = Election::new(lease_name(&key), self.identity.clone(), self.timing);
        let task = tokio::spawn(compete(
            std::sync::Arc::clone(&self.api),
            election,
            key.clone(),
            self.verdicts.clone(),
            stopped,
        ));
        self.tasks.insert(key, Running { stop, task });
    }

    fn stop(running: Running, release: bool) -> JoinHandle<()> {
        // A task that ended already (it cannot: it runs until told) has nothing to release.
        let _ = running.stop.send(release);
        running.task
    }
}

impl<A: LeaseApi + 'static> Elect for Announcer<A> {
    fn set_candidates(&mut self, services: &BTreeSet<ObjectKey>) {
        let gone: Vec<ObjectKey> = self
            .tasks
            .keys()
            .filter(|k| !services.contains(*k))
            .cloned()
            .collect();
        for key in gone {
            if let Some(running) = self.tasks.remove(&key) {
                tracing::debug!(service = %key, "no longer a candidate for L2 announcement");
                drop(Self::stop(running, true));
            }
        }
        for key in services {
            if !self.tasks.contains_key(key) {
                tracing::debug!(service = %key, lease = %lease_name(key), "candidate for L2 announcement");
                self.start(key.clone());
            }
        }
    }

    fn shutdown(mut self: Box<Self>, release: bool) -> BoxFuture<'static, ()> {
        let tasks: Vec<JoinHandle<()>> = std::mem::take(&mut self.tasks)
            .into_values()
            .map(|r| Self::stop(r, release))
            .collect();
        Box::pin(async move {
            for task in tasks {
                let _ = task.await;
            }
        })
    }
}

/// One Service's election until told to stop (then, when told so, its lease released):
/// a step every retry period, each bounded by the renew deadline, a verdict sent at each
/// change of [`Election::holds`], including the renew deadline passing while a request
/// hangs.
async fn compete<A: LeaseApi>(
    api: std::sync::Arc<A>,
    mut election: Election,
    service: ObjectKey,
    verdicts: mpsc::UnboundedSender<Verdict>,
    mut stop: oneshot::Receiver<bool>,
) {
    let timing = election.timing();
    let mut reported = false;
    let mut report = |held: bool, election: &Election| {
        if held != reported {
            reported = held;
            if held {
                tracing::info!(service = %service, lease = %election.name(), "L2: this node announces the service (lease held)");
            } else {
                tracing::info!(service = %service, lease = %election.name(), "L2: this node stops announcing the service");
            }
            let _ = verdicts.send(Verdict {
                service: service.clone(),
                held,
            });
        }
    };
    loop {
        let now = Instant::now();
        // A step may not outlast the renew deadline of a held lease (a request that hangs
        // must not keep a stale holder announcing), nor a renew deadline otherwise.
        let limit = election
            .deadline()
            .filter(|d| *d > now)
            .unwrap_or(now + timing.renew_deadline);
        let attempt = tokio::select! {
            release = &mut stop => {
                return release_if(&*api, &mut election, release.unwrap_or(false), &service).await;
            }
            attempt = tokio::time::timeout_at(limit.into(), election.step(&*api, now, SystemTime::now())) => attempt,
        };
        match attempt {
            Ok(Ok(Step::Held | Step::HeldBy(_) | Step::Lost)) => {}
            Ok(Err(e)) => tracing::warn!(service = %service, error = %e, "L2 lease"),
            Err(_) => {
                tracing::warn!(service = %service, lease = %election.name(), "L2 lease: no answer before the renew deadline");
            }
        }
        report(election.holds(Instant::now()), &election);
        // The next step after a retry period; a held lease is looked at again at its renew
        // deadline at the latest, so that its loss is reported on time.
        let after = Instant::now();
        let mut next = after + timing.retry_period;
        if let Some(deadline) = election.deadline().filter(|d| *d > after) {
            next = next.min(deadline);
        }
        tokio::select! {
            release = &mut stop => {
                return release_if(&*api, &mut election, release.unwrap_or(false), &service).await;
            }
            () = tokio::time::sleep_until(next.into()) => {}
        }
        report(election.holds(Instant::now()), &election);
    }
}

async fn release_if<A: LeaseApi>(
    api: &A,
    election: &mut Election,
    release: bool,
    service: &ObjectKey,
) {
    if !release {
        return;
    }
    match election.release(api, SystemTime::now()).await {
        Ok(true) => {
            tracing::info!(service = %service, lease = %election.name(), "L2 lease released");
        }
        Ok(false) => {}
        Err(e) => {
            tracing::warn!(service = %service, error = %e, "L2 lease not released: it expires by itself");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sel(s: &str) -> Result<ServiceSelector, String> {
        s.parse()
    }

    fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    }

    #[test]
    fn selectors_as_kubectl_writes_them() {
        let s = sel("l2=yes, tier in (web, api),!legacy,env!=dev,app.kubernetes.io/name").unwrap();
        let ok = labels(&[
            ("l2", "yes"),
            ("tier", "web"),
            ("app.kubernetes.io/name", "x"),
        ]);
        assert!(s.matches(Some(&ok)));
        let mut bad = ok.clone();
        bad.insert("legacy".into(), String::new());
        assert!(!s.matches(Some(&bad)));
        let mut dev = ok.clone();
        dev.insert("env".into(), "dev".into());
        assert!(!s.matches(Some(&dev)));
        assert!(!s.matches(None));
        let s = sel("tier notin (db)").unwrap();
        assert!(s.matches(None));
        assert!(!s.matches(Some(&labels(&[("tier", "db")]))));
        assert!(sel("a==b").unwrap().matches(Some(&labels(&[("a", "b")]))));
        for bad in [
            "",
            " , ",
            "a=b=c",
            "tier in (web",
            "tier in web",
            "-a=b",
            "a=-b",
            "a b c",
            "x/y/z",
        ] {
            assert!(sel(bad).is_err(), "{bad:?} parsed");
        }
        let e = sel("l2=yes,bad key=1").unwrap_err();
        assert!(e.contains("bad key"), "{e}");
    }

    #[test]
    fn lease_names_follow_ciliums() {
        let key = ObjectKey::namespaced(dataplane_kube::Kind::Service, "default", "web");
        assert_eq!(lease_name(&key), "dataplane-l2announce-default-web");
    }
}
