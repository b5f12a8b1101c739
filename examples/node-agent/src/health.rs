//! Health, compatible with kube-proxy (pkg/proxy/healthcheck/):
//!
//! - [`ServiceHealth`]: for each `externalTrafficPolicy: Local` service with a
//!   `healthCheckNodePort`, an HTTP server on that port (`0.0.0.0` and `[::]`) answering any
//!   path with `200` and
//!   `{"service":{"namespace":"…","name":"…"},"localEndpoints":N,"serviceProxyHealthy":true}`
//!   when the node has ready local endpoints (and the agent is healthy; terminating ones do
//!   not count, as in kube-proxy), `503` otherwise, so that
//!   cloud load balancers send traffic only to nodes with a local endpoint. Servers open and
//!   close as services come and go (a port that cannot be bound is tried again at the next
//!   sync, as kube-proxy does).
//! - [`serve_healthz`]: `/healthz` and `/livez` on `--healthz-bind-address`, `200` with
//!   `{"lastUpdated":…,"currentTime":…,"nodeEligible":…}` (`/livez` without `nodeEligible`),
//!   `503` when the oldest change not yet synced is older than the health timeout (twice the
//!   sync period, kube-proxy's), and `/healthz` also when the Node is being deleted or is
//!   tainted `ToBeDeletedByClusterAutoscaler` (load balancers drain it first), or is missing
//!   once the Nodes are listed (deleted: see `Reconciler`'s eligibility).
//!
//! Times are RFC 3339 (kube-proxy prints Go's `time.Time` format there; both are strings and
//! no client parses them).

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant, SystemTime};

use dataplane::{HealthCheck, ObjectName};
use hyper::StatusCode;
use k8s_openapi::jiff::Timestamp;
use nix::sys::socket::Shutdown;
use tokio::task::AbortHandle;

use crate::http::{self, Reply};
use crate::metrics::Metrics;

/// The agent's health as `/healthz`, `/livez` and the service health ports report it:
/// updated by the reconcile loop, read by the servers.
#[derive(Debug)]
pub struct Status {
    timeout: Duration,
    inner: Mutex<StatusInner>,
}

#[derive(Debug)]
struct StatusInner {
    last_updated: Option<SystemTime>,
    oldest_pending: Option<Instant>,
    node_eligible: bool,
}

impl Status {
    /// Unhealthy when a change waits longer than `timeout` (kube-proxy: twice the sync
    /// period).
    pub fn new(timeout: Duration) -> Self {
        Self {
            timeout,
            inner: Mutex::new(StatusInner {
                last_updated: None,
                oldest_pending: None,
                // Eligible while starting, until the Node says otherwise (kube-proxy).
                node_eligible: true,
            }),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, StatusInner> {
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// A change arrived at `now` that the dataplane does not have yet.
    pub fn queued(&self, now: Instant) {
        self.lock().oldest_pending.get_or_insert(now);
    }

    /// A sync that took in every queued change succeeded at `at`.
    pub fn updated(&self, at: SystemTime) {
        let mut inner = self.lock();
        inner.oldest_pending = None;
        inner.last_updated = Some(at);
    }

    /// Whether the Node may take traffic (present, not being deleted, not tainted for
    /// deletion).
    pub fn set_node_eligible(&self, eligible: bool) {
        self.lock().node_eligible = eligible;
    }

    /// See [`Status::set_node_eligible`].
    pub fn node_eligible(&self) -> bool {
        self.lock().node_eligible
    }

    /// Whether the agent is healthy at `now`, and when it last synced. Healthy while it
    /// starts (never synced) and while no change waits longer than the timeout.
    pub fn healthy(&self, now: Instant) -> (bool, Option<SystemTime>) {
        let inner = self.lock();
        let late = inner.last_updated.is_some()
            && inner
                .oldest_pending
                .is_some_and(|queued| now.saturating_duration_since(queued) >= self.timeout);
        (!late, inner.last_updated)
    }

    /// The answer of `/healthz` (`livez` false) or `/livez` at `now`.
    pub fn answer(&self, livez: bool, now: Instant, wall: SystemTime) -> (StatusCode, String) {
        let (healthy, last_updated) = self.healthy(now);
        let eligible = self.node_eligible();
        let ok = healthy && (livez || eligible);
        // kube-proxy reports "now" as the last update while healthy (older releases did, and
        // clients compare it with the current time).
        let last = if ok { Some(wall) } else { last_updated };
        let time = |t: Option<SystemTime>| {
            t.and_then(|t| Timestamp::try_from(t).ok())
                .map_or_else(String::new, |t| t.to_string())
        };
        // In kube-proxy's key order (serde_json's maps would sort them).
        let (last, current) = (quote(&time(last)), quote(&time(Some(wall))));
        let body = if livez {
            format!(r#"{{"lastUpdated":{last},"currentTime":{current}}}"#)
        } else {
            format!(r#"{{"lastUpdated":{last},"currentTime":{current},"nodeEligible":{eligible}}}"#)
        };
        let code = if ok {
            StatusCode::OK
        } else {
            StatusCode::SERVICE_UNAVAILABLE
        };
        (code, body)
    }
}

/// `s` as a JSON string.
fn quote(s: &str) -> String {
    serde_json::Value::from(s).to_string()
}

/// Serves `/healthz` and `/livez` on `addr` (`0.0.0.0`: on `[::]` too, see
/// [`http::bind_server`]) until the returned task is aborted; the address bound (its port when
/// `addr`'s is 0).
pub fn serve_healthz(
    addr: SocketAddr,
    status: Arc<Status>,
    metrics: Arc<Metrics>,
) -> std::io::Result<(tokio::task::JoinHandle<()>, SocketAddr)> {
    let listeners = http::bind_server(addr)?;
    let bound = listeners[0].local_addr()?;
    let handler = http::handler(move |path| -> Reply {
        let livez = match path {
            "/healthz" => false,
            "/livez" => true,
            _ => {
                return (
                    StatusCode::NOT_FOUND,
                    "text/plain",
                    "404 page not found\n".into(),
                )
            }
        };
        let (code, body) = status.answer(livez, Instant::now(), SystemTime::now());
        metrics.health_answer(livez, code.as_u16());
        (code, "application/json", body)
    });
    tracing::info!(address = %bound, listeners = listeners.len(), "serving /healthz and /livez");
    Ok((
        tokio::spawn(http::serve_all(listeners, handler, http::Limits::default())),
        bound,
    ))
}

/// The body and status a service health port answers with.
pub fn service_answer(service: &ObjectName, local_endpoints: usize, healthy: bool) -> Reply {
    // In kube-proxy's key order, compact.
    let body = format!(
        r#"{{"service":{{"namespace":{},"name":{}}},"localEndpoints":{local_endpoints},"serviceProxyHealthy":{healthy}}}"#,
        quote(&service.namespace),
        quote(&service.name),
    );
    let code = if local_endpoints > 0 && healthy {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (code, "application/json", body)
}

/// The health-check NodePort servers, one per `externalTrafficPolicy: Local` service.
#[derive(Debug)]
pub struct ServiceHealth {
    status: Arc<Status>,
    addresses: Vec<IpAddr>,
    limits: http::Limits,
    servers: BTreeMap<ObjectName, Instance>,
}

#[derive(Debug)]
struct Instance {
    port: u16,
    local_endpoints: Arc<AtomicUsize>,
    tasks: Vec<AbortHandle>,
    /// A second descriptor of each listening socket: shut down when the port closes.
    listeners: Vec<OwnedFd>,
}

impl Drop for Instance {
    fn drop(&mut self) {
        // An aborted task drops its listener only when the runtime next polls it: a service
        // that takes over the port in the same sync would fail to bind it (and wait for the
        // next sync). Shutting the socket down stops it listening now, and a socket that no
        // longer listens does not keep SO_REUSEADDR sockets off its port.
        for listener in &self.listeners {
            let _ = nix::sys::socket::shutdown(listener.as_raw_fd(), Shutdown::Both);
        }
        for task in &self.tasks {
            task.abort();
        }
    }
}

impl ServiceHealth {
    /// Servers that listen on every address of the node (`0.0.0.0` and `[::]`).
    pub fn new(status: Arc<Status>) -> Self {
        Self::on(
            status,
            vec![
                IpAddr::V4(Ipv4Addr::UNSPECIFIED),
                IpAddr::V6(Ipv6Addr::UNSPECIFIED),
            ],
        )
    }

    /// Servers that listen on `addresses` only (tests: `127.0.0.1`).
    pub fn on(status: Arc<Status>, addresses: Vec<IpAddr>) -> Self {
        Self {
            status,
            addresses,
            limits: http::Limits::default(),
            servers: BTreeMap::new(),
        }
    }

    /// The same with other limits for the ports' connections.
    #[must_use]
    pub fn with_limits(mut self, limits: http::Limits) -> Self {
        self.limits = limits;
        self
    }

    /// The ports served now, by service.
    pub fn ports(&self) -> BTreeMap<ObjectName, u16> {
        self.servers
            .iter()
            .map(|(name, instance)| (name.clone(), instance.port))
            .collect()
    }

    /// Makes the servers match `checks` (what `dataplane::health_checks` says of the state
    /// just programmed): closes those of services that are gone or moved to another port,
    /// opens the new ones, updates the local endpoint counts. Needs a tokio runtime.
    pub fn sync(&mut self, checks: &[HealthCheck]) {
        let wanted: BTreeMap<&ObjectName, &HealthCheck> =
            checks.iter().map(|c| (&c.service, c)).collect();
        self.servers.retain(|name, instance| {
            let keep = wanted
                .get(name)
                .is_some_and(|c| c.node_port == instance.port);
            if !keep {
                tracing::info!(service = %name, port = instance.port, "closing health check port");
            }
            keep
        });
        for (name, check) in wanted {
            if let Some(instance) = self.servers.get(name) {
                instance
                    .local_endpoints
                    .store(check.local_endpoints, Ordering::Relaxed);
                continue;
            }
            match self.open(check) {
                Ok(instance) => {
                    tracing::info!(service = %name, port = check.node_port, "opened health check port");
                    self.servers.insert(name.clone(), instance);
                }
                // Tried again at the next sync (kube-proxy logs and retries the same way).
                Err(e) => tracing::error!(
                    service = %name, port = check.node_port, error = %e,
                    "cannot open the health check port"
                ),
            }
        }
    }

    fn open(&self, check: &HealthCheck) -> std::io::Result<Instance> {
        let local_endpoints = Arc::new(AtomicUsize::new(check.local_endpoints));
        let mut instance = Instance {
            port: check.node_port,
            local_endpoints: Arc::clone(&local_endpoints),
            tasks: Vec::new(),
            listeners: Vec::new(),
        };
        for address in &self.addresses {
            let listener = match http::bind(SocketAddr::new(*address, check.node_port)) {
                Ok(listener) => listener,
                // A node without IPv6 (or IPv4): the other family serves.
                Err(e) if address.is_ipv6() && http::no_ipv6(&e) => continue,
                // `instance` is dropped: what opened so far closes.
                Err(e) => return Err(e),
            };
            instance
                .listeners
                .push(listener.as_fd().try_clone_to_owned()?);
            let status = Arc::clone(&self.status);
            let local = Arc::clone(&local_endpoints);
            let service = check.service.clone();
            let handler = http::handler(move |_path| {
                let (healthy, _) = status.healthy(Instant::now());
                service_answer(&service, local.load(Ordering::Relaxed), healthy)
            });
            instance
                .tasks
                .push(tokio::spawn(http::serve(listener, handler, self.limits)).abort_handle());
        }
        Ok(instance)
    }
}
