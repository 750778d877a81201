//! `licensegate probe`: the container health check and Kubernetes exec probe. Slim images carry
//! no HTTP client, so the binary asks its own admin listener.

use std::net::SocketAddr;
use std::time::Duration;

/// The admin listener to ask when none is named: the one the environment gives the shipped
/// config (`LICENSEGATE_ADMIN_ADDR`, which the image sets), reached over loopback when it
/// listens on every address.
pub fn default_admin() -> String {
    let configured =
        std::env::var("LICENSEGATE_ADMIN_ADDR").unwrap_or_else(|_| "127.0.0.1:9090".into());
    match configured.parse::<SocketAddr>() {
        Ok(address) if address.ip().is_unspecified() => format!("127.0.0.1:{}", address.port()),
        _ => configured,
    }
}

/// `Ok` when `http://{admin}{path}` answers 200 within a second.
pub fn answers(admin: &str, path: &str) -> Result<(), String> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| e.to_string())?;
    runtime.block_on(async {
        // A proxy set for the vendors' sake must not carry a question to this host's own port.
        let client = reqwest::Client::builder()
            .timeout(Duration::from_secs(1))
            .no_proxy()
            .build()
            .map_err(|e| e.to_string())?;
        let answer = client
            .get(format!("http://{admin}{path}"))
            .send()
            .await
            .map_err(|e| e.to_string())?;
        match answer.status().as_u16() {
            200 => Ok(()),
            status => Err(format!("answered {status}")),
        }
    })
}
