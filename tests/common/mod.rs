//! Real processes on loopback: the `licensegate` and `licensegate-sim` binaries this crate
//! builds, each on a free port, killed when the handle drops.

#![allow(dead_code)] // each test binary uses its own share of these helpers

use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A player's HTTP client; the timeout only keeps a broken test from hanging.
pub fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(Duration::from_secs(20))
        .build()
        .unwrap()
}

pub fn fixture(name: &str) -> Vec<u8> {
    std::fs::read(
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/fixtures")
            .join(name),
    )
    .unwrap()
}

fn wait_for_port(port: u16, child: &mut Child) {
    let deadline = Instant::now() + Duration::from_secs(20);
    let addr: SocketAddr = ([127, 0, 0, 1], port).into();
    while Instant::now() < deadline {
        if TcpStream::connect_timeout(&addr, Duration::from_millis(100)).is_ok() {
            return;
        }
        if let Ok(Some(status)) = child.try_wait() {
            panic!("process exited early with {status}");
        }
        std::thread::sleep(Duration::from_millis(25));
    }
    panic!("nothing listens on port {port}");
}

pub struct Sim {
    child: Child,
    pub port: u16,
}

impl Sim {
    pub fn start(args: &[&str]) -> Sim {
        let port = free_port();
        let mut child = Command::new(env!("CARGO_BIN_EXE_licensegate-sim"))
            .args(["--listen", &format!("127.0.0.1:{port}"), "--threads", "2"])
            .args(args)
            .stdout(Stdio::null())
            .spawn()
            .unwrap();
        wait_for_port(port, &mut child);
        Sim { child, port }
    }

    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}/AcquireLicense", self.port)
    }

    pub async fn stats(&self) -> serde_json::Value {
        reqwest::get(format!("http://127.0.0.1:{}/stats", self.port))
            .await
            .unwrap()
            .json()
            .await
            .unwrap()
    }
}

impl Drop for Sim {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub struct Gate {
    child: Child,
    pub port: u16,
    pub admin_port: u16,
    dir: tempfile::TempDir,
}

/// A config routing every DRM to one vendor at `endpoints`; `vendor_extra` lands in the
/// vendor's table (timeouts, retries...).
pub fn config(endpoints: &[String], vendor_extra: &str) -> String {
    let endpoints = endpoints
        .iter()
        .map(|e| format!("\"{e}\""))
        .collect::<Vec<_>>()
        .join(", ");
    format!(
        r#"
[listeners]
license = "127.0.0.1:${{LG_PORT}}"
admin = "127.0.0.1:${{LG_ADMIN_PORT}}"

[server]
threads = 2
grace_period_seconds = 0
graceful_shutdown_timeout_seconds = 1

[cors]
allowed_origins = ["https://player.example"]

[vendors.sim]
kind = "passthrough"
endpoints = [{endpoints}]
error_header = "X-AxDRM-ErrorMessage"
health_check_interval_seconds = 1
{vendor_extra}

[routes]
widevine = "sim"
playready = "sim"
clearkey = "sim"
fairplay = "sim"
"#
    )
}

fn spawn_gate(dir: &Path) -> (Child, u16, u16) {
    let port = free_port();
    let admin_port = free_port();
    let log = std::fs::File::options()
        .create(true)
        .append(true)
        .open(dir.join("licensegate.log"))
        .unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_licensegate"))
        .args(["serve", "--config"])
        .arg(dir.join("licensegate.toml"))
        .env("LG_PORT", port.to_string())
        .env("LG_ADMIN_PORT", admin_port.to_string())
        .env("LG_DIR", dir)
        .env("RUST_LOG", "info")
        .stdout(log)
        .spawn()
        .unwrap();
    wait_for_port(port, &mut child);
    wait_for_port(admin_port, &mut child);
    (child, port, admin_port)
}

/// A real `redis-server` on a free port, without persistence, stopped when dropped. A machine
/// without Redis fails the test rather than skipping it.
pub struct Redis {
    child: Child,
    pub port: u16,
}

impl Redis {
    pub fn start() -> Redis {
        let port = free_port();
        let mut child = Command::new("redis-server")
            .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no"])
            .stdout(Stdio::null())
            .spawn()
            .expect("redis-server must be installed (scripts/setup.sh installs it)");
        wait_for_port(port, &mut child);
        Redis { child, port }
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Gate {
    pub fn start(config: &str) -> Gate {
        Gate::start_with_files(config, &[])
    }

    /// Writes `files` into the gate's directory first; the config finds them under `${LG_DIR}`.
    pub fn start_with_files(config: &str, files: &[(&str, &[u8])]) -> Gate {
        let dir = tempfile::tempdir().unwrap();
        for (name, content) in files {
            std::fs::write(dir.path().join(name), content).unwrap();
        }
        let path: PathBuf = dir.path().join("licensegate.toml");
        std::fs::write(&path, config).unwrap();
        let (child, port, admin_port) = spawn_gate(dir.path());
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
        let (child, port, admin_port) = spawn_gate(self.dir.path());
        self.child = child;
        self.port = port;
        self.admin_port = admin_port;
    }

    /// Starts licensegate and waits until it has resolved its vendor endpoints.
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

    /// Everything licensegate logged so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("licensegate.log")).unwrap()
    }

    /// The Prometheus text of the admin listener's `/metrics`.
    pub async fn metrics(&self) -> String {
        let response = reqwest::get(self.admin("/metrics")).await.unwrap();
        assert_eq!(response.status(), 200);
        response.text().await.unwrap()
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
    assert_eq!(response.status().as_u16(), status);
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
