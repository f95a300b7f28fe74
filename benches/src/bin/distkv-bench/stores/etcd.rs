//! The etcd driver: the v3 KV API (`etcdserverpb.KV`) over gRPC, with the workspace's
//! tonic and prost. `Range` of one key (linearizable, etcd's default: the answer reflects
//! every write committed before it, which costs a round of the Raft leader), `Put`, and
//! for the preload a `Txn` of up to 100 `Put`s (etcd's `--max-txn-ops` is 128 by default).
//!
//! Only the messages and fields these three calls use are declared, with the field
//! numbers of etcd's `api/etcdserverpb/rpc.proto` and `api/mvccpb/kv.proto` (protobuf
//! skips the fields a message does not declare). The `etcd-client` crate is not used:
//! its build script compiles etcd's protos with `protoc`, which this project does not
//! require (see docs/load-generator.md).

use bytes::Bytes;
use tonic::codegen::http::uri::PathAndQuery;
use tonic::transport::Channel;

use super::{grpc_channel, Conn as AnyConn, Found, OpError};
use crate::cli::{Config, Failure};
use crate::stats;

/// `etcdserverpb.ResponseHeader`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct ResponseHeader {
    #[prost(uint64, tag = "1")]
    pub cluster_id: u64,
    #[prost(uint64, tag = "2")]
    pub member_id: u64,
    #[prost(int64, tag = "3")]
    pub revision: i64,
    #[prost(uint64, tag = "4")]
    pub raft_term: u64,
}

/// `etcdserverpb.RangeRequest`: `key` alone (no `range_end`) reads that one key.
#[derive(Clone, PartialEq, prost::Message)]
pub struct RangeRequest {
    #[prost(bytes = "bytes", tag = "1")]
    pub key: Bytes,
    /// False: a linearizable read (etcd's default).
    #[prost(bool, tag = "7")]
    pub serializable: bool,
}

/// `mvccpb.KeyValue`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct KeyValue {
    #[prost(bytes = "bytes", tag = "1")]
    pub key: Bytes,
    #[prost(bytes = "bytes", tag = "5")]
    pub value: Bytes,
}

/// `etcdserverpb.RangeResponse`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct RangeResponse {
    #[prost(message, optional, tag = "1")]
    pub header: Option<ResponseHeader>,
    #[prost(message, repeated, tag = "2")]
    pub kvs: Vec<KeyValue>,
}

/// `etcdserverpb.PutRequest`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct PutRequest {
    #[prost(bytes = "bytes", tag = "1")]
    pub key: Bytes,
    #[prost(bytes = "bytes", tag = "2")]
    pub value: Bytes,
}

/// `etcdserverpb.PutResponse`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct PutResponse {
    #[prost(message, optional, tag = "1")]
    pub header: Option<ResponseHeader>,
}

/// `etcdserverpb.RequestOp`, with only its `request_put` arm.
#[derive(Clone, PartialEq, prost::Message)]
pub struct RequestOp {
    #[prost(oneof = "Request", tags = "2")]
    pub request: Option<Request>,
}

/// The `request` oneof of `RequestOp`.
#[derive(Clone, PartialEq, prost::Oneof)]
pub enum Request {
    #[prost(message, tag = "2")]
    Put(PutRequest),
}

/// `etcdserverpb.TxnRequest` without comparisons: `success` always runs.
#[derive(Clone, PartialEq, prost::Message)]
pub struct TxnRequest {
    #[prost(message, repeated, tag = "2")]
    pub success: Vec<RequestOp>,
}

/// `etcdserverpb.TxnResponse`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct TxnResponse {
    #[prost(message, optional, tag = "1")]
    pub header: Option<ResponseHeader>,
    #[prost(bool, tag = "2")]
    pub succeeded: bool,
}

/// A client of one etcd member.
#[derive(Clone)]
pub struct Conn {
    grpc: tonic::client::Grpc<Channel>,
}

fn op_error(status: tonic::Status) -> OpError {
    OpError(stats::error_kind(&status))
}

impl Conn {
    pub fn new(channel: Channel) -> Conn {
        Conn {
            grpc: tonic::client::Grpc::new(channel),
        }
    }

    /// One unary call of `etcdserverpb.KV`.
    async fn call<Q, A>(&mut self, path: &'static str, request: Q) -> Result<A, tonic::Status>
    where
        Q: prost::Message + Send + Sync + 'static,
        A: prost::Message + Default + Send + Sync + 'static,
    {
        self.grpc
            .ready()
            .await
            .map_err(|e| tonic::Status::unavailable(format!("connection not ready: {e}")))?;
        let codec = tonic_prost::ProstCodec::<Q, A>::default();
        let answer = self
            .grpc
            .unary(
                tonic::Request::new(request),
                PathAndQuery::from_static(path),
                codec,
            )
            .await?;
        Ok(answer.into_inner())
    }

    async fn range(&mut self, key: Bytes) -> Result<RangeResponse, tonic::Status> {
        let request = RangeRequest {
            key,
            serializable: false,
        };
        self.call("/etcdserverpb.KV/Range", request).await
    }

    pub async fn get(&mut self, key: Bytes) -> Result<Found, OpError> {
        let r = self.range(key).await.map_err(op_error)?;
        Ok(Found {
            found: !r.kvs.is_empty(),
            siblings: false,
            context: Bytes::new(),
        })
    }

    pub async fn put(&mut self, key: Bytes, value: Bytes) -> Result<(), OpError> {
        let _: PutResponse = self
            .call("/etcdserverpb.KV/Put", PutRequest { key, value })
            .await
            .map_err(op_error)?;
        Ok(())
    }

    pub async fn put_many(&mut self, entries: Vec<(Bytes, Bytes)>) -> Result<(), OpError> {
        let success = entries
            .into_iter()
            .map(|(key, value)| RequestOp {
                request: Some(Request::Put(PutRequest { key, value })),
            })
            .collect();
        let r: TxnResponse = self
            .call("/etcdserverpb.KV/Txn", TxnRequest { success })
            .await
            .map_err(op_error)?;
        if r.succeeded {
            Ok(())
        } else {
            Err(OpError(
                "etcd transaction without comparisons did not succeed".into(),
            ))
        }
    }
}

/// Opens the channels of each target (`--connections`, or one per client with
/// `--connection-per-client`) and checks that each target answers a linearizable `Range`.
pub async fn connect_all(config: &Config) -> Result<Vec<Vec<AnyConn>>, Failure> {
    let args = &config.args;
    let connect_timeout = args.timeout.min(std::time::Duration::from_secs(5));
    let mut all = Vec::with_capacity(config.targets.len());
    for (index, target) in config.targets.iter().enumerate() {
        let count = args.channels_for_target(index, config.targets.len());
        let mut conns = Vec::with_capacity(count);
        // The first connection finds an address that answers; the others reuse it.
        let mut candidates = target.addrs.clone();
        for _ in 0..count {
            let (i, channel) = grpc_channel(&target.name, &candidates, connect_timeout)
                .await
                .map_err(|f| Failure {
                    message: format!("{} (is etcd running there?)", f.message),
                    ..f
                })?;
            candidates = vec![candidates[i]];
            conns.push(Conn::new(channel));
        }
        let mut first = conns[0].clone();
        let probe = first.range(Bytes::from(args.key_prefix.clone().into_bytes()));
        let answer = match tokio::time::timeout(args.timeout, probe).await {
            Ok(Ok(answer)) => answer,
            Ok(Err(s)) => {
                return Err(Failure::unreachable(format!(
                    "target {} does not answer a linearizable etcd Range: {} {} (is it a member of an etcd cluster with a leader?)",
                    target.name,
                    stats::code_name(s.code()),
                    s.message().lines().next().unwrap_or("")
                )))
            }
            Err(_) => {
                return Err(Failure::unreachable(format!(
                    "target {} did not answer a linearizable etcd Range within {} (does its cluster have a leader?)",
                    target.name,
                    humantime::format_duration(args.timeout)
                )))
            }
        };
        let header = answer.header.unwrap_or_default();
        eprintln!(
            "distkv-bench: target {} is etcd member {:x} of cluster {:x} (raft term {}, revision {}), {} connection(s) to it",
            target.name,
            header.member_id,
            header.cluster_id,
            header.raft_term,
            header.revision,
            conns.len()
        );
        all.push(conns.into_iter().map(AnyConn::Etcd).collect());
    }
    Ok(all)
}

#[cfg(test)]
mod tests {
    use super::*;
    use prost::Message;

    #[test]
    fn messages_use_etcds_field_numbers() {
        // RangeRequest{key: "k", serializable: true}: field 1 bytes, field 7 varint.
        let r = RangeRequest {
            key: Bytes::from_static(b"k"),
            serializable: true,
        };
        assert_eq!(r.encode_to_vec(), [0x0a, 1, b'k', 0x38, 1]);
        // PutRequest{key: "k", value: "v"}: fields 1 and 2.
        let p = PutRequest {
            key: Bytes::from_static(b"k"),
            value: Bytes::from_static(b"v"),
        };
        assert_eq!(p.encode_to_vec(), [0x0a, 1, b'k', 0x12, 1, b'v']);
        // A Txn's success ops are field 2, each a RequestOp with its put in field 2.
        let t = TxnRequest {
            success: vec![RequestOp {
                request: Some(Request::Put(p)),
            }],
        };
        assert_eq!(
            t.encode_to_vec(),
            [0x12, 8, 0x12, 6, 0x0a, 1, b'k', 0x12, 1, b'v']
        );
    }

    #[test]
    fn a_range_response_with_fields_we_do_not_declare_decodes() {
        // header{member_id: 5}, kvs[{key "k", create_revision 2, value "v"}], count 1.
        let wire = [
            0x0a, 2, 0x10, 5, // header
            0x12, 8, 0x0a, 1, b'k', 0x10, 2, 0x2a, 1, b'v', // kvs
            0x20, 1, // count
        ];
        let r = RangeResponse::decode(&wire[..]).expect("decodes");
        assert_eq!(r.header.map(|h| h.member_id), Some(5));
        assert_eq!(r.kvs.len(), 1);
        assert_eq!(&r.kvs[0].value[..], b"v");
    }
}
