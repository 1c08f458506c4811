//! The dedup window of a room: the last N client message ids with the
//! sequence each got, so a retry is acked with the original sequence and not
//! stored twice (PROTOCOL.md §5). Keyed by (user, id): ids are the client's
//! and two users may pick the same one.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;

type Key = (Arc<str>, String);

pub struct Dedup {
    cap: usize,
    seqs: HashMap<Key, u64>,
    /// Insertion order, for eviction; `(key, seq)` so a stale entry of a
    /// removed id never evicts a newer one.
    order: VecDeque<(Key, u64)>,
}

impl Dedup {
    pub fn new(cap: usize) -> Dedup {
        Dedup {
            cap,
            seqs: HashMap::new(),
            order: VecDeque::new(),
        }
    }

    pub fn get(&self, user: &Arc<str>, id: &str) -> Option<u64> {
        // A borrowed-key lookup would need a custom Borrow impl; ids are short.
        self.seqs.get(&(user.clone(), id.to_owned())).copied()
    }

    pub fn insert(&mut self, user: Arc<str>, id: String, seq: u64) {
        if self.cap == 0 {
            return;
        }
        let key = (user, id);
        self.seqs.insert(key.clone(), seq);
        self.order.push_back((key, seq));
        while self.order.len() > self.cap {
            let (old, old_seq) = self.order.pop_front().expect("non-empty");
            if self.seqs.get(&old) == Some(&old_seq) {
                self.seqs.remove(&old);
            }
        }
    }

    /// Forgets an id whose message was not stored (failed commit).
    pub fn remove(&mut self, user: &Arc<str>, id: &str, seq: u64) {
        let key = (user.clone(), id.to_owned());
        if self.seqs.get(&key) == Some(&seq) {
            self.seqs.remove(&key);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn remembers_the_last_n() {
        let u: Arc<str> = "u".into();
        let mut d = Dedup::new(2);
        d.insert(u.clone(), "a".into(), 1);
        d.insert(u.clone(), "b".into(), 2);
        assert_eq!(d.get(&u, "a"), Some(1));
        d.insert(u.clone(), "c".into(), 3);
        assert_eq!(d.get(&u, "a"), None);
        assert_eq!(d.get(&u, "c"), Some(3));
        assert_eq!(d.get(&"v".into(), "c"), None);
    }

    #[test]
    fn remove_only_forgets_that_sequence() {
        let u: Arc<str> = "u".into();
        let mut d = Dedup::new(4);
        d.insert(u.clone(), "a".into(), 1);
        d.remove(&u, "a", 9);
        assert_eq!(d.get(&u, "a"), Some(1));
        d.remove(&u, "a", 1);
        assert_eq!(d.get(&u, "a"), None);
    }
}
