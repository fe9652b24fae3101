//! Latency statistics.

use std::time::Duration;

use serde_json::{Value, json};

/// Nearest-rank percentile of ascending `sorted` values: the smallest value
/// with at least `p` percent of samples at or below it.
pub fn percentile(sorted: &[f64], p: f64) -> Option<f64> {
    if sorted.is_empty() {
        return None;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    Some(sorted[rank.clamp(1, sorted.len()) - 1])
}

/// `{"p50_us","p99_us","mean_us","min_us","max_us","count"}` of the samples.
pub fn summarize(samples: &[Duration]) -> Value {
    let mut us: Vec<f64> = samples.iter().map(|d| d.as_secs_f64() * 1e6).collect();
    us.sort_by(f64::total_cmp);
    let mean = if us.is_empty() {
        None
    } else {
        Some(us.iter().sum::<f64>() / us.len() as f64)
    };
    json!({
        "p50_us": percentile(&us, 50.0),
        "p99_us": percentile(&us, 99.0),
        "mean_us": mean,
        "min_us": us.first(),
        "max_us": us.last(),
        "count": us.len(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nearest_rank() {
        let v: Vec<f64> = (1..=100).map(f64::from).collect();
        assert_eq!(percentile(&v, 50.0), Some(50.0));
        assert_eq!(percentile(&v, 99.0), Some(99.0));
        assert_eq!(percentile(&v, 100.0), Some(100.0));
        assert_eq!(percentile(&v, 0.0), Some(1.0));
        assert_eq!(percentile(&[7.0], 99.0), Some(7.0));
        assert_eq!(percentile(&[1.0, 2.0, 3.0], 50.0), Some(2.0));
        assert_eq!(percentile(&[], 50.0), None);
    }

    #[test]
    fn summary_fields() {
        let s = summarize(&[
            Duration::from_micros(30),
            Duration::from_micros(10),
            Duration::from_micros(20),
        ]);
        assert_eq!(s["count"], 3);
        assert_eq!(s["p50_us"].as_f64().unwrap().round(), 20.0);
        assert_eq!(s["p99_us"].as_f64().unwrap().round(), 30.0);
        assert_eq!(s["mean_us"].as_f64().unwrap().round(), 20.0);
    }
}
