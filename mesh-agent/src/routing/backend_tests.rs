use super::*;
use crate::routing::Via;

fn addr(i: usize) -> SocketAddr {
    SocketAddr::from(([10, 0, 0, i as u8], 8080))
}

fn backend(n: usize, lb: LoadBalancer, outlier: Option<OutlierDetection>) -> Arc<Backend> {
    Arc::new(Backend::new(
        BackendKey {
            namespace: "default".into(),
            name: "web".into(),
            port: 80,
        },
        (0..n)
            .map(|i| Upstream {
                addr: addr(i),
                via: Via::Direct,
            })
            .collect(),
        lb,
        outlier,
        &RetryBudget::default(),
    ))
}

fn outlier(consecutive_5xx: u32, gateway: u32, percent: u32) -> OutlierDetection {
    OutlierDetection {
        consecutive_5xx_errors: consecutive_5xx,
        consecutive_gateway_errors: gateway,
        base_ejection_time: Duration::from_secs(30),
        max_ejection_percent: percent,
    }
}

fn at(b: &Backend, secs: u64) -> Instant {
    b.origin + Duration::from_secs(secs)
}

/// Picks (and releases) `n` times at `now`, returning the chosen addresses.
fn picks(b: &Arc<Backend>, n: usize, now: Instant) -> Vec<SocketAddr> {
    (0..n)
        .map(|_| b.pick_at(None, now).map(|p| p.addr()).expect("an endpoint"))
        .collect()
}

/// Reports `n` outcomes at `now`; returns how many of them ejected.
fn fail(b: &Backend, a: SocketAddr, outcome: Outcome, n: usize, now: Instant) -> usize {
    (0..n).filter(|_| b.report_at(a, &outcome, now)).count()
}

#[test]
fn an_unchanged_backend_is_kept_and_a_changed_one_keeps_endpoint_health() {
    let b = backend(3, LoadBalancer::RoundRobin, Some(outlier(1, 0, 100)));
    let now = at(&b, 0);
    assert!(b.report_at(addr(1), &Outcome::Response(500), now));
    let upstreams = |range: std::ops::Range<usize>| -> Vec<Upstream> {
        range
            .map(|i| Upstream {
                addr: addr(i),
                via: Via::Direct,
            })
            .collect()
    };
    let follow = |prev: &Arc<Backend>, ups: Vec<Upstream>, od: Option<OutlierDetection>| {
        Backend::following(
            Some(prev),
            prev.key.clone(),
            ups,
            LoadBalancer::RoundRobin,
            od,
            &RetryBudget::default(),
        )
    };
    let same = follow(&b, upstreams(0..3), Some(outlier(1, 0, 100)));
    assert!(Arc::ptr_eq(&same, &b), "nothing changed: the same backend");

    // A new endpoint joins: addr(1) stays ejected, the new one is in rotation.
    let grown = follow(&b, upstreams(0..4), Some(outlier(1, 0, 100)));
    assert!(!Arc::ptr_eq(&grown, &b));
    let chosen = picks(&grown, 12, now);
    assert!(!chosen.contains(&addr(1)), "{chosen:?}");
    assert!(chosen.contains(&addr(3)), "{chosen:?}");
    assert_eq!(grown.ejections_total(), 1);
    // Its ejection count carries over: the next ejection lasts twice as long.
    let later = now + Duration::from_secs(31);
    assert!(
        picks(&grown, 12, later).contains(&addr(1)),
        "back after 30 s"
    );
    assert!(grown.report_at(addr(1), &Outcome::Response(500), later));
    assert!(!picks(&grown, 12, later + Duration::from_secs(59)).contains(&addr(1)));

    // Outlier detection turned off: nothing is carried (and nothing is ejected).
    let off = follow(&b, upstreams(0..4), None);
    assert!(picks(&off, 12, now).contains(&addr(1)));
}

#[test]
fn backend_is_send_and_sync() {
    fn check<T: Send + Sync>() {}
    check::<Backend>();
    check::<Pick>();
}

#[test]
fn round_robin_follows_config_order() {
    let b = backend(3, LoadBalancer::RoundRobin, None);
    let now = at(&b, 0);
    assert_eq!(
        picks(&b, 6, now),
        vec![addr(0), addr(1), addr(2), addr(0), addr(1), addr(2)]
    );
}

#[test]
fn round_robin_skips_ejected() {
    let b = backend(3, LoadBalancer::RoundRobin, Some(outlier(2, 0, 50)));
    let now = at(&b, 0);
    assert_eq!(fail(&b, addr(1), Outcome::Response(500), 2, now), 1);
    let got = picks(&b, 6, now);
    assert!(!got.contains(&addr(1)));
    assert_eq!(got.iter().filter(|&&a| a == addr(0)).count(), 3);
    assert_eq!(got.iter().filter(|&&a| a == addr(2)).count(), 3);
}

#[test]
fn no_endpoints_no_pick() {
    let b = backend(0, LoadBalancer::RoundRobin, None);
    assert!(b.pick(None).is_none());
    let b = backend(0, LoadBalancer::LeastRequest, None);
    assert!(b.pick(Some(addr(0))).is_none());
}

#[test]
fn avoid_respected_when_alternatives_exist() {
    for lb in [LoadBalancer::RoundRobin, LoadBalancer::LeastRequest] {
        let b = backend(3, lb, None);
        for _ in 0..100 {
            let p = b.pick(Some(addr(1))).expect("an endpoint");
            assert_ne!(p.addr(), addr(1));
        }
    }
}

#[test]
fn avoid_ignored_when_it_is_the_only_healthy_one() {
    let b = backend(1, LoadBalancer::RoundRobin, None);
    assert_eq!(b.pick(Some(addr(0))).map(|p| p.addr()), Some(addr(0)));

    let b = backend(2, LoadBalancer::LeastRequest, Some(outlier(1, 0, 50)));
    let now = at(&b, 0);
    assert!(b.report_at(addr(0), &Outcome::Response(503), now));
    for _ in 0..20 {
        assert_eq!(
            b.pick_at(Some(addr(1)), now).map(|p| p.addr()),
            Some(addr(1))
        );
    }
}

#[test]
fn least_request_prefers_idle_endpoint() {
    let b = backend(2, LoadBalancer::LeastRequest, None);
    let busy: Vec<Pick> = (0..5)
        .map(|_| b.pick(Some(addr(1))).expect("an endpoint"))
        .collect();
    assert!(busy.iter().all(|p| p.addr() == addr(0)));
    assert_eq!(b.endpoints[0].active.load(Ordering::Relaxed), 5);
    // With two endpoints P2C always compares both: the idle one wins every time.
    for _ in 0..200 {
        assert_eq!(b.pick(None).map(|p| p.addr()), Some(addr(1)));
    }
    drop(busy);
    assert_eq!(b.endpoints[0].active.load(Ordering::Relaxed), 0);
    assert_eq!(b.endpoints[1].active.load(Ordering::Relaxed), 0);
}

#[test]
fn least_request_spreads_held_load() {
    let b = backend(4, LoadBalancer::LeastRequest, None);
    let held: Vec<Pick> = (0..400)
        .map(|_| b.pick(None).expect("an endpoint"))
        .collect();
    // P2C keeps the loads close; a random pick would typically be off by ~20.
    for e in &b.endpoints {
        let load = e.active.load(Ordering::Relaxed);
        assert!((80..=120).contains(&load), "load {load}");
    }
    drop(held);
    assert!(
        b.endpoints
            .iter()
            .all(|e| e.active.load(Ordering::Relaxed) == 0)
    );
}

#[test]
fn least_request_single_healthy_endpoint() {
    let b = backend(3, LoadBalancer::LeastRequest, Some(outlier(1, 0, 100)));
    let now = at(&b, 0);
    assert!(b.report_at(addr(0), &Outcome::ConnectFailure, now));
    assert!(b.report_at(addr(2), &Outcome::Timeout, now));
    for _ in 0..20 {
        assert_eq!(b.pick_at(None, now).map(|p| p.addr()), Some(addr(1)));
    }
}

#[test]
fn ejection_after_consecutive_5xx() {
    let b = backend(4, LoadBalancer::RoundRobin, Some(outlier(3, 0, 50)));
    let now = at(&b, 0);
    assert!(!b.report_at(addr(0), &Outcome::Response(500), now));
    assert!(!b.report_at(addr(0), &Outcome::Response(503), now));
    assert!(b.report_at(addr(0), &Outcome::Response(500), now));
    assert_eq!(b.ejections_total(), 1);
    assert!(!picks(&b, 12, now).contains(&addr(0)));
}

#[test]
fn success_resets_counters() {
    let b = backend(4, LoadBalancer::RoundRobin, Some(outlier(3, 0, 50)));
    let now = at(&b, 0);
    assert_eq!(fail(&b, addr(0), Outcome::Response(500), 2, now), 0);
    assert!(!b.report_at(addr(0), &Outcome::Response(404), now));
    assert_eq!(fail(&b, addr(0), Outcome::Response(500), 2, now), 0);
    assert!(!b.report_at(addr(0), &Outcome::Response(200), now));
    assert_eq!(fail(&b, addr(0), Outcome::Response(500), 2, now), 0);
    assert!(b.report_at(addr(0), &Outcome::Response(500), now));
}

#[test]
fn gateway_errors_trigger() {
    let b = backend(4, LoadBalancer::RoundRobin, Some(outlier(0, 2, 50)));
    let now = at(&b, 0);
    // 5xx trigger disabled: 500s never eject, and they break a gateway-error run.
    assert_eq!(fail(&b, addr(0), Outcome::Response(500), 10, now), 0);
    assert!(!b.report_at(addr(0), &Outcome::Response(502), now));
    assert!(!b.report_at(addr(0), &Outcome::Response(500), now));
    assert!(!b.report_at(addr(0), &Outcome::Response(504), now));
    assert!(b.report_at(addr(0), &Outcome::Reset, now));
}

#[test]
fn local_failures_count_refused_does_not() {
    let b = backend(4, LoadBalancer::RoundRobin, Some(outlier(3, 0, 50)));
    let now = at(&b, 0);
    assert!(!b.report_at(addr(0), &Outcome::ConnectFailure, now));
    assert!(!b.report_at(addr(0), &Outcome::Refused, now));
    assert!(!b.report_at(addr(0), &Outcome::Timeout, now));
    assert_eq!(fail(&b, addr(0), Outcome::Refused, 10, now), 0);
    // Refused neither counted nor reset: the third failure ejects.
    assert!(b.report_at(addr(0), &Outcome::ConnectFailure, now));

    assert_eq!(fail(&b, addr(1), Outcome::Refused, 100, now), 0);
}

#[test]
fn no_outlier_detection_never_ejects() {
    let b = backend(2, LoadBalancer::RoundRobin, None);
    let now = at(&b, 0);
    assert_eq!(fail(&b, addr(0), Outcome::ConnectFailure, 100, now), 0);
    assert_eq!(fail(&b, addr(0), Outcome::Response(503), 100, now), 0);
    assert!(picks(&b, 4, now).contains(&addr(0)));
    // Unknown endpoint: ignored.
    assert!(!b.report_at(addr(9), &Outcome::Reset, now));
}

#[test]
fn max_ejection_percent_always_allows_one() {
    let b = backend(2, LoadBalancer::RoundRobin, Some(outlier(1, 0, 10)));
    let now = at(&b, 0);
    assert!(b.report_at(addr(0), &Outcome::Response(500), now));
    // 10% of 2 endpoints is 0, but one ejection is always allowed: not a second.
    assert_eq!(fail(&b, addr(1), Outcome::Response(500), 5, now), 0);
    assert_eq!(picks(&b, 4, now), vec![addr(1); 4]);
    assert_eq!(b.ejections_total(), 1);
}

#[test]
fn max_ejection_percent_zero_allows_none() {
    let b = backend(2, LoadBalancer::RoundRobin, Some(outlier(1, 0, 0)));
    let now = at(&b, 0);
    assert_eq!(fail(&b, addr(0), Outcome::Response(500), 5, now), 0);
    assert_eq!(b.ejections_total(), 0);
}

#[test]
fn max_ejection_percent_counts_current_ejections() {
    let b = backend(4, LoadBalancer::RoundRobin, Some(outlier(1, 0, 50)));
    let now = at(&b, 0);
    assert!(b.report_at(addr(0), &Outcome::Response(500), now));
    assert!(b.report_at(addr(1), &Outcome::Response(500), now));
    assert!(!b.report_at(addr(2), &Outcome::Response(500), now));
    // Once endpoint 0 is back, there is room again.
    let later = at(&b, 31);
    assert!(b.report_at(addr(2), &Outcome::Response(500), later));
}

#[test]
fn all_failing_with_percent_100_leaves_none() {
    let b = backend(2, LoadBalancer::RoundRobin, Some(outlier(1, 0, 100)));
    let now = at(&b, 0);
    assert!(b.report_at(addr(0), &Outcome::Response(503), now));
    assert!(b.report_at(addr(1), &Outcome::Response(503), now));
    assert!(b.pick_at(None, now).is_none());
    assert!(b.pick_at(Some(addr(0)), now).is_none());
}

#[test]
fn endpoint_returns_after_ejection_time() {
    let b = backend(2, LoadBalancer::RoundRobin, Some(outlier(2, 0, 50)));
    let t0 = at(&b, 0);
    assert_eq!(fail(&b, addr(0), Outcome::Response(500), 2, t0), 1);
    assert_eq!(picks(&b, 2, at(&b, 29)), vec![addr(1); 2]);
    let back = at(&b, 30);
    let got = picks(&b, 4, back);
    assert_eq!(got.iter().filter(|&&a| a == addr(0)).count(), 2);
    // Counters start from zero: one failure does not eject again.
    assert!(!b.report_at(addr(0), &Outcome::Response(500), back));
    assert!(b.report_at(addr(0), &Outcome::Response(500), back));
}

#[test]
fn reports_while_ejected_do_not_extend() {
    let b = backend(2, LoadBalancer::RoundRobin, Some(outlier(1, 0, 50)));
    assert!(b.report_at(addr(0), &Outcome::Response(500), at(&b, 0)));
    // In-flight attempts finishing during the ejection.
    assert_eq!(fail(&b, addr(0), Outcome::Response(500), 10, at(&b, 20)), 0);
    assert!(!b.report_at(addr(0), &Outcome::Response(200), at(&b, 20)));
    assert_eq!(b.ejections_total(), 1);
    assert!(picks(&b, 2, at(&b, 30)).contains(&addr(0)));
}

#[test]
fn ejection_time_grows_with_ejections() {
    let b = backend(2, LoadBalancer::RoundRobin, Some(outlier(1, 0, 50)));
    let ejected = |now: Instant| !picks(&b, 2, now).contains(&addr(0));
    let mut t = 0;
    for n in 1..=12u64 {
        assert!(b.report_at(addr(0), &Outcome::Response(500), at(&b, t)));
        // n × 30 s, capped at 300 s.
        let length = (n * 30).min(300);
        assert!(ejected(at(&b, t + length - 1)), "ejection {n}");
        assert!(!ejected(at(&b, t + length)), "ejection {n}");
        let snap = b.snapshot_at(at(&b, t + 1));
        assert!(snap.endpoints[0].ejected);
        assert_eq!(snap.endpoints[0].ejected_for_ms, (length - 1) * 1000);
        assert_eq!(snap.endpoints[0].ejections_total, n);
        t += length;
    }
    assert_eq!(b.ejections_total(), 12);
}

#[test]
fn snapshot_shows_state() {
    let b = backend(2, LoadBalancer::LeastRequest, Some(outlier(3, 0, 50)));
    let now = at(&b, 0);
    let held = b.pick_at(Some(addr(0)), now).expect("an endpoint");
    assert_eq!(fail(&b, addr(0), Outcome::Response(502), 2, now), 0);
    let snap = b.snapshot_at(now);
    assert_eq!(snap.endpoints[0].consecutive_errors, 2);
    assert_eq!(snap.endpoints[0].consecutive_gateway_errors, 2);
    assert!(!snap.endpoints[0].ejected);
    assert_eq!(snap.endpoints[0].ejected_for_ms, 0);
    assert_eq!(snap.endpoints[1].active_requests, 1);
    assert_eq!(snap.endpoints[1].via, "Direct");
    let json = serde_json::to_value(&snap).expect("serializes");
    assert_eq!(json["lb"], "least_request");
    assert_eq!(json["key"]["name"], "web");
    assert_eq!(json["endpoints"][0]["addr"], "10.0.0.0:8080");
    drop(held);
}
