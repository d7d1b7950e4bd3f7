//! Guarded releases over real HTTP on 127.0.0.1 against a dashboard in dir mode on a temp directory and SQLite
//! file: start (with validation errors and conflicts), pause, resume, promote and abort through the JSON API and
//! the page's forms, a status sidecar written here standing in for the controller, and the release history.

mod common;

use std::{net::SocketAddr, path::Path, time::Duration};

use api::canary::{CanaryReleaseStatus, Phase, ReleaseEvent, TargetObservation};
use bytes::Bytes;
use clap::Parser as _;
use common::{LOGIN, MODEL_YAML, encode, extract, temp_dir};
use http_body_util::{BodyExt, Full};
use hyper_util::{
    client::legacy::{Client, connect::HttpConnector},
    rt::TokioExecutor,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use serde_json::{Value, json};

const INGEST: &str = "guarded-ingest";
const MODEL: &str = "/api/v1/releases/default/qwq-model";

struct Reply {
    status: u16,
    location: Option<String>,
    cookie: Option<String>,
    refresh: Option<String>,
    body: String,
}

impl Reply {
    fn json(&self) -> Value {
        serde_json::from_str(&self.body).unwrap_or_else(|e| panic!("{e}: {}", self.body))
    }
}

struct Http {
    client: Client<HttpConnector, Full<Bytes>>,
    base: String,
}

/// How a request authenticates.
enum As<'a> {
    Nobody,
    Bearer(&'a str),
    /// Cookie and CSRF token of a session.
    Session(&'a str, &'a str),
    /// A session's cookie on a request htmx sends.
    Htmx(&'a str),
}

impl Http {
    async fn send(&self, method: &str, path: &str, who: As<'_>, content_type: &str, body: String) -> Reply {
        let mut request = hyper::Request::builder()
            .method(method)
            .uri(format!("{}{path}", self.base));
        match who {
            As::Nobody => {}
            As::Bearer(token) => request = request.header("authorization", format!("Bearer {token}")),
            As::Session(cookie, csrf) => request = request.header("cookie", cookie).header("x-csrf-token", csrf),
            As::Htmx(cookie) => request = request.header("cookie", cookie).header("hx-request", "true"),
        }
        if !content_type.is_empty() {
            request = request.header("content-type", content_type);
        }
        let request = request.body(Full::new(Bytes::from(body))).unwrap();
        let response = tokio::time::timeout(Duration::from_secs(30), self.client.request(request))
            .await
            .unwrap_or_else(|_| panic!("{method} {path} timed out"))
            .unwrap();
        let header = |name: &str| {
            response
                .headers()
                .get(name)
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned)
        };
        let (status, location, cookie, refresh) = (
            response.status().as_u16(),
            header("location"),
            header("set-cookie"),
            header("hx-refresh"),
        );
        let bytes = response.into_body().collect().await.unwrap().to_bytes();
        Reply {
            status,
            location,
            cookie,
            refresh,
            body: String::from_utf8_lossy(&bytes).into_owned(),
        }
    }

    async fn get(&self, path: &str) -> Reply {
        self.send("GET", path, As::Nobody, "", String::new()).await
    }

    async fn get_as(&self, path: &str, cookie: &str) -> Reply {
        self.send("GET", path, As::Session(cookie, ""), "", String::new()).await
    }

    async fn post_json(&self, path: &str, who: As<'_>, body: Value) -> Reply {
        self.send("POST", path, who, "application/json", body.to_string()).await
    }

    async fn post_form(&self, path: &str, cookie: &str, fields: &[(&str, &str)]) -> Reply {
        let body = fields
            .iter()
            .map(|(k, v)| format!("{}={}", encode(k), encode(v)))
            .collect::<Vec<_>>()
            .join("&");
        self.send(
            "POST",
            path,
            As::Session(cookie, ""),
            "application/x-www-form-urlencoded",
            body,
        )
        .await
    }

    /// Logs in; returns the cookie and the CSRF token of the session.
    async fn login(&self, actor: &str) -> (String, String) {
        let reply = self
            .post_form(
                "/login",
                "",
                &[("actor", actor), ("token", LOGIN), ("next", "/releases")],
            )
            .await;
        assert_eq!(reply.status, 303, "{}", reply.body);
        let cookie = reply.cookie.unwrap().split(';').next().unwrap().to_owned();
        let page = self.get_as("/releases/default/qwq-model", &cookie).await;
        let csrf = extract(&page.body, "name=\"csrf\" value=\"", "\"").expect("csrf field");
        (cookie, csrf)
    }
}

async fn dashboard(name: &str) -> (dashboard::Dashboard, Http, std::path::PathBuf) {
    let dir = temp_dir(name);
    let config = dir.join("config");
    std::fs::write(
        config.join("model.yaml"),
        MODEL_YAML.replace("qwq-32b-canary", "qwq-32b-v2"),
    )
    .unwrap();
    let db = dir.join("switchyard.db");
    let dashboard = dashboard::start(dashboard::args::Args::parse_from([
        "dashboard",
        "--listen",
        "127.0.0.1:0",
        "--db",
        db.to_str().unwrap(),
        "--dir",
        config.to_str().unwrap(),
        "--login-token",
        LOGIN,
        "--ingest-token",
        INGEST,
    ]))
    .await
    .unwrap();
    let addr: SocketAddr = dashboard.addr;
    let http = Http {
        client: Client::builder(TokioExecutor::new()).build_http(),
        base: format!("http://{addr}"),
    };
    (dashboard, http, config)
}

fn yaml(path: &Path) -> Value {
    serde_saphyr::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

fn time(second: i64) -> Time {
    Time(k8s_openapi::jiff::Timestamp::from_second(second).unwrap())
}

fn event(second: i64, from: u32, to: u32, phase: Phase, reason: &str) -> ReleaseEvent {
    ReleaseEvent {
        time: time(second),
        from_percent: from,
        to_percent: to,
        phase,
        actor: "controller".into(),
        reason: reason.into(),
    }
}

fn history_kinds(reply: &Reply) -> Vec<String> {
    reply.json()["history"]
        .as_array()
        .unwrap()
        .iter()
        .map(|h| h["kind"].as_str().unwrap().to_owned())
        .collect()
}

#[tokio::test]
async fn the_api_starts_steers_and_records_a_guarded_release() {
    let (dashboard, http, config) = dashboard("guarded-api").await;
    let start = |body: Value| {
        let http = &http;
        async move {
            http.post_json(&format!("{MODEL}/guarded"), As::Bearer(LOGIN), body)
                .await
        }
    };
    let good = json!({"name": "qwq-v2", "canary": "qwq-32b-v2", "hold": "30s", "steps": [5, 50, 100],
        "minRequests": 10, "limits": {"maxTtftP90Ratio": 1.3}, "reason": "ship v2", "actor": "ci"});

    // Who may start: the login token as a bearer, not the ingest token, not nobody.
    let path = format!("{MODEL}/guarded");
    assert_eq!(http.post_json(&path, As::Nobody, good.clone()).await.status, 401);
    assert_eq!(
        http.post_json(&path, As::Bearer(INGEST), good.clone()).await.status,
        401
    );

    // 400 with every bad field named.
    let bad = start(
        json!({"canary": "qwq-32b", "stable": "qwq-32b", "steps": [50, 10], "hold": "soon",
        "limits": {"maxErrorRateIncrease": -1.0}, "reason": ""}),
    )
    .await;
    assert_eq!(bad.status, 400, "{}", bad.body);
    let fields = bad.json()["fields"].clone();
    for field in ["canary", "steps", "hold", "limits.maxErrorRateIncrease", "reason"] {
        assert!(fields.get(field).is_some(), "{field} missing from {fields}");
    }
    let unknown_stable = start(json!({"canary": "qwq-32b-v2", "stable": "nope", "reason": "x"})).await;
    assert_eq!(unknown_stable.status, 400);
    assert!(
        unknown_stable.json()["fields"]["stable"]
            .as_str()
            .unwrap()
            .contains("not a target")
    );
    assert_eq!(
        start(json!({"canary": 5})).await.status,
        400,
        "a malformed body is a 400"
    );
    assert!(std::fs::read_dir(&config).unwrap().count() == 1, "nothing was written");

    // Start: 201, a file of its own with control Run and no status.
    let created = start(good.clone()).await;
    assert_eq!(created.status, 201, "{}", created.body);
    let release = created.json()["release"].clone();
    assert_eq!(
        (release["name"].as_str(), release["phase"].as_str()),
        (Some("qwq-v2"), Some("Pending"))
    );
    let file = config.join("canaryrelease-qwq-v2.yaml");
    let doc = yaml(&file);
    assert_eq!(doc["kind"], "CanaryRelease");
    assert_eq!(doc["spec"]["modelRef"], "qwq-model");
    assert_eq!(doc["spec"]["stable"], "qwq-32b");
    assert_eq!(doc["spec"]["control"], "Run");
    assert_eq!(doc["spec"]["steps"], json!([5, 50, 100]));
    assert!(doc.get("status").is_none(), "{doc}");

    // One running release per model, and the manual weights are locked meanwhile.
    let again = start(json!({"canary": "qwq-32b-v2", "reason": "twice"})).await;
    assert_eq!(again.status, 409, "{}", again.body);
    let manual = http
        .post_json(
            MODEL,
            As::Bearer(LOGIN),
            json!({"targets": [{"name": "qwq-32b", "weight": 50}, {"name": "qwq-32b-v2", "weight": 50}],
                "reason": "by hand"}),
        )
        .await;
    assert_eq!(manual.status, 409, "{}", manual.body);
    let list = http.get("/releases").await;
    assert!(list.body.contains("in release · Pending 0 %"), "{}", list.body);

    // The controller reports (a sidecar written here): progressing at 5 %, with its steps.
    let status = CanaryReleaseStatus {
        phase: Phase::Progressing,
        step: Some(0),
        canary_percent: 5,
        step_started_at: Some(time(1_800_000_060)),
        stable: Some(TargetObservation {
            requests: 190,
            ttft_p90_ms: Some(120.0),
            error_rate: 0.0,
            shed_rate: 0.0,
        }),
        canary: Some(TargetObservation {
            requests: 11,
            ttft_p90_ms: Some(130.0),
            error_rate: 0.0,
            shed_rate: 0.0,
        }),
        message: "holding 5 % for 30s".into(),
        history: vec![event(
            1_800_000_060,
            0,
            5,
            Phase::Progressing,
            "step 1 of 3: canary to 5 %",
        )],
        conditions: Vec::new(),
    };
    api::dir::write_status(&config, "default", "qwq-v2", &status).unwrap();
    let guarded = http.get(&format!("{MODEL}/guarded")).await;
    assert_eq!(guarded.status, 200);
    let body = guarded.json();
    assert_eq!(body["active"]["name"], "qwq-v2");
    assert_eq!(body["active"]["phase"], "Progressing");
    assert_eq!(body["active"]["canary_percent"], 5);
    assert_eq!(body["active"]["status"]["canary"]["requests"], 11);
    let step = body["history"]
        .as_array()
        .unwrap()
        .iter()
        .find(|h| h["kind"] == "step")
        .expect("the controller's step is in the history")
        .clone();
    assert_eq!(step["reason"], "step 1 of 3: canary to 5 %");
    assert_eq!(step["actor"], "controller");
    assert_eq!(step["guarded_release"], "qwq-v2");
    assert_eq!(
        step["after"],
        r#"[{"name":"qwq-32b","weight":95},{"name":"qwq-32b-v2","weight":5}]"#
    );
    // Reading again copies nothing twice.
    let kinds = history_kinds(&http.get(&format!("{MODEL}/guarded")).await);
    assert_eq!(kinds, ["step", "start"]);

    // Pause from a session (CSRF header), resume and promote with the bearer token.
    let (cookie, csrf) = http.login("ana").await;
    let act = |action: &'static str| format!("{MODEL}/guarded/qwq-v2/{action}");
    assert_eq!(
        http.post_json(&act("pause"), As::Session(&cookie, "forged"), json!({}))
            .await
            .status,
        403
    );
    let paused = http
        .post_json(
            &act("pause"),
            As::Session(&cookie, &csrf),
            json!({"reason": "look at the TTFT"}),
        )
        .await;
    assert_eq!(paused.status, 200, "{}", paused.body);
    assert_eq!(paused.json()["changed"], true);
    assert_eq!(yaml(&file)["spec"]["control"], "Pause");
    let twice = http.post_json(&act("pause"), As::Bearer(LOGIN), json!({})).await;
    assert_eq!(
        twice.json()["changed"],
        false,
        "pausing a paused release changes nothing"
    );
    let resumed = http
        .send("POST", &act("resume"), As::Bearer(LOGIN), "", String::new())
        .await;
    assert_eq!(resumed.status, 200, "{}", resumed.body);
    assert_eq!(yaml(&file)["spec"]["control"], "Run");
    assert_eq!(
        http.post_json(&act("promote"), As::Bearer(LOGIN), json!({}))
            .await
            .status,
        200
    );
    assert_eq!(yaml(&file)["spec"]["control"], "Promote");
    let refused = http.post_json(&act("pause"), As::Bearer(LOGIN), json!({})).await;
    assert_eq!(refused.status, 409, "a promotion can only be aborted: {}", refused.body);
    assert_eq!(
        http.post_json(&act("abort"), As::Bearer(LOGIN), json!({"actor": "ci"}))
            .await
            .status,
        200
    );
    assert_eq!(yaml(&file)["spec"]["control"], "Abort");
    assert_eq!(
        http.post_json(&act("explode"), As::Bearer(LOGIN), json!({}))
            .await
            .status,
        400
    );
    let missing = format!("{MODEL}/guarded/nope/pause");
    assert_eq!(http.post_json(&missing, As::Bearer(LOGIN), json!({})).await.status, 404);

    // The controller ends it: terminal, so every action is a 409 and the weights are free again.
    let mut ended = status.clone();
    ended.phase = Phase::Aborted;
    ended.canary_percent = 0;
    ended.history.push(event(
        1_800_000_090,
        5,
        0,
        Phase::Aborted,
        "aborted by ci: canary back to 0 %",
    ));
    api::dir::write_status(&config, "default", "qwq-v2", &ended).unwrap();
    assert_eq!(
        http.post_json(&act("resume"), As::Bearer(LOGIN), json!({}))
            .await
            .status,
        409
    );
    assert_eq!(
        http.post_json(&act("abort"), As::Bearer(LOGIN), json!({})).await.status,
        409
    );
    let after = http.get(&format!("{MODEL}/guarded")).await.json();
    assert_eq!(after["active"], Value::Null);
    assert_eq!(after["releases"][0]["phase"], "Aborted");
    let history = after["history"].as_array().unwrap();
    let kinds: Vec<&str> = history.iter().map(|h| h["kind"].as_str().unwrap()).collect();
    for kind in ["start", "step", "pause", "resume", "promote", "abort", "aborted"] {
        assert!(kinds.contains(&kind), "{kind} missing from {kinds:?}");
    }
    let pause = history.iter().find(|h| h["kind"] == "pause").unwrap();
    assert_eq!(
        (pause["actor"].as_str(), pause["reason"].as_str()),
        (Some("ana"), Some("look at the TTFT"))
    );
    assert!(history.iter().any(|h| h["kind"] == "abort" && h["actor"] == "ci"));
    let manual = http
        .post_json(
            MODEL,
            As::Bearer(LOGIN),
            json!({"targets": [{"name": "qwq-32b", "weight": 100}, {"name": "qwq-32b-v2", "weight": 0}],
                "reason": "by hand again"}),
        )
        .await;
    assert_eq!(manual.status, 200, "{}", manual.body);

    // The page shows the finished release and the controller's reasons.
    let page = http.get("/releases/default/qwq-model").await.body;
    assert!(
        page.contains("id=\"guarded-past\"") && page.contains("Aborted"),
        "{page}"
    );
    assert!(page.contains("aborted by ci: canary back to 0 %") && page.contains("step 1 of 3: canary to 5 %"));
    // A new release may start now, with a new name; a taken name is a conflict.
    let reused = start(good).await;
    assert_eq!(reused.status, 409, "{}", reused.body);
    let fresh = start(json!({"canary": "qwq-32b-v2", "reason": "second try"})).await;
    assert_eq!(fresh.status, 201, "{}", fresh.body);
    dashboard.stop().await;
}

#[tokio::test]
async fn the_card_starts_and_steers_a_release_through_forms() {
    let (dashboard, http, config) = dashboard("guarded-forms").await;
    let page = http.get("/releases/default/qwq-model").await.body;
    assert!(
        page.contains("Guarded release") && page.contains("Log in</a> to start one"),
        "{page}"
    );
    let (cookie, csrf) = http.login("ana").await;
    let page = http.get_as("/releases/default/qwq-model", &cookie).await.body;
    assert!(page.contains("id=\"guarded-start\""));
    assert!(
        page.contains("value=\"1, 5, 25, 50, 100\"") && page.contains("value=\"60s\""),
        "defaults"
    );
    let form = |steps: &'static str, hold: &'static str, reason: &'static str| {
        vec![
            ("csrf", csrf.clone()),
            ("canary", "qwq-32b-v2".to_owned()),
            ("canary_new", String::new()),
            ("stable", "qwq-32b".to_owned()),
            ("steps", steps.to_owned()),
            ("hold", hold.to_owned()),
            ("minRequests", "20".to_owned()),
            ("maxTtftP90Ratio", "1.5".to_owned()),
            ("maxErrorRateIncrease", "0.02".to_owned()),
            ("maxShedRateIncrease", "0.05".to_owned()),
            ("name", String::new()),
            ("reason", reason.to_owned()),
        ]
    };
    let post = |fields: Vec<(&'static str, String)>, path: &'static str| {
        let (http, cookie) = (&http, cookie.clone());
        async move {
            let fields: Vec<(&str, &str)> = fields.iter().map(|(k, v)| (*k, v.as_str())).collect();
            http.post_form(path, &cookie, &fields).await
        }
    };
    const START: &str = "/releases/default/qwq-model/guarded";
    let invalid = post(form("1, five", "forever", ""), START).await;
    assert_eq!(invalid.status, 422, "{}", invalid.body);
    assert!(
        invalid.body.contains("whole percents separated by commas"),
        "{}",
        invalid.body
    );
    assert!(invalid.body.contains("is not a duration") && invalid.body.contains("say why"));
    assert!(
        invalid.body.contains("value=\"1, five\""),
        "the form keeps what was typed"
    );
    let order = post(form("50, 10", "30s", "x"), START).await;
    assert_eq!(order.status, 422);
    assert!(order.body.contains("step 2: must be larger"), "{}", order.body);

    let started = post(form("1, 5, 25, 50, 100", "60s", "ship v2"), START).await;
    assert_eq!(started.status, 303, "{}", started.body);
    let page = http.get_as(started.location.as_deref().unwrap(), &cookie).await.body;
    assert!(page.contains("Guarded release started"));
    assert!(
        page.contains("id=\"guarded-phase\">Pending") && page.contains("id=\"guarded-percent\">0 %"),
        "{page}"
    );
    assert!(page.contains("id=\"weights-locked\"") && page.contains("<fieldset disabled>"));
    assert!(
        page.contains("hx-trigger=\"every 2s\""),
        "a running release refreshes itself"
    );
    let name = extract(&page, "id=\"guarded-name\">", "<").unwrap();
    assert!(name.starts_with("qwq-32b-v2-"), "{name}");

    // The buttons, as htmx posts them: the card comes back in place.
    let action = |what: &str| format!("/releases/default/qwq-model/guarded/{name}/{what}");
    let htmx = |path: String| {
        let (http, cookie, csrf) = (&http, cookie.clone(), csrf.clone());
        async move {
            let mut reply = http
                .send(
                    "POST",
                    &path,
                    As::Htmx(&cookie),
                    "application/x-www-form-urlencoded",
                    format!("csrf={}", encode(&csrf)),
                )
                .await;
            reply.body = reply.body.replace('\n', " ");
            reply
        }
    };
    let forged = http.post_form(&action("pause"), &cookie, &[("csrf", "nope")]).await;
    assert_eq!(forged.status, 403);
    let paused = htmx(action("pause")).await;
    assert_eq!(paused.status, 200, "{}", paused.body);
    assert!(paused.body.contains("pause requested") && paused.body.contains("id=\"guarded-resume\""));
    let file = config.join(format!("canaryrelease-{name}.yaml"));
    assert_eq!(yaml(&file)["spec"]["control"], "Pause");
    // Plain form posts (no htmx) go back to the page.
    let resumed = http.post_form(&action("resume"), &cookie, &[("csrf", &csrf)]).await;
    assert_eq!(resumed.status, 303);
    assert_eq!(yaml(&file)["spec"]["control"], "Run");
    let live = http.get_as(&format!("{START}?live=1"), &cookie).await;
    assert_eq!(live.status, 200);
    assert!(live.body.contains("id=\"guarded-pause\"") && live.body.contains("hx-swap-oob"));
    // A pause on an aborting release is refused inside the card.
    let _ = htmx(action("abort")).await;
    assert_eq!(yaml(&file)["spec"]["control"], "Abort");
    let refused = htmx(action("resume")).await;
    assert_eq!(refused.status, 200);
    assert!(refused.body.contains("id=\"guarded-flash\"") && refused.body.contains("being aborted"));
    let history = http.get_as("/releases/default/qwq-model", &cookie).await.body;
    for kind in ["start", "pause", "resume", "abort"] {
        assert!(
            history.contains(&format!(">{kind}</span>")),
            "{kind} missing from the history"
        );
    }

    // Once the controller reports the end, a live poll reloads the whole page (the weight form unlocks).
    api::dir::write_status(
        &config,
        "default",
        &name,
        &CanaryReleaseStatus {
            phase: Phase::Aborted,
            ..CanaryReleaseStatus::default()
        },
    )
    .unwrap();
    let live = http
        .send("GET", &format!("{START}?live=1"), As::Nobody, "", String::new())
        .await;
    assert_eq!(live.status, 200);
    assert_eq!(live.refresh.as_deref(), Some("true"));
    let page = http.get_as("/releases/default/qwq-model", &cookie).await.body;
    assert!(!page.contains("<fieldset disabled>") && page.contains("id=\"guarded-start\""));
    dashboard.stop().await;
}
