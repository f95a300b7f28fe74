//! `scripts/dev-cluster.sh start|status|test|stop` runs a 3-node cluster on loopback,
//! checks puts, gets and deletes through every node, and stops every node it started.

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use distkv_tests::{binary, stderr, stdout};

/// A base port whose client ports (base + 1..=3) and admin ports (+ 2000) are free, from
/// below the usual ephemeral range so that other tests' free ports rarely land there.
fn free_base() -> u16 {
    let start = 20_000 + (std::process::id() % 400) as u16 * 20;
    (0..200)
        .map(|i| start.wrapping_add(i * 7) % 10_000 + 20_000)
        .find(|&base| {
            (1..=3).all(|i| {
                TcpListener::bind(("127.0.0.1", base + i)).is_ok()
                    && TcpListener::bind(("127.0.0.1", base + i + 2000)).is_ok()
            })
        })
        .expect("a free range of ports from 20000 to 30000")
}

struct DevCluster {
    dir: PathBuf,
    base: u16,
}

impl DevCluster {
    /// Runs the script with `args`, killing it after `limit`.
    fn run(&self, args: &[&str], limit: Duration) -> Output {
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap();
        let bin = binary("distkv-server");
        let mut child = Command::new("bash")
            .arg(root.join("scripts/dev-cluster.sh"))
            .args(args)
            .env("BIN", bin.parent().unwrap())
            .env("DEV_DIR", &self.dir)
            .env("BASE_PORT", self.base.to_string())
            .env_remove("RUST_LOG")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("run bash scripts/dev-cluster.sh");
        let deadline = Instant::now() + limit;
        while child.try_wait().expect("poll the script").is_none() {
            if Instant::now() > deadline {
                let _ = child.kill();
                break;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        child
            .wait_with_output()
            .expect("collect the script's output")
    }
}

impl Drop for DevCluster {
    /// Whatever happened, no node outlives the test.
    fn drop(&mut self) {
        self.run(&["stop"], Duration::from_secs(30));
    }
}

#[test]
fn the_dev_cluster_starts_checks_and_stops() {
    let dir = tempfile::tempdir().unwrap();
    let cluster = DevCluster {
        dir: dir.path().join("dev"),
        base: free_base(),
    };
    let minute = Duration::from_secs(60);

    let out = cluster.run(&["start", "3"], minute);
    assert!(
        out.status.success(),
        "start: {}{}",
        stdout(&out),
        stderr(&out)
    );
    assert!(
        stdout(&out).contains("started 3 nodes (N=3 R=2 W=2)"),
        "{}",
        stdout(&out)
    );

    let out = cluster.run(&["start", "3"], minute);
    assert!(!out.status.success(), "a second start is refused");
    assert!(stderr(&out).contains("still running"), "{}", stderr(&out));

    let out = cluster.run(&["status"], minute);
    assert!(
        out.status.success(),
        "status: {}{}",
        stdout(&out),
        stderr(&out)
    );
    assert!(
        stdout(&out).contains("3 of 3 nodes running"),
        "{}",
        stdout(&out)
    );

    let out = cluster.run(&["test"], minute);
    assert!(
        out.status.success(),
        "test: {}{}",
        stdout(&out),
        stderr(&out)
    );
    assert!(
        stdout(&out).contains("ok: put, get and delete through each of 3 nodes, 18 reads checked"),
        "{}",
        stdout(&out)
    );

    let pids: Vec<String> = std::fs::read_to_string(cluster.dir.join("nodes"))
        .unwrap()
        .lines()
        .filter_map(|l| l.split_whitespace().nth(2).map(str::to_string))
        .collect();
    assert_eq!(pids.len(), 3);
    let out = cluster.run(&["stop"], minute);
    assert!(out.status.success(), "stop: {}", stderr(&out));
    assert!(stdout(&out).contains("stopped 3 nodes"), "{}", stdout(&out));
    for pid in pids {
        assert!(
            !Path::new(&format!("/proc/{pid}")).exists()
                || std::fs::read_to_string(format!("/proc/{pid}/stat"))
                    .is_ok_and(|s| s.contains(") Z ")),
            "node pid {pid} still runs after stop"
        );
    }
    let out = cluster.run(&["test"], minute);
    assert!(!out.status.success(), "test without a cluster fails");
}
