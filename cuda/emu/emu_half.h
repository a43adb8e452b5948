// Host __half and __nv_bfloat16: 2-byte IEEE binary16 / bfloat16 bit patterns with
// round-to-nearest-even conversions from float. The rounding, NaN and overflow rules are the
// ones the Rust `half` crate uses (f16::from_f32, bf16::from_f32), so values produced by an
// emulated kernel compare bit-for-bit with the Rust reference:
//   * NaN stays NaN with the quiet bit set and the top payload bits kept, sign preserved;
//   * +-inf stays inf; finite values past the largest finite value round to inf;
//   * float values below the format's normal range become subnormals (or signed zero),
//     rounded to nearest even.
// Conversions to float are exact, except that a signalling NaN comes back quiet (the quiet bit
// is set, as the `half` crate's to_f32 does; a GPU's bf16 -> float keeps it signalling).
#pragma once

#include <bit>
#include <cstdint>
#include <type_traits>

#include "emu_types.h"

namespace stag_emu {

constexpr uint16_t f32_to_bf16_bits(float f) {
    const uint32_t x = std::bit_cast<uint32_t>(f);
    if ((x & 0x7FFFFFFFu) > 0x7F800000u) {
        // NaN: truncate, and set the quiet bit so a payload living only in the dropped low
        // bits cannot turn the NaN into an infinity.
        return static_cast<uint16_t>((x >> 16) | 0x0040u);
    }
    // Adding 0x7FFF rounds halves down and everything above a half up; adding the kept LSB on
    // top turns ties into ties-to-even. A carry out of the mantissa correctly bumps the
    // exponent, which also makes values past the largest finite bf16 round to infinity.
    const uint32_t lsb = (x >> 16) & 1u;
    return static_cast<uint16_t>((x + 0x7FFFu + lsb) >> 16);
}

constexpr float bf16_bits_to_f32(uint16_t h) {
    const uint32_t quiet = (h & 0x7FFFu) > 0x7F80u ? 0x0040u : 0u;
    return std::bit_cast<float>(static_cast<uint32_t>(h | quiet) << 16);
}

constexpr uint16_t f32_to_f16_bits(float f) {
    const uint32_t x = std::bit_cast<uint32_t>(f);
    const uint32_t sign = (x >> 16) & 0x8000u;
    const uint32_t ax = x & 0x7FFFFFFFu;
    if (ax > 0x7F800000u) {
        // NaN: quiet bit plus the top 9 payload bits.
        return static_cast<uint16_t>(sign | 0x7E00u | ((ax >> 13) & 0x03FFu));
    }
    if (ax >= 0x477FF000u) {
        // At or past 65520 (halfway between the largest finite half, 65504, and 2^16): the tie
        // goes to the even neighbour, which is infinity. Also covers +-inf itself.
        return static_cast<uint16_t>(sign | 0x7C00u);
    }
    if (ax >= 0x38800000u) {
        // Normal half (>= 2^-14): rebias the exponent (127 -> 15) and round 13 bits away.
        const uint32_t r = ax - 0x38000000u;
        const uint32_t lsb = (r >> 13) & 1u;
        return static_cast<uint16_t>(sign | ((r + 0x0FFFu + lsb) >> 13));
    }
    // Subnormal half or zero. The value is m * 2^(e-150) with the implicit bit made explicit;
    // in units of the smallest subnormal (2^-24) that is m >> (126 - e).
    const uint32_t e = ax >> 23;
    if (e < 102) {
        // Below 2^-25 (half of the smallest subnormal): rounds to signed zero.
        return static_cast<uint16_t>(sign);
    }
    const uint32_t m = (ax & 0x007FFFFFu) | 0x00800000u;
    const uint32_t shift = 126 - e;  // 14..24
    uint32_t q = m >> shift;
    const uint32_t rem = m & ((1u << shift) - 1u);
    const uint32_t halfway = 1u << (shift - 1);
    if (rem > halfway || (rem == halfway && (q & 1u))) {
        ++q;  // may carry into the exponent field: that is the smallest normal, as it should be
    }
    return static_cast<uint16_t>(sign | q);
}

constexpr float f16_bits_to_f32(uint16_t h) {
    const uint32_t sign = static_cast<uint32_t>(h & 0x8000u) << 16;
    const uint32_t exp = (h >> 10) & 0x1Fu;
    uint32_t man = h & 0x03FFu;
    if (exp == 0x1F) {
        // inf, or NaN: widen the payload and make it quiet.
        return std::bit_cast<float>(sign | 0x7F800000u | (man != 0 ? 0x00400000u : 0u) |
                                    (man << 13));
    }
    if (exp != 0) {
        return std::bit_cast<float>(sign | ((exp + 112u) << 23) | (man << 13));
    }
    if (man == 0) {
        return std::bit_cast<float>(sign);
    }
    // Subnormal half: normalise. Value = man * 2^-24.
    int e = -1;
    do {
        man <<= 1;
        ++e;
    } while ((man & 0x0400u) == 0);
    const uint32_t fexp = static_cast<uint32_t>(127 - 15 - e);
    return std::bit_cast<float>(sign | (fexp << 23) | ((man & 0x03FFu) << 13));
}

}  // namespace stag_emu

struct __half_raw {
    unsigned short x;
};
struct __nv_bfloat16_raw {
    unsigned short x;
};

// Trivially copyable 2-byte wrappers. Like CUDA's types they convert implicitly to and from
// float; the default constructor is trivial so `__shared__ __half buf[N]` needs no guard.
struct __attribute__((aligned(2))) __half {
    unsigned short __x;
    __half() = default;
    constexpr __half(float f) : __x(stag_emu::f32_to_f16_bits(f)) {}
    constexpr __half(__half_raw r) : __x(r.x) {}
    constexpr operator float() const { return stag_emu::f16_bits_to_f32(__x); }
    constexpr operator __half_raw() const { return __half_raw{__x}; }
};

struct __attribute__((aligned(2))) __nv_bfloat16 {
    unsigned short __x;
    __nv_bfloat16() = default;
    constexpr __nv_bfloat16(float f) : __x(stag_emu::f32_to_bf16_bits(f)) {}
    constexpr __nv_bfloat16(__nv_bfloat16_raw r) : __x(r.x) {}
    constexpr operator float() const { return stag_emu::bf16_bits_to_f32(__x); }
    constexpr operator __nv_bfloat16_raw() const { return __nv_bfloat16_raw{__x}; }
};

struct __attribute__((aligned(4))) __half2 {
    __half x, y;
    __half2() = default;
    constexpr __half2(__half a, __half b) : x(a), y(b) {}
};

struct __attribute__((aligned(4))) __nv_bfloat162 {
    __nv_bfloat16 x, y;
    __nv_bfloat162() = default;
    constexpr __nv_bfloat162(__nv_bfloat16 a, __nv_bfloat16 b) : x(a), y(b) {}
};

static_assert(sizeof(__half) == 2 && sizeof(__nv_bfloat16) == 2);
static_assert(sizeof(__half2) == 4 && sizeof(__nv_bfloat162) == 4);
static_assert(std::is_trivially_copyable_v<__half> && std::is_trivial_v<__nv_bfloat16>);

typedef __half half;
typedef __half2 half2;
typedef __nv_bfloat16 nv_bfloat16;
typedef __nv_bfloat162 nv_bfloat162;

// ---- binary16 ----
constexpr __half __float2half(float f) { return __half(f); }
constexpr __half __float2half_rn(float f) { return __half(f); }
constexpr float __half2float(__half h) { return stag_emu::f16_bits_to_f32(h.__x); }
constexpr unsigned short __half_as_ushort(__half h) { return h.__x; }
constexpr short __half_as_short(__half h) { return static_cast<short>(h.__x); }
constexpr __half __ushort_as_half(unsigned short u) { return __half(__half_raw{u}); }
constexpr __half __short_as_half(short s) {
    return __half(__half_raw{static_cast<unsigned short>(s)});
}
constexpr __half2 __floats2half2_rn(float a, float b) { return __half2(__half(a), __half(b)); }
constexpr __half2 __float22half2_rn(float2 v) { return __half2(__half(v.x), __half(v.y)); }
constexpr __half2 __float2half2_rn(float a) { return __half2(__half(a), __half(a)); }
constexpr float2 __half22float2(__half2 v) { return float2{__half2float(v.x), __half2float(v.y)}; }
constexpr float __low2float(__half2 v) { return __half2float(v.x); }
constexpr float __high2float(__half2 v) { return __half2float(v.y); }
constexpr __half __low2half(__half2 v) { return v.x; }
constexpr __half __high2half(__half2 v) { return v.y; }
constexpr __half2 __halves2half2(__half lo, __half hi) { return __half2(lo, hi); }
constexpr __half2 __half2half2(__half h) { return __half2(h, h); }
// Computed in float and rounded once: float has more than 2*11+2 significand bits, so the
// result equals the correctly rounded half operation.
constexpr __half __hadd(__half a, __half b) { return __half(float(a) + float(b)); }
constexpr __half __hsub(__half a, __half b) { return __half(float(a) - float(b)); }
constexpr __half __hmul(__half a, __half b) { return __half(float(a) * float(b)); }

// ---- bfloat16 ----
constexpr __nv_bfloat16 __float2bfloat16(float f) { return __nv_bfloat16(f); }
constexpr __nv_bfloat16 __float2bfloat16_rn(float f) { return __nv_bfloat16(f); }
constexpr float __bfloat162float(__nv_bfloat16 h) { return stag_emu::bf16_bits_to_f32(h.__x); }
constexpr unsigned short __bfloat16_as_ushort(__nv_bfloat16 h) { return h.__x; }
constexpr short __bfloat16_as_short(__nv_bfloat16 h) { return static_cast<short>(h.__x); }
constexpr __nv_bfloat16 __ushort_as_bfloat16(unsigned short u) {
    return __nv_bfloat16(__nv_bfloat16_raw{u});
}
constexpr __nv_bfloat16 __short_as_bfloat16(short s) {
    return __nv_bfloat16(__nv_bfloat16_raw{static_cast<unsigned short>(s)});
}
constexpr __nv_bfloat162 __floats2bfloat162_rn(float a, float b) {
    return __nv_bfloat162(__nv_bfloat16(a), __nv_bfloat16(b));
}
constexpr __nv_bfloat162 __float22bfloat162_rn(float2 v) {
    return __nv_bfloat162(__nv_bfloat16(v.x), __nv_bfloat16(v.y));
}
constexpr __nv_bfloat162 __float2bfloat162_rn(float a) {
    return __nv_bfloat162(__nv_bfloat16(a), __nv_bfloat16(a));
}
constexpr float2 __bfloat1622float2(__nv_bfloat162 v) {
    return float2{__bfloat162float(v.x), __bfloat162float(v.y)};
}
constexpr float __low2float(__nv_bfloat162 v) { return __bfloat162float(v.x); }
constexpr float __high2float(__nv_bfloat162 v) { return __bfloat162float(v.y); }
constexpr __nv_bfloat16 __low2bfloat16(__nv_bfloat162 v) { return v.x; }
constexpr __nv_bfloat16 __high2bfloat16(__nv_bfloat162 v) { return v.y; }
constexpr __nv_bfloat162 __halves2bfloat162(__nv_bfloat16 lo, __nv_bfloat16 hi) {
    return __nv_bfloat162(lo, hi);
}
constexpr __nv_bfloat162 __bfloat162bfloat162(__nv_bfloat16 h) { return __nv_bfloat162(h, h); }
constexpr __nv_bfloat16 __hadd(__nv_bfloat16 a, __nv_bfloat16 b) {
    return __nv_bfloat16(float(a) + float(b));
}
constexpr __nv_bfloat16 __hsub(__nv_bfloat16 a, __nv_bfloat16 b) {
    return __nv_bfloat16(float(a) - float(b));
}
constexpr __nv_bfloat16 __hmul(__nv_bfloat16 a, __nv_bfloat16 b) {
    return __nv_bfloat16(float(a) * float(b));
}
