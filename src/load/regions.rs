//! What a load into the caller's own memory asks and is given: `TensorSpec` (what
//! will land) and `HostRegion` (where, on the host; `DeviceRegion` on CUDA).

use std::path::Path;

#[cfg(doc)]
use super::Loader;
use crate::dtype::Dtype;
use crate::error::{quoted, Error, Result};
use crate::plan::{FilePlan, PlannedTensor};

/// A tensor that [`Loader::load_into_host`] (or, on CUDA, `Loader::load_into_device`)
/// is about to load: what will land in the memory given for it.
#[derive(Debug, Clone, Copy)]
#[non_exhaustive]
pub struct TensorSpec<'a> {
    /// Name.
    pub name: &'a str,
    /// The file holding it.
    pub file: &'a Path,
    /// Dtype in the file.
    pub file_dtype: Dtype,
    /// Dtype once loaded (after [`Loader::dtype`]'s conversion).
    pub dtype: Dtype,
    /// Shape (of its slice, under [`Loader::rows`] or [`Loader::columns`]).
    pub shape: &'a [u64],
    /// Bytes once loaded as `dtype`.
    pub len: usize,
    /// Bytes in the file.
    file_len: u64,
}

impl<'a> TensorSpec<'a> {
    /// Planned tensor `t` of file plan `f`.
    pub(crate) fn of(f: &'a FilePlan, t: &'a PlannedTensor) -> Self {
        TensorSpec {
            name: &t.name,
            file: &f.path,
            file_dtype: t.src_dtype,
            dtype: t.dtype,
            shape: &t.shape,
            len: usize::try_from(t.len).unwrap_or(usize::MAX),
            file_len: t.src_len,
        }
    }

    /// [`TensorSpec::len_as`], or the error naming the file and the tensor that a
    /// load into the caller's memory gives for a dtype it cannot be loaded as.
    pub(crate) fn len_for(&self, dtype: Dtype) -> Result<usize> {
        self.len_as(dtype).ok_or_else(|| {
            Error::InvalidArgument(format!(
                "{}: tensor {}: cannot load {} as {dtype} (floating tensors convert to F32, \
                 F16 or BF16; others load as they are)",
                self.file.display(),
                quoted(self.name),
                self.file_dtype
            ))
        })
    }

    /// Bytes of the tensor loaded as `dtype`: its dtype in the file, or F32, F16 or
    /// BF16 for a floating one; `None` for a dtype it cannot be loaded as.
    pub fn len_as(&self, dtype: Dtype) -> Option<usize> {
        if !self.file_dtype.loads_as(dtype) {
            return None;
        }
        usize::try_from(crate::convert::converted_len(
            self.file_dtype,
            dtype,
            self.file_len,
        ))
        .ok()
    }
}

/// Host memory the caller gives [`Loader::load_into_host`] for one tensor, and the
/// dtype to load it as.
#[derive(Debug)]
pub struct HostRegion<'m> {
    /// Exactly the tensor's bytes in `dtype` ([`TensorSpec::len_as`]).
    pub bytes: &'m mut [u8],
    /// Its dtype in the file, or F32, F16 or BF16 for a floating tensor.
    pub dtype: Dtype,
}
