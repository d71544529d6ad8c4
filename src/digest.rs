//! Per-tensor SHA-256 digests, as `tensorstream load --digest` prints them.

use sha2::{Digest, Sha256};

use crate::error::Result;
use crate::{Model, Tensor};

/// Lowercase hex SHA-256 of the tensor's bytes as loaded (copied back from a device).
pub fn tensor_sha256(t: &Tensor) -> Result<String> {
    let hash = match t.host_bytes() {
        Some(b) => Sha256::digest(b),
        None => Sha256::digest(t.to_host()?),
    };
    Ok(hex(&hash))
}

/// Lowercase hex of bytes.
pub fn hex(bytes: &[u8]) -> String {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut s = String::with_capacity(bytes.len() * 2);
    for &b in bytes {
        for nibble in [b >> 4, b & 15] {
            s.push(char::from(
                HEX.get(usize::from(nibble)).copied().unwrap_or(b'0'),
            ));
        }
    }
    s
}

/// One JSON line per tensor, sorted by name:
/// `{"name":"...","dtype":"BF16","shape":[4096,4096],"sha256":"<hex>"}`.
pub fn digest_lines(model: &Model) -> Result<Vec<String>> {
    model
        .tensors()
        .map(|t| {
            // Keys in the documented order: name, dtype, shape, sha256.
            let name = serde_json::Value::String(t.name.clone());
            let shape = serde_json::json!(t.shape);
            Ok(format!(
                r#"{{"name":{name},"dtype":"{}","shape":{shape},"sha256":"{}"}}"#,
                t.dtype.name(),
                tensor_sha256(t)?
            ))
        })
        .collect()
}
