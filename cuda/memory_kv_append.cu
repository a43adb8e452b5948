// Scatter of the projected memory K/V rows into every cross-attention layer's cache.
//
// Row r of `kv` is one GEMM's output against the concatenated [Wk_0; Wv_0; Wk_1; Wv_1; ...]:
// [k_0 | v_0 | k_1 | v_1 | ...], each kv_dim = kv_heads · head_dim wide. Element (l, k|v, head, d)
// goes to layer l's K or V cache at (seq_slots[r], slot, head, d), slot = position mod W (or the
// position when unbounded). A bit-for-bit copy, so memory bound: layers · 2 · kv_dim elements
// read and written per row. Each thread moves one 16-byte vector when head_dim, the strides and
// the pointers keep every vector inside one head row and aligned, else one element (decided
// per launch, uniformly). Rows lie along grid.x; grid.y and a grid-stride loop cover the row.
#include "stag_cache.cuh"
#include "stag_vec.cuh"

namespace {

constexpr int THREADS = 256;

template <typename T>
__device__ __forceinline__ bool vector_aligned(const MemoryKvAppendParams &p) {
    constexpr int N = stag::Vec<T>::N;
    return p.head_dim % N == 0 && p.kv_row_stride % N == 0 && p.cache_layer_stride % N == 0 &&
           p.cache_seq_stride % N == 0 && p.cache_head_stride % N == 0 &&
           stag::aligned16(p.kv) && stag::aligned16(p.k_cache) && stag::aligned16(p.v_cache);
}

template <typename T, bool VEC>
__device__ void scatter_row(const MemoryKvAppendParams &p, uint32_t row, size_t slot_offset) {
    constexpr int W = VEC ? stag::Vec<T>::N : 1;
    const uint32_t hd = p.head_dim;
    const uint32_t kv_dim = p.kv_heads * hd;
    const uint32_t groups = p.layers * 2 * kv_dim / W;
    const T *src_row = static_cast<const T *>(p.kv) + size_t(row) * p.kv_row_stride;

    for (uint32_t g = blockIdx.y * blockDim.x + threadIdx.x; g < groups;
         g += gridDim.y * blockDim.x) {
        const uint32_t e = g * W;
        const uint32_t layer = e / (2 * kv_dim);
        uint32_t c = e - layer * 2 * kv_dim;
        const bool is_v = c >= kv_dim;
        if (is_v) c -= kv_dim;
        const uint32_t head = c / hd;
        const uint32_t d = c - head * hd;
        T *cache = static_cast<T *>(is_v ? p.v_cache : p.k_cache);
        T *dst = cache + stag::cache_element(slot_offset, layer, p.cache_layer_stride, head,
                                             p.cache_head_stride, d);
        if constexpr (VEC) {
            *reinterpret_cast<uint4 *>(dst) = *reinterpret_cast<const uint4 *>(src_row + e);
        } else {
            *dst = src_row[e];
        }
    }
}

template <typename T>
__device__ void memory_kv_append_row(const MemoryKvAppendParams &p) {
    const uint32_t row = blockIdx.x;
    if (row >= p.rows) return;
    const int32_t seq = p.seq_slots[row];
    const int32_t pos = p.positions[row];
    // Device-side indices may hold anything: a row that names no cache slot (or a slot without a
    // page) writes nothing.
    size_t slot_offset = 0;
    if (!stag::cross_cache_slot(seq, pos, p.cache_seqs, p.cache_slots, p.window,
                                p.cache_seq_stride, p.head_dim, p.paging, &slot_offset)) {
        return;
    }
    if (vector_aligned<T>(p)) {
        scatter_row<T, true>(p, row, slot_offset);
    } else {
        scatter_row<T, false>(p, row, slot_offset);
    }
}

}  // namespace

STAG_KERNEL_BOUNDED(memory_kv_append_f32, MemoryKvAppendParams, THREADS) {
    memory_kv_append_row<float>(p);
}
STAG_KERNEL_BOUNDED(memory_kv_append_bf16, MemoryKvAppendParams, THREADS) {
    memory_kv_append_row<__nv_bfloat16>(p);
}
