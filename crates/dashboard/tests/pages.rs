//! Every page and API route through `oneshot`: statuses (200, 303, 400, 401, 403, 404, 409, 422), filters, keyset
//! pagination, exports, escaping, and the release flow on a temp directory of YAML.

mod common;

use axum::{
    body::Body,
    http::{Request, StatusCode, header},
};
use common::*;
use dashboard::time::{format_ms, now_ms};

async fn seeded(name: &str) -> TestApp {
    let app = test_app(name).await;
    let now = now_ms() as u64;
    let lines: Vec<String> = (0..6)
        .map(|i| {
            let (target, pod) = if i % 3 == 0 {
                ("qwq-32b-canary", "pod-1")
            } else {
                ("qwq-32b", "pod-0")
            };
            let outcome = if i == 5 { "Shed429" } else { "Routed" };
            decision_line(&format!("req-{i}"), now - 1000 + i, target, pod, outcome)
        })
        .chain([
            sample_line("pod-0", now_ms() - 2000, 0.5),
            sample_line("pod-0", now_ms() - 1000, 0.75),
        ])
        .collect();
    let reply = app.ingest(Some(INGEST), lines.join("\n")).await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.body);
    assert_eq!(reply.body, r#"{"decisions":6,"samples":2}"#);
    app
}

#[tokio::test]
async fn ingest_needs_its_own_token_and_well_formed_lines() {
    let app = test_app("ingest").await;
    let line = decision_line("r", 1, "qwq-32b", "pod-0", "Routed");
    assert_eq!(app.ingest(None, line.clone()).await.status, StatusCode::UNAUTHORIZED);
    assert_eq!(
        app.ingest(Some(LOGIN), line.clone()).await.status,
        StatusCode::UNAUTHORIZED
    );
    let bad = app.ingest(Some(INGEST), format!("{line}\nnot json")).await;
    assert_eq!(bad.status, StatusCode::UNPROCESSABLE_ENTITY);
    assert!(bad.body.contains("line 2"), "{}", bad.body);
    // The batch is all-or-nothing.
    assert!(app.get("/api/v1/decisions").await.body.contains(r#""decisions":[]"#));
    assert_eq!(app.ingest(Some(INGEST), line).await.status, StatusCode::OK);
    let metrics = app.get("/metrics").await;
    assert!(metrics.body.contains("switchyard_dashboard_ingested_decisions_total 1"));
    assert!(metrics.body.contains("switchyard_dashboard_ingest_rejected_total 3"));
}

#[tokio::test]
async fn the_audit_filters_paginates_and_exports() {
    let app = seeded("audit").await;
    let page = app.get("/decisions").await;
    assert_eq!(page.status, StatusCode::OK);
    for i in 0..6 {
        assert!(page.body.contains(&format!("req-{i}")), "req-{i} missing");
    }
    let canary = app.get("/decisions?target_model=qwq-32b-canary").await.body;
    assert!(canary.contains("req-0") && canary.contains("req-3") && !canary.contains("req-1"));
    let shed = app.get("/decisions?outcome=Shed429&criticality=Critical").await.body;
    assert!(shed.contains("req-5") && !shed.contains("req-4"));
    let by_pod = app.get("/decisions?pod=default%2Fpod-1").await.body;
    assert!(by_pod.contains("req-3") && !by_pod.contains("req-2"));
    let by_id = app.get("/decisions?q=req-4").await.body;
    assert!(by_id.contains("req-4") && !by_id.contains("req-3"));
    let future = app.get(&format!("/decisions?from={}", now_ms() + 60_000)).await.body;
    assert!(future.contains("No decisions match"));
    assert_eq!(
        app.get("/decisions?outcome=Maybe").await.status,
        StatusCode::BAD_REQUEST
    );
    assert_eq!(
        app.get("/decisions?from=yesterday").await.status,
        StatusCode::BAD_REQUEST
    );
    assert_eq!(
        app.get("/api/v1/decisions?limit=0").await.status,
        StatusCode::BAD_REQUEST
    );

    // Keyset pages: newest first, no overlap, the last page has no `next`.
    let first: serde_json::Value = serde_json::from_str(&app.get("/api/v1/decisions?limit=4").await.body).unwrap();
    let ids: Vec<&str> = first["decisions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["request_id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, ["req-5", "req-4", "req-3", "req-2"]);
    let next = first["next"].as_str().unwrap();
    let second: serde_json::Value =
        serde_json::from_str(&app.get(&format!("/api/v1/decisions?limit=4&after={next}")).await.body).unwrap();
    let ids: Vec<&str> = second["decisions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["request_id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, ["req-1", "req-0"]);
    assert!(second.get("next").is_none());
    assert_eq!(first["decisions"][0]["candidates"].as_array().unwrap().len(), 2);
    let html = app.get("/decisions?limit=4").await.body;
    assert!(html.contains("id=\"older\""), "a full page links to older rows");

    let csv = app.get("/api/v1/export/decisions.csv?target_model=qwq-32b").await;
    assert_eq!(csv.status, StatusCode::OK);
    assert_eq!(csv.headers[header::CONTENT_TYPE], "text/csv; charset=utf-8");
    let lines: Vec<&str> = csv.body.lines().collect();
    assert!(lines[0].starts_with("received_at,request_id,model"));
    assert_eq!(lines.len(), 1 + 4);
    let json = app.get("/api/v1/export/decisions.json").await;
    assert_eq!(json.body.lines().count(), 6);
    let d: serde_json::Value = serde_json::from_str(json.body.lines().next().unwrap()).unwrap();
    assert_eq!(d["request_id"], "req-5");
}

#[tokio::test]
async fn a_decision_page_explains_the_winner() {
    let app = seeded("detail").await;
    let page = app.get("/decisions/req-1").await;
    assert_eq!(page.status, StatusCode::OK);
    assert!(
        page.body
            .contains("default/pod-0 scored 1.75 against 0.10 for the runner-up default/other"),
        "{}",
        page.body
    );
    assert!(page.body.contains("largest lead was queue (+1.00 before weighting)"));
    assert!(page.body.contains("kv-cache") && page.body.contains("winner"));
    // Each candidate says which prefix index scored it; a record without the field reads as approximate.
    assert!(
        page.body.contains(r#"3 <small class="muted">precise</small>"#),
        "{}",
        page.body
    );
    assert!(
        page.body.contains(r#"0 <small class="muted">approximate</small>"#),
        "{}",
        page.body
    );
    let api = app.get("/api/v1/decisions/req-1").await;
    assert_eq!(api.status, StatusCode::OK);
    let d: audit::Record = serde_json::from_str(&api.body).unwrap();
    assert_eq!(d.candidates[0].prefix_mode, audit::PrefixMode::Precise);
    assert_eq!(d.candidates[0].scores.get("kv-cache"), Some(&0.75));
    assert_eq!(app.get("/decisions/nope").await.status, StatusCode::NOT_FOUND);
    let missing = app.get("/api/v1/decisions/nope").await;
    assert_eq!(missing.status, StatusCode::NOT_FOUND);
    assert_eq!(missing.body, r#"{"error":"decision \"nope\" not found"}"#);
}

#[tokio::test]
async fn user_strings_are_escaped_everywhere() {
    let app = test_app("escape").await;
    let evil = "<script>alert(1)</script>";
    let line = decision_line(evil, now_ms() as u64, "<b>t</b>", "pod-0", "Routed");
    assert_eq!(app.ingest(Some(INGEST), line).await.status, StatusCode::OK);
    for uri in ["/decisions", "/decisions/%3Cscript%3Ealert(1)%3C%2Fscript%3E", "/"] {
        let page = app.get(uri).await;
        assert_eq!(page.status, StatusCode::OK, "{uri}");
        assert!(!page.body.contains("<script>alert"), "{uri} is not escaped");
        assert!(!page.body.contains("<b>t</b>"), "{uri} is not escaped");
    }
    assert!(
        app.get("/decisions").await.body.contains("&#60;script&#62;")
            || app.get("/decisions").await.body.contains("&lt;script&gt;")
    );
    let login = app
        .post_form("/login", None, &[("actor", "<i>x</i>"), ("token", "wrong")])
        .await;
    assert_eq!(login.status, StatusCode::UNAUTHORIZED);
    assert!(!login.body.contains("<i>x</i>"));
}

#[tokio::test]
async fn pods_overview_and_samples() {
    let app = seeded("pods").await;
    let overview = app.get("/").await;
    assert_eq!(overview.status, StatusCode::OK);
    assert!(overview.body.contains("reasoning-pool") && overview.body.contains("default/pod-0"));
    assert!(overview.body.contains("qwq-32b-canary"));
    let partial = app.get("/partials/overview").await;
    assert_eq!(partial.status, StatusCode::OK);
    assert!(!partial.body.contains("<html"));
    assert!(app.get("/pods").await.body.contains("75.0 %"));
    let pod = app.get("/pods/default/pod-0").await;
    assert_eq!(pod.status, StatusCode::OK);
    assert!(pod.body.contains("/api/v1/pods/default/pod-0/samples") && pod.body.contains("req-1"));
    assert_eq!(app.get("/pods/default/ghost").await.status, StatusCode::NOT_FOUND);
    let series: serde_json::Value =
        serde_json::from_str(&app.get("/api/v1/pods/default/pod-0/samples").await.body).unwrap();
    assert_eq!(series["kv_usage"], serde_json::json!([0.5, 0.75]));
    assert_eq!(series["t"].as_array().unwrap().len(), 2);
    assert_eq!(
        app.get("/api/v1/pods/default/pod-0/samples?from=10&to=5").await.status,
        StatusCode::BAD_REQUEST
    );
}

#[tokio::test]
async fn health_metrics_static_and_unknown_routes() {
    let app = test_app("misc").await;
    assert_eq!(app.get("/healthz").await.status, StatusCode::OK);
    assert_eq!(app.get("/readyz").await.status, StatusCode::OK);
    let js = app.get("/static/htmx.min.js").await;
    assert_eq!(js.status, StatusCode::OK);
    assert_eq!(js.headers[header::CONTENT_TYPE], "text/javascript; charset=utf-8");
    assert_eq!(app.get("/static/uPlot.iife.min.js").await.status, StatusCode::OK);
    assert_eq!(app.get("/static/app.css").await.status, StatusCode::OK);
    assert_eq!(app.get("/static/../Cargo.toml").await.status, StatusCode::NOT_FOUND);
    let missing = app.get("/nowhere").await;
    assert_eq!(missing.status, StatusCode::NOT_FOUND);
    assert!(missing.body.contains("404"));
    let page = app.get("/login").await;
    assert_eq!(page.status, StatusCode::OK);
    assert!(page.headers.contains_key(header::CONTENT_SECURITY_POLICY));
    assert_eq!(page.headers[header::X_FRAME_OPTIONS], "DENY");
}

#[tokio::test]
async fn releases_need_login_and_csrf_and_validate_weights() {
    let app = test_app("releases").await;
    let list = app.get("/releases").await;
    assert_eq!(list.status, StatusCode::OK);
    assert!(list.body.contains("qwq") && list.body.contains("100.0 %"));
    let detail = app.get("/releases/default/qwq-model").await;
    assert_eq!(detail.status, StatusCode::OK);
    assert!(detail.body.contains("Log in to change weights"));
    assert_eq!(app.get("/releases/default/nope").await.status, StatusCode::NOT_FOUND);

    let form = |csrf: &str| {
        vec![
            ("csrf", csrf.to_owned()),
            (
                "expected",
                r#"[{"name":"qwq-32b","weight":100},{"name":"qwq-32b-canary","weight":0}]"#.to_owned(),
            ),
            ("name_0", "qwq-32b".to_owned()),
            ("weight_0", "90".to_owned()),
            ("name_1", "qwq-32b-canary".to_owned()),
            ("weight_1", "10".to_owned()),
            ("reason", "canary <10 %>".to_owned()),
        ]
    };
    let as_refs = |f: &Vec<(&'static str, String)>| f.iter().map(|(k, v)| (*k, v.clone())).collect::<Vec<_>>();
    let post = |cookie: Option<String>, fields: Vec<(&'static str, String)>| {
        let app = &app;
        async move {
            let fields: Vec<(&str, &str)> = fields.iter().map(|(k, v)| (*k, v.as_str())).collect();
            app.post_form("/releases/default/qwq-model", cookie.as_deref(), &fields)
                .await
        }
    };
    // 401 without a session.
    assert_eq!(post(None, as_refs(&form("x"))).await.status, StatusCode::UNAUTHORIZED);
    // Wrong login token: 401 and no cookie; an empty name: 422.
    let wrong = app
        .post_form("/login", None, &[("actor", "ana"), ("token", "guess")])
        .await;
    assert_eq!(wrong.status, StatusCode::UNAUTHORIZED);
    assert!(!wrong.headers.contains_key(header::SET_COOKIE));
    let nameless = app.post_form("/login", None, &[("actor", " "), ("token", LOGIN)]).await;
    assert_eq!(nameless.status, StatusCode::UNPROCESSABLE_ENTITY);

    let (cookie, csrf) = app.login("ana").await;
    // 403 with a session but without the right CSRF token.
    assert_eq!(
        post(Some(cookie.clone()), as_refs(&form("forged"))).await.status,
        StatusCode::FORBIDDEN
    );
    assert_eq!(
        post(Some(cookie.clone()), as_refs(&form(""))).await.status,
        StatusCode::FORBIDDEN
    );
    // 422 with inline errors for invalid weights; nothing is written.
    let mut bad = form(&csrf);
    bad[3].1 = "ninety".into();
    let reply = post(Some(cookie.clone()), bad).await;
    assert_eq!(reply.status, StatusCode::UNPROCESSABLE_ENTITY);
    assert!(reply.body.contains("must be a whole number"), "{}", reply.body);
    assert!(reply.body.contains("value=\"ninety\""), "the form keeps what was typed");
    let mut zero = form(&csrf);
    zero[3].1 = "0".into();
    zero[5].1 = "0".into();
    let reply = post(Some(cookie.clone()), zero).await;
    assert_eq!(reply.status, StatusCode::UNPROCESSABLE_ENTITY);
    assert!(reply.body.contains("at least one weight must be greater than 0"));
    assert_eq!(
        std::fs::read_to_string(app.dir.join("config/model.yaml")).unwrap(),
        MODEL_YAML
    );

    // Apply: 303 back to the page, the file holds 90/10, the history has the row.
    let reply = post(Some(cookie.clone()), form(&csrf)).await;
    assert_eq!(reply.status, StatusCode::SEE_OTHER, "{}", reply.body);
    let yaml = std::fs::read_to_string(app.dir.join("config/model.yaml")).unwrap();
    assert!(yaml.contains("weight: 90") && yaml.contains("weight: 10"), "{yaml}");
    let page = app
        .get_with_cookie("/releases/default/qwq-model?applied=1", &cookie)
        .await
        .body;
    assert!(page.contains("Applied."));
    assert!(page.contains("qwq-32b 100 · qwq-32b-canary 0") && page.contains("qwq-32b 90 · qwq-32b-canary 10"));
    assert!(
        page.contains("canary &#60;10 %&#62;") || page.contains("canary &lt;10 %&gt;"),
        "{page}"
    );
    assert!(page.contains(">ana<"));

    // The same stale form again: 409, the page shows the current weights.
    let reply = post(Some(cookie.clone()), form(&csrf)).await;
    assert_eq!(reply.status, StatusCode::CONFLICT);
    assert!(reply.body.contains("Someone changed this model"));

    // Roll back release 1: back to 100/0, recorded as a rollback.
    let history: serde_json::Value =
        serde_json::from_str(&app.get("/api/v1/releases/default/qwq-model").await.body).unwrap();
    let id = history["history"][0]["id"].as_i64().unwrap();
    let uri = format!("/releases/default/qwq-model/rollback/{id}");
    assert_eq!(
        app.post_form(&uri, Some(&cookie), &[("csrf", "bad")]).await.status,
        StatusCode::FORBIDDEN
    );
    assert_eq!(
        app.post_form(&uri, None, &[("csrf", &csrf)]).await.status,
        StatusCode::UNAUTHORIZED
    );
    let reply = app.post_form(&uri, Some(&cookie), &[("csrf", &csrf)]).await;
    assert_eq!(reply.status, StatusCode::SEE_OTHER);
    assert_eq!(
        app.post_form(
            "/releases/default/qwq-model/rollback/999",
            Some(&cookie),
            &[("csrf", &csrf)]
        )
        .await
        .status,
        StatusCode::NOT_FOUND
    );
    let api: serde_json::Value =
        serde_json::from_str(&app.get("/api/v1/releases/default/qwq-model").await.body).unwrap();
    assert_eq!(api["model"]["shares"], serde_json::json!([100.0, 0.0]));
    assert_eq!(api["history"][0]["kind"], "rollback");
    assert_eq!(api["history"][0]["actor"], "ana");

    // Logout needs the CSRF token too, then the session is gone.
    assert_eq!(
        app.post_form("/logout", Some(&cookie), &[("csrf", "x")]).await.status,
        StatusCode::FORBIDDEN
    );
    assert_eq!(
        app.post_form("/logout", Some(&cookie), &[("csrf", &csrf)]).await.status,
        StatusCode::SEE_OTHER
    );
    assert_eq!(
        post(Some(cookie), as_refs(&form(&csrf))).await.status,
        StatusCode::UNAUTHORIZED
    );
}

#[tokio::test]
async fn the_session_cookie_is_http_only_and_strict() {
    let app = test_app("cookie").await;
    let reply = app
        .post_form(
            "/login",
            None,
            &[("actor", "ana"), ("token", LOGIN), ("next", "//evil.example")],
        )
        .await;
    assert_eq!(reply.status, StatusCode::SEE_OTHER);
    assert_eq!(reply.headers[header::LOCATION], "/", "off-site `next` is ignored");
    let cookie = reply.headers[header::SET_COOKIE].to_str().unwrap();
    assert!(
        cookie.contains("HttpOnly") && cookie.contains("SameSite=Strict"),
        "{cookie}"
    );
}

#[tokio::test]
async fn the_release_api_takes_the_login_token_as_bearer() {
    let app = test_app("api").await;
    let apply = |token: &str, body: &str| {
        Request::post("/api/v1/releases/default/qwq-model")
            .header(header::AUTHORIZATION, format!("Bearer {token}"))
            .header(header::CONTENT_TYPE, "application/json")
            .body(Body::from(body.to_owned()))
            .unwrap()
    };
    let good = r#"{"targets":[{"name":"qwq-32b","weight":50},{"name":"qwq-32b-canary","weight":50}],"reason":"half","actor":"ci"}"#;
    assert_eq!(app.send(apply(INGEST, good)).await.status, StatusCode::UNAUTHORIZED);
    let no_auth = Request::post("/api/v1/releases/default/qwq-model")
        .header(header::CONTENT_TYPE, "application/json")
        .body(Body::from(good))
        .unwrap();
    assert_eq!(app.send(no_auth).await.status, StatusCode::UNAUTHORIZED);
    let invalid = r#"{"targets":[{"name":"qwq-32b","weight":50},{"name":"qwq-32b-canary"}],"reason":"mixed"}"#;
    let reply = app.send(apply(LOGIN, invalid)).await;
    assert_eq!(reply.status, StatusCode::UNPROCESSABLE_ENTITY);
    assert!(reply.body.contains("every target"), "{}", reply.body);
    assert_eq!(
        app.send(apply(LOGIN, "{not json")).await.status,
        StatusCode::UNPROCESSABLE_ENTITY
    );
    let reply = app.send(apply(LOGIN, good)).await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.body);
    let list: serde_json::Value = serde_json::from_str(&app.get("/api/v1/releases").await.body).unwrap();
    assert_eq!(list[0]["shares"], serde_json::json!([50.0, 50.0]));
    assert_eq!(list[0]["model_name"], "qwq");
    let detail: serde_json::Value =
        serde_json::from_str(&app.get("/api/v1/releases/default/qwq-model").await.body).unwrap();
    assert_eq!(detail["history"][0]["actor"], "ci");
    assert_eq!(
        app.get("/api/v1/releases/default/none").await.status,
        StatusCode::NOT_FOUND
    );
}

#[tokio::test]
async fn mirrored_copies_have_a_badge_a_filter_and_a_link_to_their_original() {
    let app = seeded("mirrored").await;
    let now = now_ms() as u64;
    let line = mirror_line("req-1-mirror", "req-1", now, "qwq-32b-v2");
    assert_eq!(app.ingest(Some(INGEST), line).await.status, StatusCode::OK);

    let all = app.get("/decisions").await.body;
    assert!(all.contains("req-1-mirror") && all.contains("badge mirror"), "{all}");
    assert_eq!(all.matches("badge mirror").count(), 1, "only the copy has the badge");
    let only = app.get("/decisions?mirrored=only").await.body;
    assert!(only.contains("req-1-mirror") && !only.contains("req-2"));
    assert!(
        only.contains("<option value=\"only\" selected>"),
        "the filter keeps its value"
    );
    let exclude = app.get("/decisions?mirrored=exclude").await.body;
    assert!(!exclude.contains("req-1-mirror") && exclude.contains("req-2"));
    assert_eq!(
        app.get("/decisions?mirrored=maybe").await.status,
        StatusCode::BAD_REQUEST
    );

    let api: serde_json::Value = serde_json::from_str(&app.get("/api/v1/decisions?mirrored=only").await.body).unwrap();
    assert_eq!(api["decisions"].as_array().unwrap().len(), 1);
    assert_eq!(api["decisions"][0]["mirror_of"], "req-1");
    let api: serde_json::Value =
        serde_json::from_str(&app.get("/api/v1/decisions?mirrored=exclude").await.body).unwrap();
    assert_eq!(api["decisions"].as_array().unwrap().len(), 6);
    let csv = app.get("/api/v1/export/decisions.csv?mirrored=only").await.body;
    let lines: Vec<&str> = csv.lines().collect();
    assert!(lines[0].ends_with(",reason,mirror_of"), "{}", lines[0]);
    assert_eq!(lines.len(), 2);
    assert!(
        lines[1].starts_with(&format_ms(now as i64)) && lines[1].ends_with(",req-1"),
        "{}",
        lines[1]
    );
    let csv = app.get("/api/v1/export/decisions.csv?mirrored=exclude").await.body;
    assert_eq!(csv.lines().count(), 1 + 6);
    let ndjson = app.get("/api/v1/export/decisions.json?mirrored=only").await.body;
    assert_eq!(ndjson.lines().count(), 1);

    // The copy links to its original, the original lists its copy.
    let copy = app.get("/decisions/req-1-mirror").await.body;
    assert!(
        copy.contains("id=\"original\"") && copy.contains("href=\"/decisions/req-1\""),
        "{copy}"
    );
    let original = app.get("/decisions/req-1").await.body;
    assert!(original.contains("id=\"mirrors\"") && original.contains("/decisions/req-1-mirror"));
    assert!(!original.contains("id=\"original\""));
    // Page links keep the filter.
    let paged = app.get("/decisions?mirrored=exclude&limit=2").await.body;
    assert!(
        ["&amp;", "&#38;", "&"]
            .iter()
            .any(|amp| paged.contains(&format!("mirrored=exclude{amp}after="))),
        "{paged}"
    );
}

#[tokio::test]
async fn login_follows_only_same_origin_paths_whatever_their_encoding() {
    let app = test_app("login-next").await;
    let cases = [
        ("/\t/example.com", "/"),
        ("/\n/x", "/"),
        ("/\\example.com", "/"),
        ("//example.com", "/"),
        ("https://example.com/", "/"),
        ("/ space", "/"),
        ("/%09/example.com", "/%09/example.com"),
        (
            "/decisions?model=qwq&outcome=routed",
            "/decisions?model=qwq&outcome=routed",
        ),
    ];
    for (next, location) in cases {
        let reply = app
            .post_form("/login", None, &[("actor", "ana"), ("token", LOGIN), ("next", next)])
            .await;
        assert_eq!(reply.status, StatusCode::SEE_OTHER, "next={next:?}: {}", reply.body);
        assert_eq!(reply.headers[header::LOCATION], location, "next={next:?}");
    }
    // The login page's own `next` field is cleaned the same way.
    let page = app.get("/login?next=/%0a/x").await;
    assert_eq!(page.status, StatusCode::OK);
    assert!(page.body.contains(r#"name="next" value="/""#), "{}", page.body);
}

#[tokio::test]
async fn wrong_tokens_past_the_free_attempts_block_the_client_even_with_the_right_one() {
    let app = test_app("login-throttle").await;
    for attempt in 1..=dashboard::auth::FREE_ATTEMPTS {
        let reply = app
            .post_form("/login", None, &[("actor", "mallory"), ("token", "guess")])
            .await;
        assert_eq!(reply.status, StatusCode::UNAUTHORIZED, "attempt {attempt}");
    }
    let blocked = app
        .post_form("/login", None, &[("actor", "mallory"), ("token", LOGIN)])
        .await;
    assert_eq!(blocked.status, StatusCode::TOO_MANY_REQUESTS, "{}", blocked.body);
    assert_eq!(blocked.headers[header::RETRY_AFTER], "1");
    assert!(!blocked.headers.contains_key(header::SET_COOKIE));
}

#[tokio::test]
async fn a_resent_batch_is_stored_once_and_a_reused_request_id_lists_every_record() {
    let app = test_app("record-ids").await;
    let with_id = |record_id: &str, at_ms: u64, target: &str| {
        let mut json: serde_json::Value =
            serde_json::from_str(&decision_line("shared-id", at_ms, target, "pod-1", "Routed")).unwrap();
        json["decision"]["record_id"] = record_id.into();
        json.to_string()
    };
    let batch = format!(
        "{}\n{}\n",
        with_id("a1", 1_000, "qwq-32b"),
        with_id("b2", 2_000, "qwq-32b-v2")
    );
    let first = app.ingest(Some(INGEST), batch.clone()).await;
    assert!(first.body.contains(r#""decisions":2"#), "{}", first.body);
    // The gateway resends a batch whose answer it never got: nothing is stored twice.
    let again = app.ingest(Some(INGEST), batch).await;
    assert_eq!(again.status, StatusCode::OK);
    assert!(again.body.contains(r#""decisions":0"#), "{}", again.body);

    // Two requests shared one x-request-id: the page shows the newest and lists both.
    let page = app.get("/decisions/shared-id").await;
    assert_eq!(page.status, StatusCode::OK);
    assert!(page.body.contains("Every record with this request id"), "{}", page.body);
    assert_eq!(
        page.body.matches("/decisions/shared-id?row=").count(),
        2,
        "{}",
        page.body
    );
    assert!(page.body.contains("qwq → qwq-32b-v2</div>"), "the newest is shown");
    let rows_html = &page.body[page.body.find("id=\"same-id\"").unwrap()..];
    let older = rows_html
        .match_indices("/decisions/shared-id?row=")
        .filter_map(|(at, _)| extract(&rows_html[at..], "?row=", "\""))
        .last()
        .unwrap();
    let shown = app.get(&format!("/decisions/shared-id?row={older}")).await;
    assert_eq!(shown.status, StatusCode::OK);
    assert!(shown.body.contains("qwq → qwq-32b</div>"), "{}", shown.body);
    assert_eq!(
        app.get("/decisions/shared-id?row=999999").await.status,
        StatusCode::NOT_FOUND
    );
}
