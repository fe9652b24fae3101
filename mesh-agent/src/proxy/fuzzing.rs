//! Fuzzing entry point of the inbound tunnel's request handling: arbitrary bytes as the
//! CONNECT request another node's agent sends (method, authority, `forwarded`, `baggage` and
//! any other header), read by [`read_connect`] as the listener reads it, against a model with
//! services and named endpoints so that the baggage is matched against real entries.
//!
//! Input: lines (`\n`). The first is the method, the second the request target, each further
//! line a header `name: value` (values are bytes, as HTTP/2 allows).

use std::{net::SocketAddr, sync::OnceLock};

use hyper::{HeaderMap, Method, Uri, header::HeaderName, header::HeaderValue};

use super::connect::read_connect;
use crate::{identity::SpiffeId, state::peers::PeerIndex};

/// The model the requests are read against: the example node (services in namespace `shop`
/// with endpoints named `api`).
const MODEL: &str = include_str!("../../fuzz/seeds/config_load/node.yaml");

fn peers() -> &'static PeerIndex {
    static PEERS: OnceLock<PeerIndex> = OnceLock::new();
    PEERS.get_or_init(|| {
        let config = crate::config::fuzzing::model(MODEL);
        PeerIndex::build(&config, &[])
    })
}

/// Reads `data` as a CONNECT request. Panics only when an invariant breaks (a bug).
pub fn fuzz_one(data: &[u8]) {
    let mut lines = data.split(|b| *b == b'\n');
    let Some(Ok(method)) = lines.next().map(Method::from_bytes) else {
        return;
    };
    let Some(Ok(uri)) = lines.next().map(Uri::try_from) else {
        return;
    };
    let mut headers = HeaderMap::new();
    for line in lines {
        let Some(colon) = line.iter().position(|b| *b == b':') else {
            continue;
        };
        let (name, value) = (&line[..colon], line[colon + 1..].trim_ascii());
        if let (Ok(name), Ok(value)) =
            (HeaderName::from_bytes(name), HeaderValue::from_bytes(value))
        {
            headers.append(name, value);
        }
    }
    let peer: SocketAddr = "10.0.1.7:41000".parse().expect("a literal address");
    let identity = SpiffeId::new("cluster.local", "shop", "client");
    if let Ok(request) = read_connect(&method, &uri, &headers, peer, &identity, peers()) {
        assert_eq!(method, Method::CONNECT, "only CONNECT is served");
        let authority = uri.authority().map(|a| a.as_str()).unwrap_or_default();
        assert_eq!(
            authority.parse::<SocketAddr>().ok(),
            Some(request.target),
            "the target is the authority"
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seeds_and_their_mutations_are_read_or_refused_cleanly() {
        let seeds: &[&[u8]] = &[
            include_bytes!("../../fuzz/seeds/tunnel_connect/plain"),
            include_bytes!("../../fuzz/seeds/tunnel_connect/baggage"),
            b"GET\n/\n",
            b"CONNECT\n[::1]:80\nforwarded: for=\"[::1]\"\n",
            b"CONNECT\n10.1.1.2:8080\nbaggage: k8s.namespace.name=shop,,=,k8s.pod.name\n",
        ];
        crate::seed_mutations::run_on_seeds(seeds, 500, fuzz_one);
    }

    #[test]
    fn the_baggage_seed_is_read_into_target_origin_and_source() {
        let headers: HeaderMap = [
            (
                HeaderName::from_static("forwarded"),
                HeaderValue::from_static("for=\"[fd00::7]\""),
            ),
            (
                HeaderName::from_static("baggage"),
                HeaderValue::from_static("k8s.namespace.name=shop,k8s.workload.name=web"),
            ),
        ]
        .into_iter()
        .collect();
        let request = read_connect(
            &Method::CONNECT,
            &Uri::from_static("10.1.1.2:8080"),
            &headers,
            "10.0.1.7:41000".parse().unwrap(),
            &SpiffeId::new("cluster.local", "shop", "client"),
            peers(),
        )
        .unwrap();
        assert_eq!(request.target, "10.1.1.2:8080".parse().unwrap());
        assert_eq!(
            request.origin,
            "fd00::7".parse::<std::net::IpAddr>().unwrap()
        );
        assert_eq!(request.source.workload.as_str(), "web");
        let refused = read_connect(
            &Method::GET,
            &Uri::from_static("/"),
            &HeaderMap::new(),
            "10.0.1.7:41000".parse().unwrap(),
            &SpiffeId::new("cluster.local", "shop", "client"),
            peers(),
        );
        assert_eq!(
            refused.unwrap_err().status,
            hyper::StatusCode::METHOD_NOT_ALLOWED
        );
    }

    #[test]
    fn the_model_has_the_named_endpoint() {
        assert!(peers().by_ip("10.1.1.2".parse().unwrap()).is_some());
    }
}
