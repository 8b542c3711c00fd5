//! Device-resident tables: named columns in device memory sharing one row count, either
//! uploaded by the engine or adopted from the user's own `CudaSlice`s (no copy). Validated once,
//! here, like a host [`Table`](crate::Table); the pipeline relies on it.

use crate::table::TableError;
use std::fmt;
use std::sync::Arc;

use cudarc::driver::{CudaEvent, CudaSlice, CudaStream, DeviceRepr};

use super::current::RestoreOnDrop;
use super::device::cuda_err;
use super::memory::{bind_ctx, device_address, take_stale_error, DevBuf};
use crate::cuda::CudaError;
use crate::dtype::{DType, Element};
use crate::error::{Error, Result};
use crate::memory::checked_bytes;

/// Owned device memory behind a column: a `CudaSlice` of any element type, or an engine buffer.
trait DeviceBytes: Send + Sync {
    fn address(&self) -> u64;
    fn ordinal(&self) -> usize;
    fn stream(&self) -> Option<&Arc<CudaStream>>;
    /// The context and stream of a user's buffer (`None` for the engine's own).
    fn origin(&self) -> Option<Origin>;
    /// For memory lent to the engine: the event recorded on its producer's stream when it was
    /// lent, which the engine's streams wait for before their first read.
    fn ready(&self) -> Option<&CudaEvent> {
        None
    }
}

/// Where a user's device buffer was made, as far as the engine must order its work after it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Origin {
    /// The `CUcontext` handle.
    pub(crate) ctx: usize,
    /// Whether that context is the device's primary context.
    pub(crate) primary: bool,
    /// The `CUstream` handle of the buffer's stream.
    pub(crate) stream: usize,
}

/// `CU_STREAM_PER_THREAD`: the handle of the calling thread's default stream.
pub(crate) const PER_THREAD_STREAM: usize = 0x2;

/// Checks that the engine of device `engine_ordinal`, whose context handle is `engine_ctx`, can
/// order its work after a column of device `ordinal` made at `origin`.
///
/// # Errors
/// [`CudaError::WrongDevice`] for another device; [`CudaError::UnorderableColumn`] for a non-primary
/// context, another context, or the per-thread default stream.
pub(crate) fn check_origin(
    column: &str,
    engine_ordinal: usize,
    engine_ctx: usize,
    ordinal: usize,
    origin: Option<Origin>,
) -> Result<()> {
    if ordinal != engine_ordinal {
        return Err(Error::Cuda(CudaError::WrongDevice {
            expected: engine_ordinal,
            got: ordinal,
        }));
    }
    let Some(o) = origin else {
        return Ok(());
    };
    let reject = |reason: &str| {
        Err(Error::Cuda(CudaError::UnorderableColumn {
            column: column.to_string(),
            reason: reason.to_string(),
        }))
    };
    if !o.primary {
        return reject(
            "its buffer belongs to a non-primary context; the engine works in the device's \
             primary context (CudaContext::new)",
        );
    }
    if o.ctx != engine_ctx {
        return reject("its buffer belongs to another context than the engine's");
    }
    if o.stream == PER_THREAD_STREAM {
        return reject(
            "its buffer's stream is the per-thread default stream, which the engine cannot wait \
             for from its own threads; allocate it on a stream made with new_stream()",
        );
    }
    Ok(())
}

/// Checks that `len` bytes at `ptr`, which the driver describes as `info`, can be lent to the
/// engine of device `engine_ordinal` whose context handle is `engine_ctx`: memory of that device,
/// of the engine's context (or of no context: pool or virtual-memory allocations, usable from
/// every context of the device), and inside one allocation.
///
/// # Errors
/// [`CudaError::WrongDevice`]; [`CudaError::UnorderableColumn`] for memory of another context;
/// [`TableError::ByteLengthMismatch`](crate::table::TableError::ByteLengthMismatch) when the bytes run past the allocation.
pub(crate) fn check_lent(
    column: &str,
    engine_ordinal: usize,
    engine_ctx: usize,
    ptr: u64,
    len: usize,
    info: &super::memory::PointerInfo,
) -> Result<()> {
    if info.ordinal != engine_ordinal {
        return Err(Error::Cuda(CudaError::WrongDevice {
            expected: engine_ordinal,
            got: info.ordinal,
        }));
    }
    if info.ctx != 0 && info.ctx != engine_ctx {
        return Err(Error::Cuda(CudaError::UnorderableColumn {
            column: column.to_string(),
            reason: format!(
                "its memory belongs to another CUDA context ({:#x}) than the engine's, the \
                 device's primary context ({engine_ctx:#x}), which PyTorch also uses",
                info.ctx
            ),
        }));
    }
    let end = info.start.saturating_add(info.size);
    let available = end.saturating_sub(ptr);
    if ptr < info.start || (len as u64) > available {
        return Err(Error::Table(TableError::ByteLengthMismatch {
            column: column.to_string(),
            expected: len,
            got: usize::try_from(available).unwrap_or(usize::MAX),
        }));
    }
    Ok(())
}

/// Most allocations a lent range may span (see [`lent_extent`]).
pub(crate) const MAX_LENT_CHUNKS: usize = 4096;

/// How far device memory runs on from `first`'s allocation, up to `end`: a range mapped in
/// several pieces one after another (PyTorch's expandable segments map physical chunks into one
/// reserved range, and the driver describes each chunk as an allocation of its own) is followed
/// from piece to piece — each on `first`'s device, starting where the previous one ends — for
/// at most [`MAX_LENT_CHUNKS`] pieces. `info_at` asks the driver about an address (`None`: not
/// device memory). Returns `first` with its size grown to what is covered.
pub(crate) fn lent_extent(
    first: &super::memory::PointerInfo,
    end: u64,
    info_at: impl Fn(u64) -> Option<super::memory::PointerInfo>,
) -> super::memory::PointerInfo {
    let mut covered = first.start.saturating_add(first.size);
    for _ in 0..MAX_LENT_CHUNKS {
        if covered >= end {
            break;
        }
        match info_at(covered) {
            Some(next)
                if next.ordinal == first.ordinal && next.start == covered && next.size > 0 =>
            {
                covered = covered.saturating_add(next.size);
            }
            _ => break,
        }
    }
    super::memory::PointerInfo {
        size: covered - first.start,
        ..*first
    }
}

impl<T: DeviceRepr + 'static> DeviceBytes for CudaSlice<T> {
    fn address(&self) -> u64 {
        device_address(self)
    }
    fn ordinal(&self) -> usize {
        CudaSlice::ordinal(self)
    }
    fn stream(&self) -> Option<&Arc<CudaStream>> {
        Some(CudaSlice::stream(self))
    }
    fn origin(&self) -> Option<Origin> {
        let ctx = CudaSlice::context(self);
        Some(Origin {
            ctx: ctx.cu_ctx() as usize,
            primary: ctx.is_primary(),
            stream: CudaSlice::stream(self).cu_stream() as usize,
        })
    }
}

/// An engine-made buffer (an upload), already synchronised.
struct Uploaded {
    buf: DevBuf,
    ordinal: usize,
}

impl DeviceBytes for Uploaded {
    fn address(&self) -> u64 {
        self.buf.ptr()
    }
    fn ordinal(&self) -> usize {
        self.ordinal
    }
    fn stream(&self) -> Option<&Arc<CudaStream>> {
        None
    }
    fn origin(&self) -> Option<Origin> {
        None
    }
}

/// Device memory lent to the engine by its owner (e.g. a PyTorch tensor's storage): the engine
/// reads it in place and never frees it. `owner` keeps it alive for as long as the column
/// lives; `ready` marks the producer's work on it (see `CudaEngine::borrow_column`).
struct Borrowed {
    ptr: u64,
    ordinal: usize,
    ready: CudaEvent,
    _owner: Box<dyn std::any::Any + Send + Sync>,
}

impl DeviceBytes for Borrowed {
    fn address(&self) -> u64 {
        self.ptr
    }
    fn ordinal(&self) -> usize {
        self.ordinal
    }
    fn stream(&self) -> Option<&Arc<CudaStream>> {
        None
    }
    fn origin(&self) -> Option<Origin> {
        // Checked against the engine's device and context when it was lent.
        None
    }
    fn ready(&self) -> Option<&CudaEvent> {
        Some(&self.ready)
    }
}

/// One named column in device memory: dtype, row shape, and `rows × row_bytes` bytes starting
/// `offset` bytes into a device buffer it owns.
pub struct DeviceColumn {
    name: String,
    dtype: DType,
    row_shape: Vec<usize>,
    rows: usize,
    row_bytes: usize,
    offset: usize,
    buf: Box<dyn DeviceBytes>,
    /// Last: the caller's current context comes back after `buf` is freed.
    restore: RestoreOnDrop,
}

impl Drop for DeviceColumn {
    fn drop(&mut self) {
        // Freeing the buffer happens after this body, when the fields drop (cudarc frees a
        // user's slice without binding its context: it is made current here; the engine's own
        // buffers bind theirs); `restore`, the last field, puts the caller's context back.
        self.restore.arm();
        if let Some(s) = self.buf.stream() {
            let _ = bind_ctx(s.context());
        }
    }
}

impl DeviceColumn {
    /// A column over a whole device buffer of raw bytes (any element type `T`; its bytes are
    /// the column's row-major bytes).
    ///
    /// # Errors
    /// [`TableError::ByteLengthMismatch`] unless the buffer holds exactly
    /// `rows × prod(row_shape) × dtype size` bytes.
    pub fn new<T: DeviceRepr + 'static>(
        name: impl Into<String>,
        dtype: DType,
        row_shape: &[usize],
        rows: usize,
        slice: CudaSlice<T>,
    ) -> Result<Self> {
        let name = name.into();
        let row_bytes = row_bytes(&name, &dtype, row_shape)?;
        let expected = checked_bytes(&[row_bytes, rows], &name)?;
        if slice.num_bytes() != expected {
            return Err(Error::Table(TableError::ByteLengthMismatch {
                column: name,
                expected,
                got: slice.num_bytes(),
            }));
        }
        Ok(Self::checked(
            name,
            dtype,
            row_shape,
            rows,
            row_bytes,
            0,
            Box::new(slice),
        ))
    }

    /// A column over a typed device buffer: the dtype is `T`'s, the rows are
    /// `slice.len() / prod(row_shape)`.
    ///
    /// # Errors
    /// [`TableError::ByteLengthMismatch`] when the length is not a whole number of rows.
    pub fn typed<T: Element + DeviceRepr>(
        name: impl Into<String>,
        row_shape: &[usize],
        slice: CudaSlice<T>,
    ) -> Result<Self> {
        let name = name.into();
        let per_row: usize = row_shape.iter().product();
        let rows = slice.len().checked_div(per_row).unwrap_or(0);
        Self::new(name, T::DTYPE, row_shape, rows, slice)
    }

    /// A column occupying bytes `offset .. offset + rows × row_bytes` of a larger device byte
    /// buffer (e.g. several columns packed in one allocation). The offset need not be aligned:
    /// the gather kernel narrows its vector width to what the addresses allow.
    ///
    /// # Errors
    /// [`TableError::ByteLengthMismatch`] when the range does not fit in the buffer.
    pub fn with_offset<T: DeviceRepr + 'static>(
        name: impl Into<String>,
        dtype: DType,
        row_shape: &[usize],
        rows: usize,
        slice: CudaSlice<T>,
        offset: usize,
    ) -> Result<Self> {
        let name = name.into();
        let row_bytes = row_bytes(&name, &dtype, row_shape)?;
        let bytes = checked_bytes(&[row_bytes, rows], &name)?;
        let end = offset
            .checked_add(bytes)
            .ok_or_else(|| Error::alloc(u128::MAX, &name, "size overflows"))?;
        if end > slice.num_bytes() {
            return Err(Error::Table(TableError::ByteLengthMismatch {
                column: name,
                expected: end,
                got: slice.num_bytes(),
            }));
        }
        Ok(Self::checked(
            name,
            dtype,
            row_shape,
            rows,
            row_bytes,
            offset,
            Box::new(slice),
        ))
    }

    pub(crate) fn uploaded(
        name: &str,
        dtype: DType,
        row_shape: &[usize],
        rows: usize,
        row_bytes: usize,
        buf: DevBuf,
        ordinal: usize,
    ) -> Self {
        Self::checked(
            name.to_string(),
            dtype,
            row_shape,
            rows,
            row_bytes,
            0,
            Box::new(Uploaded { buf, ordinal }),
        )
    }

    /// A column over `rows × row_bytes` bytes at device address `ptr` that someone else owns
    /// (see `CudaEngine::borrow_column`, which checks the address and records `ready`).
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn borrowed(
        name: String,
        dtype: DType,
        row_shape: &[usize],
        rows: usize,
        row_bytes: usize,
        ptr: u64,
        ordinal: usize,
        ready: CudaEvent,
        owner: Box<dyn std::any::Any + Send + Sync>,
    ) -> Self {
        Self::checked(
            name,
            dtype,
            row_shape,
            rows,
            row_bytes,
            0,
            Box::new(Borrowed {
                ptr,
                ordinal,
                ready,
                _owner: owner,
            }),
        )
    }

    fn checked(
        name: String,
        dtype: DType,
        row_shape: &[usize],
        rows: usize,
        row_bytes: usize,
        offset: usize,
        buf: Box<dyn DeviceBytes>,
    ) -> Self {
        DeviceColumn {
            name,
            dtype,
            row_shape: row_shape.to_vec(),
            rows,
            row_bytes,
            offset,
            buf,
            restore: RestoreOnDrop::default(),
        }
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

    /// Rows.
    pub fn rows(&self) -> usize {
        self.rows
    }

    /// Bytes per row.
    pub fn row_bytes(&self) -> usize {
        self.row_bytes
    }

    /// Bytes of all rows.
    pub fn bytes(&self) -> usize {
        self.rows * self.row_bytes
    }

    /// The device this column's memory belongs to.
    pub fn ordinal(&self) -> usize {
        self.buf.ordinal()
    }

    /// Checks that the engine of device `engine_ordinal` with context handle `engine_ctx` can
    /// order its work after this column (see [`check_origin`]).
    pub(crate) fn check_usable(&self, engine_ordinal: usize, engine_ctx: usize) -> Result<()> {
        check_origin(
            &self.name,
            engine_ordinal,
            engine_ctx,
            self.ordinal(),
            self.buf.origin(),
        )
    }

    /// Clears an error cudarc stored in the column's context before the engine touched it
    /// (see `DeviceTable::discard_earlier_source_errors`).
    pub(crate) fn discard_earlier_source_error(&self) {
        if let Some(s) = self.buf.stream() {
            let _earlier = take_stale_error(s.context());
        }
    }

    /// The device address of row 0.
    pub(crate) fn address(&self) -> u64 {
        self.buf.address() + self.offset as u64
    }

    /// For lent memory ([`CudaEngine::borrow_column`](super::CudaEngine::borrow_column)): the
    /// event after which its producer's writes are complete.
    pub(crate) fn ready_event(&self) -> Option<&CudaEvent> {
        self.buf.ready()
    }

    /// Whether the engine reads this column's memory in place without owning it.
    pub fn is_borrowed(&self) -> bool {
        self.buf.ready().is_some()
    }

    /// The stream the user's buffer was made on (`None` for the engine's own uploads).
    pub(crate) fn source_stream(&self) -> Option<&Arc<CudaStream>> {
        self.buf.stream()
    }

    /// Waits (on the host) until work queued on the buffer's own stream — e.g. the kernel that
    /// produced it — has finished.
    pub(crate) fn sync_source(&self) -> Result<()> {
        if let Some(s) = self.buf.stream() {
            // For a slice whose context tracks events, asking for its address makes its own
            // stream wait for its last write, which may have been queued on another stream;
            // without this the synchronize below would not cover that write.
            let _ = self.buf.address();
            s.synchronize()
                .map_err(cuda_err(format!("waiting for column {:?}", self.name)))?;
        }
        Ok(())
    }
}

fn row_bytes(name: &str, dtype: &DType, row_shape: &[usize]) -> Result<usize> {
    let mut parts = row_shape.to_vec();
    parts.push(dtype.size());
    checked_bytes(&parts, name)
}

impl fmt::Debug for DeviceColumn {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DeviceColumn")
            .field("name", &self.name)
            .field("dtype", &self.dtype)
            .field("row_shape", &self.row_shape)
            .field("rows", &self.rows)
            .field("offset", &self.offset)
            .field("device", &self.ordinal())
            .finish()
    }
}

/// Named device columns sharing one row count, on one device. Made by
/// [`CudaEngine::upload`](super::CudaEngine::upload) or
/// [`CudaEngine::wrap`](super::CudaEngine::wrap).
#[derive(Debug)]
pub struct DeviceTable {
    columns: Vec<DeviceColumn>,
    rows: usize,
    ordinal: usize,
}

impl DeviceTable {
    /// Validates like [`Table::new`](crate::Table::new), plus: every column on `ordinal`, in the
    /// context `ctx` (the engine's; see [`check_origin`]).
    pub(crate) fn new(columns: Vec<DeviceColumn>, ordinal: usize, ctx: usize) -> Result<Self> {
        let Some(first) = columns.first() else {
            return Err(Error::Table(TableError::EmptyTable));
        };
        let rows = first.rows;
        for (i, c) in columns.iter().enumerate() {
            if columns[..i].iter().any(|p| p.name == c.name) {
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
            c.check_usable(ordinal, ctx)?;
        }
        Ok(DeviceTable {
            columns,
            rows,
            ordinal,
        })
    }

    /// Rows shared by all columns.
    pub fn rows(&self) -> usize {
        self.rows
    }

    /// The columns, in order.
    pub fn columns(&self) -> &[DeviceColumn] {
        &self.columns
    }

    /// A column by name.
    ///
    /// # Errors
    /// [`TableError::UnknownColumn`].
    pub fn column(&self, name: &str) -> Result<&DeviceColumn> {
        self.columns.iter().find(|c| c.name == name).ok_or_else(|| {
            Error::Table(TableError::UnknownColumn {
                name: name.to_string(),
                available: self.columns.iter().map(|c| c.name.clone()).collect(),
            })
        })
    }

    /// Bytes of one row over all columns.
    pub fn row_bytes(&self) -> usize {
        self.columns.iter().map(|c| c.row_bytes).sum()
    }

    /// The device the table lives on.
    pub fn ordinal(&self) -> usize {
        self.ordinal
    }

    /// Takes the first error cudarc stored in a user column's context while the engine read
    /// the column: asking a `CudaSlice` for its address records its read event inside cudarc
    /// (in a `Drop`), and a failure there is only stored, to surface in the user's next,
    /// unrelated call. The engine reports it as the error of the call that caused it (found by
    /// the fault sweep of tests/cudasim_faults.rs under the CUDA simulator).
    /// Clears, without reporting them, the errors cudarc stored in the columns' contexts before
    /// this call touched them (for example a failed free of some unrelated buffer of the
    /// user's): they are not this call's failure. What is stored from here on is (see
    /// `take_source_errors`).
    pub(crate) fn discard_earlier_source_errors(&self) {
        for c in &self.columns {
            c.discard_earlier_source_error();
        }
    }

    pub(crate) fn take_source_errors(&self, what: &str) -> Result<()> {
        let mut first = None;
        for c in &self.columns {
            if let Some(s) = c.source_stream() {
                if let Some(e) = take_stale_error(s.context()) {
                    first.get_or_insert(e);
                }
            }
        }
        match first {
            Some(e) => Err(cuda_err(format!("{what}: reading a user column's buffer"))(
                e,
            )),
            None => Ok(()),
        }
    }

    /// Makes each of `streams` wait (on the device, not the host) for the producers of the
    /// table's lent columns: the event recorded on each one's producer stream when it was lent.
    /// Called before a drain's first read of the table.
    pub(crate) fn order_after_producers<'a>(
        &self,
        streams: impl IntoIterator<Item = &'a Arc<CudaStream>>,
    ) -> Result<()> {
        let events: Vec<&CudaEvent> = self
            .columns
            .iter()
            .filter_map(|c| c.ready_event())
            .collect();
        if events.is_empty() {
            return Ok(());
        }
        for s in streams {
            for ev in &events {
                s.wait(ev).map_err(cuda_err(
                    "ordering the engine after a lent column's producer",
                ))?;
            }
        }
        Ok(())
    }

    /// Gives the columns back (e.g. to reuse the user's buffers).
    pub fn into_columns(self) -> Vec<DeviceColumn> {
        self.columns
    }
}

/// One batch of device columns, as a user's GPU data loader yields it, for
/// [`CudaEngine::drain_device`](super::CudaEngine::drain_device).
#[derive(Debug, Default)]
pub struct DeviceBatch {
    columns: Vec<DeviceColumn>,
}

impl DeviceBatch {
    /// An empty batch.
    pub fn new() -> Self {
        DeviceBatch::default()
    }

    /// Adds a column.
    ///
    /// # Errors
    /// [`TableError::DuplicateColumn`]. Row counts are checked by the drain, which can name the batch.
    pub fn with(mut self, column: DeviceColumn) -> Result<Self> {
        self.push(column)?;
        Ok(self)
    }

    /// Adds a column.
    ///
    /// # Errors
    /// [`TableError::DuplicateColumn`].
    pub fn push(&mut self, column: DeviceColumn) -> Result<()> {
        if self.columns.iter().any(|c| c.name == column.name) {
            return Err(Error::Table(TableError::DuplicateColumn {
                name: column.name.clone(),
            }));
        }
        self.columns.push(column);
        Ok(())
    }

    /// The columns.
    pub fn columns(&self) -> &[DeviceColumn] {
        &self.columns
    }

    /// A column by name.
    pub fn column(&self, name: &str) -> Option<&DeviceColumn> {
        self.columns.iter().find(|c| c.name == name)
    }

    /// Rows of the first column.
    pub fn rows(&self) -> Option<usize> {
        self.columns.first().map(|c| c.rows)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_lent_range_mapped_in_pieces_is_followed_from_piece_to_piece() {
        use super::super::memory::PointerInfo;
        let piece = |start: u64, ordinal: usize| PointerInfo {
            ctx: 0,
            ordinal,
            start,
            size: 0x1000,
        };
        // Three pieces one after another on device 0, then nothing.
        let mapped = |a: u64| {
            (0x10_0000..0x10_3000)
                .contains(&a)
                .then(|| piece(a & !0xfff, 0))
        };
        let first = piece(0x10_0000, 0);
        assert_eq!(
            lent_extent(&first, 0x10_0800, mapped).size,
            0x1000,
            "one piece enough"
        );
        assert_eq!(lent_extent(&first, 0x10_2800, mapped).size, 0x3000);
        assert_eq!(
            lent_extent(&first, 0x10_5000, mapped).size,
            0x3000,
            "stops at a hole"
        );
        // A piece of another device, or one that does not start where the last ends, stops it.
        let other = |a: u64| Some(piece(a, 1));
        assert_eq!(lent_extent(&first, 0x10_2000, other).size, 0x1000);
        let overlapping = |a: u64| Some(piece(a - 0x800, 0));
        assert_eq!(lent_extent(&first, 0x10_2000, overlapping).size, 0x1000);
        // Bounded: at most MAX_LENT_CHUNKS pieces are followed.
        let endless = |a: u64| Some(piece(a, 0));
        let far = lent_extent(&first, u64::MAX, endless);
        assert_eq!(far.size, 0x1000 * (MAX_LENT_CHUNKS as u64 + 1));
    }

    #[test]
    fn lent_memory_of_another_device_context_or_past_its_allocation_is_refused() {
        use super::super::memory::PointerInfo;
        let info = PointerInfo {
            ctx: 0x1000,
            ordinal: 0,
            start: 0x10_0000,
            size: 4096,
        };
        assert!(check_lent("x", 0, 0x1000, 0x10_0000, 4096, &info).is_ok());
        assert!(check_lent("x", 0, 0x1000, 0x10_0800, 2048, &info).is_ok());
        // Pool and virtual-memory allocations belong to no context: any of the device's.
        let pooled = PointerInfo { ctx: 0, ..info };
        assert!(check_lent("x", 0, 0x1000, 0x10_0000, 16, &pooled).is_ok());
        match check_lent("x", 1, 0x1000, 0x10_0000, 16, &info).unwrap_err() {
            Error::Cuda(CudaError::WrongDevice { expected, got }) => {
                assert_eq!((expected, got), (1, 0))
            }
            e => panic!("{e}"),
        }
        match check_lent("x", 0, 0x2000, 0x10_0000, 16, &info).unwrap_err() {
            Error::Cuda(CudaError::UnorderableColumn { column, reason }) => {
                assert_eq!(column, "x");
                assert!(reason.contains("another CUDA context"), "{reason}");
            }
            e => panic!("{e}"),
        }
        match check_lent("x", 0, 0x1000, 0x10_0800, 2049, &info).unwrap_err() {
            Error::Table(TableError::ByteLengthMismatch {
                column,
                expected,
                got,
            }) => assert_eq!((column.as_str(), expected, got), ("x", 2049, 2048)),
            e => panic!("{e}"),
        }
    }

    #[test]
    fn columns_the_engine_cannot_order_are_rejected() {
        let ok = Origin {
            ctx: 0x1000,
            primary: true,
            stream: 0x5000,
        };
        assert!(check_origin("x", 0, 0x1000, 0, Some(ok)).is_ok());
        assert!(
            check_origin("x", 0, 0x1000, 0, None).is_ok(),
            "the engine's own"
        );
        // The legacy default stream (null) is ordered by events like any other.
        let legacy = Origin { stream: 0, ..ok };
        assert!(check_origin("x", 0, 0x1000, 0, Some(legacy)).is_ok());
        let e = check_origin("x", 0, 0x1000, 1, Some(ok)).unwrap_err();
        assert!(
            matches!(
                e,
                Error::Cuda(CudaError::WrongDevice {
                    expected: 0,
                    got: 1
                })
            ),
            "{e}"
        );
        for (bad, what) in [
            (
                Origin {
                    primary: false,
                    ..ok
                },
                "non-primary",
            ),
            (Origin { ctx: 0x2000, ..ok }, "another context"),
            (
                Origin {
                    stream: PER_THREAD_STREAM,
                    ..ok
                },
                "per-thread",
            ),
        ] {
            let e = check_origin("x", 0, 0x1000, 0, Some(bad)).unwrap_err();
            match e {
                Error::Cuda(CudaError::UnorderableColumn { column, reason }) => {
                    assert_eq!(column, "x");
                    assert!(reason.contains(what), "{what}: {reason}");
                }
                other => panic!("{what}: {other}"),
            }
        }
    }
}
