//! The `tensorstream` command line: thin over the library.

use std::io::{self, IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Instant;

use clap::{Args, Parser, Subcommand};
use tensorstream::checkpoint::dtype_totals;
use tensorstream::internals as tio;
use tensorstream::synth::{write_checkpoint, SynthSpec};
use tensorstream::{
    digest, Checkpoint, Device, Dtype, Error, HostPool, IoBackend, Loader, SliceRule,
};

#[derive(Parser)]
#[command(
    name = "tensorstream",
    version,
    about = "Loads safetensors checkpoints into GPU or host memory, fast and safely"
)]
struct Cli {
    /// Log decisions (backend choice, fallbacks) to stderr.
    #[arg(short, long, global = true)]
    verbose: bool,
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Show tensors, totals per dtype, parameter count and metadata (header only).
    Inspect {
        /// A .safetensors file, a directory of shards or a model.safetensors.index.json.
        path: PathBuf,
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Validate headers and file sizes strictly; exit 1 with one line per problem.
    Verify {
        /// A .safetensors file, a directory of shards or a model.safetensors.index.json.
        path: PathBuf,
    },
    /// Load tensors and report bytes, seconds and GB/s.
    Load {
        /// A .safetensors file, a directory of shards or a model.safetensors.index.json.
        path: PathBuf,
        #[command(flatten)]
        opts: LoadOpts,
        /// Print one JSON line per tensor with the SHA-256 of its loaded bytes.
        #[arg(long)]
        digest: bool,
        /// Print the summary as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Write a synthetic Llama-layout checkpoint (for benchmarks and comparisons).
    Synth {
        /// Directory to write into (created if missing).
        dir: PathBuf,
        /// Approximate size (e.g. 512M, 2.3G).
        #[arg(long, default_value = "1G", value_parser = parse_size)]
        size: u64,
        /// Number of shards (more than one writes an index too).
        #[arg(long, default_value_t = 1)]
        shards: usize,
        /// BF16 or F16.
        #[arg(long, default_value = "BF16")]
        dtype: Dtype,
    },
    /// Time loads cold and warm; with no PATH, on a synthetic Llama-layout BF16 checkpoint.
    Bench {
        /// Checkpoint to time; default: write a synthetic one to a temporary directory.
        path: Option<PathBuf>,
        #[command(flatten)]
        opts: LoadOpts,
        /// Only cold runs (page cache dropped for the files, and checked).
        #[arg(long, conflicts_with = "warm")]
        cold: bool,
        /// Only warm runs (files in the page cache).
        #[arg(long)]
        warm: bool,
        /// Runs per backend and temperature.
        #[arg(long, default_value_t = 3)]
        runs: usize,
        /// Size of the synthetic checkpoint (e.g. 512M, 1G, 8G).
        #[arg(long, default_value = "1G", value_parser = parse_size)]
        size: u64,
        /// Shards of the synthetic checkpoint.
        #[arg(long, default_value_t = 1)]
        shards: usize,
        /// Directory for the synthetic checkpoint (default: the system temp dir).
        #[arg(long)]
        dir: Option<PathBuf>,
        /// Backends to compare, comma-separated (default: auto, and each of
        /// direct,buffered,pread,pread-direct,mmap when --io is not given).
        #[arg(long, value_delimiter = ',')]
        backends: Vec<IoBackend>,
        /// Keep host memory between runs (a HostPool), as a server loading model
        /// after model would: runs after the first read into memory already backed.
        #[arg(long)]
        reuse_memory: bool,
        /// Print results as JSON lines.
        #[arg(long)]
        json: bool,
    },
}

#[derive(Args, Clone)]
struct LoadOpts {
    /// cpu, cuda or cuda:N.
    #[arg(long, default_value = "cpu")]
    device: Device,
    /// Convert floating tensors to F32, F16 or BF16.
    #[arg(long)]
    dtype: Option<Dtype>,
    /// auto, direct, buffered, pread, pread-direct or mmap.
    #[arg(long)]
    io: Option<IoBackend>,
    /// Load only tensors whose whole name matches this glob (repeatable).
    #[arg(long)]
    only: Vec<String>,
    /// Load only some rows (dimension 0) of the tensors matching GLOB, reading only
    /// their bytes: GLOB=START:END for rows START..END, GLOB=RANK/WORLD for part RANK of
    /// WORLD equal parts (a tensor-parallel shard). Repeatable; a tensor takes the
    /// first rule that matches it, and one matching both a --rows and a --cols rule is
    /// an error.
    #[arg(long, value_name = "GLOB=ROWS", value_parser = |s: &str| SliceRule::parse(s, 0))]
    rows: Vec<SliceRule>,
    /// Load only some columns (dimension 1) of the tensors matching GLOB, as --rows:
    /// the shard of a row-parallel weight. Every row is still read; its selected
    /// columns are gathered (on CUDA by 2-D copies to the device).
    #[arg(long, value_name = "GLOB=COLS", value_parser = |s: &str| SliceRule::parse(s, 1))]
    cols: Vec<SliceRule>,
    /// Largest read (e.g. 4M).
    #[arg(long, value_parser = parse_size)]
    chunk_size: Option<u64>,
    /// Reads in flight (with `--io mmap` to CUDA: page-cache registrations in flight,
    /// each a threads' share of the staging size).
    #[arg(long)]
    queue_depth: Option<usize>,
    /// Staging memory (e.g. 64M) [default: 128M on CUDA, 64M on the host].
    #[arg(long, value_parser = parse_size)]
    staging: Option<u64>,
    /// CUDA: allocate the pinned staging write-combined.
    #[arg(long)]
    staging_wc: bool,
    /// CUDA: put the staging on huge pages and pin it with cuMemHostRegister, and fail
    /// where that is refused (the default does so too, unless --staging-wc, but falls
    /// back to cuMemHostAlloc).
    #[arg(long, conflicts_with_all = ["staging_wc", "no_staging_huge"])]
    staging_huge: bool,
    /// CUDA: pin the staging with cuMemHostAlloc, not on huge pages.
    #[arg(long)]
    no_staging_huge: bool,
}

impl LoadOpts {
    fn loader(&self) -> Loader {
        let mut l = Loader::new()
            .device(self.device)
            .dtype(self.dtype)
            .io(self.io.unwrap_or_default());
        for p in &self.only {
            l = l.only(p.clone());
        }
        for r in self.rows.iter().chain(&self.cols) {
            l = if r.dim == 0 {
                l.rows(r.pattern.clone(), r.slice)
            } else {
                l.columns(r.pattern.clone(), r.slice)
            };
        }
        if let Some(c) = self.chunk_size {
            l = l.chunk_size(c);
        }
        if let Some(q) = self.queue_depth {
            l = l.queue_depth(q);
        }
        if let Some(s) = self.staging {
            l = l.staging_bytes(s);
        }
        if self.staging_huge || self.no_staging_huge {
            l = l.huge_page_staging(self.staging_huge);
        }
        l.write_combined_staging(self.staging_wc)
    }
}

fn parse_size(s: &str) -> Result<u64, String> {
    let s = s.trim();
    let (num, mult) = match s.char_indices().last() {
        Some((i, 'k' | 'K')) => (&s[..i], 1u64 << 10),
        Some((i, 'm' | 'M')) => (&s[..i], 1 << 20),
        Some((i, 'g' | 'G')) => (&s[..i], 1 << 30),
        _ => (s, 1),
    };
    let n: f64 = num.parse().map_err(|_| format!("invalid size '{s}'"))?;
    if !(n.is_finite() && n > 0.0) {
        return Err(format!("invalid size '{s}'"));
    }
    Ok((n * mult as f64) as u64)
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let filter = if cli.verbose {
        "tensorstream=debug"
    } else {
        "tensorstream=warn"
    };
    let _ = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("TENSORSTREAM_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(filter)),
        )
        .with_writer(io::stderr)
        .try_init();
    let r = match cli.cmd {
        Cmd::Inspect { path, json } => inspect(&path, json),
        Cmd::Verify { path } => verify(&path),
        Cmd::Synth {
            dir,
            size,
            shards,
            dtype,
        } => synth(&dir, size, shards, dtype),
        Cmd::Load {
            path,
            opts,
            digest,
            json,
        } => load(&path, &opts, digest, json),
        Cmd::Bench {
            path,
            opts,
            cold,
            warm,
            runs,
            size,
            shards,
            dir,
            backends,
            reuse_memory,
            json,
        } => bench(BenchArgs {
            path,
            opts,
            cold: !warm,
            warm: !cold,
            runs,
            size,
            shards,
            dir,
            backends,
            reuse_memory,
            json,
        }),
    };
    match r {
        Ok(code) => code,
        Err(e) => {
            // A closed stdout (e.g. `| head`) is not a failure of the load.
            if let Error::Io { source, .. } = &e {
                if source.kind() == io::ErrorKind::BrokenPipe {
                    return ExitCode::SUCCESS;
                }
            }
            eprintln!("error: {}", one_line(&e.to_string()));
            ExitCode::from(1)
        }
    }
}

/// A message on one line: newlines inside names (tensor names are arbitrary strings)
/// are shown escaped, so that each problem stays one line.
fn one_line(s: &str) -> String {
    s.replace('\n', "\\n").replace('\r', "\\r")
}

fn out_err(e: io::Error) -> Error {
    Error::Io {
        path: PathBuf::from("<stdout>"),
        op: "write",
        source: e,
    }
}

fn inspect(path: &Path, json: bool) -> tensorstream::Result<ExitCode> {
    let ckpt = Checkpoint::open(path)?;
    let stdout = io::stdout();
    let mut w = io::BufWriter::new(stdout.lock());
    let totals = ckpt.dtype_totals();
    let params: u64 = totals.values().map(|v| v.0).sum();
    if json {
        let shards: Vec<_> = ckpt
            .shards
            .iter()
            .map(|h| {
                let t = dtype_totals(std::iter::once(h));
                serde_json::json!({
                    "path": h.path,
                    "file_bytes": h.file_len,
                    "header_bytes": h.header_len,
                    "tensor_bytes": h.data_len(),
                    "parameters": t.values().map(|v| v.0).sum::<u64>(),
                    "metadata": h.metadata,
                    "tensors": h.tensors.iter().map(|t| serde_json::json!({
                        "name": t.name, "dtype": t.dtype.name(), "shape": t.shape,
                        "bytes": t.len(), "data_offsets": [t.begin, t.end],
                    })).collect::<Vec<_>>(),
                })
            })
            .collect();
        let v = serde_json::json!({
            "path": ckpt.path,
            "index": ckpt.index,
            "index_metadata": ckpt.index_metadata,
            "tensor_count": ckpt.tensor_count(),
            "tensor_bytes": ckpt.total_bytes(),
            "parameters": params,
            "dtypes": totals.iter().map(|(d, (n, b))| (d.name().to_string(), serde_json::json!({"parameters": n, "bytes": b}))).collect::<serde_json::Map<_, _>>(),
            "shards": shards,
        });
        serde_json::to_writer(&mut w, &v).map_err(|e| out_err(e.into()))?;
        writeln!(w).map_err(out_err)?;
    } else {
        for h in &ckpt.shards {
            writeln!(
                w,
                "{}  ({} tensors, {} bytes, header {} bytes)",
                h.path.display(),
                h.tensors.len(),
                h.data_len(),
                h.header_len
            )
            .map_err(out_err)?;
            if let Some(m) = &h.metadata {
                for (k, v) in m {
                    writeln!(w, "  metadata {k} = {v}").map_err(out_err)?;
                }
            }
            for t in &h.tensors {
                writeln!(
                    w,
                    "  {:<60} {:<11} {:<20} {:>14}",
                    t.name,
                    t.dtype.name(),
                    format!("{:?}", t.shape),
                    t.len()
                )
                .map_err(out_err)?;
            }
            if ckpt.shards.len() > 1 {
                for (d, (n, b)) in dtype_totals(std::iter::once(h)) {
                    writeln!(
                        w,
                        "  total {:<8} {n:>16} parameters {b:>16} bytes",
                        d.name()
                    )
                    .map_err(out_err)?;
                }
            }
        }
        writeln!(
            w,
            "total: {} tensors in {} file(s)",
            ckpt.tensor_count(),
            ckpt.shards.len()
        )
        .map_err(out_err)?;
        for (d, (n, b)) in &totals {
            writeln!(w, "  {:<12} {n:>16} parameters {b:>16} bytes", d.name()).map_err(out_err)?;
        }
        writeln!(
            w,
            "  {:<12} {params:>16} parameters {:>16} bytes",
            "all",
            ckpt.total_bytes()
        )
        .map_err(out_err)?;
    }
    w.flush().map_err(out_err)?;
    Ok(ExitCode::SUCCESS)
}

fn verify(path: &Path) -> tensorstream::Result<ExitCode> {
    let (ckpt, problems) = Checkpoint::open_all_problems(path);
    match ckpt {
        Some(c) if problems.is_empty() => {
            println!(
                "ok: {} tensors, {} bytes in {} file(s)",
                c.tensor_count(),
                c.total_bytes(),
                c.shards.len()
            );
            Ok(ExitCode::SUCCESS)
        }
        _ => {
            for p in &problems {
                println!("{}", one_line(&p.to_string()));
            }
            Ok(ExitCode::from(1))
        }
    }
}

fn synth(dir: &Path, size: u64, shards: usize, dtype: Dtype) -> tensorstream::Result<ExitCode> {
    if !matches!(dtype, Dtype::BF16 | Dtype::F16) {
        return Err(Error::InvalidArgument(format!(
            "synth writes BF16 or F16, not {dtype}"
        )));
    }
    std::fs::create_dir_all(dir).map_err(|e| Error::Io {
        path: dir.to_path_buf(),
        op: "create directory",
        source: e,
    })?;
    let mut spec = SynthSpec::for_size(size);
    spec.dtype = dtype;
    let p = write_checkpoint(dir, &spec, shards, 0x5EED)?;
    println!("{}", p.display());
    Ok(ExitCode::SUCCESS)
}

fn progress_bar() -> Option<indicatif::ProgressBar> {
    if !io::stderr().is_terminal() {
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

fn load(
    path: &Path,
    opts: &LoadOpts,
    digest_lines: bool,
    json: bool,
) -> tensorstream::Result<ExitCode> {
    let mut loader = opts.loader();
    let pb = progress_bar();
    if let Some(pb) = pb.clone() {
        loader = loader.progress(move |done, total| {
            pb.set_length(total);
            pb.set_position(done);
        });
    }
    let model = loader.load(path)?;
    if let Some(pb) = pb {
        pb.finish_and_clear();
    }
    let s = model.stats();
    let stdout = io::stdout();
    let mut w = io::BufWriter::new(stdout.lock());
    if digest_lines {
        for line in digest::digest_lines(&model)? {
            writeln!(w, "{line}").map_err(out_err)?;
        }
    }
    let paths: Vec<_> = s
        .files
        .iter()
        .map(|f| serde_json::json!({"path": f.path, "io": f.io_path, "reason": f.reason}))
        .collect();
    if json {
        let v = serde_json::json!({
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
            "device": opts.device.to_string(),
            "engine_reason": s.engine_reason,
            "files": paths,
        });
        if digest_lines {
            eprintln!("{v}");
        } else {
            writeln!(w, "{v}").map_err(out_err)?;
        }
    } else {
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
        let line = format!(
            "loaded {} tensors, {} bytes in {:.3} s{init}: {:.2} GB/s to {} ({})",
            model.len(),
            s.tensor_bytes,
            s.elapsed.as_secs_f64(),
            s.gbps(),
            opts.device,
            io_paths.join(", ")
        );
        if digest_lines {
            eprintln!("{line}");
        } else {
            writeln!(w, "{line}").map_err(out_err)?;
        }
    }
    w.flush().map_err(out_err)?;
    Ok(ExitCode::SUCCESS)
}

struct BenchArgs {
    path: Option<PathBuf>,
    opts: LoadOpts,
    cold: bool,
    warm: bool,
    runs: usize,
    size: u64,
    shards: usize,
    dir: Option<PathBuf>,
    backends: Vec<IoBackend>,
    reuse_memory: bool,
    json: bool,
}

fn bench(a: BenchArgs) -> tensorstream::Result<ExitCode> {
    let _tmp;
    let path = match &a.path {
        Some(p) => p.clone(),
        None => {
            let base = a.dir.clone().unwrap_or_else(std::env::temp_dir);
            let tmp = tempfile::Builder::new()
                .prefix("tensorstream-bench-")
                .tempdir_in(&base)
                .map_err(|e| Error::Io {
                    path: base.clone(),
                    op: "create temp dir",
                    source: e,
                })?;
            let spec = SynthSpec::for_size(a.size);
            eprintln!(
                "writing a synthetic Llama-layout BF16 checkpoint ({} layers, {:.2} GB) to {}",
                spec.layers,
                spec.bytes() as f64 / 1e9,
                tmp.path().display()
            );
            let t = Instant::now();
            let p = write_checkpoint(tmp.path(), &spec, a.shards, 0x5EED)?;
            eprintln!("written in {:.1} s", t.elapsed().as_secs_f64());
            _tmp = tmp;
            p
        }
    };
    let ckpt = Checkpoint::open(&path)?;
    let files: Vec<PathBuf> = ckpt.shards.iter().map(|h| h.path.clone()).collect();
    let backends = if !a.backends.is_empty() {
        a.backends.clone()
    } else if let Some(io) = a.opts.io {
        vec![io]
    } else {
        IoBackend::ALL.to_vec()
    };
    let mut temps = Vec::new();
    if a.cold {
        temps.push(true);
    }
    if a.warm {
        temps.push(false);
    }
    println!(
        "{} tensors, {:.3} GB in {} file(s), device {}",
        ckpt.tensor_count(),
        ckpt.total_bytes() as f64 / 1e9,
        files.len(),
        a.opts.device
    );
    // A load failing with `auto`, or with a backend named on the command line, fails the
    // run (exit 1); among the default list, one this machine refuses (O_DIRECT on
    // tmpfs, io_uring in a sandbox) is noted, as long as some load was measured.
    let named = !a.backends.is_empty() || a.opts.io.is_some();
    let (mut failed, mut measured) = (false, false);
    for &cold in &temps {
        for &backend in &backends {
            let mut opts = a.opts.clone();
            opts.io = Some(backend);
            let mut loader = opts.loader();
            let pool = a.reuse_memory.then(|| HostPool::new(u64::MAX));
            if let Some(pool) = &pool {
                loader = loader.host_pool(pool.clone());
                // Back the pool with one untimed load.
                if let Err(e) = loader.load_checkpoint(&ckpt) {
                    eprintln!("warm-up load failed: {e}");
                }
            }
            let mut rates = Vec::new();
            // The bytes a load selects (--only, --rows, --cols), which the rates count.
            let mut loaded_bytes: Option<u64> = None;
            let mut inits = Vec::new();
            let mut io_path = String::new();
            let mut note = String::new();
            for _ in 0..a.runs.max(1) {
                if cold {
                    let mut worst = 0.0f64;
                    for f in &files {
                        worst = worst.max(tio::drop_page_cache(f)?);
                    }
                    if worst > 0.05 {
                        note = format!(
                            " (page cache not fully dropped: {:.0}% resident)",
                            worst * 100.0
                        );
                    }
                } else if rates.is_empty() {
                    // Warm: read the files through the page cache (an O_DIRECT load
                    // would not fill it), then one untimed load as a warm-up.
                    let mut least = 1.0f64;
                    for f in &files {
                        least = least.min(tio::fill_page_cache(f)?);
                    }
                    if least < 0.95 {
                        note = format!(" (only {:.0}% of pages cached)", least * 100.0);
                    }
                    let _ = loader.load_checkpoint(&ckpt);
                }
                match loader.load_checkpoint(&ckpt) {
                    Ok(m) => {
                        rates.push(m.stats().gbps());
                        loaded_bytes = Some(m.stats().tensor_bytes);
                        inits.push(m.stats().device_init.as_secs_f64());
                        io_path = m
                            .stats()
                            .files
                            .first()
                            .map(|f| f.io_path.to_string())
                            .unwrap_or_default();
                    }
                    Err(e) => {
                        note = format!(" (failed: {e})");
                        failed |= named || backend == IoBackend::Auto;
                        break;
                    }
                }
            }
            measured |= !rates.is_empty();
            rates.sort_by(f64::total_cmp);
            let median = rates.get(rates.len() / 2).copied().unwrap_or(0.0);
            let temp = if cold { "cold" } else { "warm" };
            let name = backend.name();
            if a.json {
                println!(
                    "{}",
                    serde_json::json!({"temperature": temp, "backend": name, "io": io_path, "reuse_memory": a.reuse_memory, "bytes": loaded_bytes.unwrap_or_else(|| ckpt.total_bytes()), "runs": rates, "device_init_seconds": inits, "median_gbps": median, "note": note.trim()})
                );
            } else {
                let runs: Vec<String> = rates.iter().map(|r| format!("{r:.2}")).collect();
                println!(
                    "{temp:<5} {name:<12} {median:>7.2} GB/s median  [{}]  via {io_path}{}{note}",
                    runs.join(" "),
                    if a.reuse_memory {
                        ", memory reused"
                    } else {
                        ""
                    }
                );
            }
        }
    }
    Ok(if failed || !measured {
        ExitCode::from(1)
    } else {
        ExitCode::SUCCESS
    })
}
