// Internal to the emulator (not included by kernels): the per-host-thread block scheduler.
#pragma once

#include <atomic>
#include <cstdint>
#include <memory>
#include <mutex>
#include <source_location>
#include <string>
#include <vector>

#include "emu.h"
#include "emu_fiber.h"

namespace stag_emu::detail {

// What every worker of one launch shares.
struct LaunchState {
    const char *kernel = "";
    KernelEntry entry = nullptr;
    const void *params = nullptr;
    dim3 grid, block;
    uint32_t threads_per_block = 0;
    uint32_t dynamic_smem_bytes = 0;
    uint32_t shuffle_seed = 0;
    uint64_t block_count = 0;
    std::atomic<uint64_t> next_block{0};
    std::atomic<bool> failed{false};
    std::mutex error_mutex;
    int error_code = STAG_EMU_OK;
    std::string error;  // the first failure wins

    void fail(int code, std::string message);
};

// True while the calling host thread is running a block (i.e. when called from a kernel).
bool inside_kernel();

// printf into a std::string.
std::string format(const char *fmt, ...) __attribute__((format(printf, 1, 2)));

enum class FiberState : uint8_t { Runnable, AtBarrier, AtWarpOp, AtActiveMask, Exited };

// One emulated CUDA thread.
struct Fiber {
    Context ctx;
    uint3 tid{};
    uint32_t linear = 0;  // x + y * bx + z * bx * by; lane = linear % 32
    FiberState state = FiberState::Runnable;
    // Where the fiber waits (barrier or warp collective), for matching and for messages.
    std::source_location site;
    // Pending warp collective.
    WarpOp op = WarpOp::SyncWarp;
    uint8_t size = 0;  // bytes shuffled
    unsigned mask = 0;
    int arg = 0;  // source lane / delta / lane mask / vote predicate
    int width = 32;
    // Barrier reduction result, or the warp collective's result for this lane.
    int bar_result = 0;
    alignas(16) unsigned char value[16];
    alignas(16) unsigned char result[16];
};

// Per-warp bit sets of lanes (bit i = lane i).
struct WarpState {
    uint32_t present = 0;  // lanes that exist (the last warp of a block may be partial)
    uint32_t exited = 0;
    uint32_t at_barrier = 0;
    uint32_t at_op = 0;
    uint32_t at_activemask = 0;
};

// Runs blocks one after another on the calling host thread. Owns the fiber stacks and the
// dynamic shared memory buffer, reused across blocks and launches (workers are pooled).
class Worker {
public:
    Worker() = default;
    Worker(const Worker &) = delete;
    Worker &operator=(const Worker &) = delete;

    // Sizes the stacks and buffers for `launch`; false (with `error`) if memory ran out.
    bool prepare(const LaunchState &launch, std::string &error);
    // Runs one block to the end. On failure returns false; error() names what went wrong.
    bool run_block(const LaunchState &launch, uint64_t block_linear);
    const std::string &error() const { return error_; }

    // Entry points for the running fiber (the sync functions of emu_sync.h).
    int barrier(BarrierOp op, int pred, std::source_location loc);
    // `value` and `out`: 16-byte buffers (or null for __syncwarp).
    void warp_collective(WarpOp op, unsigned mask, const unsigned char *value, unsigned size,
                         int arg, int width, unsigned char *out, std::source_location loc);
    unsigned active_mask(std::source_location loc);
    // A fault first records its message, then abandons the block (the running fiber and all
    // others stay where they are; the scheduler reports the failure).
    void record_fault(const std::string &what);
    [[noreturn]] void abandon_block();
    [[noreturn]] void exit_current();

private:
    // Run queue: a ring of fiber indices. In shuffled mode pop() first swaps a random entry
    // to the front.
    void push(uint32_t fiber) {
        queue_[(head_ + count_) & queue_mask_] = fiber;
        ++count_;
    }
    Fiber *pop();
    uint64_t next_random();
    void enter(Fiber *f);
    void suspend();
    void release_barrier();
    void complete_warp_op(uint32_t warp, uint32_t group, const Fiber &caller);
    void blocked_in_warp(uint32_t warp);
    void resolve_activemask(uint32_t warp);
    // Error paths, kept out of line so the hot paths keep small stack frames (every fiber's
    // frames compete for cache).
    [[noreturn, gnu::noinline, gnu::cold]] void fault_divergent_barrier(const Fiber &f,
                                                                        BarrierOp op);
    [[noreturn, gnu::noinline, gnu::cold]] void fault_invalid_collective(const Fiber &f);
    [[noreturn, gnu::noinline, gnu::cold]] void fault_mismatched_collective(uint32_t warp,
                                                                            const Fiber &caller,
                                                                            const Fiber &g);
    std::string stall_message() const;
    std::string describe_lane(uint32_t warp, uint32_t lane) const;
    std::string block_prefix() const;
    static std::string thread_name(const Fiber &f);
    static std::string op_name(const Fiber &f);
    static void fiber_main(void *arg);

    StackPool stacks_;
    std::vector<Fiber> fibers_;
    std::vector<WarpState> warps_;
    std::vector<uint32_t> queue_;
    uint32_t queue_mask_ = 0;
    uint32_t head_ = 0;
    uint32_t count_ = 0;
    std::unique_ptr<unsigned char[]> smem_storage_;
    unsigned char *smem_ = nullptr;  // 64-byte aligned view into smem_storage_
    size_t smem_capacity_ = 0;

    // The running block.
    const LaunchState *launch_ = nullptr;
    Context scheduler_;
    Fiber *current_ = nullptr;
    uint3 block_idx_{};
    uint32_t threads_ = 0;
    uint32_t exited_ = 0;
    uint32_t bar_arrived_ = 0;
    BarrierOp bar_op_ = BarrierOp::Sync;
    int bar_acc_ = 0;
    const Fiber *bar_first_ = nullptr;  // first arrival of the current barrier phase
    bool shuffled_ = false;
    uint64_t rng_ = 0;
    bool failed_ = false;
    std::string error_;
};

}  // namespace stag_emu::detail
