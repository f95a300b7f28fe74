//! The receiving side of peer calls: what this node does when a peer replicates to it,
//! reads from it or pings it. A struct of its own over the replica store; the
//! coordinator is not involved.

use std::sync::Arc;

use async_trait::async_trait;
use distkv_engine::StorageEngine;
use distkv_network::PeerHandler;
use distkv_proto::v1::{
    KeyRecord, PeerReadRequest, PeerReadResponse, PingRequest, PingResponse, ReplicateRequest,
    ReplicateResponse,
};

use super::ReplicaStore;
use crate::version::Record;

/// This node as its peers see it.
pub struct PeerEndpoint<S: StorageEngine + ?Sized> {
    node_id: String,
    store: Arc<ReplicaStore<S>>,
}

impl<S: StorageEngine + ?Sized> PeerEndpoint<S> {
    /// The endpoint of node `node_id` over its `store`.
    pub fn new(node_id: impl Into<String>, store: Arc<ReplicaStore<S>>) -> Self {
        PeerEndpoint {
            node_id: node_id.into(),
            store,
        }
    }
}

#[async_trait]
impl<S: StorageEngine + ?Sized> PeerHandler for PeerEndpoint<S> {
    async fn replicate(&self, request: ReplicateRequest) -> Result<ReplicateResponse, String> {
        let mut entries = Vec::with_capacity(request.records.len());
        for kr in request.records {
            let record = Record::decode(&kr.record)
                .map_err(|e| format!("record from {} refused: {e}", request.from_node))?;
            entries.push((kr.key.to_vec(), record));
        }
        self.store.merge(entries).await.map_err(|e| e.to_string())?;
        Ok(ReplicateResponse {})
    }

    async fn read(&self, request: PeerReadRequest) -> Result<PeerReadResponse, String> {
        // Inline, like local reads (see `ReplicaStore::get_encoded`).
        let records = request
            .keys
            .into_iter()
            .map(|k| {
                let record = self
                    .store
                    .get_encoded(&k)
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
            node_id: self.node_id.clone(),
        })
    }
}
