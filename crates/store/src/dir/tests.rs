//! The dir store against temporary directories: a weight change rewrites one document, bad changes are refused.

use super::*;

const MODEL: &str = "\
apiVersion: inference.networking.x-k8s.io/v1alpha1
kind: InferenceModel
metadata:
  name: inferencemodel-sample
spec:
  criticality: Critical
  modelName: qwq
  poolRef:
    name: reasoning-pool
  targetModels:
  - name: qwq-32b
    weight: 100
  - name: qwq-32b-canary
    weight: 0
";

fn temp_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("switchyard-store-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn split(a: i32, b: i32) -> [TargetModel; 2] {
    [
        TargetModel {
            name: "qwq-32b".into(),
            weight: Some(a),
        },
        TargetModel {
            name: "qwq-32b-canary".into(),
            weight: Some(b),
        },
    ]
}

fn key(name: &str) -> NamespacedName {
    NamespacedName::new("default", name)
}

#[tokio::test]
async fn apply_rewrites_only_the_model_document() {
    let dir = temp_dir("apply");
    let pods = "apiVersion: v1\nkind: Pod\nmetadata:\n  name: p  # keep me\n";
    std::fs::write(dir.join("all.yaml"), format!("{pods}---\n{MODEL}")).unwrap();
    std::fs::write(dir.join(".ignored.yaml"), MODEL.replace("qwq", "other")).unwrap();
    let store = DirStore::new(&dir);
    let models = store.list_models().await.unwrap();
    assert_eq!(models.len(), 1);
    let model = &models[0].object;
    assert_eq!(
        NamespacedName::of(&model.metadata).to_string(),
        "default/inferencemodel-sample"
    );
    assert_eq!(model.spec.model_name, "qwq");
    assert_eq!(models[0].source, dir.join("all.yaml").display().to_string());

    let after = store.apply_targets(model, &split(90, 10)).await.unwrap();
    assert_eq!(after.object.spec.target_models, split(90, 10));
    let text = std::fs::read_to_string(dir.join("all.yaml")).unwrap();
    assert!(text.starts_with(pods), "other documents keep their text: {text}");
    let again = store.get_model(&key("inferencemodel-sample")).await.unwrap().unwrap();
    assert_eq!(again.spec.target_models, split(90, 10));
    assert!(!dir.join(".all.yaml.tmp").exists());
}

#[tokio::test]
async fn invalid_or_unknown_models_are_refused() {
    let dir = temp_dir("invalid");
    std::fs::write(dir.join("model.yaml"), MODEL).unwrap();
    let store = DirStore::new(&dir);
    let model = store.get_model(&key("inferencemodel-sample")).await.unwrap().unwrap();
    let zero = [TargetModel {
        name: "qwq-32b".into(),
        weight: Some(0),
    }];
    assert!(matches!(
        store.apply_targets(&model, &zero).await,
        Err(Error::Invalid(_))
    ));
    assert_eq!(std::fs::read_to_string(dir.join("model.yaml")).unwrap(), MODEL);
    assert_eq!(store.get_model(&key("nope")).await.unwrap(), None);
    let mut gone = model.clone();
    gone.metadata.name = Some("nope".into());
    assert!(matches!(store.apply_targets(&gone, &zero).await, Err(Error::NotFound(k)) if k == key("nope")));
}
