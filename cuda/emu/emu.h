// Host emulation of the CUDA execution model, so that the kernels in cuda/*.cu compile with g++
// and run on the CPU. Included by stag_kernel.cuh when not compiling with nvcc; see README.md
// in this folder for what is supported and how it differs from a GPU.
//
// A launch runs the blocks of the grid on a few host threads, one block at a time per thread;
// the threads of a block are fibers scheduled cooperatively at barriers and warp collectives.
#pragma once

#if defined(__CUDACC__) || defined(__CUDA_ARCH__)
#error "emu.h is the host emulation of CUDA; nvcc builds use the real CUDA headers"
#endif

#include <cstdint>
#include <cstdio>  // device-side printf

#include "emu_atomic.h"
#include "emu_half.h"
#include "emu_math.h"
#include "emu_sync.h"
#include "emu_types.h"
#include "stag_params.h"

// ---- CUDA keywords ----
#define __global__
#define __device__
#define __host__
#define __constant__
#define __grid_constant__
#define __forceinline__ inline __attribute__((always_inline))
#define __launch_bounds__(...)
#define __align__(n) __attribute__((aligned(n)))
// One block runs at a time on a host thread, so per-host-thread storage is per-block storage.
// Unlike a GPU, such memory starts zeroed when a host thread first uses it and then keeps
// whatever the previous block on that host thread left in it.
#define __shared__ static thread_local
// __restrict__ is a g++ keyword already. __noinline__ is left undefined on purpose: libstdc++
// uses __attribute__((__noinline__)), which a macro of that name would break.

#ifdef __cplusplus
extern "C" {
#endif

// Return codes of stag_emu_launch_<kernel>().
enum {
    STAG_EMU_OK = 0,
    // The launch configuration is invalid (zero or too large dimensions, too many threads per
    // block, too much dynamic shared memory, null pointers).
    STAG_EMU_ERROR_INVALID_CONFIG = 1,
    // The kernel misbehaved: deadlocked or divergent barrier, invalid warp collective, failed
    // assert, __trap(), uncaught C++ exception.
    STAG_EMU_ERROR_KERNEL = 2,
    // The host ran out of a resource (fiber stacks, threads, memory).
    STAG_EMU_ERROR_RESOURCES = 3,
};

// Message of the latest launch made from the calling host thread; "" if it succeeded.
const char *stag_emu_last_error(void);

#ifdef __cplusplus
}
#endif

namespace stag_emu {

using KernelEntry = void (*)(const void *params);

// Runs `entry(params)` once per thread of every block of the grid described by `cfg`.
// `max_threads` (0 = none) is the kernel's launch bound: launching more threads per block
// fails, as it does on a GPU. Returns one of the STAG_EMU_* codes.
int launch(const char *kernel_name, const StagEmuLaunch *cfg, KernelEntry entry,
           const void *params, uint32_t max_threads);

}  // namespace stag_emu

// A kernel: `body` is a function of `const Params p` run by every thread. The exported
// stag_emu_launch_<name> runs a whole grid (see stag_emu::launch).
#define STAG_KERNEL_BOUNDED(name, Params, max_threads)                                         \
    static void stag_emu_kernel_##name(const Params p);                                        \
    static void stag_emu_entry_##name(const void *params) {                                    \
        stag_emu_kernel_##name(*static_cast<const Params *>(params));                          \
    }                                                                                          \
    extern "C" int stag_emu_launch_##name(const StagEmuLaunch *cfg, const Params *p) {         \
        return ::stag_emu::launch(#name, cfg, &stag_emu_entry_##name, p, (max_threads));       \
    }                                                                                          \
    static void stag_emu_kernel_##name(const Params p)

#define STAG_KERNEL(name, Params) STAG_KERNEL_BOUNDED(name, Params, 0)

// The launch's dynamic shared memory (StagEmuLaunch::dynamic_smem_bytes), 16-byte aligned.
// Filled with 0xFF bytes at the start of every block (NaN as float) so reads of never-written
// memory show up.
#define STAG_DYNAMIC_SMEM(T, name) T *name = reinterpret_cast<T *>(::stag_emu::dynamic_smem)
