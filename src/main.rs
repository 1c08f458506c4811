//! The `parlor` binary: parse the config, set up logging, and run the server
//! until SIGINT/SIGTERM. Signals are the binary's business: the first one
//! starts a clean shutdown, a second one exits at once (status 130).

use parlor::config::{Invocation, LogFormat};
use tracing_subscriber::EnvFilter;

/// jemalloc, not the system's malloc: every message frame is allocated by
/// one thread (the shard, or a session) and freed by another (the last
/// writer to send it), and glibc takes the allocating arena's lock for
/// such a free once the freeing thread's small cache is full. With
/// jemalloc, 100 rooms × 10 cost 11–16 % less CPU per delivery (medians of
/// interleaved runs), with the same idle memory per connection and the
/// same tail in a mass reconnect.
#[cfg(not(feature = "dhat-heap"))]
#[global_allocator]
static JEMALLOC: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

/// With `--features dhat-heap`: every allocation is tracked, and a heap
/// profile is written to `dhat-heap.json` at the first signal, before the
/// shutdown lets go of the connections, so its "t-end" is what the live
/// connections hold (memory work only: it costs a lot of speed).
#[cfg(feature = "dhat-heap")]
#[global_allocator]
static ALLOC: dhat::Alloc = dhat::Alloc;

#[cfg(feature = "dhat-heap")]
static PROFILER: parking_lot::Mutex<Option<dhat::Profiler>> = parking_lot::Mutex::new(None);

fn main() -> std::process::ExitCode {
    #[cfg(feature = "dhat-heap")]
    {
        *PROFILER.lock() = Some(dhat::Profiler::new_heap());
    }
    let config = match Invocation::parse_from(std::env::args_os()) {
        Ok(Invocation::Serve(config)) => config,
        Ok(Invocation::PrintConfig(config)) => {
            print!("{}", config.to_toml());
            return std::process::ExitCode::SUCCESS;
        }
        Err(parlor::config::ConfigError::Cli(e)) => e.exit(),
        Err(e) => {
            eprintln!("parlor: {e}");
            return std::process::ExitCode::from(2);
        }
    };
    let filter = EnvFilter::try_from_env("PARLOR_LOG").unwrap_or_else(|_| EnvFilter::new("info"));
    match config.log_format {
        LogFormat::Text => tracing_subscriber::fmt()
            .with_writer(std::io::stderr)
            .with_env_filter(filter)
            .init(),
        LogFormat::Json => tracing_subscriber::fmt()
            .json()
            .with_writer(std::io::stderr)
            .with_env_filter(filter)
            .init(),
    }
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
    let first_signal = async {
        shutdown_signal().await;
        #[cfg(feature = "dhat-heap")]
        drop(PROFILER.lock().take());
        tokio::spawn(async {
            shutdown_signal().await;
            tracing::warn!("second signal: exiting at once");
            std::process::exit(130);
        });
    };
    match runtime.block_on(parlor::server::serve(config, first_signal)) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("parlor: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

/// SIGINT or SIGTERM.
async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = ctrl_c => {}
                    _ = term.recv() => {}
                }
            }
            Err(_) => {
                let _ = ctrl_c.await;
            }
        }
    }
    #[cfg(not(unix))]
    let _ = ctrl_c.await;
}
