//! Paths and modes of the pin directory, shared by the loader and `loopback.rs`.

use std::path::{Path, PathBuf};

use crate::EbpfError;

pub(crate) fn links_dir(pin_dir: &Path) -> PathBuf {
    pin_dir.join("links")
}

/// Creates `dir` (and its missing parents) with mode 0700, and makes an existing `dir` 0700
/// (an earlier version created them 0755): the pins are root's (`bpf_obj_pin` makes each
/// 0600), and their names (interfaces, programs) are no one else's business either.
pub(crate) fn create_private_dir(dir: &Path) -> Result<(), EbpfError> {
    use std::os::unix::fs::{DirBuilderExt as _, PermissionsExt as _};
    let err = |source| EbpfError::Pin {
        path: dir.to_owned(),
        source,
    };
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(err)?;
    let mode = std::fs::metadata(dir).map_err(err)?.permissions().mode();
    if mode & 0o077 != 0 {
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700)).map_err(err)?;
    }
    Ok(())
}
