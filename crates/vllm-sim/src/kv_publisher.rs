//! Publishes one replica's KV events over ZeroMQ as vLLM's `ZmqEventPublisher` does: a PUB socket for the live
//! stream and, when configured, a ROUTER socket that replays buffered batches to a subscriber that missed some.
//!
//! The engine hands over each step's events with [`KvPublisher::publish`], which never waits: past
//! `max_queue_size` waiting batches one is dropped and its sequence number skipped, so subscribers see a gap
//! rather than the engine stalling.

use std::{
    collections::VecDeque,
    net::Ipv4Addr,
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::{SystemTime, UNIX_EPOCH},
};

use bytes::Bytes;
use tokio::sync::{mpsc, watch};
use zeromq::{Socket as _, SocketRecv as _, SocketSend as _, ZmqMessage};

use crate::kv_events::{KvEvent, KvEventsConfig, encode_batch};

/// What a replay ends with: sequence -1 and an empty payload, as vLLM sends.
const END_SEQ: [u8; 8] = (-1i64).to_be_bytes();

/// Why the publisher could not start.
#[derive(Debug, thiserror::Error)]
pub enum PublisherError {
    #[error("kv events: binding {endpoint}: {source}")]
    Bind { endpoint: String, source: zeromq::ZmqError },
    #[error("kv events: connecting to {endpoint}: {source}")]
    Connect { endpoint: String, source: zeromq::ZmqError },
}

/// The engine's side of a running publisher.
#[derive(Debug, Clone)]
pub struct KvPublisher {
    tx: mpsc::Sender<(u64, Vec<KvEvent>)>,
    next_seq: Arc<AtomicU64>,
    /// Where the PUB socket is bound (`tcp://ip:port`), when it binds.
    pub endpoint: Option<String>,
    /// Where the ROUTER socket is bound, when replay is configured.
    pub replay_endpoint: Option<String>,
}

impl KvPublisher {
    /// Queues one step's events; never waits. A full queue drops the batch, leaving a gap in the sequence.
    pub fn publish(&self, events: Vec<KvEvent>) {
        if events.is_empty() {
            return;
        }
        let seq = self.next_seq.fetch_add(1, Ordering::Relaxed);
        if self.tx.try_send((seq, events)).is_err() {
            tracing::warn!(seq, "kv event queue full; batch dropped");
        }
    }
}

/// Binds (or connects) the sockets for a replica on `host` and starts publishing until `stop` turns true.
/// `tcp://*:port` binds `host:port`, so every replica of a simulator process has its own endpoint, as every pod has.
pub async fn spawn(
    config: &KvEventsConfig,
    host: Ipv4Addr,
    stop: watch::Receiver<bool>,
) -> Result<KvPublisher, PublisherError> {
    let mut publisher = zeromq::PubSocket::new();
    let endpoint = match wildcard(&config.endpoint, host) {
        Some(local) => {
            let bound = publisher.bind(&local).await.map_err(|source| PublisherError::Bind {
                endpoint: local.clone(),
                source,
            })?;
            Some(bound.to_string())
        }
        None => {
            publisher
                .connect(&config.endpoint)
                .await
                .map_err(|source| PublisherError::Connect {
                    endpoint: config.endpoint.clone(),
                    source,
                })?;
            None
        }
    };
    let (router, replay_endpoint) = match &config.replay_endpoint {
        Some(replay) => {
            let local = wildcard(replay, host).unwrap_or_else(|| replay.clone());
            let mut router = zeromq::RouterSocket::new();
            let bound = router.bind(&local).await.map_err(|source| PublisherError::Bind {
                endpoint: local.clone(),
                source,
            })?;
            (Some(router), Some(bound.to_string()))
        }
        None => (None, None),
    };
    let (tx, rx) = mpsc::channel(config.max_queue_size);
    let sockets = Sockets {
        publisher,
        router,
        topic: Bytes::from(config.topic.clone().into_bytes()),
        buffer: VecDeque::with_capacity(config.buffer_steps.min(1024)),
        buffer_steps: config.buffer_steps,
    };
    tokio::spawn(sockets.run(rx, stop));
    Ok(KvPublisher {
        tx,
        next_seq: Arc::new(AtomicU64::new(0)),
        endpoint,
        replay_endpoint,
    })
}

/// `tcp://*:port` (or `tcp://0.0.0.0:port`) as `tcp://host:port`; `None` for an endpoint naming a remote host.
fn wildcard(endpoint: &str, host: Ipv4Addr) -> Option<String> {
    let (addr, port) = endpoint.strip_prefix("tcp://")?.rsplit_once(':')?;
    matches!(addr, "*" | "0.0.0.0").then(|| format!("tcp://{host}:{port}"))
}

struct Sockets {
    publisher: zeromq::PubSocket,
    router: Option<zeromq::RouterSocket>,
    topic: Bytes,
    /// The last `buffer_steps` batches, oldest first, for replay.
    buffer: VecDeque<(u64, Bytes)>,
    buffer_steps: usize,
}

impl Sockets {
    async fn run(mut self, mut rx: mpsc::Receiver<(u64, Vec<KvEvent>)>, mut stop: watch::Receiver<bool>) {
        loop {
            tokio::select! {
                batch = rx.recv() => match batch {
                    Some((seq, events)) => self.send(seq, &events).await,
                    None => break,
                },
                request = recv_replay(&mut self.router) => match request {
                    Ok(request) => self.replay(request).await,
                    Err(error) => {
                        // The ROUTER fails only when its peers are gone for good; stop serving replays.
                        tracing::warn!(%error, "kv event replay socket failed; replay disabled");
                        self.router = None;
                    }
                },
                () = stopped(&mut stop) => break,
            }
        }
    }

    async fn send(&mut self, seq: u64, events: &[KvEvent]) {
        let ts = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0.0, |d| d.as_secs_f64());
        let mut payload = Vec::with_capacity(64 + events.len() * 96);
        encode_batch(ts, events, Some(0), &mut payload);
        let payload = Bytes::from(payload);
        let frames = vec![
            self.topic.clone(),
            Bytes::copy_from_slice(&seq.to_be_bytes()),
            payload.clone(),
        ];
        if let Ok(message) = ZmqMessage::try_from(frames)
            && let Err(error) = self.publisher.send(message).await
        {
            tracing::debug!(seq, %error, "kv event batch not published");
        }
        if self.buffer.len() == self.buffer_steps {
            self.buffer.pop_front();
        }
        self.buffer.push_back((seq, payload));
    }

    /// Answers `[identity, "", start_seq]` with every buffered batch from `start_seq` on, then the end marker.
    async fn replay(&mut self, request: ZmqMessage) {
        let Some(router) = self.router.as_mut() else {
            return;
        };
        let frames = request.into_vec();
        let [identity, _empty, start] = frames.as_slice() else {
            tracing::warn!(frames = frames.len(), "invalid kv event replay request");
            return;
        };
        let Ok(start) = <[u8; 8]>::try_from(start.as_ref()).map(u64::from_be_bytes) else {
            tracing::warn!(len = start.len(), "kv event replay request without an 8-byte sequence");
            return;
        };
        let answers = self
            .buffer
            .iter()
            .filter(|(seq, _)| *seq >= start)
            .map(|(seq, payload)| (Bytes::copy_from_slice(&seq.to_be_bytes()), payload.clone()))
            .chain(std::iter::once((Bytes::from_static(&END_SEQ), Bytes::new())));
        for (seq, payload) in answers {
            let message = ZmqMessage::try_from(vec![identity.clone(), Bytes::new(), seq, payload]);
            if let Ok(message) = message
                && let Err(error) = router.send(message).await
            {
                tracing::debug!(%error, "kv event replay answer not sent");
                return;
            }
        }
    }
}

/// The next replay request, or never when replay is off.
async fn recv_replay(router: &mut Option<zeromq::RouterSocket>) -> zeromq::ZmqResult<ZmqMessage> {
    match router {
        Some(router) => router.recv().await,
        None => std::future::pending().await,
    }
}

/// Resolves once the replica is told to stop (or its handle is gone).
async fn stopped(stop: &mut watch::Receiver<bool>) {
    let _ = stop.wait_for(|&stop| stop).await;
}
