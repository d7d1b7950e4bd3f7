//! `dashboard` binary: parse flags, initialise logging, run.

use clap::Parser;
use dashboard::args::Args;

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let args = Args::parse();
    cli::init_logging(args.log_format);
    cli::exit("dashboard", dashboard::run(args).await)
}
