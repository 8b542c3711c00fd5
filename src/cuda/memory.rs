//! Memory the engine owns: counted device buffers, page-locked host buffers and their pool, and
//! the raw asynchronous copies between them.
//!
//! Page-locked memory here is always allocated with `cuMemHostAlloc(CU_MEMHOSTALLOC_PORTABLE)`:
//! pinned for every context, **cacheable** (never `WRITECOMBINED`, which cudarc's
//! `alloc_pinned` uses and which the CPU reads an order of magnitude slower — the output is read
//! by the CPU). It is zeroed once when allocated, so every byte is initialised before Rust code
//! can see it, and kept in a [`PinnedPool`] for reuse because pinning costs far more than copying.

use std::ffi::c_void;
use std::fmt;
use std::mem::MaybeUninit;
use std::sync::{Arc, Mutex, Weak};
use std::time::Instant;

use cudarc::driver::sys::{self, CUresult};
use cudarc::driver::{
    result, CudaContext, CudaEvent, CudaSlice, CudaStream, DevicePtr, DriverError, PinnedHostSlice,
};
use rayon::prelude::*;

use super::current::{ContextGuard, RestoreOnDrop};
use super::device::{alloc_err, cuda_err, describe};
use crate::error::{Error, Result};
use crate::memory::AllocCounter;
use crate::output::{Storage, StorageKind};
use crate::sysmem::MemoryLimits;

/// A device buffer allocated by the engine, charged to a device-byte counter while it lives.
pub(crate) struct DevBuf {
    slice: CudaSlice<u8>,
    len: usize,
    counter: Option<Arc<AllocCounter>>,
    /// Last: the caller's current context comes back after `slice` is freed.
    restore: RestoreOnDrop,
}

impl DevBuf {
    /// Allocates `len` bytes (at least one) on `stream`, uninitialised.
    ///
    /// The engine's context has event tracking off, so the buffer carries no events: the
    /// engine orders every use itself (see `pipeline`). The memory is stream-ordered: use it on
    /// `stream`, or on other streams after `stream` was synchronised.
    pub(crate) fn alloc(
        stream: &Arc<CudaStream>,
        len: usize,
        what: &str,
        counter: Option<&Arc<AllocCounter>>,
    ) -> Result<Self> {
        // SAFETY: device memory is left uninitialised; it is only ever read by the device after
        // the engine has written it (a copy or the gather kernel), and never read by the host.
        let slice = unsafe { stream.alloc::<u8>(len.max(1)) }.map_err(alloc_err(len, what))?;
        if let Some(c) = counter {
            c.add(len as u64);
        }
        Ok(DevBuf {
            slice,
            len,
            counter: counter.cloned(),
            restore: RestoreOnDrop::default(),
        })
    }

    /// The device address of the first byte.
    pub(crate) fn ptr(&self) -> u64 {
        device_address(&self.slice)
    }

    /// Usable length in bytes.
    pub(crate) fn len(&self) -> usize {
        self.len
    }
}

impl Drop for DevBuf {
    fn drop(&mut self) {
        self.restore.arm();
        // cudarc frees a slice (when its field drops, after this body) without binding its
        // context: make it current here; `restore`, the last field, puts the caller's back.
        // A failure is stored by cudarc in the context, like any failed free.
        let _ = bind_ctx(self.slice.stream().context());
        if let Some(c) = &self.counter {
            c.sub(self.len as u64);
        }
    }
}

/// The device address of a slice, without touching its events beyond what cudarc does for a
/// read scheduled on the slice's own stream.
pub(crate) fn device_address<T>(slice: &CudaSlice<T>) -> u64 {
    let (ptr, _record) = slice.device_ptr(slice.stream());
    ptr
}

/// Makes `stream`'s context current on the calling thread before a raw copy (CUDA-NOTES
/// pitfall 7). The raw copies bind it themselves instead of trusting the caller's earlier bind:
/// between that bind and a copy, code that is not ours may run on this thread and make another
/// context current — a rayon job stolen while this thread waits in `par_copy` (staged mode,
/// when called from inside a rayon pool), a storage's `region_done`, a user's batch iterator —
/// and an async copy on a stream of a context other than the current one can fail (the driver
/// resolves the pointers against the current context). Costs one `cuCtxGetCurrent` when the
/// context is already current.
fn bind(stream: &CudaStream) -> Result<()> {
    bind_ctx(stream.context())
}

/// Makes `ctx` current on the calling thread **without** consuming a stale error that cudarc
/// stored in it from a `Drop` (cudarc's `bind_to_thread` returns such an error instead of
/// binding). Stale errors are collected and reported where the engine waits for its streams
/// ([`take_stale_error`], `pipeline::LaneGuard`), after every stream has been waited for.
pub(crate) fn bind_ctx(ctx: &CudaContext) -> Result<()> {
    let err = cuda_err("binding the CUDA context");
    let current = result::ctx::get_current().map_err(cuda_err("reading the current context"))?;
    if current != Some(ctx.cu_ctx()) {
        // SAFETY: `cu_ctx` is the live context owned by `ctx` (a retained primary context, held
        // for as long as `ctx` lives); making it current has no other effect.
        unsafe { result::ctx::set_current(ctx.cu_ctx()) }.map_err(err)?;
    }
    Ok(())
}

/// What the driver says about a device address (`cuPointerGetAttribute`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct PointerInfo {
    /// The context the memory was allocated in (0: none — memory from a stream-ordered pool or
    /// mapped with the virtual memory API, usable from every context of its device).
    pub(crate) ctx: usize,
    /// The device it was allocated on.
    pub(crate) ordinal: usize,
    /// The allocation around the address: its first byte and its size.
    pub(crate) start: u64,
    pub(crate) size: u64,
}

/// Asks the driver which context, device and allocation device address `ptr` belongs to.
/// Needs a current context (the caller's `bind_ctx`).
pub(crate) fn pointer_info(ptr: u64) -> std::result::Result<PointerInfo, DriverError> {
    use sys::CUpointer_attribute as A;
    fn get<T: Default>(ptr: u64, attribute: A) -> std::result::Result<T, DriverError> {
        let mut v = T::default();
        // SAFETY: each attribute asked for below writes one value of the type `T` it is
        // asked with (CONTEXT: a `CUcontext`, read as `usize`; DEVICE_ORDINAL: an int;
        // RANGE_START_ADDR: a `CUdeviceptr`; RANGE_SIZE: a `size_t`) into a live local; the
        // driver only reads its own bookkeeping for `ptr`, never the memory.
        unsafe { sys::cuPointerGetAttribute((&mut v as *mut T).cast::<c_void>(), attribute, ptr) }
            .result()?;
        Ok(v)
    }
    let ordinal: i32 = get(ptr, A::CU_POINTER_ATTRIBUTE_DEVICE_ORDINAL)?;
    // Memory mapped with the virtual memory API belongs to no context; should a driver refuse to
    // name one for it, it is taken as such (usable from every context of its device).
    let ctx: usize = get(ptr, A::CU_POINTER_ATTRIBUTE_CONTEXT).unwrap_or(0);
    let start: u64 = get(ptr, A::CU_POINTER_ATTRIBUTE_RANGE_START_ADDR)?;
    let size: usize = get(ptr, A::CU_POINTER_ATTRIBUTE_RANGE_SIZE)?;
    Ok(PointerInfo {
        ctx,
        ordinal: ordinal.max(0) as usize,
        start,
        size: size as u64,
    })
}

/// Takes (and clears) the error cudarc stored in `ctx` from a failed call inside a `Drop`
/// (freeing a buffer, destroying an event), if any.
pub(crate) fn take_stale_error(ctx: &CudaContext) -> Option<DriverError> {
    ctx.check_err().err()
}

/// Blocks until everything queued on `stream` has run, even when its context holds a stale
/// error (cudarc's `CudaStream::synchronize` would return that error without waiting).
pub(crate) fn wait_stream(stream: &CudaStream) -> Result<()> {
    bind(stream)?;
    // SAFETY: `cu_stream` is the live stream owned by `stream`; the context is bound above.
    unsafe { result::stream::synchronize(stream.cu_stream()) }
        .map_err(cuda_err("waiting for the device work of a drain"))
}

/// Blocks until the work recorded in `event` has run, ignoring stale errors as
/// [`wait_stream`] does.
pub(crate) fn wait_event(event: &CudaEvent, what: &str) -> Result<()> {
    bind_ctx(event.context())?;
    // SAFETY: `cu_event` is the live event owned by `event`; the context is bound above.
    unsafe { result::event::synchronize(event.cu_event()) }.map_err(cuda_err(what.to_string()))
}

/// Blocks until everything queued in `ctx` has run, ignoring stale errors as [`wait_stream`]
/// does.
pub(crate) fn wait_context(ctx: &CudaContext) -> Result<()> {
    bind_ctx(ctx)?;
    result::ctx::synchronize().map_err(cuda_err("waiting for the device"))
}

/// Enqueues setting `bytes` device bytes at `dst` to `value` on `stream`.
///
/// # Safety
/// `dst` points at `bytes` writable device bytes of `stream`'s context, not used by other work
/// until this has run. (The context is bound here.)
pub(crate) unsafe fn memset_async(
    dst: u64,
    value: u8,
    bytes: usize,
    stream: &CudaStream,
) -> Result<()> {
    if bytes == 0 {
        return Ok(());
    }
    bind(stream)?;
    // SAFETY: this function's contract; the context is bound just above.
    unsafe { result::memset_d8_async(dst, value, bytes, stream.cu_stream()) }
        .map_err(cuda_err(format!("setting {bytes} device bytes")))
}

/// Enqueues a device→host copy of `bytes` bytes on `stream`.
///
/// # Safety
/// 1. `src` points at `bytes` device bytes of `stream`'s context, not written by other work
///    until this copy has run;
/// 2. `dst` points at `bytes` host bytes that stay valid, and are neither read nor written by
///    anyone, until the copy has completed (the caller synchronises `stream`, or an event
///    recorded after this call, before touching or freeing them);
/// 3. (established here) the calling thread has `stream`'s context bound: see [`bind`].
pub(crate) unsafe fn dtoh_async(
    dst: *mut u8,
    src: u64,
    bytes: usize,
    stream: &CudaStream,
) -> Result<()> {
    if bytes == 0 {
        return Ok(());
    }
    bind(stream)?;
    // SAFETY: items 1–2 of this function's contract; item 3 by `bind` just above.
    unsafe { sys::cuMemcpyDtoHAsync_v2(dst.cast::<c_void>(), src, bytes, stream.cu_stream()) }
        .result()
        .map_err(cuda_err(format!("copying {bytes} bytes device→host")))
}

/// Enqueues a host→device copy of `bytes` bytes on `stream`.
///
/// # Safety
/// 1. `dst` points at `bytes` writable device bytes of `stream`'s context, not used by other
///    work until this copy has run;
/// 2. `src` points at `bytes` host bytes left unchanged and alive until the copy has completed
///    (pageable sources are copied before the call returns; pinned ones later);
/// 3. (established here) the calling thread has `stream`'s context bound: see [`bind`].
pub(crate) unsafe fn htod_async(
    dst: u64,
    src: *const u8,
    bytes: usize,
    stream: &CudaStream,
) -> Result<()> {
    if bytes == 0 {
        return Ok(());
    }
    bind(stream)?;
    // SAFETY: items 1–2 of this function's contract; item 3 by `bind` just above.
    unsafe { sys::cuMemcpyHtoDAsync_v2(dst, src.cast::<c_void>(), bytes, stream.cu_stream()) }
        .result()
        .map_err(cuda_err(format!("copying {bytes} bytes host→device")))
}

/// Enqueues a device→device copy of `bytes` bytes on `stream`.
///
/// # Safety
/// Both ranges are `bytes` long, belong to `stream`'s context, do not overlap, and are not
/// used by other work until the copy has run. (The context is bound here: see [`bind`].)
pub(crate) unsafe fn dtod_async(
    dst: u64,
    src: u64,
    bytes: usize,
    stream: &CudaStream,
) -> Result<()> {
    if bytes == 0 {
        return Ok(());
    }
    bind(stream)?;
    // SAFETY: this function's contract; the context is bound just above.
    unsafe { sys::cuMemcpyDtoDAsync_v2(dst, src, bytes, stream.cu_stream()) }
        .result()
        .map_err(cuda_err(format!("copying {bytes} bytes device→device")))
}

/// One page-locked, cacheable, zero-initialised host allocation.
pub(crate) struct PinnedAlloc {
    /// Owns the allocation (cudarc frees it with `cuMemFreeHost`, context bound, on drop).
    /// Its own event is never recorded: the engine orders copies with its lane events.
    _owner: PinnedHostSlice<u8>,
    ptr: *mut u8,
    cap: usize,
}

// SAFETY: the allocation is plain host memory owned by this value alone (`ptr` is derived from
// `_owner` and never shared outside `&self`/`&mut self` borrows), so moving it to or sharing
// it with another thread is as safe as for a `Vec<u8>`; PinnedHostSlice itself is Send + Sync.
unsafe impl Send for PinnedAlloc {}
// SAFETY: as above: `&PinnedAlloc` only gives out `&[u8]`.
unsafe impl Sync for PinnedAlloc {}

impl PinnedAlloc {
    /// Allocates and zeroes `cap ≥ 1` bytes of pinned, cacheable host memory.
    pub(crate) fn new(ctx: &Arc<CudaContext>, cap: usize) -> std::result::Result<Self, Error> {
        let cap = cap.max(1);
        // cudarc asserts `bytes < isize::MAX`: refuse what it would panic on.
        if cap >= isize::MAX as usize {
            return Err(Error::alloc(
                cap,
                "pinned host memory",
                "not below isize::MAX",
            ));
        }
        // SAFETY: the memory is uninitialised after this call; it is zeroed below, through
        // `MaybeUninit`, before any `&[u8]` over it exists. Flags: PORTABLE only — cacheable,
        // not write-combined (CUDA-NOTES pitfall 1).
        let mut owner =
            unsafe { ctx.alloc_pinned_with_flags::<u8>(cap, sys::CU_MEMHOSTALLOC_PORTABLE) }
                .map_err(|e| {
                    let reason = if e.0 == CUresult::CUDA_ERROR_OUT_OF_MEMORY {
                        "cuMemHostAlloc: out of memory (page-locked memory is limited)".to_string()
                    } else {
                        describe(e)
                    };
                    Error::alloc(cap, "pinned host memory", reason)
                })?;
        let ptr = owner
            .as_mut_ptr()
            .map_err(cuda_err("reading a pinned buffer's address"))?;
        // SAFETY: `ptr` points at `cap` bytes just allocated, owned by `owner` and aliased by
        // nothing; viewing them as `MaybeUninit<u8>` asserts nothing about their contents.
        let raw = unsafe { std::slice::from_raw_parts_mut(ptr.cast::<MaybeUninit<u8>>(), cap) };
        raw.par_chunks_mut(4 << 20)
            .for_each(|c| c.fill(MaybeUninit::new(0)));
        Ok(PinnedAlloc {
            _owner: owner,
            ptr,
            cap,
        })
    }

    pub(crate) fn cap(&self) -> usize {
        self.cap
    }

    pub(crate) fn as_ptr(&self) -> *mut u8 {
        self.ptr
    }

    /// The first `len ≤ cap` bytes.
    pub(crate) fn bytes(&self, len: usize) -> &[u8] {
        let len = len.min(self.cap);
        // SAFETY: `ptr` points at `cap` initialised bytes (zeroed in `new`, written since only
        // through `&mut self` or by device copies the engine waited for) owned by `self`.
        unsafe { std::slice::from_raw_parts(self.ptr, len) }
    }

    /// The first `len ≤ cap` bytes, writable.
    pub(crate) fn bytes_mut(&mut self, len: usize) -> &mut [u8] {
        let len = len.min(self.cap);
        // SAFETY: as in `bytes`, and `&mut self` makes this the only live reference.
        unsafe { std::slice::from_raw_parts_mut(self.ptr, len) }
    }
}

/// A pool of pinned host allocations, shared by an engine and the pinned outputs it made.
///
/// Dropping a [`PinnedBuf`] returns its allocation here; [`PinnedPool::take`] reuses one when
/// its capacity fits (at least the request, at most twice what a new allocation for it would
/// be: new ones are rounded up to 2 MiB). Idle allocations are kept up to
/// [`PinnedPool::cache_limit`] bytes.
#[derive(Clone)]
pub struct PinnedPool {
    inner: Arc<PoolInner>,
}

struct PoolInner {
    ctx: Arc<CudaContext>,
    state: Mutex<PoolState>,
}

struct PoolState {
    free: Vec<PinnedAlloc>,
    limit: usize,
}

impl PinnedPool {
    pub(crate) fn new(ctx: Arc<CudaContext>) -> Self {
        PinnedPool {
            inner: Arc::new(PoolInner {
                ctx,
                state: Mutex::new(PoolState {
                    free: Vec::new(),
                    limit: default_cache_limit(),
                }),
            }),
        }
    }

    fn state(&self) -> std::sync::MutexGuard<'_, PoolState> {
        self.inner.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Bytes of idle pinned memory the pool holds.
    pub fn cached_bytes(&self) -> usize {
        self.state().free.iter().map(|a| a.cap).sum()
    }

    /// The most idle pinned bytes the pool keeps (default: a quarter of physical memory).
    pub fn cache_limit(&self) -> usize {
        self.state().limit
    }

    /// Sets the most idle pinned bytes the pool keeps, releasing what is over it.
    pub fn set_cache_limit(&self, bytes: usize) {
        let evicted = {
            let mut st = self.state();
            st.limit = bytes;
            shrink_to(&mut st, bytes)
        };
        drop(evicted);
    }

    /// Releases every idle allocation.
    pub fn trim(&self) {
        let evicted = std::mem::take(&mut self.state().free);
        drop(evicted);
    }

    /// A pinned buffer of `len` bytes, reusing an idle allocation that fits, and the seconds
    /// spent allocating (0 on reuse). Reused memory holds old bytes; new memory is zeroed.
    ///
    /// # Errors
    /// [`Error::HostAllocation`] when the driver refuses the page-locked memory (after the idle
    /// allocations were released and the request retried once).
    pub fn take(&self, len: usize) -> Result<(PinnedBuf, f64)> {
        if len == 0 {
            return Ok((
                PinnedBuf {
                    alloc: None,
                    len: 0,
                    pool: Arc::downgrade(&self.inner),
                },
                0.0,
            ));
        }
        // New allocations are rounded up to 2 MiB (`pinned_capacity`): reuse one at most twice
        // the size a new allocation would have. (Comparing with the request itself made every
        // output under 1 MiB pin new memory at each drain, and fill the pool with allocations
        // no drain could reuse: found under the CUDA simulator, tests/cudasim_pool.rs.)
        let fresh = pinned_capacity(len)?;
        let reused = {
            let mut st = self.state();
            let best = st
                .free
                .iter()
                .enumerate()
                .filter(|(_, a)| a.cap >= len && a.cap / 2 <= fresh)
                .min_by_key(|(_, a)| a.cap)
                .map(|(i, _)| i);
            best.map(|i| st.free.swap_remove(i))
        };
        if let Some(alloc) = reused {
            return Ok((self.wrap(alloc, len), 0.0));
        }
        let started = Instant::now();
        let cap = fresh;
        let alloc = match PinnedAlloc::new(&self.inner.ctx, cap) {
            Ok(a) => a,
            Err(_) => {
                self.trim();
                PinnedAlloc::new(&self.inner.ctx, cap)?
            }
        };
        Ok((self.wrap(alloc, len), started.elapsed().as_secs_f64()))
    }

    fn wrap(&self, alloc: PinnedAlloc, len: usize) -> PinnedBuf {
        PinnedBuf {
            alloc: Some(alloc),
            len,
            pool: Arc::downgrade(&self.inner),
        }
    }
}

/// The capacity the pool allocates for a request of `len` bytes: rounded up to 2 MiB so that
/// near sizes share allocations (and huge pages fit), checked.
///
/// # Errors
/// [`Error::HostAllocation`] when the rounded size overflows or is not below `isize::MAX`.
pub(crate) fn pinned_capacity(len: usize) -> Result<usize> {
    len.max(1)
        .checked_next_multiple_of(2 << 20)
        .filter(|&c| c < isize::MAX as usize)
        .ok_or_else(|| Error::alloc(len, "pinned host memory", "size overflows when rounded"))
}

fn shrink_to(st: &mut PoolState, limit: usize) -> Vec<PinnedAlloc> {
    let mut evicted = Vec::new();
    // Drop the largest first until the rest fits.
    st.free.sort_by_key(|a| a.cap);
    while st.free.iter().map(|a| a.cap).sum::<usize>() > limit {
        match st.free.pop() {
            Some(a) => evicted.push(a),
            None => break,
        }
    }
    evicted
}

impl fmt::Debug for PinnedPool {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let st = self.state();
        f.debug_struct("PinnedPool")
            .field("cached", &st.free.len())
            .field(
                "cached_bytes",
                &st.free.iter().map(|a| a.cap).sum::<usize>(),
            )
            .field("limit", &st.limit)
            .finish()
    }
}

/// The pool's default limit: a quarter of the memory this process may use (the cgroup limit
/// and `MemTotal`), at most what is available now, or 8 GiB when unknown.
fn default_cache_limit() -> usize {
    auto_cache_limit(&MemoryLimits::read())
}

pub(crate) fn auto_cache_limit(m: &MemoryLimits) -> usize {
    let quarter = m.total().map(|t| t / 4);
    let limit = match (quarter, m.available()) {
        (Some(q), Some(a)) => q.min(a),
        (q, a) => q.or(a).unwrap_or(8 << 30),
    };
    usize::try_from(limit).unwrap_or(usize::MAX)
}

/// The automatic pin budget: half the memory this process may use in all (the smaller of
/// `MemTotal` and the cgroup limit), at most three quarters of what is available now
/// (`MemAvailable`, and the cgroup's limit less its usage) — page-locked memory cannot be
/// swapped or reclaimed, so pinning what is not free pushes other memory out or gets the process
/// killed in a container. Unknown limits give no budget limit.
pub(crate) fn auto_pin_budget(m: &MemoryLimits) -> usize {
    let half = m.total().map(|t| t / 2);
    let avail = m.available().map(|a| a / 4 * 3);
    let budget = match (half, avail) {
        (Some(h), Some(a)) => h.min(a),
        (h, a) => h.or(a).unwrap_or(u64::MAX),
    };
    usize::try_from(budget).unwrap_or(usize::MAX)
}

/// Pinned (page-locked, cacheable) host bytes backing a pinned output column: the
/// [`Storage`] of kind [`StorageKind::Pinned`]. Dropping it returns the memory to its pool.
///
/// The engine writes it only inside a drain that waits for every copy before returning, so a
/// `PinnedBuf` reachable by safe code never has a copy in flight.
pub struct PinnedBuf {
    alloc: Option<PinnedAlloc>,
    len: usize,
    pool: Weak<PoolInner>,
}

impl PinnedBuf {
    /// Length in bytes.
    pub fn len(&self) -> usize {
        self.len
    }

    /// True when empty.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Shortens the buffer to its first `len` bytes (the allocation, and its capacity, stay).
    pub(crate) fn truncate(&mut self, len: usize) {
        self.len = self.len.min(len);
    }

    /// Capacity of the underlying allocation.
    pub fn capacity(&self) -> usize {
        self.alloc.as_ref().map_or(0, |a| a.cap())
    }
}

impl Storage for PinnedBuf {
    fn kind(&self) -> StorageKind {
        StorageKind::Pinned
    }
    fn as_bytes(&self) -> &[u8] {
        self.alloc.as_ref().map_or(&[], |a| a.bytes(self.len))
    }
    fn as_bytes_mut(&mut self) -> &mut [u8] {
        let len = self.len;
        match self.alloc.as_mut() {
            Some(a) => a.bytes_mut(len),
            None => &mut [],
        }
    }
    fn into_any(self: Box<Self>) -> Box<dyn std::any::Any> {
        self
    }
}

impl Drop for PinnedBuf {
    fn drop(&mut self) {
        let _current = ContextGuard::save();
        let (Some(alloc), Some(pool)) = (self.alloc.take(), self.pool.upgrade()) else {
            return;
        };
        let evicted = {
            let mut st = pool.state.lock().unwrap_or_else(|p| p.into_inner());
            if alloc.cap > st.limit {
                vec![alloc]
            } else {
                st.free.push(alloc);
                let limit = st.limit;
                shrink_to(&mut st, limit)
            }
        };
        // Freed outside the lock (cuMemFreeHost can take a while).
        drop(evicted);
    }
}

impl fmt::Debug for PinnedBuf {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PinnedBuf")
            .field("len", &self.len)
            .field("capacity", &self.capacity())
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pinned_capacity_rounds_and_refuses_overflow() {
        assert_eq!(pinned_capacity(0).unwrap(), 2 << 20);
        assert_eq!(pinned_capacity(1).unwrap(), 2 << 20);
        assert_eq!(pinned_capacity(2 << 20).unwrap(), 2 << 20);
        assert_eq!(pinned_capacity((2 << 20) + 1).unwrap(), 4 << 20);
        for len in [usize::MAX, usize::MAX - (1 << 20), isize::MAX as usize] {
            let e = pinned_capacity(len).unwrap_err();
            assert!(matches!(e, Error::HostAllocation { .. }), "{len}: {e}");
        }
    }

    #[test]
    fn pin_budget_and_pool_limit_follow_the_cgroup_and_available_memory() {
        let gib = 1u64 << 30;
        // A 4 GiB container on a 512 GiB host with 400 GiB available.
        let container = MemoryLimits {
            host_total: Some(512 * gib),
            host_available: Some(400 * gib),
            cgroup_limit: Some(4 * gib),
            cgroup_usage: Some(gib),
        };
        assert_eq!(auto_pin_budget(&container) as u64, 2 * gib);
        assert_eq!(auto_cache_limit(&container) as u64, gib);
        // A busy host: 64 GiB in all, 8 GiB available.
        let busy = MemoryLimits {
            host_total: Some(64 * gib),
            host_available: Some(8 * gib),
            cgroup_limit: None,
            cgroup_usage: None,
        };
        assert_eq!(auto_pin_budget(&busy) as u64, 6 * gib);
        assert_eq!(auto_cache_limit(&busy) as u64, 8 * gib);
        // Nothing known: no budget limit, the pool keeps 8 GiB.
        assert_eq!(auto_pin_budget(&MemoryLimits::default()), usize::MAX);
        assert_eq!(auto_cache_limit(&MemoryLimits::default()), 8 << 30);
    }
}
