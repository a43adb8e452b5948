/*
 * Self-tests of the CUDA host emulator (compiled only in emulation builds).
 *
 * Each entry point launches one small kernel through the emulator and writes what the kernel
 * computed into caller-provided host buffers; the caller compares with values it computes
 * itself. Unless stated otherwise an entry returns the launch status (0 = STAG_EMU_OK,
 * otherwise a STAG_EMU_ERROR_* code from emu.h, with the message in stag_emu_last_error()).
 * Entries return -1 when their own arguments are unusable (null buffers, sizes out of range).
 *
 * Conventions: "threads" = cfg->block[0] * cfg->block[1] * cfg->block[2], "blocks" =
 * cfg->grid[0] * cfg->grid[1] * cfg->grid[2]. Thread t of a block is its linear index
 * x + y * bx + z * bx * by, block b is x + y * gx + z * gx * gy, and the global index of a thread
 * is b * threads + t. Within a block, lane = t % 32 and warp = t / 32; the last warp of a block is
 * partial when threads is not a multiple of 32.
 *
 * The driver cuda/emu/selftest/run_selftests.cpp exercises all of these.
 */
#ifndef STAG_EMU_SELFTEST_H
#define STAG_EMU_SELFTEST_H

#include <stddef.h>
#include <stdint.h>

#include "stag_params.h"

#ifdef __cplusplus
extern "C" {
#endif

/*
 * Block reduction in shared memory with __syncthreads (any geometry, including blocks that
 * are not a multiple of 32 threads and 2-D/3-D blocks and grids).
 *   in:              blocks * threads floats, in[global index]
 *   block_sums:      blocks floats; block_sums[b] = sum of the block's inputs. Use small
 *                    integer-valued inputs so that every summation order gives the exact sum.
 *   thread_coords:   blocks * threads values; [global index] = tx | ty << 10 | tz << 20, the
 *                    threadIdx the thread saw.
 *   positive_counts: blocks values; [b] = __syncthreads_count(in > 0) over the block.
 */
int stag_emu_selftest_block_sum(const StagEmuLaunch *cfg, const float *in, float *block_sums,
                                uint32_t *thread_coords, uint32_t *positive_counts);

/*
 * A race on shared memory. One block of `threads` threads (1..1024), scheduled with
 * `shuffle_seed`. Thread t writes t + 1 into slot t of dynamic shared memory and then reads slot
 * (t + 1) % threads into out[t] (threads values).
 * With use_barrier != 0 a __syncthreads separates the write from the read, so for every seed
 * out[t] == (t + 1) % threads + 1. Without it the read races the neighbour's write: slots not
 * yet written still hold the 0xFF poison (0xFFFFFFFF), and which ones those are depends on the
 * seed, so different seeds give different (wrong) results.
 */
int stag_emu_selftest_missing_sync(uint32_t threads, uint32_t shuffle_seed, int use_barrier,
                                   uint32_t *out);

/*
 * Broken kernels that must fail with STAG_EMU_ERROR_KERNEL (2) and a message naming the kernel
 * "selftest_broken", the block and the problem — never hang or crash. Returns the launch
 * status. The kernel is declared with a launch bound of 512 threads: a block of more threads
 * must fail with STAG_EMU_ERROR_INVALID_CONFIG (1) instead. The scenarios (all threads of every
 * block take part):
 */
enum {
    /* if (t < 32) __syncthreads(); the others exit. Needs threads > 32. Message contains
     * "__syncthreads" and "reached by 32 of <threads> threads; <threads - 32> exited". */
    STAG_EMU_BROKEN_PARTIAL_BARRIER = 0,
    /* if (t >= threads / 2) return; __syncthreads(); Needs threads >= 2. */
    STAG_EMU_BROKEN_EARLY_EXIT = 1,
    /* if (t < 32) __syncthreads(); else __syncthreads(); (two different barriers). Needs
     * threads > 32. Message contains "different barriers". */
    STAG_EMU_BROKEN_DIFFERENT_BARRIERS = 2,
    /* Lanes 16..31 exit while lanes 0..15 call __shfl_xor_sync(0xffffffff, ...). Needs threads
     * >= 32. Message contains "__shfl_xor_sync" and "exited". */
    STAG_EMU_BROKEN_WARP_LANES_EXIT = 3,
    /* Lanes 0..15 call __syncwarp() while lanes 16..31 call __syncthreads(). Needs threads
     * >= 32. Message contains "__syncwarp" and "__syncthreads". */
    STAG_EMU_BROKEN_MIXED_SYNC = 4,
    /* assert(t != threads - 1). Message contains "assertion". */
    STAG_EMU_BROKEN_ASSERT = 5,
    /* __shfl_sync with width 12. Message contains "width". */
    STAG_EMU_BROKEN_SHUFFLE_WIDTH = 6,
    /* __shfl_sync(0x1, ...) from every lane: lanes other than 0 are not in their own mask.
     * Needs threads >= 2. Message contains "does not include the calling lane". */
    STAG_EMU_BROKEN_MASK_WITHOUT_SELF = 7,
    /* __trap() in thread 0. Message contains "__trap". */
    STAG_EMU_BROKEN_TRAP = 8,
    /* Lane 0 calls __syncwarp(0x3), the other lanes __syncwarp(). Needs threads >= 32. */
    STAG_EMU_BROKEN_MISMATCHED_MASKS = 9,
    STAG_EMU_BROKEN_SCENARIOS = 10
};
int stag_emu_selftest_broken(const StagEmuLaunch *cfg, uint32_t scenario);

/*
 * Warp collectives. in: blocks * threads values v; out: blocks * threads * 16 values,
 * out[global * 16 + column]. With get(j) = the input of lane j of the same warp, or -1 if that
 * lane does not exist (partial last warp), lane = t % 32 and full = 0xffffffff, column:
 *   0  __shfl_sync(full, v, 31 - lane)                 get(31 - lane)
 *   1  __shfl_down_sync(full, v, 3)                    lane + 3 <= 31 ? get(lane + 3) : v
 *   2  __shfl_up_sync(full, v, 5, 16)                  lane % 16 >= 5 ? get(lane - 5) : v
 *   3  __shfl_sync(full, v, 5, 8)                      get((lane & ~7) + 5)
 *   4  __shfl_sync(full, v, lane + 9, 16)              get((lane & ~15) + (lane + 9) % 16)
 *   5  __shfl_xor_sync(full, v, 20, 16)                j = lane ^ 20: j <= (lane | 15) ? get(j) : v
 *   6  __shfl_down_sync(full, v, 2, 8)                 lane % 8 + 2 < 8 ? get(lane + 2) : v
 *   7  __ballot_sync(full, v & 1)                      bit j set for each existing lane j with
 *                                                      an odd get(j)
 *   8  __any_sync(full, v > 1000)                      over the existing lanes
 *   9  __all_sync(full, v >= 0)                        over the existing lanes
 *   10 sum of v over the warp by a __shfl_xor_sync butterfly (offsets 16, 8, 4, 2, 1); 0 in a
 *      partial warp
 *   11 bits of __shfl_xor_sync(full, (float)v * 0.5f, 1): bits of (float)get(lane ^ 1) * 0.5f,
 *      or -1 (all-ones poison) if lane ^ 1 does not exist
 *   12 bf16 bits (zero-extended) of __shfl_down_sync(full, __float2bfloat16((float)v), 1):
 *      lane == 31 ? bf16(v) : (lane + 1 exists ? bf16(get(lane + 1)) : 0xFFFF)
 *   13 .w of __shfl_sync(full, int4{v, v + 1, v + 2, v + 3}, lane + 1):
 *      get((lane + 1) % 32) + 3, or -1 if that lane does not exist
 *   14 even lanes: __shfl_sync(0x55555555, v, lane ^ 2) = get(lane ^ 2) (or -1 if that lane
 *      does not exist); odd lanes: 0
 *   15 lanes with lane % 3 == 0: __activemask() inside `if (lane % 3 == 0)`, which is
 *      0x49249249 restricted to the existing lanes; other lanes: 0
 * Any cfg->shuffle_seed must give the same results.
 */
enum { STAG_EMU_SELFTEST_WARP_COLUMNS = 16 };
int stag_emu_selftest_warp_ops(const StagEmuLaunch *cfg, const int32_t *in, int32_t *out);

/*
 * __match_any_sync and __reduce_add_sync, one-dimensional blocks. in: blocks * threads values
 * v; out: blocks * threads * 5 values. With get(j), lane and full as above, existing lanes only:
 *   0  __match_any_sync(full, v % 5)                    lanes j with get(j) % 5 == v % 5
 *   1  __reduce_add_sync(full, (unsigned)v)             sum of get(j) over the warp (mod 2^32)
 *   2  __reduce_add_sync(column 0's mask, (unsigned)v)  sum of get(j) over those lanes
 *   3  __match_any_sync(full, (u64)(v % 3) << 40)       lanes j with get(j) % 3 == v % 3
 *   4  odd lanes: __match_any_sync(0xaaaaaaaa, w) with w = v % 2 == 0 ? 7 : v: the odd lanes j
 *      whose w equals the caller's; even lanes: 0
 */
enum { STAG_EMU_SELFTEST_MATCH_COLUMNS = 5 };
int stag_emu_selftest_warp_match(const StagEmuLaunch *cfg, const int32_t *in, int32_t *out);

/*
 * Atomics from every thread of the grid (run it with cfg->workers > 1 so blocks race on
 * several host threads). n = blocks * threads, g = global index. out (8 values):
 *   0 atomicAdd(unsigned *, 1u) counter                      == n
 *   1 atomicAdd(float *, 1.0f) total, as an integer           == n (exact for n < 2^24)
 *   2 atomicMax(int *, g)                                     == n - 1
 *   3 atomicMin(int *, g) from INT_MAX                        == 0
 *   4 atomicAdd(unsigned long long *, g)                      == n * (n - 1) / 2
 *   5 atomicCAS(unsigned *) increment loop                    == n
 *   6 sum over blocks of a per-block __shared__ atomicAdd counter, added by thread 0 == n
 *   7 atomicExch(unsigned *, g): the last value stored        <  n
 */
int stag_emu_selftest_atomics(const StagEmuLaunch *cfg, uint64_t out[8]);

/*
 * The last-block-finalises hand-off of cuda/include/stag_atomic.cuh, over `launches` launches
 * of cfg (grid (splits, groups, 1)) that reuse one counter per group: every block writes
 * `words` partial words with plain stores, thread 0 increments its group's counter (mode 0:
 * atomic_add_acq_rel_gpu; mode 1: atomic_add_release_gpu, then load_acquire_gpu by the last),
 * and the block that sees the last count checks every partial of its group (poisoned before
 * each launch, different values per launch) and resets the counter with store_relaxed_gpu.
 * out (5 values), summed over launches:
 *   0 finalisations                                       == groups * launches
 *   1 partial words the finalisers read wrong             == 0
 *   2 acquire loads by a finaliser that did not see splits == 0
 *   3 (group, value) pairs not returned exactly once      == 0
 *   4 counters not zero after the last launch             == 0
 * Returns the launch's status, or -1 for a null pointer or grid z != 1.
 */
int stag_emu_selftest_last_block(const StagEmuLaunch *cfg, uint32_t mode, uint32_t words,
                                 uint32_t launches, uint64_t out[5]);

/*
 * Dynamic shared memory of cfg->dynamic_smem_bytes (a multiple of 4). out: blocks * 4 values:
 *   [b * 4 + 0] bytes that did not hold the 0xFF poison at block start   (expect 0)
 *   [b * 4 + 1] 1 if the buffer is 16-byte aligned                        (expect 1)
 *   [b * 4 + 2] 1 if the first word read as a float is NaN (0 if empty)   (expect 1)
 *   [b * 4 + 3] words that did not read back after each thread filled its share with a
 *               block-specific pattern and a __syncthreads                 (expect 0)
 * Blocks run after other blocks on the same host thread, so a missing re-poison would show.
 */
int stag_emu_selftest_dynamic_smem(const StagEmuLaunch *cfg, uint32_t *out);

/*
 * Float -> bf16 / half conversions inside a kernel (grid-stride loop over n values, 4 blocks
 * of 64 threads), to compare bit-for-bit with the Rust `half` crate (bf16::from_f32,
 * f16::from_f32, to_f32):
 *   bf16_bits[i] = __bfloat16_as_ushort(__float2bfloat16(in[i]))
 *   half_bits[i] = __half_as_ushort(__float2half(in[i]))
 *   bf16_back[i] = __bfloat162float(that bf16), half_back[i] = __half2float(that half)
 * pair_mismatches (one value) counts elements where the pair functions (__floats2bfloat162_rn,
 * __bfloat1622float2, __low2float, __high2float and the __half2 equivalents) disagree with the
 * scalar ones (expect 0).
 */
int stag_emu_selftest_convert(const float *in, uint32_t n, uint16_t *bf16_bits,
                              uint16_t *half_bits, float *bf16_back, float *half_back,
                              uint32_t *pair_mismatches);

/* The same conversions directly on the host (no kernel), for sweeps over many values. */
void stag_emu_selftest_convert_host(const float *in, size_t n, uint16_t *bf16_bits,
                                    uint16_t *half_bits);
/* Decodes bit patterns: bf16_f32[i] = bf16 bits[i] as float, half_f32[i] = half bits[i] as
 * float (e.g. all 65536 patterns against half::bf16::to_f32 / half::f16::to_f32). */
void stag_emu_selftest_decode_host(const uint16_t *bits, size_t n, float *bf16_f32,
                                   float *half_f32);

/*
 * Barrier-heavy kernel (also the emulator's benchmark): `iterations` rounds of
 *   s[t] = v; __syncthreads(); v = v * 1664525 + s[(t + 1) % threads] + 1013904223;
 *   __syncthreads();
 * starting from v = global index, then out[global index] = v (uint32 arithmetic, wrapping).
 * The result must not depend on cfg->shuffle_seed or cfg->workers.
 */
int stag_emu_selftest_barrier_loop(const StagEmuLaunch *cfg, uint32_t iterations, uint32_t *out);

/*
 * mma.sync m16n8k16 (stag_mma.cuh) on one block of 64 threads (two warps, both computing the
 * same product so that warps cannot see each other's operands).
 *   f16:  0 = bf16 inputs, 1 = f16 inputs (bit patterns in a and b).
 *   a:    16 × 16 row-major; b: 16 × 8 (k-major: b[k * 8 + n]); c: 16 × 8 f32 accumulators.
 *   d:    2 × 16 × 8 f32, one product per warp.
 *   The kernel loads each lane's fragments from a, b, c with the PTX ISA layouts (registers
 *   start poisoned, 0xFFFFFFFF), runs the mma and stores D with the C/D layout.
 *   poison_lane < 32: that lane's A and B registers stay poisoned (NaN), so exactly the D
 *   elements that depend on them are NaN: rows g and g + 8 (its A elements) and column g (its
 *   B elements), g = poison_lane / 4.
 *   swap_lanes != 0: lanes (swap_lanes & 0xFF) and (swap_lanes >> 8) exchange their A
 *   registers before the mma, a wrong lane mapping that must give a wrong product.
 */
int stag_emu_selftest_mma(uint32_t f16, const uint16_t *a, const uint16_t *b, const float *c,
                          float *d, uint32_t poison_lane, uint32_t swap_lanes);

/*
 * ldmatrix (stag_mma.cuh) on one warp. `matrices` is 1, 2 or 4, trans 0 or 1.
 *   m:   4 matrices of 8 × 8 16-bit values, m[(j * 8 + r) * 8 + c].
 *   out: 32 lanes × 4 registers, out[lane * 4 + j] (registers j >= matrices are 0).
 *   Row r of matrix j is stored in shared memory at row slot (5 (8 j + r) + 3) % 32 of a 32-row
 *   table, and lane 8 j + r supplies that row's address, so the result depends on the
 *   addresses, not on where rows happen to lie.
 */
int stag_emu_selftest_ldmatrix(uint32_t matrices, uint32_t trans, const uint16_t *m,
                               uint32_t *out);

/*
 * cp.async (stag_mma.cuh) on one warp; lanes 0-7 take part. Lane t copies 16 bytes
 * src[4t .. 4t + 4) into group 1 and src[32 + 4t ..) into group 2 (lane 7's group-2 copy is the
 * zero-filling form), committing after each. out is 4 × 8 × 4 words, out[(s * 8 + t) * 4 + w]:
 *   s = 0: the group-1 destination before any wait (poison: 0xFFFFFFFF),
 *   s = 1: the group-1 destination after cp_async_wait<1> (the data),
 *   s = 2: the group-2 destination after cp_async_wait<1> (still poison),
 *   s = 3: the group-2 destination after cp_async_wait<0> (the data; zeros for lane 7).
 */
int stag_emu_selftest_cp_async(const uint32_t *src, uint32_t *out);

#ifdef __cplusplus
}
#endif

#endif /* STAG_EMU_SELFTEST_H */
