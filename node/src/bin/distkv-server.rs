//! `distkv-server`: runs one DistKV node.
//!
//! With no flags it serves a single node on 127.0.0.1:8080 with its data in ./data.
//! Settings come from built-in defaults < `--config FILE` < `DISTKV_*` environment
//! variables < flags.

use std::path::PathBuf;

/// mimalloc instead of the system allocator: under the many short-lived allocations of
/// request handling, glibc malloc's arena locking and chunk consolidation took about a
/// tenth of the node's CPU (docs/load-generator.md has the profile).
#[global_allocator]
static ALLOC: mimalloc::MiMalloc = mimalloc::MiMalloc;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use distkv_network::tls::ClientAuth;
use distkv_node::certs;
use distkv_node::config::{self, Flags, ReplicationFlags, TlsFlags};

#[derive(Parser, Debug)]
#[command(
    name = "distkv-server",
    version,
    about = "Run a DistKV node",
    args_override_self = true
)]
struct Args {
    /// TOML configuration file.
    #[arg(long, env = "DISTKV_CONFIG", value_name = "FILE")]
    config: Option<PathBuf>,
    /// Stable identity of this node in the cluster (default: the peer advertise address).
    #[arg(long)]
    node_id: Option<String>,
    /// HOST:PORT to listen on for clients [default: 127.0.0.1:8080].
    #[arg(long, value_name = "HOST:PORT")]
    address: Option<String>,
    /// HOST:PORT clients should dial (default: the listen address).
    #[arg(long, value_name = "HOST:PORT")]
    advertise_address: Option<String>,
    /// HOST:PORT to listen on for other nodes (default: the client port + 1000).
    #[arg(long, value_name = "HOST:PORT")]
    peer_address: Option<String>,
    /// HOST:PORT other nodes dial for this one; seed lists name it (default: the peer
    /// listen address, or the advertise host with the peer port).
    #[arg(long, value_name = "HOST:PORT")]
    peer_advertise_address: Option<String>,
    /// HOST:PORT of the admin HTTP port (/metrics, /health/live, /health/ready)
    /// [default: the client port + 2000]; "" turns it off.
    #[arg(long, value_name = "HOST:PORT")]
    admin_address: Option<String>,
    /// Data directory [default: ./data].
    #[arg(long, value_name = "DIR")]
    data_dir: Option<PathBuf>,
    /// Other members, comma-separated: PEER_HOST:PORT or ID=PEER_HOST:PORT (their peer
    /// addresses).
    #[arg(long, value_name = "LIST", value_delimiter = ',')]
    seed_nodes: Option<Vec<String>>,
    /// The cluster's name; gossip from nodes of another cluster is refused [default:
    /// distkv].
    #[arg(long, value_name = "NAME")]
    cluster_name: Option<String>,
    /// N: copies of each key.
    #[arg(long)]
    replicas: Option<u32>,
    /// R: replicas that must answer a read.
    #[arg(long)]
    read_quorum: Option<u32>,
    /// W: replicas that must acknowledge a write.
    #[arg(long)]
    write_quorum: Option<u32>,
    /// Tokens per node on the hash ring.
    #[arg(long)]
    virtual_nodes: Option<u32>,
    /// Serve TLS on the client port and mutual TLS on the peer port.
    #[arg(long, value_name = "BOOL", num_args = 0..=1, default_missing_value = "true")]
    tls_enabled: Option<bool>,
    /// The node certificate (PEM), e.g. certs/node.crt.
    #[arg(long, value_name = "FILE")]
    tls_cert_file: Option<PathBuf>,
    /// The node certificate's private key (PEM), e.g. certs/node.key.
    #[arg(long, value_name = "FILE")]
    tls_key_file: Option<PathBuf>,
    /// The cluster CA certificate (PEM), e.g. certs/ca.crt.
    #[arg(long, value_name = "FILE")]
    tls_ca_file: Option<PathBuf>,
    /// Whether clients must show a certificate from the CA on the client port.
    #[arg(long, value_enum)]
    tls_client_auth: Option<ClientAuthArg>,
    /// Print the effective configuration as TOML and exit.
    #[arg(long)]
    print_config: bool,
    /// Print the hash ring this node would build (each member's share of the keys and
    /// the ring's fingerprint) and exit.
    #[arg(long)]
    print_ring: bool,
    #[command(subcommand)]
    command: Option<ServerCommand>,
}

#[derive(Clone, Copy, Debug, clap::ValueEnum)]
enum ClientAuthArg {
    None,
    Optional,
    Required,
}

#[derive(Subcommand, Debug)]
enum ServerCommand {
    /// Make and list TLS certificates (a development CA, node and client certificates).
    Cert {
        #[command(subcommand)]
        action: CertAction,
    },
}

#[derive(Subcommand, Debug)]
enum CertAction {
    /// Create the cluster CA: ca.crt and ca.key.
    CreateCa(CertArgs),
    /// Create node.crt and node.key for the HOSTs (DNS names and IP addresses) the node
    /// is dialled by, signed by the CA.
    CreateNode {
        #[command(flatten)]
        common: CertArgs,
        #[arg(required = true, value_name = "HOST")]
        hosts: Vec<String>,
    },
    /// Create client.NAME.crt and client.NAME.key, signed by the CA.
    CreateClient {
        #[command(flatten)]
        common: CertArgs,
        name: String,
    },
    /// List the certificates of the directory: subject, role, SANs, expiry.
    List {
        /// Directory of the certificates.
        #[arg(long, value_name = "DIR")]
        certs_dir: PathBuf,
    },
}

#[derive(clap::Args, Debug)]
struct CertArgs {
    /// Directory of the certificates (created if missing).
    #[arg(long, value_name = "DIR")]
    certs_dir: PathBuf,
    /// Replace existing files.
    #[arg(long)]
    overwrite: bool,
    /// How long the certificate is valid [default: 10 years for the CA, 5 for others].
    #[arg(long, value_parser = humantime::parse_duration)]
    lifetime: Option<std::time::Duration>,
}

/// Runs `distkv-server cert ...`.
fn cert_command(action: CertAction) -> ExitCode {
    let validity =
        |args: &CertArgs, default| certs::Validity::for_lifetime(args.lifetime.unwrap_or(default));
    let result = match &action {
        CertAction::CreateCa(a) => validity(a, certs::CA_LIFETIME)
            .and_then(|v| certs::create_ca(&a.certs_dir, v, a.overwrite)),
        CertAction::CreateNode { common: a, hosts } => validity(a, certs::CERT_LIFETIME)
            .and_then(|v| certs::create_node(&a.certs_dir, hosts, v, a.overwrite)),
        CertAction::CreateClient { common: a, name } => validity(a, certs::CERT_LIFETIME)
            .and_then(|v| certs::create_client(&a.certs_dir, name, v, a.overwrite)),
        CertAction::List { certs_dir } => match certs::list(certs_dir) {
            Ok(text) => {
                print!("{text}");
                return ExitCode::SUCCESS;
            }
            Err(e) => Err(e),
        },
    };
    match result {
        Ok(files) => {
            for f in files {
                println!("wrote {}", f.display());
            }
            eprintln!("distkv-server: note: {}", certs::DEVELOPMENT_WARNING);
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("distkv-server: {e}");
            ExitCode::from(2)
        }
    }
}

fn main() -> ExitCode {
    let args = Args::parse();
    if let Some(ServerCommand::Cert { action }) = args.command {
        return cert_command(action);
    }
    let flags = Flags {
        node_id: args.node_id,
        address: args.address,
        advertise_address: args.advertise_address,
        peer_address: args.peer_address,
        peer_advertise_address: args.peer_advertise_address,
        tls: TlsFlags {
            enabled: args.tls_enabled,
            cert_file: args.tls_cert_file,
            key_file: args.tls_key_file,
            ca_file: args.tls_ca_file,
            client_auth: args.tls_client_auth.map(|a| match a {
                ClientAuthArg::None => ClientAuth::None,
                ClientAuthArg::Optional => ClientAuth::Optional,
                ClientAuthArg::Required => ClientAuth::Required,
            }),
        },
        data_dir: args.data_dir,
        admin_address: args.admin_address,
        seed_nodes: args.seed_nodes,
        cluster_name: args.cluster_name,
        replication: ReplicationFlags {
            replicas: args.replicas,
            read_quorum: args.read_quorum,
            write_quorum: args.write_quorum,
            virtual_nodes: args.virtual_nodes,
        },
    };
    let loaded = match config::load(args.config.as_deref(), flags) {
        Ok(l) => l,
        Err(e) => {
            eprintln!("distkv-server: {e}");
            return ExitCode::from(2);
        }
    };
    for warning in &loaded.warnings {
        eprintln!("distkv-server: warning: {warning}");
    }
    let config = loaded.config;
    if args.print_config {
        print!("{}", config.to_toml());
        return ExitCode::SUCCESS;
    }
    if args.print_ring {
        return match ring_report(&config) {
            Ok(text) => {
                print!("{text}");
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("distkv-server: {e}");
                ExitCode::from(2)
            }
        };
    }
    if let Some(warning) = distkv_node::logging::init(&config.log) {
        eprintln!("distkv-server: warning: {warning}");
    }
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("distkv-server: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(distkv_node::server::run(config, shutdown_signal())) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("distkv-server: {e}");
            ExitCode::FAILURE
        }
    }
}

/// The ring of the configured members, as `--print-ring` shows it.
fn ring_report(config: &distkv_node::config::Config) -> Result<String, String> {
    use distkv_network::{DetectorSettings, Membership, StaticMembership};
    use distkv_node::placement::{HashRing, Partitioner, PlacementSnapshot};
    let seeds = config.seeds().map_err(|e| e.0)?;
    let membership = StaticMembership::new(
        config.local_node(),
        seeds,
        config.replication.virtual_nodes,
        DetectorSettings::default(),
    )
    .map_err(|e| e.to_string())?;
    let placement = PlacementSnapshot::<HashRing>::of_layout(&membership.layout());
    let ring = placement.ring();
    let mut out = String::new();
    for ((id, share), node) in ring.ownership().into_iter().zip(ring.nodes()) {
        out.push_str(&format!(
            "{id:<24} {:<24} {:>7.3}%\n",
            node.address,
            share * 100.0
        ));
    }
    out.push_str(&format!("fingerprint {:016x}\n", ring.fingerprint()));
    Ok(out)
}

/// Completes on SIGINT or SIGTERM.
async fn shutdown_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = match signal(SignalKind::terminate()) {
        Ok(s) => s,
        Err(e) => {
            tracing::warn!(error = %e, "cannot watch SIGTERM; only SIGINT stops the node gracefully");
            let _ = tokio::signal::ctrl_c().await;
            return;
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => tracing::info!(signal = "SIGINT", "signal received"),
        _ = term.recv() => tracing::info!(signal = "SIGTERM", "signal received"),
    }
}
