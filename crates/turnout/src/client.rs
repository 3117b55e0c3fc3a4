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
    #[allow(dead_code)]
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
        tokio::time::timeout(TIMEOUT, self.call_inner(method, path, body))
            .await
            .map_err(|_| {
                anyhow!(
                    "the router at http://{} did not answer within {}s",
                    self.authority,
                    TIMEOUT.as_secs()
                )
            })?
    }

    async fn call_inner(
        &self,
        method: Method,
        path: &str,
        body: Option<serde_json::Value>,
    ) -> anyhow::Result<serde_json::Value> {
        let stream = TcpStream::connect(&self.authority).await.with_context(|| {
            format!(
                "cannot reach the router's admin API at http://{}; is `turnout serve` running? (set --admin URL or [admin] addr)",
                self.authority
            )
        })?;
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .context("admin API handshake")?;
        tokio::spawn(async move {
            let _ = conn.await;
        });
        let mut req = Request::builder()
            .method(method)
            .uri(path)
            .header("host", self.authority.as_str())
            .header("content-type", "application/json");
        if let Some(token) = &self.token {
            req = req.header("authorization", format!("Bearer {token}"));
        }
        let payload = match body {
            Some(v) => Bytes::from(serde_json::to_vec(&v)?),
            None => Bytes::new(),
        };
        let resp = sender
            .send_request(req.body(Full::new(payload))?)
            .await
            .with_context(|| format!("admin API request to http://{}{path}", self.authority))?;
        let status = resp.status();
        let bytes = resp
            .into_body()
            .collect()
            .await
            .context("reading the admin API's answer")?
            .to_bytes();
        let json: serde_json::Value =
            serde_json::from_slice(&bytes).unwrap_or(serde_json::Value::Null);
        if status.is_success() {
            return Ok(json);
        }
        let code = json["error"]["code"]
            .as_str()
            .unwrap_or("http_error")
            .to_owned();
        let message = json["error"]["message"]
            .as_str()
            .map(str::to_owned)
            .unwrap_or_else(|| format!("the admin API answered {status}"));
        Err(ApiFailure {
            status,
            code,
            message,
        }
        .into())
    }
}
