//! Shared by the tests that run only under the CUDA driver simulator (`cudasim/`, put on the
//! loader path as libcuda.so.1 by scripts/test-cudasim.sh): the simulator's control functions,
//! re-running one test of the same binary in a child process (to change the simulator's seed or
//! capacities, which it reads once per process, to expect an abort, or to have the process to
//! itself), the fault sweep, and, re-exported, what the tests on a real device share
//! (tests/cuda_common/: test data, driver-allocated device memory).
#![allow(dead_code)]

use std::fmt::Debug;
use std::process::{Command, Output};
use std::sync::Arc;

use arraydrain::cuda::cudarc::driver::CudaContext;
use arraydrain::cuda::CudaError;
use arraydrain::Error;

#[path = "../cuda_common/mod.rs"]
mod cuda_common;
pub use cuda_common::*;

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

/// Runs the body of test `name` alone in a child process of this test binary: `true` in that
/// child, where the caller goes on to run the body; in the parent, runs the child, fails (with
/// the child's output) unless it passed, and returns `false`: the caller returns. For tests that
/// need the process to themselves (failures armed process-wide, counts of the whole process's
/// allocations) while the other tests of the binary run beside them.
pub fn in_child_process(name: &str) -> bool {
    if is_child(name) {
        return true;
    }
    let out = child(name, &[]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}\n{stderr}");
    false
}

/// Whether `e` is one of the typed errors a failing driver call may end in: the driver's
/// failure (not a caught panic), or memory (device or host) that could not be had.
pub fn is_driver_failure(e: &Error) -> bool {
    match e {
        Error::Cuda(CudaError::Driver { message, .. }) => !message.starts_with("panic"),
        Error::Cuda(CudaError::OutOfMemory { .. }) | Error::HostAllocation { .. } => true,
        _ => false,
    }
}

/// The fault sweep over one scenario, `run`, on inputs made fresh for each run by `prep` and
/// handed to `release` after it (the lender's memory: the engine must not have freed it).
///
/// A first clean run (what is made once per process is made), then a second that counts the
/// failable driver calls `n` a run makes; both must return `want`. Then, for each `k` in
/// `1..=n`, a run whose `k`-th failable call fails: it must return `want` or an error, which
/// `judge(k, n, error)` checks; no host copy may still be in flight after it; the failure
/// cudarc stored in `ctx` (the user's context) is cleared; and the next clean run must return
/// `want` again. `what` names the scenario in failure messages. Returns `n` and how many of the
/// failing runs ended in an error (the caller asserts there were some).
pub fn sweep_failing_calls<I, T: PartialEq + Debug, E: Debug>(
    ctx: &Arc<CudaContext>,
    what: &str,
    want: &T,
    prep: impl Fn() -> I,
    run: impl Fn(&I) -> Result<T, E>,
    release: impl Fn(I),
    mut judge: impl FnMut(u64, u64, E),
) -> (u64, usize) {
    let sim = Sim::get();
    let inputs = prep();
    assert_eq!(&run(&inputs).unwrap(), want, "{what}: first clean run");
    release(inputs);
    let inputs = prep();
    let before = sim.calls();
    assert_eq!(&run(&inputs).unwrap(), want, "{what}: counted clean run");
    let n = sim.calls() - before;
    release(inputs);
    let mut errors = 0;
    for k in 1..=n {
        let inputs = prep();
        sim.fail_nth(k);
        let r = run(&inputs);
        sim.disarm();
        assert_eq!(
            sim.stats().pending_host_copies,
            0,
            "{what}, call {k} of {n}: a copy still in flight"
        );
        match r {
            Ok(out) => assert!(&out == want, "{what}, call {k} of {n}: wrong output"),
            Err(e) => {
                judge(k, n, e);
                errors += 1;
            }
        }
        // Whatever cudarc stored in the user's context from the failure is the failure's.
        let _ = ctx.check_err();
        release(inputs);
        let inputs = prep();
        assert_eq!(
            &run(&inputs).unwrap(),
            want,
            "{what}: clean run after call {k} of {n}"
        );
        release(inputs);
    }
    (n, errors)
}
