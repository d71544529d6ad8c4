//! `tensorstream convert`: a PyTorch zip checkpoint or sharded set to
//! `model.safetensors` (or size-capped shards and an index), without executing it.

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
    /// A PyTorch zip checkpoint (pytorch_model.bin, .pt, .pth), a sharded set's
    /// pytorch_model.bin.index.json, or a directory holding either.
    pub input: PathBuf,
    /// The directory to write model.safetensors (or shards and an index) into,
    /// created if missing.
    pub output: PathBuf,
    /// Convert floating tensors (F32, F16, BF16, FP8) to this dtype; others stay as they are.
    #[arg(long, value_parser = parse_dtype)]
    pub dtype: Option<Dtype>,
    /// Largest output shard, as transformers writes it: 5GB (10^9), 500MiB (2^20), or bytes.
    #[arg(long, default_value = "5GB", value_parser = parse_shard_size)]
    pub max_shard_size: u64,
}

/// A shard size as transformers parses it: a number with KB, MB, GB (powers of
/// 1000), KiB, MiB, GiB (powers of 1024), or none (bytes).
pub fn parse_shard_size(s: &str) -> Result<u64, String> {
    let t = s.trim();
    let units: [(&str, u64); 7] = [
        ("KIB", 1 << 10),
        ("MIB", 1 << 20),
        ("GIB", 1 << 30),
        ("KB", 1_000),
        ("MB", 1_000_000),
        ("GB", 1_000_000_000),
        ("B", 1),
    ];
    let up = t.to_ascii_uppercase();
    let (num, mult) = units
        .iter()
        .find_map(|(u, m)| up.strip_suffix(u).map(|n| (n.trim().to_string(), *m)))
        .unwrap_or((up.clone(), 1));
    let bad = || format!("invalid size '{t}' (expected e.g. 5GB, 500MB, 2GiB)");
    let n: f64 = num.parse().map_err(|_| bad())?;
    if !(n.is_finite() && n >= 1.0) {
        return Err(bad());
    }
    Ok((n * mult as f64) as u64)
}

/// Runs `convert`: one summary line; with `verbose`, one line per skipped entry.
pub fn run(a: &Args, verbose: bool) -> CmdResult {
    let r = convert_pytorch(&a.input, &a.output, a.dtype, a.max_shard_size)?;
    let mut w = Out::new();
    writeln!(
        w,
        "wrote {}: {} tensors, {} bytes in {} file(s); {} non-tensor entries skipped",
        r.output.display(),
        r.tensors,
        r.bytes,
        r.files.len(),
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

#[cfg(test)]
mod tests {
    use super::parse_shard_size;

    #[test]
    fn shard_sizes_parse_like_transformers() {
        assert_eq!(parse_shard_size("5GB"), Ok(5_000_000_000));
        assert_eq!(parse_shard_size("500MB"), Ok(500_000_000));
        assert_eq!(parse_shard_size("2GiB"), Ok(2 << 30));
        assert_eq!(parse_shard_size("10kib"), Ok(10 << 10));
        assert_eq!(parse_shard_size("64"), Ok(64));
        assert!(parse_shard_size("0").is_err() && parse_shard_size("GB").is_err());
    }
}
