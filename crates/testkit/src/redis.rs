//! Real Redis: one server, a Sentinel with a master and a replica, a three-master Cluster.

use super::*;
use std::io::Write as _;

/// `redis-cli` against a local port; what it printed.
fn redis_cli(port: u16, args: &[&str]) -> String {
    let output = Command::new("redis-cli")
        .args(["-h", "127.0.0.1", "-p", &port.to_string()])
        .args(args)
        .output()
        .expect("redis-cli must be installed (scripts/setup.sh installs redis-server)");
    String::from_utf8_lossy(&output.stdout).into_owned()
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

    /// Waits until every write the master took has reached the replica. `WAIT` counts only the
    /// writes of its own connection (a fresh one has none, and returns at once), so it follows
    /// a write of its own, which the replication stream carries after all the earlier ones.
    pub fn wait_for_replica(&self) {
        let mut cli = Command::new("redis-cli")
            .args(["-h", "127.0.0.1", "-p", &self.master_port.to_string()])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .expect("redis-cli must be installed (scripts/setup.sh installs redis-server)");
        cli.stdin
            .take()
            .unwrap()
            .write_all(b"set licensegate:testkit:replication-mark 1\nwait 1 5000\n")
            .unwrap();
        let output = cli.wait_with_output().unwrap();
        let answer = String::from_utf8_lossy(&output.stdout);
        assert_eq!(
            answer.lines().map(str::trim).collect::<Vec<_>>(),
            ["OK", "1"],
            "the replica did not acknowledge"
        );
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
