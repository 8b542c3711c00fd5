//! The `.npy` header: the dtype `descr` strings we read and write, parsing and checking a
//! header, and encoding the one NumPy would write.

use crate::dtype::DType;
use crate::error::{Error, Result};

use super::MAGIC;

/// Headers longer than this are refused (NumPy itself refuses more than 10 000 bytes by
/// default; structured dtypes, which we do not read, are the only reason for long ones).
const MAX_HEADER_LEN: usize = 1 << 20;

/// Headers are padded so the data starts at a multiple of this (as NumPy does).
pub(super) const HEADER_ALIGN: usize = 64;

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
}
