//! Planning: from validated headers and the caller's options, the byte ranges to read
//! and where each lands. Pure: no I/O, no GPU, so it is tested on its own.
//!
//! Per file, the selected tensors that load as raw bytes are grouped into *segments*:
//! runs of tensors whose aligned byte ranges touch or lie close together. A segment is
//! read as a whole into the file's raw destination buffer, which holds the segments
//! back to back; each tensor is a view into it. Tensors that need a dtype conversion
//! are read on their own, in chunks that each cover whole elements, through staging
//! memory, and converted into the file's converted-tensor area.

use std::path::PathBuf;

use crate::checkpoint::Checkpoint;
use crate::convert;
use crate::dtype::Dtype;
use crate::error::{Error, Result};
use crate::header::TensorInfo;

/// Options that shape a plan.
#[derive(Debug, Clone)]
pub struct PlanOptions {
    /// Largest single read, in bytes (a multiple of `align`).
    pub chunk_size: u64,
    /// Alignment of file offsets, lengths and destination offsets (4096 for O_DIRECT).
    pub align: u64,
    /// Two selected ranges closer than this are read as one (the gap is read too).
    pub coalesce_gap: u64,
    /// Whole-name glob patterns; a tensor is selected when it matches any. Empty: all.
    pub only: Vec<String>,
    /// Convert floating tensors to this dtype.
    pub dtype: Option<Dtype>,
    /// Alignment of converted tensors inside the converted area.
    pub tensor_align: u64,
    /// Row selections: a tensor matching a rule's pattern loads only those rows (the
    /// first rule that matches applies). Empty: every tensor whole.
    pub rows: Vec<RowRule>,
}

/// Which rows (indices along dimension 0) of a tensor to load. Rows are contiguous in
/// a safetensors file (C order), so only their bytes are read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rows {
    /// Rows `start..end`.
    Range {
        /// First row loaded.
        start: u64,
        /// One past the last row loaded.
        end: u64,
    },
    /// Part `rank` of `world` equal parts, as a tensor-parallel rank loads its shard of
    /// a column-parallel weight: rows `rank * d / world .. (rank + 1) * d / world` of
    /// `d` rows, where `d` must divide by `world`.
    Part {
        /// This part, from 0.
        rank: u64,
        /// Number of parts.
        world: u64,
    },
}

impl Rows {
    /// The rows `start..end` this selects of a tensor with `dim0` rows, or why none.
    pub fn resolve(&self, dim0: u64) -> std::result::Result<(u64, u64), String> {
        match *self {
            Rows::Range { start, end } if start <= end && end <= dim0 => Ok((start, end)),
            Rows::Range { start, end } => Err(format!(
                "rows {start}..{end} are not within its {dim0} rows"
            )),
            Rows::Part { rank, world } if rank >= world => Err(format!(
                "part {rank} of {world} does not exist (parts count from 0)"
            )),
            Rows::Part { world, .. } if !dim0.is_multiple_of(world) => Err(format!(
                "its {dim0} rows do not split into {world} equal parts"
            )),
            Rows::Part { rank, world } => {
                let per = dim0 / world;
                Ok((rank * per, (rank + 1) * per))
            }
        }
    }
}

impl std::fmt::Display for Rows {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Rows::Range { start, end } => write!(f, "{start}:{end}"),
            Rows::Part { rank, world } => write!(f, "{rank}/{world}"),
        }
    }
}

impl std::str::FromStr for Rows {
    type Err = String;

    /// `START:END` (rows START..END) or `RANK/WORLD` (part RANK of WORLD).
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        let num = |v: &str| {
            v.trim()
                .parse::<u64>()
                .map_err(|_| format!("'{v}' in '{s}' is not a whole number"))
        };
        if let Some((a, b)) = s.split_once(':') {
            Ok(Rows::Range {
                start: num(a)?,
                end: num(b)?,
            })
        } else if let Some((r, w)) = s.split_once('/') {
            match (num(r)?, num(w)?) {
                (_, 0) => Err(format!("'{s}': the number of parts must be at least 1")),
                (rank, world) => Ok(Rows::Part { rank, world }),
            }
        } else {
            Err(format!(
                "'{s}' is neither START:END (rows) nor RANK/WORLD (an equal part)"
            ))
        }
    }
}

/// Loads only the rows `rows` of the tensors whose whole name matches `pattern`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RowRule {
    /// Whole-name glob (`*`, `?`).
    pub pattern: String,
    /// The rows.
    pub rows: Rows,
}

impl std::str::FromStr for RowRule {
    type Err = String;

    /// `GLOB=START:END` or `GLOB=RANK/WORLD`.
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        let (pattern, rows) = s
            .rsplit_once('=')
            .ok_or_else(|| format!("'{s}' is not GLOB=START:END or GLOB=RANK/WORLD"))?;
        if pattern.is_empty() {
            return Err(format!("'{s}' names no tensors before '='"));
        }
        Ok(RowRule {
            pattern: pattern.to_string(),
            rows: rows.parse()?,
        })
    }
}

impl PlanOptions {
    /// Bytes of a staging slot: a conversion read covers at most `chunk_size` bytes of
    /// whole elements plus alignment slack on both ends.
    pub fn slot_len(&self) -> u64 {
        // A read holds at least one whole element (up to 8 bytes), however small the chunk.
        self.chunk_size.max(8) + 2 * self.align.max(1)
    }
}

impl Default for PlanOptions {
    fn default() -> Self {
        PlanOptions {
            chunk_size: 4 << 20,
            align: 4096,
            coalesce_gap: 64 << 10,
            only: Vec::new(),
            dtype: None,
            tensor_align: 256,
            rows: Vec::new(),
        }
    }
}

/// Where a planned tensor's bytes end up in its file's destination.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Place {
    /// At this offset of the file's raw buffer (bytes exactly as in the file).
    Raw(u64),
    /// At this offset of the file's converted area.
    Converted(u64),
}

/// One selected tensor.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PlannedTensor {
    /// Name.
    pub name: String,
    /// Dtype in the file.
    pub src_dtype: Dtype,
    /// Dtype once loaded.
    pub dtype: Dtype,
    /// Shape.
    pub shape: Vec<u64>,
    /// Absolute file offset of the tensor's first byte.
    pub file_offset: u64,
    /// Bytes in the file.
    pub src_len: u64,
    /// Bytes once loaded.
    pub len: u64,
    /// Where it lands.
    pub place: Place,
}

/// What a read's bytes are for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Target {
    /// Copy into the raw buffer at this offset.
    Raw {
        /// Destination offset in the file's raw buffer.
        dest: u64,
    },
    /// Convert elements `[first, first + count)` of tensor `tensor` (index into
    /// [`FilePlan::tensors`]); the read starts `skip` bytes before the first element.
    Convert {
        /// Tensor index in the file plan.
        tensor: usize,
        /// First element converted.
        first: u64,
        /// Number of elements converted.
        count: u64,
        /// Bytes between the read's start and the first element.
        skip: u64,
    },
}

/// One read request: `len` bytes at absolute file offset `offset`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReadOp {
    /// Absolute file offset (aligned).
    pub offset: u64,
    /// Length (aligned; may run past the end of the file, whose tail reads short).
    pub len: u64,
    /// Bytes of this read that must arrive (the rest is alignment slack past EOF).
    pub required: u64,
    /// What the bytes are for.
    pub target: Target,
}

/// The plan for one file.
#[derive(Debug, Clone)]
pub struct FilePlan {
    /// Position of the shard in the checkpoint.
    pub shard: usize,
    /// The file.
    pub path: PathBuf,
    /// Its length when validated.
    pub file_len: u64,
    /// Selected tensors, in file order.
    pub tensors: Vec<PlannedTensor>,
    /// Bytes of the raw destination buffer.
    pub raw_len: u64,
    /// Bytes of the converted area.
    pub converted_len: u64,
    /// The reads, in file order.
    pub reads: Vec<ReadOp>,
}

/// The plan for a whole checkpoint.
#[derive(Debug, Clone)]
pub struct Plan {
    /// One entry per file that has selected tensors.
    pub files: Vec<FilePlan>,
}

impl Plan {
    /// Tensor bytes the caller gets, after conversion.
    pub fn output_bytes(&self) -> u64 {
        self.files
            .iter()
            .flat_map(|f| &f.tensors)
            .map(|t| t.len)
            .sum()
    }

    /// Tensor bytes as stored in the files.
    pub fn tensor_bytes(&self) -> u64 {
        self.files
            .iter()
            .flat_map(|f| &f.tensors)
            .map(|t| t.src_len)
            .sum()
    }

    /// Bytes the reads request (tensor bytes plus alignment and coalescing slack).
    pub fn read_bytes(&self) -> u64 {
        self.files
            .iter()
            .flat_map(|f| &f.reads)
            .map(|r| r.len)
            .sum()
    }

    /// Number of selected tensors.
    pub fn tensor_count(&self) -> usize {
        self.files.iter().map(|f| f.tensors.len()).sum()
    }

    /// Bytes every read must deliver, all files together (what progress counts to).
    pub fn required_bytes(&self) -> u64 {
        self.files
            .iter()
            .flat_map(|f| &f.reads)
            .map(|r| r.required)
            .sum()
    }
}

/// Whole-name glob match: `*` matches any run of characters (dots included), `?` one
/// character; everything else matches itself.
pub fn glob_match(pattern: &str, name: &str) -> bool {
    let p: Vec<char> = pattern.chars().collect();
    let n: Vec<char> = name.chars().collect();
    let (mut pi, mut ni) = (0usize, 0usize);
    let mut star: Option<(usize, usize)> = None;
    while ni < n.len() {
        match p.get(pi) {
            Some('*') => {
                star = Some((pi, ni));
                pi += 1;
            }
            Some(&c) if c == '?' || Some(&c) == n.get(ni) => {
                pi += 1;
                ni += 1;
            }
            _ => match star {
                Some((sp, sn)) => {
                    pi = sp + 1;
                    ni = sn + 1;
                    star = Some((sp, sn + 1));
                }
                None => return false,
            },
        }
    }
    p.get(pi..)
        .is_some_and(|rest| rest.iter().all(|&c| c == '*'))
}

/// The rows `rule` selects of `t`: first row, one past the last, and the shape of the
/// selection; or why it selects none.
fn select_rows(
    t: &TensorInfo,
    rule: &RowRule,
) -> std::result::Result<(u64, u64, Vec<u64>), String> {
    let Some((&dim0, rest)) = t.shape.split_first() else {
        return Err(format!(
            "has no rows to select ({}): it is a scalar",
            rule.rows
        ));
    };
    let (first, end) = rule
        .rows
        .resolve(dim0)
        .map_err(|why| format!("cannot load rows {} of it: {why}", rule.rows))?;
    if dim0 > 0 && !t.len().is_multiple_of(dim0) {
        return Err(format!(
            "cannot load rows {} of it: a row of {} {} elements is not a whole number of bytes",
            rule.rows,
            rest.iter().product::<u64>(),
            t.dtype
        ));
    }
    let mut shape = Vec::with_capacity(t.shape.len());
    shape.push(end - first);
    shape.extend_from_slice(rest);
    Ok((first, end, shape))
}

fn align_down(x: u64, a: u64) -> u64 {
    x - x % a
}

fn align_up(x: u64, a: u64) -> Option<u64> {
    x.checked_add(a - 1).map(|y| align_down(y, a))
}

/// Plans the reads for `ckpt` under `opts`.
pub fn plan(ckpt: &Checkpoint, opts: &PlanOptions) -> Result<Plan> {
    plan_where(ckpt, opts, &|_| Some(None))
}

/// Plans the reads for the tensors of `ckpt` that `opts` selects and `pick` (by name)
/// does not leave out (`None`); `Some(Some(dtype))` converts that tensor to `dtype`
/// instead of `opts.dtype` (where it converts at all, as [`convert::output_dtype`]).
pub(crate) fn plan_where(
    ckpt: &Checkpoint,
    opts: &PlanOptions,
    pick: &dyn Fn(&str) -> Option<Option<Dtype>>,
) -> Result<Plan> {
    const MAX_ALIGN: u64 = 1 << 30;
    for (what, a) in [
        ("alignment", opts.align),
        ("tensor alignment", opts.tensor_align),
    ] {
        if !a.is_power_of_two() || a > MAX_ALIGN {
            return Err(Error::InvalidArgument(format!(
                "{what} {a} must be a power of two no larger than {MAX_ALIGN}"
            )));
        }
    }
    let align = opts.align;
    if opts.chunk_size > MAX_ALIGN {
        return Err(Error::InvalidArgument(format!(
            "chunk size {} is larger than {MAX_ALIGN}",
            opts.chunk_size
        )));
    }
    if opts.chunk_size == 0 || !opts.chunk_size.is_multiple_of(align) {
        return Err(Error::InvalidArgument(format!(
            "chunk size {} must be a non-zero multiple of the alignment {align}",
            opts.chunk_size
        )));
    }
    if let Some(d) = opts.dtype {
        if !d.is_conversion_target() {
            return Err(Error::InvalidArgument(format!(
                "cannot convert to {d}: the targets are F32, F16 and BF16"
            )));
        }
    }
    let tensor_align = opts.tensor_align;
    let too_big = |path: &std::path::Path, name: &str| {
        Error::tensor_err(
            path,
            name,
            "offsets overflow 64 bits once aligned or converted",
        )
    };
    let mut files = Vec::new();
    for (shard, h) in ckpt.shards.iter().enumerate() {
        let data_start = h.data_start();
        let mut tensors = Vec::new();
        let mut raw_len = 0u64;
        let mut converted_len = 0u64;
        let mut reads = Vec::new();
        // Current raw segment: aligned file range [seg_start, seg_end) and its dest base.
        let mut seg: Option<(u64, u64, u64)> = None;
        let flush = |seg: &mut Option<(u64, u64, u64)>, reads: &mut Vec<ReadOp>| {
            if let Some((start, end, dest)) = seg.take() {
                let mut off = start;
                while off < end {
                    let len = opts.chunk_size.min(end - off);
                    reads.push(ReadOp {
                        offset: off,
                        len,
                        required: h.file_len.min(off + len).saturating_sub(off),
                        target: Target::Raw {
                            dest: dest + (off - start),
                        },
                    });
                    off += len;
                }
            }
        };
        for t in &h.tensors {
            if !opts.only.is_empty() && !opts.only.iter().any(|p| glob_match(p, &t.name)) {
                continue;
            }
            let Some(requested) = pick(&t.name) else {
                continue;
            };
            let (file_offset, src_len, shape) =
                match opts.rows.iter().find(|r| glob_match(&r.pattern, &t.name)) {
                    None => (data_start + t.begin, t.len(), t.shape.clone()),
                    Some(rule) => {
                        let (first, end, shape) = select_rows(t, rule).map_err(|why| {
                            Error::InvalidArgument(format!(
                                "{}: tensor '{}': {why}",
                                h.path.display(),
                                t.name
                            ))
                        })?;
                        // A tensor of no rows has rows of no bytes.
                        let row_len = t
                            .len()
                            .checked_div(t.shape.first().copied().unwrap_or(0))
                            .unwrap_or(0);
                        (
                            data_start + t.begin + first * row_len,
                            (end - first) * row_len,
                            shape,
                        )
                    }
                };
            let out_dtype = convert::output_dtype(t.dtype, requested.or(opts.dtype));
            if out_dtype == t.dtype {
                let a0 = align_down(file_offset, align);
                let a1 = align_up(file_offset + src_len, align)
                    .ok_or_else(|| too_big(&h.path, &t.name))?;
                let place = match &mut seg {
                    Some((s, e, dest)) if a0 <= e.saturating_add(opts.coalesce_gap) => {
                        *e = (*e).max(a1);
                        Place::Raw(*dest + (file_offset - *s))
                    }
                    _ => {
                        flush(&mut seg, &mut reads);
                        let dest = raw_len;
                        seg = Some((a0, a1, dest));
                        Place::Raw(dest + (file_offset - a0))
                    }
                };
                tensors.push(PlannedTensor {
                    name: t.name.clone(),
                    src_dtype: t.dtype,
                    dtype: t.dtype,
                    shape,
                    file_offset,
                    src_len,
                    len: src_len,
                    place,
                });
                raw_len = seg.map(|(s, e, d)| d + (e - s)).unwrap_or(raw_len);
                continue;
            }
            // A converted tensor: chunks of whole elements, each read aligned.
            let esize = t.dtype.bits() / 8;
            let out_len = convert::converted_len(t.dtype, out_dtype, src_len);
            let place_off =
                align_up(converted_len, tensor_align).ok_or_else(|| too_big(&h.path, &t.name))?;
            converted_len = place_off
                .checked_add(out_len)
                .ok_or_else(|| too_big(&h.path, &t.name))?;
            let idx = tensors.len();
            tensors.push(PlannedTensor {
                name: t.name.clone(),
                src_dtype: t.dtype,
                dtype: out_dtype,
                shape,
                file_offset,
                src_len,
                len: out_len,
                place: Place::Converted(place_off),
            });
            let numel = src_len.checked_div(esize).unwrap_or(0);
            // Whole elements per read; the alignment slack fits in PlanOptions::slot_len.
            let per_chunk = (opts.chunk_size / esize.max(1)).max(1);
            let mut first = 0u64;
            while first < numel {
                let count = per_chunk.min(numel - first);
                let b0 = file_offset + first * esize;
                let b1 = b0 + count * esize;
                let r0 = align_down(b0, align);
                let r1 = align_up(b1, align).ok_or_else(|| too_big(&h.path, &t.name))?;
                reads.push(ReadOp {
                    offset: r0,
                    len: r1 - r0,
                    required: b1 - r0,
                    target: Target::Convert {
                        tensor: idx,
                        first,
                        count,
                        skip: b0 - r0,
                    },
                });
                first += count;
            }
        }
        flush(&mut seg, &mut reads);
        if tensors.is_empty() {
            continue;
        }
        reads.sort_by_key(|r| r.offset);
        files.push(FilePlan {
            shard,
            path: h.path.clone(),
            file_len: h.file_len,
            tensors,
            raw_len,
            converted_len,
            reads,
        });
    }
    Ok(Plan { files })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn glob_matches_whole_names() {
        assert!(glob_match(
            "model.layers.*.mlp.*",
            "model.layers.3.mlp.up_proj.weight"
        ));
        assert!(!glob_match(
            "model.layers.*.mlp",
            "model.layers.3.mlp.up_proj.weight"
        ));
        assert!(glob_match("*", ""));
        assert!(glob_match("a?c", "abc"));
        assert!(!glob_match("a?c", "ac"));
        assert!(glob_match("*.weight", "lm_head.weight"));
        assert!(!glob_match("lm_head", "lm_head.weight"));
        assert!(glob_match("**a*b", "xxaxxb"));
    }
}
