//! Snapshots of a pin directory: every map's keys and values, every link's identity, for the
//! tests that show something changed nothing in the kernel (`live_inspect.rs`: reading a
//! running dataplane; `rejected_apply.rs`: a refused sync).

use std::collections::BTreeMap;
use std::os::fd::{AsFd, AsRawFd};
use std::path::Path;
use std::time::{Duration, Instant};

/// `union bpf_attr` for the element commands.
#[repr(C)]
#[derive(Default)]
struct ElemAttr {
    map_fd: u32,
    pad: u32,
    key: u64,
    value: u64,
    flags: u64,
}

const BPF_MAP_LOOKUP_ELEM: libc::c_long = 1;
const BPF_MAP_GET_NEXT_KEY: libc::c_long = 4;

// The raw map dump: `bpf(2)` through libc, as src/batch.rs does.
#[allow(unsafe_code)]
fn bpf(cmd: libc::c_long, attr: &mut ElemAttr) -> std::io::Result<()> {
    // SAFETY: `attr` is the kernel's element-command layout, fully initialised; `key` and
    // `value` point at buffers of the map's key and (per-CPU) value sizes that outlive the
    // call.
    let ret = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            cmd,
            std::ptr::from_mut(attr),
            std::mem::size_of::<ElemAttr>(),
        )
    };
    if ret < 0 {
        Err(std::io::Error::last_os_error())
    } else {
        Ok(())
    }
}

/// Every key and value of the map pinned at `path`, as bytes (per-CPU values: every CPU's);
/// a map that cannot be walked (a ring buffer) as the error it gives.
pub fn dump(path: &Path) -> Result<BTreeMap<Vec<u8>, Vec<u8>>, String> {
    let map = aya::maps::MapData::from_pin(path).map_err(|e| e.to_string())?;
    let info = map.info().map_err(|e| e.to_string())?;
    let per_cpu = matches!(
        info.map_type(),
        Ok(aya::maps::MapType::PerCpuArray
            | aya::maps::MapType::PerCpuHash
            | aya::maps::MapType::LruPerCpuHash)
    );
    let value_size = if per_cpu {
        (info.value_size() as usize).next_multiple_of(8) * aya::util::nr_cpus().unwrap()
    } else {
        info.value_size() as usize
    };
    let fd = map.fd().as_fd().as_raw_fd().cast_unsigned();
    let mut out = BTreeMap::new();
    let mut key: Option<Vec<u8>> = None;
    loop {
        let mut next = vec![0u8; info.key_size() as usize];
        let mut attr = ElemAttr {
            map_fd: fd,
            key: key.as_ref().map_or(0, |k| k.as_ptr() as u64),
            value: next.as_mut_ptr() as u64,
            ..ElemAttr::default()
        };
        match bpf(BPF_MAP_GET_NEXT_KEY, &mut attr) {
            Ok(()) => {}
            Err(e) if e.raw_os_error() == Some(libc::ENOENT) => return Ok(out),
            Err(e) => return Err(e.to_string()),
        }
        let mut value = vec![0u8; value_size];
        let mut attr = ElemAttr {
            map_fd: fd,
            key: next.as_ptr() as u64,
            value: value.as_mut_ptr() as u64,
            ..ElemAttr::default()
        };
        match bpf(BPF_MAP_LOOKUP_ELEM, &mut attr) {
            Ok(()) => {
                out.insert(next.clone(), value);
            }
            Err(e) if e.raw_os_error() == Some(libc::ENOENT) => {}
            Err(e) => return Err(e.to_string()),
        }
        key = Some(next);
    }
}

/// Everything under the pin directory: each map's contents, each link's identity (link id,
/// program id, type), each marker directory.
pub fn snapshot(dir: &Path) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    let mut todo = vec![dir.to_owned()];
    while let Some(d) = todo.pop() {
        for entry in std::fs::read_dir(&d)
            .expect("read the pin directory")
            .flatten()
        {
            let path = entry.path();
            let name = path.strip_prefix(dir).unwrap().display().to_string();
            if entry.file_type().unwrap().is_dir() {
                out.insert(name, "dir".to_owned());
                todo.push(path);
            } else if d == dir {
                out.insert(name, format!("{:?}", dump(&path)));
            } else {
                let link = aya::programs::links::PinnedLink::from_pin(&path)
                    .map(aya::programs::links::FdLink::from)
                    .and_then(|l| l.info())
                    .map(|i| (i.id(), i.program_id(), format!("{:?}", i.link_type())));
                out.insert(name, format!("{link:?}"));
            }
        }
    }
    out
}

/// A snapshot taken when two in a row agree: the owner's programs write on every packet
/// (counters, conntrack timestamps), so the comparison starts from a quiet moment.
pub fn quiet_snapshot(dir: &Path) -> BTreeMap<String, String> {
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut last = snapshot(dir);
    loop {
        std::thread::sleep(Duration::from_millis(200));
        let now = snapshot(dir);
        if now == last || Instant::now() > deadline {
            return now;
        }
        last = now;
    }
}

/// Map sizes small enough that a snapshot (which walks every key of every map, the arrays'
/// too) takes a moment, not minutes.
pub fn small_capacities(caps: &mut dataplane_ebpf::Capacities) {
    caps.services = 256;
    caps.backends = 128;
    caps.backend_slots = 1024;
    caps.maglev_table_size = 251;
    caps.conntrack = 1024;
    caps.affinity = 256;
    caps.source_ranges = 64;
    caps.local = 64;
    caps.policy_addresses = 256;
    caps.policy_rules = 256;
    caps.policy_blocks = 64;
    caps.policy_conntrack = 1024;
}
