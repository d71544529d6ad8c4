//! `checkpoint::parse_index` on arbitrary bytes.
//!
//! Contract: any input gives `Ok` or `Err`, never a panic. On `Ok` every shard file
//! name is a plain file name beside the index (no `/`, not `.` or `..`, not empty, not
//! absolute), so joining it to the index's directory cannot leave that directory, and
//! the entries are exactly the input's `weight_map`, sorted by tensor name.
#![no_main]

use std::path::{Component, Path};

use libfuzzer_sys::fuzz_target;
use tensorstream::checkpoint::parse_index;

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

    // Accepted bytes are a JSON document whose weight_map is what we returned
    // (serde_json keeps the last of duplicated keys, as the parser does). Skipped
    // values are not checked for UTF-8, so invalid bytes may hide in unknown fields.
    let text = String::from_utf8_lossy(data);
    let doc: serde_json::Value = serde_json::from_str(&text).expect("accepted invalid JSON");
    let map = match &doc {
        serde_json::Value::Object(o) => o.get("weight_map"),
        // A struct may also be written as an array of its fields, in order.
        serde_json::Value::Array(a) => a.get(1),
        _ => None,
    };
    let map = map
        .and_then(|m| m.as_object())
        .expect("accepted without a weight_map object");
    let mut want: Vec<(String, String)> = map
        .iter()
        .map(|(k, v)| {
            (
                k.clone(),
                v.as_str().expect("non-string file name").to_string(),
            )
        })
        .collect();
    want.sort();
    assert_eq!(entries, want);
});
