//! What the data plane hands over: copies of a live request and of the responses to it.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use bytes::Bytes;

/// A copy of a live request, as turnout forwarded it (hop-by-hop headers removed,
/// forwarding headers set). HTTP/2 requests are copied as their HTTP/1.1 equivalent.
#[derive(Clone, Debug, PartialEq)]
pub struct RequestCopy {
    /// 24 lower-case hex digits; the same for the request and every response to it (it
    /// is the GoReplay record id). From the request's `X-Request-Id` when it has one,
    /// hashed, otherwise random.
    pub id: String,
    /// When the request head arrived.
    pub started: SystemTime,
    /// `GET`, `POST`, ...
    pub method: String,
    /// The origin-form target: path and query.
    pub target: String,
    /// Header names in lower case, values as sent, in order (including `host`).
    pub headers: Vec<(String, Bytes)>,
    /// The body, at most `max_body` bytes of it.
    pub body: Bytes,
    /// Whether the body was longer than what `body` holds (such requests are not
    /// mirrored, but a capture records them with what it has).
    pub body_truncated: bool,
}

/// A copy of a response.
#[derive(Clone, Debug, PartialEq)]
pub struct ResponseCopy {
    /// The status code.
    pub status: u16,
    /// Header names in lower case, values as received, in order.
    pub headers: Vec<(String, Bytes)>,
    /// The body (decoded from chunked framing), at most `max_body` bytes of it.
    pub body: Bytes,
    /// Whether the body was longer than what `body` holds.
    pub body_truncated: bool,
    /// From sending the request to the response head.
    pub latency: Duration,
}

/// A live request and the live response to it: what a capture records.
#[derive(Clone, Debug, PartialEq)]
pub struct Exchange {
    /// The request.
    pub request: Arc<RequestCopy>,
    /// The live response.
    pub response: ResponseCopy,
}

/// One mirrored request and what came back: the input of a comparison.
#[derive(Clone, Debug, PartialEq)]
pub struct Sample {
    /// The request.
    pub request: Arc<RequestCopy>,
    /// The response users got.
    pub live: ResponseCopy,
    /// The candidate's response to the copy, or why there is none (timeout, refused).
    pub candidate: Result<ResponseCopy, String>,
    /// For a `noise_sample` share of requests: the live slot's response to a second copy,
    /// made exactly like the candidate's (same headers, same marker).
    pub noise: Option<Result<ResponseCopy, String>>,
}
