//! InferencePool reconciles against the ApiServerVerifier, and the pure condition rules.

use http::Method;
use serde_json::json;

use super::*;
use crate::fixtures::{self, Reply, conditions, gateway, list, pod, seed_pool, triple};

const PODS: &str = "/api/v1/namespaces/default/pods";
const GATEWAY: &str = "/apis/gateway.networking.k8s.io/v1/namespaces/default/gateways/inference-gateway";
const STATUS: &str =
    "/apis/inference.networking.x-k8s.io/v1alpha1/namespaces/default/inferencepools/reasoning-pool/status";
const EVENTS: &str = "/apis/events.k8s.io/v1/namespaces/default/events";

#[tokio::test]
async fn seed_pool_with_ready_pods_becomes_ready_with_events() {
    let (ctx, mut api) = fixtures::context(&[]);
    let reconciled = tokio::spawn(reconcile(Arc::new(seed_pool()), ctx.clone()));

    let pods: Vec<_> = (0..5)
        .map(|i| pod(&format!("qwq-{i}"), true))
        .chain([pod("qwq-5", false)])
        .collect();
    let listed = api.expect(Method::GET, PODS, Reply::Json(list("PodList", pods))).await;
    assert!(listed.query.contains("labelSelector=app%3Dqwq-32b"), "{}", listed.query);
    api.expect(Method::GET, GATEWAY, Reply::Json(gateway())).await;
    let patch = api
        .expect(
            Method::PATCH,
            STATUS,
            Reply::Json(serde_json::to_value(seed_pool()).unwrap()),
        )
        .await;
    assert!(
        patch.query.contains("fieldManager=switchyard-controller"),
        "{}",
        patch.query
    );
    assert!(patch.query.contains("force=true"), "{}", patch.query);
    assert_eq!(patch.body["apiVersion"], "inference.networking.x-k8s.io/v1alpha1");
    assert_eq!(patch.body["kind"], "InferencePool");
    assert_eq!(patch.body["status"]["readyPods"], 5);
    assert_eq!(
        conditions(&patch.body),
        [
            triple("Ready", "True", "Ready"),
            triple("ResolvedRefs", "True", "ResolvedRefs")
        ]
    );
    for reason in ["Ready", "ResolvedRefs"] {
        let event = api.expect(Method::POST, EVENTS, Reply::Echo).await;
        assert_eq!(
            (event.body["reason"].as_str(), event.body["type"].as_str()),
            (Some(reason), Some("Normal"))
        );
        assert_eq!(event.body["regarding"]["name"], "reasoning-pool");
        assert_eq!(event.body["reportingController"], "switchyard-controller");
    }

    let action = reconciled.await.unwrap().unwrap();
    assert_eq!(action, Action::requeue(RESYNC));
    drop(ctx);
    api.done().await;
}

#[tokio::test]
async fn unchanged_status_is_not_written_again() {
    let mut pool = seed_pool();
    let observed = Observed {
        ready_pods: 1,
        picker: None,
        listener: Some(Ok(())),
    };
    pool.status = Some(InferencePoolStatus {
        ready_pods: Some(1),
        conditions: conditions::merge(&[], &decide(&observed), Some(1), Timestamp::UNIX_EPOCH),
    });
    let (ctx, mut api) = fixtures::context(&[]);
    let reconciled = tokio::spawn(reconcile(Arc::new(pool), ctx.clone()));
    api.expect(
        Method::GET,
        PODS,
        Reply::Json(list("PodList", vec![pod("qwq-0", true)])),
    )
    .await;
    api.expect(Method::GET, GATEWAY, Reply::Json(gateway())).await;
    reconciled.await.unwrap().unwrap();
    drop(ctx);
    api.done().await;
}

#[tokio::test]
async fn missing_gateway_and_no_ready_pods_are_reported_as_warnings() {
    let (ctx, mut api) = fixtures::context(&[]);
    let reconciled = tokio::spawn(reconcile(Arc::new(seed_pool()), ctx.clone()));
    api.expect(
        Method::GET,
        PODS,
        Reply::Json(list("PodList", vec![pod("qwq-0", false)])),
    )
    .await;
    api.expect(Method::GET, GATEWAY, Reply::NotFound).await;
    let patch = api
        .expect(
            Method::PATCH,
            STATUS,
            Reply::Json(serde_json::to_value(seed_pool()).unwrap()),
        )
        .await;
    assert_eq!(patch.body["status"]["readyPods"], 0);
    assert_eq!(
        conditions(&patch.body),
        [
            triple("Ready", "False", "NoReadyPods"),
            triple("ResolvedRefs", "False", "GatewayListenerNotFound")
        ]
    );
    assert_eq!(
        patch.body["status"]["conditions"][1]["message"],
        "Gateway default/inference-gateway not found"
    );
    for reason in ["NoReadyPods", "GatewayListenerNotFound"] {
        let event = api.expect(Method::POST, EVENTS, Reply::Echo).await;
        assert_eq!(
            (event.body["reason"].as_str(), event.body["type"].as_str()),
            (Some(reason), Some("Warning"))
        );
    }
    reconciled.await.unwrap().unwrap();
    drop(ctx);
    api.done().await;
}

#[tokio::test]
async fn picker_service_without_ready_endpoints_is_not_healthy() {
    let mut pool = seed_pool();
    pool.metadata.annotations = None;
    pool.spec.extension_ref = Some(api::v1alpha1::ExtensionRef {
        group: None,
        kind: None,
        name: "switchyard-gateway".into(),
        target_port_number: Some(9002),
        failure_mode: None,
    });
    let (ctx, mut api) = fixtures::context(&[]);
    let reconciled = tokio::spawn(reconcile(Arc::new(pool), ctx.clone()));
    api.expect(
        Method::GET,
        PODS,
        Reply::Json(list("PodList", vec![pod("qwq-0", true)])),
    )
    .await;
    let service = json!({"apiVersion": "v1", "kind": "Service", "metadata": {"name": "switchyard-gateway"}});
    api.expect(
        Method::GET,
        "/api/v1/namespaces/default/services/switchyard-gateway",
        Reply::Json(service),
    )
    .await;
    let slice = json!({"addressType": "IPv4", "metadata": {"name": "s"},
        "endpoints": [{"addresses": ["10.0.0.9"], "conditions": {"ready": false}}]});
    let listed = api
        .expect(
            Method::GET,
            "/apis/discovery.k8s.io/v1/namespaces/default/endpointslices",
            Reply::Json(list("EndpointSliceList", vec![slice])),
        )
        .await;
    assert!(
        listed
            .query
            .contains("kubernetes.io%2Fservice-name%3Dswitchyard-gateway"),
        "{}",
        listed.query
    );
    let patch = api
        .expect(
            Method::PATCH,
            STATUS,
            Reply::Json(serde_json::to_value(seed_pool()).unwrap()),
        )
        .await;
    assert_eq!(
        conditions(&patch.body),
        [
            triple("Ready", "False", "EndpointPickerNotHealthy"),
            triple("ResolvedRefs", "True", "ResolvedRefs")
        ]
    );
    api.expect(Method::POST, EVENTS, Reply::Echo).await;
    api.expect(Method::POST, EVENTS, Reply::Echo).await;
    reconciled.await.unwrap().unwrap();
}

#[test]
fn decide_prefers_the_picker_problem_and_names_every_unresolved_reference() {
    let observed = Observed {
        ready_pods: 3,
        picker: Some(Picker::Unresolved("Service default/epp not found".into())),
        listener: Some(Err("Gateway default/gw has no listener on port 8081".into())),
    };
    let [ready, resolved] = decide(&observed).try_into().unwrap();
    assert_eq!(
        (ready.status, ready.reason),
        (Status::False, Reason::EndpointPickerNotHealthy)
    );
    assert_eq!(
        (resolved.status, resolved.reason),
        (Status::False, Reason::InvalidExtensionRef)
    );
    assert_eq!(
        resolved.message,
        "Service default/epp not found; Gateway default/gw has no listener on port 8081"
    );
}

#[test]
fn a_pod_change_maps_to_the_pools_that_select_it() {
    let pool = Arc::new(seed_pool());
    let mut other = seed_pool();
    other.spec.selector = [("app".to_owned(), "llama".to_owned())].into();
    let pools = [pool.clone(), Arc::new(other)];
    let matching: Pod = serde_json::from_value(pod("qwq-0", true)).unwrap();
    assert_eq!(selecting(&pools, &matching), [pool]);
    let mut elsewhere = matching.clone();
    elsewhere.metadata.namespace = Some("prod".into());
    assert!(selecting(&pools, &elsewhere).is_empty());
}
