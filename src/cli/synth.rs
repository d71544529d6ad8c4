//! `tensorstream synth`: writes a synthetic Llama-layout checkpoint, for benchmarks
//! and comparisons.

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

use tensorstream::synth::{write_checkpoint, SynthSpec};
use tensorstream::{Dtype, Error};

use super::opts::{parse_dtype, parse_size};
use super::output::{CmdResult, Out};

/// Arguments of `synth`.
#[derive(clap::Args)]
pub struct Args {
    /// Directory to write into (created if missing).
    pub dir: PathBuf,
    /// Approximate size (e.g. 512M, 2.3G).
    #[arg(long, default_value = "1G", value_parser = parse_size)]
    pub size: u64,
    /// Number of shards, exactly (more than one writes an index too); refused when
    /// the model has fewer tensors than that.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..))]
    pub shards: u32,
    /// BF16 or F16.
    #[arg(long, default_value = "BF16", value_parser = parse_dtype)]
    pub dtype: Dtype,
}

/// Runs `synth`: prints the path to load (the file, or the index), as bytes.
pub fn run(a: &Args) -> CmdResult {
    if !matches!(a.dtype, Dtype::BF16 | Dtype::F16) {
        return Err(
            Error::InvalidArgument(format!("synth writes BF16 or F16, not {}", a.dtype)).into(),
        );
    }
    std::fs::create_dir_all(&a.dir).map_err(|e| Error::Io {
        path: a.dir.clone(),
        op: "create directory",
        source: e,
    })?;
    let mut spec = SynthSpec::for_size(a.size);
    spec.dtype = a.dtype;
    let p = write_checkpoint(&a.dir, &spec, a.shards as usize, 0x5EED)?;
    let mut w = Out::new();
    w.write_all(p.as_os_str().as_encoded_bytes())?;
    w.write_all(b"\n")?;
    w.flush()?;
    Ok(ExitCode::SUCCESS)
}
