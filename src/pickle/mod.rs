//! PyTorch zip checkpoints (`torch.save`, PyTorch 1.6 and newer) to safetensors,
//! read by a restricted unpickler that executes nothing.
//!
//! The rules:
//! - only the zip format is read; the legacy (pre-1.6) format is refused;
//! - the pickle may name only the globals `torch.save` writes for tensors
//!   (`collections.OrderedDict`, `torch._utils._rebuild_tensor_v2/v3`,
//!   `torch._utils._rebuild_parameter`, `torch._utils._rebuild_parameter_with_state`
//!   (a parameter's Python attributes are ignored; one holding a tensor is refused),
//!   the `torch.*Storage` classes of the
//!   dtypes safetensors has, `torch.device`, `torch.<dtype>`); any other global is
//!   an error naming it, and nothing is ever imported or called;
//! - the state dict is the top-level dict, or the dict under `state_dict`, `model`,
//!   `model_state_dict` or `module` when the top level holds no tensor itself;
//!   nested dicts give dotted names; values that are not tensors are skipped and
//!   listed in [`ConvertReport::skipped`];
//! - every tensor is written contiguous, in C order (strided views are gathered);
//! - tensors that share a storage (tied weights, views of one buffer) are each
//!   written as a copy of their own bytes: the output has no aliasing, and a tied
//!   pair costs its bytes twice;
//! - each storage's bytes are checked against its zip entry, and each tensor's
//!   offset, shape and strides against its storage, before anything is read.
//! - a sharded set (`pytorch_model.bin.index.json`) names each shard as a plain file
//!   beside the index, and each shard holds exactly the tensors the index assigns
//!   it; the output is split by size as transformers splits it (see [`shard`]).
//!
//! `load`, `inspect` and `verify` read a checkpoint in place, by the same rules (see
//! [`open`]): each tensor is a byte range of its stored entry, handed to the pipeline
//! as a [`Header`](crate::Header) with absolute offsets. A strided view is refused by
//! name (`convert` writes it contiguous); tensors sharing bytes each read their own.

mod open;
mod shard;
mod tensors;
mod unpickle;
mod zip;

use std::fs::File;
use std::io::{BufWriter, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use crate::convert::{convert_into, converted_len, output_dtype};
use crate::error::{escape, Error, Result};
use crate::format::dtype::Dtype;

pub use open::{is_pytorch, open_pytorch, PytorchCheckpoint};
pub use unpickle::{unpickle, PickleError};

/// Largest `data.pkl` read, in bytes (a state dict's pickle is kilobytes to megabytes).
const MAX_PICKLE: u64 = 256 << 20;

/// What [`convert_pytorch`] did.
#[derive(Debug, Clone)]
pub struct ConvertReport {
    /// The checkpoint file read, or the index of a sharded set.
    pub input: PathBuf,
    /// `model.safetensors`, or the `model.safetensors.index.json` of sharded output.
    pub output: PathBuf,
    /// Every file written, shards first.
    pub files: Vec<PathBuf>,
    /// Tensors written.
    pub tensors: usize,
    /// Bytes of tensor data written.
    pub bytes: u64,
    /// Entries that are not tensors, each with what it is (`"epoch (int)"`).
    pub skipped: Vec<String>,
}

/// Finds the checkpoint file: `input` itself, or in a directory
/// `pytorch_model.bin`, else its only `.bin`, `.pt` or `.pth` file.
fn resolve(input: &Path) -> Result<PathBuf> {
    if !input.is_dir() {
        return Ok(input.to_path_buf());
    }
    let one = input.join("pytorch_model.bin");
    if one.is_file() {
        return Ok(one);
    }
    let read = std::fs::read_dir(input).map_err(|e| Error::io(input, "read directory", e))?;
    let mut found = Vec::new();
    for e in read {
        let p = e.map_err(|e| Error::io(input, "read directory", e))?.path();
        let ext = p.extension().and_then(|x| x.to_str()).unwrap_or("");
        if matches!(ext, "bin" | "pt" | "pth") && p.is_file() {
            found.push(p);
        }
    }
    match found.len() {
        1 => Ok(found.swap_remove(0)),
        0 => Err(Error::checkpoint(
            input,
            "no .bin, .pt or .pth checkpoint in this directory",
        )),
        n => Err(Error::checkpoint(
            input,
            format!("{n} checkpoint files in this directory; name the one to read"),
        )),
    }
}

/// One tensor ready to be written.
struct Planned {
    /// Which input file (index into the source's files).
    src: usize,
    name: String,
    t: unpickle::TensorRef,
    layout: tensors::Layout,
    /// Absolute offset of `layout.first` in the file.
    at: u64,
    out_dtype: Dtype,
    out_len: u64,
}

/// The archive's prefix folder (`archive`, or the name the file was saved under).
fn prefix(path: &Path, a: &zip::Archive) -> Result<String> {
    let mut found = a.entries.keys().filter_map(|k| {
        k.strip_suffix("/data.pkl")
            .filter(|p| !p.is_empty() && !p.contains('/'))
    });
    match (found.next(), found.next()) {
        (Some(p), None) => Ok(p.to_string()),
        (None, _) => Err(Error::checkpoint(
            path,
            "not a PyTorch checkpoint: the zip archive has no <folder>/data.pkl",
        )),
        _ => Err(Error::checkpoint(
            path,
            "the zip archive holds more than one data.pkl",
        )),
    }
}

fn read_entry(file: &File, path: &Path, e: zip::Entry, max: u64, what: &str) -> Result<Vec<u8>> {
    if e.len > max {
        return Err(Error::checkpoint(
            path,
            format!("{what} is larger than {max} bytes"),
        ));
    }
    let n = usize::try_from(e.len).map_err(|_| Error::checkpoint(path, "entry too large"))?;
    let mut buf = vec![0u8; n];
    file.read_exact_at(&mut buf, e.start)
        .map_err(|err| Error::io(path, "read", err))?;
    Ok(buf)
}

/// One tensor of a checkpoint file, checked against its storage entry.
pub(crate) struct Located {
    /// Its dotted name.
    pub name: String,
    /// What the pickle says of it.
    pub t: unpickle::TensorRef,
    /// Where its bytes lie in the storage.
    pub layout: tensors::Layout,
    /// Absolute offset of `layout.first` in the file.
    pub at: u64,
}

/// What [`locate`] finds in one checkpoint file.
pub(crate) struct Found {
    /// The tensors that passed every check, in the pickle's order.
    pub tensors: Vec<Located>,
    /// One problem per tensor that did not.
    pub problems: Vec<Error>,
    /// Entries that are not tensors, each with what it is (`"epoch (int)"`).
    pub skipped: Vec<String>,
}

/// Opens the archive, checks its byte order, unpickles `data.pkl` and checks every
/// tensor against its storage entry. An error stops at the archive or the pickle;
/// a tensor's problem is collected and the rest go on.
pub(crate) fn locate(file: &File, path: &Path) -> Result<Found> {
    let mut magic = [0u8; 4];
    let n = file
        .read_at(&mut magic, 0)
        .map_err(|e| Error::io(path, "read", e))?;
    if magic.get(..n) != Some(&b"PK\x03\x04"[..]) {
        let reason = if magic.first() == Some(&0x80) {
            "a legacy (pre-1.6, non-zip) PyTorch checkpoint; only the zip format \
             (torch.save in PyTorch 1.6 and newer) is read"
        } else {
            "not a PyTorch zip checkpoint (no zip signature)"
        };
        return Err(Error::checkpoint(path, reason));
    }
    let archive = zip::read_archive(file, path)?;
    let pre = prefix(path, &archive)?;
    let entry = |name: &str| archive.entries.get(&format!("{pre}/{name}")).copied();
    if let Some(e) = entry("byteorder") {
        let order = read_entry(file, path, e, 16, "byteorder")?;
        if order != b"little" {
            return Err(Error::checkpoint(
                path,
                format!(
                    "byte order {:?}: only little-endian checkpoints are read",
                    escape(&String::from_utf8_lossy(&order))
                ),
            ));
        }
    }
    let pkl = entry("data.pkl").ok_or_else(|| Error::checkpoint(path, "no data.pkl"))?;
    let pkl = read_entry(file, path, pkl, MAX_PICKLE, "data.pkl")?;
    let tree = unpickle(&pkl)
        .map_err(|e| Error::checkpoint(path, format!("{}/data.pkl: {e}", escape(&pre))))?;
    let collected = tensors::collect(&tree)
        .map_err(|e| Error::checkpoint(path, format!("{}/data.pkl: {e}", escape(&pre))))?;
    let mut found = Found {
        tensors: Vec::with_capacity(collected.tensors.len()),
        problems: Vec::new(),
        skipped: collected.skipped,
    };
    for (name, t) in collected.tensors {
        let located = (|| {
            if name == "__metadata__" {
                return Err("this name is reserved by safetensors".to_string());
            }
            let key = format!("data/{}", t.storage.key);
            let e =
                entry(&key).ok_or_else(|| format!("storage entry {} is missing", escape(&key)))?;
            let layout = tensors::layout(&t, e.len)?;
            let at = e
                .start
                .checked_add(layout.first)
                .ok_or_else(|| "offset overflows".to_string())?;
            Ok((layout, at))
        })();
        match located {
            Ok((layout, at)) => found.tensors.push(Located {
                name,
                t,
                layout,
                at,
            }),
            Err(r) => found.problems.push(Error::tensor_err(path, &name, r)),
        }
    }
    Ok(found)
}

/// Locates every tensor of one file (see [`locate`]; the first problem is the
/// error) and plans it for writing in `dtype`.
fn plan(
    file: &File,
    path: &Path,
    src: usize,
    dtype: Option<Dtype>,
) -> Result<(Vec<Planned>, Vec<String>)> {
    let mut found = locate(file, path)?;
    if !found.problems.is_empty() {
        return Err(found.problems.swap_remove(0));
    }
    let planned = found
        .tensors
        .into_iter()
        .map(|l| {
            let out_dtype = output_dtype(l.t.dtype, dtype);
            let out_len = converted_len(l.t.dtype, out_dtype, l.layout.numel * l.layout.elem);
            Planned {
                src,
                name: l.name,
                t: l.t,
                layout: l.layout,
                at: l.at,
                out_dtype,
                out_len,
            }
        })
        .collect();
    Ok((planned, found.skipped))
}

/// The safetensors header for `planned`, in order, padded with spaces to 8 bytes.
fn header(planned: &[Planned]) -> Result<Vec<u8>> {
    let mut h = String::from(r#"{"__metadata__":{"format":"pt"}"#);
    let mut offset = 0u64;
    for p in planned {
        let end = offset
            .checked_add(p.out_len)
            .ok_or_else(|| Error::InvalidArgument("total size overflows".into()))?;
        let name = serde_json::to_string(&p.name)
            .map_err(|e| Error::InvalidArgument(format!("tensor name: {e}")))?;
        let shape: Vec<String> = p.t.size.iter().map(u64::to_string).collect();
        h.push_str(&format!(
            r#",{name}:{{"dtype":"{}","shape":[{}],"data_offsets":[{offset},{end}]}}"#,
            p.out_dtype.name(),
            shape.join(",")
        ));
        offset = end;
    }
    h.push('}');
    while !h.len().is_multiple_of(8) {
        h.push(' ');
    }
    let mut out = (h.len() as u64).to_le_bytes().to_vec();
    out.extend_from_slice(h.as_bytes());
    Ok(out)
}

/// Reads one strided tensor's bytes, gathered contiguous and in its output dtype.
fn strided_bytes(file: &File, path: &Path, p: &Planned, buf: &mut Vec<u8>) -> Result<Vec<u8>> {
    let bad = |r: &str| Error::tensor_err(path, &p.name, r);
    let span = usize::try_from(p.layout.span).map_err(|_| bad("too large for memory"))?;
    buf.clear();
    buf.resize(span, 0);
    file.read_exact_at(buf, p.at)
        .map_err(|e| Error::io(path, "read", e))?;
    let mut bytes = Vec::new();
    tensors::gather(&p.t, &p.layout, buf, &mut bytes)
        .ok_or_else(|| bad("strides disagree with the storage"))?;
    if p.out_dtype == p.t.dtype {
        return Ok(bytes);
    }
    let n = usize::try_from(p.out_len).map_err(|_| bad("too large for memory"))?;
    let mut out = vec![0u8; n];
    convert_into(p.t.dtype, p.out_dtype, &bytes, &mut out)?;
    Ok(out)
}

/// The piece a contiguous tensor is copied in: read into this much memory (whole
/// elements), converted where asked, then written. Small enough to stay in a core's
/// L2 cache between the read and the write, large enough that the calls cost nothing.
const COPY_CHUNK: usize = 1 << 20;

/// The reused memory of [`copy_range`].
#[derive(Default)]
struct Pieces {
    read: Vec<u8>,
    converted: Vec<u8>,
}

/// Appends the bytes of contiguous tensor `p` of `file` to `out`, in its output
/// dtype, a piece at a time; returns the bytes written. Memory stays at two pieces
/// whatever the tensor's size. On the 2-core VM this ran at 0.96x `cp` where
/// `copy_file_range` per tensor ran at 0.61x: a tensor's bytes lie at another offset
/// within a page in the output than in the zip, which the kernel's file-to-file copy
/// handles badly, and a larger buffer falls out of the cache (BENCHMARKS.md).
fn copy_range(
    file: &File,
    path: &Path,
    p: &Planned,
    pieces: &mut Pieces,
    out: &mut File,
    output: &Path,
) -> Result<u64> {
    let (src, dst) = (p.t.dtype, p.out_dtype);
    let elem = usize::try_from(p.layout.elem).unwrap_or(1).max(1);
    let step = (COPY_CHUNK / elem).max(1) * elem;
    pieces.read.resize(step, 0);
    let (mut done, mut written) = (0u64, 0u64);
    while done < p.layout.span {
        let want = usize::try_from(p.layout.span - done).map_or(step, |n| n.min(step));
        let piece = pieces
            .read
            .get_mut(..want)
            .ok_or_else(|| Error::InvalidArgument("copy piece".into()))?;
        let n = read_full_at(file, piece, p.at + done).map_err(|e| Error::io(path, "read", e))?;
        if n < want {
            return Err(truncated(path, p, done + n as u64));
        }
        let bytes: &[u8] = if src == dst {
            piece
        } else {
            let len = usize::try_from(converted_len(src, dst, want as u64))
                .map_err(|_| Error::InvalidArgument("converted piece".into()))?;
            pieces.converted.resize(len, 0);
            let conv = pieces
                .converted
                .get_mut(..len)
                .ok_or_else(|| Error::InvalidArgument("converted piece".into()))?;
            convert_into(src, dst, piece, conv)?;
            conv
        };
        out.write_all(bytes)
            .map_err(|e| Error::io(output, "write", e))?;
        done += want as u64;
        written += bytes.len() as u64;
    }
    Ok(written)
}

/// Reads into `buf` at `at` until it is full or the file ends; the bytes read.
fn read_full_at(file: &File, buf: &mut [u8], at: u64) -> std::io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        let rest = buf.get_mut(n..).unwrap_or_default();
        match file.read_at(rest, at + n as u64) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(n)
}

/// The error of a file that ends `n` bytes into tensor `p`.
fn truncated(path: &Path, p: &Planned, n: u64) -> Error {
    Error::tensor_err(
        path,
        &p.name,
        format!("the file ends {n} bytes into the tensor (truncated since it was opened?)"),
    )
}

/// An open input file and its path.
type Input = (File, PathBuf);

/// Writes the safetensors file `name` into `dir` with the tensors `planned`, in order.
fn write_file(
    dir: &Path,
    name: &str,
    planned: &[Planned],
    inputs: &[(File, PathBuf)],
) -> Result<u64> {
    let output = dir.join(name);
    let head = header(planned)?;
    let f = File::create(&output).map_err(|e| Error::io(&output, "create", e))?;
    let mut w = BufWriter::with_capacity(1 << 20, f);
    let werr = |e| Error::io(&output, "write", e);
    w.write_all(&head).map_err(werr)?;
    let mut buf = Vec::new();
    let mut pieces = Pieces::default();
    let mut bytes = 0u64;
    for p in planned {
        let (file, path) = inputs
            .get(p.src)
            .ok_or_else(|| Error::InvalidArgument("input file index".into()))?;
        if p.layout.contiguous {
            // A plain byte range: read, converted where asked, and written in pieces.
            w.flush().map_err(werr)?;
            bytes += copy_range(file, path, p, &mut pieces, w.get_mut(), &output)?;
            continue;
        }
        let data = strided_bytes(file, path, p, &mut buf)?;
        w.write_all(&data).map_err(werr)?;
        bytes += data.len() as u64;
    }
    w.flush().map_err(werr)?;
    Ok(bytes)
}

/// Opens and plans every input file, checking shards against their index; the
/// tensors come back sorted by name, each name once.
fn plan_all(
    src: &shard::Source,
    dtype: Option<Dtype>,
) -> Result<(Vec<Input>, Vec<Planned>, Vec<String>)> {
    let mut inputs = Vec::new();
    let mut all = Vec::new();
    let mut skipped = Vec::new();
    for (i, (path, expect)) in src.files.iter().enumerate() {
        let file = File::open(path).map_err(|e| Error::io(path, "open", e))?;
        let (planned, sk) = plan(&file, path, i, dtype)?;
        if let Some(expect) = expect {
            shard::check_shard(src, path, expect, planned.iter().map(|p| p.name.as_str()))?;
        }
        all.extend(planned);
        skipped.extend(sk);
        inputs.push((file, path.clone()));
    }
    all.sort_by(|a, b| a.name.cmp(&b.name));
    for w in all.windows(2) {
        if let [a, b] = w {
            if a.name == b.name {
                let path = inputs
                    .get(b.src)
                    .map(|f| f.1.as_path())
                    .unwrap_or(&src.path);
                return Err(Error::tensor_err(path, &b.name, "this name appears twice"));
            }
        }
    }
    Ok((inputs, all, skipped))
}

/// Writes `planned`, split into `groups`, into a temporary directory inside
/// `out_dir` (created if missing), then moves the files into place. Returns the
/// files written and the bytes of tensor data.
fn write_output(
    out_dir: &Path,
    planned: &[Planned],
    groups: &[std::ops::Range<usize>],
    inputs: &[Input],
) -> Result<(Vec<PathBuf>, u64)> {
    std::fs::create_dir_all(out_dir).map_err(|e| Error::io(out_dir, "create directory", e))?;
    let tmp = tempfile::Builder::new()
        .prefix(".tensorstream-convert")
        .tempdir_in(out_dir)
        .map_err(|e| Error::io(out_dir, "create a temporary directory", e))?;
    let mut names = Vec::with_capacity(groups.len() + 1);
    let mut weight_map = std::collections::BTreeMap::new();
    let mut bytes = 0u64;
    for (i, g) in groups.iter().enumerate() {
        let name = shard::shard_name(i, groups.len());
        let part = planned
            .get(g.clone())
            .ok_or_else(|| Error::InvalidArgument("shard range".into()))?;
        bytes += write_file(tmp.path(), &name, part, inputs)?;
        for p in part {
            weight_map.insert(p.name.clone(), name.clone());
        }
        names.push(name);
    }
    if groups.len() > 1 {
        let name = "model.safetensors.index.json".to_string();
        let at = tmp.path().join(&name);
        std::fs::write(&at, shard::index_json(bytes, &weight_map)?)
            .map_err(|e| Error::io(&at, "write", e))?;
        names.push(name);
    }
    for n in &names {
        let mode = std::os::unix::fs::PermissionsExt::from_mode(0o644);
        let at = tmp.path().join(n);
        std::fs::set_permissions(&at, mode).map_err(|e| Error::io(&at, "set permissions", e))?;
    }
    shard::publish(tmp.path(), out_dir, &names)?;
    Ok((names.iter().map(|n| out_dir.join(n)).collect(), bytes))
}

/// Converts the PyTorch zip checkpoint `input` into safetensors in `out_dir`.
/// `input` is a checkpoint file, a `pytorch_model.bin.index.json` sharded set, or a
/// directory holding `pytorch_model.bin`, that index, or one `.bin`/`.pt`/`.pth`
/// file. Every shard of a set must hold exactly the tensors its index assigns it.
/// The output is `out_dir/model.safetensors` when all tensor data fits in
/// `max_shard` bytes; otherwise `model-0000N-of-0000M.safetensors` shards, filled
/// in name order (a tensor larger than `max_shard` alone in its shard), and
/// `model.safetensors.index.json`. Each file has `__metadata__` `{"format":"pt"}`
/// and tensors sorted by name. `dtype` converts floating tensors as
/// [`crate::Loader::dtype`] does. Nothing in the checkpoint is executed; see the
/// module rules for what is accepted. The output appears only when the
/// conversion succeeded.
pub fn convert_pytorch(
    input: &Path,
    out_dir: &Path,
    dtype: Option<Dtype>,
    max_shard: u64,
) -> Result<ConvertReport> {
    let src = shard::source(input, resolve)?;
    let (inputs, planned, skipped) = plan_all(&src, dtype)?;
    let sizes: Vec<u64> = planned.iter().map(|p| p.out_len).collect();
    let groups = shard::split(&sizes, max_shard.max(1));
    let created = !out_dir.exists();
    let written = write_output(out_dir, &planned, &groups, &inputs);
    if created && written.is_err() {
        // Only an empty directory goes: what was created here for this output.
        let _ = std::fs::remove_dir(out_dir);
    }
    let (files, bytes) = written?;
    Ok(ConvertReport {
        input: src.path,
        output: files.last().cloned().unwrap_or_default(),
        files,
        tensors: planned.len(),
        bytes,
        skipped,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pickle::unpickle::{StorageRef, TensorRef};

    fn planned(at: u64, span: u64) -> Planned {
        converted(at, span, Dtype::U8, Dtype::U8)
    }

    /// Contiguous tensor of `span` bytes of `dtype` at `at`, to be written as `out`.
    fn converted(at: u64, span: u64, dtype: Dtype, out: Dtype) -> Planned {
        let elem = dtype.bits() / 8;
        let numel = span / elem;
        let t = TensorRef {
            storage: StorageRef {
                dtype: Some(dtype),
                key: "0".into(),
                numel,
            },
            dtype,
            offset: 0,
            size: vec![numel],
            stride: vec![1],
        };
        Planned {
            src: 0,
            name: "w".into(),
            t,
            layout: tensors::Layout {
                elem,
                numel,
                first: 0,
                span,
                contiguous: true,
            },
            at,
            out_dtype: out,
            out_len: converted_len(dtype, out, span),
        }
    }

    #[test]
    fn copy_range_converts_a_tensor_larger_than_a_piece_as_a_whole() {
        let dir = tempfile::tempdir().unwrap();
        let src = dir.path().join("in");
        // F32 values of every kind (random bits: NaNs, infinities, subnormals too).
        let data: Vec<u8> = (0..(5u32 << 20) + 4 * 1001)
            .map(|i| (i.wrapping_mul(2_654_435_761).rotate_left(i % 29) >> 7) as u8)
            .collect();
        std::fs::write(&src, &data).unwrap();
        let file = File::open(&src).unwrap();
        let (at, span) = (4 * 17 + 1, (3 << 20) + 4 * 999);
        let input = &data[at..at + span];
        for out_dtype in [Dtype::BF16, Dtype::F16, Dtype::F32] {
            let p = converted(at as u64, span as u64, Dtype::F32, out_dtype);
            let mut want = vec![0u8; p.out_len as usize];
            convert_into(Dtype::F32, out_dtype, input, &mut want).unwrap();
            let out_path = dir.path().join("out");
            let mut out = File::create(&out_path).unwrap();
            let mut pieces = Pieces::default();
            let n = copy_range(&file, &src, &p, &mut pieces, &mut out, &out_path).unwrap();
            assert_eq!(n, p.out_len);
            assert!(std::fs::read(&out_path).unwrap() == want, "{out_dtype}");
            assert!(pieces.read.len() <= COPY_CHUNK && pieces.converted.len() <= COPY_CHUNK);
        }
    }

    #[test]
    fn copy_range_copies_the_bytes_and_a_short_file_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let src = dir.path().join("in");
        let data: Vec<u8> = (0..(3u32 << 20) + 7000)
            .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
            .collect();
        std::fs::write(&src, &data).unwrap();
        let file = File::open(&src).unwrap();
        let span = (2 << 20) + 5000;
        let mut pieces = Pieces::default();
        // At the same offset within a page as the output, then not.
        for (at, out_at) in [(4096 + 100, 100), (4096 + 100, 8)] {
            let out_path = dir.path().join("out");
            let mut out = File::create(&out_path).unwrap();
            out.write_all(&vec![1u8; out_at]).unwrap();
            let n = copy_range(
                &file,
                &src,
                &planned(at, span),
                &mut pieces,
                &mut out,
                &out_path,
            );
            assert_eq!(n.unwrap(), span);
            let got = std::fs::read(&out_path).unwrap();
            let want = &data[at as usize..(at + span) as usize];
            assert!(got[out_at..] == *want, "at {at}, out_at {out_at}");
            let past = planned(data.len() as u64 - 10, 100);
            let e = copy_range(&file, &src, &past, &mut pieces, &mut out, &out_path);
            assert!(e.unwrap_err().to_string().contains("truncated"));
        }
    }
}
