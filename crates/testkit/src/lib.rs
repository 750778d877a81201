//! What licensegate's integration tests run against, on loopback, each on a free port and
//! stopped when its handle drops: the `licensegate` binary, the simulator (in this process),
//! and real servers nobody here wrote (Redis, nginx).

use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::unix::process::CommandExt;
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

/// The repository's top folder: the proxy package, its config, fixtures and demo page.
pub fn repository() -> &'static Path {
    Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/../.."))
}

pub fn fixture(name: &str) -> Vec<u8> {
    std::fs::read(repository().join("tests/fixtures").join(name)).unwrap()
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

/// `N` ports free at once: each bound while the others are, so that they differ (two calls
/// of [`free_port`] in a row may be handed the same one: 2 pairs in 20,000 here).
pub fn free_ports<const N: usize>() -> [u16; N] {
    let listeners: [TcpListener; N] =
        std::array::from_fn(|_| TcpListener::bind("127.0.0.1:0").unwrap());
    std::array::from_fn(|n| listeners[n].local_addr().unwrap().port())
}

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
        // Tests drop it inside their own runtime, where waiting is not allowed.
        if let Some(runtime) = self.runtime.take() {
            runtime.shutdown_background();
        }
    }
}

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

/// Debian's nginx, a real HTTP/2 server nobody here wrote, on a free port, with its own
/// config (`server` is the body of one server block, `{port}` and `{dir}` filled in), stopped
/// when dropped. A machine without it fails the test rather than skipping it.
pub struct Nginx {
    child: Child,
    pub port: u16,
    dir: tempfile::TempDir,
}

impl Nginx {
    pub fn start(server: &str) -> Nginx {
        Nginx::start_with_files(server, &[])
    }

    /// Writes `files` into nginx's directory first (certificates), for `{dir}/NAME`.
    pub fn start_with_files(server: &str, files: &[(&str, &[u8])]) -> Nginx {
        let dir = tempfile::tempdir().unwrap();
        for (name, content) in files {
            std::fs::write(dir.path().join(name), content).unwrap();
        }
        let port = free_port();
        let d = dir.path().display();
        let server = server
            .replace("{port}", &port.to_string())
            .replace("{dir}", &d.to_string());
        let config = format!(
            r#"load_module /usr/lib/nginx/modules/ngx_http_echo_module.so;
daemon off;
master_process off;
worker_processes 1;
pid {d}/nginx.pid;
error_log {d}/error.log warn;
events {{ worker_connections 4096; }}
http {{
    log_format challenges '$http_x_request_id $status $request_length "$http_x_forwarded_for" "$http_soapaction"';
    access_log {d}/access.log challenges;
    client_body_temp_path {d}/body;
    proxy_temp_path {d}/proxy;
    fastcgi_temp_path {d}/fastcgi;
    uwsgi_temp_path {d}/uwsgi;
    scgi_temp_path {d}/scgi;
    client_body_buffer_size 128k;
    server {{
        {server}
    }}
}}
"#
        );
        let path = dir.path().join("nginx.conf");
        std::fs::write(&path, config).unwrap();
        let mut child = Command::new("nginx")
            .arg("-c")
            .arg(&path)
            .arg("-e")
            .arg(dir.path().join("error.log"))
            .stdout(Stdio::null())
            .spawn()
            .expect("nginx must be installed (scripts/setup.sh installs nginx-light)");
        wait_for_port(port, &mut child);
        Nginx { child, port, dir }
    }

    pub fn url(&self, scheme: &str, path: &str) -> String {
        format!("{scheme}://127.0.0.1:{}{path}", self.port)
    }

    /// The access log's lines: request id, status, request length, X-Forwarded-For, SOAPAction.
    pub fn access_log(&self) -> Vec<String> {
        std::fs::read_to_string(self.dir.path().join("access.log"))
            .unwrap_or_default()
            .lines()
            .map(str::to_string)
            .collect()
    }

    pub fn dir(&self) -> &Path {
        self.dir.path()
    }
}

impl Drop for Nginx {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Debian's `prometheus` on a free port, scraping `targets` (host:port, `/metrics`) every
/// second and evaluating `rule_files` every second, stopped when dropped. A machine without
/// it fails the test rather than skipping it.
pub struct Prometheus {
    child: Child,
    pub port: u16,
    dir: tempfile::TempDir,
}

impl Prometheus {
    pub fn start(targets: &[String], rule_files: &[PathBuf]) -> Prometheus {
        let dir = tempfile::tempdir().unwrap();
        let port = free_port();
        let quote = |items: Vec<String>| {
            items
                .iter()
                .map(|item| format!("\"{item}\""))
                .collect::<Vec<_>>()
                .join(", ")
        };
        let config = format!(
            "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\n\
             rule_files: [{}]\n\
             scrape_configs:\n  - job_name: licensegate\n    static_configs:\n      - targets: [{}]\n",
            quote(rule_files.iter().map(|p| p.display().to_string()).collect()),
            quote(targets.to_vec()),
        );
        std::fs::write(dir.path().join("prometheus.yml"), config).unwrap();
        let log = std::fs::File::create(dir.path().join("prometheus.log")).unwrap();
        let mut child = Command::new("prometheus")
            .arg(format!(
                "--config.file={}",
                dir.path().join("prometheus.yml").display()
            ))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.path().join("data").display()
            ))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("prometheus must be installed (scripts/setup.sh installs it)");
        wait_for_port(port, &mut child);
        Prometheus { child, port, dir }
    }

    /// An instant query through the HTTP API: the `data.result` array.
    pub async fn query(&self, promql: &str) -> serde_json::Value {
        let answer: serde_json::Value = client()
            .get(format!("http://127.0.0.1:{}/api/v1/query", self.port))
            .query(&[("query", promql)])
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        assert_eq!(answer["status"], "success", "{promql}: {answer}");
        answer["data"]["result"].clone()
    }

    /// Waits until every target has been scraped successfully at least `scrapes` more times
    /// from now, so that what was sent before is in the database.
    pub async fn wait_for_scrapes(&self, scrapes: u32) {
        let deadline = Instant::now() + Duration::from_secs(30);
        let count = || async {
            let scrapes = self
                .query("min(sum_over_time(up{job=\"licensegate\"}[10m]))")
                .await;
            scrapes[0]["value"][1]
                .as_str()
                .and_then(|count| count.parse::<u32>().ok())
                .unwrap_or(0)
        };
        let start = count().await;
        while Instant::now() < deadline {
            if count().await >= start + scrapes {
                return;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        panic!("prometheus scraped nothing:\n{}", self.log());
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("prometheus.log")).unwrap_or_default()
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The body of `[providers.NAME]` for an Axinom provider on `sim` (started with
/// `--vendor axinom`), with the simulator's communication key.
pub fn axinom_provider(name: &str, sim: &Sim) -> String {
    format!(
        "kind = \"axinom\"\nendpoints = [\"{}\"]\n[providers.{name}.settings]\n\
         com_key_id = \"69e54088-e9e0-4530-8c1a-1eb6dcd0d14e\"\n\
         com_key = \"4861292d027e269791093327e62ceefdbea489a4c7e5a4974cc904b840fd7c0f\"",
        sim.url()
    )
}

/// oha posting `body` to `url` at `rate` per second over 8 connections for `seconds`, in
/// the background, as a steady player population. Requests still in flight when the time is up
/// are waited for (else oha cancels them, and a run whose last answer is a few milliseconds late
/// falls short of its count); none may take longer than 10 s.
pub struct SteadyLoad {
    child: Child,
}

impl SteadyLoad {
    pub fn start(url: &str, body: &Path, seconds: u64, rate: u64) -> SteadyLoad {
        let child = Command::new("oha")
            .args(["--no-tui", "--output-format", "json"])
            .args([
                "-z",
                &format!("{seconds}s"),
                "-q",
                &rate.to_string(),
                "-c",
                "8",
                "-w",
                "-t",
                "10s",
            ])
            .args(["-m", "POST", "-D"])
            .arg(body)
            .arg(url)
            .stdout(Stdio::piped())
            .spawn()
            .expect("oha must be installed (scripts/setup.sh installs it)");
        SteadyLoad { child }
    }

    /// Waits for the run to end and asserts that every request got a 200, at least
    /// `at_least` of them; `context` is printed on failure (a log).
    pub async fn assert_all_ok(self, at_least: u64, context: impl Fn() -> String) {
        let child = self.child;
        let output = tokio::task::spawn_blocking(move || child.wait_with_output().unwrap())
            .await
            .unwrap();
        let report: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
        let statuses = report["statusCodeDistribution"].as_object().unwrap();
        assert_eq!(statuses.keys().collect::<Vec<_>>(), ["200"], "{report}");
        // oha may start a request or two beyond the rate; every one must succeed.
        assert!(statuses["200"].as_u64().unwrap() >= at_least, "{report}");
        // With JSON output oha ends a run by cancelling connection tasks that wait for their
        // next turn and reports each as "aborted due to deadline", beside the results it
        // counted; any failed request shows as another error or a missing 200.
        let errors = report["errorDistribution"].as_object().unwrap();
        assert!(
            errors
                .keys()
                .all(|error| error == "aborted due to deadline"),
            "{report}\n{}",
            context()
        );
    }
}

fn kill(child: &mut Child) {
    child.kill().unwrap();
    child.wait().unwrap();
}

/// `redis-cli` against a local port; what it printed.
fn redis_cli(port: u16, args: &[&str]) -> String {
    let output = Command::new("redis-cli")
        .args(["-h", "127.0.0.1", "-p", &port.to_string()])
        .args(args)
        .output()
        .expect("redis-cli must be installed (scripts/setup.sh installs redis-server)");
    String::from_utf8_lossy(&output.stdout).into_owned()
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

fn redis_node(port: u16, dir: &Path, extra: &[String]) -> Child {
    let mut child = Command::new("redis-server")
        .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
        .args(["--save", "", "--appendonly", "no"])
        .arg("--dir")
        .arg(dir)
        .args(extra)
        .stdout(Stdio::null())
        .spawn()
        .expect("redis-server must be installed (scripts/setup.sh installs it)");
    wait_for_port(port, &mut child);
    child
}

/// A real Redis Cluster of three masters (no replicas), each `redis-server` on free ports,
/// stopped when dropped.
pub struct RedisCluster {
    nodes: Vec<Child>,
    pub ports: Vec<u16>,
    buses: Vec<u16>,
    dir: tempfile::TempDir,
}

impl RedisCluster {
    pub fn start() -> RedisCluster {
        let dir = tempfile::tempdir().unwrap();
        let [a, b, c, bus_a, bus_b, bus_c] = free_ports();
        let ports = vec![a, b, c];
        let buses = vec![bus_a, bus_b, bus_c];
        let nodes = ports
            .iter()
            .zip(&buses)
            .map(|(port, bus)| Self::node(*port, *bus, dir.path()))
            .collect();
        let addresses: Vec<String> = ports.iter().map(|p| format!("127.0.0.1:{p}")).collect();
        let mut create = vec!["--cluster", "create"];
        create.extend(addresses.iter().map(String::as_str));
        create.extend(["--cluster-replicas", "0", "--cluster-yes"]);
        redis_cli(ports[0], &create);
        let cluster = RedisCluster {
            nodes,
            ports,
            buses,
            dir,
        };
        cluster.wait_until_whole();
        cluster
    }

    /// A master that keeps its slots across a restart: its cluster file stays in `dir`.
    fn node(port: u16, bus: u16, dir: &Path) -> Child {
        redis_node(
            port,
            dir,
            &[
                "--cluster-enabled".into(),
                "yes".into(),
                "--cluster-port".into(),
                bus.to_string(),
                "--cluster-config-file".into(),
                format!("nodes-{port}.conf"),
                "--cluster-node-timeout".into(),
                "2000".into(),
            ],
        )
    }

    /// Kills master `index` with SIGKILL, as a crashed node.
    pub fn kill_node(&mut self, index: usize) {
        kill(&mut self.nodes[index]);
    }

    /// Starts master `index` again on its port, with the slots it had.
    pub fn restart_node(&mut self, index: usize) {
        self.nodes[index] = Self::node(self.ports[index], self.buses[index], self.dir.path());
    }

    /// Waits until every master says the cluster serves all its slots.
    pub fn wait_until_whole(&self) {
        wait_until("cluster_state:ok", Duration::from_secs(30), || {
            self.ports
                .iter()
                .all(|port| redis_cli(*port, &["cluster", "info"]).contains("cluster_state:ok"))
        });
    }

    pub fn urls(&self) -> Vec<String> {
        self.ports
            .iter()
            .map(|port| format!("redis://127.0.0.1:{port}"))
            .collect()
    }

    /// How many keys each master holds.
    pub fn keys_per_node(&self) -> Vec<u64> {
        self.ports
            .iter()
            .map(|port| redis_cli(*port, &["dbsize"]).trim().parse().unwrap_or(0))
            .collect()
    }
}

impl Drop for RedisCluster {
    fn drop(&mut self) {
        for node in &mut self.nodes {
            let _ = node.kill();
            let _ = node.wait();
        }
    }
}

/// A master, its replica and one Redis Sentinel watching them as `licensegate` (quorum 1,
/// down after a second), each a real server on free ports, stopped when dropped.
pub struct RedisSentinel {
    master: Child,
    replica: Child,
    sentinel: Child,
    pub master_port: u16,
    pub replica_port: u16,
    pub sentinel_port: u16,
    dir: tempfile::TempDir,
}

impl RedisSentinel {
    pub const MASTER_NAME: &'static str = "licensegate";

    pub fn start() -> RedisSentinel {
        let dir = tempfile::tempdir().unwrap();
        let [master_port, replica_port, sentinel_port] = free_ports();
        let master = redis_node(master_port, dir.path(), &[]);
        let replica = redis_node(
            replica_port,
            dir.path(),
            &[
                "--replicaof".into(),
                "127.0.0.1".into(),
                master_port.to_string(),
            ],
        );
        let config = dir.path().join("sentinel.conf");
        std::fs::write(
            &config,
            format!(
                "port {sentinel_port}\nbind 127.0.0.1\ndir {}\n\
                 sentinel monitor {name} 127.0.0.1 {master_port} 1\n\
                 sentinel down-after-milliseconds {name} 1000\n\
                 sentinel failover-timeout {name} 5000\n",
                dir.path().display(),
                name = Self::MASTER_NAME,
            ),
        )
        .unwrap();
        let mut sentinel = Command::new("redis-sentinel")
            .arg(&config)
            .stdout(Stdio::null())
            .spawn()
            .expect("redis-sentinel must be installed (scripts/setup.sh installs it)");
        wait_for_port(sentinel_port, &mut sentinel);
        wait_until("the replica in sync", Duration::from_secs(20), || {
            redis_cli(replica_port, &["info", "replication"]).contains("master_link_status:up")
        });
        wait_until(
            "the sentinel seeing the replica",
            Duration::from_secs(20),
            || {
                redis_cli(sentinel_port, &["sentinel", "replicas", Self::MASTER_NAME])
                    .contains(&replica_port.to_string())
            },
        );
        RedisSentinel {
            master,
            replica,
            sentinel,
            master_port,
            replica_port,
            sentinel_port,
            dir,
        }
    }

    pub fn sentinel_url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.sentinel_port)
    }

    /// Kills the master with SIGKILL, as a crashed node.
    pub fn kill_master(&mut self) {
        kill(&mut self.master);
    }

    /// Starts the first master again on its port, empty; the sentinel makes it a replica if it
    /// has failed over meanwhile.
    pub fn restart_master(&mut self) {
        self.master = redis_node(self.master_port, self.dir.path(), &[]);
    }

    /// The port of the node the sentinel names master now.
    pub fn current_master_port(&self) -> Option<u16> {
        let answer = redis_cli(
            self.sentinel_port,
            &["sentinel", "get-master-addr-by-name", Self::MASTER_NAME],
        );
        answer.lines().nth(1)?.trim().parse().ok()
    }

    /// Waits until every write the master took has reached the replica.
    pub fn wait_for_replica(&self) {
        let acked = redis_cli(self.master_port, &["wait", "1", "5000"]);
        assert_eq!(acked.trim(), "1", "the replica did not acknowledge");
    }
}

impl Drop for RedisSentinel {
    fn drop(&mut self) {
        for child in [&mut self.master, &mut self.replica, &mut self.sentinel] {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// hypercorn serving an ASGI app of `tests/servers/`: its own HTTP/2 stack (the `h2` Python
/// library) frames the answers.
pub struct Hypercorn {
    child: Child,
    port: u16,
}

impl Hypercorn {
    /// `app` as hypercorn names it (`module:app`), with `env` in its environment.
    pub fn start(app: &str, env: &[(&str, &str)]) -> Hypercorn {
        let port = free_port();
        let child = Command::new("python3")
            .args(["-m", "hypercorn", "--bind", &format!("127.0.0.1:{port}")])
            .arg(app)
            .envs(env.iter().copied())
            .current_dir(repository().join("tests/servers"))
            // Its worker is a process of its own: both are stopped as one group.
            .process_group(0)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("hypercorn must be installed (scripts/setup.sh installs it)");
        let deadline = Instant::now() + Duration::from_secs(20);
        while TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(Instant::now() < deadline, "hypercorn did not start");
            std::thread::sleep(Duration::from_millis(50));
        }
        Hypercorn { child, port }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }

    /// What the app answers to `GET /count`.
    pub async fn requests(&self) -> u64 {
        let text = reqwest::Client::builder()
            .http2_prior_knowledge()
            .build()
            .unwrap()
            .get(self.url("/count"))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        text.parse().unwrap()
    }
}

impl Drop for Hypercorn {
    fn drop(&mut self) {
        let _ = Command::new("kill")
            .args(["-KILL", "--", &format!("-{}", self.child.id())])
            .status();
        let _ = self.child.wait();
    }
}

/// A real `redis-server` on a free port, without persistence, stopped when dropped. A machine
/// without Redis fails the test rather than skipping it.
pub struct Redis {
    child: Child,
    pub port: u16,
    dir: tempfile::TempDir,
}

impl Redis {
    pub fn start() -> Redis {
        let port = free_port();
        let dir = tempfile::tempdir().unwrap();
        let child = redis_node(port, dir.path(), &[]);
        Redis { child, port, dir }
    }

    /// Kills the server with SIGKILL, as a crash: every connection to it drops.
    pub fn kill(&mut self) {
        kill(&mut self.child);
    }

    /// Starts it again on the same address, empty.
    pub fn restart(&mut self) {
        self.child = redis_node(self.port, self.dir.path(), &[]);
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

/// A player as a stream limit sees one: a Widevine CDM that asks for a license, renews it when
/// the license says, and releases it, each time through licensegate.
pub struct Player {
    url: String,
    token: String,
    license: Option<Vec<u8>>,
    started: Instant,
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
        }
    }

    /// Sends `challenge` as this player: its URL, its token.
    pub async fn send(&mut self, challenge: Vec<u8>) -> PlayerAnswer {
        let response = client()
            .post(&self.url)
            .bearer_auth(&self.token)
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
