//! The receiving side of peer calls: what this node does when a peer replicates to it,
//! reads from it, pings it or pulls a range from it. A struct of its own over the
//! replica store; the coordinator is not involved.

use std::sync::Arc;

use async_trait::async_trait;
use distkv_engine::StorageEngine;
use distkv_network::{peer_request, peer_response, range_checksum, HandlerError, PeerHandler};
use distkv_proto::v1::{
    KeyRecord, PeerReadRequest, PeerReadResponse, PingResponse, RangePullRequest,
    RangePullResponse, ReplicateRequest, ReplicateResponse,
};

use super::ReplicaStore;
use crate::error::NodeError;
use crate::placement::TokenRange;
use crate::util::blocking;
use crate::version::Record;

/// Most entries in one page of a range pull, whatever the caller asks.
pub const MAX_PULL_ENTRIES: u32 = 4096;
/// Most bytes (keys and records) in one page of a range pull, whatever the caller asks
/// (a single larger record still travels alone).
pub const MAX_PULL_BYTES: u64 = 4 << 20;

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

    async fn replicate(
        &self,
        from: &str,
        request: ReplicateRequest,
    ) -> Result<ReplicateResponse, HandlerError> {
        let mut entries = Vec::with_capacity(request.records.len());
        for kr in request.records {
            let record = Record::decode(&kr.record)
                .map_err(|e| HandlerError::Refused(format!("record from {from} refused: {e}")))?;
            entries.push((kr.key.to_vec(), record));
        }
        self.store.merge(entries).await.map_err(storage_error)?;
        Ok(ReplicateResponse {})
    }

    fn read(&self, request: PeerReadRequest) -> Result<PeerReadResponse, HandlerError> {
        // Inline, like local reads (see `ReplicaStore::get_encoded`).
        let records = request
            .keys
            .into_iter()
            .map(|k| {
                let record = self
                    .store
                    .get_encoded(&k)
                    .map_err(storage_error)?
                    .unwrap_or_default();
                Ok(KeyRecord {
                    key: k,
                    record: record.into(),
                })
            })
            .collect::<Result<Vec<_>, HandlerError>>()?;
        Ok(PeerReadResponse { records })
    }

    async fn range_pull(
        &self,
        request: RangePullRequest,
    ) -> Result<RangePullResponse, HandlerError> {
        let range = TokenRange {
            start: request.start_token,
            end: request.end_token,
        };
        let after = (!request.after.is_empty()).then(|| request.after.to_vec());
        let max_entries = request.max_entries.clamp(1, MAX_PULL_ENTRIES) as usize;
        let max_bytes = request.max_bytes.clamp(1, MAX_PULL_BYTES) as usize;
        let store = self.store.clone();
        // A page may read from disk: off the async workers.
        let page =
            blocking(move || store.scan_range(range, after.as_deref(), max_entries, max_bytes))
                .await
                .map_err(storage_error)?;
        let entries: Vec<KeyRecord> = page
            .entries
            .into_iter()
            .map(|(key, record)| KeyRecord {
                key: key.into(),
                record: record.into(),
            })
            .collect();
        Ok(RangePullResponse {
            checksum: range_checksum(&entries),
            done: page.next.is_none(),
            next: page.next.unwrap_or_default().into(),
            entries,
        })
    }
}

fn storage_error(e: NodeError) -> HandlerError {
    match e {
        NodeError::Unavailable(m) => HandlerError::Unavailable(m),
        other => HandlerError::Failed(other.to_string()),
    }
}

#[async_trait]
impl<S: StorageEngine + ?Sized> PeerHandler for PeerEndpoint<S> {
    async fn handle(
        &self,
        from: &str,
        request: peer_request::Body,
    ) -> Result<peer_response::Body, HandlerError> {
        use peer_request::Body as Req;
        use peer_response::Body as Resp;
        match request {
            Req::Replicate(r) => self.replicate(from, r).await.map(Resp::Replicate),
            Req::Read(r) => self.read(r).map(Resp::Read),
            Req::Ping(_) => Ok(Resp::Ping(PingResponse {
                node_id: self.node_id.clone(),
            })),
            Req::RangePull(r) => self.range_pull(r).await.map(Resp::RangePull),
        }
    }
}
