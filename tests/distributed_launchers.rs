//! `arraydrain convert --distributed` under real launchers on this one machine, then `merge`:
//! - `torchrun --standalone --nproc_per_node=3`, checked against `torch.utils.data` itself
//!   (`DataLoader` + `DistributedSampler` iterated by `tests/py/dist.py`): shuffled and not, with
//!   and without `--shard-drop-last`, with the loader's `--drop-last`, 10 rows over 3 ranks. The
//!   shuffled order is torch's own (`--indices` from `torch.randperm` under the sampler's seed);
//! - `mpiexec -n 3` from MPICH (the `mpich` wheel from PyPI, installed into the test venv by
//!   `scripts/test.sh`; no root needed);
//! - Slurm: no Slurm daemon exists on these machines, so three processes are started by hand with
//!   the variables `srun -n 3` sets (`SLURM_PROCID`, `SLURM_NTASKS`, `SLURM_LOCALID`).
//!
//! A missing launcher, torch or NumPy is a failure, never a skip.

#[path = "py/harness.rs"]
mod harness;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use harness::{numpy_python, text, Scratch};
use serde_json::json;

const LAUNCHER_VARS: [&str; 12] = [
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
];

fn bin() -> &'static str {
    env!("CARGO_BIN_EXE_arraydrain")
}

/// A command with no launcher variables inherited (the tests may themselves run under one).
fn clean(program: impl AsRef<std::ffi::OsStr>) -> Command {
    let mut c = Command::new(program);
    for v in LAUNCHER_VARS {
        c.env_remove(v);
    }
    c
}

fn run_ok(mut c: Command) -> String {
    let out = c
        .output()
        .unwrap_or_else(|e| panic!("cannot run {c:?}: {e}"));
    assert!(out.status.success(), "{c:?}\n{}", text(&out));
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

fn dist_py(py: &Path, args: &[&str]) -> String {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/py/dist.py");
    let mut c = clean(py);
    c.arg(script).args(args);
    run_ok(c)
}

/// Python with NumPy and torch (scripts/test.sh installs both).
fn torch_python() -> &'static Path {
    let py = numpy_python();
    let out = Command::new(py)
        .args(["-c", "import torch"])
        .output()
        .expect("run python");
    assert!(
        out.status.success(),
        "these tests need torch in {}: run scripts/test.sh (installs scripts/test-requirements.txt)\n{}",
        py.display(),
        text(&out)
    );
    py
}

/// `torchrun` of that Python's environment.
fn torchrun(py: &Path) -> PathBuf {
    let t = py.with_file_name("torchrun");
    assert!(
        t.exists(),
        "{} not found beside {}: run scripts/test.sh (installs torch)",
        t.display(),
        py.display()
    );
    t
}

/// MPICH's `mpiexec` (Hydra), from the `mpich` wheel in the test venv beside
/// `$ARRAYDRAIN_PYTHON`.
fn mpiexec() -> PathBuf {
    let exe = numpy_python().with_file_name("mpiexec");
    assert!(
        exe.is_file(),
        "{} not found: these tests need MPICH's mpiexec from the `mpich` wheel, which \
         scripts/test.sh installs into its venv",
        exe.display()
    );
    exe
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

fn merge(shards: &Path, out: &[&str]) -> String {
    let mut c = clean(bin());
    c.arg("merge").arg(shards).args(out);
    run_ok(c)
}

const ROWS: usize = 10; // not divisible by 3

#[test]
fn torchrun_ranks_write_torchs_shards_and_merge_into_the_sampler_order() {
    let py = torch_python();
    let torchrun = torchrun(py);
    let sc = Scratch::new("dist-torchrun");
    let inputs = sc.path("in");
    dist_py(py, &["make", &ROWS.to_string(), s(&inputs)]);
    let perm = sc.path("torch-perm.npy");
    let seed = 5u64;
    dist_py(
        py,
        &["torch-perm", &ROWS.to_string(), &seed.to_string(), s(&perm)],
    );

    // (shuffle, shard_drop_last, batch, drop_last)
    let mut specs = Vec::new();
    let cases = [
        (false, false, 2, false),
        (false, true, 2, false),
        (true, false, 2, false),
        (true, true, 2, false),
        (true, false, 3, true),
    ];
    for (k, &(shuffle, shard_drop_last, batch, drop_last)) in cases.iter().enumerate() {
        let shards = sc.path(&format!("shards-{k}"));
        let mut c = clean(&torchrun);
        c.args(["--standalone", "--nproc_per_node=3", "--no-python", bin()])
            .args(["convert", "--distributed", "--device", "cpu", "--quiet"])
            .arg(inputs.join("x.npy"))
            .arg(inputs.join("y.npy"))
            .args(["--out-dir", s(&shards), "--batch", &batch.to_string()]);
        if shuffle {
            c.args(["--indices", s(&perm)]);
        }
        if shard_drop_last {
            c.arg("--shard-drop-last");
        }
        if drop_last {
            c.arg("--drop-last");
        }
        let log = run_ok(c);
        for r in 0..3 {
            assert!(log.contains(&format!("rank {r} of 3:")), "{log}");
        }
        let merged_dir = sc.path(&format!("merged-{k}"));
        let merged_npz = sc.path(&format!("merged-{k}.npz"));
        let merged_mmap = sc.path(&format!("merged-{k}-mmap.npz"));
        merge(&shards, &["--out-dir", s(&merged_dir)]);
        merge(&shards, &["--out", s(&merged_npz)]);
        merge(&shards, &["--out", s(&merged_mmap), "--mmap"]);
        let spec = json!({
            "inputs": inputs, "shards": shards, "world": 3, "shuffle": shuffle, "seed": seed,
            "shard_drop_last": shard_drop_last, "batch": batch, "drop_last": drop_last,
            "merged": [merged_dir, merged_npz, merged_mmap],
        });
        if !shard_drop_last {
            // The sampler's padding, kept on request: 4 rows per rank (the last two positions
            // repeat the first two rows), or 3 per rank after dropping short batches of 3.
            let padded = sc.path(&format!("padded-{k}"));
            let summary = merge(&shards, &["--out-dir", s(&padded), "--keep-padding"]);
            let rows = if drop_last { 9 } else { 12 };
            assert!(
                summary.contains(&format!("{rows} rows (0 padding rows dropped)")),
                "{summary}"
            );
            let mut spec = spec.clone();
            spec["merged"] = json!([padded]);
            spec["keep_padding"] = json!(true);
            specs.push(spec);
        }
        specs.push(spec);
    }
    // One Python run checks every case against torch (importing torch takes seconds).
    let spec_path = sc.path("specs.json");
    std::fs::write(&spec_path, serde_json::to_string(&specs).unwrap()).unwrap();
    let report = dist_py(py, &["check-torch", s(&spec_path)]);
    assert_eq!(
        report.lines().filter(|l| l.starts_with("ok torch")).count(),
        specs.len(),
        "{report}"
    );
}

#[test]
fn torchrun_ranks_are_what_info_detects() {
    let py = torch_python();
    let mut c = clean(torchrun(py));
    c.args([
        "--standalone",
        "--nproc_per_node=3",
        "--no-python",
        bin(),
        "info",
    ]);
    let log = run_ok(c);
    for r in 0..3 {
        assert!(
            log.contains(&format!("rank {r} of 3, local rank {r}, from torchrun")),
            "{log}"
        );
    }
}

/// Writes the crate's own order (`shuffled` or sequential) cut to `rows`, for `check-order`.
fn write_order(path: &Path, order: Vec<u64>, rows: usize) {
    let order = ndarray::Array1::from_iter(order.into_iter().take(rows).map(|i| i as i64));
    arraydrain::npy::write_npy(
        path,
        &arraydrain::ColumnArray::from_array("order", order).unwrap(),
    )
    .unwrap();
}

fn check_order(py: &Path, sc: &Scratch, inputs: &Path, merged: &Path, order: &Path) {
    let spec = json!({"inputs": inputs, "merged": merged, "order": order});
    let spec_path = sc.path("order-spec.json");
    std::fs::write(&spec_path, spec.to_string()).unwrap();
    let report = dist_py(py, &["check-order", s(&spec_path)]);
    assert!(report.contains("ok order"), "{report}");
}

#[test]
fn mpiexec_ranks_write_shards_that_merge_into_the_sampler_order() {
    let py = numpy_python();
    let mpiexec = mpiexec();
    let sc = Scratch::new("dist-mpirun");
    let inputs = sc.path("in");
    dist_py(py, &["make", &ROWS.to_string(), s(&inputs)]);
    for (tag, shuffle) in [("seq", false), ("shuffle", true)] {
        let shards = sc.path(&format!("shards-{tag}"));
        let mut c = clean(&mpiexec);
        c.args(["-n", "3"])
            .args([
                bin(),
                "convert",
                "--distributed",
                "--device",
                "cpu",
                "--quiet",
            ])
            .arg(inputs.join("x.npy"))
            .arg(inputs.join("y.npy"))
            .args(["--out-dir", s(&shards), "--batch", "2"]);
        if shuffle {
            c.args(["--shuffle", "--seed", "9"]);
        }
        let log = run_ok(c);
        for r in 0..3 {
            assert!(log.contains(&format!("rank {r} of 3:")), "{log}");
        }
        let merged = sc.path(&format!("merged-{tag}"));
        let summary = merge(&shards, &["--out-dir", s(&merged)]);
        assert!(
            summary.contains("10 rows (2 padding rows dropped)"),
            "{summary}"
        );
        let base = if shuffle {
            arraydrain::sampler::shuffled(ROWS, 9)
        } else {
            (0..ROWS as u64).collect()
        };
        let order = sc.path(&format!("order-{tag}.npy"));
        write_order(&order, base, ROWS);
        check_order(py, &sc, &inputs, &merged, &order);
    }
    // And what each rank detects.
    let mut c = clean(&mpiexec);
    c.args(["-n", "3", bin(), "info"]);
    let log = run_ok(c);
    for r in 0..3 {
        assert!(
            log.contains(&format!("rank {r} of 3, local rank {r}, from mpich")),
            "{log}"
        );
    }
}

/// Slurm without a daemon: the variables `srun -n 3` gives its tasks, set by hand.
#[test]
fn slurm_variables_place_three_processes() {
    let py = numpy_python();
    let sc = Scratch::new("dist-slurm");
    let inputs = sc.path("in");
    dist_py(py, &["make", &ROWS.to_string(), s(&inputs)]);
    let shards = sc.path("shards");
    let children: Vec<(usize, std::process::Child)> = (0..3)
        .map(|r| {
            let mut c = clean(bin());
            c.args(["convert", "--distributed", "--device", "cpu", "--quiet"])
                .arg(inputs.join("x.npy"))
                .arg(inputs.join("y.npy"))
                .args([
                    "--out-dir",
                    s(&shards),
                    "--batch",
                    "2",
                    "--shuffle",
                    "--seed",
                    "4",
                ])
                .arg("--shard-drop-last")
                .env("SLURM_PROCID", r.to_string())
                .env("SLURM_NTASKS", "3")
                .env("SLURM_LOCALID", r.to_string())
                .stdout(std::process::Stdio::piped())
                .stderr(std::process::Stdio::piped());
            (r, c.spawn().expect("spawn arraydrain"))
        })
        .collect();
    for (r, child) in children {
        let out: Output = child.wait_with_output().unwrap();
        assert!(out.status.success(), "task {r}\n{}", text(&out));
        assert!(
            String::from_utf8_lossy(&out.stdout).starts_with(&format!("rank {r} of 3: 3 rows")),
            "{}",
            text(&out)
        );
    }
    let merged = sc.path("merged");
    let summary = merge(&shards, &["--out-dir", s(&merged)]);
    assert!(
        summary.contains("9 rows (0 padding rows dropped)"),
        "{summary}"
    );
    let order = sc.path("order.npy");
    write_order(&order, arraydrain::sampler::shuffled(ROWS, 4), 9);
    check_order(py, &sc, &inputs, &merged, &order);
    // What one task detects.
    let mut c = clean(bin());
    c.arg("info")
        .env("SLURM_PROCID", "2")
        .env("SLURM_NTASKS", "3")
        .env("SLURM_LOCALID", "0");
    let log = run_ok(c);
    assert!(
        log.contains("rank 2 of 3, local rank 0, from slurm"),
        "{log}"
    );
}
