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


/*
 * ---- Decode and prefill kernels ----
 *
 * Conventions shared by the structs below:
 * - Token rows: `rows` activations, row r starting at r * <tensor>_row_stride elements.
 * - `seq_slots[r]` is the batch slot (sequence) row r belongs to and `positions[r]` its token
 *   position; both int32, validated by the host (the kernels still never index out of bounds).
 * - KV caches: element [seq][kv_head][slot][d] at seq * cache_seq_stride +
 *   kv_head * cache_head_stride + slot * head_dim + d, with `cache_slots` slots per head. Self
 *   caches hold position k in slot k (sliding-window self caches: a ring, slot k mod
 *   cache_slots); windowed cross caches are rings of cache_slots >= W slots
 *   (slot = k mod cache_slots; the decoder uses W + 1, so the slot the prior section writes at
 *   step i is never one read at step i).
 * - Paged KV caches (`paging`, a StagKvPaging, in every struct that carries a cache): with
 *   paging.block_table null the cache is dense as above. Otherwise each layer is a pool of
 *   `paging.cache_pages` pages, page = [kv_heads][page_size][head_dim], and
 *   (seq, kv_head, slot, d) lies at
 *     block_table[seq * block_table_stride + slot / page_size] * cache_seq_stride
 *     + kv_head * cache_head_stride + (slot % page_size) * head_dim + d,
 *   so cache_seq_stride is the page stride (dense: one page per sequence, page_size =
 *   cache_slots) and cache_head_stride steps between heads inside a page. Slots are what they
 *   are dense (positions, or position mod the ring), so rings compose with paging;
 *   cache_slots and cache_seqs keep their meaning (slots per sequence, rows of the table). A
 *   table entry < 0 or >= cache_pages (or past block_table_stride) is "no page": writers skip
 *   the row as they skip a row without a slot, readers treat its keys as absent; nothing is
 *   ever read or written outside the pool. The host checks block_table_stride * page_size >=
 *   cache_slots and that the table holds cache_seqs * block_table_stride entries.
 * - `window` = W, or 0 for unbounded.
 * - Activations and caches are f32 or bf16 (chosen by the kernel name); math is f32.
 */

/* The block table of a paged KV cache (see the conventions above); all zero: dense. */
typedef struct StagKvPaging {
    const int32_t *block_table; /* [cache_seqs][block_table_stride] page ids; null: dense */
    uint32_t block_table_stride; /* entries per sequence */
    uint32_t page_size;          /* slots per page (>= 1 when paged) */
    uint32_t cache_pages;        /* pages in the pool: valid ids are 0..cache_pages - 1 */
    uint32_t reserved;
} StagKvPaging;

/* Embedding gather: out[r, :] = table[ids[r], :]. An id outside [0, vocab) writes zeros and
 * reads nothing. */
typedef struct EmbeddingParams {
    const int32_t *ids;
    const void *table;
    void *out;
    uint32_t rows;
    uint32_t dim;
    uint32_t vocab;
    uint32_t out_row_stride;
} EmbeddingParams;

/* RoPE on q and on the new keys, both in place (prefill attention reads the roped keys from
 * the projection rows), and the append of k (roped) and v into the cache at
 * (seq_slots[r], positions[r]), one pass. cos/sin come from a host-built table
 * [table_positions, head_dim / 2] (angle = position * inv_freq, computed in f64, RoPE scaling
 * included). `ring` != 0: the cache is a ring (a sliding-window self cache), position k in slot
 * k mod cache_slots; else position k in slot k. A row whose seq_slot is outside
 * [0, cache_seqs), whose position is outside the table, or (dense) outside the cache is skipped
 * entirely (q included). */
typedef struct RopeAppendParams {
    void *q;
    void *k;
    const void *v;
    void *k_cache;
    void *v_cache;
    const float *rope_cos;
    const float *rope_sin;
    const int32_t *seq_slots;
    const int32_t *positions;
    uint32_t rows;
    uint32_t heads;
    uint32_t kv_heads;
    uint32_t head_dim;
    uint32_t q_row_stride;
    uint32_t k_row_stride;
    uint32_t v_row_stride;
    uint32_t cache_seq_stride;
    uint32_t cache_head_stride;
    uint32_t cache_slots;
    uint32_t table_positions;
    uint32_t cache_seqs;
    uint32_t ring;
    uint32_t reserved;
    StagKvPaging paging;
} RopeAppendParams;

/* Decode attention of one query row per sequence over its KV cache, split-KV.
 * mode STAG_ATTN_SELF: keys at positions 0..positions[r] (causal); with window W != 0 (a
 *   sliding window) positions max(0, positions[r] - W + 1)..positions[r], in a ring of
 *   cache_slots >= W slots (slot = k mod cache_slots).
 * mode STAG_ATTN_CROSS: the staggered cross-attention: memory positions
 *   max(0, positions[r] - W)..positions[r] - 1 (none at position 0: exact zero output).
 * Splits are sized on the device from each row's visible-key count: split s of a row with n
 * keys takes keys [s * kps, (s + 1) * kps) with kps = max(min_keys_per_split,
 * ceil(n / max_splits)) rounded up to 32, so a short row uses few splits however large the grid
 * (max_splits, grid x) is; splits past a row's last exit at once. Every split writes f32
 * partials (running max, sum, unnormalised output) into the workspace. fused_combine = 0: a
 * second launch (pass 2) combines them into `out`. fused_combine = 1: the block that finishes
 * last for its (row, head block) combines them (counters[row * heads + first head]: zero
 * before a launch, and zero again after it); a row with a single split writes `out` directly.
 * `cache_seqs`: sequences the caches hold, so that the kernels can bound seq_slots[r] (a row
 * whose slot or position lies outside the caches reads nothing and writes zeros). */
#define STAG_ATTN_SELF 0u
#define STAG_ATTN_CROSS 1u
typedef struct AttentionDecodeParams {
    const void *q;
    const void *k_cache;
    const void *v_cache;
    void *out;
    float *partial_out;    /* [rows, heads, max_splits, head_dim] */
    float *partial_stats;  /* [rows, heads, max_splits, 2]: (max, sum) */
    const int32_t *seq_slots;
    const int32_t *positions;
    uint32_t rows;
    uint32_t heads;
    uint32_t kv_heads;
    uint32_t head_dim;
    uint32_t q_row_stride;
    uint32_t out_row_stride;
    uint32_t cache_seq_stride;
    uint32_t cache_head_stride;
    uint32_t cache_slots;
    uint32_t min_keys_per_split;
    uint32_t max_splits;
    uint32_t mode;
    uint32_t window;
    float scale;
    uint32_t cache_seqs;
    uint32_t fused_combine;
    uint32_t *counters;    /* [rows, heads]; used when fused_combine = 1 */
    StagKvPaging paging;
} AttentionDecodeParams;

/* Projected memory K/V of step i written into every cross-attention layer's cache:
 * kv row r holds, for layer l, k at kv[r * kv_row_stride + l * 2 * kv_dim] and v right after it
 * (kv_dim = kv_heads * head_dim), as one GEMM against the concatenated [Wk_l; Wv_l] weights
 * produces. Layer l's caches start at l * cache_layer_stride elements. Slot = position mod W
 * (or the position when unbounded). A row whose seq_slot is outside [0, cache_seqs), whose
 * position is negative or whose slot is >= cache_slots is skipped. */
typedef struct MemoryKvAppendParams {
    const void *kv;
    void *k_cache;
    void *v_cache;
    const int32_t *seq_slots;
    const int32_t *positions;
    uint32_t rows;
    uint32_t layers;
    uint32_t kv_heads;
    uint32_t head_dim;
    uint32_t kv_row_stride;
    uint32_t cache_layer_stride;
    uint32_t cache_seq_stride;
    uint32_t cache_head_stride;
    uint32_t cache_slots;
    uint32_t window;
    uint32_t cache_seqs;
    uint32_t reserved;
    StagKvPaging paging;
} MemoryKvAppendParams;

/* Prefill attention, flash style (tiled, online softmax, no O(P^2) memory), over a ragged batch
 * packed row after row: sequence b owns query rows q_offsets[b]..q_offsets[b+1] and key rows
 * k_offsets[b]..k_offsets[b+1]; its first query row is at position q_positions0[b] and key row j
 * at position j (relative to k_offsets[b]).
 * mode STAG_ATTN_SELF: key k visible to query position i when max(0, i - W + 1) <= k <= i
 *   (W = window; 0 = no sliding window: every k <= i).
 * mode STAG_ATTN_CROSS: when max(0, i - W) <= k <= i - 1 (exact zero output if none).
 * Both rules are stag::visible_positions (cuda/include/stag_mask.cuh).
 * `q_rows` / `k_rows`: rows the q/out and k/v tensors hold; the kernel clamps every offset into
 * them, so whatever the device arrays hold it never touches a row outside the tensors. */
typedef struct AttentionPrefillParams {
    const void *q;
    const void *k;
    const void *v;
    void *out;
    const int32_t *q_offsets;
    const int32_t *k_offsets;
    const int32_t *q_positions0;
    uint32_t sequences;
    uint32_t heads;
    uint32_t kv_heads;
    uint32_t head_dim;
    uint32_t q_row_stride;
    uint32_t k_row_stride;
    uint32_t v_row_stride;
    uint32_t out_row_stride;
    uint32_t mode;
    uint32_t window;
    float scale;
    uint32_t q_rows;
    uint32_t k_rows;
    uint32_t reserved;
} AttentionPrefillParams;

/* Tensor-core prefill attention (bf16): the contract of AttentionPrefillParams (query rows,
 * positions, masks, GQA, ragged batches), with the keys of sequence b read from one of two
 * sources (kv_source):
 *   STAG_KV_PACKED (0): key position j is row k_offsets[b] + j of k and v (rows k_row_stride /
 *     v_row_stride elements apart, kv head h at h * head_dim); positions < the sequence's rows.
 *   STAG_KV_CACHE (1): a KV cache [cache_seqs][kv_heads][cache_slots][head_dim] at the given
 *     strides; the sequence's cache slot is q_slots[q_offsets[b]] (the slot of its first query
 *     row; every row of a sequence has the same slot), and position j is cache row j
 *     (cache_ring == 0, positions < cache_slots) or j mod cache_slots (cache_ring != 0).
 * k_offsets is unused for the cache, q_slots for packed keys. */
typedef struct AttentionPrefillMmaParams {
    const void *q;
    const void *k;
    const void *v;
    void *out;
    const int32_t *q_offsets;
    const int32_t *k_offsets;
    const int32_t *q_positions0;
    const int32_t *q_slots;
    uint64_t cache_seq_stride;
    uint64_t cache_head_stride;
    uint32_t sequences;
    uint32_t heads;
    uint32_t kv_heads;
    uint32_t head_dim;
    uint32_t q_row_stride;
    uint32_t k_row_stride;
    uint32_t v_row_stride;
    uint32_t out_row_stride;
    uint32_t mode;
    uint32_t window;
    float scale;
    uint32_t q_rows;
    uint32_t k_rows;
    uint32_t kv_source;
    uint32_t cache_ring;
    uint32_t cache_slots;
    uint32_t cache_seqs;
    uint32_t reserved;
    StagKvPaging paging;
} AttentionPrefillMmaParams;

#define STAG_KV_PACKED 0u
#define STAG_KV_CACHE 1u

/* SwiGLU: out[r, j] = silu(gate_up[r, j]) * gate_up[r, ffn + j] (the fused gate|up output). */
typedef struct SwigluParams {
    const void *gate_up;
    void *out;
    uint32_t rows;
    uint32_t ffn;
    uint32_t in_row_stride;
    uint32_t out_row_stride;
} SwigluParams;

/* One row's sampling settings (docs/MODEL.md, "Sampling"): greedy when temperature == 0 or
 * top_k == 1, else temperature / top-k (0 = all) / top-p (1 = all) with the counter-based
 * uniform(seed, counter). `counter` is the token's index in its request, so a request's draws
 * do not depend on the row (slot) it is decoded in. Every field is 32 bits wide (the seed in two
 * halves) so that an array of rows is a plain u32 array on the device. */
typedef struct StagSampleRow {
    uint32_t seed_lo;
    uint32_t seed_hi;
    uint32_t counter;
    uint32_t top_k;
    float temperature;
    float top_p;
} StagSampleRow;

/* Sampling of one token per row of f32 logits, each row with its own settings (settings[r]).
 * Ties go to the lowest id. The one-block kernel uses no workspace; the multi-block kernels take
 * `chunk` logits per block and a workspace laid out for `workspace_rows` rows (cuda/sample.cu,
 * "Multi-block"); their launch sequence depends on the shape only, never on the settings. */
typedef struct SampleParams {
    const float *logits;
    int32_t *tokens;
    const StagSampleRow *settings;
    /* Optional (null: not reported): logprobs[r] = log_softmax(row r)[tokens[r]] in f32, the
     * raw logits' distribution (before temperature, top-k and top-p). */
    float *logprobs;
    void *workspace;
    /* Optional (null: not reported): nonfinite[r] = 1 when row r holds a NaN or inf logit, else
     * 0; the token is still chosen as without it. */
    int32_t *nonfinite;
    uint64_t workspace_bytes;
    uint32_t rows;
    uint32_t vocab;
    uint32_t logits_row_stride;
    uint32_t workspace_rows;
    uint32_t chunk;
    uint32_t reserved;
} SampleParams;

/* y = alpha * x + beta * y over n elements (beta == 0: y is only written). The decoder's
 * output mix z = sum_s alpha_s * out_s is one call per section. */
typedef struct AxpbyParams {
    const void *x;
    void *y;
    uint64_t n;
    float alpha;
    float beta;
} AxpbyParams;

/*
 * Decode GEMV / small-M GEMM with a fused prologue and epilogue (cuda/gemv.cu):
 *   acc[m][n] = sum_k W[n][k] * h[m][k]   for m < rows (<= 16), n < n (W rows), f32 accumulation,
 * per group g < gridDim.y (<= STAG_GEMV_MAX_GROUPS; `rows` counts one group's rows);
 * W row-major [n][k] (w_row_stride elements apart, 16-byte aligned rows), x dense-ish rows
 * x_row_stride apart. Prologue: norm_weight == NULL: h = x; else h = round(x * inv_rms *
 * norm_weight) with inv_rms = 1 / sqrt(mean(x^2) + eps) of each row (rmsnorm's math, overflow-
 * safe). Epilogue (`epilogue`, STAG_GEMV_*), each on g = round(acc):
 *   STORE:        y[m][n] = g
 *   RESIDUAL_ADD: y[m][n] = round(y[m][n] + g)                      (in place)
 *   SWIGLU:       W = [gate; up] (n = 2F rows); y[m][j] = round(silu(g_j) * g_{F+j})
 *   ROPE_KV:      W = [q; k; v] ((heads + 2 kv_heads) * head_dim rows): y[m] = the q|k|v row with
 *                 q and k roped (rope_append's math), k and v appended to the self caches at
 *                 (seq_slots[m], positions[m]) (ring != 0: slot = position mod cache_slots);
 *                 a row with no slot or table row keeps g unroped in y and writes no cache.
 *   CROSS_KV:     W = [Wk_0; Wv_0; Wk_1; ...] (layers * 2 * kv_heads * head_dim rows): g
 *                 written into every layer's cross caches as memory_kv_append does (window != 0:
 *                 slot = position mod window); y unused.
 */
#define STAG_GEMV_STORE 0u
#define STAG_GEMV_RESIDUAL_ADD 1u
#define STAG_GEMV_SWIGLU 2u
#define STAG_GEMV_ROPE_KV 3u
#define STAG_GEMV_CROSS_KV 4u
/* Most weight groups of one grouped gemv launch (gridDim.y): the most StagFormer sections. */
#define STAG_GEMV_MAX_GROUPS 4u
typedef struct GemvParams {
    const void *x;
    const void *w;
    void *y;
    const float *norm_weight;
    void *k_cache;
    void *v_cache;
    const float *rope_cos;
    const float *rope_sin;
    const int32_t *seq_slots;
    const int32_t *positions;
    uint32_t rows;
    uint32_t n;
    uint32_t k;
    uint32_t x_row_stride;
    uint32_t w_row_stride;
    uint32_t y_row_stride;
    float eps;
    uint32_t epilogue;
    uint32_t heads;
    uint32_t kv_heads;
    uint32_t head_dim;
    uint32_t layers;
    uint32_t cache_layer_stride;
    uint32_t cache_seq_stride;
    uint32_t cache_head_stride;
    uint32_t cache_slots;
    uint32_t cache_seqs;
    uint32_t table_positions;
    uint32_t ring;
    uint32_t window;
    /* Grouped launches (gridDim.y = groups): group g >= 1 uses group_w[g - 1] and
     * group_norm_weight[g - 1] (null: no norm) on its rows g*rows .. (g+1)*rows of x, y,
     * seq_slots and positions; group 0 uses w and norm_weight. */
    const void *group_w[STAG_GEMV_MAX_GROUPS - 1];
    const float *group_norm_weight[STAG_GEMV_MAX_GROUPS - 1];
    StagKvPaging paging;
} GemvParams;

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

STAG_LAYOUT_ASSERT(sizeof(StagKvPaging) == 24, "StagKvPaging size");
STAG_LAYOUT_ASSERT(sizeof(EmbeddingParams) == 40, "EmbeddingParams size");
STAG_LAYOUT_ASSERT(sizeof(RopeAppendParams) == 152, "RopeAppendParams size");
STAG_LAYOUT_ASSERT(sizeof(AttentionDecodeParams) == 160, "AttentionDecodeParams size");
STAG_LAYOUT_ASSERT(sizeof(MemoryKvAppendParams) == 112, "MemoryKvAppendParams size");
STAG_LAYOUT_ASSERT(sizeof(AttentionPrefillParams) == 112, "AttentionPrefillParams size");
STAG_LAYOUT_ASSERT(sizeof(AttentionPrefillMmaParams) == 176, "AttentionPrefillMmaParams size");
STAG_LAYOUT_ASSERT(sizeof(SwigluParams) == 32, "SwigluParams size");
STAG_LAYOUT_ASSERT(sizeof(SampleParams) == 80, "SampleParams size");
STAG_LAYOUT_ASSERT(sizeof(StagSampleRow) == 24, "StagSampleRow size");
STAG_LAYOUT_ASSERT(sizeof(AxpbyParams) == 32, "AxpbyParams size");
STAG_LAYOUT_ASSERT(sizeof(GemvParams) == 232, "GemvParams size");

#undef STAG_LAYOUT_ASSERT
#undef STAG_ALIGNOF
#endif /* STAG_LAYOUT_ASSERT */

#endif /* STAG_PARAMS_H */
