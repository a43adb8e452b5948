// Self-tests of the emulator: atomics across blocks, dynamic shared memory, and bf16/half
// conversions. Entry points are documented in selftest.h.
#include <climits>
#include <cstring>

#include "selftest.h"
#include "stag_kernel.cuh"

// ---- atomics ----

struct SelftestAtomicsParams {
    uint32_t *counter;
    float *float_sum;
    int32_t *max_id;
    int32_t *min_id;
    unsigned long long *id_sum;
    uint32_t *cas_counter;
    uint32_t *shared_total;
    uint32_t *last_exchanged;
};

STAG_KERNEL(selftest_atomics, SelftestAtomicsParams) {
    __shared__ uint32_t block_count;
    const unsigned n = blockDim.x * blockDim.y * blockDim.z;
    const unsigned t =
        threadIdx.x + threadIdx.y * blockDim.x + threadIdx.z * blockDim.x * blockDim.y;
    const unsigned b = blockIdx.x + blockIdx.y * gridDim.x + blockIdx.z * gridDim.x * gridDim.y;
    const unsigned g = b * n + t;
    if (t == 0) {
        block_count = 0;
    }
    __syncthreads();

    atomicAdd(p.counter, 1u);
    atomicAdd(p.float_sum, 1.0f);
    atomicMax(p.max_id, static_cast<int>(g));
    atomicMin(p.min_id, static_cast<int>(g));
    atomicAdd(p.id_sum, static_cast<unsigned long long>(g));
    // The classic CAS loop (atomicOr with 0 is an atomic read).
    unsigned old = atomicOr(p.cas_counter, 0u);
    unsigned assumed;
    do {
        assumed = old;
        old = atomicCAS(p.cas_counter, assumed, assumed + 1u);
    } while (old != assumed);
    atomicAdd(&block_count, 1u);
    atomicExch(p.last_exchanged, g);

    __syncthreads();
    if (t == 0) {
        atomicAdd(p.shared_total, block_count);
    }
}

extern "C" int stag_emu_selftest_atomics(const StagEmuLaunch *cfg, uint64_t out[8]) {
    if (cfg == nullptr || out == nullptr) {
        return -1;
    }
    uint32_t counter = 0, cas_counter = 0, shared_total = 0, last_exchanged = 0;
    float float_sum = 0.0f;
    int32_t max_id = -1, min_id = INT_MAX;
    unsigned long long id_sum = 0;
    const SelftestAtomicsParams params{&counter,  &float_sum,   &max_id,       &min_id,
                                       &id_sum,   &cas_counter, &shared_total, &last_exchanged};
    const int rc = stag_emu_launch_selftest_atomics(cfg, &params);
    out[0] = counter;
    out[1] = static_cast<uint64_t>(float_sum);
    out[2] = static_cast<uint64_t>(static_cast<int64_t>(max_id));
    out[3] = static_cast<uint64_t>(static_cast<int64_t>(min_id));
    out[4] = id_sum;
    out[5] = cas_counter;
    out[6] = shared_total;
    out[7] = last_exchanged;
    return rc;
}

// ---- dynamic shared memory ----

struct SelftestSmemParams {
    uint32_t *out;
    uint32_t bytes;
};

STAG_KERNEL(selftest_dynamic_smem, SelftestSmemParams) {
    STAG_DYNAMIC_SMEM(unsigned char, mem);
    const unsigned n = blockDim.x;
    const unsigned t = threadIdx.x;
    const unsigned b = blockIdx.x;
    uint32_t *out = p.out + static_cast<size_t>(b) * 4;

    uint32_t unpoisoned = 0;
    for (uint32_t i = t; i < p.bytes; i += n) {
        unpoisoned += mem[i] != 0xFF;
    }
    if (t == 0) {
        out[1] = reinterpret_cast<uintptr_t>(mem) % 16 == 0;
        out[2] = p.bytes >= 4 && isnan(reinterpret_cast<const float *>(mem)[0]);
    }
    atomicAdd(&out[0], unpoisoned);
    __syncthreads();

    uint32_t *words = reinterpret_cast<uint32_t *>(mem);
    const uint32_t count = p.bytes / 4;
    for (uint32_t i = t; i < count; i += n) {
        words[i] = b * 0x9E3779B9u + i;
    }
    __syncthreads();
    // Check a neighbour's share, so the test also sees other threads' writes.
    uint32_t wrong = 0;
    for (uint32_t i = t; i < count; i += n) {
        const uint32_t j = (i + 1) % count;
        wrong += words[j] != b * 0x9E3779B9u + j;
    }
    atomicAdd(&out[3], wrong);
}

extern "C" int stag_emu_selftest_dynamic_smem(const StagEmuLaunch *cfg, uint32_t *out) {
    if (cfg == nullptr || out == nullptr || cfg->dynamic_smem_bytes % 4 != 0 ||
        cfg->grid[1] != 1 || cfg->grid[2] != 1 || cfg->block[1] != 1 || cfg->block[2] != 1) {
        return -1;
    }
    std::memset(out, 0, sizeof(uint32_t) * 4 * cfg->grid[0]);
    const SelftestSmemParams params{out, cfg->dynamic_smem_bytes};
    return stag_emu_launch_selftest_dynamic_smem(cfg, &params);
}

// ---- bf16 / half conversions ----

struct SelftestConvertParams {
    const float *in;
    uint32_t n;
    uint16_t *bf16_bits;
    uint16_t *half_bits;
    float *bf16_back;
    float *half_back;
    uint32_t *pair_mismatches;
};

STAG_KERNEL(selftest_convert, SelftestConvertParams) {
    const uint32_t stride = gridDim.x * blockDim.x;
    for (uint32_t i = blockIdx.x * blockDim.x + threadIdx.x; i < p.n; i += stride) {
        const float x = p.in[i];
        const __nv_bfloat16 bf = __float2bfloat16(x);
        const __half hf = __float2half(x);
        p.bf16_bits[i] = __bfloat16_as_ushort(bf);
        p.half_bits[i] = __half_as_ushort(hf);
        p.bf16_back[i] = __bfloat162float(bf);
        p.half_back[i] = __half2float(hf);

        bool bad = false;
        const __nv_bfloat162 bp = __floats2bfloat162_rn(x, -x);
        const float2 bf2 = __bfloat1622float2(bp);
        bad |= __bfloat16_as_ushort(__low2bfloat16(bp)) != __bfloat16_as_ushort(bf);
        bad |= __bfloat16_as_ushort(__high2bfloat16(bp)) !=
               __bfloat16_as_ushort(__float2bfloat16_rn(-x));
        bad |= __float_as_uint(bf2.x) != __float_as_uint(__bfloat162float(bf));
        bad |= __float_as_uint(__low2float(bp)) != __float_as_uint(bf2.x);
        bad |= __float_as_uint(__high2float(bp)) != __float_as_uint(bf2.y);
        const __half2 hp = __floats2half2_rn(x, -x);
        const float2 hf2 = __half22float2(hp);
        bad |= __half_as_ushort(__low2half(hp)) != __half_as_ushort(hf);
        bad |= __half_as_ushort(__high2half(hp)) != __half_as_ushort(__float2half_rn(-x));
        bad |= __float_as_uint(hf2.x) != __float_as_uint(__half2float(hf));
        bad |= __float_as_uint(__low2float(hp)) != __float_as_uint(hf2.x);
        bad |= __float_as_uint(__high2float(hp)) != __float_as_uint(hf2.y);
        if (bad) {
            atomicAdd(p.pair_mismatches, 1u);
        }
    }
}

extern "C" int stag_emu_selftest_convert(const float *in, uint32_t n, uint16_t *bf16_bits,
                                         uint16_t *half_bits, float *bf16_back, float *half_back,
                                         uint32_t *pair_mismatches) {
    if (in == nullptr || bf16_bits == nullptr || half_bits == nullptr || bf16_back == nullptr ||
        half_back == nullptr || pair_mismatches == nullptr) {
        return -1;
    }
    *pair_mismatches = 0;
    const StagEmuLaunch cfg{{4, 1, 1}, {64, 1, 1}, 0, 0, 0, 0};
    const SelftestConvertParams params{in,       n,         bf16_bits,      half_bits,
                                       bf16_back, half_back, pair_mismatches};
    return stag_emu_launch_selftest_convert(&cfg, &params);
}

extern "C" void stag_emu_selftest_convert_host(const float *in, size_t n, uint16_t *bf16_bits,
                                               uint16_t *half_bits) {
    for (size_t i = 0; i < n; ++i) {
        bf16_bits[i] = stag_emu::f32_to_bf16_bits(in[i]);
        half_bits[i] = stag_emu::f32_to_f16_bits(in[i]);
    }
}

extern "C" void stag_emu_selftest_decode_host(const uint16_t *bits, size_t n, float *bf16_f32,
                                              float *half_f32) {
    for (size_t i = 0; i < n; ++i) {
        bf16_f32[i] = stag_emu::bf16_bits_to_f32(bits[i]);
        half_f32[i] = stag_emu::f16_bits_to_f32(bits[i]);
    }
}
