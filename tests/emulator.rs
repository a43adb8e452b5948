//! The host emulator itself: correct kernels give correct results under every schedule, and
//! broken kernels are caught — a divergent barrier is an error naming the kernel (never a
//! hang), and a missing `__syncthreads` shows up as seed-dependent results in shuffled order.
//! The kernels are `cuda/emu/selftest/*.cu`, compiled into the emulator of every build.

use std::ffi::CStr;
use std::os::raw::{c_char, c_int};

use rand::{Rng, SeedableRng};
use stagformer_kernels::ffi::StagEmuLaunch;

extern "C" {
    fn stag_emu_last_error() -> *const c_char;
    fn stag_emu_selftest_block_sum(
        cfg: *const StagEmuLaunch,
        input: *const f32,
        block_sums: *mut f32,
        thread_coords: *mut u32,
        positive_counts: *mut u32,
    ) -> c_int;
    fn stag_emu_selftest_missing_sync(
        threads: u32,
        shuffle_seed: u32,
        use_barrier: c_int,
        out: *mut u32,
    ) -> c_int;
    fn stag_emu_selftest_broken(cfg: *const StagEmuLaunch, scenario: u32) -> c_int;
    fn stag_emu_selftest_warp_ops(
        cfg: *const StagEmuLaunch,
        input: *const i32,
        out: *mut i32,
    ) -> c_int;
    fn stag_emu_selftest_warp_match(
        cfg: *const StagEmuLaunch,
        input: *const i32,
        out: *mut i32,
    ) -> c_int;
    fn stag_emu_selftest_atomics(cfg: *const StagEmuLaunch, out: *mut u64) -> c_int;
    fn stag_emu_selftest_last_block(
        cfg: *const StagEmuLaunch,
        mode: u32,
        words: u32,
        launches: u32,
        out: *mut u64,
    ) -> c_int;
    fn stag_emu_selftest_dynamic_smem(cfg: *const StagEmuLaunch, out: *mut u32) -> c_int;
    fn stag_emu_selftest_convert(
        input: *const f32,
        n: u32,
        bf16_bits: *mut u16,
        half_bits: *mut u16,
        bf16_back: *mut f32,
        half_back: *mut f32,
        pair_mismatches: *mut u32,
    ) -> c_int;
    fn stag_emu_selftest_mma(
        f16: u32,
        a: *const u16,
        b: *const u16,
        c: *const f32,
        d: *mut f32,
        poison_lane: u32,
        swap_lanes: u32,
    ) -> c_int;
    fn stag_emu_selftest_ldmatrix(matrices: u32, trans: u32, m: *const u16, out: *mut u32)
        -> c_int;
    fn stag_emu_selftest_cp_async(src: *const u32, out: *mut u32) -> c_int;
    fn stag_emu_selftest_barrier_loop(
        cfg: *const StagEmuLaunch,
        iterations: u32,
        out: *mut u32,
    ) -> c_int;
}

const OK: c_int = 0;
const KERNEL_FAULT: c_int = 2;

fn launch(grid: [u32; 3], block: [u32; 3], smem: u32, seed: u32, workers: u32) -> StagEmuLaunch {
    StagEmuLaunch {
        grid,
        block,
        dynamic_smem_bytes: smem,
        shuffle_seed: seed,
        workers,
        reserved: 0,
    }
}

fn count(dims: [u32; 3]) -> usize {
    dims.iter().map(|&d| d as usize).product()
}

fn last_error() -> String {
    // SAFETY: the emulator returns a NUL-terminated string owned by this thread, valid until
    // its next launch (or null).
    unsafe {
        let p = stag_emu_last_error();
        if p.is_null() {
            String::new()
        } else {
            CStr::from_ptr(p).to_string_lossy().into_owned()
        }
    }
}

#[test]
fn block_reduction_is_right_for_every_geometry_and_schedule() {
    let geometries = [
        ([1, 1, 1], [33, 1, 1]),
        ([3, 1, 1], [100, 1, 1]),
        ([2, 2, 1], [8, 4, 2]),
        ([5, 1, 1], [1024, 1, 1]),
    ];
    for (grid, block) in geometries {
        for seed in [0, 1, 77] {
            let cfg = launch(grid, block, 0, seed, 2);
            let (blocks, threads) = (count(grid), count(block));
            let input: Vec<f32> = (0..blocks * threads)
                .map(|i| ((i * 7) % 11) as f32 - 5.0)
                .collect();
            let mut sums = vec![f32::NAN; blocks];
            let mut coords = vec![u32::MAX; blocks * threads];
            let mut positives = vec![u32::MAX; blocks];
            // SAFETY: every buffer has the length the entry point documents for this geometry.
            let rc = unsafe {
                stag_emu_selftest_block_sum(
                    &cfg,
                    input.as_ptr(),
                    sums.as_mut_ptr(),
                    coords.as_mut_ptr(),
                    positives.as_mut_ptr(),
                )
            };
            assert_eq!(rc, OK, "{}", last_error());
            for b in 0..blocks {
                let block_in = &input[b * threads..(b + 1) * threads];
                assert_eq!(
                    sums[b],
                    block_in.iter().sum::<f32>(),
                    "grid {grid:?} block {block:?} seed {seed}"
                );
                assert_eq!(
                    positives[b] as usize,
                    block_in.iter().filter(|&&v| v > 0.0).count()
                );
            }
            for (t, &c) in coords[..threads].iter().enumerate() {
                let (bx, by) = (block[0] as usize, block[1] as usize);
                let want = (t % bx) | ((t / bx) % by) << 10 | (t / (bx * by)) << 20;
                assert_eq!(c as usize, want, "threadIdx of thread {t}");
            }
        }
    }
}

#[test]
fn shuffled_order_exposes_a_missing_barrier() {
    let threads = 128;
    let correct: Vec<u32> = (0..threads).map(|t| (t + 1) % threads + 1).collect();
    let mut out = vec![0u32; threads as usize];
    for seed in [0, 1, 2, 3, 99] {
        // SAFETY: `out` holds `threads` values.
        let rc = unsafe { stag_emu_selftest_missing_sync(threads, seed, 1, out.as_mut_ptr()) };
        assert_eq!(rc, OK, "{}", last_error());
        assert_eq!(
            out, correct,
            "with the barrier every schedule is right (seed {seed})"
        );
    }
    let mut results = Vec::new();
    for seed in 1..=8 {
        // SAFETY: as above.
        let rc = unsafe { stag_emu_selftest_missing_sync(threads, seed, 0, out.as_mut_ptr()) };
        assert_eq!(rc, OK, "{}", last_error());
        results.push(out.clone());
    }
    assert!(
        results.iter().any(|r| *r != correct),
        "the race went unnoticed under every seed"
    );
    assert!(
        results.windows(2).any(|w| w[0] != w[1]),
        "different seeds gave identical racy results"
    );
}

#[test]
fn broken_barriers_and_collectives_are_errors_not_hangs() {
    // (scenario, threads, what the message must say)
    let scenarios: [(u32, u32, &str); 10] = [
        (0, 64, "reached by 32 of 64 threads; 32 exited"),
        (1, 64, "__syncthreads"),
        (2, 64, "different barriers"),
        (3, 64, "exited"),
        (4, 64, "__syncwarp"),
        (5, 64, "assertion"),
        (6, 32, "width"),
        (7, 32, "does not include the calling lane"),
        (8, 32, "__trap"),
        (9, 32, "__syncwarp"),
    ];
    for (scenario, threads, needle) in scenarios {
        for seed in [0, 5] {
            let cfg = launch([2, 1, 1], [threads, 1, 1], 0, seed, 2);
            // SAFETY: the config is valid and the entry point takes no buffers.
            let rc = unsafe { stag_emu_selftest_broken(&cfg, scenario) };
            let msg = last_error();
            assert_eq!(
                rc, KERNEL_FAULT,
                "scenario {scenario}: rc {rc}, message {msg:?}"
            );
            assert!(
                msg.contains("selftest_broken"),
                "scenario {scenario}: {msg}"
            );
            assert!(
                msg.contains(needle),
                "scenario {scenario}: {msg:?} lacks {needle:?}"
            );
        }
    }
}

/// `__match_any_sync` and `__reduce_add_sync` (`selftest.h` documents the columns): full and
/// partial warps, shuffled schedules, disjoint peer groups reducing at one call site.
#[test]
fn warp_match_and_reduce() {
    const COLUMNS: usize = 5;
    for (blocks, threads, seed) in [(2u32, 64u32, 0u32), (1, 64, 7), (1, 48, 0), (3, 37, 5)] {
        let cfg = launch([blocks, 1, 1], [threads, 1, 1], 0, seed, 2);
        let n = (blocks * threads) as usize;
        let input: Vec<i32> = (0..n as i32).map(|i| (i * 7919) % 1013 - 50).collect();
        let mut out = vec![i32::MIN; n * COLUMNS];
        // SAFETY: `out` holds COLUMNS values per thread, `input` one value per thread.
        let rc = unsafe { stag_emu_selftest_warp_match(&cfg, input.as_ptr(), out.as_mut_ptr()) };
        assert_eq!(rc, OK, "{}", last_error());
        let t_per = threads as usize;
        for g in 0..n {
            let (b, t) = (g / t_per, g % t_per);
            let (base, lane) = (t / 32 * 32, t % 32);
            let lanes = (t_per - base).min(32);
            let get = |j: usize| input[b * t_per + base + j];
            let v = input[g];
            let mask_of = |f: &dyn Fn(usize) -> bool| {
                (0..lanes).filter(|&j| f(j)).fold(0u32, |m, j| m | 1 << j)
            };
            let col = |c: usize| out[g * COLUMNS + c] as u32;
            let peers = mask_of(&|j| get(j) % 5 == v % 5);
            assert_eq!(col(0), peers, "match_any 32-bit, thread {g}");
            let sum = (0..lanes).fold(0u32, |s, j| s.wrapping_add(get(j) as u32));
            assert_eq!(col(1), sum, "reduce_add over the warp, thread {g}");
            let group_sum = (0..lanes)
                .filter(|&j| peers >> j & 1 == 1)
                .fold(0u32, |s, j| s.wrapping_add(get(j) as u32));
            assert_eq!(col(2), group_sum, "reduce_add over the peers, thread {g}");
            assert_eq!(
                col(3),
                mask_of(&|j| get(j) % 3 == v % 3),
                "match_any 64-bit, thread {g}"
            );
            let w = |j: usize| if get(j) % 2 == 0 { 7 } else { get(j) };
            let odd = if lane % 2 == 1 {
                mask_of(&|j| j % 2 == 1 && w(j) == w(lane))
            } else {
                0
            };
            assert_eq!(col(4), odd, "match_any on the odd lanes, thread {g}");
        }
    }
}

#[test]
fn warp_shuffles_and_votes() {
    for (threads, seed) in [(64u32, 0u32), (64, 3), (48, 0)] {
        let cfg = launch([1, 1, 1], [threads, 1, 1], 0, seed, 1);
        let n = threads as usize;
        let input: Vec<i32> = (0..n as i32).map(|i| i * 3 + 1).collect();
        let mut out = vec![i32::MIN; n * 16];
        // SAFETY: `out` holds 16 columns per thread, `input` one value per thread.
        let rc = unsafe { stag_emu_selftest_warp_ops(&cfg, input.as_ptr(), out.as_mut_ptr()) };
        assert_eq!(rc, OK, "{}", last_error());
        for t in 0..n {
            let (warp, lane) = (t / 32, t % 32);
            let get = |j: usize| {
                let g = warp * 32 + j;
                if g < n {
                    input[g]
                } else {
                    -1
                }
            };
            let col = |c: usize| out[t * 16 + c];
            assert_eq!(col(0), get(31 - lane), "shfl reverse, thread {t}");
            let down = if lane + 3 <= 31 {
                get(lane + 3)
            } else {
                input[t]
            };
            assert_eq!(col(1), down, "shfl_down 3, thread {t}");
            assert_eq!(col(3), get((lane & !7) + 5), "shfl width 8, thread {t}");
            let warp_full = (warp + 1) * 32 <= n;
            let sum: i32 = if warp_full { (0..32).map(get).sum() } else { 0 };
            assert_eq!(col(10), sum, "butterfly sum, thread {t}");
            let ballot = (0..32)
                .filter(|&j| warp * 32 + j < n && get(j) & 1 == 1)
                .fold(0u32, |m, j| m | 1 << j);
            assert_eq!(col(7) as u32, ballot, "ballot, thread {t}");
        }
    }
}

#[test]
fn atomics_across_blocks_on_several_host_threads() {
    let cfg = launch([16, 1, 1], [96, 1, 1], 0, 0, 2);
    let n = 16 * 96u64;
    let mut out = [0u64; 8];
    // SAFETY: `out` holds the 8 documented values.
    let rc = unsafe { stag_emu_selftest_atomics(&cfg, out.as_mut_ptr()) };
    assert_eq!(rc, OK, "{}", last_error());
    assert_eq!(&out[..7], &[n, n, n - 1, 0, n * (n - 1) / 2, n, n]);
    assert!(out[7] < n);
}

/// The last-block-finalises hand-off (cuda/include/stag_atomic.cuh): many blocks on several
/// host threads in shuffled thread orders, counters reused across launches. On an x86 host
/// (TSO) hardware reordering cannot be exposed; what this checks is the arithmetic of the
/// ordered atomics (old values, exactly one finaliser, reset) and that the finaliser sees every
/// partial, which a wrong order in the emulator's compiled code would break.
#[test]
fn last_block_finalises_across_blocks_and_launches() {
    for mode in [0, 1] {
        for workers in [1, 2, 4] {
            for seed in [0, 7] {
                let (splits, groups, launches) = (53u32, 6u32, 3u32);
                let cfg = launch([splits, groups, 1], [64, 1, 1], 0, seed, workers);
                let mut out = [u64::MAX; 5];
                // SAFETY: `out` holds the 5 documented values.
                let rc = unsafe {
                    stag_emu_selftest_last_block(&cfg, mode, 257, launches, out.as_mut_ptr())
                };
                assert_eq!(rc, OK, "{}", last_error());
                assert_eq!(
                    out,
                    [u64::from(groups * launches), 0, 0, 0, 0],
                    "mode {mode} workers {workers} seed {seed}"
                );
            }
        }
    }
}

#[test]
fn dynamic_shared_memory_is_poisoned_aligned_and_private() {
    let cfg = launch([6, 1, 1], [64, 1, 1], 4096, 0, 2);
    let mut out = vec![u32::MAX; 6 * 4];
    // SAFETY: `out` holds 4 values per block.
    let rc = unsafe { stag_emu_selftest_dynamic_smem(&cfg, out.as_mut_ptr()) };
    assert_eq!(rc, OK, "{}", last_error());
    for b in out.chunks(4) {
        assert_eq!(b, &[0, 1, 1, 0]);
    }
}

#[test]
fn half_and_bf16_conversions_match_the_half_crate() {
    let mut input = vec![
        0.0f32,
        -0.0,
        1.0,
        -1.5,
        f32::INFINITY,
        f32::NEG_INFINITY,
        f32::NAN,
        f32::MAX,
        f32::MIN_POSITIVE,
        1e-40,
        -3e-39,
        65504.0,
        65520.0,
        1e5,
        6e-8,
        3e-8,
        1.0 + 1.0 / 256.0,
        1.0 + 3.0 / 256.0,
        1.0 + 1.0 / 2048.0,
        2.5e-5,
    ];
    let mut x = 0x1234_5678u32;
    for _ in 0..2000 {
        x ^= x << 13;
        x ^= x >> 17;
        x ^= x << 5;
        input.push(f32::from_bits(x));
    }
    let n = input.len();
    let (mut bf, mut hf) = (vec![0u16; n], vec![0u16; n]);
    let (mut bf_back, mut hf_back) = (vec![0f32; n], vec![0f32; n]);
    let mut mismatches = u32::MAX;
    // SAFETY: every output holds `n` values, `mismatches` one.
    let rc = unsafe {
        stag_emu_selftest_convert(
            input.as_ptr(),
            n as u32,
            bf.as_mut_ptr(),
            hf.as_mut_ptr(),
            bf_back.as_mut_ptr(),
            hf_back.as_mut_ptr(),
            &mut mismatches,
        )
    };
    assert_eq!(rc, OK, "{}", last_error());
    assert_eq!(mismatches, 0);
    for i in 0..n {
        let v = input[i];
        assert_eq!(
            bf[i],
            half::bf16::from_f32(v).to_bits(),
            "bf16 of {v:e} ({:#x})",
            v.to_bits()
        );
        assert_eq!(
            hf[i],
            half::f16::from_f32(v).to_bits(),
            "f16 of {v:e} ({:#x})",
            v.to_bits()
        );
        let (b, h) = (
            half::bf16::from_bits(bf[i]).to_f32(),
            half::f16::from_bits(hf[i]).to_f32(),
        );
        assert!(b.to_bits() == bf_back[i].to_bits() || (b.is_nan() && bf_back[i].is_nan()));
        assert!(h.to_bits() == hf_back[i].to_bits() || (h.is_nan() && hf_back[i].is_nan()));
    }
}

#[test]
fn barrier_heavy_kernel_does_not_depend_on_schedule_or_workers() {
    let run = |seed, workers| {
        let cfg = launch([4, 1, 1], [256, 1, 1], 0, seed, workers);
        let mut out = vec![0u32; 4 * 256];
        // SAFETY: `out` holds one value per thread of the grid.
        let rc = unsafe { stag_emu_selftest_barrier_loop(&cfg, 8, out.as_mut_ptr()) };
        assert_eq!(rc, OK, "{}", last_error());
        out
    };
    let base = run(0, 1);
    assert_eq!(run(9, 2), base);
    assert_eq!(run(12345, 1), base);
}

// ---- warp-level matrix primitives (cuda/include/stag_mma.cuh) ----

/// Random bf16 or f16 bit patterns of small values (exactly representable products and sums
/// stay far from overflow) and their f32 values.
fn random_halves(rng: &mut impl Rng, n: usize, f16: bool) -> (Vec<u16>, Vec<f32>) {
    (0..n)
        .map(|_| {
            let x: f32 = rng.random_range(-2.0..2.0);
            if f16 {
                let h = half::f16::from_f32(x);
                (h.to_bits(), h.to_f32())
            } else {
                let h = half::bf16::from_f32(x);
                (h.to_bits(), h.to_f32())
            }
        })
        .unzip()
}

/// D = A·B + C in f64 for A 16×16, B 16×8 (b[k * 8 + n]), C 16×8.
fn plain_product(a: &[f32], b: &[f32], c: &[f32]) -> Vec<f64> {
    let mut d = vec![0.0f64; 128];
    for r in 0..16 {
        for n in 0..8 {
            let mut acc = c[r * 8 + n] as f64;
            for k in 0..16 {
                acc += a[r * 16 + k] as f64 * b[k * 8 + n] as f64;
            }
            d[r * 8 + n] = acc;
        }
    }
    d
}

fn run_mma(f16: bool, a: &[u16], b: &[u16], c: &[f32], poison: u32, swap: u32) -> Vec<f32> {
    let mut d = vec![f32::NAN; 256];
    // SAFETY: a is 256, b 128 and c 128 elements; d holds 2 × 128 floats (selftest.h).
    let rc = unsafe {
        stag_emu_selftest_mma(
            f16 as u32,
            a.as_ptr(),
            b.as_ptr(),
            c.as_ptr(),
            d.as_mut_ptr(),
            poison,
            swap,
        )
    };
    assert_eq!(rc, OK, "{}", last_error());
    d
}

#[test]
fn mma_m16n8k16_matches_a_plain_matrix_product() {
    let mut rng = rand::rngs::StdRng::seed_from_u64(7);
    for f16 in [false, true] {
        for _ in 0..4 {
            let (a, af) = random_halves(&mut rng, 256, f16);
            let (b, bf) = random_halves(&mut rng, 128, f16);
            let c: Vec<f32> = (0..128).map(|_| rng.random_range(-1.0..1.0)).collect();
            let want = plain_product(&af, &bf, &c);
            let d = run_mma(f16, &a, &b, &c, 32, 0);
            for (i, &got) in d.iter().enumerate() {
                let w = want[i % 128];
                assert!(
                    (got as f64 - w).abs() <= 1e-5 * (1.0 + w.abs()),
                    "f16={f16} element {i}: {got} vs {w}"
                );
            }
        }
    }
}

#[test]
fn mma_poisoned_lane_reaches_exactly_its_rows_and_column() {
    let mut rng = rand::rngs::StdRng::seed_from_u64(8);
    let (a, _) = random_halves(&mut rng, 256, false);
    let (b, _) = random_halves(&mut rng, 128, false);
    let c = vec![0.5f32; 128];
    for lane in 0..32u32 {
        let d = run_mma(false, &a, &b, &c, lane, 0);
        let g = (lane / 4) as usize;
        for (i, v) in d.iter().enumerate() {
            let (r, n) = ((i % 128) / 8, i % 8);
            let expect_nan = r == g || r == g + 8 || n == g;
            assert_eq!(
                v.is_nan(),
                expect_nan,
                "poisoned lane {lane}, D({r},{n}) = {v}"
            );
        }
    }
}

#[test]
fn mma_with_two_lanes_swapped_gives_a_wrong_product() {
    let mut rng = rand::rngs::StdRng::seed_from_u64(9);
    let (a, af) = random_halves(&mut rng, 256, false);
    let (b, bf) = random_halves(&mut rng, 128, false);
    let c = vec![0.0f32; 128];
    let want = plain_product(&af, &bf, &c);
    // Lanes 1 and 6: different rows and columns of A.
    let d = run_mma(false, &a, &b, &c, 32, 1 | 6 << 8);
    let wrong = (0..128)
        .filter(|&i| (d[i] as f64 - want[i]).abs() > 1e-5 * (1.0 + want[i].abs()))
        .count();
    assert!(wrong > 0, "a permuted lane mapping went unnoticed");
    // Unswapped lanes 0 and 1 would match again: the swap is what breaks it.
    let d = run_mma(false, &a, &b, &c, 32, 0);
    assert!((0..128).all(|i| (d[i] as f64 - want[i]).abs() <= 1e-5 * (1.0 + want[i].abs())));
}

#[test]
fn ldmatrix_delivers_the_documented_words_to_every_lane() {
    let m: Vec<u16> = (0..256u16).map(|i| i.wrapping_mul(37) ^ 0x1234).collect();
    for matrices in [1u32, 2, 4] {
        for trans in [0u32, 1] {
            let mut out = vec![0xDEAD_BEEFu32; 128];
            // SAFETY: m holds 4 × 64 values, out 32 × 4 words (selftest.h).
            let rc = unsafe {
                stag_emu_selftest_ldmatrix(matrices, trans, m.as_ptr(), out.as_mut_ptr())
            };
            assert_eq!(rc, OK, "{}", last_error());
            for lane in 0..32usize {
                for j in 0..4usize {
                    let got = out[lane * 4 + j];
                    if j >= matrices as usize {
                        assert_eq!(got, 0);
                        continue;
                    }
                    let at = |r: usize, c: usize| m[(j * 8 + r) * 8 + c] as u32;
                    let (e0, e1) = if trans == 0 {
                        (
                            at(lane / 4, 2 * (lane % 4)),
                            at(lane / 4, 2 * (lane % 4) + 1),
                        )
                    } else {
                        (
                            at(2 * (lane % 4), lane / 4),
                            at(2 * (lane % 4) + 1, lane / 4),
                        )
                    };
                    assert_eq!(
                        got,
                        e0 | e1 << 16,
                        "x{matrices} trans={trans} lane {lane} reg {j}"
                    );
                }
            }
        }
    }
}

#[test]
fn cp_async_destinations_hold_poison_until_their_group_is_waited_for() {
    let src: Vec<u32> = (0..64u32).map(|i| 0x0100_0000 + i).collect();
    let mut out = vec![0u32; 128];
    // SAFETY: src holds 64 words and out 128 (selftest.h).
    let rc = unsafe { stag_emu_selftest_cp_async(src.as_ptr(), out.as_mut_ptr()) };
    assert_eq!(rc, OK, "{}", last_error());
    for t in 0..8usize {
        for w in 0..4usize {
            let at = |s: usize| out[(s * 8 + t) * 4 + w];
            assert_eq!(at(0), u32::MAX, "group 1 read before its wait");
            assert_eq!(at(1), src[4 * t + w]);
            assert_eq!(at(2), u32::MAX, "group 2 read before its wait");
            let want = if t == 7 { 0 } else { src[32 + 4 * t + w] };
            assert_eq!(at(3), want);
        }
    }
}
