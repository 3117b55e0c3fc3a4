//! Zero-copy views of a request or a response head, whichever protocol it came in on:
//! the bytes of an HTTP/1.1 head turnout wrote itself, or `http`'s parts (HTTP/2). The
//! policies that read heads — the taps, the session pin, the access log — are written
//! once over these traits, and each protocol pays only for its own view (generic, never
//! boxed).

use bytes::Bytes;

use crate::http1;

/// A request head as forwarded upstream.
pub(crate) trait RequestHead {
    /// The method.
    fn method(&self) -> &str;
    /// The target, in origin form.
    fn target(&self) -> &str;
    /// The header lines as `(name, value)`, names in any case.
    fn headers(&self) -> impl Iterator<Item = (&[u8], &[u8])>;

    /// The first value of header `name` (lower case).
    fn header(&self, name: &str) -> Option<&[u8]> {
        self.headers()
            .find(|(n, _)| n.eq_ignore_ascii_case(name.as_bytes()))
            .map(|(_, v)| v)
    }

    /// The header lines as owned pairs, names in lower case (for a tap's copy).
    fn header_pairs(&self) -> Vec<(String, Bytes)> {
        self.headers()
            .map(|(n, v)| {
                (
                    String::from_utf8_lossy(n).to_ascii_lowercase(),
                    Bytes::copy_from_slice(v),
                )
            })
            .collect()
    }
}

/// A response head as relayed to the client.
pub(crate) trait ResponseHead {
    /// The final status.
    fn status(&self) -> u16;
    /// The header lines as `(name, value)`, names in any case.
    fn headers(&self) -> impl Iterator<Item = (&[u8], &[u8])>;

    /// The header lines as owned pairs, names in lower case (for a tap's copy).
    fn header_pairs(&self) -> Vec<(String, Bytes)> {
        self.headers()
            .map(|(n, v)| {
                (
                    String::from_utf8_lossy(n).to_ascii_lowercase(),
                    Bytes::copy_from_slice(v),
                )
            })
            .collect()
    }
}

/// The lines of a head turnout wrote as owned pairs, from one copy of the head.
fn pairs_of_written(head: &[u8]) -> Vec<(String, Bytes)> {
    let whole = Bytes::copy_from_slice(head);
    http1::head_lines(head)
        .map(|(n, v)| {
            let start = v.as_ptr() as usize - head.as_ptr() as usize;
            (
                String::from_utf8_lossy(n).to_ascii_lowercase(),
                whole.slice(start..start + v.len()),
            )
        })
        .collect()
}

/// An HTTP/1.1 request head turnout wrote for the upstream. Made for every request and
/// read only by what needs it (a tap, the pin, the access log), so the request line is
/// parsed only then.
pub(crate) struct H1Request<'a> {
    head: &'a [u8],
}

impl<'a> H1Request<'a> {
    /// The view of `head` (a head turnout wrote: its request line always reads).
    pub(crate) fn new(head: &'a [u8]) -> H1Request<'a> {
        H1Request { head }
    }

    fn line(&self) -> (&'a str, &'a str) {
        http1::request_line(self.head).unwrap_or(("-", "-"))
    }
}

impl RequestHead for H1Request<'_> {
    fn method(&self) -> &str {
        self.line().0
    }

    fn target(&self) -> &str {
        self.line().1
    }

    fn headers(&self) -> impl Iterator<Item = (&[u8], &[u8])> {
        http1::head_lines(self.head)
    }

    fn header_pairs(&self) -> Vec<(String, Bytes)> {
        // One copy of the head; the values are slices of it.
        pairs_of_written(self.head)
    }
}

impl RequestHead for http::request::Parts {
    fn method(&self) -> &str {
        self.method.as_str()
    }

    fn target(&self) -> &str {
        self.uri.path_and_query().map_or("/", |p| p.as_str())
    }

    fn headers(&self) -> impl Iterator<Item = (&[u8], &[u8])> {
        self.headers
            .iter()
            .map(|(n, v)| (n.as_str().as_bytes(), v.as_bytes()))
    }
}

/// An HTTP/1.1 response head turnout wrote for the client (interim heads may precede
/// the final one).
pub(crate) struct H1Response<'a> {
    status: u16,
    head: &'a [u8],
}

impl<'a> H1Response<'a> {
    /// The view of the final head in `out` (heads turnout wrote: they always read).
    pub(crate) fn new(out: &'a [u8]) -> H1Response<'a> {
        let (status, start) = http1::final_status(out).unwrap_or((0, out.len()));
        H1Response {
            status,
            head: &out[start..],
        }
    }
}

impl ResponseHead for H1Response<'_> {
    fn status(&self) -> u16 {
        self.status
    }

    fn headers(&self) -> impl Iterator<Item = (&[u8], &[u8])> {
        http1::head_lines(self.head)
    }

    fn header_pairs(&self) -> Vec<(String, Bytes)> {
        // One copy of the head; the values are slices of it.
        pairs_of_written(self.head)
    }
}

impl ResponseHead for http::response::Parts {
    fn status(&self) -> u16 {
        self.status.as_u16()
    }

    fn headers(&self) -> impl Iterator<Item = (&[u8], &[u8])> {
        self.headers
            .iter()
            .map(|(n, v)| (n.as_str().as_bytes(), v.as_bytes()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn both_protocols_read_the_same() {
        let h1 = b"GET /a?b HTTP/1.1\r\nhost: x\r\nX-Request-Id: r1\r\ncookie: a=1\r\n\r\n";
        let v = H1Request::new(h1);
        let (parts, ()) = http::Request::get("/a?b")
            .header("host", "x")
            .header("x-request-id", "r1")
            .header("cookie", "a=1")
            .body(())
            .unwrap()
            .into_parts();
        for (method, target, id, pairs) in [
            (
                v.method(),
                v.target(),
                v.header("x-request-id"),
                v.header_pairs(),
            ),
            (
                parts.method(),
                RequestHead::target(&parts),
                parts.header("x-request-id"),
                parts.header_pairs(),
            ),
        ] {
            assert_eq!((method, target, id), ("GET", "/a?b", Some(&b"r1"[..])));
            let names: Vec<_> = pairs.iter().map(|(n, _)| n.as_str()).collect();
            assert_eq!(names, ["host", "x-request-id", "cookie"]);
        }
        let out = b"HTTP/1.1 103 Early Hints\r\nlink: x\r\n\r\nHTTP/1.1 201 Created\r\nset-cookie: s=1\r\n\r\n";
        let r = H1Response::new(out);
        assert_eq!(r.status(), 201);
        assert_eq!(
            r.headers().collect::<Vec<_>>(),
            vec![(&b"set-cookie"[..], &b"s=1"[..])]
        );
    }
}
