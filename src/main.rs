//! The `tensorstream` command line: parses arguments, sets up logging, runs the
//! subcommand (each in its own file under cli/) and turns its outcome into an exit code.

mod cli;

use std::io::{self, IsTerminal};
use std::path::Path;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

use cli::output::{finish, usage};

/// What `--help` says after the options, for every subcommand.
const AFTER_HELP: &str = "\
Exit codes: 0 success, 1 invalid input or failed load, 2 usage error.
Output: a closed stdout (`| head`) ends the output quietly, and the exit code is the
command's own (0 when it succeeded); any other failure to write stdout (a full disk)
is exit 1. Paths may hold any bytes; JSON output writes them as UTF-8, with bytes that
are not UTF-8 replaced by U+FFFD. Names and values from a file are shown escaped
(control and bidi characters as \\n, \\u{1b}, \\u{202e}) in text output and messages.";

#[derive(Parser)]
#[command(
    name = "tensorstream",
    version,
    about = "Loads safetensors checkpoints into GPU or host memory, fast and safely",
    after_help = AFTER_HELP
)]
struct Cli {
    /// Log decisions (backend choice, fallbacks) to stderr.
    #[arg(short, long, global = true)]
    verbose: bool,
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Show tensors, totals per dtype, parameter count and metadata (header only).
    #[command(after_help = AFTER_HELP)]
    Inspect(cli::inspect::Args),
    /// Validate headers and file sizes strictly; exit 1 with one line per problem.
    #[command(after_help = AFTER_HELP)]
    Verify(cli::verify::Args),
    /// Load tensors and report bytes, seconds and GB/s.
    #[command(after_help = AFTER_HELP)]
    Load(cli::load::Args),
    /// Convert a PyTorch zip checkpoint to safetensors without executing it (-v lists
    /// the non-tensor entries skipped).
    #[command(after_help = AFTER_HELP)]
    Convert(cli::convert::Args),
    /// Write a synthetic Llama-layout checkpoint (for benchmarks and comparisons).
    #[command(after_help = AFTER_HELP)]
    Synth(cli::synth::Args),
    /// Time loads cold and warm; with no PATH, on a synthetic Llama-layout BF16 checkpoint.
    #[command(after_help = AFTER_HELP)]
    Bench(cli::bench::Args),
}

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(c) => c,
        Err(e) => return usage(e),
    };
    let filter = if cli.verbose {
        "tensorstream=debug"
    } else {
        "tensorstream=warn"
    };
    let _ = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("TENSORSTREAM_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(filter)),
        )
        .with_writer(io::stderr)
        .with_ansi(io::stderr().is_terminal())
        // A log line that stderr refuses is dropped, not reported on stderr again.
        .log_internal_errors(false)
        .try_init();
    let (r, path): (_, Option<&Path>) = match &cli.cmd {
        Cmd::Inspect(a) => (cli::inspect::run(a), Some(&a.path)),
        Cmd::Verify(a) => (cli::verify::run(a), Some(&a.path)),
        Cmd::Load(a) => (cli::load::run(a), Some(&a.path)),
        Cmd::Convert(a) => (cli::convert::run(a, cli.verbose), Some(&a.input)),
        Cmd::Synth(a) => (cli::synth::run(a), None),
        Cmd::Bench(a) => (cli::bench::run(a), a.path.as_deref()),
    };
    finish(r, path)
}
