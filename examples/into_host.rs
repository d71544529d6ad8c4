//! A framework with its own CPU parameters loading a checkpoint into them:
//! `Loader::load_into_host` against loading into the loader's memory and copying each
//! tensor over, which is what a framework does without it. Both are timed alternating,
//! after one untimed round, with the parameters already backed by memory (as when a
//! server reloads weights), warm (the checkpoint in the page cache) or cold. Before each timed
//! load the parameters are overwritten (untimed), and after it a checksum of all of
//! them must be the one the loader's own load gives.
//!
//! ```text
//! cargo run --release --example into_host -- PATH [ROUNDS] [--cold]
//! ```
//!
//! Prints the median seconds and GB/s of each way, and their ratio. `--cold` drops
//! the page cache (`/proc/sys/vm/drop_caches`, as root) before each load instead, so
//! every load reads the disk (with `auto`, through O_DIRECT).

use std::collections::BTreeMap;
use std::process::ExitCode;
use std::time::Instant;

use tensorstream::{Checkpoint, HostPool, HostRegion, Loader};

fn main() -> ExitCode {
    match run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::from(1)
        }
    }
}

/// A checksum of every parameter's bytes, in order.
fn checksum(params: &BTreeMap<String, Vec<u8>>) -> u64 {
    let mut h = 0xcbf2_9ce4_8422_2325u64;
    for v in params.values() {
        for w in v.chunks(8) {
            let mut b = [0u8; 8];
            b[..w.len()].copy_from_slice(w);
            h = (h ^ u64::from_le_bytes(b))
                .wrapping_mul(0x100_0000_01b3)
                .rotate_left(5);
        }
    }
    h
}

/// Overwrites every parameter, so that a load that skipped one would show.
fn scribble(params: &mut BTreeMap<String, Vec<u8>>, round: usize) {
    for v in params.values_mut() {
        v.fill(round as u8 ^ 0x5A);
    }
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v.get(v.len() / 2).copied().unwrap_or(f64::NAN)
}

fn run() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let path = args.first().ok_or("usage: into_host PATH [ROUNDS]")?;
    let rounds: usize = args.get(1).map_or(Ok(5), |s| s.parse())?;
    let cold = args.iter().any(|a| a == "--cold");
    let drop_caches = || -> std::io::Result<()> {
        if cold {
            std::process::Command::new("sync").status()?;
            std::fs::write("/proc/sys/vm/drop_caches", "3")?;
        }
        Ok(())
    };
    let ckpt = Checkpoint::open(path)?;
    let bytes = ckpt.total_bytes() as f64;

    // The framework's parameters, in the file's dtypes, backed by memory already.
    let mut params: BTreeMap<String, Vec<u8>> = ckpt
        .shards
        .iter()
        .flat_map(|h| &h.tensors)
        .map(|t| (t.name.clone(), vec![0xA5u8; t.len() as usize]))
        .collect();
    // The other way keeps its own buffers between loads too (a HostPool), so neither
    // pays page faults after the first round.
    let pool = HostPool::new(2 * ckpt.total_bytes());
    let loader = Loader::new().host_pool(pool);

    let (mut into, mut copied, mut alone) = (Vec::new(), Vec::new(), Vec::new());
    let mut want = None;
    for round in 0..=rounds {
        // Into the parameters.
        scribble(&mut params, round);
        drop_caches()?;
        let t = Instant::now();
        let mut free: BTreeMap<&str, &mut Vec<u8>> =
            params.iter_mut().map(|(k, v)| (k.as_str(), v)).collect();
        let stats = loader.load_into_host(&ckpt, |t| {
            let bytes = free.remove(t.name)?;
            Some(HostRegion {
                bytes,
                dtype: t.file_dtype,
            })
        })?;
        let a = t.elapsed().as_secs_f64();
        let into_sum = checksum(&params);
        scribble(&mut params, round + 1);
        drop_caches()?;

        // Into the loader's memory, then each tensor copied into the parameters.
        let t = Instant::now();
        let model = loader.load_checkpoint(&ckpt)?;
        let own = t.elapsed().as_secs_f64();
        for tensor in model.tensors() {
            let dst = params
                .get_mut(&tensor.name)
                .ok_or("a tensor without a parameter")?;
            dst.copy_from_slice(tensor.host_bytes().ok_or("not on the host")?);
        }
        let b = t.elapsed().as_secs_f64();
        drop(model);
        let copied_sum = checksum(&params);
        if into_sum != copied_sum || want.is_some_and(|w| w != into_sum) {
            return Err("the two ways gave different bytes".into());
        }
        want = Some(into_sum);
        println!(
            "round {round}{}: load_into_host {a:.3} s ({:.2} GB/s, {:.0}% in place), load + \
             copy {b:.3} s ({:.2} GB/s; the load alone {own:.3} s)",
            if round == 0 { " (untimed)" } else { "" },
            bytes / a / 1e9,
            stats.in_place_bytes as f64 * 100.0 / bytes,
            bytes / b / 1e9
        );
        if round > 0 {
            into.push(a);
            copied.push(b);
            alone.push(own);
        }
    }
    let (a, b, own) = (median(into), median(copied), median(alone));
    println!(
        "median of {rounds}: load_into_host {a:.3} s ({:.2} GB/s), load + copy {b:.3} s \
         ({:.2} GB/s): {:.2}x the time; the load alone, into the loader's kept memory, \
         {own:.3} s ({:.2} GB/s)",
        bytes / a / 1e9,
        bytes / b / 1e9,
        a / b,
        bytes / own / 1e9
    );
    Ok(())
}
