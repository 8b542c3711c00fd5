//! A CUDA driver simulator for arraydrain's tests: a shared library loadable as `libcuda.so.1`
//! that implements exactly the driver calls the engine (`src/cuda/`) and cudarc 0.19 (CUDA 12.0
//! bindings, dynamic loading) make, strictly:
//!
//! - **device memory** is host memory (one mapping per allocation, guard pages around it, a
//!   canary tail up to the 256-byte rounding) in a registry; every pointer given to a copy, a
//!   memset or a kernel is checked (bounds, freed, context, stream-ordered allocation, overlap),
//!   and a violation aborts the process with a report naming the call and the allocation. Device
//!   addresses are the host addresses plus [`mem::DEVICE_OFFSET`] (non-canonical), so host code
//!   that dereferences a device pointer faults at once. Freed memory is unmapped (poisoned: any
//!   access faults and is reported).
//! - **streams run asynchronously**, each on its own worker thread, with seeded random delays
//!   before every operation (`ARRAYDRAIN_SIM_SEED`); events, stream waits, synchronisation,
//!   stream-ordered allocation and free, and the legacy default stream follow the driver's rules.
//! - **kernels** are the real `kernels/gather.cu`, compiled for the host by `build.rs`; a launch
//!   checks its shape against the simulated H100-like device and its arguments against the
//!   kernel's contract (K1–K6), then runs every thread of the grid, blocks in random order.
//! - **fault injection** (`ARRAYDRAIN_SIM_FAIL=cuMemAllocAsync:3,...`, or [`cudasim_fail_nth`]
//!   at run time) makes a call fail with the error a driver returns there.
//! - a context destroyed with allocations still live reports each of them.
//!
//! Every other driver entry point of the bindings exists, logs its name and returns
//! `CUDA_ERROR_NOT_SUPPORTED` ([`unsupported`]).
//!
//! Configuration (environment, read at `cuInit`): `ARRAYDRAIN_SIM_SEED` (default 0),
//! `ARRAYDRAIN_SIM_DEVICE_BYTES` (default 2 GiB; suffixes K, M, G), `ARRAYDRAIN_SIM_PINNED_BYTES`
//! (default 4 GiB), `ARRAYDRAIN_SIM_DELAY_US` (the random delay of one operation in 16 is up to this, one in 256 waits ten times it; default 100),
//! `ARRAYDRAIN_SIM_MIN_DELAY_US` (default 0), `ARRAYDRAIN_SIM_DRIVER_VERSION` (default 13000),
//! `ARRAYDRAIN_SIM_FAIL`, `ARRAYDRAIN_SIM_LOG=1` (log every call).

#![allow(clippy::missing_safety_doc)]
// Every exported function is an `unsafe extern "C"` driver entry point; its safety contract is
// the CUDA driver API's, checked here as far as a driver can.
#![allow(unsafe_op_in_unsafe_fn)]

mod api;
mod fault;
mod kernel;
mod mem;
mod report;
mod sched;
mod state;
mod unsupported;

pub use api::*;

/// `CUresult` values the simulator returns.
pub mod err {
    pub const SUCCESS: u32 = 0;
    pub const INVALID_VALUE: u32 = 1;
    pub const OUT_OF_MEMORY: u32 = 2;
    pub const NOT_INITIALIZED: u32 = 3;
    pub const NO_DEVICE: u32 = 100;
    pub const INVALID_DEVICE: u32 = 101;
    pub const INVALID_IMAGE: u32 = 200;
    pub const INVALID_CONTEXT: u32 = 201;
    pub const NO_BINARY_FOR_GPU: u32 = 209;
    pub const INVALID_HANDLE: u32 = 400;
    pub const NOT_FOUND: u32 = 500;
    pub const NOT_READY: u32 = 600;
    pub const LAUNCH_OUT_OF_RESOURCES: u32 = 701;
    pub const LAUNCH_FAILED: u32 = 719;
    pub const NOT_SUPPORTED: u32 = 801;
    pub const UNKNOWN: u32 = 999;

    /// `(code, name, description)` for `cuGetErrorName` / `cuGetErrorString`.
    pub const TABLE: &[(u32, &str, &str)] = &[
        (SUCCESS, "CUDA_SUCCESS\0", "no error\0"),
        (
            INVALID_VALUE,
            "CUDA_ERROR_INVALID_VALUE\0",
            "invalid argument\0",
        ),
        (
            OUT_OF_MEMORY,
            "CUDA_ERROR_OUT_OF_MEMORY\0",
            "out of memory\0",
        ),
        (
            NOT_INITIALIZED,
            "CUDA_ERROR_NOT_INITIALIZED\0",
            "initialization error\0",
        ),
        (
            NO_DEVICE,
            "CUDA_ERROR_NO_DEVICE\0",
            "no CUDA-capable device is detected\0",
        ),
        (
            INVALID_DEVICE,
            "CUDA_ERROR_INVALID_DEVICE\0",
            "invalid device ordinal\0",
        ),
        (
            INVALID_IMAGE,
            "CUDA_ERROR_INVALID_IMAGE\0",
            "device kernel image is invalid\0",
        ),
        (
            INVALID_CONTEXT,
            "CUDA_ERROR_INVALID_CONTEXT\0",
            "invalid device context\0",
        ),
        (
            NO_BINARY_FOR_GPU,
            "CUDA_ERROR_NO_BINARY_FOR_GPU\0",
            "no kernel image is available for execution on the device\0",
        ),
        (
            INVALID_HANDLE,
            "CUDA_ERROR_INVALID_HANDLE\0",
            "invalid resource handle\0",
        ),
        (
            NOT_FOUND,
            "CUDA_ERROR_NOT_FOUND\0",
            "named symbol not found\0",
        ),
        (NOT_READY, "CUDA_ERROR_NOT_READY\0", "device not ready\0"),
        (
            LAUNCH_OUT_OF_RESOURCES,
            "CUDA_ERROR_LAUNCH_OUT_OF_RESOURCES\0",
            "too many resources requested for launch\0",
        ),
        (
            LAUNCH_FAILED,
            "CUDA_ERROR_LAUNCH_FAILED\0",
            "unspecified launch failure\0",
        ),
        (
            NOT_SUPPORTED,
            "CUDA_ERROR_NOT_SUPPORTED\0",
            "operation not supported\0",
        ),
        (UNKNOWN, "CUDA_ERROR_UNKNOWN\0", "unknown error\0"),
    ];
}
