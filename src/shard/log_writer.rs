//! The log writer: one thread that commits what every shard hands it.
//!
//! A shard sends its round's batch as a `Job` and carries on taking and
//! sequencing messages while the commit (and its fsync) runs; the writer
//! merges every job queued at that moment into one store transaction, so one
//! sync covers all shards' waiting messages. Results go back to each shard
//! on its own channel, in the order its jobs were sent.
//!
//! Invariants the shards rely on: a shard's jobs commit in the order it sent
//! them; every job is answered exactly once, also when the store panics or
//! the writer is gone (a dropped job answers for itself); and one shard's
//! bad batch does not fail another's — when a merged commit fails, each job
//! is retried alone, so only the jobs that fail on their own are failed.
//! A log that numbers messages (a shared log) is not retried: part of the
//! merged batch may be stored (its appends carry their sequences), and a
//! second append would store those again.

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::mpsc;

use super::gather::wait_after;
use crate::metrics::Metrics;
use crate::store::{Batch, Store, StoreError};

/// A shard's batch on its way to the store.
pub struct Job {
    /// The shard that sent it (each has at most one job in flight).
    shard: usize,
    batch: Option<Batch>,
    /// Where the outcome goes, with the batch handed back for broadcasting.
    done: mpsc::UnboundedSender<Committed>,
}

pub struct Committed {
    pub batch: Batch,
    pub result: Result<(), Arc<StoreError>>,
}

impl Job {
    pub fn new(shard: usize, batch: Batch, done: mpsc::UnboundedSender<Committed>) -> Job {
        Job {
            shard,
            batch: Some(batch),
            done,
        }
    }

    /// Answers a job whose batch the writer has taken out.
    fn answer(self, batch: Batch, result: Result<(), Arc<StoreError>>) {
        let _ = self.done.send(Committed { batch, result });
    }
}

impl Drop for Job {
    /// A job dropped unanswered (the writer gone or unwinding) fails, so its
    /// shard never waits for an outcome that will not come.
    fn drop(&mut self) {
        if let Some(batch) = self.batch.take() {
            let _ = self.done.send(Committed {
                batch,
                result: Err(Arc::new(StoreError::Stopped)),
            });
        }
    }
}

/// Handle to the writer thread; the thread ends when every handle is gone.
#[derive(Clone)]
pub struct LogWriter {
    tx: std::sync::mpsc::Sender<Job>,
}

impl LogWriter {
    pub fn start(
        store: Arc<dyn Store>,
        metrics: Arc<Metrics>,
    ) -> std::io::Result<(LogWriter, std::thread::JoinHandle<()>)> {
        let (tx, rx) = std::sync::mpsc::channel::<Job>();
        let thread = std::thread::Builder::new()
            .name("parlor-log-writer".into())
            .spawn(move || run(rx, &*store, &metrics))?;
        Ok((LogWriter { tx }, thread))
    }

    /// Queues a batch. Unbounded, but each shard has at most one job in
    /// flight, so at most `--shards` jobs ever wait here.
    pub fn send(&self, job: Job) {
        // A send to a stopped writer drops the job, which answers for itself.
        let _ = self.tx.send(job);
    }
}

fn run(rx: std::sync::mpsc::Receiver<Job>, store: &dyn Store, metrics: &Metrics) {
    let mut active = Active::default();
    let mut took = Duration::ZERO;
    while let Ok(first) = rx.recv() {
        let mut jobs = vec![first];
        jobs.extend(rx.try_iter());
        // Wait for the other active shards, so one sync covers them all
        // instead of each shard's batch taking a sync of its own; as long
        // as a shard may itself gather after a commit (`gather`), so one
        // still gathering is not left to the next commit.
        let deadline = Instant::now() + wait_after(took).unwrap_or_default();
        while active.missing(&jobs) {
            let left = deadline.saturating_duration_since(Instant::now());
            match rx.recv_timeout(left) {
                Ok(job) => jobs.push(job),
                Err(_) => break,
            }
        }
        active.committing(&jobs);
        let started = Instant::now();
        commit_jobs(store, metrics, jobs);
        took = started.elapsed();
    }
}

/// Which shards sent jobs lately: those in either of the last two commits.
/// Two shards whose batches fell into alternate commits show up as active
/// both, so the next commit waits for the one not queued yet and they
/// share syncs from then on (counting only the last commit's shards
/// would keep them alternating, each paying a sync per batch).
#[derive(Default)]
struct Active {
    /// Per shard, the number of the last commit it was in (0: none).
    last_in: Vec<u64>,
    commits: u64,
}

impl Active {
    /// Whether an active shard has no job among `jobs` yet.
    fn missing(&self, jobs: &[Job]) -> bool {
        self.last_in.iter().enumerate().any(|(shard, &c)| {
            c > 0 && c + 1 >= self.commits && !jobs.iter().any(|j| j.shard == shard)
        })
    }

    fn committing(&mut self, jobs: &[Job]) {
        self.commits += 1;
        for j in jobs {
            if self.last_in.len() <= j.shard {
                self.last_in.resize(j.shard + 1, 0);
            }
            self.last_in[j.shard] = self.commits;
        }
    }
}

/// Commits every job queued at once in one transaction, and answers each.
fn commit_jobs(store: &dyn Store, metrics: &Metrics, mut jobs: Vec<Job>) {
    if jobs.len() == 1 {
        let mut job = jobs.pop().expect("one job");
        let mut batch = job.batch.take().expect("unanswered job");
        let result = commit(store, metrics, &mut batch);
        job.answer(batch, result);
        return;
    }
    // Merge by moving the contents, then hand each shard its own back.
    let mut merged = Batch::default();
    let mut sizes = Vec::with_capacity(jobs.len());
    for job in &mut jobs {
        let b = job.batch.take().expect("unanswered job");
        sizes.push((
            b.new_rooms.len(),
            b.appends.len(),
            b.expired.len(),
            b.read_markers.len(),
        ));
        merged.new_rooms.extend(b.new_rooms);
        merged.appends.extend(b.appends);
        merged.expired.extend(b.expired);
        merged.read_markers.extend(b.read_markers);
    }
    let result = commit(store, metrics, &mut merged);
    let mut rooms = merged.new_rooms.into_iter();
    let mut appends = merged.appends.into_iter();
    let mut expired = merged.expired.into_iter();
    let mut markers = merged.read_markers.into_iter();
    let mut parts = Vec::with_capacity(jobs.len());
    for (r, a, e, m) in sizes {
        parts.push(Batch {
            new_rooms: rooms.by_ref().take(r).collect(),
            appends: appends.by_ref().take(a).collect(),
            expired: expired.by_ref().take(e).collect(),
            read_markers: markers.by_ref().take(m).collect(),
        });
    }
    let numbering = store.sequencing() == crate::store::Sequencing::Log;
    for (job, mut batch) in jobs.into_iter().zip(parts) {
        let result = match &result {
            Ok(()) => Ok(()),
            Err(e) if numbering => Err(e.clone()),
            // Alone, a job fails only for what is wrong with it.
            Err(_) => commit(store, metrics, &mut batch),
        };
        job.answer(batch, result);
    }
}

/// One store transaction, timed and counted; a panic in store code fails
/// the batch instead of the thread (the server's store is a `GuardedStore`,
/// which catches and counts it first; this keeps the writer, or a shard
/// that commits in place, alive over any store).
pub fn commit(
    store: &dyn Store,
    metrics: &Metrics,
    batch: &mut Batch,
) -> Result<(), Arc<StoreError>> {
    let started = Instant::now();
    let result = match catch_unwind(AssertUnwindSafe(|| store.append(batch))) {
        Ok(r) => r,
        Err(panic) => Err(StoreError::panicked(&*panic)),
    };
    metrics
        .commit_seconds
        .observe(started.elapsed().as_secs_f64());
    metrics.batch_size.observe(batch.appends.len() as f64);
    // A failure is counted (once) by the store's guard.
    if result.is_ok() {
        metrics.messages_stored.inc_by(batch.appends.len() as u64);
    }
    result.map_err(Arc::new)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::message::StoredMessage;
    use crate::protocol::RoomName;
    use crate::store::{Append, MemoryStore, NewRoom};

    fn batch(room: &str, seqs: std::ops::RangeInclusive<u64>) -> Batch {
        let room = RoomName::parse(room).unwrap();
        let appends = seqs
            .map(|sequence| {
                let m = StoredMessage {
                    sequence,
                    timestamp: 0,
                    user: "u".into(),
                    content: "c".into(),
                    client_msg_id: None,
                };
                Append::new(room.clone(), m)
            })
            .collect();
        Batch {
            new_rooms: vec![NewRoom {
                room,
                epoch: "e".into(),
            }],
            appends,
            expired: Vec::new(),
            read_markers: Vec::new(),
        }
    }

    #[test]
    fn a_merged_commit_that_fails_fails_only_the_job_at_fault() {
        let store = MemoryStore::new();
        let metrics = Metrics::new();
        let (tx_a, mut rx_a) = mpsc::unbounded_channel();
        let (tx_b, mut rx_b) = mpsc::unbounded_channel();
        // Shard a's batch breaks its room's sequence (starts at 2).
        let jobs = vec![
            Job::new(0, batch("a", 2..=3), tx_a),
            Job::new(1, batch("b", 1..=2), tx_b),
        ];
        commit_jobs(&store, &metrics, jobs);
        let a = rx_a.try_recv().unwrap();
        let b = rx_b.try_recv().unwrap();
        let a_err = a.result.as_ref().unwrap_err();
        assert!(matches!(**a_err, StoreError::OutOfSequence { .. }));
        assert!(b.result.is_ok(), "the other shard's batch is stored");
        assert_eq!((a.batch.appends.len(), b.batch.appends.len()), (2, 2));
        let b_room = RoomName::parse("b").unwrap();
        assert_eq!(store.load_room(&b_room, 0).unwrap().last, 2);
    }

    #[test]
    fn shards_in_either_of_the_last_two_commits_are_waited_for() {
        let (tx, _rx) = mpsc::unbounded_channel();
        let job = |shard| Job::new(shard, Batch::default(), tx.clone());
        let mut active = Active::default();
        assert!(!active.missing(&[job(0)]), "nothing known: no wait");
        // Alternating: shard 0, then shard 1.
        active.committing(&[job(0)]);
        active.committing(&[job(1)]);
        assert!(
            active.missing(&[job(1)]),
            "shard 0 was in the commit before"
        );
        assert!(!active.missing(&[job(1), job(0)]));
        // A shard absent from the last two commits is not waited for.
        active.committing(&[job(1)]);
        active.committing(&[job(1)]);
        assert!(!active.missing(&[job(1)]));
    }

    #[test]
    fn a_job_dropped_unanswered_answers_stopped() {
        let (tx, mut rx) = mpsc::unbounded_channel();
        drop(Job::new(0, batch("a", 1..=1), tx));
        let c = rx.try_recv().unwrap();
        assert!(matches!(
            **c.result.as_ref().unwrap_err(),
            StoreError::Stopped
        ));
    }
}
