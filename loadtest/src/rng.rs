//! A small seeded random generator (SplitMix64), so a seed gives the same
//! hospital on every machine and every build, whatever crate versions do.

/// SplitMix64: fast, statistically fine for simulation, fully determined by
/// its seed.
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed)
    }

    /// A generator for one (seed, key...) combination: the same key always
    /// gives the same stream, independently of what else was drawn.
    pub fn keyed(seed: u64, key: &[u64]) -> Rng {
        let mut rng = Rng(seed);
        for part in key {
            rng.0 ^= part.wrapping_mul(0x9e37_79b9_7f4a_7c15);
            rng.next_u64();
        }
        rng
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Uniform in [0, 1).
    pub fn unit(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }

    /// Uniform in [0, n); 0 when n is 0.
    pub fn below(&mut self, n: u64) -> u64 {
        if n == 0 { 0 } else { self.next_u64() % n }
    }

    pub fn chance(&mut self, p: f64) -> bool {
        self.unit() < p
    }

    /// A Poisson-distributed count with the given mean (Knuth's method for
    /// small means, a rounded normal approximation above 30).
    pub fn poisson(&mut self, mean: f64) -> u32 {
        if mean <= 0.0 {
            return 0;
        }
        if mean > 30.0 {
            // Box-Muller.
            let u1 = self.unit().max(f64::MIN_POSITIVE);
            let u2 = self.unit();
            let normal = (-2.0 * u1.ln()).sqrt() * (std::f64::consts::TAU * u2).cos();
            return (mean + normal * mean.sqrt()).round().max(0.0) as u32;
        }
        let limit = (-mean).exp();
        let mut product = self.unit();
        let mut count = 0;
        while product > limit {
            count += 1;
            product *= self.unit();
        }
        count
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_seed_gives_one_stream() {
        let a: Vec<u64> = (0..5)
            .map({
                let mut r = Rng::new(7);
                move |_| r.next_u64()
            })
            .collect();
        let b: Vec<u64> = (0..5)
            .map({
                let mut r = Rng::new(7);
                move |_| r.next_u64()
            })
            .collect();
        assert_eq!(a, b);
        assert_ne!(
            Rng::keyed(7, &[1, 2]).next_u64(),
            Rng::keyed(7, &[2, 1]).next_u64()
        );
    }

    #[test]
    fn poisson_has_the_asked_mean() {
        let mut rng = Rng::new(42);
        for mean in [0.5, 4.0, 12.0, 80.0] {
            let n = 20_000;
            let total: u64 = (0..n).map(|_| u64::from(rng.poisson(mean))).sum();
            let observed = total as f64 / n as f64;
            assert!(
                (observed - mean).abs() < mean * 0.05 + 0.05,
                "mean {mean}: {observed}"
            );
        }
    }
}
