//! The building blocks of the model contract, exposed so each GPU kernel can be compared with
//! its CPU counterpart. All storage is f32; reductions accumulate in f64 where the contract's
//! numerics are most sensitive (norms, softmax sums).

use std::ops::Range;

use rayon::prelude::*;

/// A row-major f32 matrix.
#[derive(Debug, Clone, PartialEq)]
pub struct Matrix {
    pub rows: usize,
    pub cols: usize,
    pub data: Vec<f32>,
}

impl Matrix {
    pub fn zeros(rows: usize, cols: usize) -> Self {
        Matrix {
            rows,
            cols,
            data: vec![0.0; rows * cols],
        }
    }

    /// Wraps `data`; its length must be `rows * cols`.
    pub fn from_vec(rows: usize, cols: usize, data: Vec<f32>) -> Self {
        assert_eq!(data.len(), rows * cols, "matrix data length");
        Matrix { rows, cols, data }
    }

    pub fn row(&self, r: usize) -> &[f32] {
        &self.data[r * self.cols..(r + 1) * self.cols]
    }

    pub fn row_mut(&mut self, r: usize) -> &mut [f32] {
        &mut self.data[r * self.cols..(r + 1) * self.cols]
    }

    /// Rows `range` as a new matrix.
    pub fn rows_range(&self, range: Range<usize>) -> Matrix {
        Matrix::from_vec(
            range.len(),
            self.cols,
            self.data[range.start * self.cols..range.end * self.cols].to_vec(),
        )
    }

    /// `self += other`, elementwise.
    pub fn add_assign(&mut self, other: &Matrix) {
        assert_eq!(
            (self.rows, self.cols),
            (other.rows, other.cols),
            "add shapes"
        );
        self.data
            .iter_mut()
            .zip(&other.data)
            .for_each(|(a, b)| *a += b);
    }
}

/// Work below this many multiply-adds runs on the calling thread: splitting it costs more than
/// it saves.
const PARALLEL_GEMM_WORK: usize = 1 << 16;

/// `Y = X · Wᵀ` with `x` [M, K] and `w` [N, K] (a weight as stored in checkpoints): Y is [M, N].
pub fn linear(x: &Matrix, w: &Matrix) -> Matrix {
    assert_eq!(
        x.cols, w.cols,
        "linear: x has {} columns, w has {}",
        x.cols, w.cols
    );
    let (m, k, n) = (x.rows, x.cols, w.rows);
    let mut y = Matrix::zeros(m, n);
    if m == 0 || n == 0 {
        return y;
    }
    if k == 0 {
        return y;
    }
    let parallelism = if m * n * k >= PARALLEL_GEMM_WORK {
        gemm::Parallelism::Rayon(0)
    } else {
        gemm::Parallelism::None
    };
    // SAFETY: `y` is [m, n] (row stride n, column stride 1), `x` is [m, k] (row stride k) and
    // `w` is [n, k], read as the [k, n] matrix Wᵀ with row stride 1 and column stride k. All
    // three buffers are live for the call, sized exactly as the strides address, and `y` does
    // not alias the inputs.
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            y.data.as_mut_ptr(),
            1,
            n as isize,
            false,
            x.data.as_ptr(),
            1,
            k as isize,
            w.data.as_ptr(),
            k as isize,
            1,
            0.0,
            1.0,
            false,
            false,
            false,
            parallelism,
        );
    }
    y
}

/// `out = x / sqrt(mean(x²) + eps) · w` for one row.
pub fn rmsnorm(x: &[f32], w: &[f32], eps: f64, out: &mut [f32]) {
    assert!(
        x.len() == w.len() && x.len() == out.len(),
        "rmsnorm lengths"
    );
    let mean_sq = x.iter().map(|&v| f64::from(v) * f64::from(v)).sum::<f64>() / x.len() as f64;
    let inv = 1.0 / (mean_sq + eps).sqrt();
    for ((o, &v), &g) in out.iter_mut().zip(x).zip(w) {
        *o = (f64::from(v) * inv) as f32 * g;
    }
}

/// RMSNorm of every row of `x`.
pub fn rmsnorm_rows(x: &Matrix, w: &[f32], eps: f64) -> Matrix {
    let mut out = Matrix::zeros(x.rows, x.cols);
    out.data
        .par_chunks_mut(x.cols.max(1))
        .zip(x.data.par_chunks(x.cols.max(1)))
        .for_each(|(o, row)| rmsnorm(row, w, eps, o));
    out
}

/// The residual add fused with the norm: `sum = x + r`, `out = rmsnorm(sum)`.
pub fn add_rmsnorm(x: &[f32], r: &[f32], w: &[f32], eps: f64, sum: &mut [f32], out: &mut [f32]) {
    assert!(
        x.len() == r.len() && x.len() == sum.len(),
        "add_rmsnorm lengths"
    );
    for ((s, &a), &b) in sum.iter_mut().zip(x).zip(r) {
        *s = a + b;
    }
    rmsnorm(sum, w, eps, out);
}

/// The RoPE angles' inverse frequencies, Hugging Face Llama convention:
/// `inv_freq[m] = θ^(−2m / head_dim)` for m < head_dim / 2.
pub fn rope_inv_freq(head_dim: usize, theta: f64) -> Vec<f64> {
    (0..head_dim / 2)
        .map(|m| theta.powf(-2.0 * m as f64 / head_dim as f64))
        .collect()
}

/// Rotates every head of `v` (heads × head_dim, contiguous) to position `pos` with
/// `rotate_half`: the pair (v[m], v[m + head_dim/2]) turns by the angle `pos · inv_freq[m]`.
pub fn rope_inplace(v: &mut [f32], head_dim: usize, pos: usize, inv_freq: &[f64]) {
    let half = head_dim / 2;
    assert_eq!(inv_freq.len(), half, "rope: inv_freq length");
    for head in v.chunks_exact_mut(head_dim) {
        for m in 0..half {
            let angle = pos as f64 * inv_freq[m];
            let (sin, cos) = (angle.sin() as f32, angle.cos() as f32);
            let (a, b) = (head[m], head[m + half]);
            head[m] = a * cos - b * sin;
            head[m + half] = b * cos + a * sin;
        }
    }
}

/// How query heads map onto key/value heads (GQA: query head h reads kv head h / group).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HeadLayout {
    pub heads: usize,
    pub kv_heads: usize,
    pub head_dim: usize,
}

impl HeadLayout {
    pub fn group(&self) -> usize {
        self.heads / self.kv_heads
    }
    pub fn q_dim(&self) -> usize {
        self.heads * self.head_dim
    }
    pub fn kv_dim(&self) -> usize {
        self.kv_heads * self.head_dim
    }
}

/// Attention of one query position (all heads of `q`) over key/value rows `key_rows` of `keys`
/// and `values` (rows of `layout.kv_dim()` elements). Scale 1/sqrt(head_dim), softmax in f64.
/// An empty key set writes exact zeros: that is the contract for the first staggered position.
pub fn attention_row(
    q: &[f32],
    keys: &[f32],
    values: &[f32],
    key_rows: Range<usize>,
    layout: HeadLayout,
    out: &mut [f32],
) {
    let (hd, kv_dim) = (layout.head_dim, layout.kv_dim());
    assert_eq!(q.len(), layout.q_dim(), "attention: q length");
    assert_eq!(out.len(), layout.q_dim(), "attention: out length");
    assert!(
        key_rows.end * kv_dim <= keys.len().min(values.len()),
        "attention: key rows"
    );
    out.fill(0.0);
    if key_rows.is_empty() {
        return;
    }
    let scale = 1.0 / (hd as f64).sqrt();
    let mut scores = vec![0f64; key_rows.len()];
    for h in 0..layout.heads {
        let kvh = h / layout.group();
        let qh = &q[h * hd..(h + 1) * hd];
        for (score, r) in scores.iter_mut().zip(key_rows.clone()) {
            let kr = &keys[r * kv_dim + kvh * hd..r * kv_dim + (kvh + 1) * hd];
            let dot: f64 = qh
                .iter()
                .zip(kr)
                .map(|(&a, &b)| f64::from(a) * f64::from(b))
                .sum();
            *score = dot * scale;
        }
        let max = scores.iter().copied().fold(f64::NEG_INFINITY, f64::max);
        let mut denom = 0.0;
        for s in scores.iter_mut() {
            *s = (*s - max).exp();
            denom += *s;
        }
        let mut acc = vec![0f64; hd];
        for (&p, r) in scores.iter().zip(key_rows.clone()) {
            let vr = &values[r * kv_dim + kvh * hd..r * kv_dim + (kvh + 1) * hd];
            for (a, &v) in acc.iter_mut().zip(vr) {
                *a += p * f64::from(v);
            }
        }
        for (o, a) in out[h * hd..(h + 1) * hd].iter_mut().zip(acc) {
            *o = (a / denom) as f32;
        }
    }
}

/// silu(x) = x · sigmoid(x).
pub fn silu(x: f32) -> f32 {
    let x = f64::from(x);
    (x / (1.0 + (-x).exp())) as f32
}

/// `silu(gate) ⊙ up`, elementwise.
pub fn swiglu(gate: &Matrix, up: &Matrix) -> Matrix {
    assert_eq!((gate.rows, gate.cols), (up.rows, up.cols), "swiglu shapes");
    let data = gate
        .data
        .iter()
        .zip(&up.data)
        .map(|(&g, &u)| silu(g) * u)
        .collect();
    Matrix::from_vec(gate.rows, gate.cols, data)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn linear_matches_naive_loop() {
        let x = Matrix::from_vec(2, 3, vec![1.0, 2.0, 3.0, -1.0, 0.5, 4.0]);
        let w = Matrix::from_vec(2, 3, vec![0.5, -1.0, 2.0, 3.0, 1.0, -0.25]);
        let y = linear(&x, &w);
        assert_eq!(y.data, vec![4.5, 4.25, 7.0, -3.5]);
    }

    #[test]
    fn rope_at_position_zero_is_identity_and_preserves_norm() {
        let inv = rope_inv_freq(4, 10000.0);
        let mut v = vec![1.0, 2.0, 3.0, 4.0];
        rope_inplace(&mut v, 4, 0, &inv);
        assert_eq!(v, vec![1.0, 2.0, 3.0, 4.0]);
        rope_inplace(&mut v, 4, 7, &inv);
        let norm: f32 = v.iter().map(|a| a * a).sum();
        assert!((norm - 30.0).abs() < 1e-4);
        // First pair turns by 7 rad: (1, 3) -> (cos7 - 3 sin7, 3 cos7 + sin7).
        let (c, s) = (7f32.cos(), 7f32.sin());
        assert!((v[0] - (c - 3.0 * s)).abs() < 1e-5);
        assert!((v[2] - (3.0 * c + s)).abs() < 1e-5);
    }

    #[test]
    fn empty_key_set_gives_exact_zeros() {
        let layout = HeadLayout {
            heads: 2,
            kv_heads: 1,
            head_dim: 2,
        };
        let mut out = vec![f32::NAN; 4];
        attention_row(&[1.0; 4], &[1.0; 2], &[1.0; 2], 0..0, layout, &mut out);
        assert_eq!(out, vec![0.0; 4]);
    }

    #[test]
    fn single_key_returns_its_value() {
        let layout = HeadLayout {
            heads: 2,
            kv_heads: 1,
            head_dim: 2,
        };
        let mut out = vec![0.0; 4];
        attention_row(
            &[1.0, 2.0, 3.0, 4.0],
            &[0.3, 0.7],
            &[5.0, -6.0],
            0..1,
            layout,
            &mut out,
        );
        assert_eq!(out, vec![5.0, -6.0, 5.0, -6.0]);
    }
}
