//! [`LiveEbpf`]: what a running eBPF dataplane programmed, read from its pin directory by a
//! process that does not own it (`dpctl status` beside the agent).
//!
//! Read-only by construction, not by care: every map is opened with `BPF_F_RDONLY` (the
//! kernel refuses updates and deletes through such an fd with `EPERM`), no program is loaded,
//! nothing is attached, and the pinned links are opened only to read their info (a link pin
//! cannot be opened read-only: the kernel wants `O_RDWR` for links). bpftool's
//! `map show`/`map dump` read pinned maps the same way. The one exception is
//! [`Inspect::events`]: reading a ring buffer moves its consumer position, and the ring is
//! single-consumer (beside the agent's own reader, each gets part of the events).
//!
//! Reading beside the writer is safe: the owning process writes make-before-break (new
//! backends and slot range first, then the frontend repointed, frees last), each element
//! read is one the kernel copied atomically, and a key deleted between `next_key` and its
//! lookup is skipped. A read can still straddle one of the owner's syncs (half the old
//! services, half the new): an inspector shows a moment, not a transaction.
//!
//! What the maps cannot say is left out rather than guessed: a frontend's kind is known for
//! ClusterIPs (their scope) and NodePorts (an external frontend on a node address), a
//! LoadBalancer IP only when it has source ranges; service names come from `dp_names` when
//! the owner wrote it.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::io;
use std::net::SocketAddr;
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};

use aya::maps::{Map, MapData, MapError};
use dataplane_core::{
    Attachment, BoxEventSource, Error, EventOptions, Flow, Inspect, LiveFrontend, NodeStatus,
    ObjectName, Protocol, Stats, TableFill,
};

use crate::batch::BatchFd;
use crate::config::Capacities;
use crate::ct::{all_entries, ct_entries};
use crate::error::EbpfError;
use crate::loader::{links_dir, Hook, Maps, Objects};
use crate::map_table::{self, MapSpec, MAPS};
use crate::maps::{
    Addr, BackendValue, Be16, CtEntry, CtKey, L2Key, L2Value, NameKey, NameValue, SvcKey, SvcValue,
    CIDR_F_NODE, CT_F_DSR, CT_F_MASQ, NAME_SERVICE, POL_F_ISO_EGRESS, POL_F_ISO_INGRESS,
    SCOPE_EXTERNAL, SCOPE_EXTERNAL_INSIDE, SCOPE_INTERNAL, SCOPE_RETIRED_INTERNAL_OUTSIDE,
    STAT_DROPPED, STAT_NAMES, STAT_ORIGINAL, STAT_REJECTED, STAT_TRANSLATED, SVC_F_SRC_RANGES,
    SVC_F_WILDCARD,
};
use crate::plan::BACKEND;
use crate::sys::{obj_get, sys_bpf, BPF_F_RDONLY};
use crate::writer::Current;

/// Opens the map pinned at `path` read-only (aya 0.14's `MapData::from_pin` opens it
/// read-write).
fn open_read_only(path: &Path) -> io::Result<OwnedFd> {
    obj_get(path, BPF_F_RDONLY)
}

/// A pinned map opened read-only, with its `max_entries`.
struct Opened {
    data: MapData,
    capacity: u32,
}

/// Opens pinned map `spec` read-only and checks that its layout is this version's (as the
/// loader's `check_pinned` does before adopting it): `Ok(None)` when it is not pinned.
fn open_map(pin_dir: &Path, spec: &MapSpec) -> Result<Option<Opened>, EbpfError> {
    let path = spec.pin_path(pin_dir);
    let fd = match open_read_only(&path) {
        Ok(fd) => fd,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(source) => return Err(EbpfError::Pin { path, source }),
    };
    let data =
        MapData::from_fd(fd).map_err(|e| EbpfError::map(spec.name, "opening read-only", e))?;
    let info = data
        .info()
        .map_err(|e| EbpfError::map(spec.name, "reading the pinned map's info", e))?;
    if info.key_size() as usize != spec.key_size || info.value_size() as usize != spec.value_size {
        return Err(EbpfError::Map {
            map: spec.name,
            operation: "checking the pinned layout".to_owned(),
            source: format!(
                "pinned map has key/value sizes {}/{}, this version reads {}/{}: the running \
                 dataplane is another version",
                info.key_size(),
                info.value_size(),
                spec.key_size,
                spec.value_size
            )
            .into(),
        });
    }
    Ok(Some(Opened {
        capacity: info.max_entries(),
        data,
    }))
}

/// The owner's layout records (`layout.rs`), read through a read-only fd: a map pinned by
/// another version is refused rather than read with this version's meaning.
fn layout_records(pin_dir: &Path) -> Result<crate::layout::Records, EbpfError> {
    let path = pin_dir.join(crate::layout::LAYOUT_MAP);
    let layout = match open_read_only(&path) {
        Ok(fd) => Some(
            MapData::from_fd(fd)
                .map_err(|e| EbpfError::map(crate::layout::LAYOUT_MAP, "opening read-only", e))?,
        ),
        Err(e) if e.kind() == io::ErrorKind::NotFound => None,
        Err(source) => return Err(EbpfError::Pin { path, source }),
    };
    crate::layout::Records::read(pin_dir, layout)
}

/// The maps of a pin directory, opened read-only.
struct Pinned {
    by_name: HashMap<&'static str, Opened>,
}

impl Pinned {
    /// A typed map (aya checks the key and value sizes again) with a batch fd of the same
    /// read-only file.
    fn typed<T>(&mut self, spec: &MapSpec) -> Result<(T, BatchFd), EbpfError>
    where
        T: TryFrom<Map, Error = MapError>,
    {
        let Some(opened) = self.by_name.remove(spec.name) else {
            return Err(EbpfError::Map {
                map: spec.name,
                operation: "opening read-only".to_owned(),
                source: "not pinned next to the dataplane's other maps (an older version's \
                         directory?)"
                    .into(),
            });
        };
        let batch = BatchFd::new(opened.data.fd()).map_err(|e| EbpfError::Map {
            map: spec.name,
            operation: "duplicating its fd".to_owned(),
            source: Box::new(e),
        })?;
        let map = Map::from_map_data(opened.data)
            .and_then(T::try_from)
            .map_err(|e| EbpfError::map(spec.name, "opening read-only", e))?;
        Ok((map, batch))
    }

    fn map<T>(&mut self, spec: &MapSpec) -> Result<T, EbpfError>
    where
        T: TryFrom<Map, Error = MapError>,
    {
        self.typed(spec).map(|(m, _)| m)
    }

    /// [`Self::map`] for a map that an owner of another version may not have pinned: `None`
    /// when it is not in `sizes` (the pinned maps).
    fn optional<T>(
        &mut self,
        sizes: &BTreeMap<&'static str, u32>,
        spec: &MapSpec,
    ) -> Result<Option<T>, EbpfError>
    where
        T: TryFrom<Map, Error = MapError>,
    {
        if sizes.contains_key(spec.name) {
            self.map(spec).map(Some)
        } else {
            Ok(None)
        }
    }
}

/// A read-only view of the eBPF dataplane pinned in a directory: its maps and links, opened
/// by a process that does not own them. See [`Inspect`] for what it answers.
///
/// Needs what reading BPF objects needs (`CAP_BPF`, or root) and the same version of this
/// crate as the owner (map layouts are checked; another layout is an error naming the map).
///
/// ```no_run
/// use dataplane_core::Inspect;
/// use dataplane_ebpf::LiveEbpf;
/// let live = LiveEbpf::open("/sys/fs/bpf/dataplane".as_ref(), None)?;
/// for t in live.status()?.tables {
///     println!("{} {}/{} ({:.1}%)", t.name, t.entries, t.capacity, t.percent());
/// }
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub struct LiveEbpf {
    pin_dir: PathBuf,
    netns: Option<PathBuf>,
    maps: Maps,
    /// The sizes the pinned maps have.
    capacities: Capacities,
    /// `max_entries` of every pinned map, by name.
    sizes: BTreeMap<&'static str, u32>,
    /// `dp_sock_rev`, pinned only when the owner runs socket-level load balancing.
    sock_rev: Option<aya::maps::HashMap<MapData, [u8; 32], [u8; 24]>>,
    names: Option<aya::maps::HashMap<MapData, NameKey, NameValue>>,
    /// `dp_drops`: drops by observation point and reason.
    drops: Option<aya::maps::PerCpuArray<MapData, u64>>,
    /// `dp_l2_addrs`: the L2-announced addresses and their answers (absent when the owner
    /// is a version without L2 announcements).
    l2_addrs: Option<aya::maps::HashMap<MapData, L2Key, L2Value>>,
}

impl std::fmt::Debug for LiveEbpf {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LiveEbpf")
            .field("pin_dir", &self.pin_dir)
            .field("netns", &self.netns)
            .finish_non_exhaustive()
    }
}

impl LiveEbpf {
    /// Opens the maps an eBPF dataplane pinned in `pin_dir` ([`crate::EbpfConfig::pin_dir`])
    /// read-only. `netns` is the node's network namespace ([`crate::EbpfConfig::netns`]), where
    /// the event reader runs. Never loads, attaches or writes anything.
    ///
    /// # Errors
    /// [`EbpfError::Pin`] with an [`io::ErrorKind::NotFound`] source ("nothing is
    /// programmed") when `pin_dir` does not exist or holds none of the dataplane's maps;
    /// [`EbpfError::Map`] naming the map when one is missing or has another layout (another
    /// version of this crate owns the directory) or cannot be opened.
    pub fn open(pin_dir: &Path, netns: Option<&Path>) -> Result<LiveEbpf, EbpfError> {
        let nothing = || EbpfError::Pin {
            path: pin_dir.to_owned(),
            source: io::Error::new(
                io::ErrorKind::NotFound,
                format!(
                    "nothing is programmed: no pinned maps in {}",
                    pin_dir.display()
                ),
            ),
        };
        match std::fs::metadata(pin_dir) {
            Ok(m) if m.is_dir() => {}
            Ok(_) => return Err(nothing()),
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Err(nothing()),
            Err(source) => {
                return Err(EbpfError::Pin {
                    path: pin_dir.to_owned(),
                    source,
                })
            }
        }
        let records = layout_records(pin_dir)?;
        let mut by_name = HashMap::new();
        for spec in &MAPS {
            if let Some(opened) = open_map(pin_dir, spec)? {
                records.check(pin_dir, spec)?;
                by_name.insert(spec.name, opened);
            }
        }
        if by_name.is_empty() {
            return Err(nothing());
        }
        let sizes: BTreeMap<&'static str, u32> =
            by_name.iter().map(|(n, o)| (*n, o.capacity)).collect();
        let mut capacities = Capacities::default();
        for spec in &MAPS {
            if let Some(size) = sizes.get(spec.name) {
                capacities.set_size(spec, *size);
            }
        }
        let mut pinned = Pinned { by_name };
        let (svc, svc_batch) = pinned.typed(&map_table::SVC)?;
        let (backends, backends_batch) = pinned.typed(&map_table::BACKENDS)?;
        let (slots, slots_batch) = pinned.typed(&map_table::SLOTS)?;
        let (ct, ct_batch) = pinned.typed(&map_table::CT)?;
        let (pol_ct, pol_ct_batch) = pinned.typed(&map_table::POL_CT)?;
        let maps = Maps {
            svc,
            backends,
            slots,
            ct,
            affinity: pinned.map(&map_table::AFFINITY)?,
            src_ranges: pinned.map(&map_table::SRC_RANGES)?,
            cidrs: pinned.map(&map_table::CIDRS)?,
            config: pinned.map(&map_table::CONFIG)?,
            local: pinned.map(&map_table::LOCAL)?,
            stats: pinned.map(&map_table::STATS)?,
            pol_addr: pinned.map(&map_table::POL_ADDR)?,
            pol_rules: pinned.map(&map_table::POL_RULES)?,
            pol_blocks: pinned.map(&map_table::POL_BLOCKS)?,
            pol_tiers: pinned.map(&map_table::POL_TIERS)?,
            pol_ct,
            svc_batch,
            backends_batch,
            slots_batch,
            ct_batch,
            pol_ct_batch,
            // Read with batch lookups: a shared mapping of a read-only fd would do as well,
            // but each mapped chunk stays resident, and a reader reads each array once.
            backends_mmap: None,
            slots_mmap: None,
        };
        let sock_rev = pinned.optional(&sizes, &map_table::SOCK_REV)?;
        // Both absent when the owner is a version without flow events.
        let names = pinned.optional(&sizes, &map_table::NAMES)?;
        let drops = pinned.optional(&sizes, &map_table::DROPS)?;
        let l2_addrs = pinned.optional(&sizes, &map_table::L2_ADDRS_MAP)?;
        Ok(LiveEbpf {
            pin_dir: pin_dir.to_owned(),
            netns: netns.map(Path::to_owned),
            maps,
            capacities,
            sizes,
            sock_rev,
            names,
            drops,
            l2_addrs,
        })
    }

    /// The pin directory this view reads.
    pub fn pin_dir(&self) -> &Path {
        &self.pin_dir
    }

    /// Service-port id -> service name, from `dp_names` (empty without it).
    fn service_names(&self) -> Result<HashMap<u32, ObjectName>, EbpfError> {
        let Some(names) = &self.names else {
            return Ok(HashMap::new());
        };
        let mut out = HashMap::new();
        for item in names {
            let (k, v) = item.map_err(|e| EbpfError::map(map_table::NAMES.name, "reading", e))?;
            if k.kind != NAME_SERVICE {
                continue;
            }
            if let Some(name) = v.object_name() {
                out.insert(k.id, name);
            }
        }
        Ok(out)
    }

    /// Every backend id in use -> its address.
    fn backends_by_id(&self) -> Result<BTreeMap<u32, SocketAddr>, EbpfError> {
        let name = map_table::BACKENDS.name;
        let len = self.maps.backends.len();
        let all: Vec<BackendValue> = match self
            .maps
            .backends_batch
            .lookup_array(0, len as usize)
            .map_err(|e| syscall_error(name, "bpf_map_lookup_batch", e))?
        {
            Some(all) => all,
            None => (0..len)
                .map(|i| {
                    self.maps
                        .backends
                        .get(&i, 0)
                        .map_err(|e| EbpfError::map(name, "reading", e))
                })
                .collect::<Result<_, _>>()?,
        };
        Ok(all
            .iter()
            .enumerate()
            .filter(|(_, v)| v.family != 0)
            .filter_map(|(i, v)| {
                let id = u32::try_from(i).ok()?;
                Some((id, SocketAddr::new(v.addr.ip(v.family), v.port.get())))
            })
            .collect())
    }

    /// The frontends as `observe()` lists them (one per address, port and protocol: the
    /// copy reached from inside the node, the retired scope and the ClusterIP wildcards
    /// are left out), each with its service-port id, and the used slots.
    fn frontends(&self) -> Result<Read, EbpfError> {
        let current = Current::read(&self.maps, &self.capacities)?;
        let by_id = self.backends_by_id()?;
        let node_ips: BTreeSet<Addr> = current
            .cidrs
            .iter()
            .filter(|((_, len), bits)| *len == 128 && *bits & CIDR_F_NODE != 0)
            .map(|((addr, _), _)| *addr)
            .collect();
        let mut frontends: Vec<(u32, LiveFrontend)> = Vec::new();
        // Slot ranges are shared by frontends with the same backends: counted once each.
        let mut ranges: BTreeSet<(u32, u32)> = BTreeSet::new();
        for (k, v) in &current.frontends {
            if v.slot_count > 0 {
                ranges.insert((v.slot_base, v.slot_count));
            }
            if k.scope == SCOPE_EXTERNAL_INSIDE
                || k.scope == SCOPE_RETIRED_INTERNAL_OUTSIDE
                || v.flags & SVC_F_WILDCARD != 0
            {
                continue;
            }
            let Some(protocol) = Protocol::from_number(k.proto) else {
                continue;
            };
            let mut backends: Vec<SocketAddr> = current
                .slots_of(v)
                .iter()
                .filter_map(|id| by_id.get(id).copied())
                .collect();
            // Slots repeat a backend by its weight (or fill a Maglev table): each once.
            backends.sort();
            backends.dedup();
            frontends.push((
                v.id,
                LiveFrontend {
                    service: None,
                    kind: kind(k, v, &node_ips),
                    address: SocketAddr::new(k.addr.ip(k.family), k.port.get()),
                    protocol,
                    backends,
                },
            ));
        }
        frontends.sort_by(|a, b| {
            (a.1.address, a.1.protocol, a.0).cmp(&(b.1.address, b.1.protocol, b.0))
        });
        frontends.dedup_by(|a, b| a.1.address == b.1.address && a.1.protocol == b.1.protocol);
        Ok(Read {
            // (a ClusterIP's wildcard entry has id 0: it is no service's)
            service_ids: current
                .frontends
                .values()
                .filter(|v| v.flags & SVC_F_WILDCARD == 0)
                .map(|v| v.id)
                .collect(),
            frontends,
            svc_entries: current.frontends.len(),
            slots_used: ranges.iter().map(|(_, n)| u64::from(*n)).sum(),
            backend_ids: by_id.len(),
        })
    }

    fn fill(&self, spec: &MapSpec, entries: usize) -> TableFill {
        TableFill {
            name: spec.name.to_owned(),
            entries: entries as u64,
            capacity: u64::from(self.sizes.get(spec.name).copied().unwrap_or(0)),
        }
    }

    /// The fill level of every map with a capacity. Hash maps and tries count their keys.
    /// The arrays have all their elements all the time, so they count what is in use:
    /// `dp_backends` the ids that hold a backend, `dp_slots` the slots of the ranges the
    /// frontends point at (a range shared by several frontends once). Left out: `dp_config`
    /// (one element, always used), `dp_stats` and the other per-CPU counter arrays (every
    /// element is a counter: a fill level means nothing) and the `dp_events` ring buffer
    /// (sized in bytes, not entries).
    fn tables(&self, read: &Read, ct_entries: usize) -> Result<Vec<TableFill>, EbpfError> {
        let m = &self.maps;
        let mut out = vec![
            self.fill(&map_table::SVC, read.svc_entries),
            self.fill(&map_table::BACKENDS, read.backend_ids),
            self.fill(
                &map_table::SLOTS,
                usize::try_from(read.slots_used).unwrap_or(usize::MAX),
            ),
            self.fill(&map_table::CT, ct_entries),
            self.fill(
                &map_table::AFFINITY,
                count(m.affinity.keys(), map_table::AFFINITY.name)?,
            ),
            self.fill(
                &map_table::SRC_RANGES,
                count(m.src_ranges.keys(), map_table::SRC_RANGES.name)?,
            ),
            self.fill(
                &map_table::CIDRS,
                count(m.cidrs.keys(), map_table::CIDRS.name)?,
            ),
            self.fill(
                &map_table::LOCAL,
                count(m.local.keys(), map_table::LOCAL.name)?,
            ),
            self.fill(
                &map_table::POL_ADDR,
                count(m.pol_addr.keys(), map_table::POL_ADDR.name)?,
            ),
            self.fill(
                &map_table::POL_RULES,
                count(m.pol_rules.keys(), map_table::POL_RULES.name)?,
            ),
            self.fill(
                &map_table::POL_BLOCKS,
                count(m.pol_blocks.keys(), map_table::POL_BLOCKS.name)?,
            ),
            self.fill(
                &map_table::POL_TIERS,
                count(m.pol_tiers.keys(), map_table::POL_TIERS.name)?,
            ),
            self.fill(
                &map_table::POL_CT,
                all_entries(&m.pol_ct_batch, &m.pol_ct, map_table::POL_CT.name)?.len(),
            ),
        ];
        if let Some(sock_rev) = &self.sock_rev {
            out.push(self.fill(
                &map_table::SOCK_REV,
                count(sock_rev.keys(), map_table::SOCK_REV.name)?,
            ));
        }
        if let Some(names) = &self.names {
            out.push(self.fill(
                &map_table::NAMES,
                count(names.keys(), map_table::NAMES.name)?,
            ));
        }
        Ok(out)
    }

    /// Local endpoints: the distinct interfaces of `dp_local` (a dual-stack pod has an entry
    /// per address, on one interface).
    fn endpoints(&self) -> Result<u64, EbpfError> {
        let mut ifindexes = BTreeSet::new();
        for item in &self.maps.local {
            let (_, v) = item.map_err(|e| EbpfError::map(map_table::LOCAL.name, "reading", e))?;
            ifindexes.insert(v.ifindex);
        }
        Ok(ifindexes.len() as u64)
    }

    /// NetworkPolicy rule sets: per local endpoint (its number in `dp_pol_addr`; each of
    /// its addresses has an entry) each direction it is isolated in.
    fn policies(&self) -> Result<u64, EbpfError> {
        let mut isolated: BTreeSet<(u32, u8)> = BTreeSet::new();
        for item in &self.maps.pol_addr {
            let (_, v) =
                item.map_err(|e| EbpfError::map(map_table::POL_ADDR.name, "reading", e))?;
            if v.ep_id == 0 {
                continue;
            }
            for dir in [POL_F_ISO_INGRESS, POL_F_ISO_EGRESS] {
                if v.flags & dir != 0 {
                    isolated.insert((v.ep_id, dir));
                }
            }
        }
        Ok(isolated.len() as u64)
    }

    /// The counters of `dp_stats`, summed over CPUs, as `EbpfDataplane::stats` reports them
    /// (`flows`: the forward conntrack entries; `ct_entries`: all of them).
    fn stats(&self, flows: u64, ct_entries: usize) -> Result<Stats, EbpfError> {
        let mut totals = [0u64; STAT_NAMES.len()];
        for (i, total) in totals.iter_mut().enumerate() {
            let index = u32::try_from(i).unwrap_or(u32::MAX);
            let values = match self.maps.stats.get(&index, 0) {
                Ok(v) => v,
                // A counter added after an older version pinned the map.
                Err(MapError::OutOfBounds { .. }) if i >= STAT_ORIGINAL => continue,
                Err(e) => return Err(EbpfError::map(map_table::STATS.name, "reading", e)),
            };
            *total = values.iter().sum();
        }
        let mut other: BTreeMap<String, u64> = STAT_NAMES
            .iter()
            .zip(totals)
            .map(|(n, v)| ((*n).to_owned(), v))
            .collect();
        crate::ct::fill_counters(&mut other, ct_entries, self.capacities.conntrack);
        let drops = match &self.drops {
            Some(map) => crate::events::drop_counters(map, &mut other)?,
            None => BTreeMap::new(),
        };
        if let Some(map) = &self.l2_addrs {
            crate::l2::counters(map, &mut other)?;
        }
        Ok(Stats {
            packets_translated: totals[STAT_TRANSLATED],
            packets_dropped: totals[STAT_DROPPED],
            packets_rejected: totals[STAT_REJECTED],
            flows,
            drops,
            other,
        })
    }

    /// The programs attached by the owner, from the links pinned under `links/`: TCX and
    /// XDP links (`<hook>@<interface>`) and the socket hooks' cgroup links
    /// (`sock@<program>`), each as the kernel describes it (its program, attach type,
    /// interface or cgroup); and the clsact filters of kernels without TCX, which cannot be
    /// pinned and are recorded by a marker directory (`nl/<hook>@<interface>`). A link whose
    /// interface is gone (a deleted pod's veth: the pin outlives the device) is attached to
    /// nothing and left out, as is a pin that does not open as a link.
    fn attachments(&self) -> Result<Vec<Attachment>, EbpfError> {
        let dir = links_dir(&self.pin_dir);
        let Ok(entries) = std::fs::read_dir(&dir) else {
            return Ok(Vec::new());
        };
        let mut links: Vec<(String, LinkInfo)> = Vec::new();
        for entry in entries.flatten() {
            if entry.file_type().map_or(true, |t| t.is_dir()) {
                continue;
            }
            match link_info(&entry.path()) {
                Ok(info) => links.push((entry.file_name().to_string_lossy().into_owned(), info)),
                Err(e) => {
                    tracing::debug!(pin = %entry.path().display(), error = %e, "not a link");
                }
            }
        }
        let programs = if links.is_empty() {
            HashMap::new()
        } else {
            program_names()
        };
        // Interface indexes are the node's: resolved in its namespace.
        let interfaces = crate::netns::in_netns(self.netns.as_deref(), || {
            Ok(links
                .iter()
                .map(|(_, info)| (info.ifindex, interface_name(info.ifindex)))
                .collect::<HashMap<u32, Option<String>>>())
        })?;
        let mut out = BTreeSet::new();
        let mut as_links: BTreeSet<(String, &'static str)> = BTreeSet::new();
        for (file, info) in &links {
            if info.link_type == BPF_LINK_TYPE_CGROUP {
                // The socket hooks: the pin names the program (the kernel keeps 15
                // characters of a name, too few for `dp_sock_getpeername4`).
                let program = file.strip_prefix("sock@").unwrap_or(file);
                let hook = program.strip_prefix("dp_sock_").unwrap_or(program);
                out.insert(Attachment {
                    program: program.to_owned(),
                    hook: format!("cgroup-{hook}"),
                    target: Some(format!("cgroup id {}", info.cgroup_id())),
                });
                continue;
            }
            let hook = match (info.link_type, info.tcx_attach_type()) {
                (BPF_LINK_TYPE_XDP, _) => "xdp",
                (BPF_LINK_TYPE_TCX, BPF_TCX_INGRESS) => "tc-ingress",
                (BPF_LINK_TYPE_TCX, BPF_TCX_EGRESS) => "tc-egress",
                _ => continue,
            };
            let Some(Some(ifname)) = interfaces.get(&info.ifindex) else {
                tracing::debug!(pin = %file, link = info.id, "the link's interface is gone");
                continue;
            };
            let Some(program) = programs.get(&info.prog_id) else {
                continue;
            };
            if let Some(h) = HOOKS.iter().find(|h| h.program() == program) {
                as_links.insert((ifname.clone(), h.program()));
            }
            out.insert(Attachment {
                program: program.clone(),
                hook: hook.to_owned(),
                target: Some(ifname.clone()),
            });
        }
        // The rest of what the loader adopts are clsact filters (their marker directories).
        for (ifname, hook) in Objects::pinned_links(&self.pin_dir) {
            if hook == Hook::Xdp || as_links.contains(&(ifname.clone(), hook.program())) {
                continue;
            }
            // A link pin that did not open, or whose device is gone, is no clsact filter:
            // only a marker says so.
            let suffix = format!("@{ifname}");
            let marked = std::fs::read_dir(dir.join("nl")).is_ok_and(|d| {
                d.flatten()
                    .any(|e| e.file_name().to_string_lossy().ends_with(&suffix))
            });
            if !marked {
                continue;
            }
            out.insert(Attachment {
                program: hook.program().to_owned(),
                hook: if ingress(hook) {
                    "clsact-ingress"
                } else {
                    "clsact-egress"
                }
                .to_owned(),
                target: Some(ifname),
            });
        }
        Ok(out.into_iter().collect())
    }
}

/// `BPF_OBJ_GET_INFO_BY_FD` in `enum bpf_cmd`.
const BPF_OBJ_GET_INFO_BY_FD: libc::c_long = 15;
/// `BPF_LINK_TYPE_CGROUP` in `enum bpf_link_type`.
const BPF_LINK_TYPE_CGROUP: u32 = 3;
/// `BPF_LINK_TYPE_XDP`.
const BPF_LINK_TYPE_XDP: u32 = 6;
/// `BPF_LINK_TYPE_TCX`.
const BPF_LINK_TYPE_TCX: u32 = 11;
/// `BPF_TCX_INGRESS` in `enum bpf_attach_type`.
const BPF_TCX_INGRESS: u32 = 46;
/// `BPF_TCX_EGRESS`.
const BPF_TCX_EGRESS: u32 = 47;

/// `struct bpf_link_info` up to the union, and the union as words: aya 0.14's `LinkInfo`
/// gives only the type and ids, not the interface (`xdp.ifindex`, `tcx.ifindex` and
/// `tcx.attach_type` are its first two words, `cgroup.cgroup_id` its first eight bytes).
#[repr(C)]
#[derive(Debug, Default, Clone, Copy)]
struct LinkInfo {
    link_type: u32,
    id: u32,
    prog_id: u32,
    /// The union is 8-byte aligned.
    pad: u32,
    ifindex: u32,
    words: [u32; 15],
}

impl LinkInfo {
    fn tcx_attach_type(&self) -> u32 {
        self.words[0]
    }
    fn cgroup_id(&self) -> u64 {
        let mut b = [0u8; 8];
        b[..4].copy_from_slice(&self.ifindex.to_ne_bytes());
        b[4..].copy_from_slice(&self.words[0].to_ne_bytes());
        u64::from_ne_bytes(b)
    }
}

/// The `info` member of `union bpf_attr`.
#[repr(C)]
#[derive(Debug, Default)]
struct InfoAttr {
    bpf_fd: u32,
    info_len: u32,
    info: u64,
}

/// What the kernel says of the link pinned at `path`. Opening a link pin needs a read-write
/// fd (the kernel refuses others for links); it is used for this one query.
fn link_info(path: &Path) -> Result<LinkInfo, EbpfError> {
    use std::os::fd::AsRawFd as _;
    let fd = obj_get(path, 0).map_err(|source| EbpfError::Pin {
        path: path.to_owned(),
        source,
    })?;
    let mut info = LinkInfo::default();
    let mut attr = InfoAttr {
        bpf_fd: fd.as_raw_fd().cast_unsigned(),
        info_len: u32::try_from(std::mem::size_of::<LinkInfo>()).unwrap_or(u32::MAX),
        info: std::ptr::from_mut(&mut info) as u64,
    };
    // SAFETY: `attr` is the kernel's `bpf_attr.info` layout, fully initialised; `info`
    // points at `info_len` writable bytes of a plain-integer struct that outlives the call.
    unsafe { sys_bpf(BPF_OBJ_GET_INFO_BY_FD, &mut attr) }.map_err(|source| EbpfError::Pin {
        path: path.to_owned(),
        source,
    })?;
    Ok(info)
}

/// The name of interface `ifindex` in the calling thread's namespace; `None` when there is
/// none (0: a link whose device went).
fn interface_name(ifindex: u32) -> Option<String> {
    if ifindex == 0 {
        return None;
    }
    let mut buf = [0u8; libc::IF_NAMESIZE];
    // SAFETY: `buf` has the IF_NAMESIZE bytes `if_indextoname` may write, NUL included.
    let p = unsafe { libc::if_indextoname(ifindex, buf.as_mut_ptr().cast()) };
    if p.is_null() {
        return None;
    }
    let end = buf.iter().position(|b| *b == 0).unwrap_or(buf.len());
    String::from_utf8(buf[..end].to_vec()).ok()
}

/// What one read of the service maps found.
struct Read {
    /// (service-port id, frontend), sorted by address and protocol.
    frontends: Vec<(u32, LiveFrontend)>,
    /// Every service-port id of `dp_svc`, in every scope.
    service_ids: BTreeSet<u32>,
    svc_entries: usize,
    slots_used: u64,
    backend_ids: usize,
}

/// The TC and XDP hooks, whose programs have distinct names.
const HOOKS: [Hook; 6] = [
    Hook::FromPod,
    Hook::ToPod,
    Hook::FromUplink,
    Hook::ToUplink,
    Hook::ToLo,
    Hook::Xdp,
];

/// Whether `hook` runs on ingress (TC ingress, or XDP before it).
fn ingress(hook: Hook) -> bool {
    matches!(hook, Hook::FromPod | Hook::FromUplink | Hook::Xdp)
}

/// Program id -> name of every loaded program (one pass over the kernel's programs).
fn program_names() -> HashMap<u32, String> {
    aya::programs::loaded_programs()
        .filter_map(Result::ok)
        .filter_map(|p| Some((p.id(), p.name_as_str()?.to_owned())))
        .collect()
}

/// The kind of frontend `k` as far as the maps tell: ClusterIPs by their scope, NodePorts
/// as external frontends on one of the node's addresses (`dp_cidrs` marks them), and
/// LoadBalancer IPs only when they have source ranges (an ExternalIP and a LoadBalancer IP
/// without ranges have the same entries).
fn kind(k: &SvcKey, v: &SvcValue, node_ips: &BTreeSet<Addr>) -> Option<String> {
    let kind = match k.scope {
        SCOPE_INTERNAL => "ClusterIP",
        SCOPE_EXTERNAL if node_ips.contains(&Addr::mapped(k.addr.ip(k.family))) => "NodePort",
        SCOPE_EXTERNAL if v.flags & SVC_F_SRC_RANGES != 0 => "LoadBalancer",
        _ => return None,
    };
    Some(kind.to_owned())
}

/// How many keys a walk of a map meets. A walk that meets a key deleted under it starts
/// again (the kernel's next key after a missing key is the first), so under churn this is an
/// estimate; a quiet map is counted exactly.
fn count<K>(
    keys: impl Iterator<Item = Result<K, MapError>>,
    name: &'static str,
) -> Result<usize, EbpfError> {
    let mut n = 0;
    for key in keys {
        key.map_err(|e| EbpfError::map(name, "reading", e))?;
        n += 1;
    }
    Ok(n)
}

fn syscall_error(name: &'static str, call: &'static str, e: io::Error) -> EbpfError {
    EbpfError::map(
        name,
        "reading",
        MapError::SyscallError(aya::sys::SyscallError { call, io_error: e }),
    )
}

impl LiveEbpf {
    fn read_services(&self) -> Result<Vec<LiveFrontend>, EbpfError> {
        let names = self.service_names()?;
        Ok(self
            .frontends()?
            .frontends
            .into_iter()
            .map(|(id, mut f)| {
                f.service = names.get(&id).cloned();
                f
            })
            .collect())
    }

    fn read_conntrack(&self) -> Result<Vec<Flow>, EbpfError> {
        let names = self.service_names()?;
        Ok(flows(ct_entries(&self.maps)?, |id| names.get(&id).cloned()))
    }

    fn read_status(&self) -> Result<NodeStatus, EbpfError> {
        let names = self.service_names()?;
        let read = self.frontends()?;
        // Services: distinct names, and the ids without one each on their own (a service
        // has an id per port: without names, a service of two ports counts twice).
        let mut with_name: BTreeSet<&ObjectName> = BTreeSet::new();
        let mut unnamed: BTreeSet<u32> = BTreeSet::new();
        for id in &read.service_ids {
            match names.get(id) {
                Some(n) => {
                    with_name.insert(n);
                }
                None => {
                    unnamed.insert(*id);
                }
            }
        }
        // Backends: each once per service, over its frontends.
        let mut backends: BTreeSet<(Result<&ObjectName, u32>, SocketAddr)> = BTreeSet::new();
        for (id, f) in &read.frontends {
            let service = names.get(id).ok_or(*id);
            for b in &f.backends {
                backends.insert((service, *b));
            }
        }
        let ct = ct_entries(&self.maps)?;
        let flows = ct.iter().filter(|(_, v)| v.is_forward()).count() as u64;
        Ok(NodeStatus {
            dataplane: BACKEND.to_owned(),
            attachments: self.attachments()?,
            services: (with_name.len() + unnamed.len()) as u64,
            frontends: read.frontends.len() as u64,
            backends: backends.len() as u64,
            endpoints: self.endpoints()?,
            policies: self.policies()?,
            tables: self.tables(&read, ct.len())?,
            conntrack_entries: flows,
            stats: self.stats(flows, ct.len())?,
        })
    }
}

/// The service connections of conntrack `entries` (pod masquerade left out), named by
/// `service` (service-port id -> name), sorted by frontend and client: what `flows()` of the
/// owner and [`Inspect::conntrack`] answer.
pub(crate) fn flows(
    entries: Vec<(CtKey, CtEntry)>,
    service: impl Fn(u32) -> Option<ObjectName>,
) -> Vec<Flow> {
    let mut out = Vec::new();
    for (k, v) in entries {
        let Some(protocol) = Protocol::from_number(k.proto) else {
            continue;
        };
        let at = |a: &Addr, port: Be16| SocketAddr::new(a.ip(k.family), port.get());
        if v.is_reverse() && v.flags & CT_F_DSR != 0 {
            // A DSR flow on the backend's node: only the reverse entry learnt from the
            // option exists (the service is the ingress node's business).
            out.push(Flow {
                protocol,
                client: at(&k.daddr, k.dport),
                frontend: at(&v.nat_addr, v.nat_port),
                backend: at(&k.saddr, k.sport),
                service: None,
            });
            continue;
        }
        if !v.is_forward() || v.flags & CT_F_MASQ != 0 {
            continue;
        }
        out.push(Flow {
            protocol,
            client: at(&k.saddr, k.sport),
            frontend: at(&k.daddr, k.dport),
            backend: at(&v.nat_addr, v.nat_port),
            service: service(v.svc_id),
        });
    }
    out.sort_by_key(|f| (f.frontend, f.client));
    out
}

impl Inspect for LiveEbpf {
    fn status(&self) -> Result<NodeStatus, Error> {
        Ok(self.read_status()?)
    }

    fn services(&self) -> Result<Vec<LiveFrontend>, Error> {
        Ok(self.read_services()?)
    }

    fn conntrack(&self) -> Result<Vec<Flow>, Error> {
        Ok(self.read_conntrack()?)
    }

    /// A reader of the owner's pinned ring buffer. `options` are ignored: an inspector never
    /// changes what the owner's programs report (drops and rejects always; the rest as the
    /// owner's readers asked). The ring buffer is single-consumer: beside another reader
    /// (the agent's flow log) each gets part of the events.
    fn events(&self, options: &EventOptions) -> Result<BoxEventSource, Error> {
        let _ = options;
        Ok(Box::new(crate::events::open_pinned_events(
            &self.pin_dir,
            self.netns.as_deref(),
        )?))
    }
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;

    use aya::maps::{HashMap as BpfHashMap, Map, MapData};

    use super::open_read_only;
    use crate::map_table;
    use crate::maps::{SvcEntry, SvcKey};
    use crate::{EbpfConfig, EbpfDataplane};

    /// The inspector's map fds cannot write: the kernel refuses an update through one with
    /// `EPERM`, whatever the code holding it does.
    #[test]
    fn a_read_only_fd_cannot_write() {
        if !dataplane_testkit::require_root("a_read_only_fd_cannot_write") {
            return;
        }
        let dir = PathBuf::from(format!("/sys/fs/bpf/dpe-live-ro-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let mut owner = EbpfDataplane::new(EbpfConfig::new(&dir)).expect("load");
        let fd = open_read_only(&map_table::SVC.pin_path(&dir)).expect("open read-only");
        let data = MapData::from_fd(fd).expect("map data");
        let mut svc: BpfHashMap<MapData, SvcKey, SvcEntry> = Map::from_map_data(data)
            .and_then(BpfHashMap::try_from)
            .expect("typed");
        let err = svc
            .insert(SvcKey::default(), SvcEntry::default(), 0)
            .expect_err("a read-only fd writes nothing");
        let refused = matches!(
            &err,
            aya::maps::MapError::SyscallError(e) if e.io_error.raw_os_error() == Some(libc::EPERM)
        );
        assert!(refused, "EPERM expected: {err:?}");
        assert_eq!(svc.keys().count(), 0, "and reads work");
        dataplane_core::Dataplane::reset(&mut owner).expect("reset");
    }
}
