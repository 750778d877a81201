//! The baseline licensegate's cost is measured against (`loadtest/run.sh`): a Pingora proxy of
//! the same version and features that reads the player's whole body, as licensegate does, and
//! forwards it to one upstream over h2c or HTTP/1.1. Nothing else: no routing, no metrics, no
//! log line.
//!
//!   cargo run --release --example bare_proxy -- --listen 127.0.0.1:18100 \
//!     --upstream 127.0.0.1:18090 --protocol h2 --threads 2 --h2-streams 100

use std::net::SocketAddr;

use async_trait::async_trait;
use clap::{Parser, ValueEnum};
use pingora::apps::HttpServerOptions;
use pingora::prelude::{HttpPeer, Session};
use pingora::proxy::ProxyHttp;
use pingora::server::Server;
use pingora::server::configuration::ServerConf;

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Protocol {
    H2,
    H1,
}

#[derive(Parser)]
struct Cli {
    #[arg(long)]
    listen: SocketAddr,
    #[arg(long)]
    upstream: SocketAddr,
    #[arg(long, value_enum, default_value = "h2")]
    protocol: Protocol,
    #[arg(long, default_value_t = 2)]
    threads: usize,
    /// Streams an h2c connection carries at once; Pingora's default of 1 opens a connection
    /// per concurrent request, more shares one as licensegate does.
    #[arg(long, default_value_t = 1)]
    h2_streams: usize,
}

struct Bare {
    upstream: SocketAddr,
    protocol: Protocol,
    h2_streams: usize,
}

#[async_trait]
impl ProxyHttp for Bare {
    type CTX = ();

    fn new_ctx(&self) {}

    async fn request_filter(&self, session: &mut Session, _ctx: &mut ()) -> pingora::Result<bool> {
        // Read the whole challenge before the upstream is chosen, as licensegate must; Pingora
        // then sends the buffered body.
        session.enable_retry_buffering();
        while session.read_request_body().await?.is_some() {}
        Ok(false)
    }

    async fn upstream_peer(
        &self,
        _session: &mut Session,
        _ctx: &mut (),
    ) -> pingora::Result<Box<HttpPeer>> {
        let mut peer = HttpPeer::new(self.upstream, false, String::new());
        if self.protocol == Protocol::H2 {
            peer.options.set_http_version(2, 2);
            peer.options.max_h2_streams = self.h2_streams;
        }
        Ok(Box::new(peer))
    }
}

fn main() {
    let cli = Cli::parse();
    let conf = ServerConf {
        threads: cli.threads,
        ..ServerConf::default()
    };
    let mut server = Server::new_with_opt_and_conf(None, conf);
    server.bootstrap();
    let mut proxy = pingora::proxy::http_proxy_service(
        &server.configuration,
        Bare {
            upstream: cli.upstream,
            protocol: cli.protocol,
            h2_streams: cli.h2_streams,
        },
    );
    let mut options = HttpServerOptions::default();
    options.h2c = true;
    if let Some(app) = proxy.app_logic_mut() {
        app.server_options = Some(options);
    }
    proxy.add_tcp(&cli.listen.to_string());
    server.add_service(proxy);
    server.run_forever();
}
