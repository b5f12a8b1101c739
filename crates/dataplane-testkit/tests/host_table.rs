//! The host table's runner and lab, proven before any backend uses them: case
//! `deny-all-failsafe` (a deny-all host policy with the default, then custom, failsafe
//! ports) programmed by hand with plain nftables rules in node-0's namespace. The runner
//! must see every allowed cell answered and every denied cell dropped; the same rules
//! without their failsafe accepts must fail exactly the failsafe cells.
//!
//! The hand rules are this test's, not a backend: they cover the one case's policy (a normal
//! policy for ingress and egress without rules, on the uplink `eth0`) and refuse any other.

mod common;

use dataplane_core::{
    uplink_host_endpoint, ApplyReport, Capabilities, ChangeSet, Dataplane, DesiredState, Error,
    FailsafePort, FakeDataplane, Flow, ObservedState, Protocol, Stats,
};
use dataplane_testkit::conformance::host::{host_cases, run_host, HostCase, HOST_LAB};
use dataplane_testkit::conformance::RowOutcome;
use dataplane_testkit::{require_root, Lab, LabNode, NetNs};

const TABLE: &str = "hosttable_hand";

/// Node-0's host policy as hand-written nftables rules; the rest (observe, flows, stats)
/// from a fake holding the same state.
struct HandNft {
    netns: NetNs,
    /// Leave the failsafe accepts out (a broken firewall the runner must catch).
    forget_failsafe: bool,
    fake: FakeDataplane,
}

impl HandNft {
    fn new(node: &LabNode, forget_failsafe: bool) -> Self {
        HandNft {
            netns: node.netns.clone(),
            forget_failsafe,
            fake: FakeDataplane::new(),
        }
    }

    fn nft(&self, args: &[&str]) -> Result<(), Error> {
        let out = self
            .netns
            .exec("nft", args)
            .map_err(|e| kernel("nft", Box::new(e)))?;
        if out.status.success() {
            Ok(())
        } else {
            Err(kernel(
                "nft",
                format!("{args:?}: {}", String::from_utf8_lossy(&out.stderr)).into(),
            ))
        }
    }

    /// The ruleset for `state`: none without a host endpoint on the uplink; with one,
    /// established connections accepted (so conntrack follows every connection from the
    /// open state on, as a real backend's NAT does: a connection it first meets mid-stream
    /// is not established), and for the deny-all policy failsafe ports accepted and every
    /// other TCP and UDP packet on `eth0` dropped, in and out.
    fn ruleset(&self, state: &DesiredState) -> Result<Option<String>, Error> {
        if uplink_host_endpoint(state).is_none() {
            return Ok(None);
        }
        let deny_all = !state.host_policies.is_empty();
        if let Some(p) = state
            .host_policies
            .iter()
            .find(|p| p.name != "deny-all" || !p.ingress.is_empty() || !p.egress.is_empty())
        {
            return Err(Error::Unsupported {
                dataplane: "hand-nft".to_owned(),
                feature: "host policy other than deny-all".to_owned(),
                object: p.name.clone(),
            });
        }
        let ports = |list: &[FailsafePort], protocol: Protocol| -> Vec<String> {
            list.iter()
                .filter(|f| f.protocol == protocol)
                .map(|f| f.port.to_string())
                .collect()
        };
        let mut lines = vec![format!("table inet {TABLE} {{")];
        for (chain, hook, dev, list) in [
            ("in", "input", "iifname", &state.failsafe_ports.inbound),
            ("out", "output", "oifname", &state.failsafe_ports.outbound),
        ] {
            lines.push(format!("  chain {chain} {{"));
            lines.push(format!(
                "    type filter hook {hook} priority 0; policy accept;"
            ));
            lines.push(format!(
                "    {dev} \"eth0\" ct state established,related accept"
            ));
            for (protocol, name) in [(Protocol::Tcp, "tcp"), (Protocol::Udp, "udp")] {
                let ports = ports(list, protocol);
                if deny_all && !ports.is_empty() && !self.forget_failsafe {
                    lines.push(format!(
                        "    {dev} \"eth0\" {name} dport {{ {} }} accept",
                        ports.join(", ")
                    ));
                }
            }
            if deny_all {
                lines.push(format!(
                    "    {dev} \"eth0\" meta l4proto {{ tcp, udp }} drop"
                ));
            }
            lines.push("  }".to_owned());
        }
        lines.push("}\n".to_owned());
        let out = lines.join("\n");
        Ok(Some(out))
    }

    fn flush(&self) {
        // Absent the first time.
        let _ = self.nft(&["delete", "table", "inet", TABLE]);
    }
}

fn kernel(operation: &str, source: Box<dyn std::error::Error + Send + Sync>) -> Error {
    Error::Kernel {
        dataplane: "hand-nft".to_owned(),
        operation: operation.to_owned(),
        source,
    }
}

impl Dataplane for HandNft {
    fn capabilities(&self) -> Capabilities {
        Capabilities {
            dataplane: "hand-nft".to_owned(),
            ..FakeDataplane::default_capabilities()
        }
    }

    fn apply(&mut self, desired: &DesiredState) -> Result<ApplyReport, Error> {
        let rules = self.ruleset(desired)?;
        self.flush();
        if let Some(rules) = rules {
            self.netns
                .exec_checked("nft", &["-f", "-"], Some(&rules))
                .map_err(|e| kernel("nft -f -", Box::new(e)))?;
        }
        self.fake.apply(desired)
    }

    fn apply_changes(&mut self, _changes: &ChangeSet) -> Result<ApplyReport, Error> {
        Err(Error::FullSyncRequired)
    }

    fn observe(&self) -> Result<ObservedState, Error> {
        self.fake.observe()
    }

    fn flows(&self) -> Result<Vec<Flow>, Error> {
        self.fake.flows()
    }

    fn stats(&self) -> Result<Stats, Error> {
        self.fake.stats()
    }

    fn reset(&mut self) -> Result<(), Error> {
        self.flush();
        self.fake.reset()
    }
}

fn deny_all_case() -> Vec<HostCase> {
    host_cases()
        .into_iter()
        .filter(|c| c.name == "deny-all-failsafe")
        .collect()
}

#[test]
fn hand_written_nftables_pass_the_deny_all_case_and_a_broken_firewall_fails_it() {
    if !require_root("hand_written_nftables_pass_the_deny_all_case") {
        return;
    }
    let lab = Lab::new(HOST_LAB).expect("lab");
    let cases = deny_all_case();
    assert_eq!(cases.len(), 1);

    let report = run_host(&lab, &cases, &mut |node| {
        Box::new(HandNft::new(node, false))
    });
    report.assert_ok();
    assert_eq!(
        report.passed().count(),
        cases[0].steps.len(),
        "every step ran and passed:\n{report}"
    );

    // The same rules without the failsafe accepts: the failsafe cells (and those only) fail.
    // A lab of its own: the run's source ports start over, and the first run's conntrack
    // entries (UDP, 30 s) would answer them as established.
    drop(lab);
    let lab = Lab::new(HOST_LAB).expect("lab");
    let report = run_host(&lab, &cases, &mut |node| Box::new(HandNft::new(node, true)));
    let failed: Vec<_> = report.failed().collect();
    assert_eq!(
        failed.len(),
        1,
        "the first step fails, and ends the case:\n{report}"
    );
    let RowOutcome::Failed { table, traffic } = &failed[0].outcome else {
        unreachable!()
    };
    assert!(table.is_empty(), "{table:?}");
    for cell in [
        "external-0 -> node-0 TCP/22 (IPv4): expected answered by node-0:22, saw no answer",
        "external-0 -> node-0 TCP/6443 (IPv6): expected answered by node-0:6443, saw no answer",
        "external-0 -> node-0 UDP/68 (IPv4)",
        "node-0 -> external-3 UDP/53 (IPv6)",
        "node-0 -> external-3 TCP/6443 (IPv4)",
    ] {
        assert!(
            traffic.iter().any(|t| t.starts_with(cell)),
            "{cell} not among the failures:\n{report}"
        );
    }
    assert!(
        traffic.iter().all(|t| {
            [
                ":22 ",
                ":6443 ",
                ":68 ",
                ":53 ",
                "TCP/22 ",
                "TCP/6443 ",
                "UDP/68 ",
                "UDP/53 ",
            ]
            .iter()
            .any(|p| t.contains(p))
        }),
        "only failsafe cells fail: {traffic:#?}"
    );
}

/// A backend without `Capabilities::host_policy` (every backend before issue 22's helpers):
/// each case is one visible skipped row naming what is missing, nothing is applied, nothing
/// fails.
#[test]
fn host_cases_are_skipped_visibly_without_the_capability() {
    if !require_root("host_cases_are_skipped_visibly_without_the_capability") {
        return;
    }
    let lab = Lab::new(HOST_LAB).expect("lab");
    let claims = Capabilities {
        dataplane: "no-host-policy".to_owned(),
        host_policy: false,
        ..FakeDataplane::default_capabilities()
    };
    let cases = host_cases();
    let names: Vec<&str> = cases.iter().map(|c| c.name.as_str()).collect();
    common::assert_skipped_without(&claims, "Capabilities::host_policy", &names, |factory| {
        run_host(&lab, &cases, factory)
    });
}
