//! Whether this system can run the eBPF backend ([`is_supported`], no side effect), and the
//! bpffs mount that creating a dataplane may need.

use std::path::Path;

use crate::error::EbpfError;

/// Where bpffs is mounted by convention, and where pin directories normally live.
pub(crate) const BPFFS: &str = "/sys/fs/bpf";

const BPF_FS_MAGIC: i64 = 0xcafe_4a11;

fn is_bpffs(dir: &Path) -> bool {
    nix::sys::statfs::statfs(dir).is_ok_and(|s| s.filesystem_type().0 == BPF_FS_MAGIC)
}

/// Checks that this system can run the eBPF backend: root, kernel BTF, and bpffs (mounted at
/// `/sys/fs/bpf`, or known to the kernel: [`EbpfDataplane::new`](crate::EbpfDataplane::new)
/// mounts it there when it is not). Changes nothing.
pub fn is_supported() -> Result<(), EbpfError> {
    // SAFETY: geteuid has no preconditions and cannot fail.
    if unsafe { libc::geteuid() } != 0 {
        return Err(EbpfError::NotSupported {
            reason: "needs root (CAP_BPF and CAP_NET_ADMIN)".to_owned(),
        });
    }
    if !Path::new("/sys/kernel/btf/vmlinux").exists() {
        return Err(EbpfError::NotSupported {
            reason: "kernel has no BTF (/sys/kernel/btf/vmlinux missing)".to_owned(),
        });
    }
    if is_bpffs(Path::new(BPFFS)) {
        return Ok(());
    }
    let known = std::fs::read_to_string("/proc/filesystems").is_ok_and(|all| {
        all.lines()
            .any(|l| l.split_whitespace().last() == Some("bpf"))
    });
    if known {
        Ok(())
    } else {
        Err(EbpfError::NotSupported {
            reason: "kernel has no bpf filesystem (not in /proc/filesystems)".to_owned(),
        })
    }
}

/// Mounts bpffs at `dir` when nothing is mounted there yet, root's only (mode 0700, as
/// systemd mounts `/sys/fs/bpf`).
pub(crate) fn ensure_bpffs(dir: &Path) -> Result<(), EbpfError> {
    use std::os::unix::fs::DirBuilderExt as _;
    if is_bpffs(dir) {
        return Ok(());
    }
    // (`/sys/fs/bpf` itself is sysfs's and exists; an existing mount point keeps its mode,
    // the mount's root is what counts.)
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(|source| EbpfError::Pin {
            path: dir.to_owned(),
            source,
        })?;
    nix::mount::mount(
        Some("bpffs"),
        dir,
        Some("bpf"),
        nix::mount::MsFlags::empty(),
        Some("mode=0700"),
    )
    .map_err(|e| EbpfError::Pin {
        path: dir.to_owned(),
        source: e.into(),
    })
}
