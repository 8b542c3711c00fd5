//! The index arithmetic of PyTorch's samplers, from the library: the package hands over the
//! order PyTorch drew (its permutation) and the shard, and the library's one checked
//! `DistributedSampler` and `drop_last` arithmetic cuts it.

use arraydrain::batch;
use arraydrain::sampler::Shard;
use numpy::{IntoPyArray, PyArray1, PyReadonlyArray1};
use pyo3::prelude::*;

use crate::errors::IntoPy;

/// Rank `rank`'s share of `order` (of `world_size` ranks), as `DistributedSampler` takes it:
/// padded by wrapping around to a multiple of the world size, or with `drop_last` cut to one,
/// then every `world_size`-th position from `rank`.
#[pyfunction]
#[pyo3(signature = (order, rank, world_size, drop_last))]
pub fn shard_order<'py>(
    py: Python<'py>,
    order: PyReadonlyArray1<'py, i64>,
    rank: usize,
    world_size: usize,
    drop_last: bool,
) -> PyResult<Bound<'py, PyArray1<i64>>> {
    let shard = Shard::new(rank, world_size).py()?;
    let taken = match order.as_slice() {
        Ok(values) => shard.take(values, drop_last),
        Err(_) => shard.take(&order.as_array().to_vec(), drop_last),
    }
    .py()?;
    Ok(taken.into_pyarray(py))
}

/// The rows left of `rows` in batches of `batch_size`: all of them, or with `drop_last` those
/// of the full batches only.
#[pyfunction]
pub fn kept_rows(rows: usize, batch_size: usize, drop_last: bool) -> PyResult<usize> {
    batch::kept_rows(rows, batch_size, drop_last).py()
}
