//! `terway max-pods`: the seed formulas for pods per node by mode.

use serde::Serialize;

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct MaxPods {
    /// ENIMultiIP: (EniQuantity − 1) × EniPrivateIpAddressQuantity (the primary ENI serves the node).
    pub shared: u32,
    /// ENIOnly: one pod per secondary ENI.
    pub exclusive: u32,
    /// Trunk member ENIs: EniTotalQuantity − EniQuantity, when the total is known.
    pub trunk: Option<u32>,
    /// Problems that keep a node of this type out of a mode.
    pub notes: Vec<String>,
}

/// Nodes below these counts cannot join a cluster in that mode (seed 002).
pub const MIN_SHARED_PODS: u32 = 11;
pub const MIN_EXCLUSIVE_PODS: u32 = 6;

pub fn max_pods(eni_quantity: u32, eni_ips: u32, eni_total: Option<u32>) -> MaxPods {
    let secondary = eni_quantity.saturating_sub(1);
    let shared = secondary.saturating_mul(eni_ips);
    let exclusive = secondary;
    let trunk = eni_total.map(|t| t.saturating_sub(eni_quantity));
    let mut notes = Vec::new();
    if shared < MIN_SHARED_PODS {
        notes.push(format!(
            "shared ENI mode needs at least {MIN_SHARED_PODS} pods per node; this type gives {shared}"
        ));
    }
    if exclusive < MIN_EXCLUSIVE_PODS {
        notes.push(format!(
            "exclusive ENI mode needs at least {MIN_EXCLUSIVE_PODS} pods per node; this type gives {exclusive}"
        ));
    }
    MaxPods {
        shared,
        exclusive,
        trunk,
        notes,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seed_figures_for_g7_4xlarge() {
        let m = max_pods(8, 30, Some(16));
        assert_eq!((m.shared, m.exclusive, m.trunk), (210, 7, Some(8)));
        assert!(m.notes.is_empty());
    }

    #[test]
    fn small_types_cannot_join() {
        let m = max_pods(2, 6, None);
        assert_eq!((m.shared, m.exclusive, m.trunk), (6, 1, None));
        assert_eq!(m.notes.len(), 2);
        assert_eq!(max_pods(0, 10, None).shared, 0);
    }
}
