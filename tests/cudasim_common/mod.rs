//! Shared by the tests that run only under the CUDA driver simulator (`cudasim/`, put on the
//! loader path as libcuda.so.1 by scripts/test-cudasim.sh): the simulator's control functions,
//! and re-running one test of the same binary in a child process (to change the simulator's
//! seed or capacities, which it reads once per process, or to expect an abort).
#![allow(dead_code)]

use std::process::{Command, Output};

/// The simulator's `CudasimStats` (cudasim/src/api.rs).
#[repr(C)]
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Stats {
    pub device_allocs: u64,
    pub device_bytes: u64,
    pub pinned_allocs: u64,
    pub pinned_bytes: u64,
    pub pending_ops: u64,
    pub leaked_allocs: u64,
    pub injected_faults: u64,
    pub failable_calls: u64,
    pub pending_host_copies: u64,
}

/// The loaded simulator.
pub struct Sim {
    lib: libloading::Library,
}

impl Sim {
    /// The simulator, which must be the libcuda this process loads; panics (failing the test)
    /// otherwise — these tests never pass against a real driver or none.
    pub fn get() -> Sim {
        // SAFETY: opening the CUDA driver library (here: the simulator) runs its initialisers,
        // as any CUDA program does; the handle is kept in the returned value.
        let lib = unsafe { libloading::Library::new("libcuda.so.1") }.unwrap_or_else(|e| {
            panic!("these tests need the CUDA simulator as libcuda.so.1 (scripts/test-cudasim.sh): {e}")
        });
        // SAFETY: `cudasim_is_simulator` takes nothing and returns an int.
        let is_sim = unsafe { lib.get::<unsafe extern "C" fn() -> i32>(b"cudasim_is_simulator\0") }
            .map(|f| unsafe { f() } == 1)
            .unwrap_or(false);
        assert!(
            is_sim,
            "libcuda.so.1 is not the CUDA simulator (run scripts/test-cudasim.sh)"
        );
        Sim { lib }
    }

    pub fn stats(&self) -> Stats {
        let mut s = Stats::default();
        // SAFETY: `cudasim_stats` writes one `CudasimStats`, whose layout `Stats` repeats.
        unsafe {
            let f = self
                .lib
                .get::<unsafe extern "C" fn(*mut Stats)>(b"cudasim_stats\0")
                .expect("cudasim_stats");
            f(&mut s);
        }
        s
    }

    /// Fails the `k`-th failable driver call from now.
    pub fn fail_nth(&self, k: u64) {
        // SAFETY: (const char* or null, u64) -> void.
        unsafe {
            let f = self
                .lib
                .get::<unsafe extern "C" fn(*const std::ffi::c_char, u64)>(b"cudasim_fail_nth\0")
                .expect("cudasim_fail_nth");
            f(std::ptr::null(), k);
        }
    }

    pub fn disarm(&self) {
        // SAFETY: () -> void.
        unsafe {
            let f = self
                .lib
                .get::<unsafe extern "C" fn()>(b"cudasim_disarm\0")
                .expect("cudasim_disarm");
            f();
        }
    }

    /// Failable driver calls made so far.
    pub fn calls(&self) -> u64 {
        // SAFETY: (const char* or null) -> u64.
        unsafe {
            let f = self
                .lib
                .get::<unsafe extern "C" fn(*const std::ffi::c_char) -> u64>(b"cudasim_calls\0")
                .expect("cudasim_calls");
            f(std::ptr::null())
        }
    }
}

/// Runs test `name` of this test binary alone in a child process with `env` added; returns
/// its output.
pub fn child(name: &str, env: &[(&str, String)]) -> Output {
    let exe = std::env::current_exe().expect("the test binary");
    let mut cmd = Command::new(exe);
    cmd.args([
        "--exact",
        name,
        "--include-ignored",
        "--nocapture",
        "--test-threads",
        "1",
    ]);
    cmd.env("CUDASIM_CHILD", name);
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd.output().expect("running a child test process")
}

/// Whether this process is the child that `child(name, …)` started.
pub fn is_child(name: &str) -> bool {
    std::env::var("CUDASIM_CHILD").is_ok_and(|v| v == name)
}

pub fn splitmix(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

pub fn random_bytes(n: usize, seed: u64) -> Vec<u8> {
    let mut s = seed;
    (0..n)
        .map(|_| {
            s = splitmix(s);
            (s >> 56) as u8
        })
        .collect()
}
