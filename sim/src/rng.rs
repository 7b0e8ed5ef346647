//! The simulation's one random stream (xorshift, from the seed): VM start times, timer
//! lateness and compute jitter all draw from it, in the order events happen, so that a seed
//! replays a run.

use sched::Ns;

pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed)
    }

    /// Uniform in `[0, 1)`.
    pub fn random(&mut self) -> f64 {
        let mut x = self.0.max(1);
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.0 = x;
        (x >> 11) as f64 / (1u64 << 53) as f64
    }

    /// `ns` times a random factor within `1 ± spread` (no draw if there is nothing to vary).
    pub fn vary(&mut self, ns: Ns, spread: f64) -> Ns {
        if spread <= 0.0 || ns == 0 {
            return ns;
        }
        (ns as f64 * (1.0 + spread * (2.0 * self.random() - 1.0))) as Ns
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_same_seed_gives_the_same_stream_within_its_bounds() {
        let (mut a, mut b) = (Rng::new(7), Rng::new(7));
        for _ in 0..1000 {
            let x = a.random();
            assert_eq!(x, b.random());
            assert!((0.0..1.0).contains(&x));
            let varied = a.vary(1_000_000, 0.02);
            assert_eq!(varied, b.vary(1_000_000, 0.02));
            assert!((980_000..=1_020_000).contains(&varied), "{varied}");
        }
        assert_ne!(Rng::new(8).random(), Rng::new(7).random());
    }

    #[test]
    fn nothing_to_vary_draws_nothing() {
        let (mut a, mut b) = (Rng::new(3), Rng::new(3));
        assert_eq!(a.vary(0, 0.02), 0);
        assert_eq!(a.vary(500, 0.0), 500);
        assert_eq!(a.random(), b.random());
    }
}
