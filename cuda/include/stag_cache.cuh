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
/// reader (the first visible key's slot, from which it walks the ring) uses it, so a cache
/// layout change (paging, say) is made here. Works for the 32- and 64-bit positions kernels
/// carry.
template <typename P>
__device__ __forceinline__ P slot_of(P pos, P ring_len) {
    return ring_len != 0 ? pos % ring_len : pos;
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
    *offset = size_t(seq) * seq_stride + size_t(slot) * head_dim;
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
    *offset = size_t(seq) * seq_stride + size_t(slot) * head_dim;
    return true;
}

/// The element (layer, kv_head, d) of a slot whose offset `slot_offset` came from
/// `self_cache_slot` (layer 0) or `cross_cache_slot`.
__device__ __forceinline__ size_t cache_element(size_t slot_offset, uint32_t layer,
                                                uint32_t layer_stride, uint32_t kv_head,
                                                uint32_t head_stride, uint32_t d) {
    return slot_offset + size_t(layer) * layer_stride + size_t(kv_head) * head_stride + d;
}

}  // namespace stag
