//! The read-only views (`status`, `services`, `conntrack`, `flows`) say in `--help` what they
//! need, and without it fail with one clear line instead of a bare `EACCES`: the real `dpctl`
//! binary, run as root and then as `nobody` (uid/gid 65534, no groups, and so no
//! capabilities) against an eBPF dataplane programmed in a lab node, and against nftables.
//!
//! ```text
//!   node-0 (its own network namespace): pod-0-0; eBPF pins in /sys/fs/bpf/dpctl-priv-<pid>
//!   dpctl ... as root: works; as nobody: "dpctl status needs CAP_BPF and read access ...: run it as root"
//! ```

use std::os::unix::fs::PermissionsExt as _;
use std::os::unix::process::CommandExt as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use dataplane::{open, DataplaneKind, Options, Selection};
use dataplane_testkit::{require_root, Lab, LabSpec};

/// `nobody` on Debian.
const NOBODY: u32 = 65_534;

const VIEWS: [&str; 4] = ["status", "services", "conntrack", "flows"];

fn dpctl(args: &[&str]) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_dpctl"));
    cmd.args(args);
    cmd
}

fn text(out: &Output) -> (String, String) {
    (
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn help_says_what_each_view_needs() {
    for view in VIEWS {
        let out = dpctl(&[view, "--help"]).output().expect("dpctl runs");
        let (stdout, stderr) = text(&out);
        assert!(out.status.success(), "{view} --help: {stderr}");
        assert!(stdout.contains("Privileges: root."), "{view}: {stdout}");
        assert!(stdout.contains("CAP_BPF"), "{view}: {stdout}");
        assert!(stdout.contains("CAP_NET_ADMIN"), "{view}: {stdout}");
        let access = if view == "flows" {
            "read-write"
        } else {
            "read"
        };
        assert!(
            stdout.contains(&format!("{access} access to the pins")),
            "{view}: {stdout}"
        );
    }
}

/// Removes the dataplane, also when the test fails.
struct Programmed(dataplane::BoxDataplane, PathBuf);

impl Drop for Programmed {
    fn drop(&mut self) {
        let _ = self.0.reset();
        let _ = std::fs::remove_dir_all(&self.1);
    }
}

fn as_nobody(mut cmd: Command) -> Output {
    // Dropping from root to another uid clears the capabilities (no SECBIT_KEEP_CAPS), and
    // std drops the supplementary groups when it changes the gid as root.
    cmd.uid(NOBODY).gid(NOBODY).output().expect("dpctl runs")
}

fn target(pin_dir: &Path, netns: &Path, backend: &str) -> Vec<String> {
    vec![
        "--backend".to_owned(),
        backend.to_owned(),
        "--pin-dir".to_owned(),
        pin_dir.display().to_string(),
        "--netns".to_owned(),
        netns.display().to_string(),
    ]
}

#[test]
fn views_without_privileges_say_what_they_need() {
    if !require_root("views_without_privileges_say_what_they_need") {
        return;
    }
    let lab = Lab::new(LabSpec {
        nodes: 1,
        pods_per_node: 1,
        external_clients: 0,
        ipv6: false,
    })
    .expect("lab");
    let netns = lab.node(0).netns.path().to_owned();
    let pin_dir = PathBuf::from(format!("/sys/fs/bpf/dpctl-priv-{}", std::process::id()));
    let mut options = Options::in_netns(&netns);
    options.ebpf.pin_dir.clone_from(&pin_dir);
    let opened = open(Selection::Only(DataplaneKind::Ebpf), &options).expect("open");
    let mut dp = Programmed(opened.dataplane, pin_dir.clone());
    dp.0.apply(&lab.desired_state(0)).expect("apply");
    assert_eq!(
        std::fs::metadata(&pin_dir).unwrap().permissions().mode() & 0o777,
        0o700,
        "the pin directory is root's"
    );

    for view in VIEWS {
        let mut args = vec![view.to_owned()];
        args.extend(target(&pin_dir, &netns, "ebpf"));
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        // With privileges the same command works (flows: what is waiting, then exit).
        let out = dpctl(&args).output().expect("dpctl runs");
        let (_, stderr) = text(&out);
        assert!(out.status.success(), "{args:?} as root: {stderr}");

        let out = as_nobody(dpctl(&args));
        let (stdout, stderr) = text(&out);
        assert_eq!(out.status.code(), Some(1), "{args:?} as nobody: {stderr}");
        assert!(stdout.is_empty(), "{stdout}");
        let access = if view == "flows" {
            "read-write"
        } else {
            "read"
        };
        let want = format!(
            "error: dpctl {view} needs CAP_BPF and {access} access to the pins in {} \
             (root's: 0700, 0600), and CAP_SYS_ADMIN to enter --netns: run it as root: ",
            pin_dir.display()
        );
        assert!(
            stderr.starts_with(&want),
            "{args:?} as nobody:\n{stderr}\nwanted {want}"
        );
        assert!(
            stderr.contains("Permission denied"),
            "the cause follows: {stderr}"
        );
        assert_eq!(stderr.lines().count(), 1, "one line: {stderr}");
    }

    // netfilter: the nft netlink socket needs CAP_NET_ADMIN (no table needed to be refused).
    let mut args = vec!["status".to_owned()];
    args.extend(target(&pin_dir, &netns, "nftables"));
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let out = as_nobody(dpctl(&args));
    let (_, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.starts_with(
            "error: dpctl status needs CAP_NET_ADMIN, and CAP_SYS_ADMIN to enter --netns: \
             run it as root: "
        ),
        "{stderr}"
    );
}
