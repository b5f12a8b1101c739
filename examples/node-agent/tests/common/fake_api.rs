//! A fake Kubernetes API server: no API server can run here, so the tests of the API source
//! (`tests/kube_source.rs`), of the Lease elections (`tests/l2_leases.rs`) and the lab test
//! of L2 announcements (`tests/lab_agent_l2.rs`, the agent binary over it) start this one.
//!
//! ```text
//!   kube::Client ──HTTP/1.1──▶ FakeApi (a listener the test chose: 127.0.0.1:0, or one a
//!                               │        thread bound inside a lab namespace)
//!    lists and watches ─────────┼─▶ Script: per kind, scripted replies (lists in order, the
//!    (/api/v1/services, ...)    │   last repeating; watches in order, then held open idle);
//!                               │   every request recorded
//!    Leases ────────────────────┴─▶ Leases: coordination.k8s.io/v1 Leases stored as the
//!    (/apis/coordination.k8s.io/v1/namespaces/<ns>/leases[/<name>])     API server does
//! ```
//!
//! Lists are answered as kube-apiserver answers them (`{"kind":"ServiceList","metadata":
//! {"resourceVersion":…},"items":[…]}`), watches as chunked newline-delimited events, one
//! JSON object per line. A kind without a scripted list answers 404 `NotFound`, as a cluster
//! without that custom resource does (the source then lists it empty). Leases: `GET` (404
//! when missing), `POST` (409 `AlreadyExists` when it exists), `PUT` (409 `Conflict` unless
//! the body's `metadata.resourceVersion` is the stored one), every write a new
//! resourceVersion; every write answered is recorded with the instant it was answered.

use std::{
    collections::{BTreeMap, HashMap, VecDeque},
    convert::Infallible,
    net::SocketAddr,
    path::{Path, PathBuf},
    sync::{Arc, Mutex, PoisonError},
    time::{Duration, Instant},
};

use dataplane_kube::Kind;
use futures::{stream, StreamExt as _};
use http_body_util::{combinators::BoxBody, BodyExt, Full, StreamBody};
use hyper::{
    body::{Bytes, Frame, Incoming},
    server::conn::http1,
    service::service_fn,
    Method, Request, Response, StatusCode,
};
use hyper_util::rt::TokioIo;
use serde_json::{json, Value};
use tokio::{net::TcpListener, task::JoinHandle};

/// The path of the Leases API up to the namespace.
const LEASES: &str = "/apis/coordination.k8s.io/v1/namespaces/";

/// The resource path the API server serves a kind under.
pub fn resource_path(kind: Kind) -> &'static str {
    match kind {
        Kind::Service => "/api/v1/services",
        Kind::EndpointSlice => "/apis/discovery.k8s.io/v1/endpointslices",
        Kind::NetworkPolicy => "/apis/networking.k8s.io/v1/networkpolicies",
        Kind::Pod => "/api/v1/pods",
        Kind::Namespace => "/api/v1/namespaces",
        Kind::Node => "/api/v1/nodes",
        Kind::AdminNetworkPolicy => "/apis/policy.networking.k8s.io/v1alpha1/adminnetworkpolicies",
        Kind::BaselineAdminNetworkPolicy => {
            "/apis/policy.networking.k8s.io/v1alpha1/baselineadminnetworkpolicies"
        }
        Kind::HostEndpoint => "/apis/projectcalico.org/v3/hostendpoints",
        Kind::GlobalNetworkPolicy => "/apis/projectcalico.org/v3/globalnetworkpolicies",
        Kind::FelixConfiguration => "/apis/projectcalico.org/v3/felixconfigurations",
    }
}

/// The `apiVersion` of a kind's list: `v1`, or `<group>/<version>` from its path.
fn api_version(kind: Kind) -> String {
    match resource_path(kind).strip_prefix("/apis/") {
        Some(rest) => rest.splitn(3, '/').take(2).collect::<Vec<_>>().join("/"),
        None => "v1".to_owned(),
    }
}

/// The list of `kind` with `items` at `resource_version`, as the API server writes it.
pub fn list_body(kind: Kind, items: &[Value], resource_version: &str) -> String {
    json!({
        "kind": format!("{kind}List"),
        "apiVersion": api_version(kind),
        "metadata": {"resourceVersion": resource_version},
        "items": items,
    })
    .to_string()
}

/// One scripted answer of the fake API server.
#[derive(Debug, Clone)]
pub enum Reply {
    /// 200 with a JSON body (a list).
    Json(String),
    /// An error status with a `Status` body, as the API server sends it.
    Status(StatusCode, String),
    /// 200 and a chunked watch stream of these events; then the server closes the stream
    /// (`hold: false`, a dropped watch) or keeps it open and idle (`hold: true`).
    Watch { events: Vec<String>, hold: bool },
    /// The connection is closed without an answer (a crashed or restarted API server).
    Hangup,
}

/// A list or watch request the server answered.
#[derive(Debug, Clone)]
pub struct Recorded {
    pub kind: Kind,
    pub watch: bool,
    pub query: BTreeMap<String, String>,
    pub authorization: Option<String>,
}

impl Recorded {
    pub fn param(&self, name: &str) -> Option<&str> {
        self.query.get(name).map(String::as_str)
    }
}

#[derive(Default)]
struct Script {
    /// Replies to lists, in order; the last one repeats.
    lists: HashMap<Kind, VecDeque<Reply>>,
    /// Replies to watches, in order; when none is left, a watch is held open with no events.
    watches: HashMap<Kind, VecDeque<Reply>>,
    requests: Vec<Recorded>,
}

/// A Lease write the server answered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LeaseWrite {
    pub method: Method,
    /// `<namespace>/<name>`.
    pub lease: String,
    /// The holder the body wrote.
    pub holder: Option<String>,
    pub status: u16,
    /// When it was answered.
    pub at: Instant,
}

#[derive(Default)]
struct Leases {
    /// The server takes Lease requests but does not answer them (an overloaded or
    /// partitioned API server).
    hang: bool,
    /// By `<namespace>/<name>`.
    stored: BTreeMap<String, Value>,
    version: u64,
    writes: Vec<LeaseWrite>,
}

#[derive(Default)]
struct Shared {
    script: Mutex<Script>,
    leases: Mutex<Leases>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// The fake API server; it stops when dropped.
pub struct FakeApi {
    pub addr: SocketAddr,
    shared: Arc<Shared>,
    server: JoinHandle<()>,
}

impl FakeApi {
    /// A server on 127.0.0.1 (a free port) with nothing scripted: every kind answers 404,
    /// every Lease is missing. Must be called inside a tokio runtime.
    pub fn start() -> FakeApi {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
        Self::serve(listener)
    }

    /// A server on `listener` (bound where the test needs it: a socket belongs to the
    /// network namespace it was created in); must be called inside a tokio runtime, whose
    /// tasks then serve it.
    pub fn serve(listener: std::net::TcpListener) -> FakeApi {
        listener
            .set_nonblocking(true)
            .expect("non-blocking listener");
        let listener = TcpListener::from_std(listener).expect("a tokio listener");
        let addr = listener.local_addr().expect("local address");
        let shared = Arc::new(Shared::default());
        let state = Arc::clone(&shared);
        let server = tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let state = Arc::clone(&state);
                tokio::spawn(async move {
                    let service = service_fn(move |request| handle(Arc::clone(&state), request));
                    // A `Hangup` ends the connection with an error, on purpose.
                    let _ = http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        FakeApi {
            addr,
            shared,
            server,
        }
    }

    /// The replies to the lists of `kind`, in order (the last one repeats).
    pub fn lists(&self, kind: Kind, replies: impl IntoIterator<Item = Reply>) {
        lock(&self.shared.script)
            .lists
            .insert(kind, replies.into_iter().collect());
    }

    /// The replies to the watches of `kind`, in order (then held open, idle).
    pub fn watches(&self, kind: Kind, replies: impl IntoIterator<Item = Reply>) {
        lock(&self.shared.script)
            .watches
            .insert(kind, replies.into_iter().collect());
    }

    /// A client of this server.
    pub fn client(&self) -> kube::Client {
        let url = format!("http://{}", self.addr).parse().expect("server URL");
        kube::Client::try_from(kube::Config::new(url)).expect("client for the fake server")
    }

    /// Writes a kubeconfig of this server to `dir/kubeconfig`, with a bearer `token` if
    /// given (else no credentials).
    pub fn kubeconfig(&self, dir: &Path, token: Option<&str>) -> PathBuf {
        let path = dir.join("kubeconfig");
        let user = token.map_or_else(|| " {}".to_owned(), |t| format!("\n    token: {t}"));
        std::fs::write(
            &path,
            format!(
                "apiVersion: v1\nkind: Config\n\
                 clusters:\n- name: fake\n  cluster:\n    server: http://{}\n\
                 contexts:\n- name: fake\n  context:\n    cluster: fake\n    user: agent\n\
                 current-context: fake\n\
                 users:\n- name: agent\n  user:{user}\n",
                self.addr
            ),
        )
        .expect("write kubeconfig");
        path
    }

    /// The list (`watch: false`) or watch requests of `kind` so far.
    pub fn requests(&self, kind: Kind, watch: bool) -> Vec<Recorded> {
        lock(&self.shared.script)
            .requests
            .iter()
            .filter(|r| r.kind == kind && r.watch == watch)
            .cloned()
            .collect()
    }

    /// Waits until `count` requests of `kind` (lists or watches) have been made; returns
    /// them. Panics after `deadline`.
    pub async fn wait_requests(
        &self,
        kind: Kind,
        watch: bool,
        count: usize,
        deadline: Duration,
    ) -> Vec<Recorded> {
        let deadline = tokio::time::Instant::now() + deadline;
        loop {
            let requests = self.requests(kind, watch);
            if requests.len() >= count {
                return requests;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "{count} {} requests of {kind} expected, saw {requests:?}",
                if watch { "watch" } else { "list" },
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// The holder of the Lease `name` in `namespace`.
    pub fn holder(&self, namespace: &str, name: &str) -> Option<String> {
        lock(&self.shared.leases)
            .stored
            .get(&format!("{namespace}/{name}"))
            .and_then(holder)
    }

    /// The stored Lease `name` in `namespace`.
    pub fn lease(&self, namespace: &str, name: &str) -> Option<Value> {
        lock(&self.shared.leases)
            .stored
            .get(&format!("{namespace}/{name}"))
            .cloned()
    }

    /// Every Lease write answered so far.
    pub fn lease_writes(&self) -> Vec<LeaseWrite> {
        lock(&self.shared.leases).writes.clone()
    }

    /// Whether Lease requests hang (taken, not answered) from now on.
    pub fn hang_leases(&self, hang: bool) {
        lock(&self.shared.leases).hang = hang;
    }
}

impl Drop for FakeApi {
    fn drop(&mut self) {
        self.server.abort();
    }
}

pub type Body = BoxBody<Bytes, Infallible>;

async fn handle(
    state: Arc<Shared>,
    request: Request<Incoming>,
) -> Result<Response<Body>, std::io::Error> {
    let path = request.uri().path().to_owned();
    let Some(lease) = path.strip_prefix(LEASES).and_then(lease_path) else {
        return answer(&state.script, &request);
    };
    while lock(&state.leases).hang {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let method = request.method().clone();
    let body = request
        .into_body()
        .collect()
        .await
        .map(http_body_util::Collected::to_bytes)
        .unwrap_or_default();
    Ok(answer_lease(&state.leases, &method, &lease, &body))
}

/// `<namespace>/leases[/<name>]` → (namespace, name or "").
fn lease_path(rest: &str) -> Option<(String, String)> {
    let (namespace, rest) = rest.split_once('/')?;
    let name = rest.strip_prefix("leases")?;
    if !(name.is_empty() || name.starts_with('/')) {
        return None;
    }
    Some((
        namespace.to_owned(),
        name.trim_start_matches('/').to_owned(),
    ))
}

fn json_response(code: StatusCode, body: Body) -> Response<Body> {
    Response::builder()
        .status(code)
        .header("content-type", "application/json")
        .header("audit-id", "6f1b8e2c-5d4a-4c3b-9a2e-1f0d9c8b7a6e")
        .body(body)
        .expect("response")
}

/// An answer with a JSON `body`.
pub fn json_body(code: StatusCode, body: String) -> Response<Body> {
    json_response(code, Full::new(Bytes::from(body)).boxed())
}

/// A `Status` answer, as the API server writes its failures.
fn failure(code: StatusCode, reason: &str, message: &str) -> Response<Body> {
    let body = json!({
        "kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
        "message": message, "reason": reason, "code": code.as_u16(),
    });
    json_body(code, body.to_string())
}

fn answer(
    script: &Mutex<Script>,
    request: &Request<Incoming>,
) -> Result<Response<Body>, std::io::Error> {
    let path = request.uri().path().to_owned();
    let query = parse_query(request.uri().query().unwrap_or(""));
    let Some(kind) = Kind::ALL.into_iter().find(|k| resource_path(*k) == path) else {
        return Ok(failure(
            StatusCode::NOT_FOUND,
            "NotFound",
            "the server could not find the requested resource",
        ));
    };
    let watch = query.get("watch").is_some_and(|w| w == "true" || w == "1");
    let authorization = request
        .headers()
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    // The API server sends bookmarks only to watches that ask for them.
    let bookmarks = query
        .get("allowWatchBookmarks")
        .is_some_and(|b| b == "true");
    let reply = {
        let mut script = lock(script);
        script.requests.push(Recorded {
            kind,
            watch,
            query,
            authorization,
        });
        if watch {
            script
                .watches
                .get_mut(&kind)
                .and_then(VecDeque::pop_front)
                .unwrap_or(Reply::Watch {
                    events: Vec::new(),
                    hold: true,
                })
        } else {
            match script.lists.get_mut(&kind) {
                Some(replies) if replies.len() > 1 => replies.pop_front().expect("non-empty"),
                Some(replies) if !replies.is_empty() => replies[0].clone(),
                // Not scripted: a cluster without this resource.
                _ => {
                    return Ok(failure(
                        StatusCode::NOT_FOUND,
                        "NotFound",
                        "the server could not find the requested resource",
                    ))
                }
            }
        }
    };
    Ok(match reply {
        Reply::Json(body) => json_body(StatusCode::OK, body),
        Reply::Status(code, body) => json_body(code, body),
        Reply::Watch { events, hold } => {
            // One chunk per event, each ending in a newline, as the API server streams them.
            let events = stream::iter(
                events
                    .into_iter()
                    .filter(move |e| bookmarks || !e.contains(r#""type":"BOOKMARK""#))
                    .map(|e| Ok(Frame::data(Bytes::from(format!("{e}\n"))))),
            );
            let body = if hold {
                BodyExt::boxed(StreamBody::new(events.chain(stream::pending())))
            } else {
                BodyExt::boxed(StreamBody::new(events))
            };
            json_response(StatusCode::OK, body)
        }
        Reply::Hangup => {
            return Err(std::io::Error::other("hang up"));
        }
    })
}

fn holder(lease: &Value) -> Option<String> {
    lease["spec"]["holderIdentity"].as_str().map(str::to_owned)
}

/// The API server's answer to one Lease request.
fn answer_lease(
    leases: &Mutex<Leases>,
    method: &Method,
    (namespace, name): &(String, String),
    body: &[u8],
) -> Response<Body> {
    let mut leases = lock(leases);
    let mut written: Value = serde_json::from_slice(body).unwrap_or(Value::Null);
    let name = if *method == Method::POST {
        written["metadata"]["name"]
            .as_str()
            .unwrap_or("")
            .to_owned()
    } else {
        name.clone()
    };
    let key = format!("{namespace}/{name}");
    // A write stored: a new resourceVersion, and what the API server fills in.
    let store = |leases: &mut Leases, written: &mut Value, code: StatusCode| {
        leases.version += 1;
        written["metadata"]["resourceVersion"] = json!(leases.version.to_string());
        written["metadata"]["namespace"] = json!(namespace);
        written["kind"] = json!("Lease");
        written["apiVersion"] = json!("coordination.k8s.io/v1");
        leases.stored.insert(key.clone(), written.clone());
        json_body(code, written.to_string())
    };
    let response = match *method {
        Method::GET => {
            return match leases.stored.get(&key) {
                Some(lease) => json_body(StatusCode::OK, lease.to_string()),
                None => failure(
                    StatusCode::NOT_FOUND,
                    "NotFound",
                    &format!("leases.coordination.k8s.io {name:?} not found"),
                ),
            }
        }
        Method::POST if leases.stored.contains_key(&key) => failure(
            StatusCode::CONFLICT,
            "AlreadyExists",
            &format!("leases.coordination.k8s.io {name:?} already exists"),
        ),
        Method::POST => store(&mut leases, &mut written, StatusCode::CREATED),
        Method::PUT => match leases.stored.get(&key) {
            None => failure(StatusCode::NOT_FOUND, "NotFound", "not found"),
            Some(current)
                if current["metadata"]["resourceVersion"]
                    != written["metadata"]["resourceVersion"] =>
            {
                failure(
                    StatusCode::CONFLICT,
                    "Conflict",
                    "Operation cannot be fulfilled on leases.coordination.k8s.io: the object \
                     has been modified; please apply your changes to the latest version and \
                     try again",
                )
            }
            Some(_) => store(&mut leases, &mut written, StatusCode::OK),
        },
        _ => failure(StatusCode::METHOD_NOT_ALLOWED, "MethodNotAllowed", "no"),
    };
    let write = LeaseWrite {
        method: method.clone(),
        lease: key,
        holder: holder(&written),
        status: response.status().as_u16(),
        at: Instant::now(),
    };
    leases.writes.push(write);
    response
}

/// `a=b&c=d%3De` decoded (application/x-www-form-urlencoded, as kube-rs encodes queries).
fn parse_query(query: &str) -> BTreeMap<String, String> {
    query
        .split('&')
        .filter(|pair| !pair.is_empty())
        .map(|pair| {
            let (name, value) = pair.split_once('=').unwrap_or((pair, ""));
            (decode(name), decode(value))
        })
        .collect()
}

fn decode(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' if i + 2 < bytes.len() => {
                let hex = std::str::from_utf8(&bytes[i + 1..i + 3]).expect("ascii");
                out.push(u8::from_str_radix(hex, 16).expect("percent escape"));
                i += 2;
            }
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8(out).expect("utf-8 query")
}
