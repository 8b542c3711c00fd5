//! Shard folders of a distributed run (`arraydrain convert --distributed`), read back through
//! the engine's own check and merge, so Python applies exactly the checks `arraydrain merge`
//! does. Files are handed to Python as open file descriptors of the very files that were checked
//! (or written), never as paths to reopen: a folder swapped in between cannot change what is
//! read.

use std::os::fd::{IntoRawFd, RawFd};
use std::path::PathBuf;

use arraydrain::shards::{self, MergeOptions};
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

/// Duplicates the descriptor of `file` (checked at `path`) for Python, which then owns and
/// closes it.
fn give(file: &std::fs::File, path: &std::path::Path) -> PyResult<RawFd> {
    file.try_clone()
        .map(IntoRawFd::into_raw_fd)
        .map_err(|source| {
            arraydrain::Error::File(arraydrain::FileError::Io {
                path: path.to_path_buf(),
                source,
            })
        })
        .py()
}

/// Checks the shard folder `dir` (every part present, finished, of this run, claimed once; every
/// file a regular file inside the folder of the recorded size, CRC-32, dtype and shape) and
/// returns its column names, each rank's column files as open file descriptors with the path
/// they were checked at (`fds[rank][column]`; the descriptors are owned by the caller, the paths
/// are for display only), the merged row count without and with the
/// sampler's padding.
#[pyfunction]
#[allow(clippy::type_complexity)]
pub fn check_shards(
    py: Python<'_>,
    dir: PathBuf,
) -> PyResult<(Vec<String>, Vec<Vec<(RawFd, PathBuf)>>, usize, usize)> {
    let set = py.detach(|| shards::check(&dir)).py()?;
    let m = &set.manifest;
    let names = m.columns.iter().map(|c| c.name.clone()).collect();
    let mut fds = Vec::new();
    for (rank, part) in set.files().iter().enumerate() {
        let paths = m.part(rank).files;
        fds.push(
            part.iter()
                .zip(paths)
                .map(|(f, p)| {
                    let path = dir.join(p);
                    Ok((give(f, &path)?, path))
                })
                .collect::<PyResult<Vec<_>>>()?,
        );
    }
    Ok((names, fds, m.merged_rows, m.rows_with_padding))
}

/// Merges the shard folder `dir` into `out_dir/COLUMN.npy` in the global sampler order (the
/// padding dropped unless `keep_padding`), after the same checks as [`check_shards`]; nothing
/// is written when they fail. Returns each column's name, its written file as an open file
/// descriptor (owned by the caller) and that file's path (for display).
#[pyfunction]
#[pyo3(signature = (dir, out_dir, keep_padding=false))]
pub fn merge_shards(
    py: Python<'_>,
    dir: PathBuf,
    out_dir: PathBuf,
    keep_padding: bool,
) -> PyResult<Vec<(String, RawFd, PathBuf)>> {
    let args = MergeOptions {
        dir,
        out: None,
        out_dir: Some(out_dir),
        mmap: false,
        keep_padding,
    };
    let (summary, files) = py.detach(|| shards::merge_open(&args)).py()?;
    // `merge` writes `NAME.npy` for each manifest column, in the manifest's order (names are
    // plain UTF-8 file names: the manifest was checked).
    Ok(summary
        .outputs
        .into_iter()
        .zip(files)
        .map(|(p, f)| {
            let name = p
                .file_stem()
                .map_or_else(String::new, |s| s.to_string_lossy().into_owned());
            (name, f.into_raw_fd(), p)
        })
        .collect())
}
