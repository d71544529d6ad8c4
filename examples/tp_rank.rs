//! Loads one tensor-parallel rank's shard of a Llama-layout checkpoint, as an
//! inference server's rank does: its rows of the column-parallel weights (q/k/v,
//! gate/up, the embedding and lm_head), its columns of the row-parallel ones (o_proj,
//! down_proj), and the norms whole. Prints what it kept against the whole checkpoint.
//!
//! ```text
//! cargo run --release --example tp_rank -- PATH RANK WORLD [cpu|cuda|cuda:N]
//! cargo run --release --features cuda --example tp_rank -- model.safetensors.index.json 1 4 cuda:1
//! ```
//!
//! Every split dimension must divide by WORLD (an error names the tensor when one
//! does not). Exit codes as the CLI's: 0 loaded, 1 failed, 2 usage.

use std::process::ExitCode;

use tensorstream::{Checkpoint, Device, Loader, Slice};

/// Column-parallel weights: each rank keeps a part of the rows.
const ROWS: [&str; 7] = [
    "*.q_proj.weight",
    "*.k_proj.weight",
    "*.v_proj.weight",
    "*.gate_proj.weight",
    "*.up_proj.weight",
    "*embed_tokens.weight",
    "lm_head.weight",
];
/// Row-parallel weights: each rank keeps a part of the columns.
const COLUMNS: [&str; 2] = ["*.o_proj.weight", "*.down_proj.weight"];

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let usage = |why: &str| {
        eprintln!("{why}\nusage: tp_rank PATH RANK WORLD [cpu|cuda|cuda:N]");
        ExitCode::from(2)
    };
    let (Some(path), Some(rank), Some(world)) = (args.first(), args.get(1), args.get(2)) else {
        return usage("missing arguments");
    };
    let (Ok(rank), Ok(world)) = (rank.parse::<u64>(), world.parse::<u64>()) else {
        return usage("RANK and WORLD are whole numbers");
    };
    if rank >= world {
        return usage("RANK must be below WORLD");
    }
    let device: Device = match args.get(3).map_or(Ok(Device::Cpu), |s| s.parse()) {
        Ok(d) => d,
        Err(e) => return usage(&e.to_string()),
    };
    let ckpt = match Checkpoint::open(path) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(1);
        }
    };
    // Only the rules whose weights this checkpoint has: a rule matching nothing fails
    // the load (it would be a typo elsewhere).
    let has = |p: &str| {
        ckpt.shards
            .iter()
            .flat_map(|h| &h.tensors)
            .any(|t| tensorstream::plan::glob_match(p, &t.name))
    };
    let part = Slice::Part { rank, world };
    let mut loader = Loader::new().device(device);
    for p in ROWS.into_iter().filter(|p| has(p)) {
        loader = loader.rows(p, part);
    }
    for p in COLUMNS.into_iter().filter(|p| has(p)) {
        loader = loader.columns(p, part);
    }
    let model = match loader.load_checkpoint(&ckpt) {
        Ok(m) => m,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(1);
        }
    };
    let whole: u64 = ckpt
        .shards
        .iter()
        .flat_map(|h| &h.tensors)
        .map(|t| t.len())
        .sum();
    let s = model.stats();
    println!(
        "rank {rank} of {world}: {} tensors, kept {} of {} bytes ({:.1}%), read {} bytes, \
         in {:.3} s to {}",
        model.len(),
        s.output_bytes,
        whole,
        s.output_bytes as f64 * 100.0 / whole.max(1) as f64,
        s.read_bytes,
        s.elapsed.as_secs_f64(),
        device
    );
    ExitCode::SUCCESS
}
