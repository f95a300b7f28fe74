//! Data survives a graceful stop (SIGTERM, SIGINT) and a crash (SIGKILL) of a real
//! `distkv-server`: every acknowledged write is served after the restart.

use distkv_proto::v1::{GetRequest, PutRequest};
use distkv_tests::{connect, Server};

async fn write_keys(addr: &str, from: usize, to: usize) -> anyhow::Result<()> {
    let mut c = connect(addr).await?;
    for i in from..to {
        let req = PutRequest {
            key: format!("key-{i:05}").into_bytes().into(),
            value: format!("value-{i}").into_bytes().into(),
            context: Default::default(),
            consistency: 0,
        };
        c.put(req).await?;
    }
    Ok(())
}

async fn check_keys(addr: &str, from: usize, to: usize) -> anyhow::Result<()> {
    let mut c = connect(addr).await?;
    for i in from..to {
        let r = c
            .get(GetRequest {
                key: format!("key-{i:05}").into_bytes().into(),
                consistency: 0,
            })
            .await?
            .into_inner();
        anyhow::ensure!(
            r.values == vec![format!("value-{i}").into_bytes()],
            "key-{i:05} lost or wrong: {:?}",
            r.values
        );
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn data_survives_sigterm_sigint_and_sigkill_on_the_lsm_engine() -> anyhow::Result<()> {
    survives_restarts("lsm").await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn data_survives_sigterm_sigint_and_sigkill_on_the_memory_engine() -> anyhow::Result<()> {
    survives_restarts("memory").await
}

async fn survives_restarts(engine: &str) -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let env = [("DISTKV_STORAGE__ENGINE", engine)];
    let mut server =
        tokio::task::block_in_place(|| Server::start_with_env(&dir.path().join("n1"), &[], &env))?;

    write_keys(&server.addr, 0, 300).await?;
    let status = tokio::task::block_in_place(|| server.signal("TERM"))?;
    assert!(status.success(), "SIGTERM exits 0, got {status}");
    tokio::task::block_in_place(|| server.restart())?;
    check_keys(&server.addr, 0, 300).await?;

    write_keys(&server.addr, 300, 400).await?;
    let status = tokio::task::block_in_place(|| server.signal("INT"))?;
    assert!(status.success(), "SIGINT exits 0, got {status}");
    tokio::task::block_in_place(|| server.restart())?;
    check_keys(&server.addr, 0, 400).await?;

    // A crash right after the acknowledgements: nothing acknowledged may be missing.
    write_keys(&server.addr, 400, 900).await?;
    tokio::task::block_in_place(|| server.signal("KILL"))?;
    tokio::task::block_in_place(|| server.restart())?;
    check_keys(&server.addr, 0, 900).await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_kill_during_concurrent_writes_loses_no_acknowledged_write() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let mut server = tokio::task::block_in_place(|| Server::start(&dir.path().join("n1"), &[]))?;
    let addr = server.addr.clone();
    // Four writers record what the server acknowledged until the connection breaks.
    let acked = std::sync::Arc::new(acked::Acked::default());
    let mut writers = Vec::new();
    for w in 0..4 {
        let addr = addr.clone();
        let acked = acked.clone();
        writers.push(tokio::spawn(async move {
            let Ok(mut c) = connect(&addr).await else {
                return;
            };
            for i in 0..5_000 {
                let key = format!("w{w}-{i}");
                let req = PutRequest {
                    key: key.clone().into_bytes().into(),
                    value: key.clone().into_bytes().into(),
                    context: Default::default(),
                    consistency: 0,
                };
                if c.put(req).await.is_err() {
                    return;
                }
                acked.push(key);
            }
        }));
    }
    // Kill once a few hundred writes are acknowledged (bounded wait).
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while acked.len() < 400 && std::time::Instant::now() < deadline {
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    }
    tokio::task::block_in_place(|| server.signal("KILL"))?;
    for w in writers {
        let _ = w.await;
    }
    let acked = acked.take();
    assert!(
        acked.len() >= 400,
        "only {} writes acknowledged before the deadline",
        acked.len()
    );
    tokio::task::block_in_place(|| server.restart())?;
    let mut c = connect(&server.addr).await?;
    for key in &acked {
        let r = c
            .get(GetRequest {
                key: key.clone().into_bytes().into(),
                consistency: 0,
            })
            .await?
            .into_inner();
        assert_eq!(
            r.values,
            vec![key.clone().into_bytes()],
            "acknowledged write {key} lost after kill -9"
        );
    }
    Ok(())
}

/// SIGTERM while a large batch is being written: the node finishes the batch, answers it,
/// exits 0, and serves the whole batch after a restart.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_lets_an_in_flight_request_finish() -> anyhow::Result<()> {
    use distkv_proto::v1::{BatchPutRequest, KeyValuePair, StatusRequest};
    let dir = tempfile::tempdir()?;
    let mut server = tokio::task::block_in_place(|| Server::start(&dir.path().join("n1"), &[]))?;
    let writes_so_far = |addr: String| async move {
        let s = connect(&addr)
            .await?
            .status(StatusRequest {})
            .await?
            .into_inner();
        let w = s
            .storage_stats
            .iter()
            .find(|s| s.name == "writes")
            .map(|s| s.value.parse::<u64>());
        Ok::<u64, anyhow::Error>(w.transpose()?.unwrap_or(0))
    };
    let before = writes_so_far(server.addr.clone()).await?;
    let entries: Vec<KeyValuePair> = (0..10_000)
        .map(|i| KeyValuePair {
            key: format!("batch-{i:05}").into_bytes().into(),
            value: vec![b'x'; 1024].into(),
            context: Default::default(),
        })
        .collect();
    let mut c = connect(&server.addr).await?;
    let batch = tokio::spawn(async move {
        c.batch_put(BatchPutRequest {
            entries,
            consistency: 0,
        })
        .await
    });
    // Signal once the node has started writing the batch, and before it has answered.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while writes_so_far(server.addr.clone()).await? == before {
        anyhow::ensure!(
            std::time::Instant::now() < deadline,
            "the batch never started"
        );
        tokio::time::sleep(std::time::Duration::from_millis(1)).await;
    }
    anyhow::ensure!(
        !batch.is_finished(),
        "the batch finished before the signal; make it larger"
    );
    let status = tokio::task::block_in_place(|| server.signal("TERM"))?;
    let answer = batch.await?;
    assert!(
        answer.is_ok(),
        "the in-flight batch was answered: {answer:?}"
    );
    assert!(status.success(), "graceful stop exits 0, got {status}");
    tokio::task::block_in_place(|| server.restart())?;
    let mut c = connect(&server.addr).await?;
    for i in (0..10_000).step_by(97).chain([9_999]) {
        let r = c
            .get(GetRequest {
                key: format!("batch-{i:05}").into_bytes().into(),
                consistency: 0,
            })
            .await?
            .into_inner();
        assert_eq!(r.values, vec![vec![b'x'; 1024]], "batch-{i:05}");
    }
    Ok(())
}

mod acked {
    use std::sync::Mutex;

    /// Keys whose writes were acknowledged.
    #[derive(Default)]
    pub struct Acked(Mutex<Vec<String>>);

    impl Acked {
        pub fn push(&self, key: String) {
            self.0.lock().expect("acked lock").push(key);
        }
        pub fn len(&self) -> usize {
            self.0.lock().expect("acked lock").len()
        }
        pub fn take(&self) -> Vec<String> {
            std::mem::take(&mut *self.0.lock().expect("acked lock"))
        }
    }
}
