//! `turnout replay`: sends the requests of GoReplay-format files (turnout's or GoReplay's
//! own) to a target, and compares the responses with the recorded ones — or, with
//! `--compare-with`, with another target's — giving the same report as shadowing.
//!
//! Three parts, joined by bounded channels:
//! - the **reader** (a blocking thread) reads every file with
//!   `turnout_shadow::goreplay` and merges their records by timestamp. Malformed records are
//!   printed with their file and byte offset and skipped; replayed-response records
//!   (type 3) are skipped; requests whose body the capture truncated are not sent (a
//!   shorter body is another request). It pairs each response (type 2) with its request by
//!   id, in order (a retried request may share its id), and hands requests to the
//!   scheduler and recorded responses to the collector;
//! - the **scheduler** keeps the recorded gaps between requests, divided by `--speed` and
//!   each at most `--max-gap` (when it falls behind by more than `--max-gap` — slow target,
//!   `--concurrency` reached — it goes on from now rather than bursting to catch up), and
//!   sends each request in a task of its own, at most `--concurrency` at a time, over
//!   keep-alive connections. Every method is sent: replaying is an explicit act;
//! - the **collector** pairs what came back with the recorded response, feeds the
//!   comparison to an `Aggregator`, and writes `--out` (type 1 and type 3 records).
//!
//! Requests go out as recorded — method, target, headers (hop-by-hop ones and framing
//! left out; the body is sent with a `Content-Length`), the recorded `Host` unless
//! `--rewrite-host` — over plain HTTP/1.1.

use std::collections::{HashMap, VecDeque};
use std::io::BufRead;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use anyhow::{anyhow, bail, Context as _};
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::header::{HeaderName, HeaderValue};
use hyper::{Method, Request, Uri};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use serde::Serialize;
use tokio::sync::{mpsc, Semaphore};
use turnout_core::SlotName;
use turnout_shadow::goreplay::{self, FormatError, FormatErrorKind, Reader, Record, RecordType};
use turnout_shadow::{
    Aggregator, CompareOptions, Counts, NoiseOptions, Report, RequestCopy, ResponseCopy, Sample,
};

use crate::cli::{ReplayArgs, Speed};
use crate::client::AdminClient;
use crate::error::UsageError;
use crate::out::out;

/// Where requests go, as typed.
#[derive(Clone, Debug, PartialEq)]
enum TargetArg {
    /// `host:port`.
    Url(String),
    Slot(SlotName),
}

fn parse_target(flag: &str, text: &str) -> Result<TargetArg, UsageError> {
    if let Ok(slot) = text.parse::<SlotName>() {
        return Ok(TargetArg::Slot(slot));
    }
    if text.starts_with("https://") {
        return Err(UsageError(format!(
            "{flag} {text}: https is not supported yet — replay speaks plain HTTP/1.1; give http://host:port (e.g. of an instance behind the TLS terminator)"
        )));
    }
    let Some(rest) = text.strip_prefix("http://") else {
        return Err(UsageError(format!(
            "{flag} {text:?}: expected http://host:port, blue or green"
        )));
    };
    let authority = rest.strip_suffix('/').unwrap_or(rest);
    let valid = !authority.is_empty()
        && !authority.contains(['/', '?', '#', '@'])
        && authority.parse::<hyper::http::uri::Authority>().is_ok();
    if !valid {
        return Err(UsageError(format!(
            "{flag} {text:?}: expected http://host:port with no path (the recorded paths are sent as they are)"
        )));
    }
    Ok(TargetArg::Url(authority.to_owned()))
}

/// A resolved target: the `host:port` requests go to, and how to name it.
#[derive(Clone, Debug)]
struct Target {
    authority: String,
    label: String,
}

async fn resolve(
    arg: &TargetArg,
    admin: &mut Option<anyhow::Result<AdminClient>>,
    make: &mut Option<impl FnOnce() -> anyhow::Result<AdminClient>>,
) -> anyhow::Result<Target> {
    match arg {
        TargetArg::Url(a) => Ok(Target {
            authority: a.clone(),
            label: format!("http://{a}"),
        }),
        TargetArg::Slot(slot) => {
            if admin.is_none() {
                *admin = make.take().map(|f| f());
            }
            let client = match admin {
                Some(Ok(c)) => c,
                Some(Err(e)) => bail!("{e:#}"),
                None => bail!("no admin API to ask for slot {slot}'s upstreams"),
            };
            let status = client
                .call(Method::GET, "/api/v1/status", None)
                .await
                .with_context(|| format!("asking the router for slot {slot}'s upstreams"))?;
            let ups = status["slots"][slot.as_str()]["upstreams"]
                .as_array()
                .cloned()
                .unwrap_or_default();
            let healthy = ups
                .iter()
                .find(|u| u["healthy"] == true)
                .and_then(|u| u["addr"].as_str());
            match healthy {
                Some(addr) => Ok(Target {
                    authority: addr.to_owned(),
                    label: format!("{slot} (http://{addr})"),
                }),
                None if ups.is_empty() => bail!("slot {slot} has no upstreams to replay to"),
                None => bail!(
                    "slot {slot} has no healthy upstream ({} checked unhealthy); see `turnout status`",
                    ups.len()
                ),
            }
        }
    }
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
struct ReadCounts {
    /// Request records (type 1).
    requests: u64,
    /// Response records (type 2).
    responses: u64,
    /// Records that did not parse (reported with their offset), requests and responses
    /// that are not HTTP.
    malformed: u64,
    /// Requests not sent: the capture kept only part of their body.
    truncated: u64,
    /// Replayed-response records (type 3), skipped.
    replayed_records: u64,
    /// Responses with no request before them in the files.
    orphan_responses: u64,
    /// Files that could not be read to their end.
    unreadable: u64,
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

fn report_format_error(file: &str, e: &FormatError) {
    eprintln!("turnout: {file}: {e}");
}

struct Input {
    name: Arc<str>,
    reader: Reader<Box<dyn BufRead + Send>>,
    head: Option<Result<Record, FormatError>>,
}

/// Reads every file, merged by timestamp; sends requests to `jobs` and recorded
/// responses to `events` (unless `recorded` is false).
fn read_all(
    mut inputs: Vec<Input>,
    jobs: mpsc::Sender<Job>,
    events: mpsc::Sender<Event>,
    recorded: bool,
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
                report_format_error(&i.name, e);
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
                        eprintln!(
                            "turnout: {source}: request record {} is not an HTTP request ({e}); skipped",
                            record.id
                        );
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
                    eprintln!(
                        "turnout: {source}: request {} {} {} has only {} bytes of its body (the capture cut it); not sent",
                        record.id,
                        request.method,
                        short(&request.target),
                        request.body.len()
                    );
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
        let resp = client
            .request(request)
            .await
            .map_err(|e| format!("{:#}", anyhow::Error::new(e)))?;
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
struct SendCounts {
    /// Requests sent to the target.
    sent: u64,
    /// ... that got a response (any status).
    answered: u64,
    /// ... that got none (refused, timed out, broken).
    failed: u64,
    /// Compared (with the recorded response, or with `--compare-with`'s).
    compared: u64,
    /// Sent, but with nothing to compare with: no recorded response in the files, or
    /// `--compare-with` sent none.
    not_compared: u64,
    /// Recorded responses that are not HTTP (reported with their offset).
    malformed_responses: u64,
    /// Responses not written to `--out` (a payload line is the separator).
    not_written: u64,
}

struct Collector {
    agg: Aggregator,
    compare_with: bool,
    counts: SendCounts,
    recorded: HashMap<u64, (Record, Source)>,
    waiting: HashMap<u64, Replayed>,
    out: Option<(PathBuf, goreplay::Writer<goreplay::FileSink>)>,
    out_error: Option<anyhow::Error>,
    failures_shown: u32,
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
                    self.show_failure(&r, "--compare-with", e);
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
                eprintln!(
                    "turnout: {source}: response record {} is not an HTTP response ({e}); its request was sent but not compared",
                    record.id
                );
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
            eprintln!(
                "turnout: {} {} ({}): no response from {what}: {}",
                r.request.method,
                short(&r.request.target),
                r.source,
                short(e)
            );
        } else if self.failures_shown == FAILURES_SHOWN + 1 {
            eprintln!("turnout: (further failures are only counted)");
        }
    }

    fn write_out(&mut self, r: &Replayed) {
        let Some((path, w)) = &mut self.out else {
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
            self.out_error = Some(anyhow!("writing {}: {e}", path.display()));
            self.out = None;
        }
    }

    fn finish(mut self) -> (Aggregator, SendCounts, Option<anyhow::Error>) {
        self.counts.not_compared += self.waiting.len() as u64;
        if let Some((path, w)) = self.out.take() {
            if let Err(e) = w.close() {
                self.out_error = Some(anyhow!("finishing {}: {e}", path.display()));
            }
        }
        (self.agg, self.counts, self.out_error)
    }
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
    files: Vec<String>,
    target: &'a str,
    compare_with: Option<&'a str>,
    #[serde(flatten)]
    read: ReadCounts,
    #[serde(flatten)]
    sent: SendCounts,
}

/// Runs `turnout replay`. `admin` makes the admin API's client, needed only for a slot
/// name as target.
pub fn run(
    args: &ReplayArgs,
    admin: impl FnOnce() -> anyhow::Result<AdminClient>,
) -> anyhow::Result<ExitCode> {
    if args.timeout.is_zero() {
        return Err(UsageError("--timeout must be more than 0".into()).into());
    }
    if args.max_body > goreplay::MAX_RECORD as u64 {
        return Err(UsageError(format!(
            "--max-body {} is over the {} bytes a record may hold",
            args.max_body,
            goreplay::MAX_RECORD
        ))
        .into());
    }
    let target = parse_target("--target", &args.target)?;
    let compare_with = args
        .compare_with
        .as_deref()
        .map(|t| parse_target("--compare-with", t))
        .transpose()?;
    let mut inputs = Vec::new();
    for path in &args.files {
        let reader =
            goreplay::open(path).with_context(|| format!("cannot read {}", path.display()))?;
        inputs.push(Input {
            name: Arc::from(path.display().to_string()),
            reader,
            head: None,
        });
    }
    let out_file = match &args.out {
        Some(p) => Some((
            p.clone(),
            goreplay::create(p).with_context(|| format!("cannot create {}", p.display()))?,
        )),
        None => None,
    };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    rt.block_on(replay(args, target, compare_with, inputs, out_file, admin))
}

async fn replay(
    args: &ReplayArgs,
    target: TargetArg,
    compare_with: Option<TargetArg>,
    inputs: Vec<Input>,
    out_file: Option<(PathBuf, goreplay::Writer<goreplay::FileSink>)>,
    admin: impl FnOnce() -> anyhow::Result<AdminClient>,
) -> anyhow::Result<ExitCode> {
    let (mut client, mut make) = (None, Some(admin));
    let target = resolve(&target, &mut client, &mut make).await?;
    let other = match &compare_with {
        Some(t) => Some(resolve(t, &mut client, &mut make).await?),
        None => None,
    };
    let files: Vec<String> = inputs.iter().map(|i| i.name.to_string()).collect();
    let concurrency = args.concurrency as usize;

    let (jobs_tx, mut jobs) = mpsc::channel::<Job>(256);
    let (events_tx, mut events) = mpsc::channel::<Event>(1024);
    let reader = tokio::task::spawn_blocking({
        let events = events_tx.clone();
        let recorded = other.is_none();
        move || read_all(inputs, jobs_tx, events, recorded)
    });
    let collector = tokio::spawn({
        let mut c = Collector {
            agg: Aggregator::new(
                CompareOptions {
                    ignore_headers: args.ignore_headers.clone(),
                    ignore_json: args.ignore_json.clone(),
                },
                NoiseOptions::default(),
            ),
            compare_with: other.is_some(),
            counts: SendCounts::default(),
            recorded: HashMap::new(),
            waiting: HashMap::new(),
            out: out_file,
            out_error: None,
            failures_shown: 0,
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
        http: http_client(concurrency, args.timeout),
        target: target.clone(),
        other: other.clone(),
        rewrite_host: args.rewrite_host,
        max_body: usize::try_from(args.max_body).unwrap_or(usize::MAX),
        timeout: args.timeout,
    });
    schedule(args, &mut jobs, how, events_tx).await;
    let read = reader.await.context("the file reader stopped")?;
    let (agg, sent, out_error) = collector.await.context("the collector stopped")?;
    let elapsed = started.elapsed();

    conclude(
        args,
        &Outcome {
            files,
            target,
            other,
            read,
            sent,
            elapsed,
        },
        &agg,
        out_error,
    )
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
    /// Sends one request (to both targets with `--compare-with`) and reports it.
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

/// Sends the jobs at their times, at most `--concurrency` at a time; returns when all
/// are done.
async fn schedule(
    args: &ReplayArgs,
    jobs: &mut mpsc::Receiver<Job>,
    how: Arc<Sending>,
    events: mpsc::Sender<Event>,
) {
    let permits = Arc::new(Semaphore::new(args.concurrency as usize));
    let mut prev: Option<(u64, Instant)> = None;
    let mut tasks = tokio::task::JoinSet::new();
    while let Some(job) = jobs.recv().await {
        let at = next_time(
            prev,
            job.timestamp_ns,
            args.speed,
            args.max_gap,
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

/// What a replay did, for the summary and the report.
struct Outcome {
    files: Vec<String>,
    target: Target,
    other: Option<Target>,
    read: ReadCounts,
    sent: SendCounts,
    elapsed: Duration,
}

/// Prints the summary and the report, writes `--report`, and picks the exit code.
fn conclude(
    args: &ReplayArgs,
    o: &Outcome,
    agg: &Aggregator,
    out_error: Option<anyhow::Error>,
) -> anyhow::Result<ExitCode> {
    let Outcome {
        files,
        target,
        other,
        read,
        sent,
        elapsed,
    } = o;
    let (read, sent) = (*read, *sent);
    let report = agg.report(Counts {
        mirrored: sent.sent,
        dropped: 0,
        skipped: 0,
        mirror_delay_p99: None,
    });
    let against = match &other {
        Some(o) => format!("the responses of {}", o.label),
        None => "the recorded responses".to_owned(),
    };
    out(&format!(
        "replayed {} requests from {} file(s) to {} in {:.1}s: {} answered, {} without a response",
        sent.sent,
        files.len(),
        target.label,
        elapsed.as_secs_f64(),
        sent.answered,
        sent.failed
    ))?;
    out(&format!(
        "compared {} with {against}; {} sent with nothing to compare with",
        sent.compared, sent.not_compared
    ))?;
    out(&format!(
        "skipped: {} malformed records, {} requests with a truncated body, {} replayed-response records (type 3); {} responses with no request",
        read.malformed + sent.malformed_responses,
        read.truncated,
        read.replayed_records,
        read.orphan_responses
    ))?;
    if sent.not_written > 0 {
        out(&format!(
            "{} responses were not written to --out: a line of theirs is the separator 🐵🙈🙉",
            sent.not_written
        ))?;
    }
    out(report.render_text().trim_end())?;

    let mut errors: Vec<String> = Vec::new();
    if let Some(path) = &args.report {
        let html = path
            .extension()
            .is_some_and(|e| e.eq_ignore_ascii_case("html") || e.eq_ignore_ascii_case("htm"));
        let text = if html {
            report.render_html(&format!(
                "turnout replay: {} against {against} ({})",
                target.label,
                files.join(", ")
            ))
        } else {
            let full = ReplayReport {
                report: &report,
                replay: ReplaySummary {
                    files: files.clone(),
                    target: &target.label,
                    compare_with: other.as_ref().map(|o| o.label.as_str()),
                    read,
                    sent,
                },
            };
            serde_json::to_string_pretty(&full)? + "\n"
        };
        match std::fs::write(path, text) {
            Ok(()) => out(&format!("report written to {}", path.display()))?,
            Err(e) => errors.push(format!(
                "cannot write the report to {}: {e}",
                path.display()
            )),
        }
    }
    if let Some(e) = out_error {
        errors.push(format!("{e:#}"));
    } else if let Some(p) = &args.out {
        out(&format!(
            "replayed requests and responses written to {}",
            p.display()
        ))?;
    }
    if read.unreadable > 0 {
        errors.push(format!(
            "{} file(s) could not be read to their end (see above)",
            read.unreadable
        ));
    }
    if read.requests == 0 {
        errors.push("nothing to replay: the files hold no request records".into());
    } else if sent.sent == 0 {
        errors.push("no request could be sent (see above)".into());
    } else if sent.answered == 0 {
        errors.push(format!("{} answered none of the requests", target.label));
    }
    if errors.is_empty() {
        Ok(ExitCode::SUCCESS)
    } else {
        Err(anyhow!(errors.join("; ")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn speeds_and_targets() {
        use crate::cli::parse_speed;
        assert_eq!(parse_speed("1"), Ok(Speed::Times(1.0)));
        assert_eq!(parse_speed("2x"), Ok(Speed::Times(2.0)));
        assert_eq!(parse_speed("0.5"), Ok(Speed::Times(0.5)));
        assert_eq!(parse_speed("0"), Ok(Speed::Max));
        assert_eq!(parse_speed("MAX"), Ok(Speed::Max));
        for bad in ["-1", "fast", "inf", "NaN", "", "1e-300", "1e300", "0.0001"] {
            assert!(parse_speed(bad).is_err(), "{bad}");
        }
        // Durations on the command line: as in the config, at most 10 years.
        assert!(turnout_core::units::parse_duration("87600h").is_ok());
        let err = turnout_core::units::parse_duration("1000000h").unwrap_err();
        assert!(err.contains("87600h"), "{err}");
        assert_eq!(
            parse_target("--target", "http://127.0.0.1:8080/").ok(),
            Some(TargetArg::Url("127.0.0.1:8080".into()))
        );
        assert_eq!(
            parse_target("--target", "green").ok(),
            Some(TargetArg::Slot(SlotName::Green))
        );
        let https = parse_target("--target", "https://x:443").unwrap_err().0;
        assert!(https.contains("https is not supported yet"), "{https}");
        for bad in ["http://x:1/api", "x:1", "http://", "http://a b:1"] {
            assert!(parse_target("--target", bad).is_err(), "{bad}");
        }
    }

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
                Input {
                    name: Arc::from(format!("f{i}")),
                    reader: Reader::new(inner),
                    head: None,
                }
            })
            .collect();
        let (jobs_tx, mut jobs) = mpsc::channel(100);
        let (events_tx, mut events) = mpsc::channel(100);
        let counts = read_all(inputs, jobs_tx, events_tx, recorded);
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
        // With --compare-with the recorded responses are not forwarded.
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
