//! Planning: from validated headers and the caller's options, the byte ranges to read
//! and where each lands. Pure: no I/O, no GPU, so it is tested on its own.
//!
//! Per file, the selected tensors that load as raw bytes are grouped into *segments*:
//! runs of tensors whose aligned byte ranges touch or lie close together. A segment is
//! read as a whole into the file's raw destination buffer, which holds the segments
//! back to back; each tensor is a view into it. Tensors that need a dtype conversion
//! are read on their own, in chunks that each cover whole elements, through staging
//! memory, and converted into the file's converted-tensor area.
//!
//! A [`SliceRule`] narrows a tensor to some of its rows (dimension 0: contiguous bytes,
//! planned like a smaller tensor) or columns (dimension 1: planned through staging like
//! a conversion, reading several whole rows at a time and gathering their selected
//! columns, or each row's selected bytes alone when a row is longer than a read).

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
    /// Row and column selections: a tensor matching a rule's pattern loads only that
    /// slice of dimension 0 or 1 (the first rule that matches applies). Empty: every
    /// tensor whole.
    pub slices: Vec<SliceRule>,
    /// Never read two tensors in one read: each raw tensor is a segment of its own
    /// (`coalesce_gap` then joins nothing), so that with `align` 1 every read lies
    /// within one tensor, as a load into each tensor's own memory wants.
    pub split_at_tensors: bool,
}

/// Which indices along one dimension of a tensor to load.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Slice {
    /// Indices `start..end`.
    Range {
        /// First index loaded.
        start: u64,
        /// One past the last index loaded.
        end: u64,
    },
    /// Part `rank` of `world` equal parts, as a tensor-parallel rank loads its shard:
    /// indices `rank * d / world .. (rank + 1) * d / world` of `d`, where `d` must
    /// divide by `world`.
    Part {
        /// This part, from 0.
        rank: u64,
        /// Number of parts.
        world: u64,
    },
}

impl Slice {
    /// The indices `start..end` this selects of a dimension of size `size`, or why
    /// none.
    pub fn resolve(&self, size: u64) -> std::result::Result<(u64, u64), String> {
        match *self {
            Slice::Range { start, end } if start <= end && end <= size => Ok((start, end)),
            Slice::Range { start, end } if start > end => {
                Err(format!("{start}..{end} ends before it starts"))
            }
            Slice::Range { start, end } => {
                Err(format!("{start}..{end} is not within its size {size}"))
            }
            Slice::Part { rank, world } if rank >= world => Err(format!(
                "part {rank} of {world} does not exist (parts count from 0)"
            )),
            Slice::Part { world, .. } if !size.is_multiple_of(world) => Err(format!(
                "its size {size} does not split into {world} equal parts"
            )),
            Slice::Part { rank, world } => {
                let per = size / world;
                Ok((rank * per, (rank + 1) * per))
            }
        }
    }
}

impl std::fmt::Display for Slice {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Slice::Range { start, end } => write!(f, "{start}:{end}"),
            Slice::Part { rank, world } => write!(f, "{rank}/{world}"),
        }
    }
}

impl std::str::FromStr for Slice {
    type Err = String;

    /// `START:END` (indices START..END) or `RANK/WORLD` (part RANK of WORLD).
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        let num = |v: &str| {
            v.trim()
                .parse::<u64>()
                .map_err(|_| format!("'{v}' in '{s}' is not a whole number"))
        };
        if let Some((a, b)) = s.split_once(':') {
            Ok(Slice::Range {
                start: num(a)?,
                end: num(b)?,
            })
        } else if let Some((r, w)) = s.split_once('/') {
            match (num(r)?, num(w)?) {
                (_, 0) => Err(format!("'{s}': the number of parts must be at least 1")),
                (rank, world) if rank >= world => Err(format!(
                    "'{s}': part {rank} of {world} does not exist (parts count from 0)"
                )),
                (rank, world) => Ok(Slice::Part { rank, world }),
            }
        } else {
            Err(format!(
                "'{s}' is neither START:END (a range) nor RANK/WORLD (an equal part)"
            ))
        }
    }
}

/// Loads only `slice` of dimension `dim` (0: rows, 1: columns) of the tensors whose
/// whole name matches `pattern`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SliceRule {
    /// Whole-name glob (`*`, `?`).
    pub pattern: String,
    /// The dimension sliced: 0 or 1.
    pub dim: usize,
    /// The indices kept.
    pub slice: Slice,
}

impl SliceRule {
    /// `GLOB=START:END` or `GLOB=RANK/WORLD`, for dimension `dim`.
    pub fn parse(s: &str, dim: usize) -> std::result::Result<SliceRule, String> {
        let (pattern, slice) = s
            .rsplit_once('=')
            .ok_or_else(|| format!("'{s}' is not GLOB=START:END or GLOB=RANK/WORLD"))?;
        if pattern.is_empty() {
            return Err(format!("'{s}' names no tensors before '='"));
        }
        Ok(SliceRule {
            pattern: pattern.to_string(),
            dim,
            slice: slice.parse()?,
        })
    }

    /// "rows 1/4", "columns 0:8": what the rule selects, in words.
    pub(crate) fn what(&self) -> String {
        match self.dim {
            0 => format!("rows {}", self.slice),
            1 => format!("columns {}", self.slice),
            d => format!("{} of dimension {d}", self.slice),
        }
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
            slices: Vec::new(),
            split_at_tensors: false,
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
        /// For a column selection read row by row: where the elements lie in the read.
        gather: Option<Gather>,
    },
}

/// Rows of a column selection read whole: from the first element on, the read holds
/// `rows` rows `stride` bytes apart, of which the first `keep` bytes each are the
/// selected columns. [`gather_in_place`] moves them together, so that the `count`
/// elements then lie back to back from the first on, as in any other read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Gather {
    /// Rows in the read.
    pub rows: u64,
    /// Bytes from one row's selected columns to the next's.
    pub stride: u64,
    /// Bytes of selected columns per row.
    pub keep: u64,
}

/// Moves the selected columns of `g`'s rows, the first starting at `skip` in `buf`,
/// together: afterwards `buf[skip..skip + rows * keep]` holds them back to back.
pub fn gather_in_place(buf: &mut [u8], skip: u64, g: &Gather) -> Result<()> {
    let bad = || Error::InvalidArgument(format!("gathering {g:?} at {skip}: outside the buffer"));
    let at = |x: u64| usize::try_from(x).map_err(|_| bad());
    let end = g
        .rows
        .checked_sub(1)
        .and_then(|r| r.checked_mul(g.stride))
        .and_then(|x| x.checked_add(skip)?.checked_add(g.keep));
    let fits = match end {
        Some(e) => e <= buf.len() as u64,
        None => g.rows == 0,
    };
    if !fits || g.keep > g.stride {
        return Err(bad());
    }
    for r in 1..g.rows {
        let from = at(skip + r * g.stride)?;
        buf.copy_within(from..from + at(g.keep)?, at(skip + r * g.keep)?);
    }
    Ok(())
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

/// What a slice rule selects of a tensor.
enum Selection {
    /// Contiguous bytes: `len` bytes from `offset` into the tensor (whole rows).
    Rows {
        offset: u64,
        len: u64,
        shape: Vec<u64>,
    },
    /// The same `keep` bytes, `start` bytes into each of `rows` rows of `stride`.
    Columns {
        rows: u64,
        stride: u64,
        start: u64,
        keep: u64,
        shape: Vec<u64>,
    },
}

/// What `rule` selects of `t`, or why it cannot.
fn select(t: &TensorInfo, rule: &SliceRule) -> std::result::Result<Selection, String> {
    let what = rule.what();
    let cannot = |why: &dyn std::fmt::Display| format!("cannot load {what} of it: {why}");
    match rule.dim {
        0 => {
            let Some((&d0, rest)) = t.shape.split_first() else {
                return Err(cannot(&"it is a scalar"));
            };
            let (a, b) = rule.slice.resolve(d0).map_err(|w| cannot(&w))?;
            if d0 > 0 && !t.len().is_multiple_of(d0) {
                return Err(cannot(&format_args!(
                    "a row of {} {} elements is not a whole number of bytes",
                    rest.iter().product::<u64>(),
                    t.dtype
                )));
            }
            // A tensor of no rows has rows of no bytes.
            let row = t.len().checked_div(d0).unwrap_or(0);
            let mut shape = t.shape.clone();
            if let Some(d) = shape.first_mut() {
                *d = b - a;
            }
            Ok(Selection::Rows {
                offset: a * row,
                len: (b - a) * row,
                shape,
            })
        }
        1 => {
            let [d0, d1, inner @ ..] = t.shape.as_slice() else {
                return Err(cannot(&"it has fewer than two dimensions"));
            };
            let (a, b) = rule.slice.resolve(*d1).map_err(|w| cannot(&w))?;
            if !t.dtype.bits().is_multiple_of(8) {
                return Err(cannot(&format_args!(
                    "columns of {} (elements smaller than a byte) are not supported",
                    t.dtype
                )));
            }
            // Bytes per column, per row and selected. They fit 64 bits unless the
            // tensor is empty (a zero dimension), whose rows then hold nothing to read.
            let fits = |x: Option<u64>| {
                x.or_else(|| t.is_empty().then_some(0))
                    .ok_or_else(|| cannot(&"its rows are too large"))
            };
            let unit = fits(
                inner
                    .iter()
                    .try_fold(t.dtype.bits() / 8, |acc, &d| acc.checked_mul(d)),
            )?;
            let stride = fits(d1.checked_mul(unit))?;
            let start = fits(a.checked_mul(unit))?;
            let keep = fits((b - a).checked_mul(unit))?;
            let mut shape = t.shape.clone();
            if let Some(d) = shape.get_mut(1) {
                *d = b - a;
            }
            if *d0 <= 1 || keep == stride {
                // One row, or every column: contiguous bytes, read like rows.
                return Ok(Selection::Rows {
                    offset: if *d0 == 0 { 0 } else { start },
                    len: fits(d0.checked_mul(keep))?,
                    shape,
                });
            }
            Ok(Selection::Columns {
                rows: *d0,
                stride,
                start,
                keep,
                shape,
            })
        }
        // Refused with the options, before any tensor.
        d => Err(format!(
            "{} of dimension {d} cannot be selected",
            rule.slice
        )),
    }
}

/// The aligned read whose bytes `b` (from the first element to the end of the last)
/// convert elements `first..first + count` of tensor `tensor`. `None` on overflow.
fn convert_read(
    b: std::ops::Range<u64>,
    align: u64,
    tensor: usize,
    first: u64,
    count: u64,
    gather: Option<Gather>,
) -> Option<ReadOp> {
    let r0 = align_down(b.start, align);
    let r1 = align_up(b.end, align)?;
    Some(ReadOp {
        offset: r0,
        len: r1 - r0,
        required: b.end - r0,
        target: Target::Convert {
            tensor,
            first,
            count,
            skip: b.start - r0,
            gather,
        },
    })
}

/// Pushes the reads converting elements `first..first + numel` of tensor `tensor`
/// (index in its file plan), which lie back to back from file offset `at`: chunks of
/// whole elements, each read aligned. `None` when an offset overflows.
fn element_reads(
    reads: &mut Vec<ReadOp>,
    opts: &PlanOptions,
    tensor: usize,
    at: u64,
    first: u64,
    numel: u64,
    esize: u64,
) -> Option<()> {
    // Whole elements per read; the alignment slack fits in PlanOptions::slot_len.
    let per_chunk = (opts.chunk_size / esize.max(1)).max(1);
    let mut done = 0u64;
    while done < numel {
        let count = per_chunk.min(numel - done);
        let b0 = at.checked_add(done * esize)?;
        let b1 = b0.checked_add(count * esize)?;
        reads.push(convert_read(
            b0..b1,
            opts.align,
            tensor,
            first + done,
            count,
            None,
        )?);
        done += count;
    }
    Some(())
}

/// Pushes the reads of the selected columns of tensor `tensor`, which starts at file
/// offset `at`: `keep` bytes, `start` bytes into each of `rows` rows of `stride`
/// bytes. Rows that fit a chunk are read several at a time, from the first row's
/// selected bytes to the last's, and gathered in staging; longer rows are read as
/// their selected bytes alone. `None` when an offset overflows.
fn column_reads(
    reads: &mut Vec<ReadOp>,
    opts: &PlanOptions,
    tensor: usize,
    at: u64,
    (rows, stride, start, keep): (u64, u64, u64, u64),
    esize: u64,
) -> Option<()> {
    let per_row = keep / esize.max(1);
    if per_row == 0 || rows == 0 {
        return Some(());
    }
    let row_at = |r: u64| r.checked_mul(stride)?.checked_add(at)?.checked_add(start);
    if stride > opts.chunk_size {
        for r in 0..rows {
            element_reads(reads, opts, tensor, row_at(r)?, r * per_row, per_row, esize)?;
        }
        return Some(());
    }
    let per_read = opts.chunk_size / stride.max(1);
    let mut r = 0u64;
    while r < rows {
        let n = per_read.min(rows - r);
        let b0 = row_at(r)?;
        let b1 = row_at(r + n - 1)?.checked_add(keep)?;
        let gather = (n > 1).then_some(Gather {
            rows: n,
            stride,
            keep,
        });
        reads.push(convert_read(
            b0..b1,
            opts.align,
            tensor,
            r * per_row,
            n * per_row,
            gather,
        )?);
        r += n;
    }
    Some(())
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
    if let Some(r) = opts.slices.iter().find(|r| r.dim > 1) {
        return Err(Error::InvalidArgument(format!(
            "'{}': cannot load {} of dimension {}: only rows (0) and columns (1) can be \
             selected",
            r.pattern, r.slice, r.dim
        )));
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
            let in_err = |why: String| {
                Error::InvalidArgument(format!("{}: tensor '{}': {why}", h.path.display(), t.name))
            };
            let mut rules = opts
                .slices
                .iter()
                .filter(|r| glob_match(&r.pattern, &t.name));
            let selection = match rules.next() {
                None => None,
                Some(rule) => {
                    // Rules of one dimension may overlap (the first applies); rows and
                    // columns both matching one tensor is a mistake to report.
                    if let Some(other) = rules.find(|r| r.dim != rule.dim) {
                        return Err(in_err(format!(
                            "it matches both '{}' ({}) and '{}' ({}): a tensor takes rows or \
                             columns, not both",
                            rule.pattern,
                            rule.what(),
                            other.pattern,
                            other.what()
                        )));
                    }
                    Some(select(t, rule).map_err(in_err)?)
                }
            };
            let tensor_offset = data_start + t.begin;
            let (file_offset, src_len, shape, columns) = match selection {
                None => (tensor_offset, t.len(), t.shape.clone(), None),
                Some(Selection::Rows { offset, len, shape }) => {
                    (tensor_offset + offset, len, shape, None)
                }
                Some(Selection::Columns {
                    rows,
                    stride,
                    start,
                    keep,
                    shape,
                }) => (
                    tensor_offset,
                    rows.checked_mul(keep)
                        .ok_or_else(|| too_big(&h.path, &t.name))?,
                    shape,
                    Some((rows, stride, start, keep)),
                ),
            };
            let out_dtype = convert::output_dtype(t.dtype, requested.or(opts.dtype));
            if out_dtype == t.dtype && columns.is_none() {
                let a0 = align_down(file_offset, align);
                let a1 = align_up(file_offset + src_len, align)
                    .ok_or_else(|| too_big(&h.path, &t.name))?;
                let place = match &mut seg {
                    Some((s, e, dest))
                        if !opts.split_at_tensors && a0 <= e.saturating_add(opts.coalesce_gap) =>
                    {
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
            // A converted tensor, or selected columns (converted or not): chunks of
            // whole elements through staging, each read aligned.
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
            let planned = match columns {
                None => element_reads(
                    &mut reads,
                    opts,
                    idx,
                    file_offset,
                    0,
                    src_len.checked_div(esize).unwrap_or(0),
                    esize,
                ),
                Some((rows, stride, start, keep)) => column_reads(
                    &mut reads,
                    opts,
                    idx,
                    file_offset,
                    (rows, stride, start, keep),
                    esize,
                ),
            };
            planned.ok_or_else(|| too_big(&h.path, &t.name))?;
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
    fn gather_moves_the_kept_bytes_together_and_refuses_what_does_not_fit() {
        let mut buf: Vec<u8> = (0..40).collect();
        let g = Gather {
            rows: 3,
            stride: 10,
            keep: 4,
        };
        gather_in_place(&mut buf, 5, &g).unwrap();
        assert_eq!(&buf[5..17], &[5, 6, 7, 8, 15, 16, 17, 18, 25, 26, 27, 28]);
        assert_eq!(&buf[..5], &[0, 1, 2, 3, 4]);
        // The last row's kept bytes end exactly at the buffer's end.
        let mut exact: Vec<u8> = (0..29).collect();
        gather_in_place(&mut exact, 5, &g).unwrap();
        for (skip, g) in [
            (6, g),
            (0, Gather { keep: 11, ..g }),
            (
                0,
                Gather {
                    rows: 3,
                    stride: 1 << 63,
                    keep: 1,
                },
            ),
            (
                u64::MAX,
                Gather {
                    rows: 2,
                    stride: 1,
                    keep: 1,
                },
            ),
        ] {
            let mut short: Vec<u8> = (0..29).collect();
            assert!(
                gather_in_place(&mut short, skip, &g).is_err(),
                "{skip} {g:?}"
            );
            assert_eq!(short, (0..29).collect::<Vec<u8>>(), "{skip} {g:?} wrote");
        }
        let mut none = vec![1u8; 4];
        let g = Gather {
            rows: 0,
            stride: u64::MAX,
            keep: 3,
        };
        gather_in_place(&mut none, u64::MAX, &g).unwrap();
    }

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
