//! `nbody`: barrier-synchronized data parallelism, the role of SPEC OMP's ammp. Each timestep
//! every thread computes the accelerations of its own slice of the particles from all of
//! them, waits at a barrier, moves its particles, and waits again.
//!
//! The result is bit-identical for any thread count and in any runtime: every particle's
//! arithmetic is the same sequence whichever thread does it.

use alloc::format;
use alloc::vec::Vec;
use core::arch::x86_64::{_mm_cvtsd_f64, _mm_set_sd, _mm_sqrt_sd};
use core::sync::atomic::{AtomicU64, Ordering};

use crate::common::{self, THREADS, XorShift};
use crate::params::{ParamSpec, Params};
use crate::record::{FNV_OFFSET, Record, fnv1a};
use crate::runtime::{Barrier, BarrierKind, Runtime};
use crate::{Error, WorkloadInfo};

/// `nbody` as the registry lists it.
pub const WORKLOAD: WorkloadInfo = WorkloadInfo {
    name: "nbody",
    about: "barrier-synchronized particle simulation (SPEC OMP ammp)",
    unit: "timesteps",
    params: PARAMS,
    matrix_args: Some(&[("barrier", "spin"), ("steps", "300")]),
    endless_args: &[("barrier", "spin"), ("steps", "1000000000")],
    served: false,
};

/// The parameters of `nbody`.
pub const PARAMS: &[ParamSpec] = &[
    THREADS,
    ParamSpec::int("bodies", "512", "particles, 1-65536"),
    ParamSpec::int("steps", "1400", "timesteps"),
    ParamSpec::choice("barrier", "spin", &["spin", "block"], "barrier waiters spin, or spin then block"),
];

/// The seed of the initial conditions ("nbody" in ASCII; any fixed value does).
const SEED: u64 = 0x006e_626f_6479;
/// The timestep.
const DT: f64 = 1e-3;
/// Plummer softening squared: keeps close encounters finite.
const SOFTENING2: f64 = 1e-2;
/// Largest drift of the total momentum allowed, relative to the sum of the momenta's sizes.
const MOMENTUM_TOLERANCE: f64 = 1e-10;

/// An array of `f64`s that threads share: relaxed atomics, ordered by the barriers.
struct SharedF64s(Vec<AtomicU64>);

impl SharedF64s {
    fn new(values: impl Iterator<Item = f64>) -> Self {
        SharedF64s(values.map(|v| AtomicU64::new(v.to_bits())).collect())
    }

    fn get(&self, i: usize) -> f64 {
        f64::from_bits(self.0[i].load(Ordering::Relaxed))
    }

    fn set(&self, i: usize, value: f64) {
        self.0[i].store(value.to_bits(), Ordering::Relaxed);
    }
}

/// The particles: masses, and positions, velocities and accelerations as x, y, z triples.
struct System {
    mass: Vec<f64>,
    pos: SharedF64s,
    vel: SharedF64s,
    acc: SharedF64s,
}

/// The IEEE-754 square root, correctly rounded, so the same everywhere (`f64::sqrt` needs
/// std).
fn sqrt(x: f64) -> f64 {
    // SAFETY: these intrinsics need SSE2, which every x86-64 CPU has.
    unsafe { _mm_cvtsd_f64(_mm_sqrt_sd(_mm_set_sd(x), _mm_set_sd(x))) }
}

impl System {
    /// Particles in the unit cube around the origin with small random velocities, from a
    /// fixed seed; the total momentum is zero up to rounding.
    fn new(bodies: usize) -> Self {
        let mut rng = XorShift::new(SEED);
        let mass: Vec<f64> = (0..bodies).map(|_| (0.5 + rng.next_f64()) / bodies as f64).collect();
        let pos: Vec<f64> = (0..3 * bodies).map(|_| rng.next_f64() - 0.5).collect();
        let mut vel: Vec<f64> = (0..3 * bodies).map(|_| 0.1 * (rng.next_f64() - 0.5)).collect();
        let total_mass: f64 = mass.iter().sum();
        for k in 0..3 {
            let drift = (0..bodies).map(|i| mass[i] * vel[3 * i + k]).sum::<f64>() / total_mass;
            (0..bodies).for_each(|i| vel[3 * i + k] -= drift);
        }
        System {
            mass,
            pos: SharedF64s::new(pos.into_iter()),
            vel: SharedF64s::new(vel.into_iter()),
            acc: SharedF64s::new((0..3 * bodies).map(|_| 0.0)),
        }
    }

    /// Phase 1 for particle `i`: its acceleration from every particle, summed in index order
    /// (its own term is zero).
    fn accelerate(&self, i: usize) {
        let [xi, yi, zi] = [0, 1, 2].map(|k| self.pos.get(3 * i + k));
        let mut a = [0.0; 3];
        for (j, &mass) in self.mass.iter().enumerate() {
            let d = [self.pos.get(3 * j) - xi, self.pos.get(3 * j + 1) - yi, self.pos.get(3 * j + 2) - zi];
            let r2 = d[0] * d[0] + d[1] * d[1] + d[2] * d[2] + SOFTENING2;
            let scale = mass / (r2 * sqrt(r2));
            (0..3).for_each(|k| a[k] += d[k] * scale);
        }
        (0..3).for_each(|k| self.acc.set(3 * i + k, a[k]));
    }

    /// Phase 2 for particle `i`: a semi-implicit Euler step.
    fn advance(&self, i: usize) {
        for k in 3 * i..3 * i + 3 {
            let v = self.vel.get(k) + self.acc.get(k) * DT;
            self.vel.set(k, v);
            self.pos.set(k, self.pos.get(k) + v * DT);
        }
    }

    /// The total momentum, and the sum of the sizes of its terms (the scale of its rounding).
    fn momentum(&self) -> ([f64; 3], f64) {
        let (mut total, mut scale) = ([0.0; 3], 0.0);
        for (i, &mass) in self.mass.iter().enumerate() {
            for (k, total) in total.iter_mut().enumerate() {
                let p = mass * self.vel.get(3 * i + k);
                *total += p;
                scale += p.abs();
            }
        }
        (total, scale)
    }

    fn checksum(&self) -> u64 {
        self.pos.0.iter().chain(&self.vel.0).fold(FNV_OFFSET, |h, bits| fnv1a(h, bits.load(Ordering::Relaxed)))
    }

    /// Fails unless every position and velocity is finite and the momentum is conserved.
    fn check(&self, initial_momentum: [f64; 3]) -> Result<(), Error> {
        let all = self.pos.0.iter().chain(&self.vel.0);
        if let Some(bad) = all.map(|bits| f64::from_bits(bits.load(Ordering::Relaxed))).find(|v| !v.is_finite()) {
            return Err(Error::Check(format!("a position or velocity became {bad}")));
        }
        let (momentum, scale) = self.momentum();
        for k in 0..3 {
            let drift = (momentum[k] - initial_momentum[k]).abs();
            if drift > MOMENTUM_TOLERANCE * scale {
                return Err(Error::Check(format!(
                    "momentum not conserved: component {k} drifted by {drift:e} (sum of momenta {scale:e})"
                )));
            }
        }
        Ok(())
    }
}

/// Simulates `steps` timesteps on `threads` threads; checks that everything stayed finite and
/// the momentum was conserved.
pub fn run<R: Runtime>(rt: &R, params: &Params) -> Result<Record, Error> {
    let threads = common::threads(rt, params)?;
    let bodies = params.u64_in("bodies", 1..=1 << 16, "between 1 and 65536 particles")? as usize;
    let steps = params.u64("steps");
    let kind = if params.str("barrier") == "spin" { BarrierKind::Spin } else { BarrierKind::SpinThenBlock };
    let system = System::new(bodies);
    let (initial_momentum, _) = system.momentum();
    let barrier = rt.barrier(threads, kind);

    let start = rt.now_ns();
    let per_thread = rt.parallel(threads, &|t| {
        let mine = common::share(bodies, threads, t);
        for _ in 0..steps {
            mine.clone().for_each(|i| system.accelerate(i));
            barrier.wait();
            mine.clone().for_each(|i| system.advance(i));
            barrier.wait();
        }
        steps
    });
    let elapsed_ns = rt.now_ns() - start;

    system.check(initial_momentum)?;
    Ok(Record {
        elapsed_ns,
        ops: steps,
        checksum: system.checksum(),
        per_thread,
        ..common::record(rt, WORKLOAD.name, params, WORKLOAD.unit)
    })
}

#[cfg(all(test, feature = "std"))]
mod tests {
    use alloc::format;

    use crate::native::NativeRuntime;

    #[test]
    fn checksum_is_the_same_for_any_thread_count_and_barrier() {
        let rt = NativeRuntime::new(Some(2));
        let mut checksums = alloc::vec::Vec::new();
        for barrier in ["spin", "block"] {
            for threads in 1..=4 {
                let (threads, barrier) = (format!("threads={threads}"), format!("barrier={barrier}"));
                let record = crate::run(&rt, "nbody", &["bodies=37", "steps=15", &threads, &barrier]).unwrap();
                checksums.push(record.checksum);
            }
        }
        assert!(checksums.windows(2).all(|w| w[0] == w[1]), "checksums differ: {checksums:x?}");
    }
}
