//! Loading: every I/O backend returns exactly the bytes the reference crate reads,
//! whatever the chunk size, queue depth, coalescing gap, header alignment or sharding;
//! filters read little; conversions match `convert::convert_into`; changed, truncated
//! and cancelled loads fail cleanly; parallel loads agree; digests are the documented
//! SHA-256 lines.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::{
    disk_tempdir, load_or_skip, random_dtype, reference_files, refused_here, rng, sha256_hex,
    whole_bytes, write_file, write_index, RefTensor, Spec, BACKENDS,
};
use proptest::prelude::*;
use rand::rngs::StdRng;
use rand::Rng;
use tensorstream::convert::{convert_into, converted_len, output_dtype};
use tensorstream::{CancelToken, Checkpoint, Device, Dtype, ErrorKind, IoBackend, Loader, Model};

/// A checkpoint written for a test, and what the reference reads from it.
struct Fixture {
    _dir: tempfile::TempDir,
    /// What to load: a file, the directory, or the index.
    path: PathBuf,
    files: Vec<PathBuf>,
    expected: BTreeMap<String, RefTensor>,
}

/// A random shape of about `numel` elements of `dtype`, rank 0 to 3.
fn random_shape(r: &mut StdRng, dtype: Dtype, numel: u64) -> Vec<u64> {
    let shape = match r.gen_range(0..4) {
        0 if numel == 1 => vec![],
        2 => {
            let k = r.gen_range(1..4u64);
            vec![k, numel / k]
        }
        3 => vec![1, numel, 1],
        _ => vec![numel],
    };
    whole_bytes(dtype, shape)
}

/// Writes a random checkpoint of `shards` files, each with `per_shard[i]` tensors,
/// with `pad[i]` extra header bytes, on a real disk. `max_numel` bounds the large
/// tensors.
fn random_checkpoint(
    seed: u64,
    per_shard: &[usize],
    pad: &[usize],
    index: bool,
    max_numel: u64,
) -> Fixture {
    let dir = disk_tempdir();
    let mut r = rng(seed);
    let mut files = Vec::new();
    let mut weight_map = Vec::new();
    for (s, &count) in per_shard.iter().enumerate() {
        let tensors: Vec<Spec> = (0..count)
            .map(|i| {
                let dtype = random_dtype(&mut r);
                let numel = match r.gen_range(0..10) {
                    0..=5 => r.gen_range(0..64),
                    6..=8 => r.gen_range(0..5000),
                    _ => r.gen_range(0..=max_numel),
                };
                let shape = random_shape(&mut r, dtype, numel);
                Spec::random(
                    format!("s{s}.t{i}.{}", dtype.name().to_lowercase()),
                    dtype,
                    &shape,
                    &mut r,
                )
            })
            .collect();
        let name = if per_shard.len() == 1 {
            "model.safetensors".to_string()
        } else {
            format!("model-{:05}-of-{:05}.safetensors", s + 1, per_shard.len())
        };
        let p = dir.path().join(&name);
        write_file(&p, &tensors, pad.get(s).copied().unwrap_or(0));
        for t in &tensors {
            weight_map.push((t.name.clone(), name.clone()));
        }
        files.push(p);
    }
    let expected = reference_files(&files);
    let path = if index && !weight_map.is_empty() {
        write_index(
            dir.path(),
            weight_map.iter().map(|(t, f)| (t.as_str(), f.as_str())),
        )
    } else if files.len() == 1 {
        files[0].clone()
    } else {
        dir.path().to_path_buf()
    };
    Fixture {
        _dir: dir,
        path,
        files,
        expected,
    }
}

/// What a tensor should hold once loaded with `--dtype dtype`.
fn expected_bytes(t: &RefTensor, dtype: Option<Dtype>) -> (Dtype, Vec<u8>) {
    let out = output_dtype(t.dtype, dtype);
    if out == t.dtype {
        return (out, t.data.clone());
    }
    let mut v = vec![0xEEu8; converted_len(t.dtype, out, t.data.len() as u64) as usize];
    convert_into(t.dtype, out, &t.data, &mut v).unwrap();
    (out, v)
}

fn check_model(
    model: &Model,
    expected: &BTreeMap<String, RefTensor>,
    dtype: Option<Dtype>,
    what: &str,
) -> Result<(), TestCaseError> {
    let names: Vec<&String> = model.tensors().map(|t| &t.name).collect();
    let want: Vec<&String> = expected.keys().collect();
    prop_assert_eq!(names, want, "{}: tensor names", what);
    for (name, r) in expected {
        let t = model.get(name).unwrap();
        let (out, bytes) = expected_bytes(r, dtype);
        prop_assert_eq!(t.dtype, out, "{}: {} dtype", what, name);
        prop_assert_eq!(&t.shape, &r.shape, "{}: {} shape", what, name);
        prop_assert_eq!(t.device(), Device::Cpu);
        prop_assert_eq!(t.len(), bytes.len(), "{}: {} length", what, name);
        let got = t.host_bytes().unwrap();
        if got != &bytes[..] {
            let first = got.iter().zip(&bytes).position(|(a, b)| a != b);
            prop_assert!(
                false,
                "{}: {} ({} {:?}) differs from the reference at byte {:?} of {}",
                what,
                name,
                r.dtype,
                r.shape,
                first,
                bytes.len()
            );
        }
        prop_assert_eq!(t.to_host().unwrap(), bytes);
    }
    Ok(())
}

fn loader_strategy() -> impl Strategy<Value = (u64, usize, u64)> {
    (
        1u64..=256,
        1usize..=32,
        prop_oneof![Just(0u64), 0u64..8192, 0u64..(1 << 20)],
    )
        .prop_map(|(c, q, g)| (c * 4096, q, g))
}

fn checkpoint_strategy() -> impl Strategy<Value = (u64, Vec<usize>, Vec<usize>, bool)> {
    (
        any::<u64>(),
        prop::collection::vec(0usize..7, 1..=3),
        prop::collection::vec(0usize..5000, 3),
        any::<bool>(),
    )
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 96, ..ProptestConfig::default() })]

    /// (a) Every backend returns the reference's bytes.
    #[test]
    fn every_backend_returns_the_reference_bytes(
        (seed, per_shard, pad, index) in checkpoint_strategy(),
        (chunk, depth, gap) in loader_strategy(),
        select in prop::option::of(any::<u64>()),
    ) {
        let fx = random_checkpoint(seed, &per_shard, &pad, index, 300_000);
        let ckpt = Checkpoint::open(&fx.path).unwrap();
        let mut loader = Loader::new().chunk_size(chunk).queue_depth(depth).coalesce_gap(gap);
        // Optionally select a random subset by exact name (names hold no glob characters).
        let mut expected = fx.expected.clone();
        if let Some(mask) = select {
            let chosen: BTreeMap<String, RefTensor> = fx
                .expected
                .iter()
                .enumerate()
                .filter(|(i, _)| (mask >> (i % 64)) & 1 == 1)
                .map(|(_, (k, v))| (k.clone(), v.clone()))
                .collect();
            if !chosen.is_empty() {
                for k in chosen.keys() {
                    loader = loader.only(k.clone());
                }
                expected = chosen;
            }
        }
        let bytes: u64 = expected.values().map(|t| t.data.len() as u64).sum();
        let files = ckpt
            .shards
            .iter()
            .filter(|h| h.tensors.iter().any(|t| expected.contains_key(&t.name)))
            .count();
        for backend in BACKENDS {
            if let Some(model) = load_or_skip(&loader, backend, &ckpt) {
                let what = format!("{backend:?} chunk {chunk} depth {depth} gap {gap} select {select:?}");
                check_model(&model, &expected, None, &what)?;
                prop_assert_eq!(model.stats().tensor_bytes, bytes);
                prop_assert_eq!(model.stats().output_bytes, bytes);
                prop_assert!(model.stats().read_bytes >= bytes);
                prop_assert_eq!(model.stats().files.len(), files);
            }
        }
    }

    /// (c) Converting to F32, F16 or BF16 gives `convert_into` of the reference bytes
    /// per tensor (other dtypes unchanged), through every backend, 4 KiB chunks included
    /// (see `conversion_with_4k_chunks_and_straddling_elements`).
    #[test]
    fn conversion_matches_convert_into(
        (seed, per_shard, pad, index) in checkpoint_strategy(),
        (chunk, depth, gap) in loader_strategy(),
        target in prop_oneof![Just(Dtype::F32), Just(Dtype::F16), Just(Dtype::BF16)],
        staging in 1u64..(4 << 20),
    ) {
        let fx = random_checkpoint(seed, &per_shard, &pad, index, 40_000);
        let ckpt = Checkpoint::open(&fx.path).unwrap();
        let loader = Loader::new()
            .chunk_size(chunk)
            .queue_depth(depth)
            .coalesce_gap(gap)
            .staging_bytes(staging)
            .dtype(Some(target));
        for backend in BACKENDS {
            if let Some(model) = load_or_skip(&loader, backend, &ckpt) {
                let what = format!("{backend:?} to {target} chunk {chunk} depth {depth} staging {staging}");
                check_model(&model, &fx.expected, Some(target), &what)?;
            }
        }
    }
}

/// A fixture whose float tensors straddle 4 KiB boundaries (odd header length),
/// converted with the smallest chunk size.
#[test]
fn conversion_with_4k_chunks_and_straddling_elements() {
    let dir = disk_tempdir();
    let mut r = rng(77);
    let tensors = vec![
        Spec::random("a", Dtype::F32, &[3001], &mut r),
        Spec::random("b", Dtype::BF16, &[2049], &mut r),
        Spec::random("c", Dtype::F16, &[4097], &mut r),
    ];
    let p = dir.path().join("m.safetensors");
    write_file(&p, &tensors, 4093);
    let expected = reference_files([&p]);
    let ckpt = Checkpoint::open(&p).unwrap();
    for target in [Dtype::F32, Dtype::F16, Dtype::BF16] {
        let loader = Loader::new().chunk_size(4096).dtype(Some(target));
        for backend in BACKENDS {
            if let Some(m) = load_or_skip(&loader, backend, &ckpt) {
                check_model(
                    &m,
                    &expected,
                    Some(target),
                    &format!("{backend:?} {target}"),
                )
                .unwrap();
            }
        }
    }
}

/// A fixture of one file `name` in `dir` holding `tensors`, with `extra` header padding.
fn one_file(dir: tempfile::TempDir, name: &str, tensors: &[Spec], extra: usize) -> Fixture {
    let p = dir.path().join(name);
    write_file(&p, tensors, extra);
    let expected = reference_files([&p]);
    Fixture {
        _dir: dir,
        path: p.clone(),
        files: vec![p],
        expected,
    }
}

/// The checkpoint of the `only` tests: large tensors around small ones.
fn big_and_small() -> Fixture {
    let dir = disk_tempdir();
    let mut r = rng(11);
    let tensors = vec![
        Spec::random("big.0", Dtype::F32, &[1 << 20], &mut r),
        Spec::random("small.a", Dtype::U8, &[100], &mut r),
        Spec::random("big.1", Dtype::BF16, &[2 << 20], &mut r),
        Spec::random("small.b", Dtype::I16, &[333], &mut r),
        Spec::random("big.2", Dtype::U8, &[3 << 20], &mut r),
        Spec::random("mid.x", Dtype::F16, &[7, 9], &mut r),
    ];
    one_file(dir, "model.safetensors", &tensors, 123)
}

/// (b) `only` loads exactly the matching tensors, and reads little more than them.
#[test]
fn only_loads_exactly_the_matching_tensors_and_reads_little() {
    let fx = big_and_small();
    let ckpt = Checkpoint::open(&fx.path).unwrap();
    let file_len = std::fs::metadata(&fx.path).unwrap().len();
    let cases: [(&[&str], &[&str]); 5] = [
        (&["small.*"], &["small.a", "small.b"]),
        (&["small.a"], &["small.a"]),
        (&["small.?", "mid.*"], &["mid.x", "small.a", "small.b"]),
        (&["*.b", "small.a", "small.a"], &["small.a", "small.b"]),
        (&["*i*.?"], &["big.0", "big.1", "big.2", "mid.x"]),
    ];
    for (patterns, names) in cases {
        let mut loader = Loader::new();
        for p in patterns {
            loader = loader.only(*p);
        }
        let expected: BTreeMap<String, RefTensor> = fx
            .expected
            .iter()
            .filter(|(k, _)| names.contains(&k.as_str()))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        assert_eq!(expected.len(), names.len());
        let selected: u64 = expected.values().map(|t| t.data.len() as u64).sum();
        for backend in BACKENDS {
            let Some(m) = load_or_skip(&loader, backend, &ckpt) else {
                continue;
            };
            check_model(&m, &expected, None, &format!("{backend:?} {patterns:?}")).unwrap();
            let s = m.stats();
            assert_eq!(s.tensor_bytes, selected);
            if !names.iter().any(|n| n.starts_with("big")) {
                let segments = names.len() as u64;
                assert!(
                    s.read_bytes <= selected + 2 * 4096 * segments,
                    "{backend:?} {patterns:?}: read {} bytes for {selected} selected bytes",
                    s.read_bytes
                );
                assert!(
                    s.read_bytes * 100 < file_len,
                    "{backend:?}: read {} of {file_len}",
                    s.read_bytes
                );
            }
        }
    }
}

#[test]
fn only_matching_nothing_is_an_error() {
    let fx = big_and_small();
    for pattern in ["nothing", "small", "small.", "*.c", "big"] {
        let e = Loader::new().only(pattern).load(&fx.path).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::InvalidArgument, "{pattern}: {e}");
        assert!(e.to_string().contains(&format!("'{pattern}'")), "{e}");
    }
}

/// (d) The file growing or shrinking between `Checkpoint::open` and the load.
#[test]
fn file_changed_between_open_and_load() {
    for backend in BACKENDS {
        for grow in [true, false] {
            let fx = random_checkpoint(21, &[5], &[7], false, 50_000);
            let ckpt = Checkpoint::open(&fx.path).unwrap();
            let len = std::fs::metadata(&fx.path).unwrap().len();
            let f = std::fs::OpenOptions::new()
                .write(true)
                .open(&fx.path)
                .unwrap();
            f.set_len(if grow { len + 17 } else { len - 1 }).unwrap();
            drop(f);
            match Loader::new().io(backend).load_checkpoint(&ckpt) {
                Ok(_) => panic!("{backend:?}: loaded a file that changed size (grow: {grow})"),
                Err(e) if refused_here(backend, &e) => {
                    eprintln!("skipping backend {backend:?}: {e}");
                }
                Err(e) => {
                    assert_eq!(e.kind(), ErrorKind::FileChanged, "{backend:?}: {e}");
                    assert_eq!(e.path(), Some(fx.path.as_path()));
                    assert!(e.to_string().contains(&len.to_string()), "{e}");
                }
            }
        }
    }
}

#[test]
fn truncated_files_never_give_tensors() {
    let fx = random_checkpoint(22, &[3, 4], &[0, 9], true, 20_000);
    let victim = &fx.files[1];
    let bytes = std::fs::read(victim).unwrap();
    let n = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
    for keep in [0, 5, 8, 8 + n / 2, 8 + n, bytes.len() - 1] {
        std::fs::write(victim, &bytes[..keep]).unwrap();
        assert!(
            Checkpoint::open(&fx.path).is_err(),
            "opened with {keep} bytes kept"
        );
        for backend in BACKENDS {
            let e = Loader::new().io(backend).load(&fx.path).unwrap_err();
            assert_ne!(
                e.kind(),
                ErrorKind::Unsupported,
                "validation comes first: {e}"
            );
            assert!(
                e.to_string().contains("model-00002-of-00002.safetensors"),
                "{e}"
            );
        }
    }
}

/// (e) A token cancelled before the load stops it.
#[test]
fn cancelled_before_the_load() {
    let fx = random_checkpoint(31, &[4, 2], &[1, 2], false, 50_000);
    let ckpt = Checkpoint::open(&fx.path).unwrap();
    for backend in BACKENDS {
        let token = CancelToken::new();
        token.cancel();
        assert!(token.is_cancelled());
        match Loader::new()
            .io(backend)
            .cancel_token(token)
            .load_checkpoint(&ckpt)
        {
            Ok(_) => panic!("{backend:?}: a cancelled load returned tensors"),
            Err(e) if refused_here(backend, &e) => {
                eprintln!("skipping backend {backend:?}: {e}");
            }
            Err(e) => assert_eq!(e.kind(), ErrorKind::Cancelled, "{backend:?}: {e}"),
        }
    }
}

/// A token cancelled from the progress callback after the first read completes stops
/// a load that has many reads left; the same loader without the token succeeds.
#[test]
fn cancelled_during_the_load() {
    let dir = disk_tempdir();
    let mut r = rng(32);
    let p = dir.path().join("m.safetensors");
    write_file(&p, &[Spec::random("w", Dtype::U8, &[1 << 20], &mut r)], 0);
    let ckpt = Checkpoint::open(&p).unwrap();
    for backend in BACKENDS {
        let token = CancelToken::new();
        let t2 = token.clone();
        let calls = Arc::new(AtomicU64::new(0));
        let c2 = Arc::clone(&calls);
        let loader = Loader::new()
            .io(backend)
            .chunk_size(4096)
            .queue_depth(1)
            .progress(move |_, _| {
                c2.fetch_add(1, Ordering::Relaxed);
                t2.cancel();
            })
            .cancel_token(token);
        match loader.load_checkpoint(&ckpt) {
            Ok(_) => panic!("{backend:?}: cancelled after the first of 256 reads, yet completed"),
            Err(e) if refused_here(backend, &e) => {
                eprintln!("skipping backend {backend:?}: {e}");
                continue;
            }
            Err(e) => assert_eq!(e.kind(), ErrorKind::Cancelled, "{backend:?}: {e}"),
        }
        assert!(calls.load(Ordering::Relaxed) < 256);
    }
}

/// (f) Many loads at once, of the same and of different files, through every
/// backend, give the reference's bytes.
#[test]
fn parallel_loads_agree() {
    let shared = random_checkpoint(41, &[6, 3], &[11, 4096], true, 100_000);
    let own: Vec<Fixture> = (0..4)
        .map(|i| random_checkpoint(100 + i, &[5], &[i as usize * 3], false, 100_000))
        .collect();
    let loader = Loader::new().chunk_size(64 << 10).queue_depth(8);
    std::thread::scope(|s| {
        for t in 0..8usize {
            let (shared, own, loader) = (&shared, &own, &loader);
            s.spawn(move || {
                for round in 0..3 {
                    for (k, backend) in BACKENDS.into_iter().enumerate() {
                        let fx = if (t + k + round) % 2 == 0 {
                            shared
                        } else {
                            &own[t % own.len()]
                        };
                        let ckpt = Checkpoint::open(&fx.path).unwrap();
                        if let Some(m) = load_or_skip(loader, backend, &ckpt) {
                            check_model(&m, &fx.expected, None, &format!("thread {t} {backend:?}"))
                                .unwrap();
                        }
                    }
                }
            });
        }
    });
}

/// The documented digest line of one tensor, with the keys in the documented order.
fn documented_line(name: &str, dtype: Dtype, shape: &[u64], bytes: &[u8]) -> String {
    format!(
        r#"{{"name":{},"dtype":"{}","shape":{},"sha256":"{}"}}"#,
        serde_json::to_string(name).unwrap(),
        dtype.name(),
        serde_json::to_string(shape).unwrap(),
        sha256_hex(bytes)
    )
}

fn digest_fixture() -> Fixture {
    let dir = disk_tempdir();
    let mut r = rng(51);
    let tensors = vec![
        Spec::random("z.last", Dtype::BF16, &[33, 7], &mut r),
        Spec::random("a.first", Dtype::F8_E4M3, &[65], &mut r),
        Spec::random("m.mid \"quoted\" é", Dtype::I32, &[2, 3, 4], &mut r),
        Spec::random("scalar", Dtype::F64, &[], &mut r),
        Spec::random("empty", Dtype::F32, &[0, 5], &mut r),
        Spec::random("half", Dtype::F16, &[9], &mut r),
    ];
    one_file(dir, "m.safetensors", &tensors, 3)
}

/// (g) Digest lines: one per tensor, sorted by name, with the SHA-256 of the
/// reference bytes (after conversion when a dtype is given).
#[test]
fn digest_lines_hash_the_reference_bytes() {
    let fx = digest_fixture();
    for dtype in [None, Some(Dtype::F32), Some(Dtype::BF16)] {
        let m = Loader::new().dtype(dtype).load(&fx.path).unwrap();
        let lines = tensorstream::digest::digest_lines(&m).unwrap();
        assert_eq!(lines.len(), fx.expected.len());
        let mut names = Vec::new();
        for (line, (name, r)) in lines.iter().zip(&fx.expected) {
            let v: serde_json::Value = serde_json::from_str(line).unwrap();
            let obj = v.as_object().unwrap();
            assert_eq!(obj.len(), 4, "{line}");
            let (out, bytes) = expected_bytes(r, dtype);
            assert_eq!(obj["name"], serde_json::json!(name), "{line}");
            assert_eq!(obj["dtype"], serde_json::json!(out.name()), "{line}");
            assert_eq!(obj["shape"], serde_json::json!(r.shape), "{line}");
            assert_eq!(
                obj["sha256"],
                serde_json::json!(sha256_hex(&bytes)),
                "{line}"
            );
            assert!(!line.contains('\n'));
            names.push(obj["name"].as_str().unwrap().to_string());
        }
        let mut sorted = names.clone();
        sorted.sort();
        assert_eq!(names, sorted);
    }
}

/// The documented line format, byte for byte: keys in the order name, dtype, shape,
/// sha256 (DESIGN.md and the `digest_lines` doc comment).
#[test]
fn digest_lines_use_the_documented_key_order() {
    let fx = digest_fixture();
    let m = Loader::new().load(&fx.path).unwrap();
    let lines = tensorstream::digest::digest_lines(&m).unwrap();
    let want: Vec<String> = fx
        .expected
        .iter()
        .map(|(n, r)| documented_line(n, r.dtype, &r.shape, &r.data))
        .collect();
    assert_eq!(lines, want);
}

/// (h) A checkpoint of 1,000 small shards (with an index) loads through every backend.
#[test]
fn a_thousand_shards_load() {
    let dir = disk_tempdir();
    let mut r = rng(61);
    let mut weight_map = Vec::new();
    let mut files = Vec::new();
    for s in 0..1000 {
        let file = format!("model-{:05}-of-01000.safetensors", s + 1);
        let count = 1 + s % 2;
        let tensors: Vec<Spec> = (0..count)
            .map(|i| {
                let d = random_dtype(&mut r);
                let n = r.gen_range(1..40);
                Spec::random(format!("layer.{s}.t{i}"), d, &[n], &mut r)
            })
            .collect();
        let p = dir.path().join(&file);
        write_file(&p, &tensors, s % 13);
        for t in &tensors {
            weight_map.push((t.name.clone(), file.clone()));
        }
        files.push(p);
    }
    let expected = reference_files(&files);
    write_index(
        dir.path(),
        weight_map.iter().map(|(t, f)| (t.as_str(), f.as_str())),
    );
    let ckpt = Checkpoint::open(dir.path()).unwrap();
    assert_eq!(ckpt.shards.len(), 1000);
    for backend in BACKENDS {
        if let Some(m) = load_or_skip(&Loader::new(), backend, &ckpt) {
            check_model(&m, &expected, None, &format!("{backend:?}")).unwrap();
        }
    }
}

/// Every backend on a checkpoint large enough for many chunks and several files,
/// with the default options.
#[test]
fn default_options_every_backend() {
    let fx = random_checkpoint(71, &[6, 6, 6], &[0, 1, 4095], false, 400_000);
    let ckpt = Checkpoint::open(&fx.path).unwrap();
    let mut seen = BTreeSet::new();
    for backend in BACKENDS {
        if let Some(m) = load_or_skip(&Loader::new(), backend, &ckpt) {
            check_model(&m, &fx.expected, None, &format!("{backend:?}")).unwrap();
            for f in &m.stats().files {
                seen.insert(f.io_path);
            }
            // Raw tensors are read straight into their place: the reading thread never
            // lacks a buffer, and its waits lie within the load.
            let s = m.stats();
            assert_eq!(s.waiting_for_buffers, Duration::ZERO, "{backend:?}");
            assert!(s.waiting_for_reads <= s.elapsed, "{backend:?}: {s:?}");
        }
    }
    eprintln!("io paths used: {seen:?}");
    assert!(
        seen.contains("pread buffered") && seen.contains("io_uring buffered"),
        "{seen:?}"
    );
}

/// Conversions (BF16 to F32, slower than copying the bytes out of the page cache)
/// through two staging slots with eight reads allowed in flight: after each read its
/// slot is held while a placing thread converts it, so the reading thread waits for a
/// free buffer; the bytes equal a load with ample staging.
#[test]
fn a_load_short_of_staging_waits_for_buffers() {
    if std::thread::available_parallelism().map_or(1, |n| n.get()) < 2 {
        eprintln!("one CPU: conversions run on the reading thread, which never waits");
        return;
    }
    let dir = disk_tempdir();
    let path = dir.path().join("model.safetensors");
    let mut r = rng(97);
    let specs: Vec<Spec> = (0..3)
        .map(|i| Spec::random(format!("w{i}"), Dtype::BF16, &[512 << 10], &mut r))
        .collect();
    write_file(&path, &specs, 0);
    let ckpt = Checkpoint::open(&path).unwrap();
    let loader = Loader::new()
        .io(IoBackend::Pread)
        .dtype(Some(Dtype::F32))
        .chunk_size(64 << 10);
    let want = loader.clone().load_checkpoint(&ckpt).unwrap();
    let m = loader
        .staging_bytes(128 << 10)
        .queue_depth(8)
        .load_checkpoint(&ckpt)
        .unwrap();
    for t in want.tensors() {
        let got = m.get(&t.name).expect("tensor");
        assert_eq!(got.to_host().unwrap(), t.to_host().unwrap(), "{}", t.name);
    }
    let s = m.stats();
    assert!(s.waiting_for_buffers > Duration::ZERO, "{s:?}");
    assert!(
        s.waiting_for_buffers + s.waiting_for_reads <= s.elapsed,
        "{s:?}"
    );
}

/// `pread-direct` reads every file with O_DIRECT on the pread pool, and gives the bytes a
/// buffered pread load gives: raw tensors read in place, converted ones through staging,
/// with 4 KiB chunks (many reads, a short one at each end of file) and larger ones.
#[test]
fn pread_direct_reads_with_o_direct_and_equals_pread() {
    let fx = random_checkpoint(96, &[6, 5], &[3, 4095], false, 300_000);
    let ckpt = Checkpoint::open(&fx.path).unwrap();
    for dtype in [None, Some(Dtype::F32)] {
        for chunk in [4096, 64 << 10] {
            let what = format!("{dtype:?} chunk {chunk}");
            let loader = Loader::new().dtype(dtype).chunk_size(chunk).queue_depth(8);
            let want = loader
                .clone()
                .io(IoBackend::Pread)
                .load_checkpoint(&ckpt)
                .unwrap();
            let got = match loader.io(IoBackend::PreadDirect).load_checkpoint(&ckpt) {
                Ok(m) => m,
                Err(e) if refused_here(IoBackend::PreadDirect, &e) => {
                    eprintln!("skipping: O_DIRECT refused here: {e}");
                    return;
                }
                Err(e) => panic!("{what}: {e}"),
            };
            let paths = |m: &Model| -> Vec<&'static str> {
                m.stats().files.iter().map(|f| f.io_path).collect()
            };
            assert_eq!(
                paths(&got),
                vec!["pread+O_DIRECT"; fx.files.len()],
                "{what}"
            );
            assert_eq!(
                paths(&want),
                vec!["pread buffered"; fx.files.len()],
                "{what}"
            );
            let bytes = |m: &Model| -> Vec<(String, Dtype, Vec<u64>, Vec<u8>)> {
                m.tensors()
                    .map(|t| {
                        (
                            t.name.clone(),
                            t.dtype,
                            t.shape.clone(),
                            t.to_host().unwrap(),
                        )
                    })
                    .collect()
            };
            assert_eq!(bytes(&got), bytes(&want), "{what}");
            check_model(&got, &fx.expected, dtype, &what).unwrap();
        }
    }
}

/// `Loader::load` on the three kinds of path gives the same tensors.
#[test]
fn file_directory_and_index_paths_load_alike() {
    let fx = random_checkpoint(81, &[3, 2], &[5, 6], true, 10_000);
    let dir = fx.path.parent().unwrap().to_path_buf();
    for path in [fx.path.as_path(), dir.as_path()] {
        let m = Loader::new().io(IoBackend::Pread).load(path).unwrap();
        check_model(&m, &fx.expected, None, &path.display().to_string()).unwrap();
    }
    // One shard alone loads just its tensors.
    let m = Loader::new()
        .io(IoBackend::Pread)
        .load(&fx.files[0])
        .unwrap();
    let one = reference_files([&fx.files[0]]);
    check_model(&m, &one, None, "one shard").unwrap();
}

/// Progress reports never go backwards and end at the total, on every backend.
#[test]
fn progress_is_monotonic_and_complete() {
    let fx = random_checkpoint(91, &[4, 4], &[3, 0], false, 200_000);
    let ckpt = Checkpoint::open(&fx.path).unwrap();
    for dtype in [None, Some(Dtype::F32)] {
        for backend in BACKENDS {
            let calls = Arc::new(std::sync::Mutex::new(Vec::new()));
            let c2 = Arc::clone(&calls);
            let loader = Loader::new()
                .chunk_size(64 << 10)
                .queue_depth(4)
                .dtype(dtype)
                .progress(move |done, total| c2.lock().unwrap().push((done, total)));
            let Some(m) = load_or_skip(&loader, backend, &ckpt) else {
                continue;
            };
            check_model(&m, &fx.expected, dtype, &format!("{backend:?}")).unwrap();
            let calls = calls.lock().unwrap();
            assert!(!calls.is_empty(), "{backend:?}: no progress reported");
            let total = calls[0].1;
            assert!(
                total >= m.stats().tensor_bytes,
                "{backend:?}: total {total}"
            );
            assert!(
                calls.iter().all(|&(_, t)| t == total),
                "{backend:?}: the total changed"
            );
            assert!(
                calls.windows(2).all(|w| w[0].0 <= w[1].0),
                "{backend:?}: went backwards"
            );
            assert_eq!(
                calls.last().unwrap().0,
                total,
                "{backend:?}: did not finish"
            );
        }
    }
}

/// `?` matches one character, not one byte; `*` crosses dots.
#[test]
fn only_globs_match_characters() {
    let dir = disk_tempdir();
    let mut r = rng(92);
    let p = dir.path().join("m.safetensors");
    write_file(
        &p,
        &[
            Spec::random("café.w", Dtype::F16, &[3], &mut r),
            Spec::random("cafe.w", Dtype::F16, &[5], &mut r),
            Spec::random("caf.w", Dtype::F16, &[7], &mut r),
            Spec::random("a.b.c.d", Dtype::U8, &[9], &mut r),
        ],
        1,
    );
    let expected = reference_files([&p]);
    let cases: [(&str, &[&str]); 4] = [
        ("caf?.w", &["cafe.w", "café.w"]),
        ("café*", &["café.w"]),
        ("a*d", &["a.b.c.d"]),
        ("*.w", &["caf.w", "cafe.w", "café.w"]),
    ];
    for (pattern, names) in cases {
        let m = Loader::new()
            .only(pattern)
            .io(IoBackend::Pread)
            .load(&p)
            .unwrap();
        let want: BTreeMap<String, RefTensor> = expected
            .iter()
            .filter(|(k, _)| names.contains(&k.as_str()))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        check_model(&m, &want, None, pattern).unwrap();
    }
}

#[test]
fn loader_and_model_cross_threads() {
    fn send_sync<T: Send + Sync>() {}
    send_sync::<Loader>();
    send_sync::<Model>();
    send_sync::<tensorstream::Tensor>();
    send_sync::<CancelToken>();
}
