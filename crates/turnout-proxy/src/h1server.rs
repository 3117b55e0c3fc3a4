//! The HTTP/1.1 side of the listener, hand-written: one task per client connection that
//! parses request heads with `httparse`, writes the upstream request head straight from
//! the client's bytes, and relays the response with as few copies and system calls as the
//! protocol allows (a small response goes out in one write). HTTP/2 connections (the
//! prior-knowledge preface) are handed to hyper on the same socket.
//!
//! Why not hyper's server: it costs about 3 µs of CPU per proxied request more than this
//! loop on the benchmark machine (BENCHMARKS.md), which is the difference between
//! trailing nginx and passing it.
//!
//! The phases of `service.rs` apply here too: route, prepare, pick, send, respond,
//! tunnel; so do the statistics and the retry on standby. What this file adds is the
//! HTTP/1.1 framing, done strictly:
//! - a request with both `Content-Length` and `Transfer-Encoding`, differing or invalid
//!   lengths, `chunked` not last, several `Host` lines, or no `Host` in HTTP/1.1 is
//!   refused with 400 (an unknown transfer coding with 501), and nothing reaches an
//!   upstream;
//! - a head over 64 KiB or 100 lines is refused with 431;
//! - a head not complete within `header_timeout` closes the connection;
//! - request and response bodies are streamed, chunked ones decoded and encoded anew,
//!   so the framing an upstream sees is always one turnout produced.

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::{Buf, Bytes, BytesMut};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::TcpStream;
use tokio::sync::watch;

use crate::client::RawConn;
use crate::error::ProxyError;
use crate::http1::{
    self, encode_chunk, insert_header, plan_request, relay_head, Chunked, Forwarding, Framing,
    Refusal, Relayed, ReqBody, RequestPlan as Plan, MAX_HEAD,
};
use crate::io::ClientIo;
use crate::service::ConnService;
use crate::sessions::SessionFacts;
use crate::shared::Inner;
use crate::table::SlotPool;
use crate::tap::Tap;
use crate::tunnel;
use crate::upstream::UpstreamRef;

/// How long an idle keep-alive connection is kept between requests.
const KEEP_ALIVE_IDLE: Duration = Duration::from_secs(60);
/// After this long without a request, a keep-alive connection frees its buffers.
const IDLE_SHRINK: Duration = Duration::from_secs(1);
const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
/// Flush the client write buffer once it holds this much.
const FLUSH_AT: usize = 32 * 1024;
const READ_CHUNK: usize = 16 * 1024;
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

/// Serves one client connection until it closes, the router stops, or it is upgraded.
pub(crate) async fn serve_conn<S: ClientIo>(
    inner: Arc<Inner>,
    stream: S,
    peer: SocketAddr,
    stop: watch::Receiver<bool>,
) {
    let inner_header_timeout = inner.opts.header_timeout;
    let mut conn = ClientConn {
        ip: Bytes::from(peer.ip().to_canonical().to_string()),
        inner,
        stream,
        buf: BytesMut::with_capacity(8 * 1024),
        out: Vec::with_capacity(8 * 1024),
        up_head: Vec::with_capacity(2 * 1024),
        first_deadline: deadline_after(inner_header_timeout),
        stop,
        tap: None,
        request_id: Vec::new(),
        body_bytes: 0,
    };
    match conn.detect_h2().await {
        Some(true) => return conn.serve_h2(peer).await,
        Some(false) => {}
        None => return,
    }
    let mut first = true;
    loop {
        let next = conn.one_request(first).await;
        if conn.tap.is_some() {
            // Not finished: the exchange failed (counted as skipped).
            conn.tap = None;
        }
        match next {
            Next::KeepAlive => first = false,
            Next::Close => break,
            Next::Upgrade(tunnel) => return conn.tunnel(tunnel).await,
        }
    }
    conn.linger().await;
}

struct ClientConn<S> {
    inner: Arc<Inner>,
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
    /// Response body bytes relayed for the request in flight (for the access log).
    body_bytes: u64,
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

/// Why sending to an upstream failed.
struct SendFail {
    error: ProxyError,
    /// Nothing was sent and the request body is untouched: another upstream may take it.
    retry_elsewhere: bool,
    /// The client connection cannot go on (its body was partly read, or it is gone).
    close: bool,
    /// The client went away: no response to write.
    client_gone: bool,
}

impl SendFail {
    fn upstream(error: ProxyError, body_touched: bool) -> SendFail {
        SendFail {
            error,
            retry_elsewhere: false,
            close: body_touched,
            client_gone: false,
        }
    }
}

impl<S: ClientIo> ClientConn<S> {
    /// Reads the first bytes: `Some(true)` for the HTTP/2 preface, `Some(false)` for
    /// anything else, `None` when the client went away or sent nothing in time.
    async fn detect_h2(&mut self) -> Option<bool> {
        let deadline = self.first_deadline;
        loop {
            let n = self.buf.len().min(H2_PREFACE.len());
            if self.buf[..n] != H2_PREFACE[..n] {
                return Some(false);
            }
            if n == H2_PREFACE.len() {
                return Some(true);
            }
            self.buf.reserve(READ_CHUNK);
            match tokio::time::timeout_at(deadline.into(), self.stream.read_buf(&mut self.buf))
                .await
            {
                Ok(Ok(0)) | Ok(Err(_)) | Err(_) => return None,
                Ok(Ok(_)) => {}
            }
        }
    }

    async fn serve_h2(self, peer: SocketAddr) {
        let ClientConn {
            inner,
            stream,
            buf,
            mut stop,
            ..
        } = self;
        let io = Prefixed {
            pre: buf.freeze(),
            io: stream,
        };
        let service = ConnService::new(inner, peer.ip(), S::TLS);
        let mut builder = hyper::server::conn::http2::Builder::new(TokioExecutor::new());
        builder.timer(TokioTimer::new());
        // Room above HTTP/1.1's limit, so that a request over it reaches `ConnService` and
        // gets the same 431 (past this, the stream is reset: a protocol limit).
        builder.max_header_list_size(http1::H2_HEADER_LIST_LIMIT);
        let conn = builder.serve_connection(TokioIo::new(io), service);
        tokio::pin!(conn);
        let stopping = async {
            let _ = stop.wait_for(|s| *s).await;
        };
        let result = tokio::select! {
            r = conn.as_mut() => r,
            () = stopping => {
                conn.as_mut().graceful_shutdown();
                conn.await
            }
        };
        if let Err(e) = result {
            tracing::debug!(peer = %peer, error = %e, "HTTP/2 client connection ended with an error");
        }
    }

    /// Serves one request: head, route, send, respond.
    async fn one_request(&mut self, first: bool) -> Next {
        // Phase 2 (prepare) comes first here: the head is checked and the upstream head
        // written from it before routing.
        self.request_id.clear();
        self.body_bytes = 0;
        let plan = match self.read_head(first).await {
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
        let mut plan = plan;
        // A stopping router says so in the response, so the client does not reuse the
        // connection.
        plan.close |= *self.stop.borrow();
        // A body over max_body with its length announced: refused before routing, so
        // nothing reaches an upstream. The body is not read: the connection closes.
        if let ReqBody::Length(n) = plan.body {
            if crate::limits::body_too_large(&self.inner, n) {
                let error = ProxyError::BodyTooLarge {
                    max: self.inner.opts.max_body.unwrap_or(0),
                };
                let message = error.client_message();
                self.write_error(413, message, true, plan.head_request)
                    .await;
                self.access_log(413, None, None, received);
                return Next::Close;
            }
        }

        // Phase 1: route. Requests with no live slot are in no slot's statistics.
        let session = match &self.inner.sessions {
            None => SessionFacts::default(),
            Some(s) => s.facts(
                http1::head_lines(&self.up_head)
                    .filter(|(name, _)| name.eq_ignore_ascii_case(b"cookie"))
                    .map(|(_, value)| value),
            ),
        };
        let chosen = match &self.inner.sessions {
            None => self.inner.table.load().choose().cloned(),
            Some(_) => self.inner.table.load().choose_pinned(session.pin).cloned(),
        };
        let Some(slot) = chosen else {
            return self.fail(&plan, &ProxyError::NoLiveSlot).await;
        };
        if self.inner.tap.is_on() && plan.upgrade.is_none() {
            if let Some(head) = crate::head::H1Request::new(&self.up_head) {
                self.tap = self
                    .inner
                    .tap
                    .begin(&head, slot.name, plan.body != ReqBody::None);
            }
        }

        // Phases 3 and 4: pick and send.
        let mut sent = self.send(&slot, &plan).await;
        let (slot, started) = match self.standby_for(&slot, &plan, &sent) {
            None => (slot, received),
            Some(standby) => {
                // The retried attempt's latency is the standby's own.
                let retried = Instant::now();
                sent = self
                    .retry_on_standby(&slot, &standby, &plan, sent, received)
                    .await;
                (standby, retried)
            }
        };
        let stats = self.inner.stats(slot.name);
        let (mut upstream, up, resp) = match sent {
            Ok(r) => r,
            Err(f) => {
                if f.client_gone {
                    stats.record_cancelled();
                    return Next::Close;
                }
                log_failure(&self.inner, slot.name, &f.error);
                let close = f.close || plan.close || plan.body != ReqBody::None;
                let (status, message) = (f.error.status().as_u16(), f.error.client_message());
                stats.record(status, started.elapsed());
                self.write_error(status, message, close, plan.head_request)
                    .await;
                self.access_log(status, Some(&slot), None, received);
                return if close { Next::Close } else { Next::KeepAlive };
            }
        };

        if !resp.has_request_id {
            insert_header(&mut self.out, b"x-request-id: ", &self.request_id);
        }

        // Phase 6: tunnel.
        if resp.status == 101 {
            let Some(websocket) = plan.upgrade else {
                // A switch of protocols nobody asked for: the connection is the
                // upstream's no more.
                let error = ProxyError::UpstreamProtocol {
                    addr: up.addr.clone(),
                    detail: "101 Switching Protocols to a request without Upgrade".into(),
                };
                stats.record(error.status().as_u16(), started.elapsed());
                return self.fail(&plan, &error).await;
            };
            stats.record(101, started.elapsed());
            if self.flush().await.is_err() {
                return Next::Close;
            }
            self.access_log(101, Some(&slot), Some(&up), received);
            return Next::Upgrade(Tunnel {
                upstream,
                slot: slot.name,
                websocket,
            });
        }
        stats.record(resp.status, started.elapsed());
        if let Some(tap) = self.tap.as_mut() {
            tap.set_slot(slot.name);
            if let Some(head) = crate::head::H1Response::new(&self.out) {
                tap.response_head(&head, started.elapsed());
            }
        }
        // After the tap took the head: a shadow compares what the version answered.
        if let Some(sessions) = &self.inner.sessions {
            let sets = sessions.head_sets_session(&self.out);
            if session.wants_pin(sets, slot.name) {
                let value = sessions.set_cookie(slot.name, S::TLS);
                insert_header(&mut self.out, b"set-cookie: ", value.as_bytes());
            }
        }

        // Phase 5: respond.
        let relayed = self.relay_body(&mut upstream, &resp).await;
        self.access_log(resp.status, Some(&slot), Some(&up), received);
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
                    && !self
                        .inner
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
                    self.inner.stats(slot.name).record_broken();
                }
                tracing::debug!(slot = %slot.name, upstream = %up.addr, error = %e, "response relay broke off");
                // The response is cut short: closing is how the client learns it.
                Next::Close
            }
        }
    }

    async fn fail(&mut self, plan: &Plan, error: &ProxyError) -> Next {
        let close = plan.close || plan.body != ReqBody::None;
        self.write_error(
            error.status().as_u16(),
            error.client_message(),
            close,
            plan.head_request,
        )
        .await;
        self.access_log(error.status().as_u16(), None, None, Instant::now());
        if close {
            Next::Close
        } else {
            Next::KeepAlive
        }
    }

    /// Whether a failed attempt on `slot` goes once more to the standby (retry on
    /// standby, see `Proxy::set_retry_on`): a body-less idempotent request, not an
    /// upgrade, that got no response or a 5xx head — nothing of which has reached the
    /// client yet (interim responses included: they are only flushed with the body).
    /// Only then is the setting read, so a request that went well pays nothing.
    fn standby_for(
        &self,
        slot: &SlotPool,
        plan: &Plan,
        sent: &Result<(RawConn, UpstreamRef, Relayed), SendFail>,
    ) -> Option<Arc<SlotPool>> {
        let failed = match sent {
            Ok((_, _, resp)) => resp.status >= 500,
            Err(f) => !f.client_gone,
        };
        if !failed || plan.body != ReqBody::None || !plan.idempotent || plan.upgrade.is_some() {
            return None;
        }
        let to = self.inner.retry_target(slot.name)?;
        let standby = self.inner.table.load().slot(to).clone();
        // A standby with nothing healthy would only turn one error into another.
        (standby.healthy_count() > 0).then_some(standby)
    }

    /// Counts the failed attempt on `slot` and sends the request to `standby`. A 5xx
    /// response head is dropped unseen; its connection goes back to the pool only when
    /// the whole body is already here, and is closed otherwise.
    async fn retry_on_standby(
        &mut self,
        slot: &SlotPool,
        standby: &SlotPool,
        plan: &Plan,
        failed: Result<(RawConn, UpstreamRef, Relayed), SendFail>,
        received: Instant,
    ) -> Result<(RawConn, UpstreamRef, Relayed), SendFail> {
        let stats = self.inner.stats(slot.name);
        match failed {
            Ok((conn, up, resp)) => {
                stats.record(resp.status, received.elapsed());
                tracing::debug!(slot = %slot.name, upstream = %up.addr, status = resp.status, to = %standby.name, "retrying on the standby slot");
                discard_response(conn, &up, &resp);
                self.out.clear();
            }
            Err(f) => {
                stats.record(f.error.status().as_u16(), received.elapsed());
                log_failure(&self.inner, slot.name, &f.error);
                tracing::debug!(slot = %slot.name, error = %f.error, to = %standby.name, "retrying on the standby slot");
            }
        }
        self.send(standby, plan).await
    }

    /// Waits for a complete request head and checks it. `Ok(None)`: the client closed,
    /// stayed idle too long, or the router is stopping.
    async fn read_head(&mut self, first: bool) -> Result<Option<Plan>, Refusal> {
        let header_timeout = self.inner.opts.header_timeout;
        // The first head's clock started at accept; later ones at their first byte.
        let mut deadline = first.then_some(self.first_deadline);
        let mut parse = true;
        let mut shrunk = false;
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
            if idle && shrunk {
                // A quiet keep-alive connection holds no buffers while it waits.
                let ready = tokio::time::timeout_at(limit.into(), self.stream.readable());
                let stop = &mut self.stop;
                tokio::select! {
                    biased;
                    r = ready => match r {
                        Ok(Ok(())) => shrunk = false,
                        _ => return Ok(None),
                    },
                    () = idle_stop(stop, &self.inner) => return Ok(None),
                }
                continue;
            }
            // Between requests, the first wait is short: a connection still quiet after
            // it gives its buffers back.
            let shrink_at = (idle && deadline.is_none())
                .then(|| deadline_after(IDLE_SHRINK))
                .filter(|s| *s < limit);
            let wake = shrink_at.unwrap_or(limit);
            self.buf.reserve(READ_CHUNK);
            let before = self.buf.len();
            let read = tokio::time::timeout_at(wake.into(), self.stream.read_buf(&mut self.buf));
            let stop = &mut self.stop;
            let inner = &self.inner;
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
                    Err(_) if shrink_at.is_some() => {
                        self.buf = BytesMut::new();
                        self.out = Vec::new();
                        self.up_head = Vec::new();
                        shrunk = true;
                    }
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

    /// Picks an upstream and sends; once more on another upstream when nothing was sent.
    async fn send(
        &mut self,
        slot: &SlotPool,
        plan: &Plan,
    ) -> Result<(RawConn, UpstreamRef, Relayed), SendFail> {
        let first = slot.pick(None).cloned().ok_or(SendFail {
            error: ProxyError::NoHealthyUpstream { slot: slot.name },
            retry_elsewhere: false,
            close: false,
            client_gone: false,
        })?;
        let fail = match self.send_to(&first, plan, true).await {
            Ok((conn, resp)) => return Ok((conn, first, resp)),
            Err(f) if f.retry_elsewhere => f,
            Err(f) => return Err(f),
        };
        let Some(second) = slot.pick(Some(&first)).cloned() else {
            return Err(fail);
        };
        tracing::debug!(slot = %slot.name, from = %first.addr, to = %second.addr, error = %fail.error, "retrying on another upstream");
        // The resend (if any) was spent on the first upstream.
        let (conn, resp) = self.send_to(&second, plan, false).await?;
        Ok((conn, second, resp))
    }

    /// Sends on a pooled connection (or a new one). `may_resend`: a body-less idempotent
    /// request that got nothing back on a pooled connection is sent once more, on a new
    /// one.
    async fn send_to(
        &mut self,
        up: &UpstreamRef,
        plan: &Plan,
        may_resend: bool,
    ) -> Result<(RawConn, Relayed), SendFail> {
        let connect_timeout = self.inner.opts.connect_timeout;
        let resendable = may_resend && plan.body == ReqBody::None && plan.idempotent;
        while let Some((mut conn, _)) = up.checkout_raw() {
            // A connection the upstream closed, or sent stray bytes on, meanwhile. The
            // check costs no system call unless the socket was reported readable.
            if !conn.looks_alive() {
                continue;
            }
            match self.exchange(&mut conn, up, plan).await {
                Ok(resp) => return Ok((conn, resp)),
                Err((_, true)) if resendable => break,
                Err((f, _)) => return Err(f),
            }
        }
        let stream = match up.connect_stream(connect_timeout).await {
            Ok(s) => s,
            Err(e) => {
                if e.is_refused() && up.eject() {
                    tracing::warn!(slot = %up.slot, upstream = %up.addr, error = %e, "upstream ejected until its health check passes");
                }
                return Err(SendFail {
                    error: e,
                    retry_elsewhere: true,
                    close: false,
                    client_gone: false,
                });
            }
        };
        let mut conn = RawConn::new(stream);
        match self.exchange(&mut conn, up, plan).await {
            Ok(resp) => Ok((conn, resp)),
            Err((f, _)) => Err(f),
        }
    }

    /// Writes the request (head and body) and reads the response head into `out`. On
    /// failure, also says whether nothing at all came back.
    async fn exchange(
        &mut self,
        conn: &mut RawConn,
        up: &UpstreamRef,
        plan: &Plan,
    ) -> Result<Relayed, (SendFail, bool)> {
        let idle = self.inner.opts.response_timeout;
        match plan.body {
            ReqBody::None => {
                if let Err(e) = write_within(&mut conn.stream, &self.up_head, idle).await {
                    return Err(upstream_io(up, e, false));
                }
            }
            ReqBody::Length(n) => {
                if plan.expect_continue && (self.buf.len() as u64) < n {
                    self.out.clear();
                    self.out.extend_from_slice(b"HTTP/1.1 100 Continue\r\n\r\n");
                    if self.flush().await.is_err() {
                        return Err((client_gone(), false));
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
                        return Err((client_gone(), false));
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
        sent: Result<(), (SendFail, bool)>,
    ) -> Result<Relayed, (SendFail, bool)> {
        match sent {
            Ok(()) => self.read_response(conn, up, plan).await,
            Err((f, r)) if f.client_gone || !matches!(f.error, ProxyError::UpstreamIo { .. }) => {
                Err((f, r))
            }
            Err((f, r)) => {
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
                    _ => Err((f, r)),
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
    ) -> Result<Relayed, (SendFail, bool)> {
        let timeout = self.inner.opts.response_timeout;
        self.out.clear();
        let touched = plan.body != ReqBody::None;
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
                        return Err((SendFail::upstream(error, touched), false));
                    }
                }
                if conn.buf.len() > MAX_HEAD {
                    let error = ProxyError::UpstreamProtocol {
                        addr: up.addr.clone(),
                        detail: format!("response head larger than {MAX_HEAD} bytes"),
                    };
                    return Err((SendFail::upstream(error, touched), false));
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
                        let (f, _) = upstream_io(up, e, touched);
                        return Err((f, nothing_yet));
                    }
                    Ok(_) => {}
                    Err(e) => {
                        let (f, _) = upstream_io(up, e, touched);
                        return Err((f, nothing_yet));
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
                Err((SendFail::upstream(error, touched), false))
            }
        }
    }

    /// Sends the head and a `Content-Length` body, as it arrives from the client.
    async fn send_length_body(
        &mut self,
        conn: &mut RawConn,
        up: &UpstreamRef,
        n: u64,
    ) -> Result<(), (SendFail, bool)> {
        let idle = self.inner.opts.response_timeout;
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
            return Err((upstream_io(up, e, true).0, false));
        }
        while left > 0 {
            self.read_body_more(conn, up).await?;
            let take = body_part(left, self.buf.len());
            if let Err(e) = write_within(&mut conn.stream, &self.buf[..take], idle).await {
                return Err((upstream_io(up, e, true).0, false));
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
    ) -> Result<(), (SendFail, bool)> {
        let idle = self.inner.opts.response_timeout;
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
                        if crate::limits::body_too_large(&self.inner, total) {
                            return Err((body_too_large(&self.inner), false));
                        }
                        if let Some(tap) = self.tap.as_mut() {
                            tap.request_body(&data);
                        }
                        encode_chunk(&mut self.up_head, &data)
                    }
                    Ok(None) => break,
                    Err(_) => return Err((bad_request_body(), false)),
                }
            }
            if dec.is_done() {
                self.up_head.extend_from_slice(b"0\r\n\r\n");
            }
            if !self.up_head.is_empty() {
                if let Err(e) = write_within(&mut conn.stream, &self.up_head, idle).await {
                    return Err((upstream_io(up, e, true).0, false));
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
    async fn read_body_more(
        &mut self,
        conn: &mut RawConn,
        up: &UpstreamRef,
    ) -> Result<(), (SendFail, bool)> {
        let idle = self.inner.opts.response_timeout;
        self.buf.reserve(READ_CHUNK);
        conn.buf.reserve(READ_CHUNK);
        let client = tokio::time::timeout(idle, self.stream.read_buf(&mut self.buf));
        // Cancel-safe: bytes read here stay in `conn.buf` for the response parser.
        let upstream = conn.stream.read_buf(&mut conn.buf);
        tokio::select! {
            biased;
            r = client => match r {
                Ok(Ok(0)) | Ok(Err(_)) => Err((client_gone(), false)),
                Err(_) => Err((body_stalled(), false)),
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
                Err((upstream_io(up, e, true).0, false))
            }
        }
    }

    /// Relays the response body; `out` holds the response head already. Each wait for
    /// body data is bounded by `response_timeout`.
    async fn relay_body(&mut self, conn: &mut RawConn, resp: &Relayed) -> io::Result<()> {
        let idle = self.inner.opts.response_timeout;
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
            write_within(
                &mut self.stream,
                &self.out,
                self.inner.opts.response_timeout,
            )
            .await?;
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
        }
        let _ = self.flush().await;
    }

    /// Queues the access log line of the request just answered, when the log is on.
    fn access_log(
        &self,
        status: u16,
        slot: Option<&SlotPool>,
        up: Option<&UpstreamRef>,
        received: Instant,
    ) {
        let Some(log) = self.inner.access.get() else {
            return;
        };
        let line_end = self.up_head.iter().position(|&b| b == b'\r');
        // "METHOD PATH" of the upstream head's request line, without " HTTP/1.1".
        let request_line = line_end
            .and_then(|end| self.up_head[..end].strip_suffix(b" HTTP/1.1"))
            .unwrap_or_default();
        log.log(crate::access::Entry {
            time: std::time::SystemTime::now(),
            request_line: request_line.to_vec(),
            status,
            slot: slot.map(|s| s.name),
            version: slot.and_then(|s| s.version.clone()),
            upstream: up.cloned(),
            duration: received.elapsed(),
            bytes: self.body_bytes,
            request_id: self.request_id.clone(),
        });
    }

    async fn tunnel(self, t: Tunnel) {
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
            live: self.inner.live_rx.clone(),
            after: self.inner.opts.upgrade_drain,
            stop: self.stop.clone(),
            on_stop: {
                let inner = self.inner.clone();
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

/// Logs a failed request: at most one warning a second (with the count held back), so
/// that an outage does not become a log line per request.
pub(crate) fn log_failure(inner: &Inner, slot: turnout_core::SlotName, error: &ProxyError) {
    if matches!(
        error,
        ProxyError::NoHealthyUpstream { .. }
            | ProxyError::NoLiveSlot
            | ProxyError::BodyTooLarge { .. }
    ) {
        tracing::debug!(slot = %slot, error = %error, "request failed");
    } else if let Some(held_back) = inner.errors.allow() {
        tracing::warn!(slot = %slot, error = %error, similar_not_logged = held_back, "request failed");
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

/// An IO failure on the upstream connection; `touched`: the client's body was (partly)
/// read. The second value says "nothing came back" (for the resend decision).
fn upstream_io(up: &UpstreamRef, source: io::Error, touched: bool) -> (SendFail, bool) {
    let error = ProxyError::UpstreamIo {
        addr: up.addr.clone(),
        source,
    };
    (SendFail::upstream(error, touched), true)
}

/// How much of `avail` bytes belongs to a body with `left` bytes still to come.
fn body_part(left: u64, avail: usize) -> usize {
    usize::try_from(left).unwrap_or(usize::MAX).min(avail)
}

/// `now + d`, or far in the future when that overflows (an absurd configured timeout).
fn deadline_after(d: Duration) -> Instant {
    let now = Instant::now();
    now.checked_add(d)
        .unwrap_or(now + Duration::from_secs(86400 * 365))
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

/// The client's request body stopped arriving before its end (408).
fn body_stalled() -> SendFail {
    SendFail {
        error: ProxyError::RequestBodyStalled,
        retry_elsewhere: false,
        close: true,
        client_gone: false,
    }
}

fn client_gone() -> SendFail {
    SendFail {
        error: ProxyError::NoLiveSlot,
        retry_elsewhere: false,
        close: true,
        client_gone: true,
    }
}

fn body_too_large(inner: &Inner) -> SendFail {
    SendFail {
        error: ProxyError::BodyTooLarge {
            max: inner.opts.max_body.unwrap_or(0),
        },
        retry_elsewhere: false,
        close: true,
        client_gone: false,
    }
}

fn bad_request_body() -> SendFail {
    SendFail {
        error: ProxyError::BadRequestBody,
        retry_elsewhere: false,
        close: true,
        client_gone: false,
    }
}

/// A socket with some bytes already read from it, to be read again first.
struct Prefixed<S> {
    pre: Bytes,
    io: S,
}

impl<S: AsyncRead + Unpin> AsyncRead for Prefixed<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        if !self.pre.is_empty() {
            let n = self.pre.len().min(buf.remaining());
            buf.put_slice(&self.pre[..n]);
            self.pre.advance(n);
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut self.io).poll_read(cx, buf)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Prefixed<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.io).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }
}

#[allow(dead_code)]
fn _assert_send(
    inner: Arc<Inner>,
    s: TcpStream,
    p: SocketAddr,
    w: watch::Receiver<bool>,
) -> impl Future + Send {
    serve_conn(inner, s, p, w)
}
