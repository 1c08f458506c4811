//! The `Account` of each user with a session open, so every session of one
//! user shares one (their status, their rooms). Entries of users whose
//! sessions have all ended are pruned as the map grows.

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
    /// The account of `user`, shared with their other sessions.
    pub fn get(&self, user: &Arc<str>) -> Arc<Account> {
        let mut guard = self.map.lock();
        let (map, prune_at) = &mut *guard;
        if let Some(account) = map.get(user).and_then(Weak::upgrade) {
            return account;
        }
        let account = Arc::new(Account::default());
        map.insert(user.clone(), Arc::downgrade(&account));
        if map.len() >= (*prune_at).max(PRUNE_FROM) {
            map.retain(|_, a| a.strong_count() > 0);
            *prune_at = map.len() * 2;
        }
        account
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sessions_of_one_user_share_an_account_while_any_is_open() {
        let accounts = Accounts::default();
        let ann: Arc<str> = "ann".into();
        let a = accounts.get(&ann);
        let b = accounts.get(&ann);
        assert!(Arc::ptr_eq(&a, &b));
        assert!(!Arc::ptr_eq(&a, &accounts.get(&"bob".into())));
        drop((a, b));
        let fresh = accounts.get(&ann);
        assert!(fresh.status().is_default(), "a new account after all ended");
    }
}
