//! The `sluice` binary: parse flags, set up logging, size the runtime, run until SIGTERM or
//! SIGINT, then shut down gracefully and exit 0.

use anyhow::Context;
use clap::Parser;
use sluice::cli::Cli;

// PERF: jemalloc instead of glibc's malloc. Callgrind h1-small (profiling build): 54 800 ->
// 46 300 instructions per request (malloc and free were 20 % of them); idle-10k RSS the
// same or lower. mimalloc gave 47 900 but 13 MiB more RSS at start (it asks for huge pages).
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

// PERF: jemalloc's defaults gave every page-sized allocation a slab of its own and a thread
// cache of 20, and each request makes several (the 4 KiB head buffer, the ~3.7 KB request
// future, the 8 KiB upstream read buffer). Under 50 concurrent connections the cache swung
// from empty to full and back, so about 3 slabs per request were made and given back (gdb on
// `arena_slab_alloc`: 4 KiB and 8 KiB bins). 16-page slabs hold 16 (4 KiB) or 8 (8 KiB)
// regions, and each bin caches 64. Callgrind h1-small (`h2load --h1 -c 50`, profiling build):
// 48 100-49 100 -> 42 100 instructions per request (41 100 at 10 connections, from 43 100);
// cpu_split.sh ROUNDS=8: user CPU 9.0 -> 7.5 ms per 1 000 requests (medians). Idle-10k RSS
// unchanged. Still worth it since the buffers shrank to 1 KiB (head) and 4 KiB (upstream):
// `CONNECTIONS=50 bash benches/callgrind.sh`, release build of 5d2e67d, 38 500 instructions
// per request, 43 700 with jemalloc's defaults put back through `_RJEM_MALLOC_CONF`.
// Options in `_RJEM_MALLOC_CONF` still take precedence (README, Flags).
#[allow(non_upper_case_globals)]
#[export_name = "_rjem_malloc_conf"]
static malloc_conf: &[u8; 51] = b"tcache_nslots_small_min:64,slab_sizes:4096-8192:16\0";

fn init_tracing(format: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        // kube's client logs every failed request at ERROR without saying which; the
        // source and the leader election log those failures once, naming the object.
        .unwrap_or_else(|_| {
            tracing_subscriber::EnvFilter::new("info,kube_client::client::builder=off")
        });
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()));
    if format == "json" {
        builder.json().init();
    } else {
        builder.init();
    }
}

/// Worker threads: the flag, else the ConfigMap's worker-processes (read before the runtime
/// starts), else one per CPU.
fn worker_threads(cli: &Cli) -> usize {
    if let Some(n) = cli.worker_threads {
        return n.max(1);
    }
    sluice::settings::worker_processes_hint(cli).unwrap_or_else(|| {
        std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(1)
    })
}

async fn wait_for_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate()).expect("installing the SIGTERM handler");
    tokio::select! {
        _ = term.recv() => tracing::info!("SIGTERM received"),
        _ = tokio::signal::ctrl_c() => tracing::info!("SIGINT received"),
    }
}

fn main() -> anyhow::Result<()> {
    if std::env::args_os().nth(1).is_some_and(|a| a == "audit") {
        init_tracing("text");
        std::process::exit(sluice::audit::main(std::env::args_os().skip(1)));
    }
    let cli = Cli::parse();
    init_tracing(&cli.log_format);
    let threads = worker_threads(&cli);
    // PERF: one worker thread runs on tokio's current-thread scheduler, as an nginx worker
    // runs its event loop: no work-stealing queues, no cross-thread wake-ups. Same binary,
    // wrk -c50 through one worker, 3 alternating rounds: 35 200 -> 42 000 req/s, CPU per
    // request 27.8 -> 23.4 us.
    let mut builder = if threads == 1 {
        tokio::runtime::Builder::new_current_thread()
    } else {
        let mut builder = tokio::runtime::Builder::new_multi_thread();
        builder.worker_threads(threads);
        builder
    };
    let runtime = builder
        .enable_all()
        .build()
        .context("building the runtime")?;
    runtime.block_on(async move {
        let running = sluice::app::start(cli).await?;
        wait_for_signal().await;
        running.shutdown().await;
        Ok::<_, anyhow::Error>(())
    })?;
    // Connection tasks still parked on closed sockets are not worth waiting for.
    runtime.shutdown_timeout(std::time::Duration::from_millis(100));
    Ok(())
}
