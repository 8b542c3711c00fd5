//! The `arraydrain` command line: `info`, `bench`, `convert` and `merge`. The library knows no
//! command line: argument parsing, progress bars, signal handling and the printed reports live
//! here, and every command is a thin call into the library.

mod args;
mod bench;
mod info;
mod progress;
mod signals;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

use args::{ConvertArgs, MergeArgs};
use bench::BenchArgs;
use progress::ConvertBars;

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result: CliResult = match &cli.command {
        Command::Info => {
            info::info();
            Ok(())
        }
        Command::Bench(args) => bench::run_bench(args),
        Command::Convert(args) => convert(args),
        Command::Merge(args) => merge(args),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

type CliResult = Result<(), Box<dyn std::error::Error>>;

/// Drain a data loader into preallocated host arrays, fast.
#[derive(Debug, Parser)]
#[command(name = "arraydrain", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Version, threads, which backends are available, and the rank this process would take in a
    /// distributed run (from torchrun, Slurm, Open MPI or MPICH variables).
    Info,
    /// Drain a synthetic table (x: DTYPE [rows, ROW_SHAPE], y: i64 [rows]) with every strategy,
    /// verify each output against a naive reference gather, and time it against same-run floors.
    Bench(BenchArgs),
    /// Convert `.npy` / `.npz` inputs into drained, reordered NumPy files.
    Convert(ConvertArgs),
    /// Check the shards of `convert --distributed` against their manifest and write them back
    /// as one dataset, in the sampler's global order.
    Merge(MergeArgs),
}

/// `convert` (one rank's part with `--distributed`); `SIGINT` / `SIGTERM` remove the run's
/// temporary files and folders before exiting (130 / 143).
fn convert(args: &ConvertArgs) -> CliResult {
    signals::remove_outputs_on_signals().map_err(|e| format!("signal handlers: {e}"))?;
    let mut options = args.to_options();
    let bars = ConvertBars::new(args.quiet);
    options.progress = bars.as_ref().map(ConvertBars::callback);
    let result = if args.distributed {
        arraydrain::shards::convert_distributed(&options)
    } else {
        arraydrain::convert::run(&options)
    };
    if let Some(bars) = &bars {
        bars.finish();
    }
    println!("{}", result?);
    Ok(())
}

/// `merge`; `SIGINT` / `SIGTERM` remove its temporary files as for `convert`.
fn merge(args: &MergeArgs) -> CliResult {
    signals::remove_outputs_on_signals().map_err(|e| format!("signal handlers: {e}"))?;
    println!("{}", arraydrain::shards::merge(&args.to_options())?);
    Ok(())
}
