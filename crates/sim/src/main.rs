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
    /// Pad that renewal request to this many bytes with its signature field, so that a load
    /// test of renewals sends as many bytes as its rows of new licenses.
    #[arg(long, value_name = "BYTES", requires = "renewal_for")]
    renewal_bytes: Option<usize>,
}

fn main() -> std::io::Result<()> {
    let cli = Cli::parse();
    if let Some(path) = cli.renewal_for {
        let license = std::fs::read(&path)?;
        let mut renewal = widevine::continuation_request(&license, RequestType::Renewal, 1)
            .ok_or_else(|| std::io::Error::other("not a Widevine license"))?;
        if let Some(bytes) = cli.renewal_bytes {
            pad_with_signature(&mut renewal, bytes)?;
        }
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

/// Appends a `SignedMessage.signature` (field 3) that brings the message to exactly `bytes`.
fn pad_with_signature(message: &mut Vec<u8>, bytes: usize) -> std::io::Result<()> {
    const SIGNATURE: u32 = 3;
    let key_len = prost::encoding::key_len(SIGNATURE);
    let room = bytes.saturating_sub(message.len() + key_len);
    let fits = (0..=room)
        .rev()
        .find(|len| len + prost::encoding::encoded_len_varint(*len as u64) == room)
        .ok_or_else(|| {
            std::io::Error::other(format!(
                "a renewal of {} bytes cannot be padded to {bytes}",
                message.len()
            ))
        })?;
    prost::encoding::bytes::encode(SIGNATURE, &vec![0x5a; fits], message);
    Ok(())
}

#[cfg(test)]
mod tests {
    use licensegate_drm::challenge;
    use licensegate_drm::drm::Drm;

    #[test]
    fn a_padded_challenge_has_the_size_asked_and_reads_the_same() {
        let original = include_bytes!("../../../tests/fixtures/license-request-kid-01020304.bin");
        for bytes in [original.len() + 2, original.len() + 200, 2048, 70_000] {
            let mut padded = original.to_vec();
            super::pad_with_signature(&mut padded, bytes).unwrap();
            assert_eq!(padded.len(), bytes);
            assert_eq!(
                challenge::parse(Drm::Widevine, &padded).unwrap(),
                challenge::parse(Drm::Widevine, original).unwrap()
            );
        }
        assert!(super::pad_with_signature(&mut original.to_vec(), original.len() + 1).is_err());
    }
}
