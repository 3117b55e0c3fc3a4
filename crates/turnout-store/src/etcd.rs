//! The etcd backend: one state for a fleet of routers (`[state] backend = "etcd"`).
//!
//! Keys, under the configured prefix:
//! - `PREFIX/routing`: the [`RoutingState`] as JSON. A change is one transaction that
//!   compares the key's `mod_revision` read together with the state it was computed from,
//!   so of two concurrent changes one wins and the other gets [`StoreError::Conflict`].
//! - `PREFIX/deployments/ID`: deployment records (ids sort by time).
//! - `PREFIX/values/KEY`: small named values.
//! - `PREFIX/leader`: the elected replica ([`ReplicaInfo`]), on its lease.
//! - `PREFIX/replicas/ID`: each replica's traffic counters, on its lease.
//!
//! Every replica holds one lease (TTL [`EtcdOptions::lease_ttl`]) kept alive by a task.
//! While it leads, its writes of deployments and routing also compare the leader key's
//! create revision (fencing): a replica whose lease expired while it was cut off cannot
//! overwrite what the new leader does.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use etcd_client::{
    Client, Compare, CompareOp, ConnectOptions, EventType, GetOptions, PutOptions, SortOrder,
    SortTarget, Txn, TxnOp, TxnOpResponse, WatchOptions,
};
use tokio::sync::{mpsc, watch};
use turnout_core::{Deployment, RoutingState};

use crate::fleet::{Change, Fleet, Leadership, ReplicaInfo};
use crate::{BoxFuture, StateStore, StoreError};

/// How to reach etcd, and who this replica is.
#[derive(Clone)]
pub struct EtcdOptions {
    /// `[state] endpoints`.
    pub endpoints: Vec<String>,
    /// `[state] prefix`, without a trailing slash.
    pub prefix: String,
    /// This replica.
    pub me: ReplicaInfo,
    /// The lease's time to live: how long a dead leader holds the leadership.
    pub lease_ttl: Duration,
    /// The deadline of one call to etcd.
    pub timeout: Duration,
    /// TLS to etcd (`https://` endpoints).
    pub tls: Option<EtcdTls>,
    /// etcd's authentication: user and password.
    pub user: Option<(String, String)>,
}

impl std::fmt::Debug for EtcdOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EtcdOptions")
            .field("endpoints", &self.endpoints)
            .field("prefix", &self.prefix)
            .field("me", &self.me)
            .field("tls", &self.tls)
            .field("user", &self.user.as_ref().map(|(u, _)| u))
            .finish_non_exhaustive()
    }
}

/// TLS to etcd: the CA its server certificate is checked against, and optionally a client
/// certificate (PEM texts).
#[derive(Clone)]
pub struct EtcdTls {
    /// PEM CA certificates.
    pub ca: Vec<u8>,
    /// A PEM client certificate and its private key.
    pub identity: Option<(Vec<u8>, Vec<u8>)>,
}

impl std::fmt::Debug for EtcdTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EtcdTls")
            .field("client_certificate", &self.identity.is_some())
            .finish()
    }
}

/// The etcd backend of [`StateStore`], and its [`Fleet`].
#[derive(Clone)]
pub struct EtcdStore {
    shared: Arc<Shared>,
}

struct Shared {
    client: Client,
    opts: EtcdOptions,
    location: String,
    /// The lease this replica's keys live on, while it holds one.
    lease: watch::Sender<Option<i64>>,
    /// While this replica leads: the leader key's create revision, the lease it is on,
    /// and the sender that tells the holder of the [`Leadership`] that it is lost.
    leading: Mutex<Option<(i64, i64, watch::Sender<bool>)>>,
    connected: AtomicBool,
    /// Set when the router stops: no new lease is taken.
    resigned: AtomicBool,
}

impl EtcdStore {
    /// Connects to etcd and checks that it answers (a router needs the shared state once
    /// to start), then keeps a lease for this replica.
    pub async fn connect(opts: EtcdOptions) -> Result<EtcdStore, StoreError> {
        let location = format!("etcd {} (prefix {})", opts.endpoints.join(","), opts.prefix);
        let mut connect = ConnectOptions::new()
            .with_connect_timeout(opts.timeout)
            .with_timeout(opts.timeout)
            .with_keep_alive(Duration::from_secs(2), Duration::from_secs(2))
            .with_keep_alive_while_idle(true)
            .with_auto_token_refresh(true);
        if let Some(tls) = &opts.tls {
            let mut t = etcd_client::TlsOptions::new()
                .ca_certificate(etcd_client::Certificate::from_pem(&tls.ca));
            if let Some((cert, key)) = &tls.identity {
                t = t.identity(etcd_client::Identity::from_pem(cert, key));
            }
            connect = connect.with_tls(t);
        }
        if let Some((user, password)) = &opts.user {
            connect = connect.with_user(user.clone(), password.clone());
        }
        // Connection trouble is "unavailable"; refused credentials or a bad certificate
        // are errors of their own (the message says which).
        let client = Client::connect(&opts.endpoints, Some(connect))
            .await
            .map_err(|e| map_error(&location, e))?;
        let (lease, _) = watch::channel(None);
        let store = EtcdStore {
            shared: Arc::new(Shared {
                client,
                opts,
                location,
                lease,
                leading: Mutex::new(None),
                connected: AtomicBool::new(false),
                resigned: AtomicBool::new(false),
            }),
        };
        // One read proves the cluster answers (and has a leader).
        store.get(&store.key("routing")).await?;
        tokio::spawn(keep_lease(store.shared.clone()));
        Ok(store)
    }

    fn key(&self, name: &str) -> String {
        format!("{}/{name}", self.shared.opts.prefix)
    }

    fn err(&self, e: etcd_client::Error) -> StoreError {
        let e = map_error(&self.shared.location, e);
        if matches!(e, StoreError::Unavailable { .. }) {
            self.shared.connected.store(false, Ordering::Relaxed);
        }
        e
    }

    fn ok<T>(&self, t: T) -> T {
        self.shared.connected.store(true, Ordering::Relaxed);
        t
    }

    /// The value and mod revision of one key.
    async fn get(&self, key: &str) -> Result<Option<(Vec<u8>, i64)>, StoreError> {
        let mut kv = self.shared.client.kv_client();
        let resp = kv.get(key, None).await.map_err(|e| self.err(e))?;
        Ok(self.ok(resp
            .kvs()
            .first()
            .map(|kv| (kv.value().to_vec(), kv.mod_revision()))))
    }

    /// While this replica leads: the leader key's create revision (its term).
    fn leader_epoch(&self) -> Option<i64> {
        let leading = self
            .shared
            .leading
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        leading.as_ref().map(|(rev, _, _)| *rev)
    }

    fn not_leader(&self) -> StoreError {
        StoreError::NotLeader {
            location: self.shared.location.clone(),
        }
    }

    /// After a fenced write of term `epoch` was refused: whether the term is over (the
    /// leader key is gone or another's), in which case this replica steps down. An
    /// unanswered check is an error, never taken as "still leading".
    async fn term_over(&self, epoch: i64) -> Result<bool, StoreError> {
        let mut kv = self.shared.client.kv_client();
        let resp = kv
            .get(self.key("leader"), None)
            .await
            .map_err(|e| self.err(e))?;
        let still = resp
            .kvs()
            .first()
            .is_some_and(|k| k.create_revision() == epoch);
        if !still {
            step_down(
                &self.shared,
                Some(epoch),
                "the leader key is gone or another replica's",
            );
        }
        Ok(!still)
    }

    fn decode<T: serde::de::DeserializeOwned>(&self, bytes: &[u8]) -> Result<T, StoreError> {
        serde_json::from_slice(bytes).map_err(|source| StoreError::Corrupt {
            location: self.shared.location.clone(),
            source,
        })
    }

    /// Saves the routing state if the stored revision is `expected`; `as_leader`: only
    /// while this replica leads in the term it led in when the call began.
    async fn save_routing_inner(
        &self,
        state: &RoutingState,
        expected: Option<u64>,
        as_leader: bool,
    ) -> Result<(), StoreError> {
        // Taken before any await: a write begun in a term is fenced by that term.
        let epoch = match as_leader {
            true => Some(self.leader_epoch().ok_or_else(|| self.not_leader())?),
            false => None,
        };
        let key = self.key("routing");
        let text = serde_json::to_vec(state).map_err(|source| StoreError::Corrupt {
            location: self.shared.location.clone(),
            source,
        })?;
        let stored = self.get(&key).await?;
        let found = match &stored {
            Some((bytes, _)) => Some(self.decode::<RoutingState>(bytes)?.revision),
            None => None,
        };
        if found != expected {
            return Err(StoreError::Conflict {
                expected: expected.unwrap_or(0),
                found: found.unwrap_or(0),
            });
        }
        let mut when = vec![match &stored {
            Some((_, mod_rev)) => Compare::mod_revision(key.clone(), CompareOp::Equal, *mod_rev),
            None => Compare::create_revision(key.clone(), CompareOp::Equal, 0),
        }];
        if let Some(rev) = epoch {
            when.push(Compare::create_revision(
                self.key("leader"),
                CompareOp::Equal,
                rev,
            ));
        }
        let txn = Txn::new()
            .when(when)
            .and_then(vec![TxnOp::put(key.clone(), text, None)]);
        let mut kv = self.shared.client.kv_client();
        let resp = kv.txn(txn).await.map_err(|e| self.err(e))?;
        self.ok(());
        if resp.succeeded() {
            return Ok(());
        }
        if let Some(rev) = epoch {
            if self.term_over(rev).await? {
                return Err(self.not_leader());
            }
        }
        let now = match self.get(&key).await? {
            Some((bytes, _)) => self.decode::<RoutingState>(&bytes)?.revision,
            None => 0,
        };
        Err(StoreError::Conflict {
            expected: expected.unwrap_or(0),
            found: now,
        })
    }

    /// Deployment records are the leader's: saved only while this replica leads in the
    /// term it led in when the call began.
    async fn save_deployment_inner(&self, d: &Deployment) -> Result<(), StoreError> {
        let epoch = self.leader_epoch().ok_or_else(|| self.not_leader())?;
        let key = self.key(&format!("deployments/{}", d.id));
        let text = serde_json::to_vec(d).map_err(|source| StoreError::Corrupt {
            location: self.shared.location.clone(),
            source,
        })?;
        let txn = Txn::new()
            .when(vec![Compare::create_revision(
                self.key("leader"),
                CompareOp::Equal,
                epoch,
            )])
            .and_then(vec![TxnOp::put(key, text, None)]);
        let mut kv = self.shared.client.kv_client();
        let resp = kv.txn(txn).await.map_err(|e| self.err(e))?;
        self.ok(());
        if resp.succeeded() {
            return Ok(());
        }
        // The only compare is the term's.
        self.term_over(epoch).await?;
        Err(self.not_leader())
    }

    async fn load_deployments_inner(&self, limit: usize) -> Result<Vec<Deployment>, StoreError> {
        let mut kv = self.shared.client.kv_client();
        let opts = GetOptions::new()
            .with_prefix()
            .with_sort(SortTarget::Key, SortOrder::Descend)
            .with_limit(i64::try_from(limit).unwrap_or(i64::MAX));
        let resp = kv
            .get(self.key("deployments/"), Some(opts))
            .await
            .map_err(|e| self.err(e))?;
        self.ok(());
        resp.kvs()
            .iter()
            .map(|kv| self.decode(kv.value()))
            .collect()
    }

    async fn create_value_inner(&self, key: &str, value: &str) -> Result<String, StoreError> {
        let key = self.key(&format!("values/{key}"));
        let txn = Txn::new()
            .when(vec![Compare::create_revision(
                key.clone(),
                CompareOp::Equal,
                0,
            )])
            .and_then(vec![TxnOp::put(key.clone(), value, None)])
            .or_else(vec![TxnOp::get(key, None)]);
        let mut kv = self.shared.client.kv_client();
        let resp = kv.txn(txn).await.map_err(|e| self.err(e))?;
        self.ok(());
        if resp.succeeded() {
            return Ok(value.to_owned());
        }
        for r in resp.op_responses() {
            if let TxnOpResponse::Get(g) = r {
                if let Some(kv) = g.kvs().first() {
                    return Ok(String::from_utf8_lossy(kv.value()).into_owned());
                }
            }
        }
        Ok(value.to_owned())
    }

    async fn campaign_inner(&self) -> Result<Leadership, StoreError> {
        let key = self.key("leader");
        let me = serde_json::to_string(&self.shared.opts.me).unwrap_or_default();
        let mut lease_rx = self.shared.lease.subscribe();
        loop {
            let current = *lease_rx.borrow_and_update();
            let Some(lease) = current else {
                let _ = tokio::time::timeout(Duration::from_secs(1), lease_rx.changed()).await;
                continue;
            };
            // Put the key if there is none; else read it: it may be ours already, from
            // an earlier try whose answer was lost.
            let txn = Txn::new()
                .when(vec![Compare::create_revision(
                    key.clone(),
                    CompareOp::Equal,
                    0,
                )])
                .and_then(vec![TxnOp::put(
                    key.clone(),
                    me.clone(),
                    Some(PutOptions::new().with_lease(lease)),
                )])
                .or_else(vec![TxnOp::get(key.clone(), None)]);
            let mut kv = self.shared.client.kv_client();
            let term = match kv.txn(txn).await {
                Ok(resp) if resp.succeeded() => {
                    self.ok(());
                    resp.header().map(|h| h.revision())
                }
                Ok(resp) => {
                    self.ok(());
                    resp.op_responses().into_iter().find_map(|r| match r {
                        TxnOpResponse::Get(g) => g
                            .kvs()
                            .first()
                            .filter(|kv| kv.lease() == lease)
                            .map(|kv| kv.create_revision()),
                        _ => None,
                    })
                }
                Err(e) => {
                    let _ = self.err(e);
                    None
                }
            };
            if let Some(rev) = term {
                let (tx, rx) = watch::channel(false);
                let mut leading = self
                    .shared
                    .leading
                    .lock()
                    .unwrap_or_else(|p| p.into_inner());
                // The lease may have been lost between the put and here.
                if *self.shared.lease.borrow() == Some(lease) {
                    *leading = Some((rev, lease, tx));
                    tracing::info!(replica = %self.shared.opts.me.replica, "this router is now the fleet's leader");
                    return Ok(Leadership { lost: rx });
                }
            }
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
    }
}

/// Keeps this replica's lease alive; when it cannot, the replica steps down before etcd
/// would let the lease expire (a renewal acknowledged at `t` keeps it until `t + TTL`
/// from etcd's view at the earliest measured from when the renewal was sent, so this
/// replica gives up at send time + TTL − 1 s), and takes a new lease as soon as etcd
/// answers again.
async fn keep_lease(shared: Arc<Shared>) {
    let ttl = shared.opts.lease_ttl.max(Duration::from_secs(2));
    let ttl_secs = i64::try_from(ttl.as_secs()).unwrap_or(5);
    let margin = Duration::from_secs(1).min(ttl / 2);
    let mut lease = shared.client.lease_client();
    loop {
        if shared.resigned.load(Ordering::SeqCst) {
            return;
        }
        let sent = tokio::time::Instant::now();
        let id = match lease.grant(ttl_secs, None).await {
            Ok(r) => r.id(),
            Err(e) => {
                shared.connected.store(false, Ordering::Relaxed);
                tracing::debug!(error = %e, "no etcd lease yet");
                tokio::time::sleep(Duration::from_millis(500)).await;
                continue;
            }
        };
        if shared.resigned.load(Ordering::SeqCst) {
            let _ = lease.revoke(id).await;
            return;
        }
        shared.connected.store(true, Ordering::Relaxed);
        shared.lease.send_replace(Some(id));
        let mut deadline = sent + ttl - margin;
        let mut keeper = None;
        let lost = loop {
            tokio::time::sleep_until((tokio::time::Instant::now() + ttl / 3).min(deadline)).await;
            if shared.resigned.load(Ordering::SeqCst) {
                return;
            }
            if tokio::time::Instant::now() >= deadline {
                break "etcd did not confirm it in time";
            }
            let sent = tokio::time::Instant::now();
            let renewed = tokio::time::timeout_at(deadline, async {
                if keeper.is_none() {
                    keeper = Some(lease.keep_alive(id).await?);
                }
                let Some((k, stream)) = keeper.as_mut() else {
                    return Ok(None);
                };
                k.keep_alive().await?;
                stream.message().await
            })
            .await;
            match renewed {
                Ok(Ok(Some(r))) if r.ttl() > 0 => {
                    deadline = sent + ttl - margin;
                    shared.connected.store(true, Ordering::Relaxed);
                }
                Ok(Ok(Some(_))) => break "it expired",
                Ok(_) => {
                    keeper = None;
                    shared.connected.store(false, Ordering::Relaxed);
                }
                Err(_) => break "etcd did not confirm it in time",
            }
        };
        tracing::warn!(lease = id, "this router's etcd lease is lost ({lost})");
        shared.lease.send_replace(None);
        step_down(&shared, None, "its lease was lost");
        // If etcd still has the lease (it answers again, or restarted with it), end it, so
        // that the leader key goes at once.
        let mut revoke = shared.client.lease_client();
        tokio::spawn(async move {
            for _ in 0..60 {
                match revoke.revoke(id).await {
                    Ok(_) => return,
                    Err(e) if e.to_string().contains("not found") => return,
                    Err(_) => tokio::time::sleep(Duration::from_millis(500)).await,
                }
            }
        });
    }
}

/// Ends this replica's leadership (of term `epoch` only, when given: a later term won
/// meanwhile stays).
fn step_down(shared: &Shared, epoch: Option<i64>, why: &str) {
    let was = {
        let mut leading = shared.leading.lock().unwrap_or_else(|p| p.into_inner());
        match (&*leading, epoch) {
            (Some((rev, _, _)), Some(e)) if *rev != e => None,
            _ => leading.take(),
        }
    };
    if let Some((_, _, tx)) = was {
        tracing::warn!(replica = %shared.opts.me.replica, "this router is no longer the fleet's leader: {why}");
        let _ = tx.send(true);
    }
}

fn unavailable(location: &str, e: impl std::error::Error + Send + Sync + 'static) -> StoreError {
    StoreError::Unavailable {
        location: location.to_owned(),
        source: Box::new(e),
    }
}

/// Connection trouble is [`StoreError::Unavailable`] (the caller may retry later);
/// anything else is a backend error.
fn map_error(location: &str, e: etcd_client::Error) -> StoreError {
    use tonic::Code;
    let short = |what: String| StoreError::Unavailable {
        location: location.to_owned(),
        source: what.into(),
    };
    match &e {
        etcd_client::Error::GRpcStatus(s)
            if matches!(
                s.code(),
                Code::Unavailable | Code::DeadlineExceeded | Code::Cancelled | Code::Unknown
            ) =>
        {
            let code = match s.code() {
                Code::DeadlineExceeded => "no answer in time",
                Code::Cancelled => "cancelled",
                _ => "unavailable",
            };
            short(format!("{code}: {}", s.message()))
        }
        etcd_client::Error::TransportError(_)
        | etcd_client::Error::IoError(_)
        | etcd_client::Error::WatchError(_)
        | etcd_client::Error::LeaseKeepAliveError(_) => unavailable(location, e),
        _ => StoreError::Backend {
            location: location.to_owned(),
            source: Box::new(e),
        },
    }
}

impl StateStore for EtcdStore {
    fn load_routing(&self) -> BoxFuture<'_, Result<Option<RoutingState>, StoreError>> {
        Box::pin(async move {
            match self.get(&self.key("routing")).await? {
                Some((bytes, _)) => Ok(Some(self.decode(&bytes)?)),
                None => Ok(None),
            }
        })
    }

    fn save_routing<'a>(
        &'a self,
        state: &'a RoutingState,
        expected: Option<u64>,
    ) -> BoxFuture<'a, Result<(), StoreError>> {
        Box::pin(self.save_routing_inner(state, expected, false))
    }

    fn save_deployment<'a>(&'a self, d: &'a Deployment) -> BoxFuture<'a, Result<(), StoreError>> {
        Box::pin(self.save_deployment_inner(d))
    }

    fn load_deployments(&self, limit: usize) -> BoxFuture<'_, Result<Vec<Deployment>, StoreError>> {
        Box::pin(self.load_deployments_inner(limit))
    }

    fn load_value<'a>(&'a self, key: &'a str) -> BoxFuture<'a, Result<Option<String>, StoreError>> {
        Box::pin(async move {
            Ok(self
                .get(&self.key(&format!("values/{key}")))
                .await?
                .map(|(bytes, _)| String::from_utf8_lossy(&bytes).into_owned()))
        })
    }

    fn save_value<'a>(
        &'a self,
        key: &'a str,
        value: &'a str,
    ) -> BoxFuture<'a, Result<(), StoreError>> {
        Box::pin(async move {
            let mut kv = self.shared.client.kv_client();
            kv.put(self.key(&format!("values/{key}")), value, None)
                .await
                .map_err(|e| self.err(e))?;
            self.ok(());
            Ok(())
        })
    }

    fn create_value<'a>(
        &'a self,
        key: &'a str,
        value: &'a str,
    ) -> BoxFuture<'a, Result<String, StoreError>> {
        Box::pin(self.create_value_inner(key, value))
    }

    fn describe(&self) -> String {
        self.shared.location.clone()
    }

    fn fleet(&self) -> Option<&dyn Fleet> {
        Some(self)
    }
}

impl Fleet for EtcdStore {
    fn me(&self) -> &ReplicaInfo {
        &self.shared.opts.me
    }

    fn changes(&self) -> mpsc::Receiver<Change> {
        let (tx, rx) = mpsc::channel(256);
        tokio::spawn(follow(self.clone(), tx));
        rx
    }

    fn save_routing_as_leader<'a>(
        &'a self,
        state: &'a RoutingState,
        expected: Option<u64>,
    ) -> BoxFuture<'a, Result<(), StoreError>> {
        Box::pin(self.save_routing_inner(state, expected, true))
    }

    fn campaign(&self) -> BoxFuture<'_, Result<Leadership, StoreError>> {
        Box::pin(self.campaign_inner())
    }

    fn leader(&self) -> BoxFuture<'_, Result<Option<ReplicaInfo>, StoreError>> {
        Box::pin(async move {
            match self.get(&self.key("leader")).await? {
                Some((bytes, _)) => Ok(serde_json::from_slice(&bytes).ok()),
                None => Ok(None),
            }
        })
    }

    fn publish_counters(&self, value: String) -> BoxFuture<'_, Result<(), StoreError>> {
        Box::pin(async move {
            let Some(lease) = *self.shared.lease.borrow() else {
                return Err(StoreError::Unavailable {
                    location: self.shared.location.clone(),
                    source: "this router holds no lease yet".into(),
                });
            };
            let key = self.key(&format!("replicas/{}", self.shared.opts.me.replica));
            let mut kv = self.shared.client.kv_client();
            kv.put(key, value, Some(PutOptions::new().with_lease(lease)))
                .await
                .map_err(|e| self.err(e))?;
            self.ok(());
            Ok(())
        })
    }

    fn counters(&self) -> BoxFuture<'_, Result<Vec<(String, String)>, StoreError>> {
        Box::pin(async move {
            let prefix = self.key("replicas/");
            let mut kv = self.shared.client.kv_client();
            let resp = kv
                .get(prefix.clone(), Some(GetOptions::new().with_prefix()))
                .await
                .map_err(|e| self.err(e))?;
            self.ok(());
            Ok(resp
                .kvs()
                .iter()
                .map(|kv| {
                    let key = String::from_utf8_lossy(kv.key());
                    (
                        key.strip_prefix(&prefix).unwrap_or(&key).to_owned(),
                        String::from_utf8_lossy(kv.value()).into_owned(),
                    )
                })
                .collect())
        })
    }

    fn connected(&self) -> bool {
        self.shared.connected.load(Ordering::Relaxed)
    }

    fn resign(&self) -> BoxFuture<'_, ()> {
        Box::pin(async move {
            self.shared.resigned.store(true, Ordering::SeqCst);
            step_down(&self.shared, None, "the router is stopping");
            let lease = self.shared.lease.send_replace(None);
            if let Some(id) = lease {
                let mut l = self.shared.client.lease_client();
                if let Err(e) = l.revoke(id).await {
                    tracing::warn!(error = %e, "could not end this router's etcd lease; the fleet waits for it to run out");
                }
            }
        })
    }
}

/// Reads the routing state, then watches it and the deployment records from the next
/// revision on; when the watch breaks (etcd restarted or unreachable), starts over, so
/// that the first thing after every reconnection is the current routing state.
async fn follow(store: EtcdStore, tx: mpsc::Sender<Change>) {
    let routing_key = store.key("routing");
    let deployments = store.key("deployments/");
    let mut backoff = Duration::from_millis(100);
    loop {
        if tx.is_closed() {
            return;
        }
        let mut kv = store.shared.client.kv_client();
        let rev = match kv.get(routing_key.clone(), None).await {
            Ok(resp) => {
                store.ok(());
                let rev = resp.header().map_or(0, |h| h.revision());
                if let Some(kv) = resp.kvs().first() {
                    match store.decode::<RoutingState>(kv.value()) {
                        Ok(s) => {
                            if tx.send(Change::Connected(s)).await.is_err() {
                                return;
                            }
                        }
                        Err(e) => tracing::error!(error = %e, "{e}"),
                    }
                } else if tx.send(Change::Missing).await.is_err() {
                    return;
                }
                rev
            }
            Err(e) => {
                let _ = store.err(e);
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(1));
                continue;
            }
        };
        let mut wc = store.shared.client.watch_client();
        let watches = async {
            let r = wc
                .watch(
                    routing_key.clone(),
                    Some(WatchOptions::new().with_start_revision(rev + 1)),
                )
                .await?;
            let d = wc
                .watch(
                    deployments.clone(),
                    Some(
                        WatchOptions::new()
                            .with_prefix()
                            .with_start_revision(rev + 1),
                    ),
                )
                .await?;
            Ok::<_, etcd_client::Error>((r, d))
        };
        let (mut r, mut d) = match watches.await {
            Ok(w) => w,
            Err(e) => {
                let _ = store.err(e);
                tokio::time::sleep(backoff).await;
                continue;
            }
        };
        backoff = Duration::from_millis(100);
        loop {
            let msg = tokio::select! {
                m = r.message() => m,
                m = d.message() => m,
            };
            let resp = match msg {
                Ok(Some(resp)) => resp,
                Ok(None) => break,
                Err(e) => {
                    let _ = store.err(e);
                    break;
                }
            };
            if resp.canceled() {
                tracing::warn!(
                    reason = resp.cancel_reason(),
                    "an etcd watch was cancelled; reading the state again"
                );
                break;
            }
            for ev in resp.events() {
                let Some(kv) = ev.kv() else { continue };
                if ev.event_type() != EventType::Put {
                    // The routing state deleted under the fleet (`etcdctl del --prefix`).
                    if kv.key() == routing_key.as_bytes() && tx.send(Change::Missing).await.is_err()
                    {
                        return;
                    }
                    continue;
                }
                let change = if kv.key() == routing_key.as_bytes() {
                    store
                        .decode::<RoutingState>(kv.value())
                        .map(Change::Routing)
                } else {
                    store
                        .decode::<Deployment>(kv.value())
                        .map(|d| Change::Deployment(Box::new(d)))
                };
                match change {
                    Ok(c) => {
                        if tx.send(c).await.is_err() {
                            return;
                        }
                    }
                    Err(e) => tracing::error!(error = %e, "{e}"),
                }
            }
        }
        tokio::time::sleep(backoff).await;
    }
}
