//! The simulator, run in this process on a free port, and provider configs that reach it.

use super::*;

/// The simulator, served by this process on a runtime of its own, as `licensegate-sim` with
/// the given flags would serve it.
pub struct Sim {
    runtime: Option<tokio::runtime::Runtime>,
    pub port: u16,
}

#[derive(clap::Parser)]
struct SimFlags {
    #[command(flatten)]
    faults: licensegate_sim::Faults,
    #[command(flatten)]
    provider: licensegate_sim::vendors::VendorArgs,
}

impl Sim {
    pub fn start(args: &[&str]) -> Sim {
        use clap::Parser;
        let flags = SimFlags::try_parse_from(
            std::iter::once("licensegate-sim").chain(args.iter().copied()),
        )
        .unwrap_or_else(|e| panic!("simulator flags {args:?}: {e}"));
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        listener.set_nonblocking(true).unwrap();
        let port = listener.local_addr().unwrap().port();
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        runtime.spawn(async move {
            let listener = tokio::net::TcpListener::from_std(listener).unwrap();
            licensegate_sim::serve(listener, flags.faults, flags.provider).await
        });
        Sim {
            runtime: Some(runtime),
            port,
        }
    }

    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}/AcquireLicense", self.port)
    }

    pub async fn stats(&self) -> serde_json::Value {
        crate::get_json(&format!("http://127.0.0.1:{}/stats", self.port)).await
    }
}

impl Drop for Sim {
    fn drop(&mut self) {
        // Tests drop it inside their own runtime, where waiting is not allowed.
        if let Some(runtime) = self.runtime.take() {
            runtime.shutdown_background();
        }
    }
}

/// Axinom's public test communication key (**Azure Media Services with Axinom**,
/// docs/sources.md), which the simulator's Axinom mode checks by default.
pub const AXINOM_COM_KEY_ID: &str = "69e54088-e9e0-4530-8c1a-1eb6dcd0d14e";
pub const AXINOM_COM_KEY: &str = "4861292d027e269791093327e62ceefdbea489a4c7e5a4974cc904b840fd7c0f";
/// The simulator's default DRMtoday shared secret (`--secret`).
pub const DRMTODAY_SECRET: &str =
    "000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f";

/// The body of `[providers.NAME]` for an Axinom provider on `sim` (started with
/// `--vendor axinom`), with the simulator's communication key.
pub fn axinom_provider(name: &str, sim: &Sim) -> String {
    format!(
        "kind = \"axinom\"\nendpoints = [\"{}\"]\n[providers.{name}.settings]\n\
         com_key_id = \"{AXINOM_COM_KEY_ID}\"\ncom_key = \"{AXINOM_COM_KEY}\"",
        sim.url()
    )
}
