//! Shard folders of a distributed run (`arraydrain convert --distributed`), read back through
//! the engine's own check and merge, so Python applies exactly the checks `arraydrain merge`
//! does.

use std::path::PathBuf;

use arraydrain::shards::{self, MergeArgs};
use pyo3::prelude::*;

use crate::errors::IntoPy;

/// The world size recorded in the shard folder `dir`'s manifest (read and validated, the parts
/// not looked at).
#[pyfunction]
pub fn shard_world_size(py: Python<'_>, dir: PathBuf) -> PyResult<usize> {
    py.detach(|| shards::Manifest::read(&dir))
        .py()
        .map(|m| m.world_size)
}

/// Checks the shard folder `dir` (every part present, finished, of this run, claimed once; every
/// file of the recorded size, CRC-32, dtype and shape) and returns its column names, each rank's
/// column files (`files[rank][column]`), the merged row count without and with the sampler's
/// padding.
#[pyfunction]
#[allow(clippy::type_complexity)]
pub fn check_shards(
    py: Python<'_>,
    dir: PathBuf,
) -> PyResult<(Vec<String>, Vec<Vec<PathBuf>>, usize, usize)> {
    let set = py.detach(|| shards::check(&dir)).py()?;
    let m = &set.manifest;
    let names = m.columns.iter().map(|c| c.name.clone()).collect();
    let files = m
        .parts
        .iter()
        .map(|p| p.files.iter().map(|f| dir.join(f)).collect())
        .collect();
    Ok((names, files, m.merged_rows, m.rows_with_padding))
}

/// Merges the shard folder `dir` into `out_dir/COLUMN.npy` in the global sampler order (the
/// padding dropped unless `keep_padding`), after the same checks as [`check_shards`]; nothing
/// is written when they fail. Returns each column's name and file.
#[pyfunction]
#[pyo3(signature = (dir, out_dir, keep_padding=false))]
pub fn merge_shards(
    py: Python<'_>,
    dir: PathBuf,
    out_dir: PathBuf,
    keep_padding: bool,
) -> PyResult<Vec<(String, PathBuf)>> {
    let args = MergeArgs {
        dir,
        out: None,
        out_dir: Some(out_dir),
        mmap: false,
        keep_padding,
    };
    let (manifest, summary) = py
        .detach(|| -> arraydrain::Result<_> {
            let manifest = shards::Manifest::read(&args.dir)?;
            Ok((manifest, shards::merge(&args)?))
        })
        .py()?;
    // `merge` writes one file per manifest column, in the manifest's order.
    Ok(manifest
        .columns
        .into_iter()
        .map(|c| c.name)
        .zip(summary.outputs)
        .collect())
}
