//! Output: named host arrays. [`Materialized`] is a drain's result (one preallocated array per
//! column, plus a [`Report`]); [`Batch`] is one batch of a loader or of a stream. Both hold
//! [`ColumnArray`]s whose storage may be heap, pinned or a memory-mapped file, read through typed
//! `ndarray` views. A drain hands its output back only after every copy into it has landed, so
//! a view can never observe a copy in flight.

use crate::table::TableError;
use std::any::Any;
use std::fmt;
use std::ops::Range;
use std::time::{Duration, Instant};

use ndarray::{Array, ArrayD, ArrayViewD, ArrayViewMutD, Dimension, IxDyn};

use crate::dtype::{DType, Element};
use crate::error::{Error, Result};
use crate::memory::{checked_bytes, HostBuf};

/// Where a column's bytes live.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum StorageKind {
    /// Ordinary host memory allocated by the engine.
    Heap,
    /// A caller's ndarray array, moved in.
    Array,
    /// Page-locked (pinned, cacheable) host memory, the target of asynchronous device copies.
    Pinned,
    /// A memory-mapped `.npy` file.
    Mapped,
}

/// Byte storage behind a [`ColumnArray`].
pub trait Storage: Send + Sync + fmt::Debug {
    /// The kind of memory.
    fn kind(&self) -> StorageKind;
    /// The bytes.
    fn as_bytes(&self) -> &[u8];
    /// The bytes, writable.
    fn as_bytes_mut(&mut self) -> &mut [u8];
    /// Called by a drain when the bytes in `range` are final (a mapped file may write them back
    /// and release the pages). The default does nothing.
    ///
    /// # Errors
    /// Storage-specific I/O errors.
    fn region_done(&mut self, range: Range<usize>) -> Result<()> {
        let _ = range;
        Ok(())
    }
    /// Called once when a drain has written everything. The default does nothing.
    ///
    /// # Errors
    /// Storage-specific I/O errors.
    fn finish(&mut self) -> Result<()> {
        Ok(())
    }
    /// Faults in the pages of `range` ahead of the writes that will fill it, where that is
    /// cheaper than a fault per page as the writes arrive. Advice: the default does nothing.
    fn fault_in(&self, range: Range<usize>) {
        let _ = range;
    }
    /// For zero-copy `into_array` of caller-owned arrays.
    fn into_any(self: Box<Self>) -> Box<dyn Any>;
}

impl Storage for HostBuf {
    fn kind(&self) -> StorageKind {
        StorageKind::Heap
    }
    fn as_bytes(&self) -> &[u8] {
        HostBuf::as_bytes(self)
    }
    fn as_bytes_mut(&mut self) -> &mut [u8] {
        HostBuf::as_bytes_mut(self)
    }
    fn fault_in(&self, range: Range<usize>) {
        self.prefault_range(range);
    }
    fn into_any(self: Box<Self>) -> Box<dyn Any> {
        self
    }
}

/// A caller's array moved into a [`ColumnArray`] (standard layout guaranteed at construction).
#[derive(Debug)]
struct ArrayStorage<T: Element>(ArrayD<T>);

impl<T: Element> Storage for ArrayStorage<T> {
    fn kind(&self) -> StorageKind {
        StorageKind::Array
    }
    fn as_bytes(&self) -> &[u8] {
        // Standard layout was established in `ColumnArray::from_array`.
        bytemuck::cast_slice(self.0.as_slice().unwrap_or(&[]))
    }
    fn as_bytes_mut(&mut self) -> &mut [u8] {
        bytemuck::cast_slice_mut(self.0.as_slice_mut().unwrap_or(&mut []))
    }
    fn into_any(self: Box<Self>) -> Box<dyn Any> {
        Box::new(self.0)
    }
}

/// One named array: `rows` rows of `row_shape`, of `dtype`, in some [`Storage`].
pub struct ColumnArray {
    name: String,
    dtype: DType,
    row_shape: Vec<usize>,
    rows: usize,
    storage: Box<dyn Storage>,
}

impl ColumnArray {
    /// Wraps storage holding exactly `rows × row_shape × dtype` bytes.
    ///
    /// # Errors
    /// [`TableError::ByteLengthMismatch`] when the storage has another length.
    pub fn new(
        name: impl Into<String>,
        dtype: DType,
        row_shape: &[usize],
        rows: usize,
        storage: Box<dyn Storage>,
    ) -> Result<Self> {
        let name = name.into();
        let mut parts = row_shape.to_vec();
        parts.extend([dtype.size(), rows]);
        let expected = checked_bytes(&parts, &name)?;
        let got = storage.as_bytes().len();
        if got != expected {
            return Err(Error::Table(TableError::ByteLengthMismatch {
                column: name,
                expected,
                got,
            }));
        }
        Ok(ColumnArray {
            name,
            dtype,
            row_shape: row_shape.to_vec(),
            rows,
            storage,
        })
    }

    /// A zero-filled heap array.
    ///
    /// # Errors
    /// [`Error::HostAllocation`] when the memory cannot be had.
    pub fn zeroed(
        name: impl Into<String>,
        dtype: DType,
        row_shape: &[usize],
        rows: usize,
    ) -> Result<Self> {
        let name = name.into();
        let mut parts = row_shape.to_vec();
        parts.extend([dtype.size(), rows]);
        let bytes = checked_bytes(&parts, &name)?;
        let buf = HostBuf::zeroed(bytes, &name)?;
        Self::new(name, dtype, row_shape, rows, Box::new(buf))
    }

    /// Moves an ndarray array in (no copy when it is in standard layout); the first axis is rows.
    ///
    /// # Errors
    /// [`TableError::NoRowAxis`] for a 0-dimensional array.
    pub fn from_array<T: Element, D: Dimension>(
        name: impl Into<String>,
        array: Array<T, D>,
    ) -> Result<Self> {
        let name = name.into();
        if array.ndim() == 0 {
            return Err(Error::Table(TableError::NoRowAxis { column: name }));
        }
        let array = array.into_dyn();
        let array = if array.is_standard_layout() {
            array
        } else {
            array.as_standard_layout().into_owned()
        };
        let shape = array.shape().to_vec();
        Self::new(
            name,
            T::DTYPE,
            &shape[1..],
            shape[0],
            Box::new(ArrayStorage(array)),
        )
    }

    /// The name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Element type (a cheap clone: an opaque dtype's descriptor is shared).
    pub fn dtype(&self) -> DType {
        self.dtype.clone()
    }

    /// Shape of one row.
    pub fn row_shape(&self) -> &[usize] {
        &self.row_shape
    }

    /// Number of rows.
    pub fn rows(&self) -> usize {
        self.rows
    }

    /// Bytes per row.
    pub fn row_bytes(&self) -> usize {
        self.row_shape.iter().product::<usize>() * self.dtype.size()
    }

    /// Full shape, `[rows, ...row_shape]`.
    pub fn shape(&self) -> Vec<usize> {
        let mut s = vec![self.rows];
        s.extend_from_slice(&self.row_shape);
        s
    }

    /// Where the bytes live.
    pub fn storage_kind(&self) -> StorageKind {
        self.storage.kind()
    }

    /// The raw bytes, row-major.
    pub fn as_bytes(&self) -> &[u8] {
        self.storage.as_bytes()
    }

    /// The bytes of one row (`None` past the end): how a [`DType::Opaque`] column is read,
    /// with its descriptor from [`ColumnArray::dtype`].
    pub fn row(&self, i: usize) -> Option<&[u8]> {
        let rb = self.row_bytes();
        let start = i.checked_mul(rb)?;
        self.as_bytes().get(start..start.checked_add(rb)?)
    }

    /// The raw bytes, writable.
    pub fn as_bytes_mut(&mut self) -> &mut [u8] {
        self.storage.as_bytes_mut()
    }

    pub(crate) fn storage(&self) -> &dyn Storage {
        self.storage.as_ref()
    }

    pub(crate) fn storage_mut(&mut self) -> &mut dyn Storage {
        self.storage.as_mut()
    }

    fn check<T: Element>(&self) -> Result<()> {
        if T::views(&self.dtype) {
            Ok(())
        } else {
            Err(Error::Table(TableError::DTypeMismatch {
                column: self.name.clone(),
                actual: self.dtype.clone(),
                requested: T::DTYPE,
            }))
        }
    }

    /// A typed view of shape `[rows, ...row_shape]`.
    ///
    /// # Errors
    /// [`TableError::DTypeMismatch`] when `T` is not this column's type.
    pub fn view<T: Element>(&self) -> Result<ArrayViewD<'_, T>> {
        self.check::<T>()?;
        let data: &[T] =
            bytemuck::try_cast_slice(self.as_bytes()).map_err(|e| self.layout_error(e))?;
        ArrayViewD::from_shape(IxDyn(&self.shape()), data).map_err(|e| self.layout_error(e))
    }

    /// A typed mutable view.
    ///
    /// # Errors
    /// [`TableError::DTypeMismatch`] when `T` is not this column's type.
    pub fn view_mut<T: Element>(&mut self) -> Result<ArrayViewMutD<'_, T>> {
        self.check::<T>()?;
        let shape = self.shape();
        let name = self.name.clone();
        let data: &mut [T] = bytemuck::try_cast_slice_mut(self.storage.as_bytes_mut())
            .map_err(|e| layout_error(&name, e))?;
        ArrayViewMutD::from_shape(IxDyn(&shape), data).map_err(|e| layout_error(&name, e))
    }

    /// The column as an owned array. Zero-copy when it holds a caller's array of type `T`;
    /// otherwise the bytes are copied once into a new array.
    ///
    /// # Errors
    /// [`TableError::DTypeMismatch`] when `T` is not this column's type.
    pub fn into_array<T: Element>(self) -> Result<ArrayD<T>> {
        self.check::<T>()?;
        if self.storage.kind() == StorageKind::Array {
            // An `Array` storage holds `ArrayD<U>` with `U::DTYPE == self.dtype`, and each dtype has
            // one Rust type, so the check above makes this downcast succeed.
            let (column, actual) = (self.name, self.dtype);
            return self
                .storage
                .into_any()
                .downcast::<ArrayD<T>>()
                .map(|a| *a)
                .map_err(|_| {
                    Error::Table(TableError::DTypeMismatch {
                        column,
                        actual,
                        requested: T::DTYPE,
                    })
                });
        }
        Ok(self.view::<T>()?.to_owned())
    }

    fn layout_error(&self, e: impl fmt::Display) -> Error {
        layout_error(&self.name, e)
    }
}

fn layout_error(name: &str, e: impl fmt::Display) -> Error {
    Error::Table(TableError::Misaligned {
        column: name.to_string(),
        reason: e.to_string(),
    })
}

impl fmt::Debug for ColumnArray {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ColumnArray")
            .field("name", &self.name)
            .field("dtype", &self.dtype)
            .field("shape", &self.shape())
            .field("storage", &self.storage.kind())
            .finish()
    }
}

fn find<'c>(columns: &'c [ColumnArray], name: &str) -> Result<&'c ColumnArray> {
    columns
        .iter()
        .find(|c| c.name == name)
        .ok_or_else(|| unknown(columns, name))
}

fn take(columns: Vec<ColumnArray>, name: &str) -> Result<ColumnArray> {
    let err = unknown(&columns, name);
    columns.into_iter().find(|c| c.name == name).ok_or(err)
}

fn unknown(columns: &[ColumnArray], name: &str) -> Error {
    Error::Table(TableError::UnknownColumn {
        name: name.to_string(),
        available: columns.iter().map(|c| c.name.clone()).collect(),
    })
}

/// Which backend ran a drain.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Backend {
    /// Host threads.
    Cpu,
    /// The CUDA engine.
    Cuda,
}

impl Backend {
    /// `"cpu"` or `"cuda"`.
    pub fn name(self) -> &'static str {
        match self {
            Backend::Cpu => "cpu",
            Backend::Cuda => "cuda",
        }
    }
}

/// What a drain did.
#[derive(Debug, Clone, PartialEq)]
pub struct Report {
    /// The strategy that ran (after `Auto` chose).
    pub strategy: crate::Strategy,
    /// The backend that ran it.
    pub backend: Backend,
    /// Output rows.
    pub rows: usize,
    /// Output bytes written.
    pub bytes: u64,
    /// Wall time of the whole drain, allocation included.
    pub elapsed: Duration,
    /// The most host bytes the strategy's own buffers held at once (output included).
    pub peak_alloc_bytes: u64,
    /// The most device bytes the strategy allocated at once (CUDA only).
    pub peak_device_bytes: Option<u64>,
    /// Time spent allocating and pinning page-locked memory (CUDA `Pinned` only; zero when the
    /// pool already held it).
    pub pin_seconds: Option<f64>,
}

impl Report {
    /// What a drain of `rows` rows into `columns` did: their bytes, the wall time since
    /// `started`; no memory figures (see [`Report::with_peak_alloc`], [`Report::with_device`]).
    pub fn new(
        strategy: crate::Strategy,
        backend: Backend,
        rows: usize,
        columns: &[ColumnArray],
        started: Instant,
    ) -> Self {
        Report {
            strategy,
            backend,
            rows,
            bytes: columns.iter().map(|c| c.as_bytes().len() as u64).sum(),
            elapsed: started.elapsed(),
            peak_alloc_bytes: 0,
            peak_device_bytes: None,
            pin_seconds: None,
        }
    }

    /// With `bytes` written in place of the columns' bytes (a drain straight to files).
    pub fn with_bytes(mut self, bytes: u64) -> Self {
        self.bytes = bytes;
        self
    }

    /// With the most host bytes the strategy's buffers held at once.
    pub fn with_peak_alloc(mut self, bytes: u64) -> Self {
        self.peak_alloc_bytes = bytes;
        self
    }

    /// With the CUDA figures: the most device bytes allocated at once and, for `Pinned`, the
    /// time spent pinning.
    pub fn with_device(mut self, peak_device_bytes: u64, pin_seconds: Option<f64>) -> Self {
        self.peak_device_bytes = Some(peak_device_bytes);
        self.pin_seconds = pin_seconds;
        self
    }
}

/// The result of a drain: one array per column, in table order, and a [`Report`].
///
/// ```
/// use arraydrain::{Loader, Strategy, Table};
/// use ndarray::Array2;
///
/// let x = Array2::from_shape_fn((5, 2), |(i, j)| (i * 2 + j) as f32);
/// let table = Table::builder().view("x", x.view()).build()?;
/// let out = Loader::new(&table).batch_size(2).materialize(Strategy::Preallocated)?;
/// assert_eq!(out.view::<f32>("x")?, x.view().into_dyn());
/// assert!(out.view::<i64>("x").is_err()); // wrong dtype: an error, not a panic
/// # Ok::<(), arraydrain::Error>(())
/// ```
#[derive(Debug)]
pub struct Materialized {
    columns: Vec<ColumnArray>,
    report: Report,
}

impl Materialized {
    pub(crate) fn new(columns: Vec<ColumnArray>, report: Report) -> Self {
        Materialized { columns, report }
    }

    /// The columns, in order.
    pub fn columns(&self) -> &[ColumnArray] {
        &self.columns
    }

    /// The columns, writable (for preparing or poisoning an output before a drain).
    pub fn columns_mut(&mut self) -> &mut [ColumnArray] {
        &mut self.columns
    }

    /// Consumes the output into its columns.
    pub fn into_columns(self) -> Vec<ColumnArray> {
        self.columns
    }

    /// A column by name.
    ///
    /// # Errors
    /// [`TableError::UnknownColumn`].
    pub fn column(&self, name: &str) -> Result<&ColumnArray> {
        find(&self.columns, name)
    }

    /// Rows of the output.
    pub fn rows(&self) -> usize {
        self.report.rows
    }

    /// A typed view of a column.
    ///
    /// # Errors
    /// [`TableError::UnknownColumn`], [`TableError::DTypeMismatch`].
    pub fn view<T: Element>(&self, name: &str) -> Result<ArrayViewD<'_, T>> {
        self.column(name)?.view()
    }

    /// A column as an owned array (copied once unless it already is one of type `T`).
    ///
    /// # Errors
    /// [`TableError::UnknownColumn`], [`TableError::DTypeMismatch`].
    pub fn into_array<T: Element>(self, name: &str) -> Result<ArrayD<T>> {
        take(self.columns, name)?.into_array()
    }

    /// What the drain did.
    pub fn report(&self) -> &Report {
        &self.report
    }

    pub(crate) fn set_report(&mut self, report: Report) {
        self.report = report;
    }
}

/// One batch: one array per column, all with the same number of rows.
///
/// ```
/// use arraydrain::Batch;
/// use ndarray::{Array1, Array2};
///
/// let batch = Batch::new()
///     .with("x", Array2::<f32>::zeros((3, 4)))?
///     .with("y", Array1::<i64>::zeros(3))?;
/// assert_eq!(batch.rows(), Some(3));
/// # Ok::<(), arraydrain::Error>(())
/// ```
#[derive(Debug, Default)]
pub struct Batch {
    columns: Vec<ColumnArray>,
}

impl Batch {
    /// An empty batch.
    pub fn new() -> Self {
        Batch::default()
    }

    /// Adds a column, moving the array in (no copy for standard-layout arrays).
    ///
    /// # Errors
    /// [`TableError::NoRowAxis`], [`TableError::DuplicateColumn`]. Row counts are checked by the drain,
    /// which can name the batch.
    pub fn with<T: Element, D: Dimension>(
        mut self,
        name: &str,
        array: Array<T, D>,
    ) -> Result<Self> {
        self.push(ColumnArray::from_array(name, array)?)?;
        Ok(self)
    }

    /// Adds a column.
    ///
    /// # Errors
    /// [`TableError::DuplicateColumn`].
    pub fn push(&mut self, column: ColumnArray) -> Result<()> {
        if self.columns.iter().any(|c| c.name == column.name) {
            return Err(Error::Table(TableError::DuplicateColumn {
                name: column.name,
            }));
        }
        self.columns.push(column);
        Ok(())
    }

    /// The columns, in order.
    pub fn columns(&self) -> &[ColumnArray] {
        &self.columns
    }

    /// Rows of the first column (`None` for a batch without columns).
    pub fn rows(&self) -> Option<usize> {
        self.columns.first().map(|c| c.rows)
    }

    /// A column by name.
    ///
    /// # Errors
    /// [`TableError::UnknownColumn`].
    pub fn column(&self, name: &str) -> Result<&ColumnArray> {
        find(&self.columns, name)
    }

    /// A typed view of a column.
    ///
    /// # Errors
    /// [`TableError::UnknownColumn`], [`TableError::DTypeMismatch`].
    pub fn view<T: Element>(&self, name: &str) -> Result<ArrayViewD<'_, T>> {
        self.column(name)?.view()
    }

    /// A column as an owned array.
    ///
    /// # Errors
    /// [`TableError::UnknownColumn`], [`TableError::DTypeMismatch`].
    pub fn into_array<T: Element>(self, name: &str) -> Result<ArrayD<T>> {
        take(self.columns, name)?.into_array()
    }
}
