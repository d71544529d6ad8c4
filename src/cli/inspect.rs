//! `tensorstream inspect`: a checkpoint's tensors, totals per dtype, parameter count
//! and metadata, from the headers alone (for a PyTorch checkpoint, from its pickle),
//! as text or streamed JSON.

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

use serde_json::to_writer as json;
use tensorstream::checkpoint::dtype_totals;
use tensorstream::{Checkpoint, Header};

use super::output::{esc, json_path, show_path, CmdResult, Out};

/// Arguments of `inspect`.
#[derive(clap::Args)]
pub struct Args {
    /// A .safetensors file, a directory of shards or a model.safetensors.index.json;
    /// or a PyTorch zip checkpoint (.bin, .pt, .pth), its index or their directory.
    pub path: PathBuf,
    /// Print JSON instead of text (written as it goes, whatever the header's size;
    /// paths as UTF-8, bytes that are not replaced by U+FFFD).
    #[arg(long)]
    pub json: bool,
}

/// Runs `inspect`.
pub fn run(a: &Args) -> CmdResult {
    let ckpt = Checkpoint::open(&a.path)?;
    let mut w = Out::new();
    if a.json {
        write_json(&mut w, &ckpt)?;
    } else {
        write_text(&mut w, &ckpt)?;
    }
    w.flush()?;
    Ok(ExitCode::SUCCESS)
}

/// The text form: per shard its tensors in a table under column headers, then totals.
/// Names and metadata are escaped (control and bidi characters made visible).
fn write_text(w: &mut Out, ckpt: &Checkpoint) -> std::io::Result<()> {
    for h in &ckpt.shards {
        let kind = if h.is_pytorch() {
            "PyTorch zip".to_string()
        } else {
            format!("header {} bytes", h.header_len)
        };
        writeln!(
            w,
            "{}  ({} tensors, {} bytes, {kind})",
            show_path(&h.path),
            h.tensors.len(),
            h.data_len(),
        )?;
        if let Some(m) = &h.metadata {
            for (k, v) in m {
                writeln!(w, "  metadata {} = {}", esc(k), esc(v))?;
            }
        }
        writeln!(
            w,
            "  {:<60} {:<11} {:<20} {:>14}",
            "name", "dtype", "shape", "bytes"
        )?;
        for t in &h.tensors {
            writeln!(
                w,
                "  {:<60} {:<11} {:<20} {:>14}",
                esc(&t.name),
                t.dtype.name(),
                format!("{:?}", t.shape),
                t.len()
            )?;
        }
        if ckpt.shards.len() > 1 {
            for (d, (n, b)) in dtype_totals(std::iter::once(h)) {
                writeln!(
                    w,
                    "  total {:<8} {n:>16} parameters {b:>16} bytes",
                    d.name()
                )?;
            }
        }
    }
    let totals = ckpt.dtype_totals();
    let params: u64 = totals.values().map(|v| v.0).sum();
    writeln!(
        w,
        "total: {} tensors in {} file(s)",
        ckpt.tensor_count(),
        ckpt.shards.len()
    )?;
    for (d, (n, b)) in &totals {
        writeln!(w, "  {:<12} {n:>16} parameters {b:>16} bytes", d.name())?;
    }
    writeln!(
        w,
        "  {:<12} {params:>16} parameters {:>16} bytes",
        "all",
        ckpt.total_bytes()
    )
}

/// The JSON form, one document, written piece by piece: a header of a million
/// tensors costs no more memory than the checkpoint already holds.
fn write_json(w: &mut Out, ckpt: &Checkpoint) -> std::io::Result<()> {
    let totals = ckpt.dtype_totals();
    let params: u64 = totals.values().map(|v| v.0).sum();
    w.write_all(b"{\"path\":")?;
    json(&mut *w, &json_path(&ckpt.path))?;
    w.write_all(b",\"index\":")?;
    json(&mut *w, &ckpt.index.as_deref().map(json_path))?;
    w.write_all(b",\"index_metadata\":")?;
    json(&mut *w, &ckpt.index_metadata)?;
    write!(
        w,
        ",\"tensor_count\":{},\"tensor_bytes\":{},\"parameters\":{params},\"dtypes\":{{",
        ckpt.tensor_count(),
        ckpt.total_bytes()
    )?;
    for (i, (d, (n, b))) in totals.iter().enumerate() {
        let sep = if i == 0 { "" } else { "," };
        write!(
            w,
            "{sep}\"{}\":{{\"parameters\":{n},\"bytes\":{b}}}",
            d.name()
        )?;
    }
    w.write_all(b"},\"shards\":[")?;
    for (i, h) in ckpt.shards.iter().enumerate() {
        if i > 0 {
            w.write_all(b",")?;
        }
        write_shard(w, h)?;
    }
    w.write_all(b"]}\n")
}

fn write_shard(w: &mut Out, h: &Header) -> std::io::Result<()> {
    let params: u64 = dtype_totals(std::iter::once(h)).values().map(|v| v.0).sum();
    w.write_all(b"{\"path\":")?;
    json(&mut *w, &json_path(&h.path))?;
    write!(
        w,
        ",\"format\":\"{}\",\"file_bytes\":{},\"header_bytes\":{},\"tensor_bytes\":{},\"parameters\":{params},\"metadata\":",
        if h.is_pytorch() { "pytorch" } else { "safetensors" },
        h.file_len,
        h.header_len,
        h.data_len()
    )?;
    json(&mut *w, &h.metadata)?;
    w.write_all(b",\"tensors\":[")?;
    for (i, t) in h.tensors.iter().enumerate() {
        w.write_all(if i == 0 {
            b"{\"name\":"
        } else {
            b",{\"name\":"
        })?;
        json(&mut *w, &t.name)?;
        write!(w, ",\"dtype\":\"{}\",\"shape\":", t.dtype.name())?;
        json(&mut *w, &t.shape)?;
        write!(
            w,
            ",\"bytes\":{},\"data_offsets\":[{},{}]}}",
            t.len(),
            t.begin,
            t.end
        )?;
    }
    w.write_all(b"]}")
}
