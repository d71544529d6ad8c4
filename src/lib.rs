//! tensorstream loads safetensors checkpoints into host or GPU memory as fast as the
//! hardware allows, and safely.
//!
//! Open a [`Checkpoint`] (a file, a directory of shards or an index; every header
//! validated strictly; a PyTorch zip checkpoint is read too, without executing it),
//! choose what to load with a [`Loader`], and get a [`Model`]
//! of [`Tensor`]s, or fill memory of your own with [`Loader::load_into_host`] (and, with
//! the `cuda` feature, `Loader::load_into_device`). Every load runs one pipeline:
//! the selected tensors are planned into large aligned reads, an I/O engine
//! ([`IoBackend`]: io_uring with O_DIRECT or buffered, or a pread pool) moves
//! the bytes with a bounded number in flight, and a sink puts them in host memory or
//! streams them through pinned staging to a GPU, converting dtypes on the way.
//! Errors are one [`Error`] whose message names the file, the tensor and the rule
//! broken.
//!
//! ```
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! # let dir = tempfile::tempdir()?;
//! # let path = dir.path().join("model.safetensors");
//! # let data: Vec<u8> = (0..64u8).collect();
//! # let json = r#"{"w":{"dtype":"BF16","shape":[4,8],"data_offsets":[0,64]}}"#;
//! # let mut file = (json.len() as u64).to_le_bytes().to_vec();
//! # file.extend_from_slice(json.as_bytes());
//! # file.extend_from_slice(&data);
//! # std::fs::write(&path, file)?;
//! use tensorstream::{Device, Dtype, Loader};
//!
//! let model = Loader::new()
//!     .device(Device::Cpu)
//!     .dtype(Some(Dtype::F32))      // convert floating tensors while loading
//!     .only("w")                    // whole-name globs; default: every tensor
//!     .progress(|done, total| eprintln!("{done}/{total}"))
//!     .load(&path)?;
//! let w = model.get("w").unwrap();
//! assert_eq!(w.dtype, Dtype::F32);
//! assert_eq!(w.shape, vec![4, 8]);
//! assert_eq!(w.host_bytes().unwrap().len(), 4 * 8 * 4);
//! # Ok(())
//! # }
//! ```
#![deny(unsafe_op_in_unsafe_fn)]
#![warn(missing_docs)]
#![cfg_attr(
    not(test),
    deny(
        clippy::unwrap_used,
        clippy::expect_used,
        clippy::indexing_slicing,
        clippy::panic
    )
)]

#[cfg(feature = "candle")]
pub mod candle;
mod error;
mod format;
mod io;
mod load;
mod open;
mod pickle;
mod sink;

// The stages that the CLI, the tests, the benches and the fuzz targets reach into:
// public for them, hidden from the documentation, not part of the library's API.
#[doc(hidden)]
pub mod convert;
#[doc(hidden)]
pub mod digest;
#[doc(hidden)]
pub mod plan;
#[doc(hidden)]
pub mod synth;
#[doc(hidden)]
pub use format::{checkpoint, dtype, header};

/// What the CLI and the tests use beyond the library's API (hidden from its docs).
#[doc(hidden)]
pub mod internals {
    pub use crate::error::{escape, escape_line};
    pub use crate::io::{drop_page_cache, fill_page_cache, probe_uring, resident_fraction};
    pub use crate::open::{is_pytorch, open_pytorch, PytorchCheckpoint};
    pub use crate::pickle::{convert_pytorch, unpickle, ConvertReport, PickleError};
    #[cfg(feature = "cuda")]
    pub use crate::sink::cuda::Context;
    pub use crate::sink::host_mem::{host_memory, reset_host_peak};
}

pub use error::{Error, ErrorKind, Result};
pub use format::checkpoint::Checkpoint;
pub use format::dtype::Dtype;
pub use format::header::{Header, TensorInfo};
pub use io::{CancelToken, IoBackend};
pub use load::model::{FileReport, LoadStats, Model, Storage, Tensor};
pub use load::regions::{HostRegion, TensorSpec};
pub use load::{Device, Loader};
pub use plan::{Slice, SliceRule};
#[cfg(feature = "cuda")]
pub use sink::cuda::{DeviceBuf, DeviceRegion};
pub use sink::host_mem::{HostBuf, HostPool};
