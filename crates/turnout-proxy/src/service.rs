//! The HTTP/2 request path (HTTP/1.x is served by `h1server.rs`). hyper's HTTP/2 server
//! calls [`ConnService`] for each request, which goes through these phases:
//!
//! 1. **route** — load the routing table (one atomic load) and choose the slot: the live
//!    one, or by weight during a canary; with `[sessions]`, a session's pin may keep it on
//!    its slot (`sessions.rs`). No live slot: `503`.
//! 2. **prepare** — rewrite the head for the HTTP/1.1 upstream in place: origin-form URI,
//!    `Host` from the authority, split cookies joined, hop-by-hop headers removed (RFC
//!    9110 §7.6.1), `X-Forwarded-For` appended to, `-Proto` and `-Host` set.
//! 3. **pick** — round robin over the slot's healthy upstreams. None healthy: `503`.
//! 4. **send** — a request without body through the hand-written client (`h1.rs`), others
//!    through hyper's; on a pooled keep-alive connection, or a new one. When nothing was
//!    sent (connect refused or timed out, a pooled connection found closed before
//!    writing) the request goes once to another upstream of the same slot; a refused
//!    connect also ejects the upstream until its health check passes again. Failure after
//!    sending: `502`; no response head within `response_timeout`: `504`. With retry on
//!    standby set (`Proxy::set_retry_on`), a body-less idempotent request that failed so,
//!    or got a 5xx head, is sent once more to the standby slot.
//! 5. **respond** — hop-by-hop headers removed from the response; the body is streamed and
//!    its connection returns to the pool when the body ends.
//!
//! Each request routed to a slot is counted once in its `SlotStats` (status and time to
//! the response head); a retry on standby counts the failed attempt in the first slot
//! and the retry in the standby.
//!
//! There is no tunnel phase: HTTP/2 has no `Upgrade`.
//!
//! Requests in flight finish on the slot chosen in phase 1, whatever switches happen
//! meanwhile.

use std::convert::Infallible;
use std::future::Future;
use std::net::IpAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::BytesMut;
use http::header::{self, HeaderName, HeaderValue};
use http::{Method, Request, Response, Uri, Version};
use http_body::Body as _;
use hyper::body::Incoming;

use crate::client::{RawBody, RawConn};
use crate::error::ProxyError;
use crate::request_body::RequestBody;
use crate::response_body::{PoolReturn, ProxyBody};
use crate::shared::Inner;
use crate::stats::SlotStats;
use crate::table::SlotPool;
use crate::upstream::{Sender, UpstreamRef};

static X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
static X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
static X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");

/// How long a request waits for a pooled hyper connection to become ready.
const BUSY_WAIT: Duration = Duration::from_millis(50);

/// The per-connection service: the proxy plus what is known about the client connection.
#[derive(Clone)]
pub(crate) struct ConnService {
    pub(crate) inner: Arc<Inner>,
    pub(crate) client_ip: HeaderValue,
    pub(crate) proto: HeaderValue,
    /// The client connection is TLS (a session pin is then `Secure`).
    pub(crate) tls: bool,
}

impl ConnService {
    pub(crate) fn new(inner: Arc<Inner>, ip: IpAddr, tls: bool) -> ConnService {
        let client_ip =
            HeaderValue::from_str(&ip.to_string()).unwrap_or(HeaderValue::from_static("unknown"));
        let proto = HeaderValue::from_static(if tls { "https" } else { "http" });
        ConnService {
            inner,
            client_ip,
            proto,
            tls,
        }
    }
}

impl hyper::service::Service<Request<Incoming>> for ConnService {
    type Response = Response<ProxyBody>;
    type Error = Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<Response<ProxyBody>, Infallible>> + Send>>;

    fn call(&self, req: Request<Incoming>) -> Self::Future {
        let this = self.clone();
        Box::pin(async move { Ok(this.handle(req).await) })
    }
}

const X_REQUEST_ID: http::HeaderName = http::HeaderName::from_static("x-request-id");

/// `response` with `X-Request-Id: id`.
fn with_id(mut response: Response<ProxyBody>, id: HeaderValue) -> Response<ProxyBody> {
    response.headers_mut().insert(X_REQUEST_ID.clone(), id);
    response
}

impl ConnService {
    async fn handle(self, mut req: Request<Incoming>) -> Response<ProxyBody> {
        // The latency clock starts with the request head, as hyper hands it over.
        let received = Instant::now();
        // The client's request id, or one of turnout's for the upstream and the client.
        let request_id = match req.headers().get(X_REQUEST_ID) {
            Some(id) => id.clone(),
            None => {
                let id = HeaderValue::from_bytes(&crate::ids::new_request_id())
                    .unwrap_or(HeaderValue::from_static("-"));
                req.headers_mut().insert(X_REQUEST_ID.clone(), id.clone());
                id
            }
        };
        // Header fields over HTTP/1.1's limits: the same 431.
        if crate::http1::headers_too_large(req.headers()) {
            return with_id(error_response(&ProxyError::HeadersTooLarge), request_id);
        }
        // A request that came back through this router: refused at once.
        if req
            .headers()
            .get_all(header::VIA)
            .iter()
            .any(|v| crate::ids::via_names_me(v.as_bytes()))
        {
            return with_id(error_response(&ProxyError::Loop), request_id);
        }
        // A body over max_body with its length announced: refused before routing; one
        // streamed without a length is cut off when it grows past it (`RequestBody::Capped`).
        if let Some(max) = self.inner.opts.max_body {
            if req.body().size_hint().lower() > max {
                let error = ProxyError::BodyTooLarge { max };
                return with_id(error_response(&error), request_id);
            }
        }
        // Phase 1: route. Requests with no live slot are in no slot's statistics.
        let (chosen, session) = match &self.inner.sessions {
            None => (self.inner.table.load().choose().cloned(), None),
            Some(s) => {
                let cookies = req.headers().get_all(header::COOKIE).iter();
                let facts = s.facts(cookies.map(HeaderValue::as_bytes));
                let table = self.inner.table.load();
                (table.choose_pinned(facts.pin).cloned(), Some(facts))
            }
        };
        let mut slot = match chosen {
            Some(slot) => slot,
            None => return with_id(error_response(&ProxyError::NoLiveSlot), request_id),
        };
        // Counts the request once: with its status, or as a failure if it is dropped
        // before (the client reset the stream or went away).
        let mut outcome = Outcome::new(self.inner.stats(slot.name), received);

        // Phase 2: prepare.
        let client_version = req.version();
        // For the access log (a clone of each: reference counts, no copy).
        let (method, path) = match self.inner.access.get() {
            Some(_) => (
                req.method().clone(),
                req.uri()
                    .path_and_query()
                    .map_or_else(|| "/".to_owned(), |p| p.as_str().to_owned()),
            ),
            None => (http::Method::GET, String::new()),
        };
        self.prepare(&mut req);
        let mut tap = if self.inner.tap.is_on() {
            let has_body = !req.body().is_end_stream();
            let (parts, body) = req.into_parts();
            let tap = self.inner.tap.begin(&parts, slot.name, has_body);
            req = Request::from_parts(parts, body);
            tap
        } else {
            None
        };

        // Phases 3 and 4: pick and send. A request without body (most of them) goes
        // through the hand-written client; the others through hyper's (and are not
        // retried on standby: their body is streamed and cannot be sent twice).
        let sent = if req.body().is_end_stream() {
            let (parts, _) = req.into_parts();
            let mut sent = self.send_raw(&slot, &parts).await;
            if let Some(standby) = self.standby_for(&slot, &parts.method, &sent) {
                // Retry on standby: the failed attempt counts for the live slot; a 5xx
                // response is dropped unread (its connection closes unless its body
                // was already complete, see `Head::into_response`).
                let status = match &sent {
                    Ok(resp) => resp.status(),
                    Err(e) => {
                        crate::h1server::log_failure(&self.inner, slot.name, e);
                        e.status()
                    }
                };
                outcome.record(status.as_u16());
                drop(sent);
                tracing::debug!(slot = %slot.name, status = status.as_u16(), to = %standby.name, "retrying on the standby slot");
                outcome = Outcome::new(self.inner.stats(standby.name), Instant::now());
                slot = standby;
                sent = self.send_raw(&slot, &parts).await;
            }
            sent.map(|r| r.map(ProxyBody::Raw))
        } else {
            let body = |b| match tap.as_mut() {
                Some(tap) => RequestBody::Tee(b, crate::request_body::TeeSink(tap.shared_body())),
                None => RequestBody::Client(b),
            };
            let mut req = req.map(body);
            // A length not announced: counted as it streams. (An announced one was checked
            // above, and hyper holds the client to it, in HTTP/2 too.)
            let mut over = None;
            let unannounced = req.body().size_hint().exact().is_none();
            if let Some(max) = self.inner.opts.max_body.filter(|_| unannounced) {
                let cap = crate::request_body::Cap::new(max);
                over = Some((cap.over.clone(), max));
                req = req.map(|b| RequestBody::Capped(Box::new(b), cap));
            }
            // Boxed: the rarer path keeps the common request's future small.
            let sent = Box::pin(self.send(&slot, req))
                .await
                .map(|(resp, ret)| resp.map(|b| ProxyBody::upstream(b, ret)));
            match (sent, over) {
                (Err(_), Some((over, max))) if over.load(std::sync::atomic::Ordering::Relaxed) => {
                    Err(ProxyError::BodyTooLarge { max })
                }
                (sent, _) => sent,
            }
        };

        // Phase 5: respond.
        match sent {
            Ok(resp) => {
                outcome.record(resp.status().as_u16());
                let (mut parts, body) = resp.into_parts();
                crate::http1::strip_hop_by_hop(&mut parts.headers);
                if let Some(log) = self.inner.access.get() {
                    // HTTP/2: logged at the response head; `bytes` is its Content-Length
                    // (0 when the body is streamed without one).
                    let bytes = parts
                        .headers
                        .get(http::header::CONTENT_LENGTH)
                        .and_then(|v| v.to_str().ok()?.parse().ok())
                        .unwrap_or(0);
                    log.log(crate::access::Entry {
                        time: std::time::SystemTime::now(),
                        request_line: format!("{} {}", method, path).into_bytes(),
                        status: parts.status.as_u16(),
                        slot: Some(slot.name),
                        version: slot.version.clone(),
                        upstream: None,
                        duration: received.elapsed(),
                        bytes,
                        request_id: request_id.as_bytes().to_vec(),
                    });
                }
                parts
                    .headers
                    .entry(X_REQUEST_ID.clone())
                    .or_insert(request_id);
                parts.version = client_version;
                let body = match tap {
                    None => body,
                    Some(mut tap) => {
                        tap.set_slot(slot.name);
                        let latency = outcome.since.elapsed();
                        tap.response_head(&parts, latency);
                        ProxyBody::tapped(body, tap)
                    }
                };
                // After the tap took the head: a shadow compares what the version answered.
                if let (Some(sessions), Some(facts)) = (&self.inner.sessions, session) {
                    let sets = parts
                        .headers
                        .get_all(header::SET_COOKIE)
                        .iter()
                        .any(|v| sessions.sets_session(v.as_bytes()));
                    if facts.wants_pin(sets, slot.name) {
                        let value = sessions.set_cookie(slot.name, self.tls);
                        parts.headers.append(header::SET_COOKIE, value);
                    }
                }
                Response::from_parts(parts, body)
            }
            Err(e) => {
                outcome.record(e.status().as_u16());
                crate::h1server::log_failure(&self.inner, slot.name, &e);
                with_id(error_response(&e), request_id)
            }
        }
    }

    /// The standby slot a failed body-less request goes to once more (retry on standby,
    /// see `Proxy::set_retry_on`): an idempotent one that got no response, or a 5xx
    /// head, on a slot being retried from. Nothing has reached the client yet. The
    /// setting is read only after a failure.
    fn standby_for<B>(
        &self,
        slot: &SlotPool,
        method: &Method,
        sent: &Result<Response<B>, ProxyError>,
    ) -> Option<Arc<SlotPool>> {
        let failed = match sent {
            Ok(resp) => resp.status().as_u16() >= 500,
            Err(_) => true,
        };
        if !failed || !is_idempotent(method) {
            return None;
        }
        let to = self.inner.retry_target(slot.name)?;
        let standby = self.inner.table.load().slot(to).clone();
        // A standby with nothing healthy would only turn one error into another.
        (standby.healthy_count() > 0).then_some(standby)
    }

    /// Phases 3 and 4 for a request without body: once more on another upstream when
    /// nothing was sent.
    async fn send_raw(
        &self,
        slot: &SlotPool,
        parts: &http::request::Parts,
    ) -> Result<Response<RawBody<UpstreamRef>>, ProxyError> {
        let first = slot
            .pick(None)
            .ok_or(ProxyError::NoHealthyUpstream { slot: slot.name })?
            .clone();
        let err = match self.raw_to(&first, parts).await {
            Ok(resp) => return Ok(resp),
            Err((err, false)) => return Err(err),
            Err((err, true)) => err,
        };
        let Some(second) = slot.pick(Some(&first)).cloned() else {
            return Err(err);
        };
        tracing::debug!(slot = %slot.name, from = %first.addr, to = %second.addr, error = %err, "retrying on another upstream");
        self.raw_to(&second, parts).await.map_err(|(e, _)| e)
    }

    /// One upstream, hand-written client. On failure, says whether nothing was sent.
    async fn raw_to(
        &self,
        up: &UpstreamRef,
        parts: &http::request::Parts,
    ) -> Result<Response<RawBody<UpstreamRef>>, (ProxyError, bool)> {
        let opts = &self.inner.opts;
        let idempotent = is_idempotent(&parts.method);
        while let Some((mut conn, _)) = up.checkout_raw() {
            // A connection the upstream closed, or sent stray bytes on, meanwhile. The
            // check costs no system call unless the socket was reported readable.
            if !conn.looks_alive() {
                continue;
            }
            match conn.exchange(&up.addr, parts, opts.response_timeout).await {
                Ok(head) => return Ok(head.into_response(conn, up.clone())),
                // Sent once more, on a fresh connection below.
                Err(e) if e.nothing_received && idempotent => break,
                Err(e) => return Err((e.error, false)),
            }
        }
        let stream = match up.connect_stream(opts.connect_timeout).await {
            Ok(s) => s,
            Err(e) => {
                if e.is_refused() && up.eject() {
                    tracing::warn!(slot = %up.slot, upstream = %up.addr, error = %e, "upstream ejected until its health check passes");
                }
                return Err((e, true));
            }
        };
        let mut conn = RawConn::new(stream);
        match conn.exchange(&up.addr, parts, opts.response_timeout).await {
            Ok(head) => Ok(head.into_response(conn, up.clone())),
            Err(e) => Err((e.error, false)),
        }
    }

    fn prepare(&self, req: &mut Request<Incoming>) {
        // HTTP/2 requests carry the host in the authority; HTTP/1.1 upstreams need `Host`.
        if !req.headers().contains_key(header::HOST) {
            if let Some(host) = req
                .uri()
                .authority()
                .and_then(|a| HeaderValue::from_str(a.as_str()).ok())
            {
                req.headers_mut().insert(header::HOST, host);
            }
        }
        if req.uri().scheme().is_some() || req.uri().authority().is_some() {
            let mut parts = std::mem::take(req.uri_mut()).into_parts();
            parts.scheme = None;
            parts.authority = None;
            if parts.path_and_query.is_none() {
                parts.path_and_query = Some(http::uri::PathAndQuery::from_static("/"));
            }
            *req.uri_mut() = Uri::from_parts(parts).unwrap_or_else(|_| Uri::from_static("/"));
        }
        // HTTP/2 may split the cookie field; HTTP/1.1 wants one line joined with "; "
        // (RFC 9113 §8.2.3).
        if req.version() == Version::HTTP_2
            && req
                .headers()
                .get_all(header::COOKIE)
                .iter()
                .nth(1)
                .is_some()
        {
            let joined = req
                .headers()
                .get_all(header::COOKIE)
                .iter()
                .map(|v| v.as_bytes())
                .collect::<Vec<_>>()
                .join(&b"; "[..]);
            if let Ok(v) = HeaderValue::from_bytes(&joined) {
                req.headers_mut().insert(header::COOKIE, v);
            }
        }
        *req.version_mut() = Version::HTTP_11;

        let headers = req.headers_mut();
        crate::http1::strip_hop_by_hop(headers);
        let xff = if headers.contains_key(&X_FORWARDED_FOR) {
            // Keep every address of every line, then append the client's.
            let mut v = BytesMut::new();
            for prev in headers.get_all(&X_FORWARDED_FOR) {
                v.extend_from_slice(prev.as_bytes());
                v.extend_from_slice(b", ");
            }
            v.extend_from_slice(self.client_ip.as_bytes());
            HeaderValue::from_maybe_shared(v.freeze()).unwrap_or_else(|_| self.client_ip.clone())
        } else {
            self.client_ip.clone()
        };
        headers.insert(X_FORWARDED_FOR.clone(), xff);
        headers.insert(X_FORWARDED_PROTO.clone(), self.proto.clone());
        headers.append(header::VIA, crate::ids::via_header());
        // turnout is the edge: the forwarded host is the one this client asked for.
        match headers.get(header::HOST).cloned() {
            Some(host) => {
                headers.insert(X_FORWARDED_HOST.clone(), host);
            }
            None => {
                headers.remove(&X_FORWARDED_HOST);
            }
        }
    }

    /// Picks an upstream and sends; once more on another upstream when nothing was sent.
    async fn send(
        &self,
        slot: &SlotPool,
        req: Request<RequestBody>,
    ) -> Result<(Response<Incoming>, PoolReturn), ProxyError> {
        let first = slot
            .pick(None)
            .ok_or(ProxyError::NoHealthyUpstream { slot: slot.name })?
            .clone();
        let (err, req) = match self.send_to(&first, req).await {
            Ok(sent) => return Ok(sent),
            Err(failed) => failed,
        };
        let Some(req) = req else { return Err(err) };
        let Some(second) = slot.pick(Some(&first)).cloned() else {
            return Err(err);
        };
        tracing::debug!(slot = %slot.name, from = %first.addr, to = %second.addr, error = %err, "retrying on another upstream");
        self.send_to(&second, req).await.map_err(|(err, _)| err)
    }

    /// Sends to one upstream. On failure the request comes back when it was not sent (or,
    /// for a body-less idempotent request, when it can be sent again).
    async fn send_to(
        &self,
        up: &UpstreamRef,
        mut req: Request<RequestBody>,
    ) -> Result<(Response<Incoming>, PoolReturn), (ProxyError, Option<Request<RequestBody>>)> {
        let opts = &self.inner.opts;
        {
            while let Some(mut sender) = up.checkout() {
                // A connection still busy (say, writing an upload the upstream already
                // answered) is waited for only briefly: it must not hold this request
                // hostage.
                match tokio::time::timeout(BUSY_WAIT, sender.ready()).await {
                    Ok(Ok(())) => {}
                    _ => continue,
                }
                match self.exchange(up, &mut sender, req).await {
                    Ok(resp) => {
                        let ret = PoolReturn {
                            upstream: up.clone(),
                            sender,
                        };
                        return Ok((resp, ret));
                    }
                    Err((_, Some(back))) => req = back,
                    Err((err, None)) => return Err((err, None)),
                }
            }
        }
        let mut sender = match up.connect(opts.connect_timeout).await {
            Ok(s) => s,
            Err(e) => {
                if e.is_refused() && up.eject() {
                    tracing::warn!(slot = %up.slot, upstream = %up.addr, error = %e, "upstream ejected until its health check passes");
                }
                return Err((e, Some(req)));
            }
        };
        match self.exchange(up, &mut sender, req).await {
            Ok(resp) => {
                let ret = PoolReturn {
                    upstream: up.clone(),
                    sender,
                };
                Ok((resp, ret))
            }
            Err(e) => Err(e),
        }
    }

    async fn exchange(
        &self,
        up: &UpstreamRef,
        sender: &mut Sender,
        req: Request<RequestBody>,
    ) -> Result<Response<Incoming>, (ProxyError, Option<Request<RequestBody>>)> {
        let timeout = self.inner.opts.response_timeout;
        match tokio::time::timeout(timeout, sender.try_send_request(req)).await {
            Ok(Ok(resp)) => Ok(resp),
            Ok(Err(mut e)) => {
                let back = e.take_message();
                Err((
                    ProxyError::Upstream {
                        addr: up.addr.clone(),
                        source: e.into_error(),
                    },
                    back,
                ))
            }
            Err(_) => Err((
                ProxyError::ResponseTimeout {
                    addr: up.addr.clone(),
                    timeout_ms: timeout.as_millis(),
                },
                None,
            )),
        }
    }
}

/// Records one request in a slot's statistics exactly once: with a status, or — when
/// dropped unrecorded (hyper dropped the request: the client reset the stream or left)
/// — as a failure.
struct Outcome<'a> {
    stats: &'a SlotStats,
    since: Instant,
    done: bool,
}

impl<'a> Outcome<'a> {
    fn new(stats: &'a SlotStats, since: Instant) -> Outcome<'a> {
        Outcome {
            stats,
            since,
            done: false,
        }
    }

    fn record(&mut self, status: u16) {
        if !self.done {
            self.done = true;
            self.stats.record(status, self.since.elapsed());
        }
    }
}

impl Drop for Outcome<'_> {
    /// hyper drops the request's future when the client resets the stream or goes away
    /// before the response head: a cancel, not the version's error.
    fn drop(&mut self) {
        if !self.done {
            self.stats.record_cancelled();
        }
    }
}

/// Idempotent methods (RFC 9110 §9.2.2): safe to send again.
fn is_idempotent(method: &Method) -> bool {
    matches!(
        *method,
        Method::GET | Method::HEAD | Method::OPTIONS | Method::PUT | Method::DELETE | Method::TRACE
    )
}

fn error_response(err: &ProxyError) -> Response<ProxyBody> {
    let mut resp = Response::new(ProxyBody::text(err.client_message()));
    *resp.status_mut() = err.status();
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    resp
}
