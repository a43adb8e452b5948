// Tensor-core prefill attention for bf16, FlashAttention-2 style (contract:
// AttentionPrefillMmaParams in stag_params.h; the SIMT kernel family is attention_prefill.cu).
//
// Block: 4 warps, BM = 64 query items of one sequence and one kv head (item = row * group + g,
// as in attention_prefill.cu, so the heads of a GQA group share every K/V tile), streaming the
// union of the items' visible key ranges in tiles of BN = 64 keys. Warp w owns items
// 16w .. 16w + 16 as the 16 rows of its m16n8k16 A operands:
//   S = Q·Kᵀ: Q fragments are loaded once (ldmatrix.x4 from the Q tile) and kept in registers;
//     K fragments come from the K tile with ldmatrix.x4 (K rows [key][dim] are exactly the
//     "col" B operand); 8 n-blocks × DP/16 k-steps of mma per tile.
//   Mask, then the online softmax in f32 registers, base 2 (scale·log2 e applied to S): row
//     maxima reduce over the 4 lanes of a quad (xor 1, 2); row sums stay per lane until the end.
//   O += P·V: the S accumulators of two adjacent n-blocks are exactly the A fragment of one
//     16-key k-step (C/D and A layouts line up), so P is packed to bf16 in registers without
//     touching shared memory; V fragments come from the V tile with ldmatrix.x4.trans.
// K/V tiles are double-buffered with cp.async (tile t + 1 is in flight while tile t is used);
// keys past the block's range and pad dims are zero-filled, so no poison reaches an mma.
//
// Shared memory (bf16): Q [BM][LD], K [2][BN][LD], V [2][BN][LD] with LD = DP + 8: a row pitch of
// DP·2 + 16 bytes puts the 8 rows one ldmatrix phase reads (and the 16-byte chunks cp.async
// writes) into 8 different 16-byte bank groups, so neither conflicts. DP = 64: 45 KiB, DP = 128:
// 85 KiB (src/ops/attention_prefill.rs, `mma_smem_bytes`, computes the same).
#include "stag_cache.cuh"
#include "stag_mask.cuh"
#include "stag_mma.cuh"
#include "stag_vec.cuh"

namespace {

constexpr int BM = 64;
constexpr int BN = 64;
constexpr int WARPS = 4;
constexpr int THREADS = 32 * WARPS;
constexpr float LOG2E = 1.4426950408889634f;
static_assert(BM == 16 * WARPS, "one 16-row mma tile per warp");

__device__ __forceinline__ float neg_inf() { return __uint_as_float(0xff800000u); }

__device__ __forceinline__ int64_t clamp64(int64_t v, int64_t lo, int64_t hi) {
    return v < lo ? lo : (v > hi ? hi : v);
}

// Where key position j of the block's sequence and kv head lies: in a cache, the row
// stag::cache_key_row(seq, kv_head, slot_of(j, wrap)) (wrap 0: dense), null when a paged
// cache has no page for it; packed, row j of k / v (already offset to the sequence's first
// key and the kv head).
struct KeyRows {
    const __nv_bfloat16 *k;
    const __nv_bfloat16 *v;
    bool cache;
    int64_t k_stride;  // packed: elements between consecutive rows
    int64_t v_stride;
    uint32_t seq, kv_head;  // cache
    size_t seq_stride, head_stride;
    uint32_t head_dim;
    int64_t wrap;  // cache: 0, or the ring's length
    const StagKvPaging *paging;  // cache
    __device__ __forceinline__ const __nv_bfloat16 *k_row(int64_t j) const {
        if (!cache) return k + size_t(j) * k_stride;
        size_t offset = 0;
        return cache_offset(j, &offset) ? k + offset : nullptr;
    }
    __device__ __forceinline__ const __nv_bfloat16 *v_row(int64_t j) const {
        if (!cache) return v + size_t(j) * v_stride;
        size_t offset = 0;
        return cache_offset(j, &offset) ? v + offset : nullptr;
    }
    // Whether key position j exists (packed keys and dense caches: always, inside the range).
    __device__ __forceinline__ bool present(int64_t j) const {
        size_t offset = 0;
        return !cache || cache_offset(j, &offset);
    }
    __device__ __forceinline__ bool cache_offset(int64_t j, size_t *offset) const {
        return stag::cache_key_row(*paging, seq, kv_head, uint32_t(stag::slot_of(j, wrap)),
                                   seq_stride, head_stride, head_dim, offset);
    }
};

// Stages `rows` rows of hd bf16 into a [rows][LD] tile: 16-byte cp.async chunks when `vec`
// (zero-filled past hd and for rows `src` returns null for), else plain element copies.
// `anywhere` is any valid global address, given to the zero-filling copies (which read nothing).
template <int DP, typename Src>
__device__ __forceinline__ void stage(__nv_bfloat16 *dst, int rows, int hd, bool vec,
                                      const __nv_bfloat16 *anywhere, Src src) {
    constexpr int LD = DP + 8;
    constexpr int CHUNKS = DP / 8;
    if (vec) {
        for (int idx = int(threadIdx.x); idx < rows * CHUNKS; idx += THREADS) {
            const int m = idx / CHUNKS;
            const int c = idx - m * CHUNKS;
            const __nv_bfloat16 *s = src(m);
            const bool valid = s != nullptr && c * 8 < hd;
            stag::cp_async_cg_16(dst + m * LD + c * 8, valid ? s + c * 8 : anywhere, valid);
        }
        return;
    }
    for (int idx = int(threadIdx.x); idx < rows * DP; idx += THREADS) {
        const int m = idx / DP;
        const int d = idx - m * DP;
        const __nv_bfloat16 *s = src(m);
        dst[m * LD + d] = (s != nullptr && d < hd) ? s[d] : __float2bfloat16_rn(0.0f);
    }
}

// DP: the head_dim the tiles are laid out for (64 or 128); the runtime head_dim is DP (exact
// instances) or anything up to DP (padded with zeros).
template <int DP>
__device__ void prefill_mma_block(const AttentionPrefillMmaParams &p) {
    constexpr int LD = DP + 8;
    constexpr int KS = DP / 16;  // k-steps of S = Q·Kᵀ
    constexpr int DB = DP / 8;   // 8-wide output dim blocks
    using bf16 = __nv_bfloat16;

    // Everything up to the first barrier depends on params and blockIdx only, so an early return
    // is taken by the whole block.
    const uint32_t b = blockIdx.z;
    const uint32_t kvh = blockIdx.y;
    if (b >= p.sequences || p.kv_heads == 0 || kvh >= p.kv_heads) return;
    if (p.heads == 0 || p.heads % p.kv_heads != 0) return;
    if (p.mode != STAG_ATTN_SELF && p.mode != STAG_ATTN_CROSS) return;
    const int hd = int(p.head_dim);
    if (hd <= 0 || hd > DP) return;
    if (p.q_rows > 0x7fffffffu || p.k_rows > 0x7fffffffu) return;
    const bool cache = p.kv_source == STAG_KV_CACHE;
    if (!cache && p.kv_source != STAG_KV_PACKED) return;
    if (cache && (p.cache_slots == 0 || p.cache_seqs == 0)) return;
    const uint32_t group = p.heads / p.kv_heads;
    const bool paged = cache && p.paging.block_table != nullptr;

    const int64_t q_start = clamp64(p.q_offsets[b], 0, p.q_rows);
    const int64_t q_end = clamp64(p.q_offsets[b + 1], q_start, p.q_rows);
    const int64_t pos0 = p.q_positions0[b];
    const uint64_t items = uint64_t(q_end - q_start) * group;
    // Heavy tiles (late rows: more keys under the causal mask) are scheduled first.
    const uint64_t it0 = uint64_t(gridDim.x - 1 - blockIdx.x) * BM;
    if (it0 >= items) return;
    const int count = int(items - it0 < uint64_t(BM) ? items - it0 : uint64_t(BM));

    KeyRows keys;
    int64_t nk;  // key positions that exist
    if (cache) {
        const int64_t slot = clamp64(p.q_slots[q_start], 0, int64_t(p.cache_seqs) - 1);
        keys = KeyRows{static_cast<const bf16 *>(p.k),
                       static_cast<const bf16 *>(p.v),
                       true,
                       0,
                       0,
                       uint32_t(slot),
                       kvh,
                       p.cache_seq_stride,
                       p.cache_head_stride,
                       uint32_t(hd),
                       p.cache_ring != 0 ? int64_t(p.cache_slots) : 0,
                       &p.paging};
        nk = p.cache_ring != 0 ? INT64_MAX : int64_t(p.cache_slots);
    } else {
        const int64_t k_start = clamp64(p.k_offsets[b], 0, p.k_rows);
        const int64_t k_end = clamp64(p.k_offsets[b + 1], k_start, p.k_rows);
        keys = KeyRows{static_cast<const bf16 *>(p.k) + size_t(k_start) * p.k_row_stride +
                           size_t(kvh) * hd,
                       static_cast<const bf16 *>(p.v) + size_t(k_start) * p.v_row_stride +
                           size_t(kvh) * hd,
                       false,
                       p.k_row_stride,
                       p.v_row_stride,
                       0,
                       0,
                       0,
                       0,
                       0,
                       0,
                       nullptr};
        nk = k_end - k_start;
    }

    // The block's key range: the union of its rows' visible ranges.
    const int64_t i_first = pos0 + int64_t(it0 / group);
    const int64_t i_last = pos0 + int64_t((it0 + count - 1) / group);
    int64_t lo = stag::visible_positions(p.mode, p.window, i_first).lo;
    int64_t hi = stag::visible_positions(p.mode, p.window, i_last).hi;
    lo = clamp64(lo, 0, nk);
    hi = clamp64(hi, lo, nk);

    const int warp = int(threadIdx.x) / 32;
    const int lane = int(threadIdx.x) % 32;
    const int g = lane / 4, t = lane % 4;

    // This lane's two items (rows g and g + 8 of the warp's tile): visible keys [klo, khi),
    // clamped into [lo, hi); empty past the end of the tile.
    int64_t klo[2], khi[2];
#pragma unroll
    for (int h = 0; h < 2; ++h) {
        const int m = 16 * warp + g + 8 * h;
        klo[h] = 0;
        khi[h] = 0;
        if (m < count) {
            const int64_t i = pos0 + int64_t((it0 + m) / group);
            const stag::PosRange r = stag::visible_positions(p.mode, p.window, i);
            klo[h] = clamp64(r.lo, lo, hi);
            khi[h] = clamp64(r.hi, klo[h], hi);
        }
    }

    float o[DB][4];
    float m_run[2] = {neg_inf(), neg_inf()};
    float l_run[2] = {0.0f, 0.0f};
#pragma unroll
    for (int n = 0; n < DB; ++n) {
#pragma unroll
        for (int e = 0; e < 4; ++e) o[n][e] = 0.0f;
    }

    STAG_DYNAMIC_SMEM(bf16, smem);
    if (lo < hi) {
        bf16 *qs = smem;
        bf16 *ks = qs + BM * LD;  // [2][BN][LD]
        bf16 *vs = ks + 2 * BN * LD;
        const bf16 *q = static_cast<const bf16 *>(p.q);
        // One decision for the whole launch, so the staging never diverges.
        const bool vec = hd % 8 == 0 && p.q_row_stride % 8 == 0 &&
                         (cache || (p.k_row_stride % 8 == 0 && p.v_row_stride % 8 == 0)) &&
                         (!cache || (p.cache_seq_stride % 8 == 0 && p.cache_head_stride % 8 == 0)) &&
                         stag::aligned16(p.q) && stag::aligned16(p.k) && stag::aligned16(p.v);

        stage<DP>(qs, BM, hd, vec, q, [&](int m) -> const bf16 * {
            if (m >= count) return nullptr;
            const uint64_t item = it0 + m;
            const uint64_t row = item / group;
            const uint64_t head = uint64_t(kvh) * group + item % group;
            return q + size_t(q_start + int64_t(row)) * p.q_row_stride + head * hd;
        });
        auto stage_kv = [&](int buf, int64_t n0) {
            stage<DP>(ks + buf * BN * LD, BN, hd, vec, q, [&](int n) -> const bf16 * {
                return n0 + n < hi ? keys.k_row(n0 + n) : nullptr;
            });
            stage<DP>(vs + buf * BN * LD, BN, hd, vec, q, [&](int n) -> const bf16 * {
                return n0 + n < hi ? keys.v_row(n0 + n) : nullptr;
            });
        };
        stage_kv(0, lo);
        stag::cp_async_commit();

        const float s_mul = p.scale * LOG2E;
        uint32_t qf[KS][4];
        int tile = 0;
        for (int64_t n0 = lo; n0 < hi; n0 += BN, ++tile) {
            const int cur = tile & 1;
            if (n0 + BN < hi) {
                stage_kv(cur ^ 1, n0 + BN);
                stag::cp_async_commit();
                stag::cp_async_wait<1>();
            } else {
                stag::cp_async_wait<0>();
            }
            // The tile (and at first Q) is complete for every thread's copies.
            __syncthreads();
            if (tile == 0) {
                // Matrix j of the x4: rows 8(j % 2) .., cols 8(j / 2) .. of the 16×16 A block.
                const int r = 16 * warp + (lane % 8) + 8 * ((lane / 8) % 2);
                const int c = 8 * (lane / 16);
#pragma unroll
                for (int kk = 0; kk < KS; ++kk) stag::ldmatrix_x4(qf[kk], qs + r * LD + 16 * kk + c);
            }
            const bf16 *kt = ks + cur * BN * LD;
            const bf16 *vt = vs + cur * BN * LD;

            // S = Q·Kᵀ (16 items × 64 keys per warp).
            float s[8][4];
#pragma unroll
            for (int n = 0; n < 8; ++n) {
#pragma unroll
                for (int e = 0; e < 4; ++e) s[n][e] = 0.0f;
            }
#pragma unroll
            for (int kk = 0; kk < KS; ++kk) {
                if (DP > 64 && 16 * kk >= hd) continue;  // zero pad dims (padded instances)
#pragma unroll
                for (int n2 = 0; n2 < 4; ++n2) {
                    // Matrix j: keys 16·n2 + 8(j / 2) .., dims 16·kk + 8(j % 2) ..
                    const int key = 16 * n2 + (lane % 8) + 8 * (lane / 16);
                    const int dim = 16 * kk + 8 * ((lane / 8) % 2);
                    uint32_t kf[4];
                    stag::ldmatrix_x4(kf, kt + key * LD + dim);
                    const uint32_t b0[2] = {kf[0], kf[1]};
                    const uint32_t b1[2] = {kf[2], kf[3]};
                    stag::mma_bf16_16816(s[2 * n2], qf[kk], b0, s[2 * n2]);
                    stag::mma_bf16_16816(s[2 * n2 + 1], qf[kk], b1, s[2 * n2 + 1]);
                }
            }

            // Mask and online softmax; element (n, e) is item row g + 8(e / 2), key
            // n0 + 8n + 2t + e % 2.
#pragma unroll
            for (int h = 0; h < 2; ++h) {
                // A paged cache's tile may hold keys without a page (staged as zeros): those
                // are masked as absent, through one table lookup per key (L1 hits: the table
                // row is shared by the block), on the paged path only.
                const bool full = klo[h] <= n0 && n0 + BN <= khi[h] && !paged;
                float tile_max = neg_inf();
#pragma unroll
                for (int n = 0; n < 8; ++n) {
#pragma unroll
                    for (int e = 0; e < 2; ++e) {
                        float &x = s[n][2 * h + e];
                        x *= s_mul;
                        if (!full) {
                            const int64_t key = n0 + 8 * n + 2 * t + e;
                            if (key < klo[h] || key >= khi[h] || (paged && !keys.present(key))) {
                                x = neg_inf();
                            }
                        }
                        tile_max = fmaxf(tile_max, x);
                    }
                }
                tile_max = fmaxf(tile_max, __shfl_xor_sync(0xffffffffu, tile_max, 1));
                tile_max = fmaxf(tile_max, __shfl_xor_sync(0xffffffffu, tile_max, 2));
                const float m_new = fmaxf(m_run[h], tile_max);
                // While a row has seen no visible key its max is -inf; subtracting 0 instead
                // keeps every exponent -inf (-> 0) rather than NaN.
                const float m_use = m_new == neg_inf() ? 0.0f : m_new;
                const float alpha = exp2f(m_run[h] - m_use);
                float sum = 0.0f;
#pragma unroll
                for (int n = 0; n < 8; ++n) {
#pragma unroll
                    for (int e = 0; e < 2; ++e) {
                        float &x = s[n][2 * h + e];
                        x = exp2f(x - m_use);
                        sum += x;
                    }
                }
                l_run[h] = l_run[h] * alpha + sum;
                m_run[h] = m_new;
#pragma unroll
                for (int n = 0; n < DB; ++n) {
                    o[n][2 * h] *= alpha;
                    o[n][2 * h + 1] *= alpha;
                }
            }

            // O += P·V: k-step kk2 covers keys 16·kk2 .. +16 = S blocks 2kk2 and 2kk2 + 1.
#pragma unroll
            for (int kk2 = 0; kk2 < 4; ++kk2) {
                const uint32_t pa[4] = {
                    stag::pack_bf16x2(s[2 * kk2][0], s[2 * kk2][1]),
                    stag::pack_bf16x2(s[2 * kk2][2], s[2 * kk2][3]),
                    stag::pack_bf16x2(s[2 * kk2 + 1][0], s[2 * kk2 + 1][1]),
                    stag::pack_bf16x2(s[2 * kk2 + 1][2], s[2 * kk2 + 1][3]),
                };
#pragma unroll
                for (int d2 = 0; d2 < DB / 2; ++d2) {
                    if (DP > 64 && 16 * d2 >= hd) continue;
                    // Matrix j (transposed): keys 16·kk2 + 8(j % 2) .., dims 16·d2 + 8(j / 2) ..
                    const int key = 16 * kk2 + (lane % 8) + 8 * ((lane / 8) % 2);
                    const int dim = 16 * d2 + 8 * (lane / 16);
                    uint32_t vf[4];
                    stag::ldmatrix_x4_trans(vf, vt + key * LD + dim);
                    const uint32_t b0[2] = {vf[0], vf[1]};
                    const uint32_t b1[2] = {vf[2], vf[3]};
                    stag::mma_bf16_16816(o[2 * d2], pa, b0, o[2 * d2]);
                    stag::mma_bf16_16816(o[2 * d2 + 1], pa, b1, o[2 * d2 + 1]);
                }
            }
            // Every warp is done with this buffer before tile + 2 is staged into it.
            __syncthreads();
        }
    }

    // Row sums over the quad, normalise, write; a row that saw no key writes exact zeros.
    bf16 *out = static_cast<bf16 *>(p.out);
    const bool pairs = hd % 2 == 0 && p.out_row_stride % 2 == 0 &&
                       (reinterpret_cast<uintptr_t>(p.out) & 3u) == 0;
#pragma unroll
    for (int h = 0; h < 2; ++h) {
        float l = l_run[h];
        l += __shfl_xor_sync(0xffffffffu, l, 1);
        l += __shfl_xor_sync(0xffffffffu, l, 2);
        const int m = 16 * warp + g + 8 * h;
        if (m >= count) continue;
        const uint64_t item = it0 + m;
        const uint64_t row = item / group;
        const uint64_t head = uint64_t(kvh) * group + item % group;
        bf16 *orow = out + size_t(q_start + int64_t(row)) * p.out_row_stride + head * hd;
        const float inv = l > 0.0f ? 1.0f / l : 0.0f;
#pragma unroll
        for (int n = 0; n < DB; ++n) {
            const int d = 8 * n + 2 * t;
            if (d >= hd) continue;
            const float x0 = o[n][2 * h] * inv, x1 = o[n][2 * h + 1] * inv;
            if (pairs) {
                *reinterpret_cast<__nv_bfloat162 *>(orow + d) = __floats2bfloat162_rn(x0, x1);
            } else {
                orow[d] = __float2bfloat16_rn(x0);
                if (d + 1 < hd) orow[d + 1] = __float2bfloat16_rn(x1);
            }
        }
    }
}

}  // namespace

STAG_KERNEL_BOUNDED(attention_prefill_mma_bf16_hd64, AttentionPrefillMmaParams, THREADS) {
    prefill_mma_block<64>(p);
}
STAG_KERNEL_BOUNDED(attention_prefill_mma_bf16_hd128, AttentionPrefillMmaParams, THREADS) {
    prefill_mma_block<128>(p);
}
