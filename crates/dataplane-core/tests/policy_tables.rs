//! The policy compiler (`compile`, `CompiledPolicy::update`): incremental updates give what a
//! full compile gives, with the element delta between the two compiles, over random sequences
//! of pod, endpoint (labels, named ports, addresses, rescheduling between this node and
//! another), namespace and policy changes; peer sets are shared by selector and keep
//! their ids. That the tables answer as the reference model does is checked on every case of
//! `tests/policy.rs`.

use std::collections::BTreeMap;
use std::net::IpAddr;

use dataplane_core::policy_tables::Peer;
use dataplane_core::{
    compile, diff, validate, DesiredState, Endpoint, IpBlock, LabelSelector, NamedPort, Namespace,
    Node, ObjectName, PeerPod, Policy, PolicyPeer, PolicyPort, PolicyRule, PolicyType, PortRef,
    Protocol,
};
use proptest::prelude::*;

const NAMESPACES: [&str; 2] = ["x", "y"];
const LABELS: [Option<&str>; 3] = [Some("web"), Some("db"), None];
/// `(namespace, name, local)`: two local endpoints and three peer pods.
const PODS: [(&str, &str, bool); 5] = [
    ("x", "a", true),
    ("y", "a", true),
    ("x", "b", false),
    ("y", "b", false),
    ("x", "c", false),
];

fn ip(i: usize) -> IpAddr {
    format!("10.0.{i}.1").parse().expect("test address")
}

fn selector(key: &str, value: &str) -> LabelSelector {
    LabelSelector {
        match_labels: BTreeMap::from([(key.to_owned(), value.to_owned())]),
        match_expressions: Vec::new(),
    }
}

/// One pod of the universe as the state holds it.
#[derive(Debug, Clone, Copy)]
struct PodSpec {
    present: bool,
    label: usize,
    /// `http` on TCP 80, on TCP 8080, or none.
    http: usize,
    /// On another address than its first one.
    readdressed: bool,
    /// On the other side: a peer pod instead of a local endpoint or the reverse (the same pod
    /// rescheduled).
    moved: bool,
}

/// A policy of the universe, from indices into small choices.
#[derive(Debug, Clone, Copy)]
struct PolicySpec {
    namespace: usize,
    selects_web: bool,
    types: usize,
    peer: usize,
    ports: usize,
}

#[derive(Debug, Clone)]
struct Universe {
    pods: [PodSpec; 5],
    namespace_labels: [usize; 2],
    policies: [Option<PolicySpec>; 4],
}

impl Universe {
    fn state(&self) -> DesiredState {
        let mut state =
            DesiredState::new(Node::new("node-a", ["172.18.0.10".parse().expect("ip")]));
        for (i, ns) in NAMESPACES.iter().enumerate() {
            let mut namespace = Namespace::new(*ns);
            if let Some(l) = LABELS[self.namespace_labels[i]] {
                namespace = namespace.with_label("team", l);
            }
            state = state.with_namespace(namespace);
        }
        for (i, ((ns, name, local), spec)) in PODS.iter().zip(&self.pods).enumerate() {
            if !spec.present {
                continue;
            }
            let named: Vec<NamedPort> = [80, 8080]
                .get(spec.http)
                .map(|p| NamedPort::new("http", Protocol::Tcp, *p))
                .into_iter()
                .collect();
            let object = ObjectName::new(*ns, *name);
            let address = ip(i + 10 * usize::from(spec.readdressed));
            // A moved pod is on the other side: a local one elsewhere, a peer one here.
            if *local == spec.moved {
                let mut p = PeerPod::new(object, [address]);
                p.named_ports = named;
                if let Some(l) = LABELS[spec.label] {
                    p = p.with_label("app", l);
                }
                state = state.with_pod(p);
            } else {
                let mut e = Endpoint::new(object, format!("veth{i}"), [address]);
                e.named_ports = named;
                if let Some(l) = LABELS[spec.label] {
                    e = e.with_label("app", l);
                }
                state = state.with_endpoint(e);
            }
        }
        for (i, spec) in self.policies.iter().enumerate() {
            if let Some(spec) = spec {
                state = state.with_policy(policy(i, spec));
            }
        }
        state
    }
}

fn policy(slot: usize, spec: &PolicySpec) -> Policy {
    let peers = match spec.peer {
        0 => vec![],
        1 => vec![PolicyPeer {
            pod_selector: Some(selector("app", "db")),
            ..PolicyPeer::default()
        }],
        2 => vec![PolicyPeer {
            namespace_selector: Some(selector("team", "web")),
            ..PolicyPeer::default()
        }],
        3 => vec![PolicyPeer {
            namespace_selector: Some(selector("team", "db")),
            pod_selector: Some(selector("app", "web")),
            ..PolicyPeer::default()
        }],
        _ => vec![PolicyPeer {
            ip_block: Some(IpBlock {
                cidr: "10.0.0.0/16".parse().expect("cidr"),
                except: vec!["10.0.2.0/24".parse().expect("cidr")],
            }),
            ..PolicyPeer::default()
        }],
    };
    let port = |port, end_port| PolicyPort {
        protocol: Protocol::Tcp,
        port,
        end_port,
    };
    let ports = match spec.ports {
        0 => vec![],
        1 => vec![port(Some(PortRef::Number(80)), None)],
        2 => vec![port(Some(PortRef::Name("http".into())), None)],
        _ => vec![port(Some(PortRef::Number(80)), Some(8080))],
    };
    let rules = vec![PolicyRule { peers, ports }];
    let types = [
        vec![PolicyType::Ingress],
        vec![PolicyType::Egress],
        vec![PolicyType::Ingress, PolicyType::Egress],
    ][spec.types]
        .clone();
    Policy {
        name: ObjectName::new(NAMESPACES[spec.namespace], format!("p{slot}")),
        pod_selector: if spec.selects_web {
            selector("app", "web")
        } else {
            LabelSelector::default()
        },
        policy_types: types,
        ingress: rules.clone(),
        egress: rules,
    }
}

fn pod_spec() -> impl Strategy<Value = PodSpec> {
    (
        any::<bool>(),
        0..3usize,
        0..3usize,
        any::<bool>(),
        any::<bool>(),
    )
        .prop_map(|(present, label, http, readdressed, moved)| PodSpec {
            present,
            label,
            http,
            readdressed,
            moved,
        })
}

fn policy_spec() -> impl Strategy<Value = Option<PolicySpec>> {
    proptest::option::of(
        (0..2usize, any::<bool>(), 0..3usize, 0..5usize, 0..4usize).prop_map(
            |(namespace, selects_web, types, peer, ports)| PolicySpec {
                namespace,
                selects_web,
                types,
                peer,
                ports,
            },
        ),
    )
}

fn universe() -> impl Strategy<Value = Universe> {
    (
        proptest::array::uniform5(pod_spec()),
        proptest::array::uniform2(0..3usize),
        proptest::array::uniform4(policy_spec()),
    )
        .prop_map(|(pods, namespace_labels, policies)| Universe {
            pods,
            namespace_labels,
            policies,
        })
}

/// One change to the universe.
#[derive(Debug, Clone)]
enum Step {
    Pod(usize, PodSpec),
    NamespaceLabel(usize, usize),
    Policy(usize, Option<PolicySpec>),
}

fn step() -> impl Strategy<Value = Step> {
    prop_oneof![
        (0..5usize, pod_spec()).prop_map(|(i, p)| Step::Pod(i, p)),
        (0..2usize, 0..3usize).prop_map(|(i, l)| Step::NamespaceLabel(i, l)),
        (0..4usize, policy_spec()).prop_map(|(i, p)| Step::Policy(i, p)),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    /// After every change, the incrementally updated tables equal a full compile of the new
    /// state, and the delta reported is the one between the two full compiles.
    #[test]
    fn incremental_updates_equal_full_compiles(
        start in universe(),
        steps in proptest::collection::vec(step(), 1..12),
    ) {
        let mut universe = start;
        let mut state = universe.state();
        validate(&state).expect("valid state");
        let mut compiled = compile(&state);
        for step in steps {
            match step {
                Step::Pod(i, p) => universe.pods[i] = p,
                Step::NamespaceLabel(i, l) => universe.namespace_labels[i] = l,
                Step::Policy(i, p) => universe.policies[i] = p,
            }
            let after = universe.state();
            validate(&after).expect("valid state");
            let changes = diff(&state, &after);
            let full = compile(&after);
            let expected = compile(&state).delta(&full);
            let delta = compiled.update(&after, &changes);
            prop_assert_eq!(&compiled, &full, "after {:?}", changes);
            prop_assert_eq!(delta, expected);
            state = after;
        }
    }
}

/// Every pod present, labelled `app=db`, serving `http` on 80; no policies.
fn all_db() -> Universe {
    Universe {
        pods: [PodSpec {
            present: true,
            label: 1,
            http: 0,
            readdressed: false,
            moved: false,
        }; 5],
        namespace_labels: [0, 1],
        policies: [None; 4],
    }
}

/// A thousand policies with the same peer share one set, whose id does not depend on the
/// policies: a backend updates it in place.
#[test]
fn policies_with_the_same_peer_share_one_set_with_a_stable_id() {
    let universe = all_db();
    let mut state = universe.state();
    let spec = PolicySpec {
        namespace: 0,
        selects_web: false,
        types: 0,
        peer: 1,
        ports: 1,
    };
    for i in 0..1000 {
        state = state.with_policy(policy(i, &spec));
    }
    let many = compile(&state);
    assert_eq!(many.sets.len(), 1, "{:?}", many.sets.keys());
    let (id, set) = many.sets.iter().next().expect("one set");
    // app=db pods of namespace x (the policy's): x/a (local) and x/b, x/c (peers).
    assert_eq!(set.members, [ip(0), ip(2), ip(4)].into());
    let tables = &many.endpoints[&ObjectName::new("x", "a")];
    assert!(tables.ingress.isolated && !tables.egress.isolated);
    assert_eq!(tables.ingress.entries.len(), 1);
    assert!(tables
        .ingress
        .entries
        .iter()
        .all(|e| e.peer == Peer::Set(id.clone())));
    state.policies.truncate(1);
    assert_eq!(compile(&state).sets.keys().collect::<Vec<_>>(), [id]);
}

/// An egress named port resolves on each destination: one selector whose pods serve `http`
/// on two numbers splits into one set per number.
#[test]
fn egress_named_ports_split_a_peer_set_by_port() {
    let mut universe = all_db();
    universe.pods[4].http = 1;
    universe.policies[0] = Some(PolicySpec {
        namespace: 0,
        selects_web: false,
        types: 1,
        peer: 1,
        ports: 2,
    });
    let compiled = compile(&universe.state());
    let egress = &compiled.endpoints[&ObjectName::new("x", "a")].egress;
    let by_port: BTreeMap<(u16, u16), _> = egress
        .entries
        .iter()
        .map(|e| match &e.peer {
            Peer::Set(id) => (e.ports, compiled.sets[id].members.clone()),
            other => panic!("a named port's peer is a set, not {other:?}"),
        })
        .collect();
    assert_eq!(
        by_port,
        BTreeMap::from([
            ((80, 80), [ip(0), ip(2)].into()),
            ((8080, 8080), [ip(4)].into()),
        ])
    );
}

/// ipBlocks of several policies merge in one longest-prefix table: an `except` of one block
/// shadows it only for that block's ports, another block containing the except still allows.
#[test]
fn ip_blocks_merge_in_one_longest_prefix_table() {
    let block = |cidr: &str, except: &[&str], port: u16| PolicyRule {
        peers: vec![PolicyPeer {
            ip_block: Some(IpBlock {
                cidr: cidr.parse().expect("cidr"),
                except: except.iter().map(|e| e.parse().expect("cidr")).collect(),
            }),
            ..PolicyPeer::default()
        }],
        ports: vec![PolicyPort {
            protocol: Protocol::Tcp,
            port: Some(PortRef::Number(port)),
            end_port: None,
        }],
    };
    let mut state = all_db().state();
    for (name, rule) in [
        ("wide", block("10.0.0.0/16", &["10.0.2.0/24"], 80)),
        ("narrow", block("10.0.2.0/23", &[], 443)),
    ] {
        state = state.with_policy(Policy {
            name: ObjectName::new("x", name),
            pod_selector: LabelSelector::default(),
            policy_types: vec![PolicyType::Egress],
            ingress: Vec::new(),
            egress: vec![rule],
        });
    }
    validate(&state).expect("valid state");
    let compiled = compile(&state);
    let x_a = ObjectName::new("x", "a");
    let table = compiled.endpoints[&x_a].egress.block_table();
    let tcp = |port| (Some(Protocol::Tcp), (port, port));
    assert_eq!(
        table,
        BTreeMap::from([
            ("10.0.0.0/16".parse().expect("cidr"), [tcp(80)].into()),
            (
                "10.0.2.0/23".parse().expect("cidr"),
                [tcp(80), tcp(443)].into()
            ),
            ("10.0.2.0/24".parse().expect("cidr"), [tcp(443)].into()),
        ])
    );
    for peer in ["10.0.1.1", "10.0.2.1", "10.0.3.1", "10.1.0.1"] {
        let peer: IpAddr = peer.parse().expect("ip");
        for port in [80, 443] {
            let reference =
                dataplane_core::policy_verdict(&state, ip(0), peer, Protocol::Tcp, port);
            assert_eq!(
                compiled.allows(&x_a, PolicyType::Egress, peer, Protocol::Tcp, port),
                Some(reference.egress.allows()),
                "{peer} TCP/{port}"
            );
        }
    }
}
