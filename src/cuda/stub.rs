//! The CUDA entry points when the crate is built without the `cuda` feature: the same names,
//! each returning [`CudaError::NotCompiled`]. No value of the engine's types can exist.

use std::convert::Infallible;

use super::CudaInfo;
use crate::batch::Batches;
use crate::cuda::CudaError;
use crate::error::{Error, Result};
use crate::gather::Strategy;
use crate::output::{Materialized, Report};
use crate::table::Table;

/// The calling thread's current CUDA context: none can be known in a build without the `cuda`
/// feature.
pub fn current_context() -> Option<usize> {
    None
}

/// Whether a CUDA driver library can be loaded: never, in a build without the `cuda` feature.
pub fn driver_library_present() -> bool {
    false
}

/// Which NVRTC the engine would use: none in a build without the `cuda` feature.
///
/// # Errors
/// Always: CUDA support is not compiled in.
pub fn nvrtc_status(driver: Option<i32>) -> std::result::Result<String, String> {
    let _ = driver;
    Err(Error::Cuda(CudaError::NotCompiled).to_string())
}

/// Always [`CudaError::NotCompiled`] in this build.
///
/// # Errors
/// [`CudaError::NotCompiled`].
pub fn probe(ordinal: usize) -> Result<CudaInfo> {
    let _ = ordinal;
    Err(Error::Cuda(CudaError::NotCompiled))
}

/// The CUDA engine; cannot be created in a build without the `cuda` feature.
#[derive(Debug)]
pub struct CudaEngine {
    never: Infallible,
}

/// A device table; cannot exist in a build without the `cuda` feature.
#[derive(Debug)]
pub struct DeviceTable {
    never: Infallible,
}

/// A device column; cannot exist in a build without the `cuda` feature.
#[derive(Debug)]
pub struct DeviceColumn {
    never: Infallible,
}

/// A batch of device columns; cannot exist in a build without the `cuda` feature.
#[derive(Debug)]
pub struct DeviceBatch {
    never: Infallible,
}

impl CudaEngine {
    /// Always [`CudaError::NotCompiled`] in this build.
    ///
    /// # Errors
    /// [`CudaError::NotCompiled`].
    pub fn new(ordinal: usize) -> Result<CudaEngine> {
        let _ = ordinal;
        Err(Error::Cuda(CudaError::NotCompiled))
    }

    /// Unreachable: no engine exists in this build.
    pub fn info(&self) -> &CudaInfo {
        match self.never {}
    }

    /// Unreachable: no engine exists in this build.
    ///
    /// # Errors
    /// [`CudaError::NotCompiled`].
    pub fn time_d2h_pinned(&self, bytes: usize, repeat: usize) -> Result<Vec<f64>> {
        let _ = (bytes, repeat);
        match self.never {}
    }

    /// Unreachable: no engine exists in this build.
    ///
    /// # Errors
    /// [`CudaError::NotCompiled`].
    pub fn upload(&self, table: &Table<'_>) -> Result<DeviceTable> {
        let _ = table;
        match self.never {}
    }

    /// Unreachable: no engine exists in this build.
    ///
    /// # Errors
    /// [`CudaError::NotCompiled`].
    pub fn wrap(&self, columns: Vec<DeviceColumn>) -> Result<DeviceTable> {
        let _ = columns;
        match self.never {}
    }

    /// Unreachable: no engine exists in this build.
    ///
    /// # Errors
    /// [`CudaError::NotCompiled`].
    pub fn materialize(
        &self,
        table: &DeviceTable,
        batches: &Batches,
        strategy: Strategy,
    ) -> Result<Materialized> {
        let _ = (table, batches, strategy);
        match self.never {}
    }

    /// Unreachable: no engine exists in this build.
    ///
    /// # Errors
    /// [`CudaError::NotCompiled`].
    pub fn materialize_into(
        &self,
        table: &DeviceTable,
        batches: &Batches,
        out: &mut Materialized,
    ) -> Result<Report> {
        let _ = (table, batches, out);
        match self.never {}
    }

    /// Unreachable: no engine exists in this build.
    ///
    /// # Errors
    /// [`CudaError::NotCompiled`].
    pub fn drain_device<I>(&self, batches: I, rows: Option<usize>) -> Result<Materialized>
    where
        I: IntoIterator<Item = Result<DeviceBatch>>,
    {
        let _ = (batches.into_iter(), rows);
        match self.never {}
    }

    /// Unreachable: no engine exists in this build.
    ///
    /// # Errors
    /// [`CudaError::NotCompiled`].
    pub fn drain_device_expecting<I>(&self, batches: I, about: usize) -> Result<Materialized>
    where
        I: IntoIterator<Item = Result<DeviceBatch>>,
    {
        let _ = (batches.into_iter(), about);
        match self.never {}
    }

    /// Unreachable: no engine exists in this build.
    ///
    /// # Errors
    /// [`CudaError::NotCompiled`].
    #[allow(clippy::too_many_arguments)]
    pub fn borrow_column(
        &self,
        name: impl Into<String>,
        dtype: crate::DType,
        row_shape: &[usize],
        rows: usize,
        ptr: u64,
        producer: usize,
        owner: impl std::any::Any + Send + Sync,
    ) -> Result<DeviceColumn> {
        let _ = (name.into(), dtype, row_shape, rows, ptr, producer, owner);
        match self.never {}
    }
}

/// A writer fed from device memory; cannot be created in a build without the `cuda` feature.
#[derive(Debug)]
pub struct DeviceWriter {
    never: Infallible,
}

impl DeviceWriter {
    /// Always [`CudaError::NotCompiled`] in this build.
    ///
    /// # Errors
    /// [`CudaError::NotCompiled`].
    pub fn new(
        engine: std::sync::Arc<CudaEngine>,
        writer: crate::Writer,
        ring_bytes: usize,
    ) -> Result<Self> {
        let _ = (engine, writer, ring_bytes);
        Err(Error::Cuda(CudaError::NotCompiled))
    }

    /// Unreachable: no device writer exists in this build.
    ///
    /// # Errors
    /// [`CudaError::NotCompiled`].
    pub fn write_device(
        &mut self,
        at: Option<&[u64]>,
        columns: &[super::WriteSource<'_>],
        rows: usize,
        producer: usize,
    ) -> Result<()> {
        let _ = (at, columns, rows, producer);
        match self.never {}
    }

    /// Unreachable: no device writer exists in this build.
    ///
    /// # Errors
    /// [`CudaError::NotCompiled`].
    pub fn flush(&mut self) -> Result<()> {
        match self.never {}
    }

    /// Unreachable: no device writer exists in this build.
    pub fn writer(&self) -> &crate::Writer {
        match self.never {}
    }

    /// Unreachable: no device writer exists in this build.
    pub fn engine(&self) -> &std::sync::Arc<CudaEngine> {
        match self.never {}
    }

    /// Unreachable: no device writer exists in this build.
    pub fn pool_bytes(&self) -> usize {
        match self.never {}
    }

    /// Unreachable: no device writer exists in this build.
    pub fn pending_bytes(&self) -> usize {
        match self.never {}
    }

    /// Unreachable: no device writer exists in this build.
    pub fn peak_pending_bytes(&self) -> usize {
        match self.never {}
    }

    /// Unreachable: no device writer exists in this build.
    pub fn pending_parts(&self) -> usize {
        match self.never {}
    }

    /// Unreachable: no device writer exists in this build.
    ///
    /// # Errors
    /// [`CudaError::NotCompiled`].
    pub fn write_bytes(&mut self, n: usize, at: Option<&[u64]>, columns: &[&[u8]]) -> Result<()> {
        let _ = (n, at, columns);
        match self.never {}
    }

    /// Unreachable: no device writer exists in this build.
    ///
    /// # Errors
    /// [`CudaError::NotCompiled`].
    pub fn into_writer(self) -> Result<crate::Writer> {
        match self.never {}
    }

    /// Unreachable: no device writer exists in this build.
    ///
    /// # Errors
    /// [`CudaError::NotCompiled`].
    pub fn close(self) -> Result<crate::writer::Written> {
        match self.never {}
    }
}

impl DeviceTable {
    /// Unreachable: no device table exists in this build.
    pub fn rows(&self) -> usize {
        match self.never {}
    }
}

impl DeviceColumn {
    /// Unreachable: no device column exists in this build.
    pub fn name(&self) -> &str {
        match self.never {}
    }
}

impl DeviceBatch {
    /// Unreachable: no device batch exists in this build.
    pub fn rows(&self) -> Option<usize> {
        match self.never {}
    }
}
