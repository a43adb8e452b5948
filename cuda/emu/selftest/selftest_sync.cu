// Self-tests of the emulator: barriers, shared memory races and kernels that must fail.
// Entry points are documented in selftest.h.
#include "selftest.h"
#include "stag_kernel.cuh"

namespace {

__device__ __forceinline__ unsigned linear_thread() {
    return threadIdx.x + threadIdx.y * blockDim.x + threadIdx.z * blockDim.x * blockDim.y;
}
__device__ __forceinline__ unsigned block_threads() {
    return blockDim.x * blockDim.y * blockDim.z;
}
__device__ __forceinline__ unsigned linear_block() {
    return blockIdx.x + blockIdx.y * gridDim.x + blockIdx.z * gridDim.x * gridDim.y;
}

}  // namespace

// ---- block_sum ----

struct SelftestBlockSumParams {
    const float *in;
    float *block_sums;
    uint32_t *thread_coords;
    uint32_t *positive_counts;
};

STAG_KERNEL(selftest_block_sum, SelftestBlockSumParams) {
    __shared__ float partial[1024];
    const unsigned t = linear_thread();
    const unsigned n = block_threads();
    const unsigned g = linear_block() * n + t;
    const float v = p.in[g];
    p.thread_coords[g] = threadIdx.x | threadIdx.y << 10 | threadIdx.z << 20;
    partial[t] = v;
    const int positives = __syncthreads_count(v > 0.0f);
    // Tree over the next power of two; slots past n are skipped, so any n works.
    unsigned width = 1;
    while (width < n) {
        width <<= 1;
    }
    for (unsigned s = width / 2; s > 0; s >>= 1) {
        if (t < s && t + s < n) {
            partial[t] += partial[t + s];
        }
        __syncthreads();
    }
    if (t == 0) {
        p.block_sums[linear_block()] = partial[0];
        p.positive_counts[linear_block()] = static_cast<uint32_t>(positives);
    }
}

extern "C" int stag_emu_selftest_block_sum(const StagEmuLaunch *cfg, const float *in,
                                           float *block_sums, uint32_t *thread_coords,
                                           uint32_t *positive_counts) {
    if (cfg == nullptr || in == nullptr || block_sums == nullptr || thread_coords == nullptr ||
        positive_counts == nullptr) {
        return -1;
    }
    const SelftestBlockSumParams params{in, block_sums, thread_coords, positive_counts};
    return stag_emu_launch_selftest_block_sum(cfg, &params);
}

// ---- missing_sync ----

struct SelftestMissingSyncParams {
    uint32_t *out;
    int use_barrier;
};

STAG_KERNEL(selftest_missing_sync, SelftestMissingSyncParams) {
    STAG_DYNAMIC_SMEM(uint32_t, slots);
    const unsigned t = threadIdx.x;
    slots[t] = t + 1;
    if (p.use_barrier) {
        __syncthreads();
    }
    p.out[t] = slots[(t + 1) % blockDim.x];
}

extern "C" int stag_emu_selftest_missing_sync(uint32_t threads, uint32_t shuffle_seed,
                                              int use_barrier, uint32_t *out) {
    if (out == nullptr || threads == 0 || threads > 1024) {
        return -1;
    }
    const StagEmuLaunch cfg{{1, 1, 1}, {threads, 1, 1}, threads * 4u, shuffle_seed, 1, 0};
    const SelftestMissingSyncParams params{out, use_barrier};
    return stag_emu_launch_selftest_missing_sync(&cfg, &params);
}

// ---- broken kernels ----

struct SelftestBrokenParams {
    uint32_t scenario;
    int32_t *sink;  // keeps results observable
};

// Bounded, so that launching more than 512 threads per block must fail as on a GPU.
STAG_KERNEL_BOUNDED(selftest_broken, SelftestBrokenParams, 512) {
    const unsigned t = linear_thread();
    const unsigned n = block_threads();
    const unsigned lane = t % 32;
    int v = static_cast<int>(t);
    switch (p.scenario) {
        case STAG_EMU_BROKEN_PARTIAL_BARRIER:
            if (t < 32) {
                __syncthreads();
            }
            break;
        case STAG_EMU_BROKEN_EARLY_EXIT:
            if (t >= n / 2) {
                return;
            }
            __syncthreads();
            break;
        case STAG_EMU_BROKEN_DIFFERENT_BARRIERS:
            if (t < 32) {
                __syncthreads();
            } else {
                __syncthreads();
            }
            break;
        case STAG_EMU_BROKEN_WARP_LANES_EXIT:
            if (lane >= 16) {
                return;
            }
            v += __shfl_xor_sync(0xFFFFFFFFu, v, 1);
            break;
        case STAG_EMU_BROKEN_MIXED_SYNC:
            if (lane < 16) {
                __syncwarp();
            } else {
                __syncthreads();
            }
            break;
        case STAG_EMU_BROKEN_ASSERT:
            assert(t != n - 1);
            break;
        case STAG_EMU_BROKEN_SHUFFLE_WIDTH:
            v = __shfl_sync(0xFFFFFFFFu, v, 0, 12);
            break;
        case STAG_EMU_BROKEN_MASK_WITHOUT_SELF:
            v = __shfl_sync(0x1u, v, 0);
            break;
        case STAG_EMU_BROKEN_TRAP:
            if (t == 0) {
                __trap();
            }
            break;
        case STAG_EMU_BROKEN_MISMATCHED_MASKS:
            if (lane == 0) {
                __syncwarp(0x3u);
            } else {
                __syncwarp();
            }
            break;
        default:
            break;
    }
    atomicAdd(p.sink, v);
}

extern "C" int stag_emu_selftest_broken(const StagEmuLaunch *cfg, uint32_t scenario) {
    if (cfg == nullptr || scenario >= STAG_EMU_BROKEN_SCENARIOS) {
        return -1;
    }
    int32_t sink = 0;
    const SelftestBrokenParams params{scenario, &sink};
    return stag_emu_launch_selftest_broken(cfg, &params);
}

// ---- barrier_loop ----

struct SelftestBarrierLoopParams {
    uint32_t *out;
    uint32_t iterations;
};

STAG_KERNEL(selftest_barrier_loop, SelftestBarrierLoopParams) {
    __shared__ uint32_t s[1024];
    const unsigned t = linear_thread();
    const unsigned n = block_threads();
    const unsigned g = linear_block() * n + t;
    uint32_t v = g;
    for (uint32_t i = 0; i < p.iterations; ++i) {
        s[t] = v;
        __syncthreads();
        v = v * 1664525u + s[(t + 1) % n] + 1013904223u;
        __syncthreads();
    }
    p.out[g] = v;
}

extern "C" int stag_emu_selftest_barrier_loop(const StagEmuLaunch *cfg, uint32_t iterations,
                                              uint32_t *out) {
    if (cfg == nullptr || out == nullptr) {
        return -1;
    }
    const SelftestBarrierLoopParams params{out, iterations};
    return stag_emu_launch_selftest_barrier_loop(cfg, &params);
}
