// y = alpha * x + beta * y, elementwise: the weighted sum of section outputs (output mix).
// A grid-stride loop over 16-byte vectors when both tensors are aligned, else over elements.
#include "stag_vec.cuh"

namespace {

constexpr int THREADS = 256;

template <typename T>
__device__ void axpby(const AxpbyParams &p) {
    constexpr int N = stag::Vec<T>::N;
    const T *x = static_cast<const T *>(p.x);
    T *y = static_cast<T *>(p.y);
    const uint64_t stride = uint64_t(gridDim.x) * blockDim.x;
    const uint64_t first = uint64_t(blockIdx.x) * blockDim.x + threadIdx.x;
    // beta == 0 must not read y: it may hold NaN poison or garbage.
    const bool read_y = p.beta != 0.0f;
    uint64_t done = 0;
    if (stag::aligned16(x) && stag::aligned16(y)) {
        const uint64_t vectors = p.n / N;
        for (uint64_t v = first; v < vectors; v += stride) {
            float a[N], b[N];
            stag::Vec<T>::load(x + v * N, a);
            if (read_y) stag::Vec<T>::load(y + v * N, b);
#pragma unroll
            for (int i = 0; i < N; ++i) a[i] = p.alpha * a[i] + (read_y ? p.beta * b[i] : 0.0f);
            stag::Vec<T>::store(y + v * N, a);
        }
        done = vectors * N;
    }
    for (uint64_t i = done + first; i < p.n; i += stride) {
        const float b = read_y ? p.beta * stag::to_float(y[i]) : 0.0f;
        y[i] = stag::from_float<T>(p.alpha * stag::to_float(x[i]) + b);
    }
}

}  // namespace

STAG_KERNEL_BOUNDED(axpby_f32, AxpbyParams, THREADS) { axpby<float>(p); }
STAG_KERNEL_BOUNDED(axpby_bf16, AxpbyParams, THREADS) { axpby<__nv_bfloat16>(p); }
