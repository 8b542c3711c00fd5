//! The calling thread's current CUDA context, saved when the engine is entered and made current
//! again when it is left.
//!
//! cudarc makes its context current on the calling thread in every constructor, allocation and
//! drop (`bind_to_thread`), and the engine's own raw calls do the same. A caller that works on
//! another context — PyTorch on another device, a user's own context — must find its context
//! current again after any call into the engine, on success, on error and on unwinding: every
//! public entry point of the engine (and every drop that frees device or pinned memory) holds a
//! [`ContextGuard`] for its whole duration.

use std::marker::PhantomData;

use cudarc::driver::sys::{self, CUresult};

use super::libs;

/// Saves the thread's current context on creation and restores it on drop.
///
/// A thread that had no current context gets none back; where the driver cannot say which
/// context was current (no driver library, an error from `cuCtxGetCurrent`), nothing is
/// restored. Not `Send`: a context is current per thread, so the guard is dropped on the
/// thread that made it.
#[must_use = "the context is restored when the guard is dropped"]
pub struct ContextGuard {
    saved: Option<usize>,
    _per_thread: PhantomData<*const ()>,
}

impl ContextGuard {
    /// Saves the calling thread's current CUDA context.
    pub fn save() -> ContextGuard {
        ContextGuard {
            saved: current(),
            _per_thread: PhantomData,
        }
    }
}

impl Drop for ContextGuard {
    fn drop(&mut self) {
        restore(self.saved);
    }
}

impl std::fmt::Debug for ContextGuard {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ContextGuard")
            .field("saved", &self.saved)
            .finish()
    }
}

/// The last field of a type whose other fields free CUDA memory when they are dropped (cudarc
/// binds its context to free it): the type's `Drop::drop` calls [`RestoreOnDrop::arm`], the
/// fields declared before this one drop, and then this one restores the context that was
/// current when `arm` ran. Armed and dropped within one `drop` call, on one thread.
#[derive(Debug, Default)]
pub(crate) struct RestoreOnDrop(Option<Option<usize>>);

impl RestoreOnDrop {
    /// Saves the thread's current context, to be restored when this field is dropped.
    pub(crate) fn arm(&mut self) {
        self.0 = Some(current());
    }
}

impl Drop for RestoreOnDrop {
    fn drop(&mut self) {
        if let Some(saved) = self.0.take() {
            restore(saved);
        }
    }
}

/// Makes `saved` (a context handle's address; 0 for none) current on this thread again.
fn restore(saved: Option<usize>) {
    let Some(ctx) = saved else {
        return;
    };
    // SAFETY: `ctx` is null (no context: unbinds the thread) or the handle that was current on
    // this thread when it was saved (by `current`, on this same thread: `ContextGuard` is not
    // `Send`, and `RestoreOnDrop` is armed and dropped within one `drop` call). The engine
    // never destroys a context it did not create (it only retains primary contexts), so the
    // caller's context is alive unless the caller destroyed it meanwhile; the driver then
    // returns an error, ignored here: there is nothing left to restore.
    let _ = unsafe { sys::cuCtxSetCurrent(ctx as sys::CUcontext) };
}

/// The thread's current context's address (0 for none), or `None` where the driver cannot say.
fn current() -> Option<usize> {
    // Without a loadable driver library no context can be current, and calling into cudarc's
    // bindings would panic; `ensure_driver` is cached after its first call.
    libs::ensure_driver().ok()?;
    let mut ctx: sys::CUcontext = std::ptr::null_mut();
    // SAFETY: the driver library is loaded (checked above); `cuCtxGetCurrent` writes one handle
    // into a live local and reads no other memory.
    match unsafe { sys::cuCtxGetCurrent(&mut ctx) } {
        CUresult::CUDA_SUCCESS => Some(ctx as usize),
        // Before `cuInit` no thread can have a current context.
        CUresult::CUDA_ERROR_NOT_INITIALIZED => Some(0),
        _ => None,
    }
}

/// The calling thread's current CUDA context as an address (`Some(0)`: none is current), or
/// `None` where the driver cannot say (no driver library). For diagnostics and tests: the
/// engine leaves it as it found it.
pub fn current_context() -> Option<usize> {
    current()
}

/// Drops `value` — something that frees memory of `ctx` when dropped, such as a `CudaSlice`
/// (which cudarc frees without making its context current) — with `ctx` current, then makes
/// the caller's context current again.
pub fn drop_in_context<T>(ctx: &cudarc::driver::CudaContext, value: T) {
    let _current = ContextGuard::save();
    // A failure to bind is stored by cudarc in the context, as the failed free would be.
    let _ = super::memory::bind_ctx(ctx);
    drop(value);
}
