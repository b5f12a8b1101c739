//! The manifest-directory source (`--manifests DIR`): the objects of every `*.yaml`, `*.yml`
//! and `*.json` file directly in the directory (multi-document, `kind: List` too), watched
//! with inotify (the `notify` crate).
//!
//! ```text
//!  DIR ──inotify──▶ notify thread ──paths──▶ source thread: debounce, re-read the changed
//!                                            files only, diff per object ──SourceEvent──▶ loop
//! ```
//!
//! - At start: the directory file by file (`ListPart`s, one file's objects at a time), then
//!   `Listed` for every kind (closing the listing), then per change the
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
use dataplane_kube::{parse_document, Kind, Object, ObjectKey};
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
        Object::AdminNetworkPolicy(o) => serde_json::to_writer(&mut w, o),
        Object::BaselineAdminNetworkPolicy(o) => serde_json::to_writer(&mut w, o),
        Object::HostEndpoint(o) => serde_json::to_writer(&mut w, o),
        Object::GlobalNetworkPolicy(o) => serde_json::to_writer(&mut w, o),
        Object::FelixConfiguration(o) => serde_json::to_writer(&mut w, o),
    };
    std::hash::Hasher::finish(&w.0)
}

#[derive(Debug, Default)]
struct FileState {
    fingerprint: Option<Fingerprint>,
    /// The file's documents as last read, in order: a document whose text is the same when
    /// the file is read again is not parsed again. Also the file's objects (no map of them
    /// by key besides: ~2 MiB at 10k services and their slices, for lookups that come a few
    /// hundred per change).
    documents: Vec<DocumentState>,
}

impl FileState {
    /// The file's objects (an object defined twice in it, twice).
    fn keys(&self) -> impl Iterator<Item = &ObjectKey> {
        self.documents
            .iter()
            .flat_map(|d| d.objects.as_slice().iter().map(|(key, _)| key))
    }

    /// The digest of `key` as the file defines it (the later document's, as a whole-file
    /// parse takes it).
    fn digest(&self, key: &ObjectKey) -> Option<Digest> {
        self.documents
            .iter()
            .rev()
            .find_map(|d| d.objects.as_slice().iter().rev().find(|(k, _)| k == key))
            .map(|(_, digest)| *digest)
    }
}

/// One document of a file as last read: a hash of its text, and the objects it gave.
#[derive(Debug, Clone)]
struct DocumentState {
    text: u64,
    objects: Few<(ObjectKey, Digest)>,
}

/// A list that nearly always holds one item (a document's objects, an object's files),
/// which is then kept inline: a `Vec` of one is an allocation of its own (~1 MiB per 20 000
/// at 10k services and their slices).
#[derive(Debug, Clone)]
enum Few<T> {
    One(T),
    Many(Vec<T>),
}

impl<T> Default for Few<T> {
    fn default() -> Self {
        Few::Many(Vec::new())
    }
}

impl<T> Few<T> {
    fn as_slice(&self) -> &[T] {
        match self {
            Few::One(item) => std::slice::from_ref(item),
            Few::Many(items) => items,
        }
    }

    fn into_vec(self) -> Vec<T> {
        match self {
            Few::One(item) => vec![item],
            Few::Many(items) => items,
        }
    }
}

impl<T> From<Vec<T>> for Few<T> {
    fn from(mut items: Vec<T>) -> Self {
        if items.len() == 1 {
            if let Some(item) = items.pop() {
                return Few::One(item);
            }
        }
        items.shrink_to_fit();
        Few::Many(items)
    }
}

/// What reading a file gave: its documents, every object's digest, and the objects of the
/// documents that were parsed (those whose text is new).
#[derive(Debug, Default)]
struct FileRead {
    documents: Vec<DocumentState>,
    digests: BTreeMap<ObjectKey, Digest>,
    parsed: BTreeMap<ObjectKey, Object>,
    /// How many documents were parsed.
    parsed_documents: u64,
}

/// The objects of a manifest directory, by file, and the differences between two looks at
/// it. Pure except for reading the files: the watcher thread of [`spawn`] drives it, tests
/// may too.
#[derive(Debug)]
pub struct ManifestDir {
    dir: PathBuf,
    files: BTreeMap<PathBuf, FileState>,
    /// Which files hold each object, in name order (the last one wins). A sorted `Vec` of
    /// paths shared by all of a file's objects: nearly every object is in one file, where a
    /// `BTreeSet<PathBuf>` took a node for eleven and a copy of the path each (~7 MiB at 10k
    /// services and their slices).
    holders: BTreeMap<ObjectKey, Few<Arc<Path>>>,
    /// How many times a file was read (shared with [`ManifestSource::reads`]).
    reads: Arc<AtomicU64>,
    /// How many documents were parsed so far.
    parsed: std::cell::Cell<u64>,
    /// Files that lost their objects, held back until the deadline (see [`SETTLE`]).
    settling: BTreeMap<PathBuf, Instant>,
    /// Hashes documents' texts (keyed per process: a tenant who can write one document cannot
    /// aim a collision at another).
    hasher: std::hash::RandomState,
}

/// What a file read gave.
enum Read {
    Gone,
    Objects(Fingerprint, FileRead),
    Failed(String),
}

/// Whether a read may skip the documents whose text it parsed before.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Parse {
    /// Only the documents that changed: their objects alone come back parsed.
    Changed,
    /// Every document (a listing, which hands on every object).
    All,
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
            parsed: std::cell::Cell::new(0),
            settling: BTreeMap::new(),
            hasher: std::hash::RandomState::new(),
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

    fn read(&self, path: &Path, parse: Parse) -> Read {
        self.reads.fetch_add(1, Ordering::Relaxed);
        let known = match parse {
            Parse::Changed => self.files.get(path).map(|f| f.documents.as_slice()),
            Parse::All => None,
        };
        let read = read_file(path, known.unwrap_or_default(), &self.hasher);
        if let Read::Objects(_, read) = &read {
            self.parsed.set(self.parsed.get() + read.parsed_documents);
        }
        read
    }

    /// How many documents were parsed so far: a file read again parses only the documents
    /// whose text changed.
    pub fn documents_parsed(&self) -> u64 {
        self.parsed.get()
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
    fn current(&self, key: &ObjectKey) -> Option<(&Path, Digest)> {
        let file = self.holders.get(key)?.as_slice().last()?;
        Some((file, self.files.get(&**file)?.digest(key)?))
    }

    /// Reads the whole directory (again) and lists it: the errors of the files that fail,
    /// then `Listed` for every kind, empty ones included. A file that fails to parse
    /// contributes nothing to the listing. Holds every object at once: the agent streams
    /// instead ([`ManifestDir::list_with`]).
    pub fn list(&mut self) -> anyhow::Result<Vec<SourceEvent>> {
        let mut events = Vec::new();
        // Later files' objects replace earlier ones' (the last file wins).
        let mut objects: BTreeMap<ObjectKey, Object> = BTreeMap::new();
        self.list_with(&mut |event| {
            match event {
                SourceEvent::ListPart { objects: part, .. } => {
                    for object in part {
                        if let Ok(key) = object.key() {
                            objects.insert(key, object);
                        }
                    }
                }
                SourceEvent::Listed { kind, .. } => {
                    let of_kind = objects
                        .keys()
                        .filter(|k| k.kind == kind)
                        .cloned()
                        .collect::<Vec<_>>()
                        .into_iter()
                        .filter_map(|k| objects.remove(&k))
                        .collect();
                    events.push(SourceEvent::Listed {
                        kind,
                        objects: of_kind,
                    });
                }
                other => events.push(other),
            }
            true
        })?;
        Ok(events)
    }

    /// Reads the whole directory (again) and hands its listing to `emit` file by file: the
    /// error of a file that fails (it contributes nothing), a [`SourceEvent::ListPart`] per
    /// kind of each file's objects (in file name order, so an object defined twice ends as
    /// the last file defines it), then a closing `Listed` with no objects for every kind.
    /// Only one file's objects are held at a time: peak memory is the store's, not the
    /// parsed directory's. Stops when `emit` returns `false` (`Ok(false)`).
    pub fn list_with(&mut self, emit: &mut dyn FnMut(SourceEvent) -> bool) -> anyhow::Result<bool> {
        // The files there now, and those known from before that may be gone.
        let mut paths: BTreeSet<PathBuf> = self.manifest_files()?.into_iter().collect();
        paths.extend(self.files.keys().cloned());
        for path in &paths {
            let read = self.read(path, Parse::All);
            let mut events = Vec::new();
            let mut fresh = Fresh::new();
            self.store(path, read, &mut events, &mut fresh);
            let mut by_kind: BTreeMap<Kind, Vec<Object>> = BTreeMap::new();
            for (key, object) in fresh.remove(path).unwrap_or_default() {
                by_kind.entry(key.kind).or_default().push(object);
            }
            let parts = by_kind
                .into_iter()
                .map(|(kind, objects)| SourceEvent::ListPart { kind, objects });
            for event in events.into_iter().chain(parts) {
                if !emit(event) {
                    return Ok(false);
                }
            }
        }
        for kind in Kind::ALL {
            if !emit(SourceEvent::Listed {
                kind,
                objects: Vec::new(),
            }) {
                return Ok(false);
            }
        }
        Ok(true)
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
                for key in state.keys() {
                    before
                        .entry(key.clone())
                        .or_insert_with(|| self.current(key).map(|(_, d)| d));
                }
            }
        }
        let mut reads = Vec::new();
        for file in &files {
            let read = self.read(file, Parse::Changed);
            let emptied = match &read {
                Read::Gone => true,
                Read::Objects(_, read) => read.digests.is_empty(),
                Read::Failed(_) => false,
            };
            let had_objects = self
                .files
                .get(file)
                .is_some_and(|f| f.keys().next().is_some());
            if emptied && had_objects && !settled.contains(file) {
                // Keep the objects for now; the first emptying's deadline stands, so that a
                // file truncated again and again still settles.
                self.settling.entry(file.clone()).or_insert(now + SETTLE);
                continue;
            }
            self.settling.remove(file);
            if let Read::Objects(_, read) = &read {
                for key in read.digests.keys() {
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
            let now = self.current(&key).map(|(file, d)| (file.to_owned(), d));
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
        let (fingerprint, read) = match read {
            Read::Gone => (None, FileRead::default()),
            Read::Objects(fingerprint, read) => (Some(fingerprint), read),
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
            for key in old.keys() {
                if let Some(holders) = self.holders.remove(key) {
                    let mut holders = holders.into_vec();
                    holders.retain(|h| **h != *path);
                    if !holders.is_empty() {
                        self.holders.insert(key.clone(), holders.into());
                    }
                }
            }
        }
        if fingerprint.is_none() {
            return;
        }
        let shared: Arc<Path> = Arc::from(path);
        for key in read.digests.keys() {
            let holders = self.holders.entry(key.clone()).or_default();
            if holders.as_slice().binary_search(&shared).is_err() {
                let mut list = std::mem::take(holders).into_vec();
                if let Err(at) = list.binary_search(&shared) {
                    list.insert(at, Arc::clone(&shared));
                }
                *holders = list.into();
            }
            if holders.as_slice().len() > 1 {
                tracing::warn!(object = %key, files = ?holders.as_slice(), "an object is defined in several files: the last one wins");
            }
        }
        fresh.insert(path.to_owned(), read.parsed);
        self.files.insert(
            path.to_owned(),
            FileState {
                fingerprint,
                documents: read.documents,
            },
        );
    }

    /// The object `key` as `file` defines it now (the file was not read in this round: another
    /// file gave the object up, and this one defines it too).
    fn reread(&self, file: &Path, key: &ObjectKey) -> Result<Object, String> {
        match self.read(file, Parse::All) {
            Read::Objects(_, mut read) => read
                .parsed
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

/// Reads `path`; `known`: its documents as last read, whose objects are taken as they were
/// when a document's text is the same (not parsed again: parsing is most of a change's cost,
/// ~90 ms for a file of 100 Services and their slices, one document ~1 ms).
fn read_file(path: &Path, known: &[DocumentState], hasher: &std::hash::RandomState) -> Read {
    use std::hash::BuildHasher as _;

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
    let known: std::collections::HashMap<u64, &DocumentState> =
        known.iter().map(|d| (d.text, d)).collect();
    let mut read = FileRead::default();
    for document in dataplane_kube::split_documents(&text) {
        // Without a bare `---` line: the first document of a file has none, so a document
        // moved to or from the top is the same document.
        let body = document
            .text
            .split_once('\n')
            .filter(|(first, _)| first.trim_end() == "---")
            .map_or(document.text, |(_, rest)| rest);
        let hash = hasher.hash_one(body);
        if let Some(state) = known.get(&hash) {
            for (key, digest) in state.objects.as_slice() {
                // An object defined twice in one file is the later document's (as when the
                // whole file is parsed); this one is not parsed, so none parsed before stands.
                read.parsed.remove(key);
                read.digests.insert(key.clone(), *digest);
            }
            read.documents.push((*state).clone());
            continue;
        }
        read.parsed_documents += 1;
        let manifests = match parse_document(&document, &source) {
            Ok(m) => m,
            Err(e) => return Read::Failed(crate::error_chain(&e)),
        };
        for skipped in &manifests.skipped {
            tracing::debug!(file = %source, object = %skipped, "not a kind the agent reads: skipped");
        }
        let mut objects = Vec::with_capacity(manifests.objects.len());
        for object in manifests.objects {
            match object.key() {
                Ok(key) => {
                    let digest = digest(&object);
                    objects.push((key.clone(), digest));
                    read.digests.insert(key.clone(), digest);
                    read.parsed.insert(key, object);
                }
                Err(e) => {
                    return Read::Failed(format!(
                        "{source}: document {} ({}): {}",
                        document.number,
                        object.kind(),
                        crate::error_chain(&e)
                    ))
                }
            }
        }
        read.documents.push(DocumentState {
            text: hash,
            objects: objects.into(),
        });
    }
    Read::Objects(Fingerprint::of(&metadata), read)
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
    let state = ManifestDir::new(dir.clone());
    let reads = Arc::clone(&state.reads);
    // Fails now if the directory cannot be read; the listing itself streams from the thread.
    state.manifest_files()?;
    let thread = std::thread::Builder::new()
        .name("manifests".to_owned())
        .spawn(move || run(state, &events_rx, &tx))
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
    events: &std_mpsc::Receiver<notify::Result<notify::Event>>,
    tx: &mpsc::Sender<SourceEvent>,
) {
    // File by file into the channel (bounded: the thread waits while the loop stores the
    // objects), so that the directory's objects are never all held at once.
    match state.list_with(&mut |event| tx.blocking_send(event).is_ok()) {
        Ok(true) => {}
        Ok(false) => return,
        Err(e) => {
            // The directory went unreadable since `spawn` looked: the error now, the lists
            // when a watch event makes the source read it again.
            let _ = tx.blocking_send(SourceEvent::Error {
                kind: None,
                message: format!("{e:#}"),
            });
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
