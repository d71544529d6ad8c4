//! The safetensors header: an 8-byte little-endian length N, then N bytes of JSON.
//!
//! Parsing reads the length prefix and the header bytes only; tensor data is never
//! read or mapped to validate a file. Every rule the reference implementation
//! enforces is enforced here, and one more: duplicate tensor names are rejected.

use std::collections::BTreeMap;
use std::fmt;
use std::fs::File;
use std::io::Read;
use std::path::{Path, PathBuf};

use serde::de::{self, Deserializer, MapAccess, Visitor};
use serde::Deserialize;

use crate::dtype::Dtype;
use crate::error::{clip_json, quoted, Error, Result};

/// Largest header the format allows, in bytes.
pub const MAX_HEADER_LEN: u64 = 100_000_000;

/// Bytes of the length prefix.
pub const PREFIX_LEN: u64 = 8;

/// One tensor of a safetensors file, as its header describes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TensorInfo {
    /// The tensor's name.
    pub name: String,
    /// Its element type.
    pub dtype: Dtype,
    /// Its shape (empty for a scalar).
    pub shape: Vec<u64>,
    /// Start of its bytes, relative to the data section.
    pub begin: u64,
    /// End (exclusive) of its bytes, relative to the data section.
    pub end: u64,
}

impl TensorInfo {
    /// Number of bytes of the tensor.
    pub fn len(&self) -> u64 {
        self.end - self.begin
    }

    /// True when the tensor has no bytes.
    pub fn is_empty(&self) -> bool {
        self.end == self.begin
    }

    /// Number of elements (validated not to overflow when the header was parsed).
    pub fn numel(&self) -> u64 {
        self.shape.iter().product()
    }
}

/// The parsed and validated header of one safetensors file.
#[derive(Debug, Clone)]
pub struct Header {
    /// The file.
    pub path: PathBuf,
    /// N, the length of the JSON header in bytes.
    pub header_len: u64,
    /// Length of the whole file.
    pub file_len: u64,
    /// The tensors, sorted by their offsets.
    pub tensors: Vec<TensorInfo>,
    /// The `__metadata__` map, when the header has one.
    pub metadata: Option<BTreeMap<String, String>>,
    /// Indices into `tensors`, sorted by name (lookups by binary search).
    by_name: Vec<usize>,
    /// Absolute file offset that tensor offsets count from: `PREFIX_LEN + header_len`
    /// for a safetensors file, 0 for a PyTorch zip checkpoint.
    data_start: u64,
}

impl Header {
    /// Absolute file offset that the tensors' offsets count from: where the data
    /// section of a safetensors file starts, 0 for a PyTorch zip checkpoint.
    pub fn data_start(&self) -> u64 {
        self.data_start
    }

    /// Bytes of tensor data: the data section of a safetensors file; for a PyTorch zip
    /// checkpoint the sum of its tensors' lengths (tensors sharing bytes count each).
    pub fn data_len(&self) -> u64 {
        if self.is_pytorch() {
            self.tensors.iter().map(TensorInfo::len).sum()
        } else {
            self.file_len - self.data_start
        }
    }

    /// True when the file is a PyTorch zip checkpoint (see [`Header::from_ranges`]).
    pub fn is_pytorch(&self) -> bool {
        self.data_start == 0
    }

    /// The header of a file that is not safetensors (a PyTorch zip checkpoint): its
    /// tensors' `begin` and `end` are absolute file offsets, `header_len` is 0 and
    /// `metadata` is none. Each tensor must lie inside the file and hold exactly its
    /// shape's bytes, and names must be unique; tensors may leave gaps between them and
    /// may share bytes (tied weights). Pure: no I/O.
    pub fn from_ranges(path: &Path, file_len: u64, mut tensors: Vec<TensorInfo>) -> Result<Header> {
        tensors.sort_by_key(|t| (t.begin, t.end));
        let by_name = names_sorted(path, &tensors)?;
        for t in &tensors {
            let want =
                tensor_bytes(t.dtype, &t.shape).map_err(|r| Error::tensor_err(path, &t.name, r))?;
            if t.end < t.begin || t.end > file_len || want != t.len() {
                return Err(Error::tensor_err(
                    path,
                    &t.name,
                    format_args!(
                        "bytes [{}, {}) of the {file_len}-byte file do not hold shape {:?} of {} \
                         ({want} bytes)",
                        t.begin, t.end, t.shape, t.dtype
                    ),
                ));
            }
        }
        Ok(Header {
            path: path.to_path_buf(),
            header_len: 0,
            file_len,
            tensors,
            metadata: None,
            by_name,
            data_start: 0,
        })
    }

    /// The tensor with this name.
    pub fn tensor(&self, name: &str) -> Option<&TensorInfo> {
        let tensors = &self.tensors;
        let name_of = |i: &usize| tensors.get(*i).map_or("", |t| t.name.as_str());
        let pos = self
            .by_name
            .binary_search_by(|i| name_of(i).cmp(name))
            .ok()?;
        self.by_name.get(pos).and_then(|&i| tensors.get(i))
    }

    /// Reads and validates the header of the file at `path`.
    pub fn read(path: &Path) -> Result<Header> {
        let mut file = File::open(path).map_err(|e| Error::io(path, "open", e))?;
        Header::read_from(&mut file, path)
    }

    /// Reads and validates the header from an open file. Only the prefix and the
    /// header bytes are read; the allocation is bounded by the file's length.
    pub fn read_from(file: &mut File, path: &Path) -> Result<Header> {
        let file_len = file
            .metadata()
            .map_err(|e| Error::io(path, "stat", e))?
            .len();
        if file_len < PREFIX_LEN {
            return Err(Error::header(
                path,
                format_args!(
                    "file is {file_len} bytes, shorter than the {PREFIX_LEN}-byte length prefix"
                ),
            ));
        }
        let mut prefix = [0u8; PREFIX_LEN as usize];
        file.read_exact(&mut prefix)
            .map_err(|e| Error::io(path, "read header length", e))?;
        let n = u64::from_le_bytes(prefix);
        check_header_len(path, n, file_len).map_err(|e| not_safetensors(path, &prefix, e))?;
        let mut json = vec![0u8; n as usize];
        file.read_exact(&mut json)
            .map_err(|e| Error::io(path, "read header", e))?;
        Header::parse_json(path, &json, file_len)
    }

    /// Parses a header from the first bytes of a file (`bytes` holds at least the
    /// prefix and the JSON) given the whole file's length. Pure: no I/O.
    pub fn parse_prefix(path: &Path, bytes: &[u8], file_len: u64) -> Result<Header> {
        let Some(prefix) = bytes.get(..PREFIX_LEN as usize) else {
            return Err(Error::header(
                path,
                format_args!(
                    "{} bytes, shorter than the {PREFIX_LEN}-byte length prefix",
                    bytes.len()
                ),
            ));
        };
        let mut le = [0u8; PREFIX_LEN as usize];
        le.copy_from_slice(prefix);
        let n = u64::from_le_bytes(le);
        check_header_len(path, n, file_len).map_err(|e| not_safetensors(path, &le, e))?;
        let json = usize::try_from(PREFIX_LEN + n)
            .ok()
            .and_then(|stop| bytes.get(PREFIX_LEN as usize..stop))
            .ok_or_else(|| {
                Error::header(
                    path,
                    format_args!(
                        "header length {n} runs past the {} bytes given",
                        bytes.len()
                    ),
                )
            })?;
        Header::parse_json(path, json, file_len)
    }

    /// Parses and validates the JSON header bytes of a file of `file_len` bytes.
    pub fn parse_json(path: &Path, json: &[u8], file_len: u64) -> Result<Header> {
        let header_len = json.len() as u64;
        check_header_len(path, header_len, file_len)?;
        let text = std::str::from_utf8(json).map_err(|e| {
            Error::header(
                path,
                format_args!("header is not valid UTF-8 (at byte {})", e.valid_up_to()),
            )
        })?;
        let raw: RawHeader = serde_json::from_str(text).map_err(|e| {
            Error::header(
                path,
                format_args!("header is not valid JSON: {}", clip_json(&e)),
            )
        })?;
        let mut tensors = raw.tensors;
        tensors.sort_by_key(|t| (t.begin, t.end));
        let by_name = names_sorted(path, &tensors)?;
        let mut expected = 0u64;
        let mut prev: Option<&str> = None;
        for t in &tensors {
            if t.end < t.begin {
                return Err(Error::tensor_err(
                    path,
                    &t.name,
                    format_args!(
                        "data_offsets [{}, {}) end before they begin",
                        t.begin, t.end
                    ),
                ));
            }
            if t.begin < expected {
                return Err(Error::tensor_err(
                    path,
                    &t.name,
                    format_args!(
                        "data_offsets [{}, {}) overlap the previous tensor {}, which ends at {expected}",
                        t.begin,
                        t.end,
                        quoted(prev.unwrap_or_default())
                    ),
                ));
            }
            if t.begin > expected {
                let what = match prev {
                    Some(p) => format!(
                        "the previous tensor {}, which ends at {expected}",
                        quoted(p)
                    ),
                    None => "the start of the data section (offset 0)".to_string(),
                };
                return Err(Error::tensor_err(
                    path,
                    &t.name,
                    format_args!(
                        "data_offsets [{}, {}) leave a gap after {what}",
                        t.begin, t.end
                    ),
                ));
            }
            let want =
                tensor_bytes(t.dtype, &t.shape).map_err(|r| Error::tensor_err(path, &t.name, r))?;
            if want != t.len() {
                return Err(Error::tensor_err(
                    path,
                    &t.name,
                    format_args!(
                        "shape {:?} of {} needs {want} bytes but data_offsets [{}, {}) hold {}",
                        t.shape,
                        t.dtype,
                        t.begin,
                        t.end,
                        t.len()
                    ),
                ));
            }
            expected = t.end;
            prev = Some(&t.name);
        }
        let data_start = PREFIX_LEN + header_len;
        let total = data_start.checked_add(expected);
        if total != Some(file_len) {
            return Err(Error::header(
                path,
                format_args!(
                    "the header describes {expected} data bytes after {data_start} header bytes, \
                     but the file is {file_len} bytes ({})",
                    if total.is_none_or(|t| t > file_len) {
                        "truncated"
                    } else {
                        "trailing bytes"
                    }
                ),
            ));
        }
        Ok(Header {
            path: path.to_path_buf(),
            header_len,
            file_len,
            tensors,
            metadata: raw.metadata,
            by_name,
            data_start,
        })
    }
}

/// Indices into `tensors` sorted by name; an error naming a duplicate name.
fn names_sorted(path: &Path, tensors: &[TensorInfo]) -> Result<Vec<usize>> {
    // Sorting names finds duplicates without hashing, and serves lookups after.
    let mut by_name: Vec<usize> = (0..tensors.len()).collect();
    let name_of = |i: usize| tensors.get(i).map_or("", |t| t.name.as_str());
    by_name.sort_unstable_by(|&a, &b| name_of(a).cmp(name_of(b)));
    let twice = by_name.windows(2).find_map(|w| match w {
        &[a, b] if name_of(a) == name_of(b) => Some(a),
        _ => None,
    });
    if let Some(i) = twice {
        return Err(Error::tensor_err(
            path,
            name_of(i),
            "appears twice in the header (tensor names must be unique)",
        ));
    }
    Ok(by_name)
}

/// A length prefix that fails [`check_header_len`] often means another kind of file:
/// say which, instead of quoting a length read from it.
fn not_safetensors(path: &Path, prefix: &[u8; PREFIX_LEN as usize], e: Error) -> Error {
    let looks = match prefix {
        [b'P', b'K', 3, 4, ..] => {
            "a PyTorch zip checkpoint (pytorch_model.bin) or another zip archive; convert it to safetensors first"
        }
        [0x80, 2..=5, ..] => "a legacy PyTorch pickle checkpoint; convert it to safetensors first",
        _ => match prefix.iter().find(|b| !b.is_ascii_whitespace()) {
            Some(b'{' | b'[') => {
                "JSON (a safetensors file starts with an 8-byte header length; for a sharded \
                 checkpoint give its model.safetensors.index.json or its directory)"
            }
            _ => return e,
        },
    };
    Error::header(
        path,
        format_args!("not a safetensors file: looks like {looks}"),
    )
}

fn check_header_len(path: &Path, n: u64, file_len: u64) -> Result<()> {
    if n > MAX_HEADER_LEN {
        return Err(Error::header(
            path,
            format_args!("header length {n} exceeds the format's limit of {MAX_HEADER_LEN} bytes"),
        ));
    }
    if n > file_len.saturating_sub(PREFIX_LEN) {
        return Err(Error::header(
            path,
            format_args!("header length {n} runs past the end of the {file_len}-byte file"),
        ));
    }
    Ok(())
}

/// Bytes needed by `shape` elements of `dtype`, checked for overflow and whole bytes.
pub fn tensor_bytes(dtype: Dtype, shape: &[u64]) -> std::result::Result<u64, String> {
    let overflow = || format!("shape {shape:?} of {dtype} overflows 64 bits");
    let numel = shape
        .iter()
        .try_fold(1u64, |acc, &d| acc.checked_mul(d))
        .ok_or_else(overflow)?;
    let bits = numel.checked_mul(dtype.bits()).ok_or_else(overflow)?;
    if bits % 8 != 0 {
        return Err(format!(
            "shape {shape:?} of {dtype} is {bits} bits, not a whole number of bytes"
        ));
    }
    Ok(bits / 8)
}

/// The header as JSON gives it, before validation. Keeps every tensor entry in order
/// (duplicates included, which validation then refuses) instead of keeping the last.
struct RawHeader {
    metadata: Option<BTreeMap<String, String>>,
    tensors: Vec<TensorInfo>,
}

#[derive(Deserialize)]
struct RawTensor {
    #[serde(deserialize_with = "dtype_field")]
    dtype: Dtype,
    shape: Vec<u64>,
    data_offsets: (u64, u64),
}

/// A dtype, as the derived deserializer reads it (a string, or the one-key form
/// `{"U8": null}` that the reference crate also accepts), but refused with the name
/// quoted (escaped and cut: it comes from the file) and the names listed.
fn dtype_field<'de, D: Deserializer<'de>>(d: D) -> std::result::Result<Dtype, D::Error> {
    struct DtypeVisitor;
    impl<'de> Visitor<'de> for DtypeVisitor {
        type Value = Dtype;

        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("a dtype name")
        }

        fn visit_enum<A: de::EnumAccess<'de>>(
            self,
            data: A,
        ) -> std::result::Result<Dtype, A::Error> {
            let (name, variant): (String, _) = data.variant()?;
            de::VariantAccess::unit_variant(variant)?;
            Dtype::ALL
                .into_iter()
                .find(|t| t.name() == name)
                .ok_or_else(|| {
                    let all: Vec<&str> = Dtype::ALL.iter().map(|t| t.name()).collect();
                    de::Error::custom(format_args!(
                        "unknown dtype {} (one of: {})",
                        quoted(&name),
                        all.join(", ")
                    ))
                })
        }
    }
    const NAMES: [&str; 22] = [
        "BOOL",
        "F4",
        "F6_E2M3",
        "F6_E3M2",
        "U8",
        "I8",
        "F8_E5M2",
        "F8_E4M3",
        "F8_E8M0",
        "F8_E4M3FNUZ",
        "F8_E5M2FNUZ",
        "I16",
        "U16",
        "F16",
        "BF16",
        "I32",
        "U32",
        "F32",
        "C64",
        "F64",
        "I64",
        "U64",
    ];
    d.deserialize_enum("Dtype", &NAMES, DtypeVisitor)
}

impl<'de> Deserialize<'de> for RawHeader {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> std::result::Result<Self, D::Error> {
        struct HeaderVisitor;
        impl<'de> Visitor<'de> for HeaderVisitor {
            type Value = RawHeader;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a JSON object of tensor entries")
            }

            fn visit_map<A: MapAccess<'de>>(
                self,
                mut map: A,
            ) -> std::result::Result<RawHeader, A::Error> {
                let mut metadata = None;
                let mut seen_metadata = false;
                let mut tensors = Vec::with_capacity(map.size_hint().unwrap_or(0).min(1 << 16));
                while let Some(key) = map.next_key::<String>()? {
                    if key == "__metadata__" {
                        if seen_metadata {
                            return Err(de::Error::duplicate_field("__metadata__"));
                        }
                        seen_metadata = true;
                        metadata = map.next_value::<Option<BTreeMap<String, String>>>()?;
                        continue;
                    }
                    let raw: RawTensor = map.next_value()?;
                    tensors.push(TensorInfo {
                        name: key,
                        dtype: raw.dtype,
                        shape: raw.shape,
                        begin: raw.data_offsets.0,
                        end: raw.data_offsets.1,
                    });
                }
                Ok(RawHeader { metadata, tensors })
            }
        }
        deserializer.deserialize_map(HeaderVisitor)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file(json: &str, data: usize) -> Vec<u8> {
        let mut v = (json.len() as u64).to_le_bytes().to_vec();
        v.extend_from_slice(json.as_bytes());
        v.extend(std::iter::repeat_n(7u8, data));
        v
    }

    fn parse(bytes: &[u8]) -> Result<Header> {
        Header::parse_prefix(Path::new("m.safetensors"), bytes, bytes.len() as u64)
    }

    #[test]
    fn accepts_padding_metadata_unknown_fields_and_empty_tensors() {
        let json = r#"  {"__metadata__":{"format":"pt"},"b":{"dtype":"F16","shape":[2],"data_offsets":[4,8],"extra":1},"a":{"dtype":"U8","shape":[4],"data_offsets":[0,4]},"e":{"dtype":"F32","shape":[0,3],"data_offsets":[8,8]},"s":{"dtype":"I32","shape":[],"data_offsets":[8,12]}}   "#;
        let h = parse(&file(json, 12)).unwrap();
        assert_eq!(h.tensors.len(), 4);
        assert_eq!(h.tensors[0].name, "a");
        assert_eq!(h.metadata.as_ref().unwrap()["format"], "pt");
        assert_eq!(h.tensor("s").unwrap().len(), 4);
    }

    #[test]
    fn rejects_duplicate_names_with_the_name() {
        let json = r#"{"a":{"dtype":"U8","shape":[1],"data_offsets":[0,1]},"a":{"dtype":"U8","shape":[1],"data_offsets":[1,2]}}"#;
        let e = parse(&file(json, 2)).unwrap_err();
        assert_eq!(e.tensor(), Some("a"));
        assert!(e.to_string().contains("appears twice"), "{e}");
    }

    #[test]
    fn overlap_message_names_both_tensors_and_offsets() {
        let json = r#"{"x":{"dtype":"U8","shape":[4],"data_offsets":[0,4]},"model.layers.3.mlp.up_proj.weight":{"dtype":"U8","shape":[4],"data_offsets":[2,6]}}"#;
        let e = parse(&file(json, 6)).unwrap_err().to_string();
        assert!(
            e.contains("tensor 'model.layers.3.mlp.up_proj.weight': data_offsets [2, 6) overlap the previous tensor 'x', which ends at 4"),
            "{e}"
        );
    }

    #[test]
    fn rejects_sub_byte_remainder_and_overflow() {
        let json = r#"{"x":{"dtype":"F4","shape":[3],"data_offsets":[0,1]}}"#;
        assert!(parse(&file(json, 1))
            .unwrap_err()
            .to_string()
            .contains("whole number of bytes"));
        let json = r#"{"x":{"dtype":"F32","shape":[4294967296,4294967296],"data_offsets":[0,1]}}"#;
        assert!(parse(&file(json, 1))
            .unwrap_err()
            .to_string()
            .contains("overflows"));
    }

    #[test]
    fn header_length_lies_are_caught_before_allocation() {
        let mut v = file("{}", 0);
        v[..8].copy_from_slice(&u64::MAX.to_le_bytes());
        assert!(parse(&v)
            .unwrap_err()
            .to_string()
            .contains("exceeds the format's limit"));
        v[..8].copy_from_slice(&1000u64.to_le_bytes());
        assert!(parse(&v)
            .unwrap_err()
            .to_string()
            .contains("runs past the end"));
    }
}
