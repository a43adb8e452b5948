// Self-tests of the emulator: warp shuffles, votes and __activemask. Entry points are
// documented in selftest.h (the column numbers below match it).
#include "selftest.h"
#include "stag_kernel.cuh"

struct SelftestWarpParams {
    const int32_t *in;
    int32_t *out;
};

STAG_KERNEL(selftest_warp_ops, SelftestWarpParams) {
    constexpr unsigned full = 0xFFFFFFFFu;
    const unsigned n = blockDim.x * blockDim.y * blockDim.z;
    const unsigned t =
        threadIdx.x + threadIdx.y * blockDim.x + threadIdx.z * blockDim.x * blockDim.y;
    const unsigned b = blockIdx.x + blockIdx.y * gridDim.x + blockIdx.z * gridDim.x * gridDim.y;
    const unsigned g = b * n + t;
    const int lane = static_cast<int>(t % 32);
    const int v = p.in[g];
    int32_t *out = p.out + static_cast<size_t>(g) * STAG_EMU_SELFTEST_WARP_COLUMNS;

    out[0] = __shfl_sync(full, v, 31 - lane);
    out[1] = __shfl_down_sync(full, v, 3);
    out[2] = __shfl_up_sync(full, v, 5, 16);
    out[3] = __shfl_sync(full, v, 5, 8);
    out[4] = __shfl_sync(full, v, lane + 9, 16);
    out[5] = __shfl_xor_sync(full, v, 20, 16);
    out[6] = __shfl_down_sync(full, v, 2, 8);
    out[7] = static_cast<int32_t>(__ballot_sync(full, v & 1));
    out[8] = __any_sync(full, v > 1000);
    out[9] = __all_sync(full, v >= 0);

    // The branch is uniform per warp: only full warps reduce.
    const bool full_warp = (t / 32) * 32 + 32 <= n;
    int sum = 0;
    if (full_warp) {
        sum = v;
        for (int offset = 16; offset > 0; offset >>= 1) {
            sum += __shfl_xor_sync(full, sum, offset);
        }
    }
    out[10] = sum;

    const float f = __shfl_xor_sync(full, static_cast<float>(v) * 0.5f, 1);
    out[11] = static_cast<int32_t>(__float_as_uint(f));
    const __nv_bfloat16 h = __shfl_down_sync(full, __float2bfloat16(static_cast<float>(v)), 1);
    out[12] = static_cast<int32_t>(__bfloat16_as_ushort(h));
    const int4 q = __shfl_sync(full, make_int4(v, v + 1, v + 2, v + 3), lane + 1);
    out[13] = q.w;

    out[14] = 0;
    if (lane % 2 == 0) {
        out[14] = __shfl_sync(0x55555555u, v, lane ^ 2);
    }
    out[15] = 0;
    if (lane % 3 == 0) {
        out[15] = static_cast<int32_t>(__activemask());
    }
}

extern "C" int stag_emu_selftest_warp_ops(const StagEmuLaunch *cfg, const int32_t *in,
                                          int32_t *out) {
    if (cfg == nullptr || in == nullptr || out == nullptr) {
        return -1;
    }
    const SelftestWarpParams params{in, out};
    return stag_emu_launch_selftest_warp_ops(cfg, &params);
}

STAG_KERNEL(selftest_warp_match, SelftestWarpParams) {
    constexpr unsigned full = 0xFFFFFFFFu;
    const unsigned n = blockDim.x;
    const unsigned g = blockIdx.x * n + threadIdx.x;
    const int lane = static_cast<int>(threadIdx.x % 32);
    const int v = p.in[g];
    int32_t *out = p.out + static_cast<size_t>(g) * STAG_EMU_SELFTEST_MATCH_COLUMNS;

    const unsigned peers = __match_any_sync(full, v % 5);
    out[0] = static_cast<int32_t>(peers);
    out[1] = static_cast<int32_t>(__reduce_add_sync(full, static_cast<unsigned>(v)));
    // Disjoint groups reducing at one call site at once (the warp-aggregation pattern).
    out[2] = static_cast<int32_t>(__reduce_add_sync(peers, static_cast<unsigned>(v)));
    const unsigned long long wide = static_cast<unsigned long long>(v % 3) << 40;
    out[3] = static_cast<int32_t>(__match_any_sync(full, wide));
    // A subset of the warp: the odd lanes match among themselves.
    out[4] = 0;
    if (lane % 2 == 1) {
        out[4] = static_cast<int32_t>(__match_any_sync(0xAAAAAAAAu, v % 2 == 0 ? 7 : v));
    }
}

extern "C" int stag_emu_selftest_warp_match(const StagEmuLaunch *cfg, const int32_t *in,
                                            int32_t *out) {
    if (cfg == nullptr || in == nullptr || out == nullptr) {
        return -1;
    }
    const SelftestWarpParams params{in, out};
    return stag_emu_launch_selftest_warp_match(cfg, &params);
}
