//! Output files that appear complete or not at all, in folders other people may write to.
//!
//! Every output file of a run is first created under an unpredictable temporary name in its
//! destination folder (`.arraydrain-XXXXXX`, made exclusively by `tempfile`: create-new, so a
//! planted file or symlink at that name makes creation fail instead of being followed or
//! overwritten). A staged set ([`Staged`]) collects them and renames them all into place once
//! every one is complete, and a set dropped without committing removes every temporary file,
//! staged and scratch folder, claim and output folder it made. The temporary names are short,
//! so any output name that fits the file system fits its temporary name too.
//!
//! [`Staged`] is the one mechanism every writer of the crate uses (`convert`, `convert
//! --distributed`, `merge`, the `npy` writers; public, so the Python sinks use it too): files,
//! whole folders ([`Staged::folder`], renamed into place only where nothing is), claim files
//! ([`Staged::claim`], created only where nothing is) and the output folders a run makes. It is
//! input-aware: paths given to [`Staged::protect`] (files the run reads) and
//! [`Staged::protect_tree`] (folders it reads) can never be written, by any spelling or link.
//!
//! [`SafeDir`] is the other side: reading a folder other people may write to (a shard folder).
//! Its entries are opened relative to the open folder with `O_NOFOLLOW`, so a planted symbolic
//! link is refused, never followed; only regular files are read, and small records are read with
//! a size cap, so a FIFO or `/dev/zero` planted at a record's name neither hangs nor exhausts
//! memory.
//!
//! [`remove_all_before_exit`] removes the same things for a process that is about to exit: the
//! `arraydrain` command calls it on `SIGINT` and `SIGTERM` and then exits with the conventional
//! status (130, 143); the library installs no signal handler. Nothing can run
//! after `SIGKILL`: a leftover `.arraydrain-*` file or folder is then an incomplete output and safe
//! to delete.

use std::fs::File;
use std::io::{self, Read, Write};
use std::os::fd::OwnedFd;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, MutexGuard};

use crate::error::{Error, FileError, Result};

/// Prefix of every temporary file and folder.
pub const TEMP_PREFIX: &str = ".arraydrain-";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    /// A temporary file, removed unless renamed into place.
    File,
    /// A claim file this run created, removed when the run fails unless its folder holds
    /// something besides it and temporary entries (another process then relies on it).
    Claim,
    /// A private scratch folder (or a staged folder), removed with its contents.
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

/// Every temporary path of this process not yet put in place or removed, for
/// [`remove_all_before_exit`]. Creating, renaming and removing them happens under this lock, so
/// a cleanup on a signal never sees a half-done step.
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
        Kind::Claim if claim_is_shared(path) => Ok(()),
        Kind::Claim => std::fs::remove_file(path),
        Kind::Scratch => std::fs::remove_dir_all(path),
        Kind::MadeDir => std::fs::remove_dir(path),
    };
}

/// Whether the folder of the claim file `path` holds anything but it and temporary entries.
fn claim_is_shared(path: &Path) -> bool {
    let Ok(entries) = std::fs::read_dir(parent_of(path)) else {
        return true;
    };
    let own = path.file_name();
    entries.filter_map(|e| e.ok()).any(|e| {
        let name = e.file_name();
        Some(name.as_os_str()) != own && !name.to_string_lossy().starts_with(TEMP_PREFIX)
    })
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
        Ok(m) if m.is_dir() => Err(Error::File(FileError::PathConflict {
            path: dest.to_path_buf(),
            reason: "is a folder; an output file cannot replace it".into(),
        })),
        Ok(m) if !(m.is_file() || m.file_type().is_symlink()) => {
            Err(Error::File(FileError::PathConflict {
                path: dest.to_path_buf(),
                reason: "is not a regular file; an output file cannot replace it".into(),
            }))
        }
        _ => Ok(()),
    }
}

#[derive(Debug)]
struct StagedFile {
    id: u64,
    temp: PathBuf,
    dest: PathBuf,
}

/// A set of outputs written under temporary names and put in place together by
/// [`Staged::commit`]; dropped without committing (or cut short by [`remove_all_before_exit`]),
/// it removes every temporary file, staged and scratch folder, claim and output folder it made.
#[derive(Debug, Default)]
pub struct Staged {
    files: Vec<StagedFile>,
    folders: Vec<StagedFile>,
    claims: Vec<(u64, PathBuf)>,
    scratch: Vec<(u64, PathBuf)>,
    made_dirs: Vec<(u64, PathBuf)>,
    /// Inputs of the run: `(device, inode)` when they exist, and their normalized paths.
    inputs: Vec<(Option<(u64, u64)>, PathBuf)>,
    /// Folders of the run's inputs, normalized: nothing inside them is written.
    trees: Vec<PathBuf>,
    /// Random characters of temporary names (0: the default, 6); tests use fewer, so that every
    /// name can be planted in advance.
    name_chars: usize,
}

impl Staged {
    /// An empty set.
    pub fn new() -> Staged {
        Staged::default()
    }

    fn rand_bytes(&self) -> usize {
        if self.name_chars == 0 {
            6
        } else {
            self.name_chars
        }
    }

    /// Marks `path` as an input of the run: no output of this set may be that file, by any
    /// spelling or link (the same device and inode).
    pub fn protect(&mut self, path: &Path) {
        self.inputs.push((file_id(path), normalized(path)));
    }

    /// Marks the files of these `(device, inode)` pairs as inputs of the run (files already open,
    /// identified by `fstat`): no output of this set may be one of them.
    pub fn protect_ids(&mut self, ids: &[(u64, u64)]) {
        self.inputs.extend(
            ids.iter()
                .map(|&id| (Some(id), PathBuf::from("read by this run"))),
        );
    }

    /// Marks the folder `dir` as an input of the run: no output of this set may lie inside it
    /// (by any spelling or link), nor be the folder itself.
    pub fn protect_tree(&mut self, dir: &Path) {
        self.trees.push(normalized(dir));
    }

    /// Refuses `dest` when it is a protected input or lies inside a protected folder.
    ///
    /// # Errors
    /// [`FileError::PathConflict`] naming `dest` and the input.
    pub fn check_not_input(&self, dest: &Path) -> Result<()> {
        let key = normalized(dest);
        let id = file_id(dest);
        if let Some((_, input)) = self
            .inputs
            .iter()
            .find(|(iid, ikey)| *ikey == key || (id.is_some() && *iid == id))
        {
            return Err(Error::File(FileError::PathConflict {
                path: dest.to_path_buf(),
                reason: format!(
                    "names the input {}; an output never replaces an input",
                    input.display()
                ),
            }));
        }
        if let Some(tree) = self.trees.iter().find(|t| key.starts_with(t)) {
            return Err(Error::File(FileError::PathConflict {
                path: dest.to_path_buf(),
                reason: format!(
                    "lies inside {}, which this run reads; an output never replaces an input",
                    tree.display()
                ),
            }));
        }
        Ok(())
    }

    /// Creates `dir` and its missing parents, remembering which it made so a failed run removes
    /// them again (when empty).
    ///
    /// # Errors
    /// [`FileError::Io`] naming the folder.
    pub fn create_dir_all(&mut self, dir: &Path) -> Result<()> {
        self.check_not_input(dir)?;
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
            return Err(Error::File(FileError::PathConflict {
                path: dir.to_path_buf(),
                reason: "is not a folder".into(),
            }));
        }
        Ok(())
    }

    /// Creates the temporary file that will become `dest` (in `dest`'s folder, which must
    /// exist), returning its temporary path and the file, open for reading and writing.
    ///
    /// # Errors
    /// [`FileError::PathConflict`] when `dest` is a folder or an input; [`FileError::Io`] naming the
    /// folder when the file cannot be created there.
    pub fn file(&mut self, dest: &Path) -> Result<(PathBuf, File)> {
        if dest.file_name().is_none() {
            return Err(Error::File(FileError::PathConflict {
                path: dest.to_path_buf(),
                reason: "an output path needs a file name".into(),
            }));
        }
        check_destination(dest)?;
        self.check_not_input(dest)?;
        let dir = parent_of(dest);
        let mut live = live();
        let file = tempfile::Builder::new()
            .prefix(TEMP_PREFIX)
            .rand_bytes(self.rand_bytes())
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
    /// [`FileError::Io`] naming the folder it was to be made in.
    pub fn scratch_dir(&mut self, near: &Path) -> Result<PathBuf> {
        let dir = parent_of(near);
        let mut live = live();
        let made = tempfile::Builder::new()
            .prefix(TEMP_PREFIX)
            .rand_bytes(self.rand_bytes())
            .tempdir_in(dir)
            .map_err(|e| Error::io(dir, e))?;
        let path = made.keep();
        let id = register(&mut live, path.clone(), Kind::Scratch);
        self.scratch.push((id, path.clone()));
        Ok(path)
    }

    /// Stages `bytes` as the file `dest` ([`Staged::file`], then written).
    ///
    /// # Errors
    /// As [`Staged::file`]; [`FileError::NoSpace`] or [`FileError::Io`] when writing fails.
    pub fn write_file(&mut self, dest: &Path, bytes: &[u8]) -> Result<()> {
        let (temp, mut file) = self.file(dest)?;
        file.write_all(bytes)
            .and_then(|()| file.flush())
            .map_err(|e| write_error(&temp, e, bytes.len() as u64))
    }

    /// A folder that becomes `dest` on [`Staged::commit`]: created now under a temporary name
    /// beside `dest` (mode 0777 less the umask), filled by the caller, and renamed into place
    /// only where nothing is (`RENAME_NOREPLACE`): a folder that appeared at `dest` meanwhile
    /// fails the commit instead of being replaced. Until then it is removed with its contents.
    ///
    /// # Errors
    /// [`FileError::PathConflict`] when `dest` exists or is an input; [`FileError::Io`] naming the
    /// folder it was to be made in.
    pub fn folder(&mut self, dest: &Path) -> Result<PathBuf> {
        if dest.file_name().is_none() {
            return Err(Error::File(FileError::PathConflict {
                path: dest.to_path_buf(),
                reason: "an output folder needs a name".into(),
            }));
        }
        self.check_not_input(dest)?;
        if std::fs::symlink_metadata(dest).is_ok() {
            return Err(exists(dest));
        }
        let dir = parent_of(dest);
        let mut live = live();
        let made = tempfile::Builder::new()
            .prefix(TEMP_PREFIX)
            .rand_bytes(self.rand_bytes())
            .permissions(std::fs::Permissions::from_mode(0o777))
            .tempdir_in(dir)
            .map_err(|e| Error::io(dir, e))?;
        let temp = made.keep();
        let id = register(&mut live, temp.clone(), Kind::Scratch);
        self.folders.push(StagedFile {
            id,
            temp: temp.clone(),
            dest: dest.to_path_buf(),
        });
        Ok(temp)
    }

    /// Creates the file `dest` holding `bytes` only if nothing is at `dest` (written under a
    /// temporary name, then hard-linked into place: atomic, and never replacing anything).
    /// Returns `false`, changing nothing, when something is already there. A claim this set
    /// made is kept by [`Staged::commit`]; dropped without committing, the set removes it
    /// unless its folder holds something besides it and temporary entries (others rely on it).
    ///
    /// # Errors
    /// [`FileError::PathConflict`] for an input; [`FileError::Io`] or [`FileError::NoSpace`] when it cannot
    /// be written.
    pub fn claim(&mut self, dest: &Path, bytes: &[u8]) -> Result<bool> {
        self.check_not_input(dest)?;
        let dir = parent_of(dest);
        let (temp, temp_id) = {
            let mut live = live();
            let temp = tempfile::Builder::new()
                .prefix(TEMP_PREFIX)
                .rand_bytes(self.rand_bytes())
                .permissions(std::fs::Permissions::from_mode(0o666))
                .tempfile_in(dir)
                .map_err(|e| Error::io(dir, e))?;
            let id = register(&mut live, temp.path().to_path_buf(), Kind::File);
            (temp, id)
        };
        let result = (|| {
            let mut file = temp.as_file();
            file.write_all(bytes)
                .and_then(|()| file.flush())
                .map_err(|e| write_error(temp.path(), e, bytes.len() as u64))?;
            let mut live = live();
            let linked = match std::fs::hard_link(temp.path(), dest) {
                // File systems without hard links: a rename that replaces nothing.
                Err(e) if matches!(e.raw_os_error(), Some(libc::EPERM | libc::EOPNOTSUPP)) => {
                    rename_noreplace(temp.path(), dest)
                }
                other => other,
            };
            match linked {
                Ok(()) => {
                    let id = register(&mut live, dest.to_path_buf(), Kind::Claim);
                    self.claims.push((id, dest.to_path_buf()));
                    Ok(true)
                }
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => Ok(false),
                Err(e) => Err(Error::io(dest, e)),
            }
        })();
        let mut live = live();
        drop(temp); // removes the temporary name
        unregister(&mut live, temp_id);
        result
    }

    /// Renames every staged file into place. Every destination is checked first, so a
    /// destination that cannot be replaced fails the run before any output moves; should a
    /// rename still fail, the outputs already moved are removed again and the error returned.
    ///
    /// # Errors
    /// [`FileError::PathConflict`] for a destination that became a folder; [`FileError::Io`] naming
    /// the destination whose rename failed.
    pub fn commit(mut self) -> Result<Vec<PathBuf>> {
        let mut live = live();
        for f in &self.files {
            check_destination(&f.dest)?;
            self.check_not_input(&f.dest)?;
        }
        for f in &self.folders {
            if std::fs::symlink_metadata(&f.dest).is_ok() {
                return Err(exists(&f.dest));
            }
        }
        let mut moved: Vec<(&Path, Kind)> = Vec::new();
        let undo = |moved: Vec<(&Path, Kind)>| {
            for (m, kind) in moved {
                remove(m, kind);
            }
        };
        for f in &self.files {
            if let Err(e) = std::fs::rename(&f.temp, &f.dest) {
                undo(moved);
                return Err(Error::io(&f.dest, e));
            }
            moved.push((&f.dest, Kind::File));
        }
        for f in &self.folders {
            if let Err(e) = rename_noreplace(&f.temp, &f.dest) {
                undo(moved);
                return Err(match e.raw_os_error() {
                    Some(libc::EEXIST | libc::ENOTEMPTY) => exists(&f.dest),
                    _ => Error::io(&f.dest, e),
                });
            }
            moved.push((&f.dest, Kind::Scratch));
        }
        let mut files = std::mem::take(&mut self.files);
        files.append(&mut self.folders);
        for f in &files {
            unregister(&mut live, f.id);
        }
        for (id, _) in self.claims.drain(..) {
            unregister(&mut live, id);
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
        for (id, claim) in self.claims.drain(..) {
            remove(&claim, Kind::Claim);
            unregister(&mut live, id);
        }
        for f in self.folders.drain(..) {
            remove(&f.temp, Kind::Scratch);
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

/// Renames `from` to `to` only if nothing is at `to` (`renameat2(RENAME_NOREPLACE)`). Where the
/// file system does not support that flag (NFS, some FUSE mounts: `EINVAL`, `ENOSYS`,
/// `EOPNOTSUPP`), a folder falls back to a plain `rename`, which still fails onto a non-empty
/// folder (`ENOTEMPTY`/`EEXIST`) and never writes through a link; a file then fails with
/// `EEXIST` when something is there (checked just before, so a rename could only replace what
/// appeared in between).
fn rename_noreplace(from: &Path, to: &Path) -> io::Result<()> {
    use rustix::fs::{renameat_with, RenameFlags, CWD};
    match renameat_with(CWD, from, CWD, to, RenameFlags::NOREPLACE) {
        Ok(()) => Ok(()),
        Err(e)
            if e == rustix::io::Errno::INVAL
                || e == rustix::io::Errno::NOSYS
                || e == rustix::io::Errno::OPNOTSUPP =>
        {
            let from_dir = std::fs::symlink_metadata(from).is_ok_and(|m| m.is_dir());
            if !from_dir && std::fs::symlink_metadata(to).is_ok() {
                return Err(io::Error::from_raw_os_error(libc::EEXIST));
            }
            std::fs::rename(from, to)
        }
        Err(e) => Err(e.into()),
    }
}

fn exists(dest: &Path) -> Error {
    Error::File(FileError::PathConflict {
        path: dest.to_path_buf(),
        reason: "already exists; an output folder is only put where nothing is".into(),
    })
}

/// Device and inode of an existing file (following links).
pub(crate) fn file_id(path: &Path) -> Option<(u64, u64)> {
    std::fs::metadata(path).ok().map(|m| (m.dev(), m.ino()))
}

/// `path` made absolute, its longest existing part resolved (links and `..`), the rest
/// appended: two spellings of one output compare equal even before it exists.
pub(crate) fn normalized(path: &Path) -> PathBuf {
    let absolute = std::path::absolute(path).unwrap_or_else(|_| path.to_path_buf());
    let mut rest = Vec::new();
    let mut at = absolute.as_path();
    loop {
        if let Ok(real) = at.canonicalize() {
            let mut out = real;
            for part in rest.iter().rev() {
                out.push(part);
            }
            return out;
        }
        match (at.parent(), at.file_name()) {
            (Some(parent), Some(name)) => {
                rest.push(name.to_os_string());
                at = parent;
            }
            _ => return absolute,
        }
    }
}

/// Removes every temporary file and folder of this process (what each run in progress would
/// have removed had it failed), for a process about to exit on a signal: the `arraydrain`
/// command calls it on `SIGINT` / `SIGTERM` from a thread that waits for them (never from a
/// signal handler). The list of temporary paths stays locked afterwards, so that no thread can
/// create more: nothing may be staged in this process after the call.
pub fn remove_all_before_exit() {
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

/// Turns an I/O error from writing `path` that means "no room" (`ENOSPC`, `EDQUOT`, or
/// `EFBIG` for a file larger than the process may write) into [`FileError::NoSpace`], naming the
/// file system; any other error stays an [`FileError::Io`].
pub(crate) fn write_error(path: &Path, e: io::Error, bytes: u64) -> Error {
    match e.raw_os_error() {
        Some(libc::ENOSPC | libc::EFBIG | libc::EDQUOT) => Error::File(FileError::NoSpace {
            path: path.to_path_buf(),
            device: device_of(path),
            bytes,
            source: e,
        }),
        _ => Error::io(path, e),
    }
}

/// [`write_error`] over an [`Error`]: an [`FileError::Io`] of a "no room" kind becomes
/// [`FileError::NoSpace`]; everything else is returned as it is.
pub(crate) fn space_error(err: Error, bytes: u64) -> Error {
    match err {
        Error::File(FileError::Io { path, source }) => write_error(&path, source, bytes),
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

// ---- reading folders other people may write to ----------------------------------------------

/// A folder opened once, whose entries are opened relative to the open folder without following
/// symbolic links: what it reads is inside it, whatever is planted in it meanwhile (see the
/// module docs). Errors about an entry name the entry, never what a link there points to.
#[derive(Debug)]
pub struct SafeDir {
    fd: OwnedFd,
    path: PathBuf,
}

/// What a [`SafeDir`] entry is, without following links.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EntryKind {
    /// A regular file.
    File,
    /// A folder.
    Dir,
    /// A symbolic link.
    Link,
    /// A FIFO, socket or device.
    Other,
}

impl SafeDir {
    /// Opens the folder `path` (the caller's own path: links in it are the caller's choice).
    ///
    /// # Errors
    /// [`FileError::Io`] naming the folder.
    pub fn open(path: &Path) -> Result<SafeDir> {
        use rustix::fs::{Mode, OFlags};
        let fd = rustix::fs::open(
            path,
            OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
            Mode::empty(),
        )
        .map_err(|e| Error::io(path, e.into()))?;
        Ok(SafeDir {
            fd,
            path: path.to_path_buf(),
        })
    }

    /// The folder's path, as given to [`SafeDir::open`] (joined with the entry names below it).
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The names of the folder's entries (`.` and `..` left out; names that are not UTF-8 are
    /// converted lossily), unsorted.
    ///
    /// # Errors
    /// [`FileError::Io`] naming the folder.
    pub fn names(&self) -> Result<Vec<String>> {
        let io = |e: rustix::io::Errno| Error::io(&self.path, e.into());
        let dir = rustix::fs::Dir::read_from(&self.fd).map_err(io)?;
        let mut out = Vec::new();
        for entry in dir {
            let entry = entry.map_err(io)?;
            let name = entry.file_name().to_string_lossy();
            if name != "." && name != ".." {
                out.push(name.into_owned());
            }
        }
        Ok(out)
    }

    /// What the entry `name` is, links not followed; `None` when there is none.
    pub fn kind(&self, name: &str) -> Option<EntryKind> {
        use rustix::fs::{AtFlags, FileType};
        if !plain_entry(name) {
            return None;
        }
        let st = rustix::fs::statat(&self.fd, name, AtFlags::SYMLINK_NOFOLLOW).ok()?;
        Some(match FileType::from_raw_mode(st.st_mode) {
            FileType::RegularFile => EntryKind::File,
            FileType::Directory => EntryKind::Dir,
            FileType::Symlink => EntryKind::Link,
            _ => EntryKind::Other,
        })
    }

    fn entry_error(&self, name: &str, e: rustix::io::Errno, want: &str) -> Error {
        let path = self.path.join(name);
        let reason = match (e, self.kind(name)) {
            (_, Some(EntryKind::Link)) => {
                format!("is a symbolic link, not {want}; links are not followed out of this folder")
            }
            (rustix::io::Errno::LOOP, _) => {
                format!("is a symbolic link, not {want}; links are not followed out of this folder")
            }
            (rustix::io::Errno::NOTDIR, _) => format!("is not {want}"),
            _ => return Error::io(path, e.into()),
        };
        Error::File(FileError::BadFile { path, reason })
    }

    /// Opens the sub-folder `name` (one plain name, not a link).
    ///
    /// # Errors
    /// [`FileError::BadFile`] naming the entry for a link, a non-folder or a name that is not a
    /// plain entry name; [`FileError::Io`] otherwise.
    pub fn open_dir(&self, name: &str) -> Result<SafeDir> {
        use rustix::fs::{Mode, OFlags};
        self.check_name(name)?;
        let fd = rustix::fs::openat(
            &self.fd,
            name,
            OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
            Mode::empty(),
        )
        .map_err(|e| self.entry_error(name, e, "a folder"))?;
        Ok(SafeDir {
            fd,
            path: self.path.join(name),
        })
    }

    /// Opens the regular file `name` for reading (one plain name, not a link). It is opened
    /// non-blocking, so a FIFO there is refused at once instead of waiting for a writer.
    ///
    /// # Errors
    /// [`FileError::BadFile`] naming the entry for a link, a folder, a FIFO, socket or device;
    /// [`FileError::Io`] otherwise.
    pub fn open_file(&self, name: &str) -> Result<File> {
        use rustix::fs::{Mode, OFlags};
        self.check_name(name)?;
        let fd = rustix::fs::openat(
            &self.fd,
            name,
            OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::NONBLOCK | OFlags::NOCTTY | OFlags::CLOEXEC,
            Mode::empty(),
        )
        .map_err(|e| self.entry_error(name, e, "a regular file"))?;
        let file = File::from(fd);
        let path = self.path.join(name);
        let meta = file.metadata().map_err(|e| Error::io(&path, e))?;
        if !meta.is_file() {
            return Err(Error::File(FileError::BadFile {
                path,
                reason: "is not a regular file (a folder, FIFO, socket or device)".into(),
            }));
        }
        Ok(file)
    }

    /// Reads the regular file `name` whole when it is at most `cap` bytes (`what` names it in
    /// the error).
    ///
    /// # Errors
    /// As [`SafeDir::open_file`]; [`FileError::BadFile`] when it is larger than `cap`.
    pub fn read_capped(&self, name: &str, cap: u64, what: &str) -> Result<Vec<u8>> {
        let file = self.open_file(name)?;
        let path = self.path.join(name);
        let too_big = |len: u64| {
            Error::File(FileError::BadFile {
                path: path.clone(),
                reason: format!("is {len} bytes or more; {what} is at most {cap} bytes"),
            })
        };
        let len = file.metadata().map_err(|e| Error::io(&path, e))?.len();
        if len > cap {
            return Err(too_big(len));
        }
        let mut out = Vec::with_capacity(len as usize);
        file.take(cap + 1)
            .read_to_end(&mut out)
            .map_err(|e| Error::io(&path, e))?;
        if out.len() as u64 > cap {
            return Err(too_big(out.len() as u64));
        }
        Ok(out)
    }

    fn check_name(&self, name: &str) -> Result<()> {
        if plain_entry(name) {
            Ok(())
        } else {
            Err(Error::File(FileError::BadFile {
                path: self.path.join(name),
                reason: "is not one plain entry name".into(),
            }))
        }
    }
}

fn plain_entry(name: &str) -> bool {
    !name.is_empty() && name != "." && name != ".." && !name.contains(['/', '\0'])
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

    /// With one random character there are 62 temporary names: all of them are planted as links
    /// to a victim, so the only way a file can be made is by following one. None is followed.
    #[test]
    fn links_planted_at_every_temporary_name_are_never_followed() {
        let root = tempfile::tempdir().unwrap();
        let victim = root.path().join("victim");
        std::fs::write(&victim, b"precious").unwrap();
        let out = root.path().join("out");
        std::fs::create_dir(&out).unwrap();
        let chars = ('a'..='z').chain('A'..='Z').chain('0'..='9');
        for c in chars.clone() {
            std::os::unix::fs::symlink(&victim, out.join(format!("{TEMP_PREFIX}{c}"))).unwrap();
        }
        let planted = || std::fs::read_dir(&out).unwrap().count();
        let mut s = Staged::new();
        s.name_chars = 1;
        assert!(s.file(&out.join("x.npy")).is_err());
        assert!(s.folder(&out.join("part")).is_err());
        assert!(s.claim(&out.join("manifest.json"), b"{}").is_err());
        assert!(s.scratch_dir(&out.join("x.npy")).is_err());
        assert_eq!(std::fs::read(&victim).unwrap(), b"precious");
        assert_eq!(planted(), 62);
        // One name freed: that one is used, and still no link is followed.
        std::fs::remove_file(out.join(format!("{TEMP_PREFIX}q"))).unwrap();
        let (temp, mut file) = s.file(&out.join("x.npy")).unwrap();
        assert_eq!(temp, out.join(format!("{TEMP_PREFIX}q")));
        file.write_all(b"output").unwrap();
        assert_eq!(s.commit().unwrap(), vec![out.join("x.npy")]);
        assert_eq!(std::fs::read(out.join("x.npy")).unwrap(), b"output");
        assert_eq!(std::fs::read(&victim).unwrap(), b"precious");
        assert_eq!(planted(), 62);
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
