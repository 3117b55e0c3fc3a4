//! One suite for every [`StateStore`] backend: the embedded SQLite store always, and the
//! etcd store (against a real etcd server) when built with `--features etcd`.

use std::sync::Arc;

use turnout_core::{Deployment, Role, RoutingState, SlotName, SlotState, Verdict};
use turnout_store::{EmbeddedStore, StateStore, StoreError};

fn state() -> RoutingState {
    let slot = |a: &str| SlotState {
        version: Some("v1".into()),
        upstreams: vec![a.into()],
        role: Role::Idle,
    };
    RoutingState::initial(slot("127.0.0.1:1"), slot("127.0.0.1:2"))
}

fn deployment(id: &str) -> Deployment {
    serde_json::from_value(serde_json::json!({
        "id": id, "version": "v2", "slot": "green", "verdict": "in_progress",
        "started_at": "2026-11-26T10:00:00.000Z", "stages": [], "manual": false,
        "upstreams": []
    }))
    .expect("a deployment record")
}

/// What every backend promises. `a` and `b` are two handles on one store (two routers).
async fn contract(a: Arc<dyn StateStore>, b: Arc<dyn StateStore>) {
    // Nothing saved yet; the first save creates.
    assert_eq!(a.load_routing().await.unwrap(), None);
    let s0 = state();
    a.save_routing(&s0, None).await.unwrap();
    assert_eq!(b.load_routing().await.unwrap(), Some(s0.clone()));
    // Creating again (expected: nothing there) is a conflict.
    let err = b.save_routing(&s0, None).await.unwrap_err();
    assert!(matches!(err, StoreError::Conflict { .. }), "{err}");

    // Two writers that read revision 0: exactly one wins, the other gets a conflict that
    // names both revisions, and the winner's state is what is stored.
    let to_green = s0.switch(SlotName::Green, 1, false).unwrap();
    let mut to_green_too = to_green.clone();
    to_green_too.weights = turnout_core::Weights {
        blue: 50,
        green: 50,
    };
    let (ra, rb) = tokio::join!(
        a.save_routing(&to_green, Some(0)),
        b.save_routing(&to_green_too, Some(0))
    );
    let (winner, loser) = match (ra, rb) {
        (Ok(()), Err(e)) => (&to_green, e),
        (Err(e), Ok(())) => (&to_green_too, e),
        other => panic!("one of two concurrent writers must win: {other:?}"),
    };
    assert!(
        matches!(
            loser,
            StoreError::Conflict {
                expected: 0,
                found: 1
            }
        ),
        "{loser}"
    );
    assert!(
        loser
            .to_string()
            .contains("read the status again and retry"),
        "{loser}"
    );
    assert_eq!(a.load_routing().await.unwrap().as_ref(), Some(winner));

    // Deployments: newest first, limited, replaced by id. In a fleet only the leader
    // saves them.
    if let Some(fleet) = a.fleet() {
        fleet.campaign().await.unwrap();
    }
    for id in [
        "20261126-100000-aaaa",
        "20261126-110000-bbbb",
        "20261126-090000-cccc",
    ] {
        a.save_deployment(&deployment(id)).await.unwrap();
    }
    let mut done = deployment("20261126-110000-bbbb");
    done.verdict = Verdict::Promoted;
    if b.fleet().is_some() {
        let err = b.save_deployment(&done).await.unwrap_err();
        assert!(matches!(err, StoreError::NotLeader { .. }), "{err}");
    }
    a.save_deployment(&done).await.unwrap();
    let list = a.load_deployments(2).await.unwrap();
    let ids: Vec<_> = list.iter().map(|d| d.id.as_str()).collect();
    assert_eq!(ids, ["20261126-110000-bbbb", "20261126-100000-aaaa"]);
    assert_eq!(list[0].verdict, Verdict::Promoted);

    // Values; create_value keeps the first.
    assert_eq!(a.load_value("k").await.unwrap(), None);
    a.save_value("k", "one").await.unwrap();
    b.save_value("k", "two").await.unwrap();
    assert_eq!(a.load_value("k").await.unwrap().as_deref(), Some("two"));
    let (ca, cb) = tokio::join!(a.create_value("key", "A"), b.create_value("key", "B"));
    let (ca, cb) = (ca.unwrap(), cb.unwrap());
    assert_eq!(ca, cb, "both writers must end up with the one stored value");
    assert!(ca == "A" || ca == "B");
    assert_eq!(b.create_value("key", "C").await.unwrap(), ca);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_embedded_store_keeps_the_contract() {
    let dir = tempfile::tempdir().unwrap();
    let store: Arc<dyn StateStore> = Arc::new(EmbeddedStore::open(dir.path()).unwrap());
    // One router per state directory (the lock): both handles are the same store.
    contract(store.clone(), store).await;
}

#[cfg(feature = "etcd")]
fn etcd_options(endpoint: &str, replica: &str) -> turnout_store::EtcdOptions {
    turnout_store::EtcdOptions {
        endpoints: vec![endpoint.to_owned()],
        prefix: "/turnout/contract".into(),
        me: turnout_store::ReplicaInfo {
            replica: replica.into(),
            admin: format!("http://127.0.0.1:1/{replica}"),
        },
        lease_ttl: std::time::Duration::from_secs(5),
        timeout: std::time::Duration::from_secs(1),
        tls: None,
        user: None,
    }
}

#[cfg(feature = "etcd")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_etcd_store_keeps_the_contract() {
    use turnout_store::EtcdStore;

    let etcd = turnout_testkit::Etcd::start().await.unwrap();
    let a = EtcdStore::connect(etcd_options(&etcd.endpoint, "a"))
        .await
        .unwrap();
    let b = EtcdStore::connect(etcd_options(&etcd.endpoint, "b"))
        .await
        .unwrap();
    let (a, b): (Arc<dyn StateStore>, Arc<dyn StateStore>) = (Arc::new(a), Arc::new(b));
    contract(a.clone(), b.clone()).await;

    // `a` leads (the contract campaigned with it). Once it resigns, its leader-only
    // writes are refused, and `b` is elected at once (the lease was ended, not left to
    // run out).
    let done = deployment("20261126-120000-dddd");
    a.save_deployment(&done).await.unwrap();
    a.fleet().unwrap().resign().await;
    let err = a.save_deployment(&done).await.unwrap_err();
    assert!(matches!(err, StoreError::NotLeader { .. }), "{err}");
    let state = a.load_routing().await.unwrap().unwrap();
    let err = a
        .fleet()
        .unwrap()
        .save_routing_as_leader(&state, Some(state.revision))
        .await
        .unwrap_err();
    assert!(matches!(err, StoreError::NotLeader { .. }), "{err}");
    let fleet = b.fleet().unwrap();
    tokio::time::timeout(std::time::Duration::from_secs(3), fleet.campaign())
        .await
        .expect("b elected within 3 s of a's resignation (the lease TTL is 5 s)")
        .unwrap();
    assert_eq!(fleet.leader().await.unwrap().unwrap().replica, "b");
    b.save_deployment(&done).await.unwrap();
}

#[cfg(feature = "etcd")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_etcd_is_a_clear_error_at_start() {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let opts = etcd_options(&format!("http://127.0.0.1:{port}"), "a");
    let err = turnout_store::EtcdStore::connect(opts)
        .await
        .err()
        .expect("no etcd there");
    assert!(matches!(err, StoreError::Unavailable { .. }), "{err}");
    assert!(err.to_string().contains("unreachable"), "{err}");
}
