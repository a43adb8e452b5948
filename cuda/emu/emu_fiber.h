// Internal to the emulator (not included by kernels): fiber contexts and their stacks.
//
// On x86-64 a context switch is a few pushes and pops in hand-written assembly (no syscalls,
// no signal mask handling), which keeps barriers cheap. Elsewhere, or with
// -DSTAG_EMU_UCONTEXT, the portable but much slower ucontext functions are used.
#pragma once

#include <cstddef>
#include <cstdint>
#include <vector>

#if !defined(__x86_64__) || defined(STAG_EMU_UCONTEXT)
#define STAG_EMU_USE_UCONTEXT 1
#include <ucontext.h>
#else
#define STAG_EMU_USE_UCONTEXT 0
#endif

#if defined(__SANITIZE_ADDRESS__)
#define STAG_EMU_ASAN 1
#elif defined(__has_feature)
#if __has_feature(address_sanitizer)
#define STAG_EMU_ASAN 1
#endif
#endif
#ifndef STAG_EMU_ASAN
#define STAG_EMU_ASAN 0
#endif

namespace stag_emu::detail {

using FiberFn = void (*)(void *arg);

// A suspended execution context: a fiber, or the scheduler on the host thread's own stack.
struct Context {
    void *sp = nullptr;  // saved stack pointer (assembly switch)
#if STAG_EMU_USE_UCONTEXT
    ucontext_t uc;
    FiberFn fn = nullptr;
    void *arg = nullptr;
#endif
#if STAG_EMU_ASAN
    const void *stack_bottom = nullptr;
    size_t stack_size = 0;
#endif
};

// Prepares `c` so that switching to it runs fn(arg) on the given stack. fn must not return.
void context_init(Context &c, void *stack_bottom, size_t stack_size, FiberFn fn, void *arg);
// Prepares `c` to receive the state of the calling host thread (the scheduler's context).
void context_init_native(Context &c);
// Saves the running context in `from` and resumes `to`.
void context_switch(Context &from, Context &to);
// As context_switch, when `from` will never be resumed.
void context_switch_final(Context &from, Context &to);
// First call on a freshly started fiber (sanitizer bookkeeping).
void context_started();

// Fiber stacks, reserved once and reused by every block a worker runs. Each stack has an
// inaccessible guard page below it so an overflow faults instead of corrupting a neighbour.
class StackPool {
public:
    StackPool() = default;
    StackPool(const StackPool &) = delete;
    StackPool &operator=(const StackPool &) = delete;
    ~StackPool();

    // Makes at least `count` stacks available; false if memory could not be mapped.
    bool ensure(uint32_t count);
    void *bottom(uint32_t i) const { return bottoms_[i]; }
    static size_t stack_size();

private:
    struct Mapping {
        void *base;
        size_t bytes;
    };
    std::vector<Mapping> mappings_;
    std::vector<void *> bottoms_;
};

}  // namespace stag_emu::detail
