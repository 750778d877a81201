use super::*;
use crate::SpentTokens;

const IDLE: Duration = Duration::from_secs(100);

#[test]
fn a_call_after_sqlite_rolled_back_its_batch_writes_nothing() {
    let connection = Connection::open_in_memory().unwrap();
    run(&connection, "CREATE TABLE t (v INTEGER)", []).unwrap();
    run(&connection, "BEGIN IMMEDIATE", []).unwrap();
    // What SQLite does to the transaction on a full disk or an I/O error.
    run(&connection, "ROLLBACK", []).unwrap();
    let call = in_savepoint(&connection, |c| run(c, "INSERT INTO t VALUES (1)", []));
    assert!(call.is_err());
    let rows: i64 = row(&connection, "SELECT COUNT(*) FROM t", [], |r| r.get(0)).unwrap();
    assert_eq!(rows, 0);
}

#[test]
fn a_failing_call_leaves_nothing_of_itself_and_the_rest_of_its_batch_stands() {
    let mut connection = Connection::open_in_memory().unwrap();
    run(&connection, "CREATE TABLE t (v INTEGER)", []).unwrap();
    let transaction = connection.transaction().unwrap();
    in_savepoint(&transaction, |c| run(c, "INSERT INTO t VALUES (1)", [])).unwrap();
    let failed = in_savepoint(&transaction, |c| {
        run(c, "INSERT INTO t VALUES (2)", [])?;
        run(c, "INSERT INTO missing VALUES (3)", [])
    });
    assert!(failed.is_err());
    in_savepoint(&transaction, |c| run(c, "INSERT INTO t VALUES (4)", [])).unwrap();
    transaction.commit().unwrap();
    let mut statement = connection.prepare("SELECT v FROM t ORDER BY v").unwrap();
    let values: Vec<i64> = statement
        .query_map([], |row| row.get(0))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap();
    assert_eq!(values, [1, 4]);
}

#[tokio::test]
async fn slots_fill_refuse_touch_and_free_when_idle() {
    let dir = tempfile::tempdir().unwrap();
    let store = EmbeddedStore::open(&dir.path().join("devices.db")).unwrap();
    let admit = |device: &'static str, now| store.admit_device("ann", device, 2, IDLE, now);
    assert_eq!(
        admit("a", 1000).await.unwrap(),
        Decision::Admitted { new: true }
    );
    assert_eq!(
        admit("b", 1010).await.unwrap(),
        Decision::Admitted { new: true }
    );
    assert_eq!(
        admit("a", 1020).await.unwrap(),
        Decision::Admitted { new: false }
    );
    assert_eq!(
        admit("c", 1030).await.unwrap(),
        Decision::Full {
            registered: 2,
            oldest_frees_at: 1110
        }
    );
    // b idles out at 1110; a was touched at 1020.
    assert_eq!(
        admit("c", 1110).await.unwrap(),
        Decision::Admitted { new: true }
    );
    let slots = store.devices("ann", IDLE, 1110).await.unwrap();
    let devices: Vec<_> = slots.iter().map(|s| s.device.as_str()).collect();
    assert_eq!(devices, ["a", "c"]);
    assert!(store.remove_device("ann", "a").await.unwrap());
    assert!(!store.remove_device("ann", "a").await.unwrap());
    assert_eq!(store.remove_devices("ann").await.unwrap(), 1);
    assert!(store.devices("bob", IDLE, 1110).await.unwrap().is_empty());
}

/// Instances sharing a disk may start at once on a new file: each one opens it.
#[test]
fn instances_starting_together_on_a_new_file_all_open_it() {
    for round in 0..20 {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("licensegate.db");
        let openers: Vec<_> = (0..6)
            .map(|_| {
                let path = path.clone();
                std::thread::spawn(move || EmbeddedStore::open(&path).map(drop))
            })
            .collect();
        for opener in openers {
            let opened = opener.join().unwrap();
            assert!(opened.is_ok(), "round {round}: {opened:?}");
        }
    }
}

/// 50k users who never come back leave 150k rows behind; passes of at most 1000 rows per
/// table take them back to the live set.
#[tokio::test]
async fn a_sweep_returns_the_tables_to_the_live_set() {
    const GONE: u32 = 50_000;
    const NOW: u64 = 1_000_000;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("licensegate.db");
    let store = EmbeddedStore::open(&path).unwrap();
    let mut writer = Connection::open(&path).unwrap();
    let fill = writer.transaction().unwrap();
    for n in 0..GONE + 10 {
        // The last ten users are live: a lease running, a device seen now, this window's quota.
        let live = n >= GONE;
        let (expires, seen, window) = if live {
            (NOW + 100, NOW, NOW - NOW % 3600)
        } else {
            (NOW - 1, NOW - 200, NOW - NOW % 3600 - 3600)
        };
        let user = format!("user-{n}");
        fill.execute(
            "INSERT INTO streams (user, session, content, drm, started_at, expires_at)
             VALUES (?1, 's', 'movie', 'widevine', 0, ?2)",
            params![user, expires as i64],
        )
        .unwrap();
        fill.execute(
            "INSERT INTO devices VALUES (?1, 'd', ?2, ?2)",
            params![user, seen as i64],
        )
        .unwrap();
        fill.execute(
            "INSERT INTO quotas VALUES (?1, ?2, 1)",
            params![user, window as i64],
        )
        .unwrap();
    }
    fill.commit().unwrap();
    let expired = Expired {
        now: NOW,
        device_idle: Some(IDLE),
        quota_period: Some(3600),
    };
    let mut passes = 0;
    while store.sweep(expired, 1000).await.unwrap() == 1000 {
        passes += 1;
    }
    assert_eq!(passes, GONE / 1000);
    let count = |table: &str| -> i64 {
        writer
            .query_row(&format!("SELECT COUNT(*) FROM {table}"), [], |row| {
                row.get(0)
            })
            .unwrap()
    };
    assert_eq!(
        [count("streams"), count("devices"), count("quotas")],
        [10, 10, 10]
    );
}

#[tokio::test]
async fn streams_quotas_and_blocks_as_redis_holds_them() {
    let dir = tempfile::tempdir().unwrap();
    let store = EmbeddedStore::open(&dir.path().join("licensegate.db")).unwrap();
    super::super::conformance::streams_quotas_and_blocks(&store).await;
    super::super::conformance::catalog_records(&store).await;
    super::super::conformance::spent_tokens(&store).await;
    super::super::conformance::unlimited_stream_records(&store).await;
    // Once the token has expired its record no longer holds, and the sweep takes it away.
    assert!(
        store
            .spend_token("t3", "r1", 1_000_060, 1_000_000)
            .await
            .unwrap()
    );
    assert!(
        store
            .spend_token("t3", "r2", 1_000_200, 1_000_061)
            .await
            .unwrap()
    );
    let expired = super::sweep::Expired {
        now: 2_000_000,
        device_idle: None,
        quota_period: None,
    };
    store.sweep(expired, 100).await.unwrap();
    let left: i64 = store
        .with(|tx| tx.query_row("SELECT COUNT(*) FROM spent_tokens", [], |row| row.get(0)))
        .await
        .unwrap();
    assert_eq!(left, 0);
}

#[tokio::test]
async fn leases_from_before_the_record_columns_still_continue() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("licensegate.db");
    Connection::open(&path)
        .unwrap()
        .execute_batch(
            "CREATE TABLE streams (user TEXT NOT NULL, session TEXT NOT NULL,
                 content TEXT NOT NULL, drm TEXT NOT NULL, started_at INTEGER NOT NULL,
                 expires_at INTEGER NOT NULL, stopped INTEGER NOT NULL DEFAULT 0,
                 PRIMARY KEY (user, session)) WITHOUT ROWID;
             INSERT INTO streams VALUES ('ann', 's', 'movie-1', 'widevine', 1000, 2000, 0);
             CREATE TABLE spent_tokens (id TEXT PRIMARY KEY, until INTEGER NOT NULL) WITHOUT ROWID;
             INSERT INTO spent_tokens VALUES ('old', 3000);",
        )
        .unwrap();
    let store = EmbeddedStore::open(&path).unwrap();
    let lease = store.stream("ann", "s", 1500).await.unwrap().unwrap();
    assert_eq!(
        (lease.content.as_str(), lease.interval, lease.device),
        ("movie-1", 0, None)
    );
    let continued = store
        .continue_stream(
            "ann",
            super::super::ContinueAsk {
                session: "s",
                content: "movie-1",
                drm: "widevine",
                seconds: 100,
                cadence: &["renewal"],
                fallback_interval: 300,
            },
            1500,
        )
        .await
        .unwrap();
    assert!(matches!(
        continued,
        Continuation::Continued { exempt: true, .. }
    ));
    // A token spent before spenders were recorded stays spent; none of today's requests can
    // give it back.
    store.return_token("old", "any-request").await.unwrap();
    assert!(!store.spend_token("old", "r", 3000, 1500).await.unwrap());
}
