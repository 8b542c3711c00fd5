//! `arraydrain convert` end to end, checked by real NumPy: the built binary converts
//! NumPy-written inputs; NumPy reads the outputs and compares them with its own gather
//! `x[order]` (sequential, shuffled with the order the command saved, explicit `--indices`,
//! sharded). Bad inputs of every kind fail with a message naming the file and leave no output.
//! A memory-mapped output keeps the process's anonymous memory far below the output's size and
//! releases finished regions as it goes.

#[path = "py/harness.rs"]
mod harness;

use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use harness::{files_under, fixtures, json, numpy_python, strings, text, Scratch};
use serde_json::{json, Value};

fn convert(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_arraydrain"))
        .arg("convert")
        .args(args)
        .output()
        .expect("run arraydrain")
}

fn ok(args: &[&str]) -> String {
    let out = convert(args);
    assert!(out.status.success(), "convert {args:?}\n{}", text(&out));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn p(path: &Path) -> &str {
    path.to_str().unwrap()
}

#[test]
fn convert_output_equals_numpys_gather_in_every_order() {
    let py = numpy_python();
    let s = Scratch::new("convert-orders");
    let inputs_dir = s.path("in");
    fixtures(py, &["make-inputs", p(&inputs_dir), "777"]);
    let manifest = json(&inputs_dir.join("manifest.json"));
    let inputs = strings(&manifest["inputs"]);
    let order64 = manifest["orders"]["order64"].as_str().unwrap().to_string();
    let order32 = manifest["orders"]["order32"].as_str().unwrap().to_string();

    let mut specs: Vec<Value> = Vec::new();
    let mut run = |tag: &str, kind: &str, extra: &[&str], order: Value, check: Value| {
        let out = s.path(&format!("{tag}{}", if kind == "npz" { ".npz" } else { "" }));
        let saved = s.path(&format!("{tag}.order.npy"));
        let mut args: Vec<&str> = inputs.iter().map(String::as_str).collect();
        args.extend([if kind == "npz" { "--out" } else { "--out-dir" }, p(&out)]);
        args.extend(["--save-order", p(&saved), "--device", "cpu"]);
        args.extend(extra);
        let summary = ok(&args);
        assert_eq!(summary.lines().count(), 1, "{summary}");
        for word in ["rows", "MB", "GB/s", "strategy", "backend cpu"] {
            assert!(summary.contains(word), "summary {summary:?} lacks {word:?}");
        }
        let mut spec = json!({"inputs": inputs, "output": out, "kind": kind, "order": order,
                              "expect_order": saved});
        for (k, v) in check.as_object().unwrap() {
            spec[k] = v.clone();
        }
        specs.push(spec);
        summary
    };
    run("seq", "npz", &[], json!({"seq": true}), json!({}));
    run(
        "seq-dir",
        "dir",
        &["--batch", "50"],
        json!({"seq": true}),
        json!({}),
    );
    let shuffled =
        |tag: &str| json!({"file": s.path(&format!("{tag}.order.npy")), "permutation": true});
    run(
        "shuffle",
        "npz",
        &["--shuffle", "--seed", "5"],
        shuffled("shuffle"),
        json!({}),
    );
    run(
        "shuffle-dir",
        "dir",
        &["--shuffle", "--seed", "6", "--batch", "1"],
        shuffled("shuffle-dir"),
        json!({}),
    );
    run(
        "idx64",
        "npz",
        &["--indices", &order64],
        json!({"file": order64}),
        json!({}),
    );
    run(
        "idx32-drop",
        "dir",
        &["--indices", &order32, "--batch", "16", "--drop-last"],
        json!({"file": order32}),
        json!({"batch": 16, "drop_last": true}),
    );
    run(
        "shard",
        "npz",
        &["--rank", "1", "--world-size", "3"],
        json!({"shard": [1, 3]}),
        json!({}),
    );
    run(
        "shard-drop",
        "npz",
        &[
            "--rank",
            "3",
            "--world-size",
            "4",
            "--drop-last",
            "--shard-drop-last",
            "--batch",
            "10",
        ],
        json!({"shard": [3, 4], "drop_last": true}),
        json!({"batch": 10, "drop_last": true}),
    );
    // The two flags apart: `--shard-drop-last` cuts the sampler's order and keeps a short last
    // batch; `--drop-last` drops a short last batch of the padded shard.
    run(
        "shard-cut",
        "npz",
        &[
            "--rank",
            "3",
            "--world-size",
            "4",
            "--shard-drop-last",
            "--batch",
            "10",
        ],
        json!({"shard": [3, 4], "drop_last": true}),
        json!({"batch": 10}),
    );
    run(
        "shard-padded-drop",
        "npz",
        &[
            "--rank",
            "3",
            "--world-size",
            "4",
            "--drop-last",
            "--batch",
            "10",
        ],
        json!({"shard": [3, 4]}),
        json!({"batch": 10, "drop_last": true}),
    );
    run(
        "columns-compressed",
        "npz",
        &["--columns", "y,fort,k", "--compress", "--shuffle"],
        shuffled("columns-compressed"),
        json!({"columns": ["y", "fort", "k"], "compressed": true}),
    );
    for strategy in ["concat", "per-batch", "preallocated"] {
        let tag = format!("strategy-{strategy}");
        let summary = run(
            &tag,
            "npz",
            &["--strategy", strategy, "--shuffle"],
            shuffled(&tag),
            json!({}),
        );
        assert!(
            summary.contains(&format!("strategy {strategy}")),
            "{summary}"
        );
    }
    let summary = run(
        "mmap-dir",
        "dir",
        &["--mmap", "--shuffle", "--seed", "9"],
        shuffled("mmap-dir"),
        json!({}),
    );
    assert!(summary.contains("memory-mapped"), "{summary}");
    run(
        "mmap-npz",
        "npz",
        &["--mmap", "--rank", "0", "--world-size", "2"],
        json!({"shard": [0, 2]}),
        json!({}),
    );

    // Zero-row inputs convert to zero-row outputs.
    let zero = strings(&manifest["zero_inputs"]);
    for (tag, kind, extra) in [
        ("zero", "npz", vec![]),
        ("zero-shuffle-mmap", "dir", vec!["--shuffle", "--mmap"]),
    ] {
        let out = s.path(&format!("{tag}{}", if kind == "npz" { ".npz" } else { "" }));
        let mut args: Vec<&str> = zero.iter().map(String::as_str).collect();
        args.extend([if kind == "npz" { "--out" } else { "--out-dir" }, p(&out)]);
        args.extend(extra);
        assert!(ok(&args).starts_with("0 rows"));
        specs.push(json!({"inputs": zero, "output": out, "kind": kind, "order": {"seq": true}}));
    }

    let spec_path = s.path("checks.json");
    std::fs::write(&spec_path, serde_json::to_string(&specs).unwrap()).unwrap();
    let report = fixtures(py, &["check", p(&spec_path)]);
    assert_eq!(
        report.lines().filter(|l| l.starts_with("ok ")).count(),
        specs.len()
    );
    let leftovers: Vec<String> = files_under(&s.0)
        .into_iter()
        .filter(|f| f.contains(".arraydrain-"))
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");
}

#[test]
fn bad_inputs_fail_naming_the_file_and_leave_no_output() {
    let py = numpy_python();
    let s = Scratch::new("convert-bad");
    let bad_dir = s.path("bad");
    fixtures(py, &["make-bad", p(&bad_dir)]);
    let bad = json(&bad_dir.join("bad.json"));
    let out_root = s.path("out");
    let mut cases: Vec<(String, Vec<String>, Vec<String>)> = Vec::new();
    for case in bad["read"].as_array().unwrap() {
        cases.push((
            case["name"].as_str().unwrap().into(),
            strings(&case["inputs"]),
            strings(&case["expect"]),
        ));
    }
    for case in bad["indices"].as_array().unwrap() {
        let mut args = strings(&case["inputs"]);
        args.extend(["--indices".into(), case["indices"].as_str().unwrap().into()]);
        cases.push((
            case["name"].as_str().unwrap().into(),
            args,
            strings(&case["expect"]),
        ));
    }
    assert!(cases.len() >= 25, "{} cases", cases.len());
    for (name, inputs, words) in &cases {
        for (flag, target, extra) in [
            ("--out", "out.npz", None),
            ("--out-dir", "dir", None),
            ("--out-dir", "mdir", Some("--mmap")),
        ] {
            std::fs::create_dir_all(&out_root).unwrap();
            let target = out_root.join(target);
            let mut args: Vec<&str> = inputs.iter().map(String::as_str).collect();
            args.extend([flag, p(&target)]);
            args.extend(extra);
            let out = convert(&args);
            let stderr = String::from_utf8_lossy(&out.stderr);
            assert!(
                matches!(out.status.code(), Some(1 | 2)),
                "{name}: succeeded\n{}",
                text(&out)
            );
            assert!(
                !stderr.contains("panicked"),
                "{name}: panicked\n{}",
                text(&out)
            );
            for w in words {
                assert!(
                    stderr.contains(w.as_str()),
                    "{name}: stderr lacks {w:?}\n{}",
                    text(&out)
                );
            }
            let left = files_under(&out_root);
            assert!(left.is_empty(), "{name} ({flag}): left {left:?}");
        }
    }

    // Usage errors and an unwritable output also fail cleanly.
    let good = p(&bad_dir.join("good.npy")).to_string();
    let usage: [&[&str]; 5] = [
        &[&good],
        &[&good, "--out", "a.npz", "--out-dir", "d"],
        &[&good, "--out", "a.npz", "--shuffle", "--indices", &good],
        &[&good, "--out", "a.npz", "--rank", "1"],
        &[&good, "--out", "a.npz", "--batch", "0"],
    ];
    for args in usage {
        let out = convert(args);
        assert!(
            matches!(out.status.code(), Some(1 | 2)),
            "{args:?} succeeded"
        );
    }
    let nowhere = s.path("no/such/dir/out.npz");
    let out = convert(&[&good, "--out", p(&nowhere)]);
    assert!(matches!(out.status.code(), Some(1 | 2)));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("no/such/dir"),
        "{}",
        text(&out)
    );
    let out = convert(&[
        &good,
        "--out",
        p(&out_root.join("x.npz")),
        "--columns",
        "nope",
    ]);
    assert!(matches!(out.status.code(), Some(1 | 2)));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("nope"),
        "{}",
        text(&out)
    );
    assert!(files_under(&out_root).is_empty());
}

fn status_kb(pid: u32) -> Option<(u64, u64)> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let field = |name: &str| -> Option<u64> {
        let line = text.lines().find(|l| l.starts_with(name))?;
        line.split_whitespace().nth(1)?.parse().ok()
    };
    let anon = field("RssAnon:")?;
    let file = field("RssFile:")? + field("RssShmem:").unwrap_or(0);
    Some((anon, file))
}

#[test]
fn mapped_output_is_never_resident_as_a_whole() {
    assert!(
        Path::new("/proc/self/status").exists(),
        "this test reads the memory of the converting process from /proc/<pid>/status"
    );
    let py = numpy_python();
    let s = Scratch::new("convert-mmap-rss");
    // A 64 MiB input drained four times over (in a shuffled order with repeats) into a 256 MiB
    // memory-mapped output: the input may stay mapped; the output must not.
    let rows = 65_536usize;
    let gen = format!(
        "import numpy as np; r=np.random.default_rng(3); \
         np.save(r'{x}', r.standard_normal(({rows}, 256), dtype=np.float32)); \
         np.save(r'{o}', np.concatenate([r.permutation({rows}) for _ in range(4)]))",
        x = p(&s.path("x.npy")),
        o = p(&s.path("order.npy")),
    );
    let st = Command::new(py).args(["-c", &gen]).status().unwrap();
    assert!(st.success());
    let input_kb = (rows * 256 * 4 / 1024) as u64;
    let output_kb = 4 * input_kb;
    let out_dir = s.path("out");
    let mut child = Command::new(env!("CARGO_BIN_EXE_arraydrain"))
        .args([
            "convert",
            p(&s.path("x.npy")),
            "--indices",
            p(&s.path("order.npy")),
        ])
        .args([
            "--out-dir",
            p(&out_dir),
            "--mmap",
            "--batch",
            "1024",
            "--quiet",
            "--device",
            "cpu",
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let pid = child.id();
    let (mut peak_anon, mut peak_file, mut samples) = (0u64, 0u64, 0usize);
    loop {
        if let Some((anon, file)) = status_kb(pid) {
            peak_anon = peak_anon.max(anon);
            peak_file = peak_file.max(file);
            samples += 1;
        }
        if child.try_wait().unwrap().is_some() {
            break;
        }
        std::thread::sleep(Duration::from_millis(2));
    }
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "{}", text(&out));
    eprintln!(
        "mapped output of {output_kb} KiB: peak RssAnon {peak_anon} KiB, peak RssFile+RssShmem \
         {peak_file} KiB, {samples} samples"
    );
    assert!(samples >= 5, "too few samples ({samples}) to judge");
    // No in-memory copy of the output: anonymous memory stays under an eighth of it (what there
    // is: the index list, thread stacks, the allocator).
    assert!(
        peak_anon < output_kb / 8,
        "peak RssAnon {peak_anon} KiB for a {output_kb} KiB output"
    );
    // Finished regions are released as the drain goes: mapped file pages never approach input
    // plus output (which they would reach if the output's pages stayed mapped).
    assert!(
        peak_file < input_kb + output_kb / 2,
        "peak mapped-file RSS {peak_file} KiB (input {input_kb} KiB, output {output_kb} KiB)"
    );
    // And the output is right.
    let check = format!(
        "import numpy as np; x=np.load(r'{x}'); o=np.load(r'{o}'); y=np.load(r'{y}', mmap_mode='r'); \
         assert y.shape == (4*{rows}, 256) and np.array_equal(y, x[o]), 'mismatch'",
        x = p(&s.path("x.npy")),
        o = p(&s.path("order.npy")),
        y = p(&out_dir.join("x.npy")),
    );
    let st = Command::new(py).args(["-c", &check]).status().unwrap();
    assert!(st.success());
}

#[test]
fn quiet_prints_only_the_summary() {
    let s = Scratch::new("convert-quiet");
    // Written by the library itself, so this runs without NumPy.
    let x = ndarray::Array2::from_shape_fn((100, 3), |(i, j)| (i * 3 + j) as f32);
    let col = arraydrain::ColumnArray::from_array("x", x).unwrap();
    arraydrain::npy::write_npy(s.path("x.npy"), &col).unwrap();
    let out = convert(&[p(&s.path("x.npy")), "--out", p(&s.path("o.npz")), "--quiet"]);
    assert!(out.status.success(), "{}", text(&out));
    assert!(out.stderr.is_empty(), "{}", text(&out));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.starts_with("100 rows, 0.0 MB in "), "{stdout}");
    let back = arraydrain::npy::read_npz(s.path("o.npz")).unwrap();
    assert_eq!(back[0].bytes(), col.as_bytes());
}
