//! licensegate itself: its config (`GateConfig`), the user tokens it accepts, and the process
//! on free ports in a directory of its own.

use super::*;

pub struct Gate {
    child: Child,
    pub port: u16,
    pub admin_port: u16,
    dir: tempfile::TempDir,
}

/// The HMAC secret every test gate verifies user tokens with ([`GateConfig::auth`]).
pub const JWT_SECRET: &str = "integration-test-secret-0123456789abcdef";

pub fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

/// A user token: `claims` signed HS256 with [`JWT_SECRET`].
pub fn token(claims: serde_json::Value) -> String {
    token_signed_with(JWT_SECRET, claims)
}

/// `claims` signed HS256 with another secret: a forgery, as far as the gate is concerned.
pub fn token_signed_with(secret: &str, claims: serde_json::Value) -> String {
    jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
        &claims,
        &jsonwebtoken::EncodingKey::from_secret(secret.as_bytes()),
    )
    .unwrap()
}

/// A token for `sub`, entitled to `entitlements`, valid for ten minutes.
pub fn user_token(sub: &str, entitlements: &[&str]) -> String {
    token(serde_json::json!({"sub": sub, "exp": now() + 600, "entitlements": entitlements}))
}

/// The one way tests write a licensegate config: listeners on the ports the gate is given, no
/// grace period, `https://player.example` as the allowed origin; then the sections a test needs.
pub struct GateConfig {
    text: String,
    allowed_origins: Vec<String>,
}

impl Default for GateConfig {
    fn default() -> Self {
        Self::new()
    }
}

impl GateConfig {
    pub fn new() -> Self {
        Self {
            text: r#"
[listeners]
license = "127.0.0.1:${LG_PORT}"
admin = "127.0.0.1:${LG_ADMIN_PORT}"

[server]
threads = 2
grace_period_seconds = 0
graceful_shutdown_timeout_seconds = 1
"#
            .to_string(),
            allowed_origins: vec!["https://player.example".into()],
        }
    }

    /// `cors.allowed_origins` in place of the test origin.
    pub fn allowed_origins(mut self, origins: &[&str]) -> Self {
        self.allowed_origins = origins.iter().map(|o| o.to_string()).collect();
        self
    }

    /// Any further TOML, as written.
    pub fn with(mut self, toml: &str) -> Self {
        self.text.push('\n');
        self.text.push_str(toml);
        self.text.push('\n');
        self
    }

    /// `[providers.NAME]` with `body`, health checked every second.
    pub fn provider(self, name: &str, body: &str) -> Self {
        self.with(&format!(
            "[providers.{name}]\nhealth_check_interval_seconds = 1\n{body}"
        ))
    }

    /// `[routes]`: each DRM to its provider.
    pub fn routes(self, routes: &[(&str, &str)]) -> Self {
        let lines: Vec<String> = routes
            .iter()
            .map(|(drm, provider)| format!("{drm} = \"{provider}\""))
            .collect();
        self.with(&format!("[routes]\n{}", lines.join("\n")))
    }

    /// User tokens verified with [`JWT_SECRET`]; `extra` lands in `[auth]`.
    pub fn auth(self, extra: &str) -> Self {
        self.with(&format!(
            "[auth]\n{extra}\n[[auth.keys]]\nkind = \"secret\"\nalgorithm = \"HS256\"\nsecret = \"{JWT_SECRET}\""
        ))
    }

    /// The catalog at `catalog.toml` in the gate's directory, checked every second.
    pub fn catalog(self) -> Self {
        self.with("[catalog]\npath = \"${LG_DIR}/catalog.toml\"\nreload_seconds = 1")
    }

    pub fn build(self) -> String {
        let origins: Vec<String> = self
            .allowed_origins
            .iter()
            .map(|origin| format!("\"{origin}\""))
            .collect();
        format!(
            "{}\n[cors]\nallowed_origins = [{}]\n",
            self.text,
            origins.join(", ")
        )
    }
}

/// A config routing every DRM to one passthrough provider, `sim`, at `endpoints`;
/// `provider_extra` lands in its table (timeouts, retries...).
pub fn config(endpoints: &[String], provider_extra: &str) -> String {
    let endpoints = endpoints
        .iter()
        .map(|e| format!("\"{e}\""))
        .collect::<Vec<_>>()
        .join(", ");
    GateConfig::new()
        .provider(
            "sim",
            &format!(
                "kind = \"passthrough\"\nendpoints = [{endpoints}]\nerror_header = \"X-AxDRM-ErrorMessage\"\n{provider_extra}"
            ),
        )
        .routes(&[
            ("widevine", "sim"),
            ("playready", "sim"),
            ("clearkey", "sim"),
            ("fairplay", "sim"),
        ])
        .build()
}

fn spawn_gate(dir: &Path, nofile: Option<u64>) -> (Child, u16, u16) {
    let [port, admin_port] = free_ports();
    let mut child = gate_command_limited(dir, port, admin_port, nofile)
        .spawn()
        .unwrap();
    if let Err(why) = listening(port, &mut child).and_then(|()| listening(admin_port, &mut child)) {
        let log = std::fs::read_to_string(dir.join("licensegate.log")).unwrap_or_default();
        panic!("licensegate did not start: {why}\n{log}");
    }
    (child, port, admin_port)
}

/// `licensegate serve` on the directory's config and the given ports, everything it prints
/// appended to the directory's `licensegate.log`.
pub fn gate_command(dir: &Path, port: u16, admin_port: u16) -> Command {
    gate_command_limited(dir, port, admin_port, None)
}

/// With `nofile`, under util-linux's `prlimit`, which sets the open-file limit (soft and
/// hard) before licensegate starts.
fn gate_command_limited(dir: &Path, port: u16, admin_port: u16, nofile: Option<u64>) -> Command {
    let log = std::fs::File::options()
        .create(true)
        .append(true)
        .open(dir.join("licensegate.log"))
        .unwrap();
    let mut command = match nofile {
        Some(limit) => {
            let mut command = Command::new("prlimit");
            command
                .arg(format!("--nofile={limit}:{limit}"))
                .arg(licensegate_binary());
            command
        }
        None => Command::new(licensegate_binary()),
    };
    // In its own directory: a default relative path (the embedded store's `licensegate.db`)
    // is never another gate's.
    command
        .current_dir(dir)
        .args(["serve", "--config"])
        .arg(dir.join("licensegate.toml"))
        .env("LG_PORT", port.to_string())
        .env("LG_ADMIN_PORT", admin_port.to_string())
        .env("LG_DIR", dir)
        .env("RUST_LOG", "info")
        .stderr(log.try_clone().unwrap())
        .stdout(log);
    command
}

impl Gate {
    pub fn start(config: &str) -> Gate {
        Gate::start_with_files(config, &[])
    }

    /// Writes `files` into the gate's directory first; the config finds them under `${LG_DIR}`.
    pub fn start_with_files(config: &str, files: &[(&str, &[u8])]) -> Gate {
        Gate::start_in(config, files, None)
    }

    /// Starts licensegate with its open-file limit (soft and hard) set to `nofile`.
    pub fn start_with_open_file_limit(config: &str, nofile: u64) -> Gate {
        Gate::start_in(config, &[], Some(nofile))
    }

    fn start_in(config: &str, files: &[(&str, &[u8])], nofile: Option<u64>) -> Gate {
        let dir = tempfile::tempdir().unwrap();
        for (name, content) in files {
            std::fs::write(dir.path().join(name), content).unwrap();
        }
        let path: PathBuf = dir.path().join("licensegate.toml");
        std::fs::write(&path, config).unwrap();
        let (child, port, admin_port) = spawn_gate(dir.path(), nofile);
        Gate {
            child,
            port,
            admin_port,
            dir,
        }
    }

    /// Kills the process with SIGKILL, as a crash would, and starts a new one on the same
    /// directory (and so the same config and files), on new ports.
    pub fn crash_and_restart(&mut self) {
        self.child.kill().unwrap();
        self.child.wait().unwrap();
        let (child, port, admin_port) = spawn_gate(self.dir.path(), None);
        self.child = child;
        self.port = port;
        self.admin_port = admin_port;
    }

    /// Starts licensegate and waits until it has resolved its provider endpoints.
    pub async fn start_ready(config: &str) -> Gate {
        Gate::ready(Gate::start(config)).await
    }

    pub async fn ready(gate: Gate) -> Gate {
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Ok(response) = reqwest::get(gate.admin("/readyz")).await
                && response.status() == 200
            {
                return gate;
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        panic!("licensegate never became ready");
    }

    pub fn license_url(&self, drm: &str, content: Option<&str>) -> String {
        match content {
            Some(content) => format!(
                "http://127.0.0.1:{}/v1/license/{drm}?content={content}",
                self.port
            ),
            None => format!("http://127.0.0.1:{}/v1/license/{drm}", self.port),
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }

    /// Where the gate's config and files live.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    pub fn child(&mut self) -> &mut Child {
        &mut self.child
    }

    /// licensegate's resident memory now, in KiB.
    pub fn rss_kib(&self) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id())).unwrap();
        status
            .lines()
            .find_map(|line| line.strip_prefix("VmRSS:"))
            .and_then(|value| value.trim().trim_end_matches("kB").trim().parse().ok())
            .unwrap()
    }

    /// Everything licensegate logged so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("licensegate.log")).unwrap()
    }

    /// The Prometheus text of the admin listener's `/metrics`.
    pub async fn metrics(&self) -> String {
        let response = reqwest::get(self.admin("/metrics"))
            .await
            .unwrap_or_else(|e| panic!("{e}; licensegate logged:\n{}", self.log()));
        assert_eq!(response.status(), 200);
        response.text().await.unwrap()
    }

    /// The JSON an admin `GET` of `path` answers, with the admin `token`.
    pub async fn admin_json(&self, path: &str, token: &str) -> serde_json::Value {
        client()
            .get(self.admin(path))
            .bearer_auth(token)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap()
    }

    pub fn admin(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.admin_port)
    }
}

impl Drop for Gate {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Asserts an RFC 7807 body with our members and returns it.
pub async fn problem(response: reqwest::Response, status: u16, code: &str) -> serde_json::Value {
    if response.status().as_u16() != status {
        let got = response.status();
        let body = response.text().await.unwrap_or_default();
        panic!("expected {status} {code}, got {got}: {body}");
    }
    assert_eq!(
        response.headers()["content-type"],
        "application/problem+json"
    );
    let request_id = response.headers()["x-request-id"]
        .to_str()
        .unwrap()
        .to_string();
    let body: serde_json::Value = response.json().await.unwrap();
    assert_eq!(body["code"], code, "{body}");
    assert_eq!(body["status"], status);
    assert_eq!(body["request_id"], request_id.as_str());
    assert!(body["type"].is_string() && body["title"].is_string());
    body
}
