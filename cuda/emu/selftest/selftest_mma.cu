// Self-tests of the warp-level matrix primitives in stag_mma.cuh (entry points documented in
// selftest.h). The fragment loads and stores here follow the PTX ISA tables independently of
// the emulator's implementation, and the Rust side compares with plain matrix products.
#include "selftest.h"
#include "stag_kernel.cuh"
#include "stag_mma.cuh"

namespace {

struct MmaParams {
    uint32_t f16;
    const uint16_t *a;
    const uint16_t *b;
    const float *c;
    float *d;
    uint32_t poison_lane;
    uint32_t swap_lanes;
};

struct LdmatrixParams {
    uint32_t matrices;
    uint32_t trans;
    const uint16_t *m;
    uint32_t *out;
};

struct CpAsyncParams {
    const uint32_t *src;
    uint32_t *out;
};

uint32_t pair(const uint16_t *m, int i0, int i1) { return uint32_t(m[i0]) | uint32_t(m[i1]) << 16; }

}  // namespace

STAG_KERNEL(selftest_mma, MmaParams) {
    const int warp = int(threadIdx.x) / 32;
    const int lane = int(threadIdx.x) % 32;
    const int g = lane / 4, t = lane % 4;
    uint32_t a[4] = {~0u, ~0u, ~0u, ~0u};
    uint32_t b[2] = {~0u, ~0u};
    float c[4];
    if (uint32_t(lane) != p.poison_lane) {
        // a0,a1: (g, 2t..); a2,a3: (g+8, 2t..); a4,a5: (g, 2t+8..); a6,a7: (g+8, 2t+8..).
        a[0] = pair(p.a, g * 16 + 2 * t, g * 16 + 2 * t + 1);
        a[1] = pair(p.a, (g + 8) * 16 + 2 * t, (g + 8) * 16 + 2 * t + 1);
        a[2] = pair(p.a, g * 16 + 2 * t + 8, g * 16 + 2 * t + 9);
        a[3] = pair(p.a, (g + 8) * 16 + 2 * t + 8, (g + 8) * 16 + 2 * t + 9);
        // b0,b1: (k = 2t.., n = g); b2,b3: (k = 2t+8.., n = g).
        b[0] = pair(p.b, (2 * t) * 8 + g, (2 * t + 1) * 8 + g);
        b[1] = pair(p.b, (2 * t + 8) * 8 + g, (2 * t + 9) * 8 + g);
    }
    // c0,c1: (g, 2t..); c2,c3: (g+8, 2t..).
    for (int i = 0; i < 4; ++i) c[i] = p.c[(g + 8 * (i / 2)) * 8 + 2 * t + (i % 2)];
    if (p.swap_lanes != 0) {
        const int l1 = int(p.swap_lanes & 0xFFu), l2 = int(p.swap_lanes >> 8);
        const int src = lane == l1 ? l2 : (lane == l2 ? l1 : lane);
        for (int i = 0; i < 4; ++i) a[i] = __shfl_sync(0xFFFFFFFFu, a[i], src);
    }
    float d[4];
    if (p.f16 != 0) {
        stag::mma_f16_16816(d, a, b, c);
    } else {
        stag::mma_bf16_16816(d, a, b, c);
    }
    float *out = p.d + warp * 128;
    for (int i = 0; i < 4; ++i) out[(g + 8 * (i / 2)) * 8 + 2 * t + (i % 2)] = d[i];
}

STAG_KERNEL(selftest_ldmatrix, LdmatrixParams) {
    const int lane = int(threadIdx.x);
    // A 32-row table of 8 values (16 bytes) per row; row r of matrix j goes to slot
    // (5 (8j + r) + 3) % 32, a permutation of the 32 rows.
    STAG_DYNAMIC_SMEM(uint16_t, table);
    const int j = lane / 8, r = lane % 8;
    const int slot = (5 * lane + 3) % 32;
    for (int c = 0; c < 8; ++c) table[slot * 8 + c] = p.m[(j * 8 + r) * 8 + c];
    __syncwarp();
    const void *row = table + slot * 8;
    uint32_t out[4] = {0, 0, 0, 0};
    if (p.matrices == 1) {
        uint32_t x[1];
        p.trans ? stag::ldmatrix_x1_trans(x, row) : stag::ldmatrix_x1(x, row);
        out[0] = x[0];
    } else if (p.matrices == 2) {
        uint32_t x[2];
        p.trans ? stag::ldmatrix_x2_trans(x, row) : stag::ldmatrix_x2(x, row);
        out[0] = x[0];
        out[1] = x[1];
    } else {
        uint32_t x[4];
        p.trans ? stag::ldmatrix_x4_trans(x, row) : stag::ldmatrix_x4(x, row);
        for (int i = 0; i < 4; ++i) out[i] = x[i];
    }
    for (int i = 0; i < 4; ++i) p.out[lane * 4 + i] = out[i];
}

STAG_KERNEL(selftest_cp_async, CpAsyncParams) {
    const int t = int(threadIdx.x);
    STAG_DYNAMIC_SMEM(uint32_t, smem);
    if (t >= 8) return;
    uint32_t *g1 = smem + 4 * t;
    uint32_t *g2 = smem + 32 + 4 * t;
    stag::cp_async_cg_16(g1, p.src + 4 * t);
    stag::cp_async_commit();
    if (t == 7) {
        stag::cp_async_cg_16(g2, p.src + 32 + 4 * t, false);
    } else {
        stag::cp_async_ca_16(g2, p.src + 32 + 4 * t);
    }
    stag::cp_async_commit();
    auto dump = [&](int s, const uint32_t *from) {
        for (int w = 0; w < 4; ++w) p.out[(s * 8 + t) * 4 + w] = from[w];
    };
    dump(0, g1);
    stag::cp_async_wait<1>();
    dump(1, g1);
    dump(2, g2);
    stag::cp_async_wait<0>();
    dump(3, g2);
}

extern "C" int stag_emu_selftest_mma(uint32_t f16, const uint16_t *a, const uint16_t *b,
                                     const float *c, float *d, uint32_t poison_lane,
                                     uint32_t swap_lanes) {
    if (a == nullptr || b == nullptr || c == nullptr || d == nullptr) return -1;
    const StagEmuLaunch cfg{{1, 1, 1}, {64, 1, 1}, 0, 0, 1, 0};
    const MmaParams params{f16, a, b, c, d, poison_lane, swap_lanes};
    return stag_emu_launch_selftest_mma(&cfg, &params);
}

extern "C" int stag_emu_selftest_ldmatrix(uint32_t matrices, uint32_t trans, const uint16_t *m,
                                          uint32_t *out) {
    if (m == nullptr || out == nullptr || !(matrices == 1 || matrices == 2 || matrices == 4)) {
        return -1;
    }
    const StagEmuLaunch cfg{{1, 1, 1}, {32, 1, 1}, 32 * 16, 0, 1, 0};
    const LdmatrixParams params{matrices, trans, m, out};
    return stag_emu_launch_selftest_ldmatrix(&cfg, &params);
}

extern "C" int stag_emu_selftest_cp_async(const uint32_t *src, uint32_t *out) {
    if (src == nullptr || out == nullptr) return -1;
    const StagEmuLaunch cfg{{1, 1, 1}, {32, 1, 1}, 256, 0, 1, 0};
    const CpAsyncParams params{src, out};
    return stag_emu_launch_selftest_cp_async(&cfg, &params);
}
