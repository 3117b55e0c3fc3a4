//! Data-plane errors: which side failed, and what the client is told.

use http::StatusCode;

/// Why the proxy could not get a response from an upstream. Each variant knows which
/// status the client gets and whether the request may be retried on another upstream.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ProxyError {
    /// No slot is live.
    #[error("no slot is live")]
    NoLiveSlot,
    /// The chosen slot has no healthy upstream.
    #[error("slot {slot} has no healthy upstream")]
    NoHealthyUpstream {
        /// The slot.
        slot: turnout_core::SlotName,
    },
    /// The TCP connection to the upstream failed (nothing was sent).
    #[error("cannot connect to upstream {addr}: {source}")]
    Connect {
        /// Upstream address.
        addr: String,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// The TCP connection did not complete in time (nothing was sent).
    #[error("connecting to upstream {addr} timed out")]
    ConnectTimeout {
        /// Upstream address.
        addr: String,
    },
    /// The TLS handshake on a new connection failed (`[upstream] tls`; nothing was sent).
    #[error("TLS handshake with {addr} failed: {source}")]
    TlsHandshake {
        /// Upstream address.
        addr: String,
        /// rustls' error.
        #[source]
        source: std::io::Error,
    },
    /// The HTTP handshake on a new connection failed.
    #[error("HTTP handshake with upstream {addr} failed: {source}")]
    Handshake {
        /// Upstream address.
        addr: String,
        /// hyper's error.
        #[source]
        source: hyper::Error,
    },
    /// The upstream failed after the request was (maybe partly) sent.
    #[error("upstream {addr} failed: {source}")]
    Upstream {
        /// Upstream address.
        addr: String,
        /// hyper's error.
        #[source]
        source: hyper::Error,
    },
    /// The connection to the upstream failed after the request was (maybe partly) sent.
    #[error("upstream {addr} failed: {source}")]
    UpstreamIo {
        /// Upstream address.
        addr: String,
        /// The IO error.
        #[source]
        source: std::io::Error,
    },
    /// The upstream's response was not valid HTTP/1.1.
    #[error("upstream {addr} sent an invalid response: {detail}")]
    UpstreamProtocol {
        /// Upstream address.
        addr: String,
        /// What was wrong.
        detail: String,
    },
    /// The client's chunked request body was malformed.
    #[error("the request body's chunked coding is invalid")]
    BadRequestBody,
    /// The client's request body is larger than `max_body`.
    #[error("the request body is larger than max_body ({max} bytes)")]
    BodyTooLarge {
        /// The limit.
        max: u64,
    },
    /// The request's header fields are larger than HTTP/1.1 allows too (64 KiB, 100
    /// fields): the same limit, answered the same way.
    #[error("the request's header fields are too large (at most 64 KiB and 100 fields)")]
    HeadersTooLarge,
    /// The client's request body stopped arriving before its announced end.
    #[error("the request body stopped arriving before its end")]
    RequestBodyStalled,
    /// The request came back through this router (its `Via` entry): an upstream points
    /// at turnout itself, directly or through another hop.
    #[error("loop detected: the request already passed through this router (Via); an upstream points back at turnout")]
    Loop,
    /// The client went away (or broke its request off) before its response: there is
    /// nobody to answer.
    #[error("the client went away")]
    ClientGone,
    /// The upstream sent no response head within the response timeout.
    #[error("upstream {addr} did not answer within {timeout_ms} ms")]
    ResponseTimeout {
        /// Upstream address.
        addr: String,
        /// The timeout.
        timeout_ms: u128,
    },
}

impl ProxyError {
    /// The status the client gets.
    pub fn status(&self) -> StatusCode {
        match self {
            ProxyError::NoLiveSlot | ProxyError::NoHealthyUpstream { .. } => {
                StatusCode::SERVICE_UNAVAILABLE
            }
            ProxyError::ResponseTimeout { .. } | ProxyError::ConnectTimeout { .. } => {
                StatusCode::GATEWAY_TIMEOUT
            }
            ProxyError::BadRequestBody => StatusCode::BAD_REQUEST,
            ProxyError::BodyTooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            ProxyError::Loop => StatusCode::LOOP_DETECTED,
            ProxyError::HeadersTooLarge => StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            ProxyError::RequestBodyStalled => StatusCode::REQUEST_TIMEOUT,
            _ => StatusCode::BAD_GATEWAY,
        }
    }

    /// Whether the upstream refused the connection: the one failure that ejects it at
    /// once (local trouble such as running out of file descriptors must not).
    pub fn is_refused(&self) -> bool {
        matches!(self, ProxyError::Connect { source, .. } if source.kind() == std::io::ErrorKind::ConnectionRefused)
    }

    /// Whether nothing of the request reached the upstream (no connection was made), so
    /// that any request may be sent again elsewhere.
    pub fn nothing_sent(&self) -> bool {
        matches!(
            self,
            ProxyError::Connect { .. }
                | ProxyError::ConnectTimeout { .. }
                | ProxyError::TlsHandshake { .. }
                | ProxyError::Handshake { .. }
        )
    }

    /// The short body the client gets: which side failed, without internal details.
    pub fn client_message(&self) -> &'static str {
        match self {
            ProxyError::NoLiveSlot => "turnout: no slot is live\n",
            ProxyError::NoHealthyUpstream { .. } => {
                "turnout: the live slot has no healthy upstream\n"
            }
            ProxyError::ResponseTimeout { .. } | ProxyError::ConnectTimeout { .. } => {
                "turnout: the upstream did not answer in time\n"
            }
            ProxyError::BadRequestBody => "turnout: invalid chunked request body\n",
            ProxyError::BodyTooLarge { .. } => "turnout: request body too large\n",
            ProxyError::HeadersTooLarge => "turnout: request head too large\n",
            ProxyError::RequestBodyStalled => {
                "turnout: the request body stopped arriving before its end\n"
            }
            ProxyError::Loop => {
                "turnout: loop detected: this request already passed through this router (Via); an upstream points back at turnout\n"
            }
            _ => "turnout: the upstream failed\n",
        }
    }
}

/// A failed attempt to get a response from an upstream, and how far the request got:
/// the one answer, for both protocols and the mirror, to "may it go elsewhere?".
#[derive(Debug)]
pub(crate) struct Failed {
    /// What went wrong.
    pub(crate) error: ProxyError,
    /// How far the request got.
    pub(crate) sent: Sent,
}

/// How far a failed request got.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) enum Sent {
    /// Nothing of it left turnout (no connection was made): any request may go to
    /// another upstream.
    Nothing,
    /// Written on a pooled keep-alive connection that gave nothing back (the upstream had
    /// closed it meanwhile): a body-less idempotent request may be sent once more, on a
    /// new connection.
    NoAnswer,
    /// The upstream may have acted on it.
    Maybe,
}

impl From<ProxyError> for Failed {
    /// Nothing sent when no connection was made ([`ProxyError::nothing_sent`]), else
    /// maybe.
    fn from(error: ProxyError) -> Failed {
        let sent = if error.nothing_sent() {
            Sent::Nothing
        } else {
            Sent::Maybe
        };
        Failed { error, sent }
    }
}
