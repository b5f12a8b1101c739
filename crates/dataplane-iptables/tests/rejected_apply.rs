//! A rejected apply leaves the kernel as it was, on both netfilter backends (issue 21,
//! item 4): after a validation error, a capacity error, a tool that dies, and a transaction
//! the kernel refuses in its last operation, the ruleset (`nft -s list table inet dataplane`,
//! or `iptables-save` and `ip6tables-save` without counters) and `observe()` are as before,
//! and the old service still answers. So after a refused change of the cluster-wide policy
//! objects (`*_refused_tier_changes_change_nothing`).
//!
//! ```text
//!   pod-0-0 ──▶ 10.96.0.10:80 (web) ──▶ pod-0-1         served before and after
//!   pod-0-0 ──▶ 10.96.0.11:80 (new) ──▶ pod-0-1         only in the refused states
//! ```
//!
//! The iptables backend writes IPv4 and IPv6 with two tools (`iptables-restore`, then
//! `ip6tables-restore`); `iptables_*_second_family_failing_after_the_first_committed` show
//! that a failure of the second puts the first back (`src/iptables/rollback.rs`), in both
//! modes, on the sync over every service and on the changed-services partial sync.

mod common;

use std::net::SocketAddr;
use std::os::unix::fs::PermissionsExt;
use std::path::PathBuf;
use std::time::Duration;

use dataplane_core::{
    Dataplane, DesiredState, Error, HostAction, HostEndpoint, HostPolicy, HostRule, IpFamily,
    LabelSelector, ObjectName, ObservedState, Policy, PolicyType, Protocol, Service, ServicePort,
    ValidationError, ALL_INTERFACES,
};
use dataplane_iptables::config::IptablesMode;
use dataplane_iptables::{IptablesDataplane, NetfilterConfig, NftablesDataplane};
use dataplane_testkit::{probe, require_root, Lab, LabSpec, ProbeOutcome, SERVER_PORT};

const WEB: &str = "10.96.0.10";
const NEW: &str = "10.96.0.11";
const WEB6: &str = "fd00:96::10";
const NEW6: &str = "fd00:96::11";
const PROBE_TIMEOUT: Duration = Duration::from_secs(3);

#[derive(Clone, Copy, PartialEq, Eq)]
enum Flavour {
    Nftables,
    Iptables(IptablesMode),
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
        Flavour::Iptables(mode) => {
            let mut c = NetfilterConfig::iptables(Some(lab.node(0).netns.path().to_owned()));
            c.iptables_mode = mode;
            IptablesDataplane::save_tools(&c)
                .iter()
                .flat_map(|tool| {
                    run(tool.to_str().expect("a tool path"), &[])
                        .lines()
                        .filter(|l| !l.starts_with('#'))
                        .map(|l| l.split(" [").next().unwrap_or(l).to_owned())
                        .collect::<Vec<_>>()
                })
                .collect::<Vec<_>>()
                .join("\n")
        }
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
/// halfway would (except for `--test`, and while [`FailingTool::pass`] is on), and
/// `<name without -restore>-save` (read before any write) as the real one, counting its runs.
/// `infix`: the flavour of the real tools (`iptables-<infix>-restore`; `None`: the name).
struct FailingTool(PathBuf);

impl FailingTool {
    fn new(name: &str, infix: Option<&str>) -> FailingTool {
        let dir = PathBuf::from(format!(
            "/tmp/dp-rejected-{}-{}-{}",
            std::process::id(),
            // (not the tool's name: the save tool's path is the restore tool's with
            // "-restore" replaced)
            name.replace("-restore", ""),
            // (the tests run at once)
            infix.unwrap_or("path")
        ));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let flavoured = |name: &str| match (infix, name.split_once('-')) {
            (Some(infix), Some((family, rest))) => format!("{family}-{infix}-{rest}"),
            _ => name.to_owned(),
        };
        let script = |path: PathBuf, text: String| {
            std::fs::write(&path, text).unwrap();
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
        };
        // A check (`--test`) writes nothing: the real tool answers it, so that the failure
        // comes where a commit would.
        let real = which(&flavoured(name));
        script(
            dir.join(name),
            format!(
                "#!/bin/sh\n\
                 for a in \"$@\"; do [ \"$a\" = --test ] && exec {real} \"$@\"; done\n\
                 n=$(cat {pass} 2>/dev/null || echo 0)\n\
                 [ \"$n\" = always ] && exec {real} \"$@\"\n\
                 if [ \"$n\" -gt 0 ]; then echo $((n - 1)) >{pass}; exec {real} \"$@\"; fi\n\
                 cat >/dev/null\necho 'injected failure' >&2\nexit 1\n",
                pass = dir.join("pass").display(),
                real = real.display()
            ),
        );
        if let Some(base) = name.strip_suffix("-restore") {
            let real = which(&flavoured(&format!("{base}-save")));
            script(
                dir.join(format!("{base}-save")),
                format!(
                    "#!/bin/sh\necho >>{saves}\nexec {real} \"$@\"\n",
                    saves = dir.join("saves").display(),
                    real = real.display()
                ),
            );
        }
        FailingTool(dir)
    }

    fn path(&self, name: &str) -> PathBuf {
        self.0.join(name)
    }

    /// The tool runs the real one (`true`) or fails (`false`, the start).
    fn pass(&self, pass: bool) {
        let flag = self.0.join("pass");
        if pass {
            std::fs::write(flag, "always").unwrap();
        } else {
            let _ = std::fs::remove_file(flag);
        }
    }

    /// The tool runs the real one `n` more times (checks aside), then fails.
    fn pass_times(&self, n: u32) {
        std::fs::write(self.0.join("pass"), n.to_string()).unwrap();
    }

    /// How many times the save tool ran.
    fn saves(&self) -> usize {
        std::fs::read_to_string(self.0.join("saves")).map_or(0, |s| s.lines().count())
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
// One per test, made once and never moved around: the size difference costs nothing.
#[allow(clippy::large_enum_variant)]
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
            Flavour::Iptables(mode) => {
                let mut c = NetfilterConfig::iptables(netns);
                c.iptables_mode = mode;
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
    // The capacities a policy needs: none (but the iptables flavour's two hairpin sets,
    // `NetfilterConfig::hairpin_ipset`).
    let mut dp = Backend::new(&lab, flavour, |c| {
        c.max_ipsets = 2;
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

    tier_objects(
        &mut dp,
        &before,
        &old,
        service(&lab, "new", NEW, IpFamily::V4),
    );
    l2_refusals(&mut dp, &before, &old, &lab);
    if let Flavour::Iptables(_) = flavour {
        host_policy_over_capacity_changes_nothing(&mut dp, &before, &old, &new);
    }

    // The tool dies after reading its input.
    let tool = match flavour {
        Flavour::Nftables => "nft",
        Flavour::Iptables(_) => "iptables-restore",
    };
    let failing = FailingTool::new(tool, None);
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

/// Cluster and host endpoint policy (issue 22), against the state `old` with
/// `new_service` added.
fn tier_objects(
    dp: &mut Backend,
    before: &Before<'_>,
    old: &dataplane_core::DesiredState,
    new_service: Service,
) {
    // Cluster and host endpoint policy (issue 22): both flavours program them, so a state
    // with one whose transaction the kernel refuses changes nothing, as a full and an
    // incremental sync; a flavour that did not would declare them missing and refuse them
    // by name.
    let caps = dp.dp().capabilities();
    let programs_tiers = true;
    assert_eq!(
        (caps.cluster_policy, caps.host_policy),
        (programs_tiers, programs_tiers),
        "{caps:?}"
    );
    for (tiered, object) in dataplane_core::synthetic::tier_refusals(old, new_service) {
        // Refused by the kernel (the fault hook), a failed transaction; a flavour without
        // them: refused by name before anything.
        let expected = |e: &Error| match e {
            Error::Kernel { .. } | Error::FullSyncRequired => programs_tiers,
            Error::Unsupported { object: o, .. } => !programs_tiers && *o == object,
            _ => false,
        };
        dp.set_fail_transactions(programs_tiers);
        let e = dp.dp().apply(&tiered).unwrap_err();
        assert!(expected(&e), "{object}: {e:?}");
        before.unchanged(dp, &format!("{object} (apply)"));
        let e = dp
            .dp()
            .apply_changes(&dataplane_core::diff(old, &tiered))
            .unwrap_err();
        assert!(expected(&e), "{object}: {e:?}");
        before.unchanged(dp, &format!("{object} (apply_changes)"));
        dp.set_fail_transactions(false);
    }
}

/// The L2 announcement entries of both flavours in the node's namespace (local routes and
/// proxy entries of their route protocols, 209 and 210) and their filters (the nftables
/// flavour's `-l2` tables, the iptables flavour's `DPL2` arptables chain; its `DPL2`
/// iptables chains are in `ruleset`).
fn l2_entries(lab: &Lab) -> String {
    let run = |tool: &str, args: &[&str]| {
        let out = lab.node(0).netns.exec(tool, args).expect("tool runs");
        assert!(out.status.success(), "{tool} {args:?}");
        String::from_utf8(out.stdout).unwrap()
    };
    let mut entries: String = ["209", "210"]
        .iter()
        .flat_map(|p| {
            [
                run("ip", &["-4", "route", "show", "table", "local", "proto", p]),
                run("ip", &["-6", "neigh", "show", "proxy", "proto", p]),
            ]
        })
        .collect();
    for (tool, args, ours) in [
        ("nft", &["list", "tables"][..], "-l2"),
        ("arptables", &["-S"][..], "DPL2"),
    ] {
        for line in run(tool, args).lines().filter(|l| l.contains(ours)) {
            entries.push_str(line);
            entries.push('\n');
        }
    }
    entries
}

/// L2 announcements (issue 23): a state announcing a LoadBalancer IP in both families is
/// refused — invalid, on an uplink without IPv6 forwarding (proxy NDP would not answer:
/// refused by name before anything), or by the kernel — as a full and an incremental sync,
/// and leaves no route, proxy entry or rule behind; applied, it programs them, and the
/// state without it takes them all away again.
fn l2_refusals(dp: &mut Backend, before: &Before<'_>, old: &DesiredState, lab: &Lab) {
    assert!(dp.dp().capabilities().l2_announcements);
    let mut lb = service(lab, "lb", NEW, IpFamily::V4);
    lb.cluster_ips.push(NEW6.parse().unwrap());
    lb.backends
        .push(lab.backend(1, IpFamily::V6).expect("lab backend"));
    lb.load_balancer_ips = vec![
        "172.18.0.200".parse().unwrap(),
        "fd00:18::c8".parse().unwrap(),
    ];
    let lb = lb.with_l2_announce();
    let mut announcing = old.clone();
    announcing.services.push(lb);
    let none = l2_entries(lab);
    assert_eq!(none, "", "announcement entries before any announcing apply");
    let unchanged = |dp: &mut Backend, what: &str| {
        before.unchanged(dp, what);
        assert_eq!(
            l2_entries(lab),
            none,
            "{what}: announcement entries changed"
        );
    };

    let mut clash = announcing.clone();
    clash
        .services
        .push(service(lab, "clash", WEB, IpFamily::V4));
    let e = dp.dp().apply(&clash).unwrap_err();
    assert!(matches!(e, Error::Invalid(_)), "{e:?}");
    unchanged(dp, "l2: validation error");

    let forwarding = [("net/ipv6/conf/eth0/forwarding", "0")];
    lab.node(0).netns.sysctl(&forwarding).expect("sysctl");
    let e = dp.dp().apply(&announcing).unwrap_err();
    let refused = |e: &Error| {
        matches!(e, Error::Unsupported { object, feature, .. }
            if object.contains("service default/lb") && object.contains("l2Announce")
                && feature.contains("net.ipv6.conf.eth0.forwarding"))
    };
    assert!(refused(&e), "{e:?}");
    unchanged(dp, "l2: no IPv6 forwarding (apply)");
    let e = dp
        .dp()
        .apply_changes(&dataplane_core::diff(old, &announcing))
        .unwrap_err();
    assert!(refused(&e) || matches!(e, Error::FullSyncRequired), "{e:?}");
    unchanged(dp, "l2: no IPv6 forwarding (apply_changes)");
    lab.node(0)
        .netns
        .sysctl(&[("net/ipv6/conf/eth0/forwarding", "1")])
        .expect("sysctl");

    dp.set_fail_transactions(true);
    let e = dp.dp().apply(&announcing).unwrap_err();
    assert!(matches!(e, Error::Kernel { .. }), "{e:?}");
    unchanged(dp, "l2: a transaction refused (apply)");
    dp.set_fail_transactions(false);

    let sysctls = || {
        [
            "net/ipv6/conf/all/proxy_ndp",
            "net/ipv6/neigh/eth0/proxy_delay",
        ]
        .map(|key| {
            let out = lab
                .node(0)
                .netns
                .exec("cat", &[format!("/proc/sys/{key}")])
                .expect("cat runs");
            String::from_utf8(out.stdout).unwrap().trim().to_owned()
        })
    };
    let sysctls_before = sysctls();
    assert_ne!(sysctls_before, ["1", "0"], "the lab's defaults");
    dp.dp().apply(&announcing).expect("announcing apply");
    assert_eq!(sysctls(), ["1", "0"], "proxy_ndp on, proxy_delay 0");
    let entries = l2_entries(lab);
    assert!(
        entries.contains("local 172.18.0.200 dev eth0")
            && entries.contains("fd00:18::c8 dev eth0 proxy")
            && (entries.contains("table arp dataplane-l2") || entries.contains("-j DPL2")),
        "{entries}"
    );
    dp.dp().apply(old).expect("back to the old state");
    unchanged(dp, "l2: announced, then the old state again");
    // The sysctls go back on reset (the marker says what they were).
    dp.dp().reset().expect("reset");
    assert_eq!(sysctls(), sysctls_before, "sysctls restored by reset");
    dp.dp().apply(old).expect("the old state again");
    unchanged(dp, "l2: after a reset, the old state again");
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
        rejected_applies_change_nothing(Flavour::Iptables(IptablesMode::Auto));
    }
}

/// A refused change of the cluster-wide policy objects (core's
/// `synthetic::tier_invalid_changes`: a cluster policy's priority taken twice or out of
/// range, an ingress `networks` peer in the baseline, a loopback peer node, a second host
/// endpoint for the uplink, a preDNAT and doNotTrack host policy, a failsafe port twice) is
/// the validation error naming object and field, from `apply_changes` (nftables: core's
/// incremental validator, no full sync asked for; iptables: its sync over the applied state
/// validates it whole) and from `apply`, with the ruleset and `observe()` as they were; a
/// valid host policy change then applies without a full sync, and the service still
/// answers.
fn refused_tier_changes_change_nothing(flavour: Flavour) {
    let lab = lab();
    let mut base = lab.desired_state(0);
    base.services = vec![service(&lab, "web", WEB, IpFamily::V4)];
    let (old, cases) = dataplane_core::synthetic::tier_invalid_changes(&base);
    let mut dp = Backend::new(&lab, flavour, |_| {});
    dp.dp().apply(&old).expect("apply");
    assert_eq!(answered_by(&lab, WEB).as_deref(), Some("pod-0-1"));
    let before = Before {
        lab: &lab,
        flavour,
        ruleset: ruleset(&lab, flavour),
        observed: dp.dp().observe().expect("observe"),
    };
    assert!(!cases.is_empty());
    for (bad, expected) in cases {
        let e = dp
            .dp()
            .apply_changes(&dataplane_core::diff(&old, &bad))
            .unwrap_err();
        assert!(
            matches!(&e, Error::Invalid(got) if *got == expected),
            "apply_changes: {expected}: {e:?}"
        );
        before.unchanged(&mut dp, &format!("{expected} (apply_changes)"));
        let e = dp.dp().apply(&bad).unwrap_err();
        assert!(
            matches!(&e, Error::Invalid(got) if *got == expected),
            "apply: {expected}: {e:?}"
        );
        before.unchanged(&mut dp, &format!("{expected} (apply)"));
    }
    let mut next = old.clone();
    next.host_policies[0].ingress[0].source.nets = vec!["203.0.113.0/24".parse().unwrap()];
    let report = dp
        .dp()
        .apply_changes(&dataplane_core::diff(&old, &next))
        .expect("apply_changes");
    // (the refusals left the backend clean: no full sync forced)
    assert!(!report.full_sync, "{report:?}");
    assert_ne!(
        ruleset(&lab, flavour),
        before.ruleset,
        "the host policy was written"
    );
    assert_eq!(answered_by(&lab, WEB).as_deref(), Some("pod-0-1"));
    dp.dp().reset().expect("reset");
}

#[test]
fn nftables_refused_tier_changes_change_nothing() {
    if require_root("nftables_refused_tier_changes_change_nothing") {
        refused_tier_changes_change_nothing(Flavour::Nftables);
    }
}

#[test]
fn iptables_refused_tier_changes_change_nothing() {
    if require_root("iptables_refused_tier_changes_change_nothing") {
        refused_tier_changes_change_nothing(Flavour::Iptables(IptablesMode::Auto));
    }
}

/// iptables: a host policy whose CIDRs need an ipset, where the configuration allows none,
/// is refused as a full and as an incremental sync, changing nothing.
fn host_policy_over_capacity_changes_nothing(
    dp: &mut Backend,
    before: &Before<'_>,
    old: &DesiredState,
    new: &DesiredState,
) {
    let node = new.node.name.clone();
    let hosted = new
        .clone()
        .with_host_endpoint(
            HostEndpoint::new("uplink", node, ALL_INTERFACES).with_label("role", "uplink"),
        )
        .with_host_policy(
            HostPolicy::new(
                "block",
                LabelSelector::default().with_label("role", "uplink"),
            )
            .untracked()
            .with_ingress(HostRule::new(HostAction::Deny).from_nets([
                "198.51.100.0/24".parse().unwrap(),
                "203.0.113.0/24".parse().unwrap(),
            ])),
        );
    let e = dp.dp().apply(&hosted).unwrap_err();
    assert!(matches!(e, Error::CapacityExceeded { .. }), "{e:?}");
    before.unchanged(dp, "host policy ipset capacity (apply)");
    let e = dp
        .dp()
        .apply_changes(&dataplane_core::diff(old, &hosted))
        .unwrap_err();
    assert!(matches!(e, Error::CapacityExceeded { .. }), "{e:?}");
    before.unchanged(dp, "host policy ipset capacity (apply_changes)");
}

/// iptables: changes of both families whose `ip6tables-restore` fails after
/// `iptables-restore` committed the IPv4 part: IPv4 is put back, on every path that writes
/// both families:
///
/// - the sync over every service (`apply`), by a backend whose last sync succeeded, the same
///   backend again (now dirty), and a new backend over the same chains (as a restarted agent:
///   nothing applied, the kernel read);
/// - the changed-services partial sync (`apply_changes` of endpoint changes in both
///   families; it reads no `iptables-save`, the reverse patch neither).
///
/// Each time the ruleset (both families, our chains and the hooks) and `observe()` are as
/// before and the refused services are not served.
fn second_family_failing_after_the_first_committed(mode: IptablesMode) {
    let lab = lab();
    let infix = mode.infix();
    let failing = FailingTool::new("ip6tables-restore", infix);
    let broken = |c: &mut NetfilterConfig| c.ip6tables_restore = failing.path("ip6tables-restore");
    let flavour = Flavour::Iptables(mode);
    let mut old = lab.desired_state(0);
    old.services = vec![
        service(&lab, "web", WEB, IpFamily::V4),
        service(&lab, "web6", WEB6, IpFamily::V6),
    ];
    let mut dp = Backend::new(&lab, flavour, broken);
    failing.pass(true);
    dp.dp().apply(&old).expect("apply");
    failing.pass(false);
    assert_eq!(answered_by(&lab, WEB).as_deref(), Some("pod-0-1"));
    let before = Before {
        lab: &lab,
        flavour,
        ruleset: ruleset(&lab, flavour),
        observed: dp.dp().observe().expect("observe"),
    };
    let mut new = old.clone();
    new.services.push(service(&lab, "new", NEW, IpFamily::V4));
    new.services.push(service(&lab, "new6", NEW6, IpFamily::V6));
    let refused = |e: Error, what: &str| {
        assert!(
            matches!(e, Error::Kernel { .. }) && format!("{e:?}").contains("injected failure"),
            "{what}: {e:?}"
        );
        assert!(
            !format!("{e:?}").contains("RollbackFailed"),
            "{what}: the rollback failed: {e:?}"
        );
    };

    // The sync over every service, twice (the second from a dirty backend).
    for what in ["apply", "apply again"] {
        refused(dp.dp().apply(&new).unwrap_err(), what);
        before.unchanged(&mut dp, what);
        assert_eq!(
            answered_by(&lab, NEW),
            None,
            "{what}: a refused service is served"
        );
    }
    // A new backend over the same chains (nothing applied: the kernel is all it knows).
    let mut restarted = Backend::new(&lab, flavour, broken);
    refused(restarted.dp().apply(&new).unwrap_err(), "a new backend");
    before.unchanged(&mut dp, "a new backend");
    assert_eq!(answered_by(&lab, NEW), None, "a refused service is served");

    // The changed-services partial sync: the endpoints of both services move to pod-0-0.
    failing.pass(true);
    dp.dp()
        .apply(&old)
        .expect("apply (the backend is clean again)");
    failing.pass(false);
    let mut moved = old.clone();
    moved.services[0].backends = vec![lab.backend(0, IpFamily::V4).expect("lab backend")];
    moved.services[1].backends = vec![lab.backend(0, IpFamily::V6).expect("lab backend")];
    let changes = dataplane_core::diff(&old, &moved);
    let saves = failing.saves();
    refused(
        dp.dp().apply_changes(&changes).unwrap_err(),
        "changed services",
    );
    assert_eq!(
        failing.saves(),
        saves,
        "the changed-services path reads no ip6tables-save (another path was taken)"
    );
    before.unchanged(&mut dp, "changed services");
    assert_eq!(answered_by(&lab, WEB).as_deref(), Some("pod-0-1"));

    // The tool working again, the refused states apply.
    failing.pass(true);
    dp.dp().apply_changes(&changes).expect("apply_changes");
    assert_eq!(answered_by(&lab, WEB).as_deref(), Some("pod-0-0"));
    dp.dp().apply(&new).expect("apply");
    assert_eq!(answered_by(&lab, NEW).as_deref(), Some("pod-0-1"));

    dp.dp().apply(&old).expect("apply");
    a_failed_rollback_is_reported(&lab, mode, &failing, &old, &new);
}

/// A rollback that fails too (`iptables-restore` commits IPv4, then fails putting it back):
/// reported as such, and the backend is dirty: the next change set is applied as a full
/// sync. `failing`: the `ip6tables-restore` of the caller.
fn a_failed_rollback_is_reported(
    lab: &Lab,
    mode: IptablesMode,
    failing: &FailingTool,
    old: &dataplane_core::DesiredState,
    new: &dataplane_core::DesiredState,
) {
    let infix = mode.infix();
    let broken = |c: &mut NetfilterConfig| c.ip6tables_restore = failing.path("ip6tables-restore");
    let flavour = Flavour::Iptables(mode);
    let failing4 = FailingTool::new("iptables-restore", infix);
    let mut both = Backend::new(lab, flavour, |c| {
        broken(c);
        c.iptables_restore = failing4.path("iptables-restore");
    });
    failing4.pass(true);
    both.dp().apply(old).expect("apply");
    failing4.pass_times(1);
    failing.pass(false);
    let e = both
        .dp()
        .apply_changes(&dataplane_core::diff(old, new))
        .unwrap_err();
    match &e {
        Error::Kernel { operation, .. } => assert_eq!(operation, "rollback", "{e:?}"),
        _ => panic!("{e:?}"),
    }
    let chain = format!("{e:?}");
    assert!(
        chain.contains("RollbackFailed") && chain.contains("IPv4"),
        "{chain}"
    );
    // (what failed first, and the rollback's own failure)
    assert_eq!(chain.matches("injected failure").count(), 2, "{chain}");
    assert_eq!(
        answered_by(lab, NEW).as_deref(),
        Some("pod-0-1"),
        "IPv4 stays changed"
    );
    failing.pass(true);
    failing4.pass(true);
    let report = both
        .dp()
        .apply_changes(&dataplane_core::diff(old, new))
        .expect("apply_changes after the failed rollback");
    assert!(
        report.full_sync,
        "a sync after a failed rollback is a full one"
    );
    both.dp().reset().expect("reset");
}

#[test]
fn iptables_legacy_second_family_failing_after_the_first_committed() {
    if require_root("iptables_legacy_second_family_failing_after_the_first_committed") {
        second_family_failing_after_the_first_committed(IptablesMode::Legacy);
    }
}

#[test]
fn iptables_nft_second_family_failing_after_the_first_committed() {
    if require_root("iptables_nft_second_family_failing_after_the_first_committed") {
        second_family_failing_after_the_first_committed(IptablesMode::Nft);
    }
}
