//! The few `bpf(2)` commands aya 0.14 does not offer on what we hold: opening a pin with
//! flags (`BPF_OBJ_GET`, read-only maps for `LiveEbpf`) and detaching a link at once
//! (`BPF_LINK_DETACH`).

use std::io;
use std::os::fd::{AsRawFd as _, FromRawFd, OwnedFd};
use std::path::Path;

/// `BPF_OBJ_GET` in `enum bpf_cmd`.
const BPF_OBJ_GET: libc::c_long = 7;
/// `BPF_LINK_DETACH` in `enum bpf_cmd` (Linux >= 5.9).
const BPF_LINK_DETACH: libc::c_long = 34;
/// `BPF_F_RDONLY`: the fd `BPF_OBJ_GET` returns can read the map, not write it.
pub(crate) const BPF_F_RDONLY: u32 = 1 << 3;

/// The `obj` member of `union bpf_attr` (`BPF_OBJ_GET`), padded to its size so that every
/// byte the kernel reads is initialised (it refuses non-zero bytes after the last field).
#[repr(C)]
#[derive(Debug, Default)]
struct ObjAttr {
    pathname: u64,
    bpf_fd: u32,
    file_flags: u32,
    path_fd: i32,
    pad: u32,
}

/// The `link_detach` member of `union bpf_attr`.
#[repr(C)]
#[derive(Debug, Default)]
struct LinkDetachAttr {
    link_fd: u32,
}

/// `bpf(cmd, attr, sizeof attr)`: the syscall's result, or the error it set.
///
/// # Safety
/// `attr` must be the `union bpf_attr` member of `cmd`, every byte initialised, and every
/// pointer in it valid for what `cmd` reads or writes through it for the call's duration.
pub(crate) unsafe fn sys_bpf<A>(cmd: libc::c_long, attr: &mut A) -> io::Result<libc::c_long> {
    // SAFETY: the caller's promise.
    let ret = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            cmd,
            std::ptr::from_mut(attr),
            std::mem::size_of::<A>(),
        )
    };
    if ret < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(ret)
    }
}

/// `BPF_OBJ_GET` of the object pinned at `path` with `file_flags`.
pub(crate) fn obj_get(path: &Path, file_flags: u32) -> io::Result<OwnedFd> {
    use std::os::unix::ffi::OsStrExt as _;
    let c = std::ffi::CString::new(path.as_os_str().as_bytes())
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
    let mut attr = ObjAttr {
        pathname: c.as_ptr() as u64,
        file_flags,
        ..ObjAttr::default()
    };
    // SAFETY: `attr` is the kernel's `bpf_attr.obj` layout with every byte initialised;
    // `pathname` points at a NUL-terminated string that outlives the call; the kernel only
    // reads `attr`.
    let ret = unsafe { sys_bpf(BPF_OBJ_GET, &mut attr) }?;
    let fd = i32::try_from(ret).map_err(|_| io::Error::other("fd out of range"))?;
    // SAFETY: on success `BPF_OBJ_GET` returns a new fd that nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// Detaches the link pinned at `path` now (`BPF_LINK_DETACH`), whoever else holds it; the pin
/// itself stays. Without it a link is detached only when its last reference goes, and when
/// that is the pin's inode being evicted the kernel frees it in a work item
/// (`bpf_link_put` -> `bpf_link_put_deferred`): the program would still run for a while
/// after `reset()` returned. `Ok(false)`: nothing pinned there.
pub(crate) fn detach_pinned_link(path: &Path) -> io::Result<bool> {
    let fd = match obj_get(path, 0) {
        Ok(fd) => fd,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(false),
        Err(e) => return Err(e),
    };
    let mut attr = LinkDetachAttr {
        link_fd: u32::try_from(fd.as_raw_fd()).map_err(|_| io::Error::other("negative fd"))?,
    };
    // SAFETY: `attr` is the kernel's `bpf_attr.link_detach` layout, every byte initialised,
    // no pointers; `fd` stays open for the call.
    unsafe { sys_bpf(BPF_LINK_DETACH, &mut attr) }?;
    Ok(true)
}
