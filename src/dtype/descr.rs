//! NumPy dtype descriptors (`descr`): what element a header's descriptor stands for, computed
//! the way `numpy.lib.format.descr_to_dtype` builds the dtype.
//!
//! Only two facts are needed to carry any fixed-size dtype through the engine: the element
//! size in bytes, and whether it is one of the numeric dtypes Rust can view ([`DType`]'s plain
//! variants, little-endian or byte-order-free). Everything else becomes [`DType::Opaque`] with
//! the descriptor's text kept verbatim, so the output file declares exactly the input's dtype.
//!
//! Sizes follow NumPy's rules:
//! - a type string (`'<f8'`, `'|S8'`, `'<U3'` = 12 bytes, `'<M8[ns]'`, `'|V8'`, `'<f16'`, `'d'`,
//!   `'?'`, `'float64'` …) has the size of its kind and digits;
//! - `(base, shape)` is a subarray: the base's size times the shape's product;
//! - a list of fields `(name, descr)` / `(name, descr, shape)` (names may be `(title, name)`)
//!   is *packed*: each field starts where the previous one ends and the element size is the sum
//!   of the field sizes, padding fields (`('', '|V4')`) included. This is NumPy's list form,
//!   which is how it writes every structured dtype, aligned (`align=True`) or with explicit
//!   offsets alike: those gaps are written as padding fields.
//!
//! The sizes cannot be taken from the file length instead: NumPy ignores bytes after the data,
//! and an array with no elements has no data to measure.
//!
//! Refused: object dtypes (`'O'`, or any field holding one) hold Python objects, not data;
//! type strings in spellings NumPy reads but never writes (comma-separated field lists such as
//! `'f4,i4'`, a leading shape such as `'(2,)i4'`, byte-order prefixes on names such as
//! `'<float64'`, datetime units with a divisor such as `'M8[us/2]'`); a `(base, new)` dtype
//! pair. Each refusal says why.

use crate::dtype::{DType, SyntaxError};

use super::literal::{self, clip, Node, Value};

/// What a descriptor describes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Element {
    /// Bytes per element.
    pub size: usize,
    /// The numeric dtype with this exact meaning, when there is one.
    pub numeric: Option<DType>,
}

/// Elements larger than this are refused (NumPy's itemsize is a C `int`).
const MAX_ITEMSIZE: usize = i32::MAX as usize;

/// Computes what a descriptor value describes.
///
/// # Errors
/// A message saying why NumPy would not read it, or why arraydrain does not (see the module
/// docs); a message about objects contains the word "object".
/// What a descriptor (a Python literal) describes: its element size and numeric dtype.
pub(crate) fn element_of_descr(text: &str) -> Result<Element, SyntaxError> {
    element(&literal::parse(text, false)?)
}

pub(crate) fn element(node: &Node) -> Result<Element, SyntaxError> {
    let info = describe(node)?;
    Ok(Element {
        size: info.size,
        numeric: info.numeric,
    })
}

struct Info {
    size: usize,
    /// `dt.type is numpy.void and dt.names is None`: what may serve as padding.
    plain_void: bool,
    numeric: Option<DType>,
}

fn describe(node: &Node) -> Result<Info, SyntaxError> {
    match &node.value {
        Value::Str(s) => {
            let t = typestr(s)?;
            Ok(Info {
                size: t.size,
                plain_void: t.kind == 'V',
                numeric: t.numeric(),
            })
        }
        Value::Tuple(items) => {
            let [base, shape, ..] = &items[..] else {
                return Err(SyntaxError::from(format!(
                    "a subarray descriptor is (base, shape); got a tuple of {} item(s)",
                    items.len()
                )));
            };
            subarray(describe(base)?, shape)
        }
        Value::List(fields) => structured(fields),
        other => Err(SyntaxError::from(format!(
            "descr is not a valid dtype descriptor: a {} ({})",
            other.type_name(),
            clip_node(node)
        ))),
    }
}

fn clip_node(node: &Node) -> String {
    match &node.value {
        Value::Str(s) => clip(s, 40),
        v => v.type_name().to_string(),
    }
}

/// `numpy.dtype((base, shape))`.
fn subarray(base: Info, shape: &Node) -> Result<Info, SyntaxError> {
    let dims: Vec<&Node> = match &shape.value {
        Value::Int(_) => vec![shape],
        Value::Tuple(d) => d.iter().collect(),
        Value::Str(_) | Value::List(_) => {
            return Err(SyntaxError::from(
                "a (base, new) dtype pair is not supported as a descriptor",
            ))
        }
        other => {
            return Err(SyntaxError::from(format!(
                "invalid shape in a subarray descriptor: a {}",
                other.type_name()
            )))
        }
    };
    if dims.is_empty() {
        // `(base, ())` is the base dtype itself.
        return Ok(base);
    }
    let mut size = base.size;
    for d in dims {
        let n = match d.value {
            Value::Int(Some(n)) if n >= 0 => usize::try_from(n).ok(),
            Value::Int(Some(_)) => {
                return Err(SyntaxError::from(
                    "invalid shape in a subarray descriptor: a negative dimension",
                ))
            }
            Value::Int(None) => None,
            _ => {
                return Err(SyntaxError::from(format!(
                    "invalid shape in a subarray descriptor: a {} dimension",
                    d.value.type_name()
                )))
            }
        };
        size = n
            .and_then(|n| size.checked_mul(n))
            .filter(|&s| s <= isize::MAX as usize)
            .ok_or("a subarray descriptor too large for this machine")?;
    }
    Ok(Info {
        size,
        plain_void: true,
        numeric: None,
    })
}

/// A list of fields, packed as `descr_to_dtype` lays them out.
fn structured(fields: &[Node]) -> Result<Info, SyntaxError> {
    let mut size = 0usize;
    let mut taken: Vec<&str> = Vec::new();
    for field in fields {
        let parts = match &field.value {
            Value::Tuple(p) | Value::List(p) => p,
            other => {
                return Err(SyntaxError::from(format!(
                    "a field of a structured descriptor is (name, descr[, shape]), not a {}",
                    other.type_name()
                )))
            }
        };
        let (name, info) = match &parts[..] {
            [name, d] => (name, describe(d)?),
            [name, d, shape] => (name, subarray(describe(d)?, shape)?),
            _ => {
                return Err(SyntaxError::from(format!(
                    "a field of a structured descriptor is (name, descr[, shape]), not {} items",
                    parts.len()
                )))
            }
        };
        let is_pad = matches!(&name.value, Value::Str(s) if s.is_empty()) && info.plain_void;
        if !is_pad {
            let (title, name) = match &name.value {
                Value::Tuple(tn) => match &tn[..] {
                    [t, n] => (Some(t), n),
                    _ => {
                        return Err(SyntaxError::from(
                            "a field's (title, name) pair has another length",
                        ))
                    }
                },
                _ => (None, name),
            };
            let Value::Str(name) = &name.value else {
                return Err(SyntaxError::from("field names must be strings"));
            };
            let title = match title.map(|t| &t.value) {
                Some(Value::Str(t)) => Some(t.as_str()),
                _ => None,
            };
            for key in std::iter::once(name.as_str()).chain(title) {
                if taken.contains(&key) {
                    return Err(SyntaxError::from(format!(
                        "field name or title {} is used twice",
                        clip(key, 40)
                    )));
                }
                taken.push(key);
            }
        }
        size = size
            .checked_add(info.size)
            .filter(|&s| s <= isize::MAX as usize)
            .ok_or("a structured descriptor too large for this machine")?;
    }
    Ok(Info {
        size,
        plain_void: false,
        numeric: None,
    })
}

/// The numeric dtype whose byte-swapped elements a descriptor holds: `Some(F64)` for `'>f8'`
/// (on a little-endian machine), `None` for anything else.
pub(crate) fn byte_swapped_numeric(node: &Node) -> Option<DType> {
    let Value::Str(s) = &node.value else {
        return None;
    };
    let t = typestr(s).ok()?;
    if t.size < 2 || t.big_endian == cfg!(target_endian = "big") {
        return None;
    }
    TypeStr {
        big_endian: cfg!(target_endian = "big"),
        ..t
    }
    .numeric()
}

/// A parsed type string.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct TypeStr {
    kind: char,
    size: usize,
    big_endian: bool,
}

impl TypeStr {
    fn numeric(self) -> Option<DType> {
        if self.big_endian && self.size > 1 {
            return None;
        }
        Some(match (self.kind, self.size) {
            ('b', 1) => DType::Bool,
            ('i', 1) => DType::I8,
            ('i', 2) => DType::I16,
            ('i', 4) => DType::I32,
            ('i', 8) => DType::I64,
            ('u', 1) => DType::U8,
            ('u', 2) => DType::U16,
            ('u', 4) => DType::U32,
            ('u', 8) => DType::U64,
            ('f', 2) => DType::F16,
            ('f', 4) => DType::F32,
            ('f', 8) => DType::F64,
            _ => return None,
        })
    }
}

/// Bytes of a C `long` / `size_t` on this machine (for `'l'`, `'p'` …).
const LONG: usize = std::mem::size_of::<std::ffi::c_long>();
const PTR: usize = std::mem::size_of::<usize>();

/// Names `numpy.dtype` accepts (from `numpy.sctypeDict`), as (kind, size).
fn named(s: &str) -> Option<(char, usize)> {
    Some(match s {
        "bool" | "bool_" => ('b', 1),
        "byte" | "int8" => ('i', 1),
        "short" | "int16" => ('i', 2),
        "intc" | "int32" => ('i', 4),
        "longlong" | "int64" => ('i', 8),
        "long" | "int" | "int_" => ('i', LONG),
        "intp" => ('i', PTR),
        "ubyte" | "uint8" => ('u', 1),
        "ushort" | "uint16" => ('u', 2),
        "uintc" | "uint32" => ('u', 4),
        "ulonglong" | "uint64" => ('u', 8),
        "ulong" | "uint" => ('u', LONG),
        "uintp" => ('u', PTR),
        "half" | "float16" => ('f', 2),
        "single" | "float32" => ('f', 4),
        "double" | "float" | "float64" => ('f', 8),
        "longdouble" => ('f', LONGDOUBLE),
        "float128" if LONGDOUBLE == 16 => ('f', 16),
        "csingle" | "complex64" => ('c', 8),
        "cdouble" | "complex" | "complex128" => ('c', 16),
        "clongdouble" => ('c', 2 * LONGDOUBLE),
        "complex256" if LONGDOUBLE == 16 => ('c', 32),
        "bytes" | "bytes_" | "a" => ('S', 0),
        "str" | "str_" | "unicode" => ('U', 0),
        "void" => ('V', 0),
        "object" | "object_" => ('O', 8),
        _ => return None,
    })
}

/// `long double` is 16 bytes on x86-64 and aarch64 Linux, 8 on Windows and macOS on ARM.
const LONGDOUBLE: usize = if cfg!(any(
    windows,
    all(target_os = "macos", target_arch = "aarch64")
)) {
    8
} else {
    16
};

/// Parses a type string as `numpy.dtype(str)` reads the forms NumPy writes and the one-letter
/// codes and names.
fn typestr(s: &str) -> Result<TypeStr, SyntaxError> {
    let not_understood = || {
        format!(
            "data type {} not understood (arraydrain reads the type strings NumPy writes, \
             one-letter type codes and type names)",
            clip(s, 40)
        )
    };
    let (big, rest) = match s.chars().next() {
        Some('>') => (true, &s[1..]),
        Some('<' | '|' | '=') => (false, &s[1..]),
        _ => (cfg!(target_endian = "big"), s),
    };
    // Names (no byte-order prefix), with datetime units for the two datetime names.
    if rest.len() == s.len() {
        if let Some((kind, size)) = named(s) {
            return finish(kind, size, big, s);
        }
        for (name, kind) in [("datetime64", 'M'), ("timedelta64", 'm')] {
            if let Some(unit) = s.strip_prefix(name) {
                datetime_unit(unit, s)?;
                return finish(kind, 8, big, s);
            }
        }
    }
    let mut chars = rest.chars();
    let kind = chars.next().ok_or_else(not_understood)?;
    let tail = chars.as_str();
    if tail.is_empty() {
        let (kind, size) = match kind {
            '?' => ('b', 1),
            'b' => ('i', 1),
            'B' => ('u', 1),
            'h' => ('i', 2),
            'H' => ('u', 2),
            'i' => ('i', 4),
            'I' => ('u', 4),
            'l' => ('i', LONG),
            'L' => ('u', LONG),
            'q' => ('i', 8),
            'Q' => ('u', 8),
            'p' => ('i', PTR),
            'P' => ('u', PTR),
            'e' => ('f', 2),
            'f' => ('f', 4),
            'd' => ('f', 8),
            'g' => ('f', LONGDOUBLE),
            'F' => ('c', 8),
            'D' => ('c', 16),
            'G' => ('c', 2 * LONGDOUBLE),
            'S' | 'a' => ('S', 0),
            'U' => ('U', 0),
            'V' => ('V', 0),
            'c' => ('S', 1),
            'M' | 'm' => (kind, 8),
            'O' => ('O', 8),
            _ => return Err(SyntaxError::from(not_understood())),
        };
        return finish(kind, size, big, s);
    }
    if matches!(kind, 'M' | 'm') {
        let unit = tail.strip_prefix('8').ok_or_else(not_understood)?;
        datetime_unit(unit, s)?;
        return finish(kind, 8, big, s);
    }
    if !tail.bytes().all(|b| b.is_ascii_digit()) {
        return Err(SyntaxError::from(not_understood()));
    }
    let n: usize = tail.parse().map_err(|_| not_understood())?;
    let size = match (kind, n) {
        ('b', 1) => 1,
        ('i' | 'u', 1 | 2 | 4 | 8) => n,
        ('f', 2 | 4 | 8) => n,
        ('f', n) if n == LONGDOUBLE => n,
        ('c', 8 | 16) => n,
        ('c', n) if n == 2 * LONGDOUBLE => n,
        ('S' | 'V' | 'a', n) if n <= MAX_ITEMSIZE => n,
        ('U', n) if n <= MAX_ITEMSIZE / 4 => 4 * n,
        ('O', 4 | 8) => 8,
        _ => return Err(SyntaxError::from(not_understood())),
    };
    let kind = if kind == 'a' { 'S' } else { kind };
    finish(kind, size, big, s)
}

fn finish(kind: char, size: usize, big: bool, s: &str) -> Result<TypeStr, SyntaxError> {
    if kind == 'O' {
        return Err(SyntaxError::from(format!(
            "the object dtype {} holds Python objects, not data; it cannot be carried",
            clip(s, 40)
        )));
    }
    Ok(TypeStr {
        kind,
        size,
        big_endian: big,
    })
}

/// Checks a datetime unit suffix: empty (generic), or `[unit]` / `[Nunit]` with NumPy's units.
fn datetime_unit(unit: &str, s: &str) -> Result<(), SyntaxError> {
    if unit.is_empty() {
        return Ok(());
    }
    let bad = || format!("invalid datetime unit in {}", clip(s, 40));
    let inner = unit
        .strip_prefix('[')
        .and_then(|u| u.strip_suffix(']'))
        .ok_or_else(bad)?;
    let digits = inner.bytes().take_while(u8::is_ascii_digit).count();
    let (count, name) = inner.split_at(digits);
    if !count.is_empty() && count.parse::<i32>().is_err() {
        return Err(SyntaxError::from(bad()));
    }
    const UNITS: [&str; 15] = [
        "Y", "M", "W", "D", "h", "m", "s", "ms", "us", "\u{3bc}s", "ns", "ps", "fs", "as",
        "generic",
    ];
    if UNITS.contains(&name) {
        Ok(())
    } else {
        Err(SyntaxError::from(bad()))
    }
}

#[cfg(test)]
mod tests {
    use super::super::literal::parse;
    use super::*;

    fn el(text: &str) -> Result<Element, SyntaxError> {
        element(&parse(text, false).unwrap())
    }

    #[test]
    fn sizes_follow_numpy() {
        let cases: &[(&str, usize, Option<DType>)] = &[
            ("'<f8'", 8, Some(DType::F64)),
            ("'<d'", 8, Some(DType::F64)),
            ("'?'", 1, Some(DType::Bool)),
            ("'>i1'", 1, Some(DType::I8)),
            ("'>f8'", 8, None),
            ("'<c8'", 8, None),
            ("'|S8'", 8, None),
            ("'<U3'", 12, None),
            ("'<M8[ns]'", 8, None),
            ("'<m8[25s]'", 8, None),
            ("'|V8'", 8, None),
            ("'float64'", 8, Some(DType::F64)),
            ("'datetime64[D]'", 8, None),
            (
                "[('a', '<f4'), ('', '|V4'), ('b', '<i8', (2, 3))]",
                56,
                None,
            ),
            (
                "[(('title', 'a'), '<f4'), ('b', [('c', '|S2'), ('d', '<u2')])]",
                8,
                None,
            ),
            ("[('c', ('<f8', (5,)), (2,))]", 80, None),
            ("('<f4', ())", 4, Some(DType::F32)),
            ("('<f4', 3)", 12, None),
            ("[]", 0, None),
        ];
        for (text, size, numeric) in cases {
            let e = el(text).unwrap_or_else(|e| panic!("{text}: {e}"));
            assert_eq!((e.size, e.numeric), (*size, numeric.clone()), "{text}");
        }
        for (text, word) in [
            ("'|O'", "object"),
            ("[('a', '<f4'), ('b', [('c', 'O')])]", "object"),
            ("'i3'", "not understood"),
            ("'f4,i4'", "not understood"),
            ("'M8[xx]'", "datetime unit"),
            ("[('a', '<f4'), ('a', '<i4')]", "twice"),
            ("[(1, '<f4')]", "strings"),
            ("('<f4', -1)", "negative"),
            ("('<f4', '<i4')", "pair"),
            ("5", "not a valid"),
            ("[('a',)]", "1 items"),
        ] {
            let e = el(text).unwrap_err();
            assert!(e.message().contains(word), "{text}: {e}");
        }
    }
}
