//! The Redis log on its own, against real Redis servers started here: one
//! sequence per room whoever appends, retries answered with the original,
//! range reads by sequence, the epoch every node agrees on, retention, and
//! the same over a 3-primary Redis Cluster with rooms in several slots.

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::redis::{available, Redis, RedisCluster};
use parlor::config::ClusterMode;
use parlor::metrics::Metrics;
use parlor::protocol::RoomName;
use parlor::store::redis::Settings;
use parlor::store::{
    Append, Batch, NewRoom, ReadLimit, ReadMarker, RedisLog, Retention, Store, StoredMessage,
};

fn settings(urls: &str, mode: ClusterMode, node: &str) -> Settings {
    Settings {
        urls: urls.split(',').map(String::from).collect(),
        mode,
        timeout: Duration::from_secs(2),
        dedup_window: 100,
        retain_messages: 1_000_000,
        retain_age: Some(Duration::from_secs(3600)),
        node: node.into(),
    }
}

fn connect(s: Settings) -> Arc<RedisLog> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(RedisLog::connect(s, Arc::new(Metrics::new())))
        .expect("connects")
}

fn msg(user: &str, content: &str, id: Option<&str>, ts: u64) -> StoredMessage {
    StoredMessage {
        sequence: 0,
        timestamp: ts,
        user: user.into(),
        content: content.into(),
        client_msg_id: id.map(String::from),
    }
}

fn batch(room: &RoomName, epoch: &str, msgs: Vec<StoredMessage>) -> Batch {
    Batch {
        new_rooms: vec![NewRoom {
            room: room.clone(),
            epoch: epoch.into(),
        }],
        appends: msgs
            .into_iter()
            .map(|m| Append::new(room.clone(), m))
            .collect(),
        expired: Vec::new(),
        read_markers: Vec::new(),
    }
}

fn seqs(b: &Batch) -> Vec<(u64, bool)> {
    b.appends
        .iter()
        .map(|a| (a.message.sequence, a.duplicate))
        .collect()
}

/// What every log test checks, on a single server or a Cluster.
fn numbers_dedups_reads_and_agrees_on_epochs(a: &RedisLog, b: &RedisLog, room: &RoomName) {
    // Two nodes load the empty room: they agree on its epoch.
    let la = a.load_room(room, 100).unwrap();
    let lb = b.load_room(room, 100).unwrap();
    assert_eq!((la.last, la.exists), (0, false));
    assert_eq!(la.epoch, lb.epoch, "every node announces one epoch");
    // Appends from both nodes share one sequence.
    let mut b1 = batch(
        room,
        &la.epoch,
        vec![msg("ann", "a1", Some("x1"), 1), msg("ann", "a2", None, 2)],
    );
    a.append(&mut b1).unwrap();
    assert_eq!(seqs(&b1), [(1, false), (2, false)]);
    let mut b2 = batch(
        room,
        "some-other-proposal",
        vec![
            msg("bob", "b1", Some("x1"), 3),
            msg("ann", "a1 again", Some("x1"), 4),
        ],
    );
    b.append(&mut b2).unwrap();
    assert_eq!(
        seqs(&b2),
        [(3, false), (1, true)],
        "ids are per user; a retry on another node gets the original"
    );
    assert_eq!(
        b2.new_rooms[0].epoch, la.epoch,
        "the stored epoch comes back"
    );
    let all = b.read(room, 0, u64::MAX, ReadLimit::messages(100)).unwrap();
    let contents: Vec<(u64, &str)> = all
        .iter()
        .map(|m| (m.sequence, m.content.as_str()))
        .collect();
    assert_eq!(contents, [(1, "a1"), (2, "a2"), (3, "b1")]);
    assert_eq!(all[0].client_msg_id.as_deref(), Some("x1"));
    let mid = a.read(room, 1, 2, ReadLimit::messages(100)).unwrap();
    assert_eq!(mid.len(), 1);
    assert_eq!(mid[0].sequence, 2);
    let tail = a
        .read_tail(room, 1, u64::MAX, ReadLimit::messages(1))
        .unwrap();
    assert_eq!((tail.last, tail.messages.len()), (3, 1));
    assert_eq!(tail.epoch.as_deref(), Some(la.epoch.as_str()));
    let reloaded = b.load_room(room, 100).unwrap();
    assert_eq!((reloaded.last, reloaded.exists), (3, true));
    assert_eq!(a.epoch(room).unwrap().as_deref(), Some(la.epoch.as_str()));
    assert_eq!(a.first_retained(room).unwrap(), 1);
}

#[test]
fn one_sequence_per_room_across_nodes_on_one_server() {
    if !available() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let redis = Redis::start(&dir.path().join("redis"));
    let a = connect(settings(&redis.url(), ClusterMode::Single, "na"));
    let b = connect(settings(&redis.url(), ClusterMode::Single, "nb"));
    let room = RoomName::parse("lobby").unwrap();
    numbers_dedups_reads_and_agrees_on_epochs(&a, &b, &room);
    let rooms = a.rooms(None, 10).unwrap();
    assert_eq!(rooms.len(), 1);
    assert_eq!(rooms[0].last, 3);
    assert_eq!(a.rooms(Some(&room), 10).unwrap(), []);
    assert_eq!(a.room_count(), 1);
    read_markers_only_go_forward(&a, &b, &room);

    // Age retention deletes old messages but keeps the newest.
    let old = RoomName::parse("old").unwrap();
    let e = a.load_room(&old, 10).unwrap().epoch;
    let mut b3 = batch(&old, &e, (1..=5).map(|i| msg("u", "x", None, i)).collect());
    a.append(&mut b3).unwrap();
    a.append(&mut marks(&[(&old, "u", 5)])).unwrap();
    assert_eq!(a.read_markers(&old).unwrap(), [("u".into(), 5)]);
    // The room index is written behind the append.
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while a.room_count() < 2 {
        assert!(
            std::time::Instant::now() < deadline,
            "room index not updated"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    let policy = Retention {
        keep: 1_000_000,
        older_than_ms: Some(1_000),
    };
    // lobby: 3 old messages, old: 5; each keeps its newest.
    assert_eq!(a.apply_retention(&policy, 100).unwrap(), 2 + 4);
    assert_eq!(a.first_retained(&old).unwrap(), 5);
    // A room whose whole log is past the age is deleted; its name starts a
    // new log with a new epoch.
    assert_eq!(a.expired_rooms(u64::MAX, 10).unwrap().len(), 2);
    let mut expire = Batch {
        expired: vec![old.clone()],
        ..Batch::default()
    };
    a.append(&mut expire).unwrap();
    assert_eq!(a.epoch(&old).unwrap(), None);
    assert_eq!(
        a.read_markers(&old).unwrap(),
        [],
        "markers go with the room"
    );
    let fresh = a.load_room(&old, 10).unwrap();
    assert_eq!(fresh.last, 0);
    assert_ne!(fresh.epoch, e);
}

#[test]
fn one_sequence_per_room_across_nodes_on_a_redis_cluster() {
    if !available() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let cluster = RedisCluster::start(dir.path());
    let a = connect(settings(&cluster.urls(), ClusterMode::Cluster, "na"));
    let b = connect(settings(&cluster.urls(), ClusterMode::Cluster, "nb"));
    // Rooms whose hash tags fall in different slots (and so on different
    // primaries), each with its own sequence.
    for name in ["lobby", "dev", "dm:ann:bob", "room-17"] {
        let room = RoomName::parse(name).unwrap();
        numbers_dedups_reads_and_agrees_on_epochs(&a, &b, &room);
    }
    // A batch spanning rooms: one script call per room, on its node.
    let r1 = RoomName::parse("lobby").unwrap();
    let r2 = RoomName::parse("dev").unwrap();
    let mut mixed = Batch::default();
    mixed
        .appends
        .push(Append::new(r1.clone(), msg("c", "1", None, 9)));
    mixed
        .appends
        .push(Append::new(r2.clone(), msg("c", "2", None, 9)));
    mixed
        .appends
        .push(Append::new(r1.clone(), msg("c", "3", None, 9)));
    a.append(&mut mixed).unwrap();
    assert_eq!(seqs(&mixed), [(4, false), (4, false), (5, false)]);
    assert_eq!(b.rooms(None, 1000).unwrap().len(), 4);
    let page = b.rooms(Some(&r2), 2).unwrap();
    let names: Vec<&str> = page.iter().map(|r| r.room.as_str()).collect();
    assert_eq!(names, ["dm:ann:bob", "lobby"]);
    // Markers of rooms in different slots, in one batch.
    a.append(&mut marks(&[(&r1, "ann", 5), (&r2, "ann", 4)]))
        .unwrap();
    assert_eq!(b.read_markers(&r1).unwrap(), [("ann".into(), 5)]);
    assert_eq!(b.read_markers(&r2).unwrap(), [("ann".into(), 4)]);
}

/// A batch of read markers alone.
fn marks(markers: &[(&RoomName, &str, u64)]) -> Batch {
    Batch {
        read_markers: markers
            .iter()
            .map(|(room, user, sequence)| ReadMarker {
                room: (*room).clone(),
                user: (*user).into(),
                sequence: *sequence,
            })
            .collect(),
        ..Batch::default()
    }
}

/// Read markers kept by the shared log: the highest wins, whichever node
/// hands it in and in whatever order.
fn read_markers_only_go_forward(a: &RedisLog, b: &RedisLog, room: &RoomName) {
    a.append(&mut marks(&[(room, "ann", 2), (room, "bob", 1)]))
        .unwrap();
    b.append(&mut marks(&[(room, "ann", 3)])).unwrap();
    a.append(&mut marks(&[(room, "ann", 1)])).unwrap();
    let want: Vec<(Arc<str>, u64)> = vec![("ann".into(), 3), ("bob".into(), 1)];
    assert_eq!(a.read_markers(room).unwrap(), want);
    assert_eq!(b.read_markers(room).unwrap(), want);
}
