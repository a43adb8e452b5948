// Scoped atomics with explicit memory orders, written once for every kernel that hands data
// between blocks of one launch (e.g. "the last block to finish finalises"). On the GPU they
// are the PTX instructions of the same name (PTX ISA, memory consistency model; the C++ mapping
// is NVIDIA's atomics ABI: a C++ acq_rel read-modify-write at device scope is
// atom.acq_rel.gpu, an acquire load ld.acquire.gpu, a relaxed store st.relaxed.gpu). Under
// emulation they are std::atomic_ref operations with those C++ orders (cuda/emu/emu_atomic.h).
//
// Block-wide use: the threads of a block write their data, meet at __syncthreads(), and one
// thread then performs the release (bar.sync orders the other threads' writes before it, and
// release is cumulative in the PTX model); after an acquire by one thread, a __syncthreads()
// orders every thread's later reads after it.
//
// `last_block_arrive` is the same hand-over written with __threadfence() and a relaxed counter,
// for kernels whose blocks already meet at a barrier.
#pragma once

#include "stag_kernel.cuh"

namespace stag {

// *a += v at device scope, acquire and release: the caller's earlier writes (and those ordered
// before them) are visible to whoever acquires this value or a later one, and the caller sees
// everything released by the increments before it. Returns the value held before.
__device__ __forceinline__ uint32_t atomic_add_acq_rel_gpu(uint32_t *a, uint32_t v) {
#if defined(__CUDA_ARCH__)
    uint32_t old;
    asm volatile("atom.acq_rel.gpu.global.add.u32 %0, [%1], %2;"
                 : "=r"(old)
                 : "l"(a), "r"(v)
                 : "memory");
    return old;
#else
    return stag_emu::atomic::add_acq_rel(a, v);
#endif
}

// *a += v at device scope with release only. Returns the value held before.
__device__ __forceinline__ uint32_t atomic_add_release_gpu(uint32_t *a, uint32_t v) {
#if defined(__CUDA_ARCH__)
    uint32_t old;
    asm volatile("atom.release.gpu.global.add.u32 %0, [%1], %2;"
                 : "=r"(old)
                 : "l"(a), "r"(v)
                 : "memory");
    return old;
#else
    return stag_emu::atomic::add_release(a, v);
#endif
}

// An acquire load at device scope.
__device__ __forceinline__ uint32_t load_acquire_gpu(const uint32_t *a) {
#if defined(__CUDA_ARCH__)
    uint32_t v;
    asm volatile("ld.acquire.gpu.global.u32 %0, [%1];" : "=r"(v) : "l"(a) : "memory");
    return v;
#else
    return stag_emu::atomic::load_acquire(a);
#endif
}

// A relaxed (but atomic, never torn) store at device scope.
__device__ __forceinline__ void store_relaxed_gpu(uint32_t *a, uint32_t v) {
#if defined(__CUDA_ARCH__)
    asm volatile("st.relaxed.gpu.global.u32 [%0], %1;" : : "l"(a), "r"(v) : "memory");
#else
    stag_emu::atomic::store_relaxed(a, v);
#endif
}

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
