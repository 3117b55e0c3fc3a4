//! A real HTTP backend standing for one slot's instance.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use http::{header, Request, Response, StatusCode};
use http_body_util::{combinators::BoxBody, BodyExt, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio_tungstenite::tungstenite::protocol::Role;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::WebSocketStream;

type Body = BoxBody<Bytes, Infallible>;

struct Shared {
    name: String,
    healthy: AtomicBool,
    failing: AtomicBool,
    requests: AtomicU64,
    /// How long `/healthz` takes to answer, in milliseconds.
    health_delay_ms: AtomicU64,
}

/// A backend answering with its name. Routes:
/// - `GET /healthz`: 200 while healthy, 503 otherwise;
/// - `POST /upload`: reads the body as it streams and answers the byte count;
/// - `GET /download?bytes=N`: streams N bytes;
/// - `GET /chunked?n=N`: N lines `piece-I`, chunked;
/// - `GET /headers`: the request headers as JSON;
/// - `GET /status?code=N`: the name, with status N;
/// - `GET /set-cookie?NAME=VALUE`: the name, with `Set-Cookie: NAME=VALUE; Path=/`;
/// - `GET /ws`: a WebSocket echo that answers `NAME:MESSAGE`;
/// - anything else: the name, with header `x-backend: NAME`.
pub struct Backend {
    pub addr: SocketAddr,
    shared: Arc<Shared>,
    _stop: oneshot::Sender<()>,
}

impl Backend {
    /// A backend on a free loopback port.
    pub async fn start(name: &str) -> Backend {
        Backend::start_on(name, 0).await.expect("start backend")
    }

    /// A backend on `127.0.0.1:port` (0: a free port).
    pub async fn start_on(name: &str, port: u16) -> std::io::Result<Backend> {
        let listener = TcpListener::bind(("127.0.0.1", port)).await?;
        let addr = listener.local_addr()?;
        let shared = Arc::new(Shared {
            name: name.to_owned(),
            healthy: AtomicBool::new(true),
            failing: AtomicBool::new(false),
            requests: AtomicU64::new(0),
            health_delay_ms: AtomicU64::new(0),
        });
        let (stop, mut stopped) = oneshot::channel::<()>();
        let s = shared.clone();
        tokio::spawn(async move {
            loop {
                let (stream, _) = tokio::select! {
                    a = listener.accept() => match a { Ok(a) => a, Err(_) => continue },
                    _ = &mut stopped => return,
                };
                let s = s.clone();
                tokio::spawn(async move {
                    let svc = hyper::service::service_fn(move |req| handle(s.clone(), req));
                    let _ = auto::Builder::new(TokioExecutor::new())
                        .serve_connection_with_upgrades(TokioIo::new(stream), svc)
                        .await;
                });
            }
        });
        Ok(Backend {
            addr,
            shared,
            _stop: stop,
        })
    }

    /// `host:port` for a turnout config.
    pub fn upstream(&self) -> String {
        self.addr.to_string()
    }

    pub fn name(&self) -> &str {
        &self.shared.name
    }

    /// Makes `/healthz` answer 200 (true) or 503 (false).
    pub fn set_healthy(&self, healthy: bool) {
        self.shared.healthy.store(healthy, Ordering::SeqCst);
    }

    /// Makes every request but `/healthz` answer 500 (true) or as usual (false): a bad
    /// version that passes its health checks.
    pub fn set_failing(&self, failing: bool) {
        self.shared.failing.store(failing, Ordering::SeqCst);
    }

    /// Makes `/healthz` take `delay` to answer (a slow first check).
    pub fn set_health_delay(&self, delay: Duration) {
        self.shared.health_delay_ms.store(
            u64::try_from(delay.as_millis()).unwrap_or(u64::MAX),
            Ordering::SeqCst,
        );
    }

    /// Requests received, health checks excluded.
    pub fn requests(&self) -> u64 {
        self.shared.requests.load(Ordering::SeqCst)
    }
}

fn full(status: StatusCode, body: impl Into<Bytes>) -> Response<Body> {
    let mut r = Response::new(Full::new(body.into()).boxed());
    *r.status_mut() = status;
    r
}

async fn handle(s: Arc<Shared>, mut req: Request<Incoming>) -> Result<Response<Body>, Infallible> {
    let path = req.uri().path().to_owned();
    if path == "/healthz" {
        let delay = s.health_delay_ms.load(Ordering::SeqCst);
        if delay > 0 {
            tokio::time::sleep(Duration::from_millis(delay)).await;
        }
        let ok = s.healthy.load(Ordering::SeqCst);
        return Ok(full(
            if ok {
                StatusCode::OK
            } else {
                StatusCode::SERVICE_UNAVAILABLE
            },
            if ok { "ok" } else { "down" },
        ));
    }
    s.requests.fetch_add(1, Ordering::SeqCst);
    if s.failing.load(Ordering::SeqCst) {
        let mut r = full(StatusCode::INTERNAL_SERVER_ERROR, s.name.clone());
        if let Ok(v) = hyper::header::HeaderValue::from_str(&s.name) {
            r.headers_mut().insert("x-backend", v);
        }
        return Ok(r);
    }
    let resp = match path.as_str() {
        "/upload" => {
            let mut body = req.into_body();
            let mut n: u64 = 0;
            while let Some(frame) = body.frame().await {
                match frame {
                    Ok(f) => n += f.data_ref().map_or(0, |d| d.len() as u64),
                    Err(_) => return Ok(full(StatusCode::BAD_REQUEST, "broken body")),
                }
            }
            full(StatusCode::OK, n.to_string())
        }
        "/download" => {
            let total: u64 = req
                .uri()
                .query()
                .and_then(|q| q.strip_prefix("bytes="))
                .and_then(|n| n.parse().ok())
                .unwrap_or(0);
            let chunk = Bytes::from(vec![b'x'; 64 * 1024]);
            let stream = futures_util::stream::unfold(total, move |left| {
                let chunk = chunk.clone();
                async move {
                    if left == 0 {
                        return None;
                    }
                    let n = left.min(chunk.len() as u64);
                    Some((
                        Ok::<_, Infallible>(Frame::data(chunk.slice(..n as usize))),
                        left - n,
                    ))
                }
            });
            let mut r = Response::new(BodyExt::boxed(StreamBody::new(stream)));
            r.headers_mut().insert(header::CONTENT_LENGTH, total.into());
            r
        }
        "/chunked" => {
            // N pieces "piece-I\n", sent without a length: the chunked coding.
            let n: usize = req
                .uri()
                .query()
                .and_then(|q| q.strip_prefix("n="))
                .and_then(|n| n.parse().ok())
                .unwrap_or(3);
            let pieces = (0..n)
                .map(|i| Ok::<_, Infallible>(Frame::data(Bytes::from(format!("piece-{i}\n")))));
            Response::new(BodyExt::boxed(StreamBody::new(futures_util::stream::iter(
                pieces,
            ))))
        }
        "/headers" => {
            let map: serde_json::Map<String, serde_json::Value> = req
                .headers()
                .iter()
                .map(|(k, v)| {
                    (
                        k.to_string(),
                        String::from_utf8_lossy(v.as_bytes()).into_owned().into(),
                    )
                })
                .collect();
            full(StatusCode::OK, serde_json::Value::Object(map).to_string())
        }
        "/status" => {
            // GET /status?code=N: an empty-ish answer with status N.
            let code = req
                .uri()
                .query()
                .and_then(|q| q.strip_prefix("code="))
                .and_then(|n| n.parse::<u16>().ok())
                .and_then(|n| StatusCode::from_u16(n).ok())
                .unwrap_or(StatusCode::OK);
            full(code, s.name.clone())
        }
        "/set-cookie" => {
            let mut r = full(StatusCode::OK, s.name.clone());
            if let Some(v) = req
                .uri()
                .query()
                .and_then(|q| format!("{q}; Path=/").parse().ok())
            {
                r.headers_mut().insert(header::SET_COOKIE, v);
            }
            r
        }
        "/slow" => {
            let ms: u64 = req
                .uri()
                .query()
                .and_then(|q| q.strip_prefix("ms="))
                .and_then(|n| n.parse().ok())
                .unwrap_or(100);
            tokio::time::sleep(Duration::from_millis(ms)).await;
            full(StatusCode::OK, s.name.clone())
        }
        "/ws" => {
            let Some(key) = req.headers().get("sec-websocket-key").cloned() else {
                return Ok(full(StatusCode::BAD_REQUEST, "not a websocket request"));
            };
            let accept =
                tokio_tungstenite::tungstenite::handshake::derive_accept_key(key.as_bytes());
            let on_upgrade = hyper::upgrade::on(&mut req);
            let name = s.name.clone();
            tokio::spawn(async move {
                let Ok(upgraded) = on_upgrade.await else {
                    return;
                };
                let mut ws =
                    WebSocketStream::from_raw_socket(TokioIo::new(upgraded), Role::Server, None)
                        .await;
                while let Some(Ok(msg)) = ws.next().await {
                    match msg {
                        Message::Text(t)
                            if ws.send(Message::text(format!("{name}:{t}"))).await.is_err() =>
                        {
                            return
                        }
                        Message::Close(_) => return,
                        _ => {}
                    }
                }
            });
            let mut r = full(StatusCode::SWITCHING_PROTOCOLS, Bytes::new());
            let h = r.headers_mut();
            h.insert(header::CONNECTION, "upgrade".parse().expect("static"));
            h.insert(header::UPGRADE, "websocket".parse().expect("static"));
            h.insert("sec-websocket-accept", accept.parse().expect("base64"));
            r
        }
        _ => full(StatusCode::OK, s.name.clone()),
    };
    let mut resp = resp;
    resp.headers_mut().insert(
        "x-backend",
        s.name
            .parse()
            .unwrap_or(header::HeaderValue::from_static("?")),
    );
    Ok(resp)
}
