//! `tensorstream load`: loads a checkpoint and reports bytes, seconds and GB/s, or
//! the SHA-256 of each tensor as loaded.

use std::io::{IsTerminal, Write};
use std::path::PathBuf;
use std::process::ExitCode;

use tensorstream::{digest, LoadStats, Model};

use super::opts::LoadOpts;
use super::output::{json_path, note, CmdResult, Out};

/// Arguments of `load`.
#[derive(clap::Args)]
pub struct Args {
    /// A .safetensors file, a directory of shards or a model.safetensors.index.json;
    /// or a PyTorch zip checkpoint (.bin, .pt, .pth), its index or their directory.
    pub path: PathBuf,
    #[command(flatten)]
    pub opts: LoadOpts,
    /// Print one JSON line per tensor, sorted by name, with the SHA-256 of its bytes as
    /// loaded: {"name":..,"dtype":..,"shape":[..],"sha256":".."}. The summary goes to
    /// stderr.
    #[arg(long)]
    pub digest: bool,
    /// Print the summary as JSON. Fields: tensors; bytes (tensor bytes selected, as
    /// stored); output_bytes (after --dtype conversion); read_bytes (bytes read from
    /// disk: can exceed bytes, since reads are aligned and --cols reads whole rows, and
    /// can exceed a file's size by the alignment); in_place_bytes (bytes of the reads that
    /// landed straight in their final place, without a staging copy, alignment slack
    /// included: so it can exceed bytes); seconds; waiting_for_reads_seconds and
    /// waiting_for_buffers_seconds (parts of seconds the reading thread waited);
    /// gbps (bytes / seconds / 10^9); device_init_seconds; staging_reused; device;
    /// engine_reason; files (path, io path, reason; paths as UTF-8, bytes that are not
    /// replaced by U+FFFD).
    #[arg(long)]
    pub json: bool,
}

fn progress_bar() -> Option<indicatif::ProgressBar> {
    if !std::io::stderr().is_terminal() {
        return None;
    }
    let pb = indicatif::ProgressBar::new(0);
    if let Ok(style) = indicatif::ProgressStyle::with_template(
        "{bar:40} {bytes}/{total_bytes} {bytes_per_sec} eta {eta}",
    ) {
        pb.set_style(style);
    }
    Some(pb)
}

/// Runs `load`.
pub fn run(a: &Args) -> CmdResult {
    let mut loader = a.opts.loader();
    let pb = progress_bar();
    if let Some(pb) = pb.clone() {
        loader = loader.progress(move |done, total| {
            pb.set_length(total);
            pb.set_position(done);
        });
    }
    let model = loader.load(&a.path)?;
    if let Some(pb) = pb {
        pb.finish_and_clear();
    }
    let mut w = Out::new();
    if a.digest {
        for line in digest::digest_lines(&model)? {
            if w.closed() {
                break;
            }
            writeln!(w, "{line}")?;
        }
    }
    let summary = if a.json {
        json_summary(&model, a).to_string()
    } else {
        text_summary(&model, a)
    };
    if a.digest {
        note(format_args!("{summary}"));
    } else {
        writeln!(w, "{summary}")?;
    }
    w.flush()?;
    Ok(ExitCode::SUCCESS)
}

fn json_summary(model: &Model, a: &Args) -> serde_json::Value {
    let s: &LoadStats = model.stats();
    let files: Vec<_> = s
        .files
        .iter()
        .map(|f| serde_json::json!({"path": json_path(&f.path), "io": f.io_path, "reason": f.reason}))
        .collect();
    serde_json::json!({
        "tensors": model.len(),
        "bytes": s.tensor_bytes,
        "output_bytes": s.output_bytes,
        "read_bytes": s.read_bytes,
        "in_place_bytes": s.in_place_bytes,
        "seconds": s.elapsed.as_secs_f64(),
        "waiting_for_reads_seconds": s.waiting_for_reads.as_secs_f64(),
        "waiting_for_buffers_seconds": s.waiting_for_buffers.as_secs_f64(),
        "gbps": s.gbps(),
        "device_init_seconds": s.device_init.as_secs_f64(),
        "staging_reused": s.staging_reused,
        "device": a.opts.device.to_string(),
        "engine_reason": s.engine_reason,
        "files": files,
    })
}

fn text_summary(model: &Model, a: &Args) -> String {
    let s = model.stats();
    let mut io_paths: Vec<&str> = s.files.iter().map(|f| f.io_path).collect();
    io_paths.sort_unstable();
    io_paths.dedup();
    let init = if s.device_init.is_zero() {
        String::new()
    } else {
        format!(
            " ({:.3} s of it retaining the CUDA context)",
            s.device_init.as_secs_f64()
        )
    };
    format!(
        "loaded {} tensors, {} bytes in {:.3} s{init}: {:.2} GB/s to {} ({})",
        model.len(),
        s.tensor_bytes,
        s.elapsed.as_secs_f64(),
        s.gbps(),
        a.opts.device,
        io_paths.join(", ")
    )
}
