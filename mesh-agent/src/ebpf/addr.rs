//! Conversions between std addresses and the 16-byte form of the kernel maps.

use std::net::{IpAddr, Ipv6Addr};

pub fn ip_to_bytes(ip: IpAddr) -> [u8; 16] {
    match ip {
        IpAddr::V4(v4) => v4.to_ipv6_mapped().octets(),
        IpAddr::V6(v6) => v6.octets(),
    }
}

pub fn bytes_to_ip(bytes: [u8; 16]) -> IpAddr {
    let v6 = Ipv6Addr::from(bytes);
    match v6.to_ipv4_mapped() {
        Some(v4) => IpAddr::V4(v4),
        None => IpAddr::V6(v6),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip() {
        for s in ["10.1.2.3", "127.0.0.1", "fd00::1", "::1"] {
            let ip: IpAddr = s.parse().unwrap();
            assert_eq!(bytes_to_ip(ip_to_bytes(ip)), ip);
        }
        assert_eq!(
            ip_to_bytes("10.0.0.1".parse().unwrap()),
            mesh_common::v4_mapped([10, 0, 0, 1])
        );
    }
}
