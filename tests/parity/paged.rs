//! Rows for paged KV caches (`StagKvPaging`, cuda/include/stag_cache.cuh) in `rope_append`,
//! `memory_kv_append`, the gemv cache epilogues, `attention_decode` and the tensor-core
//! `attention_prefill_cached`.
//!
//! The reference of a paged row is the dense op on the same inputs, which the op's own rows
//! check against `stagformer-ref`. Writers: both start from the same random cache contents
//! (the dense cache, scattered into the pages of a shuffled block table over a pool larger
//! than needed, so pages of different sequences interleave, and random sentinels in the spare
//! pages); the paged pool gathered back through the table must equal the dense result, and
//! every page the table does not name must keep its sentinels. A row whose page is missing
//! (table entry −1) must write nothing, exactly as the dense op skips a row without a slot.
//! Readers: a random dense cache is scattered into pages and the paged attention must give
//! the dense output; with a missing page (decode) the output must be the CPU reference
//! (`stagformer_ref::ops::attention_row`) over the visible keys that still have a page. Tolerances: exact (0) for the writers (copies and the same RoPE
//! arithmetic); 1e-12 for attention (the same keys in the same order: the paged kernels only
//! compute addresses differently).

use half::bf16;
use stagformer_kernels::device::{DeviceBuffer, Stream};
use stagformer_kernels::dtype::DeviceElem;
use stagformer_kernels::ops::attention_decode::{
    attention_decode, attention_decode_paged, AttentionElem, AttentionWorkspace, DecodeLayout,
    DecodeMask, DecodePages,
};
use stagformer_kernels::ops::attention_prefill::{
    attention_prefill_cached, CacheKeys, PrefillBatch, PrefillConfig, PrefillMask,
};
use stagformer_kernels::ops::gemv::{gemv, GemvEpilogue, GemvPrologue, GemvShape};
use stagformer_kernels::ops::kv_pages::{BlockTable, PagePool};
use stagformer_kernels::ops::memory_kv_append::{memory_kv_append, CrossCaches};
use stagformer_kernels::ops::rmsnorm::NormElem;
use stagformer_kernels::ops::rope_append::{
    rope_append, KvCacheLayout, KvCacheMut, QkvRows, RopeTable,
};
use stagformer_kernels::ops::HeadShape;
use stagformer_kernels::DeviceError;

use stagformer_ref::ops::{attention_row, HeadLayout};

use crate::rope_append::permutation;
use crate::table::{widen, widen_f32, Case, Compared, Float, Inputs};

/// A paged pool for `seqs` sequences of `slots` slots.
#[derive(Clone, Copy, Debug)]
struct Paging {
    page_size: usize,
    /// Spare pages beyond the `seqs · ceil(slots / page_size)` the table uses.
    spare: usize,
    /// Whether the first row's page is removed from the table (−1).
    missing: bool,
}

/// The block table's geometry and contents.
struct Table {
    per_seq: usize,
    pages: usize,
    entries: Vec<i32>,
}

fn random_table(inputs: &mut Inputs, seqs: usize, slots: usize, p: Paging) -> Table {
    let per_seq = slots.div_ceil(p.page_size);
    let pages = seqs * per_seq + p.spare;
    let order = permutation(inputs, pages);
    Table {
        per_seq,
        pages,
        entries: order[..seqs * per_seq].iter().map(|&x| x as i32).collect(),
    }
}

/// Element index of (page-or-seq `outer`, head, slot, d) in unpadded [outer][kv][slots][hd].
fn at(
    outer: usize,
    head: usize,
    slot: usize,
    d: usize,
    kv: usize,
    slots: usize,
    hd: usize,
) -> usize {
    ((outer * kv + head) * slots + slot) * hd + d
}

/// Where dense element (seq, head, slot, d) of one layer lies in the pool, if it has a page.
#[allow(clippy::too_many_arguments)]
fn pool_index(
    t: &Table,
    page_size: usize,
    seq: usize,
    head: usize,
    slot: usize,
    d: usize,
    kv: usize,
    hd: usize,
) -> Option<usize> {
    let page = t.entries[seq * t.per_seq + slot / page_size];
    (page >= 0).then(|| at(page as usize, head, slot % page_size, d, kv, page_size, hd))
}

/// Shape of one layer of a cache: sequences, kv heads, slots, head dim.
#[derive(Clone, Copy, Debug)]
struct Dims {
    seqs: usize,
    kv: usize,
    slots: usize,
    hd: usize,
}

impl Dims {
    fn dense_len(&self) -> usize {
        self.seqs * self.kv * self.slots * self.hd
    }
    fn pool_len(&self, t: &Table, page_size: usize) -> usize {
        t.pages * self.kv * page_size * self.hd
    }
}

/// `layers` stacked pools holding `dense` (stacked alike) through the table, the rest `spare`.
fn scatter<T: Copy>(
    dense: &[T],
    spare: &[T],
    t: &Table,
    ps: usize,
    dims: Dims,
    layers: usize,
) -> Vec<T> {
    let (dl, pl) = (dims.dense_len(), dims.pool_len(t, ps));
    let mut pool = spare.to_vec();
    for l in 0..layers {
        for_each_element(dims, |seq, h, slot, d| {
            if let Some(i) = pool_index(t, ps, seq, h, slot, d, dims.kv, dims.hd) {
                pool[l * pl + i] =
                    dense[l * dl + at(seq, h, slot, d, dims.kv, dims.slots, dims.hd)];
            }
        });
    }
    pool
}

/// The dense view of stacked pools; elements without a page are taken from `fallback`.
fn gather<T: Copy>(
    pool: &[T],
    fallback: &[T],
    t: &Table,
    ps: usize,
    dims: Dims,
    layers: usize,
) -> Vec<T> {
    let (dl, pl) = (dims.dense_len(), dims.pool_len(t, ps));
    let mut dense = fallback.to_vec();
    for l in 0..layers {
        for_each_element(dims, |seq, h, slot, d| {
            if let Some(i) = pool_index(t, ps, seq, h, slot, d, dims.kv, dims.hd) {
                dense[l * dl + at(seq, h, slot, d, dims.kv, dims.slots, dims.hd)] =
                    pool[l * pl + i];
            }
        });
    }
    dense
}

/// The elements of the pages the table does not name (which no op may touch).
fn unnamed<T: Copy>(pool: &[T], t: &Table, dims: Dims, ps: usize, layers: usize) -> Vec<T> {
    let page_len = dims.kv * ps * dims.hd;
    let named: std::collections::HashSet<i32> = t.entries.iter().copied().collect();
    let pl = dims.pool_len(t, ps);
    let mut out = Vec::new();
    for l in 0..layers {
        for page in 0..t.pages {
            if !named.contains(&(page as i32)) {
                let start = l * pl + page * page_len;
                out.extend_from_slice(&pool[start..start + page_len]);
            }
        }
    }
    out
}

fn for_each_element(dims: Dims, mut f: impl FnMut(usize, usize, usize, usize)) {
    for seq in 0..dims.seqs {
        for h in 0..dims.kv {
            for slot in 0..dims.slots {
                for d in 0..dims.hd {
                    f(seq, h, slot, d);
                }
            }
        }
    }
}

fn host<T: Float>(inputs: &mut Inputs, n: usize) -> Vec<T> {
    inputs
        .normal(n, 0.0, 1.0)
        .into_iter()
        .map(T::from_f32)
        .collect()
}

fn up<T: Float>(stream: &Stream, v: &[T]) -> anyhow::Result<DeviceBuffer<T>> {
    Ok(DeviceBuffer::from_host(stream, v)?)
}

fn cmp<T: Float>(output: &'static str, got: &[T], want: &[T]) -> Compared {
    Compared {
        output,
        got: widen(got),
        want: widen(want),
    }
}

/// One token per sequence at a random position below `limit`; sequence order shuffled.
fn decode_rows(inputs: &mut Inputs, seqs: usize, limit: usize) -> (Vec<i32>, Vec<i32>) {
    let order = permutation(inputs, seqs);
    let positions = order
        .iter()
        .map(|_| permutation(inputs, limit)[0] as i32)
        .collect();
    (order.iter().map(|&s| s as i32).collect(), positions)
}

/// Removes from the table the page holding row 0's slot (its sequence has one row).
fn drop_page(t: &mut Table, ps: usize, seq: i32, slot: usize) {
    t.entries[seq as usize * t.per_seq + slot / ps] = -1;
}

pub fn cases() -> Vec<Case> {
    let mut cases = Vec::new();
    for page_size in [1, 16] {
        for ring in [false, true] {
            for missing in [false, true] {
                let p = Paging {
                    page_size,
                    spare: 5,
                    missing,
                };
                cases.push(rope_case::<f32>(p, ring));
                cases.push(rope_case::<bf16>(p, ring));
                cases.push(cross_case::<f32>(p, ring.then_some(6)));
                cases.push(cross_case::<bf16>(p, ring.then_some(6)));
                for cross in [false, true] {
                    cases.push(gemv_case::<f32>(p, ring, cross));
                    cases.push(gemv_case::<bf16>(p, ring, cross));
                }
            }
            let p = Paging {
                page_size,
                spare: 7,
                missing: false,
            };
            for hd in [64, 40] {
                cases.push(decode_case::<f32>(p, hd, ring, false));
                cases.push(decode_case::<bf16>(p, hd, ring, false));
                cases.push(decode_case::<bf16>(p, hd, ring, true));
            }
            let gone = Paging { missing: true, ..p };
            cases.push(decode_case::<f32>(gone, 64, ring, false));
            cases.push(decode_case::<bf16>(gone, 40, ring, true));
            for hd in [64, 128] {
                cases.push(prefill_case(p, hd, ring));
            }
        }
    }
    cases
}

fn paging_name(p: Paging) -> String {
    format!(
        "page{}{}",
        p.page_size,
        if p.missing { ".missing_page" } else { "" }
    )
}

fn rope_case<T: Float + NormElem>(p: Paging, ring: bool) -> Case {
    let name = format!(
        "paged/rope_append/{}/{}/{}",
        T::NAME,
        if ring { "ring" } else { "dense_slots" },
        paging_name(p)
    );
    Case::new(name, 0.0, move |stream, inputs| {
        run_rope::<T>(stream, inputs, p, ring)
    })
}

fn run_rope<T: Float + NormElem>(
    stream: &Stream,
    inputs: &mut Inputs,
    p: Paging,
    ring: bool,
) -> anyhow::Result<Vec<Compared>> {
    let shape = HeadShape {
        heads: 4,
        kv_heads: 2,
        head_dim: 16,
    };
    let dims = Dims {
        seqs: 3,
        kv: 2,
        slots: if ring { 10 } else { 24 },
        hd: 16,
    };
    let positions_limit = if ring { 40 } else { dims.slots };
    let table = RopeTable::new(stream, 16, 10_000.0, 40)?;
    let (seq_slots, positions) = decode_rows(inputs, dims.seqs, positions_limit);
    let rows = seq_slots.len();
    let (q0, k0, v0) = (
        host::<T>(inputs, rows * 64),
        host::<T>(inputs, rows * 32),
        host::<T>(inputs, rows * 32),
    );
    let mut t = random_table(inputs, dims.seqs, dims.slots, p);
    let ps = p.page_size;
    let dense0 = host::<T>(inputs, dims.dense_len());
    let spare = host::<T>(inputs, dims.pool_len(&t, ps));
    let pool0 = scatter(&dense0, &spare, &t, ps, dims, 1);
    let mut dense_slots = seq_slots.clone();
    if p.missing {
        let slot = if ring {
            positions[0] as usize % dims.slots
        } else {
            positions[0] as usize
        };
        drop_page(&mut t, ps, seq_slots[0], slot);
        // The dense op's equivalent of a row without a page: a row without a slot.
        dense_slots[0] = -1;
    }
    let layout = KvCacheLayout::dense(dims.seqs, dims.kv, dims.slots, dims.hd);
    let layout = if ring { layout.into_ring() } else { layout };
    let paged = layout.into_paged(t.pages, ps);
    let pos_dev = DeviceBuffer::from_host(stream, &positions)?;

    let run = |slots: &[i32], cache: &[T], paged_table: Option<&[i32]>| {
        let (mut q, mut k, v) = (up(stream, &q0)?, up(stream, &k0)?, up(stream, &v0)?);
        let (mut kc, mut vc) = (up(stream, cache)?, up(stream, cache)?);
        let slots_dev = DeviceBuffer::from_host(stream, slots)?;
        let table_dev = paged_table
            .map(|e| DeviceBuffer::from_host(stream, e))
            .transpose()?;
        rope_append(
            stream,
            QkvRows::Separate {
                q: q.view_mut(),
                k: k.view_mut(),
                v: v.view(),
            },
            shape,
            &slots_dev,
            &pos_dev,
            &table,
            KvCacheMut {
                k: kc.view_mut(),
                v: vc.view_mut(),
                layout: if paged_table.is_some() { paged } else { layout },
                block_table: table_dev
                    .as_ref()
                    .map(|b| BlockTable::new(b.view(), t.per_seq)),
            },
        )?;
        anyhow::Ok((
            q.to_host(stream)?,
            k.to_host(stream)?,
            kc.to_host(stream)?,
            vc.to_host(stream)?,
        ))
    };
    let (q_want, k_want, kc_want, vc_want) = run(&dense_slots, &dense0, None)?;
    let (q_got, k_got, kc_got, vc_got) = run(&seq_slots, &pool0, Some(&t.entries))?;
    if !p.missing {
        check_refusals::<T>(stream, layout, paged, &t, &seq_slots, &pos_dev, &table)?;
    }
    Ok(vec![
        cmp("q", &q_got, &q_want),
        cmp("k", &k_got, &k_want),
        cmp(
            "k_cache",
            &gather(&kc_got, &kc_want, &t, ps, dims, 1),
            &kc_want,
        ),
        cmp(
            "v_cache",
            &gather(&vc_got, &vc_want, &t, ps, dims, 1),
            &vc_want,
        ),
        cmp(
            "k_cache.unnamed_pages",
            &unnamed(&kc_got, &t, dims, ps, 1),
            &unnamed(&pool0, &t, dims, ps, 1),
        ),
        cmp(
            "v_cache.unnamed_pages",
            &unnamed(&vc_got, &t, dims, ps, 1),
            &unnamed(&pool0, &t, dims, ps, 1),
        ),
    ])
}

fn cross_case<T: Float + NormElem>(p: Paging, window: Option<usize>) -> Case {
    let name = format!(
        "paged/memory_kv_append/{}/{}/{}",
        T::NAME,
        window.map_or("unbounded".to_string(), |w| format!("ring_w{w}")),
        paging_name(p)
    );
    Case::new(name, 0.0, move |stream, inputs| {
        run_cross::<T>(stream, inputs, p, window)
    })
}

fn run_cross<T: Float + NormElem>(
    stream: &Stream,
    inputs: &mut Inputs,
    p: Paging,
    window: Option<usize>,
) -> anyhow::Result<Vec<Compared>> {
    let layers = 2;
    let dims = Dims {
        seqs: 3,
        kv: 2,
        slots: window.map_or(20, |w| w + 1),
        hd: 8,
    };
    let limit = if window.is_some() { 40 } else { dims.slots };
    let (seq_slots, positions) = decode_rows(inputs, dims.seqs, limit);
    let rows = seq_slots.len();
    let kv = host::<T>(inputs, rows * layers * 2 * dims.kv * dims.hd);
    let mut t = random_table(inputs, dims.seqs, dims.slots, p);
    let ps = p.page_size;
    let dense0 = host::<T>(inputs, layers * dims.dense_len());
    let spare = host::<T>(inputs, layers * dims.pool_len(&t, ps));
    let pool0 = scatter(&dense0, &spare, &t, ps, dims, layers);
    let mut dense_slots = seq_slots.clone();
    if p.missing {
        let slot = window.map_or(positions[0] as usize, |w| positions[0] as usize % w);
        drop_page(&mut t, ps, seq_slots[0], slot);
        dense_slots[0] = -1;
    }
    let layout = KvCacheLayout::dense(dims.seqs, dims.kv, dims.slots, dims.hd);
    let paged = layout.into_paged(t.pages, ps);
    let pos_dev = DeviceBuffer::from_host(stream, &positions)?;
    let kv_dev = up(stream, &kv)?;

    let run = |slots: &[i32], cache: &[T], paged_table: Option<&[i32]>| {
        let (mut kc, mut vc) = (up(stream, cache)?, up(stream, cache)?);
        let slots_dev = DeviceBuffer::from_host(stream, slots)?;
        let table_dev = paged_table
            .map(|e| DeviceBuffer::from_host(stream, e))
            .transpose()?;
        let layer_stride = if paged_table.is_some() {
            dims.pool_len(&t, ps)
        } else {
            dims.dense_len()
        };
        memory_kv_append(
            stream,
            &kv_dev,
            &slots_dev,
            &pos_dev,
            KvCacheMut {
                k: kc.view_mut(),
                v: vc.view_mut(),
                layout: if paged_table.is_some() { paged } else { layout },
                block_table: table_dev
                    .as_ref()
                    .map(|b| BlockTable::new(b.view(), t.per_seq)),
            },
            CrossCaches {
                layers,
                layer_stride,
                window,
            },
        )?;
        anyhow::Ok((kc.to_host(stream)?, vc.to_host(stream)?))
    };
    let (kc_want, vc_want) = run(&dense_slots, &dense0, None)?;
    let (kc_got, vc_got) = run(&seq_slots, &pool0, Some(&t.entries))?;
    Ok(vec![
        cmp(
            "k_cache",
            &gather(&kc_got, &kc_want, &t, ps, dims, layers),
            &kc_want,
        ),
        cmp(
            "v_cache",
            &gather(&vc_got, &vc_want, &t, ps, dims, layers),
            &vc_want,
        ),
        cmp(
            "k_cache.unnamed_pages",
            &unnamed(&kc_got, &t, dims, ps, layers),
            &unnamed(&pool0, &t, dims, ps, layers),
        ),
        cmp(
            "v_cache.unnamed_pages",
            &unnamed(&vc_got, &t, dims, ps, layers),
            &unnamed(&pool0, &t, dims, ps, layers),
        ),
    ])
}

fn decode_case<T: Float + AttentionElem>(p: Paging, hd: usize, ring: bool, cross: bool) -> Case {
    let name = format!(
        "paged/attention_decode/{}/hd{hd}/{}/{}",
        T::NAME,
        match (cross, ring) {
            (true, true) => "cross_ring_w8",
            (true, false) => "cross_unbounded",
            (false, true) => "sliding_ring_w8",
            (false, false) => "causal",
        },
        paging_name(p)
    );
    // A missing page is checked against the CPU reference over the keys that remain (bf16:
    // output rounding, see attention_decode.rs); otherwise the dense op is the reference.
    let tol = match (p.missing, T::NAME) {
        (false, _) => 1e-12,
        (true, "f32") => 1e-10,
        (true, _) => 2e-5,
    };
    Case::new(name, tol, move |stream, inputs| {
        run_decode::<T>(stream, inputs, p, hd, ring, cross)
    })
}

fn run_decode<T: Float + AttentionElem>(
    stream: &Stream,
    inputs: &mut Inputs,
    p: Paging,
    hd: usize,
    ring: bool,
    cross: bool,
) -> anyhow::Result<Vec<Compared>> {
    let (heads, kv) = (4, 2);
    let dims = Dims {
        seqs: 3,
        kv,
        slots: if ring { 9 } else { 70 },
        hd,
    };
    let mask = match (cross, ring) {
        (true, true) => DecodeMask::Cross { window: Some(8) },
        (true, false) => DecodeMask::Cross { window: None },
        (false, true) => DecodeMask::SelfSliding { window: 8 },
        (false, false) => DecodeMask::SelfCausal,
    };
    let limit = if ring { 100 } else { dims.slots };
    let (seq_slots, positions) = decode_rows(inputs, dims.seqs, limit);
    let rows = seq_slots.len();
    let q = up(stream, &host::<T>(inputs, rows * heads * hd))?;
    let mut t = random_table(inputs, dims.seqs, dims.slots, p);
    let ps = p.page_size;
    let (kd, vd) = (
        host::<T>(inputs, dims.dense_len()),
        host::<T>(inputs, dims.dense_len()),
    );
    let (ks, vs) = (
        host::<T>(inputs, dims.pool_len(&t, ps)),
        host::<T>(inputs, dims.pool_len(&t, ps)),
    );
    let (kp, vp) = (
        scatter(&kd, &ks, &t, ps, dims, 1),
        scatter(&vd, &vs, &t, ps, dims, 1),
    );
    if p.missing {
        // The page of row 0's oldest visible key goes: those keys are absent from its softmax.
        if let Some(&slot) = visible(mask, dims.slots, positions[0] as usize).first() {
            drop_page(&mut t, ps, seq_slots[0], slot);
        }
    }
    let slots_dev = DeviceBuffer::from_host(stream, &seq_slots)?;
    let pos_dev = DeviceBuffer::from_host(stream, &positions)?;
    let table_dev = DeviceBuffer::from_host(stream, &t.entries)?;
    let layout = DecodeLayout::new(rows, heads, kv, hd, dims.seqs, dims.slots).with_max_keys(limit);
    let mut ws = AttentionWorkspace::new(stream.device(), rows, heads, hd, 8)?;
    let mut out_dense = DeviceBuffer::from_host(stream, &vec![T::POISON; rows * heads * hd])?;
    let mut out_paged = DeviceBuffer::from_host(stream, &vec![T::POISON; rows * heads * hd])?;
    attention_decode(
        stream,
        &q,
        &up(stream, &kd)?,
        &up(stream, &vd)?,
        &slots_dev,
        &pos_dev,
        &mut out_dense,
        &mut ws,
        layout,
        mask,
    )?;
    attention_decode_paged(
        stream,
        &q,
        &up(stream, &kp)?,
        &up(stream, &vp)?,
        DecodePages {
            pool: PagePool {
                pages: t.pages,
                page_size: ps,
            },
            block_table: BlockTable::new(table_dev.view(), t.per_seq),
        },
        &slots_dev,
        &pos_dev,
        &mut out_paged,
        &mut ws,
        layout,
        mask,
    )?;
    let got = out_paged.to_host(stream)?;
    if !p.missing {
        return Ok(vec![cmp("out", &got, &out_dense.to_host(stream)?)]);
    }
    // The reference: each row's visible keys that still have a page, oldest first.
    let (kf, vf) = (widen(&kd), widen(&vd));
    let q_seen = widen(&q.to_host(stream)?);
    let head_layout = HeadLayout {
        heads,
        kv_heads: kv,
        head_dim: hd,
    };
    let q_dim = heads * hd;
    let mut want = vec![0f32; rows * q_dim];
    for r in 0..rows {
        let seq = seq_slots[r] as usize;
        let present: Vec<usize> = visible(mask, dims.slots, positions[r] as usize)
            .into_iter()
            .filter(|&slot| t.entries[seq * t.per_seq + slot / ps] >= 0)
            .collect();
        let (mut keys, mut values) = (Vec::new(), Vec::new());
        for &slot in &present {
            for h in 0..kv {
                let at = at(seq, h, slot, 0, kv, dims.slots, hd);
                keys.extend(kf[at..at + hd].iter().map(|&x| x as f32));
                values.extend(vf[at..at + hd].iter().map(|&x| x as f32));
            }
        }
        let q_row: Vec<f32> = q_seen[r * q_dim..(r + 1) * q_dim]
            .iter()
            .map(|&x| x as f32)
            .collect();
        attention_row(
            &q_row,
            &keys,
            &values,
            0..present.len(),
            head_layout,
            &mut want[r * q_dim..(r + 1) * q_dim],
        )?;
    }
    Ok(vec![Compared {
        output: "out",
        got: widen(&got),
        want: widen_f32(&want),
    }])
}

/// The cache slots a row at `pos` sees, oldest first (the rule restated independently of the
/// kernels, as in attention_decode.rs); rows of these cases always fit the cache.
fn visible(mask: DecodeMask, slots: usize, pos: usize) -> Vec<usize> {
    match mask {
        DecodeMask::SelfCausal => (0..=pos).collect(),
        DecodeMask::SelfSliding { window: w } => ((pos + 1).saturating_sub(w)..=pos)
            .map(|k| k % slots)
            .collect(),
        DecodeMask::Cross { window: None } => (0..pos).collect(),
        DecodeMask::Cross { window: Some(w) } => {
            (pos.saturating_sub(w)..pos).map(|k| k % slots).collect()
        }
    }
}

fn gemv_case<T: Float + NormElem>(p: Paging, ring: bool, cross: bool) -> Case {
    let name = format!(
        "paged/gemv/{}/{}/{}/{}",
        T::NAME,
        if cross { "cross_kv" } else { "rope_kv" },
        if ring { "ring" } else { "dense_slots" },
        paging_name(p)
    );
    Case::new(name, 0.0, move |stream, inputs| {
        run_gemv::<T>(stream, inputs, p, ring, cross)
    })
}

/// The gemv cache epilogues (RoPE + self-cache append, cross-cache append), paged against
/// dense, as `run_rope` and `run_cross` do for the unfused kernels.
fn run_gemv<T: Float + NormElem>(
    stream: &Stream,
    inputs: &mut Inputs,
    p: Paging,
    ring: bool,
    cross: bool,
) -> anyhow::Result<Vec<Compared>> {
    let (heads, kv, hd, k) = (4, 2, 16, 32);
    let layers = if cross { 2 } else { 1 };
    let window = (cross && ring).then_some(6);
    let dims = Dims {
        seqs: 3,
        kv,
        slots: match (cross, ring) {
            (true, true) => 7,
            (false, true) => 10,
            _ => 24,
        },
        hd,
    };
    let limit = if ring { 40 } else { dims.slots };
    let n = if cross {
        layers * 2 * kv * hd
    } else {
        (heads + 2 * kv) * hd
    };
    let (seq_slots, positions) = decode_rows(inputs, dims.seqs, limit);
    let m = seq_slots.len();
    let x = up(stream, &host::<T>(inputs, m * k))?;
    let w = up(stream, &host::<T>(inputs, n * k))?;
    let mut t = random_table(inputs, dims.seqs, dims.slots, p);
    let ps = p.page_size;
    let dense0 = host::<T>(inputs, layers * dims.dense_len());
    let spare = host::<T>(inputs, layers * dims.pool_len(&t, ps));
    let pool0 = scatter(&dense0, &spare, &t, ps, dims, layers);
    let mut dense_slots = seq_slots.clone();
    if p.missing {
        let ring_len = if cross {
            window
        } else {
            ring.then_some(dims.slots)
        };
        let slot = ring_len.map_or(positions[0] as usize, |r| positions[0] as usize % r);
        drop_page(&mut t, ps, seq_slots[0], slot);
        dense_slots[0] = -1;
    }
    let layout = KvCacheLayout::dense(dims.seqs, kv, dims.slots, hd);
    let layout = if ring && !cross {
        layout.into_ring()
    } else {
        layout
    };
    let paged = layout.into_paged(t.pages, ps);
    let table = RopeTable::new(stream, hd, 10_000.0, 40)?;
    let pos_dev = DeviceBuffer::from_host(stream, &positions)?;
    let shape = GemvShape { m, n, k };

    let run = |slots: &[i32], cache: &[T], paged_table: Option<&[i32]>| {
        let (mut kc, mut vc) = (up(stream, cache)?, up(stream, cache)?);
        let mut qkv = DeviceBuffer::from_host(stream, &vec![T::POISON; m * n])?;
        let slots_dev = DeviceBuffer::from_host(stream, slots)?;
        let table_dev = paged_table
            .map(|e| DeviceBuffer::from_host(stream, e))
            .transpose()?;
        let cache = KvCacheMut {
            k: kc.view_mut(),
            v: vc.view_mut(),
            layout: if paged_table.is_some() { paged } else { layout },
            block_table: table_dev
                .as_ref()
                .map(|b| BlockTable::new(b.view(), t.per_seq)),
        };
        let epilogue = if cross {
            let layer_stride = if paged_table.is_some() {
                dims.pool_len(&t, ps)
            } else {
                dims.dense_len()
            };
            GemvEpilogue::CrossKvAppend {
                seq_slots: slots_dev.view(),
                positions: pos_dev.view(),
                cache,
                cross: CrossCaches {
                    layers,
                    layer_stride,
                    window,
                },
            }
        } else {
            GemvEpilogue::RopeKvAppend {
                qkv: qkv.view_mut(),
                row_stride: n,
                heads: HeadShape {
                    heads,
                    kv_heads: kv,
                    head_dim: hd,
                },
                seq_slots: slots_dev.view(),
                positions: pos_dev.view(),
                table: &table,
                cache,
            }
        };
        gemv(stream, &x, &w, shape, GemvPrologue::None, epilogue)?;
        anyhow::Ok((
            qkv.to_host(stream)?,
            kc.to_host(stream)?,
            vc.to_host(stream)?,
        ))
    };
    let (qkv_want, kc_want, vc_want) = run(&dense_slots, &dense0, None)?;
    let (qkv_got, kc_got, vc_got) = run(&seq_slots, &pool0, Some(&t.entries))?;
    let mut out = vec![
        cmp(
            "k_cache",
            &gather(&kc_got, &kc_want, &t, ps, dims, layers),
            &kc_want,
        ),
        cmp(
            "v_cache",
            &gather(&vc_got, &vc_want, &t, ps, dims, layers),
            &vc_want,
        ),
        cmp(
            "k_cache.unnamed_pages",
            &unnamed(&kc_got, &t, dims, ps, layers),
            &unnamed(&pool0, &t, dims, ps, layers),
        ),
        cmp(
            "v_cache.unnamed_pages",
            &unnamed(&vc_got, &t, dims, ps, layers),
            &unnamed(&pool0, &t, dims, ps, layers),
        ),
    ];
    if !cross {
        out.push(cmp("qkv", &qkv_got, &qkv_want));
    }
    Ok(out)
}

fn prefill_case(p: Paging, hd: usize, ring: bool) -> Case {
    let name = format!(
        "paged/attention_prefill/bf16/cached_mma/hd{hd}/{}/{}",
        if ring { "sliding_ring_w16" } else { "causal" },
        paging_name(p)
    );
    Case::new(name, 1e-12, move |stream, inputs| {
        run_prefill(stream, inputs, p, hd, ring)
    })
}

/// The tensor-core prefill over a cache, paged against dense.
fn run_prefill(
    stream: &Stream,
    inputs: &mut Inputs,
    p: Paging,
    hd: usize,
    ring: bool,
) -> anyhow::Result<Vec<Compared>> {
    let (heads, kv) = (4, 2);
    let dims = Dims {
        seqs: 3,
        kv,
        slots: if ring { 40 } else { 80 },
        hd,
    };
    // (cache sequence, first position, queries): a ring's chunk must fit its window.
    let seqs: [(usize, usize, usize); 2] = if ring {
        [(2, 50, 20), (0, 7, 17)]
    } else {
        [(2, 10, 20), (0, 0, 33)]
    };
    let mask = if ring {
        PrefillMask::SlidingCausal { window: 16 }
    } else {
        PrefillMask::Causal
    };
    let t = random_table(inputs, dims.seqs, dims.slots, p);
    let ps = p.page_size;
    let (kd, vd) = (
        host::<bf16>(inputs, dims.dense_len()),
        host::<bf16>(inputs, dims.dense_len()),
    );
    let (ks, vs) = (
        host::<bf16>(inputs, dims.pool_len(&t, ps)),
        host::<bf16>(inputs, dims.pool_len(&t, ps)),
    );
    let (kp, vp) = (
        scatter(&kd, &ks, &t, ps, dims, 1),
        scatter(&vd, &vs, &t, ps, dims, 1),
    );
    let q_lens: Vec<usize> = seqs.iter().map(|s| s.2).collect();
    let p0s: Vec<usize> = seqs.iter().map(|s| s.1).collect();
    let q_rows: usize = q_lens.iter().sum();
    let slots: Vec<i32> = seqs
        .iter()
        .flat_map(|&(s, _, n)| std::iter::repeat_n(s as i32, n))
        .collect();
    let batch = PrefillBatch::with_positions(stream, &q_lens, &q_lens, &p0s)?;
    let shape = HeadShape {
        heads,
        kv_heads: kv,
        head_dim: hd,
    };
    let cfg = PrefillConfig::packed(shape, mask);
    let q = up(stream, &host::<bf16>(inputs, q_rows * heads * hd))?;
    let slots_dev = DeviceBuffer::from_host(stream, &slots)?;
    let table_dev = DeviceBuffer::from_host(stream, &t.entries)?;
    let layout = KvCacheLayout::dense(dims.seqs, kv, dims.slots, hd);
    let layout = if ring { layout.into_ring() } else { layout };
    let run = |k: &[bf16], v: &[bf16], paged: bool| {
        let (k_dev, v_dev) = (up(stream, k)?, up(stream, v)?);
        let mut out = DeviceBuffer::from_host(stream, &vec![bf16::POISON; q_rows * heads * hd])?;
        let keys = CacheKeys {
            k: k_dev.view(),
            v: v_dev.view(),
            layout: if paged {
                layout.into_paged(t.pages, ps)
            } else {
                layout
            },
            seq_slots: slots_dev.view(),
            block_table: paged.then(|| BlockTable::new(table_dev.view(), t.per_seq)),
        };
        attention_prefill_cached(stream, &batch, &q, &keys, &mut out, &cfg)?;
        anyhow::Ok(out.to_host(stream)?)
    };
    let want = run(&kd, &vd, false)?;
    let got = run(&kp, &vp, true)?;
    Ok(vec![cmp("out", &got, &want)])
}

/// Bad paging arguments are refused before anything is queued, each naming its argument, and
/// leave the pool untouched.
#[allow(clippy::too_many_arguments)]
fn check_refusals<T: Float + NormElem>(
    stream: &Stream,
    dense: KvCacheLayout,
    paged: KvCacheLayout,
    t: &Table,
    seq_slots: &[i32],
    pos_dev: &DeviceBuffer<i32>,
    table: &RopeTable,
) -> anyhow::Result<()> {
    let shape = HeadShape {
        heads: 4,
        kv_heads: 2,
        head_dim: 16,
    };
    let rows = seq_slots.len();
    let pool_len = paged.required_len()?;
    let sentinel = vec![T::from_f32(3.0); pool_len];
    let entries = DeviceBuffer::from_host(stream, &t.entries)?;
    let short = entries.view().slice(..t.entries.len() - 1)?;
    let slots_dev = DeviceBuffer::from_host(stream, seq_slots)?;
    let zero_page = KvCacheLayout {
        paged: paged.paged.map(|p| PagePool { page_size: 0, ..p }),
        ..paged
    };
    let attempts: Vec<(KvCacheLayout, Option<BlockTable<'_>>, &str)> = vec![
        (paged, None, "block_table"),
        (
            dense,
            Some(BlockTable::new(entries.view(), t.per_seq)),
            "block_table",
        ),
        (
            paged,
            Some(BlockTable::new(short, t.per_seq)),
            "block_table",
        ),
        (
            paged,
            Some(BlockTable::new(entries.view(), t.per_seq - 1)),
            "block_table.stride",
        ),
        (
            paged,
            Some(BlockTable::new(entries.view(), 0)),
            "block_table.stride",
        ),
        (
            zero_page,
            Some(BlockTable::new(entries.view(), t.per_seq)),
            "page_size",
        ),
    ];
    for (layout, block_table, arg) in attempts {
        let (mut kc, mut vc) = (up(stream, &sentinel)?, up(stream, &sentinel)?);
        let mut q = up(stream, &vec![T::from_f32(1.0); rows * 64])?;
        let mut k = up(stream, &vec![T::from_f32(1.0); rows * 32])?;
        let v = up(stream, &vec![T::from_f32(1.0); rows * 32])?;
        let err = rope_append(
            stream,
            QkvRows::Separate {
                q: q.view_mut(),
                k: k.view_mut(),
                v: v.view(),
            },
            shape,
            &slots_dev,
            pos_dev,
            table,
            KvCacheMut {
                k: kc.view_mut(),
                v: vc.view_mut(),
                layout,
                block_table,
            },
        );
        let named = match &err {
            Err(DeviceError::InvalidArgument { arg, .. })
            | Err(DeviceError::LengthMismatch { arg, .. })
            | Err(DeviceError::SizeOverflow { arg, .. }) => *arg,
            _ => anyhow::bail!("expected a refusal naming {arg}, got {err:?}"),
        };
        if named != arg {
            anyhow::bail!("refusal named {named}, expected {arg}");
        }
        if kc.to_host(stream)? != sentinel || vc.to_host(stream)? != sentinel {
            anyhow::bail!("a refused call ({arg}) wrote the pool");
        }
    }
    Ok(())
}
