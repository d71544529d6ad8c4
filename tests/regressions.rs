//! Inputs the fuzz targets (fuzz/) found, one test per bug, named after what it pins.
//! Each uses only the public API; the crash input is written out in the test.

use std::path::{Path, PathBuf};

use tensorstream::checkpoint::parse_index;
use tensorstream::plan::{plan, Place, PlanOptions};
use tensorstream::{Checkpoint, Dtype, Header};

/// A one-shard checkpoint of the safetensors bytes `file`.
fn checkpoint(file: &[u8]) -> Checkpoint {
    let path = Path::new("model.safetensors");
    let header = Header::parse_prefix(path, file, file.len() as u64).expect("a valid file");
    Checkpoint {
        path: PathBuf::from("."),
        index: None,
        index_metadata: None,
        shards: vec![header],
    }
}

/// A file holding one F32 tensor `w` of three values.
fn three_f32s() -> Vec<u8> {
    let data: Vec<u8> = [1.5f32, -2.0, 3.25]
        .iter()
        .flat_map(|x| x.to_le_bytes())
        .collect();
    let view = safetensors::tensor::TensorView::new(safetensors::Dtype::F32, vec![3], &data)
        .expect("a valid view");
    safetensors::serialize([("w", view)], None).expect("serialize")
}

/// fuzz target `index`, crash-4ec5d7683245db53fec6e3280a4f665bd309db07:
/// `Path::components` drops a trailing `/` (and a trailing `/.`), so a one-component
/// check accepts `model.safetensors/` as a plain file name.
#[test]
fn index_rejects_file_names_with_a_trailing_slash() {
    for name in [
        "model.safetensors/",
        "model.safetensors/.",
        "model.safetensors//",
    ] {
        let json = format!(r#"{{"weight_map":{{"w":"{name}"}}}}"#);
        let got = parse_index(Path::new("model.safetensors.index.json"), json.as_bytes());
        assert!(
            got.is_err(),
            "{name:?} accepted as a plain file name: {got:?}"
        );
    }
}

/// fuzz target `plan`, crash-ba8c73eb75695f208cdb63c5e1d66bb9158bbd74: with a
/// conversion and an alignment of 2^63 or more, `2 * align` overflows (a panic with
/// overflow checks on).
#[test]
fn plan_with_alignment_of_2_pow_63_and_conversion_does_not_overflow() {
    let ckpt = checkpoint(&three_f32s());
    for align in [1u64 << 63, u64::MAX] {
        let opts = PlanOptions {
            chunk_size: align,
            align,
            dtype: Some(Dtype::F16),
            ..PlanOptions::default()
        };
        // An error is fine; a panic or a misaligned read is not.
        if let Ok(p) = plan(&ckpt, &opts) {
            for r in p.files.iter().flat_map(|f| &f.reads) {
                assert_eq!(r.offset % align, 0, "{r:?}");
                assert_eq!(r.len % align, 0, "{r:?}");
            }
        }
    }
}

/// fuzz target `plan`, seed-huge-tensor-align: with `tensor_align` 2^63, rounding the
/// third converted tensor's offset up overflows and the plan silently keeps the
/// unaligned offset (`align_up(..).unwrap_or(converted_len)`).
#[test]
fn plan_places_converted_tensors_at_tensor_align_or_refuses() {
    let f32s: Vec<u8> = [1.5f32, -2.0, 3.25]
        .iter()
        .flat_map(|x| x.to_le_bytes())
        .collect();
    let bf16s = [0x80u8, 0x3f, 0x00, 0x40];
    let f8s = [0x38u8, 0xb8];
    let views = [
        ("a", safetensors::Dtype::F32, vec![3], &f32s[..]),
        ("b", safetensors::Dtype::BF16, vec![2], &bf16s[..]),
        ("c", safetensors::Dtype::F8_E4M3, vec![2], &f8s[..]),
    ]
    .map(|(name, dtype, shape, data)| {
        let view = safetensors::tensor::TensorView::new(dtype, shape, data).expect("a valid view");
        (name, view)
    });
    let file = safetensors::serialize(views, None).expect("serialize");
    let ckpt = checkpoint(&file);
    let tensor_align = 1u64 << 63;
    let opts = PlanOptions {
        dtype: Some(Dtype::F16),
        tensor_align,
        ..PlanOptions::default()
    };
    // Refusing such an alignment is fine; placing a tensor off it is not.
    if let Ok(p) = plan(&ckpt, &opts) {
        for t in p.files.iter().flat_map(|f| &f.tensors) {
            if let Place::Converted(at) = t.place {
                assert_eq!(at % tensor_align, 0, "{t:?}");
            }
        }
    }
}

/// fuzz target `plan`, crash-7bbd41a231eac0a9e92f387e29ed2cb66cf4cb08: with a chunk
/// smaller than one element (1 byte, alignment 1, F32 converted to F16) each
/// conversion read still covers a whole element, 4 bytes, more than the
/// `slot_len()` of 3 that the staging slots are sized by.
#[test]
fn plan_conversion_reads_fit_a_staging_slot_when_the_chunk_is_smaller_than_an_element() {
    let ckpt = checkpoint(&three_f32s());
    for chunk_size in [1, 2, 3] {
        let opts = PlanOptions {
            chunk_size,
            align: 1,
            dtype: Some(Dtype::F16),
            ..PlanOptions::default()
        };
        // Refusing a chunk smaller than an element is fine; overflowing a slot is not.
        if let Ok(p) = plan(&ckpt, &opts) {
            for r in p.files.iter().flat_map(|f| &f.reads) {
                assert!(
                    r.len <= opts.slot_len(),
                    "{r:?} exceeds slot_len {}",
                    opts.slot_len()
                );
            }
        }
    }
}

/// fuzz target `index` (noticed while fuzzing): a `weight_map` naming a tensor twice was
/// accepted with the last entry winning, while headers refuse duplicate tensor names.
#[test]
fn index_rejects_a_tensor_named_twice_in_weight_map() {
    let json = br#"{"weight_map":{"w":"a.safetensors","w":"b.safetensors"}}"#;
    let err = parse_index(Path::new("model.safetensors.index.json"), json)
        .expect_err("duplicate weight_map keys must be refused");
    assert!(
        err.to_string()
            .contains("tensor 'w' appears twice in weight_map"),
        "{err}"
    );
}
