//! The host side of paged KV caches: which pool page holds which slots of which cache row, and
//! how many rows share a page.
//!
//! A cache row is one (section, sequence) pair of a paged cache; its slots (positions, or ring
//! slots) map to pages through `stride` entries of the block table, `page_size` slots a page
//! (the kernels' rule: `cuda/include/stag_cache.cuh`). Pages are reference counted so that a
//! fork shares its source's pages; a write into a shared page first moves the writer onto a
//! copy of it (copy-on-write), which the caller performs on the device before the write
//! ([`PageCopy`]). Nothing here touches the device: the table is a host mirror that the caller
//! uploads when [`PageTables::take_dirty`] says it changed.

/// A pool with too few free pages for a request; nothing was allocated.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("the KV page pool has {free} free pages; this request needs {needed}")]
pub struct PagesExhausted {
    /// Pages the request needs.
    pub needed: usize,
    /// Pages free in the pool.
    pub free: usize,
}

/// Copy page `from` to page `to` (every layer of the pool, keys and values) before the next
/// write: the writer's row now points at `to`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PageCopy {
    /// The shared page.
    pub from: u32,
    /// The writer's new page.
    pub to: u32,
}

/// Block tables of `rows` cache rows over one pool of `pages` pages.
#[derive(Debug, Clone)]
pub struct PageTables {
    page_size: usize,
    stride: usize,
    /// `[rows][stride]` page ids, −1 where a row has no page (the kernels skip such slots).
    table: Vec<i32>,
    /// References to each page from the table.
    refs: Vec<u32>,
    /// Free pages, the lowest id last (taken first).
    free: Vec<u32>,
    dirty: bool,
}

/// Table entries a row of `slots` slots needs with pages of `page_size` slots.
pub fn pages_per_row(slots: usize, page_size: usize) -> usize {
    slots.div_ceil(page_size.max(1))
}

impl PageTables {
    /// Empty tables for `rows` rows of `slots` slots each over a pool of `pages` pages of
    /// `page_size` slots. The caller has checked that the sizes fit the kernels' fields
    /// (`pages` and `rows · stride` below 2^31).
    pub fn new(pages: usize, page_size: usize, rows: usize, slots: usize) -> Self {
        let page_size = page_size.max(1);
        let stride = pages_per_row(slots, page_size);
        PageTables {
            page_size,
            stride,
            table: vec![-1; rows * stride],
            refs: vec![0; pages],
            free: (0..pages as u32).rev().collect(),
            dirty: true,
        }
    }

    /// Slots per page.
    pub fn page_size(&self) -> usize {
        self.page_size
    }

    /// Table entries per row.
    pub fn stride(&self) -> usize {
        self.stride
    }

    /// The table, `[rows][stride]`, as the kernels read it.
    pub fn table(&self) -> &[i32] {
        &self.table
    }

    /// Pages no row holds.
    pub fn free_pages(&self) -> usize {
        self.free.len()
    }

    /// Whether the table changed since the last call (and so must be uploaded again).
    pub fn take_dirty(&mut self) -> bool {
        std::mem::take(&mut self.dirty)
    }

    fn entries(&self, row: usize) -> std::ops::Range<usize> {
        row * self.stride..(row + 1) * self.stride
    }

    /// New pages `row` needs so that its slots `0..slots` all have one.
    pub fn missing(&self, row: usize, slots: usize) -> usize {
        let covered = pages_per_row(slots, self.page_size).min(self.stride);
        self.table[self.entries(row)][..covered]
            .iter()
            .filter(|&&e| e < 0)
            .count()
    }

    /// Gives `row` a page for every slot in `0..slots` that has none; all or nothing.
    pub fn reserve(&mut self, row: usize, slots: usize) -> Result<(), PagesExhausted> {
        let needed = self.missing(row, slots);
        if needed > self.free.len() {
            return Err(PagesExhausted {
                needed,
                free: self.free.len(),
            });
        }
        let covered = pages_per_row(slots, self.page_size).min(self.stride);
        let range = self.entries(row);
        for e in range.start..range.start + covered {
            if self.table[e] < 0 {
                let page = self.free.pop().expect("counted above");
                self.refs[page as usize] = 1;
                self.table[e] = page as i32;
                self.dirty = true;
            }
        }
        Ok(())
    }

    /// Drops `row`'s pages (freed when no other row holds them); the row has none afterwards.
    pub fn release(&mut self, row: usize) {
        for e in self.entries(row) {
            let page = std::mem::replace(&mut self.table[e], -1);
            if page >= 0 {
                self.unref(page as u32);
                self.dirty = true;
            }
        }
    }

    /// Drops `row`'s pages past the first `slots` slots (a sequence cut back to `slots`
    /// positions); pages a fork still shares stay with it.
    pub fn truncate(&mut self, row: usize, slots: usize) {
        let keep = pages_per_row(slots, self.page_size).min(self.stride);
        let range = self.entries(row);
        for e in range.start + keep..range.end {
            let page = std::mem::replace(&mut self.table[e], -1);
            if page >= 0 {
                self.unref(page as u32);
                self.dirty = true;
            }
        }
    }

    fn unref(&mut self, page: u32) {
        let refs = &mut self.refs[page as usize];
        *refs -= 1;
        if *refs == 0 {
            self.free.push(page);
        }
    }

    /// Makes `dst` (which must hold no pages) share every page of `src`: a fork. Later
    /// writes of either row into a shared page copy it first ([`PageTables::before_write`]).
    pub fn share(&mut self, src: usize, dst: usize) {
        if src == dst {
            return;
        }
        self.release(dst);
        let (s, d) = (self.entries(src), self.entries(dst));
        for (se, de) in s.zip(d) {
            let page = self.table[se];
            if page >= 0 {
                self.refs[page as usize] += 1;
                self.table[de] = page;
            }
        }
        self.dirty = true;
    }

    /// Readies slot `slot` of `row` for a write: gives it a page if it has none and, when
    /// its page is shared with another row, moves `row` onto a fresh copy of it, returned as
    /// the copy to make on the device before the write. All or nothing. `slot` must lie below
    /// the `slots` the tables were made for.
    pub fn before_write(
        &mut self,
        row: usize,
        slot: usize,
    ) -> Result<Option<PageCopy>, PagesExhausted> {
        let e = self.entries(row).start + slot / self.page_size;
        let page = self.table[e];
        if page < 0 {
            self.reserve_entry(e)?;
            return Ok(None);
        }
        if self.refs[page as usize] == 1 {
            return Ok(None);
        }
        let to = self
            .free
            .pop()
            .ok_or(PagesExhausted { needed: 1, free: 0 })?;
        self.refs[to as usize] = 1;
        self.unref(page as u32);
        self.table[e] = to as i32;
        self.dirty = true;
        Ok(Some(PageCopy {
            from: page as u32,
            to,
        }))
    }

    /// Pages a write into slot `slot` of `row` takes: 1 when the slot has no page or its page
    /// is shared (before another writer may have copied it), else 0.
    pub fn write_cost(&self, row: usize, slot: usize) -> usize {
        let page = self.table[self.entries(row).start + slot / self.page_size];
        usize::from(page < 0 || self.refs[page as usize] > 1)
    }

    fn reserve_entry(&mut self, e: usize) -> Result<(), PagesExhausted> {
        let page = self
            .free
            .pop()
            .ok_or(PagesExhausted { needed: 1, free: 0 })?;
        self.refs[page as usize] = 1;
        self.table[e] = page as i32;
        self.dirty = true;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every page is free exactly when no entry holds it, and its count is its entries.
    fn check_counts(t: &PageTables) {
        let mut held = vec![0u32; t.refs.len()];
        for &e in &t.table {
            if e >= 0 {
                held[e as usize] += 1;
            }
        }
        assert_eq!(held, t.refs);
        for (page, &n) in held.iter().enumerate() {
            assert_eq!(n == 0, t.free.contains(&(page as u32)), "page {page}");
        }
        let mut free = t.free.clone();
        free.sort_unstable();
        free.dedup();
        assert_eq!(free.len(), t.free.len(), "a page is free twice");
    }

    #[test]
    fn reserve_is_all_or_nothing_and_release_frees() {
        let mut t = PageTables::new(5, 4, 3, 10);
        assert_eq!(t.stride(), 3);
        t.reserve(0, 9).unwrap(); // 3 pages
        assert_eq!(t.missing(0, 10), 0);
        assert_eq!(t.free_pages(), 2);
        assert_eq!(
            t.reserve(1, 12).unwrap_err(),
            PagesExhausted { needed: 3, free: 2 }
        );
        assert_eq!(t.table()[3..6], [-1, -1, -1]);
        t.reserve(1, 5).unwrap();
        check_counts(&t);
        assert_eq!(t.free_pages(), 0);
        t.release(0);
        assert_eq!(t.free_pages(), 3);
        assert_eq!(t.table()[..3], [-1, -1, -1]);
        check_counts(&t);
    }

    #[test]
    fn a_fork_shares_pages_and_copies_on_write() {
        let mut t = PageTables::new(8, 2, 2, 6);
        t.reserve(0, 5).unwrap(); // pages for slots 0..6
        t.take_dirty();
        t.share(0, 1);
        assert!(t.take_dirty());
        assert_eq!(t.table()[..3], t.table()[3..]);
        check_counts(&t);
        // The source's write into its shared last page moves it onto a copy...
        let copy = t.before_write(0, 5).unwrap().expect("shared page");
        assert_eq!(copy.from as i32, t.table()[5]);
        assert_eq!(copy.to as i32, t.table()[2]);
        // ...after which the fork holds the old page alone and writes in place.
        assert_eq!(t.before_write(1, 5).unwrap(), None);
        assert_eq!(t.before_write(0, 4).unwrap(), None);
        check_counts(&t);
        // Releasing the source keeps the pages the fork still shares.
        t.release(0);
        assert!(t.table()[3..].iter().all(|&e| e >= 0));
        check_counts(&t);
        t.release(1);
        assert_eq!(t.free_pages(), 8);
    }

    #[test]
    fn truncate_frees_the_pages_past_the_kept_slots() {
        let mut t = PageTables::new(8, 4, 2, 16);
        t.reserve(0, 13).unwrap();
        assert_eq!(t.free_pages(), 4);
        t.share(0, 1);
        // Row 1 keeps slots 0..5 (pages 0 and 1); pages 2 and 3 stay with row 0.
        t.truncate(1, 5);
        check_counts(&t);
        assert_eq!(t.free_pages(), 4);
        assert_eq!(&t.table()[4..], &[t.table()[0], t.table()[1], -1, -1]);
        t.truncate(0, 5);
        check_counts(&t);
        assert_eq!(t.free_pages(), 6);
        t.truncate(0, 0);
        t.truncate(1, 0);
        check_counts(&t);
        assert_eq!(t.free_pages(), 8);
    }

    #[test]
    fn copy_on_write_needs_a_free_page() {
        let mut t = PageTables::new(2, 4, 2, 4);
        t.reserve(0, 4).unwrap();
        t.share(0, 1);
        t.reserve(1, 4).unwrap(); // already covered: takes nothing
        assert_eq!(t.free_pages(), 1);
        t.before_write(1, 0).unwrap().unwrap();
        assert_eq!(
            t.before_write(0, 0).unwrap(),
            None,
            "the source holds its page alone again"
        );
        let mut full = PageTables::new(1, 4, 2, 4);
        full.reserve(0, 1).unwrap();
        full.share(0, 1);
        assert_eq!(
            full.before_write(1, 3).unwrap_err(),
            PagesExhausted { needed: 1, free: 0 }
        );
        check_counts(&full);
    }

    #[test]
    fn random_operations_keep_the_counts_right() {
        // A fixed LCG: the sequence of operations is the same on every run.
        let mut state = 0x2545_F491_4F6C_DD1Du64;
        let mut next = |n: usize| {
            state = state
                .wrapping_mul(6_364_136_223_846_793_005)
                .wrapping_add(1);
            (state >> 33) as usize % n
        };
        let (rows, slots) = (6, 13);
        let mut t = PageTables::new(16, 3, rows, slots);
        for _ in 0..2000 {
            let row = next(rows);
            match next(4) {
                0 => {
                    let _ = t.reserve(row, next(slots + 1));
                }
                1 => t.release(row),
                2 => t.share(next(rows), row),
                _ => {
                    let _ = t.before_write(row, next(slots));
                }
            }
            check_counts(&t);
        }
    }
}
