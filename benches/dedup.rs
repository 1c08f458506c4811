//! A room's dedup window (`rooms::Dedup`), at its default size of 10 000
//! ids: what each published message with a client id costs the shard (a
//! lookup that misses, then an insert that evicts the oldest id), what a
//! retry's lookup costs, and filling the window when a room loads.

use std::hint::black_box;
use std::sync::Arc;

use criterion::{criterion_group, criterion_main, BatchSize, Criterion, Throughput};
use parlor::rooms::Dedup;

const WINDOW: usize = 10_000;

fn users() -> Vec<Arc<str>> {
    (0..10).map(|i| Arc::from(format!("user-{i}"))).collect()
}

/// Client ids as browsers make them (a prefix and a counter).
fn ids(n: usize) -> Vec<String> {
    (0..n).map(|i| format!("c7f3a9-{i}")).collect()
}

fn full(users: &[Arc<str>], ids: &[String]) -> Dedup {
    let mut d = Dedup::new(WINDOW);
    for (i, id) in ids.iter().take(WINDOW).enumerate() {
        d.insert(&users[i % users.len()], id, i as u64 + 1);
    }
    d
}

fn dedup(c: &mut Criterion) {
    let users = users();
    // Twice the window: an id comes round again only after it was evicted.
    let ids = ids(2 * WINDOW);
    let mut g = c.benchmark_group("dedup");
    g.throughput(Throughput::Elements(1));

    g.bench_function("publish_full_window", |b| {
        let mut d = full(&users, &ids);
        let mut n = WINDOW;
        b.iter(|| {
            let i = n % ids.len();
            let user = &users[i % users.len()];
            let absent = d.check(user, &ids[i]).expect_err("a new id");
            d.insert_absent(absent, n as u64 + 1);
            n += 1;
        })
    });

    g.bench_function("retry_lookup", |b| {
        let d = full(&users, &ids);
        let mut n = 0;
        b.iter(|| {
            let i = n % WINDOW;
            n += 1;
            black_box(d.get(&users[i % users.len()], &ids[i]))
        })
    });

    g.throughput(Throughput::Elements(WINDOW as u64));
    g.bench_function("load_10k", |b| {
        b.iter_batched(
            || ids[..WINDOW].to_vec(),
            |loaded| {
                let mut d = Dedup::new(WINDOW);
                for (i, id) in loaded.into_iter().enumerate() {
                    d.insert(&users[i % users.len()], &id, i as u64 + 1);
                }
                d
            },
            BatchSize::LargeInput,
        )
    });
    g.finish();
}

criterion_group!(benches, dedup);
criterion_main!(benches);
