//! Command-line flags of the `dashboard` binary; every flag also reads a `SWITCHYARD_…` environment variable.

use std::{net::SocketAddr, path::PathBuf, time::Duration};

use clap::Parser;

#[derive(Parser, Debug, Clone)]
#[command(
    name = "dashboard",
    version,
    about = "Switchyard dashboard: routing audit, canary releases and per-pod KV-cache history"
)]
pub struct Args {
    /// SQLite database (`sqlite://switchyard.db` or a path); created and migrated on start.
    #[arg(long, env = "SWITCHYARD_DB", default_value = "sqlite://switchyard.db")]
    pub db: String,

    /// Address of the web UI and JSON API.
    #[arg(long, env = "SWITCHYARD_DASHBOARD_LISTEN", default_value = "0.0.0.0:8088")]
    pub listen: SocketAddr,

    /// Directory of Kubernetes YAML whose InferenceModels the releases pages edit (the gateway's `--dir`).
    #[arg(long, env = "SWITCHYARD_DIR", conflicts_with = "kube")]
    pub dir: Option<PathBuf>,

    /// Edit InferenceModels in the cluster by server-side apply.
    #[arg(long, env = "SWITCHYARD_KUBE")]
    pub kube: bool,

    /// How long decisions and samples are kept (e.g. `7d`, `12h`).
    #[arg(long, env = "SWITCHYARD_RETAIN", default_value = "7d", value_parser = parse_retention)]
    pub retain: Duration,

    /// Token people type to log in for write actions; a random one is generated and logged when neither this nor
    /// `--login-token-file` is given.
    #[arg(long, env = "SWITCHYARD_LOGIN_TOKEN", hide_env_values = true)]
    pub login_token: Option<String>,

    /// File holding the login token (e.g. a mounted Secret).
    #[arg(long, env = "SWITCHYARD_LOGIN_TOKEN_FILE", conflicts_with = "login_token")]
    pub login_token_file: Option<PathBuf>,

    /// Bearer token gateways send with `POST /api/v1/ingest`; random (and logged) when not given.
    #[arg(long, env = "SWITCHYARD_INGEST_TOKEN", hide_env_values = true)]
    pub ingest_token: Option<String>,

    /// File holding the ingest token.
    #[arg(long, env = "SWITCHYARD_INGEST_TOKEN_FILE", conflicts_with = "ingest_token")]
    pub ingest_token_file: Option<PathBuf>,

    /// Send the session cookie without `Secure`, so logins work over plain HTTP. The default marks it `Secure`
    /// (browsers then send it only over HTTPS) unless `--listen` is a loopback address.
    #[arg(long, env = "SWITCHYARD_INSECURE_COOKIES")]
    pub insecure_cookies: bool,

    /// Bounds on what clients may hold: connections, header and body timeouts, buffered request bytes.
    #[command(flatten)]
    pub limits: serve::Limits,

    #[arg(long, env = "SWITCHYARD_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,
}

use api::duration::parse_duration_within;
pub use cli::LogFormat;

/// How long decisions are kept: longer than nothing, at most ten years.
pub fn parse_retention(text: &str) -> Result<Duration, String> {
    parse_duration_within(
        text,
        Duration::from_secs(1),
        Duration::from_secs(3_650 * 86_400),
        "retention",
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retention_parses_with_units() {
        assert_eq!(parse_retention("7d"), Ok(Duration::from_secs(7 * 86_400)));
        assert_eq!(parse_retention("12h"), Ok(Duration::from_secs(12 * 3600)));
        assert!(parse_retention("7").unwrap_err().contains("needs a unit"));
        assert!(parse_retention("0d").is_err());
        assert!(parse_retention("week").is_err());
    }

    #[test]
    fn every_flag_has_an_env_var() {
        test_support::assert_every_flag_has_an_env_var(&<Args as clap::CommandFactory>::command());
    }
}
