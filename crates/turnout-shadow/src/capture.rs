//! Writing a capture — a byte stream of exact GoReplay records, as the router's
//! `POST /api/v1/capture` sends it — to files where the client runs: [`CaptureFiles`].
//!
//! The stream is split into records at their separators (the router writes exact
//! GoReplay with a writer that refuses a payload holding a separator line, so the first
//! separator after a record's start is its end), each record is checked with the format's
//! [`Reader`] before it is written again, byte for byte, with the format's [`Writer`]
//! (gzip when the name ends in `.gz`). With a size limit, a new file starts before a
//! record that would grow the current one past it — a record is never split between
//! files, and one larger than the limit gets a file of its own — named by
//! [`rotated_name`]. [`CaptureFiles::finish`] closes the last file cleanly (the gzip
//! trailer written).

use std::io;
use std::path::{Path, PathBuf};

use crate::goreplay::{self, FileSink, Reader, Record, RecordType, Writer, SEPARATOR};

/// Why writing a capture failed (a record that does not read back is no failure: see
/// [`Rejected`]).
#[derive(Debug, thiserror::Error)]
pub enum CaptureError {
    /// A capture file could not be created.
    #[error("cannot create the capture file {}: {source}", path.display())]
    Create {
        /// The file.
        path: PathBuf,
        /// Why.
        source: io::Error,
    },
    /// A record could not be written.
    #[error("writing the capture file {}: {source}", path.display())]
    Write {
        /// The file.
        path: PathBuf,
        /// Why.
        source: goreplay::WriteError,
    },
    /// A file could not be finished (flushed, its gzip trailer written).
    #[error("finishing the capture file {}: {source}", path.display())]
    Finish {
        /// The file.
        path: PathBuf,
        /// Why.
        source: io::Error,
    },
    /// The stream went on for longer than any record without a separator.
    #[error("the stream holds no record separator in its last {pending} bytes: it is not a GoReplay capture")]
    NoSeparator {
        /// The bytes since the last separator.
        pending: usize,
    },
}

/// A stretch of the stream that is not one record, reported and not written.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Rejected {
    /// Where it starts in the stream.
    pub offset: u64,
    /// Why it is not a record.
    pub why: String,
}

/// What was written, by record type, and what was not.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CaptureCounts {
    /// Request records (type 1).
    pub requests: u64,
    /// Response records (type 2).
    pub responses: u64,
    /// Replayed-response records (type 3).
    pub other: u64,
    /// Stretches that did not read back as one record ([`Rejected`]).
    pub bad: u64,
}

impl CaptureCounts {
    /// Whole exchanges: requests with their response.
    pub fn exchanges(&self) -> u64 {
        self.requests.min(self.responses)
    }

    /// Records written.
    pub fn records(&self) -> u64 {
        self.requests + self.responses + self.other
    }
}

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
pub fn rotated_name(path: &Path, n: u32) -> PathBuf {
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

/// A capture stream being written to files: the current file, rotation, and what was
/// written.
pub struct CaptureFiles {
    base: PathBuf,
    limit: Option<u64>,
    current: Option<Writer<FileSink>>,
    /// Bytes written to the current file (before compression).
    size: u64,
    written: Vec<PathBuf>,
    split: Splitter,
    counts: CaptureCounts,
}

impl CaptureFiles {
    /// Creates the first file, `base`; with `limit`, a new one starts before a record
    /// that would grow the current one past `limit` bytes (counted before compression).
    pub fn create(base: &Path, limit: Option<u64>) -> Result<CaptureFiles, CaptureError> {
        let mut f = CaptureFiles {
            base: base.to_owned(),
            limit,
            current: None,
            size: 0,
            written: Vec::new(),
            split: Splitter::default(),
            counts: CaptureCounts::default(),
        };
        f.next_file()?;
        Ok(f)
    }

    /// Takes the next bytes of the stream and writes every record they complete. Returns
    /// the stretches that did not read back as one record (not written: they are for the
    /// caller to report); fails only when a file cannot be written, or when the stream
    /// goes on for longer than any record without a separator.
    pub fn push(&mut self, data: &[u8]) -> Result<Vec<Rejected>, CaptureError> {
        self.split.push(data);
        let mut rejected = Vec::new();
        while let Some((offset, raw)) = self.split.next_record() {
            if let Err(r) = self.write_record(offset, &raw)? {
                rejected.push(r);
            }
        }
        if self.split.pending() > goreplay::MAX_RECORD + 1024 {
            return Err(CaptureError::NoSeparator {
                pending: self.split.pending(),
            });
        }
        Ok(rejected)
    }

    /// Bytes received that are no whole record (yet): at the end, an incomplete record
    /// that is not written.
    pub fn pending(&self) -> usize {
        self.split.pending()
    }

    /// What was written so far.
    pub fn counts(&self) -> CaptureCounts {
        self.counts
    }

    /// The files, in the order they were started.
    pub fn files(&self) -> &[PathBuf] {
        &self.written
    }

    /// Finishes the current file (the gzip trailer written, everything flushed); more
    /// records would start a new one. Finishing twice does nothing.
    pub fn finish(&mut self) -> Result<(), CaptureError> {
        if let Some(w) = self.current.take() {
            let path = self.written.last().cloned().unwrap_or_default();
            w.close()
                .map_err(|source| CaptureError::Finish { path, source })?;
        }
        Ok(())
    }

    /// Gives up: closes the files and removes them (nothing was captured worth keeping).
    pub fn discard(mut self) {
        if let Some(w) = self.current.take() {
            let _ = w.close();
        }
        for path in &self.written {
            let _ = std::fs::remove_file(path);
        }
    }

    fn next_file(&mut self) -> Result<(), CaptureError> {
        self.finish()?;
        let path = rotated_name(&self.base, self.written.len() as u32);
        let w = goreplay::create(&path).map_err(|source| CaptureError::Create {
            path: path.clone(),
            source,
        })?;
        self.current = Some(w);
        self.size = 0;
        self.written.push(path);
        Ok(())
    }

    /// Checks one record from the stream and writes it; one that does not read back is
    /// returned as `Err(Rejected)`, not written.
    fn write_record(
        &mut self,
        offset: u64,
        raw: &[u8],
    ) -> Result<Result<(), Rejected>, CaptureError> {
        let mut items = Reader::new(raw);
        let record = match (items.next(), items.next()) {
            (Some(Ok(r)), None) => r,
            (first, _) => {
                self.counts.bad += 1;
                let why = match first {
                    Some(Err(e)) => e.message,
                    _ => "not one record".into(),
                };
                return Ok(Err(Rejected { offset, why }));
            }
        };
        self.write(&record, raw.len() as u64)?;
        match record.kind {
            RecordType::Request => self.counts.requests += 1,
            RecordType::Response => self.counts.responses += 1,
            RecordType::Replayed => self.counts.other += 1,
        }
        Ok(Ok(()))
    }

    fn write(&mut self, record: &Record, len: u64) -> Result<(), CaptureError> {
        let full = self
            .limit
            .is_some_and(|limit| self.size > 0 && self.size + len > limit);
        if full || self.current.is_none() {
            self.next_file()?;
        }
        let path = self.written.last().cloned().unwrap_or_default();
        let Some(w) = self.current.as_mut() else {
            return Ok(());
        };
        w.write(record)
            .map_err(|source| CaptureError::Write { path, source })?;
        self.size += len;
        Ok(())
    }
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

    #[test]
    fn files_rotate_between_records_and_bad_stretches_are_not_written() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path();
        let base = dir.join("c.gor");
        let mut w = Writer::new(Vec::new());
        for i in 0..4u32 {
            w.write(&Record {
                kind: if i % 2 == 0 {
                    RecordType::Request
                } else {
                    RecordType::Response
                },
                id: format!("{:024x}", i / 2),
                timestamp_ns: u64::from(i),
                latency_ns: 0,
                payload: bytes::Bytes::from(format!("GET /{i} HTTP/1.1\r\n\r\n")),
                offset: 0,
            })
            .unwrap();
        }
        let mut stream = w.into_inner();
        let one = stream.len() / 4;
        stream.extend_from_slice("not a record\n🐵🙈🙉\n".as_bytes());
        stream.extend_from_slice(b"1 00 5 0\nGET /cut");
        // Room for two records per file.
        let mut files = CaptureFiles::create(&base, Some(2 * one as u64 + 1)).unwrap();
        let mut rejected = Vec::new();
        for piece in stream.chunks(5) {
            rejected.extend(files.push(piece).unwrap());
        }
        files.finish().unwrap();
        assert_eq!(rejected.len(), 1, "{rejected:?}");
        assert_eq!(rejected[0].offset, 4 * one as u64);
        assert_eq!(files.pending(), "1 00 5 0\nGET /cut".len());
        let c = files.counts();
        assert_eq!(
            (c.requests, c.responses, c.bad, c.exchanges()),
            (2, 2, 1, 2)
        );
        assert_eq!(files.files(), [base.clone(), dir.join("c_1.gor")]);
        for f in files.files() {
            let records = Reader::new(io::BufReader::new(std::fs::File::open(f).unwrap()));
            assert_eq!(records.filter(Result::is_ok).count(), 2, "{}", f.display());
        }
        files.discard();
        assert!(!base.exists() && !dir.join("c_1.gor").exists());
    }
}
