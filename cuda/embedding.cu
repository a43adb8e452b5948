// Embedding gather: out[r, :] = table[ids[r], :], or zeros when ids[r] is outside [0, vocab).
//
// Pure data movement, so the roofline is the bytes moved: each row reads one table row and
// writes one output row. The copy is bit for bit (no conversion), 16 bytes per thread when the
// table, the output and their row widths allow it, one element per thread otherwise (decided
// per launch, uniformly). Rows lie along grid.x; grid.y and a grid-stride loop cover the
// columns, so one token's row is spread over several blocks when the batch is small.
#include "stag_vec.cuh"

namespace {

constexpr int THREADS = 256;

template <typename T>
__device__ void embedding_row(const EmbeddingParams &p) {
    constexpr int N = stag::Vec<T>::N;
    const uint32_t row = blockIdx.x;
    if (row >= p.rows) return;
    const int32_t id = p.ids[row];
    // The id comes from device memory the host may not have checked (a sampled token, a
    // corrupted buffer): nothing is read unless it names a row of the table.
    const bool valid = id >= 0 && uint32_t(id) < p.vocab;
    const T *src = static_cast<const T *>(p.table) + (valid ? size_t(id) * p.dim : 0);
    T *dst = static_cast<T *>(p.out) + size_t(row) * p.out_row_stride;

    const bool vec = p.dim % N == 0 && p.out_row_stride % N == 0 && stag::aligned16(p.table) &&
                     stag::aligned16(p.out);
    const uint32_t stride = gridDim.y * blockDim.x;
    if (vec) {
        const uint32_t vectors = p.dim / N;
        for (uint32_t v = blockIdx.y * blockDim.x + threadIdx.x; v < vectors; v += stride) {
            const uint4 bits = valid ? *reinterpret_cast<const uint4 *>(src + size_t(v) * N)
                                     : make_uint4(0u, 0u, 0u, 0u);
            *reinterpret_cast<uint4 *>(dst + size_t(v) * N) = bits;
        }
        return;
    }
    for (uint32_t c = blockIdx.y * blockDim.x + threadIdx.x; c < p.dim; c += stride) {
        dst[c] = valid ? src[c] : stag::from_float<T>(0.0f);
    }
}

}  // namespace

STAG_KERNEL_BOUNDED(embedding_f32, EmbeddingParams, THREADS) { embedding_row<float>(p); }
STAG_KERNEL_BOUNDED(embedding_bf16, EmbeddingParams, THREADS) {
    embedding_row<__nv_bfloat16>(p);
}
