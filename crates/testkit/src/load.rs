//! Steady load with oha, as `loadtest/` drives it.

use super::*;

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
