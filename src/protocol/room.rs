//! Room names: 1–64 chars of `A-Z a-z 0-9 _ . : -`, not starting with `.`.
//! A validated name is cheap to clone and never becomes a file path.

use std::fmt;
use std::sync::Arc;

pub const MAX_ROOM_LEN: usize = 64;

#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct RoomName(Arc<str>);

#[derive(Debug, thiserror::Error)]
#[error("room names are 1-64 characters of A-Z a-z 0-9 _ . : - and do not start with '.'")]
pub struct InvalidRoom;

impl RoomName {
    pub fn parse(s: &str) -> Result<RoomName, InvalidRoom> {
        let valid = !s.is_empty()
            && s.len() <= MAX_ROOM_LEN
            && !s.starts_with('.')
            && s.bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b':' | b'-'));
        if valid {
            Ok(RoomName(Arc::from(s)))
        } else {
            Err(InvalidRoom)
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for RoomName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for RoomName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?}", &*self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_the_allowed_alphabet() {
        for ok in ["a", "lobby", "team-1.chat:general_x", "A9", &"x".repeat(64)] {
            assert!(RoomName::parse(ok).is_ok(), "{ok}");
        }
    }

    #[test]
    fn rejects_paths_and_odd_names() {
        for bad in [
            "",
            "../x",
            "a/b",
            ".hidden",
            "a b",
            "é",
            "a\\b",
            "a\0",
            &"x".repeat(65),
        ] {
            assert!(RoomName::parse(bad).is_err(), "{bad:?}");
        }
    }
}
