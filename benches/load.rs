//! Criterion benches of the CPU side of a load:
//!
//! - `header/parse_200k/*`: parsing and validating the JSON header of a
//!   200,000-tensor file (a large mixture-of-experts checkpoint), pure, no I/O;
//!   tensorstream's `Header::parse_json` beside the reference crate's
//!   `SafeTensors::read_metadata` on the same bytes.
//! - `plan/200k/*`: planning that checkpoint (every tensor; a glob selection; a
//!   conversion to F32), pure, no I/O.
//! - `load_warm_64MiB/*`: loading a ~64 MiB Llama-layout BF16 file from the page cache
//!   with each I/O backend, `Throughput::Bytes` of tensor bytes. `direct` bypasses the
//!   page cache by design, so its figure is the disk's, not the cache's.
//!
//! The fixture file is written at bench time into `CARGO_TARGET_TMPDIR` (under
//! `target/`, on a real disk: O_DIRECT is refused by tmpfs), or into
//! `$TENSORSTREAM_BENCH_DIR` when set.
//!
//! ```text
//! cargo bench --bench load                       # everything
//! cargo bench --bench load -- load_warm          # only the loads
//! cargo bench --bench load -- --quick            # a short run
//! ```

use std::hint::black_box;
use std::path::{Path, PathBuf};
use std::time::Duration;

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use tensorstream::plan::{self, PlanOptions};
use tensorstream::synth::{write_checkpoint, SynthSpec};
use tensorstream::{Checkpoint, Dtype, Header, HostPool, IoBackend, Loader};

const TENSORS: usize = 200_000;

/// A 200,000-tensor header: 128 layers × 32 experts × 3 projections of [64, 128] BF16,
/// plus per-layer router and norms, cut to exactly `TENSORS`. With `tiny`, every
/// shape is divided by 32 per dimension (so that a whole file fits in memory for the
/// reference crate, which checks the buffer length). Returns the JSON bytes and the
/// length of the file it would describe.
fn big_header(tiny: bool) -> (Vec<u8>, u64) {
    let d = if tiny { 32 } else { 1 };
    let mut entries: Vec<(String, &'static str, Vec<u64>)> = Vec::with_capacity(TENSORS);
    let mut layer = 0u64;
    while entries.len() < TENSORS {
        let p = format!("model.layers.{layer}");
        for e in 0..32 {
            for proj in ["gate_proj", "up_proj", "down_proj"] {
                let shape = if proj == "down_proj" {
                    vec![64 / d, 128 / d]
                } else {
                    vec![128 / d, 64 / d]
                };
                entries.push((format!("{p}.mlp.experts.{e}.{proj}.weight"), "BF16", shape));
            }
        }
        entries.push((format!("{p}.mlp.gate.weight"), "BF16", vec![32 / d, 64 / d]));
        entries.push((format!("{p}.input_layernorm.weight"), "BF16", vec![64 / d]));
        entries.push((
            format!("{p}.post_attention_layernorm.weight"),
            "F32",
            vec![64 / d],
        ));
        layer += 1;
    }
    entries.truncate(TENSORS);
    let mut map = serde_json::Map::new();
    map.insert("__metadata__".into(), serde_json::json!({"format": "pt"}));
    let mut off = 0u64;
    for (name, dtype, shape) in &entries {
        let bytes = shape.iter().product::<u64>() * if *dtype == "F32" { 4 } else { 2 };
        map.insert(
            name.clone(),
            serde_json::json!({"dtype": dtype, "shape": shape, "data_offsets": [off, off + bytes]}),
        );
        off += bytes;
    }
    let json = serde_json::Value::Object(map).to_string().into_bytes();
    let file_len = 8 + json.len() as u64 + off;
    (json, file_len)
}

fn big_checkpoint(json: &[u8], file_len: u64) -> Checkpoint {
    let path = PathBuf::from("moe-200k.safetensors");
    let header = Header::parse_json(&path, json, file_len).expect("the generated header is valid");
    assert_eq!(header.tensors.len(), TENSORS);
    Checkpoint {
        path,
        index: None,
        index_metadata: None,
        shards: vec![header],
    }
}

fn bench_header(c: &mut Criterion) {
    let (json, file_len) = big_header(true);
    // The whole file in memory, for the reference crate's `read_metadata`.
    let mut file = (json.len() as u64).to_le_bytes().to_vec();
    file.extend_from_slice(&json);
    file.resize(file_len as usize, 0);
    let path = Path::new("moe-200k.safetensors");
    let mut g = c.benchmark_group("header/parse_200k");
    g.sample_size(20);
    g.throughput(Throughput::Bytes(json.len() as u64));
    g.bench_function("tensorstream", |b| {
        b.iter(|| Header::parse_json(path, black_box(&json), file_len).expect("valid"))
    });
    // The reference: safetensors 0.8 parses and validates the same header.
    g.bench_function("safetensors-0.8", |b| {
        b.iter(|| safetensors::SafeTensors::read_metadata(black_box(&file)).expect("valid"))
    });
    g.finish();
}

fn bench_plan(c: &mut Criterion) {
    let (json, file_len) = big_header(false);
    let ckpt = big_checkpoint(&json, file_len);
    let mut g = c.benchmark_group("plan/200k");
    g.sample_size(20);
    g.throughput(Throughput::Elements(TENSORS as u64));
    let all = PlanOptions::default();
    let only = PlanOptions {
        only: vec!["model.layers.1?.mlp.experts.*".into()],
        ..PlanOptions::default()
    };
    let to_f32 = PlanOptions {
        dtype: Some(Dtype::F32),
        ..PlanOptions::default()
    };
    for (name, opts) in [("all", &all), ("only_glob", &only), ("to_f32", &to_f32)] {
        g.bench_function(name, |b| {
            b.iter(|| plan::plan(black_box(&ckpt), opts).expect("plannable"))
        });
    }
    g.finish();
}

/// About 64 MiB of BF16 in the synthetic Llama layout (2 layers, hidden 1024).
fn fixture() -> (tempfile::TempDir, PathBuf) {
    let base = std::env::var_os("TENSORSTREAM_BENCH_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_TARGET_TMPDIR")));
    std::fs::create_dir_all(&base).expect("bench dir");
    let dir = tempfile::Builder::new()
        .prefix("tensorstream-bench-")
        .tempdir_in(&base)
        .expect("temp dir");
    let spec = SynthSpec {
        hidden: 1024,
        intermediate: 2816,
        vocab: 4096,
        layers: 2,
        dtype: Dtype::BF16,
    };
    let path = write_checkpoint(dir.path(), &spec, 1, 0x5EED).expect("fixture");
    (dir, path)
}

fn bench_load(c: &mut Criterion) {
    let (_dir, path) = fixture();
    let ckpt = Checkpoint::open(&path).expect("fixture opens");
    let bytes = ckpt.total_bytes();
    // Into the page cache once before any measurement.
    std::fs::read(&path).map(drop).expect("read fixture");
    let mut g = c.benchmark_group("load_warm_64MiB");
    g.sample_size(20);
    g.warm_up_time(Duration::from_secs(1));
    g.measurement_time(Duration::from_secs(4));
    g.throughput(Throughput::Bytes(bytes));
    for (name, io, reuse) in [
        ("auto", IoBackend::Auto, false),
        ("direct", IoBackend::Direct, false),
        ("buffered", IoBackend::Buffered, false),
        ("pread", IoBackend::Pread, false),
        ("pread-direct", IoBackend::PreadDirect, false),
        // Host memory kept between loads: what a server switching models gets.
        ("auto+pool", IoBackend::Auto, true),
        ("direct+pool", IoBackend::Direct, true),
    ] {
        let mut loader = Loader::new().io(io);
        if reuse {
            loader = loader.host_pool(HostPool::new(1 << 30));
        }
        // A backend the machine refuses (no io_uring, no O_DIRECT) is skipped, not failed.
        if let Err(e) = loader.load_checkpoint(&ckpt) {
            eprintln!("load_warm_64MiB/{name}: skipped ({e})");
            continue;
        }
        g.bench_function(name, |b| {
            b.iter(|| {
                let m = loader.load_checkpoint(black_box(&ckpt)).expect("load");
                assert_eq!(m.stats().tensor_bytes, bytes);
                m
            })
        });
    }
    g.finish();
}

criterion_group!(benches, bench_header, bench_plan, bench_load);
criterion_main!(benches);
