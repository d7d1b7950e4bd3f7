//! `cargo xtask`: project automation (ci, demo, bench) so CI and people run the same commands.

mod bench;
mod ci;
mod codegen;
mod demo;
mod fuzz;
mod load;
mod procs;
mod tidy;
mod workload;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "cargo xtask", about = "Switchyard project automation")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Tidy checks, rustfmt, clippy -D warnings and all tests.
    Ci,
    /// Five simulated vLLM pods behind the gateway, a short mixed load and a per-pod table.
    Demo(demo::DemoArgs),
    /// Benchmarks; each prints a table and writes target/bench/<name>/summary.json.
    Bench(bench::BenchArgs),
    /// The property-based fuzz targets in release, 10 million cases each unless `--cases` says otherwise.
    Fuzz(fuzz::FuzzArgs),
    /// Writes the CRD YAML generated from crates/api into deploy/crds/ (`--check`: fail on drift instead).
    Codegen(codegen::CodegenArgs),
}

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Ci => ci::run_ci(),
        Command::Demo(args) => demo::run(args).await,
        Command::Bench(args) => bench::run(args).await,
        Command::Codegen(args) => codegen::run(args),
        Command::Fuzz(args) => fuzz::run(args),
    };
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("error: {err:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
