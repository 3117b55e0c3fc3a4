//! The logic of each fuzz target, shared by the libFuzzer targets in `fuzz_targets/`
//! (cargo-fuzz, nightly) and the stable smoke driver in `src/bin/smoke.rs`. Each function
//! takes arbitrary bytes and must not panic.

use std::time::Duration;

use bytes::Bytes;
use turnout_shadow::goreplay::Reader;
use turnout_shadow::{compare, CompareOptions, ResponseCopy};

/// The names of the targets, as `run` knows them.
pub const TARGETS: &[&str] = &[
    "config",
    "goreplay",
    "compare",
    "request_head",
    "response_head",
];

/// Runs target `name` on `data`; `false` for an unknown name.
pub fn run(name: &str, data: &[u8]) -> bool {
    match name {
        "config" => config(data),
        "goreplay" => goreplay(data),
        "compare" => compare_bodies(data),
        "request_head" => request_head(data),
        "response_head" => response_head(data),
        _ => return false,
    }
    true
}

/// `Config::from_toml` on arbitrary UTF-8 (other bytes are skipped: the config loader
/// reads text). Every error must carry a line within the text.
pub fn config(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Err(errors) = turnout_config::Config::from_toml(text, "fuzz.toml") {
        // Rendering the errors must not panic either.
        let _ = errors.to_string();
    }
}

/// The GoReplay `Reader` over arbitrary bytes, every record read, and each record's payload
/// parsed as the HTTP/1.x message its type says.
pub fn goreplay(data: &[u8]) {
    let mut last_offset = None;
    for item in Reader::new(data) {
        match item {
            Ok(record) => {
                assert!(
                    record.offset <= data.len() as u64,
                    "record offset past the end"
                );
                if let Some(prev) = last_offset {
                    assert!(record.offset > prev, "record offsets not increasing");
                }
                last_offset = Some(record.offset);
                let _ = record.to_request();
                let _ = record.to_response(Some("GET"));
                let _ = record.to_response(Some("HEAD"));
            }
            Err(e) => {
                let _ = e.to_string();
            }
        }
    }
    // The same bytes as a raw HTTP message.
    let _ = turnout_shadow::parse_request(data);
    let _ = turnout_shadow::parse_response(data);
}

/// `compare` on two bodies cut from `data` (at the first 0xFF byte, else in the middle):
/// the first byte picks the content types and a few `ignore_json` patterns.
pub fn compare_bodies(data: &[u8]) {
    let (flags, rest) = data.split_first().map_or((0, data), |(f, r)| (*f, r));
    let cut = rest
        .iter()
        .position(|b| *b == 0xff)
        .unwrap_or(rest.len() / 2);
    let (a, b) = (&rest[..cut], &rest[(cut + 1).min(rest.len())..]);
    let ctype = |bit: u8| -> Bytes {
        match (flags >> bit) & 3 {
            0 => Bytes::from_static(b"application/json"),
            1 => Bytes::from_static(b"text/plain; charset=utf-8"),
            2 => Bytes::from_static(b"application/octet-stream"),
            _ => Bytes::from_static(b"application/problem+json"),
        }
    };
    let resp = |body: &[u8], ct: Bytes, status: u16| ResponseCopy {
        status,
        headers: vec![
            ("content-type".to_string(), ct),
            (
                "x-fuzz".to_string(),
                Bytes::copy_from_slice(&body[..body.len().min(8)]),
            ),
        ],
        body: Bytes::copy_from_slice(body),
        body_truncated: flags & 0x80 != 0,
        latency: Duration::from_millis(1),
    };
    let live = resp(a, ctype(0), 200);
    let other = resp(b, ctype(2), if flags & 0x40 != 0 { 500 } else { 200 });
    let mut opts = CompareOptions::default();
    if flags & 0x20 != 0 {
        opts.ignore_json = vec![
            "/a/*/b".into(),
            "body/x".into(),
            "/*".into(),
            "/~1~0".into(),
        ];
        opts.ignore_headers = vec!["X-Fuzz".into()];
    }
    for d in compare(&live, &other, &opts) {
        assert!(
            d.live.chars().count() <= turnout_shadow::compare::MAX_RENDERED + 1
                && d.candidate.chars().count() <= turnout_shadow::compare::MAX_RENDERED + 1,
            "rendering longer than MAX_RENDERED"
        );
    }
    // A response compared with itself has no differences.
    let same = compare(&live, &live, &opts);
    assert!(same.is_empty(), "a response differs from itself: {same:?}");
}

/// The proxy's HTTP/1.1 codec (`turnout_proxy::http1`), called directly: the request-head
/// parser and planner on `data`, then, when the head is complete, the chunked decoder on
/// what follows it (whatever the head's framing) in pieces of every size up to 16.
pub fn request_head(data: &[u8]) {
    use turnout_proxy::http1;
    let fwd = http1::Forwarding {
        client_ip: b"192.0.2.1",
        https: false,
        via: b"1.1 turnout-0123456789ab",
    };
    let mut up = Vec::new();
    let Ok(Some(plan)) = http1::plan_request(data, &fwd, &mut up) else {
        return;
    };
    assert!(plan.head_len <= data.len(), "head longer than the input");
    if let Some((from, to)) = plan.request_id {
        assert!(
            from <= to && to <= plan.head_len,
            "request id outside the head"
        );
    }
    assert!(up.ends_with(b"\r\n\r\n"), "upstream head not terminated");
    // The head turnout wrote reads back as a request line and header lines.
    assert!(
        http1::request_line(&up).is_some(),
        "upstream head unreadable"
    );
    let rest = &data[plan.head_len..];
    for split in 1..=16.min(rest.len().max(1)) {
        let mut dec = http1::Chunked::default();
        let mut buf = bytes::BytesMut::new();
        let mut out = 0usize;
        'feed: for piece in rest.chunks(split) {
            buf.extend_from_slice(piece);
            loop {
                match dec.decode(&mut buf) {
                    Ok(Some(d)) => out += d.len(),
                    Ok(None) => break,
                    Err(_) => break 'feed,
                }
            }
        }
        assert!(out <= rest.len(), "decoded more than the input");
    }
}

/// The codec's response side: `data` as an upstream's response (interim heads, then the
/// final one) relayed to an HTTP/1.1 and an HTTP/1.0 client, for GET and HEAD. The head a
/// client gets must be complete and say the same status.
pub fn response_head(data: &[u8]) {
    use turnout_proxy::http1;
    let fwd = http1::Forwarding {
        client_ip: b"192.0.2.1",
        https: false,
        via: b"1.1 turnout-0123456789ab",
    };
    let mut up = Vec::new();
    for request in [
        &b"GET / HTTP/1.1\r\nhost: a\r\n\r\n"[..],
        b"HEAD / HTTP/1.1\r\nhost: a\r\n\r\n",
        b"GET / HTTP/1.0\r\n\r\n",
    ] {
        let Ok(Some(plan)) = http1::plan_request(request, &fwd, &mut up) else {
            panic!("the fixed request is refused");
        };
        let mut buf = bytes::BytesMut::from(data);
        let mut out = Vec::new();
        if let Ok(Some(relayed)) = http1::relay_head(&mut buf, &plan, &mut out) {
            assert!(out.ends_with(b"\r\n\r\n"), "client head not terminated");
            let (status, _) = http1::final_status(&out).expect("client head unreadable");
            assert_eq!(status, relayed.status, "client head says another status");
            assert!(buf.len() < data.len(), "nothing of the input was read");
        }
    }
}
