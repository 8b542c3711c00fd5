//! The CUDA engine's errors, wrapped by [`Error::Cuda`](crate::Error::Cuda). Defined in every
//! build, with or without the `cuda` feature: without it, every entry point returns
//! [`CudaError::NotCompiled`].

/// Why the CUDA engine cannot be used, or what failed in it.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CudaError {
    /// The crate was built without the `cuda` feature.
    #[error("CUDA support was not compiled in (build with the `cuda` feature)")]
    NotCompiled,
    /// CUDA cannot be used on this machine: no driver library, no device, or too old a driver.
    #[error("CUDA is unavailable: {reason}")]
    Unavailable {
        /// Why.
        reason: String,
    },
    /// A CUDA driver call failed.
    #[error("CUDA error during {context}: {message}")]
    Driver {
        /// What was being done.
        context: String,
        /// The driver's message.
        message: String,
    },
    /// Kernel compilation with NVRTC failed.
    #[error("kernel compilation failed: {log}")]
    KernelCompile {
        /// The NVRTC log.
        log: String,
    },
    /// Not enough device memory for a buffer.
    #[error("not enough device memory: {bytes} bytes for {what}")]
    OutOfMemory {
        /// Requested bytes.
        bytes: u64,
        /// What the memory was for.
        what: String,
    },
    /// A device column the engine cannot order its own work after: made in a non-primary
    /// context or another context than the engine's, or on the per-thread default stream (whose
    /// handle means "this thread's stream" to whichever thread uses it, so the engine cannot
    /// wait for the producer's work).
    #[error("device column {column:?} cannot be used by the engine: {reason}")]
    UnorderableColumn {
        /// The column.
        column: String,
        /// Why.
        reason: String,
    },
    /// A device buffer belongs to another device than the engine's.
    #[error("a buffer of device {got} was given to the engine of device {expected}")]
    WrongDevice {
        /// The engine's ordinal.
        expected: usize,
        /// The buffer's ordinal.
        got: usize,
    },
}
