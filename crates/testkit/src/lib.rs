//! What licensegate's integration tests run against, on loopback, each on a free port and
//! stopped when its handle drops: the `licensegate` binary (`gate`), the simulator (`sim`, in
//! this process), real servers nobody here wrote (`redis`, `nginx`, `prometheus`, `hypercorn`),
//! steady load (`load`) and a Widevine player (`player`). Helpers they share are here.

use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

mod gate;
mod hypercorn;
mod load;
mod nginx;
mod player;
mod prometheus;
mod redis;
mod sim;

pub use gate::*;
pub use hypercorn::*;
pub use load::*;
pub use nginx::*;
pub use player::*;
pub use prometheus::*;
pub use redis::*;
pub use sim::*;

/// A port nothing listens on, for a server a test starts. Taken below Linux's ephemeral range
/// (32768-60999), where the kernel picks the local ports of outgoing connections and of
/// `bind(0)`, and never handed out twice in one process: the port stays free until the
/// server binds it, rather than being taken by a connection or another test meanwhile.
pub fn free_port() -> u16 {
    const FIRST: u16 = 20_000;
    const COUNT: u16 = 12_000;
    static NEXT: std::sync::atomic::AtomicU16 = std::sync::atomic::AtomicU16::new(0);
    // Processes started together (test binaries, CI jobs) begin far apart, not at
    // neighbouring ports as neighbouring process ids would.
    let start = (std::process::id().wrapping_mul(2_654_435_761) % u32::from(COUNT)) as u16;
    loop {
        let offset = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let port = FIRST + (start + offset % COUNT) % COUNT;
        if TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
}

/// A player's HTTP client; the timeout only keeps a broken test from hanging.
pub fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(Duration::from_secs(20))
        .build()
        .unwrap()
}

/// The repository's top folder: the proxy package, its config, fixtures and demo page.
pub fn repository() -> &'static Path {
    Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/../.."))
}

pub fn fixture(name: &str) -> Vec<u8> {
    std::fs::read(repository().join("tests/fixtures").join(name)).unwrap()
}

/// A catalog for the two license challenges in `tests/fixtures`: `demo` holds the Widevine
/// challenge's key ID (with a ClearKey key), `playready-sample` the PlayReady challenges' one.
pub const FIXTURE_CATALOG: &str = r#"
[content.demo]
key_ids = ["01020304-0506-0708-090a-0b0c0d0e0f10"]
keys = { "01020304-0506-0708-090a-0b0c0d0e0f10" = "00112233445566778899aabbccddeeff" }

[content.playready-sample]
key_ids = ["33e0008c-c444-4770-9899-a321e079dd36"]
"#;

/// The JSON a plain `GET` of `url` answers: a test server's counters, say.
pub async fn get_json(url: &str) -> serde_json::Value {
    client()
        .get(url)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap()
}

/// The `licensegate` binary Cargo built for the running integration test: it sits beside the
/// test's own `deps/` folder. `LICENSEGATE_BIN` names another.
fn licensegate_binary() -> PathBuf {
    if let Some(path) = std::env::var_os("LICENSEGATE_BIN") {
        return path.into();
    }
    let test = std::env::current_exe().unwrap();
    test.parent()
        .and_then(Path::parent)
        .map(|profile| profile.join("licensegate"))
        .filter(|binary| binary.is_file())
        .expect("run through cargo test, which builds the licensegate binary")
}

/// Waits until `port` accepts connections, failing the test if `child` exits first.
pub fn wait_for_port(port: u16, child: &mut Child) {
    if let Err(why) = listening(port, child) {
        panic!("{why}");
    }
}

fn listening(port: u16, child: &mut Child) -> Result<(), String> {
    let deadline = Instant::now() + Duration::from_secs(20);
    let addr: SocketAddr = ([127, 0, 0, 1], port).into();
    while Instant::now() < deadline {
        if TcpStream::connect_timeout(&addr, Duration::from_millis(100)).is_ok() {
            return Ok(());
        }
        if let Ok(Some(status)) = child.try_wait() {
            return Err(format!("process exited early with {status}"));
        }
        std::thread::sleep(Duration::from_millis(25));
    }
    Err(format!("nothing listens on port {port}"))
}

/// `N` free ports, all different (as every port [`free_port`] hands out in this process).
pub fn free_ports<const N: usize>() -> [u16; N] {
    std::array::from_fn(|_| free_port())
}

/// Sends `signal` (TERM, QUIT...) to a process.
pub fn signal(pid: u32, signal: &str) {
    let status = Command::new("kill")
        .args([format!("-{signal}"), pid.to_string()])
        .status()
        .unwrap();
    assert!(status.success());
}

/// Waits for a child to exit by itself, at most `limit`.
pub fn wait_exit(child: &mut Child, limit: Duration) -> Option<std::process::ExitStatus> {
    let deadline = Instant::now() + limit;
    while Instant::now() < deadline {
        if let Ok(Some(status)) = child.try_wait() {
            return Some(status);
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    None
}

fn kill(child: &mut Child) {
    child.kill().unwrap();
    child.wait().unwrap();
}

fn wait_until(what: &str, limit: Duration, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + limit;
    while Instant::now() < deadline {
        if done() {
            return;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    panic!("{what} never happened");
}
