//! The subcommands of the `tensorstream` binary, one file each, and what they share.

pub mod bench;
pub mod convert;
pub mod inspect;
pub mod load;
pub mod opts;
pub mod output;
pub mod signals;
pub mod synth;
pub mod verify;
