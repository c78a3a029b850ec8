//! VPC mode: addresses from the node's pod CIDR, handed out round robin.
//!
//! The network address, the broadcast address and the gateway (`network + 1`) are never handed
//! out. A released address is not reused until the cursor has gone round the whole range, so a
//! crash-looping pod does not get an address whose stale route or conntrack entries still linger.

use ipnetwork::Ipv4Network;
use std::net::Ipv4Addr;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CidrPool {
    cidr: Ipv4Network,
    cursor: Option<Ipv4Addr>,
}

impl CidrPool {
    pub fn new(cidr: Ipv4Network, cursor: Option<Ipv4Addr>) -> CidrPool {
        let cidr = Ipv4Network::new(cidr.network(), cidr.prefix()).unwrap_or(cidr);
        CidrPool { cidr, cursor }
    }

    pub fn cidr(&self) -> Ipv4Network {
        self.cidr
    }

    pub fn cursor(&self) -> Option<Ipv4Addr> {
        self.cursor
    }

    pub fn gateway(&self) -> Ipv4Addr {
        Ipv4Addr::from(u32::from(self.cidr.network()) + 1)
    }

    /// First and last address that may be handed out, as integers.
    fn range(&self) -> (u32, u32) {
        let net = u32::from(self.cidr.network());
        let bcast = u32::from(self.cidr.broadcast());
        (net.saturating_add(2), bcast.saturating_sub(1))
    }

    pub fn capacity(&self) -> u64 {
        let (first, last) = self.range();
        if last < first {
            0
        } else {
            u64::from(last - first) + 1
        }
    }

    pub fn is_usable(&self, ip: Ipv4Addr) -> bool {
        let (first, last) = self.range();
        (first..=last).contains(&u32::from(ip))
    }

    /// The next address after the cursor that `in_use` says is free; moves the cursor there.
    pub fn next(&mut self, in_use: impl Fn(Ipv4Addr) -> bool) -> Option<Ipv4Addr> {
        let (first, last) = self.range();
        let cap = self.capacity();
        if cap == 0 {
            return None;
        }
        let start = match self.cursor.map(u32::from) {
            Some(c) if (first..last).contains(&c) => c + 1,
            _ => first,
        };
        for i in 0..cap {
            let offset = (u64::from(start - first) + i) % cap;
            let ip = Ipv4Addr::from(first + offset as u32);
            if !in_use(ip) {
                self.cursor = Some(ip);
                return Some(ip);
            }
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;

    fn pool(cidr: &str) -> CidrPool {
        CidrPool::new(cidr.parse().unwrap(), None)
    }

    #[test]
    fn skips_network_gateway_and_broadcast() {
        let mut p = pool("10.0.0.0/29");
        assert_eq!(p.capacity(), 5);
        let mut used = HashSet::new();
        while let Some(ip) = p.next(|ip| used.contains(&ip)) {
            used.insert(ip);
        }
        let mut got: Vec<String> = used.iter().map(|i| i.to_string()).collect();
        got.sort();
        assert_eq!(
            got,
            ["10.0.0.2", "10.0.0.3", "10.0.0.4", "10.0.0.5", "10.0.0.6"]
        );
        assert_eq!(p.gateway(), "10.0.0.1".parse::<Ipv4Addr>().unwrap());
        assert!(!p.is_usable("10.0.0.7".parse().unwrap()));
    }

    #[test]
    fn released_address_is_not_reused_immediately() {
        let mut p = pool("10.0.0.0/24");
        let a = p.next(|_| false).unwrap();
        // `a` released at once: the next allocation still moves on.
        let b = p.next(|_| false).unwrap();
        assert_ne!(a, b);
        assert_eq!(u32::from(b), u32::from(a) + 1);
    }

    #[test]
    fn wraps_around_and_fills_holes() {
        let mut p = CidrPool::new(
            "10.0.0.0/29".parse().unwrap(),
            Some("10.0.0.6".parse().unwrap()),
        );
        let used: HashSet<Ipv4Addr> = ["10.0.0.2"].iter().map(|s| s.parse().unwrap()).collect();
        assert_eq!(
            p.next(|ip| used.contains(&ip)).unwrap().to_string(),
            "10.0.0.3"
        );
    }

    #[test]
    fn exhausted_pool_and_smallest_cidr() {
        let mut p = pool("10.0.0.0/30");
        assert_eq!(p.capacity(), 1);
        assert_eq!(p.next(|_| false).unwrap().to_string(), "10.0.0.2");
        assert_eq!(p.next(|_| true), None);
        // A cursor outside the CIDR (config changed) restarts at the beginning.
        let mut p = CidrPool::new(
            "10.0.0.0/24".parse().unwrap(),
            Some("192.168.0.9".parse().unwrap()),
        );
        assert_eq!(p.next(|_| false).unwrap().to_string(), "10.0.0.2");
    }
}
