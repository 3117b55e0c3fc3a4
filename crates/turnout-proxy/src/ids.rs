//! This router process's identity on the wire: the request ids it makes and its `Via`
//! entry. A request without `X-Request-Id` gets one: a per-process random prefix and a
//! counter, 24 hex digits, made without allocating.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::OnceLock;
use std::time::{SystemTime, UNIX_EPOCH};

static PREFIX: OnceLock<u64> = OnceLock::new();
static COUNTER: AtomicU64 = AtomicU64::new(0);

/// This router process's `Via` entry, `1.1 turnout-` and the 12 hex digits of its random
/// prefix: a request that comes back carrying it has looped through this router.
pub(crate) fn via() -> &'static [u8] {
    static VIA: OnceLock<Vec<u8>> = OnceLock::new();
    VIA.get_or_init(|| {
        let mut v = b"1.1 turnout-".to_vec();
        let mut tag = [0u8; 12];
        hex_into(&mut tag, prefix());
        v.extend_from_slice(&tag);
        v
    })
}

/// Whether a `Via` field value names this router process.
pub(crate) fn via_names_me(value: &[u8]) -> bool {
    crate::http1::via_names(value, via())
}

/// This process's `Via` entry as a header value, made once (a clone shares its bytes).
pub(crate) fn via_header() -> http::HeaderValue {
    static VIA: OnceLock<http::HeaderValue> = OnceLock::new();
    VIA.get_or_init(|| {
        http::HeaderValue::from_bytes(via())
            .unwrap_or(http::HeaderValue::from_static("1.1 turnout"))
    })
    .clone()
}

fn prefix() -> u64 {
    *PREFIX.get_or_init(|| {
        use std::hash::{BuildHasher, Hasher};
        // RandomState is seeded from the OS; mix in the time and pid for good measure.
        let mut h = std::collections::hash_map::RandomState::new().build_hasher();
        h.write_u128(
            SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .unwrap_or_default()
                .as_nanos(),
        );
        h.write_u32(std::process::id());
        h.finish()
    })
}

/// A new request id: 12 hex digits of a random per-process prefix, then 12 of a counter.
pub(crate) fn new_request_id() -> [u8; 24] {
    let prefix = prefix();
    let n = COUNTER.fetch_add(1, Relaxed);
    let mut out = [0u8; 24];
    hex_into(&mut out[..12], prefix);
    hex_into(&mut out[12..], n);
    out
}

/// The low `out.len()` hex digits of `v`.
fn hex_into(out: &mut [u8], mut v: u64) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    for b in out.iter_mut().rev() {
        *b = HEX[(v & 0xf) as usize];
        v >>= 4;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_distinct_hex() {
        let (a, b) = (new_request_id(), new_request_id());
        assert_ne!(a, b);
        assert_eq!(a[..12], b[..12]);
        assert!(a.iter().all(|c| c.is_ascii_hexdigit()));
    }

    #[test]
    fn the_via_entry_names_this_process_only() {
        assert!(via_names_me(via()));
        assert!(via_names_me(&[b"1.0 edge, ".as_slice(), via()].concat()));
        assert!(!via_names_me(b"1.1 turnout-000000000000"));
    }
}
