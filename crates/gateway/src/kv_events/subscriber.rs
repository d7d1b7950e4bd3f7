//! Subscribes to the KV events of every pod of the served pool (pod discovery: `tcp://<pod IP>:<port>`, one task
//! per pod, started and stopped with the datastore's snapshots like the scraper) and keeps the precise index and
//! each pod's [`Mode`] up to date.
//!
//! Each task follows its [`PodStream`]: gaps are replayed from the pod's replay socket when one is configured,
//! losses and silence turn the pod approximate, visibly (a log line, the `kv_events_mode` gauge), and a restarted
//! engine or `AllBlocksCleared` makes it precise again.

use std::{
    collections::{HashMap, HashSet},
    net::IpAddr,
    num::NonZeroU32,
    sync::{
        Arc, Mutex, PoisonError, RwLock,
        atomic::{AtomicU32, Ordering},
    },
    time::{Duration, Instant},
};

use bytes::Bytes;
use prometheus_client::{
    encoding::EncodeLabelSet,
    metrics::{counter::Counter, family::Family, gauge::Gauge},
    registry::Registry,
};
use scheduler::{
    EndpointId,
    prefix::precise::{BlockKey, PreciseIndex},
};
use tokio::{sync::watch, task::JoinHandle};
use tokio_util::sync::CancellationToken;
use zeromq::{Socket as _, SocketRecv as _, SocketSend as _, ZmqMessage};

use super::{
    decode::{Event, decode},
    stream::{Mode, PodStream, Verdict},
};
use crate::datastore::{EndpointView, Snapshot};

/// Where and how to subscribe.
#[derive(Clone, Debug)]
pub struct SubscriberConfig {
    /// The port every pod publishes on (vLLM's `--kv-events-config` `endpoint`, e.g. 5557).
    pub port: u16,
    /// The port of every pod's replay socket (`replay_endpoint`), if they have one.
    pub replay_port: Option<u16>,
    /// Topic prefix to subscribe to; empty for every topic.
    pub topic: String,
    /// A pod publishing nothing for this long is scored approximately until it does.
    pub silence: Duration,
}

/// Bound on one replay exchange.
const REPLAY_TIMEOUT: Duration = Duration::from_secs(2);
/// Batches accepted from one replay; a replay socket is bounded by its `buffer_steps` anyway.
const MAX_REPLAYED: usize = 100_000;
/// First wait before connecting again to a pod whose publisher refused.
const FIRST_RETRY: Duration = Duration::from_millis(100);
const MAX_RETRY: Duration = Duration::from_secs(5);

/// What the subscribers maintain and the router reads.
#[derive(Debug, Default)]
pub struct KvState {
    pub index: Mutex<PreciseIndex>,
    modes: RwLock<HashMap<EndpointId, Mode>>,
    /// Bumped whenever a pod's mode changes or a batch is applied, for readers that wait instead of polling.
    changes: watch::Sender<u64>,
    metrics: KvMetrics,
    /// Tokens per block in the engines' latest `BlockStored` (0 before any): the size a prompt is cut into.
    block_size: AtomicU32,
}

impl KvState {
    /// How `pod` is scored now; approximate when it has no subscriber.
    pub fn mode(&self, pod: &EndpointId) -> Mode {
        self.modes
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .get(pod)
            .cloned()
            .unwrap_or(Mode::Approximate(super::stream::Cause::NoEventsYet))
    }

    /// Tokens per KV block, as the engines last reported; `None` before the first stored block.
    pub fn block_size(&self) -> Option<u32> {
        NonZeroU32::new(self.block_size.load(Ordering::Relaxed)).map(NonZeroU32::get)
    }

    /// For each of `pods`, how many leading blocks of `keys` its engine reports resident, or `None` when the pod
    /// is scored approximately now (no trusted event stream).
    pub fn precise_prefixes(&self, keys: &[BlockKey], pods: &[EndpointId]) -> Vec<Option<u32>> {
        let precise: Vec<bool> = {
            let modes = self.modes.read().unwrap_or_else(PoisonError::into_inner);
            pods.iter().map(|pod| modes.get(pod) == Some(&Mode::Precise)).collect()
        };
        if !precise.contains(&true) {
            return vec![None; pods.len()];
        }
        let depths = self
            .index
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .prefix_depths(keys, pods);
        depths
            .into_iter()
            .zip(precise)
            .map(|(depth, precise)| precise.then_some(depth))
            .collect()
    }

    /// Notified after every applied batch and mode change.
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.changes.subscribe()
    }

    /// Registers the per-pod counters and the mode gauge.
    pub fn register_metrics(&self, registry: &mut Registry) {
        registry.register(
            "kv_events_received",
            "KV-event batches received from each pod (live and replayed)",
            self.metrics.received.clone(),
        );
        registry.register(
            "kv_events_gaps",
            "Gaps in a pod's KV-event sequence (replayed or lost), undecodable batches included",
            self.metrics.gaps.clone(),
        );
        registry.register(
            "kv_events_mode",
            "1 when a pod is scored on its engine's KV events (precise), 0 when approximately",
            self.metrics.mode.clone(),
        );
    }

    fn set_mode(&self, id: &EndpointId, labels: &PodLabel, mode: Mode) {
        let previous = self
            .modes
            .write()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(id.clone(), mode.clone());
        self.metrics
            .mode
            .get_or_create(labels)
            .set(i64::from(mode == Mode::Precise));
        if previous.as_ref() != Some(&mode) {
            match &mode {
                Mode::Precise => tracing::info!(pod = %labels.pod, endpoint = %id, "kv events: precise"),
                Mode::Approximate(cause) => {
                    tracing::warn!(pod = %labels.pod, endpoint = %id, %cause, "kv events: approximate")
                }
            }
        }
        self.changed();
    }

    fn forget(&self, id: &EndpointId, labels: &PodLabel) {
        self.modes.write().unwrap_or_else(PoisonError::into_inner).remove(id);
        self.index.lock().unwrap_or_else(PoisonError::into_inner).remove_pod(id);
        self.metrics.mode.remove(labels);
        self.changed();
    }

    fn changed(&self) {
        self.changes.send_modify(|n| *n = n.wrapping_add(1));
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct PodLabel {
    pod: String,
}

#[derive(Debug, Default)]
struct KvMetrics {
    received: Family<PodLabel, Counter>,
    gaps: Family<PodLabel, Counter>,
    mode: Family<PodLabel, Gauge>,
}

/// Keeps one subscriber per pod of the latest snapshot until `cancel` fires.
pub async fn run(
    mut snapshots: watch::Receiver<Arc<Snapshot>>,
    state: Arc<KvState>,
    config: SubscriberConfig,
    cancel: CancellationToken,
) {
    let mut tasks: HashMap<EndpointId, (CancellationToken, JoinHandle<()>, PodLabel)> = HashMap::new();
    loop {
        let snapshot = snapshots.borrow_and_update().clone();
        let wanted: HashMap<&EndpointId, &EndpointView> = snapshot.endpoints().iter().map(|e| (&e.id, e)).collect();
        let gone: HashSet<EndpointId> = tasks.keys().filter(|id| !wanted.contains_key(id)).cloned().collect();
        for id in gone {
            if let Some((token, handle, labels)) = tasks.remove(&id) {
                token.cancel();
                handle.abort();
                state.forget(&id, &labels);
                tracing::debug!(endpoint = %id, "stopped following kv events");
            }
        }
        for (id, view) in wanted {
            if tasks.contains_key(id) {
                continue;
            }
            let Some(ip) = host_of(id) else {
                continue;
            };
            let labels = PodLabel {
                pod: view.pod.as_str().to_owned(),
            };
            let token = cancel.child_token();
            let follower = Follower {
                id: id.clone(),
                labels: labels.clone(),
                ip,
                config: config.clone(),
                state: state.clone(),
                stream: PodStream::new(),
            };
            state.set_mode(id, &labels, follower.stream.mode().clone());
            tasks.insert(id.clone(), (token.clone(), tokio::spawn(follower.run(token)), labels));
        }
        tokio::select! {
            changed = snapshots.changed() => if changed.is_err() { break },
            () = cancel.cancelled() => break,
        }
    }
    for (_, (token, handle, _)) in tasks {
        token.cancel();
        let _ = handle.await;
    }
}

fn host_of(id: &EndpointId) -> Option<IpAddr> {
    id.as_str().parse::<std::net::SocketAddr>().ok().map(|a| a.ip())
}

fn endpoint(ip: IpAddr, port: u16) -> String {
    match ip {
        IpAddr::V4(ip) => format!("tcp://{ip}:{port}"),
        IpAddr::V6(ip) => format!("tcp://[{ip}]:{port}"),
    }
}

/// One pod's subscriber.
struct Follower {
    id: EndpointId,
    labels: PodLabel,
    ip: IpAddr,
    config: SubscriberConfig,
    state: Arc<KvState>,
    stream: PodStream,
}

impl Follower {
    async fn run(mut self, cancel: CancellationToken) {
        let Some(mut socket) = self.connect(&cancel).await else {
            return;
        };
        let mut silence = tokio::time::interval(
            self.config
                .silence
                .min(Duration::from_secs(1))
                .max(Duration::from_millis(10)),
        );
        loop {
            tokio::select! {
                message = socket.recv() => match message {
                    Ok(message) => self.on_message(message).await,
                    Err(error) => {
                        tracing::debug!(endpoint = %self.id, %error, "kv event subscription failed; reconnecting");
                        match self.connect(&cancel).await {
                            Some(fresh) => socket = fresh,
                            None => return,
                        }
                    }
                },
                _ = silence.tick() => {
                    self.stream.check_silence(Instant::now(), self.config.silence);
                    self.publish_mode();
                }
                () = cancel.cancelled() => return,
            }
        }
    }

    /// Connects and subscribes, retrying with back-off until it works or `cancel` fires.
    async fn connect(&self, cancel: &CancellationToken) -> Option<zeromq::SubSocket> {
        let address = endpoint(self.ip, self.config.port);
        let mut wait = FIRST_RETRY;
        loop {
            let mut socket = zeromq::SubSocket::new();
            let attempt = async {
                socket.connect(&address).await?;
                socket.subscribe(&self.config.topic).await
            };
            match attempt.await {
                Ok(()) => {
                    tracing::debug!(endpoint = %self.id, %address, "following kv events");
                    return Some(socket);
                }
                Err(error) => {
                    tracing::debug!(endpoint = %self.id, %address, %error, "kv event publisher not reachable")
                }
            }
            tokio::select! {
                () = tokio::time::sleep(wait) => {}
                () = cancel.cancelled() => return None,
            }
            wait = (wait * 2).min(MAX_RETRY);
        }
    }

    async fn on_message(&mut self, message: ZmqMessage) {
        let frames = message.into_vec();
        let Some(seq) = sequence(&frames) else {
            // Without a sequence number nothing can be placed: a lost batch of unknown number.
            self.gap();
            tracing::warn!(endpoint = %self.id, frames = frames.len(), "kv event message without a sequence number");
            self.stream.malformed();
            self.publish_mode();
            return;
        };
        let payload = frames.last().cloned().unwrap_or_default();
        match self.stream.received(seq, Instant::now()) {
            Verdict::Apply => {
                self.apply(seq, &payload);
            }
            Verdict::Restarted => {
                self.state
                    .index
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .cleared(&self.id);
                self.apply(seq, &payload);
            }
            Verdict::Duplicate => {}
            Verdict::Replay { from } => {
                self.gap();
                let replayed = self.replay(from).await;
                let mut run: Option<(u64, u64)> = None;
                let mut undecodable = None;
                for (replayed_seq, payload) in &replayed {
                    match run {
                        None => run = Some((*replayed_seq, *replayed_seq)),
                        Some((first, last)) if *replayed_seq == last + 1 => run = Some((first, *replayed_seq)),
                        Some(_) => break,
                    }
                    if !self.apply(*replayed_seq, payload) {
                        undecodable = Some(*replayed_seq);
                    }
                }
                if run.is_none_or(|(_, last)| last < seq) && !self.apply(seq, &payload) {
                    // The live batch itself was not in the replay: applied after whatever came back.
                    undecodable = Some(seq);
                }
                self.stream.replayed(from, seq, run);
                if let Some(bad) = undecodable {
                    self.stream.undecodable(bad);
                }
            }
        }
        self.publish_mode();
    }

    /// Applies one batch to the index; an undecodable one is a lost batch (and `false`).
    fn apply(&mut self, seq: u64, payload: &[u8]) -> bool {
        self.state.metrics.received.get_or_create(&self.labels).inc();
        let batch = match decode(payload) {
            Ok(batch) => batch,
            Err(error) => {
                self.gap();
                tracing::warn!(endpoint = %self.id, seq, %error, "undecodable kv event batch");
                self.stream.undecodable(seq);
                return false;
            }
        };
        let mut cleared = false;
        {
            let mut index = self.state.index.lock().unwrap_or_else(PoisonError::into_inner);
            for event in batch.events {
                match event {
                    Event::Stored {
                        hashes,
                        parent,
                        tokens,
                        block_size,
                        lora_id,
                    } => {
                        if let Ok(size) = u32::try_from(block_size) {
                            self.state.block_size.store(size, Ordering::Relaxed);
                        }
                        if let Err(error) = index.stored(&self.id, &hashes, parent, &tokens, block_size, lora_id) {
                            tracing::debug!(endpoint = %self.id, seq, %error, "kv block not indexed");
                        }
                    }
                    Event::Removed { hashes } => index.removed(&self.id, &hashes),
                    Event::Cleared => {
                        index.cleared(&self.id);
                        cleared = true;
                    }
                }
            }
        }
        if cleared {
            self.stream.cleared();
        }
        self.state.changed();
        true
    }

    /// Asks the pod's replay socket for every batch from `from` on, in order; empty without one or on failure.
    async fn replay(&self, from: u64) -> Vec<(u64, Bytes)> {
        let Some(port) = self.config.replay_port else {
            return Vec::new();
        };
        let address = endpoint(self.ip, port);
        let exchange = async {
            let mut dealer = zeromq::DealerSocket::new();
            dealer.connect(&address).await?;
            let request = ZmqMessage::try_from(vec![Bytes::new(), Bytes::copy_from_slice(&from.to_be_bytes())])
                .map_err(|_| zeromq::ZmqError::NoMessage)?;
            dealer.send(request).await?;
            let mut batches = Vec::new();
            while batches.len() < MAX_REPLAYED {
                let frames = dealer.recv().await?.into_vec();
                // [empty delimiter, seq, payload]; the end is seq -1 with an empty payload.
                let Some(seq) = frames.get(1).and_then(|f| <[u8; 8]>::try_from(f.as_ref()).ok()) else {
                    break;
                };
                if i64::from_be_bytes(seq) < 0 {
                    break;
                }
                batches.push((u64::from_be_bytes(seq), frames.get(2).cloned().unwrap_or_default()));
            }
            Ok::<_, zeromq::ZmqError>(batches)
        };
        match tokio::time::timeout(REPLAY_TIMEOUT, exchange).await {
            Ok(Ok(mut batches)) => {
                batches.retain(|(seq, _)| *seq >= from);
                batches.sort_by_key(|(seq, _)| *seq);
                batches
            }
            Ok(Err(error)) => {
                tracing::debug!(endpoint = %self.id, %address, %error, "kv event replay failed");
                Vec::new()
            }
            Err(_) => {
                tracing::debug!(endpoint = %self.id, %address, "kv event replay timed out");
                Vec::new()
            }
        }
    }

    fn gap(&self) {
        self.state.metrics.gaps.get_or_create(&self.labels).inc();
    }

    fn publish_mode(&self) {
        let mode = self.stream.mode().clone();
        if self.state.mode(&self.id) != mode {
            self.state.set_mode(&self.id, &self.labels, mode);
        }
    }
}

/// The sequence number of a `[topic, seq, payload]` message.
fn sequence(frames: &[Bytes]) -> Option<u64> {
    if frames.len() != 3 {
        return None;
    }
    <[u8; 8]>::try_from(frames[1].as_ref()).ok().map(u64::from_be_bytes)
}
