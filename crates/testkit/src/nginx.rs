//! Debian's nginx, serving what a test configures, on a free port.

use super::*;

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

    /// The access log once it has stopped growing for a quarter of a second (at most 5 s):
    /// nginx writes a request's line after answering it, so a proxy can pass the answer on
    /// before the line is there.
    pub async fn settled_access_log(&self) -> Vec<String> {
        let deadline = Instant::now() + Duration::from_secs(5);
        let mut lines = self.access_log();
        loop {
            tokio::time::sleep(Duration::from_millis(250)).await;
            let now = self.access_log();
            if now.len() == lines.len() || Instant::now() >= deadline {
                return now;
            }
            lines = now;
        }
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
