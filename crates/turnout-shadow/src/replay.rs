//! Replay: sends the requests of GoReplay-format files (turnout's or GoReplay's own) to a
//! target, and compares the responses with the recorded ones — or with another target's
//! — giving the same [`Report`] as shadowing. `turnout replay` is its command line.
//!
//! Three parts, joined by bounded channels:
//! - the **reader** (a blocking thread) reads every file with [`goreplay`] and merges
//!   their records by timestamp. Malformed records are reported with their file and byte
//!   offset and skipped; replayed-response records (type 3) are skipped; requests whose
//!   body the capture truncated are not sent (a shorter body is another request). It
//!   pairs each response (type 2) with its request by id, in order (a retried request may
//!   share its id), and hands requests to the scheduler and recorded responses to the
//!   collector;
//! - the **scheduler** keeps the recorded gaps between requests, divided by the
//!   [`Speed`] and each at most `max_gap` (when it falls behind by more than `max_gap` —
//!   slow target, `concurrency` reached — it goes on from now rather than bursting to
//!   catch up), and sends each request in a task of its own, at most `concurrency` at a
//!   time, over keep-alive connections. Every method is sent: replaying is an explicit
//!   act;
//! - the **collector** pairs what came back with the recorded response, feeds the
//!   comparison to an [`Aggregator`], and writes the `out` file (type 1 and type 3
//!   records).
//!
//! Requests go out as recorded — method, target, headers (hop-by-hop ones and framing
//! left out; the body is sent with a `Content-Length`), the recorded `Host` unless
//! `rewrite_host` — over plain HTTP/1.1. This module is the crate's only network IO: it
//! is for replaying files, and the data plane never calls it.
//!
//! What is worth telling a person on the way (a malformed record, a request not sent, a
//! target that did not answer) goes to the caller's [`Notify`], one line each.

use std::collections::{HashMap, VecDeque};
use std::io::BufRead;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::header::{HeaderName, HeaderValue};
use hyper::{Method, Request, Uri};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use serde::Serialize;
use tokio::sync::{mpsc, Semaphore};

use crate::goreplay::{self, FormatError, FormatErrorKind, Reader, Record, RecordType};
use crate::{
    Aggregator, CompareOptions, Counts, NoiseOptions, Report, RequestCopy, ResponseCopy, Sample,
};

/// Where a replay's notices go: one line each, for a person (e.g. printed to stderr).
pub type Notify = Arc<dyn Fn(&str) + Send + Sync>;

/// How fast to replay.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Speed {
    /// Without waiting between requests.
    Max,
    /// The recorded gaps divided by this.
    Times(f64),
}

/// Where requests go: the `host:port` they are sent to, and how to name it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Target {
    /// `host:port`.
    pub authority: String,
    /// The name in messages and the report, e.g. `http://127.0.0.1:8080` or
    /// `green (http://127.0.0.1:7002)`.
    pub label: String,
}

/// How to replay.
#[derive(Clone, Debug)]
pub struct ReplayOptions {
    /// How fast.
    pub speed: Speed,
    /// The longest wait between two requests, whatever the recording says.
    pub max_gap: Duration,
    /// Requests in flight at most (at least 1).
    pub concurrency: usize,
    /// Time allowed per request: connect, send, the whole response.
    pub timeout: Duration,
    /// Bytes of each response body read and compared.
    pub max_body: usize,
    /// Send `Host: host:port` of the target instead of the recorded `Host`.
    pub rewrite_host: bool,
    /// What not to compare.
    pub compare: CompareOptions,
}

/// A file of what was replayed, in GoReplay's format: each request sent, as recorded but
/// timed when it was sent (type 1), and the target's response to it (type 3).
pub struct OutFile {
    path: PathBuf,
    writer: goreplay::Writer<goreplay::FileSink>,
}

impl OutFile {
    /// Creates (or truncates) the file, gzip-compressed when the name ends in `.gz`.
    pub fn create(path: &Path) -> std::io::Result<OutFile> {
        Ok(OutFile {
            path: path.to_owned(),
            writer: goreplay::create(path)?,
        })
    }
}

/// A task of the replay that ended without its result (it panicked).
#[derive(Debug, thiserror::Error)]
#[error("the replay's {task} stopped: {source}")]
pub struct ReplayError {
    task: &'static str,
    source: tokio::task::JoinError,
}

/// Where a record is: file and byte offset (in the uncompressed stream).
#[derive(Clone, Debug)]
struct Source {
    file: Arc<str>,
    offset: u64,
}

impl std::fmt::Display for Source {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: at byte {}", self.file, self.offset)
    }
}

/// A request to send.
struct Job {
    seq: u64,
    timestamp_ns: u64,
    request: Arc<RequestCopy>,
    payload: Bytes,
    source: Source,
}

/// What the collector hears about.
enum Event {
    /// The recorded response to request `seq`.
    Recorded {
        seq: u64,
        record: Record,
        source: Source,
    },
    /// Request `seq` was sent.
    Replayed(Box<Replayed>),
}

struct Replayed {
    seq: u64,
    request: Arc<RequestCopy>,
    payload: Bytes,
    source: Source,
    sent_at: SystemTime,
    target: Result<ResponseCopy, String>,
    other: Option<Result<ResponseCopy, String>>,
}

/// What the reader saw.
#[derive(Clone, Copy, Debug, Default, Serialize)]
pub struct ReadCounts {
    /// Request records (type 1).
    pub requests: u64,
    /// Response records (type 2).
    pub responses: u64,
    /// Records that did not parse (reported with their offset), requests and responses
    /// that are not HTTP.
    pub malformed: u64,
    /// Requests not sent: the capture kept only part of their body.
    pub truncated: u64,
    /// Replayed-response records (type 3), skipped.
    pub replayed_records: u64,
    /// Responses with no request before them in the files.
    pub orphan_responses: u64,
    /// Files that could not be read to their end.
    pub unreadable: u64,
}

/// At most 80 characters of a recorded value (a target can be megabytes long), with its
/// length when cut: a message never repeats a whole input.
fn short(s: &str) -> String {
    const SHOWN: usize = 80;
    if s.chars().count() <= SHOWN {
        return s.to_owned();
    }
    let head: String = s.chars().take(SHOWN).collect();
    format!("{head}… ({} bytes)", s.len())
}

/// One file to replay: its name (in messages and the report) and its records.
pub struct Input {
    name: Arc<str>,
    reader: Reader<Box<dyn BufRead + Send>>,
    head: Option<Result<Record, FormatError>>,
}

impl Input {
    /// Opens a GoReplay file, plain or gzip (by name or magic bytes).
    pub fn open(path: &Path) -> std::io::Result<Input> {
        Ok(Input::new(
            &path.display().to_string(),
            goreplay::open(path)?,
        ))
    }

    /// Records read from `reader`, named `name`.
    pub fn new(name: &str, reader: Reader<Box<dyn BufRead + Send>>) -> Input {
        Input {
            name: Arc::from(name),
            reader,
            head: None,
        }
    }
}

/// Reads every file, merged by timestamp; sends requests to `jobs` and recorded
/// responses to `events` (unless `recorded` is false).
fn read_all(
    mut inputs: Vec<Input>,
    jobs: mpsc::Sender<Job>,
    events: mpsc::Sender<Event>,
    recorded: bool,
    notify: &Notify,
) -> ReadCounts {
    let mut c = ReadCounts::default();
    // Requests waiting for their response, by id, in order: (seq, sent).
    let mut pending: HashMap<String, VecDeque<(u64, bool)>> = HashMap::new();
    // Responses read before any request with their id.
    let mut early: HashMap<String, VecDeque<(Record, Source)>> = HashMap::new();
    let mut seq = 0u64;
    for i in &mut inputs {
        i.head = i.reader.next();
    }
    loop {
        // Problems first, in the order each file has them.
        for i in &mut inputs {
            while let Some(Err(e)) = &i.head {
                notify(&format!("{}: {e}", i.name));
                c.malformed += 1;
                if e.kind == FormatErrorKind::Io {
                    c.unreadable += 1;
                }
                i.head = i.reader.next();
            }
        }
        let next = inputs
            .iter()
            .enumerate()
            .filter_map(|(n, i)| match &i.head {
                Some(Ok(r)) => Some((r.timestamp_ns, n)),
                _ => None,
            })
            .min();
        let Some((_, n)) = next else { break };
        let input = &mut inputs[n];
        let Some(Ok(record)) = input.head.take() else {
            continue;
        };
        input.head = input.reader.next();
        let source = Source {
            file: input.name.clone(),
            offset: record.offset,
        };
        match record.kind {
            RecordType::Replayed => c.replayed_records += 1,
            RecordType::Response => {
                c.responses += 1;
                let waiting = pending.get_mut(&record.id).and_then(VecDeque::pop_front);
                match waiting {
                    Some((seq, true)) if recorded => {
                        if events
                            .blocking_send(Event::Recorded {
                                seq,
                                record,
                                source,
                            })
                            .is_err()
                        {
                            break;
                        }
                    }
                    Some(_) => {}
                    None => early
                        .entry(record.id.clone())
                        .or_default()
                        .push_back((record, source)),
                }
            }
            RecordType::Request => {
                c.requests += 1;
                seq += 1;
                let request = match record.to_request() {
                    Ok(r) => r,
                    Err(e) => {
                        notify(&format!(
                            "{source}: request record {} is not an HTTP request ({e}); skipped",
                            record.id
                        ));
                        c.malformed += 1;
                        pending
                            .entry(record.id.clone())
                            .or_default()
                            .push_back((seq, false));
                        continue;
                    }
                };
                let send = !request.body_truncated;
                if !send {
                    notify(&format!(
                        "{source}: request {} {} {} has only {} bytes of its body (the capture cut it); not sent",
                        record.id,
                        request.method,
                        short(&request.target),
                        request.body.len()
                    ));
                    c.truncated += 1;
                }
                let answer = early.get_mut(&record.id).and_then(VecDeque::pop_front);
                match answer {
                    Some((r, s)) => {
                        if send
                            && recorded
                            && events
                                .blocking_send(Event::Recorded {
                                    seq,
                                    record: r,
                                    source: s,
                                })
                                .is_err()
                        {
                            break;
                        }
                    }
                    None => pending
                        .entry(record.id.clone())
                        .or_default()
                        .push_back((seq, send)),
                }
                if !send {
                    continue;
                }
                let job = Job {
                    seq,
                    timestamp_ns: record.timestamp_ns,
                    request: Arc::new(request),
                    payload: record.payload,
                    source,
                };
                if jobs.blocking_send(job).is_err() {
                    break;
                }
            }
        }
    }
    c.orphan_responses = early.values().map(|q| q.len() as u64).sum();
    c
}

/// When to send the next request: `prev` is the previous one's (timestamp, planned time).
fn next_time(
    prev: Option<(u64, Instant)>,
    timestamp_ns: u64,
    speed: Speed,
    max_gap: Duration,
    now: Instant,
) -> Instant {
    let (Speed::Times(factor), Some((prev_ts, prev_at))) = (speed, prev) else {
        return now;
    };
    let gap_ns = timestamp_ns.saturating_sub(prev_ts) as f64 / factor;
    let gap = Duration::from_secs_f64((gap_ns / 1e9).min(max_gap.as_secs_f64()));
    let at = prev_at + gap;
    // Far behind (slow target, concurrency limit): go on from now instead of a burst.
    if now > at + max_gap {
        now
    } else {
        at
    }
}

type HttpClient = Client<HttpConnector, Full<Bytes>>;

fn http_client(concurrency: usize, timeout: Duration) -> HttpClient {
    let mut connector = HttpConnector::new();
    connector.set_nodelay(true);
    connector.set_connect_timeout(Some(timeout));
    Client::builder(TokioExecutor::new())
        .pool_max_idle_per_host(concurrency)
        .pool_idle_timeout(Duration::from_secs(30))
        .set_host(false)
        .build(connector)
}

/// Headers never sent as recorded: hop-by-hop ones, framing, and `Host` (set apart).
fn skipped_header(name: &str) -> bool {
    matches!(
        name,
        "connection"
            | "keep-alive"
            | "proxy-connection"
            | "te"
            | "trailer"
            | "transfer-encoding"
            | "upgrade"
            | "content-length"
            | "host"
    )
}

/// The request as it goes to `authority`.
fn build_request(
    req: &RequestCopy,
    authority: &str,
    rewrite_host: bool,
) -> Result<Request<Full<Bytes>>, String> {
    let method = Method::from_bytes(req.method.as_bytes())
        .map_err(|_| format!("method {:?} cannot be sent", req.method))?;
    let path = if req.target.starts_with('/') {
        req.target.clone()
    } else if let Ok(uri) = req.target.parse::<Uri>() {
        // Absolute form (a request to a proxy): its path and query.
        match uri.path_and_query() {
            Some(pq) if uri.scheme().is_some() => pq.to_string(),
            _ => return Err(format!("request target {:?} cannot be sent", req.target)),
        }
    } else {
        return Err(format!("request target {:?} cannot be sent", req.target));
    };
    let uri: Uri = format!("http://{authority}{path}")
        .parse()
        .map_err(|e| format!("request target {:?}: {e}", req.target))?;
    let mut b = Request::builder().method(method).uri(uri);
    let mut host = None;
    let mut had_length = false;
    for (name, value) in &req.headers {
        match name.as_str() {
            "host" => host = host.or(Some(value.clone())),
            "content-length" => had_length = true,
            n if skipped_header(n) => {}
            _ => {
                let n = HeaderName::from_bytes(name.as_bytes())
                    .map_err(|_| format!("header name {name:?} cannot be sent"))?;
                let v = HeaderValue::from_bytes(value)
                    .map_err(|_| format!("the value of header {name} cannot be sent"))?;
                b = b.header(n, v);
            }
        }
    }
    let host = match host {
        Some(h) if !rewrite_host => {
            HeaderValue::from_bytes(&h).map_err(|_| "the Host header cannot be sent".to_string())?
        }
        _ => HeaderValue::from_str(authority).map_err(|_| format!("host {authority:?}"))?,
    };
    b = b.header(hyper::header::HOST, host);
    if had_length || !req.body.is_empty() {
        b = b.header(hyper::header::CONTENT_LENGTH, req.body.len());
    }
    b.body(Full::new(req.body.clone()))
        .map_err(|e| format!("the request cannot be sent: {e}"))
}

/// Sends `req` and reads the response (at most `max_body` bytes of its body), all within
/// `timeout`.
async fn send(
    client: &HttpClient,
    req: &RequestCopy,
    target: &Target,
    rewrite_host: bool,
    max_body: usize,
    timeout: Duration,
) -> Result<ResponseCopy, String> {
    let request = build_request(req, &target.authority, rewrite_host)?;
    let exchange = async {
        let started = Instant::now();
        let resp = client.request(request).await.map_err(|e| error_chain(&e))?;
        let latency = started.elapsed();
        let status = resp.status().as_u16();
        let headers: Vec<(String, Bytes)> = resp
            .headers()
            .iter()
            .map(|(n, v)| (n.as_str().to_owned(), Bytes::copy_from_slice(v.as_bytes())))
            .collect();
        let mut body_in = resp.into_body();
        let mut body = Vec::new();
        let mut truncated = false;
        while let Some(frame) = body_in.frame().await {
            let frame = frame.map_err(|e| format!("reading the response body: {e}"))?;
            if let Ok(data) = frame.into_data() {
                let room = max_body - body.len();
                if data.len() > room {
                    body.extend_from_slice(&data[..room]);
                    truncated = true;
                    break;
                }
                body.extend_from_slice(&data);
            }
        }
        Ok(ResponseCopy {
            status,
            headers,
            body: Bytes::from(body),
            body_truncated: truncated,
            latency,
        })
    };
    tokio::time::timeout(timeout, exchange)
        .await
        .unwrap_or_else(|_| {
            Err(format!(
                "no complete response within {}",
                humantime::format_duration(timeout)
            ))
        })
}

/// Cuts both bodies to the shortest truncated one, so that a body the capture cut
/// compares with the same stretch of the other.
fn align_truncation(a: &mut ResponseCopy, b: &mut ResponseCopy) {
    let cut = [&*a, &*b]
        .iter()
        .filter(|r| r.body_truncated)
        .map(|r| r.body.len())
        .min();
    if let Some(n) = cut {
        for r in [a, b] {
            if r.body.len() >= n {
                r.body.truncate(n);
                r.body_truncated = true;
            }
        }
    }
}

/// What the collector counted.
#[derive(Clone, Copy, Debug, Default, Serialize)]
pub struct SendCounts {
    /// Requests sent to the target.
    pub sent: u64,
    /// ... that got a response (any status).
    pub answered: u64,
    /// ... that got none (refused, timed out, broken).
    pub failed: u64,
    /// Compared (with the recorded response, or with the other target's).
    pub compared: u64,
    /// Sent, but with nothing to compare with: no recorded response in the files, or
    /// the other target sent none.
    pub not_compared: u64,
    /// Recorded responses that are not HTTP (reported with their offset).
    pub malformed_responses: u64,
    /// Responses not written to the `out` file (a payload line is the separator).
    pub not_written: u64,
}

struct Collector {
    agg: Aggregator,
    compare_with: bool,
    counts: SendCounts,
    recorded: HashMap<u64, (Record, Source)>,
    waiting: HashMap<u64, Replayed>,
    out: Option<OutFile>,
    out_error: Option<String>,
    failures_shown: u32,
    notify: Notify,
}

const FAILURES_SHOWN: u32 = 10;

fn unix_ns(t: SystemTime) -> u64 {
    t.duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX))
}

impl Collector {
    fn event(&mut self, e: Event) {
        match e {
            Event::Recorded {
                seq,
                record,
                source,
            } => match self.waiting.remove(&seq) {
                Some(r) => self.compare_recorded(r, &record, &source),
                None => {
                    self.recorded.insert(seq, (record, source));
                }
            },
            Event::Replayed(r) => self.replayed(*r),
        }
    }

    fn replayed(&mut self, r: Replayed) {
        self.counts.sent += 1;
        match &r.target {
            Ok(_) => self.counts.answered += 1,
            Err(e) => {
                self.counts.failed += 1;
                self.show_failure(&r, "the target", e);
            }
        }
        self.write_out(&r);
        if self.compare_with {
            match &r.other {
                Some(Ok(live)) => {
                    let (mut live, mut candidate) = (live.clone(), r.target.clone());
                    if let Ok(c) = &mut candidate {
                        align_truncation(&mut live, c);
                    }
                    self.add(r.request.clone(), live, candidate);
                }
                Some(Err(e)) => {
                    self.counts.not_compared += 1;
                    self.show_failure(&r, "the other target", e);
                }
                None => self.counts.not_compared += 1,
            }
            return;
        }
        match self.recorded.remove(&r.seq) {
            Some((record, source)) => self.compare_recorded(r, &record, &source),
            None => {
                self.waiting.insert(r.seq, r);
            }
        }
    }

    fn compare_recorded(&mut self, r: Replayed, record: &Record, source: &Source) {
        match record.to_response(Some(&r.request.method)) {
            Ok(mut live) => {
                let mut candidate = r.target;
                if let Ok(c) = &mut candidate {
                    align_truncation(&mut live, c);
                }
                self.add(r.request, live, candidate);
            }
            Err(e) => {
                (self.notify)(&format!(
                    "{source}: response record {} is not an HTTP response ({e}); its request was sent but not compared",
                    record.id
                ));
                self.counts.malformed_responses += 1;
                self.counts.not_compared += 1;
            }
        }
    }

    fn add(
        &mut self,
        request: Arc<RequestCopy>,
        live: ResponseCopy,
        candidate: Result<ResponseCopy, String>,
    ) {
        self.counts.compared += 1;
        self.agg.add(&Sample {
            request,
            live,
            candidate,
            noise: None,
        });
    }

    fn show_failure(&mut self, r: &Replayed, what: &str, e: &str) {
        self.failures_shown += 1;
        if self.failures_shown <= FAILURES_SHOWN {
            (self.notify)(&format!(
                "{} {} ({}): no response from {what}: {}",
                r.request.method,
                short(&r.request.target),
                r.source,
                short(e)
            ));
        } else if self.failures_shown == FAILURES_SHOWN + 1 {
            (self.notify)("(further failures are only counted)");
        }
    }

    fn write_out(&mut self, r: &Replayed) {
        let Some(OutFile { path, writer: w }) = &mut self.out else {
            return;
        };
        let sent = unix_ns(r.sent_at);
        let request = Record {
            kind: RecordType::Request,
            id: r.request.id.clone(),
            timestamp_ns: sent,
            latency_ns: 0,
            payload: r.payload.clone(),
            offset: 0,
        };
        let response = r.target.as_ref().ok().map(|resp| {
            let latency = u64::try_from(resp.latency.as_nanos()).unwrap_or(u64::MAX);
            Record {
                kind: RecordType::Replayed,
                id: r.request.id.clone(),
                timestamp_ns: sent.saturating_add(latency),
                latency_ns: latency,
                payload: Bytes::from(resp.to_http1()),
                offset: 0,
            }
        });
        let result = w.write(&request).and_then(|()| match &response {
            Some(resp) if goreplay::is_ambiguous(&resp.payload) => {
                self.counts.not_written += 1;
                Ok(())
            }
            Some(resp) => w.write(resp),
            None => Ok(()),
        });
        if let Err(e) = result {
            self.out_error = Some(format!("writing {}: {e}", path.display()));
            self.out = None;
        }
    }

    fn finish(mut self) -> (Aggregator, SendCounts, Option<String>) {
        self.counts.not_compared += self.waiting.len() as u64;
        if let Some(OutFile { path, writer }) = self.out.take() {
            if let Err(e) = writer.close() {
                self.out_error = Some(format!("finishing {}: {e}", path.display()));
            }
        }
        (self.agg, self.counts, self.out_error)
    }
}

/// An error and its sources on one line: `a: b: c`.
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    text
}

/// The JSON report: the shadow report's fields, and what the replay did.
#[derive(Serialize)]
struct ReplayReport<'a> {
    #[serde(flatten)]
    report: &'a Report,
    replay: ReplaySummary<'a>,
}

#[derive(Serialize)]
struct ReplaySummary<'a> {
    files: &'a [String],
    target: &'a str,
    compare_with: Option<&'a str>,
    #[serde(flatten)]
    read: ReadCounts,
    #[serde(flatten)]
    sent: SendCounts,
}

/// Replays `inputs` to `target` and compares each answer with the recorded response — or,
/// with `other`, with `other`'s answer to the same request; writes what was sent and
/// answered to `out`. Returns when every request was answered or timed out.
pub async fn replay(
    inputs: Vec<Input>,
    target: Target,
    other: Option<Target>,
    out: Option<OutFile>,
    options: &ReplayOptions,
    notify: Notify,
) -> Result<ReplayOutcome, ReplayError> {
    let files: Vec<String> = inputs.iter().map(|i| i.name.to_string()).collect();
    let concurrency = options.concurrency.max(1);

    let (jobs_tx, mut jobs) = mpsc::channel::<Job>(256);
    let (events_tx, mut events) = mpsc::channel::<Event>(1024);
    let reader = tokio::task::spawn_blocking({
        let events = events_tx.clone();
        let recorded = other.is_none();
        let notify = notify.clone();
        move || read_all(inputs, jobs_tx, events, recorded, &notify)
    });
    let collector = tokio::spawn({
        let mut c = Collector {
            agg: Aggregator::new(options.compare.clone(), NoiseOptions::default()),
            compare_with: other.is_some(),
            counts: SendCounts::default(),
            recorded: HashMap::new(),
            waiting: HashMap::new(),
            out,
            out_error: None,
            failures_shown: 0,
            notify,
        };
        async move {
            while let Some(e) = events.recv().await {
                c.event(e);
            }
            c.finish()
        }
    });

    let started = Instant::now();
    let how = Arc::new(Sending {
        http: http_client(concurrency, options.timeout),
        target: target.clone(),
        other: other.clone(),
        rewrite_host: options.rewrite_host,
        max_body: options.max_body,
        timeout: options.timeout,
    });
    schedule(options, concurrency, &mut jobs, how, events_tx).await;
    let read = reader.await.map_err(|source| ReplayError {
        task: "file reader",
        source,
    })?;
    let (aggregator, sent, out_error) = collector.await.map_err(|source| ReplayError {
        task: "collector",
        source,
    })?;
    Ok(ReplayOutcome {
        files,
        target,
        other,
        read,
        sent,
        elapsed: started.elapsed(),
        aggregator,
        out_error,
    })
}

/// How requests are sent (shared by the tasks).
struct Sending {
    http: HttpClient,
    target: Target,
    other: Option<Target>,
    rewrite_host: bool,
    max_body: usize,
    timeout: Duration,
}

impl Sending {
    /// Sends one request (to both targets when comparing with another) and reports it.
    async fn run(&self, job: Job, events: mpsc::Sender<Event>) {
        let sent_at = SystemTime::now();
        let req = &job.request;
        let to = |t| {
            send(
                &self.http,
                req,
                t,
                self.rewrite_host,
                self.max_body,
                self.timeout,
            )
        };
        let (target, other) = match &self.other {
            Some(o) => {
                let (a, b) = tokio::join!(to(&self.target), to(o));
                (a, Some(b))
            }
            None => (to(&self.target).await, None),
        };
        let _ = events
            .send(Event::Replayed(Box::new(Replayed {
                seq: job.seq,
                request: job.request,
                payload: job.payload,
                source: job.source,
                sent_at,
                target,
                other,
            })))
            .await;
    }
}

/// Sends the jobs at their times, at most `concurrency` at a time; returns when all are
/// done.
async fn schedule(
    options: &ReplayOptions,
    concurrency: usize,
    jobs: &mut mpsc::Receiver<Job>,
    how: Arc<Sending>,
    events: mpsc::Sender<Event>,
) {
    let permits = Arc::new(Semaphore::new(concurrency));
    let mut prev: Option<(u64, Instant)> = None;
    let mut tasks = tokio::task::JoinSet::new();
    while let Some(job) = jobs.recv().await {
        let at = next_time(
            prev,
            job.timestamp_ns,
            options.speed,
            options.max_gap,
            Instant::now(),
        );
        tokio::time::sleep_until(at.into()).await;
        prev = Some((
            prev.map_or(job.timestamp_ns, |(ts, _)| ts.max(job.timestamp_ns)),
            at,
        ));
        let Ok(permit) = permits.clone().acquire_owned().await else {
            break;
        };
        let (how, events) = (how.clone(), events.clone());
        tasks.spawn(async move {
            how.run(job, events).await;
            drop(permit);
        });
        // Reap finished tasks as we go: the set stays as small as what is in flight.
        while tasks.try_join_next().is_some() {}
    }
    while tasks.join_next().await.is_some() {}
}

/// What a replay did.
pub struct ReplayOutcome {
    /// The files read, by name.
    pub files: Vec<String>,
    /// Where the requests went.
    pub target: Target,
    /// What the answers were compared with instead of the recorded responses.
    pub other: Option<Target>,
    /// What the reader saw.
    pub read: ReadCounts,
    /// What was sent and compared.
    pub sent: SendCounts,
    /// From the first request scheduled to the last answer.
    pub elapsed: Duration,
    /// The comparisons.
    pub aggregator: Aggregator,
    /// Why the `out` file is incomplete, if it is.
    pub out_error: Option<String>,
}

impl ReplayOutcome {
    /// The comparison report (its `mirrored` count is the requests sent).
    pub fn report(&self) -> Report {
        self.aggregator.report(Counts {
            mirrored: self.sent.sent,
            dropped: 0,
            skipped: 0,
            mirror_delay_p99: None,
        })
    }

    /// What the answers were compared with, for people: "the recorded responses" or "the
    /// responses of TARGET".
    pub fn against(&self) -> String {
        match &self.other {
            Some(o) => format!("the responses of {}", o.label),
            None => "the recorded responses".to_owned(),
        }
    }

    /// The report as JSON: the shadow report's fields, and under `replay` the files, the
    /// targets and the counts.
    pub fn json_report(&self, report: &Report) -> serde_json::Result<String> {
        let full = ReplayReport {
            report,
            replay: ReplaySummary {
                files: &self.files,
                target: &self.target.label,
                compare_with: self.other.as_ref().map(|o| o.label.as_str()),
                read: self.read,
                sent: self.sent,
            },
        };
        Ok(serde_json::to_string_pretty(&full)? + "\n")
    }

    /// The report as one self-contained HTML page.
    pub fn html_report(&self, report: &Report) -> String {
        report.render_html(&format!(
            "turnout replay: {} against {} ({})",
            self.target.label,
            self.against(),
            self.files.join(", ")
        ))
    }

    /// What makes the replay a failure, in order: the `out` file incomplete, files not
    /// read to their end, nothing to replay, nothing sent, nothing answered. Mismatches
    /// are no failure: they are what the report is for.
    pub fn problems(&self) -> Vec<String> {
        let (read, sent) = (self.read, self.sent);
        let mut problems: Vec<String> = self.out_error.iter().cloned().collect();
        if read.unreadable > 0 {
            problems.push(format!(
                "{} file(s) could not be read to their end (see above)",
                read.unreadable
            ));
        }
        if read.requests == 0 {
            problems.push("nothing to replay: the files hold no request records".into());
        } else if sent.sent == 0 {
            problems.push("no request could be sent (see above)".into());
        } else if sent.answered == 0 {
            problems.push(format!(
                "{} answered none of the requests",
                self.target.label
            ));
        }
        problems
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gaps_are_divided_by_the_speed_and_capped() {
        let t0 = Instant::now();
        let s = 1_000_000_000u64;
        let cap = Duration::from_secs(1);
        // The first request goes at once.
        assert_eq!(next_time(None, 5 * s, Speed::Times(1.0), cap, t0), t0);
        let prev = Some((5 * s, t0));
        assert_eq!(
            next_time(prev, 5 * s + s / 2, Speed::Times(1.0), cap, t0),
            t0 + Duration::from_millis(500)
        );
        assert_eq!(
            next_time(prev, 5 * s + s / 2, Speed::Times(2.0), cap, t0),
            t0 + Duration::from_millis(250)
        );
        // A long gap is capped; an earlier timestamp means no wait.
        assert_eq!(
            next_time(prev, 65 * s, Speed::Times(1.0), cap, t0),
            t0 + cap
        );
        assert_eq!(next_time(prev, s, Speed::Times(1.0), cap, t0), t0);
        assert_eq!(next_time(prev, 65 * s, Speed::Max, cap, t0), t0);
        // Far behind: from now, no burst.
        let late = t0 + Duration::from_secs(10);
        assert_eq!(
            next_time(prev, 5 * s + s / 2, Speed::Times(1.0), cap, late),
            late
        );
    }

    fn request(headers: &[(&str, &str)], body: &'static str) -> RequestCopy {
        RequestCopy {
            id: "ab".into(),
            started: SystemTime::UNIX_EPOCH,
            method: "PATCH".into(),
            target: "/items/1?x=1".into(),
            headers: headers
                .iter()
                .map(|(n, v)| (n.to_string(), Bytes::from(v.to_string())))
                .collect(),
            body: Bytes::from_static(body.as_bytes()),
            body_truncated: false,
        }
    }

    #[test]
    fn requests_go_out_as_recorded_without_hop_by_hop_headers() {
        let req = request(
            &[
                ("host", "shop.example"),
                ("connection", "keep-alive"),
                ("transfer-encoding", "chunked"),
                ("x-trace", "1"),
                ("x-trace", "2"),
            ],
            "{\"a\":\n1}",
        );
        let r = build_request(&req, "127.0.0.1:9", false).unwrap();
        assert_eq!(r.method(), "PATCH");
        assert_eq!(r.uri(), "http://127.0.0.1:9/items/1?x=1");
        let h = r.headers();
        assert_eq!(h["host"], "shop.example");
        assert_eq!(h["content-length"], "8");
        assert!(h.get("connection").is_none() && h.get("transfer-encoding").is_none());
        assert_eq!(h.get_all("x-trace").iter().count(), 2);
        let r = build_request(&req, "127.0.0.1:9", true).unwrap();
        assert_eq!(r.headers()["host"], "127.0.0.1:9");

        let mut get = request(&[], "");
        get.method = "GET".into();
        get.target = "http://elsewhere/p?q".into();
        let r = build_request(&get, "h:1", false).unwrap();
        assert_eq!(r.uri(), "http://h:1/p?q");
        assert_eq!(r.headers()["host"], "h:1");
        assert!(r.headers().get("content-length").is_none());
        get.target = "*".into();
        assert!(build_request(&get, "h:1", false).is_err());
    }

    /// Runs the reader over in-memory files; returns the jobs (seq, target), the recorded
    /// responses (seq, body) and the counts.
    fn read(
        files: &[&str],
        recorded: bool,
    ) -> (Vec<(u64, String)>, Vec<(u64, String)>, ReadCounts) {
        let inputs = files
            .iter()
            .enumerate()
            .map(|(i, text)| {
                let inner: Box<dyn BufRead + Send> =
                    Box::new(std::io::Cursor::new(text.as_bytes().to_vec()));
                Input::new(&format!("f{i}"), Reader::new(inner))
            })
            .collect();
        let (jobs_tx, mut jobs) = mpsc::channel(100);
        let (events_tx, mut events) = mpsc::channel(100);
        let notify: Notify = Arc::new(|_: &str| {});
        let counts = read_all(inputs, jobs_tx, events_tx, recorded, &notify);
        let mut sent = Vec::new();
        while let Ok(j) = jobs.try_recv() {
            sent.push((j.seq, j.request.target.clone()));
        }
        let mut answers = Vec::new();
        while let Ok(e) = events.try_recv() {
            if let Event::Recorded { seq, record, .. } = e {
                let body = record.to_response(None).unwrap().body;
                answers.push((seq, String::from_utf8_lossy(&body).into_owned()));
            }
        }
        (sent, answers, counts)
    }

    #[test]
    fn the_reader_merges_files_by_time_and_pairs_responses_in_order() {
        let rec = |kind: u8, id: &str, ts: u64, payload: &str| {
            format!("{kind} {id} {ts} 0\n{payload}\n🐵🙈🙉\n")
        };
        let get = |p: &str| format!("GET {p} HTTP/1.1\r\nhost: x\r\n\r\n");
        let ok = |b: &str| format!("HTTP/1.1 200 OK\r\ncontent-length: {}\r\n\r\n{b}", b.len());
        // f0: a request retried with the same id (answers pair in order), a type-3
        // record, a response before its request, a truncated request, a malformed record.
        let f0 = [
            rec(1, "aa", 10, &get("/first")),
            rec(1, "aa", 20, &get("/retry")),
            rec(2, "aa", 21, &ok("one")),
            rec(3, "aa", 22, &ok("replayed")),
            rec(2, "aa", 23, &ok("two")),
            rec(2, "cc", 30, &ok("early")),
            rec(1, "cc", 31, &get("/late")),
            rec(
                1,
                "dd",
                40,
                "POST /cut HTTP/1.1\r\ncontent-length: 10\r\n\r\nabc",
            ),
            rec(2, "dd", 41, &ok("cut")),
            "1 nothex 50 0\nGET / HTTP/1.1\r\n\r\n\n🐵🙈🙉\n".to_string(),
            rec(2, "ee", 60, &ok("orphan")),
        ]
        .concat();
        // f1: in between in time.
        let f1 = [rec(1, "bb", 15, &get("/other")), rec(2, "bb", 16, &ok("b"))].concat();
        let (sent, answers, c) = read(&[&f0, &f1], true);
        let targets: Vec<&str> = sent.iter().map(|(_, t)| t.as_str()).collect();
        assert_eq!(targets, ["/first", "/other", "/retry", "/late"]);
        let by_target: HashMap<&str, u64> = sent.iter().map(|(s, t)| (t.as_str(), *s)).collect();
        let mut answers: HashMap<u64, String> = answers.into_iter().collect();
        assert_eq!(answers.remove(&by_target["/first"]).as_deref(), Some("one"));
        assert_eq!(answers.remove(&by_target["/retry"]).as_deref(), Some("two"));
        assert_eq!(answers.remove(&by_target["/other"]).as_deref(), Some("b"));
        assert_eq!(
            answers.remove(&by_target["/late"]).as_deref(),
            Some("early")
        );
        assert!(answers.is_empty(), "{answers:?}");
        assert_eq!(
            (
                c.requests,
                c.responses,
                c.malformed,
                c.truncated,
                c.replayed_records,
                c.orphan_responses
            ),
            (5, 6, 1, 1, 1, 1)
        );
        // Compared with another target, the recorded responses are not forwarded.
        let (sent, answers, _) = read(&[&f0, &f1], false);
        assert_eq!((sent.len(), answers.len()), (4, 0));
    }

    #[test]
    fn truncated_bodies_compare_on_what_both_have() {
        let resp = |body: &'static str, truncated| ResponseCopy {
            status: 200,
            headers: vec![],
            body: Bytes::from_static(body.as_bytes()),
            body_truncated: truncated,
            latency: Duration::ZERO,
        };
        let (mut a, mut b) = (resp("abc", true), resp("abcdef", false));
        align_truncation(&mut a, &mut b);
        assert_eq!(a, b);
        let (mut a, mut b) = (resp("ab", false), resp("abcd", true));
        align_truncation(&mut a, &mut b);
        assert_eq!((&a.body[..], a.body_truncated), (&b"ab"[..], false));
        assert_eq!((&b.body[..], b.body_truncated), (&b"abcd"[..], true));
        let (mut a, mut b) = (resp("x", false), resp("y", false));
        align_truncation(&mut a, &mut b);
        assert!(!a.body_truncated && !b.body_truncated);
    }
}
