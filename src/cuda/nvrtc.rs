//! NVRTC, loaded by the engine itself: any libnvrtc of CUDA 12.x or 13.x, the newest the driver
//! can run, or one named by path.
//!
//! cudarc opens libnvrtc by bare names derived from the CUDA version its bindings were built
//! for, and only one per process. The engine needs more: one binary whose driver bindings are
//! CUDA 12.0's runs on 12.x and 13.x drivers, and must use NVRTC 13 where it is installed (and
//! the driver is 13.x) and NVRTC 12 elsewhere; the tests compile every kernel with each. The few
//! NVRTC entry points the engine calls have had the same C signatures since CUDA 11.1, so they
//! are resolved here with `libloading`, per library.
//!
//! The choice ([`choose`]): the newest NVRTC whose major version is at most the driver's. A
//! CUBIN made by NVRTC 13 does not load on a 12.x driver; one made by NVRTC 12.x loads on every
//! 12.x and 13.x driver (CUDA's minor-version compatibility).

use std::collections::HashMap;
use std::ffi::{c_char, c_int, c_void, CStr, CString};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use super::libs;

/// NVRTC majors the engine can load, newest first.
pub const SUPPORTED_MAJORS: [i32; 2] = [13, 12];

type Program = *mut c_void;
type VersionFn = unsafe extern "C" fn(*mut c_int, *mut c_int) -> c_int;
type CreateFn = unsafe extern "C" fn(
    *mut Program,
    *const c_char,
    *const c_char,
    c_int,
    *const *const c_char,
    *const *const c_char,
) -> c_int;
type CompileFn = unsafe extern "C" fn(Program, c_int, *const *const c_char) -> c_int;
type SizeFn = unsafe extern "C" fn(Program, *mut usize) -> c_int;
type BytesFn = unsafe extern "C" fn(Program, *mut c_char) -> c_int;
type DestroyFn = unsafe extern "C" fn(*mut Program) -> c_int;
type ErrorStringFn = unsafe extern "C" fn(c_int) -> *const c_char;

/// One loaded libnvrtc and the entry points the engine calls. Loaded once per path and kept
/// for the life of the process.
pub struct Nvrtc {
    path: PathBuf,
    version: (i32, i32),
    create: CreateFn,
    compile: CompileFn,
    log_size: SizeFn,
    log: BytesFn,
    cubin_size: SizeFn,
    cubin: BytesFn,
    destroy: DestroyFn,
    error_string: ErrorStringFn,
    /// Keeps the library (and so every function pointer above) loaded.
    _lib: libloading::Library,
}

impl std::fmt::Debug for Nvrtc {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Nvrtc")
            .field("path", &self.path)
            .field("version", &self.version)
            .finish()
    }
}

/// What a compilation gave: the CUBIN, or NVRTC's error and log.
pub(crate) struct Output {
    pub(crate) cubin: Option<Vec<u8>>,
    pub(crate) log: String,
    pub(crate) error: Option<String>,
}

impl Nvrtc {
    /// The library's file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// `(major, minor)` as `nvrtcVersion` reports it.
    pub fn version(&self) -> (i32, i32) {
        self.version
    }

    /// Loads the libnvrtc at `path` (its `libnvrtc-builtins` from the same folder first).
    fn open(path: &Path) -> Result<Nvrtc, String> {
        if let Some(dir) = path.parent() {
            libs::preload_companions(dir, "libnvrtc-builtins.so");
        }
        // SAFETY: loading runs the library's initialisers; the file is a libnvrtc (named so, in a
        // folder the caller or the CUDA search chose), whose initialisers are the ones every
        // NVRTC user runs. The handle is kept in the returned value, which is never dropped
        // (leaked into the process-wide cache), so no function pointer taken below can dangle.
        let lib = unsafe { libloading::Library::new(path) }
            .map_err(|e| format!("{}: {e}", path.display()))?;
        // SAFETY: each symbol is read with the C signature NVRTC 11.1–13.x documents for it
        // (nvrtc.h); the pointers stay valid while `lib` is loaded (see above).
        unsafe {
            let sym = |name: &str| format!("{}: no symbol {name}", path.display());
            let version: VersionFn = *lib
                .get(b"nvrtcVersion\0")
                .map_err(|_| sym("nvrtcVersion"))?;
            let create = *lib
                .get(b"nvrtcCreateProgram\0")
                .map_err(|_| sym("nvrtcCreateProgram"))?;
            let compile = *lib
                .get(b"nvrtcCompileProgram\0")
                .map_err(|_| sym("nvrtcCompileProgram"))?;
            let log_size = *lib
                .get(b"nvrtcGetProgramLogSize\0")
                .map_err(|_| sym("nvrtcGetProgramLogSize"))?;
            let log = *lib
                .get(b"nvrtcGetProgramLog\0")
                .map_err(|_| sym("nvrtcGetProgramLog"))?;
            let cubin_size = *lib
                .get(b"nvrtcGetCUBINSize\0")
                .map_err(|_| sym("nvrtcGetCUBINSize"))?;
            let cubin = *lib
                .get(b"nvrtcGetCUBIN\0")
                .map_err(|_| sym("nvrtcGetCUBIN"))?;
            let destroy = *lib
                .get(b"nvrtcDestroyProgram\0")
                .map_err(|_| sym("nvrtcDestroyProgram"))?;
            let error_string = *lib
                .get(b"nvrtcGetErrorString\0")
                .map_err(|_| sym("nvrtcGetErrorString"))?;
            let (mut major, mut minor) = (0, 0);
            let rc = version(&mut major, &mut minor);
            if rc != 0 {
                return Err(format!("{}: nvrtcVersion failed ({rc})", path.display()));
            }
            Ok(Nvrtc {
                path: path.to_path_buf(),
                version: (major, minor),
                create,
                compile,
                log_size,
                log,
                cubin_size,
                cubin,
                destroy,
                error_string,
                _lib: lib,
            })
        }
    }

    fn describe(&self, rc: c_int) -> String {
        // SAFETY: nvrtcGetErrorString returns a static NUL-terminated string for any code (or
        // null); it is only read here.
        let text = unsafe { (self.error_string)(rc) };
        if text.is_null() {
            return format!("NVRTC error {rc}");
        }
        // SAFETY: non-null, NUL-terminated, static (see above).
        unsafe { CStr::from_ptr(text) }
            .to_string_lossy()
            .into_owned()
    }

    /// Compiles `source` (named `name`) with `options` to a CUBIN.
    pub(crate) fn compile(&self, source: &CStr, name: &CStr, options: &[CString]) -> Output {
        let fail = |error: String| Output {
            cubin: None,
            log: String::new(),
            error: Some(error),
        };
        let mut prog: Program = std::ptr::null_mut();
        // SAFETY: `prog` is a live local the call writes; `source` and `name` are NUL-terminated
        // and outlive the call; no headers (0, null, null).
        let rc = unsafe {
            (self.create)(
                &mut prog,
                source.as_ptr(),
                name.as_ptr(),
                0,
                std::ptr::null(),
                std::ptr::null(),
            )
        };
        if rc != 0 {
            return fail(format!("nvrtcCreateProgram: {}", self.describe(rc)));
        }
        let prog = ProgramGuard { nvrtc: self, prog };
        let ptrs: Vec<*const c_char> = options.iter().map(|o| o.as_ptr()).collect();
        let Ok(count) = c_int::try_from(ptrs.len()) else {
            return fail("too many NVRTC options".into());
        };
        // SAFETY: a live program (created above, destroyed by the guard); `ptrs` holds `count`
        // NUL-terminated strings borrowed from `options`, alive for the call.
        let rc = unsafe { (self.compile)(prog.prog, count, ptrs.as_ptr()) };
        let log = prog.bytes(self.log_size, self.log).map(|raw| {
            let end = raw.iter().position(|&b| b == 0).unwrap_or(raw.len());
            String::from_utf8_lossy(&raw[..end]).into_owned()
        });
        let log = log.unwrap_or_default();
        if rc != 0 {
            return Output {
                cubin: None,
                log,
                error: Some(self.describe(rc)),
            };
        }
        match prog.bytes(self.cubin_size, self.cubin) {
            Ok(cubin) => Output {
                cubin: Some(cubin),
                log,
                error: None,
            },
            Err(e) => Output {
                cubin: None,
                log,
                error: Some(e),
            },
        }
    }
}

/// A live NVRTC program, destroyed on drop.
struct ProgramGuard<'n> {
    nvrtc: &'n Nvrtc,
    prog: Program,
}

impl ProgramGuard<'_> {
    /// Reads a program output (the log, the CUBIN) through its size and copy functions.
    fn bytes(&self, size: SizeFn, copy: BytesFn) -> Result<Vec<u8>, String> {
        let mut n = 0usize;
        // SAFETY: a live program; `n` is a live local.
        let rc = unsafe { size(self.prog, &mut n) };
        if rc != 0 {
            return Err(self.nvrtc.describe(rc));
        }
        let mut out = vec![0u8; n];
        if n == 0 {
            return Ok(out);
        }
        // SAFETY: `out` holds exactly the `n` bytes the size function reported.
        let rc = unsafe { copy(self.prog, out.as_mut_ptr().cast::<c_char>()) };
        if rc != 0 {
            return Err(self.nvrtc.describe(rc));
        }
        Ok(out)
    }
}

impl Drop for ProgramGuard<'_> {
    fn drop(&mut self) {
        // SAFETY: the program was created by nvrtcCreateProgram and is destroyed only here; a
        // failure to free it is not actionable.
        let _ = unsafe { (self.nvrtc.destroy)(&mut self.prog) };
    }
}

/// Libraries loaded so far, by path; leaked so that `&'static` references can be handed out.
static LOADED: Mutex<Option<HashMap<PathBuf, &'static Nvrtc>>> = Mutex::new(None);

/// The libnvrtc at `path`, loaded once per process.
///
/// # Errors
/// Why it cannot be loaded (not found, not a libnvrtc, missing symbols).
pub fn load(path: &Path) -> Result<&'static Nvrtc, String> {
    let mut guard = LOADED.lock().unwrap_or_else(|p| p.into_inner());
    let map = guard.get_or_insert_with(HashMap::new);
    if let Some(n) = map.get(path) {
        return Ok(n);
    }
    let n: &'static Nvrtc = Box::leak(Box::new(Nvrtc::open(path)?));
    map.insert(path.to_path_buf(), n);
    Ok(n)
}

/// Every libnvrtc of a supported major version found: `$ARRAYDRAIN_NVRTC` (a file) first, then
/// `libnvrtc.so.<major>` in [`search_dirs`], newest major first. Returns `(major, path)` pairs,
/// one per major (the first found), plus the override.
pub fn candidates() -> Vec<(Option<i32>, PathBuf)> {
    let mut found: Vec<(Option<i32>, PathBuf)> = Vec::new();
    if let Some(p) = std::env::var_os("ARRAYDRAIN_NVRTC") {
        found.push((None, PathBuf::from(p)));
    }
    let dirs = search_dirs();
    for major in SUPPORTED_MAJORS {
        let file = format!("libnvrtc.so.{major}");
        if let Some(dir) = dirs.iter().find(|d| d.join(&file).is_file()) {
            found.push((Some(major), dir.join(&file)));
        }
    }
    found
}

/// The folders searched for `libnvrtc.so.<major>`, in order:
/// 1. the folders of libnvrtc libraries this process has already loaded (for example by
///    PyTorch, or by a Python package's preload), read from `/proc/self/maps`;
/// 2. `LD_LIBRARY_PATH`;
/// 3. the `nvidia/*/lib` folders of the Python environments NVRTC's pip wheels install into
///    (`nvidia/cu13/lib`, `nvidia/cuda_nvrtc/lib`): the `site-packages` that holds this code
///    when it runs as a Python extension, then those of `$VIRTUAL_ENV` and `$CONDA_PREFIX`;
/// 4. [`libs::library_dirs`] (CUDA toolkit and system folders).
///
/// A PyTorch user who installed with pip has no CUDA toolkit: their NVRTC is only in (1) or (3).
pub fn search_dirs() -> Vec<PathBuf> {
    let maps = std::fs::read_to_string("/proc/self/maps").unwrap_or_default();
    let mut dirs = loaded_nvrtc_dirs(&maps);
    if let Some(v) = std::env::var_os("LD_LIBRARY_PATH") {
        dirs.extend(std::env::split_paths(&v).filter(|d| !d.as_os_str().is_empty()));
    }
    let mut site: Vec<PathBuf> = own_object(&maps)
        .into_iter()
        .flat_map(|own| {
            own.ancestors()
                .skip(1)
                .take(3)
                .map(Path::to_path_buf)
                .collect::<Vec<_>>()
        })
        .collect();
    for var in ["VIRTUAL_ENV", "CONDA_PREFIX"] {
        if let Some(prefix) = std::env::var_os(var) {
            site.extend(site_packages(Path::new(&prefix)));
        }
    }
    for s in &site {
        dirs.extend(wheel_lib_dirs(s));
    }
    dirs.extend(libs::library_dirs());
    let mut seen = Vec::new();
    dirs.retain(|d| {
        let keep = !seen.contains(d);
        seen.push(d.clone());
        keep
    });
    dirs
}

/// The folders of every `libnvrtc.so*` mapped into this process (`maps`: `/proc/self/maps`).
fn loaded_nvrtc_dirs(maps: &str) -> Vec<PathBuf> {
    let mut dirs: Vec<PathBuf> = Vec::new();
    for path in maps.lines().filter_map(mapped_path) {
        let is_nvrtc = path
            .file_name()
            .and_then(|n| n.to_str())
            .is_some_and(|n| n.starts_with("libnvrtc.so"));
        if let (true, Some(dir)) = (is_nvrtc, path.parent()) {
            if !dirs.iter().any(|d| d == dir) {
                dirs.push(dir.to_path_buf());
            }
        }
    }
    dirs
}

/// The file of a `/proc/self/maps` line (the sixth field, an absolute path), if any.
fn mapped_path(line: &str) -> Option<&Path> {
    let path = line.splitn(6, ' ').nth(5)?.trim_start();
    path.starts_with('/').then(|| Path::new(path))
}

/// The file that holds this code (the shared library when the engine runs as a Python
/// extension; the executable otherwise), from the mapping that contains one of its functions.
fn own_object(maps: &str) -> Option<PathBuf> {
    let here = search_dirs as fn() -> Vec<PathBuf> as usize;
    maps.lines().find_map(|line| {
        let range = line.split(' ').next()?;
        let (lo, hi) = range.split_once('-')?;
        let lo = usize::from_str_radix(lo, 16).ok()?;
        let hi = usize::from_str_radix(hi, 16).ok()?;
        (lo..hi)
            .contains(&here)
            .then(|| mapped_path(line).map(Path::to_path_buf))
            .flatten()
    })
}

/// `PREFIX/lib/python3*/site-packages` folders of an environment prefix, sorted.
fn site_packages(prefix: &Path) -> Vec<PathBuf> {
    libs::files_with_prefix(&prefix.join("lib"), "python3")
        .into_iter()
        .map(|p| p.join("site-packages"))
        .filter(|p| p.is_dir())
        .collect()
}

/// `SITE/nvidia/*/lib` folders (where NVIDIA's pip wheels put their libraries), sorted.
fn wheel_lib_dirs(site: &Path) -> Vec<PathBuf> {
    let mut out: Vec<PathBuf> = std::fs::read_dir(site.join("nvidia"))
        .map(|rd| {
            rd.flatten()
                .map(|e| e.path().join("lib"))
                .filter(|p| p.is_dir())
                .collect()
        })
        .unwrap_or_default();
    out.sort();
    out
}

/// The major version of NVRTC to use with a driver of CUDA version `driver` (the
/// `cuDriverGetVersion` encoding; `None` when unknown, e.g. when only compiling) among
/// `available` majors: the newest whose major is at most the driver's.
pub fn choose(driver: Option<i32>, available: &[i32]) -> Option<i32> {
    available
        .iter()
        .copied()
        .filter(|&m| driver.is_none_or(|d| m <= d / 1000))
        .max()
}

/// The NVRTC to compile with for a driver of version `driver` (see [`choose`]); the
/// `$ARRAYDRAIN_NVRTC` override wins when set.
///
/// # Errors
/// Why none can be used: what was searched, what was found and why it was refused.
pub fn for_driver(driver: Option<i32>) -> Result<&'static Nvrtc, String> {
    let found = candidates();
    if let Some((None, path)) = found.first() {
        // The override gets the same check as the automatic choice: a driver that cannot load
        // what this NVRTC compiles is refused here, not at module load.
        let n = load(path).map_err(|e| format!("ARRAYDRAIN_NVRTC: {e}"))?;
        if choose(driver, &[n.version.0]).is_none() {
            return Err(format!(
                "ARRAYDRAIN_NVRTC names NVRTC {}.{} ({}), but the driver (CUDA {}) cannot load \
                 what NVRTC {} compiles; name an NVRTC of major version {} or older",
                n.version.0,
                n.version.1,
                n.path.display(),
                driver.map_or("?".into(), |d| format!("{}.{}", d / 1000, (d % 1000) / 10)),
                n.version.0,
                driver.map_or(0, |d| d / 1000)
            ));
        }
        return Ok(n);
    }
    let mut loaded: Vec<(i32, &'static Nvrtc)> = Vec::new();
    let mut problems = Vec::new();
    for (_, path) in &found {
        match load(path) {
            Ok(n) => loaded.push((n.version.0, n)),
            Err(e) => problems.push(e),
        }
    }
    let majors: Vec<i32> = loaded.iter().map(|(m, _)| *m).collect();
    if let Some(m) = choose(driver, &majors) {
        if let Some((_, n)) = loaded.iter().find(|(x, _)| *x == m) {
            return Ok(n);
        }
    }
    let mut reason = if loaded.is_empty() {
        format!(
            "no libnvrtc.so.13 or libnvrtc.so.12 in {} (pip users: `pip install \
             nvidia-cuda-nvrtc` into the running environment, or set ARRAYDRAIN_NVRTC)",
            search_dirs()
                .iter()
                .map(|d| d.display().to_string())
                .collect::<Vec<_>>()
                .join(", ")
        )
    } else {
        let list: Vec<String> = loaded
            .iter()
            .map(|(_, n)| {
                format!(
                    "NVRTC {}.{} ({})",
                    n.version.0,
                    n.version.1,
                    n.path.display()
                )
            })
            .collect();
        format!(
            "found {}, but the driver (CUDA {}) cannot load what a newer major version compiles",
            list.join(", "),
            driver.map_or("?".into(), |d| format!("{}.{}", d / 1000, (d % 1000) / 10))
        )
    };
    if !problems.is_empty() {
        reason.push_str(&format!("; refused: {}", problems.join("; ")));
    }
    Err(reason)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loaded_libnvrtc_folders_are_read_from_the_process_maps() {
        let maps = "\
7f00-7f10 r-xp 00000000 08:01 1 /venv/lib/python3.11/site-packages/nvidia/cu13/lib/libnvrtc.so.13
7f10-7f20 r--p 00000000 08:01 1 /venv/lib/python3.11/site-packages/nvidia/cu13/lib/libnvrtc.so.13
7f20-7f30 r-xp 00000000 08:01 2 /opt/builtins/libnvrtc-builtins.so.13.0
7f28-7f30 r-xp 00000000 08:01 2       /opt/x/libnvrtc.so.12
7f30-7f40 r-xp 00000000 08:01 3 /usr/lib/libc.so.6
7f40-7f50 rw-p 00000000 00:00 0 [heap]
7f50-7f60 rw-p 00000000 00:00 0
";
        assert_eq!(
            loaded_nvrtc_dirs(maps),
            vec![
                PathBuf::from("/venv/lib/python3.11/site-packages/nvidia/cu13/lib"),
                PathBuf::from("/opt/x"),
            ]
        );
        assert!(loaded_nvrtc_dirs("").is_empty());
    }

    #[test]
    fn this_code_is_found_in_its_own_mapping() {
        let maps = std::fs::read_to_string("/proc/self/maps").expect("Linux /proc");
        let own = own_object(&maps).expect("a mapping holds this function");
        assert!(own.is_file(), "{}", own.display());
        assert_eq!(
            own.canonicalize().ok(),
            std::env::current_exe()
                .ok()
                .and_then(|e| e.canonicalize().ok()),
            "a test binary's code is its executable"
        );
    }

    #[test]
    fn pip_wheel_folders_of_an_environment_are_searched() {
        let root = tempfile::tempdir().expect("temp dir");
        let site = root.path().join("lib/python3.11/site-packages");
        for wheel in ["cu13", "cuda_nvrtc", "cublas"] {
            std::fs::create_dir_all(site.join("nvidia").join(wheel).join("lib")).expect("mkdir");
        }
        std::fs::create_dir_all(site.join("nvidia/empty")).expect("mkdir");
        assert_eq!(site_packages(root.path()), vec![site.clone()]);
        assert_eq!(
            wheel_lib_dirs(&site),
            vec![
                site.join("nvidia/cu13/lib"),
                site.join("nvidia/cuda_nvrtc/lib"),
                site.join("nvidia/cublas/lib"),
            ]
            .into_iter()
            .collect::<std::collections::BTreeSet<_>>()
            .into_iter()
            .collect::<Vec<_>>()
        );
        assert!(site_packages(&root.path().join("missing")).is_empty());
    }

    #[test]
    fn the_newest_nvrtc_the_driver_can_run_is_chosen() {
        assert_eq!(choose(Some(13000), &[12, 13]), Some(13));
        assert_eq!(choose(Some(13020), &[13]), Some(13));
        assert_eq!(choose(Some(12080), &[12, 13]), Some(12));
        assert_eq!(
            choose(Some(12020), &[13]),
            None,
            "a 12.x driver cannot load NVRTC 13's output"
        );
        assert_eq!(
            choose(None, &[12, 13]),
            Some(13),
            "compiling only: the newest"
        );
        assert_eq!(choose(Some(13000), &[]), None);
    }
}
