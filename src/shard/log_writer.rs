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

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::Arc;
use std::time::Instant;

use tokio::sync::mpsc;

use crate::metrics::Metrics;
use crate::store::{Batch, Store, StoreError};

/// A shard's batch on its way to the store.
pub struct Job {
    batch: Option<Batch>,
    /// Where the outcome goes, with the batch handed back for broadcasting.
    done: mpsc::UnboundedSender<Committed>,
}

pub struct Committed {
    pub batch: Batch,
    pub result: Result<(), Arc<StoreError>>,
}

impl Job {
    pub fn new(batch: Batch, done: mpsc::UnboundedSender<Committed>) -> Job {
        Job {
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
    /// flight, so at most `workers` jobs ever wait here.
    pub fn send(&self, job: Job) {
        // A send to a stopped writer drops the job, which answers for itself.
        let _ = self.tx.send(job);
    }
}

fn run(rx: std::sync::mpsc::Receiver<Job>, store: &dyn Store, metrics: &Metrics) {
    while let Ok(first) = rx.recv() {
        let mut jobs = vec![first];
        jobs.extend(rx.try_iter());
        if jobs.len() == 1 {
            let mut job = jobs.pop().expect("one job");
            let mut batch = job.batch.take().expect("unanswered job");
            let result = commit(store, metrics, &mut batch);
            job.answer(batch, result);
            continue;
        }
        // Merge by moving the contents, then hand each shard its own back.
        let mut merged = Batch::default();
        let mut sizes = Vec::with_capacity(jobs.len());
        for job in &mut jobs {
            let b = job.batch.take().expect("unanswered job");
            sizes.push((b.new_rooms.len(), b.appends.len()));
            merged.new_rooms.extend(b.new_rooms);
            merged.appends.extend(b.appends);
        }
        let result = commit(store, metrics, &mut merged);
        let mut rooms = merged.new_rooms.into_iter();
        let mut appends = merged.appends.into_iter();
        let mut parts = Vec::with_capacity(jobs.len());
        for (r, a) in sizes {
            parts.push(Batch {
                new_rooms: rooms.by_ref().take(r).collect(),
                appends: appends.by_ref().take(a).collect(),
            });
        }
        for (job, mut batch) in jobs.into_iter().zip(parts) {
            let result = match &result {
                Ok(()) => Ok(()),
                // Alone, a job fails only for what is wrong with it.
                Err(_) => commit(store, metrics, &mut batch),
            };
            job.answer(batch, result);
        }
    }
}

/// One store transaction, timed and counted; a panic in store code fails
/// the batch instead of the thread.
fn commit(store: &dyn Store, metrics: &Metrics, batch: &mut Batch) -> Result<(), Arc<StoreError>> {
    let started = Instant::now();
    let result = match catch_unwind(AssertUnwindSafe(|| store.append(batch))) {
        Ok(r) => r,
        Err(panic) => Err(StoreError::panicked(&*panic)),
    };
    metrics
        .commit_seconds
        .observe(started.elapsed().as_secs_f64());
    metrics.batch_size.observe(batch.appends.len() as f64);
    match &result {
        Ok(()) => metrics.messages_stored.inc_by(batch.appends.len() as u64),
        Err(_) => metrics.store_errors.inc(),
    }
    result.map_err(Arc::new)
}
