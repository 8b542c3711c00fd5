//! Column names that become file names. A column's name comes from an archive member or a file
//! stem, i.e. from whoever made the input; when the output is written it becomes `NAME.npy` in a
//! folder or an archive. So a name must be a plain file name: nothing that climbs out of the
//! folder (`..`, `/`, `\`, an absolute path), nothing a file system or a terminal treats
//! specially (NUL, control characters), not empty. Such names are refused, never rewritten: a
//! silently renamed column would be a different dataset.

use crate::error::{Error, Result};

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
    None
}

/// Checks that a column name can be used as a file name (see the module docs).
///
/// # Errors
/// [`Error::UnsafeName`] saying why not.
pub(crate) fn check_column_name(name: &str) -> Result<()> {
    match unsafe_name_reason(name) {
        None => Ok(()),
        Some(reason) => Err(Error::UnsafeName {
            name: name.to_string(),
            reason: reason.to_string(),
        }),
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
        ] {
            assert!(unsafe_name_reason(bad).is_some(), "{bad:?}");
            assert!(matches!(
                check_column_name(bad),
                Err(Error::UnsafeName { .. })
            ));
        }
    }
}
