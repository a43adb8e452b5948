//! Rows for `embedding` and `embedding_from_host_ids` (cuda/embedding.cu).
//!
//! Tolerance 0 everywhere: the gather copies table rows bit for bit, so the output must equal
//! the selected reference rows exactly (ids outside the vocabulary give exact zeros).

use half::bf16;
use stagformer_kernels::device::{DeviceBuffer, Stream};
use stagformer_kernels::ops::embedding::{embedding, embedding_from_host_ids, EmbeddingShape};
use stagformer_kernels::ops::rmsnorm::NormElem;

use crate::table::{poisoned, stored, widen, widen_f32, Case, Compared, Float, Inputs};

/// (rows, vocab, dim): one token, odd widths (scalar path), widths that are whole vectors for
/// f32 but not for bf16, a prefill-sized batch, a row wider than one block's vectors.
const SHAPES: &[(usize, usize, usize)] = &[
    (1, 5, 3),
    (1, 40, 64),
    (3, 17, 12),
    (4, 33, 1000),
    (37, 64, 40),
    (2, 9, 4104),
];

pub fn cases() -> Vec<Case> {
    let mut cases = Vec::new();
    for &(rows, vocab, dim) in SHAPES {
        for unaligned in [false, true] {
            cases.push(gather_case::<f32>(rows, vocab, dim, unaligned));
            cases.push(gather_case::<bf16>(rows, vocab, dim, unaligned));
        }
    }
    cases.push(bad_device_ids_case::<f32>(8, 11, 48));
    cases.push(bad_device_ids_case::<bf16>(6, 11, 72));
    cases.push(bad_device_ids_case::<bf16>(3, 7, 5));
    cases.push(host_ids_case::<f32>(5, 23, 32));
    cases.push(host_ids_case::<bf16>(4, 13, 9));
    cases
}

/// `n` indices below `bound`, drawn from the row's random stream.
pub fn random_indices(inputs: &mut Inputs, n: usize, bound: usize) -> Vec<usize> {
    inputs
        .normal(n, 0.0, 1.0)
        .iter()
        .map(|v| {
            // splitmix64's finaliser spreads the sample's bits evenly over the range.
            let mut h = u64::from(v.to_bits()).wrapping_add(0x9E37_79B9_7F4A_7C15);
            h = (h ^ (h >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
            h = (h ^ (h >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
            h ^= h >> 31;
            (h % bound as u64) as usize
        })
        .collect()
}

/// The expected output: the table rows of valid ids, zeros for the others.
fn gathered(table: &[f32], ids: &[i64], vocab: usize, dim: usize) -> Vec<f32> {
    let mut want = Vec::with_capacity(ids.len() * dim);
    for &id in ids {
        if (0..vocab as i64).contains(&id) {
            let id = id as usize;
            want.extend_from_slice(&table[id * dim..(id + 1) * dim]);
        } else {
            want.extend(std::iter::repeat_n(0.0, dim));
        }
    }
    want
}

/// A device copy of `values` starting `offset` elements into its buffer (an offset of one
/// breaks 16-byte alignment, so the kernel must take its scalar path).
fn upload<T: Float>(
    stream: &Stream,
    values: &[T],
    offset: usize,
) -> anyhow::Result<DeviceBuffer<T>> {
    let mut host = vec![T::from_f32(0.25); offset];
    host.extend_from_slice(values);
    Ok(DeviceBuffer::from_host(stream, &host)?)
}

fn gather_case<T: Float + NormElem>(
    rows: usize,
    vocab: usize,
    dim: usize,
    unaligned: bool,
) -> Case {
    let tail = if unaligned { " unaligned" } else { "" };
    let name = format!(
        "embedding {} rows={rows} vocab={vocab} dim={dim}{tail}",
        T::NAME
    );
    Case::new(name, 0.0, move |stream, inputs: &mut Inputs| {
        let (table, table_seen) = stored::<T>(&inputs.normal(vocab * dim, 0.0, 1.0));
        let ids: Vec<i64> = random_indices(inputs, rows, vocab)
            .into_iter()
            .map(|i| i as i64)
            .collect();
        run_gather::<T>(stream, &table, &table_seen, &ids, vocab, dim, unaligned)
    })
}

/// Gathers `ids` (possibly out of range) on the device and compares with the reference rows.
fn run_gather<T: Float + NormElem>(
    stream: &Stream,
    table: &[T],
    table_seen: &[f32],
    ids: &[i64],
    vocab: usize,
    dim: usize,
    unaligned: bool,
) -> anyhow::Result<Vec<Compared>> {
    let start = usize::from(unaligned);
    let rows = ids.len();
    let table_dev = upload(stream, table, start)?;
    let ids_i32: Vec<i32> = ids.iter().map(|&i| i as i32).collect();
    let ids_dev = DeviceBuffer::from_host(stream, &ids_i32)?;
    let mut out = poisoned::<T>(stream, rows * dim + start)?;
    embedding(
        stream,
        &ids_dev,
        &table_dev.slice(start..)?,
        &mut out.slice_mut(start..)?,
        EmbeddingShape { vocab, dim },
    )?;
    let got = out.slice(start..)?.to_host(stream)?;
    Ok(vec![Compared {
        output: "out",
        got: widen(&got),
        want: widen_f32(&gathered(table_seen, ids, vocab, dim)),
    }])
}

/// Device ids the host never checked: -1, vocab, vocab + 5 and i32::MIN must give zero rows,
/// with no read outside the table.
fn bad_device_ids_case<T: Float + NormElem>(rows: usize, vocab: usize, dim: usize) -> Case {
    let name = format!(
        "embedding {} rows={rows} vocab={vocab} dim={dim} out-of-range device ids",
        T::NAME
    );
    Case::new(name, 0.0, move |stream, inputs: &mut Inputs| {
        let (table, table_seen) = stored::<T>(&inputs.normal(vocab * dim, 0.0, 1.0));
        let mut ids: Vec<i64> = random_indices(inputs, rows, vocab)
            .into_iter()
            .map(|i| i as i64)
            .collect();
        let bad = [-1, vocab as i64 + 5, vocab as i64, i64::from(i32::MIN)];
        for (slot, &b) in ids.iter_mut().skip(1).step_by(2).zip(&bad) {
            *slot = b;
        }
        run_gather::<T>(stream, &table, &table_seen, &ids, vocab, dim, false)
    })
}

/// Host ids: an id ≥ vocab is refused before anything is written (the error names its index
/// and value), then valid ids are gathered through the staging buffer.
fn host_ids_case<T: Float + NormElem>(rows: usize, vocab: usize, dim: usize) -> Case {
    let name = format!(
        "embedding {} rows={rows} vocab={vocab} dim={dim} host ids",
        T::NAME
    );
    Case::new(name, 0.0, move |stream, inputs: &mut Inputs| {
        let (table, table_seen) = stored::<T>(&inputs.normal(vocab * dim, 0.0, 1.0));
        let table_dev = DeviceBuffer::from_host(stream, &table)?;
        let ids: Vec<u32> = random_indices(inputs, rows, vocab)
            .into_iter()
            .map(|i| i as u32)
            .collect();
        // A staging area longer than needed, as a decoder sized for its largest batch keeps.
        let mut ids_dev = DeviceBuffer::<i32>::from_host(stream, &vec![-7; rows + 3])?;
        let mut out = poisoned::<T>(stream, rows * dim)?;
        let shape = EmbeddingShape { vocab, dim };

        let mut bad = ids.clone();
        bad[rows - 1] = vocab as u32;
        match embedding_from_host_ids(stream, &bad, &mut ids_dev, &table_dev, &mut out, shape) {
            Ok(()) => anyhow::bail!("id {vocab} (= vocab) was accepted"),
            Err(e) => {
                let text = e.to_string();
                let index = format!("ids[{}] = {vocab}", rows - 1);
                if !text.contains(&index) {
                    anyhow::bail!("the error does not name {index}: {text}");
                }
            }
        }
        if ids_dev.to_host(stream)?.iter().any(|&v| v != -7) {
            anyhow::bail!("a refused call wrote the staging buffer");
        }
        let mut short = DeviceBuffer::<i32>::from_host(stream, &vec![0; rows - 1])?;
        if embedding_from_host_ids(stream, &ids, &mut short, &table_dev, &mut out, shape).is_ok() {
            anyhow::bail!("a staging buffer shorter than the ids was accepted");
        }

        embedding_from_host_ids(stream, &ids, &mut ids_dev, &table_dev, &mut out, shape)?;
        let got = out.to_host(stream)?;
        let ids: Vec<i64> = ids.iter().map(|&i| i64::from(i)).collect();
        Ok(vec![Compared {
            output: "out",
            got: widen(&got),
            want: widen_f32(&gathered(&table_seen, &ids, vocab, dim)),
        }])
    })
}
