//! Smoke checks against a candidate slot before it gets any traffic
//! (`[verify] checks = [{ path = "/", status = 200 }, ...]`, `command = "./smoke.sh"`).
//!
//! Every check runs against every upstream of the slot — all instances must pass — as an
//! HTTP/1.1 `GET` with `Host: ADDR`, `User-Agent: turnout-verify` and `Connection: close`,
//! one connection per request. At most [`MAX_BODY`] bytes of a body are read. The whole
//! stage shares one deadline: each request, and the verify command, gets the time left.

use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper::header::{CONNECTION, HOST, USER_AGENT};
use hyper::Request;
use hyper_util::rt::TokioIo;
use serde::Serialize;
use tokio::net::TcpStream;
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tracing::{debug, info};

use crate::commands::{self, CommandError, CommandSpec};

/// How much of a response body is read (and searched by `body_contains`).
pub const MAX_BODY: usize = 1024 * 1024;

/// How much of a body an error message quotes.
const QUOTE_BYTES: usize = 200;

/// One smoke check: `GET path` must answer `status`, with `body_contains` in the first
/// [`MAX_BODY`] bytes of the body when given.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Check {
    /// The request path, starting with `/` (a query is allowed).
    pub path: String,
    /// The expected status code.
    pub status: u16,
    /// Text the body must contain.
    pub body_contains: Option<String>,
}

/// A check that passed on one upstream.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct CheckResult {
    /// `http://ADDR/PATH`.
    pub url: String,
    /// The status the upstream answered.
    pub status: u16,
    /// How long the request took, in milliseconds.
    pub elapsed_ms: u64,
}

/// Why verification failed. Each message names the request that failed.
#[derive(Debug, thiserror::Error)]
pub enum VerifyError {
    /// The slot has no upstreams to check.
    #[error("nothing to verify: the candidate slot has no upstreams")]
    NoUpstreams,
    /// A check's path cannot be sent.
    #[error("GET {url}: the check's path is not a valid request path ({problem}); write it like \"/api/items\"")]
    BadPath {
        /// The URL the check would have requested.
        url: String,
        /// What is wrong.
        problem: String,
    },
    /// The upstream could not be reached.
    #[error("GET {url}: cannot connect: {source}; is the candidate listening on {addr}?")]
    Connect {
        /// The URL requested.
        url: String,
        /// The upstream address.
        addr: String,
        /// Why the connection failed.
        source: std::io::Error,
    },
    /// The exchange failed after connecting (connection closed, malformed response).
    #[error(
        "GET {url}: {source} (the candidate closed the connection or answered with invalid HTTP)"
    )]
    Http {
        /// The URL requested.
        url: String,
        /// What went wrong.
        source: hyper::Error,
    },
    /// The upstream answered with another status.
    #[error(
        "GET {url}: expected status {expected}, got {got}{}",
        quote_body(body_start)
    )]
    Status {
        /// The URL requested.
        url: String,
        /// The status the check wants.
        expected: u16,
        /// The status the upstream answered.
        got: u16,
        /// The first bytes of the body (invalid UTF-8 replaced).
        body_start: String,
    },
    /// The body lacks the text the check wants.
    #[error(
        "GET {url}: body does not contain {needle:?} (first {QUOTE_BYTES} bytes: {body_start:?})"
    )]
    Body {
        /// The URL requested.
        url: String,
        /// The text the check wants.
        needle: String,
        /// The first bytes of the body (invalid UTF-8 replaced).
        body_start: String,
    },
    /// The stage's time ran out during this request.
    #[error("GET {url}: no complete answer within the verify timeout ({after:?}); the candidate is too slow or hangs")]
    TimedOut {
        /// The URL requested.
        url: String,
        /// The stage timeout.
        after: Duration,
    },
    /// The verify command failed.
    #[error(transparent)]
    Command(#[from] CommandError),
}

fn quote_body(body_start: &str) -> String {
    if body_start.is_empty() {
        String::new()
    } else {
        format!(" (body starts: {body_start:?})")
    }
}

/// Runs every check against every address in `addrs`, checks in order, stopping at the
/// first failure; the whole run ends within `timeout`. Returns one result per check and
/// address.
pub async fn run_checks(
    addrs: &[String],
    checks: &[Check],
    timeout: Duration,
) -> Result<Vec<CheckResult>, VerifyError> {
    if addrs.is_empty() {
        return Err(VerifyError::NoUpstreams);
    }
    let deadline = Instant::now() + timeout;
    let mut results = Vec::with_capacity(addrs.len() * checks.len());
    for check in checks {
        for addr in addrs {
            let url = format!("http://{addr}{}", check.path);
            let started = Instant::now();
            let (status, body) = tokio::time::timeout_at(deadline, get(addr, &check.path, &url))
                .await
                .map_err(|_| VerifyError::TimedOut {
                    url: url.clone(),
                    after: timeout,
                })??;
            let elapsed_ms = u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX);
            if status != check.status {
                return Err(VerifyError::Status {
                    url,
                    expected: check.status,
                    got: status,
                    body_start: body_start(&body),
                });
            }
            if let Some(needle) = &check.body_contains {
                if !contains(&body, needle.as_bytes()) {
                    return Err(VerifyError::Body {
                        url,
                        needle: needle.clone(),
                        body_start: body_start(&body),
                    });
                }
            }
            debug!(%url, status, elapsed_ms, "verify check passed");
            results.push(CheckResult {
                url,
                status,
                elapsed_ms,
            });
        }
    }
    info!(
        checks = checks.len(),
        upstreams = addrs.len(),
        "verify checks passed"
    );
    Ok(results)
}

/// Runs the verify command once per address, with `TURNOUT_TARGET=http://ADDR` added to
/// `env`; all runs share `timeout`. Its output is appended to `log` when given.
pub async fn run_command(
    command: &str,
    addrs: &[String],
    env: Vec<(String, String)>,
    timeout: Duration,
    log: Option<std::path::PathBuf>,
) -> Result<(), VerifyError> {
    if addrs.is_empty() {
        return Err(VerifyError::NoUpstreams);
    }
    let deadline = Instant::now() + timeout;
    for addr in addrs {
        let mut env = env.clone();
        env.push(("TURNOUT_TARGET".to_owned(), format!("http://{addr}")));
        commands::run(CommandSpec {
            name: "verify command",
            command,
            env,
            timeout: deadline.saturating_duration_since(Instant::now()),
            log: log.clone(),
        })
        .await?;
    }
    Ok(())
}

/// One `GET`: the status and up to [`MAX_BODY`] bytes of the body.
async fn get(addr: &str, path: &str, url: &str) -> Result<(u16, Vec<u8>), VerifyError> {
    let http_error = |source| VerifyError::Http {
        url: url.to_owned(),
        source,
    };
    if !path.starts_with('/') {
        return Err(VerifyError::BadPath {
            url: url.to_owned(),
            problem: "it does not start with /".to_owned(),
        });
    }
    let request = Request::get(path)
        .header(HOST, addr)
        .header(USER_AGENT, "turnout-verify")
        .header(CONNECTION, "close")
        .body(Empty::<Bytes>::new())
        .map_err(|error| VerifyError::BadPath {
            url: url.to_owned(),
            problem: error.to_string(),
        })?;
    let stream = TcpStream::connect(addr)
        .await
        .map_err(|source| VerifyError::Connect {
            url: url.to_owned(),
            addr: addr.to_owned(),
            source,
        })?;
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(http_error)?;
    let _conn = AbortOnDrop(tokio::spawn(conn));
    let response = sender.send_request(request).await.map_err(http_error)?;
    let status = response.status().as_u16();
    let mut body = response.into_body();
    let mut bytes = Vec::new();
    while bytes.len() < MAX_BODY {
        let Some(frame) = body.frame().await else {
            break;
        };
        if let Ok(data) = frame.map_err(http_error)?.into_data() {
            let room = MAX_BODY - bytes.len();
            bytes.extend_from_slice(&data[..data.len().min(room)]);
        }
    }
    Ok((status, bytes))
}

/// Ends the connection task with the request (a timed-out or finished request leaves no
/// connection behind).
struct AbortOnDrop<T>(JoinHandle<T>);

impl<T> Drop for AbortOnDrop<T> {
    fn drop(&mut self) {
        self.0.abort();
    }
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    needle.is_empty() || haystack.windows(needle.len()).any(|w| w == needle)
}

fn body_start(body: &[u8]) -> String {
    String::from_utf8_lossy(&body[..body.len().min(QUOTE_BYTES)]).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{Arc, Mutex};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpListener;

    /// A tiny HTTP/1.1 server on 127.0.0.1:0 answering by path; returns its address and
    /// the request heads it received. It stops with the test's runtime.
    async fn server() -> (String, Arc<Mutex<Vec<String>>>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr").to_string();
        let heads = Arc::new(Mutex::new(Vec::new()));
        let seen = heads.clone();
        tokio::spawn(async move {
            while let Ok((mut conn, _)) = listener.accept().await {
                let seen = seen.clone();
                tokio::spawn(async move {
                    let mut head = Vec::new();
                    let mut buf = [0u8; 1024];
                    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                        match conn.read(&mut buf).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => head.extend_from_slice(&buf[..n]),
                        }
                    }
                    let head = String::from_utf8_lossy(&head).into_owned();
                    let path = head.split(' ').nth(1).unwrap_or("").to_owned();
                    seen.lock().expect("lock").push(head);
                    let response: Vec<u8> = match path.as_str() {
                        "/" => b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello".to_vec(),
                        "/api/items" => {
                            let mut r =
                                b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n".to_vec();
                            for chunk in ["{\"it", "ems\": [", "]}"] {
                                r.extend(format!("{:x}\r\n{chunk}\r\n", chunk.len()).bytes());
                            }
                            r.extend(b"0\r\n\r\n");
                            r
                        }
                        "/broken" => {
                            b"HTTP/1.1 500 Internal Server Error\r\nContent-Length: 7\r\n\r\ndb down"
                                .to_vec()
                        }
                        "/big" => {
                            let len = 2 * MAX_BODY;
                            let mut r = format!("HTTP/1.1 200 OK\r\nContent-Length: {len}\r\n\r\n")
                                .into_bytes();
                            r.resize(r.len() + len - 6, b'a');
                            r.extend(b"needle");
                            r
                        }
                        "/slow" => {
                            tokio::time::sleep(Duration::from_secs(60)).await;
                            return;
                        }
                        _ => return, // "/close": hang up without answering
                    };
                    let _ = conn.write_all(&response).await;
                    let _ = conn.shutdown().await;
                });
            }
        });
        (addr, heads)
    }

    fn check(path: &str, status: u16, body_contains: Option<&str>) -> Check {
        Check {
            path: path.to_owned(),
            status,
            body_contains: body_contains.map(str::to_owned),
        }
    }

    #[tokio::test]
    async fn passing_checks_run_on_every_upstream() {
        let (a, heads) = server().await;
        let (b, _) = server().await;
        let checks = [
            check("/", 200, None),
            check("/api/items", 200, Some("items")),
        ];
        let results = run_checks(&[a.clone(), b.clone()], &checks, Duration::from_secs(5))
            .await
            .expect("passes");
        let urls: Vec<&str> = results.iter().map(|r| r.url.as_str()).collect();
        let want = [
            format!("http://{a}/"),
            format!("http://{b}/"),
            format!("http://{a}/api/items"),
            format!("http://{b}/api/items"),
        ];
        assert_eq!(urls, want);
        let heads = heads.lock().expect("lock");
        let first = heads[0].to_ascii_lowercase();
        assert!(first.starts_with("get / http/1.1\r\n"), "{first}");
        assert!(first.contains(&format!("host: {a}\r\n")), "{first}");
        assert!(first.contains("user-agent: turnout-verify\r\n"), "{first}");
        assert!(first.contains("connection: close\r\n"), "{first}");
    }

    #[tokio::test]
    async fn failures_name_the_request() {
        let (addr, _) = server().await;
        let refused = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
            l.local_addr().expect("addr").to_string()
        };
        let t = Duration::from_secs(5);
        let cases: Vec<(Vec<String>, Check, String)> = vec![
            (
                vec![addr.clone()],
                check("/broken", 200, None),
                format!("GET http://{addr}/broken: expected status 200, got 500 (body starts: \"db down\")"),
            ),
            (
                vec![addr.clone()],
                check("/", 200, Some("items")),
                format!("GET http://{addr}/: body does not contain \"items\" (first 200 bytes: \"hello\")"),
            ),
            (
                vec![addr.clone()],
                check("/big", 200, Some("needle")),
                format!("GET http://{addr}/big: body does not contain \"needle\""),
            ),
            (
                vec![addr.clone(), refused.clone()],
                check("/", 200, None),
                format!("GET http://{refused}/: cannot connect:"),
            ),
            (
                vec![addr.clone()],
                check("/close", 200, None),
                format!("GET http://{addr}/close: "),
            ),
            (
                vec![addr.clone()],
                check("api", 200, None),
                format!("GET http://{addr}api: the check's path is not a valid request path"),
            ),
            (vec![], check("/", 200, None), "nothing to verify".to_owned()),
        ];
        for (addrs, check, want) in cases {
            let err = run_checks(&addrs, std::slice::from_ref(&check), t)
                .await
                .expect_err("fails");
            let message = err.to_string();
            assert!(message.starts_with(&want), "check {check:?}: {message}");
        }
    }

    #[tokio::test]
    async fn the_stage_timeout_bounds_a_hanging_candidate() {
        let (addr, _) = server().await;
        let started = std::time::Instant::now();
        let err = run_checks(
            std::slice::from_ref(&addr),
            &[check("/", 200, None), check("/slow", 200, None)],
            Duration::from_millis(300),
        )
        .await
        .expect_err("times out");
        assert!(started.elapsed() < Duration::from_secs(5));
        assert!(
            matches!(&err, VerifyError::TimedOut { url, .. } if url.ends_with("/slow")),
            "{err}"
        );
    }

    #[tokio::test]
    async fn command_runs_per_upstream_with_target() {
        let dir = tempfile::tempdir().expect("tempdir");
        let log = dir.path().join("verify.log");
        let addrs = ["127.0.0.1:1".to_owned(), "127.0.0.1:2".to_owned()];
        run_command(
            r#"echo "target=$TURNOUT_TARGET slot=$TURNOUT_SLOT""#,
            &addrs,
            vec![("TURNOUT_SLOT".into(), "green".into())],
            Duration::from_secs(10),
            Some(log.clone()),
        )
        .await
        .expect("passes");
        let logged = std::fs::read_to_string(&log).expect("log");
        assert!(
            logged.contains("target=http://127.0.0.1:1 slot=green"),
            "{logged}"
        );
        assert!(
            logged.contains("target=http://127.0.0.1:2 slot=green"),
            "{logged}"
        );

        let err = run_command(
            r#"echo "smoke failed on $TURNOUT_TARGET"; exit 2"#,
            &addrs,
            Vec::new(),
            Duration::from_secs(10),
            None,
        )
        .await
        .expect_err("fails");
        let message = err.to_string();
        assert!(message.starts_with("verify command failed"), "{message}");
        assert!(
            message.contains("smoke failed on http://127.0.0.1:1"),
            "{message}"
        );
    }
}
