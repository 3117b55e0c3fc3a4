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
    /// Any of the above, copied on its way for a shadow or capture tap.
    Tapped(TappedBody),
}

/// A response body whose bytes a tap copies as they go to the client; the tap finishes
/// when the body has ended (a body dropped before its end leaves it unfinished).
pub struct TappedBody(Box<(ProxyBody, Option<Box<Tap>>)>);

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

    pub(crate) fn tapped(body: ProxyBody, tap: Box<Tap>) -> ProxyBody {
        let done = body.is_end_stream();
        let mut tapped = TappedBody(Box::new((body, Some(tap))));
        if done {
            tapped.finish();
        }
        ProxyBody::Tapped(tapped)
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
            ProxyBody::Tapped(tapped) => {
                let (body, tap) = &mut *tapped.0;
                let polled = Pin::new(&mut *body).poll_frame(cx);
                match &polled {
                    Poll::Ready(Some(Ok(frame))) => {
                        if let (Some(data), Some(tap)) = (frame.data_ref(), tap.as_mut()) {
                            tap.response_body(data);
                        }
                        if body.is_end_stream() {
                            tapped.finish();
                        }
                    }
                    Poll::Ready(None) => tapped.finish(),
                    // Broken off: the tap is dropped unfinished.
                    Poll::Ready(Some(Err(_))) => drop(tap.take()),
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
            ProxyBody::Tapped(tapped) => tapped.0 .0.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            ProxyBody::Upstream { inner, .. } => inner.size_hint(),
            ProxyBody::Raw(raw) => raw.size_hint(),
            ProxyBody::Full(Some(d)) => SizeHint::with_exact(d.len() as u64),
            ProxyBody::Full(None) => SizeHint::with_exact(0),
            ProxyBody::Tapped(tapped) => tapped.0 .0.size_hint(),
        }
    }
}

impl TappedBody {
    fn finish(&mut self) {
        if let Some(tap) = self.0 .1.take() {
            tap.finish();
        }
    }
}
