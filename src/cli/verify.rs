//! `tensorstream verify`: strict validation of every header and file size, one line
//! per problem.

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

use tensorstream::internals as error;
use tensorstream::Checkpoint;

use super::output::{CmdResult, Out};

/// Arguments of `verify`.
#[derive(clap::Args)]
pub struct Args {
    /// A .safetensors file, a directory of shards or a model.safetensors.index.json.
    pub path: PathBuf,
}

/// Runs `verify`: exit 0 when valid; otherwise exit 1 with one line per problem on
/// stdout, control characters escaped so that each stays one line.
pub fn run(a: &Args) -> CmdResult {
    let (ckpt, problems) = Checkpoint::open_all_problems(&a.path);
    let mut w = Out::new();
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
                writeln!(w, "{}", error::escape_line(&p.to_string()))?;
            }
            ExitCode::from(1)
        }
    };
    w.flush()?;
    Ok(code)
}
