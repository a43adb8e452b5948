//! The device API on the emulated backend: buffers, views, streams, events and `linear`.
//! One test covers `Device::cuda`, which must fail cleanly on machines without a GPU.

use std::sync::mpsc;
use std::time::Duration;

use half::{bf16, f16};
use stagformer_kernels::device::{
    AsDeviceView, Device, DeviceBuffer, DeviceKind, EmuOptions, Stream,
};
use stagformer_kernels::dtype::{DType, DeviceElem};
use stagformer_kernels::error::DeviceError;
use stagformer_kernels::ops::gemm::{
    linear, linear_strided_batched, linear_with, BatchStrides, GemmShape, LinearOptions,
};

type TestResult = Result<(), DeviceError>;

fn setup() -> (Device, Stream) {
    let dev = Device::emulated();
    let stream = dev.new_stream().expect("emulated stream");
    (dev, stream)
}

/// A small deterministic generator of values in [-1, 1).
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> f64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        (self.0 >> 11) as f64 / (1u64 << 53) as f64 * 2.0 - 1.0
    }
}

trait TestFloat: DeviceElem {
    /// Relative rounding error of one conversion from f32 (half an ulp, plus margin).
    const EPS: f64;
    fn from_f64(v: f64) -> Self;
    fn to_f64(self) -> f64;
}

impl TestFloat for f32 {
    const EPS: f64 = 1.0 / (1u64 << 23) as f64;
    fn from_f64(v: f64) -> Self {
        v as f32
    }
    fn to_f64(self) -> f64 {
        self as f64
    }
}

impl TestFloat for bf16 {
    const EPS: f64 = 1.0 / 256.0;
    fn from_f64(v: f64) -> Self {
        bf16::from_f64(v)
    }
    fn to_f64(self) -> f64 {
        bf16::to_f64(self)
    }
}

impl TestFloat for f16 {
    const EPS: f64 = 1.0 / 2048.0;
    fn from_f64(v: f64) -> Self {
        f16::from_f64(v)
    }
    fn to_f64(self) -> f64 {
        f16::to_f64(self)
    }
}

fn random<T: TestFloat>(rng: &mut Rng, len: usize) -> Vec<T> {
    (0..len).map(|_| T::from_f64(rng.next())).collect()
}

/// Checks `got` (row stride `ldy`) against `alpha * x·wᵀ + beta * y0` computed in f64 from the
/// exact input values, within f32 accumulation error and one rounding to the output type.
#[allow(clippy::too_many_arguments)]
fn check_product<X: TestFloat, W: TestFloat, Y: TestFloat>(
    what: &str,
    shape: GemmShape,
    x: &[X],
    ldx: usize,
    w: &[W],
    ldw: usize,
    got: &[Y],
    ldy: usize,
    y0: Option<&[Y]>,
    alpha: f64,
    beta: f64,
) {
    let GemmShape { m, n, k } = shape;
    for i in 0..m {
        for j in 0..n {
            let mut acc = 0.0f64;
            let mut mag = 0.0f64;
            for l in 0..k {
                let p = x[i * ldx + l].to_f64() * w[j * ldw + l].to_f64();
                acc += p;
                mag += p.abs();
            }
            let mut want = alpha * acc;
            let mut scale = alpha.abs() * mag;
            if let Some(y0) = y0 {
                let prev = y0[i * ldy + j].to_f64();
                want += beta * prev;
                scale += (beta * prev).abs();
            }
            let v = got[i * ldy + j].to_f64();
            let tol = scale * (k as f64 + 2.0) * f32::EPSILON as f64 + want.abs() * Y::EPS + 1e-30;
            assert!(
                (v - want).abs() <= tol,
                "{what}: y[{i}, {j}] = {v}, expected {want} (tolerance {tol})"
            );
        }
    }
}

fn check_linear<X: TestFloat, W: TestFloat, Y: TestFloat>(
    dev: &Device,
    stream: &Stream,
    shape: GemmShape,
    seed: u64,
) -> TestResult {
    let GemmShape { m, n, k } = shape;
    let mut rng = Rng(seed | 1);
    let xh: Vec<X> = random(&mut rng, m * k);
    let wh: Vec<W> = random(&mut rng, n * k);
    let x = DeviceBuffer::from_host(stream, &xh)?;
    let w = DeviceBuffer::from_host(stream, &wh)?;
    // Fresh and unwritten (NaN-poisoned under emulation): beta = 0 must not read it.
    let mut y = DeviceBuffer::<Y>::alloc(dev, m * n)?;
    linear(stream, &x, &w, &mut y, shape)?;
    let got = y.to_host(stream)?;
    let what = format!(
        "linear ({}, {}, {}) {shape:?}",
        X::DTYPE,
        W::DTYPE,
        Y::DTYPE
    );
    check_product(&what, shape, &xh, k, &wh, k, &got, n, None, 1.0, 0.0);
    Ok(())
}

const SHAPES: &[(usize, usize, usize)] = &[
    (1, 1, 1),
    (1, 5, 7),
    (1, 64, 13),
    (1, 1, 100),
    (3, 1, 9),
    (4, 6, 17),
    (8, 33, 70),
    (16, 128, 96),
    (33, 65, 129),
    (64, 200, 256),
];

fn check_linear_all_dtypes(dev: &Device, stream: &Stream) -> TestResult {
    for (i, &(m, n, k)) in SHAPES.iter().enumerate() {
        let s = GemmShape::new(m, n, k);
        let seed = 1000 + i as u64;
        check_linear::<f32, f32, f32>(dev, stream, s, seed)?;
        check_linear::<bf16, bf16, bf16>(dev, stream, s, seed)?;
        check_linear::<bf16, bf16, f32>(dev, stream, s, seed)?;
        check_linear::<f16, f16, f16>(dev, stream, s, seed)?;
    }
    Ok(())
}

fn round_trip<T: DeviceElem>(stream: &Stream, data: &[T]) -> TestResult {
    let b = DeviceBuffer::from_host(stream, data)?;
    assert_eq!(b.len(), data.len());
    assert_eq!(b.dtype(), T::DTYPE);
    assert_eq!(b.to_host(stream)?, data, "{} round trip", T::DTYPE);
    let mut back = vec![T::default(); data.len()];
    b.copy_to_host(stream, &mut back)?;
    assert_eq!(back, data);
    Ok(())
}

#[test]
fn host_device_round_trip_every_dtype() -> TestResult {
    let (_dev, s) = setup();
    round_trip(&s, &[1.5f32, -2.25, f32::MAX, f32::MIN_POSITIVE, 0.0])?;
    round_trip(
        &s,
        &[bf16::from_f32(3.5), bf16::MIN, bf16::ONE, bf16::NEG_ZERO],
    )?;
    round_trip(&s, &[f16::from_f32(-0.125), f16::MAX, f16::EPSILON])?;
    round_trip(&s, &[i32::MIN, -1, 0, 7, i32::MAX])?;
    round_trip(&s, &[0u32, 1, u32::MAX, 0xDEAD_BEEF])?;
    round_trip::<f32>(&s, &[])?;
    let big: Vec<u32> = (0..1_000_003).collect();
    round_trip(&s, &big)?;
    Ok(())
}

#[test]
fn fresh_allocations_are_poisoned_and_zeroed_ones_are_zero() -> TestResult {
    let (dev, s) = setup();
    assert!(dev.alloc::<f32>(5)?.to_host(&s)?.iter().all(|v| v.is_nan()));
    assert!(dev
        .alloc::<bf16>(5)?
        .to_host(&s)?
        .iter()
        .all(|v| v.is_nan()));
    assert!(dev.alloc::<f16>(5)?.to_host(&s)?.iter().all(|v| v.is_nan()));
    assert_eq!(
        dev.alloc::<i32>(3)?.to_host(&s)?,
        vec![0xDEAD_BEEF_u32 as i32; 3]
    );
    assert_eq!(dev.alloc::<u32>(3)?.to_host(&s)?, vec![0xDEAD_BEEF; 3]);
    assert_eq!(
        DeviceBuffer::<f32>::alloc_zeroed(&s, 4)?.to_host(&s)?,
        vec![0.0; 4]
    );
    // Allocations are 256-byte aligned, like CUDA's.
    for len in [1, 3, 1000] {
        assert_eq!(dev.alloc::<bf16>(len)?.addr() % 256, 0);
    }
    Ok(())
}

#[test]
fn views_copy_the_right_ranges() -> TestResult {
    let (dev, s) = setup();
    let data: Vec<i32> = (0..10).collect();
    let mut b = DeviceBuffer::from_host(&s, &data)?;
    assert_eq!(b.slice(2..5)?.to_host(&s)?, vec![2, 3, 4]);
    assert_eq!(b.slice(..)?.slice(8..)?.to_host(&s)?, vec![8, 9]);
    assert_eq!(b.slice(3..3)?.to_host(&s)?, Vec::<i32>::new());
    b.slice_mut(4..6)?.copy_from_host(&s, &[40, 50])?;
    b.slice_mut(8..)?.fill_zero(&s)?;
    assert_eq!(b.to_host(&s)?, vec![0, 1, 2, 3, 40, 50, 6, 7, 0, 0]);

    // Device-to-device copies between views and buffers.
    let mut c = dev.alloc::<i32>(4)?;
    c.copy_from(&s, &b.slice(1..5)?)?;
    assert_eq!(c.to_host(&s)?, vec![1, 2, 3, 40]);
    let (mut lo, hi) = b.view_mut().split_at_mut(5)?;
    lo.slice_mut(0..2)?.copy_from(&s, &hi.slice(0..2)?)?;
    assert_eq!(b.to_host(&s)?, vec![50, 6, 2, 3, 40, 50, 6, 7, 0, 0]);
    let d = b.try_clone(&s)?;
    assert_eq!(d.to_host(&s)?, b.to_host(&s)?);
    assert_ne!(d.addr(), b.addr());

    // Addresses of views, for kernel params.
    let v = b.slice(3..)?;
    assert_eq!(v.addr(), b.addr() + 12);
    assert_eq!(v.as_ptr() as u64, v.addr());
    assert_eq!(v.view().len(), 7);
    Ok(())
}

#[test]
fn out_of_bounds_and_length_errors() -> TestResult {
    let (dev, s) = setup();
    let mut b = dev.alloc::<f32>(10)?;
    let e = b.slice(5..11).unwrap_err();
    assert!(
        matches!(
            e,
            DeviceError::OutOfBounds {
                start: 5,
                end: 11,
                len: 10,
                ..
            }
        ),
        "{e}"
    );
    assert!(matches!(
        b.slice_mut(11..).unwrap_err(),
        DeviceError::OutOfBounds { .. }
    ));
    #[allow(clippy::reversed_empty_ranges)]
    let reversed = b.slice(4..2);
    assert!(matches!(reversed, Err(DeviceError::OutOfBounds { .. })));
    assert!(b.slice(2..8)?.slice(0..7).is_err());
    assert!(b.view_mut().split_at_mut(11).is_err());
    assert!(b.slice(..)?.split_at(10).is_ok());

    let e = b.copy_from_host(&s, &[1.0; 9]).unwrap_err();
    assert!(
        matches!(
            e,
            DeviceError::LengthMismatch {
                arg: "src",
                expected: 10,
                found: 9
            }
        ),
        "{e}"
    );
    let mut small = [0.0f32; 3];
    let e = b.copy_to_host(&s, &mut small).unwrap_err();
    assert!(
        matches!(e, DeviceError::LengthMismatch { arg: "dst", .. }),
        "{e}"
    );
    let c = dev.alloc::<f32>(4)?;
    assert!(matches!(
        b.copy_from(&s, &c).unwrap_err(),
        DeviceError::LengthMismatch { arg: "src", .. }
    ));
    // Nothing failed on the stream itself.
    s.synchronize()?;
    Ok(())
}

#[test]
fn buffers_of_another_device_are_rejected() -> TestResult {
    let (_dev, s) = setup();
    let other = Device::emulated();
    let mut b = DeviceBuffer::<u32>::alloc(&other, 4)?;
    let e = b.copy_from_host(&s, &[1, 2, 3, 4]).unwrap_err();
    assert!(
        matches!(e, DeviceError::DeviceMismatch { arg: "dst", .. }),
        "{e}"
    );
    assert!(b.to_host(&s).is_err());
    let ev = other.new_stream()?.record_event()?;
    assert!(matches!(
        s.wait_event(&ev).unwrap_err(),
        DeviceError::DeviceMismatch { arg: "event", .. }
    ));
    Ok(())
}

/// Queues a host function on `stream` that blocks its worker until the returned sender is
/// used (or dropped).
fn gate(stream: &Stream) -> Result<mpsc::Sender<()>, DeviceError> {
    let (open, wait) = mpsc::channel::<()>();
    stream.host_fn(move || {
        let _ = wait.recv();
    })?;
    Ok(open)
}

#[test]
fn wait_event_orders_streams() -> TestResult {
    let (dev, a) = setup();
    let b = dev.new_stream()?;
    let mut x = DeviceBuffer::<f32>::alloc_zeroed(&a, 4)?;
    a.synchronize()?;

    // Stream A: blocked, then writes x. Stream B: waits for A's event, then copies x to y.
    let open = gate(&a)?;
    x.copy_from_host(&a, &[1.0, 2.0, 3.0, 4.0])?;
    let written = a.record_event()?;
    assert!(!written.is_complete()?);
    let mut y = dev.alloc::<f32>(4)?;
    b.wait_event(&written)?;
    y.copy_from(&b, &x)?;
    let copied = b.record_event()?;
    std::thread::sleep(Duration::from_millis(50));
    assert!(
        !copied.is_complete()?,
        "B ran ahead of the event it waits for"
    );
    open.send(()).expect("gate");
    assert_eq!(y.to_host(&b)?, vec![1.0, 2.0, 3.0, 4.0]);
    written.synchronize()?;
    copied.synchronize()?;
    assert!(written.is_complete()? && copied.is_complete()?);
    Ok(())
}

#[test]
fn without_wait_event_the_other_stream_sees_unfinished_work() -> TestResult {
    let (dev, a) = setup();
    let b = dev.new_stream()?;
    let mut x = DeviceBuffer::<f32>::alloc_zeroed(&a, 4)?;
    a.synchronize()?;

    let open = gate(&a)?;
    x.copy_from_host(&a, &[1.0, 2.0, 3.0, 4.0])?;
    let _written = a.record_event()?;
    let mut y = dev.alloc::<f32>(4)?;
    // The missing `b.wait_event(&written)` is the bug this test demonstrates.
    y.copy_from(&b, &x)?;
    // B finishes while A is still held at the gate: deterministic.
    b.synchronize()?;
    open.send(()).expect("gate");
    a.synchronize()?;
    assert_eq!(y.to_host(&b)?, vec![0.0; 4], "B copied x before A wrote it");
    assert_eq!(x.to_host(&a)?, vec![1.0, 2.0, 3.0, 4.0]);
    Ok(())
}

#[test]
fn cross_stream_gemm_dependency() -> TestResult {
    // A slow producer (a GEMM behind a gate) on stream A, a consumer on stream B.
    let (dev, a) = setup();
    let b = dev.new_stream()?;
    let (m, n, k) = (2, 3, 4);
    let xh: Vec<f32> = (0..m * k).map(|v| v as f32).collect();
    let wh: Vec<f32> = (0..n * k).map(|v| (v % 3) as f32 - 1.0).collect();
    let x = DeviceBuffer::from_host(&a, &xh)?;
    let w = DeviceBuffer::from_host(&a, &wh)?;

    for with_wait in [true, false] {
        let mut h = dev.alloc::<f32>(m * n)?;
        let mut out = dev.alloc::<f32>(m * n)?;
        let open = gate(&a)?;
        linear(&a, &x, &w, &mut h, GemmShape::new(m, n, k))?;
        let done = a.record_event()?;
        if with_wait {
            b.wait_event(&done)?;
        }
        out.copy_from(&b, &h)?;
        if !with_wait {
            b.synchronize()?;
        }
        open.send(()).expect("gate");
        let got = out.to_host(&b)?;
        a.synchronize()?;
        if with_wait {
            let hv = h.to_host(&a)?;
            assert_eq!(got, hv);
            check_product(
                "gemm",
                GemmShape::new(m, n, k),
                &xh,
                k,
                &wh,
                k,
                &got,
                n,
                None,
                1.0,
                0.0,
            );
        } else {
            // B copied h while it was still the poison of a fresh allocation.
            assert!(got.iter().all(|v| v.is_nan()), "{got:?}");
        }
    }
    Ok(())
}

#[test]
fn dropping_buffers_with_queued_work_is_safe() -> TestResult {
    let (dev, s) = setup();
    let open = gate(&s)?;
    let src = DeviceBuffer::from_host(&s, &vec![7u32; 1 << 20])?;
    let mut dst = dev.alloc::<u32>(1 << 20)?;
    dst.copy_from(&s, &src)?;
    drop(src);
    let keep_out = dst.try_clone(&s)?;
    drop(dst);
    open.send(()).expect("gate");
    assert!(keep_out.to_host(&s)?.iter().all(|&v| v == 7));
    Ok(())
}

#[test]
fn stream_errors_are_sticky() -> TestResult {
    let (dev, s) = setup();
    let b = DeviceBuffer::from_host(&s, &[1.0f32, 2.0])?;
    s.host_fn(|| panic!("host function failed on purpose"))?;
    let e = b.to_host(&s).unwrap_err();
    assert!(e.to_string().contains("on purpose"), "{e}");
    assert!(s.synchronize().is_err());
    assert!(dev.synchronize().is_err());
    // Other streams are unaffected.
    let t = dev.new_stream()?;
    assert_eq!(b.to_host(&t)?, vec![1.0, 2.0]);
    Ok(())
}

#[test]
fn linear_matches_naive_f64_for_all_dtype_combinations() -> TestResult {
    let (dev, s) = setup();
    check_linear_all_dtypes(&dev, &s)
}

#[test]
fn linear_with_more_workers_and_shuffle_options() -> TestResult {
    let dev = Device::emulated_with(EmuOptions {
        shuffle_seed: 99,
        workers: 1,
    });
    let s = dev.new_stream()?;
    check_linear::<bf16, bf16, f32>(&dev, &s, GemmShape::new(5, 70, 33), 5)
}

#[test]
fn linear_on_views_uses_their_offsets() -> TestResult {
    let (_dev, s) = setup();
    let (n, k) = (6, 11);
    let mut rng = Rng(77);
    let all: Vec<bf16> = random(&mut rng, 3 * k);
    let wh: Vec<bf16> = random(&mut rng, n * k);
    let xs = DeviceBuffer::from_host(&s, &all)?;
    let w = DeviceBuffer::from_host(&s, &wh)?;
    let mut ys = DeviceBuffer::<bf16>::alloc_zeroed(&s, 3 * n)?;
    // Decode step for the middle row only (M = 1).
    linear(
        &s,
        &xs.slice(k..2 * k)?,
        &w,
        &mut ys.slice_mut(n..2 * n)?,
        GemmShape::new(1, n, k),
    )?;
    let got = ys.to_host(&s)?;
    assert!(got[..n]
        .iter()
        .chain(&got[2 * n..])
        .all(|v| v.to_f32() == 0.0));
    check_product(
        "view",
        GemmShape::new(1, n, k),
        &all[k..2 * k],
        k,
        &wh,
        k,
        &got[n..2 * n],
        n,
        None,
        1.0,
        0.0,
    );
    Ok(())
}

#[test]
fn linear_alpha_beta_and_row_strides() -> TestResult {
    let (dev, s) = setup();
    let (m, n, k) = (3, 5, 9);
    let (ldx, ldw, ldy) = (12, 10, 7);
    let mut rng = Rng(4242);
    let xh: Vec<bf16> = random(&mut rng, (m - 1) * ldx + k);
    let wh: Vec<bf16> = random(&mut rng, n * ldw);
    let y0: Vec<f32> = random(&mut rng, m * ldy);
    let x = DeviceBuffer::from_host(&s, &xh)?;
    let w = DeviceBuffer::from_host(&s, &wh)?;
    let mut y = DeviceBuffer::from_host(&s, &y0)?;
    let opts = LinearOptions {
        alpha: 0.5,
        beta: -2.0,
        x_row_stride: Some(ldx),
        w_row_stride: Some(ldw),
        y_row_stride: Some(ldy),
    };
    linear_with(&s, &x, &w, &mut y, GemmShape::new(m, n, k), &opts)?;
    let got = y.to_host(&s)?;
    check_product(
        "alpha/beta",
        GemmShape::new(m, n, k),
        &xh,
        ldx,
        &wh,
        ldw,
        &got,
        ldy,
        Some(&y0),
        0.5,
        -2.0,
    );
    // Padding between rows of y is untouched.
    for i in 0..m {
        assert_eq!(
            &got[i * ldy + n..(i + 1) * ldy],
            &y0[i * ldy + n..(i + 1) * ldy]
        );
    }

    // beta = 0 ignores NaN in y; k = 0 gives beta * y.
    let mut poisoned = dev.alloc::<f32>(m * n)?;
    let xd = DeviceBuffer::from_host(&s, &xh[..m * k])?;
    let wd = DeviceBuffer::from_host(&s, &wh[..n * k])?;
    linear(&s, &xd, &wd, &mut poisoned, GemmShape::new(m, n, k))?;
    assert!(poisoned.to_host(&s)?.iter().all(|v| v.is_finite()));
    let mut yk = DeviceBuffer::from_host(&s, &[1.0f32, -2.0, 3.0, 4.0])?;
    let empty = dev.alloc::<f32>(0)?;
    let opts = LinearOptions {
        beta: 3.0,
        ..LinearOptions::default()
    };
    linear_with(&s, &empty, &empty, &mut yk, GemmShape::new(2, 2, 0), &opts)?;
    assert_eq!(yk.to_host(&s)?, vec![3.0, -6.0, 9.0, 12.0]);
    Ok(())
}

#[test]
fn linear_strided_batched_matches_per_batch_products() -> TestResult {
    let (_dev, s) = setup();
    let (m, n, k, count) = (2, 7, 13, 4);
    let y_stride = m * n + 3;
    let mut rng = Rng(31337);
    for shared_w in [false, true] {
        let w_stride = if shared_w { 0 } else { n * k };
        let xh: Vec<f16> = random(&mut rng, count * m * k);
        let wh: Vec<f16> = random(&mut rng, if shared_w { n * k } else { count * n * k });
        let fill = f16::from_f32(123.0);
        let y0 = vec![fill; (count - 1) * y_stride + m * n];
        let x = DeviceBuffer::from_host(&s, &xh)?;
        let w = DeviceBuffer::from_host(&s, &wh)?;
        let mut y = DeviceBuffer::from_host(&s, &y0)?;
        let batch = BatchStrides {
            count,
            x: m * k,
            w: w_stride,
            y: y_stride,
        };
        let shape = GemmShape::new(m, n, k);
        linear_strided_batched(&s, &x, &w, &mut y, shape, batch, &LinearOptions::default())?;
        let got = y.to_host(&s)?;
        for b in 0..count {
            check_product(
                &format!("batch {b} (shared w: {shared_w})"),
                shape,
                &xh[b * m * k..],
                k,
                &wh[b * w_stride..],
                k,
                &got[b * y_stride..],
                n,
                None,
                1.0,
                0.0,
            );
            if b + 1 < count {
                assert!(got[b * y_stride + m * n..(b + 1) * y_stride]
                    .iter()
                    .all(|&v| v == fill));
            }
        }
    }
    Ok(())
}

#[test]
fn linear_shape_and_dtype_errors_name_the_argument() -> TestResult {
    let (dev, s) = setup();
    let x = dev.alloc::<bf16>(2 * 8)?;
    let w = dev.alloc::<bf16>(4 * 8)?;
    let mut y = dev.alloc::<bf16>(2 * 4)?;
    let bad_w = dev.alloc::<bf16>(4 * 8 - 1)?;
    let mut bad_y = dev.alloc::<bf16>(9)?;
    let shape = GemmShape::new(2, 4, 8);

    let e = linear(&s, &x, &bad_w, &mut y, shape).unwrap_err();
    match &e {
        DeviceError::ShapeMismatch {
            arg,
            expected,
            found,
        } => {
            assert_eq!(*arg, "w");
            assert!(expected.contains("[4, 8]"), "{e}");
            assert!(found.contains("31"), "{e}");
        }
        other => panic!("unexpected error {other}"),
    }
    let e = linear(&s, &w, &w, &mut y, shape).unwrap_err();
    assert!(
        matches!(e, DeviceError::ShapeMismatch { arg: "x", .. }),
        "{e}"
    );
    let e = linear(&s, &x, &w, &mut bad_y, shape).unwrap_err();
    assert!(
        matches!(e, DeviceError::ShapeMismatch { arg: "y", .. }),
        "{e}"
    );

    let xf = dev.alloc::<f32>(16)?;
    let mut yf = dev.alloc::<f32>(8)?;
    let e = linear(&s, &xf, &w, &mut yf, shape).unwrap_err();
    assert!(
        matches!(e, DeviceError::UnsupportedDTypes { op: "linear", .. }),
        "{e}"
    );
    let xi = dev.alloc::<i32>(16)?;
    let wi = dev.alloc::<i32>(32)?;
    let mut yi = dev.alloc::<i32>(8)?;
    assert!(linear(&s, &xi, &wi, &mut yi, shape).is_err());

    let opts = LinearOptions {
        y_row_stride: Some(3),
        ..LinearOptions::default()
    };
    let e = linear_with(&s, &x, &w, &mut y, shape, &opts).unwrap_err();
    assert!(
        matches!(
            e,
            DeviceError::InvalidArgument {
                arg: "y_row_stride",
                ..
            }
        ),
        "{e}"
    );
    let batch = BatchStrides {
        count: 2,
        x: 0,
        w: 0,
        y: 0,
    };
    let e = linear_strided_batched(&s, &x, &w, &mut y, shape, batch, &LinearOptions::default())
        .unwrap_err();
    assert!(
        matches!(e, DeviceError::InvalidArgument { arg: "batch.y", .. }),
        "{e}"
    );

    let other = Device::emulated();
    let w_other = other.alloc::<bf16>(32)?;
    let e = linear(&s, &x, &w_other, &mut y, shape).unwrap_err();
    assert!(
        matches!(e, DeviceError::DeviceMismatch { arg: "w", .. }),
        "{e}"
    );
    // Validation errors leave the stream healthy.
    s.synchronize()?;
    Ok(())
}

#[test]
fn dtype_tags() {
    assert_eq!(<f32 as DeviceElem>::DTYPE, DType::F32);
    assert_eq!(<bf16 as DeviceElem>::DTYPE, DType::BF16);
    assert_eq!(<f16 as DeviceElem>::DTYPE, DType::F16);
    assert_eq!(<i32 as DeviceElem>::DTYPE, DType::I32);
    assert_eq!(<u32 as DeviceElem>::DTYPE, DType::U32);
}

/// Whether this machine has NVIDIA device nodes (a GPU with its kernel driver).
fn gpu_device_nodes_present() -> bool {
    ["/dev/nvidiactl", "/dev/nvidia0"]
        .iter()
        .any(|p| std::path::Path::new(p).exists())
}

#[test]
fn cuda_device_fails_cleanly_without_a_gpu_and_works_with_one() -> TestResult {
    // The CI and development machines of this project have no NVIDIA GPU: there
    // `Device::cuda(0)` must return an error (never panic). Where a GPU is present, the same
    // test instead checks that the CUDA backend works. A build without the CUDA kernels refuses
    // every ordinal up front, GPU or not.
    if !stagformer_kernels::CUDA_KERNELS {
        for ordinal in [0, 1000] {
            let e = Device::cuda(ordinal).unwrap_err();
            assert!(matches!(e, DeviceError::CudaNotBuilt), "{e}");
        }
        eprintln!("built without the CUDA kernels: Device::cuda refuses");
        return Ok(());
    }
    match Device::cuda(0) {
        Err(e) => {
            assert!(
                !gpu_device_nodes_present(),
                "NVIDIA device nodes exist but Device::cuda(0) failed: {e}"
            );
            eprintln!("no GPU expected on this machine; Device::cuda(0) returned: {e}");
            assert!(Device::cuda(1000).is_err());
            Ok(())
        }
        Ok(dev) => {
            eprintln!("GPU present: checking the CUDA backend on {}", dev.name());
            assert_eq!(dev.kind(), DeviceKind::Cuda);
            let s = dev.new_stream()?;
            round_trip(&s, &[1.0f32, 2.0, 3.0])?;
            round_trip(&s, &[bf16::ONE, bf16::MAX])?;
            round_trip(&s, &[7u32, 8, 9])?;
            let b = dev.new_stream()?;
            let mut x = DeviceBuffer::<f32>::alloc_zeroed(&s, 3)?;
            x.copy_from_host(&s, &[4.0, 5.0, 6.0])?;
            let ev = s.record_event()?;
            b.wait_event(&ev)?;
            let y = x.try_clone(&b)?;
            assert_eq!(y.to_host(&b)?, vec![4.0, 5.0, 6.0]);
            check_linear_all_dtypes(&dev, &s)?;
            dev.synchronize()
        }
    }
}

/// Fresh input `x` on the device and a poisoned output beside it.
fn scaled(
    stream: &Stream,
    x: &[f32],
) -> Result<(DeviceBuffer<f32>, DeviceBuffer<f32>), DeviceError> {
    let xd = DeviceBuffer::from_host(stream, x)?;
    let yd = DeviceBuffer::from_host(stream, &vec![f32::NAN; x.len()])?;
    Ok((xd, yd))
}

fn random_f32(n: usize, seed: u64) -> Vec<f32> {
    random::<f32>(&mut Rng(seed | 1), n)
}

/// Two decoders on one device capture from two threads at once: the device's capture lock
/// runs the captures one after the other, both succeed and both graphs replay right.
#[test]
fn concurrent_captures_on_one_device_are_serialised() -> TestResult {
    use stagformer_kernels::ops::axpby::axpby;
    let device = Device::emulated();
    let start = std::sync::Barrier::new(2);
    std::thread::scope(|scope| {
        let runs: Vec<_> = [(3.0f32, 11u64), (-0.5, 12)]
            .into_iter()
            .map(|(alpha, seed)| {
                let (device, start) = (&device, &start);
                scope.spawn(move || -> TestResult {
                    let stream = device.new_stream()?;
                    let x = random_f32(300, seed);
                    let (xd, mut yd) = scaled(&stream, &x)?;
                    stream.synchronize()?;
                    start.wait();
                    let (graph, ()) = stream.capture(|| {
                        // Long enough for the other thread's capture to begin meanwhile.
                        std::thread::sleep(Duration::from_millis(30));
                        axpby(&stream, alpha, &xd, 0.0, &mut yd)
                    })?;
                    for _ in 0..2 {
                        yd.copy_from_host(&stream, &vec![f32::NAN; x.len()])?;
                        graph.launch()?;
                        let got = yd.to_host(&stream)?;
                        for (g, v) in got.iter().zip(&x) {
                            assert!(
                                g.is_finite() && (g - alpha * v).abs() <= 1e-6 * (1.0 + v.abs()),
                                "{g} vs {}",
                                alpha * v
                            );
                        }
                    }
                    Ok(())
                })
            })
            .collect();
        runs.into_iter()
            .try_for_each(|r| r.join().expect("capture thread panicked"))
    })
}

/// A capture begun (on a second stream of the same device) while the thread's own capture is
/// in progress is refused with a capture error, and the device captures normally afterwards.
#[test]
fn a_capture_inside_a_capture_on_the_same_device_is_refused() -> TestResult {
    use stagformer_kernels::ops::axpby::axpby;
    let device = Device::emulated();
    let (a, b) = (device.new_stream()?, device.new_stream()?);
    let x = random_f32(64, 5);
    let (xd, mut yd) = scaled(&a, &x)?;
    a.synchronize()?;
    let outer = a.capture(|| -> Result<(), DeviceError> {
        match b.capture(|| Ok::<(), DeviceError>(())) {
            Err(DeviceError::Capture { reason }) => {
                assert!(reason.contains("already in progress"), "{reason}");
                Ok(())
            }
            Err(e) => panic!("expected a capture error, got {e}"),
            Ok(_) => panic!("a second capture on the device began"),
        }
    });
    outer?;
    // Neither the device nor the streams stay capturing.
    let (graph, ()) = b.capture(|| axpby(&b, 2.0, &xd, 0.0, &mut yd))?;
    graph.launch()?;
    let got = yd.to_host(&b)?;
    assert!(got.iter().zip(&x).all(|(g, v)| (g - 2.0 * v).abs() <= 1e-6));
    // Another device is not held by this one's capture.
    let other = Device::emulated().new_stream()?;
    a.capture(|| other.capture(|| Ok::<(), DeviceError>(())).map(drop))?;
    Ok(())
}

/// f64 rmsnorm of each row, the reference for the interop test.
fn rmsnorm_reference(x: &[f32], w: &[f32], eps: f64) -> Vec<f64> {
    x.chunks(w.len())
        .flat_map(|row| {
            let ms = row.iter().map(|&v| f64::from(v).powi(2)).sum::<f64>() / row.len() as f64;
            let inv = 1.0 / (ms + eps).sqrt();
            row.iter()
                .zip(w)
                .map(move |(&v, &g)| f64::from(v) * inv * f64::from(g))
        })
        .collect()
}

/// Memory the caller owns, wrapped by address (under emulation a host address), takes a
/// kernel's output; a stream re-wrapped from its raw handle queues in order with the original.
#[test]
fn rmsnorm_into_wrapped_memory_on_a_wrapped_stream() -> TestResult {
    use stagformer_kernels::ops::rmsnorm::{rmsnorm, Rows};
    for seed in [0, 7] {
        let device = Device::emulated_with(EmuOptions {
            shuffle_seed: seed,
            workers: 2,
        });
        let owner = device.new_stream()?;
        // SAFETY: `owner` is a live stream of `device`; its handle comes from `as_raw`.
        let stream = unsafe { Stream::from_raw(&device, owner.as_raw()) }?;
        assert_eq!(stream.as_raw(), owner.as_raw());
        let (rows, dim) = (3, 96);
        let x = random_f32(rows * dim, 21 + u64::from(seed));
        let w = random_f32(dim, 22);
        let mut mine = vec![f32::NAN; rows * dim];
        let before = device.allocated_bytes();
        // SAFETY: `mine` holds rows · dim f32 and outlives every use: the stream is
        // synchronised before it is read or dropped, and nothing else touches it meanwhile.
        let mut out = unsafe {
            DeviceBuffer::<f32>::from_raw_parts(&device, mine.as_mut_ptr() as u64, mine.len())
        }?;
        assert_eq!(
            device.allocated_bytes(),
            before,
            "wrapped memory is not an allocation"
        );
        assert_eq!(out.addr(), mine.as_ptr() as u64);
        let (xd, wd) = (
            DeviceBuffer::from_host(&owner, &x)?,
            DeviceBuffer::from_host(&owner, &w)?,
        );
        rmsnorm(&stream, &xd, &wd, &mut out, Rows { rows, dim }, 1e-5)?;
        let copied = out.to_host(&owner)?;
        drop(out);
        let want = rmsnorm_reference(&x, &w, 1e-5);
        let (mut err, mut norm) = (0.0, 0.0);
        for ((&g, &c), &r) in mine.iter().zip(&copied).zip(&want) {
            assert!(g.is_finite(), "non-finite output");
            assert_eq!(g.to_bits(), c.to_bits());
            err += (f64::from(g) - r).powi(2);
            norm += r * r;
        }
        assert!(err / norm < 1e-10, "nmse {}", err / norm);
    }
    Ok(())
}

#[test]
fn wrapping_bad_raw_parts_is_refused() {
    let device = Device::emulated();
    let mut mine = [0f32; 4];
    let addr = mine.as_mut_ptr() as u64;
    // SAFETY: each call is refused before it could wrap anything.
    unsafe {
        assert!(DeviceBuffer::<f32>::from_raw_parts(&device, 0, 4).is_err());
        assert!(DeviceBuffer::<f32>::from_raw_parts(&device, addr + 1, 2).is_err());
        assert!(DeviceBuffer::<f32>::from_raw_parts(&device, addr, usize::MAX).is_err());
        assert!(Stream::from_raw(&device, std::ptr::null_mut()).is_err());
    }
    let other = Device::emulated();
    let stream = other.new_stream().expect("stream");
    // SAFETY: `stream` is alive; the handle is refused because its device differs.
    let err = unsafe { Stream::from_raw(&device, stream.as_raw()) }.expect_err("refused");
    assert!(matches!(err, DeviceError::DeviceMismatch { .. }), "{err}");
}
