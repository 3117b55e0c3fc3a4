//! The body of a request sent upstream through hyper's client (HTTP/2 clients' requests
//! with a body): streamed as it arrives, maybe copied for a tap, maybe capped at
//! `max_body`.

use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;

use crate::tap::SharedBody;

/// Where a teed request body is copied to (opaque).
pub struct TeeSink(pub(crate) SharedBody);

/// The body of a request sent upstream: the client's, streamed, or none (a resent copy of
/// a body-less request).
pub enum RequestBody {
    /// The client's body, streamed as it arrives.
    Client(Incoming),
    /// The client's body, streamed as it arrives and copied for a tap.
    Tee(Incoming, TeeSink),
    /// A body cut off once it grows past `[listen] max_body` (an HTTP/2 body that did not
    /// announce its length): the upstream request fails, and `cap.over` says why.
    Capped(Box<RequestBody>, Cap),
    /// No body.
    Empty,
}

/// The limit on a streamed request body, and the flag raised when it is passed.
pub struct Cap {
    /// Bytes still allowed.
    left: u64,
    /// The limit.
    max: u64,
    /// Raised when the body grew past it.
    pub(crate) over: std::sync::Arc<std::sync::atomic::AtomicBool>,
}

impl Cap {
    pub(crate) fn new(max: u64) -> Cap {
        Cap {
            left: max,
            max,
            over: Default::default(),
        }
    }
}

/// Why a request body stopped.
#[derive(Debug, thiserror::Error)]
pub enum RequestBodyError {
    /// The client's stream failed.
    #[error(transparent)]
    Client(#[from] hyper::Error),
    /// It grew past `[listen] max_body`.
    #[error("the request body grew past max_body ({max} bytes)")]
    TooLarge {
        /// The limit.
        max: u64,
    },
}

impl Body for RequestBody {
    type Data = Bytes;
    type Error = RequestBodyError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, RequestBodyError>>> {
        match self.get_mut() {
            RequestBody::Client(inner) => Pin::new(inner).poll_frame(cx).map_err(Into::into),
            RequestBody::Capped(inner, cap) => {
                let polled = Pin::new(&mut **inner).poll_frame(cx);
                if let Poll::Ready(Some(Ok(frame))) = &polled {
                    let n = frame.data_ref().map_or(0, |d| d.len() as u64);
                    match cap.left.checked_sub(n) {
                        Some(left) => cap.left = left,
                        None => {
                            cap.over.store(true, std::sync::atomic::Ordering::Relaxed);
                            return Poll::Ready(Some(Err(RequestBodyError::TooLarge {
                                max: cap.max,
                            })));
                        }
                    }
                }
                polled
            }
            RequestBody::Tee(inner, sink) => {
                let polled = Pin::new(&mut *inner).poll_frame(cx);
                match &polled {
                    Poll::Ready(Some(Ok(frame))) => {
                        if let Some(data) = frame.data_ref() {
                            sink.0.push(data);
                        }
                        if inner.is_end_stream() {
                            sink.0.end();
                        }
                    }
                    Poll::Ready(None) => sink.0.end(),
                    _ => {}
                }
                polled.map_err(Into::into)
            }
            RequestBody::Empty => Poll::Ready(None),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            RequestBody::Client(inner) | RequestBody::Tee(inner, _) => inner.is_end_stream(),
            RequestBody::Capped(inner, _) => inner.is_end_stream(),
            RequestBody::Empty => true,
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            RequestBody::Client(inner) | RequestBody::Tee(inner, _) => inner.size_hint(),
            RequestBody::Capped(inner, _) => inner.size_hint(),
            RequestBody::Empty => SizeHint::with_exact(0),
        }
    }
}
