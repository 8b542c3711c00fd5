//! Column names that become file names. A column's name comes from an archive member or a file
//! stem, i.e. from whoever made the input; when the output is written it becomes `NAME.npy` in a
//! folder or an archive. So a name must be a plain file name: nothing that climbs out of the
//! folder (`..`, `/`, `\`, an absolute path), nothing a file system or a terminal treats
//! specially (NUL, control characters, bidirectional controls that make a name display as
//! another), not the prefix of unfinished outputs (`.arraydrain-`), not empty. Such names are refused, never rewritten: a
//! silently renamed column would be a different dataset.

use crate::error::{Error, FileError, Result};

/// Why `name` cannot name a file, or `None` when it is a plain name.
pub(crate) fn unsafe_name_reason(name: &str) -> Option<&'static str> {
    if name.is_empty() {
        return Some("it is empty");
    }
    if name == "." || name == ".." {
        return Some("it is a relative folder reference");
    }
    if name.contains('/') || name.contains('\\') {
        return Some("it contains a path separator ('/' or '\\')");
    }
    if name.chars().any(char::is_control) {
        return Some("it contains NUL or another control character");
    }
    if name.chars().any(is_bidi_control) {
        return Some(
            "it contains a bidirectional control character (U+202A-U+202E, U+2066-U+2069, \
             U+200E, U+200F, U+061C), which makes a name display as another",
        );
    }
    if name.starts_with(crate::fsafe::TEMP_PREFIX) {
        return Some("it starts with \".arraydrain-\", the prefix of unfinished outputs");
    }
    None
}

/// The characters that reorder how text is displayed (embeddings, overrides, isolates, marks).
fn is_bidi_control(c: char) -> bool {
    matches!(c, '\u{202A}'..='\u{202E}' | '\u{2066}'..='\u{2069}' | '\u{200E}' | '\u{200F}' | '\u{061C}')
}

/// Checks that a column name can be used as a file name (see the module docs).
///
/// # Errors
/// [`FileError::UnsafeName`] saying why not.
pub(crate) fn check_column_name(name: &str) -> Result<()> {
    match unsafe_name_reason(name) {
        None => Ok(()),
        Some(reason) => Err(Error::File(FileError::UnsafeName {
            name: name.to_string(),
            reason: reason.to_string(),
        })),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_plain_names_pass() {
        for ok in ["x", "labels", "a.b", "..x", "x..", "ünïcode", " spaced "] {
            assert_eq!(unsafe_name_reason(ok), None, "{ok:?}");
        }
        for bad in [
            "",
            ".",
            "..",
            "../evil",
            "/abs",
            "a/b",
            "a\\b",
            "..\\x",
            "nul\0",
            "tab\t",
            "\u{1b}[2J",
            "evil\u{202E}ypn.exe",
            "a\u{2066}b",
            ".arraydrain-x1Y2z3",
        ] {
            assert!(unsafe_name_reason(bad).is_some(), "{bad:?}");
            assert!(matches!(
                check_column_name(bad),
                Err(Error::File(FileError::UnsafeName { .. }))
            ));
        }
    }
}
