//! Water-filling: an amount (pCPUs, credit) shared out among VMs by weight, each VM getting at
//! most its limit (what its VCPUs can use, its cap), what a VM cannot take going to the others
//! by weight.
//!
//! The rules: the amount left is shared among the VMs still open in proportion to their
//! weights (a weight of 0 counts as 1). Each VM whose part reaches its limit gets its limit
//! and closes, in VM order, and what is left is shared again among the others. The first round
//! in which no VM reaches its limit gives each open VM its part. The sharing ends there, or
//! once every VM is closed or nothing is left.
//!
//! `Topology::fair_shares` shares the pCPUs as `f64`s, which reach the results: the order of
//! the arithmetic here is theirs. Credit's accounting step shares a period's pCPU time as `u64`
//! nanoseconds, each part rounded down.

use std::ops::SubAssign;

/// What water-filling shares out: pCPUs as `f64`, or nanoseconds as `u64`.
pub(crate) trait Amount: Copy + PartialOrd + SubAssign {
    const NOTHING: Self;

    /// Whether there is anything left to share (for `f64`, more than rounding residue).
    fn is_left(self) -> bool;

    /// The part of `self` that `weight` gets of `weights` in all.
    fn part(self, weight: u32, weights: u64) -> Self;
}

impl Amount for f64 {
    const NOTHING: f64 = 0.0;

    fn is_left(self) -> bool {
        self > 1e-12
    }

    fn part(self, weight: u32, weights: u64) -> f64 {
        // `weights as f64` is exact: weights add up to far less than 2^53.
        self / weights as f64 * f64::from(weight)
    }
}

impl Amount for u64 {
    const NOTHING: u64 = 0;

    fn is_left(self) -> bool {
        self > 0
    }

    fn part(self, weight: u32, weights: u64) -> u64 {
        // In u128: a period's pCPU time times a weight can overflow u64.
        (u128::from(self) * u128::from(weight) / u128::from(weights)) as u64
    }
}

/// Shares `total` out among VMs given by their weight and limit (see the module doc), returning
/// each VM's part.
pub(crate) fn water_fill<A: Amount>(total: A, vms: &[(u32, A)]) -> Vec<A> {
    let weight = |vm: usize| vms[vm].0.max(1);
    let mut parts = vec![A::NOTHING; vms.len()];
    let mut open: Vec<usize> = (0..vms.len()).collect();
    let mut left = total;
    while !open.is_empty() && left.is_left() {
        let weights: u64 = open.iter().map(|&vm| u64::from(weight(vm))).sum();
        let (full, rest): (Vec<usize>, Vec<usize>) =
            open.iter().partition(|&&vm| left.part(weight(vm), weights) >= vms[vm].1);
        if full.is_empty() {
            for &vm in &open {
                parts[vm] = left.part(weight(vm), weights);
            }
            break;
        }
        for vm in full {
            parts[vm] = vms[vm].1;
            left -= vms[vm].1;
        }
        open = rest;
    }
    parts
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn vms_below_their_limits_share_by_weight_rounded_down_in_nanoseconds() {
        assert_eq!(water_fill(600, &[(1, 600), (2, 600)]), [200, 400]);
        assert_eq!(water_fill(10, &[(1, 10), (1, 10), (1, 10)]), [3, 3, 3]);
        assert_eq!(water_fill(3.0, &[(100, 4.0), (200, 4.0)]), [1.0, 2.0]);
        // A weight of 0 counts as 1.
        assert_eq!(water_fill(10, &[(0, 10), (1, 10)]), [5, 5]);
    }

    #[test]
    fn what_a_vm_cannot_take_goes_to_the_others_by_weight_round_after_round() {
        assert_eq!(water_fill(1000, &[(1, 100), (1, 1000), (3, 1000)]), [100, 225, 675]);
        // VM 1 fits its part of the first round (250), not of the second (300): it closes then.
        assert_eq!(water_fill(1000, &[(1, 100), (1, 260), (2, 1000)]), [100, 260, 640]);
        assert_eq!(water_fill(2.0, &[(256, 0.5), (256, 2.0)]), [0.5, 1.5]);
    }

    #[test]
    fn what_no_vm_can_take_is_left_over() {
        assert_eq!(water_fill(8.0, &[(1, 2.0), (1, 2.0)]), [2.0, 2.0]);
        assert_eq!(water_fill(4, &[(5, 0), (1, 3)]), [0, 3]);
        assert_eq!(water_fill::<u64>(4, &[]), []);
    }
}
