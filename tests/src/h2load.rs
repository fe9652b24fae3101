//! Reading h2load's summary, shared by the soak and the benchmarks.

use std::collections::BTreeMap;

use anyhow::{Context, Result};

/// A count list of h2load's summary, "10 total, 8 done, 2 failed" -> {total: 10, done: 8,
/// failed: 2}.
pub fn counts(fields: &str) -> Result<BTreeMap<String, u64>> {
    fields
        .split(',')
        .map(|f| {
            let (n, key) = f
                .trim()
                .split_once(' ')
                .with_context(|| format!("bad h2load count {f:?}"))?;
            let n = n
                .parse()
                .with_context(|| format!("bad h2load count {f:?}"))?;
            Ok((key.trim().to_string(), n))
        })
        .collect()
}

/// The counts of the summary line that starts with `label` (e.g. "requests:").
pub fn summary_counts(out: &str, label: &str) -> Result<BTreeMap<String, u64>> {
    let line = out
        .lines()
        .find_map(|l| l.trim().strip_prefix(label))
        .with_context(|| format!("no {label:?} line in h2load's output:\n{out}"))?;
    counts(line)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_requests_line() {
        let out = "finished in 3.00s\nrequests: 150 total, 150 started, 148 done, 147 succeeded, 1 failed, 2 errored, 0 timeout\n";
        let c = summary_counts(out, "requests:").unwrap();
        assert_eq!(c["done"], 148);
        assert_eq!(c["errored"], 2);
        assert!(summary_counts(out, "status codes:").is_err());
        assert!(counts("ten total").is_err());
    }
}
