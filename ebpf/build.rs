//! Build the XDP object and dump the C layouts.
//!
//! 1. `xdp/jumping_xdp.c` -> `$OUT_DIR/jumping_xdp.o` and `xdp/jumping_inside.c` ->
//!    `$OUT_DIR/jumping_inside.o` with clang-19 (`-target bpf`); the crate embeds both with
//!    `include_bytes_aligned!`.
//! 2. `xdp/layout_dump.c` -> a host program, run once; its output (`NAME VALUE` lines for every
//!    constant, enum value and struct layout in `xdp/jumping_maps.h`) goes to
//!    `$OUT_DIR/c_layout.txt`, which the crate's unit test compares with the Rust mirrors.
//!
//! The compiler is `clang-19`, or `$JUMPING_BPF_CLANG` if set. Without it the build fails and
//! says to run `bash scripts/setup.sh`.

use std::env;
use std::path::{Path, PathBuf};
use std::process::Command;

const SETUP_HINT: &str = "run `bash scripts/setup.sh` (it installs clang-19)";

fn main() {
    let manifest_dir =
        PathBuf::from(env::var_os("CARGO_MANIFEST_DIR").expect("CARGO_MANIFEST_DIR"));
    let out_dir = PathBuf::from(env::var_os("OUT_DIR").expect("OUT_DIR"));
    let xdp_dir = manifest_dir.join("xdp");
    for f in [
        "jumping_xdp.c",
        "jumping_inside.c",
        "jumping_maps.h",
        "layout_dump.c",
    ] {
        println!("cargo:rerun-if-changed={}", xdp_dir.join(f).display());
    }
    println!("cargo:rerun-if-env-changed=JUMPING_BPF_CLANG");

    let clang = env::var("JUMPING_BPF_CLANG").unwrap_or_else(|_| "clang-19".to_owned());
    check_clang(&clang);

    // The BPF objects. -I for <asm/types.h>, which Debian keeps under the multiarch directory.
    for name in ["jumping_xdp", "jumping_inside"] {
        let object = out_dir.join(format!("{name}.o"));
        run(
            Command::new(&clang)
                .args(["-O2", "-g", "-Wall", "-Werror", "-target", "bpf"])
                .arg("-I/usr/include/x86_64-linux-gnu")
                .arg("-I")
                .arg(&xdp_dir)
                .arg("-c")
                .arg(xdp_dir.join(format!("{name}.c")))
                .arg("-o")
                .arg(&object),
            &format!("compile xdp/{name}.c"),
        );
    }

    // The layout dump, compiled for and run on the build host.
    let dumper = out_dir.join("layout_dump");
    run(
        Command::new(&clang)
            .args(["-O0", "-Wall", "-Werror"])
            .arg("-I")
            .arg(&xdp_dir)
            .arg(xdp_dir.join("layout_dump.c"))
            .arg("-o")
            .arg(&dumper),
        "compile xdp/layout_dump.c",
    );
    let out = Command::new(&dumper)
        .output()
        .unwrap_or_else(|e| panic!("jumping-ebpf: running {}: {e}", dumper.display()));
    assert!(
        out.status.success(),
        "jumping-ebpf: {} failed: {}",
        dumper.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    write(&out_dir.join("c_layout.txt"), &out.stdout);
}

fn check_clang(clang: &str) {
    match Command::new(clang).arg("--version").output() {
        Ok(o) if o.status.success() => {}
        Ok(o) => panic!(
            "jumping-ebpf: `{clang} --version` failed ({}): {}\n{SETUP_HINT}",
            o.status,
            String::from_utf8_lossy(&o.stderr)
        ),
        Err(e) => panic!(
            "jumping-ebpf: the XDP program needs `{clang}`, which was not found ({e}).\n\
             To install it, {SETUP_HINT}."
        ),
    }
}

fn run(cmd: &mut Command, what: &str) {
    let out = cmd.output().unwrap_or_else(|e| {
        panic!("jumping-ebpf: {what}: cannot start {cmd:?}: {e}\n{SETUP_HINT}")
    });
    assert!(
        out.status.success(),
        "jumping-ebpf: {what} failed ({}):\n{}{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

fn write(path: &Path, bytes: &[u8]) {
    std::fs::write(path, bytes)
        .unwrap_or_else(|e| panic!("jumping-ebpf: writing {}: {e}", path.display()));
}
