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

use clap::Parser;
use distkv_node::config::{self, Flags, ReplicationFlags};

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
    /// Stable identity of this node in the cluster (default: the advertise address).
    #[arg(long)]
    node_id: Option<String>,
    /// HOST:PORT to listen on [default: 127.0.0.1:8080].
    #[arg(long, value_name = "HOST:PORT")]
    address: Option<String>,
    /// HOST:PORT peers should dial (default: the listen address).
    #[arg(long, value_name = "HOST:PORT")]
    advertise_address: Option<String>,
    /// HOST:PORT of the admin HTTP port (/metrics, /health/live, /health/ready)
    /// [default: the client port + 2000]; "" turns it off.
    #[arg(long, value_name = "HOST:PORT")]
    admin_address: Option<String>,
    /// Data directory [default: ./data].
    #[arg(long, value_name = "DIR")]
    data_dir: Option<PathBuf>,
    /// Other members, comma-separated: HOST:PORT or ID=HOST:PORT.
    #[arg(long, value_name = "LIST", value_delimiter = ',')]
    seed_nodes: Option<Vec<String>>,
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
    /// Print the effective configuration as TOML and exit.
    #[arg(long)]
    print_config: bool,
    /// Print the hash ring this node would build (each member's share of the keys and
    /// the ring's fingerprint) and exit.
    #[arg(long)]
    print_ring: bool,
}

fn main() -> ExitCode {
    let args = Args::parse();
    let flags = Flags {
        node_id: args.node_id,
        address: args.address,
        advertise_address: args.advertise_address,
        data_dir: args.data_dir,
        admin_address: args.admin_address,
        seed_nodes: args.seed_nodes,
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
