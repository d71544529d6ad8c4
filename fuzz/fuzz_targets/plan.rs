//! Header bytes → `Header::parse_prefix` → `plan::plan`, with options taken from the
//! input.
//!
//! Input layout: 16 option bytes (see `options`; `make_seeds.py` writes them), then a
//! whole safetensors file.
//!
//! Contract: any options give a plan or an error, never a panic. Options that break
//! the basic rules (zero chunk, chunk not a multiple of the alignment, a dtype that is
//! not a conversion target) are refused; options a loader really uses are not. On
//! `Ok`: exactly the tensors the patterns select are
//! planned, in file order; every read is aligned, asks only for bytes inside the file
//! (its aligned tail may run past the end, never past the aligned end); raw reads are
//! disjoint and deliver every byte of every raw tensor exactly once, to the place the
//! tensor says; convert reads cover each converted tensor's elements exactly once;
//! destinations stay inside their buffers and do not overlap. With a row or column rule
//! (option byte 2, bit 3): the plan is refused, with InvalidArgument, exactly when a
//! selected tensor the rule matches cannot give that slice (a scalar, too few
//! dimensions, indices out of range, parts that do not divide the dimension, rows that
//! are not whole bytes, columns of sub-byte elements); otherwise each such tensor is
//! planned as exactly the slice's bytes, with its shape: rows as one range, columns
//! through staging, each read holding one row's selected elements or whole rows whose
//! selected columns are gathered.
#![no_main]

use std::path::{Path, PathBuf};

use libfuzzer_sys::fuzz_target;
use tensorstream::plan::{
    plan, FilePlan, Gather, Place, PlanOptions, PlannedTensor, Slice, SliceRule, Target,
};
use tensorstream::TensorInfo;
use tensorstream::{convert, Checkpoint, Dtype, ErrorKind, Header};

const OPTION_BYTES: usize = 16;

fuzz_target!(|data: &[u8]| {
    let Some((o, file)) = data.split_first_chunk::<OPTION_BYTES>() else {
        return;
    };
    let Ok(h) = Header::parse_prefix(Path::new("0.safetensors"), file, file.len() as u64) else {
        return;
    };
    let opts = options(o, &h);
    let mut shards = vec![h.clone()];
    if o[2] & 4 != 0 {
        let mut second = h.clone();
        second.path = PathBuf::from("1.safetensors");
        shards.push(second);
    }
    let ckpt = Checkpoint {
        path: PathBuf::from("."),
        index: None,
        index_metadata: None,
        shards,
    };

    // Options that break a rule any plan must enforce: refused, with InvalidArgument.
    let align = opts.align.max(1);
    let invalid = opts.chunk_size == 0
        || !opts.chunk_size.is_multiple_of(align)
        || opts.dtype.is_some_and(|d| !d.is_conversion_target());
    // Options a loader really uses: accepted. Between the two (alignments that are not
    // powers of two or are huge, chunks of gigabytes), refusing is allowed.
    let ordinary = |a: u64| a.is_power_of_two() && a <= 1 << 20;
    let ordinary = !invalid
        && ordinary(opts.align)
        && ordinary(opts.tensor_align)
        && opts.chunk_size <= 1 << 26;
    // A row rule some selected tensor it matches cannot satisfy.
    let unsatisfied = h.tensors.iter().find(|t| {
        (opts.only.is_empty() || opts.only.iter().any(|p| glob(p, &t.name)))
            && rule_of(&opts, &t.name).is_some_and(|r| slice_of(t, r).is_none())
    });
    let p = match plan(&ckpt, &opts) {
        Ok(p) => p,
        Err(e) => {
            assert_eq!(
                e.kind(),
                ErrorKind::InvalidArgument,
                "{opts:?} refused: {e}"
            );
            assert!(
                !ordinary || unsatisfied.is_some(),
                "ordinary options {opts:?} refused: {e}"
            );
            return;
        }
    };
    assert!(!invalid, "invalid options {opts:?} accepted");
    assert!(
        unsatisfied.is_none(),
        "{:?} of {unsatisfied:?} accepted",
        opts.slices
    );

    let selected: Vec<_> = h
        .tensors
        .iter()
        .filter(|t| opts.only.is_empty() || opts.only.iter().any(|p| glob(p, &t.name)))
        .collect();
    if selected.is_empty() {
        assert!(p.files.is_empty());
        return;
    }
    assert_eq!(p.files.len(), ckpt.shards.len());
    for (i, f) in p.files.iter().enumerate() {
        assert_eq!(f.shard, i);
        assert_eq!(f.path, ckpt.shards[i].path);
        assert_eq!(f.file_len, h.file_len);
        let names: Vec<&str> = f.tensors.iter().map(|t| t.name.as_str()).collect();
        let want: Vec<&str> = selected.iter().map(|t| t.name.as_str()).collect();
        assert_eq!(names, want, "selection with {:?}", opts.only);
        check_file(f, &h, &opts);
    }
});

/// Options from the 16 option bytes; patterns are made from the header's names.
fn options(o: &[u8; OPTION_BYTES], h: &Header) -> PlanOptions {
    let align = match o[0] & 0x0f {
        s @ 0..=12 => 1u64 << s,
        13 => 3,
        14 => 1 << 63,
        _ => u64::MAX,
    };
    let align = if o[0] & 0x80 != 0 { 0 } else { align };
    let mut chunk_size = align.max(1).saturating_mul(1 + u64::from(o[1] % 64));
    if o[2] & 1 != 0 {
        chunk_size = chunk_size.wrapping_add(1);
    }
    if o[2] & 2 != 0 {
        chunk_size = 0;
    }
    let coalesce_gap = match o[3] {
        0 => 0,
        1 => u64::MAX,
        _ => u64::from(u16::from_le_bytes([o[4], o[5]])),
    };
    let dtype = (o[6] >= 128).then(|| Dtype::ALL[usize::from(o[6]) % Dtype::ALL.len()]);
    let tensor_align = match o[7] {
        0 => 0,
        0x7f => u64::MAX,
        b if b & 0x80 != 0 => 1 << (b & 63),
        b => 1 << (b % 12),
    };
    let mut only = Vec::new();
    for i in 0..usize::from(o[8] % 4) {
        let seed = o[9 + i];
        let Some(t) = h.tensors.get(usize::from(seed) % h.tensors.len().max(1)) else {
            only.push("*".to_string());
            continue;
        };
        // The name with some characters replaced by wildcards or dropped.
        let mask = u32::from_le_bytes([o[12], o[13], o[14], o[15]]).rotate_left(u32::from(seed));
        let mut pat = String::new();
        for (j, c) in t.name.chars().enumerate() {
            match (mask >> (j % 32)) & 7 {
                0 => pat.push('*'),
                1 => pat.push('?'),
                2 if seed & 1 != 0 => {}
                _ => pat.push(c),
            }
        }
        only.push(pat);
    }
    // A row or column rule: for one tensor's name, or for every tensor.
    let mut slices = Vec::new();
    if o[2] & 8 != 0 {
        let pattern = match h.tensors.get(usize::from(o[10]) % h.tensors.len().max(1)) {
            Some(t) if o[10] & 0x80 == 0 => t.name.clone(),
            _ => "*".to_string(),
        };
        let slice = if o[11] & 1 == 0 {
            let start = u64::from(o[4] % 16);
            Slice::Range {
                start,
                end: start + u64::from(o[5] % 16),
            }
        } else {
            Slice::Part {
                rank: u64::from(o[11] >> 1 & 7),
                world: 1 + u64::from(o[11] >> 4 & 7),
            }
        };
        let dim = usize::from(o[11] >> 7);
        slices.push(SliceRule {
            pattern,
            dim,
            slice,
        });
    }
    PlanOptions {
        chunk_size,
        align,
        coalesce_gap,
        only,
        dtype,
        tensor_align,
        slices,
        split_at_tensors: o[2] & 16 != 0,
    }
}

/// The first slice rule that matches `name`.
fn rule_of<'a>(opts: &'a PlanOptions, name: &str) -> Option<&'a SliceRule> {
    opts.slices.iter().find(|r| glob(&r.pattern, name))
}

/// What a rule selects of a tensor, worked out here on its own.
struct Expect {
    /// File offset of the first byte read for it (from the data section).
    begin: u64,
    /// Its selected bytes.
    len: u64,
    shape: Vec<u64>,
    /// For columns: rows, bytes per row, selected bytes' start in a row and length.
    cols: Option<(u64, u64, u64, u64)>,
}

/// What `rule` selects of `t`; `None` when it cannot be satisfied.
fn slice_of(t: &TensorInfo, rule: &SliceRule) -> Option<Expect> {
    let d = *t.shape.get(rule.dim)?;
    if rule.dim > 1 {
        return None;
    }
    let (a, b) = match rule.slice {
        Slice::Range { start, end } => (start, end),
        Slice::Part { rank, world } => {
            if rank >= world || d % world != 0 {
                return None;
            }
            (rank * (d / world), (rank + 1) * (d / world))
        }
    };
    if a > b || b > d {
        return None;
    }
    let bytes = u128::from(t.end - t.begin);
    let d0 = u128::from(t.shape[0]);
    let mut shape = t.shape.clone();
    shape[rule.dim] = b - a;
    if rule.dim == 0 {
        if d0 > 0 && bytes % d0 != 0 {
            return None;
        }
        let row = bytes.checked_div(d0).unwrap_or(0);
        return Some(Expect {
            begin: u64::try_from(u128::from(t.begin) + u128::from(a) * row).ok()?,
            len: u64::try_from(u128::from(b - a) * row).ok()?,
            shape,
            cols: None,
        });
    }
    if t.dtype.bits() % 8 != 0 {
        return None;
    }
    // An empty tensor's columns and rows hold no bytes, however large its dimensions.
    let unit = t.shape[2..]
        .iter()
        .fold(u128::from(t.dtype.bits() / 8), |x, &n| {
            x.saturating_mul(u128::from(n))
        });
    let fit = |x: u128| u64::try_from(x).ok().or((bytes == 0).then_some(0));
    let stride = fit(unit.saturating_mul(u128::from(d)))?;
    let keep = fit(unit.saturating_mul(u128::from(b - a)))?;
    let start = fit(unit.saturating_mul(u128::from(a)))?;
    let len = u64::try_from(d0 * u128::from(keep)).ok()?;
    if d0 <= 1 || keep == stride {
        // One row or every column: contiguous, planned like rows.
        let begin = if d0 == 0 { 0 } else { start };
        return Some(Expect {
            begin: t.begin + begin,
            len,
            shape,
            cols: None,
        });
    }
    Some(Expect {
        begin: t.begin,
        len,
        shape,
        cols: Some((t.shape[0], stride, start, keep)),
    })
}

fn align_up(x: u64, a: u64) -> u128 {
    let (x, a) = (u128::from(x), u128::from(a.max(1)));
    x.div_ceil(a) * a
}

fn check_file(f: &FilePlan, h: &Header, opts: &PlanOptions) {
    let align = opts.align.max(1);
    let file_len = h.file_len;
    let aligned_end = align_up(file_len, align);
    for (r, prev) in f.reads.iter().skip(1).zip(&f.reads) {
        assert!(prev.offset <= r.offset, "reads not in file order");
    }
    for r in &f.reads {
        assert!(r.len > 0, "empty read {r:?}");
        assert_eq!(
            r.offset % align,
            0,
            "unaligned read {r:?} for align {align}"
        );
        assert_eq!(
            r.len % align,
            0,
            "unaligned read length {r:?} for align {align}"
        );
        // A raw read is at most a chunk; a conversion read fills one staging slot
        // (`PlanOptions::slot_len`): a chunk of whole elements plus alignment slack.
        let limit = match r.target {
            Target::Raw { .. } => u128::from(opts.chunk_size),
            Target::Convert { .. } => u128::from(opts.slot_len()),
        };
        assert!(
            u128::from(r.len) <= limit,
            "read {r:?} larger than {limit} (chunk size {})",
            opts.chunk_size
        );
        assert!(r.required <= r.len, "{r:?}");
        let (off, len, req) = (
            u128::from(r.offset),
            u128::from(r.len),
            u128::from(r.required),
        );
        assert!(
            off + req <= u128::from(file_len),
            "read {r:?} needs bytes past the file's {file_len}"
        );
        assert!(
            off + len <= aligned_end,
            "read {r:?} runs past the aligned end of the file"
        );
    }

    // Destinations: inside their buffer, not overlapping, aligned when converted.
    let mut raw_spans = Vec::new();
    let mut conv_spans = Vec::new();
    for t in &f.tensors {
        let info = h
            .tensor(&t.name)
            .expect("a planned tensor the header lacks");
        assert_eq!(t.src_dtype, info.dtype);
        let want = match rule_of(opts, &t.name) {
            Some(r) => slice_of(info, r).expect("a slice planned that the tensor cannot give"),
            None => Expect {
                begin: info.begin,
                len: info.len(),
                shape: info.shape.clone(),
                cols: None,
            },
        };
        assert_eq!(t.shape, want.shape, "{t:?} with {:?}", opts.slices);
        assert_eq!(t.file_offset, h.data_start() + want.begin, "{t:?}");
        assert_eq!(t.src_len, want.len, "{t:?}");
        assert_eq!(t.dtype, convert::output_dtype(info.dtype, opts.dtype));
        match t.place {
            Place::Raw(at) => {
                assert_eq!(t.dtype, t.src_dtype, "{t:?}");
                assert!(want.cols.is_none(), "columns read raw: {t:?}");
                assert_eq!(t.len, t.src_len);
                raw_spans.push((at, t.len));
            }
            Place::Converted(at) => {
                // Converted, or columns (gathered through staging).
                assert!(t.dtype != t.src_dtype || want.cols.is_some(), "{t:?}");
                assert_eq!(
                    t.len,
                    convert::converted_len(t.src_dtype, t.dtype, t.src_len)
                );
                assert_eq!(at % opts.tensor_align.max(1), 0, "{t:?} misaligned");
                conv_spans.push((at, t.len));
            }
        }
    }
    check_spans(&mut raw_spans, f.raw_len, "raw tensor");
    check_spans(&mut conv_spans, f.converted_len, "converted tensor");

    // Raw reads: disjoint in the file and in the raw buffer.
    let raw_reads: Vec<(u64, u64, u64, u64)> = f
        .reads
        .iter()
        .filter_map(|r| match r.target {
            Target::Raw { dest } => Some((r.offset, r.len, r.required, dest)),
            Target::Convert { .. } => None,
        })
        .collect();
    if !opts.split_at_tensors {
        let mut file_spans: Vec<(u64, u64)> = raw_reads.iter().map(|r| (r.0, r.1)).collect();
        check_spans(&mut file_spans, u64::MAX, "raw read (file range)");
    } else {
        // Each tensor read on its own: every raw read lies within one raw tensor's
        // aligned range and lands where that tensor's bytes go (reads of neighbours
        // overlap only in the pages they share).
        let align = opts.align.max(1);
        for &(off, len, _, dest) in &raw_reads {
            let own = f.tensors.iter().any(|t| {
                let Place::Raw(at) = t.place else {
                    return false;
                };
                let lo = t.file_offset - t.file_offset % align;
                let hi = u128::from(t.file_offset + t.src_len).next_multiple_of(u128::from(align));
                lo <= off
                    && u128::from(off) + u128::from(len) <= hi
                    && i128::from(dest) - i128::from(off)
                        == i128::from(at) - i128::from(t.file_offset)
            });
            assert!(own, "raw read {off}+{len} is no one tensor's");
        }
    }
    let mut dest_spans: Vec<(u64, u64)> = raw_reads.iter().map(|r| (r.3, r.1)).collect();
    check_spans(&mut dest_spans, f.raw_len, "raw read (destination)");

    for (idx, t) in f.tensors.iter().enumerate() {
        match t.place {
            Place::Raw(at) => check_raw_coverage(t, at, &raw_reads, opts.split_at_tensors),
            Place::Converted(_) => {
                let info = h
                    .tensor(&t.name)
                    .expect("a planned tensor the header lacks");
                let cols = rule_of(opts, &t.name)
                    .and_then(|r| slice_of(info, r))
                    .and_then(|e| e.cols);
                check_convert_coverage(f, idx, t, cols)
            }
        }
    }
}

/// Sorts `(start, len)` spans and checks they are disjoint and end by `limit`.
fn check_spans(spans: &mut [(u64, u64)], limit: u64, what: &str) {
    spans.sort_unstable();
    let mut end = 0u128;
    for &(at, len) in spans.iter() {
        let (at, len) = (u128::from(at), u128::from(len));
        if len == 0 {
            continue;
        }
        assert!(at >= end, "{what} spans overlap: {spans:?}");
        end = at + len;
        assert!(
            end <= u128::from(limit),
            "{what} span ends at {end}, past {limit}"
        );
    }
}

/// Every byte of a raw tensor arrives exactly once, at `at + (byte - file_offset)`.
fn check_raw_coverage(t: &PlannedTensor, at: u64, reads: &[(u64, u64, u64, u64)], split: bool) {
    let (lo, hi) = (t.file_offset, t.file_offset + t.src_len);
    let mut covered = 0u64;
    for &(off, len, required, dest) in reads {
        let (s, e) = (lo.max(off), hi.min(off + len));
        if s >= e {
            continue;
        }
        // Each tensor read on its own: a neighbour's read holding this tensor's
        // boundary bytes lands in the neighbour's place, not this one's.
        if split && i128::from(dest) - i128::from(off) != i128::from(at) - i128::from(lo) {
            continue;
        }
        assert!(
            e <= off + required,
            "tensor '{}' bytes in a read's optional tail",
            t.name
        );
        assert_eq!(
            i128::from(dest) - i128::from(off),
            i128::from(at) - i128::from(lo),
            "tensor '{}' lands in the wrong place",
            t.name
        );
        covered += e - s;
    }
    assert_eq!(
        covered, t.src_len,
        "tensor '{}' not covered exactly once",
        t.name
    );
}

/// A converted tensor's elements (or selected columns') are read exactly once, each
/// read aligned around them: back to back from the read's first element, or, for
/// gathered columns, whole rows of the selection `stride` bytes apart.
fn check_convert_coverage(
    f: &FilePlan,
    idx: usize,
    t: &PlannedTensor,
    cols: Option<(u64, u64, u64, u64)>,
) {
    let esize = t.src_dtype.bits() / 8;
    assert!(esize > 0, "{t:?}");
    // Where element `e` of the selection lies in the file, and elements per row.
    let per_row = cols.map_or(u64::MAX, |(_, _, _, keep)| keep / esize);
    let at = |e: u64| match cols {
        None => t.file_offset + e * esize,
        Some((_, stride, start, _)) => {
            t.file_offset + e / per_row * stride + start + e % per_row * esize
        }
    };
    let mut chunks: Vec<_> = f
        .reads
        .iter()
        .filter_map(|r| match r.target {
            Target::Convert {
                tensor,
                first,
                count,
                skip,
                gather,
            } if tensor == idx => Some((first, count, skip, gather, r)),
            _ => None,
        })
        .collect();
    chunks.sort_unstable_by_key(|c| c.0);
    let mut next = 0u64;
    for (first, count, skip, gather, r) in chunks {
        assert_eq!(
            first, next,
            "tensor '{}' elements not read exactly once",
            t.name
        );
        assert!(count > 0, "empty convert read {r:?}");
        assert_eq!(r.offset + skip, at(first), "{r:?} of {t:?}");
        match gather {
            None => {
                // Back to back: within one row of the selection.
                assert!(
                    first % per_row + count <= per_row,
                    "{r:?} crosses a row of {t:?}"
                );
                assert_eq!(r.required, skip + count * esize, "{r:?} of {t:?}");
            }
            Some(Gather { rows, stride, keep }) => {
                let (_, s, _, k) = cols.expect("a gather for a tensor without columns");
                assert_eq!((stride, keep), (s, k), "{r:?} of {t:?}");
                assert!(rows > 1, "{r:?}");
                assert_eq!(first % per_row, 0, "{r:?} starts mid-row");
                assert_eq!(count, rows * per_row, "{r:?} of {t:?}");
                assert_eq!(r.required, skip + (rows - 1) * stride + keep, "{r:?}");
            }
        }
        next = first + count;
    }
    assert_eq!(
        next * esize,
        t.src_len,
        "tensor '{}' elements not all read",
        t.name
    );
}

/// Whole-name glob, by dynamic programming: the oracle for `plan::glob_match`.
fn glob(pattern: &str, name: &str) -> bool {
    let p: Vec<char> = pattern.chars().collect();
    let n: Vec<char> = name.chars().collect();
    // m[j]: pattern prefix so far matches name prefix of length j.
    let mut m = vec![false; n.len() + 1];
    m[0] = true;
    for &c in &p {
        let mut next = vec![false; n.len() + 1];
        for j in 0..=n.len() {
            next[j] = match c {
                '*' => m[j] || (j > 0 && next[j - 1]),
                '?' => j > 0 && m[j - 1],
                c => j > 0 && m[j - 1] && n[j - 1] == c,
            };
        }
        m = next;
    }
    let want = m[n.len()];
    assert_eq!(
        tensorstream::plan::glob_match(pattern, name),
        want,
        "glob_match({pattern:?}, {name:?})"
    );
    want
}
