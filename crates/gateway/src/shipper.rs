//! Ships decisions and per-pod samples to the dashboard (`POST /api/v1/ingest`, NDJSON, bearer token).
//!
//! The request path only calls [`Shipper::ship`], which puts the record on a bounded channel with `try_send`: when
//! the channel is full (the dashboard is slow or down) the record is dropped and counted, and the request never
//! waits. One background task drains the channel into batches of up to [`MAX_BATCH`] records or [`FLUSH_EVERY`],
//! whichever comes first, and POSTs them with bounded retries; a batch that still fails is dropped and counted.
//! A POST carries at most [`MAX_BODY_BYTES`] (a few large decisions start a new one), and one the dashboard refuses
//! as too large (413) is split in halves and resent, so one oversized record never takes others down with it.
//! With a spool (`--dashboard-spool-dir`), a body the dashboard cannot take now is written to disk instead of dropped
//! and resent, oldest first, as soon as the dashboard answers again ([`crate::spool`]).

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use audit::wire::{self, Line as Record, Sample};
use bytes::Bytes;
use http::{Request, StatusCode, Uri, header};
use http_body_util::Full;
use hyper_util::{
    client::legacy::{Client, connect::HttpConnector},
    rt::TokioExecutor,
};
use prometheus_client::metrics::counter::Counter;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::{
    datastore::Datastore,
    scrape::MetricsStore,
    spool::{Spool, SpoolError},
};

/// Records waiting to be shipped; beyond this they are dropped rather than held in memory.
pub const QUEUE_CAPACITY: usize = 20_000;
/// Records per POST.
pub const MAX_BATCH: usize = 1_000;
/// Bytes per POST, well under the dashboard's ingest limit (32 MiB) whatever the records' sizes.
pub const MAX_BODY_BYTES: usize = 4 << 20;
/// A partial batch is sent after this long, so the dashboard is at most this far behind.
pub const FLUSH_EVERY: Duration = Duration::from_millis(250);
/// Attempts per batch before it is dropped; with the back-off below a batch is retried for about 3 s.
const ATTEMPTS: u32 = 5;
/// Attempts before a batch is spooled instead (the spool retries it later, so the drain need not wait long).
const SPOOLED_ATTEMPTS: u32 = 2;
const FIRST_BACKOFF: Duration = Duration::from_millis(200);
/// Bound on one POST.
const POST_TIMEOUT: Duration = Duration::from_secs(10);
/// How often per-pod samples are taken.
pub const SAMPLE_EVERY: Duration = Duration::from_secs(1);

/// Where and how to ship.
#[derive(Clone, Debug)]
pub struct ShipperConfig {
    /// Base URL of the dashboard, e.g. `http://127.0.0.1:8088`.
    pub url: String,
    pub token: String,
    /// Where bodies wait while the dashboard is unreachable, and how many bytes may wait; `None` drops them.
    pub spool: Option<(std::path::PathBuf, u64)>,
}

/// Counters of what happened to shipped records (registered on the gateway's `/metrics`).
#[derive(Clone, Debug, Default)]
pub struct ShipperCounters {
    pub shipped: Counter,
    pub dropped: Counter,
    /// Records the dashboard refused as too large even alone (413); counted in `dropped` too.
    pub too_large: Counter,
    /// Records written to the spool to be resent (each is later counted as shipped or dropped).
    pub spooled: Counter,
    /// Bytes waiting in the spool.
    pub spool_bytes: prometheus_client::metrics::gauge::Gauge,
}

/// The sending half, held by the [`crate::routing::Director`]; cheap to call from the request path.
#[derive(Clone, Debug)]
pub struct Shipper {
    tx: mpsc::Sender<Record>,
    counters: ShipperCounters,
}

#[derive(Debug, thiserror::Error)]
pub enum ShipperError {
    #[error("invalid --dashboard-url {url:?}: {reason}")]
    Url { url: String, reason: String },
    #[error("--dashboard-spool-dir: {0}")]
    Spool(#[from] SpoolError),
}

impl Shipper {
    /// Queues a record; never waits. A full queue drops it and counts the drop.
    pub fn ship(&self, record: Record) {
        if self.tx.try_send(record).is_err() {
            self.counters.dropped.inc();
        }
    }

    pub fn ship_decision(&self, decision: audit::Record) {
        self.ship(Record::Decision(Box::new(decision)));
    }
}

/// Creates the shipper and the task that drains it; the task ends when `cancel` fires, after one last flush.
/// Fails on a bad URL or a spool directory that cannot be opened.
pub async fn spawn(
    config: ShipperConfig,
    counters: ShipperCounters,
    cancel: CancellationToken,
) -> Result<(Shipper, tokio::task::JoinHandle<()>), ShipperError> {
    let base = config.url.trim_end_matches('/');
    let uri: Uri = format!("{base}/api/v1/ingest")
        .parse()
        .map_err(|e: http::uri::InvalidUri| ShipperError::Url {
            url: config.url.clone(),
            reason: e.to_string(),
        })?;
    if uri.scheme_str() != Some("http") {
        return Err(ShipperError::Url {
            url: config.url.clone(),
            reason: "only http:// is supported (put TLS in front of the dashboard's Service)".into(),
        });
    }
    let spool = match &config.spool {
        Some((dir, max_bytes)) => {
            let spool = Spool::open(dir, *max_bytes).await?;
            counters
                .spool_bytes
                .set(i64::try_from(spool.held()).unwrap_or(i64::MAX));
            Some(spool)
        }
        None => None,
    };
    let (tx, rx) = mpsc::channel(QUEUE_CAPACITY);
    let sender = Sender {
        spool,
        client: Client::builder(TokioExecutor::new()).build_http(),
        uri,
        authorization: format!("Bearer {}", config.token),
        counters: counters.clone(),
    };
    let task = tokio::spawn(drain(rx, sender, cancel));
    Ok((Shipper { tx, counters }, task))
}

struct Sender {
    spool: Option<Spool>,
    client: Client<HttpConnector, Full<Bytes>>,
    uri: Uri,
    authorization: String,
    counters: ShipperCounters,
}

enum Failure {
    /// Worth another try (connection refused, timeout, 5xx, 429).
    Transient(String),
    /// The body is over the dashboard's limit (413): smaller bodies may pass.
    TooLarge,
    /// The dashboard refused the batch itself (401, 422): retrying cannot help.
    Permanent(String),
}

impl Sender {
    async fn post(&self, body: Bytes) -> Result<(), Failure> {
        let request = Request::post(self.uri.clone())
            .header(header::CONTENT_TYPE, "application/x-ndjson")
            .header(header::AUTHORIZATION, &self.authorization)
            .body(Full::new(body))
            .map_err(|e| Failure::Permanent(e.to_string()))?;
        let response = tokio::time::timeout(POST_TIMEOUT, self.client.request(request))
            .await
            .map_err(|_| Failure::Transient(format!("timed out after {POST_TIMEOUT:?}")))?
            .map_err(|e| Failure::Transient(e.to_string()))?;
        match response.status() {
            s if s.is_success() => Ok(()),
            s if s.is_server_error() || s == StatusCode::TOO_MANY_REQUESTS => Err(Failure::Transient(s.to_string())),
            StatusCode::PAYLOAD_TOO_LARGE => Err(Failure::TooLarge),
            s => Err(Failure::Permanent(s.to_string())),
        }
    }

    /// Sends one batch: cut into bodies of at most [`MAX_BODY_BYTES`], each delivered by [`Sender::deliver`].
    async fn send(&mut self, batch: &mut Vec<Record>, cancel: &CancellationToken) {
        let mut body: Vec<Bytes> = Vec::new();
        let mut bytes = 0;
        for record in batch.drain(..) {
            let mut line = Vec::new();
            wire::encode(std::iter::once(&record), &mut line);
            if !body.is_empty() && bytes + line.len() > MAX_BODY_BYTES {
                self.deliver(std::mem::take(&mut body), cancel).await;
                bytes = 0;
            }
            bytes += line.len();
            body.push(Bytes::from(line));
        }
        if !body.is_empty() {
            self.deliver(body, cancel).await;
        }
    }

    /// POSTs one body with bounded retries, split in halves on 413; what the dashboard cannot take now goes to the
    /// spool (when there is one). Every record ends counted as shipped, spooled or dropped. After a delivery, the
    /// spool is resent.
    async fn deliver(&mut self, lines: Vec<Bytes>, cancel: &CancellationToken) {
        let mut pending = vec![lines];
        let mut delivered = false;
        while let Some(mut lines) = pending.pop() {
            let n = lines.len() as u64;
            match self.post_with_retries(&lines, cancel).await {
                Ok(()) => {
                    self.counters.shipped.inc_by(n);
                    delivered = true;
                }
                Err(Failure::TooLarge) if lines.len() > 1 => {
                    tracing::debug!(records = n, "dashboard refused a batch as too large; splitting it");
                    let second = lines.split_off(lines.len() / 2);
                    pending.push(second);
                    pending.push(lines);
                }
                Err(Failure::TooLarge) => {
                    tracing::warn!("dashboard refused a single record as too large; dropped");
                    self.counters.too_large.inc();
                    self.counters.dropped.inc();
                }
                Err(Failure::Transient(why)) => self.spool_or_drop(&lines, &why).await,
                Err(Failure::Permanent(why)) => {
                    tracing::warn!(records = n, error = why, "dashboard refused a batch; dropped");
                    self.counters.dropped.inc_by(n);
                }
            }
        }
        if delivered {
            self.resend_spooled(cancel).await;
        }
    }

    async fn spool_or_drop(&mut self, lines: &[Bytes], why: &str) {
        let n = lines.len() as u64;
        let Some(spool) = self.spool.as_mut() else {
            tracing::warn!(records = n, error = why, "dashboard unreachable; batch dropped");
            self.counters.dropped.inc_by(n);
            return;
        };
        match spool.push(&lines.concat()).await {
            Ok(()) => {
                tracing::debug!(records = n, error = why, "dashboard unreachable; batch spooled");
                self.counters.spooled.inc_by(n);
            }
            Err(error) => {
                tracing::warn!(records = n, %error, "dashboard unreachable and the spool refused the batch; dropped");
                self.counters.dropped.inc_by(n);
            }
        }
        self.counters
            .spool_bytes
            .set(i64::try_from(spool.held()).unwrap_or(i64::MAX));
    }

    /// Resends spooled bodies, oldest first, until the spool is empty or the dashboard fails again.
    async fn resend_spooled(&mut self, cancel: &CancellationToken) {
        while let Some(spool) = self.spool.as_ref() {
            let Some(body) = spool.oldest().await else {
                break;
            };
            let body = match body {
                Ok(body) => body,
                Err(error) => {
                    tracing::warn!(%error, "unreadable spool file; skipped");
                    self.pop_spooled().await;
                    continue;
                }
            };
            let lines: Vec<Bytes> = body
                .split_inclusive(|&b| b == b'\n')
                .map(Bytes::copy_from_slice)
                .collect();
            let n = lines.len() as u64;
            match self.post(Bytes::from(body)).await {
                Ok(()) => {
                    self.counters.shipped.inc_by(n);
                    self.pop_spooled().await;
                }
                Err(Failure::Transient(_)) => break,
                Err(Failure::TooLarge) => {
                    // Not as one body any more (the dashboard's limit shrank): deliver it in parts.
                    self.pop_spooled().await;
                    Box::pin(self.deliver(lines, cancel)).await;
                }
                Err(Failure::Permanent(why)) => {
                    tracing::warn!(records = n, error = why, "dashboard refused a spooled batch; dropped");
                    self.counters.dropped.inc_by(n);
                    self.pop_spooled().await;
                }
            }
            if cancel.is_cancelled() {
                break;
            }
        }
    }

    async fn pop_spooled(&mut self) {
        if let Some(spool) = self.spool.as_mut() {
            spool.pop().await;
            self.counters
                .spool_bytes
                .set(i64::try_from(spool.held()).unwrap_or(i64::MAX));
        }
    }

    /// POSTs `lines` as one body, retrying transient failures with back-off (briefly when a spool can keep them).
    async fn post_with_retries(&self, lines: &[Bytes], cancel: &CancellationToken) -> Result<(), Failure> {
        let body = Bytes::from(lines.concat());
        let attempts = if self.spool.is_some() {
            SPOOLED_ATTEMPTS
        } else {
            ATTEMPTS
        };
        let mut backoff = FIRST_BACKOFF;
        let mut attempt = 1;
        loop {
            match self.post(body.clone()).await {
                Err(Failure::Transient(why)) if attempt < attempts => {
                    tracing::debug!(
                        records = lines.len(),
                        attempt,
                        error = why,
                        "shipping to the dashboard failed; retrying"
                    );
                    tokio::select! {
                        () = tokio::time::sleep(backoff) => {}
                        () = cancel.cancelled() => return Err(Failure::Transient(why)),
                    }
                    backoff *= 2;
                    attempt += 1;
                }
                result => return result,
            }
        }
    }
}

async fn drain(mut rx: mpsc::Receiver<Record>, mut sender: Sender, cancel: CancellationToken) {
    let mut batch = Vec::with_capacity(MAX_BATCH);
    let mut tick = tokio::time::interval(FLUSH_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            () = cancel.cancelled() => break,
            received = rx.recv() => match received {
                Some(record) => {
                    batch.push(record);
                    if batch.len() >= MAX_BATCH {
                        sender.send(&mut batch, &cancel).await;
                    }
                }
                None => break,
            },
            _ = tick.tick() => {
                sender.send(&mut batch, &cancel).await;
                // Nothing new may come for a while: the spool must not wait for traffic to be resent.
                sender.resend_spooled(&cancel).await;
            }
        }
    }
    // Whatever is already queued gets one attempt, without retries, so stopping stays quick.
    let stopping = CancellationToken::new();
    stopping.cancel();
    while let Ok(record) = rx.try_recv() {
        batch.push(record);
        if batch.len() >= MAX_BATCH {
            sender.send(&mut batch, &stopping).await;
        }
    }
    sender.send(&mut batch, &stopping).await;
}

/// Every [`SAMPLE_EVERY`], ships the last scraped queue, running requests and KV-cache use of each pod of the pool.
pub async fn run_sampler(
    datastore: Datastore,
    metrics: std::sync::Arc<MetricsStore>,
    shipper: Shipper,
    cancel: CancellationToken,
) {
    let mut tick = tokio::time::interval(SAMPLE_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    loop {
        tokio::select! {
            () = cancel.cancelled() => return,
            _ = tick.tick() => {}
        }
        let snapshot = datastore.snapshot();
        let pool = snapshot.pool().map(|p| p.name.clone()).unwrap_or_default();
        let at_ms = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_millis() as u64)
            .unwrap_or(0);
        for endpoint in snapshot.endpoints() {
            let m = metrics.get(&endpoint.id);
            if m.updated_at.is_none() {
                continue;
            }
            shipper.ship(Record::Sample(Sample {
                pod: endpoint.pod.as_str().to_owned(),
                pool: pool.clone(),
                endpoint: endpoint.id.as_str().to_owned(),
                at_ms,
                queue: m.waiting_queue,
                running: m.running,
                kv_usage: m.kv_cache_usage.clamp(0.0, 1.0),
            }));
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use axum::{Router, body::Bytes as AxumBytes, http::HeaderMap, routing::post};

    use super::*;

    fn sample(i: u64) -> Record {
        Record::Sample(Sample {
            pod: format!("default/p{i}"),
            pool: "pool".into(),
            endpoint: "127.0.0.11:8000".into(),
            at_ms: i,
            queue: 1,
            running: 2,
            kv_usage: 0.5,
        })
    }

    /// A fake dashboard that answers `status` and keeps the bodies it accepted.
    async fn fake_dashboard(status: StatusCode) -> (String, Arc<Mutex<Vec<String>>>) {
        let bodies = Arc::new(Mutex::new(Vec::new()));
        let kept = bodies.clone();
        let app = Router::new().route(
            "/api/v1/ingest",
            post(move |headers: HeaderMap, body: AxumBytes| {
                let kept = kept.clone();
                async move {
                    assert_eq!(headers[header::AUTHORIZATION], "Bearer t0ken");
                    if status.is_success() {
                        kept.lock().unwrap().push(String::from_utf8_lossy(&body).into_owned());
                    }
                    status
                }
            }),
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        tokio::spawn(async move { axum::serve(listener, app).await });
        (url, bodies)
    }

    async fn wait_for(what: &str, mut done: impl FnMut() -> bool) {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        while !done() {
            assert!(tokio::time::Instant::now() < deadline, "timed out waiting for {what}");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    #[tokio::test]
    async fn records_arrive_as_ndjson_batches() {
        let (url, bodies) = fake_dashboard(StatusCode::OK).await;
        let counters = ShipperCounters::default();
        let cancel = CancellationToken::new();
        let config = ShipperConfig {
            url,
            token: "t0ken".into(),
            spool: None,
        };
        let (shipper, task) = spawn(config, counters.clone(), cancel.clone()).await.unwrap();
        for i in 0..2500 {
            shipper.ship(sample(i));
        }
        wait_for("2500 shipped", || counters.shipped.get() == 2500).await;
        let lines: usize = bodies.lock().unwrap().iter().map(|b| b.lines().count()).sum();
        assert_eq!(lines, 2500);
        let first = bodies.lock().unwrap()[0].lines().next().unwrap().to_owned();
        assert!(first.starts_with(r#"{"sample":{"pod":"default/p0""#), "{first}");
        assert!(bodies.lock().unwrap().iter().all(|b| b.lines().count() <= MAX_BATCH));
        assert_eq!(counters.dropped.get(), 0);
        cancel.cancel();
        task.await.unwrap();
    }

    #[tokio::test]
    async fn a_refused_batch_is_dropped_and_counted_without_retries() {
        let (url, _) = fake_dashboard(StatusCode::UNAUTHORIZED).await;
        let counters = ShipperCounters::default();
        let cancel = CancellationToken::new();
        let (shipper, task) = spawn(
            ShipperConfig {
                url,
                token: "t0ken".into(),
                spool: None,
            },
            counters.clone(),
            cancel.clone(),
        )
        .await
        .unwrap();
        for i in 0..10 {
            shipper.ship(sample(i));
        }
        wait_for("10 dropped", || counters.dropped.get() == 10).await;
        assert_eq!(counters.shipped.get(), 0);
        cancel.cancel();
        task.await.unwrap();
    }

    #[tokio::test]
    async fn a_full_queue_drops_instead_of_blocking() {
        // Nothing listens on this port: every POST fails, so the queue fills and overflow is counted.
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        drop(listener);
        let counters = ShipperCounters::default();
        let cancel = CancellationToken::new();
        let (shipper, task) = spawn(
            ShipperConfig {
                url,
                token: "t0ken".into(),
                spool: None,
            },
            counters.clone(),
            cancel.clone(),
        )
        .await
        .unwrap();
        let extra = 500;
        let started = std::time::Instant::now();
        for i in 0..(QUEUE_CAPACITY + MAX_BATCH + extra) as u64 {
            shipper.ship(sample(i));
        }
        assert!(started.elapsed() < Duration::from_secs(2), "ship() must never wait");
        assert!(
            counters.dropped.get() >= extra as u64,
            "dropped {}",
            counters.dropped.get()
        );
        cancel.cancel();
        task.await.unwrap();
        assert_eq!(counters.shipped.get(), 0);
    }

    #[test]
    fn only_http_urls_are_accepted() {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async {
            let config = |url: &str| ShipperConfig {
                url: url.into(),
                token: "t".into(),
                spool: None,
            };
            let cancel = CancellationToken::new();
            assert!(
                spawn(config("https://x"), ShipperCounters::default(), cancel.clone())
                    .await
                    .is_err()
            );
            assert!(
                spawn(config("not a url"), ShipperCounters::default(), cancel.clone())
                    .await
                    .is_err()
            );
            assert!(
                spawn(config("http://127.0.0.1:1/"), ShipperCounters::default(), cancel)
                    .await
                    .is_ok()
            );
        });
    }

    /// A fake dashboard that stores bodies of up to `limit` bytes and answers 413 above it, as the real one does.
    async fn limited_dashboard(limit: usize) -> (String, Arc<Mutex<Vec<String>>>) {
        let bodies = Arc::new(Mutex::new(Vec::new()));
        let kept = bodies.clone();
        let app = Router::new().route(
            "/api/v1/ingest",
            post(move |body: AxumBytes| {
                let kept = kept.clone();
                async move {
                    if body.len() > limit {
                        return StatusCode::PAYLOAD_TOO_LARGE;
                    }
                    kept.lock().unwrap().push(String::from_utf8_lossy(&body).into_owned());
                    StatusCode::OK
                }
            }),
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        tokio::spawn(async move { axum::serve(listener, app).await });
        (url, bodies)
    }

    #[tokio::test]
    async fn a_batch_refused_as_too_large_is_split_and_only_the_oversized_record_is_lost() {
        let (url, bodies) = limited_dashboard(64 << 10).await;
        let counters = ShipperCounters::default();
        let cancel = CancellationToken::new();
        let config = ShipperConfig {
            url,
            token: "t0ken".into(),
            spool: None,
        };
        let (shipper, task) = spawn(config, counters.clone(), cancel.clone()).await.unwrap();
        for i in 0..200 {
            shipper.ship(sample(i));
            if i == 100 {
                // One record larger than the dashboard takes even alone.
                shipper.ship(Record::Sample(Sample {
                    pod: "x".repeat(100 << 10),
                    pool: "pool".into(),
                    endpoint: "127.0.0.11:8000".into(),
                    at_ms: i,
                    queue: 1,
                    running: 2,
                    kv_usage: 0.5,
                }));
            }
        }
        wait_for("every record shipped or dropped", || {
            counters.shipped.get() + counters.dropped.get() == 201
        })
        .await;
        assert_eq!(
            (counters.shipped.get(), counters.dropped.get(), counters.too_large.get()),
            (200, 1, 1)
        );
        let lines: usize = bodies.lock().unwrap().iter().map(|b| b.lines().count()).sum();
        assert_eq!(lines, 200, "every other record arrived, once");
        cancel.cancel();
        task.await.unwrap();
    }

    /// A fake dashboard that answers 503 while `down` holds, and stores every body it accepts.
    async fn flaky_dashboard(down: Arc<std::sync::atomic::AtomicBool>) -> (String, Arc<Mutex<Vec<String>>>) {
        let bodies = Arc::new(Mutex::new(Vec::new()));
        let kept = bodies.clone();
        let app = Router::new().route(
            "/api/v1/ingest",
            post(move |body: AxumBytes| {
                let (kept, down) = (kept.clone(), down.clone());
                async move {
                    if down.load(std::sync::atomic::Ordering::SeqCst) {
                        return StatusCode::SERVICE_UNAVAILABLE;
                    }
                    kept.lock().unwrap().push(String::from_utf8_lossy(&body).into_owned());
                    StatusCode::OK
                }
            }),
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        tokio::spawn(async move { axum::serve(listener, app).await });
        (url, bodies)
    }

    #[tokio::test]
    async fn while_the_dashboard_is_down_batches_wait_on_disk_and_arrive_after_it_and_a_restart() {
        use std::sync::atomic::{AtomicBool, Ordering};
        let dir = std::env::temp_dir().join(format!("switchyard-shipper-spool-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let down = Arc::new(AtomicBool::new(true));
        let (url, bodies) = flaky_dashboard(down.clone()).await;
        let config = ShipperConfig {
            url,
            token: "t0ken".into(),
            spool: Some((dir.clone(), 64 << 20)),
        };

        // A gateway ships 300 records during the outage, then stops: all of them are on disk.
        let counters = ShipperCounters::default();
        let cancel = CancellationToken::new();
        let (shipper, task) = spawn(config.clone(), counters.clone(), cancel.clone()).await.unwrap();
        for i in 0..300 {
            shipper.ship(sample(i));
        }
        wait_for("300 spooled", || counters.spooled.get() == 300).await;
        assert_eq!((counters.shipped.get(), counters.dropped.get()), (0, 0));
        assert!(counters.spool_bytes.get() > 0);
        cancel.cancel();
        task.await.unwrap();

        // The dashboard is back; the restarted gateway resends what waited, and ships new records too.
        down.store(false, Ordering::SeqCst);
        let counters = ShipperCounters::default();
        let cancel = CancellationToken::new();
        let (shipper, task) = spawn(config, counters.clone(), cancel.clone()).await.unwrap();
        for i in 300..310 {
            shipper.ship(sample(i));
        }
        wait_for("310 shipped", || counters.shipped.get() == 310).await;
        assert_eq!((counters.dropped.get(), counters.spool_bytes.get()), (0, 0));
        let mut pods: Vec<String> = bodies
            .lock()
            .unwrap()
            .iter()
            .flat_map(|b| b.lines().map(str::to_owned).collect::<Vec<_>>())
            .collect();
        pods.sort();
        pods.dedup();
        assert_eq!(pods.len(), 310, "every record arrived, none twice");
        assert_eq!(
            std::fs::read_dir(&dir).unwrap().count(),
            0,
            "the spool is empty on disk"
        );
        cancel.cancel();
        task.await.unwrap();
    }
}
