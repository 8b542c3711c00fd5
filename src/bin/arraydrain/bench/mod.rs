//! `arraydrain bench`: a synthetic table drained by every strategy, each output verified against
//! the naive reference gather, timed against same-run floors, printed as a table (and JSON).

use std::io::IsTerminal;
use std::path::PathBuf;

mod cpu;
mod cuda;
mod measure;

use arraydrain::bench;
use arraydrain::{Batches, DType, Loader, Order, Strategy, Table};
use clap::ValueEnum;
use serde_json::json;

use crate::progress::BenchProgress;
use crate::CliResult;
use cpu::CpuFloors;
use measure::BenchRow;

/// Which backends to use.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum DeviceChoice {
    /// Every available backend (CPU, and CUDA when a device is usable).
    Auto,
    /// Host threads only.
    Cpu,
    /// The CUDA engine only (an error when no device is usable).
    Cuda,
}

#[derive(Debug, clap::Args)]
pub struct BenchArgs {
    /// Rows in the synthetic table.
    #[arg(long, default_value_t = 1_000_000)]
    rows: usize,
    /// Features per row of `x` (shorthand for `--row-shape DIM`).
    #[arg(long, default_value_t = 128, conflicts_with = "row_shape")]
    dim: usize,
    /// Shape of one row of `x`, comma-separated (e.g. `3,224,224` for images).
    #[arg(long, value_delimiter = ',')]
    row_shape: Option<Vec<usize>>,
    /// Element type of `x`: f32, f64, u8, i64, … (any arraydrain dtype name).
    #[arg(long, default_value = "f32", value_parser = parse_dtype)]
    dtype: DType,
    /// Batch size.
    #[arg(long, default_value_t = 256)]
    batch: usize,
    /// Shuffle the order (seeded).
    #[arg(long)]
    shuffle: bool,
    /// Seed for the data and the shuffle.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Drop a short last batch.
    #[arg(long)]
    drop_last: bool,
    /// Comma-separated strategies (default: all for the backend; the CPU also runs
    /// `preallocated-into`, a drain into a reused output).
    #[arg(long, value_delimiter = ',')]
    strategies: Option<Vec<String>>,
    /// Timed runs per strategy.
    #[arg(long, default_value_t = 5)]
    repeat: usize,
    /// Write the results as JSON here.
    #[arg(long)]
    json: Option<PathBuf>,
    /// Backends to run.
    #[arg(long, value_enum, default_value_t = DeviceChoice::Auto)]
    device: DeviceChoice,
    /// Comma-separated CPU thread counts (e.g. `1,2,4`): the CPU floors and strategies run once
    /// on a pool of each size and a scaling table follows (default: one run on the global pool,
    /// whose size `RAYON_NUM_THREADS` sets).
    #[arg(long, value_delimiter = ',', value_parser = clap::value_parser!(u16).range(1..))]
    threads: Option<Vec<u16>>,
}

fn parse_dtype(name: &str) -> Result<DType, String> {
    DType::from_name(name).ok_or_else(|| {
        let names: Vec<&str> = DType::ALL.iter().map(|d| d.name()).collect();
        format!("unknown dtype {name:?} (one of {})", names.join(", "))
    })
}

const CPU_STRATEGIES: [&str; 5] = [
    "concat",
    "per-batch",
    "preallocated",
    "auto",
    "preallocated-into",
];

pub fn run_bench(args: &BenchArgs) -> CliResult {
    let mut progress = BenchProgress::new();
    let row_shape = args.row_shape.clone().unwrap_or_else(|| vec![args.dim]);
    let table = make_table(args, &row_shape, &mut progress)?;
    let mut loader = Loader::new(&table)
        .batch_size(args.batch)
        .drop_last(args.drop_last);
    if args.shuffle {
        loader = loader.order(Order::Shuffle { seed: args.seed });
    }
    let batches = loader.batches()?;
    progress.message("computing the reference gather");
    let reference = bench::reference(&table, &batches)?;
    check_strategy_names(args)?;

    let mut report = Report::default();
    if args.device != DeviceChoice::Cuda {
        run_cpu_pools(args, &loader, &reference, &mut progress, &mut report)?;
    }
    progress.finish();
    run_cuda_bench(args, &table, &batches, &reference, &mut report)?;

    let workload = Workload {
        args,
        row_shape: &row_shape,
        table: &table,
        batches: &batches,
        out_bytes: reference.iter().map(|r| r.len() as u64).sum(),
    };
    print_report(&workload, &report);
    if let Some(path) = &args.json {
        write_json(path, &workload, &report)?;
    }
    if let Some(bad) = report.results.iter().find(|r| !r.verified) {
        return Err(format!(
            "{} on {} produced output that differs from the reference",
            bad.strategy, bad.backend
        )
        .into());
    }
    Ok(())
}

/// Refuses a strategy name that is neither a CPU contestant nor a strategy.
fn check_strategy_names(args: &BenchArgs) -> CliResult {
    for s in args.strategies.iter().flatten() {
        if !CPU_STRATEGIES.contains(&s.as_str()) && s.parse::<Strategy>().is_err() {
            return Err(format!("unknown strategy {s:?}").into());
        }
    }
    Ok(())
}

/// The synthetic table, after refusing a workload that cannot fit (before allocating anything
/// large).
fn make_table(
    args: &BenchArgs,
    row_shape: &[usize],
    progress: &mut BenchProgress,
) -> Result<Table<'static>, arraydrain::Error> {
    let x_row = row_shape
        .iter()
        .try_fold(args.dtype.size(), |a, &d| a.checked_mul(d))
        .and_then(|b| b.checked_add(8))
        .ok_or_else(|| arraydrain::Error::HostAllocation {
            bytes: u128::MAX,
            what: "a row of the benchmark table".into(),
            reason: "size overflows the address space".into(),
        })?;
    bench::check_fits(args.rows, args.rows, x_row)?;
    progress.message("making the synthetic table");
    bench::synthetic_workload(args.rows, args.dtype.clone(), row_shape, args.seed)
}

/// What a run measured: every row, the floors (JSON and text), and each CPU pool's results.
#[derive(Default)]
struct Report {
    results: Vec<BenchRow>,
    floors_json: serde_json::Map<String, serde_json::Value>,
    floors_text: Vec<String>,
    scaling: Vec<(usize, CpuFloors, Vec<BenchRow>)>,
}

/// The CPU floors and strategies, once on each pool size of `--threads` (or on the global
/// pool). The table and JSON `results` / `floors` show the last pool; `scaling` every pool.
fn run_cpu_pools(
    args: &BenchArgs,
    loader: &Loader<'_, '_>,
    reference: &[Vec<u8>],
    progress: &mut BenchProgress,
    report: &mut Report,
) -> CliResult {
    let cpu_names: Vec<String> = match &args.strategies {
        Some(list) => list
            .iter()
            .filter(|s| CPU_STRATEGIES.contains(&s.as_str()))
            .cloned()
            .collect(),
        None => CPU_STRATEGIES.iter().map(|s| s.to_string()).collect(),
    };
    let counts: Vec<Option<usize>> = match &args.threads {
        Some(list) => list.iter().map(|&n| Some(usize::from(n))).collect(),
        None => vec![None],
    };
    progress.start(
        counts.len() * (cpu_names.len() + 2) * args.repeat.max(1),
        "CPU floors and strategies",
    );
    for count in counts {
        let run = || {
            let threads = rayon::current_num_threads();
            cpu::run_cpu(loader, &cpu_names, args.repeat, reference, || {
                progress.tick()
            })
            .map(|(floors, rows)| (threads, floors, rows))
        };
        report.scaling.push(match count {
            Some(n) => rayon::ThreadPoolBuilder::new()
                .num_threads(n)
                .build()
                .map_err(|e| format!("a pool of {n} threads: {e}"))?
                .install(run)?,
            None => run()?,
        });
    }
    if let Some((_, floors, rows)) = report.scaling.last() {
        report.floors_text.push(format!(
            "cpu_fresh {} ({:.2} GB/s), cpu_warm {} ({:.2} GB/s)",
            fmt_time(floors.cpu_fresh.seconds),
            floors.cpu_fresh.gbps,
            fmt_time(floors.cpu_warm.seconds),
            floors.cpu_warm.gbps
        ));
        add_cpu_floors(&mut report.floors_json, floors);
        report.results.extend(rows.iter().cloned());
    }
    Ok(())
}

/// The workload a report describes.
struct Workload<'a> {
    args: &'a BenchArgs,
    row_shape: &'a [usize],
    table: &'a Table<'a>,
    batches: &'a Batches,
    out_bytes: u64,
}

impl Workload<'_> {
    fn order(&self) -> &'static str {
        if self.args.shuffle {
            "shuffle"
        } else {
            "sequential"
        }
    }
}

/// The threads of the last CPU pool measured (or of the global pool).
fn threads_of(report: &Report) -> usize {
    report
        .scaling
        .last()
        .map_or_else(rayon::current_num_threads, |s| s.0)
}

fn print_report(w: &Workload<'_>, report: &Report) {
    let args = w.args;
    let shape: Vec<String> = w.row_shape.iter().map(|d| d.to_string()).collect();
    println!(
        "workload: {} rows -> {} out, x {} [{}] + y i64 [], batch {}, {}{}, {:.1} MB",
        args.rows,
        w.batches.rows(),
        args.dtype.name(),
        shape.join(", "),
        args.batch,
        w.order(),
        if args.drop_last { ", drop_last" } else { "" },
        w.out_bytes as f64 / 1e6
    );
    println!("threads: {} (CPU backend)", threads_of(report));
    for f in &report.floors_text {
        println!("floors: {f}");
    }
    print_table(&report.results);
    if args.threads.is_some() {
        print_scaling(&report.scaling);
    }
}

fn write_json(path: &std::path::Path, w: &Workload<'_>, report: &Report) -> CliResult {
    let args = w.args;
    let doc = json!({
        "workload": {
            "rows": w.batches.rows(),
            "table_rows": args.rows,
            "batch_size": args.batch,
            "order": w.order(),
            "seed": args.seed,
            "drop_last": args.drop_last,
            "output_bytes": w.out_bytes,
            "columns": w.table.columns().iter().map(|c| json!({
                "name": c.name(), "dtype": c.dtype().name(), "row_shape": c.row_shape()
            })).collect::<Vec<_>>(),
        },
        "threads": threads_of(report),
        "floors": report.floors_json,
        "results": report.results,
        "scaling": report.scaling.iter().map(|(n, floors, rows)| {
            let mut f = serde_json::Map::new();
            add_cpu_floors(&mut f, floors);
            json!({"threads": n, "floors": f, "results": rows})
        }).collect::<Vec<_>>(),
    });
    std::fs::write(path, serde_json::to_string_pretty(&doc)?)
        .map_err(|e| format!("{}: {e}", path.display()))?;
    Ok(())
}

/// One line per pool size: the floors' medians, then each strategy's median and its ratio to
/// its floor; the speed-up is the single-thread median over this one.
fn print_scaling(scaling: &[(usize, CpuFloors, Vec<BenchRow>)]) {
    let Some((_, _, first_rows)) = scaling.first() else {
        return;
    };
    println!("scaling (median, x floor, speed-up over the first pool size):");
    let mut head = format!("{:>7} {:>10} {:>10}", "threads", "cpu_fresh", "cpu_warm");
    for r in first_rows {
        head.push_str(&format!(" {:>30}", r.strategy));
    }
    println!("{head}");
    let base: Vec<f64> = first_rows.iter().map(|r| r.seconds.median).collect();
    for (n, floors, rows) in scaling {
        let mut line = format!(
            "{:>7} {:>10} {:>10}",
            n,
            fmt_time(floors.cpu_fresh.seconds),
            fmt_time(floors.cpu_warm.seconds)
        );
        for (r, b) in rows.iter().zip(&base) {
            let speedup = if r.seconds.median > 0.0 {
                b / r.seconds.median
            } else {
                0.0
            };
            line.push_str(&format!(
                " {:>30}",
                format!(
                    "{} {:.2}x {:.2}",
                    fmt_time(r.seconds.median),
                    r.floor_ratio,
                    speedup
                )
            ));
        }
        println!("{line}");
    }
}

fn add_cpu_floors(json: &mut serde_json::Map<String, serde_json::Value>, floors: &CpuFloors) {
    for (name, f) in [
        ("cpu_fresh", &floors.cpu_fresh),
        ("cpu_warm", &floors.cpu_warm),
    ] {
        json.insert(
            name.into(),
            json!({"seconds": f.seconds, "gbps": f.gbps, "min": f.timing.min, "max": f.timing.max}),
        );
    }
}

const CUDA_STRATEGIES: [Strategy; 5] = [
    Strategy::Concat,
    Strategy::PerBatch,
    Strategy::Preallocated,
    Strategy::Pinned,
    Strategy::Auto,
];

fn run_cuda_bench(
    args: &BenchArgs,
    table: &Table<'_>,
    batches: &Batches,
    reference: &[Vec<u8>],
    report: &mut Report,
) -> CliResult {
    if args.device == DeviceChoice::Cpu {
        return Ok(());
    }
    let device = match arraydrain::cuda::probe(0) {
        Ok(device) => device,
        Err(e) if args.device == DeviceChoice::Cuda => return Err(e.into()),
        Err(e) => {
            eprintln!("note: CUDA unavailable ({e}); ran the CPU backend only");
            return Ok(());
        }
    };
    if std::io::stderr().is_terminal() {
        eprintln!("running the CUDA strategies on {}", device.name);
    }
    let strategies: Vec<Strategy> = match &args.strategies {
        Some(list) => list.iter().filter_map(|s| s.parse().ok()).collect(),
        None => CUDA_STRATEGIES.to_vec(),
    };
    let run = cuda::run(table, batches, &strategies, args.repeat, reference)?;
    if run.device.is_simulator() {
        report.floors_text.push(format!(
            "cuda: {} (no GPU): outputs verified only, nothing timed",
            run.device.name
        ));
        report.results.extend(run.rows);
        return Ok(());
    }
    let f = &run.floor;
    report.floors_text.push(format!(
        "cuda_d2h_pinned {:.3} ms ({:.2} GB/s) on {}",
        f.seconds * 1e3,
        f.gbps,
        run.device.name
    ));
    report.floors_json.insert(
        "cuda_d2h_pinned".into(),
        json!({"seconds": f.seconds, "gbps": f.gbps, "min": f.timing.min, "max": f.timing.max, "device": run.device.name}),
    );
    report.results.extend(run.rows);
    Ok(())
}

/// Seconds with a unit that keeps three significant figures.
fn fmt_time(seconds: f64) -> String {
    if seconds < 1e-3 {
        format!("{:.2} us", seconds * 1e6)
    } else if seconds < 1.0 {
        format!("{:.2} ms", seconds * 1e3)
    } else {
        format!("{seconds:.3} s")
    }
}

fn print_table(rows: &[BenchRow]) {
    println!(
        "{:<18} {:<7} {:>10} {:>10} {:>10} {:>8} {:>8} {:>15} {:>9}  verified",
        "strategy", "backend", "median", "min", "max", "GB/s", "x floor", "floor", "peak MiB"
    );
    for r in rows {
        if r.backend == cuda::SIM_BACKEND {
            // The CUDA simulator: no time, GB/s or floor ratio is printed, as none means anything.
            println!(
                "{:<18} {:<7} {:>10} {:>10} {:>10} {:>8} {:>8} {:>15} {:>9.1}  {}",
                r.strategy,
                r.backend,
                "-",
                "-",
                "-",
                "-",
                "-",
                "-",
                r.peak_alloc_bytes as f64 / (1u64 << 20) as f64,
                if r.verified { "yes" } else { "NO" }
            );
            continue;
        }
        println!(
            "{:<18} {:<7} {:>10} {:>10} {:>10} {:>8.2} {:>8.2} {:>15} {:>9.1}  {}",
            r.strategy,
            r.backend,
            fmt_time(r.seconds.median),
            fmt_time(r.seconds.min),
            fmt_time(r.seconds.max),
            r.gbps,
            r.floor_ratio,
            r.floor,
            r.peak_alloc_bytes as f64 / (1u64 << 20) as f64,
            if r.verified { "yes" } else { "NO" }
        );
    }
}
