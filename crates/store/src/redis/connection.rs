//! The connection to the fleet's Redis, whichever its topology: one node, a Cluster, or the master
//! the sentinels name, made again by the first call after it is lost.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use redis::RedisFuture;
use redis::aio::MultiplexedConnection;
use redis::cluster_async::ClusterConnection;
use redis::sentinel::SentinelClient;
use tokio::sync::OnceCell;

use super::store_error;
use crate::StoreError;

/// Where the fleet's Redis is, and the connection to it once made.
pub(super) enum Nodes {
    /// One server, or the master the sentinels name.
    Node(Arc<Reconnecting>),
    /// Keys go to their slot's master; the client follows `MOVED` and a failover's new slots.
    Cluster {
        client: Box<redis::cluster::ClusterClient>,
        connection: OnceCell<ClusterConnection>,
    },
}

/// Where a node's connection comes from.
pub(super) enum NodeSource {
    Server(redis::Client),
    /// Asked again for the master each time a connection is made, so a failover is followed.
    Sentinels(SentinelClient),
}

/// One multiplexed connection to a node, made when a call needs it and made again by the first
/// call after it is lost. Calls wait for no backoff: a node back from an outage is used by the
/// next call, and while it is away each call fails within the store's timeout.
pub(super) struct Reconnecting {
    source: tokio::sync::Mutex<NodeSource>,
    config: redis::AsyncConnectionConfig,
    current: std::sync::Mutex<Option<Made>>,
    generations: AtomicU64,
    /// When the node last answered anything, in milliseconds since `epoch`.
    answered: AtomicU64,
    epoch: Instant,
}

#[derive(Clone)]
pub(super) struct Made {
    pub(super) connection: MultiplexedConnection,
    pub(super) generation: u64,
}

impl Reconnecting {
    pub(super) fn new(source: NodeSource, timeout: Duration) -> Self {
        Self {
            source: tokio::sync::Mutex::new(source),
            config: redis::AsyncConnectionConfig::new().set_connection_timeout(timeout),
            current: std::sync::Mutex::new(None),
            generations: AtomicU64::new(0),
            answered: AtomicU64::new(0),
            epoch: Instant::now(),
        }
    }

    pub(super) async fn connection(&self) -> Result<Made, StoreError> {
        if let Some(made) = self.cached().clone() {
            return Ok(made);
        }
        // One attempt at a time: the calls queued behind it use what it made.
        let mut source = self.source.lock().await;
        if let Some(made) = self.cached().clone() {
            return Ok(made);
        }
        let connection = match &mut *source {
            NodeSource::Server(client) => {
                client
                    .get_multiplexed_async_connection_with_config(&self.config)
                    .await
            }
            NodeSource::Sentinels(sentinels) => {
                sentinels
                    .get_async_connection_with_config(&self.config)
                    .await
            }
        }
        .map_err(store_error)?;
        let made = Made {
            connection,
            generation: self.generations.fetch_add(1, Ordering::Relaxed) + 1,
        };
        *self.cached() = Some(made.clone());
        Ok(made)
    }

    fn cached(&self) -> std::sync::MutexGuard<'_, Option<Made>> {
        self.current
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// The next call connects anew (to the master the sentinels name then), unless the
    /// connection that failed was replaced already.
    fn forget(&self, generation: u64) {
        let mut cached = self.cached();
        if cached
            .as_ref()
            .is_some_and(|made| made.generation == generation)
        {
            *cached = None;
        }
    }

    fn millis_since_epoch(&self) -> u64 {
        self.epoch.elapsed().as_millis() as u64
    }

    /// A call that began at `started` ran out of time. If nothing has answered since, the node
    /// may be gone without a word (a partition): the next call connects anew. A node that
    /// answers others, only slowly, keeps its connection.
    pub(super) fn timed_out(&self, started: Instant) {
        let started = started.saturating_duration_since(self.epoch).as_millis() as u64;
        if self.answered.load(Ordering::Relaxed) <= started {
            let generation = self.cached().as_ref().map(|made| made.generation);
            if let Some(generation) = generation {
                self.forget(generation);
            }
        }
    }

    /// A connection that failed so, or a master a failover turned into a replica (it answers
    /// `READONLY`), is not used again.
    fn check<T>(&self, generation: u64, answer: &redis::RedisResult<T>) {
        match answer {
            Ok(_) => self
                .answered
                .store(self.millis_since_epoch(), Ordering::Relaxed),
            Err(e)
                if e.is_io_error()
                    || e.is_connection_dropped()
                    || e.is_connection_refusal()
                    || e.is_unrecoverable_error()
                    || e.is_timeout()
                    || e.kind() == redis::ErrorKind::ReadOnly =>
            {
                self.forget(generation);
            }
            Err(_) => self
                .answered
                .store(self.millis_since_epoch(), Ordering::Relaxed),
        }
    }
}

/// One connection, whichever the topology: the scripts and commands run on it as on any.
#[derive(Clone)]
pub(super) enum Connection {
    Node(Made, Arc<Reconnecting>),
    Cluster(ClusterConnection),
}

impl redis::aio::ConnectionLike for Connection {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a redis::Cmd) -> RedisFuture<'a, redis::Value> {
        match self {
            Connection::Node(made, node) => Box::pin(async move {
                let answer = made.connection.req_packed_command(cmd).await;
                node.check(made.generation, &answer);
                answer
            }),
            Connection::Cluster(connection) => connection.req_packed_command(cmd),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        cmd: &'a redis::Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<redis::Value>> {
        match self {
            Connection::Node(made, node) => Box::pin(async move {
                let answer = made
                    .connection
                    .req_packed_commands(cmd, offset, count)
                    .await;
                node.check(made.generation, &answer);
                answer
            }),
            Connection::Cluster(connection) => connection.req_packed_commands(cmd, offset, count),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            Connection::Node(made, _) => made.connection.get_db(),
            Connection::Cluster(connection) => connection.get_db(),
        }
    }
}
