// The BPF objects this crate ships, and the one command that builds them from `bpf/`.
//
// Included (`include!`) by `build.rs`, which rebuilds the library's objects into `OUT_DIR` when
// `DATAPLANE_BPF_REBUILD=1`, and by `tests/prebuilt.rs`, which rebuilds every object into a
// scratch directory and compares it with the committed copy (`scripts/bpf-objects` writes the
// fresh ones back). Both use exactly this command, so "the committed bytes equal a fresh build"
// is the whole staleness check.
//
// The objects are reproducible: same clang, same bytes, whatever the checkout's path. The
// command runs in the crate's directory on relative paths and `-fdebug-compilation-dir=.`
// replaces the absolute working directory that clang would otherwise write into the DWARF and
// BTF line info; the output path is not recorded anywhere in the object.

/// One object: its C source and its committed copy, both relative to the crate's directory.
#[derive(Debug, Clone, Copy)]
struct BpfObject {
    /// The object's file name without `.o`; the library embeds `<dir>/<name>.o`.
    name: &'static str,
    /// The C file it is built from.
    source: &'static str,
    /// Where the built object is committed.
    committed: &'static str,
    /// Embedded by the library and shipped in the package; `false` for test-only fixtures,
    /// which the tests include from their committed copy and no normal build compiles.
    library: bool,
}

/// Every object built from `bpf/`. `floor` is a bench fixture, but the library embeds it for
/// `dataplane_ebpf::floor_object` (the per-packet bench loads it through the facade), so it is
/// built and shipped like the programs.
const BPF_OBJECTS: &[BpfObject] = &[
    BpfObject {
        name: "tc_pod",
        source: "bpf/tc_pod.c",
        committed: "bpf/obj/tc_pod.o",
        library: true,
    },
    BpfObject {
        name: "tc_host",
        source: "bpf/tc_host.c",
        committed: "bpf/obj/tc_host.o",
        library: true,
    },
    BpfObject {
        name: "xdp_uplink",
        source: "bpf/xdp_uplink.c",
        committed: "bpf/obj/xdp_uplink.o",
        library: true,
    },
    BpfObject {
        name: "sock",
        source: "bpf/sock.c",
        committed: "bpf/obj/sock.o",
        library: true,
    },
    BpfObject {
        name: "floor",
        source: "bpf/test/floor.c",
        committed: "bpf/obj/floor.o",
        library: true,
    },
    BpfObject {
        name: "xdp_pass",
        source: "bpf/test/xdp_pass.c",
        committed: "bpf/test/obj/xdp_pass.o",
        library: false,
    },
    BpfObject {
        name: "flood_loop",
        source: "bpf/test/flood_loop.c",
        committed: "bpf/test/obj/flood_loop.o",
        library: false,
    },
];

/// The pinned compiler. The committed objects are built with Debian 12's clang-19
/// (19.1.7); another clang may generate different (still valid) code, which the staleness
/// check reports as stale.
const BPF_CLANG: &str = "clang-19";

/// The compiler command: `DATAPLANE_CLANG` if set (e.g. a clang-19 outside `PATH`), else
/// [`BPF_CLANG`].
fn bpf_clang() -> String {
    std::env::var("DATAPLANE_CLANG").unwrap_or_else(|_| BPF_CLANG.to_owned())
}

/// The command that compiles `object` into `out`, run in `crate_dir` (the crate's directory).
fn bpf_compile_command(
    clang: &str,
    crate_dir: &std::path::Path,
    object: &BpfObject,
    out: &std::path::Path,
) -> std::process::Command {
    let mut command = std::process::Command::new(clang);
    command
        .current_dir(crate_dir)
        .args([
            "-O2",
            "-g",
            // Little-endian BPF whatever the build host: the shipped objects load on every
            // little-endian host (x86_64, aarch64). No __TARGET_ARCH: nothing uses pt_regs.
            "-target",
            "bpfel",
            "-Wall",
            "-Werror",
            // Debian's multiarch directory holds <asm/types.h>, which <linux/types.h> needs.
            "-I/usr/include/x86_64-linux-gnu",
            "-fdebug-compilation-dir=.",
            "-c",
            object.source,
            "-o",
        ])
        .arg(out);
    command
}
