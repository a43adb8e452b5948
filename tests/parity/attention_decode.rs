//! Rows for `attention_decode` (cuda/attention_decode.cu): split-KV decode attention, causal
//! self-attention and the staggered cross-attention (unbounded and windowed rings).
//!
//! The reference gathers each row's logical key set from the caches on the host (slot k for
//! self and unbounded cross, slot k mod cache_slots for the windowed ring), oldest first, and runs
//! `stagformer_ref::ops::attention_row` on it (f64 softmax, scale 1/sqrt(hd)). Rows cover batch
//! 1 and ragged batches, positions 0 (empty cross set: the row must be exactly zero), 1, W−1,
//! W, W+1 and long rows (up to 4001 keys, dozens of splits), windows none/1/3/256 in rings of
//! exactly W slots and of W + 1 or more (the decoder's), GQA groups 1 to 8, 16 (and 3,
//! which leaves a head of the block idle), head dims 64 and 128 (16-byte loads) and 8/24/80 (the
//! generic kernels), caches holding more sequences than there are rows in a permuted order,
//! misaligned and strided views (the kernels' element-wise path), a split hint shorter than
//! the rows (the last split takes the excess), and rows whose slot or position lies outside
//! the caches (they must read nothing and come out zero). Sliding-window self rows (Mistral:
//! positions max(0, pos − W + 1)..=pos in a ring of cache_slots ≥ W) cover windows 1/4/300
//! before, at and far past the window.
//!
//! Rows of one launch with very different lengths (1, 7, 300 keys and the capacity) in a grid
//! sized for the capacity check that the device splits every row by its own length. Every row
//! runs with both combine paths (fused and the separate combine kernel), twice in a row with
//! the same workspace (the fused counters must come back to zero, as graph replay needs, and
//! the two outputs must be bit-identical), with the partials poisoned with NaN before each
//! launch (a combine that read a partial no split wrote would be NaN).
//!
//! Tolerances: f32 1e-10. The kernel's f32 dot products, exp2 and sums against the f64
//! reference leave relative errors of order 1e-7 on every output (NMSE ~1e-13), well inside.
//! bf16 2e-5: inputs are the same bf16 values on both sides and all math is f32, so the error
//! is the rounding of the output to bf16, at most 2⁻⁸ relative per element, NMSE ≤ 2⁻¹⁶.

use stagformer_kernels::device::{DeviceBuffer, Stream};
use stagformer_kernels::ops::attention_decode::{
    attention_decode, plan_splits, AttentionElem, AttentionWorkspace, DecodeCombine, DecodeLayout,
    DecodeMask, RECOMMENDED_MAX_SPLITS,
};
use stagformer_ref::ops::{attention_row, HeadLayout};

use crate::table::{poisoned, stored, widen, widen_f32, Case, Compared, Float, Inputs};

const F32_TOL: f64 = 1e-10;
/// Output rounding to bf16 alone can reach 2⁻¹⁶ (see above).
const BF16_TOL: f64 = 2e-5;

#[derive(Clone, Debug)]
struct Spec {
    label: &'static str,
    heads: usize,
    kv_heads: usize,
    head_dim: usize,
    cache_seqs: usize,
    cache_slots: usize,
    /// (sequence slot, position) per row.
    rows: Vec<(i32, i32)>,
    mask: DecodeMask,
    max_keys: Option<usize>,
    /// Start every view one element into its buffer (no 16-byte loads possible).
    misaligned: bool,
    /// Extra elements between rows of q and out.
    row_pad: usize,
    /// Fewest splits the plan must use for the longest row (checks the long rows really split).
    min_splits: usize,
    /// Capture the call once in a graph and replay it at `rows`, then again with the rows at
    /// these positions (written to the positions buffer between the replays): the captured
    /// grid must follow the new lengths.
    replay: Option<Vec<i32>>,
    /// Rows the workspace is made for (`None`: the rows of the call); fewer rows than the call
    /// leave it fewer splits per row.
    workspace_rows: Option<usize>,
}

impl Spec {
    fn new(label: &'static str, heads: usize, kv_heads: usize, head_dim: usize) -> Spec {
        Spec {
            label,
            heads,
            kv_heads,
            head_dim,
            cache_seqs: 1,
            cache_slots: 1,
            rows: Vec::new(),
            mask: DecodeMask::SelfCausal,
            max_keys: None,
            misaligned: false,
            row_pad: 0,
            min_splits: 1,
            replay: None,
            workspace_rows: None,
        }
    }

    /// Rows at `positions`, in cache sequences taken from the back (slots not the identity),
    /// in a cache with two more sequences than rows.
    fn rows(mut self, positions: &[i32], cache_slots: usize) -> Spec {
        let n = positions.len();
        self.cache_seqs = n + 2;
        self.cache_slots = cache_slots;
        self.rows = positions
            .iter()
            .enumerate()
            .map(|(r, &p)| ((self.cache_seqs - 1 - (r * 2) % self.cache_seqs) as i32, p))
            .collect();
        self
    }

    fn mask(mut self, mask: DecodeMask) -> Spec {
        self.mask = mask;
        self
    }
}

fn cross(window: Option<usize>) -> DecodeMask {
    DecodeMask::Cross { window }
}

fn sliding(window: usize) -> DecodeMask {
    DecodeMask::SelfSliding { window }
}

fn specs() -> Vec<Spec> {
    let mut specs = vec![
        // Self-attention: MHA, ragged batch including position 0 (one key).
        Spec::new("self g1", 4, 4, 64).rows(&[0, 17, 70], 80),
        // Self, batch 1, long enough for several splits, GQA 2.
        Spec {
            min_splits: 4,
            ..Spec::new("self long g2", 4, 2, 128).rows(&[299], 320)
        },
        // A long context at batch 1: dozens of splits.
        Spec {
            min_splits: 32,
            ..Spec::new("self very long g8", 8, 1, 128).rows(&[4000], 4096)
        },
        // GQA 4 and 8 with ragged rows.
        Spec::new("self g4", 8, 2, 128).rows(&[5, 64, 131], 140),
        Spec::new("self g8", 8, 1, 64).rows(&[1, 33, 96], 100),
        // Group 16: two blocks per kv head.
        Spec::new("self g16", 16, 1, 64).rows(&[40, 7], 48),
        // A split hint far shorter than the rows: the last split takes the rest.
        Spec {
            max_keys: Some(100),
            ..Spec::new("self short hint g8", 16, 2, 128).rows(&[130, 257, 3], 260)
        },
        // Generic head dims.
        Spec::new("self hd80 g4", 8, 2, 80).rows(&[0, 45, 150], 160),
        Spec::new("self hd24 g3", 6, 2, 24).rows(&[12, 77], 80),
        Spec::new("self hd8 g2", 4, 2, 8).rows(&[3, 200], 210),
        // Misaligned and strided views: the element-wise load path of the 64/128 kernels.
        Spec {
            misaligned: true,
            row_pad: 3,
            ..Spec::new("self misaligned g4", 4, 1, 128).rows(&[9, 90], 96)
        },
        Spec {
            misaligned: true,
            ..Spec::new("cross w3 misaligned g2", 4, 2, 64)
                .rows(&[0, 2, 3, 4, 50], 4)
                .mask(cross(Some(3)))
        },
        // Cross-attention, unbounded: position 0 (empty), 1, and long.
        Spec {
            min_splits: 4,
            ..Spec::new("cross g4", 8, 2, 64)
                .rows(&[0, 1, 5, 200], 256)
                .mask(cross(None))
        },
        Spec::new("cross g1 hd128", 2, 2, 128)
            .rows(&[1, 0, 64], 64)
            .mask(cross(None)),
        // Window 1: only the previous position.
        Spec::new("cross w1 g2", 4, 2, 128)
            .rows(&[0, 1, 2, 9], 1)
            .mask(cross(Some(1))),
        // Window 1 in the decoder's ring of W + 1 slots.
        Spec::new("cross w1 ring2 g4", 4, 1, 64)
            .rows(&[0, 1, 2, 7], 2)
            .mask(cross(Some(1))),
        // Window 3: positions 0, 1, W−1, W, W+1 and far past it (ring wrapped many times).
        Spec::new("cross w3 g8", 8, 1, 64)
            .rows(&[0, 1, 2, 3, 4, 100], 3)
            .mask(cross(Some(3))),
        Spec::new("cross w3 hd16 g1", 2, 2, 16)
            .rows(&[0, 2, 3, 4, 31], 5)
            .mask(cross(Some(3))),
        // A long window: rows around W and far past it, split four ways, ring with spare slots.
        Spec {
            min_splits: 4,
            ..Spec::new("cross w256 g4", 4, 1, 128)
                .rows(&[255, 256, 257, 700], 260)
                .mask(cross(Some(256)))
        },
        Spec::new("cross w3 hd80 g8", 8, 1, 80)
            .rows(&[0, 3, 4, 10], 3)
            .mask(cross(Some(3))),
        // Sliding-window self-attention (Mistral): positions 0, W − 1, W, W + 1 and far past
        // it, in a ring of exactly W slots and in the decoder's longer ring.
        Spec::new("self sliding w4 g2", 4, 2, 64)
            .rows(&[0, 3, 4, 5, 77], 4)
            .mask(sliding(4)),
        Spec::new("self sliding w4 ring7 hd24 g3", 6, 2, 24)
            .rows(&[2, 4, 6, 7, 40], 7)
            .mask(sliding(4)),
        Spec::new("self sliding w1 g4 hd128", 8, 2, 128)
            .rows(&[0, 1, 9], 1)
            .mask(sliding(1)),
        Spec {
            min_splits: 4,
            ..Spec::new("self sliding w300 g8", 8, 1, 128)
                .rows(&[299, 300, 1000], 555)
                .mask(sliding(300))
        },
    ];
    // Rows whose sequence slot or position lies outside the caches read nothing and give zeros.
    let mut invalid = Spec::new("self out-of-range rows g2", 4, 2, 64).rows(&[3, 0, 7, 9], 8);
    invalid.rows[1] = (-1, 2);
    invalid.rows[2] = (invalid.cache_seqs as i32, 2);
    invalid.rows[3] = (0, 8); // position == cache_slots: the cache cannot hold its key
    specs.push(invalid);
    let mut invalid = Spec::new("cross out-of-range rows g1", 2, 2, 128)
        .rows(&[4, 5, -3], 4)
        .mask(cross(None)); // position 5 > cache_slots; -3 negative
    invalid.rows[0].0 = 1;
    specs.push(invalid);
    // One launch, rows of 1, 7, 300 keys and the capacity, the grid sized for the capacity.
    specs.extend([
        Spec {
            min_splits: 8,
            ..Spec::new("mixed lengths self g1", 4, 4, 64).rows(&[0, 6, 299, 1023], 1024)
        },
        Spec {
            min_splits: 8,
            ..Spec::new("mixed lengths self g4", 8, 2, 128).rows(&[1023, 0, 299, 6], 1024)
        },
        Spec {
            min_splits: 16,
            ..Spec::new("mixed lengths self g8", 8, 1, 128).rows(&[0, 6, 299, 2047], 2048)
        },
        Spec {
            min_splits: 4,
            ..Spec::new("mixed lengths sliding w512 ring520 g4", 8, 2, 64)
                .rows(&[0, 6, 299, 5000], 520)
                .mask(sliding(512))
        },
        Spec {
            min_splits: 2,
            ..Spec::new("mixed lengths cross w300 ring301 hd80 g8", 8, 1, 80)
                .rows(&[1, 7, 300, 9000], 301)
                .mask(cross(Some(300)))
        },
        Spec {
            min_splits: 8,
            ..Spec::new("mixed lengths cross g2", 4, 2, 128)
                .rows(&[1, 7, 300, 1024], 1024)
                .mask(cross(None))
        },
        // A workspace made for 2 rows serving 6 (fewer splits each; counters for every row).
        Spec {
            workspace_rows: Some(2),
            ..Spec::new("small workspace g2", 4, 2, 64).rows(&[0, 6, 299, 511, 64, 65], 512)
        },
        // One captured graph replayed at two sets of lengths (a decoder's step graph).
        Spec {
            min_splits: 8,
            replay: Some(vec![1023, 299, 6, 0]),
            ..Spec::new("graph replay self g4", 8, 2, 128).rows(&[0, 6, 299, 1023], 1024)
        },
        Spec {
            replay: Some(vec![9000, 300, 7, 1]),
            ..Spec::new("graph replay cross w300 ring301 g8", 8, 1, 64)
                .rows(&[1, 7, 300, 9000], 301)
                .mask(cross(Some(300)))
        },
    ]);
    specs
}

pub fn cases() -> Vec<Case> {
    let mut cases = Vec::new();
    for spec in specs() {
        for combine in [DecodeCombine::Fused, DecodeCombine::Separate] {
            cases.push(decode_case::<f32>(spec.clone(), combine, F32_TOL));
            cases.push(decode_case::<half::bf16>(spec.clone(), combine, BF16_TOL));
        }
    }
    cases
}

fn label(spec: &Spec, combine: DecodeCombine, dtype: &str) -> String {
    let mut positions: Vec<String> = spec.rows.iter().map(|(_, p)| p.to_string()).collect();
    if let Some(replay) = &spec.replay {
        positions.push(format!(
            "then {}",
            replay
                .iter()
                .map(|p| p.to_string())
                .collect::<Vec<_>>()
                .join(",")
        ));
    }
    let combine = match combine {
        DecodeCombine::Fused => "fused",
        DecodeCombine::Separate => "separate",
    };
    format!(
        "attention_decode {dtype} {combine} {} H={} Hkv={} hd={} pos=[{}]",
        spec.label,
        spec.heads,
        spec.kv_heads,
        spec.head_dim,
        positions.join(",")
    )
}

/// The cache slots a row sees, oldest key first: the rule restated independently of the kernel.
fn visible_slots(spec: &Spec, seq: i32, pos: i32) -> Vec<usize> {
    if seq < 0 || seq as usize >= spec.cache_seqs || pos < 0 {
        return Vec::new();
    }
    let pos = pos as usize;
    match spec.mask {
        DecodeMask::SelfCausal if pos < spec.cache_slots => (0..=pos).collect(),
        DecodeMask::SelfSliding { window: w } => ((pos + 1).saturating_sub(w)..=pos)
            .map(|k| k % spec.cache_slots)
            .collect(),
        DecodeMask::Cross { window: None } if pos <= spec.cache_slots => (0..pos).collect(),
        DecodeMask::Cross { window: Some(w) } => (pos.saturating_sub(w)..pos)
            .map(|k| k % spec.cache_slots)
            .collect(),
        _ => Vec::new(),
    }
}

/// A device copy of `values`, starting one element into the buffer when `misaligned`.
fn upload<T: Float>(
    stream: &Stream,
    values: &[T],
    offset: usize,
) -> anyhow::Result<DeviceBuffer<T>> {
    let mut host = vec![T::from_f32(0.25); offset];
    host.extend_from_slice(values);
    Ok(DeviceBuffer::from_host(stream, &host)?)
}

fn decode_case<T: Float + AttentionElem>(spec: Spec, combine: DecodeCombine, tol: f64) -> Case {
    Case::new(
        label(&spec, combine, T::NAME),
        tol,
        move |stream, inputs: &mut Inputs| {
            let s = &spec;
            let rows = s.rows.len();
            let q_dim = s.heads * s.head_dim;
            let stride = q_dim + s.row_pad;
            let kv_dim = s.kv_heads * s.head_dim;
            let cache_len = s.cache_seqs * s.kv_heads * s.cache_slots * s.head_dim;
            let (q, q_seen) = stored::<T>(&inputs.normal(rows * stride, 0.0, 1.0));
            let (k, k_seen) = stored::<T>(&inputs.normal(cache_len, 0.0, 1.0));
            let (v, v_seen) = stored::<T>(&inputs.normal(cache_len, 0.0, 1.0));
            let offset = usize::from(s.misaligned);

            let q_dev = upload(stream, &q, offset)?;
            let k_dev = upload(stream, &k, offset)?;
            let v_dev = upload(stream, &v, offset)?;
            let seq_dev =
                DeviceBuffer::from_host(stream, &s.rows.iter().map(|r| r.0).collect::<Vec<_>>())?;
            let pos_dev =
                DeviceBuffer::from_host(stream, &s.rows.iter().map(|r| r.1).collect::<Vec<_>>())?;
            let out_len = rows * stride;
            let mut workspace = AttentionWorkspace::new(
                stream.device(),
                s.workspace_rows.unwrap_or(rows),
                s.heads,
                s.head_dim,
                RECOMMENDED_MAX_SPLITS,
            )?;
            let mut layout = DecodeLayout::new(
                rows,
                s.heads,
                s.kv_heads,
                s.head_dim,
                s.cache_seqs,
                s.cache_slots,
            )
            .with_row_strides(stride, stride)
            .with_combine(combine);
            if let Some(max_keys) = s.max_keys {
                layout = layout.with_max_keys(max_keys);
            }
            let plan = plan_splits(&layout, s.mask, &workspace)?;
            if plan.splits < s.min_splits {
                anyhow::bail!(
                    "the plan uses {} splits, the row needs at least {}",
                    plan.splits,
                    s.min_splits
                );
            }
            // The (sequence, position) rows of each launch: the same twice for a plain case,
            // the spec's and then the replay's positions for a graph case.
            let steps: Vec<Vec<(i32, i32)>> = match &s.replay {
                None => vec![s.rows.clone(), s.rows.clone()],
                Some(replay) => vec![
                    s.rows.clone(),
                    s.rows.iter().zip(replay).map(|(r, &p)| (r.0, p)).collect(),
                ],
            };
            // Two launches on one workspace (what a replayed graph does), partials poisoned
            // before each and the output poisoned again before the second.
            let mut out = poisoned::<T>(stream, out_len + offset)?;
            let mut pos_dev = pos_dev;
            let graph = match s.replay {
                None => None,
                Some(_) => {
                    let (graph, ()) = stream.capture(|| {
                        attention_decode(
                            stream,
                            &q_dev.slice(offset..)?,
                            &k_dev.slice(offset..)?,
                            &v_dev.slice(offset..)?,
                            &seq_dev,
                            &pos_dev,
                            &mut out.slice_mut(offset..)?,
                            &mut workspace,
                            layout,
                            s.mask,
                        )
                    })?;
                    Some(graph)
                }
            };
            let mut runs = Vec::with_capacity(2);
            for step in &steps {
                let positions: Vec<i32> = step.iter().map(|r| r.1).collect();
                pos_dev.copy_from_host(stream, &positions)?;
                workspace.fill_partials(stream, f32::NAN)?;
                out.copy_from(stream, &poisoned::<T>(stream, out_len + offset)?)?;
                match &graph {
                    Some(graph) => graph.launch()?,
                    None => attention_decode(
                        stream,
                        &q_dev.slice(offset..)?,
                        &k_dev.slice(offset..)?,
                        &v_dev.slice(offset..)?,
                        &seq_dev,
                        &pos_dev,
                        &mut out.slice_mut(offset..)?,
                        &mut workspace,
                        layout,
                        s.mask,
                    )?,
                }
                runs.push(out.slice(offset..)?.to_host(stream)?);
                let counters = workspace.counters_to_host(stream)?;
                if let Some(i) = counters.iter().position(|&c| c != 0) {
                    anyhow::bail!("counter {i} is {} after the launch, not 0", counters[i]);
                }
            }
            if s.replay.is_none()
                && runs[0]
                    .iter()
                    .zip(&runs[1])
                    .any(|(a, b)| a.to_f32().to_bits() != b.to_f32().to_bits())
            {
                anyhow::bail!("the second launch on the same workspace gave another result");
            }

            let head_layout = HeadLayout {
                heads: s.heads,
                kv_heads: s.kv_heads,
                head_dim: s.head_dim,
            };
            // Both launches against the reference, one after the other.
            let mut got = Vec::with_capacity(2 * rows * q_dim);
            let mut want = vec![0f32; 2 * rows * q_dim];
            for (n, (step, got_all)) in steps.iter().zip(&runs).enumerate() {
                for (r, &(seq, pos)) in step.iter().enumerate() {
                    let row_got = &got_all[r * stride..r * stride + q_dim];
                    let slots = visible_slots(s, seq, pos);
                    if slots.is_empty() && row_got.iter().any(|&x| x.to_f32() != 0.0) {
                        anyhow::bail!(
                            "launch {n}: row {r} (position {pos}) sees no key but its output is \
                             not exactly zero"
                        );
                    }
                    got.extend_from_slice(row_got);
                    let mut keys = vec![0f32; slots.len() * kv_dim];
                    let mut values = vec![0f32; slots.len() * kv_dim];
                    for (i, &slot) in slots.iter().enumerate() {
                        for kvh in 0..s.kv_heads {
                            let src = ((seq as usize * s.kv_heads + kvh) * s.cache_slots + slot)
                                * s.head_dim;
                            let dst = i * kv_dim + kvh * s.head_dim;
                            keys[dst..dst + s.head_dim]
                                .copy_from_slice(&k_seen[src..src + s.head_dim]);
                            values[dst..dst + s.head_dim]
                                .copy_from_slice(&v_seen[src..src + s.head_dim]);
                        }
                    }
                    let at = (n * rows + r) * q_dim;
                    attention_row(
                        &q_seen[r * stride..r * stride + q_dim],
                        &keys,
                        &values,
                        0..slots.len(),
                        head_layout,
                        &mut want[at..at + q_dim],
                    )?;
                }
            }
            Ok(vec![Compared {
                output: "out",
                got: widen(&got),
                want: widen_f32(&want),
            }])
        },
    )
}
