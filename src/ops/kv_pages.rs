//! Paged KV caches: the block table every op that writes or reads a cache accepts.
//!
//! A paged cache is a pool of [`PagePool::pages`] pages per layer, each holding
//! [`PagePool::page_size`] slots of every kv head (`[kv_heads][page_size][head_dim]`). Slot `s`
//! of sequence `seq` lies in page `table[seq · stride + s / page_size]` at slot
//! `s mod page_size` of that page (vLLM's PagedAttention layout, with slots still positions or
//! ring slots). A table entry below 0 or at least `pages` is "no page": writers skip such a
//! row, readers treat its keys as absent. The rule itself lives in
//! `cuda/include/stag_cache.cuh`; this module builds and checks the kernels' `StagKvPaging`.

use crate::device::kernel::Retained;
use crate::device::DeviceView;
use crate::error::{DeviceError, Result};
use crate::ffi::StagKvPaging;

/// The pool a paged cache lives in (see the module documentation).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PagePool {
    /// Pages in the pool (≥ 1); valid table entries are `0..pages`.
    pub pages: usize,
    /// Slots per page (≥ 1).
    pub page_size: usize,
}

/// The block table of a paged cache on the device: `stride` page ids per sequence, sequence
/// `seq`'s at `table[seq · stride ..]`. It must hold `seqs · stride` entries for the cache's
/// `seqs` sequences and `stride · page_size` must cover the cache's slots per sequence.
#[derive(Clone, Copy, Debug)]
pub struct BlockTable<'a> {
    /// The page ids, int32.
    pub table: DeviceView<'a, i32>,
    /// Entries per sequence.
    pub stride: usize,
}

impl<'a> BlockTable<'a> {
    /// The table `table` with `stride` entries per sequence.
    pub fn new(table: DeviceView<'a, i32>, stride: usize) -> Self {
        BlockTable { table, stride }
    }
}

/// The kernels' paging fields for a cache of `seqs` sequences and `slots` slots per sequence
/// (all zero when dense), and the table's allocation to retain. A pool needs a table and a
/// table a pool; every size is checked to fit the kernels' u32 fields.
pub(crate) fn paging_params(
    pool: Option<PagePool>,
    table: Option<&BlockTable<'_>>,
    seqs: usize,
    slots: usize,
) -> Result<(StagKvPaging, Option<Retained>)> {
    let (pool, table) = match (pool, table) {
        (None, None) => return Ok((StagKvPaging::default(), None)),
        (Some(_), None) => {
            return Err(DeviceError::invalid(
                "block_table",
                "a paged cache layout needs a block table",
            ))
        }
        (None, Some(_)) => {
            return Err(DeviceError::invalid(
                "block_table",
                "given for a dense cache layout (use a paged layout)",
            ))
        }
        (Some(pool), Some(table)) => (pool, table),
    };
    if pool.page_size == 0 {
        return Err(DeviceError::invalid("page_size", "must be at least 1"));
    }
    if pool.pages == 0 || pool.pages > i32::MAX as usize {
        return Err(DeviceError::invalid(
            "pages",
            format!("{} must be between 1 and 2^31 - 1", pool.pages),
        ));
    }
    if pool.page_size > u32::MAX as usize {
        return Err(DeviceError::invalid("page_size", "exceeds u32"));
    }
    if table.stride == 0 || table.stride > u32::MAX as usize {
        return Err(DeviceError::invalid(
            "block_table.stride",
            format!("{} must be between 1 and u32::MAX", table.stride),
        ));
    }
    let covered = table
        .stride
        .checked_mul(pool.page_size)
        .ok_or_else(|| DeviceError::overflow("block_table.stride", "stride × page_size"))?;
    if covered < slots {
        return Err(DeviceError::invalid(
            "block_table.stride",
            format!(
                "{} pages of {} slots cover fewer than the cache's {slots} slots per sequence",
                table.stride, pool.page_size
            ),
        ));
    }
    let needed = seqs
        .checked_mul(table.stride)
        .ok_or_else(|| DeviceError::overflow("block_table", "seqs × stride"))?;
    if table.table.len() < needed {
        return Err(DeviceError::LengthMismatch {
            arg: "block_table",
            expected: needed,
            found: table.table.len(),
        });
    }
    let params = StagKvPaging {
        block_table: table.table.as_ptr().cast(),
        block_table_stride: table.stride as u32,
        page_size: pool.page_size as u32,
        cache_pages: pool.pages as u32,
        reserved: 0,
    };
    Ok((params, Some(table.table.retain("block_table"))))
}
