//! Array maps created with `BPF_F_MMAPABLE` (Linux >= 5.5), read and written through a
//! shared mapping of their values instead of one `bpf()` element copy each.
//!
//! A full sync writes a backend and a slot per backend of every service: as batched
//! `BPF_MAP_UPDATE_BATCH` calls the kernel copies and checks every element, as stores into
//! the mapping it is plain memory writes (the apply bench has the figures). Maps pinned by a
//! version without the flag cannot be mapped; the writer then uses the batch calls.
//!
//! The datapath reads these arrays while they are written. The writer only stores into
//! elements nothing points at yet (fresh slot ranges, new backend ids) and publishes them
//! with a `dp_svc` update afterwards, a `bpf()` call; [`MmapArray::publish`] is the fence
//! that orders the stores before it.

use std::io;
use std::marker::PhantomData;
use std::os::fd::{AsRawFd, BorrowedFd, OwnedFd};
use std::sync::atomic::{AtomicPtr, Ordering};

/// `BPF_F_MMAPABLE` in the kernel's map flags.
pub(crate) const BPF_F_MMAPABLE: u32 = 1 << 10;

/// Bytes mapped at a time. The kernel maps the whole requested range at once (all of it
/// counts as resident), so a chunk is mapped on first use: the process maps only the parts of
/// an array it touches, not the whole of `dp_slots`.
const CHUNK_BYTES: usize = 256 << 10;

/// A mapping of an array map's values. The kernel lays them out `round_up(value_size, 8)`
/// bytes apart from offset 0; they are mapped in chunks of whole elements and pages.
pub(crate) struct MmapArray<V> {
    fd: OwnedFd,
    entries: u32,
    stride: usize,
    /// Bytes per chunk: a multiple of both the page size and `stride`.
    chunk: usize,
    /// The value area's size rounded up to pages: the last chunk ends there.
    area: usize,
    chunks: Vec<AtomicPtr<u8>>,
    _value: PhantomData<V>,
}

impl<V> std::fmt::Debug for MmapArray<V> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MmapArray")
            .field("entries", &self.entries)
            .field("stride", &self.stride)
            .finish_non_exhaustive()
    }
}

fn gcd(a: usize, b: usize) -> usize {
    if b == 0 {
        a
    } else {
        gcd(b, a % b)
    }
}

impl<V: aya::Pod> MmapArray<V> {
    /// Prepares mapping the `entries` values of the array map `fd` (whose value type is `V`)
    /// and maps the first chunk, which fails for a map without `BPF_F_MMAPABLE`.
    pub(crate) fn new(fd: BorrowedFd<'_>, entries: u32) -> io::Result<Self> {
        let stride = size_of::<V>().next_multiple_of(8);
        // SAFETY: sysconf has no preconditions.
        let page = usize::try_from(unsafe { libc::sysconf(libc::_SC_PAGESIZE) }).unwrap_or(4096);
        let unit = page / gcd(page, stride) * stride;
        let chunk = unit * (CHUNK_BYTES / unit).max(1);
        let area = (stride * entries as usize).next_multiple_of(page);
        let n = area.div_ceil(chunk);
        let out = Self {
            fd: fd.try_clone_to_owned()?,
            entries,
            stride,
            chunk,
            area,
            chunks: (0..n)
                .map(|_| AtomicPtr::new(std::ptr::null_mut()))
                .collect(),
            _value: PhantomData,
        };
        if n > 0 {
            out.chunk_base(0)?;
        }
        Ok(out)
    }

    /// Number of elements.
    pub(crate) fn len(&self) -> u32 {
        self.entries
    }

    /// The mapping of chunk `c`, mapped now if it was not.
    fn chunk_base(&self, c: usize) -> io::Result<*mut u8> {
        let slot = &self.chunks[c];
        let p = slot.load(Ordering::Acquire);
        if !p.is_null() {
            return Ok(p);
        }
        let offset = c * self.chunk;
        let len = self.chunk.min(self.area - offset);
        let off = libc::off_t::try_from(offset).map_err(io::Error::other)?;
        // SAFETY: a fresh shared mapping of part of the map's value area: `offset` is a
        // multiple of the page size and `offset + len` within the area (the kernel checks
        // both, and refuses maps without BPF_F_MMAPABLE).
        let ptr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED,
                self.fd.as_raw_fd(),
                off,
            )
        };
        if ptr == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        let ptr = ptr.cast::<u8>();
        match slot.compare_exchange(
            std::ptr::null_mut(),
            ptr,
            Ordering::AcqRel,
            Ordering::Acquire,
        ) {
            Ok(_) => Ok(ptr),
            Err(theirs) => {
                // SAFETY: `ptr`/`len` is the mapping made above, which nothing else has seen.
                unsafe { libc::munmap(ptr.cast(), len) };
                Ok(theirs)
            }
        }
    }

    fn slot(&self, index: u32) -> io::Result<Option<*mut V>> {
        if index >= self.entries {
            return Ok(None);
        }
        let byte = index as usize * self.stride;
        let base = self.chunk_base(byte / self.chunk)?;
        // SAFETY: the chunk holds whole elements (its size is a multiple of `stride`), so
        // element `index` lies inside it; the kernel aligns elements to 8 bytes, enough for
        // any `Pod` map value.
        Ok(Some(unsafe { base.add(byte % self.chunk).cast::<V>() }))
    }

    /// Element `index`, `None` past the end.
    pub(crate) fn get(&self, index: u32) -> io::Result<Option<V>> {
        // SAFETY: `slot` points at a mapped, aligned `V`; every bit pattern is a valid `Pod`.
        Ok(self.slot(index)?.map(|p| unsafe { p.read_volatile() }))
    }

    /// `count` elements from `start` (fewer where the array ends).
    pub(crate) fn read(&self, start: u32, count: u32) -> io::Result<Vec<V>> {
        let end = start.saturating_add(count).min(self.entries);
        let mut out = Vec::with_capacity(end.saturating_sub(start) as usize);
        for i in start..end {
            out.extend(self.get(i)?);
        }
        Ok(out)
    }

    /// Stores `value` at `index`; `Ok(false)` past the end.
    pub(crate) fn set(&mut self, index: u32, value: V) -> io::Result<bool> {
        let Some(p) = self.slot(index)? else {
            return Ok(false);
        };
        // SAFETY: as in `get`; `&mut self` keeps this process's writers apart.
        unsafe { p.write_volatile(value) };
        Ok(true)
    }

    /// The chunk element `index` lies in.
    pub(crate) fn chunk_of(&self, index: u32) -> usize {
        index as usize * self.stride / self.chunk
    }

    /// Elements per chunk.
    pub(crate) fn chunk_elements(&self) -> usize {
        self.chunk / self.stride
    }

    /// Unmaps chunk `c` (mapped again on its next use): the values stay in the map, the
    /// process stops counting its pages as resident.
    pub(crate) fn unmap_chunk(&mut self, c: usize) {
        let Some(slot) = self.chunks.get(c) else {
            return;
        };
        let p = slot.swap(std::ptr::null_mut(), Ordering::AcqRel);
        if !p.is_null() {
            let len = self.chunk.min(self.area - c * self.chunk);
            // SAFETY: `p`/`len` is the mapping `chunk_base` made for chunk `c`, taken out of
            // its slot above; `&mut self` means no pointer from `slot` is in use.
            unsafe { libc::munmap(p.cast(), len) };
        }
    }

    /// Unmaps every chunk (see [`MmapArray::unmap_chunk`]).
    pub(crate) fn unmap_all(&mut self) {
        for c in 0..self.chunks.len() {
            self.unmap_chunk(c);
        }
    }

    /// Orders the stores so far before whatever publishes them (the next map update).
    pub(crate) fn publish() {
        std::sync::atomic::fence(Ordering::SeqCst);
    }
}

impl<V> Drop for MmapArray<V> {
    fn drop(&mut self) {
        for (c, slot) in self.chunks.iter().enumerate() {
            let p = slot.load(Ordering::Acquire);
            if !p.is_null() {
                let len = self.chunk.min(self.area - c * self.chunk);
                // SAFETY: `p`/`len` is the mapping `chunk_base` made for chunk `c`, unmapped
                // only here.
                unsafe { libc::munmap(p.cast(), len) };
            }
        }
    }
}
