//! The shop: arguments, the SQLite catalogue, and the axum routes.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use anyhow::Context as _;
use axum::extract::{Path, Request, State};
use axum::http::{HeaderName, HeaderValue, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use rusqlite::{Connection, OptionalExtension};
use serde::Deserialize;
use serde_json::{json, Value};
use turnout_core::units::parse_duration;

/// Creates the catalogue when it is not there yet (WAL mode, three items).
fn prepare(conn: &Connection) -> rusqlite::Result<()> {
    conn.pragma_update(None, "journal_mode", "WAL")?;
    let result = conn.execute_batch(
        "BEGIN IMMEDIATE;
         CREATE TABLE IF NOT EXISTS items (
             id INTEGER PRIMARY KEY AUTOINCREMENT,
             name TEXT NOT NULL,
             price_cents INTEGER NOT NULL
         );
         INSERT INTO items (name, price_cents)
             SELECT name, price FROM (SELECT 'coffee' AS name, 250 AS price
                 UNION ALL SELECT 'tea', 200 UNION ALL SELECT 'cake', 450)
             WHERE NOT EXISTS (SELECT 1 FROM items);
         COMMIT;",
    );
    if result.is_err() && !conn.is_autocommit() {
        // A failed statement inside the transaction: leave it before trying again.
        let _ = conn.execute_batch("ROLLBACK");
    }
    result
}

/// Whether SQLite said another connection holds the lock ("database is locked").
fn is_busy(e: &rusqlite::Error) -> bool {
    matches!(
        e.sqlite_error_code(),
        Some(rusqlite::ErrorCode::DatabaseBusy | rusqlite::ErrorCode::DatabaseLocked)
    )
}

/// Command-line arguments.
#[derive(Debug, Clone, clap::Parser)]
#[command(
    name = "turnout-demo-app",
    about = "A tiny shop to release with turnout",
    // `--version` names the version this instance plays, not the binary's.
    disable_version_flag = true
)]
pub struct Args {
    /// Port to listen on (127.0.0.1).
    #[arg(long)]
    pub port: u16,
    /// The version this instance reports.
    #[arg(long)]
    pub version: String,
    /// SQLite database file (created when missing); versions sharing it share the items.
    #[arg(long, default_value = "shop.db")]
    pub db: PathBuf,
    /// Share of API requests answered with 500 (0 to 1).
    #[arg(long, default_value_t = 0.0, value_parser = parse_rate)]
    pub fail_rate: f64,
    /// `--fail-rate` starts only this long after the service started, e.g. `20s` (a
    /// version that goes bad under load after a while: a leak, an expiring cache).
    #[arg(long, value_parser = parse_duration)]
    pub fail_after: Option<Duration>,
    /// Added to every API answer, e.g. `200ms`.
    #[arg(long, value_parser = parse_duration)]
    pub extra_latency: Option<Duration>,
    /// Report prices as strings ("2.50"): one changed field, for shadow comparisons.
    #[arg(long)]
    pub price_as_string: bool,
    /// Stamp every JSON answer with `generated_at` (Unix nanoseconds) and a random
    /// `request_id`, and every answer with a random `x-trace-id` header: differences
    /// between any two answers, which shadow comparisons must tell from regressions.
    #[arg(long)]
    pub noisy: bool,
    /// The status of the answer for an item that does not exist (a version that changes
    /// it changes one status code).
    #[arg(long, default_value_t = 404, value_parser = parse_status)]
    pub not_found_status: u16,
    /// A feature flag this version runs with, announced on API answers as the header
    /// `x-shop-feature: NAME`.
    #[arg(long, value_parser = parse_feature)]
    pub feature: Option<String>,
}

fn parse_status(s: &str) -> Result<u16, String> {
    match s.parse::<u16>() {
        Ok(c) if (200..=599).contains(&c) => Ok(c),
        _ => Err(format!(
            "{s:?} is not a status code between 200 and 599, e.g. 410"
        )),
    }
}

fn parse_feature(s: &str) -> Result<String, String> {
    if HeaderValue::from_str(s).is_ok() && !s.trim().is_empty() {
        Ok(s.to_owned())
    } else {
        Err(format!("{s:?} cannot be a header value, e.g. new-checkout"))
    }
}

fn parse_rate(s: &str) -> Result<f64, String> {
    match s.parse::<f64>() {
        Ok(r) if (0.0..=1.0).contains(&r) => Ok(r),
        _ => Err(format!("{s:?} is not a share between 0 and 1, e.g. 0.3")),
    }
}

/// What the routes share.
#[derive(Clone)]
pub struct Shop {
    args: Arc<Args>,
    db: Arc<Mutex<Connection>>,
    /// A small xorshift state for `--fail-rate` (no need for a random crate).
    dice: Arc<AtomicU64>,
    /// When the service started (for `--fail-after`).
    started: std::time::Instant,
    /// Requests received, by whether they carried `X-Turnout-Shadow: 1` and by method
    /// (`GET /debug/requests`).
    seen: Arc<Mutex<Seen>>,
}

/// Requests counted by `GET /debug/requests`.
#[derive(Default)]
struct Seen {
    /// Copies mirrored by turnout (`X-Turnout-Shadow: 1`), by method.
    shadow: BTreeMap<String, u64>,
    /// Every other request (`/debug/requests` itself excepted), by method.
    direct: BTreeMap<String, u64>,
}

impl Shop {
    /// Opens (creating when needed) the catalogue.
    pub fn open(args: Args) -> anyhow::Result<Shop> {
        let conn = Connection::open(&args.db)
            .with_context(|| format!("opening the database {}", args.db.display()))?;
        // Several instances start at once on one database: each waits for the others'
        // locks instead of failing, and the catalogue is filled once, by whichever gets
        // there first.
        conn.busy_timeout(Duration::from_secs(10))
            .with_context(|| format!("opening the database {}", args.db.display()))?;
        // Switching to WAL upgrades a shared lock to an exclusive one; when two
        // connections do that at once SQLite answers one of them "database is locked"
        // at once (its deadlock avoidance does not call the busy handler), so the
        // preparation is retried until a deadline.
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        let mut pause = Duration::from_millis(5);
        loop {
            match prepare(&conn) {
                Ok(()) => break,
                Err(e) if is_busy(&e) && std::time::Instant::now() < deadline => {
                    std::thread::sleep(pause);
                    pause = (pause * 2).min(Duration::from_millis(200));
                }
                Err(e) => {
                    return Err(e)
                        .with_context(|| format!("preparing the database {}", args.db.display()))
                }
            }
        }
        let seed = u64::from(args.port) << 32 | 0x9e37_79b9;
        Ok(Shop {
            args: Arc::new(args),
            db: Arc::new(Mutex::new(conn)),
            dice: Arc::new(AtomicU64::new(seed)),
            started: std::time::Instant::now(),
            seen: Arc::default(),
        })
    }

    fn next_random(&self) -> u64 {
        let mut x = self.dice.load(Ordering::Relaxed);
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.dice.store(x, Ordering::Relaxed);
        x
    }

    fn roll(&self) -> f64 {
        (self.next_random() >> 11) as f64 / (1u64 << 53) as f64
    }

    /// A JSON answer, stamped when `--noisy`.
    fn json(&self, mut v: Value) -> Json<Value> {
        if self.args.noisy {
            if let Some(o) = v.as_object_mut() {
                let now = SystemTime::now()
                    .duration_since(SystemTime::UNIX_EPOCH)
                    .map_or(0, |d| d.as_nanos());
                o.insert(
                    "generated_at".into(),
                    json!(u64::try_from(now).unwrap_or(0)),
                );
                o.insert(
                    "request_id".into(),
                    json!(format!("{:016x}", self.next_random())),
                );
            }
        }
        Json(v)
    }

    fn item(&self, id: i64, name: String, cents: i64) -> Value {
        let price = if self.args.price_as_string {
            json!(format!("{}.{:02}", cents / 100, cents % 100))
        } else {
            json!(cents as f64 / 100.0)
        };
        json!({ "id": id, "name": name, "price": price })
    }

    /// Misbehaves as configured: `Some(500)` when this request fails.
    async fn misbehave(&self) -> Option<Response> {
        if let Some(d) = self.args.extra_latency {
            tokio::time::sleep(d).await;
        }
        let failing = self
            .args
            .fail_after
            .is_none_or(|after| self.started.elapsed() >= after);
        (failing && self.args.fail_rate > 0.0 && self.roll() < self.args.fail_rate).then(|| {
            error(
                StatusCode::INTERNAL_SERVER_ERROR,
                "injected failure (--fail-rate)",
            )
        })
    }
}

fn error(status: StatusCode, message: &str) -> Response {
    (status, Json(json!({ "error": message }))).into_response()
}

/// The routes.
pub fn router(shop: Shop) -> Router {
    Router::new()
        .route("/healthz", get(|| async { "ok" }))
        .route("/", get(index))
        .route("/api/items", get(list).post(create))
        .route("/api/items/{id}", get(one))
        .route("/debug/requests", get(requests))
        .layer(axum::middleware::from_fn_with_state(shop.clone(), observe))
        .with_state(shop)
}

/// Counts every request for `/debug/requests`; adds `x-trace-id` (`--noisy`) and
/// `x-shop-feature` (`--feature`, API answers) to the answer.
async fn observe(State(shop): State<Shop>, req: Request, next: Next) -> Response {
    let path = req.uri().path().to_owned();
    if path != "/debug/requests" {
        let shadow = req
            .headers()
            .get("x-turnout-shadow")
            .is_some_and(|v| v.as_bytes() == b"1");
        let mut seen = shop.seen.lock().unwrap_or_else(|p| p.into_inner());
        let by_method = if shadow {
            &mut seen.shadow
        } else {
            &mut seen.direct
        };
        *by_method
            .entry(req.method().as_str().to_owned())
            .or_default() += 1;
    }
    let mut resp = next.run(req).await;
    if shop.args.noisy {
        let id = format!("{:016x}", shop.next_random());
        if let Ok(v) = HeaderValue::from_str(&id) {
            resp.headers_mut()
                .insert(HeaderName::from_static("x-trace-id"), v);
        }
    }
    if let Some(feature) = &shop.args.feature {
        if path.starts_with("/api/") {
            if let Ok(v) = HeaderValue::from_str(feature) {
                resp.headers_mut()
                    .insert(HeaderName::from_static("x-shop-feature"), v);
            }
        }
    }
    resp
}

/// `GET /debug/requests`: the requests this instance received, by method, the copies
/// turnout mirrored (`X-Turnout-Shadow: 1`) apart: `{"shadow": {"GET": 3}, "direct":
/// {"GET": 10, "POST": 1}}`.
async fn requests(State(shop): State<Shop>) -> Json<Value> {
    let seen = shop.seen.lock().unwrap_or_else(|p| p.into_inner());
    Json(json!({ "shadow": seen.shadow, "direct": seen.direct }))
}

async fn index(State(shop): State<Shop>) -> Json<Value> {
    shop.json(json!({ "service": "turnout-demo-app", "version": shop.args.version }))
}

async fn list(State(shop): State<Shop>) -> Response {
    if let Some(failed) = shop.misbehave().await {
        return failed;
    }
    let rows: Result<Vec<Value>, rusqlite::Error> = (|| {
        let db = shop.db.lock().unwrap_or_else(|p| p.into_inner());
        let mut stmt = db.prepare("SELECT id, name, price_cents FROM items ORDER BY id")?;
        let rows = stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))?;
        rows.map(|r| r.map(|(id, name, cents)| shop.item(id, name, cents)))
            .collect()
    })();
    match rows {
        Ok(items) => shop
            .json(json!({ "version": shop.args.version, "items": items }))
            .into_response(),
        Err(e) => error(StatusCode::INTERNAL_SERVER_ERROR, &format!("database: {e}")),
    }
}

async fn one(State(shop): State<Shop>, Path(id): Path<i64>) -> Response {
    if let Some(failed) = shop.misbehave().await {
        return failed;
    }
    let row = {
        let db = shop.db.lock().unwrap_or_else(|p| p.into_inner());
        db.query_row(
            "SELECT name, price_cents FROM items WHERE id = ?1",
            [id],
            |r| Ok((r.get::<_, String>(0)?, r.get::<_, i64>(1)?)),
        )
        .optional()
    };
    match row {
        Ok(Some((name, cents))) => shop.json(shop.item(id, name, cents)).into_response(),
        Ok(None) => error(
            StatusCode::from_u16(shop.args.not_found_status).unwrap_or(StatusCode::NOT_FOUND),
            &format!("no item {id}"),
        ),
        Err(e) => error(StatusCode::INTERNAL_SERVER_ERROR, &format!("database: {e}")),
    }
}

#[derive(Deserialize)]
struct NewItem {
    name: String,
    price: f64,
}

async fn create(
    State(shop): State<Shop>,
    body: Result<Json<NewItem>, axum::extract::rejection::JsonRejection>,
) -> Response {
    if let Some(failed) = shop.misbehave().await {
        return failed;
    }
    let Ok(Json(item)) = body else {
        return error(
            StatusCode::BAD_REQUEST,
            r#"expected JSON {"name": "...", "price": 1.5}"#,
        );
    };
    if item.name.trim().is_empty() || !(0.0..1e9).contains(&item.price) {
        return error(
            StatusCode::BAD_REQUEST,
            "name must not be empty and price must be between 0 and 1e9",
        );
    }
    let cents = (item.price * 100.0).round() as i64;
    let id = {
        let db = shop.db.lock().unwrap_or_else(|p| p.into_inner());
        db.execute(
            "INSERT INTO items (name, price_cents) VALUES (?1, ?2)",
            rusqlite::params![item.name, cents],
        )
        .map(|_| db.last_insert_rowid())
    };
    match id {
        Ok(id) => (
            StatusCode::CREATED,
            shop.json(shop.item(id, item.name, cents)),
        )
            .into_response(),
        Err(e) => error(StatusCode::INTERNAL_SERVER_ERROR, &format!("database: {e}")),
    }
}

/// Serves until Ctrl-C or SIGTERM.
pub async fn run(args: Args) -> anyhow::Result<()> {
    let port = args.port;
    let version = args.version.clone();
    let shop = Shop::open(args)?;
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", port))
        .await
        .with_context(|| format!("cannot listen on 127.0.0.1:{port}"))?;
    println!(
        "turnout-demo-app {version} listening on http://{}",
        listener.local_addr()?
    );
    axum::serve(listener, router(shop))
        .with_graceful_shutdown(async {
            let term = async {
                match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                    Ok(mut s) => {
                        s.recv().await;
                    }
                    Err(_) => std::future::pending().await,
                }
            };
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {}
                () = term => {}
            }
        })
        .await
        .context("serving")
}

#[cfg(test)]
mod tests {
    use axum::body::Body;
    use axum::http::Request;
    use http_body_util::BodyExt;
    use tower::ServiceExt;

    use super::*;

    fn args(dir: &std::path::Path, f: impl FnOnce(&mut Args)) -> Args {
        let mut a = Args {
            port: 1,
            version: "v1".into(),
            db: dir.join("shop.db"),
            fail_rate: 0.0,
            fail_after: None,
            extra_latency: None,
            price_as_string: false,
            noisy: false,
            not_found_status: 404,
            feature: None,
        };
        f(&mut a);
        a
    }

    async fn call(app: &Router, method: &str, path: &str, body: &str) -> (StatusCode, Value) {
        let req = Request::builder()
            .method(method)
            .uri(path)
            .header("content-type", "application/json")
            .body(Body::from(body.to_owned()))
            .unwrap();
        let resp = app.clone().oneshot(req).await.unwrap();
        let status = resp.status();
        let bytes = resp.into_body().collect().await.unwrap().to_bytes();
        (
            status,
            serde_json::from_slice(&bytes).unwrap_or(Value::Null),
        )
    }

    /// Instances of a deployment start at the same moment on one new database: every
    /// one must come up (the demo once failed with "database is locked"), and the
    /// catalogue must be filled exactly once.
    #[test]
    fn instances_opening_one_new_database_at_once_all_start_and_fill_it_once() {
        for round in 0..30 {
            let dir = tempfile::tempdir().unwrap();
            let start = Arc::new(std::sync::Barrier::new(6));
            let threads: Vec<_> = (0..6)
                .map(|_| {
                    let a = args(dir.path(), |_| {});
                    let start = start.clone();
                    std::thread::spawn(move || {
                        start.wait();
                        Shop::open(a).map(|_| ()).map_err(|e| format!("{e:#}"))
                    })
                })
                .collect();
            for t in threads {
                let opened = t.join().unwrap();
                assert!(opened.is_ok(), "round {round}: {opened:?}");
            }
            let conn = Connection::open(dir.path().join("shop.db")).unwrap();
            let n: i64 = conn
                .query_row("SELECT count(*) FROM items", [], |r| r.get(0))
                .unwrap();
            assert_eq!(
                n, 3,
                "round {round}: the catalogue was filled more than once"
            );
        }
    }

    #[tokio::test]
    async fn catalogue_is_shared_through_the_database_and_one_field_can_change() {
        let dir = tempfile::tempdir().unwrap();
        let v1 = router(Shop::open(args(dir.path(), |_| {})).unwrap());
        let (status, created) =
            call(&v1, "POST", "/api/items", r#"{"name":"scone","price":3.2}"#).await;
        assert_eq!(status, StatusCode::CREATED);
        assert_eq!(created["price"], json!(3.2));
        // v2 on the same database sees the item, with its price as a string.
        let v2 = router(
            Shop::open(args(dir.path(), |a| {
                a.version = "v2".into();
                a.price_as_string = true;
            }))
            .unwrap(),
        );
        let (status, list) = call(&v2, "GET", "/api/items", "").await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(list["version"], "v2");
        let scone = list["items"]
            .as_array()
            .unwrap()
            .iter()
            .find(|i| i["name"] == "scone")
            .unwrap();
        assert_eq!(scone["price"], json!("3.20"));
        let (status, _) = call(&v2, "GET", "/api/items/999", "").await;
        assert_eq!(status, StatusCode::NOT_FOUND);
        let (status, _) = call(&v1, "POST", "/api/items", r#"{"name":""}"#).await;
        assert_eq!(status, StatusCode::BAD_REQUEST);
    }

    #[tokio::test]
    async fn fail_rate_fails_about_that_share() {
        let dir = tempfile::tempdir().unwrap();
        let app = router(Shop::open(args(dir.path(), |a| a.fail_rate = 0.3)).unwrap());
        let mut failed = 0;
        for _ in 0..1000 {
            if call(&app, "GET", "/api/items", "").await.0 == StatusCode::INTERNAL_SERVER_ERROR {
                failed += 1;
            }
        }
        assert!((230..=370).contains(&failed), "{failed} of 1000 failed");
        // Health stays fine: a bad version is found by its answers, not its health check.
        assert_eq!(call(&app, "GET", "/healthz", "").await.0, StatusCode::OK);
    }

    #[tokio::test]
    async fn fail_after_holds_the_failures_back() {
        let dir = tempfile::tempdir().unwrap();
        let app = router(
            Shop::open(args(dir.path(), |a| {
                a.fail_rate = 1.0;
                a.fail_after = Some(Duration::from_secs(3600));
            }))
            .unwrap(),
        );
        for _ in 0..50 {
            assert_eq!(call(&app, "GET", "/api/items", "").await.0, StatusCode::OK);
        }
        let app = router(
            Shop::open(args(dir.path(), |a| {
                a.fail_rate = 1.0;
                a.fail_after = Some(Duration::ZERO);
            }))
            .unwrap(),
        );
        assert_eq!(
            call(&app, "GET", "/api/items", "").await.0,
            StatusCode::INTERNAL_SERVER_ERROR
        );
    }

    async fn call_with(
        app: &Router,
        path: &str,
        headers: &[(&str, &str)],
    ) -> (StatusCode, axum::http::HeaderMap, Value) {
        let mut req = Request::builder().method("GET").uri(path);
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        let resp = app
            .clone()
            .oneshot(req.body(Body::empty()).unwrap())
            .await
            .unwrap();
        let (parts, body) = resp.into_parts();
        let bytes = body.collect().await.unwrap().to_bytes();
        (
            parts.status,
            parts.headers,
            serde_json::from_slice(&bytes).unwrap_or(Value::Null),
        )
    }

    #[tokio::test]
    async fn noise_status_and_feature_knobs() {
        let dir = tempfile::tempdir().unwrap();
        let plain = router(Shop::open(args(dir.path(), |_| {})).unwrap());
        let (_, headers, body) = call_with(&plain, "/api/items", &[]).await;
        assert!(body.get("generated_at").is_none() && body.get("request_id").is_none());
        assert!(headers.get("x-trace-id").is_none() && headers.get("x-shop-feature").is_none());
        assert_eq!(
            call_with(&plain, "/api/items/999", &[]).await.0,
            StatusCode::NOT_FOUND
        );

        let knobs = router(
            Shop::open(args(dir.path(), |a| {
                a.noisy = true;
                a.not_found_status = 410;
                a.feature = Some("new-checkout".into());
            }))
            .unwrap(),
        );
        let (_, h1, b1) = call_with(&knobs, "/api/items", &[]).await;
        let (_, h2, b2) = call_with(&knobs, "/api/items", &[]).await;
        assert!(b1["generated_at"].is_u64(), "{b1}");
        assert_ne!(b1["request_id"], b2["request_id"]);
        assert_ne!(h1["x-trace-id"], h2["x-trace-id"]);
        assert_eq!(h1["x-shop-feature"], "new-checkout");
        assert_eq!(b1["items"], b2["items"]);
        let (status, h, body) = call_with(&knobs, "/api/items/999", &[]).await;
        assert_eq!(status, StatusCode::GONE);
        assert_eq!(body["error"], "no item 999");
        assert_eq!(h["x-shop-feature"], "new-checkout");
        // Not an API answer: no feature header, but noise all the same.
        let (_, h, body) = call_with(&knobs, "/", &[]).await;
        assert!(h.get("x-shop-feature").is_none() && h.get("x-trace-id").is_some());
        assert!(body["request_id"].is_string(), "{body}");
    }

    #[tokio::test]
    async fn requests_are_counted_with_mirrored_copies_apart() {
        let dir = tempfile::tempdir().unwrap();
        let app = router(Shop::open(args(dir.path(), |_| {})).unwrap());
        call_with(&app, "/api/items", &[]).await;
        call_with(&app, "/api/items", &[("x-turnout-shadow", "1")]).await;
        call(
            &app,
            "POST",
            "/api/items",
            r#"{"name":"scone","price":3.2}"#,
        )
        .await;
        let (_, _, seen) = call_with(&app, "/debug/requests", &[]).await;
        assert_eq!(
            seen,
            json!({ "shadow": { "GET": 1 }, "direct": { "GET": 1, "POST": 1 } })
        );
    }

    #[test]
    fn arguments_are_well_formed() {
        use clap::CommandFactory;
        Args::command().debug_assert();
    }

    #[test]
    fn knobs_are_checked() {
        assert!(parse_rate("1.5").is_err());
        assert_eq!(parse_duration("200ms"), Ok(Duration::from_millis(200)));
        assert!(parse_duration("fast").is_err());
        assert_eq!(parse_status("410"), Ok(410));
        assert!(parse_status("99").is_err() && parse_status("x").is_err());
        assert!(parse_feature("new-checkout").is_ok());
        assert!(parse_feature("a\nb").is_err() && parse_feature("").is_err());
    }
}
