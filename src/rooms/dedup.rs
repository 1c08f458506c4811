//! The dedup window of a room: the last N client message ids with the
//! sequence each got, so a retry is acked with the original sequence and not
//! stored twice (PROTOCOL.md §5). Keyed by (user, id): ids are the client's
//! and two users may pick the same one.
//!
//! A (user, id) is kept as its fingerprint, not as strings: a 128-bit
//! SipHash-2-4 under a random key of the window's own. Two pairs share a
//! fingerprint only by a collision of a keyed 128-bit function, ≈ 2⁻¹²⁸ per
//! pair compared (a window of 10 000 ids taking 10⁹ messages a day would
//! see one in ≈ 10²² years), and clients cannot aim at one without the key,
//! which never leaves the process. So an entry is 24 bytes, where the
//! strings cost ≈ 90 (the user's reference, the id's own copy on the heap),
//! and a published message allocates nothing here.
//!
//! Every message with an id costs a lookup and an insert that evicts the
//! oldest id, so each id is kept once, in a ring in insertion order; the
//! index holds ring positions only, found by the fingerprint's first half.
//! A lookup allocates nothing, each operation hashes its key once, and
//! eviction and the index's growth reuse the stored fingerprints.

use std::collections::VecDeque;
use std::hash::Hasher;

use hashbrown::hash_table::Entry as Slot;
use hashbrown::HashTable;
use siphasher::sip128::{Hasher128, SipHasher24};

/// The fingerprint of a (user, id).
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
struct Key(u64, u64);

impl Key {
    /// What the index hashes by: half of a keyed hash is as good as any.
    fn hash(self) -> u64 {
        self.0
    }
}

struct Entry {
    key: Key,
    seq: u64,
}

/// A (user, id) that `Dedup::check` did not find, with its fingerprint.
#[must_use]
pub struct Absent {
    key: Key,
}

pub struct Dedup {
    cap: usize,
    /// The fingerprints' key, random per window.
    hasher: SipHasher24,
    /// Ids in insertion order, the oldest first; `ring[i]` is at position
    /// `evicted + i`. May hold stale entries (an id inserted again, or
    /// removed), which the index no longer points at.
    ring: VecDeque<Entry>,
    /// Position of `ring[0]`: the ids evicted so far.
    evicted: u64,
    /// Invariant: for each remembered (user, id), exactly one position, that
    /// of its newest entry in `ring`.
    index: HashTable<u64>,
}

/// The entry at `position` of a ring whose first entry is at `evicted`.
fn at(ring: &VecDeque<Entry>, evicted: u64, position: u64) -> &Entry {
    &ring[(position - evicted) as usize]
}

impl Dedup {
    pub fn new(cap: usize) -> Dedup {
        Dedup {
            cap,
            hasher: SipHasher24::new_with_keys(rand::random(), rand::random()),
            ring: VecDeque::new(),
            evicted: 0,
            index: HashTable::new(),
        }
    }

    fn key(&self, user: &str, id: &str) -> Key {
        let mut h = self.hasher;
        // The user's length first, so that the split between user and id
        // is part of what is hashed ("ab" + "c" is not "a" + "bc").
        h.write_u64(user.len() as u64);
        h.write(user.as_bytes());
        h.write(id.as_bytes());
        let h = h.finish128();
        Key(h.h1, h.h2)
    }

    fn entry(&self, position: u64) -> &Entry {
        at(&self.ring, self.evicted, position)
    }

    /// The index slot of a fingerprint, if remembered.
    fn find(&self, key: Key) -> Option<u64> {
        self.index
            .find(key.hash(), |&p| self.entry(p).key == key)
            .copied()
    }

    pub fn get(&self, user: &str, id: &str) -> Option<u64> {
        self.check(user, id).ok()
    }

    /// The sequence (user, id) got, or proof that it is not remembered,
    /// which `insert_absent` files without hashing and probing again: a
    /// published message pays one lookup, not two.
    pub fn check(&self, user: &str, id: &str) -> Result<u64, Absent> {
        let key = self.key(user, id);
        match self.find(key) {
            Some(p) => Ok(self.entry(p).seq),
            None => Err(Absent { key }),
        }
    }

    /// Remembers an id `check` found absent. The window must not have
    /// changed since: the `Absent` borrows nothing, so the caller keeps to
    /// that (the shard checks and inserts within one publish).
    pub fn insert_absent(&mut self, absent: Absent, seq: u64) {
        if self.cap == 0 {
            return;
        }
        let key = absent.key;
        debug_assert!(self.find(key).is_none());
        let position = self.evicted + self.ring.len() as u64;
        let (ring, evicted) = (&self.ring, self.evicted);
        let rehash = |&p: &u64| at(ring, evicted, p).key.hash();
        self.index.insert_unique(key.hash(), position, rehash);
        self.push(Entry { key, seq });
    }

    pub fn insert(&mut self, user: &str, id: &str, seq: u64) {
        if self.cap == 0 {
            return;
        }
        let key = self.key(user, id);
        let position = self.evicted + self.ring.len() as u64;
        let (ring, evicted) = (&self.ring, self.evicted);
        let at = |p: u64| at(ring, evicted, p);
        // One probe: an id seen before moves to its new entry.
        let slot = self
            .index
            .entry(key.hash(), |&p| at(p).key == key, |&p| at(p).key.hash());
        match slot {
            Slot::Occupied(mut o) => *o.get_mut() = position,
            Slot::Vacant(v) => {
                v.insert(position);
            }
        }
        self.push(Entry { key, seq });
    }

    fn push(&mut self, entry: Entry) {
        self.ring.push_back(entry);
        while self.ring.len() > self.cap {
            self.evict_oldest();
        }
    }

    fn evict_oldest(&mut self) {
        let old = self.ring.pop_front().expect("non-empty");
        let position = self.evicted;
        self.evicted += 1;
        if let Ok(slot) = self.index.find_entry(old.key.hash(), |&p| p == position) {
            slot.remove();
        }
    }

    /// Forgets an id whose message was not stored (failed commit).
    pub fn remove(&mut self, user: &str, id: &str, seq: u64) {
        let key = self.key(user, id);
        let (ring, evicted) = (&self.ring, self.evicted);
        let found = self.index.find_entry(key.hash(), |&p| {
            let e = at(ring, evicted, p);
            e.key == key && e.seq == seq
        });
        if let Ok(slot) = found {
            slot.remove();
        }
    }

    /// Ids remembered.
    pub fn len(&self) -> usize {
        self.index.len()
    }

    pub fn is_empty(&self) -> bool {
        self.index.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn remembers_the_last_n() {
        let u = "u";
        let mut d = Dedup::new(2);
        d.insert(u, "a", 1);
        d.insert(u, "b", 2);
        assert_eq!(d.get(u, "a"), Some(1));
        d.insert(u, "c", 3);
        assert_eq!(d.get(u, "a"), None);
        assert_eq!(d.get(u, "c"), Some(3));
        assert_eq!(d.get("v", "c"), None);
    }

    #[test]
    fn remove_only_forgets_that_sequence() {
        let u = "u";
        let mut d = Dedup::new(4);
        d.insert(u, "a", 1);
        d.remove(u, "a", 9);
        assert_eq!(d.get(u, "a"), Some(1));
        d.remove(u, "a", 1);
        assert_eq!(d.get(u, "a"), None);
    }

    #[test]
    fn an_id_inserted_again_outlives_its_first_entry() {
        let u = "u";
        let mut d = Dedup::new(2);
        d.insert(u, "a", 1);
        d.insert(u, "a", 2);
        // Evicts the first entry of "a": the newer one stays.
        d.insert(u, "b", 3);
        assert_eq!(d.get(u, "a"), Some(2));
        assert_eq!(d.len(), 2);
        d.insert(u, "c", 4);
        assert_eq!(d.get(u, "a"), None);
        assert_eq!(d.get(u, "b"), Some(3));
    }

    #[test]
    fn a_removed_id_inserted_again_is_not_evicted_by_its_old_entry() {
        let u = "u";
        let mut d = Dedup::new(3);
        d.insert(u, "a", 1);
        d.remove(u, "a", 1);
        d.insert(u, "a", 2);
        d.insert(u, "b", 3);
        // Evicts the removed entry of "a" (position 0), not the live one.
        d.insert(u, "c", 4);
        assert_eq!(d.get(u, "a"), Some(2));
    }

    #[test]
    fn a_zero_window_remembers_nothing() {
        let u = "u";
        let mut d = Dedup::new(0);
        d.insert(u, "a", 1);
        assert_eq!(d.get(u, "a"), None);
        assert!(d.is_empty());
    }

    /// Random inserts, retries and removals against the plainest model of
    /// the window: the last `cap` inserts, newest first.
    #[test]
    fn agrees_with_a_list_of_the_last_inserts() {
        use rand::{Rng, SeedableRng};
        for seed in 0..50u64 {
            let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
            let cap = rng.random_range(1..20usize);
            let users = ["a", "b", "ab"];
            let ids = ["", "1", "b", "ab", "x", "11"];
            let mut d = Dedup::new(cap);
            // (user, id, seq, removed), oldest first; at most `cap`.
            let mut model: Vec<(&str, &str, u64, bool)> = Vec::new();
            let lookup = |model: &[(&str, &str, u64, bool)], u: &str, id: &str| {
                let newest = model.iter().rev().find(|e| e.0 == u && e.1 == id)?;
                (!newest.3).then_some(newest.2)
            };
            for step in 0..400u64 {
                let u = users[rng.random_range(0..users.len())];
                let id = ids[rng.random_range(0..ids.len())];
                match rng.random_range(0..4) {
                    0 => {
                        // A failed commit: forget the newest sequence, or a wrong one.
                        let seq = lookup(&model, u, id).unwrap_or(step) + rng.random_range(0..2);
                        d.remove(u, id, seq);
                        if let Some(e) = model.iter_mut().rev().find(|e| e.0 == u && e.1 == id) {
                            if !e.3 && e.2 == seq {
                                e.3 = true;
                            }
                        }
                    }
                    1 => {
                        // A publish: a retry is answered, a new id filed.
                        match d.check(u, id) {
                            Ok(seq) => assert_eq!(Some(seq), lookup(&model, u, id)),
                            Err(absent) => {
                                assert_eq!(lookup(&model, u, id), None);
                                d.insert_absent(absent, step);
                                model.push((u, id, step, false));
                            }
                        }
                    }
                    _ => {
                        d.insert(u, id, step);
                        model.push((u, id, step, false));
                    }
                }
                if model.len() > cap {
                    model.remove(0);
                }
                for u in &users {
                    for id in ids {
                        assert_eq!(
                            d.get(u, id),
                            lookup(&model, u, id),
                            "seed {seed} step {step}: {u}/{id}"
                        );
                    }
                }
            }
        }
    }
}
