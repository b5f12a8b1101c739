//! `dpctl validate` and `dpctl diff` as a user runs them: exit codes and one-line errors.

use std::path::PathBuf;
use std::process::{Command, Output};

fn dpctl(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_dpctl"))
        .args(args)
        .output()
        .expect("dpctl runs")
}

fn write(dir: &tempfile::TempDir, name: &str, text: &str) -> PathBuf {
    let p = dir.path().join(name);
    std::fs::write(&p, text).expect("write temp file");
    p
}

const GOOD: &str = r"
apiVersion: dataplane.rs/v1alpha1
kind: DesiredState
node:
  name: node-0
  addresses: [172.18.0.10]
  serviceCIDRs: [10.96.0.0/12]
  interfaces: { uplink: eth0 }
services:
  - namespace: default
    name: web
    clusterIPs: [10.96.0.10]
    ports: [{ name: http, protocol: TCP, port: 80, targetPort: 8080, nodePort: 30080 }]
    backends: [{ ip: 10.244.1.5, nodeName: node-0 }]
";

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

#[test]
fn valid_file_exits_zero() {
    let dir = tempfile::tempdir().unwrap();
    let f = write(&dir, "good.yaml", GOOD);
    let out = dpctl(&["validate", "-f", f.to_str().unwrap()]);
    assert!(out.status.success(), "stderr: {}", stderr(&out));
    assert!(String::from_utf8_lossy(&out.stdout).contains("valid (1 services"));
}

#[test]
fn a_cluster_ip_outside_service_cidrs_is_valid_with_a_warning() {
    let dir = tempfile::tempdir().unwrap();
    let f = write(
        &dir,
        "outside.yaml",
        &GOOD.replace("10.96.0.10]", "10.200.0.10]"),
    );
    let out = dpctl(&["validate", "-f", f.to_str().unwrap()]);
    assert!(out.status.success(), "stderr: {}", stderr(&out));
    assert_eq!(
        stderr(&out).trim(),
        "warning: service default/web: clusterIPs[0]: 10.200.0.10 is outside node.serviceCIDRs"
    );
    let out = dpctl(&[
        "validate",
        "-f",
        write(&dir, "good.yaml", GOOD).to_str().unwrap(),
    ]);
    assert_eq!(
        stderr(&out),
        "",
        "no warning for a ClusterIP inside serviceCIDRs"
    );
}

#[test]
fn bad_files_exit_two_with_one_line_naming_the_field() {
    let dir = tempfile::tempdir().unwrap();
    let cases = [
        (
            "nodeport.yaml",
            GOOD.replace("30080", "80"),
            "ports[0].nodePort",
        ),
        (
            "unknown.yaml",
            GOOD.replace("targetPort: 8080", "targetPort: 8080, tagretPort: 1"),
            "tagretPort",
        ),
        (
            "cidr.yaml",
            GOOD.replace("10.96.0.0/12", "10.96.0.0/33"),
            "serviceCIDRs",
        ),
        (
            "hostbits.yaml",
            GOOD.replace("10.96.0.0/12", "10.96.0.1/12"),
            "serviceCIDRs[0]",
        ),
        ("version.yaml", GOOD.replace("v1alpha1", "v9"), "apiVersion"),
        (
            "port0.yaml",
            GOOD.replace("port: 80,", "port: 0,"),
            "ports[0].port",
        ),
        (
            "family.yaml",
            GOOD.replace("ip: 10.244.1.5", "ip: fd00::5"),
            "backends[0].ip",
        ),
        ("garbage.yaml", "{[: not yaml".to_owned(), "garbage.yaml"),
        ("bad.json", "{\"apiVersion\": 3}".to_owned(), "bad.json"),
    ];
    for (name, text, field) in cases {
        let f = write(&dir, name, &text);
        let out = dpctl(&["validate", "-f", f.to_str().unwrap()]);
        let err = stderr(&out);
        assert_eq!(out.status.code(), Some(2), "{name}: stderr {err}");
        assert_eq!(
            err.trim_end().lines().count(),
            1,
            "{name}: not one line: {err}"
        );
        assert!(err.contains(field), "{name}: {err:?} does not name {field}");
        assert!(!err.contains("panicked"), "{name}: {err}");
    }
    let out = dpctl(&["validate", "-f", "/nonexistent/state.yaml"]);
    assert_eq!(out.status.code(), Some(2));
}

#[test]
fn diff_lists_changed_objects() {
    let dir = tempfile::tempdir().unwrap();
    let old = write(&dir, "old.yaml", GOOD);
    let new = write(&dir, "new.yaml", &GOOD.replace("10.244.1.5", "10.244.1.6"));
    let out = dpctl(&[
        "diff",
        "-f",
        old.to_str().unwrap(),
        "-f",
        new.to_str().unwrap(),
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "~ service default/web\n"
    );
    let same = dpctl(&[
        "diff",
        "-f",
        old.to_str().unwrap(),
        "-f",
        old.to_str().unwrap(),
    ]);
    assert_eq!(String::from_utf8_lossy(&same.stdout), "no changes\n");
    let json = dpctl(&[
        "diff",
        "--json",
        "-f",
        old.to_str().unwrap(),
        "-f",
        new.to_str().unwrap(),
    ]);
    let v: serde_json::Value = serde_json::from_slice(&json.stdout).expect("json output");
    let change = &v["services"]["default/web"];
    assert_eq!(change["previous"]["backends"][0]["ip"], "10.244.1.5", "{v}");
    assert_eq!(change["current"]["backends"][0]["ip"], "10.244.1.6", "{v}");
}

/// `dpctl status` / `services` / `conntrack` / `flows` where nothing is programmed: exit code
/// 1 and one line naming every place looked at (the eBPF pin directory, the nftables table,
/// the iptables chains), whatever each found.
#[test]
fn live_commands_say_what_they_looked_for_when_nothing_is_programmed() {
    let empty = tempfile::tempdir().unwrap();
    let dir = empty.path().display().to_string();
    for command in ["status", "services", "conntrack", "flows"] {
        let out = dpctl(&[command, "--backend", "ebpf", "--pin-dir", &dir]);
        assert_eq!(out.status.code(), Some(1), "{command}: {}", stderr(&out));
        assert_eq!(
            stderr(&out).trim(),
            format!("error: nothing is programmed here: no pinned maps in {dir}"),
            "{command}"
        );
        assert!(out.stdout.is_empty(), "{command}");
    }
    // auto looks at all three (whether nft and iptables can answer here or not, each is named).
    let out = dpctl(&[
        "status",
        "--pin-dir",
        &dir,
        "--nft-table",
        "dpctl_test_absent",
        "--iptables-prefix",
        "DPCTLABSENT",
    ]);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    let err = stderr(&out);
    assert!(
        err.starts_with(&format!(
            "error: nothing is programmed here: no pinned maps in {dir}, "
        )),
        "{err}"
    );
    assert!(
        err.contains("nftables table inet dpctl_test_absent"),
        "{err}"
    );
    assert!(err.contains("iptables chains DPCTLABSENT-*"), "{err}");
    let out = dpctl(&["status", "--netns", "dpctl-test-absent-netns"]);
    assert_eq!(
        stderr(&out).trim(),
        "error: --netns /run/netns/dpctl-test-absent-netns: no such network namespace"
    );
}

#[test]
fn flows_refuses_bad_selections_with_exit_code_2() {
    for (flag, value) in [
        ("--verdict", "gone"),
        ("--reason", "bored"),
        ("--service", "web"),
        ("--from", "a/b/c"),
        ("--backend", "bpfx"),
    ] {
        let out = dpctl(&["flows", flag, value]);
        assert_eq!(out.status.code(), Some(2), "{flag} {value}");
        assert!(
            stderr(&out).contains(value),
            "{flag} {value}: {}",
            stderr(&out)
        );
    }
}
