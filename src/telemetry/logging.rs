//! Log lines, the access line of every request among them, leave the request threads through a
//! bounded queue: a dedicated thread writes them to stdout in batches, so a slow reader of
//! stdout (a full pipe to journald, a stalled terminal) never stalls a license.

use std::io::{BufWriter, IsTerminal};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, OnceLock};

use prometheus::IntCounter;

use tracing_appender::non_blocking::{ErrorCounter, NonBlockingBuilder, WorkerGuard};
use tracing_subscriber::fmt::writer::MakeWriterExt;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;

use crate::config::LogFormat;

/// Lines queued for the writer thread; beyond it new lines are dropped and counted rather than
/// making requests wait.
const QUEUED_LINES: usize = 64 * 1024;

static WRITER: OnceLock<Writer> = OnceLock::new();

struct Writer {
    guard: Mutex<Option<WorkerGuard>>,
    dropped: ErrorCounter,
}

pub fn init(format: LogFormat) {
    let ansi = std::io::stdout().is_terminal();
    // Batches what piles up while the thread writes into one write call; the writer flushes
    // whenever the queue runs empty, so a quiet server's lines are not held back.
    let (writer, guard) = NonBlockingBuilder::default()
        .buffered_lines_limit(QUEUED_LINES)
        .lossy(true)
        .thread_name("log writer")
        .finish(BufWriter::new(std::io::stdout()));
    let dropped = writer.error_counter();
    // Pingora and h2 print request bytes and headers (bearer tokens, provider authorizations)
    // at debug level; no RUST_LOG setting, however specific, turns that on.
    let at_most_info = tracing_subscriber::filter::filter_fn(|event| {
        let target = event.target();
        let chatty = target.starts_with("pingora") || target.starts_with("h2");
        !chatty || *event.level() <= tracing::Level::INFO
    });
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let registry = tracing_subscriber::registry()
        .with(at_most_info)
        .with(filter);
    // Errors are written at once: Pingora ends the process with `exit` right after logging
    // why it cannot start, before a queued line would be written.
    let layer = tracing_subscriber::fmt::layer()
        .with_ansi(ansi)
        .with_writer(
            std::io::stdout
                .with_max_level(tracing::Level::ERROR)
                .or_else(writer),
        );
    match format {
        LogFormat::Json => registry.with(layer.json().flatten_event(true)).init(),
        LogFormat::Text => registry.with(layer).init(),
    }
    let _ = WRITER.set(Writer {
        guard: Mutex::new(Some(guard)),
        dropped,
    });
}

/// Brings `counter` up to the lines dropped so far because the writer thread fell a whole
/// queue behind; concurrent scrapes add each dropped line once.
pub(crate) fn count_dropped_lines(counter: &IntCounter) {
    static COUNTED: AtomicU64 = AtomicU64::new(0);
    let Some(writer) = WRITER.get() else {
        return;
    };
    let dropped = writer.dropped.dropped_lines() as u64;
    let counted = COUNTED.fetch_max(dropped, Ordering::Relaxed);
    if dropped > counted {
        counter.inc_by(dropped - counted);
    }
}

/// Writes out every queued line; called before the process exits, as lines still queued would
/// otherwise be lost. Lines logged afterwards are dropped.
pub fn flush() {
    if let Some(writer) = WRITER.get() {
        // The lock is held until the writer has finished, so that a second caller returns
        // only once every line is out.
        let mut guard = writer
            .guard
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        drop(guard.take());
    }
}
