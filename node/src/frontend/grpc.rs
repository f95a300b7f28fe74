//! The client-facing gRPC service `distkv.v1.KeyValue`, a thin shell over [`Node`].

use std::sync::Arc;
use std::time::Instant;

use distkv_engine::StorageEngine;
use distkv_network::{Membership, Transport};
use distkv_proto::v1::key_value_server::KeyValue;
use distkv_proto::v1::{
    BatchPutRequest, BatchPutResponse, CleanupRequest, CleanupResponse,
    Consistency as WireConsistency, DecommissionRequest, DecommissionResponse, DeleteRequest,
    DeleteResponse, GcStatus, GetRequest, GetResponse, Member, PutRequest, PutResponse,
    RangeRepair, RemoveNodeRequest, RemoveNodeResponse, RepairRequest, RepairResponse,
    RequestTotals, Stat, StatusRequest, StatusResponse, StreamProgress,
};
use tonic::{Request, Response, Status};

use crate::antientropy::GcInfo;
use crate::api::{BatchEntry, Consistency};
use crate::coordinator::Node;
use crate::error::NodeError;
use crate::observe::{self, Op};
use crate::operator::Operations;
use crate::placement::Partitioner;

/// The `KeyValue` service of one node.
pub struct KeyValueService<S: StorageEngine + ?Sized, M: Membership, P: Partitioner, T: Transport> {
    node: Arc<Node<S, M, P, T>>,
    storage_engine: String,
    virtual_nodes: u32,
    operations: Option<Arc<dyn Operations>>,
    gc: Option<Arc<dyn GcInfo>>,
}

impl<S, M, P, T> KeyValueService<S, M, P, T>
where
    S: StorageEngine + ?Sized,
    M: Membership,
    P: Partitioner,
    T: Transport,
{
    /// The service over `node`; `storage_engine` and `virtual_nodes` are shown by Status.
    pub fn new(node: Arc<Node<S, M, P, T>>, storage_engine: String, virtual_nodes: u32) -> Self {
        KeyValueService {
            node,
            storage_engine,
            virtual_nodes,
            operations: None,
            gc: None,
        }
    }

    /// Answers `Decommission` and `Repair` (for this node or, with a node id, another
    /// one) and shows the anti-entropy and stream progress in `Status` with `operations`
    /// (without it, `Decommission` and `Repair` are UNIMPLEMENTED).
    pub fn with_operations(mut self, operations: Arc<dyn Operations>) -> Self {
        self.operations = Some(operations);
        self
    }

    /// Shows `gc`'s numbers in `Status`.
    pub fn with_gc(mut self, gc: Arc<dyn GcInfo>) -> Self {
        self.gc = Some(gc);
        self
    }
}

/// Metadata key on a failed write's status: `uncertain` when the write reached some
/// replica (or a hint) and may still land, although its quorum was not confirmed.
pub const WRITE_OUTCOME: &str = "distkv-write-outcome";

/// The status of a failed write, marked `uncertain` when the write may still land.
fn write_status(e: NodeError) -> Status {
    let uncertain = matches!(
        e,
        NodeError::QuorumNotReached { .. } | NodeError::TooManySiblings { may_land: true, .. }
    );
    let mut status = Status::from(e);
    if uncertain {
        status.metadata_mut().insert(
            WRITE_OUTCOME,
            tonic::metadata::MetadataValue::from_static("uncertain"),
        );
    }
    status
}

fn consistency(raw: i32) -> Result<Consistency, Status> {
    match WireConsistency::try_from(raw) {
        Ok(WireConsistency::Default) => Ok(Consistency::Default),
        Ok(WireConsistency::One) => Ok(Consistency::One),
        Ok(WireConsistency::Quorum) => Ok(Consistency::Quorum),
        Ok(WireConsistency::All) => Ok(Consistency::All),
        Err(_) => Err(Status::invalid_argument(format!(
            "consistency {raw} is unknown: use ONE (1), QUORUM (2), ALL (3) or leave it unset"
        ))),
    }
}

#[tonic::async_trait]
impl<S, M, P, T> KeyValue for KeyValueService<S, M, P, T>
where
    S: StorageEngine + ?Sized,
    M: Membership,
    P: Partitioner,
    T: Transport,
{
    async fn put(&self, request: Request<PutRequest>) -> Result<Response<PutResponse>, Status> {
        let (started, r) = (Instant::now(), request.into_inner());
        let c = consistency(r.consistency)?;
        let result = self
            .node
            .put(r.key.to_vec(), Some(r.value.to_vec()), &r.context, c)
            .await;
        observe::client_request(Op::Put, c, started, result.as_ref().err());
        let ctx = result.map_err(write_status)?;
        Ok(Response::new(PutResponse {
            context: ctx.to_context().into(),
        }))
    }

    async fn get(&self, request: Request<GetRequest>) -> Result<Response<GetResponse>, Status> {
        let (started, r) = (Instant::now(), request.into_inner());
        let c = consistency(r.consistency)?;
        let result = self.node.get(r.key.to_vec(), c).await;
        observe::client_request(Op::Get, c, started, result.as_ref().err());
        let result = result?;
        Ok(Response::new(GetResponse {
            found: !result.values.is_empty(),
            values: result.values.into_iter().map(Into::into).collect(),
            context: result.context.to_context().into(),
        }))
    }

    async fn delete(
        &self,
        request: Request<DeleteRequest>,
    ) -> Result<Response<DeleteResponse>, Status> {
        let (started, r) = (Instant::now(), request.into_inner());
        let c = consistency(r.consistency)?;
        let result = self.node.put(r.key.to_vec(), None, &r.context, c).await;
        observe::client_request(Op::Delete, c, started, result.as_ref().err());
        let ctx = result.map_err(write_status)?;
        Ok(Response::new(DeleteResponse {
            context: ctx.to_context().into(),
        }))
    }

    async fn batch_put(
        &self,
        request: Request<BatchPutRequest>,
    ) -> Result<Response<BatchPutResponse>, Status> {
        let (started, r) = (Instant::now(), request.into_inner());
        let c = consistency(r.consistency)?;
        let entries = r
            .entries
            .into_iter()
            .map(|e| BatchEntry {
                key: e.key.to_vec(),
                value: Some(e.value.to_vec()),
                context: e.context.to_vec(),
            })
            .collect();
        let result = self.node.batch(entries, c).await;
        observe::client_request(Op::BatchPut, c, started, result.as_ref().err());
        let contexts = result.map_err(write_status)?;
        Ok(Response::new(BatchPutResponse {
            contexts: contexts
                .into_iter()
                .map(|c| c.to_context().into())
                .collect(),
        }))
    }

    async fn remove_node(
        &self,
        request: Request<RemoveNodeRequest>,
    ) -> Result<Response<RemoveNodeResponse>, Status> {
        let Some(operations) = self.operations.clone() else {
            return Err(Status::unimplemented(
                "this server runs no operator commands (remove-node)",
            ));
        };
        operations
            .remove_node(request.into_inner().node_id)
            .await
            .map(Response::new)
    }

    async fn decommission(
        &self,
        request: Request<DecommissionRequest>,
    ) -> Result<Response<DecommissionResponse>, Status> {
        let Some(operations) = self.operations.clone() else {
            return Err(Status::unimplemented(
                "this node runs no operator commands, so it cannot decommission",
            ));
        };
        let node = request.into_inner().node_id;
        operations.decommission(node).await.map(Response::new)
    }

    async fn cleanup(
        &self,
        request: Request<CleanupRequest>,
    ) -> Result<Response<CleanupResponse>, Status> {
        let Some(operations) = self.operations.clone() else {
            return Err(Status::unimplemented(
                "this node runs no operator commands, so it cannot clean up",
            ));
        };
        let node = request.into_inner().node_id;
        operations.cleanup(node).await.map(Response::new)
    }

    async fn repair(
        &self,
        request: Request<RepairRequest>,
    ) -> Result<Response<RepairResponse>, Status> {
        let Some(operations) = self.operations.clone() else {
            return Err(Status::unimplemented(
                "this node runs no anti-entropy driver, so it cannot repair",
            ));
        };
        let RepairRequest { wait, node_id } = request.into_inner();
        operations.repair(node_id, wait).await.map(Response::new)
    }

    async fn status(
        &self,
        _request: Request<StatusRequest>,
    ) -> Result<Response<StatusResponse>, Status> {
        let node = &self.node;
        let settings = node.settings();
        let stats = node.storage_stats();
        let totals = observe::counters().totals();
        Ok(Response::new(StatusResponse {
            requests: Some(RequestTotals {
                reads: totals.reads,
                read_errors: totals.read_errors,
                writes: totals.writes,
                write_errors: totals.write_errors,
                shed: totals.shed,
            }),
            resident_memory_bytes: observe::resident_memory_bytes().unwrap_or(0),
            open_fds: observe::open_fds().unwrap_or(0),
            antientropy_ranges: self
                .operations
                .as_ref()
                .map(|r| r.range_stats())
                .unwrap_or_default()
                .into_iter()
                .map(|(range, s)| RangeRepair {
                    start: range.start,
                    end: range.end,
                    last_clean_ms: s.last_clean_ms,
                    keys_compared: s.last_pass.keys_compared,
                    keys_differing: s.last_pass.keys_differing,
                    keys_repaired: s.last_pass.keys_repaired,
                    bytes_moved: s.last_pass.bytes_moved,
                })
                .collect(),
            rebalance: self
                .operations
                .as_ref()
                .and_then(|o| o.progress())
                .map(|p| StreamProgress {
                    kind: p.kind.to_string(),
                    layout_version: p.layout_version,
                    ranges_done: p.ranges_done as u32,
                    ranges_total: p.ranges_total as u32,
                    records: p.records,
                    bytes: p.bytes,
                    resumed: p.resumed,
                    records_expected: p.records_expected,
                    bytes_expected: p.bytes_expected,
                }),
            removal: self.operations.as_ref().and_then(|o| o.removal()).map(|p| {
                distkv_proto::v1::RemovalProgress {
                    node: p.removal.node,
                    layout_version: p.removal.layout_version,
                    since_ms: p.removal.at_ms,
                    ranges_clean: p.ranges_clean as u32,
                    ranges_total: p.ranges_total as u32,
                }
            }),
            gc: self.gc.as_ref().map(|g| {
                let v = g.view();
                GcStatus {
                    enabled: v.enabled,
                    grace_ms: v.grace.as_millis() as u64,
                    tombstones: v.tombstones,
                    last_pass_ms: v.last_pass_ms,
                    purged: v.purged,
                    waiting: v.waiting,
                    waiting_reasons: v.waiting_reasons,
                    hints_dropped: v.hints_dropped,
                }
            }),
            node_id: node.local().id.clone(),
            address: node.local().address.clone(),
            version: env!("CARGO_PKG_VERSION").to_string(),
            uptime_seconds: node.uptime().as_secs(),
            replicas: settings.replicas as u32,
            read_quorum: settings.read_quorum as u32,
            write_quorum: settings.write_quorum as u32,
            virtual_nodes: self.virtual_nodes,
            members: {
                let ownership = node.ownership();
                node.members()
                    .into_iter()
                    .map(|(m, l)| Member {
                        ownership: ownership
                            .iter()
                            .find(|(id, _)| *id == m.id)
                            .map_or(0.0, |(_, share)| *share),
                        node_id: m.id,
                        address: m.address,
                        state: m.state.to_string(),
                        liveness: l.liveness.to_string(),
                        last_heard_ms: l.last_heard.map(|d| d.as_millis() as u64),
                        phi: l.phi,
                    })
                    .collect()
            },
            storage_engine: self.storage_engine.clone(),
            storage_stats: stats
                .values
                .iter()
                .map(|(k, v)| Stat {
                    name: k.clone(),
                    value: v.to_string(),
                })
                .collect(),
        }))
    }
}
