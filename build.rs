//! Build script: the CUDA kernels in `kernels/` are embedded into the binary with `include_str!`
//! (src/cuda/kernels.rs) and compiled at run time with NVRTC; rebuild when any of them changes,
//! and refuse kernels that break the embedding rules (self-contained, `extern "C"` entry points).

use std::fs;
use std::path::Path;

fn main() {
    println!("cargo:rerun-if-changed=kernels");
    println!("cargo:rerun-if-changed=build.rs");
    let Ok(dir) = fs::read_dir(Path::new("kernels")) else {
        return;
    };
    for entry in dir.flatten() {
        let path = entry.path();
        if path.extension().and_then(|e| e.to_str()) != Some("cu") {
            continue;
        }
        println!("cargo:rerun-if-changed={}", path.display());
        let Ok(src) = fs::read_to_string(&path) else {
            panic!("{}: not readable as UTF-8 text", path.display());
        };
        // NVRTC has no include path here: a kernel must be self-contained.
        if src.lines().any(|l| l.trim_start().starts_with("#include")) {
            panic!("{}: kernels must not #include anything", path.display());
        }
        if !src.contains("extern \"C\" __global__") {
            panic!("{}: no extern \"C\" __global__ entry point", path.display());
        }
    }
}
