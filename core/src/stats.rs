//! Statistics, in one place: order statistics of repeated measurements, percentiles of
//! latency samples, medians, and Jain's fairness index.

use serde::Serialize;

/// Median, 10th and 90th percentile of a sample.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Summary {
    pub median: f64,
    pub p10: f64,
    pub p90: f64,
}

impl Summary {
    /// Summarizes a non-empty sample.
    pub fn of(mut sample: Vec<f64>) -> Summary {
        assert!(!sample.is_empty(), "empty sample");
        sample.sort_by(f64::total_cmp);
        let at = |q: f64| sample[((sample.len() - 1) as f64 * q).round() as usize];
        Summary { median: at(0.5), p10: at(0.1), p90: at(0.9) }
    }
}

/// The 50th and 99th percentile of a sample.
#[derive(Debug, Clone, Copy, Default, Serialize)]
pub struct Percentiles {
    pub count: usize,
    pub p50: u64,
    pub p99: u64,
}

impl Percentiles {
    pub fn of(mut sample: Vec<u64>) -> Percentiles {
        if sample.is_empty() {
            return Percentiles::default();
        }
        sample.sort_unstable();
        let at = |q: f64| sample[((sample.len() - 1) as f64 * q).round() as usize];
        Percentiles { count: sample.len(), p50: at(0.5), p99: at(0.99) }
    }
}

/// Jain's fairness index of `values`: 1 when all are equal, 1/n when one has everything.
pub fn jain(values: &[f64]) -> f64 {
    let sum: f64 = values.iter().sum();
    let squares: f64 = values.iter().map(|x| x * x).sum();
    if squares == 0.0 { 1.0 } else { sum * sum / (values.len() as f64 * squares) }
}

/// The median of `values` (of an even count, the mean of the middle two); `None` if empty.
pub fn median(values: &[f64]) -> Option<f64> {
    if values.is_empty() {
        return None;
    }
    let mut sorted = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    Some((sorted[(sorted.len() - 1) / 2] + sorted[sorted.len() / 2]) / 2.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn summary_picks_order_statistics() {
        let s = Summary::of((1..=11).rev().map(f64::from).collect());
        assert_eq!(s, Summary { median: 6.0, p10: 2.0, p90: 10.0 });
        assert_eq!(Summary::of(vec![3.0]).median, 3.0);
    }

    #[test]
    fn jain_index_is_one_when_even_and_one_over_n_when_one_takes_all() {
        assert!((jain(&[0.8, 0.8, 0.8]) - 1.0).abs() < 1e-12);
        assert!((jain(&[1.0, 0.0, 0.0, 0.0]) - 0.25).abs() < 1e-12);
        assert!(jain(&[1.0, 0.5]) < 1.0);
    }

    #[test]
    fn median_of_an_even_count_is_the_mean_of_the_middle_two() {
        assert_eq!(median(&[3.0, 1.0, 2.0]), Some(2.0));
        assert_eq!(median(&[4.0, 1.0, 2.0, 3.0]), Some(2.5));
        assert_eq!(median(&[]), None);
    }
}
