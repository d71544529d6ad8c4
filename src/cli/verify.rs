//! `tensorstream verify`: strict validation of every header and file size, one line
//! per problem; for a PyTorch checkpoint, also each entry that is not a tensor.

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

use tensorstream::internals as lib;
use tensorstream::Checkpoint;

use super::output::{CmdResult, Out};

/// Arguments of `verify`.
#[derive(clap::Args)]
pub struct Args {
    /// A .safetensors file, a directory of shards or a model.safetensors.index.json;
    /// or a PyTorch zip checkpoint (.bin, .pt, .pth), its index or their directory.
    pub path: PathBuf,
}

/// Runs `verify`: exit 0 when valid; otherwise exit 1 with one line per problem on
/// stdout, control characters escaped so that each stays one line. For a PyTorch
/// checkpoint it first says whether it holds anything but tensors, one line per
/// entry that is not (`not a tensor: NAME (KIND)`): a report, not a problem.
pub fn run(a: &Args) -> CmdResult {
    let mut w = Out::new();
    let (ckpt, problems) = if lib::is_pytorch(&a.path) {
        let p = lib::open_pytorch(&a.path);
        if p.skipped.is_empty() && p.problems.is_empty() {
            writeln!(w, "tensors only: no entry that is not a tensor")?;
        }
        for s in &p.skipped {
            writeln!(w, "not a tensor: {}", lib::escape_line(s))?;
        }
        (p.checkpoint, p.problems)
    } else {
        Checkpoint::open_all_problems(&a.path)
    };
    let code = match ckpt {
        Some(c) if problems.is_empty() => {
            writeln!(
                w,
                "ok: {} tensors, {} bytes in {} file(s)",
                c.tensor_count(),
                c.total_bytes(),
                c.shards.len()
            )?;
            ExitCode::SUCCESS
        }
        _ => {
            for p in &problems {
                if w.closed() {
                    break;
                }
                writeln!(w, "{}", lib::escape_line(&p.to_string()))?;
            }
            ExitCode::from(1)
        }
    };
    w.flush()?;
    Ok(code)
}
