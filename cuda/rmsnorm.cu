// RMSNorm and the fused residual add + RMSNorm, one block per row.
//
// Roofline design: a row is read once, kept in registers (up to ITEMS 16-byte vectors per
// thread), reduced in f32, scaled and written once. Rows wider than the registers hold
// (blockDim × ITEMS vectors) are streamed twice instead. 16-byte loads need every row start
// aligned; when any pointer, stride or the width breaks that, the same kernel takes its scalar
// path (decided per launch, uniformly, so no thread diverges).
#include "stag_vec.cuh"

namespace {

constexpr int ITEMS = 4;
constexpr int MAX_THREADS = 1024;

template <typename T>
__device__ __forceinline__ bool rows_vector_aligned(const RmsNormParams &p) {
    constexpr int N = stag::Vec<T>::N;
    bool ok = p.dim % N == 0 && p.x_row_stride % N == 0 && p.out_row_stride % N == 0 &&
              stag::aligned16(p.x) && stag::aligned16(p.out);
    if (p.residual != nullptr) {
        ok = ok && p.residual_row_stride % N == 0 && p.sum_row_stride % N == 0 &&
             stag::aligned16(p.residual) && stag::aligned16(p.sum_out);
    }
    return ok;
}

// Loads element group `k` of this thread (a vector of N, or a scalar when !vec) as floats,
// adding the residual and storing the rounded sum when there is one. Returns how many of the
// `width` slots hold data (0 when the group lies past the row's end).
template <typename T>
__device__ __forceinline__ int load_group(const RmsNormParams &p, uint32_t row, bool vec,
                                          uint32_t k, float *v) {
    constexpr int N = stag::Vec<T>::N;
    const T *x = static_cast<const T *>(p.x) + size_t(row) * p.x_row_stride;
    const T *r = static_cast<const T *>(p.residual) + size_t(row) * p.residual_row_stride;
    T *s = static_cast<T *>(p.sum_out) + size_t(row) * p.sum_row_stride;
    if (vec) {
        const uint32_t col = (k * blockDim.x + threadIdx.x) * N;
        if (col >= p.dim) return 0;
        stag::Vec<T>::load(x + col, v);
        if (p.residual != nullptr) {
            float rv[N];
            stag::Vec<T>::load(r + col, rv);
            // The norm reads the rounded sum, exactly what a separate rmsnorm of sum_out reads.
#pragma unroll
            for (int i = 0; i < N; ++i) v[i] = stag::to_float(stag::from_float<T>(v[i] + rv[i]));
            stag::Vec<T>::store(s + col, v);
        }
        return N;
    }
    const uint32_t col = k * blockDim.x + threadIdx.x;
    if (col >= p.dim) return 0;
    v[0] = stag::to_float(x[col]);
    if (p.residual != nullptr) {
        v[0] = stag::to_float(stag::from_float<T>(v[0] + stag::to_float(r[col])));
        s[col] = stag::from_float<T>(v[0]);
    }
    return 1;
}

template <typename T>
__device__ __forceinline__ void store_group(const RmsNormParams &p, uint32_t row, bool vec,
                                            uint32_t k, const float *v, float inv_rms) {
    constexpr int N = stag::Vec<T>::N;
    T *out = static_cast<T *>(p.out) + size_t(row) * p.out_row_stride;
    if (vec) {
        const uint32_t col = (k * blockDim.x + threadIdx.x) * N;
        if (col >= p.dim) return;
        float w[N], o[N];
        stag::Vec<float>::load(p.weight + col, w);
        if constexpr (N == 8) stag::Vec<float>::load(p.weight + col + 4, w + 4);
#pragma unroll
        for (int i = 0; i < N; ++i) o[i] = v[i] * inv_rms * w[i];
        stag::Vec<T>::store(out + col, o);
        return;
    }
    const uint32_t col = k * blockDim.x + threadIdx.x;
    if (col < p.dim) out[col] = stag::from_float<T>(v[0] * inv_rms * p.weight[col]);
}

template <typename T>
__device__ void rmsnorm_row(const RmsNormParams &p) {
    constexpr int N = stag::Vec<T>::N;
    __shared__ float scratch[32];
    const uint32_t row = blockIdx.x;
    // The weight is f32: its 16-byte loads need 4-element alignment of its start as well.
    const bool vec = rows_vector_aligned<T>(p) && stag::aligned16(p.weight);
    const uint32_t width = vec ? N : 1;
    const uint32_t groups = (p.dim + blockDim.x * width - 1) / (blockDim.x * width);

    if (groups <= ITEMS * (vec ? 1 : N)) {
        // Fast path: the row lives in registers between the reduction and the scaling.
        constexpr int SLOTS = ITEMS * N;
        float v[SLOTS];
        float sq = 0.0f;
#pragma unroll
        for (int g = 0; g < SLOTS; ++g) v[g] = 0.0f;
        if (vec) {
#pragma unroll
            for (int k = 0; k < ITEMS; ++k) {
                const int n = load_group<T>(p, row, true, k, v + k * N);
                for (int i = 0; i < n; ++i) sq += v[k * N + i] * v[k * N + i];
            }
        } else {
#pragma unroll
            for (int k = 0; k < SLOTS; ++k) {
                if (load_group<T>(p, row, false, k, v + k)) sq += v[k] * v[k];
            }
        }
        const float total = stag::block_sum(sq, scratch);
        const float inv_rms = rsqrtf(total / float(p.dim) + p.eps);
        if (vec) {
#pragma unroll
            for (int k = 0; k < ITEMS; ++k) store_group<T>(p, row, true, k, v + k * N, inv_rms);
        } else {
#pragma unroll
            for (int k = 0; k < SLOTS; ++k) store_group<T>(p, row, false, k, v + k, inv_rms);
        }
        return;
    }

    // Wide rows: one pass for the sum of squares (writing the residual sum), one to scale.
    float sq = 0.0f;
    float v[N];
    for (uint32_t k = 0; k < groups; ++k) {
        const int n = load_group<T>(p, row, vec, k, v);
        for (int i = 0; i < n; ++i) sq += v[i] * v[i];
    }
    const float total = stag::block_sum(sq, scratch);
    const float inv_rms = rsqrtf(total / float(p.dim) + p.eps);
    // The second pass re-reads the (rounded) sum from sum_out when fused, else x.
    RmsNormParams q = p;
    if (p.residual != nullptr) {
        q.x = p.sum_out;
        q.x_row_stride = p.sum_row_stride;
        q.residual = nullptr;
    }
    // Every thread wrote its sum_out elements before block_sum's barriers and reads back only
    // its own elements, so no further barrier is needed.
    for (uint32_t k = 0; k < groups; ++k) {
        if (load_group<T>(q, row, vec, k, v)) store_group<T>(q, row, vec, k, v, inv_rms);
    }
}

}  // namespace

STAG_KERNEL_BOUNDED(rmsnorm_f32, RmsNormParams, MAX_THREADS) { rmsnorm_row<float>(p); }
STAG_KERNEL_BOUNDED(rmsnorm_bf16, RmsNormParams, MAX_THREADS) { rmsnorm_row<__nv_bfloat16>(p); }
