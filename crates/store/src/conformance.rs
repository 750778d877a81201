//! The behaviour both stores must share, run against each of them.

use super::*;

fn facts(content: &str) -> StreamFacts {
    StreamFacts {
        content: content.into(),
        drm: "widevine".into(),
        provider: "sim".into(),
        policy: "streaming".into(),
        interval: 40,
        key_ids: vec!["0102".into(), "0304".into()],
    }
}

static MOVIE: std::sync::LazyLock<StreamFacts> = std::sync::LazyLock::new(|| facts("movie-1"));
static OTHER: std::sync::LazyLock<StreamFacts> = std::sync::LazyLock::new(|| facts("movie-2"));

fn ask(session: &str, seconds: u64) -> LeaseAsk<'_> {
    LeaseAsk {
        session,
        facts: &MOVIE,
        seconds,
        cadence: &["a"],
    }
}

fn continuing<'a>(session: &'a str, content: &'a str, cadence: &'a [&'a str]) -> ContinueAsk<'a> {
    ContinueAsk {
        session,
        content,
        drm: "widevine",
        seconds: 100,
        cadence,
        fallback_interval: 300,
    }
}

pub async fn streams_quotas_and_blocks(store: &dyn Store) {
    let started = StreamDecision::Started { stopped: None };
    let acquire = |session: &'static str, stop_oldest, now| {
        store.acquire_stream("ann", ask(session, 100), 2, stop_oldest, now)
    };
    assert_eq!(acquire("a", false, 1000).await.unwrap(), started);
    assert_eq!(acquire("b", false, 1010).await.unwrap(), started);
    assert_eq!(
        acquire("c", false, 1020).await.unwrap(),
        StreamDecision::Full {
            active: 2,
            oldest_expires_at: 1100
        }
    );
    assert_eq!(
        acquire("a", false, 1050).await.unwrap(),
        StreamDecision::Renewed
    );
    // a now lasts until 1150; b runs out at 1110.
    assert_eq!(acquire("c", false, 1110).await.unwrap(), started);
    let sessions = |leases: Vec<Lease>| {
        leases
            .into_iter()
            .map(|l| (l.session, l.stopped))
            .collect::<Vec<_>>()
    };
    assert_eq!(
        sessions(store.streams("ann", 1110).await.unwrap()),
        [("a".to_string(), false), ("c".to_string(), false)]
    );
    // The oldest (a) is displaced, and stays refused for a lease's length.
    assert_eq!(
        acquire("d", true, 1120).await.unwrap(),
        StreamDecision::Started {
            stopped: Some("a".into())
        }
    );
    assert_eq!(
        acquire("a", true, 1130).await.unwrap(),
        StreamDecision::Stopped
    );
    let a = store.renew_stream("ann", "a", 100, 1130).await.unwrap();
    assert!(a.is_some_and(|a| a.stopped && a.expires_at == 1220));
    assert!(store.end_stream("ann", "c").await.unwrap());
    assert!(!store.end_stream("ann", "c").await.unwrap());
    // A provisional lease takes the name its answer told, folding into one that exists.
    assert_eq!(acquire("pending-1", false, 1140).await.unwrap(), started);
    assert!(
        store
            .rename_stream("ann", "pending-1", "wv-01", 300, 240, 1141)
            .await
            .unwrap()
    );
    assert!(
        !store
            .rename_stream("ann", "pending-1", "wv-02", 300, 240, 1141)
            .await
            .unwrap()
    );
    let renamed = store.stream("ann", "wv-01", 1142).await.unwrap().unwrap();
    assert_eq!(
        (
            renamed.expires_at,
            renamed.content.as_str(),
            renamed.drm.as_str()
        ),
        (1441, "movie-1", "widevine")
    );
    assert!(
        store
            .stream("ann", "pending-1", 1142)
            .await
            .unwrap()
            .is_none()
    );
    assert_eq!(
        acquire("pending-2", false, 1150).await.unwrap(),
        StreamDecision::Full {
            active: 2,
            oldest_expires_at: 1220
        }
    );
    let renewed = store.renew_stream("ann", "wv-01", 600, 1200).await.unwrap();
    assert_eq!(renewed.map(|l| l.expires_at), Some(1800));
    assert!(
        store
            .renew_stream("ann", "gone", 600, 1200)
            .await
            .unwrap()
            .is_none()
    );
    assert_eq!(store.end_streams("ann").await.unwrap(), 3);
    assert!(store.streams("ann", 1200).await.unwrap().is_empty());

    // A session continues only the content and DRM it was licensed for.
    assert_eq!(acquire("s", false, 2000).await.unwrap(), started);
    let other = LeaseAsk {
        facts: &OTHER,
        ..ask("s", 100)
    };
    assert_eq!(
        store
            .acquire_stream("ann", other, 5, false, 2001)
            .await
            .unwrap(),
        StreamDecision::Conflict
    );
    let record = store.stream("ann", "s", 2001).await.unwrap().unwrap();
    assert_eq!(
        (
            record.provider.as_str(),
            record.policy.as_str(),
            record.interval,
            record.key_ids.len(),
            record.device.as_deref()
        ),
        ("sim", "streaming", 40, 2, None)
    );
    let go_on = |content, cadence: &'static [&'static str], now| {
        store.continue_stream("ann", continuing("s", content, cadence), now)
    };
    assert_eq!(
        go_on("movie-2", &["a"], 2002).await.unwrap(),
        Continuation::Mismatch
    );
    assert_eq!(
        store
            .continue_stream(
                "ann",
                ContinueAsk {
                    drm: "playready",
                    ..continuing("s", "movie-1", &["a"])
                },
                2002
            )
            .await
            .unwrap(),
        Continuation::Mismatch
    );
    // Exempt only when each thing continued (here key IDs a, b, c) is due, at most once per
    // half interval (20 s); the license that started the stream took its own key (a).
    let exempt = |continued: Continuation| match continued {
        Continuation::Continued { lease, exempt } => (exempt, lease.expires_at),
        other => panic!("not continued: {other:?}"),
    };
    for (cadence, now, expected) in [
        (&["a"][..], 2002, false),
        (&["b"], 2003, true),
        (&["a", "c"], 2004, false),
        (&["a"], 2020, true),
        (&["a"], 2021, false),
        (&["b", "c"], 2023, true),
        (&["c"], 2024, false),
    ] {
        assert_eq!(
            exempt(go_on("movie-1", cadence, now).await.unwrap()),
            (expected, now + 100),
            "{cadence:?} at {now}"
        );
    }
    // More key IDs than a record keeps are never exempt.
    let many: Vec<String> = (0..=cadence::KEPT).map(|n| format!("k{n}")).collect();
    let many: Vec<&str> = many.iter().map(String::as_str).collect();
    let crowded = store
        .continue_stream("ann", continuing("s", "movie-1", &many), 2100)
        .await
        .unwrap();
    assert_eq!(exempt(crowded), (false, 2200));
    // A provisional lease whose renaming was lost is adopted by the name its license told,
    // found by the CDM's own id that its name carries; nothing else is.
    assert_eq!(
        acquire("pending-cdm1-req9", false, 2010).await.unwrap(),
        started
    );
    let adopted = store
        .adopt_stream("ann", "pending-cdm1-", "wv-09", 2011)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        (adopted.session.as_str(), adopted.content.as_str()),
        ("wv-09", "movie-1")
    );
    for prefix in ["pending-cdm1-", "pending-cdm2-"] {
        assert!(
            store
                .adopt_stream("ann", prefix, "wv-10", 2012)
                .await
                .unwrap()
                .is_none()
        );
    }
    assert!(store.end_stream("ann", "wv-09").await.unwrap());
    // The first device reported is the stream's; another is not recorded over it.
    for (device, recorded) in [("d1", "d1"), ("d2", "d1")] {
        assert_eq!(
            store
                .set_stream_device("ann", "s", device, 2023)
                .await
                .unwrap()
                .as_deref(),
            Some(recorded)
        );
    }
    let record = store.stream("ann", "s", 2023).await.unwrap().unwrap();
    assert_eq!(record.device.as_deref(), Some("d1"));
    // A request that failed over records the provider that licensed it and the device that
    // provider named, or none; the rest stays.
    for (device, recorded) in [(Some("backup-d1"), Some("backup-d1")), (None, None)] {
        assert!(
            store
                .set_stream_provider("ann", "s", "backup", device, 2023)
                .await
                .unwrap()
        );
        let moved = store.stream("ann", "s", 2023).await.unwrap().unwrap();
        assert_eq!(
            moved,
            Lease {
                provider: "backup".into(),
                device: recorded.map(str::to_string),
                ..record.clone()
            }
        );
    }
    // With none recorded, the next device the provider reports is the stream's.
    assert_eq!(
        store
            .set_stream_device("ann", "s", "backup-d1", 2023)
            .await
            .unwrap()
            .as_deref(),
        Some("backup-d1")
    );
    assert!(
        !store
            .set_stream_provider("ann", "gone", "backup", None, 2023)
            .await
            .unwrap()
    );
    assert_eq!(
        store
            .set_stream_device("ann", "gone", "d1", 2023)
            .await
            .unwrap(),
        None
    );
    assert_eq!(
        store
            .continue_stream("ann", continuing("t", "movie-1", &["a"]), 2023)
            .await
            .unwrap(),
        Continuation::Unknown
    );
    assert_eq!(
        acquire("t", true, 2024).await.unwrap(),
        StreamDecision::Started { stopped: None }
    );
    assert_eq!(
        store
            .acquire_stream("ann", ask("u", 100), 2, true, 2025)
            .await
            .unwrap(),
        StreamDecision::Started {
            stopped: Some("s".into())
        }
    );
    assert_eq!(
        go_on("movie-1", &["renewal"], 2026).await.unwrap(),
        Continuation::Stopped
    );
    assert_eq!(
        go_on("movie-1", &["a"], 2300).await.unwrap(),
        Continuation::Unknown
    );
    store.end_streams("ann").await.unwrap();

    let window = 3600;
    let take = |now| store.take_quota("ann", 2, 100, now);
    assert_eq!(
        take(window + 1).await.unwrap(),
        QuotaDecision::Taken { window }
    );
    assert_eq!(
        take(window + 2).await.unwrap(),
        QuotaDecision::Taken { window }
    );
    assert_eq!(
        take(window + 3).await.unwrap(),
        QuotaDecision::Exhausted {
            resets_at: window + 100
        }
    );
    store.refund_quota("ann", window, 100).await.unwrap();
    assert_eq!(
        take(window + 4).await.unwrap(),
        QuotaDecision::Taken { window }
    );
    assert_eq!(
        take(window + 100).await.unwrap(),
        QuotaDecision::Taken {
            window: window + 100
        }
    );

    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    assert_eq!(store.blocked("ann", now).await.unwrap(), None);
    store.block_user("ann", None, now).await.unwrap();
    assert_eq!(store.blocked("ann", now).await.unwrap(), Some(None));
    store.block_user("ann", Some(now + 60), now).await.unwrap();
    assert_eq!(
        store.blocked("ann", now).await.unwrap(),
        Some(Some(now + 60))
    );
    assert_eq!(store.blocked("ann", now + 61).await.unwrap(), None);
    assert!(store.unblock_user("ann").await.unwrap());
    assert_eq!(store.blocked("ann", now).await.unwrap(), None);
    assert_eq!(store.blocked("bob", now).await.unwrap(), None);
}

pub async fn catalog_records(store: &dyn Store) {
    let kids = |list: &[&str]| list.iter().map(|kid| kid.to_string()).collect::<Vec<_>>();
    assert_eq!(store.content("movie-1").await.unwrap(), None);
    assert_eq!(
        store
            .put_content(
                "movie-1",
                "r1",
                &kids(&["0a", "0b"]),
                Replacing::Exactly(None)
            )
            .await
            .unwrap(),
        ContentPut::Stored { created: true }
    );
    assert_eq!(
        store.content("movie-1").await.unwrap().as_deref(),
        Some("r1")
    );
    assert_eq!(
        store.content_of_key_id("0b").await.unwrap().as_deref(),
        Some("movie-1")
    );
    // Another content cannot take a key ID, and its refused put writes nothing.
    assert_eq!(
        store
            .put_content("movie-2", "r2", &kids(&["0c", "0b"]), Replacing::Anything)
            .await
            .unwrap(),
        ContentPut::KeyIdTaken {
            key_id: "0b".into(),
            owner: "movie-1".into()
        }
    );
    assert_eq!(store.content("movie-2").await.unwrap(), None);
    assert_eq!(store.content_of_key_id("0c").await.unwrap(), None);
    // A writer replacing only what it read loses to one that wrote in between, and writes
    // nothing: neither the record nor a key ID.
    for replacing in [Replacing::Exactly(None), Replacing::Exactly(Some("r0"))] {
        assert_eq!(
            store
                .put_content("movie-1", "lost", &kids(&["0d"]), replacing)
                .await
                .unwrap(),
            ContentPut::Changed
        );
    }
    assert_eq!(
        store.content("movie-1").await.unwrap().as_deref(),
        Some("r1")
    );
    assert_eq!(store.content_of_key_id("0d").await.unwrap(), None);
    assert_eq!(
        store
            .put_content(
                "movie-3",
                "r3",
                &kids(&["0e"]),
                Replacing::Exactly(Some("r3"))
            )
            .await
            .unwrap(),
        ContentPut::Changed
    );
    assert_eq!(store.content("movie-3").await.unwrap(), None);
    // Replacing an entry lets go of the key IDs it no longer names.
    assert_eq!(
        store
            .put_content(
                "movie-1",
                "r1b",
                &kids(&["0a"]),
                Replacing::Exactly(Some("r1"))
            )
            .await
            .unwrap(),
        ContentPut::Stored { created: false }
    );
    assert_eq!(store.content_of_key_id("0b").await.unwrap(), None);
    assert_eq!(
        store
            .put_content("movie-2", "r2", &kids(&["0c", "0b"]), Replacing::Anything)
            .await
            .unwrap(),
        ContentPut::Stored { created: true }
    );
    store
        .put_content("a-first", "r0", &[], Replacing::Anything)
        .await
        .unwrap();
    let page = store.contents("", 2).await.unwrap();
    assert_eq!(
        page,
        [
            ("a-first".to_string(), "r0".to_string()),
            ("movie-1".to_string(), "r1b".to_string())
        ]
    );
    let next = store.contents("movie-1", 2).await.unwrap();
    assert_eq!(next, [("movie-2".to_string(), "r2".to_string())]);
    assert!(store.remove_content("movie-2").await.unwrap());
    assert!(!store.remove_content("movie-2").await.unwrap());
    assert_eq!(store.content_of_key_id("0c").await.unwrap(), None);
    assert_eq!(store.contents("movie-1", 10).await.unwrap(), []);
}

pub async fn spent_tokens(store: &dyn Store) {
    let now = 1_000_000;
    assert!(store.spend_token("t1", "r1", now + 60, now).await.unwrap());
    // Spent: a replay, here or on another instance, is refused until the token expires.
    assert!(
        !store
            .spend_token("t1", "r2", now + 60, now + 1)
            .await
            .unwrap()
    );
    assert!(store.spend_token("t2", "r3", now + 60, now).await.unwrap());
    // The replay's request gives back nothing: the token stays spent by the first.
    store.return_token("t1", "r2").await.unwrap();
    assert!(
        !store
            .spend_token("t1", "r4", now + 60, now + 2)
            .await
            .unwrap()
    );
    // Given back by the request that spent it (which bought nothing): it may buy its stream
    // again.
    store.return_token("t1", "r1").await.unwrap();
    assert!(
        store
            .spend_token("t1", "r5", now + 60, now + 3)
            .await
            .unwrap()
    );
}

pub async fn unlimited_stream_records(store: &dyn Store) {
    let now = 5_000;
    let session = |n: u64| format!("wv-{n:05}");
    let extra = UNLIMITED_RECORDS_KEPT / 2;
    for n in 0..UNLIMITED_RECORDS_KEPT + extra {
        let started = store
            .acquire_stream(
                "rec",
                ask(&session(n), 100),
                UNLIMITED,
                false,
                now + n / 100,
            )
            .await
            .unwrap();
        assert_eq!(started, StreamDecision::Started { stopped: None }, "{n}");
    }
    let at = now + (UNLIMITED_RECORDS_KEPT + extra) / 100;
    let kept = store.streams("rec", at).await.unwrap();
    // Never more than a quarter past what is kept; the oldest are the ones dropped.
    assert!(
        (kept.len() as u64) <= UNLIMITED_RECORDS_KEPT + UNLIMITED_RECORDS_KEPT / 4,
        "{}",
        kept.len()
    );
    let newest = session(UNLIMITED_RECORDS_KEPT + extra - 1);
    assert!(kept.iter().any(|lease| lease.session == newest));
    assert!(kept.iter().all(|lease| lease.session != session(0)));
    // A recorded session is continued as before, and keeps its content and DRM.
    assert_eq!(
        store
            .acquire_stream("rec", ask(&newest, 100), UNLIMITED, false, at)
            .await
            .unwrap(),
        StreamDecision::Renewed
    );
    let other = LeaseAsk {
        facts: &OTHER,
        ..ask(&newest, 100)
    };
    assert_eq!(
        store
            .acquire_stream("rec", other, UNLIMITED, false, at)
            .await
            .unwrap(),
        StreamDecision::Conflict
    );
    // Expired records are not renewed: the session starts again.
    assert_eq!(
        store
            .acquire_stream("rec", ask(&newest, 100), UNLIMITED, false, at + 1000)
            .await
            .unwrap(),
        StreamDecision::Started { stopped: None }
    );
    // Records all started in one second: the one whose writing prunes them is kept, though
    // its name sorts first.
    for n in 0..UNLIMITED_RECORDS_KEPT + UNLIMITED_RECORDS_KEPT / 4 {
        store
            .acquire_stream("same", ask(&session(n), 100), UNLIMITED, false, now)
            .await
            .unwrap();
    }
    let first = "aa-sorts-first";
    assert_eq!(
        store
            .acquire_stream("same", ask(first, 100), UNLIMITED, false, now)
            .await
            .unwrap(),
        StreamDecision::Started { stopped: None }
    );
    let kept = store.streams("same", now).await.unwrap();
    assert!(kept.iter().any(|lease| lease.session == first));
    assert!((kept.len() as u64) <= UNLIMITED_RECORDS_KEPT + UNLIMITED_RECORDS_KEPT / 4);
}
