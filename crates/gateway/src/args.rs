//! Command-line flags of the `gateway` binary; every flag also reads a `SWITCHYARD_…` environment variable.

use std::{net::SocketAddr, path::PathBuf, time::Duration};

use clap::{ArgGroup, Parser};

#[derive(Parser, Debug, Clone)]
#[command(
    name = "gateway",
    version,
    about = "Switchyard inference gateway: endpoint picker and OpenAI-compatible proxy",
    // Exactly one provider feeds the datastore.
    group(ArgGroup::new("provider").required(true).args(["dir", "kube"]))
)]
pub struct Args {
    /// Directory of Kubernetes YAML (InferencePool, InferenceModel, Pods) to serve from; watched for changes.
    #[arg(long, env = "SWITCHYARD_DIR")]
    pub dir: Option<PathBuf>,

    /// Watch InferencePools, InferenceModels and Pods through the Kubernetes API (in-cluster config or
    /// KUBECONFIG); with `--pool namespace/name` only that namespace is watched.
    #[arg(long, env = "SWITCHYARD_KUBE")]
    pub kube: bool,

    /// InferencePool to serve; may be omitted when the directory holds exactly one.
    #[arg(long, env = "SWITCHYARD_POOL")]
    pub pool: Option<String>,

    /// Scheduler YAML (profile, weights, saturation thresholds); the built-in `default` profile when omitted.
    #[arg(long, env = "SWITCHYARD_SCHEDULER_CONFIG")]
    pub scheduler_config: Option<PathBuf>,

    /// Prometheus /metrics, /healthz, /readyz and /debug/decisions.
    #[arg(long, env = "SWITCHYARD_ADMIN_LISTEN", default_value = "0.0.0.0:9090")]
    pub admin_listen: SocketAddr,

    /// Serve the standalone OpenAI-compatible proxy on this address (off unless given).
    #[arg(long, env = "SWITCHYARD_PROXY_LISTEN")]
    pub proxy_listen: Option<SocketAddr>,

    /// Largest request body the proxy accepts; larger ones get 413.
    #[arg(long, env = "SWITCHYARD_MAX_BODY_BYTES", default_value_t = 8 << 20)]
    pub max_body_bytes: usize,

    /// Bounds on what clients may hold (connections, header and body timeouts, buffered bytes) on the proxy and
    /// admin listeners; the buffered-bytes budget covers ext_proc's bodies too.
    #[command(flatten)]
    pub limits: serve::Limits,

    /// Envoy ext_proc endpoint picker (gRPC `envoy.service.ext_proc.v3.ExternalProcessor`).
    #[arg(long, env = "SWITCHYARD_EXTPROC_LISTEN", default_value = "0.0.0.0:9002")]
    pub extproc_listen: SocketAddr,

    /// gRPC health (`liveness`, `readiness`, the ExternalProcessor service) for probes; ready once synced.
    #[arg(long, env = "SWITCHYARD_HEALTH_LISTEN", default_value = "0.0.0.0:9003")]
    pub health_listen: SocketAddr,

    /// Largest request body the ext_proc picker buffers; larger ones get 413.
    #[arg(long, env = "SWITCHYARD_MAX_EXTPROC_BODY_BYTES", default_value_t = 16 << 20)]
    pub max_extproc_body_bytes: usize,

    /// Fallback endpoints the ext_proc picker appends to `x-gateway-destination-endpoint` (comma-separated, for
    /// Envoy retries); 0 sends only the pick, as upstream does by default.
    #[arg(long, env = "SWITCHYARD_EXTPROC_FALLBACKS", default_value_t = 0)]
    pub extproc_fallbacks: usize,

    /// ext_proc streams open at once; more are refused with RESOURCE_EXHAUSTED (the pool's failure mode decides).
    #[arg(long, env = "SWITCHYARD_EXTPROC_MAX_STREAMS", default_value_t = 8_192)]
    pub extproc_max_streams: usize,

    /// Bound on the wait for Envoy's next message while a request's headers and body arrive.
    #[arg(long, env = "SWITCHYARD_EXTPROC_REQUEST_IDLE_TIMEOUT", default_value = "30s", value_parser = parse_duration)]
    pub extproc_request_idle_timeout: Duration,

    /// Bound on the wait for Envoy's next message once the request was routed (the model server's first token may
    /// take long under load).
    #[arg(long, env = "SWITCHYARD_EXTPROC_RESPONSE_IDLE_TIMEOUT", default_value = "10m", value_parser = parse_duration)]
    pub extproc_response_idle_timeout: Duration,

    /// How often each pod's /metrics is scraped (e.g. `50ms`, `1s`).
    #[arg(long, env = "SWITCHYARD_SCRAPE_INTERVAL", default_value = "50ms", value_parser = parse_duration)]
    pub scrape_interval: Duration,

    /// Bound on one scrape; a pod that does not answer in time keeps its old, ageing metrics.
    #[arg(long, env = "SWITCHYARD_SCRAPE_TIMEOUT", default_value = "1s", value_parser = parse_duration)]
    pub scrape_timeout: Duration,

    /// How often the `--dir` directory is checked for changes.
    #[arg(long, env = "SWITCHYARD_DIR_POLL", default_value = "250ms", value_parser = parse_duration)]
    pub dir_poll: Duration,

    /// Bound on connecting to a model server before trying the next-best endpoint.
    #[arg(long, env = "SWITCHYARD_CONNECT_TIMEOUT", default_value = "2s", value_parser = parse_duration)]
    pub connect_timeout: Duration,

    /// Mirrored copies (proxy mode) in flight at most; a copy due while this many are out is skipped and counted
    /// (`switchyard_mirror_skipped_total{reason="busy"}`).
    #[arg(long, env = "SWITCHYARD_MIRROR_MAX_INFLIGHT", default_value_t = 256)]
    pub mirror_max_inflight: usize,

    /// Bound on one mirrored copy, from sending it to the end of its discarded response.
    #[arg(long, env = "SWITCHYARD_MIRROR_TIMEOUT", default_value = "60s", value_parser = parse_duration)]
    pub mirror_timeout: Duration,

    /// Serve `/debug/decisions` on the admin listener (prompts' model names, pods and scores of recent requests;
    /// `--debug-decisions=false` leaves it 404, as the deploy/ manifests do).
    #[arg(long, env = "SWITCHYARD_DEBUG_DECISIONS", default_value_t = true, action = clap::ArgAction::Set)]
    pub debug_decisions: bool,

    /// How many finished decisions /debug/decisions keeps.
    #[arg(long, env = "SWITCHYARD_DECISIONS_KEPT", default_value_t = 1000)]
    pub decisions_kept: usize,

    /// Ship every decision and a per-pod sample each second to this dashboard (e.g. `http://127.0.0.1:8088`).
    #[arg(long, env = "SWITCHYARD_DASHBOARD_URL", requires = "dashboard_token")]
    pub dashboard_url: Option<String>,

    /// The dashboard's ingest token (its `--ingest-token`), sent as a bearer token.
    #[arg(long, env = "SWITCHYARD_DASHBOARD_TOKEN", hide_env_values = true)]
    pub dashboard_token: Option<String>,

    /// Directory where batches the dashboard cannot take (down, restarting) wait on disk, to be resent oldest first
    /// once it answers, across a gateway restart too. Without it such batches are dropped after a few retries.
    #[arg(long, env = "SWITCHYARD_DASHBOARD_SPOOL_DIR")]
    pub dashboard_spool_dir: Option<PathBuf>,

    /// Bytes the spool may hold; batches past it are dropped (counted in `switchyard_dashboard_dropped_records`).
    #[arg(long, env = "SWITCHYARD_DASHBOARD_SPOOL_BYTES", default_value_t = 256 << 20)]
    pub dashboard_spool_bytes: u64,

    /// Follow the engines' KV events: the port every pod publishes on (vLLM's `--kv-events-config` endpoint
    /// `tcp://*:PORT`, usually 5557). Each pod's stream keeps the precise prefix index for that pod.
    #[arg(long, env = "SWITCHYARD_KV_EVENTS_PORT")]
    pub kv_events_port: Option<u16>,

    /// The port of every pod's KV-event replay socket (vLLM's `replay_endpoint`), asked for batches a gap lost.
    #[arg(long, env = "SWITCHYARD_KV_EVENTS_REPLAY_PORT", requires = "kv_events_port")]
    pub kv_events_replay_port: Option<u16>,

    /// Subscribe to this KV-event topic prefix only (vLLM's `topic`); empty for all.
    #[arg(long, env = "SWITCHYARD_KV_EVENTS_TOPIC", default_value = "")]
    pub kv_events_topic: String,

    /// A pod publishing no KV events for this long is scored approximately until it does again.
    #[arg(long, env = "SWITCHYARD_KV_EVENTS_SILENCE", default_value = "30s", value_parser = parse_duration)]
    pub kv_events_silence: Duration,

    /// The served model's `tokenizer.json` (its chat template is read from the `tokenizer_config.json` beside it).
    /// With `--kv-events-port`, prompts are tokenized as the engines tokenize them and scored on the blocks the
    /// engines report; without it, routing stays approximate.
    #[arg(long, env = "SWITCHYARD_TOKENIZER")]
    pub tokenizer: Option<PathBuf>,

    #[arg(long, env = "SWITCHYARD_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,
}

pub use api::duration::parse_duration;
pub use cli::LogFormat;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_parse_with_units() {
        assert_eq!(parse_duration("50ms"), Ok(Duration::from_millis(50)));
        assert_eq!(parse_duration("2s"), Ok(Duration::from_secs(2)));
        assert_eq!(parse_duration("1m"), Ok(Duration::from_secs(60)));
        assert!(parse_duration("250").unwrap_err().contains("needs a unit"));
        assert!(parse_duration("fast").unwrap_err().contains("not a duration"));
        assert!(
            Args::try_parse_from(["gateway", "--dir", "d", "--scrape-interval", "50"]).is_err(),
            "a bare number is refused, not read as milliseconds"
        );
    }

    #[test]
    fn exactly_one_provider_is_required() {
        let parse = |args: &[&str]| Args::try_parse_from([&["gateway"], args].concat());
        let dir = parse(&["--dir", "config"]).unwrap();
        assert_eq!((dir.dir, dir.kube), (Some(PathBuf::from("config")), false));
        let kube = parse(&["--kube", "--pool", "default/reasoning-pool"]).unwrap();
        assert_eq!((kube.dir, kube.kube), (None, true));
        assert!(parse(&[]).is_err());
        assert!(parse(&["--dir", "config", "--kube"]).is_err());
    }

    #[test]
    fn every_flag_has_an_env_var() {
        test_support::assert_every_flag_has_an_env_var(&<Args as clap::CommandFactory>::command());
    }
}
