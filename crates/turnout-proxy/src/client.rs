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

use crate::error::{Failed, ProxyError, Sent};
use crate::http1::{self, Chunked, Framing, MAX_HEAD};
use crate::tls::UpstreamStream;

/// Read buffer growth step.
const READ_CHUNK: usize = 16 * 1024;

/// An HTTP/1.1 connection to an upstream, idle between requests.
pub struct RawConn {
    pub(crate) stream: UpstreamStream,
    pub(crate) buf: BytesMut,
    wbuf: Vec<u8>,
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
    ) -> Result<Head, Failed> {
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
    ) -> Result<Head, Failed> {
        match tokio::time::timeout(timeout, self.stream.write_all(request)).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => return Err(io_error(addr, e, true)),
            Err(_) => {
                return Err(Failed {
                    error: ProxyError::ResponseTimeout {
                        addr: addr.to_owned(),
                        timeout_ms: timeout.as_millis(),
                    },
                    sent: Sent::Maybe,
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
    ) -> Result<Head, Failed> {
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
                    return Err(Failed {
                        error: ProxyError::UpstreamProtocol {
                            addr: addr.to_owned(),
                            detail: format!("response head larger than {MAX_HEAD} bytes"),
                        },
                        sent: Sent::Maybe,
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
            Err(_) => Err(Failed {
                error: ProxyError::ResponseTimeout {
                    addr: addr.to_owned(),
                    timeout_ms: timeout.as_millis(),
                },
                sent: Sent::Maybe,
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
    fn parse_head(&mut self, addr: &str, head_request: bool) -> Result<Option<Head>, Failed> {
        let bad = |detail: String| Failed {
            error: ProxyError::UpstreamProtocol {
                addr: addr.to_owned(),
                detail,
            },
            sent: Sent::Maybe,
        };
        loop {
            let mut slots = [httparse::EMPTY_HEADER; http1::MAX_HEADERS];
            let base = self.buf.as_ptr() as usize;
            let Some(parsed) = http1::parse_response(&self.buf, &mut slots)
                .map_err(|detail| bad(detail.to_owned()))?
            else {
                return Ok(None);
            };
            let len = parsed.len;
            if parsed.is_interim() {
                self.buf.advance(len);
                continue;
            }
            let framing = parsed.framing(head_request);
            parsed
                .check_length(framing)
                .map_err(|detail| bad(detail.to_owned()))?;
            let keep_alive = parsed.reusable(framing);
            let drop_length = matches!(framing, Framing::Chunked | Framing::UntilClose);
            // Header positions as offsets, so that the head can be frozen and sliced
            // without copying.
            let mut offsets = [(0usize, 0usize, 0usize, 0usize); http1::MAX_HEADERS];
            let count = parsed.headers.len();
            for (slot, h) in offsets.iter_mut().zip(parsed.headers.iter()) {
                let n = h.name.as_ptr() as usize - base;
                let v = h.value.as_ptr() as usize - base;
                *slot = (n, n + h.name.len(), v, v + h.value.len());
            }
            let code = parsed.status;
            let status =
                StatusCode::from_u16(code).map_err(|_| bad(format!("invalid status {code}")))?;
            let head = self.buf.split_to(len).freeze();
            let mut headers = HeaderMap::with_capacity(count);
            for &(ns, ne, vs, ve) in &offsets[..count] {
                let name = HeaderName::from_bytes(&head[ns..ne])
                    .map_err(|_| bad("invalid header name".into()))?;
                // Transfer-Encoding overrides Content-Length (RFC 9112 §6.3); the length
                // must not reach the client, whose framing the server chooses anew.
                if drop_length && name == header::CONTENT_LENGTH {
                    continue;
                }
                let value = HeaderValue::from_maybe_shared(head.slice(vs..ve))
                    .map_err(|_| bad(format!("invalid value for header {name}")))?;
                headers.append(name, value);
            }
            return Ok(Some(Head {
                status,
                headers,
                framing,
                keep_alive,
            }));
        }
    }
}

/// An IO failure on the connection; `nothing_received`: nothing at all came back.
fn io_error(addr: &str, source: io::Error, nothing_received: bool) -> Failed {
    Failed {
        error: ProxyError::UpstreamIo {
            addr: addr.to_owned(),
            source,
        },
        sent: if nothing_received {
            Sent::NoAnswer
        } else {
            Sent::Maybe
        },
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

    /// The response, its connection going back to `home` at the end of the body.
    pub(crate) fn into_response<H: ConnHome>(self, conn: RawConn, home: H) -> Response<RawBody<H>> {
        let mut resp = Response::new(RawBody {
            conn: Some(conn),
            home,
            framing: self.framing,
            dec: Chunked::default(),
            keep_alive: self.keep_alive,
        });
        *resp.status_mut() = self.status;
        *resp.headers_mut() = self.headers;
        resp.body_mut().finish_if_done();
        resp
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

/// Where a connection goes when its response body has been read to the end: the
/// upstream's pool on the live path, a pool of the mirror's own for shadow copies (whose
/// connections must never serve live requests). The client knows neither.
pub trait ConnHome {
    /// Takes back a connection whose response was read exactly to its end.
    fn checkin(&self, conn: RawConn);
}

/// A response body read straight from the upstream connection.
pub struct RawBody<H: ConnHome> {
    conn: Option<RawConn>,
    home: H,
    framing: Framing,
    /// The chunked decoder, for [`Framing::Chunked`].
    dec: Chunked,
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

fn framing_done(framing: &Framing, dec: &Chunked) -> bool {
    match framing {
        Framing::Empty | Framing::Length(0) => true,
        Framing::Chunked => dec.is_done(),
        _ => false,
    }
}

impl<H: ConnHome> RawBody<H> {
    /// At the end of the body the connection goes back to the pool, if reusable.
    fn finish_if_done(&mut self) {
        if framing_done(&self.framing, &self.dec) {
            if let Some(conn) = self.conn.take() {
                if self.keep_alive && conn.buf.is_empty() {
                    self.home.checkin(conn);
                }
            }
        }
    }
}

impl<H: ConnHome + Unpin> Body for RawBody<H> {
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
                Framing::Chunked => match this.dec.decode(&mut conn.buf) {
                    Ok(d) => d,
                    Err(_) => {
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
            if framing_done(&this.framing, &this.dec) {
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
        framing_done(&self.framing, &self.dec) || self.conn.is_none()
    }

    fn size_hint(&self) -> SizeHint {
        match self.framing {
            Framing::Empty => SizeHint::with_exact(0),
            Framing::Length(n) => SizeHint::with_exact(n),
            _ => SizeHint::default(),
        }
    }
}

#[cfg(test)]
#[path = "client_tests.rs"]
mod tests;
