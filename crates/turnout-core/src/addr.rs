//! Whether an upstream address is one of the router's own listening addresses: a router
//! that proxies to itself loops until the machine runs out of memory or descriptors.

use std::net::{IpAddr, SocketAddr};

/// Whether `upstream` (`HOST:PORT` as configured or given to `deploy --upstream`) names
/// `listen`, an address this router listens on: the same port, and a host that is that
/// address — or, when the router listens on every interface (`0.0.0.0`, `[::]`), a
/// loopback address or `localhost`. Other host names are not resolved (no IO here): a
/// loop through one is caught on the wire instead (`Via`).
pub fn names_listen_addr(upstream: &str, listen: SocketAddr) -> bool {
    let Some((host, port)) = upstream.rsplit_once(':') else {
        return false;
    };
    if port.parse::<u16>().ok() != Some(listen.port()) {
        return false;
    }
    let host = host.trim_start_matches('[').trim_end_matches(']');
    let ip = if host.eq_ignore_ascii_case("localhost") {
        None
    } else {
        match host.parse::<IpAddr>() {
            Ok(ip) => Some(ip),
            Err(_) => return false,
        }
    };
    if listen.ip().is_unspecified() {
        return ip.is_none_or(|ip| ip.is_loopback() || ip.is_unspecified());
    }
    match ip {
        Some(ip) => ip == listen.ip(),
        None => listen.ip().is_loopback(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn own_addresses_table() {
        let a = |s: &str| s.parse::<SocketAddr>().unwrap();
        for (upstream, listen, own) in [
            ("127.0.0.1:8080", "127.0.0.1:8080", true),
            ("localhost:8080", "127.0.0.1:8080", true),
            ("127.0.0.1:8080", "0.0.0.0:8080", true),
            ("127.0.0.2:8080", "0.0.0.0:8080", true),
            ("[::1]:8080", "[::]:8080", true),
            ("localhost:8080", "0.0.0.0:8080", true),
            ("127.0.0.1:8081", "127.0.0.1:8080", false),
            ("127.0.0.2:8080", "127.0.0.1:8080", false),
            ("10.0.0.5:8080", "0.0.0.0:8080", false),
            ("api.internal:8080", "0.0.0.0:8080", false),
            ("nonsense", "0.0.0.0:8080", false),
        ] {
            assert_eq!(
                names_listen_addr(upstream, a(listen)),
                own,
                "{upstream} vs {listen}"
            );
        }
    }
}
