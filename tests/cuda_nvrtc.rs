//! The kernels compile, without a GPU: every `kernels/*.cu` file is embedded in the library
//! (byte for byte), compiles with NVRTC to an sm_90 CUBIN, defines every entry point the engine
//! loads, and spills no registers (`--ptxas-options=-v`). A missing libnvrtc fails the test:
//! `scripts/test.sh` (the README's test command) installs NVRTC from PyPI and puts its `lib`
//! folder on `LD_LIBRARY_PATH`.
#![cfg(feature = "cuda")]

use std::path::{Path, PathBuf};
use std::process::Command;

use arraydrain::cuda::kernels::{compile_cubin, Compiled, SOURCES};
use arraydrain::Error;

const ARCH: &str = "sm_90";

/// Compiles `source`; a missing libnvrtc is a failure that says how to get one.
fn compile(file: &str, source: &str) -> Option<arraydrain::Result<Compiled>> {
    match compile_cubin(file, source, ARCH, &["--ptxas-options=-v"]) {
        Err(Error::CudaUnavailable { reason }) => panic!(
            "libnvrtc not found ({reason}): run `scripts/test.sh`, which installs NVRTC from \
             PyPI and puts its lib folder on LD_LIBRARY_PATH"
        ),
        other => Some(other),
    }
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
fn every_kernel_compiles_for_sm_90_with_all_entry_points_and_no_spills() {
    for src in SOURCES {
        let Some(result) = compile(src.file, src.source) else {
            return;
        };
        let compiled = result.unwrap_or_else(|e| panic!("{}: {e}", src.file));
        let cubin = &compiled.cubin;
        let log = &compiled.log;
        assert!(
            cubin.starts_with(b"\x7fELF"),
            "{}: not an ELF CUBIN",
            src.file
        );
        for entry in src.entry_points {
            let compiled_line = format!("Compiling entry function '{entry}' for '{ARCH}'");
            assert!(
                log.contains(&compiled_line),
                "{}: entry point {entry} missing from the ptxas report:\n{log}",
                src.file
            );
            assert!(
                cubin.windows(entry.len()).any(|w| w == entry.as_bytes()),
                "{}: entry point {entry} missing from the CUBIN",
                src.file
            );
        }
        // "    0 bytes stack frame, 0 bytes spill stores, 0 bytes spill loads", once per entry.
        let spill_lines: Vec<&str> = log.lines().filter(|l| l.contains("spill stores")).collect();
        assert_eq!(
            spill_lines.len(),
            src.entry_points.len(),
            "{}: expected one spill report per entry point:\n{log}",
            src.file
        );
        for line in spill_lines {
            let spills: Vec<u64> = line
                .split(',')
                .filter(|part| part.contains("spill"))
                .filter_map(|part| part.split_whitespace().next()?.parse().ok())
                .collect();
            assert_eq!(spills.len(), 2, "unparsed spill report: {line}");
            assert!(
                spills.iter().all(|&b| b == 0),
                "{}: register spills: {line}",
                src.file
            );
        }
        println!(
            "{}: {} bytes of CUBIN for {ARCH}\n{log}",
            src.file,
            cubin.len()
        );
    }
}

#[test]
fn a_broken_kernel_is_a_compile_error_with_the_log() {
    let Some(result) = compile(
        "broken.cu",
        "extern \"C\" __global__ void k() { undefined(); }",
    ) else {
        return;
    };
    match result {
        Err(Error::KernelCompile { log }) => assert!(log.contains("undefined"), "{log}"),
        other => panic!("expected KernelCompile, got {other:?}"),
    }
}

/// The folder holding libnvrtc.so.13 on `LD_LIBRARY_PATH`, if any.
fn nvrtc_dir_on_ld_path() -> Option<PathBuf> {
    let paths = std::env::var_os("LD_LIBRARY_PATH")?;
    std::env::split_paths(&paths).find(|d| d.join("libnvrtc.so.13").is_file())
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
        return;
    }
    let Some(dir) = nvrtc_dir_on_ld_path() else {
        panic!(
            "no folder with libnvrtc.so.13 on LD_LIBRARY_PATH: run `scripts/test.sh`, which \
             installs NVRTC from PyPI and puts its lib folder there"
        );
    };
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
