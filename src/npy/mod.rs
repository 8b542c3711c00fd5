//! NumPy files in and out: `.npy` and `.npz` as table columns, [`Materialized`](crate::Materialized) outputs as
//! `.npz` archives or folders of `.npy` files, and [`MappedNpy`], an output column that *is* a
//! memory-mapped `.npy` file (for outputs larger than RAM).
//!
//! Reading never copies what it need not: a C-order `.npy` becomes a column over a read-only
//! memory map of the file, and so does an uncompressed (stored) member of a `.npz`.
//! Fortran-order arrays are transposed into memory, once, so they are read correctly rather
//! than refused; compressed members are inflated into memory. Everything a file declares is
//! checked before a byte of data is trusted; every failure is an [`FileError::BadFile`] or
//! [`FileError::Io`] naming the file, never a panic or a misread.
//!
//! # Dtypes
//!
//! Every NumPy dtype whose elements are a fixed number of bytes is read, and written back
//! with the identical dtype and bytes. The numeric dtypes Rust can view map both ways:
//!
//! | dtype | NumPy `descr` | dtype | NumPy `descr` |
//! |---|---|---|---|
//! | `f32` | `<f4` | `i8`/`u8` | `\|i1` / `\|u1` |
//! | `f64` | `<f8` | `i16`/`u16` | `<i2` / `<u2` |
//! | `f16` | `<f2` | `i32`/`u32` | `<i4` / `<u4` |
//! | `bool` | `\|b1` | `i64`/`u64` | `<i8` / `<u8` |
//!
//! (other spellings of the same dtypes, such as `'<d'`, `'?'` or `'float64'`, read as them).
//! Everything else — complex, long double, byte and unicode strings (`'|S8'`, `'<U3'`),
//! datetimes and timedeltas with their units, void, structured dtypes with nested fields,
//! padding, titles and subarrays, and *every big-endian dtype* (`'>f8'`) — is a
//! [`DType::Opaque`](crate::DType::Opaque) column: its elements are carried as bytes, and its
//! descriptor is kept as the header's text, verbatim, so `numpy.load` of the output gives
//! exactly the input's dtype. Big-endian data is never byte-swapped: from Rust an opaque column
//! is read as raw row bytes with its descriptor, a typed view of it is refused with
//! [`TableError::DTypeMismatch`](crate::TableError::DTypeMismatch), and [`byte_swapped`] tells which numeric dtype a big-endian
//! column would be once its elements are reversed.
//!
//! Element sizes are computed from the descriptor as NumPy computes them (the list form of a
//! structured dtype is packed, padding written as `('', '|V…')` fields); they cannot be taken
//! from the file's length, since NumPy ignores bytes after the data, and neither does
//! arraydrain.
//!
//! Refused: object dtypes (`'O'`, or a field holding one), which hold Python objects rather
//! than data; 0-dimensional arrays, which have no rows; and descriptor spellings NumPy reads but
//! never writes (comma-separated strings such as `'f4,i4'`, a leading shape as in `'(2,)i4'`,
//! byte-order prefixes on type names, datetime units with a divisor, `(base, new)` pairs).
//!
//! NumPy has no bfloat16: a `bf16` column is written exactly as `numpy.save` writes an
//! `ml_dtypes.bfloat16` array, descriptor `'<V2'` (2-byte voids to NumPy, restored with
//! `.view(ml_dtypes.bfloat16)`), never as `<u2`, which would read back as integers. The float8
//! formats of `ml_dtypes` are opaque `'<V1'` columns, as `numpy.save` writes them (for
//! `float8_e5m2` it writes `'<f1'`, which `numpy.load` refuses; `'<V1'` is used there too).
//!
//! # Headers
//!
//! A header is read exactly as strictly as `numpy.load` reads it: the magic, format versions 1.0,
//! 2.0 and 3.0 only (1.1 or 2.1 are refused), a Python dict literal (latin-1 in versions 1 and 2,
//! UTF-8 in 3) with exactly the keys `descr`, `fortran_order` (a bool) and `shape` (a tuple of
//! ints: `(4)` is an int and is refused). NumPy's own 10 000-character limit on header length is
//! a configurable guard, not a format rule, and its writer exceeds it for wide structured dtypes;
//! arraydrain reads headers up to 1 MiB. Messages quote header text cut to a readable length.
//!
//! Headers are written as NumPy writes them: version 1.0 when the text is latin-1 and fits, else
//! 2.0, else 3.0.
//!
//! # Names and output files
//!
//! Column names come from the files (a stem, an archive member), so they are checked before
//! they name anything: a name that is not a plain file name (`..`, `/`, `\`, control
//! characters, empty) is refused, never rewritten. Writing goes to exclusive temporary files in
//! the destination folder (see [`crate::fsafe`]); the files of one call are renamed into place
//! together once all are complete, so a failed or interrupted run leaves no output behind.

mod header;
mod mapped;
mod names;
mod read;
mod write;

use std::path::Path;

use crate::error::{Error, FileError};

pub use header::{byte_swapped, descr, NpyHeader};
pub use mapped::{mapped_output, MappedNpy};
pub(crate) use mapped::{stage_mapped_output, MappedIn};
pub(crate) use names::unsafe_name_reason;
pub use read::{read_indices, read_npy, read_npz, read_table};
pub(crate) use read::{read_indices_mapped, read_npy_file, read_table_mapped};
pub use write::{
    drain_to_npy_dir, drain_to_npz, write_npy, write_npy_dir, write_npy_dir_with, write_npz,
    WriteCheck, WriteOptions, WriteProgress,
};
pub(crate) use write::{pack_npz, stage_drain_npy_dir, stage_drain_npz, stage_npy_dir, stage_npz};

/// The six bytes every `.npy` file starts with.
pub const MAGIC: &[u8; 6] = b"\x93NUMPY";

fn bad(path: &Path, reason: impl Into<String>) -> Error {
    Error::File(FileError::BadFile {
        path: path.to_path_buf(),
        reason: reason.into(),
    })
}

/// Checks that a column name can name an output file (`NAME.npy` in a folder or an archive):
/// the plain-name rule every writer here applies before it creates anything (see "Names and
/// output files" above), for callers that name columns from data of their own.
///
/// # Errors
/// [`FileError::UnsafeName`] saying why not.
pub fn check_column_name(name: &str) -> crate::error::Result<()> {
    names::check_column_name(name)
}
