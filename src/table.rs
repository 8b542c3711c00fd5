//! Tables: named columns sharing one row count. A column is a dtype, a row shape and contiguous
//! row-major bytes (borrowed from the caller, owned, or shared, e.g. a memory-mapped file).
//! Everything is validated here, once, so the gather stages can rely on it.

use std::fmt;
use std::sync::Arc;

use ndarray::{Array, ArrayView, Dimension};

use crate::dtype::{DType, Element};
use crate::error::{Error, Result};
use crate::memory::{checked_bytes, HostBuf};

/// Bytes that some owner keeps alive and immutable (an owned buffer, a memory map …).
pub trait SharedBytes: Send + Sync {
    /// The bytes.
    fn bytes(&self) -> &[u8];
}

/// What can be wrong with a table, one of its columns, or a typed view of a column — wrapped
/// by [`Error::Table`].
#[derive(Debug, thiserror::Error)]
pub enum TableError {
    /// A table needs at least one column.
    #[error("a table needs at least one column")]
    EmptyTable,
    /// Two columns share a name.
    #[error("duplicate column name {name:?}")]
    DuplicateColumn {
        /// The repeated name.
        name: String,
    },
    /// A column was asked for by a name the table or output does not have.
    #[error("unknown column {name:?} (available: {available:?})")]
    UnknownColumn {
        /// The requested name.
        name: String,
        /// The names that exist.
        available: Vec<String>,
    },
    /// Columns of one table must share a row count.
    #[error("column {column:?} has {got} rows but the table has {expected}")]
    RowCountMismatch {
        /// The offending column.
        column: String,
        /// Rows of the first column.
        expected: usize,
        /// Rows of this column.
        got: usize,
    },
    /// A column array must have a first (row) axis.
    #[error("column {column:?} is a 0-dimensional array; a column needs a first axis of rows")]
    NoRowAxis {
        /// The offending column.
        column: String,
    },
    /// Raw column bytes do not match the declared dtype, row shape and row count.
    #[error(
        "column {column:?}: expected {expected} bytes for its rows, dtype and row shape, got {got}"
    )]
    ByteLengthMismatch {
        /// The offending column.
        column: String,
        /// Bytes implied by rows × row bytes.
        expected: usize,
        /// Bytes supplied.
        got: usize,
    },
    /// A column was read as a Rust type that does not match its dtype.
    #[error(
        "column {column:?} holds {actual}, not {requested}{}",
        if actual.is_opaque() {
            " (an opaque dtype is read as raw row bytes with its descriptor, never through a \
             typed view; a big-endian column keeps its byte order)"
        } else {
            ""
        }
    )]
    DTypeMismatch {
        /// The column.
        column: String,
        /// Its dtype.
        actual: DType,
        /// The dtype of the Rust type asked for.
        requested: DType,
    },
    /// A column's storage is not aligned or sized for its element type (a storage bug).
    #[error("column {column:?}: storage does not fit its dtype and shape: {reason}")]
    Misaligned {
        /// The column.
        column: String,
        /// What bytemuck or ndarray reported.
        reason: String,
    },
}

impl SharedBytes for HostBuf {
    fn bytes(&self) -> &[u8] {
        self.as_bytes()
    }
}

impl<T: Element> SharedBytes for Vec<T> {
    fn bytes(&self) -> &[u8] {
        bytemuck::cast_slice(self)
    }
}

enum Data<'a> {
    Borrowed(&'a [u8]),
    Shared(Arc<dyn SharedBytes + 'a>),
}

/// One named column: dtype, row shape and the bytes of all its rows.
pub struct Column<'a> {
    name: String,
    dtype: DType,
    row_shape: Vec<usize>,
    rows: usize,
    row_bytes: usize,
    data: Data<'a>,
}

impl<'a> Column<'a> {
    fn checked(
        name: String,
        dtype: DType,
        row_shape: Vec<usize>,
        rows: usize,
        data: Data<'a>,
    ) -> Result<Self> {
        let mut parts = row_shape.clone();
        parts.push(dtype.size());
        let row_bytes = checked_bytes(&parts, &name)?;
        let expected = checked_bytes(&[row_bytes, rows], &name)?;
        let got = match &data {
            Data::Borrowed(b) => b.len(),
            Data::Shared(s) => s.bytes().len(),
        };
        if got != expected {
            return Err(Error::Table(TableError::ByteLengthMismatch {
                column: name,
                expected,
                got,
            }));
        }
        Ok(Column {
            name,
            dtype,
            row_shape,
            rows,
            row_bytes,
            data,
        })
    }

    /// A column borrowing an ndarray view; the first axis is rows.
    ///
    /// A view in standard (C) layout is borrowed as it is; any other layout (transposed, strided,
    /// negative strides) is copied once into an owned row-major buffer, never misread.
    ///
    /// # Errors
    /// [`TableError::NoRowAxis`] for a 0-dimensional view; [`Error::HostAllocation`] if the copy of a
    /// non-standard view cannot be allocated.
    pub fn from_view<T: Element, D: Dimension>(
        name: impl Into<String>,
        view: ArrayView<'a, T, D>,
    ) -> Result<Self> {
        let name = name.into();
        let shape = view.shape().to_vec();
        let Some((&rows, row_shape)) = shape.split_first() else {
            return Err(Error::Table(TableError::NoRowAxis { column: name }));
        };
        let row_shape = row_shape.to_vec();
        match view.to_slice() {
            Some(slice) => Self::checked(
                name,
                T::DTYPE,
                row_shape,
                rows,
                Data::Borrowed(bytemuck::cast_slice(slice)),
            ),
            None => {
                let bytes = checked_bytes(&[view.len(), T::DTYPE.size()], &name)?;
                let mut buf = HostBuf::zeroed(bytes, &name)?;
                let out: &mut [T] = bytemuck::cast_slice_mut(buf.as_bytes_mut());
                // `iter` walks logical (row-major) order whatever the strides are.
                for (o, v) in out.iter_mut().zip(view.iter()) {
                    *o = *v;
                }
                Self::checked(name, T::DTYPE, row_shape, rows, Data::Shared(Arc::new(buf)))
            }
        }
    }

    /// A column owning an ndarray array (moved in without a copy when in standard layout).
    ///
    /// # Errors
    /// As [`Column::from_view`].
    pub fn from_array<T: Element, D: Dimension>(
        name: impl Into<String>,
        array: Array<T, D>,
    ) -> Result<Column<'static>> {
        let name = name.into();
        if array.ndim() == 0 {
            return Err(Error::Table(TableError::NoRowAxis { column: name }));
        }
        let shape = array.shape().to_vec();
        let vec = if array.is_standard_layout() {
            let (vec, offset) = array.into_raw_vec_and_offset();
            if offset.unwrap_or(0) == 0 {
                vec
            } else {
                // A sliced owned array: keep only the visible part.
                let start = offset.unwrap_or(0);
                vec[start..start + shape.iter().product::<usize>()].to_vec()
            }
        } else {
            array.iter().copied().collect()
        };
        Column::checked(
            name,
            T::DTYPE,
            shape[1..].to_vec(),
            shape[0],
            Data::Shared(Arc::new(vec)),
        )
    }

    /// A column over raw row-major bytes, borrowed.
    ///
    /// # Errors
    /// [`TableError::ByteLengthMismatch`] unless `bytes.len() == rows × prod(row_shape) × dtype size`.
    pub fn from_bytes(
        name: impl Into<String>,
        dtype: DType,
        row_shape: &[usize],
        rows: usize,
        bytes: &'a [u8],
    ) -> Result<Self> {
        Self::checked(
            name.into(),
            dtype,
            row_shape.to_vec(),
            rows,
            Data::Borrowed(bytes),
        )
    }

    /// A column over raw row-major bytes kept alive by a shared owner (an owned buffer, a map).
    ///
    /// # Errors
    /// As [`Column::from_bytes`].
    pub fn from_shared(
        name: impl Into<String>,
        dtype: DType,
        row_shape: &[usize],
        rows: usize,
        bytes: Arc<dyn SharedBytes + 'a>,
    ) -> Result<Self> {
        Self::checked(
            name.into(),
            dtype,
            row_shape.to_vec(),
            rows,
            Data::Shared(bytes),
        )
    }

    /// The column's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Element type (a cheap clone: an opaque dtype's descriptor is shared).
    pub fn dtype(&self) -> DType {
        self.dtype.clone()
    }

    /// Shape of one row (`[]` for scalar rows such as labels).
    pub fn row_shape(&self) -> &[usize] {
        &self.row_shape
    }

    /// Number of rows.
    pub fn rows(&self) -> usize {
        self.rows
    }

    /// Bytes per row.
    pub fn row_bytes(&self) -> usize {
        self.row_bytes
    }

    /// All rows' bytes, row-major.
    pub fn bytes(&self) -> &[u8] {
        match &self.data {
            Data::Borrowed(b) => b,
            Data::Shared(s) => s.bytes(),
        }
    }

    /// The bytes of one row (`None` past the end).
    pub fn row(&self, i: usize) -> Option<&[u8]> {
        let rb = self.row_bytes;
        self.bytes()
            .get(i.checked_mul(rb)?..i.checked_mul(rb)?.checked_add(rb)?)
    }
}

impl fmt::Debug for Column<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Column")
            .field("name", &self.name)
            .field("dtype", &self.dtype)
            .field("row_shape", &self.row_shape)
            .field("rows", &self.rows)
            .finish()
    }
}

/// Named columns sharing one row count.
///
/// ```
/// use arraydrain::Table;
/// use ndarray::{Array1, Array2};
///
/// let x = Array2::<f32>::zeros((4, 3));
/// let y = Array1::<i64>::from_vec(vec![0, 1, 2, 3]);
/// let table = Table::builder().view("x", x.view()).view("y", y.view()).build()?;
/// assert_eq!(table.rows(), 4);
/// assert_eq!(table.column("x")?.row_shape(), &[3]);
/// # Ok::<(), arraydrain::Error>(())
/// ```
#[derive(Debug)]
pub struct Table<'a> {
    columns: Vec<Column<'a>>,
    rows: usize,
}

impl<'a> Table<'a> {
    /// Builds a table from columns.
    ///
    /// # Errors
    /// [`TableError::EmptyTable`], [`TableError::DuplicateColumn`], [`TableError::RowCountMismatch`].
    pub fn new(columns: Vec<Column<'a>>) -> Result<Self> {
        let Some(first) = columns.first() else {
            return Err(Error::Table(TableError::EmptyTable));
        };
        let rows = first.rows;
        let mut seen = std::collections::HashSet::with_capacity(columns.len());
        for c in &columns {
            if !seen.insert(c.name.as_str()) {
                return Err(Error::Table(TableError::DuplicateColumn {
                    name: c.name.clone(),
                }));
            }
            if c.rows != rows {
                return Err(Error::Table(TableError::RowCountMismatch {
                    column: c.name.clone(),
                    expected: rows,
                    got: c.rows,
                }));
            }
        }
        Ok(Table { columns, rows })
    }

    /// A builder that collects columns and reports the first error at [`TableBuilder::build`].
    pub fn builder() -> TableBuilder<'a> {
        TableBuilder {
            columns: Ok(Vec::new()),
        }
    }

    /// Rows shared by all columns.
    pub fn rows(&self) -> usize {
        self.rows
    }

    /// The columns, in order.
    pub fn columns(&self) -> &[Column<'a>] {
        &self.columns
    }

    /// A column by name.
    ///
    /// # Errors
    /// [`TableError::UnknownColumn`].
    pub fn column(&self, name: &str) -> Result<&Column<'a>> {
        self.columns.iter().find(|c| c.name == name).ok_or_else(|| {
            Error::Table(TableError::UnknownColumn {
                name: name.to_string(),
                available: self.columns.iter().map(|c| c.name.clone()).collect(),
            })
        })
    }

    /// Keeps only the named columns, in the order given.
    ///
    /// # Errors
    /// [`TableError::UnknownColumn`], [`TableError::DuplicateColumn`], [`TableError::EmptyTable`].
    pub fn select(mut self, names: &[&str]) -> Result<Self> {
        let mut out = Vec::with_capacity(names.len());
        for name in names {
            if out.iter().any(|c: &Column<'a>| c.name == *name) {
                return Err(Error::Table(TableError::DuplicateColumn {
                    name: name.to_string(),
                }));
            }
            let pos = self
                .columns
                .iter()
                .position(|c| c.name == *name)
                .ok_or_else(|| {
                    Error::Table(TableError::UnknownColumn {
                        name: name.to_string(),
                        available: self.columns.iter().map(|c| c.name.clone()).collect(),
                    })
                })?;
            out.push(self.columns.remove(pos));
        }
        Table::new(out)
    }

    /// Bytes of one row summed over all columns.
    pub fn row_bytes(&self) -> usize {
        self.columns.iter().map(|c| c.row_bytes).sum()
    }
}

/// Collects columns for a [`Table`]; the first failure is kept and returned by `build`.
pub struct TableBuilder<'a> {
    columns: Result<Vec<Column<'a>>>,
}

impl<'a> TableBuilder<'a> {
    /// Adds a column.
    pub fn column(mut self, column: Result<Column<'a>>) -> Self {
        if let Ok(cols) = &mut self.columns {
            match column {
                Ok(c) => cols.push(c),
                Err(e) => self.columns = Err(e),
            }
        }
        self
    }

    /// Adds a column borrowing an ndarray view ([`Column::from_view`]).
    pub fn view<T: Element, D: Dimension>(self, name: &str, view: ArrayView<'a, T, D>) -> Self {
        self.column(Column::from_view(name, view))
    }

    /// Adds a column owning an ndarray array ([`Column::from_array`]).
    pub fn array<T: Element, D: Dimension>(self, name: &str, array: Array<T, D>) -> Self {
        self.column(Column::from_array(name, array))
    }

    /// Builds the table.
    ///
    /// # Errors
    /// The first column error, or one of [`Table::new`]'s.
    pub fn build(self) -> Result<Table<'a>> {
        Table::new(self.columns?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ndarray::{s, Array2, Array3};

    #[test]
    fn non_standard_views_are_copied_in_logical_order() {
        let a = Array2::from_shape_fn((3, 4), |(i, j)| (i * 10 + j) as i32);
        let t = a.t(); // 4 x 3, Fortran layout
        let col = Column::from_view("t", t).unwrap();
        let vals: &[i32] = bytemuck::cast_slice(col.bytes());
        let expected: Vec<i32> = t.iter().copied().collect();
        assert_eq!(vals, &expected[..]);
        assert_eq!(col.row_shape(), &[3]);

        let rev = a.slice(s![..;-1, ..]);
        let col = Column::from_view("r", rev).unwrap();
        let vals: &[i32] = bytemuck::cast_slice(col.bytes());
        assert_eq!(vals[..4], [20, 21, 22, 23]);
    }

    #[test]
    fn owned_sliced_arrays_keep_only_the_visible_part() {
        let a = Array3::from_shape_fn((4, 2, 2), |(i, j, k)| (i * 4 + j * 2 + k) as u16);
        let sliced = a.slice_move(s![1.., .., ..]);
        let col = Column::from_array("a", sliced.clone()).unwrap();
        assert_eq!(col.rows(), 3);
        let vals: &[u16] = bytemuck::cast_slice(col.bytes());
        assert_eq!(vals, sliced.as_slice().unwrap());
    }
}
