//! A real etcd server (Debian's `etcd-server`) on free loopback ports, with a temporary
//! data directory: for the fleet tests. `scripts/test-all.sh` installs it.

use std::path::PathBuf;
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context as _};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::process::{Child, Command};

/// A running etcd. Killed when dropped.
pub struct Etcd {
    /// `http://127.0.0.1:PORT` (or `https://` with [`EtcdTlsFiles`]), for `[state]
    /// endpoints`.
    pub endpoint: String,
    /// A plain HTTP client port (`/health`, the JSON gateway): the endpoint's own without
    /// TLS, a second listener with it.
    plain_port: u16,
    peer_port: u16,
    tls: Option<EtcdTlsFiles>,
    dir: tempfile::TempDir,
    child: Option<Child>,
}

/// TLS for an etcd started by [`Etcd::start_tls`]: its server certificate and key, and the
/// CA that client certificates must be signed by (`--client-cert-auth`).
#[derive(Clone, Debug)]
pub struct EtcdTlsFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
    pub client_ca: PathBuf,
}

/// The etcd binary: `$ETCD_BIN`, else `etcd` on the PATH.
fn binary() -> PathBuf {
    std::env::var_os("ETCD_BIN").map_or_else(|| PathBuf::from("etcd"), PathBuf::from)
}

fn free_port() -> anyhow::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

impl Etcd {
    /// Starts etcd and waits until it answers `/health`.
    pub async fn start() -> anyhow::Result<Etcd> {
        Etcd::start_with(None).await
    }

    /// Starts etcd serving clients over TLS only and requiring client certificates
    /// signed by `tls.client_ca` (plus a plain port on loopback for `/health`).
    pub async fn start_tls(tls: EtcdTlsFiles) -> anyhow::Result<Etcd> {
        Etcd::start_with(Some(tls)).await
    }

    async fn start_with(tls: Option<EtcdTlsFiles>) -> anyhow::Result<Etcd> {
        let client_port = free_port()?;
        let plain_port = if tls.is_some() {
            free_port()?
        } else {
            client_port
        };
        let scheme = if tls.is_some() { "https" } else { "http" };
        let mut etcd = Etcd {
            endpoint: format!("{scheme}://127.0.0.1:{client_port}"),
            plain_port,
            peer_port: free_port()?,
            tls,
            dir: tempfile::tempdir()?,
            child: None,
        };
        etcd.spawn().await?;
        Ok(etcd)
    }

    async fn spawn(&mut self) -> anyhow::Result<()> {
        let client = self.endpoint.clone();
        let listen = if self.tls.is_some() {
            format!("{client},http://127.0.0.1:{}", self.plain_port)
        } else {
            client.clone()
        };
        let peer = format!("http://127.0.0.1:{}", self.peer_port);
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.path().join("etcd.log"))?;
        let mut cmd = Command::new(binary());
        if let Some(tls) = &self.tls {
            cmd.arg(format!("--cert-file={}", tls.cert.display()))
                .arg(format!("--key-file={}", tls.key.display()))
                .arg(format!("--trusted-ca-file={}", tls.client_ca.display()))
                .arg("--client-cert-auth");
        }
        let child = cmd
            .arg("--name=t")
            .arg(format!("--data-dir={}", self.dir.path().join("data").display()))
            .arg(format!("--listen-client-urls={listen}"))
            .arg(format!("--advertise-client-urls={client}"))
            .arg(format!("--listen-peer-urls={peer}"))
            .arg(format!("--initial-advertise-peer-urls={peer}"))
            .arg(format!("--initial-cluster=t={peer}"))
            .arg("--logger=zap")
            .arg("--log-level=warn")
            .stdout(Stdio::null())
            .stderr(Stdio::from(log))
            .kill_on_drop(true)
            .spawn()
            .with_context(|| {
                format!(
                    "starting {} (Debian's etcd-server; `bash scripts/test-all.sh` installs it, or set ETCD_BIN)",
                    binary().display()
                )
            })?;
        self.child = Some(child);
        let end = Instant::now() + Duration::from_secs(30);
        loop {
            if self.healthy().await {
                return Ok(());
            }
            if let Some(Some(status)) = self.child.as_mut().map(|c| c.try_wait().ok().flatten()) {
                bail!("etcd exited ({status}): {}", self.log());
            }
            if Instant::now() > end {
                bail!("etcd did not become healthy within 30s: {}", self.log());
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Whether etcd answers `GET /health` with `"health":"true"`.
    async fn healthy(&self) -> bool {
        let check = async {
            let mut s = tokio::net::TcpStream::connect(("127.0.0.1", self.plain_port)).await?;
            s.write_all(b"GET /health HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n")
                .await?;
            let mut buf = Vec::new();
            s.read_to_end(&mut buf).await?;
            Ok::<_, std::io::Error>(String::from_utf8_lossy(&buf).contains("\"health\":\"true\""))
        };
        matches!(
            tokio::time::timeout(Duration::from_secs(2), check).await,
            Ok(Ok(true))
        )
    }

    /// What etcd logged.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("etcd.log")).unwrap_or_default()
    }

    /// Stops etcd (SIGKILL: as abrupt as a crash or a partition) and waits for it.
    pub async fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill().await;
        }
    }

    /// Deletes its data (it must be stopped): started again, it is a new, empty etcd on
    /// the same ports — a member rebuilt without its data dir.
    pub fn wipe(&mut self) -> anyhow::Result<()> {
        if self.child.is_some() {
            return Err(anyhow!("etcd is running: stop it first"));
        }
        let data = self.dir.path().join("data");
        if data.exists() {
            std::fs::remove_dir_all(&data)
                .with_context(|| format!("deleting {}", data.display()))?;
        }
        Ok(())
    }

    /// Starts it again on the same ports with the same data.
    pub async fn start_again(&mut self) -> anyhow::Result<()> {
        if self.child.is_some() {
            return Err(anyhow!("etcd is running"));
        }
        self.spawn().await
    }

    /// Turns on etcd's authentication with a `root` user (role `root`) and `password`,
    /// through the JSON gateway of the plain port.
    pub async fn enable_auth(&self, password: &str) -> anyhow::Result<()> {
        let calls = [
            ("/v3/auth/role/add", r#"{"name":"root"}"#.to_owned()),
            (
                "/v3/auth/user/add",
                format!(r#"{{"name":"root","password":{password:?}}}"#),
            ),
            (
                "/v3/auth/user/grant",
                r#"{"user":"root","role":"root"}"#.to_owned(),
            ),
            ("/v3/auth/enable", "{}".to_owned()),
        ];
        for (path, body) in calls {
            let mut s = tokio::net::TcpStream::connect(("127.0.0.1", self.plain_port)).await?;
            let req = format!(
                "POST {path} HTTP/1.0\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
                body.len()
            );
            s.write_all(req.as_bytes()).await?;
            let mut buf = Vec::new();
            tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut buf)).await??;
            let text = String::from_utf8_lossy(&buf);
            if !text.starts_with("HTTP/1.0 200") && !text.starts_with("HTTP/1.1 200") {
                bail!("etcd {path}: {text}");
            }
        }
        Ok(())
    }

    /// `[state]` keys for a router on this etcd under `prefix`.
    pub fn state_config(&self, prefix: &str) -> String {
        format!(
            "backend = \"etcd\"\nendpoints = [{:?}]\nprefix = {prefix:?}\n",
            self.endpoint
        )
    }
}
