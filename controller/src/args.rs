//! Command-line flags of the `controller` binary; every flag also reads a `SWITCHYARD_…` environment variable.

use std::{net::SocketAddr, time::Duration};

use clap::{Parser, ValueEnum};

#[derive(Parser, Debug, Clone)]
#[command(
    name = "controller",
    version,
    about = "Switchyard controller: InferencePool and InferenceModel status"
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

    /// This replica's identity in the Lease; the pod name in a cluster.
    #[arg(long, env = "SWITCHYARD_IDENTITY")]
    pub identity: String,

    /// How long a Lease stays valid without renewal; another replica takes over after it lapses.
    #[arg(long, env = "SWITCHYARD_LEASE_DURATION", default_value = "15", value_parser = parse_seconds)]
    pub lease_duration: Duration,

    #[arg(long, env = "SWITCHYARD_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,
}

#[derive(ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    Text,
    Json,
}

fn parse_seconds(text: &str) -> Result<Duration, String> {
    let seconds: u64 = text
        .trim_end_matches('s')
        .parse()
        .map_err(|_| format!("{text:?} is not a number of seconds"))?;
    if seconds < 3 {
        return Err("the lease must last at least 3 seconds".into());
    }
    Ok(Duration::from_secs(seconds))
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory;

    use super::*;

    #[test]
    fn every_flag_has_an_env_var() {
        for arg in Args::command().get_arguments() {
            if matches!(arg.get_id().as_str(), "help" | "version") {
                continue;
            }
            let env = arg.get_env().map(|e| e.to_string_lossy().into_owned());
            assert!(
                env.as_deref().is_some_and(|e| e.starts_with("SWITCHYARD_")),
                "flag --{} has no SWITCHYARD_ env var",
                arg.get_id()
            );
        }
    }

    #[test]
    fn defaults_match_the_design() {
        let args = Args::try_parse_from(["controller", "--identity", "controller-0"]).unwrap();
        assert_eq!(args.metrics_listen, "0.0.0.0:8082".parse().unwrap());
        assert_eq!(args.lease_duration, Duration::from_secs(15));
        assert!(Args::try_parse_from(["controller", "--identity", "c", "--lease-duration", "1"]).is_err());
    }
}
