use super::*;

/// Against a real `redis-server` (scripts/setup.sh installs it).
#[tokio::test]
async fn streams_quotas_blocks_and_tokens() {
    let redis = licensegate_testkit::Redis::start();
    let store =
        RedisStore::new(&RedisTopology::Single(redis.url()), Duration::from_secs(1)).unwrap();
    super::super::conformance::streams_quotas_and_blocks(&store).await;
    super::super::conformance::catalog_records(&store).await;
    super::super::conformance::spent_tokens(&store).await;
    super::super::conformance::unlimited_stream_records(&store).await;
    let interval = Duration::from_millis(100);
    for _ in 0..3 {
        assert_eq!(store.take_token("t", interval, 3).await.unwrap(), None);
    }
    let wait = store.take_token("t", interval, 3).await.unwrap().unwrap();
    assert!(wait > Duration::ZERO && wait <= interval, "{wait:?}");
    tokio::time::sleep(wait + Duration::from_millis(5)).await;
    assert_eq!(store.take_token("t", interval, 3).await.unwrap(), None);
}
