//! Sharded checkpoints: a directory of shards, an index named directly or found in
//! its directory, and the clear errors for inconsistent ones.

mod common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use common::{reference_files, rng, write_file_ref, write_index, Spec};
use tensorstream::{Checkpoint, Dtype, ErrorKind};

/// Name, dtype and shape of a fixture tensor.
type TensorDesc<'a> = (&'a str, Dtype, &'a [u64]);

/// Three shards of random tensors in `dir`; returns (file name, tensor names) per shard.
fn three_shards(dir: &Path, seed: u64) -> Vec<(String, Vec<String>)> {
    let mut r = rng(seed);
    let layout: [(&str, &[TensorDesc]); 3] = [
        (
            "model-00001-of-00003.safetensors",
            &[
                ("embed.weight", Dtype::BF16, &[17, 8]),
                ("layers.0.attn.q.weight", Dtype::F16, &[8, 8]),
            ],
        ),
        (
            "model-00002-of-00003.safetensors",
            &[
                ("layers.0.mlp.up.weight", Dtype::F32, &[8, 5]),
                ("layers.0.norm.weight", Dtype::F8_E4M3, &[7]),
                ("layers.0.scale", Dtype::I64, &[]),
            ],
        ),
        (
            "model-00003-of-00003.safetensors",
            &[
                ("lm_head.weight", Dtype::BF16, &[17, 8]),
                ("packed", Dtype::F4, &[6]),
            ],
        ),
    ];
    layout
        .iter()
        .map(|(file, tensors)| {
            let specs: Vec<Spec> = tensors
                .iter()
                .map(|(n, d, s)| Spec::random(*n, *d, s, &mut r))
                .collect();
            write_file_ref(&dir.join(file), &specs, None);
            (
                file.to_string(),
                specs.iter().map(|s| s.name.clone()).collect(),
            )
        })
        .collect()
}

fn index_for(dir: &Path, shards: &[(String, Vec<String>)]) -> PathBuf {
    write_index(
        dir,
        shards
            .iter()
            .flat_map(|(f, ts)| ts.iter().map(move |t| (t.as_str(), f.as_str()))),
    )
}

/// Name → (shard file name, dtype, shape, len) as the checkpoint describes it.
fn described(c: &Checkpoint) -> BTreeMap<String, (String, Dtype, Vec<u64>, u64)> {
    c.tensors()
        .map(|t| {
            let file = c.shards[t.shard]
                .path
                .file_name()
                .unwrap()
                .to_string_lossy()
                .into_owned();
            (
                t.info.name.clone(),
                (file, t.info.dtype, t.info.shape.clone(), t.info.len()),
            )
        })
        .collect()
}

fn assert_matches_reference(c: &Checkpoint, shards: &[(String, Vec<String>)], dir: &Path) {
    let paths: Vec<PathBuf> = shards.iter().map(|(f, _)| dir.join(f)).collect();
    let reference = reference_files(&paths);
    let ours = described(c);
    assert_eq!(ours.len(), reference.len());
    assert_eq!(c.tensor_count(), reference.len());
    for (name, r) in &reference {
        let (file, dtype, shape, len) = &ours[name];
        let expected_file = &shards.iter().find(|(_, ts)| ts.contains(name)).unwrap().0;
        assert_eq!(file, expected_file, "{name}");
        assert_eq!(*dtype, r.dtype, "{name}");
        assert_eq!(shape, &r.shape, "{name}");
        assert_eq!(*len as usize, r.data.len(), "{name}");
    }
    let total: usize = reference.values().map(|r| r.data.len()).sum();
    assert_eq!(c.total_bytes(), total as u64);
    // Shards in file-name order.
    let names: Vec<_> = c
        .shards
        .iter()
        .map(|h| h.path.file_name().unwrap().to_owned())
        .collect();
    let mut sorted = names.clone();
    sorted.sort();
    assert_eq!(names, sorted);
}

fn err_text(path: &Path) -> String {
    match Checkpoint::open(path) {
        Ok(_) => panic!("{} opened, but it is invalid", path.display()),
        Err(e) => e.to_string(),
    }
}

#[test]
fn directory_of_shards_without_index() {
    let dir = tempfile::tempdir().unwrap();
    let shards = three_shards(dir.path(), 1);
    let c = Checkpoint::open(dir.path()).unwrap();
    assert!(c.index.is_none());
    assert_eq!(c.shards.len(), 3);
    assert_matches_reference(&c, &shards, dir.path());
}

#[test]
fn index_named_directly_and_found_in_its_directory_agree() {
    let dir = tempfile::tempdir().unwrap();
    let shards = three_shards(dir.path(), 2);
    let index = index_for(dir.path(), &shards);
    let by_file = Checkpoint::open(&index).unwrap();
    let by_dir = Checkpoint::open(dir.path()).unwrap();
    for c in [&by_file, &by_dir] {
        assert_eq!(c.index.as_deref(), Some(index.as_path()));
        assert_eq!(c.index_metadata, Some(serde_json::json!({"total_size": 0})));
        assert_matches_reference(c, &shards, dir.path());
    }
    assert_eq!(described(&by_file), described(&by_dir));
}

#[test]
fn single_file_checkpoint() {
    let dir = tempfile::tempdir().unwrap();
    let shards = three_shards(dir.path(), 3);
    let file = dir.path().join(&shards[1].0);
    let c = Checkpoint::open(&file).unwrap();
    assert_eq!(c.shards.len(), 1);
    assert!(c.index.is_none());
    assert_matches_reference(&c, &shards[1..2], dir.path());
}

#[test]
fn tensor_in_two_shards_is_an_error_naming_both() {
    let dir = tempfile::tempdir().unwrap();
    let mut r = rng(4);
    write_file_ref(
        &dir.path().join("a.safetensors"),
        &[
            Spec::random("shared.weight", Dtype::F16, &[4], &mut r),
            Spec::random("x", Dtype::U8, &[3], &mut r),
        ],
        None,
    );
    write_file_ref(
        &dir.path().join("b.safetensors"),
        &[Spec::random("shared.weight", Dtype::F16, &[4], &mut r)],
        None,
    );
    let e = Checkpoint::open(dir.path()).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::InvalidCheckpoint);
    let text = e.to_string();
    assert!(
        text.contains("tensor 'shared.weight' is in two shards: a.safetensors and b.safetensors"),
        "{text}"
    );
    // The same with an index that lists it once.
    write_index(
        dir.path(),
        [
            ("shared.weight", "a.safetensors"),
            ("x", "a.safetensors"),
            ("y", "b.safetensors"),
        ],
    );
    let text = err_text(dir.path());
    assert!(text.contains("'shared.weight' is in two shards"), "{text}");
}

#[test]
fn shard_named_by_the_index_missing() {
    let dir = tempfile::tempdir().unwrap();
    let shards = three_shards(dir.path(), 5);
    let index = index_for(dir.path(), &shards);
    std::fs::remove_file(dir.path().join(&shards[2].0)).unwrap();
    for path in [index.as_path(), dir.path()] {
        let e = Checkpoint::open(path).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::InvalidCheckpoint);
        assert_eq!(e.path(), Some(index.as_path()));
        let text = e.to_string();
        assert!(text.contains("model-00003-of-00003.safetensors"), "{text}");
        assert!(text.contains("is missing"), "{text}");
        assert!(
            text.contains("'lm_head.weight'") || text.contains("'packed'"),
            "{text}"
        );
    }
}

#[test]
fn index_entry_pointing_at_a_shard_without_the_tensor() {
    let dir = tempfile::tempdir().unwrap();
    let shards = three_shards(dir.path(), 6);
    // lm_head.weight lives in shard 3; the index claims shard 1.
    let entries: Vec<(String, String)> = shards
        .iter()
        .flat_map(|(f, ts)| {
            ts.iter().map(move |t| {
                let f = if t == "lm_head.weight" {
                    "model-00001-of-00003.safetensors"
                } else {
                    f
                };
                (t.clone(), f.to_string())
            })
        })
        .collect();
    let index = write_index(
        dir.path(),
        entries.iter().map(|(t, f)| (t.as_str(), f.as_str())),
    );
    let text = err_text(&index);
    assert!(
        text.contains(
            "weight_map puts tensor 'lm_head.weight' in model-00001-of-00003.safetensors, which has no such tensor"
        ),
        "{text}"
    );
    assert!(text.contains("model.safetensors.index.json"), "{text}");
}

#[test]
fn index_naming_a_tensor_no_shard_has() {
    let dir = tempfile::tempdir().unwrap();
    let shards = three_shards(dir.path(), 7);
    let mut entries: Vec<(String, String)> = shards
        .iter()
        .flat_map(|(f, ts)| ts.iter().map(move |t| (t.clone(), f.clone())))
        .collect();
    entries.push(("ghost.weight".into(), shards[0].0.clone()));
    let index = write_index(
        dir.path(),
        entries.iter().map(|(t, f)| (t.as_str(), f.as_str())),
    );
    let text = err_text(&index);
    assert!(
        text.contains("'ghost.weight'") && text.contains("no such tensor"),
        "{text}"
    );
}

#[test]
fn shard_tensor_missing_from_the_weight_map() {
    let dir = tempfile::tempdir().unwrap();
    let shards = three_shards(dir.path(), 8);
    let entries: Vec<(String, String)> = shards
        .iter()
        .flat_map(|(f, ts)| ts.iter().map(move |t| (t.clone(), f.clone())))
        .filter(|(t, _)| t != "layers.0.scale")
        .collect();
    let index = write_index(
        dir.path(),
        entries.iter().map(|(t, f)| (t.as_str(), f.as_str())),
    );
    let text = err_text(&index);
    assert!(
        text.contains("tensor 'layers.0.scale' of model-00002-of-00003.safetensors is not in the index's weight_map"),
        "{text}"
    );
}

#[test]
fn weight_map_paths_outside_the_directory_are_rejected() {
    let outer = tempfile::tempdir().unwrap();
    let dir = outer.path().join("ckpt");
    std::fs::create_dir(&dir).unwrap();
    let mut r = rng(9);
    // Real files exist at each target, so only the path rule can reject them.
    write_file_ref(
        &outer.path().join("x.safetensors"),
        &[Spec::random("w", Dtype::F32, &[3], &mut r)],
        None,
    );
    std::fs::create_dir(dir.join("sub")).unwrap();
    write_file_ref(
        &dir.join("sub").join("x.safetensors"),
        &[Spec::random("w", Dtype::F32, &[3], &mut r)],
        None,
    );
    let absolute = outer.path().join("x.safetensors");
    let absolute = absolute.to_str().unwrap();
    for target in ["../x.safetensors", absolute, "sub/x.safetensors", ".."] {
        let index = write_index(&dir, [("w", target)]);
        for path in [index.as_path(), dir.as_path()] {
            let e = Checkpoint::open(path).unwrap_err();
            assert_eq!(e.kind(), ErrorKind::InvalidCheckpoint, "{target}: {e}");
            let text = e.to_string();
            assert!(
                text.contains(&format!(
                    "names '{target}', which is not a plain file name beside the index"
                )),
                "{target}: {text}"
            );
            assert!(text.contains("tensor 'w'"), "{text}");
        }
    }
}

#[test]
fn directory_without_safetensors() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("README.md"), "not a model").unwrap();
    std::fs::write(dir.path().join("config.json"), "{}").unwrap();
    std::fs::create_dir(dir.path().join("model.safetensors")).unwrap(); // a directory, not a file
    let e = Checkpoint::open(dir.path()).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::InvalidCheckpoint);
    assert_eq!(e.path(), Some(dir.path()));
    assert!(
        e.to_string()
            .contains("directory holds no .safetensors files and no .safetensors.index.json"),
        "{e}"
    );
    // And a path that does not exist at all.
    let missing = dir.path().join("nope.safetensors");
    let e = Checkpoint::open(&missing).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Io);
    assert!(e.to_string().contains("nope.safetensors"), "{e}");
}

#[test]
fn two_index_files_in_one_directory_is_ambiguous() {
    let dir = tempfile::tempdir().unwrap();
    let shards = three_shards(dir.path(), 10);
    let index = index_for(dir.path(), &shards);
    std::fs::copy(&index, dir.path().join("other.safetensors.index.json")).unwrap();
    let text = err_text(dir.path());
    assert!(text.contains("2 index files"), "{text}");
    // Naming one of them works.
    assert!(Checkpoint::open(&index).is_ok());
}

#[test]
fn malformed_and_empty_index() {
    let dir = tempfile::tempdir().unwrap();
    let index = dir.path().join("model.safetensors.index.json");
    std::fs::write(&index, "{\"weight_map\": [").unwrap();
    let text = err_text(&index);
    assert!(text.contains("not a valid safetensors index"), "{text}");
    std::fs::write(&index, r#"{"metadata":{},"weight_map":{}}"#).unwrap();
    let text = err_text(&index);
    assert!(text.contains("weight_map is empty"), "{text}");
    std::fs::write(&index, r#"{"weight_map":{"a":1}}"#).unwrap();
    let text = err_text(&index);
    assert!(text.contains("not a valid safetensors index"), "{text}");
}

#[test]
fn bad_shard_error_names_the_shard_and_tensor() {
    let dir = tempfile::tempdir().unwrap();
    let shards = three_shards(dir.path(), 11);
    index_for(dir.path(), &shards);
    // Truncate the middle shard by one byte.
    let p = dir.path().join(&shards[1].0);
    let bytes = std::fs::read(&p).unwrap();
    std::fs::write(&p, &bytes[..bytes.len() - 1]).unwrap();
    let e = Checkpoint::open(dir.path()).unwrap_err();
    assert_eq!(e.path(), Some(p.as_path()));
    assert!(e.to_string().contains("truncated"), "{e}");
}

#[test]
fn open_all_problems_reports_every_problem() {
    let dir = tempfile::tempdir().unwrap();
    let mut r = rng(12);
    // a: valid, holds "dup" and "only_in_a".
    write_file_ref(
        &dir.path().join("a.safetensors"),
        &[
            Spec::random("dup", Dtype::F32, &[2], &mut r),
            Spec::random("only_in_a", Dtype::I8, &[5], &mut r),
        ],
        None,
    );
    // b: valid, also holds "dup".
    write_file_ref(
        &dir.path().join("b.safetensors"),
        &[Spec::random("dup", Dtype::F32, &[2], &mut r)],
        None,
    );
    // c: trailing bytes.
    write_file_ref(
        &dir.path().join("c.safetensors"),
        &[Spec::random("c", Dtype::U16, &[3], &mut r)],
        None,
    );
    let mut c = std::fs::read(dir.path().join("c.safetensors")).unwrap();
    c.extend_from_slice(&[9, 9, 9]);
    std::fs::write(dir.path().join("c.safetensors"), c).unwrap();
    // d: not a safetensors file at all.
    std::fs::write(dir.path().join("d.safetensors"), b"hello").unwrap();

    let (ckpt, problems) = Checkpoint::open_all_problems(dir.path());
    assert!(ckpt.is_none());
    let texts: Vec<String> = problems.iter().map(ToString::to_string).collect();
    assert_eq!(problems.len(), 3, "{texts:#?}");
    assert!(
        texts
            .iter()
            .any(|t| t.contains("'dup' is in two shards: a.safetensors and b.safetensors")),
        "{texts:#?}"
    );
    assert!(
        texts
            .iter()
            .any(|t| t.contains("c.safetensors") && t.contains("trailing bytes")),
        "{texts:#?}"
    );
    assert!(
        texts
            .iter()
            .any(|t| t.contains("d.safetensors") && t.contains("shorter than")),
        "{texts:#?}"
    );
    // open() reports the first of them.
    let first = Checkpoint::open(dir.path()).unwrap_err().to_string();
    assert!(texts.contains(&first), "{first}");

    // With an index that also misplaces and omits tensors: those problems add up.
    write_index(
        dir.path(),
        [
            ("dup", "a.safetensors"),
            ("only_in_a", "b.safetensors"),
            ("c", "c.safetensors"),
        ],
    );
    let (ckpt, problems) = Checkpoint::open_all_problems(dir.path());
    assert!(ckpt.is_none());
    let texts: Vec<String> = problems.iter().map(ToString::to_string).collect();
    assert!(
        texts.iter().any(|t| t.contains("'dup' is in two shards")),
        "{texts:#?}"
    );
    assert!(
        texts
            .iter()
            .any(|t| t.contains("c.safetensors") && t.contains("trailing bytes")),
        "{texts:#?}"
    );
    assert!(
        texts.iter().any(|t| t.contains(
            "weight_map puts tensor 'only_in_a' in b.safetensors, which has no such tensor"
        )),
        "{texts:#?}"
    );
    assert!(texts.len() >= 3, "{texts:#?}");
    // d.safetensors is not named by the index, so it is not read.
    assert!(
        !texts.iter().any(|t| t.contains("d.safetensors")),
        "{texts:#?}"
    );
}

#[test]
fn valid_checkpoint_has_no_problems() {
    let dir = tempfile::tempdir().unwrap();
    let shards = three_shards(dir.path(), 13);
    index_for(dir.path(), &shards);
    let (ckpt, problems) = Checkpoint::open_all_problems(dir.path());
    assert!(problems.is_empty(), "{problems:?}");
    assert_matches_reference(&ckpt.unwrap(), &shards, dir.path());
}
