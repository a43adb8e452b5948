// Fiber context switching and stack management for the CUDA host emulator.
#include "emu_fiber.h"

#include <pthread.h>
#include <sys/mman.h>
#include <unistd.h>

#include <cstdlib>
#include <cstring>

#if STAG_EMU_ASAN
#include <sanitizer/asan_interface.h>
#include <sanitizer/common_interface_defs.h>
#endif

#if !STAG_EMU_USE_UCONTEXT
// stag_emu_context_switch(void **save_sp, void *to_sp): pushes the callee-saved registers on
// the current stack, stores the stack pointer in *save_sp, then pops the same frame from to_sp
// and returns into it.
//
// The SSE/x87 control words (rounding mode, FTZ/DAZ) are deliberately not switched: all fibers
// of a host thread share them, kernels never change them, and saving them (fnstcw/fldcw) made
// a switch several times slower.
//
// A fresh fiber's stack is laid out by context_init so that this "return" lands in
// stag_emu_fiber_trampoline with r12 = argument and r13 = function; the trampoline aligns the
// stack and calls fn(arg), which never returns. Its CFI marks the end of the call chain for
// debuggers and unwinders.
asm(R"(
    .pushsection .text
    .p2align 4
    .globl stag_emu_context_switch
    .hidden stag_emu_context_switch
    .type stag_emu_context_switch, @function
stag_emu_context_switch:
    pushq %rbp
    pushq %rbx
    pushq %r12
    pushq %r13
    pushq %r14
    pushq %r15
    movq %rsp, (%rdi)
    movq %rsi, %rsp
    popq %r15
    popq %r14
    popq %r13
    popq %r12
    popq %rbx
    popq %rbp
    ret
    .size stag_emu_context_switch, .-stag_emu_context_switch

    .p2align 4
    .globl stag_emu_fiber_trampoline
    .hidden stag_emu_fiber_trampoline
    .type stag_emu_fiber_trampoline, @function
stag_emu_fiber_trampoline:
    .cfi_startproc
    .cfi_undefined rip
    movq %r12, %rdi
    andq $-16, %rsp
    callq *%r13
    ud2
    .cfi_endproc
    .size stag_emu_fiber_trampoline, .-stag_emu_fiber_trampoline
    .popsection
)");

extern "C" void stag_emu_context_switch(void **save_sp, void *to_sp);
extern "C" void stag_emu_fiber_trampoline();
#endif

namespace stag_emu::detail {

#if STAG_EMU_USE_UCONTEXT
namespace {
// makecontext passes int arguments only: the Context pointer travels as two halves.
void ucontext_entry(unsigned hi, unsigned lo) {
    auto *c = reinterpret_cast<Context *>((static_cast<uintptr_t>(hi) << 32) | lo);
    c->fn(c->arg);
    std::abort();  // fibers never return
}
}  // namespace
#endif

void context_init(Context &c, void *stack_bottom, size_t stack_size, FiberFn fn, void *arg) {
#if STAG_EMU_ASAN
    // A fiber abandoned by a failed block leaves poisoned frames behind; the next fiber on
    // this stack must start from clean shadow memory.
    __asan_unpoison_memory_region(stack_bottom, stack_size);
    c.stack_bottom = stack_bottom;
    c.stack_size = stack_size;
#endif
#if STAG_EMU_USE_UCONTEXT
    c.fn = fn;
    c.arg = arg;
    getcontext(&c.uc);
    c.uc.uc_stack.ss_sp = stack_bottom;
    c.uc.uc_stack.ss_size = stack_size;
    c.uc.uc_link = nullptr;
    const auto p = reinterpret_cast<uintptr_t>(&c);
    makecontext(&c.uc, reinterpret_cast<void (*)()>(&ucontext_entry), 2,
                static_cast<unsigned>(p >> 32), static_cast<unsigned>(p & 0xFFFFFFFFu));
#else
    const uintptr_t top = (reinterpret_cast<uintptr_t>(stack_bottom) + stack_size) & ~uintptr_t{15};
    void **sp = reinterpret_cast<void **>(top);
    *--sp = nullptr;  // keeps the trampoline's frame 16-byte aligned
    *--sp = reinterpret_cast<void *>(&stag_emu_fiber_trampoline);  // "return" address
    *--sp = nullptr;                                                // rbp
    *--sp = nullptr;                                                // rbx
    *--sp = arg;                                                    // r12
    *--sp = reinterpret_cast<void *>(fn);                           // r13
    *--sp = nullptr;                                                // r14
    *--sp = nullptr;                                                // r15
    c.sp = sp;
#endif
}

void context_init_native([[maybe_unused]] Context &c) {
#if STAG_EMU_ASAN
    pthread_attr_t attr;
    if (pthread_getattr_np(pthread_self(), &attr) == 0) {
        void *addr = nullptr;
        size_t size = 0;
        pthread_attr_getstack(&attr, &addr, &size);
        pthread_attr_destroy(&attr);
        c.stack_bottom = addr;
        c.stack_size = size;
    }
#endif
}

namespace {
inline void raw_switch(Context &from, Context &to) {
#if STAG_EMU_USE_UCONTEXT
    swapcontext(&from.uc, &to.uc);
#else
    stag_emu_context_switch(&from.sp, to.sp);
#endif
}
}  // namespace

void context_switch(Context &from, Context &to) {
#if STAG_EMU_ASAN
    void *fake_stack = nullptr;
    __sanitizer_start_switch_fiber(&fake_stack, to.stack_bottom, to.stack_size);
    raw_switch(from, to);
    __sanitizer_finish_switch_fiber(fake_stack, nullptr, nullptr);
#else
    raw_switch(from, to);
#endif
}

void context_switch_final(Context &from, Context &to) {
#if STAG_EMU_ASAN
    __sanitizer_start_switch_fiber(nullptr, to.stack_bottom, to.stack_size);
#endif
    raw_switch(from, to);
}

void context_started() {
#if STAG_EMU_ASAN
    __sanitizer_finish_switch_fiber(nullptr, nullptr, nullptr);
#endif
}

// ---- stacks ----

size_t StackPool::stack_size() {
    // 64 KiB by default: kernels keep small per-thread arrays, and printf needs a few KiB.
    // STAG_EMU_STACK_KB overrides it (read once per process).
    static const size_t size = [] {
        size_t kb = 64;
        if (const char *env = std::getenv("STAG_EMU_STACK_KB")) {
            const long v = std::strtol(env, nullptr, 10);
            if (v >= 16 && v <= 64 * 1024) {
                kb = static_cast<size_t>(v);
            }
        }
        const size_t page = static_cast<size_t>(sysconf(_SC_PAGESIZE));
        return (kb * 1024 + page - 1) / page * page;
    }();
    return size;
}

bool StackPool::ensure(uint32_t count) {
    if (bottoms_.size() >= count) {
        return true;
    }
    // Grow in steps of at least 128 stacks so a worker maps memory only a few times.
    const uint32_t have = static_cast<uint32_t>(bottoms_.size());
    const uint32_t add = count - have < 128 ? 128 : count - have;
    const size_t page = static_cast<size_t>(sysconf(_SC_PAGESIZE));
    const size_t slot = stack_size() + page;
    const size_t bytes = slot * add;
    void *base = mmap(nullptr, bytes, PROT_READ | PROT_WRITE,
                      MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
    if (base == MAP_FAILED) {
        return false;
    }
    mappings_.push_back(Mapping{base, bytes});
    for (uint32_t i = 0; i < add; ++i) {
        char *guard = static_cast<char *>(base) + i * slot;
        // Without the guard page the stack still works; only overflow detection is lost.
        (void)mprotect(guard, page, PROT_NONE);
        bottoms_.push_back(guard + page);
    }
    return true;
}

StackPool::~StackPool() {
    for (const Mapping &m : mappings_) {
        munmap(m.base, m.bytes);
    }
}

}  // namespace stag_emu::detail
