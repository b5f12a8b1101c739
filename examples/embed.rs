//! The smallest embedding: build a node's desired state in code, let the library pick a
//! dataplane, program it, read it back, change one backend, sync again (incrementally), and
//! remove everything.
//!
//! Run as root: `cargo run --example embed --features ebpf,nft`. It programs a network
//! namespace of its own (`dpembed-PID`, with a veth pair as the node's uplink), never the
//! machine's, and deletes it at the end. Without root (or without a dataplane compiled in)
//! it validates the state, says why it skips the kernel part, and stops there.
//!
//! `tests/examples.rs` runs [`run`] as a test.

use std::error::Error;
use std::net::IpAddr;
use std::process::Command;

use dataplane::{
    open, validate, ApplyReport, Backend, DataplaneKind, DesiredState, Node, ObjectName,
    ObservedFrontend, OpenError, Options, Selection, Service, ServicePort,
};
use dataplane_testkit::NetNs;

/// What the example did: the kernel part, or why it skipped it.
#[derive(Debug)]
#[allow(clippy::large_enum_variant)] // one value per run: its size does not matter
pub enum Outcome {
    /// Not run: why.
    Skipped(String),
    /// A dataplane was programmed in the example's namespace.
    Programmed {
        /// The dataplane `auto` chose.
        kind: DataplaneKind,
        /// The first sync (full).
        first: ApplyReport,
        /// What was programmed after it.
        observed_first: Vec<ObservedFrontend>,
        /// The sync that added a backend (incremental).
        second: ApplyReport,
        /// What was programmed after it.
        observed_second: Vec<ObservedFrontend>,
        /// The namespace it programmed (deleted by now).
        netns: String,
    },
}

fn main() -> Result<(), Box<dyn Error>> {
    run().map(|_| ())
}

/// The node: its addresses, CIDRs and uplink.
fn node() -> Result<Node, Box<dyn Error>> {
    // Kubernetes' defaults where it has them (NodePort range, MTU, masquerade); uplink eth0.
    Ok(Node::new("node-a", ["172.18.0.10".parse()?])
        .with_pod_cidrs(["10.244.0.0/24".parse()?])
        .with_cluster_cidrs(["10.244.0.0/16".parse()?])
        .with_service_cidrs(["10.96.0.0/12".parse()?]))
}

/// One ClusterIP service, `default/web`, on port 80 with one backend.
fn desired() -> Result<DesiredState, Box<dyn Error>> {
    let web = Service::cluster_ip(
        ObjectName::new("default", "web"),
        "10.96.0.10".parse()?,
        [ServicePort::tcp(80, 8080).named("http")],
    )
    .with_backend(Backend::new("10.244.0.11".parse()?));
    Ok(DesiredState::new(node()?).with_service(web))
}

/// Builds the state, and programs it when it can (root, a dataplane compiled in).
pub fn run() -> Result<Outcome, Box<dyn Error>> {
    let state = desired()?;
    // The dataplane validates too; doing it first gives the error before touching anything.
    validate(&state)?;
    println!(
        "desired: {} service(s) on node {}",
        state.services.len(),
        state.node.name
    );

    if !nix::unistd::geteuid().is_root() {
        let why = "programming a dataplane needs root (CAP_NET_ADMIN, CAP_BPF)".to_owned();
        println!("skipping the kernel part: {why}");
        return Ok(Outcome::Skipped(why));
    }

    let netns = Namespace::create(&format!("dpembed-{}", std::process::id()))?;
    #[allow(unused_mut)] // the eBPF pin directory only exists with the `ebpf` feature
    let mut options = Options::in_netns(netns.ns.path());
    #[cfg(feature = "ebpf")]
    {
        // Our own pinned maps, not those of a dataplane this machine may run.
        options.ebpf.pin_dir = format!("/sys/fs/bpf/dpembed-{}", std::process::id()).into();
    }
    let opened = match open(Selection::Auto, &options) {
        Ok(opened) => opened,
        Err(e @ OpenError::NoneUsable { .. }) => {
            println!("skipping the kernel part: {e}");
            return Ok(Outcome::Skipped(e.to_string()));
        }
        Err(e) => return Err(e.into()),
    };
    println!("dataplane: {} ({})", opened.kind, opened.reason);
    let mut dp = opened.dataplane;

    let result = program(&mut dp, &state);
    // Remove what it installed (programs, maps, rules) even when a step failed.
    let reset = dp.reset();
    drop(dp);
    let name = netns.ns.name().to_owned();
    drop(netns);
    let (first, observed_first, second, observed_second) = result?;
    reset?;
    println!("reset: everything the dataplane installed is removed");
    Ok(Outcome::Programmed {
        kind: opened.kind,
        first,
        observed_first,
        second,
        observed_second,
        netns: name,
    })
}

type Programmed = (
    ApplyReport,
    Vec<ObservedFrontend>,
    ApplyReport,
    Vec<ObservedFrontend>,
);

fn program(
    dp: &mut dataplane::BoxDataplane,
    state: &DesiredState,
) -> Result<Programmed, Box<dyn Error>> {
    // No previous state: a full apply.
    let first = dp.sync(None, state)?;
    println!(
        "first sync: full={} services changed={}",
        first.full_sync, first.services_changed
    );
    let observed_first = dp.observe()?.frontends;
    print_frontends(&observed_first);

    // A second backend for `default/web`: the dataplane gets only that change.
    let mut next = state.clone();
    let second_backend: IpAddr = "10.244.0.12".parse()?;
    next.services[0].backends.push(Backend::new(second_backend));
    let second = dp.sync(Some(state), &next)?;
    println!(
        "second sync: full={} services changed={}",
        second.full_sync, second.services_changed
    );
    let observed_second = dp.observe()?.frontends;
    print_frontends(&observed_second);
    Ok((first, observed_first, second, observed_second))
}

fn print_frontends(frontends: &[ObservedFrontend]) {
    for f in frontends {
        let backends: Vec<String> = f.backends.iter().map(ToString::to_string).collect();
        println!("  {} {} -> {}", f.protocol, f.address, backends.join(", "));
    }
}

/// A network namespace of the example's own, with a veth pair as the node's uplink
/// (`eth0`, 172.18.0.10/24); deleted on drop.
struct Namespace {
    ns: NetNs,
}

impl Namespace {
    fn create(name: &str) -> Result<Self, Box<dyn Error>> {
        let status = Command::new("ip").args(["netns", "add", name]).status()?;
        if !status.success() {
            return Err(format!("`ip netns add {name}` failed: {status}").into());
        }
        // From here on, drop deletes it.
        let namespace = Namespace {
            ns: NetNs::new(name),
        };
        namespace.ns.ip_batch(&[
            "link set lo up".to_owned(),
            "link add eth0 type veth peer name eth0-peer".to_owned(),
            "addr add 172.18.0.10/24 dev eth0".to_owned(),
            "link set eth0 up".to_owned(),
            "link set eth0-peer up".to_owned(),
        ])?;
        Ok(namespace)
    }
}

impl Drop for Namespace {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["netns", "del", self.ns.name()])
            .status();
    }
}
