//! `checkpoint::parse_index` on arbitrary bytes.
//!
//! Contract: any input gives `Ok` or `Err`, never a panic. On `Ok` every shard file
//! name is a plain file name beside the index (no `/`, not `.` or `..`, not empty, not
//! absolute), so joining it to the index's directory cannot leave that directory, and
//! the entries are exactly the input's `weight_map`, sorted by tensor name.
#![no_main]

use std::collections::BTreeMap;
use std::path::{Component, Path};

use libfuzzer_sys::fuzz_target;
use serde::de::IgnoredAny;
use serde::Deserialize;
use tensorstream::checkpoint::parse_index;

/// An index as the format describes it: `metadata` (anything), `weight_map` (tensor
/// name to file name), other fields ignored. Also written as a two-element array.
#[derive(Deserialize)]
struct Doc {
    #[serde(default)]
    #[allow(dead_code)]
    metadata: Option<IgnoredAny>,
    weight_map: BTreeMap<String, String>,
}

fuzz_target!(|data: &[u8]| {
    let dir = Path::new("/ckpt");
    let Ok(entries) = parse_index(&dir.join("model.safetensors.index.json"), data) else {
        return;
    };
    for (name, file) in &entries {
        assert!(
            !file.is_empty(),
            "tensor '{name}': empty file name accepted"
        );
        assert!(
            !file.contains('/'),
            "tensor '{name}': file name {file:?} has a '/'"
        );
        assert!(
            file != "." && file != "..",
            "tensor '{name}': file name {file:?}"
        );
        let p = Path::new(file);
        assert!(
            !p.is_absolute(),
            "tensor '{name}': absolute file name {file:?}"
        );
        let joined = dir.join(p);
        assert_eq!(
            joined.parent(),
            Some(dir),
            "tensor '{name}': {file:?} leaves the directory"
        );
        assert!(
            joined
                .components()
                .all(|c| !matches!(c, Component::ParentDir | Component::CurDir)),
            "tensor '{name}': {file:?}"
        );
    }
    assert!(
        entries.windows(2).all(|w| w[0].0 < w[1].0),
        "entries are not sorted by unique tensor name"
    );

    // The entries are the input's weight_map, read on its own (serde_json keeps the
    // last of duplicated keys, as the parser does; skipped values are not checked).
    let doc: Doc = serde_json::from_slice(data).expect("accepted, yet no weight_map");
    let want: Vec<(String, String)> = doc.weight_map.into_iter().collect();
    assert_eq!(entries, want);
});
