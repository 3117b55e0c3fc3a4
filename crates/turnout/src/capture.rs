//! `turnout capture`: the router streams live exchanges as GoReplay records
//! (`POST /api/v1/capture`), and this command writes them to a file where it runs.
//!
//! The stream is split into records at their separators — the router writes exact
//! GoReplay with a writer that refuses a payload holding a separator line, so the first
//! separator after a record's start is its end — and each record is checked with the
//! format's reader before it is written again, byte for byte, with
//! `turnout_shadow::goreplay`'s writer (gzip when the name ends in `.gz`). A record is
//! never split between files; on Ctrl-C (or SIGTERM) the file is finished cleanly (the gzip
//! trailer written) with every whole record received.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{anyhow, Context as _};
use hyper::Method;
use serde_json::json;
use turnout_shadow::goreplay::{self, FileSink, Reader, Record, RecordType, Writer, SEPARATOR};

use crate::cli::CaptureArgs;
use crate::client::{AdminClient, StreamFrame};
use crate::error::UsageError;
use crate::out::out;

/// Splits a byte stream of exact GoReplay records into records (each with its separator).
#[derive(Default)]
struct Splitter {
    buf: Vec<u8>,
    /// Where the unread part of `buf` starts.
    start: usize,
    /// How far from `start` the separator was searched for already.
    scanned: usize,
    /// Stream offset of `buf[0]`.
    base: u64,
}

impl Splitter {
    fn push(&mut self, data: &[u8]) {
        if self.start > 0 && self.start >= self.buf.len() / 2 {
            self.buf.drain(..self.start);
            self.base += self.start as u64;
            self.start = 0;
        }
        self.buf.extend_from_slice(data);
    }

    /// The next whole record (with its separator) and its offset in the stream.
    fn next_record(&mut self) -> Option<(u64, Vec<u8>)> {
        let rest = &self.buf[self.start..];
        let from = self.scanned.saturating_sub(SEPARATOR.len());
        let at = rest[from..]
            .windows(SEPARATOR.len())
            .position(|w| w == SEPARATOR)
            .map(|i| from + i);
        match at {
            Some(i) => {
                let end = i + SEPARATOR.len();
                let record = rest[..end].to_vec();
                let offset = self.base + self.start as u64;
                self.start += end;
                self.scanned = 0;
                Some((offset, record))
            }
            None => {
                self.scanned = rest.len();
                None
            }
        }
    }

    /// Bytes received that are no whole record (yet).
    fn pending(&self) -> usize {
        self.buf.len() - self.start
    }
}

/// `FILE`, then `FILE_1`, `FILE_2`... with the number before the extension(s):
/// `c.gor.gz` → `c_1.gor.gz`.
pub(crate) fn rotated_name(path: &Path, n: u32) -> PathBuf {
    if n == 0 {
        return path.to_owned();
    }
    let name = path
        .file_name()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_default();
    // A leading dot (a hidden file) is part of the stem.
    let split = name
        .char_indices()
        .skip(1)
        .find(|&(_, c)| c == '.')
        .map_or(name.len(), |(i, _)| i);
    let (stem, ext) = name.split_at(split);
    path.with_file_name(format!("{stem}_{n}{ext}"))
}

/// The capture files: the current one, and rotation.
struct Files {
    base: PathBuf,
    limit: Option<u64>,
    current: Option<Writer<FileSink>>,
    /// Bytes written to the current file (before compression).
    size: u64,
    written: Vec<PathBuf>,
}

impl Files {
    fn open(base: &Path, limit: Option<u64>) -> anyhow::Result<Files> {
        let mut f = Files {
            base: base.to_owned(),
            limit,
            current: None,
            size: 0,
            written: Vec::new(),
        };
        f.next_file()?;
        Ok(f)
    }

    fn next_file(&mut self) -> anyhow::Result<()> {
        self.finish_current()?;
        let path = rotated_name(&self.base, self.written.len() as u32);
        let w = goreplay::create(&path)
            .with_context(|| format!("cannot create the capture file {}", path.display()))?;
        self.current = Some(w);
        self.size = 0;
        self.written.push(path);
        Ok(())
    }

    fn finish_current(&mut self) -> anyhow::Result<()> {
        if let Some(w) = self.current.take() {
            let path = self.written.last().cloned().unwrap_or_default();
            w.close()
                .with_context(|| format!("finishing the capture file {}", path.display()))?;
        }
        Ok(())
    }

    fn write(&mut self, record: &Record, len: u64) -> anyhow::Result<()> {
        if self
            .limit
            .is_some_and(|limit| self.size > 0 && self.size + len > limit)
        {
            self.next_file()?;
        }
        let path = self.written.last().cloned().unwrap_or_default();
        let w = self
            .current
            .as_mut()
            .ok_or_else(|| anyhow!("no capture file open"))?;
        w.write(record)
            .with_context(|| format!("writing the capture file {}", path.display()))?;
        self.size += len;
        Ok(())
    }
}

/// What the router said at the end (its trailers).
#[derive(Default)]
struct Final {
    exchanges: Option<u64>,
    dropped: Option<u64>,
    skipped: Option<u64>,
    end: Option<String>,
}

impl Final {
    fn from_trailers(t: &hyper::HeaderMap) -> Final {
        let num = |name: &str| {
            t.get(name)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.parse().ok())
        };
        Final {
            exchanges: num(turnout_admin::TRAILER_EXCHANGES),
            dropped: num(turnout_admin::TRAILER_DROPPED),
            skipped: num(turnout_admin::TRAILER_SKIPPED),
            end: t
                .get(turnout_admin::TRAILER_END)
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned),
        }
    }
}

#[derive(Default)]
struct Counts {
    requests: u64,
    responses: u64,
    other: u64,
    bad: u64,
}

/// Resolves when SIGINT (Ctrl-C) or SIGTERM arrives.
async fn interrupted() -> &'static str {
    use tokio::signal::unix::{signal, SignalKind};
    let term = signal(SignalKind::terminate());
    let ctrl_c = tokio::signal::ctrl_c();
    match term {
        Ok(mut term) => tokio::select! {
            _ = ctrl_c => "Ctrl-C",
            _ = term.recv() => "SIGTERM",
        },
        Err(_) => {
            let _ = ctrl_c.await;
            "Ctrl-C"
        }
    }
}

/// Runs `turnout capture`.
pub async fn run(client: &AdminClient, args: &CaptureArgs) -> anyhow::Result<ExitCode> {
    if args.duration.is_some_and(|d| d.is_zero()) {
        return Err(UsageError(
            "--duration must be more than 0 (leave it out to capture until Ctrl-C)".into(),
        )
        .into());
    }
    if args.max_body > turnout_admin::MAX_CAPTURE_BODY {
        return Err(UsageError(format!(
            "--max-body {} is over the {} a capture keeps of a body",
            turnout_core::units::format_size(args.max_body),
            turnout_core::units::format_size(turnout_admin::MAX_CAPTURE_BODY)
        ))
        .into());
    }
    // The file first: a path that cannot be written fails before the router starts.
    let mut files = Files::open(&args.out, args.rotate_size)?;
    let mut body = json!({ "sample": args.sample, "max_body": args.max_body });
    if let Some(d) = args.duration {
        body["duration_ms"] = json!(u64::try_from(d.as_millis()).unwrap_or(u64::MAX).max(1));
    }
    let mut stream = match client
        .stream(Method::POST, "/api/v1/capture", Some(body))
        .await
    {
        Ok(s) => s,
        Err(e) => {
            if let Some(w) = files.current.take() {
                let _ = w.close();
            }
            let _ = std::fs::remove_file(&args.out);
            return Err(e);
        }
    };
    // Scripts (and tests) wait for this line: the router taps traffic from here on.
    out(&format!(
        "capturing to {} ({}; sample {}, bodies up to {})",
        args.out.display(),
        match args.duration {
            Some(d) => format!("for {}", humantime::format_duration(d)),
            None => "until Ctrl-C".into(),
        },
        args.sample,
        turnout_core::units::format_size(args.max_body)
    ))?;

    let mut split = Splitter::default();
    let mut counts = Counts::default();
    let mut fin: Option<Final> = None;
    let mut stopped_by: Option<&str> = None;
    let mut failure: Option<anyhow::Error> = None;
    let signal = interrupted();
    tokio::pin!(signal);
    loop {
        let frame = tokio::select! {
            by = &mut signal => { stopped_by = Some(by); break; }
            f = stream.next() => f,
        };
        match frame {
            None => break,
            Some(Err(e)) => {
                failure = Some(e);
                break;
            }
            Some(Ok(StreamFrame::Trailers(t))) => fin = Some(Final::from_trailers(&t)),
            Some(Ok(StreamFrame::Data(data))) => {
                split.push(&data);
                while let Some((offset, raw)) = split.next_record() {
                    if let Err(e) = write_record(&mut files, &mut counts, offset, &raw) {
                        failure = Some(e);
                        break;
                    }
                }
                if failure.is_some() {
                    break;
                }
                if split.pending() > goreplay::MAX_RECORD + 1024 {
                    failure = Some(anyhow!(
                        "the router's stream holds no record separator in its last {} bytes: it is not a GoReplay capture",
                        split.pending()
                    ));
                    break;
                }
            }
        }
    }
    // Hang up first: the router stops tapping at once.
    drop(stream);
    let finished = files.finish_current();

    let exchanges = counts.requests.min(counts.responses);
    let names: Vec<String> = files
        .written
        .iter()
        .map(|p| p.display().to_string())
        .collect();
    out(&format!(
        "captured {} exchanges: {} records ({} requests, {} responses{}) written to {}",
        exchanges,
        counts.requests + counts.responses + counts.other,
        counts.requests,
        counts.responses,
        if counts.other > 0 {
            format!(", {} other", counts.other)
        } else {
            String::new()
        },
        if names.len() == 1 {
            names[0].clone()
        } else {
            format!("{} files: {}", names.len(), names.join(", "))
        }
    ))?;
    if split.pending() > 0 {
        out(&format!(
            "an incomplete record at the end ({} bytes) was not written",
            split.pending()
        ))?;
    }
    if counts.bad > 0 {
        out(&format!(
            "{} records from the router did not read back and were not written (see above)",
            counts.bad
        ))?;
    }
    match (&fin, stopped_by) {
        (Some(f), _) => {
            out(&format!(
                "dropped by the router: {} (the capture did not keep up with the traffic); skipped: {} (a payload line is the separator 🐵🙈🙉); ended: {}",
                f.dropped.map_or("?".into(), |n| n.to_string()),
                f.skipped.map_or("?".into(), |n| n.to_string()),
                f.end.as_deref().unwrap_or("?")
            ))?;
            if let Some(n) = f.exchanges.filter(|&n| n != exchanges) {
                out(&format!(
                    "note: the router sent {n} exchanges, {exchanges} were written"
                ))?;
            }
        }
        (None, Some(by)) => out(&format!(
            "stopped by {by}; exchanges the router dropped (if any) are in its log"
        ))?,
        (None, None) => {
            out("the router sent no final counts; exchanges it dropped (if any) are in its log")?
        }
    }
    finished?;
    if let Some(e) = failure {
        return Err(e.context(format!(
            "the capture stopped early; {} holds what was received",
            args.out.display()
        )));
    }
    Ok(ExitCode::SUCCESS)
}

/// Checks one record from the stream and writes it. A record that does not read back is
/// reported with its offset in the stream and not written; only IO errors fail.
fn write_record(
    files: &mut Files,
    counts: &mut Counts,
    offset: u64,
    raw: &[u8],
) -> anyhow::Result<()> {
    let mut items = Reader::new(raw);
    let record = match (items.next(), items.next()) {
        (Some(Ok(r)), None) => r,
        (first, _) => {
            counts.bad += 1;
            let why = match first {
                Some(Err(e)) => e.message,
                _ => "not one record".into(),
            };
            eprintln!("turnout: the router's stream at byte {offset}: {why}; not written");
            return Ok(());
        }
    };
    files.write(&record, raw.len() as u64)?;
    match record.kind {
        RecordType::Request => counts.requests += 1,
        RecordType::Response => counts.responses += 1,
        RecordType::Replayed => counts.other += 1,
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rotated_file_names() {
        for (path, n, want) in [
            ("dir/c.gor.gz", 0, "dir/c.gor.gz"),
            ("dir/c.gor.gz", 1, "dir/c_1.gor.gz"),
            ("c.gor", 12, "c_12.gor"),
            ("capture", 2, "capture_2"),
            (".hidden.gor", 1, ".hidden_1.gor"),
        ] {
            assert_eq!(rotated_name(Path::new(path), n), PathBuf::from(want));
        }
    }

    #[test]
    fn the_splitter_finds_records_across_any_chunking() {
        let mut w = Writer::new(Vec::new());
        let payloads = [
            "GET / HTTP/1.1\r\n\r\n",
            "POST /x HTTP/1.1\r\ncontent-length: 9\r\n\r\na\n🐵🙈\nb",
            "HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n",
        ];
        for (i, p) in payloads.iter().enumerate() {
            w.write(&Record {
                kind: RecordType::Request,
                id: format!("{i:024x}"),
                timestamp_ns: 1,
                latency_ns: 0,
                payload: bytes::Bytes::from(p.to_string()),
                offset: 0,
            })
            .unwrap();
        }
        let stream = w.into_inner();
        for chunk in [1, 3, 7, 13, 14, 15, 64, stream.len()] {
            let mut s = Splitter::default();
            let mut got = Vec::new();
            for piece in stream.chunks(chunk) {
                s.push(piece);
                while let Some((offset, r)) = s.next_record() {
                    got.push((offset, r));
                }
            }
            assert_eq!(s.pending(), 0, "chunk {chunk}");
            assert_eq!(got.len(), 3, "chunk {chunk}");
            let joined: Vec<u8> = got.iter().flat_map(|(_, r)| r.clone()).collect();
            assert_eq!(joined, stream, "chunk {chunk}");
            assert_eq!(got[1].0, got[0].1.len() as u64, "chunk {chunk}");
            for (_, r) in &got {
                assert_eq!(Reader::new(&r[..]).filter(Result::is_ok).count(), 1);
            }
        }
    }
}
