//! Every YAML document under `deploy/` parses as a Kubernetes object, every kustomization builds, and
//! `kubectl apply --dry-run=client --validate=false` accepts every file.
//!
//! kubectl needs API discovery even for a client-side dry run, and there is no cluster here: a tiny fake API server
//! answers discovery for exactly the kinds the manifests use and "not found" for every object, so kubectl decodes,
//! maps and "creates (dry run)" each document without a server ever judging it. Without kubectl the test fails
//! (`cargo xtask ci` checks for it first): it never passes by skipping.

use std::{
    collections::BTreeSet,
    path::{Path, PathBuf},
    process::Command,
};

use axum::{Json, Router, extract::Path as UrlPath, http::StatusCode, routing::get};
use serde_json::{Value, json};

fn deploy_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../deploy")
}

fn yaml_files(dir: &Path, out: &mut Vec<PathBuf>) {
    let mut entries: Vec<PathBuf> = std::fs::read_dir(dir).unwrap().map(|e| e.unwrap().path()).collect();
    entries.sort();
    for path in entries {
        if path.is_dir() {
            yaml_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "yaml" || e == "yml") {
            out.push(path);
        }
    }
}

/// Kinds that are not namespaced (discovery must say so, or kubectl would put them in a namespace).
const CLUSTER_SCOPED: &[&str] = &[
    "Namespace",
    "ClusterRole",
    "ClusterRoleBinding",
    "CustomResourceDefinition",
    "GatewayClass",
    "PersistentVolume",
    "StorageClass",
    "PriorityClass",
    "ValidatingWebhookConfiguration",
    "MutatingWebhookConfiguration",
];

fn plural(kind: &str) -> String {
    let lower = kind.to_lowercase();
    if lower.ends_with('y') && !lower.ends_with("ey") {
        format!("{}ies", &lower[..lower.len() - 1])
    } else if lower.ends_with('s') {
        format!("{lower}es")
    } else {
        format!("{lower}s")
    }
}

/// (group, version, kind) of every object, parsed with a YAML 1.2 parser; names must be strings.
fn parse_all(files: &[PathBuf]) -> BTreeSet<(String, String, String)> {
    let mut kinds = BTreeSet::new();
    for file in files {
        let text = std::fs::read_to_string(file).unwrap();
        let docs: Vec<Value> = serde_saphyr::from_str_multiple(&text)
            .unwrap_or_else(|e| panic!("{} is not valid YAML: {e}", file.display()));
        assert!(!docs.is_empty(), "{} has no document", file.display());
        for (i, doc) in docs.iter().enumerate() {
            let at = format!("{} document {}", file.display(), i + 1);
            let api_version = doc["apiVersion"]
                .as_str()
                .unwrap_or_else(|| panic!("{at}: no apiVersion"));
            let kind = doc["kind"].as_str().unwrap_or_else(|| panic!("{at}: no kind"));
            if kind == "Kustomization" {
                continue;
            }
            assert!(
                doc["metadata"]["name"].is_string(),
                "{at}: metadata.name must be a string"
            );
            let (group, version) = api_version.rsplit_once('/').unwrap_or(("", api_version));
            kinds.insert((group.to_owned(), version.to_owned(), kind.to_owned()));
        }
    }
    kinds
}

/// A discovery-only API server for `kinds`; every object GET is a 404.
fn fake_api_server(kinds: &BTreeSet<(String, String, String)>) -> Router {
    let resources = |group: &str, version: &str| -> Value {
        let list: Vec<Value> = kinds
            .iter()
            .filter(|(g, v, _)| g == group && v == version)
            .map(|(_, _, kind)| {
                json!({
                    "name": plural(kind), "singularName": kind.to_lowercase(), "kind": kind,
                    "namespaced": !CLUSTER_SCOPED.contains(&kind.as_str()),
                    "verbs": ["create", "delete", "get", "list", "patch", "update", "watch"],
                })
            })
            .collect();
        let group_version = if group.is_empty() {
            version.to_owned()
        } else {
            format!("{group}/{version}")
        };
        json!({ "kind": "APIResourceList", "apiVersion": "v1", "groupVersion": group_version, "resources": list })
    };
    let core = resources("", "v1");
    let groups: BTreeSet<(String, String)> = kinds
        .iter()
        .filter(|(g, _, _)| !g.is_empty())
        .map(|(g, v, _)| (g.clone(), v.clone()))
        .collect();
    let group_list: Vec<Value> = groups
        .iter()
        .map(|(g, v)| {
            let gv = json!({ "groupVersion": format!("{g}/{v}"), "version": v });
            json!({ "name": g, "versions": [gv.clone()], "preferredVersion": gv })
        })
        .collect();
    let apis = json!({ "kind": "APIGroupList", "apiVersion": "v1", "groups": group_list });
    let by_group: std::collections::BTreeMap<String, Value> = groups
        .iter()
        .map(|(g, v)| (format!("{g}/{v}"), resources(g, v)))
        .collect();
    let not_found = || {
        (
            StatusCode::NOT_FOUND,
            Json(
                json!({ "kind": "Status", "apiVersion": "v1", "status": "Failure", "reason": "NotFound", "code": 404 }),
            ),
        )
    };
    Router::new()
        .route(
            "/api",
            get(|| async { Json(json!({ "kind": "APIVersions", "versions": ["v1"] })) }),
        )
        .route("/api/v1", get(move || async move { Json(core) }))
        .route("/apis", get(move || async move { Json(apis) }))
        .route(
            "/apis/{group}/{version}",
            get(move |UrlPath((group, version)): UrlPath<(String, String)>| async move {
                match by_group.get(&format!("{group}/{version}")) {
                    Some(list) => Ok(Json(list.clone())),
                    None => Err(StatusCode::NOT_FOUND),
                }
            }),
        )
        .fallback(move || async move { not_found() })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_manifest_parses_builds_and_passes_a_kubectl_dry_run() {
    let mut files = Vec::new();
    yaml_files(&deploy_dir(), &mut files);
    assert!(
        files.iter().any(|f| f.ends_with("envoy-gateway/ext-proc-policy.yaml")),
        "deploy/ is missing the Envoy Gateway wiring"
    );
    let kinds = parse_all(&files);

    assert!(
        Command::new("kubectl").arg("version").arg("--client").output().is_ok(),
        "the manifest checks need kubectl on PATH (https://kubernetes.io/docs/tasks/tools/)"
    );
    let kustomizations: Vec<&PathBuf> = files.iter().filter(|f| f.ends_with("kustomization.yaml")).collect();
    for file in &kustomizations {
        let dir = file.parent().unwrap();
        let out = Command::new("kubectl").arg("kustomize").arg(dir).output().unwrap();
        assert!(
            out.status.success(),
            "kubectl kustomize {} failed:\n{}",
            dir.display(),
            String::from_utf8_lossy(&out.stderr)
        );
    }

    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let server = tokio::spawn(async move { axum::serve(listener, fake_api_server(&kinds)).await });
    let home = std::env::temp_dir().join(format!("switchyard-kubectl-{}", std::process::id()));
    std::fs::create_dir_all(&home).unwrap();
    let kubeconfig = home.join("kubeconfig");
    std::fs::write(
        &kubeconfig,
        format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: fake\n  cluster:\n    server: http://{addr}\n\
             contexts:\n- name: fake\n  context:\n    cluster: fake\n    namespace: default\n\
             current-context: fake\nusers: []\n"
        ),
    )
    .unwrap();
    let objects: Vec<&PathBuf> = files.iter().filter(|f| !f.ends_with("kustomization.yaml")).collect();
    let mut args: Vec<String> = vec![
        "--kubeconfig".into(),
        kubeconfig.display().to_string(),
        "--cache-dir".into(),
        home.join("cache").display().to_string(),
        "apply".into(),
        "--dry-run=client".into(),
        "--validate=false".into(),
    ];
    for file in &objects {
        args.push("-f".into());
        args.push(file.display().to_string());
    }
    let out = tokio::task::spawn_blocking(move || Command::new("kubectl").args(&args).output().unwrap())
        .await
        .unwrap();
    server.abort();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "kubectl apply --dry-run=client rejected the manifests:\n{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let applied = stdout.lines().filter(|l| l.contains("(dry run)")).count();
    let documents: usize = objects
        .iter()
        .map(|f| {
            let text = std::fs::read_to_string(f).unwrap();
            let docs: Vec<Value> = serde_saphyr::from_str_multiple(&text).unwrap();
            docs.len()
        })
        .sum();
    assert_eq!(applied, documents, "every document must be applied once:\n{stdout}");
    let _ = std::fs::remove_dir_all(&home);
}

/// The mirror example holds together: the annotated model validates and resolves to the mirror pool, the mirror
/// policy's share equals the annotation's, its cluster loops back to the `llm-gw` listener, and the shadow route
/// matches exactly the authorities the picker treats as shadows.
#[test]
fn the_envoy_mirror_example_matches_the_picker_and_the_annotations() {
    let text = std::fs::read_to_string(deploy_dir().join("envoy-gateway/mirror.yaml")).unwrap();
    let docs: Vec<Value> = serde_saphyr::from_str_multiple(&text).unwrap();
    let models = gateway::datastore::dir::parse_documents(&text).expect("the example's objects validate");
    let model = models
        .iter()
        .find_map(|r| match r {
            gateway::datastore::Resource::Model(m) if m.spec.model_name == "qwq" => Some(m),
            _ => None,
        })
        .expect("the annotated model");
    let policy = api::validate::mirror_policy(model).unwrap().expect("qwq mirrors");
    assert_eq!(policy.target, "qwq-next");
    assert!(
        models
            .iter()
            .any(|r| matches!(r, gateway::datastore::Resource::Model(m) if m.spec.model_name == "qwq-next")),
        "the mirror target is an InferenceModel of the example"
    );

    let patches = docs[0]["spec"]["jsonPatches"].as_array().unwrap();
    let op = |path: &str| {
        patches
            .iter()
            .find(|p| p["operation"]["path"] == path)
            .unwrap_or_else(|| panic!("no patch of {path}"))
    };
    let mirror = &op("/virtual_hosts/0/routes/1/route/request_mirror_policies")["operation"]["value"][0];
    let fraction = &mirror["runtime_fraction"]["default_value"];
    assert_eq!(fraction["denominator"], "MILLION");
    assert_eq!(
        fraction["numerator"].as_u64(),
        Some(u64::from(policy.fraction.millionths())),
        "Envoy's share is the annotation's"
    );
    let cluster = mirror["cluster"].as_str().unwrap();
    let defined = patches
        .iter()
        .find(|p| p["operation"]["value"]["name"] == cluster)
        .expect("the mirror cluster is defined by the same policy");
    let address = &defined["operation"]["value"]["load_assignment"]["endpoints"][0]["lb_endpoints"][0]["endpoint"]["address"]
        ["socket_address"];
    assert_eq!(address["address"], "127.0.0.1");

    let gateway_text = std::fs::read_to_string(deploy_dir().join("examples/02-inference-gateway.yaml")).unwrap();
    let gateway_docs: Vec<Value> = serde_saphyr::from_str_multiple(&gateway_text).unwrap();
    let listener = gateway_docs
        .iter()
        .filter(|d| d["kind"] == "Gateway")
        .flat_map(|d| d["spec"]["listeners"].as_array().cloned().unwrap_or_default())
        .find(|l| l["name"] == "llm-gw")
        .expect("the llm-gw listener");
    assert_eq!(address["port_value"], listener["port"], "the loopback reaches llm-gw");

    let shadow = &op("/virtual_hosts/0/routes/0/match/headers")["operation"]["value"][0];
    assert_eq!(shadow["name"], ":authority");
    assert_eq!(
        shadow["string_match"]["suffix"],
        gateway::ext_proc::stream::SHADOW_SUFFIX
    );
    assert_eq!(op("/virtual_hosts/0/routes/0")["operation"]["op"], "copy");
}
