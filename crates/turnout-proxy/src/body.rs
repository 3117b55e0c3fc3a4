//! The response body the proxy sends: an upstream body streamed frame by frame (its
//! connection goes back to the pool when the body ends), or a short body of turnout's own.

use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;

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
    Raw(crate::h1::RawBody),
    /// A body made by turnout (errors).
    Full(Option<Bytes>),
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
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            ProxyBody::Upstream { inner, .. } => inner.is_end_stream(),
            ProxyBody::Raw(raw) => raw.is_end_stream(),
            ProxyBody::Full(data) => data.is_none(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            ProxyBody::Upstream { inner, .. } => inner.size_hint(),
            ProxyBody::Raw(raw) => raw.size_hint(),
            ProxyBody::Full(Some(d)) => SizeHint::with_exact(d.len() as u64),
            ProxyBody::Full(None) => SizeHint::with_exact(0),
        }
    }
}

/// The body of a request sent upstream: the client's, streamed, or none (a resent copy of
/// a body-less request).
pub enum RequestBody {
    /// The client's body, streamed as it arrives.
    Client(Incoming),
    /// No body.
    Empty,
}

impl Body for RequestBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        match self.get_mut() {
            RequestBody::Client(inner) => Pin::new(inner).poll_frame(cx),
            RequestBody::Empty => Poll::Ready(None),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            RequestBody::Client(inner) => inner.is_end_stream(),
            RequestBody::Empty => true,
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            RequestBody::Client(inner) => inner.size_hint(),
            RequestBody::Empty => SizeHint::with_exact(0),
        }
    }
}
