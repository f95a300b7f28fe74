//! The gRPC API of a real `distkv-server` process: round trips, siblings, bad input.

use distkv_proto::v1::{
    BatchPutRequest, Consistency, DeleteRequest, GetRequest, KeyValuePair, PutRequest,
    StatusRequest,
};
use distkv_tests::{connect, Server};
use tonic::Code;

fn put(key: &[u8], value: &[u8], context: &[u8]) -> PutRequest {
    PutRequest {
        key: key.to_vec().into(),
        value: value.to_vec().into(),
        context: context.to_vec().into(),
        consistency: 0,
    }
}

fn get(key: &[u8]) -> GetRequest {
    GetRequest {
        key: key.to_vec().into(),
        consistency: 0,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn put_get_delete_batch_round_trip() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let server = tokio::task::block_in_place(|| Server::start(&dir.path().join("n1"), &[]))?;
    let mut c = connect(&server.addr).await?;

    // Missing key.
    let r = c.get(get(b"absent")).await?.into_inner();
    assert!(!r.found);
    assert!(r.values.is_empty());

    // Put then get, binary-safe.
    let key = b"k\x00\xff";
    let value = b"v\x00\xfe\x01";
    let ctx = c.put(put(key, value, b"")).await?.into_inner().context;
    assert!(!ctx.is_empty(), "a put returns its causal context");
    let r = c.get(get(key)).await?.into_inner();
    assert!(r.found);
    assert_eq!(r.values, vec![value.to_vec()]);

    // Overwrite with the read's context: exactly one value afterwards, no sibling.
    c.put(put(key, b"second", &r.context)).await?;
    let r = c.get(get(key)).await?.into_inner();
    assert_eq!(r.values, vec![b"second".to_vec()]);

    // Every consistency level works on one node.
    for level in [Consistency::One, Consistency::Quorum, Consistency::All] {
        let r = c
            .get(GetRequest {
                key: key.to_vec().into(),
                consistency: level as i32,
            })
            .await?
            .into_inner();
        assert_eq!(r.values, vec![b"second".to_vec()], "{level:?}");
    }

    // Delete with context: gone.
    c.delete(DeleteRequest {
        key: key.to_vec().into(),
        context: r.context.clone(),
        consistency: 0,
    })
    .await?;
    let r = c.get(get(key)).await?.into_inner();
    assert!(!r.found);
    assert!(r.values.is_empty());
    assert!(
        !r.context.is_empty(),
        "a deleted key still has a context (the tombstone's)"
    );

    // Batch.
    let entries = (0..50)
        .map(|i| KeyValuePair {
            key: format!("batch-{i}").into_bytes().into(),
            value: format!("value-{i}").into_bytes().into(),
            context: Default::default(),
        })
        .collect();
    let resp = c
        .batch_put(BatchPutRequest {
            entries,
            consistency: 0,
        })
        .await?
        .into_inner();
    assert_eq!(resp.contexts.len(), 50);
    for i in [0, 17, 49] {
        let r = c
            .get(get(format!("batch-{i}").as_bytes()))
            .await?
            .into_inner();
        assert_eq!(r.values, vec![format!("value-{i}").into_bytes()]);
    }

    let s = c.status(StatusRequest {}).await?.into_inner();
    // A node is known in the cluster by its peer address.
    assert_eq!(s.address, server.peer_addr);
    assert_eq!(s.members.len(), 1);
    assert_eq!(s.storage_engine, "lsm", "the LSM engine is the default");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn blind_writes_become_siblings_and_a_context_write_resolves_them() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let server = tokio::task::block_in_place(|| Server::start(&dir.path().join("n1"), &[]))?;
    let mut c = connect(&server.addr).await?;
    c.put(put(b"k", b"one", b"")).await?;
    c.put(put(b"k", b"two", b"")).await?;
    let r = c.get(get(b"k")).await?.into_inner();
    let mut values = r.values.clone();
    values.sort();
    assert_eq!(
        values,
        vec![b"one".to_vec(), b"two".to_vec()],
        "no acknowledged write disappears"
    );
    c.put(put(b"k", b"merged", &r.context)).await?;
    assert_eq!(
        c.get(get(b"k")).await?.into_inner().values,
        vec![b"merged".to_vec()]
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_is_refused_with_a_clear_message_and_loses_nothing() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let server = tokio::task::block_in_place(|| Server::start(&dir.path().join("n1"), &[]))?;
    let mut c = connect(&server.addr).await?;
    c.put(put(b"keep", b"safe", b"")).await?;

    let e = c.put(put(b"", b"v", b"")).await.unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument);
    assert!(e.message().contains("key is empty"), "{}", e.message());
    let e = c.get(get(b"")).await.unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument);

    let long_key = vec![b'k'; 64 * 1024 + 1];
    let e = c.put(put(&long_key, b"v", b"")).await.unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument);
    assert!(
        e.message().contains("65537 bytes, over the limit of 65536"),
        "{}",
        e.message()
    );
    // Exactly at the limit is accepted.
    c.put(put(&long_key[..64 * 1024], b"v", b"")).await?;

    let big_value = vec![7u8; 16 * 1024 * 1024 + 1];
    let e = c.put(put(b"big", &big_value, b"")).await.unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument);
    assert!(
        e.message().contains("over the limit of 16777216 bytes"),
        "{}",
        e.message()
    );
    c.put(put(b"big", &big_value[..16 * 1024 * 1024], b""))
        .await?;
    assert_eq!(
        c.get(get(b"big")).await?.into_inner().values[0].len(),
        16 * 1024 * 1024
    );

    // A request over the server's message limit is refused as bad input naming the
    // settings, not with gRPC's raw "message length too large".
    let huge = vec![7u8; 100 * 1024 * 1024];
    let e = c.put(put(b"huge", &huge, b"")).await.unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument, "{}", e.message());
    assert!(
        e.message().contains("limits.max_value_bytes = 16777216"),
        "{}",
        e.message()
    );
    drop(huge);
    assert!(!c.get(get(b"huge")).await?.into_inner().found);

    // An empty value is a value.
    c.put(put(b"empty", b"", b"")).await?;
    let r = c.get(get(b"empty")).await?.into_inner();
    assert!(r.found);
    assert_eq!(r.values, vec![Vec::<u8>::new()]);

    // A malformed context and an unknown consistency level.
    let e = c.put(put(b"k", b"v", b"\x07garbage")).await.unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument);
    assert!(e.message().contains("context"), "{}", e.message());
    let e = c
        .get(GetRequest {
            key: b"k".to_vec().into(),
            consistency: 42,
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument);

    // A batch with one bad entry writes nothing.
    let entries = vec![
        KeyValuePair {
            key: b"b1".to_vec().into(),
            value: b"x".to_vec().into(),
            context: Default::default(),
        },
        KeyValuePair {
            key: Default::default(),
            value: b"y".to_vec().into(),
            context: Default::default(),
        },
    ];
    let e = c
        .batch_put(BatchPutRequest {
            entries,
            consistency: 0,
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument);
    assert!(e.message().contains("batch entry 1"), "{}", e.message());
    assert!(!c.get(get(b"b1")).await?.into_inner().found);

    // Nothing was lost along the way, and the node still serves.
    assert_eq!(
        c.get(get(b"keep")).await?.into_inner().values,
        vec![b"safe".to_vec()]
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn limits_are_configurable() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let server = tokio::task::block_in_place(|| {
        Server::start_with_env(
            &dir.path().join("n1"),
            &[],
            &[
                ("DISTKV_LIMITS__MAX_KEY_BYTES", "4"),
                ("DISTKV_LIMITS__MAX_VALUE_BYTES", "8"),
            ],
        )
    })?;
    let mut c = connect(&server.addr).await?;
    c.put(put(b"four", b"eightbyt", b"")).await?;
    let e = c.put(put(b"fives", b"v", b"")).await.unwrap_err();
    assert!(
        e.message().contains("over the limit of 4 bytes"),
        "{}",
        e.message()
    );
    let e = c.put(put(b"k", b"ninebytes", b"")).await.unwrap_err();
    assert!(
        e.message().contains("over the limit of 8 bytes"),
        "{}",
        e.message()
    );
    Ok(())
}
