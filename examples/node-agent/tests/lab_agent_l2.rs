//! L2 announcements end to end (issue 23): the agent binary on two lab nodes over one fake API
//! server, which elects the announcing node of a LoadBalancer Service by its Lease. An
//! external client on the nodes' segment, with no route for the LoadBalancer IPs (they are
//! inside the segment's prefixes, so it asks for them by ARP and NDP), reaches the Service
//! through the Lease holder; when the holder's agent stops — gracefully (SIGTERM: it
//! withdraws, then releases the Lease) or killed (SIGKILL: its Lease expires, its eBPF
//! responder, left attached, goes quiet at its liveness timeout) — the other node takes the
//! Lease over within the algorithm's bounds, and the client's neighbour entries follow its
//! gratuitous ARP / unsolicited NA with no flush and no traffic from the client.
//!
//! ```text
//!   lab namespace <lab>-u: br0 172.18.0.1/16 fd00:18::1/64
//!     └─ fake API server 172.18.0.1:<port> (a thread's socket in that namespace): Nodes,
//!        Namespaces, Pods, Services, EndpointSlices, NetworkPolicies (list + watch), Leases
//!  ───────┬───────────────────────┬──────────────────────┬──────────────────────┬──── br0
//!   node-0 eth0 172.18.0.10   node-1 eth0 172.18.0.11   external-0 (client)   external-1 (asker)
//!   dataplane-agent --kubeconfig  (the same)             follows its neighbour  ARP / NS for
//!   --l2-announcements, eBPF                             entries; TCP probes    the LB IPs:
//!    └─ pod-0-0 :8080          └─ pod-1-0 :8080                                 who answers
//!
//!   default/l2-lb: LoadBalancer 172.18.0.200, fd00:18::c8 :80 → 8080, externalTrafficPolicy
//!   Local, one endpoint per node: the pod that answers names the node the traffic entered.
//!   Lease kube-system/dataplane-l2announce-default-l2-lb: duration 3 s, renew deadline 2 s,
//!   retry period 500 ms.
//! ```
//!
//! The asker is a second external client so that its questions (and the answers) never touch
//! the client's neighbour cache: the client's entries may move only by an announcement.

mod common;

use std::collections::BTreeSet;
use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use common::agent::{Agents, Backend, Source};
use common::fake_api::{list_body, FakeApi, LeaseWrite, Reply};
use common::manifests::{self, ManifestDirs, ServiceDef, ServiceType};
use common::neighbours::who_answers;
use common::{wait_for_backend, wait_until, DEADLINE};
use dataplane_agent::l2::lease_name;
use dataplane_kube::{Kind, ObjectKey};
use dataplane_testkit::{Family, Lab, LabSpec};

/// The underlay bridge's address in the lab namespace (the lab's "router"): the fake API
/// server listens there, where the nodes reach it and nothing outside the lab can.
const BRIDGE: &str = "172.18.0.1";
/// The Service's LoadBalancer IPs: inside the segment's prefixes, routed nowhere.
const LB_IPS: [&str; 2] = ["172.18.0.200", "fd00:18::c8"];
const L2_LB: ServiceDef<'static> = ServiceDef {
    name: "l2-lb",
    cluster_ip: "10.96.0.20",
    cluster_ip_v6: Some("fd00:96::20"),
    port: 80,
    kind: ServiceType::LoadBalancer,
    node_port: Some(30090),
    local: true,
    health_check_node_port: Some(32010),
    load_balancer_ips: &LB_IPS,
    udp: false,
};
const LEASE_NAMESPACE: &str = "kube-system";
const DURATION: Duration = Duration::from_secs(3);
const RETRY: Duration = Duration::from_millis(500);
/// How long the eBPF responder keeps answering after its last liveness refresh: the agent
/// keeps it within the renew deadline (2 s here), inside its default of 3 s.
const LIVENESS: Duration = Duration::from_secs(2);
/// How long each question from the asker waits for answers.
const ASK_WINDOW: Duration = Duration::from_millis(150);
/// Slack on the late side of a bound, for a loaded machine (never on the early side).
const SLACK: Duration = Duration::from_secs(2);
const CLIENT: usize = 0;
const ASKER: usize = 1;

/// How the holder's agent stops.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Stop {
    /// SIGTERM: it withdraws its announcements, then releases its Leases.
    Graceful,
    /// SIGKILL: nothing released or withdrawn; its programs stay attached.
    Kill,
}

fn lb_ips() -> [IpAddr; 2] {
    LB_IPS.map(|ip| ip.parse().expect("an address"))
}

/// Serves the lab's cluster (Nodes, the Namespace, Pods), the Service and its two
/// EndpointSlices (pod-0-0 and pod-1-0, one per family), and no NetworkPolicy.
fn serve_cluster(api: &FakeApi, lab: &Lab) {
    let mut yaml = manifests::cluster(lab);
    yaml.push_str(&manifests::service(&L2_LB));
    for family in [Family::V4, Family::V6] {
        yaml.push_str(&manifests::endpoint_slice_of(
            lab,
            L2_LB.name,
            &[0, 1],
            None,
            family,
            false,
        ));
    }
    let documents: Vec<serde_json::Value> =
        serde_saphyr::from_multiple(&yaml).expect("the lab's manifests");
    for kind in [
        Kind::Node,
        Kind::Namespace,
        Kind::Pod,
        Kind::Service,
        Kind::EndpointSlice,
        Kind::NetworkPolicy,
    ] {
        let items: Vec<serde_json::Value> = documents
            .iter()
            .filter(|d| d["kind"].as_str() == Some(kind.name()))
            .cloned()
            .collect();
        api.lists(kind, [Reply::Json(list_body(kind, &items, "5000"))]);
    }
}

fn node_mac(lab: &Lab, node: usize) -> String {
    let n = lab.node(node);
    let out = n
        .netns
        .exec_checked(
            "cat",
            &[format!("/sys/class/net/{}/address", n.uplink)],
            None,
        )
        .expect("read the uplink's MAC");
    String::from_utf8_lossy(&out.stdout).trim().to_lowercase()
}

/// The client's neighbour entry for `ip`: its MAC, if it has one.
fn neighbour(lab: &Lab, ip: IpAddr) -> Option<String> {
    let out = lab
        .external(CLIENT)
        .netns
        .exec_checked(
            "ip",
            &["neigh", "show", "to", &ip.to_string(), "dev", "eth0"],
            None,
        )
        .expect("ip neigh show");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let mut words = text.split_whitespace();
    words
        .by_ref()
        .find(|w| *w == "lladdr")
        .and_then(|_| words.next())
        .map(str::to_lowercase)
}

/// Which MACs answer the asker's ARP request and neighbour solicitation for the LB IPs.
fn who_answers_both(lab: &Lab) -> [BTreeSet<String>; 2] {
    let asker = lab.external(ASKER);
    lb_ips().map(|ip| {
        let source = asker.address(Family::of(&ip)).expect("a dual-stack asker");
        who_answers(&asker.netns, &asker.interface, source, ip, ASK_WINDOW)
            .unwrap_or_else(|e| panic!("asking for {ip}: {e}"))
    })
}

/// The node (index) whose name `holder` is.
fn node_index(lab: &Lab, holder: &str) -> usize {
    lab.nodes()
        .iter()
        .position(|n| n.name == holder)
        .unwrap_or_else(|| panic!("the lease holder {holder:?} is no lab node"))
}

/// One round of the asker's questions during the failover.
#[derive(Debug)]
struct Asked {
    /// When the questions went out (answers may come a window later).
    at: Instant,
    answers: [BTreeSet<String>; 2],
}

/// The lab, the fake API server and the agents. Fields drop in order: the agents stop (and
/// release their Leases over the API) first, the lab's namespaces go last.
struct L2Lab {
    agents: Agents,
    _dirs: ManifestDirs,
    api: FakeApi,
    _runtime: tokio::runtime::Runtime,
    lab: Lab,
    lease: String,
    macs: [String; 2],
}

impl L2Lab {
    /// The lab, the API server on its bridge, and an agent per node over it, synced once.
    fn start() -> Self {
        let lab = Lab::new(LabSpec {
            nodes: 2,
            pods_per_node: 1,
            external_clients: 2,
            ipv6: true,
        })
        .expect("lab");
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .expect("a runtime for the fake API server");
        let listener = lab
            .underlay()
            .run(|| std::net::TcpListener::bind((BRIDGE, 0)))
            .expect("enter the lab namespace")
            .expect("bind the fake API server on the bridge");
        let api = {
            let _in_runtime = runtime.enter();
            FakeApi::serve(listener)
        };
        serve_cluster(&api, &lab);
        let dirs = ManifestDirs::new(0);
        let kubeconfig = api.kubeconfig(dirs.root(), None);
        let mut agents = Agents::start_from(
            &lab,
            Backend::Ebpf,
            &Source::Kubeconfig(&kubeconfig),
            dirs.root(),
            &[
                "--l2-announcements",
                "--l2-lease-duration=3s",
                "--l2-lease-renew-deadline=2s",
                "--l2-lease-retry-period=500ms",
            ],
        );
        agents.wait_all_synced();
        let macs = [node_mac(&lab, 0), node_mac(&lab, 1)];
        assert_ne!(macs[0], macs[1]);
        Self {
            agents,
            _dirs: dirs,
            api,
            _runtime: runtime,
            lab,
            lease: lease_name(&ObjectKey::namespaced(Kind::Service, "default", L2_LB.name)),
            macs,
        }
    }

    fn holder(&self) -> Option<String> {
        self.api.holder(LEASE_NAMESPACE, &self.lease)
    }

    /// Waits for the client's TCP connections to `ip` to be answered by the pod of `node`
    /// (`externalTrafficPolicy: Local`: they entered there).
    fn reached_through(&self, node: usize) {
        for ip in lb_ips() {
            wait_for_backend(
                &self.lab.external(CLIENT).netns,
                SocketAddr::new(ip, L2_LB.port),
                &format!("pod-{node}-0"),
                3,
            );
        }
    }

    /// Asserts that the asker gets answers for the LB IPs from `node` alone: asked again
    /// while nobody answers (an answer lost on a loaded machine), failed at once when
    /// another node answers.
    fn only_answers(&self, node: usize) {
        let mac = BTreeSet::from([self.macs[node].clone()]);
        wait_until(&format!("answers from node-{node}"), || {
            let answers = who_answers_both(&self.lab);
            for (ip, answered) in lb_ips().iter().zip(&answers) {
                assert!(
                    answered.is_subset(&mac),
                    "{ip}: only node-{node} ({mac:?}) may answer: {answered:?}"
                );
            }
            if answers.iter().all(|a| *a == mac) {
                Ok(())
            } else {
                Err(format!("{answers:?}"))
            }
        });
    }

    /// Step 1: exactly one node holds the Lease; the client (no route) resolves the LB IPs to
    /// its MAC and reaches the Service through it; only it answers. Returns it.
    fn one_holder_serves(&self) -> usize {
        for ip in lb_ips() {
            let route = self
                .lab
                .external(CLIENT)
                .netns
                .exec_checked("ip", &["route", "get", &ip.to_string()], None)
                .expect("ip route get");
            let route = String::from_utf8_lossy(&route.stdout).into_owned();
            assert!(
                !route.contains(" via "),
                "the client has no route for {ip}, only the on-link prefix: {route}"
            );
        }
        let holder = wait_until("a holder of the lease", || {
            self.holder()
                .ok_or_else(|| format!("{:?}", self.api.lease(LEASE_NAMESPACE, &self.lease)))
        });
        let h = node_index(&self.lab, &holder);
        self.reached_through(h);
        for ip in lb_ips() {
            assert_eq!(
                neighbour(&self.lab, ip).as_deref(),
                Some(self.macs[h].as_str()),
                "{ip}: resolved to the holder's (node-{h}) MAC"
            );
        }
        self.only_answers(h);
        let other = self.lab.node(1 - h).name.as_str();
        let won_by_other: Vec<LeaseWrite> = self
            .api
            .lease_writes()
            .into_iter()
            .filter(|w| w.holder.as_deref() == Some(other) && w.status < 300)
            .collect();
        assert!(
            won_by_other.is_empty(),
            "{other} wrote the lease: {won_by_other:?}"
        );
        assert_eq!(self.holder(), Some(holder));
        h
    }

    /// Step 2, after the holder stopped at `stopped`: the client sends nothing (its entries
    /// can move only by an announcement) while the asker asks, until node `other` holds the
    /// Lease, the client's entries show its MAC, and (killed) the dead node's liveness has
    /// surely lapsed. Returns the rounds asked and when the entries moved.
    fn watch_failover(&self, stop: Stop, stopped: Instant, other: usize) -> (Vec<Asked>, Duration) {
        let new_holder = self.lab.node(other).name.as_str();
        let mut asked: Vec<Asked> = Vec::new();
        let mut moved_at = None;
        let deadline = Instant::now() + DEADLINE;
        loop {
            let at = Instant::now();
            let answers = who_answers_both(&self.lab);
            asked.push(Asked { at, answers });
            let held = self.holder().as_deref() == Some(new_holder);
            let moved = lb_ips()
                .iter()
                .all(|ip| neighbour(&self.lab, *ip).as_deref() == Some(self.macs[other].as_str()));
            if moved && moved_at.is_none() {
                moved_at = Some(stopped.elapsed());
            }
            let lapsed = stop == Stop::Graceful || stopped.elapsed() > LIVENESS + SLACK;
            if let (true, Some(moved_at), true) = (held, moved_at, lapsed) {
                return (asked, moved_at);
            }
            assert!(
                Instant::now() < deadline,
                "no takeover by {new_holder} within {DEADLINE:?}: lease {:?}, client's entries {:?}, last answers {:?}",
                self.api.lease(LEASE_NAMESPACE, &self.lease),
                lb_ips().map(|ip| neighbour(&self.lab, ip)),
                asked.last()
            );
        }
    }

    /// The takeover by node `other` after the holder `h` stopped at `stopped`, against the
    /// algorithm's bounds; returns how long it took.
    fn takeover_bounds(&self, stop: Stop, stopped: Instant, h: usize, other: usize) -> Duration {
        let writes = self.api.lease_writes();
        let new_holder = self.lab.node(other).name.as_str();
        let taken = writes
            .iter()
            .find(|w| w.at > stopped && w.status < 300 && w.holder.as_deref() == Some(new_holder))
            .expect("the other node's write that took the lease");
        let took = taken.at - stopped;
        match stop {
            Stop::Graceful => {
                let released = writes.iter().find(|w| {
                    w.at > stopped && w.at < taken.at && w.status == 200 && w.holder.is_none()
                });
                assert!(
                    released.is_some(),
                    "node-{h} released the lease before node-{other} took it: {writes:?}"
                );
                assert!(
                    took < DURATION,
                    "a released lease is taken at the next retry, not at expiry: {took:?}"
                );
            }
            Stop::Kill => {
                // The other node saw the last renewal at most a retry period before the
                // kill, and waits a lease duration from then.
                assert!(
                    took + RETRY * 2 >= DURATION,
                    "taken over after {took:?}, before the lease could expire"
                );
                assert!(
                    took <= DURATION + RETRY * 3 + SLACK,
                    "taken over only after {took:?}"
                );
            }
        }
        took
    }
}

/// Who answered during the failover: never two nodes at once, and the stopped node `h`
/// not after `quiet_from`.
fn check_answers(l2: &L2Lab, asked: &[Asked], stopped: Instant, quiet_from: Instant, h: usize) {
    for round in asked {
        for (ip, answered) in lb_ips().iter().zip(&round.answers) {
            assert!(
                answered.len() <= 1,
                "{ip}: two announcers at {:?} after the stop: {answered:?}",
                round.at - stopped
            );
            if round.at > quiet_from {
                assert!(
                    !answered.contains(&l2.macs[h]),
                    "{ip}: node-{h} still answered {:?} after its agent stopped",
                    round.at - stopped
                );
            }
        }
    }
}

fn takeover(stop: Stop) {
    let _serial = common::serial();
    let mut l2 = L2Lab::start();

    // 1. Exactly one node holds the Lease and serves.
    let h = l2.one_holder_serves();
    let other = 1 - h;

    // 2. Its agent stops.
    let stopped = Instant::now();
    match stop {
        Stop::Graceful => {
            let status = l2.agents.terminate(h);
            assert!(status.success(), "node-{h}'s agent exited with {status}");
        }
        Stop::Kill => l2.agents.kill(h),
    }
    let exited = Instant::now();
    let (asked, moved_at) = l2.watch_failover(stop, stopped, other);
    l2.agents.assert_running(other);
    let took = l2.takeover_bounds(stop, stopped, h, other);
    // Graceful: quiet once its agent withdrew and exited; killed: once its liveness lapsed.
    let quiet_from = match stop {
        Stop::Graceful => exited,
        Stop::Kill => stopped + LIVENESS + Duration::from_millis(500),
    };
    check_answers(&l2, &asked, stopped, quiet_from, h);
    // Asked again now that the client's entries have moved (the last round may have come
    // before the new holder's first sync).
    l2.only_answers(other);
    let answered_by = |node: usize| -> Vec<Duration> {
        asked
            .iter()
            .filter(|r| r.answers.iter().any(|a| a.contains(&l2.macs[node])))
            .map(|r| r.at - stopped)
            .collect()
    };
    eprintln!(
        "{stop:?}: lease taken by node-{other} {took:?} after the stop; node-{h} last answered \
         at {:?}, node-{other} first at {:?}; the client's entries moved by {moved_at:?} ({} \
         rounds asked)",
        answered_by(h).last(),
        answered_by(other).first(),
        asked.len()
    );

    // Traffic flows again, through the new holder.
    l2.reached_through(other);
    l2.agents.assert_running(other);
}

#[test]
fn a_graceful_stop_hands_the_lb_ip_to_the_other_node() {
    if dataplane_testkit::require_root("a_graceful_stop_hands_the_lb_ip_to_the_other_node") {
        takeover(Stop::Graceful);
    }
}

#[test]
fn a_killed_holder_loses_the_lb_ip_when_its_lease_expires() {
    if dataplane_testkit::require_root("a_killed_holder_loses_the_lb_ip_when_its_lease_expires") {
        takeover(Stop::Kill);
    }
}
