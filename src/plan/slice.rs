//! Row and column selections: a `SliceRule` narrows the tensors a glob matches to
//! some of their rows (dimension 0) or columns (dimension 1), as a tensor-parallel
//! rank loads its shard; `select` turns a rule into the bytes of one tensor to read.

use crate::header::TensorInfo;

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

/// What a slice rule selects of a tensor.
pub(super) enum Selection {
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
pub(super) fn select(t: &TensorInfo, rule: &SliceRule) -> std::result::Result<Selection, String> {
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
