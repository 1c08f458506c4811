//! A store that fails or stalls on command, over any real store: the one
//! place tests inject faults into the log.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex};

use parlor::protocol::RoomName;
use parlor::store::{
    Batch, MemoryStore, ReadLimit, Retention, RoomLog, RoomSummary, Sequencing, Store, StoreError,
    StoredMessage,
};
use tokio::sync::watch;

/// A gate a store call waits at until the test opens it; the test can await
/// the moment a call arrives.
pub struct Gate {
    open: Mutex<bool>,
    opened: Condvar,
    arrived: watch::Sender<bool>,
}

impl Gate {
    pub fn new() -> Arc<Gate> {
        Arc::new(Gate {
            open: Mutex::new(false),
            opened: Condvar::new(),
            arrived: watch::channel(false).0,
        })
    }

    /// Blocks the calling (store) thread until the gate opens.
    fn pass(&self) {
        self.arrived.send_replace(true);
        let mut open = self.open.lock().unwrap();
        while !*open {
            open = self.opened.wait(open).unwrap();
        }
    }

    /// Resolves once a store call is waiting at the gate.
    pub async fn arrived(&self) {
        let mut rx = self.arrived.subscribe();
        let _ = rx.wait_for(|a| *a).await;
    }

    pub fn open(&self) {
        *self.open.lock().unwrap() = true;
        self.opened.notify_all();
    }
}

fn injected(what: &str) -> StoreError {
    StoreError::storage("injected fault", std::io::Error::other(what.to_string()))
}

pub struct FaultyStore {
    pub inner: Arc<dyn Store>,
    pub fail_append: AtomicBool,
    pub fail_load: AtomicBool,
    /// Loading this room waits at the gate.
    pub block_load: Mutex<Option<(RoomName, Arc<Gate>)>>,
    /// The next append waits at the gate.
    pub block_append: Mutex<Option<Arc<Gate>>>,
    /// Appends of a batch with a message of this room fail.
    pub poison: Mutex<Option<RoomName>>,
    /// Loading this room panics, as redb does on a damaged page.
    pub panic_load: Mutex<Option<RoomName>>,
    /// Every write (append, write probe) fails while set, as on a full disk.
    pub failing_writes: AtomicBool,
}

impl FaultyStore {
    pub fn new() -> Arc<FaultyStore> {
        Self::over(Arc::new(MemoryStore::new()))
    }

    pub fn over(inner: Arc<dyn Store>) -> Arc<FaultyStore> {
        Arc::new(FaultyStore {
            inner,
            fail_append: AtomicBool::new(false),
            fail_load: AtomicBool::new(false),
            block_load: Mutex::new(None),
            block_append: Mutex::new(None),
            poison: Mutex::new(None),
            panic_load: Mutex::new(None),
            failing_writes: AtomicBool::new(false),
        })
    }

    /// Makes loading `room` wait until the returned gate opens.
    pub fn stall_load(&self, room: &str) -> Arc<Gate> {
        let gate = Gate::new();
        *self.block_load.lock().unwrap() = Some((RoomName::parse(room).unwrap(), gate.clone()));
        gate
    }

    /// Makes the next append wait until the returned gate opens.
    pub fn stall_next_append(&self) -> Arc<Gate> {
        let gate = Gate::new();
        *self.block_append.lock().unwrap() = Some(gate.clone());
        gate
    }
}

impl Store for FaultyStore {
    fn sequencing(&self) -> Sequencing {
        self.inner.sequencing()
    }
    fn load_room(&self, room: &RoomName, dedup_window: usize) -> Result<RoomLog, StoreError> {
        if self.fail_load.swap(false, Ordering::SeqCst) {
            return Err(injected("load_room"));
        }
        let gate = match &*self.block_load.lock().unwrap() {
            Some((r, gate)) if r == room => Some(gate.clone()),
            _ => None,
        };
        if let Some(gate) = gate {
            gate.pass();
        }
        if self.panic_load.lock().unwrap().as_ref() == Some(room) {
            panic!("injected panic loading {room}");
        }
        self.inner.load_room(room, dedup_window)
    }
    fn epoch(&self, room: &RoomName) -> Result<Option<String>, StoreError> {
        self.inner.epoch(room)
    }
    fn append(&self, batch: &mut Batch) -> Result<(), StoreError> {
        if let Some(gate) = self.block_append.lock().unwrap().take() {
            gate.pass();
        }
        if self.fail_append.swap(false, Ordering::SeqCst) {
            return Err(injected("append"));
        }
        if self.failing_writes.load(Ordering::SeqCst) {
            return Err(injected("No space left on device"));
        }
        if let Some(room) = &*self.poison.lock().unwrap() {
            if batch.appends.iter().any(|a| &a.room == room) {
                return Err(injected("append of a poisoned room"));
            }
        }
        self.inner.append(batch)
    }
    fn read(
        &self,
        room: &RoomName,
        after: u64,
        upto: u64,
        limit: ReadLimit,
    ) -> Result<Vec<StoredMessage>, StoreError> {
        self.inner.read(room, after, upto, limit)
    }
    fn first_retained(&self, room: &RoomName) -> Result<u64, StoreError> {
        self.inner.first_retained(room)
    }
    fn rooms(
        &self,
        after: Option<&RoomName>,
        limit: usize,
    ) -> Result<Vec<RoomSummary>, StoreError> {
        self.inner.rooms(after, limit)
    }
    fn room_count(&self) -> usize {
        self.inner.room_count()
    }
    fn expired_rooms(&self, before_ms: u64, limit: usize) -> Result<Vec<RoomName>, StoreError> {
        self.inner.expired_rooms(before_ms, limit)
    }
    fn apply_retention(&self, policy: &Retention, max_delete: usize) -> Result<usize, StoreError> {
        self.inner.apply_retention(policy, max_delete)
    }
    fn flush(&self) -> Result<(), StoreError> {
        self.inner.flush()
    }
    fn describe(&self) -> String {
        format!("faulty {}", self.inner.describe())
    }
    fn probe_writes(&self) -> Result<(), StoreError> {
        if self.failing_writes.load(Ordering::SeqCst) {
            return Err(injected("No space left on device"));
        }
        self.inner.probe_writes()
    }
}
