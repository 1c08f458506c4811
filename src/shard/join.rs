//! What a joining session is sent before it goes live (PROTOCOL.md §4): a
//! pure function of the request, the room's log position and the limits.

use super::CatchUp;

#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Recent messages in the `history` frame of a plain `join`.
    pub history_on_join: u64,
    /// Most messages replayed for a `join` with `since`.
    pub replay_limit: u64,
}

/// Plans the catch-up of a join and whether it `recovered` the client's
/// position. `last` is the room's newest committed sequence; the oldest
/// retained sequence is asked for only when it matters (a store read).
pub fn plan(
    since: Option<u64>,
    client_epoch: Option<&str>,
    room_epoch: &str,
    last: u64,
    limits: Limits,
    first_retained: impl FnOnce() -> u64,
) -> (CatchUp, bool) {
    let Some(since) = since else {
        if limits.history_on_join == 0 {
            return (CatchUp::Nothing, true);
        }
        let after = last - limits.history_on_join.min(last);
        let more = after > 0 && after >= first_retained();
        let history = CatchUp::History {
            after,
            upto: last,
            more,
        };
        return (history, true);
    };
    let mut recovered = true;
    let mut after = since;
    // A position in a log this server no longer has: start over at 1.
    if since > last || client_epoch.is_some_and(|e| e != room_epoch) {
        recovered = false;
        after = 0;
    }
    let first = if after < last { first_retained() } else { 1 };
    if after + 1 < first {
        recovered = false;
        after = first - 1;
    }
    if last - after > limits.replay_limit {
        recovered = false;
        after = last - limits.replay_limit;
    }
    let catch_up = if after == last {
        CatchUp::Nothing
    } else {
        CatchUp::Replay { after, upto: last }
    };
    (catch_up, recovered)
}

#[cfg(test)]
mod tests {
    use super::*;

    const LIMITS: Limits = Limits {
        history_on_join: 50,
        replay_limit: 100,
    };

    fn replay(since: u64, epoch: Option<&str>, last: u64, first: u64) -> (CatchUp, bool) {
        plan(Some(since), epoch, "e1", last, LIMITS, || first)
    }

    #[test]
    fn plain_join_sends_recent_history() {
        let (c, r) = plan(None, None, "e1", 500, LIMITS, || 1);
        assert_eq!(
            (c, r),
            (
                CatchUp::History {
                    after: 450,
                    upto: 500,
                    more: true
                },
                true
            )
        );
        let (c, _) = plan(None, None, "e1", 20, LIMITS, || 1);
        assert_eq!(
            c,
            CatchUp::History {
                after: 0,
                upto: 20,
                more: false
            }
        );
        let (c, _) = plan(None, None, "e1", 500, LIMITS, || 451);
        assert_eq!(
            c,
            CatchUp::History {
                after: 450,
                upto: 500,
                more: false
            }
        );
        let none = Limits {
            history_on_join: 0,
            ..LIMITS
        };
        assert_eq!(
            plan(None, None, "e1", 500, none, || 1),
            (CatchUp::Nothing, true)
        );
    }

    #[test]
    fn since_within_reach_replays_exactly() {
        assert_eq!(
            replay(40, Some("e1"), 90, 1),
            (
                CatchUp::Replay {
                    after: 40,
                    upto: 90
                },
                true
            )
        );
        assert_eq!(replay(90, None, 90, 1), (CatchUp::Nothing, true));
    }

    #[test]
    fn a_foreign_log_restarts_at_one() {
        assert_eq!(
            replay(95, None, 90, 1),
            (CatchUp::Replay { after: 0, upto: 90 }, false)
        );
        assert_eq!(
            replay(40, Some("old"), 90, 1),
            (CatchUp::Replay { after: 0, upto: 90 }, false)
        );
    }

    #[test]
    fn too_far_behind_gets_the_newest_replay_limit() {
        assert_eq!(
            replay(10, None, 500, 1),
            (
                CatchUp::Replay {
                    after: 400,
                    upto: 500
                },
                false
            )
        );
    }

    #[test]
    fn behind_retention_starts_at_the_oldest_retained() {
        assert_eq!(
            replay(10, None, 90, 31),
            (
                CatchUp::Replay {
                    after: 30,
                    upto: 90
                },
                false
            )
        );
        // Retention and the replay limit together: whichever starts later.
        assert_eq!(
            replay(10, None, 500, 31),
            (
                CatchUp::Replay {
                    after: 400,
                    upto: 500
                },
                false
            )
        );
        assert_eq!(
            replay(10, None, 500, 450),
            (
                CatchUp::Replay {
                    after: 449,
                    upto: 500
                },
                false
            )
        );
    }
}
