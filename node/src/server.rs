//! Start-up: the one function that turns a [`Config`] into a running node.
//!
//! Nothing outside [`run`] knows which storage engine, membership, partitioner or
//! transport was chosen.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use distkv_backends::{options_with_data_dir, MemoryEngine, MemoryOptions, PluginEngine};
use distkv_engine::{Lsm, StorageEngine};
use distkv_network::{GrpcTransport, Membership, PeerService, StaticMembership, Transport};
use distkv_proto::v1::key_value_server::KeyValueServer;
use tonic::transport::server::TcpIncoming;

use crate::config::{Config, ConflictMode, EngineKind, ReadRepairMode};
use crate::hints::HintStore;
use crate::node::{Node, NodeSettings, ReadRepair};
use crate::ring::{HashRing, Partitioner};
use crate::service::KeyValueService;
use crate::version::ConflictPolicy;

/// The node could not start; the message names what failed and what to do.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct StartupError(pub String);

/// Opens the storage engine named by the configuration.
pub fn open_storage(config: &Config) -> Result<(Arc<dyn StorageEngine>, String), StartupError> {
    let dir = &config.data_dir;
    match config.storage.engine {
        EngineKind::Lsm => {
            let path = dir.join("lsm");
            let engine = Lsm::open(&path, config.storage.lsm.clone()).map_err(|e| {
                StartupError(format!(
                    "cannot open the LSM engine in {}: {e}",
                    path.display()
                ))
            })?;
            Ok((Arc::new(engine), "lsm".to_string()))
        }
        EngineKind::Memory => {
            let path = dir.join("memory");
            let engine = MemoryEngine::open(&path, config.storage.memory.clone()).map_err(|e| {
                StartupError(format!(
                    "cannot open the memory engine in {}: {e}",
                    path.display()
                ))
            })?;
            Ok((Arc::new(engine), "memory".to_string()))
        }
        EngineKind::Plugin => {
            let Some(path) = &config.storage.plugin.path else {
                return Err(StartupError(
                    "storage.engine = \"plugin\" needs storage.plugin.path".to_string(),
                ));
            };
            let options = serde_json::to_value(&config.storage.plugin.options)
                .ok()
                .and_then(|v| v.as_object().cloned())
                .ok_or_else(|| {
                    StartupError("storage.plugin.options must be a table of options".to_string())
                })?;
            let dir = dir.join("plugin");
            std::fs::create_dir_all(&dir).map_err(|e| {
                StartupError(format!(
                    "cannot create the plugin data directory {}: {e}",
                    dir.display()
                ))
            })?;
            let json = options_with_data_dir(&options, &dir);
            let engine =
                PluginEngine::load(path, &json).map_err(|e| StartupError(e.to_string()))?;
            let name = format!("plugin:{}", engine.name());
            Ok((Arc::new(engine), name))
        }
    }
}

fn settings(config: &Config) -> NodeSettings {
    let r = &config.replication;
    NodeSettings {
        replicas: r.replicas as usize,
        read_quorum: r.read_quorum as usize,
        write_quorum: r.write_quorum as usize,
        request_timeout: r.request_timeout,
        conflict: match r.conflict {
            ConflictMode::Siblings => ConflictPolicy::Siblings,
            ConflictMode::Lww => ConflictPolicy::LastWriteWins,
        },
        read_repair: match r.read_repair {
            ReadRepairMode::Background => ReadRepair::Background,
            ReadRepairMode::Blocking => ReadRepair::Blocking,
            ReadRepairMode::Off => ReadRepair::Off,
        },
        max_key_bytes: config.limits.max_key_bytes,
        max_value_bytes: config.limits.max_value_bytes,
        max_batch_entries: config.limits.max_batch_entries,
        hinted_handoff: r.hinted_handoff,
        hints_count_toward_w: r.hints_count_toward_w,
        hint_replay_batch: r.hint_replay_batch,
        max_vector_entries: r.max_vector_entries,
    }
}

/// Takes the exclusive lock of the data directory (`data_dir/LOCK`, the engines' own
/// lock file convention), or says which directory is in use. The lock is released when
/// the returned file is dropped or the process dies, `kill -9` included.
fn lock_data_dir(dir: &std::path::Path) -> Result<std::fs::File, StartupError> {
    distkv_engine::lock_dir(dir).map_err(|e| match e {
        distkv_engine::Error::Locked { .. } => StartupError(format!(
            "data directory {} is in use by another distkv-server (its LOCK file is held): stop that node or choose another --data-dir",
            dir.display()
        )),
        other => StartupError(format!("cannot lock data directory {}: {other}", dir.display())),
    })
}

/// Opens the hint store under `data_dir/hints`.
fn open_hints(config: &Config) -> Result<Option<Arc<HintStore>>, StartupError> {
    if !config.replication.hinted_handoff {
        return Ok(None);
    }
    let path = config.data_dir.join("hints");
    let engine = MemoryEngine::open(&path, MemoryOptions { sync: true }).map_err(|e| {
        StartupError(format!(
            "cannot open the hint store in {}: {e}",
            path.display()
        ))
    })?;
    let store = HintStore::open(Arc::new(engine)).map_err(|e| {
        StartupError(format!(
            "cannot read the hint store in {}: {e}",
            path.display()
        ))
    })?;
    Ok(Some(Arc::new(store)))
}

/// Builds the node from `config`, serves it until `shutdown` completes, then stops
/// accepting, lets in-flight requests finish (up to `shutdown_timeout`), makes every
/// write durable and closes storage.
pub async fn run(
    config: Config,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), StartupError> {
    let listen = config
        .listen_addr()
        .map_err(|e| StartupError(format!("invalid setting address = {}: {e}", config.address)))?;
    let local = config.local_node();
    let seeds = config.seeds().map_err(|e| StartupError(e.0))?;
    let membership =
        StaticMembership::new(local.clone(), seeds).map_err(|e| StartupError(e.to_string()))?;
    if config.replication.replicas as usize > membership.topology().nodes.len() {
        tracing::warn!(
            replicas = config.replication.replicas,
            members = membership.topology().nodes.len(),
            "fewer members than replicas: each key is stored on every member until more nodes join"
        );
    }
    // Bind before opening storage, so a busy port fails fast and leaves the data alone.
    let listener = tokio::net::TcpListener::bind(listen).await.map_err(|e| {
        StartupError(format!("cannot listen on {listen} (setting address): {e}; choose a free port or stop the other process"))
    })?;
    // Held for the life of the process: a second node on the same data directory would
    // interleave its writes with ours.
    let _data_dir_lock = lock_data_dir(&config.data_dir)?;
    let (storage, engine_name) = open_storage(&config)?;
    let ring = HashRing::new(config.replication.virtual_nodes as usize);
    let transport =
        GrpcTransport::new(Duration::from_secs(2).min(config.replication.request_timeout));
    let hints = open_hints(&config)?;
    let node = Node::new(
        storage,
        Arc::new(membership),
        Arc::new(ring),
        Arc::new(transport),
        hints,
        settings(&config),
    );
    spawn_hint_replay(&node, config.replication.hint_replay_interval);
    tracing::info!(
        node_id = %local.id,
        address = %listen,
        advertise = %local.address,
        engine = %engine_name,
        replicas = config.replication.replicas,
        read_quorum = config.replication.read_quorum,
        write_quorum = config.replication.write_quorum,
        "distkv node listening"
    );
    serve(node, listener, &config, engine_name, shutdown).await
}

/// Offers pending hints to their targets every `interval`, for as long as the node lives.
fn spawn_hint_replay<S, M, P, T>(node: &Arc<Node<S, M, P, T>>, interval: Duration)
where
    S: StorageEngine + ?Sized,
    M: Membership,
    P: Partitioner,
    T: Transport,
{
    let weak = Arc::downgrade(node);
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            let Some(node) = weak.upgrade() else { break };
            node.replay_hints_once().await;
        }
    });
}

async fn serve<S, M, P, T>(
    node: Arc<Node<S, M, P, T>>,
    listener: tokio::net::TcpListener,
    config: &Config,
    engine_name: String,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), StartupError>
where
    S: StorageEngine + ?Sized,
    M: Membership,
    P: Partitioner,
    T: Transport,
{
    let message_limit =
        (config.limits.max_value_bytes + config.limits.max_key_bytes) * 2 + (1 << 20);
    let kv = KeyValueServer::new(KeyValueService::new(
        node.clone(),
        engine_name,
        config.replication.virtual_nodes,
    ))
    .max_decoding_message_size(message_limit.max(64 << 20))
    .max_encoding_message_size(usize::MAX);
    let reflection = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(distkv_proto::FILE_DESCRIPTOR_SET)
        .build_v1()
        .map_err(|e| StartupError(format!("cannot build the gRPC reflection service: {e}")))?;
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let (stopping_tx, stopping_rx) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(async move {
        shutdown.await;
        tracing::info!("shutdown requested: no new connections, finishing in-flight requests");
        let _ = stopping_tx.send(());
        let _ = stop_tx.send(());
    });
    let server = tonic::transport::Server::builder()
        .tcp_nodelay(true)
        .add_service(kv)
        .add_service(PeerService::server(node.clone()))
        .add_service(reflection)
        .serve_with_incoming_shutdown(
            TcpIncoming::from(listener).with_nodelay(Some(true)),
            async {
                let _ = stop_rx.await;
            },
        );
    let timeout = config.shutdown_timeout;
    tokio::pin!(server);
    let served = tokio::select! {
        res = &mut server => res,
        _ = async {
            let _ = stopping_rx.await;
            tokio::time::sleep(timeout).await;
        } => {
            tracing::warn!(timeout_ms = timeout.as_millis() as u64, "in-flight requests did not finish before the shutdown deadline");
            Ok(())
        }
    };
    if let Err(e) = served {
        tracing::error!(error = %e, "server failed");
    }
    node.flush_storage()
        .await
        .map_err(|e| StartupError(format!("could not make writes durable at shutdown: {e}")))?;
    node.close_storage()
        .await
        .map_err(|e| StartupError(format!("could not close storage at shutdown: {e}")))?;
    tracing::info!("storage flushed and closed; bye");
    Ok(())
}
