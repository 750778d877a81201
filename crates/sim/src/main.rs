//! The simulator's command line; the server itself is the library.

use std::net::SocketAddr;

use std::io::Write;

use clap::Parser;
use licensegate_drm::challenge::RequestType;
use licensegate_drm::challenge::widevine;
use licensegate_sim::vendors::VendorArgs;
use licensegate_sim::{self as sim, Faults};

#[derive(Parser)]
#[command(name = "licensegate-sim", version, about = "License server simulator")]
struct Cli {
    /// Address to listen on (HTTP/1.1 and h2c on the same port).
    #[arg(long, default_value = "127.0.0.1:8090")]
    listen: SocketAddr,
    /// Worker threads; defaults to the number of cores.
    #[arg(long)]
    threads: Option<usize>,
    #[command(flatten)]
    faults: Faults,
    #[command(flatten)]
    vendor: VendorArgs,
    /// Write to stdout the Widevine renewal request a CDM holding this license (a file) sends,
    /// then exit: load tests renew a live stream with it.
    #[arg(long, value_name = "LICENSE_FILE")]
    renewal_for: Option<std::path::PathBuf>,
}

fn main() -> std::io::Result<()> {
    let cli = Cli::parse();
    if let Some(path) = cli.renewal_for {
        let license = std::fs::read(&path)?;
        let renewal = widevine::continuation_request(&license, RequestType::Renewal, 1)
            .ok_or_else(|| std::io::Error::other("not a Widevine license"))?;
        return std::io::stdout().write_all(&renewal);
    }
    let mut runtime = tokio::runtime::Builder::new_multi_thread();
    if let Some(threads) = cli.threads {
        runtime.worker_threads(threads);
    }
    runtime.enable_all().build()?.block_on(async {
        let listener = tokio::net::TcpListener::bind(cli.listen).await?;
        println!("licensegate-sim listening on {}", listener.local_addr()?);
        sim::serve(listener, cli.faults, cli.vendor).await
    })
}
