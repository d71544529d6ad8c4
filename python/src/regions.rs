//! Every `unsafe` of the package: the memory of Python objects (NumPy arrays, PyTorch
//! CUDA tensors) turned into the regions a load writes, and the CUDA load itself.
//!
//! The Python layer hands over one-dimensional, contiguous, writable `uint8` views of
//! the destinations it allocated; their address and length come from the array
//! interface (`__array_interface__`, `__cuda_array_interface__`). The caller keeps
//! the objects (and with them their memory) alive until the load has returned.

use std::collections::BTreeMap;

use pyo3::prelude::*;
use pyo3::types::PyAnyMethods;
use tensorstream::{Dtype, HostRegion};

use crate::bad_arg;

/// One destination as the Python layer hands it over: tensor name, a `uint8` view of
/// the memory, and the dtype to load the tensor as.
pub(crate) type Dest<'py> = (String, Bound<'py, PyAny>, String);

/// Address and length of a writable, contiguous, one-dimensional `uint8` array, read
/// from its array interface `attr`.
fn interface(obj: &Bound<'_, PyAny>, attr: &str) -> PyResult<(usize, usize)> {
    let d = obj.getattr(attr)?;
    let typestr: String = d.get_item("typestr")?.extract()?;
    let shape: Vec<usize> = d.get_item("shape")?.extract()?;
    let strides: Option<Vec<isize>> = d.call_method1("get", ("strides",))?.extract()?;
    let (ptr, readonly): (usize, bool) = d.get_item("data")?.extract()?;
    let [len] = shape[..] else {
        return Err(bad_arg("a destination must be one-dimensional"));
    };
    if typestr != "|u1" {
        return Err(bad_arg(format!(
            "a destination must be uint8, not {typestr}"
        )));
    }
    if strides.is_some_and(|s| s != [1]) {
        return Err(bad_arg("a destination must be contiguous"));
    }
    if readonly {
        return Err(bad_arg("a destination must be writable"));
    }
    if len > 0 && (ptr == 0 || ptr.checked_add(len).is_none() || len > isize::MAX as usize) {
        return Err(bad_arg("a destination's address range is not valid"));
    }
    Ok((ptr, len))
}

/// The address ranges of the destinations read through `attr`, refused when two
/// overlap.
fn ranges(dests: &[Dest<'_>], attr: &str) -> PyResult<Vec<(usize, usize)>> {
    let ranges = dests
        .iter()
        .map(|(_, o, _)| interface(o, attr))
        .collect::<PyResult<Vec<_>>>()?;
    let mut sorted: Vec<(usize, usize)> = ranges.iter().copied().filter(|r| r.1 > 0).collect();
    sorted.sort_unstable();
    if sorted.windows(2).any(|w| match w {
        [a, b] => a.0 + a.1 > b.0,
        _ => false,
    }) {
        return Err(bad_arg("two destinations overlap"));
    }
    Ok(ranges)
}

/// The dtype destination `d` asks for, parsed.
fn dtype_of(d: &Dest<'_>) -> PyResult<Dtype> {
    d.2.parse::<Dtype>().map_err(bad_arg)
}

/// Host regions, by tensor name, over the memory of `dests` (writable, contiguous
/// one-dimensional `uint8` NumPy arrays, none overlapping another). The regions
/// borrow `dests`, whose references keep the arrays, and so their memory, alive.
pub(crate) fn host_regions<'a>(
    dests: &'a [Dest<'_>],
) -> PyResult<BTreeMap<String, HostRegion<'a>>> {
    let mut out = BTreeMap::new();
    for (d, (ptr, len)) in dests.iter().zip(ranges(dests, "__array_interface__")?) {
        let (name, dtype) = (d.0.clone(), dtype_of(d)?);
        let bytes: &'a mut [u8] = if len == 0 {
            &mut []
        } else {
            // SAFETY: `ptr..ptr + len` is the memory of the NumPy array `d.1`, as
            // its array interface says: writable, contiguous bytes (checked above),
            // non-null and within `isize::MAX`. The array lives at least as long as
            // `dests` holds its reference, which outlives `'a`; an array that others
            // reference cannot be resized, so its memory stays put. No two ranges
            // overlap (checked above), so the slices never alias one another; while
            // the load runs the calling Python thread is blocked in it, and the arrays
            // are the package's own fresh allocations or the parameters the caller
            // asked to fill, which it does not touch meanwhile.
            unsafe { std::slice::from_raw_parts_mut(ptr as *mut u8, len) }
        };
        if out
            .insert(name.clone(), HostRegion { bytes, dtype })
            .is_some()
        {
            return Err(bad_arg(format!("two destinations for tensor '{name}'")));
        }
    }
    Ok(out)
}

/// Device regions, by tensor name, over the memory of `dests` (contiguous
/// one-dimensional `uint8` PyTorch CUDA tensors, none overlapping another).
#[cfg(feature = "cuda")]
pub(crate) fn device_regions(
    dests: &[Dest<'_>],
) -> PyResult<BTreeMap<String, tensorstream::DeviceRegion>> {
    let mut out = BTreeMap::new();
    for (d, (ptr, len)) in dests.iter().zip(ranges(dests, "__cuda_array_interface__")?) {
        let (name, dtype) = (d.0.clone(), dtype_of(d)?);
        let region = tensorstream::DeviceRegion {
            ptr: ptr as u64,
            len,
            dtype,
        };
        if out.insert(name.clone(), region).is_some() {
            return Err(bad_arg(format!("two destinations for tensor '{name}'")));
        }
    }
    Ok(out)
}

/// Loads the tensors of `ckpt` into the device regions `chosen` (from
/// [`device_regions`]) with `loader`; returns once every copy is complete.
#[cfg(feature = "cuda")]
pub(crate) fn load_device(
    loader: &tensorstream::Loader,
    ckpt: &tensorstream::Checkpoint,
    mut chosen: BTreeMap<String, tensorstream::DeviceRegion>,
) -> tensorstream::Result<tensorstream::LoadStats> {
    // SAFETY: each region is the memory of a PyTorch CUDA tensor whose reference the
    // caller (`load_device` of lib.rs) holds until this returns, so it stays
    // allocated (PyTorch's caching allocator does not reuse a live tensor's block);
    // the regions do not overlap (checked in `device_regions`; the driver checks them
    // again, with the device and the allocation). The tensors are fresh allocations
    // of the package, or the parameters the caller asked to fill; the calling Python
    // thread is blocked in this load, and work PyTorch queued on them before (a
    // memset, the allocation's stream order) is in the primary context, which the
    // load waits for before its first copy.
    let model = unsafe { loader.load_into_device(ckpt, |t| chosen.remove(t.name))? };
    Ok(model.stats().clone())
}
