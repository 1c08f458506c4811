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

    /// A direct-message room: `dm:<userA>:<userB>`, the two names in sorted
    /// (byte) order. Only those two users may join, read or write it.
    pub fn is_direct(&self) -> bool {
        self.0.starts_with(DM_PREFIX)
    }

    /// The DM room of two users (None when their names cannot make a room
    /// name: too long, or characters a room name cannot hold).
    pub fn direct(a: &str, b: &str) -> Option<RoomName> {
        let (a, b) = if a <= b { (a, b) } else { (b, a) };
        let room = RoomName::parse(&format!("{DM_PREFIX}{a}:{b}")).ok()?;
        (room.admits(a) && room.admits(b)).then_some(room)
    }

    /// Whether `user` may use this room: every room but a DM; a DM only its
    /// two users (a `dm:` name not in sorted order admits nobody). One rule
    /// for every door: WebSocket, SSE, long poll and the HTTP API.
    pub fn admits(&self, user: &str) -> bool {
        let Some(pair) = self.0.strip_prefix(DM_PREFIX) else {
            return true;
        };
        // Exactly one ':' between two names: a user whose name holds a ':'
        // has no DM room, so no name can be read two ways.
        match pair.split_once(':') {
            Some((a, b)) if !a.is_empty() && !b.is_empty() && !b.contains(':') && a < b => {
                user == a || user == b
            }
            _ => false,
        }
    }
}

/// What starts a direct-message room's name.
pub const DM_PREFIX: &str = "dm:";

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
    fn direct_rooms_admit_their_two_users_only() {
        let dm = RoomName::direct("bob", "alice").unwrap();
        assert_eq!(dm.as_str(), "dm:alice:bob");
        assert!(dm.is_direct());
        assert!(dm.admits("alice") && dm.admits("bob"));
        assert!(!dm.admits("carol") && !dm.admits("alic") && !dm.admits("alice:bob"));
        let unsorted = RoomName::parse("dm:bob:alice").unwrap();
        assert!(!unsorted.admits("bob") && !unsorted.admits("alice"));
        assert!(RoomName::direct("a:b", "c").is_none(), "ambiguous: no DM");
        let odd = RoomName::parse("dm:a:b:c").unwrap();
        assert!(!["a", "b", "c", "a:b", "b:c"].iter().any(|u| odd.admits(u)));
        assert!(RoomName::direct("ann", "ann").is_none());
        assert!(RoomName::parse("lobby").unwrap().admits("anyone"));
        assert!(RoomName::direct("a b", "c").is_none());
    }

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
