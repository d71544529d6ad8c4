//! CPU dtype conversions: the host load path and the oracle the CUDA kernels are
//! tested against (`kernels/convert.cu` computes the same bits).
//!
//! Sources: F32, F16, BF16 and the five FP8 formats. Targets: F32, F16, BF16.
//! The rules, for every pair:
//!
//! - widening is exact; narrowing rounds to nearest, ties to even;
//! - a finite value too large for the target becomes ±infinity;
//! - subnormals are kept, in the input and in the output (no flush to zero);
//! - a NaN becomes the target's quiet NaN with the input's sign bit
//!   (F32 `0x7FC00000`/`0xFFC00000`, F16 `0x7E00`/`0xFE00`, BF16 `0x7FC0`/`0xFFC0`).
//!   The FNUZ formats' only NaN is `0x80`, whose sign bit is set, so it becomes the
//!   negative quiet NaN; F8_E8M0 has no sign bit, so its NaN `0xFF` becomes the
//!   positive one.
//!
//! A conversion from a dtype to itself is a plain copy (NaN payloads included).
//!
//! The scalar functions (`f32_bits_to_f16`, `f8_e4m3_to_f32_bits`, ...) define the
//! results in integer arithmetic on bit patterns, as the CUDA kernels do.
//! [`convert_into`] produces the same bits faster: tables for FP8 sources,
//! vectorised block loops, and `half`'s hardware-backed F32↔F16 conversions
//! (F16C / FP16 instructions, detected at run time) with NaNs made canonical.
//! `tests/convert_exhaustive.rs` checks it against independent references and
//! the scalar functions (every F16/BF16/FP8 code point; every F32 bit pattern in
//! an ignored release-mode test).
//!
//! FP8 formats, as the safetensors format names them:
//!
//! | dtype         | exp/mantissa bits | bias | infinities | NaN                 |
//! |---------------|-------------------|------|------------|---------------------|
//! | `F8_E4M3`     | 4 / 3 ("FN")      | 7    | none       | `S.1111.111`        |
//! | `F8_E5M2`     | 5 / 2 (IEEE-like) | 15   | `S.11111.00` | `S.11111.xx`, xx≠0 |
//! | `F8_E4M3FNUZ` | 4 / 3             | 8    | none       | `0x80` only, no −0  |
//! | `F8_E5M2FNUZ` | 5 / 2             | 16   | none       | `0x80` only, no −0  |
//! | `F8_E8M0`     | 8 / 0, unsigned   | 127  | none       | `0xFF`; `0x00` is 2^-127 |

use half::slice::HalfFloatSliceExt;

use crate::dtype::Dtype;
use crate::error::{Error, Result};

// ---------------------------------------------------------------------------
// Scalar conversions on bit patterns.
// ---------------------------------------------------------------------------

const F32_QNAN: u32 = 0x7FC0_0000;
const F32_INF: u32 = 0x7F80_0000;
const F16_QNAN: u16 = 0x7E00;
const F16_INF: u16 = 0x7C00;
const BF16_QNAN: u16 = 0x7FC0;

/// F32 bits → BF16 bits: round to nearest even, overflow to ±inf, NaN to quiet NaN.
#[inline(always)]
pub const fn f32_bits_to_bf16(x: u32) -> u16 {
    let sign = ((x >> 16) & 0x8000) as u16;
    if x & 0x7FFF_FFFF > F32_INF {
        return sign | BF16_QNAN;
    }
    // No overflow: the largest non-NaN pattern is 0xFF80_0000 (-inf).
    let rounded = x.wrapping_add(0x7FFF + ((x >> 16) & 1));
    (rounded >> 16) as u16
}

/// BF16 bits → F32 bits: exact; NaN to quiet NaN.
#[inline(always)]
pub const fn bf16_to_f32_bits(x: u16) -> u32 {
    let x = x as u32;
    if x & 0x7FFF > 0x7F80 {
        return ((x & 0x8000) << 16) | F32_QNAN;
    }
    x << 16
}

/// F32 bits → F16 bits: round to nearest even (subnormal results included),
/// overflow to ±inf, NaN to quiet NaN.
#[inline(always)]
pub const fn f32_bits_to_f16(x: u32) -> u16 {
    let sign = ((x >> 16) & 0x8000) as u16;
    let a = x & 0x7FFF_FFFF;
    let magnitude = if a > F32_INF {
        F16_QNAN as u32
    } else if a >= 0x4780_0000 {
        // |x| >= 65536: beyond the rounding range of the largest finite F16.
        F16_INF as u32
    } else if a >= 0x3880_0000 {
        // Normal result (|x| >= 2^-14): rebias the exponent and round away 13 bits;
        // a carry out of the mantissa correctly bumps the exponent (up to inf).
        let odd = (a >> 13) & 1;
        a.wrapping_sub(0x3800_0000).wrapping_add(0x0FFF + odd) >> 13
    } else {
        f32_bits_to_f16_subnormal(a)
    };
    sign | magnitude as u16
}

/// Magnitude `a < 2^-14` (as F32 bits) → F16 subnormal (or zero, or the smallest
/// normal after rounding up): `round_even(a / 2^-24)`.
#[inline(always)]
const fn f32_bits_to_f16_subnormal(a: u32) -> u32 {
    let exp = a >> 23;
    let mant = (a & 0x7F_FFFF) | 0x80_0000;
    // value / 2^-24 = mant * 2^(exp - 126); shifts beyond 25 give 0 either way
    // (mant < 2^24 makes mant / 2^25 < 1/2), which also covers F32 subnormals.
    let shift = 126u32.saturating_sub(exp);
    let shift = if shift > 25 { 25 } else { shift };
    let q = mant >> shift;
    let rem = mant & ((1 << shift) - 1);
    let half = 1 << (shift - 1);
    let round_up = (rem > half) | ((rem == half) & (q & 1 == 1));
    q + round_up as u32
}

/// F16 bits → F32 bits: exact (subnormals included); NaN to quiet NaN.
#[inline(always)]
pub const fn f16_to_f32_bits(x: u16) -> u32 {
    let x = x as u32;
    let sign = (x & 0x8000) << 16;
    let a = x & 0x7FFF;
    let magnitude = if a > 0x7C00 {
        F32_QNAN
    } else if a == 0x7C00 {
        F32_INF
    } else if a >= 0x0400 {
        (a << 13) + 0x3800_0000
    } else if a == 0 {
        0
    } else {
        // Subnormal a * 2^-24: normalise on the top set bit of a (bit 0..=9).
        let top = 31 - a.leading_zeros();
        ((top + 103) << 23) | ((a << (23 - top)) & 0x7F_FFFF)
    };
    sign | magnitude
}

/// F16 bits → BF16 bits (round to nearest even).
#[inline(always)]
pub const fn f16_to_bf16(x: u16) -> u16 {
    f32_bits_to_bf16(f16_to_f32_bits(x))
}

/// BF16 bits → F16 bits (round to nearest even, overflow to ±inf, subnormals kept).
#[inline(always)]
pub const fn bf16_to_f16(x: u16) -> u16 {
    f32_bits_to_f16(bf16_to_f32_bits(x))
}

/// The eight-bit float layouts.
#[derive(Clone, Copy)]
enum Fp8 {
    E4M3,
    E5M2,
    E4M3Fnuz,
    E5M2Fnuz,
    E8M0,
}

/// FP8 bits → F32 bits. Every FP8 value is exact in F32.
const fn fp8_to_f32_bits(format: Fp8, x: u8) -> u32 {
    let x = x as u32;
    // (exponent bits, mantissa bits, bias)
    let (ebits, mbits, bias) = match format {
        Fp8::E4M3 => {
            if x & 0x7F == 0x7F {
                return ((x & 0x80) << 24) | F32_QNAN;
            }
            (4, 3, 7)
        }
        Fp8::E5M2 => {
            if x & 0x7F == 0x7C {
                return ((x & 0x80) << 24) | F32_INF;
            }
            if x & 0x7F > 0x7C {
                return ((x & 0x80) << 24) | F32_QNAN;
            }
            (5, 2, 15)
        }
        Fp8::E4M3Fnuz | Fp8::E5M2Fnuz => {
            if x == 0x80 {
                return 0x8000_0000 | F32_QNAN;
            }
            match format {
                Fp8::E4M3Fnuz => (4, 3, 8),
                _ => (5, 2, 16),
            }
        }
        Fp8::E8M0 => {
            return match x {
                0xFF => F32_QNAN,
                // 2^-127 is the F32 subnormal 0x0040_0000.
                0 => 0x0040_0000,
                // 2^(x - 127): the F32 exponent field is x itself.
                _ => x << 23,
            };
        }
    };
    let sign = (x & 0x80) << 24;
    let exp = (x >> mbits) & ((1 << ebits) - 1);
    let mant = x & ((1 << mbits) - 1);
    if exp == 0 {
        if mant == 0 {
            return sign;
        }
        // Subnormal mant * 2^(1 - bias - mbits): normalise on the mantissa's top bit.
        let top = 31 - mant.leading_zeros();
        let f32_exp = top + 1 + 127 - bias - mbits;
        return sign | (f32_exp << 23) | ((mant << (23 - top)) & 0x7F_FFFF);
    }
    sign | ((exp + 127 - bias) << 23) | (mant << (23 - mbits))
}

/// F8_E4M3 (FN) bits → F32 bits.
pub const fn f8_e4m3_to_f32_bits(x: u8) -> u32 {
    fp8_to_f32_bits(Fp8::E4M3, x)
}

/// F8_E5M2 bits → F32 bits.
pub const fn f8_e5m2_to_f32_bits(x: u8) -> u32 {
    fp8_to_f32_bits(Fp8::E5M2, x)
}

/// F8_E4M3FNUZ bits → F32 bits.
pub const fn f8_e4m3fnuz_to_f32_bits(x: u8) -> u32 {
    fp8_to_f32_bits(Fp8::E4M3Fnuz, x)
}

/// F8_E5M2FNUZ bits → F32 bits.
pub const fn f8_e5m2fnuz_to_f32_bits(x: u8) -> u32 {
    fp8_to_f32_bits(Fp8::E5M2Fnuz, x)
}

/// F8_E8M0 bits → F32 bits.
pub const fn f8_e8m0_to_f32_bits(x: u8) -> u32 {
    fp8_to_f32_bits(Fp8::E8M0, x)
}

const fn fp8_of(dtype: Dtype) -> Option<Fp8> {
    match dtype {
        Dtype::F8_E4M3 => Some(Fp8::E4M3),
        Dtype::F8_E5M2 => Some(Fp8::E5M2),
        Dtype::F8_E4M3FNUZ => Some(Fp8::E4M3Fnuz),
        Dtype::F8_E5M2FNUZ => Some(Fp8::E5M2Fnuz),
        Dtype::F8_E8M0 => Some(Fp8::E8M0),
        _ => None,
    }
}

/// The bits of one FP8 element of dtype `src` converted to `dst` (F32, F16 or BF16),
/// zero-extended to `u32`; `None` when `src` is not an FP8 dtype or `dst` is not a
/// target. Same results as [`convert_into`].
pub fn fp8_convert_bits(src: Dtype, dst: Dtype, x: u8) -> Option<u32> {
    let f32_bits = fp8_to_f32_bits(fp8_of(src)?, x);
    match dst {
        Dtype::F32 => Some(f32_bits),
        Dtype::F16 => Some(f32_bits_to_f16(f32_bits) as u32),
        Dtype::BF16 => Some(f32_bits_to_bf16(f32_bits) as u32),
        _ => None,
    }
}

// Lookup tables for FP8 sources, built at compile time from the functions above.
// These functions only run in const context (the statics below), where an index
// out of bounds would fail the build, hence the allowed indexing.

#[allow(clippy::indexing_slicing)]
const fn table_f32(format: Fp8) -> [u32; 256] {
    let mut t = [0u32; 256];
    let mut i = 0;
    while i < 256 {
        t[i] = fp8_to_f32_bits(format, i as u8);
        i += 1;
    }
    t
}

#[allow(clippy::indexing_slicing)]
const fn table_f16(format: Fp8) -> [u16; 256] {
    let mut t = [0u16; 256];
    let mut i = 0;
    while i < 256 {
        t[i] = f32_bits_to_f16(fp8_to_f32_bits(format, i as u8));
        i += 1;
    }
    t
}

#[allow(clippy::indexing_slicing)]
const fn table_bf16(format: Fp8) -> [u16; 256] {
    let mut t = [0u16; 256];
    let mut i = 0;
    while i < 256 {
        t[i] = f32_bits_to_bf16(fp8_to_f32_bits(format, i as u8));
        i += 1;
    }
    t
}

static E4M3_F32: [u32; 256] = table_f32(Fp8::E4M3);
static E5M2_F32: [u32; 256] = table_f32(Fp8::E5M2);
static E4M3FNUZ_F32: [u32; 256] = table_f32(Fp8::E4M3Fnuz);
static E5M2FNUZ_F32: [u32; 256] = table_f32(Fp8::E5M2Fnuz);
static E8M0_F32: [u32; 256] = table_f32(Fp8::E8M0);
static E4M3_F16: [u16; 256] = table_f16(Fp8::E4M3);
static E5M2_F16: [u16; 256] = table_f16(Fp8::E5M2);
static E4M3FNUZ_F16: [u16; 256] = table_f16(Fp8::E4M3Fnuz);
static E5M2FNUZ_F16: [u16; 256] = table_f16(Fp8::E5M2Fnuz);
static E8M0_F16: [u16; 256] = table_f16(Fp8::E8M0);
static E4M3_BF16: [u16; 256] = table_bf16(Fp8::E4M3);
static E5M2_BF16: [u16; 256] = table_bf16(Fp8::E5M2);
static E4M3FNUZ_BF16: [u16; 256] = table_bf16(Fp8::E4M3Fnuz);
static E5M2FNUZ_BF16: [u16; 256] = table_bf16(Fp8::E5M2Fnuz);
static E8M0_BF16: [u16; 256] = table_bf16(Fp8::E8M0);

fn table_32(format: Fp8) -> &'static [u32; 256] {
    match format {
        Fp8::E4M3 => &E4M3_F32,
        Fp8::E5M2 => &E5M2_F32,
        Fp8::E4M3Fnuz => &E4M3FNUZ_F32,
        Fp8::E5M2Fnuz => &E5M2FNUZ_F32,
        Fp8::E8M0 => &E8M0_F32,
    }
}

fn table_16(format: Fp8, bf16: bool) -> &'static [u16; 256] {
    match (format, bf16) {
        (Fp8::E4M3, false) => &E4M3_F16,
        (Fp8::E5M2, false) => &E5M2_F16,
        (Fp8::E4M3Fnuz, false) => &E4M3FNUZ_F16,
        (Fp8::E5M2Fnuz, false) => &E5M2FNUZ_F16,
        (Fp8::E8M0, false) => &E8M0_F16,
        (Fp8::E4M3, true) => &E4M3_BF16,
        (Fp8::E5M2, true) => &E5M2_BF16,
        (Fp8::E4M3Fnuz, true) => &E4M3FNUZ_BF16,
        (Fp8::E5M2Fnuz, true) => &E5M2FNUZ_BF16,
        (Fp8::E8M0, true) => &E8M0_BF16,
    }
}

// ---------------------------------------------------------------------------
// Buffers.
// ---------------------------------------------------------------------------

/// The dtype a tensor stored as `src` is loaded as when `--dtype requested` is given.
///
/// Only floats that [`convert_into`] reads are converted; everything else (integers,
/// BOOL, F4, F6, F64, C64) loads unchanged, as does any tensor when `requested` is
/// `None` or not a conversion target.
pub fn output_dtype(src: Dtype, requested: Option<Dtype>) -> Dtype {
    match requested {
        Some(dst) if src.is_convertible_float() && dst.is_conversion_target() => dst,
        _ => src,
    }
}

/// Output bytes for `src_bytes` input bytes converted from `src` to `dst`
/// (whole elements; saturates at `u64::MAX` rather than overflowing).
pub fn converted_len(src: Dtype, dst: Dtype, src_bytes: u64) -> u64 {
    if src == dst {
        return src_bytes;
    }
    let elements = u128::from(src_bytes) * 8 / u128::from(src.bits());
    let out = elements * u128::from(dst.bits()) / 8;
    u64::try_from(out).unwrap_or(u64::MAX)
}

/// The name of the CUDA kernel in `kernels/convert.cu` that converts `src` to `dst`
/// (`convert_bf16_f32`, `convert_f8_e4m3_f16`, ...), or `None` when there is none
/// (identity pairs and unsupported pairs).
pub fn kernel_name(src: Dtype, dst: Dtype) -> Option<&'static str> {
    use Dtype::*;
    Some(match (src, dst) {
        (F32, F16) => "convert_f32_f16",
        (F32, BF16) => "convert_f32_bf16",
        (F16, F32) => "convert_f16_f32",
        (F16, BF16) => "convert_f16_bf16",
        (BF16, F32) => "convert_bf16_f32",
        (BF16, F16) => "convert_bf16_f16",
        (F8_E4M3, F32) => "convert_f8_e4m3_f32",
        (F8_E4M3, F16) => "convert_f8_e4m3_f16",
        (F8_E4M3, BF16) => "convert_f8_e4m3_bf16",
        (F8_E5M2, F32) => "convert_f8_e5m2_f32",
        (F8_E5M2, F16) => "convert_f8_e5m2_f16",
        (F8_E5M2, BF16) => "convert_f8_e5m2_bf16",
        (F8_E4M3FNUZ, F32) => "convert_f8_e4m3fnuz_f32",
        (F8_E4M3FNUZ, F16) => "convert_f8_e4m3fnuz_f16",
        (F8_E4M3FNUZ, BF16) => "convert_f8_e4m3fnuz_bf16",
        (F8_E5M2FNUZ, F32) => "convert_f8_e5m2fnuz_f32",
        (F8_E5M2FNUZ, F16) => "convert_f8_e5m2fnuz_f16",
        (F8_E5M2FNUZ, BF16) => "convert_f8_e5m2fnuz_bf16",
        (F8_E8M0, F32) => "convert_f8_e8m0_f32",
        (F8_E8M0, F16) => "convert_f8_e8m0_f16",
        (F8_E8M0, BF16) => "convert_f8_e8m0_bf16",
        _ => return None,
    })
}

/// Converts the elements in `input` (dtype `src`, little-endian) into `output`
/// (dtype `dst`), following the rules in the [module docs](self).
///
/// `src == dst` is a plain copy, for any dtype. Otherwise `src` must be one of
/// F32, F16, BF16 or an FP8 dtype and `dst` one of F32, F16, BF16.
///
/// # Errors
///
/// [`Error::Unsupported`] for a pair that has no conversion;
/// [`Error::InvalidArgument`] when `input` is not a whole number of elements or
/// `output` is not exactly the converted size.
pub fn convert_into(src: Dtype, dst: Dtype, input: &[u8], output: &mut [u8]) -> Result<()> {
    if src == dst {
        if input.len() != output.len() {
            return Err(length_error(src, dst, input.len(), output.len()));
        }
        output.copy_from_slice(input);
        return Ok(());
    }
    if !src.is_convertible_float() || !dst.is_conversion_target() {
        return Err(Error::Unsupported(format!(
            "no conversion from {src} to {dst} (sources: F32, F16, BF16, F8_*; targets: F32, F16, BF16)"
        )));
    }
    // Both are whole-byte types here.
    let src_size = (src.bits() / 8) as usize;
    let dst_size = (dst.bits() / 8) as usize;
    if !input.len().is_multiple_of(src_size) {
        return Err(Error::InvalidArgument(format!(
            "converting {src} to {dst}: input of {} bytes is not a whole number of {src_size}-byte elements",
            input.len()
        )));
    }
    let expected = (input.len() / src_size).checked_mul(dst_size);
    if expected != Some(output.len()) {
        return Err(length_error(src, dst, input.len(), output.len()));
    }

    if convert_checked(src, dst, input, output, hardware_f16()) {
        Ok(())
    } else {
        Err(Error::Unsupported(format!(
            "no conversion from {src} to {dst}"
        )))
    }
}

/// The conversion itself, lengths checked; false (output untouched) for a pair it
/// does not know. `hw` selects `half`'s hardware F32<->F16 conversions over the
/// scalar functions.
fn convert_checked(src: Dtype, dst: Dtype, input: &[u8], output: &mut [u8], hw: bool) -> bool {
    if let Some(format) = fp8_of(src) {
        match dst {
            Dtype::F32 => lookup(input, output, table_32(format)),
            Dtype::F16 => lookup(input, output, table_16(format, false)),
            Dtype::BF16 => lookup(input, output, table_16(format, true)),
            _ => return false,
        }
        return true;
    }
    match (src, dst) {
        (Dtype::F32, Dtype::F16) => {
            blocks::<4, 2>(input, output, |i, o| f32_to_f16_block(i, o, hw))
        }
        (Dtype::F32, Dtype::BF16) => blocks::<4, 2>(input, output, f32_to_bf16_block),
        (Dtype::F16, Dtype::F32) => {
            blocks::<2, 4>(input, output, |i, o| f16_to_f32_block(i, o, hw))
        }
        (Dtype::BF16, Dtype::F32) => blocks::<2, 4>(input, output, bf16_to_f32_block),
        (Dtype::F16, Dtype::BF16) => {
            blocks::<2, 2>(input, output, |i, o| f16_to_bf16_block(i, o, hw))
        }
        (Dtype::BF16, Dtype::F16) => {
            blocks::<2, 2>(input, output, |i, o| bf16_to_f16_block(i, o, hw))
        }
        _ => return false,
    }
    true
}

fn length_error(src: Dtype, dst: Dtype, input: usize, output: usize) -> Error {
    Error::InvalidArgument(format!(
        "converting {src} to {dst}: output of {output} bytes does not match input of {input} bytes"
    ))
}

// Bulk conversion. The scalar functions above are the definition (and what the CUDA
// kernels compute); the loops below produce the same bits faster:
//
// - FP8 sources read a 256-entry table built at compile time from those functions;
// - the other pairs go through blocks of `BLOCK` elements held in stack arrays:
//   read (little-endian), convert, write, each a straight loop over exact chunks
//   that the compiler proves in bounds and vectorises;
// - F32 <-> F16 uses `half`'s slice conversions (F16C / FP16 instructions when the
//   CPU has them, detected at run time), which round to nearest even and keep
//   subnormals; their NaNs keep payload bits, so NaNs are rewritten to the
//   canonical quiet NaN afterwards.

/// Elements per block: the stack arrays stay in L1.
const BLOCK: usize = 64;

/// `output[i] = table[input[i]]` for one-byte inputs and `N`-byte outputs.
fn lookup<T: Copy + ToLe<N>, const N: usize>(input: &[u8], output: &mut [u8], table: &[T; 256]) {
    for (&x, o) in input.iter().zip(output.chunks_exact_mut(N)) {
        // In bounds: a u8 indexes 256 entries (the compiler drops the check).
        if let Some(&v) = table.get(usize::from(x)) {
            o.copy_from_slice(&v.to_le());
        }
    }
}

trait ToLe<const N: usize> {
    fn to_le(self) -> [u8; N];
}

impl ToLe<2> for u16 {
    #[inline(always)]
    fn to_le(self) -> [u8; 2] {
        self.to_le_bytes()
    }
}

impl ToLe<4> for u32 {
    #[inline(always)]
    fn to_le(self) -> [u8; 4] {
        self.to_le_bytes()
    }
}

/// Runs `block` over `BLOCK`-element pieces of `input` (elements of `I` bytes) and
/// `output` (elements of `O` bytes), then over the shorter remainder. The caller has
/// checked that both hold the same whole number of elements.
#[inline(always)]
fn blocks<const I: usize, const O: usize>(
    input: &[u8],
    output: &mut [u8],
    block: impl Fn(&[u8], &mut [u8]),
) {
    let mut in_blocks = input.chunks_exact(I * BLOCK);
    let mut out_blocks = output.chunks_exact_mut(O * BLOCK);
    for (i, o) in (&mut in_blocks).zip(&mut out_blocks) {
        block(i, o);
    }
    block(in_blocks.remainder(), out_blocks.into_remainder());
}

/// Reads up to `BLOCK` little-endian u16 elements; returns them and their count.
#[inline(always)]
fn read_u16(input: &[u8]) -> ([u16; BLOCK], usize) {
    let mut v = [0u16; BLOCK];
    let mut n = 0;
    for (x, c) in v.iter_mut().zip(input.chunks_exact(2)) {
        *x = c.try_into().map_or(0, u16::from_le_bytes);
        n += 1;
    }
    (v, n)
}

/// Reads up to `BLOCK` little-endian u32 elements; returns them and their count.
#[inline(always)]
fn read_u32(input: &[u8]) -> ([u32; BLOCK], usize) {
    let mut v = [0u32; BLOCK];
    let mut n = 0;
    for (x, c) in v.iter_mut().zip(input.chunks_exact(4)) {
        *x = c.try_into().map_or(0, u32::from_le_bytes);
        n += 1;
    }
    (v, n)
}

#[inline(always)]
fn write_u16(output: &mut [u8], v: &[u16]) {
    for (c, x) in output.chunks_exact_mut(2).zip(v) {
        c.copy_from_slice(&x.to_le_bytes());
    }
}

#[inline(always)]
fn write_u32(output: &mut [u8], v: &[u32]) {
    for (c, x) in output.chunks_exact_mut(4).zip(v) {
        c.copy_from_slice(&x.to_le_bytes());
    }
}

/// Any F16 NaN → the quiet NaN with its sign; everything else unchanged.
#[inline(always)]
const fn canonical_f16_nan(h: u16) -> u16 {
    if h & 0x7FFF > F16_INF {
        (h & 0x8000) | F16_QNAN
    } else {
        h
    }
}

/// Any F32 NaN → the quiet NaN with its sign; everything else unchanged.
#[inline(always)]
const fn canonical_f32_nan(x: u32) -> u32 {
    if x & 0x7FFF_FFFF > F32_INF {
        (x & 0x8000_0000) | F32_QNAN
    } else {
        x
    }
}

/// Whether `half` converts F32 <-> F16 with CPU instructions here (F16C on x86,
/// FP16 on aarch64). Without them the scalar functions run instead of `half`'s
/// software fallback, so every machine computes what the tests check.
fn hardware_f16() -> bool {
    #[cfg(any(target_arch = "x86", target_arch = "x86_64"))]
    {
        std::arch::is_x86_feature_detected!("f16c")
    }
    #[cfg(target_arch = "aarch64")]
    {
        std::arch::is_aarch64_feature_detected!("fp16")
    }
    #[cfg(not(any(target_arch = "x86", target_arch = "x86_64", target_arch = "aarch64")))]
    {
        false
    }
}

/// F32 values (as bits) → F16 bits, NaNs canonical.
#[inline(always)]
fn f32_bits_to_f16_block(bits: &[u32; BLOCK], out: &mut [u16; BLOCK], hw: bool) {
    if !hw {
        for (o, &x) in out.iter_mut().zip(bits) {
            *o = f32_bits_to_f16(x);
        }
        return;
    }
    let mut f = [0f32; BLOCK];
    for (f, &b) in f.iter_mut().zip(bits) {
        *f = f32::from_bits(b);
    }
    let mut h = [half::f16::ZERO; BLOCK];
    h.convert_from_f32_slice(&f);
    for (o, h) in out.iter_mut().zip(h) {
        *o = canonical_f16_nan(h.to_bits());
    }
}

/// F16 bits → F32 bits, NaNs canonical.
#[inline(always)]
fn f16_to_f32_bits_block(v: &[u16; BLOCK], out: &mut [u32; BLOCK], hw: bool) {
    if !hw {
        for (o, &x) in out.iter_mut().zip(v) {
            *o = f16_to_f32_bits(x);
        }
        return;
    }
    let mut h = [half::f16::ZERO; BLOCK];
    for (h, &b) in h.iter_mut().zip(v) {
        *h = half::f16::from_bits(b);
    }
    let mut f = [0f32; BLOCK];
    h.convert_to_f32_slice(&mut f);
    for (o, f) in out.iter_mut().zip(f) {
        *o = canonical_f32_nan(f.to_bits());
    }
}

#[inline(always)]
fn f32_to_f16_block(input: &[u8], output: &mut [u8], hw: bool) {
    let (v, n) = read_u32(input);
    let mut out = [0u16; BLOCK];
    f32_bits_to_f16_block(&v, &mut out, hw);
    write_u16(output, out.get(..n).unwrap_or_default());
}

#[inline(always)]
fn f32_to_bf16_block(input: &[u8], output: &mut [u8]) {
    let (v, n) = read_u32(input);
    let mut out = [0u16; BLOCK];
    for (o, &x) in out.iter_mut().zip(&v) {
        *o = f32_bits_to_bf16(x);
    }
    write_u16(output, out.get(..n).unwrap_or_default());
}

#[inline(always)]
fn f16_to_f32_block(input: &[u8], output: &mut [u8], hw: bool) {
    let (v, n) = read_u16(input);
    let mut out = [0u32; BLOCK];
    f16_to_f32_bits_block(&v, &mut out, hw);
    write_u32(output, out.get(..n).unwrap_or_default());
}

#[inline(always)]
fn bf16_to_f32_block(input: &[u8], output: &mut [u8]) {
    let (v, n) = read_u16(input);
    let mut out = [0u32; BLOCK];
    for (o, &x) in out.iter_mut().zip(&v) {
        *o = bf16_to_f32_bits(x);
    }
    write_u32(output, out.get(..n).unwrap_or_default());
}

#[inline(always)]
fn f16_to_bf16_block(input: &[u8], output: &mut [u8], hw: bool) {
    let (v, n) = read_u16(input);
    let mut wide = [0u32; BLOCK];
    f16_to_f32_bits_block(&v, &mut wide, hw);
    let mut out = [0u16; BLOCK];
    for (o, &x) in out.iter_mut().zip(&wide) {
        *o = f32_bits_to_bf16(x);
    }
    write_u16(output, out.get(..n).unwrap_or_default());
}

#[inline(always)]
fn bf16_to_f16_block(input: &[u8], output: &mut [u8], hw: bool) {
    let (v, n) = read_u16(input);
    let mut wide = [0u32; BLOCK];
    for (o, &x) in wide.iter_mut().zip(&v) {
        *o = bf16_to_f32_bits(x);
    }
    let mut out = [0u16; BLOCK];
    f32_bits_to_f16_block(&wide, &mut out, hw);
    write_u16(output, out.get(..n).unwrap_or_default());
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn output_dtype_converts_only_floats_it_reads() {
        assert_eq!(output_dtype(Dtype::BF16, Some(Dtype::F32)), Dtype::F32);
        assert_eq!(output_dtype(Dtype::F8_E8M0, Some(Dtype::F16)), Dtype::F16);
        assert_eq!(output_dtype(Dtype::BF16, None), Dtype::BF16);
        assert_eq!(output_dtype(Dtype::I32, Some(Dtype::F32)), Dtype::I32);
        assert_eq!(output_dtype(Dtype::F64, Some(Dtype::F32)), Dtype::F64);
        assert_eq!(output_dtype(Dtype::F4, Some(Dtype::BF16)), Dtype::F4);
        assert_eq!(output_dtype(Dtype::F16, Some(Dtype::F8_E4M3)), Dtype::F16);
    }

    #[test]
    fn converted_len_scales_by_element_size() {
        assert_eq!(converted_len(Dtype::BF16, Dtype::F32, 6), 12);
        assert_eq!(converted_len(Dtype::F32, Dtype::F16, 12), 6);
        assert_eq!(converted_len(Dtype::F8_E4M3, Dtype::F32, 3), 12);
        assert_eq!(converted_len(Dtype::U8, Dtype::U8, 7), 7);
        assert_eq!(
            converted_len(Dtype::F8_E4M3, Dtype::F32, u64::MAX),
            u64::MAX
        );
    }

    #[test]
    fn bad_lengths_and_pairs_are_errors() {
        let mut out = [0u8; 8];
        let kind = |r: Result<()>| r.err().map(|e| e.kind());
        use crate::error::ErrorKind;
        assert_eq!(
            kind(convert_into(Dtype::F16, Dtype::F32, &[1, 2, 3], &mut out)),
            Some(ErrorKind::InvalidArgument)
        );
        assert_eq!(
            kind(convert_into(Dtype::F16, Dtype::F32, &[1, 2], &mut out)),
            Some(ErrorKind::InvalidArgument)
        );
        assert_eq!(
            kind(convert_into(
                Dtype::I32,
                Dtype::F32,
                &[1, 2, 3, 4],
                &mut out[..4]
            )),
            Some(ErrorKind::Unsupported)
        );
        assert_eq!(
            kind(convert_into(
                Dtype::F32,
                Dtype::F8_E4M3,
                &[1, 2, 3, 4],
                &mut out[..1]
            )),
            Some(ErrorKind::Unsupported)
        );
        assert_eq!(
            kind(convert_into(Dtype::U8, Dtype::U8, &[1, 2], &mut out[..3])),
            Some(ErrorKind::InvalidArgument)
        );
        assert!(convert_into(Dtype::F16, Dtype::F32, &[0x00, 0x3C], &mut out[..4]).is_ok());
        assert_eq!(out[..4], 1.0f32.to_le_bytes());
    }

    /// The scalar path (machines without F16C/FP16) and `half`'s hardware path
    /// give the same bits; CI machines only run the hardware one otherwise.
    #[test]
    fn hardware_and_scalar_f16_paths_agree() {
        let mut codes: Vec<u8> = (0..=0xFFFFu16).flat_map(u16::to_le_bytes).collect();
        // Odd length: a partial block at the end.
        codes.truncate(codes.len() - 2 * 7);
        let mut state = 0x2545_F491_4F6C_DD1Du64;
        let f32s: Vec<u8> = (0..200_003)
            .flat_map(|_| {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                (state as u32).to_le_bytes()
            })
            .collect();
        let cases = [
            (Dtype::F16, Dtype::F32, &codes),
            (Dtype::F16, Dtype::BF16, &codes),
            (Dtype::BF16, Dtype::F16, &codes),
            (Dtype::F32, Dtype::F16, &f32s),
        ];
        for (src, dst, input) in cases {
            let len = converted_len(src, dst, input.len() as u64) as usize;
            let mut scalar = vec![0xA5u8; len];
            let mut hw = vec![0x5Au8; len];
            assert!(convert_checked(src, dst, input, &mut scalar, false));
            assert!(convert_checked(src, dst, input, &mut hw, hardware_f16()));
            assert!(scalar == hw, "{src} -> {dst}");
        }
        assert!(!convert_checked(
            Dtype::I8,
            Dtype::F32,
            &[1],
            &mut [0; 4],
            false
        ));
    }

    #[test]
    fn spot_values() {
        assert_eq!(f32_bits_to_f16(65504.0f32.to_bits()), 0x7BFF);
        assert_eq!(f32_bits_to_f16(65519.996f32.to_bits()), 0x7BFF);
        assert_eq!(f32_bits_to_f16(65520.0f32.to_bits()), 0x7C00);
        assert_eq!(f32_bits_to_f16((-1e-8f32).to_bits()), 0x8000);
        assert_eq!(f32_bits_to_f16(2f32.powi(-24).to_bits()), 0x0001);
        assert_eq!(f32_bits_to_f16(2f32.powi(-25).to_bits()), 0x0000);
        assert_eq!(f32_bits_to_f16(0x7F80_0001), 0x7E00);
        assert_eq!(f32_bits_to_f16(0xFFFF_FFFF), 0xFE00);
        assert_eq!(f32_bits_to_bf16(0x7F7F_FFFF), 0x7F80);
        assert_eq!(f32_bits_to_bf16(0x3F80_8000), 0x3F80);
        assert_eq!(f32_bits_to_bf16(0x3F81_8000), 0x3F82);
        assert_eq!(f16_to_f32_bits(0x0001), 2f32.powi(-24).to_bits());
        assert_eq!(f16_to_f32_bits(0xFC01), 0xFFC0_0000);
        assert_eq!(f8_e4m3_to_f32_bits(0x7E), 448.0f32.to_bits());
        assert_eq!(f8_e4m3_to_f32_bits(0x01), 2f32.powi(-9).to_bits());
        assert_eq!(f8_e4m3_to_f32_bits(0xFF), 0xFFC0_0000);
        assert_eq!(f8_e5m2_to_f32_bits(0x7C), f32::INFINITY.to_bits());
        assert_eq!(f8_e5m2_to_f32_bits(0xFE), 0xFFC0_0000);
        assert_eq!(f8_e4m3fnuz_to_f32_bits(0x7F), 240.0f32.to_bits());
        assert_eq!(f8_e4m3fnuz_to_f32_bits(0x80), 0xFFC0_0000);
        assert_eq!(f8_e5m2fnuz_to_f32_bits(0x7F), 57344.0f32.to_bits());
        assert_eq!(f8_e5m2fnuz_to_f32_bits(0x01), 2f32.powi(-17).to_bits());
        assert_eq!(f8_e8m0_to_f32_bits(0x00), 0x0040_0000);
        assert_eq!(f8_e8m0_to_f32_bits(0x7F), 1.0f32.to_bits());
        assert_eq!(f8_e8m0_to_f32_bits(0xFE), 2f32.powi(127).to_bits());
        assert_eq!(f8_e8m0_to_f32_bits(0xFF), 0x7FC0_0000);
        assert_eq!(fp8_convert_bits(Dtype::F8_E8M0, Dtype::F16, 0x00), Some(0));
        assert_eq!(
            fp8_convert_bits(Dtype::F8_E8M0, Dtype::F16, 127 - 24),
            Some(1)
        );
        assert_eq!(
            fp8_convert_bits(Dtype::F8_E8M0, Dtype::F16, 127 - 25),
            Some(0)
        );
        assert_eq!(
            fp8_convert_bits(Dtype::F8_E8M0, Dtype::F16, 127 + 16),
            Some(0x7C00)
        );
        assert_eq!(
            fp8_convert_bits(Dtype::F8_E8M0, Dtype::BF16, 0),
            Some(0x0040)
        );
    }
}
