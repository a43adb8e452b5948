// RoPE on q and the new keys (in place) and the append of k and v into the KV cache, one pass.
//
// Hugging Face Llama `rotate_half`: for m < hd/2 the pair (x[m], x[m + hd/2]) turns by the angle
// pos · inv_freq[m], with cos and sin read from a host-built f32 table [table_positions, hd/2]
// whose angles were computed in f64. The products and sums are explicitly rounded (_rn), so the
// compiler cannot contract them into FMAs and every backend computes exactly the f32 operations
// of the reference: an f32 result is bit-identical to it.
//
// Work items of one token row, spread over grid.y (a grid-stride loop over the rest):
//   [0, (H + Hkv) · R)          rotation of one group of pairs of a q head, then of a k head
//   [.., + Hkv · C)             copy of one group of v elements into the cache
// where a group is a 16-byte vector (N elements) when every pointer, stride and hd/2 keep the
// vectors aligned, else one element (decided per launch, uniformly), R = (hd/2) / group and
// C = hd / group. Decode (B rows, one token each) and prefill (P rows of one sequence) are the
// same launch: each row carries its own (seq_slot, position).
//
// Memory bound: per row q, k and v are read once, q and k written back and k and v written into
// the cache; the row's hd/2 cos and sin floats are read by every head and stay in L1/L2.
#include "stag_cache.cuh"
#include "stag_vec.cuh"

namespace {

constexpr int THREADS = 128;

template <typename T>
__device__ __forceinline__ bool vector_aligned(const RopeAppendParams &p) {
    constexpr int N = stag::Vec<T>::N;
    return (p.head_dim / 2) % N == 0 && p.q_row_stride % N == 0 && p.k_row_stride % N == 0 &&
           p.v_row_stride % N == 0 && p.cache_seq_stride % N == 0 &&
           p.cache_head_stride % N == 0 && stag::aligned16(p.q) && stag::aligned16(p.k) &&
           stag::aligned16(p.v) && stag::aligned16(p.k_cache) && stag::aligned16(p.v_cache) &&
           stag::aligned16(p.rope_cos) && stag::aligned16(p.rope_sin);
}

// Rotates W pairs (x[i], x[half + i]) for i < W, in place at `x`, and stores the result also at
// `copy` when it is non-null (the key's cache slot).
template <typename T, int W, bool VEC>
__device__ __forceinline__ void rotate(T *x, T *copy, uint32_t half, const float *cos_row,
                                       const float *sin_row) {
    float a[W], b[W], c[W], s[W], ra[W], rb[W];
    if constexpr (VEC) {
        stag::Vec<T>::load(x, a);
        stag::Vec<T>::load(x + half, b);
#pragma unroll
        for (int i = 0; i < W; i += 4) {
            stag::Vec<float>::load(cos_row + i, c + i);
            stag::Vec<float>::load(sin_row + i, s + i);
        }
    } else {
        a[0] = stag::to_float(x[0]);
        b[0] = stag::to_float(x[half]);
        c[0] = cos_row[0];
        s[0] = sin_row[0];
    }
#pragma unroll
    for (int i = 0; i < W; ++i) {
        stag::rope_pair(a[i], b[i], c[i], s[i], &ra[i], &rb[i]);
    }
    if constexpr (VEC) {
        stag::Vec<T>::store(x, ra);
        stag::Vec<T>::store(x + half, rb);
        if (copy != nullptr) {
            stag::Vec<T>::store(copy, ra);
            stag::Vec<T>::store(copy + half, rb);
        }
    } else {
        x[0] = stag::from_float<T>(ra[0]);
        x[half] = stag::from_float<T>(rb[0]);
        if (copy != nullptr) {
            copy[0] = stag::from_float<T>(ra[0]);
            copy[half] = stag::from_float<T>(rb[0]);
        }
    }
}

template <typename T, bool VEC>
__device__ void rope_append_items(const RopeAppendParams &p, uint32_t row, size_t slot_offset,
                                  uint32_t pos) {
    constexpr int W = VEC ? stag::Vec<T>::N : 1;
    const uint32_t hd = p.head_dim;
    const uint32_t half = hd / 2;
    const uint32_t rope_groups = half / W;
    const uint32_t copy_groups = hd / W;
    const uint32_t rope_items = (p.heads + p.kv_heads) * rope_groups;
    const uint32_t items = rope_items + p.kv_heads * copy_groups;

    T *q = static_cast<T *>(p.q) + size_t(row) * p.q_row_stride;
    T *k = static_cast<T *>(p.k) + size_t(row) * p.k_row_stride;
    const T *v = static_cast<const T *>(p.v) + size_t(row) * p.v_row_stride;
    T *k_slot = static_cast<T *>(p.k_cache) + slot_offset;
    T *v_slot = static_cast<T *>(p.v_cache) + slot_offset;
    const float *cos_row = p.rope_cos + size_t(pos) * half;
    const float *sin_row = p.rope_sin + size_t(pos) * half;

    for (uint32_t item = blockIdx.y * blockDim.x + threadIdx.x; item < items;
         item += gridDim.y * blockDim.x) {
        if (item < rope_items) {
            const uint32_t unit = item / rope_groups;
            const uint32_t m = (item - unit * rope_groups) * W;
            if (unit < p.heads) {
                rotate<T, W, VEC>(q + size_t(unit) * hd + m, nullptr, half, cos_row + m,
                                  sin_row + m);
            } else {
                const uint32_t kh = unit - p.heads;
                rotate<T, W, VEC>(k + size_t(kh) * hd + m,
                                  k_slot + stag::cache_element(0, 0, 0, kh, p.cache_head_stride, m), half,
                                  cos_row + m, sin_row + m);
            }
        } else {
            const uint32_t j = item - rope_items;
            const uint32_t kh = j / copy_groups;
            const uint32_t d = (j - kh * copy_groups) * W;
            const T *src = v + size_t(kh) * hd + d;
            T *dst = v_slot + stag::cache_element(0, 0, 0, kh, p.cache_head_stride, d);
            if constexpr (VEC) {
                *reinterpret_cast<uint4 *>(dst) = *reinterpret_cast<const uint4 *>(src);
            } else {
                *dst = *src;
            }
        }
    }
}

template <typename T>
__device__ void rope_append_row(const RopeAppendParams &p) {
    const uint32_t row = blockIdx.x;
    if (row >= p.rows) return;
    const int32_t seq = p.seq_slots[row];
    const int32_t pos = p.positions[row];
    // Device-side indices may hold anything: a row that does not name a cache slot (or whose
    // slot has no page) and a table row is left alone rather than written out of bounds.
    size_t slot_offset = 0;
    if (!stag::self_cache_slot(seq, pos, p.cache_seqs, p.cache_slots, p.ring, p.cache_seq_stride,
                               p.head_dim, p.paging, &slot_offset) ||
        uint32_t(pos) >= p.table_positions) {
        return;
    }
    if (vector_aligned<T>(p)) {
        rope_append_items<T, true>(p, row, slot_offset, uint32_t(pos));
    } else {
        rope_append_items<T, false>(p, row, slot_offset, uint32_t(pos));
    }
}

}  // namespace

STAG_KERNEL_BOUNDED(rope_append_f32, RopeAppendParams, THREADS) { rope_append_row<float>(p); }
STAG_KERNEL_BOUNDED(rope_append_bf16, RopeAppendParams, THREADS) {
    rope_append_row<__nv_bfloat16>(p);
}
