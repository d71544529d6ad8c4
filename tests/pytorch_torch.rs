//! Checkpoints written by real `torch.save` (tests/data/pytorch, made by its
//! generate.py): `convert` and `load` give, byte for byte, the tensors that
//! `torch.load(weights_only=True)` gave the generator (recorded as SHA-256 digests).

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::Command;

use sha2::{Digest, Sha256};
use tensorstream::internals::convert_pytorch;
use tensorstream::{Checkpoint, Loader};

struct Want {
    dtype: String,
    shape: Vec<usize>,
    sha256: String,
    contiguous: bool,
}

fn data() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/pytorch")
}

/// Each fixture's path, its tensors and the top-level entries that are not tensors.
fn fixtures() -> Vec<(PathBuf, BTreeMap<String, Want>, Vec<String>)> {
    let json: serde_json::Value =
        serde_json::from_slice(&std::fs::read(data().join("digests.json")).unwrap()).unwrap();
    let files = json["files"].as_object().unwrap();
    assert!(files.len() >= 8, "{}", files.len());
    files
        .iter()
        .map(|(file, v)| {
            let tensors = v["tensors"]
                .as_object()
                .unwrap()
                .iter()
                .map(|(n, t)| {
                    let want = Want {
                        dtype: t["dtype"].as_str().unwrap().to_string(),
                        shape: t["shape"]
                            .as_array()
                            .unwrap()
                            .iter()
                            .map(|d| d.as_u64().unwrap() as usize)
                            .collect(),
                        sha256: t["sha256"].as_str().unwrap().to_string(),
                        contiguous: t["contiguous"].as_bool().unwrap(),
                    };
                    (n.clone(), want)
                })
                .collect();
            let skipped = v["skipped_top_level"]
                .as_array()
                .unwrap()
                .iter()
                .map(|s| s.as_str().unwrap().to_string())
                .collect();
            (data().join(file), tensors, skipped)
        })
        .collect()
}

fn sha(bytes: &[u8]) -> String {
    Sha256::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

#[test]
fn the_fixtures_cover_every_dtype_views_ties_nesting_and_parameters() {
    let all = fixtures();
    let dtypes: BTreeSet<&str> = all
        .iter()
        .flat_map(|f| f.1.values().map(|w| w.dtype.as_str()))
        .collect();
    for d in [
        "F64",
        "F32",
        "F16",
        "BF16",
        "I64",
        "I32",
        "I16",
        "I8",
        "U8",
        "U16",
        "U32",
        "U64",
        "BOOL",
        "C64",
        "F8_E4M3",
        "F8_E5M2",
        "F8_E4M3FNUZ",
        "F8_E5M2FNUZ",
        "F8_E8M0",
    ] {
        assert!(dtypes.contains(d), "no {d} fixture");
    }
    let strided = all
        .iter()
        .flat_map(|f| f.1.values())
        .filter(|w| !w.contiguous);
    assert!(strided.count() >= 5);
    let names: BTreeSet<String> = all
        .iter()
        .map(|f| f.0.file_name().unwrap().to_string_lossy().into_owned())
        .collect();
    for f in [
        "parameters.pth",
        "nested_state_dict.pt",
        "nested_model.pt",
        "tied.bin",
    ] {
        assert!(names.contains(f), "{names:?}");
    }
}

#[test]
fn convert_writes_the_bytes_torch_load_reads() {
    for (path, want, skipped) in fixtures() {
        let dir = tempfile::tempdir().unwrap();
        let r = convert_pytorch(&path, dir.path(), None, u64::MAX).unwrap();
        assert_eq!(r.tensors, want.len(), "{}", path.display());
        for s in &skipped {
            assert!(
                r.skipped.iter().any(|k| k.starts_with(&format!("{s} ("))),
                "{}: {s} not in {:?}",
                path.display(),
                r.skipped
            );
        }
        let bytes = std::fs::read(dir.path().join("model.safetensors")).unwrap();
        let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
        assert_eq!(st.len(), want.len());
        for (name, w) in &want {
            let v = st.tensor(name).unwrap();
            let what = format!("{}: {name}", path.display());
            assert_eq!(format!("{:?}", v.dtype()), w.dtype, "{what}");
            assert_eq!(v.shape(), &w.shape[..], "{what}");
            assert_eq!(sha(v.data()), w.sha256, "{what}");
        }
    }
}

#[test]
fn load_reads_the_bytes_torch_load_reads_or_names_each_strided_view() {
    for (path, want, _) in fixtures() {
        let strided: BTreeSet<&str> = want
            .iter()
            .filter(|(_, w)| !w.contiguous)
            .map(|(n, _)| n.as_str())
            .collect();
        let (ckpt, problems) = Checkpoint::open_all_problems(&path);
        if !strided.is_empty() {
            assert!(ckpt.is_none(), "{}", path.display());
            assert_eq!(problems.len(), strided.len(), "{problems:?}");
            for p in problems.iter().map(|p| p.to_string()) {
                assert!(p.contains("strided view") && p.contains("tensorstream convert"));
                assert!(strided.iter().any(|n| p.contains(&format!("'{n}'"))), "{p}");
            }
            continue;
        }
        assert!(problems.is_empty(), "{}: {problems:?}", path.display());
        let model = Loader::new().load_checkpoint(&ckpt.unwrap()).unwrap();
        assert_eq!(model.len(), want.len());
        for (name, w) in &want {
            let t = model.get(name).unwrap();
            let what = format!("{}: {name}", path.display());
            assert_eq!(t.dtype.name(), w.dtype, "{what}");
            let shape: Vec<usize> = t.shape.iter().map(|&d| d as usize).collect();
            assert_eq!(shape, w.shape, "{what}");
            assert_eq!(sha(t.host_bytes().unwrap()), w.sha256, "{what}");
        }
        // The command line's digests are the same SHA-256s.
        let o = Command::new(env!("CARGO_BIN_EXE_tensorstream"))
            .args(["load", "--digest"])
            .arg(&path)
            .output()
            .unwrap();
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        let text = String::from_utf8(o.stdout).unwrap();
        assert_eq!(text.lines().count(), want.len());
        for line in text.lines() {
            let v: serde_json::Value = serde_json::from_str(line).unwrap();
            let w = &want[v["name"].as_str().unwrap()];
            assert_eq!(v["sha256"], w.sha256.as_str(), "{line}");
        }
    }
}

#[test]
fn verify_names_what_is_not_a_tensor() {
    for (path, _, skipped) in fixtures() {
        let o = Command::new(env!("CARGO_BIN_EXE_tensorstream"))
            .arg("verify")
            .arg(&path)
            .output()
            .unwrap();
        let out = String::from_utf8_lossy(&o.stdout);
        for s in &skipped {
            assert!(out.contains(&format!("not a tensor: {s} (")), "{out}");
        }
        if skipped.is_empty() {
            assert!(
                out.starts_with("tensors only") || !o.status.success(),
                "{out}"
            );
        }
    }
}

#[test]
fn load_options_give_a_torch_file_the_digests_of_its_conversion() {
    for (path, want, _) in fixtures() {
        if want.values().any(|w| !w.contiguous) {
            continue;
        }
        let dir = tempfile::tempdir().unwrap();
        convert_pytorch(&path, dir.path(), None, u64::MAX).unwrap();
        let converted = dir.path().join("model.safetensors");
        for extra in [
            &["--dtype", "F32"][..],
            &["--dtype", "BF16", "--io", "direct"],
            &["--dtype", "F16", "--io", "buffered", "--chunk-size", "4K"],
        ] {
            let digests = |p: &Path| {
                let o = Command::new(env!("CARGO_BIN_EXE_tensorstream"))
                    .args(["load", "--digest"])
                    .arg(p)
                    .args(extra)
                    .output()
                    .unwrap();
                assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
                String::from_utf8(o.stdout).unwrap()
            };
            let a = digests(&path);
            assert_eq!(a.lines().count(), want.len());
            assert_eq!(a, digests(&converted), "{} {extra:?}", path.display());
        }
    }
}
