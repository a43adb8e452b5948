//! The kernel parity table, in the spirit of llama.cpp's test-backend-ops: rows of
//! (op, shape, dtype, tolerance), each run with fresh random inputs and NaN-poisoned outputs
//! and compared with the CPU reference (`stagformer-ref`) by NMSE = Σ(a−b)²/Σb², plus a check
//! that every output is finite.
//!
//! It runs on the emulated device (in index order, then with a shuffled thread order that
//! exposes missing barriers) and on CUDA when a driver, a GPU and a `--features cuda` build are
//! present; otherwise it prints that the CUDA run did NOT run. `STAGFORMER_REQUIRE_GPU=1` turns
//! a missing GPU into a failure (the GPU check script sets it).
//!
//! Environment: `STAGFORMER_PARITY_SEED` (default: time-based, printed), `STAGFORMER_PARITY_FILTER`
//! (substring of row names), `STAGFORMER_PARITY_DEVICES` (`emu`, `cuda` or `emu,cuda`, the
//! default: which devices run the table; the GPU check runs `cuda` alone).

mod attention_decode;
mod attention_prefill;
mod axpby;
mod embedding;
mod gemm;
mod gemv;
mod memory_kv_append;
mod paged;
mod rmsnorm;
mod rope_append;
mod sample;
mod swiglu;
mod table;

use stagformer_kernels::device::{Device, EmuOptions};
use table::{run_table, Case};

fn all_cases() -> Vec<Case> {
    let mut cases = Vec::new();
    cases.extend(rmsnorm::cases());
    cases.extend(gemm::cases());
    cases.extend(embedding::cases());
    cases.extend(rope_append::cases());
    cases.extend(swiglu::cases());
    cases.extend(memory_kv_append::cases());
    cases.extend(attention_decode::cases());
    cases.extend(attention_prefill::cases());
    cases.extend(sample::cases());
    cases.extend(axpby::cases());
    cases.extend(gemv::cases());
    cases.extend(paged::cases());
    cases
}

fn main() {
    let seed = std::env::var("STAGFORMER_PARITY_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_nanos() as u64)
                .unwrap_or(1)
        });
    let filter = std::env::var("STAGFORMER_PARITY_FILTER").unwrap_or_default();
    let cases: Vec<Case> = all_cases()
        .into_iter()
        .filter(|c| c.name.contains(&filter))
        .collect();
    println!(
        "parity table: {} rows, seed {seed} (STAGFORMER_PARITY_SEED={seed} repeats it)",
        cases.len()
    );

    let mut passed = 0;
    let mut failed = 0;
    let devices = std::env::var("STAGFORMER_PARITY_DEVICES").unwrap_or_default();
    let wanted = |name: &str| devices.is_empty() || devices.split(',').any(|d| d.trim() == name);
    // Every build holds the emulator (the `cuda` feature only adds the GPU images).
    if !wanted("emu") {
        println!();
        println!("emulated parity: not asked for (STAGFORMER_PARITY_DEVICES={devices})");
    } else {
        let emulated = [
            Device::emulated(),
            Device::emulated_with(EmuOptions {
                shuffle_seed: (seed as u32) | 1,
                ..EmuOptions::default()
            }),
        ];
        for dev in &emulated {
            let (p, f) = run_table(dev, &cases, seed);
            passed += p;
            failed += f;
        }
    }

    let cuda = if wanted("cuda") {
        cuda_device()
    } else {
        Err(format!(
            "not asked for (STAGFORMER_PARITY_DEVICES={devices})"
        ))
    };
    match cuda {
        Ok(dev) => {
            let (p, f) = run_table(&dev, &cases, seed);
            passed += p;
            failed += f;
        }
        Err(reason) => {
            println!();
            println!("CUDA parity: NOT RUN — {reason}");
            if std::env::var("STAGFORMER_REQUIRE_GPU").is_ok_and(|v| v == "1") {
                println!("STAGFORMER_REQUIRE_GPU=1: a missing GPU run is a failure");
                failed += 1;
            }
        }
    }

    println!();
    println!("parity: {passed} passed, {failed} failed");
    if failed > 0 {
        std::process::exit(1);
    }
}

/// The CUDA device when this build can run kernels on one, else why not.
fn cuda_device() -> Result<Device, String> {
    if !cfg!(feature = "cuda") {
        return Err("this test binary was built without --features cuda".into());
    }
    Device::cuda(0).map_err(|e| format!("no usable GPU: {e}"))
}
