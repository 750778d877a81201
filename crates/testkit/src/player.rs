//! A Widevine player's side of a stream: its challenges, the session it was told, its renewals.

use super::*;

/// A player as a stream limit sees one: a Widevine CDM that asks for a license, renews it when
/// the license says, and releases it, each time through licensegate.
pub struct Player {
    url: String,
    token: String,
    license: Option<Vec<u8>>,
    started: Instant,
    /// Headers sent with every request (a proxy's `X-Forwarded-For`, a CDN's country).
    headers: Vec<(String, String)>,
}

/// What licensegate answered the player.
pub struct PlayerAnswer {
    pub status: u16,
    pub body: Vec<u8>,
    pub session: Option<String>,
}

impl PlayerAnswer {
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).unwrap_or(serde_json::Value::Null)
    }

    /// The problem's `code`, or `ok` for a 2xx.
    pub fn code(&self) -> String {
        if (200..300).contains(&self.status) {
            return "ok".into();
        }
        self.json()["code"].as_str().unwrap_or("?").to_string()
    }
}

impl Player {
    /// A player asking `url` (a license URL) with `token`.
    pub fn new(url: String, token: String) -> Player {
        Player {
            url,
            token,
            license: None,
            started: Instant::now(),
            headers: Vec::new(),
        }
    }

    /// Sends `name: value` with every request from now on, in place of an earlier value.
    pub fn set_header(&mut self, name: &str, value: &str) {
        self.headers
            .retain(|(known, _)| !known.eq_ignore_ascii_case(name));
        self.headers.push((name.to_string(), value.to_string()));
    }

    /// Sends `challenge` as this player: its URL, its token.
    pub async fn send(&mut self, challenge: Vec<u8>) -> PlayerAnswer {
        let mut request = client().post(&self.url).bearer_auth(&self.token);
        for (name, value) in &self.headers {
            request = request.header(name.as_str(), value.as_str());
        }
        let response = request
            .body(challenge)
            .send()
            .await
            .expect("licensegate answers");
        let status = response.status().as_u16();
        let session = response
            .headers()
            .get("X-Playback-Session")
            .and_then(|v| v.to_str().ok())
            .map(str::to_string);
        let body = response.bytes().await.unwrap_or_default().to_vec();
        if (200..300).contains(&status)
            && licensegate_drm::challenge::widevine::read_license(&body).is_some()
        {
            self.license = Some(body.clone());
        }
        PlayerAnswer {
            status,
            body,
            session,
        }
    }

    /// Asks another URL from now on (a restarted licensegate's).
    pub fn set_url(&mut self, url: String) {
        self.url = url;
    }

    /// A new license for `challenge`.
    pub async fn start(&mut self, challenge: Vec<u8>) -> PlayerAnswer {
        self.started = Instant::now();
        self.send(challenge).await
    }

    /// The renewal or release of the license it holds, as its CDM would build it.
    pub fn continuation(&self, kind: licensegate_drm::challenge::RequestType) -> Vec<u8> {
        let license = self.license.as_deref().expect("a license to continue");
        licensegate_drm::challenge::widevine::continuation_request(
            license,
            kind,
            self.started.elapsed().as_secs() as i64,
        )
        .expect("a Widevine license")
    }

    /// Renews the license it holds, as the CDM does when the renewal delay has passed.
    pub async fn renew(&mut self) -> PlayerAnswer {
        let challenge = self.continuation(licensegate_drm::challenge::RequestType::Renewal);
        self.send(challenge).await
    }

    /// Releases the license it holds, as the CDM does when the session closes.
    pub async fn release(&mut self) -> PlayerAnswer {
        let challenge = self.continuation(licensegate_drm::challenge::RequestType::Release);
        self.send(challenge).await
    }

    /// The renewal delay its license asks for.
    pub fn renewal_delay(&self) -> Option<Duration> {
        let license = self.license.as_deref()?;
        let issued = licensegate_drm::challenge::widevine::read_license(license)?;
        issued
            .renewal
            .can_renew
            .then(|| Duration::from_secs(issued.renewal.delay_seconds))
    }

    /// Plays for `duration`, renewing on the license's schedule; returns each renewal's answer
    /// code, stopping at the first refusal (playback stops there).
    pub async fn play_for(&mut self, duration: Duration) -> Vec<String> {
        let end = Instant::now() + duration;
        let mut codes = Vec::new();
        loop {
            let Some(delay) = self.renewal_delay() else {
                return codes;
            };
            let next = Instant::now() + delay;
            if next > end {
                tokio::time::sleep(end.saturating_duration_since(Instant::now())).await;
                return codes;
            }
            tokio::time::sleep(delay).await;
            let answer = self.renew().await;
            codes.push(answer.code());
            if answer.status != 200 {
                return codes;
            }
        }
    }
}
