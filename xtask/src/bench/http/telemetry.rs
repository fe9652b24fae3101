//! `cargo xtask bench http --telemetry VARIANTS`: what each part of the telemetry costs the L7
//! path. The saturation tests run once per telemetry setting, back to back in every round: one
//! direct run per test and round (the same for every setting), then the mesh with the agents
//! restarted under each setting. Reported per setting: the saturation ratio (mesh / direct)
//! and the agents' CPU per request, and both against "off".
//!
//! Goals (from the regression that made the telemetry defaults halve the L7 path): with the
//! defaults, at most 10 % more agent CPU per request than with everything off, and a
//! saturation ratio at least 0.9x of everything-off's.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use anyhow::{Result, bail};
use serde_json::json;

use super::{Bench, Load, Proto, SCENARIOS, Samples, Scenario, TESTS, Test, ensure_h2load};
use crate::bench::{median, round3};

/// The settings compared, by name: everything off, each part alone on (destination-side
/// reporting needs a consumer, so it is measured on top of Istio metrics; `access_log` is the
/// request lines, written by the source agent only), the defaults (connection lines, Istio
/// metrics, destination-side reporting), and the defaults with request lines at both ends.
const VARIANTS: [(&str, &str); 6] = [
    (
        "off",
        "{istio_metrics: false, access_log: false, destination_requests: false}",
    ),
    (
        "access_log",
        "{istio_metrics: false, access_log: all, destination_requests: false}",
    ),
    (
        "istio_metrics",
        "{istio_metrics: true, access_log: false, destination_requests: false}",
    ),
    (
        "destination_requests",
        "{istio_metrics: true, access_log: false, destination_requests: true}",
    ),
    ("defaults", "{}"),
    ("defaults+request_log", "{access_log: all}"),
];

/// Defaults may cost at most this much more CPU per request than everything off...
const CPU_GOAL: f64 = 1.10;
/// ...and keep at least this share of everything-off's saturation ratio.
const SAT_GOAL: f64 = 0.90;

fn parse(list: &str) -> Result<Vec<(&'static str, &'static str)>> {
    if list.trim() == "all" {
        return Ok(VARIANTS.to_vec());
    }
    list.split(',')
        .map(str::trim)
        .map(|name| {
            VARIANTS
                .iter()
                .find(|(n, _)| *n == name)
                .copied()
                .ok_or_else(|| {
                    let names: Vec<&str> = VARIANTS.iter().map(|(n, _)| *n).collect();
                    anyhow::anyhow!(
                        "unknown telemetry setting {name:?}; known: {}, or all",
                        names.join(", ")
                    )
                })
        })
        .collect()
}

fn saturation_tests() -> impl Iterator<Item = Test> {
    TESTS.into_iter().filter(|t| t.load == Load::Saturation)
}

pub fn run(json: bool, list: &str) -> Result<()> {
    let variants = parse(list)?;
    ensure_h2load()?;
    let mut bench = Bench::setup()?;
    let mut samples: BTreeMap<&str, Samples> = BTreeMap::new();
    let rounds = crate::bench::rounds(super::ROUNDS);
    for round in 1..=rounds {
        for test in saturation_tests() {
            eprint!(
                "round {round}/{rounds}: {test:<16} {:<22}",
                Scenario::Direct
            );
            let direct = bench.sample(Scenario::Direct, test, round)?;
            for (name, yaml) in &variants {
                let s = samples.entry(name).or_default();
                for (metric, value) in &direct {
                    s.entry((metric.clone(), Scenario::Direct))
                        .or_default()
                        .push(*value);
                }
                // Fresh agents under this setting.
                bench.agents.set(&mut bench.mesh, false)?;
                bench.agents.spec_mut().telemetry_yaml = Some(yaml.to_string());
                eprint!("round {round}/{rounds}: {test:<16} mesh, {name:<16}");
                for (metric, value) in bench.sample(Scenario::Mesh, test, round)? {
                    s.entry((metric, Scenario::Mesh)).or_default().push(value);
                }
            }
        }
    }
    drop(bench);
    debug_assert_eq!(SCENARIOS.len(), 2);
    let rows: Vec<VariantRow> = variants
        .iter()
        .map(|(name, _)| VariantRow::of(name, &samples[name]))
        .collect();
    if json {
        for r in &rows {
            for (proto, m) in [(Proto::H1, &r.h1), (Proto::H2c, &r.h2c)] {
                let line = json!({
                    "suite": "http",
                    "telemetry": r.name,
                    "protocol": proto.name(),
                    "sat_ratio": m.ratio.map(round3),
                    "cpu_per_req_us": m.cpu_us.map(round3),
                });
                println!("{line}");
            }
        }
        eprint!("{}", verdicts(&rows)?);
    } else {
        print!("{}", table(&rows, rounds));
        print!("{}", verdicts(&rows)?);
    }
    Ok(())
}

#[derive(Debug, Default, Clone, Copy)]
struct ProtoResult {
    /// Saturation requests/s, mesh / direct.
    ratio: Option<f64>,
    /// Both agents' CPU per request, microseconds.
    cpu_us: Option<f64>,
}

struct VariantRow {
    name: &'static str,
    h1: ProtoResult,
    h2c: ProtoResult,
}

impl VariantRow {
    fn of(name: &'static str, samples: &Samples) -> VariantRow {
        let med = |metric: String, scenario| samples.get(&(metric, scenario)).map(|v| median(v));
        let of = |proto: Proto| {
            let test = Test {
                proto,
                load: Load::Saturation,
            };
            let rps = |scenario| med(test.metric("rps"), scenario);
            ProtoResult {
                ratio: rps(Scenario::Mesh)
                    .zip(rps(Scenario::Direct))
                    .map(|(m, d)| m / d),
                cpu_us: med(
                    format!("{}_agent_cpu_per_req", proto.name()),
                    Scenario::Mesh,
                ),
            }
        };
        VariantRow {
            name,
            h1: of(Proto::H1),
            h2c: of(Proto::H2c),
        }
    }
}

fn cell(v: Option<f64>, unit: &str) -> String {
    v.map_or_else(|| "-".to_owned(), |v| format!("{v:.2}{unit}"))
}

fn table(rows: &[VariantRow], rounds: usize) -> String {
    let off = rows.iter().find(|r| r.name == "off");
    let mut out = format!(
        "http --telemetry: saturation, mesh / direct and both agents' CPU per request, \
         median of {rounds} rounds\n{:<22} {:>10} {:>12} {:>10} {:>12} {:>10} {:>10}\n",
        "telemetry", "h1 sat", "h1 cpu/req", "h2c sat", "h2c cpu/req", "cpu vs off", "sat vs off"
    );
    for r in rows {
        let vs = |f: fn(&VariantRow) -> Option<f64>| off.and_then(|o| Some(f(r)? / f(o)?));
        let cpu_vs = vs(|r| Some(r.h1.cpu_us? + r.h2c.cpu_us?));
        let sat_vs = vs(|r| Some(r.h1.ratio? + r.h2c.ratio?));
        let _ = writeln!(
            out,
            "{:<22} {:>10} {:>12} {:>10} {:>12} {:>10} {:>10}",
            r.name,
            cell(r.h1.ratio, "x"),
            cell(r.h1.cpu_us, " us"),
            cell(r.h2c.ratio, "x"),
            cell(r.h2c.cpu_us, " us"),
            cell(cpu_vs, "x"),
            cell(sat_vs, "x"),
        );
    }
    out
}

/// The goals of the defaults against everything off, per protocol.
fn verdicts(rows: &[VariantRow]) -> Result<String> {
    let (Some(off), Some(defaults)) = (
        rows.iter().find(|r| r.name == "off"),
        rows.iter().find(|r| r.name == "defaults"),
    ) else {
        return Ok("goals need both `off` and `defaults` in --telemetry\n".to_owned());
    };
    let mut out = String::new();
    for (proto, o, d) in [
        (Proto::H1, off.h1, defaults.h1),
        (Proto::H2c, off.h2c, defaults.h2c),
    ] {
        let (Some(oc), Some(dc), Some(or), Some(dr)) = (o.cpu_us, d.cpu_us, o.ratio, d.ratio)
        else {
            bail!("missing samples for {}", proto.name());
        };
        let cpu = dc / oc;
        let sat = dr / or;
        let mark = |ok: bool| if ok { "met" } else { "NOT met" };
        let _ = writeln!(
            out,
            "goal {}: defaults' CPU/request {cpu:.2}x of off's (<= {CPU_GOAL}): {}; \
             saturation ratio {sat:.2}x of off's (>= {SAT_GOAL}): {}",
            proto.name(),
            mark(cpu <= CPU_GOAL),
            mark(sat >= SAT_GOAL)
        );
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn settings_parse_by_name() {
        let v = parse("off, defaults").unwrap();
        assert_eq!(
            v.iter().map(|(n, _)| *n).collect::<Vec<_>>(),
            ["off", "defaults"]
        );
        assert_eq!(parse("all").unwrap().len(), VARIANTS.len());
        let e = parse("off,bogus").unwrap_err().to_string();
        assert!(e.contains("bogus") && e.contains("istio_metrics"), "{e}");
    }
}
