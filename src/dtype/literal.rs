//! The Python literals a `.npy` header is written in: NumPy reads its header with
//! `ast.literal_eval`, so this parses the same language (strings with their escapes and
//! prefixes, integers, `True`/`False`/`None`, tuples, lists, dicts, sets, floats) and keeps,
//! for every value, the span of text it came from, so a dtype descriptor can be carried verbatim.
//!
//! What is refused that Python would accept: line continuations, triple-quoted strings and
//! implicit concatenation of adjacent strings (NumPy writes none of them).

use std::ops::Range;

use super::SyntaxError;

/// A parsed literal and the byte range of the header text it was read from.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Node {
    pub value: Value,
    pub span: Range<usize>,
}

/// The kinds of Python literal a header can hold.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Value {
    Str(String),
    Bytes,
    /// An integer (`None` when it does not fit in an `i128`).
    Int(Option<i128>),
    Bool(bool),
    PyNone,
    Float,
    Tuple(Vec<Node>),
    List(Vec<Node>),
    Set,
    /// Key-value pairs in order; Python keeps the last value of a repeated key.
    Dict(Vec<(Node, Node)>),
}

impl Value {
    /// The Python type name, for messages.
    pub fn type_name(&self) -> &'static str {
        match self {
            Value::Str(_) => "str",
            Value::Bytes => "bytes",
            Value::Int(_) => "int",
            Value::Bool(_) => "bool",
            Value::PyNone => "NoneType",
            Value::Float => "float",
            Value::Tuple(_) => "tuple",
            Value::List(_) => "list",
            Value::Set => "set",
            Value::Dict(_) => "dict",
        }
    }
}

/// Parses `text` as one Python literal (whitespace and comments around it skipped, as
/// `literal_eval` does). `py2_longs` accepts the `L` suffix Python 2 wrote after
/// integers (NumPy accepts it in format versions 1.0 and 2.0).
///
/// # Errors
/// A message saying where and why the text is not a literal.
pub(crate) fn parse(text: &str, py2_longs: bool) -> Result<Node, SyntaxError> {
    let mut p = Parser {
        s: text,
        at: 0,
        py2_longs,
        depth: 0,
    };
    let node = p.value()?;
    p.skip_ws();
    if p.at != p.s.len() {
        return Err(SyntaxError::from(format!(
            "unexpected text after the literal at byte {}: {}",
            p.at,
            clip(&p.s[p.at..], 40)
        )));
    }
    Ok(node)
}

/// `s` cut to at most `max` characters, quoted as Python's `repr` would show a string, with
/// the number of characters left out when it was cut.
pub(crate) fn clip(s: &str, max: usize) -> String {
    let n = s.chars().count();
    if n <= max {
        return format!("{s:?}");
    }
    let head: String = s.chars().take(max).collect();
    format!("{head:?}… ({} more characters)", n - max)
}

/// Nesting deeper than this is refused (a header is a few levels deep; this bounds recursion).
const MAX_DEPTH: usize = 64;

struct Parser<'s> {
    s: &'s str,
    at: usize,
    py2_longs: bool,
    depth: usize,
}

impl Parser<'_> {
    fn rest(&self) -> &str {
        &self.s[self.at..]
    }

    /// Skips whitespace and comments (`# …` to the end of the line).
    fn skip_ws(&mut self) {
        loop {
            let s = self.s;
            let rest = &s[self.at..];
            let trimmed = rest.trim_start_matches([' ', '\t', '\n', '\r', '\x0c']);
            self.at += rest.len() - trimmed.len();
            if !trimmed.starts_with('#') {
                return;
            }
            self.at += trimmed.find(['\n', '\r']).unwrap_or(trimmed.len());
        }
    }

    fn peek(&mut self) -> Option<char> {
        self.skip_ws();
        self.rest().chars().next()
    }

    fn eat(&mut self, c: char) -> bool {
        if self.peek() == Some(c) {
            self.at += c.len_utf8();
            true
        } else {
            false
        }
    }

    fn err(&self, what: &str) -> String {
        match self.s[self.at..].chars().next() {
            Some(c) => format!("{what} at byte {} (found {c:?})", self.at),
            None => format!("{what} at byte {} (the text ends)", self.at),
        }
    }

    fn value(&mut self) -> Result<Node, SyntaxError> {
        self.depth += 1;
        if self.depth > MAX_DEPTH {
            return Err(SyntaxError::from(format!(
                "literals nested more than {MAX_DEPTH} deep"
            )));
        }
        let r = self.value_inner();
        self.depth -= 1;
        r
    }

    fn value_inner(&mut self) -> Result<Node, SyntaxError> {
        let Some(c) = self.peek() else {
            return Err(SyntaxError::from(self.err("expected a value")));
        };
        let start = self.at;
        let value = match c {
            '(' => {
                self.at += 1;
                let (items, trailing_comma) = self.items(')')?;
                match <[Node; 1]>::try_from(items) {
                    // `(x)` is `x` in parentheses, not a tuple.
                    Ok([mut inner]) if !trailing_comma => {
                        inner.span = start..self.at;
                        return Ok(inner);
                    }
                    Ok(one) => Value::Tuple(one.into()),
                    Err(items) => Value::Tuple(items),
                }
            }
            '[' => {
                self.at += 1;
                Value::List(self.items(']')?.0)
            }
            '{' => {
                self.at += 1;
                self.dict_or_set()?
            }
            '\'' | '"' => Value::Str(self.string(false)?),
            '0'..='9' | '.' => self.number()?,
            '-' | '+' => {
                self.at += 1;
                let negative = c == '-';
                let inner = self.value()?;
                match inner.value {
                    Value::Int(v) if negative => Value::Int(v.and_then(i128::checked_neg)),
                    v @ (Value::Int(_) | Value::Float) => v,
                    _ => {
                        return Err(SyntaxError::from(format!(
                            "a sign before a non-number at byte {start}"
                        )))
                    }
                }
            }
            c if c.is_alphabetic() || c == '_' => self.word()?,
            _ => return Err(SyntaxError::from(self.err("expected a value"))),
        };
        Ok(Node {
            value,
            span: start..self.at,
        })
    }

    /// Comma-separated values up to `close`; also says whether a trailing comma was seen.
    fn items(&mut self, close: char) -> Result<(Vec<Node>, bool), SyntaxError> {
        let mut items = Vec::new();
        loop {
            if self.eat(close) {
                return Ok((items, true));
            }
            items.push(self.value()?);
            if !self.eat(',') {
                if self.eat(close) {
                    return Ok((items, false));
                }
                return Err(SyntaxError::from(
                    self.err(&format!("expected ',' or '{close}'")),
                ));
            }
        }
    }

    fn dict_or_set(&mut self) -> Result<Value, SyntaxError> {
        let mut pairs = Vec::new();
        if self.eat('}') {
            return Ok(Value::Dict(pairs));
        }
        let first = self.value()?;
        if !self.eat(':') {
            // A set: `{a, b}`.
            if !self.eat(',') && !self.eat('}') {
                return Err(SyntaxError::from(self.err("expected ':', ',' or '}'")));
            }
            if self.s[..self.at].ends_with(',') {
                self.items('}')?;
            }
            let _ = first;
            return Ok(Value::Set);
        }
        let v = self.value()?;
        pairs.push((first, v));
        loop {
            if !self.eat(',') {
                if self.eat('}') {
                    return Ok(Value::Dict(pairs));
                }
                return Err(SyntaxError::from(self.err("expected ',' or '}'")));
            }
            if self.eat('}') {
                return Ok(Value::Dict(pairs));
            }
            let k = self.value()?;
            if !self.eat(':') {
                return Err(SyntaxError::from(self.err("expected ':'")));
            }
            let v = self.value()?;
            pairs.push((k, v));
        }
    }

    fn word(&mut self) -> Result<Value, SyntaxError> {
        let start = self.at;
        let len = self
            .rest()
            .find(|c: char| !(c.is_alphanumeric() || c == '_'))
            .unwrap_or(self.rest().len());
        let word = &self.s[start..start + len];
        // String prefixes: r, u, b, br, rb (any case), directly followed by a quote.
        let after = self.s[start + len..].chars().next();
        if matches!(after, Some('\'' | '"')) {
            let lower = word.to_ascii_lowercase();
            let (raw, bytes) = match lower.as_str() {
                "r" => (true, false),
                "u" => (false, false),
                "b" => (false, true),
                "br" | "rb" => (true, true),
                _ => {
                    return Err(SyntaxError::from(format!(
                        "unknown string prefix {word:?} at byte {start}"
                    )))
                }
            };
            self.at = start + len;
            let s = self.string(raw)?;
            return Ok(if bytes { Value::Bytes } else { Value::Str(s) });
        }
        self.at = start + len;
        match word {
            "True" => Ok(Value::Bool(true)),
            "False" => Ok(Value::Bool(false)),
            "None" => Ok(Value::PyNone),
            _ => Err(SyntaxError::from(format!(
                "{} at byte {start} is a name, not a literal",
                clip(word, 40)
            ))),
        }
    }

    fn number(&mut self) -> Result<Value, SyntaxError> {
        let start = self.at;
        let len = self
            .rest()
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_' || c == '.'))
            .unwrap_or(self.rest().len());
        let mut tok = &self.s[start..start + len];
        // `1e-5`: the sign belongs to the exponent.
        let mut end = start + len;
        if (tok.ends_with(['e', 'E'])) && !tok.starts_with("0x") && !tok.starts_with("0X") {
            if let Some(rest) = self.s[end..].strip_prefix(['-', '+']) {
                let more = rest
                    .find(|c: char| !(c.is_ascii_digit() || c == '_' || c == 'j' || c == 'J'))
                    .unwrap_or(rest.len());
                end += 1 + more;
                tok = &self.s[start..end];
            }
        }
        self.at = end;
        if self.py2_longs {
            if let Some(t) = tok.strip_suffix('L') {
                if !t.is_empty() && t.bytes().all(|b| b.is_ascii_digit()) {
                    tok = t;
                }
            }
        }
        let bad = || format!("{} at byte {start} is not a number", clip(tok, 40));
        let lower = tok.to_ascii_lowercase();
        let (radix, digits) = if let Some(d) = lower.strip_prefix("0x") {
            (16, d)
        } else if let Some(d) = lower.strip_prefix("0o") {
            (8, d)
        } else if let Some(d) = lower.strip_prefix("0b") {
            (2, d)
        } else {
            (10, lower.as_str())
        };
        let digits_ok = |d: &str| {
            !d.is_empty()
                && !d.starts_with('_')
                && !d.ends_with('_')
                && !d.contains("__")
                && d.chars().all(|c| c == '_' || c.is_digit(radix))
        };
        if digits_ok(digits) {
            let clean: String = digits.chars().filter(|&c| c != '_').collect();
            // Python 3 refuses leading zeros in a non-zero decimal integer (`007`).
            if radix == 10
                && clean.len() > 1
                && clean.starts_with('0')
                && clean.bytes().any(|b| b != b'0')
            {
                return Err(SyntaxError::from(bad()));
            }
            return Ok(Value::Int(i128::from_str_radix(&clean, radix).ok()));
        }
        if radix == 10 {
            let body = lower.strip_suffix('j').unwrap_or(&lower);
            let b = body.as_bytes();
            let underscores_ok = (0..b.len()).all(|i| {
                b[i] != b'_'
                    || (i > 0
                        && b[i - 1].is_ascii_digit()
                        && b.get(i + 1).is_some_and(u8::is_ascii_digit))
            });
            let clean: String = body.chars().filter(|&c| c != '_').collect();
            if underscores_ok
                && !clean.is_empty()
                && clean.parse::<f64>().is_ok()
                && !clean.contains("inf")
                && !clean.contains("nan")
            {
                return Ok(Value::Float);
            }
        }
        Err(SyntaxError::from(bad()))
    }

    /// A quoted string starting at the current position (the prefix already consumed).
    fn string(&mut self, raw: bool) -> Result<String, SyntaxError> {
        let start = self.at;
        let q = self
            .rest()
            .chars()
            .next()
            .ok_or_else(|| self.err("expected a string"))?;
        if self.rest().starts_with(&format!("{q}{q}{q}")) {
            return Err(SyntaxError::from(format!(
                "triple-quoted string at byte {start} (not supported)"
            )));
        }
        self.at += 1;
        let mut out = String::new();
        let mut chars = self.s[self.at..].char_indices();
        loop {
            let Some((i, c)) = chars.next() else {
                return Err(SyntaxError::from(format!(
                    "unterminated string starting at byte {start}"
                )));
            };
            match c {
                c if c == q => {
                    self.at += i + 1;
                    break;
                }
                '\n' | '\r' => {
                    return Err(SyntaxError::from(format!(
                        "unterminated string starting at byte {start}"
                    )))
                }
                '\\' if raw => {
                    out.push('\\');
                    match chars.next() {
                        Some((_, n)) if n == '\n' || n == '\r' => {
                            return Err(SyntaxError::from(format!(
                                "line continuation in a string at byte {start}"
                            )))
                        }
                        Some((_, n)) => out.push(n),
                        None => {
                            return Err(SyntaxError::from(format!(
                                "unterminated string starting at byte {start}"
                            )))
                        }
                    }
                }
                '\\' => {
                    let Some((_, e)) = chars.next() else {
                        return Err(SyntaxError::from(format!(
                            "unterminated string starting at byte {start}"
                        )));
                    };
                    let mut hex = |n: usize| -> Result<char, SyntaxError> {
                        let mut v = 0u32;
                        for _ in 0..n {
                            let d = chars.next().and_then(|(_, c)| c.to_digit(16)).ok_or_else(
                                || format!("bad \\x/\\u escape in the string at byte {start}"),
                            )?;
                            v = v * 16 + d;
                        }
                        char::from_u32(v).ok_or_else(|| {
                            SyntaxError::from(format!(
                                "escape of an invalid code point in the string at byte {start}"
                            ))
                        })
                    };
                    match e {
                        '\\' | '\'' | '"' => out.push(e),
                        'n' => out.push('\n'),
                        't' => out.push('\t'),
                        'r' => out.push('\r'),
                        'a' => out.push('\x07'),
                        'b' => out.push('\x08'),
                        'f' => out.push('\x0c'),
                        'v' => out.push('\x0b'),
                        'x' => out.push(hex(2)?),
                        'u' => out.push(hex(4)?),
                        'U' => out.push(hex(8)?),
                        '0'..='7' => {
                            let mut v = e.to_digit(8).unwrap_or(0);
                            for _ in 0..2 {
                                let mut look = chars.clone();
                                match look.next().and_then(|(_, c)| c.to_digit(8)) {
                                    Some(d) => {
                                        v = v * 8 + d;
                                        chars = look;
                                    }
                                    None => break,
                                }
                            }
                            out.push(char::from_u32(v).unwrap_or('\u{fffd}'));
                        }
                        '\n' | '\r' => {
                            return Err(SyntaxError::from(format!(
                                "line continuation in a string at byte {start}"
                            )))
                        }
                        'N' => {
                            return Err(SyntaxError::from(format!(
                                "\\N{{…}} escape in the string at byte {start} (not supported)"
                            )))
                        }
                        other => {
                            // Python keeps unknown escapes as they are.
                            out.push('\\');
                            out.push(other);
                        }
                    }
                }
                c => out.push(c),
            }
        }
        // Adjacent literals are concatenated by Python; NumPy never writes them.
        let save = self.at;
        if matches!(self.peek(), Some('\'' | '"')) {
            return Err(SyntaxError::from(format!(
                "adjacent strings at byte {} (implicit concatenation is not supported)",
                self.at
            )));
        }
        self.at = save;
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v(text: &str) -> Value {
        parse(text, false).unwrap().value
    }

    #[test]
    fn python_literals_parse_with_their_spans() {
        assert_eq!(v("(4)"), Value::Int(Some(4)));
        assert_eq!(
            v("(4,)"),
            Value::Tuple(vec![Node {
                value: Value::Int(Some(4)),
                span: 1..2
            }])
        );
        assert_eq!(v("()"), Value::Tuple(vec![]));
        assert_eq!(v("-0x10"), Value::Int(Some(-16)));
        assert_eq!(v("1_000"), Value::Int(Some(1000)));
        assert_eq!(v("1.5e-3"), Value::Float);
        assert_eq!(
            v("'a\\x41\\u00e9\\n\\101'"),
            Value::Str("aA\u{e9}\nA".into())
        );
        assert_eq!(v("r'a\\n'"), Value::Str("a\\n".into()));
        assert_eq!(v("b'x'"), Value::Bytes);
        assert_eq!(v("{1, 2}"), Value::Set);
        assert_eq!(v("False"), Value::Bool(false));
        assert!(matches!(v("\n (1, # one\n 2) # two"), Value::Tuple(t) if t.len() == 2));
        let n = parse("  {'a': [('x', '<f4')], 'b': (3, 4), }\n  ", false).unwrap();
        let Value::Dict(pairs) = n.value else {
            panic!()
        };
        assert_eq!(pairs[0].1.span, 8..22);
        assert_eq!(pairs.len(), 2);
        for bad in [
            "007", "1__0", "'abc", "(1,", "{'a' 1}", "x", "'a' 'b'", "1 2", "'''a'''",
        ] {
            assert!(parse(bad, false).is_err(), "{bad}");
        }
        assert!(parse("(3L, 4L)", false).is_err());
        assert_eq!(
            v("[1]"),
            Value::List(vec![Node {
                value: Value::Int(Some(1)),
                span: 1..2
            }])
        );
        assert!(matches!(parse("(3L, 4L)", true).unwrap().value, Value::Tuple(t) if t.len() == 2));
    }

    #[test]
    fn clip_cuts_long_text() {
        assert_eq!(clip("abc", 10), "\"abc\"");
        let long = "x".repeat(1000);
        let c = clip(&long, 20);
        assert!(c.len() < 60 && c.contains("980 more characters"), "{c}");
    }
}
