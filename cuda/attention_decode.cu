// Decode attention, split-KV ("flash decoding"): one query row per sequence against its KV
// cache, for the causal self-attention and for StagFormer's staggered cross-attention.
//
// Split kernel, attention_decode_split_<dtype>_hd<64|128|any>_g<G>: block (split, kv head ×
// head chunk, row). The splits of a row are sized here, on the device, from the row's
// visible-key count (split_shape): kps = max(min_keys_per_split, ceil(n / max_splits)) keys
// each, rounded up to a granule, so a row with few keys uses one or few splits however large
// the grid is. The grid is sized once for the longest row the caches can hold (grid x =
// max_splits, also the workspace's split stride), and a split past a row's last exits at once:
// a captured graph replays with whatever lengths the rows have at that step.
// The block loads the q vectors of up to G query heads that share the kv head once, streams
// each K and V row of the split once for all of them (GQA: the bytes read do not grow with
// groups up to 8; larger groups take one block per 8 heads), and keeps an f32 online softmax
// per head. It writes one partial per (row, head, split): the running max and sum, and the
// unnormalised output.
// Combine, two ways (fused_combine):
//   1: fused. After its partial, each block increments the counter of its (row, head block)
//      with acquire-release semantics (stag_atomic.cuh); the block that brings it to the row's
//      split count resets it to zero (so the next launch, or graph replay, starts from zero)
//      and combines every split's partials into `out`. A row with one split skips the
//      partials and writes `out` itself; a row with no visible key gets exact zeros from its
//      split-0 block.
//   0: the combine kernel attention_decode_combine_<dtype>, block (head, row), launched after.
// Both combine through combine_head: rescale the partials to their common max, sum them and
// divide by the total.
//
// Roofline design: memory bound (G flops per byte of bf16 K/V, G/2 for f32). Within a block a
// key row is read by `lanes` consecutive threads with one 16-byte load each (64 and 128
// specialised), so a warp reads whole contiguous rows; each thread holds U key rows of K and of
// V in flight, and loads the next tile's U rows before computing on the current one (register
// double buffering), so the loads of tile t + 1 overlap the math of tile t. Scores are reduced
// across the row's lanes by shuffles; each group of lanes runs its own online softmax over its
// keys, and the groups merge once per split through shared memory, laid out so that
// consecutive threads touch consecutive 16-byte words. G = 8 splits the block into two halves
// of four heads each over the same keys (the second half's loads of a row hit L1), which
// halves the q and accumulator registers per thread and keeps three or more blocks per SM.
// Other head dims (up to 256, any alignment) take the generic kernels: scalar element loads,
// lanes rounded up to a power of two.
//
// Scores are kept in log2 units (q is pre-multiplied by scale · log2 e) so every exponential is
// one exp2f; the partial maxima are in those units too, which only this file reads.
#include "stag_atomic.cuh"
#include "stag_cache.cuh"
#include "stag_mask.cuh"
#include "stag_vec.cuh"

namespace {

constexpr int SPLIT_THREADS = 128;
// Keys per split are a multiple of this (every kernel's keys per block iteration at G = 8 and
// most at smaller groups); must equal SPLIT_GRANULE on the host.
constexpr uint32_t SPLIT_GRANULE = 32;
constexpr int COMBINE_MAX_THREADS = 128;
// Elements each lane holds per key row in the generic kernels: head dims up to 32 × 8.
constexpr int GENERIC_ELEMS = 8;
constexpr float LOG2E = 1.4426950408889634f;

// ---- The mask rule: which keys a row sees and where they live -------------------------------

// The visible keys of one row, oldest first: key i (0 <= i < count) is position first + i, in
// cache slot stag::slot_of(first + i, ring) of sequence `seq`. The slots are walked from
// first_slot = slot_of(first, ring) by adding and wrapping once, the same rule without a
// division per key; a dense cache has ring = cache_slots (its keys never reach the end).
struct KeySet {
    uint32_t count;
    uint32_t first_slot;
    uint32_t ring;
    uint32_t seq;

    __device__ __forceinline__ uint32_t slot(uint32_t i) const {
        // first_slot < ring and i < count <= ring, so one subtraction wraps.
        const uint32_t s = first_slot + i;
        return s >= ring ? s - ring : s;
    }
};

// Where the keys visible to a row live (the rule itself is stag::visible_positions). Self:
// position k in slot k, or with a sliding window in a ring of cache_slots >= W slots (slot
// k mod cache_slots). Cross: slot k, or with a window in a ring of cache_slots >= W slots. A
// row whose sequence slot or position lies outside the caches sees nothing (and so writes
// zeros), which keeps every read in bounds whatever the device-side indices hold.
__device__ __forceinline__ KeySet visible_keys(const AttentionDecodeParams &p, uint32_t row) {
    const KeySet none{0, 0, 1, 0};
    const int32_t seq = p.seq_slots[row];
    const int32_t pos = p.positions[row];
    if (seq < 0 || uint32_t(seq) >= p.cache_seqs || pos < 0) return none;
    if (p.mode != STAG_ATTN_SELF && p.mode != STAG_ATTN_CROSS) return none;
    const stag::PosRange keys = stag::visible_positions(p.mode, p.window, pos);
    const uint32_t count = uint32_t(keys.hi - keys.lo);
    if (p.window == 0) {
        // Dense: the newest visible key must have a slot.
        if (keys.hi > int64_t(p.cache_slots)) return none;
        return KeySet{count, stag::slot_of(uint32_t(keys.lo), 0u), p.cache_slots, uint32_t(seq)};
    }
    // A ring (slot k mod cache_slots) holds the window only when it has W slots or more; the
    // decoder gives cross caches W + 1 so that the slot written at step i is never one read at
    // step i.
    if (p.window > p.cache_slots) return none;
    return KeySet{count, stag::slot_of(uint32_t(keys.lo), p.cache_slots), p.cache_slots,
                  uint32_t(seq)};
}

// How a row with `count` visible keys is split: `count` splits of `keys` keys (the last one
// possibly shorter). keys >= min_keys_per_split, so a short row takes few splits; keys >=
// count / max_splits, so the row fits the grid however long it is.
struct Splits {
    uint32_t count;
    uint32_t keys;
};

__device__ __forceinline__ Splits split_shape(const AttentionDecodeParams &p, uint32_t count) {
    if (count == 0) return Splits{0, 1};
    const uint32_t grid = max(p.max_splits, 1u);
    uint32_t kps = max(max(p.min_keys_per_split, 1u), (count - 1) / grid + 1);
    // count < 2^31 (positions are int32), so neither this nor the next line overflows.
    kps = (kps + SPLIT_GRANULE - 1) / SPLIT_GRANULE * SPLIT_GRANULE;
    return Splits{(count - 1) / kps + 1, kps};
}

// ---- Helpers ---------------------------------------------------------------------------------

// exp2(x - m) for a running max x that may still be -inf (no key seen): then 0, never NaN.
__device__ __forceinline__ float exp2_from(float x, float m) {
    return x == -INFINITY ? 0.0f : exp2f(x - m);
}

__device__ __forceinline__ float lane_sum(float v, uint32_t lanes) {
    for (uint32_t offset = lanes >> 1; offset > 0; offset >>= 1) {
        v += __shfl_xor_sync(0xffffffffu, v, int(offset));
    }
    return v;
}

__device__ __forceinline__ float block_max(float v, float *scratch) {
    const int lane = threadIdx.x & 31;
    const int warp = threadIdx.x >> 5;
    const int warps = blockDim.x >> 5;
#pragma unroll
    for (int offset = 16; offset > 0; offset >>= 1) {
        v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, offset));
    }
    if (lane == 0) scratch[warp] = v;
    __syncthreads();
    float m = lane < warps ? scratch[lane] : -INFINITY;
#pragma unroll
    for (int offset = 16; offset > 0; offset >>= 1) {
        m = fmaxf(m, __shfl_xor_sync(0xffffffffu, m, offset));
    }
    __syncthreads();
    return m;
}

// Lanes per key row of the generic kernels: a power of two covering the head dim, at most 32.
__device__ __forceinline__ uint32_t generic_lanes(uint32_t hd) {
    uint32_t lanes = 1;
    while (lanes < hd && lanes < 32) lanes <<= 1;
    return lanes;
}

// One lane's share of a key row, as stored: a 16-byte vector (specialised head dims) or
// GENERIC_ELEMS scalars (elements lane, lane + lanes, ...).
template <typename T, bool GENERIC> struct Share;

template <typename T> struct Share<T, false> {
    static constexpr int E = stag::Vec<T>::N;
    uint4 raw;

    __device__ __forceinline__ void clear() { raw = make_uint4(0, 0, 0, 0); }
    // `vec`: the launch's pointers and strides allow 16-byte loads; otherwise element by element
    // (the same bytes, so a misaligned view is slower, never wrong).
    __device__ __forceinline__ void load(const T *row, uint32_t lane, uint32_t, uint32_t,
                                         bool vec) {
        const T *src = row + size_t(lane) * E;
        if (vec) {
            raw = *reinterpret_cast<const uint4 *>(src);
        } else {
            T *dst = reinterpret_cast<T *>(&raw);
#pragma unroll
            for (int e = 0; e < E; ++e) dst[e] = src[e];
        }
    }
    __device__ __forceinline__ void to_float(float *out) const {
        stag::Vec<T>::load(reinterpret_cast<const T *>(&raw), out);
    }
};

template <typename T> struct Share<T, true> {
    static constexpr int E = GENERIC_ELEMS;
    T raw[E];

    __device__ __forceinline__ void clear() {
#pragma unroll
        for (int e = 0; e < E; ++e) raw[e] = stag::from_float<T>(0.0f);
    }
    __device__ __forceinline__ void load(const T *row, uint32_t lane, uint32_t lanes, uint32_t hd,
                                         bool) {
#pragma unroll
        for (int e = 0; e < E; ++e) {
            const uint32_t d = lane + uint32_t(e) * lanes;
            raw[e] = d < hd ? row[d] : stag::from_float<T>(0.0f);
        }
    }
    __device__ __forceinline__ void to_float(float *out) const {
#pragma unroll
        for (int e = 0; e < E; ++e) out[e] = stag::to_float(raw[e]);
    }
};

// ---- Combine ---------------------------------------------------------------------------------

// out[row, h] from the row's `splits` partials of head h, with the whole block (any multiple of
// 32 threads). Reads the partials through L2 (__ldcg): in the fused path other SMs wrote them
// during this launch. `weights` holds `splits` floats of shared memory; ends with a barrier so
// the caller may reuse it at once.
template <typename T>
__device__ void combine_head(const AttentionDecodeParams &p, uint32_t row, uint32_t h,
                             uint32_t splits, float *weights, float *scratch) {
    const uint32_t hd = p.head_dim;
    T *out = static_cast<T *>(p.out) + size_t(row) * p.out_row_stride + size_t(h) * hd;
    const size_t part0 = (size_t(row) * p.heads + h) * p.max_splits;
    const float *stats = p.partial_stats + part0 * 2;
    const float *partial = p.partial_out + part0 * hd;

    float top = -INFINITY;
    for (uint32_t s = threadIdx.x; s < splits; s += blockDim.x) {
        top = fmaxf(top, __ldcg(stats + 2 * s));
    }
    top = block_max(top, scratch);
    float total = 0.0f;
    for (uint32_t s = threadIdx.x; s < splits; s += blockDim.x) {
        const float w = top == -INFINITY ? 0.0f : exp2_from(__ldcg(stats + 2 * s), top);
        weights[s] = w;
        total += w * __ldcg(stats + 2 * s + 1);
    }
    // block_sum's barriers also publish `weights` to the whole block.
    total = stag::block_sum(total, scratch);
    const float inv = total > 0.0f ? 1.0f / total : 0.0f;
    for (uint32_t d = threadIdx.x; d < hd; d += blockDim.x) {
        float sum = 0.0f;
#pragma unroll 4
        for (uint32_t s = 0; s < splits; ++s) sum += weights[s] * __ldcg(partial + size_t(s) * hd + d);
        out[d] = stag::from_float<T>(sum * inv);
    }
    __syncthreads();
}

// ---- Split kernel ----------------------------------------------------------------------------

// HD: 64 or 128, or 0 for any head dim up to 256. G: query heads per block (the GQA group, or a
// chunk of it). U: key rows per thread in flight.
// PAGED: the caches are paged (p.paging.block_table non-null): each key's row is resolved
// through the block table (stag::cache_slot_row) and a key without a page is masked as absent.
// The dense instances keep their per-head base and per-key offset, unchanged.
template <typename T, int HD, int G, int U, bool PAGED>
__device__ void split_pass(const AttentionDecodeParams &p) {
    constexpr bool GENERIC = HD == 0;
    using S = Share<T, GENERIC>;
    constexpr int E = S::E;
    static_assert(GENERIC || (HD % E == 0 && HD / E <= 32), "one vector per lane");
    // G = 8: two halves of the block, four heads each, over the same keys.
    constexpr int HALVES = G == 8 ? 2 : 1;
    constexpr int GT = G / HALVES;  // heads per thread
    constexpr uint32_t HALF_THREADS = SPLIT_THREADS / HALVES;

    const uint32_t hd = GENERIC ? p.head_dim : uint32_t(HD);
    const uint32_t lanes = GENERIC ? generic_lanes(hd) : uint32_t(HD / E);
    const uint32_t key_groups = HALF_THREADS / lanes;
    const uint32_t half = threadIdx.x / HALF_THREADS;
    const uint32_t local = threadIdx.x % HALF_THREADS;
    const uint32_t lane = local % lanes;
    const uint32_t kgroup = local / lanes;

    // Everything up to the first barrier depends only on the block index and params, so a
    // block that has nothing to do leaves as a whole.
    if (p.kv_heads == 0 || p.heads % p.kv_heads != 0) return;
    const uint32_t group = p.heads / p.kv_heads;
    const uint32_t chunks = (group + G - 1) / G;
    const uint32_t row = blockIdx.z;
    const uint32_t kvh = blockIdx.y / chunks;
    const uint32_t chunk = blockIdx.y % chunks;
    if (row >= p.rows || kvh >= p.kv_heads) return;
    const uint32_t h0 = kvh * group + chunk * G;
    const uint32_t nh = min(uint32_t(G), group - chunk * G);

    const KeySet keys = visible_keys(p, row);
    const Splits shape = split_shape(p, keys.count);
    const uint32_t split = blockIdx.x;
    const bool fused = p.fused_combine != 0;
    if (shape.count == 0) {
        // The empty set (cross-attention at position 0) adds exactly nothing: in the fused
        // path split 0 writes the zeros (the combine kernel does otherwise).
        if (fused && split == 0) {
            T *out = static_cast<T *>(p.out) + size_t(row) * p.out_row_stride + size_t(h0) * hd;
            for (uint32_t i = threadIdx.x; i < nh * hd; i += SPLIT_THREADS) {
                out[i] = stag::from_float<T>(0.0f);
            }
        }
        return;
    }
    if (split >= shape.count) return;
    const uint32_t begin = split * shape.keys;
    const uint32_t end = min(begin + shape.keys, keys.count);
    // A row of one split needs no combine: the fused path writes `out` directly.
    const bool direct = fused && shape.count == 1;

    const T *q_row = static_cast<const T *>(p.q) + size_t(row) * p.q_row_stride;
    // Paged keys have no per-head base (their pages differ): the pool's start is the base.
    const size_t head_base =
        PAGED ? 0 : stag::cache_head(keys.seq, kvh, p.cache_seq_stride, p.cache_head_stride);
    const T *k_head = static_cast<const T *>(p.k_cache) + head_base;
    const T *v_head = static_cast<const T *>(p.v_cache) + head_base;
    const bool vec = !GENERIC && stag::aligned16(p.q) && stag::aligned16(p.k_cache) &&
                     stag::aligned16(p.v_cache) && p.q_row_stride % E == 0 &&
                     p.cache_seq_stride % E == 0 && p.cache_head_stride % E == 0;

    // This thread's heads of the block: half · GT + g.
    const uint32_t hbase = half * GT;
    // The queries, once, pre-scaled into log2 units.
    const float qscale = p.scale * LOG2E;
    float q[GT][E];
#pragma unroll
    for (int g = 0; g < GT; ++g) {
        S share;
        share.clear();
        if (hbase + g < nh) share.load(q_row + size_t(h0 + hbase + g) * hd, lane, lanes, hd, vec);
        share.to_float(q[g]);
#pragma unroll
        for (int e = 0; e < E; ++e) q[g][e] *= qscale;
    }

    float m[GT], l[GT], acc[GT][E];
#pragma unroll
    for (int g = 0; g < GT; ++g) {
        m[g] = -INFINITY;
        l[g] = 0.0f;
#pragma unroll
        for (int e = 0; e < E; ++e) acc[g][e] = 0.0f;
    }

    // Keys past the split's end are masked, never loaded. Returns the tile's loaded keys, bit
    // u for key row u (the paged path's mask; the dense path recomputes it from `end`).
    // Paged keys are resolved one at a time rather than per run of a page: the lanes that read
    // a row load the same table entry (one broadcast, an L1 hit for the page_size keys that
    // share it), and a per-key lookup keeps the unrolled loop free of page-run bookkeeping.
    const size_t kv_head_offset = stag::cache_head(0, kvh, 0, p.cache_head_stride);
    auto load = [&](S *k, S *v, uint32_t base) -> uint32_t {
        uint32_t loaded = 0;
#pragma unroll
        for (int u = 0; u < U; ++u) {
            const uint32_t key = base + kgroup + uint32_t(u) * key_groups;
            k[u].clear();
            v[u].clear();
            if (key < end) {
                if constexpr (PAGED) {
                    size_t row_offset = 0;
                    if (stag::cache_slot_row(p.paging, keys.seq, keys.slot(key),
                                             p.cache_seq_stride, hd, &row_offset)) {
                        const size_t offset = row_offset + kv_head_offset;
                        k[u].load(static_cast<const T *>(p.k_cache) + offset, lane, lanes, hd,
                                  vec);
                        v[u].load(static_cast<const T *>(p.v_cache) + offset, lane, lanes, hd,
                                  vec);
                        loaded |= 1u << u;
                    }
                } else {
                    const size_t offset = stag::cache_slot_offset(keys.slot(key), hd);
                    k[u].load(k_head + offset, lane, lanes, hd, vec);
                    v[u].load(v_head + offset, lane, lanes, hd, vec);
                }
            }
        }
        return loaded;
    };

    // Every thread runs the same number of iterations (the shuffles need the whole warp). The
    // next tile's rows are loaded before the current tile is used.
    const uint32_t step = key_groups * U;
    S k[U], v[U];
    uint32_t loaded = load(k, v, begin);
    for (uint32_t base = begin; base < end; base += step) {
        S kn[U], vn[U];
        const uint32_t loaded_next = load(kn, vn, base + step);
        bool valid[U];
#pragma unroll
        for (int u = 0; u < U; ++u) {
            valid[u] = PAGED ? ((loaded >> u) & 1u) != 0
                             : base + kgroup + uint32_t(u) * key_groups < end;
        }
        float s[U][GT];
#pragma unroll
        for (int u = 0; u < U; ++u) {
            float kf[E];
            k[u].to_float(kf);
#pragma unroll
            for (int g = 0; g < GT; ++g) {
                float dot = 0.0f;
#pragma unroll
                for (int e = 0; e < E; ++e) dot += q[g][e] * kf[e];
                s[u][g] = lane_sum(dot, lanes);
            }
        }
#pragma unroll
        for (int g = 0; g < GT; ++g) {
            float top = m[g];
#pragma unroll
            for (int u = 0; u < U; ++u) {
                if (valid[u]) top = fmaxf(top, s[u][g]);
            }
            // top is -inf only while this lane group has not met a key yet.
            const float keep = top == -INFINITY ? 1.0f : exp2_from(m[g], top);
            m[g] = top;
            l[g] *= keep;
#pragma unroll
            for (int e = 0; e < E; ++e) acc[g][e] *= keep;
#pragma unroll
            for (int u = 0; u < U; ++u) {
                s[u][g] = valid[u] ? exp2f(s[u][g] - top) : 0.0f;
                l[g] += s[u][g];
            }
        }
#pragma unroll
        for (int u = 0; u < U; ++u) {
            float vf[E];
            v[u].to_float(vf);
#pragma unroll
            for (int g = 0; g < GT; ++g) {
#pragma unroll
                for (int e = 0; e < E; ++e) acc[g][e] += s[u][g] * vf[e];
            }
        }
#pragma unroll
        for (int u = 0; u < U; ++u) {
            k[u] = kn[u];
            v[u] = vn[u];
        }
        loaded = loaded_next;
    }

    // Merge the lane groups: stats, then the outputs rescaled to the split's max, then a sum over
    // groups per output element. Layout of `red` per (group, head): quad c of lane `lane` at
    // word (c · lanes + lane) · 4 (vectors), element e of lane at e · lanes + lane (generic).
    STAG_DYNAMIC_SMEM(float, smem);
    float *stat_m = smem;                              // [key_groups][G]
    float *stat_l = smem + SPLIT_THREADS * G;          // [key_groups][G]
    float *red = smem + 2 * SPLIT_THREADS * G;         // [key_groups][G][lanes · E]
    float *head_top = red + SPLIT_THREADS * G * E;     // [G]
    float *head_sum = head_top + G;                    // [G]
    const uint32_t width = lanes * E;
    if (lane == 0) {
#pragma unroll
        for (int g = 0; g < GT; ++g) {
            stat_m[kgroup * G + hbase + g] = m[g];
            stat_l[kgroup * G + hbase + g] = l[g];
        }
    }
    __syncthreads();
#pragma unroll
    for (int g = 0; g < GT; ++g) {
        const uint32_t hg = hbase + g;
        float top = -INFINITY;
        for (uint32_t kg = 0; kg < key_groups; ++kg) top = fmaxf(top, stat_m[kg * G + hg]);
        const float mine = top == -INFINITY ? 0.0f : exp2_from(m[g], top);
        float *dst = red + (kgroup * G + hg) * width;
        if constexpr (GENERIC) {
#pragma unroll
            for (int e = 0; e < E; ++e) dst[e * lanes + lane] = acc[g][e] * mine;
        } else {
#pragma unroll
            for (int c = 0; c < E / 4; ++c) {
                float quad[4];
#pragma unroll
                for (int j = 0; j < 4; ++j) quad[j] = acc[g][c * 4 + j] * mine;
                stag::Vec<float>::store(dst + (c * lanes + lane) * 4, quad);
            }
        }
    }
    if (threadIdx.x < nh) {
        const uint32_t hg = threadIdx.x;
        float top = -INFINITY;
        for (uint32_t kg = 0; kg < key_groups; ++kg) top = fmaxf(top, stat_m[kg * G + hg]);
        float sum = 0.0f;
        if (top != -INFINITY) {
            for (uint32_t kg = 0; kg < key_groups; ++kg) {
                sum += stat_l[kg * G + hg] * exp2_from(stat_m[kg * G + hg], top);
            }
        }
        head_top[hg] = top;
        head_sum[hg] = sum;
    }
    __syncthreads();

    const size_t part0 = (size_t(row) * p.heads + h0) * p.max_splits + split;
    const size_t head_step = p.max_splits;  // partials of consecutive heads, same split
    T *out = static_cast<T *>(p.out) + size_t(row) * p.out_row_stride + size_t(h0) * hd;
    if (!direct && threadIdx.x < nh) {
        float *stats = p.partial_stats + (part0 + threadIdx.x * head_step) * 2;
        stats[0] = head_top[threadIdx.x];
        stats[1] = head_sum[threadIdx.x];
    }
    if constexpr (GENERIC) {
        for (uint32_t it = threadIdx.x; it < nh * hd; it += SPLIT_THREADS) {
            const uint32_t g = it / hd;
            const uint32_t d = it % hd;
            float sum = 0.0f;
            for (uint32_t kg = 0; kg < key_groups; ++kg) sum += red[(kg * G + g) * width + d];
            if (direct) {
                const float total = head_sum[g];
                out[size_t(g) * hd + d] = stag::from_float<T>(total > 0.0f ? sum / total : 0.0f);
            } else {
                p.partial_out[(part0 + g * head_step) * hd + d] = sum;
            }
        }
    } else {
        constexpr uint32_t QUADS = HD / 4;
        const bool vec_out = stag::aligned16(p.partial_out);
        for (uint32_t it = threadIdx.x; it < nh * QUADS; it += SPLIT_THREADS) {
            const uint32_t g = it / QUADS;
            const uint32_t qq = it % QUADS;
            float sum[4] = {0.0f, 0.0f, 0.0f, 0.0f};
            for (uint32_t kg = 0; kg < key_groups; ++kg) {
                float quad[4];
                stag::Vec<float>::load(red + (kg * G + g) * width + qq * 4, quad);
#pragma unroll
                for (int j = 0; j < 4; ++j) sum[j] += quad[j];
            }
            const uint32_t d0 = (qq % lanes) * E + (qq / lanes) * 4;
            if (direct) {
                const float total = head_sum[g];
                const float inv = total > 0.0f ? 1.0f / total : 0.0f;
                T *dst = out + size_t(g) * HD + d0;
#pragma unroll
                for (int j = 0; j < 4; ++j) dst[j] = stag::from_float<T>(sum[j] * inv);
                continue;
            }
            float *dst = p.partial_out + (part0 + g * head_step) * HD + d0;
            if (vec_out) {
                stag::Vec<float>::store(dst, sum);
            } else {
#pragma unroll
                for (int j = 0; j < 4; ++j) dst[j] = sum[j];
            }
        }
    }
    if (!fused || direct) return;

    // The fused combine: the block whose increment completes the row's count combines. The
    // barrier orders every thread's partial stores before thread 0's release; thread 0's
    // acquire and the next barrier order every thread's reads of the others' partials after.
    __shared__ uint32_t last;
    __shared__ float scratch[32];
    __syncthreads();
    if (threadIdx.x == 0) {
        uint32_t *counter = p.counters + size_t(row) * p.heads + h0;
        last = stag::atomic_add_acq_rel_gpu(counter, 1u) + 1 == shape.count;
        // Nobody else touches the counter in this launch once it is complete.
        if (last) stag::store_relaxed_gpu(counter, 0u);
    }
    __syncthreads();
    if (!last) return;
    for (uint32_t g = 0; g < nh; ++g) combine_head<T>(p, row, h0 + g, shape.count, smem, scratch);
}

// ---- The combine kernel (fused_combine = 0) --------------------------------------------------

template <typename T>
__device__ void combine_pass(const AttentionDecodeParams &p) {
    __shared__ float scratch[32];
    STAG_DYNAMIC_SMEM(float, weights);  // [max_splits]
    const uint32_t h = blockIdx.x;
    const uint32_t row = blockIdx.y;
    if (row >= p.rows || h >= p.heads) return;
    const uint32_t hd = p.head_dim;
    const uint32_t splits = split_shape(p, visible_keys(p, row).count).count;
    if (splits == 0) {
        // The empty set (cross-attention at position 0) adds exactly nothing.
        T *out = static_cast<T *>(p.out) + size_t(row) * p.out_row_stride + size_t(h) * hd;
        for (uint32_t d = threadIdx.x; d < hd; d += blockDim.x) out[d] = stag::from_float<T>(0.0f);
        return;
    }
    combine_head<T>(p, row, h, splits, weights, scratch);
}

}  // namespace

// Each shape has a dense and a paged kernel (_paged): the dense one is exactly the kernel
// without paging (same registers), and the host picks by whether a block table is given.
#define STAG_DECODE_SPLIT(dtype, T, hdname, HD, G, U)                                        \
    STAG_KERNEL_BOUNDED(attention_decode_split_##dtype##_##hdname##_g##G, AttentionDecodeParams, \
                        SPLIT_THREADS) {                                                     \
        split_pass<T, HD, G, U, false>(p);                                                   \
    }                                                                                        \
    STAG_KERNEL_BOUNDED(attention_decode_split_paged_##dtype##_##hdname##_g##G,              \
                        AttentionDecodeParams, SPLIT_THREADS) {                              \
        split_pass<T, HD, G, U, true>(p);                                                    \
    }

// U: key rows per thread and tile (two tiles in flight with the prefetch), chosen so that no
// kernel spills and every one keeps >= 3 blocks per SM (<= 168 registers; the 16-byte kernels
// and the generic G = 1, 2 stay <= 128, 4 blocks): U1 at G = 1 and 2 (4 for the 16-byte
// kernels, 2 for the generic ones, whose shares are 8 scalars), 2 at G = 4 and 8 (G = 8 holds
// the registers of G = 4, its block being two halves of four heads).
#define STAG_DECODE_SPLIT_ALL_G(dtype, T, hdname, HD, U1) \
    STAG_DECODE_SPLIT(dtype, T, hdname, HD, 1, U1)        \
    STAG_DECODE_SPLIT(dtype, T, hdname, HD, 2, U1)        \
    STAG_DECODE_SPLIT(dtype, T, hdname, HD, 4, 2)         \
    STAG_DECODE_SPLIT(dtype, T, hdname, HD, 8, 2)

STAG_DECODE_SPLIT_ALL_G(f32, float, hd64, 64, 4)
STAG_DECODE_SPLIT_ALL_G(f32, float, hd128, 128, 4)
STAG_DECODE_SPLIT_ALL_G(f32, float, hdany, 0, 2)
STAG_DECODE_SPLIT_ALL_G(bf16, __nv_bfloat16, hd64, 64, 4)
STAG_DECODE_SPLIT_ALL_G(bf16, __nv_bfloat16, hd128, 128, 4)
STAG_DECODE_SPLIT_ALL_G(bf16, __nv_bfloat16, hdany, 0, 2)

STAG_KERNEL_BOUNDED(attention_decode_combine_f32, AttentionDecodeParams, COMBINE_MAX_THREADS) {
    combine_pass<float>(p);
}
STAG_KERNEL_BOUNDED(attention_decode_combine_bf16, AttentionDecodeParams, COMBINE_MAX_THREADS) {
    combine_pass<__nv_bfloat16>(p);
}
