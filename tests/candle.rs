//! The candle backend against candle's own loading: every dtype candle has, shards and
//! indexes, conversions, slices, the VarBuilder and the errors; fixtures written at
//! test time with the reference `safetensors` crate, random bytes.

mod common;

use std::collections::HashMap;
use std::path::Path;

use candle_core::{CpuStorage, DType, Device, Storage, Tensor};
use common::{rng, write_file, write_index, Spec, BACKENDS};
use tensorstream::{Dtype, ErrorKind, IoBackend, Loader, Slice};

/// The dtypes candle 0.11 loads from safetensors (U16 widened to U32).
const CANDLE_DTYPES: [Dtype; 15] = [
    Dtype::U8,
    Dtype::U16,
    Dtype::U32,
    Dtype::I16,
    Dtype::I32,
    Dtype::I64,
    Dtype::BF16,
    Dtype::F16,
    Dtype::F32,
    Dtype::F64,
    Dtype::F8_E4M3,
    Dtype::F6_E2M3,
    Dtype::F6_E3M2,
    Dtype::F4,
    Dtype::F8_E8M0,
];

/// The bytes a CPU tensor holds for its elements (C order).
fn bytes_of(t: &Tensor) -> Vec<u8> {
    let t = t.contiguous().expect("contiguous");
    let (storage, layout) = t.storage_and_layout();
    let Storage::Cpu(cpu) = &*storage else {
        panic!("not a CPU tensor")
    };
    let all: &[u8] = match cpu {
        CpuStorage::U8(v)
        | CpuStorage::F6E2M3(v)
        | CpuStorage::F6E3M2(v)
        | CpuStorage::F4(v)
        | CpuStorage::F8E8M0(v) => v,
        CpuStorage::U32(v) => bytemuck::cast_slice(v),
        CpuStorage::I16(v) => bytemuck::cast_slice(v),
        CpuStorage::I32(v) => bytemuck::cast_slice(v),
        CpuStorage::I64(v) => bytemuck::cast_slice(v),
        CpuStorage::BF16(v) => bytemuck::cast_slice(v),
        CpuStorage::F16(v) => bytemuck::cast_slice(v),
        CpuStorage::F32(v) => bytemuck::cast_slice(v),
        CpuStorage::F64(v) => bytemuck::cast_slice(v),
        CpuStorage::F8E4M3(v) => bytemuck::cast_slice(v),
    };
    if matches!(
        t.dtype(),
        DType::F6E2M3 | DType::F6E3M2 | DType::F4 | DType::F8E8M0
    ) {
        return all.to_vec();
    }
    let size = t.dtype().size_in_bytes();
    let (start, end) = layout.contiguous_offsets().expect("contiguous layout");
    all[start * size..end * size].to_vec()
}

/// Asserts that two sets of candle tensors agree in names, dtypes, shapes and bytes.
fn assert_same(ours: &HashMap<String, Tensor>, theirs: &HashMap<String, Tensor>) {
    let mut a: Vec<&String> = ours.keys().collect();
    let mut b: Vec<&String> = theirs.keys().collect();
    a.sort();
    b.sort();
    assert_eq!(a, b, "tensor names");
    for (name, t) in theirs {
        let o = &ours[name];
        assert_eq!(o.dtype(), t.dtype(), "{name}: dtype");
        assert_eq!(o.dims(), t.dims(), "{name}: shape");
        assert_eq!(bytes_of(o), bytes_of(t), "{name}: bytes");
    }
}

/// One random tensor of each dtype candle has, of a few shapes (a scalar, an empty
/// tensor, matrices).
fn candle_fixture(seed: u64) -> Vec<Spec> {
    let mut r = rng(seed);
    let mut specs = Vec::new();
    for (i, &d) in CANDLE_DTYPES.iter().enumerate() {
        let name = format!("t.{i}.{}", d.name().to_lowercase());
        specs.push(Spec::random(name, d, &[7 + i as u64, 12], &mut r));
    }
    specs.push(Spec::random("scalar", Dtype::F32, &[], &mut r));
    specs.push(Spec::random("empty", Dtype::BF16, &[0, 5], &mut r));
    specs.push(Spec::random("wide.u16", Dtype::U16, &[3, 1001], &mut r));
    specs
}

#[test]
fn every_candle_dtype_equals_candle_load() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("model.safetensors");
    write_file(&path, &candle_fixture(1), 0);
    let theirs = candle_core::safetensors::load(&path, &Device::Cpu).unwrap();
    assert!(theirs
        .values()
        .any(|t| t.dtype() == DType::U32 && t.dims() == [3, 1001]));
    let ours = tensorstream::candle::load(&path, &Device::Cpu, None).unwrap();
    assert_same(&ours, &theirs);
}

#[test]
fn every_io_backend_gives_candle_the_same_tensors() {
    let dir = common::disk_tempdir();
    let path = dir.path().join("model.safetensors");
    write_file(&path, &candle_fixture(2), 4093);
    let theirs = candle_core::safetensors::load(&path, &Device::Cpu).unwrap();
    for backend in BACKENDS {
        let loader = Loader::new().io(backend);
        match tensorstream::candle::load_with(&loader, &path, &Device::Cpu, None) {
            Ok(ours) => assert_same(&ours, &theirs),
            Err(e) if common::refused_here(backend, &e) => eprintln!("skipping {backend:?}: {e}"),
            Err(e) => panic!("{backend:?}: {e}"),
        }
    }
}

#[test]
fn shards_directory_and_index_equal_candle_per_file() {
    let dir = tempfile::tempdir().unwrap();
    let mut r = rng(3);
    let a: Vec<Spec> = (0..5)
        .map(|i| Spec::random(format!("a.{i}"), Dtype::BF16, &[16, 9 + i], &mut r))
        .collect();
    let b: Vec<Spec> = (0..4)
        .map(|i| Spec::random(format!("b.{i}"), Dtype::I64, &[3 + i, 5], &mut r))
        .collect();
    let (fa, fb) = (
        "model-00001-of-00002.safetensors",
        "model-00002-of-00002.safetensors",
    );
    let index = write_two_shards(dir.path(), (fa, &a), (fb, &b), 17);
    let mut theirs = candle_core::safetensors::load(dir.path().join(fa), &Device::Cpu).unwrap();
    theirs.extend(candle_core::safetensors::load(dir.path().join(fb), &Device::Cpu).unwrap());
    for path in [dir.path(), index.as_path()] {
        let ours = tensorstream::candle::load(path, &Device::Cpu, None).unwrap();
        assert_same(&ours, &theirs);
    }
}

/// Writes shards `fa` (tensors `a`) and `fb` (tensors `b`, its header padded by
/// `pad` bytes) into `dir`, and an index naming them; returns the index's path.
fn write_two_shards(
    dir: &Path,
    (fa, a): (&str, &[Spec]),
    (fb, b): (&str, &[Spec]),
    pad: usize,
) -> std::path::PathBuf {
    write_file(&dir.join(fa), a, 0);
    write_file(&dir.join(fb), b, pad);
    let map: Vec<(&str, &str)> = a
        .iter()
        .map(|s| (s.name.as_str(), fa))
        .chain(b.iter().map(|s| (s.name.as_str(), fb)))
        .collect();
    write_index(dir, map)
}

/// Whether two tensors of one floating dtype hold the same values bit for bit, any
/// NaN equal to any NaN.
fn same_floats(a: &Tensor, b: &Tensor) -> bool {
    let a = a.to_dtype(DType::F64).unwrap().flatten_all().unwrap();
    let b = b.to_dtype(DType::F64).unwrap().flatten_all().unwrap();
    let (a, b) = (a.to_vec1::<f64>().unwrap(), b.to_vec1::<f64>().unwrap());
    a.len() == b.len()
        && a.iter()
            .zip(&b)
            .all(|(x, y)| x.to_bits() == y.to_bits() || (x.is_nan() && y.is_nan()))
}

#[test]
fn conversions_equal_candle_to_dtype() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("model.safetensors");
    let mut r = rng(4);
    let specs: Vec<Spec> = [
        Dtype::F32,
        Dtype::F16,
        Dtype::BF16,
        Dtype::F8_E4M3,
        Dtype::I32,
    ]
    .iter()
    .enumerate()
    .map(|(i, &d)| Spec::random(format!("w{i}"), d, &[33, 17], &mut r))
    .collect();
    write_file(&path, &specs, 0);
    let theirs = candle_core::safetensors::load(&path, &Device::Cpu).unwrap();
    for target in [DType::F32, DType::F16, DType::BF16] {
        let ours = tensorstream::candle::load(&path, &Device::Cpu, Some(target)).unwrap();
        for (name, t) in &theirs {
            let o = &ours[name];
            assert_eq!(o.dims(), t.dims(), "{name}");
            if t.dtype() == DType::I32 {
                assert_eq!(o.dtype(), DType::I32, "{name}: integers load as they are");
                assert_eq!(bytes_of(o), bytes_of(t), "{name}");
                continue;
            }
            assert_eq!(o.dtype(), target, "{name} as {target:?}");
            let want = t.to_dtype(target).unwrap();
            assert!(same_floats(o, &want), "{name} as {target:?}: values differ");
        }
    }
}

/// Tensor `name` of a tensorstream model as candle's dtype and bytes.
fn model_bytes(path: &Path, dtype: Dtype, name: &str) -> Vec<u8> {
    let model = Loader::new().dtype(Some(dtype)).load(path).unwrap();
    model.get(name).unwrap().host_bytes().unwrap().to_vec()
}

#[test]
fn dtypes_candle_lacks_convert_when_asked() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("model.safetensors");
    let mut r = rng(5);
    let specs = vec![
        Spec::random("e5m2", Dtype::F8_E5M2, &[8, 16], &mut r),
        Spec::random("e4m3fnuz", Dtype::F8_E4M3FNUZ, &[4, 4], &mut r),
        Spec::random("scale", Dtype::F8_E8M0, &[8], &mut r),
    ];
    write_file(&path, &specs, 0);
    for (target, dt) in [(DType::F32, Dtype::F32), (DType::BF16, Dtype::BF16)] {
        let ours = tensorstream::candle::load(&path, &Device::Cpu, Some(target)).unwrap();
        for s in &specs {
            let t = &ours[&s.name];
            assert_eq!(t.dtype(), target);
            assert_eq!(bytes_of(t), model_bytes(&path, dt, &s.name), "{}", s.name);
        }
    }
    let e = tensorstream::candle::load(&path, &Device::Cpu, None).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Unsupported);
    let msg = e.to_string();
    assert!(
        msg.contains("'e4m3fnuz'") || msg.contains("'e5m2'"),
        "{msg}"
    );
    assert!(
        msg.contains("candle has no F8_E") && msg.contains("F32, F16 or BF16"),
        "{msg}"
    );
    assert!(msg.contains("model.safetensors"), "{msg}");
}

#[test]
fn dtypes_candle_lacks_are_refused_by_name() {
    let dir = tempfile::tempdir().unwrap();
    let mut r = rng(6);
    for d in [Dtype::BOOL, Dtype::I8, Dtype::U64, Dtype::C64] {
        let path = dir.path().join(format!("{d}.safetensors"));
        let specs = vec![
            Spec::random("ok", Dtype::F32, &[4, 4], &mut r),
            Spec::random("odd", d, &[4, 4], &mut r),
        ];
        write_file(&path, &specs, 0);
        for dtype in [None, Some(DType::F16)] {
            let e = tensorstream::candle::load(&path, &Device::Cpu, dtype).unwrap_err();
            assert_eq!(e.kind(), ErrorKind::Unsupported, "{d}");
            let msg = e.to_string();
            assert!(
                msg.contains("tensor 'odd'") && msg.contains(&format!("no {d}")),
                "{msg}"
            );
        }
        // Left out, the tensor is no obstacle.
        let only = Loader::new().only("ok");
        let ours = tensorstream::candle::load_with(&only, &path, &Device::Cpu, None).unwrap();
        assert_eq!(ours.len(), 1);
        assert_eq!(bytes_of(&ours["ok"]), specs[0].data);
    }
}

#[test]
fn conversion_targets_other_than_f32_f16_bf16_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("model.safetensors");
    write_file(
        &path,
        &[Spec::random("w", Dtype::F32, &[4], &mut rng(7))],
        0,
    );
    for dtype in [DType::F64, DType::U8, DType::I64] {
        let e = tensorstream::candle::load(&path, &Device::Cpu, Some(dtype)).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::InvalidArgument);
        assert!(e.to_string().contains("F32, F16 or BF16"), "{e}");
    }
}

#[test]
fn rows_and_columns_equal_candle_narrow() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("model.safetensors");
    let mut r = rng(8);
    let specs = vec![
        Spec::random("layers.0.q.weight", Dtype::BF16, &[64, 48], &mut r),
        Spec::random("layers.0.o.weight", Dtype::F32, &[40, 64], &mut r),
        Spec::random("layers.0.norm", Dtype::F32, &[48], &mut r),
    ];
    write_file(&path, &specs, 0);
    let theirs = candle_core::safetensors::load(&path, &Device::Cpu).unwrap();
    for rank in 0..4 {
        let part = Slice::Part { rank, world: 4 };
        let loader = Loader::new()
            .rows("*.q.weight", part)
            .columns("*.o.weight", part);
        let ours = tensorstream::candle::load_with(&loader, &path, &Device::Cpu, None).unwrap();
        let q = theirs["layers.0.q.weight"]
            .narrow(0, 16 * rank as usize, 16)
            .unwrap();
        let o = theirs["layers.0.o.weight"]
            .narrow(1, 16 * rank as usize, 16)
            .unwrap();
        assert_eq!(ours["layers.0.q.weight"].dims(), [16, 48]);
        assert_eq!(bytes_of(&ours["layers.0.q.weight"]), bytes_of(&q));
        assert_eq!(ours["layers.0.o.weight"].dims(), [40, 16]);
        assert_eq!(bytes_of(&ours["layers.0.o.weight"]), bytes_of(&o));
        assert_eq!(
            bytes_of(&ours["layers.0.norm"]),
            bytes_of(&theirs["layers.0.norm"])
        );
    }
}

#[test]
fn loaded_tensors_compute_in_candle() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("model.safetensors");
    let mut r = rng(9);
    // Finite values: random F32 bits would hold NaNs and infinities.
    let a: Vec<f32> = (0..24).map(|i| ((i * 37 % 11) as f32) - 5.5).collect();
    let b: Vec<f32> = (0..12).map(|i| ((i * 13 % 7) as f32) * 0.25).collect();
    let spec = |name: &str, shape: &[u64], v: &[f32]| Spec {
        name: name.into(),
        dtype: Dtype::F32,
        shape: shape.to_vec(),
        data: bytemuck::cast_slice(v).to_vec(),
    };
    let noise = Spec::random("noise", Dtype::U8, &[5], &mut r);
    write_file(
        &path,
        &[spec("a", &[4, 6], &a), spec("b", &[6, 2], &b), noise],
        0,
    );
    let ours = tensorstream::candle::load(&path, &Device::Cpu, None).unwrap();
    let theirs = candle_core::safetensors::load(&path, &Device::Cpu).unwrap();
    let got = ours["a"]
        .matmul(&ours["b"])
        .unwrap()
        .to_vec2::<f32>()
        .unwrap();
    let want = theirs["a"]
        .matmul(&theirs["b"])
        .unwrap()
        .to_vec2::<f32>()
        .unwrap();
    assert_eq!(got, want);
    assert!(got.iter().flatten().any(|&x| x != 0.0));
}

#[test]
fn var_builder_gets_candles_tensors_and_checks_shapes() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("model.safetensors");
    write_file(&path, &candle_fixture(10), 0);
    let theirs = candle_core::safetensors::load(&path, &Device::Cpu).unwrap();
    let vb = tensorstream::candle::var_builder(&[&path], DType::F32, &Device::Cpu).unwrap();
    // SAFETY: the fixture is not modified while mapped.
    let mm = unsafe {
        candle_nn::VarBuilder::from_mmaped_safetensors(&[&path], DType::F32, &Device::Cpu)
    }
    .unwrap();
    for name in ["t.8.f32", "t.6.bf16", "t.7.f16", "t.5.i64", "t.2.u32"] {
        let shape = theirs[name].shape().clone();
        let got = vb.get(shape.clone(), name).unwrap();
        let want = mm.get(shape, name).unwrap();
        assert_eq!(got.dtype(), DType::F32, "{name}");
        assert!(same_floats(&got, &want), "{name}");
    }
    let pp = vb.pp("t");
    assert!(pp.contains_tensor("8.f32"));
    assert!(!pp.contains_tensor("8"));
    let e = vb.get((12, 15), "t.8.f32").unwrap_err().to_string();
    assert!(e.contains("tensor 't.8.f32'"), "{e}");
    assert!(e.contains("[15, 12]") && e.contains("[12, 15]"), "{e}");
    assert!(e.contains("model.safetensors"), "{e}");
    assert!(vb.get((1,), "missing").is_err());
    let raw = vb.get_unchecked_dtype("t.0.u8", DType::U8).unwrap();
    assert_eq!(bytes_of(&raw), bytes_of(&theirs["t.0.u8"]));
}

#[test]
fn var_builder_of_several_paths_refuses_a_name_twice() {
    let dir = tempfile::tempdir().unwrap();
    let mut r = rng(11);
    let (p1, p2) = (
        dir.path().join("a.safetensors"),
        dir.path().join("b.safetensors"),
    );
    write_file(&p1, &[Spec::random("x", Dtype::F16, &[4], &mut r)], 0);
    write_file(&p2, &[Spec::random("y", Dtype::F16, &[4], &mut r)], 0);
    let vb = tensorstream::candle::var_builder(&[&p1, &p2], DType::F16, &Device::Cpu).unwrap();
    assert!(vb.contains_tensor("x") && vb.contains_tensor("y"));
    let Err(e) = tensorstream::candle::var_builder(&[&p1, &p1], DType::F16, &Device::Cpu) else {
        panic!("a name twice was accepted")
    };
    assert!(e.to_string().contains("'x'"), "{e}");
}

#[test]
fn var_builder_with_tensor_parallel_rules_builds_a_ranks_shard() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("model.safetensors");
    let mut r = rng(12);
    let specs = vec![
        Spec::random("mlp.up.weight", Dtype::BF16, &[32, 8], &mut r),
        Spec::random("mlp.down.weight", Dtype::BF16, &[8, 32], &mut r),
    ];
    write_file(&path, &specs, 0);
    let theirs = candle_core::safetensors::load(&path, &Device::Cpu).unwrap();
    let part = Slice::Part { rank: 1, world: 2 };
    let loader = Loader::new()
        .rows("*.up.weight", part)
        .columns("*.down.weight", part);
    let vb = tensorstream::candle::var_builder_with(&loader, &[&path], DType::BF16, &Device::Cpu)
        .unwrap();
    let up = vb.get((16, 8), "mlp.up.weight").unwrap();
    let down = vb.get((8, 16), "mlp.down.weight").unwrap();
    let want_up = theirs["mlp.up.weight"].narrow(0, 16, 16).unwrap();
    let want_down = theirs["mlp.down.weight"].narrow(1, 16, 16).unwrap();
    assert_eq!(bytes_of(&up), bytes_of(&want_up));
    assert_eq!(bytes_of(&down), bytes_of(&want_down));
    let e = vb.get((32, 8), "mlp.up.weight").unwrap_err().to_string();
    assert!(e.contains("[16, 8]") && e.contains("[32, 8]"), "{e}");
}

#[test]
fn empty_checkpoint_gives_no_tensors() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("model.safetensors");
    write_file(&path, &[], 0);
    let ours = tensorstream::candle::load(&path, &Device::Cpu, None).unwrap();
    assert!(ours.is_empty());
    assert_eq!(
        candle_core::safetensors::load(&path, &Device::Cpu)
            .unwrap()
            .len(),
        0
    );
}

#[test]
fn bad_input_is_an_error_naming_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("model.safetensors");
    let bytes = write_file(
        &path,
        &[Spec::random("w", Dtype::F32, &[64], &mut rng(13))],
        0,
    );
    let glob = Loader::new().only("nothing*").io(IoBackend::Pread);
    let e = tensorstream::candle::load_with(&glob, &path, &Device::Cpu, None).unwrap_err();
    assert!(e.to_string().contains("nothing*"), "{e}");
    std::fs::write(&path, &bytes[..bytes.len() - 3]).unwrap();
    let e = tensorstream::candle::load(&path, &Device::Cpu, None).unwrap_err();
    assert!(e.to_string().contains("model.safetensors"), "{e}");
    let missing = tensorstream::candle::load(dir.path().join("nope"), &Device::Cpu, None);
    assert!(missing.is_err());
}

#[allow(dead_code)]
#[path = "../examples/candle_bert.rs"]
mod bert;

/// all-MiniLM-L6-v2, fetched by scripts/fetch-minilm.sh (CI runs it first).
fn minilm() -> Option<std::path::PathBuf> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("target/minilm");
    if dir.join("model.safetensors").exists() {
        Some(dir)
    } else if std::env::var_os("CI").is_some() {
        panic!("{} is absent: CI runs .ci/candle.sh first", dir.display())
    } else {
        eprintln!(
            "skipping: {} is absent (run scripts/fetch-minilm.sh)",
            dir.display()
        );
        None
    }
}

#[test]
fn bert_weights_and_embedding_equal_candles_own_loading() {
    let Some(dir) = minilm() else { return };
    let weights = dir.join("model.safetensors");
    let ours = tensorstream::candle::load(&weights, &Device::Cpu, None).unwrap();
    let theirs = candle_core::safetensors::load(&weights, &Device::Cpu).unwrap();
    assert_eq!(ours.len(), 105 - 1, "every tensor of the checkpoint");
    assert_same(&ours, &theirs);

    let e = bert::embeddings(&dir, &Device::Cpu, bert::SENTENCE).unwrap();
    assert_eq!(e.ours.len(), 384);
    assert!(e.tokens > 5, "{} tokens", e.tokens);
    assert!(bert::same_bits(&e.ours, &e.theirs), "embeddings differ");
    let norm: f32 = e.ours.iter().map(|x| x * x).sum::<f32>().sqrt();
    assert!((norm - 1.0).abs() < 1e-4, "norm {norm}");
    assert!(e.ours.iter().all(|x| x.is_finite()) && e.ours.iter().any(|&x| x != 0.0));
}

/// On a GPU (a build with TENSORSTREAM_CANDLE_CUDA=1): the same tensors as candle's
/// own loading onto the device, conversions, and a candle op queued at once.
#[cfg(tensorstream_candle_cuda)]
mod cuda {
    use super::*;

    fn gpu() -> Option<Device> {
        match Device::new_cuda(0) {
            Ok(d) => Some(d),
            Err(e) => {
                eprintln!("skipping: no CUDA device for candle: {e}");
                None
            }
        }
    }

    fn on_cpu(ts: &HashMap<String, Tensor>) -> HashMap<String, Tensor> {
        ts.iter()
            .map(|(n, t)| {
                assert!(t.device().is_cuda(), "{n} is not on the GPU");
                (n.clone(), t.to_device(&Device::Cpu).unwrap())
            })
            .collect()
    }

    #[test]
    fn every_candle_dtype_on_cuda_equals_candle_load() {
        let Some(gpu) = gpu() else { return };
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("model.safetensors");
        // Raw F4/F6/F8_E8M0 tensors do not copy back to the host in candle: left out.
        let specs: Vec<Spec> = candle_fixture(21)
            .into_iter()
            .filter(|s| {
                !matches!(
                    s.dtype,
                    Dtype::F4 | Dtype::F6_E2M3 | Dtype::F6_E3M2 | Dtype::F8_E8M0
                )
            })
            .collect();
        write_file(&path, &specs, 0);
        let theirs = candle_core::safetensors::load(&path, &gpu).unwrap();
        let ours = tensorstream::candle::load(&path, &gpu, None).unwrap();
        assert_same(&on_cpu(&ours), &on_cpu(&theirs));
    }

    #[test]
    fn conversions_on_cuda_equal_the_cpu_path() {
        let Some(gpu) = gpu() else { return };
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("model.safetensors");
        let mut r = rng(22);
        let specs: Vec<Spec> = [
            Dtype::F32,
            Dtype::F16,
            Dtype::BF16,
            Dtype::F8_E4M3,
            Dtype::F8_E5M2,
            Dtype::F8_E8M0,
        ]
        .iter()
        .enumerate()
        .map(|(i, &d)| Spec::random(format!("w{i}"), d, &[129, 65], &mut r))
        .collect();
        write_file(&path, &specs, 0);
        for target in [DType::F32, DType::F16, DType::BF16] {
            let cpu = tensorstream::candle::load(&path, &Device::Cpu, Some(target)).unwrap();
            let ours = tensorstream::candle::load(&path, &gpu, Some(target)).unwrap();
            assert_same(&on_cpu(&ours), &cpu);
        }
    }

    #[test]
    fn a_candle_op_queued_at_once_sees_the_loaded_values() {
        let Some(gpu) = gpu() else { return };
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("model.safetensors");
        let a: Vec<f32> = (0..4096 * 256)
            .map(|i| ((i * 37 % 101) as f32) - 50.0)
            .collect();
        let spec = Spec {
            name: "a".into(),
            dtype: Dtype::F32,
            shape: vec![4096, 256],
            data: bytemuck::cast_slice(&a).to_vec(),
        };
        write_file(&path, &[spec], 0);
        let want = Tensor::from_vec(a, (4096, 256), &Device::Cpu).unwrap();
        let want = want.sum_keepdim(1).unwrap().to_vec2::<f32>().unwrap();
        for _ in 0..5 {
            let ours = tensorstream::candle::load(&path, &gpu, None).unwrap();
            let got = ours["a"].sum_keepdim(1).unwrap().to_vec2::<f32>().unwrap();
            assert_eq!(got, want);
        }
    }

    #[test]
    fn shards_slices_and_the_var_builder_on_cuda_equal_the_cpu_path() {
        let Some(gpu) = gpu() else { return };
        let dir = tempfile::tempdir().unwrap();
        let mut r = rng(23);
        let a: Vec<Spec> = (0..4)
            .map(|i| {
                Spec::random(
                    format!("l.{i}.q.weight"),
                    Dtype::BF16,
                    &[64, 24 + i],
                    &mut r,
                )
            })
            .collect();
        let b: Vec<Spec> = (0..3)
            .map(|i| Spec::random(format!("l.{i}.o.weight"), Dtype::F16, &[40, 64], &mut r))
            .collect();
        let (fa, fb) = ("m-00001.safetensors", "m-00002.safetensors");
        let index = write_two_shards(dir.path(), (fa, &a), (fb, &b), 33);
        for rank in 0..2 {
            let part = Slice::Part { rank, world: 2 };
            let loader = Loader::new()
                .rows("*.q.weight", part)
                .columns("*.o.weight", part);
            let cpu = tensorstream::candle::load_with(&loader, &index, &Device::Cpu, None).unwrap();
            let ours = tensorstream::candle::load_with(&loader, &index, &gpu, None).unwrap();
            assert_eq!(ours["l.0.q.weight"].dims(), [32, 24]);
            assert_same(&on_cpu(&ours), &cpu);
        }
        let cpu_vb =
            tensorstream::candle::var_builder(&[dir.path()], DType::F32, &Device::Cpu).unwrap();
        let vb = tensorstream::candle::var_builder(&[dir.path()], DType::F32, &gpu).unwrap();
        for (name, shape) in [("l.2.q.weight", (64, 26)), ("l.1.o.weight", (40, 64))] {
            let got = vb.get(shape, name).unwrap();
            assert!(got.device().is_cuda(), "{name}");
            let want = cpu_vb.get(shape, name).unwrap();
            assert!(
                same_floats(&got.to_device(&Device::Cpu).unwrap(), &want),
                "{name}"
            );
        }
        let e = vb.get((26, 64), "l.2.q.weight").unwrap_err().to_string();
        assert!(e.contains("[64, 26]") && e.contains("[26, 64]"), "{e}");
    }

    /// Many more chunks than staging slots: each slot is refilled while candle's
    /// stream may still be copying out of it.
    #[test]
    fn a_small_staging_ring_on_cuda_equals_candle_load() {
        let Some(gpu) = gpu() else { return };
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("model.safetensors");
        let mut r = rng(24);
        let specs = vec![
            Spec::random("big.f32", Dtype::F32, &[1024, 3001], &mut r),
            Spec::random("big.bf16", Dtype::BF16, &[2048, 1537], &mut r),
            Spec::random("small.i64", Dtype::I64, &[17, 3], &mut r),
        ];
        write_file(&path, &specs, 4091);
        let theirs = candle_core::safetensors::load(&path, &gpu).unwrap();
        let loader = Loader::new().chunk_size(1 << 16).staging_bytes(1 << 18);
        for dtype in [None, Some(DType::F16)] {
            let ours = tensorstream::candle::load_with(&loader, &path, &gpu, dtype).unwrap();
            match dtype {
                None => assert_same(&on_cpu(&ours), &on_cpu(&theirs)),
                Some(d) => {
                    let cpu = tensorstream::candle::load(&path, &Device::Cpu, Some(d)).unwrap();
                    assert_eq!(ours["big.f32"].dtype(), DType::F16);
                    assert_same(&on_cpu(&ours), &cpu);
                }
            }
        }
    }
}
