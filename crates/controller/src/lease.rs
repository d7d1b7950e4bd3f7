//! Leader election on a `coordination.k8s.io/v1` Lease, so two replicas never both write status.
//!
//! The leader renews the Lease every third of its duration with an optimistic-concurrency `replace` (the
//! resourceVersion it read), so two replicas racing for an expired Lease cannot both win: the loser gets 409.
//! A leader that cannot renew for two thirds of the duration stops its controllers before any other replica may
//! take the Lease over, which it can only do once `renewTime + leaseDurationSeconds` has passed.

use std::{future::Future, sync::Arc, time::Duration};

use k8s_openapi::{
    api::coordination::v1::{Lease, LeaseSpec},
    apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta},
    jiff::{SignedDuration, Timestamp},
};
use kube::{
    Api,
    api::{PostParams, ResourceExt},
};
use tokio_util::sync::CancellationToken;

use crate::metrics::Metrics;

/// The outcome of one election round.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Leadership {
    Leading,
    /// Someone else holds a valid Lease (or won the race for it).
    Following {
        holder: Option<String>,
    },
}

/// One replica's side of the election.
pub struct LeaseElector {
    api: Api<Lease>,
    name: String,
    identity: String,
    duration: Duration,
}

impl LeaseElector {
    pub fn new(api: Api<Lease>, name: String, identity: String, duration: Duration) -> Self {
        LeaseElector {
            api,
            name,
            identity,
            duration,
        }
    }

    /// Creates, renews or takes over the Lease if this replica may hold it at `now`.
    pub async fn try_acquire_or_renew(&self, now: Timestamp) -> Result<Leadership, kube::Error> {
        let Some(lease) = self.api.get_opt(&self.name).await? else {
            let lease = Lease {
                metadata: ObjectMeta {
                    name: Some(self.name.clone()),
                    ..ObjectMeta::default()
                },
                spec: Some(self.spec(now, now, 0)),
            };
            return self.settle(self.api.create(&PostParams::default(), &lease).await);
        };
        let spec = lease.spec.clone().unwrap_or_default();
        let holder = spec.holder_identity.clone().filter(|h| !h.is_empty());
        if holder.as_deref() == Some(self.identity.as_str()) {
            let acquired = spec.acquire_time.map_or(now, |t| t.0);
            let transitions = spec.lease_transitions.unwrap_or(0);
            return self.write(lease, self.spec(now, acquired, transitions)).await;
        }
        let expires = spec.renew_time.as_ref().map(|renewed| {
            let seconds = spec.lease_duration_seconds.unwrap_or(0);
            renewed.0 + SignedDuration::from_secs(i64::from(seconds))
        });
        if holder.is_none() || expires.is_none_or(|at| at < now) {
            tracing::info!(
                previous = holder.as_deref().unwrap_or(""),
                "lease free or expired; taking it over"
            );
            let transitions = spec.lease_transitions.unwrap_or(0) + 1;
            return self.write(lease, self.spec(now, now, transitions)).await;
        }
        Ok(Leadership::Following { holder })
    }

    fn spec(&self, now: Timestamp, acquired: Timestamp, transitions: i32) -> LeaseSpec {
        LeaseSpec {
            holder_identity: Some(self.identity.clone()),
            lease_duration_seconds: Some(i32::try_from(self.duration.as_secs()).unwrap_or(i32::MAX)),
            acquire_time: Some(MicroTime(acquired)),
            renew_time: Some(MicroTime(now)),
            lease_transitions: Some(transitions),
            ..LeaseSpec::default()
        }
    }

    /// Replaces the Lease read a moment ago; its resourceVersion makes the write fail if anyone wrote in between.
    async fn write(&self, mut lease: Lease, spec: LeaseSpec) -> Result<Leadership, kube::Error> {
        lease.spec = Some(spec);
        lease.metadata.managed_fields = None;
        let name = lease.name_any();
        self.settle(self.api.replace(&name, &PostParams::default(), &lease).await)
    }

    fn settle(&self, written: Result<Lease, kube::Error>) -> Result<Leadership, kube::Error> {
        match written {
            Ok(_) => Ok(Leadership::Leading),
            // Another replica wrote first (create race or a newer resourceVersion).
            Err(kube::Error::Api(status)) if status.code == 409 => Ok(Leadership::Following { holder: None }),
            Err(error) => Err(error),
        }
    }
}

/// Runs the election until `cancel` fires, running `lead(token)` while this replica holds the Lease; `token` is
/// cancelled when leadership is lost or cannot be confirmed in time.
pub async fn run_elected<F, Fut>(elector: LeaseElector, metrics: Arc<Metrics>, cancel: CancellationToken, lead: F)
where
    F: Fn(CancellationToken) -> Fut,
    Fut: Future<Output = ()> + Send + 'static,
{
    let renew_every = elector.duration / 3;
    let renew_deadline = elector.duration * 2 / 3;
    let mut leading: Option<(CancellationToken, tokio::task::JoinHandle<()>)> = None;
    let mut last_renewed = tokio::time::Instant::now();
    loop {
        let outcome = elector.try_acquire_or_renew(Timestamp::now()).await;
        match outcome {
            Ok(Leadership::Leading) => {
                last_renewed = tokio::time::Instant::now();
                if leading.is_none() {
                    tracing::info!(identity = %elector.identity, "became leader");
                    let token = cancel.child_token();
                    leading = Some((token.clone(), tokio::spawn(lead(token))));
                }
            }
            Ok(Leadership::Following { holder }) => {
                if leading.is_some() {
                    tracing::warn!(holder = holder.as_deref().unwrap_or(""), "lost the lease");
                }
                step_down(&mut leading).await;
            }
            Err(error) => {
                tracing::warn!(%error, "cannot read or write the lease");
                if leading.is_some() && last_renewed.elapsed() >= renew_deadline {
                    tracing::warn!("lease not renewed in time; stepping down");
                    step_down(&mut leading).await;
                }
            }
        }
        metrics.set_leader(leading.is_some());
        tokio::select! {
            () = cancel.cancelled() => break,
            () = tokio::time::sleep(renew_every) => {}
        }
    }
    step_down(&mut leading).await;
    metrics.set_leader(false);
}

async fn step_down(leading: &mut Option<(CancellationToken, tokio::task::JoinHandle<()>)>) {
    if let Some((token, task)) = leading.take() {
        token.cancel();
        if let Err(error) = task.await {
            tracing::error!(%error, "controllers task failed");
        }
    }
}

#[cfg(test)]
mod tests;
