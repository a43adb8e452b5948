// Portability layer: the same kernel source builds with nvcc for the GPU and with g++ against
// the host emulator (cuda/emu/). Kernels use only these macros for anything that differs.
#pragma once

#include "stag_params.h"

#if defined(__CUDACC__)
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <stdint.h>

// An exported kernel: unmangled name in the PTX, one by-value params argument.
#define STAG_KERNEL(name, Params) extern "C" __global__ void name(const Params p)
#define STAG_KERNEL_BOUNDED(name, Params, max_threads) \
    extern "C" __global__ void __launch_bounds__(max_threads) name(const Params p)
// Dynamic shared memory of the launch's size, 16-byte aligned.
#define STAG_DYNAMIC_SMEM(T, name)                                   \
    extern __shared__ __align__(16) unsigned char stag_dynamic_smem_[]; \
    T *name = reinterpret_cast<T *>(stag_dynamic_smem_)

#else  // host emulation
#include "emu.h"
#endif
