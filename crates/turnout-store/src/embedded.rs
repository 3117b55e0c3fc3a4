use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use rusqlite::{Connection, OptionalExtension};
use turnout_core::RoutingState;

use crate::{BoxFuture, StateStore, StoreError};

/// The embedded store: one SQLite database, `state.db`, in the state directory.
///
/// SQLite rather than redb: both are crash-safe, but SQLite's file can be inspected and
/// repaired by an operator with the `sqlite3` shell at 3 a.m., history queries (a later
/// stage) are plain SQL, and the demo service uses SQLite too, so the tree carries one
/// database engine.
#[derive(Clone)]
pub struct EmbeddedStore {
    path: PathBuf,
    conn: Arc<Mutex<Connection>>,
}

const ROUTING_KEY: &str = "routing";

impl EmbeddedStore {
    /// Opens (creating when needed) the store in `dir`.
    pub fn open(dir: &Path) -> Result<EmbeddedStore, StoreError> {
        let path = dir.join("state.db");
        let backend = |source: Box<dyn std::error::Error + Send + Sync>| StoreError::Backend {
            location: path.display().to_string(),
            source,
        };
        std::fs::create_dir_all(dir).map_err(|e| {
            backend(format!("cannot create the state directory {}: {e}", dir.display()).into())
        })?;
        let conn = Connection::open(&path).map_err(|e| backend(e.into()))?;
        conn.execute_batch(
            "PRAGMA journal_mode = WAL;
             PRAGMA synchronous = FULL;
             PRAGMA busy_timeout = 5000;
             CREATE TABLE IF NOT EXISTS kv (
                 key TEXT PRIMARY KEY,
                 revision INTEGER NOT NULL,
                 value TEXT NOT NULL
             );",
        )
        .map_err(|e| backend(e.into()))?;
        Ok(EmbeddedStore {
            path,
            conn: Arc::new(Mutex::new(conn)),
        })
    }

    fn location(&self) -> String {
        self.path.display().to_string()
    }

    fn backend_err(&self, e: rusqlite::Error) -> StoreError {
        StoreError::Backend {
            location: self.location(),
            source: e.into(),
        }
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

impl StateStore for EmbeddedStore {
    fn load_routing(&self) -> BoxFuture<'_, Result<Option<RoutingState>, StoreError>> {
        let this = self.clone();
        Box::pin(async move { blocking(move || this.load_sync()).await })
    }

    fn save_routing<'a>(
        &'a self,
        state: &'a RoutingState,
        expected: Option<u64>,
    ) -> BoxFuture<'a, Result<(), StoreError>> {
        let this = self.clone();
        let state = state.clone();
        Box::pin(async move { blocking(move || this.save_sync(&state, expected)).await })
    }

    fn describe(&self) -> String {
        format!("embedded SQLite at {}", self.location())
    }
}

/// Runs SQLite work off the async workers (fsync can take milliseconds).
async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, StoreError> + Send + 'static,
) -> Result<T, StoreError> {
    match tokio::task::spawn_blocking(f).await {
        Ok(r) => r,
        Err(e) => Err(StoreError::Backend {
            location: "state store worker".to_owned(),
            source: e.into(),
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

    #[test]
    fn unwritable_directory_is_a_clear_error() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("not-a-dir");
        std::fs::write(&file, b"x").unwrap();
        let err = EmbeddedStore::open(&file).err().unwrap().to_string();
        assert!(err.contains("cannot create the state directory"), "{err}");
    }
}
