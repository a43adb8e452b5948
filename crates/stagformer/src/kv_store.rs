//! Where the decoder's KV caches live: dense buffers, or pools of pages addressed through
//! block tables (`DecoderOptions::kv_page_size > 0`), and the host bookkeeping that keeps the
//! tables and the pools consistent across prefill, step, remove and fork.
//!
//! Cache rows are (section, sequence) pairs: self row `s · max_batch + slot`, cross row
//! `(s − 1) · max_batch + slot` (reading section s). A paged cache keeps one [`PageTables`]
//! over those rows and one device copy of its table at a fixed address, so captured step
//! graphs stay valid: the table is uploaded on stream 0 before a prefill's or step's launches
//! (outside any capture) whenever it changed. Every layer's pool uses the same table: a page id
//! names the same page in each layer's k and v pool.

use stagformer_kernels::device::{DeviceBuffer, Stream};
use stagformer_kernels::ops::kv_pages::{BlockTable, PagePool};
use stagformer_kernels::Device;

use crate::error::{DecoderError, Result};
use crate::pages::{pages_per_row, PageCopy, PageTables, PagesExhausted};
use crate::section::{Caches, Shared};
use crate::Activation;

/// The sizes of a paged cache: its pool and its device table's entries. The one computation
/// both the allocation ([`PagedRows::new`]) and the memory plan use.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct PagedShape {
    pub pool: PagePool,
    /// Entries of the device table (at least 1, so that an empty table is still a buffer).
    pub table_len: usize,
}

impl PagedShape {
    fn too_large() -> DecoderError {
        DecoderError::Unsupported("KV page tables too large to address".into())
    }

    /// `rows` rows of `slots` slots in pages of `page_size` slots, over `pages` pages (all
    /// rows at full length when `None`).
    pub fn new(pages: Option<usize>, page_size: usize, rows: usize, slots: usize) -> Result<Self> {
        let stride = pages_per_row(slots, page_size);
        let entries = rows.checked_mul(stride).ok_or_else(Self::too_large)?;
        let pages = match pages {
            Some(0) => {
                return Err(DecoderError::Unsupported(
                    "kv_pages must be at least 1".into(),
                ))
            }
            Some(n) => n,
            None => entries,
        };
        // The kernels' fields: page ids and table offsets in i32, the page size in u32.
        if pages > i32::MAX as usize || entries > i32::MAX as usize || page_size > u32::MAX as usize
        {
            return Err(Self::too_large());
        }
        Ok(PagedShape {
            pool: PagePool { pages, page_size },
            table_len: entries.max(1),
        })
    }
}

/// A paged cache's tables, its pool's shape and the device copy of the table.
pub(crate) struct PagedRows {
    pub tables: PageTables,
    pub pool: PagePool,
    /// `[rows][stride]` page ids as the kernels read them; never reallocated.
    pub device: DeviceBuffer<i32>,
    /// Elements of one page in one layer's k (or v) pool: `kv_heads · page_size · head_dim`.
    pub page_len: usize,
}

impl PagedRows {
    /// Tables for `rows` rows of `slots` slots over the pool `shape` sized, pages of
    /// `page_size` slots of `row_len` (`kv_heads · head_dim`) elements.
    pub fn new(
        device: &Device,
        shape: PagedShape,
        rows: usize,
        slots: usize,
        row_len: usize,
    ) -> Result<Self> {
        let page_size = shape.pool.page_size;
        let tables = PageTables::new(shape.pool.pages, page_size, rows, slots);
        let device = DeviceBuffer::alloc(device, shape.table_len)?;
        Ok(PagedRows {
            tables,
            pool: shape.pool,
            device,
            page_len: page_size
                .checked_mul(row_len)
                .ok_or_else(PagedShape::too_large)?,
        })
    }

    /// Elements of one layer's pool.
    pub fn pool_len(&self) -> Result<usize> {
        self.pool
            .pages
            .checked_mul(self.page_len)
            .ok_or_else(|| DecoderError::Unsupported("KV page pool too large to address".into()))
    }

    /// The device table for the kernels.
    pub fn block_table(&self) -> BlockTable<'_> {
        BlockTable::new(self.device.view(), self.tables.stride())
    }

    /// Uploads the table on `stream` if it changed since the last upload.
    fn upload(&mut self, stream: &Stream) -> Result<()> {
        if self.tables.take_dirty() {
            let n = self.tables.table().len();
            self.device
                .slice_mut(..n)?
                .copy_from_host(stream, self.tables.table())?;
        }
        Ok(())
    }

    /// Gives each `(row, slots)` pair pages for its slots `0..slots`; all or nothing.
    fn reserve_all(&mut self, rows: &[(usize, usize)]) -> Result<(), PagesExhausted> {
        let needed: usize = rows.iter().map(|&(r, n)| self.tables.missing(r, n)).sum();
        let free = self.tables.free_pages();
        if needed > free {
            return Err(PagesExhausted { needed, free });
        }
        for &(row, slots) in rows {
            self.tables.reserve(row, slots)?;
        }
        Ok(())
    }

    /// Readies every `(row, slot)` for a write; all or nothing. Returns the pages to copy.
    fn before_writes(
        &mut self,
        writes: &[(usize, usize)],
    ) -> Result<Vec<PageCopy>, PagesExhausted> {
        let saved = self.tables.clone();
        let free = self.tables.free_pages();
        let mut copies = Vec::new();
        for (i, &(row, slot)) in writes.iter().enumerate() {
            match self.tables.before_write(row, slot) {
                Ok(copy) => copies.extend(copy),
                Err(_) => {
                    // What the failed write and the ones after it would take at most, on top
                    // of what the earlier ones took.
                    let taken = free - self.tables.free_pages();
                    // One page per (row, page) the remaining writes touch, however many
                    // of its slots they write.
                    let page_size = self.tables.page_size();
                    let rest = writes[i..]
                        .iter()
                        .filter(|&&(r, s)| self.tables.write_cost(r, s) > 0)
                        .map(|&(r, s)| (r, s / page_size))
                        .collect::<std::collections::HashSet<_>>()
                        .len();
                    self.tables = saved;
                    return Err(PagesExhausted {
                        needed: taken + rest,
                        free,
                    });
                }
            }
        }
        Ok(copies)
    }
}

impl From<PagesExhausted> for DecoderError {
    fn from(e: PagesExhausted) -> Self {
        DecoderError::OutOfKvPages {
            needed: e.needed,
            free: e.free,
        }
    }
}

/// Copies `len` elements of `buf` at `from` to `to` (non-overlapping) on `stream`.
fn copy_within<T: Activation>(
    stream: &Stream,
    buf: &mut DeviceBuffer<T>,
    from: usize,
    to: usize,
    len: usize,
) -> Result<()> {
    if from == to || len == 0 {
        return Ok(());
    }
    let (lo, hi) = buf.view_mut().split_at_mut(from.max(to))?;
    if from < to {
        let src = lo.slice(from..from + len)?;
        hi.into_slice_mut(..len)?.copy_from(stream, &src)?;
    } else {
        let src = hi.slice(..len)?;
        lo.into_slice_mut(to..to + len)?.copy_from(stream, &src)?;
    }
    Ok(())
}

impl<T: Activation> Caches<T> {
    /// Uploads the changed tables on `stream` (before any launch that reads them).
    pub fn upload_tables(&mut self, stream: &Stream) -> Result<()> {
        for pages in [&mut self.self_pages, &mut self.cross_pages]
            .into_iter()
            .flatten()
        {
            pages.upload(stream)?;
        }
        Ok(())
    }

    /// Pages for every row of sequence slot `slot` for a prompt of `len` positions, in both
    /// pools or in neither (a typed error, nothing allocated).
    pub fn reserve_prompt(&mut self, sh: &Shared<T>, slot: usize, len: usize) -> Result<()> {
        let (p, b) = (sh.cfg.sections(), sh.max_batch);
        let self_rows: Vec<_> = (0..p)
            .map(|s| (s * b + slot, len.min(sh.self_cache.slots)))
            .collect();
        // Only unbounded cross caches are paged: there position k is slot k.
        let cross_rows: Vec<_> = (1..p).map(|s| ((s - 1) * b + slot, len)).collect();
        if let (Some(sp), Some(cp)) = (&self.self_pages, &self.cross_pages) {
            // Check both before taking from either.
            let need = |pg: &PagedRows, rows: &[(usize, usize)]| -> usize {
                rows.iter().map(|&(r, n)| pg.tables.missing(r, n)).sum()
            };
            for (pg, rows) in [(sp, &self_rows), (cp, &cross_rows)] {
                let (needed, free) = (need(pg, rows), pg.tables.free_pages());
                if needed > free {
                    return Err(PagesExhausted { needed, free }.into());
                }
            }
        }
        if let Some(pg) = &mut self.self_pages {
            pg.reserve_all(&self_rows)?;
        }
        if let Some(pg) = &mut self.cross_pages {
            pg.reserve_all(&cross_rows)?;
        }
        Ok(())
    }

    /// Readies the step's writes (each `(slot, position)`: its self row in every section, its
    /// reader rows of the cross caches) in the host tables, all or nothing; returns the page
    /// copies to make with [`Caches::copy_pages`] before the step's launches.
    pub fn plan_step(&mut self, sh: &Shared<T>, rows: &[(usize, usize)]) -> Result<StepCopies> {
        let (p, b) = (sh.cfg.sections(), sh.max_batch);
        let self_layout = sh.self_layout();
        let self_writes: Vec<_> = rows
            .iter()
            .flat_map(|&(slot, pos)| (0..p).map(move |s| (s * b + slot, pos)))
            .map(|(row, pos)| (row, self_layout.slot_of(pos)))
            .collect();
        let cross_writes: Vec<_> = rows
            .iter()
            .flat_map(|&(slot, pos)| (1..p).map(move |s| ((s - 1) * b + slot, pos)))
            .collect();
        let mut copies = StepCopies::default();
        let saved = self.self_pages.as_ref().map(|pg| pg.tables.clone());
        if let Some(pg) = &mut self.self_pages {
            copies.self_pages = pg.before_writes(&self_writes)?;
        }
        if let Some(pg) = &mut self.cross_pages {
            match pg.before_writes(&cross_writes) {
                Ok(c) => copies.cross_pages = c,
                Err(e) => {
                    // The step is refused as a whole: the self pool's part is undone too.
                    if let (Some(sp), Some(tables)) = (&mut self.self_pages, saved) {
                        sp.tables = tables;
                    }
                    return Err(e.into());
                }
            }
        }
        Ok(copies)
    }

    /// Makes the copies of [`Caches::plan_step`] in every layer's k and v pool, then uploads
    /// the tables, all on `stream`.
    pub fn copy_pages(&mut self, stream: &Stream, copies: &StepCopies) -> Result<()> {
        if let Some(pg) = &self.self_pages {
            for c in &copies.self_pages {
                let (from, to) = (c.from as usize * pg.page_len, c.to as usize * pg.page_len);
                for buf in self.self_k.iter_mut().chain(self.self_v.iter_mut()) {
                    copy_within(stream, buf, from, to, pg.page_len)?;
                }
            }
        }
        if let Some(pg) = &self.cross_pages {
            let layer = pg.pool_len()?;
            let layers = self.cross_k.len() / layer.max(1);
            for c in &copies.cross_pages {
                for j in 0..layers {
                    let (from, to) = (
                        j * layer + c.from as usize * pg.page_len,
                        j * layer + c.to as usize * pg.page_len,
                    );
                    for buf in [&mut self.cross_k, &mut self.cross_v] {
                        copy_within(stream, buf, from, to, pg.page_len)?;
                    }
                }
            }
        }
        self.upload_tables(stream)
    }

    /// Drops sequence slot `slot`'s pages (freed when no fork shares them).
    pub fn release(&mut self, sh: &Shared<T>, slot: usize) {
        let (p, b) = (sh.cfg.sections(), sh.max_batch);
        if let Some(pg) = &mut self.self_pages {
            (0..p).for_each(|s| pg.tables.release(s * b + slot));
        }
        if let Some(pg) = &mut self.cross_pages {
            (1..p).for_each(|s| pg.tables.release((s - 1) * b + slot));
        }
    }

    /// Cuts sequence slot `slot` back to `len` positions: paged rows that are not rings drop
    /// their pages past `len` (rings keep theirs: their slots are reused, not past the end).
    pub fn truncate(&mut self, sh: &Shared<T>, slot: usize, len: usize) {
        let (p, b) = (sh.cfg.sections(), sh.max_batch);
        if let Some(pg) = &mut self.self_pages {
            if sh.self_cache.window.is_none() {
                (0..p).for_each(|s| pg.tables.truncate(s * b + slot, len));
            }
        }
        // Paged cross caches are never rings.
        if let Some(pg) = &mut self.cross_pages {
            (1..p).for_each(|s| pg.tables.truncate((s - 1) * b + slot, len));
        }
    }

    /// Makes slot `dst` hold what slot `src` holds: paged rows share `src`'s pages (later
    /// writes copy on write), dense rows are copied on `stream`.
    pub fn fork(&mut self, sh: &Shared<T>, stream: &Stream, src: usize, dst: usize) -> Result<()> {
        let (p, b) = (sh.cfg.sections(), sh.max_batch);
        match &mut self.self_pages {
            Some(pg) => (0..p).for_each(|s| pg.tables.share(s * b + src, s * b + dst)),
            None => {
                let row = sh.self_layout().seq_stride;
                for s in 0..p {
                    let (from, to) = ((s * b + src) * row, (s * b + dst) * row);
                    for buf in self.self_k.iter_mut().chain(self.self_v.iter_mut()) {
                        copy_within(stream, buf, from, to, row)?;
                    }
                }
            }
        }
        match &mut self.cross_pages {
            Some(pg) => (1..p).for_each(|s| {
                pg.tables.share((s - 1) * b + src, (s - 1) * b + dst);
            }),
            None if p > 1 => {
                let layout = sh.cross_layout();
                let (layer, row) = (layout.required_len()?, layout.seq_stride);
                for j in 0..sh.cfg.layers_per_section() {
                    for s in 1..p {
                        let from = j * layer + ((s - 1) * b + src) * row;
                        let to = j * layer + ((s - 1) * b + dst) * row;
                        for buf in [&mut self.cross_k, &mut self.cross_v] {
                            copy_within(stream, buf, from, to, row)?;
                        }
                    }
                }
            }
            None => {}
        }
        Ok(())
    }

    /// Free pages of the self and cross pools (`None` where dense).
    pub fn free_pages(&self) -> (Option<usize>, Option<usize>) {
        let free = |pg: &Option<PagedRows>| pg.as_ref().map(|pg| pg.tables.free_pages());
        (free(&self.self_pages), free(&self.cross_pages))
    }
}

/// The page copies a step makes before its launches.
#[derive(Default)]
pub(crate) struct StepCopies {
    self_pages: Vec<PageCopy>,
    cross_pages: Vec<PageCopy>,
}
