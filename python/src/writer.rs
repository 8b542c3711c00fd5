//! `arraydrain._native.Writer`: the library's [`arraydrain::Writer`] for the Python package
//! (`arraydrain/_writer.py` flattens batches into columns and names them). Every batch arrives
//! as one C-contiguous `uint8` array `(rows, row_bytes)` per column; the copy into the ring runs
//! with the GIL released, and the library's background thread moves it to the destination.
//!
//! Batches in device memory (CUDA tensors) arrive as addresses ([`Writer::write_device`]): the
//! library's [`DeviceWriter`](arraydrain::cuda::DeviceWriter) copies them on the CUDA engine's
//! streams into pinned staging blocks, ordered after PyTorch's current stream by an event and
//! before its later work, and hands them to the writer once landed. Only tested under the CUDA
//! driver simulator here (python/tests/test_writer_cuda_sim.py).

use std::path::PathBuf;

use arraydrain::launcher::{self, LauncherError};
use arraydrain::writer::Destination;
use arraydrain::{Error, Writer as Engine};
use numpy::{PyReadonlyArray1, PyReadonlyArray2};
use pyo3::prelude::*;

use arraydrain::cuda::{DeviceWriter, WriteSource};

use crate::buffer::Buffer;
use crate::errors::{IntoPy, Kind};
use crate::host::layout;

/// Rows pushed batch by batch to their rows of one output (see `arraydrain.Writer`).
#[pyclass(module = "arraydrain._native")]
pub struct Writer {
    engine: Option<Engine>,
    /// The writer while device batches go through the CUDA engine (`engine` is then `None`).
    device: Option<DeviceWriter>,
    row_bytes: Vec<usize>,
    /// Pinned staging memory of the device writer.
    ring_bytes: usize,
}

impl Writer {
    /// The writer, after every device batch in flight has been handed to it (waited for with
    /// the GIL released): host writes, syncs and closes come after the device batches before
    /// them.
    fn engine(&mut self, py: Python<'_>) -> PyResult<&mut Engine> {
        if let Some(d) = self.device.take() {
            self.engine = Some(py.detach(|| d.into_writer()).py()?);
        }
        self.engine
            .as_mut()
            .ok_or_else(|| Kind::Value.err("the writer is closed"))
    }

    /// The writer as it is now (rows of device batches in flight not counted yet).
    fn current(&self) -> Option<&Engine> {
        if let Some(d) = &self.device {
            return Some(d.writer());
        }
        self.engine.as_ref()
    }
}

/// `at=` as row indices, refusing negative ones.
fn indices(at: Option<&PyReadonlyArray1<'_, i64>>) -> PyResult<Option<Vec<u64>>> {
    let Some(a) = at else {
        return Ok(None);
    };
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
    Ok(Some(out))
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
            device: None,
            row_bytes,
            ring_bytes,
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
        let at = indices(at.as_ref())?;
        let engine = self.engine(py)?;
        py.detach(|| engine.write_bytes(rows, at.as_deref(), &slices))
            .py()
    }

    /// Queues the copy of `rows` rows from device `ordinal` (see `arraydrain.cuda`'s
    /// `DeviceWriter`): column `c` is `nbytes[c]` bytes at device address `ptrs[c]`, or, where
    /// `host[c]` is an array, those host bytes (`uint8` `(rows, row_bytes)`); to the output rows
    /// `at` (`int64`), or appended when `at` is None. `producer_stream` is the raw `CUstream` of
    /// the stream the device columns were written on (PyTorch's current stream): the copies wait
    /// for the work queued on it so far, and its later work waits for the copies, so the device
    /// memory may be reused as soon as this returns. Returns without waiting for the copies
    /// (unless the staging pool, `ring_bytes` of pinned memory, is full); the GIL is released
    /// meanwhile. Without the engine's CUDA backend: a `DrainRuntimeError`.
    #[pyo3(signature = (ordinal, ptrs, nbytes, host, rows, producer_stream, at=None))]
    #[allow(clippy::too_many_arguments)]
    fn write_device(
        &mut self,
        py: Python<'_>,
        ordinal: usize,
        ptrs: Vec<u64>,
        nbytes: Vec<usize>,
        host: Vec<Option<PyReadonlyArray2<'_, u8>>>,
        rows: usize,
        producer_stream: usize,
        at: Option<PyReadonlyArray1<'_, i64>>,
    ) -> PyResult<()> {
        if ptrs.len() != nbytes.len() || ptrs.len() != host.len() {
            return Err(Kind::Value.err(format!(
                "{} addresses, {} lengths and {} host entries: one of each per column",
                ptrs.len(),
                nbytes.len(),
                host.len()
            )));
        }
        let mut host_bytes = Vec::with_capacity(host.len());
        for h in &host {
            host_bytes.push(match h {
                Some(a) => Some(
                    a.as_slice()
                        .map_err(|_| Kind::Value.err("a column's bytes must be C-contiguous"))?,
                ),
                None => None,
            });
        }
        let sources: Vec<WriteSource<'_>> = ptrs
            .iter()
            .zip(&nbytes)
            .zip(&host_bytes)
            .map(|((&ptr, &bytes), h)| match h {
                Some(b) => WriteSource::Host(b),
                None => WriteSource::Device { ptr, bytes },
            })
            .collect();
        let at = indices(at.as_ref())?;
        if let Some(d) = &self.device {
            let on = d.engine().info().ordinal;
            if on != ordinal {
                return Err(Kind::Value.err(format!(
                    "a batch on cuda:{ordinal}, but this writer's device batches are on cuda:{on}; \
                     write each device's batches to a writer of its own"
                )));
            }
        } else {
            if self.engine.is_none() {
                return Err(Kind::Value.err("the writer is closed"));
            }
            // The engine first, the writer untouched if it cannot start.
            #[cfg(feature = "cuda")]
            let cuda = py
                .detach(|| {
                    let _current = arraydrain::cuda::ContextGuard::save();
                    crate::cuda::engine(ordinal)
                })
                .py()?;
            #[cfg(not(feature = "cuda"))]
            let cuda = std::sync::Arc::new(arraydrain::cuda::CudaEngine::new(ordinal).py()?);
            let writer = self
                .engine
                .take()
                .ok_or_else(|| Kind::Value.err("the writer is closed"))?;
            let ring = self.ring_bytes;
            // On failure (no stream could be made) the writer is dropped: its files are removed.
            self.device = Some(py.detach(|| DeviceWriter::new(cuda, writer, ring)).py()?);
        }
        let Some(device) = self.device.as_mut() else {
            return Err(Kind::Value.err("the writer is closed"));
        };
        py.detach(|| device.write_device(at.as_deref(), &sources, rows, producer_stream))
            .py()
    }

    /// Parts of device batches whose copies were queued and not yet handed to the writer.
    #[getter]
    fn device_pending(&self) -> usize {
        self.device.as_ref().map_or(0, DeviceWriter::pending_parts)
    }

    /// Waits for every device batch in flight and hands it to the writer.
    fn flush_device(&mut self, py: Python<'_>) -> PyResult<()> {
        self.engine(py).map(|_| ())
    }

    /// The temporary file or folder other writers of the run join (None in memory).
    #[getter]
    fn shared_path(&self) -> Option<PathBuf> {
        self.current()
            .and_then(|e| e.shared_path().map(PathBuf::from))
    }

    /// Waits for every row written so far to be in the destination's files; no more rows can
    /// be written afterwards.
    fn sync(&mut self, py: Python<'_>) -> PyResult<()> {
        let engine = self.engine(py)?;
        py.detach(|| engine.sync()).py()
    }

    /// The coverage bitmap as little-endian bytes (bit `i % 8` of byte `i / 8`: row `i`).
    fn coverage(&mut self, py: Python<'_>) -> PyResult<Vec<u8>> {
        let engine = self.engine(py)?;
        Ok(engine
            .coverage()
            .iter()
            .flat_map(|w| w.to_le_bytes())
            .collect())
    }

    /// Distinct rows written so far.
    #[getter]
    fn rows_written(&self) -> usize {
        self.current().map_or(0, Engine::rows_written)
    }

    /// The first `limit` rows not written yet.
    fn missing_rows(&self, limit: usize) -> Vec<usize> {
        self.current()
            .map_or_else(Vec::new, |e| e.missing_rows(limit))
    }

    /// Waits for every row to reach the destination, checks every row was written, and puts the
    /// output in place. Returns the columns as `uint8` arrays `(rows, row_bytes)` for a memory
    /// writer, None for files.
    /// `others`: the coverage bitmaps of the other writers of the run (see `coverage`), whose
    /// rows count as written too.
    #[pyo3(signature = (others=Vec::new()))]
    fn close(&mut self, py: Python<'_>, others: Vec<Vec<u8>>) -> PyResult<Option<Vec<Py<PyAny>>>> {
        self.engine(py)?;
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
    // Without the CUDA backend no `DeviceWriter` can exist, and its stand-in has no `Drop`.
    #[cfg_attr(not(feature = "cuda"), allow(clippy::drop_non_drop))]
    fn abort(&mut self, py: Python<'_>) {
        // Device batches in flight are waited for (not written) before their staging memory
        // is released.
        if let Some(d) = self.device.take() {
            py.detach(|| drop::<DeviceWriter>(d));
        }
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
