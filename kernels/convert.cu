// tensorstream dtype conversion kernels.
//
// Header-free: bit operations on integers only (no cuda_fp16.h, no float
// arithmetic), so results do not depend on rounding modes or flush-to-zero
// flags, and the same element functions compile as plain C++ for the host.
// tests/kernel_host.rs builds kernels/host_driver.cpp (which includes this file)
// with g++ and checks every element function and the vectorised/scalar
// splitting below bit for bit against src/convert.rs.
//
// Kernels (21): convert_<src>_<dst> for
//   src in f32 f16 bf16 f8_e4m3 f8_e5m2 f8_e4m3fnuz f8_e5m2fnuz f8_e8m0,
//   dst in f32 f16 bf16, src != dst.
// Signature:
//   extern "C" __global__ void convert_<src>_<dst>(
//       const unsigned char* src, unsigned char* dst, unsigned long long n_elements);
// `src` holds n_elements little-endian elements of <src>, `dst` receives
// n_elements elements of <dst>; the two must not overlap (the source is read
// through the non-coherent cache). Pointers need only be aligned to their element
// size; any grid works (grid-stride loops). Each thread converts groups of 8
// elements with 8- or 16-byte loads and 16-byte stores where both pointers allow
// it, and single elements (byte loads and stores) for a misaligned head, the tail,
// or everything when the two pointers can never be aligned together. Kernels from
// a 1-byte (FP8) source to F16 or BF16 first tabulate their conversion of all 256
// byte values in shared memory (1 KiB per block, then a block barrier) and look
// every element up.
// A launch of 256 threads per block and ceil(n / (8 * 256)) blocks, capped at
// 65535, covers a tensor (src/sink/cuda/driver.rs).
//
// Conversion rules (the same as src/convert.rs): widening is exact; narrowing
// rounds to nearest, ties to even; overflow gives +-inf; subnormals are kept; a
// NaN becomes the target's quiet NaN with the input's sign bit (F32 0x7FC00000,
// F16 0x7E00, BF16 0x7FC0). FP8 formats:
//   F8_E4M3      bias 7,  no inf, S.1111.111 NaN
//   F8_E5M2      bias 15, IEEE-like inf and NaN
//   F8_E4M3FNUZ  bias 8,  0x80 the only NaN (sign bit set: negative quiet NaN)
//   F8_E5M2FNUZ  bias 16, 0x80 the only NaN (sign bit set: negative quiet NaN)
//   F8_E8M0      unsigned 2^(e-127), 0xFF NaN (positive quiet NaN), 0x00 = 2^-127

#ifndef __CUDACC__
#define __host__
#define __device__
#define __forceinline__ inline
#endif

namespace tsconv {

typedef unsigned char u8;
typedef unsigned short u16;
typedef unsigned int u32;
typedef unsigned long long u64;

#define TS_FN __host__ __device__ __forceinline__

#ifdef __CUDACC__
#define TS_UNROLL _Pragma("unroll")
#else
#define TS_UNROLL
#endif

constexpr u32 F32_QNAN = 0x7FC00000u;
constexpr u32 F32_INF = 0x7F800000u;
constexpr u32 F16_QNAN = 0x7E00u;
constexpr u32 F16_INF = 0x7C00u;
constexpr u32 BF16_QNAN = 0x7FC0u;

// Position of the highest set bit of x (x != 0).
TS_FN u32 top_bit(u32 x) {
#ifdef __CUDA_ARCH__
    return 31u - (u32)__clz((int)x);
#else
    return 31u - (u32)__builtin_clz(x);
#endif
}

// ---- element functions: input bits zero-extended to u32, output bits in u32 ----

// F32 -> BF16: round to nearest even, overflow to inf, NaN to quiet NaN.
TS_FN u32 f32_to_bf16(u32 x) {
    if ((x & 0x7FFFFFFFu) > F32_INF) return ((x >> 16) & 0x8000u) | BF16_QNAN;
    // No wrap: the largest non-NaN pattern is 0xFF800000.
    return (x + 0x7FFFu + ((x >> 16) & 1u)) >> 16;
}

// BF16 -> F32: exact.
TS_FN u32 bf16_to_f32(u32 x) {
    if ((x & 0x7FFFu) > 0x7F80u) return ((x & 0x8000u) << 16) | F32_QNAN;
    return x << 16;
}

// F32 -> F16: round to nearest even (subnormal results too), overflow to inf.
TS_FN u32 f32_to_f16(u32 x) {
    const u32 sign = (x >> 16) & 0x8000u;
    const u32 a = x & 0x7FFFFFFFu;
    if (a > F32_INF) return sign | F16_QNAN;
    if (a >= 0x47800000u) return sign | F16_INF;  // |x| >= 65536
    if (a >= 0x38800000u) {                       // |x| >= 2^-14: normal result
        // Rebias and round away 13 bits; a mantissa carry bumps the exponent.
        return sign | ((a - 0x38000000u + 0x0FFFu + ((a >> 13) & 1u)) >> 13);
    }
    // Subnormal result round_even(|x| / 2^-24) = mant * 2^(exp - 126).
    const u32 exp = a >> 23;
    const u32 mant = (a & 0x7FFFFFu) | 0x800000u;
    // Shifts past 25 give 0 either way (mant < 2^24); covers F32 subnormals.
    const u32 shift = exp >= 101u ? 126u - exp : 25u;
    const u32 q = mant >> shift;
    const u32 rem = mant & ((1u << shift) - 1u);
    const u32 half = 1u << (shift - 1u);
    const u32 up = (rem > half || (rem == half && (q & 1u))) ? 1u : 0u;
    return sign | (q + up);
}

// F16 -> F32: exact (subnormals normalised).
TS_FN u32 f16_to_f32(u32 x) {
    const u32 sign = (x & 0x8000u) << 16;
    const u32 a = x & 0x7FFFu;
    if (a > 0x7C00u) return sign | F32_QNAN;
    if (a == 0x7C00u) return sign | F32_INF;
    if (a >= 0x0400u) return sign | ((a << 13) + 0x38000000u);
    if (a == 0u) return sign;
    const u32 top = top_bit(a);  // 0..9; value a * 2^-24
    return sign | ((top + 103u) << 23) | ((a << (23u - top)) & 0x7FFFFFu);
}

TS_FN u32 f16_to_bf16(u32 x) {
#ifdef __CUDA_ARCH__
    // On the device, the hardware's exact widening and round-to-nearest-even
    // narrowing (cvt, sm_80+; no .ftz, so subnormals are kept), then the NaN rule:
    // the same bits as the integer path below, in a few instructions instead of
    // some twenty (that kernel was arithmetic-bound). The host tests check the
    // integer path exhaustively; tests/cuda.rs compares every F16 code point
    // converted on the GPU with the host's conversion.
    if ((x & 0x7FFFu) > F16_INF) return (x & 0x8000u) | BF16_QNAN;
    float f;
    unsigned short r;
    asm("cvt.f32.f16 %0, %1;" : "=f"(f) : "h"((unsigned short)x));
    asm("cvt.rn.bf16.f32 %0, %1;" : "=h"(r) : "f"(f));
    return r;
#else
    return f32_to_bf16(f16_to_f32(x));
#endif
}
TS_FN u32 bf16_to_f16(u32 x) { return f32_to_f16(bf16_to_f32(x)); }

// Finite FP8 with EBITS exponent bits, MBITS mantissa bits and BIAS -> F32 (exact).
template <u32 EBITS, u32 MBITS, u32 BIAS>
TS_FN u32 fp8_finite_to_f32(u32 x) {
    const u32 sign = (x & 0x80u) << 24;
    const u32 exp = (x >> MBITS) & ((1u << EBITS) - 1u);
    const u32 mant = x & ((1u << MBITS) - 1u);
    if (exp == 0u) {
        if (mant == 0u) return sign;
        // Subnormal mant * 2^(1 - BIAS - MBITS).
        const u32 top = top_bit(mant);
        return sign | ((top + 1u + 127u - BIAS - MBITS) << 23) |
               ((mant << (23u - top)) & 0x7FFFFFu);
    }
    return sign | ((exp + 127u - BIAS) << 23) | (mant << (23u - MBITS));
}

TS_FN u32 f8_e4m3_to_f32(u32 x) {
    if ((x & 0x7Fu) == 0x7Fu) return ((x & 0x80u) << 24) | F32_QNAN;
    return fp8_finite_to_f32<4, 3, 7>(x);
}

TS_FN u32 f8_e5m2_to_f32(u32 x) {
    if ((x & 0x7Fu) == 0x7Cu) return ((x & 0x80u) << 24) | F32_INF;
    if ((x & 0x7Fu) > 0x7Cu) return ((x & 0x80u) << 24) | F32_QNAN;
    return fp8_finite_to_f32<5, 2, 15>(x);
}

TS_FN u32 f8_e4m3fnuz_to_f32(u32 x) {
    if (x == 0x80u) return 0x80000000u | F32_QNAN;
    return fp8_finite_to_f32<4, 3, 8>(x);
}

TS_FN u32 f8_e5m2fnuz_to_f32(u32 x) {
    if (x == 0x80u) return 0x80000000u | F32_QNAN;
    return fp8_finite_to_f32<5, 2, 16>(x);
}

TS_FN u32 f8_e8m0_to_f32(u32 x) {
    if (x == 0xFFu) return F32_QNAN;
    if (x == 0u) return 0x00400000u;  // 2^-127, an F32 subnormal
    return x << 23;                   // 2^(x - 127)
}

// ---- one functor per pair: source and destination element sizes + apply ----

#define TS_OP(NAME, SRC_SIZE, DST_SIZE, EXPR)      \
    struct NAME {                                 \
        enum { S = SRC_SIZE, D = DST_SIZE };      \
        static TS_FN u32 apply(u32 x) { return EXPR; } \
    };

TS_OP(op_f32_f16, 4, 2, f32_to_f16(x))
TS_OP(op_f32_bf16, 4, 2, f32_to_bf16(x))
TS_OP(op_f16_f32, 2, 4, f16_to_f32(x))
TS_OP(op_f16_bf16, 2, 2, f16_to_bf16(x))
TS_OP(op_bf16_f32, 2, 4, bf16_to_f32(x))
TS_OP(op_bf16_f16, 2, 2, bf16_to_f16(x))
TS_OP(op_f8_e4m3_f32, 1, 4, f8_e4m3_to_f32(x))
TS_OP(op_f8_e4m3_f16, 1, 2, f32_to_f16(f8_e4m3_to_f32(x)))
TS_OP(op_f8_e4m3_bf16, 1, 2, f32_to_bf16(f8_e4m3_to_f32(x)))
TS_OP(op_f8_e5m2_f32, 1, 4, f8_e5m2_to_f32(x))
TS_OP(op_f8_e5m2_f16, 1, 2, f32_to_f16(f8_e5m2_to_f32(x)))
TS_OP(op_f8_e5m2_bf16, 1, 2, f32_to_bf16(f8_e5m2_to_f32(x)))
TS_OP(op_f8_e4m3fnuz_f32, 1, 4, f8_e4m3fnuz_to_f32(x))
TS_OP(op_f8_e4m3fnuz_f16, 1, 2, f32_to_f16(f8_e4m3fnuz_to_f32(x)))
TS_OP(op_f8_e4m3fnuz_bf16, 1, 2, f32_to_bf16(f8_e4m3fnuz_to_f32(x)))
TS_OP(op_f8_e5m2fnuz_f32, 1, 4, f8_e5m2fnuz_to_f32(x))
TS_OP(op_f8_e5m2fnuz_f16, 1, 2, f32_to_f16(f8_e5m2fnuz_to_f32(x)))
TS_OP(op_f8_e5m2fnuz_bf16, 1, 2, f32_to_bf16(f8_e5m2fnuz_to_f32(x)))
TS_OP(op_f8_e8m0_f32, 1, 4, f8_e8m0_to_f32(x))
TS_OP(op_f8_e8m0_f16, 1, 2, f32_to_f16(f8_e8m0_to_f32(x)))
TS_OP(op_f8_e8m0_bf16, 1, 2, f32_to_bf16(f8_e8m0_to_f32(x)))

#undef TS_OP

// ---- memory access ----

// Elements per vector group, and the alignment each side needs for it.
constexpr int GROUP = 8;

struct alignas(16) v16 { u32 w[4]; };
struct alignas(8) v8 { u32 w[2]; };

TS_FN u64 align_of_group(int size) { return size == 1 ? 8u : 16u; }

#ifndef __CUDACC__
// Host build: a vector access the split below got wrong must fail loudly.
void misaligned_vector_access(const void* p);
#define TS_CHECK_ALIGN(p, a) \
    if (((u64)(p)) % (a) != 0u) misaligned_vector_access(p)
#else
#define TS_CHECK_ALIGN(p, a)
#endif

// One element by bytes (any alignment), little-endian.
template <int SIZE>
TS_FN u32 load_one(const u8* __restrict__ p) {
    u32 v = 0;
    TS_UNROLL
    for (int b = 0; b < SIZE; ++b) v |= (u32)p[b] << (8 * b);
    return v;
}

template <int SIZE>
TS_FN void store_one(u8* __restrict__ p, u32 v) {
    TS_UNROLL
    for (int b = 0; b < SIZE; ++b) p[b] = (u8)(v >> (8 * b));
}

// GROUP elements from an aligned pointer: 8-byte load for 1-byte elements,
// one or two 16-byte loads otherwise.
template <int SIZE>
TS_FN void load_group(const u8* __restrict__ p, u32 (&e)[GROUP]) {
    if (SIZE == 1) {
        TS_CHECK_ALIGN(p, 8);
        const v8 v = *reinterpret_cast<const v8*>(p);
        TS_UNROLL
        for (int i = 0; i < GROUP; ++i) e[i] = (v.w[i / 4] >> (8 * (i % 4))) & 0xFFu;
    } else if (SIZE == 2) {
        TS_CHECK_ALIGN(p, 16);
        const v16 v = *reinterpret_cast<const v16*>(p);
        TS_UNROLL
        for (int i = 0; i < GROUP; ++i) e[i] = (v.w[i / 2] >> (16 * (i % 2))) & 0xFFFFu;
    } else {
        TS_CHECK_ALIGN(p, 16);
        const v16 a = *reinterpret_cast<const v16*>(p);
        const v16 b = *reinterpret_cast<const v16*>(p + 16);
        TS_UNROLL
        for (int i = 0; i < 4; ++i) {
            e[i] = a.w[i];
            e[i + 4] = b.w[i];
        }
    }
}

// GROUP elements to a 16-byte-aligned pointer (2- or 4-byte elements).
template <int SIZE>
TS_FN void store_group(u8* __restrict__ p, const u32 (&e)[GROUP]) {
    TS_CHECK_ALIGN(p, 16);
    if (SIZE == 2) {
        v16 v;
        TS_UNROLL
        for (int i = 0; i < 4; ++i) v.w[i] = (e[2 * i] & 0xFFFFu) | (e[2 * i + 1] << 16);
        *reinterpret_cast<v16*>(p) = v;
    } else {
        v16 a, b;
        TS_UNROLL
        for (int i = 0; i < 4; ++i) {
            a.w[i] = e[i];
            b.w[i] = e[i + 4];
        }
        *reinterpret_cast<v16*>(p) = a;
        *reinterpret_cast<v16*>(p + 16) = b;
    }
}

// ---- the per-element map: the op itself, or a table of it ----

// A 1-byte source has 256 possible elements. Its kernels to a 16-bit type tabulate
// the op over all of them once per block (in shared memory) and convert each element
// with one lookup, instead of decoding and re-rounding it with some 35 integer
// operations, which made them arithmetic-bound (0.28-0.47x a device-to-device copy on
// an H200; 0.87-0.96x with the table). FP8 -> F32 is a plain decode and stays direct:
// measured on an H200, direct 0.90-0.98x, the table 0.69-0.71x. The table holds
// Op::apply's own results, so the output bits are the same either way.
template <typename Op>
struct Direct {
    TS_FN u32 operator()(u32 x) const { return Op::apply(x); }
};

struct Table {
    const u32* t;
    TS_FN u32 operator()(u32 x) const { return t[x & 0xFFu]; }
};

// Fills table[i] for i = first, first + step, ... below 256.
template <typename Op>
TS_FN void fill_table(u32* table, u32 first, u32 step) {
    for (u32 i = first; i < 256u; i += step) table[i] = Op::apply(i);
}

// How convert_range splits n elements: `head` single elements until both pointers
// are aligned for a group, then `groups` whole groups, then single elements for
// the tail. When no head shorter than a group aligns both (pointers whose offsets
// disagree), or either pointer is not aligned to its element size, every element
// goes the single way (groups == 0).
struct Split {
    u64 head;
    u64 groups;
};

template <int S, int D>
TS_FN Split split_range(const u8* src, const u8* dst, u64 n) {
    const u64 sa = (u64)src;
    const u64 da = (u64)dst;
    const u64 src_align = align_of_group(S);
    const u64 dst_align = align_of_group(D);
    Split sp = {0u, 0u};
    if (sa % S == 0u && da % D == 0u) {
        u64 h = 0;
        while (h < (u64)GROUP &&
               ((sa + h * S) % src_align != 0u || (da + h * D) % dst_align != 0u)) {
            ++h;
        }
        if (h < (u64)GROUP && h <= n) {
            sp.head = h;
            sp.groups = (n - h) / GROUP;
        }
    }
    return sp;
}

// The work of thread `tid` out of `nthreads` (grid-stride loops): converts the
// n elements at src into dst, each through `map` (Direct<Op> or a Table of Op).
template <typename Op, typename Map>
TS_FN void convert_range(const u8* __restrict__ src, u8* __restrict__ dst, u64 n, u64 tid,
                         u64 nthreads, const Map& map) {
    const int S = Op::S;
    const int D = Op::D;
    const Split sp = split_range<S, D>(src, dst, n);
    const u64 head = sp.head;
    const u64 groups = sp.groups;
    const u64 body_end = head + groups * GROUP;

    for (u64 g = tid; g < groups; g += nthreads) {
        const u64 first = head + g * GROUP;
        u32 e[GROUP];
        load_group<S>(src + first * S, e);
        TS_UNROLL
        for (int i = 0; i < GROUP; ++i) e[i] = map(e[i]);
        store_group<D>(dst + first * D, e);
    }

    const u64 singles = head + (n - body_end);
    for (u64 k = tid; k < singles; k += nthreads) {
        const u64 i = k < head ? k : body_end + (k - head);
        store_one<D>(dst + i * D, map(load_one<S>(src + i * S)));
    }
}

}  // namespace tsconv

// X-macro over the 21 pairs: X(kernel name, functor).
#define TS_CONVERT_PAIRS(X)                          \
    X(convert_f32_f16, op_f32_f16)                   \
    X(convert_f32_bf16, op_f32_bf16)                 \
    X(convert_f16_f32, op_f16_f32)                   \
    X(convert_f16_bf16, op_f16_bf16)                 \
    X(convert_bf16_f32, op_bf16_f32)                 \
    X(convert_bf16_f16, op_bf16_f16)                 \
    X(convert_f8_e4m3_f32, op_f8_e4m3_f32)           \
    X(convert_f8_e4m3_f16, op_f8_e4m3_f16)           \
    X(convert_f8_e4m3_bf16, op_f8_e4m3_bf16)         \
    X(convert_f8_e5m2_f32, op_f8_e5m2_f32)           \
    X(convert_f8_e5m2_f16, op_f8_e5m2_f16)           \
    X(convert_f8_e5m2_bf16, op_f8_e5m2_bf16)         \
    X(convert_f8_e4m3fnuz_f32, op_f8_e4m3fnuz_f32)   \
    X(convert_f8_e4m3fnuz_f16, op_f8_e4m3fnuz_f16)   \
    X(convert_f8_e4m3fnuz_bf16, op_f8_e4m3fnuz_bf16) \
    X(convert_f8_e5m2fnuz_f32, op_f8_e5m2fnuz_f32)   \
    X(convert_f8_e5m2fnuz_f16, op_f8_e5m2fnuz_f16)   \
    X(convert_f8_e5m2fnuz_bf16, op_f8_e5m2fnuz_bf16) \
    X(convert_f8_e8m0_f32, op_f8_e8m0_f32)           \
    X(convert_f8_e8m0_f16, op_f8_e8m0_f16)           \
    X(convert_f8_e8m0_bf16, op_f8_e8m0_bf16)

#ifdef __CUDACC__
#define TS_KERNEL(NAME, OP)                                                          \
    extern "C" __global__ void NAME(const unsigned char* __restrict__ src,           \
                                    unsigned char* __restrict__ dst,                 \
                                    unsigned long long n_elements) {                 \
        const unsigned long long tid =                                               \
            (unsigned long long)blockIdx.x * blockDim.x + threadIdx.x;               \
        const unsigned long long nthreads = (unsigned long long)gridDim.x * blockDim.x; \
        if constexpr (tsconv::OP::S == 1 && tsconv::OP::D == 2) {                    \
            __shared__ tsconv::u32 table[256];                                       \
            tsconv::fill_table<tsconv::OP>(table, threadIdx.x, blockDim.x);          \
            __syncthreads();                                                         \
            tsconv::convert_range<tsconv::OP>(src, dst, n_elements, tid, nthreads,   \
                                              tsconv::Table{table});                 \
        } else {                                                                     \
            tsconv::convert_range<tsconv::OP>(src, dst, n_elements, tid, nthreads,   \
                                              tsconv::Direct<tsconv::OP>{});         \
        }                                                                            \
    }
TS_CONVERT_PAIRS(TS_KERNEL)
#undef TS_KERNEL
#endif
