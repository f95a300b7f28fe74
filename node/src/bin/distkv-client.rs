//! `distkv-client`: talk to a DistKV node from the command line.
//!
//! Exit codes: 0 success; 1 key not found (`get`); 2 bad usage or input; 3 the server
//! could not be reached or timed out; 4 the server refused or failed the request.

use std::io::{Read, Write};
use std::process::ExitCode;
use std::time::Duration;

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine as _;
use clap::{Parser, Subcommand, ValueEnum};
use distkv_proto::v1::key_value_client::KeyValueClient;
use distkv_proto::v1::{
    BatchPutRequest, CleanupRequest, Consistency, DecommissionRequest, DeleteRequest, GetRequest,
    KeyValuePair, PutRequest, RemoveNodeRequest, RepairRequest, StatusRequest,
};
use tonic::transport::Channel;

#[derive(Parser, Debug)]
#[command(name = "distkv-client", version, about = "Talk to a DistKV node")]
struct Args {
    /// Node to talk to.
    #[arg(long, default_value = "127.0.0.1:8080", value_name = "HOST:PORT")]
    server: String,
    /// Deadline of the whole request, e.g. 500ms, 5s, 1m.
    #[arg(long, default_value = "5s", value_parser = humantime::parse_duration)]
    timeout: Duration,
    /// Replicas that must answer (default: the server's R or W).
    #[arg(long, value_enum)]
    consistency: Option<Level>,
    /// Print results as JSON.
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    tls: TlsArgs,
    #[command(subcommand)]
    command: Command,
}

/// How to reach a node whose client port serves TLS.
#[derive(clap::Args, Debug, Clone, Default)]
struct TlsArgs {
    /// Talk TLS to the node.
    #[arg(long)]
    tls_enabled: bool,
    /// CA certificate that signed the node's certificate (PEM), e.g. certs/ca.crt.
    #[arg(long, value_name = "FILE")]
    tls_ca_file: Option<std::path::PathBuf>,
    /// Client certificate (PEM), for nodes that ask for one.
    #[arg(long, value_name = "FILE", requires = "tls_key_file")]
    tls_cert_file: Option<std::path::PathBuf>,
    /// The client certificate's private key (PEM).
    #[arg(long, value_name = "FILE", requires = "tls_cert_file")]
    tls_key_file: Option<std::path::PathBuf>,
    /// Name to check the node's certificate against (default: the host of --server).
    #[arg(long, value_name = "NAME")]
    tls_server_name: Option<String>,
    /// Accept any server certificate (testing only: traffic can be read and changed by
    /// anyone in the middle).
    #[arg(long)]
    tls_insecure_skip_verify: bool,
}

impl TlsArgs {
    /// The connector for these options, or None for plaintext.
    fn connector(&self) -> Result<Option<distkv_network::tls::TlsConnector>, Failure> {
        use distkv_network::tls::{client_connector, ClientTlsOptions};
        let any = self.tls_ca_file.is_some()
            || self.tls_cert_file.is_some()
            || self.tls_server_name.is_some()
            || self.tls_insecure_skip_verify;
        if !self.tls_enabled {
            if any {
                return Err(Failure::usage(
                    "--tls-* options were given without --tls-enabled; add --tls-enabled to talk TLS",
                ));
            }
            return Ok(None);
        }
        if self.tls_insecure_skip_verify {
            eprintln!("distkv-client: warning: --tls-insecure-skip-verify: the node's certificate is not checked; anyone in the middle can read and change this traffic");
        }
        let options = ClientTlsOptions {
            ca: self.tls_ca_file.clone(),
            identity: self.tls_cert_file.clone().zip(self.tls_key_file.clone()),
            server_name: self.tls_server_name.clone(),
            insecure_skip_verify: self.tls_insecure_skip_verify,
        };
        client_connector(&options)
            .map(Some)
            .map_err(|e| Failure::usage(e.0))
    }
}

#[derive(Clone, Copy, Debug, ValueEnum)]
enum Level {
    One,
    Quorum,
    All,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Store VALUE under KEY ("-" reads the value from standard input). Without
    /// --context the current values are read first and replaced.
    Put {
        key: String,
        value: String,
        /// Causal context from an earlier `get` (base64): replace exactly what it saw.
        #[arg(long, conflicts_with = "blind")]
        context: Option<String>,
        /// Write without reading first: the value becomes a sibling of any current one.
        #[arg(long)]
        blind: bool,
    },
    /// Print every current value of KEY, one per line.
    Get { key: String },
    /// Delete KEY. Without --context the current values are read first and deleted.
    Delete {
        key: String,
        /// Causal context from an earlier `get` (base64): delete exactly what it saw.
        #[arg(long, conflicts_with = "blind")]
        context: Option<String>,
        /// Delete without reading first (concurrent values survive as siblings).
        #[arg(long)]
        blind: bool,
    },
    /// Store several pairs: K1 V1 K2 V2 ...
    Batch {
        #[arg(required = true, num_args = 2.., value_name = "KEY VALUE")]
        pairs: Vec<String>,
    },
    /// Show the node's state, its view of the cluster and its storage statistics.
    Status,
    /// Take a dead node out of the cluster (its layout state becomes "left"). The node
    /// must be dead to the one asked; one layout change at a time. Wipe its data
    /// directory before it ever joins again.
    RemoveNode {
        /// The id of the node to remove (as `status` lists it).
        node_id: String,
    },
    /// Decommission a node (the one asked with --server, or --node ID): it streams its
    /// ranges to the nodes that gain them, leaves the cluster, and stops. Takes as long
    /// as the streaming; run again after a failure, it resumes.
    Decommission {
        /// The node to decommission, by id; the node asked forwards the command to it
        /// over the peer transport. Default: the node asked.
        #[arg(long, value_name = "ID")]
        node: Option<String>,
    },
    /// Drop the records of the ranges a node no longer replicates (after a join moved
    /// them to the new node). Refused while a join or decommission is in flight or while
    /// a member does not answer holding the same layout.
    Cleanup {
        /// The node to clean up, by id; the node asked forwards the command to it over
        /// the peer transport. Default: the node asked.
        #[arg(long, value_name = "ID")]
        node: Option<String>,
    },
    /// Compare every token range the node replicates with its live replicas now and
    /// pull what differs (one anti-entropy pass). Without --wait it only starts the pass.
    Repair {
        /// Answer when the pass is done and print keys compared / differing / repaired
        /// and bytes moved. The pass must end within --timeout: give a long one (e.g.
        /// --timeout 1h) for a large node.
        #[arg(long)]
        wait: bool,
        /// The node to repair, by id; the node asked forwards the command to it over the
        /// peer transport. Default: the node asked.
        #[arg(long, value_name = "ID")]
        node: Option<String>,
    },
}

/// A failure and the exit code it maps to.
struct Failure {
    code: u8,
    message: String,
}

impl Failure {
    fn usage(message: impl Into<String>) -> Self {
        Failure {
            code: 2,
            message: message.into(),
        }
    }
}

/// How a failure of the connection itself starts.
const CONNECTION_FAILED: &str = "the connection to the node failed";

/// What to check when the connection broke, given whether TLS was used.
fn connection_hint(tls: bool) -> &'static str {
    if tls {
        "; the node may have refused this client's certificate (it requires one, it is from another CA, or this is a peer port): the node's log says which"
    } else {
        "; if the node serves TLS, add --tls-enabled --tls-ca-file CA_FILE (the node's log says so)"
    }
}

impl From<tonic::Status> for Failure {
    fn from(s: tonic::Status) -> Self {
        use tonic::Code::*;
        if s.metadata()
            .get("distkv-write-outcome")
            .is_some_and(|v| v == "uncertain")
        {
            let msg = s.message().lines().next().unwrap_or("").to_string();
            return Failure {
                code: 5,
                message: format!(
                    "write not confirmed, it may still land (read the key to see): {msg}"
                ),
            };
        }
        // A status made here from a broken connection carries its cause; one from the
        // server does not.
        if let Some(mut cause) = std::error::Error::source(&s) {
            while let Some(inner) = cause.source() {
                cause = inner;
            }
            return Failure {
                code: 3,
                message: format!("{CONNECTION_FAILED}: {cause}"),
            };
        }
        if s.code() == Unimplemented {
            return Failure {
                code: 4,
                message: "the server does not serve the client API (UNIMPLEMENTED): is --server a peer port? Clients use the node's client port (--address)".to_string(),
            };
        }
        let code = match s.code() {
            Unavailable | DeadlineExceeded | Cancelled => 3,
            _ => 4,
        };
        let what = match s.code() {
            InvalidArgument | FailedPrecondition => "request refused",
            Unavailable => "unavailable",
            DeadlineExceeded => "timed out",
            _ => "server error",
        };
        let msg = s.message().lines().next().unwrap_or("").to_string();
        let msg = if msg.is_empty() {
            format!("{:?}", s.code())
        } else {
            msg
        };
        Failure {
            code,
            message: format!("{what}: {msg}"),
        }
    }
}

fn main() -> ExitCode {
    let args = Args::parse();
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("distkv-client: cannot start the async runtime: {e}");
            return ExitCode::from(4);
        }
    };
    let timeout = args.timeout;
    let server = args.server.clone();
    let tls = args.tls.tls_enabled;
    match runtime.block_on(async { tokio::time::timeout(timeout, run(args)).await }) {
        Ok(Ok(code)) => ExitCode::from(code),
        Ok(Err(f)) => {
            let hint = if f.message.starts_with(CONNECTION_FAILED) {
                connection_hint(tls)
            } else {
                ""
            };
            eprintln!("distkv-client: {}{hint}", f.message);
            ExitCode::from(f.code)
        }
        Err(_) => {
            eprintln!(
                "distkv-client: no answer from {server} within {}",
                humantime::format_duration(timeout)
            );
            ExitCode::from(3)
        }
    }
}

fn level(c: Option<Level>) -> i32 {
    match c {
        None => Consistency::Default as i32,
        Some(Level::One) => Consistency::One as i32,
        Some(Level::Quorum) => Consistency::Quorum as i32,
        Some(Level::All) => Consistency::All as i32,
    }
}

fn decode_context(c: Option<&str>) -> Result<Vec<u8>, Failure> {
    match c {
        None => Ok(Vec::new()),
        Some(s) => B64.decode(s.trim()).map_err(|e| {
            Failure::usage(format!(
                "--context is not base64 ({e}): pass the context printed by `get` unchanged"
            ))
        }),
    }
}

/// The context to write with: the one given, none for a blind write, or the context of
/// a read done now (so the write replaces what the key holds).
async fn write_context(
    client: &mut KeyValueClient<Channel>,
    key: &str,
    given: Option<Vec<u8>>,
    blind: bool,
    consistency: i32,
) -> Result<Vec<u8>, Failure> {
    if let Some(c) = given {
        return Ok(c);
    }
    if blind {
        return Ok(Vec::new());
    }
    let resp = client
        .get(GetRequest {
            key: key.as_bytes().to_vec().into(),
            consistency,
        })
        .await?
        .into_inner();
    Ok(resp.context.to_vec())
}

/// Bytes as JSON: a string when they are UTF-8, else `{"base64": "..."}`.
fn json_bytes(b: &[u8]) -> serde_json::Value {
    match std::str::from_utf8(b) {
        Ok(s) => serde_json::Value::String(s.to_string()),
        Err(_) => serde_json::json!({ "base64": B64.encode(b) }),
    }
}

async fn connect(
    server: &str,
    timeout: Duration,
    tls: &TlsArgs,
) -> Result<KeyValueClient<Channel>, Failure> {
    let endpoint = Channel::from_shared(format!("http://{server}"))
        .map_err(|e| Failure::usage(format!("--server {server:?} is not HOST:PORT: {e}")))?
        .connect_timeout(timeout)
        .timeout(timeout);
    let connected = match tls.connector()? {
        Some(connector) => endpoint.connect_with_connector(connector).await,
        None => endpoint.connect().await,
    };
    let channel = connected.map_err(|e| {
        // The innermost cause says what happened ("Connection refused").
        let mut cause: &dyn std::error::Error = &e;
        while let Some(inner) = cause.source() {
            cause = inner;
        }
        let text = cause.to_string();
        let hint = if text.contains("refused") || text.contains("timed out") {
            " (is distkv-server running there?)"
        } else {
            ""
        };
        Failure {
            code: 3,
            message: format!("cannot connect to {server}: {text}{hint}"),
        }
    })?;
    Ok(KeyValueClient::new(channel)
        .max_decoding_message_size(usize::MAX)
        .max_encoding_message_size(usize::MAX))
}

fn out(bytes: &[u8]) -> Result<(), Failure> {
    let mut stdout = std::io::stdout().lock();
    stdout
        .write_all(bytes)
        .and_then(|_| stdout.flush())
        .map_err(|e| Failure {
            code: 4,
            message: format!("cannot write to standard output: {e}"),
        })
}

/// After a put or delete: nothing, or with `--json` the new context.
fn print_write_context(json: bool, context: &[u8]) -> Result<u8, Failure> {
    if json {
        let doc = serde_json::json!({ "context": B64.encode(context) });
        out(format!("{doc}\n").as_bytes())?;
    }
    Ok(0)
}

async fn run(args: Args) -> Result<u8, Failure> {
    let consistency = level(args.consistency);
    let command = args.command;
    // Bad local input is reported before connecting.
    let given_context = match &command {
        Command::Put { context, .. } | Command::Delete { context, .. } => context
            .as_deref()
            .map(|c| decode_context(Some(c)))
            .transpose()?,
        _ => None,
    };
    let mut client = connect(&args.server, args.timeout, &args.tls).await?;
    match command {
        Command::Put {
            key, value, blind, ..
        } => {
            let value = if value == "-" {
                let mut buf = Vec::new();
                std::io::stdin().read_to_end(&mut buf).map_err(|e| {
                    Failure::usage(format!("cannot read the value from standard input: {e}"))
                })?;
                buf
            } else {
                value.into_bytes()
            };
            let context =
                write_context(&mut client, &key, given_context, blind, consistency).await?;
            let resp = client
                .put(PutRequest {
                    key: key.into_bytes().into(),
                    value: value.into(),
                    context: context.into(),
                    consistency,
                })
                .await?
                .into_inner();
            print_write_context(args.json, &resp.context)
        }
        Command::Get { key } => {
            let resp = client
                .get(GetRequest {
                    key: key.clone().into_bytes().into(),
                    consistency,
                })
                .await?
                .into_inner();
            if args.json {
                let doc = serde_json::json!({
                    "key": json_bytes(key.as_bytes()),
                    "found": resp.found,
                    "values": resp.values.iter().map(|v| json_bytes(v)).collect::<Vec<_>>(),
                    "context": B64.encode(&resp.context),
                });
                out(format!("{doc}\n").as_bytes())?;
                return Ok(if resp.found { 0 } else { 1 });
            }
            if !resp.found {
                eprintln!("not found");
                return Ok(1);
            }
            let mut buf = Vec::new();
            for v in &resp.values {
                buf.extend_from_slice(v);
                buf.push(b'\n');
            }
            out(&buf)?;
            if resp.values.len() > 1 {
                eprintln!(
                    "{} siblings (concurrent writes); context for resolving them: {}",
                    resp.values.len(),
                    B64.encode(&resp.context)
                );
            }
            Ok(0)
        }
        Command::Delete { key, blind, .. } => {
            let context =
                write_context(&mut client, &key, given_context, blind, consistency).await?;
            let resp = client
                .delete(DeleteRequest {
                    key: key.into_bytes().into(),
                    context: context.into(),
                    consistency,
                })
                .await?
                .into_inner();
            print_write_context(args.json, &resp.context)
        }
        Command::Batch { pairs } => {
            if pairs.len() % 2 != 0 {
                return Err(Failure::usage(format!(
                    "batch needs KEY VALUE pairs, got {} arguments (the last key has no value)",
                    pairs.len()
                )));
            }
            let entries = pairs
                .chunks(2)
                .map(|p| KeyValuePair {
                    key: p[0].clone().into_bytes().into(),
                    value: p[1].clone().into_bytes().into(),
                    context: Default::default(),
                })
                .collect();
            client
                .batch_put(BatchPutRequest {
                    entries,
                    consistency,
                })
                .await?;
            Ok(0)
        }
        Command::RemoveNode { node_id } => {
            let r = client
                .remove_node(RemoveNodeRequest {
                    node_id: node_id.clone(),
                })
                .await?
                .into_inner();
            if args.json {
                let doc = serde_json::json!({
                    "removed": node_id,
                    "layout_version": r.layout_version,
                });
                println!("{doc}");
            } else {
                println!(
                    "removed {node_id} from the cluster: layout version {}; the other nodes learn it by gossip",
                    r.layout_version
                );
            }
            Ok(0)
        }
        Command::Decommission { node } => {
            let r = client
                .decommission(DecommissionRequest {
                    node_id: node.unwrap_or_default(),
                })
                .await?
                .into_inner();
            print_moved(
                args.json,
                (r.layout_version, r.ranges, r.records, r.bytes),
                |(v, ranges, records, bytes)| {
                    format!("decommissioned: {ranges} ranges, {records} records, {bytes} bytes pushed to their new owners; left in layout version {v}; the node stops")
                },
            );
            Ok(0)
        }
        Command::Cleanup { node } => {
            let r = client
                .cleanup(CleanupRequest {
                    node_id: node.unwrap_or_default(),
                })
                .await?
                .into_inner();
            print_moved(
                args.json,
                (r.layout_version, r.ranges, r.records, r.bytes),
                |(v, ranges, records, bytes)| {
                    format!("cleaned up: {ranges} ranges this node no longer replicates in layout version {v}, {records} records, {bytes} bytes dropped")
                },
            );
            Ok(0)
        }
        Command::Repair { wait, node } => {
            let r = client
                .repair(RepairRequest {
                    wait,
                    node_id: node.unwrap_or_default(),
                })
                .await?
                .into_inner();
            if args.json {
                let doc = serde_json::json!({
                    "done": r.done,
                    "keys_compared": r.keys_compared,
                    "keys_differing": r.keys_differing,
                    "keys_repaired": r.keys_repaired,
                    "bytes_moved": r.bytes_moved,
                    "ranges": r.ranges,
                    "ranges_clean": r.ranges_clean,
                    "failures": r.failures,
                });
                out(format!("{doc}\n").as_bytes())?;
            } else if !r.done {
                out(
                    b"repair started (run `distkv-client repair --wait` to wait for its numbers)\n",
                )?;
            } else {
                out(format!(
                    "keys compared  {}\nkeys differing {}\nkeys repaired  {}\nbytes moved    {}\nranges         {} ({} clean, {} comparisons failed)\n",
                    r.keys_compared, r.keys_differing, r.keys_repaired, r.bytes_moved, r.ranges, r.ranges_clean, r.failures
                )
                .as_bytes())?;
            }
            // Some comparison failed (peer down, tree being rebuilt): not clean yet.
            if r.done && r.failures > 0 {
                eprintln!(
                    "distkv-client: {} comparisons failed (a peer unreachable, or a tree still being rebuilt after a restart); the node's log says which: run repair again once they are up",
                    r.failures
                );
                return Ok(1);
            }
            Ok(0)
        }
        Command::Status => {
            let s = client.status(StatusRequest {}).await?.into_inner();
            let summary = StatusSummary::of(&s);
            if args.json {
                let doc = serde_json::json!({
                    "node_id": s.node_id,
                    "address": s.address,
                    "version": s.version,
                    "uptime_seconds": s.uptime_seconds,
                    "replicas": s.replicas,
                    "read_quorum": s.read_quorum,
                    "write_quorum": s.write_quorum,
                    "virtual_nodes": s.virtual_nodes,
                    "members": s.members.iter().map(|m| serde_json::json!({
                        "id": m.node_id,
                        "node_id": m.node_id,
                        "address": m.address,
                        "state": m.state,
                        "liveness": m.liveness,
                        "last_heard_ms": m.last_heard_ms,
                        "phi": m.phi,
                        "ownership": m.ownership,
                    })).collect::<Vec<_>>(),
                    "storage_engine": s.storage_engine,
                    "storage_stats": s.storage_stats.iter().map(|st| (st.name.clone(), serde_json::Value::String(st.value.clone()))).collect::<serde_json::Map<_, _>>(),
                    "requests": summary.requests_json(),
                    "memory": {
                        "resident_bytes": s.resident_memory_bytes,
                        "memtable_bytes": summary.memtable_bytes,
                        "block_cache_bytes": summary.block_cache_bytes,
                        "open_fds": s.open_fds,
                    },
                    "block_cache_hit_rate": summary.cache_hit_rate,
                    "compactions": summary.compactions,
                    "sstables_per_level": summary.levels.iter().map(|(l, files, bytes)| serde_json::json!({"level": l, "files": files, "bytes": bytes})).collect::<Vec<_>>(),
                    "antientropy_ranges": s.antientropy_ranges.iter().map(|r| serde_json::json!({
                        "start": r.start,
                        "end": r.end,
                        "last_clean_ms": r.last_clean_ms,
                        "keys_compared": r.keys_compared,
                        "keys_differing": r.keys_differing,
                        "keys_repaired": r.keys_repaired,
                        "bytes_moved": r.bytes_moved,
                    })).collect::<Vec<_>>(),
                    "rebalance": s.rebalance.as_ref().map(|p| serde_json::json!({
                        "kind": p.kind,
                        "layout_version": p.layout_version,
                        "ranges_done": p.ranges_done,
                        "ranges_total": p.ranges_total,
                        "records": p.records,
                        "bytes": p.bytes,
                        "resumed": p.resumed,
                        "records_expected": p.records_expected,
                        "bytes_expected": p.bytes_expected,
                    })),
                    "removal": s.removal.as_ref().map(|r| serde_json::json!({
                        "node": r.node,
                        "layout_version": r.layout_version,
                        "since_ms": r.since_ms,
                        "ranges_clean": r.ranges_clean,
                        "ranges_total": r.ranges_total,
                    })),
                    "gc": s.gc.as_ref().map(|g| serde_json::json!({
                        "enabled": g.enabled,
                        "grace_ms": g.grace_ms,
                        "tombstones": g.tombstones,
                        "last_pass_ms": g.last_pass_ms,
                        "purged": g.purged,
                        "waiting": g.waiting,
                        "waiting_reasons": g.waiting_reasons,
                        "hints_dropped": g.hints_dropped,
                    })),
                });
                out(format!("{doc}\n").as_bytes())?;
                return Ok(0);
            }
            let mut text = String::new();
            text.push_str(&format!(
                "node      {} at {} (distkv {})\n",
                s.node_id, s.address, s.version
            ));
            text.push_str(&format!(
                "uptime    {}\n",
                humantime::format_duration(Duration::from_secs(s.uptime_seconds))
            ));
            text.push_str(&format!(
                "quorums   N={} R={} W={}, {} virtual nodes per member\n",
                s.replicas, s.read_quorum, s.write_quorum, s.virtual_nodes
            ));
            // Members that left are listed below but are not part of the cluster.
            let current = || s.members.iter().filter(|m| m.state != "left");
            let alive = current().filter(|m| m.liveness == "alive").count();
            let dead = current().filter(|m| m.liveness == "dead").count();
            let total = current().count();
            text.push_str(&format!(
                "repair    {}\n",
                antientropy_line(&s.antientropy_ranges)
            ));
            if let Some(p) = &s.rebalance {
                text.push_str(&format!("change    {}\n", rebalance_line(p)));
            }
            if let Some(r) = &s.removal {
                text.push_str(&format!(
                    "change    re-replicating after the removal of {} (layout v{}): {}/{} \
                     ranges compared clean on every live replica since ({})\n",
                    r.node,
                    r.layout_version,
                    r.ranges_clean,
                    r.ranges_total,
                    if r.ranges_clean == r.ranges_total {
                        "done"
                    } else {
                        "anti-entropy in progress"
                    }
                ));
            }
            if let Some(g) = &s.gc {
                text.push_str(&format!("gc        {}\n", gc_line(g)));
                for why in &g.waiting_reasons {
                    text.push_str(&format!("  waiting: {why}\n"));
                }
            }
            text.push_str(&format!(
                "members   {total} total nodes, {alive} alive, {dead} dead ({:.1}% availability)\n",
                if total == 0 {
                    0.0
                } else {
                    alive as f64 * 100.0 / total as f64
                }
            ));
            for m in &s.members {
                let heard = m
                    .last_heard_ms
                    .map_or_else(|| "never".to_string(), |ms| format!("{ms} ms ago"));
                text.push_str(&format!(
                    "  {:<20} {:<22} {:<8} {:<8} heard {:<12} phi {:>5.1}  owns {:>5.1}%\n",
                    m.node_id,
                    m.address,
                    m.state,
                    m.liveness,
                    heard,
                    m.phi,
                    m.ownership * 100.0
                ));
            }
            text.push_str(&summary.text());
            text.push_str(&format!("storage   {}\n", s.storage_engine));
            for st in &s.storage_stats {
                text.push_str(&format!("  {:<32} {}\n", st.name, st.value));
            }
            out(text.as_bytes())?;
            Ok(0)
        }
    }
}

/// Prints the answer of a command that moved or dropped ranges: (layout version, ranges,
/// records, bytes), as JSON or as the line `text` makes.
fn print_moved(
    json: bool,
    moved: (u64, u64, u64, u64),
    text: impl Fn((u64, u64, u64, u64)) -> String,
) {
    if json {
        let (layout_version, ranges, records, bytes) = moved;
        let doc = serde_json::json!({
            "layout_version": layout_version,
            "ranges": ranges,
            "records": records,
            "bytes": bytes,
        });
        println!("{doc}");
    } else {
        println!("{}", text(moved));
    }
}

/// One line on this node's join or decommission stream.
fn rebalance_line(p: &distkv_proto::v1::StreamProgress) -> String {
    let what = if p.kind == "join" {
        "joining (pulling ranges)"
    } else {
        "leaving (pushing ranges)"
    };
    let state = if p.ranges_done == p.ranges_total {
        "done"
    } else {
        "in flight"
    };
    let mib = |b: u64| b as f64 / (1024.0 * 1024.0);
    let records = match p.records_expected {
        Some(e) if p.ranges_done < p.ranges_total => format!("{} of ~{e} records", p.records),
        _ => format!("{} records", p.records),
    };
    let bytes = match p.bytes_expected {
        Some(e) if p.ranges_done < p.ranges_total => {
            format!("{:.1} of ~{:.1} MiB", mib(p.bytes), mib(e))
        }
        _ => format!("{:.1} MiB", mib(p.bytes)),
    };
    format!(
        "{what} for layout v{}: {state}, {}/{} ranges, {records}, {bytes}{}",
        p.layout_version,
        p.ranges_done,
        p.ranges_total,
        if p.resumed {
            " (resumed after a restart or failure)"
        } else {
            ""
        }
    )
}

/// One line on tombstone GC: tombstones held after the last pass and when it ran,
/// purged so far, waiting.
fn gc_line(g: &distkv_proto::v1::GcStatus) -> String {
    let grace = humantime::format_duration(Duration::from_millis(g.grace_ms));
    if !g.enabled && g.last_pass_ms.is_none() {
        return format!("off (grace {grace}), {} purged at peers' request", g.purged);
    }
    let held = match (g.tombstones, g.last_pass_ms) {
        (Some(n), Some(at)) => {
            let now = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_millis() as u64);
            format!(
                "{n} tombstones held as of the last pass {} ago",
                humantime::format_duration(Duration::from_secs(now.saturating_sub(at) / 1000))
            )
        }
        _ => "no pass yet".to_string(),
    };
    format!(
        "{held}, {} purged, {} waiting, {} stale hints dropped (grace {grace})",
        g.purged, g.waiting, g.hints_dropped
    )
}

/// One line on the anti-entropy passes: ranges, how many were ever clean, and how long
/// ago the oldest last clean pass was.
fn antientropy_line(ranges: &[distkv_proto::v1::RangeRepair]) -> String {
    if ranges.is_empty() {
        return "no anti-entropy pass yet".to_string();
    }
    let clean: Vec<u64> = ranges.iter().filter_map(|r| r.last_clean_ms).collect();
    let never = ranges.len() - clean.len();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64);
    let oldest = match clean.iter().min() {
        Some(&ms) => format!(
            ", oldest last clean pass {} ago",
            humantime::format_duration(Duration::from_secs(now.saturating_sub(ms) / 1000))
        ),
        None => String::new(),
    };
    format!(
        "{} ranges, {} never found clean since the node started{oldest}",
        ranges.len(),
        never
    )
}

/// The operator's summary of a Status answer: request totals and errors, memory, cache
/// hit rate, compactions and SSTables per level (from the engine's figures, when the
/// engine reports them).
struct StatusSummary {
    requests: distkv_proto::v1::RequestTotals,
    resident_bytes: u64,
    open_fds: u64,
    memtable_bytes: Option<u64>,
    block_cache_bytes: Option<u64>,
    cache_hit_rate: Option<f64>,
    compactions: Option<u64>,
    write_stalls: Option<u64>,
    /// (level, files, bytes), levels in order.
    levels: Vec<(u32, u64, u64)>,
}

impl StatusSummary {
    fn of(s: &distkv_proto::v1::StatusResponse) -> Self {
        let stat = |name: &str| {
            s.storage_stats
                .iter()
                .find(|st| st.name == name)
                .map(|st| st.value.as_str())
        };
        let int = |name: &str| stat(name).and_then(|v| v.parse::<u64>().ok());
        let mut levels: Vec<(u32, u64, u64)> = s
            .storage_stats
            .iter()
            .filter_map(|st| {
                let level = st.name.strip_prefix("level.")?.strip_suffix(".files")?;
                let level: u32 = level.parse().ok()?;
                let files = st.value.parse().ok()?;
                Some((
                    level,
                    files,
                    int(&format!("level.{level}.bytes")).unwrap_or(0),
                ))
            })
            .collect();
        levels.sort();
        StatusSummary {
            requests: s.requests.unwrap_or_default(),
            resident_bytes: s.resident_memory_bytes,
            open_fds: s.open_fds,
            memtable_bytes: int("memtable.bytes"),
            block_cache_bytes: int("block_cache.bytes"),
            cache_hit_rate: stat("block_cache.hit_rate").and_then(|v| v.parse().ok()),
            compactions: int("compactions"),
            write_stalls: int("write_stalls"),
            levels,
        }
    }

    fn requests_json(&self) -> serde_json::Value {
        let r = &self.requests;
        serde_json::json!({
            "reads": r.reads,
            "read_errors": r.read_errors,
            "writes": r.writes,
            "write_errors": r.write_errors,
            "shed": r.shed,
        })
    }

    fn text(&self) -> String {
        let r = &self.requests;
        let mut t = format!(
            "requests  {} reads ({} errors), {} writes ({} errors), {} shed\n",
            r.reads, r.read_errors, r.writes, r.write_errors, r.shed
        );
        let mut memory = vec![format!("resident {}", mib(self.resident_bytes))];
        if let Some(b) = self.memtable_bytes {
            memory.push(format!("memtables {}", mib(b)));
        }
        if let Some(b) = self.block_cache_bytes {
            memory.push(format!("block cache {}", mib(b)));
        }
        t.push_str(&format!(
            "memory    {}; {} open files\n",
            memory.join(", "),
            self.open_fds
        ));
        if let Some(rate) = self.cache_hit_rate {
            t.push_str(&format!(
                "cache     {:.1}% block cache hit rate\n",
                rate * 100.0
            ));
        }
        if let Some(c) = self.compactions {
            t.push_str(&format!(
                "compact   {c} compactions, {} write stalls\n",
                self.write_stalls.unwrap_or(0)
            ));
        }
        if !self.levels.is_empty() {
            let levels: Vec<String> = self
                .levels
                .iter()
                .map(|(l, files, bytes)| format!("L{l} {files} ({})", mib(*bytes)))
                .collect();
            t.push_str(&format!("sstables  {}\n", levels.join(", ")));
        }
        t
    }
}

/// Bytes as MiB with one decimal.
fn mib(bytes: u64) -> String {
    format!("{:.1} MiB", bytes as f64 / (1024.0 * 1024.0))
}
