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

#endif /* STAG_PARAMS_H */
