//! Loads a checkpoint (by default the synthetic Llama-layout one) into candle tensors on
//! a device and reports GB/s, peak RSS and a digest of the loaded values; with `--with`
//! it loads through candle's own paths instead, for comparison.
//!
//! ```text
//! cargo run --release --features candle --example candle_load -- [PATH] [--device cpu|cuda:N]
//!     [--with tensorstream|candle|mmap] [--dtype f32|f16|bf16] [--size-mb N] [--write DIR] [--no-digest]
//! ```
//!
//! `--with`: `tensorstream` (the default) is `tensorstream::candle::load`; `candle` is
//! `candle_core::safetensors::load`; `mmap` is candle-nn's
//! `VarBuilder::from_mmaped_safetensors` with every tensor fetched. Without PATH it
//! writes a synthetic BF16 checkpoint of `--size-mb` MiB (default 1024) to a temporary
//! directory first; `--write DIR` writes it to DIR and exits. Prints one JSON line.

use std::path::{Path, PathBuf};
use std::time::Instant;

use candle_core::{CpuStorage, DType, Device, Storage, Tensor};
use sha2::{Digest, Sha256};

type Res<T> = Result<T, Box<dyn std::error::Error>>;

struct Args {
    path: Option<PathBuf>,
    device: String,
    with: String,
    dtype: Option<DType>,
    size_mb: u64,
    write: Option<PathBuf>,
    digest: bool,
}

fn parse() -> Res<Args> {
    let mut a = Args {
        path: None,
        device: "cpu".into(),
        with: "tensorstream".into(),
        dtype: None,
        size_mb: 1024,
        write: None,
        digest: true,
    };
    let mut it = std::env::args().skip(1);
    while let Some(arg) = it.next() {
        let mut value = || it.next().ok_or(format!("{arg} needs a value"));
        match arg.as_str() {
            "--device" => a.device = value()?,
            "--with" => a.with = value()?,
            "--dtype" => {
                a.dtype = Some(match value()?.to_lowercase().as_str() {
                    "f32" => DType::F32,
                    "f16" => DType::F16,
                    "bf16" => DType::BF16,
                    other => return Err(format!("--dtype {other}: f32, f16 or bf16").into()),
                })
            }
            "--size-mb" => a.size_mb = value()?.parse()?,
            "--write" => a.write = Some(PathBuf::from(value()?)),
            "--no-digest" => a.digest = false,
            _ if arg.starts_with("--") => return Err(format!("unknown option {arg}").into()),
            _ => a.path = Some(PathBuf::from(arg)),
        }
    }
    Ok(a)
}

fn main() {
    if let Err(e) = run() {
        eprintln!("candle_load: {e}");
        std::process::exit(1);
    }
}

fn run() -> Res<()> {
    let args = parse()?;
    let spec = tensorstream::synth::SynthSpec::for_size(args.size_mb << 20);
    if let Some(dir) = &args.write {
        std::fs::create_dir_all(dir)?;
        let path = tensorstream::synth::write_checkpoint(dir, &spec, 1, 7)?;
        println!("{}", path.display());
        return Ok(());
    }
    let tmp = tempfile::tempdir()?;
    let path = match &args.path {
        Some(p) => p.clone(),
        None => tensorstream::synth::write_checkpoint(tmp.path(), &spec, 1, 7)?,
    };
    let device = match args.device.as_str() {
        "cpu" => Device::Cpu,
        d => match d.strip_prefix("cuda:").and_then(|n| n.parse().ok()) {
            Some(n) => Device::new_cuda(n)?,
            None => return Err(format!("unknown device '{d}' (cpu, cuda:N)").into()),
        },
    };
    // Names and dtypes from the headers (not timed).
    let ckpt = tensorstream::Checkpoint::open(&path)?;
    let files: Vec<PathBuf> = ckpt.shards.iter().map(|h| h.path.clone()).collect();
    let mut names: Vec<String> = ckpt.tensors().map(|t| t.info.name.clone()).collect();
    names.sort();
    device.synchronize()?;

    let start = Instant::now();
    let tensors = load(&args, &path, &files, &names, &device)?;
    device.synchronize()?;
    let seconds = start.elapsed().as_secs_f64();
    let peak_rss = peak_rss_bytes();

    let bytes: u64 = tensors
        .iter()
        .map(|t| (t.elem_count() * t.dtype().size_in_bytes()) as u64)
        .sum();
    let digest = if args.digest {
        digest_of(&names, &tensors)?
    } else {
        String::new()
    };
    println!(
        "{{\"with\":\"{}\",\"device\":\"{}\",\"tensors\":{},\"bytes\":{bytes},\"seconds\":{seconds:.4},\"gbps\":{:.3},\"peak_rss_bytes\":{peak_rss},\"peak_rss_ratio\":{:.3},\"sha256\":\"{digest}\"}}",
        args.with,
        args.device,
        tensors.len(),
        bytes as f64 / seconds / 1e9,
        peak_rss as f64 / bytes as f64,
    );
    Ok(())
}

/// The tensors `names` of the checkpoint at `path` (files `files`), loaded on `device`
/// the way `args.with` says, in the order of `names`.
fn load(
    args: &Args,
    path: &Path,
    files: &[PathBuf],
    names: &[String],
    device: &Device,
) -> Res<Vec<Tensor>> {
    let pick = |mut all: std::collections::HashMap<String, Tensor>| -> Res<Vec<Tensor>> {
        names
            .iter()
            .map(|n| all.remove(n).ok_or_else(|| format!("{n} missing").into()))
            .collect()
    };
    let convert = |t: Tensor| -> Res<Tensor> {
        match args.dtype {
            Some(d) if t.dtype().is_float() => Ok(t.to_dtype(d)?),
            _ => Ok(t),
        }
    };
    match args.with.as_str() {
        "tensorstream" => pick(tensorstream::candle::load(path, device, args.dtype)?),
        "candle" => {
            let mut all = std::collections::HashMap::new();
            for f in files {
                for (n, t) in candle_core::safetensors::load(f, device)? {
                    all.insert(n, convert(t)?);
                }
            }
            pick(all)
        }
        "mmap" => {
            // SAFETY: the checkpoint is not modified while it is mapped.
            let mm = unsafe { candle_core::safetensors::MmapedSafetensors::multi(files)? };
            let dtypes: Vec<DType> = names
                .iter()
                .map(|n| Ok(mm.get(n)?.dtype().try_into()?))
                .collect::<Res<_>>()?;
            // SAFETY: as above.
            let vb = unsafe {
                candle_nn::VarBuilder::from_mmaped_safetensors(files, DType::F32, device)?
            };
            names
                .iter()
                .zip(dtypes)
                .map(|(n, d)| {
                    let d = match args.dtype {
                        Some(want) if d.is_float() => want,
                        _ => d,
                    };
                    Ok(vb.get_unchecked_dtype(n, d)?)
                })
                .collect()
        }
        other => Err(format!("--with {other}: tensorstream, candle or mmap").into()),
    }
}

/// SHA-256 over each tensor's name, dtype, shape and bytes, in the order of `names`.
fn digest_of(names: &[String], tensors: &[Tensor]) -> Res<String> {
    let mut h = Sha256::new();
    for (n, t) in names.iter().zip(tensors) {
        h.update(n.as_bytes());
        h.update(format!("{:?}{:?}", t.dtype(), t.dims()).as_bytes());
        let t = t.to_device(&Device::Cpu)?;
        let (storage, layout) = t.storage_and_layout();
        let Storage::Cpu(cpu) = &*storage else {
            return Err("not on the CPU".into());
        };
        let all: &[u8] = match cpu {
            CpuStorage::U8(v) => v,
            CpuStorage::U32(v) => bytemuck::cast_slice(v),
            CpuStorage::I64(v) => bytemuck::cast_slice(v),
            CpuStorage::BF16(v) => bytemuck::cast_slice(v),
            CpuStorage::F16(v) => bytemuck::cast_slice(v),
            CpuStorage::F32(v) => bytemuck::cast_slice(v),
            CpuStorage::F64(v) => bytemuck::cast_slice(v),
            _ => return Err(format!("{n}: dtype {:?} not digested", t.dtype()).into()),
        };
        let size = t.dtype().size_in_bytes();
        let (a, b) = layout.contiguous_offsets().ok_or("not contiguous")?;
        h.update(
            all.get(a * size..b * size)
                .ok_or("layout past the storage")?,
        );
    }
    Ok(h.finalize().iter().map(|b| format!("{b:02x}")).collect())
}

/// The process's peak resident memory (VmHWM), in bytes.
fn peak_rss_bytes() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("VmHWM:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        })
        .map_or(0, |kb| kb * 1024)
}
