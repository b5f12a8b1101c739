//! The manifest-directory source: what it lists, and the differences it sends per change, with
//! real files in a temporary directory (`ManifestDir` directly, and the inotify watcher).

mod agent_common;

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use agent_common::{documents, namespace, node, service, slice};
use dataplane_agent::manifests::{spawn, ManifestDir, SETTLE};
use dataplane_agent::source::SourceEvent;
use dataplane_kube::{Kind, Object, ObjectKey};

/// Generous: a loaded CI machine may take long to deliver inotify events.
const DEADLINE: Duration = Duration::from_secs(20);

fn key(kind: Kind, name: &str) -> ObjectKey {
    ObjectKey {
        kind,
        namespace: (kind != Kind::Node && kind != Kind::Namespace).then(|| "default".into()),
        name: name.into(),
    }
}

fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, text).unwrap();
    path
}

/// Writes `name` the way editors save: a temporary file renamed over the old one.
fn save_by_rename(dir: &Path, name: &str, text: &str) -> BTreeSet<PathBuf> {
    let tmp = dir.join(format!(".{name}.swp"));
    std::fs::write(&tmp, text).unwrap();
    let path = dir.join(name);
    std::fs::rename(&tmp, &path).unwrap();
    [tmp, path].into()
}

fn listed(events: &[SourceEvent], kind: Kind) -> Vec<ObjectKey> {
    events
        .iter()
        .find_map(|e| match e {
            SourceEvent::Listed { kind: k, objects } if *k == kind => {
                Some(objects.iter().map(|o| o.key().unwrap()).collect())
            }
            _ => None,
        })
        .unwrap_or_else(|| panic!("no Listed for {kind}: {events:?}"))
}

/// The events as `+key` (Applied), `-key` (Deleted) or `!` (Error), in order.
fn summary(events: &[SourceEvent]) -> Vec<String> {
    events
        .iter()
        .map(|e| match e {
            SourceEvent::Applied(o) => format!("+{}", o.key().unwrap()),
            SourceEvent::Deleted(k) => format!("-{k}"),
            SourceEvent::Error { .. } => "!".to_owned(),
            SourceEvent::Listed { kind, objects } => format!("={kind}:{}", objects.len()),
            SourceEvent::ListPart { kind, objects } => format!("~{kind}:{}", objects.len()),
        })
        .collect()
}

fn web_files(dir: &Path) {
    write(
        dir,
        "cluster.yaml",
        &documents(&[
            node("node-0", "172.18.0.10", "10.244.0.0/24", None),
            namespace("default"),
        ]),
    );
    write(
        dir,
        "web.yaml",
        &documents(&[
            service("web", "10.96.0.10", 80, None),
            slice("web-1", "web", &[("10.244.0.11", "node-0", "pod-0-1")]),
        ]),
    );
}

/// A change to one document of a file parses that document only (parsing is most of what a
/// change costs: ~90 ms for a file of 100 Services and their slices); documents moved,
/// added or removed are told apart by their text.
#[test]
fn a_file_read_again_parses_only_the_documents_that_changed() {
    let dir = tempfile::tempdir().unwrap();
    let services: Vec<String> = (0..5)
        .map(|i| service(&format!("s{i}"), &format!("10.96.0.{}", 10 + i), 80, None))
        .collect();
    let path = write(dir.path(), "many.yaml", &documents(&services));
    let mut m = ManifestDir::new(dir.path());
    m.list().unwrap();
    assert_eq!(m.documents_parsed(), 5, "the listing parses every document");

    let mut edited = services.clone();
    edited[2] = service("s2", "10.96.0.12", 8080, None);
    std::fs::write(&path, documents(&edited)).unwrap();
    let events = m.update(&[path.clone()].into(), false);
    assert_eq!(summary(&events), ["+Service default/s2"]);
    assert_eq!(m.documents_parsed(), 6, "one document parsed again");

    // Reordered and one removed: nothing parsed, one deleted.
    let reordered = [
        edited[4].clone(),
        edited[2].clone(),
        edited[0].clone(),
        edited[1].clone(),
    ];
    std::fs::write(&path, documents(&reordered)).unwrap();
    let events = m.update(&[path.clone()].into(), false);
    assert_eq!(summary(&events), ["-Service default/s3"]);
    assert_eq!(m.documents_parsed(), 6);

    // The same object twice in the file: the later document wins, parsed or not.
    let twice = [edited[2].clone(), services[2].clone()];
    std::fs::write(&path, documents(&twice)).unwrap();
    let mut got = summary(&m.update(&[path.clone()].into(), false));
    got.sort();
    assert_eq!(
        got,
        [
            "+Service default/s2",
            "-Service default/s0",
            "-Service default/s1",
            "-Service default/s4"
        ]
    );
    let events = m.update(&[path.clone()].into(), false);
    assert!(events.is_empty(), "{:?}", summary(&events));
    let applied = m.list().unwrap();
    let port = applied
        .iter()
        .find_map(|e| match e {
            SourceEvent::Listed {
                kind: Kind::Service,
                objects,
            } => Some(objects.clone()),
            _ => None,
        })
        .unwrap();
    assert_eq!(port.len(), 1);
    let dataplane_kube::Object::Service(s) = &port[0] else {
        panic!()
    };
    assert_eq!(
        s.spec.as_ref().unwrap().ports.as_ref().unwrap()[0].port,
        80,
        "the later document"
    );
}

#[test]
fn the_first_listing_has_every_kind_empty_ones_included() {
    let dir = tempfile::tempdir().unwrap();
    web_files(dir.path());
    // Not ours: skipped, not an error.
    write(dir.path(), "README.md", "not a manifest");
    write(
        dir.path(),
        "deploy.yml",
        "apiVersion: apps/v1\nkind: Deployment\nmetadata:\n  name: web\n  namespace: default\n",
    );
    let mut m = ManifestDir::new(dir.path());
    let events = m.list().unwrap();
    assert_eq!(events.len(), Kind::ALL.len(), "{:?}", summary(&events));
    assert_eq!(listed(&events, Kind::Node), [key(Kind::Node, "node-0")]);
    assert_eq!(listed(&events, Kind::Service), [key(Kind::Service, "web")]);
    assert_eq!(
        listed(&events, Kind::EndpointSlice),
        [key(Kind::EndpointSlice, "web-1")]
    );
    assert_eq!(listed(&events, Kind::Namespace).len(), 1);
    assert!(listed(&events, Kind::Pod).is_empty());
    assert!(listed(&events, Kind::NetworkPolicy).is_empty());
}

#[test]
fn a_changed_file_sends_only_the_objects_that_changed() {
    let dir = tempfile::tempdir().unwrap();
    web_files(dir.path());
    let mut m = ManifestDir::new(dir.path());
    m.list().unwrap();
    // The slice moves to another pod; the service in the same file is unchanged.
    let paths = save_by_rename(
        dir.path(),
        "web.yaml",
        &documents(&[
            service("web", "10.96.0.10", 80, None),
            slice("web-1", "web", &[("10.244.0.12", "node-0", "pod-0-2")]),
        ]),
    );
    let events = m.update(&paths, false);
    assert_eq!(summary(&events), ["+EndpointSlice default/web-1"]);
    match &events[0] {
        SourceEvent::Applied(Object::EndpointSlice(s)) => {
            assert_eq!(s.endpoints[0].addresses, ["10.244.0.12"]);
        }
        other => panic!("{other:?}"),
    }
    // The same content again: nothing.
    let paths = save_by_rename(
        dir.path(),
        "web.yaml",
        &documents(&[
            service("web", "10.96.0.10", 80, None),
            slice("web-1", "web", &[("10.244.0.12", "node-0", "pod-0-2")]),
        ]),
    );
    assert!(m.update(&paths, false).is_empty());
}

#[test]
fn created_and_deleted_files_add_and_delete_their_objects() {
    let dir = tempfile::tempdir().unwrap();
    web_files(dir.path());
    let mut m = ManifestDir::new(dir.path());
    m.list().unwrap();
    let api = write(
        dir.path(),
        "api.json",
        // JSON is YAML too.
        r#"{"apiVersion":"v1","kind":"Service","metadata":{"name":"api","namespace":"default"},"spec":{"clusterIP":"10.96.0.20","ports":[{"port":443,"protocol":"TCP","targetPort":8443}],"type":"ClusterIP"}}"#,
    );
    assert_eq!(
        summary(&m.update(&[api.clone()].into(), false)),
        ["+Service default/api"]
    );
    let web = dir.path().join("web.yaml");
    std::fs::remove_file(&web).unwrap();
    std::fs::remove_file(&api).unwrap();
    // Held back while a writer may still bring the files back; deleted once settled.
    let now = Instant::now();
    assert!(m.update_at(&[web, api].into(), false, now).is_empty());
    assert_eq!(m.settle_deadline(), Some(now + SETTLE));
    assert!(m.update_at(&BTreeSet::new(), false, now).is_empty());
    let events = m.update_at(&BTreeSet::new(), false, now + SETTLE);
    assert_eq!(m.settle_deadline(), None);
    let mut got = summary(&events);
    got.sort();
    assert_eq!(
        got,
        [
            "-EndpointSlice default/web-1",
            "-Service default/api",
            "-Service default/web"
        ]
    );
}

#[test]
fn an_object_moved_between_files_in_one_burst_is_not_deleted() {
    let dir = tempfile::tempdir().unwrap();
    web_files(dir.path());
    let mut m = ManifestDir::new(dir.path());
    m.list().unwrap();
    // The slice moves from web.yaml into slices.yaml, unchanged.
    let web = write(
        dir.path(),
        "web.yaml",
        &service("web", "10.96.0.10", 80, None),
    );
    let slices = write(
        dir.path(),
        "slices.yaml",
        &slice("web-1", "web", &[("10.244.0.11", "node-0", "pod-0-1")]),
    );
    assert!(m
        .update(&[web.clone(), slices.clone()].into(), false)
        .is_empty());
    assert!(m.contains(&key(Kind::EndpointSlice, "web-1")));
    // Then removed from its new file: deleted.
    std::fs::remove_file(&slices).unwrap();
    let now = Instant::now();
    assert!(m.update_at(&[slices].into(), false, now).is_empty());
    assert_eq!(
        summary(&m.update_at(&BTreeSet::new(), false, now + SETTLE)),
        ["-EndpointSlice default/web-1"]
    );
}

#[test]
fn a_file_that_fails_to_parse_keeps_its_objects_and_says_where() {
    let dir = tempfile::tempdir().unwrap();
    web_files(dir.path());
    let mut m = ManifestDir::new(dir.path());
    m.list().unwrap();
    // The second document's port is no number.
    let broken = documents(&[
        service("web", "10.96.0.10", 80, None),
        slice("web-1", "web", &[("10.244.0.11", "node-0", "pod-0-1")])
            .replace("port: 8080", "port: eighty"),
    ]);
    let web = write(dir.path(), "web.yaml", &broken);
    let events = m.update(&[web.clone()].into(), false);
    assert_eq!(summary(&events), ["!"]);
    let SourceEvent::Error { message, .. } = &events[0] else {
        unreachable!()
    };
    assert!(message.contains("web.yaml"), "names the file: {message}");
    assert!(message.contains("port"), "names the field: {message}");
    assert!(m.contains(&key(Kind::EndpointSlice, "web-1")));
    assert!(m.contains(&key(Kind::Service, "web")));
    // Fixed: back to normal, and the unchanged objects are not sent again.
    write(
        dir.path(),
        "web.yaml",
        &documents(&[
            service("web", "10.96.0.10", 80, None),
            slice("web-1", "web", &[("10.244.0.11", "node-0", "pod-0-1")]),
        ]),
    );
    assert!(m.update(&[web].into(), false).is_empty());
}

#[test]
fn a_rescan_finds_what_changed_behind_a_swapped_directory_symlink() {
    // A ConfigMap volume: DIR/web.yaml -> ..data/web.yaml, ..data -> ..v1; an update writes
    // ..v2 and swaps ..data (events only name ..data).
    let dir = tempfile::tempdir().unwrap();
    let v1 = dir.path().join("..v1");
    std::fs::create_dir(&v1).unwrap();
    web_files(&v1);
    std::os::unix::fs::symlink("..v1", dir.path().join("..data")).unwrap();
    for name in ["cluster.yaml", "web.yaml"] {
        std::os::unix::fs::symlink(format!("..data/{name}"), dir.path().join(name)).unwrap();
    }
    let mut m = ManifestDir::new(dir.path());
    assert_eq!(listed(&m.list().unwrap(), Kind::Service).len(), 1);
    let v2 = dir.path().join("..v2");
    std::fs::create_dir(&v2).unwrap();
    web_files(&v2);
    write(&v2, "web.yaml", &service("web", "10.96.0.10", 8080, None));
    std::os::unix::fs::symlink("..v2", dir.path().join("..data_tmp")).unwrap();
    std::fs::rename(dir.path().join("..data_tmp"), dir.path().join("..data")).unwrap();
    let events = m.update(&[dir.path().join("..data")].into(), false);
    let mut got = summary(&events);
    got.sort();
    assert_eq!(
        got,
        ["+Service default/web", "-EndpointSlice default/web-1"]
    );
}

/// Waits for the next event on `rx`, panicking after the deadline.
async fn next(rx: &mut tokio::sync::mpsc::Receiver<SourceEvent>) -> SourceEvent {
    tokio::time::timeout(DEADLINE, rx.recv())
        .await
        .expect("an event before the deadline")
        .expect("the source is running")
}

#[tokio::test]
async fn the_watcher_lists_then_follows_editor_saves_and_deletes() {
    let dir = tempfile::tempdir().unwrap();
    web_files(dir.path());
    let (tx, mut rx) = tokio::sync::mpsc::channel(64);
    let source = spawn(dir.path(), tx).unwrap();
    let mut kinds = BTreeSet::new();
    let mut parts = Vec::new();
    while kinds.len() < Kind::ALL.len() {
        match next(&mut rx).await {
            SourceEvent::Listed { kind, objects } => {
                assert!(objects.is_empty());
                assert!(kinds.insert(kind));
            }
            SourceEvent::ListPart { kind, objects } => {
                assert!(kinds.is_empty(), "a part after a closing");
                parts.extend(objects.iter().map(|o| (kind, o.key().unwrap().name)));
            }
            other => panic!("expected the lists first: {other:?}"),
        }
    }
    let mut parts: Vec<String> = parts.iter().map(|(k, n)| format!("{k} {n}")).collect();
    parts.sort();
    assert_eq!(
        parts,
        [
            "EndpointSlice web-1",
            "Namespace default",
            "Node node-0",
            "Service web"
        ]
    );
    // An editor's save (temporary file renamed over the original).
    save_by_rename(
        dir.path(),
        "web.yaml",
        &documents(&[
            service("web", "10.96.0.10", 80, None),
            slice("web-1", "web", &[("10.244.0.12", "node-0", "pod-0-2")]),
        ]),
    );
    let event = next(&mut rx).await;
    assert_eq!(summary(&[event]), ["+EndpointSlice default/web-1"]);
    // A new file, then the file deleted.
    write(
        dir.path(),
        "db.yaml",
        &service("db", "10.96.0.30", 5432, None),
    );
    assert_eq!(summary(&[next(&mut rx).await]), ["+Service default/db"]);
    std::fs::remove_file(dir.path().join("db.yaml")).unwrap();
    assert_eq!(summary(&[next(&mut rx).await]), ["-Service default/db"]);
    drop(source);
    // The thread ended and dropped its sender.
    assert!(tokio::time::timeout(DEADLINE, rx.recv())
        .await
        .unwrap()
        .is_none());
}

#[test]
fn an_object_in_two_files_is_the_last_files_and_falls_back_to_the_other() {
    let dir = tempfile::tempdir().unwrap();
    web_files(dir.path());
    // zz.yaml sorts after web.yaml: its version of the service wins.
    let zz = write(
        dir.path(),
        "zz.yaml",
        &service("web", "10.96.0.10", 8080, None),
    );
    let mut m = ManifestDir::new(dir.path());
    let events = m.list().unwrap();
    let web_port = |events: &[SourceEvent]| {
        events.iter().find_map(|e| match e {
            SourceEvent::Listed {
                kind: Kind::Service,
                objects,
            } => match &objects[0] {
                Object::Service(s) => {
                    Some(s.spec.as_ref().unwrap().ports.as_ref().unwrap()[0].port)
                }
                _ => None,
            },
            SourceEvent::Applied(Object::Service(s)) => {
                Some(s.spec.as_ref().unwrap().ports.as_ref().unwrap()[0].port)
            }
            _ => None,
        })
    };
    assert_eq!(web_port(&events), Some(8080));
    // zz.yaml gives it up: web.yaml's version (port 80) is applied, read again from web.yaml.
    std::fs::write(&zz, "").unwrap();
    let now = Instant::now();
    assert!(m.update_at(&[zz].into(), false, now).is_empty());
    let events = m.update_at(&BTreeSet::new(), false, now + SETTLE);
    assert_eq!(summary(&events), ["+Service default/web"]);
    assert_eq!(web_port(&events), Some(80));
}

#[test]
fn a_change_reads_only_the_files_it_names() {
    let dir = tempfile::tempdir().unwrap();
    web_files(dir.path());
    let mut m = ManifestDir::new(dir.path());
    m.list().unwrap();
    // web.yaml changes on disk, but the change reported is about cluster.yaml: web.yaml is
    // not read (a directory of 10k services costs one file's parse per change).
    write(
        dir.path(),
        "web.yaml",
        &service("web", "10.96.0.10", 8080, None),
    );
    let cluster = write(
        dir.path(),
        "cluster.yaml",
        &documents(&[
            node("node-0", "172.18.0.10", "10.244.0.0/24", None),
            namespace("default"),
            namespace("kube-system"),
        ]),
    );
    assert_eq!(
        summary(&m.update(&[cluster].into(), false)),
        ["+Namespace kube-system"]
    );
    // Its own event then reads it.
    let web = dir.path().join("web.yaml");
    let mut got = summary(&m.update(&[web].into(), false));
    got.sort();
    assert_eq!(
        got,
        ["+Service default/web", "-EndpointSlice default/web-1"]
    );
}

#[tokio::test]
async fn the_watcher_reads_nothing_while_nothing_changes() {
    // notify 9 reports IN_OPEN by default: the source's own reads woke it up to read again,
    // in a loop. With files present and no change, no file is read after the listing.
    let dir = tempfile::tempdir().unwrap();
    web_files(dir.path());
    let (tx, mut rx) = tokio::sync::mpsc::channel(64);
    let source = spawn(dir.path(), tx).unwrap();
    // The listing streams file by file (parts), then closes each kind.
    let mut closed = 0;
    while closed < Kind::ALL.len() {
        match next(&mut rx).await {
            SourceEvent::Listed { objects, .. } => {
                assert!(objects.is_empty(), "the objects came in parts");
                closed += 1;
            }
            SourceEvent::ListPart { .. } => assert_eq!(closed, 0, "a part after a closing"),
            other => panic!("{other:?}"),
        }
    }
    let listed_reads = source.reads();
    assert_eq!(listed_reads, 2, "the listing reads each file once");
    // A quiet window: long enough for a read loop to go round many times.
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(
        source.reads(),
        listed_reads,
        "files read while nothing changed"
    );
    // A change is read once (its close after writing), and that read wakes nothing.
    write(
        dir.path(),
        "web.yaml",
        &documents(&[
            service("web", "10.96.0.10", 80, None),
            slice("web-1", "web", &[("10.244.0.12", "node-0", "pod-0-2")]),
        ]),
    );
    assert_eq!(
        summary(&[next(&mut rx).await]),
        ["+EndpointSlice default/web-1"]
    );
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(source.reads(), listed_reads + 1);
    assert!(rx.try_recv().is_err(), "no event without a change");
}

#[test]
fn a_file_truncated_then_written_deletes_nothing_that_comes_back() {
    // `kubectl get -o yaml > web.yaml`: the shell truncates the file, then kubectl writes it.
    let dir = tempfile::tempdir().unwrap();
    web_files(dir.path());
    let mut m = ManifestDir::new(dir.path());
    m.list().unwrap();
    let now = Instant::now();
    let web = write(dir.path(), "web.yaml", "");
    assert!(m.update_at(&[web.clone()].into(), false, now).is_empty());
    assert!(m.contains(&key(Kind::Service, "web")));
    // The write: one object changed, the other came back as it was.
    write(
        dir.path(),
        "web.yaml",
        &documents(&[
            service("web", "10.96.0.10", 80, None),
            slice("web-1", "web", &[("10.244.0.12", "node-0", "pod-0-2")]),
        ]),
    );
    let later = now + SETTLE / 2;
    assert_eq!(
        summary(&m.update_at(&[web].into(), false, later)),
        ["+EndpointSlice default/web-1"]
    );
    assert_eq!(m.settle_deadline(), None);
    assert!(m
        .update_at(&BTreeSet::new(), false, now + SETTLE * 2)
        .is_empty());
}

#[test]
fn an_emacs_save_renames_the_file_away_then_writes_it_and_deletes_nothing() {
    // emacs keeps a backup: web.yaml is renamed to web.yaml~, then a new web.yaml written.
    let dir = tempfile::tempdir().unwrap();
    web_files(dir.path());
    let mut m = ManifestDir::new(dir.path());
    m.list().unwrap();
    let web = dir.path().join("web.yaml");
    let backup = dir.path().join("web.yaml~");
    std::fs::rename(&web, &backup).unwrap();
    let now = Instant::now();
    assert!(m
        .update_at(&[web.clone(), backup.clone()].into(), false, now)
        .is_empty());
    // Even a rescan in between (a watch overflow) deletes nothing yet.
    assert!(m.update_at(&BTreeSet::new(), true, now).is_empty());
    write(
        dir.path(),
        "web.yaml",
        &documents(&[
            service("web", "10.96.0.10", 80, None),
            slice("web-1", "web", &[("10.244.0.11", "node-0", "pod-0-1")]),
        ]),
    );
    assert!(m
        .update_at(&[web].into(), false, now + SETTLE / 2)
        .is_empty());
    assert!(m
        .update_at(&BTreeSet::new(), false, now + SETTLE * 2)
        .is_empty());
    assert!(m.contains(&key(Kind::EndpointSlice, "web-1")));
}

#[test]
fn a_file_still_empty_when_it_settles_deletes_its_objects() {
    let dir = tempfile::tempdir().unwrap();
    web_files(dir.path());
    let mut m = ManifestDir::new(dir.path());
    m.list().unwrap();
    let now = Instant::now();
    let web = write(dir.path(), "web.yaml", "");
    assert!(m.update_at(&[web.clone()].into(), false, now).is_empty());
    // Emptied again before it settled: the first deadline stands.
    assert!(m
        .update_at(&[web].into(), false, now + SETTLE / 2)
        .is_empty());
    assert_eq!(m.settle_deadline(), Some(now + SETTLE));
    let reads = m.reads();
    let mut got = summary(&m.update_at(&BTreeSet::new(), false, now + SETTLE));
    got.sort();
    assert_eq!(
        got,
        ["-EndpointSlice default/web-1", "-Service default/web"]
    );
    assert_eq!(m.reads(), reads + 1, "read once more before the deletions");
}
