//! A shard's gate: while the shard's batch is with the log writer, and
//! while it gathers the next one after a commit (`gather`), the sessions
//! that queue messages for it do not wake it one by one: messages can only
//! accumulate until then. It waits for a number of queued commands; the
//! sender whose command reaches that number wakes it, as does any command
//! that is not a message (a join or a presence request is answered at
//! once), the commit's return and the gather's deadline.
//!
//! Why: each wake costs the shard a round of its driver for what may be
//! one message. With 64 publishers each awaiting its ack, each of the
//! ≈ 55 messages of a commit woke the shard while it gathered them, and
//! each straggler while the commit was in flight; when a durable store's
//! shard had a thread of its own, that was ≈ 1.2 futex calls per message,
//! where the memory store made almost none. In a burst into many small
//! rooms the shard was woken for a few messages at a time.
//!
//! No wake is lost between a sender's check and the shard's lowering the
//! gate: the sender queues (and counts an urgent command), then reads the
//! gate; the shard lowers the gate, then counts its queue and the urgent
//! commands queued but not taken; a fence on each side between the two (the
//! store-buffering pattern) makes at least one of them see the other. And
//! nothing is lost in any case: every command stays in the queue. The
//! count of urgent commands matters: a join queued just before the gate
//! went down is one command among the many the shard waits for, and its
//! sender, who saw the gate open, woke no one.

use std::sync::atomic::{fence, AtomicU64, AtomicUsize, Ordering};

use tokio::sync::futures::Notified;
use tokio::sync::Notify;

use crate::rooms::Command;

#[derive(Default)]
pub struct Gate {
    /// Queued commands the shard waits for before it looks at its queue;
    /// 0: it looks at every command (the channel wakes it).
    want: AtomicUsize,
    /// Urgent commands queued, counted by their senders after queueing.
    urgent_queued: AtomicU64,
    /// Urgent commands the shard has taken (only the shard writes it).
    urgent_taken: AtomicU64,
    notify: Notify,
}

/// Whether a command wakes a waiting shard at once: anything but a message
/// (a join or a presence request is answered without waiting for a batch).
pub fn is_urgent(cmd: &Command) -> bool {
    !matches!(cmd, Command::Publish(_))
}

impl Gate {
    /// The shard waits until `queued` commands are in its queue. It counts
    /// its queue after this (see the module doc).
    pub fn wait_for(&self, queued: usize) {
        self.want.store(queued.max(1), Ordering::Relaxed);
        fence(Ordering::SeqCst);
    }

    /// The shard's choice at the top of its loop: lowers the gate to wait
    /// for `missing` queued commands, unless its queue already holds them
    /// (`queued` counts it, after the fence) or holds an urgent command.
    /// True: lowered, the shard waits for `notified`; false: open, it looks
    /// at each command.
    pub fn lower(&self, missing: usize, queued: impl Fn() -> usize) -> bool {
        self.wait_for(missing);
        // (A sender counts after queueing: for a moment the shard may have
        // taken more than were counted; that sender then sees the gate
        // down and wakes the shard once for nothing.)
        let urgent =
            self.urgent_queued.load(Ordering::Relaxed) > self.urgent_taken.load(Ordering::Relaxed);
        if queued() < missing && !urgent {
            return true;
        }
        self.open();
        false
    }

    /// The shard took an urgent command from its queue.
    pub fn took_urgent(&self) {
        self.urgent_taken.fetch_add(1, Ordering::Relaxed);
    }

    /// The shard looks at every command again.
    pub fn open(&self) {
        if self.want.load(Ordering::Relaxed) != 0 {
            self.want.store(0, Ordering::Relaxed);
        }
    }

    /// Resolves once a sender wakes the shard (or a wake is already stored).
    pub fn notified(&self) -> Notified<'_> {
        self.notify.notified()
    }

    /// A command was queued, and `queued` are waiting now. Wakes the shard
    /// if it waits for this many, or at all for an `urgent` command. One
    /// sender wakes it; the others see the gate open.
    pub fn queued(&self, queued: usize, urgent: bool) {
        if urgent {
            self.urgent_queued.fetch_add(1, Ordering::Relaxed);
        }
        fence(Ordering::SeqCst);
        let want = self.want.load(Ordering::Relaxed);
        if want != 0
            && (urgent || queued >= want)
            && self
                .want
                .compare_exchange(want, 0, Ordering::AcqRel, Ordering::Relaxed)
                .is_ok()
        {
            self.notify.notify_one();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    async fn woken(gate: &Gate) -> bool {
        tokio::time::timeout(Duration::from_millis(1), gate.notified())
            .await
            .is_ok()
    }

    #[tokio::test(start_paused = true)]
    async fn an_open_gate_wakes_no_one() {
        let gate = Gate::default();
        gate.queued(10, false);
        gate.queued(10, true);
        assert!(!woken(&gate).await);
    }

    #[tokio::test(start_paused = true)]
    async fn the_sender_that_reaches_the_count_wakes_the_shard_once() {
        let gate = Gate::default();
        gate.wait_for(3);
        gate.queued(1, false);
        gate.queued(2, false);
        assert!(!woken(&gate).await, "2 of 3 queued");
        gate.queued(3, false);
        gate.queued(4, false);
        assert!(woken(&gate).await);
        assert!(!woken(&gate).await, "one wake, not two");
    }

    #[tokio::test(start_paused = true)]
    async fn any_other_command_wakes_the_shard_at_once() {
        let gate = Gate::default();
        gate.wait_for(50);
        gate.queued(1, true);
        assert!(woken(&gate).await);
    }

    #[tokio::test(start_paused = true)]
    async fn a_wake_before_the_shard_waits_is_kept() {
        let gate = Gate::default();
        gate.wait_for(1);
        gate.queued(1, false);
        // The shard awaits only now: the stored wake resolves it.
        assert!(woken(&gate).await);
    }

    /// Found from outside: a join sent while a commit was stalled on the
    /// disk went unanswered until the commit ended. Its sender queued it
    /// and saw the gate open; the shard then lowered the gate, counted one
    /// command (fewer than it waits for) and slept.
    #[tokio::test(start_paused = true)]
    async fn an_urgent_command_queued_before_the_gate_went_down_keeps_it_open() {
        let gate = Gate::default();
        gate.queued(1, true);
        let quiet = gate.lower(50, || 1);
        assert!(
            !quiet || woken(&gate).await,
            "the join waits for 49 messages"
        );

        // Once the shard has taken it, the gate may go down again.
        gate.took_urgent();
        assert!(gate.lower(50, || 0));
        gate.queued(1, false);
        assert!(!woken(&gate).await, "a message waits for the batch");
    }

    #[tokio::test(start_paused = true)]
    async fn an_opened_gate_stops_waking() {
        let gate = Gate::default();
        gate.wait_for(2);
        gate.open();
        gate.queued(5, true);
        assert!(!woken(&gate).await);
    }
}
