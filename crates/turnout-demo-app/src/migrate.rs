//! `turnout-demo-app migrate STEP --db PATH`: schema changes to the shared catalogue, the
//! kind a `[hooks] pre_deploy` (expand) and `post_decommission` (contract) hook runs.
//!
//! - `expand` adds a nullable column `items.description`: every version keeps working.
//! - `contract` drops it again.
//! - `break` renames `items.price_cents` to `items.price`: an incompatible change that
//!   every released version fails on (`GET /api/items` answers 500), for demos and tests
//!   of turnout's check that the live version survives the expand step.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{bail, Context as _};
use rusqlite::Connection;

/// `migrate` arguments.
#[derive(Debug, clap::Parser)]
#[command(
    name = "turnout-demo-app migrate",
    about = "Change the shop's database schema"
)]
pub struct MigrateArgs {
    /// The change to make.
    #[arg(value_enum)]
    pub step: Step,
    /// The SQLite database file the shop versions share.
    #[arg(long, default_value = "shop.db")]
    pub db: PathBuf,
}

/// A schema change.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Step {
    /// Add the nullable column items.description (compatible with every version).
    Expand,
    /// Drop items.description.
    Contract,
    /// Rename items.price_cents to items.price (breaks every version).
    Break,
}

/// Runs `turnout-demo-app migrate ...` from the process arguments (after `migrate`).
pub fn main(args: impl IntoIterator<Item = std::ffi::OsString>) -> ExitCode {
    use clap::Parser as _;
    let args = MigrateArgs::parse_from(args);
    match migrate(&args) {
        Ok(done) => {
            println!("turnout-demo-app migrate: {done}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("turnout-demo-app migrate: {e:#}");
            ExitCode::from(1)
        }
    }
}

fn columns(conn: &Connection) -> anyhow::Result<Vec<String>> {
    let mut stmt = conn.prepare("SELECT name FROM pragma_table_info('items')")?;
    let names = stmt.query_map([], |r| r.get::<_, String>(0))?;
    Ok(names.collect::<Result<_, _>>()?)
}

/// Applies `args.step` to `args.db`; says what it did. Running a step twice changes
/// nothing the second time.
pub fn migrate(args: &MigrateArgs) -> anyhow::Result<String> {
    if !args.db.exists() {
        bail!(
            "{} does not exist: start the shop once on it first",
            args.db.display()
        );
    }
    let conn = Connection::open(&args.db)
        .with_context(|| format!("opening the database {}", args.db.display()))?;
    conn.busy_timeout(std::time::Duration::from_secs(5))?;
    let cols = columns(&conn)?;
    if cols.is_empty() {
        bail!("{} has no items table", args.db.display());
    }
    let has = |c: &str| cols.iter().any(|n| n == c);
    let (sql, done) = match args.step {
        Step::Expand if has("description") => {
            return Ok("expand: items.description is already there".into())
        }
        Step::Expand => (
            "ALTER TABLE items ADD COLUMN description TEXT",
            "expand: added the nullable column items.description",
        ),
        Step::Contract if !has("description") => {
            return Ok("contract: items.description is already gone".into())
        }
        Step::Contract => (
            "ALTER TABLE items DROP COLUMN description",
            "contract: dropped items.description",
        ),
        Step::Break if !has("price_cents") => {
            return Ok("break: items.price_cents is already renamed".into())
        }
        Step::Break => (
            "ALTER TABLE items RENAME COLUMN price_cents TO price",
            "break: renamed items.price_cents to items.price (every shop version now fails)",
        ),
    };
    conn.execute_batch(sql)
        .with_context(|| format!("{sql} on {}", args.db.display()))?;
    Ok(done.into())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::shop::{router, Args, Shop};
    use axum::body::Body;
    use axum::http::{Request, StatusCode};
    use tower::ServiceExt;

    async fn list_status(app: &axum::Router) -> StatusCode {
        let req = Request::get("/api/items").body(Body::empty()).unwrap();
        app.clone().oneshot(req).await.unwrap().status()
    }

    #[tokio::test]
    async fn expand_keeps_the_running_version_working_and_break_does_not() {
        let dir = tempfile::tempdir().unwrap();
        let db = dir.path().join("shop.db");
        let args = |step| MigrateArgs {
            step,
            db: db.clone(),
        };
        assert!(migrate(&args(Step::Expand)).is_err(), "no database yet");
        let app = router(
            Shop::open(Args {
                port: 1,
                version: "v1".into(),
                db: db.clone(),
                fail_rate: 0.0,
                fail_after: None,
                extra_latency: None,
                price_as_string: false,
                noisy: false,
                not_found_status: 404,
                feature: None,
            })
            .unwrap(),
        );
        assert_eq!(list_status(&app).await, StatusCode::OK);
        for (step, text, status) in [
            (Step::Expand, "added", StatusCode::OK),
            (Step::Expand, "already", StatusCode::OK),
            (Step::Contract, "dropped", StatusCode::OK),
            (Step::Break, "renamed", StatusCode::INTERNAL_SERVER_ERROR),
        ] {
            let done = migrate(&args(step)).unwrap();
            assert!(done.contains(text), "{step:?}: {done}");
            assert_eq!(list_status(&app).await, status, "{step:?}");
        }
    }

    #[test]
    fn arguments_are_well_formed() {
        use clap::CommandFactory;
        MigrateArgs::command().debug_assert();
    }
}
