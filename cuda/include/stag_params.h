/*
 * Kernel argument structs: the one definition shared by the CUDA kernels, the host emulation
 * and (through bindgen) the Rust wrappers. Plain C, fixed-width fields, no padding surprises:
 * every struct is passed by value as the kernel's single argument.
 *
 * Pointers are device addresses on CUDA and host addresses under emulation. Element types are
 * chosen by the kernel's name (e.g. rmsnorm_bf16), so activations are `void*` here.
 */
#ifndef STAG_PARAMS_H
#define STAG_PARAMS_H

#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

/* Launch geometry for the host emulator (ignored on CUDA, where cuLaunchKernel takes it). */
typedef struct StagEmuLaunch {
    uint32_t grid[3];
    uint32_t block[3];
    uint32_t dynamic_smem_bytes;
    /* 0: threads of a block run in index order between barriers; otherwise the seed of a
     * shuffled order, to expose missing barriers. */
    uint32_t shuffle_seed;
    /* Host threads running blocks in parallel; 0 = one per available core. */
    uint32_t workers;
    uint32_t reserved;
} StagEmuLaunch;

/*
 * RMSNorm over `rows` rows of `dim` elements:
 *   out = x / sqrt(mean(x^2) + eps) * weight
 * With `residual` non-null (add_rmsnorm): s = x + residual is written to `sum_out` and
 * out = rmsnorm(s). Row r of a tensor starts at r * <tensor>_row_stride elements.
 * `weight` is always f32.
 */
typedef struct RmsNormParams {
    const void *x;
    const void *residual;
    void *sum_out;
    void *out;
    const float *weight;
    uint32_t rows;
    uint32_t dim;
    uint32_t x_row_stride;
    uint32_t residual_row_stride;
    uint32_t sum_row_stride;
    uint32_t out_row_stride;
    float eps;
    uint32_t reserved;
} RmsNormParams;

#ifdef __cplusplus
}
#endif

/*
 * Layout checks, compiled by every consumer (nvcc, the g++ emulation build, bindgen's clang):
 * the kernels, the emulator and the Rust mirror (src/ffi/params.rs, whose generated tests check
 * the same layout on the Rust side) must agree byte for byte. LP64 only. When a struct changes,
 * update these numbers and run scripts/gen-bindings.
 */
#if defined(__cplusplus)
#define STAG_LAYOUT_ASSERT(cond, msg) static_assert(cond, msg)
#define STAG_ALIGNOF(type) alignof(type)
#elif defined(__STDC_VERSION__) && __STDC_VERSION__ >= 201112L
#define STAG_LAYOUT_ASSERT(cond, msg) _Static_assert(cond, msg)
#define STAG_ALIGNOF(type) _Alignof(type)
#endif

#ifdef STAG_LAYOUT_ASSERT
#include <stddef.h>

STAG_LAYOUT_ASSERT(sizeof(void *) == 8, "stag_params.h assumes 64-bit pointers");

STAG_LAYOUT_ASSERT(sizeof(StagEmuLaunch) == 40, "StagEmuLaunch size");
STAG_LAYOUT_ASSERT(STAG_ALIGNOF(StagEmuLaunch) == 4, "StagEmuLaunch alignment");
STAG_LAYOUT_ASSERT(offsetof(StagEmuLaunch, grid) == 0, "StagEmuLaunch.grid");
STAG_LAYOUT_ASSERT(offsetof(StagEmuLaunch, block) == 12, "StagEmuLaunch.block");
STAG_LAYOUT_ASSERT(offsetof(StagEmuLaunch, dynamic_smem_bytes) == 24, "StagEmuLaunch.dynamic_smem_bytes");
STAG_LAYOUT_ASSERT(offsetof(StagEmuLaunch, shuffle_seed) == 28, "StagEmuLaunch.shuffle_seed");
STAG_LAYOUT_ASSERT(offsetof(StagEmuLaunch, workers) == 32, "StagEmuLaunch.workers");
STAG_LAYOUT_ASSERT(offsetof(StagEmuLaunch, reserved) == 36, "StagEmuLaunch.reserved");

STAG_LAYOUT_ASSERT(sizeof(RmsNormParams) == 72, "RmsNormParams size");
STAG_LAYOUT_ASSERT(STAG_ALIGNOF(RmsNormParams) == 8, "RmsNormParams alignment");
STAG_LAYOUT_ASSERT(offsetof(RmsNormParams, x) == 0, "RmsNormParams.x");
STAG_LAYOUT_ASSERT(offsetof(RmsNormParams, residual) == 8, "RmsNormParams.residual");
STAG_LAYOUT_ASSERT(offsetof(RmsNormParams, sum_out) == 16, "RmsNormParams.sum_out");
STAG_LAYOUT_ASSERT(offsetof(RmsNormParams, out) == 24, "RmsNormParams.out");
STAG_LAYOUT_ASSERT(offsetof(RmsNormParams, weight) == 32, "RmsNormParams.weight");
STAG_LAYOUT_ASSERT(offsetof(RmsNormParams, rows) == 40, "RmsNormParams.rows");
STAG_LAYOUT_ASSERT(offsetof(RmsNormParams, dim) == 44, "RmsNormParams.dim");
STAG_LAYOUT_ASSERT(offsetof(RmsNormParams, x_row_stride) == 48, "RmsNormParams.x_row_stride");
STAG_LAYOUT_ASSERT(offsetof(RmsNormParams, residual_row_stride) == 52, "RmsNormParams.residual_row_stride");
STAG_LAYOUT_ASSERT(offsetof(RmsNormParams, sum_row_stride) == 56, "RmsNormParams.sum_row_stride");
STAG_LAYOUT_ASSERT(offsetof(RmsNormParams, out_row_stride) == 60, "RmsNormParams.out_row_stride");
STAG_LAYOUT_ASSERT(offsetof(RmsNormParams, eps) == 64, "RmsNormParams.eps");
STAG_LAYOUT_ASSERT(offsetof(RmsNormParams, reserved) == 68, "RmsNormParams.reserved");

#undef STAG_LAYOUT_ASSERT
#undef STAG_ALIGNOF
#endif /* STAG_LAYOUT_ASSERT */

#endif /* STAG_PARAMS_H */
