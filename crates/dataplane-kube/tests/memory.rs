//! Memory at scale, counted by a counting global allocator: 10 000 Services with one
//! EndpointSlice of 10 endpoints each (the bench's objects), applied one at a time as a
//! watch delivers them, then translated. The node agent's budget is 64 MiB RSS at this scale
//! (README: "Memory"); the store's share is checked against a bound here. Run with
//! `-- --nocapture` to see the numbers.

use std::alloc::{GlobalAlloc, Layout, System};
use std::net::IpAddr;
use std::sync::atomic::{AtomicUsize, Ordering};

use dataplane_core::ObjectName;
use dataplane_kube::{Cluster, Object, Settings};

mod scale;
use scale::{node, service, slice, SERVICES};

struct Counting;

static CURRENT: AtomicUsize = AtomicUsize::new(0);
static PEAK: AtomicUsize = AtomicUsize::new(0);

// SAFETY: every call is passed on to the system allocator unchanged; only counted.
#[allow(unsafe_code)] // a global allocator is an unsafe trait; this one only counts
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let now = CURRENT.fetch_add(layout.size(), Ordering::Relaxed) + layout.size();
        PEAK.fetch_max(now, Ordering::Relaxed);
        // SAFETY: the caller's contract is passed on.
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        CURRENT.fetch_sub(layout.size(), Ordering::Relaxed);
        // SAFETY: the caller's contract is passed on.
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        if new_size >= layout.size() {
            let now = CURRENT.fetch_add(new_size - layout.size(), Ordering::Relaxed) + new_size
                - layout.size();
            PEAK.fetch_max(now, Ordering::Relaxed);
        } else {
            CURRENT.fetch_sub(layout.size() - new_size, Ordering::Relaxed);
        }
        // SAFETY: the caller's contract is passed on.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

fn no_interfaces(_: &ObjectName, _: &[IpAddr]) -> Option<String> {
    None
}

/// Bytes in MiB, for messages (precision past a kilobyte does not matter here).
#[allow(clippy::cast_precision_loss)]
fn mib(bytes: usize) -> f64 {
    bytes as f64 / (1024.0 * 1024.0)
}

fn loaded() -> Cluster {
    let template = dataplane_core::Node::new("node-0", [])
        .with_cluster_cidrs(["10.0.0.0/16".parse().unwrap()])
        .with_service_cidrs(["10.96.0.0/16".parse().unwrap()]);
    let mut cluster = Cluster::new(Settings::new("node-0", template));
    cluster.apply(node()).unwrap();
    for i in 0..SERVICES {
        cluster.apply(Object::from(service(i))).unwrap();
        cluster.apply(Object::from(slice(i, 0))).unwrap();
    }
    cluster
}

#[test]
fn ten_thousand_services_fit_the_budget() {
    // One test, so that no other test's allocations are counted.
    let base = CURRENT.load(Ordering::Relaxed);
    let mut cluster = loaded();
    let stored = CURRENT.load(Ordering::Relaxed) - base;
    PEAK.store(CURRENT.load(Ordering::Relaxed), Ordering::Relaxed);
    let changes = cluster.translate_changes(&no_interfaces).unwrap();
    assert_eq!(changes.changes.services.len(), SERVICES);
    drop(changes);
    let peak_changes = PEAK.load(Ordering::Relaxed) - base;
    let kept = CURRENT.load(Ordering::Relaxed) - base;
    drop(cluster);

    // A first sync as the agent can make it: the state brought up to date and lent.
    let base = CURRENT.load(Ordering::Relaxed);
    let mut cluster = loaded();
    PEAK.store(CURRENT.load(Ordering::Relaxed), Ordering::Relaxed);
    assert!(cluster
        .translate_in_place(&no_interfaces)
        .unwrap()
        .is_empty());
    assert_eq!(cluster.state().unwrap().services.len(), SERVICES);
    let peak_in_place = PEAK.load(Ordering::Relaxed) - base;
    println!(
        "stored objects: {:.1} MiB; stored + translated: {:.1} MiB; peak during the first translate_changes: {:.1} MiB, translate_in_place: {:.1} MiB",
        mib(stored),
        mib(kept),
        mib(peak_changes),
        mib(peak_in_place)
    );
    // Before the store kept EndpointSlices read and objects stripped to what translations
    // read: 73.9 MiB stored, 109.4 MiB with the translations, 127.3 MiB peak. Before the
    // state's backend lists were shrunk to fit, bags grew one entry at a time, and empty
    // drops and hints went unallocated: 21.4 MiB stored, 52.1 MiB with the translations,
    // 56.8 MiB peak. When written (and ObjectKey's names, and an endpoint's node and zone,
    // shared): 14.1, 32.4 and 37.1 MiB. With the model names sharing the keys' (core's
    // `SharedStr`), no change record kept by translate_in_place and the model services
    // boxed: 13.7, 28.0 and 29.2 MiB.
    assert!(
        stored < 16 << 20,
        "the stored objects take {:.1} MiB",
        mib(stored)
    );
    assert!(
        kept < 31 << 20,
        "the store with its translations takes {:.1} MiB",
        mib(kept)
    );
    assert!(
        peak_in_place < 32 << 20,
        "a first translate_in_place peaks at {:.1} MiB",
        mib(peak_in_place)
    );
}
