//! Checks `tensorstream::convert` against references written independently of it:
//!
//! - the `half` crate for F32, F16 and BF16 (its conversions round to nearest even
//!   and convert exactly), with the crate's NaN rule applied on top;
//! - a formula reference: every format decoded as sign·2^(e−bias)·(1+m/2^mbits)
//!   (subnormals sign·2^(1−bias)·m/2^mbits) into an f64, and narrowing done in f64
//!   with `round_ties_even` on the target's grid. `convert_into` uses `half` for
//!   F32↔F16, so this second reference keeps those pairs honest.
//!
//! Every F16, BF16 and FP8 code point is checked through every pair; F32 sources
//! over a few million random bit patterns, random values in and around the F16
//! range, exact rounding ties and hand-picked edge cases. Outputs are poisoned
//! before each conversion.

use half::{bf16, f16};
use proptest::prelude::*;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use tensorstream::convert::{self, convert_into};
use tensorstream::Dtype;

const TARGETS: [Dtype; 3] = [Dtype::F32, Dtype::F16, Dtype::BF16];
const FP8: [Dtype; 5] = [
    Dtype::F8_E4M3,
    Dtype::F8_E5M2,
    Dtype::F8_E4M3FNUZ,
    Dtype::F8_E5M2FNUZ,
    Dtype::F8_E8M0,
];
const POISON: u8 = 0xA5;

// ---------------------------------------------------------------------------
// The formula reference.
// ---------------------------------------------------------------------------

/// A decoded value: NaN (with its sign bit) or a number (infinities included).
#[derive(Clone, Copy, Debug)]
enum Value {
    Nan { negative: bool },
    Num(f64),
}

/// Layout of a binary float format.
#[derive(Clone, Copy)]
struct Format {
    ebits: i32,
    mbits: i32,
    bias: i32,
    signed: bool,
    /// How the format spells NaN and infinity.
    special: Special,
}

#[derive(Clone, Copy, PartialEq)]
enum Special {
    /// IEEE: all-ones exponent is inf (mantissa 0) or NaN.
    Ieee,
    /// E4M3 "FN": no inf; all-ones exponent and mantissa is NaN.
    Fn,
    /// FNUZ: 0x80 (negative zero's pattern) is the only NaN; no inf.
    Fnuz,
    /// E8M0: unsigned, no mantissa, all ones is NaN.
    E8m0,
}

const fn format(dtype: Dtype) -> Format {
    let (ebits, mbits, bias, signed, special) = match dtype {
        Dtype::F32 => (8, 23, 127, true, Special::Ieee),
        Dtype::F16 => (5, 10, 15, true, Special::Ieee),
        Dtype::BF16 => (8, 7, 127, true, Special::Ieee),
        Dtype::F8_E4M3 => (4, 3, 7, true, Special::Fn),
        Dtype::F8_E5M2 => (5, 2, 15, true, Special::Ieee),
        Dtype::F8_E4M3FNUZ => (4, 3, 8, true, Special::Fnuz),
        Dtype::F8_E5M2FNUZ => (5, 2, 16, true, Special::Fnuz),
        Dtype::F8_E8M0 => (8, 0, 127, false, Special::E8m0),
        _ => panic!("not a float format under test"),
    };
    Format {
        ebits,
        mbits,
        bias,
        signed,
        special,
    }
}

/// Decodes the `bits` of `dtype` from the formula.
fn decode(dtype: Dtype, bits: u32) -> Value {
    let f = format(dtype);
    let width = f.ebits + f.mbits + i32::from(f.signed);
    let negative = f.signed && (bits >> (width - 1)) & 1 == 1;
    let exp = ((bits >> f.mbits) & ((1 << f.ebits) - 1)) as i32;
    let mant = bits & ((1 << f.mbits) - 1);
    let exp_all_ones = exp == (1 << f.ebits) - 1;
    match f.special {
        Special::Ieee if exp_all_ones => {
            return if mant == 0 {
                Value::Num(if negative {
                    f64::NEG_INFINITY
                } else {
                    f64::INFINITY
                })
            } else {
                Value::Nan { negative }
            };
        }
        Special::Fn if exp_all_ones && mant == (1 << f.mbits) - 1 => {
            return Value::Nan { negative };
        }
        Special::Fnuz if bits == 0x80 => return Value::Nan { negative: true },
        Special::E8m0 if bits == 0xFF => return Value::Nan { negative: false },
        _ => {}
    }
    let m = f64::from(mant) / 2f64.powi(f.mbits);
    let magnitude = if exp == 0 && f.special != Special::E8m0 {
        2f64.powi(1 - f.bias) * m
    } else {
        2f64.powi(exp - f.bias) * (1.0 + m)
    };
    Value::Num(if negative { -magnitude } else { magnitude })
}

/// Encodes `v` in the IEEE-style target `dtype` (F32, F16, BF16): round to nearest,
/// ties to even, on the target's grid; overflow to infinity; subnormals kept; NaN
/// to the quiet NaN with its sign.
fn encode(dtype: Dtype, v: Value) -> u32 {
    let f = format(dtype);
    let sign_shift = f.ebits + f.mbits;
    let exp_ones = (1u32 << f.ebits) - 1;
    let v = match v {
        Value::Nan { negative } => {
            let quiet = (exp_ones << f.mbits) | (1 << (f.mbits - 1));
            return (u32::from(negative) << sign_shift) | quiet;
        }
        Value::Num(v) => v,
    };
    let sign = u32::from(v.is_sign_negative()) << sign_shift;
    let a = v.abs();
    if a.is_infinite() {
        return sign | (exp_ones << f.mbits);
    }
    if a == 0.0 {
        return sign;
    }
    let emin = 1 - f.bias;
    let emax = f.bias;
    // Every value under test is a normal f64: read its exponent from the bits.
    let e = (((a.to_bits() >> 52) & 0x7FF) as i32 - 1023).max(emin);
    let ulp = 2f64.powi(e - f.mbits);
    let q = (a / ulp).round_ties_even();
    let one = 2f64.powi(f.mbits);
    let (e, q) = if q >= 2.0 * one {
        (e + 1, q / 2.0)
    } else {
        (e, q)
    };
    if e > emax {
        return sign | (exp_ones << f.mbits);
    }
    if q < one {
        sign | q as u32
    } else {
        sign | (((e + f.bias) as u32) << f.mbits) | (q - one) as u32
    }
}

/// The formula reference for one element.
fn formula(src: Dtype, dst: Dtype, bits: u32) -> u32 {
    encode(dst, decode(src, bits))
}

// ---------------------------------------------------------------------------
// The `half` reference (F32, F16, BF16 and, through F32, the FP8 values).
// ---------------------------------------------------------------------------

fn sign_of(dtype: Dtype, bits: u32) -> bool {
    (bits >> (dtype.bits() - 1)) & 1 == 1
}

/// `half`'s conversion of an F32 value to `dst`, with the NaN rule applied.
fn half_from_f32(dst: Dtype, x: f32) -> u32 {
    if x.is_nan() {
        let negative = x.is_sign_negative();
        return match dst {
            Dtype::F32 => 0x7FC0_0000 | (u32::from(negative) << 31),
            Dtype::F16 => 0x7E00 | (u32::from(negative) << 15),
            _ => 0x7FC0 | (u32::from(negative) << 15),
        };
    }
    match dst {
        Dtype::F32 => x.to_bits(),
        Dtype::F16 => u32::from(f16::from_f32(x).to_bits()),
        _ => u32::from(bf16::from_f32(x).to_bits()),
    }
}

/// `half` reference: source decoded by `half` for F16/BF16/F32, by the formula for
/// FP8 (exact in F32), then `half`'s rounding to `dst`.
fn half_ref(src: Dtype, dst: Dtype, bits: u32) -> u32 {
    let x = match src {
        Dtype::F32 => f32::from_bits(bits),
        Dtype::F16 => f16::from_bits(bits as u16).to_f32(),
        Dtype::BF16 => bf16::from_bits(bits as u16).to_f32(),
        _ => match decode(src, bits) {
            Value::Nan { negative } => {
                let nan = f32::from_bits(0x7FC0_0000 | (u32::from(negative) << 31));
                return half_from_f32(dst, nan);
            }
            Value::Num(v) => {
                let x = v as f32;
                assert_eq!(
                    f64::from(x),
                    v,
                    "FP8 value {bits:#x} of {src} not exact in F32"
                );
                x
            }
        },
    };
    if x.is_nan() {
        // `half` keeps NaN payloads; the rule keeps only the sign.
        return half_from_f32(
            dst,
            f32::from_bits(0x7FC0_0000 | (u32::from(sign_of(src, bits)) << 31)),
        );
    }
    half_from_f32(dst, x)
}

// ---------------------------------------------------------------------------
// Running `convert_into` over many elements.
// ---------------------------------------------------------------------------

fn to_bytes(dtype: Dtype, values: &[u32]) -> Vec<u8> {
    let size = (dtype.bits() / 8) as usize;
    values
        .iter()
        .flat_map(|v| v.to_le_bytes().into_iter().take(size))
        .collect()
}

fn from_bytes(dtype: Dtype, bytes: &[u8]) -> Vec<u32> {
    let size = (dtype.bits() / 8) as usize;
    bytes
        .chunks_exact(size)
        .map(|c| {
            let mut b = [0u8; 4];
            b[..size].copy_from_slice(c);
            u32::from_le_bytes(b)
        })
        .collect()
}

/// Converts `values` (bit patterns of `src`) with `convert_into` into a poisoned buffer.
fn run(src: Dtype, dst: Dtype, values: &[u32]) -> Vec<u32> {
    let input = to_bytes(src, values);
    let len = convert::converted_len(src, dst, input.len() as u64) as usize;
    let mut output = vec![POISON; len];
    convert_into(src, dst, &input, &mut output).expect("supported pair");
    from_bytes(dst, &output)
}

/// Checks `convert_into` against both references for every value.
fn check_all(src: Dtype, dst: Dtype, values: &[u32]) {
    assert!(
        values.iter().any(|&v| v != 0),
        "test data must not be all zeros"
    );
    let got = run(src, dst, values);
    assert_eq!(got.len(), values.len());
    let mut failures = Vec::new();
    for (&x, &y) in values.iter().zip(&got) {
        let h = half_ref(src, dst, x);
        let f = formula(src, dst, x);
        if y != h || y != f {
            failures.push(format!("{x:#x}: got {y:#x}, half {h:#x}, formula {f:#x}"));
        }
    }
    assert!(
        failures.is_empty(),
        "{src} -> {dst}: {} mismatches, first: {:?}",
        failures.len(),
        &failures[..failures.len().min(8)]
    );
}

fn all_16() -> Vec<u32> {
    (0..=0xFFFF).collect()
}

fn all_8() -> Vec<u32> {
    (0..=0xFF).collect()
}

// ---------------------------------------------------------------------------
// The tests.
// ---------------------------------------------------------------------------

#[test]
fn references_agree_on_known_values() {
    // The two references must agree with each other and with textbook values
    // before they are trusted.
    assert_eq!(formula(Dtype::F32, Dtype::F16, 65520f32.to_bits()), 0x7C00);
    assert_eq!(formula(Dtype::F32, Dtype::F16, 65504f32.to_bits()), 0x7BFF);
    assert_eq!(formula(Dtype::F32, Dtype::F16, 2f32.powi(-25).to_bits()), 0);
    assert_eq!(
        formula(Dtype::F32, Dtype::F16, (3.0 * 2f32.powi(-25)).to_bits()),
        2
    );
    assert_eq!(formula(Dtype::F32, Dtype::BF16, 0x3F80_8000), 0x3F80);
    assert_eq!(formula(Dtype::F32, Dtype::BF16, 0x3F81_8000), 0x3F82);
    assert_eq!(formula(Dtype::F8_E4M3, Dtype::F32, 0x7E), 448f32.to_bits());
    assert_eq!(formula(Dtype::F8_E4M3, Dtype::F32, 0xFF), 0xFFC0_0000);
    assert_eq!(formula(Dtype::F8_E5M2, Dtype::F32, 0xFC), 0xFF80_0000);
    assert_eq!(formula(Dtype::F8_E4M3FNUZ, Dtype::F32, 0x80), 0xFFC0_0000);
    assert_eq!(
        formula(Dtype::F8_E4M3FNUZ, Dtype::F32, 0x7F),
        240f32.to_bits()
    );
    assert_eq!(
        formula(Dtype::F8_E5M2FNUZ, Dtype::F32, 0x7F),
        57344f32.to_bits()
    );
    assert_eq!(formula(Dtype::F8_E8M0, Dtype::F32, 0), 0x0040_0000);
    assert_eq!(formula(Dtype::F8_E8M0, Dtype::F32, 0xFF), 0x7FC0_0000);
    assert_eq!(formula(Dtype::F8_E8M0, Dtype::F16, 0), 0);
    assert_eq!(formula(Dtype::F8_E8M0, Dtype::F16, 127 - 24), 1);
    assert_eq!(formula(Dtype::F8_E8M0, Dtype::F16, 127 + 16), 0x7C00);
    assert_eq!(formula(Dtype::F8_E8M0, Dtype::BF16, 0), 0x0040);
    for x in 0..=0xFFFFu32 {
        assert_eq!(
            formula(Dtype::F16, Dtype::F32, x),
            half_ref(Dtype::F16, Dtype::F32, x),
            "{x:#x}"
        );
        assert_eq!(
            formula(Dtype::BF16, Dtype::F16, x),
            half_ref(Dtype::BF16, Dtype::F16, x),
            "{x:#x}"
        );
    }
}

#[test]
fn f16_every_code_point() {
    for dst in [Dtype::F32, Dtype::BF16] {
        check_all(Dtype::F16, dst, &all_16());
    }
}

#[test]
fn bf16_every_code_point() {
    for dst in [Dtype::F32, Dtype::F16] {
        check_all(Dtype::BF16, dst, &all_16());
    }
}

#[test]
fn fp8_every_code_point() {
    for src in FP8 {
        for dst in TARGETS {
            check_all(src, dst, &all_8());
        }
    }
}

#[test]
fn fp8_tables_match_the_scalar_decoders() {
    type Decoder = fn(u8) -> u32;
    let scalar: [(Dtype, Decoder); 5] = [
        (Dtype::F8_E4M3, convert::f8_e4m3_to_f32_bits),
        (Dtype::F8_E5M2, convert::f8_e5m2_to_f32_bits),
        (Dtype::F8_E4M3FNUZ, convert::f8_e4m3fnuz_to_f32_bits),
        (Dtype::F8_E5M2FNUZ, convert::f8_e5m2fnuz_to_f32_bits),
        (Dtype::F8_E8M0, convert::f8_e8m0_to_f32_bits),
    ];
    for (src, decode) in scalar {
        let got = run(src, Dtype::F32, &all_8());
        for (x, y) in (0..=255u8).zip(got) {
            assert_eq!(decode(x), y, "{src} {x:#x}");
            for dst in TARGETS {
                assert_eq!(
                    convert::fp8_convert_bits(src, dst, x),
                    Some(formula(src, dst, u32::from(x))),
                    "{src} -> {dst} {x:#x}"
                );
            }
        }
    }
}

/// Hand-picked F32 inputs: zeros, subnormals, boundaries, ties, overflow, NaNs.
fn f32_edge_cases() -> Vec<u32> {
    let mut v: Vec<u32> = vec![
        0x0000_0000,
        0x8000_0000,
        0x0000_0001,
        0x8000_0001,
        0x007F_FFFF,
        0x0080_0000,
        0x8080_0000,
        0x7F7F_FFFF,
        0xFF7F_FFFF,
        0x7F80_0000,
        0xFF80_0000,
        0x7F80_0001,
        0x7FA0_0000,
        0x7FBF_FFFF,
        0x7FC0_0000,
        0x7FC0_0001,
        0x7FFF_FFFF,
        0xFF80_0001,
        0xFFC0_0000,
        0xFFFF_FFFF,
        0x7F7F_8000, // BF16: just below a tie that would overflow
        0x7F7F_7FFF,
        0x7F7F_8001,
    ];
    let floats = [
        1.0f32,
        -1.0,
        0.1,
        65504.0,
        65519.996,
        65520.0,
        65536.0,
        -65520.0,
        f32::MAX,
        f32::MIN_POSITIVE,
        2f32.powi(-14),
        2f32.powi(-14) - 2f32.powi(-25),
        2f32.powi(-14) - 2f32.powi(-26),
        2f32.powi(-24),
        2f32.powi(-25),
        2f32.powi(-25) + 2f32.powi(-40),
        2f32.powi(-26),
        3.0 * 2f32.powi(-25),
        5.0 * 2f32.powi(-25),
        2f32.powi(-126) * 1.5,
        2f32.powi(-133),
        2f32.powi(-134),
        3.0 * 2f32.powi(-134),
    ];
    for f in floats {
        v.push(f.to_bits());
        v.push((-f).to_bits());
        v.push(f.to_bits().wrapping_add(1));
        v.push(f.to_bits().wrapping_sub(1));
    }
    v
}

/// A few million F32 bit patterns: uniform, in and around the F16 range,
/// F16 subnormal range, and exact ties for F16 and BF16 rounding.
fn f32_random(count: usize, seed: u64) -> Vec<u32> {
    let mut rng = StdRng::seed_from_u64(seed);
    let mut v = Vec::with_capacity(count);
    for i in 0..count {
        let x = match i % 6 {
            0 | 1 => rng.gen::<u32>(),
            // |x| in the F16 range and just beyond.
            2 => (rng.gen_range(-70000.0f32..70000.0)).to_bits(),
            // F16 subnormal and underflow range.
            3 => {
                let e = rng.gen_range(95u32..=113);
                (rng.gen::<u32>() & 0x807F_FFFF) | (e << 23)
            }
            // Exact F16 ties: 13 dropped bits equal to 0x1000, any F16-range exponent.
            4 => {
                let e = rng.gen_range(100u32..=143);
                (rng.gen::<u32>() & 0x807F_E000) | (e << 23) | 0x1000
            }
            // Exact BF16 ties: 16 dropped bits equal to 0x8000.
            _ => (rng.gen::<u32>() & 0xFFFF_0000) | 0x8000,
        };
        v.push(x);
    }
    v
}

#[test]
fn f32_edge_cases_to_f16_and_bf16() {
    let values = f32_edge_cases();
    check_all(Dtype::F32, Dtype::F16, &values);
    check_all(Dtype::F32, Dtype::BF16, &values);
}

#[test]
fn f32_random_to_f16() {
    check_all(Dtype::F32, Dtype::F16, &f32_random(3_000_000, 0x5EED_0016));
}

#[test]
fn f32_random_to_bf16() {
    check_all(Dtype::F32, Dtype::BF16, &f32_random(3_000_000, 0x5EED_BF16));
}

#[test]
fn scalar_functions_match_convert_into() {
    // The public scalar functions are what the CUDA kernels compute.
    let v16 = all_16();
    let f16_f32 = run(Dtype::F16, Dtype::F32, &v16);
    let bf16_f32 = run(Dtype::BF16, Dtype::F32, &v16);
    let f16_bf16 = run(Dtype::F16, Dtype::BF16, &v16);
    let bf16_f16 = run(Dtype::BF16, Dtype::F16, &v16);
    for (i, x) in (0..=0xFFFFu16).enumerate() {
        assert_eq!(convert::f16_to_f32_bits(x), f16_f32[i], "{x:#x}");
        assert_eq!(convert::bf16_to_f32_bits(x), bf16_f32[i], "{x:#x}");
        assert_eq!(u32::from(convert::f16_to_bf16(x)), f16_bf16[i], "{x:#x}");
        assert_eq!(u32::from(convert::bf16_to_f16(x)), bf16_f16[i], "{x:#x}");
    }
    let mut v32 = f32_edge_cases();
    v32.extend(f32_random(1_000_000, 0x5CA1A2));
    let to_f16 = run(Dtype::F32, Dtype::F16, &v32);
    let to_bf16 = run(Dtype::F32, Dtype::BF16, &v32);
    for (i, &x) in v32.iter().enumerate() {
        assert_eq!(u32::from(convert::f32_bits_to_f16(x)), to_f16[i], "{x:#x}");
        assert_eq!(
            u32::from(convert::f32_bits_to_bf16(x)),
            to_bf16[i],
            "{x:#x}"
        );
    }
}

#[test]
fn identity_is_a_plain_copy() {
    let mut rng = StdRng::seed_from_u64(7);
    for dtype in Dtype::ALL {
        let input: Vec<u8> = (0..1000).map(|_| rng.gen()).collect();
        let mut output = vec![POISON; input.len()];
        convert_into(dtype, dtype, &input, &mut output).expect("identity");
        assert_eq!(input, output, "{dtype}");
    }
    // NaN payloads survive an identity conversion.
    let nan = 0x7FA0_1234u32.to_le_bytes();
    let mut out = [POISON; 4];
    convert_into(Dtype::F32, Dtype::F32, &nan, &mut out).expect("identity");
    assert_eq!(out, nan);
}

#[test]
fn output_dtype_and_converted_len() {
    for src in Dtype::ALL {
        for dst in TARGETS {
            let out = convert::output_dtype(src, Some(dst));
            if src.is_convertible_float() {
                assert_eq!(out, dst);
                assert_eq!(
                    convert::converted_len(src, dst, 12 * (src.bits() / 8)),
                    12 * (dst.bits() / 8)
                );
                assert_eq!(
                    convert::kernel_name(src, dst).is_some(),
                    src != dst,
                    "{src} -> {dst}"
                );
            } else {
                assert_eq!(out, src);
                assert!(convert::kernel_name(src, dst).is_none());
            }
        }
        assert_eq!(convert::output_dtype(src, None), src);
        assert_eq!(convert::output_dtype(src, Some(Dtype::I8)), src);
    }
}

#[test]
fn every_supported_pair_rejects_bad_lengths() {
    let sources = [Dtype::F32, Dtype::F16, Dtype::BF16].into_iter().chain(FP8);
    for src in sources {
        for dst in TARGETS {
            if src == dst {
                continue;
            }
            let s = (src.bits() / 8) as usize;
            let d = (dst.bits() / 8) as usize;
            let input = vec![0x3Cu8; 8 * s];
            let mut output = vec![POISON; 8 * d + 1];
            assert!(convert_into(src, dst, &input, &mut output).is_err());
            assert!(convert_into(src, dst, &input, &mut output[..8 * d - 1]).is_err());
            if s > 1 {
                assert!(convert_into(src, dst, &input[1..], &mut output[..8 * d]).is_err());
            }
            assert!(convert_into(src, dst, &input, &mut output[..8 * d]).is_ok());
        }
    }
    let mut out = [0u8; 16];
    for (src, dst) in [
        (Dtype::I32, Dtype::F32),
        (Dtype::F64, Dtype::F32),
        (Dtype::F32, Dtype::F8_E4M3),
        (Dtype::F16, Dtype::F64),
        (Dtype::F4, Dtype::F16),
    ] {
        let err = convert_into(src, dst, &[1, 2, 3, 4], &mut out).expect_err("unsupported");
        assert_eq!(
            err.kind(),
            tensorstream::ErrorKind::Unsupported,
            "{src} -> {dst}"
        );
    }
}

/// The pairs `convert_into` supports, with element sizes.
fn pairs() -> Vec<(Dtype, Dtype)> {
    [Dtype::F32, Dtype::F16, Dtype::BF16]
        .into_iter()
        .chain(FP8)
        .flat_map(|s| TARGETS.into_iter().map(move |d| (s, d)))
        .filter(|(s, d)| s != d)
        .collect()
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    /// Any slice, at any offset and length, converts element by element the same
    /// as the whole buffer: block boundaries and remainders change nothing.
    #[test]
    fn slices_convert_like_the_whole(
        (src, dst) in prop::sample::select(pairs()),
        seed in any::<u64>(),
        len in 1usize..600,
        start in 0usize..70,
    ) {
        let s = (src.bits() / 8) as usize;
        let d = (dst.bits() / 8) as usize;
        let mut rng = StdRng::seed_from_u64(seed);
        let bytes: Vec<u8> = (0..(start + len) * s + 3).map(|_| rng.gen()).collect();
        let whole = &bytes[..(start + len) * s];
        let mut whole_out = vec![POISON; (start + len) * d];
        convert_into(src, dst, whole, &mut whole_out).unwrap();
        // An unaligned view of the same elements, one byte into a copy.
        let shifted: Vec<u8> = std::iter::once(0u8).chain(whole[start * s..].iter().copied()).collect();
        let mut part_out = vec![POISON; len * d + 1];
        convert_into(src, dst, &shifted[1..], &mut part_out[1..]).unwrap();
        prop_assert_eq!(&part_out[1..], &whole_out[start * d..]);
        prop_assert_eq!(part_out[0], POISON);
    }
}

/// Every F32 bit pattern through `convert_into` against the integer scalar
/// functions (which `half` does not implement). About a minute in release:
/// `cargo test --release --test convert_exhaustive -- --ignored`.
#[test]
#[ignore = "2^32 inputs; run in release with --ignored"]
fn f32_every_bit_pattern() {
    const CHUNK: u32 = 1 << 20;
    let mut input = vec![0u8; CHUNK as usize * 4];
    let mut out = vec![POISON; CHUNK as usize * 2];
    for start in (0..=u32::MAX - (CHUNK - 1)).step_by(CHUNK as usize) {
        for (i, c) in input.chunks_exact_mut(4).enumerate() {
            c.copy_from_slice(&(start + i as u32).to_le_bytes());
        }
        for (dst, scalar) in [
            (Dtype::F16, convert::f32_bits_to_f16 as fn(u32) -> u16),
            (Dtype::BF16, convert::f32_bits_to_bf16),
        ] {
            out.fill(POISON);
            convert_into(Dtype::F32, dst, &input, &mut out).unwrap();
            for (i, c) in out.chunks_exact(2).enumerate() {
                let x = start + i as u32;
                let y = u16::from_le_bytes([c[0], c[1]]);
                assert_eq!(y, scalar(x), "F32 {x:#010x} -> {dst}");
                if dst == Dtype::F16 && i % 4096 == 0 {
                    assert_eq!(u32::from(y), half_ref(Dtype::F32, dst, x), "{x:#010x}");
                }
            }
        }
    }
}
