//! Debian's Prometheus scraping a gate, with the shipped rules loaded.

use super::*;

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
