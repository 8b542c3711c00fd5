//! Shared by the NumPy tests (`#[path = "py/harness.rs"] mod harness;`): finding a Python with
//! NumPy, running `npfixtures.py`, and scratch folders.
//!
//! Python is `$ARRAYDRAIN_PYTHON`, else `.venv/bin/python` in the crate, else `python3`. When it
//! cannot import NumPy the test fails, saying how to get it: `scripts/test.sh` (the README's test
//! command) installs NumPy and points `ARRAYDRAIN_PYTHON` at it. A test never skips silently.

#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::OnceLock;

/// The Python interpreter to use, if it can import NumPy.
fn find_python() -> Result<PathBuf, String> {
    let candidates: Vec<PathBuf> = match std::env::var_os("ARRAYDRAIN_PYTHON") {
        Some(p) => vec![PathBuf::from(p)],
        None => vec![
            Path::new(env!("CARGO_MANIFEST_DIR")).join(".venv/bin/python"),
            PathBuf::from("python3"),
        ],
    };
    let mut tried = Vec::new();
    for py in candidates {
        if py.is_absolute() && !py.exists() {
            tried.push(format!("{} (missing)", py.display()));
            continue;
        }
        match Command::new(&py).args(["-c", "import numpy"]).output() {
            Ok(out) if out.status.success() => return Ok(py),
            Ok(out) => tried.push(format!(
                "{}: {}",
                py.display(),
                String::from_utf8_lossy(&out.stderr).trim()
            )),
            Err(e) => tried.push(format!("{}: {e}", py.display())),
        }
    }
    Err(tried.join("; "))
}

/// Python with NumPy. Panics, saying how to get one, when no candidate can import NumPy.
pub fn numpy_python() -> &'static Path {
    static PY: OnceLock<Result<PathBuf, String>> = OnceLock::new();
    match PY.get_or_init(find_python) {
        Ok(p) => p.as_path(),
        Err(why) => panic!(
            "these tests need a Python with NumPy: run `scripts/test.sh` (installs it and sets \
             ARRAYDRAIN_PYTHON), or set ARRAYDRAIN_PYTHON yourself. Tried: {why}"
        ),
    }
}

/// Runs `npfixtures.py ARGS` and panics (showing its output) unless it succeeds.
pub fn fixtures(py: &Path, args: &[&str]) -> String {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/py/npfixtures.py");
    let out = Command::new(py)
        .arg(&script)
        .args(args)
        .output()
        .expect("run python");
    assert!(
        out.status.success(),
        "npfixtures.py {args:?} failed:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A fresh scratch folder under cargo's per-target temp dir, removed on drop.
pub struct Scratch(pub PathBuf);

impl Scratch {
    pub fn new(name: &str) -> Scratch {
        let dir =
            Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        Scratch(dir)
    }

    pub fn path(&self, rel: &str) -> PathBuf {
        self.0.join(rel)
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        if !std::thread::panicking() {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }
}

/// All file names under `dir`, recursively, sorted (to show that nothing was left behind).
pub fn files_under(dir: &Path) -> Vec<String> {
    let mut out = Vec::new();
    if let Ok(rd) = std::fs::read_dir(dir) {
        for e in rd.flatten() {
            let p = e.path();
            if p.is_dir() {
                out.extend(files_under(&p));
            } else {
                out.push(p.display().to_string());
            }
        }
    }
    out.sort();
    out
}

pub fn text(o: &Output) -> String {
    format!(
        "status {:?}\nstdout:\n{}\nstderr:\n{}",
        o.status,
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

/// The fixture manifest written by `make-inputs`.
pub fn json(path: &Path) -> serde_json::Value {
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

pub fn strings(v: &serde_json::Value) -> Vec<String> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|s| s.as_str().unwrap().to_string())
        .collect()
}
