//! Command-line flags of the `controller` binary; every flag also reads a `SWITCHYARD_…` environment variable.

use std::{net::SocketAddr, path::PathBuf, time::Duration};

use clap::Parser;

#[derive(Parser, Debug, Clone)]
#[command(
    name = "controller",
    version,
    about = "Switchyard controller: InferencePool and InferenceModel status, guarded canary releases"
)]
pub struct Args {
    /// Prometheus /metrics and /healthz.
    #[arg(long, env = "SWITCHYARD_METRICS_LISTEN", default_value = "0.0.0.0:8082")]
    pub metrics_listen: SocketAddr,

    /// Namespace of the leader-election Lease (the controller's own namespace).
    #[arg(long, env = "SWITCHYARD_LEASE_NAMESPACE", default_value = "switchyard-system")]
    pub lease_namespace: String,

    /// Name of the leader-election Lease.
    #[arg(long, env = "SWITCHYARD_LEASE_NAME", default_value = "switchyard-controller")]
    pub lease_name: String,

    /// This replica's identity in the Lease; the pod name in a cluster. Required unless --dir.
    #[arg(long, env = "SWITCHYARD_IDENTITY", required_unless_present = "dir")]
    pub identity: Option<String>,

    /// Drive the CanaryReleases of this directory (the gateway's --dir) instead of a cluster: no Kubernetes API,
    /// no Lease, no status for InferencePool/InferenceModel.
    #[arg(long, env = "SWITCHYARD_DIR")]
    pub dir: Option<PathBuf>,

    /// A gateway replica's /metrics, read to judge canary releases; repeat (or comma-separate) for every replica.
    #[arg(long, env = "SWITCHYARD_GATEWAY_METRICS_URL", value_delimiter = ',')]
    pub gateway_metrics_url: Vec<String>,

    /// How often an active canary release is measured and judged ("5s", "500ms").
    #[arg(long, env = "SWITCHYARD_CANARY_INTERVAL", default_value = "5s", value_parser = parse_interval)]
    pub canary_interval: Duration,

    /// How long a Lease stays valid without renewal; another replica takes over after it lapses.
    #[arg(long, env = "SWITCHYARD_LEASE_DURATION", default_value = "15s", value_parser = parse_lease)]
    pub lease_duration: Duration,

    #[arg(long, env = "SWITCHYARD_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,
}

use api::duration::parse_duration_within;
pub use cli::LogFormat;

/// The lease: at least 3 s (kube's renew deadline must fit), at most an hour.
fn parse_lease(text: &str) -> Result<Duration, String> {
    parse_duration_within(text, Duration::from_secs(3), Duration::from_secs(3_600), "the lease")
}

/// How often guarded releases are stepped: 50 ms to 1 h.
fn parse_interval(text: &str) -> Result<Duration, String> {
    parse_duration_within(
        text,
        Duration::from_millis(50),
        Duration::from_secs(3_600),
        "the canary interval",
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_flag_has_an_env_var() {
        test_support::assert_every_flag_has_an_env_var(&<Args as clap::CommandFactory>::command());
    }

    #[test]
    fn defaults_match_the_design() {
        let args = Args::try_parse_from(["controller", "--identity", "controller-0"]).unwrap();
        assert_eq!(args.metrics_listen, "0.0.0.0:8082".parse().unwrap());
        assert_eq!(args.lease_duration, Duration::from_secs(15));
        assert!(Args::try_parse_from(["controller", "--identity", "c", "--lease-duration", "1s"]).is_err());
        assert!(
            Args::try_parse_from(["controller", "--identity", "c", "--lease-duration", "15"]).is_err(),
            "a bare number is refused, not read as seconds"
        );
        let lease = Args::try_parse_from(["controller", "--identity", "c", "--lease-duration", "20s"]).unwrap();
        assert_eq!(lease.lease_duration, Duration::from_secs(20));
        assert_eq!(args.canary_interval, Duration::from_secs(5));
        assert!(
            Args::try_parse_from(["controller"]).is_err(),
            "--identity is required in kube mode"
        );
    }

    #[test]
    fn dir_mode_needs_no_identity_and_takes_several_gateways() {
        let args = Args::try_parse_from([
            "controller",
            "--dir",
            "/tmp/config",
            "--gateway-metrics-url",
            "http://127.0.0.1:9090/metrics,http://127.0.0.2:9090/metrics",
            "--gateway-metrics-url",
            "http://127.0.0.3:9090/metrics",
            "--canary-interval",
            "250ms",
        ])
        .unwrap();
        assert_eq!(args.identity, None);
        assert_eq!(args.gateway_metrics_url.len(), 3);
        assert_eq!(args.canary_interval, Duration::from_millis(250));
        assert!(Args::try_parse_from(["controller", "--dir", "d", "--canary-interval", "1ms"]).is_err());
    }
}
