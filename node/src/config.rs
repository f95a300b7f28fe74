//! Node configuration, layered with figment:
//! built-in defaults < TOML file (`--config`) < `DISTKV_*` environment variables (nested
//! keys joined by `__`) < command-line flags.
//!
//! [`load`] merges the layers and [`Config::validate`] checks the result; both name the
//! setting and the layer a bad value came from, so an operator knows what to fix where.

use std::collections::BTreeSet;
use std::net::{SocketAddr, ToSocketAddrs};
use std::path::{Path, PathBuf};
use std::time::Duration;

use distkv_network::{parse_seed, NodeInfo};
use figment::providers::{Env, Format, Serialized, Toml};
use figment::value::{Dict, Map, Value};
use figment::{Figment, Metadata, Profile, Provider};
use serde::{Deserialize, Serialize};

use crate::api::{NodeSettings, ReadRepair};
use crate::version::ConflictPolicy;

/// Prefix of the environment variables read by the server.
pub const ENV_PREFIX: &str = "DISTKV_";

/// The whole configuration of a node.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// Stable identity of the node in the cluster. Default: the peer advertise address.
    pub node_id: Option<String>,
    /// `HOST:PORT` to listen on for clients (the `KeyValue` API).
    pub address: String,
    /// `HOST:PORT` clients should dial. Default: the listen address (required when
    /// listening on 0.0.0.0 or ::).
    pub advertise_address: Option<String>,
    /// `HOST:PORT` to listen on for other nodes (replication, reads, pings: everything
    /// but the client API). Default: the host of `address` and its port + 1000.
    pub peer_address: Option<String>,
    /// `HOST:PORT` other nodes dial; the seed lists of the other nodes name it. Default:
    /// `peer_address` when it names a host, else the host of the advertise address with
    /// the peer port.
    pub peer_advertise_address: Option<String>,
    /// Directory of the node's data (created if missing).
    pub data_dir: PathBuf,
    /// `HOST:PORT` of the admin HTTP port (`/metrics`, `/health/live`, `/health/ready`).
    /// Default: the host of `address` and its port + 2000 (8080 -> 10080); an empty
    /// string turns the port off.
    pub admin_address: Option<String>,
    /// Other members: `HOST:PORT` or `ID=HOST:PORT` (their peer addresses); a
    /// comma-separated string is accepted. With gossip they are contact points, and a new
    /// cluster's first layout is this node and its seeds.
    #[serde(deserialize_with = "list_or_comma_string")]
    pub seed_nodes: Vec<String>,
    /// The cluster's name: gossip from a node of another cluster is refused (and logged
    /// on both sides). Default `distkv`.
    pub cluster_name: String,
    /// How long a graceful shutdown waits for in-flight requests.
    #[serde(with = "humantime_serde")]
    pub shutdown_timeout: Duration,
    /// Replication and quorums.
    pub replication: ReplicationConfig,
    /// Limits on client input.
    pub limits: LimitsConfig,
    /// The storage engine.
    pub storage: StorageConfig,
    /// How the node learns who is in the cluster.
    pub membership: MembershipConfig,
    /// Moving data when the layout changes (joins).
    pub rebalance: RebalanceConfig,
    /// Anti-entropy: comparing replicas in the background and pulling what differs.
    pub antientropy: AntiEntropyConfig,
    /// Tombstone GC: purging deleted keys once every replica holds the delete.
    pub gc: GcConfig,
    /// How the node calls its peers.
    pub transport: TransportConfig,
    /// Logging.
    pub log: LogConfig,
    /// TLS on the client and peer ports.
    pub tls: TlsConfig,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            node_id: None,
            address: "127.0.0.1:8080".to_string(),
            advertise_address: None,
            peer_address: None,
            peer_advertise_address: None,
            data_dir: PathBuf::from("./data"),
            admin_address: None,
            seed_nodes: Vec::new(),
            cluster_name: DEFAULT_CLUSTER_NAME.to_string(),
            shutdown_timeout: Duration::from_secs(10),
            replication: ReplicationConfig::default(),
            limits: LimitsConfig::default(),
            storage: StorageConfig::default(),
            membership: MembershipConfig::default(),
            rebalance: RebalanceConfig::default(),
            antientropy: AntiEntropyConfig::default(),
            gc: GcConfig::default(),
            transport: TransportConfig::default(),
            log: LogConfig::default(),
            tls: TlsConfig::default(),
        }
    }
}

/// TLS settings. With `enabled`, the client port serves TLS (asking clients for a
/// certificate per `client_auth`) and the peer port always uses mutual TLS with node
/// certificates of the cluster CA (`distkv-server cert` makes them).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TlsConfig {
    /// Serve and call over TLS. Off by default: then traffic is unauthenticated and
    /// unencrypted, and the node warns at start-up.
    pub enabled: bool,
    /// The node certificate (PEM), e.g. `certs/node.crt`.
    pub cert_file: Option<PathBuf>,
    /// Its private key (PEM), e.g. `certs/node.key`.
    pub key_file: Option<PathBuf>,
    /// The cluster CA certificate (PEM), e.g. `certs/ca.crt`.
    pub ca_file: Option<PathBuf>,
    /// `none`, `optional` or `required`: whether clients must show a certificate from
    /// the CA on the client port.
    pub client_auth: distkv_network::tls::ClientAuth,
    /// Serve the admin HTTP port (/metrics, /health) over TLS too, with the node
    /// certificate and the client port's `client_auth`. Off by default: scrapers and
    /// probes then use plain HTTP, so keep that port on a trusted network.
    pub admin: bool,
}

impl TlsConfig {
    /// The files, when TLS is enabled and all are set.
    pub fn files(&self) -> Option<distkv_network::tls::NodeTlsFiles> {
        if !self.enabled {
            return None;
        }
        Some(distkv_network::tls::NodeTlsFiles {
            cert: self.cert_file.clone()?,
            key: self.key_file.clone()?,
            ca: self.ca_file.clone()?,
            client_auth: self.client_auth,
        })
    }
}

/// Replication settings (N, R, W and friends).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ReplicationConfig {
    /// N: copies of each key, on distinct nodes.
    pub replicas: u32,
    /// R: replicas that must answer a read at the default consistency.
    pub read_quorum: u32,
    /// W: replicas that must acknowledge a write at the default consistency.
    pub write_quorum: u32,
    /// Tokens per node on the hash ring.
    pub virtual_nodes: u32,
    /// Deadline of a client request inside the cluster.
    #[serde(with = "humantime_serde")]
    pub request_timeout: Duration,
    /// What reads return after concurrent writes.
    pub conflict: ConflictPolicy,
    /// When stale replicas found by a read are repaired.
    pub read_repair: ReadRepair,
    /// Keep a durable hint for a replica that does not acknowledge a write, and replay it
    /// when the replica answers again.
    pub hinted_handoff: bool,
    /// Count a stored hint as an acknowledgement toward W (Riak's sloppy quorum). Off by
    /// default, as in Cassandra: W then counts only real replicas of the key.
    pub hints_count_toward_w: bool,
    /// How often hints are offered to their targets.
    #[serde(with = "humantime_serde")]
    pub hint_replay_interval: Duration,
    /// Most hints sent to one target per replay round (the replay throttle).
    pub hint_replay_batch: usize,
    /// Most actors kept in a write's causal context; the least recent are dropped.
    pub max_vector_entries: usize,
}

impl Default for ReplicationConfig {
    /// The defaults of [`NodeSettings::default`], the one place they are written.
    fn default() -> Self {
        let d = NodeSettings::default();
        ReplicationConfig {
            replicas: d.replicas as u32,
            read_quorum: d.read_quorum as u32,
            write_quorum: d.write_quorum as u32,
            virtual_nodes: d.virtual_nodes,
            request_timeout: d.request_timeout,
            conflict: d.conflict,
            read_repair: d.read_repair,
            hinted_handoff: d.hinted_handoff,
            hints_count_toward_w: d.hints_count_toward_w,
            hint_replay_interval: d.hint_replay_interval,
            hint_replay_batch: d.hint_replay_batch,
            max_vector_entries: d.max_vector_entries,
        }
    }
}

/// Limits on client input.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LimitsConfig {
    /// Longest key accepted, in bytes.
    pub max_key_bytes: usize,
    /// Largest value accepted, in bytes.
    pub max_value_bytes: usize,
    /// Most entries in one BatchPut.
    pub max_batch_entries: usize,
    /// Largest causal context a client may send, in bytes.
    pub max_context_bytes: usize,
    /// Most siblings a client write may grow a key to; a blind write past it is refused
    /// until a write with the key's context resolves them.
    pub max_siblings: usize,
    /// The clock skew tolerated between nodes: a context counter further ahead of this
    /// node's clock was issued by no node and is refused.
    #[serde(with = "humantime_serde")]
    pub max_clock_skew: Duration,
    /// Most connections open at once on the listener; one beyond is closed at once.
    pub max_connections: usize,
    /// A connection that sends nothing for this long is closed.
    #[serde(with = "humantime_serde")]
    pub idle_timeout: Duration,
    /// Most HTTP/2 streams (requests) open at once on one connection.
    pub max_streams_per_connection: u32,
    /// Most client requests in flight; one beyond is answered RESOURCE_EXHAUSTED.
    pub max_concurrent_requests: usize,
}

impl Default for LimitsConfig {
    /// The defaults of [`NodeSettings::default`].
    fn default() -> Self {
        let d = NodeSettings::default();
        LimitsConfig {
            max_key_bytes: d.max_key_bytes,
            max_value_bytes: d.max_value_bytes,
            max_batch_entries: d.max_batch_entries,
            max_context_bytes: d.max_context_bytes,
            max_siblings: d.max_siblings,
            max_clock_skew: d.max_clock_skew,
            max_connections: d.max_connections,
            idle_timeout: d.idle_timeout,
            max_streams_per_connection: d.max_streams_per_connection,
            max_concurrent_requests: d.max_concurrent_requests,
        }
    }
}

/// Rebalancing settings.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RebalanceConfig {
    /// Most bytes per second a joining node pulls from its sources (0: unthrottled).
    pub max_bytes_per_sec: u64,
}

impl Default for RebalanceConfig {
    fn default() -> Self {
        RebalanceConfig {
            max_bytes_per_sec: 32 * 1024 * 1024,
        }
    }
}

/// Default [`Config::cluster_name`].
pub const DEFAULT_CLUSTER_NAME: &str = "distkv";

/// Membership settings.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct MembershipConfig {
    /// The implementation.
    pub kind: MembershipKind,
    /// How often the node gossips (or, with `static`, pings every member).
    #[serde(with = "humantime_serde")]
    pub interval: Duration,
    /// Phi at or above which a member is dead (phi accrual); suspect from 5/8 of it.
    pub phi_threshold: f64,
    /// Peers gossiped to each round.
    pub fanout: usize,
}

impl Default for MembershipConfig {
    fn default() -> Self {
        MembershipConfig {
            kind: MembershipKind::default(),
            interval: Duration::from_secs(1),
            phi_threshold: 8.0,
            fanout: 3,
        }
    }
}

/// Anti-entropy settings (`[antientropy]`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AntiEntropyConfig {
    /// Compare every range with its live replicas every `interval`. Off, replicas that
    /// missed writes converge only through read repair, hints and `distkv-client repair`.
    pub enabled: bool,
    /// Time between the starts of two passes over every range this node replicates
    /// (a pass that overruns delays the next).
    #[serde(with = "humantime_serde")]
    pub interval: Duration,
    /// Most bytes per second a pass moves (comparison messages and pulled records).
    pub max_bytes_per_sec: u64,
}

impl Default for AntiEntropyConfig {
    fn default() -> Self {
        AntiEntropyConfig {
            enabled: true,
            interval: Duration::from_secs(60),
            max_bytes_per_sec: 8 << 20,
        }
    }
}

/// Tombstone GC settings (`[gc]`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct GcConfig {
    /// Run a GC pass every `interval`. Off, tombstones are kept for ever (the node
    /// still answers its peers' GC calls).
    pub enabled: bool,
    /// How long a tombstone is kept before GC considers purging it; must exceed the
    /// clock skew between nodes. Hints older than this are dropped at replay instead
    /// of delivered (they could bring back a key whose delete was purged).
    #[serde(with = "humantime_serde")]
    pub grace: Duration,
    /// Time between the starts of two GC passes over this node's store.
    #[serde(with = "humantime_serde")]
    pub interval: Duration,
}

impl Default for GcConfig {
    fn default() -> Self {
        GcConfig {
            enabled: true,
            grace: Duration::from_secs(24 * 3600),
            interval: Duration::from_secs(600),
        }
    }
}

/// Membership implementations.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum MembershipKind {
    /// Gossip: seeds are contact points; liveness from gossiped heartbeats (phi
    /// accrual); identity, cluster name and replication settings are checked.
    #[default]
    Gossip,
    /// The seed list is the cluster (fixed members; liveness from pings).
    Static,
}

/// Peer transport settings.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TransportConfig {
    /// The implementation.
    pub kind: TransportKind,
}

/// Transport implementations.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TransportKind {
    /// tonic gRPC over HTTP/2, one multiplexed channel per peer.
    #[default]
    Grpc,
}

/// Which storage engine the node uses, and its options.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct StorageConfig {
    /// `lsm` (default), `memory` (durable through its write-ahead log) or `plugin`.
    pub engine: EngineKind,
    /// Options of the LSM engine.
    pub lsm: distkv_engine::LsmOptions,
    /// Options of the memory engine.
    pub memory: distkv_backends::MemoryOptions,
    /// The plugin to load when `engine = "plugin"`.
    pub plugin: PluginConfig,
}

impl Default for StorageConfig {
    fn default() -> Self {
        StorageConfig {
            engine: EngineKind::Lsm,
            lsm: Default::default(),
            memory: Default::default(),
            plugin: Default::default(),
        }
    }
}

/// Storage engine implementations.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum EngineKind {
    /// The log-structured merge tree of `distkv-engine` (the default).
    Lsm,
    /// In-memory ordered map with a write-ahead log.
    Memory,
    /// A shared library loaded at start-up.
    Plugin,
}

/// A storage plugin.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct PluginConfig {
    /// Path of the shared library.
    pub path: Option<PathBuf>,
    /// Options handed to the plugin's `open`, as a JSON object (the node adds `data_dir`).
    pub options: Map<String, figment::value::Value>,
}

/// Logging settings. `RUST_LOG`, when set, overrides `level`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LogConfig {
    /// `text` or `json`.
    pub format: LogFormat,
    /// A tracing filter such as `info` or `distkv_node=debug,info`.
    pub level: String,
}

impl Default for LogConfig {
    fn default() -> Self {
        LogConfig {
            format: LogFormat::Text,
            level: "info".to_string(),
        }
    }
}

/// Log line format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line.
    Json,
}

/// Values given on the command line; each is the highest layer when present.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Flags {
    /// `--node-id`
    #[serde(skip_serializing_if = "Option::is_none")]
    pub node_id: Option<String>,
    /// `--address`
    #[serde(skip_serializing_if = "Option::is_none")]
    pub address: Option<String>,
    /// `--advertise-address`
    #[serde(skip_serializing_if = "Option::is_none")]
    pub advertise_address: Option<String>,
    /// `--peer-address`
    #[serde(skip_serializing_if = "Option::is_none")]
    pub peer_address: Option<String>,
    /// `--peer-advertise-address`
    #[serde(skip_serializing_if = "Option::is_none")]
    pub peer_advertise_address: Option<String>,
    /// `--data-dir`
    #[serde(skip_serializing_if = "Option::is_none")]
    pub data_dir: Option<PathBuf>,
    /// `--admin-address`
    #[serde(skip_serializing_if = "Option::is_none")]
    pub admin_address: Option<String>,
    /// `--seed-nodes`
    #[serde(skip_serializing_if = "Option::is_none")]
    pub seed_nodes: Option<Vec<String>>,
    /// `--cluster-name`
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cluster_name: Option<String>,
    /// `--replicas`, `--read-quorum`, `--write-quorum`, `--virtual-nodes`
    #[serde(skip_serializing_if = "ReplicationFlags::is_empty")]
    pub replication: ReplicationFlags,
    /// `--tls-enabled`, `--tls-cert-file`, `--tls-key-file`, `--tls-ca-file`,
    /// `--tls-client-auth`
    #[serde(skip_serializing_if = "TlsFlags::is_empty")]
    pub tls: TlsFlags,
}

/// TLS values given on the command line.
#[derive(Debug, Clone, Default, Serialize)]
pub struct TlsFlags {
    /// `--tls-enabled`
    #[serde(skip_serializing_if = "Option::is_none")]
    pub enabled: Option<bool>,
    /// `--tls-cert-file`
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cert_file: Option<PathBuf>,
    /// `--tls-key-file`
    #[serde(skip_serializing_if = "Option::is_none")]
    pub key_file: Option<PathBuf>,
    /// `--tls-ca-file`
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ca_file: Option<PathBuf>,
    /// `--tls-client-auth`
    #[serde(skip_serializing_if = "Option::is_none")]
    pub client_auth: Option<distkv_network::tls::ClientAuth>,
}

impl TlsFlags {
    fn is_empty(&self) -> bool {
        self.enabled.is_none()
            && self.cert_file.is_none()
            && self.key_file.is_none()
            && self.ca_file.is_none()
            && self.client_auth.is_none()
    }
}

/// Replication values given on the command line.
#[derive(Debug, Clone, Default, Serialize)]
pub struct ReplicationFlags {
    /// `--replicas`
    #[serde(skip_serializing_if = "Option::is_none")]
    pub replicas: Option<u32>,
    /// `--read-quorum`
    #[serde(skip_serializing_if = "Option::is_none")]
    pub read_quorum: Option<u32>,
    /// `--write-quorum`
    #[serde(skip_serializing_if = "Option::is_none")]
    pub write_quorum: Option<u32>,
    /// `--virtual-nodes`
    #[serde(skip_serializing_if = "Option::is_none")]
    pub virtual_nodes: Option<u32>,
}

impl ReplicationFlags {
    fn is_empty(&self) -> bool {
        self.replicas.is_none()
            && self.read_quorum.is_none()
            && self.write_quorum.is_none()
            && self.virtual_nodes.is_none()
    }
}

const FLAGS_LAYER: &str = "command-line flag";

impl Provider for Flags {
    fn metadata(&self) -> Metadata {
        Metadata::named(FLAGS_LAYER)
    }

    fn data(&self) -> Result<Map<Profile, Dict>, figment::Error> {
        Serialized::defaults(self).data()
    }
}

/// A configuration that cannot be used. The message names the setting, its value where
/// known, the layer it came from, and what is wrong.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct ConfigError(pub String);

/// The configuration and where each value came from.
pub struct LoadedConfig {
    /// The merged, validated configuration.
    pub config: Config,
    /// Things the operator should hear about that do not stop the node, one line each
    /// (such as a `DISTKV_*` environment variable that names no setting and was ignored).
    pub warnings: Vec<String>,
    figment: Figment,
}

impl LoadedConfig {
    /// Describes the layer that set `key` (a dotted path such as `replication.replicas`).
    pub fn source_of(&self, key: &str) -> String {
        describe_source(self.figment.find_metadata(key), key)
    }
}

fn describe_source(metadata: Option<&Metadata>, key: &str) -> String {
    let Some(md) = metadata else {
        return "built-in default".to_string();
    };
    if let Some(figment::Source::File(path)) = &md.source {
        return format!("config file {}", path.display());
    }
    if md.name.contains("environment") {
        return format!("environment variable {}", env_var_name(key));
    }
    if md.name == FLAGS_LAYER {
        let last = key.rsplit('.').next().unwrap_or(key).replace('_', "-");
        let flag = match key.strip_prefix("tls.") {
            Some(_) => format!("tls-{last}"),
            None => last,
        };
        return format!("command-line flag --{flag}");
    }
    "built-in default".to_string()
}

/// The `DISTKV_*` environment variables, as figment maps them to dotted keys
/// (`DISTKV_REPLICATION__READ_QUORUM` is `replication.read_quorum`). `DISTKV_CONFIG` names
/// the config file, not a setting.
fn env_layer() -> Env {
    Env::prefixed(ENV_PREFIX).split("__").ignore(&["config"])
}

/// The environment variable that sets a dotted key.
fn env_var_name(key: &str) -> String {
    format!(
        "{ENV_PREFIX}{}",
        key.replace('.', "__").to_ascii_uppercase()
    )
}

/// Keys under which any name is a setting: the storage plugin's own options.
const FREE_FORM_KEYS: &[&str] = &["storage.plugin.options"];

/// The dotted key of every setting and table of settings, lower-case, read from the
/// defaults so that a new field is known without being listed here.
fn known_keys() -> BTreeSet<String> {
    fn collect(prefix: &str, dict: &Dict, keys: &mut BTreeSet<String>) {
        for (name, value) in dict {
            let key = if prefix.is_empty() {
                name.clone()
            } else {
                format!("{prefix}.{name}")
            };
            if let Value::Dict(_, inner) = value {
                collect(&key, inner, keys);
            }
            keys.insert(key);
        }
    }
    let mut keys = BTreeSet::new();
    // Serializing the defaults cannot fail (every field is plain data); an empty set would
    // only make every variable a warning.
    if let Ok(data) = Serialized::defaults(Config::default()).data() {
        for dict in data.values() {
            collect("", dict, &mut keys);
        }
    }
    keys
}

/// Whether a dotted key (any case) names a setting.
fn names_a_setting(known: &BTreeSet<String>, key: &str) -> bool {
    let key = key.to_ascii_lowercase();
    known.contains(&key)
        || FREE_FORM_KEYS.iter().any(|free| {
            key.strip_prefix(free)
                .is_some_and(|rest| rest.starts_with('.'))
        })
}

/// One warning per `DISTKV_*` variable that names no setting. Such variables are left out
/// of the environment layer instead of stopping the node: shells carry them.
fn unknown_env_vars(known: &BTreeSet<String>) -> Vec<String> {
    let mut unknown: Vec<String> = env_layer()
        .iter()
        .map(|(key, _)| key.as_str().to_string())
        .filter(|key| !names_a_setting(known, key))
        .collect();
    unknown.sort();
    unknown
        .iter()
        .map(|key| {
            let hint = match closest_key(known, key) {
                Some(near) => format!("did you mean {}?", env_var_name(&near)),
                None => "`distkv-server --print-config` shows every setting".to_string(),
            };
            format!(
                "environment variable {} names no setting (ignored); {hint}",
                env_var_name(key)
            )
        })
        .collect()
}

/// The known key nearest to a mistyped one, if it is a typo away (a few edits).
fn closest_key(known: &BTreeSet<String>, key: &str) -> Option<String> {
    let key = key.to_ascii_lowercase();
    known
        .iter()
        .map(|k| (edit_distance(k, &key), k))
        .filter(|(d, k)| *d <= 2.max(k.len() / 6))
        .min()
        .map(|(_, k)| k.clone())
}

/// Levenshtein distance over bytes.
fn edit_distance(a: &str, b: &str) -> usize {
    let (a, b) = (a.as_bytes(), b.as_bytes());
    let mut row: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.iter().enumerate() {
        let mut diagonal = row[0];
        row[0] = i + 1;
        for (j, cb) in b.iter().enumerate() {
            let substitute = diagonal + usize::from(ca != cb);
            diagonal = row[j + 1];
            row[j + 1] = substitute.min(row[j] + 1).min(diagonal + 1);
        }
    }
    row[b.len()]
}

/// Merges the layers and validates the result.
pub fn load(config_file: Option<&Path>, flags: Flags) -> Result<LoadedConfig, ConfigError> {
    let mut figment = Figment::from(Serialized::defaults(Config::default()));
    if let Some(path) = config_file {
        if !path.is_file() {
            return Err(ConfigError(format!(
                "config file {} does not exist or is not a file (check the --config path)",
                path.display()
            )));
        }
        figment = figment.merge(Toml::file_exact(path));
    }
    let known = known_keys();
    let warnings = unknown_env_vars(&known);
    figment = figment
        .merge(env_layer().filter(move |key| names_a_setting(&known, key.as_str())))
        .merge(flags);
    let config: Config = figment.extract().map_err(|e| {
        let e = e
            .into_iter()
            .next()
            .expect("a figment error holds at least one error");
        let key = e.path.join(".");
        let source = describe_source(e.metadata.as_ref(), &key);
        let what = if key.is_empty() {
            "configuration".to_string()
        } else {
            format!("setting {key}")
        };
        ConfigError(format!("invalid {what} (from {source}): {}", e.kind))
    })?;
    let loaded = LoadedConfig {
        config,
        warnings,
        figment,
    };
    loaded.config.validate(&loaded)?;
    Ok(loaded)
}

impl Config {
    /// The effective configuration as TOML (what `--print-config` shows): every value the
    /// node runs with, defaulted `node_id` and `advertise_address` included, so that the
    /// text loads back to the same node.
    pub fn to_toml(&self) -> String {
        let me = self.local_node();
        let effective = Config {
            node_id: Some(me.id),
            advertise_address: Some(self.advertised()),
            peer_address: self
                .peer_listen()
                .ok()
                .or_else(|| self.peer_address.clone()),
            peer_advertise_address: Some(me.address),
            admin_address: Some(self.admin_address().ok().flatten().unwrap_or_default()),
            ..self.clone()
        };
        toml::to_string(&effective)
            .unwrap_or_else(|e| format!("# cannot render the configuration as TOML: {e}\n"))
    }

    /// The address peers and clients dial.
    pub fn advertised(&self) -> String {
        self.advertise_address
            .clone()
            .unwrap_or_else(|| self.address.clone())
    }

    /// The `HOST:PORT` the peer port listens on: `peer_address`, or the host of
    /// `address` with its port + 1000.
    pub fn peer_listen(&self) -> Result<String, String> {
        match &self.peer_address {
            Some(a) => Ok(a.clone()),
            None => port_plus(&self.address, PEER_PORT_OFFSET).map_err(|why| {
                format!("the default peer port (the client port + {PEER_PORT_OFFSET}) {why}; set peer_address (--peer-address)")
            }),
        }
    }

    /// The address other nodes dial for this node's peer port.
    pub fn peer_advertised(&self) -> String {
        if let Some(a) = &self.peer_advertise_address {
            return a.clone();
        }
        let listen = self
            .peer_listen()
            .unwrap_or_else(|_| self.peer_address.clone().unwrap_or_default());
        let (host, port) = split_host_port(&listen).unwrap_or(("", ""));
        let unspecified = host
            .trim_start_matches('[')
            .trim_end_matches(']')
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_unspecified());
        if self.peer_address.is_some() && !unspecified {
            return listen;
        }
        let advertised = self.advertised();
        match split_host_port(&advertised) {
            Some((adv_host, _)) => format!("{adv_host}:{port}"),
            None => listen,
        }
    }

    /// The peer listen address, resolved.
    pub fn peer_listen_addr(&self) -> Result<SocketAddr, String> {
        resolve(&self.peer_listen()?)
    }

    /// This node as the cluster knows it: its id and its peer address.
    pub fn local_node(&self) -> NodeInfo {
        let address = self.peer_advertised();
        NodeInfo {
            id: self.node_id.clone().unwrap_or_else(|| address.clone()),
            address,
        }
    }

    /// The seed nodes, parsed.
    pub fn seeds(&self) -> Result<Vec<NodeInfo>, ConfigError> {
        self.seed_nodes
            .iter()
            .filter(|s| !s.trim().is_empty())
            .map(|s| parse_seed(s).map_err(|e| ConfigError(e.to_string())))
            .collect()
    }

    /// The admin port's `HOST:PORT`: `admin_address` when set, otherwise the host of
    /// `address` with its port + 2000; `None` when turned off (an empty string).
    pub fn admin_address(&self) -> Result<Option<String>, String> {
        match self.admin_address.as_deref().map(str::trim) {
            Some("") => Ok(None),
            Some(addr) => Ok(Some(addr.to_string())),
            None => {
                let (host, port) = self
                    .address
                    .rsplit_once(':')
                    .ok_or_else(|| format!("address {} has no port to derive the admin port from: set admin_address (--admin-address HOST:PORT, or \"\" to turn it off)", self.address))?;
                let port: u16 = port.parse().map_err(|_| {
                    format!("address {} has no numeric port to derive the admin port from: set admin_address (--admin-address HOST:PORT)", self.address)
                })?;
                let admin = port.checked_add(ADMIN_PORT_OFFSET).ok_or_else(|| {
                    format!("the default admin port is the client port + {ADMIN_PORT_OFFSET}, and {port} + {ADMIN_PORT_OFFSET} is over 65535: set admin_address (--admin-address HOST:PORT, or \"\" to turn it off)")
                })?;
                Ok(Some(format!("{host}:{admin}")))
            }
        }
    }

    /// The admin listen address, resolved; `None` when the admin port is off.
    pub fn admin_listen_addr(&self) -> Result<Option<SocketAddr>, String> {
        let Some(addr) = self.admin_address()? else {
            return Ok(None);
        };
        resolve(&addr).map(Some)
    }

    /// The listen address, resolved.
    pub fn listen_addr(&self) -> Result<SocketAddr, String> {
        resolve(&self.address)
    }

    fn validate(&self, loaded: &LoadedConfig) -> Result<(), ConfigError> {
        let bad = |key: &str, value: &dyn std::fmt::Display, why: String| {
            ConfigError(format!(
                "invalid setting {key} = {value} (from {}): {why}",
                loaded.source_of(key)
            ))
        };
        let r = &self.replication;
        if r.replicas < 1 {
            return Err(bad(
                "replication.replicas",
                &r.replicas,
                "must be at least 1".into(),
            ));
        }
        for (key, v) in [
            ("replication.read_quorum", r.read_quorum),
            ("replication.write_quorum", r.write_quorum),
        ] {
            if v < 1 {
                return Err(bad(key, &v, "must be at least 1".into()));
            }
            if v > r.replicas {
                return Err(bad(
                    key,
                    &v,
                    format!(
                        "must not exceed replication.replicas = {} (from {}); lower the quorum or raise the replica count",
                        r.replicas,
                        loaded.source_of("replication.replicas")
                    ),
                ));
            }
        }
        if r.virtual_nodes < 1 || r.virtual_nodes > 4096 {
            return Err(bad(
                "replication.virtual_nodes",
                &r.virtual_nodes,
                "must be from 1 to 4096".into(),
            ));
        }
        if r.hint_replay_interval.is_zero() {
            return Err(bad(
                "replication.hint_replay_interval",
                &"0s",
                "must be longer than zero".into(),
            ));
        }
        if r.hint_replay_batch == 0 {
            return Err(bad(
                "replication.hint_replay_batch",
                &0,
                "must be at least 1".into(),
            ));
        }
        if r.max_vector_entries < 1 {
            return Err(bad(
                "replication.max_vector_entries",
                &0,
                "must be at least 1".into(),
            ));
        }
        if r.request_timeout.is_zero() {
            return Err(bad(
                "replication.request_timeout",
                &"0s",
                "must be longer than zero".into(),
            ));
        }
        let addr = self
            .listen_addr()
            .map_err(|why| bad("address", &self.address, why))?;
        match &self.advertise_address {
            Some(adv) => {
                parse_seed(adv)
                    .map_err(|_| bad("advertise_address", adv, "must be HOST:PORT".into()))?;
            }
            None if addr.ip().is_unspecified() => {
                return Err(bad(
                    "address",
                    &self.address,
                    "listens on all interfaces, so peers cannot dial it: set advertise_address (--advertise-address) to a reachable HOST:PORT".into(),
                ));
            }
            None => {}
        }
        let peer = self.peer_listen_addr().map_err(|why| {
            bad(
                "peer_address",
                &self.peer_address.as_deref().unwrap_or("(default)"),
                why,
            )
        })?;
        if peer.port() != 0 && peer == addr {
            return Err(bad(
                "peer_address",
                &peer,
                "must differ from address: the client and peer ports are separate listeners".into(),
            ));
        }
        if let Some(adv) = &self.peer_advertise_address {
            parse_seed(adv)
                .map_err(|_| bad("peer_advertise_address", adv, "must be HOST:PORT".into()))?;
        } else if peer.ip().is_unspecified() && self.advertise_address.is_none() {
            return Err(bad(
                "peer_address",
                &peer,
                "listens on all interfaces, so peers cannot dial it: set peer_advertise_address (--peer-advertise-address) or advertise_address".into(),
            ));
        }
        if self.tls.enabled {
            for (key, v) in [
                ("tls.cert_file", &self.tls.cert_file),
                ("tls.key_file", &self.tls.key_file),
                ("tls.ca_file", &self.tls.ca_file),
            ] {
                if v.is_none() {
                    return Err(bad(
                        key,
                        &"(unset)",
                        format!("TLS is enabled (from {}) and needs the node certificate, its key and the cluster CA: set tls.cert_file, tls.key_file and tls.ca_file (--tls-cert-file, --tls-key-file, --tls-ca-file; `distkv-server cert` makes them)", loaded.source_of("tls.enabled")),
                    ));
                }
            }
        }
        let admin = self.admin_address.as_deref().unwrap_or("(default)");
        let admin_addr = self
            .admin_listen_addr()
            .map_err(|why| bad("admin_address", &admin, why))?;
        if admin_addr.is_some_and(|a| a == addr) {
            return Err(bad(
                "admin_address",
                &admin,
                format!(
                    "is the client address {addr}: choose another port for the admin HTTP port"
                ),
            ));
        }
        if let Some(id) = &self.node_id {
            if id.trim().is_empty()
                || id.chars().any(char::is_whitespace)
                || id.contains(',')
                || id.contains('=')
            {
                return Err(bad(
                    "node_id",
                    &format!("{id:?}"),
                    "must be non-empty, without spaces, commas or '='".into(),
                ));
            }
        }
        self.seeds()
            .map_err(|e| bad("seed_nodes", &self.seed_nodes.join(","), e.0))?;
        let name = &self.cluster_name;
        if name.is_empty()
            || name.len() > 128
            || name.chars().any(|c| c.is_whitespace() || c.is_control())
        {
            return Err(bad(
                "cluster_name",
                &format!("{name:?}"),
                "must be 1 to 128 bytes without spaces".into(),
            ));
        }
        let m = &self.membership;
        if !(m.phi_threshold.is_finite() && m.phi_threshold >= 1.0) {
            return Err(bad(
                "membership.phi_threshold",
                &m.phi_threshold,
                "must be a number of at least 1 (default 8; higher detects later and more surely)"
                    .into(),
            ));
        }
        if m.interval < Duration::from_millis(10) || m.interval > Duration::from_secs(60) {
            return Err(bad(
                "membership.interval",
                &format!("{:?}", m.interval),
                "must be from 10ms to 60s (default 1s)".into(),
            ));
        }
        if m.fanout == 0 || m.fanout > 64 {
            return Err(bad(
                "membership.fanout",
                &m.fanout,
                "must be from 1 to 64 (default 3)".into(),
            ));
        }
        let ae = &self.antientropy;
        if ae.interval < Duration::from_millis(100)
            || ae.interval > Duration::from_secs(7 * 24 * 3600)
        {
            return Err(bad(
                "antientropy.interval",
                &format!("{:?}", ae.interval),
                "must be from 100ms to 7 days (default 60s)".into(),
            ));
        }
        if ae.max_bytes_per_sec < 64 * 1024 {
            return Err(bad(
                "antientropy.max_bytes_per_sec",
                &ae.max_bytes_per_sec,
                "must be at least 65536 (64 KiB/s; default 8388608, 8 MiB/s): below it a pass over a large store never ends".into(),
            ));
        }
        let gc = &self.gc;
        if gc.grace.is_zero() {
            return Err(bad(
                "gc.grace",
                &format!("{:?}", gc.grace),
                "must be more than 0 (default 24h): a tombstone needs time to reach every replica, and more than the clock skew between nodes".into(),
            ));
        }
        if gc.interval < Duration::from_millis(100)
            || gc.interval > Duration::from_secs(7 * 24 * 3600)
        {
            return Err(bad(
                "gc.interval",
                &format!("{:?}", gc.interval),
                "must be from 100ms to 7 days (default 10m)".into(),
            ));
        }
        let l = &self.limits;
        for (key, v) in [
            ("limits.max_key_bytes", l.max_key_bytes),
            ("limits.max_value_bytes", l.max_value_bytes),
            ("limits.max_batch_entries", l.max_batch_entries),
            ("limits.max_siblings", l.max_siblings),
        ] {
            if v == 0 {
                return Err(bad(key, &v, "must be at least 1".into()));
            }
        }
        if l.max_key_bytes > 16 * 1024 * 1024 || l.max_value_bytes > 1024 * 1024 * 1024 {
            return Err(bad(
                "limits",
                &format!(
                    "max_key_bytes = {}, max_value_bytes = {}",
                    l.max_key_bytes, l.max_value_bytes
                ),
                "keys are limited to 16 MiB and values to 1 GiB".into(),
            ));
        }
        if self.storage.engine == EngineKind::Plugin {
            match &self.storage.plugin.path {
                None => {
                    return Err(bad(
                        "storage.engine",
                        &"plugin",
                        "needs storage.plugin.path (DISTKV_STORAGE__PLUGIN__PATH) naming the shared library".into(),
                    ))
                }
                Some(p) if !p.is_file() => {
                    return Err(bad("storage.plugin.path", &p.display(), "no such file".into()));
                }
                Some(_) => {}
            }
        }
        if self.storage.engine == EngineKind::Lsm {
            if let Err(distkv_engine::Error::InvalidOption { option, reason }) =
                self.storage.lsm.validate()
            {
                let key = format!("storage.lsm.{option}");
                return Err(ConfigError(format!(
                    "invalid setting {key} (from {}): {reason}",
                    loaded.source_of(&key)
                )));
            }
        }
        check_data_dir(&self.data_dir)
            .map_err(|why| bad("data_dir", &self.data_dir.display(), why))?;
        if let Err(why) = crate::logging::parse_filter(&self.log.level) {
            return Err(bad("log.level", &format!("{:?}", self.log.level), why));
        }
        Ok(())
    }
}

/// The default peer port is the client port plus this.
pub const PEER_PORT_OFFSET: u16 = 1000;

fn split_host_port(addr: &str) -> Option<(&str, &str)> {
    addr.rsplit_once(':')
}

/// `HOST:PORT` with `offset` added to the port.
pub fn port_plus(addr: &str, offset: u16) -> Result<String, String> {
    let (host, port) =
        split_host_port(addr).ok_or_else(|| format!("cannot be derived from {addr:?}: no port"))?;
    let port: u16 = port
        .parse()
        .map_err(|_| format!("cannot be derived from {addr:?}: bad port"))?;
    let derived = port.checked_add(offset).ok_or_else(|| {
        format!(
            "would be {} (over 65535)",
            u32::from(port) + u32::from(offset)
        )
    })?;
    Ok(format!("{host}:{derived}"))
}

/// The default admin port is the client port plus this (the peer port is + 1000).
pub const ADMIN_PORT_OFFSET: u16 = 2000;

/// A `HOST:PORT` address, resolved.
fn resolve(address: &str) -> Result<SocketAddr, String> {
    if let Ok(addr) = address.parse::<SocketAddr>() {
        return Ok(addr);
    }
    address
        .to_socket_addrs()
        .map_err(|e| format!("not a HOST:PORT address ({e})"))?
        .next()
        .ok_or_else(|| "the host name resolves to no address".to_string())
}

/// Creates the data directory if needed and proves it is writable.
fn check_data_dir(dir: &Path) -> Result<(), String> {
    std::fs::create_dir_all(dir).map_err(|e| format!("cannot create the directory: {e}"))?;
    let probe = dir.join(".distkv-write-probe");
    std::fs::write(&probe, b"probe").map_err(|e| format!("the directory is not writable: {e}"))?;
    std::fs::remove_file(&probe)
        .map_err(|e| format!("cannot remove a file in the directory: {e}"))?;
    Ok(())
}

fn list_or_comma_string<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Vec<String>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum ListOrString {
        List(Vec<String>),
        Text(String),
    }
    Ok(match ListOrString::deserialize(d)? {
        ListOrString::List(l) => l,
        ListOrString::Text(s) => s
            .split(',')
            .map(|p| p.trim().to_string())
            .filter(|p| !p.is_empty())
            .collect(),
    })
}

#[cfg(test)]
// figment's Jail closures return figment::Error, which is large; that is its API.
#[allow(clippy::result_large_err)]
mod tests {
    use super::*;
    use figment::Jail;

    fn flags_with_replicas(n: u32) -> Flags {
        Flags {
            replication: ReplicationFlags {
                replicas: Some(n),
                ..Default::default()
            },
            ..Default::default()
        }
    }

    fn err_of(r: Result<LoadedConfig, ConfigError>) -> String {
        match r {
            Ok(_) => panic!("expected a configuration error"),
            Err(e) => e.0,
        }
    }

    #[test]
    fn defaults_run_one_node_on_localhost() {
        Jail::expect_with(|jail| {
            let loaded = load(None, Flags::default()).unwrap();
            assert_eq!(loaded.config.address, "127.0.0.1:8080");
            // The node is known to its peers by its peer address: the client port + 1000.
            assert_eq!(loaded.config.local_node().id, "127.0.0.1:9080");
            assert_eq!(loaded.config.local_node().address, "127.0.0.1:9080");
            assert_eq!(loaded.config.peer_listen().unwrap(), "127.0.0.1:9080");
            assert_eq!(loaded.config.data_dir, PathBuf::from("./data"));
            assert!(jail.directory().join("data").is_dir());
            assert_eq!(loaded.source_of("replication.replicas"), "built-in default");
            Ok(())
        });
    }

    #[test]
    fn file_then_env_then_flag_take_precedence() {
        Jail::expect_with(|jail| {
            jail.create_file(
                "node.toml",
                "node_id = \"from-file\"\naddress = \"127.0.0.1:9001\"\n[replication]\nreplicas = 5\nread_quorum = 3\nwrite_quorum = 3\nvirtual_nodes = 7\n",
            )?;
            let file = Some(Path::new("node.toml"));
            let c = load(file, Flags::default()).unwrap();
            assert_eq!(
                (
                    c.config.replication.replicas,
                    c.config.replication.virtual_nodes
                ),
                (5, 7)
            );
            assert_eq!(c.source_of("replication.replicas"), "config file node.toml");

            jail.set_env("DISTKV_REPLICATION__VIRTUAL_NODES", "9");
            jail.set_env("DISTKV_NODE_ID", "from-env");
            jail.set_env("DISTKV_SEED_NODES", "a=127.0.0.1:1,127.0.0.1:2");
            let c = load(file, Flags::default()).unwrap();
            assert_eq!(c.config.replication.virtual_nodes, 9);
            assert_eq!(
                c.config.replication.replicas, 5,
                "file value survives where env is silent"
            );
            assert_eq!(c.config.node_id.as_deref(), Some("from-env"));
            assert_eq!(c.config.seed_nodes, vec!["a=127.0.0.1:1", "127.0.0.1:2"]);
            assert_eq!(
                c.source_of("replication.virtual_nodes"),
                "environment variable DISTKV_REPLICATION__VIRTUAL_NODES"
            );

            let flags = Flags {
                node_id: Some("from-flag".into()),
                replication: ReplicationFlags {
                    virtual_nodes: Some(11),
                    ..Default::default()
                },
                ..Default::default()
            };
            let c = load(file, flags).unwrap();
            assert_eq!(c.config.replication.virtual_nodes, 11);
            assert_eq!(c.config.node_id.as_deref(), Some("from-flag"));
            assert_eq!(c.config.address, "127.0.0.1:9001");
            assert_eq!(
                c.source_of("replication.virtual_nodes"),
                "command-line flag --virtual-nodes"
            );
            Ok(())
        });
    }

    #[test]
    fn quorum_above_replicas_names_both_sources() {
        Jail::expect_with(|jail| {
            jail.set_env("DISTKV_REPLICATION__READ_QUORUM", "3");
            let msg = err_of(load(None, flags_with_replicas(2)));
            assert!(msg.contains("replication.read_quorum = 3"), "{msg}");
            assert!(
                msg.contains("environment variable DISTKV_REPLICATION__READ_QUORUM"),
                "{msg}"
            );
            assert!(msg.contains("command-line flag --replicas"), "{msg}");
            Ok(())
        });
        Jail::expect_with(|_| {
            let flags = Flags {
                replication: ReplicationFlags {
                    replicas: Some(3),
                    write_quorum: Some(4),
                    ..Default::default()
                },
                ..Default::default()
            };
            let msg = err_of(load(None, flags));
            assert!(
                msg.contains(
                    "replication.write_quorum = 4 (from command-line flag --write-quorum)"
                ),
                "{msg}"
            );
            Ok(())
        });
    }

    #[test]
    fn each_invalid_setting_is_named_with_its_source() {
        Jail::expect_with(|jail| {
            let msg = err_of(load(None, flags_with_replicas(0)));
            assert!(
                msg.contains("replication.replicas = 0 (from command-line flag --replicas)"),
                "{msg}"
            );

            jail.create_file("bad-engine.toml", "[storage]\nengine = \"rocks\"\n")?;
            let msg = err_of(load(Some(Path::new("bad-engine.toml")), Flags::default()));
            assert!(msg.contains("storage.engine"), "{msg}");
            assert!(msg.contains("bad-engine.toml"), "{msg}");
            assert!(msg.contains("rocks"), "{msg}");

            jail.set_env("DISTKV_ADDRESS", "not-an-address");
            let msg = err_of(load(None, Flags::default()));
            assert!(
                msg.contains("address = not-an-address (from environment variable DISTKV_ADDRESS)"),
                "{msg}"
            );
            jail.set_env("DISTKV_ADDRESS", "0.0.0.0:8080");
            let msg = err_of(load(None, Flags::default()));
            assert!(msg.contains("advertise_address"), "{msg}");
            jail.set_env("DISTKV_ADVERTISE_ADDRESS", "10.1.2.3:8080");
            assert_eq!(
                load(None, Flags::default())
                    .unwrap()
                    .config
                    .local_node()
                    .address,
                "10.1.2.3:9080",
                "the peer address advertised is the advertise host with the peer port"
            );

            jail.create_file("blocker", "a file where a directory should be")?;
            let flags = Flags {
                data_dir: Some(PathBuf::from("blocker/data")),
                ..Default::default()
            };
            let msg = err_of(load(None, flags));
            assert!(
                msg.contains("data_dir = blocker/data (from command-line flag --data-dir)"),
                "{msg}"
            );

            let msg = err_of(load(Some(Path::new("missing.toml")), Flags::default()));
            assert!(msg.contains("missing.toml does not exist"), "{msg}");

            jail.create_file("typo.toml", "[replication]\nreplicaz = 3\n")?;
            let msg = err_of(load(Some(Path::new("typo.toml")), Flags::default()));
            assert!(msg.contains("replicaz"), "{msg}");

            jail.create_file(
                "kinds.toml",
                "[membership]\nkind = \"static\"\n[transport]\nkind = \"grpc\"\n",
            )?;
            let loaded = load(Some(Path::new("kinds.toml")), Flags::default()).unwrap();
            assert_eq!(loaded.config.membership.kind, MembershipKind::Static);
            assert_eq!(loaded.config.transport.kind, TransportKind::Grpc);
            jail.create_file("gossip.toml", "[membership]\nkind = \"carrier-pigeon\"\n")?;
            let msg = err_of(load(Some(Path::new("gossip.toml")), Flags::default()));
            assert!(msg.contains("membership.kind"), "{msg}");
            assert!(
                msg.contains("carrier-pigeon") && msg.contains("gossip.toml"),
                "{msg}"
            );

            let defaults = load(None, Flags::default()).unwrap().config;
            assert_eq!(defaults.membership.kind, MembershipKind::Gossip);
            assert_eq!(defaults.cluster_name, "distkv");
            assert_eq!(defaults.membership.phi_threshold, 8.0);
            jail.set_env("DISTKV_CLUSTER_NAME", "blue");
            jail.set_env("DISTKV_MEMBERSHIP__PHI_THRESHOLD", "12");
            let env = load(None, Flags::default()).unwrap().config;
            assert_eq!(env.cluster_name, "blue");
            assert_eq!(env.membership.phi_threshold, 12.0);
            let flags = Flags {
                cluster_name: Some("green".into()),
                ..Flags::default()
            };
            assert_eq!(load(None, flags).unwrap().config.cluster_name, "green");
            jail.set_env("DISTKV_CLUSTER_NAME", "has space");
            let msg = err_of(load(None, Flags::default()));
            assert!(
                msg.contains("cluster_name") && msg.contains("without spaces"),
                "{msg}"
            );
            jail.set_env("DISTKV_CLUSTER_NAME", "blue");
            jail.set_env("DISTKV_MEMBERSHIP__PHI_THRESHOLD", "0.5");
            let msg = err_of(load(None, Flags::default()));
            assert!(msg.contains("membership.phi_threshold"), "{msg}");
            jail.set_env("DISTKV_MEMBERSHIP__PHI_THRESHOLD", "8");
            jail.set_env("DISTKV_MEMBERSHIP__INTERVAL", "1h");
            let msg = err_of(load(None, Flags::default()));
            assert!(msg.contains("membership.interval"), "{msg}");
            jail.set_env("DISTKV_MEMBERSHIP__INTERVAL", "1s");

            jail.create_file("plugin.toml", "[storage]\nengine = \"plugin\"\n")?;
            let msg = err_of(load(Some(Path::new("plugin.toml")), Flags::default()));
            assert!(msg.contains("storage.plugin.path"), "{msg}");
            Ok(())
        });
    }

    #[test]
    fn antientropy_settings_default_load_and_are_checked() {
        Jail::expect_with(|jail| {
            jail.clear_env();
            let defaults = load(None, Flags::default()).unwrap().config.antientropy;
            assert!(defaults.enabled);
            assert_eq!(defaults.interval, Duration::from_secs(60));
            assert_eq!(defaults.max_bytes_per_sec, 8 << 20);
            jail.create_file(
                "ae.toml",
                "[antientropy]\nenabled = false\ninterval = \"5m\"\nmax_bytes_per_sec = 1048576\n",
            )?;
            let file = load(Some(Path::new("ae.toml")), Flags::default())
                .unwrap()
                .config
                .antientropy;
            assert_eq!(
                file,
                AntiEntropyConfig {
                    enabled: false,
                    interval: Duration::from_secs(300),
                    max_bytes_per_sec: 1 << 20,
                }
            );
            jail.set_env("DISTKV_ANTIENTROPY__INTERVAL", "2s");
            let env = load(Some(Path::new("ae.toml")), Flags::default())
                .unwrap()
                .config;
            assert_eq!(env.antientropy.interval, Duration::from_secs(2));
            jail.set_env("DISTKV_ANTIENTROPY__INTERVAL", "1ms");
            let msg = err_of(load(None, Flags::default()));
            assert!(
                msg.contains("antientropy.interval")
                    && msg.contains("DISTKV_ANTIENTROPY__INTERVAL"),
                "{msg}"
            );
            jail.set_env("DISTKV_ANTIENTROPY__INTERVAL", "1s");
            jail.set_env("DISTKV_ANTIENTROPY__MAX_BYTES_PER_SEC", "10");
            let msg = err_of(load(None, Flags::default()));
            assert!(msg.contains("antientropy.max_bytes_per_sec"), "{msg}");
            jail.create_file("typo.toml", "[antientropy]\nintervall = \"1s\"\n")?;
            jail.set_env("DISTKV_ANTIENTROPY__MAX_BYTES_PER_SEC", "65536");
            let msg = err_of(load(Some(Path::new("typo.toml")), Flags::default()));
            assert!(msg.contains("intervall"), "{msg}");
            Ok(())
        });
    }

    #[test]
    fn gc_settings_default_load_and_are_checked() {
        Jail::expect_with(|jail| {
            jail.clear_env();
            let defaults = load(None, Flags::default()).unwrap().config.gc;
            assert_eq!(defaults, GcConfig::default());
            assert!(defaults.enabled);
            assert_eq!(defaults.grace, Duration::from_secs(24 * 3600));
            assert_eq!(defaults.interval, Duration::from_secs(600));
            jail.create_file(
                "gc.toml",
                "[gc]\nenabled = false\ngrace = \"2s\"\ninterval = \"500ms\"\n",
            )?;
            let file = load(Some(Path::new("gc.toml")), Flags::default())
                .unwrap()
                .config
                .gc;
            assert_eq!(
                file,
                GcConfig {
                    enabled: false,
                    grace: Duration::from_secs(2),
                    interval: Duration::from_millis(500),
                }
            );
            jail.set_env("DISTKV_GC__GRACE", "3h");
            let env = load(Some(Path::new("gc.toml")), Flags::default())
                .unwrap()
                .config;
            assert_eq!(env.gc.grace, Duration::from_secs(3 * 3600));
            jail.set_env("DISTKV_GC__GRACE", "0s");
            let msg = err_of(load(None, Flags::default()));
            assert!(
                msg.contains("gc.grace") && msg.contains("DISTKV_GC__GRACE"),
                "{msg}"
            );
            jail.set_env("DISTKV_GC__GRACE", "1h");
            jail.set_env("DISTKV_GC__INTERVAL", "1ms");
            let msg = err_of(load(None, Flags::default()));
            assert!(
                msg.contains("gc.interval") && msg.contains("DISTKV_GC__INTERVAL"),
                "{msg}"
            );
            // The environment would override the files below.
            jail.clear_env();
            jail.create_file("typo.toml", "[gc]\ngrase = \"1s\"\n")?;
            let msg = err_of(load(Some(Path::new("typo.toml")), Flags::default()));
            assert!(msg.contains("grase"), "{msg}");
            jail.create_file("bad.toml", "[gc]\ngrace = \"soon\"\n")?;
            let msg = err_of(load(Some(Path::new("bad.toml")), Flags::default()));
            assert!(msg.contains("grace"), "{msg}");
            Ok(())
        });
    }

    #[test]
    fn an_unknown_environment_variable_is_a_warning_and_is_ignored() {
        Jail::expect_with(|jail| {
            jail.clear_env();
            jail.create_file("node.toml", "[replication]\nreplicas = 2\n")?;
            jail.set_env("DISTKV_NOT_A_SETTING", "1");
            jail.set_env("DISTKV_REPLICATION__REPLICAZ", "3");
            jail.set_env("DISTKV_CONFIG", "node.toml");
            jail.set_env("DISTKV_NODE_ID", "from-env");
            jail.set_env("DISTKV_STORAGE__PLUGIN__OPTIONS__CACHE_MB", "64");
            let loaded = load(Some(Path::new("node.toml")), Flags::default()).unwrap();
            let w = &loaded.warnings;
            assert_eq!(w.len(), 2, "{w:?}");
            assert!(
                w[0].starts_with(
                    "environment variable DISTKV_NOT_A_SETTING names no setting (ignored)"
                ),
                "{w:?}"
            );
            assert!(
                w[1].contains("DISTKV_REPLICATION__REPLICAZ")
                    && w[1].contains("did you mean DISTKV_REPLICATION__REPLICAS?"),
                "{w:?}"
            );
            assert!(!w.iter().any(|w| w.contains("DISTKV_CONFIG")), "{w:?}");
            assert_eq!(loaded.config.node_id.as_deref(), Some("from-env"));
            assert_eq!(loaded.config.replication.replicas, 2);
            assert_eq!(
                loaded.source_of("replication.replicas"),
                "config file node.toml"
            );
            assert_eq!(
                loaded.source_of("node_id"),
                "environment variable DISTKV_NODE_ID"
            );
            assert!(loaded
                .config
                .storage
                .plugin
                .options
                .contains_key("cache_mb"));

            jail.clear_env();
            assert!(load(None, Flags::default()).unwrap().warnings.is_empty());
            Ok(())
        });
    }

    #[test]
    fn an_unknown_key_in_a_file_is_still_an_error() {
        Jail::expect_with(|jail| {
            jail.clear_env();
            jail.create_file("typo.toml", "[replication]\nreplicaz = 3\n")?;
            let msg = err_of(load(Some(Path::new("typo.toml")), Flags::default()));
            assert!(msg.contains("setting replication.replicaz"), "{msg}");
            assert!(msg.contains("config file typo.toml"), "{msg}");
            jail.create_file("top.toml", "not_a_setting = 1\n")?;
            let msg = err_of(load(Some(Path::new("top.toml")), Flags::default()));
            assert!(
                msg.contains("not_a_setting") && msg.contains("top.toml"),
                "{msg}"
            );
            Ok(())
        });
    }

    #[test]
    fn an_invalid_log_level_is_named_with_its_value_and_source() {
        Jail::expect_with(|jail| {
            jail.clear_env();
            jail.create_file("loud.toml", "[log]\nlevel = \"loud\"\n")?;
            let msg = err_of(load(Some(Path::new("loud.toml")), Flags::default()));
            assert!(
                msg.contains("invalid setting log.level = \"loud\" (from config file loud.toml)"),
                "{msg}"
            );
            jail.set_env("DISTKV_LOG__LEVEL", "distkv_node=shouty");
            let msg = err_of(load(None, Flags::default()));
            assert!(
                msg.contains("log.level = \"distkv_node=shouty\" (from environment variable DISTKV_LOG__LEVEL)"),
                "{msg}"
            );
            jail.set_env("DISTKV_LOG__LEVEL", "warn,distkv_node=debug");
            assert_eq!(
                load(None, Flags::default()).unwrap().config.log.level,
                "warn,distkv_node=debug"
            );
            Ok(())
        });
    }

    #[test]
    fn printed_config_shows_the_defaulted_identity() {
        Jail::expect_with(|jail| {
            jail.clear_env();
            let flags = Flags {
                address: Some("127.0.0.1:9005".into()),
                ..Default::default()
            };
            let first = load(None, flags).unwrap().config;
            assert_eq!(first.node_id, None);
            let printed: toml::Value = toml::from_str(&first.to_toml()).unwrap();
            assert_eq!(printed["node_id"].as_str(), Some("127.0.0.1:10005"));
            assert_eq!(printed["peer_address"].as_str(), Some("127.0.0.1:10005"));
            assert_eq!(
                printed["peer_advertise_address"].as_str(),
                Some("127.0.0.1:10005")
            );
            assert_eq!(
                printed["advertise_address"].as_str(),
                Some("127.0.0.1:9005")
            );
            jail.create_file("printed.toml", &first.to_toml())?;
            let again = load(Some(Path::new("printed.toml")), Flags::default())
                .unwrap()
                .config;
            assert_eq!(first.to_toml(), again.to_toml());
            assert_eq!(again.local_node(), first.local_node());
            Ok(())
        });
    }

    #[test]
    fn the_peer_port_is_derived_checked_and_named() {
        Jail::expect_with(|jail| {
            jail.clear_env();
            // The admin port (the client port + 2000) would overflow first near 65535.
            jail.set_env("DISTKV_ADMIN_ADDRESS", "");
            let at = |address: &str, peer: Option<&str>| Flags {
                address: Some(address.into()),
                peer_address: peer.map(Into::into),
                ..Default::default()
            };
            let msg = err_of(load(None, at("127.0.0.1:65000", None)));
            assert!(
                msg.contains("peer_address") && msg.contains("65535"),
                "{msg}"
            );
            let ok = load(None, at("127.0.0.1:65000", Some("127.0.0.1:7000")))
                .unwrap()
                .config;
            assert_eq!(ok.local_node().address, "127.0.0.1:7000");
            let msg = err_of(load(None, at("127.0.0.1:7000", Some("127.0.0.1:7000"))));
            assert!(msg.contains("must differ from address"), "{msg}");
            // Listening for peers on every interface: the advertise host is dialled.
            let flags = Flags {
                advertise_address: Some("10.0.0.5:7001".into()),
                ..at("0.0.0.0:7001", Some("0.0.0.0:7501"))
            };
            let c = load(None, flags).unwrap().config;
            assert_eq!(c.local_node().address, "10.0.0.5:7501");
            let msg = err_of(load(None, at("127.0.0.1:7001", Some("0.0.0.0:7501"))));
            assert!(msg.contains("peer_advertise_address"), "{msg}");
            Ok(())
        });
    }

    #[test]
    fn tls_needs_its_three_files_and_names_the_flag() {
        Jail::expect_with(|jail| {
            jail.clear_env();
            let flags = Flags {
                tls: TlsFlags {
                    enabled: Some(true),
                    cert_file: Some("node.crt".into()),
                    ..Default::default()
                },
                ..Default::default()
            };
            let msg = err_of(load(None, flags));
            assert!(msg.contains("tls.key_file"), "{msg}");
            assert!(msg.contains("--tls-enabled"), "{msg}");
            jail.set_env("DISTKV_TLS__ENABLED", "true");
            jail.set_env("DISTKV_TLS__CERT_FILE", "a.crt");
            jail.set_env("DISTKV_TLS__KEY_FILE", "a.key");
            jail.set_env("DISTKV_TLS__CA_FILE", "ca.crt");
            jail.set_env("DISTKV_TLS__CLIENT_AUTH", "required");
            let c = load(None, Flags::default()).unwrap().config;
            let files = c.tls.files().expect("all three files are set");
            assert_eq!(files.client_auth, distkv_network::tls::ClientAuth::Required);
            assert_eq!(files.ca, PathBuf::from("ca.crt"));
            Ok(())
        });
    }

    #[test]
    fn printed_config_loads_back_to_the_same_config() {
        Jail::expect_with(|jail| {
            let flags = Flags {
                node_id: Some("n1".into()),
                seed_nodes: Some(vec!["n2=127.0.0.1:2".into()]),
                ..flags_with_replicas(3)
            };
            let first = load(None, flags).unwrap().config;
            jail.create_file("printed.toml", &first.to_toml())?;
            let again = load(Some(Path::new("printed.toml")), Flags::default())
                .unwrap()
                .config;
            assert_eq!(first.to_toml(), again.to_toml());
            assert_eq!(again.replication.replicas, 3);
            assert_eq!(again.seed_nodes, vec!["n2=127.0.0.1:2"]);
            assert_eq!(
                again.advertise_address.as_deref(),
                Some("127.0.0.1:8080"),
                "the defaulted advertise address is printed"
            );
            Ok(())
        });
    }

    #[test]
    fn the_admin_port_defaults_to_the_client_port_plus_2000_and_can_be_turned_off() {
        Jail::expect_with(|jail| {
            jail.clear_env();
            let at = |address: &str| Flags {
                address: Some(address.into()),
                ..Default::default()
            };
            let c = load(None, at("127.0.0.1:7001")).unwrap().config;
            assert_eq!(
                c.admin_address().unwrap().as_deref(),
                Some("127.0.0.1:9001")
            );
            let printed: toml::Value = toml::from_str(&c.to_toml()).unwrap();
            assert_eq!(printed["admin_address"].as_str(), Some("127.0.0.1:9001"));
            let c = load(None, at("localhost:8080")).unwrap().config;
            assert_eq!(
                c.admin_address().unwrap().as_deref(),
                Some("localhost:10080")
            );

            jail.set_env("DISTKV_ADMIN_ADDRESS", "");
            let c = load(None, at("127.0.0.1:7001")).unwrap().config;
            assert_eq!(c.admin_address().unwrap(), None);
            let printed: toml::Value = toml::from_str(&c.to_toml()).unwrap();
            assert_eq!(
                printed["admin_address"].as_str(),
                Some(""),
                "off stays off when printed"
            );
            jail.clear_env();

            let err = err_of(load(None, at("127.0.0.1:64000")));
            assert!(
                err.contains("admin_address")
                    && err.contains("over 65535")
                    && err.contains("--admin-address"),
                "{err}"
            );
            let flags = Flags {
                admin_address: Some("127.0.0.1:64001".into()),
                ..at("127.0.0.1:64000")
            };
            let c = load(None, flags).unwrap().config;
            assert_eq!(c.admin_listen_addr().unwrap().unwrap().port(), 64001);
            let flags = Flags {
                admin_address: Some("127.0.0.1:7001".into()),
                ..at("127.0.0.1:7001")
            };
            let err = err_of(load(None, flags));
            assert!(err.contains("command-line flag --admin-address"), "{err}");
            Ok(())
        });
    }
}
