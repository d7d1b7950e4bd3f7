//! Every HTTP listener's front door (the gateway's proxy and admin listeners, the dashboard): what a client
//! controls is bounded here once, for all of them.
//!
//! - **Connections**: at most `--max-connections` open at once over the process; a connection past it is closed
//!   on accept (counted), so a crowd of idle sockets cannot starve the process of file descriptors.
//! - **Headers**: a request's headers must arrive within `--header-read-timeout`, which also closes a keep-alive
//!   connection that sends nothing (HTTP/1; hyper's timer).
//! - **Bodies**: the body is received here before any router sees it (every handler buffers it anyway): larger than
//!   the listener's limit → 413 (from Content-Length before a byte is read), a pause longer than
//!   `--body-idle-timeout` or a body not complete within `--body-timeout` of its headers → 408, and bytes past the
//!   process-wide `--max-buffered-bytes` → 503 with `Retry-After`. Buffered bytes stay charged until the router
//!   has answered, and a declared length reserves at most [`body::PRESIZE_CAP`] up front.
//!
//! Anchors: Envoy's overload manager (refuse new work past a memory threshold rather than die) and its
//! `request_headers_timeout` / stream idle timeouts.

pub mod body;
mod budget;
mod metrics;

use std::{convert::Infallible, net::SocketAddr, sync::Arc, time::Duration};

use axum::{Router, extract::ConnectInfo};
use hyper::{Request, body::Incoming};
use hyper_util::{
    rt::{TokioExecutor, TokioIo, TokioTimer},
    server::conn::auto,
};
use prometheus_client::registry::Registry;
use tokio::{
    net::TcpListener,
    sync::{Semaphore, watch},
    task::JoinSet,
};
use tokio_util::sync::CancellationToken;
use tower::ServiceExt as _;

pub use body::Rejection;
pub use budget::{Budget, Charge, OverBudget};

/// The bounds on what clients may hold, as flags of every binary that serves HTTP.
#[derive(clap::Args, Debug, Clone, PartialEq, Eq)]
pub struct Limits {
    /// Bound on receiving a request's headers; also closes a keep-alive connection idle for as long.
    #[arg(long, env = "SWITCHYARD_HEADER_READ_TIMEOUT", default_value = "10s", value_parser = api::duration::parse_duration)]
    pub header_read_timeout: Duration,
    /// Longest pause between two pieces of a request body before the request gets 408.
    #[arg(long, env = "SWITCHYARD_BODY_IDLE_TIMEOUT", default_value = "10s", value_parser = api::duration::parse_duration)]
    pub body_idle_timeout: Duration,
    /// Bound on receiving a whole request body, counted from its headers; slower uploads get 408.
    #[arg(long, env = "SWITCHYARD_BODY_TIMEOUT", default_value = "60s", value_parser = api::duration::parse_duration)]
    pub body_timeout: Duration,
    /// Request body bytes held in memory at once over every listener; a request needing more gets 503.
    #[arg(long, env = "SWITCHYARD_MAX_BUFFERED_BYTES", default_value_t = 256 << 20)]
    pub max_buffered_bytes: usize,
    /// Client connections open at once over every listener; more are closed as they are accepted.
    #[arg(long, env = "SWITCHYARD_MAX_CONNECTIONS", default_value_t = 4_096)]
    pub max_connections: usize,
}

impl Default for Limits {
    /// The flags' defaults (a test holds the two equal).
    fn default() -> Limits {
        Limits {
            header_read_timeout: Duration::from_secs(10),
            body_idle_timeout: Duration::from_secs(10),
            body_timeout: Duration::from_secs(60),
            max_buffered_bytes: 256 << 20,
            max_connections: 4_096,
        }
    }
}

/// How long open connections may finish their requests after shutdown begins.
const DRAIN: Duration = Duration::from_secs(10);
/// Pause after a failed accept (e.g. out of file descriptors) before accepting again.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(50);

/// The bounds shared by every listener of a process; cloning shares them.
#[derive(Clone, Debug)]
pub struct Front {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    limits: Limits,
    connections: Arc<Semaphore>,
    budget: Budget,
    metrics: metrics::Metrics,
    /// Connections open over every listener, published on each open and close.
    open: watch::Sender<usize>,
}

/// One listener: its name (the `listener` label), the largest body it takes and how its refusals read.
#[derive(Clone, Copy, Debug)]
pub struct Site {
    pub name: &'static str,
    pub max_body_bytes: usize,
    /// The body of a refusal in the listener's own error format (status and headers are set around it).
    pub render: fn(&Rejection) -> axum::response::Response,
}

impl Site {
    /// A listener whose refusals are [`body::json`].
    pub fn new(name: &'static str, max_body_bytes: usize) -> Site {
        Site {
            name,
            max_body_bytes,
            render: body::json,
        }
    }
}

impl Front {
    pub fn new(limits: Limits) -> Front {
        Front {
            inner: Arc::new(Inner {
                connections: Arc::new(Semaphore::new(limits.max_connections)),
                budget: Budget::new(limits.max_buffered_bytes),
                metrics: metrics::Metrics::default(),
                open: watch::Sender::new(0),
                limits,
            }),
        }
    }

    /// The buffered-bytes budget, for other buffers of the process (ext_proc's) to charge too.
    pub fn budget(&self) -> &Budget {
        &self.inner.budget
    }

    /// Connections open over every listener, updated as they open and close.
    pub fn connections(&self) -> watch::Receiver<usize> {
        self.inner.open.subscribe()
    }

    pub fn limits(&self) -> &Limits {
        &self.inner.limits
    }

    /// Registers `http_connections`, `http_connections_refused`, `http_requests_rejected` and
    /// `http_buffered_request_bytes`.
    pub fn register_metrics(&self, registry: &mut Registry) {
        self.inner.metrics.register(registry, &self.inner.budget);
    }

    /// Serves `router` on `listener` until `cancel` fires, then lets open connections finish for a bounded time.
    /// Handlers see the client's address as [`ConnectInfo<SocketAddr>`].
    pub async fn serve(&self, listener: TcpListener, site: Site, router: Router, cancel: CancellationToken) {
        let mut builder = auto::Builder::new(TokioExecutor::new());
        builder
            .http1()
            .timer(TokioTimer::new())
            .header_read_timeout(self.inner.limits.header_read_timeout);
        builder.http2().timer(TokioTimer::new());
        let builder = Arc::new(builder);
        let label = metrics::ListenerLabel {
            listener: site.name.to_owned(),
        };
        let mut connections = JoinSet::new();
        loop {
            let (tcp, peer) = tokio::select! {
                () = cancel.cancelled() => break,
                Some(_) = connections.join_next(), if !connections.is_empty() => continue,
                accepted = listener.accept() => match accepted {
                    Ok(accepted) => accepted,
                    Err(error) => {
                        tracing::warn!(listener = site.name, %error, "accept failed");
                        tokio::time::sleep(ACCEPT_BACKOFF).await;
                        continue;
                    }
                },
            };
            let Ok(permit) = self.inner.connections.clone().try_acquire_owned() else {
                self.inner.metrics.refused.get_or_create(&label).inc();
                tracing::debug!(listener = site.name, %peer, "connection refused: --max-connections open");
                continue;
            };
            if let Err(error) = tcp.set_nodelay(true) {
                tracing::debug!(%error, "could not set TCP_NODELAY on an accepted connection");
            }
            let front = self.clone();
            let front_open = self.inner.open.clone();
            let (router, builder, cancel, open) = (
                router.clone(),
                builder.clone(),
                cancel.clone(),
                self.inner.metrics.open.get_or_create(&label).clone(),
            );
            open.inc();
            self.inner.open.send_modify(|n| *n += 1);
            connections.spawn(async move {
                let service = hyper::service::service_fn(move |request| {
                    front.clone().handle(site, peer, router.clone(), request)
                });
                let connection = builder.serve_connection_with_upgrades(TokioIo::new(tcp), service);
                let mut connection = std::pin::pin!(connection);
                let result = tokio::select! {
                    result = connection.as_mut() => result,
                    () = cancel.cancelled() => {
                        connection.as_mut().graceful_shutdown();
                        tokio::time::timeout(DRAIN, connection).await.unwrap_or(Ok(()))
                    }
                };
                if let Err(error) = result {
                    tracing::debug!(%peer, %error, "connection ended with an error");
                }
                open.dec();
                drop(permit);
                front_open.send_modify(|n| *n -= 1);
            });
        }
        drop(listener);
        while connections.join_next().await.is_some() {}
    }

    async fn handle(
        self,
        site: Site,
        peer: SocketAddr,
        router: Router,
        request: Request<Incoming>,
    ) -> Result<axum::response::Response, Infallible> {
        let started = tokio::time::Instant::now();
        let (mut parts, body) = request.into_parts();
        let inner = &self.inner;
        match body::receive(
            body,
            &parts.headers,
            site.max_body_bytes,
            &inner.limits,
            &inner.budget,
            started,
        )
        .await
        {
            Ok((bytes, charge)) => {
                parts.extensions.insert(ConnectInfo(peer));
                let request = Request::from_parts(parts, axum::body::Body::from(bytes));
                let response = router.oneshot(request).await;
                // The router has answered (for a proxied request: the upstream has the body): release it.
                drop(charge);
                response
            }
            Err(rejection) => {
                inner
                    .metrics
                    .rejected
                    .get_or_create(&metrics::RejectLabels {
                        listener: site.name.to_owned(),
                        reason: rejection.reason().to_owned(),
                    })
                    .inc();
                tracing::debug!(listener = site.name, %peer, error = %rejection, "request refused at the front door");
                Ok(rejection.respond(site.render))
            }
        }
    }
}
