//! Leader election against the ApiServerVerifier: create, renew, take over an expired lease, lose a race.

use http::Method;
use serde_json::{Value, json};

use super::*;
use crate::fixtures::{self, ApiServerVerifier, Reply};

const LEASE: &str = "/apis/coordination.k8s.io/v1/namespaces/switchyard-system/leases/switchyard-controller";
const LEASES: &str = "/apis/coordination.k8s.io/v1/namespaces/switchyard-system/leases";

fn at(seconds: i64) -> Timestamp {
    Timestamp::from_second(1_750_000_000 + seconds).unwrap()
}

fn elector(identity: &str) -> (LeaseElector, ApiServerVerifier) {
    let (ctx, api) = fixtures::context(&[]);
    let leases = Api::namespaced(ctx.client.clone(), "switchyard-system");
    let elector = LeaseElector::new(
        leases,
        "switchyard-controller".into(),
        identity.into(),
        Duration::from_secs(15),
    );
    (elector, api)
}

fn lease(holder: &str, renewed: Timestamp, transitions: i32) -> Value {
    json!({
        "apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
        "metadata": {"name": "switchyard-controller", "namespace": "switchyard-system", "resourceVersion": "7"},
        "spec": {
            "holderIdentity": holder, "leaseDurationSeconds": 15, "leaseTransitions": transitions,
            "acquireTime": at(-100).to_string(), "renewTime": renewed.to_string()
        }
    })
}

#[tokio::test]
async fn missing_lease_is_created_and_held() {
    let (elector, mut api) = elector("controller-0");
    let round = tokio::spawn(async move { elector.try_acquire_or_renew(at(0)).await });
    api.expect(Method::GET, LEASE, Reply::NotFound).await;
    let created = api.expect(Method::POST, LEASES, Reply::Echo).await;
    assert_eq!(created.body["spec"]["holderIdentity"], "controller-0");
    assert_eq!(created.body["spec"]["leaseDurationSeconds"], 15);
    assert_eq!(created.body["spec"]["leaseTransitions"], 0);
    assert_eq!(round.await.unwrap().unwrap(), Leadership::Leading);
}

#[tokio::test]
async fn valid_lease_of_another_replica_is_left_alone() {
    let (elector, mut api) = elector("controller-1");
    let round = tokio::spawn(async move { elector.try_acquire_or_renew(at(10)).await });
    api.expect(Method::GET, LEASE, Reply::Json(lease("controller-0", at(0), 0)))
        .await;
    assert_eq!(
        round.await.unwrap().unwrap(),
        Leadership::Following {
            holder: Some("controller-0".into())
        }
    );
    api.done().await;
}

#[tokio::test]
async fn expired_lease_is_taken_over_with_its_resource_version() {
    let (elector, mut api) = elector("controller-1");
    let round = tokio::spawn(async move { elector.try_acquire_or_renew(at(16)).await });
    api.expect(Method::GET, LEASE, Reply::Json(lease("controller-0", at(0), 2)))
        .await;
    let replaced = api.expect(Method::PUT, LEASE, Reply::Echo).await;
    assert_eq!(replaced.body["metadata"]["resourceVersion"], "7");
    assert_eq!(replaced.body["spec"]["holderIdentity"], "controller-1");
    assert_eq!(replaced.body["spec"]["leaseTransitions"], 3);
    assert_eq!(replaced.body["spec"]["acquireTime"], replaced.body["spec"]["renewTime"]);
    assert_eq!(round.await.unwrap().unwrap(), Leadership::Leading);
}

#[tokio::test]
async fn own_lease_is_renewed_keeping_its_acquire_time() {
    let (elector, mut api) = elector("controller-0");
    let round = tokio::spawn(async move { elector.try_acquire_or_renew(at(5)).await });
    api.expect(Method::GET, LEASE, Reply::Json(lease("controller-0", at(0), 1)))
        .await;
    let renewed = api.expect(Method::PUT, LEASE, Reply::Echo).await;
    assert_eq!(renewed.body["spec"]["leaseTransitions"], 1);
    assert_ne!(renewed.body["spec"]["acquireTime"], renewed.body["spec"]["renewTime"]);
    assert_eq!(round.await.unwrap().unwrap(), Leadership::Leading);
}

#[tokio::test]
async fn losing_the_write_race_means_following() {
    let (elector, mut api) = elector("controller-1");
    let round = tokio::spawn(async move { elector.try_acquire_or_renew(at(30)).await });
    api.expect(Method::GET, LEASE, Reply::Json(lease("controller-0", at(0), 0)))
        .await;
    api.expect(Method::PUT, LEASE, Reply::Conflict).await;
    assert_eq!(round.await.unwrap().unwrap(), Leadership::Following { holder: None });
}

#[tokio::test(start_paused = true)]
async fn controllers_run_only_while_leading() {
    let (elector, mut api) = elector("controller-0");
    let metrics = Arc::new(Metrics::default());
    let cancel = CancellationToken::new();
    let (started_tx, mut started) = tokio::sync::mpsc::unbounded_channel();
    let (stopped_tx, mut stopped) = tokio::sync::mpsc::unbounded_channel();
    let election = tokio::spawn(run_elected(elector, metrics.clone(), cancel.clone(), move |token| {
        let (started_tx, stopped_tx) = (started_tx.clone(), stopped_tx.clone());
        async move {
            started_tx.send(()).unwrap();
            token.cancelled().await;
            stopped_tx.send(()).unwrap();
        }
    }));

    api.expect(Method::GET, LEASE, Reply::NotFound).await;
    api.expect(Method::POST, LEASES, Reply::Echo).await;
    started.recv().await.unwrap();
    // Another replica took the lease (say, after a partition): the controllers stop.
    let fresh = lease("controller-1", Timestamp::now(), 1);
    api.expect(Method::GET, LEASE, Reply::Json(fresh)).await;
    stopped.recv().await.unwrap();
    assert!(metrics.encode().contains("switchyard_controller_leader 0"));

    cancel.cancel();
    election.await.unwrap();
    assert!(started.try_recv().is_err(), "controllers were started twice");
}
