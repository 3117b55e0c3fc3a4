//! `[sessions]` for `serve`: the key that signs the session pin cookie
//! (`turnout_proxy::SessionOptions`).

use turnout_config::{Config, TokenSource};
use turnout_proxy::SessionOptions;
use turnout_store::StateStore;

use crate::error::UsageError;

/// Where the generated key is kept, for every router on the same store.
const KEY: &str = "sessions/key";

/// The data plane's `[sessions]`, with its key; `None` without the section.
pub(crate) async fn session_options(
    cfg: &Config,
    store: &dyn StateStore,
) -> anyhow::Result<Option<SessionOptions>> {
    let Some(s) = &cfg.sessions else {
        return Ok(None);
    };
    Ok(Some(SessionOptions {
        cookie: s.cookie.clone(),
        key: session_key(store, s.secret.as_ref()).await?,
    }))
}

/// The key pins are signed with: derived from `[sessions] secret` when there is one
/// (routers with the same secret read each other's pins), else a random one made once
/// and kept in the state store (routers sharing the store share it).
pub(crate) async fn session_key(
    store: &dyn StateStore,
    secret: Option<&TokenSource>,
) -> anyhow::Result<[u8; 32]> {
    if let Some(secret) = secret {
        let text = secret
            .resolve()
            .map_err(|e| UsageError(format!("[sessions] secret: {e}")))?;
        return Ok(turnout_proxy::derive_key(&text));
    }
    let fresh = turnout_proxy::key_to_hex(&turnout_proxy::random_key()?);
    // The first router to store a key wins; the others read that one.
    let stored = store.create_value(KEY, &fresh).await.map_err(|e| {
        anyhow::anyhow!(
            "cannot keep the [sessions] key in {}: {e}",
            store.describe()
        )
    })?;
    turnout_proxy::key_from_hex(&stored).ok_or_else(|| {
        anyhow::anyhow!(
            "the [sessions] key in {} (\"{KEY}\") is not 64 hex digits; delete it to have a new one made (pinned sessions then lose their pins), or set [sessions] secret",
            store.describe()
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_generated_key_is_made_once_and_a_secret_gives_the_same_key_everywhere() {
        let dir = tempfile::tempdir().unwrap();
        let store = turnout_store::EmbeddedStore::open(dir.path()).unwrap();
        let first = session_key(&store, None).await.unwrap();
        assert_eq!(session_key(&store, None).await.unwrap(), first);
        assert_eq!(
            store.load_value(KEY).await.unwrap().as_deref(),
            Some(turnout_proxy::key_to_hex(&first).as_str())
        );
        let path = dir.path().join("secret");
        std::fs::write(&path, "s3cret\n").unwrap();
        let secret = TokenSource::File(path);
        let from_secret = session_key(&store, Some(&secret)).await.unwrap();
        assert_eq!(from_secret, turnout_proxy::derive_key("s3cret"));
        assert_ne!(from_secret, first);
    }
}
