//! `convert` of PyTorch zip checkpoints written at test time by
//! tests/pytorch_fixtures.py (a fake `torch` module; no PyTorch needed): every byte
//! checked against the reference crate and the Loader, and hostile files refused.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;

mod common;
use common::{pytorch_fixture, unhex};
use tensorstream::internals::convert_pytorch;
use tensorstream::{Dtype, ErrorKind, Loader};

struct Expected {
    dtype: String,
    shape: Vec<usize>,
    bytes: Vec<u8>,
}

/// Writes the fixture `case` into `dir` and returns its path and expected tensors.
fn fixture(dir: &Path, case: &str) -> (PathBuf, BTreeMap<String, Expected>) {
    let path = dir.join(format!("{case}.bin"));
    let json = pytorch_fixture(case, &path);
    let mut want = BTreeMap::new();
    for (name, t) in json["tensors"].as_object().unwrap() {
        let shape = t["shape"].as_array().unwrap();
        want.insert(
            name.clone(),
            Expected {
                dtype: t["dtype"].as_str().unwrap().to_string(),
                shape: shape.iter().map(|d| d.as_u64().unwrap() as usize).collect(),
                bytes: unhex(t["hex"].as_str().unwrap()),
            },
        );
    }
    (path, want)
}

/// Checks the written file byte for byte: header through the reference crate, data
/// section as the expected tensors in name order, and the Loader's view.
fn check_output(file: &Path, want: &BTreeMap<String, Expected>) {
    let bytes = std::fs::read(file).unwrap();
    let n = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
    assert_eq!(n % 8, 0, "header padded to 8 bytes");
    let (_, meta) = safetensors::SafeTensors::read_metadata(&bytes).unwrap();
    let format = meta
        .metadata()
        .as_ref()
        .and_then(|m| m.get("format").cloned());
    assert_eq!(format.as_deref(), Some("pt"));
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    assert_eq!(st.len(), want.len());
    let mut data = Vec::new();
    for (name, w) in want {
        let v = st.tensor(name).unwrap();
        assert_eq!(format!("{:?}", v.dtype()), w.dtype, "{name}");
        assert_eq!(v.shape(), &w.shape[..], "{name}");
        assert_eq!(v.data(), &w.bytes[..], "{name}");
        data.extend_from_slice(&w.bytes);
    }
    assert_eq!(&bytes[8 + n..], &data[..], "data section in name order");
    let model = Loader::new().load(file).unwrap();
    for (name, w) in want {
        let t = model.get(name).unwrap();
        assert_eq!(t.dtype.name(), w.dtype, "{name}");
        assert_eq!(t.host_bytes().unwrap(), &w.bytes[..], "{name}");
    }
}

#[test]
fn every_dtype_view_and_tied_weight_round_trips() {
    let dir = tempfile::tempdir().unwrap();
    let (input, want) = fixture(dir.path(), "basic");
    assert!(want["transposed"].bytes.len() == 60 && want.contains_key("fp8"));
    let out = dir.path().join("out");
    let r = convert_pytorch(&input, &out, None, u64::MAX).unwrap();
    assert_eq!(r.tensors, want.len());
    assert!(r.skipped.is_empty(), "{:?}", r.skipped);
    check_output(&out.join("model.safetensors"), &want);
    // Tied weights are two copies of the same bytes.
    assert_eq!(want["embed.weight"].bytes, want["lm_head.weight"].bytes);
}

#[test]
fn zip64_archive_converts() {
    let dir = tempfile::tempdir().unwrap();
    let (input, want) = fixture(dir.path(), "zip64");
    let raw = std::fs::read(&input).unwrap();
    assert!(
        raw.windows(4).any(|w| w == b"PK\x06\x06"),
        "fixture uses Zip64"
    );
    let out = dir.path().join("out");
    convert_pytorch(&input, &out, None, u64::MAX).unwrap();
    check_output(&out.join("model.safetensors"), &want);
}

#[test]
fn nested_state_dict_through_the_cli_lists_skipped_entries() {
    let dir = tempfile::tempdir().unwrap();
    let (input, want) = fixture(dir.path(), "nested");
    assert!(want.contains_key("encoder.w"));
    // A directory holding one .bin file.
    let src = dir.path().join("ckpt");
    std::fs::create_dir(&src).unwrap();
    std::fs::rename(&input, src.join("weights.bin")).unwrap();
    let out = dir.path().join("out");
    let o = Command::new(env!("CARGO_BIN_EXE_tensorstream"))
        .args(["convert", "-v"])
        .arg(&src)
        .arg(&out)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&o.stdout);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    for s in ["epoch (int)", "optimizer (dict)", "step (int)"] {
        assert!(stdout.contains(&format!("skipped: {s}")), "{stdout}");
    }
    check_output(&out.join("model.safetensors"), &want);
}

#[test]
fn dtype_option_converts_floats_only() {
    let dir = tempfile::tempdir().unwrap();
    let (input, want) = fixture(dir.path(), "basic");
    let out = dir.path().join("out");
    convert_pytorch(&input, &out, Some(Dtype::BF16), u64::MAX).unwrap();
    let bytes = std::fs::read(out.join("model.safetensors")).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let w = st.tensor("embed.weight").unwrap();
    assert_eq!(w.dtype(), safetensors::Dtype::BF16);
    let mut conv = vec![0u8; 48];
    tensorstream::convert::convert_into(
        Dtype::F32,
        Dtype::BF16,
        &want["embed.weight"].bytes,
        &mut conv,
    )
    .unwrap();
    assert_eq!(w.data(), &conv[..]);
    let i = st.tensor("i32").unwrap();
    assert_eq!(i.dtype(), safetensors::Dtype::I32);
    assert_eq!(i.data(), &want["i32"].bytes[..]);
}

/// Converts a hostile fixture: an error naming the file (and `names`), nothing written.
fn refused(case: &str, names: &[&str]) -> tensorstream::Error {
    let dir = tempfile::tempdir().unwrap();
    let (input, _) = fixture(dir.path(), case);
    let out = dir.path().join("out");
    let e = convert_pytorch(&input, &out, None, u64::MAX).unwrap_err();
    let msg = e.to_string();
    assert!(msg.contains(&input.display().to_string()), "{msg}");
    for n in names {
        assert!(msg.contains(n), "{case}: {msg}");
    }
    assert!(!out.join("model.safetensors").exists());
    // The CLI: exit 1, the same message, no panic.
    let o = Command::new(env!("CARGO_BIN_EXE_tensorstream"))
        .arg("convert")
        .arg(&input)
        .arg(&out)
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(1), "{case}");
    assert!(String::from_utf8_lossy(&o.stderr).contains(names.first().unwrap_or(&"")));
    e
}

#[test]
fn os_system_global_is_refused_and_nothing_runs() {
    refused("os_system", &["refused global posix.system", "data.pkl"]);
    // The fixture's payload would have created `<file>.pwned`.
    let dir = tempfile::tempdir().unwrap();
    let (input, _) = fixture(dir.path(), "os_system");
    let _ = convert_pytorch(&input, &dir.path().join("out"), None, u64::MAX);
    assert!(!dir.path().join("os_system.bin.pwned").exists());
}

#[test]
fn storage_offset_past_the_storage_is_refused() {
    let e = refused("offset_past", &["tensor 'bad'", "storage 30"]);
    assert_eq!(e.kind(), ErrorKind::InvalidTensor);
    assert_eq!(e.tensor(), Some("bad"));
}

#[test]
fn huge_size_is_refused() {
    refused("huge_size", &["tensor 'bad'", "overflows"]);
}

#[test]
fn missing_storage_entry_is_refused() {
    refused("missing_entry", &["tensor 'bad'", "data/40"]);
}

#[test]
fn truncated_zip_is_refused() {
    refused("truncated", &["truncated"]);
}

#[test]
fn deflated_entries_are_refused() {
    refused("deflated", &["archive/data/0", "compressed"]);
}

#[test]
fn big_endian_byteorder_is_refused() {
    refused("big_endian", &["little-endian"]);
}

#[test]
fn legacy_format_is_refused_with_its_name() {
    refused("legacy", &["legacy (pre-1.6"]);
}

#[test]
fn every_truncation_and_byte_flip_is_an_error_not_a_panic() {
    let dir = tempfile::tempdir().unwrap();
    let (input, _) = fixture(dir.path(), "basic");
    let good = std::fs::read(&input).unwrap();
    let bad = dir.path().join("bad.bin");
    let out = dir.path().join("out");
    let mut rng_state = 0x2545_f491_4f6c_dd1du64;
    for i in 0..400 {
        let mut b = good.clone();
        if i % 4 == 0 {
            b.truncate(i * good.len() / 400);
        } else {
            for _ in 0..1 + i % 3 {
                rng_state ^= rng_state << 13;
                rng_state ^= rng_state >> 7;
                rng_state ^= rng_state << 17;
                let at = (rng_state % b.len() as u64) as usize;
                b[at] = (rng_state >> 32) as u8;
            }
        }
        std::fs::write(&bad, &b).unwrap();
        let _ = convert_pytorch(&bad, &out, None, u64::MAX);
    }
}

#[test]
fn two_shard_input_converts_to_one_file() {
    let dir = tempfile::tempdir().unwrap();
    let (input, want) = fixture(dir.path(), "sharded");
    assert!(input.join("pytorch_model-00002-of-00002.bin").is_file());
    let out = dir.path().join("out");
    // The directory, and the index named directly.
    let r = convert_pytorch(&input, &out, None, u64::MAX).unwrap();
    assert_eq!(r.tensors, want.len());
    assert_eq!(r.files, vec![out.join("model.safetensors")]);
    check_output(&out.join("model.safetensors"), &want);
    let out2 = dir.path().join("out2");
    let index = input.join("pytorch_model.bin.index.json");
    convert_pytorch(&index, &out2, None, u64::MAX).unwrap();
    assert_eq!(
        std::fs::read(out.join("model.safetensors")).unwrap(),
        std::fs::read(out2.join("model.safetensors")).unwrap()
    );
}

#[test]
fn tiny_max_shard_size_writes_shards_and_an_index() {
    let dir = tempfile::tempdir().unwrap();
    let (input, want) = fixture(dir.path(), "sharded");
    let out = dir.path().join("out");
    let o = Command::new(env!("CARGO_BIN_EXE_tensorstream"))
        .args(["convert", "--max-shard-size", "40"])
        .arg(&input)
        .arg(&out)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    // Expected grouping: name order, at most 40 bytes, a bigger tensor alone.
    let mut groups: Vec<Vec<&String>> = vec![vec![]];
    let mut cur = 0;
    for (name, w) in &want {
        let last = groups.last_mut().unwrap();
        if !last.is_empty() && cur + w.bytes.len() > 40 {
            groups.push(vec![name]);
            cur = w.bytes.len();
        } else {
            last.push(name);
            cur += w.bytes.len();
        }
    }
    let n = groups.len();
    assert!(n > 3, "{n} shards");
    let mut entries: Vec<String> = std::fs::read_dir(&out)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    entries.sort();
    let mut names: Vec<String> = (1..=n)
        .map(|i| format!("model-{i:05}-of-{n:05}.safetensors"))
        .collect();
    names.push("model.safetensors.index.json".into());
    assert_eq!(entries, names, "no temporary files left");
    let index: serde_json::Value =
        serde_json::from_slice(&std::fs::read(out.join("model.safetensors.index.json")).unwrap())
            .unwrap();
    let total: usize = want.values().map(|w| w.bytes.len()).sum();
    assert_eq!(index["metadata"]["total_size"], total as u64);
    let map = index["weight_map"].as_object().unwrap();
    assert_eq!(map.len(), want.len());
    for (i, g) in groups.iter().enumerate() {
        let file = &names[i];
        let bytes = std::fs::read(out.join(file)).unwrap();
        let (_, meta) = safetensors::SafeTensors::read_metadata(&bytes).unwrap();
        let format = meta
            .metadata()
            .as_ref()
            .and_then(|m| m.get("format").cloned());
        assert_eq!(format.as_deref(), Some("pt"), "{file}");
        let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
        assert_eq!(st.len(), g.len(), "{file}");
        for name in g {
            assert_eq!(map[name.as_str()], file.as_str(), "{name}");
            let v = st.tensor(name).unwrap();
            let w = &want[name.as_str()];
            assert_eq!(format!("{:?}", v.dtype()), w.dtype, "{name}");
            assert_eq!(v.shape(), &w.shape[..], "{name}");
            assert_eq!(v.data(), &w.bytes[..], "{name}");
        }
    }
    // tensorstream's own loader reads the set through its index.
    let model = Loader::new().load(&out).unwrap();
    assert_eq!(model.len(), want.len());
    for (name, w) in &want {
        let t = model.get(name).unwrap();
        assert_eq!(t.dtype.name(), w.dtype, "{name}");
        let shape: Vec<usize> = t.shape.iter().map(|&d| d as usize).collect();
        assert_eq!(shape, w.shape, "{name}");
        assert_eq!(t.host_bytes().unwrap(), &w.bytes[..], "{name}");
    }
}

/// Converts a hostile sharded fixture (a directory): an error naming each of
/// `names`, exit 1 from the CLI, and no output left.
fn refused_sharded(case: &str, names: &[&str]) {
    let dir = tempfile::tempdir().unwrap();
    let (input, _) = fixture(dir.path(), case);
    let out = dir.path().join("out");
    let msg = convert_pytorch(&input, &out, None, 100)
        .unwrap_err()
        .to_string();
    for n in names {
        assert!(msg.contains(n), "{case}: {msg}");
    }
    let o = Command::new(env!("CARGO_BIN_EXE_tensorstream"))
        .args(["convert", "--max-shard-size", "100"])
        .arg(&input)
        .arg(&out)
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(1), "{case}");
    let stderr = String::from_utf8_lossy(&o.stderr);
    for n in names {
        assert!(stderr.contains(n), "{case}: {stderr}");
    }
    let left = std::fs::read_dir(&out).map(|d| d.count()).unwrap_or(0);
    assert_eq!(left, 0, "{case}: output left behind");
}

#[test]
fn sharded_index_naming_a_parent_path_is_refused() {
    refused_sharded(
        "shard_escape",
        &["../x.bin", "pytorch_model.bin.index.json"],
    );
}

#[test]
fn tensor_in_the_map_but_missing_from_its_shard_is_refused() {
    refused_sharded(
        "shard_missing",
        &[
            "ghost.weight",
            "pytorch_model-00001-of-00002.bin",
            "does not hold it",
        ],
    );
}

#[test]
fn tensor_in_two_shards_is_refused() {
    refused_sharded(
        "shard_twice",
        &[
            "bf16",
            "pytorch_model-00002-of-00002.bin",
            "pytorch_model-00001-of-00002.bin",
        ],
    );
}

#[test]
fn converting_again_replaces_earlier_shards() {
    let dir = tempfile::tempdir().unwrap();
    let (input, want) = fixture(dir.path(), "sharded");
    let out = dir.path().join("out");
    let r = convert_pytorch(&input, &out, None, 40).unwrap();
    assert!(r.files.len() > 3);
    std::fs::write(out.join("notes.txt"), b"kept").unwrap();
    let r = convert_pytorch(&input, &out, None, u64::MAX).unwrap();
    assert_eq!(r.files, vec![out.join("model.safetensors")]);
    let mut left: Vec<String> = std::fs::read_dir(&out)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    left.sort();
    assert_eq!(left, ["model.safetensors", "notes.txt"]);
    check_output(&out.join("model.safetensors"), &want);
}
