use std::fs::{File, OpenOptions, TryLockError};
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use rusqlite::{Connection, ErrorCode, OptionalExtension};
use turnout_core::{Deployment, RoutingState};

use crate::{BoxFuture, StateStore, StoreError};

/// The embedded store: one SQLite database, `state.db`, in the state directory.
///
/// SQLite rather than redb: both are crash-safe, but SQLite's file can be inspected and
/// repaired by an operator with the `sqlite3` shell at 3 a.m., history queries (a later
/// stage) are plain SQL, and the demo service uses SQLite too, so the tree carries one
/// database engine.
///
/// The store holds an exclusive lock on `lock` in the directory for as long as it (or a
/// clone) lives, so that two routers never route from one state independently. The lock is
/// the operating system's (`flock`): it goes away with the process, even after `kill -9`.
#[derive(Clone)]
pub struct EmbeddedStore {
    dir: PathBuf,
    path: PathBuf,
    conn: Arc<Mutex<Connection>>,
    /// Held, never read: the lock lives as long as the file stays open.
    _lock: Arc<File>,
    /// The database file's device and inode when it was opened: a file moved or deleted
    /// under the router would take every later change with it, unseen (SQLite writes to
    /// the open file), so every change checks it is still there first.
    identity: (u64, u64),
}

const ROUTING_KEY: &str = "routing";

impl EmbeddedStore {
    /// Opens (creating when needed) the store in `dir`. Fails with [`StoreError::InUse`]
    /// when another process has it open.
    pub fn open(dir: &Path) -> Result<EmbeddedStore, StoreError> {
        EmbeddedStore::open_with(dir, None)
    }

    /// Opens the store in `dir` with its lock already held: `lock` is the lock file of a
    /// router process that hands over to this one (`turnout upgrade`, `reload`), passed
    /// as an open file, so that the lock is never free in between. It must be `dir`'s
    /// own lock file.
    pub fn open_locked(dir: &Path, lock: File) -> Result<EmbeddedStore, StoreError> {
        EmbeddedStore::open_with(dir, Some(lock))
    }

    /// The lock file, to hand to the next router process.
    pub fn lock_file(&self) -> &File {
        &self._lock
    }

    fn open_with(dir: &Path, lock: Option<File>) -> Result<EmbeddedStore, StoreError> {
        // Absolute, so that every message names the directory unambiguously.
        let dir = std::path::absolute(dir).unwrap_or_else(|_| dir.to_owned());
        let path = dir.join("state.db");
        std::fs::create_dir_all(&dir).map_err(|e| StoreError::Backend {
            location: path.display().to_string(),
            source: format!("cannot create the state directory {}: {e}", dir.display()).into(),
        })?;
        if !path.exists() {
            // A directory a router used before, whose database is gone: worth saying.
            let found: Vec<String> = std::fs::read_dir(&dir)
                .map(|entries| {
                    entries
                        .flatten()
                        .map(|e| e.file_name().to_string_lossy().into_owned())
                        .filter(|n| !n.starts_with("state.db"))
                        .collect()
                })
                .unwrap_or_default();
            if !found.is_empty() {
                tracing::warn!(dir = %dir.display(), found = ?found, "the state directory {} has no state.db but holds {}: a previous router's state may have been moved or deleted; starting from the configuration (no saved routing, no history)", dir.display(), found.join(", "));
            }
        }
        let lock = match lock {
            None => lock_dir(&dir)?,
            Some(file) => adopt_lock(&dir, file)?,
        };
        let sqlite = |e| sqlite_error(&dir, &path, e);
        let conn = Connection::open(&path).map_err(sqlite)?;
        conn.execute_batch(
            "PRAGMA journal_mode = WAL;
             PRAGMA synchronous = FULL;
             PRAGMA busy_timeout = 5000;
             CREATE TABLE IF NOT EXISTS kv (
                 key TEXT PRIMARY KEY,
                 revision INTEGER NOT NULL,
                 value TEXT NOT NULL
             );
             CREATE TABLE IF NOT EXISTS deployments (
                 id TEXT PRIMARY KEY,
                 started_at TEXT NOT NULL,
                 value TEXT NOT NULL
             );",
        )
        .map_err(sqlite)?;
        let identity = file_identity(&path).map_err(|e| StoreError::Backend {
            location: path.display().to_string(),
            source: format!("cannot read the database file: {e}").into(),
        })?;
        Ok(EmbeddedStore {
            dir,
            path,
            conn: Arc::new(Mutex::new(conn)),
            _lock: Arc::new(lock),
            identity,
        })
    }

    /// The state directory (absolute).
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The database file (absolute).
    pub fn path(&self) -> &Path {
        &self.path
    }

    fn location(&self) -> String {
        self.path.display().to_string()
    }

    /// `Err` when the database file is no longer the one opened (moved, deleted, or
    /// replaced): a change saved now would be lost.
    fn still_there(&self) -> Result<(), StoreError> {
        match self.problem_now() {
            None => Ok(()),
            Some(why) => Err(StoreError::Backend {
                location: self.location(),
                source: why.into(),
            }),
        }
    }

    fn problem_now(&self) -> Option<String> {
        match file_identity(&self.path) {
            Ok(id) if id == self.identity => None,
            Ok(_) => Some(format!(
                "the state database {} was replaced by another file while the router ran; changes are refused so that none is lost: put the original back, or restart turnout to use the new one",
                self.path.display()
            )),
            Err(e) => Some(format!(
                "the state database {} is gone ({e}): it was moved or deleted while the router ran; changes are refused so that none is lost: put it back, or restart turnout to start from an empty state",
                self.path.display()
            )),
        }
    }

    fn backend_err(&self, e: rusqlite::Error) -> StoreError {
        sqlite_error(&self.dir, &self.path, e)
    }

    fn load_sync(&self) -> Result<Option<RoutingState>, StoreError> {
        let conn = self.conn.lock().unwrap_or_else(|p| p.into_inner());
        let value: Option<String> = conn
            .query_row("SELECT value FROM kv WHERE key = ?1", [ROUTING_KEY], |r| {
                r.get(0)
            })
            .optional()
            .map_err(|e| self.backend_err(e))?;
        value
            .map(|v| {
                serde_json::from_str(&v).map_err(|source| StoreError::Corrupt {
                    location: self.location(),
                    source,
                })
            })
            .transpose()
    }

    fn save_sync(&self, state: &RoutingState, expected: Option<u64>) -> Result<(), StoreError> {
        self.still_there()?;
        let value = serde_json::to_string(state).map_err(|source| StoreError::Corrupt {
            location: self.location(),
            source,
        })?;
        let mut conn = self.conn.lock().unwrap_or_else(|p| p.into_inner());
        let tx = conn.transaction().map_err(|e| self.backend_err(e))?;
        let found: Option<i64> = tx
            .query_row(
                "SELECT revision FROM kv WHERE key = ?1",
                [ROUTING_KEY],
                |r| r.get(0),
            )
            .optional()
            .map_err(|e| self.backend_err(e))?;
        let found = found.map(|r| u64::try_from(r).unwrap_or(0));
        if found != expected {
            return Err(StoreError::Conflict {
                expected: expected.unwrap_or(0),
                found: found.unwrap_or(0),
            });
        }
        tx.execute(
            "INSERT INTO kv (key, revision, value) VALUES (?1, ?2, ?3)
             ON CONFLICT(key) DO UPDATE SET revision = excluded.revision, value = excluded.value",
            rusqlite::params![
                ROUTING_KEY,
                i64::try_from(state.revision).unwrap_or(i64::MAX),
                value
            ],
        )
        .map_err(|e| self.backend_err(e))?;
        tx.commit().map_err(|e| self.backend_err(e))
    }
}

impl EmbeddedStore {
    fn corrupt(&self, source: serde_json::Error) -> StoreError {
        StoreError::Corrupt {
            location: self.location(),
            source,
        }
    }

    fn save_deployment_sync(&self, d: &Deployment) -> Result<(), StoreError> {
        self.still_there()?;
        let value = serde_json::to_string(d).map_err(|e| self.corrupt(e))?;
        let conn = self.conn.lock().unwrap_or_else(|p| p.into_inner());
        conn.execute(
            "INSERT INTO deployments (id, started_at, value) VALUES (?1, ?2, ?3)
             ON CONFLICT(id) DO UPDATE SET value = excluded.value",
            rusqlite::params![d.id, d.started_at, value],
        )
        .map_err(|e| self.backend_err(e))?;
        Ok(())
    }

    fn load_deployments_sync(&self, limit: usize) -> Result<Vec<Deployment>, StoreError> {
        let conn = self.conn.lock().unwrap_or_else(|p| p.into_inner());
        let mut stmt = conn
            .prepare("SELECT value FROM deployments ORDER BY started_at DESC, id DESC LIMIT ?1")
            .map_err(|e| self.backend_err(e))?;
        let rows = stmt
            .query_map([i64::try_from(limit).unwrap_or(i64::MAX)], |r| {
                r.get::<_, String>(0)
            })
            .map_err(|e| self.backend_err(e))?;
        let mut out = Vec::new();
        for row in rows {
            let text = row.map_err(|e| self.backend_err(e))?;
            out.push(serde_json::from_str(&text).map_err(|e| self.corrupt(e))?);
        }
        Ok(out)
    }

    fn load_value_sync(&self, key: &str) -> Result<Option<String>, StoreError> {
        let conn = self.conn.lock().unwrap_or_else(|p| p.into_inner());
        conn.query_row("SELECT value FROM kv WHERE key = ?1", [key], |r| r.get(0))
            .optional()
            .map_err(|e| self.backend_err(e))
    }

    fn create_value_sync(&self, key: &str, value: &str) -> Result<String, StoreError> {
        self.still_there()?;
        let conn = self.conn.lock().unwrap_or_else(|p| p.into_inner());
        conn.execute(
            "INSERT INTO kv (key, revision, value) VALUES (?1, 0, ?2) ON CONFLICT(key) DO NOTHING",
            rusqlite::params![key, value],
        )
        .map_err(|e| self.backend_err(e))?;
        conn.query_row("SELECT value FROM kv WHERE key = ?1", [key], |r| r.get(0))
            .map_err(|e| self.backend_err(e))
    }

    fn save_value_sync(&self, key: &str, value: &str) -> Result<(), StoreError> {
        self.still_there()?;
        let conn = self.conn.lock().unwrap_or_else(|p| p.into_inner());
        conn.execute(
            "INSERT INTO kv (key, revision, value) VALUES (?1, 0, ?2)
             ON CONFLICT(key) DO UPDATE SET value = excluded.value",
            rusqlite::params![key, value],
        )
        .map_err(|e| self.backend_err(e))?;
        Ok(())
    }
}

impl StateStore for EmbeddedStore {
    fn save_deployment<'a>(&'a self, d: &'a Deployment) -> BoxFuture<'a, Result<(), StoreError>> {
        let this = self.clone();
        let d = d.clone();
        Box::pin(async move {
            let location = this.location();
            blocking(location, move || this.save_deployment_sync(&d)).await
        })
    }

    fn load_deployments(&self, limit: usize) -> BoxFuture<'_, Result<Vec<Deployment>, StoreError>> {
        let this = self.clone();
        Box::pin(async move {
            let location = this.location();
            blocking(location, move || this.load_deployments_sync(limit)).await
        })
    }

    fn load_value<'a>(&'a self, key: &'a str) -> BoxFuture<'a, Result<Option<String>, StoreError>> {
        let this = self.clone();
        let key = key.to_owned();
        Box::pin(async move {
            let location = this.location();
            blocking(location, move || this.load_value_sync(&key)).await
        })
    }

    fn save_value<'a>(
        &'a self,
        key: &'a str,
        value: &'a str,
    ) -> BoxFuture<'a, Result<(), StoreError>> {
        let this = self.clone();
        let (key, value) = (key.to_owned(), value.to_owned());
        Box::pin(async move {
            let location = this.location();
            blocking(location, move || this.save_value_sync(&key, &value)).await
        })
    }

    fn load_routing(&self) -> BoxFuture<'_, Result<Option<RoutingState>, StoreError>> {
        let this = self.clone();
        Box::pin(async move {
            let location = this.location();
            blocking(location, move || this.load_sync()).await
        })
    }

    fn save_routing<'a>(
        &'a self,
        state: &'a RoutingState,
        expected: Option<u64>,
    ) -> BoxFuture<'a, Result<(), StoreError>> {
        let this = self.clone();
        let state = state.clone();
        Box::pin(async move {
            let location = this.location();
            blocking(location, move || this.save_sync(&state, expected)).await
        })
    }

    fn create_value<'a>(
        &'a self,
        key: &'a str,
        value: &'a str,
    ) -> BoxFuture<'a, Result<String, StoreError>> {
        let this = self.clone();
        let (key, value) = (key.to_owned(), value.to_owned());
        Box::pin(async move {
            let location = this.location();
            blocking(location, move || this.create_value_sync(&key, &value)).await
        })
    }

    fn describe(&self) -> String {
        format!("embedded SQLite at {}", self.location())
    }

    fn problem(&self) -> Option<String> {
        self.problem_now()
    }
}

/// Takes the state directory's lock, or says who holds it.
fn lock_dir(dir: &Path) -> Result<File, StoreError> {
    let lock = dir.join("lock");
    let failed = |what: &str, e: std::io::Error| StoreError::Backend {
        location: lock.display().to_string(),
        source: format!("cannot {what} the lock file: {e}").into(),
    };
    let mut file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(&lock)
        .map_err(|e| failed("open", e))?;
    take_lock(&file, dir, &lock, |e| failed("lock", e))?;
    // Who holds it, for an operator who looks (`cat lock`); the lock is what counts.
    let _ = file
        .set_len(0)
        .and_then(|()| writeln!(file, "{}", std::process::id()));
    Ok(file)
}

/// A file's device and inode.
fn file_identity(path: &Path) -> std::io::Result<(u64, u64)> {
    use std::os::unix::fs::MetadataExt as _;
    let m = std::fs::metadata(path)?;
    Ok((m.dev(), m.ino()))
}

/// Takes the lock on `file` (`dir`'s lock file `lock`): `InUse` when another process
/// holds it. `File::try_lock` is stable since Rust 1.89.
fn take_lock(
    file: &File,
    dir: &Path,
    lock: &Path,
    failed: impl FnOnce(std::io::Error) -> StoreError,
) -> Result<(), StoreError> {
    match file.try_lock() {
        Ok(()) => Ok(()),
        Err(TryLockError::WouldBlock) => Err(StoreError::InUse {
            dir: dir.to_owned(),
            lock: lock.to_owned(),
        }),
        Err(TryLockError::Error(e)) => Err(failed(e)),
    }
}

/// Checks that `file`, handed over by the previous router process, is `dir`'s lock file
/// and holds its lock.
fn adopt_lock(dir: &Path, file: File) -> Result<File, StoreError> {
    use std::os::unix::fs::MetadataExt as _;
    let lock = dir.join("lock");
    let wrong = |why: String| StoreError::Backend {
        location: lock.display().to_string(),
        source: why.into(),
    };
    let given = file
        .metadata()
        .map(|m| (m.dev(), m.ino()))
        .map_err(|e| wrong(format!("cannot read the handed-over lock file: {e}")))?;
    let here =
        file_identity(&lock).map_err(|e| wrong(format!("cannot read the lock file: {e}")))?;
    if given != here {
        return Err(wrong(format!(
            "the previous router process used another state directory; [state] dir cannot change in a handover: restart turnout to move to {}",
            dir.display()
        )));
    }
    // The lock belongs to the open file, which both processes share now: taking it again
    // through this file succeeds, and says it really is held.
    take_lock(&file, dir, &lock, |e| wrong(format!("cannot lock: {e}")))?;
    Ok(file)
}

/// A SQLite error with the database as its location; "database is locked" says who may
/// hold it.
fn sqlite_error(dir: &Path, path: &Path, e: rusqlite::Error) -> StoreError {
    let busy = matches!(
        e.sqlite_error_code(),
        Some(ErrorCode::DatabaseBusy | ErrorCode::DatabaseLocked)
    );
    let source: Box<dyn std::error::Error + Send + Sync> = if busy {
        format!(
            "{e}; another process (another turnout, or a sqlite3 shell) may be using the state directory {}: stop it or use another [state] dir",
            dir.display()
        )
        .into()
    } else {
        e.into()
    };
    StoreError::Backend {
        location: path.display().to_string(),
        source,
    }
}

/// Runs SQLite work off the async workers (fsync can take milliseconds). `location` names
/// the database in the error when the worker itself fails.
async fn blocking<T: Send + 'static>(
    location: String,
    f: impl FnOnce() -> Result<T, StoreError> + Send + 'static,
) -> Result<T, StoreError> {
    match tokio::task::spawn_blocking(f).await {
        Ok(r) => r,
        Err(e) => Err(StoreError::Backend {
            location,
            source: format!("the state store worker failed: {e}").into(),
        }),
    }
}

#[cfg(test)]
mod tests {
    use turnout_core::{Role, SlotName, SlotState};

    use super::*;

    fn state() -> RoutingState {
        let slot = |a: &str| SlotState {
            version: Some("v1".into()),
            upstreams: vec![a.into()],
            role: Role::Idle,
        };
        RoutingState::initial(slot("127.0.0.1:1"), slot("127.0.0.1:2"))
    }

    #[tokio::test]
    async fn saves_survive_reopen_and_conflicts_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let store = EmbeddedStore::open(dir.path()).unwrap();
        assert_eq!(store.load_routing().await.unwrap(), None);
        let s0 = state();
        store.save_routing(&s0, None).await.unwrap();
        let s1 = s0.switch(SlotName::Green, 1, false).unwrap();
        store.save_routing(&s1, Some(s0.revision)).await.unwrap();
        // A writer that read s0 and did not see s1 is refused.
        let err = store
            .save_routing(&s1, Some(s0.revision))
            .await
            .unwrap_err();
        assert!(
            matches!(
                err,
                StoreError::Conflict {
                    expected: 0,
                    found: 1
                }
            ),
            "{err}"
        );
        drop(store);
        let reopened = EmbeddedStore::open(dir.path()).unwrap();
        assert_eq!(reopened.load_routing().await.unwrap(), Some(s1));
    }

    #[tokio::test]
    async fn deployments_and_values_survive_reopen_newest_first() {
        let dir = tempfile::tempdir().unwrap();
        let store = EmbeddedStore::open(dir.path()).unwrap();
        let mut d = turnout_core::Deployment {
            id: "20261126-100000-aaaa".into(),
            version: "v1".into(),
            slot: SlotName::Blue,
            verdict: turnout_core::Verdict::InProgress,
            reason: None,
            started_at: "2026-11-26T10:00:00.000Z".into(),
            ended_at: None,
            stages: Vec::new(),
            previous: None,
            previous_version: None,
            upstreams: Vec::new(),
            manual: false,
            analysis: None,
        };
        store.save_deployment(&d).await.unwrap();
        let mut d2 = d.clone();
        d2.id = "20261126-110000-bbbb".into();
        d2.started_at = "2026-11-26T11:00:00.000Z".into();
        store.save_deployment(&d2).await.unwrap();
        d.verdict = turnout_core::Verdict::Promoted;
        store.save_deployment(&d).await.unwrap();
        store.save_value("instances", "[1]").await.unwrap();
        drop(store);
        let store = EmbeddedStore::open(dir.path()).unwrap();
        assert_eq!(store.load_deployments(10).await.unwrap(), [d2.clone(), d]);
        assert_eq!(store.load_deployments(1).await.unwrap(), [d2]);
        assert_eq!(
            store.load_value("instances").await.unwrap().as_deref(),
            Some("[1]")
        );
        assert_eq!(store.load_value("nothing").await.unwrap(), None);
    }

    #[test]
    fn a_second_open_of_one_directory_is_refused_until_the_first_is_dropped() {
        let dir = tempfile::tempdir().unwrap();
        let first = EmbeddedStore::open(dir.path()).unwrap();
        let clone = first.clone();
        let abs = std::path::absolute(dir.path()).unwrap();
        let err = EmbeddedStore::open(dir.path()).err().unwrap();
        assert!(matches!(err, StoreError::InUse { .. }), "{err}");
        assert_eq!(
            err.to_string(),
            format!(
                "state directory {} is in use by another turnout process (lock file {}); stop it or use another [state] dir",
                abs.display(),
                abs.join("lock").display()
            )
        );
        // The lock lives as long as any clone.
        drop(first);
        assert!(EmbeddedStore::open(dir.path()).is_err());
        drop(clone);
        let again = EmbeddedStore::open(dir.path()).unwrap();
        assert_eq!(again.dir(), abs);
    }

    #[test]
    fn a_locked_database_names_the_directory_and_who_may_hold_it() {
        let dir = tempfile::tempdir().unwrap();
        let store = EmbeddedStore::open(dir.path()).unwrap();
        // Another process (a sqlite3 shell, say) holds the write lock.
        let other = Connection::open(store.path()).unwrap();
        other.execute_batch("BEGIN EXCLUSIVE;").unwrap();
        store
            .conn
            .lock()
            .unwrap()
            .execute_batch("PRAGMA busy_timeout = 0;")
            .unwrap();
        let err = store.save_sync(&state(), None).unwrap_err().to_string();
        assert!(
            err.contains(&store.location())
                && err.contains("another process")
                && err.contains(&store.dir().display().to_string()),
            "{err}"
        );
    }

    #[test]
    fn unwritable_directory_is_a_clear_error() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("not-a-dir");
        std::fs::write(&file, b"x").unwrap();
        let err = EmbeddedStore::open(&file).err().unwrap().to_string();
        assert!(err.contains("cannot create the state directory"), "{err}");
    }
}
