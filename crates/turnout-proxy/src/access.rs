//! The access log.
//!
//! The access log (off unless
//! [`crate::Proxy::set_access_log`] turned it on) takes one entry per request through a
//! bounded queue (`try_send`: full means dropped and counted) to a thread of its own that
//! formats JSON lines and writes them, so a slow disk or pipe never holds up a request.

use std::io::Write;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::mpsc::{sync_channel, SyncSender, TrySendError};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Entries waiting for the writer thread at most.
const QUEUE: usize = 8192;

/// One request, as the access log tells it.
pub(crate) struct Entry {
    pub(crate) time: SystemTime,
    /// `METHOD PATH` as sent upstream (the method is up to the first space).
    pub(crate) request_line: Vec<u8>,
    pub(crate) status: u16,
    pub(crate) slot: Option<turnout_core::SlotName>,
    pub(crate) version: Option<Arc<str>>,
    pub(crate) upstream: Option<crate::upstream::UpstreamRef>,
    pub(crate) duration: Duration,
    pub(crate) bytes: u64,
    pub(crate) request_id: Vec<u8>,
}

/// The access log's queue and counters.
pub(crate) struct AccessLog {
    tx: SyncSender<Entry>,
    dropped: Arc<AtomicU64>,
}

impl AccessLog {
    pub(crate) fn start(mut to: Box<dyn Write + Send>) -> AccessLog {
        let (tx, rx) = sync_channel::<Entry>(QUEUE);
        let dropped = Arc::new(AtomicU64::new(0));
        let spawned = std::thread::Builder::new()
            .name("turnout-access-log".into())
            .spawn(move || {
                let mut line = Vec::with_capacity(512);
                while let Ok(first) = rx.recv() {
                    // Write what is queued in one go, then flush once.
                    let mut next = Some(first);
                    while let Some(e) = next {
                        line.clear();
                        format_entry(&e, &mut line);
                        if to.write_all(&line).is_err() {
                            return;
                        }
                        next = rx.try_recv().ok();
                    }
                    if to.flush().is_err() {
                        return;
                    }
                }
            });
        if let Err(e) = spawned {
            tracing::warn!(error = %e, "cannot start the access log thread; no access log");
        }
        AccessLog { tx, dropped }
    }

    /// Queues `entry`, or drops and counts it when the queue is full.
    pub(crate) fn log(&self, entry: Entry) {
        if let Err(TrySendError::Full(_) | TrySendError::Disconnected(_)) = self.tx.try_send(entry)
        {
            self.dropped.fetch_add(1, Relaxed);
        }
    }

    pub(crate) fn dropped(&self) -> u64 {
        self.dropped.load(Relaxed)
    }
}

/// One JSON line.
fn format_entry(e: &Entry, out: &mut Vec<u8>) {
    let line = &e.request_line[..];
    let (method, path) = match line.iter().position(|&b| b == b' ') {
        Some(i) => (&line[..i], &line[i + 1..]),
        None => (line, &b""[..]),
    };
    out.extend_from_slice(b"{\"time\":\"");
    rfc3339(e.time, out);
    out.extend_from_slice(b"\",\"method\":");
    json_str(method, out);
    out.extend_from_slice(b",\"path\":");
    json_str(path, out);
    let _ = write!(out, ",\"status\":{},\"slot\":", e.status);
    match e.slot {
        Some(s) => json_str(s.as_str().as_bytes(), out),
        None => out.extend_from_slice(b"null"),
    }
    out.extend_from_slice(b",\"version\":");
    match &e.version {
        Some(v) => json_str(v.as_bytes(), out),
        None => out.extend_from_slice(b"null"),
    }
    out.extend_from_slice(b",\"upstream\":");
    match &e.upstream {
        Some(u) => json_str(u.addr.as_bytes(), out),
        None => out.extend_from_slice(b"null"),
    }
    let _ = write!(
        out,
        ",\"duration_ms\":{:.3},\"bytes\":{},\"request_id\":",
        e.duration.as_secs_f64() * 1000.0,
        e.bytes
    );
    json_str(&e.request_id, out);
    out.extend_from_slice(b"}\n");
}

/// A JSON string of `s` (invalid UTF-8 replaced).
fn json_str(s: &[u8], out: &mut Vec<u8>) {
    out.push(b'"');
    for c in String::from_utf8_lossy(s).chars() {
        match c {
            '"' => out.extend_from_slice(b"\\\""),
            '\\' => out.extend_from_slice(b"\\\\"),
            c if (c as u32) < 0x20 => {
                let _ = write!(out, "\\u{:04x}", c as u32);
            }
            c => {
                let mut b = [0u8; 4];
                out.extend_from_slice(c.encode_utf8(&mut b).as_bytes());
            }
        }
    }
    out.push(b'"');
}

/// `t` as RFC 3339 in UTC with milliseconds: `2026-11-26T19:03:57.123Z`.
fn rfc3339(t: SystemTime, out: &mut Vec<u8>) {
    let d = t.duration_since(UNIX_EPOCH).unwrap_or_default();
    let secs = d.as_secs();
    let days = (secs / 86_400) as i64;
    let rem = secs % 86_400;
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    let _ = write!(
        out,
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{:03}Z",
        rem / 3600,
        rem / 60 % 60,
        rem % 60,
        d.subsec_millis()
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_in_rfc3339() {
        let cases = [
            (0u64, "1970-01-01T00:00:00.000Z"),
            (951_782_400, "2000-02-29T00:00:00.000Z"),
            (1_795_720_437, "2026-11-26T19:13:57.000Z"),
        ];
        for (secs, want) in cases {
            let mut out = Vec::new();
            rfc3339(UNIX_EPOCH + Duration::from_secs(secs), &mut out);
            assert_eq!(String::from_utf8(out).unwrap(), want, "{secs}");
        }
    }

    #[test]
    fn an_entry_is_one_json_line() {
        let e = Entry {
            time: UNIX_EPOCH,
            request_line: b"GET /a\"b?x=1".to_vec(),
            status: 404,
            slot: Some(turnout_core::SlotName::Green),
            version: Some(Arc::from("v2")),
            upstream: None,
            duration: Duration::from_micros(1500),
            bytes: 12,
            request_id: b"abc".to_vec(),
        };
        let mut out = Vec::new();
        format_entry(&e, &mut out);
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "{\"time\":\"1970-01-01T00:00:00.000Z\",\"method\":\"GET\",\"path\":\"/a\\\"b?x=1\",\"status\":404,\"slot\":\"green\",\"version\":\"v2\",\"upstream\":null,\"duration_ms\":1.500,\"bytes\":12,\"request_id\":\"abc\"}\n"
        );
    }
}
