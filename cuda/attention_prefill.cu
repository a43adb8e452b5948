// Prefill attention, flash style: causal self-attention and the staggered cross-attention mask
// over a ragged batch (contract: AttentionPrefillParams in stag_params.h).
//
// Design. A block owns BM query "items" of one sequence and one kv head, where an item is a
// (query row, query head of that kv head's group) pair, numbered row-major (item = row * group
// + g). With GQA every query head of the group therefore shares each K/V tile the block stages
// in shared memory, and the group's heads of a row sit next to each other (same mask). The
// block streams the visible key range in tiles of BN keys: S = Q·Kᵀ into registers, masking,
// an online softmax in f32 (running max and sum per item, base-2 exponentials with log2(e)
// folded into the Q scale), and O += P·V into registers. Nothing of size P² exists anywhere and
// no global workspace is used. Key tiles are confined to the union of the block's rows' visible
// ranges, so tiles wholly above the causal diagonal or wholly outside the cross window are
// never loaded.
//
// Thread layout (THREADS = 128 as TY = 16 item groups × TX = 8 lanes): thread (ty, tx) holds
// items ty + 16a (a < 4); it computes the scores of keys tx + 8b (b < 4) and accumulates the
// output dims 4·tx + 32c .. +4. The 8 lanes sharing items form one aligned 8-lane segment of a
// warp, so row maxima and sums reduce with three xor shuffles, and the P tile a thread reads
// back was written by its own warp (a __syncwarp suffices there).
//
// Shared memory (f32): Q [BM][ld], K [BN][ld], V [BN][ld], P [BM][BN + 4], ld = round4(hd) + 4.
// The +4 pitch puts consecutive rows in different 16-byte bank groups, so the float4 reads of
// 8 different rows by one 8-lane phase do not conflict. src/ops/attention_prefill.rs computes
// the same size (`smem_bytes`). This is the plain SIMT path: tensor-core (mma) tiles would be a
// GPU-only fast path behind __CUDA_ARCH__.
#include "stag_mask.cuh"
#include "stag_vec.cuh"

namespace {

constexpr int BM = 64;
constexpr int BN = 32;
constexpr int THREADS = 128;
constexpr int TX = 8;
constexpr int TY = THREADS / TX;
constexpr int IM = BM / TY;
constexpr int IN = BN / TX;
constexpr int PLD = BN + 4;
// Largest head_dim of the generic (runtime head_dim) kernels; output dims are register arrays
// of this extent.
constexpr int MAX_HEAD_DIM = 128;
constexpr float LOG2E = 1.4426950408889634f;

static_assert(TY * TX == THREADS && IM * TY == BM && IN * TX == BN, "tile decomposition");
static_assert(TX == 8 && THREADS % 32 == 0, "row reductions use 8-lane warp segments");
static_assert(MAX_HEAD_DIM % (4 * TX) == 0, "output dims come in 32-wide chunks");

__device__ __forceinline__ float neg_inf() { return __uint_as_float(0xff800000u); }

__device__ __forceinline__ float4 ld4(const float *p) {
    return *reinterpret_cast<const float4 *>(p);
}

// Max and sum over the 8 lanes that share a thread's items.
__device__ __forceinline__ float segment_max(float v) {
    v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, 1));
    v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, 2));
    return fmaxf(v, __shfl_xor_sync(0xffffffffu, v, 4));
}

__device__ __forceinline__ float segment_sum(float v) {
    v += __shfl_xor_sync(0xffffffffu, v, 1);
    v += __shfl_xor_sync(0xffffffffu, v, 2);
    return v + __shfl_xor_sync(0xffffffffu, v, 4);
}

// Four consecutive output elements; `vec` when the destination allows one wide store.
template <typename T>
__device__ __forceinline__ void store4(T *dst, const float *v, bool vec);

template <>
__device__ __forceinline__ void store4<float>(float *dst, const float *v, bool vec) {
    if (vec) {
        *reinterpret_cast<float4 *>(dst) = make_float4(v[0], v[1], v[2], v[3]);
    } else {
#pragma unroll
        for (int i = 0; i < 4; ++i) dst[i] = v[i];
    }
}

template <>
__device__ __forceinline__ void store4<__nv_bfloat16>(__nv_bfloat16 *dst, const float *v,
                                                      bool vec) {
    if (vec) {
        uint2 raw;
        __nv_bfloat162 *pairs = reinterpret_cast<__nv_bfloat162 *>(&raw);
        pairs[0] = __floats2bfloat162_rn(v[0], v[1]);
        pairs[1] = __floats2bfloat162_rn(v[2], v[3]);
        *reinterpret_cast<uint2 *>(dst) = raw;
    } else {
#pragma unroll
        for (int i = 0; i < 4; ++i) dst[i] = __float2bfloat16_rn(v[i]);
    }
}

// Stages `rows` rows of `hd` elements into shared memory as f32 times `mul`, zero-filling the
// pad columns up to `hd_pad` and every row for which `row_ptr` returns null (past the end of
// the tile), so that the dot products and P·V never meet uninitialised values.
template <typename T, typename RowPtr>
__device__ __forceinline__ void stage_rows(float *dst, int ld, int rows, int hd, int hd_pad,
                                           bool vec, float mul, RowPtr row_ptr) {
    constexpr int N = stag::Vec<T>::N;
    if (vec) {
        // Here hd is a multiple of N (so hd_pad == hd).
        const int chunks = hd / N;
        for (int idx = threadIdx.x; idx < rows * chunks; idx += THREADS) {
            const int m = idx / chunks;
            const int c = idx - m * chunks;
            const T *src = row_ptr(m);
            float v[N];
            if (src != nullptr) {
                stag::Vec<T>::load(src + c * N, v);
#pragma unroll
                for (int i = 0; i < N; ++i) v[i] *= mul;
            } else {
#pragma unroll
                for (int i = 0; i < N; ++i) v[i] = 0.0f;
            }
#pragma unroll
            for (int i = 0; i < N; i += 4) stag::Vec<float>::store(dst + m * ld + c * N + i, v + i);
        }
        return;
    }
    for (int idx = threadIdx.x; idx < rows * hd_pad; idx += THREADS) {
        const int m = idx / hd_pad;
        const int d = idx - m * hd_pad;
        const T *src = row_ptr(m);
        dst[m * ld + d] = (src != nullptr && d < hd) ? stag::to_float(src[d]) * mul : 0.0f;
    }
}

__device__ __forceinline__ int64_t clamp64(int64_t v, int64_t lo, int64_t hi) {
    return v < lo ? lo : (v > hi ? hi : v);
}

// D: the head_dim this instance is compiled for, or 0 for any head_dim up to MAX_HEAD_DIM.
template <typename T, int D>
__device__ void prefill_block(const AttentionPrefillParams &p) {
    constexpr int DMAX = D != 0 ? D : MAX_HEAD_DIM;
    constexpr int DC = DMAX / (4 * TX);  // 32-wide output dim chunks
    static_assert(D % (4 * TX) == 0 && DMAX <= MAX_HEAD_DIM, "head_dim instances");

    // Everything up to the first barrier depends on params and blockIdx only, so an early return
    // is taken by the whole block.
    const uint32_t b = blockIdx.z;
    const uint32_t kvh = blockIdx.y;
    if (b >= p.sequences || p.kv_heads == 0 || kvh >= p.kv_heads) return;
    if (p.heads % p.kv_heads != 0 || p.heads == 0) return;
    if (p.mode != STAG_ATTN_SELF && p.mode != STAG_ATTN_CROSS) return;
    const int hd = D != 0 ? D : int(p.head_dim);
    if (int(p.head_dim) != hd || hd <= 0 || hd > DMAX) return;
    // Key indices below are ints; the host never passes more rows.
    if (p.q_rows > 0x7fffffffu || p.k_rows > 0x7fffffffu) return;
    const uint32_t group = p.heads / p.kv_heads;

    // The sequence's rows, clamped into the tensors whatever the offset arrays hold.
    const int64_t q_start = clamp64(p.q_offsets[b], 0, p.q_rows);
    const int64_t q_end = clamp64(p.q_offsets[b + 1], q_start, p.q_rows);
    const int64_t k_start = clamp64(p.k_offsets[b], 0, p.k_rows);
    const int64_t k_end = clamp64(p.k_offsets[b + 1], k_start, p.k_rows);
    const int64_t nk = k_end - k_start;
    const int64_t pos0 = p.q_positions0[b];

    // Heavy tiles (late rows: more keys under the causal mask) are scheduled first.
    const uint64_t items = uint64_t(q_end - q_start) * group;
    const uint64_t it0 = uint64_t(gridDim.x - 1 - blockIdx.x) * BM;
    if (it0 >= items) return;
    const int count = int(items - it0 < uint64_t(BM) ? items - it0 : uint64_t(BM));

    // The block's key range: the union of its rows' visible ranges (both ends grow with the
    // position), within the key rows.
    const int64_t i_first = pos0 + int64_t(it0 / group);
    const int64_t i_last = pos0 + int64_t((it0 + count - 1) / group);
    int64_t lo = stag::visible_positions(p.mode, p.window, i_first).lo;
    int64_t hi = stag::visible_positions(p.mode, p.window, i_last).hi;
    lo = clamp64(lo, 0, nk);
    hi = clamp64(hi, lo, nk);

    const int ty = int(threadIdx.x) / TX;
    const int tx = int(threadIdx.x) % TX;

    // Per item: its visible keys [klo, khi), relative to the sequence's first key row and
    // clamped into [lo, hi) so they fit an int; empty for items past the end of the tile.
    int klo[IM], khi[IM];
#pragma unroll
    for (int a = 0; a < IM; ++a) {
        const int m = ty + TY * a;
        klo[a] = 0;
        khi[a] = 0;
        if (m < count) {
            const int64_t i = pos0 + int64_t((it0 + m) / group);
            const stag::PosRange keys = stag::visible_positions(p.mode, p.window, i);
            const int64_t l = clamp64(keys.lo, lo, hi);
            const int64_t h = clamp64(keys.hi, l, hi);
            klo[a] = int(l);
            khi[a] = int(h);
        }
    }

    float acc[IM][DC][4];
    float m_run[IM], l_run[IM];
#pragma unroll
    for (int a = 0; a < IM; ++a) {
        m_run[a] = neg_inf();
        l_run[a] = 0.0f;
#pragma unroll
        for (int c = 0; c < DC; ++c) {
#pragma unroll
            for (int e = 0; e < 4; ++e) acc[a][c][e] = 0.0f;
        }
    }

    constexpr int N = stag::Vec<T>::N;
    const int hd_pad = D != 0 ? D : (hd + 3) & ~3;
    const int ld = hd_pad + 4;
    // Output dim chunk c of this thread: dims 32c + 4tx .. +4 (partly past hd_pad: inactive).
    const int d_lane = 4 * tx;

    STAG_DYNAMIC_SMEM(float, smem);
    if (lo < hi) {
        float *qs = smem;
        float *ks = qs + BM * ld;
        float *vs = ks + BN * ld;
        float *ps = vs + BN * ld;

        const T *q = static_cast<const T *>(p.q);
        const T *k = static_cast<const T *>(p.k) + size_t(kvh) * hd;
        const T *v = static_cast<const T *>(p.v) + size_t(kvh) * hd;
        // One decision for the whole launch, so the staging loops never diverge.
        const bool vec = hd % N == 0 && p.q_row_stride % N == 0 && p.k_row_stride % N == 0 &&
                         p.v_row_stride % N == 0 && stag::aligned16(p.q) &&
                         stag::aligned16(p.k) && stag::aligned16(p.v);

        const float q_mul = p.scale * LOG2E;
        stage_rows<T>(qs, ld, BM, hd, hd_pad, vec, q_mul, [&](int m) -> const T * {
            if (m >= count) return nullptr;
            const uint64_t item = it0 + m;
            const uint64_t row = item / group;
            const uint64_t head = uint64_t(kvh) * group + item % group;
            return q + size_t(q_start + int64_t(row)) * p.q_row_stride + head * hd;
        });

        for (int64_t n0 = lo; n0 < hi; n0 += BN) {
            const int tile_keys = int(hi - n0 < BN ? hi - n0 : BN);
            // Every warp is done reading the previous K/V tile (and Q staging is complete
            // before the first S below, through the second barrier).
            __syncthreads();
            stage_rows<T>(ks, ld, BN, hd, hd_pad, vec, 1.0f, [&](int n) -> const T * {
                return n < tile_keys ? k + size_t(k_start + n0 + n) * p.k_row_stride : nullptr;
            });
            stage_rows<T>(vs, ld, BN, hd, hd_pad, vec, 1.0f, [&](int n) -> const T * {
                return n < tile_keys ? v + size_t(k_start + n0 + n) * p.v_row_stride : nullptr;
            });
            __syncthreads();

            // S = Q·Kᵀ for items ty + 16a and keys tx + 8b (already in log2 units).
            float s[IM][IN];
#pragma unroll
            for (int a = 0; a < IM; ++a) {
#pragma unroll
                for (int j = 0; j < IN; ++j) s[a][j] = 0.0f;
            }
            // Unrolling deeper hoists more float4 loads than the registers hold (spills).
#pragma unroll 2
            for (int d = 0; d < hd_pad; d += 4) {
                float4 qv[IM], kv[IN];
#pragma unroll
                for (int a = 0; a < IM; ++a) qv[a] = ld4(qs + (ty + TY * a) * ld + d);
#pragma unroll
                for (int j = 0; j < IN; ++j) kv[j] = ld4(ks + (tx + TX * j) * ld + d);
#pragma unroll
                for (int a = 0; a < IM; ++a) {
#pragma unroll
                    for (int j = 0; j < IN; ++j) {
                        float t = s[a][j];
                        t = fmaf(qv[a].x, kv[j].x, t);
                        t = fmaf(qv[a].y, kv[j].y, t);
                        t = fmaf(qv[a].z, kv[j].z, t);
                        t = fmaf(qv[a].w, kv[j].w, t);
                        s[a][j] = t;
                    }
                }
            }

            // Mask, online softmax update, P into shared memory, rescale of the accumulators.
            const int key0 = int(n0);
#pragma unroll
            for (int a = 0; a < IM; ++a) {
                // Differences of values in [0, 2^31) cannot overflow; key0 + j could.
                const int vis_lo = klo[a] - key0;
                const int vis_hi = khi[a] - key0;
                float tile_max = neg_inf();
#pragma unroll
                for (int j = 0; j < IN; ++j) {
                    const int key = tx + TX * j;
                    if (key < vis_lo || key >= vis_hi) s[a][j] = neg_inf();
                    tile_max = fmaxf(tile_max, s[a][j]);
                }
                tile_max = segment_max(tile_max);
                const float m_new = fmaxf(m_run[a], tile_max);
                // While an item has seen no visible key its max is -inf; subtracting 0 instead
                // keeps every exponent -inf (→ 0) rather than NaN.
                const float m_use = m_new == neg_inf() ? 0.0f : m_new;
                const float alpha = exp2f(m_run[a] - m_use);
                float sum = 0.0f;
                float *prow = ps + (ty + TY * a) * PLD;
#pragma unroll
                for (int j = 0; j < IN; ++j) {
                    const float e = exp2f(s[a][j] - m_use);
                    prow[tx + TX * j] = e;
                    sum += e;
                }
                sum = segment_sum(sum);
                l_run[a] = l_run[a] * alpha + sum;
                m_run[a] = m_new;
#pragma unroll
                for (int c = 0; c < DC; ++c) {
#pragma unroll
                    for (int e = 0; e < 4; ++e) acc[a][c][e] *= alpha;
                }
            }
            // The P rows this thread reads were written by the 8 lanes of its own segment.
            __syncwarp();

            // O += P·V over the tile's keys (rows past tile_keys are zero in V and P).
            const int keys4 = (tile_keys + 3) & ~3;
            for (int n = 0; n < keys4; n += 4) {
                float4 pv[IM];
#pragma unroll
                for (int a = 0; a < IM; ++a) pv[a] = ld4(ps + (ty + TY * a) * PLD + n);
#pragma unroll
                for (int c = 0; c < DC; ++c) {
                    const int d = 4 * TX * c + d_lane;
                    if (D == 0 && d >= hd_pad) continue;
                    const float4 v0 = ld4(vs + (n + 0) * ld + d);
                    const float4 v1 = ld4(vs + (n + 1) * ld + d);
                    const float4 v2 = ld4(vs + (n + 2) * ld + d);
                    const float4 v3 = ld4(vs + (n + 3) * ld + d);
#pragma unroll
                    for (int a = 0; a < IM; ++a) {
                        float *o = acc[a][c];
                        o[0] = fmaf(pv[a].x, v0.x, o[0]);
                        o[1] = fmaf(pv[a].x, v0.y, o[1]);
                        o[2] = fmaf(pv[a].x, v0.z, o[2]);
                        o[3] = fmaf(pv[a].x, v0.w, o[3]);
                        o[0] = fmaf(pv[a].y, v1.x, o[0]);
                        o[1] = fmaf(pv[a].y, v1.y, o[1]);
                        o[2] = fmaf(pv[a].y, v1.z, o[2]);
                        o[3] = fmaf(pv[a].y, v1.w, o[3]);
                        o[0] = fmaf(pv[a].z, v2.x, o[0]);
                        o[1] = fmaf(pv[a].z, v2.y, o[1]);
                        o[2] = fmaf(pv[a].z, v2.z, o[2]);
                        o[3] = fmaf(pv[a].z, v2.w, o[3]);
                        o[0] = fmaf(pv[a].w, v3.x, o[0]);
                        o[1] = fmaf(pv[a].w, v3.y, o[1]);
                        o[2] = fmaf(pv[a].w, v3.z, o[2]);
                        o[3] = fmaf(pv[a].w, v3.w, o[3]);
                    }
                }
            }
        }
    }

    // Normalise and write; an item that saw no visible key (l = 0) writes exact zeros.
    T *out = static_cast<T *>(p.out);
    const bool out_vec = hd % 4 == 0 && p.out_row_stride % 4 == 0 &&
                         (reinterpret_cast<uintptr_t>(p.out) & (4 * sizeof(T) - 1)) == 0;
#pragma unroll
    for (int a = 0; a < IM; ++a) {
        const int m = ty + TY * a;
        if (m >= count) continue;
        const uint64_t item = it0 + m;
        const uint64_t row = item / group;
        const uint64_t head = uint64_t(kvh) * group + item % group;
        T *orow = out + size_t(q_start + int64_t(row)) * p.out_row_stride + head * hd;
        const float inv = l_run[a] > 0.0f ? 1.0f / l_run[a] : 0.0f;
#pragma unroll
        for (int c = 0; c < DC; ++c) {
            const int d = 4 * TX * c + d_lane;
            if (D == 0 && d >= hd) continue;
            float o[4];
#pragma unroll
            for (int e = 0; e < 4; ++e) o[e] = acc[a][c][e] * inv;
            if (D != 0 || d + 4 <= hd) {
                store4<T>(orow + d, o, out_vec);
            } else {
#pragma unroll
                for (int e = 0; e < 4; ++e) {
                    if (d + e < hd) orow[d + e] = stag::from_float<T>(o[e]);
                }
            }
        }
    }
}

}  // namespace

STAG_KERNEL_BOUNDED(attention_prefill_f32_hd64, AttentionPrefillParams, THREADS) {
    prefill_block<float, 64>(p);
}
STAG_KERNEL_BOUNDED(attention_prefill_f32_hd128, AttentionPrefillParams, THREADS) {
    prefill_block<float, 128>(p);
}
STAG_KERNEL_BOUNDED(attention_prefill_f32_any, AttentionPrefillParams, THREADS) {
    prefill_block<float, 0>(p);
}
STAG_KERNEL_BOUNDED(attention_prefill_bf16_hd64, AttentionPrefillParams, THREADS) {
    prefill_block<__nv_bfloat16, 64>(p);
}
STAG_KERNEL_BOUNDED(attention_prefill_bf16_hd128, AttentionPrefillParams, THREADS) {
    prefill_block<__nv_bfloat16, 128>(p);
}
STAG_KERNEL_BOUNDED(attention_prefill_bf16_any, AttentionPrefillParams, THREADS) {
    prefill_block<__nv_bfloat16, 0>(p);
}
