//! A PyTorch zip checkpoint opened for loading: each tensor is a byte range of its
//! stored zip entry, given to the pipeline as a [`Header`] with absolute offsets.
//!
//! The rule for what is not one byte range: a strided (non-contiguous) view is a
//! problem that names the tensor and says that `tensorstream convert` writes it
//! contiguous. Tensors that share bytes (tied weights, views of one storage) load
//! as they are: each reads its own range, and may share memory with the other in a
//! [`crate::Model`].

use std::collections::BTreeMap;
use std::fs::File;
use std::path::{Path, PathBuf};

use super::{locate, resolve, shard};
use crate::error::{quoted, Error};
use crate::format::checkpoint::Checkpoint;
use crate::format::header::{Header, TensorInfo};

/// A PyTorch checkpoint opened as [`open_pytorch`] opens it.
#[derive(Debug)]
pub struct PytorchCheckpoint {
    /// The checkpoint, when no problem was found.
    pub checkpoint: Option<Checkpoint>,
    /// Every problem found (empty when `checkpoint` is some).
    pub problems: Vec<Error>,
    /// Entries that are not tensors, each with what it is (`"epoch (int)"`), shard
    /// by shard.
    pub skipped: Vec<String>,
}

/// Opens the PyTorch zip checkpoint at `path` (a file, a `pytorch_model.bin.index.json`
/// or a directory holding either, as `convert` takes them) for loading, collecting
/// every problem: the archive's or the pickle's (one per file), and each tensor's.
pub fn open_pytorch(path: &Path) -> PytorchCheckpoint {
    let mut out = PytorchCheckpoint {
        checkpoint: None,
        problems: Vec::new(),
        skipped: Vec::new(),
    };
    let src = match shard::source(path, resolve) {
        Ok(s) => s,
        Err(e) => {
            out.problems.push(e);
            return out;
        }
    };
    let mut shards = Vec::with_capacity(src.files.len());
    let mut owner: BTreeMap<String, PathBuf> = BTreeMap::new();
    for (file, expect) in &src.files {
        let Some(h) = open_file(file, &mut out) else {
            continue;
        };
        if let Some(expect) = expect {
            let names = h.tensors.iter().map(|t| t.name.as_str());
            if let Err(e) = shard::check_shard(&src, file, expect, names) {
                out.problems.push(e);
            }
        }
        for t in &h.tensors {
            if let Some(first) = owner.insert(t.name.clone(), file.clone()) {
                out.problems.push(Error::tensor_err(
                    file,
                    &t.name,
                    format_args!("is also in {}", first.display()),
                ));
            }
        }
        shards.push(h);
    }
    if out.problems.is_empty() {
        let index = (!src.map.is_empty()).then(|| src.path.clone());
        out.checkpoint = Some(Checkpoint {
            path: path.to_path_buf(),
            index,
            index_metadata: src.metadata.clone(),
            shards,
        });
    }
    out
}

/// One file's header, or `None` with its problems added to `out`.
fn open_file(path: &Path, out: &mut PytorchCheckpoint) -> Option<Header> {
    let file = match File::open(path) {
        Ok(f) => f,
        Err(e) => {
            out.problems.push(Error::io(path, "open", e));
            return None;
        }
    };
    let file_len = match file.metadata() {
        Ok(m) => m.len(),
        Err(e) => {
            out.problems.push(Error::io(path, "stat", e));
            return None;
        }
    };
    let found = match locate(&file, path) {
        Ok(f) => f,
        Err(e) => {
            out.problems.push(e);
            return None;
        }
    };
    let mut bad = found.problems;
    out.skipped.extend(found.skipped);
    let mut tensors = Vec::with_capacity(found.tensors.len());
    for l in found.tensors {
        if !l.layout.contiguous {
            bad.push(Error::tensor_err(
                path,
                &l.name,
                format_args!(
                    "is a strided view (shape {:?}, strides {:?}) of storage {}, not one \
                     byte range, so it cannot be loaded from this file; `tensorstream \
                     convert` writes it contiguous",
                    l.t.size,
                    l.t.stride,
                    quoted(&l.t.storage.key)
                ),
            ));
            continue;
        }
        let len = l.layout.numel.checked_mul(l.layout.elem);
        let Some(end) = len.and_then(|n| l.at.checked_add(n)) else {
            bad.push(Error::tensor_err(path, &l.name, "its size overflows"));
            continue;
        };
        tensors.push(TensorInfo {
            name: l.name,
            dtype: l.t.dtype,
            shape: l.t.size,
            begin: l.at,
            end,
        });
    }
    if !bad.is_empty() {
        out.problems.extend(bad);
        return None;
    }
    match Header::from_ranges(path, file_len, tensors) {
        Ok(h) => Some(h),
        Err(e) => {
            out.problems.push(e);
            None
        }
    }
}

/// True when `path` is a PyTorch checkpoint rather than safetensors: a file that
/// starts with a zip signature (or a legacy pickle's, named `.bin`, `.pt` or
/// `.pth`), a `*.bin.index.json`, or a directory that holds no `.safetensors` file
/// or index but holds a `.bin`, `.pt` or `.pth` file or a `.bin.index.json`.
pub fn is_pytorch(path: &Path) -> bool {
    let name = |p: &Path| {
        p.file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default()
    };
    let torch_ext = |n: &str| [".bin", ".pt", ".pth"].iter().any(|x| n.ends_with(x));
    if path.is_dir() {
        let Ok(read) = std::fs::read_dir(path) else {
            return false;
        };
        let names: Vec<String> = read.flatten().map(|e| name(&e.path())).collect();
        let safetensors = names
            .iter()
            .any(|n| n.ends_with(".safetensors") || n.ends_with(".safetensors.index.json"));
        return !safetensors
            && names
                .iter()
                .any(|n| torch_ext(n) || n.ends_with(".bin.index.json"));
    }
    let n = name(path);
    if n.ends_with(".bin.index.json") {
        return true;
    }
    // Only a regular file is opened: a FIFO would wait for a writer.
    if !std::fs::metadata(path).is_ok_and(|m| m.is_file()) {
        return false;
    }
    let mut magic = [0u8; 4];
    let read = File::open(path).and_then(|f| {
        use std::os::unix::fs::FileExt;
        f.read_at(&mut magic, 0)
    });
    match read {
        Ok(4) if magic == *b"PK\x03\x04" => true,
        Ok(k) if k >= 1 => magic.first() == Some(&0x80) && torch_ext(&n),
        _ => false,
    }
}
