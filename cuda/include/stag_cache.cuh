// Where a KV-cache element lives: the one definition every kernel that writes (or reads) a
// cache uses, so that the writers (rope_append, memory_kv_append, the gemv epilogues) and the
// attention readers cannot disagree.
//
// Dense (paging.block_table null): element [layer][seq][kv_head][slot][d] lies at
//   layer * layer_stride + seq * seq_stride + kv_head * head_stride + slot * head_dim + d.
// Paged: each layer is a pool of pages [kv_heads][page_size][head_dim], seq_stride apart, and
// slot s of sequence seq lies in page block_table[seq * block_table_stride + s / page_size] at
// slot s % page_size (stag_params.h, "Conventions"). Dense is the paged rule with page = seq
// and page_size = cache_slots, so only cache_slot_row below tells the two apart.
// Self caches hold position k in slot k, or slot k mod cache_slots when they are a ring
// (sliding-window self caches). Cross caches hold it in slot k mod W (W = window != 0), else
// slot k, and the slot must lie below cache_slots.
#pragma once

#include "stag_kernel.cuh"
#include "stag_params.h"

namespace stag {

/// The slot of position `pos` in a cache whose ring is `ring_len` slots long (0: not a ring,
/// position k in slot k). Every writer (through the functions below) and every attention
/// reader (for the keys it loads, then through cache_slot_row below) uses it. Works for the
/// 32- and 64-bit positions kernels carry.
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

/// The element [page][0][slot in page][0] of one layer of a cache that holds slot `slot` of
/// sequence `seq`, in `*offset` (add kv_head * head_stride + d for an element); false when
/// the slot has no page (a paged table entry outside [0, cache_pages), or an index past
/// block_table_stride), and then nothing of it may be read or written. `seq` must already be
/// below the table's rows (cache_seqs). Dense caches take the first branch: the offset the
/// layout always had, without a table load or a division. Every writer (through the two
/// functions below) and every reader (cache_key_row, or directly for the decode attention's
/// paged keys) comes here, so this and slot_of are the whole addressing rule.
__device__ __forceinline__ bool cache_slot_row(const StagKvPaging &paging, uint32_t seq,
                                               uint32_t slot, size_t seq_stride,
                                               uint32_t head_dim, size_t *offset) {
    if (paging.block_table == nullptr) {
        *offset = cache_head(seq, 0, seq_stride, 0) + cache_slot_offset(slot, head_dim);
        return true;
    }
    if (paging.page_size == 0) return false;
    const uint32_t index = slot / paging.page_size;
    if (index >= paging.block_table_stride) return false;
    const int32_t page = paging.block_table[size_t(seq) * paging.block_table_stride + index];
    if (page < 0 || uint32_t(page) >= paging.cache_pages) return false;
    *offset = cache_head(uint32_t(page), 0, seq_stride, 0) +
              cache_slot_offset(slot - index * paging.page_size, head_dim);
    return true;
}

/// The element [seq][kv_head][slot][0] of one layer of a cache (self or cross), dense or
/// paged: where a key or value row lies, in `*offset`; false when the slot has no page. The
/// prefill attention calls it per key; the decode attention's dense path takes cache_head
/// once per (sequence, kv head) and adds cache_slot_offset per key (one 64-bit base per head
/// keeps its unrolled key loop in registers).
__device__ __forceinline__ bool cache_key_row(const StagKvPaging &paging, uint32_t seq,
                                              uint32_t kv_head, uint32_t slot,
                                              size_t seq_stride, size_t head_stride,
                                              uint32_t head_dim, size_t *offset) {
    if (!cache_slot_row(paging, seq, slot, seq_stride, head_dim, offset)) return false;
    *offset += cache_head(0, kv_head, 0, head_stride);
    return true;
}

/// Offset of (seq, position)'s slot in a self cache (the element [page][0][slot][0]) in
/// `*offset`; false (nothing may be written) when the sequence is outside [0, cache_seqs),
/// the position has no slot (negative, or past a dense cache's end) or the slot no page.
__device__ __forceinline__ bool self_cache_slot(int32_t seq, int32_t pos, uint32_t cache_seqs,
                                                uint32_t cache_slots, uint32_t ring,
                                                uint32_t seq_stride, uint32_t head_dim,
                                                const StagKvPaging &paging, size_t *offset) {
    if (seq < 0 || uint32_t(seq) >= cache_seqs || pos < 0 || cache_slots == 0 ||
        (ring == 0 && uint32_t(pos) >= cache_slots)) {
        return false;
    }
    const uint32_t slot = slot_of(uint32_t(pos), ring != 0 ? cache_slots : 0u);
    return cache_slot_row(paging, uint32_t(seq), slot, seq_stride, head_dim, offset);
}

/// Offset of (seq, position)'s slot in layer 0 of a stacked cross cache; false when the
/// sequence is outside [0, cache_seqs), the position is negative or its slot (position mod
/// window, or the position when window == 0) is not below cache_slots or has no page.
__device__ __forceinline__ bool cross_cache_slot(int32_t seq, int32_t pos, uint32_t cache_seqs,
                                                 uint32_t cache_slots, uint32_t window,
                                                 uint32_t seq_stride, uint32_t head_dim,
                                                 const StagKvPaging &paging, size_t *offset) {
    if (seq < 0 || uint32_t(seq) >= cache_seqs || pos < 0) return false;
    const uint32_t slot = slot_of(uint32_t(pos), window);
    if (slot >= cache_slots) return false;
    return cache_slot_row(paging, uint32_t(seq), slot, seq_stride, head_dim, offset);
}

/// The element (layer, kv_head, d) of a slot whose offset `slot_offset` came from
/// `self_cache_slot` (layer 0) or `cross_cache_slot` (a page's offset when paged: every layer
/// is a pool laid out alike, so one table serves them all).
__device__ __forceinline__ size_t cache_element(size_t slot_offset, uint32_t layer,
                                                uint32_t layer_stride, uint32_t kv_head,
                                                uint32_t head_stride, uint32_t d) {
    return slot_offset + size_t(layer) * layer_stride + cache_head(0, kv_head, 0, head_stride) + d;
}

}  // namespace stag
