//! A rejected apply leaves the kernel as it was, on both netfilter backends (issue 21,
//! item 4): after a validation error, a capacity error, a tool that dies, and a transaction
//! the kernel refuses in its last operation, the ruleset (`nft -s list table inet dataplane`,
//! or `iptables-save` and `ip6tables-save` without counters) and `observe()` are as before,
//! and the old service still answers.
//!
//! ```text
//!   pod-0-0 ──▶ 10.96.0.10:80 (web) ──▶ pod-0-1         served before and after
//!   pod-0-0 ──▶ 10.96.0.11:80 (new) ──▶ pod-0-1         only in the refused states
//! ```
//!
//! The iptables backend writes IPv4 and IPv6 with two tools (`iptables-restore`, then
//! `ip6tables-restore`); `the_second_family_failing_after_the_first_committed` shows that a
//! failure of the second leaves the first committed (ignored until that is fixed; see the
//! eBPF README's "Faults" table).

mod common;

use std::net::SocketAddr;
use std::os::unix::fs::PermissionsExt;
use std::path::PathBuf;
use std::time::Duration;

use dataplane_core::{
    Dataplane, Error, IpFamily, LabelSelector, ObjectName, ObservedState, Policy, PolicyType,
    Protocol, Service, ServicePort, ValidationError,
};
use dataplane_iptables::{IptablesDataplane, NetfilterConfig, NftablesDataplane};
use dataplane_testkit::{probe, require_root, Lab, LabSpec, ProbeOutcome, SERVER_PORT};

const WEB: &str = "10.96.0.10";
const NEW: &str = "10.96.0.11";
const NEW6: &str = "fd00:96::11";
const PROBE_TIMEOUT: Duration = Duration::from_secs(3);

#[derive(Clone, Copy, PartialEq, Eq)]
enum Flavour {
    Nftables,
    Iptables,
}

fn lab() -> Lab {
    Lab::new(LabSpec {
        nodes: 1,
        pods_per_node: 2,
        external_clients: 0,
        ipv6: true,
    })
    .expect("lab")
}

fn service(lab: &Lab, name: &str, vip: &str, family: IpFamily) -> Service {
    let mut s = Service::new(ObjectName::new("default", name));
    s.cluster_ips = vec![vip.parse().unwrap()];
    s.ports = vec![ServicePort {
        name: "http".to_owned(),
        protocol: Protocol::Tcp,
        port: 80,
        target_port: SERVER_PORT,
        node_port: None,
    }];
    s.backends = vec![lab.backend(1, family).expect("lab backend")];
    s
}

/// A policy isolating every pod of `default` for ingress, allowing TCP 8080 from the pods
/// labelled `app=pod-0-0`: one peer set (an ipset for iptables) and a few elements.
fn policy() -> Policy {
    Policy {
        name: ObjectName::new("default", "allow-client"),
        pod_selector: LabelSelector::default(),
        policy_types: vec![PolicyType::Ingress],
        ingress: vec![common::policy::rule(
            vec![common::policy::pods(&[("app", "pod-0-0")])],
            vec![common::policy::port(Protocol::Tcp, SERVER_PORT, None)],
        )],
        egress: Vec::new(),
    }
}

/// The kernel state the flavour programs, as text: our nftables table, or both families'
/// iptables-save without counters and comments (timestamps).
fn ruleset(lab: &Lab, flavour: Flavour) -> String {
    let run = |tool: &str, args: &[&str]| {
        let out = lab.node(0).netns.exec(tool, args).expect("tool runs");
        assert!(out.status.success(), "{tool} {args:?}");
        String::from_utf8(out.stdout).unwrap()
    };
    match flavour {
        Flavour::Nftables => run("nft", &["-s", "list", "table", "inet", "dataplane"]),
        Flavour::Iptables => ["iptables-save", "ip6tables-save"]
            .into_iter()
            .flat_map(|tool| {
                run(tool, &[])
                    .lines()
                    .filter(|l| !l.starts_with('#'))
                    .map(|l| l.split(" [").next().unwrap_or(l).to_owned())
                    .collect::<Vec<_>>()
            })
            .collect::<Vec<_>>()
            .join("\n"),
    }
}

fn answered_by(lab: &Lab, vip: &str) -> Option<String> {
    let dst = SocketAddr::new(vip.parse().unwrap(), 80);
    match probe(&lab.pod(0).netns, dst, Protocol::Tcp, PROBE_TIMEOUT).expect("probe runs") {
        ProbeOutcome::Answered { backend, .. } => Some(backend),
        _ => None,
    }
}

/// A directory with a tool `name` that reads its input and fails, as a tool that dies
/// halfway would (except for `--test`), and `<name without -restore>-save` (read before any
/// write) as the real one.
struct FailingTool(PathBuf);

impl FailingTool {
    fn new(name: &str) -> FailingTool {
        let dir = PathBuf::from(format!(
            "/tmp/dp-rejected-{}-{}",
            std::process::id(),
            // (not the tool's name: the save tool's path is the restore tool's with
            // "-restore" replaced)
            name.replace("-restore", "")
        ));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let tool = dir.join(name);
        // A check (`--test`) writes nothing: the real tool answers it, so that the failure
        // comes where a commit would.
        let real = which(name);
        std::fs::write(
            &tool,
            format!(
                "#!/bin/sh\nfor a in \"$@\"; do [ \"$a\" = --test ] && exec {} \"$@\"; done\n\
                 cat >/dev/null\necho 'injected failure' >&2\nexit 1\n",
                real.display()
            ),
        )
        .unwrap();
        std::fs::set_permissions(&tool, std::fs::Permissions::from_mode(0o755)).unwrap();
        if let Some(base) = name.strip_suffix("-restore") {
            let real = which(&format!("{base}-save"));
            std::os::unix::fs::symlink(real, dir.join(format!("{base}-save"))).unwrap();
        }
        FailingTool(dir)
    }

    fn path(&self, name: &str) -> PathBuf {
        self.0.join(name)
    }
}

impl Drop for FailingTool {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn which(tool: &str) -> PathBuf {
    std::env::var_os("PATH")
        .into_iter()
        .flat_map(|p| std::env::split_paths(&p).collect::<Vec<_>>())
        .map(|d| d.join(tool))
        .find(|p| p.exists())
        .unwrap_or_else(|| panic!("{tool} not on PATH"))
}

/// Either backend, with its test hook.
enum Backend {
    Nftables(NftablesDataplane),
    Iptables(IptablesDataplane),
}

impl Backend {
    fn new(lab: &Lab, flavour: Flavour, tweak: impl FnOnce(&mut NetfilterConfig)) -> Backend {
        let netns = Some(lab.node(0).netns.path().to_owned());
        match flavour {
            Flavour::Nftables => {
                let mut c = NetfilterConfig::nftables(netns);
                tweak(&mut c);
                Backend::Nftables(NftablesDataplane::new(c))
            }
            Flavour::Iptables => {
                let mut c = NetfilterConfig::iptables(netns);
                tweak(&mut c);
                Backend::Iptables(IptablesDataplane::new(c))
            }
        }
    }

    fn dp(&mut self) -> &mut dyn Dataplane {
        match self {
            Backend::Nftables(dp) => dp,
            Backend::Iptables(dp) => dp,
        }
    }

    fn set_fail_transactions(&mut self, fail: bool) {
        match self {
            Backend::Nftables(dp) => dp.set_fail_transactions(fail),
            Backend::Iptables(dp) => dp.set_fail_transactions(fail),
        }
    }
}

struct Before<'a> {
    lab: &'a Lab,
    flavour: Flavour,
    ruleset: String,
    observed: ObservedState,
}

impl Before<'_> {
    fn unchanged(&self, dp: &mut Backend, what: &str) {
        assert_eq!(
            dp.dp().observe().expect("observe"),
            self.observed,
            "{what}: observe() changed"
        );
        assert_eq!(
            ruleset(self.lab, self.flavour),
            self.ruleset,
            "{what}: the ruleset changed"
        );
    }
}

fn rejected_applies_change_nothing(flavour: Flavour) {
    let lab = lab();
    let mut old = lab.desired_state(0);
    old.services = vec![service(&lab, "web", WEB, IpFamily::V4)];
    // The capacities a policy needs: none.
    let mut dp = Backend::new(&lab, flavour, |c| {
        c.max_ipsets = 0;
        c.max_policy_elements = 0;
    });
    dp.dp().apply(&old).expect("apply");
    assert_eq!(answered_by(&lab, WEB).as_deref(), Some("pod-0-1"));
    let before = Before {
        lab: &lab,
        flavour,
        ruleset: ruleset(&lab, flavour),
        observed: dp.dp().observe().expect("observe"),
    };
    let mut new = old.clone();
    new.services.push(service(&lab, "new", NEW, IpFamily::V4));

    // A validation error.
    let mut clash = new.clone();
    clash
        .services
        .push(service(&lab, "clash", WEB, IpFamily::V4));
    let e = dp.dp().apply(&clash).unwrap_err();
    assert!(
        matches!(e, Error::Invalid(ValidationError::DuplicateFrontend { .. })),
        "{e:?}"
    );
    before.unchanged(&mut dp, "validation error");

    // A capacity error (the policy needs an ipset / elements, the configuration allows none).
    let mut big = new.clone();
    big.policies.push(policy());
    let e = dp.dp().apply(&big).unwrap_err();
    assert!(matches!(e, Error::CapacityExceeded { .. }), "{e:?}");
    before.unchanged(&mut dp, "capacity error");

    // The tool dies after reading its input.
    let tool = match flavour {
        Flavour::Nftables => "nft",
        Flavour::Iptables => "iptables-restore",
    };
    let failing = FailingTool::new(tool);
    let mut broken = Backend::new(&lab, flavour, |c| {
        c.nft = failing.path("nft");
        c.iptables_restore = failing.path("iptables-restore");
    });
    let e = broken.dp().apply(&new).unwrap_err();
    assert!(format!("{e:?}").contains("injected failure"), "{e:?}");
    before.unchanged(&mut dp, "a tool that dies");

    // The kernel refuses the last operation of the transaction (nft), or of the restore
    // (iptables): nothing before it sticks.
    dp.set_fail_transactions(true);
    let e = dp.dp().apply(&new).unwrap_err();
    assert!(matches!(e, Error::Kernel { .. }), "{e:?}");
    before.unchanged(&mut dp, "a transaction refused in its last operation");
    dp.set_fail_transactions(false);

    assert_eq!(answered_by(&lab, WEB).as_deref(), Some("pod-0-1"));
    assert_eq!(answered_by(&lab, NEW), None, "a refused service is served");
    // And the next sync programs the new state.
    dp.dp().apply(&new).expect("apply after the refusals");
    assert_eq!(answered_by(&lab, NEW).as_deref(), Some("pod-0-1"));
    // The kernel conntrack's failures in the node's namespace are reported, by both
    // flavours (a full table counts in conntrack_drop).
    let other = dp.dp().stats().expect("stats").other;
    for name in [
        "conntrack_drop",
        "conntrack_early_drop",
        "conntrack_insert_failed",
    ] {
        assert!(other.contains_key(name), "{name}: {other:?}");
    }
    dp.dp().reset().expect("reset");
}

#[test]
fn nftables_rejected_applies_change_nothing() {
    if require_root("nftables_rejected_applies_change_nothing") {
        rejected_applies_change_nothing(Flavour::Nftables);
    }
}

#[test]
fn iptables_rejected_applies_change_nothing() {
    if require_root("iptables_rejected_applies_change_nothing") {
        rejected_applies_change_nothing(Flavour::Iptables);
    }
}

/// iptables: a change of both families whose `ip6tables-restore` fails after
/// `iptables-restore` committed the IPv4 part. Fails today: the IPv4 part stays committed
/// and serves the refused state's IPv4 service (a half-applied sync, which the next full sync
/// repairs). The fix, rolling the first family back when the second fails, is in
/// `src/iptables/mod.rs` (`sync_checked`), which another change owns (issue 24).
#[test]
#[ignore = "known half-apply: the IPv4 restore is not rolled back when ip6tables-restore fails (issue 21/24)"]
fn the_second_family_failing_after_the_first_committed() {
    if !require_root("the_second_family_failing_after_the_first_committed") {
        return;
    }
    let lab = lab();
    let mut old = lab.desired_state(0);
    old.services = vec![service(&lab, "web", WEB, IpFamily::V4)];
    let failing = FailingTool::new("ip6tables-restore");
    let mut dp = Backend::new(&lab, Flavour::Iptables, |_| {});
    dp.dp().apply(&old).expect("apply");
    let before = Before {
        lab: &lab,
        flavour: Flavour::Iptables,
        ruleset: ruleset(&lab, Flavour::Iptables),
        observed: dp.dp().observe().expect("observe"),
    };
    let mut new = old.clone();
    new.services.push(service(&lab, "new", NEW, IpFamily::V4));
    new.services.push(service(&lab, "new6", NEW6, IpFamily::V6));
    // (a second backend on the same chains: `IptablesDataplane` has no `config_mut`)
    let mut broken = Backend::new(&lab, Flavour::Iptables, |c| {
        c.ip6tables_restore = failing.path("ip6tables-restore");
    });
    let e = broken.dp().apply(&new).unwrap_err();
    assert!(format!("{e:?}").contains("injected failure"), "{e:?}");
    before.unchanged(&mut dp, "ip6tables-restore failing after iptables-restore");
    assert_eq!(answered_by(&lab, NEW), None, "a refused service is served");
    dp.dp().reset().expect("reset");
}
