//! `BPF_MAP_UPDATE_BATCH` (Linux >= 5.6): many elements in one `bpf()` call.
//!
//! A full sync of 10k services writes ~150k map elements; one syscall each is most of its
//! time. aya 0.14 has no batch API and keeps its map fds to itself, so the loader keeps a
//! duplicate fd of the maps written in bulk ([`BatchFd`]). Kernels without batch support
//! (`EINVAL`/`ENOTSUPP`/`ENOSYS`) make [`BatchFd::update`] say so, and the caller writes the
//! elements one by one instead.

use std::io;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};

/// `BPF_MAP_UPDATE_BATCH` in `enum bpf_cmd`.
const BPF_MAP_UPDATE_BATCH: libc::c_long = 26;
/// Kernel-internal `ENOTSUPP`, which batch operations return for map types without them.
const ENOTSUPP: i32 = 524;

/// The `batch` member of `union bpf_attr`.
#[repr(C)]
#[derive(Debug, Default)]
struct BatchAttr {
    in_batch: u64,
    out_batch: u64,
    keys: u64,
    values: u64,
    count: u32,
    map_fd: u32,
    elem_flags: u64,
    flags: u64,
}

/// A duplicate of a map's fd for batch writes.
#[derive(Debug)]
pub(crate) struct BatchFd {
    fd: OwnedFd,
    /// Cleared after the kernel refused a batch: later calls go element by element at once.
    supported: std::sync::atomic::AtomicBool,
}

impl BatchFd {
    pub(crate) fn new(fd: impl AsFd) -> io::Result<Self> {
        Ok(Self {
            fd: fd.as_fd().try_clone_to_owned()?,
            supported: std::sync::atomic::AtomicBool::new(true),
        })
    }

    /// Writes `keys[i] -> values[i]` for every `i`. `Ok(false)`: the kernel has no batch
    /// updates for this map, nothing was written, write them one by one.
    pub(crate) fn update<K: aya::Pod, V: aya::Pod>(
        &self,
        keys: &[K],
        values: &[V],
    ) -> io::Result<bool> {
        assert_eq!(keys.len(), values.len(), "one value per key");
        if keys.is_empty() {
            return Ok(true);
        }
        if !self.supported.load(std::sync::atomic::Ordering::Relaxed) {
            return Ok(false);
        }
        let mut done = 0usize;
        while done < keys.len() {
            let mut attr = BatchAttr {
                keys: keys[done..].as_ptr() as u64,
                values: values[done..].as_ptr() as u64,
                count: u32::try_from(keys.len() - done).unwrap_or(u32::MAX),
                map_fd: self.fd.as_raw_fd().cast_unsigned(),
                ..BatchAttr::default()
            };
            // SAFETY: `attr` is the kernel's `bpf_attr.batch` layout; `keys` and `values`
            // point at `count` contiguous `K` and `V` (`Pod`, the map's key and value types,
            // whose sizes aya checked when the typed map was opened) that outlive the call;
            // the kernel only reads them and writes `attr.count`.
            let ret = unsafe {
                libc::syscall(
                    libc::SYS_bpf,
                    BPF_MAP_UPDATE_BATCH,
                    std::ptr::from_mut(&mut attr),
                    std::mem::size_of::<BatchAttr>(),
                )
            };
            if ret < 0 {
                let e = io::Error::last_os_error();
                let unsupported = matches!(
                    e.raw_os_error(),
                    Some(libc::EINVAL | libc::ENOSYS | ENOTSUPP)
                );
                if done == 0 && attr.count == 0 && unsupported {
                    self.supported
                        .store(false, std::sync::atomic::Ordering::Relaxed);
                    return Ok(false);
                }
                return Err(e);
            }
            // On success `count` is what was written (all of it); guard against zero.
            done += (attr.count as usize).max(1);
        }
        Ok(true)
    }
}
