//! The CUDA side (compiled with the `cuda` feature; no GPU was available where this was
//! written: it is built and linted, and run by python/tests/test_cuda_sim.py under the CUDA
//! driver simulator, without PyTorch's CUDA).
//!
//! CUDA tensors are read in place: the Python package hands over each (contiguous) tensor's
//! device address, its row layout, the raw handle of PyTorch's current stream on its device
//! (the stream it was produced on) and the tensor itself; [`CudaEngine::borrow_column`] checks
//! the address with the driver (device, context, allocation bounds), records an event on that
//! stream for the engine's streams to wait on, and keeps the tensor referenced for as long as
//! the column lives, so PyTorch cannot free or reuse its memory while the engine reads it. The
//! engine never frees it. The `Pinned` strategy then gathers with its kernel and copies
//! asynchronously into pinned host output, which the returned arrays own.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock};

use arraydrain::cuda::{ContextGuard, CudaEngine, DeviceBatch, DeviceColumn};
use arraydrain::{
    Batches, ColumnArray, Error, Indices, Materialized, Order, StorageKind, Strategy,
};
use numpy::{PyReadonlyArray1, PyReadwriteArray2};
use pyo3::prelude::*;
use pyo3::types::PyIterator;

use crate::buffer::Buffer;
use crate::errors::{to_py, IntoPy};
use crate::host::{self, call_progress, Meta};
use arraydrain::cuda::CudaError;

/// One engine per device, opened on first use and kept for the process (its pinned pool makes
/// repeated drains of the same size cheap).
pub(crate) fn engine(ordinal: usize) -> Result<Arc<CudaEngine>, Error> {
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

/// A CUDA tensor lent to the engine, as the Python package describes it: name, the tensor (kept
/// referenced while the engine reads it), its device address, the raw handle of the stream it
/// was produced on, dtype name (or `None`), row shape, row bytes, rows.
type DeviceSpec = (
    String,
    Py<PyAny>,
    u64,
    usize,
    Option<String>,
    Vec<usize>,
    usize,
    usize,
);

/// One column of a general-path CUDA batch: the tensor, its device address, the raw handle of
/// the stream it was produced on, rows.
type DevicePart = (Py<PyAny>, u64, usize, usize);

fn metas(specs: &[DeviceSpec]) -> PyResult<Vec<Meta>> {
    specs
        .iter()
        .map(|(name, _, _, _, dtype, row_shape, row_bytes, rows)| {
            host::meta(name, dtype.as_deref(), row_shape, *row_bytes, *rows)
        })
        .collect()
}

/// Lends a tensor's memory to the engine as a column of `rows` rows: `ptr` is the address of the
/// contiguous bytes (`rows × meta.row_bytes`) of the tensor `owner`, which PyTorch keeps
/// allocated while `owner` is referenced (the column holds it); `stream` is PyTorch's current
/// stream on the tensor's device, on which the tensor was produced (see
/// [`CudaEngine::borrow_column`]).
fn lend(
    engine: &CudaEngine,
    meta: &Meta,
    rows: usize,
    ptr: u64,
    stream: usize,
    owner: Py<PyAny>,
) -> Result<DeviceColumn, Error> {
    engine.borrow_column(
        meta.name.as_str(),
        meta.dtype.clone(),
        &meta.row_shape,
        rows,
        ptr,
        stream,
        owner,
    )
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
    let lent: Vec<(Meta, u64, usize, Py<PyAny>)> = sources
        .iter()
        .zip(&metas)
        .map(|((_, owner, ptr, stream, ..), m)| (m.clone(), *ptr, *stream, owner.clone_ref(py)))
        .collect();
    // Lent inside the calls below, with the GIL released; `sources` keeps every tensor
    // referenced until this function returns, after the engine's last read.
    let columns = move |engine: &CudaEngine| -> Result<Vec<DeviceColumn>, Error> {
        lent.into_iter()
            // The Python package passes each tensor's own contiguous bytes
            // (`_cuda._device_source`), made on PyTorch's current stream of its device, and
            // the tensor itself, which the column keeps referenced.
            .map(|(m, ptr, stream, owner)| lend(engine, &m, m.rows, ptr, stream, owner))
            .collect()
    };
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
                let table = engine.wrap(columns(&engine)?)?;
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
        let table = engine.wrap(columns(&engine)?)?;
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
                    arraydrain::memory::par_copy(c.as_bytes(), d);
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
/// `(tensor, address, stream, rows)`, one per column of `columns` `(name, dtype or None,
/// row_shape, row_bytes)`, the tensor contiguous on device `ordinal` and produced on the stream
/// whose raw handle is given — with the engine's device drain (asynchronous device-to-host
/// copies into pinned output, each batch read in place and released once its copy has landed).
/// The GIL is released while the engine runs and waits; it is taken back only to pull the next
/// batch. With `rows` exact, more or fewer rows is an error; with `rows` a hint, the output is
/// allocated for it up front and grows or shrinks to what the stream yields.
#[pyfunction]
#[pyo3(signature = (ordinal, columns, rows, batches, exact=true))]
pub fn cuda_drain(
    py: Python<'_>,
    ordinal: usize,
    columns: Vec<(String, Option<String>, Vec<usize>, usize)>,
    rows: Option<usize>,
    batches: Bound<'_, PyAny>,
    exact: bool,
) -> PyResult<Vec<Py<PyAny>>> {
    let metas = columns
        .iter()
        .map(|(name, dtype, row_shape, row_bytes)| {
            host::meta(name, dtype.as_deref(), row_shape, *row_bytes, 0)
        })
        .collect::<PyResult<Vec<_>>>()?;
    let iter: Py<PyIterator> = batches.try_iter()?.unbind();
    let failed: Mutex<Option<PyErr>> = Mutex::new(None);
    let result = py.detach(|| -> Result<arraydrain::Materialized, Error> {
        // The caller's current context comes back when this returns, whatever happened.
        let _current = ContextGuard::save();
        let engine = engine(ordinal)?;
        let source_error = |e: PyErr| {
            let message = e.to_string();
            *failed.lock().unwrap_or_else(|p| p.into_inner()) = Some(e);
            Error::Cuda(CudaError::Driver {
                context: "reading a batch".into(),
                message,
            })
        };
        let next = |k: usize| -> Option<Result<DeviceBatch, Error>> {
            // The GIL only to pull the batch and read its parts; the tensors are lent with it
            // released again.
            let parts = Python::attach(|py| -> Option<Result<Vec<DevicePart>, Error>> {
                let item = iter.bind(py).clone().next()?;
                Some(
                    item.and_then(|i| i.extract::<Vec<DevicePart>>())
                        .map_err(source_error),
                )
            })?;
            let parts = match parts {
                Ok(p) => p,
                Err(e) => return Some(Err(e)),
            };
            Some((|| {
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
                // The Python package passes each batch tensor's own contiguous bytes
                // (`_cuda._device_batches`), produced on PyTorch's current stream of its
                // device, and the tensor, which the column keeps referenced until the engine
                // releases the batch after its copy has landed.
                for ((owner, ptr, stream, n), m) in parts.into_iter().zip(&metas) {
                    batch.push(lend(&engine, m, n, ptr, stream, owner)?)?;
                }
                Ok(batch)
            })())
        };
        let mut k = 0usize;
        let stream = std::iter::from_fn(|| {
            let b = next(k);
            k += 1;
            b
        });
        match (rows, exact) {
            (Some(d), false) => engine.drain_device_expecting(stream, d),
            (rows, _) => engine.drain_device(stream, rows),
        }
    });
    if let Some(e) = failed.into_inner().unwrap_or_else(|p| p.into_inner()) {
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
