//! Operator commands a node runs on itself (decommission, repair, cleanup), asked through its own
//! client API or through another node's: `--node ID` makes the node asked forward the
//! command to node ID over the peer transport (so the peer port's TLS and trust
//! boundary cover it). The forwarded command names no node, so it never travels further.

use std::sync::Arc;
use std::time::Duration;

use distkv_network::{
    LayoutChange, MemberState, Membership, NodeInfo, PeerError, Transport, TransportExt,
};
use distkv_proto::v1::{
    operator_request, operator_response, CleanupRequest, CleanupResponse, DecommissionRequest,
    DecommissionResponse, OperatorRequest, OperatorResponse, RemoveNodeResponse, RepairRequest,
    RepairResponse,
};
use futures::future::BoxFuture;
use tonic::Status;

use crate::antientropy::driver::{PassReport, RangeStats, RepairPass};
use crate::placement::TokenRange;
use crate::rebalance::authority::LayoutChanges;
use crate::rebalance::removal::{RemovalProgress, Rereplication};
use crate::rebalance::{Decommission, ProgressSummary};

/// How long a forwarded command may run (a decommission streams every range of a node;
/// the operator's own client deadline usually ends it first).
const FORWARD_TIMEOUT: Duration = Duration::from_secs(6 * 3600);
/// How long after answering a decommission the node stops (the answer is on its way).
const STOP_AFTER_ANSWER: Duration = Duration::from_millis(300);

/// What the client API asks of the operator commands (object-safe).
pub trait Operations: Send + Sync + 'static {
    /// Decommissions node `node` (empty: this one); answers once it left.
    fn decommission(&self, node: String) -> BoxFuture<'_, Result<DecommissionResponse, Status>>;
    /// Runs an anti-entropy pass on node `node` (empty: this one); with `wait`, answers
    /// once it is done, with its numbers.
    fn repair(&self, node: String, wait: bool) -> BoxFuture<'_, Result<RepairResponse, Status>>;
    /// Drops the ranges node `node` (empty: this one) no longer replicates.
    fn cleanup(&self, node: String) -> BoxFuture<'_, Result<CleanupResponse, Status>>;
    /// Takes dead node `node` out of the layout (asked of the layout authority); answers
    /// the layout version after it.
    fn remove_node(&self, node: String) -> BoxFuture<'_, Result<RemoveNodeResponse, Status>>;
    /// This node's anti-entropy numbers per range, from the last pass.
    fn range_stats(&self) -> Vec<(TokenRange, RangeStats)>;
    /// This node's join or decommission stream.
    fn progress(&self) -> Option<ProgressSummary>;
    /// The re-replication after the last removal this node applied.
    fn removal(&self) -> Option<RemovalProgress>;
}

/// The operator commands of one node.
pub struct Operator<M: Membership, T: Transport> {
    /// This node.
    pub local: NodeInfo,
    /// Its membership (to find the node a command names).
    pub membership: Arc<M>,
    /// Its peer transport (to forward a command).
    pub transport: Arc<T>,
    /// Its joins and decommissions.
    pub rebalance: Arc<dyn Decommission>,
    /// Its anti-entropy driver.
    pub repair: Arc<dyn RepairPass>,
    /// The re-replication after the last removal it applied.
    pub rereplication: Arc<Rereplication>,
    /// Its way to the layout authority (for removals).
    pub changes: LayoutChanges<M, T>,
    /// Notified to stop the process after a decommission.
    pub stop: Arc<tokio::sync::Notify>,
}

/// The answer to `repair`: the pass's numbers (zero when not waited for).
pub fn repair_response(report: PassReport, done: bool) -> RepairResponse {
    RepairResponse {
        keys_compared: report.keys_compared,
        keys_differing: report.keys_differing,
        keys_repaired: report.keys_repaired,
        bytes_moved: report.bytes_moved,
        ranges: report.ranges,
        ranges_clean: report.ranges_clean,
        failures: report.failures,
        done,
    }
}

impl<M: Membership, T: Transport> Operator<M, T> {
    /// The member `node` names, unless it is this node (`None`): refused when unknown
    /// or gone.
    fn target(&self, node: &str) -> Result<Option<NodeInfo>, Status> {
        if node.is_empty() || node == self.local.id {
            return Ok(None);
        }
        let layout = self.membership.layout();
        let Some(member) = layout.member(node) else {
            return Err(Status::not_found(format!(
                "node {node:?} is not a member of layout version {}; `distkv-client status` \
                 lists the members",
                layout.version()
            )));
        };
        if member.state == MemberState::Left {
            return Err(Status::failed_precondition(format!(
                "node {node:?} left the cluster (layout version {})",
                layout.version()
            )));
        }
        Ok(Some(NodeInfo {
            id: member.id.clone(),
            address: member.address.clone(),
        }))
    }

    /// Sends `command` to `target` and returns its answer.
    async fn forward(
        &self,
        target: &NodeInfo,
        command: operator_request::Command,
    ) -> Result<operator_response::Answer, Status> {
        let request = OperatorRequest {
            command: Some(command),
        };
        match self.transport.call(target, request, FORWARD_TIMEOUT).await {
            Ok(OperatorResponse {
                answer: Some(answer),
            }) => Ok(answer),
            Ok(OperatorResponse { answer: None }) => Err(Status::internal(format!(
                "node {} answered the command with nothing",
                target.id
            ))),
            Err(PeerError::Refused { reason, .. }) => Err(Status::failed_precondition(format!(
                "node {}: {reason}",
                target.id
            ))),
            Err(e) => Err(Status::unavailable(format!(
                "cannot reach node {} at {}: {e}; check that it runs, or ask it directly with \
                 --server",
                target.id, target.address
            ))),
        }
    }

    async fn decommission_here(&self) -> Result<DecommissionResponse, Status> {
        let stats = self.rebalance.leave().await.map_err(|e| {
            Status::failed_precondition(format!("cannot decommission node {}: {e}", self.local.id))
        })?;
        let version = self.membership.layout().version();
        let stop = self.stop.clone();
        tokio::spawn(async move {
            tokio::time::sleep(STOP_AFTER_ANSWER).await;
            stop.notify_one();
        });
        Ok(DecommissionResponse {
            layout_version: version,
            ranges: stats.ranges as u64,
            records: stats.records,
            bytes: stats.bytes,
        })
    }

    async fn cleanup_here(&self) -> Result<CleanupResponse, Status> {
        let stats = self.rebalance.cleanup().await.map_err(|e| {
            Status::failed_precondition(format!("cannot clean up node {}: {e}", self.local.id))
        })?;
        Ok(CleanupResponse {
            layout_version: stats.layout_version,
            ranges: stats.ranges as u64,
            records: stats.records,
            bytes: stats.bytes,
        })
    }

    async fn repair_here(&self, wait: bool) -> RepairResponse {
        if wait {
            return repair_response(self.repair.pass().await, true);
        }
        // At most one pass runs: a request while one runs starts nothing more.
        let repair = self.repair.clone();
        tokio::spawn(async move {
            repair.pass_unless_running().await;
        });
        repair_response(PassReport::default(), false)
    }

    /// Answers a command forwarded by another node (it names no node: this one runs it).
    pub async fn handle(&self, request: OperatorRequest) -> Result<OperatorResponse, Status> {
        let answer = match request.command {
            Some(operator_request::Command::Decommission(_)) => {
                operator_response::Answer::Decommission(self.decommission_here().await?)
            }
            Some(operator_request::Command::Repair(r)) => {
                operator_response::Answer::Repair(self.repair_here(r.wait).await)
            }
            Some(operator_request::Command::Cleanup(_)) => {
                operator_response::Answer::Cleanup(self.cleanup_here().await?)
            }
            None => return Err(Status::invalid_argument("the command is empty")),
        };
        Ok(OperatorResponse {
            answer: Some(answer),
        })
    }
}

impl<M: Membership, T: Transport> Operations for Operator<M, T> {
    fn decommission(&self, node: String) -> BoxFuture<'_, Result<DecommissionResponse, Status>> {
        Box::pin(async move {
            let Some(target) = self.target(&node)? else {
                return self.decommission_here().await;
            };
            let command = operator_request::Command::Decommission(DecommissionRequest {
                node_id: String::new(),
            });
            match self.forward(&target, command).await? {
                operator_response::Answer::Decommission(r) => Ok(r),
                other => Err(unexpected(&target, &other)),
            }
        })
    }

    fn repair(&self, node: String, wait: bool) -> BoxFuture<'_, Result<RepairResponse, Status>> {
        Box::pin(async move {
            let Some(target) = self.target(&node)? else {
                return Ok(self.repair_here(wait).await);
            };
            let command = operator_request::Command::Repair(RepairRequest {
                wait,
                node_id: String::new(),
            });
            match self.forward(&target, command).await? {
                operator_response::Answer::Repair(r) => Ok(r),
                other => Err(unexpected(&target, &other)),
            }
        })
    }

    fn cleanup(&self, node: String) -> BoxFuture<'_, Result<CleanupResponse, Status>> {
        Box::pin(async move {
            let Some(target) = self.target(&node)? else {
                return self.cleanup_here().await;
            };
            let command = operator_request::Command::Cleanup(CleanupRequest {
                node_id: String::new(),
            });
            match self.forward(&target, command).await? {
                operator_response::Answer::Cleanup(r) => Ok(r),
                other => Err(unexpected(&target, &other)),
            }
        })
    }

    fn remove_node(&self, node: String) -> BoxFuture<'_, Result<RemoveNodeResponse, Status>> {
        Box::pin(async move {
            if node.is_empty() {
                return Err(Status::invalid_argument(
                    "remove-node needs the id of the dead node to take out",
                ));
            }
            let change = LayoutChange::Remove { id: node.clone() };
            let next =
                self.changes.request(&change).await.map_err(|e| {
                    Status::failed_precondition(format!("cannot remove {node:?}: {e}"))
                })?;
            tracing::warn!(node = %node, version = next.version(), "node removed from the layout by an operator");
            Ok(RemoveNodeResponse {
                layout_version: next.version(),
            })
        })
    }

    fn range_stats(&self) -> Vec<(TokenRange, RangeStats)> {
        self.repair.range_stats()
    }

    fn progress(&self) -> Option<ProgressSummary> {
        self.rebalance.progress()
    }

    fn removal(&self) -> Option<RemovalProgress> {
        self.rereplication.progress(&self.repair.range_stats())
    }
}

fn unexpected(target: &NodeInfo, answer: &operator_response::Answer) -> Status {
    let what = match answer {
        operator_response::Answer::Decommission(_) => "a decommission",
        operator_response::Answer::Repair(_) => "a repair",
        operator_response::Answer::Cleanup(_) => "a cleanup",
    };
    Status::internal(format!(
        "node {} answered with {what} answer to another command",
        target.id
    ))
}

/// The peer side of forwarded commands ([`Operator::handle`], object-safe).
pub trait ForwardedCommands: Send + Sync + 'static {
    /// Runs a forwarded command on this node.
    fn run(&self, request: OperatorRequest) -> BoxFuture<'_, Result<OperatorResponse, Status>>;
}

impl<M: Membership, T: Transport> ForwardedCommands for Operator<M, T> {
    fn run(&self, request: OperatorRequest) -> BoxFuture<'_, Result<OperatorResponse, Status>> {
        Box::pin(self.handle(request))
    }
}
