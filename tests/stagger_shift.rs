//! The stagger shift rule on the decode kernel: at step i the cross-attention reads memory
//! positions max(0, i − W)..i − 1 only, never position i, which the previous section produces
//! during that same step. Poisoning (NaN) the cache slot that position i is written into must
//! leave the output bit-identical; poisoning the slot of a position inside the window must
//! change it.
//!
//! Windowed caches are rings of `cache_slots` slots (position k in slot k mod cache_slots). The
//! decoder gives them W + 1 slots, so the slot of position i is free at every step. With exactly
//! W slots, that slot still holds position i − W, the oldest key of the window, at steps i ≥ W:
//! such a cache may only be written after the step's cross-attention has run. The last test
//! pins that down.

use half::bf16;
use stagformer_kernels::device::{Device, DeviceBuffer, Stream};
use stagformer_kernels::ops::attention_decode::{
    attention_decode, AttentionElem, AttentionWorkspace, DecodeLayout, DecodeMask,
};

const HEADS: usize = 4;
const KV_HEADS: usize = 2;
const HEAD_DIM: usize = 64;
const CACHE_SEQS: usize = 3;
/// The sequence the tested row uses (not slot 0, so that sequence offsets matter).
const SEQ: usize = 1;

trait Elem: AttentionElem {
    fn from_f32(v: f32) -> Self;
    /// The bit pattern, for bit-exact comparisons (NaN included).
    fn bits(self) -> u32;
}

impl Elem for f32 {
    fn from_f32(v: f32) -> Self {
        v
    }
    fn bits(self) -> u32 {
        self.to_bits()
    }
}

impl Elem for bf16 {
    fn from_f32(v: f32) -> Self {
        bf16::from_f32(v)
    }
    fn bits(self) -> u32 {
        u32::from(self.to_bits())
    }
}

/// Deterministic values in [-1, 1).
fn values<T: Elem>(n: usize, mut state: u64) -> Vec<T> {
    (0..n)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            T::from_f32(((state >> 11) as f64 / (1u64 << 53) as f64 * 2.0 - 1.0) as f32)
        })
        .collect()
}

struct Setup<T: Elem> {
    stream: Stream,
    cache_slots: usize,
    mask: DecodeMask,
    q: Vec<T>,
    k: Vec<T>,
    v: Vec<T>,
}

impl<T: Elem> Setup<T> {
    fn new(cache_slots: usize, mask: DecodeMask) -> Self {
        let stream = Device::emulated().new_stream().expect("emulated stream");
        let cache_len = CACHE_SEQS * KV_HEADS * cache_slots * HEAD_DIM;
        Setup {
            stream,
            cache_slots,
            mask,
            q: values(HEADS * HEAD_DIM, 0x9E37_79B9_7F4A_7C15),
            k: values(cache_len, 0xD1B5_4A32_D192_ED03),
            v: values(cache_len, 0x8CB9_2BA7_2F3D_8DD7),
        }
    }

    /// Writes NaN into slot `slot` of sequence SEQ, every kv head, in both caches (a NaN other
    /// than the output poison, so that a NaN it causes is not mistaken for an unwritten output).
    fn poison_slot(&mut self, slot: usize) {
        let nan = T::from_f32(f32::NAN);
        for kvh in 0..KV_HEADS {
            let start = ((SEQ * KV_HEADS + kvh) * self.cache_slots + slot) * HEAD_DIM;
            for cache in [&mut self.k, &mut self.v] {
                cache[start..start + HEAD_DIM].fill(nan);
            }
        }
    }

    /// The output bits of the row at `position` (one row, sequence SEQ).
    fn run(&self, position: i32) -> Vec<u32> {
        let stream = &self.stream;
        let upload = |data: &[T]| DeviceBuffer::from_host(stream, data).expect("upload");
        let (q, k, v) = (upload(&self.q), upload(&self.k), upload(&self.v));
        let seq_slots = DeviceBuffer::from_host(stream, &[SEQ as i32]).expect("upload");
        let positions = DeviceBuffer::from_host(stream, &[position]).expect("upload");
        let mut out =
            DeviceBuffer::from_host(stream, &[T::POISON; HEADS * HEAD_DIM]).expect("upload");
        let mut workspace =
            AttentionWorkspace::new(stream.device(), 1, HEADS, HEAD_DIM, 8).expect("workspace");
        let layout = DecodeLayout::new(1, HEADS, KV_HEADS, HEAD_DIM, CACHE_SEQS, self.cache_slots);
        attention_decode(
            stream,
            &q,
            &k,
            &v,
            &seq_slots,
            &positions,
            &mut out,
            &mut workspace,
            layout,
            self.mask,
        )
        .expect("attention_decode");
        let out = out.to_host(stream).expect("download");
        assert!(
            out.iter().all(|x| x.bits() != T::POISON.bits()),
            "every output element is written"
        );
        out.into_iter().map(Elem::bits).collect()
    }
}

/// At step `step`, poisoning the slot that position `step` is written into changes nothing;
/// poisoning the slot of the newest visible position (`step − 1`) changes the output.
fn shift_holds<T: Elem>(cache_slots: usize, window: Option<usize>, step: usize) {
    let mask = DecodeMask::Cross { window };
    // Unbounded caches hold position k in slot k; rings in slot k mod cache_slots.
    let slot = |position: usize| position % cache_slots;
    let before = Setup::<T>::new(cache_slots, mask).run(step as i32);

    let mut written = Setup::<T>::new(cache_slots, mask);
    written.poison_slot(slot(step));
    assert_eq!(
        written.run(step as i32),
        before,
        "step {step}, window {window:?}: the slot of position {step} was read"
    );

    let mut newest = Setup::<T>::new(cache_slots, mask);
    newest.poison_slot(slot(step - 1));
    assert_ne!(
        newest.run(step as i32),
        before,
        "step {step}, window {window:?}: the slot of position {} was not read",
        step - 1
    );
}

#[test]
fn unbounded_cross_never_reads_the_current_position() {
    for step in [1, 2, 7, 15] {
        shift_holds::<f32>(16, None, step);
        shift_holds::<bf16>(16, None, step);
    }
}

#[test]
fn windowed_cross_in_a_ring_of_w_plus_one_never_reads_the_current_position() {
    // Steps before, at and long after the ring first wraps.
    for window in [1, 3, 4] {
        for step in [1, 2, 3, 4, 5, 9, 23] {
            shift_holds::<f32>(window + 1, Some(window), step);
            shift_holds::<bf16>(window + 1, Some(window), step);
        }
    }
}

#[test]
fn windowed_cross_never_reads_positions_older_than_the_window() {
    // W = 3 in a ring of 8: at step 9 the window is 6..=8; slots of positions 1..=5 and of 9
    // (not yet written) must not matter.
    let (slots, window, step) = (8usize, 3usize, 9usize);
    let mask = DecodeMask::Cross {
        window: Some(window),
    };
    let before = Setup::<f32>::new(slots, mask).run(step as i32);
    let mut stale = Setup::<f32>::new(slots, mask);
    for position in (1..step - window).chain([step]) {
        stale.poison_slot(position % slots);
    }
    assert_eq!(stale.run(step as i32), before);
}

#[test]
fn position_zero_reads_nothing() {
    for window in [None, Some(1), Some(3)] {
        let mut setup = Setup::<f32>::new(4, DecodeMask::Cross { window });
        for slot in 0..4 {
            setup.poison_slot(slot);
        }
        assert!(
            setup.run(0).iter().all(|&b| b == 0),
            "window {window:?}: the empty set must give +0.0 everywhere"
        );
    }
}

#[test]
fn self_attention_reads_the_current_position() {
    // The contrast: self-attention at step i includes position i itself.
    let step = 6;
    let before = Setup::<f32>::new(16, DecodeMask::SelfCausal).run(step as i32);
    let mut current = Setup::<f32>::new(16, DecodeMask::SelfCausal);
    current.poison_slot(step);
    assert_ne!(current.run(step as i32), before);
    let mut future = Setup::<f32>::new(16, DecodeMask::SelfCausal);
    future.poison_slot(step + 1);
    assert_eq!(future.run(step as i32), before);
}

#[test]
fn ring_of_exactly_w_slots_still_holds_the_oldest_visible_key() {
    // W = 4 in 4 slots, step 9: the window is positions 5..=8; position 9 goes to slot 1, which
    // holds position 5 until the step's cross-attention has read it.
    let (window, step) = (4, 9usize);
    let mask = DecodeMask::Cross {
        window: Some(window),
    };
    let before = Setup::<f32>::new(window, mask).run(step as i32);
    let mut overwritten = Setup::<f32>::new(window, mask);
    overwritten.poison_slot(step % window);
    assert_ne!(
        overwritten.run(step as i32),
        before,
        "slot {} holds position {} of the window",
        step % window,
        step - window
    );
    // Below W the slot of position i is still free, even in a ring of exactly W.
    for step in 1..window {
        shift_holds::<f32>(window, Some(window), step);
    }
}
