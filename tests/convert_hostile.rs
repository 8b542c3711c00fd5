//! `arraydrain convert` against hostile inputs and unlucky runs, as an attacker or a user having a
//! bad day would meet it: archives whose members climb out of the output folder, symlinks
//! planted at temporary and output names, a full disk, sizes that overflow, a folder where an
//! output should go, signals mid-run, outputs naming inputs, declared sizes that cannot fit,
//! FIFOs, long names, more columns than the kernel allows maps, an input truncated mid-read.
//! Each case must end in a clear error (or a correct result) and leave nothing behind.
//!
//! A full disk is simulated with a file size limit (`RLIMIT_FSIZE`, set by `ulimit -f` in a
//! `bash` wrapper that also ignores `SIGXFSZ`): writes past the limit then fail with `EFBIG`
//! exactly where a full file system fails with `ENOSPC`, without privileges or a small mount.
//! Inputs are written with the library itself, so no NumPy is needed.

use std::ffi::OsStr;
use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use arraydrain::{npy, ColumnArray, DType};
use ndarray::{Array1, Array2};

const BIN: &str = env!("CARGO_BIN_EXE_arraydrain");

fn scratch() -> tempfile::TempDir {
    tempfile::Builder::new()
        .prefix("hostile-")
        .tempdir_in(env!("CARGO_TARGET_TMPDIR"))
        .unwrap()
}

/// Runs `cmd` to completion, killing it (and failing the test) if it takes longer than `secs`.
fn run_within(mut cmd: Command, secs: u64) -> Output {
    let mut child = cmd
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn");
    let deadline = Instant::now() + Duration::from_secs(secs);
    while child.try_wait().unwrap().is_none() {
        if Instant::now() > deadline {
            child.kill().unwrap();
            let out = child.wait_with_output().unwrap();
            panic!("still running after {secs} s (killed):\n{}", text(&out));
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    child.wait_with_output().unwrap()
}

fn convert<S: AsRef<OsStr>>(args: &[S]) -> Output {
    let mut cmd = Command::new(BIN);
    cmd.arg("convert").args(args).arg("--quiet");
    run_within(cmd, 120)
}

fn text(o: &Output) -> String {
    format!(
        "status {:?}\nstdout:\n{}\nstderr:\n{}",
        o.status,
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

/// Asserts a clean failure: exit status 1 (an error, not a signal or a panic) and every word of
/// `words` in stderr.
fn assert_error(out: &Output, words: &[&str]) {
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{}", text(out));
    assert!(!stderr.contains("panicked"), "{}", text(out));
    for w in words {
        assert!(stderr.contains(w), "stderr lacks {w:?}\n{}", text(out));
    }
}

fn assert_ok(out: &Output) {
    assert!(out.status.success(), "{}", text(out));
}

/// Every path under `dir`, recursively, hidden ones included, sorted.
fn tree(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    if let Ok(rd) = fs::read_dir(dir) {
        for e in rd.flatten() {
            let p = e.path();
            out.push(p.clone());
            if p.is_dir() && !p.is_symlink() {
                out.extend(tree(&p));
            }
        }
    }
    out.sort();
    out
}

fn temps(dir: &Path) -> Vec<PathBuf> {
    tree(dir)
        .into_iter()
        .filter(|p| {
            p.file_name()
                .is_some_and(|n| n.to_string_lossy().starts_with(".arraydrain-"))
        })
        .collect()
}

fn save(path: &Path, name: &str, col: ndarray::ArrayD<f32>) {
    npy::write_npy(path, &ColumnArray::from_array(name, col).unwrap()).unwrap();
}

/// `x.npy` (rows × 4 f32) and `y.npy` (rows i64) in `dir`.
fn inputs(dir: &Path, rows: usize) -> (PathBuf, PathBuf) {
    let x = dir.join("x.npy");
    let y = dir.join("y.npy");
    save(
        &x,
        "x",
        Array2::from_shape_fn((rows, 4), |(i, j)| (i * 4 + j) as f32).into_dyn(),
    );
    let yc = ColumnArray::from_array("y", Array1::from_iter(0..rows as i64)).unwrap();
    npy::write_npy(&y, &yc).unwrap();
    (x, y)
}

/// The bytes of a `.npy` file of `dtype` and `shape` holding `data`.
fn npy_image(dtype: DType, shape: &[usize], data: &[u8]) -> Vec<u8> {
    let mut v = npy::NpyHeader::encode(&dtype, shape).unwrap();
    v.extend_from_slice(data);
    v
}

/// An archive of `(member name, bytes)` written by the zip crate, stored.
fn zip_of(path: &Path, members: &[(&str, Vec<u8>)]) {
    let mut z = zip::ZipWriter::new(fs::File::create(path).unwrap());
    for (name, bytes) in members {
        let opts = zip::write::SimpleFileOptions::default()
            .compression_method(zip::CompressionMethod::Stored);
        z.start_file(*name, opts).unwrap();
        z.write_all(bytes).unwrap();
    }
    z.finish().unwrap();
}

#[test]
fn archive_members_that_climb_out_of_the_output_folder_are_refused() {
    let s = scratch();
    let root = s.path();
    let x = npy_image(DType::F32, &[3], &[0u8; 12]);
    let abs = root.join("abs-evil.npy");
    let evil_names = [
        "../evil.npy".to_string(),
        abs.to_str().unwrap().to_string(),
        "sub/../../evil2.npy".to_string(),
        "..\\evil3.npy".to_string(),
        "bell\u{7}.npy".to_string(),
        "...npy".to_string(),
    ];
    for (k, evil) in evil_names.iter().enumerate() {
        let archive = root.join(format!("in{k}.npz"));
        zip_of(&archive, &[("x.npy", x.clone()), (evil, x.clone())]);
        for mode in [
            &["--out-dir", "OUT/d"][..],
            &["--out-dir", "OUT/d", "--mmap"],
            &["--out", "OUT/o.npz", "--mmap"],
            &["--out", "OUT/o.npz"],
        ] {
            fs::create_dir_all(root.join("OUT")).unwrap();
            let before = tree(root);
            let mut args = vec![archive.clone().into_os_string()];
            for a in mode {
                let a = a.replace("OUT", root.join("OUT").to_str().unwrap());
                args.push(a.into());
            }
            let out = convert(&args);
            let shown = format!("{evil:?}");
            assert_error(&out, &[archive.to_str().unwrap(), "member", &shown]);
            assert_eq!(tree(root), before, "{evil:?} {mode:?} wrote something");
        }
    }
    assert!(!root.join("evil.npy").exists() && !abs.exists());

    // The library's writers refuse such names too, whoever made the table.
    let bad = ColumnArray::from_array("../lib-evil", Array1::from_iter(0..4i64)).unwrap();
    let err = npy::write_npy_dir(root.join("lib"), std::slice::from_ref(&bad)).unwrap_err();
    assert!(
        matches!(
            err,
            arraydrain::Error::File(arraydrain::FileError::UnsafeName { .. })
        ),
        "{err}"
    );
    let err = npy::write_npz(root.join("lib.npz"), &[bad], &npy::WriteOptions::new()).unwrap_err();
    assert!(
        matches!(
            err,
            arraydrain::Error::File(arraydrain::FileError::UnsafeName { .. })
        ),
        "{err}"
    );
    assert!(!root.join("lib-evil.npy").exists() && !root.join("lib.npz").exists());
    assert!(!root.join("lib").exists());
}

#[test]
fn symlinks_planted_at_temporary_and_output_names_are_never_followed() {
    let s = scratch();
    let root = s.path();
    let (x, _) = inputs(root, 100);
    let victim = root.join("victim");
    fs::write(&victim, b"precious").unwrap();
    let out_dir = root.join("shared");
    fs::create_dir(&out_dir).unwrap();
    // Links at the names a run writes: its outputs and its order file. Temporary names are
    // `.arraydrain-` and six random characters, made with O_CREAT|O_EXCL; a link planted at
    // *every* temporary name is never followed (fsafe's unit test
    // `links_planted_at_every_temporary_name_are_never_followed`, with one random character so
    // that all 62 names can be planted).
    std::os::unix::fs::symlink(&victim, out_dir.join("o.npz")).unwrap();
    std::os::unix::fs::symlink(&victim, out_dir.join("x.npy")).unwrap();
    std::os::unix::fs::symlink(&victim, out_dir.join("order.npy")).unwrap();
    let planted = tree(&out_dir).len();
    for mode in [
        vec!["--out", "o.npz"],
        vec!["--out", "o.npz", "--mmap", "--save-order", "order.npy"],
        vec!["--out-dir", "."],
        vec!["--out-dir", ".", "--mmap", "--shuffle"],
    ] {
        let mut cmd = Command::new(BIN);
        cmd.current_dir(&out_dir)
            .arg("convert")
            .arg(&x)
            .args(&mode)
            .arg("--quiet");
        let out = run_within(cmd, 60);
        assert_ok(&out);
        assert_eq!(fs::read(&victim).unwrap(), b"precious", "{mode:?}");
        let written = out_dir.join(if mode[0] == "--out" { "o.npz" } else { "x.npy" });
        let meta = fs::symlink_metadata(&written).unwrap();
        assert!(
            meta.is_file(),
            "{mode:?}: {written:?} is not a regular file"
        );
        assert!(temps(&out_dir).is_empty(), "{:?}", temps(&out_dir));
    }
    let back = npy::read_npz(out_dir.join("o.npz")).unwrap();
    assert_eq!(back[0].bytes(), npy::read_npy(&x).unwrap().bytes());
    // The output names are now regular files (the links were replaced, never followed).
    assert!(fs::symlink_metadata(out_dir.join("order.npy"))
        .unwrap()
        .is_file());
    assert_eq!(tree(&out_dir).len(), planted);
}

/// Runs `arraydrain convert ARGS` under a file size limit of `kib` KiB (see the module docs).
fn convert_with_fsize_limit(kib: u64, args: &[&OsStr]) -> Output {
    let mut cmd = Command::new("bash");
    cmd.arg("-c")
        .arg(r#"trap '' XFSZ; ulimit -f "$1"; shift; exec "$@""#)
        .arg("bash")
        .arg(kib.to_string())
        .arg(BIN)
        .arg("convert")
        .args(args)
        .arg("--quiet");
    run_within(cmd, 60)
}

#[test]
fn a_full_disk_is_an_error_naming_the_device_and_leaves_nothing() {
    // Simulated with RLIMIT_FSIZE (see the module docs): x.npy is 1.6 MB, the limit 256 KiB.
    let s = scratch();
    let root = s.path();
    let (x, y) = inputs(root, 100_000);
    let o = root.join("out");
    let (od, onpz) = (o.join("d"), o.join("o.npz"));
    let (od, onpz) = (od.as_os_str(), onpz.as_os_str());
    let cases: [(&str, Vec<&OsStr>); 5] = [
        (
            "mmap dir",
            vec!["--out-dir".as_ref(), od, "--mmap".as_ref()],
        ),
        ("mmap npz", vec!["--out".as_ref(), onpz, "--mmap".as_ref()]),
        ("npz", vec!["--out".as_ref(), onpz]),
        ("dir", vec!["--out-dir".as_ref(), od]),
        (
            "npz concat",
            vec![
                "--out".as_ref(),
                onpz,
                "--strategy".as_ref(),
                "concat".as_ref(),
            ],
        ),
    ];
    fs::create_dir(&o).unwrap();
    for (name, extra) in cases {
        let mut args: Vec<&OsStr> = vec![x.as_os_str(), y.as_os_str()];
        args.extend(extra);
        let out = convert_with_fsize_limit(256, &args);
        assert_error(&out, &["not enough space on", "bytes"]);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!stderr.contains("ZipWriter"), "{name}: {stderr}");
        assert_eq!(stderr.lines().count(), 1, "{name}: {stderr}");
        assert!(tree(&o).is_empty(), "{name}: left {:?}", tree(&o));
    }
    // The same runs succeed without the limit.
    let d = o.join("d");
    let out = convert(&[
        x.as_os_str(),
        y.as_os_str(),
        "--out-dir".as_ref(),
        d.as_os_str(),
        "--mmap".as_ref(),
    ]);
    assert_ok(&out);
    assert_eq!(
        npy::read_npy(o.join("d/x.npy")).unwrap().bytes(),
        npy::read_npy(&x).unwrap().bytes()
    );
}

/// A `.npy` header alone declaring `shape` of `descr` (the data, if any, is left to the caller).
fn raw_header(descr: &str, shape: &str) -> Vec<u8> {
    let mut h = format!("{{'descr': '{descr}', 'fortran_order': False, 'shape': {shape}, }}");
    while (10 + h.len() + 1) % 64 != 0 {
        h.push(' ');
    }
    h.push('\n');
    let mut v = b"\x93NUMPY\x01\x00".to_vec();
    v.extend_from_slice(&(h.len() as u16).to_le_bytes());
    v.extend_from_slice(h.as_bytes());
    v
}

#[test]
fn huge_counts_are_errors_and_zero_width_rows_never_loop() {
    let s = scratch();
    let root = s.path();
    // 2**64-1 rows of zero width: NumPy cannot make that array ("Maximum allowed dimension
    // exceeded"), so neither is it read.
    let unloadable = root.join("unloadable.npy");
    fs::write(&unloadable, raw_header("<f4", "(18446744073709551615, 0)")).unwrap();
    let o = root.join("out");
    fs::create_dir(&o).unwrap();
    let out = convert(&[
        unloadable.as_os_str(),
        OsStr::new("--out-dir"),
        o.join("u").as_os_str(),
    ]);
    assert_error(
        &out,
        &["unloadable.npy", "(18446744073709551615, 0)", "too large"],
    );
    assert!(tree(&o).is_empty(), "left {:?}", tree(&o));
    // A valid file of 2**63-1 rows of zero width (the most NumPy makes): 128 bytes on disk.
    let zw = root.join("zw.npy");
    fs::write(&zw, raw_header("|u1", "(9223372036854775807, 0)")).unwrap();
    let npz = o.join("o.npz");
    let order = o.join("order.npy");
    for extra in [
        vec!["--shuffle"],
        vec!["--save-order", order.to_str().unwrap()],
        vec!["--rank", "0", "--world-size", "2"],
        vec!["--strategy", "concat"],
        vec!["--strategy", "per-batch", "--mmap"],
    ] {
        let mut args = vec![zw.to_str().unwrap(), "--out", npz.to_str().unwrap()];
        args.extend(&extra);
        let out = convert(&args);
        let words: &[&str] = if extra[0] == "--strategy" && extra.len() == 3 {
            &["--mmap"]
        } else {
            &[]
        };
        assert_error(&out, words);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            stderr.contains("overflows")
                || stderr.contains("cannot allocate")
                || stderr.contains("--mmap"),
            "{extra:?}: {stderr}"
        );
        assert!(tree(&o).is_empty(), "{extra:?}: left {:?}", tree(&o));
    }
    // Without an index list or a file of indices, the output is as valid as the input and is
    // written at once, mapped or not.
    for extra in [vec![], vec!["--mmap"], vec!["--drop-last", "--batch", "7"]] {
        let d = o.join(format!("d{}", extra.len()));
        let mut args = vec![zw.to_str().unwrap(), "--out-dir", d.to_str().unwrap()];
        args.extend(&extra);
        assert_ok(&convert(&args));
        let back = npy::read_npy(d.join("zw.npy")).unwrap();
        let max = isize::MAX as usize;
        let rows = if extra.len() == 3 { max / 7 * 7 } else { max };
        assert_eq!((back.rows(), back.row_shape()), (rows, &[0][..]));
    }

    // A sparse, valid file of 2**35 one-byte rows (32 GiB apparent, no blocks): its shuffled
    // order (256 GiB of indices) or a shard of it cannot be held, and says so.
    let big = root.join("big.npy");
    let header = raw_header("|u1", "(34359738368,)");
    let f = fs::File::create(&big).unwrap();
    (&f).write_all(&header).unwrap();
    f.set_len(header.len() as u64 + (1u64 << 35)).unwrap();
    drop(f);
    for extra in [
        vec!["--shuffle"],
        vec!["--rank", "1", "--world-size", "2", "--shuffle"],
    ] {
        let mut args = vec![big.to_str().unwrap(), "--out", npz.to_str().unwrap()];
        args.extend(&extra);
        let out = convert(&args);
        assert_error(&out, &["cannot allocate", "index list"]);
        assert!(tree(&o)
            .iter()
            .all(|p| !p.starts_with(&npz) && temps(&o).is_empty()));
    }
}

#[test]
fn a_failed_run_leaves_no_output_behind() {
    let s = scratch();
    let root = s.path();
    let (x, y) = inputs(root, 1000);
    // A folder already named y.npy in the output folder: x.npy must not appear either.
    let d = root.join("d");
    fs::create_dir_all(d.join("y.npy")).unwrap();
    for extra in [vec![], vec!["--mmap"], vec!["--strategy", "concat"]] {
        let mut args = vec![x.to_str().unwrap(), y.to_str().unwrap(), "--out-dir"];
        args.push(d.to_str().unwrap());
        args.extend(&extra);
        let out = convert(&args);
        assert_error(&out, &["y.npy", "is a folder"]);
        assert_eq!(tree(&d), vec![d.join("y.npy")], "{extra:?}");
    }
    // --save-order into a missing folder fails before any output exists; a fresh output folder
    // made by a failed run is removed again.
    let npz = root.join("o.npz");
    let nowhere = root.join("no/such/order.npy");
    for out_flag in ["--out", "--out-dir"] {
        let target = if out_flag == "--out" {
            npz.clone()
        } else {
            root.join("fresh/deeper")
        };
        let out = convert(&[
            x.as_os_str(),
            out_flag.as_ref(),
            target.as_os_str(),
            "--save-order".as_ref(),
            nowhere.as_os_str(),
        ]);
        assert_error(&out, &["no/such"]);
        assert!(!target.exists() && !root.join("fresh").exists() && !root.join("no").exists());
    }
    assert!(temps(root).is_empty(), "{:?}", temps(root));
}

/// A `rows × 64` f32 input of pseudo-random values (which deflate slowly and barely shrink).
fn noisy_input(path: &Path, rows: usize) {
    let mut z = 0x9E37_79B9_7F4A_7C15u64;
    let x = Array2::from_shape_simple_fn((rows, 64), || {
        z = z
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        (z >> 40) as f32
    });
    save(path, "x", x.into_dyn());
}

/// Starts `convert ARGS` in `dir`, waits until one of its temporary files exists there, and
/// returns the child.
fn start_and_wait_for_temp(dir: &Path, args: &[&OsStr]) -> std::process::Child {
    let mut child = Command::new(BIN)
        .current_dir(dir)
        .arg("convert")
        .args(args)
        .arg("--quiet")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    while temps(dir).is_empty() {
        if let Some(status) = child.try_wait().unwrap() {
            panic!("convert ended ({status}) before its temporary files were seen");
        }
        assert!(Instant::now() < deadline, "no temporary file after 60 s");
        std::thread::sleep(Duration::from_millis(1));
    }
    std::thread::sleep(Duration::from_millis(10));
    child
}

#[test]
fn sigint_and_sigterm_remove_temporary_files_and_exit_conventionally() {
    let s = scratch();
    let root = s.path();
    let x = root.join("x.npy");
    noisy_input(&x, 400_000); // 102 MB: deflating it takes seconds
    let o = root.join("out");
    fs::create_dir(&o).unwrap();
    for (signal, code, mode) in [
        ("TERM", 143, &["--out", "o.npz", "--compress"][..]),
        ("INT", 130, &["--out", "o.npz", "--compress", "--mmap"]),
        ("TERM", 143, &["--out-dir", "d", "--mmap", "--shuffle"]),
    ] {
        let mut args: Vec<&OsStr> = vec![x.as_os_str()];
        args.extend(mode.iter().map(OsStr::new));
        let child = start_and_wait_for_temp(&o, &args);
        let pid = child.id().to_string();
        let st = Command::new("kill")
            .args([&format!("-{signal}"), &pid])
            .status()
            .unwrap();
        assert!(st.success());
        let mut cmd_out = child.wait_with_output().unwrap();
        cmd_out.stderr.extend_from_slice(b"");
        assert_eq!(
            cmd_out.status.code(),
            Some(code),
            "SIG{signal} {mode:?}\n{}",
            text(&cmd_out)
        );
        assert!(
            tree(&o).is_empty(),
            "SIG{signal} {mode:?}: left {:?}",
            tree(&o)
        );
    }
}

#[test]
fn outputs_never_name_an_input_or_each_other() {
    let s = scratch();
    let root = s.path();
    let (x, y) = inputs(root, 50);
    let x_before = fs::read(&x).unwrap();
    let npz = root.join("o.npz");
    let linked = root.join("x-link.npy");
    fs::hard_link(&x, &linked).unwrap();
    let respelled = root.join("sub/../x.npy");
    fs::create_dir(root.join("sub")).unwrap();
    let d = root.join("d");
    let dx = d.join("x.npy");
    let cases: Vec<(Vec<&Path>, &str)> = vec![
        (
            vec![
                &x,
                Path::new("--out"),
                &npz,
                Path::new("--save-order"),
                &npz,
            ],
            "--out",
        ),
        (
            vec![&x, Path::new("--out"), &npz, Path::new("--save-order"), &x],
            "input",
        ),
        (
            vec![
                &x,
                Path::new("--out"),
                &npz,
                Path::new("--save-order"),
                &respelled,
            ],
            "input",
        ),
        (
            vec![
                &x,
                Path::new("--out"),
                &npz,
                Path::new("--save-order"),
                &linked,
            ],
            "input",
        ),
        (
            vec![
                &x,
                &y,
                Path::new("--out-dir"),
                root,
                Path::new("--save-order"),
                &npz,
            ],
            "input",
        ),
        (
            vec![
                &x,
                Path::new("--out-dir"),
                &d,
                Path::new("--save-order"),
                &dx,
            ],
            "column \"x\" in --out-dir",
        ),
        (
            vec![&x, Path::new("--indices"), &npz, Path::new("--out"), &npz],
            "input",
        ),
    ];
    let order = ColumnArray::from_array("o", Array1::from_iter(0..50i64)).unwrap();
    for (args, word) in cases {
        // The file of indices case needs it to exist (it is an input then).
        npy::write_npy(&npz, &order).unwrap();
        let npz_before = fs::read(&npz).unwrap();
        let out = convert(&args);
        assert_error(&out, &["names", word]);
        assert_eq!(fs::read(&x).unwrap(), x_before, "{args:?}");
        assert_eq!(fs::read(&npz).unwrap(), npz_before, "{args:?}");
        assert!(!d.exists() && temps(root).is_empty(), "{args:?}");
        fs::remove_file(&npz).unwrap();
    }
}

/// CRC-32 (IEEE) of `data`, for hand-made archives.
fn crc32(data: &[u8]) -> u32 {
    let mut crc = !0u32;
    for &b in data {
        crc ^= b as u32;
        for _ in 0..8 {
            crc = if crc & 1 != 0 {
                (crc >> 1) ^ 0xEDB8_8320
            } else {
                crc >> 1
            };
        }
    }
    !crc
}

/// A one-member zip64 archive whose member `name` holds `data`, deflated (as one stored
/// deflate block) or stored, and declares `declared` uncompressed bytes.
fn zip64_lying(path: &Path, name: &str, data: &[u8], deflate: bool, declared: u64) {
    let body: Vec<u8> = if deflate {
        let len = data.len() as u16;
        let mut b = vec![1u8];
        b.extend_from_slice(&len.to_le_bytes());
        b.extend_from_slice(&(!len).to_le_bytes());
        b.extend_from_slice(data);
        b
    } else {
        data.to_vec()
    };
    let compressed = if deflate { body.len() as u64 } else { declared };
    let method: u16 = if deflate { 8 } else { 0 };
    let crc = crc32(data);
    let extra = |with_offset: bool| {
        let mut e = vec![1u8, 0];
        e.extend_from_slice(&(if with_offset { 24u16 } else { 16 }).to_le_bytes());
        e.extend_from_slice(&declared.to_le_bytes());
        e.extend_from_slice(&compressed.to_le_bytes());
        if with_offset {
            e.extend_from_slice(&0u64.to_le_bytes());
        }
        e
    };
    let mut z = Vec::new();
    let local_extra = extra(false);
    z.extend_from_slice(&0x0403_4b50u32.to_le_bytes());
    z.extend_from_slice(&45u16.to_le_bytes()); // version needed
    z.extend_from_slice(&0u16.to_le_bytes()); // flags
    z.extend_from_slice(&method.to_le_bytes());
    z.extend_from_slice(&[0, 0, 0x21, 0]); // time, date
    z.extend_from_slice(&crc.to_le_bytes());
    z.extend_from_slice(&u32::MAX.to_le_bytes());
    z.extend_from_slice(&u32::MAX.to_le_bytes());
    z.extend_from_slice(&(name.len() as u16).to_le_bytes());
    z.extend_from_slice(&(local_extra.len() as u16).to_le_bytes());
    z.extend_from_slice(name.as_bytes());
    z.extend_from_slice(&local_extra);
    z.extend_from_slice(&body);
    let cd_start = z.len() as u64;
    let cd_extra = extra(true);
    z.extend_from_slice(&0x0201_4b50u32.to_le_bytes());
    z.extend_from_slice(&45u16.to_le_bytes()); // made by
    z.extend_from_slice(&45u16.to_le_bytes()); // needed
    z.extend_from_slice(&0u16.to_le_bytes());
    z.extend_from_slice(&method.to_le_bytes());
    z.extend_from_slice(&[0, 0, 0x21, 0]);
    z.extend_from_slice(&crc.to_le_bytes());
    z.extend_from_slice(&u32::MAX.to_le_bytes());
    z.extend_from_slice(&u32::MAX.to_le_bytes());
    z.extend_from_slice(&(name.len() as u16).to_le_bytes());
    z.extend_from_slice(&(cd_extra.len() as u16).to_le_bytes());
    z.extend_from_slice(&[0; 6]); // comment length, disk, internal attributes
    z.extend_from_slice(&0u32.to_le_bytes()); // external attributes
    z.extend_from_slice(&u32::MAX.to_le_bytes()); // offset: in the extra field
    z.extend_from_slice(name.as_bytes());
    z.extend_from_slice(&cd_extra);
    let cd_len = z.len() as u64 - cd_start;
    let eocd64 = z.len() as u64;
    z.extend_from_slice(&0x0606_4b50u32.to_le_bytes());
    z.extend_from_slice(&44u64.to_le_bytes());
    z.extend_from_slice(&45u16.to_le_bytes());
    z.extend_from_slice(&45u16.to_le_bytes());
    z.extend_from_slice(&[0; 8]); // disk numbers
    z.extend_from_slice(&1u64.to_le_bytes());
    z.extend_from_slice(&1u64.to_le_bytes());
    z.extend_from_slice(&cd_len.to_le_bytes());
    z.extend_from_slice(&cd_start.to_le_bytes());
    z.extend_from_slice(&0x0706_4b50u32.to_le_bytes());
    z.extend_from_slice(&0u32.to_le_bytes());
    z.extend_from_slice(&eocd64.to_le_bytes());
    z.extend_from_slice(&1u32.to_le_bytes());
    z.extend_from_slice(&0x0605_4b50u32.to_le_bytes());
    z.extend_from_slice(&[0; 4]);
    z.extend_from_slice(&u16::MAX.to_le_bytes());
    z.extend_from_slice(&u16::MAX.to_le_bytes());
    z.extend_from_slice(&u32::MAX.to_le_bytes());
    z.extend_from_slice(&u32::MAX.to_le_bytes());
    z.extend_from_slice(&0u16.to_le_bytes());
    fs::write(path, z).unwrap();
}

#[test]
fn declared_sizes_that_cannot_fit_are_refused_naming_archive_and_member() {
    let s = scratch();
    let root = s.path();
    let data = npy_image(DType::F32, &[4], &[0u8; 16]);
    let o = root.join("o.npz");
    // Honest, for contrast: the hand-made archive reads back.
    let honest = root.join("honest.npz");
    zip64_lying(&honest, "x.npy", &data, true, data.len() as u64);
    assert_ok(&convert(&[
        honest.as_os_str(),
        "--out".as_ref(),
        o.as_os_str(),
    ]));
    fs::remove_file(&o).unwrap();
    for (deflate, words) in [
        (
            true,
            &["needs 4611686018427387904 bytes in memory", "available"][..],
        ),
        (false, &["truncated"][..]),
    ] {
        let lying = root.join(format!("lying-{deflate}.npz"));
        zip64_lying(&lying, "x.npy", &data, deflate, 1 << 62);
        let out = convert(&[lying.as_os_str(), "--out".as_ref(), o.as_os_str()]);
        let mut all = vec![lying.to_str().unwrap(), "member \"x.npy\""];
        all.extend(words);
        assert_error(&out, &all);
        assert!(!o.exists() && temps(root).is_empty());
    }
}

#[test]
fn fifos_long_names_and_conflicting_options() {
    let s = scratch();
    let root = s.path();
    // A FIFO as input is refused at once, not waited on.
    let fifo = root.join("f.npy");
    let st = Command::new("mkfifo").arg(&fifo).status().unwrap();
    assert!(st.success());
    let o = root.join("o.npz");
    let out = convert(&[fifo.as_os_str(), "--out".as_ref(), o.as_os_str()]);
    assert_error(&out, &["f.npy", "not a regular file"]);
    let out = convert(&[root.as_os_str(), "--out".as_ref(), o.as_os_str()]);
    assert_error(&out, &["a folder"]);

    // A name that fits the file system's 255 bytes works, in a folder and as an archive.
    let stem = "n".repeat(251);
    let long = root.join(format!("{stem}.npy"));
    save(
        &long,
        &stem,
        Array1::from_iter((0..10).map(|v| v as f32)).into_dyn(),
    );
    let d = root.join("d");
    assert_ok(&convert(&[
        long.as_os_str(),
        "--out-dir".as_ref(),
        d.as_os_str(),
    ]));
    assert_ok(&convert(&[
        long.as_os_str(),
        "--out-dir".as_ref(),
        d.as_os_str(),
        "--mmap".as_ref(),
    ]));
    assert_eq!(
        npy::read_npy(d.join(format!("{stem}.npy")))
            .unwrap()
            .bytes(),
        npy::read_npy(&long).unwrap().bytes()
    );
    let long_npz = root.join(format!("{}.npz", "z".repeat(251)));
    assert_ok(&convert(&[
        long.as_os_str(),
        "--out".as_ref(),
        long_npz.as_os_str(),
    ]));
    assert_ok(&convert(&[
        long.as_os_str(),
        "--out".as_ref(),
        long_npz.as_os_str(),
        "--mmap".as_ref(),
    ]));
    assert!(temps(root).is_empty());

    // --compress has no meaning for a folder of .npy files: refused, not ignored.
    let out = convert(&[
        long.as_os_str(),
        "--out-dir".as_ref(),
        root.join("c").as_os_str(),
        "--compress".as_ref(),
    ]);
    assert!(matches!(out.status.code(), Some(1 | 2)), "{}", text(&out));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--compress"));
    assert!(!root.join("c").exists());
}

#[test]
fn more_columns_than_the_map_limit_name_the_limit() {
    let limit: u64 = fs::read_to_string("/proc/sys/vm/max_map_count")
        .expect("/proc/sys/vm/max_map_count")
        .trim()
        .parse()
        .unwrap();
    let s = scratch();
    let root = s.path();
    let columns = 70_000usize;
    let archive = root.join("wide.npz");
    let member = npy_image(DType::U8, &[2], &[1, 2]);
    let mut z = zip::ZipWriter::new(std::io::BufWriter::new(fs::File::create(&archive).unwrap()));
    for c in 0..columns {
        let opts = zip::write::SimpleFileOptions::default()
            .compression_method(zip::CompressionMethod::Stored);
        z.start_file(format!("c{c}.npy"), opts).unwrap();
        z.write_all(&member).unwrap();
    }
    z.finish().unwrap();
    let d = root.join("d");
    let out = convert(&[
        archive.as_os_str(),
        "--out-dir".as_ref(),
        d.as_os_str(),
        "--mmap".as_ref(),
    ]);
    if columns as u64 + 1024 > limit {
        assert_error(
            &out,
            &["memory maps", "vm.max_map_count", &limit.to_string()],
        );
        assert!(!d.exists() && temps(root).is_empty());
    } else {
        // This machine allows that many maps: the run must then simply work.
        assert_ok(&out);
        assert_eq!(fs::read_dir(&d).unwrap().count(), columns);
    }
}

#[test]
fn an_input_truncated_during_the_run_is_reported_not_a_crash() {
    let s = scratch();
    let root = s.path();
    let x = root.join("x.npy");
    noisy_input(&x, 400_000);
    let o = root.join("out");
    fs::create_dir(&o).unwrap();
    for mode in [
        &["--out", "o.npz", "--compress"][..],
        &["--out", "o.npz", "--compress", "--shuffle"],
    ] {
        let mut args: Vec<&OsStr> = vec![x.as_os_str()];
        args.extend(mode.iter().map(OsStr::new));
        let keep = fs::read(&x).unwrap();
        let child = start_and_wait_for_temp(&o, &args);
        // Cut the input to its first 4 KiB while it is being read.
        fs::OpenOptions::new()
            .write(true)
            .open(&x)
            .unwrap()
            .set_len(4096)
            .unwrap();
        let out = child.wait_with_output().unwrap();
        assert_error(&out, &["x.npy", "changed while being read"]);
        assert!(tree(&o).is_empty(), "{mode:?}: left {:?}", tree(&o));
        fs::write(&x, keep).unwrap();
    }
}
