//! Crash safety by killing: a child process (this test binary re-executed with an
//! environment variable) writes from one thread (so every write takes the single-writer
//! fast path of the commit queue) with tiny memtables, so flushes and compactions run,
//! and prints each acknowledged batch. Rounds alternate `sync = "always"` and
//! `sync = "never"`: a process kill must not lose an acknowledged write with either,
//! since the WAL record reaches the kernel before `write` returns. The parent SIGKILLs it at a
//! random moment, reopens the directory and checks that every acknowledged batch is
//! there whole and that no batch is half-visible. Several rounds on one directory.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::Duration;

use distkv_engine::{KeyRange, Lsm, LsmOptions, StorageEngine, SyncPolicy, WriteBatch};
use rand::Rng;

const DIR_VAR: &str = "DISTKV_CRASH_WRITER_DIR";
const ROUND_VAR: &str = "DISTKV_CRASH_WRITER_ROUND";
const KEYS_PER_BATCH: u32 = 3;

/// Sync policy of the child in `round`.
fn sync_for_round(round: u32) -> SyncPolicy {
    if round.is_multiple_of(2) {
        SyncPolicy::Always
    } else {
        SyncPolicy::Never
    }
}

fn options() -> LsmOptions {
    LsmOptions {
        sync: SyncPolicy::Always,
        memtable_size_bytes: 8 << 10,
        block_size_bytes: 512,
        target_file_size_bytes: 8 << 10,
        level1_max_bytes: 32 << 10,
        l0_compaction_files: 2,
        ..LsmOptions::default()
    }
}

fn batch_key(round: u32, batch: u32, j: u32) -> Vec<u8> {
    format!("r{round:02}-b{batch:07}-{j}").into_bytes()
}

fn batch_value(round: u32, batch: u32, j: u32) -> Vec<u8> {
    format!("value of {round}/{batch}/{j} {}", "z".repeat(60)).into_bytes()
}

/// The child: runs only when the parent sets the environment variables.
#[test]
fn crash_writer_child() {
    let (Ok(dir), Ok(round)) = (std::env::var(DIR_VAR), std::env::var(ROUND_VAR)) else {
        return;
    };
    let round: u32 = round.parse().unwrap();
    let opts = LsmOptions {
        sync: sync_for_round(round),
        ..options()
    };
    let db = Lsm::open(std::path::Path::new(&dir), opts).unwrap();
    for batch in 0.. {
        let mut b = WriteBatch::new();
        for j in 0..KEYS_PER_BATCH {
            b.put(batch_key(round, batch, j), batch_value(round, batch, j));
        }
        // Each batch also deletes a key of the previous batch and rewrites it, so
        // deletes and overwrites are in the log too.
        if batch > 0 {
            b.delete(batch_key(round, batch - 1, 0));
            b.put(
                batch_key(round, batch - 1, 0),
                batch_value(round, batch - 1, 0),
            );
        }
        db.write(b).unwrap();
        println!("ACK {batch}");
    }
}

#[test]
fn acknowledged_writes_survive_sigkill_and_batches_stay_atomic() {
    if std::env::var(DIR_VAR).is_ok() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let exe = std::env::current_exe().unwrap();
    let mut rng = rand::rng();
    let mut acked_per_round = Vec::new();
    for round in 0..8u32 {
        let mut child = Command::new(&exe)
            .args([
                "--exact",
                "crash_writer_child",
                "--nocapture",
                "--test-threads=1",
            ])
            .env(DIR_VAR, dir.path())
            .env(ROUND_VAR, round.to_string())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let stdout = child.stdout.take().unwrap();
        let reader = std::thread::spawn(move || {
            let mut acked: Option<u32> = None;
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if let Some(n) = line.strip_prefix("ACK ") {
                    acked = Some(n.trim().parse().unwrap());
                }
            }
            acked
        });
        std::thread::sleep(Duration::from_millis(rng.random_range(150..1500)));
        child.kill().unwrap();
        child.wait().unwrap();
        let acked = reader.join().unwrap();
        acked_per_round.push(acked);

        let db = Lsm::open(dir.path(), options()).unwrap();
        for (r, acked) in acked_per_round.iter().enumerate() {
            let r = r as u32;
            if let Some(last) = acked {
                for batch in 0..=*last {
                    for j in 0..KEYS_PER_BATCH {
                        assert_eq!(
                            db.get(&batch_key(r, batch, j)).unwrap(),
                            Some(batch_value(r, batch, j)),
                            "round {r}: acknowledged batch {batch} key {j} lost"
                        );
                    }
                }
            }
            // Nothing beyond the one batch that may have been in flight, and that one whole.
            let first_unacked = acked.map_or(0, |a| a + 1);
            let range = KeyRange::prefix(format!("r{r:02}-").as_bytes());
            let present = db.scan(&range, usize::MAX).unwrap();
            let max_batch = present
                .iter()
                .map(|(k, _)| String::from_utf8_lossy(&k[5..12]).parse::<u32>().unwrap())
                .max();
            if let Some(m) = max_batch {
                assert!(
                    m <= first_unacked,
                    "round {r}: batch {m} visible but only {acked:?} acknowledged"
                );
                if m == first_unacked {
                    for j in 0..KEYS_PER_BATCH {
                        assert_eq!(
                            db.get(&batch_key(r, m, j)).unwrap(),
                            Some(batch_value(r, m, j)),
                            "half a batch"
                        );
                    }
                }
            }
        }
        let stats = db.stats();
        eprintln!(
            "round {round}: last acknowledged batch {acked:?}, compactions so far {:?}, L0 {:?} L1 {:?}",
            stats.get("compactions"),
            stats.get("level.0.files"),
            stats.get("level.1.files")
        );
        db.close().unwrap();
    }
    assert!(
        acked_per_round.iter().filter(|a| a.is_some()).count() >= 4,
        "the writer rarely got going: {acked_per_round:?}"
    );
}
