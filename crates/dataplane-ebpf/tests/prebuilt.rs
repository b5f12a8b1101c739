//! The committed BPF objects (`bpf/obj/*.o`, which the library embeds, and the test fixtures
//! under `bpf/test/obj/`) are exactly what `bpf/` builds to with the pinned clang: each is
//! rebuilt into a scratch directory with the command `build.rs` uses (`bpf/objects.rs`) and
//! compared byte for byte. A stale object fails the test with its name and the refresh
//! command; `scripts/bpf-objects` (this test with `DATAPLANE_BPF_WRITE=1`) writes the fresh
//! builds back. Without clang it prints SKIPPED, except under `CI=true`, where it fails.

use std::path::{Path, PathBuf};
use std::process::Command;

include!("../bpf/objects.rs");

/// The first line of `clang --version`, or `None` when `clang` cannot run.
fn clang_version(clang: &str) -> Option<String> {
    let out = Command::new(clang).arg("--version").output().ok()?;
    if !out.status.success() {
        return None;
    }
    let text = String::from_utf8_lossy(&out.stdout);
    Some(text.lines().next().unwrap_or_default().to_owned())
}

#[test]
fn committed_objects_match_a_fresh_build() {
    let clang = bpf_clang();
    let Some(version) = clang_version(&clang) else {
        assert!(
            std::env::var("CI").as_deref() != Ok("true"),
            "cannot run {clang} (set DATAPLANE_CLANG), and CI=true forbids skipping the \
             staleness check of the committed BPF objects"
        );
        eprintln!("SKIPPED committed_objects_match_a_fresh_build: cannot run {clang}");
        return;
    };
    let write = std::env::var("DATAPLANE_BPF_WRITE").is_ok_and(|v| v == "1");
    let crate_dir = Path::new(env!("CARGO_MANIFEST_DIR"));
    let scratch = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("dataplane-ebpf-prebuilt");
    std::fs::create_dir_all(&scratch).expect("scratch directory");

    let mut stale = Vec::new();
    for object in BPF_OBJECTS {
        let fresh_path = scratch.join(format!("{}.o", object.name));
        let mut command = bpf_compile_command(&clang, crate_dir, object, &fresh_path);
        let status = command
            .status()
            .unwrap_or_else(|e| panic!("cannot run {clang}: {e}"));
        assert!(
            status.success(),
            "{clang} failed on {}: {command:?}",
            object.source
        );
        let fresh = std::fs::read(&fresh_path).expect("clang wrote the object");
        let committed_path = crate_dir.join(object.committed);
        let committed = std::fs::read(&committed_path).ok();
        if committed.as_deref() == Some(&fresh[..]) {
            continue;
        }
        if write {
            std::fs::create_dir_all(committed_path.parent().expect("a file in a directory"))
                .expect("object directory");
            std::fs::write(&committed_path, &fresh).expect("write the committed object");
            eprintln!("refreshed {}", object.committed);
        } else {
            stale.push(format!(
                "{} ({}): {}",
                object.committed,
                match committed {
                    Some(c) => format!("{} bytes committed, {} built", c.len(), fresh.len()),
                    None => "missing".to_owned(),
                },
                object.source
            ));
        }
    }
    let _ = std::fs::remove_dir_all(&scratch);
    assert!(
        stale.is_empty(),
        "committed BPF objects differ from a fresh build with {version}:\n  {}\n\
         refresh them with scripts/bpf-objects (DATAPLANE_BPF_WRITE=1 cargo test -p \
         dataplane-ebpf --test prebuilt) and commit them; the objects in git are built with \
         Debian 12's clang-19 (19.1.7)",
        stale.join("\n  ")
    );
}

/// Every object the library embeds is listed as a library object, and the test fixtures stay
/// out of `bpf/obj/`, which is what the package ships.
#[test]
fn library_objects_live_in_bpf_obj_and_fixtures_do_not() {
    let loader = include_str!("../src/objects.rs");
    for object in BPF_OBJECTS {
        let included = loader.contains(&format!("\"/{}.o\"", object.name));
        assert_eq!(
            included, object.library,
            "{}: embedded by src/objects.rs = {included}, listed as a library object = {}",
            object.name, object.library
        );
        assert_eq!(
            object.committed.starts_with("bpf/obj/"),
            object.library,
            "{}: library objects (only) are committed under bpf/obj/",
            object.name
        );
    }
}
