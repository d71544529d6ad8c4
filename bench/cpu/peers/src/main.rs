//! Loads every tensor of one safetensors file into owned CPU memory with a peer
//! library and prints one JSON object: `{"loader", "bytes", "tensors", "seconds", "gbps"}`.
//!
//! ```text
//! tensorstream-cpu-peers rust-safetensors FILE   # safetensors 0.8: mmap, deserialize, to_vec() every tensor
//! tensorstream-cpu-peers candle FILE             # candle MmapedSafetensors::load(name, &Device::Cpu) for every tensor
//! ```
//!
//! The timed region runs from opening the file to the moment every tensor is held in
//! owned memory; all tensors stay alive until after the clock stops, as they would in
//! a model.

use std::hint::black_box;
use std::path::Path;
use std::process::ExitCode;
use std::time::Instant;

fn rust_safetensors(path: &Path) -> Result<(u64, usize), String> {
    let file = std::fs::File::open(path).map_err(|e| format!("{}: {e}", path.display()))?;
    // SAFETY: the benchmark owns the file and nobody truncates it while it is mapped.
    let map = unsafe { memmap2::Mmap::map(&file) }.map_err(|e| format!("mmap: {e}"))?;
    let st =
        safetensors::SafeTensors::deserialize(&map[..]).map_err(|e| format!("deserialize: {e}"))?;
    let mut owned: Vec<(String, Vec<u8>)> = Vec::with_capacity(st.len());
    for (name, view) in st.iter() {
        owned.push((name.to_string(), view.data().to_vec()));
    }
    let bytes = owned.iter().map(|(_, v)| v.len() as u64).sum();
    let n = owned.len();
    black_box(&owned);
    Ok((bytes, n))
}

fn candle(path: &Path) -> Result<(u64, usize), String> {
    use candle_core::safetensors::MmapedSafetensors;
    use candle_core::Device;
    // SAFETY: as above, the file is not modified while mapped.
    let st = unsafe { MmapedSafetensors::new(path) }.map_err(|e| format!("open: {e}"))?;
    let names: Vec<String> = st.tensors().into_iter().map(|(n, _)| n).collect();
    let mut owned = Vec::with_capacity(names.len());
    for name in &names {
        owned.push(
            st.load(name, &Device::Cpu)
                .map_err(|e| format!("{name}: {e}"))?,
        );
    }
    let bytes = owned
        .iter()
        .map(|t| (t.elem_count() * t.dtype().size_in_bytes()) as u64)
        .sum();
    let n = owned.len();
    black_box(&owned);
    Ok((bytes, n))
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().collect();
    let (Some(which), Some(path)) = (args.get(1), args.get(2)) else {
        eprintln!("usage: tensorstream-cpu-peers rust-safetensors|candle FILE");
        return ExitCode::from(2);
    };
    let path = Path::new(path);
    let start = Instant::now();
    let r = match which.as_str() {
        "rust-safetensors" => rust_safetensors(path),
        "candle" => candle(path),
        other => {
            eprintln!("unknown peer '{other}' (rust-safetensors, candle)");
            return ExitCode::from(2);
        }
    };
    let seconds = start.elapsed().as_secs_f64();
    match r {
        Ok((bytes, tensors)) => {
            let v = serde_json::json!({
                "loader": which,
                "bytes": bytes,
                "tensors": tensors,
                "seconds": seconds,
                "gbps": bytes as f64 / seconds / 1e9,
            });
            println!("{v}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::from(1)
        }
    }
}
