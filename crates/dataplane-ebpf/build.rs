//! Tells the library where its BPF objects are: by default the committed ones under
//! `bpf/obj/` (no compiler needed, so a dependent crate builds with cargo alone); with
//! `DATAPLANE_BPF_REBUILD=1`, fresh ones compiled from `bpf/` with clang-19 into `$OUT_DIR`.
//! The library includes `$DATAPLANE_EBPF_OBJ_DIR/<name>.o`.

use std::path::{Path, PathBuf};

include!("bpf/objects.rs");

fn main() {
    println!("cargo:rerun-if-env-changed=DATAPLANE_BPF_REBUILD");
    let crate_dir = PathBuf::from(std::env::var_os("CARGO_MANIFEST_DIR").expect("cargo sets it"));
    let rebuild = std::env::var("DATAPLANE_BPF_REBUILD").is_ok_and(|v| v == "1");
    let dir = if rebuild {
        let out = PathBuf::from(std::env::var_os("OUT_DIR").expect("cargo sets OUT_DIR"));
        rebuild_into(&crate_dir, &out);
        out
    } else {
        println!("cargo:rerun-if-changed=bpf/obj");
        crate_dir.join("bpf/obj")
    };
    println!("cargo:rustc-env=DATAPLANE_EBPF_OBJ_DIR={}", dir.display());
}

/// Compiles the library's objects into `out`, and warns about each committed object that
/// differs from its fresh build (the staleness check in `tests/prebuilt.rs` fails on it).
fn rebuild_into(crate_dir: &Path, out: &Path) {
    let clang = bpf_clang();
    println!("cargo:rerun-if-env-changed=DATAPLANE_CLANG");
    println!("cargo:rerun-if-changed=bpf");
    for object in BPF_OBJECTS.iter().filter(|o| o.library) {
        let obj = out.join(format!("{}.o", object.name));
        let mut command = bpf_compile_command(&clang, crate_dir, object, &obj);
        let status = command.status().unwrap_or_else(|e| {
            panic!("DATAPLANE_BPF_REBUILD=1: cannot run {clang} (set DATAPLANE_CLANG): {e}")
        });
        assert!(
            status.success(),
            "{clang} failed on {}: {command:?}",
            object.source
        );
        let fresh = std::fs::read(&obj).expect("clang wrote the object");
        if std::fs::read(crate_dir.join(object.committed))
            .ok()
            .as_deref()
            != Some(&fresh[..])
        {
            println!(
                "cargo:warning={} differs from a fresh build of {}: run scripts/bpf-objects to refresh it",
                object.committed, object.source
            );
        }
    }
}
