//! Synthetic Llama-layout checkpoints, so that `bench` runs on a fresh machine with
//! nothing downloaded. Tensor bytes are pseudo-random (finite BF16 values).

use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};

use crate::dtype::Dtype;
use crate::error::{Error, Result};

/// Shape of the synthetic model.
#[derive(Debug, Clone, Copy)]
pub struct SynthSpec {
    /// Hidden size.
    pub hidden: u64,
    /// MLP size.
    pub intermediate: u64,
    /// Vocabulary size.
    pub vocab: u64,
    /// Decoder layers.
    pub layers: u64,
    /// Element type of every tensor: BF16 (the default) or F16.
    pub dtype: Dtype,
}

impl SynthSpec {
    /// A TinyLlama-like model with as many layers as fit in about `bytes` of BF16.
    /// Below the size of TinyLlama's embeddings and one layer (about 365 MB), every
    /// dimension is halved until one layer fits (down to a hidden size of 64).
    pub fn for_size(bytes: u64) -> SynthSpec {
        let mut spec = SynthSpec {
            hidden: 2048,
            intermediate: 5632,
            vocab: 32000,
            layers: 1,
            dtype: Dtype::BF16,
        };
        while spec.hidden > 64 && spec.bytes() > bytes {
            spec.hidden /= 2;
            spec.intermediate /= 2;
            spec.vocab /= 2;
        }
        let one = spec.bytes();
        spec.layers = 2;
        let layer = spec.bytes() - one;
        spec.layers = 1 + bytes.saturating_sub(one) / layer;
        spec
    }

    /// Bytes of tensor data (2 per element, both dtypes being 16-bit).
    pub fn bytes(&self) -> u64 {
        self.tensors()
            .iter()
            .map(|(_, s)| 2 * s.iter().product::<u64>())
            .sum()
    }

    /// (name, shape) of every tensor, in file order.
    pub fn tensors(&self) -> Vec<(String, Vec<u64>)> {
        let (h, i) = (self.hidden, self.intermediate);
        let mut v = vec![("model.embed_tokens.weight".to_string(), vec![self.vocab, h])];
        for l in 0..self.layers {
            let p = format!("model.layers.{l}");
            for (n, s) in [
                ("self_attn.q_proj.weight", vec![h, h]),
                ("self_attn.k_proj.weight", vec![h, h]),
                ("self_attn.v_proj.weight", vec![h, h]),
                ("self_attn.o_proj.weight", vec![h, h]),
                ("mlp.gate_proj.weight", vec![i, h]),
                ("mlp.up_proj.weight", vec![i, h]),
                ("mlp.down_proj.weight", vec![h, i]),
                ("input_layernorm.weight", vec![h]),
                ("post_attention_layernorm.weight", vec![h]),
            ] {
                v.push((format!("{p}.{n}"), s));
            }
        }
        v.push(("model.norm.weight".to_string(), vec![h]));
        v.push(("lm_head.weight".to_string(), vec![self.vocab, h]));
        v
    }
}

/// Writes the model as exactly `shards` safetensors files in `dir` (plus a
/// `model.safetensors.index.json` when `shards > 1`); returns the path to load. More
/// shards than the model has tensors is an error saying so.
pub fn write_checkpoint(dir: &Path, spec: &SynthSpec, shards: usize, seed: u64) -> Result<PathBuf> {
    let tensors = spec.tensors();
    let total = spec.bytes();
    let shards = shards.max(1);
    let count = tensors.len();
    if shards > count {
        return Err(Error::InvalidArgument(format!(
            "cannot write {shards} shards: a synthetic model of {total} bytes has {} layers \
             and {count} tensors, so at most {count} shards (ask for fewer shards or a \
             larger size)",
            spec.layers
        )));
    }
    let per_shard = total.div_ceil(shards as u64);
    let mut groups: Vec<Vec<(String, Vec<u64>)>> = vec![Vec::new()];
    let mut acc = 0u64;
    for (i, t) in tensors.into_iter().enumerate() {
        let len = 2 * t.1.iter().product::<u64>();
        // A new shard when this one is full, or when each tensor left must start one
        // for the count to come out exact.
        let must = count - i <= shards - groups.len();
        if (acc >= per_shard || must) && acc > 0 && groups.len() < shards {
            groups.push(Vec::new());
            acc = 0;
        }
        acc += len;
        if let Some(g) = groups.last_mut() {
            g.push(t);
        }
    }
    let n = groups.len();
    let mut rng = seed | 1;
    let mut weight_map = serde_json::Map::new();
    let mut first = PathBuf::new();
    for (k, g) in groups.iter().enumerate() {
        let name = if n == 1 {
            "model.safetensors".to_string()
        } else {
            format!("model-{:05}-of-{n:05}.safetensors", k + 1)
        };
        let path = dir.join(&name);
        write_file(&path, g, spec.dtype.name(), &mut rng)?;
        for (t, _) in g {
            weight_map.insert(t.clone(), serde_json::Value::String(name.clone()));
        }
        if k == 0 {
            first = path;
        }
    }
    if n == 1 {
        return Ok(first);
    }
    let index = dir.join("model.safetensors.index.json");
    let body = serde_json::json!({"metadata": {"total_size": total}, "weight_map": weight_map});
    std::fs::write(&index, body.to_string()).map_err(|e| Error::io(&index, "write", e))?;
    Ok(index)
}

fn write_file(
    path: &Path,
    tensors: &[(String, Vec<u64>)],
    dtype: &str,
    rng: &mut u64,
) -> Result<()> {
    let mut header = serde_json::Map::new();
    header.insert(
        "__metadata__".into(),
        serde_json::json!({"format": "pt", "generator": "tensorstream synth"}),
    );
    let mut off = 0u64;
    for (name, shape) in tensors {
        let len = 2 * shape.iter().product::<u64>();
        header.insert(
            name.clone(),
            serde_json::json!({"dtype": dtype, "shape": shape, "data_offsets": [off, off + len]}),
        );
        off += len;
    }
    let mut json = serde_json::Value::Object(header).to_string();
    while !(8 + json.len()).is_multiple_of(8) {
        json.push(' ');
    }
    let io = |e| Error::io(path, "write", e);
    let mut w = BufWriter::with_capacity(8 << 20, File::create(path).map_err(io)?);
    w.write_all(&(json.len() as u64).to_le_bytes())
        .map_err(io)?;
    w.write_all(json.as_bytes()).map_err(io)?;
    let mut block = vec![0u8; 1 << 20];
    let mut left = off;
    while left > 0 {
        for pair in block.chunks_exact_mut(8) {
            // xorshift64*: fast, and different for every file and seed.
            *rng ^= *rng >> 12;
            *rng ^= *rng << 25;
            *rng ^= *rng >> 27;
            let x = rng.wrapping_mul(0x2545_F491_4F6C_DD1D);
            // Four 16-bit floats with the exponent's top bit clear: finite, |v| < 2.
            let v = x & 0xBFFF_BFFF_BFFF_BFFF;
            pair.copy_from_slice(&v.to_le_bytes());
        }
        let n = left.min(block.len() as u64) as usize;
        w.write_all(block.get(..n).unwrap_or_default())
            .map_err(io)?;
        left -= n as u64;
    }
    w.flush().map_err(io)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::SynthSpec;

    #[test]
    fn for_size_stays_within_the_size_asked_for() {
        for bytes in [
            1 << 20,
            8 << 20,
            24 << 20,
            100 << 20,
            400 << 20,
            1 << 30,
            8 << 30,
        ] {
            let spec = SynthSpec::for_size(bytes);
            let got = spec.bytes();
            assert!(got <= bytes, "{bytes}: {got} bytes ({spec:?})");
            assert!(got * 2 > bytes, "{bytes}: only {got} bytes ({spec:?})");
        }
        let big = SynthSpec::for_size(8 << 30);
        assert_eq!(
            (big.hidden, big.intermediate, big.vocab),
            (2048, 5632, 32000)
        );
        // The smallest geometry: one layer, whatever is asked.
        assert_eq!(SynthSpec::for_size(0).layers, 1);
        assert_eq!(SynthSpec::for_size(0).hidden, 64);
    }

    #[test]
    fn writes_exactly_the_shards_asked_or_refuses() {
        let spec = SynthSpec::for_size(1 << 20);
        let count = spec.tensors().len();
        for shards in [1, 2, 5, count] {
            let dir = tempfile::tempdir().unwrap();
            super::write_checkpoint(dir.path(), &spec, shards, 7).unwrap();
            let files = std::fs::read_dir(dir.path())
                .unwrap()
                .filter(|e| {
                    e.as_ref()
                        .unwrap()
                        .path()
                        .extension()
                        .is_some_and(|x| x == "safetensors")
                })
                .count();
            assert_eq!(files, shards);
        }
        let dir = tempfile::tempdir().unwrap();
        let e = super::write_checkpoint(dir.path(), &spec, count + 1, 7).unwrap_err();
        assert!(
            e.to_string().contains(&format!("at most {count} shards")),
            "{e}"
        );
    }
}
