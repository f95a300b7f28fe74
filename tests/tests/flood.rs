//! A flood of silent connections against a real node (bounded: 300 connections, a few
//! seconds): the node keeps at most `limits.max_connections` open, a well-behaved client
//! is answered or refused promptly while the flood holds the limit, idle connections are
//! closed after `limits.idle_timeout`, and memory returns near its baseline.

use std::time::{Duration, Instant};

use distkv_proto::v1::{GetRequest, PutRequest};
use distkv_tests::{connect, Server};

fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|v| v.parse().ok())
        })
        .unwrap_or(0)
}

async fn put_and_get(addr: &str, key: &str) -> anyhow::Result<()> {
    let mut c = connect(addr).await?;
    c.put(PutRequest {
        key: key.as_bytes().to_vec().into(),
        value: b"v".to_vec().into(),
        ..Default::default()
    })
    .await?;
    let got = c
        .get(GetRequest {
            key: key.as_bytes().to_vec().into(),
            ..Default::default()
        })
        .await?
        .into_inner();
    anyhow::ensure!(
        got.values == vec![b"v".to_vec()],
        "read back {:?}",
        got.values
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_of_silent_connections_neither_starves_clients_nor_keeps_memory(
) -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let server = tokio::task::block_in_place(|| {
        Server::start_with_env(
            &dir.path().join("n1"),
            &[],
            &[
                ("DISTKV_LIMITS__MAX_CONNECTIONS", "64"),
                ("DISTKV_LIMITS__IDLE_TIMEOUT", "2s"),
            ],
        )
    })?;
    let pid = server.pid().expect("running");
    put_and_get(&server.addr, "before").await?;
    let baseline = rss_kib(pid);

    // 300 connections that never send a byte (bounded in count and held ~1 s).
    let mut silent = Vec::new();
    for _ in 0..300 {
        if let Ok(s) = tokio::net::TcpStream::connect(&server.addr).await {
            silent.push(s);
        }
    }
    // While the flood holds every slot, a client gets an answer or a refusal promptly.
    let started = Instant::now();
    let during =
        tokio::time::timeout(Duration::from_secs(10), put_and_get(&server.addr, "during")).await;
    assert!(during.is_ok(), "the client hung during the flood");
    assert!(started.elapsed() < Duration::from_secs(10));
    let log = server.log_text();
    assert!(
        log.contains("limits.max_connections"),
        "the refusals are logged:\n{log}"
    );

    // The node closes the silent connections after the idle timeout (2 s): each reads EOF.
    let deadline = Instant::now() + Duration::from_secs(15);
    let mut closed = 0;
    for mut s in silent {
        use tokio::io::AsyncReadExt;
        let left = deadline.saturating_duration_since(Instant::now());
        let mut buf = [0u8; 64];
        // The node may first send its HTTP/2 settings; read until EOF or error.
        let read_to_end = async {
            loop {
                match s.read(&mut buf).await {
                    Ok(0) | Err(_) => return,
                    Ok(_) => {}
                }
            }
        };
        if tokio::time::timeout(left, read_to_end).await.is_ok() {
            closed += 1;
        }
    }
    assert_eq!(closed, 300, "every flood connection was closed by the node");

    // Afterwards clients are served and memory is near where it started.
    put_and_get(&server.addr, "after").await?;
    let after = rss_kib(pid);
    assert!(
        after < baseline + 32 * 1024,
        "RSS {after} KiB after the flood, {baseline} KiB before"
    );
    Ok(())
}
