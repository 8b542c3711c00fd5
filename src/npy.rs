//! NumPy files in and out: `.npy` and `.npz` as table columns, [`Materialized`] outputs as
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

use std::fmt;
use std::fs::File;
use std::io::{self, BufWriter, Read, Write};
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{mpsc, Arc};
use std::time::Instant;

use ndarray::{ArrayViewD, IxDyn, ShapeBuilder};

use crate::batch::Batches;
use crate::dtype::DType;
use crate::error::{Error, Result};
use crate::gather::{cpu, Strategy};
use crate::loader::{Loader, OutputSpec};
use crate::memory::{checked_bytes, HostBuf};
use crate::mmap::{ReadMap, WriteMap};
use crate::output::{Backend, ColumnArray, Materialized, Report, Storage, StorageKind};
use crate::sampler::IndexSlice;
use crate::table::{Column, SharedBytes, Table};

/// The six bytes every `.npy` file starts with.
pub const MAGIC: &[u8; 6] = b"\x93NUMPY";

/// Headers longer than this are refused (NumPy itself refuses more than 10 000 bytes by
/// default; structured dtypes, which we do not read, are the only reason for long ones).
const MAX_HEADER_LEN: usize = 1 << 20;

/// Headers are padded so the data starts at a multiple of this (as NumPy does).
const HEADER_ALIGN: usize = 64;

/// Bytes per write call and per progress step when writing files.
const WRITE_CHUNK: usize = 8 << 20;

/// Output bytes gathered per step when draining straight into a file: large enough to amortise
/// a parallel gather and a write call, small enough to stay in the last-level cache.
const GATHER_BLOCK: usize = 4 << 20;

// ---- dtypes -------------------------------------------------------------------------------------

/// The NumPy `descr` of a dtype (`None` for `bf16`, which NumPy lacks).
pub fn descr(dtype: DType) -> Option<&'static str> {
    Some(match dtype {
        DType::F32 => "<f4",
        DType::F64 => "<f8",
        DType::F16 => "<f2",
        DType::BF16 => return None,
        DType::I8 => "|i1",
        DType::I16 => "<i2",
        DType::I32 => "<i4",
        DType::I64 => "<i8",
        DType::U8 => "|u1",
        DType::U16 => "<u2",
        DType::U32 => "<u4",
        DType::U64 => "<u8",
        DType::Bool => "|b1",
    })
}

/// Byte order of the data in a file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ByteOrder {
    /// Little-endian (or single-byte elements): read in place.
    Little,
    /// Big-endian: byte-swapped when read.
    Big,
}

/// Parses a NumPy `descr` string into a dtype and byte order.
///
/// # Errors
/// A message saying why the descr is not one we read (object, structured, strings, complex …).
fn parse_descr(descr: &str) -> std::result::Result<(DType, ByteOrder), String> {
    let native = if cfg!(target_endian = "big") {
        ByteOrder::Big
    } else {
        ByteOrder::Little
    };
    let (order, code) = match descr.as_bytes().first() {
        Some(b'<') => (ByteOrder::Little, &descr[1..]),
        Some(b'>') => (ByteOrder::Big, &descr[1..]),
        Some(b'|') | Some(b'=') => (native, &descr[1..]),
        _ => (native, descr),
    };
    let dtype = match code {
        "f2" => DType::F16,
        "f4" => DType::F32,
        "f8" => DType::F64,
        "i1" => DType::I8,
        "i2" => DType::I16,
        "i4" => DType::I32,
        "i8" => DType::I64,
        "u1" => DType::U8,
        "u2" => DType::U16,
        "u4" => DType::U32,
        "u8" => DType::U64,
        "b1" => DType::Bool,
        c if c.starts_with('O') => {
            return Err(
                "object arrays (dtype 'O') hold Python objects, not data; not supported"
                    .to_string(),
            )
        }
        _ => {
            return Err(format!(
                "unsupported dtype {descr:?} (supported: float16/32/64, int8-64, uint8-64, bool)"
            ))
        }
    };
    let order = if dtype.size() == 1 {
        ByteOrder::Little
    } else {
        order
    };
    Ok((dtype, order))
}

// ---- headers ------------------------------------------------------------------------------------

/// What a `.npy` header declares, checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NpyHeader {
    /// Format version `(major, minor)`: 1, 2 or 3.
    pub version: (u8, u8),
    /// Element type.
    pub dtype: DType,
    /// Byte order of the data.
    pub byte_order: ByteOrder,
    /// Whether the data is in Fortran (column-major) order.
    pub fortran_order: bool,
    /// The array's shape (the first axis is rows).
    pub shape: Vec<usize>,
    /// Offset of the data from the start of the file (the header's full length).
    pub data_offset: usize,
    /// Bytes of data the shape and dtype imply.
    pub data_len: usize,
}

impl NpyHeader {
    /// Parses and checks the header at the start of `bytes` (a whole file, or at least its
    /// header). The data itself is not looked at.
    ///
    /// # Errors
    /// A message saying what is wrong (wrong magic, unknown version, a header that is not the
    /// dict NumPy writes, an unsupported dtype, a shape whose size overflows).
    pub fn parse(bytes: &[u8]) -> std::result::Result<NpyHeader, String> {
        if bytes.len() < MAGIC.len() || &bytes[..MAGIC.len()] != MAGIC {
            return Err("not a .npy file (wrong magic; expected \\x93NUMPY)".into());
        }
        let (major, minor) = match bytes.get(6..8) {
            Some(&[a, b]) => (a, b),
            _ => return Err("truncated: the file ends inside the header".into()),
        };
        let (len_bytes, utf8) = match major {
            1 => (2, false),
            2 => (4, false),
            3 => (4, true),
            _ => return Err(format!("unsupported .npy format version {major}.{minor}")),
        };
        let Some(len_field) = bytes.get(8..8 + len_bytes) else {
            return Err("truncated: the file ends inside the header".into());
        };
        let header_len = len_field
            .iter()
            .rev()
            .fold(0usize, |acc, &b| (acc << 8) | b as usize);
        if header_len > MAX_HEADER_LEN {
            return Err(format!(
                "header of {header_len} bytes is longer than the {MAX_HEADER_LEN} allowed"
            ));
        }
        let start = 8 + len_bytes;
        let Some(text) = bytes.get(start..start + header_len) else {
            return Err(format!(
                "truncated: the header declares {header_len} bytes, the file has {}",
                bytes.len().saturating_sub(start)
            ));
        };
        let text = if utf8 {
            std::str::from_utf8(text).map_err(|_| "header is not valid UTF-8".to_string())?
        } else {
            if !text.is_ascii() {
                return Err("header is not ASCII (latin-1 text is not supported)".into());
            }
            std::str::from_utf8(text).map_err(|_| "header is not ASCII".to_string())?
        };
        let dict = header_dict(text).map_err(|e| format!("bad header {text:?}: {e}"))?;
        let descr = dict.descr.ok_or("bad header: no 'descr'")?;
        let fortran_order = dict.fortran_order.ok_or("bad header: no 'fortran_order'")?;
        let shape = dict.shape.ok_or("bad header: no 'shape'")?;
        let (dtype, byte_order) = parse_descr(&descr)?;
        let mut parts = shape.clone();
        parts.push(dtype.size());
        let data_len = parts
            .iter()
            .try_fold(1usize, |a, &p| a.checked_mul(p))
            .ok_or_else(|| format!("shape {shape:?} is too large for this machine"))?;
        Ok(NpyHeader {
            version: (major, minor),
            dtype,
            byte_order,
            fortran_order,
            shape,
            data_offset: start + header_len,
            data_len,
        })
    }

    /// The header bytes NumPy would write for a C-order, little-endian array of `dtype` and
    /// `shape`: version 1.0 when the header fits in 64 KiB, else 2.0, padded with spaces and a
    /// newline so the data starts at a multiple of 64 bytes.
    ///
    /// # Errors
    /// [`Error::UnsupportedDType`] for `bf16`.
    pub fn encode(dtype: DType, shape: &[usize]) -> Result<Vec<u8>> {
        let descr = descr(dtype).ok_or_else(|| Error::UnsupportedDType {
            descr: "bf16 (NumPy has no bfloat16 dtype; store such a column as u16 or f32)".into(),
        })?;
        let dims: Vec<String> = shape.iter().map(|d| d.to_string()).collect();
        let shape_text = match dims.len() {
            1 => format!("({},)", dims[0]),
            _ => format!("({})", dims.join(", ")),
        };
        let dict =
            format!("{{'descr': '{descr}', 'fortran_order': False, 'shape': {shape_text}, }}");
        let mut out = Vec::with_capacity(dict.len() + 2 * HEADER_ALIGN);
        for (version, len_bytes) in [(1u8, 2usize), (2, 4)] {
            let unpadded = MAGIC.len() + 2 + len_bytes + dict.len() + 1;
            let total = unpadded.div_ceil(HEADER_ALIGN) * HEADER_ALIGN;
            let header_len = total - MAGIC.len() - 2 - len_bytes;
            if len_bytes == 2 && header_len > u16::MAX as usize {
                continue;
            }
            out.extend_from_slice(MAGIC);
            out.extend_from_slice(&[version, 0]);
            out.extend_from_slice(&(header_len as u64).to_le_bytes()[..len_bytes]);
            out.extend_from_slice(dict.as_bytes());
            out.resize(total - 1, b' ');
            out.push(b'\n');
            break;
        }
        Ok(out)
    }

    /// Rows (the first axis).
    pub fn rows(&self) -> usize {
        self.shape.first().copied().unwrap_or(0)
    }
}

#[derive(Default)]
struct HeaderDict {
    descr: Option<String>,
    fortran_order: Option<bool>,
    shape: Option<Vec<usize>>,
}

/// Parses the Python dict literal of a `.npy` header: exactly the keys `descr` (a string),
/// `fortran_order` (a bool) and `shape` (a tuple of non-negative ints).
fn header_dict(text: &str) -> std::result::Result<HeaderDict, String> {
    let mut p = Lexer {
        s: text.as_bytes(),
        at: 0,
    };
    let mut dict = HeaderDict::default();
    p.expect(b'{')?;
    loop {
        if p.eat(b'}') {
            break;
        }
        let key = p.string()?;
        p.expect(b':')?;
        match key.as_str() {
            "descr" => {
                if p.peek() == Some(b'[') {
                    return Err(
                        "structured dtypes (records with named fields) are not supported".into(),
                    );
                }
                dict.descr = Some(p.string()?);
            }
            "fortran_order" => {
                dict.fortran_order = Some(match p.ident()? {
                    "True" => true,
                    "False" => false,
                    other => return Err(format!("fortran_order is {other:?}, not True/False")),
                })
            }
            "shape" => dict.shape = Some(p.tuple()?),
            other => return Err(format!("unexpected key {other:?}")),
        }
        if !p.eat(b',') {
            p.expect(b'}')?;
            break;
        }
    }
    p.skip_ws();
    if p.at != p.s.len() {
        return Err("trailing characters after the dict".into());
    }
    Ok(dict)
}

struct Lexer<'s> {
    s: &'s [u8],
    at: usize,
}

impl Lexer<'_> {
    fn skip_ws(&mut self) {
        while self.s.get(self.at).is_some_and(|c| c.is_ascii_whitespace()) {
            self.at += 1;
        }
    }

    fn peek(&mut self) -> Option<u8> {
        self.skip_ws();
        self.s.get(self.at).copied()
    }

    fn eat(&mut self, c: u8) -> bool {
        if self.peek() == Some(c) {
            self.at += 1;
            true
        } else {
            false
        }
    }

    fn expect(&mut self, c: u8) -> std::result::Result<(), String> {
        if self.eat(c) {
            Ok(())
        } else {
            Err(format!("expected {:?} at byte {}", c as char, self.at))
        }
    }

    fn string(&mut self) -> std::result::Result<String, String> {
        let q = match self.peek() {
            Some(q @ (b'\'' | b'"')) => q,
            _ => return Err(format!("expected a string at byte {}", self.at)),
        };
        let start = self.at + 1;
        let len = self.s[start..]
            .iter()
            .position(|&c| c == q || c == b'\\')
            .ok_or("unterminated string")?;
        if self.s[start + len] == b'\\' {
            return Err("escapes in header strings are not supported".into());
        }
        self.at = start + len + 1;
        String::from_utf8(self.s[start..start + len].to_vec()).map_err(|e| e.to_string())
    }

    fn ident(&mut self) -> std::result::Result<&str, String> {
        self.skip_ws();
        let start = self.at;
        while self
            .s
            .get(self.at)
            .is_some_and(|c| c.is_ascii_alphanumeric() || *c == b'_')
        {
            self.at += 1;
        }
        std::str::from_utf8(&self.s[start..self.at]).map_err(|e| e.to_string())
    }

    fn tuple(&mut self) -> std::result::Result<Vec<usize>, String> {
        self.expect(b'(')?;
        let mut dims = Vec::new();
        loop {
            if self.eat(b')') {
                break;
            }
            let word = self.ident()?;
            // Python 2 wrote long ints with an `L` suffix.
            let digits = word.strip_suffix('L').unwrap_or(word);
            if digits.is_empty() || !digits.bytes().all(|c| c.is_ascii_digit()) {
                return Err(format!(
                    "shape entry {word:?} is not a non-negative integer"
                ));
            }
            dims.push(
                digits
                    .parse::<usize>()
                    .map_err(|_| format!("shape entry {word} is too large"))?,
            );
            if !self.eat(b',') {
                self.expect(b')')?;
                break;
            }
        }
        Ok(dims)
    }
}

// ---- reading ------------------------------------------------------------------------------------

impl SharedBytes for ReadMap {
    fn bytes(&self) -> &[u8] {
        ReadMap::bytes(self)
    }
}

/// A sub-range of bytes kept alive by their owner (a file map, an inflated member).
struct SubBytes {
    owner: Arc<dyn SharedBytes>,
    range: Range<usize>,
}

impl SharedBytes for SubBytes {
    fn bytes(&self) -> &[u8] {
        // The range was checked against the owner's length when this was made.
        self.owner.bytes().get(self.range.clone()).unwrap_or(&[])
    }
}

fn bad(path: &Path, reason: impl Into<String>) -> Error {
    Error::BadFile {
        path: path.to_path_buf(),
        reason: reason.into(),
    }
}

/// Makes a column named `name` from a `.npy` image held by `owner` at `image` (a whole file,
/// or one member of an archive). `what` prefixes messages (e.g. the member's name).
fn column_from_image(
    path: &Path,
    what: &str,
    name: String,
    owner: Arc<dyn SharedBytes>,
    image: Range<usize>,
) -> Result<Column<'static>> {
    let msg = |r: String| bad(path, format!("{what}{r}"));
    let bytes = owner.bytes().get(image.clone()).unwrap_or(&[]);
    let header = NpyHeader::parse(bytes).map_err(msg)?;
    let Some((&rows, row_shape)) = header.shape.split_first() else {
        return Err(msg(
            "a 0-dimensional array has no rows; a column needs a first axis".into(),
        ));
    };
    let have = bytes.len() - header.data_offset;
    if have < header.data_len {
        return Err(msg(format!(
            "truncated: shape {:?} of {} needs {} data bytes, the file has {have}",
            header.shape, header.dtype, header.data_len
        )));
    }
    if have > header.data_len {
        return Err(msg(format!(
            "{} bytes after the data that shape {:?} of {} declares (corrupt header?)",
            have - header.data_len,
            header.shape,
            header.dtype
        )));
    }
    let data = image.start + header.data_offset..image.end;
    // Fortran and C order coincide when at most one axis is longer than 1.
    let transpose = header.fortran_order && header.shape.iter().filter(|&&d| d > 1).count() > 1;
    let swap = header.byte_order == ByteOrder::Big && header.dtype.size() > 1;
    let shared: Arc<dyn SharedBytes> = if !transpose && !swap {
        Arc::new(SubBytes { owner, range: data })
    } else {
        let src = &owner.bytes()[data];
        let mut buf = HostBuf::zeroed(src.len(), &name)?;
        if transpose {
            fortran_to_c(src, header.dtype.size(), &header.shape, buf.as_bytes_mut())
                .map_err(msg)?;
        } else {
            buf.as_bytes_mut().copy_from_slice(src);
        }
        if swap {
            for e in buf.as_bytes_mut().chunks_exact_mut(header.dtype.size()) {
                e.reverse();
            }
        }
        Arc::new(buf)
    };
    Column::from_shared(name, header.dtype, row_shape, rows, shared)
}

/// Copies Fortran-order elements of `size` bytes into C order (`dst` as long as `src`).
fn fortran_to_c(
    src: &[u8],
    size: usize,
    shape: &[usize],
    dst: &mut [u8],
) -> std::result::Result<(), String> {
    fn go<T: bytemuck::Pod>(
        src: &[u8],
        shape: &[usize],
        dst: &mut [u8],
    ) -> std::result::Result<(), String> {
        // `src` may sit at any offset of a file: copy it into aligned elements first.
        let elems: Vec<T> = src
            .chunks_exact(std::mem::size_of::<T>())
            .map(bytemuck::pod_read_unaligned)
            .collect();
        let view = ArrayViewD::from_shape(IxDyn(shape).f(), &elems).map_err(|e| e.to_string())?;
        for (d, v) in dst
            .chunks_exact_mut(std::mem::size_of::<T>())
            .zip(view.iter())
        {
            d.copy_from_slice(bytemuck::bytes_of(v));
        }
        Ok(())
    }
    match size {
        1 => go::<u8>(src, shape, dst),
        2 => go::<u16>(src, shape, dst),
        4 => go::<u32>(src, shape, dst),
        8 => go::<u64>(src, shape, dst),
        _ => Err(format!("no Fortran-order reader for {size}-byte elements")),
    }
}

fn utf8_name(path: &Path, s: Option<&std::ffi::OsStr>) -> Result<String> {
    s.and_then(|s| s.to_str())
        .filter(|s| !s.is_empty())
        .map(str::to_string)
        .ok_or_else(|| {
            bad(
                path,
                "the file name is not valid UTF-8 (it names the column)",
            )
        })
}

/// Reads a `.npy` file as a column named after the file's stem (`x.npy` → `"x"`).
///
/// A little-endian C-order array is memory-mapped, not read: the column is a view of the
/// file, so files larger than RAM can be drained. Big-endian and Fortran-order arrays are
/// converted into memory once.
///
/// ```
/// # let dir = std::env::temp_dir().join(format!("arraydrain-doc-read-npy-{}", std::process::id()));
/// # std::fs::create_dir_all(&dir)?;
/// use arraydrain::{npy, ColumnArray};
/// use ndarray::Array2;
///
/// let x = ColumnArray::from_array("x", Array2::from_shape_fn((4, 3), |(i, j)| (i * 3 + j) as f32))?;
/// npy::write_npy(dir.join("x.npy"), &x)?;
///
/// let column = npy::read_npy(dir.join("x.npy"))?;
/// assert_eq!((column.name(), column.rows(), column.row_shape()), ("x", 4, &[3][..]));
/// assert_eq!(column.bytes(), x.as_bytes());
/// # std::fs::remove_dir_all(&dir)?;
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
///
/// # Errors
/// [`Error::Io`] when the file cannot be opened or mapped; [`Error::BadFile`] naming the file
/// for a wrong magic, a bad header, an unsupported dtype (object arrays, structured, complex,
/// strings …), a 0-dimensional array, or a data length that disagrees with the header.
pub fn read_npy(path: impl AsRef<Path>) -> Result<Column<'static>> {
    let path = path.as_ref();
    let name = utf8_name(path, path.file_stem())?;
    let map = Arc::new(ReadMap::open(path)?);
    let len = map.bytes().len();
    column_from_image(path, "", name, map, 0..len)
}

/// Reads every member of a `.npz` archive as a column named after the member (`x.npy` → `"x"`),
/// in archive order.
///
/// Stored (uncompressed) members are memory-mapped in place after their CRC is checked;
/// compressed members are inflated into memory.
///
/// # Errors
/// [`Error::Io`] when the file cannot be opened; [`Error::BadFile`] naming the file for an
/// archive that is not a readable zip, a member that is not a `.npy`, a CRC mismatch, or any
/// of [`read_npy`]'s failures in a member.
pub fn read_npz(path: impl AsRef<Path>) -> Result<Vec<Column<'static>>> {
    let path = path.as_ref();
    let map = Arc::new(ReadMap::open(path)?);
    let zip_err = |e: zip::result::ZipError| bad(path, format!("not a readable .npz archive: {e}"));
    let mut archive = zip::ZipArchive::new(io::Cursor::new(map.bytes())).map_err(zip_err)?;
    let mut columns = Vec::with_capacity(archive.len());
    for i in 0..archive.len() {
        let mut member = archive.by_index(i).map_err(zip_err)?;
        if member.is_dir() {
            continue;
        }
        let member_name = member.name().to_string();
        let what = format!("member {member_name:?}: ");
        let Some(name) = member_name.strip_suffix(".npy").filter(|n| !n.is_empty()) else {
            return Err(bad(
                path,
                format!("{what}not a .npy array (an .npz holds only NAME.npy members)"),
            ));
        };
        let size = member.size();
        let size_usize = usize::try_from(size)
            .map_err(|_| bad(path, format!("{what}too large for this machine")))?;
        let member_err = |e: io::Error| bad(path, format!("{what}{e}"));
        if member.compression() == zip::CompressionMethod::Stored {
            let start = usize::try_from(member.data_start()).unwrap_or(usize::MAX);
            let range = start..start.saturating_add(size_usize);
            if member.compressed_size() != size || range.end > map.bytes().len() {
                return Err(bad(path, format!("{what}truncated archive")));
            }
            // Check the CRC by streaming the member through the zip reader (which verifies it
            // at the end); the data itself stays where it is, in the map.
            let mut scratch = vec![0u8; 1 << 20];
            loop {
                match member.read(&mut scratch) {
                    Ok(0) => break,
                    Ok(_) => {}
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                    Err(e) => return Err(member_err(e)),
                }
            }
            drop(member);
            let owner: Arc<dyn SharedBytes> = Arc::clone(&map) as Arc<dyn SharedBytes>;
            columns.push(column_from_image(
                path,
                &what,
                name.to_string(),
                owner,
                range,
            )?);
        } else {
            let mut buf = HostBuf::zeroed(size_usize, name)?;
            member.read_exact(buf.as_bytes_mut()).map_err(member_err)?;
            // One more read reaches the end, where the reader checks the CRC.
            let mut extra = [0u8; 1];
            match member.read(&mut extra) {
                Ok(0) => {}
                Ok(_) => {
                    return Err(bad(
                        path,
                        format!("{what}longer than the {size} bytes the archive declares"),
                    ))
                }
                Err(e) => return Err(member_err(e)),
            }
            drop(member);
            columns.push(column_from_image(
                path,
                &what,
                name.to_string(),
                Arc::new(buf),
                0..size_usize,
            )?);
        }
    }
    if columns.is_empty() {
        return Err(bad(path, "the archive holds no arrays"));
    }
    Ok(columns)
}

/// Reads `.npy` files and `.npz` archives (by extension; anything else is tried as `.npy`)
/// into one table, columns in the order given.
///
/// ```
/// # let dir = std::env::temp_dir().join(format!("arraydrain-doc-read-table-{}", std::process::id()));
/// # std::fs::create_dir_all(&dir)?;
/// use arraydrain::{npy, ColumnArray, Loader, Strategy};
/// use ndarray::{Array1, Array2};
///
/// let x = ColumnArray::from_array("x", Array2::<f32>::ones((6, 2)))?;
/// let y = ColumnArray::from_array("y", Array1::from_iter(0..6i64))?;
/// npy::write_npz(dir.join("data.npz"), &[x, y], &npy::WriteOptions::default())?;
///
/// let table = npy::read_table(&[dir.join("data.npz")])?;
/// let out = Loader::new(&table).batch_size(4).shuffle(1).materialize(Strategy::Auto)?;
/// npy::write_npy_dir(dir.join("out"), out.columns())?;
/// assert!(dir.join("out/y.npy").exists());
/// # std::fs::remove_dir_all(&dir)?;
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
///
/// # Errors
/// Those of [`read_npy`] and [`read_npz`]; [`Error::BadFile`] naming the file whose column
/// repeats an earlier name or whose row count differs from the first file's;
/// [`Error::EmptyTable`] when no path is given.
pub fn read_table<P: AsRef<Path>>(paths: &[P]) -> Result<Table<'static>> {
    let mut columns: Vec<(Column<'static>, PathBuf)> = Vec::new();
    for path in paths {
        let path = path.as_ref();
        let is_npz = path
            .extension()
            .is_some_and(|e| e.eq_ignore_ascii_case("npz"));
        let read = if is_npz {
            read_npz(path)?
        } else {
            vec![read_npy(path)?]
        };
        for column in read {
            if let Some((first, first_path)) = columns.first() {
                if column.rows() != first.rows() {
                    return Err(bad(
                        path,
                        format!(
                            "column {:?} has {} rows but column {:?} of {} has {}",
                            column.name(),
                            column.rows(),
                            first.name(),
                            first_path.display(),
                            first.rows()
                        ),
                    ));
                }
            }
            if let Some((_, other)) = columns.iter().find(|(c, _)| c.name() == column.name()) {
                return Err(bad(
                    path,
                    format!(
                        "column {:?} is also read from {}",
                        column.name(),
                        other.display()
                    ),
                ));
            }
            columns.push((column, path.to_path_buf()));
        }
    }
    Table::new(columns.into_iter().map(|(c, _)| c).collect())
}

/// Reads a 1-D array of row indices (`int64`, `uint64`, `int32` or `uint32`) from a `.npy` file,
/// e.g. the exact order another loader produced.
///
/// # Errors
/// Those of [`read_npy`]; [`Error::BadFile`] naming the file for another dtype, more than one
/// dimension, or a negative index.
pub fn read_indices(path: impl AsRef<Path>) -> Result<Vec<u64>> {
    let path = path.as_ref();
    let column = read_npy(path)?;
    if !column.row_shape().is_empty() {
        return Err(bad(
            path,
            format!(
                "an index file holds a 1-D array; this one has rows of shape {:?}",
                column.row_shape()
            ),
        ));
    }
    let bytes = column.bytes();
    let negative = |pos: usize, v: i64| {
        bad(
            path,
            format!("index {v} at position {pos} is negative (indices are row numbers)"),
        )
    };
    let mut out = Vec::with_capacity(column.rows());
    match column.dtype() {
        DType::I64 => {
            for (pos, c) in bytes.chunks_exact(8).enumerate() {
                let v: i64 = bytemuck::pod_read_unaligned(c);
                out.push(u64::try_from(v).map_err(|_| negative(pos, v))?);
            }
        }
        DType::U64 => out.extend(
            bytes
                .chunks_exact(8)
                .map(bytemuck::pod_read_unaligned::<u64>),
        ),
        DType::I32 => {
            for (pos, c) in bytes.chunks_exact(4).enumerate() {
                let v: i32 = bytemuck::pod_read_unaligned(c);
                out.push(u64::try_from(v).map_err(|_| negative(pos, v.into()))?);
            }
        }
        DType::U32 => out.extend(
            bytes
                .chunks_exact(4)
                .map(|c| u64::from(bytemuck::pod_read_unaligned::<u32>(c))),
        ),
        other => {
            return Err(bad(
                path,
                format!("an index file holds int64, uint64, int32 or uint32, not {other}"),
            ))
        }
    }
    Ok(out)
}

// ---- writing ------------------------------------------------------------------------------------

/// A file being written under a temporary name beside its destination; removed on drop unless
/// committed (renamed into place).
struct TempFile {
    temp: PathBuf,
    path: PathBuf,
    committed: bool,
}

static TEMP_COUNTER: AtomicU64 = AtomicU64::new(0);

impl TempFile {
    fn create(path: &Path) -> Result<(TempFile, File)> {
        let file_name = path
            .file_name()
            .ok_or_else(|| bad(path, "an output path needs a file name"))?;
        let mut temp_name = std::ffi::OsString::from(".");
        temp_name.push(file_name);
        temp_name.push(format!(
            ".{}-{}.tmp",
            std::process::id(),
            TEMP_COUNTER.fetch_add(1, Ordering::Relaxed)
        ));
        let temp = path.with_file_name(temp_name);
        let file = File::options()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(&temp)
            .map_err(|e| Error::io(&temp, e))?;
        Ok((
            TempFile {
                temp,
                path: path.to_path_buf(),
                committed: false,
            },
            file,
        ))
    }

    fn commit(&mut self) -> Result<()> {
        std::fs::rename(&self.temp, &self.path).map_err(|e| Error::io(&self.path, e))?;
        self.committed = true;
        Ok(())
    }
}

impl Drop for TempFile {
    fn drop(&mut self) {
        if !self.committed {
            // Best effort: the temporary file may already be gone.
            let _ = std::fs::remove_file(&self.temp);
        }
    }
}

/// Called with the bytes written so far while a file is written.
pub type WriteProgress = Arc<dyn Fn(u64) + Send + Sync>;

/// How to write `.npz` archives and `.npy` files.
#[derive(Clone, Default)]
pub struct WriteOptions {
    compress: bool,
    progress: Option<WriteProgress>,
}

impl WriteOptions {
    /// Stored (uncompressed) `.npz` members, as `numpy.savez` writes them; no progress calls.
    pub fn new() -> Self {
        Self::default()
    }

    /// Deflate `.npz` members (`numpy.savez_compressed`, zlib's default level). `.npy` files
    /// are never compressed.
    pub fn compress(mut self, compress: bool) -> Self {
        self.compress = compress;
        self
    }

    /// Calls `f(bytes_written)` as array data is written (every few MiB).
    pub fn on_progress(mut self, f: impl Fn(u64) + Send + Sync + 'static) -> Self {
        self.progress = Some(Arc::new(f));
        self
    }
}

impl fmt::Debug for WriteOptions {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("WriteOptions")
            .field("compress", &self.compress)
            .field("progress", &self.progress.is_some())
            .finish()
    }
}

/// Where the data of a written array comes from.
enum Source<'a> {
    /// Bytes in memory (a materialized column).
    Bytes(&'a [u8]),
    /// A whole `.npy` file image in a read-only map; its pages are released once written.
    Map(&'a ReadMap),
    /// Rows `indices` of a table column, gathered a block at a time into a reused buffer (or,
    /// for a contiguous run, written straight from the column's bytes).
    Gather {
        column: &'a Column<'a>,
        indices: IndexSlice<'a>,
    },
}

/// Writes sources, counting bytes for progress; owns the gather buffer.
struct DataWriter<'o> {
    done: u64,
    progress: Option<&'o WriteProgress>,
    bufs: Vec<Vec<u8>>,
}

impl<'o> DataWriter<'o> {
    fn new(options: &'o WriteOptions) -> Self {
        DataWriter {
            done: 0,
            progress: options.progress.as_ref(),
            bufs: Vec::new(),
        }
    }

    fn step(&mut self, path: &Path, w: &mut impl Write, bytes: &[u8]) -> Result<()> {
        w.write_all(bytes).map_err(|e| Error::io(path, e))?;
        self.done += bytes.len() as u64;
        if let Some(p) = self.progress {
            p(self.done);
        }
        Ok(())
    }

    fn write(&mut self, path: &Path, w: &mut impl Write, source: &Source<'_>) -> Result<()> {
        match source {
            Source::Bytes(bytes) => {
                for chunk in bytes.chunks(WRITE_CHUNK) {
                    self.step(path, w, chunk)?;
                }
            }
            Source::Map(map) => {
                for (k, chunk) in map.bytes().chunks(WRITE_CHUNK).enumerate() {
                    self.step(path, w, chunk)?;
                    let start = k * WRITE_CHUNK;
                    map.release(start..start + chunk.len())?;
                }
            }
            Source::Gather { column, indices } => self.gather(path, w, column, *indices)?,
        }
        Ok(())
    }

    /// Gathers blocks of rows on one side and writes them on the other, overlapped: a scoped
    /// thread gathers block `k+1` (on rayon's pool when there are more than two threads) into
    /// one of two buffers while this thread writes block `k` from the other. A contiguous order
    /// goes through the buffers as well, so that reading the input (page faults on its map)
    /// overlaps writing.
    fn gather(
        &mut self,
        path: &Path,
        w: &mut impl Write,
        column: &Column<'_>,
        indices: IndexSlice<'_>,
    ) -> Result<()> {
        let rb = column.row_bytes();
        if rb == 0 || indices.is_empty() {
            return Ok(());
        }
        let block_rows = (GATHER_BLOCK / rb).max(1).min(indices.len());
        let block_len = block_rows * rb;
        while self.bufs.len() < 2 {
            self.bufs.push(Vec::new());
        }
        for buf in &mut self.bufs {
            if buf.len() < block_len {
                buf.try_reserve_exact(block_len - buf.len())
                    .map_err(|e| Error::alloc(block_len, column.name(), e))?;
                buf.resize(block_len, 0);
            }
        }
        let (to_fill, empty) = mpsc::sync_channel::<Vec<u8>>(2);
        let (to_write, full) = mpsc::sync_channel::<(Vec<u8>, usize)>(2);
        for buf in self.bufs.drain(..) {
            // The receiver is alive: it is this function's `empty`.
            let _ = to_fill.send(buf);
        }
        // With two cores, the writer and this gatherer have one each: rayon's workers would
        // only take turns with the writer (and spin while they wait for the next block).
        let parallel = rayon::current_num_threads() > 2;
        std::thread::scope(|scope| {
            scope.spawn(move || {
                let mut rest = indices;
                while !rest.is_empty() {
                    let (block, tail) = rest.split_at(block_rows.min(rest.len()));
                    // A closed channel means the writer stopped (an error): stop too.
                    let Ok(mut buf) = empty.recv() else { return };
                    let len = block.len() * rb;
                    if parallel {
                        cpu::par_gather(column.bytes(), rb, block, &mut buf[..len]);
                    } else {
                        cpu::gather_serial(column.bytes(), rb, block, &mut buf[..len]);
                    }
                    if to_write.send((buf, len)).is_err() {
                        return;
                    }
                    rest = tail;
                }
            });
            let mut result = Ok(());
            for (buf, len) in full.iter() {
                if result.is_ok() {
                    result = self.step(path, w, &buf[..len]);
                }
                if result.is_ok() {
                    // The gatherer may already be done; the buffer then comes home below.
                    if let Err(mpsc::SendError(buf)) = to_fill.send(buf) {
                        self.bufs.push(buf);
                    }
                } else {
                    self.bufs.push(buf);
                    break;
                }
            }
            drop(full);
            drop(to_fill);
            result
        })
    }
}

/// One array to write: its `.npy` header (empty when the source is a whole `.npy` image) and
/// its data.
struct Array<'a> {
    name: String,
    header: Vec<u8>,
    source: Source<'a>,
    len: usize,
}

fn check_writable(column: &ColumnArray) -> Result<Vec<u8>> {
    NpyHeader::encode(column.dtype(), &column.shape())
}

fn materialized_arrays(columns: &[ColumnArray]) -> Result<Vec<Array<'_>>> {
    columns
        .iter()
        .map(|c| {
            Ok(Array {
                name: c.name().to_string(),
                header: check_writable(c)?,
                source: Source::Bytes(c.as_bytes()),
                len: c.as_bytes().len(),
            })
        })
        .collect()
}

fn loader_arrays<'a>(table: &'a Table<'a>, batches: &'a Batches) -> Result<Vec<Array<'a>>> {
    let rows = batches.rows();
    table
        .columns()
        .iter()
        .map(|c| {
            let mut shape = vec![rows];
            shape.extend_from_slice(c.row_shape());
            Ok(Array {
                name: c.name().to_string(),
                header: NpyHeader::encode(c.dtype(), &shape)?,
                source: Source::Gather {
                    column: c,
                    indices: batches.indices().view(0, rows),
                },
                len: checked_bytes(&[rows, c.row_bytes()], c.name())?,
            })
        })
        .collect()
}

/// Writes one column as a `.npy` file (written to a temporary name, renamed when complete).
///
/// # Errors
/// [`Error::UnsupportedDType`] for `bf16`; [`Error::Io`] naming the file.
pub fn write_npy(path: impl AsRef<Path>, column: &ColumnArray) -> Result<()> {
    let arrays = materialized_arrays(std::slice::from_ref(column))?;
    let path = path.as_ref();
    let options = WriteOptions::new();
    let mut w = DataWriter::new(&options);
    arrays
        .iter()
        .try_for_each(|a| write_one_npy(path, a, &mut w))
}

fn write_one_npy(path: &Path, array: &Array<'_>, w: &mut DataWriter<'_>) -> Result<()> {
    let (mut temp, file) = TempFile::create(path)?;
    let mut file = BufWriter::with_capacity(1 << 16, file);
    file.write_all(&array.header)
        .map_err(|e| Error::io(path, e))?;
    w.write(path, &mut file, &array.source)?;
    file.flush().map_err(|e| Error::io(path, e))?;
    drop(file);
    temp.commit()
}

fn write_dir(dir: &Path, arrays: &[Array<'_>], options: &WriteOptions) -> Result<Vec<PathBuf>> {
    std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
    let mut w = DataWriter::new(options);
    arrays
        .iter()
        .map(|a| {
            let path = dir.join(format!("{}.npy", a.name));
            write_one_npy(&path, a, &mut w)?;
            Ok(path)
        })
        .collect()
}

/// Writes each column as `DIR/NAME.npy` (the folder is created if needed); returns the paths.
///
/// # Errors
/// As [`write_npy`]; [`Error::Io`] when the folder cannot be created. Columns written before a
/// failure stay (each file is complete).
pub fn write_npy_dir(dir: impl AsRef<Path>, columns: &[ColumnArray]) -> Result<Vec<PathBuf>> {
    write_npy_dir_with(dir, columns, &WriteOptions::new())
}

/// [`write_npy_dir`] with progress.
///
/// # Errors
/// As [`write_npy_dir`].
pub fn write_npy_dir_with(
    dir: impl AsRef<Path>,
    columns: &[ColumnArray],
    options: &WriteOptions,
) -> Result<Vec<PathBuf>> {
    write_dir(dir.as_ref(), &materialized_arrays(columns)?, options)
}

/// Writes columns as a `.npz` archive, one `NAME.npy` member per column, as `numpy.savez`
/// (or, with [`WriteOptions::compress`], `numpy.savez_compressed`) does. Stored members are
/// aligned so each array's data starts at a multiple of 64 bytes in the file.
///
/// ```
/// # let dir = std::env::temp_dir().join(format!("arraydrain-doc-npz-{}", std::process::id()));
/// # std::fs::create_dir_all(&dir)?;
/// use arraydrain::{npy, Loader, Strategy, Table};
/// use ndarray::{Array1, Array2};
///
/// let x = Array2::from_shape_fn((8, 2), |(i, j)| (i * 2 + j) as f64);
/// let y = Array1::from_iter(0..8u16);
/// let table = Table::builder().view("x", x.view()).view("y", y.view()).build()?;
/// let out = Loader::new(&table).batch_size(3).shuffle(5).materialize(Strategy::Auto)?;
///
/// npy::write_npz(dir.join("out.npz"), out.columns(), &npy::WriteOptions::new().compress(true))?;
/// let back = npy::read_npz(dir.join("out.npz"))?;
/// assert_eq!(back[0].bytes(), out.column("x")?.as_bytes());
/// # std::fs::remove_dir_all(&dir)?;
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
///
/// # Errors
/// [`Error::UnsupportedDType`] for `bf16`; [`Error::Io`] naming the file.
pub fn write_npz(
    path: impl AsRef<Path>,
    columns: &[ColumnArray],
    options: &WriteOptions,
) -> Result<()> {
    write_archive(path.as_ref(), &materialized_arrays(columns)?, options)
}

/// Drains a loader straight into a `.npz` archive, without the output ever existing in memory:
/// each column's rows are gathered a few MiB at a time into one reused buffer (the parallel
/// preallocated gather, block by block) and written; a sequential order is written straight
/// from the input's pages. The archive holds the same bytes as
/// `write_npz(path, loader.materialize(..)?.columns(), ..)` would write.
///
/// ```
/// # let dir = std::env::temp_dir().join(format!("arraydrain-doc-drain-npz-{}", std::process::id()));
/// # std::fs::create_dir_all(&dir)?;
/// use arraydrain::{npy, Loader, Strategy, Table};
/// use ndarray::Array2;
///
/// let x = Array2::from_shape_fn((1000, 8), |(i, j)| (i * 8 + j) as f32);
/// let table = Table::builder().view("x", x.view()).build()?;
/// let loader = Loader::new(&table).batch_size(64).shuffle(7);
///
/// let report = npy::drain_to_npz(&loader, dir.join("x.npz"), &npy::WriteOptions::new())?;
/// assert_eq!(report.rows, 1000);
/// let back = npy::read_npz(dir.join("x.npz"))?;
/// assert_eq!(back[0].bytes(), loader.materialize(Strategy::Auto)?.column("x")?.as_bytes());
/// # std::fs::remove_dir_all(&dir)?;
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
///
/// # Errors
/// As [`Loader::batches`](crate::Loader::batches) and [`write_npz`].
pub fn drain_to_npz(
    loader: &Loader<'_, '_>,
    path: impl AsRef<Path>,
    options: &WriteOptions,
) -> Result<Report> {
    let started = Instant::now();
    let batches = loader.batches()?;
    let arrays = loader_arrays(loader.table(), &batches)?;
    write_archive(path.as_ref(), &arrays, options)?;
    Ok(stream_report(&arrays, batches.rows(), started))
}

/// [`drain_to_npz`] into a folder of `.npy` files, `DIR/NAME.npy` (created if needed); each
/// file appears under its name when complete.
///
/// # Errors
/// As [`drain_to_npz`].
pub fn drain_to_npy_dir(
    loader: &Loader<'_, '_>,
    dir: impl AsRef<Path>,
    options: &WriteOptions,
) -> Result<Report> {
    let started = Instant::now();
    let batches = loader.batches()?;
    let arrays = loader_arrays(loader.table(), &batches)?;
    write_dir(dir.as_ref(), &arrays, options)?;
    Ok(stream_report(&arrays, batches.rows(), started))
}

fn stream_report(arrays: &[Array<'_>], rows: usize, started: Instant) -> Report {
    let buffer = arrays
        .iter()
        .map(|a| match a.source {
            Source::Gather {
                column,
                indices: IndexSlice::List(_),
            } if column.row_bytes() > 0 => {
                (GATHER_BLOCK / column.row_bytes()).max(1) * column.row_bytes()
            }
            _ => 0,
        })
        .max()
        .unwrap_or(0);
    Report {
        strategy: Strategy::Preallocated,
        backend: Backend::Cpu,
        rows,
        bytes: arrays.iter().map(|a| a.len as u64).sum(),
        elapsed: started.elapsed(),
        peak_alloc_bytes: buffer as u64,
        peak_device_bytes: None,
        pin_seconds: None,
    }
}

/// Packs `.npy` files into a `.npz` archive, member `NAME.npy` for each `(NAME, file)`, streaming
/// each file from a read-only map and dropping the pages already written, so packing files
/// larger than RAM stays small. The files are not checked beyond being readable.
pub(crate) fn pack_npz(
    path: &Path,
    files: &[(String, PathBuf)],
    options: &WriteOptions,
) -> Result<()> {
    let maps = files
        .iter()
        .map(|(_, f)| ReadMap::open(f))
        .collect::<Result<Vec<_>>>()?;
    let arrays: Vec<Array<'_>> = files
        .iter()
        .zip(&maps)
        .map(|((name, _), map)| {
            map.advise_sequential();
            Array {
                name: name.clone(),
                header: Vec::new(),
                source: Source::Map(map),
                len: map.bytes().len(),
            }
        })
        .collect();
    write_archive(path, &arrays, options)
}

fn write_archive(path: &Path, arrays: &[Array<'_>], options: &WriteOptions) -> Result<()> {
    let (mut temp, file) = TempFile::create(path)?;
    let io_err = |e| Error::io(path, e);
    let zip_err = |e: zip::result::ZipError| match e {
        zip::result::ZipError::Io(e) => Error::io(path, e),
        other => Error::io(path, io::Error::other(other)),
    };
    let mut zip = zip::ZipWriter::new(BufWriter::with_capacity(1 << 20, file));
    let mut w = DataWriter::new(options);
    for a in arrays {
        let member_len = (a.header.len() + a.len) as u64;
        let base =
            zip::write::SimpleFileOptions::default().large_file(member_len >= u32::MAX as u64);
        let opts = if options.compress {
            base.compression_method(zip::CompressionMethod::Deflated)
        } else {
            base.compression_method(zip::CompressionMethod::Stored)
                .with_alignment(HEADER_ALIGN as u16)
        };
        zip.start_file(format!("{}.npy", a.name), opts)
            .map_err(zip_err)?;
        zip.write_all(&a.header).map_err(io_err)?;
        w.write(path, &mut zip, &a.source)?;
    }
    let mut inner = zip.finish().map_err(zip_err)?;
    inner.flush().map_err(io_err)?;
    drop(inner);
    temp.commit()
}

// ---- memory-mapped output -----------------------------------------------------------------------

/// An output column that is a `.npy` file mapped into memory: created at its final size with its
/// header written, the data region mapped writable, so a drain writes rows straight into the
/// file and no second copy is made. Outputs larger than RAM work: each finished region is
/// written back and dropped from the process ([`Storage::region_done`]), so only the region
/// being filled is ever resident.
///
/// The file is written under a temporary name beside `path` and renamed into place by
/// [`Storage::finish`] after a full write-back; dropped unfinished (a failed drain), it is
/// removed, so a failed run leaves no output file.
///
/// ```
/// # let dir = std::env::temp_dir().join(format!("arraydrain-doc-mapped-{}", std::process::id()));
/// use arraydrain::{npy, Loader, Table};
/// use ndarray::Array2;
///
/// let x = Array2::from_shape_fn((100, 4), |(i, j)| (i * 4 + j) as f32);
/// let table = Table::builder().view("x", x.view()).build()?;
/// let loader = Loader::new(&table).batch_size(16).shuffle(3);
///
/// let mut out = npy::mapped_output(&dir, &loader.output_specs()?)?;
/// loader.materialize_into(&mut out)?;
/// assert_eq!(out.column("x")?.storage_kind(), arraydrain::StorageKind::Mapped);
/// assert_eq!(npy::read_npy(dir.join("x.npy"))?.bytes(), out.column("x")?.as_bytes());
/// # std::fs::remove_dir_all(&dir)?;
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub struct MappedNpy {
    map: Option<WriteMap>,
    temp: TempFile,
    finished: bool,
    released: u64,
}

impl MappedNpy {
    /// Creates `path` (under a temporary name until finished) for an array of `dtype` and
    /// `shape`, at its final size, and maps its data region.
    ///
    /// # Errors
    /// [`Error::UnsupportedDType`] for `bf16`; [`Error::HostAllocation`] when the size
    /// overflows; [`Error::Io`] naming the file when it cannot be created, sized or mapped.
    pub fn create(path: impl AsRef<Path>, dtype: DType, shape: &[usize]) -> Result<MappedNpy> {
        let path = path.as_ref();
        let header = NpyHeader::encode(dtype, shape)?;
        let mut parts = shape.to_vec();
        parts.push(dtype.size());
        let data_len = checked_bytes(&parts, &path.display().to_string())?;
        let (temp, mut file) = TempFile::create(path)?;
        let io_err = |e| Error::io(path, e);
        file.write_all(&header).map_err(io_err)?;
        file.set_len((header.len() + data_len) as u64)
            .map_err(io_err)?;
        let map = if data_len == 0 {
            None
        } else {
            Some(WriteMap::new(&file, path, header.len() as u64, data_len)?)
        };
        Ok(MappedNpy {
            map,
            temp,
            finished: false,
            released: 0,
        })
    }

    /// Where the file will be (or is, once finished).
    pub fn path(&self) -> &Path {
        &self.temp.path
    }

    /// Bytes written back and dropped from memory so far by [`Storage::region_done`].
    pub fn released_bytes(&self) -> u64 {
        self.released
    }
}

impl fmt::Debug for MappedNpy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MappedNpy")
            .field("path", &self.temp.path)
            .field("len", &self.as_bytes().len())
            .field("finished", &self.finished)
            .finish()
    }
}

impl Storage for MappedNpy {
    fn kind(&self) -> StorageKind {
        StorageKind::Mapped
    }

    fn as_bytes(&self) -> &[u8] {
        self.map.as_ref().map_or(&[], |m| m.bytes())
    }

    fn as_bytes_mut(&mut self) -> &mut [u8] {
        self.map.as_mut().map_or(&mut [], |m| m.bytes_mut())
    }

    /// Starts writing `range` back and drops its pages from the process.
    fn region_done(&mut self, range: Range<usize>) -> Result<()> {
        if let Some(m) = &mut self.map {
            m.release(range.clone())?;
            self.released += range.len() as u64;
        }
        Ok(())
    }

    /// Writes everything back, waits for it, and renames the file into place.
    fn finish(&mut self) -> Result<()> {
        if self.finished {
            return Ok(());
        }
        if let Some(m) = &self.map {
            m.flush()?;
        }
        self.temp.commit()?;
        self.finished = true;
        Ok(())
    }

    fn into_any(self: Box<Self>) -> Box<dyn std::any::Any> {
        self
    }
}

/// An output of one [`MappedNpy`] per spec, `DIR/NAME.npy` (the folder is created if needed), for
/// [`Loader::materialize_into`](crate::Loader::materialize_into). The files appear under their
/// names when the drain finishes; if it fails, they are removed when the output is dropped.
///
/// # Errors
/// As [`MappedNpy::create`]; [`Error::Io`] when the folder cannot be created.
pub fn mapped_output(dir: impl AsRef<Path>, specs: &[OutputSpec]) -> Result<Materialized> {
    let dir = dir.as_ref();
    std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
    let columns = specs
        .iter()
        .map(|s| {
            let mut shape = vec![s.rows];
            shape.extend_from_slice(&s.row_shape);
            let storage = MappedNpy::create(dir.join(format!("{}.npy", s.name)), s.dtype, &shape)?;
            ColumnArray::new(&s.name, s.dtype, &s.row_shape, s.rows, Box::new(storage))
        })
        .collect::<Result<Vec<_>>>()?;
    Ok(Materialized::from_columns(columns))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn headers_round_trip_for_every_numpy_dtype() {
        for d in DType::ALL {
            for shape in [vec![0], vec![5], vec![3, 4], vec![2, 0, 7]] {
                match NpyHeader::encode(d, &shape) {
                    Ok(h) => {
                        assert_eq!(h.len() % 64, 0);
                        assert_eq!(h.last(), Some(&b'\n'));
                        let p = NpyHeader::parse(&h).unwrap();
                        assert_eq!(
                            (p.dtype, &p.shape[..], p.data_offset),
                            (d, &shape[..], h.len())
                        );
                        assert!(!p.fortran_order);
                    }
                    Err(e) => {
                        assert_eq!(d, DType::BF16);
                        assert!(matches!(e, Error::UnsupportedDType { .. }));
                    }
                }
            }
        }
    }

    #[test]
    fn numpy_written_headers_parse() {
        type Want = std::result::Result<(DType, Vec<usize>, bool), &'static str>;
        let cases: [(&str, Want); 10] = [
            (
                "{'descr': '<f4', 'fortran_order': False, 'shape': (3, 4), }",
                Ok((DType::F32, vec![3, 4], false)),
            ),
            (
                "{'descr': '|b1', 'fortran_order': True, 'shape': (7,), }",
                Ok((DType::Bool, vec![7], true)),
            ),
            (
                "{\"shape\": (2L, 3L), \"fortran_order\": False, \"descr\": \">i8\"}",
                Ok((DType::I64, vec![2, 3], false)),
            ),
            (
                "{'descr': '<f4', 'fortran_order': False, 'shape': (), }",
                Ok((DType::F32, vec![], false)),
            ),
            (
                "{'descr': '|O', 'fortran_order': False, 'shape': (3,), }",
                Err("object"),
            ),
            (
                "{'descr': [('a', '<f4')], 'fortran_order': False, 'shape': (3,), }",
                Err("structured"),
            ),
            (
                "{'descr': '<c8', 'fortran_order': False, 'shape': (3,), }",
                Err("unsupported dtype"),
            ),
            (
                "{'descr': '<f4', 'fortran_order': False, 'shape': (-3,), }",
                Err("non-negative"),
            ),
            (
                "{'descr': '<f4', 'fortran_order': False, }",
                Err("no 'shape'"),
            ),
            (
                "{'descr': '<f4', 'fortran_order': 0, 'shape': (3,)",
                Err("fortran_order"),
            ),
        ];
        for (text, want) in cases {
            let mut bytes = MAGIC.to_vec();
            bytes.extend_from_slice(&[1, 0]);
            bytes.extend_from_slice(&(text.len() as u16).to_le_bytes());
            bytes.extend_from_slice(text.as_bytes());
            match (NpyHeader::parse(&bytes), want) {
                (Ok(h), Ok((d, s, f))) => {
                    assert_eq!((h.dtype, h.shape, h.fortran_order), (d, s, f))
                }
                (Err(e), Err(w)) => assert!(e.contains(w), "{text}: {e}"),
                (got, want) => panic!("{text}: got {got:?}, want {want:?}"),
            }
        }
        assert!(NpyHeader::parse(b"\x93NUMPZ\x01\x00")
            .unwrap_err()
            .contains("magic"));
        assert!(NpyHeader::parse(b"\x93NUMPY\x01\x00\xff")
            .unwrap_err()
            .contains("truncated"));
        assert!(NpyHeader::parse(b"\x93NUMPY\x01\x00\xff\x00{")
            .unwrap_err()
            .contains("truncated"));
        assert!(NpyHeader::parse(b"\x93NUMPY\x09\x00\x00\x00")
            .unwrap_err()
            .contains("version"));
    }

    #[test]
    fn fortran_order_is_transposed() {
        // A 2x3 array [[0,1,2],[3,4,5]] in Fortran order is stored 0,3,1,4,2,5.
        let src: Vec<u8> = [0u16, 3, 1, 4, 2, 5]
            .iter()
            .flat_map(|v| v.to_le_bytes())
            .collect();
        let mut dst = vec![0u8; src.len()];
        fortran_to_c(&src, 2, &[2, 3], &mut dst).unwrap();
        let vals: Vec<u16> = dst
            .chunks(2)
            .map(|c| u16::from_le_bytes([c[0], c[1]]))
            .collect();
        assert_eq!(vals, [0, 1, 2, 3, 4, 5]);
    }
}
