// RMSNorm and the fused residual add + RMSNorm, one block per row.
//
// Latency design (a norm moves a few KB; its cost is the number of dependent memory round
// trips, not bandwidth): every load of the row — x, the residual and the f32 gain — is issued
// before anything is stored or reduced, so a call costs one memory round trip, one block
// reduction and one round of stores. The pointers are `__restrict__` (the wrapper borrows the
// outputs mutably, so they cannot alias the inputs), which lets the compiler keep loads ahead of
// stores. The row stays in registers (up to ITEMS 16-byte vectors per thread); rows wider than
// the registers hold are streamed twice instead. 16-byte loads need every row start aligned;
// when any pointer, stride or the width breaks that, the same kernel takes its scalar path
// (decided per launch, uniformly, so no thread diverges). The arithmetic is stag_norm.cuh's.
#include "stag_norm.cuh"

namespace {

constexpr int ITEMS = 2;
// 512 threads × 2 vectors hold a row of 8192 bf16 (4096 f32) in registers; the bound leaves
// 128 registers a thread for the row, its residual and its gain.
constexpr int MAX_THREADS = 512;

template <typename T>
struct RowPtrs {
    const T *__restrict__ x;
    const T *__restrict__ r;
    T *__restrict__ s;
    T *__restrict__ out;
    const float *__restrict__ w;
};

template <typename T>
__device__ __forceinline__ RowPtrs<T> row_ptrs(const RmsNormParams &p, uint32_t row) {
    return RowPtrs<T>{
        static_cast<const T *>(p.x) + size_t(row) * p.x_row_stride,
        p.residual == nullptr
            ? nullptr
            : static_cast<const T *>(p.residual) + size_t(row) * p.residual_row_stride,
        p.residual == nullptr ? nullptr
                              : static_cast<T *>(p.sum_out) + size_t(row) * p.sum_row_stride,
        static_cast<T *>(p.out) + size_t(row) * p.out_row_stride,
        p.weight,
    };
}

template <typename T>
__device__ __forceinline__ bool rows_vector_aligned(const RmsNormParams &p) {
    constexpr int N = stag::Vec<T>::N;
    bool ok = p.dim % N == 0 && p.x_row_stride % N == 0 && p.out_row_stride % N == 0 &&
              stag::aligned16(p.x) && stag::aligned16(p.out) && stag::aligned16(p.weight);
    if (p.residual != nullptr) {
        ok = ok && p.residual_row_stride % N == 0 && p.sum_row_stride % N == 0 &&
             stag::aligned16(p.residual) && stag::aligned16(p.sum_out);
    }
    return ok;
}

// Column of the first element of this thread's group `k` (W elements a group).
template <int W>
__device__ __forceinline__ uint32_t group_col(uint32_t k) {
    return (k * blockDim.x + threadIdx.x) * W;
}

// Loads group `k` (W = N elements with 16-byte loads, or W = 1) of x, the residual and the
// gain; nothing is stored. Returns false when the group lies past the row's end.
template <typename T, int W>
__device__ __forceinline__ bool load_group(const RowPtrs<T> &q, uint32_t dim, uint32_t k,
                                           float *x, float *r, float *w) {
    const uint32_t col = group_col<W>(k);
    if (col >= dim) return false;
    if constexpr (W == 1) {
        x[0] = stag::to_float(q.x[col]);
        if (q.r != nullptr) r[0] = stag::to_float(q.r[col]);
        w[0] = q.w[col];
    } else {
        stag::Vec<T>::load(q.x + col, x);
        if (q.r != nullptr) stag::Vec<T>::load(q.r + col, r);
        stag::Vec<float>::load(q.w + col, w);
        if constexpr (W == 8) stag::Vec<float>::load(q.w + col + 4, w + 4);
    }
    return true;
}

// Turns a loaded group into the values the norm reads: with a residual, the rounded sum
// (exactly what a separate rmsnorm of sum_out would read), which is also stored. Returns the
// group's share of the sum of squares.
template <typename T, int W>
__device__ __forceinline__ double fold_group(const RowPtrs<T> &q, uint32_t k, float *x,
                                             const float *r) {
    if (q.r != nullptr) {
#pragma unroll
        for (int i = 0; i < W; ++i) x[i] = stag::to_float(stag::from_float<T>(x[i] + r[i]));
        const uint32_t col = group_col<W>(k);
        if constexpr (W == 1) {
            q.s[col] = stag::from_float<T>(x[0]);
        } else {
            stag::Vec<T>::store(q.s + col, x);
        }
    }
    double sq = 0.0;
#pragma unroll
    for (int i = 0; i < W; ++i) sq += stag::square(x[i]);
    return sq;
}

template <typename T, int W>
__device__ __forceinline__ void store_group(const RowPtrs<T> &q, uint32_t k, const float *x,
                                            const float *w, double inv) {
    const uint32_t col = group_col<W>(k);
    float o[W];
#pragma unroll
    for (int i = 0; i < W; ++i) o[i] = stag::norm_scale(x[i], inv, w[i]);
    if constexpr (W == 1) {
        q.out[col] = stag::from_float<T>(o[0]);
    } else {
        stag::Vec<T>::store(q.out + col, o);
    }
}

// The row in registers: G groups of W elements a thread.
template <typename T, int W, int G>
__device__ __forceinline__ void row_in_registers(const RmsNormParams &p, const RowPtrs<T> &q,
                                                 double *scratch) {
    float x[G][W], r[G][W], w[G][W];
    bool live[G];
#pragma unroll
    for (int g = 0; g < G; ++g) live[g] = load_group<T, W>(q, p.dim, g, x[g], r[g], w[g]);
    double sq = 0.0;
#pragma unroll
    for (int g = 0; g < G; ++g) {
        if (live[g]) sq += fold_group<T, W>(q, g, x[g], r[g]);
    }
    const double inv = stag::inv_rms(stag::block_sum(sq, scratch), p.dim, p.eps);
#pragma unroll
    for (int g = 0; g < G; ++g) {
        if (live[g]) store_group<T, W>(q, g, x[g], w[g], inv);
    }
}

// Wide rows: one pass for the sum of squares (writing the residual sum), one to scale.
template <typename T, int W>
__device__ __forceinline__ void row_streamed(const RmsNormParams &p, RowPtrs<T> q,
                                             uint32_t groups, double *scratch) {
    float x[W], r[W], w[W];
    double sq = 0.0;
    for (uint32_t k = 0; k < groups; ++k) {
        if (load_group<T, W>(q, p.dim, k, x, r, w)) sq += fold_group<T, W>(q, k, x, r);
    }
    const double inv = stag::inv_rms(stag::block_sum(sq, scratch), p.dim, p.eps);
    // The second pass re-reads the (rounded) sum from sum_out when fused, else x. Every thread
    // wrote its sum_out elements before block_sum's barriers and reads back only its own
    // elements, so no further barrier is needed.
    if (q.r != nullptr) {
        q.x = q.s;
        q.r = nullptr;
    }
    for (uint32_t k = 0; k < groups; ++k) {
        if (load_group<T, W>(q, p.dim, k, x, r, w)) store_group<T, W>(q, k, x, w, inv);
    }
}

template <typename T>
__device__ void rmsnorm_row(const RmsNormParams &p) {
    constexpr int N = stag::Vec<T>::N;
    __shared__ double scratch[32];
    const RowPtrs<T> q = row_ptrs<T>(p, blockIdx.x);
    if (rows_vector_aligned<T>(p)) {
        const uint32_t groups = (p.dim + blockDim.x * N - 1) / (blockDim.x * N);
        if (groups <= ITEMS) {
            row_in_registers<T, N, ITEMS>(p, q, scratch);
        } else {
            row_streamed<T, N>(p, q, groups, scratch);
        }
        return;
    }
    const uint32_t groups = (p.dim + blockDim.x - 1) / blockDim.x;
    if (groups <= ITEMS * N) {
        row_in_registers<T, 1, ITEMS * N>(p, q, scratch);
    } else {
        row_streamed<T, 1>(p, q, groups, scratch);
    }
}

}  // namespace

STAG_KERNEL_BOUNDED(rmsnorm_f32, RmsNormParams, MAX_THREADS) { rmsnorm_row<float>(p); }
STAG_KERNEL_BOUNDED(rmsnorm_bf16, RmsNormParams, MAX_THREADS) { rmsnorm_row<__nv_bfloat16>(p); }
