//! Keeping the heap small: one malloc arena ([`single_arena`]), and freed heap memory returned
//! to the system ([`trim`]) once every kind is listed (the parse garbage of the listing) and
//! after a full sync.
//!
//! A full sync makes transient copies of parts of the translated state (the dataplane's own
//! rendering of it, its plan): MiB at 10k services, freed when the sync ends. glibc's
//! allocator keeps freed memory mapped for reuse, so the agent's RSS would stay at that peak
//! between full syncs. `malloc_trim(0)` hands the free
//! pages of every arena back to the kernel (glibc ≥ 2.8 also releases free pages inside the
//! heap, not only its top: `man 3 malloc_trim`). It costs a walk over the free lists, a few
//! milliseconds, once per full sync. Other allocators (musl) have no such call: nothing is
//! done there.

/// One malloc arena for the whole process (glibc's `M_ARENA_MAX`, as `MALLOC_ARENA_MAX=1`
/// does), to be called first thing in `main`, before any thread starts. glibc gives each
/// thread that meets a locked arena an arena of its own, up to eight per core: the agent's
/// threads (the runtime's, the dataplane's, the manifest reader's) each kept their own heap,
/// every one with its own free and fragmented pages, and objects made on one thread (parsed
/// manifests) and freed on another stay in the arena that made them. The agent allocates
/// from one thread at a time nearly always (the loop waits for the dataplane's thread), so
/// sharing one arena costs no measurable contention; at 10k services it saves several MiB
/// (BENCHMARKS.md).
///
/// Also a fixed mmap threshold ([`MMAP_THRESHOLD`]): glibc raises its threshold to the size
/// of any mapped block freed (up to 32 MiB), after which the big buffers of a sync (the
/// state's lists growing, hash tables rehashing, a backend's plan) come from the heap and
/// leave holes there when freed; mapped, they go back to the system when freed.
pub fn single_arena() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: `mallopt` only sets tunables of glibc's allocator; called before any other
    // thread exists, it races with nothing.
    #[allow(unsafe_code)]
    unsafe {
        libc::mallopt(libc::M_ARENA_MAX, 1);
        libc::mallopt(libc::M_MMAP_THRESHOLD, MMAP_THRESHOLD);
    }
}

/// Blocks of this many bytes or more are mapped on their own (glibc's default before it
/// adjusts it).
pub const MMAP_THRESHOLD: i32 = 128 * 1024;

/// Returns the free heap to the system; the process's `VmRSS` before and after, in KiB, when
/// it could be read.
pub fn trim() -> Option<(u64, u64)> {
    let before = rss_kib();
    release();
    Some((before?, rss_kib()?))
}

#[cfg(all(target_os = "linux", target_env = "gnu"))]
fn release() {
    // SAFETY: `malloc_trim` only gives free memory of glibc's own heaps back to the kernel;
    // it may be called from any thread at any time and touches no memory the program holds.
    #[allow(unsafe_code)]
    unsafe {
        libc::malloc_trim(0);
    }
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
fn release() {}

/// This process's resident memory (`VmRSS` of `/proc/self/status`), in KiB.
pub fn rss_kib() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))?
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()
        .ok()
}
