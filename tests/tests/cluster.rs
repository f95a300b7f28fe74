//! A real three-node cluster of `distkv-server` processes on loopback ports (N=3, R=2,
//! W=2): a node is killed with SIGKILL while the cluster keeps serving, comes back, and
//! serves every acknowledged write on its own.

use std::collections::BTreeMap;
use std::time::Duration;

use distkv_proto::v1::{Consistency, GetRequest, PutRequest};
use distkv_tests::{
    connect, hints_pending, run_client, start_loopback_cluster, stderr, wait_for_no_hints,
};

/// What the cluster acknowledged: the latest acknowledged value of each key.
type History = BTreeMap<String, String>;

/// Writes `value_prefix-i` to `key-i` for every i in `keys`, each a read followed by a
/// write with that read's context (so the new value replaces the old), from 8 concurrent
/// clients spread over `addrs`. Returns what was acknowledged.
async fn write_all(
    addrs: &[String],
    keys: Vec<usize>,
    value_prefix: &str,
    level: Consistency,
) -> anyhow::Result<History> {
    let mut tasks = Vec::new();
    for (t, chunk) in keys.chunks(keys.len().div_ceil(8)).enumerate() {
        let addr = addrs[t % addrs.len()].clone();
        let chunk = chunk.to_vec();
        let prefix = value_prefix.to_string();
        tasks.push(tokio::spawn(async move {
            let mut c = connect(&addr).await?;
            let mut acked = History::new();
            for i in chunk {
                let key = format!("key-{i:04}");
                let value = format!("{prefix}-{i}");
                let get = GetRequest {
                    key: key.clone().into_bytes().into(),
                    consistency: level as i32,
                };
                let ctx = c.get(get).await?.into_inner().context;
                c.put(PutRequest {
                    key: key.clone().into_bytes().into(),
                    value: value.clone().into_bytes().into(),
                    context: ctx,
                    consistency: level as i32,
                })
                .await?;
                acked.insert(key, value);
            }
            Ok::<_, anyhow::Error>(acked)
        }));
    }
    let mut history = History::new();
    for t in tasks {
        history.extend(t.await??);
    }
    Ok(history)
}

/// Reads every key of `history` at `level` through `addr` (8 concurrent clients) and
/// checks each returns exactly its last acknowledged value.
async fn check(
    addr: &str,
    history: &History,
    level: Consistency,
    when: &str,
) -> anyhow::Result<()> {
    let entries: Vec<(String, String)> = history
        .iter()
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    let mut tasks = Vec::new();
    for chunk in entries.chunks(entries.len().div_ceil(8)) {
        let chunk = chunk.to_vec();
        let addr = addr.to_string();
        let when = when.to_string();
        tasks.push(tokio::spawn(async move {
            let mut c = connect(&addr).await?;
            for (key, expected) in chunk {
                let get = GetRequest {
                    key: key.clone().into_bytes().into(),
                    consistency: level as i32,
                };
                let r = c.get(get).await?.into_inner();
                let values: Vec<String> = r
                    .values
                    .iter()
                    .map(|v| String::from_utf8_lossy(v).into_owned())
                    .collect();
                anyhow::ensure!(
                    values == vec![expected.clone()],
                    "{when}: {key} should be {expected:?}, read {values:?}"
                );
            }
            Ok::<_, anyhow::Error>(())
        }));
    }
    for t in tasks {
        t.await??;
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_node_comes_back_with_every_acknowledged_write() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let mut nodes = tokio::task::block_in_place(|| {
        start_loopback_cluster(dir.path(), &[("DISTKV_REPLICATION__REQUEST_TIMEOUT", "2s")])
    })?;
    let addrs: Vec<String> = nodes.iter().map(|n| n.addr.clone()).collect();

    // 2,000 keys at QUORUM, spread over the three coordinators.
    let mut history = write_all(&addrs, (0..2000).collect(), "v1", Consistency::Quorum).await?;
    check(&addrs[1], &history, Consistency::Quorum, "before the kill").await?;

    // Kill n2. Every key is still readable at QUORUM through a survivor.
    tokio::task::block_in_place(|| nodes[2].signal("KILL"))?;
    check(&addrs[0], &history, Consistency::Quorum, "with n2 down").await?;

    // 500 new keys and 200 overwrites while n2 is down, through the survivors.
    let survivors = &addrs[..2];
    history.extend(write_all(survivors, (2000..2500).collect(), "v1", Consistency::Quorum).await?);
    history.extend(
        write_all(
            survivors,
            (0..2000).step_by(10).collect(),
            "v2",
            Consistency::Quorum,
        )
        .await?,
    );
    check(
        &addrs[0],
        &history,
        Consistency::Quorum,
        "after the outage writes",
    )
    .await?;
    // The survivors hold a hint for n2 of each of the 700 writes (stored just after the
    // client was answered, so wait for the last ones).
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        let held = hints_pending(&addrs[0]).await? + hints_pending(&addrs[1]).await?;
        if held >= 700 {
            break;
        }
        anyhow::ensure!(
            std::time::Instant::now() < deadline,
            "the survivors hold only {held} hints for n2"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    // n2 comes back; the survivors hand it their hints.
    tokio::task::block_in_place(|| nodes[2].restart())?;
    wait_for_no_hints(&addrs[..2], Duration::from_secs(60)).await?;

    // Stop the other two; n2 alone serves all 2,500 keys at ONE, none stale.
    for n in nodes.iter_mut().take(2) {
        let status = tokio::task::block_in_place(|| n.signal("TERM"))?;
        assert!(status.success(), "graceful stop exits 0");
    }
    assert_eq!(history.len(), 2500);
    check(&addrs[2], &history, Consistency::One, "n2 alone").await?;
    Ok(())
}

/// The liveness `node` reports for the member at `addr`.
async fn liveness_seen_by(node: &str, addr: &str) -> anyhow::Result<String> {
    let status = connect(node)
        .await?
        .status(distkv_proto::v1::StatusRequest {})
        .await?
        .into_inner();
    status
        .members
        .into_iter()
        .find(|m| m.address == addr)
        .map(|m| m.liveness)
        .ok_or_else(|| anyhow::anyhow!("{node} does not list a member at {addr}"))
}

/// Waits (bounded) until `node` reports the member at `addr` as `want`.
async fn wait_liveness(node: &str, addr: &str, want: &str, within: Duration) -> anyhow::Result<()> {
    let deadline = std::time::Instant::now() + within;
    loop {
        let seen = liveness_seen_by(node, addr).await?;
        if seen == want {
            return Ok(());
        }
        anyhow::ensure!(
            std::time::Instant::now() < deadline,
            "{node} still sees {addr} as {seen} after {within:?}, expected {want}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_node_is_seen_dead_by_the_others_and_alive_after_a_restart() -> anyhow::Result<()>
{
    let dir = tempfile::tempdir()?;
    let mut nodes = tokio::task::block_in_place(|| start_loopback_cluster(dir.path(), &[]))?;
    let addrs: Vec<String> = nodes.iter().map(|n| n.addr.clone()).collect();
    // Members are listed by their peer addresses.
    let peers: Vec<String> = nodes.iter().map(|n| n.peer_addr.clone()).collect();
    for a in &peers {
        wait_liveness(&addrs[0], a, "alive", Duration::from_secs(10)).await?;
    }
    tokio::task::block_in_place(|| nodes[2].signal("KILL"))?;
    wait_liveness(&addrs[0], &peers[2], "dead", Duration::from_secs(15)).await?;
    wait_liveness(&addrs[1], &peers[2], "dead", Duration::from_secs(15)).await?;
    assert_eq!(liveness_seen_by(&addrs[0], &peers[1]).await?, "alive");
    // A write that misses its quorum (ALL with a node down) is not confirmed but may
    // still land: exit code 5, unlike a refused request (4: nothing written).
    let missed = tokio::task::block_in_place(|| {
        run_client(
            &addrs[0],
            &["--consistency", "all", "put", "--blind", "k", "v"],
            None,
        )
    });
    assert_eq!(missed.status.code(), Some(5), "{}", stderr(&missed));
    assert!(
        stderr(&missed).contains("may still land")
            && stderr(&missed).contains("quorum not reached"),
        "{}",
        stderr(&missed)
    );
    let refused =
        tokio::task::block_in_place(|| run_client(&addrs[0], &["put", "--blind", "", "v"], None));
    assert_eq!(refused.status.code(), Some(4), "{}", stderr(&refused));
    tokio::task::block_in_place(|| nodes[2].restart())?;
    wait_liveness(&addrs[0], &peers[2], "alive", Duration::from_secs(15)).await?;
    wait_liveness(&addrs[1], &peers[2], "alive", Duration::from_secs(15)).await?;
    Ok(())
}

/// The largest value the node accepts (`limits.max_value_bytes`, here 4.5 MiB: over gRPC's
/// 4 MiB default) is written, read, overwritten and deleted at every level; 32
/// concurrent quorum reads of 1 MiB values (coalesced into peer calls) all succeed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_largest_accepted_value_is_served_at_every_level_in_a_cluster() -> anyhow::Result<()> {
    use distkv_proto::v1::DeleteRequest;
    let limit: usize = 4_718_592;
    let dir = tempfile::tempdir()?;
    let nodes = tokio::task::block_in_place(|| {
        start_loopback_cluster(
            dir.path(),
            &[("DISTKV_LIMITS__MAX_VALUE_BYTES", &limit.to_string())],
        )
    })?;
    let addrs: Vec<String> = nodes.iter().map(|n| n.addr.clone()).collect();
    let mut writer = connect(&addrs[0]).await?;
    let mut reader = connect(&addrs[1]).await?;
    let read = |c: &mut distkv_proto::v1::key_value_client::KeyValueClient<_>, key: &str, level| {
        let get = GetRequest {
            key: key.as_bytes().to_vec().into(),
            consistency: level as i32,
        };
        let mut c = c.clone();
        async move { c.get(get).await.map(|r| r.into_inner()) }
    };
    for level in [Consistency::One, Consistency::Quorum, Consistency::All] {
        let key = format!("max-{}", level as i32);
        for (round, byte) in [b'a', b'b'].into_iter().enumerate() {
            // Contexts come from every replica: one read at ONE right after a write at ONE
            // may miss it, and a write with that context would keep it as a sibling.
            let context = read(&mut reader, &key, Consistency::All).await?.context;
            writer
                .put(PutRequest {
                    key: key.clone().into_bytes().into(),
                    value: vec![byte; limit].into(),
                    context,
                    consistency: level as i32,
                })
                .await
                .map_err(|e| anyhow::anyhow!("put #{round} at {level:?}: {e}"))?;
            let got = read(&mut reader, &key, Consistency::All).await?;
            anyhow::ensure!(
                got.values.len() == 1 && got.values[0].len() == limit && got.values[0][0] == byte,
                "read after put #{round} at {level:?}: {} values",
                got.values.len()
            );
        }
        let context = read(&mut reader, &key, Consistency::All).await?.context;
        writer
            .delete(DeleteRequest {
                key: key.clone().into_bytes().into(),
                context,
                consistency: level as i32,
            })
            .await?;
        anyhow::ensure!(
            !read(&mut reader, &key, Consistency::All).await?.found,
            "{key} still found after the delete at {level:?}"
        );
    }
    let mib = vec![b'm'; 1 << 20];
    for i in 0..32 {
        writer
            .put(PutRequest {
                key: format!("mib-{i}").into_bytes().into(),
                value: mib.clone().into(),
                context: Default::default(),
                consistency: Consistency::All as i32,
            })
            .await?;
    }
    let reads: Vec<_> = (0..32)
        .map(|i| {
            let r = read(&mut reader, &format!("mib-{i}"), Consistency::Quorum);
            tokio::spawn(r)
        })
        .collect();
    for (i, r) in reads.into_iter().enumerate() {
        let got = r.await??;
        anyhow::ensure!(got.values == vec![mib.clone()], "mib-{i} read back wrong");
    }
    Ok(())
}
