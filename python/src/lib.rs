//! `arraydrain._native`: the engine behind the `arraydrain` Python package.
//!
//! The package (`python/arraydrain/`) reads a PyTorch `DataLoader`, works out the exact order
//! one epoch would yield, reads tensors in place and calls in here. Everything that crosses is
//! bytes: each column arrives as a C-contiguous `uint8` array of shape `(rows, row_bytes)` plus
//! its engine dtype name and row shape, and leaves as a `uint8` array viewing engine memory
//! (owned by a [`buffer::Buffer`], the array's `base`), which the package views as the real
//! dtype and shape. No copies at the boundary, the GIL released while the engine runs, no
//! unsafe code in this crate.
#![forbid(unsafe_code)]

mod buffer;
#[cfg(feature = "cuda")]
mod cuda;
mod errors;
mod host;
mod order;
mod shards;
mod writer;

use pyo3::prelude::*;

/// Whether the engine was built with its CUDA backend.
#[pyfunction]
fn cuda_compiled() -> bool {
    cfg!(feature = "cuda")
}

/// The native module.
#[pymodule]
fn _native(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_class::<buffer::Buffer>()?;
    m.add_class::<host::Sink>()?;
    m.add_class::<writer::Writer>()?;
    m.add_function(wrap_pyfunction!(writer::launcher_placement, m)?)?;
    m.add_function(wrap_pyfunction!(host::gather, m)?)?;
    m.add_function(wrap_pyfunction!(host::gather_to_files, m)?)?;
    m.add_function(wrap_pyfunction!(host::check_name, m)?)?;
    m.add_function(wrap_pyfunction!(order::shard_order, m)?)?;
    m.add_function(wrap_pyfunction!(order::kept_rows, m)?)?;
    m.add_function(wrap_pyfunction!(shards::check_shards, m)?)?;
    m.add_function(wrap_pyfunction!(shards::merge_shards, m)?)?;
    m.add_function(wrap_pyfunction!(shards::shard_world_size, m)?)?;
    m.add_function(wrap_pyfunction!(cuda_compiled, m)?)?;
    #[cfg(feature = "cuda")]
    {
        m.add_function(wrap_pyfunction!(cuda::cuda_status, m)?)?;
        m.add_function(wrap_pyfunction!(cuda::cuda_gather, m)?)?;
        m.add_function(wrap_pyfunction!(cuda::cuda_drain, m)?)?;
    }
    m.add("__version__", env!("CARGO_PKG_VERSION"))?;
    Ok(())
}
