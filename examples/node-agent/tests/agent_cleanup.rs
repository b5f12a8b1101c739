//! `--cleanup` with kinds that cannot run here (unprivileged: a fake pin directory and fake
//! checks): it fails when such a kind may have left state, rather than say "clean".

use std::cell::RefCell;

use clap::Parser;
use dataplane::DataplaneKind;
use dataplane_agent::cleanup_kinds;
use dataplane_agent::cli::Args;

fn args(pin_dir: &std::path::Path) -> Args {
    Args::try_parse_from([
        "dataplane-agent",
        "--cleanup",
        "--bpf-pin-dir",
        pin_dir.to_str().unwrap(),
    ])
    .unwrap()
}

#[test]
fn pins_left_by_an_ebpf_dataplane_that_cannot_run_fail_the_cleanup() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("conntrack"), "").unwrap();
    let reset = RefCell::new(Vec::new());
    let result = cleanup_kinds(
        &args(dir.path()),
        |kind| match kind {
            DataplaneKind::Ebpf => Err("the kernel has no BTF".to_owned()),
            _ => Ok(()),
        },
        |kind| {
            reset.borrow_mut().push(kind);
            Ok(())
        },
    );
    let message = format!("{:#}", result.expect_err("pins remain"));
    assert!(
        message.contains(&dir.path().display().to_string()),
        "{message}"
    );
    assert!(message.contains("no BTF"), "{message}");
    // The kinds that run were cleaned all the same.
    assert_eq!(
        *reset.borrow(),
        [DataplaneKind::Nftables, DataplaneKind::Iptables]
    );
}

#[test]
fn no_pins_and_every_other_kind_cleaned_is_success() {
    let dir = tempfile::tempdir().unwrap();
    let result = cleanup_kinds(
        &args(dir.path()),
        |kind| match kind {
            DataplaneKind::Ebpf => Err("the kernel has no BTF".to_owned()),
            _ => Ok(()),
        },
        |_| Ok(()),
    );
    result.unwrap();
}

#[test]
fn a_netfilter_kind_that_cannot_run_cannot_be_checked_and_fails_the_cleanup() {
    let dir = tempfile::tempdir().unwrap();
    let result = cleanup_kinds(
        &args(dir.path()),
        |kind| match kind {
            DataplaneKind::Iptables => Err("`iptables-restore` cannot run".to_owned()),
            _ => Ok(()),
        },
        |_| Ok(()),
    );
    let message = format!("{:#}", result.expect_err("may remain"));
    assert!(message.contains("iptables"), "{message}");
    assert!(message.contains("may remain"), "{message}");
}
