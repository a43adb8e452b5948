// CUDA device math and bit intrinsics on the host. The fast-math intrinsics (__expf, __logf,
// ...) map to the correctly rounded libm functions, so emulated results can differ from a GPU
// in the last bits; the _rn intrinsics are exact IEEE operations on both sides.
#pragma once

#include <math.h>  // C names (expf, fminf, ...) in the global namespace, as device code uses them

#include <bit>
#include <cmath>
#include <cstdint>
#include <limits>
#include <type_traits>

namespace stag_emu::math {

inline float rsqrt_f(float x) { return 1.0f / std::sqrt(x); }
inline double rsqrt_d(double x) { return 1.0 / std::sqrt(x); }

// Round with the current (nearest-even) mode, then saturate like the GPU's cvt.rni.sat:
// NaN -> 0, out-of-range -> the nearest representable bound (C++ casts would be UB here).
template <class I>
inline I saturating_round(double v) {
    if (std::isnan(v)) {
        return 0;
    }
    const double r = std::nearbyint(v);
    if (r <= static_cast<double>(std::numeric_limits<I>::min())) {
        return std::numeric_limits<I>::min();
    }
    if (r >= static_cast<double>(std::numeric_limits<I>::max())) {
        return std::numeric_limits<I>::max();
    }
    return static_cast<I>(r);
}

template <class I>
inline I saturating_trunc(double v) {
    return saturating_round<I>(std::trunc(v));
}

}  // namespace stag_emu::math

// glibc declares (but does not export) __expf, __logf, ... as internal libm names, so these
// are macros instead of functions; the headers above are already included, so their
// declarations are not affected. rsqrtf is a macro because newer C libraries declare it (C23).
#define rsqrtf(x) ::stag_emu::math::rsqrt_f(x)
#define rsqrt(x) ::stag_emu::math::rsqrt_d(x)
#define __expf(x) ::expf(x)
#define __exp10f(x) ::powf(10.0f, (x))
#define __logf(x) ::logf(x)
#define __log2f(x) ::log2f(x)
#define __log10f(x) ::log10f(x)
#define __sinf(x) ::sinf(x)
#define __cosf(x) ::cosf(x)
#define __tanf(x) ::tanf(x)
#define __powf(x, y) ::powf((x), (y))

inline void __sincosf(float x, float *s, float *c) {
    *s = ::sinf(x);
    *c = ::cosf(x);
}
inline float __fdividef(float a, float b) { return a / b; }
inline float __frcp_rn(float x) { return 1.0f / x; }
inline float __fsqrt_rn(float x) { return ::sqrtf(x); }
inline float __frsqrt_rn(float x) { return 1.0f / ::sqrtf(x); }
inline float __fmaf_rn(float a, float b, float c) { return std::fma(a, b, c); }
inline float __fadd_rn(float a, float b) { return a + b; }
inline float __fsub_rn(float a, float b) { return a - b; }
inline float __fmul_rn(float a, float b) { return a * b; }
inline float __fdiv_rn(float a, float b) { return a / b; }
// Clamp to [0, 1]; NaN -> 0 (both comparisons fail).
inline float __saturatef(float x) { return x > 1.0f ? 1.0f : (x > 0.0f ? x : 0.0f); }

inline int __float2int_rn(float x) { return stag_emu::math::saturating_round<int>(x); }
inline int __float2int_rz(float x) { return stag_emu::math::saturating_trunc<int>(x); }
inline int __float2int_rd(float x) { return stag_emu::math::saturating_round<int>(std::floor(x)); }
inline int __float2int_ru(float x) { return stag_emu::math::saturating_round<int>(std::ceil(x)); }
inline unsigned int __float2uint_rn(float x) {
    return stag_emu::math::saturating_round<unsigned int>(x);
}
inline unsigned int __float2uint_rz(float x) {
    return stag_emu::math::saturating_trunc<unsigned int>(x);
}
inline long long __float2ll_rn(float x) { return stag_emu::math::saturating_round<long long>(x); }
inline float __int2float_rn(int x) { return static_cast<float>(x); }
inline float __uint2float_rn(unsigned int x) { return static_cast<float>(x); }

// ---- bit casts ----
constexpr unsigned int __float_as_uint(float x) { return std::bit_cast<unsigned int>(x); }
constexpr float __uint_as_float(unsigned int x) { return std::bit_cast<float>(x); }
constexpr int __float_as_int(float x) { return std::bit_cast<int>(x); }
constexpr float __int_as_float(int x) { return std::bit_cast<float>(x); }
constexpr long long __double_as_longlong(double x) { return std::bit_cast<long long>(x); }
constexpr double __longlong_as_double(long long x) { return std::bit_cast<double>(x); }

// ---- integer intrinsics ----
constexpr int __popc(unsigned int x) { return std::popcount(x); }
constexpr int __popcll(unsigned long long x) { return std::popcount(x); }
constexpr int __clz(int x) { return std::countl_zero(static_cast<unsigned int>(x)); }
constexpr int __clzll(long long x) { return std::countl_zero(static_cast<unsigned long long>(x)); }
// 1-based position of the least significant set bit; 0 for 0.
constexpr int __ffs(int x) {
    return x == 0 ? 0 : std::countr_zero(static_cast<unsigned int>(x)) + 1;
}
constexpr int __ffsll(long long x) {
    return x == 0 ? 0 : std::countr_zero(static_cast<unsigned long long>(x)) + 1;
}
constexpr unsigned int __brev(unsigned int x) {
    unsigned int r = 0;
    for (int i = 0; i < 32; ++i) {
        r |= ((x >> i) & 1u) << (31 - i);
    }
    return r;
}
// Byte i of the result is byte (s >> 4i) & 7 of the 8-byte value {y:x} (x = bytes 0..3).
constexpr unsigned int __byte_perm(unsigned int x, unsigned int y, unsigned int s) {
    const unsigned long long v = (static_cast<unsigned long long>(y) << 32) | x;
    unsigned int r = 0;
    for (int i = 0; i < 4; ++i) {
        const unsigned int sel = (s >> (4 * i)) & 7u;
        r |= static_cast<unsigned int>((v >> (8 * sel)) & 0xFFu) << (8 * i);
    }
    return r;
}
constexpr unsigned int __umulhi(unsigned int a, unsigned int b) {
    return static_cast<unsigned int>((static_cast<unsigned long long>(a) * b) >> 32);
}
constexpr int __mulhi(int a, int b) {
    return static_cast<int>((static_cast<long long>(a) * b) >> 32);
}
namespace stag_emu::math {
__extension__ typedef unsigned __int128 u128;  // __extension__: no -Wpedantic warning
}
constexpr unsigned long long __umul64hi(unsigned long long a, unsigned long long b) {
    return static_cast<unsigned long long>((static_cast<stag_emu::math::u128>(a) * b) >> 64);
}

// ---- min / max ----
// CUDA offers overloads for every pair of arithmetic types with the usual arithmetic
// conversions (min(int, unsigned) compares as unsigned); one constrained template gives the
// same results without overload ambiguities. Floating-point min/max follow fminf/fmaxf
// (a NaN operand is ignored).
template <class A, class B>
    requires(std::is_arithmetic_v<A> && std::is_arithmetic_v<B>)
constexpr std::common_type_t<A, B> min(A a, B b) {
    using C = std::common_type_t<A, B>;
    if constexpr (std::is_floating_point_v<C>) {
        return std::fmin(static_cast<C>(a), static_cast<C>(b));
    } else {
        return static_cast<C>(a) < static_cast<C>(b) ? static_cast<C>(a) : static_cast<C>(b);
    }
}
template <class A, class B>
    requires(std::is_arithmetic_v<A> && std::is_arithmetic_v<B>)
constexpr std::common_type_t<A, B> max(A a, B b) {
    using C = std::common_type_t<A, B>;
    if constexpr (std::is_floating_point_v<C>) {
        return std::fmax(static_cast<C>(a), static_cast<C>(b));
    } else {
        return static_cast<C>(a) > static_cast<C>(b) ? static_cast<C>(a) : static_cast<C>(b);
    }
}
constexpr unsigned int umin(unsigned int a, unsigned int b) { return a < b ? a : b; }
constexpr unsigned int umax(unsigned int a, unsigned int b) { return a > b ? a : b; }

// ---- cache-hinted loads and stores: plain memory accesses on the host ----
template <class T>
inline T __ldg(const T *p) { return *p; }
template <class T>
inline T __ldca(const T *p) { return *p; }
template <class T>
inline T __ldcg(const T *p) { return *p; }
template <class T>
inline T __ldcs(const T *p) { return *p; }
template <class T>
inline T __ldlu(const T *p) { return *p; }
template <class T>
inline T __ldcv(const T *p) { return *p; }
template <class T>
inline void __stwb(T *p, T v) { *p = v; }
template <class T>
inline void __stcg(T *p, T v) { *p = v; }
template <class T>
inline void __stcs(T *p, T v) { *p = v; }
template <class T>
inline void __stwt(T *p, T v) { *p = v; }
