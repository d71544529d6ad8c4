//! Runs candle-transformers' BERT (all-MiniLM-L6-v2) on weights loaded by tensorstream
//! and checks that the sentence embedding equals, bit for bit, the one computed on
//! weights from candle's own `VarBuilder::from_mmaped_safetensors`.
//!
//! ```text
//! scripts/fetch-minilm.sh            # once: model.safetensors, config.json, vocab.txt
//! cargo run --release --features candle --example candle_bert -- [DIR] [--device cpu|cuda:N] [--text "..."]
//! ```
//!
//! DIR defaults to target/minilm. Exits 1 when the embeddings differ.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Instant;

use candle_core::{DType, Device, Tensor};
use candle_nn::VarBuilder;
use candle_transformers::models::bert::{BertModel, Config};

type Res<T> = Result<T, Box<dyn std::error::Error>>;

/// The sentence embedded unless `--text` gives another.
pub const SENTENCE: &str = "Tensorstream loads the weights; candle runs the model, unchanged.";

fn main() -> ExitCode {
    match run() {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(e) => {
            eprintln!("candle_bert: {e}");
            ExitCode::FAILURE
        }
    }
}

fn run() -> Res<bool> {
    let mut dir = PathBuf::from("target/minilm");
    let mut device = "cpu".to_string();
    let mut text = SENTENCE.to_string();
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        match a.as_str() {
            "--device" => device = args.next().ok_or("--device needs a value")?,
            "--text" => text = args.next().ok_or("--text needs a value")?,
            _ => dir = PathBuf::from(a),
        }
    }
    let device = candle_device(&device)?;
    let e = embeddings(&dir, &device, &text)?;
    let head: Vec<String> = e.ours.iter().take(8).map(|x| format!("{x:.6}")).collect();
    println!("text: {text:?} ({} tokens)", e.tokens);
    println!(
        "embedding ({} values): [{}, ...]",
        e.ours.len(),
        head.join(", ")
    );
    println!(
        "weights: tensorstream {:.3} s, candle's mmaped VarBuilder {:.3} s (model built from each)",
        e.ours_s, e.theirs_s
    );
    let same = same_bits(&e.ours, &e.theirs);
    if same {
        println!("equal bit for bit to the embedding from candle's own VarBuilder");
    } else {
        let first = e
            .ours
            .iter()
            .zip(&e.theirs)
            .position(|(a, b)| a.to_bits() != b.to_bits());
        println!("DIFFERENT from candle's own VarBuilder (first at {first:?})");
    }
    Ok(same)
}

/// `cpu` or `cuda:N` as a candle device.
pub fn candle_device(s: &str) -> Res<Device> {
    match s {
        "cpu" => Ok(Device::Cpu),
        "cuda" => Ok(Device::new_cuda(0)?),
        _ => match s.strip_prefix("cuda:").and_then(|n| n.parse().ok()) {
            Some(n) => Ok(Device::new_cuda(n)?),
            None => Err(format!("unknown device '{s}' (cpu, cuda:N)").into()),
        },
    }
}

/// The sentence embedding computed on each set of weights.
pub struct Embeddings {
    /// On the weights loaded by tensorstream.
    pub ours: Vec<f32>,
    /// On the weights from candle's `VarBuilder::from_mmaped_safetensors`.
    pub theirs: Vec<f32>,
    /// Tokens of the text, [CLS] and [SEP] included.
    pub tokens: usize,
    /// Seconds to build the model on tensorstream's weights and on candle's.
    pub ours_s: f64,
    /// See `ours_s`.
    pub theirs_s: f64,
}

/// Embeds `text` with the MiniLM checkpoint in `dir` on `device`, twice.
pub fn embeddings(dir: &Path, device: &Device, text: &str) -> Res<Embeddings> {
    let weights = dir.join("model.safetensors");
    if !weights.exists() {
        return Err(format!(
            "{} is missing: run scripts/fetch-minilm.sh {}",
            weights.display(),
            dir.display()
        )
        .into());
    }
    let config: Config = serde_json::from_str(&std::fs::read_to_string(dir.join("config.json"))?)?;
    let vocab = read_vocab(&dir.join("vocab.txt"))?;
    let ids = tokenize(&vocab, text)?;

    let start = Instant::now();
    let vb = tensorstream::candle::var_builder(&[&weights], DType::F32, device)?;
    let ours_model = BertModel::load(vb, &config)?;
    let ours_s = start.elapsed().as_secs_f64();

    let start = Instant::now();
    // SAFETY: the checkpoint is not modified while it is mapped.
    let vb = unsafe { VarBuilder::from_mmaped_safetensors(&[&weights], DType::F32, device)? };
    let theirs_model = BertModel::load(vb, &config)?;
    let theirs_s = start.elapsed().as_secs_f64();

    Ok(Embeddings {
        ours: embed(&ours_model, &ids, device)?,
        theirs: embed(&theirs_model, &ids, device)?,
        tokens: ids.len(),
        ours_s,
        theirs_s,
    })
}

/// The sentence-transformers embedding: the mean of the last hidden states over the
/// tokens, L2-normalized.
fn embed(model: &BertModel, ids: &[u32], device: &Device) -> Res<Vec<f32>> {
    let input = Tensor::new(ids, device)?.unsqueeze(0)?;
    let types = input.zeros_like()?;
    let hidden = model.forward(&input, &types, None)?;
    let mean = hidden.mean(1)?;
    let norm = mean.sqr()?.sum_keepdim(1)?.sqrt()?;
    Ok(mean.broadcast_div(&norm)?.squeeze(0)?.to_vec1::<f32>()?)
}

/// Whether two embeddings hold the same bits.
pub fn same_bits(a: &[f32], b: &[f32]) -> bool {
    a.len() == b.len() && a.iter().zip(b).all(|(x, y)| x.to_bits() == y.to_bits())
}

/// vocab.txt: one token a line, its id the line number.
fn read_vocab(path: &Path) -> Res<HashMap<String, u32>> {
    let text = std::fs::read_to_string(path)?;
    Ok(text
        .lines()
        .enumerate()
        .map(|(i, t)| (t.to_string(), i as u32))
        .collect())
}

/// BERT's uncased tokenization, enough for plain ASCII text: lowercase, split at
/// whitespace and around punctuation, then WordPiece (longest known prefix first,
/// continuations marked `##`), wrapped in [CLS] ... [SEP].
fn tokenize(vocab: &HashMap<String, u32>, text: &str) -> Res<Vec<u32>> {
    let id = |t: &str| vocab.get(t).copied().ok_or(format!("vocab.txt has no {t}"));
    let mut words: Vec<String> = Vec::new();
    let mut word = String::new();
    for c in text.to_lowercase().chars() {
        if c.is_whitespace() || c.is_ascii_punctuation() {
            if !word.is_empty() {
                words.push(std::mem::take(&mut word));
            }
            if c.is_ascii_punctuation() {
                words.push(c.to_string());
            }
        } else {
            word.push(c);
        }
    }
    if !word.is_empty() {
        words.push(word);
    }
    let mut ids = vec![id("[CLS]")?];
    for w in &words {
        ids.extend(wordpiece(vocab, w).unwrap_or(vec![id("[UNK]")?]));
    }
    ids.push(id("[SEP]")?);
    Ok(ids)
}

/// The WordPiece ids of one word; `None` when some part has no piece.
fn wordpiece(vocab: &HashMap<String, u32>, word: &str) -> Option<Vec<u32>> {
    let chars: Vec<char> = word.chars().collect();
    let mut ids = Vec::new();
    let mut start = 0;
    while start < chars.len() {
        let found = (start + 1..=chars.len()).rev().find_map(|end| {
            let piece: String = chars[start..end].iter().collect();
            let piece = if start > 0 {
                format!("##{piece}")
            } else {
                piece
            };
            vocab.get(&piece).map(|&i| (i, end))
        });
        let (i, end) = found?;
        ids.push(i);
        start = end;
    }
    Some(ids)
}
