//! Tombstone GC with real processes (issue 13): 1,000 keys deleted while a replica is
//! down (hints off), a short `gc.grace` passes, the replica comes back: no key comes
//! back at ONE (from every node) or QUORUM, and `status` shows every node's tombstones
//! purged.

use std::time::{Duration, Instant};

use futures::StreamExt;

use distkv_proto::v1::{BatchPutRequest, Consistency, DeleteRequest, GetRequest, KeyValuePair};
use distkv_tests::{connect, start_loopback_cluster, stdout, wait_cluster_ready, Server};

const KEYS: usize = 1_000;

fn key(i: usize) -> Vec<u8> {
    format!("gc-key-{i:05}").into_bytes()
}

/// Status of `node` as JSON.
fn status(node: &Server) -> anyhow::Result<serde_json::Value> {
    let out = tokio::task::block_in_place(|| node.client(&["--json", "status"]));
    anyhow::ensure!(out.status.success(), "status failed: {}", stdout(&out));
    Ok(serde_json::from_str(stdout(&out).trim())?)
}

/// Polls `what` every 200 ms until it holds, up to `timeout`.
async fn wait_for(
    timeout: Duration,
    what: &str,
    mut check: impl FnMut() -> anyhow::Result<bool>,
) -> anyhow::Result<()> {
    let deadline = Instant::now() + timeout;
    loop {
        if check()? {
            return Ok(());
        }
        anyhow::ensure!(Instant::now() < deadline, "{what}: not within {timeout:?}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Keys of `0..KEYS` that a read at `consistency` through `addr` finds with a value.
async fn found(addr: &str, consistency: Consistency) -> anyhow::Result<Vec<usize>> {
    let mut c = connect(addr).await?;
    let mut back = Vec::new();
    for i in 0..KEYS {
        let r = c
            .get(GetRequest {
                key: key(i).into(),
                consistency: consistency as i32,
            })
            .await?
            .into_inner();
        if r.found || !r.values.is_empty() {
            back.push(i);
        }
    }
    Ok(back)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keys_deleted_while_a_replica_was_down_past_the_grace_never_come_back() -> anyhow::Result<()>
{
    let began = Instant::now();
    let dir = tempfile::tempdir()?;
    // No hints, no background anti-entropy: only the GC's own push reaches n2.
    let envs = [
        ("DISTKV_REPLICATION__REQUEST_TIMEOUT", "1s"),
        ("DISTKV_REPLICATION__HINTED_HANDOFF", "false"),
        ("DISTKV_ANTIENTROPY__INTERVAL", "1h"),
        ("DISTKV_GC__GRACE", "2s"),
        ("DISTKV_GC__INTERVAL", "1s"),
    ];
    let mut nodes = tokio::task::block_in_place(|| start_loopback_cluster(dir.path(), &envs))?;
    // (The first start in a test process also brings the binaries up to date.)
    println!("cluster ready in {:?}", began.elapsed());
    let addr = nodes[0].addr.clone();
    let mut c = connect(&addr).await?;
    for batch in (0..KEYS).collect::<Vec<_>>().chunks(250) {
        let entries = batch
            .iter()
            .map(|&i| KeyValuePair {
                key: key(i).into(),
                value: b"value".to_vec().into(),
                ..KeyValuePair::default()
            })
            .collect();
        c.batch_put(BatchPutRequest {
            entries,
            consistency: Consistency::Quorum as i32,
        })
        .await?;
    }

    // n2 stops; the keys are deleted at QUORUM (with their contexts, so that the
    // tombstones replace the values).
    tokio::task::block_in_place(|| nodes[2].signal("KILL"))?;
    let wrote = began.elapsed();
    // 32 deletes in flight: the replicas' WALs commit them in groups.
    let deletes = futures::stream::iter(0..KEYS).map(|i| {
        let mut c = c.clone();
        async move {
            let read = c
                .get(GetRequest {
                    key: key(i).into(),
                    consistency: Consistency::Quorum as i32,
                })
                .await?
                .into_inner();
            c.delete(DeleteRequest {
                key: key(i).into(),
                context: read.context,
                consistency: Consistency::Quorum as i32,
            })
            .await?;
            anyhow::Ok(())
        }
    });
    deletes
        .buffer_unordered(32)
        .collect::<Vec<_>>()
        .await
        .into_iter()
        .collect::<anyhow::Result<Vec<()>>>()?;
    let deleted_at = Instant::now();
    println!(
        "cluster up and {KEYS} keys written in {wrote:?}, deleted at QUORUM in {:?}",
        began.elapsed() - wrote
    );

    // Past the grace, n0 and n1 hold every tombstone and wait for n2.
    for node in &nodes[..2] {
        wait_for(Duration::from_secs(20), "n0/n1 wait for n2", || {
            let s = status(node)?;
            let gc = &s["gc"];
            Ok(gc["waiting"].as_u64() == Some(KEYS as u64)
                && gc["tombstones"].as_u64() == Some(KEYS as u64)
                && gc["waiting_reasons"]
                    .as_array()
                    .is_some_and(|r| r.iter().any(|r| r.as_str().unwrap_or("").contains("n2"))))
        })
        .await?;
    }
    assert!(
        deleted_at.elapsed() > Duration::from_secs(2),
        "past the grace"
    );
    println!(
        "n0 and n1 wait for n2 after {:?}: {}",
        began.elapsed(),
        status(&nodes[0])?["gc"]
    );

    // n2 comes back with the old values; GC pushes it the tombstones, then purges.
    tokio::task::block_in_place(|| {
        nodes[2].restart()?;
        wait_cluster_ready(&nodes, Duration::from_secs(30))
    })?;
    let back_at = Instant::now();
    for node in &nodes {
        wait_for(
            Duration::from_secs(30),
            "tombstone count falls to 0",
            || {
                let s = status(node)?;
                let gc = &s["gc"];
                // n2 counts 0 tombstones before it receives them: wait for the purges too.
                Ok(gc["tombstones"].as_u64() == Some(0)
                    && gc["waiting"].as_u64() == Some(0)
                    && gc["purged"].as_u64().unwrap_or(0) >= KEYS as u64)
            },
        )
        .await?;
    }
    println!(
        "every node purged its tombstones {:?} after n2 came back",
        back_at.elapsed()
    );
    for node in &nodes {
        let s = status(node)?;
        println!("{}: {}", s["node_id"], s["gc"]);
    }
    let text = tokio::task::block_in_place(|| nodes[0].client(&["status"]));
    assert!(
        stdout(&text).contains("gc        0 tombstones held"),
        "{}",
        stdout(&text)
    );

    for node in &nodes {
        let back = found(&node.addr, Consistency::One).await?;
        assert!(
            back.is_empty(),
            "{} keys came back at ONE through {}, e.g. {:?}",
            back.len(),
            node.addr,
            &back[..back.len().min(5)]
        );
    }
    let back = found(&addr, Consistency::Quorum).await?;
    assert!(back.is_empty(), "{} keys came back at QUORUM", back.len());
    println!("test took {:?}", began.elapsed());
    Ok(())
}
