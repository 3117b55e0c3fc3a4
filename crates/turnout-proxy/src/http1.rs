//! The HTTP/1.1 codec: pure, synchronous functions over bytes, with no IO and nothing
//! of the rest of the data plane (the fuzz targets call it directly). It holds the
//! framing rules once, for requests and responses alike:
//! - [`plan_request`] checks a client's request head strictly and writes the head the
//!   upstream gets: a request with both `Content-Length` and `Transfer-Encoding`,
//!   differing or invalid lengths, `chunked` not last, several `Host` lines, or no
//!   `Host` in HTTP/1.1 is refused with 400 (an unknown transfer coding with 501); a head
//!   over 64 KiB or 100 lines with 431;
//! - [`parse_response`] reads one response head (interim or final) as a zero-copy view,
//!   with its [`Framing`]; [`write_client_head`] writes the head a client gets from it;
//! - [`Chunked`] decodes the chunked coding, [`encode_chunk`] encodes it;
//! - [`hop_by_hop`] is the one list of headers that never cross turnout (RFC 9110
//!   §7.6.1), used by both protocols and the shadow's copies.

use bytes::{Buf, Bytes, BytesMut};
use http::header::{HeaderMap, HeaderName};

/// Longest head accepted, request or response.
pub const MAX_HEAD: usize = 64 * 1024;
/// Most header lines accepted in a head.
pub const MAX_HEADERS: usize = 100;
/// HTTP/2's header list limit (decoded, as HPACK counts it): four times [`MAX_HEAD`], so
/// that a request over HTTP/1.1's limits still reaches the proxy and gets the same 431.
pub const H2_HEADER_LIST_LIMIT: u32 = 4 * MAX_HEAD as u32;

/// Whether an HTTP/2 request's header fields are over HTTP/1.1's limits ([`MAX_HEAD`]
/// bytes of names and values, [`MAX_HEADERS`] fields), which the HTTP/2 path applies too.
pub fn headers_too_large(headers: &HeaderMap) -> bool {
    if headers.len() > MAX_HEADERS {
        return true;
    }
    let mut size = 0usize;
    for (name, value) in headers {
        // Name, ": ", value, CRLF: as the HTTP/1.1 head would be.
        size += name.as_str().len() + value.len() + 4;
        if size > MAX_HEAD {
            return true;
        }
    }
    false
}

/// Headers that never cross turnout (RFC 9110 §7.6.1): the one list, for requests and
/// responses of both protocols and for the shadow's copies.
pub const HOP_BY_HOP: [&str; 7] = [
    "connection",
    "keep-alive",
    "proxy-connection",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
];

/// Whether `name` (any case) is in [`HOP_BY_HOP`].
pub fn hop_by_hop(name: &str) -> bool {
    HOP_BY_HOP.iter().any(|h| eq(name, h))
}

/// Removes the hop-by-hop headers from a header map: those named in `Connection` (every
/// line), and [`HOP_BY_HOP`].
pub fn strip_hop_by_hop(headers: &mut HeaderMap) {
    if headers.contains_key(http::header::CONNECTION) {
        let named: Vec<HeaderName> = headers
            .get_all(http::header::CONNECTION)
            .iter()
            .flat_map(|v| tokens(v.as_bytes()))
            .filter_map(|t| HeaderName::from_bytes(t).ok())
            .collect();
        for name in named {
            headers.remove(name);
        }
    }
    for name in HOP_BY_HOP {
        if headers.contains_key(name) {
            headers.remove(name);
        }
    }
}

/// What a request is, once its head is checked.
#[derive(Clone, Copy, Debug, Default)]
pub struct RequestPlan {
    /// Bytes of the head in the input.
    pub head_len: usize,
    /// A `HEAD` request (its response has no body).
    pub head_request: bool,
    /// An idempotent method (RFC 9110 §9.2.2): safe to send again.
    pub idempotent: bool,
    /// The HTTP/1.x minor version.
    pub minor: u8,
    /// How its body is framed.
    pub body: ReqBody,
    /// The client asked to close after this request.
    pub close: bool,
    /// An `Upgrade` request; `true` for WebSocket.
    pub upgrade: Option<bool>,
    /// `Expect: 100-continue` (HTTP/1.1 only).
    pub expect_continue: bool,
    /// Where the client's `X-Request-Id` value is in the input (start, end), if it sent
    /// one.
    pub request_id: Option<(usize, usize)>,
}

/// How a request body is framed.
#[derive(Clone, Copy, PartialEq, Debug, Default)]
pub enum ReqBody {
    /// No body (or `Content-Length: 0`).
    #[default]
    None,
    /// `Content-Length`.
    Length(u64),
    /// The chunked coding.
    Chunked,
}

/// A request head that is refused: the status and the short body the client gets.
#[derive(Debug, PartialEq)]
pub struct Refusal(pub u16, pub &'static str);

/// What the upstream head says about where the request came from.
pub struct Forwarding<'a> {
    /// The client's address (`X-Forwarded-For`).
    pub client_ip: &'a [u8],
    /// The client connection is TLS (`X-Forwarded-Proto`).
    pub https: bool,
    /// This router's `Via` entry: appended, and a request already carrying it is a loop.
    pub via: &'a [u8],
}

/// The loop refusal (508).
pub const LOOP: Refusal = Refusal(
    508,
    "turnout: loop detected: this request already passed through this router (Via); an upstream points back at turnout\n",
);

/// Parses and checks a request head in `buf`, and writes the upstream's head into `up`.
/// `Ok(None)`: the head is not complete yet.
pub fn plan_request(
    buf: &[u8],
    fwd: &Forwarding<'_>,
    up: &mut Vec<u8>,
) -> Result<Option<RequestPlan>, Refusal> {
    let mut slots = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut req = httparse::Request::new(&mut slots);
    let head_len = match req.parse(buf) {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(httparse::Error::TooManyHeaders) => {
            return Err(Refusal(431, "turnout: too many request header lines\n"))
        }
        Err(_) => return Err(Refusal(400, "turnout: malformed request head\n")),
    };
    let (Some(method), Some(target), Some(minor)) = (req.method, req.path, req.version) else {
        return Err(Refusal(400, "turnout: malformed request line\n"));
    };
    let me = via_tag(fwd.via);

    // One pass for the facts that decide framing and routing.
    let mut length: Option<u64> = None;
    let mut chunked = false;
    let mut transfer_encoding = false;
    let mut host: Option<&[u8]> = None;
    let mut upgrade: Option<&[u8]> = None;
    let (mut saw_close, mut saw_keep_alive, mut conn_upgrade) = (false, false, false);
    // Whether `Connection` names other headers to drop (looked up again when copying).
    let mut conn_names = false;
    let mut expect_continue = false;
    let mut request_id = None;
    for h in req.headers.iter() {
        let name = h.name;
        if eq(name, "content-length") {
            add_content_length(h.value, &mut length).map_err(|e| match e {
                LengthError::Invalid => Refusal(400, "turnout: invalid Content-Length\n"),
                LengthError::Conflict => {
                    Refusal(400, "turnout: conflicting Content-Length values\n")
                }
            })?;
        } else if eq(name, "transfer-encoding") {
            for coding in tokens(h.value) {
                if chunked {
                    return Err(Refusal(
                        400,
                        "turnout: chunked must be the last transfer coding\n",
                    ));
                }
                if coding.eq_ignore_ascii_case(b"chunked") {
                    chunked = true;
                } else {
                    return Err(Refusal(501, "turnout: unsupported transfer coding\n"));
                }
            }
            transfer_encoding = true;
        } else if eq(name, "host") {
            if host.is_some() {
                return Err(Refusal(400, "turnout: more than one Host header\n"));
            }
            host = Some(h.value);
        } else if eq(name, "connection") {
            for t in tokens(h.value) {
                if t.eq_ignore_ascii_case(b"close") {
                    saw_close = true;
                } else if t.eq_ignore_ascii_case(b"keep-alive") {
                    saw_keep_alive = true;
                } else if t.eq_ignore_ascii_case(b"upgrade") {
                    conn_upgrade = true;
                } else {
                    conn_names = true;
                }
            }
        } else if eq(name, "upgrade") {
            upgrade = Some(h.value);
        } else if eq(name, "via") {
            if !me.is_empty() && h.value.windows(me.len()).any(|w| w == me) {
                return Err(LOOP);
            }
        } else if eq(name, "x-request-id") {
            // Where the value is in `buf` (httparse's slices point into it).
            let from = h.value.as_ptr() as usize - buf.as_ptr() as usize;
            request_id = Some((from, from + h.value.len()));
        } else if eq(name, "expect") {
            // HTTP/1.0 clients know no 100 Continue (RFC 9110 §10.1.1).
            expect_continue =
                minor == 1 && h.value.trim_ascii().eq_ignore_ascii_case(b"100-continue");
        }
    }
    // `close` wins over `keep-alive`; HTTP/1.0 closes unless it asks otherwise.
    let close = saw_close || (minor == 0 && !saw_keep_alive);
    if transfer_encoding && !chunked {
        return Err(Refusal(400, "turnout: invalid Transfer-Encoding\n"));
    }
    if transfer_encoding && length.is_some() {
        return Err(Refusal(
            400,
            "turnout: Content-Length together with Transfer-Encoding\n",
        ));
    }
    if transfer_encoding && minor == 0 {
        return Err(Refusal(
            400,
            "turnout: Transfer-Encoding in an HTTP/1.0 request\n",
        ));
    }
    if method == "CONNECT" {
        return Err(Refusal(405, "turnout: CONNECT is not supported\n"));
    }
    // Origin form, or absolute form whose authority replaces Host (RFC 9112 §3.2.2).
    let (path, authority) = if target.starts_with('/') || target == "*" {
        (target, None)
    } else if let Some(rest) = strip_scheme(target) {
        let split = rest.find(['/', '?']).unwrap_or(rest.len());
        (&rest[split..], Some(&rest[..split]))
    } else {
        return Err(Refusal(400, "turnout: invalid request target\n"));
    };
    if minor == 1 && host.is_none() && authority.is_none() {
        return Err(Refusal(400, "turnout: HTTP/1.1 request without Host\n"));
    }
    let host: &[u8] = match authority {
        Some(a) => a.as_bytes(),
        // An HTTP/1.0 request may have none; the upstream gets an empty Host (§3.2).
        None => host.unwrap_or(b""),
    };
    let body = if chunked {
        ReqBody::Chunked
    } else {
        match length {
            Some(n) if n > 0 => ReqBody::Length(n),
            _ => ReqBody::None,
        }
    };
    // h2c by Upgrade is not passed on: turnout serves HTTP/2 itself, and a tunnel would
    // take the connection out of its hands.
    let upgrade = match upgrade {
        Some(proto)
            if conn_upgrade && minor == 1 && !proto.trim_ascii().eq_ignore_ascii_case(b"h2c") =>
        {
            Some(proto)
        }
        _ => None,
    };

    up.clear();
    up.extend_from_slice(method.as_bytes());
    up.push(b' ');
    if !path.starts_with('/') && path != "*" {
        // Absolute form with no path, or a query only.
        up.push(b'/');
    }
    up.extend_from_slice(path.as_bytes());
    up.extend_from_slice(b" HTTP/1.1\r\nhost: ");
    up.extend_from_slice(host);
    up.extend_from_slice(b"\r\n");
    // Earlier hops' addresses, in order; the client's is appended after them.
    let mut forwarded_for: Vec<&[u8]> = Vec::new();
    for h in req.headers.iter() {
        let name = h.name;
        if eq(name, "x-forwarded-for") {
            forwarded_for.push(h.value);
            continue;
        }
        if eq(name, "host")
            || hop_by_hop(name)
            || eq(name, "content-length")
            || eq(name, "expect")
            || set_by_turnout(name)
            || (conn_names && listed_in_connection(req.headers, name))
        {
            continue;
        }
        up.extend_from_slice(name.as_bytes());
        up.extend_from_slice(b": ");
        up.extend_from_slice(h.value);
        up.extend_from_slice(b"\r\n");
    }
    up.extend_from_slice(b"x-forwarded-for: ");
    for value in forwarded_for.iter().filter(|v| !v.trim_ascii().is_empty()) {
        up.extend_from_slice(value);
        up.extend_from_slice(b", ");
    }
    up.extend_from_slice(fwd.client_ip);
    up.extend_from_slice(b"\r\n");
    up.extend_from_slice(if fwd.https {
        b"x-forwarded-proto: https\r\n".as_slice()
    } else {
        b"x-forwarded-proto: http\r\n"
    });
    // turnout is the edge: the forwarded host is the one this client asked for, never a
    // value the client made up.
    if !host.is_empty() {
        up.extend_from_slice(b"x-forwarded-host: ");
        up.extend_from_slice(host);
        up.extend_from_slice(b"\r\n");
    }
    // Marks the request as having passed here, so that a loop back is seen (RFC 9110
    // §7.6.3; the client's own Via lines go on above).
    up.extend_from_slice(b"via: ");
    up.extend_from_slice(fwd.via);
    up.extend_from_slice(b"\r\n");
    match body {
        ReqBody::Length(n) => {
            up.extend_from_slice(b"content-length: ");
            up.extend_from_slice(n.to_string().as_bytes());
            up.extend_from_slice(b"\r\n");
        }
        ReqBody::Chunked => up.extend_from_slice(b"transfer-encoding: chunked\r\n"),
        ReqBody::None if length == Some(0) => up.extend_from_slice(b"content-length: 0\r\n"),
        ReqBody::None => {}
    }
    if let Some(proto) = upgrade {
        up.extend_from_slice(b"connection: upgrade\r\nupgrade: ");
        up.extend_from_slice(proto);
        up.extend_from_slice(b"\r\n");
    }
    up.extend_from_slice(b"\r\n");

    Ok(Some(RequestPlan {
        head_len,
        head_request: method == "HEAD",
        idempotent: is_idempotent(method),
        minor,
        body,
        close,
        upgrade: upgrade.map(|p| p.trim_ascii().eq_ignore_ascii_case(b"websocket")),
        expect_continue,
        request_id,
    }))
}

/// The part of a `Via` entry that names a router process (`turnout-` and its tag),
/// without the protocol version.
fn via_tag(via: &[u8]) -> &[u8] {
    via.iter()
        .position(|b| *b == b' ')
        .map_or(via, |sp| &via[sp + 1..])
}

/// Whether a `Via` field value names the router whose entry is `via`.
pub fn via_names(value: &[u8], via: &[u8]) -> bool {
    let me = via_tag(via);
    !me.is_empty() && value.windows(me.len()).any(|w| w == me)
}

/// Idempotent methods (RFC 9110 §9.2.2): safe to send again.
pub fn is_idempotent(method: &str) -> bool {
    matches!(
        method,
        "GET" | "HEAD" | "OPTIONS" | "PUT" | "DELETE" | "TRACE"
    )
}

/// What is wrong with a head httparse refused.
fn head_error(e: httparse::Error) -> &'static str {
    match e {
        httparse::Error::HeaderName => "invalid response head: invalid header name",
        httparse::Error::HeaderValue => "invalid response head: invalid header value",
        httparse::Error::NewLine => "invalid response head: invalid new line",
        httparse::Error::Status => "invalid response head: invalid status",
        httparse::Error::Token => "invalid response head: invalid token",
        httparse::Error::TooManyHeaders => "invalid response head: too many header lines",
        httparse::Error::Version => "invalid response head: invalid HTTP version",
    }
}

/// How a response body ends (RFC 9112 §6.3).
#[derive(Clone, Copy, PartialEq, Debug)]
pub enum Framing {
    /// No body (HEAD, 1xx, 204, 304).
    Empty,
    /// Exactly this many bytes.
    Length(u64),
    /// The chunked transfer coding.
    Chunked,
    /// Until the upstream closes the connection.
    UntilClose,
}

/// One response head, read in place: the header lines point into the input.
pub struct ResponseHead<'b, 'h> {
    /// Bytes of the head in the input.
    pub len: usize,
    /// The status code (100..=999).
    pub status: u16,
    /// The reason phrase.
    pub reason: &'b str,
    /// The HTTP/1.x minor version.
    pub minor: u8,
    /// The header lines, as sent.
    pub headers: &'h [httparse::Header<'b>],
    /// `Content-Length`, when one was sent (and valid).
    pub length: Option<u64>,
    /// What was wrong with its `Content-Length`, if anything. Not an error by itself: a
    /// length that does not frame the body (HEAD, 1xx, 204, 304, or with
    /// `Transfer-Encoding`) is ignored by a client, so each reader decides
    /// ([`ResponseHead::check_length`]).
    pub length_error: Option<&'static str>,
    /// `Transfer-Encoding` was sent; `Some(true)` when its last coding is chunked.
    pub transfer_encoding: Option<bool>,
    /// `Connection: close`, or HTTP/1.0 without `keep-alive`.
    pub close: bool,
    /// `Connection` names other headers (to be dropped with it).
    pub connection_names: bool,
    /// The response has an `X-Request-Id` of its own.
    pub has_request_id: bool,
}

/// Parses one response head (an interim 1xx or the final one) from `buf`, into `slots`.
/// `Ok(None)`: not complete yet. The one response parser: the live path, the raw
/// client and the shadow's copies all read responses here.
pub fn parse_response<'b, 'h>(
    buf: &'b [u8],
    slots: &'h mut [httparse::Header<'b>; MAX_HEADERS],
) -> Result<Option<ResponseHead<'b, 'h>>, &'static str> {
    let mut resp = httparse::Response::new(slots);
    let len = match resp.parse(buf) {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(e) => return Err(head_error(e)),
    };
    let status = resp.code.unwrap_or(0);
    if !(100..=999).contains(&status) {
        return Err("invalid status code");
    }
    let minor = resp.version.unwrap_or(1);
    let reason = resp.reason.unwrap_or("");
    let headers: &'h [httparse::Header<'b>] = resp.headers;
    let mut length: Option<u64> = None;
    let mut length_error = None;
    let mut transfer_encoding: Option<bool> = None;
    let (mut saw_close, mut saw_keep_alive, mut connection_names) = (false, false, false);
    let mut has_request_id = false;
    for h in headers {
        if eq(h.name, "content-length") {
            if let Err(e) = add_content_length(h.value, &mut length) {
                length_error.get_or_insert(e.message());
            }
        } else if eq(h.name, "transfer-encoding") {
            transfer_encoding = Some(
                tokens(h.value)
                    .last()
                    .is_some_and(|c| c.eq_ignore_ascii_case(b"chunked")),
            );
        } else if eq(h.name, "connection") {
            for t in tokens(h.value) {
                if t.eq_ignore_ascii_case(b"close") {
                    saw_close = true;
                } else if t.eq_ignore_ascii_case(b"keep-alive") {
                    saw_keep_alive = true;
                } else {
                    connection_names = true;
                }
            }
        } else if eq(h.name, "x-request-id") {
            has_request_id = true;
        }
    }
    Ok(Some(ResponseHead {
        len,
        status,
        reason,
        minor,
        headers,
        length: length.filter(|_| length_error.is_none()),
        length_error,
        transfer_encoding,
        close: saw_close || (minor == 0 && !saw_keep_alive),
        connection_names,
        has_request_id,
    }))
}

impl ResponseHead<'_, '_> {
    /// An interim response (1xx other than 101): another head follows.
    pub fn is_interim(&self) -> bool {
        (100..200).contains(&self.status) && self.status != 101
    }

    /// How the body is delimited, for a response to a `HEAD` request or not.
    pub fn framing(&self, head_request: bool) -> Framing {
        let s = self.status;
        if head_request || (100..200).contains(&s) || s == 204 || s == 304 {
            return Framing::Empty;
        }
        // Transfer-Encoding overrides Content-Length (RFC 9112 §6.3).
        match (self.transfer_encoding, self.length) {
            (Some(true), _) => Framing::Chunked,
            (Some(false), _) | (None, None) => Framing::UntilClose,
            (None, Some(n)) => Framing::Length(n),
        }
    }

    /// The `Content-Length` problem, when the length would frame the body (a final
    /// response with a body and no `Transfer-Encoding`).
    pub fn check_length(&self, framing: Framing) -> Result<(), &'static str> {
        match self.length_error {
            Some(e) if framing != Framing::Empty && self.transfer_encoding.is_none() => Err(e),
            _ => Ok(()),
        }
    }

    /// Whether the upstream connection can take another request after this response.
    pub fn reusable(&self, framing: Framing) -> bool {
        !self.close && framing != Framing::UntilClose && self.status != 101
    }

    /// Whether the header line `name` is one turnout drops when relaying (hop-by-hop,
    /// named in `Connection`, or a length turnout writes itself); `Upgrade` stays on a
    /// 101.
    pub fn drops(&self, name: &str) -> bool {
        if self.status == 101 && eq(name, "upgrade") {
            return false;
        }
        hop_by_hop(name)
            || eq(name, "content-length")
            || (self.connection_names && listed_in_connection(self.headers, name))
    }
}

/// How a relayed response goes to its HTTP/1.x client.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct ClientFraming {
    /// How the upstream's body is delimited.
    pub framing: Framing,
    /// The upstream connection can be reused after the body.
    pub upstream_keep_alive: bool,
    /// The body goes to the client in the chunked coding.
    pub client_chunked: bool,
    /// The client connection closes after this response.
    pub close: bool,
}

/// Writes the head an HTTP/1.x client gets for the final response `head` (to a request
/// planned as `plan`) at the end of `out`, and says how its body goes.
pub fn write_client_head(
    head: &ResponseHead<'_, '_>,
    plan: &RequestPlan,
    out: &mut Vec<u8>,
) -> ClientFraming {
    let status = head.status;
    let framing = head.framing(plan.head_request);
    let stream_body = matches!(framing, Framing::Chunked | Framing::UntilClose);
    let client_chunked = stream_body && plan.minor == 1;
    let close = plan.close || (stream_body && plan.minor == 0);
    write_status_line(status, head.reason, out);
    write_kept_lines(head, out);
    // One length line, turnout's: for a body it relays whole, and for HEAD and 304,
    // where it describes the body not sent.
    if let (Some(n), false) = (head.length, stream_body || status == 204 || status == 101) {
        out.extend_from_slice(b"content-length: ");
        out.extend_from_slice(n.to_string().as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    if client_chunked {
        out.extend_from_slice(b"transfer-encoding: chunked\r\n");
    }
    if status == 101 {
        out.extend_from_slice(b"connection: upgrade\r\n");
    } else if close {
        out.extend_from_slice(b"connection: close\r\n");
    } else if plan.minor == 0 {
        out.extend_from_slice(b"connection: keep-alive\r\n");
    }
    out.extend_from_slice(b"\r\n");
    ClientFraming {
        framing,
        upstream_keep_alive: head.reusable(framing),
        client_chunked,
        close,
    }
}

fn write_status_line(status: u16, reason: &str, out: &mut Vec<u8>) {
    out.extend_from_slice(b"HTTP/1.1 ");
    out.extend_from_slice(itoa3(status).as_slice());
    out.push(b' ');
    out.extend_from_slice(reason.as_bytes());
    out.extend_from_slice(b"\r\n");
}

/// The header lines of `head` that cross turnout.
fn write_kept_lines(head: &ResponseHead<'_, '_>, out: &mut Vec<u8>) {
    for h in head.headers {
        if head.drops(h.name) {
            continue;
        }
        out.extend_from_slice(h.name.as_bytes());
        out.extend_from_slice(b": ");
        out.extend_from_slice(h.value);
        out.extend_from_slice(b"\r\n");
    }
}

/// A final response head as relayed to an HTTP/1.x client.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Relayed {
    /// Its status.
    pub status: u16,
    /// How its body goes.
    pub framing: ClientFraming,
    /// The upstream's response has an `X-Request-Id` of its own.
    pub has_request_id: bool,
}

/// Reads the upstream's response head from `buf` and writes the client's into `out`:
/// interim responses go on to HTTP/1.1 clients (103 Early Hints, say), except 100
/// Continue (turnout answers a client's `Expect` itself); the final head is rewritten by
/// [`write_client_head`]. The heads read are taken from `buf`. `Ok(None)`: not complete
/// yet.
pub fn relay_head(
    buf: &mut BytesMut,
    plan: &RequestPlan,
    out: &mut Vec<u8>,
) -> Result<Option<Relayed>, &'static str> {
    loop {
        let mut slots = [httparse::EMPTY_HEADER; MAX_HEADERS];
        let Some(head) = parse_response(buf, &mut slots)? else {
            return Ok(None);
        };
        let len = head.len;
        if head.is_interim() {
            if head.status != 100 && plan.minor == 1 {
                // Written anew like a final head (CRLF line ends, no hop-by-hop lines),
                // never copied as the upstream spelled it.
                write_status_line(head.status, head.reason, out);
                write_kept_lines(&head, out);
                out.extend_from_slice(b"\r\n");
            }
            buf.advance(len);
            continue;
        }
        // The live path is strict: a final head with a bad length is refused whatever
        // its framing (an interim head's headers are not read).
        if let Some(e) = head.length_error {
            return Err(e);
        }
        let framing = write_client_head(&head, plan, out);
        let relayed = Relayed {
            status: head.status,
            framing,
            has_request_id: head.has_request_id,
        };
        buf.advance(len);
        return Ok(Some(relayed));
    }
}

/// The lines of a head turnout wrote itself (`name: value\r\n`, after the start line),
/// as `(name, value)`: a zero-copy view for the taps and the pin cookie.
pub fn head_lines(head: &[u8]) -> impl Iterator<Item = (&[u8], &[u8])> {
    head.split(|b| *b == b'\n')
        .skip(1)
        .map(|line| line.strip_suffix(b"\r").unwrap_or(line))
        .take_while(|line| !line.is_empty())
        .filter_map(|line| {
            let colon = line.iter().position(|b| *b == b':')?;
            Some((&line[..colon], line[colon + 1..].trim_ascii()))
        })
}

/// The request line of a head turnout wrote: `(method, target)`.
pub fn request_line(head: &[u8]) -> Option<(&str, &str)> {
    let end = head.iter().position(|b| *b == b'\r')?;
    let line = std::str::from_utf8(&head[..end]).ok()?;
    let (method, rest) = line.split_once(' ')?;
    let (target, _) = rest.rsplit_once(' ')?;
    Some((method, target))
}

/// The status line of a head turnout wrote (after any interim heads): the final
/// status and where the final head starts.
pub fn final_status(head: &[u8]) -> Option<(u16, usize)> {
    let mut start = 0;
    loop {
        let rest = head.get(start..)?;
        let code = rest.get(9..12)?;
        let status = std::str::from_utf8(code).ok()?.parse::<u16>().ok()?;
        if (100..200).contains(&status) && status != 101 {
            let end = rest.windows(4).position(|w| w == b"\r\n\r\n")?;
            start += end + 4;
            continue;
        }
        return Some((status, start));
    }
}

/// Why a `Content-Length` field was refused.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum LengthError {
    /// Not a list of plain decimal numbers.
    Invalid,
    /// Two different values.
    Conflict,
}

impl LengthError {
    /// For an upstream's error message.
    pub fn message(self) -> &'static str {
        match self {
            LengthError::Invalid => "invalid content-length",
            LengthError::Conflict => "conflicting content-length values",
        }
    }
}

/// Adds one `Content-Length` field value (a comma-separated list, RFC 9110 §8.6) to
/// `length`: digits only (no sign, no space inside), and every value the same. The one
/// parser of the field, for requests and responses alike.
pub fn add_content_length(value: &[u8], length: &mut Option<u64>) -> Result<(), LengthError> {
    let parts = value
        .split(|b| *b == b',')
        .map(<[u8]>::trim_ascii)
        .filter(|p| !p.is_empty());
    for part in parts {
        let n = std::str::from_utf8(part)
            .ok()
            .filter(|s| s.bytes().all(|b| b.is_ascii_digit()))
            .and_then(|s| s.parse::<u64>().ok())
            .ok_or(LengthError::Invalid)?;
        if length.is_some_and(|l| l != n) {
            return Err(LengthError::Conflict);
        }
        *length = Some(n);
    }
    Ok(())
}

/// Appends `data` as one chunk of the chunked coding (nothing for no data).
pub fn encode_chunk(out: &mut Vec<u8>, data: &[u8]) {
    if data.is_empty() {
        return;
    }
    out.extend_from_slice(format!("{:x}\r\n", data.len()).as_bytes());
    out.extend_from_slice(data);
    out.extend_from_slice(b"\r\n");
}

/// Inserts `name` (with its `: `) and `value` as the last line of the HTTP head at the
/// end of `head` (which ends with the empty line).
pub fn insert_header(head: &mut Vec<u8>, name: &[u8], value: &[u8]) {
    debug_assert!(head.ends_with(b"\r\n\r\n"));
    head.truncate(head.len() - 2);
    head.extend_from_slice(name);
    head.extend_from_slice(value);
    head.extend_from_slice(b"\r\n\r\n");
}

/// A three-digit status code as ASCII.
fn itoa3(n: u16) -> [u8; 3] {
    [
        b'0' + (n / 100 % 10) as u8,
        b'0' + (n / 10 % 10) as u8,
        b'0' + (n % 10) as u8,
    ]
}

fn eq(a: &str, b: &str) -> bool {
    a.eq_ignore_ascii_case(b)
}

fn tokens(value: &[u8]) -> impl Iterator<Item = &[u8]> {
    value
        .split(|b| *b == b',')
        .map(|t| t.trim_ascii())
        .filter(|t| !t.is_empty())
}

/// `http://` or `https://` stripped, in any case.
fn strip_scheme(target: &str) -> Option<&str> {
    ["http://", "https://"].iter().find_map(|scheme| {
        let n = scheme.len();
        (target.len() >= n && target.as_bytes()[..n].eq_ignore_ascii_case(scheme.as_bytes()))
            .then(|| &target[n..])
    })
}

/// Headers turnout sets itself, in every spelling a framework may fold into the same
/// variable (`X_Forwarded_For` is `HTTP_X_FORWARDED_FOR` to CGI, WSGI, Rack and PHP), and
/// `Forwarded`, which turnout does not vouch for.
fn set_by_turnout(name: &str) -> bool {
    name.eq_ignore_ascii_case("forwarded")
        || ["x-forwarded-for", "x-forwarded-proto", "x-forwarded-host"]
            .iter()
            .any(|h| {
                h.len() == name.len()
                    && h.bytes()
                        .zip(name.bytes())
                        .all(|(a, b)| a == b.to_ascii_lowercase() || (a == b'-' && b == b'_'))
            })
}

/// Whether a `Connection` field (any line) names `name` as hop-by-hop.
fn listed_in_connection(headers: &[httparse::Header<'_>], name: &str) -> bool {
    headers
        .iter()
        .filter(|h| eq(h.name, "connection"))
        .flat_map(|h| tokens(h.value))
        .any(|t| t.eq_ignore_ascii_case(name.as_bytes()))
}

/// Decoder for the chunked transfer coding (RFC 9112 §7.1).
#[derive(Debug, Default, PartialEq, Clone)]
pub struct Chunked {
    state: ChunkState,
    size: u64,
    digits: u8,
    /// Bytes of the current chunk extension or trailer line.
    line: usize,
}

/// Longest chunk extension or trailer line accepted: a peer could otherwise send them
/// forever while the other side sees nothing.
const MAX_CHUNK_LINE: usize = 16 * 1024;

#[derive(Debug, Default, PartialEq, Clone, Copy)]
enum ChunkState {
    /// Reading the chunk size (hex digits).
    #[default]
    Size,
    /// Skipping a chunk extension up to the line end.
    Extension,
    /// Expecting the LF that ends the size line.
    SizeLf,
    /// Reading chunk data.
    Data,
    /// Expecting CR LF after chunk data.
    DataCr,
    DataLf,
    /// After the last chunk: trailer lines until an empty one.
    TrailerStart,
    TrailerLine,
    TrailerLf,
    FinalLf,
    Done,
}

/// The chunked coding is invalid.
#[derive(Debug, PartialEq, Clone, Copy)]
pub struct ChunkError;

impl Chunked {
    /// Whether the last chunk and the trailer section have been read.
    pub fn is_done(&self) -> bool {
        self.state == ChunkState::Done
    }

    /// Consumes framing bytes from `buf`; returns chunk data when some is available,
    /// `None` when more input is needed or the body ended ([`Chunked::is_done`]).
    pub fn decode(&mut self, buf: &mut BytesMut) -> Result<Option<Bytes>, ChunkError> {
        use ChunkState::*;
        while !buf.is_empty() {
            if self.state == Data {
                let n = usize::try_from(self.size)
                    .unwrap_or(usize::MAX)
                    .min(buf.len());
                self.size -= n as u64;
                if self.size == 0 {
                    self.state = DataCr;
                }
                return Ok(Some(buf.split_to(n).freeze()));
            }
            if self.state == Done {
                return Ok(None);
            }
            let b = buf[0];
            buf.advance(1);
            if matches!(self.state, Extension | TrailerLine) {
                self.line += 1;
                if self.line > MAX_CHUNK_LINE {
                    return Err(ChunkError);
                }
            } else {
                self.line = 0;
            }
            self.state = match (self.state, b) {
                (Size, b'0'..=b'9' | b'a'..=b'f' | b'A'..=b'F') => {
                    let digit = (b as char).to_digit(16).ok_or(ChunkError)?;
                    self.digits += 1;
                    if self.digits > 15 {
                        return Err(ChunkError);
                    }
                    self.size = self.size * 16 + u64::from(digit);
                    Size
                }
                (Size, b';' | b' ' | b'\t') if self.digits > 0 => Extension,
                (Size, b'\r') if self.digits > 0 => SizeLf,
                (Extension, b'\r') => SizeLf,
                (Extension, _) => Extension,
                (SizeLf, b'\n') => {
                    self.digits = 0;
                    if self.size == 0 {
                        TrailerStart
                    } else {
                        Data
                    }
                }
                (DataCr, b'\r') => DataLf,
                (DataLf, b'\n') => Size,
                (TrailerStart, b'\r') => FinalLf,
                (TrailerLine, b'\r') => TrailerLf,
                (TrailerStart | TrailerLine, _) => TrailerLine,
                (TrailerLf, b'\n') => TrailerStart,
                (FinalLf, b'\n') => Done,
                _ => return Err(ChunkError),
            };
            if self.state == Done {
                return Ok(None);
            }
        }
        Ok(None)
    }
}

#[cfg(test)]
#[path = "http1_tests.rs"]
mod tests;
