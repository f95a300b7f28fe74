//! Start-up: the one function that turns a [`Config`] into a running node.
//!
//! Nothing outside this module knows which storage engine, membership, partitioner or
//! transport was chosen: [`run`] names the implementations the configuration asks for
//! and hands them to the generic [`assemble`](crate::assembly::assemble).

mod admin;
mod layout_file;
mod listener;
mod storage;

use listener::ConnectionLimits;

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use distkv_engine::StorageEngine;
use distkv_network::tls::{NodeTls, Reloadable};
use distkv_network::{
    DetectorSettings, GossipMembership, GossipOptions, GossipSettings, GrpcTransport, Membership,
    NodeInfo, PeerService, ReplicationFingerprint, StaticMembership, Transport,
};
use distkv_proto::v1::key_value_server::KeyValueServer;

use crate::api::NodeSettings;
use crate::assembly::{assemble, Assembled};
use crate::config::{Config, MembershipKind, TransportKind};
use crate::frontend::{ClientLimitsLayer, KeyValueService, SizeLimits};
use crate::placement::{HashRing, Partitioner};
use crate::supervisor::Supervisor;

pub use storage::{check_data_format, open_storage, DATA_FORMAT};

/// The node could not start; the message names what failed and what to do.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct StartupError(pub String);

/// The node's settings from the configuration.
pub fn settings(config: &Config) -> NodeSettings {
    let r = &config.replication;
    NodeSettings {
        replicas: r.replicas as usize,
        read_quorum: r.read_quorum as usize,
        write_quorum: r.write_quorum as usize,
        virtual_nodes: r.virtual_nodes,
        request_timeout: r.request_timeout,
        conflict: r.conflict,
        read_repair: r.read_repair,
        max_key_bytes: config.limits.max_key_bytes,
        max_value_bytes: config.limits.max_value_bytes,
        max_batch_entries: config.limits.max_batch_entries,
        max_context_bytes: config.limits.max_context_bytes,
        max_siblings: config.limits.max_siblings,
        max_clock_skew: config.limits.max_clock_skew,
        max_connections: config.limits.max_connections,
        idle_timeout: config.limits.idle_timeout,
        max_streams_per_connection: config.limits.max_streams_per_connection,
        max_concurrent_requests: config.limits.max_concurrent_requests,
        hinted_handoff: r.hinted_handoff,
        hints_count_toward_w: r.hints_count_toward_w,
        hint_replay_interval: r.hint_replay_interval,
        hint_replay_batch: r.hint_replay_batch,
        max_vector_entries: r.max_vector_entries,
        probe_interval: config.membership.interval,
        rebalance_max_bytes_per_sec: config.rebalance.max_bytes_per_sec,
        state_dir: Some(config.data_dir.clone()),
        antientropy: crate::antientropy::AntiEntropySettings {
            enabled: config.antientropy.enabled,
            interval: config.antientropy.interval,
            max_bytes_per_sec: config.antientropy.max_bytes_per_sec,
        },
        gc: crate::antientropy::GcSettings {
            enabled: config.gc.enabled,
            grace: config.gc.grace,
            interval: config.gc.interval,
        },
        ..NodeSettings::default()
    }
}

/// The largest peer message: a coalesced replica call of the largest accepted key and
/// value with room for its record, or a range-pull page, whichever is larger.
fn peer_message_limit(config: &Config) -> usize {
    let one = (config.limits.max_value_bytes + config.limits.max_key_bytes) * 2 + (1 << 20);
    one.max(distkv_network::DEFAULT_MAX_MESSAGE_BYTES)
}

/// Builds the node from `config`, serves it until `shutdown` completes, then stops
/// accepting, lets in-flight requests finish (up to `shutdown_timeout`), stops the
/// background tasks, makes every write durable and closes storage.
///
/// This is the one place that names implementations: the storage engine (by
/// `storage.engine`), the membership (by `membership.kind`) and the transport (by
/// `transport.kind`); everything past it is generic.
pub async fn run(
    config: Config,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), StartupError> {
    let settings = settings(&config);
    let local = config.local_node();
    if local.id.len() > crate::coordinator::MAX_NODE_ID_BYTES {
        return Err(StartupError(format!(
            "invalid setting node_id = {:?}: it is {} bytes, node ids are at most {} bytes (they name the writer in every version); choose a shorter --node-id",
            local.id,
            local.id.len(),
            crate::coordinator::MAX_NODE_ID_BYTES
        )));
    }
    let tls = load_tls(&config)?;
    let transport = crate::observe::MeteredTransport::new(match config.transport.kind {
        TransportKind::Grpc => {
            let t = GrpcTransport::new(
                local.id.clone(),
                Duration::from_secs(2).min(config.replication.request_timeout),
            )
            .with_max_message_bytes(peer_message_limit(&config));
            match &tls {
                Some(tls) => t.with_tls(tls.peer_client.clone()),
                None => t,
            }
        }
    });
    let seeds = config.seeds().map_err(|e| StartupError(e.0))?;
    // Held for the life of the process (a second node on the same data directory would
    // interleave its writes with ours); taken before anything in it is read.
    let data_dir_lock = storage::lock_data_dir(&config.data_dir)?;
    let detector = detector_settings(&config);
    // A layout saved by an earlier run wins over the seed list (then only contact points).
    let saved = layout_file::load(&config.data_dir, &local.id, settings.virtual_nodes)?;
    let from_seeds = || {
        StaticMembership::new(
            local.clone(),
            seeds.clone(),
            settings.virtual_nodes,
            detector.clone(),
        )
        .map_err(|e| StartupError(e.to_string()))
    };
    match config.membership.kind {
        MembershipKind::Static => {
            let membership = match saved {
                Some(saved) => StaticMembership::with_layout(local.clone(), saved, detector),
                None => from_seeds()?,
            };
            launch::<_, HashRing, _>(
                data_dir_lock,
                config,
                settings,
                membership,
                transport,
                tls,
                shutdown,
            )
            .await
        }
        MembershipKind::Gossip => {
            let contacts: Vec<String> = seeds
                .iter()
                .map(|s| s.address.clone())
                .filter(|a| *a != local.address)
                .collect();
            // A node without a saved layout takes the cluster's, if its seeds hold one;
            // only a new cluster's nodes build the first layout from their seed lists.
            let layout = match saved {
                Some(saved) => saved,
                None => match distkv_network::newest_layout_of(
                    &transport,
                    &contacts,
                    distkv_network::DEFAULT_MAX_NODES,
                    IDENTITY_CHECK_TIMEOUT,
                )
                .await
                {
                    Some(cluster) => cluster_layout_for(cluster, &local, settings.virtual_nodes)?,
                    None => (*from_seeds()?.layout()).clone(),
                },
            };
            let options = GossipOptions {
                cluster_name: config.cluster_name.clone(),
                generation: generation_now(),
                seeds: contacts,
                replication: ReplicationFingerprint {
                    replicas: settings.replicas as u32,
                    partitioner: "hash-ring-xxh3".to_string(),
                    virtual_nodes: settings.virtual_nodes,
                    ring: ring_algorithm_fingerprint(settings.virtual_nodes),
                },
                build: env!("CARGO_PKG_VERSION").to_string(),
                settings: GossipSettings {
                    fanout: config.membership.fanout,
                    detector: DetectorSettings {
                        min_std_dev: config.membership.interval / 2,
                        first_interval: config.membership.interval,
                        ..detector
                    },
                    ..GossipSettings::default()
                },
                never_heard_grace: NEVER_HEARD_GRACE,
                rng_seed: generation_now() ^ xxhash_rust::xxh3::xxh3_64(local.id.as_bytes()),
            };
            let membership =
                GossipMembership::new(local.clone(), layout, options, distkv_network::now());
            membership
                .check_identity(&transport, IDENTITY_CHECK_TIMEOUT)
                .await
                .map_err(|e| StartupError(e.to_string()))?;
            launch::<_, HashRing, _>(
                data_dir_lock,
                config,
                settings,
                membership,
                transport,
                tls,
                shutdown,
            )
            .await
        }
    }
}

/// How long the start-up identity check waits for each seed and each ping: a node whose
/// peers are slow waits this long once before serving.
const IDENTITY_CHECK_TIMEOUT: Duration = Duration::from_secs(5);

/// Checks the layout of a running cluster for a node that starts without one of its own:
/// same virtual nodes, and not a node that was removed. A node the layout does not name
/// coordinates requests but owns no data.
fn cluster_layout_for(
    cluster: distkv_network::Layout,
    local: &NodeInfo,
    virtual_nodes: u32,
) -> Result<distkv_network::Layout, StartupError> {
    if cluster.virtual_nodes() != virtual_nodes {
        return Err(StartupError(format!(
            "invalid setting replication.virtual_nodes = {virtual_nodes}: the cluster's layout \
             (version {}) has {} virtual nodes per member; start the node with --virtual-nodes {}",
            cluster.version(),
            cluster.virtual_nodes(),
            cluster.virtual_nodes()
        )));
    }
    match cluster.member(&local.id) {
        Some(m) if m.state == distkv_network::MemberState::Left => Err(StartupError(format!(
            "node {:?} was removed from the cluster (layout version {}): start it with a new \
             --node-id and an empty data directory",
            local.id,
            cluster.version()
        ))),
        Some(m) => {
            if m.address != local.address {
                tracing::warn!(
                    node_id = %local.id,
                    layout_address = %m.address,
                    our_address = %local.address,
                    "the cluster's layout names this node at another peer address; peers will call that one"
                );
            }
            Ok(cluster)
        }
        None => {
            tracing::warn!(
                node_id = %local.id,
                version = cluster.version(),
                "this node is not a member of the cluster's layout: it coordinates requests but owns no data until its join is accepted: it asks the members to join and streams its ranges (see docs/operations.md, Add and remove nodes)"
            );
            Ok(cluster)
        }
    }
}

/// A member of the layout never heard from by gossip this long after start is dead.
const NEVER_HEARD_GRACE: Duration = Duration::from_secs(10);

/// The failure detector's settings from `membership.*`.
fn detector_settings(config: &Config) -> DetectorSettings {
    let m = &config.membership;
    DetectorSettings {
        phi_dead: m.phi_threshold,
        phi_suspect: m.phi_threshold * 5.0 / 8.0,
        first_interval: m.interval,
        ..DetectorSettings::default()
    }
}

/// This process's generation: milliseconds since the Unix epoch at start.
fn generation_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(1, |d| d.as_millis() as u64)
}

/// Fingerprint of how rings are built (token algorithm and version), not of any one
/// layout: the ring of a fixed reference member list.
fn ring_algorithm_fingerprint(virtual_nodes: u32) -> u64 {
    let reference = [NodeInfo {
        id: "reference".into(),
        address: "reference:1".into(),
    }];
    HashRing::build(0, virtual_nodes.max(1), &reference).fingerprint()
}

/// The configurations new connections use, replaced together when the certificates are
/// reloaded.
#[derive(Clone)]
struct LiveTls {
    client_port: Arc<Reloadable<rustls::ServerConfig>>,
    peer_port: Arc<Reloadable<rustls::ServerConfig>>,
    peer_client: Arc<Reloadable<rustls::ClientConfig>>,
    admin_port: Arc<Reloadable<rustls::ServerConfig>>,
}

impl LiveTls {
    fn new(tls: NodeTls) -> Self {
        LiveTls {
            client_port: Reloadable::new(tls.client_port),
            peer_port: Reloadable::new(tls.peer_port),
            peer_client: Reloadable::new(tls.peer_client),
            admin_port: Reloadable::new(tls.admin_port),
        }
    }

    fn replace(&self, tls: NodeTls) {
        self.client_port.replace(tls.client_port);
        self.peer_port.replace(tls.peer_port);
        self.peer_client.replace(tls.peer_client);
        self.admin_port.replace(tls.admin_port);
    }
}

/// Loads the certificates when TLS is on (a bad file stops the node with one line naming
/// it).
fn load_tls(config: &Config) -> Result<Option<LiveTls>, StartupError> {
    match config.tls.files() {
        Some(files) => {
            let tls = NodeTls::load(&files)
                .map_err(|e| StartupError(format!("cannot start with TLS (setting tls.*): {e}")))?;
            Ok(Some(LiveTls::new(tls)))
        }
        None => Ok(None),
    }
}

/// Reloads the certificates on every SIGHUP, for connections made from then on; a failed
/// reload keeps the old ones and says why.
fn watch_reloads(config: &Config, live: LiveTls) {
    let Some(files) = config.tls.files() else {
        return;
    };
    let mut hangups = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()) {
        Ok(s) => s,
        Err(e) => {
            tracing::warn!(error = %e, "cannot watch SIGHUP: certificates reload only at restart");
            return;
        }
    };
    tokio::spawn(async move {
        while hangups.recv().await.is_some() {
            let loading = files.clone();
            let loaded = match tokio::task::spawn_blocking(move || NodeTls::load(&loading)).await {
                Ok(r) => r,
                Err(e) => {
                    tracing::error!(error = %e, "the certificate reload task failed; keeping the current certificates");
                    continue;
                }
            };
            match loaded {
                Ok(tls) => {
                    live.replace(tls);
                    tracing::info!(
                        cert = %files.cert.display(),
                        "SIGHUP: certificates reloaded; new connections use them, open ones keep theirs"
                    );
                }
                Err(e) => tracing::error!(
                    error = %e,
                    "SIGHUP: certificate reload failed; keeping the current certificates"
                ),
            }
        }
    });
}

/// Opens the node's files, wires the node over the chosen membership and transport, and
/// serves it.
async fn launch<M, P, T>(
    _data_dir_lock: std::fs::File,
    config: Config,
    settings: NodeSettings,
    membership: M,
    transport: T,
    tls: Option<LiveTls>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), StartupError>
where
    M: Membership,
    P: Partitioner,
    T: Transport,
{
    let listen = config
        .listen_addr()
        .map_err(|e| StartupError(format!("invalid setting address = {}: {e}", config.address)))?;
    let peer_listen = config
        .peer_listen_addr()
        .map_err(|e| StartupError(format!("invalid setting peer_address: {e}")))?;
    let members = membership.layout().members().len();
    if settings.replicas > members {
        tracing::warn!(
            replicas = settings.replicas,
            members,
            "fewer members than replicas: each key is stored on every member until more nodes join"
        );
    }
    // Bind before opening storage, so a busy port fails fast and leaves the data alone.
    let listener = tokio::net::TcpListener::bind(listen).await.map_err(|e| {
        StartupError(format!("cannot listen on {listen} (setting address): {e}; choose a free port or stop the other process"))
    })?;
    let peer_listener = tokio::net::TcpListener::bind(peer_listen).await.map_err(|e| {
        StartupError(format!("cannot listen on {peer_listen} for peers (setting peer_address, default: the client port + 1000): {e}; choose a free port with --peer-address or stop the other process"))
    })?;
    // Before storage opens: /health/live answers and /health/ready says "starting".
    let admin_tls = match &tls {
        Some(live) if config.tls.admin => Some(live.admin_port.clone()),
        _ => None,
    };
    let admin = admin::AdminPort::start(&config, admin_tls).await?;
    check_data_format(&config.data_dir)?;
    let (engine, engine_name) = open_storage(&config)?;
    let hints = storage::open_hints(&config)?;
    let local = membership.local().clone();
    let parts: Assembled<dyn StorageEngine, M, P, T> = assemble(
        engine,
        Arc::new(membership),
        Arc::new(transport),
        hints,
        settings,
    );
    let supervisor = Supervisor::new();
    parts.start_background(&supervisor);
    supervisor.spawn(
        "layout-file",
        layout_file::keep_saved(parts.membership.clone(), config.data_dir.clone()),
    );
    match &tls {
        Some(live) => watch_reloads(&config, live.clone()),
        // Said once the node runs, so a node refused at start-up still prints one line.
        None => tracing::warn!(
            "TLS is off: client and peer traffic is unauthenticated and unencrypted; keep the client and peer ports off untrusted networks, or enable TLS (tls.enabled, `distkv-server cert` makes certificates)"
        ),
    }
    admin.attach(Arc::new(crate::observe::NodeView(parts.node.clone())));
    let stop = parts.stop.clone();
    let shutdown = admin.watch_shutdown(async move {
        tokio::select! {
            () = shutdown => {}
            () = stop.notified() => tracing::info!("stopping: this node was decommissioned"),
        }
    });
    tracing::info!(
        node_id = %local.id,
        address = %listen,
        advertise = %config.advertised(),
        peer_address = %peer_listen,
        peer_advertise = %local.address,
        tls = tls.is_some(),
        engine = %engine_name,
        replicas = config.replication.replicas,
        read_quorum = config.replication.read_quorum,
        write_quorum = config.replication.write_quorum,
        "distkv node listening"
    );
    let listeners = Listeners {
        client: listener,
        peer: peer_listener,
        tls,
    };
    let served = serve(&parts, listeners, &config, engine_name, shutdown).await;
    let late = supervisor.shutdown(config.shutdown_timeout).await;
    if !late.is_empty() {
        tracing::warn!(tasks = ?late, "background tasks were aborted at shutdown");
    }
    // The layout as it stands now, saved once more: a change learned just before the
    // stop (a removal, a join's last step) is kept even if the saver task was stopped
    // before it wrote it.
    if let Err(e) = layout_file::save(&config.data_dir, &parts.membership.layout()) {
        tracing::error!(
            dir = %config.data_dir.display(),
            "cannot save the layout at shutdown: {e}; the next start uses the one saved before"
        );
    }
    close(&parts).await?;
    served
}

/// The bound sockets and the TLS configuration they serve with.
struct Listeners {
    client: tokio::net::TcpListener,
    peer: tokio::net::TcpListener,
    tls: Option<LiveTls>,
}

/// Most requests in flight on one peer connection: a peer multiplexes all its calls to
/// this node on one connection, and the replica queues (`replica_queue_depth`) bound the
/// work they start.
const PEER_MAX_STREAMS: u32 = 8192;

/// Serves the client API on the client port and the peer service on the peer port until
/// `shutdown`, then lets in-flight requests finish (up to `shutdown_timeout`).
async fn serve<M, P, T>(
    parts: &Assembled<dyn StorageEngine, M, P, T>,
    listeners: Listeners,
    config: &Config,
    engine_name: String,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), StartupError>
where
    M: Membership,
    P: Partitioner,
    T: Transport,
{
    let message_limit =
        (config.limits.max_value_bytes + config.limits.max_key_bytes) * 2 + (1 << 20);
    let kv = KeyValueServer::new(
        KeyValueService::new(
            parts.node.clone(),
            engine_name,
            config.replication.virtual_nodes,
        )
        .with_gc(parts.gc.clone())
        .with_operations(parts.operator.clone()),
    )
    .max_decoding_message_size(message_limit.max(64 << 20))
    .max_encoding_message_size(usize::MAX);
    // Reflection lists only what clients may call: the peer service is on the peer port.
    let reflection = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(distkv_proto::FILE_DESCRIPTOR_SET)
        .with_service_name("distkv.v1.KeyValue")
        .build_v1()
        .map_err(|e| StartupError(format!("cannot build the gRPC reflection service: {e}")))?;
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let (stopping_tx, stopping_rx) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(async move {
        shutdown.await;
        tracing::info!("shutdown requested: no new connections, finishing in-flight requests");
        let _ = stopping_tx.send(());
        let _ = stop_tx.send(true);
    });
    let stopped = |mut rx: tokio::sync::watch::Receiver<bool>| async move {
        let _ = rx.wait_for(|stop| *stop).await;
    };
    let l = &config.limits;
    // Pings at a third of the idle timeout keep live connections busy and find dead
    // ones: a connection that does not answer one within its timeout is closed.
    let ping_every = (l.idle_timeout / 3).max(Duration::from_millis(100));
    let limits = ConnectionLimits {
        max_connections: l.max_connections,
        idle_timeout: l.idle_timeout,
    };
    let server = tonic::transport::Server::builder()
        .tcp_nodelay(true)
        .max_concurrent_streams(l.max_streams_per_connection)
        .http2_keepalive_interval(Some(ping_every))
        .http2_keepalive_timeout(Some(ping_every))
        .layer(ClientLimitsLayer::new(
            SizeLimits {
                max_key_bytes: l.max_key_bytes,
                max_value_bytes: l.max_value_bytes,
                max_batch_entries: l.max_batch_entries,
            },
            l.max_concurrent_requests,
        ))
        .add_service(kv)
        .add_service(reflection)
        .serve_with_incoming_shutdown(
            listener::serve_incoming(
                listeners.client,
                limits,
                listeners.tls.as_ref().map(|t| t.client_port.clone()),
                "client",
            ),
            stopped(stop_rx.clone()),
        );
    let peer_server = tonic::transport::Server::builder()
        .tcp_nodelay(true)
        .max_concurrent_streams(PEER_MAX_STREAMS)
        .http2_keepalive_interval(Some(ping_every))
        .http2_keepalive_timeout(Some(ping_every))
        .add_service(PeerService::server(
            parts.peer.clone(),
            peer_message_limit(config),
        ))
        .serve_with_incoming_shutdown(
            listener::serve_incoming(
                listeners.peer,
                limits,
                listeners.tls.as_ref().map(|t| t.peer_port.clone()),
                "peer",
            ),
            stopped(stop_rx),
        );
    let server = async move {
        let (client, peer) = tokio::join!(server, peer_server);
        client.and(peer)
    };
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
    Ok(())
}

/// Makes every write and hint durable, then closes storage.
async fn close<M, P, T>(parts: &Assembled<dyn StorageEngine, M, P, T>) -> Result<(), StartupError>
where
    M: Membership,
    P: Partitioner,
    T: Transport,
{
    let store = parts.store.clone();
    let hints = parts.handoff.as_ref().map(|h| h.store().clone());
    crate::util::blocking(move || {
        store.flush()?;
        if let Some(h) = &hints {
            h.flush()?;
        }
        store.close()?;
        if let Some(h) = &hints {
            h.close()?;
        }
        Ok(())
    })
    .await
    .map_err(|e| {
        StartupError(format!(
            "could not make writes durable and close storage at shutdown: {e}"
        ))
    })?;
    tracing::info!("storage flushed and closed; bye");
    Ok(())
}
