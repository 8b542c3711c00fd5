//! Engine errors as Python exceptions. The classes live in `arraydrain._errors` (pure Python, so
//! each can derive from two built-ins, e.g. `ArrayDrainError` and `ValueError`); this module
//! maps every [`arraydrain::Error`] variant to one of them, with the engine's message.

use arraydrain::Error;
use arraydrain::FileError;
use arraydrain::TableError;
use pyo3::exceptions::{PyMemoryError, PyOSError, PyRuntimeError, PyTypeError, PyValueError};
use pyo3::prelude::*;
use pyo3::types::PyType;

/// The exception class an engine error becomes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// Bad input of the wrong kind.
    Type,
    /// Bad input values (lengths, shapes, row counts, options).
    Value,
    /// An index past the data.
    Index,
    /// Host memory could not be had.
    Memory,
    /// CUDA failed or is unavailable.
    Runtime,
    /// A file could not be written.
    Os,
}

impl Kind {
    fn class_name(self) -> &'static str {
        match self {
            Kind::Type => "DrainTypeError",
            Kind::Value => "DrainValueError",
            Kind::Index => "DrainIndexError",
            Kind::Memory => "DrainMemoryError",
            Kind::Runtime => "DrainRuntimeError",
            Kind::Os => "DrainOSError",
        }
    }

    /// An exception of this kind with `message`.
    pub fn err(self, message: impl Into<String>) -> PyErr {
        let message = message.into();
        Python::attach(|py| {
            let class = py
                .import("arraydrain._errors")
                .and_then(|m| m.getattr(self.class_name()))
                .ok()
                .and_then(|c| c.cast_into::<PyType>().ok());
            match class {
                Some(class) => PyErr::from_type(class, message),
                // Without the package around the native module (never in an installed
                // package), the matching built-in.
                None => match self {
                    Kind::Type => PyTypeError::new_err(message),
                    Kind::Value | Kind::Index => PyValueError::new_err(message),
                    Kind::Memory => PyMemoryError::new_err(message),
                    Kind::Runtime => PyRuntimeError::new_err(message),
                    Kind::Os => PyOSError::new_err(message),
                },
            }
        })
    }
}

/// Which exception class an engine error becomes. Every variant is named: a new one does not
/// compile here until it is given a class.
pub fn kind_of(e: &Error) -> Kind {
    match e {
        Error::HostAllocation { .. }
        | Error::SizeOverflow { .. }
        | Error::File(FileError::MapLimit { .. }) => Kind::Memory,
        Error::IndexOutOfBounds { .. } => Kind::Index,
        Error::Table(TableError::DTypeMismatch { .. })
        | Error::UnsupportedDType { .. }
        | Error::BadDescriptor { .. } => Kind::Type,
        Error::File(FileError::Io { .. })
        | Error::File(FileError::NoSpace { .. })
        | Error::File(FileError::PathConflict { .. })
        | Error::File(FileError::FileChanged { .. })
        | Error::File(FileError::SignalHandler { .. }) => Kind::Os,
        Error::Cuda(_)
        | Error::Table(TableError::Misaligned { .. })
        | Error::Interrupted { .. } => Kind::Runtime,
        // Tables, orders and batching.
        Error::Table(TableError::EmptyTable)
        | Error::Table(TableError::DuplicateColumn { .. })
        | Error::Table(TableError::UnknownColumn { .. })
        | Error::Table(TableError::RowCountMismatch { .. })
        | Error::Table(TableError::NoRowAxis { .. })
        | Error::Table(TableError::ByteLengthMismatch { .. })
        | Error::ZeroBatchSize
        | Error::ZeroWorldSize
        | Error::WorldSizeTooLarge { .. }
        | Error::RankOutOfRange { .. } => Kind::Value,
        // Streams of batches and strategies.
        Error::StreamLengthMismatch { .. }
        | Error::BatchMismatch { .. }
        | Error::OutputMismatch { .. }
        | Error::Source { .. }
        | Error::StrategyUnavailable { .. }
        | Error::ConflictingOptions { .. } => Kind::Value,
        // Input files that are not what they claim, and names that cannot name a file.
        Error::File(FileError::BadFile { .. }) | Error::File(FileError::UnsafeName { .. }) => {
            Kind::Value
        }
        // Distributed runs: launcher variables and shard folders.
        Error::Launcher(_) | Error::Shard(_) => Kind::Value,
        // A writer closed before every row was written.
        Error::RowsMissing { .. } => Kind::Value,
    }
}

/// An engine error as a Python exception carrying the engine's message.
pub fn to_py(e: Error) -> PyErr {
    kind_of(&e).err(e.to_string())
}

/// `Result<T, arraydrain::Error>` → `PyResult<T>`.
pub trait IntoPy<T> {
    /// Converts the error.
    fn py(self) -> PyResult<T>;
}

impl<T> IntoPy<T> for Result<T, Error> {
    fn py(self) -> PyResult<T> {
        self.map_err(to_py)
    }
}
