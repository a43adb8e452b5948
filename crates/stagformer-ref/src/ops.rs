//! The building blocks of the model contract, exposed so each GPU kernel can be compared with
//! its CPU counterpart. All storage is f32; reductions accumulate in f64 where the contract's
//! numerics are most sensitive (norms, softmax sums).
//!
//! Every block checks its operands' shapes before it reads or writes anything and reports a
//! mismatch as a [`ShapeError`] naming the block and the argument.

use std::ops::Range;

use rayon::prelude::*;

use crate::error::ShapeError;

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
    pub fn from_vec(rows: usize, cols: usize, data: Vec<f32>) -> Result<Self, ShapeError> {
        if rows.checked_mul(cols) != Some(data.len()) {
            return Err(ShapeError {
                op: "Matrix::from_vec",
                arg: "data",
                expected: format!("{rows} × {cols} elements"),
                found: format!("{} elements", data.len()),
            });
        }
        Ok(Matrix { rows, cols, data })
    }

    /// Row `r`.
    ///
    /// # Panics
    ///
    /// If `r >= self.rows`, as slice indexing does.
    pub fn row(&self, r: usize) -> &[f32] {
        &self.data[r * self.cols..(r + 1) * self.cols]
    }

    /// Row `r`, mutably.
    ///
    /// # Panics
    ///
    /// If `r >= self.rows`, as slice indexing does.
    pub fn row_mut(&mut self, r: usize) -> &mut [f32] {
        &mut self.data[r * self.cols..(r + 1) * self.cols]
    }

    /// Rows `range` as a new matrix.
    pub fn rows_range(&self, range: Range<usize>) -> Result<Matrix, ShapeError> {
        const OP: &str = "Matrix::rows_range";
        check_data(OP, "self", self)?;
        if range.start > range.end || range.end > self.rows {
            return Err(ShapeError {
                op: OP,
                arg: "range",
                expected: format!("a range within 0..{}", self.rows),
                found: format!("{range:?}"),
            });
        }
        Ok(Matrix {
            rows: range.len(),
            cols: self.cols,
            data: self.data[range.start * self.cols..range.end * self.cols].to_vec(),
        })
    }

    /// `self += other`, elementwise.
    pub fn add_assign(&mut self, other: &Matrix) -> Result<(), ShapeError> {
        const OP: &str = "Matrix::add_assign";
        check_data(OP, "self", self)?;
        check_data(OP, "other", other)?;
        check_same_shape(OP, "other", self, other)?;
        self.data
            .iter_mut()
            .zip(&other.data)
            .for_each(|(a, b)| *a += b);
        Ok(())
    }
}

fn shape(m: &Matrix) -> String {
    format!("[{}, {}]", m.rows, m.cols)
}

/// `m.data` holds exactly `rows × cols` values. The fields are public, so a matrix built by hand
/// may not; [`linear`]'s unsafe GEMM relies on it and the other blocks would silently truncate.
fn check_data(op: &'static str, arg: &'static str, m: &Matrix) -> Result<(), ShapeError> {
    if m.rows.checked_mul(m.cols) == Some(m.data.len()) {
        return Ok(());
    }
    Err(ShapeError {
        op,
        arg,
        expected: format!("{} × {} elements for shape {}", m.rows, m.cols, shape(m)),
        found: format!("{} elements", m.data.len()),
    })
}

fn check_same_shape(
    op: &'static str,
    arg: &'static str,
    want: &Matrix,
    got: &Matrix,
) -> Result<(), ShapeError> {
    if (want.rows, want.cols) == (got.rows, got.cols) {
        return Ok(());
    }
    Err(ShapeError {
        op,
        arg,
        expected: format!("shape {}", shape(want)),
        found: format!("shape {}", shape(got)),
    })
}

/// `got` elements where `want` are needed; `of` says what `want` is.
fn check_len(
    op: &'static str,
    arg: &'static str,
    want: usize,
    of: &str,
    got: usize,
) -> Result<(), ShapeError> {
    if want == got {
        return Ok(());
    }
    Err(ShapeError {
        op,
        arg,
        expected: format!("{want} elements ({of})"),
        found: format!("{got} elements"),
    })
}

/// Work below this many multiply-adds runs on the calling thread: splitting it costs more than
/// it saves.
const PARALLEL_GEMM_WORK: usize = 1 << 16;

/// `Y = X · Wᵀ` with `x` [M, K] and `w` [N, K] (a weight as stored in checkpoints): Y is [M, N].
pub fn linear(x: &Matrix, w: &Matrix) -> Result<Matrix, ShapeError> {
    const OP: &str = "linear";
    check_data(OP, "x", x)?;
    check_data(OP, "w", w)?;
    if x.cols != w.cols {
        return Err(ShapeError {
            op: OP,
            arg: "w",
            expected: format!("{} columns, as x {} has", x.cols, shape(x)),
            found: format!("shape {}", shape(w)),
        });
    }
    let (m, k, n) = (x.rows, x.cols, w.rows);
    let mut y = Matrix::zeros(m, n);
    if m == 0 || n == 0 {
        return Ok(y);
    }
    if k == 0 {
        return Ok(y);
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
    Ok(y)
}

/// `out = x / sqrt(mean(x²) + eps) · w` for one row.
pub fn rmsnorm(x: &[f32], w: &[f32], eps: f64, out: &mut [f32]) -> Result<(), ShapeError> {
    const OP: &str = "rmsnorm";
    check_len(OP, "w", x.len(), "x's length", w.len())?;
    check_len(OP, "out", x.len(), "x's length", out.len())?;
    rmsnorm_checked(x, w, eps, out);
    Ok(())
}

/// [`rmsnorm`] on operands whose lengths the caller has checked are equal.
fn rmsnorm_checked(x: &[f32], w: &[f32], eps: f64, out: &mut [f32]) {
    let mean_sq = x.iter().map(|&v| f64::from(v) * f64::from(v)).sum::<f64>() / x.len() as f64;
    let inv = 1.0 / (mean_sq + eps).sqrt();
    for ((o, &v), &g) in out.iter_mut().zip(x).zip(w) {
        *o = (f64::from(v) * inv) as f32 * g;
    }
}

/// RMSNorm of every row of `x`.
pub fn rmsnorm_rows(x: &Matrix, w: &[f32], eps: f64) -> Result<Matrix, ShapeError> {
    const OP: &str = "rmsnorm_rows";
    check_data(OP, "x", x)?;
    check_len(OP, "w", x.cols, "x's columns", w.len())?;
    let mut out = Matrix::zeros(x.rows, x.cols);
    out.data
        .par_chunks_mut(x.cols.max(1))
        .zip(x.data.par_chunks(x.cols.max(1)))
        .for_each(|(o, row)| rmsnorm_checked(row, w, eps, o));
    Ok(out)
}

/// The residual add fused with the norm: `sum = x + r`, `out = rmsnorm(sum)`.
pub fn add_rmsnorm(
    x: &[f32],
    r: &[f32],
    w: &[f32],
    eps: f64,
    sum: &mut [f32],
    out: &mut [f32],
) -> Result<(), ShapeError> {
    const OP: &str = "add_rmsnorm";
    let n = x.len();
    check_len(OP, "r", n, "x's length", r.len())?;
    check_len(OP, "w", n, "x's length", w.len())?;
    check_len(OP, "sum", n, "x's length", sum.len())?;
    check_len(OP, "out", n, "x's length", out.len())?;
    for ((s, &a), &b) in sum.iter_mut().zip(x).zip(r) {
        *s = a + b;
    }
    rmsnorm_checked(sum, w, eps, out);
    Ok(())
}

/// The RoPE angles' inverse frequencies, Hugging Face Llama convention:
/// `inv_freq[m] = θ^(−2m / head_dim)` for m < head_dim / 2.
pub fn rope_inv_freq(head_dim: usize, theta: f64) -> Vec<f64> {
    (0..head_dim / 2)
        .map(|m| theta.powf(-2.0 * m as f64 / head_dim as f64))
        .collect()
}

/// Rotates every head of `v` (heads × head_dim, contiguous) to position `pos` with
/// `rotate_half`: the pair `(v[m], v[m + head_dim/2])` turns by the angle `pos · inv_freq[m]`.
pub fn rope_inplace(
    v: &mut [f32],
    head_dim: usize,
    pos: usize,
    inv_freq: &[f64],
) -> Result<(), ShapeError> {
    const OP: &str = "rope_inplace";
    if head_dim == 0 || v.len() % head_dim != 0 {
        return Err(ShapeError {
            op: OP,
            arg: "v",
            expected: format!("a whole number of heads of head_dim = {head_dim} elements"),
            found: format!("{} elements", v.len()),
        });
    }
    let half = head_dim / 2;
    check_len(OP, "inv_freq", half, "head_dim / 2", inv_freq.len())?;
    for head in v.chunks_exact_mut(head_dim) {
        for m in 0..half {
            let angle = pos as f64 * inv_freq[m];
            let (sin, cos) = (angle.sin() as f32, angle.cos() as f32);
            let (a, b) = (head[m], head[m + half]);
            head[m] = a * cos - b * sin;
            head[m + half] = b * cos + a * sin;
        }
    }
    Ok(())
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
) -> Result<(), ShapeError> {
    const OP: &str = "attention_row";
    let (hd, kv_dim) = (layout.head_dim, layout.kv_dim());
    // Query head h reads kv head h / group, so the heads must split evenly into groups.
    if layout.kv_heads == 0 || layout.heads % layout.kv_heads != 0 {
        return Err(ShapeError {
            op: OP,
            arg: "layout",
            expected: "kv_heads ≥ 1 dividing heads".to_owned(),
            found: format!("heads = {}, kv_heads = {}", layout.heads, layout.kv_heads),
        });
    }
    check_len(OP, "q", layout.q_dim(), "heads × head_dim", q.len())?;
    check_len(OP, "out", layout.q_dim(), "heads × head_dim", out.len())?;
    let stored = keys.len().min(values.len());
    if key_rows
        .end
        .checked_mul(kv_dim)
        .is_none_or(|need| need > stored)
    {
        return Err(ShapeError {
            op: OP,
            arg: "key_rows",
            // Only reachable with kv_dim > 0: a zero product always fits.
            expected: format!(
                "end ≤ {} (keys hold {} rows of {kv_dim} elements, values {})",
                stored / kv_dim,
                keys.len() / kv_dim,
                values.len() / kv_dim,
            ),
            found: format!("{key_rows:?}"),
        });
    }
    out.fill(0.0);
    if key_rows.is_empty() {
        return Ok(());
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
    Ok(())
}

/// silu(x) = x · sigmoid(x).
pub fn silu(x: f32) -> f32 {
    let x = f64::from(x);
    (x / (1.0 + (-x).exp())) as f32
}

/// `silu(gate) ⊙ up`, elementwise.
pub fn swiglu(gate: &Matrix, up: &Matrix) -> Result<Matrix, ShapeError> {
    const OP: &str = "swiglu";
    check_data(OP, "gate", gate)?;
    check_data(OP, "up", up)?;
    check_same_shape(OP, "up", gate, up)?;
    let data = gate
        .data
        .iter()
        .zip(&up.data)
        .map(|(&g, &u)| silu(g) * u)
        .collect();
    Ok(Matrix {
        rows: gate.rows,
        cols: gate.cols,
        data,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn layout() -> HeadLayout {
        HeadLayout {
            heads: 2,
            kv_heads: 1,
            head_dim: 2,
        }
    }

    /// `result` failed in `op` because of `arg`.
    #[track_caller]
    fn rejects<T: std::fmt::Debug>(result: Result<T, ShapeError>, op: &str, arg: &str) {
        let err = result.expect_err("a shape error");
        assert_eq!((err.op, err.arg), (op, arg), "{err}");
        assert!(err
            .to_string()
            .starts_with(&format!("{op}: {arg}: expected ")));
    }

    #[test]
    fn linear_matches_naive_loop() {
        let x = Matrix::from_vec(2, 3, vec![1.0, 2.0, 3.0, -1.0, 0.5, 4.0]).unwrap();
        let w = Matrix::from_vec(2, 3, vec![0.5, -1.0, 2.0, 3.0, 1.0, -0.25]).unwrap();
        let y = linear(&x, &w).unwrap();
        assert_eq!(y.data, vec![4.5, 4.25, 7.0, -3.5]);
    }

    #[test]
    fn rope_at_position_zero_is_identity_and_preserves_norm() {
        let inv = rope_inv_freq(4, 10000.0);
        let mut v = vec![1.0, 2.0, 3.0, 4.0];
        rope_inplace(&mut v, 4, 0, &inv).unwrap();
        assert_eq!(v, vec![1.0, 2.0, 3.0, 4.0]);
        rope_inplace(&mut v, 4, 7, &inv).unwrap();
        let norm: f32 = v.iter().map(|a| a * a).sum();
        assert!((norm - 30.0).abs() < 1e-4);
        // First pair turns by 7 rad: (1, 3) -> (cos7 - 3 sin7, 3 cos7 + sin7).
        let (c, s) = (7f32.cos(), 7f32.sin());
        assert!((v[0] - (c - 3.0 * s)).abs() < 1e-5);
        assert!((v[2] - (3.0 * c + s)).abs() < 1e-5);
    }

    #[test]
    fn empty_key_set_gives_exact_zeros() {
        let mut out = vec![f32::NAN; 4];
        attention_row(&[1.0; 4], &[1.0; 2], &[1.0; 2], 0..0, layout(), &mut out).unwrap();
        assert_eq!(out, vec![0.0; 4]);
    }

    #[test]
    fn single_key_returns_its_value() {
        let mut out = vec![0.0; 4];
        attention_row(
            &[1.0, 2.0, 3.0, 4.0],
            &[0.3, 0.7],
            &[5.0, -6.0],
            0..1,
            layout(),
            &mut out,
        )
        .unwrap();
        assert_eq!(out, vec![5.0, -6.0, 5.0, -6.0]);
    }

    #[test]
    fn from_vec_checks_the_length() {
        let m = Matrix::from_vec(2, 2, vec![1.0, 2.0, 3.0, 4.0]).unwrap();
        assert_eq!(m.row(1), &[3.0, 4.0]);
        assert!(Matrix::from_vec(0, 5, Vec::new()).is_ok());
        rejects(
            Matrix::from_vec(2, 2, vec![0.0; 3]),
            "Matrix::from_vec",
            "data",
        );
        rejects(
            Matrix::from_vec(usize::MAX, 2, Vec::new()),
            "Matrix::from_vec",
            "data",
        );
    }

    #[test]
    fn rows_range_checks_the_range() {
        let m = Matrix::from_vec(3, 2, vec![1.0, 2.0, 3.0, 4.0, 5.0, 6.0]).unwrap();
        assert_eq!(m.rows_range(1..3).unwrap().data, vec![3.0, 4.0, 5.0, 6.0]);
        assert_eq!(m.rows_range(3..3).unwrap().rows, 0);
        rejects(m.rows_range(2..4), "Matrix::rows_range", "range");
        #[allow(clippy::reversed_empty_ranges)]
        let reversed = 2..1;
        rejects(m.rows_range(reversed), "Matrix::rows_range", "range");
        let torn = Matrix {
            rows: 3,
            cols: 2,
            data: vec![0.0; 5],
        };
        rejects(torn.rows_range(0..1), "Matrix::rows_range", "self");
    }

    #[test]
    fn add_assign_checks_shapes_before_writing() {
        let mut a = Matrix::from_vec(1, 2, vec![1.0, 2.0]).unwrap();
        a.add_assign(&Matrix::from_vec(1, 2, vec![0.5, -2.0]).unwrap())
            .unwrap();
        assert_eq!(a.data, vec![1.5, 0.0]);
        rejects(
            a.add_assign(&Matrix::zeros(2, 1)),
            "Matrix::add_assign",
            "other",
        );
        assert_eq!(a.data, vec![1.5, 0.0]);
    }

    #[test]
    fn linear_checks_inner_dimension_and_data() {
        let x = Matrix::zeros(2, 3);
        rejects(linear(&x, &Matrix::zeros(4, 2)), "linear", "w");
        let torn = Matrix {
            rows: 4,
            cols: 3,
            data: vec![0.0; 11],
        };
        rejects(linear(&x, &torn), "linear", "w");
        rejects(linear(&torn, &x), "linear", "x");
        assert_eq!(
            linear(&x, &Matrix::zeros(4, 3)).unwrap(),
            Matrix::zeros(2, 4)
        );
    }

    #[test]
    fn rmsnorm_checks_lengths() {
        let mut out = [0.0; 2];
        rmsnorm(&[3.0, 4.0], &[1.0, 2.0], 0.0, &mut out).unwrap();
        let inv = 1.0 / 12.5f64.sqrt();
        assert_eq!(out, [(3.0 * inv) as f32, (4.0 * inv) as f32 * 2.0]);
        rejects(rmsnorm(&[1.0; 2], &[1.0; 3], 0.0, &mut out), "rmsnorm", "w");
        rejects(
            rmsnorm(&[1.0; 2], &[1.0; 2], 0.0, &mut [0.0; 1]),
            "rmsnorm",
            "out",
        );
    }

    #[test]
    fn rmsnorm_rows_checks_the_weight() {
        let x = Matrix::from_vec(2, 2, vec![3.0, 4.0, 3.0, 4.0]).unwrap();
        let y = rmsnorm_rows(&x, &[1.0, 2.0], 0.0).unwrap();
        let mut row = [0.0; 2];
        rmsnorm(&[3.0, 4.0], &[1.0, 2.0], 0.0, &mut row).unwrap();
        assert_eq!(y.data, [row, row].concat());
        rejects(rmsnorm_rows(&x, &[1.0; 3], 0.0), "rmsnorm_rows", "w");
    }

    #[test]
    fn add_rmsnorm_checks_every_length_before_writing() {
        let (mut sum, mut out) = ([0.0; 2], [0.0; 2]);
        add_rmsnorm(&[1.0, 3.0], &[2.0, 1.0], &[1.0; 2], 0.0, &mut sum, &mut out).unwrap();
        assert_eq!(sum, [3.0, 4.0]);
        let mut want = [0.0; 2];
        rmsnorm(&sum, &[1.0; 2], 0.0, &mut want).unwrap();
        assert_eq!(out, want);

        let (x, ok) = ([1.0; 2], [1.0; 2]);
        let mut sum = [f32::NAN; 2];
        let mut out2 = [0.0; 2];
        let cases: [(&str, Result<(), ShapeError>); 4] = [
            (
                "r",
                add_rmsnorm(&x, &[1.0; 3], &ok, 0.0, &mut sum, &mut out2),
            ),
            (
                "w",
                add_rmsnorm(&x, &ok, &[1.0; 1], 0.0, &mut sum, &mut out2),
            ),
            (
                "sum",
                add_rmsnorm(&x, &ok, &ok, 0.0, &mut [0.0; 3], &mut out2),
            ),
            (
                "out",
                add_rmsnorm(&x, &ok, &ok, 0.0, &mut sum, &mut [0.0; 1]),
            ),
        ];
        for (arg, result) in cases {
            rejects(result, "add_rmsnorm", arg);
        }
        // Nothing was written: the sum is checked along with everything else first.
        assert!(sum.iter().all(|v| v.is_nan()));
    }

    #[test]
    fn rope_checks_head_split_and_inv_freq() {
        let inv = rope_inv_freq(4, 10000.0);
        let mut v = vec![1.0; 6];
        rejects(rope_inplace(&mut v, 4, 1, &inv), "rope_inplace", "v");
        rejects(rope_inplace(&mut v, 0, 1, &[]), "rope_inplace", "v");
        rejects(
            rope_inplace(&mut v[..4], 4, 1, &inv[..1]),
            "rope_inplace",
            "inv_freq",
        );
        assert_eq!(v, vec![1.0; 6]);
        rope_inplace(&mut v, 2, 1, &rope_inv_freq(2, 10000.0)).unwrap();
    }

    #[test]
    fn attention_checks_operands_before_writing() {
        let (q, kv) = ([1.0; 4], [1.0; 4]);
        let mut out = [f32::NAN; 4];
        rejects(
            attention_row(&q[..3], &kv, &kv, 0..1, layout(), &mut out),
            "attention_row",
            "q",
        );
        rejects(
            attention_row(&q, &kv, &kv, 0..1, layout(), &mut [0.0; 5]),
            "attention_row",
            "out",
        );
        // Two rows of kv_dim 2 are stored; a third is out of range, in keys or in values.
        rejects(
            attention_row(&q, &kv, &kv, 1..3, layout(), &mut out),
            "attention_row",
            "key_rows",
        );
        rejects(
            attention_row(&q, &kv, &kv[..3], 0..2, layout(), &mut out),
            "attention_row",
            "key_rows",
        );
        rejects(
            attention_row(&q, &kv, &kv, usize::MAX..usize::MAX, layout(), &mut out),
            "attention_row",
            "key_rows",
        );
        let uneven = HeadLayout {
            heads: 3,
            kv_heads: 2,
            head_dim: 1,
        };
        rejects(
            attention_row(&q[..3], &kv, &kv, 0..1, uneven, &mut out[..3]),
            "attention_row",
            "layout",
        );
        let no_kv = HeadLayout {
            kv_heads: 0,
            ..layout()
        };
        rejects(
            attention_row(&q, &kv, &kv, 0..1, no_kv, &mut out),
            "attention_row",
            "layout",
        );
        assert!(out.iter().all(|v| v.is_nan()));
        attention_row(&q, &kv, &kv, 0..2, layout(), &mut out).unwrap();
        assert_eq!(out, [1.0; 4]);
    }

    #[test]
    fn swiglu_checks_shapes() {
        let gate = Matrix::from_vec(1, 2, vec![0.0, 1.0]).unwrap();
        let up = Matrix::from_vec(1, 2, vec![5.0, 2.0]).unwrap();
        assert_eq!(swiglu(&gate, &up).unwrap().data, vec![0.0, silu(1.0) * 2.0]);
        rejects(swiglu(&gate, &Matrix::zeros(2, 1)), "swiglu", "up");
        let torn = Matrix {
            rows: 1,
            cols: 2,
            data: vec![0.0; 3],
        };
        rejects(swiglu(&torn, &up), "swiglu", "gate");
    }
}
