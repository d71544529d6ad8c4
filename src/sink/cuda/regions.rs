//! A caller's device memory for a load (`DeviceRegion`), and the checks every region
//! passes before the first read: its length, its allocation, its device and context,
//! its alignment, no overlap.

use std::collections::BTreeMap;

use super::driver::{check_region, internal, Context};
use crate::dtype::Dtype;
use crate::error::{quoted, Error, Result};
use crate::plan::Plan;

/// Device memory the caller allocated, for one tensor of
/// [`Loader::load_into_device`](crate::Loader::load_into_device).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DeviceRegion {
    /// Device address of the first byte.
    pub ptr: u64,
    /// Length in bytes: the tensor's length in `dtype` ([`TensorSpec::len_as`](crate::TensorSpec::len_as)).
    pub len: usize,
    /// The dtype the tensor lands in: its dtype in the file, or, for a floating tensor
    /// (F32, F16, BF16, the F8 types), F32, F16 or BF16 to convert it to. The loader's
    /// own choice is [`TensorSpec::dtype`](crate::TensorSpec::dtype).
    pub dtype: Dtype,
}

/// The caller's regions for the tensors of `plan`, per file and tensor, once each is
/// checked (the tensor's length, in one allocation of this context's device, aligned
/// to its elements when converted, no two overlapping), once the context's earlier
/// work is complete.
pub(crate) fn check_destinations(
    plan: &Plan,
    ctx: &Context,
    dests: &BTreeMap<String, DeviceRegion>,
) -> Result<Vec<Vec<DeviceRegion>>> {
    ctx.bind()?;
    let mut out = Vec::with_capacity(plan.files.len());
    // Non-empty regions: first byte, last byte, and whose.
    let mut spans: Vec<(u64, u64, String)> = Vec::new();
    for f in &plan.files {
        let mut regions = Vec::with_capacity(f.tensors.len());
        for t in &f.tensors {
            let at = format!("{}: tensor {}", f.path.display(), quoted(&t.name));
            let r = *dests
                .get(&t.name)
                .ok_or_else(|| internal("a tensor without a destination"))?;
            let bad = |what: String| {
                Error::InvalidArgument(format!("{at}: destination {:#x}: {what}", r.ptr))
            };
            if r.len as u64 != t.len {
                return Err(bad(format!(
                    "{} bytes given, but the tensor is {} bytes once loaded ({} {:?})",
                    r.len, t.len, t.dtype, t.shape
                )));
            }
            if r.len > 0 {
                let elem = (t.dtype.bits() / 8).max(1);
                if t.dtype != t.src_dtype && r.ptr % elem != 0 {
                    return Err(bad(format!(
                        "not aligned to the {elem}-byte elements of {} that the conversion writes",
                        t.dtype
                    )));
                }
                let last = r
                    .ptr
                    .checked_add(r.len as u64 - 1)
                    .ok_or_else(|| bad("runs past the end of the address space".into()))?;
                check_region(ctx, r.ptr, last).map_err(bad)?;
                spans.push((r.ptr, last, at));
            }
            regions.push(r);
        }
        out.push(regions);
    }
    spans.sort();
    for w in spans.windows(2) {
        if let [(a0, a1, a), (b0, _, b)] = w {
            if b0 <= a1 {
                return Err(Error::InvalidArgument(format!(
                    "{b}: destination {b0:#x} overlaps that of {a} ({a0:#x}..={a1:#x})"
                )));
            }
        }
    }
    // What the caller queued on the regions before the call (a memset, a stream-ordered
    // allocation) completes before the load's first copy, whatever stream it is on.
    ctx.synchronize()?;
    Ok(out)
}
