//! `RedbStore` over the `Store` trait, on real redb files in temp dirs.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use parlor::config::Durability;
use parlor::protocol::RoomName;
use parlor::store::{
    Append, Batch, NewRoom, ReadLimit, RedbStore, RoomLog, Store, StoreError, StoredMessage,
};

fn room(name: &str) -> RoomName {
    RoomName::parse(name).unwrap()
}

fn open(dir: &Path) -> RedbStore {
    RedbStore::open(dir, Durability::Immediate, Duration::from_millis(10)).unwrap()
}

fn msg(seq: u64, id: Option<&str>) -> StoredMessage {
    StoredMessage {
        sequence: seq,
        timestamp: 1_700_000_000_000 + seq,
        user: Arc::from(format!("user{}", seq % 3)),
        content: format!("message number {seq}"),
        client_msg_id: id.map(str::to_owned),
    }
}

fn appends(r: &RoomName, seqs: impl IntoIterator<Item = u64>) -> Vec<Append> {
    seqs.into_iter()
        .map(|s| Append::new(r.clone(), msg(s, Some(&format!("id{s}")))))
        .collect()
}

/// Open-or-create in the log's terms: load, and create an absent room by
/// committing it alone (rooms are otherwise created by their first batch).
fn open_room(s: &(impl Store + ?Sized), r: &RoomName, window: usize) -> RoomLog {
    let log = s.load_room(r, window).unwrap();
    if !log.exists {
        let new = NewRoom {
            room: r.clone(),
            epoch: log.epoch.clone(),
        };
        let mut batch = Batch {
            new_rooms: vec![new],
            ..Batch::default()
        };
        s.append(&mut batch).unwrap();
    }
    log
}

/// Appends messages of rooms the log has.
fn put(s: &(impl Store + ?Sized), appends: Vec<Append>) -> Result<(), StoreError> {
    s.append(&mut Batch {
        appends,
        ..Batch::default()
    })
}

fn lim(n: usize) -> ReadLimit {
    ReadLimit::messages(n)
}

fn seqs(v: &[StoredMessage]) -> Vec<u64> {
    v.iter().map(|m| m.sequence).collect()
}

#[test]
fn appends_and_reads_ranges() {
    let dir = tempfile::tempdir().unwrap();
    let s = open(dir.path());
    let a = room("a");
    let b = room("b");
    let log = open_room(&s, &a, 100);
    assert_eq!(log.last, 0);
    assert!(log.recent_ids.is_empty());
    assert_eq!(log.epoch.len(), 16);
    open_room(&s, &b, 100);

    // One batch spanning two rooms, interleaved.
    let mut batch = Vec::new();
    for i in 1..=10 {
        batch.extend(appends(&a, [i]));
        if i <= 5 {
            batch.extend(appends(&b, [i]));
        }
    }
    put(&s, batch).unwrap();

    let got = s.read(&a, 3, 8, lim(100)).unwrap();
    assert_eq!(seqs(&got), vec![4, 5, 6, 7, 8]);
    assert_eq!(got[0], msg(4, Some("id4")));
    assert_eq!(seqs(&s.read(&a, 0, u64::MAX, lim(2)).unwrap()), vec![1, 2]);
    assert_eq!(seqs(&s.read(&a, 9, u64::MAX, lim(100)).unwrap()), vec![10]);
    assert!(s.read(&a, 10, u64::MAX, lim(100)).unwrap().is_empty());
    assert!(s.read(&a, u64::MAX, u64::MAX, lim(100)).unwrap().is_empty());
    assert_eq!(
        seqs(&s.read(&b, 0, u64::MAX, lim(100)).unwrap()),
        vec![1, 2, 3, 4, 5]
    );
    // Unknown room: empty, no error, and not created.
    assert!(s
        .read(&room("nope"), 0, u64::MAX, lim(10))
        .unwrap()
        .is_empty());
    assert_eq!(s.epoch(&room("nope")).unwrap(), None);
    assert_eq!(s.first_retained(&room("nope")).unwrap(), 1);

    // A message without a client id round-trips as None.
    put(&s, vec![Append::new(b.clone(), msg(6, None))]).unwrap();
    assert_eq!(s.read(&b, 5, 6, lim(10)).unwrap(), vec![msg(6, None)]);

    let summary = |after: Option<&RoomName>, limit| -> Vec<(String, u64)> {
        s.rooms(after, limit)
            .unwrap()
            .iter()
            .map(|r| (r.room.as_str().to_owned(), r.last))
            .collect()
    };
    assert_eq!(
        summary(None, 10),
        vec![("a".to_owned(), 10), ("b".to_owned(), 6)]
    );
    // Pages: the first `limit`, then those named after the last one seen.
    assert_eq!(summary(None, 1), vec![("a".to_owned(), 10)]);
    assert_eq!(summary(Some(&room("a")), 1), vec![("b".to_owned(), 6)]);
    assert_eq!(summary(Some(&room("b")), 1), vec![]);
    assert_eq!(summary(Some(&room("0")), 5).len(), 2);
}

#[test]
fn restart_keeps_last_epoch_and_dedup_ids() {
    let dir = tempfile::tempdir().unwrap();
    let r = room("lobby");
    let empty = room("empty");
    let (epoch, empty_epoch) = {
        let s = open(dir.path());
        let log = open_room(&s, &r, 5);
        let empty_epoch = open_room(&s, &empty, 5).epoch;
        let mut batch = appends(&r, 1..=7);
        batch.push(Append::new(r.clone(), msg(8, None)));
        put(&s, batch).unwrap();
        (log.epoch, empty_epoch)
    };
    let s = open(dir.path());
    let log = open_room(&s, &r, 5);
    assert_eq!(log.epoch, epoch);
    assert_eq!(log.last, 8);
    // The newest 5 ids, oldest first; message 8 carried none.
    let ids: Vec<_> = log
        .recent_ids
        .iter()
        .map(|(u, id, seq)| (u.to_string(), id.clone(), *seq))
        .collect();
    let want: Vec<_> = (3..=7)
        .map(|i| (format!("user{}", i % 3), format!("id{i}"), i))
        .collect();
    assert_eq!(ids, want);
    assert_eq!(s.epoch(&r).unwrap(), Some(epoch));
    let e = open_room(&s, &empty, 5);
    assert_eq!((e.epoch, e.last), (empty_epoch, 0));
    // Continues at last + 1.
    put(&s, appends(&r, [9])).unwrap();
    assert_eq!(open_room(&s, &r, 0).last, 9);
}

#[test]
fn a_bad_sequence_fails_the_whole_batch() {
    let dir = tempfile::tempdir().unwrap();
    let s = open(dir.path());
    let a = room("a");
    let b = room("b");
    open_room(&s, &a, 10);
    open_room(&s, &b, 10);
    put(&s, appends(&a, 1..=3)).unwrap();

    // Good messages for b and a, then a gap in a: nothing is stored.
    let mut batch = appends(&b, 1..=2);
    batch.extend(appends(&a, [4, 6]));
    assert!(matches!(
        put(&s, batch),
        Err(StoreError::OutOfSequence { .. })
    ));
    // A reused sequence is refused too.
    assert!(put(&s, appends(&a, [3])).is_err());
    // Unopened room.
    assert!(put(&s, appends(&room("ghost"), [1])).is_err());

    assert_eq!(open_room(&s, &a, 0).last, 3);
    assert_eq!(open_room(&s, &b, 0).last, 0);
    assert!(s.read(&b, 0, u64::MAX, lim(10)).unwrap().is_empty());
    // And the store still works.
    put(&s, appends(&a, [4])).unwrap();
    assert_eq!(open_room(&s, &a, 0).last, 4);
}

#[test]
fn retention_deletes_oldest_in_bounded_batches() {
    let dir = tempfile::tempdir().unwrap();
    let s = open(dir.path());
    let a = room("a");
    let b = room("b");
    open_room(&s, &a, 10);
    open_room(&s, &b, 10);
    put(&s, appends(&a, 1..=100)).unwrap();
    put(&s, appends(&b, 1..=10)).unwrap();
    assert_eq!(s.first_retained(&a).unwrap(), 1);

    // keep 20 per room: a has 80 to delete, b none; at most 30 per call.
    assert_eq!(s.apply_retention(&keep(20), 30).unwrap(), 30);
    assert_eq!(s.first_retained(&a).unwrap(), 31);
    // Appends keep flowing between retention calls.
    put(&s, appends(&a, [101])).unwrap();
    assert_eq!(s.apply_retention(&keep(20), 30).unwrap(), 30);
    assert_eq!(s.apply_retention(&keep(20), 30).unwrap(), 21);
    assert_eq!(s.apply_retention(&keep(20), 30).unwrap(), 0);
    assert_eq!(s.first_retained(&a).unwrap(), 82);
    assert_eq!(s.first_retained(&b).unwrap(), 1);
    assert_eq!(
        seqs(&s.read(&a, 0, u64::MAX, lim(5)).unwrap()),
        vec![82, 83, 84, 85, 86]
    );
    assert_eq!(s.read(&a, 0, u64::MAX, lim(1000)).unwrap().len(), 20);

    // keep 0 still keeps the newest message, so last survives a restart.
    assert_eq!(s.apply_retention(&keep(0), 1000).unwrap(), 19 + 9);
    assert_eq!(s.first_retained(&a).unwrap(), 101);
    drop(s);
    let s = open(dir.path());
    assert_eq!(open_room(&s, &a, 10).last, 101);
    assert_eq!(s.first_retained(&a).unwrap(), 101);
    assert_eq!(open_room(&s, &b, 10).last, 10);
}

#[test]
fn a_second_open_of_the_same_file_fails_clearly() {
    let dir = tempfile::tempdir().unwrap();
    let s = open(dir.path());
    let err = RedbStore::open(dir.path(), Durability::Immediate, Duration::from_millis(10))
        .err()
        .expect("second open must fail");
    let text = err.to_string();
    assert!(text.contains("parlor.redb"), "{text}");
    assert!(text.contains("already open"), "{text}");
    // The first one is unharmed.
    let r = room("r");
    open_room(&s, &r, 1);
    put(&s, appends(&r, [1])).unwrap();
}

#[test]
fn a_foreign_or_corrupt_file_is_refused_and_left_alone() {
    for garbage in [
        b"this is not a database, it is somebody's notes\n".repeat(200),
        vec![0x42],
        // Starts like redb, then garbage.
        [b"redb\x1a\x0a\xa9\x0d\x0a".as_slice(), &[0xEE; 8192]].concat(),
    ] {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("parlor.redb");
        std::fs::write(&file, &garbage).unwrap();
        let err = RedbStore::open(dir.path(), Durability::Immediate, Duration::from_millis(10))
            .err()
            .expect("opening garbage must fail");
        let text = err.to_string();
        assert!(text.contains("parlor.redb"), "{text}");
        assert_eq!(
            std::fs::read(&file).unwrap(),
            garbage,
            "the file was modified"
        );
    }
}

#[test]
fn a_redb_file_of_another_program_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("parlor.redb");
    {
        let db = redb::Database::create(&file).unwrap();
        let txn = db.begin_write().unwrap();
        {
            let def: redb::TableDefinition<&str, &str> = redb::TableDefinition::new("settings");
            let mut t = txn.open_table(def).unwrap();
            t.insert("theme", "dark").unwrap();
        }
        txn.commit().unwrap();
    }
    let before = std::fs::read(&file).unwrap();
    let err = RedbStore::open(dir.path(), Durability::Immediate, Duration::from_millis(10))
        .err()
        .expect("a foreign redb file must be refused");
    let text = err.to_string();
    assert!(text.contains("not a parlor store"), "{text}");
    let db = redb::Database::open(&file).unwrap();
    use redb::ReadableDatabase;
    let txn = db.begin_read().unwrap();
    let def: redb::TableDefinition<&str, &str> = redb::TableDefinition::new("settings");
    let t = txn.open_table(def).unwrap();
    assert_eq!(t.get("theme").unwrap().unwrap().value(), "dark");
    assert!(!before.is_empty());
}

#[test]
fn an_unusable_data_dir_fails_clearly() {
    let dir = tempfile::tempdir().unwrap();
    // A data dir below a regular file cannot be created.
    let blocker = dir.path().join("file");
    std::fs::write(&blocker, b"x").unwrap();
    let err = RedbStore::open(
        &blocker.join("data"),
        Durability::Immediate,
        Duration::from_millis(10),
    )
    .err()
    .expect("must fail");
    let text = err.to_string();
    assert!(
        text.contains("data dir") && text.contains("file/data"),
        "{text}"
    );

    // A read-only dir (skipped when running as root, which ignores modes).
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let ro = dir.path().join("ro");
        std::fs::create_dir(&ro).unwrap();
        std::fs::set_permissions(&ro, std::fs::Permissions::from_mode(0o555)).unwrap();
        let probe = ro.join("probe");
        if std::fs::write(&probe, b"x").is_err() {
            let err = RedbStore::open(&ro, Durability::Immediate, Duration::from_millis(10))
                .err()
                .expect("must fail");
            let text = err.to_string();
            assert!(text.contains("parlor.redb"), "{text}");
        }
        std::fs::set_permissions(&ro, std::fs::Permissions::from_mode(0o755)).unwrap();
    }

    // A directory where the file should be.
    let d2 = dir.path().join("d2");
    std::fs::create_dir_all(d2.join("parlor.redb")).unwrap();
    let err = RedbStore::open(&d2, Durability::Immediate, Duration::from_millis(10))
        .err()
        .expect("must fail");
    assert!(err.to_string().contains("parlor.redb"), "{err}");
}

#[test]
fn every_durability_mode_keeps_data_across_a_clean_reopen() {
    for mode in [Durability::Immediate, Durability::Batched, Durability::None] {
        let dir = tempfile::tempdir().unwrap();
        let r = room("r");
        {
            let s = RedbStore::open(dir.path(), mode, Duration::from_millis(5)).unwrap();
            open_room(&s, &r, 10);
            for i in 1..=20 {
                put(&s, appends(&r, [i])).unwrap();
                if i % 7 == 0 {
                    // Some commits synced, some not, in every mode.
                    s.sync().unwrap();
                }
            }
        }
        let s = RedbStore::open(dir.path(), mode, Duration::from_millis(5)).unwrap();
        assert_eq!(open_room(&s, &r, 10).last, 20, "{mode:?}");
        assert_eq!(
            s.read(&r, 0, u64::MAX, lim(100)).unwrap().len(),
            20,
            "{mode:?}"
        );
    }
}

#[test]
fn reads_do_not_block_appends() {
    let dir = tempfile::tempdir().unwrap();
    let s =
        Arc::new(RedbStore::open(dir.path(), Durability::None, Duration::from_millis(10)).unwrap());
    let r = room("busy");
    open_room(&*s, &r, 10);
    put(&*s, appends(&r, 1..=1000)).unwrap();
    let reader = {
        let s = s.clone();
        let r = r.clone();
        std::thread::spawn(move || {
            for _ in 0..200 {
                let got = s.read(&r, 0, u64::MAX, lim(1000)).unwrap();
                assert!(got.len() >= 1000);
                // Always a gapless prefix.
                for (i, m) in got.iter().enumerate() {
                    assert_eq!(m.sequence, i as u64 + 1);
                }
            }
        })
    };
    for i in 1001..=1500 {
        put(&*s, appends(&r, [i])).unwrap();
    }
    reader.join().unwrap();
    assert_eq!(open_room(&*s, &r, 0).last, 1500);
}

#[test]
fn replays_fifty_thousand_messages_in_chunks() {
    let dir = tempfile::tempdir().unwrap();
    let r = room("big");
    {
        let s = RedbStore::open(dir.path(), Durability::None, Duration::from_millis(10)).unwrap();
        open_room(&s, &r, 100);
        for start in (1..=50_000u64).step_by(1000) {
            put(&s, appends(&r, start..start + 1000)).unwrap();
        }
    }
    let s = open(dir.path());
    let log = open_room(&s, &r, 100);
    assert_eq!(log.last, 50_000);
    assert_eq!(log.recent_ids.len(), 100);
    for since in [0u64, 25_000] {
        let mut after = since;
        let mut count = 0u64;
        loop {
            let chunk = s.read(&r, after, u64::MAX, lim(1000)).unwrap();
            if chunk.is_empty() {
                break;
            }
            for m in &chunk {
                assert_eq!(m.sequence, after + 1);
                assert_eq!(m.content, format!("message number {}", m.sequence));
                after = m.sequence;
            }
            count += chunk.len() as u64;
        }
        assert_eq!(count, 50_000 - since);
        assert_eq!(after, 50_000);
    }
    // Bounded by upto as well.
    assert_eq!(
        seqs(&s.read(&r, 24_990, 25_000, lim(1000)).unwrap()),
        (24_991..=25_000).collect::<Vec<_>>()
    );
}

fn keep(n: u64) -> parlor::store::Retention {
    parlor::store::Retention {
        keep: n,
        older_than_ms: None,
    }
}

#[test]
fn retention_by_age_keeps_recent_and_the_newest() {
    let dir = tempfile::tempdir().unwrap();
    let s = parlor::store::RedbStore::open(
        dir.path(),
        parlor::config::Durability::None,
        std::time::Duration::from_millis(10),
    )
    .unwrap();
    let room = parlor::protocol::RoomName::parse("aged").unwrap();
    open_room(&s, &room, 10);
    let batch: Vec<_> = (1..=10u64)
        .map(|i| {
            let m = parlor::store::StoredMessage {
                sequence: i,
                timestamp: i * 1000,
                user: "u".into(),
                content: format!("m{i}"),
                client_msg_id: None,
            };
            parlor::store::Append::new(room.clone(), m)
        })
        .collect();
    put(&s, batch).unwrap();
    let by_age = parlor::store::Retention {
        keep: u64::MAX,
        older_than_ms: Some(4500),
    };
    assert_eq!(
        s.apply_retention(&by_age, 2).unwrap(),
        2,
        "bounded per call"
    );
    assert_eq!(s.apply_retention(&by_age, 100).unwrap(), 2);
    assert_eq!(s.first_retained(&room).unwrap(), 5);
    let all_old = parlor::store::Retention {
        keep: u64::MAX,
        older_than_ms: Some(u64::MAX),
    };
    s.apply_retention(&all_old, 100).unwrap();
    assert_eq!(
        s.first_retained(&room).unwrap(),
        10,
        "the newest message stays"
    );
}

#[test]
fn quick_repair_stores_and_reopens() {
    let dir = tempfile::tempdir().unwrap();
    let room = RoomName::parse("qr").unwrap();
    {
        let s = RedbStore::open_with(
            dir.path(),
            Durability::Immediate,
            Duration::from_millis(10),
            true,
        )
        .unwrap();
        open_room(&s, &room, 10);
        let batch: Vec<_> = (1..=3u64)
            .map(|i| {
                let m = StoredMessage {
                    sequence: i,
                    timestamp: i,
                    user: "u".into(),
                    content: format!("m{i}"),
                    client_msg_id: None,
                };
                Append::new(room.clone(), m)
            })
            .collect();
        put(&s, batch).unwrap();
    }
    let s = RedbStore::open(dir.path(), Durability::Immediate, Duration::from_millis(10)).unwrap();
    assert_eq!(open_room(&s, &room, 10).last, 3);
}

#[test]
fn an_expired_room_is_deleted_whole_and_its_name_starts_afresh() {
    let dir = tempfile::tempdir().unwrap();
    let s = open(dir.path());
    let (a, b) = (room("a"), room("b"));
    let first = open_room(&s, &a, 10).epoch;
    open_room(&s, &b, 10);
    put(&s, appends(&a, 1..=3)).unwrap();
    put(&s, appends(&b, 1..=2)).unwrap();
    assert_eq!(s.room_count(), 2);
    // Every message of both is older than this; of neither, older than 0.
    let late = 1_800_000_000_000;
    assert_eq!(
        s.expired_rooms(late, 10).unwrap(),
        vec![a.clone(), b.clone()]
    );
    assert_eq!(s.expired_rooms(late, 1).unwrap(), vec![a.clone()]);
    assert!(s.expired_rooms(0, 10).unwrap().is_empty());

    let mut batch = Batch {
        expired: vec![a.clone()],
        ..Batch::default()
    };
    s.append(&mut batch).unwrap();
    assert_eq!(s.room_count(), 1);
    let log = s.load_room(&a, 10).unwrap();
    assert!(!log.exists && log.last == 0 && log.epoch != first);
    assert!(s.read(&a, 0, u64::MAX, lim(10)).unwrap().is_empty());
    assert_eq!(s.read(&b, 0, u64::MAX, lim(10)).unwrap().len(), 2);
    drop(s);
    let s = open(dir.path());
    assert_eq!(s.room_count(), 1, "counted again at open");
}

/// redb does not verify page checksums on reads: a garbled leaf can end a
/// scan early without an error. A read must then say the log is corrupt,
/// never return a silently short history.
#[test]
fn a_scan_cut_short_by_a_damaged_page_is_an_error() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("data");
    let rooms: Vec<RoomName> = (0..4).map(|i| room(&format!("r{i}"))).collect();
    let content = |r: &RoomName, s: u64| format!("{r}:{s:04}:{}", "x".repeat(100));
    {
        let s = open(&dir);
        for r in &rooms {
            open_room(&s, r, 0);
        }
        for k in 0..10u64 {
            for r in &rooms {
                let appends = (1 + k * 30..=30 + k * 30)
                    .map(|seq| {
                        let mut m = msg(seq, None);
                        m.content = content(r, seq);
                        Append::new(r.clone(), m)
                    })
                    .collect();
                put(&s, appends).unwrap();
            }
        }
    }
    // Garble the head of the leaf that holds r2's message 150 (past the
    // entry count, which is left alone): every live or stale copy.
    let file = dir.join(parlor::store::redb::FILE_NAME);
    let mut bytes = std::fs::read(&file).unwrap();
    let marker = b"r2:0150:";
    let at: Vec<usize> = (0..bytes.len() - marker.len())
        .filter(|&i| &bytes[i..i + marker.len()] == marker)
        .collect();
    assert!(!at.is_empty());
    let mut x = 12345u64;
    for pos in at {
        let page = pos / 4096 * 4096;
        for b in &mut bytes[page + 8..page + 200] {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            *b = x as u8;
        }
    }
    std::fs::write(&file, &bytes).unwrap();

    let s = open(&dir);
    for r in &rooms {
        let all = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            s.read(r, 0, u64::MAX, lim(10_000))
        }));
        match all {
            Ok(Ok(v)) => assert_eq!(seqs(&v), (1..=300).collect::<Vec<_>>(), "room {r}"),
            Ok(Err(e)) => assert!(
                matches!(e, StoreError::Corrupt { .. } | StoreError::Storage { .. }),
                "room {r}: {e:?}"
            ),
            Err(_) => {} // a panic: the server's guard contains it
        }
    }
    // The damage is r2's alone.
    for r in [&rooms[0], &rooms[1], &rooms[3]] {
        assert_eq!(s.read(r, 0, u64::MAX, lim(10_000)).unwrap().len(), 300);
    }
}

/// Every room's log as the store reads it back: whole, in order, with the
/// right content, its newest in `rooms` and at load, its dedup ids.
fn check_logs(s: &RedbStore, rooms: &[RoomName], n: u64) {
    for r in rooms {
        let all = s.read(r, 0, u64::MAX, lim(100_000)).unwrap();
        assert_eq!(seqs(&all), (1..=n).collect::<Vec<_>>(), "{r}");
        for m in &all {
            assert_eq!(m.content, format!("{r}:{}", m.sequence));
        }
        // A range in the middle, and one that ends at the newest.
        let mid = s.read(r, n / 3, n / 2, lim(100_000)).unwrap();
        assert_eq!(seqs(&mid), (n / 3 + 1..=n / 2).collect::<Vec<_>>(), "{r}");
        let tail = s.read(r, n - 5, u64::MAX, lim(3)).unwrap();
        assert_eq!(seqs(&tail), vec![n - 4, n - 3, n - 2], "{r}");
        assert_eq!(s.first_retained(r).unwrap(), 1, "{r}");
        let log = s.load_room(r, 4).unwrap();
        assert_eq!(log.last, n, "{r}");
        let ids: Vec<u64> = log.recent_ids.iter().map(|(_, _, seq)| *seq).collect();
        assert_eq!(ids, (n - 3..=n).collect::<Vec<_>>(), "{r}");
    }
    let listed = s.rooms(None, 100).unwrap();
    for r in rooms {
        let found = listed.iter().find(|x| &x.room == r).unwrap();
        assert_eq!(found.last, n, "{r}");
    }
}

/// Appends go to the journal, in commit order, and are moved to the
/// messages table every few hundred: reads take a room's log from both,
/// before and after a fold, and across reopens that find the journal full
/// (a store dropped without `flush`) or empty (after `flush`).
#[test]
fn logs_read_whole_across_the_journal_its_folds_and_reopens() {
    let dir = tempfile::tempdir().unwrap();
    let rooms: Vec<RoomName> = (0..3).map(|i| room(&format!("j{i}"))).collect();
    let one = |r: &RoomName, seq: u64| {
        let mut m = msg(seq, Some(&format!("id{seq}")));
        m.content = format!("{r}:{seq}");
        Append::new(r.clone(), m)
    };
    // A group commit's batch: the next message of every room.
    let commit = |s: &RedbStore, seq: u64| {
        put(s, rooms.iter().map(|r| one(r, seq)).collect()).unwrap();
    };
    let mut n = 0;
    {
        let s = open(dir.path());
        for r in &rooms {
            open_room(&s, r, 0);
        }
        // Checked while the journal holds part of the logs, then all of a
        // room's newest, over several folds.
        for upto in [10, 100, 171, 400, 437] {
            while n < upto {
                n += 1;
                commit(&s, n);
            }
            check_logs(&s, &rooms, n);
        }
        // A gap is refused when the room's newest is in the journal.
        let err = put(&s, vec![one(&rooms[0], n + 2)]).unwrap_err();
        assert!(matches!(err, StoreError::OutOfSequence { expected, .. } if expected == n + 1));
    }
    {
        // Dropped without a flush: the journal is read at open, and the
        // next append follows the newest in it.
        let s = open(dir.path());
        check_logs(&s, &rooms, n);
        let err = put(&s, vec![one(&rooms[1], n)]).unwrap_err();
        assert!(matches!(err, StoreError::OutOfSequence { expected, .. } if expected == n + 1));
        for _ in 0..300 {
            n += 1;
            commit(&s, n);
        }
        check_logs(&s, &rooms, n);
        s.flush().unwrap();
        check_logs(&s, &rooms, n);
    }
    let s = open(dir.path());
    check_logs(&s, &rooms, n);
    n += 1;
    commit(&s, n);
    check_logs(&s, &rooms, n);

    // A room with many messages in a batch goes to the messages table
    // directly, except while it has entries in the journal: then after
    // them. Alternating batches of one and of a hundred take both ways.
    let bulk = [room("bulk")];
    open_room(&s, &bulk[0], 0);
    let mut b = 0;
    for size in [100, 1, 100, 100, 1, 1, 100, 1, 100] {
        put(
            &s,
            (b + 1..=b + size).map(|seq| one(&bulk[0], seq)).collect(),
        )
        .unwrap();
        b += size;
        check_logs(&s, &bulk, b);
        // The journal fills and folds meanwhile.
        for _ in 0..40 {
            n += 1;
            commit(&s, n);
        }
    }

    // A batch of 256 messages or more goes to the messages table whole,
    // the journal folded first in the same commit: rooms with entries in
    // the journal (the three after a small commit) go on after them.
    n += 1;
    commit(&s, n);
    let mut big = Vec::new();
    for _ in 0..90 {
        n += 1;
        big.extend(rooms.iter().map(|r| one(r, n)));
    }
    big.extend((b + 1..=b + 30).map(|seq| one(&bulk[0], seq)));
    b += 30;
    assert!(big.len() >= 256);
    put(&s, big).unwrap();
    check_logs(&s, &rooms, n);
    check_logs(&s, &bulk, b);
    // Small commits go to the journal again after it.
    for _ in 0..5 {
        n += 1;
        commit(&s, n);
    }
    check_logs(&s, &rooms, n);
    drop(s);
    let s = open(dir.path());
    check_logs(&s, &bulk, b);
    check_logs(&s, &rooms, n);
}

/// A commit of many messages to each of many rooms stores one run per
/// room (format 3): reads start and end anywhere inside runs, retention
/// cuts a run and keeps its newer part, and the file holds the runs.
#[test]
fn bursts_are_stored_in_runs_read_from_any_point_and_cut_by_retention() {
    use redb::{ReadableDatabase, ReadableTable, ReadableTableMetadata, TableDefinition};
    let stored: TableDefinition<(u64, u64), &[u8]> = TableDefinition::new("parlor_messages");
    // Each room's keys in the file, and whether each is a run of several.
    let layout = |dir: &Path| -> Vec<(u64, bool)> {
        let db = redb::Database::open(dir.join(parlor::store::redb::FILE_NAME)).unwrap();
        let txn = db.begin_read().unwrap();
        let t = txn.open_table(stored).unwrap();
        let mut out = Vec::new();
        for entry in t.iter().unwrap() {
            let (k, v) = entry.unwrap();
            out.push((k.value().1, v.value()[0] == 0xdc));
        }
        assert_eq!(out.len() as u64, t.len().unwrap());
        out
    };
    let dir = tempfile::tempdir().unwrap();
    let rooms: Vec<RoomName> = (0..20).map(|i| room(&format!("run{i:02}"))).collect();
    let one = |r: &RoomName, seq: u64| {
        let mut m = msg(seq, Some(&format!("id{seq}")));
        m.content = format!("{r}:{seq}");
        Append::new(r.clone(), m)
    };
    let s = open(dir.path());
    for r in &rooms {
        open_room(&s, r, 0);
    }
    // Two bursts of 15 messages to each room, 300 to a commit.
    let mut n = 0;
    for _ in 0..2 {
        let batch = (n + 1..=n + 15)
            .flat_map(|seq| rooms.iter().map(move |r| one(r, seq)))
            .collect();
        put(&s, batch).unwrap();
        n += 15;
    }
    check_logs(&s, &rooms, n);
    for r in &rooms {
        for after in 0..n {
            for upto in [after + 1, (after + 7).min(n), n] {
                let got = s.read(r, after, upto, lim(100)).unwrap();
                assert_eq!(seqs(&got), (after + 1..=upto).collect::<Vec<_>>(), "{r}");
            }
            let got = s.read(r, after, u64::MAX, lim(3)).unwrap();
            let want: Vec<u64> = (after + 1..=(after + 3).min(n)).collect();
            assert_eq!(seqs(&got), want, "{r}");
        }
    }
    drop(s);
    let runs: Vec<(u64, bool)> = rooms.iter().flat_map(|_| [(1, true), (16, true)]).collect();
    assert_eq!(layout(dir.path()), runs, "one run per room and burst");

    // Keeping 20 of 30 cuts each room's first run: 11..=15 stay.
    let s = open(dir.path());
    assert_eq!(s.apply_retention(&keep(20), 1000).unwrap(), 20 * 10);
    for r in &rooms {
        assert_eq!(s.first_retained(r).unwrap(), 11, "{r}");
        let all = s.read(r, 0, u64::MAX, lim(100)).unwrap();
        assert_eq!(seqs(&all), (11..=30).collect::<Vec<_>>(), "{r}");
        assert_eq!(all[0].content, format!("{r}:11"));
        assert_eq!(seqs(&s.read(r, 12, 14, lim(100)).unwrap()), [13, 14]);
        assert_eq!(s.load_room(r, 100).unwrap().recent_ids.len(), 20);
    }
    // A budget smaller than a run still deletes, and no more than it says.
    assert_eq!(s.apply_retention(&keep(18), 1).unwrap(), 1);
    assert_eq!(s.first_retained(&rooms[0]).unwrap(), 12);
    assert_eq!(s.first_retained(&rooms[1]).unwrap(), 11);
    drop(s);
    let mut runs = vec![(12, true), (16, true)];
    runs.extend(rooms[1..].iter().flat_map(|_| [(11, true), (16, true)]));
    assert_eq!(layout(dir.path()), runs);

    // It goes on after the runs.
    let s = open(dir.path());
    for r in &rooms {
        assert_eq!(s.load_room(r, 0).unwrap().last, n, "{r}");
    }
    put(&s, rooms.iter().map(|r| one(r, n + 1)).collect()).unwrap();
    let err = put(&s, vec![one(&rooms[3], n + 1)]).unwrap_err();
    assert!(matches!(err, StoreError::OutOfSequence { expected, .. } if expected == n + 2));
    s.flush().unwrap();
    for r in &rooms {
        let all = s.read(r, 0, u64::MAX, lim(100)).unwrap();
        assert_eq!(all.last().unwrap().sequence, n + 1, "{r}");
        assert_eq!(s.load_room(r, 0).unwrap().last, n + 1, "{r}");
    }
}

/// A store written before the journal (format 1: every message in the
/// messages table) or before runs (format 2: runs of one only) opens,
/// reads, goes on and is format 3 from then on.
#[test]
fn a_format_1_or_2_store_is_upgraded_in_place() {
    for format in [1, 2] {
        upgrade_in_place(format);
    }
}

fn upgrade_in_place(old_format: u64) {
    use redb::{ReadableDatabase, TableDefinition};
    let meta: TableDefinition<&str, u64> = TableDefinition::new("parlor_meta");
    let rooms: TableDefinition<&str, (u64, &str)> = TableDefinition::new("parlor_rooms");
    let messages: TableDefinition<(u64, u64), &[u8]> = TableDefinition::new("parlor_messages");
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join(parlor::store::redb::FILE_NAME);
    let write_v1 = |format: u64| {
        let _ = std::fs::remove_file(&file);
        let db = redb::Database::create(&file).unwrap();
        let txn = db.begin_write().unwrap();
        {
            let mut t = txn.open_table(meta).unwrap();
            t.insert("format", format).unwrap();
            t.insert("next_room_id", 2).unwrap();
            txn.open_table(rooms)
                .unwrap()
                .insert("old", (1, "e-old"))
                .unwrap();
            if format == 2 {
                let journal: TableDefinition<u64, (u64, u64, &[u8])> =
                    TableDefinition::new("parlor_journal");
                txn.open_table(journal).unwrap();
            }
            let mut t = txn.open_table(messages).unwrap();
            for seq in 1..=2u64 {
                let record = serde_json::json!({"t": 7, "u": "ann", "c": format!("v1 #{seq}")});
                t.insert(
                    (1, seq),
                    rmp_serde::to_vec_named(&record).unwrap().as_slice(),
                )
                .unwrap();
            }
        }
        txn.commit().unwrap();
    };
    // A format this parlor does not know is refused.
    write_v1(9);
    let err = RedbStore::open(dir.path(), Durability::Immediate, Duration::from_millis(10))
        .err()
        .expect("format 9 is refused");
    assert!(err.to_string().contains("format Some(9)"), "{err}");

    write_v1(old_format);
    let old = room("old");
    {
        let s = open(dir.path());
        let log = open_room(&s, &old, 0);
        assert_eq!((log.epoch.as_str(), log.last), ("e-old", 2));
        let all = s.read(&old, 0, u64::MAX, lim(10)).unwrap();
        let contents: Vec<_> = all.iter().map(|m| m.content.as_str()).collect();
        assert_eq!(contents, ["v1 #1", "v1 #2"]);
        put(&s, appends(&old, [3])).unwrap();
    }
    let db = redb::Database::open(&file).unwrap();
    let txn = db.begin_read().unwrap();
    let format = txn
        .open_table(meta)
        .unwrap()
        .get("format")
        .unwrap()
        .unwrap()
        .value();
    assert_eq!(format, 3);
    drop(txn);
    drop(db);
    let s = open(dir.path());
    assert_eq!(
        seqs(&s.read(&old, 0, u64::MAX, lim(10)).unwrap()),
        [1, 2, 3]
    );
}
