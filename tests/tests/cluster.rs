//! A real three-node cluster of `distkv-server` processes on loopback ports (N=3, R=2,
//! W=2): a node is killed with SIGKILL while the cluster keeps serving, comes back, and
//! serves every acknowledged write on its own.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use distkv_proto::v1::key_value_client::KeyValueClient;
use distkv_proto::v1::{Consistency, GetRequest, PutRequest, StatusRequest};
use distkv_tests::{connect, free_port, Server};
use tonic::transport::Channel;

/// What the cluster acknowledged: the latest acknowledged value of each key.
type History = BTreeMap<String, String>;

fn start_cluster(dir: &std::path::Path) -> anyhow::Result<Vec<Server>> {
    let addrs: Vec<String> = (0..3)
        .map(|_| format!("127.0.0.1:{}", free_port()))
        .collect();
    let seeds = addrs
        .iter()
        .enumerate()
        .map(|(i, a)| format!("n{i}={a}"))
        .collect::<Vec<_>>()
        .join(",");
    addrs
        .iter()
        .enumerate()
        .map(|(i, addr)| {
            let id = format!("n{i}");
            let args = [
                "--node-id",
                id.as_str(),
                "--seed-nodes",
                seeds.as_str(),
                "--replicas",
                "3",
                "--read-quorum",
                "2",
                "--write-quorum",
                "2",
            ];
            Server::start_at(
                addr,
                &dir.join(&id),
                &args,
                &[("DISTKV_REPLICATION__REQUEST_TIMEOUT", "2s")],
            )
        })
        .collect()
}

async fn write(
    c: &mut KeyValueClient<Channel>,
    key: &str,
    value: &str,
    level: Consistency,
    history: &mut History,
) -> anyhow::Result<()> {
    // Read first and write with the context: the new value replaces the old one.
    let ctx = c
        .get(GetRequest {
            key: key.as_bytes().to_vec().into(),
            consistency: level as i32,
        })
        .await?
        .into_inner()
        .context;
    c.put(PutRequest {
        key: key.as_bytes().to_vec().into(),
        value: value.as_bytes().to_vec().into(),
        context: ctx,
        consistency: level as i32,
    })
    .await?;
    history.insert(key.to_string(), value.to_string());
    Ok(())
}

async fn check(
    c: &mut KeyValueClient<Channel>,
    history: &History,
    level: Consistency,
    when: &str,
) -> anyhow::Result<()> {
    for (key, expected) in history {
        let r = c
            .get(GetRequest {
                key: key.as_bytes().to_vec().into(),
                consistency: level as i32,
            })
            .await?
            .into_inner();
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
    Ok(())
}

async fn hints_pending(addr: &str) -> anyhow::Result<u64> {
    let s = connect(addr)
        .await?
        .status(StatusRequest {})
        .await?
        .into_inner();
    Ok(s.storage_stats
        .iter()
        .find(|s| s.name == "hints.pending")
        .map(|s| s.value.parse())
        .transpose()?
        .unwrap_or(0))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_node_comes_back_with_every_acknowledged_write() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let mut nodes = tokio::task::block_in_place(|| start_cluster(dir.path()))?;
    let mut history = History::new();

    // 2,000 keys at QUORUM, spread over the three coordinators.
    let mut clients = Vec::new();
    for n in &nodes {
        clients.push(connect(&n.addr).await?);
    }
    for i in 0..2000 {
        write(
            &mut clients[i % 3],
            &format!("key-{i:04}"),
            &format!("v1-{i}"),
            Consistency::Quorum,
            &mut history,
        )
        .await?;
    }
    check(
        &mut clients[1],
        &history,
        Consistency::Quorum,
        "before the kill",
    )
    .await?;

    // Kill n2. Every key is still readable at QUORUM through a survivor.
    tokio::task::block_in_place(|| nodes[2].signal("KILL"))?;
    let mut survivor = connect(&nodes[0].addr).await?;
    check(&mut survivor, &history, Consistency::Quorum, "with n2 down").await?;

    // 500 new keys and 200 overwrites while n2 is down.
    for i in 2000..2500 {
        write(
            &mut clients[i % 2],
            &format!("key-{i:04}"),
            &format!("v1-{i}"),
            Consistency::Quorum,
            &mut history,
        )
        .await?;
    }
    for i in (0..2000).step_by(10) {
        write(
            &mut clients[i % 2],
            &format!("key-{i:04}"),
            &format!("v2-{i}"),
            Consistency::Quorum,
            &mut history,
        )
        .await?;
    }
    check(
        &mut survivor,
        &history,
        Consistency::Quorum,
        "after the outage writes",
    )
    .await?;
    let held = hints_pending(&nodes[0].addr).await? + hints_pending(&nodes[1].addr).await?;
    assert!(held >= 700, "the survivors hold hints for n2 ({held})");

    // n2 comes back; the survivors hand it their hints.
    tokio::task::block_in_place(|| nodes[2].restart())?;
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let pending = hints_pending(&nodes[0].addr).await? + hints_pending(&nodes[1].addr).await?;
        if pending == 0 {
            break;
        }
        anyhow::ensure!(
            Instant::now() < deadline,
            "{pending} hints still pending 60 s after n2 came back"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // Stop the other two; n2 alone serves all 2,500 keys at ONE, none stale.
    for n in nodes.iter_mut().take(2) {
        let status = tokio::task::block_in_place(|| n.signal("TERM"))?;
        assert!(status.success(), "graceful stop exits 0");
    }
    let mut alone = connect(&nodes[2].addr).await?;
    assert_eq!(history.len(), 2500);
    check(&mut alone, &history, Consistency::One, "n2 alone").await?;
    Ok(())
}
