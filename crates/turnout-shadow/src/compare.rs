//! Comparing two responses to the same request: status, headers, body.
//!
//! Each difference is named by a `path` (the *field* that noise cancellation counts):
//!
//! | path | what differs |
//! |---|---|
//! | `status` | the status code |
//! | `header.<name>` | a header (name in lower case); several fields of one name are compared as their values joined with `, ` |
//! | `body<json-pointer>` | a JSON body, at that RFC 6901 pointer: `body/items/0/price`; `body` is the root |
//! | `body:line <n>` | a text body: a run of changed lines starting at line `n` (1-based) of the live body |
//! | `body` | a body that is neither JSON nor text (or was truncated), compared whole by its bytes; or JSON against non-JSON |
//! | `error` | the candidate sent no response at all (see [`crate::Aggregator::add`]) |
//!
//! and by a [`DiffKind`]. At most [`MAX_DIFFERENCES`] differences are reported per pair of
//! responses; the rest are dropped (the pair differs all the same).

use std::collections::BTreeMap;
use std::fmt::Write as _;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::linediff;
use crate::types::ResponseCopy;

/// Headers never compared, besides those in [`CompareOptions::ignore_headers`]: they differ
/// between any two responses (`date`, `age`, timing headers, request ids), or describe the
/// framing rather than the content (`content-length`, `transfer-encoding`, hop-by-hop
/// headers) — a changed body is reported as such.
pub const DEFAULT_IGNORED_HEADERS: &[&str] = &[
    "date",
    "age",
    "connection",
    "keep-alive",
    "transfer-encoding",
    "content-length",
    "x-request-id",
    "x-correlation-id",
    "x-response-time",
    "x-runtime",
    "server-timing",
];

/// The most differences [`compare`] reports for one pair of responses.
pub const MAX_DIFFERENCES: usize = 50;

/// The longest rendering of a value in a [`Difference`], in characters (an ellipsis marks
/// a cut).
pub const MAX_RENDERED: usize = 200;

/// What to leave out of a comparison.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CompareOptions {
    /// Header names (any case) not to compare, in addition to
    /// [`DEFAULT_IGNORED_HEADERS`].
    pub ignore_headers: Vec<String>,
    /// JSON pointers (RFC 6901, optionally written with a leading `body`) of parts of JSON
    /// bodies not to compare, with everything below them. A segment `*` matches any one
    /// key or array index (so a key that is literally `*` cannot be named). `""` or
    /// `"body"` ignores the whole JSON body.
    pub ignore_json: Vec<String>,
}

/// What kind of difference a [`Difference`] is. Serialized in lower case.
#[derive(
    Clone,
    Copy,
    Debug,
    PartialEq,
    Eq,
    Hash,
    PartialOrd,
    Ord,
    Serialize,
    Deserialize,
    utoipa::ToSchema,
)]
#[serde(rename_all = "lowercase")]
pub enum DiffKind {
    /// Same type, another value (also: a changed status, header value, run of text lines,
    /// or binary body).
    Value,
    /// Another JSON type (a number became a string), or JSON against non-JSON.
    Type,
    /// The live response has it, the candidate not.
    Missing,
    /// The candidate has it, the live response not.
    Extra,
    /// A JSON array with the same elements in another order.
    Order,
    /// A JSON array of another length.
    Length,
}

impl DiffKind {
    /// The lower-case name, as serialized.
    pub fn as_str(self) -> &'static str {
        match self {
            DiffKind::Value => "value",
            DiffKind::Type => "type",
            DiffKind::Missing => "missing",
            DiffKind::Extra => "extra",
            DiffKind::Order => "order",
            DiffKind::Length => "length",
        }
    }
}

impl std::fmt::Display for DiffKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One difference between a live response and another one.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Difference {
    /// Which part differs (see the module documentation).
    pub path: String,
    /// How it differs.
    pub kind: DiffKind,
    /// The live side, rendered short (at most [`MAX_RENDERED`] characters; `(absent)`
    /// when missing there).
    pub live: String,
    /// The other side, rendered the same way.
    pub candidate: String,
}

const ABSENT: &str = "(absent)";

/// The differences between the `live` response and `other` (the candidate's, or the live
/// slot's own second answer), in the order status, headers (by name), body; empty when
/// they match.
pub fn compare(
    live: &ResponseCopy,
    other: &ResponseCopy,
    opts: &CompareOptions,
) -> Vec<Difference> {
    Compiled::new(opts).compare(live, other)
}

/// [`CompareOptions`] prepared for many comparisons.
#[derive(Clone, Debug)]
pub(crate) struct Compiled {
    ignore_headers: Vec<String>,
    /// Each pattern's segments; `None` for a pattern that ignores the whole body.
    ignore_json: Vec<Vec<String>>,
    ignore_whole_json: bool,
}

impl Compiled {
    pub(crate) fn new(opts: &CompareOptions) -> Compiled {
        let mut ignore_headers: Vec<String> = DEFAULT_IGNORED_HEADERS
            .iter()
            .map(|h| h.to_string())
            .chain(
                opts.ignore_headers
                    .iter()
                    .map(|h| h.trim().to_ascii_lowercase()),
            )
            .collect();
        ignore_headers.sort();
        ignore_headers.dedup();
        let mut ignore_json = Vec::new();
        let mut ignore_whole_json = false;
        for p in &opts.ignore_json {
            let p = p.trim();
            let p = p.strip_prefix("body").unwrap_or(p);
            if p.is_empty() {
                ignore_whole_json = true;
                continue;
            }
            // A pointer without its leading slash is taken as if it had one.
            let p = p.strip_prefix('/').unwrap_or(p);
            ignore_json.push(p.split('/').map(unescape_segment).collect());
        }
        Compiled {
            ignore_headers,
            ignore_json,
            ignore_whole_json,
        }
    }

    pub(crate) fn header_ignored(&self, name: &str) -> bool {
        self.ignore_headers
            .binary_search_by(|h| h.as_str().cmp(name))
            .is_ok()
    }

    pub(crate) fn compare(&self, live: &ResponseCopy, other: &ResponseCopy) -> Vec<Difference> {
        let mut out = Out::default();
        if live.status != other.status {
            out.push(
                "status".into(),
                DiffKind::Value,
                live.status.to_string(),
                other.status.to_string(),
            );
        }
        self.compare_headers(live, other, &mut out);
        self.compare_bodies(live, other, &mut out);
        out.diffs
    }

    fn compare_headers(&self, live: &ResponseCopy, other: &ResponseCopy, out: &mut Out) {
        let a = self.header_map(live);
        let b = self.header_map(other);
        let mut names: Vec<&String> = a.keys().chain(b.keys()).collect();
        names.sort();
        names.dedup();
        for name in names {
            let path = format!("header.{name}");
            match (a.get(name), b.get(name)) {
                (Some(x), Some(y)) if x != y => {
                    out.push(path, DiffKind::Value, short(x), short(y));
                }
                (Some(x), None) => out.push(path, DiffKind::Missing, short(x), ABSENT.into()),
                (None, Some(y)) => out.push(path, DiffKind::Extra, ABSENT.into(), short(y)),
                _ => {}
            }
        }
    }

    fn header_map(&self, r: &ResponseCopy) -> BTreeMap<String, String> {
        let mut map: BTreeMap<String, String> = BTreeMap::new();
        for (name, value) in &r.headers {
            let name = name.to_ascii_lowercase();
            if self.header_ignored(&name) {
                continue;
            }
            let value = String::from_utf8_lossy(value);
            map.entry(name)
                .and_modify(|v| {
                    v.push_str(", ");
                    v.push_str(&value);
                })
                .or_insert_with(|| value.into_owned());
        }
        map
    }

    fn compare_bodies(&self, live: &ResponseCopy, other: &ResponseCopy, out: &mut Out) {
        match (Body::of(live), Body::of(other)) {
            (Body::Json(a), Body::Json(b)) => {
                if self.ignore_whole_json {
                    return;
                }
                let (mut a, mut b) = (a, b);
                for pattern in &self.ignore_json {
                    strip(&mut a, pattern);
                    strip(&mut b, pattern);
                }
                let mut path = String::from("body");
                json_diff(&mut path, &a, &b, out);
            }
            (Body::Text(a), Body::Text(b)) => text_diff(a, b, out),
            (a @ Body::Json(_), b) | (a, b @ Body::Json(_)) => {
                out.push(
                    "body".into(),
                    DiffKind::Type,
                    describe(live, &a),
                    describe(other, &b),
                );
            }
            (a, b) => {
                if live.body != other.body || live.body_truncated != other.body_truncated {
                    out.push(
                        "body".into(),
                        DiffKind::Value,
                        describe(live, &a),
                        describe(other, &b),
                    );
                }
            }
        }
    }
}

/// A body as the comparison sees it.
enum Body<'a> {
    Json(Value),
    Text(&'a str),
    /// Binary, or truncated: compared by bytes.
    Bytes,
}

impl<'a> Body<'a> {
    fn of(r: &'a ResponseCopy) -> Body<'a> {
        if r.body_truncated {
            return Body::Bytes;
        }
        let ct = content_type(r);
        let first = r.body.iter().find(|c| !c.is_ascii_whitespace());
        let starts_json = matches!(first, Some(b'{' | b'['));
        let jsonish = ct.contains("json") || starts_json && (ct.is_empty() || is_text_type(&ct));
        if jsonish {
            if let Ok(v) = serde_json::from_slice::<Value>(&r.body) {
                return Body::Json(v);
            }
        }
        if ct.is_empty() || is_text_type(&ct) {
            if let Ok(s) = std::str::from_utf8(&r.body) {
                if !s.contains('\0') {
                    return Body::Text(s);
                }
            }
        }
        if r.body.is_empty() {
            return Body::Text("");
        }
        Body::Bytes
    }
}

pub(crate) fn content_type(r: &ResponseCopy) -> String {
    r.headers
        .iter()
        .find(|(n, _)| n.eq_ignore_ascii_case("content-type"))
        .map(|(_, v)| String::from_utf8_lossy(v).to_ascii_lowercase())
        .unwrap_or_default()
}

fn is_text_type(ct: &str) -> bool {
    ct.starts_with("text/")
        || [
            "json",
            "xml",
            "javascript",
            "x-www-form-urlencoded",
            "yaml",
            "csv",
        ]
        .iter()
        .any(|t| ct.contains(t))
}

/// How a body that is not compared structurally is shown: its kind, size and hash.
fn describe(r: &ResponseCopy, b: &Body<'_>) -> String {
    let kind = match b {
        Body::Json(_) => "JSON",
        Body::Text(_) => "text",
        Body::Bytes if r.body_truncated => "truncated",
        Body::Bytes => "binary",
    };
    format!(
        "{kind}, {} bytes{}, fnv64 {:016x}",
        r.body.len(),
        if r.body_truncated { "+" } else { "" },
        fnv64(&r.body)
    )
}

/// FNV-1a, 64 bits: enough to tell two rendered bodies apart in a report (equality
/// itself is decided on the bytes).
pub(crate) fn fnv64(bytes: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for &b in bytes {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h
}

#[derive(Default)]
struct Out {
    diffs: Vec<Difference>,
}

impl Out {
    fn full(&self) -> bool {
        self.diffs.len() >= MAX_DIFFERENCES
    }

    fn push(&mut self, path: String, kind: DiffKind, live: String, candidate: String) {
        if !self.full() {
            self.diffs.push(Difference {
                path,
                kind,
                live,
                candidate,
            });
        }
    }
}

/// `s` cut to [`MAX_RENDERED`] characters, with an ellipsis when cut.
pub(crate) fn short(s: &str) -> String {
    truncate_chars(s, MAX_RENDERED)
}

pub(crate) fn truncate_chars(s: &str, max: usize) -> String {
    match s.char_indices().nth(max) {
        None => s.to_string(),
        Some((i, _)) => {
            let mut t = s[..i].to_string();
            t.push('…');
            t
        }
    }
}

fn render(v: &Value) -> String {
    short(&v.to_string())
}

fn escape_segment(s: &str) -> String {
    s.replace('~', "~0").replace('/', "~1")
}

fn unescape_segment(s: &str) -> String {
    s.replace("~1", "/").replace("~0", "~")
}

/// Removes what `pattern` (segments, `*` for any) names from `v`: object members are
/// removed, array elements become `null` (so that later indices keep their meaning).
fn strip(v: &mut Value, pattern: &[String]) {
    let Some((seg, rest)) = pattern.split_first() else {
        return;
    };
    let last = rest.is_empty();
    match v {
        Value::Object(map) => {
            if seg == "*" {
                if last {
                    map.clear();
                } else {
                    for child in map.values_mut() {
                        strip(child, rest);
                    }
                }
            } else if last {
                map.remove(seg);
            } else if let Some(child) = map.get_mut(seg) {
                strip(child, rest);
            }
        }
        Value::Array(items) => {
            if seg == "*" {
                for item in items.iter_mut() {
                    if last {
                        *item = Value::Null;
                    } else {
                        strip(item, rest);
                    }
                }
            } else if let Some(item) = seg.parse::<usize>().ok().and_then(|i| items.get_mut(i)) {
                if last {
                    *item = Value::Null;
                } else {
                    strip(item, rest);
                }
            }
        }
        _ => {}
    }
}

fn type_name(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "boolean",
        Value::Number(_) => "number",
        Value::String(_) => "string",
        Value::Array(_) => "array",
        Value::Object(_) => "object",
    }
}

fn numbers_equal(a: &serde_json::Number, b: &serde_json::Number) -> bool {
    if a == b {
        return true;
    }
    match (a.as_i64(), b.as_i64(), a.as_u64(), b.as_u64()) {
        (Some(x), Some(y), _, _) => x == y,
        (_, _, Some(x), Some(y)) => x == y,
        _ => match (a.as_f64(), b.as_f64()) {
            (Some(x), Some(y)) => x == y,
            _ => false,
        },
    }
}

/// Structural equality with numbers compared by value (`1` equals `1.0`).
fn json_equal(a: &Value, b: &Value) -> bool {
    match (a, b) {
        (Value::Number(x), Value::Number(y)) => numbers_equal(x, y),
        (Value::Array(x), Value::Array(y)) => {
            x.len() == y.len() && x.iter().zip(y).all(|(p, q)| json_equal(p, q))
        }
        (Value::Object(x), Value::Object(y)) => {
            x.len() == y.len()
                && x.iter()
                    .all(|(k, p)| y.get(k).is_some_and(|q| json_equal(p, q)))
        }
        _ => a == b,
    }
}

/// A canonical text of a value, for comparing array elements as a multiset.
fn canonical(v: &Value) -> String {
    match v {
        Value::Number(n) => match n.as_f64() {
            Some(f) if n.as_i64().is_none() && n.as_u64().is_none() && f.fract() == 0.0 => {
                format!("{f:.0}")
            }
            _ => n.to_string(),
        },
        // serde_json's map is ordered by key, so `to_string` is canonical for objects
        // but for the numbers inside; rebuild to canonicalize those too.
        Value::Array(items) => {
            let parts: Vec<String> = items.iter().map(canonical).collect();
            format!("[{}]", parts.join(","))
        }
        Value::Object(map) => {
            let mut s = String::from("{");
            for (i, (k, v)) in map.iter().enumerate() {
                if i > 0 {
                    s.push(',');
                }
                let _ = write!(s, "{}:{}", Value::String(k.clone()), canonical(v));
            }
            s.push('}');
            s
        }
        _ => v.to_string(),
    }
}

fn json_diff(path: &mut String, a: &Value, b: &Value, out: &mut Out) {
    if out.full() {
        return;
    }
    match (a, b) {
        (Value::Object(x), Value::Object(y)) => {
            for (k, av) in x {
                let len = path.len();
                path.push('/');
                path.push_str(&escape_segment(k));
                match y.get(k) {
                    Some(bv) => json_diff(path, av, bv, out),
                    None => out.push(path.clone(), DiffKind::Missing, render(av), ABSENT.into()),
                }
                path.truncate(len);
            }
            for (k, bv) in y {
                if !x.contains_key(k) {
                    let p = format!("{path}/{}", escape_segment(k));
                    out.push(p, DiffKind::Extra, ABSENT.into(), render(bv));
                }
            }
        }
        (Value::Array(x), Value::Array(y)) => array_diff(path, x, y, out),
        (Value::Number(x), Value::Number(y)) => {
            if !numbers_equal(x, y) {
                out.push(path.clone(), DiffKind::Value, render(a), render(b));
            }
        }
        _ if type_name(a) != type_name(b) => {
            out.push(path.clone(), DiffKind::Type, render(a), render(b));
        }
        _ => {
            if a != b {
                out.push(path.clone(), DiffKind::Value, render(a), render(b));
            }
        }
    }
}

fn array_diff(path: &mut String, x: &[Value], y: &[Value], out: &mut Out) {
    if x.len() == y.len() && x.iter().zip(y).all(|(p, q)| json_equal(p, q)) {
        return;
    }
    let cx: Vec<String> = x.iter().map(canonical).collect();
    let cy: Vec<String> = y.iter().map(canonical).collect();
    let at = |i: usize, p: &Value, q: &Value, path: &mut String, out: &mut Out| {
        let len = path.len();
        let _ = write!(path, "/{i}");
        json_diff(path, p, q, out);
        path.truncate(len);
    };
    if x.len() == y.len() {
        let (mut sx, mut sy) = (cx.clone(), cy.clone());
        sx.sort();
        sy.sort();
        if sx == sy {
            let n = x.len();
            out.push(
                path.clone(),
                DiffKind::Order,
                short(&format!("{n} items, first {}", first_rendered(x))),
                short(&format!("{n} items, first {}", first_rendered(y))),
            );
            return;
        }
        // Same length: compare element by element, so that paths keep their indices.
        for (i, (p, q)) in x.iter().zip(y).enumerate() {
            at(i, p, q, path, out);
        }
        return;
    }
    out.push(
        path.clone(),
        DiffKind::Length,
        format!("{} items", x.len()),
        format!("{} items", y.len()),
    );
    // Align the elements, then compare those that were changed in place.
    for h in linediff::diff(&cx, &cy) {
        for k in 0..h.a_len.min(h.b_len) {
            at(
                h.a_start + k,
                &x[h.a_start + k],
                &y[h.b_start + k],
                path,
                out,
            );
        }
    }
}

fn first_rendered(v: &[Value]) -> String {
    v.first().map_or_else(String::new, |f| f.to_string())
}

fn text_diff(a: &str, b: &str, out: &mut Out) {
    if a == b {
        return;
    }
    let la: Vec<&str> = lines(a);
    let lb: Vec<&str> = lines(b);
    for h in linediff::diff(&la, &lb) {
        let kind = match (h.a_len, h.b_len) {
            (0, _) => DiffKind::Extra,
            (_, 0) => DiffKind::Missing,
            _ => DiffKind::Value,
        };
        let side = |ls: &[&str], start: usize, len: usize| {
            if len == 0 {
                ABSENT.to_string()
            } else {
                short(&ls[start..start + len].join("\n"))
            }
        };
        out.push(
            format!("body:line {}", h.a_start + 1),
            kind,
            side(&la, h.a_start, h.a_len),
            side(&lb, h.b_start, h.b_len),
        );
    }
    if out.diffs.is_empty() {
        // Only line ends differ (CRLF against LF, or a final newline).
        out.push(
            "body:line 1".into(),
            DiffKind::Value,
            short(&format!("{a:?}")),
            short(&format!("{b:?}")),
        );
    }
}

/// Lines without their `\n` or `\r\n`.
pub(crate) fn lines(s: &str) -> Vec<&str> {
    s.split('\n')
        .map(|l| l.strip_suffix('\r').unwrap_or(l))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;
    use std::time::Duration;

    fn resp(status: u16, headers: &[(&str, &str)], body: &str) -> ResponseCopy {
        ResponseCopy {
            status,
            headers: headers
                .iter()
                .map(|(n, v)| (n.to_string(), Bytes::copy_from_slice(v.as_bytes())))
                .collect(),
            body: Bytes::copy_from_slice(body.as_bytes()),
            body_truncated: false,
            latency: Duration::from_millis(1),
        }
    }

    fn json(body: &str) -> ResponseCopy {
        resp(200, &[("content-type", "application/json")], body)
    }

    fn got(diffs: Vec<Difference>) -> Vec<(String, DiffKind)> {
        diffs.into_iter().map(|d| (d.path, d.kind)).collect()
    }

    fn want(pairs: &[(&str, DiffKind)]) -> Vec<(String, DiffKind)> {
        pairs.iter().map(|(p, k)| (p.to_string(), *k)).collect()
    }

    #[test]
    fn json_kinds() {
        use DiffKind::*;
        let table: &[(&str, &str, &[(&str, DiffKind)])] = &[
            (r#"{"a":1}"#, r#"{"a":1}"#, &[]),
            (r#"{"a":1}"#, r#"{"a":1.0}"#, &[]),
            (r#"{"a":1,"b":2}"#, r#"{"b":2,"a":1}"#, &[]),
            (r#"{"a":1}"#, r#"{"a":2}"#, &[("body/a", Value)]),
            (
                r#"{"price":12.5}"#,
                r#"{"price":"12.5"}"#,
                &[("body/price", Type)],
            ),
            (r#"{"a":null}"#, r#"{"a":0}"#, &[("body/a", Type)]),
            (r#"{"a":1,"b":2}"#, r#"{"a":1}"#, &[("body/b", Missing)]),
            (r#"{"a":1}"#, r#"{"a":1,"c":3}"#, &[("body/c", Extra)]),
            (r#"{"l":[1,2,3]}"#, r#"{"l":[3,2,1]}"#, &[("body/l", Order)]),
            (r#"{"l":[1,2,3]}"#, r#"{"l":[1,2]}"#, &[("body/l", Length)]),
            (
                r#"{"l":[1,2,3]}"#,
                r#"{"l":[1,5,3,4]}"#,
                &[("body/l", Length), ("body/l/1", Value)],
            ),
            (
                r#"{"l":[1,2,3]}"#,
                r#"{"l":[1,5,3]}"#,
                &[("body/l/1", Value)],
            ),
            (
                r#"{"items":[{"id":1,"price":2},{"id":2,"price":3}]}"#,
                r#"{"items":[{"id":1,"price":2},{"id":2,"price":"3"}]}"#,
                &[("body/items/1/price", Type)],
            ),
            (
                r#"{"a/b":1,"t~":1}"#,
                r#"{"a/b":2,"t~":2}"#,
                &[("body/a~1b", Value), ("body/t~0", Value)],
            ),
            (r#"[1]"#, r#"{"a":1}"#, &[("body", Type)]),
            (
                r#"{"a":{"b":{"c":true}}}"#,
                r#"{"a":{"b":{"c":false}}}"#,
                &[("body/a/b/c", Value)],
            ),
        ];
        for (a, b, expected) in table {
            let d = compare(&json(a), &json(b), &CompareOptions::default());
            assert_eq!(got(d), want(expected), "{a} vs {b}");
        }
    }

    #[test]
    fn ignore_json_wildcards() {
        let table: &[(&[&str], &str, &str, &[(&str, DiffKind)])] = &[
            (
                &["/meta/generated_at"],
                r#"{"meta":{"generated_at":1,"v":1}}"#,
                r#"{"meta":{"generated_at":2,"v":1}}"#,
                &[],
            ),
            (
                &["body/meta/generated_at"],
                r#"{"meta":{"generated_at":1}}"#,
                r#"{"meta":{"generated_at":2}}"#,
                &[],
            ),
            (
                &["/meta"],
                r#"{"meta":{"x":1},"a":1}"#,
                r#"{"meta":{"x":2,"y":1},"a":2}"#,
                &[("body/a", DiffKind::Value)],
            ),
            (
                &["/items/*/updated"],
                r#"{"items":[{"updated":1,"p":1},{"updated":5,"p":2}]}"#,
                r#"{"items":[{"updated":2,"p":1},{"updated":6,"p":3}]}"#,
                &[("body/items/1/p", DiffKind::Value)],
            ),
            (
                &["/*/id"],
                r#"{"a":{"id":1},"b":{"id":2,"n":1}}"#,
                r#"{"a":{"id":3},"b":{"id":4,"n":2}}"#,
                &[("body/b/n", DiffKind::Value)],
            ),
            (
                &["/items/0"],
                r#"{"items":[1,2]}"#,
                r#"{"items":[9,2]}"#,
                &[],
            ),
            (&["/gone"], r#"{"gone":1}"#, r#"{}"#, &[]),
            (&[""], r#"{"a":1}"#, r#"{"a":2}"#, &[]),
            (
                &["/other"],
                r#"{"a":1}"#,
                r#"{"a":2}"#,
                &[("body/a", DiffKind::Value)],
            ),
        ];
        for (ignore, a, b, expected) in table {
            let opts = CompareOptions {
                ignore_json: ignore.iter().map(|s| s.to_string()).collect(),
                ..Default::default()
            };
            assert_eq!(
                got(compare(&json(a), &json(b), &opts)),
                want(expected),
                "{ignore:?} {a} vs {b}"
            );
        }
    }

    #[test]
    fn status_and_headers() {
        use DiffKind::*;
        let table: &[(ResponseCopy, ResponseCopy, &[&str], &[(&str, DiffKind)])] = &[
            (
                resp(200, &[], ""),
                resp(500, &[], ""),
                &[],
                &[("status", Value)],
            ),
            (
                resp(200, &[("date", "Mon"), ("content-length", "3")], ""),
                resp(
                    200,
                    &[("date", "Tue"), ("transfer-encoding", "chunked")],
                    "",
                ),
                &[],
                &[],
            ),
            (
                resp(200, &[("x-v", "1")], ""),
                resp(200, &[("x-v", "2")], ""),
                &[],
                &[("header.x-v", Value)],
            ),
            (
                resp(200, &[("x-v", "1")], ""),
                resp(200, &[("X-V", "2")], ""),
                &["X-v"],
                &[],
            ),
            (
                resp(200, &[("x-a", "1")], ""),
                resp(200, &[], ""),
                &[],
                &[("header.x-a", Missing)],
            ),
            (
                resp(200, &[], ""),
                resp(200, &[("x-b", "1")], ""),
                &[],
                &[("header.x-b", Extra)],
            ),
            (
                resp(200, &[("vary", "a"), ("vary", "b")], ""),
                resp(200, &[("vary", "a, b")], ""),
                &[],
                &[],
            ),
            (
                resp(404, &[("x-a", "1")], ""),
                resp(200, &[("x-a", "2")], ""),
                &[],
                &[("status", Value), ("header.x-a", Value)],
            ),
        ];
        for (a, b, ignore, expected) in table {
            let opts = CompareOptions {
                ignore_headers: ignore.iter().map(|s| s.to_string()).collect(),
                ..Default::default()
            };
            assert_eq!(got(compare(a, b, &opts)), want(expected), "{a:?} vs {b:?}");
        }
    }

    #[test]
    fn text_and_binary() {
        use DiffKind::*;
        let text = |b: &str| resp(200, &[("content-type", "text/plain")], b);
        let bin = |b: &str| resp(200, &[("content-type", "application/octet-stream")], b);
        let table: &[(ResponseCopy, ResponseCopy, &[(&str, DiffKind)])] = &[
            (text("a\nb\nc"), text("a\nb\nc"), &[]),
            (text("a\nb\nc"), text("a\nB\nc"), &[("body:line 2", Value)]),
            (text("a\nb\nc"), text("a\nc"), &[("body:line 2", Missing)]),
            (text("a\nc"), text("a\nb\nc"), &[("body:line 2", Extra)]),
            (
                text("a\nb\nc\nd"),
                text("x\nb\nc\ny"),
                &[("body:line 1", Value), ("body:line 4", Value)],
            ),
            (text("a\r\nb"), text("a\nb"), &[("body:line 1", Value)]),
            (bin("\u{1}\u{2}"), bin("\u{1}\u{2}"), &[]),
            (bin("\u{1}\u{2}"), bin("\u{1}\u{3}"), &[("body", Value)]),
            (
                json(r#"{"a":1}"#),
                text("<html>oops</html>"),
                &[("header.content-type", Value), ("body", Type)],
            ),
            (resp(200, &[], "plain"), resp(200, &[], "plain"), &[]),
            (
                resp(200, &[], "{\"a\":1}"),
                resp(200, &[], "{\"a\":2}"),
                &[("body/a", Value)],
            ),
        ];
        for (a, b, expected) in table {
            assert_eq!(
                got(compare(a, b, &CompareOptions::default())),
                want(expected),
                "{a:?} vs {b:?}"
            );
        }
        let mut t1 = bin("abc");
        t1.body_truncated = true;
        let t2 = bin("abc");
        assert_eq!(
            got(compare(&t1, &t2, &CompareOptions::default())),
            want(&[("body", Value)])
        );
        assert_eq!(
            got(compare(&t1, &t1, &CompareOptions::default())),
            want(&[])
        );
    }

    #[test]
    fn renderings_are_short_and_differences_capped() {
        let long = "x".repeat(1000);
        let a = json(&format!(r#"{{"a":"{long}"}}"#));
        let b = json(r#"{"a":"y"}"#);
        let d = compare(&a, &b, &CompareOptions::default());
        assert_eq!(d[0].live.chars().count(), MAX_RENDERED + 1);
        assert!(d[0].live.ends_with('…'));
        let many_a: String = (0..200)
            .map(|i| format!("\"k{i}\":{i}"))
            .collect::<Vec<_>>()
            .join(",");
        let many_b: String = (0..200)
            .map(|i| format!("\"k{i}\":{}", i + 1))
            .collect::<Vec<_>>()
            .join(",");
        let d = compare(
            &json(&format!("{{{many_a}}}")),
            &json(&format!("{{{many_b}}}")),
            &CompareOptions::default(),
        );
        assert_eq!(d.len(), MAX_DIFFERENCES);
    }

    #[test]
    fn kinds_serialize_lower_case() {
        assert_eq!(
            serde_json::to_string(&DiffKind::Length).unwrap(),
            "\"length\""
        );
        for k in [
            DiffKind::Value,
            DiffKind::Type,
            DiffKind::Missing,
            DiffKind::Extra,
            DiffKind::Order,
            DiffKind::Length,
        ] {
            assert_eq!(
                serde_json::to_value(k).unwrap(),
                serde_json::json!(k.as_str())
            );
        }
    }
}
