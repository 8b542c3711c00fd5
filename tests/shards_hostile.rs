//! Shard folders (`convert --distributed`, `merge`, the checks behind `load_shards`) against an
//! attacker who can write into the folder and a user having a bad day: symbolic links planted at
//! part files, part folders and records, FIFOs and `/dev/zero` at record names, forged manifests
//! with huge world sizes, an input edited between two ranks, outputs naming the merge's own
//! inputs, a second run racing into the same folder, signals mid-run, many junk part folders.
//! Each case must end in a clear error (exit status 1 from the command line, never a panic or a
//! hang) or a correct result, reveal nothing of files the manifest does not own, and leave
//! nothing behind.

use std::ffi::OsStr;
use std::fs;
use std::os::unix::fs::{symlink, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use arraydrain::shards::{self, Manifest, MergeOptions, ShardError, ShardIssue, MANIFEST};
use arraydrain::{npy, ColumnArray, Error};
use ndarray::{Array1, Array2};

const BIN: &str = env!("CARGO_BIN_EXE_arraydrain");

fn scratch() -> tempfile::TempDir {
    tempfile::Builder::new()
        .prefix("shards-hostile-")
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

fn text(o: &Output) -> String {
    format!(
        "status {:?}\nstdout:\n{}\nstderr:\n{}",
        o.status,
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

/// A clean failure: exit status 1 (an error, not a signal or a panic's 101) and every word of
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

/// `x.npy` (rows × 3 f32) and `y.npy` (rows i64) in `dir`.
fn inputs(dir: &Path, rows: usize) -> [PathBuf; 2] {
    fs::create_dir_all(dir).unwrap();
    let x = Array2::from_shape_fn((rows, 3), |(i, j)| (i * 3 + j) as f32);
    let y = Array1::from_iter(0..rows as i64);
    let (xp, yp) = (dir.join("x.npy"), dir.join("y.npy"));
    npy::write_npy(&xp, &ColumnArray::from_array("x", x).unwrap()).unwrap();
    npy::write_npy(&yp, &ColumnArray::from_array("y", y).unwrap()).unwrap();
    [xp, yp]
}

fn convert_cmd<S: AsRef<OsStr>>(ins: &[S], out: &Path, rank: usize, world: usize) -> Command {
    let mut cmd = Command::new(BIN);
    cmd.arg("convert")
        .args(ins)
        .args(["--distributed", "--device", "cpu", "--quiet", "--rank"])
        .arg(rank.to_string())
        .arg("--world-size")
        .arg(world.to_string())
        .args(["--batch", "2", "--out-dir"])
        .arg(out);
    cmd
}

fn convert<S: AsRef<OsStr>>(ins: &[S], out: &Path, rank: usize, world: usize) -> Output {
    run_within(convert_cmd(ins, out, rank, world), 120)
}

/// A complete 3-rank shard folder of `rows` rows in `root/name`.
fn shards(root: &Path, name: &str, rows: usize) -> PathBuf {
    let ins = inputs(&root.join(format!("{name}-in")), rows);
    let out = root.join(name);
    for r in 0..3 {
        assert_ok(&convert(&ins, &out, r, 3));
    }
    out
}

fn merge_cmd(dir: &Path, out_args: &[&OsStr]) -> Output {
    let mut cmd = Command::new(BIN);
    cmd.arg("merge").arg(dir).args(out_args);
    run_within(cmd, 60)
}

fn issues(dir: &Path) -> Vec<ShardIssue> {
    match shards::check(dir) {
        Err(Error::Shard(ShardError::SetInvalid { issues, .. })) => issues,
        other => panic!("expected ShardSetInvalid, got {other:?}"),
    }
}

/// A private `.npy` outside the shard folder, with a distinctive shape.
fn secret(root: &Path) -> PathBuf {
    let path = root.join("private").join("secret.npy");
    fs::create_dir_all(path.parent().unwrap()).unwrap();
    let s = Array2::from_shape_fn((7, 13), |(i, j)| (i * 1000 + j) as f64);
    npy::write_npy(&path, &ColumnArray::from_array("secret", s).unwrap()).unwrap();
    path
}

/// What an error must not reveal of the secret file: its size, dtype, shape or CRC.
fn reveals_nothing_of(message: &str, secret: &Path) {
    let bytes = fs::read(secret).unwrap();
    let size = bytes.len().to_string();
    let crc = format!("{:08x}", crc32fast::hash(&bytes));
    for leak in [size.as_str(), "<f8", "13", crc.as_str(), "secret"] {
        assert!(
            !message.contains(leak),
            "the error reveals {leak:?} of a file the manifest does not own:\n{message}"
        );
    }
}

#[test]
fn symlinked_part_files_folders_and_records_are_refused_and_reveal_nothing() {
    let s = scratch();
    let root = s.path();
    let secret = secret(root);
    let dir = shards(root, "set", 10);

    // A part file replaced by a link to a private file.
    let x1 = dir.join("part-00001-of-00003/x.npy");
    fs::remove_file(&x1).unwrap();
    symlink(&secret, &x1).unwrap();
    // A part folder replaced by a link to a complete, valid copy elsewhere: followed, it would
    // merge silently.
    let p2 = dir.join("part-00002-of-00003");
    let elsewhere = root.join("elsewhere");
    fs::rename(&p2, &elsewhere).unwrap();
    symlink(&elsewhere, &p2).unwrap();

    let found = issues(&dir);
    let message = found
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join("\n");
    assert!(
        found
            .iter()
            .any(|i| matches!(i, ShardIssue::BadFile { file, reason }
            if file == "part-00001-of-00003/x.npy" && reason.contains("symbolic link"))),
        "{message}"
    );
    assert!(
        found
            .iter()
            .any(|i| matches!(i, ShardIssue::Unfinished { part, reason }
            if part == "part-00002-of-00003" && reason.contains("symbolic link"))),
        "{message}"
    );
    reveals_nothing_of(&message, &secret);
    assert!(
        !message.contains(&*elsewhere.to_string_lossy()),
        "{message}"
    );

    let out = root.join("merged");
    let o = merge_cmd(&dir, &[OsStr::new("--out-dir"), out.as_os_str()]);
    assert_error(&o, &["symbolic link", "part-00001-of-00003/x.npy"]);
    reveals_nothing_of(&String::from_utf8_lossy(&o.stderr), &secret);
    assert!(!out.exists());
}

#[test]
fn a_private_file_linked_in_with_a_forged_record_is_never_copied() {
    // The attack of a folder someone else can write: a part file replaced by a link to a private
    // file of the right dtype and shape, its record rewritten to match. Followed, the merge would
    // copy the private data into the victim's output.
    let s = scratch();
    let root = s.path();
    let dir = shards(root, "set", 9);
    let private = root.join("private.npy");
    let rows = Array1::from_iter((0..3).map(|i| 1_000_000 + i as i64));
    npy::write_npy(&private, &ColumnArray::from_array("y", rows).unwrap()).unwrap();
    let part = dir.join("part-00000-of-00003");
    fs::remove_file(part.join("y.npy")).unwrap();
    symlink(&private, part.join("y.npy")).unwrap();
    let record_path = part.join("part.json");
    let mut record: serde_json::Value =
        serde_json::from_slice(&fs::read(&record_path).unwrap()).unwrap();
    let bytes = fs::read(&private).unwrap();
    for f in record["files"].as_array_mut().unwrap() {
        if f["name"] == "y.npy" {
            f["bytes"] = bytes.len().into();
            f["crc32"] = format!("{:08x}", crc32fast::hash(&bytes)).into();
        }
    }
    fs::write(&record_path, serde_json::to_vec(&record).unwrap()).unwrap();
    let out = root.join("merged");
    let o = merge_cmd(&dir, &[OsStr::new("--out-dir"), out.as_os_str()]);
    assert_error(&o, &["part-00000-of-00003/y.npy", "symbolic link"]);
    assert!(!out.exists(), "the merge wrote {:?}", tree(&out));
}

#[test]
fn an_input_edited_in_the_middle_between_ranks_never_merges() {
    let s = scratch();
    let root = s.path();
    // 4 MiB of x: the edit lies far from the first and last MiB.
    let dir = root.join("in");
    fs::create_dir_all(&dir).unwrap();
    let xp = dir.join("x.npy");
    let x = Array2::from_shape_fn((4096, 256), |(i, j)| (i * 256 + j) as f32);
    npy::write_npy(&xp, &ColumnArray::from_array("x", x).unwrap()).unwrap();
    let out = root.join("set");
    assert_ok(&convert(&[&xp], &out, 0, 2));
    let mut bytes = fs::read(&xp).unwrap();
    let middle = bytes.len() / 2;
    bytes[middle] ^= 0x40;
    fs::write(&xp, &bytes).unwrap();
    let second = convert(&[&xp], &out, 1, 2);
    assert_error(&second, &["manifest.json", "another run"]);
    let merged = root.join("merged");
    let o = merge_cmd(&out, &[OsStr::new("--out-dir"), merged.as_os_str()]);
    assert_error(&o, &["part-00001-of-00002: missing"]);
    assert!(!merged.exists());

    // The manifest records the whole content's CRC-32 (as zlib.crc32), not a sample of it.
    let m = Manifest::read(&out).unwrap();
    let mut original = bytes.clone();
    original[middle] ^= 0x40;
    assert_eq!(
        m.inputs[0].crc32,
        format!("{:08x}", crc32fast::hash(&original))
    );
}

/// Edits `dir/manifest.json` and recomputes its run id, as a careful forger would.
fn forge(dir: &Path, edit: impl FnOnce(&mut Manifest)) {
    let path = dir.join(MANIFEST);
    let mut m: Manifest = serde_json::from_slice(&fs::read(&path).unwrap()).unwrap();
    edit(&mut m);
    m.run_id = String::new();
    // The run id is FNV-1a 64 over the compact JSON with an empty run id.
    let text = serde_json::to_string(&m).unwrap();
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in text.bytes() {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    m.run_id = format!("{h:016x}");
    fs::write(&path, serde_json::to_vec_pretty(&m).unwrap()).unwrap();
}

#[test]
fn huge_world_sizes_are_refused_before_anything_is_allocated() {
    let s = scratch();
    let root = s.path();
    let ins = inputs(&root.join("in"), 10);
    let out = root.join("out");
    for world in [u64::MAX.to_string(), "1000000000".to_string()] {
        let mut c = Command::new(BIN);
        c.arg("convert")
            .args(&ins)
            .args(["--distributed", "--device", "cpu", "--quiet", "--out-dir"])
            .arg(&out)
            .env("RANK", "0")
            .env("WORLD_SIZE", &world)
            .env("LOCAL_RANK", "0");
        assert_error(&run_within(c, 60), &["WORLD_SIZE", &world, "more ranks"]);
        let mut c = Command::new(BIN);
        c.arg("convert")
            .args(&ins)
            .args(["--distributed", "--device", "cpu", "--quiet", "--rank", "0"])
            .args(["--world-size", &world, "--out-dir"])
            .arg(&out);
        assert_error(
            &run_within(c, 60),
            &[&world, "more ranks than a run may have"],
        );
        assert!(!out.exists());
    }

    // A forged manifest (run id recomputed) claiming 10^9 or 2^64-1 ranks.
    let dir = shards(root, "set", 10);
    for world in [1_000_000_000usize, usize::MAX] {
        forge(&dir, |m| m.world_size = world);
        let out = root.join("merged");
        let o = merge_cmd(&dir, &[OsStr::new("--out-dir"), out.as_os_str()]);
        assert_error(&o, &["manifest.json", "more ranks than a run may have"]);
    }

    // A manifest's size does not grow with the world size.
    let len = |w: usize| {
        let spec = shards::RunSpec {
            world_size: w,
            table_rows: 10,
            order_kind: "sequential",
            seed: None,
            indices_file: None,
            indices_crc32: None,
            order_length: 10,
            shard_drop_last: false,
            batch_size: 2,
            drop_last: false,
            columns: vec![],
            inputs: vec![],
        };
        serde_json::to_string(&Manifest::compute(&spec).unwrap())
            .unwrap()
            .len()
    };
    assert!(len(2) < 1024 && len(arraydrain::sampler::MAX_WORLD_SIZE) < len(2) + 64);
}

fn mkfifo(path: &Path) {
    let st = Command::new("mkfifo").arg(path).status().unwrap();
    assert!(st.success());
}

#[test]
fn fifos_devices_and_huge_files_at_record_names_neither_hang_nor_exhaust_memory() {
    let s = scratch();
    let root = s.path();
    let dir = shards(root, "set", 10);
    let manifest = dir.join(MANIFEST);
    let good = fs::read(&manifest).unwrap();
    let out = root.join("merged");
    let merge = || merge_cmd(&dir, &[OsStr::new("--out-dir"), out.as_os_str()]);

    fs::remove_file(&manifest).unwrap();
    mkfifo(&manifest);
    assert_error(&merge(), &["manifest.json", "not a regular file"]);
    fs::remove_file(&manifest).unwrap();
    symlink("/dev/zero", &manifest).unwrap();
    assert_error(&merge(), &["manifest.json", "symbolic link"]);
    fs::remove_file(&manifest).unwrap();
    // A sparse file far larger than any manifest.
    let f = fs::File::create(&manifest).unwrap();
    f.set_len(shards::MAX_RECORD_BYTES + 1).unwrap();
    drop(f);
    assert_error(&merge(), &["manifest.json", "at most"]);
    fs::write(&manifest, &good).unwrap();

    // The same at a part's record.
    let record = dir.join("part-00001-of-00003/part.json");
    fs::remove_file(&record).unwrap();
    mkfifo(&record);
    let o = merge();
    assert_error(&o, &["part-00001-of-00003", "not a regular file"]);
    fs::remove_file(&record).unwrap();
    symlink("/dev/zero", &record).unwrap();
    assert_error(&merge(), &["part-00001-of-00003", "symbolic link"]);
    assert!(!out.exists());

    // convert --distributed meeting a FIFO where the manifest goes fails at once.
    let ins = inputs(&root.join("in2"), 10);
    let fresh = root.join("fresh");
    fs::create_dir_all(&fresh).unwrap();
    mkfifo(&fresh.join(MANIFEST));
    assert_error(
        &convert(&ins, &fresh, 0, 3),
        &["manifest.json", "not a regular file"],
    );
    let left: Vec<_> = tree(&fresh);
    assert_eq!(left, vec![fresh.join(MANIFEST)], "left {left:?}");
}

#[test]
fn merge_never_overwrites_its_own_inputs() {
    let s = scratch();
    let root = s.path();
    let dir = shards(root, "set", 10);
    let before: Vec<(PathBuf, Vec<u8>)> = tree(&dir)
        .into_iter()
        .filter(|p| p.is_file())
        .map(|p| {
            let b = fs::read(&p).unwrap();
            (p, b)
        })
        .collect();
    let part = dir.join("part-00000-of-00003");
    let o = merge_cmd(&dir, &[OsStr::new("--out"), dir.join(MANIFEST).as_os_str()]);
    assert_error(&o, &["manifest.json", "an output never replaces an input"]);
    let o = merge_cmd(&dir, &[OsStr::new("--out-dir"), part.as_os_str()]);
    assert_error(
        &o,
        &["part-00000-of-00003", "an output never replaces an input"],
    );
    // Another spelling of the same folder, and a hard link of a part file elsewhere.
    let spelled = dir.join("part-00001-of-00003/../part-00002-of-00003");
    let o = merge_cmd(&dir, &[OsStr::new("--out-dir"), spelled.as_os_str()]);
    assert_error(&o, &["an output never replaces an input"]);
    let elsewhere = root.join("linked");
    fs::create_dir_all(&elsewhere).unwrap();
    fs::hard_link(part.join("x.npy"), elsewhere.join("x.npy")).unwrap();
    let o = merge_cmd(&dir, &[OsStr::new("--out-dir"), elsewhere.as_os_str()]);
    assert_error(&o, &["x.npy", "an output never replaces an input"]);
    for (p, b) in &before {
        assert_eq!(&fs::read(p).unwrap(), b, "{} changed", p.display());
    }
    assert!(temps(root).is_empty(), "{:?}", temps(root));
}

#[test]
fn merge_out_dir_is_all_or_nothing_and_honours_the_umask() {
    let s = scratch();
    let root = s.path();
    let dir = shards(root, "set", 10);
    // y.npy cannot be written (a folder is there): x.npy must not appear either.
    let out = root.join("merged");
    fs::create_dir_all(out.join("y.npy")).unwrap();
    let o = merge_cmd(&dir, &[OsStr::new("--out-dir"), out.as_os_str()]);
    assert_error(&o, &["y.npy", "is a folder"]);
    assert_eq!(tree(&out), vec![out.join("y.npy")]);
    fs::remove_dir(out.join("y.npy")).unwrap();

    // Modes follow the umask, as a plain file's would (not a temporary file's 0600).
    let run = |args: &str| {
        let o = Command::new("sh")
            .arg("-c")
            .arg(format!("umask 022 && exec \"$0\" {args}"))
            .arg(BIN)
            .output()
            .unwrap();
        assert_ok(&o);
    };
    let ins = inputs(&root.join("in2"), 10);
    let set2 = root.join("set2");
    for r in 0..2 {
        run(&format!(
            "convert {} {} --distributed --device cpu --quiet --rank {r} --world-size 2 --out-dir {}",
            ins[0].display(),
            ins[1].display(),
            set2.display()
        ));
    }
    run(&format!(
        "merge {} --out-dir {}",
        set2.display(),
        out.display()
    ));
    run(&format!(
        "merge {} --out {}",
        set2.display(),
        root.join("m.npz").display()
    ));
    let mode = |p: &Path| fs::metadata(p).unwrap().permissions().mode() & 0o777;
    for f in [
        set2.join(MANIFEST),
        set2.join("part-00000-of-00002/part.json"),
        set2.join("part-00000-of-00002/x.npy"),
        out.join("x.npy"),
        root.join("m.npz"),
    ] {
        assert_eq!(mode(&f), 0o644, "{}", f.display());
    }
    assert_eq!(mode(&set2.join("part-00001-of-00002")), 0o755);
}

#[test]
fn a_second_run_into_the_same_folder_fails_even_when_they_race() {
    let s = scratch();
    let root = s.path();
    let ins = inputs(&root.join("in"), 10);
    let out = root.join("set");
    // Run A's rank 0 and run B's rank 0 (another seed) started together; whichever creates the
    // manifest first wins, the other must fail.
    for _ in 0..3 {
        let _ = fs::remove_dir_all(&out);
        let mut a = convert_cmd(&ins, &out, 0, 2);
        let mut b = convert_cmd(&ins, &out, 0, 2);
        b.args(["--shuffle", "--seed", "7"]);
        let (a, b) = (
            a.stdout(Stdio::null())
                .stderr(Stdio::piped())
                .spawn()
                .unwrap(),
            b.stdout(Stdio::null())
                .stderr(Stdio::piped())
                .spawn()
                .unwrap(),
        );
        let (a, b) = (a.wait_with_output().unwrap(), b.wait_with_output().unwrap());
        let failed: Vec<&Output> = [&a, &b]
            .into_iter()
            .filter(|o| !o.status.success())
            .collect();
        assert_eq!(failed.len(), 1, "A: {}\nB: {}", text(&a), text(&b));
        assert_error(failed[0], &["another run"]);
    }
    // After the fact too: a finished folder refuses another run's ranks.
    let mut b = convert_cmd(&ins, &out, 1, 2);
    b.args(["--shuffle", "--seed", "8"]);
    assert_error(&run_within(b, 60), &["another run"]);
}

#[test]
fn a_failed_rank_leaves_nothing_it_made() {
    let s = scratch();
    let root = s.path();
    let ins = inputs(&root.join("in"), 1000);
    // A file size limit makes the drain's writes fail (as a full disk would) after the output
    // folder and the manifest were made.
    let out = root.join("deep/set");
    let o = Command::new("bash")
        .arg("-c")
        .arg("trap '' XFSZ; ulimit -f 4; exec \"$@\"")
        .arg("bash")
        .arg(BIN)
        .arg("convert")
        .args(&ins)
        .args(["--distributed", "--device", "cpu", "--quiet", "--rank", "0"])
        .args(["--world-size", "1", "--out-dir"])
        .arg(&out)
        .output()
        .unwrap();
    assert_error(&o, &[]);
    assert!(!root.join("deep").exists(), "left {:?}", tree(root));

    // A rank of a run whose other rank's part is there keeps the shared manifest.
    let out = root.join("set");
    assert_ok(&convert(&ins, &out, 0, 2));
    fs::create_dir_all(out.join("part-00001-of-00002")).unwrap();
    let o = convert(&ins, &out, 1, 2);
    assert_error(&o, &["part-00001-of-00002", "already exists"]);
    assert!(out.join(MANIFEST).is_file());
    assert!(temps(&out).is_empty(), "{:?}", temps(&out));
}

/// A `rows × 64` f32 input of pseudo-random values.
fn noisy_input(path: &Path, rows: usize) {
    let mut z = 0x9E37_79B9_7F4A_7C15u64;
    let x = Array2::from_shape_simple_fn((rows, 64), || {
        z = z
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        (z >> 40) as f32
    });
    npy::write_npy(path, &ColumnArray::from_array("x", x).unwrap()).unwrap();
}

/// Starts `cmd`, waits until a temporary entry of it appears under `watch`, signals it, and
/// checks the conventional exit status.
fn interrupt(mut cmd: Command, watch: &Path, signal: &str, code: i32) {
    let child = cmd
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut child = child;
    while temps(watch).is_empty() {
        if let Some(status) = child.try_wait().unwrap() {
            panic!("ended ({status}) before its temporary entries were seen");
        }
        assert!(Instant::now() < deadline, "no temporary entry after 60 s");
        std::thread::sleep(Duration::from_millis(1));
    }
    std::thread::sleep(Duration::from_millis(20));
    let st = Command::new("kill")
        .args([&format!("-{signal}"), &child.id().to_string()])
        .status()
        .unwrap();
    assert!(st.success());
    let o = child.wait_with_output().unwrap();
    assert_eq!(o.status.code(), Some(code), "SIG{signal}\n{}", text(&o));
}

#[test]
fn sigint_and_sigterm_leave_no_staging_folder_no_output_folder_and_no_manifest() {
    let s = scratch();
    let root = s.path();
    let x = root.join("x.npy");
    noisy_input(&x, 400_000); // 102 MB
                              // convert --distributed, into an output folder it creates.
    let out = root.join("made/set");
    let mut cmd = convert_cmd(&[&x], &out, 0, 1);
    cmd.arg("--shuffle");
    interrupt(cmd, root, "TERM", 143);
    assert!(!root.join("made").exists(), "left {:?}", tree(root));

    // merge --out-dir and --out --mmap of a large set.
    let set = root.join("set");
    for r in 0..2 {
        assert_ok(&convert(&[&x], &set, r, 2));
    }
    let before = tree(&set);
    for (signal, code, args) in [
        ("INT", 130, vec!["--out-dir", "made2/merged"]),
        ("TERM", 143, vec!["--out", "m.npz", "--mmap"]),
    ] {
        let mut cmd = Command::new(BIN);
        cmd.current_dir(root).arg("merge").arg(&set).args(&args);
        interrupt(cmd, root, signal, code);
        assert!(
            !root.join("made2").exists(),
            "{args:?} left {:?}",
            tree(root)
        );
        assert!(
            !root.join("m.npz").exists(),
            "{args:?} left {:?}",
            tree(root)
        );
        assert_eq!(tree(&set), before);
        assert!(temps(root).is_empty(), "{:?}", temps(root));
    }
}

#[test]
fn many_junk_part_folders_give_a_bounded_error() {
    let s = scratch();
    let root = s.path();
    let dir = shards(root, "set", 10);
    for i in 0..3000 {
        fs::create_dir(dir.join(format!("part-junk-{i:05}"))).unwrap();
    }
    let found = issues(&dir);
    assert_eq!(found.len(), shards::MAX_LISTED_ISSUES + 1);
    assert!(
        matches!(found.last(), Some(ShardIssue::More { count }) if *count == 3000 - shards::MAX_LISTED_ISSUES),
        "{:?}",
        found.last()
    );
    let out = root.join("merged");
    let o = merge_cmd(&dir, &[OsStr::new("--out-dir"), out.as_os_str()]);
    assert_error(&o, &["part-junk-00000", "more problems"]);
    assert!(
        o.stderr.len() < 16 << 10,
        "{} bytes of error",
        o.stderr.len()
    );
}

#[test]
fn merge_reads_what_it_checked_and_merges_a_good_set_exactly() {
    let s = scratch();
    let root = s.path();
    let dir = shards(root, "set", 10);
    let out = root.join("merged");
    let (summary, files) = shards::merge_open(&MergeOptions {
        dir: dir.clone(),
        out: None,
        out_dir: Some(out.clone()),
        mmap: false,
        keep_padding: false,
    })
    .unwrap();
    assert_eq!(summary.rows, 10);
    assert_eq!(files.len(), 2);
    let x = npy::read_npy(out.join("x.npy")).unwrap();
    let want: Vec<f32> = (0..30).map(|v| v as f32).collect();
    assert_eq!(x.bytes(), bytemuck::cast_slice::<f32, u8>(&want));
    // The open files are the written outputs.
    use std::os::unix::fs::MetadataExt;
    let meta = files[0].metadata().unwrap();
    let on_disk = fs::metadata(out.join("x.npy")).unwrap();
    assert_eq!((meta.dev(), meta.ino()), (on_disk.dev(), on_disk.ino()));
}

#[test]
fn links_planted_at_the_names_a_rank_writes_are_never_followed() {
    let s = scratch();
    let root = s.path();
    let ins = inputs(&root.join("in"), 10);
    let victim_dir = root.join("victim");
    fs::create_dir_all(&victim_dir).unwrap();
    let victim = victim_dir.join("file");
    fs::write(&victim, b"precious").unwrap();
    // manifest.json a link to a victim file: refused, never written through.
    let out = root.join("set");
    fs::create_dir_all(&out).unwrap();
    symlink(&victim, out.join(MANIFEST)).unwrap();
    assert_error(
        &convert(&ins, &out, 0, 2),
        &["manifest.json", "symbolic link"],
    );
    assert_eq!(fs::read(&victim).unwrap(), b"precious");
    fs::remove_file(out.join(MANIFEST)).unwrap();
    // A rank's part folder a link to a victim folder: the rank fails, nothing lands there.
    symlink(&victim_dir, out.join("part-00001-of-00002")).unwrap();
    assert_ok(&convert(&ins, &out, 0, 2));
    assert_error(
        &convert(&ins, &out, 1, 2),
        &["part-00001-of-00002", "already exists"],
    );
    assert_eq!(tree(&victim_dir), vec![victim.clone()]);
    assert_eq!(fs::read(&victim).unwrap(), b"precious");
    assert!(temps(&out).is_empty(), "{:?}", temps(&out));
}
