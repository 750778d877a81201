//! hypercorn serving the ASGI apps of `tests/servers/`.

use super::*;

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
