//! Deterministic simulation of the room core (DESIGN.md's properties):
//! seeded random interleavings of joins with and without `since`, leaves
//! and re-joins during replays, publishes with and without ids and their
//! retries (sessions and HTTP), eager, slow and stalled readers, loads,
//! reads and commits that complete late, out of order or fail, idle unloads
//! and reloads, and crashes with restarts — on a simulated clock.
//!
//! After every frame a client reads, and at the end of every seed, it checks:
//! sequences 1..N gapless and never reused (the log refuses anything else);
//! every view of a room sees its messages in order, each once, as the log
//! has them, from where its join said it would start; an ack names the
//! stored message, and a retried id gets the first sequence again, also
//! across unloads and restarts; after quiescing, every eager member has
//! seen its rooms' whole logs.
//!
//! `PARLOR_SIM_SEEDS=N` runs N seeds (default 2000), `PARLOR_SIM_FROM=S`
//! starts at seed S, `PARLOR_SIM_SEED=S` replays one seed; a failure prints
//! its seed and the last steps.

mod sim;

fn env(name: &str) -> Option<u64> {
    std::env::var(name).ok().and_then(|v| v.parse().ok())
}

#[test]
fn seeded_interleavings_keep_every_property() {
    let steps = env("PARLOR_SIM_STEPS").unwrap_or(500) as usize;
    if let Some(seed) = env("PARLOR_SIM_SEED") {
        println!("{:?}", sim::run(seed, steps));
        return;
    }
    let from = env("PARLOR_SIM_FROM").unwrap_or(0);
    let seeds = env("PARLOR_SIM_SEEDS").unwrap_or(2000);
    let mut total = sim::Coverage::default();
    for seed in from..from + seeds {
        match std::panic::catch_unwind(|| sim::run(seed, steps)) {
            Ok(c) => total.add(c),
            Err(panic) => {
                eprintln!("simulation failed: replay with PARLOR_SIM_SEED={seed}");
                std::panic::resume_unwind(panic);
            }
        }
    }
    println!("{seeds} seeds × {steps} steps: {total:?}");
    // The seeds must reach the paths the properties are about.
    assert!(total.failed_commits > 0 && total.failed_loads > 0 && total.crashes > 0);
    assert!(total.replayed > 0 && total.unloaded > 0 && total.cut_slow > 0);
    assert!(total.stale_reads > 0, "no replay outlived its join");
    assert!(total.expired > 0, "no room expired");
    // The shared-log seeds reach the live channel's paths.
    assert!(total.other_batches > 0 && total.live > 0 && total.fills > 0);
    assert!(total.disconnects > 0 && total.lost_answers > 0);
    assert!(total.long_polls > 0, "no long poll was answered");
}
