//! tensorstream loads safetensors checkpoints into host or GPU memory as fast as the
//! hardware allows, and safely.
//!
//! Headers are parsed and validated strictly on the CPU ([`Header`], [`Checkpoint`]);
//! a pure [`plan`] turns the selected tensors into large aligned reads; the [`io`]
//! engine (io_uring with O_DIRECT or buffered, a pread pool, or mmap) moves the bytes
//! with a bounded number in flight; a sink puts them in host memory or, with the
//! `cuda` feature, streams them through pinned staging buffers to a GPU.
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

pub mod checkpoint;
pub mod convert;
pub mod device;
pub mod digest;
pub mod dtype;
pub mod error;
pub mod header;
pub mod io;
pub mod loader;
pub mod plan;
pub mod synth;

pub use checkpoint::Checkpoint;
pub use device::{Device, HostPool};
pub use dtype::Dtype;
pub use error::{Error, ErrorKind, Result};
pub use header::{Header, TensorInfo};
pub use io::{CancelToken, IoBackend};
pub use loader::{HostRegion, LoadStats, Loader, Model, Split, Storage, Tensor, TensorSpec};
pub use plan::{Slice, SliceRule};

#[cfg(feature = "cuda")]
pub use device::cuda::DeviceRegion;
