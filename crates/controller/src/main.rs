//! `controller` binary: parse flags, initialise logging, run.

use clap::Parser;
use controller::args::Args;

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let args = Args::parse();
    cli::init_logging(args.log_format);
    cli::exit("controller", controller::run(args).await)
}
