//! `cargo xtask bench <name>`: benchmarks that print a table and write `target/bench/<name>/summary.json`.

mod arrivals;
mod calibrate;
mod classes;
mod dashboard;
mod extproc;
mod overhead;
mod routing;

use std::{collections::BTreeMap, path::PathBuf};

use anyhow::Context as _;
use serde_json::Value;

use crate::procs;

#[derive(clap::Args, Debug)]
pub(crate) struct BenchArgs {
    #[command(subcommand)]
    pub(crate) which: Which,
}

#[derive(clap::Subcommand, Debug)]
pub(crate) enum Which {
    /// Scheduler decision time at 8/64/256 endpoints, and proxy vs direct-to-simulator throughput and latency.
    Overhead(overhead::OverheadArgs),
    /// The seed's experiment and other workloads: random, round-robin and Switchyard's profiles on five simulated pods.
    Routing(routing::RoutingArgs),
    /// The seed's experiment beside the seed's own table: relative error of every figure over a KV-size sweep.
    Calibrate(calibrate::CalibrateArgs),
    /// Dashboard ingest rate over HTTP and filtered audit-page latency with 5 million stored decisions.
    Dashboard(dashboard::DashboardArgs),
    /// Latency the ext_proc picker adds (first message → routing answer) by body size, mode and concurrency.
    Extproc(extproc::ExtprocArgs),
}

pub(crate) async fn run(args: BenchArgs) -> anyhow::Result<()> {
    if cfg!(debug_assertions) {
        // Numbers from an unoptimised build mean nothing: rebuild xtask in release and run the same command there.
        let bin = procs::build_bins(true, &["xtask"])?;
        let status = std::process::Command::new(bin.join("xtask"))
            .args(std::env::args_os().skip(1))
            .status()
            .context("running the release build of xtask")?;
        if !status.success() {
            anyhow::bail!("benchmark failed with {status}");
        }
        return Ok(());
    }
    match args.which {
        Which::Overhead(args) => overhead::run(args).await,
        Which::Dashboard(args) => dashboard::run(args).await,
        Which::Extproc(args) => extproc::run(args).await,
        Which::Routing(args) => routing::run(args).await,
        Which::Calibrate(args) => calibrate::run(args).await,
    }
}

/// Writes the figures with the command line, commit and machine they came from (DESIGN.md §10).
pub(crate) fn write_summary(name: &str, figures: BTreeMap<String, Value>) -> anyhow::Result<PathBuf> {
    let dir = procs::workspace_root().join("target/bench").join(name);
    std::fs::create_dir_all(&dir)?;
    let mut summary = figures;
    let command = std::iter::once("cargo xtask".to_owned())
        .chain(std::env::args().skip(1))
        .collect::<Vec<_>>()
        .join(" ");
    summary.insert("command".into(), command.into());
    summary.insert("git_commit".into(), git_commit().into());
    summary.insert(
        "machine_cores".into(),
        std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(0)
            .into(),
    );
    summary.insert("machine_memory_gib".into(), memory_gib().into());
    let path = dir.join("summary.json");
    std::fs::write(&path, serde_json::to_string_pretty(&summary)?)?;
    Ok(path)
}

fn git_commit() -> String {
    std::process::Command::new("git")
        .args(["rev-parse", "--short", "HEAD"])
        .current_dir(procs::workspace_root())
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
        .unwrap_or_else(|| "unknown".into())
}

fn memory_gib() -> f64 {
    let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
    meminfo
        .lines()
        .find_map(|l| l.strip_prefix("MemTotal:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
        .map(|kb| (kb / 1024.0 / 1024.0 * 10.0).round() / 10.0)
        .unwrap_or(0.0)
}
