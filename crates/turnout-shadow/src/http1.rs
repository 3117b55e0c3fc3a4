//! Raw HTTP/1.x messages, as GoReplay records hold them: parsing into [`RequestCopy`] and
//! [`ResponseCopy`], and writing them back.
//!
//! Parsing accepts CRLF or bare LF line ends (hand-written and some tools' files have
//! them), bodies framed by `Content-Length`, chunked (decoded; extensions and trailers
//! dropped) or — for responses — by the end of the payload. A body shorter than its framing
//! promises (GoReplay cuts messages longer than its `--copy-buffer-size`) is kept with
//! `body_truncated` set. Anything after the end of the message but line ends is an error,
//! never silently dropped. Interim `1xx` responses (but `101`) before the final one are
//! skipped.

use std::time::{Duration, SystemTime};

use bytes::Bytes;

use crate::types::{RequestCopy, ResponseCopy};

/// The most header fields a message may have.
const MAX_HEADERS: usize = 256;

/// Why a payload is not an HTTP/1.x message this crate can read.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum HttpError {
    /// The head has no blank line ending it.
    #[error("the message head is incomplete (no blank line ends it)")]
    IncompleteHead,
    /// The head does not parse.
    #[error("invalid message head: {0}")]
    InvalidHead(String),
    /// `Content-Length` is not a number, or several disagree.
    #[error("invalid Content-Length {0:?}")]
    ContentLength(String),
    /// A request with a transfer coding other than chunked last cannot be delimited.
    #[error("a request's Transfer-Encoding {0:?} does not end in chunked")]
    TransferEncoding(String),
    /// A chunked body does not follow chunked framing.
    #[error("invalid chunked body: {0}")]
    Chunked(String),
    /// Bytes after the end of the message.
    #[error("{0} bytes after the end of the message")]
    TrailingBytes(usize),
}

/// How the body of a message is delimited.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Framing {
    None,
    Length(usize),
    Chunked,
    Close,
}

struct Head {
    /// Request method or empty.
    method: String,
    target: String,
    status: u16,
    headers: Vec<(String, Bytes)>,
    len: usize,
}

fn lower_headers(hs: &[httparse::Header<'_>]) -> Vec<(String, Bytes)> {
    hs.iter()
        .map(|h| (h.name.to_ascii_lowercase(), Bytes::copy_from_slice(h.value)))
        .collect()
}

fn parse_request_head(payload: &[u8]) -> Result<Head, HttpError> {
    let mut hs = vec![httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut req = httparse::Request::new(&mut hs);
    match req.parse(payload) {
        Ok(httparse::Status::Complete(len)) => Ok(Head {
            method: req.method.unwrap_or_default().to_string(),
            target: req.path.unwrap_or_default().to_string(),
            status: 0,
            headers: lower_headers(req.headers),
            len,
        }),
        Ok(httparse::Status::Partial) => Err(HttpError::IncompleteHead),
        Err(e) => Err(HttpError::InvalidHead(e.to_string())),
    }
}

fn parse_response_head(payload: &[u8]) -> Result<Head, HttpError> {
    let mut hs = vec![httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut resp = httparse::Response::new(&mut hs);
    match resp.parse(payload) {
        Ok(httparse::Status::Complete(len)) => Ok(Head {
            method: String::new(),
            target: String::new(),
            status: resp.code.unwrap_or_default(),
            headers: lower_headers(resp.headers),
            len,
        }),
        Ok(httparse::Status::Partial) => Err(HttpError::IncompleteHead),
        Err(e) => Err(HttpError::InvalidHead(e.to_string())),
    }
}

fn header_values<'a>(
    headers: &'a [(String, Bytes)],
    name: &'a str,
) -> impl Iterator<Item = &'a [u8]> + 'a {
    headers
        .iter()
        .filter(move |(n, _)| n == name)
        .map(|(_, v)| v.as_ref())
}

/// The framing of a message with these headers; `request` says which rules apply, and
/// `bodiless` is true for responses that never have a body (1xx, 204, 304, to HEAD).
fn framing(
    headers: &[(String, Bytes)],
    request: bool,
    bodiless: bool,
) -> Result<Framing, HttpError> {
    if bodiless {
        return Ok(Framing::None);
    }
    let te: Vec<String> = header_values(headers, "transfer-encoding")
        .flat_map(|v| {
            String::from_utf8_lossy(v)
                .split(',')
                .map(|s| s.trim().to_ascii_lowercase())
                .collect::<Vec<_>>()
        })
        .filter(|s| !s.is_empty())
        .collect();
    if !te.is_empty() {
        // Transfer-Encoding overrides Content-Length (RFC 9112 §6.3).
        return if te.last().is_some_and(|c| c == "chunked") {
            Ok(Framing::Chunked)
        } else if request {
            Err(HttpError::TransferEncoding(te.join(", ")))
        } else {
            Ok(Framing::Close)
        };
    }
    let mut length: Option<usize> = None;
    for v in header_values(headers, "content-length") {
        let text = String::from_utf8_lossy(v);
        for part in text.split(',') {
            let part = part.trim();
            let n: usize = part
                .parse()
                .ok()
                .filter(|_| !part.is_empty() && part.bytes().all(|b| b.is_ascii_digit()))
                .ok_or_else(|| HttpError::ContentLength(text.to_string()))?;
            if length.is_some_and(|l| l != n) {
                return Err(HttpError::ContentLength(text.to_string()));
            }
            length = Some(n);
        }
    }
    Ok(match (length, request) {
        (Some(n), _) => Framing::Length(n),
        (None, true) => Framing::None,
        (None, false) => Framing::Close,
    })
}

struct BodyRead {
    body: Vec<u8>,
    truncated: bool,
    /// Bytes of `rest` the body used (with chunked framing).
    used: usize,
    /// Whether the framing says the message ended (false when cut short or close-delimited).
    complete: bool,
}

fn read_body(rest: &[u8], framing: Framing) -> Result<BodyRead, HttpError> {
    Ok(match framing {
        Framing::None => BodyRead {
            body: Vec::new(),
            truncated: false,
            used: 0,
            complete: true,
        },
        Framing::Length(n) => {
            let have = rest.len().min(n);
            BodyRead {
                body: rest[..have].to_vec(),
                truncated: have < n,
                used: have,
                complete: have == n,
            }
        }
        Framing::Close => BodyRead {
            body: rest.to_vec(),
            truncated: false,
            used: rest.len(),
            complete: false,
        },
        Framing::Chunked => dechunk(rest)?,
    })
}

/// The next line of `b` from `at`: (line without its CRLF or LF, index after it); `None`
/// when no line end follows.
fn line(b: &[u8], at: usize) -> Option<(&[u8], usize)> {
    let rel = b.get(at..)?.iter().position(|&c| c == b'\n')?;
    let l = &b[at..at + rel];
    Some((l.strip_suffix(b"\r").unwrap_or(l), at + rel + 1))
}

fn dechunk(b: &[u8]) -> Result<BodyRead, HttpError> {
    let mut body = Vec::new();
    let mut at = 0;
    let cut = |body: Vec<u8>, used: usize| BodyRead {
        body,
        truncated: true,
        used,
        complete: false,
    };
    loop {
        let Some((size_line, next)) = line(b, at) else {
            return Ok(cut(body, b.len()));
        };
        let size_text = String::from_utf8_lossy(size_line);
        let size_text = size_text.split(';').next().unwrap_or("").trim();
        let size = usize::from_str_radix(size_text, 16)
            .map_err(|_| HttpError::Chunked(format!("chunk size {size_text:?} is not hex")))?;
        at = next;
        if size == 0 {
            // Trailer fields, up to an empty line (a missing one is taken as the end).
            loop {
                match line(b, at) {
                    None => {
                        return Ok(BodyRead {
                            body,
                            truncated: false,
                            used: b.len(),
                            complete: b.len() == at,
                        })
                    }
                    Some((l, next)) => {
                        at = next;
                        if l.is_empty() {
                            return Ok(BodyRead {
                                body,
                                truncated: false,
                                used: at,
                                complete: true,
                            });
                        }
                    }
                }
            }
        }
        let end = at.saturating_add(size);
        if end > b.len() {
            body.extend_from_slice(&b[at..]);
            return Ok(cut(body, b.len()));
        }
        body.extend_from_slice(&b[at..end]);
        at = end;
        match b.get(at..) {
            Some([b'\r', b'\n', ..]) => at += 2,
            Some([b'\n', ..]) => at += 1,
            Some([]) | Some([b'\r']) | None => return Ok(cut(body, b.len())),
            Some(_) => return Err(HttpError::Chunked("no line end after chunk data".into())),
        }
    }
}

fn check_trailing(rest: &[u8]) -> Result<(), HttpError> {
    if rest.iter().all(|&c| c == b'\r' || c == b'\n') {
        Ok(())
    } else {
        Err(HttpError::TrailingBytes(rest.len()))
    }
}

/// A request from raw HTTP/1.x bytes. `id` is left empty and `started` at the Unix epoch
/// (a GoReplay record's meta line has them: [`crate::goreplay::Record::to_request`]).
/// Header names are put in lower case; headers are kept as recorded (framing headers
/// included), and the body is decoded from chunked framing.
pub fn parse_request(payload: &[u8]) -> Result<RequestCopy, HttpError> {
    let head = parse_request_head(payload)?;
    let f = framing(&head.headers, true, false)?;
    let rest = &payload[head.len..];
    let body = read_body(rest, f)?;
    check_trailing(&rest[body.used..])?;
    Ok(RequestCopy {
        id: String::new(),
        started: SystemTime::UNIX_EPOCH,
        method: head.method,
        target: head.target,
        headers: head.headers,
        body: Bytes::from(body.body),
        body_truncated: body.truncated,
    })
}

/// A response from raw HTTP/1.x bytes, as [`parse_response_to`] with no request method
/// known: a `HEAD` response whose `Content-Length` promises a body then reads as
/// truncated.
pub fn parse_response(payload: &[u8]) -> Result<ResponseCopy, HttpError> {
    parse_response_to(None, payload)
}

/// A response to a request with `method` (when known: a response to `HEAD` has no body)
/// from raw HTTP/1.x bytes. `latency` is zero (a record's meta line has it:
/// [`crate::goreplay::Record::to_response`]).
pub fn parse_response_to(method: Option<&str>, payload: &[u8]) -> Result<ResponseCopy, HttpError> {
    let mut at = 0;
    loop {
        let head = parse_response_head(&payload[at..])?;
        let rest_at = at + head.len;
        if (100..200).contains(&head.status) && head.status != 101 && rest_at < payload.len() {
            at = rest_at;
            continue;
        }
        let bodiless = (100..200).contains(&head.status)
            || head.status == 204
            || head.status == 304
            || method.is_some_and(|m| m.eq_ignore_ascii_case("HEAD"));
        let f = framing(&head.headers, false, bodiless)?;
        let rest = &payload[rest_at..];
        let body = read_body(rest, f)?;
        check_trailing(&rest[body.used..])?;
        return Ok(ResponseCopy {
            status: head.status,
            headers: head.headers,
            body: Bytes::from(body.body),
            body_truncated: body.truncated,
            latency: Duration::ZERO,
        });
    }
}

/// Whether a payload holds a whole message by its own framing: `Some(true)` when it ends
/// where the framing says, `Some(false)` when it is cut short (or its head does not
/// parse), `None` when it cannot tell (a close-delimited response body).
pub(crate) fn framing_complete(payload: &[u8], request: bool) -> Option<bool> {
    let head = if request {
        parse_request_head(payload)
    } else {
        parse_response_head(payload)
    };
    let Ok(head) = head else {
        return Some(false);
    };
    let bodiless =
        !request && ((100..200).contains(&head.status) || head.status == 204 || head.status == 304);
    let Ok(f) = framing(&head.headers, request, bodiless) else {
        return Some(false);
    };
    match read_body(&payload[head.len..], f) {
        Ok(_) if f == Framing::Close => None,
        Ok(b) => Some(b.complete),
        Err(_) => Some(false),
    }
}

/// The reason phrase written for a status.
fn reason(status: u16) -> &'static str {
    match status {
        100 => "Continue",
        101 => "Switching Protocols",
        200 => "OK",
        201 => "Created",
        202 => "Accepted",
        204 => "No Content",
        206 => "Partial Content",
        301 => "Moved Permanently",
        302 => "Found",
        303 => "See Other",
        304 => "Not Modified",
        307 => "Temporary Redirect",
        308 => "Permanent Redirect",
        400 => "Bad Request",
        401 => "Unauthorized",
        403 => "Forbidden",
        404 => "Not Found",
        405 => "Method Not Allowed",
        409 => "Conflict",
        410 => "Gone",
        412 => "Precondition Failed",
        413 => "Content Too Large",
        415 => "Unsupported Media Type",
        422 => "Unprocessable Content",
        429 => "Too Many Requests",
        500 => "Internal Server Error",
        501 => "Not Implemented",
        502 => "Bad Gateway",
        503 => "Service Unavailable",
        504 => "Gateway Timeout",
        _ => "",
    }
}

/// Headers, dropping `transfer-encoding` (the body is written decoded) and adding a
/// `content-length` when there is none and `length` is given.
fn write_headers(out: &mut Vec<u8>, headers: &[(String, Bytes)], length: Option<usize>) {
    let mut has_length = false;
    for (name, value) in headers {
        if name.eq_ignore_ascii_case("transfer-encoding") {
            continue;
        }
        has_length |= name.eq_ignore_ascii_case("content-length");
        out.extend_from_slice(name.as_bytes());
        out.extend_from_slice(b": ");
        out.extend_from_slice(value);
        out.extend_from_slice(b"\r\n");
    }
    if let (false, Some(n)) = (has_length, length) {
        out.extend_from_slice(format!("content-length: {n}\r\n").as_bytes());
    }
    out.extend_from_slice(b"\r\n");
}

/// Headers and body of a message that may have a body. A truncated body with no
/// `content-length` held (its full length unknown) is written with chunked framing cut
/// short — one chunk of what is held and no last chunk — so that reading it back gives
/// `body_truncated` again instead of a complete shorter body.
fn write_headers_and_body(
    out: &mut Vec<u8>,
    headers: &[(String, Bytes)],
    body: &[u8],
    truncated: bool,
    request: bool,
) {
    let has_length = headers
        .iter()
        .any(|(n, _)| n.eq_ignore_ascii_case("content-length"));
    if truncated && !has_length {
        write_headers(out, headers, None);
        out.truncate(out.len() - 2);
        out.extend_from_slice(b"transfer-encoding: chunked\r\n\r\n");
        if !body.is_empty() {
            out.extend_from_slice(format!("{:x}\r\n", body.len()).as_bytes());
            out.extend_from_slice(body);
        }
        return;
    }
    let length = (!request || !body.is_empty()).then_some(body.len());
    write_headers(out, headers, length);
    out.extend_from_slice(body);
}

impl RequestCopy {
    /// The request as raw HTTP/1.1 bytes (CRLF line ends): request line, headers as held
    /// (names in lower case) without `transfer-encoding`, a `content-length` when there is a
    /// body and none is held, a blank line, the body. A truncated body is written as held,
    /// so its `content-length` (when held) says more than follows and reading it back gives
    /// `body_truncated` again; with no `content-length` held, it is written as a chunked
    /// body cut short (one chunk, no last chunk), which reads back as truncated too.
    pub fn to_http1(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(128 + self.body.len());
        out.extend_from_slice(format!("{} {} HTTP/1.1\r\n", self.method, self.target).as_bytes());
        write_headers_and_body(
            &mut out,
            &self.headers,
            &self.body,
            self.body_truncated,
            true,
        );
        out
    }
}

impl ResponseCopy {
    /// The response as raw HTTP/1.1 bytes: status line, headers as held without
    /// `transfer-encoding`, a `content-length` when none is held (and the status allows a
    /// body), a blank line, the body (as [`RequestCopy::to_http1`] for truncation).
    pub fn to_http1(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(128 + self.body.len());
        out.extend_from_slice(
            format!("HTTP/1.1 {} {}\r\n", self.status, reason(self.status)).as_bytes(),
        );
        let bodiless =
            (100..200).contains(&self.status) || self.status == 204 || self.status == 304;
        if bodiless {
            write_headers(&mut out, &self.headers, None);
            out.extend_from_slice(&self.body);
        } else {
            write_headers_and_body(
                &mut out,
                &self.headers,
                &self.body,
                self.body_truncated,
                false,
            );
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests() {
        // (payload, method, target, body, truncated)
        let table: &[(&str, &str, &str, &str, bool)] = &[
            ("GET /a?b=1 HTTP/1.1\r\nHost: x\r\n\r\n", "GET", "/a?b=1", "", false),
            ("GET / HTTP/1.1\nHost: x\n\n", "GET", "/", "", false),
            ("POST /p HTTP/1.1\r\nContent-Length: 5\r\n\r\nhello", "POST", "/p", "hello", false),
            ("POST /p HTTP/1.1\nContent-Length: 11\n\nline1\nline2", "POST", "/p", "line1\nline2", false),
            ("POST /p HTTP/1.1\r\nContent-Length: 10\r\n\r\nhello", "POST", "/p", "hello", true),
            ("POST /p HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n6;x=1\r\n world\r\n0\r\nT: 1\r\n\r\n", "POST", "/p", "hello world", false),
            ("POST /p HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhel", "POST", "/p", "hel", true),
            ("POST /p HTTP/1.1\nTransfer-Encoding: chunked\n\n5\nhello\n0\n\n", "POST", "/p", "hello", false),
            ("GET / HTTP/1.0\r\n\r\n\r\n", "GET", "/", "", false),
        ];
        for (payload, method, target, body, truncated) in table {
            let r =
                parse_request(payload.as_bytes()).unwrap_or_else(|e| panic!("{payload:?}: {e}"));
            assert_eq!(
                (
                    r.method.as_str(),
                    r.target.as_str(),
                    &r.body[..],
                    r.body_truncated
                ),
                (*method, *target, body.as_bytes(), *truncated),
                "{payload:?}"
            );
        }
    }

    #[test]
    fn request_errors() {
        let table: &[(&str, HttpError)] = &[
            ("GET / HTTP/1.1\r\nHost: x\r\n", HttpError::IncompleteHead),
            ("GET / HTTP/1.1\r\n\r\nextra", HttpError::TrailingBytes(5)),
            (
                "POST / HTTP/1.1\r\nContent-Length: x\r\n\r\n",
                HttpError::ContentLength("x".into()),
            ),
            (
                "POST / HTTP/1.1\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\nab",
                HttpError::ContentLength("2".into()),
            ),
            (
                "POST / HTTP/1.1\r\nTransfer-Encoding: gzip\r\n\r\n",
                HttpError::TransferEncoding("gzip".into()),
            ),
            (
                "POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
                HttpError::Chunked("chunk size \"zz\" is not hex".into()),
            ),
        ];
        for (payload, want) in table {
            assert_eq!(
                parse_request(payload.as_bytes()).err().as_ref(),
                Some(want),
                "{payload:?}"
            );
        }
        assert!(matches!(
            parse_request(b"\x00\x01 nonsense\r\n\r\n"),
            Err(HttpError::InvalidHead(_))
        ));
    }

    #[test]
    fn responses() {
        // (method, payload, status, body, truncated)
        let table: &[(Option<&str>, &str, u16, &str, bool)] = &[
            (
                None,
                "HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok",
                200,
                "ok",
                false,
            ),
            (
                None,
                "HTTP/1.1 200 OK\nContent-Length: 2\n\nok",
                200,
                "ok",
                false,
            ),
            (
                None,
                "HTTP/1.0 200 OK\r\n\r\nuntil close\nand more",
                200,
                "until close\nand more",
                false,
            ),
            (None, "HTTP/1.1 204 No Content\r\n\r\n", 204, "", false),
            (
                None,
                "HTTP/1.1 304 Not Modified\r\nContent-Length: 10\r\n\r\n",
                304,
                "",
                false,
            ),
            (
                Some("HEAD"),
                "HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\n",
                200,
                "",
                false,
            ),
            (
                None,
                "HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\n",
                200,
                "",
                true,
            ),
            (
                None,
                "HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 201 Created\r\nContent-Length: 1\r\n\r\nx",
                201,
                "x",
                false,
            ),
            (
                None,
                "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nok\r\n0\r\n\r\n",
                200,
                "ok",
                false,
            ),
            (
                None,
                "HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\n\r\nraw",
                200,
                "raw",
                false,
            ),
        ];
        for (method, payload, status, body, truncated) in table {
            let r = parse_response_to(*method, payload.as_bytes())
                .unwrap_or_else(|e| panic!("{payload:?}: {e}"));
            assert_eq!(
                (r.status, &r.body[..], r.body_truncated),
                (*status, body.as_bytes(), *truncated),
                "{payload:?}"
            );
        }
        assert_eq!(
            parse_response(b"HTTP/1.1 204 No Content\r\n\r\nx").err(),
            Some(HttpError::TrailingBytes(1))
        );
    }

    #[test]
    fn completeness() {
        let table: &[(&str, bool, Option<bool>)] = &[
            ("GET / HTTP/1.1\r\n\r\n", true, Some(true)),
            ("GET / HTTP/1.1\r\nHost: x\r\n", true, Some(false)),
            (
                "POST / HTTP/1.1\r\nContent-Length: 4\r\n\r\nab",
                true,
                Some(false),
            ),
            (
                "POST / HTTP/1.1\r\nContent-Length: 2\r\n\r\nab",
                true,
                Some(true),
            ),
            ("HTTP/1.1 200 OK\r\n\r\nabc", false, None),
            (
                "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nab\r\n",
                false,
                Some(false),
            ),
            (
                "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nab\r\n0\r\n\r\n",
                false,
                Some(true),
            ),
        ];
        for (payload, request, want) in table {
            assert_eq!(
                framing_complete(payload.as_bytes(), *request),
                *want,
                "{payload:?}"
            );
        }
    }

    #[test]
    fn round_trips() {
        let req = RequestCopy {
            id: String::new(),
            started: SystemTime::UNIX_EPOCH,
            method: "POST".into(),
            target: "/items?x=1".into(),
            headers: vec![
                ("host".into(), Bytes::from_static(b"shop")),
                ("transfer-encoding".into(), Bytes::from_static(b"chunked")),
            ],
            body: Bytes::from_static(b"{\"a\":\n1}"),
            body_truncated: false,
        };
        let raw = req.to_http1();
        assert_eq!(
            String::from_utf8_lossy(&raw),
            "POST /items?x=1 HTTP/1.1\r\nhost: shop\r\ncontent-length: 8\r\n\r\n{\"a\":\n1}"
        );
        let back = parse_request(&raw).unwrap();
        assert_eq!(back.body, req.body);
        assert_eq!(back.method, req.method);

        let resp = ResponseCopy {
            status: 404,
            headers: vec![("content-type".into(), Bytes::from_static(b"text/plain"))],
            body: Bytes::from_static(b"no"),
            body_truncated: false,
            latency: Duration::ZERO,
        };
        let raw = resp.to_http1();
        assert_eq!(
            String::from_utf8_lossy(&raw),
            "HTTP/1.1 404 Not Found\r\ncontent-type: text/plain\r\ncontent-length: 2\r\n\r\nno"
        );
        let mut back = parse_response(&raw).unwrap();
        back.headers.retain(|(n, _)| n != "content-length");
        assert_eq!(back, resp);

        let mut cut = resp.clone();
        cut.headers
            .push(("content-length".into(), Bytes::from_static(b"100")));
        cut.body_truncated = true;
        assert!(parse_response(&cut.to_http1()).unwrap().body_truncated);

        // Truncated with no content-length held (the data plane drops it when it cuts a
        // body): written as a chunked body cut short, read back as truncated, never as a
        // complete shorter body.
        let mut cut = resp.clone();
        cut.body_truncated = true;
        let raw = cut.to_http1();
        assert_eq!(
            String::from_utf8_lossy(&raw),
            "HTTP/1.1 404 Not Found\r\ncontent-type: text/plain\r\ntransfer-encoding: chunked\r\n\r\n2\r\nno"
        );
        let back = parse_response(&raw).unwrap();
        assert_eq!((&back.body[..], back.body_truncated), (&b"no"[..], true));
        let mut req = req.clone();
        req.headers.retain(|(n, _)| n != "transfer-encoding");
        req.body_truncated = true;
        let back = parse_request(&req.to_http1()).unwrap();
        assert_eq!((back.body, back.body_truncated), (req.body.clone(), true));
        req.body = Bytes::new();
        let back = parse_request(&req.to_http1()).unwrap();
        assert_eq!((back.body.len(), back.body_truncated), (0, true));
    }
}
