//! Helpers shared by the integration tests: fixtures written at test time with the
//! reference `safetensors` crate, filled with random bytes, and the reference's view
//! of them as the oracle.
#![allow(dead_code)]

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

use rand::rngs::StdRng;
use rand::{Rng, RngCore, SeedableRng};
use safetensors::tensor::TensorView;
use sha2::{Digest, Sha256};
use tensorstream::{Checkpoint, Dtype, ErrorKind, IoBackend, Loader, Model};

/// Every backend, in the order the tests try them.
pub const BACKENDS: [IoBackend; 5] = IoBackend::ALL;

/// The reference crate's dtypes, in the format's order (same as `Dtype::ALL`).
pub const REF_DTYPES: [safetensors::Dtype; 22] = [
    safetensors::Dtype::BOOL,
    safetensors::Dtype::F4,
    safetensors::Dtype::F6_E2M3,
    safetensors::Dtype::F6_E3M2,
    safetensors::Dtype::U8,
    safetensors::Dtype::I8,
    safetensors::Dtype::F8_E5M2,
    safetensors::Dtype::F8_E4M3,
    safetensors::Dtype::F8_E8M0,
    safetensors::Dtype::F8_E4M3FNUZ,
    safetensors::Dtype::F8_E5M2FNUZ,
    safetensors::Dtype::I16,
    safetensors::Dtype::U16,
    safetensors::Dtype::F16,
    safetensors::Dtype::BF16,
    safetensors::Dtype::I32,
    safetensors::Dtype::U32,
    safetensors::Dtype::F32,
    safetensors::Dtype::C64,
    safetensors::Dtype::F64,
    safetensors::Dtype::I64,
    safetensors::Dtype::U64,
];

/// Our dtype as the reference crate spells it.
pub fn to_ref(d: Dtype) -> safetensors::Dtype {
    let r = REF_DTYPES
        .iter()
        .copied()
        .find(|r| r.to_string() == d.name())
        .expect("every dtype exists in the reference");
    assert_eq!(r.bitsize() as u64, d.bits(), "{d}: bit widths disagree");
    r
}

/// The reference crate's dtype as ours.
pub fn from_ref(d: safetensors::Dtype) -> Dtype {
    d.to_string()
        .parse()
        .expect("every reference dtype is ours")
}

/// Bytes of `shape` elements of `dtype` (panics when not whole bytes).
pub fn byte_len(dtype: Dtype, shape: &[u64]) -> usize {
    let bits = shape.iter().product::<u64>() * dtype.bits();
    assert_eq!(bits % 8, 0, "{dtype} {shape:?} is not whole bytes");
    (bits / 8) as usize
}

/// Makes `shape` hold a whole number of bytes of `dtype` (sub-byte types need an
/// even element count for F4 and a multiple of four for F6).
pub fn whole_bytes(dtype: Dtype, mut shape: Vec<u64>) -> Vec<u64> {
    let numel: u64 = shape.iter().product();
    let bits = dtype.bits();
    if (numel * bits).is_multiple_of(8) {
        return shape;
    }
    // Smallest k with k * numel * bits ≡ 0 (mod 8): numel > 0 here.
    let k = (1..=8)
        .find(|k| (k * numel * bits).is_multiple_of(8))
        .unwrap_or(8);
    match shape.first_mut() {
        Some(d) => *d *= k,
        None => shape.push(k),
    }
    shape
}

/// `n` random bytes from `rng`, never all zero.
pub fn random_bytes(rng: &mut impl RngCore, n: usize) -> Vec<u8> {
    let mut v = vec![0u8; n];
    rng.fill_bytes(&mut v);
    if !v.is_empty() && v.iter().all(|&b| b == 0) {
        v[0] = 0xA5;
    }
    v
}

/// One tensor of a fixture.
#[derive(Debug, Clone)]
pub struct Spec {
    pub name: String,
    pub dtype: Dtype,
    pub shape: Vec<u64>,
    pub data: Vec<u8>,
}

impl Spec {
    /// A tensor of random bytes.
    pub fn random(name: impl Into<String>, dtype: Dtype, shape: &[u64], rng: &mut StdRng) -> Spec {
        let shape = whole_bytes(dtype, shape.to_vec());
        let data = random_bytes(rng, byte_len(dtype, &shape));
        Spec {
            name: name.into(),
            dtype,
            shape,
            data,
        }
    }
}

pub fn rng(seed: u64) -> StdRng {
    StdRng::seed_from_u64(seed)
}

/// A random dtype among all 22.
pub fn random_dtype(rng: &mut StdRng) -> Dtype {
    Dtype::ALL[rng.gen_range(0..Dtype::ALL.len())]
}

/// The tensors as the reference crate's views.
fn views(tensors: &[Spec]) -> Vec<(String, TensorView<'_>)> {
    tensors
        .iter()
        .map(|t| {
            let shape = t.shape.iter().map(|&d| d as usize).collect();
            let v = TensorView::new(to_ref(t.dtype), shape, &t.data).expect("valid view");
            (t.name.clone(), v)
        })
        .collect()
}

/// The file bytes the reference crate writes for these tensors.
pub fn serialize(tensors: &[Spec], metadata: Option<HashMap<String, String>>) -> Vec<u8> {
    safetensors::serialize(views(tensors), metadata).expect("reference serializes")
}

/// Adds `extra` spaces of padding to the end of the header (and fixes its length),
/// so that headers of any length, aligned or not, can be produced from the
/// reference's output.
pub fn repad(bytes: &[u8], extra: usize) -> Vec<u8> {
    let n = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
    let mut out = Vec::with_capacity(bytes.len() + extra);
    out.extend_from_slice(&((n + extra) as u64).to_le_bytes());
    out.extend_from_slice(&bytes[8..8 + n]);
    out.resize(out.len() + extra, b' ');
    out.extend_from_slice(&bytes[8 + n..]);
    out
}

/// Writes a safetensors file of `tensors` through the reference crate, with `extra`
/// bytes of header padding beyond the reference's own.
pub fn write_file(path: &Path, tensors: &[Spec], extra: usize) -> Vec<u8> {
    let bytes = repad(&serialize(tensors, None), extra);
    std::fs::write(path, &bytes).expect("write fixture");
    bytes
}

/// Writes with `safetensors::serialize_to_file` (no extra padding).
pub fn write_file_ref(path: &Path, tensors: &[Spec], metadata: Option<HashMap<String, String>>) {
    safetensors::serialize_to_file(views(tensors), metadata, path).expect("reference writes");
}

/// A tensor as the reference crate reads it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RefTensor {
    pub dtype: Dtype,
    pub shape: Vec<u64>,
    pub data: Vec<u8>,
}

/// Every tensor of a file, as the reference crate reads it (the oracle).
pub fn reference_file(path: &Path) -> BTreeMap<String, RefTensor> {
    let bytes = std::fs::read(path).expect("read fixture");
    let st = safetensors::SafeTensors::deserialize(&bytes).expect("reference accepts the fixture");
    st.tensors()
        .into_iter()
        .map(|(name, v)| {
            (
                name,
                RefTensor {
                    dtype: from_ref(v.dtype()),
                    shape: v.shape().iter().map(|&d| d as u64).collect(),
                    data: v.data().to_vec(),
                },
            )
        })
        .collect()
}

/// Every tensor of several files, as the reference reads them.
pub fn reference_files<'a>(
    paths: impl IntoIterator<Item = &'a PathBuf>,
) -> BTreeMap<String, RefTensor> {
    let mut all = BTreeMap::new();
    for p in paths {
        for (k, v) in reference_file(p) {
            assert!(all.insert(k.clone(), v).is_none(), "fixture repeats {k}");
        }
    }
    all
}

/// A temporary directory on the disk that holds the target directory (not tmpfs), so
/// that O_DIRECT has a chance to work.
pub fn disk_tempdir() -> tempfile::TempDir {
    tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).expect("temp dir under CARGO_TARGET_TMPDIR")
}

/// Writes `model.safetensors.index.json` in `dir` with this weight map.
pub fn write_index<'a>(
    dir: &Path,
    weight_map: impl IntoIterator<Item = (&'a str, &'a str)>,
) -> PathBuf {
    let map: serde_json::Map<String, serde_json::Value> = weight_map
        .into_iter()
        .map(|(t, f)| (t.to_string(), serde_json::Value::String(f.to_string())))
        .collect();
    let body = serde_json::json!({"metadata": {"total_size": 0}, "weight_map": map});
    let p = dir.join("model.safetensors.index.json");
    std::fs::write(&p, body.to_string()).expect("write index");
    p
}

/// Whether `e` is this machine refusing what `backend` needs rather than a failure:
/// io_uring for `Direct` and `Buffered`, O_DIRECT for `Direct` and `PreadDirect`.
pub fn refused_here(backend: IoBackend, e: &tensorstream::Error) -> bool {
    e.kind() == ErrorKind::Unsupported
        && match backend {
            IoBackend::Direct | IoBackend::Buffered => true,
            IoBackend::PreadDirect => e.to_string().contains("O_DIRECT"),
            _ => false,
        }
}

/// Loads with `loader` through `backend`; `None` (with the reason printed) when
/// io_uring or O_DIRECT, which the backend needs, is refused here.
pub fn load_or_skip(loader: &Loader, backend: IoBackend, ckpt: &Checkpoint) -> Option<Model> {
    match loader.clone().io(backend).load_checkpoint(ckpt) {
        Ok(m) => Some(m),
        Err(e) if refused_here(backend, &e) => {
            eprintln!("skipping backend {backend:?}: {e}");
            None
        }
        Err(e) => panic!("load through {backend:?} failed: {e}"),
    }
}

/// Lowercase hex SHA-256.
pub fn sha256_hex(bytes: &[u8]) -> String {
    Sha256::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// Bytes of a hex string (the fixture writers' JSON).
pub fn unhex(s: &str) -> Vec<u8> {
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
        .collect()
}

/// Writes PyTorch fixture `case` to `path` with tests/pytorch_fixtures.py (laid out as
/// `torch.save` lays it out, no PyTorch needed) and returns the JSON it writes beside
/// it (`PATH.json`: every tensor's dtype, shape and bytes, and the skipped entries).
pub fn pytorch_fixture(case: &str, path: &Path) -> serde_json::Value {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/pytorch_fixtures.py");
    let st = std::process::Command::new("python3")
        .arg(&script)
        .arg(case)
        .arg(path)
        .status()
        .expect("python3 is needed for these tests");
    assert!(st.success(), "pytorch_fixtures.py {case} failed");
    let mut json = path.as_os_str().to_owned();
    json.push(".json");
    serde_json::from_slice(&std::fs::read(json).unwrap()).unwrap()
}
