//! GoReplay's capture file format, so that captures from either tool replay in either.
//!
//! A file is a sequence of records, each
//!
//! ```text
//! TYPE ID TIMESTAMP_NS LATENCY_NS\n      meta line
//! <raw HTTP/1.x message bytes>           payload (CRLF inside, as on the wire)
//! \n🐵🙈🙉\n                              separator
//! ```
//!
//! `TYPE` is `1` (request), `2` (the original response) or `3` (a response GoReplay got when
//! it replayed the request); `ID` is 24 lower-case hex digits shared by a request and its
//! responses; `TIMESTAMP_NS` is Unix time in nanoseconds (for a request: when it started;
//! for a response: when its head arrived); `LATENCY_NS` is, for a response, the time from
//! sending the request to the response head (turnout writes 0 for requests). GoReplay
//! writes the separator after every record, the last one too, and so does [`Writer`].
//!
//! [`Reader`] reads GoReplay's files as well as ours, and is lenient where that loses
//! nothing: a meta line with only three fields (older GoReplay: latency 0) or more than
//! four (extra ones ignored), a CR before its LF, several spaces between fields, IDs of any
//! length of hex digits (older GoReplay wrote 40), and a last record without its
//! separator. A record that does not parse is reported with its byte offset
//! ([`FormatError`]) and skipped; reading goes on at the next separator.
//!
//! The format has one flaw: a payload line that is exactly `🐵🙈🙉` ends the record early.
//! [`Writer`] refuses to write such a record; [`Reader`] notices it when the text after a
//! separator is no record and the record before it is cut short by its own HTTP framing
//! (or has no length of its own), and reports the file as ambiguous at that line instead
//! of returning a record cut in two.
//!
//! Byte offsets are in the uncompressed stream: for a `.gz` file, offsets into what
//! `gunzip` prints.

use std::collections::VecDeque;
use std::fs::File;
use std::io::{self, BufRead, BufReader, BufWriter, Write};
use std::path::Path;
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use flate2::read::MultiGzDecoder;
use flate2::write::GzEncoder;
use flate2::Compression;

use crate::http1::{self, HttpError};
use crate::types::{Exchange, RequestCopy, ResponseCopy};

/// The record separator: a line `🐵🙈🙉` between two newlines.
pub const SEPARATOR: &[u8] = "\n🐵🙈🙉\n".as_bytes();
/// The separator as the line the reader sees (without the newline that ends the payload).
const SEPARATOR_LINE: &[u8] = "🐵🙈🙉\n".as_bytes();
const MONKEYS: &[u8] = "🐵🙈🙉".as_bytes();

/// The largest record [`Reader`] accepts (meta line and payload), in bytes; a larger one
/// is reported as [`FormatErrorKind::TooLarge`] and skipped without being held in memory.
pub const MAX_RECORD: usize = 64 << 20;

/// What a record holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum RecordType {
    /// `1`: a request.
    Request = 1,
    /// `2`: the original (live) response to it.
    Response = 2,
    /// `3`: the response to a replay of it (GoReplay's `--output-http-track-response`).
    Replayed = 3,
}

impl RecordType {
    /// The digit written in the meta line.
    pub fn digit(self) -> char {
        match self {
            RecordType::Request => '1',
            RecordType::Response => '2',
            RecordType::Replayed => '3',
        }
    }

    fn parse(s: &str) -> Option<RecordType> {
        match s {
            "1" => Some(RecordType::Request),
            "2" => Some(RecordType::Response),
            "3" => Some(RecordType::Replayed),
            _ => None,
        }
    }
}

/// One record of a capture file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Record {
    /// Request, response or replayed response.
    pub kind: RecordType,
    /// Hex digits; the same for a request and its responses.
    pub id: String,
    /// Unix time in nanoseconds.
    pub timestamp_ns: u64,
    /// For responses: from sending the request to the response head, in nanoseconds.
    pub latency_ns: u64,
    /// The raw HTTP/1.x message.
    pub payload: Bytes,
    /// Where the record's meta line starts in the (uncompressed) file; 0 for records not
    /// read from a file.
    pub offset: u64,
}

fn unix_ns(t: SystemTime) -> u64 {
    t.duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX))
}

fn nanos(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}

impl Record {
    /// The request record (type 1) of a copied request: timestamp when it started, latency 0.
    pub fn request(req: &RequestCopy) -> Record {
        Record {
            kind: RecordType::Request,
            id: req.id.clone(),
            timestamp_ns: unix_ns(req.started),
            latency_ns: 0,
            payload: Bytes::from(req.to_http1()),
            offset: 0,
        }
    }

    /// The original response record (type 2): timestamp when its head arrived (request
    /// start plus latency), and its latency.
    pub fn response(req: &RequestCopy, resp: &ResponseCopy) -> Record {
        Record::answer(RecordType::Response, req, resp)
    }

    /// A replayed response record (type 3), timed like [`Record::response`].
    pub fn replayed(req: &RequestCopy, resp: &ResponseCopy) -> Record {
        Record::answer(RecordType::Replayed, req, resp)
    }

    fn answer(kind: RecordType, req: &RequestCopy, resp: &ResponseCopy) -> Record {
        Record {
            kind,
            id: req.id.clone(),
            timestamp_ns: unix_ns(req.started).saturating_add(nanos(resp.latency)),
            latency_ns: nanos(resp.latency),
            payload: Bytes::from(resp.to_http1()),
            offset: 0,
        }
    }

    /// The payload as a request, with the record's id and timestamp.
    pub fn to_request(&self) -> Result<RequestCopy, HttpError> {
        let mut r = http1::parse_request(&self.payload)?;
        r.id = self.id.clone();
        r.started = SystemTime::UNIX_EPOCH + Duration::from_nanos(self.timestamp_ns);
        Ok(r)
    }

    /// The payload as a response to a request with `method` (when known; see
    /// [`http1::parse_response_to`]), with the record's latency.
    pub fn to_response(&self, method: Option<&str>) -> Result<ResponseCopy, HttpError> {
        let mut r = http1::parse_response_to(method, &self.payload)?;
        r.latency = Duration::from_nanos(self.latency_ns);
        Ok(r)
    }
}

/// Whether `payload` has a line that is exactly `🐵🙈🙉`, which would end the record
/// early.
pub fn is_ambiguous(payload: &[u8]) -> bool {
    payload.split(|&b| b == b'\n').any(|l| l == MONKEYS)
}

fn valid_id(id: &str) -> bool {
    !id.is_empty() && id.len() <= 64 && id.bytes().all(|b| b.is_ascii_hexdigit())
}

/// Why a record was not written.
#[derive(Debug, thiserror::Error)]
pub enum WriteError {
    /// The id is not 1 to 64 hex digits.
    #[error("record id {0:?} is not 1 to 64 hex digits")]
    BadId(String),
    /// The payload has a line that is exactly the separator.
    #[error("the payload of record {0} has a line that is exactly the separator 🐵🙈🙉: the file would be ambiguous, so the record is not written")]
    Ambiguous(String),
    /// Writing failed.
    #[error("writing the capture: {0}")]
    Io(#[from] io::Error),
}

/// Writes records in GoReplay's format, exactly: `TYPE ID TIMESTAMP_NS LATENCY_NS\n`, the
/// payload, the separator (after every record, as GoReplay does).
#[derive(Debug)]
pub struct Writer<W: Write> {
    inner: W,
    records: u64,
}

impl<W: Write> Writer<W> {
    /// A writer to `inner` (buffer it: each record is several writes).
    pub fn new(inner: W) -> Writer<W> {
        Writer { inner, records: 0 }
    }

    /// Writes one record; refuses (and writes nothing) a bad id or an ambiguous payload.
    pub fn write(&mut self, r: &Record) -> Result<(), WriteError> {
        if !valid_id(&r.id) {
            return Err(WriteError::BadId(r.id.clone()));
        }
        if is_ambiguous(&r.payload) {
            return Err(WriteError::Ambiguous(r.id.clone()));
        }
        let meta = format!(
            "{} {} {} {}\n",
            r.kind.digit(),
            r.id,
            r.timestamp_ns,
            r.latency_ns
        );
        self.inner.write_all(meta.as_bytes())?;
        self.inner.write_all(&r.payload)?;
        self.inner.write_all(SEPARATOR)?;
        self.records += 1;
        Ok(())
    }

    /// Writes an exchange: its request record, then its response record.
    pub fn write_exchange(&mut self, ex: &Exchange) -> Result<(), WriteError> {
        let req = Record::request(&ex.request);
        let resp = Record::response(&ex.request, &ex.response);
        // Check both before writing either, so that a refused exchange leaves no half.
        for r in [&req, &resp] {
            if !valid_id(&r.id) {
                return Err(WriteError::BadId(r.id.clone()));
            }
            if is_ambiguous(&r.payload) {
                return Err(WriteError::Ambiguous(r.id.clone()));
            }
        }
        self.write(&req)?;
        self.write(&resp)
    }

    /// Records written so far.
    pub fn records(&self) -> u64 {
        self.records
    }

    /// Flushes the inner writer.
    pub fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }

    /// The inner writer.
    pub fn get_ref(&self) -> &W {
        &self.inner
    }

    /// The inner writer, unflushed.
    pub fn into_inner(self) -> W {
        self.inner
    }
}

/// A capture file being written: buffered, and gzip-compressed when its name ends in
/// `.gz`. Call [`Writer::close`] at the end: it writes the gzip trailer and flushes.
#[derive(Debug)]
pub enum FileSink {
    /// An uncompressed file.
    Plain(BufWriter<File>),
    /// A gzip-compressed file.
    Gzip(GzEncoder<BufWriter<File>>),
}

impl Write for FileSink {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self {
            FileSink::Plain(w) => w.write(buf),
            FileSink::Gzip(w) => w.write(buf),
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        match self {
            FileSink::Plain(w) => w.flush(),
            FileSink::Gzip(w) => w.flush(),
        }
    }
}

impl FileSink {
    /// Finishes the file: the gzip trailer when compressed, then everything flushed.
    pub fn finish(self) -> io::Result<()> {
        match self {
            FileSink::Plain(mut w) => w.flush(),
            FileSink::Gzip(w) => w.finish()?.flush(),
        }
    }
}

/// Creates (or truncates) a capture file at `path`, gzip-compressed when the name ends in
/// `.gz`.
pub fn create(path: impl AsRef<Path>) -> io::Result<Writer<FileSink>> {
    let path = path.as_ref();
    let file = BufWriter::with_capacity(64 * 1024, File::create(path)?);
    let gz = path
        .file_name()
        .is_some_and(|n| n.to_string_lossy().ends_with(".gz"));
    Ok(Writer::new(if gz {
        FileSink::Gzip(GzEncoder::new(file, Compression::default()))
    } else {
        FileSink::Plain(file)
    }))
}

impl Writer<FileSink> {
    /// Finishes the file (see [`FileSink::finish`]).
    pub fn close(self) -> io::Result<()> {
        self.inner.finish()
    }
}

/// What went wrong with a stretch of a capture file.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FormatErrorKind {
    /// The text between two separators is not a record (its meta line does not parse).
    Malformed,
    /// A payload line that is exactly the separator cut a record in two.
    Ambiguous,
    /// A record over [`MAX_RECORD`] bytes.
    TooLarge,
    /// Reading (or decompressing) failed; reading ends here.
    Io,
}

/// A problem at `offset` (bytes into the uncompressed file). The reader skipped what it
/// names and goes on, except after [`FormatErrorKind::Io`].
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("at byte {offset}: {message}")]
pub struct FormatError {
    /// Where the problem starts.
    pub offset: u64,
    /// What kind of problem.
    pub kind: FormatErrorKind,
    /// What is wrong and what was skipped.
    pub message: String,
}

enum Chunk {
    Text { offset: u64, text: Vec<u8> },
    TooLarge { offset: u64, len: u64 },
}

/// Reads records from a capture file, as an iterator of records and problems (see the
/// module documentation). A record is returned once the text after it has been read (to
/// tell a record cut in two by an ambiguous line from a complete one).
pub struct Reader<R: BufRead> {
    inner: R,
    /// Bytes consumed so far.
    offset: u64,
    line: Vec<u8>,
    pending: Option<Record>,
    /// Skipping the rest of a record cut in two, up to the next record.
    absorbing: bool,
    queue: VecDeque<Result<Record, FormatError>>,
    done: bool,
}

impl<R: BufRead> std::fmt::Debug for Reader<R> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Reader")
            .field("offset", &self.offset)
            .finish_non_exhaustive()
    }
}

/// Opens a capture file for reading; gzip-compressed files (also several gzip members one
/// after the other) are recognised by their magic bytes, whatever their name.
pub fn open(path: impl AsRef<Path>) -> io::Result<Reader<Box<dyn BufRead + Send>>> {
    let mut file = BufReader::with_capacity(64 * 1024, File::open(path)?);
    let gz = file.fill_buf()?.starts_with(&[0x1f, 0x8b]);
    let inner: Box<dyn BufRead + Send> = if gz {
        Box::new(BufReader::with_capacity(
            64 * 1024,
            MultiGzDecoder::new(file),
        ))
    } else {
        Box::new(file)
    };
    Ok(Reader::new(inner))
}

impl<R: BufRead> Reader<R> {
    /// A reader of the capture in `inner` (uncompressed).
    pub fn new(inner: R) -> Reader<R> {
        Reader {
            inner,
            offset: 0,
            line: Vec::new(),
            pending: None,
            absorbing: false,
            queue: VecDeque::new(),
            done: false,
        }
    }

    /// Reads one line (through its `\n`, or to the end) into `self.line`, keeping at most
    /// `room` bytes of it; returns the bytes consumed (0 at the end).
    fn read_line(&mut self, room: usize) -> io::Result<usize> {
        self.line.clear();
        let mut consumed = 0;
        loop {
            let buf = match self.inner.fill_buf() {
                Ok(b) => b,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e),
            };
            if buf.is_empty() {
                return Ok(consumed);
            }
            let (take, done) = match buf.iter().position(|&b| b == b'\n') {
                Some(i) => (i + 1, true),
                None => (buf.len(), false),
            };
            let keep = take.min(room.saturating_sub(self.line.len()));
            self.line.extend_from_slice(&buf[..keep]);
            self.inner.consume(take);
            consumed += take;
            self.offset += take as u64;
            if done {
                return Ok(consumed);
            }
        }
    }

    /// The text up to the next separator (without it), or to the end.
    fn next_chunk(&mut self) -> io::Result<Option<Chunk>> {
        let start = self.offset;
        let mut text: Vec<u8> = Vec::new();
        let mut lines = 0usize;
        let mut too_large = false;
        loop {
            let room = MAX_RECORD + 1 - text.len().min(MAX_RECORD);
            let n = self.read_line(room)?;
            if n == 0 {
                if too_large {
                    return Ok(Some(Chunk::TooLarge {
                        offset: start,
                        len: self.offset - start,
                    }));
                }
                if text.iter().all(u8::is_ascii_whitespace) {
                    return Ok(None);
                }
                return Ok(Some(Chunk::Text {
                    offset: start,
                    text,
                }));
            }
            if lines > 0 && n == SEPARATOR_LINE.len() && self.line == SEPARATOR_LINE {
                if too_large {
                    return Ok(Some(Chunk::TooLarge {
                        offset: start,
                        len: self.offset - start,
                    }));
                }
                // The newline before the monkeys belongs to the separator.
                text.pop();
                return Ok(Some(Chunk::Text {
                    offset: start,
                    text,
                }));
            }
            lines += 1;
            if too_large || text.len() + n > MAX_RECORD {
                too_large = true;
                text = Vec::new();
                continue;
            }
            text.extend_from_slice(&self.line);
        }
    }

    fn fill(&mut self) {
        match self.next_chunk() {
            Err(e) => {
                self.done = true;
                if let Some(p) = self.pending.take() {
                    self.queue.push_back(Ok(p));
                }
                self.queue.push_back(Err(FormatError {
                    offset: self.offset,
                    kind: FormatErrorKind::Io,
                    message: format!("reading stopped: {e}"),
                }));
            }
            Ok(None) => {
                self.done = true;
                if let Some(p) = self.pending.take() {
                    self.queue.push_back(Ok(p));
                }
            }
            Ok(Some(Chunk::TooLarge { offset, len })) => {
                if let Some(p) = self.pending.take() {
                    self.queue.push_back(Ok(p));
                }
                self.absorbing = false;
                self.queue.push_back(Err(FormatError {
                    offset,
                    kind: FormatErrorKind::TooLarge,
                    message: format!(
                        "a record of {len} bytes, over the {MAX_RECORD} allowed: skipped up to the next separator"
                    ),
                }));
            }
            Ok(Some(Chunk::Text { offset, text })) => {
                match parse_record(offset, text) {
                    Ok(record) => {
                        self.absorbing = false;
                        if let Some(p) = self.pending.replace(record) {
                            self.queue.push_back(Ok(p));
                        }
                    }
                    Err(message) => {
                        if self.absorbing {
                            return;
                        }
                        let sep_line = offset.saturating_sub(SEPARATOR_LINE.len() as u64);
                        match self.pending.take() {
                            Some(p) if cut_short(&p) => {
                                self.absorbing = true;
                                self.queue.push_back(Err(FormatError {
                                offset: p.offset,
                                kind: FormatErrorKind::Ambiguous,
                                message: format!(
                                    "ambiguous file: the record starting here (type {}, id {}) ends, by its own HTTP framing, \
                                     after the separator line at byte {sep_line}, and the text after that line is no record \
                                     ({message}): a payload line that is exactly 🐵🙈🙉 cut it in two. Skipped up to the next record.",
                                    p.kind.digit(),
                                    p.id
                                ),
                            }));
                            }
                            p => {
                                if let Some(p) = p {
                                    self.queue.push_back(Ok(p));
                                }
                                self.queue.push_back(Err(FormatError {
                                offset,
                                kind: FormatErrorKind::Malformed,
                                message: format!("malformed record, skipped up to the next separator: {message}"),
                            }));
                            }
                        }
                    }
                }
            }
        }
    }
}

/// Whether a record's payload does not end where its HTTP framing says (or cannot tell).
fn cut_short(r: &Record) -> bool {
    http1::framing_complete(&r.payload, r.kind == RecordType::Request) != Some(true)
}

fn parse_record(offset: u64, text: Vec<u8>) -> Result<Record, String> {
    let Some(nl) = text.iter().position(|&b| b == b'\n') else {
        return Err(format!(
            "no line end after the meta line {:?}",
            crate::compare::truncate_chars(&String::from_utf8_lossy(&text), 80)
        ));
    };
    let raw = &text[..nl];
    let raw = raw.strip_suffix(b"\r").unwrap_or(raw);
    let shown = || crate::compare::truncate_chars(&String::from_utf8_lossy(raw), 80);
    let meta =
        std::str::from_utf8(raw).map_err(|_| format!("meta line {:?} is not text", shown()))?;
    let fields: Vec<&str> = meta.split_ascii_whitespace().collect();
    if fields.len() < 3 {
        return Err(format!(
            "meta line {:?} is not `TYPE ID TIMESTAMP_NS LATENCY_NS`",
            shown()
        ));
    }
    let kind = RecordType::parse(fields[0]).ok_or_else(|| {
        format!(
            "meta line {:?}: type {:?} is not 1, 2 or 3",
            shown(),
            fields[0]
        )
    })?;
    let id = fields[1];
    if !valid_id(id) {
        return Err(format!(
            "meta line {:?}: id {id:?} is not hex digits",
            shown()
        ));
    }
    let number = |s: &str, what: &str| {
        s.parse::<u64>().map_err(|_| {
            format!(
                "meta line {:?}: {what} {s:?} is not a whole number",
                shown()
            )
        })
    };
    let timestamp_ns = number(fields[2], "timestamp")?;
    let latency_ns = match fields.get(3) {
        Some(l) => number(l, "latency")?,
        None => 0,
    };
    let id = id.to_string();
    let payload = Bytes::from(text).slice(nl + 1..);
    Ok(Record {
        kind,
        id,
        timestamp_ns,
        latency_ns,
        payload,
        offset,
    })
}

impl<R: BufRead> Iterator for Reader<R> {
    type Item = Result<Record, FormatError>;

    fn next(&mut self) -> Option<Self::Item> {
        loop {
            if let Some(item) = self.queue.pop_front() {
                return Some(item);
            }
            if self.done {
                return None;
            }
            self.fill();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    const ID: &str = "8b2e4a1c9f3d5e7a6b0c1d2e";

    /// A file as GoReplay writes it, by hand: CRLF payloads, a response body with newlines,
    /// a type-3 record, a malformed record, an old three-field meta line, a CRLF meta
    /// line with an extra field, and the separator after the last record.
    fn hand_written() -> Vec<u8> {
        let text = concat!(
            "1 8b2e4a1c9f3d5e7a6b0c1d2e 1700000000000000000 0\n",
            "GET /items/1 HTTP/1.1\r\nHost: shop\r\nUser-Agent: curl/8\r\n\r\n",
            "\n🐵🙈🙉\n",
            "2 8b2e4a1c9f3d5e7a6b0c1d2e 1700000000012000000 12000000\n",
            "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 24\r\n\r\n{\"id\":1,\n\"price\":12.5}\n\n",
            "\n🐵🙈🙉\n",
            "3 8b2e4a1c9f3d5e7a6b0c1d2e 1700000000020000000 9000000\n",
            "HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok",
            "\n🐵🙈🙉\n",
            "1 zzzz-not-hex 1700000000030000000 0\n",
            "GET /broken HTTP/1.1\r\n\r\n",
            "\n🐵🙈🙉\n",
            "1 aaaaaaaaaaaaaaaaaaaaaaaa 1700000001000000000\n",
            "POST /orders HTTP/1.1\r\nHost: shop\r\nContent-Length: 11\r\n\r\n{\"a\":\n\"b\"}\n",
            "\n🐵🙈🙉\n",
            "2 aaaaaaaaaaaaaaaaaaaaaaaa 1700000001005000000 5000000 extra\r\n",
            "HTTP/1.1 201 Created\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nnew\r\n0\r\n\r\n",
            "\n🐵🙈🙉\n",
        );
        text.as_bytes().to_vec()
    }

    fn offset_of(file: &[u8], needle: &str) -> u64 {
        file.windows(needle.len())
            .position(|w| w == needle.as_bytes())
            .unwrap() as u64
    }

    #[test]
    fn reads_a_hand_written_goreplay_file() {
        let file = hand_written();
        let items: Vec<Result<Record, FormatError>> = Reader::new(&file[..]).collect();
        assert_eq!(items.len(), 6, "{items:#?}");

        let r = items[0].as_ref().unwrap();
        assert_eq!(
            (
                r.kind,
                r.id.as_str(),
                r.timestamp_ns,
                r.latency_ns,
                r.offset
            ),
            (RecordType::Request, ID, 1_700_000_000_000_000_000, 0, 0)
        );
        assert_eq!(
            &r.payload[..],
            b"GET /items/1 HTTP/1.1\r\nHost: shop\r\nUser-Agent: curl/8\r\n\r\n"
        );
        let req = r.to_request().unwrap();
        assert_eq!(
            (req.method.as_str(), req.target.as_str(), req.id.as_str()),
            ("GET", "/items/1", ID)
        );
        assert_eq!(
            req.started,
            SystemTime::UNIX_EPOCH + Duration::from_nanos(1_700_000_000_000_000_000)
        );
        assert_eq!(
            req.headers[1],
            ("user-agent".to_string(), Bytes::from_static(b"curl/8"))
        );

        let r = items[1].as_ref().unwrap();
        assert_eq!(
            (r.kind, r.latency_ns, r.offset),
            (RecordType::Response, 12_000_000, offset_of(&file, "2 8b2e"))
        );
        let resp = r.to_response(Some("GET")).unwrap();
        assert_eq!(
            (resp.status, &resp.body[..], resp.latency),
            (
                200,
                &b"{\"id\":1,\n\"price\":12.5}\n\n"[..],
                Duration::from_millis(12)
            )
        );

        let r = items[2].as_ref().unwrap();
        assert_eq!(
            (r.kind, r.offset),
            (RecordType::Replayed, offset_of(&file, "3 8b2e"))
        );
        assert_eq!(&r.to_response(None).unwrap().body[..], b"ok");

        let e = items[3].as_ref().unwrap_err();
        assert_eq!(
            (e.kind, e.offset),
            (FormatErrorKind::Malformed, offset_of(&file, "1 zzzz"))
        );
        assert!(
            e.to_string()
                .starts_with(&format!("at byte {}: malformed record", e.offset)),
            "{e}"
        );
        assert!(
            e.message.contains("id \"zzzz-not-hex\" is not hex digits"),
            "{e}"
        );

        let r = items[4].as_ref().unwrap();
        assert_eq!(
            (r.kind, r.latency_ns, r.offset),
            (RecordType::Request, 0, offset_of(&file, "1 aaaa"))
        );
        let req = r.to_request().unwrap();
        assert_eq!(
            (req.method.as_str(), &req.body[..]),
            ("POST", &b"{\"a\":\n\"b\"}\n"[..])
        );

        let r = items[5].as_ref().unwrap();
        assert_eq!(
            (r.kind, r.timestamp_ns, r.latency_ns),
            (RecordType::Response, 1_700_000_001_005_000_000, 5_000_000)
        );
        let resp = r.to_response(Some("POST")).unwrap();
        assert_eq!((resp.status, &resp.body[..]), (201, &b"new"[..]));
    }

    #[test]
    fn lenient_reading() {
        // No final separator; leading blank lines are content of a malformed chunk only if
        // not whitespace-only at the end.
        let table: &[(&str, &[Result<(RecordType, &str), FormatErrorKind>])] = &[
            (
                "1 ab 1 2\nGET / HTTP/1.1\r\n\r\n",
                &[Ok((RecordType::Request, "GET / HTTP/1.1\r\n\r\n"))],
            ),
            (
                "1 ab 1 2\nGET / HTTP/1.1\r\n\r\n\n🐵🙈🙉\n\n",
                &[Ok((RecordType::Request, "GET / HTTP/1.1\r\n\r\n"))],
            ),
            ("1  ab   1 2\r\nx", &[Ok((RecordType::Request, "x"))]),
            ("", &[]),
            (
                "7 ab 1 2\nx\n🐵🙈🙉\n2 ab 1 2\ny",
                &[
                    Err(FormatErrorKind::Malformed),
                    Ok((RecordType::Response, "y")),
                ],
            ),
            ("1 ab 1\n", &[Ok((RecordType::Request, ""))]),
            ("1 ab\nx", &[Err(FormatErrorKind::Malformed)]),
            ("1 ab 1 -5\nx", &[Err(FormatErrorKind::Malformed)]),
            ("no meta line at all", &[Err(FormatErrorKind::Malformed)]),
            ("🐵🙈🙉\n1 ab 1 2\nx", &[Err(FormatErrorKind::Malformed)]),
        ];
        for (text, want) in table {
            let got: Vec<Result<(RecordType, String), FormatErrorKind>> =
                Reader::new(text.as_bytes())
                    .map(|i| {
                        i.map(|r| (r.kind, String::from_utf8_lossy(&r.payload).into_owned()))
                            .map_err(|e| e.kind)
                    })
                    .collect();
            let want: Vec<Result<(RecordType, String), FormatErrorKind>> = want
                .iter()
                .map(|w| w.map(|(k, p)| (k, p.to_string())))
                .collect();
            assert_eq!(got, want, "{text:?}");
        }
    }

    #[test]
    fn a_separator_line_in_a_payload_is_reported_as_ambiguous() {
        let body = "before\n🐵🙈🙉\nafter";
        let record = format!(
            "1 {ID} 1 0\nPOST /x HTTP/1.1\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        );
        let next = format!("1 {ID} 2 0\nGET /next HTTP/1.1\r\n\r\n");
        let file = format!("{record}\n🐵🙈🙉\n{next}\n🐵🙈🙉\n");
        let items: Vec<Result<Record, FormatError>> = Reader::new(file.as_bytes()).collect();
        assert_eq!(items.len(), 2, "{items:#?}");
        let e = items[0].as_ref().unwrap_err();
        assert_eq!((e.kind, e.offset), (FormatErrorKind::Ambiguous, 0));
        let line_at = offset_of(file.as_bytes(), "🐵🙈🙉\nafter");
        assert!(
            e.message
                .contains(&format!("separator line at byte {line_at}")),
            "{e}"
        );
        assert!(e.message.contains("ambiguous"), "{e}");
        assert_eq!(
            items[1].as_ref().unwrap().to_request().unwrap().target,
            "/next"
        );

        // A complete record followed by something that is no record: only that is malformed.
        let file = format!("{next}\n🐵🙈🙉\nrubbish\n🐵🙈🙉\n{next}");
        let kinds: Vec<Result<u64, FormatErrorKind>> = Reader::new(file.as_bytes())
            .map(|i| i.map(|r| r.offset).map_err(|e| e.kind))
            .collect();
        assert_eq!(
            kinds,
            vec![
                Ok(0),
                Err(FormatErrorKind::Malformed),
                Ok(offset_of(file.as_bytes(), "rubbish") + 8 + SEPARATOR_LINE.len() as u64)
            ]
        );

        // The writer refuses what would be ambiguous.
        let mut w = Writer::new(Vec::new());
        let r = Record {
            kind: RecordType::Request,
            id: ID.into(),
            timestamp_ns: 1,
            latency_ns: 0,
            payload: Bytes::from(record.split_once('\n').unwrap().1.to_string()),
            offset: 0,
        };
        assert!(matches!(w.write(&r), Err(WriteError::Ambiguous(_))));
        for payload in ["🐵🙈🙉\nx", "x\n🐵🙈🙉", "🐵🙈🙉"] {
            assert!(is_ambiguous(payload.as_bytes()), "{payload:?}");
        }
        for payload in ["x🐵🙈🙉\n", "🐵🙈🙉 \n", "🐵🙈🙉\r\n"] {
            assert!(!is_ambiguous(payload.as_bytes()), "{payload:?}");
        }
        assert!(w.into_inner().is_empty());
    }

    fn exchange() -> Exchange {
        Exchange {
            request: Arc::new(RequestCopy {
                id: ID.into(),
                started: SystemTime::UNIX_EPOCH + Duration::from_nanos(1_700_000_000_123_456_789),
                method: "POST".into(),
                target: "/items?x=1".into(),
                headers: vec![
                    ("host".into(), Bytes::from_static(b"shop")),
                    (
                        "content-type".into(),
                        Bytes::from_static(b"application/json"),
                    ),
                ],
                body: Bytes::from_static(b"{\"name\":\n\"mug\"}"),
                body_truncated: false,
            }),
            response: ResponseCopy {
                status: 201,
                headers: vec![(
                    "content-type".into(),
                    Bytes::from_static(b"application/json"),
                )],
                body: Bytes::from_static(b"{\"id\":7}\n"),
                body_truncated: false,
                latency: Duration::from_micros(1500),
            },
        }
    }

    #[test]
    fn writes_exactly_and_round_trips() {
        let ex = exchange();
        let mut w = Writer::new(Vec::new());
        w.write_exchange(&ex).unwrap();
        assert_eq!(w.records(), 2);
        let bytes = w.into_inner();
        let want = format!(
            "1 {ID} 1700000000123456789 0\n\
             POST /items?x=1 HTTP/1.1\r\nhost: shop\r\ncontent-type: application/json\r\ncontent-length: 15\r\n\r\n{{\"name\":\n\"mug\"}}\
             \n🐵🙈🙉\n\
             2 {ID} 1700000000124956789 1500000\n\
             HTTP/1.1 201 Created\r\ncontent-type: application/json\r\ncontent-length: 9\r\n\r\n{{\"id\":7}}\n\
             \n🐵🙈🙉\n"
        );
        assert_eq!(String::from_utf8_lossy(&bytes), want);

        let records: Vec<Record> = Reader::new(&bytes[..]).map(Result::unwrap).collect();
        assert_eq!(records.len(), 2);
        let req = records[0].to_request().unwrap();
        assert_eq!(
            (
                req.id.as_str(),
                req.started,
                &req.method,
                &req.target,
                &req.body
            ),
            (
                ID,
                ex.request.started,
                &ex.request.method,
                &ex.request.target,
                &ex.request.body
            )
        );
        let resp = records[1].to_response(Some("POST")).unwrap();
        assert_eq!(
            (resp.status, &resp.body, resp.latency),
            (201, &ex.response.body, ex.response.latency)
        );

        let mut bad = Record::request(&ex.request);
        bad.id = "not hex!".into();
        assert!(matches!(
            Writer::new(Vec::new()).write(&bad),
            Err(WriteError::BadId(_))
        ));
    }

    #[test]
    fn gzip_files_by_name_on_write_and_by_magic_on_read() {
        let dir =
            std::env::temp_dir().join(format!("turnout-shadow-goreplay-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        for name in ["capture.gor.gz", "capture.gor"] {
            let path = dir.join(name);
            let mut w = create(&path).unwrap();
            for _ in 0..3 {
                w.write_exchange(&exchange()).unwrap();
            }
            w.close().unwrap();
            let raw = std::fs::read(&path).unwrap();
            assert_eq!(
                raw.starts_with(&[0x1f, 0x8b]),
                name.ends_with(".gz"),
                "{name}"
            );
            let records: Vec<Record> = open(&path).unwrap().map(Result::unwrap).collect();
            assert_eq!(records.len(), 6, "{name}");
            assert_eq!(records[2].to_request().unwrap().target, "/items?x=1");
        }
        // The hand-written file, gzipped by another writer, reads the same.
        let path = dir.join("theirs.gz");
        let mut gz = GzEncoder::new(File::create(&path).unwrap(), Compression::fast());
        gz.write_all(&hand_written()).unwrap();
        gz.finish().unwrap();
        let from_gz: Vec<Result<Record, FormatError>> = open(&path).unwrap().collect();
        let plain: Vec<Result<Record, FormatError>> = Reader::new(&hand_written()[..]).collect();
        assert_eq!(from_gz, plain);
        // A corrupt gzip stream ends reading with an error, not silently.
        let mut corrupt = std::fs::read(&path).unwrap();
        let n = corrupt.len();
        corrupt.truncate(n / 2);
        std::fs::write(&path, &corrupt).unwrap();
        let items: Vec<Result<Record, FormatError>> = open(&path).unwrap().collect();
        assert!(
            items
                .iter()
                .any(|i| matches!(i, Err(e) if e.kind == FormatErrorKind::Io)),
            "{items:?}"
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
