// Token sampling, one block per row of f32 logits (docs/MODEL.md, "Sampling"; the CPU
// reference is stagformer_ref::sample::sample).
//
// Every row has its own settings (StagSampleRow: temperature, top-k, top-p, seed and the
// counter that keys its draw, uniform(seed, counter)), read from device memory, so greedy and
// sampled rows share a call and the host's launches never depend on the settings.
//
// Greedy rows (temperature 0, top_k 1, one-token vocabularies) take one argmax pass.
//
// Sampling rows never sort. Candidates are ordered by logit, highest first, ties by lower id.
// Every token gets a 64-bit composite that is unique and larger for earlier candidates:
//   composite = order_key(logit) << id_bits | (vocab - 1 - id)
// where order_key maps the float bits to an unsigned integer with Rust's `total_cmp` order (the
// reference's sort order, -0 below +0). Each of the three steps of the algorithm is then "find
// the first candidate at which a running total over the sorted order reaches a target", which a
// radix select answers digit by digit (11 bits per pass, most significant first) without a sort:
//   1. top-k: the running count reaches k;
//   2. top-p: the running weight reaches ceil(top_p · total weight);
//   3. the token: the running weight exceeds u · kept weight.
// Each step leaves a "cut", the composite of the selected candidate: the kept set is always a
// prefix of the sorted order, i.e. the candidates whose composite is >= the cut. A pass builds a
// histogram of one digit over the candidates that match the digits chosen so far, a warp scans it
// from the highest bucket down, and selection stops as soon as the chosen bucket holds a single
// candidate (at the latest when the id bits are exhausted, because composites are unique).
//
// Weights are exp((l - l_max) / T) in f64, as in the reference, converted to 62-bit fixed point
// (w · 2^62, truncated). Histograms add them with 64-bit integer atomics (split into a high and
// a low part so that no bucket can overflow) and totals are exact 128-bit integers, so
//   * every result is independent of thread order and atomic order: the same inputs give the
//     same token on every run, on the GPU and under emulation;
//   * the running totals of successive digits are exactly consistent; and
//   * the only differences from the reference are the rounding of its f64 sums, the 2^-62
//     truncation (each at most about V · 2^-53 of the kept weight, since the largest weight is
//     1) and, on a GPU, the last bit of exp: a choice can differ from the reference only when
//     u · kept weight, or top_p · total, falls within that distance of a cumulative sum (a
//     near-exact tie, which random logits essentially never produce; ties of equal logits are
//     exact on both sides).
// Weights below 2^-62 of the maximum are 0 here; an f32 pre-check skips the f64 exp for them.
//
// When a step leaves at most LIST_CAP candidates (top-k of at most 2048, or a small nucleus),
// one more pass copies their composites to shared memory and the remaining passes read that
// list instead of the row.
//
// With `logprobs`, one more pass per row sums exp(l - max) in f32 for the chosen token's
// log-probability under the raw logits (log_softmax, before temperature and filters).
//
// Passes over the row (V f32 reads each): greedy 1. Sampling: 1 for the maximum, then per step
// one pass per digit until the chosen bucket is a singleton (typically 2, at most
// ceil((32 + id_bits) / 11), e.g. 5 for V = 262144) plus 1 to compact; steps after the
// compaction read no logits.
//
// Non-finite logits never make a kernel read or write out of bounds and always give an id in
// [0, vocab); with them the token may differ from the reference's (which then sums NaN weights).
#include "stag_atomic.cuh"
#include "stag_vec.cuh"

namespace {

using u64 = unsigned long long;

constexpr int MAX_THREADS = 1024;
constexpr uint32_t DIGIT_BITS = 11;
constexpr uint32_t BUCKETS = 1u << DIGIT_BITS;
constexpr uint32_t BUCKETS_PER_LANE = BUCKETS / 32;
constexpr uint32_t LIST_CAP = 2048;
constexpr uint32_t FULL_MASK = 0xffffffffu;
constexpr uint32_t LOADS_IN_FLIGHT = 4;
// Fixed-point weights: w · 2^62 <= 2^62, added to a bucket as (W >> 31) and (W & (2^31 - 1)), so
// that even 2^31 of them fit a 64-bit counter.
constexpr uint32_t LOW_BITS = 31;
constexpr u64 LOW_MASK = (u64(1) << LOW_BITS) - 1;
constexpr double WEIGHT_SCALE = 4611686018427387904.0;  // 2^62
// exp(-44) · 2^62 < 1: the fixed-point weight is 0 below this exponent. The f32 estimate of the
// exponent is within a relative 2^-22 of the f64 one, so below -45 the exact one is below -44.
constexpr float ZERO_WEIGHT_EXPONENT = -45.0f;

// Dynamic shared memory layout (SAMPLE_SMEM_BYTES in src/ops/sample.rs).
constexpr uint32_t OFF_MASS_HI = 0;
constexpr uint32_t OFF_MASS_LO = OFF_MASS_HI + BUCKETS * 8;
constexpr uint32_t OFF_FIRST = OFF_MASS_LO + BUCKETS * 8;
constexpr uint32_t OFF_LIST = OFF_FIRST + BUCKETS * 8;
constexpr uint32_t OFF_COUNT = OFF_LIST + LIST_CAP * 8;
constexpr uint32_t SMEM_BYTES = OFF_COUNT + BUCKETS * 4;
static_assert(SMEM_BYTES == 73728, "keep SAMPLE_SMEM_BYTES in src/ops/sample.rs in step");

// ---- 128-bit unsigned integers (totals of up to 2^31 weights of 2^62) ----

struct U128 {
    u64 hi, lo;
};

__device__ __forceinline__ U128 u128(u64 v) { return U128{0, v}; }

__device__ __forceinline__ U128 add(U128 a, U128 b) {
    U128 r;
    r.lo = a.lo + b.lo;
    r.hi = a.hi + b.hi + (r.lo < a.lo ? 1 : 0);
    return r;
}

__device__ __forceinline__ U128 sub(U128 a, U128 b) {
    U128 r;
    r.lo = a.lo - b.lo;
    r.hi = a.hi - b.hi - (a.lo < b.lo ? 1 : 0);
    return r;
}

__device__ __forceinline__ bool less(U128 a, U128 b) {
    return a.hi < b.hi || (a.hi == b.hi && a.lo < b.lo);
}

__device__ __forceinline__ bool is_zero(U128 a) { return (a.hi | a.lo) == 0; }

/// a · b for b < 2^32 (the products here stay below 2^128).
__device__ __forceinline__ U128 mul32(U128 a, uint32_t b) {
    U128 r;
    r.lo = a.lo * b;
    r.hi = a.hi * b + __umul64hi(a.lo, u64(b));
    return r;
}

/// a >> s.
__device__ __forceinline__ U128 shr(U128 a, uint32_t s) {
    if (s == 0) return a;
    if (s >= 128) return u128(0);
    if (s >= 64) return u128(a.hi >> (s - 64));
    return U128{a.hi >> s, (a.lo >> s) | (a.hi << (64 - s))};
}

/// Whether any of the low s bits of a is set.
__device__ __forceinline__ bool low_bits_set(U128 a, uint32_t s) {
    if (s == 0) return false;
    if (s >= 128) return !is_zero(a);
    if (s >= 64) return a.lo != 0 || (s > 64 && (a.hi << (128 - s)) != 0);
    return (a.lo << (64 - s)) != 0;
}

/// The bucket total Σ(W >> 31) · 2^31 + Σ(W & (2^31 - 1)).
__device__ __forceinline__ U128 join(u64 hi_sum, u64 lo_sum) {
    return add(U128{hi_sum >> (64 - LOW_BITS), hi_sum << LOW_BITS}, u128(lo_sum));
}

__device__ __forceinline__ U128 shfl_down(U128 v, uint32_t offset) {
    return U128{__shfl_down_sync(FULL_MASK, v.hi, offset),
                __shfl_down_sync(FULL_MASK, v.lo, offset)};
}

__device__ __forceinline__ U128 shfl_xor(U128 v, uint32_t mask) {
    return U128{__shfl_xor_sync(FULL_MASK, v.hi, mask), __shfl_xor_sync(FULL_MASK, v.lo, mask)};
}

// ---- keys, weights, the random number ----

/// The float bits as an unsigned integer with the order of `f32::total_cmp`.
__device__ __forceinline__ uint32_t order_key(float x) {
    const uint32_t u = __float_as_uint(x);
    return (u & 0x80000000u) ? ~u : (u | 0x80000000u);
}

__device__ __forceinline__ float key_value(uint32_t k) {
    return __uint_as_float((k & 0x80000000u) ? (k & 0x7fffffffu) : ~k);
}

/// True for NaN and ±inf: a logit no sampler may silently use (the caller's `nonfinite` flag).
__device__ __forceinline__ bool not_finite(float x) { return !(fabsf(x) <= 3.402823466e38f); }

/// Thread 0 of a row's finishing block: reports whether the row held a non-finite logit.
__device__ __forceinline__ void report_nonfinite(const SampleParams &p, uint32_t row, bool bad) {
    if (p.nonfinite != nullptr) p.nonfinite[row] = bad ? 1 : 0;
}

/// The greedy order is `>` on floats, as the reference's argmax: -0 equals +0, NaN loses to
/// everything.
__device__ __forceinline__ uint32_t greedy_key(float x) {
    if (x != x) return 0;
    return order_key(x == 0.0f ? 0.0f : x);
}

/// floor(exp((l - l_max) / T) · 2^62), the exponent computed in f64 like the reference.
__device__ __forceinline__ u64 fixed_weight(uint32_t key, float lmax, float temperature) {
    const float l = key_value(key);
    if ((l - lmax) / temperature < ZERO_WEIGHT_EXPONENT) return 0;
    const double w = exp((double(l) - double(lmax)) / double(temperature));
    // NaN (non-finite logits) counts as no weight.
    if (!(w >= 0.0 && w <= 1.0)) return 0;
    return u64(w * WEIGHT_SCALE);
}

/// splitmix64's finaliser.
__device__ __forceinline__ u64 mix64(u64 z) {
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
}

/// The 24 random bits of uniform(seed, index) = bits / 2^24.
__device__ __forceinline__ uint32_t uniform_bits(u64 seed, u64 index) {
    const u64 h = mix64(mix64(mix64(seed + 0x9E3779B97F4A7C15ull)) ^ index);
    return uint32_t(h >> 40);
}

// ---- a row's settings ----

/// settings[row], decoded; top_k >= vocab keeps every token, as 0 does.
struct RowCfg {
    u64 seed;
    uint32_t counter;
    uint32_t top_k;
    float temperature;
    float top_p;
};

__device__ __forceinline__ RowCfg row_cfg(const SampleParams &p, uint32_t row) {
    const StagSampleRow r = p.settings[row];
    RowCfg c;
    c.seed = (u64(r.seed_hi) << 32) | u64(r.seed_lo);
    c.counter = r.counter;
    c.top_k = r.top_k < p.vocab ? r.top_k : 0u;
    c.temperature = r.temperature;
    c.top_p = r.top_p;
    return c;
}

/// Greedy rows take one argmax pass and draw no random number.
__device__ __forceinline__ bool is_greedy(const RowCfg &c, uint32_t vocab) {
    return c.temperature == 0.0f || c.top_k == 1 || vocab == 1;
}

__device__ __forceinline__ uint32_t draw_bits(const RowCfg &c) {
    return uniform_bits(c.seed, c.counter);
}

// ---- the chosen token's log-probability ----
//
// log_softmax(logits)[token] = (l_token - m) - log(sum_i exp(l_i - m)) in f32 with m the row's
// largest logit (fmaxf: NaN logits are skipped; the caller's nonfinite flag reports them), over
// the raw logits whatever the row's temperature and filters.

/// The chosen token's log-probability from the row's maximum m and log(sum exp(l - m)).
__device__ __forceinline__ float chosen_logprob(float logit, float m, float log_sum) {
    return (logit - m) - log_sum;
}

/// Thread 0: writes the token and, when asked for, its log-probability.
__device__ __forceinline__ void write_token(const SampleParams &p, uint32_t row, int32_t token,
                                            float m, float log_sum) {
    p.tokens[row] = token;
    if (p.logprobs != nullptr) {
        const float *logits = p.logits + size_t(row) * p.logits_row_stride;
        p.logprobs[row] = chosen_logprob(logits[token], m, log_sum);
    }
}

// ---- block-wide helpers ----

__device__ __forceinline__ u64 warp_max(u64 v) {
#pragma unroll
    for (int offset = 16; offset > 0; offset >>= 1) {
        const u64 o = __shfl_xor_sync(FULL_MASK, v, offset);
        v = o > v ? o : v;
    }
    return v;
}

/// Maximum over the block (blockDim.x a multiple of 32), returned to every thread.
__device__ __forceinline__ u64 block_max(u64 v, u64 *scratch) {
    const uint32_t lane = threadIdx.x & 31;
    const uint32_t warp = threadIdx.x >> 5;
    v = warp_max(v);
    if (lane == 0) scratch[warp] = v;
    __syncthreads();
    v = warp_max(lane < (blockDim.x >> 5) ? scratch[lane] : 0);
    // Keeps the slots from being overwritten by a following call before every warp read them.
    __syncthreads();
    return v;
}

/// Warp-then-block reduction of floats with `op` (max or sum), returned to every thread. The
/// tree's shape depends only on the thread count, so the result is the same on every run.
template <typename Op>
__device__ __forceinline__ float warp_reduce_f32(float v, Op op) {
#pragma unroll
    for (int offset = 16; offset > 0; offset >>= 1) {
        v = op(v, __shfl_xor_sync(FULL_MASK, v, offset));
    }
    return v;
}

/// Warp-then-block reduction of floats with `op` (`identity` fills the missing warps), returned
/// to every thread. The tree's shape depends only on the thread count, so the result is the
/// same on every run and under any schedule.
template <typename Op>
__device__ __forceinline__ float block_reduce_f32(float v, float *scratch, Op op, float identity) {
    const uint32_t lane = threadIdx.x & 31;
    const uint32_t warp = threadIdx.x >> 5;
    v = warp_reduce_f32(v, op);
    if (lane == 0) scratch[warp] = v;
    __syncthreads();
    v = warp_reduce_f32(lane < (blockDim.x >> 5) ? scratch[lane] : identity, op);
    // Keeps the slots from being overwritten by a following call before every warp read them.
    __syncthreads();
    return v;
}

struct MaxOp {
    __device__ __forceinline__ float operator()(float a, float b) const { return fmaxf(a, b); }
};
struct SumOp {
    __device__ __forceinline__ float operator()(float a, float b) const { return a + b; }
};

/// Calls f(id, logit) for every logit of the row (in no particular order). Whatever the row's
/// alignment, a few leading logits are read singly and the rest with 16-byte loads, several in
/// flight per thread, because one block streams the whole row.
template <typename F>
__device__ __forceinline__ void for_each_logit(const float *row, uint32_t vocab, F &&f) {
    const uint32_t step = blockDim.x;
    const uintptr_t addr = reinterpret_cast<uintptr_t>(row);
    if ((addr & 3) != 0) {
        // Not even float-aligned (no device buffer is): plain loads.
        for (uint32_t i = threadIdx.x; i < vocab; i += step) f(i, row[i]);
        return;
    }
    uint32_t head = uint32_t((16 - (addr & 15)) & 15) / 4;
    head = head < vocab ? head : vocab;
    if (threadIdx.x < head) f(threadIdx.x, row[threadIdx.x]);
    const float *body = row + head;
    const uint32_t vectors = (vocab - head) / 4;
    uint32_t j = threadIdx.x;
    for (; j + (LOADS_IN_FLIGHT - 1) * step < vectors; j += LOADS_IN_FLIGHT * step) {
        float v[LOADS_IN_FLIGHT][4];
#pragma unroll
        for (uint32_t u = 0; u < LOADS_IN_FLIGHT; ++u) {
            stag::Vec<float>::load(body + size_t(j + u * step) * 4, v[u]);
        }
#pragma unroll
        for (uint32_t u = 0; u < LOADS_IN_FLIGHT; ++u) {
#pragma unroll
            for (uint32_t q = 0; q < 4; ++q) f(head + (j + u * step) * 4 + q, v[u][q]);
        }
    }
    for (; j < vectors; j += step) {
        float v[4];
        stag::Vec<float>::load(body + size_t(j) * 4, v);
#pragma unroll
        for (uint32_t q = 0; q < 4; ++q) f(head + j * 4 + q, v[q]);
    }
    for (uint32_t i = head + vectors * 4 + threadIdx.x; i < vocab; i += step) f(i, row[i]);
}

// ---- the radix select ----

/// Where the candidates come from: the logits row, or the compacted list of their composites.
struct Candidates {
    const float *row;
    const u64 *list;          // non-null once compacted
    const u64 *list_weights;  // the list's fixed-point weights when stored, else null
    uint32_t list_len;
    uint32_t vocab;
    uint32_t id_bits;
    float lmax;
    float temperature;
};

/// Marks a weight that was not stored and is computed from the composite when needed.
constexpr u64 NO_WEIGHT = ~u64(0);

/// Calls f(composite, weight) for every candidate; the weight is NO_WEIGHT unless stored.
template <typename F>
__device__ __forceinline__ void for_each_candidate(const Candidates &c, F &&f) {
    if (c.list != nullptr) {
        for (uint32_t i = threadIdx.x; i < c.list_len; i += blockDim.x) {
            f(c.list[i], c.list_weights != nullptr ? c.list_weights[i] : NO_WEIGHT);
        }
        return;
    }
    const uint32_t last = c.vocab - 1;
    const uint32_t id_bits = c.id_bits;
    for_each_logit(c.row, c.vocab, [&](uint32_t id, float x) {
        f((u64(order_key(x)) << id_bits) | u64(last - id), NO_WEIGHT);
    });
}

struct Histogram {
    u64 *mass_hi;
    u64 *mass_lo;
    u64 *first;  // the composite of the first candidate counted in the bucket
    u64 *list;
    uint32_t *count;
};

enum Rule : uint32_t {
    RULE_COUNT = 0,   // the candidate at which the running count reaches `arg`
    RULE_TOP_P = 1,   // the running weight reaches ceil(top_p · total); arg = the top_p bits
    RULE_SAMPLE = 2,  // the running weight exceeds (arg / 2^24) · total
};

/// Block-shared state of one select, written by the scanning lane between barriers.
struct SelectState {
    U128 above_mass;  // weight of the candidates before the current bucket range
    U128 target;
    u64 prefix;  // the composite digits chosen so far
    u64 found;
    uint32_t above_count;
    uint32_t by_mass;  // 0: the candidates count 1 each
    uint32_t done;
    uint32_t list_len;
    u64 scratch[32];
};

/// ceil(top_p · total), top_p < 1 given by its bits, exactly.
__device__ __forceinline__ U128 top_p_target(U128 total, uint32_t top_p_bits) {
    const uint32_t exponent = (top_p_bits >> 23) & 0xffu;
    const uint32_t fraction = top_p_bits & 0x7fffffu;
    // top_p = mantissa · 2^-shift.
    const uint32_t mantissa = exponent ? (fraction | 0x800000u) : fraction;
    const uint32_t shift = exponent ? 150u - exponent : 149u;
    const U128 product = mul32(total, mantissa);
    U128 q = shr(product, shift);
    if (low_bits_set(product, shift)) q = add(q, u128(1));
    return q;
}

/// Warp 0: picks the bucket of this level in which the running total reaches the target and
/// records it in `s`. On the first level it first turns the rule into a target.
__device__ __forceinline__ void scan_level(const Histogram &h, SelectState &s, uint32_t shift, bool first_level,
                           Rule rule, uint32_t arg) {
    const uint32_t lane = threadIdx.x;
    const uint32_t base = lane * BUCKETS_PER_LANE;
    u64 lane_count = 0, lane_hi = 0, lane_lo = 0;
    for (uint32_t j = 0; j < BUCKETS_PER_LANE; ++j) {
        // Rotated so that the lanes read different banks.
        const uint32_t b = base + ((j + lane) & (BUCKETS_PER_LANE - 1));
        lane_count += h.count[b];
        lane_hi += h.mass_hi[b];
        lane_lo += h.mass_lo[b];
    }
    const U128 lane_mass = join(lane_hi, lane_lo);

    bool by_mass = s.by_mass != 0;
    U128 target = s.target;
    if (first_level && rule != RULE_COUNT) {
        U128 total = lane_mass;
#pragma unroll
        for (uint32_t m = 16; m > 0; m >>= 1) total = add(total, shfl_xor(total, m));
        // Every lane holds the same exact total, hence the same target.
        if (is_zero(total)) {
            // Only non-finite logits get here: take the first candidate.
            by_mass = false;
            target = u128(1);
        } else if (rule == RULE_TOP_P) {
            target = top_p_target(total, arg);
        } else {
            target = add(shr(mul32(total, arg), 24), u128(1));
        }
        if (lane == 0) {
            s.by_mass = by_mass ? 1u : 0u;
            s.target = target;
        }
    }

    const U128 value = by_mass ? lane_mass : u128(lane_count);
    const U128 need = sub(target, by_mass ? s.above_mass : u128(s.above_count));
    // Inclusive sums over this lane and the lanes above it (higher buckets come first).
    U128 incl = value, mass_incl = lane_mass;
    u64 count_incl = lane_count;
#pragma unroll
    for (uint32_t offset = 1; offset < 32; offset <<= 1) {
        const U128 v = shfl_down(incl, offset);
        const U128 m = shfl_down(mass_incl, offset);
        const u64 c = __shfl_down_sync(FULL_MASK, count_incl, offset);
        if (lane + offset < 32) {
            incl = add(incl, v);
            mass_incl = add(mass_incl, m);
            count_incl += c;
        }
    }
    const U128 excl = sub(incl, value);
    const bool crosses = less(excl, need) && !less(incl, need);
    uint32_t lanes = __ballot_sync(FULL_MASK, crosses);
    // Exact integer totals make exactly one lane cross; should that ever fail, the last
    // non-empty lane keeps the choice among the candidates.
    if (lanes == 0) lanes = __ballot_sync(FULL_MASK, lane_count != 0);
    if (lanes == 0 || lane != uint32_t(__ffs(int(lanes)) - 1)) return;

    U128 acc = excl;
    U128 mass_above = sub(mass_incl, lane_mass);
    u64 count_above = count_incl - lane_count;
    uint32_t pick = BUCKETS;
    for (int j = int(BUCKETS_PER_LANE) - 1; j >= 0; --j) {
        const uint32_t b = base + uint32_t(j);
        const uint32_t n = h.count[b];
        if (n == 0) continue;
        const U128 m = join(h.mass_hi[b], h.mass_lo[b]);
        const U128 v = by_mass ? m : u128(n);
        pick = b;
        if (!less(add(acc, v), need)) break;
        acc = add(acc, v);
        mass_above = add(mass_above, m);
        count_above += n;
    }
    if (pick == BUCKETS) return;  // unreachable: the chosen lane holds a candidate
    s.prefix |= u64(pick) << shift;
    s.above_mass = add(s.above_mass, mass_above);
    s.above_count += uint32_t(count_above);
    if (h.count[pick] == 1) {
        s.done = 1;
        s.found = h.first[pick];
    }
}

/// The composite of the candidate selected by `rule` among those >= `cut`; its rank in the
/// sorted order (1-based) goes to `rank`. Called by the whole block.
__device__ __forceinline__ u64 select(const Candidates &c, const Histogram &h, SelectState &s, u64 cut, Rule rule,
                      uint32_t arg, uint32_t *rank) {
    if (threadIdx.x == 0) {
        s.above_mass = u128(0);
        s.above_count = 0;
        s.target = u128(rule == RULE_COUNT ? arg : 0);
        s.by_mass = rule == RULE_COUNT ? 0u : 1u;
        s.prefix = 0;
        s.found = 0;
        s.done = 0;
    }
    uint32_t remaining = 32 + c.id_bits;  // composite bits not yet chosen
    bool first_level = true;
    for (;;) {
        const uint32_t width = remaining < DIGIT_BITS ? remaining : DIGIT_BITS;
        const uint32_t shift = remaining - width;
        for (uint32_t b = threadIdx.x; b < BUCKETS; b += blockDim.x) {
            h.count[b] = 0;
            h.mass_hi[b] = 0;
            h.mass_lo[b] = 0;
        }
        __syncthreads();
        const u64 prefix = s.prefix;
        const bool by_mass = s.by_mass != 0;
        const uint32_t digit_mask = (1u << width) - 1;
        const uint32_t id_bits = c.id_bits;
        const float lmax = c.lmax;
        const float temperature = c.temperature;
        for_each_candidate(c, [&](u64 x, u64 stored) {
            if (x < cut) return;
            // Only candidates whose higher digits are the ones chosen (composites have at most
            // 63 bits, so the shift is in range).
            if ((x >> remaining) != (prefix >> remaining)) return;
            const uint32_t b = uint32_t(x >> shift) & digit_mask;
            if (atomicAdd(&h.count[b], 1u) == 0) h.first[b] = x;
            if (by_mass) {
                const u64 w = stored != NO_WEIGHT
                                  ? stored
                                  : fixed_weight(uint32_t(x >> id_bits), lmax, temperature);
                if (w != 0) {
                    atomicAdd(&h.mass_hi[b], w >> LOW_BITS);
                    atomicAdd(&h.mass_lo[b], w & LOW_MASK);
                }
            }
        });
        __syncthreads();
        if (threadIdx.x < 32) scan_level(h, s, shift, first_level, rule, arg);
        __syncthreads();
        // The last digit always isolates one candidate (composites are unique); stopping there
        // regardless bounds the loop whatever the histogram held.
        if (s.done || shift == 0) {
            const u64 found = s.done ? s.found : s.prefix;
            *rank = s.above_count + 1;
            // Nobody may start the next select (thread 0 resets `s`) before all have read it.
            __syncthreads();
            return found;
        }
        remaining = shift;
        first_level = false;
    }
}

/// Copies the composites of the candidates >= cut (at most LIST_CAP) to shared memory, so that
/// the following selects read no logits.
__device__ void compact(Candidates &c, const Histogram &h, SelectState &s, u64 cut) {
    if (threadIdx.x == 0) s.list_len = 0;
    __syncthreads();
    for_each_candidate(c, [&](u64 x, u64) {
        if (x < cut) return;
        const uint32_t slot = atomicAdd(&s.list_len, 1u);
        if (slot < LIST_CAP) h.list[slot] = x;
    });
    __syncthreads();
    c.list = h.list;
    c.list_len = s.list_len < LIST_CAP ? s.list_len : LIST_CAP;
}

/// log(sum exp(l - m)) over the row, f32 (one more pass over the row, for the log-probability).
__device__ __forceinline__ float row_log_sum(const float *logits, uint32_t vocab, float m,
                                             float *scratch) {
    float sum = 0.0f;
    for_each_logit(logits, vocab, [&](uint32_t, float x) { sum += expf(x - m); });
    return logf(block_reduce_f32(sum, scratch, SumOp{}, 0.0f));
}

__device__ void sample_row(const SampleParams &p) {
    STAG_DYNAMIC_SMEM(unsigned char, smem);
    __shared__ SelectState s;
    __shared__ float fscratch[32];
    // The log-sum-exp waits in shared memory for thread 0.
    __shared__ float log_sum_s;
    const uint32_t row = blockIdx.x;
    const uint32_t vocab = p.vocab;
    // Token ids are int32 and composites need vocab <= 2^31 (the wrapper checks both).
    if (row >= p.rows || vocab == 0 || vocab > 0x80000000u) return;
    const float *logits = p.logits + size_t(row) * p.logits_row_stride;
    const RowCfg cfg = row_cfg(p, row);
    const bool want_logprob = p.logprobs != nullptr;

    if (is_greedy(cfg, vocab)) {
        u64 best = 0;
        float fmax = -INFINITY;
        int bad = 0;
        for_each_logit(logits, vocab, [&](uint32_t id, float x) {
            const u64 k = (u64(greedy_key(x)) << 32) | u64(~id);
            best = k > best ? k : best;
            fmax = fmaxf(fmax, x);
            bad |= not_finite(x) ? 1 : 0;
        });
        best = block_max(best, s.scratch);
        bad = __syncthreads_or(bad);
        float log_sum = 0.0f;
        if (want_logprob) {
            fmax = block_reduce_f32(fmax, fscratch, MaxOp{}, -INFINITY);
            log_sum = row_log_sum(logits, vocab, fmax, fscratch);
        }
        if (threadIdx.x == 0) {
            // The reference's argmax keeps index 0 when it holds a NaN (nothing compares above).
            const float first = logits[0];
            write_token(p, row, first != first ? 0 : int32_t(~uint32_t(best)), fmax, log_sum);
            report_nonfinite(p, row, bad != 0);
        }
        return;
    }

    const Histogram h{reinterpret_cast<u64 *>(smem + OFF_MASS_HI),
                      reinterpret_cast<u64 *>(smem + OFF_MASS_LO),
                      reinterpret_cast<u64 *>(smem + OFF_FIRST),
                      reinterpret_cast<u64 *>(smem + OFF_LIST),
                      reinterpret_cast<uint32_t *>(smem + OFF_COUNT)};

    u64 max_key = 0;
    int bad = 0;
    for_each_logit(logits, vocab, [&](uint32_t, float x) {
        const u64 k = order_key(x);
        max_key = k > max_key ? k : max_key;
        bad |= not_finite(x) ? 1 : 0;
    });
    max_key = block_max(max_key, s.scratch);
    bad = __syncthreads_or(bad);
    if (threadIdx.x == 0) report_nonfinite(p, row, bad != 0);
    const float lmax = key_value(uint32_t(max_key));

    Candidates c{logits,
                 nullptr,
                 nullptr,
                 0,
                 vocab,
                 32u - uint32_t(__clz(int(vocab - 1))),
                 lmax,
                 cfg.temperature};
    u64 cut = 0;  // every composite is >= 0: all candidates
    uint32_t rank = vocab;
    if (cfg.top_k > 1) {
        cut = select(c, h, s, cut, RULE_COUNT, cfg.top_k, &rank);
        if (rank <= LIST_CAP) compact(c, h, s, cut);
    }
    if (cfg.top_p < 1.0f) {
        cut = select(c, h, s, cut, RULE_TOP_P, __float_as_uint(cfg.top_p), &rank);
        if (c.list == nullptr && rank <= LIST_CAP) compact(c, h, s, cut);
    }
    const u64 token = select(c, h, s, cut, RULE_SAMPLE, draw_bits(cfg), &rank);
    // After the selects, whose state is dead by now (no registers to spare before). The
    // total-order maximum is fmaxf's for finite rows (a non-finite row is flagged).
    if (want_logprob) {
        const float log_sum = row_log_sum(logits, vocab, lmax, fscratch);
        if (threadIdx.x == 0) log_sum_s = log_sum;
    }
    if (threadIdx.x == 0) {
        const u64 reversed = token & ((u64(1) << c.id_bits) - 1);
        write_token(p, row, reversed < vocab ? int32_t(vocab - 1 - uint32_t(reversed)) : 0,
                    c.lmax, log_sum_s);
    }
}


// ---- Multi-block: one row spread over many blocks ----
//
// Grid (rows, chunks): block (r, j) owns logits [j · chunk, (j + 1) · chunk) of row r. A row's
// blocks meet in the workspace (global memory): each block builds its histogram of the current
// digit in shared memory with warp-aggregated 32-bit atomics (add_to_bucket), adds it to the
// row's global histogram, and the last block to arrive (stag::last_block_arrive) scans it with
// the one-block kernel's scan_level and records the choice in the row's state for the next
// launch. The host launches a fixed sequence that depends on the shape only (graph-capturable,
// one graph for every mix of settings): `prepare` (every row's maximum, argmax and log-sum-exp
// partials; greedy rows finish there), then levels_per_select · 3 `step` launches (enough for
// the three selects any row may need), each of which does whatever the row's state says is
// next and returns at once when nothing is left, then one `tail` launch:
//   * SELECTING: one digit of the current select (the first one over the row also stores every
//     logit's fixed-point weight, so later passes read it instead of computing exp again);
//   * COMPACT: a select left at most LIST_CAP candidates: every block appends its candidates
//     >= cut to the row's list (state TAIL); the tail launch (one block per row) runs the
//     remaining selects on it alone, in shared memory, and writes the token;
//   * TAIL, FINISHED: nothing.
//
// Exactness: weights are split into three 21-bit pieces, so a block's per-bucket piece sums
// (at most MB_MAX_CHUNK = 2^11 addends below 2^21) fit 32 bits and the global sums (u64 atomics)
// are exact; the finisher rebuilds each bucket's exact total. Every total therefore equals the
// one-block kernel's, bucket by bucket, whatever the order of blocks and atomics, and so does
// every choice: both kernels give the same token on every row.

constexpr uint32_t MB_THREADS = 256;
constexpr uint32_t MB_MAX_CHUNK = 2048;
constexpr uint32_t PIECE_BITS = 21;
constexpr uint32_t PIECES = 3;
constexpr u64 PIECE_MASK = (u64(1) << PIECE_BITS) - 1;
static_assert(u64(MB_MAX_CHUNK) * PIECE_MASK <= 0xffffffffull, "block piece sums fit 32 bits");
static_assert(PIECES * PIECE_BITS >= 63, "the pieces cover weights up to 2^62");

// Block-local histogram (dynamic shared memory), overlaid by the finisher's one-block layout
// once it has been added to the global one.
constexpr uint32_t MB_OFF_COUNT = 0;                          // u32[BUCKETS]
constexpr uint32_t MB_OFF_PIECES = MB_OFF_COUNT + BUCKETS * 4;  // u32[PIECES][BUCKETS]
constexpr uint32_t MB_OFF_FIRST = MB_OFF_PIECES + PIECES * BUCKETS * 4;  // u64[BUCKETS]
constexpr uint32_t MB_LOCAL_BYTES = MB_OFF_FIRST + BUCKETS * 8;
// After the one-block layout: the stored weights of the compacted list.
constexpr uint32_t OFF_LIST_WEIGHTS = SMEM_BYTES;
constexpr uint32_t MB_SMEM_BYTES = OFF_LIST_WEIGHTS + LIST_CAP * 8;
static_assert(MB_LOCAL_BYTES <= MB_SMEM_BYTES, "the local histogram fits");
static_assert(MB_SMEM_BYTES == 90112, "keep MULTI_BLOCK_SMEM_BYTES in src/ops/sample.rs in step");

enum RowStatus : uint32_t {
    STATUS_SELECTING = 0,
    STATUS_COMPACT = 1,
    STATUS_TAIL = 2,  // compacted: the tail launch finishes the row
    STATUS_FINISHED = 3,
};

/// A row's state between launches (workspace).
struct RowState {
    SelectState s;  // the current select
    u64 best;       // greedy: the highest composite (atomicMax), reset by the last block
    u64 cut;        // candidates >= cut are kept (the last finished select's choice)
    float lmax;
    uint32_t max_key;  // prepare: the highest order key (atomicMax), reset by the last block
    uint32_t arrive;   // stag::last_block_arrive's counter, reset by the last block
    uint32_t status;
    uint32_t select;     // index of the current select in the row's plan
    uint32_t remaining;  // composite bits the current select has not chosen yet
    uint32_t list_len;   // compaction: slots taken
    uint32_t nonfinite;  // a block saw a NaN or inf logit (atomicOr), reset by the last block
    float lse_max;       // the row's largest logit (fmaxf) and log(sum exp(l - lse_max)), for
    float log_sum;       // the chosen token's log-probability
};

/// The row's global histogram of one digit: counts, the largest composite per bucket (the
/// bucket's candidate when it holds one) and the weight pieces.
struct GlobalHist {
    uint32_t count[BUCKETS];
    u64 any[BUCKETS];
    u64 piece[PIECES][BUCKETS];
};

// Workspace layout (SampleWorkspace in src/ops/sample.rs): `workspace_rows` fixed parts of
// MB_FIXED_ROW_BYTES (state, histogram, list), then the weights, row r at r · vocab u64s.
constexpr uint32_t MB_STATE_BYTES = 512;
constexpr uint32_t MB_OFF_HIST = MB_STATE_BYTES;
constexpr uint32_t MB_OFF_ROW_LIST = MB_OFF_HIST + uint32_t(sizeof(GlobalHist));
constexpr uint32_t MB_OFF_ROW_LIST_WEIGHTS = MB_OFF_ROW_LIST + LIST_CAP * 8;
constexpr uint32_t MB_FIXED_ROW_BYTES = MB_OFF_ROW_LIST_WEIGHTS + LIST_CAP * 8;
static_assert(sizeof(RowState) <= MB_STATE_BYTES, "the state fits its slot");
static_assert(sizeof(GlobalHist) == 73728, "GlobalHist has no padding");
static_assert(MB_FIXED_ROW_BYTES == 107008,
              "keep MULTI_BLOCK_FIXED_ROW_BYTES in src/ops/sample.rs in step");

// The selects of a sampling row, in order: top-k (when 1 < k < V), top-p (when p < 1), the
// token. Computed by index rather than held in an array, which a runtime index would put in
// local memory.
__device__ __forceinline__ uint32_t select_count(const RowCfg &c) {
    return 1u + (c.top_k > 1 ? 1u : 0u) + (c.top_p < 1.0f ? 1u : 0u);
}

/// The rule of select `index` of a row with settings `c`, its argument in `arg`.
__device__ __forceinline__ Rule select_rule(const RowCfg &c, uint32_t index, uint32_t *arg) {
    if (c.top_k > 1) {
        if (index == 0) {
            *arg = c.top_k;
            return RULE_COUNT;
        }
        --index;
    }
    if (c.top_p < 1.0f) {
        if (index == 0) {
            *arg = __float_as_uint(c.top_p);
            return RULE_TOP_P;
        }
    }
    *arg = draw_bits(c);
    return RULE_SAMPLE;
}

/// One block's view of its row.
struct MbRow {
    const float *logits;
    RowState *st;
    GlobalHist *hist;
    u64 *list;
    u64 *list_weights;
    u64 *weights;
    uint32_t row;
    uint32_t begin, end;  // this block's logits
    uint32_t blocks;      // the row's blocks
    uint32_t id_bits;
    RowCfg cfg;
};

/// False (the block does nothing) for parameters the wrapper never passes.
__device__ __forceinline__ bool mb_row(const SampleParams &p, MbRow &r) {
    const uint32_t row = blockIdx.x;
    const uint32_t vocab = p.vocab;
    if (row >= p.rows || vocab == 0 || vocab > 0x80000000u || p.chunk == 0 ||
        p.chunk > MB_MAX_CHUNK || p.workspace == nullptr || p.rows > p.workspace_rows) {
        return false;
    }
    const u64 fixed = u64(p.workspace_rows) * MB_FIXED_ROW_BYTES;
    if (p.workspace_bytes < fixed || (p.workspace_bytes - fixed) / 8 / p.rows < vocab) {
        return false;
    }
    r.blocks = (vocab - 1) / p.chunk + 1;
    r.begin = blockIdx.y * p.chunk;
    if (blockIdx.y >= r.blocks) return false;
    r.end = vocab - r.begin < p.chunk ? vocab : r.begin + p.chunk;
    unsigned char *base = static_cast<unsigned char *>(p.workspace);
    unsigned char *fixed_row = base + size_t(row) * MB_FIXED_ROW_BYTES;
    r.logits = p.logits + size_t(row) * p.logits_row_stride;
    r.st = reinterpret_cast<RowState *>(fixed_row);
    r.hist = reinterpret_cast<GlobalHist *>(fixed_row + MB_OFF_HIST);
    r.list = reinterpret_cast<u64 *>(fixed_row + MB_OFF_ROW_LIST);
    r.list_weights = reinterpret_cast<u64 *>(fixed_row + MB_OFF_ROW_LIST_WEIGHTS);
    r.weights = reinterpret_cast<u64 *>(base + fixed) + size_t(row) * vocab;
    r.row = row;
    r.id_bits = 32u - uint32_t(__clz(int(vocab - 1)));
    r.cfg = row_cfg(p, row);
    return true;
}

__device__ __forceinline__ u64 composite(float x, uint32_t id, uint32_t vocab, uint32_t id_bits) {
    return (u64(order_key(x)) << id_bits) | u64(vocab - 1 - id);
}

__device__ __forceinline__ int32_t token_of(u64 found, uint32_t vocab, uint32_t id_bits) {
    const u64 reversed = found & ((u64(1) << id_bits) - 1);
    return reversed < vocab ? int32_t(vocab - 1 - uint32_t(reversed)) : 0;
}

/// Thread 0: the state of a fresh select (as `select` sets it up in the one-block kernel).
__device__ __forceinline__ void begin_select(RowState *st, Rule rule, uint32_t arg, uint32_t id_bits) {
    st->s.above_mass = u128(0);
    st->s.above_count = 0;
    st->s.target = u128(rule == RULE_COUNT ? arg : 0);
    st->s.by_mass = rule == RULE_COUNT ? 0u : 1u;
    st->s.prefix = 0;
    st->s.found = 0;
    st->s.done = 0;
    st->remaining = 32 + id_bits;
}

/// Thread 0 of a finisher: a select chose `found` at `rank`; start the next one or write the
/// token.
__device__ __forceinline__ void finish_select(const SampleParams &p, const MbRow &r, u64 found, uint32_t rank) {
    RowState *st = r.st;
    st->cut = found;
    const uint32_t next = st->select + 1;
    st->select = next;
    if (next >= select_count(r.cfg)) {
        write_token(p, r.row, token_of(found, p.vocab, r.id_bits), st->lse_max, st->log_sum);
        st->status = STATUS_FINISHED;
        return;
    }
    if (rank <= LIST_CAP) st->status = STATUS_COMPACT;
    uint32_t arg = 0;
    const Rule rule = select_rule(r.cfg, next, &arg);
    begin_select(st, rule, arg, r.id_bits);
}

/// Launch 1, every row: the block's argmax composite (greedy's tie rule: highest `>` key, then
/// lowest id; merged with a 64-bit atomicMax), its highest order key (the sampling maximum) and
/// its log-sum-exp partial (max m_b, sum exp(l - m_b), stored in the row's weight slot
/// `blockIdx.y`, which no later launch of this call reads before overwriting). The last block
/// combines the partials in block order (the same f32 result on every run) and then finishes a
/// greedy row, or starts a sampling row's first select (and clears its histogram, shared by
/// the blocks beforehand).
__device__ void mb_prepare(const SampleParams &p) {
    __shared__ u64 scratch[32];
    __shared__ float fscratch[32];
    MbRow r;
    if (!mb_row(p, r)) return;
    const bool greedy = is_greedy(r.cfg, p.vocab);
    const bool want_logprob = p.logprobs != nullptr;
    u64 best = 0;
    u64 max_key = 0;
    float fmax = -INFINITY;
    int bad = 0;
    for (uint32_t i = r.begin + threadIdx.x; i < r.end; i += blockDim.x) {
        const float x = r.logits[i];
        const u64 g = (u64(greedy_key(x)) << 32) | u64(~i);
        best = g > best ? g : best;
        const u64 k = order_key(x);
        max_key = k > max_key ? k : max_key;
        fmax = fmaxf(fmax, x);
        bad |= not_finite(x) ? 1 : 0;
    }
    if (greedy) {
        best = block_max(best, scratch);
    } else {
        max_key = block_max(max_key, scratch);
    }
    bad = __syncthreads_or(bad);
    if (want_logprob) {
        fmax = block_reduce_f32(fmax, fscratch, MaxOp{}, -INFINITY);
        float sum = 0.0f;
        for (uint32_t i = r.begin + threadIdx.x; i < r.end; i += blockDim.x) {
            sum += expf(r.logits[i] - fmax);
        }
        sum = block_reduce_f32(sum, fscratch, SumOp{}, 0.0f);
        if (threadIdx.x == 0) {
            r.weights[blockIdx.y] =
                (u64(__float_as_uint(sum)) << 32) | u64(__float_as_uint(fmax));
        }
    }
    if (threadIdx.x == 0) {
        if (greedy) {
            atomicMax(&r.st->best, best);
        } else {
            atomicMax(&r.st->max_key, uint32_t(max_key));
        }
        if (bad) atomicOr(&r.st->nonfinite, 1u);
    }
    if (!greedy) {
        // Nothing reads the histogram in this launch; the blocks share clearing it.
        uint32_t *words = reinterpret_cast<uint32_t *>(r.hist);
        const uint32_t n = uint32_t(sizeof(GlobalHist) / 4);
        for (uint32_t i = blockIdx.y * blockDim.x + threadIdx.x; i < n;
             i += r.blocks * blockDim.x) {
            words[i] = 0;
        }
    }
    if (!stag::last_block_arrive(&r.st->arrive, r.blocks)) return;
    if (threadIdx.x != 0) return;
    RowState *st = r.st;
    report_nonfinite(p, r.row, atomicExch(&st->nonfinite, 0u) != 0);
    float m = -INFINITY, total = 0.0f;
    if (want_logprob) {
        for (uint32_t b = 0; b < r.blocks; ++b) {
            m = fmaxf(m, __uint_as_float(uint32_t(__ldcg(&r.weights[b]))));
        }
        for (uint32_t b = 0; b < r.blocks; ++b) {
            const u64 v = __ldcg(&r.weights[b]);
            const float mb = __uint_as_float(uint32_t(v));
            const float sb = __uint_as_float(uint32_t(v >> 32));
            // A block of -inf logits only adds 0 (and exp(-inf - -inf) would be NaN).
            if (sb > 0.0f) total += sb * expf(mb - m);
        }
    }
    st->lse_max = m;
    st->log_sum = logf(total);
    if (greedy) {
        const u64 b = atomicExch(&st->best, u64(0));
        // The reference's argmax keeps index 0 when it holds a NaN (nothing compares above).
        const float first = r.logits[0];
        write_token(p, r.row, first != first ? 0 : int32_t(~uint32_t(b)), m, st->log_sum);
        st->status = STATUS_FINISHED;
        return;
    }
    st->lmax = key_value(atomicExch(&st->max_key, 0u));
    st->cut = 0;
    st->status = STATUS_SELECTING;
    st->select = 0;
    st->list_len = 0;
    uint32_t arg = 0;
    const Rule rule = select_rule(r.cfg, 0, &arg);
    begin_select(st, rule, arg, r.id_bits);
}

/// Adds this lane's candidate (bucket `b`, composite `c`, fixed-point weight `w`; b == BUCKETS:
/// none) to the block's histogram, one atomic per bucket per warp: the lanes holding one bucket
/// (__match_any_sync) sum their weight pieces (__reduce_add_sync; at most 32 pieces below 2^21,
/// so < 2^26) and their lowest lane adds the count and the sums. Every lane of the warp calls it.
__device__ __forceinline__ void add_to_bucket(uint32_t *count, uint32_t *piece, u64 *first,
                                              uint32_t b, u64 c, u64 w, bool by_mass,
                                              uint32_t lane) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ < 800
    // No redux.sync before sm_80: one atomic per lane.
    (void)lane;
    if (b == BUCKETS) return;
    if (atomicAdd(&count[b], 1u) == 0) first[b] = c;
    if (!by_mass) return;
    for (uint32_t q = 0; q < PIECES; ++q) {
        const uint32_t v = uint32_t((w >> (q * PIECE_BITS)) & PIECE_MASK);
        if (v != 0) atomicAdd(&piece[q * BUCKETS + b], v);
    }
#else
    const uint32_t peers = __match_any_sync(0xffffffffu, b);
    const bool leader = (peers & ((1u << lane) - 1u)) == 0;
    uint32_t sums[PIECES] = {};
    if (by_mass) {  // uniform over the block
#pragma unroll
        for (uint32_t q = 0; q < PIECES; ++q) {
            sums[q] = __reduce_add_sync(peers, uint32_t((w >> (q * PIECE_BITS)) & PIECE_MASK));
        }
    }
    if (!leader || b == BUCKETS) return;
    if (atomicAdd(&count[b], uint32_t(__popc(peers))) == 0) first[b] = c;
#pragma unroll
    for (uint32_t q = 0; q < PIECES; ++q) {
        if (sums[q] != 0) atomicAdd(&piece[q * BUCKETS + b], sums[q]);
    }
#endif
}

/// One digit of the current select over the row.
__device__ __forceinline__ void mb_level(const SampleParams &p, const MbRow &r, unsigned char *smem,
                         SelectState &s) {
    RowState *st = r.st;
    uint32_t *count = reinterpret_cast<uint32_t *>(smem + MB_OFF_COUNT);
    uint32_t *piece = reinterpret_cast<uint32_t *>(smem + MB_OFF_PIECES);
    u64 *first = reinterpret_cast<u64 *>(smem + MB_OFF_FIRST);
    for (uint32_t b = threadIdx.x; b < BUCKETS; b += blockDim.x) {
        count[b] = 0;
        for (uint32_t q = 0; q < PIECES; ++q) piece[q * BUCKETS + b] = 0;
    }
    const uint32_t vocab = p.vocab;
    const uint32_t id_bits = r.id_bits;
    const uint32_t remaining = st->remaining;
    const uint32_t width = remaining < DIGIT_BITS ? remaining : DIGIT_BITS;
    const uint32_t shift = remaining - width;
    const uint32_t digit_mask = (1u << width) - 1;
    const u64 prefix = st->s.prefix;
    const u64 cut = st->cut;
    const bool by_mass = st->s.by_mass != 0;
    const bool first_level = remaining == 32 + id_bits;
    // The first pass over the row computes every weight once; later passes read them.
    const bool store = first_level && st->select == 0;
    const float lmax = st->lmax;
    const float temperature = r.cfg.temperature;
    __syncthreads();
    // Warp-aggregated: the lanes of a warp whose logits fall into one bucket (the top digit's
    // few dozen hot buckets take most of a row) add to it once, through the lowest lane of their
    // group, instead of one contended shared atomic each. The loop runs warp-uniformly (i0 is
    // the warp's first index; blockDim.x is MB_THREADS, a multiple of 32), so every lane takes
    // part in every collective.
    const uint32_t lane = threadIdx.x & 31u;
    for (uint32_t i0 = r.begin + (threadIdx.x & ~31u); i0 < r.end; i0 += blockDim.x) {
        const uint32_t i = i0 + lane;
        uint32_t b = BUCKETS;  // not a candidate of this digit
        u64 c = 0, w = 0;
        if (i < r.end) {
            const float x = r.logits[i];
            if (store) {
                w = fixed_weight(order_key(x), lmax, temperature);
                r.weights[i] = w;
            }
            c = composite(x, i, vocab, id_bits);
            if (c >= cut && (c >> remaining) == (prefix >> remaining)) {
                b = uint32_t(c >> shift) & digit_mask;
                if (by_mass && !store) w = r.weights[i];
            } else {
                w = 0;
            }
        }
        add_to_bucket(count, piece, first, b, c, w, by_mass, lane);
    }
    __syncthreads();
    GlobalHist *g = r.hist;
    for (uint32_t b = threadIdx.x; b < BUCKETS; b += blockDim.x) {
        const uint32_t n = count[b];
        if (n == 0) continue;
        atomicAdd(&g->count[b], n);
        atomicMax(&g->any[b], first[b]);
        for (uint32_t q = 0; q < PIECES; ++q) {
            const uint32_t v = piece[q * BUCKETS + b];
            if (v != 0) atomicAdd(&g->piece[q][b], u64(v));
        }
    }
    if (!stag::last_block_arrive(&st->arrive, r.blocks)) return;

    // The finisher: the global histogram in the one-block layout (exact bucket totals as
    // join(hi, lo)), cleared for the next launch.
    const Histogram h{reinterpret_cast<u64 *>(smem + OFF_MASS_HI),
                      reinterpret_cast<u64 *>(smem + OFF_MASS_LO),
                      reinterpret_cast<u64 *>(smem + OFF_FIRST),
                      reinterpret_cast<u64 *>(smem + OFF_LIST),
                      reinterpret_cast<uint32_t *>(smem + OFF_COUNT)};
    for (uint32_t b = threadIdx.x; b < BUCKETS; b += blockDim.x) {
        const uint32_t n = __ldcg(&g->count[b]);
        U128 t = u128(0);
        for (uint32_t q = 0; q < PIECES; ++q) {
            const u64 v = __ldcg(&g->piece[q][b]);
            const uint32_t sh = q * PIECE_BITS;
            t = add(t, sh == 0 ? u128(v) : U128{v >> (64 - sh), v << sh});
        }
        h.count[b] = n;
        h.first[b] = __ldcg(&g->any[b]);
        h.mass_hi[b] = shr(t, LOW_BITS).lo;  // t < 2^95
        h.mass_lo[b] = t.lo & LOW_MASK;
        g->count[b] = 0;
        g->any[b] = 0;
        for (uint32_t q = 0; q < PIECES; ++q) g->piece[q][b] = 0;
    }
    uint32_t arg = 0;
    const Rule rule = select_rule(r.cfg, st->select, &arg);
    if (threadIdx.x == 0) s = st->s;
    __syncthreads();
    if (threadIdx.x < 32) scan_level(h, s, shift, first_level, rule, arg);
    __syncthreads();
    if (threadIdx.x != 0) return;
    st->s = s;
    // As in `select`: the last digit always isolates one candidate.
    if (s.done || shift == 0) {
        finish_select(p, r, s.done ? s.found : s.prefix, s.above_count + 1);
    } else {
        st->remaining = shift;
    }
}

/// Every block appends its candidates >= cut (and their weights) to the row's list; the last
/// block hands the row to the tail launch.
__device__ __forceinline__ void mb_compact(const SampleParams &p, const MbRow &r) {
    RowState *st = r.st;
    const u64 cut = st->cut;
    for (uint32_t i = r.begin + threadIdx.x; i < r.end; i += blockDim.x) {
        const u64 c = composite(r.logits[i], i, p.vocab, r.id_bits);
        if (c < cut) continue;
        const uint32_t slot = atomicAdd(&st->list_len, 1u);
        if (slot < LIST_CAP) {
            r.list[slot] = c;
            r.list_weights[slot] = r.weights[i];
        }
    }
    if (stag::last_block_arrive(&st->arrive, r.blocks) && threadIdx.x == 0) {
        st->status = STATUS_TAIL;
    }
}

/// The last launch of a sampling call, one block per row: a compacted row's remaining selects
/// on its list (at most LIST_CAP candidates, in shared memory, as the one-block kernel does
/// after compacting), then the token. Rows in any other state are done already.
__device__ void mb_tail(const SampleParams &p) {
    STAG_DYNAMIC_SMEM(unsigned char, smem);
    __shared__ SelectState s;
    MbRow r;
    if (!mb_row(p, r)) return;
    RowState *st = r.st;
    if (st->status != STATUS_TAIL) return;
    const uint32_t n = st->list_len < LIST_CAP ? st->list_len : LIST_CAP;
    u64 *list = reinterpret_cast<u64 *>(smem + OFF_LIST);
    u64 *list_weights = reinterpret_cast<u64 *>(smem + OFF_LIST_WEIGHTS);
    for (uint32_t i = threadIdx.x; i < n; i += blockDim.x) {
        list[i] = r.list[i];
        list_weights[i] = r.list_weights[i];
    }
    __syncthreads();
    const Histogram h{reinterpret_cast<u64 *>(smem + OFF_MASS_HI),
                      reinterpret_cast<u64 *>(smem + OFF_MASS_LO),
                      reinterpret_cast<u64 *>(smem + OFF_FIRST),
                      list,
                      reinterpret_cast<uint32_t *>(smem + OFF_COUNT)};
    const Candidates c{r.logits, list, list_weights, n, p.vocab, r.id_bits, st->lmax,
                       r.cfg.temperature};
    // Compaction follows top-k or top-p: what remains is top-p and the draw, or the draw.
    u64 found = st->cut;
    uint32_t rank = 0;
    if (st->select + 1 < select_count(r.cfg)) {
        found = select(c, h, s, found, RULE_TOP_P, __float_as_uint(r.cfg.top_p), &rank);
    }
    found = select(c, h, s, found, RULE_SAMPLE, draw_bits(r.cfg), &rank);
    if (threadIdx.x == 0) {
        write_token(p, r.row, token_of(found, p.vocab, r.id_bits), st->lse_max, st->log_sum);
        st->status = STATUS_FINISHED;
        st->list_len = 0;
    }
}

/// Sampling, launches 2 and later: the next step of the row's state.
__device__ void mb_step(const SampleParams &p) {
    STAG_DYNAMIC_SMEM(unsigned char, smem);
    __shared__ SelectState s;
    MbRow r;
    // Greedy rows are FINISHED after `prepare`, so they return here.
    if (!mb_row(p, r)) return;
    // Written by an earlier launch; the same value in every block of the row.
    const uint32_t status = r.st->status;
    if (status == STATUS_SELECTING) {
        mb_level(p, r, smem, s);
    } else if (status == STATUS_COMPACT) {
        mb_compact(p, r);
    }
}

}  // namespace

STAG_KERNEL_BOUNDED(sample_f32, SampleParams, MAX_THREADS) { sample_row(p); }
STAG_KERNEL_BOUNDED(sample_multi_prepare_f32, SampleParams, MB_THREADS) { mb_prepare(p); }
STAG_KERNEL_BOUNDED(sample_multi_step_f32, SampleParams, MB_THREADS) { mb_step(p); }
STAG_KERNEL_BOUNDED(sample_multi_tail_f32, SampleParams, MB_THREADS) { mb_tail(p); }
