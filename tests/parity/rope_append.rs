//! Rows for `rope_append`, `rope_append_host_rows` and `RopeTable` (cuda/rope_append.cu).
//!
//! Tolerances: exact. The table holds the reference's own f32 cos/sin (checked bit for bit in
//! every row) and the kernel rounds each product and sum exactly as the reference's f32
//! expressions do, so rotated q and k equal `stagformer_ref::ops::rope_inplace` of the values the
//! device sees, rounded once to the activation type; v is copied. Each row fails unless every
//! element of q, k, v (padding included) and of both caches is bit-identical to that
//! expectation — cache slots and rows that must not be written keep their random sentinel
//! values. The NMSE against the unrounded reference is reported as well: 0 for f32; for bf16
//! output rounding alone gives up to 2⁻¹⁶ ≈ 1.53e-5 (bound 2e-5).

use half::bf16;
use stagformer_kernels::device::{DeviceBuffer, Stream};
use stagformer_kernels::ops::rmsnorm::NormElem;
use stagformer_kernels::ops::rope_append::{
    rope_append, rope_append_host_rows, KvCacheLayout, KvCacheMut, QkvRows, RopeTable,
};
use stagformer_kernels::ops::HeadShape;
use stagformer_ref::ops as reference;
use stagformer_ref::RopeScaling;

use crate::embedding::random_indices;
use crate::table::{stored, widen, widen_f32, Case, Compared, Float, Inputs};

const BF16_TOL: f64 = 2e-5;

/// Which token rows a case appends.
#[derive(Clone, Copy, Debug)]
pub enum Rows {
    /// One token for each of `batch` distinct sequences, at random positions.
    Decode { batch: usize },
    /// Positions 0..len of one sequence.
    Prefill { len: usize },
    /// A decode batch whose device indices include rows outside the caches or the table.
    BadIndices { batch: usize },
}

/// How q, k and v are passed.
#[derive(Clone, Copy, Debug)]
enum Operands {
    /// One fused buffer, rows `width + pad` apart.
    Fused {
        pad: usize,
    },
    Separate,
}

#[derive(Clone, Copy, Debug)]
struct Spec {
    heads: usize,
    kv_heads: usize,
    head_dim: usize,
    seqs: usize,
    slots: usize,
    table_positions: usize,
    theta: f64,
    rows: Rows,
    operands: Operands,
    /// Extra elements after each head's slots and each sequence (cache padding).
    cache_pad: usize,
    /// Operand and cache data start one element into their buffers (breaks 16-byte alignment).
    unaligned: bool,
    /// Indices go through `rope_append_host_rows` (after its refusals are checked).
    host_rows: bool,
    /// The cache is a ring (position k in slot k mod slots): positions range over the table.
    ring: bool,
    /// RoPE scaling of the table's frequencies (`RopeTable::from_inv_freq`).
    scaling: RopeScaling,
}

const BASE: Spec = Spec {
    heads: 4,
    kv_heads: 4,
    head_dim: 64,
    seqs: 1,
    slots: 16,
    table_positions: 16,
    theta: 10_000.0,
    rows: Rows::Decode { batch: 1 },
    operands: Operands::Fused { pad: 0 },
    cache_pad: 0,
    unaligned: false,
    host_rows: false,
    ring: false,
    scaling: RopeScaling::Default,
};

fn specs() -> Vec<Spec> {
    vec![
        // B = 1, MHA, the decode hot path.
        BASE,
        // Ragged decode batch, GQA 4, hd 128, padded cache (still whole vectors).
        Spec {
            heads: 8,
            kv_heads: 2,
            head_dim: 128,
            seqs: 4,
            slots: 40,
            table_positions: 45,
            theta: 500_000.0,
            rows: Rows::Decode { batch: 3 },
            cache_pad: 16,
            ..BASE
        },
        // GQA 8, hd 24 (hd/2 = 12: whole f32 vectors, not bf16 ones), separate tensors.
        Spec {
            heads: 8,
            kv_heads: 1,
            head_dim: 24,
            seqs: 6,
            slots: 20,
            table_positions: 20,
            rows: Rows::Decode { batch: 5 },
            operands: Operands::Separate,
            ..BASE
        },
        // Prefill of sequence rows 0..19, GQA 2, fused rows with padding, host indices.
        Spec {
            heads: 4,
            kv_heads: 2,
            seqs: 2,
            slots: 24,
            table_positions: 30,
            rows: Rows::Prefill { len: 19 },
            operands: Operands::Fused { pad: 8 },
            host_rows: true,
            ..BASE
        },
        // hd 6 (hd/2 odd: scalar path), prefill through host indices, separate tensors.
        Spec {
            heads: 2,
            kv_heads: 1,
            head_dim: 6,
            slots: 8,
            table_positions: 8,
            rows: Rows::Prefill { len: 7 },
            operands: Operands::Separate,
            host_rows: true,
            ..BASE
        },
        // Misaligned data, an odd row stride and odd cache padding: the scalar path at hd 64.
        Spec {
            kv_heads: 2,
            seqs: 5,
            slots: 12,
            table_positions: 12,
            rows: Rows::Decode { batch: 4 },
            operands: Operands::Fused { pad: 1 },
            cache_pad: 3,
            unaligned: true,
            ..BASE
        },
        // A sliding-window ring: positions up to 3× the slots wrap (slot = position mod
        // slots), llama3-scaled frequencies, GQA 2, host indices.
        Spec {
            kv_heads: 2,
            seqs: 5,
            slots: 6,
            table_positions: 18,
            theta: 500_000.0,
            rows: Rows::Decode { batch: 4 },
            host_rows: true,
            ring: true,
            scaling: RopeScaling::Llama3 {
                factor: 8.0,
                low_freq_factor: 1.0,
                high_freq_factor: 4.0,
                original_max_position_embeddings: 8,
            },
            ..BASE
        },
        // A ring with linear scaling, device indices, hd 24; a prefill shorter than the ring.
        Spec {
            heads: 8,
            kv_heads: 1,
            head_dim: 24,
            seqs: 2,
            slots: 9,
            table_positions: 30,
            rows: Rows::Prefill { len: 9 },
            ring: true,
            scaling: RopeScaling::Linear { factor: 4.0 },
            ..BASE
        },
        // Device indices outside the caches and the table (the table is shorter than the
        // cache): those rows are skipped.
        Spec {
            kv_heads: 2,
            head_dim: 32,
            seqs: 3,
            slots: 12,
            table_positions: 10,
            rows: Rows::BadIndices { batch: 7 },
            ..BASE
        },
    ]
}

pub fn cases() -> Vec<Case> {
    let mut cases = Vec::new();
    for spec in specs() {
        cases.push(rope_case::<f32>(spec, 1e-10));
        cases.push(rope_case::<bf16>(spec, BF16_TOL));
    }
    cases
}

fn case_name(dtype: &str, s: &Spec) -> String {
    let rows = match s.rows {
        Rows::Decode { batch } => format!("decode B={batch}"),
        Rows::Prefill { len } => format!("prefill P={len}"),
        Rows::BadIndices { batch } => format!("decode B={batch} bad device indices"),
    };
    let operands = match s.operands {
        Operands::Fused { pad: 0 } => "fused".to_string(),
        Operands::Fused { pad } => format!("fused+{pad}"),
        Operands::Separate => "separate".to_string(),
    };
    let mut name = format!(
        "rope_append {dtype} H={} Hkv={} hd={} {rows} {operands}",
        s.heads, s.kv_heads, s.head_dim
    );
    if s.cache_pad > 0 {
        name += &format!(" cache+{}", s.cache_pad);
    }
    if s.unaligned {
        name += " unaligned";
    }
    if s.host_rows {
        name += " host rows";
    }
    if s.ring {
        name += &format!(" ring of {}", s.slots);
    }
    if s.scaling != RopeScaling::Default {
        name += &format!(" {}", s.scaling.rope_type());
    }
    name
}

/// Positions a row may use: the cache and the table, or only the table for a ring.
fn position_limit(s: &Spec) -> usize {
    if s.ring {
        s.table_positions
    } else {
        s.slots.min(s.table_positions)
    }
}

/// The frequencies the case's table is built from: the building block's own for unscaled
/// RoPE, else the reference's scaled set.
fn inv_freq(s: &Spec) -> Vec<f64> {
    match s.scaling {
        RopeScaling::Default => reference::rope_inv_freq(s.head_dim, s.theta),
        scaling => scaling.inv_freq(s.head_dim, s.theta, s.table_positions),
    }
}

/// A random order of `0..n`.
pub fn permutation(inputs: &mut Inputs, n: usize) -> Vec<usize> {
    let keys = inputs.normal(n, 0.0, 1.0);
    let mut order: Vec<usize> = (0..n).collect();
    order.sort_by(|&a, &b| keys[a].total_cmp(&keys[b]));
    order
}

/// Device indices (sequence slot, position) of the case's rows, possibly out of range.
fn row_indices(inputs: &mut Inputs, s: &Spec) -> (Vec<i64>, Vec<i64>) {
    let limit = position_limit(s);
    match s.rows {
        Rows::Decode { batch } => {
            // Distinct sequences, so that no two rows write one cache slot.
            let order = permutation(inputs, s.seqs);
            let seq_slots = order[..batch].iter().map(|&q| q as i64).collect();
            let positions = random_indices(inputs, batch, limit)
                .into_iter()
                .map(|p| p as i64)
                .collect();
            (seq_slots, positions)
        }
        Rows::BadIndices { batch } => {
            let order = permutation(inputs, s.seqs);
            let mut seq_slots: Vec<i64> = (0..batch).map(|b| order[b % s.seqs] as i64).collect();
            let mut positions: Vec<i64> = random_indices(inputs, batch, limit - 1)
                .into_iter()
                .map(|p| p as i64)
                .collect();
            // Rows 0, 2 and 6 stay valid (distinct slots: rows 0 and 2 name different
            // sequences, row 6 the last table position); each other row breaks one bound.
            seq_slots[1] = -1;
            seq_slots[3] = s.seqs as i64;
            positions[4] = s.slots as i64;
            positions[5] = s.table_positions as i64;
            seq_slots[6] = 0;
            positions[6] = limit as i64 - 1;
            (seq_slots, positions)
        }
        Rows::Prefill { len } => {
            let seq = random_indices(inputs, 1, s.seqs)[0] as i64;
            (vec![seq; len], (0..len as i64).collect())
        }
    }
}

/// The device copy of `values` starting `offset` elements into its buffer.
pub fn upload<T: Float>(
    stream: &Stream,
    values: &[T],
    offset: usize,
) -> anyhow::Result<DeviceBuffer<T>> {
    let mut host = vec![T::from_f32(0.75); offset];
    host.extend_from_slice(values);
    Ok(DeviceBuffer::from_host(stream, &host)?)
}

/// A host buffer as the device holds it: `T` values and the f32 values they stand for, both for
/// the expected (rounded) and the unrounded reference.
pub struct Expect<T> {
    exact: Vec<T>,
    unrounded: Vec<f32>,
}

impl<T: Float> Expect<T> {
    pub fn new(stored: &[T]) -> Self {
        Expect {
            exact: stored.to_vec(),
            unrounded: stored.iter().map(|v| v.to_f32()).collect(),
        }
    }

    pub fn set(&mut self, at: usize, value: f32) {
        self.exact[at] = T::from_f32(value);
        self.unrounded[at] = value;
    }

    /// Bit-exact comparison with the device's values; then the NMSE entry.
    pub fn compare(&self, output: &'static str, got: &[T]) -> anyhow::Result<Compared> {
        if got.len() != self.exact.len() {
            anyhow::bail!(
                "{output}: {} values, expected {}",
                got.len(),
                self.exact.len()
            );
        }
        if let Some(i) =
            (0..got.len()).find(|&i| got[i].to_f32().to_bits() != self.exact[i].to_f32().to_bits())
        {
            anyhow::bail!(
                "{output}[{i}] = {} differs from the expected {} (bit-exact)",
                got[i].to_f32(),
                self.exact[i].to_f32()
            );
        }
        Ok(Compared {
            output,
            got: widen(got),
            want: widen_f32(&self.unrounded),
        })
    }
}

/// Where a row's q, k or v starts: (operand buffer, column, row stride).
type Place = (usize, usize, usize);

/// Checks the device table against the reference's f64 angles, bit for bit.
fn check_table(stream: &Stream, table: &RopeTable, s: &Spec) -> anyhow::Result<()> {
    let inv_freq = inv_freq(s);
    let cos = table.cos().to_host(stream)?;
    let sin = table.sin().to_host(stream)?;
    let half = s.head_dim / 2;
    for pos in 0..s.table_positions {
        for (m, &f) in inv_freq.iter().enumerate() {
            let angle = pos as f64 * f;
            let i = pos * half + m;
            if cos[i].to_bits() != (angle.cos() as f32).to_bits()
                || sin[i].to_bits() != (angle.sin() as f32).to_bits()
            {
                anyhow::bail!("rope table differs from the reference at position {pos}, pair {m}");
            }
        }
    }
    Ok(())
}

fn rope_case<T: Float + NormElem>(s: Spec, tol: f64) -> Case {
    Case::new(
        case_name(T::NAME, &s),
        tol,
        move |stream, inputs: &mut Inputs| run_rope::<T>(stream, inputs, &s),
    )
}

fn run_rope<T: Float + NormElem>(
    stream: &Stream,
    inputs: &mut Inputs,
    s: &Spec,
) -> anyhow::Result<Vec<Compared>> {
    let hd = s.head_dim;
    let shape = HeadShape {
        heads: s.heads,
        kv_heads: s.kv_heads,
        head_dim: hd,
    };
    let (qd, kvd) = (shape.q_dim(), shape.kv_dim());
    let (seq_slots, positions) = row_indices(inputs, s);
    let rows = seq_slots.len();
    let off = usize::from(s.unaligned);

    // Operands: each buffer's host image (sentinels in padding), and where q, k, v of a row
    // start in which buffer.
    let (buffers, places): (Vec<Vec<T>>, [Place; 3]) = match s.operands {
        Operands::Fused { pad } => {
            let stride = qd + 2 * kvd + pad;
            let (data, _) = stored::<T>(&inputs.normal(rows * stride, 0.0, 1.0));
            (
                vec![data],
                [(0, 0, stride), (0, qd, stride), (0, qd + kvd, stride)],
            )
        }
        Operands::Separate => {
            let (q, _) = stored::<T>(&inputs.normal(rows * qd, 0.0, 1.0));
            let (k, _) = stored::<T>(&inputs.normal(rows * kvd, 0.0, 1.0));
            let (v, _) = stored::<T>(&inputs.normal(rows * kvd, 0.0, 1.0));
            (vec![q, k, v], [(0, 0, qd), (1, 0, kvd), (2, 0, kvd)])
        }
    };

    let layout = KvCacheLayout {
        seqs: s.seqs,
        kv_heads: s.kv_heads,
        slots: s.slots,
        head_dim: hd,
        head_stride: s.slots * hd + s.cache_pad,
        seq_stride: s.kv_heads * (s.slots * hd + s.cache_pad) + s.cache_pad,
        ring: s.ring,
        paged: None,
    };
    let cache_len = layout.required_len()?;
    let (k_sentinel, _) = stored::<T>(&inputs.normal(cache_len, 0.0, 1.0));
    let (v_sentinel, _) = stored::<T>(&inputs.normal(cache_len, 0.0, 1.0));

    // Expected results.
    let mut want_ops: Vec<Expect<T>> = buffers.iter().map(|b| Expect::new(b)).collect();
    let mut want_k = Expect::new(&k_sentinel);
    let mut want_v = Expect::new(&v_sentinel);
    let inv_freq = inv_freq(s);
    let limit = position_limit(s) as i64;
    for r in 0..rows {
        let (seq, pos) = (seq_slots[r], positions[r]);
        if !(0..s.seqs as i64).contains(&seq) || !(0..limit).contains(&pos) {
            continue;
        }
        let (seq, pos) = (seq as usize, pos as usize);
        let read = |which: usize, width: usize| -> Vec<f32> {
            let (buf, col, stride) = places[which];
            let start = r * stride + col;
            buffers[buf][start..start + width]
                .iter()
                .map(|v| v.to_f32())
                .collect()
        };
        let mut q = read(0, qd);
        let mut k = read(1, kvd);
        let v = read(2, kvd);
        reference::rope_inplace(&mut q, hd, pos, &inv_freq)?;
        reference::rope_inplace(&mut k, hd, pos, &inv_freq)?;
        for (which, values) in [(0, &q), (1, &k)] {
            let (buf, col, stride) = places[which];
            for (i, &x) in values.iter().enumerate() {
                want_ops[buf].set(r * stride + col + i, x);
            }
        }
        for kh in 0..s.kv_heads {
            let slot = if s.ring { pos % s.slots } else { pos };
            let base = seq * layout.seq_stride + kh * layout.head_stride + slot * hd;
            for d in 0..hd {
                want_k.set(base + d, k[kh * hd + d]);
                want_v.set(base + d, v[kh * hd + d]);
            }
        }
    }

    // The device run.
    let table = match s.scaling {
        RopeScaling::Default => RopeTable::new(stream, hd, s.theta, s.table_positions)?,
        _ => RopeTable::from_inv_freq(stream, hd, &inv_freq, s.table_positions)?,
    };
    check_table(stream, &table, s)?;
    let mut op_dev: Vec<DeviceBuffer<T>> = buffers
        .iter()
        .map(|b| upload(stream, b, off))
        .collect::<anyhow::Result<_>>()?;
    let mut k_cache = upload(stream, &k_sentinel, off)?;
    let mut v_cache = upload(stream, &v_sentinel, off)?;

    {
        let qkv = match (s.operands, op_dev.as_mut_slice()) {
            (Operands::Fused { pad }, [fused]) => QkvRows::Fused {
                qkv: fused.slice_mut(off..)?,
                row_stride: qd + 2 * kvd + pad,
            },
            (Operands::Separate, [q, k, v]) => QkvRows::Separate {
                q: q.slice_mut(off..)?,
                k: k.slice_mut(off..)?,
                v: v.slice(off..)?,
            },
            _ => unreachable!("operand buffers match their kind"),
        };
        let cache = KvCacheMut {
            k: k_cache.slice_mut(off..)?,
            v: v_cache.slice_mut(off..)?,
            layout,
            block_table: None,
        };
        if s.host_rows {
            let slots_u32: Vec<u32> = seq_slots.iter().map(|&x| x as u32).collect();
            let pos_u32: Vec<u32> = positions.iter().map(|&x| x as u32).collect();
            let mut staging = DeviceBuffer::<i32>::from_host(stream, &vec![0; 2 * rows + 1])?;
            check_host_refusals::<T>(stream, s, &table, &slots_u32, &pos_u32, &mut staging)?;
            rope_append_host_rows(
                stream,
                qkv,
                shape,
                &slots_u32,
                &pos_u32,
                &mut staging,
                &table,
                cache,
            )?;
        } else {
            let slots_dev = DeviceBuffer::from_host(
                stream,
                &seq_slots.iter().map(|&x| x as i32).collect::<Vec<_>>(),
            )?;
            let pos_dev = DeviceBuffer::from_host(
                stream,
                &positions.iter().map(|&x| x as i32).collect::<Vec<_>>(),
            )?;
            rope_append(stream, qkv, shape, &slots_dev, &pos_dev, &table, cache)?;
        }
    }

    let names: &[&'static str] = match s.operands {
        Operands::Fused { .. } => &["qkv"],
        Operands::Separate => &["q", "k", "v"],
    };
    let mut compared = Vec::new();
    for ((dev, want), &name) in op_dev.iter().zip(&want_ops).zip(names) {
        compared.push(want.compare(name, &dev.slice(off..)?.to_host(stream)?)?);
    }
    compared.push(want_k.compare("k_cache", &k_cache.slice(off..)?.to_host(stream)?)?);
    compared.push(want_v.compare("v_cache", &v_cache.slice(off..)?.to_host(stream)?)?);
    Ok(compared)
}

/// Host indices that break a bound (sequence, position past the cache or table, two rows at one
/// slot) must be refused, naming the row, before anything is queued: scratch operands, caches
/// and the staging buffer stay untouched.
fn check_host_refusals<T: Float + NormElem>(
    stream: &Stream,
    s: &Spec,
    table: &RopeTable,
    seq_slots: &[u32],
    positions: &[u32],
    staging: &mut DeviceBuffer<i32>,
) -> anyhow::Result<()> {
    let rows = seq_slots.len();
    let hd = s.head_dim;
    let shape = HeadShape {
        heads: s.heads,
        kv_heads: s.kv_heads,
        head_dim: hd,
    };
    let mut layout = KvCacheLayout::dense(s.seqs, s.kv_heads, s.slots, hd);
    layout.ring = s.ring;
    let len = layout.required_len()?;
    let mut q =
        DeviceBuffer::<T>::from_host(stream, &vec![T::from_f32(1.0); rows * shape.q_dim()])?;
    let mut k =
        DeviceBuffer::<T>::from_host(stream, &vec![T::from_f32(1.0); rows * shape.kv_dim()])?;
    let v = DeviceBuffer::<T>::from_host(stream, &vec![T::from_f32(1.0); rows * shape.kv_dim()])?;
    let mut k_cache = DeviceBuffer::<T>::from_host(stream, &vec![T::from_f32(2.0); len])?;
    let mut v_cache = DeviceBuffer::<T>::from_host(stream, &vec![T::from_f32(2.0); len])?;
    let last = rows - 1;
    let limit = position_limit(s) as u32;
    let mut too_far = positions.to_vec();
    too_far[last] = limit;
    let mut bad_seq = seq_slots.to_vec();
    bad_seq[last] = s.seqs as u32;
    let mut attempts = vec![
        (
            seq_slots.to_vec(),
            too_far,
            format!("positions[{last}] = {limit}"),
        ),
        (
            bad_seq,
            positions.to_vec(),
            format!("seq_slots[{last}] = {}", s.seqs),
        ),
    ];
    if rows >= 2 {
        let mut dup_seq = seq_slots.to_vec();
        let mut dup_pos = positions.to_vec();
        dup_seq[last] = dup_seq[0];
        dup_pos[last] = dup_pos[0];
        attempts.push((dup_seq, dup_pos, format!("row {last}")));
    }
    for (slots, pos, needle) in attempts {
        let result = rope_append_host_rows(
            stream,
            QkvRows::Separate {
                q: q.view_mut(),
                k: k.view_mut(),
                v: v.view(),
            },
            shape,
            &slots,
            &pos,
            &mut *staging,
            table,
            KvCacheMut {
                k: k_cache.view_mut(),
                v: v_cache.view_mut(),
                layout,
                block_table: None,
            },
        );
        match result {
            Ok(()) => anyhow::bail!("host indices with {needle} were accepted"),
            Err(e) if !e.to_string().contains(&needle) => {
                anyhow::bail!("the refusal does not name {needle}: {e}")
            }
            Err(_) => {}
        }
    }
    let untouched = q.to_host(stream)?.iter().all(|v| v.to_f32() == 1.0)
        && k_cache.to_host(stream)?.iter().all(|v| v.to_f32() == 2.0)
        && staging.to_host(stream)?.iter().all(|&v| v == 0);
    if !untouched {
        anyhow::bail!("a refused call wrote q, the cache or the staging buffer");
    }
    Ok(())
}
