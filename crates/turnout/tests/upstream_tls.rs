//! `[upstream] tls = true`: the router speaks TLS to its upstreams, trusting only the
//! configured CA; and `https://` webhooks, checked against `[notify] ca`. Needs the
//! `openssl` command (scripts/test-all.sh installs it).

use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use turnout_testkit::{eventually, make_pki, HttpClient, Router, RouterOptions};

const WAIT: Duration = Duration::from_secs(10);

/// A TLS backend: `GET /` answers `tls-backend`, anything else (`/healthz`) `ok`, both
/// 200, keep-alive. Returns its address.
async fn tls_backend(cert: &Path, key: &Path) -> String {
    tls_server(cert, key).await.0
}

/// [`tls_backend`], also returning the bodies of the POSTs it took.
async fn tls_server(cert: &Path, key: &Path) -> (String, Arc<Mutex<Vec<String>>>) {
    let posted = Arc::new(Mutex::new(Vec::new()));
    let seen = posted.clone();
    let chain = CertificateDer::pem_file_iter(cert)
        .unwrap()
        .collect::<Result<Vec<_>, _>>()
        .unwrap();
    let key = PrivateKeyDer::from_pem_file(key).unwrap();
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(chain, key)
        .unwrap();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    tokio::spawn(async move {
        loop {
            let Ok((tcp, _)) = listener.accept().await else {
                return;
            };
            let acceptor = acceptor.clone();
            let seen = seen.clone();
            tokio::spawn(async move {
                let Ok(mut tls) = acceptor.accept(tcp).await else {
                    return;
                };
                let mut buf = Vec::new();
                let mut chunk = [0u8; 4096];
                loop {
                    while let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                        let head = String::from_utf8_lossy(&buf[..end]).into_owned();
                        buf.drain(..end + 4);
                        let path = head.split(' ').nth(1).unwrap_or("/");
                        // A body (the POST of the test) is short and arrives with its head.
                        let len = head
                            .lines()
                            .find_map(|l| {
                                let (k, v) = l.split_once(':')?;
                                k.eq_ignore_ascii_case("content-length")
                                    .then(|| v.trim().parse::<usize>().ok())?
                            })
                            .unwrap_or(0);
                        while buf.len() < len {
                            match tls.read(&mut chunk).await {
                                Ok(0) | Err(_) => return,
                                Ok(n) => buf.extend_from_slice(&chunk[..n]),
                            }
                        }
                        if len > 0 {
                            let body = String::from_utf8_lossy(&buf[..len]).into_owned();
                            seen.lock().unwrap().push(body);
                        }
                        buf.drain(..len);
                        let body = if path == "/" { "tls-backend" } else { "ok" };
                        let resp = format!(
                            "HTTP/1.1 200 OK\r\ncontent-length: {}\r\n\r\n{body}",
                            body.len()
                        );
                        if tls.write_all(resp.as_bytes()).await.is_err() {
                            return;
                        }
                    }
                    match tls.read(&mut chunk).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => buf.extend_from_slice(&chunk[..n]),
                    }
                }
            });
        }
    });
    (addr, posted)
}

async fn router(upstream: &str, ca: &Path) -> Router {
    Router::start(
        Path::new(env!("CARGO_BIN_EXE_turnout")),
        &RouterOptions {
            blue: vec![upstream.to_owned()],
            extra: format!(
                "[upstream]\ntls = true\nca = {:?}\nserver_name = \"localhost\"\n",
                ca.display().to_string()
            ),
            ..Default::default()
        },
    )
    .await
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_reach_a_tls_upstream_and_a_wrong_ca_fails_the_handshake() {
    let dir = tempfile::tempdir().unwrap();
    let pki = make_pki(dir.path(), "good");
    let (ca, cert, key) = (pki.ca, pki.server_cert, pki.server_key);
    let other_ca = make_pki(dir.path(), "other").ca;
    let backend = tls_backend(&cert, &key).await;

    // The right CA: health checks pass over TLS, and requests get through (twice on
    // one client connection: the second may reuse the pooled TLS connection).
    let r = router(&backend, &ca).await;
    eventually("blue healthy", WAIT, || async {
        (r.status().await["slots"]["blue"]["upstreams"][0]["healthy"] == true).then_some(())
    })
    .await;
    let mut client = HttpClient::http1(&r.data).await.unwrap();
    for _ in 0..2 {
        let reply = client.get("/").await.unwrap();
        assert_eq!(reply.status, 200, "{}", reply.text());
        assert_eq!(reply.text(), "tls-backend");
    }
    // HTTP/2 with a request body: hyper's client connection, over TLS too.
    let mut h2 = HttpClient::http2(&r.data).await.unwrap();
    let reply = h2
        .request(
            http::Method::POST,
            "/",
            &[],
            bytes::Bytes::from_static(b"hello"),
        )
        .await
        .unwrap();
    assert_eq!(reply.status, 200, "{}", reply.text());
    assert_eq!(reply.text(), "tls-backend");

    // A CA that did not sign the backend's certificate: the handshake fails, and says so.
    let bad = router(&backend, &other_ca).await;
    let mut client = HttpClient::http1(&bad.data).await.unwrap();
    let reply = client.get("/").await.unwrap();
    // 502 when the request beat the first health check; 503 once the check (which fails
    // the same way) has taken the upstream out.
    assert!(
        reply.status == 502 || reply.status == 503,
        "status {}: {}",
        reply.status,
        reply.text()
    );
    let expected = format!("TLS handshake with {backend} failed");
    eventually("the handshake failure logged", WAIT, || async {
        bad.stderr().contains(&expected).then_some(())
    })
    .await;
    let log = bad.stderr();
    assert!(
        log.contains("UnknownIssuer") || log.contains("unknown issuer"),
        "{log}"
    );
}

#[test]
fn an_unreadable_ca_file_stops_the_start_with_exit_2() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("turnout.toml");
    std::fs::write(
        &config,
        format!(
            "[listen]\naddr = \"127.0.0.1:0\"\n[admin]\naddr = \"127.0.0.1:0\"\n[state]\ndir = {:?}\n\
             [upstream]\ntls = true\nca = \"missing-ca.pem\"\n",
            dir.path().join("state").display().to_string()
        ),
    )
    .unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_turnout"))
        .arg("serve")
        .arg("--config")
        .arg(&config)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains("[upstream]")
            && stderr.contains("missing-ca.pem")
            && stderr.contains("cannot read the CA certificate"),
        "{stderr}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_https_webhook_gets_the_events_checked_against_the_notify_ca() {
    let dir = tempfile::tempdir().unwrap();
    let pki = make_pki(dir.path(), "hook");
    let (ca, cert, key) = (pki.ca, pki.server_cert, pki.server_key);
    let (hook, posted) = tls_server(&cert, &key).await;
    let port = hook.rsplit_once(':').unwrap().1;
    let blue = turnout_testkit::Backend::start("blue").await;
    let green = turnout_testkit::Backend::start("green").await;
    let r = Router::start(
        Path::new(env!("CARGO_BIN_EXE_turnout")),
        &RouterOptions {
            blue: vec![blue.upstream()],
            green: vec![green.upstream()],
            extra: format!(
                "[notify]\nwebhooks = [\"https://localhost:{port}/hook\"]\nca = {:?}\n",
                ca.display().to_string()
            ),
            ..Default::default()
        },
    )
    .await
    .unwrap();
    r.await_healthy().await;
    let (st, body) = r.switch_to("green").await;
    assert_eq!(st, 200, "{body}");
    let event = eventually("the switch event posted over TLS", WAIT, || async {
        posted.lock().unwrap().iter().find_map(|b| {
            let v: serde_json::Value = serde_json::from_str(b).ok()?;
            (v["kind"] == "switch").then_some(v)
        })
    })
    .await;
    assert_eq!(event["slot"], "green");
    assert!(
        event["text"]
            .as_str()
            .unwrap()
            .contains("switched from blue to green"),
        "{event}"
    );
}
