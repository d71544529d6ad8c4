//! Row and column selections (`Loader::rows` / `--rows`, `Loader::columns` / `--cols`):
//! a tensor-parallel rank's shard, or any range, loads as exactly those rows or
//! columns of the reference's bytes (converted where asked), through every backend,
//! rows reading only their bytes; rules a tensor cannot satisfy fail the whole load,
//! naming the file and the tensor.

mod common;

use std::collections::BTreeMap;

use common::{
    disk_tempdir, load_or_skip, random_dtype, reference_file, rng, write_file, RefTensor, Spec,
    BACKENDS,
};
use proptest::prelude::*;
use rand::rngs::StdRng;
use rand::Rng;
use tensorstream::convert::{convert_into, converted_len, output_dtype};
use tensorstream::{Checkpoint, Dtype, ErrorKind, IoBackend, Loader, Slice};

/// The bytes indices `a..b` of dimension `dim` (0 or 1) of `t` should load as, in
/// `dtype` when it converts.
fn expected(t: &RefTensor, dim: usize, a: u64, b: u64, dtype: Option<Dtype>) -> (Dtype, Vec<u8>) {
    let rows = t.shape.first().copied().unwrap_or(1).max(1) as usize;
    let row = t.data.len() / rows;
    let raw: Vec<u8> = if dim == 0 {
        t.data[a as usize * row..b as usize * row].to_vec()
    } else {
        let unit = row / t.shape[1].max(1) as usize;
        t.data
            .chunks(row.max(1))
            .take(t.shape[0] as usize)
            .flat_map(|r| &r[a as usize * unit..b as usize * unit])
            .copied()
            .collect()
    };
    let out = output_dtype(t.dtype, dtype);
    if out == t.dtype {
        return (out, raw);
    }
    let mut v = vec![0xEEu8; converted_len(t.dtype, out, raw.len() as u64) as usize];
    convert_into(t.dtype, out, &raw, &mut v).unwrap();
    (out, v)
}

/// A random slice of a dimension of size `d0`: a range, an equal part, or none.
fn random_slice(r: &mut StdRng, d0: u64) -> Option<Slice> {
    match r.gen_range(0..3) {
        0 => None,
        1 => {
            let start = r.gen_range(0..=d0);
            let end = r.gen_range(start..=d0);
            Some(Slice::Range { start, end })
        }
        _ => {
            let worlds: Vec<u64> = (1..=d0.clamp(1, 16))
                .filter(|w| d0.is_multiple_of(*w))
                .collect();
            let world = worlds[r.gen_range(0..worlds.len())];
            Some(Slice::Part {
                rank: r.gen_range(0..world),
                world,
            })
        }
    }
}

/// A file of `count` random tensors of rank 1 to 3 whose rows are whole bytes, a rule
/// (rows, or columns where the tensor has them and whole-byte elements) for about
/// two thirds of them, and what each should load as: dimension, indices `a..b`.
struct Case {
    _dir: tempfile::TempDir,
    path: std::path::PathBuf,
    rules: Vec<(String, usize, Slice)>,
    kept: BTreeMap<String, (usize, u64, u64)>,
    reference: BTreeMap<String, RefTensor>,
}

fn random_case(seed: u64, count: usize, max_rows: u64, max_cols: u64) -> Case {
    let mut r = rng(seed);
    let dir = disk_tempdir();
    let specs: Vec<Spec> = (0..count)
        .map(|i| {
            let dtype = random_dtype(&mut r);
            let d0 = r.gen_range(0..=max_rows);
            // Sub-byte dtypes: rows of a multiple of 8 elements are whole bytes.
            let k = if dtype.bits() < 8 {
                8 * r.gen_range(1..4u64)
            } else {
                r.gen_range(0..=max_cols)
            };
            let shape = match r.gen_range(0..3) {
                0 if dtype.bits() >= 8 => vec![d0],
                1 => vec![d0, k, r.gen_range(1..3)],
                _ => vec![d0, k],
            };
            Spec::random(format!("t{i}.{}", dtype.name()), dtype, &shape, &mut r)
        })
        .collect();
    let path = dir.path().join("model.safetensors");
    write_file(&path, &specs, r.gen_range(0..200));
    let mut rules = Vec::new();
    let mut kept = BTreeMap::new();
    for s in &specs {
        let columns = s.shape.len() >= 2 && s.dtype.bits() >= 8 && r.gen_bool(0.5);
        let dim = usize::from(columns);
        match random_slice(&mut r, s.shape[dim]) {
            Some(slice) => {
                let (a, b) = slice.resolve(s.shape[dim]).unwrap();
                kept.insert(s.name.clone(), (dim, a, b));
                rules.push((s.name.clone(), dim, slice));
            }
            None => {
                kept.insert(s.name.clone(), (0, 0, s.shape[0]));
            }
        }
    }
    Case {
        _dir: dir,
        reference: reference_file(&path),
        path,
        rules,
        kept,
    }
}

fn check(case: &Case, loader: &Loader, backend: IoBackend, dtype: Option<Dtype>) {
    let ckpt = Checkpoint::open(&case.path).unwrap();
    let Some(m) = load_or_skip(loader, backend, &ckpt) else {
        return;
    };
    assert_eq!(m.len(), case.reference.len());
    for (name, t) in &case.reference {
        let (dim, a, b) = case.kept[name];
        let got = m.get(name).unwrap();
        let (dt, bytes) = expected(t, dim, a, b, dtype);
        let mut shape = t.shape.clone();
        shape[dim] = b - a;
        let what = format!("{name} {:?} dim {dim} {a}..{b} via {backend:?}", t.shape);
        assert_eq!(got.dtype, dt, "{what}");
        assert_eq!(got.shape, shape, "{what}");
        assert!(
            got.host_bytes().unwrap() == &bytes[..],
            "{what}: bytes differ"
        );
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 24, ..ProptestConfig::default() })]

    /// Random tensors, rules, chunk sizes, queue depths, gaps and conversions: every
    /// backend loads exactly the selected rows or columns of the reference's bytes.
    #[test]
    fn selected_rows_and_columns_are_the_reference_ones_on_every_backend(
        seed in any::<u64>(),
        count in 1usize..12,
        max_rows in prop_oneof![Just(4u64), 1u64..300],
        max_cols in prop_oneof![Just(40u64), 1u64..3000],
        chunk_pages in 1u64..=64,
        depth in 1usize..=16,
        gap in prop_oneof![Just(0u64), 0u64..(1 << 20)],
        dtype in prop_oneof![Just(None), Just(Some(Dtype::F32)), Just(Some(Dtype::F16)), Just(Some(Dtype::BF16))],
    ) {
        let case = random_case(seed, count, max_rows, max_cols);
        let mut l = Loader::new()
            .dtype(dtype)
            .chunk_size(chunk_pages * 4096)
            .queue_depth(depth)
            .coalesce_gap(gap);
        for (name, dim, slice) in &case.rules {
            l = if *dim == 0 { l.rows(name.clone(), *slice) } else { l.columns(name.clone(), *slice) };
        }
        for backend in BACKENDS {
            check(&case, &l, backend, dtype);
        }
    }
}

/// Only the selected rows' bytes are read: a quarter of a 16 MiB tensor costs a
/// quarter of the reads, give or take the alignment, on every backend.
#[test]
fn a_part_reads_only_its_bytes() {
    let mut r = rng(7);
    let dir = disk_tempdir();
    let path = dir.path().join("big.safetensors");
    let specs = [
        Spec::random("w", Dtype::BF16, &[4096, 2048], &mut r),
        Spec::random("b", Dtype::F32, &[4096], &mut r),
    ];
    write_file(&path, &specs, 0);
    let ckpt = Checkpoint::open(&path).unwrap();
    let reference = reference_file(&path);
    for backend in BACKENDS {
        for rank in 0..4 {
            let l = Loader::new().rows("w", Slice::Part { rank, world: 4 });
            let Some(m) = load_or_skip(&l, backend, &ckpt) else {
                continue;
            };
            let whole = reference["w"].data.len() as u64;
            let bias = reference["b"].data.len() as u64;
            let stats = m.stats();
            assert_eq!(stats.tensor_bytes, whole / 4 + bias, "{backend:?}");
            assert!(
                stats.read_bytes <= whole / 4 + bias + 4 * 4096 + (64 << 10),
                "{backend:?} rank {rank}: read {} bytes for {}",
                stats.read_bytes,
                whole / 4 + bias
            );
            let (_, want) = expected(&reference["w"], 0, rank * 1024, (rank + 1) * 1024, None);
            assert!(m.get("w").unwrap().host_bytes().unwrap() == &want[..]);
            assert_eq!(m.get("w").unwrap().shape, vec![1024, 2048]);
            assert_eq!(
                m.get("b").unwrap().host_bytes().unwrap(),
                &reference["b"].data[..]
            );
        }
    }
}

/// The first rule that matches a tensor applies; rules combine with `only`; a range
/// of no rows is an empty tensor of the right shape.
#[test]
fn the_first_matching_rule_applies() {
    let mut r = rng(8);
    let dir = disk_tempdir();
    let path = dir.path().join("m.safetensors");
    let specs = [
        Spec::random("layers.0.q.weight", Dtype::F16, &[12, 5], &mut r),
        Spec::random("layers.0.o.weight", Dtype::F16, &[12, 6], &mut r),
        Spec::random("layers.1.q.weight", Dtype::F16, &[12, 7], &mut r),
        Spec::random("norm", Dtype::F32, &[12], &mut r),
    ];
    write_file(&path, &specs, 0);
    let reference = reference_file(&path);
    let m = Loader::new()
        .only("layers.*")
        .rows("layers.0.q.*", Slice::Range { start: 3, end: 3 })
        .rows("*.q.weight", Slice::Part { rank: 2, world: 3 })
        .rows("*", Slice::Range { start: 10, end: 12 })
        .load(&path)
        .unwrap();
    assert!(m.get("norm").is_none());
    for (name, a, b) in [
        ("layers.0.q.weight", 3, 3),
        ("layers.1.q.weight", 8, 12),
        ("layers.0.o.weight", 10, 12),
    ] {
        let t = m.get(name).unwrap();
        assert_eq!(t.shape[0], b - a, "{name}");
        let (_, want) = expected(&reference[name], 0, a, b, None);
        assert!(t.host_bytes().unwrap() == &want[..], "{name}");
    }
}

/// Each rule a tensor cannot satisfy fails the load with InvalidArgument, naming the
/// file, the tensor, the rows or columns and why; a rule that matches no tensor at all
/// is a caller's error too.
#[test]
fn rules_a_tensor_cannot_satisfy_fail_the_load() {
    let mut r = rng(9);
    let dir = disk_tempdir();
    let path = dir.path().join("m.safetensors");
    let specs = [
        Spec::random("w", Dtype::BF16, &[10, 4], &mut r),
        Spec::random("scalar", Dtype::F32, &[], &mut r),
        Spec::random("vector", Dtype::F32, &[6], &mut r),
        Spec::random("nibbles", Dtype::F4, &[2, 1], &mut r),
        Spec::random("bytes.f4", Dtype::F4, &[2, 2], &mut r),
    ];
    write_file(&path, &specs, 0);
    let file = path.display().to_string();
    for (dim, pattern, slice, why) in [
        (0, "w", "0:11", "0..11 is not within its size 10"),
        (0, "w", "5:4", "5..4 ends before it starts"),
        (
            0,
            "w",
            "1/3",
            "its size 10 does not split into 3 equal parts",
        ),
        (0, "scalar", "0:0", "it is a scalar"),
        (0, "nibbles", "0:1", "not a whole number of bytes"),
        (1, "w", "0:5", "0..5 is not within its size 4"),
        (
            1,
            "w",
            "1/3",
            "its size 4 does not split into 3 equal parts",
        ),
        (1, "vector", "0:1", "fewer than two dimensions"),
        (1, "scalar", "0:0", "fewer than two dimensions"),
        (1, "bytes.f4", "0:1", "elements smaller than a byte"),
    ] {
        let what = if dim == 0 { "rows" } else { "columns" };
        for backend in [IoBackend::Pread, IoBackend::Auto] {
            let l = Loader::new().io(backend);
            let l = if dim == 0 {
                l.rows(pattern, slice.parse().unwrap())
            } else {
                l.columns(pattern, slice.parse().unwrap())
            };
            let e = l.load(&path).unwrap_err();
            let msg = e.to_string();
            assert_eq!(e.kind(), ErrorKind::InvalidArgument, "{msg}");
            let named = format!("tensor '{pattern}'");
            let sliced = format!("{what} {slice}");
            for part in [file.as_str(), &named, &sliced, why] {
                assert!(msg.contains(part), "'{msg}' does not say '{part}'");
            }
        }
    }
    // Rows of a sub-byte dtype that are whole bytes load.
    let m = Loader::new()
        .rows("bytes.f4", Slice::Range { start: 1, end: 2 })
        .load(&path)
        .unwrap();
    let t = reference_file(&path)["bytes.f4"].clone();
    assert_eq!(
        m.get("bytes.f4").unwrap().host_bytes().unwrap(),
        &t.data[1..]
    );

    let e = Loader::new()
        .columns("model.*", Slice::Range { start: 0, end: 1 })
        .load(&path)
        .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::InvalidArgument);
    assert!(
        e.to_string().contains("matches 'model.*' (columns 0:1)"),
        "{e}"
    );

    // Rows and columns of one tensor: refused, whichever comes first.
    let one = Slice::Range { start: 0, end: 1 };
    for l in [
        Loader::new().rows("w", one).columns("w", one),
        Loader::new().columns("w", one).rows("w", one),
    ] {
        let e = l.load(&path).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::InvalidArgument);
        let msg = e.to_string();
        assert!(
            msg.contains("tensor 'w'") && msg.contains("not both"),
            "{msg}"
        );
    }
    // A library caller's rule for another dimension.
    let mut opts = tensorstream::plan::PlanOptions::default();
    opts.slices.push(tensorstream::SliceRule {
        pattern: "w".into(),
        dim: 2,
        slice: one,
    });
    let e = tensorstream::plan::plan(&Checkpoint::open(&path).unwrap(), &opts).unwrap_err();
    assert!(
        e.to_string().contains("only rows (0) and columns (1)"),
        "{e}"
    );
}

/// Columns of rows longer than a read (each row's selected bytes read on their own)
/// and of rows many to a read (gathered), raw and converted, on every backend: a
/// row-parallel rank's shard.
#[test]
fn columns_of_long_and_short_rows() {
    let mut r = rng(10);
    let dir = disk_tempdir();
    let path = dir.path().join("m.safetensors");
    let specs = [
        Spec::random("long", Dtype::F32, &[5, 70_000], &mut r),
        Spec::random("short", Dtype::BF16, &[3000, 64], &mut r),
        Spec::random("cube", Dtype::F16, &[7, 12, 3], &mut r),
    ];
    write_file(&path, &specs, 0);
    let ckpt = Checkpoint::open(&path).unwrap();
    let reference = reference_file(&path);
    for dtype in [None, Some(Dtype::BF16)] {
        for rank in 0..4 {
            let l = Loader::new()
                .dtype(dtype)
                .chunk_size(64 << 10)
                .columns("*", Slice::Part { rank, world: 4 });
            for backend in BACKENDS {
                let Some(m) = load_or_skip(&l, backend, &ckpt) else {
                    continue;
                };
                for (name, t) in &reference {
                    let d1 = t.shape[1] / 4;
                    let (dt, want) = expected(t, 1, rank * d1, (rank + 1) * d1, dtype);
                    let got = m.get(name).unwrap();
                    let what = format!("{name} rank {rank} {dtype:?} {backend:?}");
                    assert_eq!(got.dtype, dt, "{what}");
                    assert_eq!(got.shape[1], d1, "{what}");
                    assert!(got.host_bytes().unwrap() == &want[..], "{what}");
                }
            }
        }
    }
}

/// The textual forms the command line takes.
#[test]
fn rules_parse_from_text() {
    use tensorstream::SliceRule;
    let r = SliceRule::parse("model.layers.*.mlp.up_proj.weight=1/4", 0).unwrap();
    assert_eq!(r.pattern, "model.layers.*.mlp.up_proj.weight");
    assert_eq!((r.dim, r.slice), (0, Slice::Part { rank: 1, world: 4 }));
    let r = SliceRule::parse("a=b=0:7", 1).unwrap();
    assert_eq!(r.pattern, "a=b");
    assert_eq!((r.dim, r.slice), (1, Slice::Range { start: 0, end: 7 }));
    assert_eq!(r.slice.to_string(), "0:7");
    for bad in [
        "w", "=0:1", "w=1", "w=a:2", "w=1/0", "w=2/2", "w=-1:2", "w=1:2:3",
    ] {
        assert!(SliceRule::parse(bad, 0).is_err(), "{bad} parsed");
    }
}

/// An empty tensor whose other dimensions multiply past 64 bits: its columns (and
/// rows) load as empty tensors of the selected shape.
#[test]
fn slices_of_an_empty_tensor_with_huge_dimensions() {
    let dir = disk_tempdir();
    let path = dir.path().join("e.safetensors");
    let big = 1u64 << 40;
    let json = format!(
        r#"{{"e":{{"dtype":"F32","shape":[0,{big},{big}],"data_offsets":[0,0]}},"x":{{"dtype":"U8","shape":[2],"data_offsets":[0,2]}}}}"#
    );
    let mut file = (json.len() as u64).to_le_bytes().to_vec();
    file.extend_from_slice(json.as_bytes());
    file.extend_from_slice(&[7, 9]);
    std::fs::write(&path, file).unwrap();
    for l in [
        Loader::new().columns("e", Slice::Part { rank: 1, world: 2 }),
        Loader::new().rows("e", Slice::Range { start: 0, end: 0 }),
    ] {
        for backend in BACKENDS {
            let Some(m) = load_or_skip(&l, backend, &Checkpoint::open(&path).unwrap()) else {
                continue;
            };
            let e = m.get("e").unwrap();
            assert_eq!(e.len(), 0);
            assert_eq!(e.shape[0], 0);
            assert_eq!(m.get("x").unwrap().host_bytes().unwrap(), &[7, 9]);
        }
    }
}
