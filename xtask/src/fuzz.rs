//! `cargo xtask fuzz`: the property-based fuzz targets (`crates/gateway/src/fuzz.rs` and the ext_proc state machine's
//! `fuzz_*` test) in a release build with many cases each, printing cases per second per target.

use std::ffi::OsStr;

use crate::procs;

#[derive(clap::Args, Debug)]
pub(crate) struct FuzzArgs {
    /// Cases per target (each a fresh input; the property must hold for every one).
    #[arg(long, default_value_t = 10_000_000)]
    cases: u64,
    /// Only the targets whose test name contains this (e.g. `openai`, `usage`, `prometheus`, `ext_proc`).
    #[arg(long, default_value = "")]
    target: String,
}

pub(crate) fn run(args: FuzzArgs) -> anyhow::Result<()> {
    let filter = format!("fuzz_{}", args.target);
    eprintln!(
        "fuzz: {} cases per target, release build, targets matching {filter:?}; each prints its rate when done",
        args.cases
    );
    let started = std::time::Instant::now();
    let cases = args.cases.to_string();
    procs::run_with_env(
        "cargo",
        &[
            "test",
            "--release",
            "--quiet",
            "-p",
            "gateway",
            "--lib",
            &filter,
            "--",
            "--nocapture",
            "--test-threads",
            "1",
        ],
        &[("SWITCHYARD_FUZZ_CASES", OsStr::new(&cases))],
    )?;
    eprintln!(
        "fuzz: every target held for {} cases ({:.0} s in all)",
        args.cases,
        started.elapsed().as_secs_f64()
    );
    Ok(())
}
