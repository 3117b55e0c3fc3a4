//! Tests of the HTTP/1.1 codec.

use super::*;

/// A fixed `Via` entry for the tests.
const VIA: &[u8] = b"1.1 turnout-0123456789ab";

fn plan(head: &str) -> Result<(RequestPlan, String), u16> {
    let mut up = Vec::new();
    let fwd = Forwarding {
        client_ip: b"10.0.0.9",
        https: false,
        via: VIA,
    };
    match plan_request(head.as_bytes(), &fwd, &mut up) {
        Ok(Some(p)) => Ok((p, String::from_utf8(up).unwrap())),
        Ok(None) => Err(0),
        Err(Refusal(status, _)) => Err(status),
    }
}

#[test]
fn hostile_and_malformed_heads_are_refused() {
    let cases: &[(&str, &str, u16)] = &[
        (
            "CL with TE",
            "POST / HTTP/1.1\r\nhost: a\r\ncontent-length: 3\r\ntransfer-encoding: chunked\r\n\r\n",
            400,
        ),
        (
            "two lengths",
            "POST / HTTP/1.1\r\nhost: a\r\ncontent-length: 3\r\ncontent-length: 4\r\n\r\n",
            400,
        ),
        (
            "list of lengths",
            "POST / HTTP/1.1\r\nhost: a\r\ncontent-length: 3, 4\r\n\r\n",
            400,
        ),
        (
            "non-numeric length",
            "POST / HTTP/1.1\r\nhost: a\r\ncontent-length: 3a\r\n\r\n",
            400,
        ),
        (
            "signed length",
            "POST / HTTP/1.1\r\nhost: a\r\ncontent-length: +3\r\n\r\n",
            400,
        ),
        (
            "chunked not last",
            "POST / HTTP/1.1\r\nhost: a\r\ntransfer-encoding: chunked, gzip\r\n\r\n",
            400,
        ),
        (
            "unknown coding",
            "POST / HTTP/1.1\r\nhost: a\r\ntransfer-encoding: gzip\r\n\r\n",
            501,
        ),
        (
            "TE in HTTP/1.0",
            "POST / HTTP/1.0\r\ntransfer-encoding: chunked\r\n\r\n",
            400,
        ),
        (
            "space before colon",
            "GET / HTTP/1.1\r\nhost : a\r\n\r\n",
            400,
        ),
        (
            "obs-fold",
            "GET / HTTP/1.1\r\nhost: a\r\nx-a: b\r\n c\r\n\r\n",
            400,
        ),
        (
            "NUL in value",
            "GET / HTTP/1.1\r\nhost: a\r\nx-a: b\0c\r\n\r\n",
            400,
        ),
        ("bare CR", "GET / HTTP/1.1\r\nhost: a\rx-a: b\r\n\r\n", 400),
        ("no Host in 1.1", "GET / HTTP/1.1\r\nx-a: b\r\n\r\n", 400),
        (
            "two Hosts",
            "GET / HTTP/1.1\r\nhost: a\r\nhost: b\r\n\r\n",
            400,
        ),
        ("bad target", "GET foo HTTP/1.1\r\nhost: a\r\n\r\n", 400),
        (
            "CONNECT",
            "CONNECT a:443 HTTP/1.1\r\nhost: a:443\r\n\r\n",
            405,
        ),
    ];
    for (what, head, status) in cases {
        match plan(head) {
            Err(got) => assert_eq!(got, *status, "{what}"),
            Ok((_, up)) => panic!("{what}: accepted, would send {up:?}"),
        }
    }
    let many = format!(
        "GET / HTTP/1.1\r\nhost: a\r\n{}\r\n",
        "x-a: 1\r\n".repeat(MAX_HEADERS)
    );
    assert_eq!(plan(&many).err(), Some(431));
    assert_eq!(
        plan("GET / HTTP/1.1\r\nhost: a\r\n").err(),
        Some(0),
        "incomplete head waits"
    );
}

#[test]
fn connection_and_host_edge_cases() {
    // `close` wins, whatever else the lines say.
    assert!(
        plan("GET / HTTP/1.1\r\nhost: a\r\nconnection: close, keep-alive\r\n\r\n")
            .unwrap()
            .0
            .close
    );
    assert!(
        plan("GET / HTTP/1.1\r\nhost: a\r\nconnection: close\r\nconnection: keep-alive\r\n\r\n")
            .unwrap()
            .0
            .close
    );
    // Every header named in Connection is dropped, however many; Host never is.
    let names: Vec<String> = (0..12).map(|i| format!("x-h{i}")).collect();
    let head = format!(
        "GET / HTTP/1.1\r\nhost: a\r\nconnection: host, {}\r\n{}\r\n",
        names.join(", "),
        names
            .iter()
            .map(|n| format!("{n}: 1\r\n"))
            .collect::<String>()
    );
    let (_, up) = plan(&head).unwrap();
    assert!(!up.contains("x-h"), "{up}");
    assert!(up.contains("host: a\r\n"), "{up}");
    // Absolute form: the authority replaces Host, the query survives, any case.
    let (_, up) = plan("GET HTTP://api.example?q=1 HTTP/1.1\r\nhost: other\r\n\r\n").unwrap();
    assert!(
        up.starts_with("GET /?q=1 HTTP/1.1\r\nhost: api.example\r\n"),
        "{up}"
    );
    assert!(!up.contains("other"), "{up}");
    // HTTP/1.0 without Host: an empty Host upstream, not none.
    let (_, up) = plan("GET / HTTP/1.0\r\n\r\n").unwrap();
    assert!(up.starts_with("GET / HTTP/1.1\r\nhost: \r\n"), "{up}");
    // HTTP/1.0 knows no 100 Continue.
    assert!(
        !plan("POST / HTTP/1.0\r\ncontent-length: 1\r\nexpect: 100-continue\r\n\r\n")
            .unwrap()
            .0
            .expect_continue
    );
    // h2c is not tunnelled.
    let (p, up) = plan("GET / HTTP/1.1\r\nhost: a\r\nconnection: upgrade, http2-settings\r\nupgrade: h2c\r\nhttp2-settings: x\r\n\r\n").unwrap();
    assert_eq!(p.upgrade, None);
    assert!(
        !up.contains("upgrade") && !up.contains("http2-settings"),
        "{up}"
    );
    // Spellings of the forwarding headers a framework would fold together, and
    // Forwarded, do not get through.
    let (_, up) = plan("GET / HTTP/1.1\r\nhost: a\r\nX_Forwarded_Host: evil\r\nx_forwarded_proto: https\r\nForwarded: host=evil\r\n\r\n").unwrap();
    assert!(!up.contains("evil") && !up.contains("https"), "{up}");
}

#[test]
fn upstream_head_is_rewritten() {
    let (p, up) = plan(
            "GET /a?b=1 HTTP/1.1\r\nHost: shop.example\r\nConnection: keep-alive, x-hop\r\nx-hop: 1\r\n\
             keep-alive: timeout=5\r\nTE: trailers\r\nProxy-Connection: x\r\nX-Forwarded-For: 1.2.3.4\r\n\
             x-forwarded-for: 5.6.7.8\r\nX-Forwarded-Proto: https\r\nX-Forwarded-Host: evil.example\r\n\
             accept: */*\r\n\r\n",
        )
        .unwrap();
    assert!(!p.close && p.idempotent && p.body == ReqBody::None);
    let via = String::from_utf8_lossy(VIA).into_owned();
    assert_eq!(
        up,
        format!(
            "GET /a?b=1 HTTP/1.1\r\nhost: shop.example\r\naccept: */*\r\n\
                 x-forwarded-for: 1.2.3.4, 5.6.7.8, 10.0.0.9\r\nx-forwarded-proto: http\r\n\
                 x-forwarded-host: shop.example\r\nvia: {via}\r\n\r\n"
        )
    );
    // A request that already passed through this router is a loop: 508. Another
    // proxy's Via goes on, beside this router's.
    let looped = format!("GET / HTTP/1.1\r\nhost: a\r\nvia: 1.0 edge, {via}\r\n\r\n");
    assert!(matches!(plan(&looped), Err(508)));
    let (_, up) =
        plan("GET / HTTP/1.1\r\nhost: a\r\nvia: 1.1 turnout-000000000000\r\n\r\n").unwrap();
    assert!(
        up.contains("via: 1.1 turnout-000000000000\r\n") && up.contains(&format!("via: {via}\r\n")),
        "{up}"
    );
    // Absolute form: the authority stands in for a missing Host.
    let (_, up) = plan("GET http://api.example/x HTTP/1.1\r\n\r\n").unwrap();
    assert!(up.starts_with("GET /x HTTP/1.1\r\n"), "{up}");
    assert!(up.contains("host: api.example\r\n"), "{up}");
    // Bodies: the framing upstream is turnout's own.
    let (p, up) = plan(
        "POST / HTTP/1.1\r\nhost: a\r\nTransfer-Encoding: chunked\r\nexpect: 100-continue\r\n\r\n",
    )
    .unwrap();
    assert!(p.body == ReqBody::Chunked && p.expect_continue && !p.idempotent);
    assert!(
        up.contains("transfer-encoding: chunked\r\n") && !up.contains("expect"),
        "{up}"
    );
    let (p, up) = plan("PUT / HTTP/1.1\r\nhost: a\r\ncontent-length: 12, 12\r\n\r\n").unwrap();
    assert!(p.body == ReqBody::Length(12));
    assert_eq!(up.matches("content-length").count(), 1, "{up}");
    // HTTP/1.0 closes unless it asks for keep-alive.
    assert!(plan("GET / HTTP/1.0\r\n\r\n").unwrap().0.close);
    assert!(
        !plan("GET / HTTP/1.0\r\nconnection: keep-alive\r\n\r\n")
            .unwrap()
            .0
            .close
    );
    assert!(
        plan("GET / HTTP/1.1\r\nhost: a\r\nconnection: close\r\n\r\n")
            .unwrap()
            .0
            .close
    );
    // Upgrades keep their protocol.
    let (p, up) = plan("GET /ws HTTP/1.1\r\nhost: a\r\nconnection: Upgrade\r\nupgrade: websocket\r\nsec-websocket-key: k\r\n\r\n").unwrap();
    assert_eq!(p.upgrade, Some(true));
    assert!(
        up.contains("connection: upgrade\r\nupgrade: websocket\r\n"),
        "{up}"
    );
}

/// A relayed head's facts, flat.
struct R {
    status: u16,
    framing: Framing,
    upstream_keep_alive: bool,
    client_chunked: bool,
    close: bool,
}

fn respond(upstream: &str, request: &str) -> (Option<R>, String, usize) {
    let (p, _) = plan(request).unwrap();
    let mut buf = BytesMut::from(upstream.as_bytes());
    let mut out = Vec::new();
    let r = relay_head(&mut buf, &p, &mut out).unwrap().map(|r| R {
        status: r.status,
        framing: r.framing.framing,
        upstream_keep_alive: r.framing.upstream_keep_alive,
        client_chunked: r.framing.client_chunked,
        close: r.framing.close,
    });
    (r, String::from_utf8(out).unwrap(), buf.len())
}

#[test]
fn early_hints_go_on_to_http_1_1_clients() {
    let up = "HTTP/1.1 103 Early Hints\r\nlink: </s.css>; rel=preload\r\n\r\n\
                  HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n";
    let (_, out, _) = respond(up, "GET / HTTP/1.1\r\nhost: a\r\n\r\n");
    assert_eq!(
        out,
        "HTTP/1.1 103 Early Hints\r\nlink: </s.css>; rel=preload\r\n\r\n\
             HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n"
    );
    // Written anew: bare LF line ends and hop-by-hop lines do not get through.
    let (_, out, _) = respond(
        "HTTP/1.1 103 Early Hints\nlink: </a>\nconnection: x\n\nHTTP/1.1 204 No Content\r\n\r\n",
        "GET / HTTP/1.1\r\nhost: a\r\n\r\n",
    );
    assert_eq!(
        out,
        "HTTP/1.1 103 Early Hints\r\nlink: </a>\r\n\r\nHTTP/1.1 204 No Content\r\n\r\n"
    );
    // HTTP/1.0 clients know no interim responses.
    let (_, out, _) = respond(up, "GET / HTTP/1.0\r\n\r\n");
    assert!(out.starts_with("HTTP/1.1 200 OK\r\n"), "{out}");
}

#[test]
fn response_connection_and_length_are_turnouts() {
    let get11 = "GET / HTTP/1.1\r\nhost: a\r\n\r\n";
    let (r, out, _) = respond(
        "HTTP/1.1 200 OK\r\ncontent-length: 3, 3\r\nconnection: close, keep-alive\r\n\r\nabc",
        get11,
    );
    assert!(!r.unwrap().upstream_keep_alive, "close wins");
    assert_eq!(out, "HTTP/1.1 200 OK\r\ncontent-length: 3\r\n\r\n");
    let names: Vec<String> = (0..12).map(|i| format!("x-h{i}")).collect();
    let up = format!(
        "HTTP/1.1 200 OK\r\nconnection: {}\r\n{}content-length: 0\r\n\r\n",
        names.join(", "),
        names
            .iter()
            .map(|n| format!("{n}: 1\r\n"))
            .collect::<String>()
    );
    let (_, out, _) = respond(&up, get11);
    assert!(!out.contains("x-h"), "{out}");
}

#[test]
fn response_head_is_rewritten() {
    let get11 = "GET / HTTP/1.1\r\nhost: a\r\n\r\n";
    let (r, out, left) = respond("HTTP/1.1 200 OK\r\ncontent-length: 2\r\nconnection: x-h\r\nx-h: 1\r\nkeep-alive: 5\r\nx-a: 1\r\n\r\nhi", get11);
    let r = r.unwrap();
    assert_eq!(
        (r.status, r.framing, r.upstream_keep_alive, r.close),
        (200, Framing::Length(2), true, false)
    );
    assert_eq!(
        out,
        "HTTP/1.1 200 OK\r\nx-a: 1\r\ncontent-length: 2\r\n\r\n"
    );
    assert_eq!(left, 2, "the body stays in the buffer");
    // Interim responses are skipped; chunked upstream, chunked to an HTTP/1.1 client
    // with the length dropped.
    let (r, out, _) = respond(
            "HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\ncontent-length: 9\r\n\r\n",
            get11,
        );
    let r = r.unwrap();
    assert_eq!((r.framing, r.client_chunked), (Framing::Chunked, true));
    assert_eq!(out, "HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n");
    // To an HTTP/1.0 client a streamed body ends with the connection.
    let (r, out, _) = respond(
        "HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n",
        "GET / HTTP/1.0\r\nconnection: keep-alive\r\n\r\n",
    );
    let r = r.unwrap();
    assert!(r.close && !r.client_chunked);
    assert!(out.ends_with("connection: close\r\n\r\n"), "{out}");
    // Upstream closes: not reused; HTTP/1.0 upstream: not reused.
    let (r, _, _) = respond(
        "HTTP/1.1 200 OK\r\nconnection: close\r\ncontent-length: 0\r\n\r\n",
        get11,
    );
    assert!(!r.unwrap().upstream_keep_alive);
    let (r, _, _) = respond("HTTP/1.0 200 OK\r\ncontent-length: 0\r\n\r\n", get11);
    assert!(!r.unwrap().upstream_keep_alive);
    // 101 keeps Upgrade and says so.
    let (r, out, _) = respond(
            "HTTP/1.1 101 Switching Protocols\r\nconnection: upgrade\r\nupgrade: websocket\r\nsec-websocket-accept: x\r\n\r\n",
            "GET /ws HTTP/1.1\r\nhost: a\r\nconnection: upgrade\r\nupgrade: websocket\r\n\r\n",
        );
    assert_eq!(r.unwrap().framing, Framing::Empty);
    assert_eq!(out, "HTTP/1.1 101 Switching Protocols\r\nupgrade: websocket\r\nsec-websocket-accept: x\r\nconnection: upgrade\r\n\r\n");
    // HEAD and 304 have no body whatever the headers say.
    let (r, _, _) = respond(
        "HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\n",
        "HEAD / HTTP/1.1\r\nhost: a\r\n\r\n",
    );
    assert_eq!(r.unwrap().framing, Framing::Empty);
    let (r, _, _) = respond(
        "HTTP/1.1 304 Not Modified\r\ncontent-length: 5\r\n\r\n",
        get11,
    );
    assert_eq!(r.unwrap().framing, Framing::Empty);
    // Incomplete: wait.
    let (r, out, _) = respond("HTTP/1.1 200 OK\r\ncontent-len", get11);
    assert!(r.is_none() && out.is_empty());
}

fn decode_all(input: &[u8], split: usize) -> Result<(Vec<u8>, bool, usize), ChunkError> {
    let mut dec = Chunked::default();
    let mut out = Vec::new();
    let mut buf = BytesMut::new();
    for piece in input.chunks(split) {
        buf.extend_from_slice(piece);
        while let Some(d) = dec.decode(&mut buf)? {
            out.extend_from_slice(&d);
        }
    }
    Ok((out, dec.state == ChunkState::Done, buf.len()))
}

#[test]
fn chunked_decoding_at_every_split() {
    let cases: &[(&[u8], Result<(&[u8], bool, usize), ChunkError>)] = &[
        (b"5\r\nhello\r\n0\r\n\r\n", Ok((b"hello", true, 0))),
        (
            b"5;ext=1\r\nhello\r\n6\r\n world\r\n0\r\n\r\n",
            Ok((b"hello world", true, 0)),
        ),
        (
            b"A\r\n0123456789\r\n0\r\nx-trailer: 1\r\n\r\n",
            Ok((b"0123456789", true, 0)),
        ),
        // Bytes after the end stay in the buffer (they make the connection unusable).
        (b"0\r\n\r\nHTTP", Ok((b"", true, 4))),
        (b"3\r\nabc\r\n", Ok((b"abc", false, 0))),
        (b"g\r\n", Err(ChunkError)),
        (b"3\r\nabcX\r\n", Err(ChunkError)),
        (b"\r\n", Err(ChunkError)),
        (b"ffffffffffffffff1\r\n", Err(ChunkError)),
    ];
    for (input, expected) in cases {
        for split in 1..=input.len() {
            let got = decode_all(input, split);
            let want = expected.map(|(d, done, rest)| (d.to_vec(), done, rest));
            assert_eq!(
                got,
                want,
                "{:?} split {split}",
                String::from_utf8_lossy(input)
            );
        }
    }
}

#[test]
fn endless_chunk_extensions_and_trailers_are_refused() {
    let long = "x".repeat(MAX_CHUNK_LINE + 1);
    for input in [
        format!("5;{long}\r\nhello\r\n0\r\n\r\n"),
        format!("0\r\nx-t: {long}\r\n\r\n"),
    ] {
        assert_eq!(decode_all(input.as_bytes(), 4096), Err(ChunkError));
    }
    let fine = "x".repeat(MAX_CHUNK_LINE - 10);
    let input = format!("0\r\nx-t: {fine}\r\n\r\n");
    assert_eq!(
        decode_all(input.as_bytes(), 4096),
        Ok((Vec::new(), true, 0))
    );
}

/// The framing and reuse of a response head given as text.
fn parsed(head: &str, head_request: bool) -> Result<(Framing, bool), &'static str> {
    let mut slots = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let h = parse_response(head.as_bytes(), &mut slots)?.expect("complete head");
    let framing = h.framing(head_request);
    h.check_length(framing)?;
    Ok((framing, h.reusable(framing)))
}

#[test]
fn response_framing() {
    let f = |head: &str, head_request| parsed(head, head_request).map(|(f, _)| f);
    assert_eq!(
        f("HTTP/1.1 200 OK\r\ncontent-length: 12\r\n\r\n", false),
        Ok(Framing::Length(12))
    );
    assert_eq!(
        f("HTTP/1.1 200 OK\r\ncontent-length: 12\r\n\r\n", true),
        Ok(Framing::Empty)
    );
    assert_eq!(
        f(
            "HTTP/1.1 304 Not Modified\r\ncontent-length: 5\r\n\r\n",
            false
        ),
        Ok(Framing::Empty)
    );
    assert_eq!(
        f("HTTP/1.1 204 No Content\r\n\r\n", false),
        Ok(Framing::Empty)
    );
    assert_eq!(
        f(
            "HTTP/1.1 200 OK\r\ntransfer-encoding: gzip, chunked\r\ncontent-length: 3\r\n\r\n",
            false
        ),
        Ok(Framing::Chunked)
    );
    assert_eq!(
        f("HTTP/1.1 200 OK\r\ntransfer-encoding: gzip\r\n\r\n", false),
        Ok(Framing::UntilClose)
    );
    assert_eq!(f("HTTP/1.1 200 OK\r\n\r\n", false), Ok(Framing::UntilClose));
    assert_eq!(
        f("HTTP/1.1 200 OK\r\ncontent-length: 3, 3\r\n\r\n", false),
        Ok(Framing::Length(3))
    );
    assert_eq!(
        f(
            "HTTP/1.1 200 OK\r\ncontent-length: 3\r\ncontent-length: 4\r\n\r\n",
            false
        ),
        Err("conflicting content-length values")
    );
    assert_eq!(
        f("HTTP/1.1 200 OK\r\ncontent-length: -1\r\n\r\n", false),
        Err("invalid content-length")
    );
    assert_eq!(
        f("SMTP ready\r\n\r\n", false),
        Err("invalid response head: invalid HTTP version")
    );
}

#[test]
fn keep_alive_rules() {
    let reusable = |head: &str| parsed(head, false).map(|(_, r)| r).unwrap();
    assert!(reusable("HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n"));
    assert!(!reusable(
        "HTTP/1.1 200 OK\r\nconnection: close\r\ncontent-length: 0\r\n\r\n"
    ));
    assert!(!reusable("HTTP/1.0 200 OK\r\ncontent-length: 0\r\n\r\n"));
    assert!(reusable(
        "HTTP/1.0 200 OK\r\nConnection: Keep-Alive\r\ncontent-length: 0\r\n\r\n"
    ));
    // Until close, and a switch of protocols, are never reused.
    assert!(!reusable("HTTP/1.1 200 OK\r\n\r\n"));
    assert!(!reusable(
        "HTTP/1.1 101 Switching Protocols\r\nupgrade: websocket\r\n\r\n"
    ));
}

#[test]
fn views_of_heads_turnout_wrote() {
    let head = b"GET /a?b HTTP/1.1\r\nhost: x\r\ncookie: a=1\r\nCookie: b=2\r\n\r\nbody";
    assert_eq!(request_line(head), Some(("GET", "/a?b")));
    let lines: Vec<_> = head_lines(head).collect();
    assert_eq!(
        lines,
        vec![
            (&b"host"[..], &b"x"[..]),
            (&b"cookie"[..], &b"a=1"[..]),
            (&b"Cookie"[..], &b"b=2"[..])
        ]
    );
    let resp = b"HTTP/1.1 103 Early Hints\r\nlink: x\r\n\r\nHTTP/1.1 200 OK\r\na: 1\r\n\r\n";
    let (status, start) = final_status(resp).unwrap();
    assert_eq!((status, &resp[start..start + 8]), (200, &b"HTTP/1.1"[..]));
    assert_eq!(
        head_lines(&resp[start..]).collect::<Vec<_>>(),
        vec![(&b"a"[..], &b"1"[..])]
    );
}

#[test]
fn one_hop_by_hop_list_for_header_maps() {
    let mut h = HeaderMap::new();
    for (k, v) in [
        ("connection", "x-a, keep-alive"),
        ("x-a", "1"),
        ("keep-alive", "5"),
        ("te", "trailers"),
        ("upgrade", "h2c"),
        ("x-b", "2"),
    ] {
        h.append(
            HeaderName::from_bytes(k.as_bytes()).unwrap(),
            http::HeaderValue::from_static(v),
        );
    }
    strip_hop_by_hop(&mut h);
    assert_eq!(
        h.keys().map(|k| k.as_str()).collect::<Vec<_>>(),
        vec!["x-b"]
    );
}

#[test]
fn a_bad_length_that_frames_nothing_is_ignored_by_a_reader_and_refused_by_the_live_path() {
    let f = |head: &str, head_request| parsed(head, head_request).map(|(f, _)| f);
    // The raw client and the mirror (what a client would do): ignored where the length
    // does not frame the body.
    assert_eq!(
        f("HTTP/1.1 200 OK\r\ncontent-length: x\r\n\r\n", true),
        Ok(Framing::Empty)
    );
    assert_eq!(
        f(
            "HTTP/1.1 304 Not Modified\r\ncontent-length: 1, 2\r\n\r\n",
            false
        ),
        Ok(Framing::Empty)
    );
    assert_eq!(
        f(
            "HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\ncontent-length: x\r\n\r\n",
            false
        ),
        Ok(Framing::Chunked)
    );
    assert_eq!(
        f("HTTP/1.1 200 OK\r\ncontent-length: x\r\n\r\n", false),
        Err("invalid content-length")
    );
    // The live path: an interim head's headers are not read; a final head with a bad
    // length is refused whatever its framing.
    let (r, out, _) = respond(
        "HTTP/1.1 103 Early Hints\r\ncontent-length: x\r\n\r\nHTTP/1.1 204 No Content\r\n\r\n",
        "GET / HTTP/1.1\r\nhost: a\r\n\r\n",
    );
    assert_eq!(r.map(|r| r.status), Some(204), "{out}");
    let fwd = Forwarding {
        client_ip: b"10.0.0.9",
        https: false,
        via: VIA,
    };
    let mut up = Vec::new();
    let plan = plan_request(b"HEAD / HTTP/1.1\r\nhost: a\r\n\r\n", &fwd, &mut up)
        .unwrap()
        .unwrap();
    let mut buf = BytesMut::from(&b"HTTP/1.1 200 OK\r\ncontent-length: 1, 2\r\n\r\n"[..]);
    assert_eq!(
        relay_head(&mut buf, &plan, &mut Vec::new()),
        Err("conflicting content-length values")
    );
    // httparse's reason is kept.
    let mut slots = [httparse::EMPTY_HEADER; MAX_HEADERS];
    assert_eq!(
        parse_response(b"HTTP/1.1 200 OK\r\nbad header\r\n\r\n", &mut slots).err(),
        Some("invalid response head: invalid header name")
    );
}
