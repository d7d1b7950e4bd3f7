//! Command-line flags of the `dashboard` binary; every flag also reads a `SWITCHYARD_…` environment variable.

use std::{net::SocketAddr, path::PathBuf, time::Duration};

use clap::{Parser, ValueEnum};

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

    /// Mark the session cookie `Secure` (serve behind TLS).
    #[arg(long, env = "SWITCHYARD_SECURE_COOKIES")]
    pub secure_cookies: bool,

    #[arg(long, env = "SWITCHYARD_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,
}

#[derive(ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    Text,
    Json,
}

/// Parses `7d`, `12h`, `30m` or `90s`.
pub fn parse_retention(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    let split = text.find(|c: char| !c.is_ascii_digit()).unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let value: u64 = number
        .parse()
        .map_err(|_| format!("{text:?} is not a duration like 7d, 12h or 30m"))?;
    let seconds = match unit {
        "s" => 1,
        "m" => 60,
        "h" => 3600,
        "d" => 86_400,
        other => return Err(format!("unknown unit {other:?} in {text:?} (use s, m, h or d)")),
    };
    if value == 0 {
        return Err("retention must be longer than 0".into());
    }
    Ok(Duration::from_secs(value * seconds))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retention_parses_with_units() {
        assert_eq!(parse_retention("7d"), Ok(Duration::from_secs(7 * 86_400)));
        assert_eq!(parse_retention("12h"), Ok(Duration::from_secs(12 * 3600)));
        assert!(parse_retention("7").unwrap_err().contains("unknown unit"));
        assert!(parse_retention("0d").is_err());
        assert!(parse_retention("week").is_err());
    }

    #[test]
    fn every_flag_has_an_env_var() {
        use clap::CommandFactory;
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
}
