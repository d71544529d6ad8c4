//! `tensorstream bench`: times loads cold and warm for each I/O backend; with no
//! PATH, on a synthetic Llama-layout checkpoint written to a temporary directory
//! (removed at the end, and on SIGINT or SIGTERM).

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Instant;

use tensorstream::internals as tio;
use tensorstream::synth::{write_checkpoint, SynthSpec};
use tensorstream::{Checkpoint, Error, HostPool, IoBackend};

use super::opts::{parse_size, LoadOpts};
use super::output::{note, show_path, CmdResult, Out};

/// Arguments of `bench`.
#[derive(clap::Args)]
pub struct Args {
    /// Checkpoint to time; default: write a synthetic one to a temporary directory.
    pub path: Option<PathBuf>,
    #[command(flatten)]
    pub opts: LoadOpts,
    /// Only cold runs (page cache dropped for the files, and checked).
    #[arg(long, conflicts_with = "warm")]
    pub cold: bool,
    /// Only warm runs (files in the page cache).
    #[arg(long)]
    pub warm: bool,
    /// Runs per backend and temperature.
    #[arg(long, default_value_t = 3)]
    pub runs: usize,
    /// Size of the synthetic checkpoint (e.g. 512M, 1G, 8G).
    #[arg(long, default_value = "1G", value_parser = parse_size)]
    pub size: u64,
    /// Shards of the synthetic checkpoint.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..))]
    pub shards: u32,
    /// Directory for the synthetic checkpoint (default: the system temp dir).
    #[arg(long)]
    pub dir: Option<PathBuf>,
    /// Backends to compare, comma-separated (default: auto, and each of
    /// direct,buffered,pread,pread-direct when --io is not given).
    #[arg(long, value_delimiter = ',')]
    pub backends: Vec<IoBackend>,
    /// Keep host memory between runs (a HostPool), as a server loading model
    /// after model would: runs after the first read into memory already backed.
    #[arg(long)]
    pub reuse_memory: bool,
    /// Print results as JSON lines.
    #[arg(long)]
    pub json: bool,
}

/// One backend's runs at one temperature.
struct Row {
    cold: bool,
    backend: IoBackend,
    /// GB/s of each run, sorted.
    rates: Vec<f64>,
    /// Bytes one load selects (--only, --rows, --cols), which the rates count.
    bytes: Option<u64>,
    inits: Vec<f64>,
    io_path: String,
    note: String,
    failed: bool,
}

/// Runs `bench`.
pub fn run(a: &Args) -> CmdResult {
    let (path, _tmp) = match &a.path {
        Some(p) => (p.clone(), None),
        None => {
            let (p, tmp) = synthetic(a)?;
            (p, Some(tmp))
        }
    };
    let ckpt = Checkpoint::open(&path)?;
    let backends = if !a.backends.is_empty() {
        a.backends.clone()
    } else if let Some(io) = a.opts.io {
        vec![io]
    } else {
        IoBackend::ALL.to_vec()
    };
    let temps: Vec<bool> = [(true, !a.warm), (false, !a.cold)]
        .into_iter()
        .filter_map(|(cold, on)| on.then_some(cold))
        .collect();
    let mut w = Out::new();
    writeln!(
        w,
        "{} tensors, {:.3} GB in {} file(s), device {}",
        ckpt.tensor_count(),
        ckpt.total_bytes() as f64 / 1e9,
        ckpt.shards.len(),
        a.opts.device
    )?;
    if !a.json {
        legend(&mut w, a, &temps)?;
    }
    // A load failing with `auto`, or with a backend named on the command line, fails the
    // run (exit 1); among the default list, one this machine refuses (O_DIRECT on
    // tmpfs, io_uring in a sandbox) is noted, as long as some load was measured.
    let named = !a.backends.is_empty() || a.opts.io.is_some();
    let (mut failed, mut measured) = (false, false);
    for &cold in &temps {
        for &backend in &backends {
            if w.closed() {
                break;
            }
            let row = measure(a, &ckpt, cold, backend)?;
            failed |= row.failed && (named || backend == IoBackend::Auto);
            measured |= !row.rates.is_empty();
            print_row(&mut w, a, &ckpt, &row)?;
            w.flush()?;
        }
    }
    w.flush()?;
    Ok(if failed || !measured {
        ExitCode::from(1)
    } else {
        ExitCode::SUCCESS
    })
}

/// Writes the synthetic checkpoint into a fresh temporary directory, which is removed
/// when the returned guard drops or a SIGINT/SIGTERM arrives.
fn synthetic(a: &Args) -> Result<(PathBuf, tempfile::TempDir), Error> {
    let base = a.dir.clone().unwrap_or_else(std::env::temp_dir);
    let tmp = tempfile::Builder::new()
        .prefix("tensorstream-bench-")
        .tempdir_in(&base)
        .map_err(|e| Error::Io {
            path: base.clone(),
            op: "create temp dir",
            source: e,
        })?;
    super::signals::remove_on_signal(tmp.path().to_path_buf());
    let spec = SynthSpec::for_size(a.size);
    note(format_args!(
        "writing a synthetic Llama-layout BF16 checkpoint ({} layers, {:.2} GB) to {}",
        spec.layers,
        spec.bytes() as f64 / 1e9,
        show_path(tmp.path())
    ));
    let t = Instant::now();
    let p = write_checkpoint(tmp.path(), &spec, a.shards as usize, 0x5EED)?;
    note(format_args!(
        "written in {:.1} s",
        t.elapsed().as_secs_f64()
    ));
    Ok((p, tmp))
}

/// What the figures mean, before them.
fn legend(w: &mut Out, a: &Args, temps: &[bool]) -> std::io::Result<()> {
    let runs = a.runs.max(1);
    writeln!(
        w,
        "# GB/s: tensor bytes loaded / wall seconds of one load (10^9 bytes per second)."
    )?;
    writeln!(
        w,
        "# Each line: the median of {runs} run(s); [min max] of them; spread = (max - min) / median."
    )?;
    if temps.contains(&true) {
        writeln!(
            w,
            "# cold: the files' pages dropped from the page cache before each run (read from disk)."
        )?;
    }
    if temps.contains(&false) {
        writeln!(
            w,
            "# warm: the files in the page cache, after one untimed load (memory-speed reads)."
        )?;
    }
    Ok(())
}

/// Times `a.runs` loads of `ckpt` with `backend`, cold or warm; progress on stderr.
fn measure(a: &Args, ckpt: &Checkpoint, cold: bool, backend: IoBackend) -> Result<Row, Error> {
    let mut opts = a.opts.clone();
    opts.io = Some(backend);
    let mut loader = opts.loader();
    let temp = if cold { "cold" } else { "warm" };
    let mut row = Row {
        cold,
        backend,
        rates: Vec::new(),
        bytes: None,
        inits: Vec::new(),
        io_path: String::new(),
        note: String::new(),
        failed: false,
    };
    let pool = a.reuse_memory.then(|| HostPool::new(u64::MAX));
    if let Some(pool) = &pool {
        loader = loader.host_pool(pool.clone());
        // Back the pool with one untimed load.
        if let Err(e) = loader.load_checkpoint(ckpt) {
            note(format_args!("warm-up load failed: {e}"));
        }
    }
    let runs = a.runs.max(1);
    for run in 1..=runs {
        if cold {
            let mut worst = 0.0f64;
            for h in &ckpt.shards {
                worst = worst.max(tio::drop_page_cache(&h.path)?);
            }
            if worst > 0.05 {
                row.note = format!(
                    " (page cache not fully dropped: {:.0}% resident)",
                    worst * 100.0
                );
            }
        } else if row.rates.is_empty() {
            // Warm: read the files through the page cache (an O_DIRECT load would not
            // fill it), then one untimed load as a warm-up.
            let mut least = 1.0f64;
            for h in &ckpt.shards {
                least = least.min(tio::fill_page_cache(&h.path)?);
            }
            if least < 0.95 {
                row.note = format!(" (only {:.0}% of pages cached)", least * 100.0);
            }
            let _ = loader.load_checkpoint(ckpt);
        }
        match loader.load_checkpoint(ckpt) {
            Ok(m) => {
                let s = m.stats();
                note(format_args!(
                    "bench: {temp} {} run {run}/{runs}: {:.2} GB/s",
                    backend.name(),
                    s.gbps()
                ));
                row.rates.push(s.gbps());
                row.bytes = Some(s.tensor_bytes);
                row.inits.push(s.device_init.as_secs_f64());
                row.io_path = s
                    .files
                    .first()
                    .map(|f| f.io_path.to_string())
                    .unwrap_or_default();
            }
            Err(e) => {
                note(format_args!(
                    "bench: {temp} {} run {run}/{runs} failed",
                    backend.name()
                ));
                row.note = format!(" (failed: {e})");
                row.failed = true;
                break;
            }
        }
    }
    row.rates.sort_by(f64::total_cmp);
    Ok(row)
}

fn print_row(w: &mut Out, a: &Args, ckpt: &Checkpoint, r: &Row) -> std::io::Result<()> {
    let median = r.rates.get(r.rates.len() / 2).copied().unwrap_or(0.0);
    let min = r.rates.first().copied().unwrap_or(0.0);
    let max = r.rates.last().copied().unwrap_or(0.0);
    let spread = if median > 0.0 {
        (max - min) / median
    } else {
        0.0
    };
    let temp = if r.cold { "cold" } else { "warm" };
    let name = r.backend.name();
    if a.json {
        let v = serde_json::json!({
            "temperature": temp, "backend": name, "io": r.io_path,
            "reuse_memory": a.reuse_memory,
            "bytes": r.bytes.unwrap_or_else(|| ckpt.total_bytes()),
            "runs": r.rates, "device_init_seconds": r.inits, "median_gbps": median,
            "min_gbps": min, "max_gbps": max, "spread": spread,
            "note": r.note.trim(),
        });
        return writeln!(w, "{v}");
    }
    let reuse = if a.reuse_memory {
        ", memory reused"
    } else {
        ""
    };
    writeln!(
        w,
        "{temp:<5} {name:<12} {median:>7.2} GB/s median of {}  [{min:.2} {max:.2}]  spread {:.0}%  via {}{reuse}{}",
        r.rates.len(),
        spread * 100.0,
        r.io_path,
        tensorstream::internals::escape_line(&r.note)
    )
}
