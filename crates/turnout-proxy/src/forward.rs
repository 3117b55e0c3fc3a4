//! The request path, written once for HTTP/1.1 and HTTP/2. The protocol drivers
//! (`h1conn.rs`, `h2.rs`) read the request and write the response; every policy in
//! between is here, and each driver supplies only its upstream leg ([`Leg`]: how a
//! request is sent to one upstream on its protocol's connections). A request goes
//! through these phases:
//!
//! 1. **begin** (driver) — the request id (the client's `X-Request-Id`, or one of
//!    turnout's, sent upstream and to the client), the checks that refuse a request
//!    before routing (a loop through this router's `Via`: 508; a body announced over
//!    `max_body`: 413; header fields over HTTP/1.1's limits: 431; the HTTP/1.1 framing
//!    rules of `http1.rs`: 400/501), and the latency clock, which starts with the
//!    complete head. The head is rewritten for the HTTP/1.1 upstream: origin form,
//!    `Host`, hop-by-hop headers removed (RFC 9110 §7.6.1, `http1::HOP_BY_HOP`),
//!    `X-Forwarded-For` appended to, `-Proto` and `-Host` set, `Via` added.
//! 2. **route** ([`route`]) — one atomic load of the routing table: the live slot, or
//!    by weight during a canary; with `[sessions]`, a session's pin may keep it on its
//!    slot ([`session_facts`]). No live slot: 503, counted in no slot's statistics.
//! 3. **tap** — a shadow or capture that wants the request gets a tap on its head as
//!    forwarded (`tap.rs`; one relaxed load when none runs).
//! 4. **attempt** ([`attempt`]) — round robin over the slot's healthy upstreams. When
//!    nothing was sent (connect refused or timed out: [`Sent::Nothing`]) the request goes
//!    once to another upstream of the slot; a refused connect also ejects the upstream
//!    until its health check passes ([`Upstream::open`]). A body-less idempotent request
//!    that got nothing back on a pooled connection is sent once more on a new one
//!    ([`Sent::NoAnswer`], the leg's business). Failure after sending: 502; no response
//!    head within `response_timeout`: 504. With retry on standby
//!    (`Proxy::set_retry_on`), a body-less idempotent request (not an upgrade) that
//!    failed so, or got a 5xx head, goes once more to the standby slot; the failed
//!    attempt counts in the first slot's statistics, the retry in the standby's.
//! 5. **finish** (driver, with [`pin`] and [`LogLine`]) — the tap takes the response
//!    head (a shadow compares what the version answered), then the pin cookie is added
//!    when the session wants one, `X-Request-Id` when the upstream set none; the body is
//!    streamed (its connection returns to the pool when it ended exactly), the tap
//!    finishes, and the access log line is written with the bytes relayed. An HTTP/1.1
//!    `101` becomes a tunnel (`tunnel.rs`).
//!
//! Each request routed to a slot is counted once in its statistics ([`Outcome`]: with
//! its status, or as cancelled when the client went away first). Requests in flight
//! finish on the slot chosen in phase 2, whatever switches happen meanwhile.

use std::sync::Arc;
use std::time::Instant;

use http::HeaderValue;
use turnout_core::SlotName;

use crate::error::{Failed, ProxyError, Sent};
use crate::head::{RequestHead, ResponseHead};
use crate::sessions::SessionFacts;
use crate::shared::Inner;
use crate::stats::SlotStats;
use crate::table::SlotPool;
use crate::upstream::UpstreamRef;

/// What a request is, as far as retrying it goes.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Facts {
    /// An idempotent method (RFC 9110 §9.2.2).
    pub(crate) idempotent: bool,
    /// A body follows the head (it streams, so it cannot be sent twice).
    pub(crate) has_body: bool,
    /// An `Upgrade` request.
    pub(crate) upgrade: bool,
}

impl Facts {
    /// Whether the request may be sent again after the upstream may have acted on it.
    fn resendable(&self) -> bool {
        self.idempotent && !self.has_body && !self.upgrade
    }
}

/// A protocol's upstream leg: sends the request to one upstream and reads the response
/// head.
pub(crate) trait Leg {
    /// A response head that arrived (its body still to come).
    type Answer;

    /// Its status.
    fn status(answer: &Self::Answer) -> u16;

    /// Sends the request to `up`, on a pooled connection or a new one (opened with
    /// [`Upstream::open`]). `may_resend`: a body-less idempotent request that got nothing
    /// back on a pooled connection may be sent once more on a new one.
    async fn send_to(
        &mut self,
        inner: &Inner,
        up: &UpstreamRef,
        may_resend: bool,
    ) -> Result<Self::Answer, Failed>;

    /// Drops an answer that is not relayed (retry on standby): its connection is reused
    /// only when its body is already read whole.
    fn discard(&mut self, answer: Self::Answer, up: &UpstreamRef);
}

/// What [`attempt`] ends with: the slot that answered last (the standby after a retry),
/// its count of the request, and the answer or why there is none.
pub(crate) struct Attempt<'a, A> {
    pub(crate) slot: Arc<SlotPool>,
    pub(crate) outcome: Outcome<'a>,
    pub(crate) result: Result<(A, UpstreamRef), Failed>,
}

/// Phase 4: pick an upstream of `slot` and send; once more elsewhere when nothing was
/// sent; once more on the standby slot when retry on standby applies. `received`: when
/// the request's head was complete (the first attempt's latency clock).
pub(crate) async fn attempt<'a, L: Leg>(
    inner: &'a Inner,
    leg: &mut L,
    slot: Arc<SlotPool>,
    facts: Facts,
    received: Instant,
) -> Attempt<'a, L::Answer> {
    let mut outcome = Outcome::new(inner.stats(slot.name), received);
    let result = pick_and_send(inner, leg, &slot).await;
    let Some(standby) = standby_for::<L>(inner, &slot, facts, &result) else {
        return Attempt {
            slot,
            outcome,
            result,
        };
    };
    // Nothing has reached the client yet (interim responses included: they go out with
    // the final head).
    match result {
        Ok((answer, up)) => {
            let status = L::status(&answer);
            outcome.record(status);
            tracing::debug!(slot = %slot.name, upstream = %up.addr, status, to = %standby.name, "retrying on the standby slot");
            leg.discard(answer, &up);
        }
        Err(f) => {
            outcome.record(f.error.status().as_u16());
            log_failure(inner, slot.name, &f.error);
            tracing::debug!(slot = %slot.name, error = %f.error, to = %standby.name, "retrying on the standby slot");
        }
    }
    // The retried attempt's latency is the standby's own.
    let outcome = Outcome::new(inner.stats(standby.name), Instant::now());
    let result = pick_and_send(inner, leg, &standby).await;
    Attempt {
        slot: standby,
        outcome,
        result,
    }
}

/// The standby slot a failed request goes to once more: a resendable one that got no
/// response (the client still there) or a 5xx head, on a slot being retried from, with
/// a healthy upstream on the standby. The setting is read only after a failure, so a
/// request that went well pays nothing for it.
fn standby_for<L: Leg>(
    inner: &Inner,
    slot: &SlotPool,
    facts: Facts,
    result: &Result<(L::Answer, UpstreamRef), Failed>,
) -> Option<Arc<SlotPool>> {
    let failed = match result {
        Ok((answer, _)) => L::status(answer) >= 500,
        Err(f) => !matches!(f.error, ProxyError::ClientGone),
    };
    if !failed || !facts.resendable() {
        return None;
    }
    let to = inner.retry_target(slot.name)?;
    let standby = inner.table.load().slot(to).clone();
    // A standby with nothing healthy would only turn one error into another.
    (standby.healthy_count() > 0).then_some(standby)
}

/// Picks an upstream and sends; once more on another upstream when nothing was sent.
async fn pick_and_send<L: Leg>(
    inner: &Inner,
    leg: &mut L,
    slot: &SlotPool,
) -> Result<(L::Answer, UpstreamRef), Failed> {
    let Some(first) = slot.pick(None).cloned() else {
        return Err(ProxyError::NoHealthyUpstream { slot: slot.name }.into());
    };
    let failed = match leg.send_to(inner, &first, true).await {
        Ok(answer) => return Ok((answer, first)),
        Err(f) if f.sent == Sent::Nothing => f,
        Err(f) => return Err(f),
    };
    let Some(second) = slot.pick(Some(&first)).cloned() else {
        return Err(failed);
    };
    tracing::debug!(slot = %slot.name, from = %first.addr, to = %second.addr, error = %failed.error, "retrying on another upstream");
    // The resend on a new connection, if any, was spent on the first upstream.
    let answer = leg.send_to(inner, &second, false).await?;
    Ok((answer, second))
}

/// What a request's cookies say (`[sessions]` on; nothing otherwise).
pub(crate) fn session_facts(inner: &Inner, req: &impl RequestHead) -> SessionFacts {
    match &inner.sessions {
        None => SessionFacts::default(),
        Some(s) => s.facts(
            req.headers()
                .filter(|(name, _)| name.eq_ignore_ascii_case(b"cookie"))
                .map(|(_, value)| value),
        ),
    }
}

/// Phase 2: the slot for a request, `None` when no slot is live.
pub(crate) fn route(inner: &Inner, session: &SessionFacts) -> Option<Arc<SlotPool>> {
    let table = inner.table.load();
    match &inner.sessions {
        None => table.choose(),
        Some(_) => table.choose_pinned(session.pin),
    }
    .cloned()
}

/// Phase 5: the `Set-Cookie` value that pins the session to the slot that served it,
/// when it wants one. Called after the tap took the head.
pub(crate) fn pin(
    inner: &Inner,
    session: &SessionFacts,
    resp: &impl ResponseHead,
    served: SlotName,
    tls: bool,
) -> Option<HeaderValue> {
    let sessions = inner.sessions.as_ref()?;
    let sets = sessions.response_sets_session(resp);
    session
        .wants_pin(sets, served)
        .then(|| sessions.set_cookie(served, tls))
}

/// Logs a failed request: at most one warning a second (with the count held back), so
/// that an outage does not become a log line per request.
pub(crate) fn log_failure(inner: &Inner, slot: SlotName, error: &ProxyError) {
    if matches!(
        error,
        ProxyError::NoHealthyUpstream { .. }
            | ProxyError::NoLiveSlot
            | ProxyError::BodyTooLarge { .. }
            | ProxyError::ClientGone
    ) {
        tracing::debug!(slot = %slot, error = %error, "request failed");
    } else if let Some(held_back) = inner.errors.allow() {
        tracing::warn!(slot = %slot, error = %error, similar_not_logged = held_back, "request failed");
    }
}

/// One request's access log line: begun when its head was complete, written when its
/// response has ended or broke off (or at its error answer), with the same fields for
/// both protocols.
pub(crate) struct LogLine {
    received: Instant,
    /// `METHOD TARGET` as sent upstream.
    request_line: Vec<u8>,
    request_id: Vec<u8>,
}

impl LogLine {
    /// The line for `req`, when the access log is on.
    pub(crate) fn begin(
        inner: &Inner,
        req: &impl RequestHead,
        request_id: &[u8],
        received: Instant,
    ) -> Option<Box<LogLine>> {
        inner.access.get()?;
        let (method, target) = (req.method(), req.target());
        let mut request_line = Vec::with_capacity(method.len() + 1 + target.len());
        request_line.extend_from_slice(method.as_bytes());
        request_line.push(b' ');
        request_line.extend_from_slice(target.as_bytes());
        Some(Box::new(LogLine {
            received,
            request_line,
            request_id: request_id.to_vec(),
        }))
    }

    /// Writes the line: the status the client got, the slot and upstream that answered
    /// (none for turnout's own answers before routing), and the body bytes relayed.
    pub(crate) fn write(
        self,
        inner: &Inner,
        status: u16,
        slot: Option<&SlotPool>,
        up: Option<&UpstreamRef>,
        bytes: u64,
    ) {
        let Some(log) = inner.access.get() else {
            return;
        };
        log.log(crate::access::Entry {
            time: std::time::SystemTime::now(),
            request_line: self.request_line,
            status,
            slot: slot.map(|s| s.name),
            version: slot.and_then(|s| s.version.clone()),
            upstream: up.cloned(),
            duration: self.received.elapsed(),
            bytes,
            request_id: self.request_id,
        });
    }
}

/// Records one request in a slot's statistics exactly once: with a status, or — when
/// dropped unrecorded (the client reset the stream or went away first) — as cancelled,
/// not as the version's error.
pub(crate) struct Outcome<'a> {
    stats: &'a SlotStats,
    since: Instant,
    done: bool,
}

impl<'a> Outcome<'a> {
    pub(crate) fn new(stats: &'a SlotStats, since: Instant) -> Outcome<'a> {
        Outcome {
            stats,
            since,
            done: false,
        }
    }

    /// When this attempt's clock started.
    pub(crate) fn since(&self) -> Instant {
        self.since
    }

    pub(crate) fn record(&mut self, status: u16) {
        if !self.done {
            self.done = true;
            self.stats.record(status, self.since.elapsed());
        }
    }
}

impl Drop for Outcome<'_> {
    fn drop(&mut self) {
        if !self.done {
            self.stats.record_cancelled();
        }
    }
}
