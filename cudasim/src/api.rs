//! The driver entry points the engine and cudarc call, under the names the CUDA 12.0 bindings
//! load them by, and the simulator's own control functions (`cudasim_*`) for tests.

use std::ffi::{c_char, c_int, c_uint, c_void, CStr};
use std::sync::Arc;

use crate::err;
use crate::fault;
use crate::kernel::{self, Launch, ENTRIES};
use crate::mem::{registry, Found, Kind, Life, DEVICE_OFFSET};
use crate::report::{self, fail};
use crate::sched::{self, Dep, Stream};
use crate::state::{
    self, config, current_ctx, handle, handles, id_of, log, set_current_ctx, trace, Ctx, Event,
    Function, Handles, Module, CTX_BASE, EVENT_BASE, FUNCTION_BASE, MODULE_BASE, POOL_HANDLE,
    STREAM_BASE,
};

type CUresult = u32;
type CUdevice = c_int;
type CUdeviceptr = u64;
type Handle = *mut c_void;

const DEVICE_NAME: &str = "CUDA simulator (arraydrain cudasim, H100-like)";
const CU_MEMHOSTALLOC_WRITECOMBINED: c_uint = 0x04;

/// Common entry work: tracing, the initialisation check, fault injection.
fn enter(name: &'static str) -> Result<(), CUresult> {
    trace(|| format!("call {name}"));
    if !state::initialised() {
        return Err(err::NOT_INITIALIZED);
    }
    match fault::check(name) {
        Some(code) => Err(code),
        None => Ok(()),
    }
}

/// Runs an entry point body; a panic inside the simulator is a bug of the simulator: abort.
fn body(name: &'static str, f: impl FnOnce() -> Result<(), CUresult>) -> CUresult {
    match std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)) {
        Ok(Ok(())) => err::SUCCESS,
        Ok(Err(code)) => {
            trace(|| format!("{name} returns {code}"));
            code
        }
        Err(_) => fail(name, "internal error: the simulator panicked"),
    }
}

fn host_of(dev: u64) -> usize {
    dev.wrapping_sub(DEVICE_OFFSET) as usize
}

fn need_ctx(h: &Handles) -> Result<u64, CUresult> {
    let c = current_ctx();
    if c != 0 && h.ctxs.contains_key(&c) {
        Ok(c)
    } else {
        Err(err::INVALID_CONTEXT)
    }
}

/// The stream a handle names: 0 / 1 the current context's legacy default stream, 2 the calling
/// thread's per-thread default stream, else a created one (which must belong to the current
/// context).
fn resolve_stream(call: &str, hs: Handle) -> Result<Arc<Stream>, CUresult> {
    let mut h = handles();
    let ctx = need_ctx(&h)?;
    let v = hs as usize;
    let s = match v {
        0 | 1 => Arc::clone(&h.ctxs[&ctx].legacy),
        2 => {
            let key = (state::thread_id(), ctx);
            if let Some(s) = h.per_thread.get(&key) {
                Arc::clone(s)
            } else {
                let id = h.fresh_id();
                let s = Stream::new(id, ctx, true, false);
                h.per_thread.insert(key, Arc::clone(&s));
                if let Some(c) = h.ctxs.get_mut(&ctx) {
                    c.streams.push(id);
                }
                h.streams.insert(id, Arc::clone(&s));
                s
            }
        }
        _ => match id_of(STREAM_BASE, v).and_then(|id| h.streams.get(&id)) {
            Some(s) => Arc::clone(s),
            None => {
                log(&format!("{call}: {v:#x} is not a stream"));
                return Err(err::INVALID_HANDLE);
            }
        },
    };
    if s.ctx != ctx {
        log(&format!(
            "{call}: stream #{} belongs to context #{}, but context #{ctx} is current",
            s.id, s.ctx
        ));
        return Err(err::INVALID_CONTEXT);
    }
    Ok(s)
}

/// The implicit ordering of the legacy default stream: work on it waits for all earlier work
/// of the context's blocking streams, and work on a blocking stream waits for earlier legacy
/// work.
fn implicit_deps(s: &Stream) -> Vec<Dep> {
    let h = handles();
    let Some(ctx) = h.ctxs.get(&s.ctx) else {
        return Vec::new();
    };
    if s.legacy {
        ctx.streams
            .iter()
            .filter_map(|id| h.streams.get(id))
            .filter(|o| o.blocking)
            .map(|o| (Arc::clone(&o.state), o.state.issued()))
            .collect()
    } else if s.blocking {
        vec![(Arc::clone(&ctx.legacy.state), ctx.legacy.state.issued())]
    } else {
        Vec::new()
    }
}

fn issue(
    s: &Stream,
    name: &'static str,
    desc: String,
    mut deps: Vec<Dep>,
    work: Box<dyn FnOnce() + Send>,
) -> u64 {
    deps.extend(implicit_deps(s));
    s.issue(name, desc, deps, work)
}

/// Checks at issue that `[dev, dev + len)` is live device memory of context `ctx`; returns the
/// allocation's base (host address).
fn check_device(call: &str, what: &str, dev: u64, len: usize, ctx: u64) -> usize {
    let reg = registry();
    match reg.find(host_of(dev), len) {
        Found::Inside(a) if a.kind == Kind::Device => {
            if a.ctx != ctx {
                fail(
                    call,
                    &format!("{what} [{dev:#x}, +{len}) belongs to another context: {a}"),
                );
            }
            match &a.life {
                Life::Live => a.host,
                Life::FreePending(_) => fail(
                    call,
                    &format!("{what} [{dev:#x}, +{len}) is used after cuMemFreeAsync: {a}"),
                ),
                Life::Freed(_) => fail(
                    call,
                    &format!("{what} [{dev:#x}, +{len}) is a use after free: {a}"),
                ),
            }
        }
        Found::Inside(a) | Found::OutOfBounds(a) => fail(
            call,
            &format!("{what} [{dev:#x}, +{len}) is out of bounds of {a}"),
        ),
        Found::Nowhere => fail(
            call,
            &format!("{what} {dev:#x} (+{len}) is not device memory"),
        ),
    }
}

/// For a host range: `Some(base)` of the pinned allocation that holds it, `None` for pageable
/// memory; a range that overruns a pinned allocation, or lies in a freed one, aborts.
fn check_host(call: &str, what: &str, host: usize, len: usize) -> Option<usize> {
    let reg = registry();
    match reg.find(host, len) {
        Found::Inside(a) if a.kind == Kind::Pinned => match &a.life {
            Life::Live => Some(a.host),
            _ => fail(
                call,
                &format!("{what} {host:#x} (+{len}) is freed pinned memory: {a}"),
            ),
        },
        Found::OutOfBounds(a) if a.kind == Kind::Pinned => {
            fail(call, &format!("{what} {host:#x} (+{len}) overruns {a}"))
        }
        Found::Inside(a) | Found::OutOfBounds(a) => fail(
            call,
            &format!(
                "{what} {host:#x} is a device allocation's host mapping, given as host memory: {a}"
            ),
        ),
        Found::Nowhere => None,
    }
}

/// Marks an allocation written (no longer all zero) when a write to it is issued.
fn written(base: usize) {
    if let Some(a) = registry().by_base(base) {
        a.fresh = false;
    }
}

fn add_user(base: usize, s: &Stream, seq: u64) {
    if let Some(a) = registry().by_base(base) {
        a.users.push((Arc::clone(&s.state), seq));
        a.users.retain(|(st, q)| !st.done(*q));
    }
}

/// Checks, when an operation runs, that the allocations it uses are still live and that a
/// stream-ordered allocation made on another stream was ordered before it.
fn check_running(call: &'static str, bases: &[usize], stream: u64) {
    let reg = registry();
    for b in bases {
        let Some(a) = reg.allocs.get(b) else { continue };
        if let Life::Freed(_) = a.life {
            fail(
                call,
                &format!("the operation ran after its memory was freed: {a}"),
            );
        }
        if let Some((st, seq)) = &a.ordered {
            if st.id != stream && !st.done(*seq) {
                fail(
                    call,
                    &format!(
                        "stream #{stream} uses {a} before its stream-ordered allocation on stream #{} was ordered before it (synchronise or wait for an event first)",
                        st.id
                    ),
                );
            }
        }
    }
}

fn check_canaries(call: &'static str, bases: &[usize]) {
    let reg = registry();
    for b in bases {
        if let Some(a) = reg.allocs.get(b) {
            if let Err(e) = a.check_canaries() {
                fail(call, &format!("memory next to {a} was overwritten: {e}"));
            }
        }
    }
}

fn write<T>(p: *mut T, v: T) -> Result<(), CUresult> {
    if p.is_null() {
        return Err(err::INVALID_VALUE);
    }
    // SAFETY: the caller passed a non-null out-pointer for a value of this type (the API's
    // contract).
    unsafe { p.write(v) };
    Ok(())
}

// ---- initialisation and device -------------------------------------------------------------

#[no_mangle]
pub unsafe extern "C" fn cuInit(flags: c_uint) -> CUresult {
    trace(|| "call cuInit".into());
    if flags != 0 {
        return err::INVALID_VALUE;
    }
    report::install_fault_handler();
    state::set_initialised();
    err::SUCCESS
}

#[no_mangle]
pub unsafe extern "C" fn cuDriverGetVersion(v: *mut c_int) -> CUresult {
    body("cuDriverGetVersion", || write(v, config().driver_version))
}

#[no_mangle]
pub unsafe extern "C" fn cuDeviceGet(dev: *mut CUdevice, ordinal: c_int) -> CUresult {
    body("cuDeviceGet", || {
        enter("cuDeviceGet")?;
        if ordinal != 0 {
            return Err(err::INVALID_DEVICE);
        }
        write(dev, 0)
    })
}

#[no_mangle]
pub unsafe extern "C" fn cuDeviceGetCount(n: *mut c_int) -> CUresult {
    body("cuDeviceGetCount", || {
        enter("cuDeviceGetCount")?;
        write(n, 1)
    })
}

fn check_dev(dev: CUdevice) -> Result<(), CUresult> {
    if dev == 0 {
        Ok(())
    } else {
        Err(err::INVALID_DEVICE)
    }
}

#[no_mangle]
pub unsafe extern "C" fn cuDeviceGetName(name: *mut c_char, len: c_int, dev: CUdevice) -> CUresult {
    body("cuDeviceGetName", || {
        enter("cuDeviceGetName")?;
        check_dev(dev)?;
        if name.is_null() || len <= 0 {
            return Err(err::INVALID_VALUE);
        }
        let bytes = DEVICE_NAME.as_bytes();
        let n = bytes.len().min(len as usize - 1);
        // SAFETY: `name` holds `len` bytes (the API's contract); n + 1 <= len.
        unsafe {
            std::ptr::copy_nonoverlapping(bytes.as_ptr(), name.cast::<u8>(), n);
            *name.add(n) = 0;
        }
        Ok(())
    })
}

#[no_mangle]
pub unsafe extern "C" fn cuDeviceTotalMem_v2(bytes: *mut usize, dev: CUdevice) -> CUresult {
    body("cuDeviceTotalMem_v2", || {
        enter("cuDeviceTotalMem_v2")?;
        check_dev(dev)?;
        write(bytes, config().device_bytes as usize)
    })
}

#[no_mangle]
pub unsafe extern "C" fn cuMemGetInfo_v2(free: *mut usize, total: *mut usize) -> CUresult {
    body("cuMemGetInfo_v2", || {
        enter("cuMemGetInfo_v2")?;
        need_ctx(&handles())?;
        let used = registry().device_used;
        let cap = config().device_bytes;
        write(free, cap.saturating_sub(used) as usize)?;
        write(total, cap as usize)
    })
}

#[no_mangle]
pub unsafe extern "C" fn cuDeviceGetAttribute(
    pi: *mut c_int,
    attrib: c_int,
    dev: CUdevice,
) -> CUresult {
    body("cuDeviceGetAttribute", || {
        enter("cuDeviceGetAttribute")?;
        check_dev(dev)?;
        let v = match attrib {
            1 => kernel::MAX_THREADS_PER_BLOCK as c_int,
            2..=4 => kernel::MAX_BLOCK[(attrib - 2) as usize] as c_int,
            5..=7 => kernel::MAX_GRID[(attrib - 5) as usize] as c_int,
            8 => kernel::MAX_SHARED_PER_BLOCK as c_int,
            10 => 32,
            16 => kernel::SMS,
            75 => 9,
            76 => 0,
            115 => 1,
            _ => {
                log(&format!(
                    "cuDeviceGetAttribute: attribute {attrib} is not simulated (CUDA_ERROR_NOT_SUPPORTED)"
                ));
                return Err(err::NOT_SUPPORTED);
            }
        };
        write(pi, v)
    })
}

// ---- contexts --------------------------------------------------------------------------------

fn new_ctx(h: &mut Handles, primary: bool) -> u64 {
    let id = h.fresh_id();
    let sid = h.fresh_id();
    let legacy = Stream::new(sid, id, true, true);
    h.ctxs.insert(
        id,
        Ctx {
            primary,
            refs: 1,
            legacy,
            streams: Vec::new(),
            retired: Vec::new(),
        },
    );
    id
}

/// Leaks that context destruction found, all contexts together.
static LEAKED: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

/// Destroys context `id`: waits for its streams, reports and frees every allocation still live
/// in it.
fn destroy_ctx(id: u64) {
    let streams: Vec<Arc<Stream>> = {
        let h = handles();
        if !h.ctxs.contains_key(&id) {
            return;
        }
        drop(h);
        ctx_streams(id)
    };
    for s in &streams {
        s.drain();
    }
    {
        let mut reg = registry();
        let live: Vec<(usize, String)> = reg
            .live(id)
            .into_iter()
            .map(|a| (a.host, a.to_string()))
            .collect();
        if !live.is_empty() {
            log(&format!(
                "LEAK: context #{id} destroyed with {} allocation(s) still live:",
                live.len()
            ));
            for (host, text) in live {
                log(&format!("LEAK:   {text}"));
                LEAKED.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                reg.release(host, format!("the destruction of context #{id}"));
            }
        }
    }
    let mut h = handles();
    for s in &streams {
        s.close();
        h.streams.remove(&s.id);
    }
    h.per_thread.retain(|(_, c), _| *c != id);
    h.ctxs.remove(&id);
    if h.primary == Some(id) {
        h.primary = None;
    }
    if current_ctx() == id {
        set_current_ctx(0);
    }
}

#[no_mangle]
pub unsafe extern "C" fn cuDevicePrimaryCtxRetain(pctx: *mut Handle, dev: CUdevice) -> CUresult {
    body("cuDevicePrimaryCtxRetain", || {
        enter("cuDevicePrimaryCtxRetain")?;
        check_dev(dev)?;
        let mut h = handles();
        let id = match h.primary {
            Some(id) => {
                if let Some(c) = h.ctxs.get_mut(&id) {
                    c.refs += 1;
                }
                id
            }
            None => {
                let id = new_ctx(&mut h, true);
                h.primary = Some(id);
                id
            }
        };
        write(pctx, handle(CTX_BASE, id) as Handle)
    })
}

#[no_mangle]
pub unsafe extern "C" fn cuDevicePrimaryCtxRelease_v2(dev: CUdevice) -> CUresult {
    body("cuDevicePrimaryCtxRelease_v2", || {
        enter("cuDevicePrimaryCtxRelease_v2")?;
        check_dev(dev)?;
        let last = {
            let mut h = handles();
            let Some(id) = h.primary else {
                return Err(err::INVALID_CONTEXT);
            };
            let c = h.ctxs.get_mut(&id).ok_or(err::INVALID_CONTEXT)?;
            c.refs -= 1;
            (c.refs == 0).then_some(id)
        };
        if let Some(id) = last {
            destroy_ctx(id);
        }
        Ok(())
    })
}

#[no_mangle]
pub unsafe extern "C" fn cuCtxCreate_v3(
    pctx: *mut Handle,
    _params: *mut c_void,
    nparams: c_int,
    _flags: c_uint,
    dev: CUdevice,
) -> CUresult {
    body("cuCtxCreate_v3", || {
        enter("cuCtxCreate_v3")?;
        check_dev(dev)?;
        if nparams != 0 {
            log("cuCtxCreate_v3: execution affinity parameters are not simulated");
            return Err(err::NOT_SUPPORTED);
        }
        let id = new_ctx(&mut handles(), false);
        set_current_ctx(id);
        write(pctx, handle(CTX_BASE, id) as Handle)
    })
}

fn ctx_id(v: Handle) -> Result<u64, CUresult> {
    let id = id_of(CTX_BASE, v as usize).ok_or(err::INVALID_CONTEXT)?;
    if handles().ctxs.contains_key(&id) {
        Ok(id)
    } else {
        Err(err::INVALID_CONTEXT)
    }
}

#[no_mangle]
pub unsafe extern "C" fn cuCtxDestroy_v2(ctx: Handle) -> CUresult {
    body("cuCtxDestroy_v2", || {
        enter("cuCtxDestroy_v2")?;
        let id = ctx_id(ctx)?;
        if handles().ctxs.get(&id).is_some_and(|c| c.primary) {
            log("cuCtxDestroy_v2 on a primary context (release it instead)");
            return Err(err::INVALID_CONTEXT);
        }
        destroy_ctx(id);
        Ok(())
    })
}

#[no_mangle]
pub unsafe extern "C" fn cuCtxGetCurrent(pctx: *mut Handle) -> CUresult {
    body("cuCtxGetCurrent", || {
        enter("cuCtxGetCurrent")?;
        let c = current_ctx();
        let v = if c != 0 && handles().ctxs.contains_key(&c) {
            handle(CTX_BASE, c) as Handle
        } else {
            std::ptr::null_mut()
        };
        write(pctx, v)
    })
}

#[no_mangle]
pub unsafe extern "C" fn cuCtxSetCurrent(ctx: Handle) -> CUresult {
    body("cuCtxSetCurrent", || {
        enter("cuCtxSetCurrent")?;
        if ctx.is_null() {
            set_current_ctx(0);
            return Ok(());
        }
        let id = ctx_id(ctx)?;
        set_current_ctx(id);
        Ok(())
    })
}

fn ctx_streams(ctx: u64) -> Vec<Arc<Stream>> {
    let h = handles();
    let Some(c) = h.ctxs.get(&ctx) else {
        return Vec::new();
    };
    let mut v: Vec<Arc<Stream>> = c
        .streams
        .iter()
        .filter_map(|s| h.streams.get(s).cloned())
        .collect();
    v.push(Arc::clone(&c.legacy));
    v.extend(c.retired.iter().cloned());
    v
}

#[no_mangle]
pub unsafe extern "C" fn cuCtxSynchronize() -> CUresult {
    body("cuCtxSynchronize", || {
        let injected = enter("cuCtxSynchronize");
        if injected == Err(err::NOT_INITIALIZED) {
            return injected;
        }
        let ctx = need_ctx(&handles())?;
        for s in ctx_streams(ctx) {
            s.drain();
        }
        injected
    })
}

// ---- streams and events ------------------------------------------------------------------------

#[no_mangle]
pub unsafe extern "C" fn cuStreamCreate(ph: *mut Handle, flags: c_uint) -> CUresult {
    body("cuStreamCreate", || {
        enter("cuStreamCreate")?;
        let mut h = handles();
        let ctx = need_ctx(&h)?;
        let id = h.fresh_id();
        let s = Stream::new(id, ctx, flags & 1 == 0, false);
        h.streams.insert(id, s);
        if let Some(c) = h.ctxs.get_mut(&ctx) {
            c.streams.push(id);
        }
        write(ph, handle(STREAM_BASE, id) as Handle)
    })
}

#[no_mangle]
pub unsafe extern "C" fn cuStreamDestroy_v2(hs: Handle) -> CUresult {
    body("cuStreamDestroy_v2", || {
        enter("cuStreamDestroy_v2")?;
        let v = hs as usize;
        let mut h = handles();
        let Some(id) = id_of(STREAM_BASE, v).filter(|id| h.streams.contains_key(id)) else {
            log(&format!(
                "cuStreamDestroy_v2: {v:#x} is not a created stream"
            ));
            return Err(err::INVALID_HANDLE);
        };
        if let Some(s) = h.streams.remove(&id) {
            // The worker finishes what was issued, then stops (the driver's behaviour).
            s.close();
            if let Some(c) = h.ctxs.get_mut(&s.ctx) {
                c.streams.retain(|x| *x != id);
                c.retired.retain(|r| r.state.issued() > r.state.completed());
                c.retired.push(s);
            }
        }
        Ok(())
    })
}

/// Issues a no-op marker carrying the stream's implicit ordering and waits for it.
fn sync_stream(s: &Stream) {
    let seq = issue(
        s,
        "cuStreamSynchronize",
        "a synchronisation marker".into(),
        Vec::new(),
        Box::new(|| {}),
    );
    sched::wait_for(&s.state, seq);
}

#[no_mangle]
pub unsafe extern "C" fn cuStreamSynchronize(hs: Handle) -> CUresult {
    body("cuStreamSynchronize", || {
        let injected = enter("cuStreamSynchronize");
        if injected == Err(err::NOT_INITIALIZED) {
            return injected;
        }
        let s = resolve_stream("cuStreamSynchronize", hs)?;
        sync_stream(&s);
        injected
    })
}

fn event_id(ev: Handle) -> Result<u64, CUresult> {
    let v = ev as usize;
    match id_of(EVENT_BASE, v) {
        Some(id) if handles().events.contains_key(&id) => Ok(id),
        _ => {
            log(&format!("{v:#x} is not an event"));
            Err(err::INVALID_HANDLE)
        }
    }
}

#[no_mangle]
pub unsafe extern "C" fn cuEventCreate(ph: *mut Handle, _flags: c_uint) -> CUresult {
    body("cuEventCreate", || {
        enter("cuEventCreate")?;
        let mut h = handles();
        let ctx = need_ctx(&h)?;
        let id = h.fresh_id();
        h.events.insert(
            id,
            Event {
                ctx,
                recorded: None,
            },
        );
        write(ph, handle(EVENT_BASE, id) as Handle)
    })
}

#[no_mangle]
pub unsafe extern "C" fn cuEventDestroy_v2(ev: Handle) -> CUresult {
    body("cuEventDestroy_v2", || {
        enter("cuEventDestroy_v2")?;
        let id = event_id(ev)?;
        handles().events.remove(&id);
        Ok(())
    })
}

#[no_mangle]
pub unsafe extern "C" fn cuEventRecord(ev: Handle, hs: Handle) -> CUresult {
    body("cuEventRecord", || {
        enter("cuEventRecord")?;
        let id = event_id(ev)?;
        let s = resolve_stream("cuEventRecord", hs)?;
        if handles().events.get(&id).map(|e| e.ctx) != Some(s.ctx) {
            log("cuEventRecord: the event and the stream belong to different contexts");
            return Err(err::INVALID_HANDLE);
        }
        let seq = issue(
            &s,
            "cuEventRecord",
            format!("cuEventRecord of event #{id}"),
            Vec::new(),
            Box::new(|| {}),
        );
        if let Some(e) = handles().events.get_mut(&id) {
            e.recorded = Some((Arc::clone(&s.state), seq));
        }
        Ok(())
    })
}

fn recorded(id: u64) -> Option<Dep> {
    handles().events.get(&id).and_then(|e| e.recorded.clone())
}

#[no_mangle]
pub unsafe extern "C" fn cuEventQuery(ev: Handle) -> CUresult {
    body("cuEventQuery", || {
        let injected = enter("cuEventQuery");
        if injected == Err(err::NOT_INITIALIZED) {
            return injected;
        }
        let id = event_id(ev)?;
        let dep = recorded(id);
        if injected.is_err() {
            if let Some((st, seq)) = &dep {
                sched::wait_for(st, *seq);
            }
            return injected;
        }
        match dep {
            Some((st, seq)) if !st.done(seq) => Err(err::NOT_READY),
            _ => Ok(()),
        }
    })
}

#[no_mangle]
pub unsafe extern "C" fn cuEventSynchronize(ev: Handle) -> CUresult {
    body("cuEventSynchronize", || {
        let injected = enter("cuEventSynchronize");
        if injected == Err(err::NOT_INITIALIZED) {
            return injected;
        }
        let id = event_id(ev)?;
        if let Some((st, seq)) = recorded(id) {
            sched::wait_for(&st, seq);
        }
        injected
    })
}

#[no_mangle]
pub unsafe extern "C" fn cuStreamWaitEvent(hs: Handle, ev: Handle, flags: c_uint) -> CUresult {
    body("cuStreamWaitEvent", || {
        enter("cuStreamWaitEvent")?;
        if flags != 0 {
            return Err(err::INVALID_VALUE);
        }
        let id = event_id(ev)?;
        let s = resolve_stream("cuStreamWaitEvent", hs)?;
        let deps: Vec<Dep> = recorded(id).into_iter().collect();
        issue(
            &s,
            "cuStreamWaitEvent",
            format!("cuStreamWaitEvent on event #{id}"),
            deps,
            Box::new(|| {}),
        );
        Ok(())
    })
}

// ---- memory ------------------------------------------------------------------------------------

/// Maps a device allocation of `size` bytes, waiting once for pending frees when the device is
/// full (the pool reuses memory freed in stream order).
fn device_alloc(size: usize, ctx: u64, made_by: String) -> Result<usize, CUresult> {
    let cap = config().device_bytes;
    for attempt in 0..2 {
        {
            let mut reg = registry();
            if reg.device_used.saturating_add(size as u64) <= cap {
                return reg
                    .map(Kind::Device, size, ctx, made_by.clone())
                    .map(|a| a.host)
                    .ok_or(err::OUT_OF_MEMORY);
            }
        }
        if attempt == 0 {
            for s in ctx_streams(ctx) {
                s.drain();
            }
        }
    }
    trace(|| format!("device memory full: {size} bytes refused"));
    Err(err::OUT_OF_MEMORY)
}

#[no_mangle]
pub unsafe extern "C" fn cuMemAllocAsync(
    dptr: *mut CUdeviceptr,
    size: usize,
    hs: Handle,
) -> CUresult {
    body("cuMemAllocAsync", || {
        enter("cuMemAllocAsync")?;
        if dptr.is_null() {
            return Err(err::INVALID_VALUE);
        }
        let s = resolve_stream("cuMemAllocAsync", hs)?;
        let host = device_alloc(size, s.ctx, format!("cuMemAllocAsync on stream #{}", s.id))?;
        let seq = issue(
            &s,
            "cuMemAllocAsync",
            format!("cuMemAllocAsync of {size} bytes"),
            Vec::new(),
            Box::new(|| {}),
        );
        if let Some(a) = registry().by_base(host) {
            a.ordered = Some((Arc::clone(&s.state), seq));
        }
        write(dptr, host as u64 + DEVICE_OFFSET)
    })
}

#[no_mangle]
pub unsafe extern "C" fn cuMemAlloc_v2(dptr: *mut CUdeviceptr, size: usize) -> CUresult {
    body("cuMemAlloc_v2", || {
        enter("cuMemAlloc_v2")?;
        if dptr.is_null() || size == 0 {
            return Err(err::INVALID_VALUE);
        }
        let ctx = need_ctx(&handles())?;
        let host = device_alloc(size, ctx, "cuMemAlloc_v2".into())?;
        write(dptr, host as u64 + DEVICE_OFFSET)
    })
}

/// The live device allocation that starts at `dev`, for a free; aborts otherwise.
fn free_target(call: &str, dev: u64) -> usize {
    let mut reg = registry();
    let host = host_of(dev);
    match reg.by_base(host) {
        Some(a) if a.kind == Kind::Device && a.life == Life::Live => host,
        Some(a) => {
            let a = format!("{a}");
            fail(
                call,
                &format!("{dev:#x} is not a live device allocation (a double free?): {a}"),
            )
        }
        None => {
            let text = match reg.find(host, 1) {
                Found::Inside(a) | Found::OutOfBounds(a) => format!("it points into {a}"),
                Found::Nowhere => "no device allocation is there".into(),
            };
            fail(
                call,
                &format!("{dev:#x} is not the start of a device allocation: {text}"),
            )
        }
    }
}

#[no_mangle]
pub unsafe extern "C" fn cuMemFreeAsync(dptr: CUdeviceptr, hs: Handle) -> CUresult {
    body("cuMemFreeAsync", || {
        enter("cuMemFreeAsync")?;
        let s = resolve_stream("cuMemFreeAsync", hs)?;
        let host = free_target("cuMemFreeAsync", dptr);
        let by = format!("cuMemFreeAsync on stream #{}", s.id);
        if let Some(a) = registry().by_base(host) {
            a.life = Life::FreePending(by.clone());
        }
        let sid = s.id;
        issue(
            &s,
            "cuMemFreeAsync",
            format!("cuMemFreeAsync of {dptr:#x}"),
            Vec::new(),
            Box::new(move || {
                let mut reg = registry();
                if let Some(a) = reg.allocs.get(&host) {
                    if let Some((st, q)) =
                        a.users.iter().find(|(st, q)| st.id != sid && !st.done(*q))
                    {
                        let msg = format!(
                            "{a} is freed on stream #{sid} while stream #{} still has work using it (its operation {q}); order the free after it with an event",
                            st.id
                        );
                        drop(reg);
                        fail("cuMemFreeAsync", &msg);
                    }
                }
                reg.release(host, by);
            }),
        );
        Ok(())
    })
}

#[no_mangle]
pub unsafe extern "C" fn cuMemFree_v2(dptr: CUdeviceptr) -> CUresult {
    body("cuMemFree_v2", || {
        enter("cuMemFree_v2")?;
        let ctx = need_ctx(&handles())?;
        let host = free_target("cuMemFree_v2", dptr);
        // cuMemFree waits for the work using the memory (an implicit synchronisation).
        for s in ctx_streams(ctx) {
            s.drain();
        }
        registry().release(host, "cuMemFree_v2".into());
        Ok(())
    })
}

#[no_mangle]
pub unsafe extern "C" fn cuMemHostAlloc(
    pp: *mut *mut c_void,
    size: usize,
    flags: c_uint,
) -> CUresult {
    body("cuMemHostAlloc", || {
        enter("cuMemHostAlloc")?;
        if pp.is_null() || size == 0 {
            return Err(err::INVALID_VALUE);
        }
        let ctx = need_ctx(&handles())?;
        if flags & CU_MEMHOSTALLOC_WRITECOMBINED != 0 {
            trace(|| "cuMemHostAlloc: write-combined memory (slow for the host to read)".into());
        }
        let mut reg = registry();
        if reg.pinned_used.saturating_add(size as u64) > config().pinned_bytes {
            trace(|| format!("page-locked memory full: {size} bytes refused"));
            return Err(err::OUT_OF_MEMORY);
        }
        let host = reg
            .map(
                Kind::Pinned,
                size,
                ctx,
                format!("cuMemHostAlloc(flags {flags:#x})"),
            )
            .map(|a| a.host)
            .ok_or(err::OUT_OF_MEMORY)?;
        write(pp, host as *mut c_void)
    })
}

#[no_mangle]
pub unsafe extern "C" fn cuMemFreeHost(p: *mut c_void) -> CUresult {
    body("cuMemFreeHost", || {
        enter("cuMemFreeHost")?;
        let host = p as usize;
        let mut reg = registry();
        match reg.by_base(host) {
            Some(a) if a.kind == Kind::Pinned && a.life == Life::Live => {
                if let Some((st, q)) = a.users.iter().find(|(st, q)| !st.done(*q)) {
                    let msg = format!(
                        "{a} is freed while a copy into or out of it is still pending on stream #{} (its operation {q})",
                        st.id
                    );
                    drop(reg);
                    fail("cuMemFreeHost", &msg);
                }
            }
            Some(a) => {
                let a = format!("{a}");
                drop(reg);
                fail(
                    "cuMemFreeHost",
                    &format!("{host:#x} is not live pinned memory (a double free?): {a}"),
                )
            }
            None => {
                drop(reg);
                fail(
                    "cuMemFreeHost",
                    &format!("{host:#x} was not allocated by cuMemHostAlloc"),
                )
            }
        }
        reg.release(host, "cuMemFreeHost".into());
        Ok(())
    })
}

/// A host address moved into a worker's closure.
#[derive(Clone, Copy)]
struct Addr(usize);

#[no_mangle]
pub unsafe extern "C" fn cuMemcpyHtoDAsync_v2(
    dst: CUdeviceptr,
    src: *const c_void,
    n: usize,
    hs: Handle,
) -> CUresult {
    const CALL: &str = "cuMemcpyHtoDAsync_v2";
    body(CALL, || {
        enter(CALL)?;
        let s = resolve_stream(CALL, hs)?;
        if n == 0 {
            return Ok(());
        }
        if src.is_null() {
            return Err(err::INVALID_VALUE);
        }
        let dbase = check_device(CALL, "the destination", dst, n, s.ctx);
        written(dbase);
        let pinned = check_host(CALL, "the source", src as usize, n);
        // Pageable sources are staged now: the call returns once the source may be reused.
        let staged: Option<Vec<u8>> = match pinned {
            // SAFETY: the caller guarantees `n` readable bytes at `src` (the API's contract).
            None => Some(unsafe { std::slice::from_raw_parts(src.cast::<u8>(), n) }.to_vec()),
            Some(_) => None,
        };
        let (d, sp, sid) = (Addr(host_of(dst)), Addr(src as usize), s.id);
        let mut bases = vec![dbase];
        bases.extend(pinned);
        let run_bases = bases.clone();
        let counted = pinned.is_some();
        if counted {
            HOST_COPIES.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        }
        let seq = issue(
            &s,
            CALL,
            format!("{CALL} of {n} bytes to {dst:#x} from {:#x}", src as usize),
            Vec::new(),
            Box::new(move || {
                check_running(CALL, &run_bases, sid);
                let from = staged.as_ref().map_or(sp.0 as *const u8, |v| v.as_ptr());
                // SAFETY: the destination was checked to be `n` bytes of live device memory, and
                // the source `n` bytes of the caller's memory (kept alive and unchanged until
                // the copy completes: the API's contract for pinned memory) or our staging copy.
                unsafe { std::ptr::copy_nonoverlapping(from, d.0 as *mut u8, n) };
                check_canaries(CALL, &run_bases);
                if counted {
                    HOST_COPIES.fetch_sub(1, std::sync::atomic::Ordering::SeqCst);
                }
            }),
        );
        for b in bases {
            add_user(b, &s, seq);
        }
        Ok(())
    })
}

#[no_mangle]
pub unsafe extern "C" fn cuMemcpyDtoHAsync_v2(
    dst: *mut c_void,
    src: CUdeviceptr,
    n: usize,
    hs: Handle,
) -> CUresult {
    const CALL: &str = "cuMemcpyDtoHAsync_v2";
    body(CALL, || {
        enter(CALL)?;
        let s = resolve_stream(CALL, hs)?;
        if n == 0 {
            return Ok(());
        }
        if dst.is_null() {
            return Err(err::INVALID_VALUE);
        }
        let sbase = check_device(CALL, "the source", src, n, s.ctx);
        let pinned = check_host(CALL, "the destination", dst as usize, n);
        let (d, sp, sid) = (Addr(dst as usize), Addr(host_of(src)), s.id);
        let mut bases = vec![sbase];
        bases.extend(pinned);
        let run_bases = bases.clone();
        let counted = pinned.is_some();
        if counted {
            HOST_COPIES.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        }
        let seq = issue(
            &s,
            CALL,
            format!("{CALL} of {n} bytes to {:#x} from {src:#x}", dst as usize),
            Vec::new(),
            Box::new(move || {
                check_running(CALL, &run_bases, sid);
                // SAFETY: the source was checked to be `n` bytes of live device memory; the
                // destination is `n` bytes of the caller's memory, not touched by the caller
                // until the copy has completed (the API's contract).
                unsafe { std::ptr::copy_nonoverlapping(sp.0 as *const u8, d.0 as *mut u8, n) };
                check_canaries(CALL, &run_bases);
                if counted {
                    HOST_COPIES.fetch_sub(1, std::sync::atomic::Ordering::SeqCst);
                }
            }),
        );
        for b in &bases {
            add_user(*b, &s, seq);
        }
        // Into pageable memory the copy is synchronous: the call returns once it completed.
        if pinned.is_none() {
            sched::wait_for(&s.state, seq);
        }
        Ok(())
    })
}

#[no_mangle]
pub unsafe extern "C" fn cuMemcpyDtoDAsync_v2(
    dst: CUdeviceptr,
    src: CUdeviceptr,
    n: usize,
    hs: Handle,
) -> CUresult {
    const CALL: &str = "cuMemcpyDtoDAsync_v2";
    body(CALL, || {
        enter(CALL)?;
        let s = resolve_stream(CALL, hs)?;
        if n == 0 {
            return Ok(());
        }
        let dbase = check_device(CALL, "the destination", dst, n, s.ctx);
        let sbase = check_device(CALL, "the source", src, n, s.ctx);
        written(dbase);
        if dst < src + n as u64 && src < dst + n as u64 {
            fail(
                CALL,
                &format!("the ranges [{src:#x}, +{n}) and [{dst:#x}, +{n}) overlap"),
            );
        }
        let (d, sp, sid) = (Addr(host_of(dst)), Addr(host_of(src)), s.id);
        let bases = vec![dbase, sbase];
        let run_bases = bases.clone();
        let seq = issue(
            &s,
            CALL,
            format!("{CALL} of {n} bytes to {dst:#x} from {src:#x}"),
            Vec::new(),
            Box::new(move || {
                check_running(CALL, &run_bases, sid);
                // SAFETY: both ranges were checked to be `n` bytes of live device memory that do
                // not overlap.
                unsafe { std::ptr::copy_nonoverlapping(sp.0 as *const u8, d.0 as *mut u8, n) };
                check_canaries(CALL, &run_bases);
            }),
        );
        for b in bases {
            add_user(b, &s, seq);
        }
        Ok(())
    })
}

#[no_mangle]
pub unsafe extern "C" fn cuMemsetD8Async(
    dst: CUdeviceptr,
    value: u8,
    n: usize,
    hs: Handle,
) -> CUresult {
    const CALL: &str = "cuMemsetD8Async";
    body(CALL, || {
        enter(CALL)?;
        let s = resolve_stream(CALL, hs)?;
        if n == 0 {
            return Ok(());
        }
        let dbase = check_device(CALL, "the destination", dst, n, s.ctx);
        if value != 0 {
            written(dbase);
        }
        let (d, sid) = (Addr(host_of(dst)), s.id);
        let seq = issue(
            &s,
            CALL,
            format!("{CALL} of {n} bytes at {dst:#x}"),
            Vec::new(),
            Box::new(move || {
                check_running(CALL, &[dbase], sid);
                let fresh = registry().allocs.get(&dbase).is_some_and(|a| a.fresh);
                if !(fresh && value == 0) {
                    // SAFETY: checked to be `n` bytes of live device memory.
                    unsafe { std::ptr::write_bytes(d.0 as *mut u8, value, n) };
                }
                check_canaries(CALL, &[dbase]);
            }),
        );
        add_user(dbase, &s, seq);
        Ok(())
    })
}

// ---- pointer attributes --------------------------------------------------------------------

/// `CU_POINTER_ATTRIBUTE_CONTEXT`, `_DEVICE_ORDINAL`, `_RANGE_START_ADDR`, `_RANGE_SIZE`.
const PA_CONTEXT: c_uint = 1;
const PA_DEVICE_ORDINAL: c_uint = 9;
const PA_RANGE_START_ADDR: c_uint = 11;
const PA_RANGE_SIZE: c_uint = 12;

/// What the engine asks about a device pointer it is lent: the context the memory was
/// allocated in, its device, and the allocation around it. A pointer into no live device
/// allocation is `CUDA_ERROR_INVALID_VALUE`, as on a real driver; other attributes are not
/// simulated.
#[no_mangle]
pub unsafe extern "C" fn cuPointerGetAttribute(
    data: *mut c_void,
    attribute: c_uint,
    ptr: CUdeviceptr,
) -> CUresult {
    body("cuPointerGetAttribute", || {
        enter("cuPointerGetAttribute")?;
        if data.is_null() {
            return Err(err::INVALID_VALUE);
        }
        let (ctx, start, size) = {
            let reg = registry();
            match reg.find(host_of(ptr), 1) {
                Found::Inside(a) if a.kind == Kind::Device && a.life == Life::Live => {
                    (a.ctx, a.device_addr(), a.size as u64)
                }
                _ => return Err(err::INVALID_VALUE),
            }
        };
        match attribute {
            PA_CONTEXT => write(data.cast::<Handle>(), handle(CTX_BASE, ctx) as Handle),
            PA_DEVICE_ORDINAL => write(data.cast::<c_int>(), 0),
            PA_RANGE_START_ADDR => write(data.cast::<CUdeviceptr>(), start),
            PA_RANGE_SIZE => write(data.cast::<usize>(), size as usize),
            other => {
                log(&format!(
                    "cuPointerGetAttribute: attribute {other} is not simulated"
                ));
                Err(err::NOT_SUPPORTED)
            }
        }
    })
}

// ---- memory pool ---------------------------------------------------------------------------------

#[no_mangle]
pub unsafe extern "C" fn cuDeviceGetMemPool(pool: *mut Handle, dev: CUdevice) -> CUresult {
    body("cuDeviceGetMemPool", || {
        enter("cuDeviceGetMemPool")?;
        check_dev(dev)?;
        write(pool, POOL_HANDLE as Handle)
    })
}

const RELEASE_THRESHOLD: c_int = 4;

#[no_mangle]
pub unsafe extern "C" fn cuMemPoolGetAttribute(
    pool: Handle,
    attr: c_int,
    value: *mut c_void,
) -> CUresult {
    body("cuMemPoolGetAttribute", || {
        enter("cuMemPoolGetAttribute")?;
        if pool as usize != POOL_HANDLE {
            return Err(err::INVALID_HANDLE);
        }
        if attr != RELEASE_THRESHOLD {
            log(&format!(
                "cuMemPoolGetAttribute: attribute {attr} is not simulated"
            ));
            return Err(err::NOT_SUPPORTED);
        }
        let v = handles().release_threshold;
        write(value.cast::<u64>(), v)
    })
}

#[no_mangle]
pub unsafe extern "C" fn cuMemPoolSetAttribute(
    pool: Handle,
    attr: c_int,
    value: *mut c_void,
) -> CUresult {
    body("cuMemPoolSetAttribute", || {
        enter("cuMemPoolSetAttribute")?;
        if pool as usize != POOL_HANDLE {
            return Err(err::INVALID_HANDLE);
        }
        if attr != RELEASE_THRESHOLD {
            log(&format!(
                "cuMemPoolSetAttribute: attribute {attr} is not simulated"
            ));
            return Err(err::NOT_SUPPORTED);
        }
        if value.is_null() {
            return Err(err::INVALID_VALUE);
        }
        // SAFETY: the threshold attribute is a cuuint64_t the caller points at.
        handles().release_threshold = unsafe { *value.cast::<u64>() };
        Ok(())
    })
}

#[no_mangle]
pub unsafe extern "C" fn cuMemPoolTrimTo(pool: Handle, _keep: usize) -> CUresult {
    body("cuMemPoolTrimTo", || {
        enter("cuMemPoolTrimTo")?;
        if pool as usize != POOL_HANDLE {
            return Err(err::INVALID_HANDLE);
        }
        Ok(())
    })
}

// ---- modules and launches --------------------------------------------------------------------

/// The byte length of a CUBIN (an ELF file for `EM_CUDA`) or PTX text image.
fn image_len(image: *const u8) -> Result<usize, String> {
    // SAFETY: the caller passes an image; its first 64 bytes are read only after the ELF magic
    // (4 bytes) or the text (up to its NUL) says what it is.
    unsafe {
        let head = std::slice::from_raw_parts(image, 4);
        if head == b"\x7fELF" {
            let h = std::slice::from_raw_parts(image, 64);
            if h[4] != 2 {
                return Err("a 32-bit ELF file, not a CUBIN".into());
            }
            let u16at = |o: usize| u16::from_le_bytes([h[o], h[o + 1]]) as usize;
            let u64at =
                |o: usize| u64::from_le_bytes(h[o..o + 8].try_into().unwrap_or([0; 8])) as usize;
            if u16at(18) != 190 {
                return Err(format!(
                    "an ELF file for machine {}, not EM_CUDA (190)",
                    u16at(18)
                ));
            }
            let sh_end = u64at(40) + u16at(60) * u16at(58);
            let ph_end = u64at(32) + u16at(56) * u16at(54);
            let len = sh_end.max(ph_end);
            if !(64..=256 << 20).contains(&len) {
                return Err(format!("an ELF file of implausible size {len}"));
            }
            Ok(len)
        } else {
            let text = CStr::from_ptr(image.cast());
            let t = text.to_bytes();
            if t.windows(8).any(|w| w == b".version") && t.windows(7).any(|w| w == b".target") {
                Ok(t.len())
            } else {
                Err("neither a CUBIN (ELF) nor PTX text".into())
            }
        }
    }
}

#[no_mangle]
pub unsafe extern "C" fn cuModuleLoadData(pmod: *mut Handle, image: *const c_void) -> CUresult {
    body("cuModuleLoadData", || {
        enter("cuModuleLoadData")?;
        if image.is_null() || pmod.is_null() {
            return Err(err::INVALID_VALUE);
        }
        let ctx = need_ctx(&handles())?;
        let len = image_len(image.cast()).map_err(|e| {
            log(&format!("cuModuleLoadData: the image is {e}"));
            err::INVALID_IMAGE
        })?;
        // SAFETY: `len` bytes of the image, as its own headers describe it.
        let bytes = unsafe { std::slice::from_raw_parts(image.cast::<u8>(), len) }.to_vec();
        let mut h = handles();
        let id = h.fresh_id();
        h.modules.insert(id, Module { ctx, image: bytes });
        write(pmod, handle(MODULE_BASE, id) as Handle)
    })
}

#[no_mangle]
pub unsafe extern "C" fn cuModuleUnload(m: Handle) -> CUresult {
    body("cuModuleUnload", || {
        enter("cuModuleUnload")?;
        let mut h = handles();
        let id = id_of(MODULE_BASE, m as usize).filter(|id| h.modules.contains_key(id));
        let Some(id) = id else {
            return Err(err::INVALID_HANDLE);
        };
        h.modules.remove(&id);
        h.functions.retain(|_, f| f.module != id);
        Ok(())
    })
}

#[no_mangle]
pub unsafe extern "C" fn cuModuleGetFunction(
    pf: *mut Handle,
    m: Handle,
    name: *const c_char,
) -> CUresult {
    body("cuModuleGetFunction", || {
        enter("cuModuleGetFunction")?;
        if name.is_null() {
            return Err(err::INVALID_VALUE);
        }
        // SAFETY: a NUL-terminated name (the API's contract).
        let name = unsafe { CStr::from_ptr(name) }
            .to_string_lossy()
            .into_owned();
        let mut h = handles();
        let Some(mid) = id_of(MODULE_BASE, m as usize).filter(|id| h.modules.contains_key(id))
        else {
            return Err(err::INVALID_HANDLE);
        };
        let image = &h.modules[&mid].image;
        let in_image = if image.starts_with(b"\x7fELF") {
            let mut needle = vec![0u8];
            needle.extend_from_slice(name.as_bytes());
            needle.push(0);
            image.windows(needle.len()).any(|w| w == needle.as_slice())
        } else {
            let needle = format!(".entry {name}(");
            image.windows(needle.len()).any(|w| w == needle.as_bytes())
        };
        if !in_image {
            log(&format!(
                "cuModuleGetFunction: the module holds no entry point {name:?}"
            ));
            return Err(err::NOT_FOUND);
        }
        let Some(entry) = ENTRIES.iter().position(|e| e.0 == name) else {
            log(&format!(
                "cuModuleGetFunction: the simulator has no host build of kernel {name:?} (add it to cudasim)"
            ));
            return Err(err::NOT_FOUND);
        };
        let id = h.fresh_id();
        h.functions.insert(
            id,
            Function {
                module: mid,
                name,
                entry,
            },
        );
        write(pf, handle(FUNCTION_BASE, id) as Handle)
    })
}

#[no_mangle]
#[allow(clippy::too_many_arguments)]
pub unsafe extern "C" fn cuLaunchKernel(
    f: Handle,
    gx: c_uint,
    gy: c_uint,
    gz: c_uint,
    bx: c_uint,
    by: c_uint,
    bz: c_uint,
    shared: c_uint,
    hs: Handle,
    params: *mut *mut c_void,
    extra: *mut *mut c_void,
) -> CUresult {
    const CALL: &str = "cuLaunchKernel";
    body(CALL, || {
        enter(CALL)?;
        let entry = {
            let h = handles();
            let fid = id_of(FUNCTION_BASE, f as usize).filter(|id| h.functions.contains_key(id));
            let Some(fid) = fid else {
                log(&format!("{CALL}: {:#x} is not a function", f as usize));
                return Err(err::INVALID_HANDLE);
            };
            let func = &h.functions[&fid];
            let module_ctx = h.modules.get(&func.module).map(|m| m.ctx);
            trace(|| format!("{CALL} {}", func.name));
            (func.entry, module_ctx)
        };
        if !extra.is_null() {
            log(&format!(
                "{CALL}: `extra` launch parameters are not simulated"
            ));
            return Err(err::NOT_SUPPORTED);
        }
        if params.is_null() {
            return Err(err::INVALID_VALUE);
        }
        if shared > kernel::MAX_SHARED_PER_BLOCK {
            return Err(err::INVALID_VALUE);
        }
        let s = resolve_stream(CALL, hs)?;
        if entry.1 != Some(s.ctx) {
            log(&format!(
                "{CALL}: the function's module belongs to another context"
            ));
            return Err(err::INVALID_CONTEXT);
        }
        let mut args = [0u64; 8];
        for (i, a) in args.iter_mut().enumerate() {
            // SAFETY: the kernel has eight parameters, each a 64-bit value; `params` points at
            // eight pointers to them (the API's contract for this kernel).
            *a = unsafe {
                let p = *params.add(i);
                if p.is_null() {
                    return Err(err::INVALID_VALUE);
                }
                *(p as *const u64)
            };
        }
        let launch = Launch {
            entry: entry.0,
            grid: [gx, gy, gz],
            block: [bx, by, bz],
            args,
        };
        launch.check_issue(s.ctx);
        let mut bases = Vec::new();
        for p in [args[0], args[1], args[3]] {
            if p != 0 {
                bases.push(check_device(CALL, "a kernel argument", p, 1, s.ctx));
            }
        }
        if let Some(d) = bases.last() {
            written(*d);
        }
        let run_bases = bases.clone();
        let (sid, seed) = (s.id, sched::rng_for(s.id, s.state.issued()));
        let seq = issue(
            &s,
            CALL,
            launch.describe(),
            Vec::new(),
            Box::new(move || {
                check_running(CALL, &run_bases, sid);
                launch.run(seed);
            }),
        );
        for b in bases {
            add_user(b, &s, seq);
        }
        Ok(())
    })
}

// ---- errors ------------------------------------------------------------------------------------

fn error_text(code: CUresult, which: usize, out: *mut *const c_char) -> CUresult {
    let found = err::TABLE.iter().find(|e| e.0 == code);
    let text = match found {
        Some(e) => {
            if which == 0 {
                e.1
            } else {
                e.2
            }
        }
        None => {
            let _ = write(out, std::ptr::null());
            return err::INVALID_VALUE;
        }
    };
    match write(out, text.as_ptr().cast::<c_char>()) {
        Ok(()) => err::SUCCESS,
        Err(e) => e,
    }
}

#[no_mangle]
pub unsafe extern "C" fn cuGetErrorName(code: CUresult, out: *mut *const c_char) -> CUresult {
    error_text(code, 0, out)
}

#[no_mangle]
pub unsafe extern "C" fn cuGetErrorString(code: CUresult, out: *mut *const c_char) -> CUresult {
    error_text(code, 1, out)
}

// ---- control functions for tests -------------------------------------------------------------

/// What the simulator holds now, for tests (`cudasim_stats`).
#[repr(C)]
#[derive(Debug, Default, Clone, Copy)]
pub struct CudasimStats {
    pub device_allocs: u64,
    pub device_bytes: u64,
    pub pinned_allocs: u64,
    pub pinned_bytes: u64,
    /// Operations issued on any stream and not completed.
    pub pending_ops: u64,
    /// Allocations found live when their context was destroyed, since the process started.
    pub leaked_allocs: u64,
    /// Failures injected so far.
    pub injected_faults: u64,
    /// Failable driver calls made so far (see `cudasim_fail_nth`).
    pub failable_calls: u64,
    /// Copies into or out of pinned host memory issued and not completed (a drain that returns
    /// with one pending could free or reuse its host buffer under it; copies from pageable
    /// memory are staged, and into it synchronous).
    pub pending_host_copies: u64,
}

/// See `CudasimStats::pending_host_copies`.
static HOST_COPIES: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

/// Always 1: lets a test check that the driver it loaded is the simulator.
#[no_mangle]
pub extern "C" fn cudasim_is_simulator() -> c_int {
    1
}

#[no_mangle]
pub unsafe extern "C" fn cudasim_stats(out: *mut CudasimStats) {
    let mut s = CudasimStats {
        pending_ops: sched::pending(),
        leaked_allocs: LEAKED.load(std::sync::atomic::Ordering::Relaxed),
        injected_faults: fault::injected(),
        failable_calls: fault::calls(None),
        pending_host_copies: HOST_COPIES.load(std::sync::atomic::Ordering::SeqCst),
        ..CudasimStats::default()
    };
    {
        let reg = registry();
        for a in reg.live(0) {
            match a.kind {
                Kind::Device => {
                    s.device_allocs += 1;
                    s.device_bytes += a.size as u64;
                }
                Kind::Pinned => {
                    s.pinned_allocs += 1;
                    s.pinned_bytes += a.size as u64;
                }
            }
        }
    }
    let _ = write(out, s);
}

/// Arms a failure of the `k`-th call (k >= 1) from now of `name` (null: of any failable call).
#[no_mangle]
pub unsafe extern "C" fn cudasim_fail_nth(name: *const c_char, k: u64) {
    let name = if name.is_null() {
        None
    } else {
        // SAFETY: a NUL-terminated name from the test.
        Some(
            unsafe { CStr::from_ptr(name) }
                .to_string_lossy()
                .into_owned(),
        )
    };
    fault::arm(name, k.max(1));
}

/// Clears every armed failure.
#[no_mangle]
pub extern "C" fn cudasim_disarm() {
    fault::disarm();
}

/// Calls of `name` so far (null: failable calls of any name).
#[no_mangle]
pub unsafe extern "C" fn cudasim_calls(name: *const c_char) -> u64 {
    if name.is_null() {
        return fault::calls(None);
    }
    // SAFETY: a NUL-terminated name from the test.
    let n = unsafe { CStr::from_ptr(name) }.to_string_lossy();
    fault::calls(Some(&n))
}
