//! Sequence ids and the slot table that issues them: the one rule, shared by the CPU
//! [`crate::DecodeBatch`] and the kernel decoder, for which id names which live sequence.

use std::fmt;

use crate::error::RequestError;

/// A live sequence of one batch: the slot it occupies and that slot's generation when the id
/// was issued. Removing a sequence bumps its slot's generation, so an id kept after `remove`
/// is [`RequestError::StaleSequence`] — never silently the next request placed in the slot.
/// An id is meaningful only to the batch that issued it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SeqId {
    slot: u32,
    generation: u32,
}

impl SeqId {
    /// The slot this id was issued for, in `0..max_batch`: the index of the sequence's caches
    /// and of its rows in per-slot device buffers.
    pub fn slot(self) -> usize {
        self.slot as usize
    }

    /// How many sequences had been removed from the slot when this id was issued.
    pub fn generation(self) -> u32 {
        self.generation
    }
}

/// `slot.generation`, as error messages show it.
impl fmt::Display for SeqId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}", self.slot, self.generation)
    }
}

/// `max` slots, each empty or holding one `T`, with the generation counters that make
/// [`SeqId`]s unambiguous. Insertion takes the lowest free slot.
#[derive(Debug, Clone)]
pub struct Slots<T> {
    entries: Vec<Entry<T>>,
}

#[derive(Debug, Clone)]
struct Entry<T> {
    generation: u32,
    value: Option<T>,
}

impl<T> Slots<T> {
    /// `max` empty slots (at most `u32::MAX`: more are never used, the table refuses them
    /// with [`RequestError::BatchFull`]).
    pub fn new(max: usize) -> Self {
        let max = max.min(u32::MAX as usize);
        Slots {
            entries: (0..max)
                .map(|_| Entry {
                    generation: 0,
                    value: None,
                })
                .collect(),
        }
    }

    /// Slots in all (`max_batch`).
    pub fn capacity(&self) -> usize {
        self.entries.len()
    }

    /// Slots holding a sequence.
    pub fn live(&self) -> usize {
        self.entries.iter().filter(|e| e.value.is_some()).count()
    }

    /// The id the next [`Slots::insert`] would return, or [`RequestError::BatchFull`]: lets a
    /// caller run the work that fills a slot before committing it.
    pub fn next_free(&self) -> Result<SeqId, RequestError> {
        self.entries
            .iter()
            .position(|e| e.value.is_none())
            .map(|slot| SeqId {
                slot: slot as u32,
                generation: self.entries[slot].generation,
            })
            .ok_or(RequestError::BatchFull {
                max: self.entries.len(),
            })
    }

    /// Puts `value` in the lowest free slot and returns its id.
    pub fn insert(&mut self, value: T) -> Result<SeqId, RequestError> {
        let id = self.next_free()?;
        self.entries[id.slot()].value = Some(value);
        Ok(id)
    }

    /// Checks that `id` names the sequence its slot holds now: [`RequestError::UnknownSequence`]
    /// for a slot outside the table or one never filled with this generation,
    /// [`RequestError::StaleSequence`] for an id whose sequence was removed.
    pub fn check(&self, id: SeqId) -> Result<(), RequestError> {
        let entry = self
            .entries
            .get(id.slot())
            .ok_or(RequestError::UnknownSequence { seq: id })?;
        match (&entry.value, entry.generation.cmp(&id.generation)) {
            (Some(_), std::cmp::Ordering::Equal) => Ok(()),
            (_, std::cmp::Ordering::Greater) => Err(RequestError::StaleSequence {
                seq: id,
                generation: entry.generation,
            }),
            _ => Err(RequestError::UnknownSequence { seq: id }),
        }
    }

    /// The value of sequence `id` (checked as [`Slots::check`] does).
    pub fn get(&self, id: SeqId) -> Result<&T, RequestError> {
        self.check(id)?;
        Ok(self.entries[id.slot()]
            .value
            .as_ref()
            .expect("check found a value"))
    }

    /// The value of sequence `id`, mutably.
    pub fn get_mut(&mut self, id: SeqId) -> Result<&mut T, RequestError> {
        self.check(id)?;
        Ok(self.entries[id.slot()]
            .value
            .as_mut()
            .expect("check found a value"))
    }

    /// Empties `id`'s slot and bumps its generation (ids issued before are stale from now
    /// on); returns the value it held.
    pub fn remove(&mut self, id: SeqId) -> Result<T, RequestError> {
        self.check(id)?;
        let entry = &mut self.entries[id.slot()];
        // A slot reused 2^32 times wraps to generation 0: ids that old are not kept by anyone.
        entry.generation = entry.generation.wrapping_add(1);
        Ok(entry.value.take().expect("check found a value"))
    }

    /// Ids and values of the live sequences, in slot order.
    pub fn iter(&self) -> impl Iterator<Item = (SeqId, &T)> {
        self.entries.iter().enumerate().filter_map(|(slot, e)| {
            e.value.as_ref().map(|v| {
                (
                    SeqId {
                        slot: slot as u32,
                        generation: e.generation,
                    },
                    v,
                )
            })
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_removed_id_is_stale_even_when_its_slot_is_reused() {
        let mut slots = Slots::new(2);
        let a = slots.insert("a").unwrap();
        let b = slots.insert("b").unwrap();
        assert_eq!((a.slot(), b.slot()), (0, 1));
        assert!(matches!(
            slots.insert("c"),
            Err(RequestError::BatchFull { max: 2 })
        ));
        assert_eq!(slots.remove(a).unwrap(), "a");
        let c = slots.insert("c").unwrap();
        assert_eq!(c.slot(), a.slot());
        assert_ne!(c, a);
        assert_eq!(*slots.get(c).unwrap(), "c");
        assert!(matches!(
            slots.get(a),
            Err(RequestError::StaleSequence { seq, generation: 1 }) if seq == a
        ));
        assert!(matches!(
            slots.remove(a),
            Err(RequestError::StaleSequence { .. })
        ));
        assert_eq!(*slots.get(b).unwrap(), "b");
        assert_eq!(slots.live(), 2);
        let ids: Vec<SeqId> = slots.iter().map(|(id, _)| id).collect();
        assert_eq!(ids, vec![c, b]);
    }

    #[test]
    fn ids_of_other_tables_or_slots_are_unknown() {
        let mut small = Slots::new(1);
        let mut big = Slots::new(4);
        for _ in 0..4 {
            big.insert(()).unwrap();
        }
        let far = big.iter().last().unwrap().0;
        assert!(matches!(
            small.check(far),
            Err(RequestError::UnknownSequence { .. })
        ));
        // An empty slot whose generation matches: never issued, or issued by another table.
        let fresh = small.next_free().unwrap();
        assert!(matches!(
            small.check(fresh),
            Err(RequestError::UnknownSequence { .. })
        ));
        small.insert(()).unwrap();
        assert!(small.check(fresh).is_ok());
    }
}
