//! Rows for `gemv` (cuda/gemv.cu): every prologue × epilogue × dtype, M ∈ {1, 3, 16}.
//!
//! References are the unfused path on the CPU in plain loops: `h` = the stored input, or
//! `stagformer_ref::ops::rmsnorm` (f64) rounded to T; `g = round_T(Σ_k W·h)` summed in f64; the
//! epilogue's math (`silu`, RoPE in the f32 operations rope_append uses, the residual add,
//! cache scatters) on `g`. Cache slots and output padding not written by the reference keep
//! their random sentinels and must stay bit-identical (checked exactly, before the NMSE).
//!
//! Tolerances: f32 1e-10 (f32 accumulation over K ≤ 1.1k terms against f64: relative error
//! ~1e-6 at worst, NMSE ~1e-12). bf16 2e-5: both sides round g (and h) to bf16 from values that
//! differ by f32 accumulation error, so an element may land one bf16 ulp apart (2⁻⁸ relative);
//! the output rounding alone gives NMSE ≤ 2⁻¹⁶ ≈ 1.53e-5.

use half::bf16;
use stagformer_kernels::device::DeviceView;
use stagformer_kernels::device::{DeviceBuffer, Stream};
use stagformer_kernels::ops::gemv::{
    gemv, gemv_grouped, GemvEpilogue, GemvPrologue, GemvShape, GroupedPrologue,
};
use stagformer_kernels::ops::memory_kv_append::CrossCaches;
use stagformer_kernels::ops::rmsnorm::NormElem;
use stagformer_kernels::ops::rope_append::{KvCacheLayout, KvCacheMut, RopeTable};
use stagformer_kernels::ops::HeadShape;
use stagformer_ref::ops as reference;

use crate::embedding::random_indices;
use crate::table::{poisoned, stored, widen, widen_f32, Case, Compared, Float, Inputs};

const F32_TOL: f64 = 1e-10;
const BF16_TOL: f64 = 2e-5;
const EPS: f32 = 1e-5;

#[derive(Clone, Copy, Debug, PartialEq)]
enum Pro {
    None,
    RmsNorm,
    /// RmsNorm of activations of magnitude 1e19..1e30 (their squares overflow f32).
    Huge,
}

#[derive(Clone, Copy, Debug, PartialEq)]
enum Epi {
    Store,
    ResidualAdd,
    SwiGlu,
    /// heads, kv_heads, head_dim, ring cache, bad device indices in some rows.
    Rope(usize, usize, usize, bool, bool),
    /// layers, kv_heads, head_dim, window.
    Cross(usize, usize, usize, Option<usize>),
}

fn tol<T: Float>() -> f64 {
    if T::NAME == "f32" {
        F32_TOL
    } else {
        BF16_TOL
    }
}

pub fn cases() -> Vec<Case> {
    let mut cases = Vec::new();
    // (K, N): one chunk exactly, K not a multiple of the chunk, two chunks plus a tail; N not a
    // multiple of the 16-row tile.
    let plain: [(usize, usize); 3] = [(512, 16), (1000, 37), (1032, 130)];
    let epis = [
        Epi::Store,
        Epi::ResidualAdd,
        Epi::SwiGlu,
        Epi::Rope(4, 2, 16, false, false),
        Epi::Cross(2, 2, 8, None),
    ];
    for (e, &epi) in epis.iter().enumerate() {
        for pro in [Pro::None, Pro::RmsNorm] {
            for (i, &m) in [1usize, 3, 16].iter().enumerate() {
                let (k, n) = plain[(i + e) % plain.len()];
                let n = match epi {
                    Epi::SwiGlu => 2 * n,
                    _ => n,
                };
                cases.push(case::<f32>(pro, epi, m, k, n));
                cases.push(case::<bf16>(pro, epi, m, k, n));
            }
        }
    }
    // GQA and MHA head layouts, ring self caches, rows whose indices name no slot.
    for epi in [
        Epi::Rope(8, 2, 32, true, false),
        Epi::Rope(2, 2, 64, false, true),
        Epi::Rope(6, 3, 8, true, true),
        Epi::Cross(3, 1, 16, Some(3)),
        Epi::Cross(1, 4, 8, Some(2)),
    ] {
        for m in [1, 16] {
            cases.push(case::<f32>(Pro::RmsNorm, epi, m, 256, 0));
            cases.push(case::<bf16>(Pro::RmsNorm, epi, m, 256, 0));
        }
    }
    for m in [1, 3] {
        cases.push(case::<f32>(Pro::Huge, Epi::Store, m, 1000, 37));
        cases.push(case::<bf16>(Pro::Huge, Epi::Store, m, 1000, 37));
    }
    // Grouped (one launch, each group of rows its own W and gain): every epilogue the Grouped
    // decode step uses, 2..4 groups of 1, 3 and 16 rows.
    let grouped = [
        (Epi::Store, Pro::RmsNorm, 2, 1),
        (Epi::Store, Pro::None, 4, 3),
        (Epi::ResidualAdd, Pro::None, 3, 3),
        (Epi::ResidualAdd, Pro::RmsNorm, 2, 16),
        (Epi::SwiGlu, Pro::RmsNorm, 4, 1),
        (Epi::SwiGlu, Pro::RmsNorm, 2, 3),
        (Epi::Rope(4, 2, 16, false, false), Pro::RmsNorm, 3, 1),
        (Epi::Rope(6, 3, 8, true, true), Pro::RmsNorm, 2, 3),
        (Epi::Cross(2, 2, 8, None), Pro::RmsNorm, 3, 1),
        (Epi::Cross(3, 1, 16, Some(3)), Pro::RmsNorm, 2, 3),
    ];
    for (i, &(epi, pro, groups, rows)) in grouped.iter().enumerate() {
        let (k, n) = plain[i % plain.len()];
        let n = match epi {
            Epi::SwiGlu => 2 * n,
            _ => n,
        };
        cases.push(grouped_case::<f32>(pro, epi, groups, groups * rows, k, n));
        cases.push(grouped_case::<bf16>(pro, epi, groups, groups * rows, k, n));
    }
    cases.push(errors_case());
    cases
}

/// W rows of the projection an epilogue consumes (`n` for the plain ones).
fn w_rows(epi: Epi, n: usize) -> usize {
    match epi {
        Epi::Rope(h, kv, hd, ..) => (h + 2 * kv) * hd,
        Epi::Cross(l, kv, hd, _) => l * 2 * kv * hd,
        _ => n,
    }
}

/// `g = round_T(h · Wᵀ)` of the unfused path, `[m][n]`.
fn reference_g<T: Float>(h: &[f32], w: &[f32], m: usize, n: usize, k: usize) -> Vec<f32> {
    let mut g = Vec::with_capacity(m * n);
    for r in 0..m {
        let hr = &h[r * k..(r + 1) * k];
        for c in 0..n {
            let wr = &w[c * k..(c + 1) * k];
            let acc: f64 = hr
                .iter()
                .zip(wr)
                .map(|(&a, &b)| f64::from(a) * f64::from(b))
                .sum();
            g.push(round::<T>(acc as f32));
        }
    }
    g
}

fn round<T: Float>(v: f32) -> f32 {
    T::from_f32(v).to_f32()
}

/// Fails when an element the reference leaves alone (`written[i] == false`) changed.
fn untouched<T: Float>(
    what: &str,
    got: &[T],
    before: &[T],
    written: &[bool],
) -> anyhow::Result<()> {
    for (i, ((g, b), &w)) in got.iter().zip(before).zip(written).enumerate() {
        if !w && g.to_f32().to_bits() != b.to_f32().to_bits() {
            anyhow::bail!(
                "{what}[{i}] = {} was written; it must keep {}",
                g.to_f32(),
                b.to_f32()
            );
        }
    }
    Ok(())
}

fn case<T: Float + NormElem>(pro: Pro, epi: Epi, m: usize, k: usize, n: usize) -> Case {
    grouped_case::<T>(pro, epi, 1, m, k, n)
}

/// `groups` = 1: a plain `gemv` call; more: `gemv_grouped` with `m / groups` rows a group,
/// each group its own random W and gain (the reference multiplies each group's rows with its
/// own).
fn grouped_case<T: Float + NormElem>(
    pro: Pro,
    epi: Epi,
    groups: usize,
    m: usize,
    k: usize,
    n: usize,
) -> Case {
    let n = w_rows(epi, n);
    let name = match groups {
        1 => format!("gemv {} {pro:?} {epi:?} m={m} k={k} n={n}", T::NAME),
        _ => format!(
            "gemv grouped {} {pro:?} {epi:?} groups={groups} m={m} k={k} n={n}",
            T::NAME
        ),
    };
    let rows = m / groups;
    Case::new(name, tol::<T>(), move |stream, inputs: &mut Inputs| {
        let scale = 1.0 / (k as f32).sqrt();
        let mut x = inputs.normal(m * k, 0.0, 1.0);
        if pro == Pro::Huge {
            // Row r spans magnitudes 1e19..1e30 (x² overflows f32 from ~1.8e19 on).
            for (i, v) in x.iter_mut().enumerate() {
                let e = 19.0 + 11.0 * (i % k) as f32 / k as f32;
                *v *= 10f32.powf(e);
            }
        }
        let (xs, x_seen) = stored::<T>(&x);
        let mut w_seen = Vec::new();
        let mut gains = Vec::new();
        let mut w_devs = Vec::new();
        let mut gain_devs = Vec::new();
        for _ in 0..groups {
            let (ws, seen) = stored::<T>(&inputs.normal(n * k, 0.0, scale));
            let gain = inputs.normal(k, 1.0, 0.2);
            w_devs.push(DeviceBuffer::from_host(stream, &ws)?);
            gain_devs.push(DeviceBuffer::from_host(stream, &gain)?);
            w_seen.push(seen);
            gains.push(gain);
        }
        let x_dev = DeviceBuffer::from_host(stream, &xs)?;
        let h: Vec<f32> = match pro {
            Pro::None => x_seen.clone(),
            Pro::RmsNorm | Pro::Huge => {
                let mut h = vec![0f32; m * k];
                for (r, (o, row)) in h
                    .chunks_exact_mut(k)
                    .zip(x_seen.chunks_exact(k))
                    .enumerate()
                {
                    reference::rmsnorm(row, &gains[r / rows], f64::from(EPS), o)?;
                }
                h.iter().map(|&v| round::<T>(v)).collect()
            }
        };
        let mut g = Vec::with_capacity(m * n);
        for (gi, w) in w_seen.iter().enumerate() {
            g.extend(reference_g::<T>(
                &h[gi * rows * k..(gi + 1) * rows * k],
                w,
                rows,
                n,
                k,
            ));
        }
        let w_views: Vec<DeviceView<'_, T>> = w_devs.iter().map(|w| w.view()).collect();
        let gain_views: Vec<DeviceView<'_, f32>> = gain_devs.iter().map(|g| g.view()).collect();
        let prologue = || match pro {
            Pro::None => GroupedPrologue::None,
            _ => GroupedPrologue::RmsNorm {
                weights: &gain_views,
                eps: EPS,
            },
        };
        let shape = GemvShape { m, n, k };
        match epi {
            Epi::Store | Epi::ResidualAdd | Epi::SwiGlu => {
                let width = if epi == Epi::SwiGlu { n / 2 } else { n };
                let stride = width + 3;
                let (y0, y0_seen) = stored::<T>(&inputs.normal(m * stride, 0.0, 1.0));
                let mut y_dev = if epi == Epi::ResidualAdd {
                    DeviceBuffer::from_host(stream, &y0)?
                } else {
                    let mut host = y0.clone();
                    for r in 0..m {
                        host[r * stride..r * stride + width].fill(T::POISON);
                    }
                    DeviceBuffer::from_host(stream, &host)?
                };
                let y = y_dev.view_mut();
                let ep = match epi {
                    Epi::Store => GemvEpilogue::Store {
                        y,
                        row_stride: stride,
                    },
                    Epi::ResidualAdd => GemvEpilogue::ResidualAdd {
                        y,
                        row_stride: stride,
                    },
                    _ => GemvEpilogue::SwiGlu {
                        y,
                        row_stride: stride,
                    },
                };
                gemv_grouped(stream, &x_dev, &w_views, shape, prologue(), ep)?;
                let got = y_dev.to_host(stream)?;
                let mut want = y0_seen.clone();
                let mut written = vec![false; want.len()];
                for r in 0..m {
                    for c in 0..width {
                        let i = r * stride + c;
                        written[i] = true;
                        want[i] = match epi {
                            Epi::Store => g[r * n + c],
                            Epi::ResidualAdd => round::<T>(y0_seen[i] + g[r * n + c]),
                            _ => reference::silu(g[r * n + c]) * g[r * n + width + c],
                        };
                    }
                }
                untouched("y", &got, &y0, &written)?;
                Ok(vec![Compared {
                    output: "y",
                    got: widen(&got),
                    want: widen_f32(&want),
                }])
            }
            Epi::Rope(heads, kv_heads, hd, ring, bad) => rope_case::<T>(
                stream,
                inputs,
                &x_dev,
                &w_views,
                shape,
                prologue(),
                &g,
                (heads, kv_heads, hd),
                ring,
                bad,
            ),
            Epi::Cross(layers, kv_heads, hd, window) => cross_case::<T>(
                stream,
                inputs,
                &x_dev,
                &w_views,
                shape,
                prologue(),
                &g,
                (layers, kv_heads, hd),
                window,
            ),
        }
    })
}

/// Distinct sequence slots for `m` rows (one token each), in `0..seqs`.
fn seq_slots(inputs: &mut Inputs, m: usize) -> (Vec<i32>, usize) {
    let seqs = m + 2;
    let mut order: Vec<usize> = (0..seqs).collect();
    let keys = random_indices(inputs, seqs, 1 << 20);
    order.sort_by_key(|&i| keys[i]);
    (order[..m].iter().map(|&s| s as i32).collect(), seqs)
}

#[allow(clippy::too_many_arguments)]
fn rope_case<T: Float + NormElem>(
    stream: &Stream,
    inputs: &mut Inputs,
    x_dev: &DeviceBuffer<T>,
    ws: &[DeviceView<'_, T>],
    shape: GemvShape,
    prologue: GroupedPrologue<'_, '_>,
    g: &[f32],
    (heads, kv_heads, hd): (usize, usize, usize),
    ring: bool,
    bad: bool,
) -> anyhow::Result<Vec<Compared>> {
    let (m, n) = (shape.m, shape.n);
    let slots = 8;
    let table_positions = if ring { 40 } else { slots };
    let theta = 10_000.0;
    let (mut seqs_v, seqs) = seq_slots(inputs, m);
    let mut pos: Vec<i32> = random_indices(inputs, m, table_positions)
        .iter()
        .map(|&p| p as i32)
        .collect();
    if bad {
        // Row 0 names no sequence, the last row (when there are more) no position.
        seqs_v[0] = seqs as i32;
        if m > 1 {
            pos[m - 1] = table_positions as i32 + 5;
        }
    }
    let mut layout = KvCacheLayout::dense(seqs, kv_heads, slots, hd);
    layout.head_stride += 2;
    layout.seq_stride = layout.head_stride * kv_heads + 5;
    if ring {
        layout = layout.into_ring();
    }
    let len = layout.required_len()?;
    let (k0, k0_seen) = stored::<T>(&inputs.normal(len, 0.0, 1.0));
    let (v0, v0_seen) = stored::<T>(&inputs.normal(len, 0.0, 1.0));
    let mut k_dev = DeviceBuffer::from_host(stream, &k0)?;
    let mut v_dev = DeviceBuffer::from_host(stream, &v0)?;
    let stride = n + 2;
    let mut qkv_dev = poisoned::<T>(stream, m * stride)?;
    let table = RopeTable::new(stream, hd, theta, table_positions)?;
    let seq_dev = DeviceBuffer::from_host(stream, &seqs_v)?;
    let pos_dev = DeviceBuffer::from_host(stream, &pos)?;
    gemv_grouped(
        stream,
        x_dev,
        ws,
        shape,
        prologue,
        GemvEpilogue::RopeKvAppend {
            qkv: qkv_dev.view_mut(),
            row_stride: stride,
            heads: HeadShape {
                heads,
                kv_heads,
                head_dim: hd,
            },
            seq_slots: seq_dev.view(),
            positions: pos_dev.view(),
            table: &table,
            cache: KvCacheMut {
                k: k_dev.view_mut(),
                v: v_dev.view_mut(),
                layout,
                block_table: None,
            },
        },
    )?;
    // The unfused path: q|k|v = g, then rope_append's f32 rotation and cache writes.
    let half = hd / 2;
    let mut want_qkv = vec![0f32; m * stride];
    let mut written_qkv = vec![false; m * stride];
    let (mut want_k, mut want_v) = (k0_seen.clone(), v0_seen.clone());
    let mut written_k = vec![false; len];
    let mut written_v = vec![false; len];
    for r in 0..m {
        let row = &mut want_qkv[r * stride..r * stride + n];
        row.copy_from_slice(&g[r * n..(r + 1) * n]);
        written_qkv[r * stride..r * stride + n].fill(true);
        let (s, p) = (seqs_v[r], pos[r]);
        let ok = s >= 0
            && (s as usize) < seqs
            && p >= 0
            && (p as usize) < table_positions
            && (ring || (p as usize) < slots);
        if !ok {
            continue;
        }
        let p = p as usize;
        for unit in 0..heads + kv_heads {
            for d in 0..half {
                let angle = p as f64 * theta.powf(-2.0 * d as f64 / hd as f64);
                let (c, sn) = (angle.cos() as f32, angle.sin() as f32);
                let (a, b) = (row[unit * hd + d], row[unit * hd + d + half]);
                row[unit * hd + d] = round::<T>(a * c - b * sn);
                row[unit * hd + d + half] = round::<T>(b * c + a * sn);
            }
        }
        let slot = layout.slot_of(p);
        for kh in 0..kv_heads {
            for d in 0..hd {
                let at = s as usize * layout.seq_stride + kh * layout.head_stride + slot * hd + d;
                want_k[at] = row[(heads + kh) * hd + d];
                want_v[at] = row[(heads + kv_heads + kh) * hd + d];
                written_k[at] = true;
                written_v[at] = true;
            }
        }
    }
    let got_qkv = qkv_dev.to_host(stream)?;
    let got_k = k_dev.to_host(stream)?;
    let got_v = v_dev.to_host(stream)?;
    untouched("k_cache", &got_k, &k0, &written_k)?;
    untouched("v_cache", &got_v, &v0, &written_v)?;
    // Row padding stays poisoned: compare only the written columns.
    let pick = |v: &[f64]| -> Vec<f64> {
        v.iter()
            .zip(&written_qkv)
            .filter(|(_, &w)| w)
            .map(|(&x, _)| x)
            .collect()
    };
    if let Some(i) = got_qkv
        .iter()
        .zip(&written_qkv)
        .position(|(v, &w)| !w && !v.to_f32().is_nan())
    {
        anyhow::bail!("qkv[{i}] (row padding) was written");
    }
    Ok(vec![
        Compared {
            output: "qkv",
            got: pick(&widen(&got_qkv)),
            want: pick(&widen_f32(&want_qkv)),
        },
        Compared {
            output: "k_cache",
            got: widen(&got_k),
            want: widen_f32(&want_k),
        },
        Compared {
            output: "v_cache",
            got: widen(&got_v),
            want: widen_f32(&want_v),
        },
    ])
}

#[allow(clippy::too_many_arguments)]
fn cross_case<T: Float + NormElem>(
    stream: &Stream,
    inputs: &mut Inputs,
    x_dev: &DeviceBuffer<T>,
    ws: &[DeviceView<'_, T>],
    shape: GemvShape,
    prologue: GroupedPrologue<'_, '_>,
    g: &[f32],
    (layers, kv_heads, hd): (usize, usize, usize),
    window: Option<usize>,
) -> anyhow::Result<Vec<Compared>> {
    let (m, n) = (shape.m, shape.n);
    let slots = window.map_or(12, |w| w + 1);
    let (seqs_v, seqs) = seq_slots(inputs, m);
    let bound = if window.is_some() { 50 } else { slots };
    let pos: Vec<i32> = random_indices(inputs, m, bound)
        .iter()
        .map(|&p| p as i32)
        .collect();
    let mut layout = KvCacheLayout::dense(seqs, kv_heads, slots, hd);
    layout.head_stride += 1;
    layout.seq_stride = layout.head_stride * kv_heads + 3;
    let layer_stride = layout.required_len()? + 7;
    let len = layer_stride * layers;
    let cross = CrossCaches {
        layers,
        layer_stride,
        window,
    };
    let (k0, k0_seen) = stored::<T>(&inputs.normal(len, 0.0, 1.0));
    let (v0, v0_seen) = stored::<T>(&inputs.normal(len, 0.0, 1.0));
    let mut k_dev = DeviceBuffer::from_host(stream, &k0)?;
    let mut v_dev = DeviceBuffer::from_host(stream, &v0)?;
    let seq_dev = DeviceBuffer::from_host(stream, &seqs_v)?;
    let pos_dev = DeviceBuffer::from_host(stream, &pos)?;
    gemv_grouped(
        stream,
        x_dev,
        ws,
        shape,
        prologue,
        GemvEpilogue::CrossKvAppend {
            seq_slots: seq_dev.view(),
            positions: pos_dev.view(),
            cache: KvCacheMut {
                k: k_dev.view_mut(),
                v: v_dev.view_mut(),
                layout,
                block_table: None,
            },
            cross,
        },
    )?;
    let kv_dim = kv_heads * hd;
    let (mut want_k, mut want_v) = (k0_seen.clone(), v0_seen.clone());
    let mut written = vec![false; len];
    for r in 0..m {
        let slot = window.map_or(pos[r] as usize, |w| pos[r] as usize % w);
        for c in 0..n {
            let layer = c / (2 * kv_dim);
            let mut e = c % (2 * kv_dim);
            let is_v = e >= kv_dim;
            if is_v {
                e -= kv_dim;
            }
            let at = layer * layer_stride
                + seqs_v[r] as usize * layout.seq_stride
                + (e / hd) * layout.head_stride
                + slot * hd
                + e % hd;
            if is_v {
                want_v[at] = g[r * n + c];
            } else {
                want_k[at] = g[r * n + c];
            }
            written[at] = true;
        }
    }
    let got_k = k_dev.to_host(stream)?;
    let got_v = v_dev.to_host(stream)?;
    untouched("k_cache", &got_k, &k0, &written)?;
    untouched("v_cache", &got_v, &v0, &written)?;
    Ok(vec![
        Compared {
            output: "k_cache",
            got: widen(&got_k),
            want: widen_f32(&want_k),
        },
        Compared {
            output: "v_cache",
            got: widen(&got_v),
            want: widen_f32(&want_v),
        },
    ])
}

fn store_into(
    y: &mut DeviceBuffer<f32>,
    len: usize,
    row_stride: usize,
) -> anyhow::Result<GemvEpilogue<'_, f32>> {
    Ok(GemvEpilogue::Store {
        y: y.slice_mut(..len)?,
        row_stride,
    })
}

/// Host validation: each bad argument is a typed error naming it, and nothing is launched.
fn errors_case() -> Case {
    Case::new("gemv errors".to_string(), F32_TOL, |stream, inputs| {
        let (m, n, k) = (2usize, 16usize, 64usize);
        let x = DeviceBuffer::from_host(stream, &inputs.normal(17 * k, 0.0, 1.0))?;
        let w = DeviceBuffer::from_host(stream, &inputs.normal(n * k + 8, 0.0, 0.1))?;
        let gain = DeviceBuffer::from_host(stream, &vec![1f32; k])?;
        let mut y = poisoned::<f32>(stream, 17 * n)?;
        let expect = |what: &str, r: stagformer_kernels::error::Result<()>, arg: &str| match r {
            Err(e) if e.to_string().starts_with(arg) => Ok(()),
            other => Err(anyhow::anyhow!(
                "{what}: expected an error naming {arg}, got {other:?}"
            )),
        };
        expect(
            "m = 17",
            gemv(
                stream,
                &x,
                &w.slice(..n * k)?,
                GemvShape { m: 17, n, k },
                GemvPrologue::None,
                GemvEpilogue::Store {
                    y: y.view_mut(),
                    row_stride: n,
                },
            ),
            "m",
        )?;
        expect(
            "k = 62",
            gemv(
                stream,
                &x.slice(..m * 62)?,
                &w.slice(..n * 62)?,
                GemvShape { m, n, k: 62 },
                GemvPrologue::None,
                store_into(&mut y, m * n, n)?,
            ),
            "k",
        )?;
        expect(
            "x too long",
            gemv(
                stream,
                &x,
                &w.slice(..n * k)?,
                GemvShape { m, n, k },
                GemvPrologue::None,
                store_into(&mut y, m * n, n)?,
            ),
            "x",
        )?;
        expect(
            "w unaligned",
            gemv(
                stream,
                &x.slice(..m * k)?,
                &w.slice(1..n * k + 1)?,
                GemvShape { m, n, k },
                GemvPrologue::None,
                store_into(&mut y, m * n, n)?,
            ),
            "w",
        )?;
        expect(
            "stride < n",
            gemv(
                stream,
                &x.slice(..m * k)?,
                &w.slice(..n * k)?,
                GemvShape { m, n, k },
                GemvPrologue::None,
                store_into(&mut y, m * n, n - 1)?,
            ),
            "row_stride",
        )?;
        expect(
            "gain length",
            gemv(
                stream,
                &x.slice(..m * k)?,
                &w.slice(..n * k)?,
                GemvShape { m, n, k },
                GemvPrologue::RmsNorm {
                    weight: gain.slice(..k - 1)?,
                    eps: EPS,
                },
                store_into(&mut y, m * n, n)?,
            ),
            "weight",
        )?;
        expect(
            "eps = 0",
            gemv(
                stream,
                &x.slice(..m * k)?,
                &w.slice(..n * k)?,
                GemvShape { m, n, k },
                GemvPrologue::RmsNorm {
                    weight: gain.view(),
                    eps: 0.0,
                },
                store_into(&mut y, m * n, n)?,
            ),
            "eps",
        )?;
        expect(
            "odd swiglu",
            gemv(
                stream,
                &x.slice(..m * k)?,
                &w.slice(..15 * k)?,
                GemvShape { m, n: 15, k },
                GemvPrologue::None,
                GemvEpilogue::SwiGlu {
                    y: y.slice_mut(..m * 8)?,
                    row_stride: 8,
                },
            ),
            "n",
        )?;
        let w1 = w.slice(..n * k)?;
        let five = [w1, w1, w1, w1, w1];
        let gains = [gain.view()];
        for (what, groups, rows, arg) in [
            ("5 groups", 5, 5, "ws"),
            ("0 groups", 0, 2, "ws"),
            ("3 rows in 2 groups", 2, 3, "m"),
            ("17 rows a group", 1, 17, "m"),
        ] {
            expect(
                what,
                gemv_grouped(
                    stream,
                    &x.slice(..rows * k)?,
                    &five[..groups],
                    GemvShape { m: rows, n, k },
                    GroupedPrologue::None,
                    store_into(&mut y, rows * n, n)?,
                ),
                arg,
            )?;
        }
        expect(
            "1 gain for 2 groups",
            gemv_grouped(
                stream,
                &x.slice(..m * k)?,
                &five[..2],
                GemvShape { m, n, k },
                GroupedPrologue::RmsNorm {
                    weights: &gains,
                    eps: EPS,
                },
                store_into(&mut y, m * n, n)?,
            ),
            "weights",
        )?;
        // Nothing above ran: y is still poisoned. A valid call then writes it.
        if y.to_host(stream)?.iter().any(|v| !v.is_nan()) {
            anyhow::bail!("a refused call wrote y");
        }
        gemv(
            stream,
            &x.slice(..m * k)?,
            &w.slice(..n * k)?,
            GemvShape { m, n, k },
            GemvPrologue::None,
            store_into(&mut y, m * n, n)?,
        )?;
        let xs = x.slice(..m * k)?.to_host(stream)?;
        let ws = w.slice(..n * k)?.to_host(stream)?;
        let want = reference_g::<f32>(&xs, &ws, m, n, k);
        Ok(vec![Compared {
            output: "y",
            got: widen(&y.slice(..m * n)?.to_host(stream)?),
            want: widen_f32(&want),
        }])
    })
}
