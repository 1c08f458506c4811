//! The log writer: one thread that commits what every shard hands it.
//!
//! A shard sends its round's messages as a `Job` and carries on taking and
//! sequencing messages while the commit (and its fsync) runs; the writer
//! merges every job queued at that moment into one store transaction, so one
//! sync covers all shards' waiting messages. Results go back to each shard
//! on its own channel, in the order the jobs were sent.
//!
//! Invariant the shards rely on: jobs commit in the order they were sent,
//! and a job that fails takes every job merged with it down too (the store
//! batch is all-or-nothing).

use std::sync::Arc;
use std::time::Instant;

use tokio::sync::mpsc;

use crate::metrics::Metrics;
use crate::store::{Append, Store, StoreError};

/// A shard's batch on its way to the store.
pub struct Job {
    pub batch: Vec<Append>,
    /// Where the outcome goes, with the batch handed back for broadcasting.
    pub done: mpsc::UnboundedSender<Committed>,
}

pub struct Committed {
    pub batch: Vec<Append>,
    pub result: Result<(), Arc<StoreError>>,
}

/// Handle to the writer thread; the thread ends when every handle is gone.
#[derive(Clone)]
pub struct Committer {
    tx: std::sync::mpsc::Sender<Job>,
}

impl Committer {
    pub fn start(
        store: Arc<dyn Store>,
        metrics: Arc<Metrics>,
    ) -> std::io::Result<(Committer, std::thread::JoinHandle<()>)> {
        let (tx, rx) = std::sync::mpsc::channel::<Job>();
        let thread = std::thread::Builder::new()
            .name("parlor-log-writer".into())
            .spawn(move || run(rx, &*store, &metrics))?;
        Ok((Committer { tx }, thread))
    }

    /// Queues a batch. Unbounded, but each shard has at most one job in
    /// flight, so at most `workers` jobs ever wait here.
    pub fn send(&self, job: Job) {
        if let Err(std::sync::mpsc::SendError(job)) = self.tx.send(job) {
            let gone = Arc::new(StoreError::Io("the log writer has stopped".into()));
            let _ = job.done.send(Committed {
                batch: job.batch,
                result: Err(gone),
            });
        }
    }
}

fn run(rx: std::sync::mpsc::Receiver<Job>, store: &dyn Store, metrics: &Metrics) {
    while let Ok(first) = rx.recv() {
        let mut jobs = vec![first];
        jobs.extend(rx.try_iter());
        // Merge by moving the messages, then hand each shard its own back.
        let lens: Vec<usize> = jobs.iter().map(|j| j.batch.len()).collect();
        let mut merged: Vec<Append> = Vec::with_capacity(lens.iter().sum());
        let mut dones = Vec::with_capacity(jobs.len());
        for job in jobs {
            merged.extend(job.batch);
            dones.push(job.done);
        }
        let started = Instant::now();
        let result = store.append(&merged).map_err(Arc::new);
        metrics
            .commit_seconds
            .observe(started.elapsed().as_secs_f64());
        metrics.batch_size.observe(merged.len() as f64);
        match &result {
            Ok(()) => metrics.messages_stored.inc_by(merged.len() as u64),
            Err(e) => {
                tracing::error!(cause = %e, messages = merged.len(), "store append failed; not acked");
                metrics.store_errors.inc();
            }
        }
        let mut rest = merged.into_iter();
        for (done, len) in dones.into_iter().zip(lens) {
            let batch: Vec<Append> = rest.by_ref().take(len).collect();
            let _ = done.send(Committed {
                batch,
                result: result.clone(),
            });
        }
    }
}
