//! A user's presence status (PROTOCOL.md §2 `status`): `online`, `away` or
//! `busy`, with an optional short text. One per user: the most recent set by
//! any of their connections wins, and every room they are in shows it.

use std::sync::Arc;

/// Longest status `text`, in characters.
pub const MAX_STATUS_TEXT: usize = 128;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Availability {
    #[default]
    Online,
    Away,
    Busy,
}

impl Availability {
    pub fn parse(s: &str) -> Option<Availability> {
        match s {
            "online" => Some(Availability::Online),
            "away" => Some(Availability::Away),
            "busy" => Some(Availability::Busy),
            _ => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Availability::Online => "online",
            Availability::Away => "away",
            Availability::Busy => "busy",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Status {
    pub availability: Availability,
    pub text: Option<Arc<str>>,
}

impl Status {
    /// `online` with no text: what a user has until they say otherwise.
    pub fn is_default(&self) -> bool {
        *self == Status::default()
    }
}
