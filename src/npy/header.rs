//! The `.npy` header: parsing and checking a header exactly as strictly as `numpy.load`, and
//! encoding the one NumPy would write. Descriptors are sized in `descr.rs`, the Python literal
//! the header is written in is parsed in `literal.rs`.

use std::borrow::Cow;

use crate::dtype::{DType, Opaque, SyntaxError};
use crate::error::{Error, Result};

use super::MAGIC;
use crate::dtype::descr::{self, element};
use crate::dtype::literal::{self, clip, Node, Value};

/// Headers longer than this are refused. NumPy's reader refuses more than 10 000 characters
/// unless told otherwise (`max_header_size`), a guard against slow parsing rather than a format
/// rule: its own writer makes longer headers for wide structured dtypes. This parser is linear
/// in the header's length, so it reads headers up to this larger bound.
const MAX_HEADER_LEN: usize = 1 << 20;

/// Headers are padded so the data starts at a multiple of this (as NumPy does).
pub(super) const HEADER_ALIGN: usize = 64;

/// Quoted header text in messages is cut to this many characters.
const QUOTE: usize = 80;

// ---- dtypes -------------------------------------------------------------------------------------

/// The NumPy `descr` of a dtype as the Python literal a header holds (`'<f4'` with its quotes;
/// an opaque dtype's descriptor verbatim). NumPy has no bfloat16: `bf16` is `'<V2'`, what
/// `numpy.save` writes for an `ml_dtypes.bfloat16` array (read back as 2-byte voids, restored by
/// `.view(ml_dtypes.bfloat16)`).
pub fn descr(dtype: &DType) -> Cow<'_, str> {
    Cow::Borrowed(match dtype {
        DType::F32 => "'<f4'",
        DType::F64 => "'<f8'",
        DType::F16 => "'<f2'",
        DType::BF16 => "'<V2'",
        DType::I8 => "'|i1'",
        DType::I16 => "'<i2'",
        DType::I32 => "'<i4'",
        DType::I64 => "'<i8'",
        DType::U8 => "'|u1'",
        DType::U16 => "'<u2'",
        DType::U32 => "'<u4'",
        DType::U64 => "'<u8'",
        DType::Bool => "'|b1'",
        DType::Opaque(o) => o.descr(),
    })
}

/// For an opaque dtype that is a numeric dtype in the other byte order (`'>f8'` on this
/// little-endian machine), that numeric dtype; `None` for any other dtype.
pub fn byte_swapped(dtype: &DType) -> Option<DType> {
    let DType::Opaque(o) = dtype else {
        return None;
    };
    descr::byte_swapped_numeric(&literal::parse(o.descr(), false).ok()?)
}

// ---- headers ------------------------------------------------------------------------------------

/// What a `.npy` header declares, checked as NumPy checks it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NpyHeader {
    /// Format version `(major, minor)`: (1, 0), (2, 0) or (3, 0).
    pub version: (u8, u8),
    /// Element type: a numeric dtype when the descriptor is one (in this machine's byte
    /// order), else [`DType::Opaque`] with the descriptor's text verbatim.
    pub dtype: DType,
    /// Whether the data is in Fortran (column-major) order.
    pub fortran_order: bool,
    /// The array's shape (the first axis is rows).
    pub shape: Vec<usize>,
    /// Offset of the data from the start of the file (the header's full length).
    pub data_offset: usize,
    /// Bytes of data the shape and dtype imply (any bytes after them are ignored, as NumPy
    /// ignores them).
    pub data_len: usize,
}
/// The framing of a `.npy` header: magic, version, length field, and the header's text.
struct Frame<'a> {
    version: (u8, u8),
    /// Where the array data starts (after the header).
    data_offset: usize,
    /// The header dictionary's text (latin-1 for versions 1.0 and 2.0, UTF-8 for 3.0).
    text: Cow<'a, str>,
}

impl<'a> Frame<'a> {
    fn read(bytes: &'a [u8]) -> std::result::Result<Frame<'a>, SyntaxError> {
        if bytes.len() < MAGIC.len() || &bytes[..MAGIC.len()] != MAGIC {
            return Err(SyntaxError::from(
                "not a .npy file (wrong magic; expected \\x93NUMPY)",
            ));
        }
        let (major, minor) = match bytes.get(6..8) {
            Some(&[a, b]) => (a, b),
            _ => {
                return Err(SyntaxError::from(
                    "truncated: the file ends inside the header",
                ))
            }
        };
        let (len_bytes, utf8) = match (major, minor) {
            (1, 0) => (2, false),
            (2, 0) => (4, false),
            (3, 0) => (4, true),
            _ => {
                return Err(SyntaxError::from(format!(
                    "unsupported .npy format version {major}.{minor} (NumPy reads 1.0, 2.0 and 3.0)"
                )))
            }
        };
        let Some(len_field) = bytes.get(8..8 + len_bytes) else {
            return Err(SyntaxError::from(
                "truncated: the file ends inside the header",
            ));
        };
        let header_len = len_field
            .iter()
            .rev()
            .fold(0usize, |acc, &b| (acc << 8) | b as usize);
        if header_len > MAX_HEADER_LEN {
            return Err(SyntaxError::from(format!(
                "header of {header_len} bytes is longer than the {MAX_HEADER_LEN} allowed"
            )));
        }
        let start = 8 + len_bytes;
        let Some(raw) = bytes.get(start..start + header_len) else {
            return Err(SyntaxError::from(format!(
                "truncated: the header declares {header_len} bytes, the file has {}",
                bytes.len().saturating_sub(start)
            )));
        };
        let text: Cow<'_, str> = if utf8 {
            Cow::Borrowed(
                std::str::from_utf8(raw)
                    .map_err(|e| format!("header of a version 3.0 file is not UTF-8: {e}"))?,
            )
        } else {
            // Versions 1.0 and 2.0 are latin-1: each byte is the code point of its value.
            match std::str::from_utf8(raw) {
                Ok(s) if s.is_ascii() => Cow::Borrowed(s),
                _ => Cow::Owned(raw.iter().map(|&b| char::from(b)).collect()),
            }
        };
        Ok(Frame {
            version: (major, minor),
            data_offset: start + header_len,
            text,
        })
    }
}

/// The values of `descr`, `fortran_order` and `shape` in a header dictionary, which must hold
/// exactly these keys (Python keeps the last value of a repeated key).
fn header_values<'n>(
    pairs: &'n [(Node, Node)],
    text: &str,
) -> std::result::Result<[&'n Node; 3], SyntaxError> {
    fn key(k: &Node) -> Option<&str> {
        match &k.value {
            Value::Str(s) => Some(s.as_str()),
            _ => None,
        }
    }
    let get = |name: &str| {
        pairs
            .iter()
            .rev()
            .find(|(k, _)| key(k) == Some(name))
            .map(|(_, v)| v)
    };
    let mut keys: Vec<&str> = Vec::new();
    for (k, _) in pairs {
        let k = &text[k.span.clone()];
        if !keys.contains(&k) {
            keys.push(k);
        }
    }
    let expected = ["descr", "fortran_order", "shape"];
    let exact = keys.len() == expected.len()
        && pairs
            .iter()
            .all(|(k, _)| key(k).is_some_and(|k| expected.contains(&k)));
    if !exact {
        keys.sort_unstable();
        return Err(SyntaxError::from(format!(
            "header does not contain exactly the keys 'descr', 'fortran_order' and 'shape': \
             it has {}",
            clip(&keys.join(", "), QUOTE)
        )));
    }
    match (get("descr"), get("fortran_order"), get("shape")) {
        (Some(descr), Some(fortran), Some(shape)) => Ok([descr, fortran, shape]),
        _ => Err(SyntaxError::from(
            "header lacks 'descr', 'fortran_order' or 'shape'",
        )),
    }
}

/// The dimensions of a header's `shape`: a tuple of non-negative ints (bools count as 1 and
/// 0, as in NumPy) that fit this machine.
fn shape_dims(
    shape: &Node,
    quoted: &dyn Fn(&Node) -> String,
) -> std::result::Result<Vec<usize>, SyntaxError> {
    let Value::Tuple(dims) = &shape.value else {
        return Err(SyntaxError::from(format!(
            "shape is not a tuple of ints: {}",
            quoted(shape)
        )));
    };
    let mut dims_out = Vec::with_capacity(dims.len());
    for d in dims {
        let n = match d.value {
            Value::Int(Some(n)) => n,
            // `isinstance(True, int)` holds in Python, so NumPy takes bools as 1 and 0.
            Value::Bool(b) => i128::from(b),
            Value::Int(None) => {
                return Err(SyntaxError::from(format!(
                    "shape {} is too large for this machine",
                    quoted(shape)
                )))
            }
            _ => {
                return Err(SyntaxError::from(format!(
                    "shape is not a tuple of ints: {}",
                    quoted(shape)
                )))
            }
        };
        if n < 0 {
            return Err(SyntaxError::from(format!(
                "shape {} has a negative dimension (non-negative integers only)",
                quoted(shape)
            )));
        }
        dims_out.push(
            usize::try_from(n)
                .map_err(|_| format!("shape {} is too large for this machine", quoted(shape)))?,
        );
    }
    Ok(dims_out)
}

/// The data bytes of an array of `dims` and `item`-byte elements, when NumPy can make it: as
/// NumPy checks, the product of the non-zero dimensions, and that times the element size, must
/// fit in a signed pointer-sized integer, even when a zero dimension makes the array empty, so
/// `(2**64 - 1, 0)` is refused as NumPy refuses it.
fn loadable_len(dims: &[usize], item: usize) -> Option<usize> {
    let max = isize::MAX as usize;
    let count = dims
        .iter()
        .filter(|&&d| d != 0)
        .try_fold(1usize, |a, &d| a.checked_mul(d).filter(|&n| n <= max))?;
    let bytes = count.checked_mul(item).filter(|&n| n <= max)?;
    Some(if dims.contains(&0) { 0 } else { bytes })
}

impl NpyHeader {
    /// Parses and checks the header at the start of `bytes` (a whole file, or at least its
    /// header), refusing exactly what `numpy.load` refuses: another magic, versions other than
    /// 1.0, 2.0 and 3.0, a header that is not a Python dict literal with exactly the keys
    /// `descr`, `fortran_order` (a bool) and `shape` (a tuple of ints), a descriptor NumPy
    /// would not read. Beyond that, arraydrain refuses object dtypes, negative dimensions
    /// (which NumPy refuses when it makes the array) and the descriptor spellings listed in
    /// [`crate::npy`]. The data itself is not looked at.
    ///
    /// # Errors
    /// A message saying what is wrong; quoted header text in it is cut to a readable length.
    pub fn parse(bytes: &[u8]) -> std::result::Result<NpyHeader, SyntaxError> {
        let frame = Frame::read(bytes)?;
        let text = &frame.text;
        let bad = |e: SyntaxError| format!("bad header {}: {e}", clip(text, QUOTE));
        let root = literal::parse(text, frame.version.0 <= 2).map_err(bad)?;
        let Value::Dict(pairs) = &root.value else {
            return Err(SyntaxError::from(format!(
                "header is not a dictionary but a {}: {}",
                root.value.type_name(),
                clip(text, QUOTE)
            )));
        };
        let [descr, fortran, shape] = header_values(pairs, text)?;
        let quoted = |n: &Node| clip(&text[n.span.clone()], QUOTE);
        let dims = shape_dims(shape, &quoted)?;
        let Value::Bool(fortran_order) = fortran.value else {
            return Err(SyntaxError::from(format!(
                "fortran_order is not a valid bool (True or False): {}",
                quoted(fortran)
            )));
        };
        let element = element(descr).map_err(|e| format!("descr {}: {e}", quoted(descr)))?;
        let dtype = match element.numeric {
            Some(d) => d,
            None => DType::Opaque(Opaque::from_parts(&text[descr.span.clone()], element.size)),
        };
        let data_len = loadable_len(&dims, element.size)
            .ok_or_else(|| format!("shape {} is too large for this machine", quoted(shape)))?;
        Ok(NpyHeader {
            version: frame.version,
            dtype,
            fortran_order,
            shape: dims,
            data_offset: frame.data_offset,
            data_len,
        })
    }

    /// The header bytes NumPy would write for a C-order array of `dtype` and `shape`:
    /// version 1.0 when the header is latin-1 text that fits in 64 KiB, else 2.0, else 3.0
    /// (UTF-8, for descriptors with other characters), padded with spaces and a newline so the
    /// data starts at a multiple of 64 bytes.
    ///
    /// # Errors
    /// [`Error::UnsupportedDType`] for a descriptor too long for any header;
    /// [`Error::SizeOverflow`] for a shape NumPy could not load (see [`NpyHeader::parse`]).
    pub fn encode(dtype: &DType, shape: &[usize]) -> Result<Vec<u8>> {
        let descr = descr(dtype);
        if loadable_len(shape, dtype.size()).is_none() {
            return Err(Error::SizeOverflow {
                what: format!(
                    "an array of shape {shape:?} and {}-byte elements",
                    dtype.size()
                ),
            });
        }
        let dims: Vec<String> = shape.iter().map(|d| d.to_string()).collect();
        let shape_text = match dims.len() {
            1 => format!("({},)", dims[0]),
            _ => format!("({})", dims.join(", ")),
        };
        let dict = format!("{{'descr': {descr}, 'fortran_order': False, 'shape': {shape_text}, }}");
        let latin1: Option<Vec<u8>> = dict.chars().map(|c| u8::try_from(c).ok()).collect();
        let candidates: Vec<(u8, usize, Vec<u8>)> = match latin1 {
            Some(bytes) => vec![(1, 2, bytes.clone()), (2, 4, bytes)],
            None => vec![(3, 4, dict.into_bytes())],
        };
        for (version, len_bytes, text) in candidates {
            let unpadded = MAGIC.len() + 2 + len_bytes + text.len() + 1;
            let total = unpadded.div_ceil(HEADER_ALIGN) * HEADER_ALIGN;
            let header_len = total - MAGIC.len() - 2 - len_bytes;
            if len_bytes == 2 && header_len > u16::MAX as usize {
                continue;
            }
            if header_len > u32::MAX as usize {
                break;
            }
            let mut out = Vec::with_capacity(total);
            out.extend_from_slice(MAGIC);
            out.extend_from_slice(&[version, 0]);
            out.extend_from_slice(&(header_len as u64).to_le_bytes()[..len_bytes]);
            out.extend_from_slice(&text);
            out.resize(total - 1, b' ');
            out.push(b'\n');
            return Ok(out);
        }
        Err(Error::UnsupportedDType {
            descr: format!(
                "{} (the descriptor is too long for a .npy header)",
                clip(&descr, QUOTE)
            ),
        })
    }

    /// Rows (the first axis).
    pub fn rows(&self) -> usize {
        self.shape.first().copied().unwrap_or(0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn header(version: (u8, u8), text: &str) -> Vec<u8> {
        let mut bytes = MAGIC.to_vec();
        bytes.extend_from_slice(&[version.0, version.1]);
        if version.0 == 1 {
            bytes.extend_from_slice(&(text.len() as u16).to_le_bytes());
        } else {
            bytes.extend_from_slice(&(text.len() as u32).to_le_bytes());
        }
        bytes.extend_from_slice(text.as_bytes());
        bytes
    }

    #[test]
    fn headers_round_trip_for_every_numpy_dtype() {
        let opaque = DType::Opaque(Opaque::from_parts("[('a', '<c8'), ('é', '|S3')]", 11));
        for d in DType::ALL.into_iter().chain([opaque]) {
            for shape in [vec![0], vec![5], vec![3, 4], vec![2, 0, 7]] {
                match NpyHeader::encode(&d, &shape) {
                    Ok(h) => {
                        assert_eq!(h.len() % 64, 0);
                        assert_eq!(h.last(), Some(&b'\n'));
                        let p = NpyHeader::parse(&h).unwrap();
                        // bf16 is written as NumPy + ml_dtypes write it, and read back as what
                        // NumPy reads: 2-byte voids.
                        let read_as = match d {
                            DType::BF16 => DType::Opaque(Opaque::new("'<V2'").unwrap()),
                            ref d => d.clone(),
                        };
                        assert_eq!(
                            (&p.dtype, &p.shape[..], p.data_offset),
                            (&read_as, &shape[..], h.len())
                        );
                        assert_eq!(p.version, (1, 0));
                        assert!(!p.fortran_order);
                    }
                    Err(e) => panic!("{d}: {e}"),
                }
            }
        }
        // Text outside latin-1 needs version 3.0 (UTF-8); long headers need 2.0.
        let cjk = DType::Opaque(Opaque::from_parts("[('名', '<f4')]", 4));
        let h = NpyHeader::encode(&cjk, &[2]).unwrap();
        assert_eq!(&h[6..8], &[3, 0]);
        assert_eq!(NpyHeader::parse(&h).unwrap().dtype, cjk);
        let fields: Vec<String> = (0..5000).map(|i| format!("('f{i}', '<f4')")).collect();
        let wide = format!("[{}]", fields.join(", "));
        let wide = DType::Opaque(Opaque::from_parts(&wide, 20000));
        let h = NpyHeader::encode(&wide, &[2]).unwrap();
        assert_eq!(&h[6..8], &[2, 0]);
        assert_eq!(NpyHeader::parse(&h).unwrap().dtype, wide);
    }

    #[test]
    fn numpy_written_headers_parse() {
        type Want = std::result::Result<(DType, Vec<usize>, bool), &'static str>;
        let c8 = || DType::Opaque(Opaque::from_parts("'<c8'", 8));
        let cases: Vec<(&str, Want)> = vec![
            (
                "{'descr': '<f4', 'fortran_order': False, 'shape': (3, 4), }",
                Ok((DType::F32, vec![3, 4], false)),
            ),
            (
                "{'descr': '|b1', 'fortran_order': True, 'shape': (7,), }",
                Ok((DType::Bool, vec![7], true)),
            ),
            (
                "{\"shape\": (2L, 3L), \"fortran_order\": False, \"descr\": \"<i8\"}",
                Ok((DType::I64, vec![2, 3], false)),
            ),
            (
                "{'descr': '<f4', 'fortran_order': False, 'shape': (), }",
                Ok((DType::F32, vec![], false)),
            ),
            (
                "{'descr': '<d', 'fortran_order': False, 'shape': (2,)}",
                Ok((DType::F64, vec![2], false)),
            ),
            (
                "{'descr': '?', 'fortran_order': False, 'shape': (2,)}",
                Ok((DType::Bool, vec![2], false)),
            ),
            (
                "{'descr': '<c8', 'fortran_order': False, 'shape': (True, 3)}",
                Ok((c8(), vec![1, 3], false)),
            ),
            (
                "{'descr': 'x', 'descr': '<c8', 'fortran_order': False, 'shape': (3,)}",
                Ok((c8(), vec![3], false)),
            ),
            (
                "{'descr': '|O', 'fortran_order': False, 'shape': (3,), }",
                Err("object"),
            ),
            (
                "{'descr': [('a', 'O')], 'fortran_order': False, 'shape': (3,), }",
                Err("object"),
            ),
            (
                "{'descr': '<f4', 'fortran_order': False, 'shape': (-3,), }",
                Err("negative"),
            ),
            (
                "{'descr': '<f4', 'fortran_order': False, 'shape': (4), }",
                Err("not a tuple"),
            ),
            (
                "{'descr': '<f4', 'fortran_order': False, 'shape': [4], }",
                Err("not a tuple"),
            ),
            (
                "{'descr': '<f4', 'fortran_order': False, 'shape': (4.0,), }",
                Err("not a tuple"),
            ),
            (
                "{'descr': '<f4', 'fortran_order': False, }",
                Err("exactly the keys"),
            ),
            (
                "{'descr': '<f4', 'fortran_order': False, 'shape': (3,), 'x': 1}",
                Err("exactly the keys"),
            ),
            (
                "{'descr': '<f4', 'fortran_order': 'False', 'shape': (3,)}",
                Err("valid bool (True or False): \"'False'\""),
            ),
            (
                "{'descr': '<f4', 'fortran_order': 0, 'shape': (3,)}",
                Err("valid bool"),
            ),
            (
                "{'descr': '<f4', 'fortran_order': 0, 'shape': (3,)",
                Err("bad header"),
            ),
            ("['descr', '<f4']", Err("not a dictionary")),
            (
                "{'descr': 'f4,i4', 'fortran_order': False, 'shape': (3,)}",
                Err("not understood"),
            ),
        ];
        for (text, want) in cases {
            match (NpyHeader::parse(&header((1, 0), text)), want) {
                (Ok(h), Ok((d, s, f))) => {
                    assert_eq!((h.dtype, h.shape, h.fortran_order), (d, s, f), "{text}")
                }
                (Err(e), Err(w)) => assert!(e.contains(w), "{text}: {e}"),
                (got, want) => panic!("{text}: got {got:?}, want {want:?}"),
            }
        }
        // Python 2 longs only in versions 1.0 and 2.0.
        let py2 = "{'descr': '<f4', 'fortran_order': False, 'shape': (3L,)}";
        assert!(NpyHeader::parse(&header((2, 0), py2)).is_ok());
        assert!(NpyHeader::parse(&header((3, 0), py2)).is_err());
        let good = "{'descr': '<f4', 'fortran_order': False, 'shape': (3,)}";
        for v in [(1, 1), (1, 255), (2, 1), (3, 1), (4, 0), (0, 0)] {
            let e = NpyHeader::parse(&header(v, good)).unwrap_err();
            assert!(e.contains(&format!("version {}.{}", v.0, v.1)), "{e}");
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
    }

    #[test]
    fn shapes_numpy_cannot_make_are_refused_even_when_empty() {
        for shape in [
            "(18446744073709551615, 0)",
            "(0, 9223372036854775808)",
            "(4611686018427387904, 4, 0)",
        ] {
            let text = format!("{{'descr': '<f4', 'fortran_order': False, 'shape': {shape}, }}");
            let e = NpyHeader::parse(&header((1, 0), &text)).unwrap_err();
            assert!(e.contains("too large"), "{shape}: {e}");
        }
        // Empty arrays NumPy makes are read: a zero dimension with the rest in range.
        let text = "{'descr': '<f4', 'fortran_order': False, 'shape': (0, 1000000), }";
        assert_eq!(NpyHeader::parse(&header((1, 0), text)).unwrap().data_len, 0);
        // ...and never written.
        assert!(matches!(
            NpyHeader::encode(&DType::F32, &[usize::MAX, 0]),
            Err(Error::SizeOverflow { .. })
        ));
        assert!(NpyHeader::encode(&DType::F32, &[0, 5]).is_ok());
    }

    #[test]
    fn refusals_quote_at_most_a_readable_length() {
        let fields: Vec<String> = (0..10_001).map(|i| format!("('f{i}', 'O')")).collect();
        let text = format!(
            "{{'descr': [{}], 'fortran_order': False, 'shape': (3,)}}",
            fields.join(", ")
        );
        let e = NpyHeader::parse(&header((2, 0), &text)).unwrap_err();
        assert!(
            e.contains("object") && e.len() < 400,
            "{} bytes: {e}",
            e.len()
        );
        let text = format!(
            "{{'descr': '<f4', 'fortran_order': False, 'shape': (3,), 'x': '{}'}}",
            "y".repeat(100_000)
        );
        let e = NpyHeader::parse(&header((2, 0), &text)).unwrap_err();
        assert!(e.len() < 400, "{} bytes: {e}", e.len());
        let text = format!(
            "{{'descr': '<f4', 'fortran_order': False, 'shape': (3,) {}",
            "z".repeat(100_000)
        );
        let e = NpyHeader::parse(&header((2, 0), &text)).unwrap_err();
        assert!(e.len() < 400, "{} bytes: {e}", e.len());
    }
}
