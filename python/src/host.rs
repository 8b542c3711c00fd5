//! The CPU side: the fast path's parallel gather from tensors read in place, the general path's
//! sink that copies batch after batch into preallocated output, and both into NumPy files.
//! Every copy runs with the GIL released.

use arraydrain::TableError;
use std::path::PathBuf;
use std::str::FromStr;
use std::sync::{Arc, Mutex};

use arraydrain::dtype::Opaque;
use arraydrain::fsafe::Staged;
use arraydrain::gather::gather_blocked;
use arraydrain::memory::par_copy;
use arraydrain::memory::HostBuf;
use arraydrain::npy::{self, MappedNpy, WriteOptions};
use arraydrain::{
    Column, ColumnArray, DType, Error, Indices, Loader, Order, Storage, Strategy, Table,
};
use numpy::{
    PyArrayMethods, PyReadonlyArray1, PyReadonlyArray2, PyReadwriteArray2, PyUntypedArrayMethods,
};
use pyo3::prelude::*;

use crate::buffer::Buffer;
use crate::errors::{to_py, IntoPy, Kind};

/// Bytes of output the sink lets a mapped file write back and release per step.
const BLOCK_BYTES: usize = 32 << 20;

/// One column as the Python package describes it: a name, its bytes as a C-contiguous `uint8`
/// array of shape `(rows, row_bytes)`, its engine dtype (see [`layout`]; `None`: opaque bytes)
/// and the shape of one row.
pub type Spec<'py> = (
    String,
    PyReadonlyArray2<'py, u8>,
    Option<String>,
    Vec<usize>,
);

/// A column's engine dtype and row shape: a numeric dtype by its engine name (`"f32"` …), an
/// opaque one by its NumPy descriptor literal (`"'<c8'"`, kept verbatim in files), or opaque
/// bytes (`None`).
pub fn layout(
    dtype: Option<&str>,
    row_shape: &[usize],
    row_bytes: usize,
) -> PyResult<(DType, Vec<usize>)> {
    match dtype {
        Some(name) => match DType::from_name(name) {
            Some(d) => Ok((d, row_shape.to_vec())),
            None => Ok((DType::Opaque(Opaque::new(name).py()?), row_shape.to_vec())),
        },
        None => Ok((DType::U8, vec![row_bytes])),
    }
}

/// The strategy named by the Python caller.
pub fn strategy(name: &str) -> PyResult<Strategy> {
    Strategy::from_str(name).map_err(|e| Kind::Value.err(e))
}

/// Resolves the Python caller's order: an `int64` index array (negative entries are an error;
/// entries past the data are checked by the engine), or `None` for rows `0..rows`.
pub fn order(indices: Option<&PyReadonlyArray1<'_, i64>>) -> PyResult<Option<Arc<[u64]>>> {
    let Some(indices) = indices else {
        return Ok(None);
    };
    let view = indices.as_array();
    let mut out = Vec::with_capacity(view.len());
    for (position, &i) in view.iter().enumerate() {
        let Ok(u) = u64::try_from(i) else {
            return Err(Kind::Index.err(format!(
                "index {i} at position {position} is negative (after wrapping negative indices once)"
            )));
        };
        out.push(u);
    }
    Ok(Some(out.into()))
}

/// A source column's layout, owned (usable with the GIL released).
#[derive(Clone)]
pub struct Meta {
    /// Column name (shown in errors, used for file names).
    pub name: String,
    /// Engine dtype (opaque `U8` for dtypes the engine has no name for).
    pub dtype: DType,
    /// Engine row shape (`[row_bytes]` for opaque columns).
    pub row_shape: Vec<usize>,
    /// Bytes per row.
    pub row_bytes: usize,
    /// Rows the source holds.
    pub rows: usize,
    /// Whether the dtype has an engine name (files need one).
    pub named: bool,
}

/// Reads the sources' layouts and borrows their bytes (C-contiguous, `rows × row_bytes`).
pub fn sources<'a>(specs: &'a [Spec<'_>]) -> PyResult<(Vec<Meta>, Vec<&'a [u8]>)> {
    let mut metas = Vec::with_capacity(specs.len());
    let mut bytes = Vec::with_capacity(specs.len());
    for (name, data, dtype, row_shape) in specs {
        let shape = data.shape();
        metas.push(meta(name, dtype.as_deref(), row_shape, shape[1], shape[0])?);
        bytes
            .push(data.as_slice().map_err(|_| {
                Kind::Value.err(format!("leaf '{name}': source is not contiguous"))
            })?);
    }
    Ok((metas, bytes))
}

/// A column's layout, checked: the row shape and dtype must make `row_bytes`.
pub fn meta(
    name: &str,
    dtype: Option<&str>,
    row_shape: &[usize],
    row_bytes: usize,
    rows: usize,
) -> PyResult<Meta> {
    let (d, rs) = layout(dtype, row_shape, row_bytes)?;
    let implied = rs.iter().try_fold(d.size(), |acc, &x| acc.checked_mul(x));
    if implied != Some(row_bytes) {
        return Err(Kind::Value.err(format!(
            "leaf '{name}': row shape {row_shape:?} of {d} is not {row_bytes} bytes"
        )));
    }
    Ok(Meta {
        name: name.to_string(),
        dtype: d,
        row_shape: rs,
        row_bytes,
        rows,
        named: dtype.is_some(),
    })
}

/// The engine table over the sources' first `rows` rows.
pub fn table<'a>(metas: &[Meta], bytes: &[&'a [u8]], rows: usize) -> Result<Table<'a>, Error> {
    let mut columns = Vec::with_capacity(metas.len());
    for (m, b) in metas.iter().zip(bytes) {
        if rows > m.rows {
            return Err(Error::Table(TableError::RowCountMismatch {
                column: m.name.clone(),
                expected: rows,
                got: m.rows,
            }));
        }
        columns.push(Column::from_bytes(
            m.name.as_str(),
            m.dtype.clone(),
            &m.row_shape,
            rows,
            &b[..rows * m.row_bytes],
        )?);
    }
    Table::new(columns)
}

/// Calls `progress(rows_done)` (with the GIL) as an engine drain proceeds.
fn with_progress<'t, 'a>(loader: Loader<'t, 'a>, progress: Option<Py<PyAny>>) -> Loader<'t, 'a> {
    match progress {
        Some(cb) => loader.on_progress(move |rows, _| call_progress(&cb, rows)),
        None => loader,
    }
}

/// Calls a Python progress callback with a count, taking the GIL for the call.
pub fn call_progress(cb: &Py<PyAny>, done: usize) {
    Python::attach(|py| {
        // A failing progress display must not fail the drain.
        let _ = cb.call1(py, (done,));
    })
}

/// Calls a Python progress callback with a count (taking the GIL): an ordinary exception from
/// it is ignored (a failing display must not fail the drain), but what stops a program —
/// `KeyboardInterrupt`, `SystemExit`, any `BaseException` that is not an `Exception` — stops
/// the drain.
fn call_progress_checked(cb: &Py<PyAny>, done: usize) -> PyResult<()> {
    Python::attach(|py| match cb.call1(py, (done,)) {
        Ok(_) => Ok(()),
        Err(e) if e.is_instance_of::<pyo3::exceptions::PyException>(py) => Ok(()),
        Err(e) => Err(e),
    })
}

/// The rows of the table an order reads: all of them for explicit indices, else the first
/// `rows` (a sequential order).
fn table_rows(metas: &[Meta], list: Option<&Arc<[u64]>>, rows: usize) -> usize {
    match list {
        Some(_) => metas.first().map_or(0, |m| m.rows),
        None => rows,
    }
}

/// Gathers rows `indices` (or `0..rows`) of every source column into new engine buffers, or
/// into `out`, with the GIL released.
///
/// Returns one `uint8` array of shape `(len(order), row_bytes)` per column, viewing engine
/// memory, or `None` after filling `out` in place.
#[pyfunction]
#[pyo3(signature = (sources, rows, indices, batch_size, strategy_name, out, progress))]
#[allow(clippy::too_many_arguments)]
pub fn gather(
    py: Python<'_>,
    sources: Vec<Spec<'_>>,
    rows: usize,
    indices: Option<PyReadonlyArray1<'_, i64>>,
    batch_size: usize,
    strategy_name: &str,
    out: Option<Vec<PyReadwriteArray2<'_, u8>>>,
    progress: Option<Py<PyAny>>,
) -> PyResult<Option<Vec<Py<PyAny>>>> {
    let strategy = strategy(strategy_name)?;
    let list = order(indices.as_ref())?;
    let (metas, bytes) = self::sources(&sources)?;
    let table_rows = table_rows(&metas, list.as_ref(), rows);
    let Some(mut out) = out else {
        if matches!(strategy, Strategy::Auto | Strategy::Preallocated) {
            return fresh_gather(py, &metas, &bytes, list, table_rows, rows, progress).map(Some);
        }
        // The classic recipes, kept for comparison, run whole in the engine.
        let columns = py
            .detach(|| -> Result<Vec<ColumnArray>, Error> {
                let table = table(&metas, &bytes, table_rows)?;
                let mut loader = Loader::new(&table).batch_size(batch_size.max(1));
                if let Some(list) = list {
                    loader = loader.indices(list);
                }
                let loader = with_progress(loader, progress);
                Ok(loader.materialize(strategy)?.into_columns())
            })
            .py()?;
        let arrays = columns
            .into_iter()
            .zip(&metas)
            .map(|(c, m)| {
                let rows = c.rows();
                Buffer::new(c, rows, m.row_bytes).into_numpy(py)
            })
            .collect::<PyResult<Vec<_>>>()?;
        return Ok(Some(arrays));
    };
    if !matches!(strategy, Strategy::Auto | Strategy::Preallocated) {
        return Err(Kind::Value.err(format!(
            "out= refills arrays in place with the preallocated gather; strategy {strategy} cannot"
        )));
    }
    let n = list.as_ref().map_or(rows, |l| l.len());
    let read: Vec<(usize, usize)> = sources
        .iter()
        .map(|s| (s.1.data() as usize, s.1.len()))
        .collect();
    let mut dsts = out_slices(&mut out, &metas, n, &read)?;
    py.detach(|| -> PyResult<()> {
        // The same checks as a fresh drain: columns share the rows read, indices are in range.
        let idx = resolve(&metas, &bytes, list.as_ref(), table_rows)?;
        let row_bytes: Vec<usize> = metas.iter().map(|m| m.row_bytes).collect();
        gather_into(&bytes, &row_bytes, &idx, &mut dsts, progress.as_ref())
    })?;
    Ok(None)
}

/// Checks the table (columns hold the rows read) and resolves the order against it (indices in
/// range).
fn resolve(
    metas: &[Meta],
    bytes: &[&[u8]],
    list: Option<&Arc<[u64]>>,
    table_rows: usize,
) -> PyResult<Indices> {
    let order = match list {
        Some(l) => Order::Indices(Arc::clone(l)),
        None => Order::Sequential,
    };
    table(metas, bytes, table_rows).py()?;
    Indices::resolve(&order, None, false, table_rows).py()
}

/// The preallocated gather into new engine buffers: zero-filled output (its pages untouched
/// until written), filled in blocks on all threads with the GIL released, with Python's signal
/// handlers run between blocks so that Ctrl-C stops a long drain.
fn fresh_gather(
    py: Python<'_>,
    metas: &[Meta],
    bytes: &[&[u8]],
    list: Option<Arc<[u64]>>,
    table_rows: usize,
    rows: usize,
    progress: Option<Py<PyAny>>,
) -> PyResult<Vec<Py<PyAny>>> {
    let n = list.as_ref().map_or(rows, |l| l.len());
    let columns = py.detach(|| -> PyResult<Vec<ColumnArray>> {
        let idx = resolve(metas, bytes, list.as_ref(), table_rows)?;
        let mut columns = metas
            .iter()
            .map(|m| ColumnArray::zeroed(m.name.as_str(), m.dtype.clone(), &m.row_shape, n))
            .collect::<Result<Vec<_>, Error>>()
            .py()?;
        let row_bytes: Vec<usize> = metas.iter().map(|m| m.row_bytes).collect();
        let mut dsts: Vec<&mut [u8]> = columns.iter_mut().map(|c| c.as_bytes_mut()).collect();
        gather_into(bytes, &row_bytes, &idx, &mut dsts, progress.as_ref())?;
        Ok(columns)
    })?;
    columns
        .into_iter()
        .zip(metas)
        .map(|(c, m)| Buffer::new(c, n, m.row_bytes).into_numpy(py))
        .collect()
}

/// Runs Python's pending signal handlers (taking the GIL): what they raise — `KeyboardInterrupt`
/// for Ctrl-C — stops a drain between two blocks.
fn check_signals() -> PyResult<()> {
    Python::attach(|py| py.check_signals())
}

/// Borrows `out=` arrays writably, checking count, shape `(rows, row_bytes)` and contiguity,
/// and that no two of them, and none of them and the memory `read` (address, length) during
/// the drain, overlap: a drain never writes where it reads.
pub fn out_slices<'a>(
    out: &'a mut [PyReadwriteArray2<'_, u8>],
    metas: &[Meta],
    rows: usize,
    read: &[(usize, usize)],
) -> PyResult<Vec<&'a mut [u8]>> {
    if out.len() != metas.len() {
        return Err(Kind::Value.err(format!(
            "out= has {} arrays, the drain yields {}",
            out.len(),
            metas.len()
        )));
    }
    let ranges: Vec<(usize, usize)> = out.iter().map(|o| (o.data() as usize, o.len())).collect();
    let overlap = |a: (usize, usize), b: (usize, usize)| {
        a.1 > 0 && b.1 > 0 && a.0 < b.0.saturating_add(b.1) && b.0 < a.0.saturating_add(a.1)
    };
    for (i, (&r, m)) in ranges.iter().zip(metas).enumerate() {
        if read.iter().any(|&s| overlap(r, s)) {
            return Err(Kind::Value.err(format!(
                "out= leaf '{}' overlaps the data being drained",
                m.name
            )));
        }
        if ranges[..i].iter().any(|&p| overlap(r, p)) {
            return Err(
                Kind::Value.err(format!("out= leaf '{}' overlaps another out= leaf", m.name))
            );
        }
    }
    let mut dsts = Vec::with_capacity(out.len());
    for (o, m) in out.iter_mut().zip(metas) {
        let shape = o.shape().to_vec();
        if shape != [rows, m.row_bytes] {
            return Err(Kind::Value.err(format!(
                "out= leaf '{}' holds {} rows of {} bytes; the drain yields {rows} rows of {} bytes",
                m.name, shape[0], shape[1], m.row_bytes
            )));
        }
        dsts.push(
            o.as_slice_mut().map_err(|_| {
                Kind::Value.err(format!("out= leaf '{}' is not C-contiguous", m.name))
            })?,
        );
    }
    Ok(dsts)
}

/// The preallocated gather into caller buffers, in blocks, reporting progress per block and
/// running Python's signal handlers after each (a `KeyboardInterrupt` stops it there).
fn gather_into(
    bytes: &[&[u8]],
    row_bytes: &[usize],
    idx: &Indices,
    dsts: &mut [&mut [u8]],
    progress: Option<&Py<PyAny>>,
) -> PyResult<()> {
    let sources: Vec<(&[u8], usize)> = bytes
        .iter()
        .copied()
        .zip(row_bytes.iter().copied())
        .collect();
    gather_blocked(&sources, idx.view(0, idx.len()), dsts, |_, rows, _| {
        if let Some(cb) = progress {
            call_progress_checked(cb, rows.end)?;
        }
        check_signals()
    })
}

/// Gathers straight into a `.npz` archive (`kind == "npz"`) or a folder of `.npy` files
/// (`"dir"`), block by block through one reused buffer (the output never exists in memory),
/// staged by the library's all-or-nothing output mechanism, with the GIL released. Between
/// blocks Python's signal handlers run: a Ctrl-C (or any handler that raises) stops the write,
/// nothing is committed, and the handler's exception is raised.
#[pyfunction]
#[pyo3(signature = (sources, rows, indices, kind, path, compress, progress))]
#[allow(clippy::too_many_arguments)]
pub fn gather_to_files(
    py: Python<'_>,
    sources: Vec<Spec<'_>>,
    rows: usize,
    indices: Option<PyReadonlyArray1<'_, i64>>,
    kind: &str,
    path: PathBuf,
    compress: bool,
    progress: Option<Py<PyAny>>,
) -> PyResult<()> {
    let list = order(indices.as_ref())?;
    let (metas, bytes) = self::sources(&sources)?;
    named_check(&metas)?;
    let table_rows = table_rows(&metas, list.as_ref(), rows);
    // Between blocks, with the GIL: the progress callback (what stops a program, such as a
    // KeyboardInterrupt raised inside it, stops the write), then Python's signal handlers.
    let raised: Arc<Mutex<Option<PyErr>>> = Arc::new(Mutex::new(None));
    let slot = Arc::clone(&raised);
    let options = WriteOptions::new()
        .compress(compress)
        .check_between_blocks(move |bytes| {
            let checked = match &progress {
                Some(cb) => call_progress_checked(cb, bytes as usize),
                None => Ok(()),
            }
            .and_then(|()| check_signals());
            checked.map_err(|e| {
                *slot.lock().unwrap_or_else(|p| p.into_inner()) = Some(e);
                Error::Interrupted {
                    reason: "a Python signal handler or the progress callback raised".into(),
                }
            })
        });
    let written = py.detach(|| -> Result<(), Error> {
        let table = table(&metas, &bytes, table_rows)?;
        let n = list.as_ref().map_or(table_rows, |l| l.len());
        let mut loader = Loader::new(&table).batch_size(n.max(1));
        if let Some(list) = list {
            loader = loader.indices(list);
        }
        match kind {
            "npz" => npy::drain_to_npz(&loader, &path, &options)?,
            _ => npy::drain_to_npy_dir(&loader, &path, &options)?,
        };
        Ok(())
    });
    if let Some(e) = raised.lock().unwrap_or_else(|p| p.into_inner()).take() {
        return Err(e);
    }
    written.py()
}

/// Checks that a leaf name can name a file (`NAME.npy`): the plain-name rule of every writer.
#[pyfunction]
pub fn check_name(name: &str) -> PyResult<()> {
    npy::check_column_name(name).py()
}

/// Files need a dtype for their header: columns given as bare bytes (no dtype) are refused.
pub fn named_check(metas: &[Meta]) -> PyResult<()> {
    match metas.iter().find(|m| !m.named) {
        Some(m) => Err(Kind::Type.err(format!(
            "leaf '{}': it was given as bare bytes, without a dtype for a .npy header",
            m.name
        ))),
        None => Ok(()),
    }
}

/// A column written by Python beside the sink's own (text leaves, sized only at the end):
/// its position among the columns, name, NumPy descriptor literal, row shape and bytes.
pub type Extra<'py> = (usize, String, String, Vec<usize>, PyReadonlyArray2<'py, u8>);

/// The general path's output: batches are copied, as they come, into one preallocated buffer
/// per column. With a declared row count the buffers are allocated once and a source yielding
/// more or fewer rows is an error; without one they start at the hint (if any) and grow
/// geometrically (doubling, each growth one copy of the rows so far), so a buffer may reserve
/// up to twice the final size in address space (the untouched tail of a large buffer is never
/// backed by memory). A sink made by [`Sink::to_files`] writes into memory-mapped `.npy` files
/// instead of memory.
#[pyclass(module = "arraydrain._native")]
pub struct Sink {
    metas: Vec<Meta>,
    declared: Option<usize>,
    rows: usize,
    capacity: usize,
    batches: usize,
    buffers: Vec<Box<dyn Storage>>,
    /// Mapped output: where the files go, and the rows already written back.
    files: Option<Files>,
}

/// A sink's memory-mapped files.
struct Files {
    kind: String,
    path: PathBuf,
    compress: bool,
    released: usize,
    /// A folder's `.npy` files (and the folders made for them), staged together: renamed into
    /// place all at once when the sink finishes, removed when it does not. `None` for an
    /// archive, whose member files are only scratch (packed into the archive, then removed).
    staged: Option<Staged>,
}

#[pymethods]
impl Sink {
    /// A sink for columns `(name, dtype or None, row_shape, row_bytes)`, expecting exactly
    /// `rows` rows when declared, else starting with room for `hint` rows.
    #[new]
    #[pyo3(signature = (columns, rows, hint=None))]
    fn new(
        columns: Vec<(String, Option<String>, Vec<usize>, usize)>,
        rows: Option<usize>,
        hint: Option<usize>,
    ) -> PyResult<Self> {
        let mut sink = Sink {
            metas: metas(&columns)?,
            declared: rows,
            rows: 0,
            capacity: 0,
            batches: 0,
            buffers: Vec::new(),
            files: None,
        };
        sink.grow(rows.or(hint).unwrap_or(0))?;
        Ok(sink)
    }

    /// A sink writing exactly `rows` rows straight into memory-mapped `.npy` files — the
    /// folder `path` (`kind == "dir"`), or exclusive temporary files beside the archive `path`
    /// (`"npz"`), packed by [`Sink::finish_to_files`] — so the output never has to fit in
    /// memory: written regions are handed back to the kernel as the sink goes. Every file is
    /// made under an unpredictable temporary name (the library's staged output), removed
    /// unless the sink finishes.
    #[staticmethod]
    #[pyo3(signature = (columns, rows, kind, path, compress))]
    fn to_files(
        columns: Vec<(String, Option<String>, Vec<usize>, usize)>,
        rows: usize,
        kind: &str,
        path: PathBuf,
        compress: bool,
    ) -> PyResult<Self> {
        Sink::files(metas(&columns)?, rows, kind, path, compress)
    }

    /// Rows received so far.
    #[getter]
    fn rows(&self) -> usize {
        self.rows
    }

    /// Copies one batch (one C-contiguous `uint8` array `(n, row_bytes)` per column, all with
    /// the same `n`) into the next rows, with the GIL released.
    fn push(&mut self, py: Python<'_>, arrays: Vec<PyReadonlyArray2<'_, u8>>) -> PyResult<()> {
        let k = self.batches;
        let mismatch = |column: &str, reason: String| {
            Kind::Value.err(format!("batch {k}, leaf '{column}': {reason}"))
        };
        if arrays.len() != self.metas.len() {
            return Err(Kind::Value.err(format!(
                "batch {k}: {} leaves, the first batch had {}",
                arrays.len(),
                self.metas.len()
            )));
        }
        let n = arrays.first().map_or(0, |a| a.shape()[0]);
        let mut srcs = Vec::with_capacity(arrays.len());
        for (a, m) in arrays.iter().zip(&self.metas) {
            let shape = a.shape();
            if shape[1] != m.row_bytes {
                return Err(mismatch(
                    &m.name,
                    format!(
                        "rows of {} bytes, the first batch's have {}",
                        shape[1], m.row_bytes
                    ),
                ));
            }
            if shape[0] != n {
                return Err(mismatch(
                    &m.name,
                    format!(
                        "{} rows, but the batch's leaf '{}' has {n}",
                        shape[0], self.metas[0].name
                    ),
                ));
            }
            srcs.push(
                a.as_slice()
                    .map_err(|_| mismatch(&m.name, "the batch is not contiguous".into()))?,
            );
        }
        let end = self.rows + n;
        if let Some(declared) = self.declared {
            if end > declared {
                return Err(to_py(Error::StreamLengthMismatch {
                    declared,
                    got: end,
                    more: true,
                }));
            }
        } else if end > self.capacity {
            self.grow(end.max(self.capacity.saturating_mul(2)).max(16))?;
        }
        let start = self.rows;
        let metas = &self.metas;
        let buffers = &mut self.buffers;
        let files = &mut self.files;
        py.detach(|| -> Result<(), Error> {
            for ((src, m), buf) in srcs.iter().zip(metas).zip(buffers.iter_mut()) {
                let rb = m.row_bytes;
                par_copy(src, &mut buf.as_bytes_mut()[start * rb..end * rb]);
            }
            if let Some(f) = files.as_mut() {
                release(f, metas, buffers, end, false)?;
            }
            Ok(())
        })
        .py()?;
        self.rows = end;
        self.batches += 1;
        Ok(())
    }

    /// Ends the stream: checks the declared row count and returns one `uint8` array
    /// `(rows, row_bytes)` per column, viewing the sink's buffers (the sink is left empty).
    fn finish(&mut self, py: Python<'_>) -> PyResult<Vec<Py<PyAny>>> {
        self.check_complete()?;
        let rows = self.rows;
        let capacity = self.capacity;
        let columns = self.take_columns(capacity)?;
        columns
            .into_iter()
            .zip(&self.metas)
            .map(|(c, m)| Buffer::new(c, rows, m.row_bytes).into_numpy(py))
            .collect()
    }

    /// Ends the stream into a `.npz` archive (`kind == "npz"`) or a folder of `.npy` files
    /// (`"dir"`), written by the engine's writers (all files of one call renamed into place
    /// together), with `extra` columns inserted at their positions; a [`Sink::to_files`] sink
    /// finishes its own files (and packs them into its archive) whatever the arguments say,
    /// and takes no extra columns.
    #[pyo3(signature = (kind, path, compress, extra=Vec::new()))]
    fn finish_to_files(
        &mut self,
        py: Python<'_>,
        kind: &str,
        path: PathBuf,
        compress: bool,
        extra: Vec<Extra<'_>>,
    ) -> PyResult<()> {
        self.check_complete()?;
        named_check(&self.metas)?;
        check_signals()?;
        if self.files.is_some() {
            if !extra.is_empty() {
                return Err(Kind::Value
                    .err("a sink writing memory-mapped files takes no extra columns".to_string()));
            }
            return self.finish_mapped(py);
        }
        if self.rows != self.capacity {
            // Files hold exactly the rows received: one trimming copy (undeclared streams).
            self.grow(self.rows)?;
        }
        let rows = self.rows;
        let mut columns = self.take_columns(rows)?;
        for (at, name, descr, row_shape, data) in &extra {
            let shape = data.shape();
            let (dtype, rs) = layout(Some(descr), row_shape, shape[1])?;
            if shape[0] != rows {
                return Err(Kind::Value.err(format!(
                    "leaf '{name}': {} rows, the other leaves have {rows}",
                    shape[0]
                )));
            }
            let bytes = data
                .as_slice()
                .map_err(|_| Kind::Value.err(format!("leaf '{name}' is not contiguous")))?;
            let buf = HostBuf::copy_of(bytes, name, None).py()?;
            let column = ColumnArray::new(name.as_str(), dtype, &rs, rows, Box::new(buf)).py()?;
            columns.insert((*at).min(columns.len()), column);
        }
        py.detach(|| -> Result<(), Error> {
            let options = WriteOptions::new().compress(compress);
            match kind {
                "npz" => npy::write_npz(&path, &columns, &options),
                _ => npy::write_npy_dir_with(&path, &columns, &options).map(|_| ()),
            }
        })
        .py()
    }

    /// Drops everything the sink holds: its buffers, and for a file sink its temporary files
    /// and the folders it created (when empty). What a sink dropped unfinished does, at once.
    fn close(&mut self) {
        self.abort();
    }
}

impl Drop for Sink {
    fn drop(&mut self) {
        self.abort();
    }
}

/// Hands written rows of mapped columns back to the kernel (written back, pages dropped) in
/// steps of about [`BLOCK_BYTES`], or everything up to `rows` when `all`.
fn release(
    files: &mut Files,
    metas: &[Meta],
    buffers: &mut [Box<dyn Storage>],
    rows: usize,
    all: bool,
) -> Result<(), Error> {
    let total: usize = metas.iter().map(|m| m.row_bytes).sum();
    if rows <= files.released || (!all && (rows - files.released) * total < BLOCK_BYTES) {
        return Ok(());
    }
    for (m, b) in metas.iter().zip(buffers.iter_mut()) {
        let rb = m.row_bytes;
        b.region_done(files.released * rb..rows * rb)?;
    }
    files.released = rows;
    Ok(())
}

/// Checked layouts of the sink's columns.
fn metas(columns: &[(String, Option<String>, Vec<usize>, usize)]) -> PyResult<Vec<Meta>> {
    columns
        .iter()
        .map(|(name, dtype, row_shape, row_bytes)| {
            meta(name, dtype.as_deref(), row_shape, *row_bytes, 0)
        })
        .collect()
}

impl Sink {
    /// See [`Sink::to_files`]. Names are checked (plain file names, no two alike) before
    /// anything is created.
    fn files(
        metas: Vec<Meta>,
        rows: usize,
        kind: &str,
        path: PathBuf,
        compress: bool,
    ) -> PyResult<Self> {
        named_check(&metas)?;
        for (i, m) in metas.iter().enumerate() {
            npy::check_column_name(&m.name).py()?;
            if metas[..i].iter().any(|p| p.name == m.name) {
                return Err(Kind::Value.err(format!(
                    "two leaves are both named '{}'; each needs a file of its own",
                    m.name
                )));
            }
        }
        // A folder's files are one staged set (the folder and its missing parents included):
        // they appear together when the sink finishes, and nothing of them when it does not.
        let mut staged = if kind == "npz" {
            None
        } else {
            let mut staged = Staged::new();
            staged.create_dir_all(&path).py()?;
            Some(staged)
        };
        let mut buffers: Vec<Box<dyn Storage>> = Vec::with_capacity(metas.len());
        for m in &metas {
            let mut shape = vec![rows];
            shape.extend_from_slice(&m.row_shape);
            // Exclusive random temporary names in the destination's folder (registered for
            // cleanup). An archive's members are never renamed into place: they are packed
            // into the archive and removed.
            let file = match staged.as_mut() {
                Some(set) => MappedNpy::create_staged(
                    set,
                    &path.join(format!("{}.npy", m.name)),
                    m.dtype.clone(),
                    &shape,
                ),
                None => MappedNpy::create(&path, m.dtype.clone(), &shape),
            }
            .py()?;
            buffers.push(Box::new(file));
        }
        let sink = Sink {
            metas,
            declared: Some(rows),
            rows: 0,
            capacity: rows,
            batches: 0,
            buffers,
            files: Some(Files {
                kind: kind.to_string(),
                path,
                compress,
                released: 0,
                staged,
            }),
        };
        Ok(sink)
    }

    /// Finishes a file sink: every region written back, then the `.npy` files renamed into
    /// place, or the archive packed from them (its temporary members removed).
    fn finish_mapped(&mut self, py: Python<'_>) -> PyResult<()> {
        let rows = self.rows;
        let Some(f) = self.files.as_mut() else {
            return Ok(());
        };
        let metas = &self.metas;
        let buffers = &mut self.buffers;
        py.detach(|| release(f, metas, buffers, rows, true)).py()?;
        if f.kind != "npz" {
            let buffers = &mut self.buffers;
            let staged = f.staged.take();
            py.detach(|| -> Result<(), Error> {
                // Every file written back, then all of them renamed into place at once.
                for b in buffers.iter_mut() {
                    b.finish()?;
                }
                match staged {
                    Some(set) => set.commit().map(drop),
                    None => Ok(()),
                }
            })
            .py()?;
            self.buffers.clear();
            self.files = None;
            return Ok(());
        }
        let (path, compress) = (f.path.clone(), f.compress);
        let columns = self.take_columns(rows)?;
        let written = py.detach(|| {
            let options = WriteOptions::new().compress(compress);
            let r = npy::write_npz(&path, &columns, &options);
            // The members' temporary files go as their maps are dropped.
            drop(columns);
            r
        });
        self.files = None;
        written.py()
    }

    /// Drops the buffers (a file sink's unfinished files remove themselves as they are
    /// dropped) and the folders a file sink made, when empty: nothing of anyone else's.
    fn abort(&mut self) {
        // Unfinished files first (their maps), then the staged set, which removes every
        // temporary file and every folder it made.
        self.buffers.clear();
        self.files = None;
    }

    fn check_complete(&self) -> PyResult<()> {
        match self.declared {
            Some(declared) if self.rows != declared => Err(to_py(Error::StreamLengthMismatch {
                declared,
                got: self.rows,
                more: false,
            })),
            _ => Ok(()),
        }
    }

    /// The buffers as engine columns of `capacity` rows each.
    fn take_columns(&mut self, capacity: usize) -> PyResult<Vec<ColumnArray>> {
        std::mem::take(&mut self.buffers)
            .into_iter()
            .zip(&self.metas)
            .map(|(b, m)| {
                ColumnArray::new(m.name.as_str(), m.dtype.clone(), &m.row_shape, capacity, b).py()
            })
            .collect()
    }

    /// Reallocates every (heap) column for `capacity` rows, keeping the rows received.
    fn grow(&mut self, capacity: usize) -> PyResult<()> {
        let mut next: Vec<Box<dyn Storage>> = Vec::with_capacity(self.metas.len());
        for (i, m) in self.metas.iter().enumerate() {
            let bytes = capacity.checked_mul(m.row_bytes).ok_or_else(|| {
                to_py(Error::HostAllocation {
                    bytes: capacity as u128 * m.row_bytes as u128,
                    what: m.name.clone(),
                    reason: "size overflows the address space".into(),
                })
            })?;
            let mut buf = HostBuf::zeroed(bytes, &m.name).py()?;
            if let Some(old) = self.buffers.get(i) {
                let keep = self.rows * m.row_bytes;
                par_copy(&old.as_bytes()[..keep], &mut buf.as_bytes_mut()[..keep]);
            }
            next.push(Box::new(buf));
        }
        self.buffers = next;
        self.capacity = capacity;
        Ok(())
    }
}
