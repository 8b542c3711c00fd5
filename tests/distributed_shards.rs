//! A shard folder that is incomplete, corrupt or mixed with another run is refused by `merge`
//! with a typed error listing every problem, and leaves no output: a missing part, a truncated
//! file, a flipped byte, a manifest of another run, two folders claiming the same rank, a part
//! folder without its record, a hand-edited manifest. A second process claiming a rank that is
//! already written fails at write time. Shards are made with explicit `--rank/--world-size`
//! (the launchers themselves are in `distributed_launchers.rs`).

use std::path::{Path, PathBuf};
use std::process::Command;

use arraydrain::shards::{self, MergeOptions, ShardError, ShardIssue};
use arraydrain::Error;
use ndarray::{Array1, Array2};

struct Dir(PathBuf);

impl Dir {
    fn new(name: &str) -> Dir {
        let d =
            Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        Dir(d)
    }
}

impl Drop for Dir {
    fn drop(&mut self) {
        if !std::thread::panicking() {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }
}

fn inputs(dir: &Path, rows: usize) -> [PathBuf; 2] {
    let x = Array2::from_shape_fn((rows, 3), |(i, j)| (i * 3 + j) as f32);
    let y = Array1::from_iter(0..rows as i64);
    let (xp, yp) = (dir.join("x.npy"), dir.join("y.npy"));
    arraydrain::npy::write_npy(&xp, &arraydrain::ColumnArray::from_array("x", x).unwrap()).unwrap();
    arraydrain::npy::write_npy(&yp, &arraydrain::ColumnArray::from_array("y", y).unwrap()).unwrap();
    [xp, yp]
}

fn convert(inputs: &[PathBuf; 2], out: &Path, rank: usize, extra: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_arraydrain"))
        .arg("convert")
        .args(inputs)
        .args(["--distributed", "--device", "cpu", "--quiet", "--rank"])
        .arg(rank.to_string())
        .args(["--world-size", "3", "--batch", "2", "--out-dir"])
        .arg(out)
        .args(extra)
        .output()
        .unwrap()
}

/// A complete 3-rank shard folder of 10 rows.
fn shards(dir: &Path, name: &str, extra: &[&str]) -> PathBuf {
    let ins = inputs(dir, 10);
    let out = dir.join(name);
    for r in 0..3 {
        let o = convert(&ins, &out, r, extra);
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    }
    out
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        if e.path().is_dir() {
            copy_dir(&e.path(), &to.join(e.file_name()));
        } else {
            std::fs::copy(e.path(), to.join(e.file_name())).unwrap();
        }
    }
}

fn issues(dir: &Path) -> Vec<ShardIssue> {
    match shards::check(dir) {
        Err(Error::Shard(ShardError::SetInvalid { issues, .. })) => issues,
        other => panic!("expected ShardSetInvalid, got {other:?}"),
    }
}

/// `arraydrain merge` fails, prints every expected fragment, and writes nothing.
fn merge_fails(dir: &Path, fragments: &[&str]) {
    let out = dir.with_extension("merged");
    let o = Command::new(env!("CARGO_BIN_EXE_arraydrain"))
        .arg("merge")
        .arg(dir)
        .arg("--out-dir")
        .arg(&out)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        matches!(o.status.code(), Some(1 | 2)),
        "merge of a bad set succeeded"
    );
    for f in fragments {
        assert!(err.contains(f), "{err:?} lacks {f:?}");
    }
    assert!(!out.exists(), "a failed merge left {}", out.display());
}

#[test]
fn a_complete_set_checks_and_merges() {
    let d = Dir::new("shards-ok");
    let dir = shards(&d.0, "ok", &[]);
    let set = shards::check(&dir).unwrap();
    assert_eq!((set.rows(false), set.rows(true)), (10, 12));
    let out = d.0.join("merged");
    let summary = shards::merge(&MergeOptions {
        dir: dir.clone(),
        out: None,
        out_dir: Some(out.clone()),
        mmap: false,
        keep_padding: false,
    })
    .unwrap();
    assert_eq!((summary.rows, summary.padding_dropped), (10, 2));
    let y = arraydrain::npy::read_npy(out.join("y.npy")).unwrap();
    let y: Vec<i64> = bytemuck::cast_slice::<u8, i64>(y.bytes()).to_vec();
    assert_eq!(y, (0..10).collect::<Vec<i64>>());
    // Nothing temporary left beside the parts or the outputs.
    for d in [&dir, &out] {
        let hidden: Vec<_> = std::fs::read_dir(d)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .filter(|n| n.starts_with('.'))
            .collect();
        assert!(hidden.is_empty(), "{hidden:?}");
    }
}

#[test]
fn a_missing_part_is_named() {
    let d = Dir::new("shards-missing");
    let dir = shards(&d.0, "s", &[]);
    std::fs::remove_dir_all(dir.join("part-00001-of-00003")).unwrap();
    assert_eq!(
        issues(&dir),
        [ShardIssue::MissingPart {
            part: "part-00001-of-00003".into()
        }]
    );
    merge_fails(&dir, &["part-00001-of-00003: missing"]);
}

#[test]
fn a_truncated_or_flipped_file_is_named() {
    let d = Dir::new("shards-truncated");
    let dir = shards(&d.0, "s", &[]);
    let x2 = dir.join("part-00002-of-00003/x.npy");
    let len = std::fs::metadata(&x2).unwrap().len();
    let f = std::fs::OpenOptions::new().write(true).open(&x2).unwrap();
    f.set_len(len - 12).unwrap();
    drop(f);
    assert_eq!(
        issues(&dir),
        [ShardIssue::SizeMismatch {
            file: "part-00002-of-00003/x.npy".into(),
            expected: len,
            got: len - 12
        }]
    );
    merge_fails(&dir, &["part-00002-of-00003/x.npy", "truncated"]);

    // Same size, one byte changed: the checksum catches it.
    let dir = shards(&d.0, "flip", &[]);
    let y0 = dir.join("part-00000-of-00003/y.npy");
    let mut bytes = std::fs::read(&y0).unwrap();
    let last = bytes.len() - 1;
    bytes[last] ^= 0x40;
    std::fs::write(&y0, &bytes).unwrap();
    let found = issues(&dir);
    assert!(
        matches!(found.as_slice(), [ShardIssue::Checksum { file, .. }] if file == "part-00000-of-00003/y.npy"),
        "{found:?}"
    );
    merge_fails(&dir, &["part-00000-of-00003/y.npy: CRC-32", "corrupt"]);

    // A changed byte in a row that the merge leaves out (rank 2's last row is position 11, the
    // sampler's padding) is caught too, and by every kind of output.
    let dir = shards(&d.0, "flip-padding", &[]);
    let x2 = dir.join("part-00002-of-00003/x.npy");
    let mut bytes = std::fs::read(&x2).unwrap();
    let last = bytes.len() - 1;
    bytes[last] ^= 0x01;
    std::fs::write(&x2, &bytes).unwrap();
    merge_fails(&dir, &["part-00002-of-00003/x.npy: CRC-32"]);
    for extra in [&[][..], &["--mmap"][..]] {
        let npz = d.0.join("flip-padding.npz");
        let o = Command::new(env!("CARGO_BIN_EXE_arraydrain"))
            .arg("merge")
            .arg(&dir)
            .arg("--out")
            .arg(&npz)
            .args(extra)
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(
            matches!(o.status.code(), Some(1 | 2))
                && err.contains("part-00002-of-00003/x.npy: CRC-32"),
            "{err}"
        );
        assert!(!npz.exists());
        let left: Vec<_> = std::fs::read_dir(&d.0)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .filter(|n| n.starts_with('.'))
            .collect();
        assert!(left.is_empty(), "{left:?}");
    }
}

#[test]
fn a_manifest_of_another_run_is_refused() {
    let d = Dir::new("shards-foreign");
    let dir = shards(&d.0, "s", &[]);
    let other = shards(&d.0, "other", &["--shuffle", "--seed", "1"]);
    let theirs = shards::Manifest::read(&other).unwrap().run_id;
    let ours = shards::Manifest::read(&dir).unwrap().run_id;
    assert_ne!(theirs, ours);
    std::fs::copy(other.join("manifest.json"), dir.join("manifest.json")).unwrap();
    let found = issues(&dir);
    assert_eq!(found.len(), 3, "{found:?}");
    for (r, issue) in found.iter().enumerate() {
        assert_eq!(
            issue,
            &ShardIssue::ForeignPart {
                part: shards::part_name(r, 3),
                run_id: ours.clone(),
                expected: theirs.clone()
            }
        );
    }
    merge_fails(&dir, &["from another run", &ours, &theirs]);
    // A rank of another run refuses to write into the folder at all.
    let ins = inputs(&d.0, 10);
    let o = convert(&ins, &other, 0, &[]);
    assert!(matches!(o.status.code(), Some(1 | 2)));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains("manifest.json already exists: a manifest of another run"),
        "{err}"
    );
}

#[test]
fn two_claims_of_one_rank_are_refused() {
    let d = Dir::new("shards-dup");
    let dir = shards(&d.0, "s", &[]);
    // A second process claiming rank 1 fails, naming the part and its writer.
    let ins = inputs(&d.0, 10);
    let o = convert(&ins, &dir, 1, &[]);
    assert!(matches!(o.status.code(), Some(1 | 2)));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains("part-00001-of-00003 already exists: a part written by rank 1"),
        "{err}"
    );
    // Two folders holding rank 1's shard (rank 2's part replaced by a copy of rank 1's).
    std::fs::remove_dir_all(dir.join("part-00002-of-00003")).unwrap();
    copy_dir(
        &dir.join("part-00001-of-00003"),
        &dir.join("part-00002-of-00003"),
    );
    assert_eq!(
        issues(&dir),
        [ShardIssue::DuplicateClaim {
            rank: 1,
            parts: vec!["part-00001-of-00003".into(), "part-00002-of-00003".into()]
        }]
    );
    merge_fails(
        &dir,
        &["rank 1 claimed by part-00001-of-00003 and part-00002-of-00003"],
    );
}

#[test]
fn unfinished_parts_and_edited_manifests_are_refused() {
    let d = Dir::new("shards-unfinished");
    let dir = shards(&d.0, "s", &[]);
    std::fs::remove_file(dir.join("part-00000-of-00003/part.json")).unwrap();
    let found = issues(&dir);
    assert!(
        matches!(found.as_slice(), [ShardIssue::Unfinished { part, .. }] if part == "part-00000-of-00003"),
        "{found:?}"
    );
    let dir = shards(&d.0, "edited", &[]);
    let path = dir.join("manifest.json");
    let text = std::fs::read_to_string(&path).unwrap();
    std::fs::write(
        &path,
        text.replace("\"merged_rows\": 10", "\"merged_rows\": 11"),
    )
    .unwrap();
    let e = shards::check(&dir).unwrap_err();
    assert!(
        matches!(e, Error::Shard(ShardError::ManifestInvalid { .. })),
        "{e}"
    );
    merge_fails(&dir, &["not a usable shard manifest", "edited or damaged"]);
    std::fs::write(&path, "{").unwrap();
    assert!(matches!(
        shards::check(&dir),
        Err(Error::Shard(ShardError::ManifestInvalid { .. }))
    ));
}

#[test]
fn launcher_errors_fail_before_writing_anything() {
    let d = Dir::new("shards-launcher");
    let ins = inputs(&d.0, 10);
    let out = d.0.join("out");
    let run = |env: &[(&str, &str)], extra: &[&str]| {
        let mut c = Command::new(env!("CARGO_BIN_EXE_arraydrain"));
        for v in [
            "RANK",
            "WORLD_SIZE",
            "LOCAL_RANK",
            "OMPI_COMM_WORLD_RANK",
            "OMPI_COMM_WORLD_SIZE",
            "OMPI_COMM_WORLD_LOCAL_RANK",
            "PMI_RANK",
            "PMI_SIZE",
            "MPI_LOCALRANKID",
            "SLURM_PROCID",
            "SLURM_NTASKS",
            "SLURM_LOCALID",
            "CUDA_VISIBLE_DEVICES",
        ] {
            c.env_remove(v);
        }
        c.arg("convert")
            .args(&ins)
            .args(["--distributed", "--quiet", "--out-dir"])
            .arg(&out)
            .args(extra)
            .envs(env.iter().copied());
        let o = c.output().unwrap();
        assert!(matches!(o.status.code(), Some(1 | 2)), "{env:?} succeeded");
        assert!(!out.exists(), "{env:?} left {}", out.display());
        String::from_utf8_lossy(&o.stderr).into_owned()
    };
    let e = run(&[], &["--device", "cpu"]);
    assert!(
        e.contains("no launcher detected") && e.contains("SLURM_PROCID"),
        "{e}"
    );
    let e = run(&[("RANK", "1")], &["--device", "cpu"]);
    assert!(
        e.contains("torchrun: RANK set but WORLD_SIZE missing"),
        "{e}"
    );
    let e = run(
        &[("PMI_RANK", "3"), ("PMI_SIZE", "3")],
        &["--device", "cpu"],
    );
    assert!(e.contains("PMI_RANK=3, PMI_SIZE=3"), "{e}");
    // The device of local rank 2 among two visible devices, when CUDA is required.
    let e = run(
        &[
            ("RANK", "2"),
            ("WORLD_SIZE", "3"),
            ("LOCAL_RANK", "2"),
            ("CUDA_VISIBLE_DEVICES", "0,1"),
        ],
        &["--device", "cuda"],
    );
    assert!(e.contains("CUDA_VISIBLE_DEVICES=0,1"), "{e}");
    // Without an output folder, clap refuses.
    let o = Command::new(env!("CARGO_BIN_EXE_arraydrain"))
        .arg("convert")
        .args(&ins)
        .args(["--distributed", "--rank", "0", "--world-size", "1", "--out"])
        .arg(d.0.join("x.npz"))
        .output()
        .unwrap();
    assert!(matches!(o.status.code(), Some(1 | 2)));
    assert!(!d.0.join("x.npz").exists());
}

#[test]
fn device_auto_falls_back_to_the_cpu_when_the_local_rank_has_no_device() {
    let d = Dir::new("shards-auto");
    let ins = inputs(&d.0, 10);
    let out = d.0.join("out");
    let o = Command::new(env!("CARGO_BIN_EXE_arraydrain"))
        .arg("convert")
        .args(&ins)
        .args(["--distributed", "--quiet", "--device", "auto", "--out-dir"])
        .arg(&out)
        .env_remove("SLURM_PROCID")
        .env_remove("OMPI_COMM_WORLD_RANK")
        .env_remove("PMI_RANK")
        .env("RANK", "2")
        .env("WORLD_SIZE", "3")
        .env("LOCAL_RANK", "2")
        .env("CUDA_VISIBLE_DEVICES", "0,1")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&o.stdout);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert!(
        stdout.starts_with("rank 2 of 3: 4 rows") && stdout.contains("backend cpu"),
        "{stdout}"
    );
    assert!(out.join("part-00002-of-00003/x.npy").exists());
}
