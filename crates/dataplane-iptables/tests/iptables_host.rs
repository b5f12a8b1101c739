//! Host endpoint policy in the iptables flavour's restore input (pure, no root): the raw,
//! mangle and filter chains of untracked, pre-DNAT and normal policies, failsafe ports
//! first, `hash:net` sets for a rule's CIDRs, and the backend refusing more ipsets than the
//! kernel allows before writing anything. The real-traffic table is
//! `tests/host_conformance.rs` (`dataplane_testkit::conformance::host`).

use std::net::IpAddr;
use std::os::unix::fs::PermissionsExt as _;

use dataplane_core::ipnetwork::IpNetwork;
use dataplane_core::{
    Dataplane, DesiredState, Error, FailsafePort, FailsafePorts, HostAction, HostEndpoint,
    HostPolicy, HostPort, HostRule, IpFamily, LabelSelector, Node, PolicyType, Protocol,
};
use dataplane_iptables::{IptablesDataplane, IptablesMode, NetfilterConfig};

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

fn nets(list: &[&str]) -> Vec<IpNetwork> {
    list.iter().map(|n| n.parse().unwrap()).collect()
}

fn uplink() -> LabelSelector {
    LabelSelector::default().with_label("role", "uplink")
}

/// Node 172.18.0.2 (uplink eth0) with a host endpoint on it, failsafe TCP 22 in and UDP 53
/// out, and `policies`.
fn state(policies: Vec<HostPolicy>) -> DesiredState {
    let mut s = DesiredState::new(Node::new("node-a", [ip("172.18.0.2")]))
        .with_host_endpoint(
            HostEndpoint::new("node-a-eth0", "node-a", "eth0").with_label("role", "uplink"),
        )
        .with_failsafe_ports(FailsafePorts {
            inbound: vec![FailsafePort::tcp(22)],
            outbound: vec![FailsafePort::udp(53)],
        });
    for p in policies {
        s = s.with_host_policy(p);
    }
    s
}

fn render(state: &DesiredState) -> String {
    IptablesDataplane::new(NetfilterConfig::iptables(None))
        .render(state, IpFamily::V4)
        .expect("render")
}

/// The rules of `chain` in the `table` section of `text`, without the `-A <chain> `.
fn rules<'a>(text: &'a str, table: &str, chain: &str) -> Vec<&'a str> {
    let head = format!("-A {chain} ");
    let mut in_table = false;
    let mut out = Vec::new();
    for line in text.lines() {
        if let Some(t) = line.strip_prefix('*') {
            in_table = t == table;
        } else if in_table {
            if let Some(r) = line.strip_prefix(&head) {
                out.push(r);
            }
        }
    }
    out
}

#[test]
fn untracked_rules_are_in_raw_after_the_failsafe_ports_over_a_net_set() {
    let block = HostPolicy::new("block", uplink())
        .untracked()
        .with_order(1)
        .with_ingress(
            HostRule::new(HostAction::Deny).from_nets(nets(&["198.51.100.0/24", "203.0.113.0/24"])),
        )
        .with_ingress(
            HostRule::new(HostAction::Allow)
                .protocol(Protocol::Udp)
                .from_nets(nets(&["192.0.2.1/32"]))
                .to_ports([HostPort::Number(4789)]),
        );
    let text = render(&state(vec![block]));
    let pre = rules(&text, "raw", "DP-RAW-PRE");
    assert_eq!(pre[0], "! -i eth0 -j RETURN");
    assert_eq!(
        pre[1],
        "-d 172.18.0.2/32 -p tcp -m tcp --dport 22 -m comment --comment \"failsafe in\" -j RETURN"
    );
    let set = pre[2]
        .strip_prefix("-m set --match-set ")
        .and_then(|r| r.strip_suffix(" src -m comment --comment \"host policy block\" -j DROP"))
        .unwrap_or_else(|| panic!("{}", pre[2]));
    assert!(set.starts_with("DP-n4-"), "{set}");
    assert_eq!(
        pre[3],
        "-s 192.0.2.1/32 -p udp -m udp --dport 4789 -m comment --comment \"host policy block\" -j DP-RAW-NOTRACK"
    );
    assert_eq!(pre.len(), 4);
    assert_eq!(
        rules(&text, "raw", "DP-RAW-NOTRACK"),
        [
            "-m comment --comment \"untracked host policy\" -j CT --notrack",
            "-j ACCEPT"
        ]
    );
    // Hooked first in raw PREROUTING and OUTPUT; the mangle hooks come with them.
    for (table, builtin, ours) in [
        ("raw", "PREROUTING", "DP-RAW-PRE"),
        ("raw", "OUTPUT", "DP-RAW-OUT"),
        ("mangle", "PREROUTING", "DP-MGL-PRE"),
        ("mangle", "OUTPUT", "DP-MGL-OUT"),
    ] {
        let hook = format!("-I {builtin} 1 -j {ours}");
        let section = text.split(&format!("*{table}\n")).nth(1).unwrap_or("");
        assert!(
            section.split("COMMIT").next().unwrap().contains(&hook),
            "{table} {hook}:\n{text}"
        );
    }
    // No normal policy: the filter legs are open.
    assert!(!text.contains("-A DP-HOST-IN "), "{text}");
    assert_eq!(
        rules(&text, "raw", "DP-RAW-OUT"),
        [
            "! -o eth0 -j RETURN",
            "-p udp -m udp --dport 53 -m comment --comment \"failsafe out\" -j RETURN"
        ]
    );
}

#[test]
fn pre_dnat_marks_what_it_allows_and_normal_policy_denies_by_default() {
    let pre = HostPolicy::new("nodeports", uplink())
        .pre_dnat()
        .with_order(5)
        .with_ingress(
            HostRule::new(HostAction::Allow)
                .protocol(Protocol::Tcp)
                .to_ports([HostPort::Range(dataplane_core::PortRange {
                    start: 30000,
                    end: 32767,
                })]),
        );
    let normal = HostPolicy::new("ssh-only", uplink())
        .with_order(10)
        .with_types([PolicyType::Ingress, PolicyType::Egress])
        .with_ingress(
            HostRule::new(HostAction::Allow)
                .protocol(Protocol::Tcp)
                .to_ports([HostPort::Number(2222)]),
        );
    let forward = HostPolicy::new("fwd", uplink())
        .on_forward()
        .with_ingress(HostRule::new(HostAction::Deny).from_nets(nets(&["10.0.0.0/8"])));
    let text = render(&state(vec![normal, pre, forward]));
    assert_eq!(
        rules(&text, "mangle", "DP-MGL-PRE"),
        [
            "! -i eth0 -j RETURN",
            "-m conntrack --ctstate RELATED,ESTABLISHED -j RETURN",
            "-m conntrack --ctstate UNTRACKED -j RETURN",
            "-d 172.18.0.2/32 -p tcp -m tcp --dport 22 -m comment --comment \"failsafe in\" -g DP-MGL-ALLOW",
            "-p tcp -m tcp --dport 30000:32767 -m comment --comment \"host policy nodeports\" -g DP-MGL-ALLOW",
        ]
    );
    assert_eq!(
        rules(&text, "mangle", "DP-MGL-ALLOW"),
        ["-j MARK --set-xmark 0x20000/0x20000"]
    );
    assert_eq!(
        rules(&text, "filter", "DP-HOST"),
        [
            "-m conntrack --ctstate RELATED,ESTABLISHED -j RETURN",
            "-m conntrack --ctstate UNTRACKED -j RETURN",
            "-m mark --mark 0x20000/0x20000 -j RETURN",
            "-i eth0 -d 172.18.0.2/32 -j DP-HOST-IN",
            "-i eth0 -j DP-HOST-FWDI",
        ]
    );
    // The node's own ingress: both normal policies in order, then the default deny.
    assert_eq!(
        rules(&text, "filter", "DP-HOST-IN"),
        [
            "-p tcp -m tcp --dport 2222 -m comment --comment \"host policy ssh-only\" -j RETURN",
            "-s 10.0.0.0/8 -m comment --comment \"host policy fwd\" -j DROP",
            "-m comment --comment \"host policy: default deny\" -j DROP",
        ]
    );
    // Forwarded: only the applyOnForward one.
    assert_eq!(
        rules(&text, "filter", "DP-HOST-FWDI"),
        [
            "-s 10.0.0.0/8 -m comment --comment \"host policy fwd\" -j DROP",
            "-m comment --comment \"host policy: default deny\" -j DROP",
        ]
    );
    // ssh-only applies to egress too, without rules: the node's own egress is closed but
    // for the failsafe ports (marked in mangle OUTPUT).
    assert_eq!(
        rules(&text, "filter", "DP-HOST-EGR"),
        ["-m comment --comment \"host policy: default deny\" -j DROP"]
    );
    assert_eq!(
        rules(&text, "mangle", "DP-MGL-OUT"),
        [
            "! -o eth0 -j RETURN",
            "-p udp -m udp --dport 53 -m comment --comment \"failsafe out\" -g DP-MGL-ALLOW"
        ]
    );
    assert!(rules(&text, "filter", "DP-FILTER").contains(&"-j DP-HOST"));
    assert!(rules(&text, "filter", "DP-FILTER-OUT").contains(&"-j DP-HOST-OUT"));
}

#[test]
fn without_a_host_endpoint_nothing_of_host_policy_is_written() {
    let mut s = state(vec![HostPolicy::new("deny", uplink())]);
    s.host_endpoints.clear();
    let text = render(&s);
    for absent in ["*raw", "*mangle", "DP-HOST", "DP-RAW", "DP-MGL"] {
        assert!(!text.contains(absent), "{absent} in:\n{text}");
    }
}

#[test]
fn more_ipsets_than_configured_are_refused_before_the_kernel_is_touched() {
    // 300 policies with two CIDRs each of their own: 300 sets, over the kernel's 256.
    let policies: Vec<HostPolicy> = (0..300u32)
        .map(|i| {
            let (a, b) = ((i / 256) as u8, (i % 256) as u8);
            HostPolicy::new(format!("p{i}"), uplink())
                .untracked()
                .with_ingress(HostRule::new(HostAction::Deny).from_nets(nets(&[
                    &format!("10.{a}.{b}.0/25"),
                    &format!("10.{a}.{b}.128/26"),
                ])))
        })
        .collect();
    // Every tool is a script that records its arguments; `ipset` lists no sets, the rest
    // fail: the refusal must come after the listing and before anything else runs.
    let dir = std::env::temp_dir().join(format!("dp-ipt-host-cap-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let log = dir.join("calls");
    let tool = |name: &str, body: &str| {
        let path = dir.join(name);
        std::fs::write(
            &path,
            format!(
                "#!/bin/sh\necho \"{name} $*\" >> '{}'\n{body}\n",
                log.display()
            ),
        )
        .unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
        path
    };
    let mut config = NetfilterConfig::iptables(None);
    config.iptables_mode = IptablesMode::Legacy;
    config.ipset = tool("ipset", "exit 0");
    config.iptables_restore = tool("iptables-restore", "exit 1");
    config.ip6tables_restore = tool("ip6tables-restore", "exit 1");
    config.iptables = tool("iptables", "exit 1");
    config.ip6tables = tool("ip6tables", "exit 1");
    let mut dp = IptablesDataplane::new(config);
    match dp.apply(&state(policies)) {
        Err(Error::CapacityExceeded {
            needed,
            capacity,
            what,
        }) => {
            // And the two hairpin sets (`NetfilterConfig::hairpin_ipset`).
            assert_eq!((needed, capacity), (302, 256));
            assert!(what.contains("300 of host policy"), "{what}");
        }
        other => panic!("expected CapacityExceeded, got {other:?}"),
    }
    let calls = std::fs::read_to_string(&log).unwrap_or_default();
    assert!(
        calls
            .lines()
            .all(|c| c.starts_with("ipset list") || c.starts_with("ipset save")),
        "{calls}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}
