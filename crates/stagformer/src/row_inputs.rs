//! The per-token inputs of a pass (token ids, positions, cache slots, sampler settings) in one
//! device buffer, written by one host copy before the launches that read them.
//!
//! Keeping everything that changes from step to step here is what lets a captured step graph
//! replay unchanged: its kernels read these addresses, the copy before each launch refills
//! them. Prefills use the same buffer; stream order on stream 0 keeps the two apart.
//!
//! Layout for `passes` passes over `n` rows (R = passes·n; row s·n + r is pass s of row r):
//! `ids[R] | positions[R] | self_slots[R] | cross_slots[R] | sample_settings[n · W]` with W =
//! `SAMPLE_ROW_WORDS` u32 words per row (each row's temperature, top-k, top-p, seed and
//! counter, as `ops::sample::pack_rows` lays them out). Offsets depend only on (passes, n),
//! which a graph's key fixes; the settings' values are data, so one graph serves them all.

use std::ops::Range;

use stagformer_kernels::device::{Device, DeviceBuffer, DeviceView, Stream};
use stagformer_kernels::ops::sample::SAMPLE_ROW_WORDS;

use crate::error::Result;

/// Views of one pass's (or several passes') per-row inputs.
#[derive(Clone, Copy)]
pub(crate) struct RowIndex<'a> {
    pub ids: DeviceView<'a, i32>,
    pub positions: DeviceView<'a, i32>,
    /// Slot in the self-attention caches: section s, sequence b → s·max_batch + b.
    pub self_slots: DeviceView<'a, i32>,
    /// Sequence in the cross caches: section s ≥ 1 (a reader), sequence b →
    /// (s − 1)·max_batch + b; section 0 reads none (its rows hold b, unused). The memory
    /// section s hands over is written at the slots of section s + 1's rows.
    pub cross_slots: DeviceView<'a, i32>,
}

/// One row of a pass: which sequence, which token, at which position.
#[derive(Clone, Copy)]
pub(crate) struct Row {
    pub seq: usize,
    pub token: u32,
    pub position: usize,
}

pub(crate) struct RowInputs {
    host: Vec<i32>,
    device: DeviceBuffer<i32>,
    /// Layout of the last upload: (passes, rows).
    shape: (usize, usize),
}

impl RowInputs {
    /// Room for `max_pass_rows` pass rows (passes·n) and `max_rows` rows.
    pub fn new(device: &Device, max_pass_rows: usize, max_rows: usize) -> Result<Self> {
        let len = 4 * max_pass_rows + SAMPLE_ROW_WORDS * max_rows;
        Ok(RowInputs {
            host: Vec::with_capacity(len),
            device: DeviceBuffer::alloc(device, len)?,
            shape: (0, 0),
        })
    }

    /// Fills the inputs of `passes` passes over `rows` and queues their copy on `stream`.
    /// `sampling`: the rows' packed sampler settings (`rows.len() · SAMPLE_ROW_WORDS` words),
    /// or none when the pass does not sample.
    pub fn upload(
        &mut self,
        stream: &Stream,
        passes: usize,
        max_batch: usize,
        rows: &[Row],
        sampling: Option<&[u32]>,
    ) -> Result<()> {
        let h = &mut self.host;
        h.clear();
        let each_pass = |f: &dyn Fn(usize, &Row) -> usize, h: &mut Vec<i32>| {
            for s in 0..passes {
                h.extend(rows.iter().map(|r| f(s, r) as i32));
            }
        };
        each_pass(&|_, r| r.token as usize, h);
        each_pass(&|_, r| r.position, h);
        each_pass(&|s, r| s * max_batch + r.seq, h);
        each_pass(&|s, r| s.saturating_sub(1) * max_batch + r.seq, h);
        if let Some(words) = sampling {
            debug_assert_eq!(words.len(), rows.len() * SAMPLE_ROW_WORDS);
            // The same bits, in the buffer's element type.
            h.extend(words.iter().map(|&w| w as i32));
        }
        self.device
            .slice_mut(..h.len())?
            .copy_from_host(stream, h)?;
        self.shape = (passes, rows.len());
        Ok(())
    }

    fn section(&self, k: usize) -> Result<DeviceView<'_, i32>> {
        let (passes, n) = self.shape;
        let r = passes * n;
        let range = match k {
            0..=3 => k * r..(k + 1) * r,
            _ => 4 * r..4 * r + SAMPLE_ROW_WORDS * n,
        };
        Ok(self.device.slice(range)?)
    }

    /// The inputs of pass rows `rows` (within 0..passes·n) of the last upload.
    pub fn index(&self, rows: Range<usize>) -> Result<RowIndex<'_>> {
        let part =
            |k: usize| -> Result<DeviceView<'_, i32>> { Ok(self.section(k)?.slice(rows.clone())?) };
        Ok(RowIndex {
            ids: part(0)?,
            positions: part(1)?,
            self_slots: part(2)?,
            cross_slots: part(3)?,
        })
    }

    /// The sampler's per-row settings of the last upload (meaningful when it sampled).
    pub fn sampler(&self) -> Result<DeviceView<'_, u32>> {
        Ok(self.section(4)?.bitcast::<u32>()?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layout_is_pass_major_and_sampler_last() {
        let device = Device::emulated();
        let stream = device.new_stream().unwrap();
        let mut inputs = RowInputs::new(&device, 8, 4).unwrap();
        let rows = [
            Row {
                seq: 3,
                token: 11,
                position: 5,
            },
            Row {
                seq: 0,
                token: 12,
                position: 9,
            },
        ];
        inputs.upload(&stream, 3, 4, &rows, None).unwrap();
        let ix = inputs.index(4..6).unwrap();
        assert_eq!(ix.self_slots.to_host(&stream).unwrap(), vec![11, 8]);
        assert_eq!(ix.cross_slots.to_host(&stream).unwrap(), vec![7, 4]);
        let words: Vec<u32> = (0..2 * SAMPLE_ROW_WORDS as u32)
            .map(|w| w * 3 + 1)
            .collect();
        inputs.upload(&stream, 2, 4, &rows, Some(&words)).unwrap();
        let ix = inputs.index(2..4).unwrap();
        assert_eq!(ix.ids.to_host(&stream).unwrap(), vec![11, 12]);
        assert_eq!(ix.positions.to_host(&stream).unwrap(), vec![5, 9]);
        assert_eq!(ix.self_slots.to_host(&stream).unwrap(), vec![7, 4]);
        assert_eq!(ix.cross_slots.to_host(&stream).unwrap(), vec![3, 0]);
        assert_eq!(inputs.sampler().unwrap().to_host(&stream).unwrap(), words);
        assert!(inputs.index(3..5).is_err());
    }
}
