//! Finding the CUDA libraries. `cudarc` opens `libcuda` by bare file name (`libcuda.so.1`), so
//! only the loader's default search (`LD_LIBRARY_PATH`, the ld.so cache) finds it, and setting
//! `LD_LIBRARY_PATH` at run time changes nothing (glibc reads it once, at start-up). When the
//! default search misses it, this module opens it by absolute path from the usual CUDA folders
//! and keeps it open: glibc's `dlopen` then matches cudarc's later open by bare name against the
//! `SONAME` of the already loaded object, so cudarc uses exactly that file. NVRTC is opened by
//! path by the engine itself (`nvrtc`), from the same folders; the `libnvrtc-builtins` next to it
//! is preloaded first (libnvrtc opens it by bare name).
//!
//! Probing never panics: it only calls `is_culib_present` (which tries to open, never
//! resolves a symbol) and `libloading`.

use std::env;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, OnceLock};

/// Libraries opened here by absolute path, kept open for the life of the process.
static PRELOADED: Mutex<Vec<libloading::Library>> = Mutex::new(Vec::new());

/// The folders searched, in order, when the loader's default search misses a library:
/// `$ARRAYDRAIN_CUDA_LIB_DIR` (colon-separated), `$CUDA_HOME`, `$CUDA_PATH`, `$CUDA_ROOT`
/// (each `/lib64`, `/lib`, `/targets/<arch>-linux/lib`), `/usr/local/cuda`, the versioned
/// `/usr/local/cuda-1*` installs (12.x and 13.x; by name, last first), `/usr/local/nvidia/lib64`
/// and `/usr/local/nvidia/lib` (where container runtimes mount the driver), then the distribution folders
/// (`/usr/lib/<arch>-linux-gnu`, `/usr/lib64`, `/usr/lib`, `/usr/lib/wsl/lib`). Driver stubs
/// (`…/stubs`) are never searched: a stub `libcuda` only fails at run time.
pub fn library_dirs() -> Vec<PathBuf> {
    let arch = std::env::consts::ARCH;
    let target = if arch == "aarch64" {
        "sbsa-linux"
    } else {
        "x86_64-linux"
    };
    let mut roots: Vec<PathBuf> = Vec::new();
    let mut dirs: Vec<PathBuf> = Vec::new();
    if let Some(list) = env::var_os("ARRAYDRAIN_CUDA_LIB_DIR") {
        dirs.extend(env::split_paths(&list));
    }
    for var in ["CUDA_HOME", "CUDA_PATH", "CUDA_ROOT"] {
        if let Some(v) = env::var_os(var) {
            roots.push(PathBuf::from(v));
        }
    }
    roots.push(PathBuf::from("/usr/local/cuda"));
    let mut versioned = files_with_prefix(Path::new("/usr/local"), "cuda-1");
    versioned.reverse();
    roots.extend(versioned);
    for root in roots {
        dirs.push(root.join("lib64"));
        dirs.push(root.join("lib"));
        dirs.push(root.join("targets").join(target).join("lib"));
    }
    for d in [
        "/usr/local/nvidia/lib64".to_string(),
        "/usr/local/nvidia/lib".to_string(),
        format!("/usr/lib/{arch}-linux-gnu"),
        "/usr/lib64".to_string(),
        "/usr/lib".to_string(),
        "/usr/lib/wsl/lib".to_string(),
    ] {
        dirs.push(PathBuf::from(d));
    }
    let mut seen = Vec::new();
    dirs.retain(|d| {
        let keep = !seen.contains(d) && !d.ends_with("stubs");
        seen.push(d.clone());
        keep
    });
    dirs
}

/// Whether a CUDA driver library (`libcuda`) can be loaded here, by the dynamic loader's own
/// search or from one of [`library_dirs`]. Never panics; says nothing about devices.
pub fn driver_library_present() -> bool {
    ensure_driver().is_ok()
}

/// Makes `libcuda` loadable by cudarc. `Err` says why not, for [`CudaError::Unavailable`](crate::cuda::CudaError::Unavailable).
///
/// [`CudaError::Unavailable`]: crate::cuda::CudaError::Unavailable
pub(crate) fn ensure_driver() -> Result<(), String> {
    static STATE: OnceLock<Result<(), String>> = OnceLock::new();
    STATE
        .get_or_init(|| {
            ensure(
                "libcuda",
                // SAFETY: `is_culib_present` only tries `dlopen` on cudarc's candidate names and
                // closes what it opened; it resolves no symbol and runs no CUDA code. Loading
                // libcuda runs its initialisers, which is what any use of CUDA does.
                || unsafe { cudarc::driver::sys::is_culib_present() },
                &["libcuda.so.1", "libcuda.so"],
                &[],
            )
        })
        .clone()
}

/// Loads every `prefix*` file of `dir` by absolute path (e.g. `libnvrtc-builtins.so.13.0`, which
/// libnvrtc opens by bare name), best effort: a library that needs one that failed reports it.
pub(crate) fn preload_companions(dir: &Path, prefix: &str) {
    for companion in files_with_prefix(dir, prefix) {
        let _ = preload(&companion);
    }
}

fn ensure(
    what: &str,
    present: impl Fn() -> bool,
    names: &[&str],
    companions: &[&str],
) -> Result<(), String> {
    if present() {
        return Ok(());
    }
    let dirs = library_dirs();
    let mut tried = Vec::new();
    for dir in &dirs {
        for name in names {
            let path = dir.join(name);
            if !path.is_file() {
                continue;
            }
            // Companions first, so the main library finds them when it opens them by name.
            for prefix in companions {
                for companion in files_with_prefix(dir, prefix) {
                    // Best effort: if a companion fails to load, the main library reports it.
                    let _ = preload(&companion);
                }
            }
            match preload(&path) {
                Ok(()) if present() => return Ok(()),
                Ok(()) => tried.push(format!(
                    "{} (loaded, but not under a name cudarc looks for)",
                    path.display()
                )),
                Err(e) => tried.push(format!("{}: {e}", path.display())),
            }
        }
    }
    let searched: Vec<String> = dirs.iter().map(|d| d.display().to_string()).collect();
    let mut reason = format!(
        "{what} not found by the dynamic loader (LD_LIBRARY_PATH, ld.so cache) nor in {}",
        searched.join(", ")
    );
    if !tried.is_empty() {
        reason.push_str(&format!("; tried {}", tried.join("; ")));
    }
    Err(reason)
}

/// The entries of `dir` whose names start with `prefix`, sorted (none when it cannot be read).
pub(crate) fn files_with_prefix(dir: &Path, prefix: &str) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(dir)
        .map(|rd| {
            rd.flatten()
                .map(|e| e.path())
                .filter(|p| {
                    p.file_name()
                        .and_then(|n| n.to_str())
                        .is_some_and(|n| n.starts_with(prefix))
                })
                .collect()
        })
        .unwrap_or_default();
    v.sort();
    v
}

fn preload(path: &Path) -> Result<(), String> {
    // SAFETY: opening a shared library runs its initialisers; the files opened here are the CUDA
    // driver / NVRTC libraries (named by the CUDA file names, found in CUDA install folders),
    // whose initialisers are the ones any CUDA program runs. The handle is kept for the life of
    // the process (in PRELOADED), so nothing resolved from it can dangle.
    let lib = unsafe { libloading::Library::new(path) }.map_err(|e| e.to_string())?;
    PRELOADED
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
        .push(lib);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dirs_are_unique_and_skip_stubs() {
        let dirs = library_dirs();
        assert!(dirs.iter().any(|d| d == Path::new("/usr/local/cuda/lib64")));
        assert!(
            dirs.iter()
                .any(|d| d == Path::new("/usr/local/nvidia/lib64")),
            "container runtimes mount libcuda there"
        );
        assert!(!dirs.iter().any(|d| d.ends_with("stubs")));
        let mut sorted = dirs.clone();
        sorted.sort();
        sorted.dedup();
        assert_eq!(sorted.len(), dirs.len());
    }
}
