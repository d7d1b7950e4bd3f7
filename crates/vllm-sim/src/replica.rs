//! One simulated replica: the engine behind a mutex, the async loop that paces its steps against an absolute
//! (scaled) wall-clock schedule, request submission with abort-on-drop, and the handle used to observe and stop it.
//!
//! Simulated time belongs to the engine: while busy its clock advances by exactly its own step durations, and the
//! wall clock only decides *when* a step's tokens are delivered (`origin + clock / time_scale`). Wall overshoot
//! between steps (timer granularity, token delivery, locks) therefore delays delivery a little but never lengthens
//! simulated time, so results do not depend on the time scale.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use tokio::sync::{Notify, mpsc, watch};
use tokio::task::JoinHandle;
use tokio::time::Instant;

use crate::config::{ConfigError, ReplicaConfig};
use crate::engine::{Emission, Engine, EngineSnapshot, LoraId, NewRequest, RequestError, RequestId};
use crate::kv_publisher::KvPublisher;

/// Half of tokio's timer resolution (1 ms).
const HALF_TIMER_TICK: Duration = Duration::from_micros(500);

/// Why a replica could not be started.
#[derive(Debug, thiserror::Error)]
pub enum SpawnError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error("cannot read the listener's address: {0}")]
    Io(#[from] std::io::Error),
    #[error(transparent)]
    KvEvents(#[from] crate::kv_publisher::PublisherError),
}

/// Why a request was not queued.
#[derive(Debug, thiserror::Error)]
pub(crate) enum SubmitError {
    #[error(transparent)]
    Invalid(#[from] RequestError),
    #[error("the engine is shutting down")]
    Closed,
}

/// Request counters of one replica, for assertions in tests and benchmarks.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ReplicaStats {
    /// Requests accepted into the engine.
    pub requests_received: u64,
    /// Requests that ran to completion and were delivered.
    pub requests_completed: u64,
    /// Requests whose client went away before completion.
    pub requests_aborted: u64,
    /// Requests refused with a 4xx.
    pub requests_rejected: u64,
    /// Requests answered with an injected HTTP 500 ([`crate::Fault::error_rate`]).
    pub requests_failed: u64,
}

#[derive(Debug, Default)]
pub(crate) struct Counters {
    received: AtomicU64,
    completed: AtomicU64,
    aborted: AtomicU64,
    pub(crate) rejected: AtomicU64,
    pub(crate) failed: AtomicU64,
}

#[derive(Debug)]
struct State {
    engine: Engine,
    /// Where each live request's tokens go.
    senders: HashMap<RequestId, mpsc::UnboundedSender<Emission>>,
    /// Simulated time at which work arrived for an idle engine: its clock jumps there before the next step.
    woken_at: Option<f64>,
    closed: bool,
}

/// State shared by the HTTP handlers and the engine loop.
#[derive(Debug)]
pub(crate) struct Shared {
    pub(crate) cfg: ReplicaConfig,
    state: Mutex<State>,
    work: Notify,
    /// Bumped whenever the engine's state may have changed (a request queued, a step taken, one aborted), so a
    /// caller can wait for a state instead of polling for it.
    changes: watch::Sender<u64>,
    pub(crate) counters: Counters,
    origin: Instant,
    id_prefix: String,
    next_response_id: AtomicU64,
    loras: HashMap<String, LoraId>,
    /// Draws which requests fail when an error rate is injected.
    fault_rng: Mutex<SmallRng>,
    /// Sends each step's KV events, when `--kv-events-config` asks for them.
    kv_publisher: Option<KvPublisher>,
}

impl Shared {
    fn new(cfg: ReplicaConfig) -> Result<Self, ConfigError> {
        cfg.validate()?;
        let mut engine = Engine::new(cfg.engine.clone())?;
        engine.set_slowdown(cfg.fault.slowdown);
        engine.set_filler_token(cfg.prompts.filler());
        let mut rng = match cfg.seed {
            Some(seed) => SmallRng::seed_from_u64(seed),
            None => SmallRng::from_os_rng(),
        };
        let id_prefix = format!("{:08x}", rng.random::<u32>());
        let fault_rng = Mutex::new(SmallRng::seed_from_u64(rng.random()));
        let loras = cfg
            .lora_adapters
            .iter()
            .enumerate()
            .map(|(i, n)| (n.clone(), i as LoraId))
            .collect();
        Ok(Self {
            cfg,
            state: Mutex::new(State {
                engine,
                senders: HashMap::new(),
                woken_at: None,
                closed: false,
            }),
            work: Notify::new(),
            changes: watch::Sender::new(0),
            counters: Counters::default(),
            origin: Instant::now(),
            id_prefix,
            next_response_id: AtomicU64::new(0),
            loras,
            fault_rng,
            kv_publisher: None,
        })
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // A panic while holding the lock leaves a consistent-enough engine for a simulator.
        self.state.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Simulated seconds since the replica started, read off the wall clock (the engine's own clock may lag it).
    pub(crate) fn sim_now(&self) -> f64 {
        self.origin.elapsed().as_secs_f64() * self.cfg.time_scale
    }

    /// The wall instant at which simulated time `sim` is due.
    fn wall_at(&self, sim: f64) -> Instant {
        self.origin + Duration::from_secs_f64(sim.max(0.0) / self.cfg.time_scale)
    }

    /// `None` for the base model, the adapter for a LoRA name, `Err` for an unknown model.
    pub(crate) fn resolve_model(&self, name: &str) -> Result<Option<LoraId>, ()> {
        if name == self.cfg.served_model_name {
            Ok(None)
        } else {
            self.loras.get(name).copied().map(Some).ok_or(())
        }
    }

    /// Whether this request is one of the injected failures; counts it if so.
    pub(crate) fn inject_error(&self, model: &str) -> bool {
        let fault = &self.cfg.fault;
        if fault.error_rate <= 0.0 || fault.error_model.as_deref().is_some_and(|only| only != model) {
            return false;
        }
        let rate = fault.error_rate;
        let fail = self
            .fault_rng
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .random_bool(rate.min(1.0));
        if fail {
            self.counters.failed.fetch_add(1, Ordering::Relaxed);
        }
        fail
    }

    /// A fresh response id such as `cmpl-1a2b3c4d-17`.
    pub(crate) fn response_id(&self, kind: &str) -> String {
        let n = self.next_response_id.fetch_add(1, Ordering::Relaxed);
        format!("{kind}-{}-{n}", self.id_prefix)
    }

    /// How long a request for `model` with a `prompt_tokens`-long prompt is held before the engine, in wall time:
    /// `(slow_factor − 1) ×` its solo prefill (stretched by any [`crate::Fault::slowdown`], which an idle engine
    /// would pay too) when it is one of the slow ones ([`crate::Fault::slow_factor`]), zero otherwise.
    pub(crate) fn slow_wait(&self, model: &str, prompt_tokens: usize) -> Duration {
        let fault = &self.cfg.fault;
        if fault.slow_factor <= 1.0 || fault.slow_model.as_deref().is_some_and(|only| only != model) {
            return Duration::ZERO;
        }
        let engine = &self.cfg.engine;
        let solo_ms = engine
            .profile
            .model()
            .solo_prefill_ms(prompt_tokens as u64, u64::from(engine.max_num_batched_tokens));
        let sim_ms = (fault.slow_factor - 1.0) * solo_ms * fault.slowdown;
        Duration::from_secs_f64(sim_ms / 1000.0 / self.cfg.time_scale)
    }

    /// Queues a request for `model` that arrived at simulated time `received`, first holding it for its
    /// [`Shared::slow_wait`]. The wait counts in the request's TTFT, as a slow front end's would; the wall time spent
    /// between `received` and the engine (reading, parsing, tokenizing) does not.
    pub(crate) async fn admit(
        self: &Arc<Self>,
        model: &str,
        req: NewRequest,
        received: f64,
    ) -> Result<Submission, SubmitError> {
        let wait = self.slow_wait(model, req.prompt.len());
        if !wait.is_zero() {
            tokio::time::sleep(wait).await;
        }
        let ready = received + wait.as_secs_f64() * self.cfg.time_scale;
        self.submit_at(req, received, ready)
    }

    /// Queues a request arriving now, skipping any injected wait (the engine-pacing tests).
    #[cfg(test)]
    fn submit(self: &Arc<Self>, req: NewRequest) -> Result<Submission, SubmitError> {
        let now = self.sim_now();
        self.submit_at(req, now, now)
    }

    /// Queues a request that arrived at simulated time `arrival` and could be scheduled from `ready` on (both now or
    /// earlier); its tokens arrive on the returned receiver as engine steps complete.
    fn submit_at(self: &Arc<Self>, req: NewRequest, arrival: f64, ready: f64) -> Result<Submission, SubmitError> {
        let (tx, rx) = mpsc::unbounded_channel();
        let id = {
            let mut st = self.lock();
            if st.closed {
                return Err(SubmitError::Closed);
            }
            let arrival = if st.engine.has_work() {
                // A busy engine that lags the wall is delivering the step ending at its clock right now, so in
                // its time the request arrives no later than that.
                arrival.min(st.engine.clock())
            } else {
                // An idle engine starts when the earliest of the requests that woke it was ready.
                st.woken_at = Some(st.woken_at.map_or(ready, |t| t.min(ready)));
                arrival
            };
            let id = st.engine.add_request(req, arrival)?;
            st.senders.insert(id, tx);
            id
        };
        self.counters.received.fetch_add(1, Ordering::Relaxed);
        self.changed();
        self.work.notify_one();
        Ok(Submission {
            rx,
            guard: AbortGuard {
                shared: Arc::clone(self),
                id,
                armed: true,
            },
        })
    }

    pub(crate) fn snapshot(&self) -> EngineSnapshot {
        self.lock().engine.snapshot()
    }

    fn changed(&self) {
        self.changes.send_modify(|n| *n = n.wrapping_add(1));
    }

    pub(crate) fn stats(&self) -> ReplicaStats {
        ReplicaStats {
            requests_received: self.counters.received.load(Ordering::Relaxed),
            requests_completed: self.counters.completed.load(Ordering::Relaxed),
            requests_aborted: self.counters.aborted.load(Ordering::Relaxed),
            requests_rejected: self.counters.rejected.load(Ordering::Relaxed),
            requests_failed: self.counters.failed.load(Ordering::Relaxed),
        }
    }

    fn abort(&self, id: RequestId) {
        let aborted = {
            let mut st = self.lock();
            st.senders.remove(&id);
            st.engine.abort(id)
        };
        if aborted {
            self.counters.aborted.fetch_add(1, Ordering::Relaxed);
            self.changed();
            tracing::debug!(request = id.0, "client went away, request aborted");
            // Freed blocks may unblock waiting requests.
            self.work.notify_one();
        }
    }

    /// The engine loop: step, wait until the step's end is due on the wall clock, deliver its tokens.
    async fn drive(self: Arc<Self>, mut shutdown: watch::Receiver<bool>) {
        loop {
            let (outcome, due) = {
                let mut st = self.lock();
                if let Some(woken_at) = st.woken_at.take() {
                    st.engine.advance_clock_to(woken_at);
                }
                let outcome = st.engine.step();
                (outcome, self.wall_at(st.engine.clock()))
            };
            if outcome.is_idle() {
                tokio::select! {
                    () = self.work.notified() => continue,
                    _ = shutdown.wait_for(|&stop| stop) => break,
                }
            }
            self.changed();
            if outcome.duration_ms > 0.0 {
                // Absolute schedule: a late wake-up shortens the next wait instead of stretching simulated time.
                // Tokio's timer fires on the first millisecond tick at or after its deadline, half a tick late on
                // average; aiming half a tick early makes delivery unbiased, which matters once a millisecond of
                // wall time is 25 simulated ones.
                let wake = due.checked_sub(HALF_TIMER_TICK).unwrap_or(due);
                tokio::select! {
                    () = tokio::time::sleep_until(wake) => {}
                    _ = shutdown.wait_for(|&stop| stop) => break,
                }
            } else {
                // Zero-time steps must still let the HTTP side run.
                tokio::task::yield_now().await;
            }
            let mut completed = 0;
            {
                let mut st = self.lock();
                for em in outcome.emitted {
                    let id = em.id;
                    let finished = em.finish.is_some();
                    if let Some(tx) = st.senders.get(&id) {
                        let _ = tx.send(em);
                        if finished {
                            st.senders.remove(&id);
                            completed += 1;
                        }
                    }
                }
            }
            self.counters.completed.fetch_add(completed, Ordering::Relaxed);
            // After the step's tokens: vLLM publishes a step's events once the step is done.
            if let Some(publisher) = &self.kv_publisher {
                publisher.publish(outcome.kv_events);
            }
        }
        let mut st = self.lock();
        st.closed = true;
        // Dropping the senders ends every pending response.
        st.senders.clear();
    }
}

/// A queued request: its token stream plus the guard that aborts it if dropped early.
#[derive(Debug)]
pub(crate) struct Submission {
    pub(crate) rx: mpsc::UnboundedReceiver<Emission>,
    pub(crate) guard: AbortGuard,
}

/// Aborts the request in the engine (freeing its KV blocks) when dropped before completion, which is
/// what happens when a client disconnects: axum drops the handler future or the response stream.
#[derive(Debug)]
pub(crate) struct AbortGuard {
    shared: Arc<Shared>,
    id: RequestId,
    armed: bool,
}

impl AbortGuard {
    /// The request completed; nothing to abort.
    pub(crate) fn disarm(&mut self) {
        self.armed = false;
    }
}

impl Drop for AbortGuard {
    fn drop(&mut self) {
        if self.armed {
            self.shared.abort(self.id);
        }
    }
}

/// A running replica. Dropping it (or calling [`ReplicaHandle::shutdown`]) stops the engine and the
/// HTTP server; in-flight responses end early.
#[derive(Debug)]
pub struct ReplicaHandle {
    addr: SocketAddr,
    shared: Arc<Shared>,
    stop: watch::Sender<bool>,
    tasks: Vec<JoinHandle<()>>,
}

impl ReplicaHandle {
    /// Address the replica listens on.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Where the replica publishes KV events (`tcp://ip:port`), when it does and binds.
    pub fn kv_events_endpoint(&self) -> Option<&str> {
        self.shared.kv_publisher.as_ref()?.endpoint.as_deref()
    }

    /// Where the replica answers KV-event replay requests, when configured.
    pub fn kv_replay_endpoint(&self) -> Option<&str> {
        self.shared.kv_publisher.as_ref()?.replay_endpoint.as_deref()
    }

    /// `http://ip:port`, for building request URLs.
    pub fn base_url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Request counters so far.
    pub fn stats(&self) -> ReplicaStats {
        self.shared.stats()
    }

    /// Current engine state (queue lengths, KV usage, cumulative metrics).
    pub fn engine_snapshot(&self) -> EngineSnapshot {
        self.shared.snapshot()
    }

    /// A receiver that changes whenever the engine's state may have (a request queued, a step taken, one
    /// aborted): wait on it for an [`ReplicaHandle::engine_snapshot`] condition instead of polling.
    pub fn engine_changes(&self) -> watch::Receiver<u64> {
        self.shared.changes.subscribe()
    }

    /// Stops the replica and waits for its engine loop and server to finish.
    pub async fn shutdown(mut self) {
        let _ = self.stop.send(true);
        for task in std::mem::take(&mut self.tasks) {
            let _ = task.await;
        }
    }
}

impl Drop for ReplicaHandle {
    fn drop(&mut self) {
        let _ = self.stop.send(true);
    }
}

/// Starts a replica serving on `listener` (bind it to `127.0.0.1:0` in tests) and returns once it accepts
/// connections. Must be called inside a tokio runtime.
pub async fn spawn_replica(cfg: ReplicaConfig, listener: tokio::net::TcpListener) -> Result<ReplicaHandle, SpawnError> {
    let addr = listener.local_addr()?;
    let (stop, stop_rx) = watch::channel(false);
    let kv_events = cfg.kv_events.clone();
    let mut shared = Shared::new(cfg)?;
    if let Some(config) = kv_events {
        let host = match addr.ip() {
            std::net::IpAddr::V4(ip) => ip,
            std::net::IpAddr::V6(_) => std::net::Ipv4Addr::LOCALHOST,
        };
        let publisher = crate::kv_publisher::spawn(&config, host, stop_rx.clone()).await?;
        tracing::info!(
            %addr,
            endpoint = publisher.endpoint.as_deref().unwrap_or(&config.endpoint),
            replay = publisher.replay_endpoint.as_deref().unwrap_or("off"),
            "publishing kv events"
        );
        shared.lock().engine.record_kv_events();
        shared.kv_publisher = Some(publisher);
    }
    let shared = Arc::new(shared);

    let driver = tokio::spawn(Arc::clone(&shared).drive(stop_rx.clone()));
    let app = crate::server::router(Arc::clone(&shared));
    let mut server_stop = stop_rx;
    let server = tokio::spawn(async move {
        use axum::serve::ListenerExt as _;
        let listener = listener.tap_io(|tcp| {
            // Token-sized SSE writes must not wait for Nagle.
            let _ = tcp.set_nodelay(true);
        });
        let result = axum::serve(listener, app)
            .with_graceful_shutdown(async move {
                let _ = server_stop.wait_for(|&stop| stop).await;
            })
            .await;
        if let Err(err) = result {
            tracing::error!(%addr, error = %err, "replica server failed");
        }
    });
    Ok(ReplicaHandle {
        addr,
        shared,
        stop,
        tasks: vec![driver, server],
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::profile::Profile;

    fn shared(time_scale: f64) -> (Arc<Shared>, watch::Sender<bool>, JoinHandle<()>) {
        shared_with(time_scale, crate::Fault::default())
    }

    fn shared_with(time_scale: f64, fault: crate::Fault) -> (Arc<Shared>, watch::Sender<bool>, JoinHandle<()>) {
        let mut cfg = ReplicaConfig {
            time_scale,
            fault,
            seed: Some(7),
            ..ReplicaConfig::default()
        };
        cfg.engine.profile = Profile::Qwq32b4xA10;
        let shared = Arc::new(Shared::new(cfg).unwrap());
        let (stop, rx) = watch::channel(false);
        let driver = tokio::spawn(Arc::clone(&shared).drive(rx));
        (shared, stop, driver)
    }

    /// Arrival time (ms since `t0`) of each token of a request.
    async fn token_times(sub: &mut Submission, t0: Instant) -> Vec<u128> {
        let mut times = Vec::new();
        while let Some(em) = sub.rx.recv().await {
            if em.token.is_some() {
                times.push(t0.elapsed().as_millis());
            }
            if em.finish.is_some() {
                sub.guard.disarm();
                break;
            }
        }
        times
    }

    #[tokio::test(start_paused = true)]
    async fn steps_are_paced_by_the_profile() {
        let (shared, stop, driver) = shared(1.0);
        let t0 = Instant::now();
        let mut sub = shared
            .submit(NewRequest {
                prompt: vec![1; 1000],
                max_tokens: 3,
                lora: None,
            })
            .unwrap();
        let times = token_times(&mut sub, t0).await;
        // Prefill of 1000 tokens ≈ 440 ms, then decode steps ≈ 43 ms each.
        assert_eq!(times.len(), 3);
        assert!((435..=445).contains(&times[0]), "{times:?}");
        assert!((40..=46).contains(&(times[1] - times[0])), "{times:?}");
        assert!((40..=46).contains(&(times[2] - times[1])), "{times:?}");
        let m = shared.snapshot().metrics;
        assert!((m.ttft.sum() - 0.44).abs() < 0.01, "ttft {}", m.ttft.sum());
        assert_eq!(shared.stats().requests_completed, 1);
        let _ = stop.send(true);
        driver.await.unwrap();
        assert!(matches!(
            shared.submit(NewRequest {
                prompt: vec![1],
                max_tokens: 1,
                lora: None
            }),
            Err(SubmitError::Closed)
        ));
    }

    #[tokio::test(start_paused = true)]
    async fn time_scale_compresses_wall_time_not_simulated_time() {
        let (shared, _stop, _driver) = shared(10.0);
        let t0 = Instant::now();
        let mut sub = shared
            .submit(NewRequest {
                prompt: vec![1; 1000],
                max_tokens: 1,
                lora: None,
            })
            .unwrap();
        let times = token_times(&mut sub, t0).await;
        assert!((43..=45).contains(&times[0]), "{times:?}");
        // Metrics stay in simulated seconds.
        assert!((shared.snapshot().metrics.ttft.sum() - 0.44).abs() < 0.01);
    }

    /// Real time, one thread, and a task that hogs it for a few milliseconds at a time: every step's wake-up is
    /// late (by up to 75 simulated ms at 25×). Simulated step times must still be the step model's.
    #[tokio::test(flavor = "current_thread")]
    async fn wall_overshoot_never_stretches_simulated_time() {
        let (shared, _stop, _driver) = shared(25.0);
        let hog = tokio::spawn(async {
            loop {
                std::thread::sleep(Duration::from_millis(3)); // tidy: sleep is the test: it hogs the thread
                tokio::task::yield_now().await;
            }
        });
        let t0 = Instant::now();
        let mut sub = shared
            .submit(NewRequest {
                prompt: vec![1; 1000],
                max_tokens: 40,
                lora: None,
            })
            .unwrap();
        let times = token_times(&mut sub, t0).await;
        hog.abort();
        assert_eq!(times.len(), 40);
        let m = shared.snapshot().metrics;
        // 39 decode steps of one sequence: 7 + 35.6 + 0.213 + 0.10 + 0.16 × context/1000 ≈ 43.1 ms each.
        let tpot_ms = m.tpot.sum() / m.tpot.count() as f64 * 1000.0;
        assert!((42.9..=43.5).contains(&tpot_ms), "simulated TPOT {tpot_ms} ms");
        assert!((m.ttft.sum() - 0.44).abs() < 0.01, "simulated TTFT {}", m.ttft.sum());
    }

    #[tokio::test(start_paused = true)]
    async fn slowdown_stretches_every_step() {
        let fault = crate::Fault {
            slowdown: 2.0,
            ..crate::Fault::default()
        };
        let (shared, _stop, _driver) = shared_with(1.0, fault);
        let t0 = Instant::now();
        let mut sub = shared
            .submit(NewRequest {
                prompt: vec![1; 1000],
                max_tokens: 2,
                lora: None,
            })
            .unwrap();
        let times = token_times(&mut sub, t0).await;
        // Twice the healthy 440 ms prefill and 43 ms decode step.
        assert!((870..=890).contains(&times[0]), "{times:?}");
        assert!((80..=92).contains(&(times[1] - times[0])), "{times:?}");
    }

    /// A replica serving `qwq-32b` and the adapter `v2`, whose `v2` requests are three times slower to start.
    fn slow_v2(time_scale: f64) -> (Arc<Shared>, watch::Sender<bool>, JoinHandle<()>) {
        let mut cfg = ReplicaConfig {
            time_scale,
            lora_adapters: vec!["v2".into()],
            fault: crate::Fault {
                slow_model: Some("v2".into()),
                slow_factor: 3.0,
                ..crate::Fault::default()
            },
            seed: Some(7),
            ..ReplicaConfig::default()
        };
        cfg.engine.max_loras = 1;
        let shared = Arc::new(Shared::new(cfg).unwrap());
        let (stop, rx) = watch::channel(false);
        let driver = tokio::spawn(Arc::clone(&shared).drive(rx));
        (shared, stop, driver)
    }

    fn prompt_of(tokens: usize, lora: Option<LoraId>) -> NewRequest {
        NewRequest {
            prompt: vec![1; tokens],
            max_tokens: 2,
            lora,
        }
    }

    #[tokio::test(start_paused = true)]
    async fn the_slow_model_starts_factor_times_later_and_the_others_do_not() {
        let (shared, _stop, _driver) = slow_v2(1.0);
        assert_eq!(shared.slow_wait("qwq-32b", 1000), Duration::ZERO);
        let wait = shared.slow_wait("v2", 1000).as_secs_f64();
        assert!(
            (wait - 0.88).abs() < 0.02,
            "two extra solo prefills of 440 ms, got {wait}"
        );

        // Both arrive together; the base request is served as if the slow one were not there.
        let t0 = Instant::now();
        let (slow, base) = tokio::join!(
            async {
                let mut sub = shared
                    .admit("v2", prompt_of(1000, Some(0)), shared.sim_now())
                    .await
                    .unwrap();
                token_times(&mut sub, t0).await
            },
            async {
                let mut sub = shared
                    .admit("qwq-32b", prompt_of(1000, None), shared.sim_now())
                    .await
                    .unwrap();
                token_times(&mut sub, t0).await
            },
        );
        assert!((435..=445).contains(&base[0]), "healthy 440 ms TTFT, got {base:?}");
        assert!((1310..=1330).contains(&slow[0]), "3 × 440 ms, got {slow:?}");
        assert!(
            (40..=46).contains(&(slow[1] - slow[0])),
            "decodes keep their speed: {slow:?}"
        );
        // The engine's own TTFT histogram counts the wait, as vLLM's does for a slow front end.
        let ttft = shared.snapshot().metrics.ttft;
        assert_eq!(ttft.count(), 2);
        assert!((ttft.sum() - (0.44 + 1.32)).abs() < 0.03, "ttft sum {}", ttft.sum());
    }

    #[tokio::test(start_paused = true)]
    async fn the_slow_wait_follows_time_scale_and_slowdown() {
        let (shared, _stop, _driver) = slow_v2(10.0);
        let t0 = Instant::now();
        let mut sub = shared
            .admit("v2", prompt_of(1000, Some(0)), shared.sim_now())
            .await
            .unwrap();
        let times = token_times(&mut sub, t0).await;
        assert!(
            (130..=134).contains(&times[0]),
            "1320 simulated ms at 10×, got {times:?}"
        );

        let cfg = ReplicaConfig {
            fault: crate::Fault {
                slowdown: 2.0,
                slow_factor: 4.0,
                ..crate::Fault::default()
            },
            ..ReplicaConfig::default()
        };
        let every_model = Shared::new(cfg).unwrap();
        let wait = every_model.slow_wait("anything", 1000).as_secs_f64();
        assert!(
            (wait - 3.0 * 0.88).abs() < 0.05,
            "3 extra prefills at half speed, got {wait}"
        );
    }

    #[test]
    fn injected_errors_follow_the_rate_and_are_counted() {
        let healthy = Shared::new(ReplicaConfig::default()).unwrap();
        assert!((0..1000).all(|_| !healthy.inject_error("qwq-32b")));
        assert_eq!(healthy.stats().requests_failed, 0);

        let cfg = ReplicaConfig {
            fault: crate::Fault {
                error_rate: 0.3,
                ..crate::Fault::default()
            },
            seed: Some(1),
            ..ReplicaConfig::default()
        };
        let faulty = Shared::new(cfg).unwrap();
        let failed = (0..2000).filter(|_| faulty.inject_error("qwq-32b")).count();
        assert!((500..=700).contains(&failed), "{failed} of 2000 failed at rate 0.3");
        assert_eq!(faulty.stats().requests_failed, failed as u64);

        let cfg = ReplicaConfig {
            fault: crate::Fault {
                error_rate: 1.0,
                error_model: Some("v2".into()),
                ..crate::Fault::default()
            },
            ..ReplicaConfig::default()
        };
        let scoped = Shared::new(cfg).unwrap();
        assert!(!scoped.inject_error("qwq-32b"), "other models are served");
        assert!(scoped.inject_error("v2"));
    }

    #[tokio::test(start_paused = true)]
    async fn dropping_a_submission_aborts_and_frees_blocks() {
        let (shared, _stop, _driver) = shared(1.0);
        let mut sub = shared
            .submit(NewRequest {
                prompt: vec![1; 3000],
                max_tokens: 500,
                lora: None,
            })
            .unwrap();
        assert!(sub.rx.recv().await.is_some_and(|em| em.token == Some(0)));
        assert_eq!(shared.snapshot().running, 1);
        drop(sub);
        let snap = shared.snapshot();
        assert_eq!((snap.running, snap.waiting, snap.kv_usage), (0, 0, 0.0));
        assert_eq!(shared.stats().requests_aborted, 1);
    }
}
