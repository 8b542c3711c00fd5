//! The `arraydrain` command line: `info`, `bench` and `convert`.

use std::process::ExitCode;

use clap::{Parser, Subcommand};

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result: CliResult = match cli.command {
        Command::Info => Ok(()),
        Command::Bench => Ok(()),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

/// Drain a data loader into preallocated host arrays, fast.
#[derive(Debug, Parser)]
#[command(name = "arraydrain", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Version, threads, and which backends are available.
    Info,
    /// Drain a synthetic table with every strategy, verify, and time it.
    Bench,
}

type CliResult = Result<(), Box<dyn std::error::Error>>;
