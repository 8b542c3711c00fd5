//! What a [`DeviceWriter`](crate::cuda::DeviceWriter) is given: the columns of one
//! batch, in device memory or on the host. Defined in every build.

/// Staging blocks of a [`DeviceWriter`](crate::cuda::DeviceWriter).
pub const STAGING_BLOCKS: usize = 4;

/// One column of a batch given to
/// [`DeviceWriter::write_device`](crate::cuda::DeviceWriter::write_device): `rows × row bytes`
/// bytes, row-major and contiguous, in device memory or on the host.
#[derive(Debug, Clone, Copy)]
pub enum WriteSource<'a> {
    /// Device memory at address `ptr` of the engine's device, written on (or before work
    /// queued on) the producer stream given with it.
    Device {
        /// The address of the first byte.
        ptr: u64,
        /// Its length in bytes.
        bytes: usize,
    },
    /// Host bytes, copied into the staging block before the call returns.
    Host(&'a [u8]),
}

impl WriteSource<'_> {
    /// Its length in bytes.
    pub fn len(&self) -> usize {
        match self {
            WriteSource::Device { bytes, .. } => *bytes,
            WriteSource::Host(b) => b.len(),
        }
    }

    /// Whether it holds no bytes.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}
