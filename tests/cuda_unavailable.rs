//! Without a CUDA driver the library says so with a typed error and never panics: `probe`,
//! `CudaEngine::new` (and the CUDA benchmark, in the command's unit tests) return `CudaError::Unavailable` (or
//! `CudaError::NotCompiled` in a build without the `cuda` feature), and the CLI's `info` exits
//! cleanly. On a machine that does have a driver the test checks what it can and says which
//! case it ran.

use std::process::Command;

use arraydrain::cuda::CudaError;
use arraydrain::{cuda, Error};

/// Whether a CUDA driver library is loadable here (the engine's own search).
fn driver_library_present() -> bool {
    cuda::driver_library_present()
}

fn unavailable<T: std::fmt::Debug>(what: &str, r: arraydrain::Result<T>) {
    match r {
        Err(Error::Cuda(CudaError::Unavailable { reason })) => {
            assert!(!reason.is_empty());
            println!("{what}: CUDA unavailable: {reason}");
        }
        Err(Error::Cuda(CudaError::NotCompiled)) if cfg!(not(feature = "cuda")) => {
            println!("{what}: CUDA not compiled in");
        }
        other => panic!("{what}: expected CudaUnavailable, got {other:?}"),
    }
}

#[test]
fn no_driver_library_is_a_typed_error_not_a_panic() {
    if driver_library_present() {
        // A driver is here: the calls must still not panic, and must either work or say why.
        println!("CASE: a CUDA driver library is present; checking calls return cleanly");
        match cuda::probe(0) {
            Ok(info) => println!("probe: {info}"),
            Err(e) => {
                assert!(
                    matches!(e, Error::Cuda(CudaError::Unavailable { .. })),
                    "{e}"
                );
                println!("probe: {e}");
            }
        }
        match cuda::CudaEngine::new(0) {
            Ok(engine) => println!("engine: {:?}", engine.info()),
            Err(e) => println!("engine: {e}"),
        }
        return;
    }
    println!("CASE: no CUDA driver library on this machine");
    unavailable("probe(0)", cuda::probe(0));
    unavailable("probe(3)", cuda::probe(3));
    unavailable("CudaEngine::new(0)", cuda::CudaEngine::new(0));
    // Twice: the outcome of the library search is cached and must stay an error.
    unavailable("CudaEngine::new(0) again", cuda::CudaEngine::new(0));
    // The CUDA benchmark (the `arraydrain bench` command's harness) is checked the same way by
    // a unit test of the command: src/bin/arraydrain/bench/cuda.rs.
}

/// `arraydrain info` runs to completion and does not panic without a driver.
#[test]
fn cli_info_does_not_panic_without_a_driver() {
    let out = Command::new(env!("CARGO_BIN_EXE_arraydrain"))
        .arg("info")
        .output()
        .expect("run arraydrain info");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!stderr.contains("panicked"), "info panicked:\n{stderr}");
    assert!(out.status.success(), "info failed:\n{stdout}\n{stderr}");
    if !driver_library_present() && !stdout.trim().is_empty() {
        let text = stdout.to_lowercase();
        assert!(
            text.contains("cuda"),
            "info should report CUDA's status:\n{stdout}"
        );
    }
    println!("{stdout}");
}
