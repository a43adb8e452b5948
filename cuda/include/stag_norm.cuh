// The RMSNorm arithmetic, one definition for every kernel that normalises a row (the norm
// kernels and any kernel that fuses a norm into its prologue).
//
// The sum of squares is accumulated in f64: the square of any finite f32 (< 2^256) and a sum of
// up to 2^24 of them fit in f64's range, so no finite row overflows to inf (which made f32
// accumulation return zeros for activations ≥ 1e19) or underflows to 0 for tiny rows. That is
// also the reference's arithmetic (`stagformer_ref::ops::rmsnorm`): f64 sum, f64 inverse RMS,
// `(x · inv) as f32 · weight`.
#pragma once

#include "stag_vec.cuh"

namespace stag {

/// 1 / sqrt(sum_sq / dim + eps) in f64.
__device__ __forceinline__ double inv_rms(double sum_sq, uint32_t dim, float eps) {
    return 1.0 / sqrt(sum_sq / double(dim) + double(eps));
}

/// One normalised element before rounding to the activation type: (x · inv) in f64, rounded
/// to f32, times the f32 gain.
__device__ __forceinline__ float norm_scale(float x, double inv, float weight) {
    return float(double(x) * inv) * weight;
}

/// x² in f64, the term a row's sum of squares accumulates.
__device__ __forceinline__ double square(float x) { return double(x) * double(x); }

}  // namespace stag
