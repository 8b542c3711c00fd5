//! The CUDA side (compiled with the `cuda` feature; no GPU was available where this was
//! written, so it is built and linted but not run by the CPU-only test suite).
//!
//! CUDA tensors reach the engine without any unsafe code here: the engine allocates a device
//! buffer of its own ([`DeviceBuffer`], a `CudaSlice<u8>` on its stream), PyTorch sees it
//! through `__cuda_array_interface__` and copies the tensor's bytes into it (a device-to-device
//! copy, which also makes non-contiguous tensors contiguous), and the buffer becomes a
//! [`DeviceColumn`] of a table made by [`CudaEngine::wrap`]. The engine's `Pinned` strategy
//! then gathers with its kernel and copies asynchronously into pinned host output, which the
//! returned arrays own. The cost of this route is one device copy of the columns read.

use arraydrain::TableError;
use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock};

use arraydrain::cuda::cudarc::driver::{CudaSlice, DevicePtr};
use arraydrain::cuda::{drop_in_context, ContextGuard, CudaEngine, DeviceBatch, DeviceColumn};
use arraydrain::{
    Batches, ColumnArray, Error, Indices, Materialized, Order, StorageKind, Strategy,
};
use numpy::{PyReadonlyArray1, PyReadwriteArray2};
use pyo3::prelude::*;
use pyo3::types::PyDict;

use crate::buffer::Buffer;
use crate::errors::{to_py, IntoPy};
use crate::host::{self, call_progress, Meta};
use arraydrain::cuda::CudaError;

/// One engine per device, opened on first use and kept for the process (its pinned pool makes
/// repeated drains of the same size cheap).
fn engine(ordinal: usize) -> Result<Arc<CudaEngine>, Error> {
    static ENGINES: OnceLock<Mutex<HashMap<usize, Arc<CudaEngine>>>> = OnceLock::new();
    let engines = ENGINES.get_or_init(|| Mutex::new(HashMap::new()));
    let mut map = engines.lock().unwrap_or_else(|p| p.into_inner());
    if let Some(e) = map.get(&ordinal) {
        return Ok(Arc::clone(e));
    }
    let e = Arc::new(CudaEngine::new(ordinal)?);
    map.insert(ordinal, Arc::clone(&e));
    Ok(e)
}

/// Whether the engine can run on device `ordinal`, and if not, why.
#[pyfunction]
pub fn cuda_status(py: Python<'_>, ordinal: usize) -> (bool, String) {
    match py.detach(|| {
        let _current = ContextGuard::save();
        engine(ordinal)
    }) {
        Ok(e) => (true, e.info().to_string()),
        Err(e) => (false, e.to_string()),
    }
}

/// A device buffer the engine owns, writable by PyTorch through `__cuda_array_interface__`,
/// then handed to the engine as a column (once).
#[pyclass(module = "arraydrain._native", frozen)]
pub struct DeviceBuffer {
    slice: Mutex<Option<CudaSlice<u8>>>,
    address: u64,
    len: usize,
    ordinal: usize,
}

#[pymethods]
impl DeviceBuffer {
    /// `len` zeroed bytes on device `ordinal`, ready (the allocation has completed) on return.
    #[new]
    fn new(py: Python<'_>, len: usize, ordinal: usize) -> PyResult<Self> {
        py.detach(|| -> Result<DeviceBuffer, Error> {
            let _current = ContextGuard::save();
            let engine = engine(ordinal)?;
            let stream = engine.stream();
            let cuda = |context: &str| {
                let context = context.to_string();
                move |e: arraydrain::cuda::cudarc::driver::DriverError| {
                    Error::Cuda(CudaError::Driver {
                        context,
                        message: e.to_string(),
                    })
                }
            };
            // One byte at least: a zero-length allocation has no address to describe.
            let slice = stream
                .alloc_zeros::<u8>(len.max(1))
                .map_err(cuda("allocating a device buffer"))?;
            let address = {
                let (ptr, _sync) = slice.device_ptr(stream);
                ptr
            };
            stream
                .synchronize()
                .map_err(cuda("waiting for a device allocation"))?;
            Ok(DeviceBuffer {
                slice: Mutex::new(Some(slice)),
                address,
                len,
                ordinal,
            })
        })
        .py()
    }

    /// The CUDA array interface (version 3): `len` writable `uint8` at the buffer's address,
    /// ready to use on any stream. Once the buffer has been handed to the engine (its memory
    /// moved out, and freed when the engine is done with it) there is no address to advertise:
    /// reading the attribute then raises `AttributeError`, so nothing can write to freed memory.
    #[getter]
    fn __cuda_array_interface__<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        if self
            .slice
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .is_none()
        {
            return Err(pyo3::exceptions::PyAttributeError::new_err(
                "this device buffer was handed to the engine: its memory is no longer the \
                 buffer's to describe",
            ));
        }
        let d = PyDict::new(py);
        d.set_item("version", 3)?;
        d.set_item("shape", (self.len,))?;
        d.set_item("typestr", "|u1")?;
        d.set_item("data", (self.address, false))?;
        d.set_item("strides", py.None())?;
        d.set_item("stream", py.None())?;
        Ok(d)
    }

    /// The device ordinal.
    #[getter]
    fn device(&self) -> usize {
        self.ordinal
    }
}

impl Drop for DeviceBuffer {
    fn drop(&mut self) {
        // cudarc frees a slice without making its context current: free it with its context
        // current, and the caller's (PyTorch's) context current again afterwards.
        let slice = self
            .slice
            .get_mut()
            .unwrap_or_else(|p| p.into_inner())
            .take();
        if let Some(slice) = slice {
            let ctx = std::sync::Arc::clone(slice.stream().context());
            drop_in_context(&ctx, slice);
        }
    }
}

impl DeviceBuffer {
    /// Moves the buffer out as a column of `rows` rows (`meta` gives dtype and row shape).
    fn take_column(&self, meta: &Meta, rows: usize) -> Result<DeviceColumn, Error> {
        let slice = self
            .slice
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take()
            .ok_or_else(|| {
                Error::Cuda(CudaError::Driver {
                    context: format!("column {:?}", meta.name),
                    message: "device buffer already handed to the engine".into(),
                })
            })?;
        let bytes = rows.checked_mul(meta.row_bytes).ok_or_else(|| {
            Error::Table(TableError::ByteLengthMismatch {
                column: meta.name.clone(),
                expected: usize::MAX,
                got: self.len,
            })
        })?;
        DeviceColumn::with_offset(
            meta.name.as_str(),
            meta.dtype.clone(),
            &meta.row_shape,
            rows,
            slice,
            0,
        )
        .and_then(|c| {
            if bytes == self.len {
                Ok(c)
            } else {
                Err(Error::Table(TableError::ByteLengthMismatch {
                    column: meta.name.clone(),
                    expected: bytes,
                    got: self.len,
                }))
            }
        })
    }
}

/// A device column as the Python package describes it: name, buffer, dtype name (or `None`),
/// row shape, row bytes, rows.
type DeviceSpec = (
    String,
    Py<DeviceBuffer>,
    Option<String>,
    Vec<usize>,
    usize,
    usize,
);

fn metas(specs: &[DeviceSpec]) -> PyResult<Vec<Meta>> {
    specs
        .iter()
        .map(|(name, _, dtype, row_shape, row_bytes, rows)| {
            host::meta(name, dtype.as_deref(), row_shape, *row_bytes, *rows)
        })
        .collect()
}

/// The fast path on the GPU: gathers rows `indices` (or `0..rows`) of device columns with the
/// engine's `Pinned` strategy (or a classic GPU recipe) into pinned host arrays, with the GIL
/// released.
///
/// With `out`: when every `out` array is exactly the pinned memory of a previous result (its
/// `owners[i]` is that result's [`Buffer`]), the engine refills that pinned memory in place
/// (`CudaEngine::materialize_into`, no new pinned allocation: the epoch case); otherwise the
/// result is gathered into new pinned memory and copied into the caller's arrays.
#[pyfunction]
#[pyo3(signature = (ordinal, sources, rows, indices, batch_size, strategy_name, out, progress, owners=None))]
#[allow(clippy::too_many_arguments)]
pub fn cuda_gather(
    py: Python<'_>,
    ordinal: usize,
    sources: Vec<DeviceSpec>,
    rows: usize,
    indices: Option<PyReadonlyArray1<'_, i64>>,
    batch_size: usize,
    strategy_name: &str,
    out: Option<Vec<PyReadwriteArray2<'_, u8>>>,
    progress: Option<Py<PyAny>>,
    owners: Option<Vec<Option<Py<Buffer>>>>,
) -> PyResult<Option<Vec<Py<PyAny>>>> {
    let strategy = host::strategy(strategy_name)?;
    let list = host::order(indices.as_ref())?;
    let metas = metas(&sources)?;
    let mut columns = Vec::with_capacity(sources.len());
    for ((_, buf, ..), m) in sources.iter().zip(&metas) {
        columns.push(buf.get().take_column(m, m.rows).py()?);
    }
    let n = list.as_ref().map_or(rows, |l| l.len());
    let order = move |table_rows: usize| -> Result<Indices, Error> {
        match list {
            Some(l) => Indices::resolve(&Order::Indices(l), None, false, table_rows),
            None => Ok(Indices::Range {
                start: 0,
                end: rows,
            }),
        }
    };
    let Some(mut out) = out else {
        let result = py
            .detach(|| -> Result<Vec<ColumnArray>, Error> {
                let _current = ContextGuard::save();
                let engine = engine(ordinal)?;
                let table = engine.wrap(columns)?;
                let batches = Batches::new(order(table.rows())?, batch_size.max(1), false)?;
                Ok(engine
                    .materialize(&table, &batches, strategy)?
                    .into_columns())
            })
            .py()?;
        if let Some(cb) = &progress {
            call_progress(cb, n);
        }
        let arrays = result
            .into_iter()
            .zip(&metas)
            .map(|(c, m)| {
                let rows = c.rows();
                Buffer::new(c, rows, m.row_bytes).into_numpy(py)
            })
            .collect::<PyResult<Vec<_>>>()?;
        return Ok(Some(arrays));
    };
    // Validates `out` (the slices end here: a lent buffer is written by the engine alone).
    let extents: Vec<(usize, usize)> = host::out_slices(&mut out, &metas, n, &[])?
        .iter()
        .map(|d| (d.as_ptr() as usize, d.len()))
        .collect();
    let owners: Vec<Py<Buffer>> = owners.unwrap_or_default().into_iter().flatten().collect();
    // Refilling in place is the pinned pipeline's; a classic recipe asked for runs as asked.
    let lent = if matches!(strategy, Strategy::Auto | Strategy::Pinned) {
        lend_pinned(&owners, &extents)
    } else {
        None
    };
    let mut dsts = match lent {
        Some(_) => Vec::new(),
        None => host::out_slices(&mut out, &metas, n, &[])?,
    };
    py.detach(|| -> Result<(), Error> {
        let _current = ContextGuard::save();
        let engine = engine(ordinal)?;
        let table = engine.wrap(columns)?;
        let batches = Batches::new(order(table.rows())?, batch_size.max(1), false)?;
        match lent {
            Some(lent) => {
                let mut target = Materialized::from_columns(lent);
                let done = engine.materialize_into(&table, &batches, &mut target);
                // The columns go back to their owners whatever happened.
                for (c, o) in target.into_columns().into_iter().zip(&owners) {
                    o.get().restore(c);
                }
                done.map(|_| ())
            }
            None => {
                let fresh = engine.materialize(&table, &batches, strategy)?;
                for (c, d) in fresh.columns().iter().zip(dsts.iter_mut()) {
                    arraydrain::gather::cpu::par_copy(c.as_bytes(), d);
                }
                Ok(())
            }
        }
    })
    .py()?;
    if let Some(cb) = &progress {
        call_progress(cb, n);
    }
    Ok(None)
}

/// The pinned columns behind `out` when every `out` array (address, length) is exactly one
/// owner's whole pinned buffer (lent out of the owners, to be restored); `None` (nothing lent) otherwise.
fn lend_pinned(owners: &[Py<Buffer>], extents: &[(usize, usize)]) -> Option<Vec<ColumnArray>> {
    if owners.len() != extents.len() {
        return None;
    }
    let fits = owners.iter().zip(extents).all(|(o, &e)| {
        let b = o.get();
        b.kind() == StorageKind::Pinned && b.extent() == e
    });
    if !fits {
        return None;
    }
    let mut lent = Vec::with_capacity(owners.len());
    for o in owners {
        match o.get().lend() {
            Some(c) => lent.push(c),
            None => {
                // Lent elsewhere (a concurrent drain into the same arrays): give back, copy.
                for (c, o) in lent.into_iter().zip(owners) {
                    o.get().restore(c);
                }
                return None;
            }
        }
    }
    Some(lent)
}

/// The general path's CUDA batches: drains an iterator of batches — each a list of
/// `(DeviceBuffer, rows)`, one per column of `columns` `(name, dtype or None, row_shape,
/// row_bytes)` — with the engine's `drain_device` (asynchronous device-to-host copies into
/// pinned output). With `rows` declared, more or fewer rows is an error.
#[pyfunction]
#[pyo3(signature = (ordinal, columns, rows, batches))]
pub fn cuda_drain(
    py: Python<'_>,
    ordinal: usize,
    columns: Vec<(String, Option<String>, Vec<usize>, usize)>,
    rows: Option<usize>,
    batches: Bound<'_, PyAny>,
) -> PyResult<Vec<Py<PyAny>>> {
    let metas = columns
        .iter()
        .map(|(name, dtype, row_shape, row_bytes)| {
            host::meta(name, dtype.as_deref(), row_shape, *row_bytes, 0)
        })
        .collect::<PyResult<Vec<_>>>()?;
    // The caller's current context comes back when this returns, whatever happened.
    let _current = ContextGuard::save();
    let engine = py.detach(|| engine(ordinal)).py()?;
    let mut failed: Option<PyErr> = None;
    let iter = batches.try_iter()?;
    let stream = iter
        .enumerate()
        .map(|(k, item)| -> Result<DeviceBatch, Error> {
            let source_error = |e: PyErr, failed: &mut Option<PyErr>| {
                let message = e.to_string();
                *failed = Some(e);
                Error::Cuda(CudaError::Driver {
                    context: "reading a batch".into(),
                    message,
                })
            };
            let item = item.map_err(|e| source_error(e, &mut failed))?;
            let parts: Vec<(Py<DeviceBuffer>, usize)> =
                item.extract().map_err(|e| source_error(e, &mut failed))?;
            if parts.len() != metas.len() {
                return Err(Error::BatchMismatch {
                    batch: k,
                    column: String::new(),
                    reason: format!(
                        "{} columns, the first batch had {}",
                        parts.len(),
                        metas.len()
                    ),
                });
            }
            let mut batch = DeviceBatch::new();
            for ((buf, n), m) in parts.iter().zip(&metas) {
                batch.push(buf.get().take_column(m, *n)?)?;
            }
            Ok(batch)
        });
    let result = engine.drain_device(stream, rows);
    if let Some(e) = failed {
        return Err(e);
    }
    let out = result.map_err(to_py)?;
    out.into_columns()
        .into_iter()
        .zip(&metas)
        .map(|(c, m)| {
            let rows = c.rows();
            Buffer::new(c, rows, m.row_bytes).into_numpy(py)
        })
        .collect()
}
