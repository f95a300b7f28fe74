//! The stores `distkv-bench` drives: DistKV, and for side-by-side comparisons etcd (its
//! v3 KV API) and Redis. The workload, the key choice, the values, the timing and the
//! report are the same for every store; only these drivers differ. One module per store:
//! each opens its connections to `--targets` (one per client with
//! `--connection-per-client`), checks that every target answers, and turns a read, a
//! write and a batch of preload writes into that store's requests.

pub mod distkv;
pub mod etcd;
#[cfg(feature = "peers")]
pub mod redis;

use bytes::Bytes;
use clap::ValueEnum;

use crate::cli::{Config, Failure};

/// The store driven.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum StoreKind {
    /// DistKV's gRPC API (the default).
    Distkv,
    /// etcd's v3 KV API over gRPC: Range (linearizable) and Put.
    Etcd,
    /// Redis: GET and SET (needs the `peers` build feature).
    Redis,
}

impl StoreKind {
    /// Lower-case name, as on the command line and in the report.
    pub fn name(self) -> &'static str {
        match self {
            StoreKind::Distkv => "distkv",
            StoreKind::Etcd => "etcd",
            StoreKind::Redis => "redis",
        }
    }

    /// What a reader of the report must know about the requests sent to this store.
    pub fn note(self) -> &'static str {
        match self {
            StoreKind::Distkv => {
                "DistKV Get/Put at --consistency; an update is a Get, then a Put with its context"
            }
            StoreKind::Etcd => {
                "etcd v3 KV API: linearizable Range (etcd's default, not serializable) and Put; an update is a Range, then a Put"
            }
            StoreKind::Redis => {
                "Redis GET/SET: one node, no replication (durability is the server's appendonly setting); an update is a GET, then a SET"
            }
        }
    }

    /// Whether this build can drive the store.
    pub fn compiled_in(self) -> bool {
        match self {
            StoreKind::Distkv | StoreKind::Etcd => true,
            StoreKind::Redis => cfg!(feature = "peers"),
        }
    }
}

/// A failed request, as counted in the report: a short, stable class such as
/// `UNAVAILABLE quorum not reached` or `REDIS IoError`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OpError(pub String);

/// What a read found.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Found {
    /// Whether the key had a value.
    pub found: bool,
    /// Whether more than one value came back (DistKV siblings).
    pub siblings: bool,
    /// What a following write of the same key must carry (DistKV's causal context; empty
    /// for the other stores).
    pub context: Bytes,
}

/// One connection (or a handle on a shared one) to one target of one store.
#[derive(Clone)]
pub enum Conn {
    Distkv(distkv::Conn),
    Etcd(etcd::Conn),
    #[cfg(feature = "peers")]
    Redis(redis::Conn),
}

impl Conn {
    /// Reads `key`.
    pub async fn get(&mut self, key: Bytes) -> Result<Found, OpError> {
        match self {
            Conn::Distkv(c) => c.get(key).await,
            Conn::Etcd(c) => c.get(key).await,
            #[cfg(feature = "peers")]
            Conn::Redis(c) => c.get(key).await,
        }
    }

    /// Writes `key`; `context` is what a read of it returned (empty for a blind write).
    pub async fn put(&mut self, key: Bytes, value: Bytes, context: Bytes) -> Result<(), OpError> {
        match self {
            Conn::Distkv(c) => c.put(key, value, context).await,
            Conn::Etcd(c) => c.put(key, value).await,
            #[cfg(feature = "peers")]
            Conn::Redis(c) => c.put(key, value).await,
        }
    }

    /// Writes a batch of keys blindly (the preload): one request where the store has
    /// one (DistKV `BatchPut`, an etcd transaction, Redis `MSET`).
    pub async fn put_many(&mut self, entries: Vec<(Bytes, Bytes)>) -> Result<(), OpError> {
        match self {
            Conn::Distkv(c) => c.put_many(entries).await,
            Conn::Etcd(c) => c.put_many(entries).await,
            #[cfg(feature = "peers")]
            Conn::Redis(c) => c.put_many(entries).await,
        }
    }
}

/// Opens the connections to every target of the configured store (`--connections` per
/// target, or one per client with `--connection-per-client`) and checks that each target
/// answers as that store.
pub async fn connect_all(config: &Config) -> Result<Vec<Vec<Conn>>, Failure> {
    match config.args.store {
        StoreKind::Distkv => distkv::connect_all(config).await,
        StoreKind::Etcd => etcd::connect_all(config).await,
        #[cfg(feature = "peers")]
        StoreKind::Redis => redis::connect_all(config).await,
        #[cfg(not(feature = "peers"))]
        StoreKind::Redis => Err(Failure::usage(NOT_COMPILED_IN)),
    }
}

/// Why `--store redis` is refused by a build without the `peers` feature.
pub const NOT_COMPILED_IN: &str = "--store redis needs a distkv-bench built with the `peers` feature: cargo build --release -p distkv-benches --features peers --bin distkv-bench";

/// Opens one plain-TCP gRPC channel to the first of `addrs` that accepts, within
/// `timeout`; returns the index of the address used and the channel.
pub async fn grpc_channel(
    target: &str,
    addrs: &[std::net::SocketAddr],
    timeout: std::time::Duration,
) -> Result<(usize, tonic::transport::Channel), Failure> {
    let mut last_error = String::from("no address");
    for (i, addr) in addrs.iter().enumerate() {
        let endpoint = tonic::transport::Channel::from_shared(format!("http://{addr}"))
            .map_err(|e| Failure::usage(format!("target {target}: {e}")))?
            .connect_timeout(timeout)
            .tcp_nodelay(true);
        match endpoint.connect().await {
            Ok(channel) => return Ok((i, channel)),
            Err(e) => last_error = format!("{addr}: {}", crate::runner::root_cause(&e)),
        }
    }
    Err(Failure::unreachable(format!(
        "cannot connect to target {target} ({last_error})"
    )))
}

/// The drivers against real servers, started on loopback ports for the test; each test
/// skips (and says why) when the server's binary is not installed.
#[cfg(test)]
mod live_tests {
    use std::net::TcpListener;
    use std::path::Path;
    use std::process::{Child, Command, Stdio};
    use std::time::{Duration, Instant};

    use clap::Parser;

    use crate::cli::{validate, Args};

    /// Kills and reaps the server when the test ends, however it ends.
    struct Server(Child);

    impl Drop for Server {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }

    /// A loopback port free a moment ago.
    fn free_port() -> u16 {
        let l = TcpListener::bind("127.0.0.1:0").expect("bind a loopback port");
        l.local_addr().expect("local address").port()
    }

    /// The path of `name` on PATH, if installed.
    fn installed(name: &str) -> Option<std::path::PathBuf> {
        let path = std::env::var_os("PATH")?;
        std::env::split_paths(&path)
            .map(|dir| dir.join(name))
            .find(|p| p.is_file())
    }

    /// Runs `distkv-bench` with `extra` arguments (bounded by --ops) in a fresh runtime;
    /// retries the connection for up to 20 s while the server starts.
    fn bench(extra: &[&str]) -> crate::stats::Report {
        let mut argv = vec!["distkv-bench"];
        argv.extend_from_slice(extra);
        let config = validate(Args::try_parse_from(argv).expect("arguments parse"), |s| {
            crate::cli::system_resolve(s)
        })
        .expect("valid settings");
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .expect("runtime");
        let start = Instant::now();
        loop {
            match rt.block_on(crate::runner::run(config.clone())) {
                Ok(report) => return report,
                Err(f) if f.code == 3 && start.elapsed() < Duration::from_secs(20) => {
                    std::thread::sleep(Duration::from_millis(200));
                }
                Err(f) => panic!("distkv-bench failed: {}", f.message),
            }
        }
    }

    /// A preloaded workload A and then inserts: every read finds its key, nothing fails.
    fn check_store(store: &str, target: &str) {
        let report = bench(&[
            "--store",
            store,
            "--targets",
            target,
            "--clients",
            "4",
            "--connection-per-client",
            "--keys",
            "50",
            "--preload",
            "--workload",
            "a",
            "--distribution",
            "uniform",
            "--ops",
            "400",
            "--timeout",
            "5s",
            "--seed",
            "7",
        ]);
        assert_eq!(report.stats.total_errors(), 0, "{:?}", report.stats.errors);
        assert_eq!(report.stats.total_ops(), 400);
        assert_eq!(report.stats.not_found, 0, "preloaded keys are found");
        let text = report.text();
        assert!(text.starts_with(&format!("store {store}: ")), "{text}");
        let report = bench(&[
            "--store",
            store,
            "--targets",
            target,
            "--clients",
            "2",
            "--workload",
            "insert",
            "--ops",
            "100",
        ]);
        assert_eq!(report.stats.total_errors(), 0, "{:?}", report.stats.errors);
        assert_eq!(report.stats.successes(crate::workload::Op::Insert), 100);
    }

    #[cfg(feature = "peers")]
    #[test]
    fn redis_driver_against_a_real_redis_server() {
        let Some(binary) = installed("redis-server") else {
            eprintln!("skipped: redis-server is not installed (apt-get install redis-server)");
            return;
        };
        let dir = tempfile::tempdir().expect("temp dir");
        let port = free_port();
        let server = Command::new(binary)
            .args(["--bind", "127.0.0.1", "--port", &port.to_string()])
            .args(["--save", "", "--appendonly", "no", "--dir"])
            .arg(dir.path())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start redis-server");
        let _server = Server(server);
        check_store("redis", &format!("127.0.0.1:{port}"));
    }

    #[test]
    fn etcd_driver_against_a_real_etcd_member() {
        let Some(binary) = installed("etcd") else {
            eprintln!("skipped: etcd is not installed (apt-get install etcd-server)");
            return;
        };
        let dir = tempfile::tempdir().expect("temp dir");
        let (client, peer) = (free_port(), free_port());
        let client_url = format!("http://127.0.0.1:{client}");
        let peer_url = format!("http://127.0.0.1:{peer}");
        let server = Command::new(binary)
            .args(["--name", "t1", "--data-dir"])
            .arg(Path::new(dir.path()).join("t1"))
            .args(["--listen-client-urls", &client_url])
            .args(["--advertise-client-urls", &client_url])
            .args(["--listen-peer-urls", &peer_url])
            .args(["--initial-advertise-peer-urls", &peer_url])
            .args(["--initial-cluster", &format!("t1={peer_url}")])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start etcd");
        let _server = Server(server);
        check_store("etcd", &format!("127.0.0.1:{client}"));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_store_has_a_name_and_a_note() {
        for store in StoreKind::value_variants() {
            let name = store.to_possible_value().expect("a named variant");
            assert_eq!(name.get_name(), store.name());
            assert!(!store.note().is_empty());
        }
        assert!(StoreKind::Etcd.note().contains("linearizable"));
        assert!(StoreKind::Redis.note().contains("no replication"));
        assert!(StoreKind::Distkv.compiled_in() && StoreKind::Etcd.compiled_in());
        assert_eq!(StoreKind::Redis.compiled_in(), cfg!(feature = "peers"));
    }

    /// The workspace's Cargo.lock keeps idna_adapter at 1.0.x (see the workspace
    /// Cargo.toml): a later version brings ICU4X back and with it a rebuild of the whole
    /// tree whenever the `peers` feature is on.
    #[test]
    fn the_lock_keeps_the_ascii_only_idna_adapter() {
        let lock = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../Cargo.lock");
        let Ok(text) = std::fs::read_to_string(&lock) else {
            eprintln!("skipped: {} is not readable", lock.display());
            return;
        };
        let mut packages = text.split("[[package]]");
        if let Some(adapter) = packages.find(|p| p.contains("\nname = \"idna_adapter\"\n")) {
            assert!(
                adapter.contains("\nversion = \"1.0."),
                "Cargo.lock has another idna_adapter than 1.0.x; run: cargo update -p idna_adapter --precise 1.0.0\n{adapter}"
            );
        }
    }
}
