//! Anti-entropy with real processes: a replica that lost its data directory gets every
//! key back from `distkv-client repair --wait` (issue 13).

use std::time::{Duration, Instant};

use distkv_proto::v1::{BatchPutRequest, Consistency, GetRequest, KeyValuePair};
use distkv_tests::{connect, start_loopback_cluster, stderr, stdout, wait_cluster_ready};

/// Keys written: 2,000, or `DISTKV_AE_TEST_KEYS` (the 10,000 took 36 s to
/// repair in a debug build on two shared cores, too long for every test run).
fn keys() -> usize {
    std::env::var("DISTKV_AE_TEST_KEYS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(2_000)
}

fn key(i: usize) -> String {
    format!("ae-key-{i:05}")
}

fn value(i: usize) -> String {
    format!("value-{i}")
}

/// Writes every key at QUORUM through `addr`, in batches of 200.
async fn write_all(addr: &str) -> anyhow::Result<()> {
    let mut c = connect(addr).await?;
    let all: Vec<usize> = (0..keys()).collect();
    for batch in all.chunks(200) {
        let entries = batch
            .iter()
            .map(|&i| KeyValuePair {
                key: key(i).into_bytes().into(),
                value: value(i).into_bytes().into(),
                ..KeyValuePair::default()
            })
            .collect();
        c.batch_put(BatchPutRequest {
            entries,
            consistency: Consistency::Quorum as i32,
        })
        .await?;
    }
    Ok(())
}

/// Reads every key at ONE through `addr`; returns the keys missing or wrong. A read
/// that fails (a coordinator still trying a stopped peer) is retried, bounded.
async fn missing_at_one(addr: &str) -> anyhow::Result<Vec<String>> {
    let mut c = connect(addr).await?;
    let mut missing = Vec::new();
    for i in 0..keys() {
        let mut tries = 0;
        let values = loop {
            let get = GetRequest {
                key: key(i).into_bytes().into(),
                consistency: Consistency::One as i32,
            };
            match c.get(get).await {
                Ok(r) => break r.into_inner().values,
                Err(e) if tries < 20 => {
                    tries += 1;
                    if tries == 20 {
                        anyhow::bail!("reading {} at ONE keeps failing: {e}", key(i));
                    }
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                Err(e) => return Err(e.into()),
            }
        };
        if values.len() != 1 || values[0][..] != *value(i).as_bytes() {
            missing.push(key(i));
        }
    }
    Ok(missing)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wiped_replica_gets_every_key_back_from_repair() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    // No hints and no background passes (interval of an hour): whatever n2 holds after
    // its restart comes from `repair`.
    let envs = [
        ("DISTKV_REPLICATION__REQUEST_TIMEOUT", "2s"),
        ("DISTKV_REPLICATION__HINTED_HANDOFF", "false"),
        ("DISTKV_ANTIENTROPY__INTERVAL", "1h"),
    ];
    let began = Instant::now();
    let mut nodes = tokio::task::block_in_place(|| start_loopback_cluster(dir.path(), &envs))?;
    println!("cluster ready in {:?}", began.elapsed());
    let keys = keys();
    let began = Instant::now();
    write_all(&nodes[0].addr).await?;
    println!("wrote {keys} keys at QUORUM in {:?}", began.elapsed());

    // n2 loses its disk and comes back empty with the same id.
    tokio::task::block_in_place(|| nodes[2].signal("KILL"))?;
    std::fs::remove_dir_all(&nodes[2].data_dir)?;
    let began = Instant::now();
    tokio::task::block_in_place(|| {
        nodes[2].restart()?;
        wait_cluster_ready(&nodes, Duration::from_secs(30))
    })?;
    println!(
        "n2 restarted empty and reaching its peers in {:?}",
        began.elapsed()
    );

    let began = Instant::now();
    let out = tokio::task::block_in_place(|| {
        nodes[2].client(&["--timeout", "5m", "--json", "repair", "--wait"])
    });
    let took = began.elapsed();
    anyhow::ensure!(
        out.status.success(),
        "repair failed ({}): {}{}\nlog:\n{}",
        out.status,
        stdout(&out),
        stderr(&out),
        nodes[2].log_text()
    );
    let report: serde_json::Value = serde_json::from_str(stdout(&out).trim())?;
    println!("distkv-client repair --wait on the wiped n2 took {took:?}: {report}");
    let n = |field: &str| report[field].as_u64().unwrap_or(0);
    assert_eq!(report["done"], true, "{report}");
    assert_eq!(n("failures"), 0, "{report}");
    assert!(
        n("keys_repaired") >= keys as u64,
        "every key pulled: {report}"
    );
    assert_eq!(
        n("ranges"),
        n("ranges_clean"),
        "every range clean: {report}"
    );

    // A second pass finds nothing more to do.
    let began = Instant::now();
    let again = tokio::task::block_in_place(|| {
        nodes[2].client(&["--timeout", "5m", "--json", "repair", "--wait"])
    });
    let again: serde_json::Value = serde_json::from_str(stdout(&again).trim())?;
    println!("a second pass took {:?}: {again}", began.elapsed());
    assert_eq!(again["keys_repaired"], 0, "{again}");
    assert_eq!(again["keys_differing"], 0, "{again}");

    // Status shows every range with its last clean pass.
    let status = tokio::task::block_in_place(|| nodes[2].client(&["--json", "status"]));
    let status: serde_json::Value = serde_json::from_str(stdout(&status).trim())?;
    let ranges = status["antientropy_ranges"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    assert_eq!(ranges.len() as u64, n("ranges"), "{status}");
    assert!(
        ranges.iter().all(|r| r["last_clean_ms"].as_u64().is_some()),
        "{status}"
    );
    let text = tokio::task::block_in_place(|| nodes[2].client(&["status"]));
    assert!(
        stdout(&text).contains("0 never found clean"),
        "{}",
        stdout(&text)
    );

    // Only n2 left: every key at ONE comes from its own disk.
    tokio::task::block_in_place(|| -> anyhow::Result<()> {
        nodes[0].signal("KILL")?;
        nodes[1].signal("KILL")?;
        Ok(())
    })?;
    let began = Instant::now();
    let missing = missing_at_one(&nodes[2].addr).await?;
    println!(
        "read {keys} keys at ONE from n2 alone in {:?}",
        began.elapsed()
    );
    assert!(
        missing.is_empty(),
        "{} of {keys} keys missing on the repaired n2 at ONE, e.g. {:?}",
        missing.len(),
        &missing[..missing.len().min(5)]
    );
    Ok(())
}
