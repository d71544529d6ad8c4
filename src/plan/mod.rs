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

use std::path::{Path, PathBuf};

use crate::checkpoint::Checkpoint;
use crate::convert;
use crate::dtype::Dtype;
use crate::error::{quoted, Error, Result};
use crate::header::{Header, TensorInfo};

mod slice;

use slice::{select, Selection};
pub use slice::{Slice, SliceRule};

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
    check_options(opts)?;
    let mut files = Vec::new();
    for (shard, h) in ckpt.shards.iter().enumerate() {
        let mut file = FileBuilder::new(h, opts);
        for t in &h.tensors {
            if !opts.only.is_empty() && !opts.only.iter().any(|p| glob_match(p, &t.name)) {
                continue;
            }
            let Some(requested) = pick(&t.name) else {
                continue;
            };
            file.add(t, requested.or(opts.dtype))?;
        }
        if let Some(f) = file.finish(shard) {
            files.push(f);
        }
    }
    Ok(Plan { files })
}

/// Refuses options no plan can follow: alignments, chunk size, target dtype, slices.
fn check_options(opts: &PlanOptions) -> Result<()> {
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
    if opts.chunk_size > MAX_ALIGN {
        return Err(Error::InvalidArgument(format!(
            "chunk size {} is larger than {MAX_ALIGN}",
            opts.chunk_size
        )));
    }
    if opts.chunk_size == 0 || !opts.chunk_size.is_multiple_of(opts.align) {
        return Err(Error::InvalidArgument(format!(
            "chunk size {} must be a non-zero multiple of the alignment {}",
            opts.chunk_size, opts.align
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
    Ok(())
}

/// The bytes of tensor `t` of the file at `path` that a load reads under the slice
/// rules of `opts`: (file offset, length, shape once loaded, and for a column
/// selection its (rows, stride, start, keep)).
type Extent = (u64, u64, Vec<u64>, Option<(u64, u64, u64, u64)>);

fn extent(path: &Path, data_start: u64, t: &TensorInfo, opts: &PlanOptions) -> Result<Extent> {
    let in_err = |why: String| {
        Error::InvalidArgument(format!(
            "{}: tensor {}: {why}",
            path.display(),
            quoted(&t.name)
        ))
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
    Ok(match selection {
        None => (tensor_offset, t.len(), t.shape.clone(), None),
        Some(Selection::Rows { offset, len, shape }) => (tensor_offset + offset, len, shape, None),
        Some(Selection::Columns {
            rows,
            stride,
            start,
            keep,
            shape,
        }) => (
            tensor_offset,
            rows.checked_mul(keep)
                .ok_or_else(|| too_big(path, &t.name))?,
            shape,
            Some((rows, stride, start, keep)),
        ),
    })
}

/// The error of a tensor whose offsets do not fit in 64 bits.
fn too_big(path: &Path, name: &str) -> Error {
    Error::tensor_err(
        path,
        name,
        "offsets overflow 64 bits once aligned or converted",
    )
}

/// One file's plan as its tensors are added in file order.
struct FileBuilder<'a> {
    h: &'a Header,
    opts: &'a PlanOptions,
    tensors: Vec<PlannedTensor>,
    raw_len: u64,
    converted_len: u64,
    reads: Vec<ReadOp>,
    /// Current raw segment: aligned file range [start, end) and its destination base.
    seg: Option<(u64, u64, u64)>,
}

impl<'a> FileBuilder<'a> {
    fn new(h: &'a Header, opts: &'a PlanOptions) -> Self {
        FileBuilder {
            h,
            opts,
            tensors: Vec::new(),
            raw_len: 0,
            converted_len: 0,
            reads: Vec::new(),
            seg: None,
        }
    }

    /// Adds tensor `t`, converted to `dtype` where it converts.
    fn add(&mut self, t: &TensorInfo, dtype: Option<Dtype>) -> Result<()> {
        let (file_offset, src_len, shape, columns) =
            extent(&self.h.path, self.h.data_start(), t, self.opts)?;
        let out_dtype = convert::output_dtype(t.dtype, dtype);
        let mut planned = PlannedTensor {
            name: t.name.clone(),
            src_dtype: t.dtype,
            dtype: out_dtype,
            shape,
            file_offset,
            src_len,
            len: src_len,
            place: Place::Raw(0),
        };
        if out_dtype == t.dtype && columns.is_none() {
            planned.place = self.raw_place(file_offset, src_len, &t.name)?;
            self.tensors.push(planned);
            self.raw_len = self
                .seg
                .map(|(s, e, d)| d + (e - s))
                .unwrap_or(self.raw_len);
            return Ok(());
        }
        // A converted tensor, or selected columns (converted or not): chunks of whole
        // elements through staging, each read aligned.
        let too_big = || too_big(&self.h.path, &t.name);
        let esize = t.dtype.bits() / 8;
        let out_len = convert::converted_len(t.dtype, out_dtype, src_len);
        let place_off = align_up(self.converted_len, self.opts.tensor_align).ok_or_else(too_big)?;
        self.converted_len = place_off.checked_add(out_len).ok_or_else(too_big)?;
        planned.len = out_len;
        planned.place = Place::Converted(place_off);
        let idx = self.tensors.len();
        self.tensors.push(planned);
        let (reads, opts) = (&mut self.reads, self.opts);
        let done = match columns {
            None => {
                let count = src_len.checked_div(esize).unwrap_or(0);
                element_reads(reads, opts, idx, file_offset, 0, count, esize)
            }
            Some(c) => column_reads(reads, opts, idx, file_offset, c, esize),
        };
        done.ok_or_else(too_big)
    }

    /// The place of a raw tensor at `file_offset` of `len` bytes: in the current raw
    /// segment when near enough, else at the start of a new one.
    fn raw_place(&mut self, file_offset: u64, len: u64, name: &str) -> Result<Place> {
        let (align, gap) = (self.opts.align, self.opts.coalesce_gap);
        let a0 = align_down(file_offset, align);
        let a1 = align_up(file_offset + len, align).ok_or_else(|| too_big(&self.h.path, name))?;
        if let Some((s, e, dest)) = &mut self.seg {
            if !self.opts.split_at_tensors && a0 <= e.saturating_add(gap) {
                *e = (*e).max(a1);
                return Ok(Place::Raw(*dest + (file_offset - *s)));
            }
        }
        self.flush();
        let dest = self.raw_len;
        self.seg = Some((a0, a1, dest));
        Ok(Place::Raw(dest + (file_offset - a0)))
    }

    /// Cuts the current raw segment into reads of at most a chunk.
    fn flush(&mut self) {
        let Some((start, end, dest)) = self.seg.take() else {
            return;
        };
        let mut off = start;
        while off < end {
            let len = self.opts.chunk_size.min(end - off);
            self.reads.push(ReadOp {
                offset: off,
                len,
                required: self.h.file_len.min(off + len).saturating_sub(off),
                target: Target::Raw {
                    dest: dest + (off - start),
                },
            });
            off += len;
        }
    }

    /// The file's plan (shard number `shard`), or none when no tensor was added.
    fn finish(mut self, shard: usize) -> Option<FilePlan> {
        self.flush();
        if self.tensors.is_empty() {
            return None;
        }
        self.reads.sort_by_key(|r| r.offset);
        Some(FilePlan {
            shard,
            path: self.h.path.clone(),
            file_len: self.h.file_len,
            tensors: self.tensors,
            raw_len: self.raw_len,
            converted_len: self.converted_len,
            reads: self.reads,
        })
    }
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
