//! The response body the proxy sends: an upstream body streamed frame by frame (its
//! connection goes back to the pool when the body ends), or a short body of turnout's own.

use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;

use crate::tap::Tap;
use crate::upstream::{Sender, UpstreamRef};

/// A connection to give back to its upstream's pool once the response body has ended.
pub(crate) struct PoolReturn {
    pub(crate) upstream: UpstreamRef,
    pub(crate) sender: Sender,
}

impl PoolReturn {
    fn finish(self) {
        self.upstream.checkin(self.sender);
    }
}

/// The body of every response the data plane sends.
pub enum ProxyBody {
    /// Streamed from an upstream.
    Upstream {
        /// The upstream's body.
        inner: Incoming,
        /// The connection, returned to the pool at the end of the body. Dropped with the
        /// body when the client goes away early: a half-read connection is never reused.
        ret: Option<PoolReturnSlot>,
    },
    /// Streamed from an upstream by the hand-written HTTP/1.1 client.
    Raw(crate::client::RawBody<UpstreamRef>),
    /// A body made by turnout (errors).
    Full(Option<Bytes>),
    /// Any of the above, watched on its way: copied for a shadow or capture tap, its
    /// bytes counted for the access log.
    Watched(WatchedBody),
}

/// What is called with the body bytes relayed once a watched body has ended or was
/// dropped before its end (the access log line).
pub(crate) type OnEnd = Box<dyn FnOnce(u64) + Send>;

/// A response body watched as it goes to the client: a tap copies its bytes and
/// finishes when it has ended (a body dropped before its end leaves the tap unfinished);
/// `on_end` gets the byte count at the end, or when the body is dropped.
pub struct WatchedBody(Box<Watch>);

struct Watch {
    body: ProxyBody,
    tap: Option<Box<Tap>>,
    on_end: Option<OnEnd>,
    bytes: u64,
}

/// Opaque holder for a pooled connection awaiting the end of its response.
pub struct PoolReturnSlot(pub(crate) PoolReturn);

impl ProxyBody {
    pub(crate) fn upstream(inner: Incoming, ret: PoolReturn) -> ProxyBody {
        let mut ret = Some(PoolReturnSlot(ret));
        if inner.is_end_stream() {
            if let Some(r) = ret.take() {
                r.0.finish();
            }
        }
        ProxyBody::Upstream { inner, ret }
    }

    /// `body` watched by `tap` and `on_end`; `body` itself when there is neither.
    pub(crate) fn watched(
        body: ProxyBody,
        tap: Option<Box<Tap>>,
        on_end: Option<OnEnd>,
    ) -> ProxyBody {
        if tap.is_none() && on_end.is_none() {
            return body;
        }
        let done = body.is_end_stream();
        let mut watched = WatchedBody(Box::new(Watch {
            body,
            tap,
            on_end,
            bytes: 0,
        }));
        if done {
            watched.finish();
        }
        ProxyBody::Watched(watched)
    }

    pub(crate) fn text(s: &'static str) -> ProxyBody {
        ProxyBody::Full(Some(Bytes::from_static(s.as_bytes())))
    }
}

/// A response body that broke off: the client's stream is aborted, never ended as if
/// complete.
pub type BodyError = Box<dyn std::error::Error + Send + Sync>;

impl Body for ProxyBody {
    type Data = Bytes;
    type Error = BodyError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BodyError>>> {
        match self.get_mut() {
            ProxyBody::Raw(raw) => Pin::new(raw).poll_frame(cx).map_err(Into::into),
            ProxyBody::Upstream { inner, ret } => {
                let polled = Pin::new(&mut *inner).poll_frame(cx);
                match &polled {
                    Poll::Ready(None) => {
                        if let Some(r) = ret.take() {
                            r.0.finish();
                        }
                    }
                    Poll::Ready(Some(Ok(_))) if inner.is_end_stream() => {
                        if let Some(r) = ret.take() {
                            r.0.finish();
                        }
                    }
                    Poll::Ready(Some(Err(_))) => {
                        // Never reuse a connection whose response broke off.
                        ret.take();
                    }
                    _ => {}
                }
                polled.map_err(Into::into)
            }
            ProxyBody::Full(data) => Poll::Ready(data.take().map(|d| Ok(Frame::data(d)))),
            ProxyBody::Watched(watched) => {
                let w = &mut *watched.0;
                let polled = Pin::new(&mut w.body).poll_frame(cx);
                match &polled {
                    Poll::Ready(Some(Ok(frame))) => {
                        if let Some(data) = frame.data_ref() {
                            w.bytes += data.len() as u64;
                            if let Some(tap) = w.tap.as_mut() {
                                tap.response_body(data);
                            }
                        }
                        if w.body.is_end_stream() {
                            watched.finish();
                        }
                    }
                    Poll::Ready(None) => watched.finish(),
                    // Broken off: the tap is dropped unfinished.
                    Poll::Ready(Some(Err(_))) => drop(w.tap.take()),
                    Poll::Pending => {}
                }
                polled
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            ProxyBody::Upstream { inner, .. } => inner.is_end_stream(),
            ProxyBody::Raw(raw) => raw.is_end_stream(),
            ProxyBody::Full(data) => data.is_none(),
            ProxyBody::Watched(watched) => watched.0.body.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            ProxyBody::Upstream { inner, .. } => inner.size_hint(),
            ProxyBody::Raw(raw) => raw.size_hint(),
            ProxyBody::Full(Some(d)) => SizeHint::with_exact(d.len() as u64),
            ProxyBody::Full(None) => SizeHint::with_exact(0),
            ProxyBody::Watched(watched) => watched.0.body.size_hint(),
        }
    }
}

impl WatchedBody {
    /// The body has ended: the tap finishes, the byte count goes to `on_end`.
    fn finish(&mut self) {
        if let Some(tap) = self.0.tap.take() {
            tap.finish();
        }
        if let Some(on_end) = self.0.on_end.take() {
            on_end(self.0.bytes);
        }
    }
}

impl Drop for WatchedBody {
    /// Dropped before its end (the client went away, or the body broke off): the tap is
    /// left unfinished, the bytes so far are reported.
    fn drop(&mut self) {
        drop(self.0.tap.take());
        if let Some(on_end) = self.0.on_end.take() {
            on_end(self.0.bytes);
        }
    }
}
