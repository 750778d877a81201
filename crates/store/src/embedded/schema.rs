//! The database's tables and indexes, created on open; a database from an older licensegate
//! gains what it lacks.

use rusqlite::Connection;

/// The tables and indexes, in WAL mode; a database from before gains what it lacks.
pub(super) fn prepare_schema(connection: &Connection) -> rusqlite::Result<()> {
    // WAL: readers do not block the writer. NORMAL: a commit survives the process being
    // killed (it is in the OS's hands); only a power loss may take the last commits.
    connection.execute_batch(
        "PRAGMA busy_timeout = 5000;
         PRAGMA journal_mode = WAL;
         PRAGMA synchronous = NORMAL;
         CREATE TABLE IF NOT EXISTS devices (
             user TEXT NOT NULL,
             device TEXT NOT NULL,
             first_seen INTEGER NOT NULL,
             last_seen INTEGER NOT NULL,
             PRIMARY KEY (user, device)
         ) WITHOUT ROWID;
         CREATE TABLE IF NOT EXISTS streams (
             user TEXT NOT NULL,
             session TEXT NOT NULL,
             content TEXT NOT NULL,
             drm TEXT NOT NULL,
             started_at INTEGER NOT NULL,
             expires_at INTEGER NOT NULL,
             stopped INTEGER NOT NULL DEFAULT 0,
             provider TEXT NOT NULL DEFAULT '',
             policy TEXT NOT NULL DEFAULT '',
             interval INTEGER NOT NULL DEFAULT 0,
             device TEXT NOT NULL DEFAULT '',
             key_ids TEXT NOT NULL DEFAULT '',
             cadence TEXT NOT NULL DEFAULT '',
             PRIMARY KEY (user, session)
         ) WITHOUT ROWID;
         CREATE TABLE IF NOT EXISTS quotas (
             user TEXT NOT NULL,
             window INTEGER NOT NULL,
             used INTEGER NOT NULL,
             PRIMARY KEY (user, window)
         ) WITHOUT ROWID;
         CREATE TABLE IF NOT EXISTS catalog (
             id TEXT PRIMARY KEY,
             record TEXT NOT NULL
         ) WITHOUT ROWID;
         CREATE TABLE IF NOT EXISTS catalog_key_ids (
             kid TEXT PRIMARY KEY,
             id TEXT NOT NULL
         ) WITHOUT ROWID;
         CREATE TABLE IF NOT EXISTS blocks (
             user TEXT PRIMARY KEY,
             until INTEGER
         ) WITHOUT ROWID;
         CREATE TABLE IF NOT EXISTS spent_tokens (
             id TEXT PRIMARY KEY,
             until INTEGER NOT NULL,
             spender TEXT NOT NULL DEFAULT ''
         ) WITHOUT ROWID;",
    )?;
    add_stream_record_columns(connection)?;
    // Which request spent a token: only it may give the token back.
    add_columns(
        connection,
        "spent_tokens",
        &[("spender", "TEXT NOT NULL DEFAULT ''")],
    )?;
    // What the background sweep finds without reading every row.
    connection.execute_batch(
        "CREATE INDEX IF NOT EXISTS streams_by_expiry ON streams (expires_at);
         CREATE INDEX IF NOT EXISTS devices_by_last_seen ON devices (last_seen);
         CREATE INDEX IF NOT EXISTS quotas_by_window ON quotas (window);
         CREATE INDEX IF NOT EXISTS catalog_key_ids_by_content ON catalog_key_ids (id);
         CREATE INDEX IF NOT EXISTS spent_tokens_by_until ON spent_tokens (until);",
    )?;
    Ok(())
}

/// A database from before streams recorded what they were licensed for gains the columns; its
/// leases, which recorded content and DRM already, continue as they did until they run out.
fn add_stream_record_columns(connection: &Connection) -> rusqlite::Result<()> {
    add_columns(
        connection,
        "streams",
        &[
            ("provider", "TEXT NOT NULL DEFAULT ''"),
            ("policy", "TEXT NOT NULL DEFAULT ''"),
            ("interval", "INTEGER NOT NULL DEFAULT 0"),
            ("device", "TEXT NOT NULL DEFAULT ''"),
            ("key_ids", "TEXT NOT NULL DEFAULT ''"),
            ("cadence", "TEXT NOT NULL DEFAULT ''"),
        ],
    )
}

/// Adds the columns `table` lacks (a database from an older licensegate).
fn add_columns(
    connection: &Connection,
    table: &str,
    columns: &[(&str, &str)],
) -> rusqlite::Result<()> {
    let mut statement = connection.prepare("SELECT name FROM pragma_table_info(?1)")?;
    let present = statement
        .query_map([table], |row| row.get::<_, String>(0))?
        .collect::<rusqlite::Result<Vec<_>>>()?;
    for (column, kind) in columns {
        if present.iter().any(|name| name == column) {
            continue;
        }
        match connection.execute_batch(&format!("ALTER TABLE {table} ADD COLUMN {column} {kind}")) {
            // Another instance opening the same file added it first.
            Err(e) if e.to_string().contains("duplicate column name") => {}
            other => other?,
        }
    }
    Ok(())
}
