//! Loads a checkpoint and prints each tensor and the load's rate: the smallest
//! complete use of the library.
//!
//! ```text
//! cargo run --release --example load -- PATH [cpu|cuda|cuda:N] [F32|F16|BF16]
//! cargo run --release --features cuda --example load -- model.safetensors.index.json cuda:0 BF16
//! ```
//!
//! PATH is a `.safetensors` file, a directory of shards or a
//! `model.safetensors.index.json`. Exit codes as the CLI's: 0 loaded, 1 failed (the
//! error names the file, the tensor and the problem), 2 usage.

use std::process::ExitCode;

use tensorstream::{Device, Dtype, Loader};

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let usage = || {
        eprintln!("usage: load PATH [cpu|cuda|cuda:N] [F32|F16|BF16]");
        ExitCode::from(2)
    };
    let Some(path) = args.first() else {
        return usage();
    };
    let device: Device = match args.get(1).map_or(Ok(Device::Cpu), |s| s.parse()) {
        Ok(d) => d,
        Err(e) => {
            eprintln!("{e}");
            return usage();
        }
    };
    let dtype: Option<Dtype> = match args.get(2).map(|s| s.parse()).transpose() {
        Ok(d) => d,
        Err(e) => {
            eprintln!("{e}");
            return usage();
        }
    };
    let model = match Loader::new().device(device).dtype(dtype).load(path) {
        Ok(m) => m,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(1);
        }
    };
    for t in model.tensors() {
        #[cfg(feature = "cuda")]
        let place = match t.device_ptr() {
            Some(ptr) => format!("{} at {ptr:#x}", t.device()),
            None => t.device().to_string(),
        };
        #[cfg(not(feature = "cuda"))]
        let place = t.device().to_string();
        println!(
            "{:<60} {:>6} {:?} {} bytes on {place}",
            t.name,
            t.dtype.to_string(),
            t.shape,
            t.len()
        );
    }
    let s = model.stats();
    println!(
        "{} tensors, {:.3} GB in {:.3} s: {:.2} GB/s (device init {:.3} s)",
        model.len(),
        s.output_bytes as f64 / 1e9,
        s.elapsed.as_secs_f64(),
        s.gbps(),
        s.device_init.as_secs_f64()
    );
    ExitCode::SUCCESS
}
