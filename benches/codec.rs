//! Codec cost per message: decoding client requests and encoding server
//! frames, JSON vs MessagePack, for small and large contents.

use std::hint::black_box;

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use parlor::message::StoredMessage;
use parlor::protocol::client::decode;
use parlor::protocol::server::{self as msg, MessageData};
use parlor::protocol::Format;

fn client_frames(format: Format, content: &str) -> Vec<(&'static str, Vec<u8>)> {
    let values = [
        (
            "join",
            serde_json::json!({"type":"join","room":"lobby","since":41}),
        ),
        (
            "message",
            serde_json::json!({"type":"message","id":"m-1","data":{"room":"lobby","content":content}}),
        ),
        (
            "history",
            serde_json::json!({"type":"history","room":"lobby","since":10,"limit":100}),
        ),
        ("ping", serde_json::json!({"type":"ping"})),
    ];
    values
        .into_iter()
        .map(|(name, v)| {
            let bytes = match format {
                Format::Json => serde_json::to_vec(&v).unwrap(),
                Format::Msgpack => rmp_serde::to_vec_named(&v).unwrap(),
                Format::Sse => unreachable!("clients send no SSE"),
            };
            (name, bytes)
        })
        .collect()
}

fn decode_bench(c: &mut Criterion) {
    let mut g = c.benchmark_group("decode");
    for size in [64usize, 4096] {
        let content = "x".repeat(size);
        for format in [Format::Json, Format::Msgpack] {
            for (name, bytes) in client_frames(format, &content) {
                if name != "message" && size != 64 {
                    continue;
                }
                g.throughput(Throughput::Bytes(bytes.len() as u64));
                let id = BenchmarkId::new(format!("{}/{name}", format.name()), size);
                g.bench_with_input(id, &bytes, |b, bytes| {
                    b.iter(|| decode(format, black_box(bytes)))
                });
            }
        }
    }
    g.finish();
}

fn encode_bench(c: &mut Criterion) {
    let mut g = c.benchmark_group("encode");
    for size in [64usize, 4096] {
        let stored = StoredMessage {
            sequence: 123_456,
            timestamp: 1_795_000_000_000,
            user: "someone".into(),
            content: "y".repeat(size),
            client_msg_id: None,
        };
        for format in Format::ALL {
            let id = BenchmarkId::new(format!("{}/message", format.name()), size);
            g.bench_function(id, |b| {
                b.iter(|| {
                    let data = MessageData::of("lobby", "0123456789abcdef", black_box(&stored));
                    msg::message(format, &data)
                })
            });
        }
    }
    for format in Format::ALL {
        let id = BenchmarkId::new(format!("{}/ack", format.name()), 0);
        g.bench_function(id, |b| {
            b.iter(|| {
                let data = msg::AckData {
                    room: "lobby",
                    sequence: black_box(9),
                };
                msg::encode(format, "ack", Some("m-1"), Some(data))
            })
        });
    }
    g.finish();
}

criterion_group!(benches, decode_bench, encode_bench);
criterion_main!(benches);
