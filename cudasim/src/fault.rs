//! Fault injection: `ARRAYDRAIN_SIM_FAIL=cuMemAllocAsync:3,cuLaunchKernel:1` makes the third
//! `cuMemAllocAsync` and the first `cuLaunchKernel` of the process fail; [`crate::cudasim_fail_nth`]
//! arms the same at run time, counted from that moment, for one named call or for any failable
//! call (the sweep of the tests: fail the 1st, 2nd, … driver call of a drain in turn).
//!
//! A failed call has no effect and returns the error a driver returns there (see [`error_for`]).
//! Synchronisation calls first wait, then report the failure, as a driver reporting an
//! asynchronous error does; the simulated context stays usable (a real driver's context would be
//! lost after some of these errors: the simulator tests the engine's handling, not recovery).
//! Frees and destroys never fail (a failed free would leak for real, which no caller can mend).

use std::collections::HashMap;
use std::sync::{Mutex, MutexGuard, OnceLock};

use crate::err;
use crate::state::log;

/// The calls that can be made to fail, and the error each returns.
pub fn error_for(name: &str) -> Option<u32> {
    Some(match name {
        "cuMemAllocAsync" | "cuMemAlloc_v2" | "cuMemHostAlloc" => err::OUT_OF_MEMORY,
        "cuMemcpyDtoHAsync_v2"
        | "cuMemcpyHtoDAsync_v2"
        | "cuMemcpyDtoDAsync_v2"
        | "cuMemsetD8Async"
        | "cuPointerGetAttribute" => err::INVALID_VALUE,
        "cuLaunchKernel" => err::LAUNCH_OUT_OF_RESOURCES,
        "cuModuleLoadData" => err::NO_BINARY_FOR_GPU,
        "cuModuleGetFunction" => err::NOT_FOUND,
        "cuStreamSynchronize" | "cuEventSynchronize" | "cuCtxSynchronize" | "cuEventQuery" => {
            err::LAUNCH_FAILED
        }
        "cuStreamCreate" | "cuEventCreate" => err::OUT_OF_MEMORY,
        "cuEventRecord" | "cuStreamWaitEvent" => err::INVALID_HANDLE,
        "cuDevicePrimaryCtxRetain" | "cuCtxCreate_v3" => err::OUT_OF_MEMORY,
        _ => return None,
    })
}

#[derive(Default)]
struct Faults {
    /// Calls so far, by name.
    counts: HashMap<String, u64>,
    /// Failable calls so far, all names together.
    any: u64,
    /// Armed failures: (name or None for any failable call, absolute call number).
    plan: Vec<(Option<String>, u64)>,
    injected: u64,
}

fn faults() -> MutexGuard<'static, Faults> {
    static F: OnceLock<Mutex<Faults>> = OnceLock::new();
    F.get_or_init(|| {
        let mut f = Faults::default();
        if let Ok(spec) = std::env::var("ARRAYDRAIN_SIM_FAIL") {
            for item in spec.split(',').map(str::trim).filter(|s| !s.is_empty()) {
                let parsed = item
                    .split_once(':')
                    .and_then(|(n, k)| Some((n.to_string(), k.parse::<u64>().ok()?)));
                match parsed {
                    Some((n, k)) if error_for(&n).is_some() && k >= 1 => f.plan.push((Some(n), k)),
                    _ => log(&format!(
                        "ARRAYDRAIN_SIM_FAIL: ignoring {item:?} (want NAME:N with N >= 1, NAME a failable call)"
                    )),
                }
            }
        }
        Mutex::new(f)
    })
    .lock()
    .unwrap_or_else(|p| p.into_inner())
}

/// Counts a call of `name`; `Some(error)` when this call is to fail.
pub fn check(name: &str) -> Option<u32> {
    let mut f = faults();
    let n = {
        let c = f.counts.entry(name.to_string()).or_insert(0);
        *c += 1;
        *c
    };
    let code = error_for(name)?;
    f.any += 1;
    let any = f.any;
    let hit = f.plan.iter().position(|(want, k)| match want {
        Some(w) => w == name && *k == n,
        None => *k == any,
    })?;
    f.plan.swap_remove(hit);
    f.injected += 1;
    log(&format!(
        "injected failure: call {n} of {name} returns error {code}"
    ));
    Some(code)
}

/// Arms a failure of the `k`-th call from now of `name` (`None`: of any failable call).
pub fn arm(name: Option<String>, k: u64) {
    let mut f = faults();
    let base = match &name {
        Some(n) => f.counts.get(n).copied().unwrap_or(0),
        None => f.any,
    };
    f.plan.push((name, base + k));
}

pub fn disarm() {
    faults().plan.clear();
}

pub fn calls(name: Option<&str>) -> u64 {
    let f = faults();
    match name {
        Some(n) => f.counts.get(n).copied().unwrap_or(0),
        None => f.any,
    }
}

pub fn injected() -> u64 {
    faults().injected
}
