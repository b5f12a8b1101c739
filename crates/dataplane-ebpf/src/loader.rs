//! Loading the compiled objects with pinned maps, and attaching their programs.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use aya::maps::lpm_trie::LpmTrie;
use aya::maps::{Array, HashMap, MapData, PerCpuArray};
use aya::programs::links::{FdLink, PinnedLink};
use aya::programs::tc::{NlOptions, SchedClassifierLink, TcAttachOptions, TcHandle};
use aya::programs::xdp::XdpLink;
use aya::programs::{CgroupAttachMode, CgroupSockAddr, LinkOrder, SchedClassifier, Xdp};
use aya::{Ebpf, EbpfLoader};

use crate::batch::BatchFd;
use crate::config::{AttachMode, Capacities, XdpMode};
use crate::error::EbpfError;
pub use crate::hook::Hook;
use crate::layout;
use crate::map_table::{self, Defined, MapSpec, MAPS};
use crate::maps::{
    Addr, AffinityKey, AffinityValue, BackendValue, CtEntry, CtKey, DpConfig, HostCfg, HostData,
    L2Cfg, L2Key, L2Value, LocalKey, LocalValue, NameKey, NameValue, PolAddr, PolBlockData, PolCt,
    PolRuleData, PolTier, SrcRangeData, SvcEntry, SvcKey,
};
use crate::mmap::{MmapArray, BPF_F_MMAPABLE};
use crate::objects::{SOCK_OBJ, TC_HOST_OBJ, TC_POD_OBJ, XDP_UPLINK_OBJ};
pub(crate) use crate::pins::{create_private_dir, links_dir};

/// The socket-level load-balancing programs of `sock.o`, one per cgroup hook.
pub const SOCK_PROGRAMS: [&str; 6] = [
    "dp_sock_connect4",
    "dp_sock_connect6",
    "dp_sock_getpeername4",
    "dp_sock_getpeername6",
    "dp_sock_recvmsg4",
    "dp_sock_recvmsg6",
];
/// Pin-name prefix of the socket hooks' links (`links/sock@PROGRAM`).
const SOCK_TAG: &str = "sock";
const CGROUP2_SUPER_MAGIC: i64 = 0x6367_7270;

pub(crate) struct Maps {
    pub svc: HashMap<MapData, SvcKey, SvcEntry>,
    pub backends: Array<MapData, BackendValue>,
    pub slots: Array<MapData, u32>,
    pub ct: HashMap<MapData, CtKey, CtEntry>,
    pub affinity: HashMap<MapData, AffinityKey, AffinityValue>,
    pub src_ranges: LpmTrie<MapData, SrcRangeData, u8>,
    pub cidrs: LpmTrie<MapData, Addr, u8>,
    pub config: Array<MapData, DpConfig>,
    pub local: HashMap<MapData, LocalKey, LocalValue>,
    pub stats: PerCpuArray<MapData, u64>,
    /// NetworkPolicy (`policy.rs` writes them, `maintain.rs` expires `pol_ct`).
    pub pol_addr: HashMap<MapData, LocalKey, PolAddr>,
    pub pol_rules: LpmTrie<MapData, PolRuleData, u8>,
    pub pol_blocks: LpmTrie<MapData, PolBlockData, u32>,
    /// Cluster policies and the baseline (`policy.rs`).
    pub pol_tiers: LpmTrie<MapData, PolRuleData, PolTier>,
    pub pol_ct: HashMap<MapData, CtKey, PolCt>,
    /// Batch writers of the maps a full sync fills in bulk.
    pub svc_batch: BatchFd,
    pub backends_batch: BatchFd,
    pub slots_batch: BatchFd,
    /// Batch reads of conntrack (GC, flows, stats).
    pub ct_batch: BatchFd,
    /// Batch reads of policy's conntrack (GC).
    pub pol_ct_batch: BatchFd,
    /// Shared mappings of the arrays, when they were created `BPF_F_MMAPABLE` (maps pinned
    /// by an earlier version were not: they are written with the batch calls).
    pub backends_mmap: Option<MmapArray<BackendValue>>,
    pub slots_mmap: Option<MmapArray<u32>>,
}

impl Maps {
    /// Unmaps the arrays' shared mappings (mapped again chunk by chunk on their next use):
    /// each mapped chunk counts towards the process's RSS.
    pub(crate) fn unmap_arrays(&mut self) {
        if let Some(m) = self.backends_mmap.as_mut() {
            m.unmap_all();
        }
        if let Some(m) = self.slots_mmap.as_mut() {
            m.unmap_all();
        }
    }
}

impl std::fmt::Debug for Maps {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Maps").finish_non_exhaustive()
    }
}

/// Priority and handle of our clsact filters, fixed so that a new process replaces them.
const NL_PRIORITY: u16 = 0xd9;
const NL_HANDLE: TcHandle = TcHandle::new(0, 1);

#[derive(Debug)]
pub(crate) enum Attachment {
    /// A TCX or XDP link pinned at `pin`; closing `link` keeps it attached while the pin
    /// exists.
    Tcx { link: FdLink, pin: PathBuf },
    /// A clsact filter; `marker` (a directory, bpffs holds no plain files) records it.
    Netlink {
        link: SchedClassifierLink,
        marker: PathBuf,
    },
}

/// What a sync's [`Objects::attach`] does for one hook on one interface.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum AttachStep {
    /// Attached to the interface that has the name now (or its lookup failed): nothing.
    Keep,
    /// A pod's interface that is not there, with nothing attached: nothing.
    Skip,
    /// A pod's interface that is gone, with its attachment: the attachment is forgotten.
    Forget,
    /// Attached to an interface since deleted; the name has this index now: attach again.
    Reattach(u32),
    /// Not attached (index 0: the interface is not there, and attaching says so).
    Attach(u32),
}

fn remove_path(path: PathBuf, dir: bool) -> Result<(), EbpfError> {
    let r = if dir {
        std::fs::remove_dir(&path)
    } else {
        std::fs::remove_file(&path)
    };
    match r {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(source) => Err(EbpfError::Pin { path, source }),
    }
}

/// Detaches the link pinned at `pin` at once, then removes the pin. Removing the pin alone
/// detaches the link only when the kernel frees it, later, in a work item
/// ([`crate::sys::detach_pinned_link`]); a kernel that cannot detach a link of this type
/// (`BPF_LINK_DETACH` refused) still frees it that way.
fn detach_and_unpin(pin: PathBuf) -> Result<(), EbpfError> {
    if let Err(e) = crate::sys::detach_pinned_link(&pin) {
        tracing::debug!(pin = %pin.display(), error = %e, "BPF_LINK_DETACH refused: the link goes with its last reference");
    }
    remove_path(pin, false)
}

impl Attachment {
    pub(crate) fn detach(self) -> Result<(), EbpfError> {
        match self {
            Attachment::Tcx { link, pin } => {
                detach_and_unpin(pin)?;
                drop(link);
                Ok(())
            }
            Attachment::Netlink { link, marker } => {
                // Dropping the link removes the filter.
                drop(link);
                remove_path(marker, true)
            }
        }
    }
    pub(crate) fn keep(self) {
        match self {
            Attachment::Tcx { link, .. } => drop(link),
            // Dropping a netlink link detaches it; keeping it means forgetting the handle.
            Attachment::Netlink { link, .. } => std::mem::forget(link),
        }
    }
}

pub(crate) struct Objects {
    pub pod: Ebpf,
    pub host: Ebpf,
    /// `xdp_uplink.o`, loaded when XDP is configured on.
    pub xdp: Option<Ebpf>,
    /// `sock.o`, loaded when socket-level load balancing is configured on.
    pub sock: Option<Ebpf>,
    /// The socket hooks' links on the configured cgroup (pinned like TCX links).
    pub sock_links: Vec<Attachment>,
    pub maps: Maps,
    /// Drops by observation point and reason (flow events, `events.rs`). Not in [`Maps`],
    /// which the live inspector (`live.rs`) builds from the pins of any version.
    pub drops: PerCpuArray<MapData, u64>,
    /// Names of service-port ids and pod addresses (written by `names.rs`).
    pub names: HashMap<MapData, NameKey, NameValue>,
    /// Batch writer of `dp_names` (a full sync of 100k services writes 100k names).
    pub names_batch: BatchFd,
    /// Host endpoint policy (written by `host_policy.rs`).
    pub host_maps: HostMaps,
    /// L2 announcements (written by `l2.rs`).
    pub l2_maps: L2Maps,
    /// The sizes the maps really have (pinned maps keep the size they were created with).
    pub capacities: Capacities,
    pub attachments: BTreeMap<(String, Hook), Attachment>,
    /// The ifindex each attachment was made on: an interface deleted and recreated under the
    /// same name (a pod's veth) has lost its programs with the old device.
    pub attached_ifindex: BTreeMap<(String, Hook), u32>,
}

/// The maps of host endpoint policy (`bpf/lib/maps.h`, `dp_host_*`).
pub(crate) struct HostMaps {
    pub lpm: LpmTrie<MapData, HostData, u64>,
    pub rules: Array<MapData, u32>,
    pub cfg: Array<MapData, HostCfg>,
    pub drops: PerCpuArray<MapData, u64>,
}

/// The maps of L2 announcements (`bpf/lib/maps.h`, `dp_l2_*`).
pub(crate) struct L2Maps {
    pub addrs: HashMap<MapData, L2Key, L2Value>,
    pub cfg: Array<MapData, L2Cfg>,
}

impl L2Maps {
    fn take(ebpf: &mut Ebpf) -> Result<Self, EbpfError> {
        Ok(Self {
            addrs: take(ebpf, map_table::L2_ADDRS_MAP.name)?,
            cfg: take(ebpf, map_table::L2_CFG.name)?,
        })
    }
}

impl std::fmt::Debug for L2Maps {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("L2Maps").finish_non_exhaustive()
    }
}

impl std::fmt::Debug for HostMaps {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HostMaps").finish_non_exhaustive()
    }
}

impl std::fmt::Debug for Objects {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Objects")
            .field("attachments", &self.attachments)
            .finish_non_exhaustive()
    }
}

/// A duplicate of map `name`'s fd, for [`BatchFd`] writes.
fn batch_fd(ebpf: &Ebpf, name: &'static str) -> Result<BatchFd, EbpfError> {
    use aya::maps::Map;
    let Some(Map::HashMap(data) | Map::LruHashMap(data) | Map::Array(data)) = ebpf.map(name) else {
        return Err(EbpfError::Load {
            object: name.to_owned(),
            source: "not a hash or array map in the object".into(),
        });
    };
    BatchFd::new(data.fd()).map_err(|e| EbpfError::Load {
        object: name.to_owned(),
        source: Box::new(e),
    })
}

/// Maps the values of pinned array `name` when it was created `BPF_F_MMAPABLE`.
fn mmap_array<V: aya::Pod>(
    pin_dir: &Path,
    map: &MapSpec,
    fd: &BatchFd,
) -> Result<Option<MmapArray<V>>, EbpfError> {
    let name = map.name;
    let info = aya::maps::MapInfo::from_pin(map.pin_path(pin_dir))
        .map_err(|e| EbpfError::map(name, "reading the pinned map's info", e))?;
    if info.map_flags() & BPF_F_MMAPABLE == 0 {
        tracing::info!(
            map = name,
            "pinned without BPF_F_MMAPABLE: written with batch calls"
        );
        return Ok(None);
    }
    match MmapArray::new(fd.fd(), info.max_entries()) {
        Ok(m) => Ok(Some(m)),
        Err(e) => {
            // Slower, not wrong: the batch calls write the same elements.
            tracing::warn!(map = name, error = %e, "cannot map the array: written with batch calls");
            Ok(None)
        }
    }
}

fn take<T>(ebpf: &mut Ebpf, name: &'static str) -> Result<T, EbpfError>
where
    T: TryFrom<aya::maps::Map, Error = aya::maps::MapError>,
{
    let map = ebpf.take_map(name).ok_or_else(|| EbpfError::Load {
        object: name.to_owned(),
        source: "map missing from the object".into(),
    })?;
    T::try_from(map).map_err(|e| EbpfError::map(name, "opening", e))
}

fn load_xdp_program(ebpf: &mut Ebpf) -> Result<(), EbpfError> {
    let name = Hook::Xdp.program();
    let err = |source: Box<dyn std::error::Error + Send + Sync>| EbpfError::Load {
        object: name.to_owned(),
        source,
    };
    let prog: &mut Xdp = ebpf
        .program_mut(name)
        .ok_or_else(|| err("program missing from the object".into()))?
        .try_into()
        .map_err(|e: aya::programs::ProgramError| err(Box::new(e)))?;
    load_retrying(|| prog.load()).map_err(|e| err(Box::new(e)))
}

/// Runs a program load, and again (up to 5 times in all) while the kernel answers `EAGAIN`:
/// the verifier gives up with `EAGAIN` when a signal is pending for the loading thread, which
/// a long verification on a busy machine can meet. libbpf retries the same way
/// (`sys_bpf_prog_load`, `PROG_LOAD_ATTEMPTS`); aya 0.14 does not.
pub(crate) fn load_retrying(
    mut load: impl FnMut() -> Result<(), aya::programs::ProgramError>,
) -> Result<(), aya::programs::ProgramError> {
    let mut attempts = 1;
    loop {
        match load() {
            Err(aya::programs::ProgramError::LoadError { io_error, .. })
                if io_error.raw_os_error() == Some(libc::EAGAIN) && attempts < 5 =>
            {
                tracing::debug!(attempts, "BPF_PROG_LOAD answered EAGAIN: trying again");
                attempts += 1;
            }
            other => return other,
        }
    }
}

fn sock_program<'a>(ebpf: &'a mut Ebpf, name: &str) -> Result<&'a mut CgroupSockAddr, EbpfError> {
    let err = |source: Box<dyn std::error::Error + Send + Sync>| EbpfError::Load {
        object: name.to_owned(),
        source,
    };
    ebpf.program_mut(name)
        .ok_or_else(|| err("program missing from the object".into()))?
        .try_into()
        .map_err(|e: aya::programs::ProgramError| err(Box::new(e)))
}

fn load_sock_programs(ebpf: &mut Ebpf) -> Result<(), EbpfError> {
    for name in SOCK_PROGRAMS {
        let prog = sock_program(ebpf, name)?;
        load_retrying(|| prog.load()).map_err(|e| EbpfError::Load {
            object: name.to_owned(),
            source: Box::new(e),
        })?;
    }
    Ok(())
}

/// Removes the pins of socket-hook links an earlier process left, which detaches them once
/// nothing else holds them (socket-level load balancing is no longer configured).
pub(crate) fn remove_pinned_sock(pin_dir: &Path) -> Result<(), EbpfError> {
    for name in SOCK_PROGRAMS {
        for tag in [SOCK_TAG, "sock-new"] {
            detach_and_unpin(links_dir(pin_dir).join(format!("{tag}@{name}")))?;
        }
    }
    Ok(())
}

fn load_programs(ebpf: &mut Ebpf, names: &[&str]) -> Result<(), EbpfError> {
    for name in names {
        let prog: &mut SchedClassifier = ebpf
            .program_mut(name)
            .ok_or_else(|| EbpfError::Load {
                object: (*name).to_owned(),
                source: "program missing from the object".into(),
            })?
            .try_into()
            .map_err(|e: aya::programs::ProgramError| EbpfError::Load {
                object: (*name).to_owned(),
                source: Box::new(e),
            })?;
        load_retrying(|| prog.load()).map_err(|e| EbpfError::Load {
            object: (*name).to_owned(),
            source: Box::new(e),
        })?;
    }
    Ok(())
}

/// Removes what an eBPF dataplane left in `pin_dir` without loading anything: detaches the
/// clsact filters its markers name (in the network namespace `netns`), turns
/// `net.ipv4.conf.lo.accept_local` off again if the dataplane turned it on, and removes the
/// directory: its pinned TCX, XDP and cgroup links are detached first (`BPF_LINK_DETACH`:
/// at once, even while another process holds them), and its maps go with their last user. What [`Dataplane::reset`] does, for pins this version cannot
/// load ([`EbpfError::IncompatiblePins`]). Established connections through the old
/// datapath lose their translation.
///
/// [`Dataplane::reset`]: dataplane_core::Dataplane::reset
pub fn remove_pinned(pin_dir: &Path, netns: Option<&Path>) -> Result<(), EbpfError> {
    use aya::programs::links::Link as _;
    let nl = links_dir(pin_dir).join("nl");
    crate::netns::in_netns(netns, || {
        let mut first_err = None;
        for (ifname, hook) in Objects::pinned_links(pin_dir) {
            let marker = nl.join(format!("{}@{}", hook.tag(), ifname));
            if !marker.exists() {
                continue;
            }
            let detached = SchedClassifierLink::attached(
                &ifname,
                hook.attach_type(),
                NL_PRIORITY,
                NL_HANDLE,
                None,
            )
            .map_err(|e| Box::new(e) as Box<dyn std::error::Error + Send + Sync>)
            .and_then(|link| link.detach().map_err(|e| Box::new(e) as _));
            match detached {
                Ok(()) => {}
                // The interface (and its filter) is gone: nothing to detach.
                Err(e) if crate::local::lookup_ifindex(&ifname).is_ok_and(|i| i.is_none()) => {
                    tracing::debug!(interface = %ifname, error = %e, "interface gone with its filter");
                }
                Err(source) => {
                    first_err.get_or_insert(EbpfError::Attach {
                        interface: ifname.clone(),
                        program: hook.program().to_owned(),
                        source,
                    });
                }
            }
        }
        if let Err(e) = crate::loopback::restore(pin_dir) {
            first_err.get_or_insert(e);
        }
        first_err.map_or(Ok(()), Err)
    })?;
    // The pinned links (TCX, XDP, socket hooks) at once, not when the kernel frees them.
    if let Ok(entries) = std::fs::read_dir(links_dir(pin_dir)) {
        for entry in entries.flatten() {
            if entry.file_type().is_ok_and(|t| t.is_file()) {
                detach_and_unpin(entry.path())?;
            }
        }
    }
    match std::fs::remove_dir_all(pin_dir) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(source) => Err(EbpfError::Pin {
            path: pin_dir.to_owned(),
            source,
        }),
    }
}

/// Loads the objects (the XDP one when `xdp`); maps are created and pinned under `pin_dir`,
/// or reused when pinned.
pub(crate) fn load(
    pin_dir: &Path,
    caps: &Capacities,
    xdp: bool,
    sock: bool,
) -> Result<Objects, EbpfError> {
    check_ring_size(caps.events_ring_bytes)?;
    // Decided before anything is created: a refusal leaves the directory as it was.
    let layout = layout::plan(pin_dir, sock)?;
    for dir in [pin_dir.to_owned(), links_dir(pin_dir)] {
        create_private_dir(&dir)?;
    }
    layout.apply(pin_dir, sock)?;
    let mut loader = EbpfLoader::new();
    loader.default_map_pin_directory(pin_dir);
    for map in MAPS.iter().filter(|m| m.capacity.is_some()) {
        loader.map_max_entries(map.name, caps.size_of(map));
    }
    let mut pod = loader.load(TC_POD_OBJ).map_err(|e| EbpfError::Load {
        object: "tc_pod.o".to_owned(),
        source: Box::new(e),
    })?;
    let mut host = loader.load(TC_HOST_OBJ).map_err(|e| EbpfError::Load {
        object: "tc_host.o".to_owned(),
        source: Box::new(e),
    })?;
    let xdp = if xdp {
        let mut obj = loader.load(XDP_UPLINK_OBJ).map_err(|e| EbpfError::Load {
            object: "xdp_uplink.o".to_owned(),
            source: Box::new(e),
        })?;
        load_xdp_program(&mut obj)?;
        Some(obj)
    } else {
        None
    };
    let sock = if sock {
        let mut obj = loader.load(SOCK_OBJ).map_err(|e| EbpfError::Load {
            object: "sock.o".to_owned(),
            source: Box::new(e),
        })?;
        load_sock_programs(&mut obj)?;
        Some(obj)
    } else {
        None
    };
    let capacities = check_pinned(pin_dir, caps, sock.is_some())?;
    load_programs(&mut pod, &[Hook::FromPod.program(), Hook::ToPod.program()])?;
    load_programs(
        &mut host,
        &[
            Hook::FromUplink.program(),
            Hook::ToUplink.program(),
            Hook::ToLo.program(),
        ],
    )?;

    let backends_batch = batch_fd(&pod, map_table::BACKENDS.name)?;
    let slots_batch = batch_fd(&pod, map_table::SLOTS.name)?;
    let backends_mmap = mmap_array(pin_dir, &map_table::BACKENDS, &backends_batch)?;
    let slots_mmap = mmap_array(pin_dir, &map_table::SLOTS, &slots_batch)?;
    let maps = Maps {
        backends_mmap,
        slots_mmap,
        ct_batch: batch_fd(&pod, map_table::CT.name)?,
        pol_ct_batch: batch_fd(&pod, map_table::POL_CT.name)?,
        svc_batch: batch_fd(&pod, map_table::SVC.name)?,
        backends_batch,
        slots_batch,
        svc: take(&mut pod, map_table::SVC.name)?,
        backends: take(&mut pod, map_table::BACKENDS.name)?,
        slots: take(&mut pod, map_table::SLOTS.name)?,
        ct: take(&mut pod, map_table::CT.name)?,
        affinity: take(&mut pod, map_table::AFFINITY.name)?,
        src_ranges: take(&mut pod, map_table::SRC_RANGES.name)?,
        cidrs: take(&mut pod, map_table::CIDRS.name)?,
        config: take(&mut pod, map_table::CONFIG.name)?,
        local: take(&mut pod, map_table::LOCAL.name)?,
        stats: take(&mut pod, map_table::STATS.name)?,
        pol_addr: take(&mut pod, map_table::POL_ADDR.name)?,
        pol_rules: take(&mut pod, map_table::POL_RULES.name)?,
        pol_blocks: take(&mut pod, map_table::POL_BLOCKS.name)?,
        pol_tiers: take(&mut pod, map_table::POL_TIERS.name)?,
        pol_ct: take(&mut pod, map_table::POL_CT.name)?,
    };
    Ok(Objects {
        drops: take(&mut pod, map_table::DROPS.name)?,
        names_batch: batch_fd(&pod, map_table::NAMES.name)?,
        names: take(&mut pod, map_table::NAMES.name)?,
        host_maps: HostMaps {
            lpm: take(&mut pod, map_table::HOST_LPM.name)?,
            rules: take(&mut pod, map_table::HOST_RULES.name)?,
            cfg: take(&mut pod, map_table::HOST_CFG.name)?,
            drops: take(&mut pod, map_table::HOST_DROPS.name)?,
        },
        l2_maps: L2Maps::take(&mut pod)?,
        pod,
        host,
        xdp,
        sock,
        sock_links: Vec::new(),
        maps,
        capacities,
        attachments: BTreeMap::new(),
        attached_ifindex: BTreeMap::new(),
    })
}

/// The kernel wants a ring buffer's size to be a power of two multiple of the page size.
fn check_ring_size(bytes: u32) -> Result<(), EbpfError> {
    // SAFETY: sysconf only reads a system constant.
    let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    let page = u32::try_from(page).unwrap_or(4096);
    if bytes.is_power_of_two() && bytes >= page {
        return Ok(());
    }
    Err(EbpfError::Load {
        object: map_table::EVENTS.name.to_owned(),
        source: format!(
            "Capacities::events_ring_bytes is {bytes}: it must be a power of two multiple of \
             the page size ({page} bytes)"
        )
        .into(),
    })
}

/// Refuses pinned maps whose layout differs from this version's (an upgrade that changed
/// `maps.h` needs `reset()`), and reads the sizes the pinned maps were created with.
fn check_pinned(pin_dir: &Path, caps: &Capacities, sock: bool) -> Result<Capacities, EbpfError> {
    let mut out = caps.clone();
    for map in MAPS.iter().filter(|m| sock || m.defined != Defined::Sock) {
        let (name, key, value) = (map.name, map.key_size, map.value_size);
        let info = aya::maps::MapInfo::from_pin(map.pin_path(pin_dir))
            .map_err(|e| EbpfError::map(name, "reading the pinned map's info", e))?;
        if info.key_size() as usize != key || info.value_size() as usize != value {
            return Err(EbpfError::Load {
                object: name.to_owned(),
                source: format!(
                    "pinned map has key/value sizes {}/{}, this version needs {key}/{value}: \
                     reset() the dataplane or remove {}",
                    info.key_size(),
                    info.value_size(),
                    pin_dir.display()
                )
                .into(),
            });
        }
        out.set_size(map, info.max_entries());
    }
    Ok(out)
}

impl Objects {
    pub(crate) fn program_mut(&mut self, hook: Hook) -> Result<&mut SchedClassifier, EbpfError> {
        let ebpf = match hook {
            Hook::FromPod | Hook::ToPod => &mut self.pod,
            Hook::FromUplink | Hook::ToUplink | Hook::ToLo => &mut self.host,
            Hook::Xdp => {
                return Err(EbpfError::Load {
                    object: hook.program().to_owned(),
                    source: "an XDP program, not a TC one".into(),
                })
            }
        };
        let name = hook.program();
        ebpf.program_mut(name)
            .ok_or_else(|| EbpfError::Load {
                object: name.to_owned(),
                source: "program missing".into(),
            })?
            .try_into()
            .map_err(|e: aya::programs::ProgramError| EbpfError::Load {
                object: name.to_owned(),
                source: Box::new(e),
            })
    }

    /// Removes the pin of an XDP link an earlier process left on `ifname`, which detaches it
    /// once nothing else holds it.
    pub(crate) fn remove_pinned_xdp(pin_dir: &Path, ifname: &str) -> Result<(), EbpfError> {
        detach_and_unpin(links_dir(pin_dir).join(format!("{}@{}", Hook::Xdp.tag(), ifname)))
    }

    /// Attachments an earlier process left: pinned TCX links under `pin_dir/links` and clsact
    /// markers under `pin_dir/links/nl`, as (interface, hook).
    pub(crate) fn pinned_links(pin_dir: &Path) -> Vec<(String, Hook)> {
        let mut out = Vec::new();
        for dir in [links_dir(pin_dir), links_dir(pin_dir).join("nl")] {
            let Ok(entries) = std::fs::read_dir(dir) else {
                continue;
            };
            for entry in entries.flatten() {
                let name = entry.file_name().to_string_lossy().into_owned();
                if let Some((tag, ifname)) = name.split_once('@') {
                    if let Some(hook) = Hook::from_tag(tag) {
                        out.push((ifname.to_owned(), hook));
                    }
                }
            }
        }
        out.sort();
        out.dedup();
        out
    }

    /// Attaches the socket hooks to the cgroup v2 directory `cgroup` (and so to every process
    /// in it and below), as pinned links. Links an earlier process pinned are replaced: the new
    /// ones are attached first, so no `connect()` goes untranslated in between (and one that
    /// did would still be translated by the TC programs). On failure nothing of this call stays
    /// attached.
    pub(crate) fn attach_sock(&mut self, pin_dir: &Path, cgroup: &Path) -> Result<(), EbpfError> {
        let attach_err =
            |program: &str, source: Box<dyn std::error::Error + Send + Sync>| EbpfError::Attach {
                interface: cgroup.display().to_string(),
                program: program.to_owned(),
                source,
            };
        let is_cgroup2 = nix::sys::statfs::statfs(cgroup)
            .is_ok_and(|s| s.filesystem_type().0 == CGROUP2_SUPER_MAGIC);
        if !is_cgroup2 {
            return Err(attach_err(
                SOCK_PROGRAMS[0],
                "socket_lb_cgroup must be a directory of a cgroup v2 hierarchy".into(),
            ));
        }
        let dir =
            std::fs::File::open(cgroup).map_err(|e| attach_err(SOCK_PROGRAMS[0], Box::new(e)))?;
        let Some(obj) = self.sock.as_mut() else {
            return Err(EbpfError::NotSupported {
                reason: "sock.o is not loaded".to_owned(),
            });
        };
        // Each new link is pinned under a temporary name first; only once all are attached
        // do they take the final names, which drops an earlier process's links (they go
        // once their pins do). A failure part-way leaves the earlier links as they were.
        let mut links: Vec<(FdLink, PathBuf, PathBuf)> = Vec::with_capacity(SOCK_PROGRAMS.len());
        let mut attach_one = |name: &str| -> Result<(FdLink, PathBuf, PathBuf), EbpfError> {
            let prog = sock_program(obj, name)?;
            // A bpf_link (Linux >= 5.7; getpeername hooks 5.8) takes no flags and always
            // coexists with the other programs on the cgroup, as BPF_F_ALLOW_MULTI would.
            let id = prog
                .attach(&dir, CgroupAttachMode::Single)
                .map_err(|e| attach_err(name, Box::new(e)))?;
            let link = prog
                .take_link(id)
                .map_err(|e| attach_err(name, Box::new(e)))?;
            let link = FdLink::try_from(link).map_err(|e| {
                attach_err(name, format!("cgroup links need Linux >= 5.8: {e}").into())
            })?;
            let pin = links_dir(pin_dir).join(format!("{SOCK_TAG}@{name}"));
            let staged = links_dir(pin_dir).join(format!("{SOCK_TAG}-new@{name}"));
            remove_path(staged.clone(), false)?;
            let pinned = link
                .pin(&staged)
                .map_err(|e| attach_err(name, Box::new(e)))?;
            Ok((FdLink::from(pinned), staged, pin))
        };
        for name in SOCK_PROGRAMS {
            match attach_one(name) {
                Ok(l) => links.push(l),
                Err(e) => {
                    for (link, staged, _) in links {
                        let _ = remove_path(staged, false);
                        drop(link);
                    }
                    return Err(e);
                }
            }
        }
        let mut pending = links.into_iter();
        while let Some((link, staged, pin)) = pending.next() {
            if let Err(source) = std::fs::rename(&staged, &pin) {
                let _ = remove_path(staged, false);
                for (_, staged, _) in pending {
                    let _ = remove_path(staged, false);
                }
                for a in self.sock_links.drain(..) {
                    let _ = a.detach();
                }
                return Err(EbpfError::Pin { path: pin, source });
            }
            self.sock_links.push(Attachment::Tcx { link, pin });
        }
        Ok(())
    }

    pub(crate) fn xdp_program_mut(&mut self) -> Result<&mut Xdp, EbpfError> {
        let name = Hook::Xdp.program();
        let missing = || EbpfError::NotSupported {
            reason: "the XDP program is not loaded: set EbpfConfig::xdp".to_owned(),
        };
        self.xdp
            .as_mut()
            .ok_or_else(missing)?
            .program_mut(name)
            .ok_or_else(missing)?
            .try_into()
            .map_err(|e: aya::programs::ProgramError| EbpfError::Load {
                object: name.to_owned(),
                source: Box::new(e),
            })
    }

    /// Attaches the XDP program to `ifname` as a pinned XDP link, or takes over the link an
    /// earlier process pinned (its program is replaced atomically; it keeps its mode).
    fn attach_xdp(&mut self, pin_dir: &Path, ifname: &str, mode: XdpMode) -> Result<(), EbpfError> {
        use aya::programs::XdpMode as Flags;

        let hook = Hook::Xdp;
        let pin = links_dir(pin_dir).join(format!("{}@{}", hook.tag(), ifname));
        let attach_err = |source: Box<dyn std::error::Error + Send + Sync>| EbpfError::Attach {
            interface: ifname.to_owned(),
            program: hook.program().to_owned(),
            source,
        };
        let prog = self.xdp_program_mut()?;
        if pin.exists() {
            let adopted = PinnedLink::from_pin(&pin)
                .map_err(|e| attach_err(Box::new(e)))
                .and_then(|p| {
                    let link =
                        XdpLink::try_from(FdLink::from(p)).map_err(|e| attach_err(Box::new(e)))?;
                    let id = prog
                        .attach_to_link(link)
                        .map_err(|e| attach_err(Box::new(e)))?;
                    let link = prog.take_link(id).map_err(|e| attach_err(Box::new(e)))?;
                    FdLink::try_from(link).map_err(|e| attach_err(Box::new(e)))
                });
            match adopted {
                Ok(link) => {
                    tracing::debug!(interface = ifname, "adopted pinned XDP link");
                    self.attachments
                        .insert((ifname.to_owned(), hook), Attachment::Tcx { link, pin });
                    return Ok(());
                }
                Err(e) => {
                    tracing::warn!(interface = ifname, error = %e, "stale pinned XDP link, re-attaching");
                    let _ = std::fs::remove_file(&pin);
                }
            }
        }
        let id = match mode {
            XdpMode::Off => return Ok(()),
            XdpMode::Native => prog.attach(ifname, Flags::Driver),
            XdpMode::Generic => prog.attach(ifname, Flags::Skb),
            XdpMode::Auto => prog.attach(ifname, Flags::Driver).or_else(|e| {
                tracing::info!(interface = ifname, error = %e, "native XDP refused, using generic mode");
                prog.attach(ifname, Flags::Skb)
            }),
        }
        .map_err(|e| attach_err(Box::new(e)))?;
        let link = prog.take_link(id).map_err(|e| attach_err(Box::new(e)))?;
        // A netlink attachment (no bpf_link: Linux < 5.9) cannot be pinned; dropping `link`
        // detaches it again.
        let link = FdLink::try_from(link)
            .map_err(|e| attach_err(format!("XDP links need Linux >= 5.9: {e}").into()))?;
        let pinned = link.pin(&pin).map_err(|e| attach_err(Box::new(e)))?;
        self.attachments.insert(
            (ifname.to_owned(), hook),
            Attachment::Tcx {
                link: FdLink::from(pinned),
                pin,
            },
        );
        Ok(())
    }

    /// Fails, before a sync writes anything, when an attachment of `wanted` that
    /// [`Self::attach`] would have to make cannot be made because its interface is not there
    /// (the uplink or `lo`; a pod's missing veth is skipped, not an error, see `attach`). One
    /// ifindex lookup per non-pod attachment (three), in the caller's namespace. Without it the
    /// sync wrote the new state's maps and then failed at the attach, so a refused state was
    /// served anyway (issue 21). What the kernel may still refuse (a device that vanishes
    /// between this check and the attach, a driver without native XDP) fails after the maps
    /// were written: the sync is an error and the next one must be full.
    pub(crate) fn check_interfaces(
        &self,
        wanted: &std::collections::BTreeSet<(String, Hook)>,
        ifindexes: &mut crate::local::Ifindexes,
    ) -> Result<(), EbpfError> {
        for (ifname, hook) in wanted {
            if matches!(hook, Hook::FromPod | Hook::ToPod) {
                continue;
            }
            let missing = |source: Box<dyn std::error::Error + Send + Sync>| EbpfError::Attach {
                interface: ifname.clone(),
                program: hook.program().to_owned(),
                source,
            };
            match ifindexes.lookup(ifname) {
                Ok(Some(_)) => {}
                // `attach` keeps an attachment whose lookup failed: nothing to refuse.
                Err(_) if self.attachments.contains_key(&(ifname.clone(), *hook)) => {}
                Ok(None) => {
                    return Err(missing(
                        format!("no interface {ifname} in the node's network namespace").into(),
                    ))
                }
                Err(e) => return Err(missing(Box::new(e))),
            }
        }
        Ok(())
    }

    /// Detaches every attachment `wanted` does not list (call inside the node's network
    /// namespace).
    pub(crate) fn detach_unwanted(
        &mut self,
        wanted: &std::collections::BTreeSet<(String, Hook)>,
    ) -> Result<(), EbpfError> {
        let stale: Vec<(String, Hook)> = self
            .attachments
            .keys()
            .filter(|k| !wanted.contains(k))
            .cloned()
            .collect();
        for k in stale {
            self.attached_ifindex.remove(&k);
            if let Some(a) = self.attachments.remove(&k) {
                a.detach()?;
            }
        }
        Ok(())
    }

    /// Whether [`Self::attach`] of any of `wanted`, or [`Self::detach_unwanted`], has work
    /// to do (and so the node's namespace must be entered). Each interface is looked up
    /// through `ifindexes`, as `attach` looks it up after this.
    pub(crate) fn attachments_pending(
        &self,
        wanted: &std::collections::BTreeSet<(String, Hook)>,
        ifindexes: &mut crate::local::Ifindexes,
    ) -> bool {
        self.attachments.keys().any(|k| !wanted.contains(k))
            || wanted.iter().any(|(ifname, hook)| {
                !matches!(
                    self.attach_step(ifname, *hook, ifindexes),
                    AttachStep::Keep | AttachStep::Skip
                )
            })
    }

    /// What [`Self::attach`] does for `hook` on `ifname`, by the interface's index now.
    fn attach_step(
        &self,
        ifname: &str,
        hook: Hook,
        ifindexes: &mut crate::local::Ifindexes,
    ) -> AttachStep {
        let key = (ifname.to_owned(), hook);
        let attached = self.attachments.contains_key(&key);
        match ifindexes.lookup(ifname) {
            Ok(Some(i)) if attached && self.attached_ifindex.get(&key) == Some(&i) => {
                AttachStep::Keep
            }
            Ok(Some(i)) if attached => AttachStep::Reattach(i),
            Ok(Some(i)) => AttachStep::Attach(i),
            // A pod's interface that is not there (not created yet, or deleted while the pod
            // is still in the state: a terminating pod) carries no traffic to police: skipped,
            // and attached by the first sync that finds it. Failing here would stop every
            // sync, and with it every other pod's attachments, until the pod leaves the state.
            Ok(None) if matches!(hook, Hook::FromPod | Hook::ToPod) => {
                if attached {
                    AttachStep::Forget
                } else {
                    AttachStep::Skip
                }
            }
            // The lookup failed, not the interface: an attachment that exists stays (detaching
            // it would leave a live interface without its programs).
            Err(e) if attached => {
                tracing::warn!(interface = ifname, hook = hook.tag(), error = %e, "interface lookup failed: attachment kept");
                AttachStep::Keep
            }
            // The uplink and lo must be there, and a first attachment needs its interface:
            // attaching reports the error.
            Ok(None) | Err(_) => AttachStep::Attach(0),
        }
    }

    /// Attaches `hook`'s program to `ifname` (call inside the node's network namespace),
    /// unless it is attached to the interface that has that name now: an attachment made on
    /// an interface since deleted (and perhaps recreated under the same name, as a pod's veth
    /// is) died with it, so it is forgotten and the program attached anew. A pod hook whose
    /// interface is not there is skipped (see [`Self::attach_step`]).
    pub(crate) fn attach(
        &mut self,
        pin_dir: &Path,
        ifname: &str,
        hook: Hook,
        mode: AttachMode,
        xdp: XdpMode,
        ifindexes: &mut crate::local::Ifindexes,
    ) -> Result<(), EbpfError> {
        let key = (ifname.to_owned(), hook);
        let ifindex = match self.attach_step(ifname, hook, ifindexes) {
            AttachStep::Keep => return Ok(()),
            AttachStep::Skip | AttachStep::Forget => {
                if let Some(a) = self.attachments.remove(&key) {
                    // Its device is gone: the pin (or marker) is all that is left to remove.
                    if let Err(e) = a.detach() {
                        tracing::warn!(interface = ifname, hook = hook.tag(), error = %e, "removing the attachment of a deleted interface");
                    }
                }
                self.attached_ifindex.remove(&key);
                tracing::warn!(
                    interface = ifname,
                    hook = hook.tag(),
                    "pod interface not found: not attached"
                );
                return Ok(());
            }
            AttachStep::Reattach(ifindex) => {
                tracing::info!(
                    interface = ifname,
                    hook = hook.tag(),
                    ifindex,
                    "interface recreated: attaching again"
                );
                if let Some(a) = self.attachments.remove(&key) {
                    // Its device is gone: the pin (or marker) is all that is left to remove.
                    a.detach()?;
                }
                self.attached_ifindex.remove(&key);
                ifindex
            }
            AttachStep::Attach(ifindex) => ifindex,
        };
        self.attach_new(pin_dir, ifname, hook, mode, xdp)?;
        self.attached_ifindex.insert(key, ifindex);
        Ok(())
    }

    fn attach_new(
        &mut self,
        pin_dir: &Path,
        ifname: &str,
        hook: Hook,
        mode: AttachMode,
        xdp: XdpMode,
    ) -> Result<(), EbpfError> {
        if hook == Hook::Xdp {
            return self.attach_xdp(pin_dir, ifname, xdp);
        }
        let pin = links_dir(pin_dir).join(format!("{}@{}", hook.tag(), ifname));
        let attach_err = |source: Box<dyn std::error::Error + Send + Sync>| EbpfError::Attach {
            interface: ifname.to_owned(),
            program: hook.program().to_owned(),
            source,
        };
        let prog = self.program_mut(hook)?;
        if pin.exists() {
            let adopted = PinnedLink::from_pin(&pin)
                .map_err(|e| attach_err(Box::new(e)))
                .and_then(|p| {
                    let link = SchedClassifierLink::try_from(FdLink::from(p))
                        .map_err(|e| attach_err(Box::new(e)))?;
                    let id = prog
                        .attach_to_link(link)
                        .map_err(|e| attach_err(Box::new(e)))?;
                    let link = prog.take_link(id).map_err(|e| attach_err(Box::new(e)))?;
                    FdLink::try_from(link).map_err(|e| attach_err(Box::new(e)))
                });
            match adopted {
                Ok(link) => {
                    tracing::debug!(interface = ifname, hook = hook.tag(), "adopted pinned link");
                    self.attachments
                        .insert((ifname.to_owned(), hook), Attachment::Tcx { link, pin });
                    return Ok(());
                }
                Err(e) => {
                    tracing::warn!(interface = ifname, error = %e, "stale pinned link, re-attaching");
                    let _ = std::fs::remove_file(&pin);
                }
            }
        }
        let marker = links_dir(pin_dir)
            .join("nl")
            .join(format!("{}@{}", hook.tag(), ifname));
        let prog = self.program_mut(hook)?;
        let tcx = if mode == AttachMode::Clsact || marker.exists() {
            None
        } else {
            Some(prog.attach_with_options(
                ifname,
                hook.attach_type(),
                TcAttachOptions::TcxOrder(LinkOrder::default()),
            ))
        };
        let attachment = match tcx {
            Some(Ok(id)) => {
                let link = prog.take_link(id).map_err(|e| attach_err(Box::new(e)))?;
                let link = FdLink::try_from(link).map_err(|e| attach_err(Box::new(e)))?;
                let pinned = link.pin(&pin).map_err(|e| attach_err(Box::new(e)))?;
                Attachment::Tcx {
                    link: FdLink::from(pinned),
                    pin,
                }
            }
            Some(Err(e)) if mode == AttachMode::Tcx => return Err(attach_err(Box::new(e))),
            tcx => {
                if let Some(Err(e)) = tcx {
                    tracing::info!(interface = ifname, error = %e, "TCX attach failed, using clsact");
                }
                // EEXIST when the qdisc is already there is fine.
                let _ = aya::programs::tc::qdisc_add_clsact(ifname);
                // Replace the filter an earlier process left, else create it.
                let earlier = SchedClassifierLink::attached(
                    ifname,
                    hook.attach_type(),
                    NL_PRIORITY,
                    NL_HANDLE,
                    None,
                )
                .map_err(|e| attach_err(Box::new(e)))?;
                let id = match prog.attach_to_link(earlier) {
                    Ok(id) => id,
                    Err(_) => prog
                        .attach_with_options(
                            ifname,
                            hook.attach_type(),
                            TcAttachOptions::Netlink(NlOptions {
                                priority: NL_PRIORITY,
                                handle: NL_HANDLE,
                                classid: None,
                            }),
                        )
                        .map_err(|e| attach_err(Box::new(e)))?,
                };
                let link = prog.take_link(id).map_err(|e| attach_err(Box::new(e)))?;
                create_private_dir(&marker)?;
                Attachment::Netlink { link, marker }
            }
        };
        self.attachments
            .insert((ifname.to_owned(), hook), attachment);
        Ok(())
    }
}
