//! The receiving side of peer calls: what this node does when a peer replicates to it,
//! reads from it or pings it.

use async_trait::async_trait;
use distkv_engine::StorageEngine;
use distkv_network::{Membership, PeerHandler, Transport};
use distkv_proto::v1::{
    KeyRecord, PeerReadRequest, PeerReadResponse, PingRequest, PingResponse, ReplicateRequest,
    ReplicateResponse,
};

use crate::node::Node;
use crate::ring::Partitioner;
use crate::version::Record;

#[async_trait]
impl<S, M, P, T> PeerHandler for Node<S, M, P, T>
where
    S: StorageEngine + ?Sized,
    M: Membership,
    P: Partitioner,
    T: Transport,
{
    async fn replicate(&self, request: ReplicateRequest) -> Result<ReplicateResponse, String> {
        let mut entries = Vec::with_capacity(request.records.len());
        for kr in request.records {
            let record = Record::decode(&kr.record)
                .map_err(|e| format!("record from {} refused: {e}", request.from_node))?;
            entries.push((kr.key.to_vec(), record));
        }
        let node = self
            .this
            .upgrade()
            .ok_or_else(|| "node is shutting down".to_string())?;
        node.merge_local(entries).await.map_err(|e| e.to_string())?;
        Ok(ReplicateResponse {})
    }

    async fn read(&self, request: PeerReadRequest) -> Result<PeerReadResponse, String> {
        // Inline, like local reads (see `read_local`).
        let records = request
            .keys
            .into_iter()
            .map(|k| {
                let record = self
                    .storage
                    .get(&k)
                    .map_err(|e| e.to_string())?
                    .unwrap_or_default();
                Ok(KeyRecord {
                    key: k,
                    record: record.into(),
                })
            })
            .collect::<Result<Vec<_>, String>>()?;
        Ok(PeerReadResponse { records })
    }

    async fn ping(&self, _request: PingRequest) -> Result<PingResponse, String> {
        Ok(PingResponse {
            node_id: self.local.id.clone(),
        })
    }
}
