//! `BPF_MAP_UPDATE_BATCH` and `BPF_MAP_LOOKUP_BATCH` (Linux >= 5.6): many elements in one
//! `bpf()` call.
//!
//! A full sync of 10k services writes ~150k map elements; one syscall each is most of its
//! time. aya 0.14 has no batch API and keeps its map fds to itself, so the loader keeps a
//! duplicate fd of the maps written in bulk ([`BatchFd`]). Kernels without batch support
//! (`EINVAL`/`ENOTSUPP`/`ENOSYS`) make [`BatchFd::update`] say so, and the caller writes the
//! elements one by one instead.

use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};

/// `BPF_MAP_LOOKUP_BATCH` in `enum bpf_cmd`.
const BPF_MAP_LOOKUP_BATCH: libc::c_long = 24;
/// `BPF_MAP_UPDATE_BATCH` in `enum bpf_cmd`.
const BPF_MAP_UPDATE_BATCH: libc::c_long = 26;
/// Elements per lookup call (bounds the buffers).
const LOOKUP_CHUNK: usize = 8192;
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
    /// Cleared after the kernel refused a batch update: later calls go element by element
    /// at once.
    supported: std::sync::atomic::AtomicBool,
    /// The same for batch lookups.
    lookup_supported: std::sync::atomic::AtomicBool,
}

impl BatchFd {
    pub(crate) fn new(fd: impl AsFd) -> io::Result<Self> {
        Ok(Self {
            fd: fd.as_fd().try_clone_to_owned()?,
            supported: std::sync::atomic::AtomicBool::new(true),
            lookup_supported: std::sync::atomic::AtomicBool::new(true),
        })
    }

    /// The map's fd.
    pub(crate) fn fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
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

    /// One `BPF_MAP_LOOKUP_BATCH` call: up to `keys.len()` elements after batch position
    /// `from` (`None`: the start) into `keys` and `values` (the map's key and value types,
    /// as long as each other); the position to go on from goes to `next`. Returns how many
    /// came and the error, if any (`ENOENT` at the end, with the count still valid).
    fn lookup_batch<K: aya::Pod, V: aya::Pod>(
        &self,
        from: Option<u32>,
        next: &mut u32,
        keys: &mut [K],
        values: &mut [V],
    ) -> (usize, Option<io::Error>) {
        let room = keys.len().min(values.len());
        let mut attr = BatchAttr {
            in_batch: from.as_ref().map_or(0, |k| std::ptr::from_ref(k) as u64),
            out_batch: std::ptr::from_mut(next) as u64,
            keys: keys.as_mut_ptr() as u64,
            values: values.as_mut_ptr() as u64,
            count: u32::try_from(room).unwrap_or(u32::MAX),
            map_fd: self.fd.as_raw_fd().cast_unsigned(),
            ..BatchAttr::default()
        };
        // SAFETY: `attr` is the kernel's `bpf_attr.batch` layout; `keys` and `values` have
        // room for `count` keys and values of the map's types (whose sizes aya checked when
        // the typed map was opened); `in_batch`/`out_batch` point at `u32`s (the batch token
        // of array and hash maps) that outlive the call.
        let ret = unsafe {
            libc::syscall(
                libc::SYS_bpf,
                BPF_MAP_LOOKUP_BATCH,
                std::ptr::from_mut(&mut attr),
                std::mem::size_of::<BatchAttr>(),
            )
        };
        let got = (attr.count as usize).min(room);
        (got, (ret < 0).then(io::Error::last_os_error))
    }

    /// Every element of a hash map (plain or LRU), a few thousand per `bpf()` call.
    /// `Ok(None)`: the kernel has no batch lookups for this map, walk it with
    /// `next_key`/`lookup` instead (two calls per element). Elements added or removed while
    /// the map is read may or may not be in the result, as with such a walk.
    pub(crate) fn lookup_all<K: aya::Pod, V: aya::Pod>(&self) -> io::Result<Option<Vec<(K, V)>>> {
        if !self
            .lookup_supported
            .load(std::sync::atomic::Ordering::Relaxed)
        {
            return Ok(None);
        }
        let mut chunk = LOOKUP_CHUNK;
        // SAFETY: `K`/`V: Pod` are plain data for which every bit pattern, zero included, is
        // valid.
        let zk: K = unsafe { std::mem::zeroed() };
        // SAFETY: as above.
        let zv: V = unsafe { std::mem::zeroed() };
        let mut out = Vec::new();
        let mut keys = vec![zk; chunk];
        let mut values = vec![zv; chunk];
        // Hash maps take a bucket index as the batch position; none: from the start.
        let mut from: Option<u32> = None;
        let mut next = 0u32;
        loop {
            let (got, failed) = self.lookup_batch(from, &mut next, &mut keys, &mut values);
            if let Some(e) = failed {
                match e.raw_os_error() {
                    // The end of the map: `count` says how many came before it.
                    Some(libc::ENOENT) => {
                        out.extend(
                            keys[..got]
                                .iter()
                                .copied()
                                .zip(values[..got].iter().copied()),
                        );
                        return Ok(Some(out));
                    }
                    // One bucket holds more elements than fit: retry it with more room.
                    Some(libc::ENOSPC) if chunk < (1 << 20) => {
                        chunk *= 4;
                        keys = vec![zk; chunk];
                        values = vec![zv; chunk];
                        continue;
                    }
                    Some(libc::EINVAL | libc::ENOSYS | ENOTSUPP)
                        if out.is_empty() && from.is_none() =>
                    {
                        self.lookup_supported
                            .store(false, std::sync::atomic::Ordering::Relaxed);
                        return Ok(None);
                    }
                    _ => return Err(e),
                }
            }
            out.extend(
                keys[..got]
                    .iter()
                    .copied()
                    .zip(values[..got].iter().copied()),
            );
            from = Some(next);
        }
    }

    /// Reads `count` consecutive elements of an array map from index `start` (fewer when
    /// the array ends first). `Ok(None)`: the kernel has no batch lookups for this map, read
    /// them one by one (a `bpf()` call per index, which dominates reading a pinned map back at
    /// startup).
    pub(crate) fn lookup_array<V: aya::Pod>(
        &self,
        start: u32,
        count: usize,
    ) -> io::Result<Option<Vec<V>>> {
        let mut out: Vec<V> = Vec::with_capacity(count);
        if count == 0 {
            return Ok(Some(out));
        }
        if !self
            .lookup_supported
            .load(std::sync::atomic::Ordering::Relaxed)
        {
            return Ok(None);
        }
        let chunk = count.min(LOOKUP_CHUNK);
        let mut keys = vec![0u32; chunk];
        // SAFETY: `V: Pod` is plain data for which every bit pattern, zero included, is valid.
        let mut values: Vec<V> = vec![unsafe { std::mem::zeroed() }; chunk];
        // The kernel starts after the key `in_batch` points at (no pointer: at the start)
        // and leaves in `out_batch` where to go on.
        let mut from: Option<u32> = start.checked_sub(1);
        let mut next = 0u32;
        while out.len() < count {
            let want = (count - out.len()).min(chunk);
            let (got, failed) =
                self.lookup_batch(from, &mut next, &mut keys[..want], &mut values[..want]);
            if let Some(e) = failed {
                match e.raw_os_error() {
                    // The end of the array: `count` says how many came before it.
                    Some(libc::ENOENT) => {
                        out.extend_from_slice(&values[..got]);
                        break;
                    }
                    Some(libc::EINVAL | libc::ENOSYS | ENOTSUPP) if out.is_empty() => {
                        self.lookup_supported
                            .store(false, std::sync::atomic::Ordering::Relaxed);
                        return Ok(None);
                    }
                    _ => return Err(e),
                }
            }
            if got == 0 {
                break;
            }
            out.extend_from_slice(&values[..got]);
            from = Some(next);
        }
        Ok(Some(out))
    }
}
