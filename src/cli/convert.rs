//! `tensorstream convert`: a PyTorch zip checkpoint to `model.safetensors`, without
//! executing it.

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

use tensorstream::internals::{self as lib, convert_pytorch};
use tensorstream::Dtype;

use super::opts::parse_dtype;
use super::output::{CmdResult, Out};

/// Arguments of `convert`.
#[derive(clap::Args)]
pub struct Args {
    /// A PyTorch zip checkpoint (pytorch_model.bin, .pt, .pth), or a directory holding one.
    pub input: PathBuf,
    /// The directory to write model.safetensors into (created if missing).
    pub output: PathBuf,
    /// Convert floating tensors (F32, F16, BF16, FP8) to this dtype; others stay as they are.
    #[arg(long, value_parser = parse_dtype)]
    pub dtype: Option<Dtype>,
}

/// Runs `convert`: one summary line; with `verbose`, one line per skipped entry.
pub fn run(a: &Args, verbose: bool) -> CmdResult {
    let r = convert_pytorch(&a.input, &a.output, a.dtype)?;
    let mut w = Out::new();
    writeln!(
        w,
        "wrote {}: {} tensors, {} bytes; {} non-tensor entries skipped",
        r.output.display(),
        r.tensors,
        r.bytes,
        r.skipped.len()
    )?;
    if verbose {
        for s in &r.skipped {
            writeln!(w, "skipped: {}", lib::escape_line(s))?;
        }
    }
    w.flush()?;
    Ok(ExitCode::SUCCESS)
}
