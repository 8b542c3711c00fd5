//! `arraydrain._native.Writer`: the library's [`arraydrain::Writer`] for the Python package
//! (`arraydrain/_writer.py` flattens batches into columns and names them). Every batch arrives
//! as one C-contiguous `uint8` array `(rows, row_bytes)` per column; the copy into the ring runs
//! with the GIL released, and the library's background thread moves it to the destination.

use std::path::PathBuf;

use arraydrain::launcher::{self, LauncherError};
use arraydrain::writer::Destination;
use arraydrain::{Error, Writer as Engine};
use numpy::{PyReadonlyArray1, PyReadonlyArray2};
use pyo3::prelude::*;

use crate::buffer::Buffer;
use crate::errors::{IntoPy, Kind};
use crate::host::layout;

/// Rows pushed batch by batch to their rows of one output (see `arraydrain.Writer`).
#[pyclass(module = "arraydrain._native")]
pub struct Writer {
    engine: Option<Engine>,
    row_bytes: Vec<usize>,
}

impl Writer {
    fn engine(&mut self) -> PyResult<&mut Engine> {
        self.engine
            .as_mut()
            .ok_or_else(|| Kind::Value.err("the writer is closed"))
    }
}

#[pymethods]
impl Writer {
    /// A writer of `rows` rows of `columns` `(name, engine dtype, row_shape)`: to memory
    /// (`path` None), or to `path` as `kind` `"npy"`, `"npz"` or `"dir"`.
    /// With `join`, writes into the output another writer of the run created (its
    /// `shared_path`) instead of creating one.
    #[new]
    #[pyo3(signature = (path, kind, rows, columns, ring_bytes, compress=false, join=None))]
    #[allow(clippy::too_many_arguments)]
    fn new(
        py: Python<'_>,
        path: Option<PathBuf>,
        kind: &str,
        rows: usize,
        columns: Vec<(String, String, Vec<usize>)>,
        ring_bytes: usize,
        compress: bool,
        join: Option<PathBuf>,
    ) -> PyResult<Self> {
        let destination = match (path, kind) {
            (None, _) => Destination::Memory,
            (Some(p), "npy") => Destination::Npy(p),
            (Some(path), "npz") => Destination::Npz { path, compress },
            (Some(p), "dir") => Destination::Dir(p),
            (Some(_), other) => {
                return Err(
                    Kind::Value.err(format!("kind {other:?}: expected 'npy', 'npz' or 'dir'"))
                )
            }
        };
        let mut b = Engine::builder(rows)
            .destination(destination)
            .ring_bytes(ring_bytes);
        for (name, dtype, shape) in columns {
            let (dtype, shape) = layout(Some(&dtype), &shape, 0)?;
            b = b.column(name, dtype, &shape);
        }
        if let Some(shared) = join {
            b = b.join(shared);
        }
        let engine = py.detach(|| b.open()).py()?;
        let row_bytes = engine
            .columns()
            .iter()
            .map(|c| c.row_shape.iter().product::<usize>() * c.dtype.size())
            .collect();
        Ok(Writer {
            engine: Some(engine),
            row_bytes,
        })
    }

    /// Writes `rows` rows (one `uint8` array `(rows, row_bytes)` per column) to the output rows
    /// `at` (`int64`), or appends them when `at` is None. Returns once the rows are in the ring.
    #[pyo3(signature = (arrays, rows, at=None))]
    fn write(
        &mut self,
        py: Python<'_>,
        arrays: Vec<PyReadonlyArray2<'_, u8>>,
        rows: usize,
        at: Option<PyReadonlyArray1<'_, i64>>,
    ) -> PyResult<()> {
        let mut slices = Vec::with_capacity(arrays.len());
        for a in &arrays {
            slices.push(
                a.as_slice()
                    .map_err(|_| Kind::Value.err("a column's bytes must be C-contiguous"))?,
            );
        }
        let at = match &at {
            None => None,
            Some(a) => {
                let a = a
                    .as_slice()
                    .map_err(|_| Kind::Value.err("at= must be C-contiguous"))?;
                let mut out = Vec::with_capacity(a.len());
                for (position, &i) in a.iter().enumerate() {
                    let Ok(i) = u64::try_from(i) else {
                        return Err(Kind::Index.err(format!(
                            "index {i} at position {position} of at= is negative"
                        )));
                    };
                    out.push(i);
                }
                Some(out)
            }
        };
        let engine = self.engine()?;
        py.detach(|| engine.write_bytes(rows, at.as_deref(), &slices))
            .py()
    }

    /// The temporary file or folder other writers of the run join (None in memory).
    #[getter]
    fn shared_path(&self) -> Option<PathBuf> {
        self.engine
            .as_ref()
            .and_then(|e| e.shared_path().map(PathBuf::from))
    }

    /// Waits for every row written so far to be in the destination's files; no more rows can
    /// be written afterwards.
    fn sync(&mut self, py: Python<'_>) -> PyResult<()> {
        let engine = self.engine()?;
        py.detach(|| engine.sync()).py()
    }

    /// The coverage bitmap as little-endian bytes (bit `i % 8` of byte `i / 8`: row `i`).
    fn coverage(&self) -> PyResult<Vec<u8>> {
        let engine = self
            .engine
            .as_ref()
            .ok_or_else(|| Kind::Value.err("the writer is closed"))?;
        Ok(engine
            .coverage()
            .iter()
            .flat_map(|w| w.to_le_bytes())
            .collect())
    }

    /// Distinct rows written so far.
    #[getter]
    fn rows_written(&self) -> usize {
        self.engine.as_ref().map_or(0, Engine::rows_written)
    }

    /// The first `limit` rows not written yet.
    fn missing_rows(&self, limit: usize) -> Vec<usize> {
        self.engine
            .as_ref()
            .map_or_else(Vec::new, |e| e.missing_rows(limit))
    }

    /// Waits for every row to reach the destination, checks every row was written, and puts the
    /// output in place. Returns the columns as `uint8` arrays `(rows, row_bytes)` for a memory
    /// writer, None for files.
    /// `others`: the coverage bitmaps of the other writers of the run (see `coverage`), whose
    /// rows count as written too.
    #[pyo3(signature = (others=Vec::new()))]
    fn close(&mut self, py: Python<'_>, others: Vec<Vec<u8>>) -> PyResult<Option<Vec<Py<PyAny>>>> {
        let engine = self
            .engine
            .take()
            .ok_or_else(|| Kind::Value.err("the writer is closed"))?;
        let rows = engine.rows();
        let mut words = Vec::with_capacity(others.len());
        for o in &others {
            if o.len() % 8 != 0 {
                return Err(Kind::Value.err(format!(
                    "a coverage bitmap of {} bytes (whole 64-bit words expected)",
                    o.len()
                )));
            }
            words.push(
                o.chunks_exact(8)
                    .map(|c| u64::from_le_bytes(c.try_into().unwrap_or([0; 8])))
                    .collect::<Vec<u64>>(),
            );
        }
        let refs: Vec<&[u64]> = words.iter().map(Vec::as_slice).collect();
        let written = py.detach(|| engine.close_with(&refs)).py()?;
        let Some(memory) = written.memory else {
            return Ok(None);
        };
        memory
            .into_columns()
            .into_iter()
            .zip(&self.row_bytes)
            .map(|(c, &rb)| Buffer::new(c, rows, rb).into_numpy(py))
            .collect::<PyResult<Vec<_>>>()
            .map(Some)
    }

    /// Drops the writer without committing: every temporary file is removed.
    fn abort(&mut self, py: Python<'_>) {
        if let Some(e) = self.engine.take() {
            py.detach(|| drop::<Engine>(e));
        }
    }
}

/// This process's `(rank, world size, where they came from)` under a launcher (torchrun, Slurm,
/// MPI), read by the library's launcher detection; None when no launcher's variables are set.
#[pyfunction]
pub fn launcher_placement() -> PyResult<Option<(usize, usize, String)>> {
    match launcher::detect(None, None) {
        Ok(p) => Ok(Some((p.rank, p.world_size, p.source.to_string()))),
        Err(Error::Launcher(LauncherError::NotDetected { .. })) => Ok(None),
        Err(e) => Err(crate::errors::to_py(e)),
    }
}
