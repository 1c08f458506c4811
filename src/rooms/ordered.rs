//! Ordered delivery of log-numbered messages (`Sequencing::Log`): a room's
//! messages reach this node from its own commits, from the room's live
//! channel (at most once, and possibly late or after a later one), and from
//! fills read from the log. Whatever the source and order, each is
//! delivered once, in sequence order: what is at or below the room's
//! committed sequence is dropped, the run that continues it is delivered,
//! and what lies beyond a gap is held (a bounded number) until the gap is
//! filled — from the live channel if it was only late, else from the log.
//!
//! Invariant: everything held is above `committed + 1`; `known` is the
//! highest sequence this node knows the log has (held, dropped for space,
//! or reported by the log itself), so a gap is `committed < known`.

use std::collections::BTreeMap;

use crate::message::StoredMessage;

/// Most messages held beyond a gap per room; more are dropped (and read
/// from the log by the fill). Each is at most a message's content
/// (≤ --max-content-bytes) and ~100 B, so ≤ 1024 × 16 KiB per room with a gap.
pub const MAX_AHEAD: usize = 1024;

#[derive(Default)]
pub struct Ordered {
    ahead: BTreeMap<u64, StoredMessage>,
    known: u64,
    /// A fill is with the log.
    pub filling: bool,
    /// A fill to the log's newest is wanted once the current one is back
    /// (the live channel was (re)subscribed meanwhile).
    pub refill: bool,
    /// A fill failed: one to the log's newest is due (scheduled in the
    /// room core's gaps), whatever is delivered meanwhile — the log may
    /// hold messages nobody has told this node of.
    pub retry: bool,
}

impl Ordered {
    /// Takes messages in any order and returns the run that continues
    /// `committed`, in order (empty when there is a gap before them).
    pub fn offer(
        &mut self,
        committed: u64,
        messages: impl IntoIterator<Item = StoredMessage>,
    ) -> Vec<StoredMessage> {
        for m in messages {
            self.known = self.known.max(m.sequence);
            if m.sequence > committed
                && (self.ahead.len() < MAX_AHEAD || self.below_last_held(m.sequence))
            {
                self.ahead.insert(m.sequence, m);
                if self.ahead.len() > MAX_AHEAD {
                    self.ahead.pop_last();
                }
            }
        }
        let mut run = Vec::new();
        let mut next = committed + 1;
        while let Some(entry) = self.ahead.first_entry() {
            if *entry.key() < next {
                entry.remove();
                continue;
            }
            if *entry.key() != next {
                break;
            }
            run.push(entry.remove());
            next += 1;
        }
        run
    }

    fn below_last_held(&self, sequence: u64) -> bool {
        self.ahead
            .last_key_value()
            .is_some_and(|(&k, _)| sequence < k)
    }

    /// The log has messages up to `last` (a tail read, an own commit).
    pub fn saw(&mut self, last: u64) {
        self.known = self.known.max(last);
    }

    /// Whether the log is known to have messages past `committed`.
    pub fn behind(&self, committed: u64) -> bool {
        self.known > committed
    }

    /// The last sequence of the current gap after `committed`: up to the
    /// first held message, or up to what is known.
    pub fn gap_end(&self, committed: u64) -> u64 {
        match self.ahead.first_key_value() {
            Some((&first, _)) if first > committed + 1 => first - 1,
            _ => self.known,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn m(seq: u64) -> StoredMessage {
        StoredMessage {
            sequence: seq,
            timestamp: 0,
            user: "u".into(),
            content: String::new(),
            client_msg_id: None,
        }
    }

    fn seqs(v: &[StoredMessage]) -> Vec<u64> {
        v.iter().map(|m| m.sequence).collect()
    }

    #[test]
    fn delivers_in_order_once_whatever_the_arrival() {
        let mut o = Ordered::default();
        assert_eq!(seqs(&o.offer(0, [m(2), m(3)])), Vec::<u64>::new());
        assert!(o.behind(0));
        assert_eq!(o.gap_end(0), 1);
        assert_eq!(seqs(&o.offer(0, [m(1), m(2)])), vec![1, 2, 3]);
        assert_eq!(seqs(&o.offer(3, [m(3), m(1), m(4)])), vec![4]);
        assert!(!o.behind(4));
    }

    #[test]
    fn holds_a_bounded_number_and_remembers_the_rest_exists() {
        let mut o = Ordered::default();
        let far = (10..10 + MAX_AHEAD as u64 + 50).map(m);
        assert!(o.offer(0, far).is_empty());
        assert_eq!(o.ahead.len(), MAX_AHEAD);
        assert_eq!(o.known, 9 + MAX_AHEAD as u64 + 50);
        // A lower one still finds room: the highest held makes way.
        assert!(o.offer(0, [m(5)]).is_empty());
        assert_eq!(o.ahead.first_key_value().map(|(k, _)| *k), Some(5));
        assert_eq!(o.ahead.len(), MAX_AHEAD);
    }
}
