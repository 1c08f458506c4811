//! The `Account` of each user with a session open, so every session of one
//! user shares one (their status, their rooms, their count of sessions).
//! Entries of users whose sessions have all ended are pruned as the map
//! grows.
//!
//! One map serves both the sharing and `--max-conns-per-user`: a session
//! is admitted by taking a slot in its user's account, in the same short
//! lock that finds the account (one lookup per connection, not one per
//! concern), and the slot is given back without the lock.

use std::collections::HashMap;
use std::sync::{Arc, Weak};

use parking_lot::Mutex;

use crate::rooms::Account;

/// User → their account, and the size at which to prune next.
type Map = (HashMap<Arc<str>, Weak<Account>>, usize);

#[derive(Default)]
pub struct Accounts {
    /// One short lock per session start.
    map: Mutex<Map>,
}

/// Prune dead entries once the map is this large (then at twice its size).
const PRUNE_FROM: usize = 1024;

impl Accounts {
    /// A slot for a new session of `user`, in the account it shares with
    /// their other sessions; `None` when `max` of them are open.
    pub fn admit(&self, user: &Arc<str>, max: Option<usize>) -> Option<AccountSlot> {
        let mut guard = self.map.lock();
        let (map, prune_at) = &mut *guard;
        let account = match map.get(user).and_then(Weak::upgrade) {
            Some(account) => account,
            None => {
                let account = Arc::new(Account::default());
                map.insert(user.clone(), Arc::downgrade(&account));
                if map.len() >= (*prune_at).max(PRUNE_FROM) {
                    map.retain(|_, a| a.strong_count() > 0);
                    *prune_at = map.len() * 2;
                }
                account
            }
        };
        // Not `then_some`: a slot made and dropped would give back one
        // it never took.
        account.take_slot(max).then(|| AccountSlot { account })
    }
}

/// A session's place among its user's sessions; given back when dropped.
/// It keeps the account alive, so the account outlives every session
/// that counts in it.
pub struct AccountSlot {
    account: Arc<Account>,
}

impl AccountSlot {
    pub fn account(&self) -> &Arc<Account> {
        &self.account
    }
}

impl Drop for AccountSlot {
    fn drop(&mut self) {
        self.account.give_slot();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sessions_of_one_user_share_an_account_while_any_is_open() {
        let accounts = Accounts::default();
        let ann: Arc<str> = "ann".into();
        let a = accounts.admit(&ann, None).unwrap();
        let b = accounts.admit(&ann, None).unwrap();
        assert!(Arc::ptr_eq(a.account(), b.account()));
        let bob = accounts.admit(&"bob".into(), None).unwrap();
        assert!(!Arc::ptr_eq(a.account(), bob.account()));
        assert_eq!(a.account().sessions(), 2);
        drop((a, b));
        let fresh = accounts.admit(&ann, None).unwrap();
        assert!(
            fresh.account().status().is_default(),
            "a new account after all ended"
        );
        assert_eq!(fresh.account().sessions(), 1);
    }

    #[test]
    fn a_user_at_the_limit_gets_no_slot_until_one_is_given_back() {
        let accounts = Accounts::default();
        let ann: Arc<str> = "ann".into();
        let first = accounts.admit(&ann, Some(2)).unwrap();
        let second = accounts.admit(&ann, Some(2)).unwrap();
        assert!(
            accounts.admit(&ann, Some(2)).is_none(),
            "a third is refused"
        );
        assert_eq!(first.account().sessions(), 2, "the refusal took nothing");
        assert!(accounts.admit(&"bob".into(), Some(2)).is_some(), "per user");
        drop(second);
        let third = accounts
            .admit(&ann, Some(2))
            .expect("a slot was given back");
        assert!(Arc::ptr_eq(first.account(), third.account()));
    }

    #[test]
    fn accounts_of_users_gone_are_pruned_as_the_map_grows() {
        let accounts = Accounts::default();
        let kept = accounts.admit(&"kept".into(), None).unwrap();
        for i in 0..3 * PRUNE_FROM {
            drop(accounts.admit(&format!("u{i}").into(), None));
        }
        let (map, _) = &*accounts.map.lock();
        assert!(map.len() <= PRUNE_FROM + 1, "{} entries", map.len());
        assert!(map.contains_key("kept"), "a user with a session stays");
        drop(kept);
    }
}
