//! Compiles the real kernels (`../kernels/gather.cu`) for the host with the system C++ compiler,
//! with `csrc/sim_cuda.h` force-included to supply the CUDA names they use, plus the block runner.
//! The entry points keep hidden visibility: they are called only through `cudasim_run_block`.

use std::path::Path;

fn main() {
    let dir = std::env::var("CARGO_MANIFEST_DIR").expect("cargo sets CARGO_MANIFEST_DIR");
    let dir = Path::new(&dir);
    let kernels = dir.join("../kernels/gather.cu");
    let header = dir.join("csrc/sim_cuda.h");
    println!("cargo:rerun-if-changed=../kernels/gather.cu");
    println!("cargo:rerun-if-changed=csrc/sim_cuda.h");
    println!("cargo:rerun-if-changed=csrc/runner.cpp");
    println!("cargo:rerun-if-changed=build.rs");
    cc::Build::new()
        .cpp(true)
        .std("c++17")
        .opt_level(2)
        .flag("-fvisibility=hidden")
        .flag("-include")
        .flag(header.to_str().expect("a UTF-8 path"))
        .flag("-x")
        .flag("c++")
        .file(&kernels)
        .compile("cudasim_kernels");
    cc::Build::new()
        .cpp(true)
        .std("c++17")
        .opt_level(2)
        .flag("-fvisibility=hidden")
        .include(dir.join("csrc"))
        .file(dir.join("csrc/runner.cpp"))
        .compile("cudasim_runner");
}
