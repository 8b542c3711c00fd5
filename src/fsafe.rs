//! Output files that appear complete or not at all, in folders other people may write to.
//!
//! Every output file of a run is first created under an unpredictable temporary name in its
//! destination folder (`.arraydrain-XXXXXX`, made exclusively by `tempfile`: create-new, so a
//! planted file or symlink at that name makes creation fail instead of being followed or
//! overwritten). A staged set (crate-internal) collects them and renames them all into place
//! once every one is complete, and a set dropped without committing removes every temporary file,
//! scratch folder and output folder it made. The temporary names are short, so any output name
//! that fits the file system fits its temporary name too.
//!
//! [`cleanup_on_signals`] (the command line installs it) makes `SIGINT` and `SIGTERM` remove the
//! same things before the process exits with the conventional status (130, 143). Nothing can run
//! after `SIGKILL`: a leftover `.arraydrain-*` file or folder is then an incomplete output and safe
//! to delete.

use std::fs::File;
use std::io;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, MutexGuard};

use crate::error::{Error, Result};

/// Prefix of every temporary file and folder.
pub const TEMP_PREFIX: &str = ".arraydrain-";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    /// A temporary file, removed unless renamed into place.
    File,
    /// A private scratch folder, removed with its contents.
    Scratch,
    /// An output folder this run created, removed (only if empty) when the run fails.
    MadeDir,
}

#[derive(Debug)]
struct Live {
    id: u64,
    path: PathBuf,
    kind: Kind,
}

/// Every temporary path of this process not yet put in place or removed, for the signal
/// handler. Creating, renaming and removing them happens under this lock, so a signal never
/// sees a half-done step.
static LIVE: Mutex<Vec<Live>> = Mutex::new(Vec::new());
static NEXT_ID: AtomicU64 = AtomicU64::new(1);

fn live() -> MutexGuard<'static, Vec<Live>> {
    // A panic elsewhere while holding the lock leaves the list itself intact.
    LIVE.lock().unwrap_or_else(|e| e.into_inner())
}

fn register(live: &mut Vec<Live>, path: PathBuf, kind: Kind) -> u64 {
    let id = NEXT_ID.fetch_add(1, Ordering::Relaxed);
    live.push(Live { id, path, kind });
    id
}

fn unregister(live: &mut Vec<Live>, id: u64) {
    live.retain(|l| l.id != id);
}

fn remove(path: &Path, kind: Kind) {
    // Best effort: the path may already be gone, and a failed cleanup must not hide the
    // failure that caused it.
    let _ = match kind {
        Kind::File => std::fs::remove_file(path),
        Kind::Scratch => std::fs::remove_dir_all(path),
        Kind::MadeDir => std::fs::remove_dir(path),
    };
}

/// The folder a path's file goes in (`.` for a bare file name).
fn parent_of(path: &Path) -> &Path {
    match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    }
}

/// Refuses a destination that an output file cannot replace: an existing folder (or anything
/// else that is not a regular file or a symlink).
fn check_destination(dest: &Path) -> Result<()> {
    match std::fs::symlink_metadata(dest) {
        Ok(m) if m.is_dir() => Err(Error::PathConflict {
            path: dest.to_path_buf(),
            reason: "is a folder; an output file cannot replace it".into(),
        }),
        Ok(m) if !(m.is_file() || m.file_type().is_symlink()) => Err(Error::PathConflict {
            path: dest.to_path_buf(),
            reason: "is not a regular file; an output file cannot replace it".into(),
        }),
        _ => Ok(()),
    }
}

#[derive(Debug)]
struct StagedFile {
    id: u64,
    temp: PathBuf,
    dest: PathBuf,
}

/// A set of output files written under temporary names and renamed into place together.
#[derive(Debug, Default)]
pub(crate) struct Staged {
    files: Vec<StagedFile>,
    scratch: Vec<(u64, PathBuf)>,
    made_dirs: Vec<(u64, PathBuf)>,
}

impl Staged {
    pub(crate) fn new() -> Staged {
        Staged::default()
    }

    /// Creates `dir` and its missing parents, remembering which it made so a failed run removes
    /// them again (when empty).
    ///
    /// # Errors
    /// [`Error::Io`] naming the folder.
    pub(crate) fn create_dir_all(&mut self, dir: &Path) -> Result<()> {
        let mut missing = Vec::new();
        let mut at = Some(dir);
        while let Some(d) = at.filter(|d| !d.as_os_str().is_empty()) {
            match std::fs::symlink_metadata(d) {
                Ok(_) => break,
                Err(_) => missing.push(d.to_path_buf()),
            }
            at = d.parent();
        }
        let mut live = live();
        for d in missing.into_iter().rev() {
            match std::fs::create_dir(&d) {
                Ok(()) => {
                    let id = register(&mut live, d.clone(), Kind::MadeDir);
                    self.made_dirs.push((id, d));
                }
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
                Err(e) => return Err(Error::io(d, e)),
            }
        }
        drop(live);
        if !dir.is_dir() {
            return Err(Error::PathConflict {
                path: dir.to_path_buf(),
                reason: "is not a folder".into(),
            });
        }
        Ok(())
    }

    /// Creates the temporary file that will become `dest` (in `dest`'s folder, which must
    /// exist), returning its temporary path and the file, open for reading and writing.
    ///
    /// # Errors
    /// [`Error::PathConflict`] when `dest` is a folder; [`Error::Io`] naming the folder when the
    /// file cannot be created there.
    pub(crate) fn file(&mut self, dest: &Path) -> Result<(PathBuf, File)> {
        if dest.file_name().is_none() {
            return Err(Error::PathConflict {
                path: dest.to_path_buf(),
                reason: "an output path needs a file name".into(),
            });
        }
        check_destination(dest)?;
        let dir = parent_of(dest);
        let mut live = live();
        let file = tempfile::Builder::new()
            .prefix(TEMP_PREFIX)
            .rand_bytes(6)
            // What a plain create would give (the umask applies), not tempfile's private 0600:
            // the file becomes an ordinary output.
            .permissions(std::fs::Permissions::from_mode(0o666))
            .tempfile_in(dir)
            .map_err(|e| Error::io(dir, e))?;
        let (file, temp) = file.keep().map_err(|e| Error::io(dir, e.error))?;
        let id = register(&mut live, temp.clone(), Kind::File);
        self.files.push(StagedFile {
            id,
            temp: temp.clone(),
            dest: dest.to_path_buf(),
        });
        Ok((temp, file))
    }

    /// A private scratch folder (`.arraydrain-XXXXXX`, mode 0700) beside `near`, removed with
    /// its contents when this set is dropped, committed or not.
    ///
    /// # Errors
    /// [`Error::Io`] naming the folder it was to be made in.
    pub(crate) fn scratch_dir(&mut self, near: &Path) -> Result<PathBuf> {
        let dir = parent_of(near);
        let mut live = live();
        let made = tempfile::Builder::new()
            .prefix(TEMP_PREFIX)
            .rand_bytes(6)
            .tempdir_in(dir)
            .map_err(|e| Error::io(dir, e))?;
        let path = made.keep();
        let id = register(&mut live, path.clone(), Kind::Scratch);
        self.scratch.push((id, path.clone()));
        Ok(path)
    }

    /// Renames every staged file into place. Every destination is checked first, so a
    /// destination that cannot be replaced fails the run before any output moves; should a
    /// rename still fail, the outputs already moved are removed again and the error returned.
    ///
    /// # Errors
    /// [`Error::PathConflict`] for a destination that became a folder; [`Error::Io`] naming
    /// the destination whose rename failed.
    pub(crate) fn commit(mut self) -> Result<Vec<PathBuf>> {
        let mut live = live();
        for f in &self.files {
            check_destination(&f.dest)?;
        }
        let mut moved: Vec<&Path> = Vec::new();
        for f in &self.files {
            if let Err(e) = std::fs::rename(&f.temp, &f.dest) {
                for m in moved {
                    remove(m, Kind::File);
                }
                return Err(Error::io(&f.dest, e));
            }
            moved.push(&f.dest);
        }
        let files = std::mem::take(&mut self.files);
        for f in &files {
            unregister(&mut live, f.id);
        }
        for (id, _) in self.made_dirs.drain(..) {
            unregister(&mut live, id);
        }
        drop(live);
        Ok(files.into_iter().map(|f| f.dest).collect())
    }
}

impl Drop for Staged {
    fn drop(&mut self) {
        let mut live = live();
        for f in self.files.drain(..) {
            remove(&f.temp, Kind::File);
            unregister(&mut live, f.id);
        }
        for (id, dir) in self.scratch.drain(..) {
            remove(&dir, Kind::Scratch);
            unregister(&mut live, id);
        }
        for (id, dir) in self.made_dirs.drain(..).rev() {
            remove(&dir, Kind::MadeDir);
            unregister(&mut live, id);
        }
    }
}

/// Removes every temporary path of this process (what a run would have removed had it failed).
fn remove_all_live() {
    let mut live = live();
    let mut all = std::mem::take(&mut *live);
    // Files first, then scratch folders, then the output folders made for them, newest first.
    all.sort_by_key(|l| (l.kind as u8, std::cmp::Reverse(l.id)));
    for l in &all {
        remove(&l.path, l.kind);
    }
    // The lock stays held: the process exits next, and no other thread may create more.
    std::mem::forget(live);
}

/// Makes `SIGINT` and `SIGTERM` remove every temporary file and folder of this process (see
/// the module docs) and exit with status 128 + the signal (130, 143). A background thread waits
/// for the signals; the cleanup runs there, not in a signal handler.
///
/// # Errors
/// [`Error::Io`] when the handlers cannot be installed.
pub fn cleanup_on_signals() -> Result<()> {
    use signal_hook::consts::{SIGINT, SIGTERM};
    let mut signals = signal_hook::iterator::Signals::new([SIGINT, SIGTERM])
        .map_err(|e| Error::io("signal handlers", e))?;
    std::thread::Builder::new()
        .name("arraydrain-signals".into())
        .spawn(move || {
            if let Some(signal) = signals.forever().next() {
                remove_all_live();
                std::process::exit(128 + signal);
            }
        })
        .map_err(|e| Error::io("signal handlers", e))?;
    Ok(())
}

/// Turns an I/O error from writing `path` that means "no room" (`ENOSPC`, `EDQUOT`, or
/// `EFBIG` for a file larger than the process may write) into [`Error::NoSpace`], naming the
/// file system; any other error stays an [`Error::Io`].
pub(crate) fn write_error(path: &Path, e: io::Error, bytes: u64) -> Error {
    match e.raw_os_error() {
        Some(libc::ENOSPC | libc::EFBIG | libc::EDQUOT) => Error::NoSpace {
            path: path.to_path_buf(),
            device: device_of(path),
            bytes,
            source: e,
        },
        _ => Error::io(path, e),
    }
}

/// [`write_error`] over an [`Error`]: an [`Error::Io`] of a "no room" kind becomes
/// [`Error::NoSpace`]; everything else is returned as it is.
pub(crate) fn space_error(err: Error, bytes: u64) -> Error {
    match err {
        Error::Io { path, source } => write_error(&path, source, bytes),
        other => other,
    }
}

/// The file system `path` (or its folder) is on, as `SOURCE (mounted on DIR)` from
/// `/proc/self/mountinfo`; the folder itself when that cannot be read.
pub(crate) fn device_of(path: &Path) -> String {
    let dir = parent_of(path);
    let meta = std::fs::metadata(path).or_else(|_| std::fs::metadata(dir));
    let fallback = || format!("the file system of {}", dir.display());
    let Ok(meta) = meta else {
        return fallback();
    };
    let dev = meta.dev();
    // Linux's encoding of major:minor in a dev_t.
    let major = ((dev >> 8) & 0xfff) | ((dev >> 32) & !0xfff);
    let minor = (dev & 0xff) | ((dev >> 12) & !0xff);
    let want = format!("{major}:{minor}");
    let info = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    mount_of(&info, &want).unwrap_or_else(fallback)
}

/// The mount whose `major:minor` is `want` in the text of `/proc/self/mountinfo`.
fn mount_of(info: &str, want: &str) -> Option<String> {
    info.lines().find_map(|line| {
        let fields: Vec<&str> = line.split(' ').collect();
        if fields.get(2) != Some(&want) {
            return None;
        }
        let mount_point = fields.get(4)?;
        let sep = fields.iter().position(|f| *f == "-")?;
        let source = fields.get(sep + 2)?;
        Some(format!("{source} (mounted on {mount_point})"))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mountinfo_lines_name_the_device() {
        let info = "22 1 253:1 / / rw,relatime shared:1 - ext4 /dev/vda rw\n\
                    30 22 0:27 / /tmp rw,nosuid shared:9 - tmpfs tmpfs rw,size=100k\n";
        assert_eq!(
            mount_of(info, "0:27").as_deref(),
            Some("tmpfs (mounted on /tmp)")
        );
        assert_eq!(
            mount_of(info, "253:1").as_deref(),
            Some("/dev/vda (mounted on /)")
        );
        assert_eq!(mount_of(info, "9:9"), None);
    }

    #[test]
    fn uncommitted_files_and_made_folders_are_removed() {
        let root = tempfile::tempdir().unwrap();
        let out = root.path().join("a/b");
        let mut s = Staged::new();
        s.create_dir_all(&out).unwrap();
        let (temp, _) = s.file(&out.join("x.npy")).unwrap();
        let scratch = s.scratch_dir(&out.join("x.npy")).unwrap();
        let name = temp.file_name().unwrap().to_str().unwrap().to_string();
        assert!(name.starts_with(TEMP_PREFIX) && name.len() == TEMP_PREFIX.len() + 6);
        assert!(temp.exists() && scratch.is_dir());
        drop(s);
        assert!(!root.path().join("a").exists());

        let mut s = Staged::new();
        s.create_dir_all(&out).unwrap();
        let (temp, _) = s.file(&out.join("x.npy")).unwrap();
        let scratch = s.scratch_dir(&out.join("x.npy")).unwrap();
        assert_eq!(s.commit().unwrap(), vec![out.join("x.npy")]);
        assert!(out.join("x.npy").is_file() && !temp.exists() && !scratch.exists());
        assert!(live().iter().all(|l| !l.path.starts_with(root.path())));
    }
}
