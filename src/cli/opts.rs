//! The loading options that `load` and `bench` share, and the parsers of sizes and dtypes.

use clap::Args;
use tensorstream::{Device, Dtype, IoBackend, Loader, SliceRule};

/// How to load: device, dtype, I/O backend, selection and the pipeline's sizes.
#[derive(Args, Clone)]
pub struct LoadOpts {
    /// cpu, cuda or cuda:N.
    #[arg(long, default_value = "cpu")]
    pub device: Device,
    /// Convert floating tensors to F32, F16 or BF16 (any case; fp32 and fp16 work too).
    #[arg(long, value_parser = parse_dtype)]
    pub dtype: Option<Dtype>,
    /// auto, direct, buffered, pread or pread-direct.
    #[arg(long)]
    pub io: Option<IoBackend>,
    /// Load only tensors whose whole name matches this glob (repeatable).
    #[arg(long)]
    pub only: Vec<String>,
    /// Load only some rows (dimension 0) of the tensors matching GLOB, reading only
    /// their bytes: GLOB=START:END for rows START..END, GLOB=RANK/WORLD for part RANK of
    /// WORLD equal parts (a tensor-parallel shard). Repeatable; a tensor takes the
    /// first rule that matches it, and one matching both a --rows and a --cols rule is
    /// an error.
    #[arg(long, value_name = "GLOB=ROWS", value_parser = |s: &str| SliceRule::parse(s, 0))]
    pub rows: Vec<SliceRule>,
    /// Load only some columns (dimension 1) of the tensors matching GLOB, as --rows:
    /// the shard of a row-parallel weight. Every row is still read; its selected
    /// columns are gathered (on CUDA by 2-D copies to the device).
    #[arg(long, value_name = "GLOB=COLS", value_parser = |s: &str| SliceRule::parse(s, 1))]
    pub cols: Vec<SliceRule>,
    /// Largest read (e.g. 4M).
    #[arg(long, value_parser = parse_size)]
    pub chunk_size: Option<u64>,
    /// Reads in flight.
    #[arg(long)]
    pub queue_depth: Option<usize>,
    /// Staging memory (e.g. 64M) [default: 128M on CUDA, 64M on the host].
    #[arg(long, value_parser = parse_size)]
    pub staging: Option<u64>,
    /// CUDA: allocate the pinned staging write-combined.
    #[arg(long)]
    pub staging_wc: bool,
    /// CUDA: put the staging on huge pages and pin it with cuMemHostRegister, and fail
    /// where that is refused (the default does so too, unless --staging-wc, but falls
    /// back to cuMemHostAlloc).
    #[arg(long, conflicts_with_all = ["staging_wc", "no_staging_huge"])]
    pub staging_huge: bool,
    /// CUDA: pin the staging with cuMemHostAlloc, not on huge pages.
    #[arg(long)]
    pub no_staging_huge: bool,
}

impl LoadOpts {
    /// The loader these options describe.
    pub fn loader(&self) -> Loader {
        let mut l = Loader::new()
            .device(self.device)
            .dtype(self.dtype)
            .io(self.io.unwrap_or_default());
        for p in &self.only {
            l = l.only(p.clone());
        }
        for r in self.rows.iter().chain(&self.cols) {
            l = if r.dim == 0 {
                l.rows(r.pattern.clone(), r.slice)
            } else {
                l.columns(r.pattern.clone(), r.slice)
            };
        }
        if let Some(c) = self.chunk_size {
            l = l.chunk_size(c);
        }
        if let Some(q) = self.queue_depth {
            l = l.queue_depth(q);
        }
        if let Some(s) = self.staging {
            l = l.staging_bytes(s);
        }
        if self.staging_huge || self.no_staging_huge {
            l = l.huge_page_staging(self.staging_huge);
        }
        l.write_combined_staging(self.staging_wc)
    }
}

/// A size: a number with an optional K, M or G suffix (powers of 1024).
pub fn parse_size(s: &str) -> Result<u64, String> {
    let s = s.trim();
    let (num, mult) = match s.char_indices().last() {
        Some((i, 'k' | 'K')) => (s.get(..i).unwrap_or_default(), 1u64 << 10),
        Some((i, 'm' | 'M')) => (s.get(..i).unwrap_or_default(), 1 << 20),
        Some((i, 'g' | 'G')) => (s.get(..i).unwrap_or_default(), 1 << 30),
        _ => (s, 1),
    };
    let n: f64 = num.parse().map_err(|_| format!("invalid size '{s}'"))?;
    if !(n.is_finite() && n > 0.0) {
        return Err(format!("invalid size '{s}'"));
    }
    Ok((n * mult as f64) as u64)
}

/// A dtype: the format's name in any case ("bf16"), or a common alias (fp32, fp16,
/// half, float, float32, float16, bfloat16).
pub fn parse_dtype(s: &str) -> Result<Dtype, String> {
    let name = match s.to_ascii_lowercase().as_str() {
        "fp32" | "float" | "float32" => "F32",
        "fp16" | "half" | "float16" => "F16",
        "bfloat16" => "BF16",
        _ => s,
    };
    name.parse().map_err(|_| {
        format!(
            "unknown dtype '{}' (one of: F32, F16, BF16; also fp32, fp16, bf16, in any case)",
            tensorstream::internals::escape(s)
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dtype_aliases_and_the_message_listing_the_names() {
        for (s, d) in [
            ("fp16", Dtype::F16),
            ("FP16", Dtype::F16),
            ("f16", Dtype::F16),
            ("bf16", Dtype::BF16),
            ("Bf16", Dtype::BF16),
            ("fp32", Dtype::F32),
            ("f32", Dtype::F32),
        ] {
            assert_eq!(parse_dtype(s), Ok(d), "{s}");
        }
        let e = parse_dtype("fp12").unwrap_err();
        assert!(
            e.starts_with("unknown dtype 'fp12' (one of: F32, F16, BF16"),
            "{e}"
        );
    }

    #[test]
    fn sizes() {
        assert_eq!(parse_size("2K"), Ok(2048));
        assert_eq!(parse_size("1.5M"), Ok(3 << 19));
        assert!(parse_size("0").is_err() && parse_size("lots").is_err());
    }
}
