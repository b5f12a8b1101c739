//! Compiles the C datapath under `bpf/` with clang into `$OUT_DIR/*.o`.

use std::path::PathBuf;
use std::process::Command;

const PROGRAMS: &[&str] = &["tc_pod", "tc_host", "xdp_uplink", "sock"];
/// Fixtures only the tests and benches load (`bpf/test/`).
const TEST_PROGRAMS: &[&str] = &["test/xdp_pass", "test/floor"];

fn main() {
    let out = PathBuf::from(std::env::var_os("OUT_DIR").expect("cargo sets OUT_DIR"));
    let clang = std::env::var("DATAPLANE_CLANG").unwrap_or_else(|_| "clang-19".to_owned());
    println!("cargo:rerun-if-env-changed=DATAPLANE_CLANG");
    println!("cargo:rerun-if-changed=bpf");
    for entry in std::fs::read_dir("bpf/lib").expect("bpf/lib exists") {
        let path = entry.expect("readable bpf/lib").path();
        println!("cargo:rerun-if-changed={}", path.display());
    }
    for program in PROGRAMS.iter().chain(TEST_PROGRAMS) {
        let src = format!("bpf/{program}.c");
        println!("cargo:rerun-if-changed={src}");
        let name = program.rsplit('/').next().unwrap_or(program);
        let obj = out.join(format!("{name}.o"));
        let status = Command::new(&clang)
            .args([
                "-O2",
                "-g",
                "-target",
                "bpf",
                "-D__TARGET_ARCH_x86",
                "-Wall",
                "-Werror",
                "-I/usr/include/x86_64-linux-gnu",
                "-c",
            ])
            .arg(&src)
            .arg("-o")
            .arg(&obj)
            .status()
            .unwrap_or_else(|e| panic!("cannot run {clang} (set DATAPLANE_CLANG): {e}"));
        assert!(status.success(), "{clang} failed on {src}");
    }
}
