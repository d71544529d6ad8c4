//! A checkpoint: one safetensors file, a directory of shards, or a
//! `model.safetensors.index.json` with its `weight_map`. Every shard's header is
//! validated, and the shards must agree with each other and with the index.

use std::collections::{BTreeMap, HashMap};
use std::fs;
use std::path::{Component, Path, PathBuf};

use serde::Deserialize;

use crate::dtype::Dtype;
use crate::error::{bounded, clip_json, quoted, Error, Result};
use crate::header::{Header, TensorInfo};

/// Largest index file accepted, in bytes (real ones are a few MiB at most).
pub const MAX_INDEX_LEN: u64 = 256 << 20;

/// A validated checkpoint: the headers of all its shards.
#[derive(Debug, Clone)]
pub struct Checkpoint {
    /// The path the checkpoint was opened from.
    pub path: PathBuf,
    /// The index file, when the checkpoint has one.
    pub index: Option<PathBuf>,
    /// The `metadata` object of the index, when there is one.
    pub index_metadata: Option<serde_json::Value>,
    /// Every shard's validated header, in file-name order.
    pub shards: Vec<Header>,
}

/// One tensor of a checkpoint and the shard it lives in.
#[derive(Debug, Clone, Copy)]
pub struct TensorRef<'a> {
    /// Position of the shard in [`Checkpoint::shards`].
    pub shard: usize,
    /// The tensor's header entry.
    pub info: &'a TensorInfo,
}

impl Checkpoint {
    /// Opens a safetensors checkpoint and collects every problem instead of stopping
    /// at the first; the checkpoint is returned only when no problem was found.
    /// [`Checkpoint::open_all_problems`] takes PyTorch checkpoints as well.
    pub(crate) fn open_safetensors(path: &Path) -> (Option<Checkpoint>, Vec<Error>) {
        let mut problems = Vec::new();
        let (files, index) = match discover(path) {
            Ok(x) => x,
            Err(problems) => return (None, problems),
        };
        let mut shards = Vec::with_capacity(files.len());
        for f in &files {
            match Header::read(f) {
                Ok(h) => shards.push(h),
                Err(e) => problems.push(e),
            }
        }
        // A tensor may live in one shard only.
        let mut owner: HashMap<&str, usize> = HashMap::new();
        for (i, h) in shards.iter().enumerate() {
            for t in &h.tensors {
                if let Some(&j) = owner.get(t.name.as_str()) {
                    problems.push(Error::checkpoint(
                        path,
                        format_args!(
                            "tensor {} is in two shards: {} and {}",
                            quoted(&t.name),
                            shards
                                .get(j)
                                .map(|s| file_name(&s.path))
                                .unwrap_or_default(),
                            file_name(&h.path)
                        ),
                    ));
                } else {
                    owner.insert(&t.name, i);
                }
            }
        }
        let mut index_metadata = None;
        if let Some(idx) = &index {
            index_metadata = idx.metadata.clone();
            let by_file: HashMap<&Path, usize> = shards
                .iter()
                .enumerate()
                .map(|(i, h)| (h.path.as_path(), i))
                .collect();
            for (name, file) in &idx.weight_map {
                let shard_path = idx.dir.join(file);
                match by_file.get(shard_path.as_path()) {
                    Some(&i) if shards.get(i).is_some_and(|s| s.tensor(name).is_none()) => {
                        problems.push(Error::checkpoint(
                            &idx.path,
                            format_args!(
                                "weight_map puts tensor {} in {}, which has no such tensor",
                                quoted(name),
                                bounded(file)
                            ),
                        ));
                    }
                    _ => {}
                }
            }
            for h in &shards {
                for t in &h.tensors {
                    let listed = idx.weight_map.get(&t.name);
                    if listed.is_none() {
                        problems.push(Error::checkpoint(
                            &idx.path,
                            format_args!(
                                "tensor {} of {} is not in the index's weight_map",
                                quoted(&t.name),
                                file_name(&h.path)
                            ),
                        ));
                    }
                }
            }
        }
        if !problems.is_empty() {
            return (None, problems);
        }
        (
            Some(Checkpoint {
                path: path.to_path_buf(),
                index: index.map(|i| i.path),
                index_metadata,
                shards,
            }),
            problems,
        )
    }

    /// All tensors of all shards, shard by shard, each shard's in offset order.
    pub fn tensors(&self) -> impl Iterator<Item = TensorRef<'_>> {
        self.shards
            .iter()
            .enumerate()
            .flat_map(|(shard, h)| h.tensors.iter().map(move |info| TensorRef { shard, info }))
    }

    /// Number of tensors.
    pub fn tensor_count(&self) -> usize {
        self.shards.iter().map(|h| h.tensors.len()).sum()
    }

    /// Total tensor bytes.
    pub fn total_bytes(&self) -> u64 {
        self.shards.iter().map(|h| h.data_len()).sum()
    }

    /// Parameter count and bytes per dtype.
    pub fn dtype_totals(&self) -> BTreeMap<Dtype, (u64, u64)> {
        dtype_totals(self.shards.iter())
    }
}

/// Parameter count and bytes per dtype over some headers.
pub fn dtype_totals<'a>(headers: impl Iterator<Item = &'a Header>) -> BTreeMap<Dtype, (u64, u64)> {
    let mut m: BTreeMap<Dtype, (u64, u64)> = BTreeMap::new();
    for h in headers {
        for t in &h.tensors {
            let e = m.entry(t.dtype).or_default();
            e.0 = e.0.saturating_add(t.numel());
            e.1 = e.1.saturating_add(t.len());
        }
    }
    m
}

/// A file's name for a message: lossy UTF-8, control characters escaped.
fn file_name(p: &Path) -> String {
    let name = p
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| p.display().to_string());
    crate::error::escape(&name).into_owned()
}

/// A parsed `*.safetensors.index.json`.
#[derive(Debug)]
struct Index {
    path: PathBuf,
    dir: PathBuf,
    metadata: Option<serde_json::Value>,
    weight_map: BTreeMap<String, String>,
}

#[derive(Deserialize)]
struct RawIndex {
    #[serde(default)]
    metadata: Option<serde_json::Value>,
    weight_map: UniqueMap,
}

/// A JSON object of strings that refuses duplicate keys (as headers refuse duplicate
/// tensor names), instead of silently keeping the last.
struct UniqueMap(BTreeMap<String, String>);

impl<'de> Deserialize<'de> for UniqueMap {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        struct V;
        impl<'de> serde::de::Visitor<'de> for V {
            type Value = UniqueMap;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("an object mapping tensor names to shard file names")
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(
                self,
                mut map: A,
            ) -> std::result::Result<UniqueMap, A::Error> {
                let mut m = BTreeMap::new();
                while let Some((k, v)) = map.next_entry::<String, String>()? {
                    if m.contains_key(&k) {
                        return Err(serde::de::Error::custom(format_args!(
                            "tensor {} appears twice in weight_map",
                            quoted(&k)
                        )));
                    }
                    m.insert(k, v);
                }
                Ok(UniqueMap(m))
            }
        }
        d.deserialize_map(V)
    }
}

/// Parses the bytes of an index file. Pure: used by the fuzz target.
pub fn parse_index(path: &Path, bytes: &[u8]) -> Result<Vec<(String, String)>> {
    Ok(parse_index_inner(path, bytes)?
        .weight_map
        .into_iter()
        .collect())
}

/// Parses the bytes of an index file: its weight map and its `metadata` object.
pub(crate) fn parse_index_with_metadata(
    path: &Path,
    bytes: &[u8],
) -> Result<(BTreeMap<String, String>, Option<serde_json::Value>)> {
    let idx = parse_index_inner(path, bytes)?;
    Ok((idx.weight_map, idx.metadata))
}

fn parse_index_inner(path: &Path, bytes: &[u8]) -> Result<Index> {
    let raw: RawIndex = serde_json::from_slice(bytes).map_err(|e| {
        Error::checkpoint(
            path,
            format_args!("not a valid safetensors index: {}", clip_json(&e)),
        )
    })?;
    for (name, file) in &raw.weight_map.0 {
        let p = Path::new(file);
        // Path::components hides a trailing '/', so look at the characters as well.
        let plain = !file.contains(['/', '\\', '\0'])
            && p.components().count() == 1
            && matches!(p.components().next(), Some(Component::Normal(_)));
        if !plain {
            return Err(Error::checkpoint(
                path,
                format_args!(
                    "weight_map entry for tensor {} names {}, which is not a plain file name beside the index",
                    quoted(name),
                    quoted(file)
                ),
            ));
        }
    }
    let dir = path
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_else(|| PathBuf::from("."));
    let dir = if dir.as_os_str().is_empty() {
        PathBuf::from(".")
    } else {
        dir
    };
    Ok(Index {
        path: path.to_path_buf(),
        dir,
        metadata: raw.metadata,
        weight_map: raw.weight_map.0,
    })
}

fn read_index(path: &Path) -> Result<Index> {
    let len = fs::metadata(path)
        .map_err(|e| Error::io(path, "stat", e))?
        .len();
    if len > MAX_INDEX_LEN {
        return Err(Error::checkpoint(
            path,
            format_args!("index is {len} bytes, more than the {MAX_INDEX_LEN}-byte limit"),
        ));
    }
    let bytes = fs::read(path).map_err(|e| Error::io(path, "read", e))?;
    parse_index_inner(path, &bytes)
}

/// What a directory load takes, and what a path given must be.
const EXPECTED: &str =
    "expected a .safetensors file, a directory of shards or a model.safetensors.index.json";

/// Why `p` cannot be read as a file, in words, or `None` when it is a regular file
/// (symbolic links followed). Opens nothing: a FIFO is named, never waited on.
fn not_a_file(p: &Path) -> Option<String> {
    let meta = match fs::metadata(p) {
        Ok(m) => m,
        Err(e) => {
            return Some(match (e.kind(), fs::read_link(p)) {
                (std::io::ErrorKind::NotFound, Ok(to)) => format!(
                    "is a symbolic link to {}, which does not exist",
                    to.display()
                ),
                (std::io::ErrorKind::NotFound, Err(_)) => "is missing".to_string(),
                _ => format!("cannot be opened: {e}"),
            });
        }
    };
    if meta.is_file() {
        return None;
    }
    let ft = meta.file_type();
    #[cfg(unix)]
    let what = {
        use std::os::unix::fs::FileTypeExt;
        if ft.is_dir() {
            "a directory"
        } else if ft.is_fifo() {
            "a FIFO (named pipe)"
        } else if ft.is_char_device() {
            "a character device"
        } else if ft.is_block_device() {
            "a block device"
        } else if ft.is_socket() {
            "a socket"
        } else {
            "not a regular file"
        }
    };
    #[cfg(not(unix))]
    let what = if ft.is_dir() {
        "a directory"
    } else {
        "not a regular file"
    };
    Some(format!("is {what}, not a regular file"))
}

fn is_index(p: &Path) -> bool {
    p.file_name()
        .and_then(|n| n.to_str())
        .is_some_and(|n| n.ends_with(".index.json"))
}

/// Finds the shard files and the index (if any) of the checkpoint at `path`; every
/// problem found on the way.
///
/// A directory load takes: with one `*.safetensors.index.json` in the directory, the
/// files its weight_map names (each a regular file beside it) and nothing else; with
/// none, every entry whose name ends in `.safetensors`, in name order. Each such entry
/// must be a regular file (links followed): a dangling link, a directory or a FIFO
/// so named is an error, never skipped; and names of the form
/// `PREFIX-0000N-of-0000M.safetensors` must form the whole set 1..=M.
fn discover(path: &Path) -> std::result::Result<(Vec<PathBuf>, Option<Index>), Vec<Error>> {
    let one = |e| vec![e];
    let meta = match fs::metadata(path) {
        Ok(m) => m,
        // A dangling link says where it points; anything else missing is the OS's error.
        Err(e) => {
            return Err(one(match fs::read_link(path) {
                Ok(_) if e.kind() == std::io::ErrorKind::NotFound => {
                    Error::checkpoint(path, not_a_file(path).unwrap_or_default())
                }
                _ => Error::io(path, "open", e),
            }))
        }
    };
    if meta.is_file() {
        if is_index(path) {
            let idx = read_index(path).map_err(one)?;
            let files = index_files(&idx).map_err(one)?;
            return Ok((files, Some(idx)));
        }
        return Ok((vec![path.to_path_buf()], None));
    }
    if !meta.is_dir() {
        let why = not_a_file(path).unwrap_or_default();
        return Err(one(Error::checkpoint(
            path,
            format_args!("{why}; {EXPECTED}"),
        )));
    }
    let mut indexes = Vec::new();
    let mut shards = Vec::new();
    let mut problems = Vec::new();
    let entries = fs::read_dir(path).map_err(|e| one(Error::io(path, "read directory", e)))?;
    for entry in entries {
        let entry = entry.map_err(|e| one(Error::io(path, "read directory", e)))?;
        let p = entry.path();
        let index = is_index(&p) && p.to_string_lossy().ends_with(".safetensors.index.json");
        if index {
            indexes.push(p);
        } else if p.extension().is_some_and(|e| e == "safetensors") {
            shards.push(p);
        }
    }
    indexes.sort();
    shards.sort();
    for p in &indexes {
        if let Some(why) = not_a_file(p) {
            problems.push(Error::checkpoint(p, why));
        }
    }
    if !problems.is_empty() {
        return Err(problems);
    }
    match indexes.as_slice() {
        [] => {
            let mut bad = Vec::new();
            shards.retain(|p| match not_a_file(p) {
                None => true,
                Some(why) => {
                    bad.push((p.clone(), why));
                    false
                }
            });
            if shards.is_empty() {
                let odd: Vec<String> = bad
                    .iter()
                    .map(|(p, why)| format!("{} {why}", file_name(p)))
                    .collect();
                let odd = if odd.is_empty() {
                    String::new()
                } else {
                    format!(" ({})", odd.join("; "))
                };
                return Err(one(Error::checkpoint(
                    path,
                    format_args!(
                        "directory holds no .safetensors files and no .safetensors.index.json{odd}"
                    ),
                )));
            }
            problems.extend(bad.into_iter().map(|(p, why)| Error::checkpoint(&p, why)));
            problems.extend(missing_numbered(path, &shards));
            if problems.is_empty() {
                Ok((shards, None))
            } else {
                Err(problems)
            }
        }
        [idx] => {
            let idx = read_index(idx).map_err(one)?;
            let files = index_files(&idx).map_err(one)?;
            Ok((files, Some(idx)))
        }
        _ => Err(one(Error::checkpoint(
            path,
            format_args!(
                "directory holds {} index files; name the one to load",
                indexes.len()
            ),
        ))),
    }
}

/// `PREFIX-0000N-of-0000M.safetensors` split into (PREFIX, N's digits, M's digits).
fn numbered(name: &str) -> Option<(&str, &str, &str)> {
    let digits = |s: &str| !s.is_empty() && s.len() <= 9 && s.bytes().all(|b| b.is_ascii_digit());
    let (left, total) = name.strip_suffix(".safetensors")?.rsplit_once("-of-")?;
    let (prefix, n) = left.rsplit_once('-')?;
    (digits(n) && digits(total)).then_some((prefix, n, total))
}

/// Problems with the numbered shards among `shards` (see [`numbered`]): a number
/// missing from its set 1..=M, or one outside it. Each names the file(s).
fn missing_numbered(dir: &Path, shards: &[PathBuf]) -> Vec<Error> {
    // (PREFIX, M's digits) → (N's width, the numbers present).
    let mut sets: BTreeMap<(String, String), (usize, Vec<u64>)> = BTreeMap::new();
    let mut problems = Vec::new();
    for p in shards {
        let Some(name) = p.file_name().and_then(|n| n.to_str()) else {
            continue;
        };
        let Some((prefix, n, total)) = numbered(name) else {
            continue;
        };
        let (Ok(k), Ok(m)) = (n.parse::<u64>(), total.parse::<u64>()) else {
            continue;
        };
        if k == 0 || k > m {
            problems.push(Error::checkpoint(
                p,
                format_args!("shard number {k} is outside 1..={m}"),
            ));
            continue;
        }
        let set = sets
            .entry((prefix.to_string(), total.to_string()))
            .or_insert_with(|| (n.len(), Vec::new()));
        set.1.push(k);
    }
    for ((prefix, total), (width, mut have)) in sets {
        have.sort_unstable();
        have.dedup();
        let m = total.parse::<u64>().unwrap_or(0);
        let mut missing = (1..=m).filter(|k| have.binary_search(k).is_err());
        let count = m.saturating_sub(have.len() as u64);
        let shown: Vec<String> = missing
            .by_ref()
            .take(3)
            .map(|k| format!("{prefix}-{k:0width$}-of-{total}.safetensors"))
            .collect();
        if shown.is_empty() {
            continue;
        }
        let more = match count.saturating_sub(shown.len() as u64) {
            0 => String::new(),
            k => format!(" and {k} more"),
        };
        problems.push(Error::checkpoint(
            dir,
            format_args!(
                "shard set {prefix}-*-of-{total}.safetensors is incomplete ({} of {m} present): missing {}{more}",
                have.len(),
                shown.join(", ")
            ),
        ));
    }
    problems
}

/// The distinct shard files an index names, each checked to be a regular file.
fn index_files(idx: &Index) -> Result<Vec<PathBuf>> {
    let mut names: Vec<&String> = idx.weight_map.values().collect();
    names.sort();
    names.dedup();
    if names.is_empty() {
        return Err(Error::checkpoint(&idx.path, "weight_map is empty"));
    }
    let mut files = Vec::with_capacity(names.len());
    for n in names {
        let p = idx.dir.join(n);
        if let Some(why) = not_a_file(&p) {
            let tensor = idx
                .weight_map
                .iter()
                .find(|(_, f)| *f == n)
                .map(|(t, _)| t.as_str())
                .unwrap_or_default();
            return Err(Error::checkpoint(
                &idx.path,
                format_args!(
                    "shard {} (holding tensor {}, among others) {why}",
                    bounded(n),
                    quoted(tensor)
                ),
            ));
        }
        files.push(p);
    }
    Ok(files)
}
