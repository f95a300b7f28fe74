//! The command line: arguments, their validation (bounds, loopback-only targets) and
//! the failure type that maps to an exit code.

use std::net::{SocketAddr, ToSocketAddrs};
use std::time::Duration;

use clap::{Parser, ValueEnum};
use distkv_proto::v1::Consistency;

use crate::stores::{StoreKind, NOT_COMPILED_IN};
use crate::workload::{Distribution, Workload};

/// Largest key space accepted (computing the zipfian constant is linear in it).
pub const MAX_KEYS: u64 = 100_000_000;
/// Most concurrent clients accepted.
pub const MAX_CLIENTS: usize = 10_000;
/// Most channels (HTTP/2 connections) per target accepted.
pub const MAX_CONNECTIONS: usize = 64;
/// Largest value accepted (the server's default limit).
pub const MAX_VALUE_SIZE: usize = 16 * 1024 * 1024;

#[derive(Parser, Debug, Clone)]
#[command(
    name = "distkv-bench",
    version,
    about = "Load generator for a DistKV cluster (YCSB-style workloads)"
)]
pub struct Args {
    /// Store to drive: distkv, or for side-by-side comparisons with the same workload and
    /// report etcd (v3 KV API: linearizable Range, Put) or redis (GET, SET; needs the
    /// `peers` build feature). --targets are that store's client endpoints.
    #[arg(long, value_enum, default_value_t = StoreKind::Distkv)]
    pub store: StoreKind,
    /// Nodes to send requests to, HOST:PORT,HOST:PORT,...; clients are spread over them
    /// round-robin. Must be loopback addresses unless --allow-remote is given.
    #[arg(
        long,
        required = true,
        value_delimiter = ',',
        value_name = "HOST:PORT,..."
    )]
    pub targets: Vec<String>,
    /// Allow targets that are not loopback addresses.
    #[arg(long)]
    pub allow_remote: bool,
    /// Concurrent clients.
    #[arg(long, short = 'c', default_value_t = 16)]
    pub clients: usize,
    /// gRPC channels (HTTP/2 connections) per target, shared by the clients.
    #[arg(long, default_value_t = 1)]
    pub connections: usize,
    /// Give every client its own gRPC channel (HTTP/2 connection), as separate
    /// application instances would have, instead of sharing --connections channels per
    /// target: --clients connections in all, spread round-robin over the targets.
    #[arg(long, conflicts_with = "connections")]
    pub connection_per_client: bool,
    /// Talk TLS to the targets.
    #[arg(long)]
    pub tls_enabled: bool,
    /// CA certificate that signed the nodes' certificates (PEM).
    #[arg(long, value_name = "FILE")]
    pub tls_ca_file: Option<std::path::PathBuf>,
    /// Client certificate (PEM), for nodes that ask for one.
    #[arg(long, value_name = "FILE", requires = "tls_key_file")]
    pub tls_cert_file: Option<std::path::PathBuf>,
    /// The client certificate's private key (PEM).
    #[arg(long, value_name = "FILE", requires = "tls_cert_file")]
    pub tls_key_file: Option<std::path::PathBuf>,
    /// Name to check the nodes' certificates against (default: each target's host).
    #[arg(long, value_name = "NAME")]
    pub tls_server_name: Option<String>,
    /// Accept any server certificate (testing only; warns).
    #[arg(long)]
    pub tls_insecure_skip_verify: bool,
    /// Length of the measured phase, e.g. 30s, 2m.
    #[arg(long, value_parser = humantime::parse_duration)]
    pub duration: Option<Duration>,
    /// Operations of the measured phase (the run stops at whichever bound comes first).
    #[arg(long)]
    pub ops: Option<u64>,
    /// Unmeasured phase before the measured one, e.g. 5s.
    #[arg(long, value_parser = humantime::parse_duration, default_value = "0s")]
    pub warmup: Duration,
    /// Operation mix: a (50% read, 50% update), b (95/5), c (100% read), insert.
    #[arg(long, value_enum, default_value_t = Workload::A)]
    pub workload: Workload,
    /// Size of the key space read and updated.
    #[arg(long, default_value_t = 10_000)]
    pub keys: u64,
    /// How keys are picked.
    #[arg(long, value_enum, default_value_t = Distribution::Zipfian)]
    pub distribution: Distribution,
    /// Bytes per written value.
    #[arg(long, default_value_t = 100)]
    pub value_size: usize,
    /// Replicas that must answer each request (default: the server's R or W).
    #[arg(long, value_enum, default_value_t = Level::Default)]
    pub consistency: Level,
    /// Write every key of the key space first (blind writes: run it once per fresh
    /// cluster or key prefix, or the keys get siblings).
    #[arg(long)]
    pub preload: bool,
    /// Deadline of each request, e.g. 500ms, 5s.
    #[arg(long, value_parser = humantime::parse_duration, default_value = "5s")]
    pub timeout: Duration,
    /// Prefix of every key written or read.
    #[arg(long, default_value = "bench")]
    pub key_prefix: String,
    /// Seed of the random choices (default: from the clock).
    #[arg(long)]
    pub seed: Option<u64>,
    /// Also write the report to FILE as json or csv.
    #[arg(long, num_args = 2, value_names = ["FORMAT", "FILE"])]
    pub output: Option<Vec<String>>,
}

impl Args {
    /// Channels opened to the `index`-th of `targets` targets: `--connections`, or with
    /// `--connection-per-client` one for each client the round-robin sends there (at
    /// least one, so that every target is checked at the start).
    pub fn channels_for_target(&self, index: usize, targets: usize) -> usize {
        if self.connection_per_client {
            self.clients.saturating_sub(index).div_ceil(targets).max(1)
        } else {
            self.connections
        }
    }
}

/// Consistency level of the requests.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Level {
    /// The server's configured R (reads) or W (writes).
    Default,
    One,
    Quorum,
    All,
}

impl Level {
    pub fn wire(self) -> i32 {
        match self {
            Level::Default => Consistency::Default as i32,
            Level::One => Consistency::One as i32,
            Level::Quorum => Consistency::Quorum as i32,
            Level::All => Consistency::All as i32,
        }
    }
}

/// Format of the report file.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OutputFormat {
    Json,
    Csv,
}

/// A node the benchmark talks to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Target {
    /// As given on the command line.
    pub name: String,
    /// Its checked addresses, tried in order until one connects (`localhost` may give
    /// both `::1` and `127.0.0.1`).
    pub addrs: Vec<SocketAddr>,
}

/// Validated settings.
#[derive(Clone, Debug)]
pub struct Config {
    pub args: Args,
    pub targets: Vec<Target>,
    pub output: Option<(OutputFormat, String)>,
    /// TLS settings, when `--tls-enabled`.
    pub tls: Option<distkv_network::tls::ClientTlsOptions>,
}

/// A failure with its exit code and one-line message.
#[derive(Debug)]
pub struct Failure {
    pub code: u8,
    pub message: String,
}

impl Failure {
    pub fn usage(message: impl Into<String>) -> Failure {
        Failure {
            code: 2,
            message: message.into(),
        }
    }

    pub fn unreachable(message: impl Into<String>) -> Failure {
        Failure {
            code: 3,
            message: message.into(),
        }
    }
}

/// Checks the settings; `resolve` turns a `HOST:PORT` into addresses (DNS in `main`, a
/// stub in tests). Nothing is contacted here.
pub fn validate(
    args: Args,
    resolve: impl Fn(&str) -> std::io::Result<Vec<SocketAddr>>,
) -> Result<Config, Failure> {
    if args.duration.is_none() && args.ops.is_none() {
        return Err(Failure::usage(
            "the run is unbounded: give --duration (e.g. 30s) and/or --ops (e.g. 100000)",
        ));
    }
    if args.duration.is_some_and(|d| d.is_zero()) || args.ops == Some(0) {
        return Err(Failure::usage("--duration and --ops must be positive"));
    }
    if args.clients == 0 || args.clients > MAX_CLIENTS {
        return Err(Failure::usage(format!(
            "--clients must be between 1 and {MAX_CLIENTS}"
        )));
    }
    if args.connections == 0 || args.connections > MAX_CONNECTIONS {
        return Err(Failure::usage(format!(
            "--connections must be between 1 and {MAX_CONNECTIONS}"
        )));
    }
    if args.keys == 0 || args.keys > MAX_KEYS {
        return Err(Failure::usage(format!(
            "--keys must be between 1 and {MAX_KEYS}"
        )));
    }
    if args.value_size > MAX_VALUE_SIZE {
        return Err(Failure::usage(format!(
            "--value-size must be at most {MAX_VALUE_SIZE} bytes"
        )));
    }
    if args.timeout.is_zero() {
        return Err(Failure::usage("--timeout must be positive"));
    }
    if args.key_prefix.is_empty() {
        return Err(Failure::usage("--key-prefix must not be empty"));
    }
    if !args.store.compiled_in() {
        return Err(Failure::usage(NOT_COMPILED_IN));
    }
    if args.store != StoreKind::Distkv {
        if args.consistency != Level::Default {
            return Err(Failure::usage(format!(
                "--consistency applies to --store distkv only ({}); leave it out",
                args.store.note()
            )));
        }
        if args.tls_enabled {
            return Err(Failure::usage(format!(
                "--tls-enabled is supported for --store distkv only; drive {} over plain TCP on loopback",
                args.store.name()
            )));
        }
    }
    let output = match &args.output {
        None => None,
        Some(v) => {
            let format = match v[0].as_str() {
                "json" => OutputFormat::Json,
                "csv" => OutputFormat::Csv,
                other => {
                    return Err(Failure::usage(format!(
                        "--output format {other:?} is not json or csv"
                    )))
                }
            };
            Some((format, v[1].clone()))
        }
    };
    let mut targets: Vec<Target> = Vec::new();
    for name in &args.targets {
        let name = name.trim();
        if name.is_empty() {
            return Err(Failure::usage("--targets has an empty entry"));
        }
        let addrs = resolve(name).map_err(|e| {
            Failure::usage(format!("target {name:?} is not a HOST:PORT address: {e}"))
        })?;
        if addrs.is_empty() {
            return Err(Failure::usage(format!(
                "target {name:?} resolves to no address"
            )));
        }
        if !args.allow_remote {
            if let Some(remote) = addrs.iter().find(|a| !a.ip().is_loopback()) {
                return Err(Failure::usage(format!(
                    "target {name} ({}) is not a loopback address; pass --allow-remote to load a remote cluster",
                    remote.ip()
                )));
            }
        }
        if targets.iter().any(|t| t.name == name) {
            return Err(Failure::usage(format!("target {name} is given twice")));
        }
        targets.push(Target {
            name: name.to_string(),
            addrs,
        });
    }
    let tls = if args.tls_enabled {
        Some(distkv_network::tls::ClientTlsOptions {
            ca: args.tls_ca_file.clone(),
            identity: args.tls_cert_file.clone().zip(args.tls_key_file.clone()),
            server_name: args.tls_server_name.clone(),
            insecure_skip_verify: args.tls_insecure_skip_verify,
        })
    } else if args.tls_ca_file.is_some()
        || args.tls_cert_file.is_some()
        || args.tls_server_name.is_some()
        || args.tls_insecure_skip_verify
    {
        return Err(Failure::usage(
            "--tls-* options were given without --tls-enabled; add --tls-enabled to talk TLS",
        ));
    } else {
        None
    };
    Ok(Config {
        args,
        targets,
        output,
        tls,
    })
}

/// Folds clap's multi-line error text into one line: the part before the usage hint,
/// without the `error: ` prefix, whitespace collapsed.
pub fn one_line_usage_error(rendered: &str) -> String {
    let head = rendered
        .split("\n\nUsage:")
        .next()
        .unwrap_or(rendered)
        .split("\n\nFor more information")
        .next()
        .unwrap_or(rendered);
    let head = head.trim().strip_prefix("error:").unwrap_or(head).trim();
    let words: Vec<&str> = head.split_whitespace().collect();
    format!("{} (see --help)", words.join(" "))
}

/// Resolves `HOST:PORT` with the system resolver.
pub fn system_resolve(name: &str) -> std::io::Result<Vec<SocketAddr>> {
    Ok(name.to_socket_addrs()?.collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(extra: &[&str]) -> Args {
        let mut v = vec!["distkv-bench"];
        v.extend_from_slice(extra);
        Args::try_parse_from(v).expect("arguments parse")
    }

    /// Resolves IP literals only, like the system resolver does without DNS.
    fn literal(name: &str) -> std::io::Result<Vec<SocketAddr>> {
        name.parse::<SocketAddr>()
            .map(|a| vec![a])
            .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidInput, e))
    }

    fn refusal(extra: &[&str]) -> Failure {
        validate(args(extra), literal).expect_err("must be refused")
    }

    #[test]
    fn unbounded_run_is_refused() {
        let f = refusal(&["--targets", "127.0.0.1:7101"]);
        assert_eq!(f.code, 2);
        assert!(f.message.contains("unbounded"), "{}", f.message);
        let f = refusal(&["--targets", "127.0.0.1:7101", "--ops", "0"]);
        assert_eq!(f.code, 2);
    }

    #[test]
    fn either_bound_is_enough() {
        let c = validate(args(&["--targets", "127.0.0.1:1", "--ops", "10"]), literal).unwrap();
        assert_eq!(c.args.ops, Some(10));
        let c = validate(
            args(&["--targets", "127.0.0.1:1", "--duration", "1500ms"]),
            literal,
        )
        .unwrap();
        assert_eq!(c.args.duration, Some(Duration::from_millis(1500)));
    }

    #[test]
    fn non_loopback_target_is_refused_without_allow_remote() {
        let f = refusal(&["--targets", "127.0.0.1:7101,10.1.2.3:7102", "--ops", "5"]);
        assert_eq!(f.code, 2);
        assert!(f.message.contains("10.1.2.3:7102"), "{}", f.message);
        assert!(f.message.contains("--allow-remote"), "{}", f.message);
        assert!(!f.message.contains('\n'));
        let c = validate(
            args(&["--targets", "10.1.2.3:7102", "--ops", "5", "--allow-remote"]),
            literal,
        )
        .unwrap();
        assert_eq!(c.targets[0].addrs, ["10.1.2.3:7102".parse().unwrap()]);
    }

    #[test]
    fn loopback_targets_are_kept_in_order() {
        let c = validate(
            args(&["--targets", "127.0.0.1:7101,[::1]:7102", "--ops", "5"]),
            literal,
        )
        .unwrap();
        let names: Vec<&str> = c.targets.iter().map(|t| t.name.as_str()).collect();
        assert_eq!(names, ["127.0.0.1:7101", "[::1]:7102"]);
    }

    #[test]
    fn bad_settings_are_refused() {
        for bad in [
            &["--targets", "nonsense", "--ops", "5"][..],
            &["--targets", "127.0.0.1:1,127.0.0.1:1", "--ops", "5"],
            &["--targets", "127.0.0.1:1", "--ops", "5", "--clients", "0"],
            &["--targets", "127.0.0.1:1", "--ops", "5", "--keys", "0"],
            &[
                "--targets",
                "127.0.0.1:1",
                "--ops",
                "5",
                "--output",
                "xml",
                "f",
            ],
            &["--targets", "127.0.0.1:1", "--ops", "5", "--timeout", "0s"],
        ] {
            assert_eq!(refusal(bad).code, 2, "{bad:?}");
        }
    }

    #[test]
    fn clap_errors_become_one_line() {
        let e = Args::try_parse_from(["distkv-bench", "--ops", "5"]).expect_err("no --targets");
        let line = one_line_usage_error(&e.render().to_string());
        assert!(!line.contains('\n'), "{line}");
        assert!(
            line.starts_with("the following required arguments"),
            "{line}"
        );
        assert!(line.contains("--targets"), "{line}");
        let e = Args::try_parse_from(["distkv-bench", "--targets", "x", "--workload", "z"])
            .expect_err("bad workload");
        let line = one_line_usage_error(&e.render().to_string());
        assert!(!line.contains('\n') && line.contains("'z'"), "{line}");
    }

    #[test]
    fn connection_per_client_gives_each_client_of_a_target_its_own_channel() {
        let a = args(&["--targets", "127.0.0.1:1", "--ops", "5", "--clients", "64"]);
        assert_eq!(a.channels_for_target(0, 3), 1, "shared by default");
        let a = args(&[
            "--targets",
            "127.0.0.1:1",
            "--ops",
            "5",
            "--clients",
            "64",
            "--connection-per-client",
        ]);
        // Clients 0, 3, 6, ... go to target 0: 22 of them; 21 to each of the others.
        let per_target: Vec<usize> = (0..3).map(|i| a.channels_for_target(i, 3)).collect();
        assert_eq!(per_target, [22, 21, 21]);
        assert_eq!(a.channels_for_target(0, 1), 64);
        // Fewer clients than targets: every target still gets one (checked at the start).
        let a = args(&[
            "--targets",
            "127.0.0.1:1",
            "--ops",
            "5",
            "--clients",
            "2",
            "--connection-per-client",
        ]);
        let per_target: Vec<usize> = (0..3).map(|i| a.channels_for_target(i, 3)).collect();
        assert_eq!(per_target, [1, 1, 1]);
        // It replaces --connections: both at once are refused.
        let both = Args::try_parse_from([
            "distkv-bench",
            "--targets",
            "127.0.0.1:1",
            "--ops",
            "5",
            "--connections",
            "2",
            "--connection-per-client",
        ]);
        assert!(both.is_err());
    }

    #[test]
    fn the_store_defaults_to_distkv_and_other_stores_refuse_distkv_only_options() {
        let c = validate(args(&["--targets", "127.0.0.1:1", "--ops", "5"]), literal).unwrap();
        assert_eq!(c.args.store, StoreKind::Distkv);
        let c = validate(
            args(&[
                "--store",
                "etcd",
                "--targets",
                "127.0.0.1:2379",
                "--ops",
                "5",
            ]),
            literal,
        )
        .unwrap();
        assert_eq!(c.args.store, StoreKind::Etcd);
        let f = refusal(&[
            "--store",
            "etcd",
            "--targets",
            "127.0.0.1:2379",
            "--ops",
            "5",
            "--consistency",
            "one",
        ]);
        assert_eq!(f.code, 2);
        assert!(f.message.contains("--consistency"), "{}", f.message);
        assert!(f.message.contains("linearizable"), "{}", f.message);
        let f = refusal(&[
            "--store",
            "etcd",
            "--targets",
            "127.0.0.1:2379",
            "--ops",
            "5",
            "--tls-enabled",
        ]);
        assert!(f.message.contains("--tls-enabled"), "{}", f.message);
        // Loopback-only holds for every store.
        let f = refusal(&[
            "--store",
            "etcd",
            "--targets",
            "10.0.0.1:2379",
            "--ops",
            "5",
        ]);
        assert!(f.message.contains("--allow-remote"), "{}", f.message);
        assert!(Args::try_parse_from([
            "distkv-bench",
            "--store",
            "cassandra",
            "--targets",
            "127.0.0.1:1",
            "--ops",
            "5"
        ])
        .is_err());
    }

    #[test]
    fn redis_needs_the_peers_feature() {
        let r = validate(
            args(&[
                "--store",
                "redis",
                "--targets",
                "127.0.0.1:6379",
                "--ops",
                "5",
            ]),
            literal,
        );
        if cfg!(feature = "peers") {
            assert_eq!(r.expect("accepted").args.store, StoreKind::Redis);
        } else {
            let f = r.expect_err("refused without the feature");
            assert_eq!(f.code, 2);
            assert!(f.message.contains("--features peers"), "{}", f.message);
        }
    }

    #[test]
    fn output_format_and_file_are_parsed() {
        let c = validate(
            args(&[
                "--targets",
                "127.0.0.1:1",
                "--ops",
                "5",
                "--output",
                "csv",
                "r.csv",
            ]),
            literal,
        )
        .unwrap();
        assert_eq!(c.output, Some((OutputFormat::Csv, "r.csv".to_string())));
    }
}
