//! Sharding for `convert`: reading a `pytorch_model.bin.index.json` set, and
//! splitting the output into transformers-named shards with an index.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use crate::error::{quoted, Error, Result};
use crate::format::checkpoint::parse_index_with_metadata;

/// Largest input index read, in bytes.
const MAX_INDEX: u64 = 64 << 20;

/// The checkpoint files to read.
pub(super) struct Source {
    /// The file named on the command line, or the index.
    pub path: PathBuf,
    /// Each file, with the tensor names the index assigns it (`None`: no index).
    pub files: Vec<(PathBuf, Option<Vec<String>>)>,
    /// The index's map from tensor name to shard file name (empty without one).
    pub map: BTreeMap<String, String>,
    /// The index's `metadata` object, as written (`None` without an index or one).
    pub metadata: Option<serde_json::Value>,
}

fn is_index(p: &Path) -> bool {
    p.file_name()
        .and_then(|n| n.to_str())
        .is_some_and(|n| n.ends_with(".index.json"))
}

/// Finds the input: an index (or a directory holding `pytorch_model.bin.index.json`
/// and no `pytorch_model.bin`) gives every shard; anything else goes to `single`.
pub(super) fn source(input: &Path, single: impl Fn(&Path) -> Result<PathBuf>) -> Result<Source> {
    let index = if input.is_dir() {
        let idx = input.join("pytorch_model.bin.index.json");
        (!input.join("pytorch_model.bin").is_file() && idx.is_file()).then_some(idx)
    } else {
        is_index(input).then(|| input.to_path_buf())
    };
    let Some(index) = index else {
        let path = single(input)?;
        return Ok(Source {
            path: path.clone(),
            files: vec![(path, None)],
            map: BTreeMap::new(),
            metadata: None,
        });
    };
    let len = std::fs::metadata(&index)
        .map_err(|e| Error::io(&index, "stat", e))?
        .len();
    if len > MAX_INDEX {
        return Err(Error::checkpoint(
            &index,
            format!("index is {len} bytes, more than the {MAX_INDEX}-byte limit"),
        ));
    }
    let bytes = std::fs::read(&index).map_err(|e| Error::io(&index, "read", e))?;
    let (map, metadata) = parse_index_with_metadata(&index, &bytes)?;
    if map.is_empty() {
        return Err(Error::checkpoint(&index, "the weight_map is empty"));
    }
    let mut by_file: BTreeMap<&str, Vec<String>> = BTreeMap::new();
    for (name, file) in &map {
        by_file.entry(file).or_default().push(name.clone());
    }
    let dir = index.parent().unwrap_or(Path::new("."));
    let files = by_file
        .into_iter()
        .map(|(f, names)| (dir.join(f), Some(names)))
        .collect();
    Ok(Source {
        path: index.clone(),
        files,
        map,
        metadata,
    })
}

/// Checks that shard `file` holds exactly the tensors `expect` the index assigns it.
pub(super) fn check_shard<'a>(
    src: &Source,
    file: &Path,
    expect: &[String],
    found: impl Iterator<Item = &'a str>,
) -> Result<()> {
    let fname = file
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let mut seen = std::collections::BTreeSet::new();
    for name in found {
        match src.map.get(name) {
            None => {
                return Err(Error::tensor_err(
                    file,
                    name,
                    format!(
                        "in this shard but not in the weight_map of {}",
                        src.path.display()
                    ),
                ))
            }
            Some(f) if *f != fname => {
                return Err(Error::tensor_err(
                    file,
                    name,
                    format!(
                        "in this shard, but {} assigns it to {}",
                        src.path.display(),
                        quoted(f)
                    ),
                ))
            }
            Some(_) => {
                seen.insert(name);
            }
        }
    }
    if let Some(missing) = expect.iter().find(|n| !seen.contains(n.as_str())) {
        return Err(Error::tensor_err(
            file,
            missing,
            format!(
                "{} assigns it to this shard, which does not hold it",
                src.path.display()
            ),
        ));
    }
    Ok(())
}

/// Splits tensors of byte sizes `sizes` (in order) into consecutive groups of at
/// most `max` bytes; a tensor larger than `max` is alone in its group.
pub(super) fn split(sizes: &[u64], max: u64) -> Vec<std::ops::Range<usize>> {
    let mut groups = Vec::new();
    let (mut start, mut cur) = (0usize, 0u64);
    for (i, &s) in sizes.iter().enumerate() {
        if i > start && cur.saturating_add(s) > max {
            groups.push(start..i);
            start = i;
            cur = 0;
        }
        cur = cur.saturating_add(s);
    }
    groups.push(start..sizes.len());
    groups
}

/// The output file name of shard `i` (from 0) of `n`, as transformers names them.
pub(super) fn shard_name(i: usize, n: usize) -> String {
    if n == 1 {
        "model.safetensors".to_string()
    } else {
        format!("model-{:05}-of-{n:05}.safetensors", i + 1)
    }
}

/// The `model.safetensors.index.json` text.
pub(super) fn index_json(total: u64, weight_map: &BTreeMap<String, String>) -> Result<Vec<u8>> {
    let v = serde_json::json!({
        "metadata": {"total_size": total},
        "weight_map": weight_map,
    });
    serde_json::to_vec_pretty(&v).map_err(|e| Error::InvalidArgument(format!("index: {e}")))
}

/// Moves every file `names` from `tmp` into `out_dir`; on a failure, removes the
/// ones already moved. On success, removes stale outputs of an earlier run.
pub(super) fn publish(tmp: &Path, out_dir: &Path, names: &[String]) -> Result<()> {
    for (i, n) in names.iter().enumerate() {
        let to = out_dir.join(n);
        if let Err(e) = std::fs::rename(tmp.join(n), &to) {
            for done in names.iter().take(i) {
                let _ = std::fs::remove_file(out_dir.join(done));
            }
            return Err(Error::io(&to, "rename into place", e));
        }
    }
    remove_stale(out_dir, names);
    Ok(())
}

/// Whether `n` is a name this converter writes (`model.safetensors`, its index, or
/// a `model-NNNNN-of-NNNNN.safetensors` shard).
fn ours(n: &str) -> bool {
    if n == "model.safetensors" || n == "model.safetensors.index.json" {
        return true;
    }
    let digits = |s: &str| s.len() == 5 && s.bytes().all(|b| b.is_ascii_digit());
    n.strip_prefix("model-")
        .and_then(|r| r.strip_suffix(".safetensors"))
        .and_then(|r| r.split_once("-of-"))
        .is_some_and(|(a, b)| digits(a) && digits(b))
}

/// Removes files of an earlier conversion that this one did not write, so that
/// `out_dir` holds one consistent checkpoint (as transformers' `save_pretrained`
/// cleans stale shards). Best effort: a file that cannot be removed stays.
fn remove_stale(out_dir: &Path, names: &[String]) {
    let Ok(read) = std::fs::read_dir(out_dir) else {
        return;
    };
    for e in read.flatten() {
        let n = e.file_name().to_string_lossy().into_owned();
        if ours(&n) && !names.contains(&n) && e.path().is_file() {
            let _ = std::fs::remove_file(e.path());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn split_fills_in_order_and_isolates_big_tensors() {
        assert_eq!(split(&[3, 3, 3, 10, 1, 1], 6), vec![0..2, 2..3, 3..4, 4..6]);
        assert_eq!(split(&[1, 2], 100), vec![0..2]);
        assert_eq!(split(&[], 5), vec![0..0]);
        assert_eq!(split(&[9, 1], 5), vec![0..1, 1..2]);
    }

    #[test]
    fn names_follow_transformers() {
        assert_eq!(shard_name(0, 1), "model.safetensors");
        assert_eq!(shard_name(1, 12), "model-00002-of-00012.safetensors");
        assert!(ours("model-00002-of-00012.safetensors") && ours("model.safetensors"));
        assert!(!ours("model-2-of-12.safetensors") && !ours("other.safetensors"));
    }
}
