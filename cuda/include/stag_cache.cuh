// Where a KV-cache element lives: the one definition every kernel that writes (or reads) a
// cache uses, so that the writers (rope_append, memory_kv_append, the gemv epilogues) and the
// attention readers cannot disagree.
//
// Element [layer][seq][kv_head][slot][d] lies at
//   layer * layer_stride + seq * seq_stride + kv_head * head_stride + slot * head_dim + d.
// Self caches hold position k in slot k, or slot k mod cache_slots when they are a ring
// (sliding-window self caches). Cross caches hold it in slot k mod W (W = window != 0), else
// slot k, and the slot must lie below cache_slots.
#pragma once

#include "stag_kernel.cuh"

namespace stag {

/// The slot of position `pos` in a cache whose ring is `ring_len` slots long (0: not a ring,
/// position k in slot k). Every writer (through the two functions below) and every attention
/// reader (for the keys it loads, then through cache_row below) uses it, so a cache layout
/// change (paging, say) is made here. Works for the 32- and 64-bit positions kernels
/// carry.
template <typename P>
__device__ __forceinline__ P slot_of(P pos, P ring_len) {
    return ring_len != 0 ? pos % ring_len : pos;
}

/// The element [seq][kv_head][0][0] of one layer of a cache: where a head's slots start.
__device__ __forceinline__ size_t cache_head(uint32_t seq, uint32_t kv_head, size_t seq_stride,
                                             size_t head_stride) {
    return size_t(seq) * seq_stride + size_t(kv_head) * head_stride;
}

/// Where slot `slot` lies inside its head's slots.
__device__ __forceinline__ size_t cache_slot_offset(uint32_t slot, uint32_t head_dim) {
    return size_t(slot) * head_dim;
}

/// The element [seq][kv_head][slot][0] of one layer of a cache (self or cross): where a key or
/// value row lies. Writers reach it through self_cache_slot / cross_cache_slot and
/// cache_element; readers take cache_head once per (sequence, kv head) and add
/// cache_slot_offset per key (the decode attention: one 64-bit base per head keeps its
/// unrolled key loop in registers) or call cache_row per key (the prefill attention). These
/// three and slot_of are the whole addressing rule.
__device__ __forceinline__ size_t cache_row(uint32_t seq, uint32_t kv_head, uint32_t slot,
                                            size_t seq_stride, size_t head_stride,
                                            uint32_t head_dim) {
    return cache_head(seq, kv_head, seq_stride, head_stride) + cache_slot_offset(slot, head_dim);
}

/// Offset of (seq, position)'s slot in a self cache (the element [seq][0][slot][0]) in
/// `*offset`; false (nothing may be written) when the sequence is outside [0, cache_seqs) or
/// the position has no slot (negative, or past a dense cache's end).
__device__ __forceinline__ bool self_cache_slot(int32_t seq, int32_t pos, uint32_t cache_seqs,
                                                uint32_t cache_slots, uint32_t ring,
                                                uint32_t seq_stride, uint32_t head_dim,
                                                size_t *offset) {
    if (seq < 0 || uint32_t(seq) >= cache_seqs || pos < 0 || cache_slots == 0 ||
        (ring == 0 && uint32_t(pos) >= cache_slots)) {
        return false;
    }
    const uint32_t slot = slot_of(uint32_t(pos), ring != 0 ? cache_slots : 0u);
    *offset = cache_row(uint32_t(seq), 0, slot, seq_stride, 0, head_dim);
    return true;
}

/// Offset of (seq, position)'s slot in layer 0 of a stacked cross cache; false when the
/// sequence is outside [0, cache_seqs), the position is negative or its slot (position mod
/// window, or the position when window == 0) is not below cache_slots.
__device__ __forceinline__ bool cross_cache_slot(int32_t seq, int32_t pos, uint32_t cache_seqs,
                                                 uint32_t cache_slots, uint32_t window,
                                                 uint32_t seq_stride, uint32_t head_dim,
                                                 size_t *offset) {
    if (seq < 0 || uint32_t(seq) >= cache_seqs || pos < 0) return false;
    const uint32_t slot = slot_of(uint32_t(pos), window);
    if (slot >= cache_slots) return false;
    *offset = cache_row(uint32_t(seq), 0, slot, seq_stride, 0, head_dim);
    return true;
}

/// The element (layer, kv_head, d) of a slot whose offset `slot_offset` came from
/// `self_cache_slot` (layer 0) or `cross_cache_slot`.
__device__ __forceinline__ size_t cache_element(size_t slot_offset, uint32_t layer,
                                                uint32_t layer_stride, uint32_t kv_head,
                                                uint32_t head_stride, uint32_t d) {
    return slot_offset + size_t(layer) * layer_stride + cache_head(0, kv_head, 0, head_stride) + d;
}

}  // namespace stag
