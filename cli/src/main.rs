//! `keel`: the command-line tool.

mod bench;
mod checkpoint_bench;
mod tail;
mod tool;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// Keel: an embedded write-ahead log and storage engine.
#[derive(Debug, Parser)]
#[command(name = "keel", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Measure durable commits: Keel's WAL next to a raw pwrite + fdatasync loop.
    Bench(bench::BenchArgs),
    /// Measure a checkpoint of a large state: its time, its peak memory, and commit latency
    /// while it runs against without one.
    CheckpointBench(checkpoint_bench::CheckpointBenchArgs),
    /// Print the log's records, from an LSN, as text or JSON.
    Dump(tool::DumpArgs),
    /// Print a database's transactions as they commit, from an LSN, following the log while
    /// another process writes it (read-only, no lock), with what is known durable.
    Tail(tail::TailArgs),
    /// Check a log end to end without changing it; the exit status says whether it is clean.
    Verify(tool::VerifyArgs),
    /// Recover a log under a policy (repairing what it allows) and print the report.
    Recover(tool::RecoverArgs),
}

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("KEEL_LOG")
                .unwrap_or_else(|_| "error".into()),
        )
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    let outcome = match cli.command {
        Command::Bench(args) => bench::run(&args),
        Command::CheckpointBench(args) => checkpoint_bench::run(&args),
        Command::Dump(args) => tool::dump(&args),
        Command::Tail(args) => tail::tail(&args),
        Command::Verify(args) => tool::verify(&args),
        Command::Recover(args) => tool::recover(&args),
    };
    match outcome {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("keel: {error}");
            ExitCode::FAILURE
        }
    }
}
