// Warp-level matrix primitives: mma.sync m16n8k16 (bf16 and f16 inputs, f32 accumulators),
// ldmatrix (.x1/.x2/.x4, optionally .trans) and cp.async (16-byte .ca/.cg, commit_group,
// wait_group). On the GPU each function is one inline-PTX instruction. Under the host emulator
// the same functions are implemented here from the fragment layouts of the PTX ISA
// ("Matrix Fragments for mma.m16n8k16 with floating point type", "Warp-level matrix load
// instruction: ldmatrix", "Data Movement and Conversion Instructions: cp.async"):
//
//   groupID = lane >> 2, threadID_in_group (t) = lane % 4.
//   A (16×16, row-major), 4 .b32 registers = elements a0..a7, two per register (the lower index
//     in the low 16 bits): row = g for a0,a1,a4,a5 and g + 8 for a2,a3,a6,a7;
//     col = 2t + (i & 1) for a0..a3 and 2t + 8 + (i & 1) for a4..a7.
//   B (16×8, "col"), 2 registers = b0..b3: row (k) = 2t + (i & 1) for b0,b1 and 2t + 8 + (i & 1)
//     for b2,b3; col (n) = g.
//   C/D (16×8 f32), 4 registers c0..c3: row = g for c0,c1 and g + 8 for c2,c3; col = 2t + (i & 1).
//   ldmatrix: matrix j (8×8 16-bit elements) takes its row r from the address lane 8j + r
//     supplies (x1: lanes 0-7, x2: 0-15, x4: 0-31; other lanes' addresses are ignored); lane l
//     receives in register j the elements (row l/4, cols 2(l%4), 2(l%4)+1), or with .trans the
//     elements (rows 2(l%4), 2(l%4)+1, col l/4).
//
// The emulated mma and ldmatrix are real warp collectives: every lane publishes a pointer to
// its operands, the warp meets at a __syncwarp (all 32 lanes, so a divergent or partial warp
// fails the launch), each lane computes its own result from the other lanes' operands, and a
// second __syncwarp keeps the operands alive until every lane has read them. A lane that calls
// a different primitive at the same time fails the launch (__trap).
//
// The emulated cp.async poisons its destination (0xFF bytes: NaN in bf16, f16 and f32) when
// issued and copies when a cp_async_wait retires its group, so a kernel that reads the
// destination before the matching wait (or without a barrier after it, in another thread)
// reads poison. Shared-memory addresses must be 16-byte aligned for cp.async and ldmatrix rows.
#pragma once

#include "stag_kernel.cuh"

#ifndef __CUDA_ARCH__
#include <cstring>
#include <vector>
#endif

namespace stag {

#ifdef __CUDA_ARCH__

__device__ __forceinline__ uint32_t smem_addr(const void *p) {
    return static_cast<uint32_t>(__cvta_generic_to_shared(p));
}

// D = A·B + C for a 16×16 (bf16) by 16×8 (bf16) product, f32 accumulators.
__device__ __forceinline__ void mma_bf16_16816(float (&d)[4], const uint32_t (&a)[4],
                                               const uint32_t (&b)[2], const float (&c)[4]) {
    asm volatile(
        "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, "
        "{%8,%9}, {%10,%11,%12,%13};\n"
        : "=f"(d[0]), "=f"(d[1]), "=f"(d[2]), "=f"(d[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]), "f"(c[0]),
          "f"(c[1]), "f"(c[2]), "f"(c[3]));
}

__device__ __forceinline__ void mma_f16_16816(float (&d)[4], const uint32_t (&a)[4],
                                              const uint32_t (&b)[2], const float (&c)[4]) {
    asm volatile(
        "mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, "
        "{%8,%9}, {%10,%11,%12,%13};\n"
        : "=f"(d[0]), "=f"(d[1]), "=f"(d[2]), "=f"(d[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]), "f"(c[0]),
          "f"(c[1]), "f"(c[2]), "f"(c[3]));
}

__device__ __forceinline__ void ldmatrix_x1(uint32_t (&r)[1], const void *row) {
    asm volatile("ldmatrix.sync.aligned.m8n8.x1.shared.b16 {%0}, [%1];\n"
                 : "=r"(r[0])
                 : "r"(smem_addr(row)));
}
__device__ __forceinline__ void ldmatrix_x2(uint32_t (&r)[2], const void *row) {
    asm volatile("ldmatrix.sync.aligned.m8n8.x2.shared.b16 {%0,%1}, [%2];\n"
                 : "=r"(r[0]), "=r"(r[1])
                 : "r"(smem_addr(row)));
}
__device__ __forceinline__ void ldmatrix_x4(uint32_t (&r)[4], const void *row) {
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0,%1,%2,%3}, [%4];\n"
                 : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
                 : "r"(smem_addr(row)));
}
__device__ __forceinline__ void ldmatrix_x1_trans(uint32_t (&r)[1], const void *row) {
    asm volatile("ldmatrix.sync.aligned.m8n8.x1.trans.shared.b16 {%0}, [%1];\n"
                 : "=r"(r[0])
                 : "r"(smem_addr(row)));
}
__device__ __forceinline__ void ldmatrix_x2_trans(uint32_t (&r)[2], const void *row) {
    asm volatile("ldmatrix.sync.aligned.m8n8.x2.trans.shared.b16 {%0,%1}, [%2];\n"
                 : "=r"(r[0]), "=r"(r[1])
                 : "r"(smem_addr(row)));
}
__device__ __forceinline__ void ldmatrix_x4_trans(uint32_t (&r)[4], const void *row) {
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0,%1,%2,%3}, [%4];\n"
                 : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
                 : "r"(smem_addr(row)));
}

// 16 bytes global -> shared, cached in L1 and L2 (.ca) or L2 only (.cg).
__device__ __forceinline__ void cp_async_ca_16(void *dst, const void *src) {
    asm volatile("cp.async.ca.shared.global [%0], [%1], 16;\n" ::"r"(smem_addr(dst)), "l"(src));
}
// With `valid == false` nothing is read and the 16 bytes are zero-filled (src-size 0).
__device__ __forceinline__ void cp_async_cg_16(void *dst, const void *src, bool valid = true) {
    asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(smem_addr(dst)),
                 "l"(src), "r"(valid ? 16 : 0));
}
__device__ __forceinline__ void cp_async_commit() {
    asm volatile("cp.async.commit_group;\n" ::);
}
// Waits until at most N of this thread's committed groups are pending.
template <int N>
__device__ __forceinline__ void cp_async_wait() {
    asm volatile("cp.async.wait_group %0;\n" ::"n"(N));
}

#else  // host emulation

namespace mma_emu {

enum class Op : uint8_t { Mma, Ldmatrix };

// What a lane publishes to its warp for one collective.
struct Operands {
    Op op;
    int variant;  // mma: 0 bf16, 1 f16; ldmatrix: matrices | trans << 4
    const uint32_t *a;
    const uint32_t *b;
    const float *c;
    const void *row;
};

// Per host thread (a block runs on one host thread): [warp][lane] -> the lane's operands.
inline thread_local const Operands *published[32][32];

inline unsigned linear_thread() {
    return threadIdx.x + threadIdx.y * blockDim.x + threadIdx.z * blockDim.x * blockDim.y;
}

// The shared part of every collective: publish, meet, let `compute` read the warp, meet again.
template <class F>
inline void collective(const Operands &mine, F &&compute) {
    const unsigned threads = blockDim.x * blockDim.y * blockDim.z;
    if (threads % 32 != 0) __trap();  // mma/ldmatrix need whole warps
    const unsigned t = linear_thread();
    const unsigned warp = t / 32, lane = t % 32;
    published[warp][lane] = &mine;
    __syncwarp(0xFFFFFFFFu);
    for (unsigned l = 0; l < 32; ++l) {
        const Operands *o = published[warp][l];
        if (o->op != mine.op || o->variant != mine.variant) __trap();
    }
    compute(published[warp], lane);
    __syncwarp(0xFFFFFFFFu);
}

inline float element(uint32_t reg, int half, bool f16) {
    const uint16_t bits = static_cast<uint16_t>(half ? reg >> 16 : reg & 0xFFFFu);
    return f16 ? stag_emu::f16_bits_to_f32(bits) : stag_emu::bf16_bits_to_f32(bits);
}

// Element (r, k) of A, (k, n) of B and the register holding (r, n) of C/D, from the tables above.
inline float a_at(const Operands *const *w, int r, int k, bool f16) {
    const int lane = (r % 8) * 4 + (k % 8) / 2;
    const int reg = (r / 8) + 2 * (k / 8);
    return element(w[lane]->a[reg], k % 2, f16);
}
inline float b_at(const Operands *const *w, int k, int n, bool f16) {
    const int lane = n * 4 + (k % 8) / 2;
    const int reg = k / 8;
    return element(w[lane]->b[reg], k % 2, f16);
}

inline void mma(float (&d)[4], const uint32_t (&a)[4], const uint32_t (&b)[2],
                const float (&c)[4], bool f16) {
    const Operands mine{Op::Mma, f16 ? 1 : 0, a, b, c, nullptr};
    float res[4];
    collective(mine, [&](const Operands *const *w, unsigned lane) {
        const int g = int(lane) / 4, t = int(lane) % 4;
        for (int i = 0; i < 4; ++i) {
            const int r = g + 8 * (i / 2);
            const int n = 2 * t + (i % 2);
            // Products of two 8-bit-mantissa values are exact in f32; the sum runs in k order.
            float acc = c[i];
            for (int k = 0; k < 16; ++k) acc = fmaf(a_at(w, r, k, f16), b_at(w, k, n, f16), acc);
            res[i] = acc;
        }
    });
    for (int i = 0; i < 4; ++i) d[i] = res[i];
}

template <int M>
inline void ldmatrix(uint32_t (&r)[M], const void *row, bool trans) {
    if ((reinterpret_cast<uintptr_t>(row) & 15u) != 0 && linear_thread() % 32 < unsigned(8 * M)) {
        __trap();  // each row is 16 contiguous, 16-byte aligned bytes
    }
    const Operands mine{Op::Ldmatrix, M | (trans ? 16 : 0), nullptr, nullptr, nullptr, row};
    uint32_t res[M];
    collective(mine, [&](const Operands *const *w, unsigned lane) {
        for (int j = 0; j < M; ++j) {
            uint16_t e[2];
            for (int h = 0; h < 2; ++h) {
                // Element (row, col) of matrix j lies in the row lane 8j + row supplied.
                const int rr = trans ? 2 * int(lane % 4) + h : int(lane / 4);
                const int cc = trans ? int(lane / 4) : 2 * int(lane % 4) + h;
                std::memcpy(&e[h], static_cast<const unsigned char *>(w[8 * j + rr]->row) + 2 * cc,
                            2);
            }
            res[j] = uint32_t(e[0]) | uint32_t(e[1]) << 16;
        }
    });
    for (int j = 0; j < M; ++j) r[j] = res[j];
}

// Pending cp.async copies of one thread.
struct Copy {
    void *dst;
    const void *src;  // null: zero-fill
};
struct ThreadCopies {
    uint64_t block = 0;  // block_serial the state belongs to
    std::vector<Copy> open;
    std::vector<std::vector<Copy>> committed;  // oldest first
};

inline ThreadCopies &copies() {
    static thread_local std::vector<ThreadCopies> per_thread(1024);
    ThreadCopies &s = per_thread[linear_thread()];
    if (s.block != stag_emu::block_serial) {
        // A new block: whatever a previous block left pending never lands here.
        s.block = stag_emu::block_serial;
        s.open.clear();
        s.committed.clear();
    }
    return s;
}

inline void cp_async_16(void *dst, const void *src, bool valid) {
    if ((reinterpret_cast<uintptr_t>(dst) & 15u) != 0 ||
        (valid && (reinterpret_cast<uintptr_t>(src) & 15u) != 0)) {
        __trap();  // 16-byte copies need 16-byte aligned addresses
    }
    std::memset(dst, 0xFF, 16);
    copies().open.push_back(Copy{dst, valid ? src : nullptr});
}

inline void commit() {
    ThreadCopies &s = copies();
    s.committed.push_back(std::move(s.open));
    s.open.clear();
}

inline void wait(int pending) {
    ThreadCopies &s = copies();
    while (s.committed.size() > size_t(pending)) {
        for (const Copy &c : s.committed.front()) {
            if (c.src != nullptr) {
                std::memcpy(c.dst, c.src, 16);
            } else {
                std::memset(c.dst, 0, 16);
            }
        }
        s.committed.erase(s.committed.begin());
    }
}

}  // namespace mma_emu

inline void mma_bf16_16816(float (&d)[4], const uint32_t (&a)[4], const uint32_t (&b)[2],
                           const float (&c)[4]) {
    mma_emu::mma(d, a, b, c, false);
}
inline void mma_f16_16816(float (&d)[4], const uint32_t (&a)[4], const uint32_t (&b)[2],
                          const float (&c)[4]) {
    mma_emu::mma(d, a, b, c, true);
}
inline void ldmatrix_x1(uint32_t (&r)[1], const void *row) { mma_emu::ldmatrix<1>(r, row, false); }
inline void ldmatrix_x2(uint32_t (&r)[2], const void *row) { mma_emu::ldmatrix<2>(r, row, false); }
inline void ldmatrix_x4(uint32_t (&r)[4], const void *row) { mma_emu::ldmatrix<4>(r, row, false); }
inline void ldmatrix_x1_trans(uint32_t (&r)[1], const void *row) {
    mma_emu::ldmatrix<1>(r, row, true);
}
inline void ldmatrix_x2_trans(uint32_t (&r)[2], const void *row) {
    mma_emu::ldmatrix<2>(r, row, true);
}
inline void ldmatrix_x4_trans(uint32_t (&r)[4], const void *row) {
    mma_emu::ldmatrix<4>(r, row, true);
}
inline void cp_async_ca_16(void *dst, const void *src) { mma_emu::cp_async_16(dst, src, true); }
inline void cp_async_cg_16(void *dst, const void *src, bool valid = true) {
    mma_emu::cp_async_16(dst, src, valid);
}
inline void cp_async_commit() { mma_emu::commit(); }
template <int N>
inline void cp_async_wait() {
    mma_emu::wait(N);
}

#endif

// Two floats as one register of a bf16 pair (the first in the low half), as the A operand of
// an mma wants them.
__device__ __forceinline__ uint32_t pack_bf16x2(float lo, float hi) {
    const __nv_bfloat162 v = __floats2bfloat162_rn(lo, hi);
    uint32_t r;
    memcpy(&r, &v, sizeof r);
    return r;
}

}  // namespace stag
