//! `licensegate probe`: the container health check and Kubernetes exec probe. Slim images carry
//! no HTTP client, so the binary asks its own admin listener.

use std::time::Duration;

/// `Ok` when `http://{admin}{path}` answers 200 within a second.
pub fn answers(admin: &str, path: &str) -> Result<(), String> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| e.to_string())?;
    runtime.block_on(async {
        let client = reqwest::Client::builder()
            .timeout(Duration::from_secs(1))
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
