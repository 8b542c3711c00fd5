//! Where the engine finds NVRTC: a PyTorch user who installed with pip has no CUDA toolkit and
//! nothing on `LD_LIBRARY_PATH`; their NVRTC lives in `site-packages/nvidia/*/lib` of the
//! environment. `arraydrain info` run from such an environment (`VIRTUAL_ENV` set, as an
//! activated venv sets it) must find it there. The venv is the one `scripts/test.sh` installs
//! (`$ARRAYDRAIN_PYTHON`, with NVRTC 12 and 13 from PyPI); without it these tests fail.
#![cfg(feature = "cuda")]

use std::path::PathBuf;
use std::process::Command;

/// The test venv's prefix (`$ARRAYDRAIN_PYTHON` is `<venv>/bin/python`).
fn venv() -> PathBuf {
    let python = std::env::var_os("ARRAYDRAIN_PYTHON")
        .map(PathBuf::from)
        .expect(
            "ARRAYDRAIN_PYTHON is not set: run `scripts/test.sh`, which installs NVRTC 12 and 13 \
         from PyPI into a venv and points ARRAYDRAIN_PYTHON at its python",
        );
    python
        .parent()
        .and_then(|bin| bin.parent())
        .map(PathBuf::from)
        .expect("ARRAYDRAIN_PYTHON is <venv>/bin/python")
}

fn info(envs: &[(&str, &std::ffi::OsStr)]) -> String {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_arraydrain"));
    cmd.arg("info")
        .env_remove("LD_LIBRARY_PATH")
        .env_remove("ARRAYDRAIN_NVRTC")
        .env_remove("VIRTUAL_ENV")
        .env_remove("CONDA_PREFIX");
    for (k, v) in envs {
        cmd.env(k, v);
    }
    let out = cmd.output().expect("arraydrain info runs");
    assert!(out.status.success(), "{out:?}");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn nvrtc_from_pip_wheels_is_found_in_the_active_environment() {
    let venv = venv();
    let text = info(&[("VIRTUAL_ENV", venv.as_os_str())]);
    let line = text
        .lines()
        .find(|l| l.contains("NVRTC"))
        .unwrap_or_else(|| panic!("info names no NVRTC:\n{text}"));
    assert!(
        line.contains("NVRTC 13.") && line.contains(&*venv.to_string_lossy()),
        "the pip wheel's NVRTC 13 in {} is not the one found: {line}",
        venv.display()
    );
}

#[test]
fn a_refusal_names_where_pip_users_get_nvrtc() {
    // No environment, no LD_LIBRARY_PATH: only toolkit and system folders are left. On a
    // machine without a toolkit the reason must tell a pip user what to do.
    let text = info(&[]);
    let line = text
        .lines()
        .find(|l| l.contains("NVRTC"))
        .unwrap_or_else(|| panic!("info names no NVRTC:\n{text}"));
    if line.contains("no usable NVRTC") {
        assert!(
            line.contains("pip install nvidia-cuda-nvrtc") && line.contains("ARRAYDRAIN_NVRTC"),
            "{line}"
        );
    } else {
        // A CUDA toolkit is installed here: what it found must be a real file.
        assert!(line.contains("libnvrtc.so."), "{line}");
    }
}

#[test]
fn the_nvrtc_override_gets_the_driver_version_check() {
    let lib = venv()
        .join("lib")
        .read_dir()
        .expect("venv lib/")
        .flatten()
        .map(|e| {
            e.path()
                .join("site-packages/nvidia/cu13/lib/libnvrtc.so.13")
        })
        .find(|p| p.is_file())
        .expect("NVRTC 13 wheel in the test venv");
    // This test binary holds this one test that sets the variable; the others spawn children
    // with it removed.
    std::env::set_var("ARRAYDRAIN_NVRTC", &lib);
    let refused = arraydrain::cuda::nvrtc_status(Some(12080))
        .expect_err("a 12.8 driver cannot load what NVRTC 13 compiles");
    assert!(
        refused.contains("ARRAYDRAIN_NVRTC") && refused.contains("CUDA 12.8"),
        "{refused}"
    );
    let taken = arraydrain::cuda::nvrtc_status(Some(13000)).expect("a 13.0 driver runs NVRTC 13");
    assert!(taken.contains("NVRTC 13."), "{taken}");
    std::env::remove_var("ARRAYDRAIN_NVRTC");
}
