//! Opening a checkpoint of either format: safetensors (`format`), or a PyTorch zip
//! checkpoint read by the restricted unpickler (`pickle`), chosen by [`is_pytorch`].

use std::path::Path;

use crate::error::{Error, Result};
use crate::format::checkpoint::Checkpoint;
pub use crate::pickle::{is_pytorch, open_pytorch, PytorchCheckpoint};

impl Checkpoint {
    /// Opens and validates a checkpoint; returns the first problem found.
    ///
    /// `path` is a `.safetensors` file, a directory of shards or a
    /// `model.safetensors.index.json`; or a PyTorch zip checkpoint (`.bin`, `.pt`,
    /// `.pth`, a `pytorch_model.bin.index.json`, or a directory holding them and no
    /// safetensors), read without executing anything. A PyTorch tensor must be one
    /// byte range of its storage: a strided view is refused (`tensorstream convert`
    /// writes it contiguous); tensors sharing bytes (tied weights) each read theirs.
    pub fn open(path: impl AsRef<Path>) -> Result<Checkpoint> {
        let (ckpt, mut problems) = Checkpoint::open_all_problems(path.as_ref());
        match ckpt {
            Some(c) if problems.is_empty() => Ok(c),
            _ => Err(if problems.is_empty() {
                Error::checkpoint(path.as_ref(), "no checkpoint found")
            } else {
                problems.swap_remove(0)
            }),
        }
    }

    /// Opens a checkpoint (as [`Checkpoint::open`]) and collects every problem instead
    /// of stopping at the first: what `tensorstream verify` reports. The checkpoint is
    /// returned only when no problem was found.
    pub fn open_all_problems(path: &Path) -> (Option<Checkpoint>, Vec<Error>) {
        if is_pytorch(path) {
            let p = open_pytorch(path);
            (p.checkpoint, p.problems)
        } else {
            Checkpoint::open_safetensors(path)
        }
    }
}
