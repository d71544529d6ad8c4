//! Where the bytes land: host memory (`host`), or a CUDA device through pinned
//! staging (`cuda`, feature `cuda`). Each sink implements `io::Sink`.

pub(crate) mod host;
pub(crate) mod host_mem;
pub(crate) mod placer;

#[cfg(feature = "cuda")]
pub(crate) mod cuda;

use std::sync::Arc;

use crate::plan::Place;

/// The buffers a load's bytes landed in, per file (`B`: a host or a device buffer):
/// the raw buffer and the converted area, or, per tensor, memory of its own (a
/// per-tensor allocation, or the caller's region). The tensors are views of them.
pub(crate) struct Landed<B> {
    /// Per file: the buffer of its raw tensors (none when each tensor has its own).
    pub raw: Vec<Option<Arc<B>>>,
    /// Per file: the area of its converted tensors (none when each has its own).
    pub converted: Vec<Option<Arc<B>>>,
    /// Per file, per tensor: its own memory, when it has it.
    pub own: Vec<Vec<Option<Arc<B>>>>,
}

impl<B> Landed<B> {
    /// The buffer holding tensor `tensor` of file `file`, planned at `place`, and the
    /// tensor's offset in it.
    pub fn buffer_of(&self, file: usize, tensor: usize, place: Place) -> Option<(&Arc<B>, u64)> {
        if let Some(own) = self
            .own
            .get(file)
            .and_then(|o| o.get(tensor))
            .and_then(Option::as_ref)
        {
            return Some((own, 0));
        }
        match place {
            Place::Raw(o) => self.raw.get(file)?.as_ref().map(|b| (b, o)),
            Place::Converted(o) => self.converted.get(file)?.as_ref().map(|b| (b, o)),
        }
    }
}
