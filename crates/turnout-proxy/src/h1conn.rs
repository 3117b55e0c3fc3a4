//! HTTP/1.x clients, hand-written: one task per client connection that parses request
//! heads with the codec (`http1.rs`), writes the upstream request head straight from the
//! client's bytes, and relays the response with as few copies and system calls as the
//! protocol allows (a small response goes out in one write).
//!
//! Why not hyper's server: it costs about 3 µs of CPU per proxied request more than this
//! loop on the benchmark machine (BENCHMARKS.md), which is the difference between
//! trailing nginx and passing it.
//!
//! The request path is `forward.rs`'s, as for HTTP/2; this file is its HTTP/1.1 side:
//! the connection loop (keep-alive, idle buffers given back, the stop), the upstream leg
//! ([`Leg`] for [`ClientConn`]: the head and a streamed body written on the hand-written
//! client's connections, `100 Continue`, an upstream's early answer), the response
//! relay, and the tunnel after a `101`. The framing is strict: a head not complete
//! within `header_timeout` closes the connection; request and response bodies are
//! streamed, chunked ones decoded and encoded anew, so the framing an upstream sees is
//! always one turnout produced.

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::{Buf, Bytes, BytesMut};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::watch;

use crate::bufpool::{self, READ_CHUNK};
use crate::client::RawConn;
use crate::error::{Failed, ProxyError, Sent};
use crate::forward::{self, Attempt, Facts, Leg, LogLine};
use crate::head::{H1Request, H1Response};
use crate::http1::{
    encode_chunk, insert_header, plan_request, relay_head, Chunked, Forwarding, Framing, Refusal,
    Relayed, ReqBody, RequestPlan as Plan, MAX_HEAD,
};
use crate::io::{next_bytes, ClientIo};
use crate::shared::Inner;
use crate::tap::Tap;
use crate::tunnel;
use crate::upstream::UpstreamRef;

/// How long an idle keep-alive connection is kept between requests.
const KEEP_ALIVE_IDLE: Duration = Duration::from_secs(60);
/// Flush the client write buffer once it holds this much.
const FLUSH_AT: usize = 32 * 1024;
/// After the last response of a connection, how long and how much the client may still
/// send while turnout closes (so that the response is not destroyed by a reset).
const LINGER: Duration = Duration::from_secs(2);
const LINGER_BYTES: usize = 256 * 1024;
/// When an upstream stops taking a request body, how long its early answer may take.
const EARLY_ANSWER_WAIT: Duration = Duration::from_secs(1);

/// Resolves when an idle connection should close because the router stops: at once,
/// unless the stop hands over to a new process (then never: the connection waits for
/// its next request, answered with `Connection: close`, or for its idle limit).
async fn idle_stop(stop: &mut watch::Receiver<bool>, inner: &Inner) {
    let _ = stop.wait_for(|s| *s).await;
    if inner
        .keep_idle_on_stop
        .load(std::sync::atomic::Ordering::Relaxed)
    {
        std::future::pending::<()>().await;
    }
}

/// Serves one HTTP/1.x client connection until it closes, the router stops, or it is
/// upgraded. `pre`: bytes already read from it; `first_deadline`: when its first request
/// head must be complete.
pub(crate) async fn serve<S: ClientIo>(
    inner: Arc<Inner>,
    stream: S,
    pre: bufpool::Buffers,
    peer: SocketAddr,
    stop: watch::Receiver<bool>,
    first_deadline: Instant,
) {
    let mut conn = ClientConn {
        ip: Bytes::from(peer.ip().to_canonical().to_string()),
        stream,
        buf: pre.buf,
        out: pre.out,
        up_head: pre.up_head,
        first_deadline,
        stop,
        tap: None,
        request_id: pre.request_id,
        body_bytes: 0,
        plan: Plan::default(),
        response_timeout: inner.opts.response_timeout,
        max_body: inner.opts.max_body,
    };
    let mut first = true;
    loop {
        // Idle: no buffers, and only this small future (the exchange's is boxed below).
        if conn.buf.is_empty() && !conn.wait_for_request(&inner, first).await {
            break;
        }
        conn.take_buffers();
        // Boxed: a connection waiting for its next request must not carry the state of
        // an exchange (several KiB) in its task.
        let next = Box::pin(conn.one_request(&inner, first)).await;
        if conn.tap.is_some() {
            // Not finished: the exchange failed (counted as skipped).
            conn.tap = None;
        }
        match next {
            Next::KeepAlive => {
                first = false;
                conn.give_buffers();
            }
            Next::Close => break,
            // Boxed like the exchange: a tunnel's and a closing connection's state
            // (buffers among it) must not size every connection's task.
            Next::Upgrade(tunnel) => return Box::pin(conn.tunnel(&inner, tunnel)).await,
        }
    }
    Box::pin(conn.linger()).await;
}

/// One client connection, and the request in flight on it. Between requests it holds
/// no buffers (`bufpool.rs`): `buf`, `out`, `up_head` and `request_id` are empty and
/// unallocated unless a pipelined request already waits in `buf`.
pub(crate) struct ClientConn<S> {
    stream: S,
    /// Bytes read from the client and not yet used.
    buf: BytesMut,
    /// Bytes to write to the client.
    out: Vec<u8>,
    /// The request head for the upstream.
    up_head: Vec<u8>,
    ip: Bytes,
    stop: watch::Receiver<bool>,
    /// When the first request head must be complete (set at accept).
    first_deadline: Instant,
    /// The shadow/capture tap of the request in flight, when one wants it.
    tap: Option<Box<Tap>>,
    /// The request id of the request in flight (the client's, or one turnout made).
    request_id: Vec<u8>,
    /// Response body bytes sent to the client for the request in flight (for the access
    /// log).
    body_bytes: u64,
    /// The request in flight.
    plan: Plan,
    /// `[upstream] response_timeout`: the longest wait for an upstream's answer, and for
    /// either side to take or give body bytes.
    response_timeout: Duration,
    /// `[listen] max_body`.
    max_body: Option<u64>,
}

/// What happens after a request.
enum Next {
    KeepAlive,
    Close,
    Upgrade(Tunnel),
}

struct Tunnel {
    upstream: RawConn,
    slot: turnout_core::SlotName,
    websocket: bool,
}

impl<S: ClientIo> ClientConn<S> {
    /// Waits, holding no buffers, until the client sends its next request: `false` when
    /// it closed, stayed idle past the keep-alive limit (or, for the first request, past
    /// `header_timeout` from accept), or the router stops.
    async fn wait_for_request(&mut self, inner: &Inner, first: bool) -> bool {
        let limit = if first {
            self.first_deadline
        } else {
            deadline_after(KEEP_ALIVE_IDLE)
        };
        let stop = &mut self.stop;
        let next = tokio::select! {
            biased;
            b = next_bytes(&mut self.stream, limit) => b,
            () = idle_stop(stop, inner) => None,
        };
        match next {
            Some(b) => {
                self.install(b);
                true
            }
            None => false,
        }
    }

    /// Takes a set of buffers for an exchange (keeping bytes already read).
    fn take_buffers(&mut self) {
        if self.out.capacity() == 0 {
            let b = bufpool::take();
            self.install(b);
        }
    }

    /// Puts `b` in place, keeping what `buf` holds already.
    fn install(&mut self, mut b: bufpool::Buffers) {
        if !self.buf.is_empty() {
            b.buf.extend_from_slice(&self.buf);
        }
        self.buf = b.buf;
        self.out = b.out;
        self.up_head = b.up_head;
        self.request_id = b.request_id;
    }

    /// Gives the buffers back after an exchange, unless a pipelined request already
    /// waits in `buf`.
    fn give_buffers(&mut self) {
        if !self.buf.is_empty() || self.out.capacity() == 0 {
            return;
        }
        bufpool::give(bufpool::Buffers {
            buf: std::mem::take(&mut self.buf),
            out: std::mem::take(&mut self.out),
            up_head: std::mem::take(&mut self.up_head),
            request_id: std::mem::take(&mut self.request_id),
        });
    }

    /// Serves one request: the phases of `forward.rs`.
    async fn one_request(&mut self, inner: &Arc<Inner>, first: bool) -> Next {
        // Phase 1, begin: the head is checked and the upstream head written from it.
        self.request_id.clear();
        self.body_bytes = 0;
        let mut plan = match self.read_head(inner, first).await {
            Ok(Some(plan)) => plan,
            Ok(None) => return Next::Close,
            Err(Refusal(status, message)) => {
                self.write_error(status, message, true, false).await;
                return Next::Close;
            }
        };
        // The latency clock starts with the complete head.
        let received = Instant::now();
        match plan.request_id {
            Some((from, to)) => self.request_id.extend_from_slice(&self.buf[from..to]),
            None => {
                // None from the client: one of turnout's, for the upstream and the client.
                self.request_id
                    .extend_from_slice(&crate::ids::new_request_id());
                insert_header(&mut self.up_head, b"x-request-id: ", &self.request_id);
            }
        }
        self.buf.advance(plan.head_len);
        // A stopping router says so in the response, so the client does not reuse the
        // connection.
        plan.close |= *self.stop.borrow();
        self.plan = plan;
        let head = H1Request::new(&self.up_head);
        let log = LogLine::begin(inner, &head, &self.request_id, received);
        let session = forward::session_facts(inner, &head);
        // A body over max_body with its length announced: refused before routing, so
        // nothing reaches an upstream. The body is not read: the connection closes.
        if let ReqBody::Length(n) = plan.body {
            if crate::limits::body_too_large(inner, n) {
                let error = ProxyError::BodyTooLarge {
                    max: self.max_body.unwrap_or(0),
                };
                let message = error.client_message();
                self.write_error(413, message, true, plan.head_request)
                    .await;
                if let Some(log) = log {
                    log.write(inner, 413, None, None, self.body_bytes);
                }
                return Next::Close;
            }
        }

        // Phase 2, route.
        let Some(slot) = forward::route(inner, &session) else {
            return self.fail(inner, &ProxyError::NoLiveSlot, log).await;
        };

        // Phase 3, tap (not for upgrades).
        let has_body = plan.body != ReqBody::None;
        if inner.tap.is_on() && plan.upgrade.is_none() {
            let head = H1Request::new(&self.up_head);
            self.tap = inner.tap.begin(&head, slot.name, has_body);
        }

        // Phase 4, attempt.
        let facts = Facts {
            idempotent: plan.idempotent,
            has_body,
            upgrade: plan.upgrade.is_some(),
        };
        let Attempt {
            slot,
            mut outcome,
            result,
        } = forward::attempt(inner, self, slot, facts, received).await;
        let ((mut upstream, resp), up) = match result {
            Ok(answer) => answer,
            Err(f) => {
                if matches!(f.error, ProxyError::ClientGone) {
                    // Nobody to answer: counted as cancelled (`Outcome`'s drop).
                    return Next::Close;
                }
                forward::log_failure(inner, slot.name, &f.error);
                // A body partly read cannot be followed by another request.
                let close = plan.close || has_body;
                let (status, message) = (f.error.status().as_u16(), f.error.client_message());
                outcome.record(status);
                self.write_error(status, message, close, plan.head_request)
                    .await;
                if let Some(log) = log {
                    log.write(inner, status, Some(&slot), None, self.body_bytes);
                }
                return if close { Next::Close } else { Next::KeepAlive };
            }
        };

        // Phase 5, finish.
        if !resp.has_request_id {
            insert_header(&mut self.out, b"x-request-id: ", &self.request_id);
        }
        // The tunnel after a 101.
        if resp.status == 101 {
            let Some(websocket) = plan.upgrade else {
                // A switch of protocols nobody asked for: the connection is the
                // upstream's no more.
                let error = ProxyError::UpstreamProtocol {
                    addr: up.addr.clone(),
                    detail: "101 Switching Protocols to a request without Upgrade".into(),
                };
                outcome.record(error.status().as_u16());
                return self.fail(inner, &error, log).await;
            };
            outcome.record(101);
            if self.flush().await.is_err() {
                return Next::Close;
            }
            if let Some(log) = log {
                log.write(inner, 101, Some(&slot), Some(&up), 0);
            }
            return Next::Upgrade(Tunnel {
                upstream,
                slot: slot.name,
                websocket,
            });
        }
        outcome.record(resp.status);
        // The head as the client gets it, read only when a tap or the pin wants it.
        if self.tap.is_some() || inner.sessions.is_some() {
            let view = H1Response::new(&self.out);
            if let Some(tap) = self.tap.as_mut() {
                tap.set_slot(slot.name);
                tap.response_head(&view, outcome.since().elapsed());
            }
            if let Some(pin) = forward::pin(inner, &session, &view, slot.name, S::TLS) {
                insert_header(&mut self.out, b"set-cookie: ", pin.as_bytes());
            }
        }

        let relayed = self.relay_body(&mut upstream, &resp).await;
        if let Some(log) = log {
            log.write(inner, resp.status, Some(&slot), Some(&up), self.body_bytes);
        }
        match relayed {
            Ok(()) => {
                if resp.framing.upstream_keep_alive && upstream.buf.is_empty() {
                    up.checkin_raw(upstream);
                }
                if let Some(tap) = self.tap.take() {
                    tap.finish();
                }
                // A stop that began after this response's head went out without
                // `Connection: close`: closing now would race the client's next request.
                // On a handover the connection waits for that request (answered with
                // `Connection: close`); on a plain stop it closes.
                let stopping = *self.stop.borrow()
                    && !inner
                        .keep_idle_on_stop
                        .load(std::sync::atomic::Ordering::Relaxed);
                if resp.framing.close || plan.close || stopping {
                    Next::Close
                } else {
                    Next::KeepAlive
                }
            }
            Err(e) => {
                // Broken on the upstream's side (closed early, bad framing): the version
                // gave a truncated response. A client that went away is not its fault.
                if matches!(
                    e.kind(),
                    io::ErrorKind::UnexpectedEof | io::ErrorKind::InvalidData
                ) {
                    inner.stats(slot.name).record_broken();
                }
                tracing::debug!(slot = %slot.name, upstream = %up.addr, error = %e, "response relay broke off");
                // The response is cut short: closing is how the client learns it.
                Next::Close
            }
        }
    }

    /// Answers a request that got no upstream's response with turnout's own.
    async fn fail(&mut self, inner: &Inner, error: &ProxyError, log: Option<Box<LogLine>>) -> Next {
        let close = self.plan.close || self.plan.body != ReqBody::None;
        let status = error.status().as_u16();
        self.write_error(
            status,
            error.client_message(),
            close,
            self.plan.head_request,
        )
        .await;
        if let Some(log) = log {
            log.write(inner, status, None, None, self.body_bytes);
        }
        if close {
            Next::Close
        } else {
            Next::KeepAlive
        }
    }

    /// Waits for a complete request head and checks it. `Ok(None)`: the client closed,
    /// stayed idle too long, or the router is stopping.
    async fn read_head(&mut self, inner: &Inner, first: bool) -> Result<Option<Plan>, Refusal> {
        let header_timeout = inner.opts.header_timeout;
        // The first head's clock started at accept; later ones at their first byte.
        let mut deadline = first.then_some(self.first_deadline);
        let mut parse = true;
        // The keep-alive wait is measured once, from the end of the last response.
        let idle_limit = deadline_after(KEEP_ALIVE_IDLE);
        loop {
            if !self.buf.is_empty() {
                // Only the first MAX_HEAD bytes may hold the head.
                let window = &self.buf[..self.buf.len().min(MAX_HEAD)];
                if parse {
                    let fwd = Forwarding {
                        client_ip: &self.ip,
                        https: S::TLS,
                        via: crate::ids::via(),
                    };
                    if let Some(plan) = plan_request(window, &fwd, &mut self.up_head)? {
                        return Ok(Some(plan));
                    }
                }
                if self.buf.len() >= MAX_HEAD {
                    return Err(Refusal(431, "turnout: request head too large\n"));
                }
                // The head has begun: it must be complete within header_timeout.
                deadline.get_or_insert_with(|| deadline_after(header_timeout));
            }
            let limit = deadline.unwrap_or(idle_limit);
            let idle = self.buf.is_empty();
            self.buf.reserve(READ_CHUNK);
            let before = self.buf.len();
            let read = tokio::time::timeout_at(limit.into(), self.stream.read_buf(&mut self.buf));
            let stop = &mut self.stop;
            let stopping = async {
                if idle {
                    idle_stop(stop, inner).await;
                } else {
                    std::future::pending::<()>().await;
                }
            };
            tokio::select! {
                biased;
                r = read => match r {
                    Ok(Ok(0)) | Ok(Err(_)) => return Ok(None),
                    // Parse again only when a line may have ended: a head sent a byte at
                    // a time costs one parse per line, not one per byte.
                    Ok(Ok(_)) => parse = self.buf[before..].contains(&b'\n'),
                    Err(_) => {
                        if !idle {
                            tracing::debug!("request head not complete within header_timeout; connection closed");
                        }
                        return Ok(None);
                    }
                },
                () = stopping => return Ok(None),
            }
        }
    }

    /// The upstream leg ([`Leg::send_to`]): sends on a pooled connection (or a new
    /// one). `may_resend`: a body-less idempotent request that got nothing back on a
    /// pooled connection is sent once more, on a new one.
    async fn send_to(
        &mut self,
        inner: &Inner,
        up: &UpstreamRef,
        may_resend: bool,
    ) -> Result<(RawConn, Relayed), Failed> {
        let plan = self.plan;
        let resendable = may_resend && plan.body == ReqBody::None && plan.idempotent;
        while let Some((mut conn, _)) = up.checkout_raw() {
            // A connection the upstream closed, or sent stray bytes on, meanwhile. The
            // check costs no system call unless the socket was reported readable.
            if !conn.looks_alive() {
                continue;
            }
            match self.exchange(&mut conn, up, &plan).await {
                Ok(resp) => return Ok((conn, resp)),
                Err(f) if f.sent == Sent::NoAnswer && resendable => break,
                Err(f) => return Err(f),
            }
        }
        let mut conn = RawConn::new(up.open(inner.opts.connect_timeout).await?);
        let resp = self.exchange(&mut conn, up, &plan).await?;
        Ok((conn, resp))
    }

    /// Writes the request (head and body) and reads the response head into `out`. A
    /// failure says whether nothing at all came back ([`Sent::NoAnswer`]).
    async fn exchange(
        &mut self,
        conn: &mut RawConn,
        up: &UpstreamRef,
        plan: &Plan,
    ) -> Result<Relayed, Failed> {
        let idle = self.response_timeout;
        match plan.body {
            ReqBody::None => {
                if let Err(e) = write_within(&mut conn.stream, &self.up_head, idle).await {
                    return Err(io_failed(up, e, Sent::NoAnswer));
                }
            }
            ReqBody::Length(n) => {
                if plan.expect_continue && (self.buf.len() as u64) < n {
                    self.out.clear();
                    self.out.extend_from_slice(b"HTTP/1.1 100 Continue\r\n\r\n");
                    if self.flush().await.is_err() {
                        return Err(ProxyError::ClientGone.into());
                    }
                }
                let sent = self.send_length_body(conn, up, n).await;
                return self.after_body(conn, up, plan, sent).await;
            }
            ReqBody::Chunked => {
                if plan.expect_continue && self.buf.is_empty() {
                    self.out.clear();
                    self.out.extend_from_slice(b"HTTP/1.1 100 Continue\r\n\r\n");
                    if self.flush().await.is_err() {
                        return Err(ProxyError::ClientGone.into());
                    }
                }
                let sent = self.send_chunked_body(conn, up).await;
                return self.after_body(conn, up, plan, sent).await;
            }
        }
        self.read_response(conn, up, plan).await
    }

    /// After sending a request body: the response as usual; or, when the upstream stopped
    /// taking the body (it may have answered early — 413, 401 — and closed), the answer it
    /// already sent, relayed on a connection that then closes, instead of a 502.
    async fn after_body(
        &mut self,
        conn: &mut RawConn,
        up: &UpstreamRef,
        plan: &Plan,
        sent: Result<(), Failed>,
    ) -> Result<Relayed, Failed> {
        match sent {
            Ok(()) => self.read_response(conn, up, plan).await,
            Err(f) if !matches!(f.error, ProxyError::UpstreamIo { .. }) => Err(f),
            Err(f) => {
                // The client's body was not read to its end: this connection closes.
                let closing = Plan {
                    close: true,
                    ..*plan
                };
                let early =
                    tokio::time::timeout(EARLY_ANSWER_WAIT, self.read_response(conn, up, &closing))
                        .await;
                match early {
                    Ok(Ok(mut resp)) => {
                        resp.framing.close = true;
                        resp.framing.upstream_keep_alive = false;
                        Ok(resp)
                    }
                    _ => Err(f),
                }
            }
        }
    }

    /// Reads the upstream's response head into `out`, within `response_timeout`.
    async fn read_response(
        &mut self,
        conn: &mut RawConn,
        up: &UpstreamRef,
        plan: &Plan,
    ) -> Result<Relayed, Failed> {
        let timeout = self.response_timeout;
        self.out.clear();
        // Anything at all from the upstream (an interim 1xx too) proves it got the request.
        let mut received = false;
        let read = async {
            loop {
                match relay_head(&mut conn.buf, plan, &mut self.out) {
                    Ok(Some(resp)) => return Ok(resp),
                    Ok(None) => {}
                    Err(detail) => {
                        let error = ProxyError::UpstreamProtocol {
                            addr: up.addr.clone(),
                            detail: detail.to_owned(),
                        };
                        return Err(error.into());
                    }
                }
                if conn.buf.len() > MAX_HEAD {
                    let error = ProxyError::UpstreamProtocol {
                        addr: up.addr.clone(),
                        detail: format!("response head larger than {MAX_HEAD} bytes"),
                    };
                    return Err(error.into());
                }
                let nothing_yet = !received;
                let filled = conn.fill().await;
                received |= matches!(filled, Ok(n) if n > 0);
                match filled {
                    Ok(0) => {
                        let e = io::Error::new(
                            io::ErrorKind::UnexpectedEof,
                            "connection closed before a response",
                        );
                        return Err(io_failed(up, e, answer_so_far(nothing_yet)));
                    }
                    Ok(_) => {}
                    Err(e) => {
                        return Err(io_failed(up, e, answer_so_far(nothing_yet)));
                    }
                }
            }
        };
        match tokio::time::timeout(timeout, read).await {
            Ok(r) => r,
            Err(_) => {
                let error = ProxyError::ResponseTimeout {
                    addr: up.addr.clone(),
                    timeout_ms: timeout.as_millis(),
                };
                Err(error.into())
            }
        }
    }

    /// Sends the head and a `Content-Length` body, as it arrives from the client.
    async fn send_length_body(
        &mut self,
        conn: &mut RawConn,
        up: &UpstreamRef,
        n: u64,
    ) -> Result<(), Failed> {
        let idle = self.response_timeout;
        let mut left = n;
        // What is already here goes out with the head, in one write.
        let now = body_part(left, self.buf.len());
        self.up_head.extend_from_slice(&self.buf[..now]);
        if let Some(tap) = self.tap.as_mut() {
            tap.request_body(&self.buf[..now]);
        }
        self.buf.advance(now);
        left -= now as u64;
        let sent = write_within(&mut conn.stream, &self.up_head, idle).await;
        if let Err(e) = sent {
            // Nothing of the body was read beyond what is buffered: still, the head
            // may have gone out, so no resend.
            return Err(io_failed(up, e, Sent::Maybe));
        }
        while left > 0 {
            self.read_body_more(conn, up).await?;
            let take = body_part(left, self.buf.len());
            if let Err(e) = write_within(&mut conn.stream, &self.buf[..take], idle).await {
                return Err(io_failed(up, e, Sent::Maybe));
            }
            if let Some(tap) = self.tap.as_mut() {
                tap.request_body(&self.buf[..take]);
            }
            self.buf.advance(take);
            left -= take as u64;
        }
        if let Some(tap) = self.tap.as_mut() {
            tap.request_end();
        }
        Ok(())
    }

    /// Sends the head and a chunked body: decoded from the client, encoded anew.
    async fn send_chunked_body(
        &mut self,
        conn: &mut RawConn,
        up: &UpstreamRef,
    ) -> Result<(), Failed> {
        let idle = self.response_timeout;
        let mut dec = Chunked::default();
        // Decoded body bytes so far, against max_body: past it, the request goes no
        // further (this upstream connection is dropped, never pooled) and the client
        // gets a 413 on a connection that closes.
        let mut total: u64 = 0;
        loop {
            loop {
                match dec.decode(&mut self.buf) {
                    Ok(Some(data)) => {
                        total += data.len() as u64;
                        if self.max_body.is_some_and(|max| total > max) {
                            let max = self.max_body.unwrap_or(0);
                            return Err(ProxyError::BodyTooLarge { max }.into());
                        }
                        if let Some(tap) = self.tap.as_mut() {
                            tap.request_body(&data);
                        }
                        encode_chunk(&mut self.up_head, &data)
                    }
                    Ok(None) => break,
                    Err(_) => return Err(ProxyError::BadRequestBody.into()),
                }
            }
            if dec.is_done() {
                self.up_head.extend_from_slice(b"0\r\n\r\n");
            }
            if !self.up_head.is_empty() {
                if let Err(e) = write_within(&mut conn.stream, &self.up_head, idle).await {
                    return Err(io_failed(up, e, Sent::Maybe));
                }
                self.up_head.clear();
            }
            if dec.is_done() {
                if let Some(tap) = self.tap.as_mut() {
                    tap.request_end();
                }
                return Ok(());
            }
            self.read_body_more(conn, up).await?;
        }
    }

    /// Reads more of the client's request body into `buf`, watching the upstream
    /// meanwhile: one that answers (or closes) before the body is complete ends the wait
    /// — its early answer is then relayed, on a connection that closes (`after_body`) —
    /// and a body that stops arriving for `response_timeout` ends the request with 408.
    async fn read_body_more(&mut self, conn: &mut RawConn, up: &UpstreamRef) -> Result<(), Failed> {
        let idle = self.response_timeout;
        self.buf.reserve(READ_CHUNK);
        conn.buf.reserve(READ_CHUNK);
        let client = tokio::time::timeout(idle, self.stream.read_buf(&mut self.buf));
        // Cancel-safe: bytes read here stay in `conn.buf` for the response parser.
        let upstream = conn.stream.read_buf(&mut conn.buf);
        tokio::select! {
            biased;
            r = client => match r {
                Ok(Ok(0)) | Ok(Err(_)) => Err(ProxyError::ClientGone.into()),
                Err(_) => Err(ProxyError::RequestBodyStalled.into()),
                Ok(Ok(_)) => Ok(()),
            },
            r = upstream => {
                let e = match r {
                    Ok(0) => io::Error::new(
                        io::ErrorKind::UnexpectedEof,
                        "the upstream closed the connection before the request body was complete",
                    ),
                    Ok(_) => io::Error::other(
                        "the upstream answered before the request body was complete",
                    ),
                    Err(e) => e,
                };
                Err(io_failed(up, e, Sent::Maybe))
            }
        }
    }

    /// Relays the response body; `out` holds the response head already. Each wait for
    /// body data is bounded by `response_timeout`.
    async fn relay_body(&mut self, conn: &mut RawConn, resp: &Relayed) -> io::Result<()> {
        let idle = self.response_timeout;
        match resp.framing.framing {
            Framing::Empty | Framing::Length(0) => self.flush().await,
            Framing::Length(n) => {
                let mut left = n;
                loop {
                    let take = body_part(left, conn.buf.len());
                    self.body_bytes += take as u64;
                    self.out.extend_from_slice(&conn.buf[..take]);
                    if let Some(tap) = self.tap.as_mut() {
                        tap.response_body(&conn.buf[..take]);
                    }
                    conn.buf.advance(take);
                    left -= take as u64;
                    if left == 0 {
                        return self.flush().await;
                    }
                    self.flush().await?;
                    if fill_within(conn, idle).await? == 0 {
                        return Err(io::Error::new(
                            io::ErrorKind::UnexpectedEof,
                            "upstream closed the connection before the end of the body",
                        ));
                    }
                }
            }
            Framing::Chunked => {
                let mut dec = Chunked::default();
                loop {
                    loop {
                        match dec.decode(&mut conn.buf) {
                            Ok(Some(data)) => self.body_piece(&data, resp.framing.client_chunked),
                            Ok(None) => break,
                            Err(_) => {
                                return Err(io::Error::new(
                                    io::ErrorKind::InvalidData,
                                    "invalid chunked coding from upstream",
                                ))
                            }
                        }
                        if self.out.len() >= FLUSH_AT {
                            self.flush().await?;
                        }
                    }
                    if dec.is_done() {
                        if resp.framing.client_chunked {
                            self.out.extend_from_slice(b"0\r\n\r\n");
                        }
                        return self.flush().await;
                    }
                    self.flush().await?;
                    if fill_within(conn, idle).await? == 0 {
                        return Err(io::Error::new(
                            io::ErrorKind::UnexpectedEof,
                            "upstream closed the connection before the end of the body",
                        ));
                    }
                }
            }
            Framing::UntilClose => loop {
                if !conn.buf.is_empty() {
                    let data = conn.buf.split().freeze();
                    self.body_piece(&data, resp.framing.client_chunked);
                }
                self.flush().await?;
                if fill_within(conn, idle).await? == 0 {
                    if resp.framing.client_chunked {
                        self.out.extend_from_slice(b"0\r\n\r\n");
                    }
                    return self.flush().await;
                }
            },
        }
    }

    fn body_piece(&mut self, data: &[u8], chunked: bool) {
        self.body_bytes += data.len() as u64;
        if let Some(tap) = self.tap.as_mut() {
            tap.response_body(data);
        }
        if chunked {
            encode_chunk(&mut self.out, data);
        } else {
            self.out.extend_from_slice(data);
        }
    }

    /// Writes `out` to the client; a client that takes nothing for `response_timeout`
    /// is given up on.
    async fn flush(&mut self) -> io::Result<()> {
        if !self.out.is_empty() {
            write_within(&mut self.stream, &self.out, self.response_timeout).await?;
            self.out.clear();
        }
        Ok(())
    }

    /// Closes the connection so that a response already written is read by the client:
    /// shut down our side, then drain (bounded) what the client still sends, since
    /// closing with unread data makes the kernel send a reset that can destroy the
    /// response (RFC 9112 §9.6).
    async fn linger(mut self) {
        if self.stream.shutdown().await.is_err() {
            return;
        }
        let drain = async {
            let mut sink = [0u8; 4096];
            let mut total = 0usize;
            while total < LINGER_BYTES {
                match self.stream.read(&mut sink).await {
                    Ok(0) | Err(_) => return,
                    Ok(n) => total += n,
                }
            }
        };
        let _ = tokio::time::timeout(LINGER, drain).await;
    }

    /// Writes one of turnout's own responses (`head_request`: its length but no body).
    async fn write_error(&mut self, status: u16, message: &str, close: bool, head_request: bool) {
        self.out.clear();
        let reason = http::StatusCode::from_u16(status)
            .ok()
            .and_then(|s| s.canonical_reason())
            .unwrap_or("");
        self.out.extend_from_slice(
            format!(
                "HTTP/1.1 {status} {reason}\r\ncontent-type: text/plain; charset=utf-8\r\ncontent-length: {}\r\n",
                message.len()
            )
            .as_bytes(),
        );
        if close {
            self.out.extend_from_slice(b"connection: close\r\n");
        }
        if !self.request_id.is_empty() {
            self.out.extend_from_slice(b"x-request-id: ");
            self.out.extend_from_slice(&self.request_id);
            self.out.extend_from_slice(b"\r\n");
        }
        self.out.extend_from_slice(b"\r\n");
        if !head_request {
            self.out.extend_from_slice(message.as_bytes());
            self.body_bytes = message.len() as u64;
        }
        let _ = self.flush().await;
    }

    async fn tunnel(self, inner: &Arc<Inner>, t: Tunnel) {
        let Tunnel {
            mut upstream,
            slot,
            websocket,
        } = t;
        // Bytes the client sent after its upgrade request belong to the new protocol.
        if !self.buf.is_empty() && upstream.stream.write_all(&self.buf).await.is_err() {
            return;
        }
        let early = upstream.buf.split().freeze();
        let when = tunnel::DrainWhen {
            slot,
            live: inner.live_rx.clone(),
            after: inner.opts.upgrade_drain,
            stop: self.stop.clone(),
            on_stop: {
                let inner = inner.clone();
                std::sync::Arc::new(move || {
                    if inner
                        .keep_idle_on_stop
                        .load(std::sync::atomic::Ordering::Relaxed)
                    {
                        // The Close frame goes out before the grace period ends the process.
                        inner.opts.upgrade_drain.min(
                            inner
                                .opts
                                .shutdown_grace
                                .saturating_sub(std::time::Duration::from_secs(5)),
                        )
                    } else {
                        std::time::Duration::ZERO
                    }
                })
            },
        };
        tunnel::relay(self.stream, upstream.stream, early, websocket, when).await;
    }
}

/// Drops a response that is not relayed (retry on standby). Its connection is reused
/// only when the body is already read whole (no body, or exactly its length buffered);
/// any other is closed, never pooled half-read.
fn discard_response(mut conn: RawConn, up: &UpstreamRef, resp: &Relayed) {
    let whole = match resp.framing.framing {
        Framing::Empty => conn.buf.is_empty(),
        Framing::Length(n) => conn.buf.len() as u64 == n,
        Framing::Chunked | Framing::UntilClose => false,
    };
    if whole && resp.framing.upstream_keep_alive {
        conn.buf.clear();
        up.checkin_raw(conn);
    }
}

/// An IO failure on the upstream connection, and how far the request got.
fn io_failed(up: &UpstreamRef, source: io::Error, sent: Sent) -> Failed {
    Failed {
        error: ProxyError::UpstreamIo {
            addr: up.addr.clone(),
            source,
        },
        sent,
    }
}

/// How far a request got whose upstream failed while its response head was awaited:
/// nothing back at all, or part of an answer.
fn answer_so_far(nothing_yet: bool) -> Sent {
    if nothing_yet {
        Sent::NoAnswer
    } else {
        Sent::Maybe
    }
}

/// How much of `avail` bytes belongs to a body with `left` bytes still to come.
fn body_part(left: u64, avail: usize) -> usize {
    usize::try_from(left).unwrap_or(usize::MAX).min(avail)
}

/// Writes all of `data`, failing when the peer takes nothing for `idle`. The common
/// case — the socket takes it all at once — needs no timer.
async fn write_within<W: ClientIo>(stream: &mut W, data: &[u8], idle: Duration) -> io::Result<()> {
    let written = match stream.try_write(data) {
        Ok(n) => n,
        Err(e) if e.kind() == io::ErrorKind::WouldBlock => 0,
        Err(e) => return Err(e),
    };
    if written == data.len() {
        return Ok(());
    }
    // (A TLS stream may keep the last records in its session until flushed.)
    let write = async {
        stream.write_all(&data[written..]).await?;
        stream.flush().await
    };
    match tokio::time::timeout(idle, write).await {
        Ok(r) => r,
        Err(_) => Err(io::Error::new(
            io::ErrorKind::TimedOut,
            "the peer took nothing for response_timeout",
        )),
    }
}

/// Reads more from the upstream, failing when nothing comes within `idle`.
async fn fill_within(conn: &mut RawConn, idle: Duration) -> io::Result<usize> {
    match tokio::time::timeout(idle, conn.fill()).await {
        Ok(r) => r,
        Err(_) => Err(io::Error::new(
            io::ErrorKind::TimedOut,
            "the upstream sent no body data within response_timeout",
        )),
    }
}

impl<S: ClientIo> Leg for ClientConn<S> {
    type Answer = (RawConn, Relayed);

    fn status(answer: &Self::Answer) -> u16 {
        answer.1.status
    }

    async fn send_to(
        &mut self,
        inner: &Inner,
        up: &UpstreamRef,
        may_resend: bool,
    ) -> Result<Self::Answer, Failed> {
        ClientConn::send_to(self, inner, up, may_resend).await
    }

    fn discard(&mut self, (conn, resp): Self::Answer, up: &UpstreamRef) {
        discard_response(conn, up, &resp);
        // The head it wrote for the client goes with it.
        self.out.clear();
    }
}

#[allow(dead_code)]
fn _assert_send(
    inner: Arc<Inner>,
    s: tokio::net::TcpStream,
    p: SocketAddr,
    w: watch::Receiver<bool>,
) -> impl std::future::Future + Send {
    serve(inner, s, bufpool::take(), p, w, Instant::now())
}

/// `now + d`, or far in the future when that overflows (an absurd configured timeout).
pub(crate) fn deadline_after(d: Duration) -> std::time::Instant {
    let now = std::time::Instant::now();
    now.checked_add(d)
        .unwrap_or(now + Duration::from_secs(86400 * 365))
}
