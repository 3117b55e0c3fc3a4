//! A real `turnout serve` process on free loopback ports.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use anyhow::{anyhow, bail, Context as _};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

pub const TOKEN: &str = "test-token";

/// What a test router is made of.
#[derive(Clone, Debug, Default)]
pub struct RouterOptions {
    pub blue: Vec<String>,
    pub green: Vec<String>,
    /// `version` of `[slots.blue]` (what its static upstreams run), if any.
    pub blue_version: Option<String>,
    /// `version` of `[slots.green]`, if any.
    pub green_version: Option<String>,
    /// Extra TOML appended to the generated config (sections other than the generated
    /// `[listen]`, `[admin]`, `[state]`, `[slots.*]`).
    pub extra: String,
    /// Extra keys for `[listen]`.
    pub listen_extra: String,
    /// Extra keys for the generated `[health]`.
    pub health_extra: String,
    /// `[health] unhealthy` (failed checks in a row that take an upstream out); 1 when
    /// `None`.
    pub unhealthy: Option<u32>,
    /// Extra keys for `[state]` (e.g. the etcd backend).
    pub state_extra: String,
    /// Extra keys for `[admin]`.
    pub admin_extra: String,
    /// No `[admin] token` in the config (the router generates one).
    pub no_admin_token: bool,
}

/// A running router. Killed (SIGKILL) when dropped; its state directory lives as long as
/// the handle, so that a restart finds the same state.
pub struct Router {
    pub bin: PathBuf,
    pub data: String,
    pub admin: String,
    /// The `[listen.tls]` address, when the config has one (else empty).
    pub tls: String,
    pub config: PathBuf,
    child: Option<Child>,
    /// The router process that took over from `child` (`turnout upgrade`, `reload`): not
    /// this handle's child, killed by pid on drop.
    successor: Option<u32>,
    dir: tempfile::TempDir,
}

impl Drop for Router {
    fn drop(&mut self) {
        if let Some(pid) = self.successor.take() {
            kill(pid, "-KILL");
        }
    }
}

fn kill(pid: u32, signal: &str) -> bool {
    std::process::Command::new("kill")
        .args([signal, &pid.to_string()])
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// Whether `pid` is a running process (not a zombie).
pub fn running(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|stat| {
        stat.rsplit_once(')')
            .is_some_and(|(_, rest)| !rest.trim_start().starts_with('Z'))
    })
}

impl Router {
    /// Writes a config for `opts` and starts `bin serve` with it; returns once both ports
    /// are known.
    pub async fn start(bin: &Path, opts: &RouterOptions) -> anyhow::Result<Router> {
        let dir = tempfile::tempdir()?;
        let list = |v: &[String]| {
            v.iter()
                .map(|a| format!("{a:?}"))
                .collect::<Vec<_>>()
                .join(", ")
        };
        let version = |v: &Option<String>| {
            v.as_ref()
                .map(|v| format!("version = {v:?}\n"))
                .unwrap_or_default()
        };
        let config = format!(
            "[listen]\naddr = \"127.0.0.1:0\"\n{listen_extra}\n\
             [admin]\naddr = \"127.0.0.1:0\"\n{token}{admin_extra}\n\
             [state]\ndir = {state:?}\n{state_extra}\n\
             [health]\npath = \"/healthz\"\ninterval = \"100ms\"\ntimeout = \"500ms\"\nhealthy = 1\nunhealthy = {unhealthy}\n{health_extra}\n\
             [slots.blue]\nupstreams = [{blue}]\n{blue_version}\n[slots.green]\nupstreams = [{green}]\n{green_version}\n{extra}\n",
            listen_extra = opts.listen_extra,
            token = if opts.no_admin_token {
                ""
            } else {
                "token = \"env:TURNOUT_ADMIN_TOKEN\"\n"
            },
            admin_extra = opts.admin_extra,
            health_extra = opts.health_extra,
            unhealthy = opts.unhealthy.unwrap_or(1),
            state_extra = opts.state_extra,
            state = dir.path().join("state").display().to_string(),
            blue = list(&opts.blue),
            green = list(&opts.green),
            blue_version = version(&opts.blue_version),
            green_version = version(&opts.green_version),
            extra = opts.extra,
        );
        let path = dir.path().join("turnout.toml");
        std::fs::write(&path, config)?;
        let mut r = Router {
            bin: bin.to_owned(),
            data: String::new(),
            admin: String::new(),
            tls: String::new(),
            config: path,
            child: None,
            successor: None,
            dir,
        };
        r.spawn().await?;
        Ok(r)
    }

    /// The state/config directory.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    async fn spawn(&mut self) -> anyhow::Result<()> {
        let mut child = Command::new(&self.bin)
            .arg("serve")
            .arg("--config")
            .arg(&self.config)
            .env("TURNOUT_ADMIN_TOKEN", TOKEN)
            .env("TURNOUT_LOG", "info")
            .stdout(Stdio::piped())
            .stderr(Stdio::from(std::fs::File::create(
                self.dir.path().join("stderr.log"),
            )?))
            .kill_on_drop(true)
            .spawn()
            .with_context(|| format!("starting {}", self.bin.display()))?;
        let stdout = child.stdout.take().ok_or_else(|| anyhow!("no stdout"))?;
        let mut lines = BufReader::new(stdout).lines();
        let (mut data, mut admin, mut tls) = (None, None, None);
        let read = async {
            while let Some(line) = lines.next_line().await? {
                if let Some(a) = line.strip_prefix("turnout: data plane listening on http://") {
                    data = Some(a.to_owned());
                } else if let Some(a) =
                    line.strip_prefix("turnout: TLS data plane listening on https://")
                {
                    tls = Some(a.to_owned());
                } else if let Some(a) = line.strip_prefix("turnout: admin API listening on http://")
                {
                    admin = Some(a.to_owned());
                }
                if data.is_some() && admin.is_some() {
                    return Ok::<_, anyhow::Error>(());
                }
            }
            bail!("turnout exited before listening; stderr: {}", self.stderr())
        };
        tokio::time::timeout(Duration::from_secs(30), read)
            .await
            .map_err(|_| {
                anyhow!(
                    "turnout did not start listening within 30s; stderr: {}",
                    self.stderr()
                )
            })??;
        // Keep draining stdout so that the child never blocks on a full pipe.
        tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
        self.data = data.unwrap_or_default();
        self.admin = admin.unwrap_or_default();
        self.tls = tls.unwrap_or_default();
        self.child = Some(child);
        Ok(())
    }

    /// What the router wrote to stderr so far.
    pub fn stderr(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("stderr.log")).unwrap_or_default()
    }

    /// The router's process id (the successor's after a handover).
    pub fn pid(&self) -> Option<u32> {
        self.successor
            .or_else(|| self.child.as_ref().and_then(|c| c.id()))
    }

    /// After `turnout upgrade` or `reload`: `pid` serves now. Waits (at most 60 s) for
    /// the previous process to finish its requests and exit, and returns its exit code.
    pub async fn handed_over(&mut self, pid: u32) -> anyhow::Result<Option<i32>> {
        let code = match self.child.take() {
            Some(mut c) => tokio::time::timeout(Duration::from_secs(60), c.wait())
                .await
                .map_err(|_| anyhow!("the previous router process did not exit within 60s"))??
                .code(),
            None => {
                if let Some(old) = self.successor {
                    crate::eventually(
                        "the previous router process exits",
                        Duration::from_secs(60),
                        || async { (!running(old)).then_some(()) },
                    )
                    .await;
                }
                Some(0)
            }
        };
        self.successor = Some(pid);
        Ok(code)
    }

    /// SIGKILL, and wait for the process to be gone.
    pub async fn kill9(&mut self) {
        if let Some(pid) = self.successor.take() {
            kill(pid, "-KILL");
            crate::eventually(
                "the router process is gone",
                Duration::from_secs(10),
                || async { (!running(pid)).then_some(()) },
            )
            .await;
        }
        if let Some(mut c) = self.child.take() {
            let _ = c.kill().await;
        }
    }

    /// `turnout stop` (the router and the service's instances), and wait for the router
    /// to exit.
    pub async fn stop_service(&mut self) {
        let pid = self.pid().expect("a running router");
        let (code, out, err) = self.cli(&["stop"]).await;
        assert_eq!(code, 0, "turnout stop: {out}{err}");
        match self.child.take() {
            Some(mut c) if self.successor.is_none() => {
                let st = tokio::time::timeout(Duration::from_secs(60), c.wait())
                    .await
                    .expect("the router exits within 60s after turnout stop")
                    .expect("wait");
                assert_eq!(st.code(), Some(0), "{}", self.stderr());
            }
            _ => {
                crate::eventually(
                    "the router exits after turnout stop",
                    Duration::from_secs(60),
                    || async { (!running(pid)).then_some(()) },
                )
                .await;
                self.successor = None;
            }
        }
    }

    /// SIGTERM, and wait for a clean exit; returns the exit code.
    pub async fn terminate(&mut self) -> anyhow::Result<Option<i32>> {
        if let Some(pid) = self.successor.take() {
            if !kill(pid, "-TERM") {
                bail!("kill -TERM {pid} failed");
            }
            crate::eventually(
                "the router exits after SIGTERM",
                Duration::from_secs(30),
                || async { (!running(pid)).then_some(()) },
            )
            .await;
            return Ok(Some(0));
        }
        let mut c = self.child.take().ok_or_else(|| anyhow!("not running"))?;
        let pid = c.id().ok_or_else(|| anyhow!("no pid"))?;
        let status = std::process::Command::new("kill")
            .arg("-TERM")
            .arg(pid.to_string())
            .status()?;
        if !status.success() {
            bail!("kill -TERM {pid} failed");
        }
        let st = tokio::time::timeout(Duration::from_secs(30), c.wait()).await??;
        Ok(st.code())
    }

    /// Starts the router again with the same config and state (new ports).
    pub async fn restart(&mut self) -> anyhow::Result<()> {
        self.kill9().await;
        self.spawn().await
    }

    /// Runs a CLI command against this router (`--admin`, token in env); returns exit
    /// code, stdout, stderr.
    pub async fn cli(&self, args: &[&str]) -> (i32, String, String) {
        let out = Command::new(&self.bin)
            .args(args)
            .arg("--admin")
            .arg(format!("http://{}", self.admin))
            .env("TURNOUT_ADMIN_TOKEN", TOKEN)
            .output()
            .await
            .expect("run turnout CLI");
        (
            out.status.code().unwrap_or(-1),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    }

    /// `GET /api/v1/status` as JSON (via the CLI's `status --json`).
    pub async fn status(&self) -> serde_json::Value {
        let (code, out, err) = self.cli(&["status", "--json"]).await;
        assert_eq!(code, 0, "status failed: {err}");
        serde_json::from_str(&out).expect("status JSON")
    }

    /// `POST /api/v1/switch` to `to` through the API: its status and JSON body.
    pub async fn switch_to(&self, to: &str) -> (http::StatusCode, serde_json::Value) {
        self.api(
            http::Method::POST,
            "/api/v1/switch",
            Some(serde_json::json!({ "to": to })),
        )
        .await
    }

    /// Waits (at most 10 s) until every upstream of both slots has passed a health check.
    pub async fn await_healthy(&self) {
        crate::eventually("both slots healthy", Duration::from_secs(10), || async {
            let s = self.status().await;
            let healthy = |slot: &str| {
                s["slots"][slot]["upstreams"]
                    .as_array()
                    .is_some_and(|u| u.iter().all(|u| u["healthy"] == true))
            };
            (healthy("blue") && healthy("green")).then_some(())
        })
        .await;
    }

    /// Calls the admin API directly (faster than the CLI in loops).
    pub async fn api(
        &self,
        method: http::Method,
        path: &str,
        body: Option<serde_json::Value>,
    ) -> (http::StatusCode, serde_json::Value) {
        use bytes::Bytes;
        use http_body_util::{BodyExt, Full};
        let stream = tokio::net::TcpStream::connect(&self.admin)
            .await
            .expect("connect admin");
        let (mut s, conn) =
            hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
                .await
                .expect("admin handshake");
        tokio::spawn(async move {
            let _ = conn.await;
        });
        let body = body.map(|b| Bytes::from(b.to_string())).unwrap_or_default();
        let req = http::Request::builder()
            .method(method)
            .uri(path)
            .header("host", self.admin.as_str())
            .header("authorization", format!("Bearer {TOKEN}"))
            .header("content-type", "application/json")
            .body(Full::new(body))
            .expect("request");
        let resp = s.send_request(req).await.expect("admin request");
        let status = resp.status();
        let bytes = resp
            .into_body()
            .collect()
            .await
            .expect("admin body")
            .to_bytes();
        (
            status,
            serde_json::from_slice(&bytes).unwrap_or(serde_json::Value::Null),
        )
    }
}
