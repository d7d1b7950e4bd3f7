//! `cargo xtask bench extproc`: the latency the ext_proc endpoint picker adds, measured like Envoy sees it — from
//! the first message of a stream to the routing answer — for 4 KB, 220 KB and 1 MB bodies, FULL_DUPLEX_STREAMED
//! (64 KiB chunks) and BUFFERED, at 1, 64 and 150 concurrent streams; plus decisions per CPU-second of the gateway
//! process and its peak RSS.
//!
//! Concurrency is measured two ways. With a hold (250 ms by default) each stream stays open after its routing
//! answer, as a request does while the model server works, so c streams arrive at about c / hold per second. With
//! hold 0 the streams run back to back: a closed loop that saturates the picker and the client, which share the
//! machine, so those rows measure capacity and queueing rather than the cost of one decision.
//!
//! Four simulated pods only serve `/metrics`; no model-server traffic is involved.

use std::{
    collections::BTreeMap,
    path::Path,
    time::{Duration, Instant},
};

use anyhow::Context as _;
use envoy_types::pb::envoy::{
    config::core::v3::{HeaderMap, HeaderValue},
    extensions::filters::http::ext_proc::v3::processing_mode::BodySendMode,
    service::ext_proc::v3::{
        HttpBody, HttpHeaders, ProcessingRequest, ProtocolConfiguration,
        external_processor_client::ExternalProcessorClient, processing_request, processing_response,
    },
};
use serde_json::Value;
use tokio::{process::Command, sync::mpsc};
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::Channel;

use crate::{
    demo,
    load::percentile,
    procs::{self, Proc},
};

#[derive(clap::Args, Debug)]
pub(crate) struct ExtprocArgs {
    /// Seconds of load per row (18 rows per hold time).
    #[arg(long, default_value_t = 2.0)]
    pub(crate) seconds: f64,
    /// Concurrency levels.
    #[arg(long, value_delimiter = ',', default_values_t = [1usize, 64, 150])]
    pub(crate) concurrency: Vec<usize>,
    /// How long each stream stays open between the routing answer and the response, as the model server's work
    /// would keep it; 0 is a back-to-back closed loop that saturates the picker. Both are measured by default.
    #[arg(long, value_delimiter = ',', default_values_t = [250u64, 0])]
    pub(crate) hold_ms: Vec<u64>,
}

const EXTPROC: &str = "127.0.0.1:19002";
const ADMIN: &str = "127.0.0.1:19092";
/// Envoy's streamed chunks are at most 64 KiB.
const CHUNK: usize = 64 << 10;
const SIZES: [(&str, usize); 3] = [("4KB", 4 << 10), ("220KB", 220 << 10), ("1MB", 1 << 20)];

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Mode {
    Streamed,
    Buffered,
}

struct Row {
    size: &'static str,
    mode: Mode,
    clients: usize,
    hold_ms: u64,
    requests: usize,
    errors: usize,
    p50_us: f64,
    p99_us: f64,
    rps: f64,
    /// Requests per CPU-second the gateway process spent during the row.
    per_core: f64,
}

pub(crate) async fn run(args: ExtprocArgs) -> anyhow::Result<()> {
    let bin = procs::build_bins(true, &["gateway", "vllm-sim"])?;
    let work = procs::workspace_root().join("target/bench/extproc");
    let config = work.join("config");
    std::fs::create_dir_all(&config)?;
    // Pods at 127.0.0.51–54 so the bench never collides with a running demo (127.0.0.11–15).
    std::fs::write(config.join("pool.yaml"), demo::SEED_POOL)?;
    std::fs::write(config.join("model.yaml"), demo::SEED_MODEL)?;
    std::fs::write(config.join("pods.yaml"), pods(4))?;
    let mut sim = Proc::spawn(
        "vllm-sim",
        &bin.join("vllm-sim"),
        &[
            "--addr".into(),
            "127.0.0.51:8000".into(),
            "--replicas".into(),
            "4".into(),
            "--profile".into(),
            "zero-delay".into(),
        ],
        Some(&work.join("vllm-sim.log")),
    )?;
    let log = std::fs::File::create(work.join("gateway.log"))?;
    let mut gateway = Command::new(bin.join("gateway"))
        .args(["--dir", &config.display().to_string()])
        .args(["--extproc-listen", EXTPROC, "--admin-listen", ADMIN])
        .args(["--health-listen", "127.0.0.1:19003"])
        .args(["--max-extproc-body-bytes", &(4usize << 20).to_string()])
        .env("RUST_LOG", "warn")
        .stdout(log.try_clone()?)
        .stderr(log)
        .kill_on_drop(true)
        .spawn()
        .context("starting the gateway")?;
    let pid = gateway.id().context("gateway pid")?;
    let deadline = Duration::from_secs(30);
    procs::wait_ready("http://127.0.0.51:8000/health", deadline, &mut [&mut sim]).await?;
    procs::wait_ready(&format!("http://{ADMIN}/readyz"), deadline, &mut [&mut sim]).await?;

    // Envoy multiplexes a worker thread's streams on one connection; four connections stand for four workers.
    let mut channels = Vec::new();
    for _ in 0..4 {
        let channel = Channel::from_shared(format!("http://{EXTPROC}"))?
            .initial_stream_window_size(Some(1 << 20))
            .initial_connection_window_size(Some(16 << 20))
            .tcp_nodelay(true)
            .connect()
            .await?;
        channels.push(ExternalProcessorClient::new(channel).max_decoding_message_size(8 << 20));
    }
    let window = Duration::from_secs_f64(args.seconds);
    // Warm-up: connections, allocator, the prefix index.
    measure(&channels, 4 << 10, Mode::Streamed, 16, 0, Duration::from_secs(1), pid).await;

    println!(
        "ext_proc added latency (first message → routing answer), {} s per row, 4 pods",
        args.seconds
    );
    println!(
        "{:>7} {:>6} {:>9} {:>8} {:>9} {:>10} {:>10} {:>9} {:>12} {:>7}",
        "hold ms", "body", "mode", "clients", "requests", "p50 µs", "p99 µs", "req/s", "req/cpu-s", "errors"
    );
    let mut rows = Vec::new();
    for &hold_ms in &args.hold_ms {
        for (size_name, size) in SIZES {
            for mode in [Mode::Streamed, Mode::Buffered] {
                for &clients in &args.concurrency {
                    // One stream alone is the same with or without a hold; measure it once, back to back.
                    if clients == 1 && hold_ms != args.hold_ms.iter().copied().min().unwrap_or(0) {
                        continue;
                    }
                    let hold = if clients == 1 { 0 } else { hold_ms };
                    let mut row = measure(&channels, size, mode, clients, hold, window, pid).await;
                    row.size = size_name;
                    print_row(&row);
                    rows.push(row);
                }
            }
        }
    }
    let peak_rss_mib = peak_rss_kib(pid) as f64 / 1024.0;
    let _ = gateway.kill().await;
    sim.stop(Duration::from_secs(5)).await;

    let mut summary: BTreeMap<String, Value> = BTreeMap::new();
    for row in &rows {
        let key = format!(
            "{}_{}_c{}_hold{}ms",
            row.size.to_lowercase(),
            format!("{:?}", row.mode).to_lowercase(),
            row.clients,
            row.hold_ms
        );
        summary.insert(format!("{key}_p50_us"), row.p50_us.into());
        summary.insert(format!("{key}_p99_us"), row.p99_us.into());
        summary.insert(format!("{key}_rps"), row.rps.into());
        summary.insert(format!("{key}_requests_per_cpu_second"), row.per_core.into());
        summary.insert(format!("{key}_errors"), row.errors.into());
    }
    let find = |size: &str, clients: usize, hold_ms: u64| {
        rows.iter()
            .find(|r| r.size == size && r.mode == Mode::Streamed && r.clients == clients && r.hold_ms == hold_ms)
    };
    let per_core = rows
        .iter()
        .filter(|r| r.size == "4KB")
        .map(|r| r.per_core)
        .fold(0.0, f64::max);
    summary.insert("decisions_per_cpu_second_4kb".into(), per_core.into());
    summary.insert("gateway_peak_rss_mib".into(), peak_rss_mib.into());
    println!("decisions per CPU-second of the gateway (4 KB bodies, best row): {per_core:.0}");
    println!("gateway peak RSS (VmHWM): {peak_rss_mib:.1} MiB");
    println!("targets (streamed):");
    for &hold_ms in &args.hold_ms {
        if let Some(r) = find("4KB", 64, hold_ms) {
            println!(
                "  4 KB, 64 streams, hold {hold_ms} ms: p50 {:.0} µs (target ≤ 150) {}, p99 {:.0} µs (target ≤ 1000) {}",
                r.p50_us,
                verdict(r.p50_us <= 150.0),
                r.p99_us,
                verdict(r.p99_us <= 1000.0)
            );
        }
        if let Some(r) = find("220KB", 150, hold_ms) {
            println!(
                "  220 KB, 150 streams, hold {hold_ms} ms: p50 {:.2} ms (target ≤ 5) {}",
                r.p50_us / 1e3,
                verdict(r.p50_us <= 5000.0)
            );
        }
    }
    let path = super::write_summary("extproc", summary)?;
    println!("wrote {}", path.display());
    Ok(())
}

fn print_row(row: &Row) {
    println!(
        "{:>7} {:>6} {:>9} {:>8} {:>9} {:>10.0} {:>10.0} {:>9.0} {:>12.0} {:>7}",
        row.hold_ms,
        row.size,
        format!("{:?}", row.mode).to_lowercase(),
        row.clients,
        row.requests,
        row.p50_us,
        row.p99_us,
        row.rps,
        row.per_core,
        row.errors
    );
}

fn verdict(ok: bool) -> &'static str {
    if ok { "met" } else { "MISSED" }
}

fn pods(n: u8) -> String {
    (0..n)
        .map(|i| {
            format!(
                "apiVersion: v1\nkind: Pod\nmetadata:\n  name: qwq-32b-{i}\n  namespace: default\n  labels:\n    app: qwq-32b\n\
                 status:\n  podIP: 127.0.0.{}\n  conditions:\n  - type: Ready\n    status: \"True\"\n",
                51 + i
            )
        })
        .collect::<Vec<_>>()
        .join("---\n")
}

/// A completions body of `size` bytes: a shared system prompt, then a per-request part.
fn body(size: usize, i: usize) -> Vec<u8> {
    let head = format!(r#"{{"model":"qwq","max_tokens":1,"prompt":"request {i}: "#);
    let tail = "\"}";
    let filler = size.saturating_sub(head.len() + tail.len());
    let mut out = String::with_capacity(size);
    out.push_str(&head);
    out.extend(std::iter::repeat_n("You are a helpful assistant. ", filler / 29 + 1));
    out.truncate(head.len() + filler);
    out.push_str(tail);
    out.into_bytes()
}

fn message(request: processing_request::Request) -> ProcessingRequest {
    ProcessingRequest {
        request: Some(request),
        ..ProcessingRequest::default()
    }
}

fn request_messages(body: &[u8], mode: Mode) -> Vec<ProcessingRequest> {
    let pairs = [
        (":method", "POST".to_owned()),
        (":path", "/v1/completions".to_owned()),
        ("content-type", "application/json".to_owned()),
        ("content-length", body.len().to_string()),
    ];
    let mut headers = message(processing_request::Request::RequestHeaders(HttpHeaders {
        headers: Some(HeaderMap {
            headers: pairs
                .iter()
                .map(|(k, v)| HeaderValue {
                    key: (*k).to_owned(),
                    raw_value: v.as_bytes().to_vec(),
                    ..HeaderValue::default()
                })
                .collect(),
        }),
        ..HttpHeaders::default()
    }));
    let body_mode = match mode {
        Mode::Streamed => BodySendMode::FullDuplexStreamed,
        Mode::Buffered => BodySendMode::Buffered,
    };
    headers.protocol_config = Some(ProtocolConfiguration {
        request_body_mode: body_mode as i32,
        response_body_mode: body_mode as i32,
        ..ProtocolConfiguration::default()
    });
    let mut out = vec![headers];
    let chunk = if mode == Mode::Streamed { CHUNK } else { body.len() };
    let pieces: Vec<&[u8]> = body.chunks(chunk.max(1)).collect();
    for (i, piece) in pieces.iter().enumerate() {
        out.push(message(processing_request::Request::RequestBody(HttpBody {
            body: piece.to_vec(),
            end_of_stream: i + 1 == pieces.len(),
            ..HttpBody::default()
        })));
    }
    out
}

/// One exchange; returns the added latency, or `None` when the picker did not route.
async fn exchange(
    client: &mut ExternalProcessorClient<Channel>,
    messages: Vec<ProcessingRequest>,
    mode: Mode,
    hold: Duration,
) -> Option<Duration> {
    let (tx, rx) = mpsc::channel(messages.len() + 4);
    for m in messages {
        tx.try_send(m).ok()?;
    }
    let started = Instant::now();
    let mut answers = client.process(ReceiverStream::new(rx)).await.ok()?.into_inner();
    let added = loop {
        let answer = answers.message().await.ok()??;
        match (answer.response?, mode) {
            (processing_response::Response::RequestHeaders(_), Mode::Streamed)
            | (processing_response::Response::RequestBody(_), Mode::Buffered) => break started.elapsed(),
            (processing_response::Response::RequestHeaders(_), Mode::Buffered) => {}
            _ => return None,
        }
    };
    if mode == Mode::Streamed {
        // The body comes back in chunks; the last one carries end_of_stream.
        loop {
            match answers.message().await.ok()??.response? {
                processing_response::Response::RequestBody(b) => {
                    let end = b
                        .response
                        .and_then(|r| r.body_mutation)
                        .and_then(|m| m.mutation)
                        .is_some_and(|m| {
                            matches!(m, envoy_types::pb::envoy::service::ext_proc::v3::body_mutation::Mutation::StreamedResponse(s) if s.end_of_stream)
                        });
                    if end {
                        break;
                    }
                }
                _ => return None,
            }
        }
    }
    // The model server's turn; the stream stays open meanwhile, as Envoy keeps it.
    if !hold.is_zero() {
        tokio::time::sleep(hold).await;
    }
    // A one-chunk JSON response finishes the decision, as a real request would.
    tx.send(message(processing_request::Request::ResponseHeaders(HttpHeaders {
        headers: Some(HeaderMap {
            headers: vec![HeaderValue {
                key: ":status".into(),
                raw_value: b"200".to_vec(),
                ..HeaderValue::default()
            }],
        }),
        ..HttpHeaders::default()
    })))
    .await
    .ok()?;
    tx.send(message(processing_request::Request::ResponseBody(HttpBody {
        body: br#"{"usage":{"prompt_tokens":1,"completion_tokens":1}}"#.to_vec(),
        end_of_stream: true,
        ..HttpBody::default()
    })))
    .await
    .ok()?;
    drop(tx);
    answers.message().await.ok()??;
    answers.message().await.ok()??;
    Some(added)
}

async fn measure(
    channels: &[ExternalProcessorClient<Channel>],
    size: usize,
    mode: Mode,
    clients: usize,
    hold_ms: u64,
    window: Duration,
    pid: u32,
) -> Row {
    let cpu_before = cpu_seconds(pid);
    let started = Instant::now();
    let until = started + window;
    let mut workers = tokio::task::JoinSet::new();
    for w in 0..clients {
        let mut client = channels[w % channels.len()].clone();
        workers.spawn(async move {
            let (mut latencies, mut errors) = (Vec::new(), 0usize);
            let mut i = w;
            // Spread the streams over one hold period, or they would arrive as a burst of `clients` every hold.
            tokio::time::sleep(Duration::from_millis(hold_ms) * w as u32 / clients as u32).await;
            while Instant::now() < until {
                // The body is built before the clock starts: Envoy holds it already.
                let messages = request_messages(&body(size, i), mode);
                match exchange(&mut client, messages, mode, Duration::from_millis(hold_ms)).await {
                    Some(added) => latencies.push(added.as_secs_f64() * 1e6),
                    None => errors += 1,
                }
                i += clients;
            }
            (latencies, errors)
        });
    }
    let (mut latencies, mut errors) = (Vec::new(), 0);
    while let Some(joined) = workers.join_next().await {
        if let Ok((l, e)) = joined {
            latencies.extend(l);
            errors += e;
        }
    }
    let elapsed = started.elapsed().as_secs_f64();
    let cpu = (cpu_seconds(pid) - cpu_before).max(1e-9);
    latencies.sort_by(f64::total_cmp);
    Row {
        size: "",
        mode,
        clients,
        hold_ms,
        requests: latencies.len(),
        errors,
        p50_us: percentile(&latencies, 50.0),
        p99_us: percentile(&latencies, 99.0),
        rps: latencies.len() as f64 / elapsed,
        per_core: latencies.len() as f64 / cpu,
    }
}

/// User + system CPU seconds of a process, from /proc/<pid>/stat (fields 14 and 15, in clock ticks of 1/100 s).
fn cpu_seconds(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(Path::new("/proc").join(pid.to_string()).join("stat")).unwrap_or_default();
    // The command name may contain spaces; fields are counted after its closing parenthesis.
    let rest = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or("");
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| fields.get(i).and_then(|f| f.parse::<f64>().ok()).unwrap_or(0.0);
    // After ")" the first field is the state (field 3), so utime (14) and stime (15) are at 11 and 12.
    (ticks(11) + ticks(12)) / 100.0
}

/// Peak resident set size (VmHWM) of a process, in KiB.
fn peak_rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(Path::new("/proc").join(pid.to_string()).join("status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}
