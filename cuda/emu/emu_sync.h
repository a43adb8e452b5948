// Thread/block built-ins, barriers and warp-level collectives for the host emulator.
//
// Every CUDA thread of a block runs as a fiber on one host thread; the functions below are the
// only places where a fiber hands control to the block scheduler (see emu_block.cpp). They
// take a defaulted std::source_location so error messages can name the offending call site.
#pragma once

#include <cstdint>
#include <cstring>
#include <source_location>
#include <type_traits>

#include "emu_types.h"

namespace stag_emu {

// Built-in variables of the running fiber. Set by the scheduler: the block-wide values once
// per block, threadIdx at every switch. `constinit` lets the compiler access them directly
// instead of through a TLS wrapper function.
extern constinit thread_local uint3 threadIdx;
extern constinit thread_local uint3 blockIdx;
extern constinit thread_local dim3 blockDim;
extern constinit thread_local dim3 gridDim;
// The block's dynamic shared memory (16-byte aligned; see STAG_DYNAMIC_SMEM).
extern constinit thread_local unsigned char *dynamic_smem;
// A number no other block run by this process shares (set when a block starts), so per-thread
// state kept outside the fibers (the pending cp.async copies of stag_mma.cuh) can tell a new
// block from the previous one on the same host thread.
extern constinit thread_local uint64_t block_serial;

enum class BarrierOp : uint8_t { Sync, Count, And, Or };
enum class WarpOp : uint8_t {
    ShflIdx,
    ShflUp,
    ShflDown,
    ShflXor,
    Ballot,
    Any,
    All,
    SyncWarp,
    MatchAny,
    ReduceAdd,
};

// Blocks until every thread of the block reaches the same barrier; returns the reduction of
// `pred` for the Count/And/Or forms.
int block_barrier(BarrierOp op, int pred, std::source_location loc);
// Blocks until all lanes in `mask` arrive, then exchanges the values (`arg` is the source lane,
// delta or lane mask). `value` and `out` are 16-byte buffers of which the first `size` bytes
// matter (fixed-size copies are much cheaper than memcpy calls of a variable size).
void warp_shuffle(WarpOp op, unsigned mask, const unsigned char *value, unsigned size, int arg,
                  int width, unsigned char *out, std::source_location loc);
unsigned warp_vote(WarpOp op, unsigned mask, int pred, std::source_location loc);
// __match_any_sync: the lanes of `mask` whose `size` bytes of `value` equal the caller's.
unsigned warp_match_any(unsigned mask, const unsigned char *value, unsigned size,
                        std::source_location loc);
// __reduce_add_sync: the sum (modulo 2^32) of `value` over the lanes of `mask`.
unsigned warp_reduce_add(unsigned mask, unsigned value, std::source_location loc);
void warp_sync(unsigned mask, std::source_location loc);
unsigned active_mask(std::source_location loc);
// Fails the launch with `what` (device-side trap, failed assert). Outside a kernel it aborts.
[[noreturn]] void kernel_trap(const char *what, std::source_location loc);
[[noreturn]] void assert_fail(const char *expr, const char *file, unsigned line,
                              const char *function);

template <class T>
inline T shuffle(WarpOp op, unsigned mask, T var, int arg, int width, std::source_location loc) {
    static_assert(std::is_trivially_copyable_v<T> && sizeof(T) <= 16,
                  "warp shuffles move trivially copyable values of at most 16 bytes");
    alignas(16) unsigned char in[16] = {};
    alignas(16) unsigned char res[16];
    std::memcpy(in, &var, sizeof(T));
    warp_shuffle(op, mask, in, sizeof(T), arg, width, res, loc);
    T out;
    std::memcpy(&out, res, sizeof(T));
    return out;
}

}  // namespace stag_emu

using stag_emu::blockDim;
using stag_emu::blockIdx;
using stag_emu::gridDim;
using stag_emu::threadIdx;
inline constexpr int warpSize = 32;

inline void __syncthreads(std::source_location loc = std::source_location::current()) {
    stag_emu::block_barrier(stag_emu::BarrierOp::Sync, 0, loc);
}
inline int __syncthreads_count(int pred,
                               std::source_location loc = std::source_location::current()) {
    return stag_emu::block_barrier(stag_emu::BarrierOp::Count, pred, loc);
}
inline int __syncthreads_and(int pred,
                             std::source_location loc = std::source_location::current()) {
    return stag_emu::block_barrier(stag_emu::BarrierOp::And, pred, loc);
}
inline int __syncthreads_or(int pred, std::source_location loc = std::source_location::current()) {
    return stag_emu::block_barrier(stag_emu::BarrierOp::Or, pred, loc);
}

inline void __syncwarp(unsigned mask = 0xFFFFFFFFu,
                       std::source_location loc = std::source_location::current()) {
    stag_emu::warp_sync(mask, loc);
}

// Shuffles follow PTX shfl.sync exactly: `width` splits the warp into segments; an index
// shuffle wraps its source lane within the segment; up/down/xor return the caller's own value
// when the source lane falls outside the segment (xor may read lower segments). A source lane
// that does not take part (outside `mask`, or beyond the end of the block) yields all-ones bytes
// (NaN for floats); on a GPU that value is undefined.
template <class T>
inline T __shfl_sync(unsigned mask, T var, int srcLane, int width = warpSize,
                     std::source_location loc = std::source_location::current()) {
    return stag_emu::shuffle(stag_emu::WarpOp::ShflIdx, mask, var, srcLane, width, loc);
}
template <class T>
inline T __shfl_up_sync(unsigned mask, T var, unsigned delta, int width = warpSize,
                        std::source_location loc = std::source_location::current()) {
    return stag_emu::shuffle(stag_emu::WarpOp::ShflUp, mask, var, static_cast<int>(delta), width,
                             loc);
}
template <class T>
inline T __shfl_down_sync(unsigned mask, T var, unsigned delta, int width = warpSize,
                          std::source_location loc = std::source_location::current()) {
    return stag_emu::shuffle(stag_emu::WarpOp::ShflDown, mask, var, static_cast<int>(delta),
                             width, loc);
}
template <class T>
inline T __shfl_xor_sync(unsigned mask, T var, int laneMask, int width = warpSize,
                         std::source_location loc = std::source_location::current()) {
    return stag_emu::shuffle(stag_emu::WarpOp::ShflXor, mask, var, laneMask, width, loc);
}

inline unsigned __ballot_sync(unsigned mask, int pred,
                              std::source_location loc = std::source_location::current()) {
    return stag_emu::warp_vote(stag_emu::WarpOp::Ballot, mask, pred, loc);
}
inline int __any_sync(unsigned mask, int pred,
                      std::source_location loc = std::source_location::current()) {
    return static_cast<int>(stag_emu::warp_vote(stag_emu::WarpOp::Any, mask, pred, loc));
}
inline int __all_sync(unsigned mask, int pred,
                      std::source_location loc = std::source_location::current()) {
    return static_cast<int>(stag_emu::warp_vote(stag_emu::WarpOp::All, mask, pred, loc));
}

// PTX match.any.sync.b32 / .b64: the lanes of `mask` whose `value` is bitwise equal to the
// caller's. Every lane of `mask` must take part with the same mask and value width; lanes of a
// warp may call it at the same site with disjoint masks (each mask is its own group).
template <class T>
inline unsigned __match_any_sync(unsigned mask, T value,
                                 std::source_location loc = std::source_location::current()) {
    static_assert(std::is_arithmetic_v<T> && (sizeof(T) == 4 || sizeof(T) == 8),
                  "__match_any_sync takes a 32- or 64-bit int or float");
    alignas(16) unsigned char in[16] = {};
    std::memcpy(in, &value, sizeof(T));
    return stag_emu::warp_match_any(mask, in, sizeof(T), loc);
}

// PTX redux.sync.add.u32 / .s32 (sm_80+): the sum over the lanes of `mask`, wrapping modulo
// 2^32. Same participation rules as the other collectives.
inline unsigned __reduce_add_sync(unsigned mask, unsigned value,
                                  std::source_location loc = std::source_location::current()) {
    return stag_emu::warp_reduce_add(mask, value, loc);
}
inline int __reduce_add_sync(unsigned mask, int value,
                             std::source_location loc = std::source_location::current()) {
    return static_cast<int>(stag_emu::warp_reduce_add(mask, static_cast<unsigned>(value), loc));
}

// The lanes of the warp that are executing this same call site together: the emulator waits
// until every other live lane of the warp is blocked or has exited, then groups the lanes
// waiting here by call site.
inline unsigned __activemask(std::source_location loc = std::source_location::current()) {
    return stag_emu::active_mask(loc);
}

[[noreturn]] inline void __trap(std::source_location loc = std::source_location::current()) {
    stag_emu::kernel_trap("__trap() called", loc);
}

// Device-side assert: a failing assert fails the launch (as on a GPU, where the kernel aborts)
// instead of aborting the host process. Include <cassert> before stag_kernel.cuh, or not at
// all: a later #include <cassert> restores the aborting host assert.
#include <cassert>
#undef assert
#ifdef NDEBUG
#define assert(e) (static_cast<void>(0))
#else
#define assert(e) \
    ((e) ? static_cast<void>(0) : ::stag_emu::assert_fail(#e, __FILE__, __LINE__, __func__))
#endif
