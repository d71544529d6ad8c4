//! The safetensors format, parsed on the CPU with no tensor bytes read: `header`
//! (one file's header, validated strictly), `checkpoint` (a file, a directory of
//! shards or an index, cross-checked) and `dtype` (the 22 dtypes and their sizes).

pub mod checkpoint;
pub mod dtype;
pub mod header;
