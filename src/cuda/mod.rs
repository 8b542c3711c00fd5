//! The CUDA engine: device tables, the batch gather kernel, asynchronous copies into pinned
//! output, and the classic recipes on the GPU. Its unsafe code (FFI through `cudarc`, raw device
//! pointers, page-locked memory) is one of the crate's two unsafe modules (the other is
//! [`crate::mmap`]); everything above it works with safe types whose contracts are stated where
//! they are established.
//!
//! # Pipeline
//!
//! 1. [`probe`] / [`CudaEngine::new`]: find `libcuda` (and `libnvrtc`) — in the loader's default
//!    path, then in the usual CUDA folders (`library_dirs`) — without ever panicking; no
//!    library, no device or a driver older than CUDA 12.0 is [`CudaError::Unavailable`].
//! 2. The kernels in `kernels/*.cu` are embedded in the binary and compiled once per process
//!    with NVRTC to a CUBIN for the device's own architecture (`sm_XY`), then loaded per engine.
//!    NVRTC 12.x and 13.x both work; the newest whose major version the driver supports is used
//!    ([`nvrtc`]).
//! 3. [`CudaEngine::upload`] copies a host [`Table`] to the device once; [`CudaEngine::wrap`]
//!    adopts columns that already live there (the user's `CudaSlice`s), without a copy;
//!    [`CudaEngine::borrow_column`] reads memory someone else owns (a PyTorch tensor) in place,
//!    never frees it, and orders its reads after an event recorded on the owner's stream.
//! 4. [`CudaEngine::materialize`] runs a [`Strategy`]:
//!    - `Pinned` / `Auto`: the output rows are cut into chunks of about `CHUNK_BYTES`; chunk
//!      `k` goes to lane `k % LANES` (a stream with its own staging buffer, index buffers and
//!      events); on its lane the indices are uploaded, the gather kernel fills the staging
//!      buffer (one launch per column covers many batches) and an asynchronous copy moves each
//!      column's rows straight into their final place in **pinned, cacheable** host memory that
//!      backs the output arrays. Gathering chunk `k+1` overlaps copying chunk `k`; the host
//!      waits once, at the end. Sequential orders skip the kernel: rows are copied straight
//!      from the device table. Peak extra device memory is `LANES` staging buffers. Each
//!      chunk's indices are checked against the device table's rows while they are copied
//!      into the lane's pinned index buffer (the copy the upload needs anyway), so an order
//!      made for another table is an error before the kernel could read past a column.
//!    - the staged mode (below) when the output cannot or should not be pinned whole;
//!    - `Concat`, `PerBatch`, `Preallocated`: the classic recipes, one batch at a time on one
//!      stream, into ordinary (pageable) host memory — honest baselines.
//! 5. [`CudaEngine::drain_device`] drains the user's own device batches into pinned output
//!    (`drain_device_expecting` when their row count is only a hint), each batch released once
//!    its copy has landed.
//! 6. [`DeviceWriter`] goes the other way: a [`Writer`](crate::Writer) fed from device memory
//!    (model outputs), copied asynchronously on the engine's streams into a bounded pool of
//!    pinned staging blocks, ordered after the producer's stream and before its later work by
//!    events, and handed to the writer once landed.
//!
//! # Pinned memory, the pool, and when the staged mode takes over
//!
//! Pinning costs far more than copying (~0.1–1 s per GB), so pinned output buffers come from a
//! `PinnedPool`: dropping a pinned output hands its memory back to the pool and the next drain
//! of the same size reuses it; the time spent allocating is reported apart, as
//! `Report::pin_seconds`. Memory is allocated with `cuMemHostAlloc(PORTABLE)` — page-locked and
//! cacheable, never write-combined (which the CPU reads very slowly) — and zeroed once.
//!
//! The rule: `Pinned` pins the whole output when its size is at most the engine's pin budget
//! (`CudaEngine::pin_budget`, by default half the machine's physical memory) and the
//! allocation succeeds. Otherwise — too large, or `cuMemHostAlloc` refuses — it runs **staged**:
//! a small ring of pinned buffers (one per lane) receives the chunks and host threads copy each
//! one into an ordinary output. [`CudaEngine::materialize_into`] uses the direct path when every
//! output column's storage is [`StorageKind::Pinned`] and the staged path for any other storage
//! (heap, a memory-mapped `.npy` file — whose `region_done` / `finish` it calls in order).
//!
//! # Never a panic, never a partial output
//!
//! Every public entry point runs under `catch_unwind`; every exit, including errors and
//! unwinding, first waits for the copies in flight into the output (a guard synchronises the
//! lanes), so no output is returned, or freed, while the device still writes it. The guard
//! clears errors that cudarc stored from an earlier `Drop` before it waits (such an error would
//! make a wait return without waiting), waits for every stream, and only then reports. Each call
//! takes a set of lanes for its length from a small pool instead of locking them, so the engine
//! may be called concurrently, or again from a rayon job that a waiting drain runs. Errors are
//! typed: [`CudaError::OutOfMemory`], [`Error::IndexOutOfBounds`], [`CudaError::WrongDevice`],
//! [`CudaError::UnorderableColumn`], [`Error::Cuda`] for a failed call or launch,
//! [`CudaError::KernelCompile`].
//!
//! # Two handles on one context
//!
//! The engine works in the device's primary context through a handle of its own whose cudarc
//! event tracking is off (it orders its work itself, and tracking would serialise its lanes).
//! `CudaEngine::context` and `CudaEngine::stream` give users a second handle on the same
//! context with tracking on, so their buffers stay safe across streams.
//!
//! With the `cuda` feature off, the same entry points exist and return
//! [`CudaError::NotCompiled`].
//!
//! [`CudaError::Unavailable`]: crate::cuda::CudaError::Unavailable
//! [`CudaError::OutOfMemory`]: crate::cuda::CudaError::OutOfMemory
//! [`Error::IndexOutOfBounds`]: crate::Error::IndexOutOfBounds
//! [`CudaError::WrongDevice`]: crate::cuda::CudaError::WrongDevice
//! [`CudaError::UnorderableColumn`]: crate::cuda::CudaError::UnorderableColumn
//! [`Error::Cuda`]: crate::Error::Cuda
//! [`CudaError::KernelCompile`]: crate::cuda::CudaError::KernelCompile
//! [`CudaError::NotCompiled`]: crate::cuda::CudaError::NotCompiled
//! [`Table`]: crate::Table
//! [`Strategy`]: crate::Strategy
//! [`StorageKind::Pinned`]: crate::StorageKind::Pinned

use std::fmt;

#[cfg(feature = "cuda")]
mod checkout;
#[cfg(feature = "cuda")]
mod classic;
#[cfg(feature = "cuda")]
mod current;
#[cfg(feature = "cuda")]
mod device;
#[cfg(feature = "cuda")]
mod engine;
#[cfg(feature = "cuda")]
#[doc(hidden)] // public for the NVRTC tests (tests/cuda_nvrtc.rs, the simulator's self-test) only
pub mod kernels;
#[cfg(feature = "cuda")]
mod libs;
#[cfg(feature = "cuda")]
mod memory;
#[cfg(feature = "cuda")]
#[doc(hidden)] // public for the NVRTC tests only
pub mod nvrtc;
#[cfg(feature = "cuda")]
mod pipeline;
#[cfg(feature = "cuda")]
mod table;
#[cfg(feature = "cuda")]
mod write;

#[cfg(feature = "cuda")]
pub use current::{current_context, drop_in_context, ContextGuard};
#[cfg(feature = "cuda")]
pub use device::probe;
#[cfg(feature = "cuda")]
pub use engine::CudaEngine;
#[cfg(feature = "cuda")]
pub use libs::{driver_library_present, library_dirs};
#[cfg(feature = "cuda")]
pub use memory::{PinnedBuf, PinnedPool};
#[cfg(feature = "cuda")]
pub use pipeline::{CHUNK_BYTES, LANES};
#[cfg(feature = "cuda")]
pub use table::{DeviceBatch, DeviceColumn, DeviceTable};
#[cfg(feature = "cuda")]
pub use write::DeviceWriter;

mod source;
pub use source::{WriteSource, STAGING_BLOCKS};

/// The `cudarc` crate the engine is built on, re-exported so callers hand the engine
/// `CudaSlice`s of the same version (`arraydrain::cuda::cudarc::driver::CudaSlice`).
#[cfg(feature = "cuda")]
pub use cudarc;

mod error;
pub use error::CudaError;

#[cfg(not(feature = "cuda"))]
mod stub;
#[cfg(not(feature = "cuda"))]
pub use stub::*;

/// The oldest driver the engine accepts (`cuDriverGetVersion` encoding: 1000 × major + 10 ×
/// minor): CUDA 12.0. The driver bindings are CUDA 12.0's (every call the engine makes —
/// stream-ordered allocation and memory pools from 11.2, events, module loading, launches —
/// exists there and keeps its ABI in every later driver), and the kernels are compiled by NVRTC
/// 12.x or 13.x, whose CUBINs need a driver of the same major version or newer.
pub const MIN_DRIVER_VERSION: i32 = 12000;

/// Which NVRTC the engine compiles its kernels with for a driver of CUDA version `driver`
/// (`None`: for any driver), as `NVRTC 13.0 (/path/libnvrtc.so.13)`; or why there is none.
///
/// # Errors
/// Why no NVRTC can be used (none found, or only ones newer than the driver).
#[cfg(feature = "cuda")]
pub fn nvrtc_status(driver: Option<i32>) -> std::result::Result<String, String> {
    nvrtc::for_driver(driver).map(|n| {
        format!(
            "NVRTC {}.{} ({})",
            n.version().0,
            n.version().1,
            n.path().display()
        )
    })
}

/// What [`probe`] found about a device.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CudaInfo {
    /// The device's name (e.g. `NVIDIA H100 80GB HBM3`).
    pub name: String,
    /// Its ordinal.
    pub ordinal: usize,
    /// Compute capability (major, minor), e.g. `(9, 0)` on Hopper.
    pub compute_capability: (i32, i32),
    /// Device memory in bytes.
    pub total_memory: u64,
    /// The driver's CUDA version as `cuDriverGetVersion` reports it (e.g. `13000` for 13.0).
    pub driver_version: i32,
}

/// The name the CUDA driver simulator (`cudasim/`, test-only) gives its device.
pub const SIMULATOR_NAME_PREFIX: &str = "CUDA simulator";

impl CudaInfo {
    /// Whether the device is the CUDA driver simulator of the tests (`cudasim/`), not a GPU:
    /// nothing measured on it says anything about speed.
    pub fn is_simulator(&self) -> bool {
        self.name.starts_with(SIMULATOR_NAME_PREFIX)
    }

    /// The NVRTC target for this device, e.g. `sm_90`.
    pub fn arch(&self) -> String {
        format!(
            "sm_{}{}",
            self.compute_capability.0, self.compute_capability.1
        )
    }
}

impl fmt::Display for CudaInfo {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "cuda:{} {} (compute {}.{}, {:.1} GiB, driver CUDA {}.{})",
            self.ordinal,
            self.name,
            self.compute_capability.0,
            self.compute_capability.1,
            self.total_memory as f64 / (1u64 << 30) as f64,
            self.driver_version / 1000,
            (self.driver_version % 1000) / 10
        )
    }
}
