//! An inference server switching between models: one `Loader`, set up once, loads
//! checkpoint after checkpoint. On the CPU a `HostPool` hands the memory of a dropped
//! model to the next load (no page faults to back it again); on CUDA the loader keeps
//! its pinned staging and the device's context from one load to the next, and
//! `prepare()` pays for them at start-up instead of in the first request.
//!
//! ```text
//! cargo run --release --example model_switching -- [cpu|cuda:N] [SIZE_MB]
//! cargo run --release --features cuda --example model_switching -- cuda:0 2048
//! ```
//!
//! Writes two synthetic Llama-layout BF16 checkpoints of about SIZE_MB (default 256)
//! to a temporary directory, then loads A, B, A, B, printing each load's time: the
//! first load of each pays for new memory, the later ones reuse it.

use std::process::ExitCode;
use std::time::Instant;

use tensorstream::synth::{write_checkpoint, SynthSpec};
use tensorstream::{Device, HostPool, Loader};

fn main() -> ExitCode {
    match run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::from(1)
        }
    }
}

fn run() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let device: Device = args.first().map_or(Ok(Device::Cpu), |s| s.parse())?;
    let mb: u64 = args.get(1).map_or(Ok(256), |s| s.parse())?;

    let dir = tempfile::tempdir()?;
    let spec = SynthSpec::for_size(mb << 20);
    let mut models = Vec::new();
    for (name, seed) in [("a", 1), ("b", 2)] {
        let d = dir.path().join(name);
        std::fs::create_dir(&d)?;
        models.push(write_checkpoint(&d, &spec, 2, seed)?);
    }

    // Start-up: the loader and what it keeps between loads. The pool keeps up to two
    // models' worth of idle host memory (CPU loads); CUDA loads keep the pinned staging.
    let pool = HostPool::new(4 * (mb << 20));
    let loader = Loader::new().device(device).host_pool(pool.clone());
    let t = Instant::now();
    loader.prepare()?;
    println!("prepare() on {device}: {:.3} s", t.elapsed().as_secs_f64());

    let mut serving = None;
    for (i, path) in models.iter().cycle().take(4).enumerate() {
        // Drop the model being served first, so its memory can serve the next one.
        drop(serving.take());
        let t = Instant::now();
        let model = loader.load(path)?;
        let s = model.stats();
        println!(
            "load {} ({}): {} tensors, {:.3} GB in {:.3} s = {:.2} GB/s (device init {:.3} s); idle pool {:.0} MB",
            i + 1,
            if i % 2 == 0 { "A" } else { "B" },
            model.len(),
            s.output_bytes as f64 / 1e9,
            t.elapsed().as_secs_f64(),
            s.gbps(),
            s.device_init.as_secs_f64(),
            pool.idle_bytes() as f64 / 1e6,
        );
        serving = Some(model);
    }
    drop(serving);
    loader.release_staging();
    Ok(())
}
