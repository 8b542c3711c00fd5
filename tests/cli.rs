//! The command line as a user runs it: `info`, `bench` (table and JSON), bad arguments.

use std::process::Command;

fn arraydrain() -> Command {
    Command::new(env!("CARGO_BIN_EXE_arraydrain"))
}

#[test]
fn info_reports_version_threads_and_backends() {
    let out = arraydrain().arg("info").output().unwrap();
    assert!(out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains(env!("CARGO_PKG_VERSION")), "{text}");
    assert!(text.contains("threads:"), "{text}");
    assert!(text.contains("cpu: available"), "{text}");
    assert!(text.contains("cuda:"), "{text}");
    // Which NVRTC the kernels would be compiled with (or why none), and what CUDA needs.
    assert!(text.contains("cuda kernels:"), "{text}");
    assert!(text.contains("a driver of CUDA 12.0 or newer"), "{text}");
}

#[test]
fn bench_verifies_every_strategy_and_writes_the_documented_json() {
    let dir = std::env::temp_dir().join(format!("arraydrain-cli-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let json = dir.join("bench.json");
    let out = arraydrain()
        .args([
            "bench",
            "--rows",
            "3000",
            "--dim",
            "8",
            "--batch",
            "100",
            "--repeat",
            "2",
            "--shuffle",
        ])
        .args(["--seed", "3", "--drop-last", "--device", "cpu", "--json"])
        .arg(&json)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for s in [
        "concat",
        "per-batch",
        "preallocated",
        "auto",
        "preallocated-into",
    ] {
        assert!(
            stdout
                .lines()
                .any(|l| l.starts_with(s) && l.trim_end().ends_with("yes")),
            "{s}: {stdout}"
        );
    }
    let doc: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
    let w = &doc["workload"];
    assert_eq!(w["rows"], 3000); // 30 full batches of 100: nothing dropped
    assert_eq!(w["batch_size"], 100);
    assert_eq!(w["order"], "shuffle");
    assert_eq!(w["seed"], 3);
    assert_eq!(w["drop_last"], true);
    assert_eq!(w["output_bytes"], 3000 * (8 * 4 + 8));
    assert_eq!(w["columns"][0]["name"], "x");
    assert_eq!(w["columns"][0]["dtype"], "f32");
    assert_eq!(w["columns"][0]["row_shape"], serde_json::json!([8]));
    assert_eq!(w["columns"][1]["row_shape"], serde_json::json!([]));
    for f in ["cpu_fresh", "cpu_warm"] {
        assert!(doc["floors"][f]["seconds"].as_f64().unwrap() > 0.0);
        assert!(doc["floors"][f]["gbps"].as_f64().unwrap() > 0.0);
    }
    let results = doc["results"].as_array().unwrap();
    assert_eq!(results.len(), 5);
    for r in results {
        assert_eq!(r["backend"], "cpu");
        assert_eq!(r["verified"], true);
        let s = &r["seconds"];
        assert!(s["min"].as_f64().unwrap() <= s["median"].as_f64().unwrap());
        assert!(s["median"].as_f64().unwrap() <= s["max"].as_f64().unwrap());
        assert!(r["gbps"].as_f64().unwrap() > 0.0);
        assert!(r["floor_ratio"].as_f64().unwrap() > 0.0);
        assert!(r["peak_alloc_bytes"].is_u64());
    }
    // Peak memory: the classic recipes hold about twice the output, preallocated once.
    let peak = |name: &str| {
        results.iter().find(|r| r["strategy"] == name).unwrap()["peak_alloc_bytes"]
            .as_u64()
            .unwrap()
    };
    let bytes = 3000 * 40;
    assert_eq!(peak("preallocated"), bytes);
    assert_eq!(peak("concat"), 2 * bytes);
    assert!(peak("per-batch") >= 2 * bytes);
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn bad_arguments_fail_with_a_message() {
    let out = arraydrain()
        .args(["bench", "--rows", "10", "--batch", "0", "--device", "cpu"])
        .output()
        .unwrap();
    assert!(matches!(out.status.code(), Some(1 | 2)));
    assert!(String::from_utf8_lossy(&out.stderr).contains("batch_size must be at least 1"));
    let out = arraydrain()
        .args([
            "bench",
            "--rows",
            "10",
            "--strategies",
            "fastest",
            "--device",
            "cpu",
        ])
        .output()
        .unwrap();
    assert!(matches!(out.status.code(), Some(1 | 2)));
    assert!(String::from_utf8_lossy(&out.stderr).contains("unknown strategy"));
}

#[test]
fn without_a_cuda_device_bench_auto_runs_the_cpu_and_cuda_fails_cleanly() {
    if arraydrain::cuda::probe(0).is_ok() {
        println!("a CUDA device is usable here: this test checks the no-device case only");
        return;
    }
    let out = arraydrain()
        .args([
            "bench", "--rows", "500", "--dim", "4", "--batch", "64", "--repeat", "1", "--device",
            "auto",
        ])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(stderr.contains("CUDA unavailable"), "{stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout
            .lines()
            .any(|l| l.starts_with("preallocated ") && l.contains(" cpu ")),
        "{stdout}"
    );
    assert!(!stdout.contains(" cuda "), "{stdout}");

    let out = arraydrain()
        .args(["bench", "--rows", "500", "--device", "cuda"])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(matches!(out.status.code(), Some(1 | 2)));
    assert!(stderr.contains("CUDA"), "{stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
}

/// `--row-shape` and `--dtype` set the shape and element type of `x` (an image-like workload
/// here), and the JSON says so; every output is still verified.
#[test]
fn bench_takes_a_row_shape_and_a_dtype() {
    let dir = std::env::temp_dir().join(format!("arraydrain-cli-shape-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let json = dir.join("bench.json");
    let out = arraydrain()
        .args([
            "bench",
            "--rows",
            "40",
            "--row-shape",
            "3,16,16",
            "--dtype",
            "u8",
        ])
        .args([
            "--batch",
            "7",
            "--shuffle",
            "--repeat",
            "1",
            "--device",
            "cpu",
            "--json",
        ])
        .arg(&json)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("x u8 [3, 16, 16]"), "{stdout}");
    let doc: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
    let w = &doc["workload"];
    assert_eq!(w["columns"][0]["dtype"], "u8");
    assert_eq!(w["columns"][0]["row_shape"], serde_json::json!([3, 16, 16]));
    assert_eq!(w["output_bytes"], 40 * (3 * 16 * 16 + 8));
    for r in doc["results"].as_array().unwrap() {
        assert_eq!(r["verified"], true, "{r}");
    }
    std::fs::remove_dir_all(&dir).ok();

    let out = arraydrain()
        .args(["bench", "--rows", "10", "--dtype", "f33", "--device", "cpu"])
        .output()
        .unwrap();
    assert!(matches!(out.status.code(), Some(1 | 2)));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("unknown dtype"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A workload too large for the machine is a typed allocation error with a message and a
/// failure exit — not an abort in the reference gather or the table — whether its size
/// overflows the address space or only exceeds the memory available.
#[test]
fn bench_with_huge_rows_is_an_allocation_error_not_an_abort() {
    // Rows whose table fits in half the memory available now, but not with the reference, the
    // floors and an output beside it: refused before anything large is touched.
    let avail = arraydrain::sysmem::available_bytes().expect("available memory is known here");
    let half = (avail / 9 / 2).to_string();
    for args in [
        &["--rows", half.as_str(), "--row-shape", "1", "--dtype", "u8"][..],
        // 2^62 rows of 128 f32: the size overflows.
        &["--rows", "4611686018427387904"][..],
        // 10^12 rows of one byte: fits the address space, not the machine.
        &[
            "--rows",
            "1000000000000",
            "--row-shape",
            "1",
            "--dtype",
            "u8",
        ][..],
        // Rows whose own size overflows.
        &["--rows", "10", "--row-shape", "4294967296,4294967296"][..],
    ] {
        let out = arraydrain()
            .arg("bench")
            .args(args)
            .args(["--device", "cpu", "--repeat", "1"])
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{args:?}: {stderr}");
        assert!(stderr.contains("cannot allocate"), "{args:?}: {stderr}");
        assert!(!stderr.contains("panicked"), "{args:?}: {stderr}");
        assert!(!stderr.contains("memory allocation"), "{args:?}: {stderr}");
    }
}
