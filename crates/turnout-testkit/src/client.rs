//! A keep-alive HTTP client: one TCP connection, requests one after another, as a browser
//! or a load balancer would send them.

use bytes::Bytes;
use http::{Method, Request, StatusCode, Version};
use http_body_util::{BodyExt, Full};
use hyper::client::conn::{http1, http2};
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::TcpStream;

enum Sender {
    H1(http1::SendRequest<Full<Bytes>>),
    H2(http2::SendRequest<Full<Bytes>>),
}

pub struct HttpClient {
    authority: String,
    sender: Sender,
}

/// A response read whole.
#[derive(Debug)]
pub struct Reply {
    pub status: StatusCode,
    pub version: Version,
    pub headers: http::HeaderMap,
    pub body: Bytes,
}

impl Reply {
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

impl HttpClient {
    /// An HTTP/1.1 keep-alive connection to `authority` (`host:port`).
    pub async fn http1(authority: &str) -> anyhow::Result<HttpClient> {
        let stream = TcpStream::connect(authority).await?;
        stream.set_nodelay(true)?;
        let (sender, conn) = http1::handshake(TokioIo::new(stream)).await?;
        tokio::spawn(async move {
            let _ = conn.await;
        });
        Ok(HttpClient {
            authority: authority.to_owned(),
            sender: Sender::H1(sender),
        })
    }

    /// An HTTP/2 connection with prior knowledge (h2c).
    pub async fn http2(authority: &str) -> anyhow::Result<HttpClient> {
        let stream = TcpStream::connect(authority).await?;
        let (sender, conn) = http2::handshake(TokioExecutor::new(), TokioIo::new(stream)).await?;
        tokio::spawn(async move {
            let _ = conn.await;
        });
        Ok(HttpClient {
            authority: authority.to_owned(),
            sender: Sender::H2(sender),
        })
    }

    pub async fn get(&mut self, path: &str) -> anyhow::Result<Reply> {
        self.request(Method::GET, path, &[], Bytes::new()).await
    }

    pub async fn request(
        &mut self,
        method: Method,
        path: &str,
        headers: &[(&str, &str)],
        body: Bytes,
    ) -> anyhow::Result<Reply> {
        let mut b = Request::builder().method(method);
        b = match &self.sender {
            Sender::H1(_) => b.uri(path).header("host", self.authority.as_str()),
            Sender::H2(_) => b
                .uri(format!("http://{}{}", self.authority, path))
                .version(Version::HTTP_2),
        };
        for (k, v) in headers {
            b = b.header(*k, *v);
        }
        let req = b.body(Full::new(body))?;
        let resp = match &mut self.sender {
            Sender::H1(s) => {
                s.ready().await?;
                s.send_request(req).await?
            }
            Sender::H2(s) => {
                s.ready().await?;
                s.send_request(req).await?
            }
        };
        let status = resp.status();
        let version = resp.version();
        let (parts, body) = resp.into_parts();
        let body = body.collect().await?.to_bytes();
        Ok(Reply {
            status,
            version,
            headers: parts.headers,
            body,
        })
    }
}
