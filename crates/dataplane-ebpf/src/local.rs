//! The pods of this node as `dp_local` holds them: each address -> the index of the pod's
//! interface, resolved in the node's namespace. The writer (`writer::sync_local`) makes the
//! map hold what [`wanted`] answers.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::sync::Arc;

use dataplane_core::{ChangeSet, DesiredState};

use crate::config::XdpMode;
use crate::error::EbpfError;
use crate::hook::Hook;
use crate::maps::{family_of, Addr, LocalKey};
use crate::netns::THREAD_NETNS;

/// The index of interface `name` in the calling thread's namespace, 0 when there is none.
pub(crate) fn ifindex_of(name: &str) -> u32 {
    lookup_ifindex(name).ok().flatten().unwrap_or(0)
}

/// The index of interface `name` in the calling thread's namespace: `Ok(None)` when there is
/// no such interface (`ENODEV`, or a name no interface can have), `Err` when the lookup
/// itself failed (out of file descriptors, say), which says nothing about the interface.
pub(crate) fn lookup_ifindex(name: &str) -> std::io::Result<Option<u32>> {
    let Ok(c) = std::ffi::CString::new(name) else {
        return Ok(None);
    };
    // SAFETY: `c` is a valid NUL-terminated string that outlives the call.
    match unsafe { libc::if_nametoindex(c.as_ptr()) } {
        0 => {
            let e = std::io::Error::last_os_error();
            match e.raw_os_error() {
                Some(libc::ENODEV | libc::ENXIO) => Ok(None),
                _ => Err(e),
            }
        }
        i => Ok(Some(i)),
    }
}

/// Interface indexes looked up once per sync, in one namespace, through one socket: a lookup
/// by `if_nametoindex` opens and closes a socket of its own (~9 of its ~10 µs on the loaded
/// 2-CPU bench VM; the `SIOCGIFINDEX` ioctl itself ~1.4 µs), and a sync looked each pod's
/// interface up three times (its two hooks and `dp_local`): ~40 lookups, most of an endpoint
/// change's `apply_changes` on the scaling bench's node. Failed lookups are not kept (the next
/// one tries again). What was found is valid for one sync only (interfaces come and go
/// between syncs): [`Self::start_sync`] forgets it.
///
/// The socket answers in the namespace it was opened in, whichever namespace the calling
/// thread is in: [`Self::start_sync`] opens it in the node's namespace once and keeps it for
/// later syncs, so that a sync that attaches nothing never enters that namespace (entering
/// and leaving it was ~37 µs of an endpoint change's ~170 µs; benches/notes.md). Without
/// `start_sync` (`Default`) it is opened at the first lookup, in the calling thread's
/// namespace.
#[derive(Debug, Default)]
pub(crate) struct Ifindexes {
    found: HashMap<String, Option<u32>>,
    socket: Option<OwnedFd>,
    /// The namespace (device and inode of its nsfs file) `socket` was opened in by
    /// [`Self::start_sync`].
    netns: Option<(u64, u64)>,
    /// What [`Self::wanted_attachments`] built last, and for which XDP mode.
    attachments: Option<(XdpMode, Arc<Attachments>)>,
}

/// Interfaces and hooks a state needs: `(interface, hook)`.
pub(crate) type Attachments = BTreeSet<(String, Hook)>;

/// The interface programs on the loopback attach to.
const LOOPBACK: &str = "lo";

/// The identity of the namespace whose nsfs file (or a bind mount of it) is at `path`.
fn netns_id(path: &Path) -> Result<(u64, u64), EbpfError> {
    let meta = std::fs::metadata(path).map_err(|source| EbpfError::Netns {
        path: path.to_owned(),
        source,
    })?;
    Ok((meta.dev(), meta.ino()))
}

/// A datagram socket for the interface ioctls, in the calling thread's namespace.
fn ioctl_socket() -> std::io::Result<OwnedFd> {
    // SAFETY: plain socket(2); the fd it returns (if any) is owned here alone.
    let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: `fd` was just opened and nothing else owns it.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

impl Ifindexes {
    /// Starts a sync's lookups in the namespace at `netns` (`None`: the calling thread's):
    /// forgets what earlier syncs found and keeps their socket when it was opened in that
    /// namespace (one `stat` tells); otherwise opens one there, entering it once. A node
    /// namespace deleted and made again under the same path is a new namespace, and gets a
    /// new socket.
    ///
    /// # Errors
    /// [`EbpfError::Netns`] when the namespace is not there or no socket can be opened in it.
    pub(crate) fn start_sync(&mut self, netns: Option<&Path>) -> Result<(), EbpfError> {
        self.found.clear();
        let path = netns.unwrap_or(Path::new(THREAD_NETNS));
        let id = netns_id(path);
        if self.socket.is_some() && matches!((&id, self.netns), (Ok(a), Some(b)) if *a == b) {
            return Ok(());
        }
        // Closed also when the namespace is gone: the socket would keep it alive.
        self.socket = None;
        self.netns = None;
        id?;
        let (socket, id) = crate::netns::in_netns(netns, || {
            let socket = ioctl_socket().map_err(|source| EbpfError::Netns {
                path: path.to_owned(),
                source,
            })?;
            // Of the namespace entered, not of the path looked at before (which may have
            // been replaced in between).
            Ok((socket, netns_id(Path::new(THREAD_NETNS))?))
        })?;
        self.socket = Some(socket);
        self.netns = Some(id);
        Ok(())
    }

    /// The interfaces and hooks `state` needs: its uplink's (XDP too when `xdp` is on), the
    /// loopback's and its endpoints' interfaces' two each. Built again only when the sync
    /// is a full one (`changes` is `None`) or its changes touch the node or the endpoints:
    /// an incremental sync's `changes` are a diff from the state of the last sync, which
    /// succeeded (a failed one makes the next one full), and which built the set kept
    /// (a 25-name set of owned strings was ~4 µs of a ~55 µs endpoint change).
    pub(crate) fn wanted_attachments(
        &mut self,
        state: &DesiredState,
        xdp: XdpMode,
        changes: Option<&ChangeSet>,
    ) -> Arc<Attachments> {
        let same = changes.is_some_and(|c| c.node.is_none() && c.endpoints.is_empty());
        if let Some((built_for, kept)) = &self.attachments {
            if same && *built_for == xdp {
                return Arc::clone(kept);
            }
        }
        let mut out = Attachments::new();
        let uplink = &state.node.interfaces.uplink;
        if xdp.is_on() {
            out.insert((uplink.clone(), Hook::Xdp));
        }
        out.insert((uplink.clone(), Hook::FromUplink));
        out.insert((uplink.clone(), Hook::ToUplink));
        out.insert((LOOPBACK.to_owned(), Hook::ToLo));
        for e in &state.endpoints {
            out.insert((e.interface.clone(), Hook::FromPod));
            out.insert((e.interface.clone(), Hook::ToPod));
        }
        let out = Arc::new(out);
        self.attachments = Some((xdp, Arc::clone(&out)));
        out
    }

    /// [`lookup_ifindex`], once per name.
    pub(crate) fn lookup(&mut self, name: &str) -> std::io::Result<Option<u32>> {
        if let Some(found) = self.found.get(name) {
            return Ok(*found);
        }
        let found = self.ioctl(name)?;
        self.found.insert(name.to_owned(), found);
        Ok(found)
    }

    /// `SIOCGIFINDEX` on the kept socket (without [`Self::start_sync`]: opened at the first
    /// lookup); `if_nametoindex` when no socket can be opened.
    fn ioctl(&mut self, name: &str) -> std::io::Result<Option<u32>> {
        let bytes = name.as_bytes();
        // A name no interface can have (what if_nametoindex answers with ENODEV).
        if bytes.is_empty() || bytes.len() >= libc::IFNAMSIZ || bytes.contains(&0) {
            return Ok(None);
        }
        if self.socket.is_none() {
            match ioctl_socket() {
                Ok(socket) => self.socket = Some(socket),
                Err(_) => return lookup_ifindex(name),
            }
        }
        let Some(socket) = &self.socket else {
            return lookup_ifindex(name);
        };
        // SAFETY: `ifreq` is plain data (a name and a union of integers and addresses): all
        // zeroes is a valid value of it.
        let mut req: libc::ifreq = unsafe { std::mem::zeroed() };
        for (dst, src) in req.ifr_name.iter_mut().zip(bytes) {
            *dst = src.cast_signed();
        }
        // SAFETY: SIOCGIFINDEX reads the NUL-terminated name (the rest of `ifr_name` is
        // zero) and writes `ifru_ifindex` of `req`, which outlives the call.
        let ret = unsafe { libc::ioctl(socket.as_raw_fd(), libc::SIOCGIFINDEX, &raw mut req) };
        if ret < 0 {
            let e = std::io::Error::last_os_error();
            return match e.raw_os_error() {
                Some(libc::ENODEV | libc::ENXIO) => Ok(None),
                _ => Err(e),
            };
        }
        // SAFETY: a successful SIOCGIFINDEX wrote the index into this member of the union.
        let index = unsafe { req.ifr_ifru.ifru_ifindex };
        Ok(u32::try_from(index).ok().filter(|i| *i != 0))
    }
}

/// The `dp_local` entries of `endpoints`, at most `max` (the map's size; the rest are left
/// to the FIB): an interface that is not there yet is left to the FIB too. Resolved at every
/// sync that looks at endpoints, so that a recreated interface is found under its new index.
pub(crate) fn wanted(
    endpoints: &[dataplane_core::Endpoint],
    max: u32,
    ifindexes: &mut Ifindexes,
) -> BTreeMap<LocalKey, u32> {
    let mut want: BTreeMap<LocalKey, u32> = BTreeMap::new();
    for e in endpoints {
        let ifindex = ifindexes.lookup(&e.interface).ok().flatten().unwrap_or(0);
        if ifindex == 0 {
            tracing::debug!(endpoint = %e.name, interface = %e.interface, "no such interface yet");
            continue;
        }
        for ip in &e.ips {
            let key = LocalKey {
                addr: Addr::new(*ip),
                family: family_of(ip),
                pad: [0; 3],
            };
            want.insert(key, ifindex);
        }
    }
    let max = max as usize;
    if want.len() > max {
        tracing::warn!(
            pods = want.len(),
            kept = max,
            "more pod addresses than dp_local holds: the rest are routed by the FIB"
        );
        want = want.into_iter().take(max).collect();
    }
    want
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(args: &[&str]) {
        let status = std::process::Command::new("ip")
            .args(args)
            .status()
            .unwrap();
        assert!(status.success(), "ip {args:?}");
    }

    /// Root only (it creates namespaces): after `start_sync` the lookups answer for the
    /// node's namespace from a thread that stays in its own, through a socket kept for the
    /// next sync; a namespace made again under the same path gets a socket of its own.
    #[test]
    fn lookups_answer_for_the_node_namespace_without_entering_it() {
        if !nix::unistd::Uid::effective().is_root() {
            assert!(
                std::env::var_os("CI").is_none(),
                "needs root (CI=true: a skip is a failure)"
            );
            eprintln!(
                "skipped lookups_answer_for_the_node_namespace_without_entering_it: needs root"
            );
            return;
        }
        let name = format!("dp-local-test-{}", std::process::id());
        let path = std::path::PathBuf::from(format!("/run/netns/{name}"));
        ip(&["netns", "add", &name]);
        ip(&[
            "-n",
            &name,
            "link",
            "add",
            "dp-only-here",
            "type",
            "veth",
            "peer",
            "name",
            "dp-peer",
        ]);
        let mut ifx = Ifindexes::default();
        ifx.start_sync(Some(&path)).unwrap();
        assert!(ifx.lookup("dp-only-here").unwrap().is_some());
        assert_eq!(
            lookup_ifindex("dp-only-here").unwrap(),
            None,
            "the calling thread is in its own namespace"
        );
        let socket = ifx.socket.as_ref().map(AsRawFd::as_raw_fd);
        ifx.start_sync(Some(&path)).unwrap();
        assert_eq!(ifx.socket.as_ref().map(AsRawFd::as_raw_fd), socket, "kept");
        ip(&["netns", "del", &name]);
        ip(&["netns", "add", &name]);
        ifx.start_sync(Some(&path)).unwrap();
        assert_eq!(
            ifx.lookup("dp-only-here").unwrap(),
            None,
            "the new namespace has no such interface"
        );
        ip(&["netns", "del", &name]);
        assert!(matches!(
            ifx.start_sync(Some(&path)),
            Err(EbpfError::Netns { .. })
        ));
        assert!(
            ifx.socket.is_none(),
            "the gone namespace's socket is closed"
        );
    }

    #[test]
    fn ifindexes_answer_as_if_nametoindex_does() {
        let mut ifx = Ifindexes::default();
        let lo = ifx.lookup("lo").unwrap();
        assert!(lo.is_some(), "lo has an index in every namespace");
        assert_eq!(lo, lookup_ifindex("lo").unwrap());
        assert_eq!(
            ifx.lookup("lo").unwrap(),
            lo,
            "asked again: the kept answer"
        );
        for missing in ["dp-no-such-if", "", "a-name-too-long-for-ifnamsiz", "n\0ul"] {
            assert_eq!(ifx.lookup(missing).unwrap(), None, "{missing:?}");
            assert_eq!(lookup_ifindex(missing).unwrap(), None, "{missing:?}");
        }
    }
}
