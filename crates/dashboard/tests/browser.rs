//! The release flow in a real browser: headless Debian Chromium driven over WebDriver (chromedriver), against the
//! dashboard, a gateway in dir mode and three vllm-sim pods, all in this process on loopback.
//!
//! Log in, open Releases, change `qwq` from 100/0 to 90/10 between two targets, see the history row, check that
//! about 10 % of 500 requests through the gateway reach the new target, roll back, then start a guarded release
//! from its card (a status sidecar written here stands in for the controller), pause, resume and abort it, and
//! save a screenshot of every page under `target/browser-test/`. Needs `chromium` and `chromium-driver` (installed by `cargo xtask ci`); run by
//! `cargo xtask ci` as `cargo test -p dashboard --test browser`.

use std::{
    net::{Ipv4Addr, SocketAddr},
    path::{Path, PathBuf},
    process::Stdio,
    time::Duration,
};

use base64::Engine as _;
use bytes::Bytes;
use clap::Parser as _;
use http_body_util::{BodyExt, Full};
use hyper_util::{
    client::legacy::{Client, connect::HttpConnector},
    rt::TokioExecutor,
};
use serde_json::{Value, json};
use tokio::net::TcpListener;
use vllm_sim::{ReplicaConfig, spawn_replica};

const CHROMIUM: &str = "/usr/bin/chromium";
const CHROMEDRIVER: &str = "/usr/bin/chromedriver";
const LOGIN_TOKEN: &str = "browser-login-token";
const INGEST_TOKEN: &str = "browser-ingest-token";
const REQUESTS: usize = 500;
const W3C_ELEMENT: &str = "element-6066-11e4-a52e-4f735466cecf";

type HttpClient = Client<HttpConnector, Full<Bytes>>;

fn client() -> HttpClient {
    Client::builder(TokioExecutor::new()).build_http()
}

async fn http(client: &HttpClient, method: &str, url: &str, body: Option<Value>) -> (u16, String) {
    let mut request = hyper::Request::builder().method(method).uri(url);
    let body = match body {
        Some(json) => {
            request = request.header("content-type", "application/json");
            Full::new(Bytes::from(json.to_string()))
        }
        None => Full::new(Bytes::new()),
    };
    let response = tokio::time::timeout(Duration::from_secs(60), client.request(request.body(body).unwrap()))
        .await
        .unwrap_or_else(|_| panic!("{method} {url} timed out"))
        .unwrap_or_else(|e| panic!("{method} {url}: {e}"));
    let status = response.status().as_u16();
    let bytes = response.into_body().collect().await.unwrap().to_bytes();
    (status, String::from_utf8_lossy(&bytes).into_owned())
}

/// Polls `check` every 50 ms until it returns `Some`, failing after `limit`.
async fn eventually<T, F: Future<Output = Option<T>>>(what: &str, limit: Duration, mut check: impl FnMut() -> F) -> T {
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        if let Some(value) = check().await {
            return value;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out after {limit:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Whether a WebDriver error says the element was replaced (a navigation or an htmx swap) after it was found.
fn replaced(error: &str) -> bool {
    error.contains("stale element") || error.contains("does not belong to the document")
}

/// The few W3C WebDriver commands this test needs.
struct Browser {
    http: HttpClient,
    base: String,
    shots: PathBuf,
}

impl Browser {
    async fn command(&self, method: &str, path: &str, body: Option<Value>) -> Value {
        let (status, text) = http(&self.http, method, &format!("{}{path}", self.base), body).await;
        let json: Value = serde_json::from_str(&text).unwrap_or(Value::Null);
        assert_eq!(status, 200, "webdriver {method} {path}: {text}");
        json["value"].clone()
    }

    async fn goto(&self, url: &str) {
        self.command("POST", "/url", Some(json!({ "url": url }))).await;
    }

    async fn find(&self, css: &str) -> String {
        let found = eventually(&format!("element {css}"), Duration::from_secs(10), || async {
            let (status, text) = http(
                &self.http,
                "POST",
                &format!("{}/element", self.base),
                Some(json!({"using": "css selector", "value": css})),
            )
            .await;
            (status == 200).then_some(text)
        })
        .await;
        let json: Value = serde_json::from_str(&found).unwrap();
        json["value"][W3C_ELEMENT].as_str().unwrap().to_owned()
    }

    /// Clicks `css`, finding it again when a live region (htmx polling) replaced it between find and click.
    async fn click(&self, css: &str) {
        eventually(&format!("a click on {css}"), Duration::from_secs(10), || async {
            let id = self.find(css).await;
            let url = format!("{}/element/{id}/click", self.base);
            let (status, text) = http(&self.http, "POST", &url, Some(json!({}))).await;
            match status {
                200 => Some(()),
                _ if replaced(&text) => None,
                _ => panic!("webdriver click on {css}: {text}"),
            }
        })
        .await;
    }

    async fn fill(&self, css: &str, text: &str) {
        let id = self.find(css).await;
        self.command("POST", &format!("/element/{id}/clear"), Some(json!({})))
            .await;
        self.command("POST", &format!("/element/{id}/value"), Some(json!({ "text": text })))
            .await;
    }

    /// The text of `css`, found again when a live region replaced it between find and read.
    async fn text(&self, css: &str) -> String {
        eventually(&format!("the text of {css}"), Duration::from_secs(10), || async {
            let id = self.find(css).await;
            let url = format!("{}/element/{id}/text", self.base);
            let (status, text) = http(&self.http, "GET", &url, None).await;
            match status {
                200 => Some(
                    serde_json::from_str::<Value>(&text).unwrap()["value"]
                        .as_str()
                        .unwrap_or("")
                        .to_owned(),
                ),
                _ if replaced(&text) => None,
                _ => panic!("webdriver text of {css}: {text}"),
            }
        })
        .await
    }

    async fn url(&self) -> String {
        self.command("GET", "/url", None)
            .await
            .as_str()
            .unwrap_or("")
            .to_owned()
    }

    /// Waits until the text of `css` contains `needle`.
    async fn wait_text(&self, css: &str, needle: &str) -> String {
        eventually(&format!("{needle:?} in {css}"), Duration::from_secs(10), || async {
            let text = self.text(css).await;
            text.contains(needle).then_some(text)
        })
        .await
    }

    /// Waits until the text of `css` satisfies `check`.
    async fn wait_until(&self, css: &str, what: &str, check: impl Fn(&str) -> bool) -> String {
        eventually(what, Duration::from_secs(10), || async {
            let text = self.text(css).await;
            check(&text).then_some(text)
        })
        .await
    }

    /// Accepts the `confirm()` dialog a click opened; returns its question.
    async fn accept_confirm(&self) -> String {
        let text = eventually("a confirm dialog", Duration::from_secs(10), || async {
            let (status, body) = http(&self.http, "GET", &format!("{}/alert/text", self.base), None).await;
            (status == 200).then_some(body)
        })
        .await;
        self.command("POST", "/alert/accept", Some(json!({}))).await;
        text
    }

    async fn screenshot(&self, name: &str) -> PathBuf {
        let data = self.command("GET", "/screenshot", None).await;
        let png = base64::engine::general_purpose::STANDARD
            .decode(data.as_str().unwrap())
            .unwrap();
        assert!(png.starts_with(b"\x89PNG"), "{name} is not a PNG");
        let path = self.shots.join(format!("{name}.png"));
        std::fs::write(&path, png).unwrap();
        path
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

use test_support::bind_pods;

fn write_config(dir: &Path, port: u16, pods: &[SocketAddr]) {
    std::fs::create_dir_all(dir).unwrap();
    std::fs::write(
        dir.join("pool.yaml"),
        format!(
            "apiVersion: inference.networking.x-k8s.io/v1alpha1\nkind: InferencePool\nmetadata:\n  name: reasoning-pool\n\
             spec:\n  targetPortNumber: {port}\n  selector:\n    app: qwq\n"
        ),
    )
    .unwrap();
    std::fs::write(
        dir.join("model.yaml"),
        "apiVersion: inference.networking.x-k8s.io/v1alpha1\nkind: InferenceModel\nmetadata:\n  name: qwq\n\
         spec:\n  criticality: Critical\n  modelName: qwq\n  poolRef:\n    name: reasoning-pool\n  targetModels:\n\
         \x20 - name: qwq-32b\n    weight: 100\n  - name: qwq-32b-v2\n    weight: 0\n",
    )
    .unwrap();
    let docs: Vec<String> = pods
        .iter()
        .enumerate()
        .map(|(i, addr)| {
            format!(
                "apiVersion: v1\nkind: Pod\nmetadata:\n  name: qwq-{i}\n  namespace: default\n  labels:\n    app: qwq\n\
                 status:\n  podIP: {}\n  conditions:\n  - type: Ready\n    status: \"True\"\n",
                addr.ip()
            )
        })
        .collect();
    std::fs::write(dir.join("pods.yaml"), docs.join("---\n")).unwrap();
}

/// Sends `n` chat requests for `qwq` through the proxy, 16 at a time; returns how many each target served.
async fn send_requests(proxy: SocketAddr, n: usize) -> (usize, usize) {
    let mut tasks = tokio::task::JoinSet::new();
    let (mut old, mut new) = (0, 0);
    for i in 0..n {
        tasks.spawn(async move {
            let body = json!({"model": "qwq", "max_tokens": 2,
                "messages": [{"role": "user", "content": format!("question {i}")}]});
            let (status, text) = http(
                &client(),
                "POST",
                &format!("http://{proxy}/v1/chat/completions"),
                Some(body),
            )
            .await;
            assert_eq!(status, 200, "request {i}: {text}");
            let reply: Value = serde_json::from_str(&text).unwrap();
            reply["model"].as_str().unwrap_or("").to_owned()
        });
        if tasks.len() >= 16 {
            count(tasks.join_next().await.unwrap().unwrap(), &mut old, &mut new);
        }
    }
    while let Some(joined) = tasks.join_next().await {
        count(joined.unwrap(), &mut old, &mut new);
    }
    (old, new)
}

fn count(model: String, old: &mut usize, new: &mut usize) {
    match model.as_str() {
        "qwq-32b" => *old += 1,
        "qwq-32b-v2" => *new += 1,
        other => panic!("unexpected model {other:?} in a response"),
    }
}

/// Waits until the gateway's datastore publishes `weights` for `qwq`'s targets: each snapshot it publishes is
/// checked as it arrives, failing after `limit`.
async fn gateway_loads(gateway: &gateway::Gateway, weights: &[Option<u32>], limit: Duration) {
    let weights_of = |snapshot: &gateway::datastore::Snapshot| -> Vec<Option<u32>> {
        snapshot
            .model("qwq")
            .map(|m| m.targets.iter().map(|t| t.weight).collect())
            .unwrap_or_default()
    };
    let mut snapshots = gateway.director.datastore.subscribe();
    let loaded = snapshots.wait_for(|s| weights_of(s) == weights);
    if tokio::time::timeout(limit, loaded).await.is_err() {
        let now = weights_of(&gateway.director.datastore.snapshot());
        panic!("the gateway never loaded weights {weights:?} within {limit:?}; it has {now:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_canary_release_in_the_browser_moves_ten_percent_of_traffic() {
    assert!(
        Path::new(CHROMIUM).exists() && Path::new(CHROMEDRIVER).exists(),
        "the browser test needs Debian's chromium and chromium-driver: apt-get install -y chromium chromium-driver"
    );
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let shots = root.join("target/browser-test");
    let work = std::env::temp_dir().join(format!("switchyard-browser-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&work);
    std::fs::create_dir_all(&shots).unwrap();
    std::fs::create_dir_all(&work).unwrap();

    // Three simulated pods that serve both targets (the new one as a LoRA adapter), 50× faster than real time.
    let (port, listeners) = bind_pods(61, 3).await;
    let mut sims = Vec::new();
    for listener in listeners {
        let mut config = ReplicaConfig {
            served_model_name: "qwq-32b".into(),
            lora_adapters: vec!["qwq-32b-v2".into()],
            time_scale: 50.0,
            ..ReplicaConfig::default()
        };
        config.engine.max_loras = 1;
        sims.push(spawn_replica(config, listener).await.unwrap());
    }
    let config_dir = work.join("config");
    let pods: Vec<SocketAddr> = sims.iter().map(|s| s.addr()).collect();
    write_config(&config_dir, port, &pods);

    let db = work.join("switchyard.db");
    let dashboard = dashboard::start(dashboard::args::Args::parse_from([
        "dashboard",
        "--listen",
        "127.0.0.1:0",
        "--db",
        db.to_str().unwrap(),
        "--dir",
        config_dir.to_str().unwrap(),
        "--login-token",
        LOGIN_TOKEN,
        "--ingest-token",
        INGEST_TOKEN,
    ]))
    .await
    .unwrap();
    let ui = format!("http://{}", dashboard.addr);
    let gateway = gateway::start(gateway::args::Args::parse_from([
        "gateway",
        "--dir",
        config_dir.to_str().unwrap(),
        "--proxy-listen",
        "127.0.0.1:0",
        "--admin-listen",
        "127.0.0.1:0",
        "--extproc-listen",
        "127.0.0.1:0",
        "--health-listen",
        "127.0.0.1:0",
        "--dashboard-url",
        &ui,
        "--dashboard-token",
        INGEST_TOKEN,
    ]))
    .await
    .unwrap();
    let proxy = gateway.proxy_addr.unwrap();
    gateway_loads(&gateway, &[Some(100), Some(0)], Duration::from_secs(10)).await;
    // Some traffic first, so the overview, pods and decisions pages have something to show.
    let (old, new) = send_requests(proxy, 40).await;
    assert_eq!((old, new), (40, 0), "weight 0 gets nothing");

    let driver_port = free_port();
    let mut driver = tokio::process::Command::new(CHROMEDRIVER)
        .arg(format!("--port={driver_port}"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .expect("starting chromedriver");
    let driver_url = format!("http://127.0.0.1:{driver_port}");
    let http_client = client();
    eventually("chromedriver", Duration::from_secs(20), || async {
        let request = hyper::Request::get(format!("{driver_url}/status"))
            .body(Full::new(Bytes::new()))
            .unwrap();
        let response = tokio::time::timeout(Duration::from_secs(2), http_client.request(request))
            .await
            .ok()?
            .ok()?;
        response.status().is_success().then_some(())
    })
    .await;
    let profile = work.join("chromium-profile");
    let (status, created) = http(
        &http_client,
        "POST",
        &format!("{driver_url}/session"),
        Some(
            json!({"capabilities": {"alwaysMatch": {"browserName": "chrome", "goog:chromeOptions": {
                "binary": CHROMIUM,
                "args": ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                         "--disable-background-networking", "--disable-component-update", "--disable-sync",
                         "--disable-dev-shm-usage", "--window-size=1280,1000",
                         format!("--user-data-dir={}", profile.display())]
            }}}}),
        ),
    )
    .await;
    assert_eq!(status, 200, "new session: {created}");
    let session: Value = serde_json::from_str(&created).unwrap();
    let session_id = session["value"]["sessionId"].as_str().unwrap().to_owned();
    let browser = Browser {
        http: http_client.clone(),
        base: format!("{driver_url}/session/{session_id}"),
        shots: shots.clone(),
    };
    let mut screenshots = Vec::new();

    // The overview and pods show the shipped samples and decisions.
    eventually("pod samples in the dashboard", Duration::from_secs(10), || async {
        let (_, body) = http(&http_client, "GET", &format!("{ui}/pods"), None).await;
        body.contains("default/qwq-0").then_some(())
    })
    .await;
    browser.goto(&format!("{ui}/")).await;
    browser.wait_text("#live", "default/qwq-2").await;
    screenshots.push(browser.screenshot("01-overview").await);

    // Log in.
    browser.goto(&format!("{ui}/login?next=/releases")).await;
    browser.fill("#actor", "Browser Test").await;
    browser.fill("#token", LOGIN_TOKEN).await;
    screenshots.push(browser.screenshot("02-login").await);
    browser.click("#login").await;
    browser.wait_text("#user", "Browser Test").await;
    assert!(browser.url().await.ends_with("/releases"));

    // Releases: qwq at 100/0.
    let card = browser.wait_text("a.card.model", "qwq").await;
    assert!(
        card.contains("qwq-32b 100.0 %") && card.contains("qwq-32b-v2 0.0 %"),
        "{card}"
    );
    screenshots.push(browser.screenshot("03-releases").await);
    browser.click("a.card.model").await;
    browser.wait_text("#current", "qwq-32b").await;

    // An invalid split first: the inline error, nothing applied.
    browser.fill("#weight_0", "0").await;
    browser.fill("#weight_1", "0").await;
    browser.fill("#reason", "oops").await;
    browser.click("#apply").await;
    browser
        .wait_text("#form-errors", "at least one weight must be greater than 0")
        .await;
    screenshots.push(browser.screenshot("04-release-invalid").await);

    // Then 90/10.
    browser.fill("#weight_0", "90").await;
    browser.fill("#weight_1", "10").await;
    browser.fill("#reason", "canary 10 % to qwq-32b-v2").await;
    browser.click("#apply").await;
    browser.wait_text("#flash", "Applied").await;
    let history = browser.wait_text("#history", "qwq-32b 90 · qwq-32b-v2 10").await;
    assert!(
        history.contains("Browser Test") && history.contains("canary 10 % to qwq-32b-v2"),
        "{history}"
    );
    assert!(history.contains("qwq-32b 100 · qwq-32b-v2 0"), "{history}");
    browser.wait_text("#current", "90.0 %").await;
    screenshots.push(browser.screenshot("05-release-applied").await);

    // The gateway routes by the new weights within a second of the apply.
    let applied = tokio::time::Instant::now();
    gateway_loads(&gateway, &[Some(90), Some(10)], Duration::from_secs(5)).await;
    assert!(
        applied.elapsed() < Duration::from_secs(2),
        "took {:?}",
        applied.elapsed()
    );
    let (old, new) = send_requests(proxy, REQUESTS).await;
    eprintln!("90/10 split over {REQUESTS} requests: qwq-32b {old}, qwq-32b-v2 {new}");
    // 10 % of 500 is 50 with a standard deviation of 6.7: 25..=75 is well beyond 3.5 sigma either way.
    assert!((25..=75).contains(&new), "qwq-32b-v2 got {new} of {REQUESTS}");
    assert_eq!(old + new, REQUESTS);

    // The audit shows the same requests: filter on the new target.
    let shipped = eventually(
        "decisions shipped to the dashboard",
        Duration::from_secs(10),
        || async {
            let (_, body) = http(
                &http_client,
                "GET",
                &format!("{ui}/api/v1/decisions?target_model=qwq-32b-v2&limit=1000"),
                None,
            )
            .await;
            let page: Value = serde_json::from_str(&body).ok()?;
            let n = page["decisions"].as_array()?.len();
            (n == new).then_some(n)
        },
    )
    .await;
    assert_eq!(shipped, new);
    browser.goto(&format!("{ui}/decisions?target_model=qwq-32b-v2")).await;
    browser.wait_text("table.decisions", "qwq-32b-v2").await;
    screenshots.push(browser.screenshot("06-decisions").await);
    browser.click("table.decisions tbody tr td a").await;
    // The sentence depends on the pick: a clear lead, a broken tie, or a single survivor of the filters.
    let why = browser.wait_text("#why", "qwq-").await;
    assert!(
        ["against", "the picker broke the tie", "only candidate"]
            .iter()
            .any(|form| why.contains(form)),
        "the decision page does not say why: {why}"
    );
    screenshots.push(browser.screenshot("07-decision").await);
    browser.goto(&format!("{ui}/pods/default/qwq-0")).await;
    browser.wait_text("#chart-note", "points").await;
    screenshots.push(browser.screenshot("08-pod").await);

    // Roll back the release: 100/0 again, recorded as a rollback.
    browser.goto(&format!("{ui}/releases/default/qwq")).await;
    browser.click("#history button.rollback").await;
    browser.wait_text("#current", "100.0 %").await;
    let history = browser.wait_text("#history", "rollback").await;
    assert!(history.contains("roll back release #1"), "{history}");
    screenshots.push(browser.screenshot("09-rolled-back").await);
    gateway_loads(&gateway, &[Some(100), Some(0)], Duration::from_secs(5)).await;
    let (old, new) = send_requests(proxy, 50).await;
    assert_eq!((old, new), (50, 0));

    // A guarded release from the card: the defaults release qwq-32b-v2 against qwq-32b in 1-5-25-50-100 steps.
    browser.goto(&format!("{ui}/releases/default/qwq")).await;
    browser.fill("#g-hold", "30s").await;
    browser.fill("#g-reason", "guarded release of qwq-32b-v2").await;
    browser.click("#g-start").await;
    browser.wait_text("#flash", "Guarded release started").await;
    browser.wait_text("#guarded-phase", "Pending").await;
    browser.wait_text("#guarded-percent", "0 %").await;
    browser
        .wait_text("#weights-locked", "guarded release controls these weights")
        .await;
    let name = browser.text("#guarded-name").await;
    assert!(name.starts_with("qwq-32b-v2-"), "{name}");
    let release_file = config_dir.join(format!("canaryrelease-{name}.yaml"));
    assert!(release_file.exists(), "{}", release_file.display());
    screenshots.push(browser.screenshot("10-guarded-pending").await);

    // Pause, then resume (htmx swaps the card in place).
    browser.click("#guarded-pause").await;
    browser.wait_text("#guarded-control", "pause requested").await;
    browser.click("#guarded-resume").await;
    browser
        .wait_until("#guarded", "the pause note to go", |t| !t.contains("pause requested"))
        .await;
    browser.find("#guarded-pause").await;

    // The controller reports a step (written as it would write it); the live card picks it up by itself.
    let ago = |s: i64| {
        k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(
            k8s_openapi::jiff::Timestamp::now() - k8s_openapi::jiff::SignedDuration::from_secs(s),
        )
    };
    let observation = |requests, ttft| api::canary::TargetObservation {
        requests,
        ttft_p90_ms: Some(ttft),
        error_rate: 0.0,
        shed_rate: 0.0,
    };
    let event = |s, from_percent, to_percent, reason: &str| api::canary::ReleaseEvent {
        time: ago(s),
        from_percent,
        to_percent,
        phase: api::canary::Phase::Progressing,
        actor: "controller".into(),
        reason: reason.into(),
    };
    let status = api::canary::CanaryReleaseStatus {
        phase: api::canary::Phase::Progressing,
        step: Some(1),
        canary_percent: 5,
        step_started_at: Some(ago(10)),
        stable: Some(observation(380, 212.0)),
        canary: Some(observation(21, 230.0)),
        message: "holding 5 % for 30s".into(),
        history: vec![
            event(40, 0, 1, "step 1 of 5: canary to 1 %"),
            event(
                10,
                1,
                5,
                "canary TTFT P90 230 ms is 1.08x stable's 212 ms (limit 1.5x): step 2 of 5",
            ),
        ],
        conditions: Vec::new(),
    };
    api::dir::write_status(&config_dir, "default", &name, &status).unwrap();
    browser.wait_text("#guarded-phase", "Progressing").await;
    browser.wait_text("#guarded-percent", "5 %").await;
    let observed = browser.wait_text("#guarded-observations", "230 ms").await;
    assert!(observed.contains("212 ms") && observed.contains("380"), "{observed}");
    browser.wait_text("#history", "step 2 of 5").await;
    screenshots.push(browser.screenshot("11-guarded-progressing").await);

    // Abort asks first.
    browser.click("#guarded-abort").await;
    let question = browser.accept_confirm().await;
    assert!(question.contains("Abort the release"), "{question}");
    browser.wait_text("#guarded-control", "abort requested").await;
    let spec: Value = serde_saphyr::from_str(&std::fs::read_to_string(&release_file).unwrap()).unwrap();
    assert_eq!(spec["spec"]["control"], "Abort");
    let history = browser.wait_text("#history", "abort").await;
    for needle in [
        "start",
        "pause",
        "resume",
        "step",
        "Browser Test",
        "guarded release of qwq-32b-v2",
    ] {
        assert!(history.contains(needle), "{needle} missing from the history: {history}");
    }
    screenshots.push(browser.screenshot("12-guarded-aborting").await);

    browser.command("DELETE", "", None).await;
    let _ = driver.kill().await;
    for shot in &screenshots {
        eprintln!("screenshot: {}", shot.display());
    }
    gateway.stop().await;
    dashboard.stop().await;
    let _ = std::fs::remove_dir_all(&work);
}
