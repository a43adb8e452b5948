//! Rows for `memory_kv_append` and `memory_kv_append_host_rows` (cuda/memory_kv_append.cu).
//!
//! Tolerance 0: the op copies values, so every element of both stacked caches must be
//! bit-identical to the expectation — the projected rows at their (ring) slots, and the random
//! sentinel values everywhere else (other slots, other sequences, padding, skipped rows).

use half::bf16;
use stagformer_kernels::device::{DeviceBuffer, Stream};
use stagformer_kernels::ops::memory_kv_append::{
    memory_kv_append, memory_kv_append_host_rows, CrossCaches,
};
use stagformer_kernels::ops::rmsnorm::NormElem;
use stagformer_kernels::ops::rope_append::{KvCacheLayout, KvCacheMut};

use crate::embedding::random_indices;
use crate::rope_append::{permutation, upload, Expect};
use crate::table::{stored, Case, Compared, Float, Inputs};

#[derive(Clone, Copy, Debug)]
enum Rows {
    /// Positions W−1, W, W+1, 2W+3 of four distinct sequences: the ring's wrap-around.
    Ring,
    /// One random position below the cache's slots for each of `batch` distinct sequences.
    Decode { batch: usize },
    /// Positions start..start+len of one sequence.
    Prefill { start: usize, len: usize },
    /// Device indices naming no slot (sequence −1 or past the cache, a negative position, a
    /// position past an unbounded cache) among valid rows: those rows are skipped.
    BadIndices,
}

#[derive(Clone, Copy, Debug)]
struct Spec {
    layers: usize,
    kv_heads: usize,
    head_dim: usize,
    seqs: usize,
    slots: usize,
    window: Option<usize>,
    rows: Rows,
    /// Extra elements after each head's slots and each sequence.
    cache_pad: usize,
    /// Extra elements between stacked layers.
    layer_pad: usize,
    /// kv and caches start one element into their buffers (breaks 16-byte alignment).
    unaligned: bool,
    host_rows: bool,
}

const BASE: Spec = Spec {
    layers: 2,
    kv_heads: 2,
    head_dim: 64,
    seqs: 5,
    slots: 5,
    window: Some(5),
    rows: Rows::Ring,
    cache_pad: 0,
    layer_pad: 0,
    unaligned: false,
    host_rows: false,
};

fn specs() -> Vec<Spec> {
    vec![
        // W = 5: positions 4, 5, 6, 13 land in slots 4, 0, 1, 3.
        BASE,
        // Unbounded, three layers, hd 24, padded heads, sequences and layers.
        Spec {
            layers: 3,
            kv_heads: 1,
            head_dim: 24,
            slots: 20,
            window: None,
            rows: Rows::Decode { batch: 3 },
            cache_pad: 8,
            layer_pad: 16,
            ..BASE
        },
        // W = 1: every position lands in slot 0; four kv heads of 128.
        Spec {
            layers: 1,
            kv_heads: 4,
            head_dim: 128,
            seqs: 4,
            slots: 1,
            window: Some(1),
            ..BASE
        },
        // Cache with more slots than the window (slots past W stay untouched).
        Spec {
            kv_heads: 1,
            head_dim: 32,
            seqs: 4,
            slots: 9,
            window: Some(7),
            ..BASE
        },
        // hd 6, odd padding, misaligned data: the scalar path.
        Spec {
            head_dim: 6,
            seqs: 4,
            slots: 3,
            window: Some(3),
            cache_pad: 1,
            layer_pad: 3,
            unaligned: true,
            ..BASE
        },
        Spec {
            head_dim: 32,
            seqs: 3,
            slots: 10,
            window: None,
            rows: Rows::BadIndices,
            ..BASE
        },
        // The last W positions of a 10-token prompt, through host indices.
        Spec {
            seqs: 2,
            slots: 4,
            window: Some(4),
            rows: Rows::Prefill { start: 6, len: 4 },
            host_rows: true,
            ..BASE
        },
        // Unbounded decode through host indices.
        Spec {
            layers: 1,
            seqs: 3,
            slots: 12,
            window: None,
            rows: Rows::Decode { batch: 3 },
            host_rows: true,
            ..BASE
        },
    ]
}

pub fn cases() -> Vec<Case> {
    let mut cases = Vec::new();
    for spec in specs() {
        cases.push(append_case::<f32>(spec));
        cases.push(append_case::<bf16>(spec));
    }
    cases
}

fn case_name(dtype: &str, s: &Spec) -> String {
    let window = s
        .window
        .map_or("unbounded".to_string(), |w| format!("W={w}"));
    let rows = match s.rows {
        Rows::Ring => "ring wrap".to_string(),
        Rows::Decode { batch } => format!("decode B={batch}"),
        Rows::Prefill { start, len } => format!("positions {start}..{}", start + len),
        Rows::BadIndices => "bad device indices".to_string(),
    };
    let mut name = format!(
        "memory_kv_append {dtype} layers={} Hkv={} hd={} {window} {rows}",
        s.layers, s.kv_heads, s.head_dim
    );
    if s.cache_pad + s.layer_pad > 0 {
        name += &format!(" pad={}/{}", s.cache_pad, s.layer_pad);
    }
    if s.unaligned {
        name += " unaligned";
    }
    if s.host_rows {
        name += " host rows";
    }
    name
}

fn row_indices(inputs: &mut Inputs, s: &Spec) -> (Vec<i64>, Vec<i64>) {
    let order = permutation(inputs, s.seqs);
    match s.rows {
        Rows::Ring => {
            let w = s.window.unwrap_or(s.slots) as i64;
            let seqs = order[..4].iter().map(|&q| q as i64).collect();
            (seqs, vec![w - 1, w, w + 1, 2 * w + 3])
        }
        Rows::Decode { batch } => {
            let seqs = order[..batch].iter().map(|&q| q as i64).collect();
            let positions = random_indices(inputs, batch, s.slots)
                .into_iter()
                .map(|p| p as i64)
                .collect();
            (seqs, positions)
        }
        Rows::Prefill { start, len } => (
            vec![order[0] as i64; len],
            (start as i64..(start + len) as i64).collect(),
        ),
        Rows::BadIndices => {
            // Rows 0 and 2 are valid (different sequences).
            let (a, b) = (order[0] as i64, order[1] as i64);
            let seqs = vec![a, -1, b, s.seqs as i64, a, b];
            let p = random_indices(inputs, 2, s.slots);
            let positions = vec![p[0] as i64, 0, p[1] as i64, 1, -3, s.slots as i64];
            (seqs, positions)
        }
    }
}

fn append_case<T: Float + NormElem>(s: Spec) -> Case {
    Case::new(
        case_name(T::NAME, &s),
        0.0,
        move |stream, inputs: &mut Inputs| run_append::<T>(stream, inputs, &s),
    )
}

fn run_append<T: Float + NormElem>(
    stream: &Stream,
    inputs: &mut Inputs,
    s: &Spec,
) -> anyhow::Result<Vec<Compared>> {
    let hd = s.head_dim;
    let kvd = s.kv_heads * hd;
    let width = s.layers * 2 * kvd;
    let (seq_slots, positions) = row_indices(inputs, s);
    let rows = seq_slots.len();
    let off = usize::from(s.unaligned);

    let head_stride = s.slots * hd + s.cache_pad;
    let layout = KvCacheLayout {
        seqs: s.seqs,
        kv_heads: s.kv_heads,
        slots: s.slots,
        head_dim: hd,
        head_stride,
        seq_stride: s.kv_heads * head_stride + s.cache_pad,
        ring: false,
        paged: None,
    };
    let layer_stride = layout.required_len()? + s.layer_pad;
    let cross = CrossCaches {
        layers: s.layers,
        layer_stride,
        window: s.window,
    };
    let cache_len = s.layers * layer_stride;

    let (kv, kv_seen) = stored::<T>(&inputs.normal(rows * width, 0.0, 1.0));
    let (k_sentinel, _) = stored::<T>(&inputs.normal(cache_len, 0.0, 1.0));
    let (v_sentinel, _) = stored::<T>(&inputs.normal(cache_len, 0.0, 1.0));

    let mut want_k = Expect::new(&k_sentinel);
    let mut want_v = Expect::new(&v_sentinel);
    for r in 0..rows {
        let (seq, pos) = (seq_slots[r], positions[r]);
        if !(0..s.seqs as i64).contains(&seq) || pos < 0 {
            continue;
        }
        let slot = s.window.map_or(pos as usize, |w| pos as usize % w);
        if slot >= s.slots {
            continue;
        }
        for l in 0..s.layers {
            for kh in 0..s.kv_heads {
                let dst = l * layer_stride
                    + seq as usize * layout.seq_stride
                    + kh * layout.head_stride
                    + slot * hd;
                let src = r * width + l * 2 * kvd + kh * hd;
                for d in 0..hd {
                    want_k.set(dst + d, kv_seen[src + d]);
                    want_v.set(dst + d, kv_seen[src + kvd + d]);
                }
            }
        }
    }

    let kv_dev = upload(stream, &kv, off)?;
    let mut k_cache = upload(stream, &k_sentinel, off)?;
    let mut v_cache = upload(stream, &v_sentinel, off)?;
    let cache = KvCacheMut {
        k: k_cache.slice_mut(off..)?,
        v: v_cache.slice_mut(off..)?,
        layout,
        block_table: None,
    };
    let kv_view = kv_dev.slice(off..)?;
    if s.host_rows {
        let slots_u32: Vec<u32> = seq_slots.iter().map(|&x| x as u32).collect();
        let pos_u32: Vec<u32> = positions.iter().map(|&x| x as u32).collect();
        let mut staging = DeviceBuffer::<i32>::from_host(stream, &vec![0; 2 * rows])?;
        check_host_refusals::<T>(stream, s, &slots_u32, &pos_u32, &mut staging)?;
        memory_kv_append_host_rows(
            stream,
            &kv_view,
            &slots_u32,
            &pos_u32,
            &mut staging,
            cache,
            cross,
        )?;
    } else {
        let to_i32 = |v: &[i64]| v.iter().map(|&x| x as i32).collect::<Vec<i32>>();
        let slots_dev = DeviceBuffer::from_host(stream, &to_i32(&seq_slots))?;
        let pos_dev = DeviceBuffer::from_host(stream, &to_i32(&positions))?;
        memory_kv_append(stream, &kv_view, &slots_dev, &pos_dev, cache, cross)?;
    }
    Ok(vec![
        want_k.compare("k_cache", &k_cache.slice(off..)?.to_host(stream)?)?,
        want_v.compare("v_cache", &v_cache.slice(off..)?.to_host(stream)?)?,
    ])
}

/// Host indices without a slot (a sequence past the cache, a position past an unbounded cache)
/// or two rows at one slot (p and p + W of one sequence) must be refused, naming the row,
/// before anything is queued.
fn check_host_refusals<T: Float + NormElem>(
    stream: &Stream,
    s: &Spec,
    seq_slots: &[u32],
    positions: &[u32],
    staging: &mut DeviceBuffer<i32>,
) -> anyhow::Result<()> {
    let rows = seq_slots.len();
    let last = rows - 1;
    let layout = KvCacheLayout::dense(s.seqs, s.kv_heads, s.slots, s.head_dim);
    let cross = CrossCaches {
        layers: s.layers,
        layer_stride: layout.required_len()?,
        window: s.window,
    };
    let len = s.layers * cross.layer_stride;
    let kv = DeviceBuffer::<T>::from_host(
        stream,
        &vec![T::from_f32(1.0); rows * s.layers * 2 * s.kv_heads * s.head_dim],
    )?;
    let mut k_cache = DeviceBuffer::<T>::from_host(stream, &vec![T::from_f32(2.0); len])?;
    let mut v_cache = DeviceBuffer::<T>::from_host(stream, &vec![T::from_f32(2.0); len])?;

    let mut bad_seq = seq_slots.to_vec();
    bad_seq[last] = s.seqs as u32;
    let mut attempts = vec![(
        bad_seq,
        positions.to_vec(),
        format!("seq_slots[{last}] = {}", s.seqs),
    )];
    match s.window {
        None => {
            let mut too_far = positions.to_vec();
            too_far[last] = s.slots as u32;
            attempts.push((
                seq_slots.to_vec(),
                too_far,
                format!("positions[{last}] = {}", s.slots),
            ));
        }
        Some(w) => {
            let mut dup_seq = seq_slots.to_vec();
            let mut dup_pos = positions.to_vec();
            dup_seq[last] = dup_seq[0];
            dup_pos[last] = dup_pos[0] + w as u32;
            attempts.push((dup_seq, dup_pos, format!("row {last}")));
        }
    }
    for (slots, pos, needle) in attempts {
        let result = memory_kv_append_host_rows(
            stream,
            &kv,
            &slots,
            &pos,
            &mut *staging,
            KvCacheMut {
                k: k_cache.view_mut(),
                v: v_cache.view_mut(),
                layout,
                block_table: None,
            },
            cross,
        );
        match result {
            Ok(()) => anyhow::bail!("host indices with {needle} were accepted"),
            Err(e) if !e.to_string().contains(&needle) => {
                anyhow::bail!("the refusal does not name {needle}: {e}")
            }
            Err(_) => {}
        }
    }
    let untouched = k_cache.to_host(stream)?.iter().all(|v| v.to_f32() == 2.0)
        && v_cache.to_host(stream)?.iter().all(|v| v.to_f32() == 2.0)
        && staging.to_host(stream)?.iter().all(|&v| v == 0);
    if !untouched {
        anyhow::bail!("a refused call wrote a cache or the staging buffer");
    }
    Ok(())
}
