//! `GuardedStore`: the server wraps its store in one, so every call into the
//! log — room loads, catch-up reads, commits, history pages, the rooms list,
//! retention — goes through the same checks whoever makes it:
//!
//! - a panic in store code fails that call (`StoreError::Panicked`) instead
//!   of the thread that made it, and is counted (`parlor_store_panics_total`);
//! - every failed call is counted once (`parlor_store_errors_total`);
//! - damage (a panic, a record or page that cannot be read back) marks the
//!   store damaged until parlor restarts, announced once in the log with the
//!   file named (`parlor_store_damaged`);
//! - a failed write marks writes failing until a write works again
//!   (`parlor_store_writes_failing`), announced when it starts and ends.
//!
//! `health()` is what `/healthz` reports. Only the call that hit the damage
//! fails: a damaged room answers `internal`, every other room is served.

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::Arc;
use std::time::Instant;

use parking_lot::Mutex;

use super::{
    Batch, Fault, Health, ReadLimit, Retention, RoomLog, RoomSummary, Sequencing, Store,
    StoreError, StoredMessage, Tail,
};
use crate::metrics::Metrics;
use crate::protocol::RoomName;

pub struct GuardedStore {
    inner: Arc<dyn Store>,
    metrics: Arc<Metrics>,
    /// `inner.describe()`: the file, in every report.
    file: String,
    /// Held for a few instructions only: `/healthz` reads it on the runtime.
    state: Mutex<State>,
}

#[derive(Default)]
struct State {
    damaged: Option<String>,
    failing: Option<Failing>,
}

struct Failing {
    cause: String,
    since: Instant,
    failures: u64,
}

/// One call, as the guard sees it.
struct Call<'a> {
    name: &'static str,
    room: Option<&'a RoomName>,
    /// Its failure means writes fail.
    writes: bool,
    /// Its success means writes work (it wrote something durable).
    proves: bool,
}

impl<'a> Call<'a> {
    fn read(name: &'static str, room: Option<&'a RoomName>) -> Call<'a> {
        Call {
            name,
            room,
            writes: false,
            proves: false,
        }
    }

    fn write(name: &'static str, proves: bool) -> Call<'a> {
        Call {
            name,
            room: None,
            writes: true,
            proves,
        }
    }

    fn what(&self) -> String {
        match self.room {
            Some(room) => format!("{} of room {room}", self.name),
            None => self.name.to_string(),
        }
    }
}

impl GuardedStore {
    pub fn new(inner: Arc<dyn Store>, metrics: Arc<Metrics>) -> GuardedStore {
        let file = inner.describe();
        GuardedStore {
            inner,
            metrics,
            file,
            state: Mutex::new(State::default()),
        }
    }

    fn call<T>(
        &self,
        call: Call<'_>,
        f: impl FnOnce() -> Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        let result = match catch_unwind(AssertUnwindSafe(f)) {
            Ok(result) => result,
            Err(payload) => {
                self.metrics.store_panics.inc();
                Err(StoreError::panicked(&*payload))
            }
        };
        match &result {
            Ok(_) if call.proves => self.write_worked(),
            Ok(_) => {}
            Err(e) => {
                self.metrics.store_errors.inc();
                match e.fault() {
                    Fault::Damage => self.damaged(&call, e),
                    Fault::Io if call.writes => self.write_failed(e),
                    Fault::Io | Fault::Refused | Fault::Stopped => {}
                }
            }
        }
        result
    }

    fn damaged(&self, call: &Call<'_>, e: &StoreError) {
        let what = call.what();
        let first = {
            let mut state = self.state.lock();
            let first = state.damaged.is_none();
            if first {
                state.damaged = Some(match e {
                    StoreError::Unsynced(_) => format!("store file {}: {e}", self.file),
                    _ => format!(
                        "store file {} is damaged ({what}: {e}); restore it and restart parlor",
                        self.file
                    ),
                });
            }
            first
        };
        if first {
            self.metrics.store_damaged.set(1);
            tracing::error!(
                file = %self.file,
                op = %what,
                cause = %e,
                "the store file is damaged: what touches the damage gets `internal`, \
                 the rest is served; /healthz answers 503 until parlor restarts"
            );
        } else {
            tracing::warn!(op = %what, cause = %e, "store damage hit again");
        }
    }

    fn write_failed(&self, e: &StoreError) {
        let cause = e.to_string();
        let first = {
            let mut state = self.state.lock();
            match &mut state.failing {
                Some(failing) => {
                    failing.failures += 1;
                    failing.cause = cause.clone();
                    false
                }
                None => {
                    state.failing = Some(Failing {
                        cause: cause.clone(),
                        since: Instant::now(),
                        failures: 1,
                    });
                    true
                }
            }
        };
        if first {
            self.metrics.store_writes_failing.set(1);
            tracing::error!(
                file = %self.file,
                %cause,
                "store writes are failing: messages get `internal` instead of an ack; \
                 /healthz answers 503 until a write works again"
            );
        }
    }

    fn write_worked(&self) {
        let Some(failing) = self.state.lock().failing.take() else {
            return;
        };
        self.metrics.store_writes_failing.set(0);
        tracing::info!(
            file = %self.file,
            failures = failing.failures,
            after = ?failing.since.elapsed(),
            "store writes work again"
        );
    }
}

impl Store for GuardedStore {
    fn sequencing(&self) -> Sequencing {
        self.inner.sequencing()
    }

    fn load_room(&self, room: &RoomName, dedup_window: usize) -> Result<RoomLog, StoreError> {
        self.call(Call::read("load_room", Some(room)), || {
            self.inner.load_room(room, dedup_window)
        })
    }

    fn epoch(&self, room: &RoomName) -> Result<Option<String>, StoreError> {
        self.call(Call::read("epoch", Some(room)), || self.inner.epoch(room))
    }

    fn append(&self, batch: &mut Batch) -> Result<(), StoreError> {
        let wrote = !batch.is_empty();
        self.call(Call::write("append", wrote), || self.inner.append(batch))
    }

    fn read(
        &self,
        room: &RoomName,
        after: u64,
        upto: u64,
        limit: ReadLimit,
    ) -> Result<Vec<StoredMessage>, StoreError> {
        self.call(Call::read("read", Some(room)), || {
            self.inner.read(room, after, upto, limit)
        })
    }

    fn read_tail(
        &self,
        room: &RoomName,
        after: u64,
        upto: u64,
        limit: ReadLimit,
    ) -> Result<Tail, StoreError> {
        self.call(Call::read("read_tail", Some(room)), || {
            self.inner.read_tail(room, after, upto, limit)
        })
    }

    fn read_markers(&self, room: &RoomName) -> Result<Vec<(Arc<str>, u64)>, StoreError> {
        self.call(Call::read("read_markers", Some(room)), || {
            self.inner.read_markers(room)
        })
    }

    fn first_retained(&self, room: &RoomName) -> Result<u64, StoreError> {
        self.call(Call::read("first_retained", Some(room)), || {
            self.inner.first_retained(room)
        })
    }

    fn rooms(
        &self,
        after: Option<&RoomName>,
        limit: usize,
    ) -> Result<Vec<RoomSummary>, StoreError> {
        self.call(Call::read("rooms", None), || self.inner.rooms(after, limit))
    }

    fn room_count(&self) -> usize {
        self.inner.room_count()
    }

    fn expired_rooms(&self, before_ms: u64, limit: usize) -> Result<Vec<RoomName>, StoreError> {
        self.call(Call::read("expired_rooms", None), || {
            self.inner.expired_rooms(before_ms, limit)
        })
    }

    fn apply_retention(&self, policy: &Retention, max_delete: usize) -> Result<usize, StoreError> {
        // Deleting nothing writes nothing: only a failure tells.
        self.call(Call::write("retention", false), || {
            self.inner.apply_retention(policy, max_delete)
        })
    }

    fn flush(&self) -> Result<(), StoreError> {
        self.call(Call::write("flush", false), || self.inner.flush())
    }

    fn unsynced(&self) -> bool {
        self.inner.unsynced()
    }

    fn appends_in_memory(&self) -> bool {
        self.inner.appends_in_memory()
    }

    fn describe(&self) -> String {
        self.file.clone()
    }

    fn probe_writes(&self) -> Result<(), StoreError> {
        self.call(Call::write("write probe", true), || {
            self.inner.probe_writes()
        })
    }

    fn health(&self) -> Health {
        // What the store found on its own (a background sync) is adopted:
        // reported and counted like what a call found.
        let own = self.inner.health();
        if let Some(why) = own.damaged {
            if self.state.lock().damaged.is_none() {
                self.damaged(&Call::read("sync", None), &StoreError::Unsynced(why));
            }
        }
        let state = self.state.lock();
        // A store that knows it cannot write (its server is unreachable)
        // says so before any write fails.
        let failing = own.writes_failing.filter(|_| state.failing.is_none());
        Health {
            damaged: state.damaged.clone(),
            writes_failing: failing.or_else(|| {
                state.failing.as_ref().map(|f| {
                    format!(
                        "store writes to {} are failing ({} failed, the first {:.0?} ago): {}",
                        self.file,
                        f.failures,
                        f.since.elapsed(),
                        f.cause
                    )
                })
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::MemoryStore;

    /// Loads panic, appends fail while `failing`; reports `lost` itself.
    struct Broken {
        failing: std::sync::atomic::AtomicBool,
        lost: Mutex<Option<String>>,
        memory: MemoryStore,
    }

    impl Store for Broken {
        fn load_room(&self, _: &RoomName, _: usize) -> Result<RoomLog, StoreError> {
            panic!("a damaged page");
        }
        fn epoch(&self, room: &RoomName) -> Result<Option<String>, StoreError> {
            self.memory.epoch(room)
        }
        fn append(&self, batch: &mut Batch) -> Result<(), StoreError> {
            if self.failing.load(std::sync::atomic::Ordering::SeqCst) {
                return Err(StoreError::storage(
                    "commit",
                    std::io::Error::other("disk full"),
                ));
            }
            self.memory.append(batch)
        }
        fn read(
            &self,
            room: &RoomName,
            after: u64,
            upto: u64,
            limit: ReadLimit,
        ) -> Result<Vec<StoredMessage>, StoreError> {
            self.memory.read(room, after, upto, limit)
        }
        fn first_retained(&self, room: &RoomName) -> Result<u64, StoreError> {
            self.memory.first_retained(room)
        }
        fn rooms(&self, a: Option<&RoomName>, n: usize) -> Result<Vec<RoomSummary>, StoreError> {
            self.memory.rooms(a, n)
        }
        fn room_count(&self) -> usize {
            self.memory.room_count()
        }
        fn expired_rooms(&self, before: u64, n: usize) -> Result<Vec<RoomName>, StoreError> {
            self.memory.expired_rooms(before, n)
        }
        fn apply_retention(&self, p: &Retention, n: usize) -> Result<usize, StoreError> {
            self.memory.apply_retention(p, n)
        }
        fn health(&self) -> Health {
            Health {
                damaged: self.lost.lock().clone(),
                writes_failing: None,
            }
        }
    }

    fn guarded() -> (GuardedStore, Arc<Broken>, Arc<Metrics>) {
        let broken = Arc::new(Broken {
            failing: true.into(),
            lost: Mutex::new(None),
            memory: MemoryStore::new(),
        });
        let metrics = Arc::new(Metrics::new());
        (
            GuardedStore::new(broken.clone(), metrics.clone()),
            broken,
            metrics,
        )
    }

    fn a_batch() -> Batch {
        let room = RoomName::parse("r").unwrap();
        Batch {
            new_rooms: vec![crate::store::NewRoom {
                room,
                epoch: "e".into(),
            }],
            ..Batch::default()
        }
    }

    #[test]
    fn a_panic_fails_the_call_is_counted_and_marks_the_store_damaged() {
        let (store, _, metrics) = guarded();
        let room = RoomName::parse("r").unwrap();
        let e = store.load_room(&room, 10).unwrap_err();
        assert!(matches!(e, StoreError::Panicked(ref why) if why == "a damaged page"));
        assert_eq!(metrics.store_panics.get(), 1);
        assert_eq!(metrics.store_errors.get(), 1);
        assert_eq!(metrics.store_damaged.get(), 1);
        let health = store.health();
        let damaged = health.damaged.unwrap();
        assert!(damaged.contains("load_room of room r"), "{damaged}");
        // Damage stays, whatever works afterwards.
        store.epoch(&room).unwrap();
        assert!(store.health().damaged.is_some());
    }

    #[test]
    fn writes_failing_is_cleared_by_a_write_that_works_only() {
        let (store, broken, metrics) = guarded();
        store.append(&mut a_batch()).unwrap_err();
        let health = store.health();
        assert!(health.damaged.is_none());
        assert!(health.writes_failing.unwrap().contains("disk full"));
        assert_eq!(metrics.store_writes_failing.get(), 1);
        // An empty batch writes nothing and proves nothing.
        broken
            .failing
            .store(false, std::sync::atomic::Ordering::SeqCst);
        store.append(&mut Batch::default()).unwrap();
        assert!(!store.health().is_ok());
        store.append(&mut a_batch()).unwrap();
        assert!(store.health().is_ok());
        assert_eq!(metrics.store_writes_failing.get(), 0);
        assert_eq!(metrics.store_errors.get(), 1);
    }

    #[test]
    fn says_whether_appends_only_change_memory_as_its_store_does() {
        // A store that may block on writes is committed off the shards.
        let (store, _, _) = guarded();
        assert!(!store.appends_in_memory());
        let metrics = Arc::new(Metrics::new());
        let memory = GuardedStore::new(Arc::new(MemoryStore::new()), metrics);
        assert!(memory.appends_in_memory());
    }

    #[test]
    fn what_the_store_reports_itself_is_adopted() {
        let (store, broken, metrics) = guarded();
        assert!(store.health().is_ok());
        *broken.lost.lock() = Some("lost the commits since the last sync".into());
        let damaged = store.health().damaged.unwrap();
        assert!(damaged.contains("lost the commits"), "{damaged}");
        assert_eq!(metrics.store_damaged.get(), 1);
    }
}
