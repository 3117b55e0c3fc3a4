//! Webhooks (`[notify]`): every event is POSTed as JSON — the event's fields plus a
//! Slack-compatible `text` — to each URL.
//!
//! Nothing here can hold up the router or the pipeline: one task reads the event channel
//! and hands each event to a bounded queue per webhook with `try_send` (full: the event is
//! dropped for that webhook, counted and logged); one task per webhook delivers its
//! queue in order, each attempt bounded by the timeout, with three retries after 0.5 s,
//! 2 s and 5 s. A reader that falls behind the event channel is counted and logged.
//!
//! `https://` URLs are delivered over TLS (rustls), checked against `[notify] ca` or the
//! system's CA bundle ([`NotifyOptions::tls`]); without either they are reported once at
//! start and skipped.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper::header::{CONNECTION, CONTENT_TYPE, HOST, USER_AGENT};
use hyper::Request;
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;
use tokio::sync::{broadcast, mpsc};

use crate::Event;

/// How many events wait for one webhook before new ones are dropped.
pub const QUEUE: usize = 256;

/// The pauses before the retries of one delivery.
pub const BACKOFF: [Duration; 3] = [
    Duration::from_millis(500),
    Duration::from_secs(2),
    Duration::from_secs(5),
];

/// `[notify]` as the pipeline takes it.
#[derive(Clone, Debug)]
pub struct NotifyOptions {
    /// The URLs to POST each event to.
    pub webhooks: Vec<String>,
    /// The bound on one attempt (connect, send, answer).
    pub timeout: Duration,
    /// The TLS client for `https://` webhooks; `None`: those are skipped.
    pub tls: Option<turnout_proxy::TlsClient>,
}

/// What the webhooks did, for logs and metrics.
#[derive(Debug, Default)]
pub struct NotifyCounters {
    /// Deliveries a webhook answered with 2xx.
    pub delivered: AtomicU64,
    /// Deliveries that failed after every retry.
    pub failed: AtomicU64,
    /// Events dropped because a webhook's queue was full.
    pub dropped: AtomicU64,
    /// Events the reader missed because it fell behind the event channel.
    pub lagged: AtomicU64,
}

/// Where one webhook goes.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Target {
    url: String,
    /// `host:port`, to connect to.
    addr: String,
    /// `https://`: the host name the certificate is checked against.
    tls_host: Option<String>,
    /// The `Host` header.
    host: String,
    path: String,
}

fn parse(url: &str) -> Result<Target, String> {
    let (rest, https) = match (url.strip_prefix("http://"), url.strip_prefix("https://")) {
        (Some(rest), _) => (rest, false),
        (_, Some(rest)) => (rest, true),
        _ => return Err("the URL does not start with http:// or https://".into()),
    };
    let (authority, path) = match rest.find(['/', '?', '#']) {
        Some(i) if rest[i..].starts_with('/') => (&rest[..i], rest[i..].to_owned()),
        // `https://host?x=1`: the path is `/`, the query is kept.
        Some(i) => (&rest[..i], format!("/{}", &rest[i..])),
        None => (rest, "/".to_owned()),
    };
    // The fragment is never sent.
    let path = path.split('#').next().unwrap_or("/").to_owned();
    if authority.is_empty() {
        return Err("the URL has no host".into());
    }
    if authority.contains('@') {
        return Err("the URL has a user name or password in it; put a secret in the path or query the receiver expects, not before the host".into());
    }
    let has_port = match authority.rfind(':') {
        Some(i) => !authority[i..].contains(']'),
        None => false,
    };
    let addr = if has_port {
        authority.to_owned()
    } else {
        format!("{authority}:{}", if https { 443 } else { 80 })
    };
    let host_only = match authority.rfind(':') {
        Some(i) if has_port => &authority[..i],
        _ => authority,
    };
    Ok(Target {
        url: url.to_owned(),
        addr,
        tls_host: https.then(|| host_only.to_owned()),
        host: authority.to_owned(),
        path,
    })
}

/// The JSON body for `event`: its fields and `text`, a one-line summary.
pub fn body(event: &Event) -> Vec<u8> {
    let mut value = serde_json::to_value(event).unwrap_or_default();
    if let Some(map) = value.as_object_mut() {
        map.insert("text".into(), serde_json::Value::String(event.summary()));
    }
    serde_json::to_vec(&value).unwrap_or_default()
}

/// Starts delivering the events from `events` to the webhooks; the tasks end when the
/// event channel closes (after the queues are delivered).
pub fn spawn(events: broadcast::Receiver<Event>, opts: NotifyOptions) -> Arc<NotifyCounters> {
    let counters = Arc::new(NotifyCounters::default());
    let mut queues = Vec::new();
    for url in &opts.webhooks {
        match parse(url) {
            Ok(target) if target.tls_host.is_some() && opts.tls.is_none() => {
                tracing::warn!(webhook = %url, "[notify] webhook {url} is skipped: no CA certificates to check its server against (set [notify] ca, or install the system's CA bundle)");
            }
            Ok(target) => {
                let (tx, rx) = mpsc::channel::<Bytes>(QUEUE);
                tokio::spawn(deliver_all(
                    target,
                    rx,
                    opts.timeout,
                    opts.tls.clone(),
                    counters.clone(),
                ));
                queues.push((url.clone(), tx));
            }
            Err(e) => tracing::warn!(webhook = %url, "[notify] webhook {url} is skipped: {e}"),
        }
    }
    if !queues.is_empty() {
        tracing::info!(
            webhooks = queues.len(),
            "posting events to {} webhook(s)",
            queues.len()
        );
        tokio::spawn(dispatch(events, queues, counters.clone()));
    }
    counters
}

async fn dispatch(
    mut events: broadcast::Receiver<Event>,
    queues: Vec<(String, mpsc::Sender<Bytes>)>,
    counters: Arc<NotifyCounters>,
) {
    loop {
        let event = match events.recv().await {
            Ok(e) => e,
            Err(broadcast::error::RecvError::Lagged(n)) => {
                let total = counters.lagged.fetch_add(n, Ordering::Relaxed) + n;
                tracing::warn!(
                    missed = n,
                    total,
                    "the webhooks missed {n} events: they came faster than they could be queued"
                );
                continue;
            }
            Err(broadcast::error::RecvError::Closed) => return,
        };
        // Announced by the fleet's replica that made the change.
        if event.echo {
            continue;
        }
        let body = Bytes::from(body(&event));
        for (url, tx) in &queues {
            match tx.try_send(body.clone()) {
                Ok(()) => {}
                Err(mpsc::error::TrySendError::Full(_)) => {
                    let total = counters.dropped.fetch_add(1, Ordering::Relaxed) + 1;
                    // The first drop and every hundredth: a dead receiver must not flood
                    // the log.
                    if total == 1 || total.is_multiple_of(100) {
                        tracing::warn!(webhook = %url, event = event.id, dropped_total = total, "webhook {url} is {QUEUE} events behind; event {} was dropped for it", event.id);
                    }
                }
                Err(mpsc::error::TrySendError::Closed(_)) => {}
            }
        }
    }
}

async fn deliver_all(
    target: Target,
    mut rx: mpsc::Receiver<Bytes>,
    timeout: Duration,
    tls: Option<turnout_proxy::TlsClient>,
    counters: Arc<NotifyCounters>,
) {
    while let Some(body) = rx.recv().await {
        let mut attempt = 0;
        loop {
            let result = match tokio::time::timeout(
                timeout,
                post(&target, tls.as_ref(), body.clone()),
            )
            .await
            {
                Ok(r) => r,
                Err(_) => Err(format!("no answer within {} ms", timeout.as_millis())),
            };
            match result {
                Ok(()) => {
                    counters.delivered.fetch_add(1, Ordering::Relaxed);
                    break;
                }
                Err(e) if attempt < BACKOFF.len() => {
                    tracing::debug!(webhook = %target.url, attempt = attempt + 1, error = %e, "webhook delivery failed; retrying");
                    tokio::time::sleep(BACKOFF[attempt]).await;
                    attempt += 1;
                }
                Err(e) => {
                    counters.failed.fetch_add(1, Ordering::Relaxed);
                    tracing::warn!(webhook = %target.url, error = %e, "webhook {} did not take an event after {} attempts: {e}", target.url, attempt + 1);
                    break;
                }
            }
        }
    }
}

/// One POST; `Ok` on a 2xx answer.
async fn post(
    target: &Target,
    tls: Option<&turnout_proxy::TlsClient>,
    body: Bytes,
) -> Result<(), String> {
    let request = Request::post(target.path.as_str())
        .header(HOST, target.host.as_str())
        .header(USER_AGENT, "turnout-notify")
        .header(CONTENT_TYPE, "application/json")
        .header(CONNECTION, "close")
        .body(Full::new(body))
        .map_err(|e| e.to_string())?;
    let stream = TcpStream::connect(&target.addr)
        .await
        .map_err(|e| format!("cannot connect to {}: {e}", target.addr))?;
    match (&target.tls_host, tls) {
        (Some(host), Some(tls)) => {
            let stream = tls
                .connect(host, stream)
                .await
                .map_err(|e| format!("TLS handshake with {} failed: {e}", target.addr))?;
            send(TokioIo::new(stream), request).await
        }
        (Some(_), None) => Err("no TLS client for an https:// webhook".into()),
        (None, _) => send(TokioIo::new(stream), request).await,
    }
}

/// Sends `request` on a new HTTP/1.1 connection over `io`; `Ok` on a 2xx answer.
async fn send<T>(io: T, request: Request<Full<Bytes>>) -> Result<(), String>
where
    T: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
{
    let (mut sender, conn) = hyper::client::conn::http1::handshake(io)
        .await
        .map_err(|e| e.to_string())?;
    let conn = tokio::spawn(conn);
    let answer = sender.send_request(request).await;
    conn.abort();
    let status = answer.map_err(|e| e.to_string())?.status();
    if status.is_success() {
        Ok(())
    } else {
        Err(format!("answered {status}"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_http_and_https_urls_and_refuses_others() {
        let t = parse("http://127.0.0.1:9000/turnout-events").unwrap();
        assert_eq!(
            (t.addr.as_str(), t.host.as_str(), t.path.as_str()),
            ("127.0.0.1:9000", "127.0.0.1:9000", "/turnout-events")
        );
        let t = parse("http://hooks.example").unwrap();
        assert_eq!(
            (t.addr.as_str(), t.path.as_str()),
            ("hooks.example:80", "/")
        );
        let t = parse("http://[::1]/x").unwrap();
        assert_eq!(t.addr, "[::1]:80");
        let t = parse("http://[::1]:81/x").unwrap();
        assert_eq!(t.addr, "[::1]:81");
        let t = parse("https://hooks.slack.example/services/T0/B0/x").unwrap();
        assert_eq!(
            (t.addr.as_str(), t.tls_host.as_deref(), t.path.as_str()),
            (
                "hooks.slack.example:443",
                Some("hooks.slack.example"),
                "/services/T0/B0/x"
            )
        );
        let t = parse("https://[::1]:8443/h").unwrap();
        assert_eq!(
            (t.addr.as_str(), t.tls_host.as_deref()),
            ("[::1]:8443", Some("[::1]"))
        );
        assert_eq!(parse("http://a/").unwrap().tls_host, None);
        let t = parse("https://h?token=x#frag").unwrap();
        assert_eq!((t.addr.as_str(), t.path.as_str()), ("h:443", "/?token=x"));
        let err = parse("https://user:hunter2@h/x").unwrap_err();
        assert!(!err.contains("hunter2"), "{err}");
        assert!(parse("ftp://x/").is_err());
        assert!(parse("http:///x").is_err());
    }

    #[test]
    fn the_body_has_the_event_and_a_text_line() {
        let mut e = Event::new(
            crate::EventKind::Rollback,
            "rolled back from green to blue".into(),
        );
        e.reason = Some("operator rollback".into());
        let v: serde_json::Value = serde_json::from_slice(&body(&e)).unwrap();
        assert_eq!(v["kind"], "rollback");
        assert_eq!(v["reason"], "operator rollback");
        assert_eq!(v["text"], "turnout: rolled back from green to blue");
    }
}
