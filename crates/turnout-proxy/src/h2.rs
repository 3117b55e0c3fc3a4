//! HTTP/2 clients (prior knowledge, or `h2` by ALPN): hyper's server calls
//! [`ConnService`] for each request, which runs the request path of `forward.rs`. What
//! this file adds is HTTP/2's side of it: the head rewritten from `http`'s parts for the
//! HTTP/1.1 upstream (the authority becomes `Host`, split cookies are joined), and two
//! upstream legs — a request without a body through the hand-written client
//! (`client.rs`), one with a body through hyper's client (its body streams from hyper's
//! connection task). There is no tunnel: HTTP/2 has no `Upgrade`.

use std::convert::Infallible;
use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::BytesMut;
use http::header::{self, HeaderName, HeaderValue};
use http::{Request, Response, Uri, Version};
use http_body::Body as _;
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::watch;

use crate::client::{RawBody, RawConn};
use crate::error::{Failed, ProxyError, Sent};
use crate::forward::{self, Attempt, Facts, Leg, LogLine};
use crate::http1;
use crate::request_body::{Cap, RequestBody, TeeSink};
use crate::response_body::{PoolReturn, ProxyBody};
use crate::shared::Inner;
use crate::upstream::{Sender, UpstreamRef};

static X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
static X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
static X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");
const X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

/// How long a request waits for a pooled hyper connection to become ready.
const BUSY_WAIT: Duration = Duration::from_millis(50);

/// Serves an HTTP/2 client connection until it closes, or the router stops (then with
/// a GOAWAY, letting the streams in flight finish).
pub(crate) async fn serve<I>(
    inner: Arc<Inner>,
    io: I,
    peer: SocketAddr,
    tls: bool,
    mut stop: watch::Receiver<bool>,
) where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let service = ConnService::new(inner, peer.ip(), tls);
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

/// The per-connection service: the proxy plus what is known about the client connection.
#[derive(Clone)]
pub(crate) struct ConnService {
    inner: Arc<Inner>,
    client_ip: HeaderValue,
    proto: HeaderValue,
    /// The client connection is TLS (a session pin is then `Secure`).
    tls: bool,
}

impl ConnService {
    fn new(inner: Arc<Inner>, ip: IpAddr, tls: bool) -> ConnService {
        let client_ip = HeaderValue::from_str(&ip.to_canonical().to_string())
            .unwrap_or(HeaderValue::from_static("unknown"));
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

impl ConnService {
    async fn handle(self, req: Request<Incoming>) -> Response<ProxyBody> {
        let inner = &*self.inner;
        // Phase 1, begin. The latency clock starts with the request head, as hyper hands
        // it over.
        let received = Instant::now();
        let (mut parts, body) = req.into_parts();
        let request_id = match parts.headers.get(X_REQUEST_ID) {
            Some(id) => id.clone(),
            None => {
                let id = HeaderValue::from_bytes(&crate::ids::new_request_id())
                    .unwrap_or(HeaderValue::from_static("-"));
                parts.headers.insert(X_REQUEST_ID, id.clone());
                id
            }
        };
        // Header fields over HTTP/1.1's limits: the same 431.
        // (Refused while its head is read, like HTTP/1.1's: not in the access log.)
        if http1::headers_too_large(&parts.headers) {
            return with_id(error_response(&ProxyError::HeadersTooLarge), request_id);
        }
        // A request that came back through this router: refused at once.
        if parts
            .headers
            .get_all(header::VIA)
            .iter()
            .any(|v| crate::ids::via_names_me(v.as_bytes()))
        {
            return with_id(error_response(&ProxyError::Loop), request_id);
        }
        // A body over max_body with its length announced: refused before routing; one
        // streamed without a length is cut off when it grows past it (`Cap`).
        if crate::limits::body_too_large(inner, body.size_hint().lower()) {
            let max = inner.opts.max_body.unwrap_or(0);
            let error = ProxyError::BodyTooLarge { max };
            if let Some(log) = LogLine::begin(inner, &parts, request_id.as_bytes(), received) {
                let bytes = message_bytes(&error, parts.method == http::Method::HEAD);
                log.write(inner, error.status().as_u16(), None, None, bytes);
            }
            return with_id(error_response(&error), request_id);
        }
        let client_version = parts.version;
        let head_request = parts.method == http::Method::HEAD;
        self.prepare(&mut parts);
        let log = LogLine::begin(inner, &parts, request_id.as_bytes(), received);

        // Phase 2, route.
        let session = forward::session_facts(inner, &parts);
        let Some(slot) = forward::route(inner, &session) else {
            let error = ProxyError::NoLiveSlot;
            if let Some(log) = log {
                let bytes = message_bytes(&error, head_request);
                log.write(inner, error.status().as_u16(), None, None, bytes);
            }
            return with_id(error_response(&error), request_id);
        };

        // Phase 3, tap.
        let has_body = !body.is_end_stream();
        let mut tap = if inner.tap.is_on() {
            inner.tap.begin(&parts, slot.name, has_body)
        } else {
            None
        };

        // Phase 4, attempt. A request without body (most of them) goes through the
        // hand-written client; the others through hyper's (and are not retried on the
        // standby: their body streams and cannot be sent twice).
        let facts = Facts {
            idempotent: http1::is_idempotent(parts.method.as_str()),
            has_body,
            upgrade: false,
        };
        let attempt = if has_body {
            let body = match tap.as_mut() {
                Some(tap) => RequestBody::Tee(body, TeeSink(tap.shared_body())),
                None => RequestBody::Client(body),
            };
            let mut leg = BodyLeg::new(inner, Request::from_parts(parts, body));
            // Boxed: the rarer path keeps the common request's future small.
            let attempt = Box::pin(forward::attempt(inner, &mut leg, slot, facts, received)).await;
            leg.answer(attempt)
        } else {
            let mut leg = RawLeg { parts: &parts };
            let attempt = forward::attempt(inner, &mut leg, slot, facts, received).await;
            let Attempt {
                slot,
                outcome,
                result,
            } = attempt;
            Attempt {
                slot,
                outcome,
                result: result.map(|(resp, up)| (resp.map(ProxyBody::Raw), up)),
            }
        };

        // Phase 5, finish.
        let Attempt {
            slot,
            mut outcome,
            result,
        } = attempt;
        match result {
            Ok((resp, up)) => {
                outcome.record(resp.status().as_u16());
                let (mut parts, body) = resp.into_parts();
                http1::strip_hop_by_hop(&mut parts.headers);
                parts.headers.entry(X_REQUEST_ID).or_insert(request_id);
                parts.version = client_version;
                if let Some(tap) = tap.as_mut() {
                    tap.set_slot(slot.name);
                    tap.response_head(&parts, outcome.since().elapsed());
                }
                if let Some(pin) = forward::pin(inner, &session, &parts, slot.name, self.tls) {
                    parts.headers.append(header::SET_COOKIE, pin);
                }
                let on_end = log.map(|log| {
                    let (inner, status) = (self.inner.clone(), parts.status.as_u16());
                    let on_end: crate::response_body::OnEnd = Box::new(move |bytes| {
                        log.write(&inner, status, Some(&slot), Some(&up), bytes)
                    });
                    on_end
                });
                Response::from_parts(parts, ProxyBody::watched(body, tap, on_end))
            }
            Err(f) => {
                let status = f.error.status().as_u16();
                outcome.record(status);
                forward::log_failure(inner, slot.name, &f.error);
                if let Some(log) = log {
                    let bytes = message_bytes(&f.error, head_request);
                    log.write(inner, status, Some(&slot), None, bytes);
                }
                with_id(error_response(&f.error), request_id)
            }
        }
    }

    /// Rewrites the head for the HTTP/1.1 upstream, in place.
    fn prepare(&self, parts: &mut http::request::Parts) {
        // HTTP/2 requests carry the host in the authority; HTTP/1.1 upstreams need `Host`.
        if !parts.headers.contains_key(header::HOST) {
            if let Some(host) = parts
                .uri
                .authority()
                .and_then(|a| HeaderValue::from_str(a.as_str()).ok())
            {
                parts.headers.insert(header::HOST, host);
            }
        }
        if parts.uri.scheme().is_some() || parts.uri.authority().is_some() {
            let mut uri = std::mem::take(&mut parts.uri).into_parts();
            uri.scheme = None;
            uri.authority = None;
            if uri.path_and_query.is_none() {
                uri.path_and_query = Some(http::uri::PathAndQuery::from_static("/"));
            }
            parts.uri = Uri::from_parts(uri).unwrap_or_else(|_| Uri::from_static("/"));
        }
        // HTTP/2 may split the cookie field; HTTP/1.1 wants one line joined with "; "
        // (RFC 9113 §8.2.3).
        if parts.version == Version::HTTP_2
            && parts
                .headers
                .get_all(header::COOKIE)
                .iter()
                .nth(1)
                .is_some()
        {
            let joined = parts
                .headers
                .get_all(header::COOKIE)
                .iter()
                .map(|v| v.as_bytes())
                .collect::<Vec<_>>()
                .join(&b"; "[..]);
            if let Ok(v) = HeaderValue::from_bytes(&joined) {
                parts.headers.insert(header::COOKIE, v);
            }
        }
        parts.version = Version::HTTP_11;

        let headers = &mut parts.headers;
        http1::strip_hop_by_hop(headers);
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
}

/// The leg for a request without a body: the hand-written client.
struct RawLeg<'p> {
    parts: &'p http::request::Parts,
}

impl Leg for RawLeg<'_> {
    type Answer = Response<RawBody<UpstreamRef>>;

    fn status(answer: &Self::Answer) -> u16 {
        answer.status().as_u16()
    }

    async fn send_to(
        &mut self,
        inner: &Inner,
        up: &UpstreamRef,
        may_resend: bool,
    ) -> Result<Self::Answer, Failed> {
        let opts = &inner.opts;
        let resendable = may_resend && http1::is_idempotent(self.parts.method.as_str());
        while let Some((mut conn, _)) = up.checkout_raw() {
            // A connection the upstream closed, or sent stray bytes on, meanwhile. The
            // check costs no system call unless the socket was reported readable.
            if !conn.looks_alive() {
                continue;
            }
            match conn
                .exchange(&up.addr, self.parts, opts.response_timeout)
                .await
            {
                Ok(head) => return Ok(head.into_response(conn, up.clone())),
                // Sent once more, on a fresh connection below.
                Err(f) if f.sent == Sent::NoAnswer && resendable => break,
                Err(f) => return Err(f),
            }
        }
        let mut conn = RawConn::new(up.open(opts.connect_timeout).await?);
        let head = conn
            .exchange(&up.addr, self.parts, opts.response_timeout)
            .await?;
        Ok(head.into_response(conn, up.clone()))
    }

    fn discard(&mut self, answer: Self::Answer, _up: &UpstreamRef) {
        // Dropped unread: its connection goes back to the pool only when its body was
        // already complete (see `Head::into_response`), and is closed otherwise.
        drop(answer);
    }
}

/// The leg for a request with a body: hyper's client, the body streamed from the
/// client as it arrives. The request comes back when it was not sent, for another
/// connection or upstream.
struct BodyLeg {
    req: Option<Request<RequestBody>>,
    /// Raised when a body without an announced length grew past `max_body`.
    over: Option<(Arc<AtomicBool>, u64)>,
}

impl BodyLeg {
    fn new(inner: &Inner, mut req: Request<RequestBody>) -> BodyLeg {
        // A length not announced: counted as it streams. (An announced one was checked
        // before routing, and hyper holds the client to it, in HTTP/2 too.)
        let mut over = None;
        let unannounced = req.body().size_hint().exact().is_none();
        if let Some(max) = inner.opts.max_body.filter(|_| unannounced) {
            let cap = Cap::new(max);
            over = Some((cap.over.clone(), max));
            req = req.map(|b| RequestBody::Capped(Box::new(b), cap));
        }
        BodyLeg {
            req: Some(req),
            over,
        }
    }

    /// The attempt with the response's body as the proxy's, and a failure caused by
    /// the body growing past `max_body` said as such.
    fn answer<'a>(
        &self,
        attempt: Attempt<'a, (Response<Incoming>, PoolReturn)>,
    ) -> Attempt<'a, Response<ProxyBody>> {
        let Attempt {
            slot,
            outcome,
            result,
        } = attempt;
        let result = match result {
            Ok(((resp, ret), up)) => Ok((resp.map(|b| ProxyBody::upstream(b, ret)), up)),
            Err(_)
                if self
                    .over
                    .as_ref()
                    .is_some_and(|(o, _)| o.load(Ordering::Relaxed)) =>
            {
                let max = self.over.as_ref().map_or(0, |(_, max)| *max);
                Err(ProxyError::BodyTooLarge { max }.into())
            }
            Err(f) => Err(f),
        };
        Attempt {
            slot,
            outcome,
            result,
        }
    }

    /// One exchange on `sender`; the request comes back when hyper did not send it.
    async fn exchange(
        &mut self,
        inner: &Inner,
        up: &UpstreamRef,
        sender: &mut Sender,
        req: Request<RequestBody>,
    ) -> Result<Response<Incoming>, Failed> {
        let timeout = inner.opts.response_timeout;
        match tokio::time::timeout(timeout, sender.try_send_request(req)).await {
            Ok(Ok(resp)) => Ok(resp),
            Ok(Err(mut e)) => {
                let back = e.take_message();
                let sent = if back.is_some() {
                    Sent::Nothing
                } else {
                    Sent::Maybe
                };
                self.req = back;
                Err(Failed {
                    error: ProxyError::Upstream {
                        addr: up.addr.clone(),
                        source: e.into_error(),
                    },
                    sent,
                })
            }
            Err(_) => Err(ProxyError::ResponseTimeout {
                addr: up.addr.clone(),
                timeout_ms: timeout.as_millis(),
            }
            .into()),
        }
    }
}

impl Leg for BodyLeg {
    type Answer = (Response<Incoming>, PoolReturn);

    fn status(answer: &Self::Answer) -> u16 {
        answer.0.status().as_u16()
    }

    async fn send_to(
        &mut self,
        inner: &Inner,
        up: &UpstreamRef,
        _may_resend: bool,
    ) -> Result<Self::Answer, Failed> {
        let Some(mut req) = self.req.take() else {
            // Not reached: an attempt that did not give the request back said it may have
            // been sent, and such a request goes to no other upstream.
            debug_assert!(false, "a request body sent twice");
            return Err(ProxyError::UpstreamProtocol {
                addr: up.addr.clone(),
                detail: "the request was already sent to another upstream".into(),
            }
            .into());
        };
        while let Some(mut sender) = up.checkout() {
            // A connection still busy (say, writing an upload the upstream already
            // answered) is waited for only briefly: it must not hold this request
            // hostage.
            match tokio::time::timeout(BUSY_WAIT, sender.ready()).await {
                Ok(Ok(())) => {}
                _ => continue,
            }
            match self.exchange(inner, up, &mut sender, req).await {
                Ok(resp) => {
                    let ret = PoolReturn {
                        upstream: up.clone(),
                        sender,
                    };
                    return Ok((resp, ret));
                }
                Err(f) => match self.req.take() {
                    // Not sent: on the next pooled connection, or a new one.
                    Some(back) => req = back,
                    None => return Err(f),
                },
            }
        }
        let mut sender = match up.connect(inner.opts.connect_timeout).await {
            Ok(s) => s,
            Err(f) => {
                self.req = Some(req);
                return Err(f);
            }
        };
        let resp = self.exchange(inner, up, &mut sender, req).await?;
        let ret = PoolReturn {
            upstream: up.clone(),
            sender,
        };
        Ok((resp, ret))
    }

    fn discard(&mut self, answer: Self::Answer, _up: &UpstreamRef) {
        // Never reached: a request with a body is not retried on the standby.
        drop(answer);
    }
}

/// The body bytes of turnout's own answer to `error` (none to a HEAD request).
fn message_bytes(error: &ProxyError, head_request: bool) -> u64 {
    if head_request {
        0
    } else {
        error.client_message().len() as u64
    }
}

/// `response` with `X-Request-Id: id`.
fn with_id(mut response: Response<ProxyBody>, id: HeaderValue) -> Response<ProxyBody> {
    response.headers_mut().insert(X_REQUEST_ID, id);
    response
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
