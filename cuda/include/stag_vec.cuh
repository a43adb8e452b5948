// Element access shared by the kernels: f32 or bf16 storage, f32 math. A "vector" is 16 bytes
// (4 f32 or 8 bf16), the widest load a thread can issue in one instruction.
#pragma once

#include "stag_kernel.cuh"

namespace stag {

template <typename T> struct Vec;

template <> struct Vec<float> {
    static constexpr int N = 4;
    __device__ __forceinline__ static void load(const float *p, float *out) {
        const float4 v = *reinterpret_cast<const float4 *>(p);
        out[0] = v.x;
        out[1] = v.y;
        out[2] = v.z;
        out[3] = v.w;
    }
    __device__ __forceinline__ static void store(float *p, const float *in) {
        *reinterpret_cast<float4 *>(p) = make_float4(in[0], in[1], in[2], in[3]);
    }
};

template <> struct Vec<__nv_bfloat16> {
    static constexpr int N = 8;
    __device__ __forceinline__ static void load(const __nv_bfloat16 *p, float *out) {
        const uint4 raw = *reinterpret_cast<const uint4 *>(p);
        const __nv_bfloat162 *pairs = reinterpret_cast<const __nv_bfloat162 *>(&raw);
#pragma unroll
        for (int i = 0; i < 4; ++i) {
            const float2 f = __bfloat1622float2(pairs[i]);
            out[2 * i] = f.x;
            out[2 * i + 1] = f.y;
        }
    }
    __device__ __forceinline__ static void store(__nv_bfloat16 *p, const float *in) {
        uint4 raw;
        __nv_bfloat162 *pairs = reinterpret_cast<__nv_bfloat162 *>(&raw);
#pragma unroll
        for (int i = 0; i < 4; ++i) pairs[i] = __floats2bfloat162_rn(in[2 * i], in[2 * i + 1]);
        *reinterpret_cast<uint4 *>(p) = raw;
    }
};

__device__ __forceinline__ float to_float(float v) { return v; }
__device__ __forceinline__ float to_float(__nv_bfloat16 v) { return __bfloat162float(v); }

template <typename T> __device__ __forceinline__ T from_float(float v);
template <> __device__ __forceinline__ float from_float<float>(float v) { return v; }
template <> __device__ __forceinline__ __nv_bfloat16 from_float<__nv_bfloat16>(float v) {
    return __float2bfloat16_rn(v);
}

/// silu(g) * u in f32, the SwiGLU of one element (cuda/swiglu.cu and the gemv epilogue).
/// expf (not __expf) keeps the result within a few ulp of the f64 reference; for g below about
/// -88 expf(-g) is +inf and the quotient the correct -0.
__device__ __forceinline__ float silu_mul(float g, float u) { return g / (1.0f + expf(-g)) * u; }

/// RoPE of one pair (a, b) = (x[m], x[m + hd/2]) by the angle whose cos and sin are c and s,
/// Hugging Face `rotate_half`. Every product and sum is rounded (_rn), so no backend contracts
/// them into FMAs and f32 results equal the reference's bit for bit.
__device__ __forceinline__ void rope_pair(float a, float b, float c, float s, float *ra,
                                          float *rb) {
    *ra = __fsub_rn(__fmul_rn(a, c), __fmul_rn(b, s));
    *rb = __fadd_rn(__fmul_rn(b, c), __fmul_rn(a, s));
}

/// True when `p` may be read with 16-byte loads.
__device__ __forceinline__ bool aligned16(const void *p) {
    return (reinterpret_cast<uintptr_t>(p) & 15u) == 0;
}

/// Sum of `v` over the warp, returned to every lane.
__device__ __forceinline__ float warp_sum(float v) {
#pragma unroll
    for (int offset = 16; offset > 0; offset >>= 1) v += __shfl_xor_sync(0xffffffffu, v, offset);
    return v;
}

/// Sum of `v` over the block (blockDim.x a multiple of 32, at most 1024), returned to every
/// thread. `scratch` holds 32 floats of shared memory; the call contains two barriers.
__device__ __forceinline__ float block_sum(float v, float *scratch) {
    const int lane = threadIdx.x & 31;
    const int warp = threadIdx.x >> 5;
    const int warps = blockDim.x >> 5;
    v = warp_sum(v);
    if (lane == 0) scratch[warp] = v;
    __syncthreads();
    float total = lane < warps ? scratch[lane] : 0.0f;
    total = warp_sum(total);
    // Every warp reduced the same 32 slots, so every thread holds the total; the barrier keeps
    // the slots from being overwritten by a following call before all warps have read them.
    __syncthreads();
    return total;
}

}  // namespace stag
