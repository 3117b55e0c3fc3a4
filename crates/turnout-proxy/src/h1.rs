//! A hand-written HTTP/1.1 client for the request the data plane sees most: no request
//! body and no upgrade. Measured against hyper's client connection it saves the
//! connection task, the request and response channels and a copy of the response head
//! (see BENCHMARKS.md); everything else (bodies, upgrades) goes through hyper.
//!
//! The connection is driven from the request's own task: the head is written and read
//! here, and the response body is read by [`RawBody`] as the client takes it, so no other
//! task is woken per request. A connection goes back to its upstream's pool only when its
//! response was read exactly to the end.

use std::io;
use std::pin::Pin;
use std::task::{ready, Context, Poll};
use std::time::Duration;

use bytes::{Buf, Bytes, BytesMut};
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Method, Response, StatusCode};
use http_body::{Body, Frame, SizeHint};
use tokio::io::AsyncWriteExt;

use crate::error::ProxyError;
use crate::tls::UpstreamStream;
use crate::upstream::UpstreamRef;

/// Longest response head accepted from an upstream.
const MAX_HEAD: usize = 64 * 1024;
/// Most header lines accepted in a response head.
const MAX_HEADERS: usize = 100;
/// Read buffer growth step.
const READ_CHUNK: usize = 16 * 1024;

/// An HTTP/1.1 connection to an upstream, idle between requests.
pub(crate) struct RawConn {
    pub(crate) stream: UpstreamStream,
    pub(crate) buf: BytesMut,
    wbuf: Vec<u8>,
}

/// How a failed exchange ended, for the retry decision.
pub(crate) struct ExchangeError {
    pub(crate) error: ProxyError,
    /// Nothing at all came back: a pooled connection the upstream had closed, say.
    pub(crate) nothing_received: bool,
}

impl RawConn {
    pub(crate) fn new(stream: UpstreamStream) -> RawConn {
        RawConn {
            stream,
            buf: BytesMut::with_capacity(READ_CHUNK),
            wbuf: Vec::with_capacity(1024),
        }
    }

    /// Whether the upstream has not closed this idle connection (or sent anything on it,
    /// which would be a protocol error). Costs no system call unless the socket was
    /// reported readable.
    pub(crate) fn looks_alive(&self) -> bool {
        let mut probe = [0u8; 1];
        // On TLS anything readable (a close_notify, say) also means the connection is
        // done with: the byte taken from under the session does not matter then.
        matches!(self.stream.tcp().try_read(&mut probe), Err(e) if e.kind() == io::ErrorKind::WouldBlock)
    }

    /// Sends a body-less request and reads the response head.
    pub(crate) async fn exchange(
        &mut self,
        addr: &str,
        parts: &http::request::Parts,
        timeout: Duration,
    ) -> Result<Head, ExchangeError> {
        encode_head(&mut self.wbuf, parts);
        if let Err(e) = self.stream.write_all(&self.wbuf).await {
            return Err(io_error(addr, e, true));
        }
        self.read_head(addr, parts.method == Method::HEAD, timeout)
            .await
    }

    /// Sends a request already encoded (head and body, `Content-Length` framed: a
    /// mirrored copy) and reads the response head, all within `timeout`.
    pub(crate) async fn exchange_bytes(
        &mut self,
        addr: &str,
        request: &[u8],
        head_request: bool,
        timeout: Duration,
    ) -> Result<Head, ExchangeError> {
        match tokio::time::timeout(timeout, self.stream.write_all(request)).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => return Err(io_error(addr, e, true)),
            Err(_) => {
                return Err(ExchangeError {
                    error: ProxyError::ResponseTimeout {
                        addr: addr.to_owned(),
                        timeout_ms: timeout.as_millis(),
                    },
                    nothing_received: false,
                })
            }
        }
        self.read_head(addr, head_request, timeout).await
    }

    /// Reads the response head (skipping interim responses) within `timeout`.
    async fn read_head(
        &mut self,
        addr: &str,
        head_request: bool,
        timeout: Duration,
    ) -> Result<Head, ExchangeError> {
        let io_err =
            |source: io::Error, nothing_received: bool| io_error(addr, source, nothing_received);
        // Anything at all from the upstream (an interim 1xx too) proves it got the request.
        let mut received = false;
        let read = async {
            loop {
                if let Some(head) = self.parse_head(addr, head_request)? {
                    return Ok(head);
                }
                if self.buf.len() >= MAX_HEAD {
                    return Err(ExchangeError {
                        error: ProxyError::UpstreamProtocol {
                            addr: addr.to_owned(),
                            detail: format!("response head larger than {MAX_HEAD} bytes"),
                        },
                        nothing_received: false,
                    });
                }
                let nothing_yet = !received;
                let filled = self.fill().await;
                received |= matches!(filled, Ok(n) if n > 0);
                match filled {
                    Ok(0) => {
                        let e = io::Error::new(
                            io::ErrorKind::UnexpectedEof,
                            "connection closed before a response",
                        );
                        return Err(io_err(e, nothing_yet));
                    }
                    Ok(_) => {}
                    Err(e) => return Err(io_err(e, nothing_yet)),
                }
            }
        };
        match tokio::time::timeout(timeout, read).await {
            Ok(r) => r,
            Err(_) => Err(ExchangeError {
                error: ProxyError::ResponseTimeout {
                    addr: addr.to_owned(),
                    timeout_ms: timeout.as_millis(),
                },
                nothing_received: false,
            }),
        }
    }

    /// Reads more into the buffer. Through `AsyncRead` rather than `try_read`, so that a
    /// short read clears the socket's readiness and the next read waits for the reactor
    /// instead of costing a system call that answers EAGAIN.
    pub(crate) async fn fill(&mut self) -> io::Result<usize> {
        use tokio::io::AsyncReadExt;
        self.buf.reserve(READ_CHUNK);
        self.stream.read_buf(&mut self.buf).await
    }

    fn poll_fill(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<usize>> {
        let tcp = match &mut self.stream {
            UpstreamStream::Plain(tcp) => tcp,
            UpstreamStream::Tls(tls) => {
                // Through the session: read into zeroed spare room, then keep what came.
                let len = self.buf.len();
                self.buf.resize(len + READ_CHUNK, 0);
                let mut rb = tokio::io::ReadBuf::new(&mut self.buf[len..]);
                let polled = tokio::io::AsyncRead::poll_read(Pin::new(tls.as_mut()), cx, &mut rb);
                let n = rb.filled().len();
                self.buf.truncate(len + n);
                return polled.map_ok(|()| n);
            }
        };
        loop {
            ready!(tcp.poll_read_ready(cx))?;
            self.buf.reserve(READ_CHUNK);
            match tcp.try_read_buf(&mut self.buf) {
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                r => return Poll::Ready(r),
            }
        }
    }

    /// Parses a complete response head from the buffer, skipping interim (1xx) responses.
    fn parse_head(
        &mut self,
        addr: &str,
        head_request: bool,
    ) -> Result<Option<Head>, ExchangeError> {
        loop {
            let mut slots = [httparse::EMPTY_HEADER; MAX_HEADERS];
            let mut resp = httparse::Response::new(&mut slots);
            let base = self.buf.as_ptr() as usize;
            let len = match resp.parse(&self.buf) {
                Ok(httparse::Status::Complete(len)) => len,
                Ok(httparse::Status::Partial) => return Ok(None),
                Err(e) => {
                    return Err(ExchangeError {
                        error: ProxyError::UpstreamProtocol {
                            addr: addr.to_owned(),
                            detail: format!("invalid response head: {e}"),
                        },
                        nothing_received: false,
                    })
                }
            };
            let code = resp.code.unwrap_or(0);
            if (100..200).contains(&code) && code != 101 {
                self.buf.advance(len);
                continue;
            }
            let minor = resp.version.unwrap_or(1);
            // Header positions as offsets, so that the head can be frozen and sliced
            // without copying.
            let mut offsets = [(0usize, 0usize, 0usize, 0usize); MAX_HEADERS];
            let count = resp.headers.len();
            for (slot, h) in offsets.iter_mut().zip(resp.headers.iter()) {
                let n = h.name.as_ptr() as usize - base;
                let v = h.value.as_ptr() as usize - base;
                *slot = (n, n + h.name.len(), v, v + h.value.len());
            }
            let head = self.buf.split_to(len).freeze();
            let bad = |detail: String| ExchangeError {
                error: ProxyError::UpstreamProtocol {
                    addr: addr.to_owned(),
                    detail,
                },
                nothing_received: false,
            };
            let status =
                StatusCode::from_u16(code).map_err(|_| bad(format!("invalid status {code}")))?;
            let mut headers = HeaderMap::with_capacity(count);
            for &(ns, ne, vs, ve) in &offsets[..count] {
                let name = HeaderName::from_bytes(&head[ns..ne])
                    .map_err(|_| bad("invalid header name".into()))?;
                let value = HeaderValue::from_maybe_shared(head.slice(vs..ve))
                    .map_err(|_| bad(format!("invalid value for header {name}")))?;
                headers.append(name, value);
            }
            let framing = framing(status, head_request, &headers).map_err(|d| bad(d.to_owned()))?;
            if matches!(framing, Framing::Chunked(_) | Framing::UntilClose) {
                // Transfer-Encoding overrides Content-Length (RFC 9112 §6.3); the length
                // must not reach the client, whose framing the server chooses anew.
                headers.remove(header::CONTENT_LENGTH);
            }
            let keep_alive = !matches!(framing, Framing::UntilClose)
                && status != StatusCode::SWITCHING_PROTOCOLS
                && wants_keep_alive(minor, &headers);
            return Ok(Some(Head {
                status,
                headers,
                framing,
                keep_alive,
            }));
        }
    }
}

fn io_error(addr: &str, source: io::Error, nothing_received: bool) -> ExchangeError {
    ExchangeError {
        error: ProxyError::UpstreamIo {
            addr: addr.to_owned(),
            source,
        },
        nothing_received,
    }
}

/// A parsed response head and how its body is delimited.
pub(crate) struct Head {
    pub(crate) status: StatusCode,
    pub(crate) headers: HeaderMap,
    framing: Framing,
    keep_alive: bool,
}

impl Head {
    /// Whether a body follows the head (not for HEAD, 1xx, 204, 304).
    pub(crate) fn has_body(&self) -> bool {
        self.framing != Framing::Empty
    }

    /// The response, its body read from `conn` as the client takes it.
    pub(crate) fn into_response(self, conn: RawConn, upstream: UpstreamRef) -> Response<RawBody> {
        self.into_response_home(conn, Home::Upstream(upstream))
    }

    /// The response, its connection going back to `home` at the end of the body.
    pub(crate) fn into_response_home(self, conn: RawConn, home: Home) -> Response<RawBody> {
        let mut resp = Response::new(RawBody {
            conn: Some(conn),
            home,
            framing: self.framing,
            keep_alive: self.keep_alive,
        });
        *resp.status_mut() = self.status;
        *resp.headers_mut() = self.headers;
        resp.body_mut().finish_if_done();
        resp
    }
}

/// How a response body ends (RFC 9112 §6.3).
#[derive(Debug, PartialEq)]
enum Framing {
    /// No body (HEAD, 1xx, 204, 304).
    Empty,
    /// Exactly this many more bytes.
    Length(u64),
    /// Chunked transfer coding.
    Chunked(Chunked),
    /// Until the upstream closes the connection.
    UntilClose,
}

fn framing(
    status: StatusCode,
    head_request: bool,
    headers: &HeaderMap,
) -> Result<Framing, &'static str> {
    if head_request
        || status.is_informational()
        || status == StatusCode::NO_CONTENT
        || status == StatusCode::NOT_MODIFIED
    {
        return Ok(Framing::Empty);
    }
    if let Some(te) = headers
        .get_all(header::TRANSFER_ENCODING)
        .iter()
        .next_back()
    {
        let last = te
            .to_str()
            .unwrap_or("")
            .rsplit(',')
            .next()
            .unwrap_or("")
            .trim();
        return Ok(if last.eq_ignore_ascii_case("chunked") {
            Framing::Chunked(Chunked::default())
        } else {
            Framing::UntilClose
        });
    }
    let mut length = None;
    for v in headers.get_all(header::CONTENT_LENGTH) {
        add_content_length(v.as_bytes(), &mut length).map_err(LengthError::message)?;
    }
    Ok(length.map_or(Framing::UntilClose, Framing::Length))
}

/// Why a `Content-Length` field was refused.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) enum LengthError {
    /// Not a list of plain decimal numbers.
    Invalid,
    /// Two different values.
    Conflict,
}

impl LengthError {
    pub(crate) fn message(self) -> &'static str {
        match self {
            LengthError::Invalid => "invalid content-length",
            LengthError::Conflict => "conflicting content-length values",
        }
    }
}

/// Adds one `Content-Length` field value (a comma-separated list, RFC 9110 §8.6) to
/// `length`: digits only (no sign, no space inside), and every value the same. The one
/// parser of the field, for requests and responses alike.
pub(crate) fn add_content_length(
    value: &[u8],
    length: &mut Option<u64>,
) -> Result<(), LengthError> {
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

fn wants_keep_alive(minor: u8, headers: &HeaderMap) -> bool {
    let has = |token: &str| {
        headers.get_all(header::CONNECTION).iter().any(|v| {
            v.to_str()
                .is_ok_and(|s| s.split(',').any(|t| t.trim().eq_ignore_ascii_case(token)))
        })
    };
    if minor == 0 {
        has("keep-alive")
    } else {
        !has("close")
    }
}

/// Writes the request head: request line in origin form and the headers as they are.
fn encode_head(out: &mut Vec<u8>, parts: &http::request::Parts) {
    out.clear();
    out.extend_from_slice(parts.method.as_str().as_bytes());
    out.push(b' ');
    out.extend_from_slice(
        parts
            .uri
            .path_and_query()
            .map_or("/", |p| p.as_str())
            .as_bytes(),
    );
    out.extend_from_slice(b" HTTP/1.1\r\n");
    for (name, value) in &parts.headers {
        out.extend_from_slice(name.as_str().as_bytes());
        out.extend_from_slice(b": ");
        out.extend_from_slice(value.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(b"\r\n");
}

/// Where a connection goes when its response body has been read to the end.
pub(crate) enum Home {
    /// The upstream's pool of idle connections (the live path).
    Upstream(UpstreamRef),
    /// A pool of the mirror's own (see `mirror.rs`): its connections belong to the
    /// mirror's runtime and must never serve live requests.
    Mirror(
        std::sync::Arc<crate::mirror::MirrorPool>,
        std::sync::Arc<str>,
    ),
}

/// A response body read straight from the upstream connection.
pub struct RawBody {
    conn: Option<RawConn>,
    home: Home,
    framing: Framing,
    keep_alive: bool,
}

/// The upstream broke off a response body.
#[derive(Debug, thiserror::Error)]
pub enum BodyError {
    /// The connection failed or closed early.
    #[error("upstream response body: {0}")]
    Io(#[from] io::Error),
    /// The chunked coding was invalid.
    #[error("upstream response body: invalid chunked coding")]
    Chunked,
}

fn framing_done(framing: &Framing) -> bool {
    matches!(
        framing,
        Framing::Empty
            | Framing::Length(0)
            | Framing::Chunked(Chunked {
                state: ChunkState::Done,
                ..
            })
    )
}

impl RawBody {
    /// At the end of the body the connection goes back to the pool, if reusable.
    fn finish_if_done(&mut self) {
        if framing_done(&self.framing) {
            if let Some(conn) = self.conn.take() {
                if self.keep_alive && conn.buf.is_empty() {
                    match &self.home {
                        Home::Upstream(up) => up.checkin_raw(conn),
                        Home::Mirror(pool, addr) => pool.checkin(addr, conn),
                    }
                }
            }
        }
    }
}

impl Body for RawBody {
    type Data = Bytes;
    type Error = BodyError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BodyError>>> {
        let this = self.get_mut();
        loop {
            let Some(conn) = this.conn.as_mut() else {
                return Poll::Ready(None);
            };
            let data = match &mut this.framing {
                Framing::Empty | Framing::Length(0) => None,
                Framing::Length(left) => {
                    if conn.buf.is_empty() {
                        None
                    } else {
                        let n = usize::try_from(*left)
                            .unwrap_or(usize::MAX)
                            .min(conn.buf.len());
                        *left -= n as u64;
                        Some(conn.buf.split_to(n).freeze())
                    }
                }
                Framing::Chunked(dec) => match dec.decode(&mut conn.buf) {
                    Ok(d) => d,
                    Err(()) => {
                        this.conn = None;
                        return Poll::Ready(Some(Err(BodyError::Chunked)));
                    }
                },
                Framing::UntilClose => (!conn.buf.is_empty()).then(|| conn.buf.split().freeze()),
            };
            if let Some(data) = data {
                this.finish_if_done();
                return Poll::Ready(Some(Ok(Frame::data(data))));
            }
            if framing_done(&this.framing) {
                this.finish_if_done();
                return Poll::Ready(None);
            }
            match ready!(conn.poll_fill(cx)) {
                Ok(0) if this.framing == Framing::UntilClose => {
                    this.conn = None;
                    return Poll::Ready(None);
                }
                Ok(0) => {
                    this.conn = None;
                    let e = io::Error::new(
                        io::ErrorKind::UnexpectedEof,
                        "upstream closed the connection before the end of the body",
                    );
                    return Poll::Ready(Some(Err(e.into())));
                }
                Ok(_) => {}
                Err(e) => {
                    this.conn = None;
                    return Poll::Ready(Some(Err(e.into())));
                }
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        framing_done(&self.framing) || self.conn.is_none()
    }

    fn size_hint(&self) -> SizeHint {
        match self.framing {
            Framing::Empty => SizeHint::with_exact(0),
            Framing::Length(n) => SizeHint::with_exact(n),
            _ => SizeHint::default(),
        }
    }
}

/// Decoder for the chunked transfer coding (RFC 9112 §7.1).
#[derive(Debug, Default, PartialEq)]
pub(crate) struct Chunked {
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

impl Chunked {
    /// Consumes framing bytes from `buf`; returns chunk data when some is available,
    /// `None` when more input is needed or the body ended (then `state` is `Done`).
    /// Whether the last chunk and the trailer section have been read.
    pub(crate) fn is_done(&self) -> bool {
        self.state == ChunkState::Done
    }

    pub(crate) fn decode(&mut self, buf: &mut BytesMut) -> Result<Option<Bytes>, ()> {
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
                    return Err(());
                }
            } else {
                self.line = 0;
            }
            self.state = match (self.state, b) {
                (Size, b'0'..=b'9' | b'a'..=b'f' | b'A'..=b'F') => {
                    let digit = (b as char).to_digit(16).ok_or(())?;
                    self.digits += 1;
                    if self.digits > 15 {
                        return Err(());
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
                _ => return Err(()),
            };
            if self.state == Done {
                return Ok(None);
            }
        }
        Ok(None)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::net::TcpStream;

    fn decode_all(input: &[u8], split: usize) -> Result<(Vec<u8>, bool, usize), ()> {
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
        let cases: &[(&[u8], Result<(&[u8], bool, usize), ()>)] = &[
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
            (b"g\r\n", Err(())),
            (b"3\r\nabcX\r\n", Err(())),
            (b"\r\n", Err(())),
            (b"ffffffffffffffff1\r\n", Err(())),
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
            assert_eq!(decode_all(input.as_bytes(), 4096), Err(()));
        }
        let fine = "x".repeat(MAX_CHUNK_LINE - 10);
        let input = format!("0\r\nx-t: {fine}\r\n\r\n");
        assert_eq!(
            decode_all(input.as_bytes(), 4096),
            Ok((Vec::new(), true, 0))
        );
    }

    #[test]
    fn response_framing() {
        let h = |pairs: &[(&str, &str)]| {
            let mut m = HeaderMap::new();
            for (k, v) in pairs {
                m.append(
                    HeaderName::from_bytes(k.as_bytes()).unwrap(),
                    HeaderValue::from_str(v).unwrap(),
                );
            }
            m
        };
        let ok = StatusCode::OK;
        assert_eq!(
            framing(ok, false, &h(&[("content-length", "12")])),
            Ok(Framing::Length(12))
        );
        assert_eq!(
            framing(ok, true, &h(&[("content-length", "12")])),
            Ok(Framing::Empty)
        );
        assert_eq!(
            framing(
                StatusCode::NOT_MODIFIED,
                false,
                &h(&[("content-length", "5")])
            ),
            Ok(Framing::Empty)
        );
        assert_eq!(
            framing(StatusCode::NO_CONTENT, false, &h(&[])),
            Ok(Framing::Empty)
        );
        assert_eq!(
            framing(
                ok,
                false,
                &h(&[
                    ("transfer-encoding", "gzip, chunked"),
                    ("content-length", "3")
                ])
            ),
            Ok(Framing::Chunked(Chunked::default()))
        );
        assert_eq!(
            framing(ok, false, &h(&[("transfer-encoding", "gzip")])),
            Ok(Framing::UntilClose)
        );
        assert_eq!(framing(ok, false, &h(&[])), Ok(Framing::UntilClose));
        assert_eq!(
            framing(ok, false, &h(&[("content-length", "3, 3")])),
            Ok(Framing::Length(3))
        );
        assert!(framing(
            ok,
            false,
            &h(&[("content-length", "3"), ("content-length", "4")])
        )
        .is_err());
        assert!(framing(ok, false, &h(&[("content-length", "-1")])).is_err());
    }

    /// Runs one exchange against a scripted upstream that answers `reply`, and reads
    /// the body to the end; returns status, headers, body and whether the connection
    /// went back to the pool.
    async fn run(
        reply: &'static [u8],
        method: Method,
    ) -> Result<(StatusCode, HeaderMap, Vec<u8>, bool), String> {
        use http_body_util::BodyExt;
        use tokio::io::AsyncReadExt;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            let (mut s, _) = listener.accept().await.unwrap();
            let mut buf = vec![0u8; 4096];
            let _ = s.read(&mut buf).await;
            let _ = s.write_all(reply).await;
            // Keep the connection open until the client is done.
            let _ = s.read(&mut buf).await;
        });
        let up = std::sync::Arc::new(crate::upstream::Upstream::new(
            turnout_core::SlotName::Blue,
            addr.to_string(),
            4,
        ));
        let mut conn = RawConn::new(UpstreamStream::Plain(
            TcpStream::connect(addr).await.unwrap(),
        ));
        let (parts, ()) = http::Request::builder()
            .method(method)
            .uri("/")
            .body(())
            .unwrap()
            .into_parts();
        let head = conn
            .exchange(&up.addr, &parts, Duration::from_secs(5))
            .await
            .map_err(|e| e.error.to_string())?;
        let resp = head.into_response(conn, up.clone());
        let status = resp.status();
        let (parts, body) = resp.into_parts();
        let body = body
            .collect()
            .await
            .map_err(|e| e.to_string())?
            .to_bytes()
            .to_vec();
        let pooled = up.checkout_raw().is_some();
        Ok((status, parts.headers, body, pooled))
    }

    #[tokio::test]
    async fn exchanges_with_a_scripted_upstream() {
        // Content-Length, reused.
        let (s, h, b, pooled) = run(
            b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\nx-a: 1\r\n\r\nhello",
            Method::GET,
        )
        .await
        .unwrap();
        assert_eq!(
            (s, b.as_slice(), pooled),
            (StatusCode::OK, &b"hello"[..], true)
        );
        assert_eq!(h["x-a"], "1");
        // Interim 100 and 103 responses are skipped; chunked with a trailer; the length
        // header is dropped when Transfer-Encoding is present.
        let (s, h, b, pooled) = run(
            b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 103 Early Hints\r\nlink: </a>\r\n\r\n\
              HTTP/1.1 201 Created\r\ntransfer-encoding: chunked\r\ncontent-length: 99\r\n\r\n\
              3\r\nabc\r\n2\r\nde\r\n0\r\nx-t: 1\r\n\r\n",
            Method::GET,
        )
        .await
        .unwrap();
        assert_eq!(
            (s, b.as_slice(), pooled),
            (StatusCode::CREATED, &b"abcde"[..], true)
        );
        assert!(!h.contains_key("content-length"));
        // HEAD: no body even with a length; reused.
        let (_, _, b, pooled) = run(
            b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\n",
            Method::HEAD,
        )
        .await
        .unwrap();
        assert_eq!((b.len(), pooled), (0, true));
        // Connection: close and HTTP/1.0 are not reused.
        let (_, _, _, pooled) = run(
            b"HTTP/1.1 200 OK\r\nconnection: close\r\ncontent-length: 1\r\n\r\nx",
            Method::GET,
        )
        .await
        .unwrap();
        assert!(!pooled);
        let (_, _, _, pooled) = run(
            b"HTTP/1.0 200 OK\r\ncontent-length: 1\r\n\r\nx",
            Method::GET,
        )
        .await
        .unwrap();
        assert!(!pooled);
        // Garbage and conflicting lengths are protocol errors.
        let err = run(b"SMTP ready\r\n\r\n", Method::GET).await.unwrap_err();
        assert!(err.contains("invalid response"), "{err}");
        let err = run(
            b"HTTP/1.1 200 OK\r\ncontent-length: 1\r\ncontent-length: 2\r\n\r\nx",
            Method::GET,
        )
        .await
        .unwrap_err();
        assert!(err.contains("conflicting content-length"), "{err}");
    }

    #[tokio::test]
    async fn a_body_cut_short_is_an_error_not_a_short_success() {
        use http_body_util::BodyExt;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            use tokio::io::AsyncReadExt;
            let (mut s, _) = listener.accept().await.unwrap();
            let mut buf = vec![0u8; 4096];
            let _ = s.read(&mut buf).await;
            let _ = s
                .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 10\r\n\r\nabc")
                .await;
            // Closes here: 7 bytes short.
        });
        let up = std::sync::Arc::new(crate::upstream::Upstream::new(
            turnout_core::SlotName::Blue,
            addr.to_string(),
            4,
        ));
        let mut conn = RawConn::new(UpstreamStream::Plain(
            TcpStream::connect(addr).await.unwrap(),
        ));
        let (parts, ()) = http::Request::new(()).into_parts();
        let head = conn
            .exchange(&up.addr, &parts, Duration::from_secs(5))
            .await
            .map_err(|e| e.error.to_string())
            .unwrap();
        let body = head.into_response(conn, up.clone()).into_body();
        assert!(body.collect().await.is_err());
        assert!(up.checkout_raw().is_none());
    }

    #[test]
    fn keep_alive_rules() {
        let h = |v: &str| {
            let mut m = HeaderMap::new();
            m.insert(header::CONNECTION, HeaderValue::from_str(v).unwrap());
            m
        };
        assert!(wants_keep_alive(1, &HeaderMap::new()));
        assert!(!wants_keep_alive(1, &h("close")));
        assert!(!wants_keep_alive(0, &HeaderMap::new()));
        assert!(wants_keep_alive(0, &h("Keep-Alive")));
    }
}
