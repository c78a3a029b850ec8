//! The cloud ops a pool has handed out and not yet seen the outcome of, for both ENI pools.

use super::eni::OpId;
use std::collections::BTreeMap;

/// What a pool notes about an op in flight.
pub(crate) trait InFlight {
    /// The known ENI the op works on (None for a create: its ENI is not known yet).
    fn eni(&self) -> Option<&str>;
    fn is_create(&self) -> bool;
}

/// Ops in flight by id, and the id the next one gets (ids count up from 1, never 0).
#[derive(Debug, Clone)]
pub(crate) struct Flights<F> {
    ops: BTreeMap<OpId, F>,
    next_op: OpId,
}

impl<F> Default for Flights<F> {
    fn default() -> Self {
        Flights {
            ops: BTreeMap::new(),
            next_op: 1,
        }
    }
}

impl<F: InFlight> Flights<F> {
    /// A new op in flight: its id.
    pub fn start(&mut self, flight: F) -> OpId {
        let op = self.next_op;
        self.next_op = self.next_op.wrapping_add(1).max(1);
        self.ops.insert(op, flight);
        op
    }

    /// Its outcome is in: what was noted about it (None for an op not handed out, or done).
    pub fn finish(&mut self, op: OpId) -> Option<F> {
        self.ops.remove(&op)
    }

    /// The id the next op gets.
    pub fn next_id(&self) -> OpId {
        self.next_op
    }

    /// An op works on this ENI.
    pub fn busy(&self, eni: &str) -> bool {
        self.ops.values().any(|f| f.eni() == Some(eni))
    }

    /// ENIs being created.
    pub fn creating(&self) -> u32 {
        self.ops.values().filter(|f| f.is_create()).count() as u32
    }

    pub fn values(&self) -> impl Iterator<Item = &F> {
        self.ops.values()
    }

    #[cfg(test)]
    pub fn ids(&self) -> impl Iterator<Item = OpId> + '_ {
        self.ops.keys().copied()
    }

    pub fn len(&self) -> usize {
        self.ops.len()
    }

    pub fn is_empty(&self) -> bool {
        self.ops.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    enum Op {
        Create,
        Delete(&'static str),
    }

    impl InFlight for Op {
        fn eni(&self) -> Option<&str> {
            match self {
                Op::Create => None,
                Op::Delete(eni) => Some(eni),
            }
        }
        fn is_create(&self) -> bool {
            matches!(self, Op::Create)
        }
    }

    #[test]
    fn ids_count_up_and_ops_are_found_by_eni() {
        let mut f = Flights::default();
        assert!(f.is_empty());
        assert_eq!(f.start(Op::Create), 1);
        assert_eq!(f.start(Op::Delete("eni-1")), 2);
        assert_eq!(f.start(Op::Create), 3);
        assert_eq!((f.len(), f.next_id(), f.creating()), (3, 4, 2));
        assert!(f.busy("eni-1") && !f.busy("eni-2"));
        assert!(f.finish(2).is_some());
        assert!(f.finish(2).is_none(), "once");
        assert!(!f.busy("eni-1"));
        assert_eq!(f.ids().collect::<Vec<_>>(), vec![1, 3]);
        assert_eq!(f.values().count(), 2);
    }

    #[test]
    fn ids_skip_zero_when_they_wrap() {
        let mut f = Flights::<Op> {
            ops: BTreeMap::new(),
            next_op: OpId::MAX,
        };
        assert_eq!(f.start(Op::Create), OpId::MAX);
        assert_eq!(f.start(Op::Create), 1);
    }
}
