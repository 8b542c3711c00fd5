//! `Writer` on a full disk, for every destination (a mapped `.npy`, a `.npz` packed at close, a
//! folder, and writers of several processes joined into one output): the failure is a
//! [`FileError::NoSpace`] naming the file and its file system, never a `SIGBUS` or `SIGXFSZ`
//! death; nothing appears at the destination and no temporary `.arraydrain-*` file or folder is
//! left behind. Space reserved when a writer opened stays its own: another file eating the disk
//! afterwards neither faults the writes through the map nor spoils the output.
//!
//! Each case runs in a child process (this test binary, re-run on its `#[ignore]`d test
//! [`child`] with the case in [`CASE`]), in one of two settings:
//!
//! - a file size limit (`RLIMIT_FSIZE`, set by `ulimit -f` in a `bash` wrapper that ignores
//!   `SIGXFSZ`, as tests/convert_hostile.rs does): a file growing past it fails with `EFBIG`
//!   where a full file system fails with `ENOSPC`. Needs no privileges: always runs;
//! - a real full file system: a small tmpfs mounted in a private mount namespace (`unshare
//!   -rm`), where the disk can also be filled by another file after the writer opened. Where
//!   user namespaces are not allowed, these cases say why and are skipped; the limit cases
//!   still run.
//!
//! The child checks everything it can see (its tmpfs vanishes with it) and ends by printing
//! [`DONE`]; the parent checks that it exited normally (no signal) and, for the limit cases,
//! that the folder is empty.

use std::fs;
use std::io::Write;
use std::os::unix::fs::MetadataExt;
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use arraydrain::npy;
use arraydrain::{DType, Destination, Error, FileError, Writer, WriterBuilder};

/// The case a child process runs (see the module docs).
const CASE: &str = "ARRAYDRAIN_WRITER_HOSTILE_CASE";
/// The folder it writes in.
const DIR: &str = "ARRAYDRAIN_WRITER_HOSTILE_DIR";
/// For a joining child: the creator's shared path, and the destination kind.
const SHARED: &str = "ARRAYDRAIN_WRITER_HOSTILE_SHARED";
const KIND: &str = "ARRAYDRAIN_WRITER_HOSTILE_KIND";
/// What a child prints once every check passed.
const DONE: &str = "writer-hostile-child-done";

/// What a previous output at the destination holds (it must survive a failed writer).
const PREVIOUS: &[u8] = b"a previous output, kept when a writer fails";
/// The file size limit of the limit cases, KiB.
const LIMIT_KIB: u64 = 256;
/// The size of the tmpfs of the full-disk cases, KiB.
const TMPFS_KIB: u64 = 1024;

// ---- the parent side ------------------------------------------------------------------------

fn scratch() -> tempfile::TempDir {
    tempfile::Builder::new()
        .prefix("writer-hostile-")
        .tempdir_in(env!("CARGO_TARGET_TMPDIR"))
        .unwrap()
}

fn text(o: &Output) -> String {
    format!(
        "status {:?} (signal {:?})\nstdout:\n{}\nstderr:\n{}",
        o.status,
        o.status.signal(),
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

/// Runs `cmd` to completion, killing it (and failing the test) if it takes longer than `secs`.
fn run_within(cmd: Command, secs: u64) -> Output {
    try_run_within(cmd, secs).expect("spawn")
}

/// [`run_within`], or the error of starting `cmd`.
fn try_run_within(mut cmd: Command, secs: u64) -> std::io::Result<Output> {
    let mut child = cmd.stdout(Stdio::piped()).stderr(Stdio::piped()).spawn()?;
    let deadline = Instant::now() + Duration::from_secs(secs);
    while child.try_wait().unwrap().is_none() {
        if Instant::now() > deadline {
            child.kill().unwrap();
            let out = child.wait_with_output().unwrap();
            panic!("still running after {secs} s (killed):\n{}", text(&out));
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    Ok(child.wait_with_output().unwrap())
}

/// The arguments that make this test binary run [`child`] alone.
fn child_args(cmd: &mut Command) {
    cmd.arg(std::env::current_exe().unwrap()).args([
        "child",
        "--exact",
        "--ignored",
        "--nocapture",
        "--test-threads=1",
    ]);
}

/// Runs `case` in a child under a file size limit of [`LIMIT_KIB`].
fn under_limit(case: &str, dir: &Path) -> Output {
    let mut cmd = Command::new("bash");
    cmd.arg("-c")
        .arg(r#"trap '' XFSZ; ulimit -f "$1"; shift; exec "$@""#)
        .arg("bash")
        .arg(LIMIT_KIB.to_string());
    child_args(&mut cmd);
    cmd.env(CASE, case).env(DIR, dir);
    run_within(cmd, 120)
}

/// Runs `case` in a child whose `mount` is a fresh tmpfs of [`TMPFS_KIB`] in a private mount
/// namespace; `None` (with the reason printed) where that cannot be made.
fn on_small_tmpfs(case: &str, mount: &Path) -> Option<Output> {
    let mut cmd = Command::new("unshare");
    cmd.args(["-rm", "sh", "-c"])
        .arg(r#"mount -t tmpfs -o size="$1"k tmpfs "$2" || exit 77; shift 2; exec "$@""#)
        .arg("sh")
        .arg(TMPFS_KIB.to_string())
        .arg(mount);
    child_args(&mut cmd);
    cmd.env(CASE, case).env(DIR, mount);
    let out = match try_run_within(cmd, 120) {
        Err(e) => {
            eprintln!("skipped {case}: `unshare` cannot run here ({e})");
            return None;
        }
        Ok(out) => out,
    };
    // `unshare` fails (status 1, saying so) before running anything when user namespaces are
    // not allowed; the mount fails with 77. A child that failed otherwise fails the test.
    let refused = (out.status.code() == Some(1)
        && String::from_utf8_lossy(&out.stderr).starts_with("unshare:"))
        || out.status.code() == Some(77);
    if refused {
        eprintln!(
            "skipped {case}: no private tmpfs (user namespaces or tmpfs mounts not allowed): {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
        return None;
    }
    Some(out)
}

/// Why the child of `case` did not pass (it died of a signal, or failed a check), if it did not.
fn child_failure(case: &str, out: &Output) -> Option<String> {
    if let Some(sig) = out.status.signal() {
        return Some(format!(
            "{case}: the child died of signal {sig}:\n{}",
            text(out)
        ));
    }
    if !(out.status.success() && String::from_utf8_lossy(&out.stdout).contains(DONE)) {
        return Some(format!("{case}:\n{}", text(out)));
    }
    None
}

fn assert_child_done(case: &str, out: &Output) {
    if let Some(failure) = child_failure(case, out) {
        panic!("{failure}");
    }
}

/// Every path under `dir`.
fn tree(dir: &Path) -> Vec<PathBuf> {
    let mut found = Vec::new();
    for e in fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() && !p.is_symlink() {
            found.extend(tree(&p));
        }
        found.push(p);
    }
    found.sort();
    found
}

#[test]
fn under_a_file_size_limit_every_destination_fails_typed_and_leaves_nothing() {
    let cases = [
        "open-npy",
        "open-dir",
        "open-npz",
        "close-npz",
        "close-npz-compressed",
        "close-npz-joined",
        "joined-npy-fits",
    ];
    let mut failures = Vec::new();
    for case in cases {
        let s = scratch();
        let dir = s.path().join("out");
        fs::create_dir(&dir).unwrap();
        // A previous output where a failing writer's goes: it must survive, byte for byte.
        let previous = match case {
            "open-npy" => Some(dir.join("out.npy")),
            c if c.starts_with("close-npz") => Some(dir.join("out.npz")),
            _ => None,
        };
        if let Some(p) = &previous {
            fs::write(p, PREVIOUS).unwrap();
        }
        let out = under_limit(case, &dir);
        failures.extend(child_failure(case, &out));
        let left = tree(&dir);
        let want = match (case, &previous) {
            ("joined-npy-fits", _) => vec![dir.join("out.npy")],
            (_, Some(p)) => vec![p.clone()],
            _ => vec![],
        };
        if left != want {
            failures.push(format!("{case}: left {left:?}\n{}", text(&out)));
        }
        if let Some(p) = previous.filter(|p| p.is_file()) {
            if fs::read(&p).unwrap() != PREVIOUS {
                failures.push(format!("{case}: the previous {} was changed", p.display()));
            }
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n\n"));
}

#[test]
fn on_a_full_tmpfs_every_destination_fails_typed_or_keeps_its_reserved_space() {
    let cases = [
        "tmpfs-open-npy",
        "tmpfs-open-dir",
        "tmpfs-full-after-open-npy",
        "tmpfs-full-after-open-dir",
        "tmpfs-full-after-open-npz",
        "tmpfs-full-after-open-joined-npy",
        "tmpfs-full-after-open-joined-npz",
    ];
    let s = scratch();
    let mount = s.path().join("mnt");
    fs::create_dir(&mount).unwrap();
    let mut failures = Vec::new();
    for case in cases {
        let Some(out) = on_small_tmpfs(case, &mount) else {
            // Not allowed here: said so on stderr; the file size limit cases still run. Where
            // scripts/test.sh found a private tmpfs possible, not running is a failure.
            assert!(
                std::env::var("ARRAYDRAIN_EXPECT_TMPFS").as_deref() != Ok("1"),
                "{case}: ARRAYDRAIN_EXPECT_TMPFS=1 (a private tmpfs could be mounted), yet none was"
            );
            return;
        };
        failures.extend(child_failure(case, &out));
        // The tmpfs went with the child's namespace: the real folder was never written.
        assert!(tree(&mount).is_empty(), "{case}: {:?}", tree(&mount));
    }
    assert!(failures.is_empty(), "{}", failures.join("\n\n"));
}

#[test]
fn joining_an_output_whose_creator_failed_says_it_is_gone() {
    // The creator of a run's output failed (here: dropped) before another process joined it.
    for kind in ["npy", "npz", "dir"] {
        let s = scratch();
        let shared = {
            let w = builder(kind, s.path(), 10).open().unwrap();
            w.shared_path().unwrap().to_path_buf()
        };
        let err = builder(kind, s.path(), 10)
            .join(&shared)
            .open()
            .unwrap_err();
        let msg = err.to_string();
        assert!(
            matches!(err, Error::File(FileError::BadFile { .. })),
            "{kind}: {err:?}"
        );
        assert!(
            msg.contains("cannot be joined: it is gone"),
            "{kind}: {msg}"
        );
        assert!(msg.contains(&shared.display().to_string()), "{kind}: {msg}");
        assert!(tree(s.path()).is_empty(), "{kind}: {:?}", tree(s.path()));
    }
}

// ---- the child side -------------------------------------------------------------------------

/// One column of a case's output: name, dtype, row shape.
type Spec = (&'static str, DType, Vec<usize>);

/// The columns of each destination kind: `big` rows of 256 bytes (`npy`), or two columns of
/// 128 + 64 bytes a row (`npz`, `dir`).
fn columns(kind: &str) -> Vec<Spec> {
    match kind {
        "npy" => vec![("x", DType::F32, vec![64])],
        _ => vec![("a", DType::F32, vec![32]), ("b", DType::U8, vec![64])],
    }
}

fn destination(kind: &str, dir: &Path) -> Destination {
    match kind {
        "npy" => Destination::Npy(dir.join("out.npy")),
        "npz" => Destination::Npz {
            path: dir.join("out.npz"),
            compress: false,
        },
        "npz-compressed" => Destination::Npz {
            path: dir.join("out.npz"),
            compress: true,
        },
        _ => Destination::Dir(dir.join("cols")),
    }
}

fn builder(kind: &str, dir: &Path, rows: usize) -> WriterBuilder {
    let mut b = Writer::builder(rows)
        .destination(destination(kind, dir))
        .ring_bytes(64 << 10);
    for (name, dtype, shape) in columns(kind) {
        b = b.column(name, dtype, &shape);
    }
    b
}

/// Bytes of row `i` of column `c` (`len` bytes): scrambled, so deflate cannot shrink them much.
fn row(i: usize, c: usize, len: usize) -> Vec<u8> {
    let mut s = (i as u64 + 1).wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ ((c as u64 + 1) << 56);
    (0..len)
        .map(|_| {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            s as u8
        })
        .collect()
}

fn row_len(spec: &Spec) -> usize {
    spec.2.iter().product::<usize>() * spec.1.size()
}

/// Writes `rows` (output row numbers) in batches of 37, at their indices.
fn write_rows(w: &mut Writer, kind: &str, rows: &[usize]) {
    let cols = columns(kind);
    for chunk in rows.chunks(37) {
        let data: Vec<Vec<u8>> = cols
            .iter()
            .enumerate()
            .map(|(c, spec)| {
                chunk
                    .iter()
                    .flat_map(|&i| row(i, c, row_len(spec)))
                    .collect()
            })
            .collect();
        let at: Vec<u64> = chunk.iter().map(|&i| i as u64).collect();
        let views: Vec<&[u8]> = data.iter().map(Vec::as_slice).collect();
        w.write_bytes(chunk.len(), Some(&at), &views).unwrap();
    }
}

/// The rows `0..rows` in a shuffled order (even ones when `parity` is `Some(0)`, odd ones
/// with `Some(1)`).
fn shuffled(rows: usize, parity: Option<usize>) -> Vec<usize> {
    let mut v: Vec<usize> = (0..rows)
        .filter(|i| parity.is_none_or(|p| i % 2 == p))
        .collect();
    let mut s = 0x2545_F491_4F6C_DD1Du64;
    for k in (1..v.len()).rev() {
        s ^= s << 13;
        s ^= s >> 7;
        s ^= s << 17;
        v.swap(k, (s % (k as u64 + 1)) as usize);
    }
    v
}

/// Checks that the committed output of `kind` in `dir` holds every row's bytes.
fn check_output(kind: &str, dir: &Path, rows: usize) {
    let cols = columns(kind);
    let read: Vec<Vec<u8>> = match kind {
        "npy" => vec![npy::read_npy(dir.join("out.npy")).unwrap().bytes().to_vec()],
        "dir" => cols
            .iter()
            .map(|(n, _, _)| {
                npy::read_npy(dir.join("cols").join(format!("{n}.npy")))
                    .unwrap()
                    .bytes()
                    .to_vec()
            })
            .collect(),
        _ => unreachable!("only npy and dir outputs are read back"),
    };
    for (c, (spec, bytes)) in cols.iter().zip(&read).enumerate() {
        let want: Vec<u8> = (0..rows).flat_map(|i| row(i, c, row_len(spec))).collect();
        assert!(
            bytes == &want,
            "column {} differs from what was written",
            spec.0
        );
    }
}

/// The error a failed open or close must be: `NoSpace`, its message naming `what` (the file).
fn assert_no_space(result: Result<impl std::fmt::Debug, Error>, what: &Path, fs_words: &[&str]) {
    let err = result.expect_err("the output cannot fit: this must fail");
    let msg = err.to_string();
    assert!(
        matches!(err, Error::File(FileError::NoSpace { .. })),
        "not NoSpace: {err:?}"
    );
    assert!(msg.contains("not enough space on"), "{msg}");
    assert!(msg.contains(&what.display().to_string()), "{msg}");
    for w in fs_words {
        assert!(msg.contains(w), "{msg} (should name {w})");
    }
}

/// Names in `dir` (recursively), for "nothing left" checks.
fn names(dir: &Path) -> Vec<String> {
    tree(dir)
        .iter()
        .map(|p| p.strip_prefix(dir).unwrap().display().to_string())
        .collect()
}

/// Fills the file system of `dir` with one file, `filler`, until it is full; checks it is.
fn fill(dir: &Path) {
    let mut f = fs::File::create(dir.join("filler")).unwrap();
    let chunk = vec![0x5a_u8; 4096];
    loop {
        match f.write_all(&chunk) {
            Ok(()) => {}
            Err(e) if e.raw_os_error() == Some(libc::ENOSPC) => break,
            Err(e) => panic!("filling {}: {e}", dir.display()),
        }
    }
    drop(f);
    let mut probe = fs::File::create(dir.join("probe")).unwrap();
    let err = probe.write_all(&chunk).and_then(|()| probe.sync_all());
    assert!(err.is_err(), "the file system is not full");
    fs::remove_file(dir.join("probe")).unwrap();
}

/// Runs this test binary as a joining writer of `shared` (the same `kind`, `rows`), writing
/// the odd rows; returns its coverage bitmap.
fn join_in_another_process(kind: &str, dir: &Path, shared: &Path, rows: usize) -> Vec<u64> {
    let mut cmd = Command::new(std::env::current_exe().unwrap());
    cmd.args([
        "child",
        "--exact",
        "--ignored",
        "--nocapture",
        "--test-threads=1",
    ])
    .env(CASE, format!("join-odd-rows-{rows}"))
    .env(DIR, dir)
    .env(SHARED, shared)
    .env(KIND, kind);
    let out = run_within(cmd, 60);
    assert_child_done("the joining process", &out);
    let stdout = String::from_utf8_lossy(&out.stdout);
    let line = stdout
        .lines()
        // The harness may have printed `test child ... ` on the same line.
        .find_map(|l| l.split_once("coverage ").map(|(_, words)| words))
        .expect("the joining process prints its coverage");
    line.split(',')
        .map(|w| u64::from_str_radix(w, 16).unwrap())
        .collect()
}

fn coverage_line(words: &[u64]) -> String {
    let hex: Vec<String> = words.iter().map(|w| format!("{w:x}")).collect();
    format!("coverage {}", hex.join(","))
}

/// A creator writes the even rows and another process the odd ones (joined); the creator
/// closes with both bitmaps. With `full`, the file system is filled between open and writes.
fn joined_run(kind: &str, dir: &Path, rows: usize, full: bool) -> Result<(), Error> {
    let mut w = builder(kind, dir, rows).open()?;
    let shared = w.shared_path().unwrap().to_path_buf();
    if full {
        fill(dir);
    }
    let theirs = join_in_another_process(kind, dir, &shared, rows);
    write_rows(&mut w, kind, &shuffled(rows, Some(0)));
    w.close_with(&[&theirs]).map(|_| ())
}

/// The case named in [`CASE`], run in a child process (see the module docs).
#[test]
#[ignore = "a child process of the other tests in this file (under a file size limit or on a \
            small tmpfs); runs only when they start it"]
fn child() {
    let case = std::env::var(CASE).expect("run by the other tests, which set the case");
    let dir = PathBuf::from(std::env::var(DIR).unwrap());
    // 4096 rows of 256 bytes: 1 MiB for `npy`; 4096 rows of 192 bytes: 512 KiB + 256 KiB
    // for `npz`/`dir`.
    let limit_fs: &[&str] = &["bytes", "File too large"];
    let tmpfs: String = format!("tmpfs (mounted on {})", dir.display());
    let tmpfs_fs: &[&str] = &[&tmpfs, "No space left on device"];
    match case.as_str() {
        // ---- a file size limit of 256 KiB ----
        "open-npy" => {
            assert_no_space(
                builder("npy", &dir, 4096).open(),
                &dir.join("out.npy"),
                limit_fs,
            );
        }
        "open-dir" => {
            // Column `a` (512 KiB) does not fit.
            assert_no_space(
                builder("dir", &dir, 4096).open(),
                &dir.join("cols").join("a.npy"),
                limit_fs,
            );
        }
        "open-npz" => {
            // The scratch file of column `a` does not fit: the message names the archive.
            assert_no_space(
                builder("npz", &dir, 4096).open(),
                &dir.join("out.npz"),
                limit_fs,
            );
        }
        "close-npz" | "close-npz-compressed" => {
            // Each column fits (128 KiB + 64 KiB), the archive of both (192 KiB + headers) does
            // not... at 1400 rows: 175 KiB + 87.5 KiB = 262.5 KiB > 256 KiB.
            let kind = case.strip_prefix("close-").unwrap();
            let rows = 1400;
            let mut w = builder(kind, &dir, rows).open().unwrap();
            write_rows(&mut w, kind, &shuffled(rows, None));
            assert_no_space(w.close(), &dir.join("out.npz"), limit_fs);
        }
        "close-npz-joined" => {
            assert_no_space(
                joined_run("npz", &dir, 1400, false),
                &dir.join("out.npz"),
                limit_fs,
            );
        }
        "joined-npy-fits" => {
            // 900 rows of 256 bytes fit the limit: the same run commits, exactly.
            joined_run("npy", &dir, 900, false).unwrap();
            check_output("npy", &dir, 900);
        }
        // ---- a tmpfs of 1 MiB ----
        "tmpfs-open-npy" => {
            // 1 MiB of rows and a header: one page too many.
            assert_no_space(
                builder("npy", &dir, 4096).open(),
                &dir.join("out.npy"),
                tmpfs_fs,
            );
        }
        "tmpfs-open-dir" => {
            // 6000 rows: `a` (750 KiB) fits, `b` (375 KiB) does not any more.
            assert_no_space(
                builder("dir", &dir, 6000).open(),
                &dir.join("cols").join("b.npy"),
                tmpfs_fs,
            );
        }
        "tmpfs-full-after-open-npy" | "tmpfs-full-after-open-dir" => {
            let kind = case.rsplit('-').next().unwrap();
            let rows = 1500;
            let mut w = builder(kind, &dir, rows).open().unwrap();
            // Every byte of every file is allocated at open (not a sparse file whose pages a
            // write through the map would have to find room for).
            let shared = w.shared_path().unwrap().to_path_buf();
            let files = match kind {
                "npy" => vec![shared],
                _ => vec![shared.join("a.npy"), shared.join("b.npy")],
            };
            for f in &files {
                let m = fs::metadata(f).unwrap();
                assert!(
                    m.blocks() * 512 >= m.len(),
                    "{}: {} bytes long, {} allocated",
                    f.display(),
                    m.len(),
                    m.blocks() * 512
                );
            }
            fill(&dir);
            // Written through the maps into the full file system: no SIGBUS.
            write_rows(&mut w, kind, &shuffled(rows, None));
            w.close().unwrap();
            check_output(kind, &dir, rows);
            let want = match kind {
                "npy" => vec!["filler", "out.npy"],
                _ => vec!["cols", "cols/a.npy", "cols/b.npy", "filler"],
            };
            assert_eq!(names(&dir), want);
        }
        "tmpfs-full-after-open-npz" => {
            let rows = 1500;
            fs::write(dir.join("out.npz"), PREVIOUS).unwrap();
            let mut w = builder("npz", &dir, rows).open().unwrap();
            fill(&dir);
            write_rows(&mut w, "npz", &shuffled(rows, None));
            // The archive is packed at close: no room for it. The previous one stays.
            assert_no_space(w.close(), &dir.join("out.npz"), tmpfs_fs);
            assert_eq!(names(&dir), ["filler", "out.npz"]);
            assert_eq!(fs::read(dir.join("out.npz")).unwrap(), PREVIOUS);
        }
        "tmpfs-full-after-open-joined-npy" => {
            joined_run("npy", &dir, 1500, true).unwrap();
            check_output("npy", &dir, 1500);
            assert_eq!(names(&dir), ["filler", "out.npy"]);
        }
        "tmpfs-full-after-open-joined-npz" => {
            assert_no_space(
                joined_run("npz", &dir, 1500, true),
                &dir.join("out.npz"),
                tmpfs_fs,
            );
            assert_eq!(names(&dir), ["filler"]);
        }
        // ---- a joining writer in its own process ----
        join if join.starts_with("join-odd-rows-") => {
            let rows: usize = join.rsplit('-').next().unwrap().parse().unwrap();
            let kind = std::env::var(KIND).unwrap();
            let shared = PathBuf::from(std::env::var(SHARED).unwrap());
            let mut w = builder(&kind, &dir, rows).join(&shared).open().unwrap();
            write_rows(&mut w, &kind, &shuffled(rows, Some(1)));
            w.sync().unwrap();
            println!("{}", coverage_line(w.coverage()));
            w.close().unwrap();
        }
        other => panic!("no case {other}"),
    }
    println!("{DONE}");
}
