//! The element types of the safetensors format.

use std::fmt;
use std::str::FromStr;

use serde::Deserialize;

/// The 22 element types of the safetensors format, with the names the format uses.
#[allow(non_camel_case_types)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Deserialize)]
pub enum Dtype {
    /// Boolean, one byte per element.
    BOOL,
    /// 4-bit float (E2M1), two elements per byte.
    F4,
    /// 6-bit float, E2M3.
    F6_E2M3,
    /// 6-bit float, E3M2.
    F6_E3M2,
    /// Unsigned 8-bit integer.
    U8,
    /// Signed 8-bit integer.
    I8,
    /// 8-bit float, E5M2 (IEEE-like, with infinities).
    F8_E5M2,
    /// 8-bit float, E4M3 "FN" (no infinities, one NaN pattern per sign).
    F8_E4M3,
    /// 8-bit power-of-two scale, E8M0 (unsigned, 0xFF is NaN).
    F8_E8M0,
    /// 8-bit float, E4M3 "FNUZ" (bias 8, 0x80 is the only NaN).
    F8_E4M3FNUZ,
    /// 8-bit float, E5M2 "FNUZ" (bias 16, 0x80 is the only NaN).
    F8_E5M2FNUZ,
    /// Signed 16-bit integer.
    I16,
    /// Unsigned 16-bit integer.
    U16,
    /// IEEE half precision.
    F16,
    /// bfloat16.
    BF16,
    /// Signed 32-bit integer.
    I32,
    /// Unsigned 32-bit integer.
    U32,
    /// IEEE single precision.
    F32,
    /// Complex of two F32.
    C64,
    /// IEEE double precision.
    F64,
    /// Signed 64-bit integer.
    I64,
    /// Unsigned 64-bit integer.
    U64,
}

impl Dtype {
    /// Every dtype, in the format's order.
    pub const ALL: [Dtype; 22] = [
        Dtype::BOOL,
        Dtype::F4,
        Dtype::F6_E2M3,
        Dtype::F6_E3M2,
        Dtype::U8,
        Dtype::I8,
        Dtype::F8_E5M2,
        Dtype::F8_E4M3,
        Dtype::F8_E8M0,
        Dtype::F8_E4M3FNUZ,
        Dtype::F8_E5M2FNUZ,
        Dtype::I16,
        Dtype::U16,
        Dtype::F16,
        Dtype::BF16,
        Dtype::I32,
        Dtype::U32,
        Dtype::F32,
        Dtype::C64,
        Dtype::F64,
        Dtype::I64,
        Dtype::U64,
    ];

    /// Bits per element.
    pub const fn bits(self) -> u64 {
        match self {
            Dtype::F4 => 4,
            Dtype::F6_E2M3 | Dtype::F6_E3M2 => 6,
            Dtype::BOOL
            | Dtype::U8
            | Dtype::I8
            | Dtype::F8_E5M2
            | Dtype::F8_E4M3
            | Dtype::F8_E8M0
            | Dtype::F8_E4M3FNUZ
            | Dtype::F8_E5M2FNUZ => 8,
            Dtype::I16 | Dtype::U16 | Dtype::F16 | Dtype::BF16 => 16,
            Dtype::I32 | Dtype::U32 | Dtype::F32 => 32,
            Dtype::C64 | Dtype::F64 | Dtype::I64 | Dtype::U64 => 64,
        }
    }

    /// The name the format uses ("BF16", "F8_E4M3", ...).
    pub const fn name(self) -> &'static str {
        match self {
            Dtype::BOOL => "BOOL",
            Dtype::F4 => "F4",
            Dtype::F6_E2M3 => "F6_E2M3",
            Dtype::F6_E3M2 => "F6_E3M2",
            Dtype::U8 => "U8",
            Dtype::I8 => "I8",
            Dtype::F8_E5M2 => "F8_E5M2",
            Dtype::F8_E4M3 => "F8_E4M3",
            Dtype::F8_E8M0 => "F8_E8M0",
            Dtype::F8_E4M3FNUZ => "F8_E4M3FNUZ",
            Dtype::F8_E5M2FNUZ => "F8_E5M2FNUZ",
            Dtype::I16 => "I16",
            Dtype::U16 => "U16",
            Dtype::F16 => "F16",
            Dtype::BF16 => "BF16",
            Dtype::I32 => "I32",
            Dtype::U32 => "U32",
            Dtype::F32 => "F32",
            Dtype::C64 => "C64",
            Dtype::F64 => "F64",
            Dtype::I64 => "I64",
            Dtype::U64 => "U64",
        }
    }

    /// Floating-point types that [`crate::convert`] can read.
    pub const fn is_convertible_float(self) -> bool {
        matches!(
            self,
            Dtype::F32
                | Dtype::F16
                | Dtype::BF16
                | Dtype::F8_E4M3
                | Dtype::F8_E5M2
                | Dtype::F8_E4M3FNUZ
                | Dtype::F8_E5M2FNUZ
                | Dtype::F8_E8M0
        )
    }

    /// Types that [`crate::convert`] can write (the `--dtype` targets).
    pub const fn is_conversion_target(self) -> bool {
        matches!(self, Dtype::F32 | Dtype::F16 | Dtype::BF16)
    }

    /// Whether a tensor stored as this dtype can be loaded as `dtype`: as itself, or,
    /// when it is a float [`crate::convert`] reads, converted to one it writes.
    pub fn loads_as(self, dtype: Dtype) -> bool {
        dtype == self || (self.is_convertible_float() && dtype.is_conversion_target())
    }
}

impl fmt::Display for Dtype {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for Dtype {
    type Err = String;

    /// Parses the format's name, case-insensitively ("bf16" and "BF16" both work).
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Dtype::ALL
            .iter()
            .copied()
            .find(|d| d.name().eq_ignore_ascii_case(s))
            .ok_or_else(|| format!("unknown dtype '{s}'"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip_and_bits_are_the_formats() {
        for d in Dtype::ALL {
            assert_eq!(d.name().parse::<Dtype>(), Ok(d));
            let json = format!("\"{}\"", d.name());
            assert_eq!(serde_json::from_str::<Dtype>(&json).ok(), Some(d));
        }
        assert_eq!(Dtype::F4.bits(), 4);
        assert_eq!(Dtype::F6_E3M2.bits(), 6);
        assert_eq!(Dtype::C64.bits(), 64);
        assert!("F12".parse::<Dtype>().is_err());
    }
}
