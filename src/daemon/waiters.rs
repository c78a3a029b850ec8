//! Pods waiting for an address, in arrival order, each with a deadline. Pure: the core decides
//! when to serve, fail or expire them.

use crate::model::{AttachKey, PodRef};
use std::collections::VecDeque;

pub struct Waiter<R> {
    pub key: AttachKey,
    pub pod: PodRef,
    pub netns: String,
    pub reply: R,
    /// When it was parked, and when it fails if still waiting (unix ms).
    pub since: u64,
    pub deadline: u64,
}

pub struct Waiters<R> {
    queue: VecDeque<Waiter<R>>,
}

impl<R> Default for Waiters<R> {
    fn default() -> Self {
        Waiters {
            queue: VecDeque::new(),
        }
    }
}

impl<R> Waiters<R> {
    pub fn len(&self) -> usize {
        self.queue.len()
    }

    pub fn is_empty(&self) -> bool {
        self.queue.is_empty()
    }

    /// Parks `w` at the back. A retried ADD of a pod already waiting takes the first one's place
    /// (and keeps its turn); the first one is returned so its caller can be told.
    pub fn park(&mut self, w: Waiter<R>) -> Option<Waiter<R>> {
        match self.queue.iter_mut().find(|x| x.key == w.key) {
            Some(x) => Some(std::mem::replace(x, w)),
            None => {
                self.queue.push_back(w);
                None
            }
        }
    }

    /// Takes out the waiter of `key` (its pod was deleted while it waited).
    pub fn cancel(&mut self, key: &AttachKey) -> Option<Waiter<R>> {
        let pos = self.queue.iter().position(|w| &w.key == key)?;
        self.queue.remove(pos)
    }

    pub fn pop_front(&mut self) -> Option<Waiter<R>> {
        self.queue.pop_front()
    }

    /// Puts back a waiter that could not be served yet: it keeps its turn.
    pub fn push_front(&mut self, w: Waiter<R>) {
        self.queue.push_front(w);
    }

    /// Those whose deadline has passed, in order.
    pub fn expire(&mut self, now: u64) -> Vec<Waiter<R>> {
        let (expired, kept): (Vec<_>, Vec<_>) =
            self.queue.drain(..).partition(|w| w.deadline <= now);
        self.queue = kept.into();
        expired
    }

    pub fn drain(&mut self) -> Vec<Waiter<R>> {
        self.queue.drain(..).collect()
    }

    pub fn next_deadline(&self) -> Option<u64> {
        self.queue.iter().map(|w| w.deadline).min()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn w(id: &str, reply: u32, deadline: u64) -> Waiter<u32> {
        Waiter {
            key: AttachKey::new("n", id, "eth0"),
            pod: PodRef::default(),
            netns: String::new(),
            reply,
            since: 0,
            deadline,
        }
    }

    #[test]
    fn a_retry_takes_the_first_ones_place_and_turn() {
        let mut q = Waiters::default();
        assert!(q.park(w("a", 1, 10)).is_none());
        assert!(q.park(w("b", 2, 10)).is_none());
        let old = q.park(w("a", 3, 20)).unwrap();
        assert_eq!(old.reply, 1);
        assert_eq!(q.len(), 2);
        assert_eq!(q.pop_front().unwrap().reply, 3, "the retry kept a's turn");
    }

    #[test]
    fn cancel_expire_and_deadlines() {
        let mut q = Waiters::default();
        for (i, id) in ["a", "b", "c"].iter().enumerate() {
            q.park(w(id, i as u32, 10 * (i as u64 + 1)));
        }
        assert_eq!(q.next_deadline(), Some(10));
        assert_eq!(
            q.cancel(&AttachKey::new("n", "b", "eth0")).unwrap().reply,
            1
        );
        assert!(q.cancel(&AttachKey::new("n", "b", "eth0")).is_none());
        let gone: Vec<u32> = q.expire(10).into_iter().map(|w| w.reply).collect();
        assert_eq!(gone, [0]);
        assert_eq!(q.next_deadline(), Some(30));
        let front = q.pop_front().unwrap();
        q.push_front(front);
        assert_eq!(q.drain().len(), 1);
        assert!(q.is_empty());
    }
}
