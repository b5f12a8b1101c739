//! The manifest-directory source (`--manifests DIR`): the objects of every `*.yaml`, `*.yml`
//! and `*.json` file directly in the directory (multi-document, `kind: List` too), watched
//! with inotify (the `notify` crate).
//!
//! ```text
//!  DIR ──inotify──▶ notify thread ──paths──▶ source thread: debounce, re-read the changed
//!                                            files only, diff per object ──SourceEvent──▶ loop
//! ```
//!
//! - At start: `Listed` for all six kinds (empty lists included), then per change the
//!   difference per object: `Applied` for a new or changed object, `Deleted` for one that is
//!   gone from every file. An object that moved from one file to another in one burst is
//!   neither deleted nor re-applied.
//! - Editors that save by writing a temporary file and renaming it over the old one, files
//!   created and deleted, and Kubernetes `ConfigMap` volumes (whose files are symlinks into a
//!   `..data` directory swapped at once) are all seen: an event on a manifest file re-reads
//!   that file, an event on anything else that is a directory (or the watch's own overflow)
//!   rescans the directory, re-reading the files whose inode, size or mtime changed. A file
//!   is read when it is closed after writing, created, renamed or deleted, never while it is
//!   being written (`IN_MODIFY` is not watched).
//! - A file that goes empty or missing keeps its objects for [`SETTLE`] and is read again
//!   before they are deleted (`kubectl get -o yaml > f` truncates first; emacs renames the
//!   file to a backup first).
//! - A file that fails to parse keeps the objects it had (a half-written file does not
//!   delete services) and an `Error` event names the file, document and field.
//! - When two files hold the same object, the one in the file whose name sorts last wins;
//!   the other takes over if that file drops it.
//! - Hidden files (a leading `.`: editors' swap files, `..data`) are not read.

use std::collections::{BTreeMap, BTreeSet};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc as std_mpsc;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use anyhow::Context;
use dataplane_kube::{parse_manifests, Kind, Object, ObjectKey};
use notify::event::{AccessKind, AccessMode, EventKind, ModifyKind};
use notify::{Config, EventKindMask, RecommendedWatcher, RecursiveMode, Watcher};
use tokio::sync::mpsc;

use crate::source::SourceEvent;

/// How long the directory must be quiet before a burst of events is read: an editor's save
/// is several events within microseconds, `kubectl get -o yaml > f` a few writes.
pub const DEBOUNCE: Duration = Duration::from_millis(5);
/// The longest a burst is held back while events keep coming.
pub const MAX_BATCH_DELAY: Duration = Duration::from_millis(100);
/// How long the objects of a file that went empty or missing are kept before they are
/// deleted (the file is read once more then): long enough for `kubectl get -o yaml > f` or an
/// editor's backup-and-write save to finish, short enough that a deleted file is soon seen.
pub const SETTLE: Duration = Duration::from_millis(400);

/// A file's identity and version as the directory listing shows it: a file replaced by a
/// rename has a new inode, one written in place a new size or mtime.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Fingerprint {
    dev: u64,
    ino: u64,
    len: u64,
    mtime_ns: i128,
}

impl Fingerprint {
    fn of(metadata: &std::fs::Metadata) -> Self {
        Self {
            dev: metadata.dev(),
            ino: metadata.ino(),
            len: metadata.len(),
            mtime_ns: i128::from(metadata.mtime()) * 1_000_000_000
                + i128::from(metadata.mtime_nsec()),
        }
    }
}

/// An object's content, to tell whether it changed: a hash of its JSON form. The directory
/// keeps these, not the objects, so that the objects are held once (by the store): twenty
/// thousand Kubernetes objects are a hundred megabytes.
type Digest = u64;

fn digest(object: &Object) -> Digest {
    struct HashWriter(std::collections::hash_map::DefaultHasher);
    impl std::io::Write for HashWriter {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            std::hash::Hasher::write(&mut self.0, buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    let mut w = HashWriter(std::collections::hash_map::DefaultHasher::new());
    // Serializing a Kubernetes object into a hasher cannot fail.
    let _ = match object {
        Object::Service(o) => serde_json::to_writer(&mut w, o),
        Object::EndpointSlice(o) => serde_json::to_writer(&mut w, o),
        Object::NetworkPolicy(o) => serde_json::to_writer(&mut w, o),
        Object::Pod(o) => serde_json::to_writer(&mut w, o),
        Object::Namespace(o) => serde_json::to_writer(&mut w, o),
        Object::Node(o) => serde_json::to_writer(&mut w, o),
    };
    std::hash::Hasher::finish(&w.0)
}

#[derive(Debug, Default)]
struct FileState {
    fingerprint: Option<Fingerprint>,
    objects: BTreeMap<ObjectKey, Digest>,
}

/// The objects of a manifest directory, by file, and the differences between two looks at
/// it. Pure except for reading the files: the watcher thread of [`spawn`] drives it, tests
/// may too.
#[derive(Debug)]
pub struct ManifestDir {
    dir: PathBuf,
    files: BTreeMap<PathBuf, FileState>,
    /// Which files hold each object (the last one wins).
    holders: BTreeMap<ObjectKey, BTreeSet<PathBuf>>,
    /// How many times a file was read (shared with [`ManifestSource::reads`]).
    reads: Arc<AtomicU64>,
    /// Files that lost their objects, held back until the deadline (see [`SETTLE`]).
    settling: BTreeMap<PathBuf, Instant>,
}

/// What a file read gave.
enum Read {
    Gone,
    Objects(Fingerprint, BTreeMap<ObjectKey, Object>),
    Failed(String),
}

/// Objects read in this round, by file.
type Fresh = BTreeMap<PathBuf, BTreeMap<ObjectKey, Object>>;

impl ManifestDir {
    /// The directory `dir`, not read yet.
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        Self {
            dir: dir.into(),
            files: BTreeMap::new(),
            holders: BTreeMap::new(),
            reads: Arc::new(AtomicU64::new(0)),
            settling: BTreeMap::new(),
        }
    }

    /// When the earliest file held back (it went empty or missing) is to be read again and
    /// its objects deleted if it is still empty; `None` when no file is held back.
    pub fn settle_deadline(&self) -> Option<Instant> {
        self.settling.values().min().copied()
    }

    /// How many times a manifest file was read so far (to tell that nothing is read while
    /// nothing changes).
    pub fn reads(&self) -> u64 {
        self.reads.load(Ordering::Relaxed)
    }

    fn read(&self, path: &Path) -> Read {
        self.reads.fetch_add(1, Ordering::Relaxed);
        read_file(path)
    }

    /// The directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Whether the directory defines the object now.
    pub fn contains(&self, key: &ObjectKey) -> bool {
        self.current(key).is_some()
    }

    /// The file that defines the object now, and its digest.
    fn current(&self, key: &ObjectKey) -> Option<(&PathBuf, Digest)> {
        let file = self.holders.get(key)?.last()?;
        Some((file, *self.files.get(file)?.objects.get(key)?))
    }

    /// Reads the whole directory (again) and lists it: the errors of the files that fail,
    /// then `Listed` for every kind, empty ones included. A file that fails to parse
    /// contributes nothing to the listing.
    pub fn list(&mut self) -> anyhow::Result<Vec<SourceEvent>> {
        let mut events = Vec::new();
        // The files there now, and those known from before that may be gone.
        let mut paths: BTreeSet<PathBuf> = self.manifest_files()?.into_iter().collect();
        paths.extend(self.files.keys().cloned());
        let mut fresh = Fresh::new();
        for path in &paths {
            let read = self.read(path);
            self.store(path, read, &mut events, &mut fresh);
        }
        let mut by_kind: BTreeMap<Kind, Vec<Object>> =
            Kind::ALL.iter().map(|k| (*k, Vec::new())).collect();
        let keys: Vec<ObjectKey> = self.holders.keys().cloned().collect();
        for key in keys {
            let Some((file, _)) = self.current(&key) else {
                continue;
            };
            if let Some(object) = fresh.get_mut(file).and_then(|objects| objects.remove(&key)) {
                by_kind.entry(key.kind).or_default().push(object);
            }
        }
        events.extend(
            by_kind
                .into_iter()
                .map(|(kind, objects)| SourceEvent::Listed { kind, objects }),
        );
        Ok(events)
    }

    /// Takes in the changes at `paths` (what the watcher reported; `rescan`: it lost track, or
    /// something other than a manifest file changed) and returns the differences per object.
    ///
    /// A file that lost all its objects (it is gone, or reads empty) is not taken in at once:
    /// its objects stay for [`SETTLE`], and the file is read again before they are deleted
    /// (see [`ManifestDir::update_at`]).
    pub fn update(&mut self, paths: &BTreeSet<PathBuf>, rescan: bool) -> Vec<SourceEvent> {
        self.update_at(paths, rescan, Instant::now())
    }

    /// [`ManifestDir::update`] at `now` (tests pass a clock of their own). Also takes in
    /// the files held back whose settle time is over at `now`.
    ///
    /// Why the hold-back: `kubectl get -o yaml > f` truncates `f` before it writes it, and
    /// editors that keep a backup (emacs) rename `f` away before they write the new `f`.
    /// Either way the file is empty or missing for a moment, and taking that as the truth
    /// would delete every service it defines, then add them back (connections reset, load
    /// balancers see the node fail).
    pub fn update_at(
        &mut self,
        paths: &BTreeSet<PathBuf>,
        rescan: bool,
        now: Instant,
    ) -> Vec<SourceEvent> {
        let mut files = if paths.is_empty() && !rescan {
            BTreeSet::new()
        } else {
            match self.changed_files(paths, rescan) {
                Ok(files) => files,
                Err(e) => {
                    return vec![SourceEvent::Error {
                        kind: None,
                        message: format!("{e:#}"),
                    }]
                }
            }
        };
        // Held-back files whose time is up: read once more and taken as they are then.
        let settled: BTreeSet<PathBuf> = self
            .settling
            .iter()
            .filter(|(_, deadline)| **deadline <= now)
            .map(|(file, _)| file.clone())
            .collect();
        for file in &settled {
            self.settling.remove(file);
        }
        files.extend(settled.iter().cloned());
        let mut events = Vec::new();
        // What each touched object looked like before: after all the files are read, an
        // object is compared once (a move between two files is no change).
        let mut before: BTreeMap<ObjectKey, Option<Digest>> = BTreeMap::new();
        for file in &files {
            if let Some(state) = self.files.get(file) {
                for key in state.objects.keys() {
                    before
                        .entry(key.clone())
                        .or_insert_with(|| self.current(key).map(|(_, d)| d));
                }
            }
        }
        let mut reads = Vec::new();
        for file in &files {
            let read = self.read(file);
            let emptied = match &read {
                Read::Gone => true,
                Read::Objects(_, objects) => objects.is_empty(),
                Read::Failed(_) => false,
            };
            let had_objects = self.files.get(file).is_some_and(|f| !f.objects.is_empty());
            if emptied && had_objects && !settled.contains(file) {
                // Keep the objects for now; the first emptying's deadline stands, so that a
                // file truncated again and again still settles.
                self.settling.entry(file.clone()).or_insert(now + SETTLE);
                continue;
            }
            self.settling.remove(file);
            if let Read::Objects(_, objects) = &read {
                for key in objects.keys() {
                    before
                        .entry(key.clone())
                        .or_insert_with(|| self.current(key).map(|(_, d)| d));
                }
            }
            reads.push((file.clone(), read));
        }
        let mut fresh = Fresh::new();
        for (file, read) in reads {
            self.store(&file, read, &mut events, &mut fresh);
        }
        for (key, old) in before {
            let now = self.current(&key).map(|(file, d)| (file.clone(), d));
            match (old, now) {
                (Some(old), Some((_, new))) if old == new => {}
                (_, Some((file, _))) => {
                    let object = fresh
                        .get_mut(&file)
                        .and_then(|objects| objects.remove(&key))
                        .map_or_else(|| self.reread(&file, &key), Ok);
                    match object {
                        Ok(object) => events.push(SourceEvent::Applied(object)),
                        Err(message) => events.push(SourceEvent::Error {
                            kind: Some(key.kind),
                            message,
                        }),
                    }
                }
                (Some(_), None) => events.push(SourceEvent::Deleted(key)),
                (None, None) => {}
            }
        }
        events
    }

    /// The files to read again for a change at `paths`.
    fn changed_files(
        &self,
        paths: &BTreeSet<PathBuf>,
        rescan: bool,
    ) -> anyhow::Result<BTreeSet<PathBuf>> {
        let mut files: BTreeSet<PathBuf> = BTreeSet::new();
        let mut rescan = rescan;
        for path in paths {
            if self.is_manifest_path(path) {
                files.insert(path.clone());
            } else if path == &self.dir || path.is_dir() {
                // A directory appeared or was swapped in (a ConfigMap's `..data`): the files
                // may all point somewhere else now.
                rescan = true;
            }
            // Anything else (an editor's swap or backup file) is none of ours.
        }
        if rescan {
            for name in self.manifest_files()? {
                let unchanged = std::fs::metadata(&name).ok().is_some_and(|m| {
                    self.files.get(&name).and_then(|f| f.fingerprint) == Some(Fingerprint::of(&m))
                });
                if !unchanged {
                    files.insert(name);
                }
            }
            // Files that are gone from the listing.
            files.extend(self.files.keys().filter(|f| !f.exists()).cloned());
        }
        Ok(files)
    }

    /// Takes in what reading `path` gave; the objects read go to `fresh`.
    fn store(&mut self, path: &Path, read: Read, events: &mut Vec<SourceEvent>, fresh: &mut Fresh) {
        let (fingerprint, objects) = match read {
            Read::Gone => (None, BTreeMap::new()),
            Read::Objects(fingerprint, objects) => (Some(fingerprint), objects),
            Read::Failed(message) => {
                // Keep what the file had: a half-written or broken file deletes nothing.
                events.push(SourceEvent::Error {
                    kind: None,
                    message,
                });
                return;
            }
        };
        if let Some(old) = self.files.remove(path) {
            for key in old.objects.keys() {
                if let Some(holders) = self.holders.get_mut(key) {
                    holders.remove(path);
                    if holders.is_empty() {
                        self.holders.remove(key);
                    }
                }
            }
        }
        if fingerprint.is_none() {
            return;
        }
        for key in objects.keys() {
            let holders = self.holders.entry(key.clone()).or_default();
            holders.insert(path.to_owned());
            if holders.len() > 1 {
                tracing::warn!(object = %key, files = ?holders, "an object is defined in several files: the last one wins");
            }
        }
        let digests = objects
            .iter()
            .map(|(k, o)| (k.clone(), digest(o)))
            .collect();
        fresh.insert(path.to_owned(), objects);
        self.files.insert(
            path.to_owned(),
            FileState {
                fingerprint,
                objects: digests,
            },
        );
    }

    /// The object `key` as `file` defines it now (the file was not read in this round: another
    /// file gave the object up, and this one defines it too).
    fn reread(&self, file: &Path, key: &ObjectKey) -> Result<Object, String> {
        match self.read(file) {
            Read::Objects(_, mut objects) => objects
                .remove(key)
                .ok_or_else(|| format!("{}: {key} is gone", file.display())),
            Read::Gone => Err(format!("{}: gone while reading {key}", file.display())),
            Read::Failed(message) => Err(message),
        }
    }

    fn is_manifest_path(&self, path: &Path) -> bool {
        path.parent() == Some(self.dir.as_path()) && is_manifest_name(path)
    }

    fn manifest_files(&self) -> anyhow::Result<Vec<PathBuf>> {
        let entries = std::fs::read_dir(&self.dir)
            .with_context(|| format!("reading the manifest directory {}", self.dir.display()))?;
        let mut names = Vec::new();
        for entry in entries {
            let path = entry
                .with_context(|| format!("reading the manifest directory {}", self.dir.display()))?
                .path();
            // Symlinks are followed (ConfigMap volumes): what counts is a file behind them.
            if is_manifest_name(&path) && path.is_file() {
                names.push(path);
            }
        }
        names.sort();
        Ok(names)
    }
}

fn is_manifest_name(path: &Path) -> bool {
    let hidden = path
        .file_name()
        .and_then(|n| n.to_str())
        .is_none_or(|n| n.starts_with('.'));
    let ext = path.extension().and_then(|e| e.to_str());
    !hidden && matches!(ext, Some("yaml" | "yml" | "json"))
}

fn read_file(path: &Path) -> Read {
    let metadata = match std::fs::metadata(path) {
        Ok(m) if m.is_file() => m,
        Ok(_) => return Read::Gone,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Read::Gone,
        Err(e) => return Read::Failed(format!("{}: {e}", path.display())),
    };
    let text = match std::fs::read_to_string(path) {
        Ok(text) => text,
        // Deleted between the two calls.
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Read::Gone,
        Err(e) => return Read::Failed(format!("{}: {e}", path.display())),
    };
    let source = path.display().to_string();
    let manifests = match parse_manifests(&text, &source) {
        Ok(m) => m,
        Err(e) => return Read::Failed(crate::error_chain(&e)),
    };
    for skipped in &manifests.skipped {
        tracing::debug!(file = %source, object = %skipped, "not a kind the agent reads: skipped");
    }
    let mut objects = BTreeMap::new();
    for (index, object) in manifests.objects.into_iter().enumerate() {
        match object.key() {
            Ok(key) => {
                objects.insert(key, object);
            }
            Err(e) => {
                return Read::Failed(format!(
                    "{source}: object {index} ({}): {}",
                    object.kind(),
                    crate::error_chain(&e)
                ))
            }
        }
    }
    Read::Objects(Fingerprint::of(&metadata), objects)
}

/// A running manifest source: the watch and its thread. Dropping it stops both.
#[derive(Debug)]
pub struct ManifestSource {
    // Dropped first: closing the watcher's channel ends the thread.
    watcher: Option<RecommendedWatcher>,
    thread: Option<JoinHandle<()>>,
    reads: Arc<AtomicU64>,
}

impl ManifestSource {
    /// How many times a manifest file was read so far (see [`ManifestDir::reads`]).
    pub fn reads(&self) -> u64 {
        self.reads.load(Ordering::Relaxed)
    }
}

impl Drop for ManifestSource {
    fn drop(&mut self) {
        drop(self.watcher.take());
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// Watches `dir` and sends its objects to `tx`: the lists first, then the changes. Fails
/// when the directory cannot be read or watched.
pub fn spawn(
    dir: impl Into<PathBuf>,
    tx: mpsc::Sender<SourceEvent>,
) -> anyhow::Result<ManifestSource> {
    let dir: PathBuf = dir.into();
    // Canonical: the watcher reports absolute paths under the real directory.
    let dir = dir
        .canonicalize()
        .with_context(|| format!("the manifest directory {}", dir.display()))?;
    let (events_tx, events_rx) = std_mpsc::channel::<notify::Result<notify::Event>>();
    let mut watcher = RecommendedWatcher::new(
        move |event| {
            // The source thread is gone only when the agent is stopping.
            let _ = events_tx.send(event);
        },
        // notify 9's default adds IN_OPEN: reading a file would report an event that reads
        // it again, forever. Only what can change a file's content is watched (see `wanted`).
        Config::default().with_event_kinds(WATCHED),
    )
    .context("starting the file watcher")?;
    // Watch first, list second: a change in between is read twice, never missed.
    watcher
        .watch(&dir, RecursiveMode::NonRecursive)
        .with_context(|| format!("watching {}", dir.display()))?;
    let mut state = ManifestDir::new(dir.clone());
    let reads = Arc::clone(&state.reads);
    let initial = state.list()?;
    let thread = std::thread::Builder::new()
        .name("manifests".to_owned())
        .spawn(move || run(state, initial, &events_rx, &tx))
        .context("starting the manifest thread")?;
    tracing::info!(directory = %dir.display(), "watching manifests");
    Ok(ManifestSource {
        watcher: Some(watcher),
        thread: Some(thread),
        reads,
    })
}

/// The inotify events watched: creations, deletions and renames in the directory (a new
/// file, an editor's rename over the old one, a `ConfigMap`'s `..data` swap) and a file
/// closed after writing (`IN_CLOSE_WRITE`: the writer is done). Not `IN_MODIFY` (a file being
/// written is half there) nor `IN_OPEN` (our own reads would wake us).
const WATCHED: EventKindMask = EventKindMask::CREATE
    .union(EventKindMask::REMOVE)
    .union(EventKindMask::MODIFY_NAME)
    .union(EventKindMask::ACCESS_CLOSE);

/// Whether an event of `kind` may have changed a manifest (the mask filters in the kernel;
/// this filters what another backend or a future notify might still report).
fn wanted(kind: EventKind) -> bool {
    match kind {
        EventKind::Create(_)
        | EventKind::Remove(_)
        | EventKind::Modify(ModifyKind::Name(_))
        | EventKind::Access(AccessKind::Close(AccessMode::Write))
        | EventKind::Any => true,
        EventKind::Modify(_) | EventKind::Access(_) | EventKind::Other => false,
    }
}

fn run(
    mut state: ManifestDir,
    initial: Vec<SourceEvent>,
    events: &std_mpsc::Receiver<notify::Result<notify::Event>>,
    tx: &mpsc::Sender<SourceEvent>,
) {
    for event in initial {
        if tx.blocking_send(event).is_err() {
            return;
        }
    }
    loop {
        // Wait for the first event of a burst (or for a held-back file to settle), then until
        // the directory is quiet.
        let first = match state.settle_deadline() {
            None => match events.recv() {
                Ok(event) => event,
                Err(_) => return, // the watcher is gone
            },
            Some(deadline) => {
                match events.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
                    Ok(event) => event,
                    Err(std_mpsc::RecvTimeoutError::Timeout) => {
                        for event in state.update(&BTreeSet::new(), false) {
                            if tx.blocking_send(event).is_err() {
                                return;
                            }
                        }
                        continue;
                    }
                    Err(std_mpsc::RecvTimeoutError::Disconnected) => return,
                }
            }
        };
        let started = Instant::now();
        let mut paths = BTreeSet::new();
        let mut rescan = false;
        let mut take = |event: notify::Result<notify::Event>| match event {
            Ok(event) if event.need_rescan() => rescan = true,
            Ok(event) if wanted(event.kind) => {
                rescan |= event.paths.is_empty();
                paths.extend(event.paths);
            }
            Ok(_) => {}
            Err(e) => {
                tracing::warn!(error = %e, "file watch error: rescanning");
                rescan = true;
            }
        };
        take(first);
        while started.elapsed() < MAX_BATCH_DELAY {
            match events.recv_timeout(DEBOUNCE) {
                Ok(event) => take(event),
                Err(std_mpsc::RecvTimeoutError::Timeout) => break,
                Err(std_mpsc::RecvTimeoutError::Disconnected) => return,
            }
        }
        for event in state.update(&paths, rescan) {
            if tx.blocking_send(event).is_err() {
                return;
            }
        }
    }
}
