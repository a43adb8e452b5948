// SwiGLU on the fused gate|up projection: out[r, j] = silu(gate_up[r, j]) * gate_up[r, F + j].
//
// Elementwise and memory bound: 2F elements read and F written per row. Each thread handles a
// 16-byte vector of the gate half and the matching vector of the up half when F, the row
// strides and both pointers keep every vector aligned; otherwise one element (decided per
// launch, uniformly). Rows lie along grid.x; grid.y and a grid-stride loop cover the columns.
#include "stag_vec.cuh"

namespace {

constexpr int THREADS = 256;

template <typename T>
__device__ void swiglu_row(const SwigluParams &p) {
    constexpr int N = stag::Vec<T>::N;
    const uint32_t row = blockIdx.x;
    if (row >= p.rows) return;
    const T *gate = static_cast<const T *>(p.gate_up) + size_t(row) * p.in_row_stride;
    const T *up = gate + p.ffn;
    T *out = static_cast<T *>(p.out) + size_t(row) * p.out_row_stride;

    const bool vec = p.ffn % N == 0 && p.in_row_stride % N == 0 && p.out_row_stride % N == 0 &&
                     stag::aligned16(p.gate_up) && stag::aligned16(p.out);
    const uint32_t stride = gridDim.y * blockDim.x;
    if (vec) {
        const uint32_t vectors = p.ffn / N;
        for (uint32_t v = blockIdx.y * blockDim.x + threadIdx.x; v < vectors; v += stride) {
            float g[N], u[N], o[N];
            stag::Vec<T>::load(gate + size_t(v) * N, g);
            stag::Vec<T>::load(up + size_t(v) * N, u);
#pragma unroll
            for (int i = 0; i < N; ++i) o[i] = stag::silu_mul(g[i], u[i]);
            stag::Vec<T>::store(out + size_t(v) * N, o);
        }
        return;
    }
    for (uint32_t c = blockIdx.y * blockDim.x + threadIdx.x; c < p.ffn; c += stride) {
        out[c] =
            stag::from_float<T>(stag::silu_mul(stag::to_float(gate[c]), stag::to_float(up[c])));
    }
}

}  // namespace

STAG_KERNEL_BOUNDED(swiglu_f32, SwigluParams, THREADS) { swiglu_row<float>(p); }
STAG_KERNEL_BOUNDED(swiglu_bf16, SwigluParams, THREADS) { swiglu_row<__nv_bfloat16>(p); }
