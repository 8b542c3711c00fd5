//! [`CudaEngine`]: one device context, its streams, the loaded kernels and a pinned-memory
//! pool; the entry points that upload or adopt device tables and drain them into host arrays.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use cudarc::driver::{CudaContext, CudaEvent, CudaStream};

use super::checkout::{Checkout, Held};
use super::classic;
use super::current::{ContextGuard, RestoreOnDrop};
use super::device::{self, catch, cuda_err};
use super::kernels::Kernels;
use super::memory::{
    auto_pin_budget, bind_ctx, dtoh_async, htod_async, pointer_info, take_stale_error,
    wait_context, wait_event, wait_stream, DevBuf, PinnedAlloc, PinnedPool,
};
use super::pipeline::{self, Lane, LaneGuard, Plan, LANES};
use super::table::{check_lent, lent_extent, DeviceBatch, DeviceColumn, DeviceTable};
use super::CudaInfo;
use crate::batch::Batches;
use crate::cuda::CudaError;
use crate::dtype::DType;
use crate::error::{Error, Result};
use crate::gather::Strategy;
use crate::memory::{checked_bytes, AllocCounter, HostBuf};
use crate::output::{Backend, ColumnArray, Materialized, Report, StorageKind};
use crate::sysmem::MemoryLimits;
use crate::table::Table;

/// Device batches a drain may hold while their copies are in flight.
const MAX_IN_FLIGHT: usize = 4 * LANES;

/// Idle lane sets an engine keeps (each call takes one; concurrent or nested calls make more).
const KEEP_LANE_SETS: usize = 2;

/// The CUDA engine of one device.
///
/// ```no_run
/// use arraydrain::cuda::CudaEngine;
/// use arraydrain::{Batches, Indices, Order, Strategy, Table};
/// use ndarray::Array2;
///
/// let x = Array2::from_shape_fn((100_000, 32), |(i, j)| (i + j) as f32);
/// let table = Table::builder().view("x", x.view()).build()?;
/// let engine = CudaEngine::new(0)?;
/// let on_device = engine.upload(&table)?;
/// let order = Indices::resolve(&Order::Shuffle { seed: 7 }, None, false, table.rows())?;
/// let out = engine.materialize(&on_device, &Batches::new(order, 256, false)?, Strategy::Pinned)?;
/// assert_eq!(out.view::<f32>("x")?.shape(), &[100_000, 32]);
/// # Ok::<(), arraydrain::Error>(())
/// ```
pub struct CudaEngine {
    info: CudaInfo,
    /// The engine's own handle on the device's primary context, with cudarc's event tracking
    /// off: the engine orders its own work (lanes never share buffers; see `pipeline`). Never
    /// handed out: a user's buffer made here would carry no events, and could be freed under a
    /// write queued on another stream.
    ctx: Arc<CudaContext>,
    /// A second handle on the same primary context, with event tracking on, for users.
    user_ctx: Arc<CudaContext>,
    user_stream: Arc<CudaStream>,
    kernels: Kernels,
    /// Lane sets, one taken per call for its length (see `checkout`).
    lanes: Checkout<Vec<Lane>>,
    pool: PinnedPool,
    /// `None`: the automatic budget ([`CudaEngine::pin_budget`]).
    pin_budget: Mutex<Option<usize>>,
    /// Last: the caller's current context comes back after the fields above free the engine's
    /// device and pinned memory.
    restore: RestoreOnDrop,
}

impl Drop for CudaEngine {
    fn drop(&mut self) {
        self.restore.arm();
        // The fields free device memory, streams, events and the module after this body, with
        // the engine's context current; `restore`, the last field, puts the caller's back.
        let _ = bind_ctx(&self.ctx);
    }
}

impl CudaEngine {
    /// Opens device `ordinal`: probes the driver, creates the context, compiles (once per
    /// process) and loads the kernels, creates the streams.
    ///
    /// # Errors
    /// [`CudaError::Unavailable`] (no driver library, no such device, driver too old, no
    /// libnvrtc), [`CudaError::KernelCompile`], [`Error::Cuda`]. Never panics.
    pub fn new(ordinal: usize) -> Result<CudaEngine> {
        let _current = ContextGuard::save();
        let (info, ctx) = device::open(ordinal)?;
        let user_ctx = device::open_context(ordinal)?;
        catch("opening the CUDA engine", || {
            // SAFETY: called before this context handle has made any stream or buffer, so no
            // buffer of the engine is half tracked. From here on the engine orders all of its
            // work itself: lanes never share buffers, shared inputs (tables) are synchronised
            // before use, and every drain waits for its streams before returning (see
            // `pipeline`). `ctx` is a handle of its own (event tracking is a flag of the handle,
            // not of the driver's context): users get `user_ctx`, whose tracking stays on.
            unsafe { ctx.disable_event_tracking() };
            let kernels = Kernels::load(&ctx, &info.arch(), info.driver_version)?;
            let lanes = new_lanes(&ctx)?;
            let user_stream = user_ctx
                .new_stream()
                .map_err(cuda_err("creating a stream"))?;
            Ok(CudaEngine {
                pool: PinnedPool::new(Arc::clone(&ctx)),
                pin_budget: Mutex::new(None),
                info: info.clone(),
                ctx: Arc::clone(&ctx),
                user_ctx: Arc::clone(&user_ctx),
                user_stream,
                kernels,
                lanes: Checkout::new(vec![lanes], KEEP_LANE_SETS),
                restore: RestoreOnDrop::default(),
            })
        })
    }

    /// What the device is.
    pub fn info(&self) -> &CudaInfo {
        &self.info
    }

    /// A handle on the device's primary context — the context the engine works in — with
    /// cudarc's event tracking on: buffers made through it are safe to use across streams.
    pub fn context(&self) -> &Arc<CudaContext> {
        &self.user_ctx
    }

    /// A stream of [`CudaEngine::context`] for the caller's own work (e.g. making the device
    /// columns handed to [`CudaEngine::wrap`]); the engine does not use it.
    pub fn stream(&self) -> &Arc<CudaStream> {
        &self.user_stream
    }

    /// The engine's own handle on the context (event tracking off), for the engine's modules.
    pub(super) fn own_context(&self) -> &Arc<CudaContext> {
        &self.ctx
    }

    /// The pool of pinned memory behind pinned outputs.
    pub fn pinned_pool(&self) -> &PinnedPool {
        &self.pool
    }

    /// The largest output `Pinned` pins whole; larger outputs run staged. By default it is
    /// read at each drain: half the memory this process may use (the cgroup limit and
    /// `MemTotal`), at most three quarters of what is available now (`MemAvailable`, the
    /// cgroup's free memory).
    pub fn pin_budget(&self) -> usize {
        let set = *self.pin_budget.lock().unwrap_or_else(|p| p.into_inner());
        set.unwrap_or_else(|| auto_pin_budget(&MemoryLimits::read()))
    }

    /// Sets [`CudaEngine::pin_budget`] (0 forces the staged mode, `usize::MAX` always tries to
    /// pin).
    pub fn set_pin_budget(&self, bytes: usize) {
        *self.pin_budget.lock().unwrap_or_else(|p| p.into_inner()) = Some(bytes);
    }

    /// The release threshold of the device's stream-ordered memory pool in bytes (`None` when
    /// the device has no memory pools). The classic recipes raise it to `u64::MAX` while they
    /// run (so freed batches are reused, as a caching allocator would); when the last running
    /// one ends, the value from before the first is restored.
    ///
    /// # Errors
    /// [`Error::Cuda`].
    pub fn mem_pool_release_threshold(&self) -> Result<Option<u64>> {
        let _current = ContextGuard::save();
        self.guarded("reading the memory pool", || {
            classic::release_threshold(&self.ctx)
        })
    }

    /// A lane set for one call, idle or new.
    fn lanes(&self) -> Result<Held<'_, Vec<Lane>>> {
        self.lanes.take(|| new_lanes(&self.ctx))
    }

    /// Runs `f` under `catch_unwind`; after a panic, waits for the device before returning so
    /// nothing it started outlives the buffers being dropped.
    fn guarded<T>(&self, what: &str, f: impl FnOnce() -> Result<T>) -> Result<T> {
        // The engine's context is made current for the call (the caller's comes back through
        // the entry point's `ContextGuard`): cudarc's stream-ordered allocations and the raw
        // calls need a current context, and a thread may have none, or another.
        let r = catch(what, || {
            bind_ctx(&self.ctx)?;
            f()
        });
        if let Err(Error::Cuda(CudaError::Driver { message, .. })) = &r {
            if message.starts_with("panic") {
                let _ = wait_context(&self.ctx);
            }
        }
        r
    }

    /// Times the GPU floor: one device→host copy of `bytes` bytes from a contiguous device
    /// buffer into pinned, cacheable host memory, waited for; a warm-up copy, then `repeat`
    /// timed ones (seconds each). The buffers are freed before it returns.
    ///
    /// # Errors
    /// [`CudaError::OutOfMemory`], [`Error::HostAllocation`], [`Error::Cuda`].
    pub fn time_d2h_pinned(&self, bytes: usize, repeat: usize) -> Result<Vec<f64>> {
        let _current = ContextGuard::save();
        self.guarded("timing the device→host floor", || {
            let lanes = self.lanes()?;
            let stream = &lanes[0].stream;
            let dev = DevBuf::alloc(stream, bytes, "the floor's device buffer", None)?;
            let host = PinnedAlloc::new(&self.ctx, bytes)?;
            let guard = LaneGuard::new(vec![Arc::clone(stream)]);
            // SAFETY (dtod_async's sibling memset): `dev` holds `bytes` device bytes of this
            // stream, used by nothing else.
            unsafe { super::memory::memset_async(dev.ptr(), 0, bytes, stream)? };
            let copy = || -> Result<()> {
                // SAFETY (dtoh_async): 1. `dev` holds `bytes` device bytes of this stream,
                // cleared above in order; 2. `host` is pinned, holds ≥ `bytes` bytes, read by no
                // one, and the stream is waited for right after; 3. bound by `dtoh_async`.
                unsafe { dtoh_async(host.as_ptr(), dev.ptr(), bytes, stream)? };
                wait_stream(stream)
            };
            copy()?;
            let mut runs = Vec::with_capacity(repeat.max(1));
            for _ in 0..repeat.max(1) {
                let t = Instant::now();
                copy()?;
                runs.push(t.elapsed().as_secs_f64());
            }
            guard.finish()?;
            Ok(runs)
        })
    }

    /// Copies a host table to the device once (one buffer per column).
    ///
    /// # Errors
    /// [`CudaError::OutOfMemory`], [`Error::Cuda`].
    pub fn upload(&self, table: &Table<'_>) -> Result<DeviceTable> {
        let _current = ContextGuard::save();
        self.guarded("uploading a table", || {
            let lanes = self.lanes()?;
            let stream = &lanes[0].stream;
            let guard = LaneGuard::new(vec![Arc::clone(stream)]);
            let mut columns = Vec::with_capacity(table.columns().len());
            for c in table.columns() {
                let bytes = c.bytes();
                let buf = DevBuf::alloc(stream, bytes.len(), c.name(), None)?;
                // SAFETY (htod_async): 1. `buf` holds bytes.len() bytes, new, of this stream;
                // 2. the host bytes are borrowed from `table` for this whole call and the
                // stream is synchronised (guard) before it returns; 3. bound by `htod_async`.
                unsafe { htod_async(buf.ptr(), bytes.as_ptr(), bytes.len(), stream)? };
                columns.push(DeviceColumn::uploaded(
                    c.name(),
                    c.dtype(),
                    c.row_shape(),
                    c.rows(),
                    c.row_bytes(),
                    buf,
                    self.info.ordinal,
                ));
            }
            // The columns are complete (and their stream-ordered allocation visible to every
            // stream) once this returns.
            guard.finish()?;
            DeviceTable::new(columns, self.info.ordinal, self.ctx_handle())
        })
    }

    /// The engine's `CUcontext` handle, to compare columns' contexts with.
    fn ctx_handle(&self) -> usize {
        self.ctx.cu_ctx() as usize
    }

    /// Adopts columns already on the device (the user's `CudaSlice`s, moved in), without a
    /// copy. Validates like [`Table::new`], checks every column is on this engine's device and
    /// in its context (the device's primary context) on a stream it can wait for, and waits for
    /// work pending on the columns' own streams.
    ///
    /// # Errors
    /// [`TableError::EmptyTable`](crate::TableError::EmptyTable), [`TableError::DuplicateColumn`](crate::TableError::DuplicateColumn), [`TableError::RowCountMismatch`](crate::TableError::RowCountMismatch),
    /// [`CudaError::WrongDevice`], [`CudaError::UnorderableColumn`], [`Error::Cuda`].
    pub fn wrap(&self, columns: Vec<DeviceColumn>) -> Result<DeviceTable> {
        let _current = ContextGuard::save();
        self.guarded("adopting device columns", || {
            let table = DeviceTable::new(columns, self.info.ordinal, self.ctx_handle())?;
            table.discard_earlier_source_errors();
            for c in table.columns() {
                c.sync_source()?;
            }
            table.take_source_errors("adopting device columns")?;
            Ok(table)
        })
    }

    /// A column over device memory someone else owns — a PyTorch tensor's storage, a buffer of
    /// another library — read in place: the engine never copies it first and never frees it.
    /// `ptr` is the address of row 0 of `rows` rows of `row_shape` × `dtype`, stored row-major
    /// and contiguous; `owner` is kept with the column (and dropped with it) to keep the memory
    /// alive, e.g. a reference to the tensor.
    ///
    /// The driver is asked (`cuPointerGetAttribute`) which device and context the memory
    /// belongs to and how large its allocation is: memory of another device, of another context
    /// than the engine's (the device's primary context, the one PyTorch uses), or bytes past the
    /// end of the device memory mapped there are refused (a range mapped in pieces, as PyTorch's
    /// expandable segments are, is followed from piece to piece). An event is recorded now on `producer`, the stream
    /// the memory was written on (PyTorch's current stream: `torch.cuda.current_stream(dev)
    /// .cuda_stream`; 0 for the legacy default stream, 2 for the calling thread's per-thread
    /// default stream), and every stream of the engine that reads the column waits for that
    /// event on the device first: work queued on `producer` before this call is complete before
    /// the first read, without a device-wide synchronisation.
    ///
    /// # Correctness
    /// The bytes read are the lender's as long as: `ptr .. ptr + rows × row bytes` stays
    /// allocated, and unwritten, for as long as the returned column (or a table or batch holding
    /// it) lives — which is what `owner` is for; every write to it was queued on `producer` (or
    /// has completed) before this call; and `producer` is a live stream of the engine's context
    /// or a default-stream handle. None of this is needed for memory safety: the engine only
    /// reads the lent device memory, on the device, and checked it lies inside one live
    /// allocation of its device and context when it was lent; what a broken promise can cause
    /// is wrong bytes in the output or a CUDA error, never a write outside the engine's own
    /// output.
    ///
    /// # Errors
    /// [`TableError::ByteLengthMismatch`](crate::table::TableError::ByteLengthMismatch), [`CudaError::WrongDevice`], [`CudaError::UnorderableColumn`],
    /// [`Error::Cuda`] (e.g. an address the driver does not know as device memory).
    #[allow(clippy::too_many_arguments)]
    pub fn borrow_column(
        &self,
        name: impl Into<String>,
        dtype: DType,
        row_shape: &[usize],
        rows: usize,
        ptr: u64,
        producer: usize,
        owner: impl std::any::Any + Send + Sync,
    ) -> Result<DeviceColumn> {
        let _current = ContextGuard::save();
        let name = name.into();
        let owner: Box<dyn std::any::Any + Send + Sync> = Box::new(owner);
        self.guarded("lending device memory to the engine", || {
            let mut parts = row_shape.to_vec();
            parts.push(dtype.size());
            let row_bytes = checked_bytes(&parts, &name)?;
            let len = checked_bytes(&[row_bytes, rows], &name)?;
            if len > 0 {
                let first = pointer_info(ptr).map_err(cuda_err(format!(
                    "column {name:?}: asking the driver about device address {ptr:#x}"
                )))?;
                let end = ptr.saturating_add(len as u64);
                let info = lent_extent(&first, end, |a| pointer_info(a).ok());
                check_lent(&name, self.info.ordinal, self.ctx_handle(), ptr, len, &info)?;
            }
            let ready = self
                .ctx
                .new_event(None)
                .map_err(cuda_err("creating an event"))?;
            // SAFETY: `ready` is a live event of the engine's context, made current by
            // `guarded`. `producer` is a handle the caller says names a stream of that context
            // or a default stream; the driver validates stream handles and returns an error
            // for one it does not know (a stale one is the caller's broken promise, documented
            // above). Recording reads and writes no memory.
            unsafe {
                cudarc::driver::result::event::record(
                    ready.cu_event(),
                    producer as cudarc::driver::sys::CUstream,
                )
            }
            .map_err(cuda_err(format!(
                "column {name:?}: recording an event on its producer's stream"
            )))?;
            Ok(DeviceColumn::borrowed(
                name.clone(),
                dtype.clone(),
                row_shape,
                rows,
                row_bytes,
                ptr,
                self.info.ordinal,
                ready,
                owner,
            ))
        })
    }

    /// The device and (for sequential orders) bounds checks of a drain; explicit index lists
    /// are checked against the table by the pipeline as it uploads them, or here in full for
    /// the classic recipes (`full`).
    fn check(&self, table: &DeviceTable, batches: &Batches, full: bool) -> Result<()> {
        if table.ordinal() != self.info.ordinal {
            return Err(Error::Cuda(CudaError::WrongDevice {
                expected: self.info.ordinal,
                got: table.ordinal(),
            }));
        }
        // A table of zero-byte rows moves nothing, so no upload checks its indices on the way.
        if full || table.row_bytes() == 0 {
            pipeline::check_indices(table.rows(), batches)
        } else {
            pipeline::check_range(table.rows(), batches)
        }
    }

    /// Drains a device table in the order and batching of `batches` with `strategy`:
    /// `Pinned` / `Auto` (the gather + asynchronous copy pipeline into pinned output, or staged
    /// into heap output — see the module docs for the rule), or the classic `Concat`,
    /// `PerBatch`, `Preallocated` recipes on the GPU. The output is byte-identical to the CPU's
    /// `Preallocated`, and is returned only when every copy into it has completed.
    ///
    /// # Errors
    /// [`CudaError::WrongDevice`], [`Error::IndexOutOfBounds`] (an index past the device table),
    /// [`CudaError::OutOfMemory`], [`Error::HostAllocation`], [`Error::Cuda`].
    pub fn materialize(
        &self,
        table: &DeviceTable,
        batches: &Batches,
        strategy: Strategy,
    ) -> Result<Materialized> {
        let _current = ContextGuard::save();
        self.guarded("materialize", || {
            table.discard_earlier_source_errors();
            let out = match strategy {
                Strategy::Concat | Strategy::PerBatch | Strategy::Preallocated => {
                    self.check(table, batches, true)?;
                    let lanes = self.lanes()?;
                    table.order_after_producers([&lanes[0].stream])?;
                    classic::run(&lanes[0].stream, &self.kernels, table, batches, strategy)
                }
                Strategy::Pinned | Strategy::Auto => {
                    self.check(table, batches, false)?;
                    self.pinned(table, batches)
                }
            };
            let late = table.take_source_errors("materialize");
            let out = out?;
            late?;
            Ok(out)
        })
    }

    fn pinned(&self, table: &DeviceTable, batches: &Batches) -> Result<Materialized> {
        let started = Instant::now();
        let rows = batches.rows();
        let plan = Plan::for_table(table, rows);
        let host = AllocCounter::new();
        let mut pin_seconds = 0.0;
        let mut total = 0usize;
        for c in table.columns() {
            total = total.saturating_add(checked_bytes(&[rows, c.row_bytes()], c.name())?);
        }
        let mut lanes = self.lanes()?;
        table.order_after_producers(lanes.iter().map(|l| &l.stream))?;
        let mut direct = None;
        if pins(total, self.pin_budget()) {
            // A refused pinned allocation is not an error: the staged mode takes over.
            if let Ok(columns) = self.pinned_output(table, rows, &mut pin_seconds) {
                direct = Some(columns);
            }
        }
        let (columns, device_bytes) = match direct {
            Some(mut columns) => {
                host.add(total as u64);
                let mut dsts: Vec<&mut [u8]> =
                    columns.iter_mut().map(|c| c.as_bytes_mut()).collect();
                let dev = pipeline::run_direct(
                    &mut lanes,
                    &self.kernels,
                    &plan,
                    batches.indices(),
                    &mut dsts,
                    &mut pin_seconds,
                    &host,
                )?;
                drop(dsts);
                (columns, dev)
            }
            None => {
                let mut columns = heap_output(table_schema(table), rows, &host)?;
                let dev = pipeline::run_staged(
                    &mut lanes,
                    &self.kernels,
                    &plan,
                    batches.indices(),
                    &mut columns,
                    &mut pin_seconds,
                    &host,
                )?;
                for c in &mut columns {
                    c.storage_mut().finish()?;
                }
                (columns, dev)
            }
        };
        Ok(Materialized::new(
            columns,
            Report::new(Strategy::Pinned, Backend::Cuda, rows, &[], started)
                .with_bytes(total as u64)
                .with_peak_alloc(host.peak())
                .with_device(device_bytes, Some(pin_seconds)),
        ))
    }

    /// One pinned output column per table column, from the pool.
    fn pinned_output(
        &self,
        table: &DeviceTable,
        rows: usize,
        pin_seconds: &mut f64,
    ) -> Result<Vec<ColumnArray>> {
        pinned_columns(&self.pool, table_schema(table), rows, pin_seconds)
    }

    /// Drains into an existing output (same columns, dtypes, row shapes and row count), e.g.
    /// to reuse a pinned output across epochs or to fill a memory-mapped `.npy` file. When every
    /// column's storage is [`StorageKind::Pinned`] the direct asynchronous path runs; otherwise
    /// the staged path (pinned ring + host copies), calling each storage's `region_done` in
    /// order and `finish` at the end. The report is stored in `out` and returned.
    ///
    /// # Errors
    /// As [`CudaEngine::materialize`], and [`Error::OutputMismatch`] / [`TableError::UnknownColumn`](crate::TableError::UnknownColumn)
    /// when `out` does not match the table. On error the output's contents are unspecified.
    pub fn materialize_into(
        &self,
        table: &DeviceTable,
        batches: &Batches,
        out: &mut Materialized,
    ) -> Result<Report> {
        let _current = ContextGuard::save();
        self.guarded("materialize_into", || {
            table.discard_earlier_source_errors();
            let started = Instant::now();
            self.check(table, batches, false)?;
            let rows = batches.rows();
            check_output(table, rows, out.columns())?;
            let plan = Plan::for_table(table, rows);
            let host = AllocCounter::new();
            let mut pin_seconds = 0.0;
            let all_pinned = out
                .columns()
                .iter()
                .all(|c| c.storage_kind() == StorageKind::Pinned);
            let mut lanes = self.lanes()?;
            table.order_after_producers(lanes.iter().map(|l| &l.stream))?;
            let device_bytes = if all_pinned {
                let mut dsts: Vec<&mut [u8]> = out
                    .columns_mut()
                    .iter_mut()
                    .map(|c| c.as_bytes_mut())
                    .collect();
                let dev = pipeline::run_direct(
                    &mut lanes,
                    &self.kernels,
                    &plan,
                    batches.indices(),
                    &mut dsts,
                    &mut pin_seconds,
                    &host,
                )?;
                drop(dsts);
                for c in out.columns_mut() {
                    let len = c.as_bytes().len();
                    c.storage_mut().region_done(0..len)?;
                }
                dev
            } else {
                pipeline::run_staged(
                    &mut lanes,
                    &self.kernels,
                    &plan,
                    batches.indices(),
                    out.columns_mut(),
                    &mut pin_seconds,
                    &host,
                )?
            };
            for c in out.columns_mut() {
                c.storage_mut().finish()?;
            }
            let report = Report::new(
                Strategy::Pinned,
                Backend::Cuda,
                rows,
                out.columns(),
                started,
            )
            .with_peak_alloc(host.peak())
            .with_device(device_bytes, Some(pin_seconds));
            out.set_report(report.clone());
            table.take_source_errors("materialize_into")?;
            Ok(report)
        })
    }

    /// Drains the user's own device batches (e.g. a GPU data loader's output) into pinned host
    /// output. Each batch's copy is queued asynchronously on a lane after the work pending on
    /// its buffers' streams, and the batch is kept alive until its copy has landed.
    ///
    /// With `rows` declared, the output is allocated once up front and a stream yielding more or
    /// fewer rows is an error; without, batches are held until the end, when the output size is
    /// known. The first batch fixes the columns; later batches must match it.
    ///
    /// # Errors
    /// [`Error::Source`] (a batch the iterator failed to make), [`Error::BatchMismatch`],
    /// [`Error::StreamLengthMismatch`], [`CudaError::WrongDevice`], [`Error::HostAllocation`],
    /// [`Error::Cuda`].
    pub fn drain_device<I>(&self, batches: I, rows: Option<usize>) -> Result<Materialized>
    where
        I: IntoIterator<Item = Result<DeviceBatch>>,
    {
        let _current = ContextGuard::save();
        let rows = match rows {
            Some(d) => StreamRows::Exact(d),
            None => StreamRows::Unknown,
        };
        self.guarded("drain_device", || self.drain_inner(batches, rows))
    }

    /// [`CudaEngine::drain_device`] for a stream whose row count is only expected, not promised
    /// (an `IterableDataset`'s `len`: workers and `drop_last` make an epoch yield other counts):
    /// the output is allocated for `about` rows up front and each batch is copied into it as it
    /// comes, so no batch is held on the device longer than its copy takes. A stream that yields
    /// more rows moves the rows copied so far once into an output twice as large (or as large as
    /// needed) and goes on; one that yields fewer returns the rows it yielded.
    ///
    /// # Errors
    /// As [`CudaEngine::drain_device`], without [`Error::StreamLengthMismatch`].
    pub fn drain_device_expecting<I>(&self, batches: I, about: usize) -> Result<Materialized>
    where
        I: IntoIterator<Item = Result<DeviceBatch>>,
    {
        let _current = ContextGuard::save();
        self.guarded("drain_device", || {
            self.drain_inner(batches, StreamRows::About(about))
        })
    }

    fn drain_inner<I>(&self, batches: I, expect: StreamRows) -> Result<Materialized>
    where
        I: IntoIterator<Item = Result<DeviceBatch>>,
    {
        let started = Instant::now();
        super::memory::bind_ctx(&self.ctx)?;
        let host = AllocCounter::new();
        let mut pin_seconds = 0.0;
        let lanes = self.lanes()?;
        let mut schema: Vec<Schema> = Vec::new();
        // The output, then the in-flight batches: dropped in reverse order, so on every exit
        // the in-flight copies are waited for before the output is freed.
        let mut out: Option<StreamOut> = None;
        let mut flight = InFlight::new(&lanes);
        let mut held: Vec<DeviceBatch> = Vec::new();
        let mut total = 0usize;
        for (k, item) in batches.into_iter().enumerate() {
            let batch = item.map_err(|e| Error::Source {
                batch: k,
                source: Box::new(e),
            })?;
            if k == 0 {
                schema = batch
                    .columns()
                    .iter()
                    .map(|c| (c.name().to_string(), c.dtype(), c.row_shape().to_vec()))
                    .collect();
            }
            let n = check_batch(&batch, k, &schema, self.info.ordinal, self.ctx_handle())?;
            let need = total
                .checked_add(n)
                .ok_or_else(|| Error::StreamLengthMismatch {
                    declared: usize::MAX,
                    got: usize::MAX,
                    more: true,
                })?;
            let capacity = match expect {
                StreamRows::Exact(d) if need > d => {
                    return Err(Error::StreamLengthMismatch {
                        declared: d,
                        got: need,
                        more: true,
                    });
                }
                StreamRows::Exact(d) | StreamRows::About(d) => d,
                StreamRows::Unknown => {
                    held.push(batch);
                    total = need;
                    continue;
                }
            };
            if out.is_none() {
                out = Some(self.stream_output(
                    &schema,
                    capacity.max(need),
                    &host,
                    &mut pin_seconds,
                )?);
            }
            if let Some(o) = out.as_mut() {
                if need > o.rows {
                    // More rows than expected: the copies so far land, then move once into an
                    // output large enough for what is left of a stream of this pace.
                    flight.settle()?;
                    let grown = need.max(o.rows.saturating_mul(2));
                    let mut bigger = self.stream_output(&schema, grown, &host, &mut pin_seconds)?;
                    bigger.take_rows_of(o, total, &schema);
                    *o = bigger;
                }
                // SAFETY: `o.bases` are the output columns' first bytes, sized for `o.rows ≥
                // total + n` rows; `out` outlives `flight`, whose drop waits for the copies (and
                // an output is replaced only after `settle` waited for every copy into it);
                // `batch` passed `check_batch` above.
                unsafe { flight.copy(k, batch, &schema, &o.bases, total)? };
            }
            total = need;
        }
        if let StreamRows::Exact(d) = expect {
            if total != d {
                return Err(Error::StreamLengthMismatch {
                    declared: d,
                    got: total,
                    more: false,
                });
            }
        }
        if out.is_none() {
            let o = self.stream_output(&schema, total, &host, &mut pin_seconds)?;
            let mut at = 0;
            for (k, batch) in held.drain(..).enumerate() {
                let n = batch.rows().unwrap_or(0);
                // SAFETY: as above; the output was sized for the `total` rows held, and every
                // held batch passed `check_batch`.
                unsafe { flight.copy(k, batch, &schema, &o.bases, at)? };
                at += n;
            }
            out = Some(o);
        }
        flight.finish()?;
        let Some(out) = out else {
            return Err(Error::Cuda(CudaError::Driver {
                context: "drain_device".into(),
                message: "internal error: no output".into(),
            }));
        };
        let mut columns = out.into_columns(&schema, total, &host)?;
        for c in &mut columns {
            c.storage_mut().finish()?;
        }
        let report = Report::new(Strategy::Pinned, Backend::Cuda, total, &columns, started)
            .with_peak_alloc(host.peak())
            .with_device(0, Some(pin_seconds));
        Ok(Materialized::new(columns, report))
    }

    /// The output of a device stream for `rows` rows: pinned from the pool, or heap memory when
    /// the pinned allocation is refused or over the pin budget; with each column's base pointer.
    fn stream_output(
        &self,
        schema: &[Schema],
        rows: usize,
        host: &Arc<AllocCounter>,
        pin_seconds: &mut f64,
    ) -> Result<StreamOut> {
        let mut sizes = Vec::with_capacity(schema.len());
        let mut total = 0usize;
        for (name, dtype, shape) in schema {
            let mut parts = shape.clone();
            parts.extend([dtype.size(), rows]);
            let bytes = checked_bytes(&parts, name)?;
            total = total.saturating_add(bytes);
            sizes.push(bytes);
        }
        let pinned = if pins(total, self.pin_budget()) {
            let mut bufs = Vec::with_capacity(sizes.len());
            for &bytes in &sizes {
                match self.pool.take(bytes) {
                    Ok((buf, secs)) => {
                        *pin_seconds += secs;
                        bufs.push(OutPart::Pinned(buf));
                    }
                    Err(_) => break,
                }
            }
            (bufs.len() == sizes.len()).then_some(bufs)
        } else {
            None
        };
        let mut parts = match pinned {
            Some(p) => {
                host.add(total as u64);
                p
            }
            None => schema
                .iter()
                .zip(&sizes)
                .map(|((name, ..), &bytes)| HostBuf::counted(bytes, name, host).map(OutPart::Heap))
                .collect::<Result<Vec<_>>>()?,
        };
        let bases = parts
            .iter_mut()
            .map(|p| p.bytes_mut().as_mut_ptr())
            .collect();
        Ok(StreamOut { parts, rows, bases })
    }
}

/// How many rows a device stream yields: promised, expected, or not known.
#[derive(Debug, Clone, Copy)]
enum StreamRows {
    Exact(usize),
    About(usize),
    Unknown,
}

/// One output column's memory while a device stream drains into it.
enum OutPart {
    Pinned(crate::cuda::PinnedBuf),
    Heap(HostBuf),
}

impl OutPart {
    fn bytes_mut(&mut self) -> &mut [u8] {
        match self {
            OutPart::Pinned(b) => crate::output::Storage::as_bytes_mut(b),
            OutPart::Heap(b) => b.as_bytes_mut(),
        }
    }

    fn bytes(&self) -> &[u8] {
        match self {
            OutPart::Pinned(b) => crate::output::Storage::as_bytes(b),
            OutPart::Heap(b) => b.as_bytes(),
        }
    }
}

/// A device stream's output: one part per column with room for `rows` rows, and each part's
/// first byte (the copies' destinations).
struct StreamOut {
    parts: Vec<OutPart>,
    rows: usize,
    bases: Vec<*mut u8>,
}

impl StreamOut {
    /// Copies the first `rows` rows of every column of `from` (no copy in flight into it).
    fn take_rows_of(&mut self, from: &StreamOut, rows: usize, schema: &[Schema]) {
        for ((dst, src), (_, dtype, shape)) in self.parts.iter_mut().zip(&from.parts).zip(schema) {
            let len = rows * dtype.size() * shape.iter().product::<usize>();
            crate::gather::cpu::par_copy(&src.bytes()[..len], &mut dst.bytes_mut()[..len]);
        }
    }

    /// The columns, `rows` rows each (at most the capacity): a pinned part keeps its memory
    /// and shows only those rows; a heap part larger than that is copied to its exact size.
    fn into_columns(
        self,
        schema: &[Schema],
        rows: usize,
        host: &Arc<AllocCounter>,
    ) -> Result<Vec<ColumnArray>> {
        self.parts
            .into_iter()
            .zip(schema)
            .map(|(part, (name, dtype, shape))| {
                let len = rows * dtype.size() * shape.iter().product::<usize>();
                let storage: Box<dyn crate::output::Storage> = match part {
                    OutPart::Pinned(mut b) => {
                        b.truncate(len);
                        Box::new(b)
                    }
                    OutPart::Heap(b) if b.len() == len => Box::new(b),
                    OutPart::Heap(b) => {
                        Box::new(HostBuf::copy_of(&b.as_bytes()[..len], name, Some(host))?)
                    }
                };
                ColumnArray::new(name.clone(), dtype.clone(), shape, rows, storage)
            })
            .collect()
    }
}

impl std::fmt::Debug for CudaEngine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CudaEngine")
            .field("info", &self.info)
            .field("pool", &self.pool)
            .field("pin_budget", &self.pin_budget())
            .finish()
    }
}

/// Whether an output of `total` bytes is pinned whole under pin budget `budget`: when it fits,
/// and never under a budget of 0, which forces the staged mode — for empty outputs too (an
/// output of 0 bytes fits every budget, and once took the pinned path under a budget of 0).
fn pins(total: usize, budget: usize) -> bool {
    budget > 0 && total <= budget
}

fn new_lanes(ctx: &Arc<CudaContext>) -> Result<Vec<Lane>> {
    (0..LANES).map(|_| Lane::new(ctx)).collect()
}

/// A column's name, dtype and row shape.
type Schema = (String, DType, Vec<usize>);

fn table_schema(table: &DeviceTable) -> Vec<Schema> {
    table
        .columns()
        .iter()
        .map(|c| (c.name().to_string(), c.dtype(), c.row_shape().to_vec()))
        .collect()
}

fn pinned_columns(
    pool: &PinnedPool,
    schema: Vec<Schema>,
    rows: usize,
    pin_seconds: &mut f64,
) -> Result<Vec<ColumnArray>> {
    schema
        .into_iter()
        .map(|(name, dtype, shape)| {
            let mut parts = shape.clone();
            parts.extend([dtype.size(), rows]);
            let bytes = checked_bytes(&parts, &name)?;
            let (buf, secs) = pool.take(bytes)?;
            *pin_seconds += secs;
            ColumnArray::new(name, dtype, &shape, rows, Box::new(buf))
        })
        .collect()
}

fn heap_output(
    schema: Vec<Schema>,
    rows: usize,
    host: &Arc<AllocCounter>,
) -> Result<Vec<ColumnArray>> {
    schema
        .into_iter()
        .map(|(name, dtype, shape)| {
            let mut parts = shape.clone();
            parts.extend([dtype.size(), rows]);
            let bytes = checked_bytes(&parts, &name)?;
            let buf = HostBuf::counted(bytes, &name, host)?;
            ColumnArray::new(name, dtype, &shape, rows, Box::new(buf))
        })
        .collect()
}

/// Checks that `out` has the device table's columns and `rows` rows.
fn check_output(table: &DeviceTable, rows: usize, out: &[ColumnArray]) -> Result<()> {
    crate::gather::check_output(
        table
            .columns()
            .iter()
            .map(|c| (c.name(), c.dtype(), c.row_shape())),
        rows,
        out,
    )
}

/// Checks a device batch against the first batch's columns and the engine's device and
/// context; returns its row count.
fn check_batch(
    batch: &DeviceBatch,
    k: usize,
    schema: &[Schema],
    ordinal: usize,
    ctx: usize,
) -> Result<usize> {
    for c in batch.columns() {
        c.check_usable(ordinal, ctx)?;
    }
    let columns: Vec<crate::drain::ColumnMeta<'_>> = batch
        .columns()
        .iter()
        .map(|c| (c.name(), c.dtype(), c.row_shape(), c.rows()))
        .collect();
    crate::drain::check_batch_columns(k, &columns, schema)
}

/// Device batches whose copies are in flight, each with the event that marks its copy done.
/// Dropping it waits for every lane first, so no batch is freed under a running copy.
struct InFlight<'l> {
    lanes: &'l [Lane],
    queue: VecDeque<(DeviceBatch, Option<CudaEvent>)>,
    guard: Option<LaneGuard>,
    /// The first error cudarc stored in a batch's context while the batch was released (its
    /// `Drop` waits for the slice's events, and a failure there is only recorded).
    late: Option<Error>,
}

impl<'l> InFlight<'l> {
    fn new(lanes: &'l [Lane]) -> Self {
        InFlight {
            lanes,
            queue: VecDeque::new(),
            guard: Some(LaneGuard::new(
                lanes.iter().map(|l| Arc::clone(&l.stream)).collect(),
            )),
            late: None,
        }
    }

    /// Drops a batch whose copy has landed, then takes any error its release stored in the
    /// user's context: reported as this drain's error, not by the user's next unrelated call
    /// (found by the fault sweep of tests/cudasim_faults.rs under the CUDA simulator).
    fn release(&mut self, batch: DeviceBatch) {
        let ctxs: Vec<Arc<cudarc::driver::CudaContext>> = batch
            .columns()
            .iter()
            .filter_map(|c| c.source_stream().map(|s| Arc::clone(s.context())))
            .collect();
        drop(batch);
        for c in ctxs {
            if let Some(e) = take_stale_error(&c) {
                self.late
                    .get_or_insert_with(|| cuda_err("releasing a drained batch")(e));
            }
        }
    }

    /// Takes batch `k` and queues the copy of its columns into output rows `at..` on lane
    /// `k % LANES`, after the work pending on each column's own stream. The batch is held
    /// (before any copy is queued) until its copy has landed.
    ///
    /// # Safety
    /// `bases[c]` points at output column `c` (in `schema` order), with room for
    /// `at + batch rows` rows, alive and untouched until this value has been finished or
    /// dropped; the batch passed `check_batch` (same schema, this device).
    unsafe fn copy(
        &mut self,
        k: usize,
        batch: DeviceBatch,
        schema: &[Schema],
        bases: &[*mut u8],
        at: usize,
    ) -> Result<()> {
        let lanes = self.lanes;
        let lane = &lanes[k % lanes.len()];
        self.queue.push_back((batch, None));
        let Some((batch, _)) = self.queue.back() else {
            return Ok(());
        };
        for ((name, _, _), &base) in schema.iter().zip(bases) {
            let Some(col) = batch.column(name) else {
                continue;
            };
            // Taken before `ready` is recorded: for a slice whose context tracks events,
            // cudarc's `device_ptr` makes the slice's own stream wait for its last write, which
            // may have been queued on another stream (e.g. the user's loader kernel). Asked after
            // `ready`, that wait would land behind the event the lane waits for, and the copy
            // could read the batch before it is written.
            col.discard_earlier_source_error();
            let src = col.address();
            if let Some(ready) = col.ready_event() {
                // Lent memory: after the producer's work recorded when it was lent.
                lane.stream
                    .wait(ready)
                    .map_err(cuda_err("ordering a copy after a batch's producer"))?;
            }
            if let Some(src_stream) = col.source_stream() {
                // Taking the address records the slice's read event inside cudarc (a `Drop`):
                // a failure there is stored in the user's context and would surface later, in
                // the user's next unrelated call. Report it here, as this drain's error (found
                // by the fault sweep of tests/cudasim_faults.rs under the CUDA simulator).
                if let Some(e) = take_stale_error(src_stream.context()) {
                    return Err(cuda_err("recording a batch's read event")(e));
                }
                let ready = src_stream
                    .record_event(None)
                    .map_err(cuda_err("recording an event on a batch's stream"))?;
                lane.stream
                    .wait(&ready)
                    .map_err(cuda_err("ordering a copy after a batch's producer"))?;
            }
            // SAFETY (dtoh_async): 1. the column's bytes, on this device (check_batch), alive
            // until the copy has landed (the batch sits in `queue`, released only after its
            // event has completed or the lanes were synchronised; lent memory is kept by the
            // column's owner, and was checked to lie inside one live allocation of this
            // context when it was lent — a lender that frees it anyway makes the device read
            // stale bytes or fail, never write host memory), written by nothing after the
            // producer work the lane now waits for; 2. this function's contract; 3. the context
            // was bound by the drain.
            unsafe {
                dtoh_async(
                    base.add(at * col.row_bytes()),
                    src,
                    col.bytes(),
                    &lane.stream,
                )?
            };
        }
        let done = lane
            .stream
            .record_event(None)
            .map_err(cuda_err("recording a copy event"))?;
        if let Some(last) = self.queue.back_mut() {
            last.1 = Some(done);
        }
        self.retire()
    }

    /// Releases batches whose copies are done, waiting for the oldest while too many are held.
    fn retire(&mut self) -> Result<()> {
        while let Some((_, Some(ev))) = self.queue.front() {
            let complete = ev
                .try_is_complete()
                .map_err(cuda_err("checking a batch copy"))?;
            if !complete && self.queue.len() <= MAX_IN_FLIGHT {
                break;
            }
            if !complete {
                wait_event(ev, "waiting for a batch copy")?;
            }
            if let Some((batch, _)) = self.queue.pop_front() {
                self.release(batch);
            }
        }
        Ok(())
    }

    /// Waits for every lane and releases every batch held: no copy is in flight afterwards.
    fn settle(&mut self) -> Result<()> {
        for l in self.lanes {
            wait_stream(&l.stream)?;
        }
        let done: Vec<DeviceBatch> = self.queue.drain(..).map(|(b, _)| b).collect();
        for b in done {
            self.release(b);
        }
        match self.late.take() {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }

    fn finish(mut self) -> Result<()> {
        let r = match self.guard.take() {
            Some(g) => g.finish(),
            None => Ok(()),
        };
        let done: Vec<DeviceBatch> = self.queue.drain(..).map(|(b, _)| b).collect();
        for b in done {
            self.release(b);
        }
        r?;
        match self.late.take() {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }
}

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        // Wait for the lanes (dropping the guard) before the queued batches are freed.
        self.guard.take();
        self.queue.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::pins;

    /// A pin budget of 0 forces the staged mode for every output, the empty ones included (an
    /// output of 0 bytes once took the pinned path under a budget of 0: found by
    /// tests/cuda_gpu.rs run under the CUDA simulator, scripts/test-cudasim.sh).
    #[test]
    fn a_budget_of_zero_pins_nothing_not_even_empty_outputs() {
        assert!(!pins(0, 0));
        assert!(!pins(1, 0));
        assert!(pins(0, 1));
        assert!(pins(100, 100));
        assert!(!pins(101, 100));
        assert!(pins(usize::MAX, usize::MAX));
    }
}
