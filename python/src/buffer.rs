//! The owner of an output array's memory. A [`Buffer`] holds the engine's [`ColumnArray`]
//! (heap, pinned or any other storage) and exposes its bytes to NumPy through the array
//! interface, so `numpy.asarray(buffer)` is a view of the engine's memory with the buffer as
//! its `base`: no copy at the boundary, and the memory lives exactly as long as some array
//! over it does.

use std::sync::Mutex;

use arraydrain::{ColumnArray, StorageKind};
use pyo3::prelude::*;
use pyo3::types::PyDict;

/// Keeps an engine buffer alive for the NumPy arrays that view it (their `base`).
///
/// NumPy sees a C-contiguous `uint8` array of shape `(rows, row_bytes)`; the Python package
/// reinterprets it as the column's dtype and shape (views, no copies).
#[pyclass(module = "arraydrain._native", frozen)]
pub struct Buffer {
    /// The column; lent out (and always put back) while a drain refills it in place.
    column: Mutex<Option<ColumnArray>>,
    kind: StorageKind,
    rows: usize,
    row_bytes: usize,
    address: usize,
}

impl Buffer {
    /// Wraps a column; NumPy will see its first `rows` rows (at most the column's rows).
    pub fn new(column: ColumnArray, rows: usize, row_bytes: usize) -> Self {
        let address = column.as_bytes().as_ptr() as usize;
        let rows = rows.min(
            column
                .as_bytes()
                .len()
                .checked_div(row_bytes)
                .unwrap_or(rows),
        );
        Buffer {
            kind: column.storage_kind(),
            column: Mutex::new(Some(column)),
            rows,
            row_bytes,
            address,
        }
    }

    /// The address and length NumPy sees.
    pub fn extent(&self) -> (usize, usize) {
        (self.address, self.rows * self.row_bytes)
    }

    /// Where the bytes live.
    pub fn kind(&self) -> StorageKind {
        self.kind
    }

    /// Lends the column out (`None` if it is lent already); the memory stays where it is, so
    /// the arrays over it stay valid. Put it back with [`Buffer::restore`].
    pub fn lend(&self) -> Option<ColumnArray> {
        self.column.lock().unwrap_or_else(|p| p.into_inner()).take()
    }

    /// Puts a lent column back.
    pub fn restore(&self, column: ColumnArray) {
        *self.column.lock().unwrap_or_else(|p| p.into_inner()) = Some(column);
    }

    /// The buffer as a NumPy `uint8` array of shape `(rows, row_bytes)` viewing its memory.
    pub fn into_numpy(self, py: Python<'_>) -> PyResult<Py<PyAny>> {
        let owner = Bound::new(py, self)?;
        let np = py.import("numpy")?;
        Ok(np.getattr("asarray")?.call1((owner,))?.unbind())
    }
}

#[pymethods]
impl Buffer {
    /// The NumPy array interface (version 3): a writable, C-contiguous `uint8` array of shape
    /// `(rows, row_bytes)` at the engine buffer's address.
    #[getter]
    fn __array_interface__<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        let d = PyDict::new(py);
        d.set_item("version", 3)?;
        d.set_item("shape", (self.rows, self.row_bytes))?;
        d.set_item("typestr", "|u1")?;
        d.set_item("data", (self.address, false))?;
        d.set_item("strides", py.None())?;
        Ok(d)
    }

    /// Where the bytes live: `"heap"`, `"pinned"`, `"mapped"` or `"array"`.
    #[getter]
    fn storage(&self) -> &'static str {
        match self.kind {
            arraydrain::StorageKind::Pinned => "pinned",
            arraydrain::StorageKind::Mapped => "mapped",
            arraydrain::StorageKind::Array => "array",
            _ => "heap",
        }
    }

    fn __repr__(&self) -> String {
        format!(
            "Buffer(rows={}, row_bytes={}, storage={})",
            self.rows,
            self.row_bytes,
            self.storage()
        )
    }
}
