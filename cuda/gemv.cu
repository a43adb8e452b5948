// Decode GEMV / small-M GEMM with fused prologues and epilogues (contract: GemvParams in
// stag_params.h; Rust API and variants: src/ops/gemv.rs).
//
// acc[m][n] = sum_k W[n][k] * h[m][k] for m < rows <= 16. Grouped (gridDim.y = groups > 1):
// group g owns activation rows g * rows .. (g + 1) * rows and multiplies them with its own
// weight after the norm with its own gain -- the same layer of several StagFormer sections in
// one launch; every block works on one group only. The weight is read once, which is the
// whole cost at decode (M x K activations are tiny and stay in L2), so the design is about HBM
// bytes in flight:
// - A block is 8 warps; each warp owns TWO W rows (a "pair") over the whole K and accumulates
//   both against every activation row in registers (2 x 16 f32 accumulators per lane).
// - K is walked in chunks of 32 lanes x UNROLL 16-byte vectors per row. A lane issues the
//   2 x UNROLL = 8 16-byte W loads of a chunk before the block stages the chunk's activations,
//   so 256 threads x 128 B = 32 KB of W per block are in flight while h is staged.
// - h (after the prologue, rounded to T) is staged in shared memory [rows][chunk] and read back
//   as 16-byte vectors (conflict-free).
// - Which two W rows form a warp's pair is chosen by the epilogue, so that every epilogue's
//   math is local to one lane: contiguous rows n and n + 8 (store, residual add, cross KV),
//   gate row j and up row F + j (SwiGLU), the RoPE partners d and d + hd/2 of one q or k head,
//   or two v elements (RoPE + KV append).
// - After the K loop each accumulator is reduced over the warp (fixed shuffle tree: no atomics,
//   deterministic) and lane m applies the epilogue of activation row m.
// No split-K: the smallest N of the decoder's shapes (2048) gives 128 blocks of 16 rows, each
// keeping 32 KB in flight, 4 MB device-wide, above the ~2.7 MB Little's law asks for
// (docs/perf-notes.md).
#include "stag_cache.cuh"
#include "stag_norm.cuh"
#include "stag_vec.cuh"

namespace {

constexpr int THREADS = 256;
constexpr int WARPS = THREADS / 32;
constexpr int MAX_ROWS = 16;
constexpr int UNROLL = 4;

/// Elements of K one chunk covers: every lane loads UNROLL vectors of each of its two rows.
template <typename T> constexpr uint32_t CHUNK = 32u * UNROLL * stag::Vec<T>::N;

// The inverse RMS of every activation row, with stag_norm.cuh's arithmetic (f64 sum of
// squares: the `rmsnorm` kernel's formula for any finite input). One warp a row.
template <typename T>
__device__ void norm_stats(const GemvParams &p, double *inv_out) {
    const uint32_t lane = threadIdx.x & 31;
    for (uint32_t m = threadIdx.x >> 5; m < p.rows; m += WARPS) {
        const T *x = static_cast<const T *>(p.x) + size_t(m) * p.x_row_stride;
        double sq = 0.0;
        for (uint32_t k = lane; k < p.k; k += 32) sq += stag::square(stag::to_float(x[k]));
        sq = stag::warp_sum(sq);
        if (lane == 0) inv_out[m] = stag::inv_rms(sq, p.k, p.eps);
    }
}

// Stages h[m][k0 .. k0 + chunk) for every row into `hs` (rounded to T), zeros past K.
template <typename T>
__device__ void stage_chunk(const GemvParams &p, T *hs, uint32_t k0, bool x_vec,
                            const double *inv) {
    constexpr int N = stag::Vec<T>::N;
    constexpr uint32_t KC = CHUNK<T>;
    const bool norm = p.norm_weight != nullptr;
    if (x_vec) {
        const uint32_t per_row = KC / N;
        for (uint32_t i = threadIdx.x; i < p.rows * per_row; i += THREADS) {
            const uint32_t m = i / per_row;
            const uint32_t c = (i - m * per_row) * N;
            const uint32_t col = k0 + c;
            float v[N];
            if (col < p.k) {
                stag::Vec<T>::load(static_cast<const T *>(p.x) + size_t(m) * p.x_row_stride + col,
                                   v);
                if (norm) {
#pragma unroll
                    for (int e = 0; e < N; ++e) {
                        v[e] = stag::norm_scale(v[e], inv[m], p.norm_weight[col + e]);
                    }
                }
            } else {
#pragma unroll
                for (int e = 0; e < N; ++e) v[e] = 0.0f;
            }
            stag::Vec<T>::store(hs + m * KC + c, v);
        }
        return;
    }
    for (uint32_t i = threadIdx.x; i < p.rows * KC; i += THREADS) {
        const uint32_t m = i / KC;
        const uint32_t c = i - m * KC;
        const uint32_t col = k0 + c;
        float v = 0.0f;
        if (col < p.k) {
            v = stag::to_float(static_cast<const T *>(p.x)[size_t(m) * p.x_row_stride + col]);
            if (norm) v = stag::norm_scale(v, inv[m], p.norm_weight[col]);
        }
        hs[m * KC + c] = stag::from_float<T>(v);
    }
}

// The two W rows of one warp and what they mean to the epilogue.
struct Pair {
    uint32_t a, b;    // W rows (= y columns of the q|k|v or plain output)
    bool has_a, has_b;
    uint32_t unit;    // ROPE_KV: q head (< heads), k head, or heads + kv_heads for v
    uint32_t d;       // ROPE_KV: pair index inside the head (rotation) or v element of a
};

__device__ __forceinline__ Pair pair_of(const GemvParams &p, uint32_t warp) {
    Pair r{0, 0, false, false, 0, 0};
    const uint32_t index = blockIdx.x * WARPS + warp;
    if (p.epilogue == STAG_GEMV_SWIGLU) {
        const uint32_t f = p.n / 2;
        r.a = index;
        r.b = f + index;
        r.has_a = r.has_b = index < f;
    } else if (p.epilogue == STAG_GEMV_ROPE_KV) {
        const uint32_t half = p.head_dim / 2;
        const uint32_t rope_pairs = (p.heads + p.kv_heads) * half;
        const uint32_t v_half = p.kv_heads * half;
        if (index < rope_pairs) {
            r.unit = index / half;
            r.d = index - r.unit * half;
            r.a = r.unit * p.head_dim + r.d;
            r.b = r.a + half;
            r.has_a = r.has_b = true;
        } else if (index - rope_pairs < v_half) {
            r.unit = p.heads + p.kv_heads;
            r.d = index - rope_pairs;
            r.a = (p.heads + p.kv_heads) * p.head_dim + r.d;
            r.b = r.a + v_half;
            r.has_a = r.has_b = true;
        }
    } else {
        r.a = blockIdx.x * 2 * WARPS + warp;
        r.b = r.a + WARPS;
        r.has_a = r.a < p.n;
        r.has_b = r.b < p.n;
    }
    return r;
}

template <typename T> __device__ __forceinline__ float rounded(float v) {
    return stag::to_float(stag::from_float<T>(v));
}

// Writes one value of the cross projection (W row `col`) of activation row m into its layer's
// cache; `slot` from stag::cross_cache_slot.
template <typename T>
__device__ __forceinline__ void cross_store(const GemvParams &p, size_t slot, uint32_t col,
                                            float g) {
    const uint32_t kv_dim = p.kv_heads * p.head_dim;
    const uint32_t layer = col / (2 * kv_dim);
    uint32_t c = col - layer * 2 * kv_dim;
    const bool is_v = c >= kv_dim;
    if (is_v) c -= kv_dim;
    const uint32_t head = c / p.head_dim;
    T *cache = static_cast<T *>(is_v ? p.v_cache : p.k_cache);
    cache[stag::cache_element(slot, layer, p.cache_layer_stride, head, p.cache_head_stride,
                              c - head * p.head_dim)] = stag::from_float<T>(g);
}

// RoPE + self KV append of activation row m for one pair (ga, gb already rounded to T).
template <typename T>
__device__ void rope_kv_epilogue(const GemvParams &p, uint32_t m, const Pair &pr, float ga,
                                 float gb) {
    T *y = static_cast<T *>(p.y) + size_t(m) * p.y_row_stride;
    const int32_t seq = p.seq_slots[m];
    const int32_t pos = p.positions[m];
    size_t slot = 0;
    // As rope_append: a row without a cache slot or a table row is left unroped, unwritten.
    const bool ok = stag::self_cache_slot(seq, pos, p.cache_seqs, p.cache_slots, p.ring,
                                          p.cache_seq_stride, p.head_dim, p.paging, &slot) &&
                    uint32_t(pos) < p.table_positions;
    const uint32_t half = p.head_dim / 2;
    if (pr.unit < p.heads + p.kv_heads) {
        float ra = ga, rb = gb;
        if (ok) {
            const size_t t = size_t(pos) * half + pr.d;
            stag::rope_pair(ga, gb, p.rope_cos[t], p.rope_sin[t], &ra, &rb);
        }
        y[pr.a] = stag::from_float<T>(ra);
        y[pr.b] = stag::from_float<T>(rb);
        if (ok && pr.unit >= p.heads) {
            const uint32_t kh = pr.unit - p.heads;
            T *k = static_cast<T *>(p.k_cache);
            k[stag::cache_element(slot, 0, 0, kh, p.cache_head_stride, pr.d)] =
                stag::from_float<T>(ra);
            k[stag::cache_element(slot, 0, 0, kh, p.cache_head_stride, pr.d + half)] =
                stag::from_float<T>(rb);
        }
        return;
    }
    y[pr.a] = stag::from_float<T>(ga);
    y[pr.b] = stag::from_float<T>(gb);
    if (!ok) return;
    T *v = static_cast<T *>(p.v_cache);
    const uint32_t elems[2] = {pr.d, pr.d + p.kv_heads * half};
    const float vals[2] = {ga, gb};
#pragma unroll
    for (int i = 0; i < 2; ++i) {
        const uint32_t kh = elems[i] / p.head_dim;
        v[stag::cache_element(slot, 0, 0, kh, p.cache_head_stride,
                              elems[i] - kh * p.head_dim)] = stag::from_float<T>(vals[i]);
    }
}

// The epilogue of activation row m for the warp's pair; acc_a / acc_b are the f32 sums.
template <typename T>
__device__ void epilogue(const GemvParams &p, uint32_t m, const Pair &pr, float acc_a,
                         float acc_b) {
    // Every epilogue sees the GEMM output rounded once to T, as `linear` stores it.
    const float ga = rounded<T>(acc_a);
    const float gb = rounded<T>(acc_b);
    T *y = static_cast<T *>(p.y) + size_t(m) * p.y_row_stride;
    switch (p.epilogue) {
    case STAG_GEMV_STORE:
        if (pr.has_a) y[pr.a] = stag::from_float<T>(ga);
        if (pr.has_b) y[pr.b] = stag::from_float<T>(gb);
        break;
    case STAG_GEMV_RESIDUAL_ADD:
        if (pr.has_a) y[pr.a] = stag::from_float<T>(stag::to_float(y[pr.a]) + ga);
        if (pr.has_b) y[pr.b] = stag::from_float<T>(stag::to_float(y[pr.b]) + gb);
        break;
    case STAG_GEMV_SWIGLU:
        if (pr.has_a) y[pr.a] = stag::from_float<T>(stag::silu_mul(ga, gb));
        break;
    case STAG_GEMV_ROPE_KV:
        if (pr.has_a) rope_kv_epilogue<T>(p, m, pr, ga, gb);
        break;
    case STAG_GEMV_CROSS_KV: {
        size_t slot = 0;
        if (!stag::cross_cache_slot(p.seq_slots[m], p.positions[m], p.cache_seqs,
                                    p.cache_slots, p.window, p.cache_seq_stride, p.head_dim,
                                    p.paging, &slot)) {
            break;
        }
        if (pr.has_a) cross_store<T>(p, slot, pr.a, ga);
        if (pr.has_b) cross_store<T>(p, slot, pr.b, gb);
        break;
    }
    default:
        break;
    }
}

// Group G's operands in a grouped launch: its rows of x, its weight and its norm gain (group
// 0: the launch's own). G is a template argument so that each stays an expression of the
// kernel's params, which the compiler rematerializes instead of keeping live in registers.
template <typename T, uint32_t G> __device__ GemvParams group_operands(const GemvParams &all) {
    GemvParams p = all;
    if (G == 0) return p;
    p.x = static_cast<const T *>(all.x) + size_t(G) * all.rows * all.x_row_stride;
    p.w = all.group_w[G - 1];
    p.norm_weight = all.group_norm_weight[G - 1];
    return p;
}

// One group's blocks; the epilogue offsets the outputs and indices by the group's rows itself.
template <typename T, uint32_t G>
__device__ void gemv_group(const GemvParams &launch) {
    const GemvParams p = group_operands<T, G>(launch);
    constexpr int N = stag::Vec<T>::N;
    constexpr uint32_t KC = CHUNK<T>;
    STAG_DYNAMIC_SMEM(T, hs);
    __shared__ double norm_inv[MAX_ROWS];
    const uint32_t lane = threadIdx.x & 31;
    const uint32_t warp = threadIdx.x >> 5;
    if (p.norm_weight != nullptr) norm_stats<T>(p, norm_inv);
    __syncthreads();

    const Pair pr = pair_of(p, warp);
    const T *wa = static_cast<const T *>(p.w) + size_t(pr.a) * p.w_row_stride;
    const T *wb = static_cast<const T *>(p.w) + size_t(pr.b) * p.w_row_stride;
    const bool x_vec = stag::aligned16(p.x) && p.x_row_stride % N == 0;
    float acc_a[MAX_ROWS], acc_b[MAX_ROWS];
#pragma unroll
    for (int m = 0; m < MAX_ROWS; ++m) acc_a[m] = acc_b[m] = 0.0f;

    for (uint32_t k0 = 0; k0 < p.k; k0 += KC) {
        // The chunk's W loads go out first and stay in flight while h is staged.
        uint4 raw_a[UNROLL], raw_b[UNROLL];
#pragma unroll
        for (int j = 0; j < UNROLL; ++j) {
            const uint32_t col = k0 + (j * 32 + lane) * N;
            const uint4 zero = make_uint4(0, 0, 0, 0);
            raw_a[j] = pr.has_a && col < p.k ? *reinterpret_cast<const uint4 *>(wa + col) : zero;
            raw_b[j] = pr.has_b && col < p.k ? *reinterpret_cast<const uint4 *>(wb + col) : zero;
        }
        __syncthreads();  // the previous chunk's h has been read by every warp
        stage_chunk<T>(p, hs, k0, x_vec, norm_inv);
        __syncthreads();
#pragma unroll
        for (int j = 0; j < UNROLL; ++j) {
            float a[N], b[N];
            stag::Vec<T>::load(reinterpret_cast<const T *>(&raw_a[j]), a);
            stag::Vec<T>::load(reinterpret_cast<const T *>(&raw_b[j]), b);
            const uint32_t c = (j * 32 + lane) * N;
#pragma unroll
            for (int m = 0; m < MAX_ROWS; ++m) {
                if (uint32_t(m) < p.rows) {
                    float h[N];
                    stag::Vec<T>::load(hs + m * KC + c, h);
#pragma unroll
                    for (int e = 0; e < N; ++e) {
                        acc_a[m] += a[e] * h[e];
                        acc_b[m] += b[e] * h[e];
                    }
                }
            }
        }
    }

    float mine_a = 0.0f, mine_b = 0.0f;
#pragma unroll
    for (int m = 0; m < MAX_ROWS; ++m) {
        if (uint32_t(m) < p.rows) {
            const float sa = stag::warp_sum(acc_a[m]);
            const float sb = stag::warp_sum(acc_b[m]);
            if (lane == uint32_t(m)) {
                mine_a = sa;
                mine_b = sb;
            }
        }
    }
    // The epilogue indexes y and the per-row indices by the row's place among all groups.
    if (lane < p.rows) epilogue<T>(launch, G * p.rows + lane, pr, mine_a, mine_b);
}

template <typename T> __device__ void gemv(const GemvParams &p) {
    static_assert(STAG_GEMV_MAX_GROUPS == 4, "one case per group");
    switch (blockIdx.y) {
    case 0: gemv_group<T, 0>(p); break;
    case 1: gemv_group<T, 1>(p); break;
    case 2: gemv_group<T, 2>(p); break;
    default: gemv_group<T, 3>(p); break;
    }
}

}  // namespace

STAG_KERNEL_BOUNDED(gemv_f32, GemvParams, THREADS) { gemv<float>(p); }
STAG_KERNEL_BOUNDED(gemv_bf16, GemvParams, THREADS) { gemv<__nv_bfloat16>(p); }
