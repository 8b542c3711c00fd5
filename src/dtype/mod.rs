//! Element types. The engine itself is dtype-agnostic — it moves `row_bytes` per row — so a
//! dtype only fixes the element size, the name shown to people, and which Rust type may view it.
//!
//! Any other fixed-size NumPy dtype (complex, strings, datetimes, void, long double, structured
//! records, and every big-endian dtype) is an [`Opaque`] dtype: its elements are carried as
//! bytes, and its NumPy descriptor is kept verbatim so a file written from it declares exactly
//! the dtype that was read.

pub(crate) mod descr;
pub(crate) mod literal;

use std::fmt;
use std::sync::Arc;

use crate::error::{Error, Result};

/// Why a NumPy descriptor, a header literal or a `.npy` header cannot be read: the parser's
/// message (quoted text in it is cut to a readable length). Wrapped into
/// [`Error::BadDescriptor`] or a file error naming the file where it reaches a caller.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct SyntaxError(String);

impl SyntaxError {
    /// The message.
    pub fn message(&self) -> &str {
        &self.0
    }
}

/// The message as text, so a caller can search or measure it like the string it is.
impl std::ops::Deref for SyntaxError {
    type Target = str;

    fn deref(&self) -> &str {
        &self.0
    }
}

impl From<String> for SyntaxError {
    fn from(message: String) -> Self {
        SyntaxError(message)
    }
}

impl From<&str> for SyntaxError {
    fn from(message: &str) -> Self {
        SyntaxError(message.to_string())
    }
}

/// The element type of a column.
///
/// 2-byte floats (`F16`, `BF16`) are carried as raw 2-byte elements and viewed as
/// [`half::f16`] / [`half::bf16`]; `Bool` is one byte per element (0 or 1) and viewed as `u8`.
///
/// Typed views ([`ColumnArray::view`](crate::ColumnArray::view)) exist for the numeric
/// variants, which are always in the machine's byte order. A [`DType::Opaque`] column is read
/// as raw row bytes ([`ColumnArray::row`](crate::ColumnArray::row),
/// [`Column::row`](crate::Column::row)) together with its descriptor; asking for a typed view of
/// one, a big-endian `>f8` included, is an [`TableError::DTypeMismatch`](crate::TableError::DTypeMismatch) — its bytes are never swapped
/// behind the caller's back.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum DType {
    /// 32-bit float.
    F32,
    /// 64-bit float.
    F64,
    /// IEEE half precision, raw 2 bytes.
    F16,
    /// bfloat16, raw 2 bytes.
    BF16,
    /// Signed 8-bit integer.
    I8,
    /// Signed 16-bit integer.
    I16,
    /// Signed 32-bit integer.
    I32,
    /// Signed 64-bit integer.
    I64,
    /// Unsigned 8-bit integer.
    U8,
    /// Unsigned 16-bit integer.
    U16,
    /// Unsigned 32-bit integer.
    U32,
    /// Unsigned 64-bit integer.
    U64,
    /// Boolean, one byte per element.
    Bool,
    /// Fixed-size elements of any other NumPy dtype, carried as bytes with their descriptor.
    Opaque(Opaque),
}

/// A NumPy dtype carried as fixed-size bytes: its descriptor (the Python literal a `.npy`
/// header holds as `descr`, kept verbatim) and its element size.
///
/// ```
/// use arraydrain::dtype::Opaque;
///
/// let c = Opaque::new("'<c8'")?;
/// assert_eq!((c.descr(), c.size()), ("'<c8'", 8));
/// let rec = Opaque::new("[('t', '<M8[ns]'), ('name', '|S5'), ('', '|V3')]")?;
/// assert_eq!(rec.size(), 16);
/// assert!(Opaque::new("'|O'").is_err()); // objects are not data
/// # Ok::<(), arraydrain::Error>(())
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Opaque {
    descr: Arc<str>,
    size: usize,
}

impl Opaque {
    /// An opaque dtype from a NumPy descriptor, written as the Python literal a `.npy` header
    /// holds (`"'<c16'"`, `"'>f8'"`, `"[('x', '<f4', (2,)), ('n', '|S8')]"`); the element size
    /// is computed as NumPy does.
    ///
    /// # Errors
    /// [`Error::BadDescriptor`] when the text is not a descriptor NumPy would read, holds
    /// Python objects, or is one arraydrain does not size (see [`crate::npy`]).
    pub fn new(descr: &str) -> Result<Opaque> {
        let element = descr::element_of_descr(descr).map_err(|e| Error::BadDescriptor {
            descr: literal::clip(descr, 60),
            reason: e.0,
        })?;
        Ok(Opaque::from_parts(descr, element.size))
    }

    /// An opaque dtype for a descriptor already checked and sized.
    pub(crate) fn from_parts(descr: &str, size: usize) -> Opaque {
        Opaque {
            descr: Arc::from(descr),
            size,
        }
    }

    /// The descriptor, as the Python literal it was read from.
    pub fn descr(&self) -> &str {
        &self.descr
    }

    /// Bytes per element.
    pub fn size(&self) -> usize {
        self.size
    }
}

impl DType {
    /// Every dtype, in a fixed order (useful for tests and help texts).
    pub const ALL: [DType; 13] = [
        DType::F32,
        DType::F64,
        DType::F16,
        DType::BF16,
        DType::I8,
        DType::I16,
        DType::I32,
        DType::I64,
        DType::U8,
        DType::U16,
        DType::U32,
        DType::U64,
        DType::Bool,
    ];

    /// Bytes per element.
    pub fn size(&self) -> usize {
        match self {
            DType::Opaque(o) => o.size,
            DType::I8 | DType::U8 | DType::Bool => 1,
            DType::F16 | DType::BF16 | DType::I16 | DType::U16 => 2,
            DType::F32 | DType::I32 | DType::U32 => 4,
            DType::F64 | DType::I64 | DType::U64 => 8,
        }
    }

    /// Short lower-case name (`"f32"`, `"bf16"`, `"bool"` …); an opaque dtype's name is its
    /// NumPy descriptor.
    pub fn name(&self) -> &str {
        match self {
            DType::Opaque(o) => o.descr(),
            DType::F32 => "f32",
            DType::F64 => "f64",
            DType::F16 => "f16",
            DType::BF16 => "bf16",
            DType::I8 => "i8",
            DType::I16 => "i16",
            DType::I32 => "i32",
            DType::I64 => "i64",
            DType::U8 => "u8",
            DType::U16 => "u16",
            DType::U32 => "u32",
            DType::U64 => "u64",
            DType::Bool => "bool",
        }
    }

    /// Parses a numeric dtype's name as printed by [`DType::name`].
    pub fn from_name(name: &str) -> Option<DType> {
        DType::ALL.into_iter().find(|d| d.name() == name)
    }

    /// Whether this is a [`DType::Opaque`] dtype (read as bytes, not through typed views).
    pub fn is_opaque(&self) -> bool {
        matches!(self, DType::Opaque(_))
    }
}

impl fmt::Display for DType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DType::Opaque(o) => write!(f, "opaque {}", literal::clip(o.descr(), 60)),
            d => f.write_str(d.name()),
        }
    }
}

/// A Rust element type that can view a column: plain old data with a fixed [`DType`].
pub trait Element: bytemuck::Pod + Send + Sync + std::fmt::Debug + 'static {
    /// The dtype this type stands for.
    const DTYPE: DType;

    /// Whether a column of `dtype` can be viewed as this type (`u8` also views `Bool`).
    fn views(dtype: &DType) -> bool {
        *dtype == Self::DTYPE
    }
}

macro_rules! element {
    ($($t:ty => $d:ident),* $(,)?) => {
        $(impl Element for $t { const DTYPE: DType = DType::$d; })*
    };
}

element!(
    f32 => F32, f64 => F64, half::f16 => F16, half::bf16 => BF16,
    i8 => I8, i16 => I16, i32 => I32, i64 => I64,
    u16 => U16, u32 => U32, u64 => U64,
);

impl Element for u8 {
    const DTYPE: DType = DType::U8;
    fn views(dtype: &DType) -> bool {
        matches!(dtype, DType::U8 | DType::Bool)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip_and_sizes_match_rust_types() {
        for d in DType::ALL {
            assert_eq!(DType::from_name(d.name()), Some(d.clone()));
        }
        assert_eq!(DType::F16.size(), std::mem::size_of::<half::f16>());
        assert_eq!(DType::I64.size(), std::mem::size_of::<i64>());
        assert!(u8::views(&DType::Bool));
        assert!(!i8::views(&DType::U8));
        let big = DType::Opaque(Opaque::new("'>f8'").unwrap());
        assert!(!f64::views(&big) && !u8::views(&big));
        assert_eq!((big.size(), big.name()), (8, "'>f8'"));
    }
}
