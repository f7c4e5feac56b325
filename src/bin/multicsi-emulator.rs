//! `multicsi-emulator cloudscale|civo|packet --listen ADDR`: serves a cloud's
//! REST API and metadata service for tests, with fault injection.

use std::path::PathBuf;
use std::sync::Arc;

use clap::{Parser, ValueEnum};
use multicsi::emulator::{self, DeviceHost, Faults, Options, faults::FaultSettings};

#[derive(Clone, Copy, Debug, ValueEnum)]
enum Provider {
    Cloudscale,
    Civo,
    Packet,
}

#[derive(Parser, Debug)]
#[command(name = "multicsi-emulator", version, about)]
struct Cli {
    /// Which cloud to emulate.
    #[arg(value_enum)]
    provider: Provider,
    /// Address to listen on, e.g. 127.0.0.1:8080 (port 0 picks a free port,
    /// printed on the first line of stdout).
    #[arg(long, default_value = "127.0.0.1:0")]
    listen: String,
    /// Directory for volume images; with --link-dir, attached volumes
    /// appear as loop devices (needs root).
    #[arg(long, requires = "link_dir")]
    image_dir: Option<PathBuf>,
    /// Directory where attached volumes are linked under the cloud's
    /// device names (point the driver's --device-dir here).
    #[arg(long, requires = "image_dir")]
    link_dir: Option<PathBuf>,
    /// Milliseconds an asynchronous state change takes.
    #[arg(long, default_value_t = 50)]
    transition_ms: u64,
    /// Latency added to every answer, in milliseconds.
    #[arg(long, default_value_t = 0)]
    latency_ms: u64,
    /// Share of requests answered 500/502/503 (0..1).
    #[arg(long, default_value_t = 0.0)]
    error_share: f64,
    /// Share of requests that start a burst of 429 answers (0..1).
    #[arg(long, default_value_t = 0.0)]
    throttle_share: f64,
    /// Length of a 429 burst.
    #[arg(long, default_value_t = 1)]
    throttle_burst: u32,
    /// Retry-After of a 429 answer, in seconds.
    #[arg(long, default_value_t = 1)]
    retry_after_secs: u64,
    /// Share of connections dropped without an answer (0..1).
    #[arg(long, default_value_t = 0.0)]
    drop_share: f64,
    /// Seed of the fault generator.
    #[arg(long, default_value_t = 1)]
    seed: u64,
}

fn main() {
    let cli = Cli::parse();
    for (name, share) in [
        ("--error-share", cli.error_share),
        ("--throttle-share", cli.throttle_share),
        ("--drop-share", cli.drop_share),
    ] {
        if !(0.0..=1.0).contains(&share) {
            eprintln!("error: {name} must be between 0 and 1");
            std::process::exit(2);
        }
    }
    let devices = match (&cli.image_dir, &cli.link_dir) {
        (Some(images), Some(links)) => match DeviceHost::new(images.clone(), links.clone()) {
            Ok(host) => Some(host),
            Err(e) => {
                eprintln!("error: cannot prepare {}: {e}", images.display());
                std::process::exit(1);
            }
        },
        _ => None,
    };
    let options = Options {
        devices: devices.clone(),
        transition_ms: cli.transition_ms,
    };
    let faults = Arc::new(Faults::new(FaultSettings {
        latency_ms: cli.latency_ms,
        error_share: cli.error_share,
        throttle_share: cli.throttle_share,
        throttle_burst: cli.throttle_burst,
        retry_after_secs: cli.retry_after_secs,
        drop_share: cli.drop_share,
        seed: cli.seed,
    }));
    let (app, error_body): (axum::Router, emulator::ErrorBody) = match cli.provider {
        Provider::Cloudscale => (
            emulator::cloudscale::router(options),
            emulator::cloudscale::error_body,
        ),
        Provider::Civo => (emulator::civo::router(options), emulator::civo::error_body),
        Provider::Packet => (
            emulator::packet::router(options),
            emulator::packet::error_body,
        ),
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("tokio runtime");
    let result = runtime.block_on(async move {
        let listener = tokio::net::TcpListener::bind(&cli.listen).await?;
        println!("listening on http://{}", listener.local_addr()?);
        tokio::select! {
            result = emulator::serve(listener, app, faults, error_body) => result,
            _ = shutdown_signal() => Ok(()),
        }
    });
    if let Some(host) = devices {
        host.clear();
    }
    if let Err(e) = result {
        eprintln!("error: {e}");
        std::process::exit(1);
    }
}

async fn shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate()).expect("SIGTERM handler");
    tokio::select! {
        _ = term.recv() => {}
        _ = tokio::signal::ctrl_c() => {}
    }
}
