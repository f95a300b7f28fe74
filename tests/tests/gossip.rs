//! Gossip membership between real `distkv-server` processes on loopback ports: members
//! hear each other, a `kill -9` is detected and a restart seen, and the identity checks
//! (a second process with a live id, a node of another cluster, other replication
//! settings) refuse with a line naming both sides. The times are printed for the record
//! (`cargo test -p distkv-tests --test gossip -- --nocapture`).

use std::time::{Duration, Instant};

use distkv_proto::v1::StatusRequest;
use distkv_tests::{
    connect, free_port, run_client, server_output, start_loopback_cluster, stderr, Server,
};

/// Every member `node` lists, as (address, liveness, last heard in ms).
async fn members_seen_by(node: &str) -> anyhow::Result<Vec<(String, String, Option<u64>)>> {
    let status = connect(node)
        .await?
        .status(StatusRequest {})
        .await?
        .into_inner();
    Ok(status
        .members
        .into_iter()
        .map(|m| (m.address, m.liveness, m.last_heard_ms))
        .collect())
}

/// Waits (bounded by `within`) until `check` holds for what `node` reports; returns how
/// long it took.
async fn wait_until(
    node: &str,
    within: Duration,
    what: &str,
    check: impl Fn(&[(String, String, Option<u64>)]) -> bool,
) -> anyhow::Result<Duration> {
    let start = Instant::now();
    loop {
        let seen = members_seen_by(node).await?;
        if check(&seen) {
            return Ok(start.elapsed());
        }
        anyhow::ensure!(
            start.elapsed() < within,
            "{node} does not see {what} after {within:?}: it reports {seen:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Heard from within the last 3 s: gossip heartbeats arrive every second.
fn heard(entry: &(String, String, Option<u64>)) -> bool {
    entry.1 == "alive" && entry.2.is_some_and(|ms| ms <= 3000)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn members_hear_each_other_and_a_killed_member_is_dead_then_back() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let first_start = Instant::now();
    let mut nodes = tokio::task::block_in_place(|| start_loopback_cluster(dir.path(), &[]))?;
    // From the moment every process serves (starting debug builds one by one on a loaded
    // machine can take seconds of its own).
    let started = Instant::now();
    let addrs: Vec<String> = nodes.iter().map(|n| n.addr.clone()).collect();
    let peers: Vec<String> = nodes.iter().map(|n| n.peer_addr.clone()).collect();
    for a in &addrs {
        wait_until(a, Duration::from_secs(10), "3 members heard", |seen| {
            seen.len() == 3 && seen.iter().all(heard)
        })
        .await?;
    }
    let all_heard = started.elapsed();
    assert!(
        all_heard <= Duration::from_secs(10),
        "3 members heard by all after {all_heard:?}"
    );
    println!(
        "gossip: every node heard all 3 members {all_heard:?} after all served ({:?} after the first start)",
        first_start.elapsed()
    );

    tokio::task::block_in_place(|| nodes[2].signal("KILL"))?;
    let victim = peers[2].clone();
    let mut detection = Duration::ZERO;
    for a in &addrs[..2] {
        let took = wait_until(
            a,
            Duration::from_secs(15),
            "the killed member dead",
            |seen| seen.iter().any(|m| m.0 == victim && m.1 == "dead"),
        )
        .await?;
        detection = detection.max(took);
    }
    println!("gossip: kill -9 seen as dead by both others after {detection:?}");
    for a in &addrs[..2] {
        let seen = members_seen_by(a).await?;
        let others: Vec<_> = seen.iter().filter(|m| m.0 != victim).collect();
        assert!(others.iter().all(|m| heard(m)), "{a}: {seen:?}");
    }

    // A restart with the same id and address is a new generation, not a duplicate.
    tokio::task::block_in_place(|| nodes[2].restart())?;
    let mut back = Duration::ZERO;
    for a in &addrs[..2] {
        let took = wait_until(a, Duration::from_secs(15), "the restarted member", |seen| {
            seen.iter().any(|m| m.0 == victim && heard(m))
        })
        .await?;
        back = back.max(took);
    }
    println!("gossip: the restarted member alive again on both others after {back:?}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_process_with_a_live_node_id_is_refused_at_start_up() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let nodes = tokio::task::block_in_place(|| start_loopback_cluster(dir.path(), &[]))?;
    // The check asks the seeds what gossip knows of the id: wait until n1 heard n0.
    let n0 = nodes[0].peer_addr.clone();
    wait_until(
        &nodes[1].addr,
        Duration::from_secs(10),
        "n0 heard",
        |seen| seen.iter().any(|m| m.0 == n0 && heard(m)),
    )
    .await?;
    let address = format!("127.0.0.1:{}", free_port());
    let peer = format!("127.0.0.1:{}", free_port());
    let data = dir.path().join("impostor");
    let seeds = format!("n1={}", nodes[1].peer_addr);
    let out = tokio::task::block_in_place(|| {
        server_output(
            &[
                "--node-id",
                "n0",
                "--address",
                &address,
                "--peer-address",
                &peer,
                "--admin-address",
                "",
                "--data-dir",
                data.to_str().expect("utf-8 temp path"),
                "--seed-nodes",
                &seeds,
                "--replicas",
                "3",
            ],
            &[],
            dir.path(),
        )
    });
    let err = stderr(&out);
    assert!(!out.status.success(), "the second n0 must not start: {err}");
    assert!(
        err.contains("node id \"n0\" is in use by a live process")
            && err.contains(&nodes[0].peer_addr)
            && err.contains("--node-id"),
        "{err}"
    );
    // The first n0 serves on.
    let put = tokio::task::block_in_place(|| {
        run_client(&nodes[0].addr, &["put", "--blind", "k", "v"], None)
    });
    assert!(put.status.success(), "{}", stderr(&put));
    Ok(())
}

/// Waits (bounded) until `server`'s log holds `needle`.
fn wait_for_log(server: &Server, needle: &str, within: Duration) -> anyhow::Result<()> {
    let start = Instant::now();
    while !server.log_text().contains(needle) {
        anyhow::ensure!(
            start.elapsed() < within,
            "no line with {needle:?} in the log of {} after {within:?}; log:\n{}",
            server.addr,
            server.log_text()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    Ok(())
}

#[test]
fn nodes_of_another_cluster_or_with_other_replication_settings_are_refused_on_both_sides(
) -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let blue = Server::start(
        &dir.path().join("blue"),
        &[
            "--node-id",
            "blue0",
            "--cluster-name",
            "blue",
            "--replicas",
            "3",
        ],
    )?;
    let seed = format!("blue0={}", blue.peer_addr);
    let green = Server::start(
        &dir.path().join("green"),
        &[
            "--node-id",
            "green0",
            "--cluster-name",
            "green",
            "--seed-nodes",
            &seed,
        ],
    )?;
    let within = Duration::from_secs(15);
    // Both lines name both cluster names.
    wait_for_log(
        &blue,
        &format!(
            "refused gossip from {}: its cluster name is \"green\", ours is \"blue\"",
            green.peer_addr
        ),
        within,
    )?;
    wait_for_log(&green, "(cluster \"blue\") refused our gossip", within)?;

    let other = Server::start(
        &dir.path().join("other"),
        &[
            "--node-id",
            "blue1",
            "--cluster-name",
            "blue",
            "--replicas",
            "2",
            "--seed-nodes",
            &seed,
        ],
    )?;
    wait_for_log(&blue, "refused member \"blue1\"", within)?;
    wait_for_log(&other, "refused member \"blue0\"", within)?;
    for (server, theirs, ours) in [(&blue, "N=2", "N=3"), (&other, "N=3", "N=2")] {
        let log = server.log_text();
        let line = log
            .lines()
            .find(|l| l.contains("refused member"))
            .expect("waited for it above");
        assert!(
            line.contains(&format!("its replication settings are {theirs}"))
                && line.contains(&format!("ours are {ours}")),
            "{line}"
        );
    }
    Ok(())
}

/// The state (`normal`, `left`, ...) `node` gives the member with id `id`.
async fn state_seen_by(node: &str, id: &str) -> anyhow::Result<Option<String>> {
    let status = connect(node)
        .await?
        .status(StatusRequest {})
        .await?
        .into_inner();
    Ok(status
        .members
        .into_iter()
        .find(|m| m.node_id == id)
        .map(|m| m.state))
}

/// Waits (bounded by `within`) until every node in `on` gives member `id` the state
/// `want`; returns how long it took.
async fn wait_for_state(
    on: &[&str],
    id: &str,
    want: &str,
    within: Duration,
) -> anyhow::Result<Duration> {
    let start = Instant::now();
    for node in on {
        while state_seen_by(node, id).await?.as_deref() != Some(want) {
            anyhow::ensure!(
                start.elapsed() < within,
                "{node} does not see {id} as {want} after {within:?}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    Ok(start.elapsed())
}

/// Starts node `n3` (N=3, R=2, W=2) in `dir/n3` with the seed list `seeds_of` gives for
/// its own peer address.
fn start_n3(
    dir: &std::path::Path,
    seeds_of: impl FnOnce(&str) -> String,
) -> anyhow::Result<Server> {
    let address = format!("127.0.0.1:{}", free_port());
    let peer = format!("127.0.0.1:{}", free_port());
    let seeds = seeds_of(&peer);
    let args = [
        "--node-id",
        "n3",
        "--seed-nodes",
        &seeds,
        "--replicas",
        "3",
        "--read-quorum",
        "2",
        "--write-quorum",
        "2",
    ];
    tokio::task::block_in_place(|| {
        Server::start_member(&address, &peer, &dir.join("n3"), &args, &[])
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_node_is_removed_everywhere_and_the_removal_survives_restarts() -> anyhow::Result<()>
{
    let dir = tempfile::tempdir()?;
    let mut nodes = tokio::task::block_in_place(|| start_loopback_cluster(dir.path(), &[]))?;
    let addrs: Vec<String> = nodes.iter().map(|n| n.addr.clone()).collect();
    let victim = nodes[2].peer_addr.clone();

    // A live node is not removed.
    let alive = tokio::task::block_in_place(|| run_client(&addrs[0], &["remove-node", "n1"], None));
    assert!(!alive.status.success());
    assert!(stderr(&alive).contains("is alive"), "{}", stderr(&alive));

    tokio::task::block_in_place(|| nodes[2].signal("KILL"))?;
    wait_until(&addrs[0], Duration::from_secs(15), "n2 dead", |seen| {
        seen.iter().any(|m| m.0 == victim && m.1 == "dead")
    })
    .await?;
    let removed =
        tokio::task::block_in_place(|| run_client(&addrs[0], &["remove-node", "n2"], None));
    assert!(removed.status.success(), "{}", stderr(&removed));
    assert!(
        distkv_tests::stdout(&removed).contains("layout version 2"),
        "{}",
        distkv_tests::stdout(&removed)
    );
    // n1 learns it by gossip and pulls the new layout.
    let took = wait_for_state(&[&addrs[1]], "n2", "left", Duration::from_secs(10)).await?;
    println!("gossip: a removal reached the other node in {took:?}");
    // Two members serve QUORUM (W=2 of the two remaining replicas).
    let put = tokio::task::block_in_place(|| {
        run_client(
            &addrs[1],
            &["--consistency", "quorum", "put", "k", "v"],
            None,
        )
    });
    assert!(put.status.success(), "{}", stderr(&put));
    let get = tokio::task::block_in_place(|| {
        run_client(&addrs[0], &["--consistency", "quorum", "get", "k"], None)
    });
    assert_eq!(distkv_tests::stdout(&get).trim(), "v", "{}", stderr(&get));

    // The removal is saved: n0 restarted still holds it.
    tokio::task::block_in_place(|| nodes[0].signal("TERM"))?;
    tokio::task::block_in_place(|| nodes[0].restart())?;
    assert_eq!(
        state_seen_by(&addrs[0], "n2").await?.as_deref(),
        Some("left")
    );

    // The removed node, started again on its old data, learns it was removed, saves it,
    // and refuses to start the next time.
    tokio::task::block_in_place(|| nodes[2].restart())?;
    tokio::task::block_in_place(|| {
        let start = Instant::now();
        while !nodes[2]
            .log_text()
            .contains("this node was removed from the cluster")
        {
            anyhow::ensure!(
                start.elapsed() < Duration::from_secs(15),
                "the removed node did not learn it; log:\n{}",
                nodes[2].log_text()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        anyhow::Ok(())
    })?;
    tokio::task::block_in_place(|| nodes[2].signal("TERM"))?;
    let again = tokio::task::block_in_place(|| nodes[2].restart());
    let err = format!("{:#}", again.expect_err("a removed node must not start"));
    assert!(
        err.contains("was removed from the cluster") && err.contains("wipe"),
        "{err}"
    );
    Ok(())
}

/// Writes `key-{i}` at QUORUM through `addr` until `stop` or `max` keys, returning the
/// acknowledged ones (bounded in count and time).
async fn write_until(
    addr: String,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    max: usize,
) -> anyhow::Result<Vec<String>> {
    use distkv_proto::v1::{Consistency, PutRequest};
    let mut client = connect(&addr).await?;
    let mut acked = Vec::new();
    let started = Instant::now();
    for i in 0..max {
        if stop.load(std::sync::atomic::Ordering::Relaxed)
            || started.elapsed() > Duration::from_secs(60)
        {
            break;
        }
        let key = format!("key-{i}");
        let put = client
            .put(PutRequest {
                key: key.clone().into_bytes().into(),
                value: format!("value-{i}").into_bytes().into(),
                context: Default::default(),
                consistency: Consistency::Quorum as i32,
            })
            .await;
        if put.is_ok() {
            acked.push(key);
        }
    }
    Ok(acked)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_node_joins_under_load_streams_its_ranges_and_serves_them() -> anyhow::Result<()> {
    use distkv_proto::v1::{Consistency, GetRequest};
    let dir = tempfile::tempdir()?;
    let mut nodes = tokio::task::block_in_place(|| start_loopback_cluster(dir.path(), &[]))?;
    // Keys written before the join, then a write load during it.
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let before = write_until(nodes[1].addr.clone(), stop.clone(), 300).await?;
    assert_eq!(before.len(), 300);
    let load = tokio::spawn(write_until(nodes[2].addr.clone(), stop.clone(), 100_000));

    // Started as a user would: every address it knows as seeds, its own included.
    let started = Instant::now();
    let newcomer = start_n3(dir.path(), |own| {
        let mut seeds: Vec<String> = nodes
            .iter()
            .enumerate()
            .map(|(i, n)| format!("n{i}={}", n.peer_addr))
            .collect();
        seeds.push(format!("n3={own}"));
        seeds.join(",")
    })?;
    // It joins by itself: normal on every node.
    let everywhere: Vec<&str> = nodes
        .iter()
        .map(|n| n.addr.as_str())
        .chain([newcomer.addr.as_str()])
        .collect();
    if let Err(e) = wait_for_state(&everywhere, "n3", "normal", Duration::from_secs(60)).await {
        anyhow::bail!("{e}; n3's log:\n{}", newcomer.log_text());
    }
    println!(
        "gossip: a 4th node joined (normal everywhere) {:?} after its start",
        started.elapsed()
    );
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let during = load.await??;
    println!("gossip: {} keys acknowledged during the join", during.len());
    assert!(
        newcomer.log_text().contains("joined the cluster"),
        "{}",
        newcomer.log_text()
    );
    // `status` on the joined node shows its stream, finished.
    let out =
        tokio::task::block_in_place(|| run_client(&newcomer.addr, &["--json", "status"], None));
    assert!(out.status.success(), "{}", stderr(&out));
    let doc: serde_json::Value = serde_json::from_slice(&out.stdout)?;
    let stream = &doc["rebalance"];
    assert_eq!(stream["kind"], "join", "{doc}");
    assert!(
        stream["ranges_total"].as_u64().unwrap_or(0) > 0
            && stream["ranges_done"] == stream["ranges_total"]
            && stream["records"].as_u64().unwrap_or(0) > 0,
        "{stream}"
    );
    let out = tokio::task::block_in_place(|| run_client(&newcomer.addr, &["status"], None));
    let text = distkv_tests::stdout(&out);
    assert!(
        text.contains("joining (pulling ranges)") && text.contains(": done,"),
        "{text}"
    );

    // With n0 down, QUORUM needs both other replicas of each key, n3 among them where it
    // now replicates: every acknowledged key must be there.
    tokio::task::block_in_place(|| nodes[0].signal("KILL"))?;
    let mut client = connect(&newcomer.addr).await?;
    let mut missing = Vec::new();
    for key in before.iter().chain(during.iter()) {
        let got = client
            .get(GetRequest {
                key: key.clone().into_bytes().into(),
                consistency: Consistency::Quorum as i32,
            })
            .await;
        match got {
            Ok(r) if !r.get_ref().values.is_empty() => {}
            Ok(_) => missing.push(format!("{key}: not found")),
            Err(e) => missing.push(format!("{key}: {}", e.message())),
        }
    }
    assert!(
        missing.is_empty(),
        "{} of {} acknowledged keys fail at QUORUM after the join: {:?}",
        missing.len(),
        before.len() + during.len(),
        &missing[..missing.len().min(5)]
    );
    // A QUORUM read is found if either replica has the key; n3 alone must hold the keys
    // written before it joined for the ranges it now replicates (about 3/4 of them with
    // 4 nodes and N=3): stop every other node and read those at ONE through it.
    for n in &mut nodes[1..] {
        tokio::task::block_in_place(|| n.signal("KILL"))?;
    }
    let mut held = 0;
    for key in &before {
        let got = client
            .get(GetRequest {
                key: key.clone().into_bytes().into(),
                consistency: Consistency::One as i32,
            })
            .await;
        if got.is_ok_and(|r| !r.get_ref().values.is_empty()) {
            held += 1;
        }
    }
    println!(
        "gossip: n3 alone holds {held} of the {} keys written before it joined",
        before.len()
    );
    assert!(
        held * 2 >= before.len(),
        "n3 holds only {held} of {} keys written before its join: its ranges were not streamed",
        before.len()
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_decommissioned_node_hands_its_ranges_over_leaves_and_stops() -> anyhow::Result<()> {
    use distkv_proto::v1::{Consistency, GetRequest};
    let dir = tempfile::tempdir()?;
    let mut nodes = tokio::task::block_in_place(|| start_loopback_cluster(dir.path(), &[]))?;
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let before = write_until(nodes[0].addr.clone(), stop.clone(), 300).await?;
    assert_eq!(before.len(), 300);
    // A fourth node joins (see the join test), so three remain after one leaves; one
    // seed is enough.
    let n3 = start_n3(dir.path(), |_| format!("n0={}", nodes[0].peer_addr))?;
    let all: Vec<&str> = nodes.iter().map(|n| n.addr.as_str()).collect();
    wait_for_state(&all, "n3", "normal", Duration::from_secs(60)).await?;

    // n1 leaves under a write load through n0; asked of n2 with its id (n2 forwards the
    // command to n1 over the peer transport).
    let load = tokio::spawn(write_until(nodes[0].addr.clone(), stop.clone(), 100_000));
    let started = Instant::now();
    let out = tokio::task::block_in_place(|| {
        run_client(&nodes[2].addr, &["decommission", "--node", "n1"], None)
    });
    assert!(out.status.success(), "{}", stderr(&out));
    println!(
        "gossip: decommission took {:?}: {}",
        started.elapsed(),
        distkv_tests::stdout(&out).trim()
    );
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let during = load.await??;
    // It stops on its own, with exit status 0.
    let status = tokio::task::block_in_place(|| nodes[1].wait_exit(Duration::from_secs(30)))?;
    assert!(status.success(), "{status}");
    for n in [&nodes[0].addr, &nodes[2].addr, &n3.addr] {
        assert_eq!(
            state_seen_by(n, "n1").await?.as_deref(),
            Some("left"),
            "on {n}"
        );
    }
    // Every acknowledged key at QUORUM.
    let mut client = connect(&n3.addr).await?;
    for key in before.iter().chain(during.iter()) {
        let got = client
            .get(GetRequest {
                key: key.clone().into_bytes().into(),
                consistency: Consistency::Quorum as i32,
            })
            .await?;
        assert!(!got.get_ref().values.is_empty(), "{key} lost");
    }
    // With N=3 on three nodes, n3 now replicates every key: alone, it must hold the keys
    // written before it joined (streamed at its join, and pushed by n1 for what n1 gave
    // up).
    for n in [0, 2] {
        tokio::task::block_in_place(|| nodes[n].signal("KILL"))?;
    }
    let mut held = 0;
    for key in &before {
        let got = client
            .get(GetRequest {
                key: key.clone().into_bytes().into(),
                consistency: Consistency::One as i32,
            })
            .await;
        if got.is_ok_and(|r| !r.get_ref().values.is_empty()) {
            held += 1;
        }
    }
    println!(
        "gossip: n3 alone holds {held} of {} keys after n1 left",
        before.len()
    );
    assert!(
        held * 100 >= before.len() * 95,
        "n3 alone holds {held} of {}: n1's ranges were not handed over",
        before.len()
    );
    Ok(())
}
