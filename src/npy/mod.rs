//! NumPy files in and out: `.npy` and `.npz` as table columns, [`Materialized`](crate::Materialized) outputs as
//! `.npz` archives or folders of `.npy` files, and [`MappedNpy`], an output column that *is* a
//! memory-mapped `.npy` file (for outputs larger than RAM).
//!
//! Reading never copies what it need not: a little-endian, C-order `.npy` becomes a column over
//! a read-only memory map of the file, and so does an uncompressed (stored) member of a `.npz`.
//! Big-endian arrays are byte-swapped and Fortran-order arrays transposed into memory, once, so
//! they are read correctly rather than refused; compressed members are inflated into memory.
//! Everything a file declares is checked before a byte of data is trusted; every failure is an
//! [`Error::BadFile`] or [`Error::Io`] naming the file, never a panic or a misread.
//!
//! Writing goes to a temporary name in the destination folder and is renamed into place only
//! when complete, so a failed or interrupted run never leaves a truncated output behind.
//!
//! `bf16` has no NumPy dtype: writing a `bf16` column is refused with
//! [`Error::UnsupportedDType`] rather than silently saved as `<u2` (which would read back as
//! integers); everything else maps both ways:
//!
//! | dtype | NumPy `descr` | dtype | NumPy `descr` |
//! |---|---|---|---|
//! | `f32` | `<f4` | `i8`/`u8` | `\|i1` / `\|u1` |
//! | `f64` | `<f8` | `i16`/`u16` | `<i2` / `<u2` |
//! | `f16` | `<f2` | `i32`/`u32` | `<i4` / `<u4` |
//! | `bool` | `\|b1` | `i64`/`u64` | `<i8` / `<u8` |

mod descr;
mod header;
mod literal;
mod mapped;
mod read;
mod write;

use std::path::Path;

use crate::error::Error;

pub(crate) use header::element_of_descr;
pub use header::{byte_swapped, descr, NpyHeader};
pub(crate) use literal::clip;
pub use mapped::{mapped_output, MappedNpy};
pub use read::{read_indices, read_npy, read_npz, read_table};
pub(crate) use write::pack_npz;
pub use write::{
    drain_to_npy_dir, drain_to_npz, write_npy, write_npy_dir, write_npy_dir_with, write_npz,
    WriteOptions, WriteProgress,
};

/// The six bytes every `.npy` file starts with.
pub const MAGIC: &[u8; 6] = b"\x93NUMPY";

fn bad(path: &Path, reason: impl Into<String>) -> Error {
    Error::BadFile {
        path: path.to_path_buf(),
        reason: reason.into(),
    }
}
