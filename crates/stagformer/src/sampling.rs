//! What a sampled step returns, and the bounded cache of captured step graphs.
//!
//! A step graph bakes in only its row count and whether it ends with sampling: every row's
//! sampling settings and counter are data the step uploads with its token ids
//! (`row_inputs.rs`), so requests with any mix of settings share one graph per row count. The
//! cache is bounded all the same (a long-running server sees every row count up to its batch,
//! with and without sampling) and evicts the least recently used graph.

use std::collections::HashMap;

use stagformer_kernels::device::Graph;
use stagformer_kernels::ops::sample::SamplingConfig;
use stagformer_ref::SamplingParams;

/// One row's outcome of [`crate::Decoder::step_sample`].
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Sampled {
    /// The chosen token id, as `stagformer_ref::sample::sample` picks it for the row's settings
    /// and index.
    pub token: u32,
    /// The chosen token's log-probability under the model's raw distribution,
    /// `log_softmax(logits)[token]` in f32, before temperature, top-k and top-p (the model's
    /// own probability, whatever filter chose the token; `stagformer_ref::sample::logprob`
    /// computes it in f64).
    pub logprob: f32,
}

/// The sampling kernel's settings for `params`, field for field. The kernel crate does not
/// depend on the reference, so its launch takes its own copy of the settings; this is the one
/// place the decoder crosses from one to the other.
pub(crate) fn kernel_sampling(params: &SamplingParams) -> SamplingConfig {
    SamplingConfig {
        temperature: params.temperature,
        top_k: params.top_k,
        top_p: params.top_p,
        seed: params.seed,
    }
}

/// What a step graph bakes in besides buffer addresses: its row count and whether it ends with
/// sampling (the sampler's launches depend on the shape only).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub(crate) struct GraphKey {
    pub rows: usize,
    pub samples: bool,
}

/// The most step graphs a decoder keeps ([`GraphCache`]): two per row count (with and without
/// sampling) for batches of up to 16 rows.
pub(crate) const MAX_GRAPHS: usize = 32;

/// Captured step graphs by key, at most `capacity`, evicting the least recently used. Generic
/// over what it holds so that its eviction is testable without capturing graphs.
pub(crate) struct GraphCache<G = Graph> {
    graphs: HashMap<GraphKey, (G, u64)>,
    /// Incremented by every use; a graph's stamp is its last use.
    clock: u64,
    capacity: usize,
}

impl<G> GraphCache<G> {
    pub fn new(capacity: usize) -> Self {
        GraphCache {
            graphs: HashMap::new(),
            clock: 0,
            capacity: capacity.max(1),
        }
    }

    /// The graph for `key`, marked as just used.
    pub fn get(&mut self, key: &GraphKey) -> Option<&G> {
        self.clock += 1;
        let clock = self.clock;
        self.graphs.get_mut(key).map(|(graph, used)| {
            *used = clock;
            &*graph
        })
    }

    /// The graph for `key` without marking it used (for inspection).
    pub fn peek(&self, key: &GraphKey) -> Option<&G> {
        self.graphs.get(key).map(|(graph, _)| graph)
    }

    /// Keeps `graph` for `key`, first dropping the least recently used graph when full.
    pub fn insert(&mut self, key: GraphKey, graph: G) {
        if !self.graphs.contains_key(&key) && self.graphs.len() >= self.capacity {
            let oldest = self
                .graphs
                .iter()
                .min_by_key(|(_, (_, used))| *used)
                .map(|(k, _)| *k);
            if let Some(oldest) = oldest {
                self.graphs.remove(&oldest);
            }
        }
        self.clock += 1;
        self.graphs.insert(key, (graph, self.clock));
    }

    pub fn len(&self) -> usize {
        self.graphs.len()
    }

    pub fn clear(&mut self) {
        self.graphs.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(rows: usize) -> GraphKey {
        GraphKey {
            rows,
            samples: true,
        }
    }

    #[test]
    fn the_least_recently_used_graph_goes_first() {
        let mut cache = GraphCache::new(3);
        for rows in 1..=3 {
            cache.insert(key(rows), rows);
        }
        // 1 is used again, so 2 is now the oldest.
        assert_eq!(cache.get(&key(1)), Some(&1));
        cache.insert(key(4), 4);
        assert_eq!(cache.len(), 3);
        assert!(cache.peek(&key(2)).is_none());
        for rows in [1, 3, 4] {
            assert_eq!(cache.peek(&key(rows)), Some(&rows));
        }
        // Replacing a key evicts nothing.
        cache.insert(key(4), 40);
        assert_eq!(cache.len(), 3);
        assert_eq!(cache.peek(&key(4)), Some(&40));
        cache.clear();
        assert_eq!(cache.len(), 0);
    }
}
