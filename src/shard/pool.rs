//! The fan-out pool: big rooms' deliveries split over a rayon pool with one
//! thread per worker, so every core delivers a big room's traffic.

use std::sync::Arc;

use rayon::prelude::*;

use crate::rooms::fanout::{Sequential, Spread};
use crate::rooms::Member;

/// Rooms with at least this many members are fanned out on the pool, in
/// chunks of `FANOUT_CHUNK`; smaller ones are not worth the hand-off.
pub const PARALLEL_FANOUT_MIN: usize = 1024;
const FANOUT_CHUNK: usize = 512;

pub struct Pool(pub Arc<rayon::ThreadPool>);

impl Spread for Pool {
    fn spread(
        &self,
        members: &mut [Member],
        deliver: &(dyn Fn(&mut Member) -> bool + Sync),
    ) -> Vec<usize> {
        if members.len() < PARALLEL_FANOUT_MIN {
            return Sequential.spread(members, deliver);
        }
        self.0.install(|| {
            members
                .par_chunks_mut(FANOUT_CHUNK)
                .enumerate()
                .map(|(c, chunk)| {
                    let mut gone = Vec::new();
                    for (i, m) in chunk.iter_mut().enumerate() {
                        if !deliver(m) {
                            gone.push(c * FANOUT_CHUNK + i);
                        }
                    }
                    gone
                })
                .reduce(Vec::new, |mut a, mut b| {
                    a.append(&mut b);
                    a
                })
        })
    }
}
