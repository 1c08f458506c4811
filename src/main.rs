//! The `parlor` binary: parse the config, set up logging, open the store and
//! run the server until SIGINT/SIGTERM.

use clap::Parser;
use parlor::config::Cli;
use tracing_subscriber::EnvFilter;

fn main() -> std::process::ExitCode {
    let config = Cli::parse().into_config();
    tracing_subscriber::fmt()
        .with_env_filter(EnvFilter::try_from_env("PARLOR_LOG").unwrap_or_else(|_| EnvFilter::new("info")))
        .init();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(config.workers())
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("parlor: cannot start the runtime: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    match runtime.block_on(parlor::server::serve(config)) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("parlor: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
