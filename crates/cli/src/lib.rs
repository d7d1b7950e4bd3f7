//! What the three binaries' `main.rs` shims share: the `--log-format` flag and logging setup, and the exit of a
//! failed run. (The one duration grammar of every flag and CRD field is `api::duration`.)

use std::process::ExitCode;

use tracing_subscriber::EnvFilter;

/// How log lines are written (`--log-format`, `SWITCHYARD_LOG_FORMAT`).
#[derive(clap::ValueEnum, Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum LogFormat {
    /// Human-readable lines.
    #[default]
    Text,
    /// One JSON object per line, for log pipelines.
    Json,
}

/// Installs the global subscriber: `RUST_LOG` when set, `info` otherwise.
pub fn init_logging(format: LogFormat) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    match format {
        LogFormat::Text => tracing_subscriber::fmt().with_env_filter(filter).init(),
        LogFormat::Json => tracing_subscriber::fmt().json().with_env_filter(filter).init(),
    }
}

/// The process's exit: success, or the whole error chain logged and failure.
pub fn exit(binary: &str, result: anyhow::Result<()>) -> ExitCode {
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            tracing::error!(binary, error = format!("{err:#}"), "run failed");
            ExitCode::FAILURE
        }
    }
}
