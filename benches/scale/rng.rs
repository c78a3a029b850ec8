//! Deterministic randomness for the simulation: xorshift64* and the few distributions it draws.

#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        // A zero state would stay zero.
        Rng(seed ^ 0x9E37_79B9_7F4A_7C15 | 1)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    /// Uniform in [0, 1).
    pub fn unit(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }

    /// Uniform in [0, n).
    pub fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n.max(1)
    }

    /// Uniform in [lo, hi).
    pub fn between(&mut self, lo: u64, hi: u64) -> u64 {
        lo + self.below(hi.saturating_sub(lo))
    }

    /// Exponential with the given mean.
    pub fn exp(&mut self, mean: f64) -> f64 {
        -mean * (1.0 - self.unit()).ln()
    }
}

/// A latency: a fixed floor plus an exponential tail, capped (long tails are real, unbounded ones
/// are not).
#[derive(Debug, Clone, Copy)]
pub struct Latency {
    pub floor_ms: u64,
    pub mean_extra_ms: f64,
    pub cap_ms: u64,
}

impl Latency {
    pub fn draw(&self, rng: &mut Rng) -> u64 {
        (self.floor_ms + rng.exp(self.mean_extra_ms).round() as u64).min(self.cap_ms)
    }
}
