//! The kernels compile, without a GPU, with **each** NVRTC the engine supports (12.x and 13.x):
//! every `kernels/*.cu` file is embedded in the library (byte for byte), compiles with NVRTC 12
//! and with NVRTC 13 — each loaded explicitly by path — to an sm_90 CUBIN, defines every entry
//! point the engine loads, and spills no registers (`--ptxas-options=-v`). The engine's own
//! choice prefers the newest NVRTC the driver can run. A missing libnvrtc of either version
//! fails the tests: `scripts/test.sh` (the README's test command) installs both from PyPI
//! (`nvidia-cuda-nvrtc-cu12`, `nvidia-cuda-nvrtc`) and puts their `lib` folders on
//! `LD_LIBRARY_PATH`.
#![cfg(feature = "cuda")]

use std::path::{Path, PathBuf};
use std::process::Command;

use arraydrain::cuda::kernels::{compile_cubin, compile_cubin_with, SOURCES};
use arraydrain::cuda::nvrtc::{self, Nvrtc};
use arraydrain::cuda::CudaError;
use arraydrain::Error;

const ARCH: &str = "sm_90";

/// The folder on `LD_LIBRARY_PATH` holding `libnvrtc.so.<major>`; its absence is a failure.
fn nvrtc_dir(major: i32) -> PathBuf {
    let file = format!("libnvrtc.so.{major}");
    std::env::var_os("LD_LIBRARY_PATH")
        .and_then(|paths| std::env::split_paths(&paths).find(|d| d.join(&file).is_file()))
        .unwrap_or_else(|| {
            panic!(
                "no {file} on LD_LIBRARY_PATH: run `scripts/test.sh`, which installs NVRTC 12 and \
                 13 from PyPI and puts their lib folders there"
            )
        })
}

/// NVRTC `major`, loaded from its file.
fn nvrtc(major: i32) -> &'static Nvrtc {
    let path = nvrtc_dir(major).join(format!("libnvrtc.so.{major}"));
    let n = nvrtc::load(&path).unwrap_or_else(|e| panic!("loading {}: {e}", path.display()));
    assert_eq!(
        n.version().0,
        major,
        "{} reports {:?}",
        path.display(),
        n.version()
    );
    n
}

fn kernel_files() -> Vec<PathBuf> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("kernels");
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .expect("kernels/ exists")
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().and_then(|e| e.to_str()) == Some("cu"))
        .collect();
    files.sort();
    files
}

#[test]
fn every_kernel_file_is_embedded_verbatim() {
    let files = kernel_files();
    assert!(!files.is_empty(), "no kernels/*.cu");
    for path in &files {
        let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("");
        let on_disk = std::fs::read_to_string(path).expect("readable kernel");
        let embedded = SOURCES
            .iter()
            .find(|s| s.file == name)
            .unwrap_or_else(|| panic!("kernels/{name} is not in cuda::kernels::SOURCES"));
        assert_eq!(embedded.source, on_disk, "kernels/{name}: stale embedding");
        assert!(
            !on_disk
                .lines()
                .any(|l| l.trim_start().starts_with("#include")),
            "kernels/{name} must be self-contained"
        );
    }
    assert_eq!(
        SOURCES.len(),
        files.len(),
        "SOURCES names a file not in kernels/"
    );
}

#[test]
fn every_kernel_compiles_with_nvrtc_12_and_13_with_all_entry_points_and_no_spills() {
    for major in [12, 13] {
        let lib = nvrtc(major);
        for src in SOURCES {
            let compiled =
                compile_cubin_with(lib, src.file, src.source, ARCH, &["--ptxas-options=-v"])
                    .unwrap_or_else(|e| panic!("NVRTC {major}: {}: {e}", src.file));
            assert_eq!(compiled.nvrtc_version, lib.version());
            let what = format!(
                "NVRTC {}.{}: {}",
                lib.version().0,
                lib.version().1,
                src.file
            );
            let cubin = &compiled.cubin;
            let log = &compiled.log;
            assert!(cubin.starts_with(b"\x7fELF"), "{what}: not an ELF CUBIN");
            for entry in src.entry_points {
                let compiled_line = format!("Compiling entry function '{entry}' for '{ARCH}'");
                assert!(
                    log.contains(&compiled_line),
                    "{what}: entry point {entry} missing from the ptxas report:\n{log}"
                );
                assert!(
                    cubin.windows(entry.len()).any(|w| w == entry.as_bytes()),
                    "{what}: entry point {entry} missing from the CUBIN"
                );
            }
            // "    0 bytes stack frame, 0 bytes spill stores, 0 bytes spill loads", once per entry.
            let spill_lines: Vec<&str> =
                log.lines().filter(|l| l.contains("spill stores")).collect();
            assert_eq!(
                spill_lines.len(),
                src.entry_points.len(),
                "{what}: expected one spill report per entry point:\n{log}"
            );
            for line in spill_lines {
                let spills: Vec<u64> = line
                    .split(',')
                    .filter(|part| part.contains("spill"))
                    .filter_map(|part| part.split_whitespace().next()?.parse().ok())
                    .collect();
                assert_eq!(spills.len(), 2, "{what}: unparsed spill report: {line}");
                assert!(
                    spills.iter().all(|&b| b == 0),
                    "{what}: register spills: {line}"
                );
            }
            println!("{what}: {} bytes of CUBIN for {ARCH}\n{log}", cubin.len());
        }
    }
}

#[test]
fn a_broken_kernel_is_a_compile_error_with_the_log_for_each_nvrtc() {
    for major in [12, 13] {
        let result = compile_cubin_with(
            nvrtc(major),
            "broken.cu",
            "extern \"C\" __global__ void k() { undefined(); }",
            ARCH,
            &[],
        );
        match result {
            Err(Error::Cuda(CudaError::KernelCompile { log })) => {
                assert!(log.contains("undefined"), "NVRTC {major}: {log}");
                assert!(
                    log.contains(&format!("NVRTC {major}.")),
                    "NVRTC {major}: {log}"
                );
            }
            other => panic!("NVRTC {major}: expected KernelCompile, got {other:?}"),
        }
    }
}

/// With both on the search path, the engine prefers NVRTC 13 — unless the driver is 12.x, whose
/// driver cannot load NVRTC 13's CUBINs: then NVRTC 12.
#[test]
fn the_newest_nvrtc_the_driver_runs_is_chosen() {
    let (twelve, thirteen) = (nvrtc(12), nvrtc(13));
    let any = nvrtc::for_driver(None).expect("an NVRTC");
    assert_eq!(any.path(), thirteen.path());
    assert_eq!(
        nvrtc::for_driver(Some(13000)).unwrap().path(),
        thirteen.path()
    );
    assert_eq!(
        nvrtc::for_driver(Some(12080)).unwrap().path(),
        twelve.path()
    );
    assert_eq!(
        nvrtc::for_driver(Some(12020)).unwrap().path(),
        twelve.path()
    );
    let e = nvrtc::for_driver(Some(11080)).unwrap_err();
    assert!(e.contains("cannot load"), "{e}");
    let compiled = compile_cubin(SOURCES[0].file, SOURCES[0].source, ARCH, &[]).unwrap();
    assert_eq!(compiled.nvrtc_version.0, 13);
}

/// libnvrtc is also found without `LD_LIBRARY_PATH`, in a CUDA library folder: the child
/// process starts with `LD_LIBRARY_PATH` removed (glibc reads it only at start-up) and
/// `ARRAYDRAIN_CUDA_LIB_DIR` naming the folder, and must compile the kernels.
#[test]
fn nvrtc_is_found_in_a_cuda_lib_dir_without_ld_library_path() {
    const CHILD: &str = "ARRAYDRAIN_NVRTC_PRELOAD_CHILD";
    if std::env::var_os(CHILD).is_some() {
        let src = &SOURCES[0];
        let compiled = compile_cubin(src.file, src.source, ARCH, &[]);
        assert!(compiled.is_ok(), "child: {compiled:?}");
        assert_eq!(compiled.map(|c| c.nvrtc_version.0).ok(), Some(13));
        return;
    }
    let dir = nvrtc_dir(13);
    let out = Command::new(std::env::current_exe().expect("test binary"))
        .args([
            "nvrtc_is_found_in_a_cuda_lib_dir_without_ld_library_path",
            "--exact",
            "--nocapture",
            "--test-threads=1",
        ])
        .env_remove("LD_LIBRARY_PATH")
        .env("ARRAYDRAIN_CUDA_LIB_DIR", &dir)
        .env(CHILD, "1")
        .output()
        .expect("run the child");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "child failed:\n{text}");
    assert!(
        text.contains("1 passed"),
        "child did not run the test:\n{text}"
    );
}
