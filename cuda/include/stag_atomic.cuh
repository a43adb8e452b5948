// Cross-block ordering for kernels whose last block of a group finishes the group's work.
// Kept small on purpose: each primitive is one documented CUDA idiom.
#pragma once

#include "stag_kernel.cuh"

namespace stag {

/// Called by every thread of a block once it has published its results (plain stores or
/// relaxed atomics to global memory). Returns true in every thread of the one block that
/// arrives last among the `blocks` blocks counting on `counter`; that block then sees everything
/// the others published before arriving. The last block puts the counter back to 0, so the next
/// launch (or graph replay) finds it reset without a memset.
///
/// Why it is correct: each block's thread 0 issues __threadfence() after the block's barrier
/// (so all of the block's earlier writes are ordered before its arrival) and then a relaxed
/// atomicAdd; the block that reads `blocks - 1` fences again before reading the others' data
/// (the fence-fence synchronisation of the PTX memory model, as in CUDA's threadFenceReduction
/// sample). Data written by other blocks must be read with loads that bypass L1 (`__ldcg`) or
/// with atomics.
__device__ __forceinline__ bool last_block_arrive(unsigned int *counter, unsigned int blocks) {
    __syncthreads();
    int last = 0;
    if (threadIdx.x == 0 && threadIdx.y == 0 && threadIdx.z == 0) {
        __threadfence();
        last = atomicAdd(counter, 1u) == blocks - 1 ? 1 : 0;
        if (last) {
            atomicExch(counter, 0u);
            __threadfence();
        }
    }
    return __syncthreads_or(last) != 0;
}

}  // namespace stag
