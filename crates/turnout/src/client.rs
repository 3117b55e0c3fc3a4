//! A small client for the admin API (HTTP/1.1 + JSON), used by the commands that talk to
//! a running router.

use std::time::Duration;

use anyhow::{anyhow, bail, Context as _};
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::{Method, Request, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

/// Where the admin API is and how to authenticate.
pub struct AdminClient {
    /// `host:port`.
    authority: String,
    token: Option<String>,
}

/// The API answered with an error.
#[derive(Debug)]
pub struct ApiFailure {
    pub status: StatusCode,
    pub code: String,
    pub message: String,
}

impl std::fmt::Display for ApiFailure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} ({})", self.message, self.code)
    }
}

impl std::error::Error for ApiFailure {}

const TIMEOUT: Duration = Duration::from_secs(30);
/// For streaming calls: connecting, and the answer's head.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// A piece of a streamed answer.
pub enum StreamFrame {
    /// Body bytes, as they came.
    Data(Bytes),
    /// The trailer fields that end the body.
    Trailers(hyper::HeaderMap),
}

/// A streamed answer (see [`AdminClient::stream`]): its body, frame by frame.
pub struct Streaming {
    body: hyper::body::Incoming,
}

impl Streaming {
    /// The next frame; `None` at the end of the body. No timeout: the caller decides how
    /// long to wait.
    pub async fn next(&mut self) -> Option<anyhow::Result<StreamFrame>> {
        loop {
            let frame = match self.body.frame().await? {
                Ok(f) => f,
                Err(e) => {
                    return Some(Err(
                        anyhow::Error::new(e).context("the router's stream broke off")
                    ))
                }
            };
            match frame.into_data() {
                Ok(data) if data.is_empty() => continue,
                Ok(data) => return Some(Ok(StreamFrame::Data(data))),
                Err(frame) => {
                    if let Ok(t) = frame.into_trailers() {
                        return Some(Ok(StreamFrame::Trailers(t)));
                    }
                }
            }
        }
    }
}

impl AdminClient {
    /// `url` is `http://host:port` (a trailing `/` is fine).
    pub fn new(url: &str, token: Option<String>) -> anyhow::Result<AdminClient> {
        let rest = url.strip_prefix("http://").ok_or_else(|| {
            anyhow!("admin URL {url:?} must start with http:// (e.g. http://127.0.0.1:9901)")
        })?;
        let authority = rest.trim_end_matches('/');
        if authority.is_empty() || authority.contains('/') {
            bail!("admin URL {url:?} must be http://host:port with no path");
        }
        Ok(AdminClient {
            authority: authority.to_owned(),
            token,
        })
    }

    /// Calls the API; a non-2xx answer becomes an [`ApiFailure`] error.
    pub async fn call(
        &self,
        method: Method,
        path: &str,
        body: Option<serde_json::Value>,
    ) -> anyhow::Result<serde_json::Value> {
        self.call_within(TIMEOUT, method, path, body).await
    }

    /// Calls the API for a streamed answer (with `TE: trailers`, so that the router can
    /// end it with counts): connecting and the answer's head are bounded in time, the body
    /// is not. A non-2xx answer becomes an [`ApiFailure`] error.
    pub async fn stream(
        &self,
        method: Method,
        path: &str,
        body: Option<serde_json::Value>,
    ) -> anyhow::Result<Streaming> {
        let head = async {
            let mut sender = self.connect().await?;
            let req = self.request(method, path).header("te", "trailers");
            let payload = match body {
                Some(v) => Bytes::from(serde_json::to_vec(&v)?),
                None => Bytes::new(),
            };
            sender
                .send_request(req.body(Full::new(payload))?)
                .await
                .with_context(|| format!("admin API request to http://{}{path}", self.authority))
        };
        let resp = tokio::time::timeout(CONNECT_TIMEOUT, head)
            .await
            .map_err(|_| {
                anyhow!(
                    "the router at http://{} did not answer within {}s",
                    self.authority,
                    CONNECT_TIMEOUT.as_secs()
                )
            })??;
        let status = resp.status();
        if status.is_success() {
            return Ok(Streaming {
                body: resp.into_body(),
            });
        }
        let bytes = tokio::time::timeout(CONNECT_TIMEOUT, resp.into_body().collect())
            .await
            .ok()
            .and_then(Result::ok)
            .map(|c| c.to_bytes())
            .unwrap_or_default();
        Err(failure(status, &bytes).into())
    }

    pub(crate) async fn call_within(
        &self,
        timeout: Duration,
        method: Method,
        path: &str,
        body: Option<serde_json::Value>,
    ) -> anyhow::Result<serde_json::Value> {
        // A change (anything but GET) may have been made even though no answer came.
        let unknown = if method == Method::GET {
            ""
        } else {
            "; the outcome of this change is unknown: check `turnout status`"
        };
        tokio::time::timeout(timeout, self.call_inner(method, path, body, unknown, 1))
            .await
            .map_err(|_| {
                anyhow!(
                    "the router at http://{} did not answer within {}s{unknown}",
                    self.authority,
                    timeout.as_secs_f32()
                )
            })?
    }

    /// A fresh HTTP/1.1 connection to the admin API.
    async fn connect(
        &self,
    ) -> anyhow::Result<hyper::client::conn::http1::SendRequest<Full<Bytes>>> {
        let stream = TcpStream::connect(&self.authority).await.with_context(|| {
            format!(
                "cannot reach the router's admin API at http://{}; is `turnout serve` running? (set --admin URL or [admin] addr)",
                self.authority
            )
        })?;
        let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .context("admin API handshake")?;
        tokio::spawn(async move {
            let _ = conn.await;
        });
        Ok(sender)
    }

    /// A request head with the host, JSON content type and the token.
    fn request(&self, method: Method, path: &str) -> hyper::http::request::Builder {
        let req = Request::builder()
            .method(method)
            .uri(path)
            .header("host", self.authority.as_str())
            .header("content-type", "application/json");
        match &self.token {
            Some(token) => req.header("authorization", format!("Bearer {token}")),
            None => req,
        }
    }

    async fn call_inner(
        &self,
        method: Method,
        path: &str,
        body: Option<serde_json::Value>,
        unknown: &str,
        redirects: u8,
    ) -> anyhow::Result<serde_json::Value> {
        let mut sender = self.connect().await?;
        let req = self.request(method.clone(), path);
        let body_again = body.clone();
        let payload = match body {
            Some(v) => Bytes::from(serde_json::to_vec(&v)?),
            None => Bytes::new(),
        };
        let resp = sender
            .send_request(req.body(Full::new(payload))?)
            .await
            .with_context(|| {
                format!(
                    "admin API request to http://{}{path}{unknown}",
                    self.authority
                )
            })?;
        let status = resp.status();
        let location = resp
            .headers()
            .get(hyper::header::LOCATION)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        let bytes = resp
            .into_body()
            .collect()
            .await
            .with_context(|| format!("reading the admin API's answer{unknown}"))?
            .to_bytes();
        // A replica of a fleet sends deployment calls to the leader: follow once.
        if status == StatusCode::TEMPORARY_REDIRECT && redirects > 0 {
            if let Some((base, path)) = location.as_deref().and_then(split_url) {
                eprintln!(
                    "turnout: {} is not the fleet's leader; sending this to the leader at {base}",
                    self.authority
                );
                let leader = AdminClient::new(&base, self.token.clone())?;
                return Box::pin(leader.call_inner(
                    method,
                    &path,
                    body_again,
                    unknown,
                    redirects - 1,
                ))
                .await;
            }
        }
        if status.is_success() {
            return Ok(serde_json::from_slice(&bytes).unwrap_or(serde_json::Value::Null));
        }
        Err(failure(status, &bytes).into())
    }
}

/// `http://host:port/path?query` as (`http://host:port`, `/path?query`).
fn split_url(url: &str) -> Option<(String, String)> {
    let rest = url.strip_prefix("http://")?;
    let (authority, path) = match rest.find('/') {
        Some(i) => rest.split_at(i),
        None => (rest, "/"),
    };
    (!authority.is_empty()).then(|| (format!("http://{authority}"), path.to_owned()))
}

/// The API's error answer (`{"error": {"code", "message"}}`) as an [`ApiFailure`].
fn failure(status: StatusCode, bytes: &[u8]) -> ApiFailure {
    let json: serde_json::Value = serde_json::from_slice(bytes).unwrap_or(serde_json::Value::Null);
    let code = json["error"]["code"]
        .as_str()
        .unwrap_or("http_error")
        .to_owned();
    let message = json["error"]["message"]
        .as_str()
        .map(str::to_owned)
        .unwrap_or_else(|| format!("the admin API answered {status}"));
    ApiFailure {
        status,
        code,
        message,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A router that takes the request and never answers.
    async fn silent_router() -> (tokio::net::TcpListener, String) {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", l.local_addr().unwrap());
        (l, url)
    }

    #[tokio::test]
    async fn a_change_without_an_answer_says_its_outcome_is_unknown() {
        let (listener, url) = silent_router().await;
        let held = tokio::spawn(async move {
            let mut conns = Vec::new();
            loop {
                conns.push(listener.accept().await.unwrap());
            }
        });
        let client = AdminClient::new(&url, None).unwrap();
        let wait = Duration::from_millis(200);
        let cases: &[(Method, &str, bool)] = &[
            (Method::POST, "/api/v1/switch", true),
            (Method::POST, "/api/v1/rollback", true),
            (Method::GET, "/api/v1/status", false),
        ];
        for (method, path, unknown) in cases {
            let err = client
                .call_within(wait, method.clone(), path, None)
                .await
                .unwrap_err()
                .to_string();
            assert!(err.contains("did not answer within"), "{err}");
            assert_eq!(
                err.contains("outcome of this change is unknown: check `turnout status`"),
                *unknown,
                "{method} {path}: {err}"
            );
        }
        held.abort();
    }
}
