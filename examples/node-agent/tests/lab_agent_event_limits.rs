//! `--event-drop-rate`/`--event-drop-burst` reach the kernel (root): the eBPF agent's
//! `dp_config.ev_limits` (read through its pin with bpftool) holds them for drops, and the
//! nftables agent's reject rule logs at that rate. The parsing and the mapping per backend
//! are unit tests in `src/cli.rs`.

mod common;

use std::process::Command;

use common::agent::{Agents, Backend};
use common::manifests::{self, ManifestDirs, WEB};
use common::wait_until;
use dataplane_testkit::{Lab, LabSpec};

/// `EV_KIND_DROP` (bpf/lib/maps.h): the drop events' index in `ev_limits`.
const EV_KIND_DROP: usize = 1;

/// A one-node lab and an agent with `backend` and `flags`, synced once, with Service `web`
/// (no endpoints: the nftables agent writes its reject rule, which logs).
fn start(backend: Backend, flags: &[&str]) -> (Lab, ManifestDirs, Agents) {
    let lab = Lab::new(LabSpec {
        nodes: 1,
        pods_per_node: 1,
        external_clients: 0,
        ipv6: false,
    })
    .expect("lab");
    let dirs = ManifestDirs::new(1);
    dirs.write("cluster.yaml", &manifests::cluster(&lab));
    dirs.write("web.yaml", &manifests::service(&WEB));
    let mut agents = Agents::start(&lab, backend, &dirs, flags);
    agents.wait_all_synced();
    (lab, dirs, agents)
}

fn output(cmd: &mut Command) -> Result<String, String> {
    let out = cmd.output().map_err(|e| format!("{cmd:?}: {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "{cmd:?}: {}: {}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

#[test]
fn the_drop_event_limit_reaches_the_ebpf_programs() {
    if !dataplane_testkit::require_root("the_drop_event_limit_reaches_the_ebpf_programs") {
        return;
    }
    let _serial = common::serial();
    let (_lab, _dirs, agents) = start(
        Backend::Ebpf,
        &["--event-drop-rate", "7", "--event-drop-burst", "9"],
    );
    let pin = agents.pin_dir(0).join("dp_config");
    let dump = output(
        Command::new("bpftool")
            .args(["-j", "map", "dump", "pinned"])
            .arg(&pin),
    )
    .expect("bpftool reads dp_config");
    let entries: serde_json::Value = serde_json::from_str(&dump).expect("bpftool's JSON");
    let limits = &entries[0]["formatted"]["value"]["ev_limits"];
    assert_eq!(
        (
            &limits[EV_KIND_DROP]["rate"],
            &limits[EV_KIND_DROP]["burst"]
        ),
        (&serde_json::json!(7), &serde_json::json!(9)),
        "dp_config: {dump}"
    );
    // The other kinds keep their default: no limit.
    for kind in [2, 3] {
        assert_eq!(
            limits[kind]["rate"],
            serde_json::json!(0),
            "dp_config: {dump}"
        );
    }
}

#[test]
fn the_drop_event_limit_reaches_the_nftables_log_rules() {
    if !dataplane_testkit::require_root("the_drop_event_limit_reaches_the_nftables_log_rules") {
        return;
    }
    let _serial = common::serial();
    let (_lab, _dirs, agents) = start(Backend::Nft, &["--event-drop-rate", "7"]);
    let netns = agents.netns(0).path().to_owned();
    wait_until("the reject rule of web logs at 7/s", || {
        let rules = output(
            Command::new("nsenter")
                .arg(format!("--net={}", netns.display()))
                .args(["--", "nft", "list", "ruleset"]),
        )?;
        let logging: Vec<&str> = rules
            .lines()
            .filter(|l| l.contains(" log prefix "))
            .collect();
        if !logging.is_empty()
            && logging
                .iter()
                .all(|l| l.contains("limit rate 7/second burst 7 packets"))
        {
            Ok(())
        } else {
            Err(format!("log rules: {logging:#?}"))
        }
    });
}
