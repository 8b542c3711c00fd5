//! Opening a device without ever panicking: the driver library is probed first, the context is
//! created under `catch_unwind`, and every failure becomes a typed error. Also the small
//! helpers that turn driver errors into [`Error`]s.

use std::any::Any;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::Arc;

use cudarc::driver::sys::{self, CUdevice_attribute, CUresult};
use cudarc::driver::{result, CudaContext, DriverError};

use super::{libs, CudaInfo, MIN_DRIVER_VERSION};
use crate::cuda::CudaError;
use crate::error::{Error, Result};

/// Looks at device `ordinal`: name, compute capability, memory and driver version.
///
/// Creates no context. Never panics: no driver library, no device, a driver older than
/// CUDA 12.0 ([`MIN_DRIVER_VERSION`]) or an ordinal past the last device are all
/// [`CudaError::Unavailable`] with the reason.
///
/// # Errors
/// [`CudaError::Unavailable`].
pub fn probe(ordinal: usize) -> Result<CudaInfo> {
    let unavailable = |reason: String| Error::Cuda(CudaError::Unavailable { reason });
    libs::ensure_driver().map_err(unavailable)?;
    catch("probing the CUDA driver", || {
        result::init().map_err(|e| unavailable(format!("cuInit failed: {}", describe(e))))?;
        let mut version = 0i32;
        // SAFETY: cuDriverGetVersion writes one int through the pointer, which points at a live
        // local; the driver library was found by `ensure_driver` just above.
        unsafe { sys::cuDriverGetVersion(&mut version) }
            .result()
            .map_err(|e| unavailable(format!("cuDriverGetVersion failed: {}", describe(e))))?;
        if version < MIN_DRIVER_VERSION {
            return Err(unavailable(format!(
                "the driver supports CUDA {}.{}; arraydrain needs {}.{} or newer",
                version / 1000,
                (version % 1000) / 10,
                MIN_DRIVER_VERSION / 1000,
                (MIN_DRIVER_VERSION % 1000) / 10
            )));
        }
        let count = result::device::get_count()
            .map_err(|e| unavailable(format!("no CUDA device: {}", describe(e))))?;
        if ordinal >= count.max(0) as usize {
            return Err(unavailable(format!(
                "no CUDA device {ordinal} (the driver sees {count})"
            )));
        }
        let dev = result::device::get(ordinal as i32)
            .map_err(|e| unavailable(format!("device {ordinal}: {}", describe(e))))?;
        let info_err = |e: DriverError| unavailable(format!("device {ordinal}: {}", describe(e)));
        let name = result::device::get_name(dev).map_err(info_err)?;
        // SAFETY: `dev` was returned by cuDeviceGet above (the contract of both calls).
        let (major, minor, total) = unsafe {
            (
                result::device::get_attribute(
                    dev,
                    CUdevice_attribute::CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MAJOR,
                )
                .map_err(info_err)?,
                result::device::get_attribute(
                    dev,
                    CUdevice_attribute::CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MINOR,
                )
                .map_err(info_err)?,
                result::device::total_mem(dev).map_err(info_err)?,
            )
        };
        Ok(CudaInfo {
            name,
            ordinal,
            compute_capability: (major, minor),
            total_memory: total as u64,
            driver_version: version,
        })
    })
}

/// Probes, then creates (retains) the device's primary context, under `catch_unwind`.
pub(crate) fn open(ordinal: usize) -> Result<(CudaInfo, Arc<CudaContext>)> {
    let info = probe(ordinal)?;
    let ctx = open_context(ordinal)?;
    Ok((info, ctx))
}

/// Creates another handle on device `ordinal`'s primary context (cudarc's per-handle settings,
/// such as event tracking, are its own), under `catch_unwind`.
pub(crate) fn open_context(ordinal: usize) -> Result<Arc<CudaContext>> {
    catch("creating the CUDA context", || {
        CudaContext::new(ordinal).map_err(|e| {
            Error::Cuda(CudaError::Unavailable {
                reason: format!(
                    "cannot create a context on device {ordinal}: {}",
                    describe(e)
                ),
            })
        })
    })
}

/// Runs `f`, turning a panic (cudarc panics on a missing library or symbol, and on a few
/// failed assertions) into [`Error::Cuda`].
pub(crate) fn catch<T>(context: &str, f: impl FnOnce() -> Result<T>) -> Result<T> {
    match catch_unwind(AssertUnwindSafe(f)) {
        Ok(r) => r,
        Err(payload) => Err(Error::Cuda(CudaError::Driver {
            context: context.to_string(),
            message: format!("panic inside the CUDA layer: {}", panic_message(&payload)),
        })),
    }
}

fn panic_message(payload: &Box<dyn Any + Send>) -> String {
    if let Some(s) = payload.downcast_ref::<&str>() {
        (*s).to_string()
    } else if let Some(s) = payload.downcast_ref::<String>() {
        s.clone()
    } else {
        "(no message)".to_string()
    }
}

/// A driver error's name and text (`CUDA_ERROR_OUT_OF_MEMORY: out of memory`).
pub(crate) fn describe(e: DriverError) -> String {
    let name = e
        .error_name()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_else(|_| format!("{:?}", e.0));
    match e.error_string() {
        Ok(s) => format!("{name}: {}", s.to_string_lossy()),
        Err(_) => name,
    }
}

/// Maps a failed driver call during `context` to [`Error::Cuda`].
pub(crate) fn cuda_err(context: impl Into<String>) -> impl FnOnce(DriverError) -> Error {
    let context = context.into();
    move |e| {
        Error::Cuda(CudaError::Driver {
            context,
            message: describe(e),
        })
    }
}

/// Maps a failed device allocation to [`CudaError::OutOfMemory`] (out of memory) or
/// [`Error::Cuda`].
pub(crate) fn alloc_err(bytes: usize, what: &str) -> impl FnOnce(DriverError) -> Error + '_ {
    move |e| {
        if e.0 == CUresult::CUDA_ERROR_OUT_OF_MEMORY {
            Error::Cuda(CudaError::OutOfMemory {
                bytes: bytes as u64,
                what: what.to_string(),
            })
        } else {
            Error::Cuda(CudaError::Driver {
                context: format!("allocating {bytes} device bytes for {what}"),
                message: describe(e),
            })
        }
    }
}
