//! Decode speed of the CPU reference on the `small` preset (p = 2, D = 512, 8 layers), and on
//! its shared-weight twin in recurrent mode: one decode step of one sequence per iteration,
//! after a 16-token prompt.

use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use stagformer_ref::{init, DecodeBatch, Model, StepMode, StorageDtype};

const PROMPT: [u32; 16] = [1, 5, 9, 13, 17, 21, 25, 29, 33, 37, 41, 45, 49, 53, 57, 61];

fn decode_step(c: &mut Criterion) {
    let separate = init::preset("small").expect("preset exists");
    // The same shape with one shared stack of 8 layers, for recurrent mode.
    let mut shared = separate.clone();
    shared.stag_shared_weights = true;
    let cases = [
        ("small_p2_staggered_step", separate, StepMode::Staggered),
        (
            "small_p2_shared_recurrent_step",
            shared,
            StepMode::Recurrent,
        ),
    ];
    let capacity = 512;
    let mut group = c.benchmark_group("cpu_reference_decode");
    group.throughput(Throughput::Elements(1));
    group.sample_size(20);
    for (name, config, mode) in cases {
        let model = Model::random(config, 0, StorageDtype::F32).expect("valid preset");
        group.bench_function(name, |b| {
            b.iter_custom(|iters| {
                let mut total = Duration::ZERO;
                let mut batch = DecodeBatch::new(&model, mode, 1, capacity).expect("capacity");
                let (mut id, _) = batch.prefill(&PROMPT).expect("prompt");
                for i in 0..iters {
                    if batch.len(id).expect("live") == capacity {
                        batch = DecodeBatch::new(&model, mode, 1, capacity).expect("capacity");
                        id = batch.prefill(&PROMPT).expect("prompt").0;
                    }
                    let token = (i % 500) as u32;
                    let start = Instant::now();
                    let logits = batch.step(&[id], &[token]).expect("step");
                    total += start.elapsed();
                    std::hint::black_box(logits);
                }
                total
            })
        });
    }
    group.finish();
}

criterion_group!(benches, decode_step);
criterion_main!(benches);
