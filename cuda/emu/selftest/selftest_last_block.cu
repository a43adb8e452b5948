// Self-test of the "last block to finish finalises" hand-off (cuda/include/stag_atomic.cuh):
// many blocks write partials with plain stores, one thread per block increments a per-group
// counter, and the block that sees the last count reads every partial of its group and resets
// the counter for the next launch. Entry point documented in selftest.h.
#include <cstring>
#include <vector>

#include "selftest.h"
#include "stag_atomic.cuh"
#include "stag_kernel.cuh"

namespace {

__device__ __forceinline__ uint32_t partial_word(uint32_t launch, uint32_t group, uint32_t split,
                                                 uint32_t w) {
    uint32_t x = launch * 0x9E3779B9u ^ group * 0x85EBCA6Bu ^ split * 0xC2B2AE35u ^ w;
    x ^= x >> 15;
    x *= 0x2C1B3C6Du;
    return x ^ (x >> 12);
}

}  // namespace

struct SelftestLastBlockParams {
    uint32_t *partials;  // [groups][splits][words]
    uint32_t *counters;  // [groups], zero before the first launch
    uint32_t *seen;      // [groups][splits]: how often each pre-increment value was returned
    uint32_t *out;       // [0] finalisations, [1] wrong words read, [2] wrong acquire loads
    uint32_t words;
    uint32_t launch;
    uint32_t mode;  // 0: acq_rel increment; 1: release increment + acquire load
    uint32_t reserved;
};

STAG_KERNEL(selftest_last_block, SelftestLastBlockParams) {
    __shared__ uint32_t is_last;
    const uint32_t splits = gridDim.x;
    const uint32_t split = blockIdx.x;
    const uint32_t group = blockIdx.y;
    uint32_t *mine = p.partials + (size_t(group) * splits + split) * p.words;
    for (uint32_t w = threadIdx.x; w < p.words; w += blockDim.x) {
        mine[w] = partial_word(p.launch, group, split, w);
    }
    __syncthreads();
    if (threadIdx.x == 0) {
        uint32_t old;
        if (p.mode == 0) {
            old = stag::atomic_add_acq_rel_gpu(&p.counters[group], 1u);
        } else {
            old = stag::atomic_add_release_gpu(&p.counters[group], 1u);
            if (old + 1 == splits && stag::load_acquire_gpu(&p.counters[group]) != splits) {
                atomicAdd(&p.out[2], 1u);
            }
        }
        if (old < splits) atomicAdd(&p.seen[size_t(group) * splits + old], 1u);
        is_last = old + 1 == splits;
    }
    __syncthreads();
    if (!is_last) return;
    uint32_t wrong = 0;
    for (uint32_t s = 0; s < splits; ++s) {
        const uint32_t *theirs = p.partials + (size_t(group) * splits + s) * p.words;
        for (uint32_t w = threadIdx.x; w < p.words; w += blockDim.x) {
            wrong += theirs[w] != partial_word(p.launch, group, s, w);
        }
    }
    atomicAdd(&p.out[1], wrong);
    __syncthreads();
    if (threadIdx.x == 0) {
        atomicAdd(&p.out[0], 1u);
        stag::store_relaxed_gpu(&p.counters[group], 0u);
    }
}

extern "C" int stag_emu_selftest_last_block(const StagEmuLaunch *cfg, uint32_t mode,
                                            uint32_t words, uint32_t launches, uint64_t out[5]) {
    if (cfg == nullptr || out == nullptr || cfg->grid[2] != 1) return -1;
    const size_t splits = cfg->grid[0];
    const size_t groups = cfg->grid[1];
    std::vector<uint32_t> partials(groups * splits * words);
    std::vector<uint32_t> counters(groups, 0u);
    std::vector<uint32_t> seen(groups * splits);
    uint32_t totals[3] = {0, 0, 0};
    uint64_t bad_seen = 0;
    for (uint32_t launch = 0; launch < launches; ++launch) {
        // Poison: a finaliser that reads a partial before its writer's release sees it wrong,
        // and so does one that reads the previous launch's values.
        std::memset(partials.data(), 0xFF, partials.size() * sizeof(uint32_t));
        std::fill(seen.begin(), seen.end(), 0u);
        const SelftestLastBlockParams params{partials.data(), counters.data(), seen.data(),
                                             totals,          words,           launch,
                                             mode,            0};
        const int rc = stag_emu_launch_selftest_last_block(cfg, &params);
        if (rc != 0) return rc;
        // Every pre-increment value 0..splits-1 exactly once per group and launch.
        for (uint32_t n : seen) bad_seen += n != 1;
    }
    uint64_t nonzero = 0;
    for (uint32_t c : counters) nonzero += c != 0;
    out[0] = totals[0];
    out[1] = totals[1];
    out[2] = totals[2];
    out[3] = bad_seen;
    out[4] = nonzero;
    return 0;
}
