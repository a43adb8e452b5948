// The attention visibility rule, once for every kernel that masks (decode and prefill
// attention), so the two cannot disagree on which keys a query sees (docs/MODEL.md):
//   self:  positions max(0, i - W + 1) ..= i   (a sliding window of W keys, the query's own
//          included; W = 0: every key up to i)
//   cross: positions max(0, i - W) ..= i - 1   (the staggered cross-attention; W = 0: every
//          memory position before i; none at i = 0)
#pragma once

#include "stag_kernel.cuh"

namespace stag {

// Visible key positions [lo, hi) of a query at position i >= 0.
struct PosRange {
    int64_t lo;
    int64_t hi;
};

__device__ __forceinline__ PosRange visible_positions(uint32_t mode, uint32_t window, int64_t i) {
    const bool cross = mode == STAG_ATTN_CROSS;
    const int64_t hi = cross ? i : i + 1;
    int64_t lo = 0;
    if (window != 0) lo = hi - int64_t(window);
    if (lo < 0) lo = 0;
    return PosRange{lo, hi};
}

}  // namespace stag
