//! Which ADD call an allocation was last handed to. A failing ADD may only undo what it created
//! itself: when a runtime retries ADD while the first call still runs, both are handed the same
//! allocation, and the first one's rollback must not free the address the second one wired.
//!
//! Tokens are not persisted: after a restart no rollback matches, so the address stays held
//! until DEL, GC or the sweep (held too long is safe; released too early is a duplicate).

use crate::model::AttachKey;
use crate::rpc::Grant;
use std::collections::HashMap;

#[derive(Debug, Default)]
pub struct Grants {
    next: u64,
    latest: HashMap<AttachKey, Grant>,
}

impl Grants {
    /// `seed` (the start time in ms) keeps tokens of an earlier run from matching.
    pub fn new(seed: u64) -> Grants {
        Grants {
            next: seed.wrapping_shl(16),
            latest: HashMap::new(),
        }
    }

    /// Hands `key`'s allocation to one more ADD call.
    pub fn grant(&mut self, key: &AttachKey, created: bool) -> Grant {
        self.next = self.next.wrapping_add(1);
        let g = Grant {
            created,
            token: self.next,
        };
        self.latest.insert(key.clone(), g);
        g
    }

    /// Whether the call holding `token` may release `key`: it created the allocation and no
    /// other call was handed it since.
    pub fn may_roll_back(&self, key: &AttachKey, token: u64) -> bool {
        self.latest
            .get(key)
            .is_some_and(|g| g.created && g.token == token)
    }

    /// The allocation is gone (released, rolled back, swept).
    pub fn forget(&mut self, key: &AttachKey) {
        self.latest.remove(key);
    }
}

/// Logged when a rollback is refused, so an operator can follow a retried ADD.
pub fn refused_rollback(key: &AttachKey) -> String {
    format!(
        "rollback of {key} refused: the failing ADD did not create this allocation, or another ADD was handed it since; it stays until DEL"
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(id: &str) -> AttachKey {
        AttachKey::new("terway", id, "eth0")
    }

    #[test]
    fn only_the_creating_latest_grant_may_roll_back() {
        let mut g = Grants::new(1);
        let first = g.grant(&key("a"), true);
        assert!(g.may_roll_back(&key("a"), first.token));
        // A retried ADD is handed the same allocation: the first call's rollback is refused,
        // and the retry did not create it, so it cannot roll back either.
        let retry = g.grant(&key("a"), false);
        assert!(!g.may_roll_back(&key("a"), first.token));
        assert!(!g.may_roll_back(&key("a"), retry.token));
        assert!(!g.may_roll_back(&key("b"), first.token));
        g.forget(&key("a"));
        assert!(!g.may_roll_back(&key("a"), retry.token));
    }

    #[test]
    fn tokens_of_an_earlier_run_never_match() {
        let mut old = Grants::new(1_000);
        let t = old.grant(&key("a"), true).token;
        let mut new = Grants::new(2_000);
        new.grant(&key("a"), true);
        assert!(!new.may_roll_back(&key("a"), t));
    }
}
